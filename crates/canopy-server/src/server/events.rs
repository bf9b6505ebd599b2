//! Events the server publishes in the system account: the `server` object every system
//! message carries, and the client connect/disconnect advisories.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::core::conn::ConnShared;
use crate::core::format::rfc3339;
use crate::server::version;
use crate::server::Server;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// The `server` part of every system message.
pub fn server_info(s: &Server) -> Value {
    json!({
        "name": s.name,
        "host": s.opts().host,
        "id": s.id,
        "cluster": s.cluster_name(),
        "ver": version::NATS_COMPAT_VERSION,
        "jetstream": s.jetstream().is_some(),
        "flags": 0,
        "seq": SEQ.fetch_add(1, Ordering::Relaxed) + 1,
        "time": rfc3339(SystemTime::now()),
    })
}

fn client_info(s: &Server, conn: &ConnShared) -> Value {
    let m = conn.meta.lock().clone();
    json!({
        "start": rfc3339(conn.start),
        "host": conn.addr.ip().to_string(),
        "id": conn.cid,
        "acc": m.account,
        "user": m.user,
        "name": m.name,
        "lang": m.lang,
        "ver": m.version,
        "server": s.name,
        "kind": "Client",
        "type": "nats",
    })
}

/// `$SYS.ACCOUNT.<acc>.CONNECT` (nats-server's `client_connect` advisory).
pub fn client_connected(s: &Server, conn: &ConnShared, account: &str) {
    let subject = format!("$SYS.ACCOUNT.{account}.CONNECT");
    s.publish_event(
        &subject,
        &json!({
            "type": "io.nats.server.advisory.v1.client_connect",
            "id": crate::core::nuid(),
            "timestamp": rfc3339(SystemTime::now()),
            "server": server_info(s),
            "client": client_info(s, conn),
        }),
    );
}

/// `$SYS.ACCOUNT.<acc>.DISCONNECT` (nats-server's `client_disconnect` advisory).
pub fn client_disconnected(s: &Server, conn: &ConnShared, account: &str) {
    let subject = format!("$SYS.ACCOUNT.{account}.DISCONNECT");
    let reason = conn
        .close_reason()
        .map(|r| r.to_string())
        .unwrap_or_default();
    let st = &conn.stats;
    s.publish_event(
        &subject,
        &json!({
            "type": "io.nats.server.advisory.v1.client_disconnect",
            "id": crate::core::nuid(),
            "timestamp": rfc3339(SystemTime::now()),
            "server": server_info(s),
            "client": client_info(s, conn),
            "sent": {"msgs": st.out_msgs.load(Ordering::Relaxed), "bytes": st.out_bytes.load(Ordering::Relaxed)},
            "received": {"msgs": st.in_msgs.load(Ordering::Relaxed), "bytes": st.in_bytes.load(Ordering::Relaxed)},
            "reason": reason,
        }),
    );
}
