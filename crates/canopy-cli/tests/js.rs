//! Black-box tests of the JetStream commands of the `canopy` binary (`stream`,
//! `consumer`, `kv`, `object`, `account`, `server report jetstream`, `bench --js`)
//! against the real canopy-server of this build, started through canopy-testkit (build
//! it first: `cargo build -p canopy-server`; plain `cargo test` at the workspace root
//! does).

#![allow(clippy::unwrap_used)] // tests may unwrap

use canopy_testkit::{canopy_bin, ServerProcess};
use serde_json::Value;
use std::process::{Command, Output, Stdio};

const CANOPY: &str = env!("CARGO_BIN_EXE_canopy");

/// One JetStream server with a system account (sys/sys) and a JetStream account
/// (app/app), domain `hub`.
struct Js {
    server: ServerProcess,
    _store: tempfile::TempDir,
}

fn start() -> Js {
    assert!(
        canopy_bin().exists(),
        "{} is missing: run `cargo build -p canopy-server` first",
        canopy_bin().display()
    );
    let store = tempfile::tempdir().unwrap();
    let conf = format!(
        r#"listen: 127.0.0.1:-1
http: 127.0.0.1:-1
server_name: cli-js
jetstream {{ store_dir: "{}", domain: hub }}
accounts {{
  SYS {{ users: [ {{ user: sys, password: sys }} ] }}
  APP {{ jetstream: enabled, users: [ {{ user: app, password: app }} ] }}
}}
system_account: SYS
"#,
        store.path().display()
    );
    let server = ServerProcess::canopy(&conf).unwrap();
    Js {
        server,
        _store: store,
    }
}

impl Js {
    fn run_as(&self, user: &str, args: &[&str]) -> Output {
        Command::new(CANOPY)
            .args(["-s", &self.server.url(), "--user", user, "--password", user])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Run as `app`; must succeed; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run_as("app", args);
        assert!(
            out.status.success(),
            "canopy {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run as `app` with `--json`; parses stdout.
    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    /// Run as `app`; must fail; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run_as("app", args);
        assert!(!out.status.success(), "canopy {args:?} succeeded");
        String::from_utf8(out.stderr).unwrap()
    }
}

#[test]
fn streams_and_consumers() {
    let js = start();
    let v = js.json(&[
        "stream",
        "add",
        "ORDERS",
        "--subjects",
        "orders.>",
        "--storage",
        "file",
        "--retention",
        "limits",
        "--max-msgs",
        "1000",
        "--max-bytes",
        "1M",
        "--max-age",
        "1d",
        "--replicas",
        "1",
        "--defaults",
    ]);
    assert_eq!(v["config"]["subjects"][0], "orders.>");
    assert_eq!(v["config"]["max_msgs"], 1000);
    assert_eq!(v["config"]["max_bytes"], 1 << 20);
    assert_eq!(v["config"]["max_age"], 86_400_000_000_000u64);
    for body in ["one", "two", "three"] {
        js.ok(&["pub", "orders.new", body]);
    }
    let info = js.json(&["stream", "info", "ORDERS"]);
    assert_eq!(info["state"]["messages"], 3);
    let text = js.ok(&["stream", "info", "ORDERS"]);
    assert!(text.contains("Information for Stream ORDERS"), "{text}");
    let ls = js.ok(&["stream", "ls"]);
    assert!(ls.contains("ORDERS") && ls.contains("orders.>"), "{ls}");
    assert_eq!(js.ok(&["stream", "get", "ORDERS", "2", "--raw"]), "two");
    let last = js.json(&["stream", "get", "ORDERS", "--last-for", "orders.new"]);
    assert_eq!(last["message"]["seq"], 3);

    let c = js.json(&[
        "consumer",
        "add",
        "ORDERS",
        "WORKER",
        "--pull",
        "--deliver",
        "all",
        "--ack",
        "explicit",
        "--filter",
        "orders.>",
        "--max-deliver",
        "5",
        "--defaults",
    ]);
    assert_eq!(c["config"]["durable_name"], "WORKER");
    assert_eq!(c["config"]["ack_policy"], "explicit");
    let got = js.json(&["consumer", "next", "ORDERS", "WORKER", "--count", "2"]);
    assert_eq!(got.as_array().unwrap().len(), 2, "{got}");
    assert_eq!(got[0]["data"], "one");
    assert_eq!(got[1]["stream_seq"], 2);
    let text = js.ok(&["consumer", "next", "ORDERS", "WORKER"]);
    assert!(
        text.contains("three") && text.contains("Acknowledged"),
        "{text}"
    );
    let ci = js.json(&["consumer", "info", "ORDERS", "WORKER"]);
    assert_eq!(ci["ack_floor"]["stream_seq"], 3, "{ci}");
    assert_eq!(ci["num_pending"], 0);
    let err = js.fails(&["consumer", "next", "ORDERS", "WORKER", "--wait", "200ms"]);
    assert!(err.contains("no message"), "{err}");
    assert!(js.ok(&["consumer", "ls", "ORDERS"]).contains("WORKER"));
    js.ok(&["consumer", "rm", "ORDERS", "WORKER", "-f"]);
    assert!(js
        .ok(&["consumer", "ls", "ORDERS", "--names"])
        .trim()
        .is_empty());

    let p = js.json(&[
        "stream",
        "purge",
        "ORDERS",
        "--subject",
        "orders.new",
        "--keep",
        "1",
    ]);
    assert_eq!(p["purged"], 2);
    js.ok(&["stream", "rm", "ORDERS", "-f"]);
    let err = js.fails(&["stream", "info", "ORDERS"]);
    assert!(err.contains("10059"), "{err}");
}

#[test]
fn key_value() {
    let js = start();
    js.ok(&[
        "kv",
        "add",
        "CFG",
        "--history",
        "5",
        "--ttl",
        "1h",
        "--storage",
        "memory",
    ]);
    assert!(js
        .ok(&["kv", "put", "CFG", "color", "red"])
        .contains("revision 1"));
    js.ok(&["kv", "put", "CFG", "color", "blue"]);
    js.ok(&["kv", "put", "CFG", "size", "xl"]);
    assert_eq!(js.ok(&["kv", "get", "CFG", "color", "--raw"]), "blue");
    let e = js.json(&["kv", "get", "CFG", "color"]);
    assert_eq!(
        (e["value"].as_str(), e["revision"].as_u64()),
        (Some("blue"), Some(2))
    );
    let h = js.json(&["kv", "history", "CFG", "color"]);
    assert_eq!(h.as_array().unwrap().len(), 2, "{h}");
    assert_eq!(
        js.json(&["kv", "ls", "CFG"]),
        serde_json::json!(["color", "size"])
    );
    assert_eq!(js.json(&["kv", "ls"]), serde_json::json!(["CFG"]));
    let w: Value = serde_json::from_str(
        js.ok(&["kv", "watch", "CFG", "size", "--count", "1", "--json"])
            .trim(),
    )
    .unwrap();
    assert_eq!(w["value"], "xl");
    js.ok(&["kv", "del", "CFG", "color"]);
    let err = js.fails(&["kv", "get", "CFG", "color"]);
    assert!(err.contains("not found"), "{err}");
    js.ok(&["kv", "rm", "CFG", "-f"]);
    assert_eq!(js.json(&["kv", "ls"]), serde_json::json!([]));
}

#[test]
fn object_store() {
    let js = start();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    js.ok(&["object", "add", "FILES"]);
    let put = js.ok(&["object", "put", "FILES", src.to_str().unwrap()]);
    assert!(put.contains("Stored FILES > big.bin"), "{put}");
    let info = js.json(&["object", "info", "FILES", "big.bin"]);
    assert_eq!(info["size"], 300_000);
    assert!(js.ok(&["object", "ls", "FILES"]).contains("big.bin"));
    assert_eq!(js.json(&["object", "ls"]), serde_json::json!(["FILES"]));
    let out = dir.path().join("copy.bin");
    js.ok(&[
        "object",
        "get",
        "FILES",
        "big.bin",
        "-O",
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    js.ok(&["object", "rm", "FILES", "big.bin"]);
    assert!(js.ok(&["object", "ls", "FILES"]).contains("No objects"));
    js.ok(&["object", "rm", "FILES", "-f"]);
}

#[test]
fn account_report_and_domain() {
    let js = start();
    js.ok(&["stream", "add", "S1", "--subjects", "s1", "--defaults"]);
    js.ok(&["pub", "s1", "x"]);
    let a = js.json(&["account", "info"]);
    assert_eq!(a["streams"], 1, "{a}");
    assert_eq!(a["domain"], "hub");
    assert!(js.ok(&["account", "info"]).contains("Streams"));
    // Every JetStream command takes --js-domain: the right one works, another has no
    // responder.
    assert!(js
        .ok(&["stream", "ls", "--names", "--js-domain", "hub"])
        .contains("S1"));
    assert!(js
        .ok(&["stream", "info", "S1", "--domain", "hub"])
        .contains("S1"));
    js.fails(&[
        "stream",
        "ls",
        "--js-domain",
        "elsewhere",
        "--js-timeout",
        "500ms",
    ]);
    assert_eq!(
        js.ok(&["kv", "add", "B", "--js-domain", "hub"])
            .lines()
            .next(),
        Some("Bucket B created")
    );

    // The system account sees every server's JSZ.
    let out = js.run_as("sys", &["server", "report", "jetstream", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r[0]["server"]["name"], "cli-js", "{r}");
    assert_eq!(r[0]["data"]["streams"], 2, "{r}");
    let out = js.run_as("sys", &["server", "report", "jetstream"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cli-js") && text.contains("STREAMS"),
        "{text}"
    );
    // Or one server's /jsz over HTTP, no system account needed.
    let url = format!("http://127.0.0.1:{}", js.server.http_port.unwrap());
    let text = js.ok(&["server", "report", "jetstream", "--monitor", &url]);
    assert!(text.contains("cli-js"), "{text}");
}

#[test]
fn bench_js_modes() {
    let js = start();
    for mode in ["pub", "sync", "fetch", "kvput", "kvget"] {
        let r = js.json(&[
            "bench",
            "canopy.js.bench",
            "--js",
            mode,
            "--msgs",
            "300",
            "--size",
            "64",
        ]);
        match mode {
            "pub" => assert_eq!(r["pub"]["msgs"], 300, "{r}"),
            "fetch" => assert_eq!(r["sub"]["msgs"], 300, "{r}"),
            _ => assert_eq!(r["request"]["requests"], 300, "{r}"),
        }
        let text = js.ok(&["bench", "canopy.js.bench", "--js", mode, "--msgs", "50"]);
        assert!(text.contains("JetStream benchmark"), "{text}");
    }
    // The raw clients (user/password in their raw CONNECT): the publisher counts and
    // checks every ack; the pull consumer checks and acks every delivery (the last pull
    // shorter than the batch).
    for (mode, opt, val, side, n) in [
        ("pub", "--window", "64", "pub", 3000),
        ("fetch", "--batch", "100", "sub", 3050),
    ] {
        let msgs = n.to_string();
        let r = js.json(&[
            "bench",
            "canopy.js.bench",
            "--js",
            mode,
            "--raw",
            "--msgs",
            &msgs,
            opt,
            val,
        ]);
        assert_eq!(r["client"], "raw", "{r}");
        assert_eq!(r[side]["msgs"], n, "{r}");
    }
    let err = js.fails(&["bench", "canopy.js.bench", "--js", "sync", "--raw"]);
    assert!(
        err.contains("--raw goes with --js pub and --js fetch only"),
        "{err}"
    );
    // The bench leaves nothing behind.
    assert_eq!(js.json(&["account", "info"])["streams"], 0);
}
