//! Typed options: defaults, aliases, type errors, unknown keys, validation and reports.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use canopy_conf::*;

fn opts(src: &str) -> Options {
    from_str(src, "t.conf").unwrap_or_else(|e| panic!("{e}\n---\n{src}"))
}

fn errs(src: &str) -> String {
    match from_str(src, "t.conf") {
        Ok(o) => panic!("expected errors, got {o:?}"),
        Err(e) => e.to_string(),
    }
}

fn invalid(src: &str) -> String {
    opts(src)
        .validate()
        .expect_err("expected validation errors")
        .to_string()
}

#[test]
fn defaults() {
    let o = Options::default();
    assert_eq!(o.host, "0.0.0.0");
    assert_eq!(o.port, 4222);
    assert_eq!(o.max_payload, 1024 * 1024);
    assert_eq!(o.max_control_line, 4096);
    assert_eq!(o.max_connections, 65536);
    assert_eq!(o.max_subscriptions, 0);
    assert_eq!(o.max_pending, 64 * 1024 * 1024);
    assert_eq!(o.write_deadline, Duration::from_secs(10));
    assert_eq!(o.ping_interval, Duration::from_secs(120));
    assert_eq!(o.ping_max, 2);
    assert_eq!(o.lame_duck_duration, Duration::from_secs(120));
    assert_eq!(o.lame_duck_grace_period, Duration::from_secs(10));
    assert!(o.logtime);
    assert!(o.validate().is_ok());
    assert!(o.unsupported().is_empty());
    assert_eq!(opts(""), Options::default());
}

#[test]
fn top_level_keys() {
    let o = opts(
        r#"
listen: 127.0.0.1:-1
server_name: s1
client_advertise: "example.com:4222"
http: "127.0.0.1:8333"
max_payload: 128KB
max_control_line: 2048
max_conn: 100
max_subs: 10
max_pending: 32MB
write_deadline: "3s"
ping_interval: "100ms"
ping_max: 5
lame_duck_duration: "30s"
lame_duck_grace_period: "1s"
debug: true
trace_verbose: true
logtime: false
logtime_utc: true
log_file: "/tmp/x.log"
log_size_limit: 1MB
max_traced_msg_len: 100
pid_file: "/tmp/x.pid"
ports_file_dir: "/tmp"
no_header_support: true
disable_sublist_cache: true
no_system_account: true
server_tags: ["a:1", "b"]
connect_error_reports: 10
reconnect_error_reports: 2
no_auth_user: u
authorization { users: [ {user: u, password: p} ] }
allow_non_tls: true
"#,
    );
    assert_eq!((o.host.as_str(), o.port), ("127.0.0.1", -1));
    assert_eq!(o.server_name.as_deref(), Some("s1"));
    assert_eq!(o.client_advertise.as_deref(), Some("example.com:4222"));
    assert_eq!(
        (o.http_host.as_deref(), o.http_port),
        (Some("127.0.0.1"), Some(8333))
    );
    assert_eq!(o.max_payload, 128 * 1024);
    assert_eq!(o.max_control_line, 2048);
    assert_eq!(o.max_connections, 100);
    assert_eq!(o.max_subscriptions, 10);
    assert_eq!(o.max_pending, 32 << 20);
    assert_eq!(o.write_deadline, Duration::from_secs(3));
    assert_eq!(o.ping_interval, Duration::from_millis(100));
    assert_eq!(o.ping_max, 5);
    assert_eq!(o.lame_duck_duration, Duration::from_secs(30));
    assert_eq!(o.lame_duck_grace_period, Duration::from_secs(1));
    assert!(o.debug && o.trace && o.trace_verbose && !o.logtime && o.logtime_utc);
    assert_eq!(
        o.log_file.as_deref(),
        Some(std::path::Path::new("/tmp/x.log"))
    );
    assert_eq!(o.log_size_limit, 1 << 20);
    assert_eq!(o.max_traced_msg_len, 100);
    assert!(o.pid_file.is_some() && o.ports_file_dir.is_some());
    assert!(o.no_header_support && o.disable_sublist_cache && o.no_system_account);
    assert_eq!(o.server_tags, vec!["a:1", "b"]);
    assert_eq!(
        (o.connect_error_reports, o.reconnect_error_reports),
        (10, 2)
    );
    assert_eq!(o.no_auth_user.as_deref(), Some("u"));
    assert!(o.allow_non_tls);
    o.validate().unwrap();
    assert_eq!(o.key_pos["max_payload"].line, 6);
}

#[test]
fn port_aliases_and_listen_forms() {
    let o = opts("net: 10.0.0.1\nport: 5222\nmonitor_port: 8223\nhttps_port: 8443");
    assert_eq!((o.host.as_str(), o.port), ("10.0.0.1", 5222));
    assert_eq!(o.http_port, Some(8223));
    assert_eq!(o.https_port, Some(8443));
    assert_eq!(opts("listen: 4333").port, 4333);
    let o = opts("listen: \"[::1]:4444\"");
    assert_eq!((o.host.as_str(), o.port), ("::1", 4444));
    let o = opts("listen: localhost:4222\nport: 1234");
    assert_eq!((o.host.as_str(), o.port), ("localhost", 1234));
    assert!(errs("port: 70000").contains("t.conf:1:7:"));
    assert!(errs("listen: \"h:abc\"").contains("invalid port"));
}

#[test]
fn durations() {
    // bare integer = seconds, with a warning
    let o = opts("write_deadline: 5\nping_interval: \"1m30s\"");
    assert_eq!(o.write_deadline, Duration::from_secs(5));
    assert_eq!(o.ping_interval, Duration::from_secs(90));
    let w = o.warnings();
    assert_eq!(w.len(), 1);
    assert!(w[0].message.contains("write_deadline") && w[0].pos.line == 1);
    // unquoted 2m is two minutes, not the size 2,000,000
    assert_eq!(
        opts("ping_interval: 2m").ping_interval,
        Duration::from_secs(120)
    );
    assert_eq!(
        opts("write_deadline: 10s").write_deadline,
        Duration::from_secs(10)
    );
    let e = errs("write_deadline: true");
    assert_eq!(
        e,
        "t.conf:1:17: expected a duration for \"write_deadline\", got bool"
    );
    let e = errs("ping_interval: \"5 parsecs\"");
    assert!(e.contains("invalid duration for \"ping_interval\""), "{e}");
}

#[test]
fn unknown_keys_everywhere() {
    let e = errs("port: 1\nbogus: 2\n");
    assert_eq!(e, "t.conf:2:1: unknown field \"bogus\"");
    let e = errs(
        "cluster {\n  port: 1\n  nope: 1\n}\nleafnodes {\n  remotes: [ { url: x, huh: 1 } ]\n}\n",
    );
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 2, "{e}");
    assert_eq!(lines[0], "t.conf:3:3: unknown field \"nope\"");
    assert_eq!(lines[1], "t.conf:6:24: unknown field \"huh\"");
    for src in [
        "authorization { foo: 1 }",
        "authorization { users: [ {user: a, x: 1} ] }",
        "accounts { A { zz: 1 } }",
        "jetstream { wat: 1 }",
        "tls { what: 1 }",
        "leafnodes { authorization { users: [ {user: a, permissions: {}} ] } }",
        "websocket { nope: 1 }",
        "prometheus { nope: 1 }",
    ] {
        assert!(errs(src).contains("unknown field"), "{src}");
    }
}

#[test]
fn all_errors_are_collected() {
    let e = errs("a: 1\nb: 2\nport: \"x\"\nmax_payload: true\n");
    assert_eq!(e.lines().count(), 4, "{e}");
    assert!(
        e.contains("t.conf:3:7: expected an integer for \"port\", got string"),
        "{e}"
    );
}

#[test]
fn variables_are_not_options() {
    let o = opts("PORT = 4999\nport: $PORT\nPERMS = {publish: \"a\"}\nauthorization { users: [ {user: x, permissions: $PERMS} ] }");
    assert_eq!(o.port, 4999);
    let p = o.authorization.users[0].permissions.as_ref().unwrap();
    assert_eq!(p.publish.as_ref().unwrap().allow, vec!["a"]);
    // an unused definition is an unknown key, as in nats-server
    assert!(errs("UNUSED = 1").contains("unknown field \"UNUSED\""));
}

#[test]
fn authorization_forms() {
    let o = opts("authorization { user: a, password: b, timeout: 1.5 }");
    let a = &o.authorization;
    assert_eq!(
        (a.user.as_deref(), a.password.as_deref()),
        (Some("a"), Some("b"))
    );
    assert_eq!(a.timeout, Some(Duration::from_millis(1500)));
    assert!(
        o.warnings().is_empty(),
        "float seconds is the documented form"
    );
    let o = opts("authorization { token: s3cr3t, timeout: \"2s\" }");
    assert_eq!(o.authorization.token.as_deref(), Some("s3cr3t"));
    let o = opts(
        r#"authorization {
  default_permissions { publish: "x.>" }
  users: [
    { user: a, pass: b, permissions: { publish: ["p1", "p2"], sub: { allow: "s.>", deny: ["s.secret"] }, allow_responses: true } }
    { nkey: UABC, permissions: { pub: { deny: ">" }, subscribe: "q grp", allow_responses: { max: 5, expires: "1m" } } }
  ]
}"#,
    );
    let u = &o.authorization.users;
    assert_eq!(u.len(), 2);
    let p0 = u[0].permissions.as_ref().unwrap();
    assert_eq!(p0.publish.as_ref().unwrap().allow, vec!["p1", "p2"]);
    assert_eq!(p0.subscribe.as_ref().unwrap().deny, vec!["s.secret"]);
    assert_eq!(
        p0.allow_responses,
        Some(ResponsePermission {
            max: 1,
            expires: Duration::from_secs(120)
        })
    );
    assert_eq!(u[1].user, "");
    assert_eq!(u[1].nkey.as_deref(), Some("UABC"));
    let p1 = u[1].permissions.as_ref().unwrap();
    assert_eq!(p1.subscribe.as_ref().unwrap().allow, vec!["q grp"]);
    assert_eq!(p1.allow_responses.as_ref().unwrap().max, 5);
    assert!(o.authorization.default_permissions.is_some());
    o.validate().unwrap();

    assert!(errs("authorization { users: [ {password: x} ] }").contains("requires a user"));
    assert!(
        errs("authorization { users: [ {user: a, permissions: {publish: \"a..b\"}} ] }")
            .contains("invalid subject")
    );
    assert!(
        invalid("authorization { user: a, password: b, users: [ {user: c} ] }")
            .contains("single user/pass and a users array")
    );
    assert!(invalid("authorization { token: t, user: u }").contains("token"));
    assert!(invalid("authorization { users: [ {user: a}, {user: a} ] }")
        .contains("duplicate user \"a\""));
    assert!(invalid("no_auth_user: ghost").contains("\"ghost\" not present"));
}

#[test]
fn accounts_imports_exports() {
    let o = opts(
        r#"
accounts {
  A: {
    users: [ {user: a1, password: x} ]
    exports: [
      { stream: "ev.>", accounts: [B] }
      { service: "svc.>", response_type: stream, response_threshold: "5s", latency: { sampling: "50%", subject: "lat" } }
    ]
    mappings: { "in.*": "out.{{wildcard(1)}}" }
    jetstream: { max_mem: 1GB, max_file: -1, max_streams: 10 }
  }
  B: {
    users: [ {user: b1, password: y} ]
    imports: [
      { stream: { account: A, subject: "ev.>" }, prefix: "from_a" }
      { service: { account: A, subject: "svc.>" }, to: "a.svc.>", share: true }
    ]
    jetstream: enabled
  }
}
system_account: A
"#,
    );
    assert_eq!(o.accounts.len(), 2);
    let a = o.account("A").unwrap();
    assert_eq!(a.users[0].account.as_deref(), Some("A"));
    match &a.exports[1] {
        Export::Service {
            response_type,
            response_threshold,
            latency,
            ..
        } => {
            assert_eq!(*response_type, ResponseType::Stream);
            assert_eq!(*response_threshold, Some(Duration::from_secs(5)));
            assert_eq!(latency.as_ref().unwrap().sampling, 50);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.mappings[0].destinations[0].subject, "out.{{wildcard(1)}}");
    let js = a.jetstream.as_ref().unwrap();
    assert_eq!(
        (js.max_memory, js.max_file, js.max_streams),
        (Some(1 << 30), Some(-1), Some(10))
    );
    let b = o.account("B").unwrap();
    assert!(matches!(&b.imports[0], Import::Stream { prefix: Some(p), .. } if p == "from_a"));
    assert!(matches!(
        &b.imports[1],
        Import::Service {
            share: true,
            to: Some(_),
            ..
        }
    ));
    assert!(b.jetstream.as_ref().unwrap().enabled);
    o.validate().unwrap();
    let used: Vec<Feature> = o.features_used().iter().map(|u| u.feature).collect();
    assert!(used.contains(&Feature::AccountImports) && used.contains(&Feature::AccountExports));

    let e = invalid("accounts { A { imports: [ {stream: {account: NOPE, subject: x}} ] } }");
    assert!(e.contains("cannot find account \"NOPE\""), "{e}");
    assert!(e.starts_with("t.conf:1:27:"), "{e}");
    assert!(invalid("accounts { A {} }\nsystem_account: B").contains("system account \"B\""));
    assert!(errs("accounts { A { exports: [ {subject: x} ] } }")
        .contains("\"stream\" or a \"service\""));
    assert!(errs("accounts { A { imports: [ {stream: {subject: x}} ] } }").contains("account"));
    assert!(
        invalid("accounts { A { users: [{user: u}] }, B { users: [{user: u}] } }")
            .contains("duplicate user")
    );
}

#[test]
fn mappings() {
    let o = opts(
        r#"mappings {
  "a.>": "b.>"
  "w": [ { destination: "w1", weight: "30%" }, { dest: "w2", weight: 70 } ]
  "c": { dest: "c1", weight: 100, cluster: "east" }
}"#,
    );
    assert_eq!(o.mappings.len(), 3);
    assert_eq!(o.mappings[1].destinations[0].weight, 30);
    assert_eq!(o.mappings[1].destinations[1].subject, "w2");
    assert_eq!(
        o.mappings[2].destinations[0].cluster.as_deref(),
        Some("east")
    );
    o.validate().unwrap();
    assert!(
        invalid("mappings { a: [ {dest: x, weight: 60}, {dest: y, weight: 60} ] }")
            .contains("exceeds 100%")
    );
    let e = errs("mappings { a: { to: b } }");
    assert!(
        e.contains("unknown field \"to\" for mapping destination"),
        "{e}"
    );
    assert!(errs("mappings { a: { dest: b, weight: 101 } }").contains("between 1 and 100"));
}

#[test]
fn tls_block() {
    let o = opts(
        r#"tls {
  cert_file: "/c.pem"
  key_file: "/k.pem"
  ca_file: "/ca.pem"
  verify_and_map: true
  timeout: 0.5
  handshake_first: "300ms"
  cipher_suites: ["TLS_AES_128_GCM_SHA256"]
  pinned_certs: ["abc"]
  min_version: "1.3"
}"#,
    );
    let t = o.tls.as_ref().unwrap();
    assert!(t.verify && t.verify_and_map);
    assert_eq!(t.timeout, Some(Duration::from_millis(500)));
    assert_eq!(
        t.handshake_first,
        Some(HandshakeFirst::Fallback(Duration::from_millis(300)))
    );
    assert_eq!(t.cipher_suites.len(), 1);
    assert_eq!(t.pos.line, 1);
    o.validate().unwrap();
    assert_eq!(
        opts("tls { handshake_first: true }")
            .tls
            .unwrap()
            .handshake_first,
        Some(HandshakeFirst::Always)
    );
    assert!(invalid("tls { cert_file: x }").contains("key_file"));
    // TLS is implemented by the server (rustls): nothing to refuse.
    assert!(o.unsupported().is_empty(), "{:?}", o.unsupported());
}

#[test]
fn cluster_block() {
    let o = opts(
        r#"cluster {
  name: c
  listen: "0.0.0.0:6333"
  advertise: "h:6333"
  no_advertise: true
  routes = [ nats-route://u:p@h1:6222, nats://h2:6222 ]
  authorization { user: u, password: p, timeout: 2 }
  connect_retries: 3
  pool_size: 4
  compression: accept
  permissions { import: "a.>", export: { allow: ["b.>"] } }
}"#,
    );
    let c = o.cluster.as_ref().unwrap();
    assert_eq!((c.host.as_str(), c.port), ("0.0.0.0", 6333));
    assert_eq!(c.routes.len(), 2);
    assert!(c.no_advertise);
    assert_eq!(c.connect_retries, 3);
    assert_eq!(c.pool_size, Some(4));
    assert_eq!(
        c.compression.as_ref().unwrap().mode,
        CompressionMode::Accept
    );
    assert!(c.permissions.as_ref().unwrap().import.is_some());
    assert_eq!(opts("cluster { name: x }").cluster.unwrap().port, 0);
    assert!(errs("cluster { name: \"a b\" }").contains("spaces"));
    // Pool size in effect: as written, 0 = nats-server's 3, -1 = none; unset: none unless
    // pinned accounts need the pooled protocol.
    let pool = |src: &str| opts(src).cluster.unwrap().effective_pool_size();
    assert_eq!(c.effective_pool_size(), Some(4));
    assert_eq!(pool("cluster { pool_size: 0 }"), Some(3));
    assert_eq!(pool("cluster { pool_size: -1 }"), None);
    assert_eq!(pool("cluster { name: x }"), None);
    assert_eq!(
        pool("accounts { A {} }\ncluster { accounts: [A] }"),
        Some(3)
    );
    // nats-server's rules for pinned accounts.
    assert!(
        invalid("accounts { A {} }\ncluster { pool_size: -1, accounts: [A] }")
            .contains("pool_size cannot be negative if pinned accounts are specified")
    );
    assert!(invalid("accounts { A {} }\ncluster { accounts: [A, A] }")
        .contains("found duplicate account name \"A\" in pinned accounts list"));
}

#[test]
fn leafnodes_block() {
    let o = opts(
        r#"accounts { A: {}, SYS: {} }
leafnodes {
  listen: 127.0.0.1:7555
  reconnect: 3
  compression: { mode: s2_auto, rtt_thresholds: ["10ms", "20ms", "30ms"] }
  authorization { user: leaf, password: pw, account: A, timeout: 1 }
  remotes [
    { url: "nats-leaf://a:7422", local: A, creds: "/x.creds", hub: true, dont_randomize: true,
      first_info_timeout: "2s", compression: off, deny_import: "x.>" }
    { urls: ["tls://b:7422", "nats://c"], account: SYS, nkey: "SUABC" }
  ]
}"#,
    );
    let l = o.leafnodes.as_ref().unwrap();
    assert_eq!((l.host.as_str(), l.port), ("127.0.0.1", 7555));
    assert_eq!(l.reconnect_interval, Duration::from_secs(3));
    assert!(
        o.warnings().is_empty(),
        "integer leaf reconnect is the 2.9 form: {:?}",
        o.warnings()
    );
    assert_eq!(l.compression.as_ref().unwrap().rtt_thresholds.len(), 3);
    assert_eq!(
        l.authorization.as_ref().unwrap().account.as_deref(),
        Some("A")
    );
    let r = &l.remotes;
    assert_eq!(r[0].account.as_deref(), Some("A"));
    assert!(r[0].hub && r[0].no_randomize);
    assert_eq!(
        r[0].credentials.as_deref(),
        Some(std::path::Path::new("/x.creds"))
    );
    assert_eq!(r[0].first_info_timeout, Some(Duration::from_secs(2)));
    assert_eq!(
        r[0].compression.as_ref().unwrap().mode,
        CompressionMode::Off
    );
    assert_eq!(r[0].deny_imports, vec!["x.>"]);
    assert_eq!(r[1].urls.len(), 2);
    assert_eq!(r[1].nkey.as_deref(), Some("SUABC"));
    assert_eq!(r[1].pos.line, 10);
    o.validate().unwrap();
    assert_eq!(
        opts("leafnodes { reconnect_interval: \"5s\" }")
            .leafnodes
            .unwrap()
            .reconnect_interval,
        Duration::from_secs(5)
    );
    assert_eq!(
        opts("leafnodes { remotes: [ {url: x} ] }")
            .leafnodes
            .unwrap()
            .port,
        0
    );

    let e = invalid("leafnodes { remotes: [ { url: x, account: NOPE } ] }");
    assert!(
        e.contains("cannot find local account \"NOPE\" specified in leafnode remote"),
        "{e}"
    );
    assert!(e.starts_with("t.conf:1:24:"), "{e}");
    let e =
        invalid("leafnodes { authorization { users: [ {user: u, password: p, account: X} ] } }");
    assert!(
        e.contains("cannot find local account \"X\" specified in leafnode authorization"),
        "{e}"
    );
    assert!(
        invalid("leafnodes { remotes: [ { urls: [\"ws://a\", \"nats://b\"] } ] }")
            .contains("websocket")
    );
    assert!(invalid("leafnodes { remotes: [ { url: a }, { url: a } ] }").contains("duplicate"));
    assert!(errs("leafnodes { remotes: [ { hub: true } ] }").contains("requires \"url\""));
    assert!(
        errs("leafnodes { remotes: [ { url: a, compression: turbo } ] }")
            .contains("unknown compression")
    );
    // nats-server's `reconnect` under leafnodes is the interval: a bool is a type error.
    assert!(errs("leafnodes { reconnect: true }").contains("expected a duration"));
}

#[test]
fn store_and_forward_keys() {
    let o = opts(
        r#"leafnodes {
  reconnect_buffer_size: 1MB
  store_dir: "/var/spool/canopy"
  remotes: [
    { url: a }
    { url: b, reconnect_buffer_size: 2KB }
    { url: c, spool: false }
  ]
}"#,
    );
    let l = o.leafnodes.as_ref().unwrap();
    assert_eq!(
        l.store_dir.as_deref(),
        Some(std::path::Path::new("/var/spool/canopy"))
    );
    let sizes: Vec<Option<u64>> = l.remotes.iter().map(|r| l.spool_size(r)).collect();
    assert_eq!(sizes, vec![Some(1 << 20), Some(2048), None]);
    let ext: Vec<String> = o.extensions_used().into_iter().map(|(_, s)| s).collect();
    assert!(ext.contains(&"leafnodes.store_dir".to_string()), "{ext:?}");
    assert!(
        ext.contains(&"leafnodes.remotes[].spool".to_string()),
        "{ext:?}"
    );
    // Without a size at either level a remote spools only when told to.
    let o = opts("leafnodes { remotes: [ { url: a }, { url: b, spool: true } ] }");
    let l = o.leafnodes.as_ref().unwrap();
    let sizes: Vec<Option<u64>> = l.remotes.iter().map(|r| l.spool_size(r)).collect();
    assert_eq!(sizes, vec![None, Some(canopy_conf::DEFAULT_SPOOL_SIZE)]);
}

#[test]
fn canopy_extensions() {
    let o = opts(
        r#"leafnodes {
  reconnect_buffer_size: 8MB
  remotes: [ {
    url: x
    reconnect_interval: 5
    reconnect: false
    connect_timeout: "10s"
    account_mappings: { events: { to: "site.events" }, "m.x.>": "n.y", k: "z" }
  } ]
}
prometheus { port: 7778 }"#,
    );
    let l = o.leafnodes.as_ref().unwrap();
    assert_eq!(l.reconnect_buffer_size, Some(8 << 20));
    let r = &l.remotes[0];
    assert_eq!(r.reconnect_interval, Some(Duration::from_secs(5)));
    assert_eq!(r.reconnect, Some(false));
    assert_eq!(r.connect_timeout, Some(Duration::from_secs(10)));
    let m: Vec<(&str, &str)> = r
        .account_mappings
        .iter()
        .map(|m| (m.source.as_str(), m.destinations[0].subject.as_str()))
        .collect();
    assert_eq!(
        m,
        vec![
            ("events.>", "site.events.>"),
            ("m.x.>", "n.y.>"),
            ("k.>", "z.>")
        ]
    );
    assert_eq!(o.prometheus.as_ref().unwrap().port, 7778);
    let ext: Vec<String> = o
        .extensions_used()
        .into_iter()
        .map(|(p, s)| format!("{}:{s}", p.line))
        .collect();
    assert_eq!(
        ext,
        vec![
            "11:prometheus (built-in /metrics)",
            "2:leafnodes.reconnect_buffer_size",
            "5:leafnodes.remotes[].reconnect_interval",
            "6:leafnodes.remotes[].reconnect",
            "7:leafnodes.remotes[].connect_timeout",
            "8:leafnodes.remotes[].account_mappings",
        ]
    );
    assert!(opts("prometheus: true").prometheus.is_some());
    assert!(opts("prometheus: false").prometheus.is_none());
}

#[test]
fn jetstream_forms() {
    for src in [
        "jetstream: true",
        "jetstream: enabled",
        "jetstream {}",
        "jetstream: { store_dir: /tmp/x }",
    ] {
        assert!(opts(src).jetstream.unwrap().enabled, "{src}");
    }
    for src in [
        "jetstream: false",
        "jetstream: disabled",
        "jetstream { enabled: false }",
    ] {
        assert!(!opts(src).jetstream.unwrap().enabled, "{src}");
    }
    let j = opts("jetstream { max_mem_store: 1G, max_file: 2GB, domain: hub, sync_interval: always, strict: true, max_buffered_msgs: 10 }").jetstream.unwrap();
    assert_eq!(j.max_memory_store, Some(1_000_000_000));
    assert_eq!(j.max_file_store, Some(2 << 30));
    assert_eq!(j.sync_interval, Some(SyncInterval::Always));
    assert_eq!(j.strict, Some(true));
    assert!(errs("jetstream: maybe").contains("enabled"));
    assert!(opts("jetstream: false").unsupported().is_empty());
}

#[test]
fn websocket_mqtt_gateway_are_kept_for_refusal() {
    let o = opts("websocket { port: -1, no_tls: true, compression: true }\nmqtt { port: 1883 }\ngateway { name: g, port: 7222 }\ntrusted_keys: [\"OABC\"]\nresolver: URL(\"http://localhost:9090/jwt/v1/accounts/\")");
    assert_eq!(o.websocket.as_ref().unwrap().port, -1);
    assert_eq!(o.mqtt.as_ref().unwrap().pos.line, 2);
    assert_eq!(o.gateway.as_ref().unwrap().pos.line, 3);
    assert_eq!(o.unmodelled.len(), 1);
    let u = o.unsupported();
    assert_eq!(u.len(), 4, "{u:?}");
    assert!(u
        .iter()
        .any(|(p, s)| p.line == 4 && s.contains("trusted_keys")));
    assert!(u
        .iter()
        .any(|(p, s)| p.line == 5 && s.contains("URL account resolver")));
    assert!(invalid("websocket { port: 8080 }").contains("no_tls"));
    // The websocket listener is implemented, permessage-deflate included.
    assert!(o.websocket.as_ref().unwrap().compression);
    assert!(!u.iter().any(|(_, s)| s.contains("websocket")), "{u:?}");
    assert!(
        opts("websocket { port: -1, no_tls: true, same_origin: true }")
            .unsupported()
            .is_empty()
    );
    // The websocket auth override, cookies and headers are implemented.
    let o = opts("websocket {\n port: -1\n no_tls: true\n authorization { token: t, timeout: 3 }\n token_cookie: tk\n headers { X-A: \"1\" }\n}");
    assert!(o.unsupported().is_empty(), "{:?}", o.unsupported());
    let w = o.websocket.as_ref().unwrap();
    assert_eq!(
        w.authorization.as_ref().unwrap().token.as_deref(),
        Some("t")
    );
    assert_eq!(w.token_cookie.as_deref(), Some("tk"));
    assert_eq!(w.headers, vec![("X-A".to_string(), "1".to_string())]);
    // Leaf remotes over websocket are implemented (mixing them with other URLs is
    // invalid, see `leafnodes_block`).
    let o = opts(
        "leafnodes {\n remotes: [\n  { url: \"ws://127.0.0.1:8080\", ws_compression: true }\n ]\n}",
    );
    assert!(o.unsupported().is_empty(), "{:?}", o.unsupported());
    assert!(o.validate().is_ok());
}

#[test]
fn validate_limits() {
    let e = invalid("max_payload: 70MB");
    assert!(e.contains("max_payload"), "{e}");
    let e = invalid("\nmax_payload: 2MB\nmax_pending: 1MB");
    assert!(
        e.starts_with("t.conf:2:1:") && e.contains("max_pending"),
        "{e}"
    );
    let o = opts("max_payload: 9MB");
    o.validate().unwrap();
    assert!(o
        .warnings()
        .iter()
        .any(|w| w.message.contains("max_payload")));
}

#[test]
fn bcrypt_passwords() {
    let good = "$2a$11$PWIFAL8RsWyGI3jVZtO9Nu8.6jOxzxfZo7c/W0eLk017hjgUKWrhy";
    let o = opts(&format!("authorization {{ user: a, password: {good} }}"));
    assert_eq!(o.authorization.password.as_deref(), Some(good));
    assert!(o.warnings().is_empty());
    let o = opts("authorization { user: a, password: $2a$11$fake }");
    o.validate().unwrap();
    let w = o.warnings();
    assert_eq!(w.len(), 1);
    assert!(w[0].message.contains("bcrypt") && w[0].message.contains("\"a\""));
    // quoted $2b$ is fine
    let o = opts("authorization { user: a, password: \"$2b$11$fake\" }");
    assert_eq!(o.warnings().len(), 1);
}

#[test]
fn load_file_sets_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.conf");
    std::fs::write(&path, "port: 1234\ninclude extra.conf\n").unwrap();
    std::fs::write(dir.path().join("extra.conf"), "server_name: x\nwhat: 1\n").unwrap();
    let e = load_file(&path).unwrap_err().to_string();
    assert!(e.contains("extra.conf:2:1: unknown field \"what\""), "{e}");
    std::fs::write(dir.path().join("extra.conf"), "server_name: x\n").unwrap();
    let o = load_file(&path).unwrap();
    assert_eq!(o.config_file.as_deref(), Some(path.as_path()));
    assert_eq!(o.server_name.as_deref(), Some("x"));
    assert_eq!(o.config_dir(), Some(dir.path()));
}

#[test]
fn operator_mode_and_resolvers() {
    let acc = "ADMQ2N4KRZMPYBDKZEMHWLZ5C6OKBMZRD64JDTRPVNZAK7S6UNJ3YWEX";
    let o = opts(&format!(
        "operator: \"/etc/op.jwt\"\nsystem_account: {acc}\nresolver: MEMORY\nresolver_preload: {{\n  {acc}: \"eyJ0.x.y\"\n}}"
    ));
    assert_eq!(o.operators, vec!["/etc/op.jwt".to_string()]);
    assert!(matches!(o.resolver, Some(ResolverOpts::Memory { .. })));
    assert_eq!(
        o.resolver_preload.get(acc).map(String::as_str),
        Some("eyJ0.x.y")
    );
    assert!(o.unmodelled.is_empty());
    assert!(o.unsupported().is_empty(), "{:?}", o.unsupported());
    o.validate().unwrap();

    let o = opts("operator: op.jwt\nresolver {\n type: full\n dir: \"./jwt\"\n allow_delete: true\n interval: \"2m\"\n limit: 50\n}");
    let Some(ResolverOpts::Dir(d)) = &o.resolver else {
        panic!("{:?}", o.resolver)
    };
    assert!(d.full && d.allow_delete);
    assert_eq!(d.dir, std::path::PathBuf::from("./jwt"));
    assert_eq!(d.interval, std::time::Duration::from_secs(120));
    assert_eq!(d.limit, 50);
    o.validate().unwrap();
    let o = opts("operator: op.jwt\nresolver { type: cache, dir: /tmp/x, ttl: \"1h\" }");
    let Some(ResolverOpts::Dir(d)) = &o.resolver else {
        panic!()
    };
    assert!(!d.full);
    assert_eq!(d.ttl, std::time::Duration::from_secs(3600));

    // Errors carry file:line.
    let e = errs("operator: op.jwt\nresolver {\n type: partial\n dir: x\n}");
    assert!(e.contains("t.conf:3") && e.contains("partial"), "{e}");
    assert!(errs("operator: x\nresolver { dir: x }").contains("requires a type"));
    assert!(errs("operator: x\nresolver { type: full }").contains("requires a dir"));
    assert!(errs("operator: x\nresolver: FILE").contains("not recognized"));
    assert!(
        errs("operator: x\nresolver { type: cache, dir: x, allow_delete: true }")
            .contains("allow_delete")
    );
    let e = invalid("\noperator: x");
    assert!(
        e.contains("t.conf:2") && e.contains("requires a resolver"),
        "{e}"
    );
    assert!(invalid("resolver: MEMORY").contains("requires operator mode"));
    assert!(
        invalid("operator: x\nresolver: MEMORY\nresolver_preload { AB: x }")
            .contains("not an account public key")
    );
    assert!(
        invalid("operator: x\nresolver: MEMORY\nauthorization { token: s3cr3t }")
            .contains("operator mode does not allow users")
    );
    assert!(invalid("operator: x\nresolver: MEMORY\naccounts { A: {} }")
        .contains("accounts come from JWTs"));
    assert!(
        invalid("operator: x\nresolver: MEMORY\nsystem_account: SYS")
            .contains("account public key")
    );
}

/// `-t` warns about a leaf with JetStream and no domain (nats-server #4148), and only then.
#[test]
fn leaf_jetstream_without_domain_is_warned() {
    let leaf = "jetstream { store_dir: \"/tmp/x\" }\nleafnodes { remotes: [ { url: \"nats-leaf://h:7422\" } ] }\n";
    let w = opts(leaf).warnings();
    assert!(
        w.iter()
            .any(|w| w.message.contains("no jetstream { domain }")),
        "{w:?}"
    );
    let with_domain = "jetstream { store_dir: \"/tmp/x\", domain: edge }\nleafnodes { remotes: [ { url: \"nats-leaf://h:7422\" } ] }\n";
    assert!(opts(with_domain).warnings().is_empty());
    let hub = "jetstream { store_dir: \"/tmp/x\" }\nleafnodes { port: 7422 }\n";
    assert!(opts(hub).warnings().is_empty());
}

#[test]
fn account_mappings_are_one_to_one_prefixes() {
    let remote = |m: &str| {
        format!("leafnodes {{ remotes: [ {{ url: x\n account_mappings: {{ {m} }} }} ] }}")
    };
    let e = errs(&remote(r#""m.*": "n""#));
    assert!(
        e.contains("t.conf:2:") && e.contains("without wildcards"),
        "{e}"
    );
    let e = errs(&remote(r#"a: "x.>.y""#));
    assert!(e.contains("without wildcards"), "{e}");
    let e = invalid(&remote("events: a\n \"events.eu\": b"));
    assert!(
        e.contains("t.conf:3:") && e.contains("overlaps \"events\" (at t.conf:2:"),
        "{e}"
    );
    let e = invalid(&remote("a: site.x\n b: \"site.x.y\""));
    assert!(
        e.contains("t.conf:3:") && e.contains("conflicts with"),
        "{e}"
    );
    let e = invalid(&remote("a: same\n b: same"));
    assert!(e.contains("conflicts with"), "{e}");
    // Disjoint prefixes, and a key under another entry's destination, are fine.
    opts(&remote(
        "events: site.events\n metrics: site.metrics\n site: other",
    ))
    .validate()
    .unwrap();
}
