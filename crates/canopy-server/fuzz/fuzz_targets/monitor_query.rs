//! Monitoring query strings: `parse_query`, then every endpoint answering the query on an
//! idle server (the option decoders: `subs`, `sort`, `state`, `offset`, `limit`, `acc`,
//! `callback`, ...). A bad value is a 400, never a panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use canopy_server::monitor::{answer, parse_query};
use canopy_server::server::Server;
use libfuzzer_sys::fuzz_target;

const PATHS: &[&str] = &[
    "/varz",
    "/connz",
    "/routez",
    "/gatewayz",
    "/leafz",
    "/subsz",
    "/accountz",
    "/accstatz",
    "/healthz",
    "/metrics",
];

fn server() -> &'static Arc<Server> {
    static S: OnceLock<Arc<Server>> = OnceLock::new();
    S.get_or_init(|| Server::new(canopy_conf::Options::default()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let q = String::from_utf8_lossy(rest);
    let _ = parse_query(&q);
    let path = PATHS[which as usize % PATHS.len()];
    if let Some(status) = answer(server(), &format!("{path}?{q}")) {
        assert!(
            status == 200 || status == 400 || status == 404,
            "{path}?{q}: {status}"
        );
    }
});
