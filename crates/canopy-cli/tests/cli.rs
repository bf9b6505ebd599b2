//! Black-box tests of the `canopy` binary against Debian's nats-server
//! (`/usr/sbin/nats-server`, skipped with a message when it is not installed): pub/sub,
//! headers, req/reply, no-responders, user/password auth, the bench modes in `--json`,
//! and the `server` commands through a system account.

#![allow(clippy::unwrap_used)] // tests may unwrap

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const NATS_SERVER: &str = "/usr/sbin/nats-server";
const CANOPY: &str = env!("CARGO_BIN_EXE_canopy");

macro_rules! require_nats_server {
    () => {
        if !Path::new(NATS_SERVER).exists() {
            eprintln!("skipping: {NATS_SERVER} is not installed");
            return;
        }
    };
}

/// A nats-server on a free loopback port, killed on drop.
struct Server {
    child: Child,
    port: u16,
    _dir: Option<TempDir>,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port below the ephemeral range (see `canopy_testkit::free_fixed_port`): an
/// ephemeral one, released and then bound by the spawned server, could meanwhile be taken
/// by an outgoing connection, or a readiness probe to it could connect to itself (the
/// likely cause of a CI run where a server "listened" and then refused the bench).
fn free_port() -> u16 {
    canopy_testkit::free_fixed_port()
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        Self::start_with(extra, None)
    }

    /// Start with a config file body (written to a private temp dir).
    fn start_conf(conf: &str) -> Server {
        let dir = std::env::temp_dir().join(format!(
            "canopy-cli-test-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("server.conf");
        std::fs::write(&path, conf).unwrap();
        let arg = path.to_str().unwrap().to_string();
        Self::start_with(&["-c", &arg], Some(TempDir(dir)))
    }

    fn start_with(extra: &[&str], dir: Option<TempDir>) -> Server {
        let port = free_port();
        let child = Command::new(NATS_SERVER)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Server {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn canopy(&self) -> Command {
        let mut c = Command::new(CANOPY);
        c.args(["-s", &self.url()]).stdin(Stdio::null());
        c
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `canopy` with its stderr watched for a readiness line.
struct Running {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

fn spawn_ready(mut cmd: Command, ready: &str) -> Running {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(ready) => break,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("canopy never printed {ready:?}");
            }
        }
    }
    Running { child, stderr: rx }
}

impl Running {
    /// Wait (bounded) for exit; return (success, stdout, stderr).
    fn finish(mut self) -> (bool, String, String) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("canopy did not exit in time");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let err: Vec<String> = self.stderr.try_iter().collect();
        (status.success(), out, err.join("\n"))
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

fn bench_json(cmd: &mut Command) -> Value {
    let out = run(cmd.arg("--json"));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn pub_sub_with_headers() {
    require_nats_server!();
    let s = Server::start(&[]);
    let mut sub = s.canopy();
    sub.args(["sub", "greet.>", "--count", "2"]);
    let sub = spawn_ready(sub, "Subscribing on");
    run(s.canopy().args([
        "pub",
        "greet.world",
        "hello #{{Count}}",
        "--count",
        "2",
        "-H",
        "X-Test:yes",
    ]));
    let (ok, out, _) = sub.finish();
    assert!(ok);
    assert!(
        out.contains("[#1] Received on \"greet.world\"\nX-Test: yes\n\nhello #1"),
        "{out}"
    );
    assert!(out.contains("[#2] Received on \"greet.world\""), "{out}");
    assert!(out.contains("hello #2"), "{out}");
}

#[test]
fn pub_with_reply_subject_and_queue_sub() {
    require_nats_server!();
    let s = Server::start(&[]);
    let mut sub = s.canopy();
    sub.args(["sub", "q.subj", "--queue", "workers", "--count", "1"]);
    let sub = spawn_ready(sub, "Subscribing on");
    run(s
        .canopy()
        .args(["pub", "q.subj", "body", "--reply", "answer.here"]));
    let (ok, out, _) = sub.finish();
    assert!(ok);
    assert!(
        out.starts_with("[#1] Received on \"q.subj\" with reply \"answer.here\"\nbody"),
        "{out}"
    );
}

#[test]
fn request_reply_and_no_responders() {
    require_nats_server!();
    let s = Server::start(&[]);
    let mut rep = s.canopy();
    rep.args(["reply", "svc.echo", "pong {{Count}}", "--count", "1"]);
    let rep = spawn_ready(rep, "Listening on");
    let out = run(s
        .canopy()
        .args(["req", "svc.echo", "ping!", "--timeout", "2s"]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "pong 1");
    let (ok, rout, _) = rep.finish();
    assert!(ok);
    assert!(
        rout.contains("Received on \"svc.echo\" with reply \"_INBOX."),
        "{rout}"
    );
    assert!(rout.contains("ping!"), "{rout}");

    let out = s
        .canopy()
        .args(["req", "nobody.home", "x", "--timeout", "1s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no responders"));
}

#[test]
fn auth_user_password_for_both_clients() {
    require_nats_server!();
    let s = Server::start(&["--user", "bob", "--pass", "s3cret"]);
    for raw in [false, true] {
        let mut good = s.canopy();
        good.args([
            "--user",
            "bob",
            "--password",
            "s3cret",
            "bench",
            "a",
            "--msgs",
            "100",
            "--sub",
            "1",
        ]);
        if raw {
            good.arg("--raw");
        }
        let v = bench_json(&mut good);
        assert_eq!(v["sub"]["msgs"], 100, "raw={raw}");
    }

    for raw in [false, true] {
        let mut bad = s.canopy();
        bad.args([
            "--user",
            "bob",
            "--password",
            "wrong",
            "bench",
            "a",
            "--msgs",
            "10",
        ]);
        if raw {
            bad.arg("--raw");
        }
        let out = bad.output().unwrap();
        assert!(!out.status.success(), "raw={raw} should fail");
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(err.contains("authorization"), "raw={raw}: {err}");
    }
}

#[test]
fn bench_pubsub_async_nats_and_raw() {
    require_nats_server!();
    let s = Server::start(&[]);
    let pid = s.child.id().to_string();
    for raw in [false, true] {
        let mut cmd = s.canopy();
        cmd.args([
            "bench", "b.x", "--pub", "2", "--sub", "3", "--msgs", "5001", "--size", "64",
        ]);
        cmd.args(["--server-pid", &pid]);
        if raw {
            cmd.arg("--raw");
        }
        let v = bench_json(&mut cmd);
        assert_eq!(v["client"], if raw { "raw" } else { "async-nats" });
        assert_eq!(v["pub"]["msgs"], 5001);
        assert_eq!(v["pub"]["clients"].as_array().unwrap().len(), 2);
        assert_eq!(v["sub"]["msgs"], 3 * 5001);
        assert_eq!(v["sub"]["expected"], 3 * 5001);
        assert_eq!(v["sub"]["bytes"], 3 * 5001 * 64);
        for c in v["sub"]["clients"].as_array().unwrap() {
            assert_eq!(c["msgs"], 5001);
        }
        assert!(v["sub"]["msgs_per_sec"].as_f64().unwrap() > 0.0);
        assert!(v["client_cpu"]["secs"].as_f64().unwrap() >= 0.0);
        assert!(v["server_cpu"]["wall_secs"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn bench_request_latency_and_idle_memory() {
    require_nats_server!();
    let s = Server::start(&[]);
    let v = bench_json(s.canopy().args([
        "bench",
        "r.x",
        "--request",
        "--msgs",
        "300",
        "--clients",
        "3",
    ]));
    let r = &v["request"];
    assert_eq!(r["requests"], 300);
    let (p50, p90, p99) = (
        r["p50_us"].as_f64().unwrap(),
        r["p90_us"].as_f64().unwrap(),
        r["p99_us"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p90 && p90 <= p99, "{r}");

    let pid = s.child.id().to_string();
    let v = bench_json(s.canopy().args([
        "bench",
        "--idle",
        "200",
        "--settle",
        "100ms",
        "--server-pid",
        &pid,
    ]));
    let i = &v["idle"];
    assert_eq!(i["conns"], 200);
    assert!(i["rss_after_kib"].as_u64().unwrap() > 0);
    // 200 connections cost the server something.
    assert!(i["delta_kib"].as_i64().unwrap() > 0, "{i}");
}

#[test]
fn server_commands_through_system_account() {
    require_nats_server!();
    let s = Server::start_conf(
        "server_name: cli_test_srv\n\
         accounts {\n  SYS { users = [{user: sys, password: sys}] }\n  APP { users = [{user: app, password: app}] }\n}\n\
         system_account: SYS\n",
    );
    let sys = |args: &[&str]| {
        let mut c = s.canopy();
        c.args(["--user", "sys", "--password", "sys", "server"])
            .args(args);
        c
    };
    let out = run(&mut sys(&["ping"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cli_test_srv") && text.contains("1 server(s) answered"),
        "{text}"
    );

    let out = run(&mut sys(&["list"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cli_test_srv"));

    let out = run(&mut sys(&["info", "--json"]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["data"]["server_name"], "cli_test_srv");
    assert_eq!(v["data"]["port"], s.port);
    let out = run(&mut sys(&["info"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("cli_test_srv"));

    // A non-system user gets no answer and a clear error.
    let out = s
        .canopy()
        .args([
            "--user",
            "app",
            "--password",
            "app",
            "server",
            "ping",
            "--wait",
            "200ms",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("system-account"));
}
