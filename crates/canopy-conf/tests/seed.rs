//! Every configuration under examples/seed/ (the seed document's files) must load and
//! validate; spot checks that the seed's keys land in the right typed fields.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use canopy_conf::{load_file, CompressionMode, Export, Import, Options, SyncInterval};

fn seed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed")
}

fn load(name: &str) -> Options {
    let path = seed_dir().join(name);
    let o = load_file(&path).unwrap_or_else(|e| panic!("{name}:\n{e}"));
    o.validate().unwrap_or_else(|e| panic!("{name}:\n{e}"));
    o
}

#[test]
fn every_seed_file_parses_and_validates() {
    let mut n = 0;
    for entry in std::fs::read_dir(seed_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("conf") {
            continue;
        }
        let o = load_file(&path).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        o.validate()
            .unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        n += 1;
    }
    assert!(n >= 12, "expected the 12 seed files, found {n}");
}

#[test]
fn hub_server() {
    let o = load("hub-server.conf");
    assert_eq!(o.port, 4222);
    assert_eq!(o.http_port, Some(8222));
    assert_eq!(o.server_name.as_deref(), Some("hub-server-1"));
    let c = o.cluster.as_ref().unwrap();
    assert_eq!(c.name.as_deref(), Some("main-cluster"));
    assert_eq!(c.port, 6222);
    assert_eq!(c.routes, vec!["nats-route://127.0.0.1:6222"; 2]);
    assert_eq!(o.leafnodes.as_ref().unwrap().port, 7422);
    assert!(o.logtime && !o.debug && !o.trace);
    assert!(o.extensions_used().is_empty());
}

#[test]
fn hub_secure() {
    let o = load("hub-secure.conf");
    assert_eq!(o.accounts.len(), 3);
    let us = o.account("US_WEST").unwrap();
    assert_eq!(us.users[0].user, "us_west_leaf");
    assert_eq!(us.users[0].password.as_deref(), Some("$2a$11$uswestsecret"));
    assert_eq!(us.users[0].account.as_deref(), Some("US_WEST"));
    assert!(matches!(&us.exports[0], Export::Stream { subject, .. } if subject == "events.>"));
    assert!(matches!(&us.exports[1], Export::Service { subject, .. } if subject == "api.>"));
    assert!(matches!(&us.imports[0],
        Import::Stream { account, subject, .. } if account == "EU" && subject == "eu.events.>"));
    assert_eq!(o.system_account.as_deref(), Some("SYS"));
    let ca = o.cluster.as_ref().unwrap().authorization.as_ref().unwrap();
    assert_eq!(ca.user.as_deref(), Some("cluster_user"));
    let l = o.leafnodes.as_ref().unwrap();
    assert!(l.tls.as_ref().unwrap().verify);
    let la = l.authorization.as_ref().unwrap();
    assert_eq!(la.users.len(), 2);
    assert_eq!(la.users[1].account.as_deref(), Some("EU"));
    // The seed's fake bcrypt hashes are accepted with a warning.
    let w = o.warnings();
    assert_eq!(
        w.iter().filter(|w| w.message.contains("bcrypt")).count(),
        3,
        "{w:?}"
    );
    assert!(w[0].pos.file.ends_with("hub-secure.conf"));
    // Its TLS blocks are implemented now (rustls in the server).
    assert!(o.unsupported().is_empty(), "{:?}", o.unsupported());
}

#[test]
fn leaf_secure() {
    let o = load("leaf-secure.conf");
    let r = &o.leafnodes.as_ref().unwrap().remotes[0];
    assert_eq!(r.urls.len(), 2);
    assert_eq!(r.account.as_deref(), Some("LOCAL"));
    assert!(r
        .credentials
        .as_ref()
        .unwrap()
        .ends_with("us-west-leaf.creds"));
    assert!(r.tls.as_ref().unwrap().ca_file.is_some());
}

#[test]
fn edge_leaf_extensions() {
    let o = load("edge-leaf.conf");
    let r = &o.leafnodes.as_ref().unwrap().remotes[0];
    assert_eq!(r.reconnect_interval, Some(Duration::from_secs(5)));
    let js = o.jetstream.as_ref().unwrap();
    assert!(js.enabled);
    assert_eq!(js.max_memory_store, Some(256 * 1024 * 1024));
    assert_eq!(js.max_file_store, Some(1 << 30));
    let ext = o.extensions_used();
    assert_eq!(ext.len(), 1);
    assert!(ext[0].1.contains("reconnect_interval"));
    assert_eq!(ext[0].0.line, 20);
}

#[test]
fn us_regional_hub() {
    let o = load("us-regional-hub.conf");
    let l = o.leafnodes.as_ref().unwrap();
    assert_eq!(l.remotes.len(), 2);
    assert_eq!(l.remotes[0].deny_imports, vec!["local.>"]);
    assert_eq!(l.remotes[1].deny_exports, vec!["local.>"]);
    let js = o.jetstream.as_ref().unwrap();
    assert_eq!(js.domain.as_deref(), Some("us"));
    assert_eq!(js.max_file_store, Some(100 << 30));
}

#[test]
fn leaf_with_remapping() {
    let o = load("leaf-with-remapping.conf");
    let r = &o.leafnodes.as_ref().unwrap().remotes[0];
    assert_eq!(r.account_mappings.len(), 2);
    assert_eq!(r.account_mappings[0].source, "events.>");
    assert_eq!(
        r.account_mappings[0].destinations[0].subject,
        "site-a.events.>"
    );
    assert_eq!(r.account_mappings[0].destinations[0].weight, 100);
    assert_eq!(r.account_mappings[1].source, "metrics.>");
}

#[test]
fn resilient_and_high_performance() {
    let o = load("resilient-leaf.conf");
    let l = o.leafnodes.as_ref().unwrap();
    assert_eq!(l.reconnect_buffer_size, Some(64 * 1024 * 1024));
    assert_eq!(l.remotes[0].reconnect, Some(true));
    assert_eq!(l.remotes[0].connect_timeout, Some(Duration::from_secs(10)));
    assert_eq!(o.extensions_used().len(), 3);

    let o = load("high-performance-leaf.conf");
    assert_eq!(o.max_connections, 10000);
    assert_eq!(o.max_payload, 8 * 1024 * 1024);
    assert_eq!(o.write_deadline, Duration::from_secs(10));
    let r = &o.leafnodes.as_ref().unwrap().remotes[0];
    assert_eq!(
        r.compression.as_ref().unwrap().mode,
        CompressionMode::S2Auto
    );
    let js = o.jetstream.as_ref().unwrap();
    assert_eq!(
        js.sync_interval,
        Some(SyncInterval::Every(Duration::from_secs(60)))
    );

    let o = load("leaf-compression.conf");
    let r = &o.leafnodes.as_ref().unwrap().remotes[0];
    assert!(!r.no_randomize);
    assert_eq!(o.port, 4222);
}
