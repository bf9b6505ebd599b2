//! Leaf remote and route URLs (`core/url.rs`, `LeafUrl`): never a panic, and a parsed
//! URL's `host:port` parses again to the same host and port (it is what we dial and what
//! we compare to recognise a route to ourselves).
#![no_main]

use canopy_server::core::url::ServerUrl;
use canopy_server::roles::leaf::LeafUrl;
use libfuzzer_sys::fuzz_target;

const ROUTE: &[&str] = &["nats-route", "nats", "tls", "route"];
const LEAF: &[&str] = &["nats-leaf", "nats", "tls", "leaf"];

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let _ = LeafUrl::parse(raw);
    for (schemes, port) in [(ROUTE, None), (LEAF, Some(7422))] {
        if let Ok(u) = ServerUrl::parse(raw, schemes, port) {
            let again = ServerUrl::parse(&u.hostport(), schemes, None).unwrap_or_else(|e| {
                panic!("{raw:?} -> {:?} does not parse again: {e}", u.hostport())
            });
            assert_eq!((&again.host, again.port), (&u.host, u.port), "{raw:?}");
        }
    }
});
