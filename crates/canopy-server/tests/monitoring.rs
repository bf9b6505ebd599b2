//! Monitoring: the HTTP endpoints' JSON key sets against Debian's nats-server, typed
//! values that move with traffic, `/connz` paging/sorting/filters, and the Prometheus
//! `/metrics` scrape (on the monitoring port and on its own listener).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use canopy_testkit::{assert_eventually, http_get, nats_server_bin, RawClient, ServerProcess};
use serde::Deserialize;
use serde_json::Value;

const CONF: &str = "port: -1\nhttp: 127.0.0.1:-1\n";

/// Keys nats-server 2.9 reports that Canopy does not (yet). Each entry covers the key and
/// everything under it; docs/MONITORING.md "Known gaps" gives the same list with reasons.
const KNOWN_GAPS: &[(&str, &str)] = &[
    (
        "/varz cluster.name",
        "nats-server names a cluster for every server with leaf nodes; Canopy only with cluster {}",
    ),
    (
        "/accountz?acc=$G account_detail.imports",
        "no automatic $SYS service imports into accounts ($SYS answered for system users only)",
    ),
    (
        "/accstatz account_statz[].slow_consumers",
        "slow consumers are counted per server, not per account",
    ),
    (
        "/connz?state=closed&subs=1 connections[].subscriptions_list",
        "closed-connection records keep no subscriptions",
    ),
];

/// Objects whose keys are data (paths, names), not schema: compared as opaque values.
const MAP_VALUED: &[&str] = &["http_req_stats"];

/// Every key path in `v`: `a.b`, and `a[].c` for the union of the keys of `a`'s elements.
fn key_paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(p.clone());
                if !MAP_VALUED.contains(&k.as_str()) {
                    key_paths(x, &p, out);
                }
            }
        }
        Value::Array(a) => {
            for x in a {
                key_paths(x, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

fn paths(v: &Value) -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    key_paths(v, "", &mut s);
    s
}

fn covered_by_gap(endpoint: &str, key: &str) -> bool {
    KNOWN_GAPS.iter().any(|(g, _)| {
        let (ep, k) = g.split_once(' ').unwrap();
        ep == endpoint
            && (key == k || key.starts_with(&format!("{k}.")) || key.starts_with(&format!("{k}[]")))
    })
}

/// A client with two subscriptions (one in a queue group) that has published once.
fn busy_client(s: &ServerProcess) -> RawClient {
    let (mut c, _) = RawClient::connect(&s.addr()).unwrap();
    c.send_str(
        "CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"mon\",\"lang\":\"rust\",\"version\":\"1.0\"}\r\n\
         SUB foo 1\r\nSUB bar q 2\r\nPUB foo 2\r\nhi\r\nPING\r\n",
    )
    .unwrap();
    loop {
        let op = c.read_op().unwrap();
        if op == "PONG" {
            break;
        }
        if op.starts_with("MSG ") {
            c.read_payload(2).unwrap();
        }
    }
    c
}

fn closed_client(s: &ServerProcess) {
    let (mut c, _) = RawClient::connect(&s.addr()).unwrap();
    c.send_str("CONNECT {\"verbose\":false,\"name\":\"gone\"}\r\nSUB baz 7\r\nPING\r\n")
        .unwrap();
    assert_eq!(c.read_op().unwrap(), "PONG");
    drop(c);
}

#[test]
fn key_sets_match_nats_server() {
    if nats_server_bin().is_none() {
        eprintln!("SKIP key_sets_match_nats_server: /usr/sbin/nats-server is not installed");
        return;
    }
    let canopy = ServerProcess::canopy(CONF).unwrap();
    let nats = ServerProcess::nats_server(CONF).unwrap();
    let _c1 = busy_client(&canopy);
    let _n1 = busy_client(&nats);
    closed_client(&canopy);
    closed_client(&nats);
    for s in [&canopy, &nats] {
        assert_eventually!(
            Duration::from_secs(5),
            s.monitor("/connz?state=closed").unwrap()["total"] == 1,
            "{:?}: closed connection not recorded",
            s.kind
        );
    }
    let endpoints = [
        "/varz",
        "/connz?subs=1",
        "/connz?subs=detail&auth=1",
        "/connz?state=closed&subs=1",
        "/routez",
        "/routez?subs=1",
        "/leafz",
        "/leafz?subs=1",
        "/subsz",
        "/subsz?subs=1",
        "/accountz",
        "/accountz?acc=$G",
        "/accstatz",
        "/gatewayz",
        "/healthz",
    ];
    let mut missing = Vec::new();
    let mut stale = Vec::new();
    for ep in endpoints {
        let n = paths(&nats.monitor(ep).unwrap());
        let c = paths(&canopy.monitor(ep).unwrap());
        for k in n.difference(&c) {
            if !covered_by_gap(ep, k) {
                missing.push(format!("{ep} {k}"));
            }
        }
        for (g, _) in KNOWN_GAPS {
            let (gep, gk) = g.split_once(' ').unwrap();
            if gep == ep && c.contains(gk) {
                stale.push(g.to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys nats-server has and Canopy lacks (fix monitor.rs or add to KNOWN_GAPS and \
         docs/MONITORING.md):\n{}",
        missing.join("\n")
    );
    assert!(
        stale.is_empty(),
        "KNOWN_GAPS entries Canopy now provides (remove them here and in the docs): {stale:?}"
    );
}

#[derive(Debug, Deserialize)]
struct Varz {
    server_id: String,
    version: String,
    port: u16,
    connections: u64,
    total_connections: u64,
    subscriptions: u64,
    in_msgs: u64,
    out_msgs: u64,
    in_bytes: u64,
    out_bytes: u64,
    slow_consumers: u64,
    routes: u64,
    leafnodes: u64,
    mem: u64,
    cpu: f64,
    uptime: String,
    http_req_stats: BTreeMap<String, u64>,
}

#[derive(Debug, Deserialize)]
struct Connz {
    server_id: String,
    num_connections: usize,
    total: usize,
    offset: usize,
    limit: usize,
    connections: Vec<ConnInfo>,
}

#[derive(Debug, Deserialize)]
struct ConnInfo {
    cid: u64,
    kind: String,
    ip: String,
    in_msgs: u64,
    out_msgs: u64,
    in_bytes: u64,
    subscriptions: u64,
    name: Option<String>,
    reason: Option<String>,
    stop: Option<String>,
    subscriptions_list: Option<Vec<String>>,
    subscriptions_list_detail: Option<Vec<SubDetail>>,
}

#[derive(Debug, Deserialize, Clone, PartialEq)]
struct SubDetail {
    account: String,
    subject: String,
    qgroup: Option<String>,
    sid: String,
    msgs: u64,
    cid: u64,
}

#[derive(Debug, Deserialize)]
struct Subsz {
    num_subscriptions: u64,
    num_inserts: u64,
    num_matches: u64,
    total: usize,
    subscriptions_list: Vec<SubDetail>,
}

#[derive(Debug, Deserialize)]
struct Routez {
    num_routes: u64,
    routes: Vec<Value>,
}

#[derive(Debug, Deserialize)]
struct Leafz {
    leafnodes: u64,
    leafs: Vec<Value>,
}

#[derive(Debug, Deserialize)]
struct Accountz {
    system_account: String,
    accounts: Option<Vec<String>>,
    account_detail: Option<AccountDetail>,
}

#[derive(Debug, Deserialize)]
struct AccountDetail {
    account_name: String,
    client_connections: u64,
    subscriptions: u64,
    sublist_stats: SublistStats,
}

#[derive(Debug, Deserialize)]
struct SublistStats {
    num_subscriptions: u64,
}

#[derive(Debug, Deserialize)]
struct Accstatz {
    account_statz: Vec<AccStat>,
}

#[derive(Debug, Deserialize)]
struct AccStat {
    acc: String,
    conns: u64,
    received: MsgCount,
}

#[derive(Debug, Deserialize)]
struct MsgCount {
    msgs: u64,
}

#[derive(Debug, Deserialize)]
struct Healthz {
    status: String,
}

fn get<T: serde::de::DeserializeOwned>(s: &ServerProcess, path: &str) -> T {
    serde_json::from_value(s.monitor(path).unwrap()).unwrap()
}

fn connect(s: &ServerProcess, name: &str, subs: &[&str]) -> RawClient {
    let (mut c, _) = RawClient::connect(&s.addr()).unwrap();
    let mut cmd = format!("CONNECT {{\"verbose\":false,\"name\":\"{name}\"}}\r\n");
    for (i, subj) in subs.iter().enumerate() {
        cmd.push_str(&format!("SUB {subj} {}\r\n", i + 1));
    }
    cmd.push_str("PING\r\n");
    c.send_str(&cmd).unwrap();
    assert_eq!(c.read_op().unwrap(), "PONG");
    c
}

fn publish(c: &mut RawClient, subject: &str, n: usize) {
    let mut cmd = String::new();
    for _ in 0..n {
        cmd.push_str(&format!("PUB {subject} 5\r\nhello\r\n"));
    }
    cmd.push_str("PING\r\n");
    c.send_str(&cmd).unwrap();
    loop {
        let op = c.read_op().unwrap();
        if op == "PONG" {
            break;
        }
        if op.starts_with("MSG ") {
            c.read_payload(5).unwrap();
        }
    }
}

#[test]
fn typed_values_move_with_traffic() {
    let s = ServerProcess::canopy(CONF).unwrap();
    let v0: Varz = get(&s, "/varz");
    assert_eq!(v0.connections, 0);
    // The system account's internal client holds a few subscriptions from the start.
    let base = v0.subscriptions;
    assert_eq!(v0.port, s.port);
    assert!(v0.version.starts_with("2."));
    assert!(v0.mem > 0);
    assert!(v0.cpu >= 0.0);
    assert!(v0.uptime.ends_with('s'));
    assert_eq!((v0.routes, v0.leafnodes, v0.slow_consumers), (0, 0, 0));

    let mut pubr = connect(&s, "publisher", &[]);
    let _sub = connect(&s, "subscriber", &["orders.>", "orders.new"]);
    publish(&mut pubr, "orders.new", 10);

    let v: Varz = get(&s, "/varz");
    assert_eq!(v.server_id, v0.server_id);
    assert_eq!(v.connections, 2);
    assert_eq!(v.total_connections, 2);
    assert_eq!(v.subscriptions, base + 2);
    assert_eq!(v.in_msgs, 10);
    assert_eq!(v.in_bytes, 50);
    assert_eq!(
        v.out_msgs, 20,
        "two matching subscriptions on one connection"
    );
    assert_eq!(v.out_bytes, 100);
    assert!(v.http_req_stats["/varz"] >= 2, "{:?}", v.http_req_stats);

    let cz: Connz = get(&s, "/connz?subs=detail&sort=msgs_from");
    assert_eq!(cz.server_id, v.server_id);
    assert_eq!(
        (cz.num_connections, cz.total, cz.offset, cz.limit),
        (2, 2, 0, 1024)
    );
    let (p, sub) = (&cz.connections[0], &cz.connections[1]);
    assert_eq!(
        p.name.as_deref(),
        Some("publisher"),
        "msgs_from sorts largest first"
    );
    assert_eq!((p.kind.as_str(), p.ip.as_str()), ("Client", "127.0.0.1"));
    assert_eq!((p.in_msgs, p.in_bytes, p.subscriptions), (10, 50, 0));
    assert!(
        p.subscriptions_list_detail.is_none(),
        "empty lists are omitted"
    );
    assert_eq!((sub.out_msgs, sub.subscriptions), (20, 2));
    let mut detail = sub.subscriptions_list_detail.clone().unwrap();
    detail.sort_by(|a, b| a.sid.cmp(&b.sid));
    // Per-subscription `msgs` is only counted for auto-unsubscribe subscriptions today
    // (docs/MONITORING.md, known gaps): accept 0 until delivery counts every message.
    for d in &mut detail {
        assert!(d.msgs == 0 || d.msgs == 10, "{d:?}");
        d.msgs = 10;
    }
    assert_eq!(
        detail[0],
        SubDetail {
            account: "$G".into(),
            subject: "orders.>".into(),
            qgroup: None,
            sid: "1".into(),
            msgs: 10,
            cid: sub.cid,
        }
    );
    assert_eq!(
        (detail[1].subject.as_str(), detail[1].msgs),
        ("orders.new", 10)
    );
    assert!(sub.subscriptions_list.is_none());

    let cz: Connz = get(&s, "/connz?subs=1");
    let mut names = cz.connections[1].subscriptions_list.clone().unwrap();
    names.sort();
    assert_eq!(names, ["orders.>", "orders.new"]);

    let sz: Subsz = get(&s, "/subsz?subs=1&test=orders.new");
    assert_eq!(sz.num_subscriptions, base + 2);
    assert_eq!(sz.num_inserts, base + 2);
    assert!(sz.num_matches >= 1);
    assert_eq!(sz.total, 2);
    let sz: Subsz = get(&s, "/subsz?subs=1&test=orders.old");
    assert_eq!(sz.total, 1);
    assert_eq!(sz.subscriptions_list[0].subject, "orders.>");
    let (code, body) = http_get(s.http_port.unwrap(), "/subsz?subs=1&test=orders.*").unwrap();
    assert_eq!(code, 400, "{body}");

    let rz: Routez = get(&s, "/routez?subs=1");
    assert_eq!((rz.num_routes, rz.routes.len()), (0, 0));
    let lz: Leafz = get(&s, "/leafz?subs=1");
    assert_eq!((lz.leafnodes, lz.leafs.len()), (0, 0));

    let az: Accountz = get(&s, "/accountz");
    assert_eq!(az.system_account, "$SYS");
    assert!(az.accounts.unwrap().contains(&"$G".to_string()));
    let az: Accountz = get(&s, "/accountz?acc=%24G");
    let d = az.account_detail.unwrap();
    assert_eq!(d.account_name, "$G");
    assert_eq!((d.client_connections, d.subscriptions), (2, 2));
    assert_eq!(d.sublist_stats.num_subscriptions, 2);

    let st: Accstatz = get(&s, "/accstatz");
    let g = st.account_statz.iter().find(|a| a.acc == "$G").unwrap();
    assert_eq!((g.conns, g.received.msgs), (2, 10));

    let h: Healthz = get(&s, "/healthz");
    assert_eq!(h.status, "ok");
}

#[test]
fn connz_paging_sorting_and_closed() {
    let s = ServerProcess::canopy(CONF).unwrap();
    let mut clients: Vec<RawClient> = (0..3)
        .map(|i| connect(&s, &format!("c{i}"), &["a", "b", "c"][..i]))
        .collect();
    let all: Connz = get(&s, "/connz");
    let cids: Vec<u64> = all.connections.iter().map(|c| c.cid).collect();
    assert_eq!(cids.len(), 3);
    assert!(
        cids.windows(2).all(|w| w[0] < w[1]),
        "default sort is by cid"
    );

    let p1: Connz = get(&s, "/connz?limit=2");
    assert_eq!((p1.num_connections, p1.total, p1.limit), (2, 3, 2));
    let p2: Connz = get(&s, "/connz?limit=2&offset=2");
    assert_eq!((p2.num_connections, p2.total, p2.offset), (1, 3, 2));
    assert_eq!(p2.connections[0].cid, cids[2]);
    let past: Connz = get(&s, "/connz?offset=10");
    assert_eq!((past.num_connections, past.total), (0, 3));
    let zero: Connz = get(&s, "/connz?limit=0");
    assert_eq!((zero.limit, zero.num_connections), (1024, 3));

    let by_subs: Connz = get(&s, "/connz?sort=subs");
    let subs: Vec<u64> = by_subs
        .connections
        .iter()
        .map(|c| c.subscriptions)
        .collect();
    assert_eq!(subs, [2, 1, 0]);
    let one: Connz = get(&s, &format!("/connz?cid={}", cids[1]));
    assert_eq!((one.num_connections, one.limit), (1, 1));
    assert_eq!(one.connections[0].cid, cids[1]);

    for (q, want) in [
        ("sort=bogus", "invalid sorting option: bogus"),
        ("sort=stop", "sort by stop only valid on closed connections"),
        (
            "sort=reason&state=all",
            "sort by reason only valid on closed connections",
        ),
        ("state=xyz", "Error decoding state for xyz"),
        ("subs=maybe", "Error decoding boolean for 'subs'"),
        ("limit=ten", "Error decoding int for 'limit'"),
    ] {
        let (code, body) = http_get(s.http_port.unwrap(), &format!("/connz?{q}")).unwrap();
        assert_eq!(code, 400, "{q}: {body}");
        assert!(body.starts_with(want), "{q}: {body}");
    }

    // Close the middle client; it moves to state=closed with a reason.
    let gone = clients.remove(1);
    drop(gone);
    assert_eventually!(
        Duration::from_secs(5),
        get::<Connz>(&s, "/connz").total == 2,
        "closed client still listed as open"
    );
    let closed: Connz = get(&s, "/connz?state=closed&sort=stop");
    assert_eq!(closed.total, 1);
    let c = &closed.connections[0];
    assert_eq!(c.cid, cids[1]);
    assert!(c.stop.is_some());
    assert_eq!(c.reason.as_deref(), Some("Client Closed"));
    let any: Connz = get(&s, "/connz?state=any");
    assert_eq!(any.total, 3);
    let one_closed: Connz = get(&s, &format!("/connz?state=closed&cid={}", cids[1]));
    assert_eq!(one_closed.num_connections, 1);
    let not_open: Connz = get(&s, &format!("/connz?cid={}", cids[1]));
    assert_eq!(not_open.num_connections, 0);
}

/// A parsed scrape: family name → (type, help, samples as (labels, value)).
#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: String,
    samples: Vec<(BTreeMap<String, String>, f64)>,
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A strict little parser for the Prometheus text format 0.0.4: every sample must belong
/// to a family announced by `# TYPE` (with `# HELP`), labels must be well formed and
/// values must parse.
fn parse_prometheus(text: &str) -> BTreeMap<String, Family> {
    let mut fams: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(valid_name(name), "bad name in {line:?}");
            fams.entry(name.into()).or_default().help = help.into();
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line:?}"
            );
            let f = fams.entry(name.into()).or_default();
            assert!(f.kind.is_empty(), "duplicate TYPE for {name}");
            assert!(f.samples.is_empty(), "TYPE after samples for {name}");
            f.kind = kind.into();
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{line:?}"));
                (name, parse_labels(body))
            }
        };
        assert!(valid_name(name), "bad sample name in {line:?}");
        let f = fams
            .get_mut(name)
            .unwrap_or_else(|| panic!("sample before its # TYPE: {line:?}"));
        assert!(
            !f.kind.is_empty() && !f.help.is_empty(),
            "{name} lacks HELP/TYPE"
        );
        f.samples.push((labels, value));
    }
    fams
}

fn parse_labels(body: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert!(valid_name(&key), "bad label name {key:?}");
        assert_eq!(chars.next(), Some('"'));
        let mut val = String::new();
        loop {
            match chars.next().unwrap() {
                '"' => break,
                '\\' => match chars.next().unwrap() {
                    'n' => val.push('\n'),
                    c => val.push(c),
                },
                c => val.push(c),
            }
        }
        out.insert(key, val);
        match chars.next() {
            None => break,
            Some(',') => {}
            Some(c) => panic!("unexpected {c:?} after label"),
        }
    }
    out
}

fn one(fams: &BTreeMap<String, Family>, name: &str) -> f64 {
    let f = fams.get(name).unwrap_or_else(|| panic!("no family {name}"));
    assert_eq!(f.samples.len(), 1, "{name}");
    f.samples[0].1
}

#[test]
fn metrics_scrape() {
    let s = ServerProcess::canopy(CONF).unwrap();
    let mut c = connect(&s, "m", &["x.*"]);
    publish(&mut c, "x.y", 3);
    let (code, text) = http_get(s.http_port.unwrap(), "/metrics").unwrap();
    assert_eq!(code, 200);
    let fams = parse_prometheus(&text);
    let v: Varz = get(&s, "/varz");

    assert_eq!(one(&fams, "nats_server_connections"), 1.0);
    assert_eq!(one(&fams, "nats_server_total_connections"), 1.0);
    assert_eq!(
        one(&fams, "nats_server_subscriptions"),
        v.subscriptions as f64
    );
    assert_eq!(one(&fams, "nats_server_in_msgs"), 3.0);
    assert_eq!(one(&fams, "nats_server_out_msgs"), 3.0);
    assert_eq!(one(&fams, "nats_server_in_bytes"), 15.0);
    assert_eq!(one(&fams, "nats_server_out_bytes"), 15.0);
    assert_eq!(one(&fams, "nats_server_slow_consumers"), 0.0);
    assert_eq!(one(&fams, "nats_server_auth_failures"), 0.0);
    assert!(one(&fams, "nats_server_mem_bytes") > 1e5);
    assert!(one(&fams, "nats_server_cpu_percent") >= 0.0);
    assert!(one(&fams, "nats_server_uptime_seconds") >= 0.0);
    assert!(one(&fams, "nats_server_start_time_seconds") > 1.6e9);
    assert_eq!(one(&fams, "nats_routes_connections"), 0.0);
    assert_eq!(one(&fams, "nats_leafnodes_connections"), 0.0);
    let info = &fams["nats_server_info"].samples[0].0;
    assert_eq!(info["server_id"], v.server_id);
    assert_eq!(info["version"], v.version);
    for (name, kind) in [
        ("nats_server_in_msgs", "counter"),
        ("nats_server_connections", "gauge"),
        ("nats_leafnodes_sent_msgs", "counter"),
        ("nats_leafnodes_recv_msgs", "counter"),
        ("nats_leafnodes_rtt_seconds", "gauge"),
        ("nats_leafnodes_reconnects", "counter"),
    ] {
        assert_eq!(fams[name].kind, kind, "{name}");
    }
    let acc = &fams["nats_account_in_msgs"].samples;
    let g = acc.iter().find(|(l, _)| l["account"] == "$G").unwrap();
    assert_eq!(g.1, 3.0);

    // Counters move between scrapes.
    publish(&mut c, "x.z", 2);
    let (_, text) = http_get(s.http_port.unwrap(), "/metrics").unwrap();
    assert_eq!(one(&parse_prometheus(&text), "nats_server_in_msgs"), 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_metrics_alone() {
    let server = canopy_server::server::Server::new(canopy_conf::Options::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(canopy_server::monitor::metrics::serve_metrics(
        Arc::clone(&server),
        listener,
    ));
    let (m, v) = tokio::task::spawn_blocking(move || {
        (
            http_get(port, "/metrics").unwrap(),
            http_get(port, "/varz").unwrap(),
        )
    })
    .await
    .unwrap();
    assert_eq!(m.0, 200);
    let fams = parse_prometheus(&m.1);
    assert_eq!(one(&fams, "nats_leafnodes_connections"), 0.0);
    assert_eq!(
        fams["nats_server_info"].samples[0].0["server_id"],
        server.id
    );
    assert_eq!(v.0, 404, "only /metrics is served on the prometheus port");
    server.shutdown_now();
}

/// A hub accepting leaves and a leaf soliciting it, both of `kind`.
fn hub_and_leaf(kind: canopy_testkit::Impl) -> (ServerProcess, ServerProcess, u16) {
    let lp = canopy_testkit::free_fixed_port();
    let hub = ServerProcess::start(
        kind,
        &format!("server_name: hub\n{CONF}leafnodes {{ port: {lp} }}\n"),
        &[],
    )
    .unwrap();
    let leaf = ServerProcess::start(
        kind,
        &format!(
            "server_name: leaf1\n{CONF}leafnodes {{ remotes: [ {{ url: \"nats-leaf://127.0.0.1:{lp}\", deny_imports: [\"secret.>\"] }} ] }}\n"
        ),
        &[],
    )
    .unwrap();
    for s in [&hub, &leaf] {
        assert_eventually!(
            Duration::from_secs(8),
            s.monitor("/varz").unwrap()["leafnodes"] == 1,
            "{:?}: leaf connection did not form",
            s.kind
        );
    }
    (hub, leaf, lp)
}

fn scrape(s: &ServerProcess) -> BTreeMap<String, Family> {
    let (code, text) = http_get(s.http_port.unwrap(), "/metrics").unwrap();
    assert_eq!(code, 200);
    parse_prometheus(&text)
}

/// The sample of `family` whose labels include all of `want`.
fn sample(fams: &BTreeMap<String, Family>, family: &str, want: &[(&str, &str)]) -> Option<f64> {
    fams.get(family)?
        .samples
        .iter()
        .find(|(l, _)| {
            want.iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.1)
}

#[test]
fn leaf_metrics_and_leafz() {
    let (mut hub, leaf, lp) = hub_and_leaf(canopy_testkit::Impl::Canopy);
    let lz: Leafz = get(&hub, "/leafz");
    assert_eq!((lz.leafnodes, lz.leafs.len()), (1, 1));
    assert_eq!(lz.leafs[0]["name"], "leaf1");
    assert_eq!(lz.leafs[0]["account"], "$G");

    // Traffic hub → leaf: a subscriber on the leaf, a publisher on the hub.
    let mut sub = connect(&leaf, "leaf-sub", &["up.>"]);
    let mut pubr = connect(&hub, "hub-pub", &[]);
    assert_eventually!(
        Duration::from_secs(5),
        {
            publish(&mut pubr, "up.probe", 1);
            sample(
                &scrape(&hub),
                "nats_leafnodes_sent_msgs",
                &[("name", "leaf1")],
            ) > Some(0.0)
        },
        "interest never reached the hub"
    );
    let hub_m = scrape(&hub);
    assert_eq!(one(&hub_m, "nats_leafnodes_connections"), 1.0);
    let labels = [("name", "leaf1"), ("account", "$G")];
    assert_eq!(sample(&hub_m, "nats_leafnodes_up", &labels), Some(1.0));
    let sent = sample(&hub_m, "nats_leafnodes_sent_msgs", &labels).unwrap();
    assert!(sent >= 1.0);
    assert!(sample(&hub_m, "nats_leafnodes_rtt_seconds", &labels).unwrap() >= 0.0);
    assert_eq!(
        sample(
            &scrape(&hub),
            "nats_account_leafnodes",
            &[("account", "$G")]
        ),
        Some(1.0)
    );

    let remote = format!("127.0.0.1:{lp}");
    let leaf_m = scrape(&leaf);
    let on_leaf = [("name", "hub"), ("remote", remote.as_str())];
    assert_eq!(sample(&leaf_m, "nats_leafnodes_up", &on_leaf), Some(1.0));
    assert_eq!(
        sample(&leaf_m, "nats_leafnodes_reconnects", &on_leaf),
        Some(0.0)
    );
    let recv = sample(&leaf_m, "nats_leafnodes_recv_msgs", &on_leaf).unwrap();
    assert!(recv >= 1.0, "leaf received {recv}");
    // Drain what the subscriber got so the connection stays healthy.
    sub.send_str("PING\r\n").unwrap();

    // The hub goes away: the remote stays listed on the leaf, down.
    hub.kill();
    assert_eventually!(
        Duration::from_secs(5),
        sample(
            &scrape(&leaf),
            "nats_leafnodes_up",
            &[("remote", remote.as_str())]
        ) == Some(0.0),
        "down remote not reported"
    );
    assert_eq!(one(&scrape(&leaf), "nats_leafnodes_connections"), 0.0);
}

#[test]
fn leafz_key_set_matches_nats_server() {
    if nats_server_bin().is_none() {
        eprintln!("SKIP leafz_key_set_matches_nats_server: /usr/sbin/nats-server is not installed");
        return;
    }
    let (c_hub, c_leaf, _) = hub_and_leaf(canopy_testkit::Impl::Canopy);
    let (n_hub, n_leaf, _) = hub_and_leaf(canopy_testkit::Impl::NatsServer);
    let pairs = [(&n_hub, &c_hub), (&n_leaf, &c_leaf)];
    for ((n, c), ep) in pairs
        .iter()
        .flat_map(|p| ["/leafz", "/leafz?subs=1", "/varz"].map(|ep| (*p, ep)))
    {
        let n = paths(&n.monitor(ep).unwrap());
        let c = paths(&c.monitor(ep).unwrap());
        let missing: Vec<&String> = n
            .difference(&c)
            .filter(|k| !covered_by_gap(ep, k))
            .collect();
        assert!(missing.is_empty(), "{ep}: Canopy lacks {missing:?}");
    }
}

/// A two-server cluster of `kind`, routed both ways.
fn cluster_pair(kind: canopy_testkit::Impl) -> (ServerProcess, ServerProcess) {
    let (p1, p2) = (
        canopy_testkit::free_fixed_port(),
        canopy_testkit::free_fixed_port(),
    );
    let conf = |name: &str, own: u16, peer: u16| {
        format!(
            "server_name: {name}\n{CONF}cluster {{ name: C, port: {own}, routes: [\"nats-route://127.0.0.1:{peer}\"] }}\n"
        )
    };
    let a = ServerProcess::start(kind, &conf("a", p1, p2), &[]).unwrap();
    let b = ServerProcess::start(kind, &conf("b", p2, p1), &[]).unwrap();
    for s in [&a, &b] {
        assert_eventually!(
            Duration::from_secs(8),
            s.monitor("/routez").unwrap()["num_routes"] == 1,
            "{:?}: route did not form",
            s.kind
        );
    }
    (a, b)
}

#[test]
fn routez_and_cluster_varz() {
    let (a, _b) = cluster_pair(canopy_testkit::Impl::Canopy);
    let rz: Routez = get(&a, "/routez?subs=1");
    assert_eq!((rz.num_routes, rz.routes.len()), (1, 1));
    assert_eq!(rz.routes[0]["remote_name"], "b");
    let v = a.monitor("/varz").unwrap();
    assert_eq!(v["routes"], 1);
    assert_eq!(v["cluster"]["name"], "C");
    assert_eq!(one(&scrape(&a), "nats_routes_connections"), 1.0);
    if nats_server_bin().is_none() {
        eprintln!("SKIP routez key-set comparison: /usr/sbin/nats-server is not installed");
        return;
    }
    let (n, _nb) = cluster_pair(canopy_testkit::Impl::NatsServer);
    for ep in ["/routez", "/routez?subs=1", "/varz"] {
        let np = paths(&n.monitor(ep).unwrap());
        let cp = paths(&a.monitor(ep).unwrap());
        let missing: Vec<&String> = np
            .difference(&cp)
            .filter(|k| !covered_by_gap(ep, k))
            .collect();
        assert!(missing.is_empty(), "{ep}: Canopy lacks {missing:?}");
    }
}
