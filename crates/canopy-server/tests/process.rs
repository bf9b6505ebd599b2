//! The process as launchers see it: flags, `-t`, config errors, log lines, ports and pid
//! files, signals (reload, lame duck, stop).

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use canopy_testkit::{assert_eventually, canopy_bin, Impl, RawClient, ServerProcess};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(canopy_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_and_help() {
    let (code, out, _) = run(&["-v"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("canopy-server: v2."), "{out}");
    assert!(out.contains("\ncanopy v"), "{out}");
    assert!(out.contains("(implements nats-server v2."), "{out}");
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--ports_file_dir"));
    let (code, _, err) = run(&["--bogus"]);
    assert_ne!(code, 0);
    assert!(err.contains("flag provided but not defined: -bogus"));
}

#[test]
fn config_errors_name_file_line_col() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.conf");
    std::fs::write(&p, "port: 4222\nbogus_key: 1\n").unwrap();
    let (code, _, err) = run(&["-t", "-c", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("bad.conf:2:"), "{err}");
    assert!(err.contains("unknown field \"bogus_key\""), "{err}");
}

#[test]
fn every_seed_config_passes_dash_t() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "conf") {
            let (code, out, err) = run(&["-t", "-c", p.to_str().unwrap()]);
            assert_eq!(code, 0, "{}: {out}{err}", p.display());
            assert!(out.contains("is valid"), "{out}");
            n += 1;
        }
    }
    assert!(n >= 10, "only {n} seed configs found");
}

#[test]
fn unimplemented_features_refuse_to_start_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gw.conf");
    std::fs::write(&p, "port: -1\ngateway {\n  name: A\n  port: -1\n}\n").unwrap();
    let (code, _, err) = run(&["-c", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("gw.conf:3:") || err.contains("gw.conf:2:"),
        "{err}"
    );
    assert!(err.contains("not implemented yet"), "{err}");
}

#[test]
fn launcher_log_lines_ports_and_flags_override_file() {
    let mut s = ServerProcess::start(
        Impl::Canopy,
        "listen: 127.0.0.1:4222\nserver_name: from-file\n",
        &["-p", "-1", "-n", "from-flag"],
    )
    .unwrap();
    assert_ne!(s.port, 4222);
    let (_c, info) = RawClient::connect(&s.addr()).unwrap();
    assert_eq!(info["server_name"], "from-flag");
    let log = s.log();
    assert!(
        log.contains(&format!(
            "[INF] Listening for client connections on 127.0.0.1:{}",
            s.port
        )),
        "{log}"
    );
    assert!(log.contains("[INF] Server is ready"));
    s.signal("TERM").unwrap();
    let st = s.wait_exit(Duration::from_secs(5)).unwrap();
    assert!(st.success());
    assert!(s.log().contains("Server Exiting.."));
}

#[test]
fn reload_on_sighup() {
    let s = ServerProcess::canopy("listen: 127.0.0.1:-1\nmax_payload: 1000\n").unwrap();
    let (_c, info) = RawClient::connect(&s.addr()).unwrap();
    assert_eq!(info["max_payload"], 1000);
    std::fs::write(&s.config_path, "listen: 127.0.0.1:-1\nmax_payload: 2000\n").unwrap();
    s.signal("HUP").unwrap();
    assert_eventually!(
        Duration::from_secs(5),
        s.log().contains("Reloaded server configuration"),
        "no reload: {}",
        s.log()
    );
    let (_c, info) = RawClient::connect(&s.addr()).unwrap();
    assert_eq!(info["max_payload"], 2000);
    // A change that cannot apply live is refused and the server keeps running.
    std::fs::write(&s.config_path, "listen: 127.0.0.1:1\nmax_payload: 2000\n").unwrap();
    s.signal("HUP").unwrap();
    assert_eventually!(
        Duration::from_secs(5),
        s.log().contains("config reload not supported for listen"),
        "{}",
        s.log()
    );
}

#[test]
fn lame_duck_mode() {
    let mut s = ServerProcess::canopy(
        "listen: 127.0.0.1:-1\nlame_duck_duration: \"1s\"\nlame_duck_grace_period: \"200ms\"\n",
    )
    .unwrap();
    let (mut c, _) = RawClient::connect(&s.addr()).unwrap();
    c.send_str("CONNECT {\"protocol\":1,\"verbose\":false}\r\nPING\r\n")
        .unwrap();
    assert_eq!(c.read_op().unwrap(), "PONG");
    let (code, _, err) = run(&["--signal", &format!("ldm={}", s.pid().unwrap())]);
    assert_eq!(code, 0, "{err}");
    let l = c.read_op().unwrap();
    assert!(l.starts_with("INFO ") && l.contains("\"ldm\":true"), "{l}");
    let st = s.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(st.success());
    assert!(s.log().contains("Entering lame duck mode"));
}

#[test]
fn pid_file_written() {
    let dir = tempfile::tempdir().unwrap();
    let pid = dir.path().join("s.pid");
    let s = ServerProcess::start(
        Impl::Canopy,
        "listen: 127.0.0.1:-1\n",
        &["-P", pid.to_str().unwrap()],
    )
    .unwrap();
    let text = std::fs::read_to_string(&pid).unwrap();
    assert_eq!(text.trim(), s.pid().unwrap().to_string());
}

#[test]
fn log_file_rotates_past_size_limit() {
    let s = ServerProcess::canopy(
        "listen: 127.0.0.1:-1\ndebug: true\nlog_size_limit: 2000\nlogfile_max_num: 2\n",
    )
    .unwrap();
    for _ in 0..40 {
        let (mut c, _) = RawClient::connect(&s.addr()).unwrap();
        c.send_str("CONNECT {\"verbose\":false}\r\nPING\r\n")
            .unwrap();
        assert_eq!(c.read_op().unwrap(), "PONG");
    }
    let rotated = || {
        std::fs::read_dir(s.dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("server.log."))
            .count()
    };
    assert_eventually!(
        Duration::from_secs(5),
        rotated() >= 1,
        "no rotated log file"
    );
    assert!(rotated() <= 2, "log_max_files not honoured");
    assert!(std::fs::metadata(&s.log_path).unwrap().len() < 4000);
}

#[test]
fn prometheus_port_serves_metrics() {
    let port = canopy_testkit::free_fixed_port();
    let s = ServerProcess::canopy(&format!(
        "listen: 127.0.0.1:-1\nprometheus {{ host: 127.0.0.1, port: {port} }}\n"
    ))
    .unwrap();
    let (status, body) = canopy_testkit::http_get(port, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("nats_leafnodes_connections"), "{body}");
    assert!(s
        .log()
        .contains("Starting prometheus metrics on 127.0.0.1:"));
}

#[test]
fn trace_logs_protocol_ops() {
    let s = ServerProcess::canopy("listen: 127.0.0.1:-1\ntrace: true\nmax_traced_msg_len: 4\n")
        .unwrap();
    let (mut c, _) = RawClient::connect(&s.addr()).unwrap();
    c.send_str("CONNECT {\"verbose\":false}\r\nSUB foo 1\r\nPUB foo 11\r\nhello world\r\nPING\r\n")
        .unwrap();
    assert_eq!(c.read_op().unwrap(), "MSG foo 1 11");
    assert_eventually!(
        Duration::from_secs(5),
        s.log().contains("\"<<- [PUB foo 11]\""),
        "no trace: {}",
        s.log()
    );
    let log = s.log();
    assert!(log.contains("[TRC]"));
    assert!(log.contains("<<- [SUB foo 1]"));
    assert!(log.contains("MSG_PAYLOAD: [\"hell\"...]"), "{log}");
}

/// A reload that changes imports or exports is refused (the import agent is built at
/// start), not reported as applied; moving the same imports to other lines is no change
/// (issue 11, item 4).
#[test]
fn reload_refuses_import_export_changes() {
    let conf = |extra_line: &str, subject: &str| {
        format!(
            "listen: 127.0.0.1:-1\n{extra_line}accounts {{\n  A {{ users: [{{user: a, password: a}}], exports: [{{stream: \"{subject}\"}}] }}\n  B {{ users: [{{user: b, password: b}}], imports: [{{stream: {{account: A, subject: \"{subject}\"}}}}] }}\n}}\n"
        )
    };
    let s = ServerProcess::canopy(&conf("", "ev.>")).unwrap();
    // Same imports and exports on other lines: reloads.
    std::fs::write(&s.config_path, conf("\n\n", "ev.>")).unwrap();
    s.signal("HUP").unwrap();
    assert_eventually!(
        Duration::from_secs(5),
        s.log().contains("Reloaded server configuration"),
        "no reload: {}",
        s.log()
    );
    std::fs::write(&s.config_path, conf("", "other.>")).unwrap();
    s.signal("HUP").unwrap();
    assert_eventually!(
        Duration::from_secs(5),
        s.log().contains(
            "Failed to reload server configuration: config reload not supported for accounts: imports/exports of \"A\", \"B\" changed"
        ),
        "{}",
        s.log()
    );
    assert_eq!(s.log().matches("Reloaded server configuration").count(), 1);
}

/// Leaf node keys that are parsed but not acted on are refused at start with file:line,
/// not silently ignored (issue 11, item 5).
#[test]
fn ignored_leafnode_keys_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    for (body, line, what) in [
        ("  write_deadline: \"5s\"\n", 3, "leafnodes.write_deadline"),
        ("  min_version: \"2.8.0\"\n", 3, "leafnodes.min_version"),
        (
            "  isolate_leafnode_interest: true\n",
            3,
            "leafnodes.isolate_leafnode_interest",
        ),
        (
            "  remotes: [\n    { url: \"nats-leaf://127.0.0.1:7422\", isolate: true }\n  ]\n",
            4,
            "leafnodes.remotes[].isolate_leafnode_interest",
        ),
    ] {
        let conf = format!("port: -1\nleafnodes {{\n{body}}}\n");
        // Refused at start (bounded: the testkit waits at most 10 s for readiness)…
        let err = match ServerProcess::canopy(&conf) {
            Ok(_) => panic!("{what}: the server started"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&format!("server.conf:{line}:")),
            "{what}: {err}"
        );
        assert!(
            err.contains(&format!(
                "{what} is not supported yet (not implemented yet)"
            )),
            "{err}"
        );
        // …and named by `-t`.
        let p = dir.path().join("leaf.conf");
        std::fs::write(&p, &conf).unwrap();
        let (code, out, _) = run(&["-t", "-c", p.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains(&format!("leaf.conf:{line}:")) && out.contains(what),
            "{what}: {out}"
        );
    }
}
