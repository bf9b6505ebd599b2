//! Helpers shared by the clustered JetStream tests: members on free ports with routes to
//! each other, waiting for the meta group, request helpers.

#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use async_nats::jetstream;
use canopy_testkit::{assert_eventually, free_fixed_port, ServerProcess};
use futures::StreamExt;
use serde_json::Value;

/// One member's config: routes to every member, itself included (as the official Helm
/// chart renders them).
pub fn member_config(name: &str, port: u16, all: &[u16], store: &std::path::Path) -> String {
    let routes: Vec<String> = all
        .iter()
        .map(|p| format!("nats-route://127.0.0.1:{p}"))
        .collect();
    format!(
        "server_name: {name}\nlisten: 127.0.0.1:-1\nhttp: 127.0.0.1:-1\n\
         cluster {{ name: c1, listen: 127.0.0.1:{port}, routes: [{}] }}\n\
         jetstream {{ store_dir: \"{}\" }}\n",
        routes.join(", "),
        store.display()
    )
}

pub struct Member {
    pub name: String,
    pub port: u16,
    pub store: tempfile::TempDir,
    pub proc: Option<ServerProcess>,
    /// Configuration appended to the member's (accounts, ...).
    pub extra: String,
}

impl Member {
    pub fn server(&self) -> &ServerProcess {
        self.proc.as_ref().unwrap()
    }

    pub fn meta(&self) -> Value {
        self.server()
            .monitor("/jsz")
            .map(|v| v["meta_cluster"].clone())
            .unwrap_or(Value::Null)
    }
}

pub fn members(n: usize) -> (Vec<Member>, Vec<u16>) {
    let ports: Vec<u16> = (0..n).map(|_| free_fixed_port()).collect();
    let ms = (0..n)
        .map(|i| Member {
            name: format!("m{i}"),
            port: ports[i],
            store: tempfile::tempdir().unwrap(),
            proc: None,
            extra: String::new(),
        })
        .collect();
    (ms, ports)
}

pub fn start(m: &mut Member, all: &[u16]) {
    let cfg = member_config(&m.name, m.port, all, m.store.path()) + &m.extra;
    m.proc = Some(ServerProcess::canopy(&cfg).expect("start"));
}

/// Starts `n` members and waits until all agree on a meta leader of a group of `n`.
pub fn cluster(n: usize) -> Vec<Member> {
    let (mut ms, ports) = members(n);
    for m in &mut ms {
        start(m, &ports);
    }
    wait_formed(&ms, n);
    ms
}

pub fn wait_formed(ms: &[Member], n: usize) -> String {
    let mut leader;
    assert_eventually!(
        Duration::from_secs(30),
        {
            let metas: Vec<Value> = ms
                .iter()
                .filter(|m| m.proc.is_some())
                .map(Member::meta)
                .collect();
            let l = metas[0]["leader"].as_str().unwrap_or("").to_string();
            let ok = !l.is_empty()
                && metas
                    .iter()
                    .all(|v| v["leader"] == l.as_str() && v["cluster_size"] == n as u64);
            leader = l;
            ok
        },
        "the meta group did not form: {:?}",
        ms.iter()
            .filter(|m| m.proc.is_some())
            .map(Member::meta)
            .collect::<Vec<_>>()
    );
    leader
}

pub async fn js(s: &ServerProcess) -> (async_nats::Client, jetstream::Context) {
    let nc = async_nats::connect(s.url()).await.unwrap();
    (nc.clone(), jetstream::new(nc))
}

/// Sends a request with a reply inbox of our own and counts the answers within a second.
pub async fn answers(nc: &async_nats::Client, subject: &str, body: &str) -> Vec<Value> {
    let inbox = nc.new_inbox();
    let mut sub = nc.subscribe(inbox.clone()).await.unwrap();
    nc.flush().await.unwrap();
    nc.publish_with_reply(subject.to_string(), inbox, body.to_string().into())
        .await
        .unwrap();
    nc.flush().await.unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await {
        out.push(serde_json::from_slice(&m.payload).unwrap_or(Value::Null));
    }
    out
}

/// One request, the first answer (`None`: none within 5 s).
pub async fn request(nc: &async_nats::Client, subject: &str, body: &str) -> Option<Value> {
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        nc.request(subject.to_string(), body.to_string().into()),
    )
    .await;
    match r {
        Ok(Ok(m)) => serde_json::from_slice(&m.payload).ok(),
        _ => None,
    }
}

/// Retries `f` (every 200 ms) until it gives `Ok`, for at most `timeout`; then fails the
/// test with `what` and the last `Err`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("{what} (after {timeout:?}): {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Publishes one message and waits for its ack. A publish whose ack does not come (a busy
/// machine, an election) is sent again with the same `Nats-Msg-Id`, so it is stored once.
pub async fn publish_once(js: &jetstream::Context, subject: &str, payload: &str) {
    use async_nats::jetstream::message::PublishMessage;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = NEXT
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .to_string();
    eventually(
        Duration::from_secs(30),
        "publish not acknowledged",
        || async {
            let m = PublishMessage::build()
                .payload(payload.to_string().into())
                .message_id(&id);
            let ack = js
                .send_publish(subject.to_string(), m)
                .await
                .map_err(|e| e.to_string())?;
            ack.await.map(|_| ()).map_err(|e| e.to_string())
        },
    )
    .await;
}
