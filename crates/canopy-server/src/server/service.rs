//! The internal service API: how everything that lives inside the server (`$SYS` requests,
//! the resolver's claims handlers, the import agent, JetStream next) subscribes, publishes
//! and makes requests.
//!
//! A [`Service`] owns one internal connection (its identity in `/connz`-like counters), a
//! bounded queue and a pool of workers. Subscribing installs a [`Sink`] on the
//! subscription: the delivering reader hands it the parsed message with its origin and
//! moves on; a worker runs the handler later. Handlers never run on a reader, so slow work
//! (disk, JSON, crypto) cannot stall a connection. A full queue refuses the message: a
//! request is answered with a `503` status at once (as nats-server answers an overloaded
//! JetStream API) and every refusal is counted ([`ServiceStats`], `/varz`
//! `canopy_services`). A handler that fails or panics is logged and counted; the service
//! goes on with the next message.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::panic::AssertUnwindSafe;
use tokio::sync::{mpsc, oneshot};

use crate::core::account::{Account, SubRef, Subscription};
use crate::core::conn::{ConnShared, FlushList};
use crate::core::deliver::{deliver, LinkForm, Msg, Origin, Scratch};
use crate::core::inbox::{InMsg, Offer, Sink};
use crate::core::interest::LinkClass;
use crate::server::Server;

thread_local! {
    /// Receivers whose flush [`with_deferred_flush`] holds back on this thread.
    static DEFERRED: std::cell::RefCell<Option<Deferred>> = const { std::cell::RefCell::new(None) };
}

/// What [`with_deferred_flush`] holds back.
#[derive(Default)]
struct Deferred {
    list: FlushList,
    /// Bytes published since the last flush.
    bytes: usize,
    /// The scope's thread writes to the receivers itself ([`with_deferred_flush`]).
    direct: bool,
}

/// Past this many bytes published in one deferred scope, its receivers are woken and the
/// scope goes on: a scope that delivers a long burst (a push consumer catching up) never
/// holds more than this unwritten, nor lets a receiver's buffer grow towards its
/// slow-consumer bound unseen by its writer.
const DEFER_MAX_BYTES: usize = 256 * 1024;

/// A scope whose thread writes to the receivers itself writes every this many bytes: a
/// pull request's batch goes out in a few writes, so that the client starts on (and acks)
/// its first messages while the rest are read from the store, rather than after the whole
/// batch (measured: `canopy bench --js fetch`, about +10% msgs/s with either client).
const DIRECT_CHUNK_BYTES: usize = 6 * 1024;

/// Runs `f` with the flushes of what this thread publishes held back, and done once when
/// it returns (or unwinds): a batch of replies wakes each receiver's writer once instead of
/// once per reply ([`DEFER_MAX_BYTES`] bounds what waits). Nested calls join the outer one.
/// `f` must not wait for an answer to something it published (it would not leave before
/// `f` returns). `direct`: this thread writes the receivers' output itself where it can
/// ([`FlushList::flush_direct`]), for a thread with nothing else waiting; a nested call
/// follows the outer one's choice.
pub fn with_deferred_flush<R>(direct: bool, f: impl FnOnce() -> R) -> R {
    struct Flusher {
        direct: bool,
    }
    impl Drop for Flusher {
        fn drop(&mut self) {
            if let Some(mut d) = DEFERRED.with(|d| d.borrow_mut().take()) {
                if self.direct {
                    d.list.flush_direct();
                } else {
                    d.list.flush();
                }
            }
        }
    }
    if DEFERRED.with(|d| d.borrow().is_some()) {
        return f();
    }
    DEFERRED.with(|d| {
        *d.borrow_mut() = Some(Deferred {
            direct,
            ..Deferred::default()
        })
    });
    let _flusher = Flusher { direct };
    f()
}

/// What a handler returns: `Err` is logged (with the service and subject) and counted.
pub type HandlerResult = Result<(), String>;
/// A handler's future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;
/// A message handler. Cheap to clone; it runs on the service's workers.
pub type Handler = Arc<dyn Fn(InMsg) -> HandlerFuture + Send + Sync>;

/// Wraps a synchronous closure as a [`Handler`].
pub fn sync_handler<F>(f: F) -> Handler
where
    F: Fn(InMsg) -> HandlerResult + Send + Sync + 'static,
{
    Arc::new(move |m| {
        let r = f(m);
        Box::pin(async move { r })
    })
}

/// Wraps an async closure as a [`Handler`].
pub fn async_handler<F, Fut>(f: F) -> Handler
where
    F: Fn(InMsg) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    Arc::new(move |m| Box::pin(f(m)))
}

/// How a service is sized.
#[derive(Clone, Debug)]
pub struct ServiceOpts {
    /// Messages waiting for a worker before new ones are refused.
    pub queue_len: usize,
    /// Workers running handlers concurrently (1 keeps messages in order).
    pub workers: usize,
}

impl Default for ServiceOpts {
    fn default() -> Self {
        ServiceOpts {
            queue_len: 4096,
            workers: 1,
        }
    }
}

/// A service's counters.
#[derive(Debug, Default)]
pub struct ServiceStats {
    /// Messages taken into the queue.
    pub received: AtomicU64,
    /// Messages refused because the queue was full.
    pub dropped: AtomicU64,
    /// Handlers that returned an error or panicked.
    pub errors: AtomicU64,
}

impl ServiceStats {
    fn to_json(&self) -> Value {
        json!({
            "received": self.received.load(Ordering::Relaxed),
            "dropped": self.dropped.load(Ordering::Relaxed),
            "errors": self.errors.load(Ordering::Relaxed),
        })
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("no responders")]
    NoResponders,
    #[error("request timed out")]
    Timeout,
    #[error("invalid subject {0:?}")]
    InvalidSubject(String),
}

/// A subscription made through a service, for [`Service::unsubscribe`].
#[derive(Clone)]
pub struct SubHandle {
    account: Arc<Account>,
    sub: SubRef,
}

type Item = (Handler, InMsg);

/// The sink of a handler subscription: a non-blocking push onto the service's queue.
struct QueueSink {
    handler: Handler,
    tx: mpsc::Sender<Item>,
    stats: Arc<ServiceStats>,
}

impl Sink for QueueSink {
    fn offer(&self, msg: InMsg) -> Offer {
        match self.tx.try_send((self.handler.clone(), msg)) {
            Ok(()) => {
                self.stats.received.fetch_add(1, Ordering::Relaxed);
                Offer::Accepted
            }
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                Offer::Full
            }
        }
    }
}

/// The sink of a service's reply inbox: completes the waiting request in place.
struct ReplySink {
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<InMsg>>>>,
}

impl Sink for ReplySink {
    fn offer(&self, msg: InMsg) -> Offer {
        if let Some(tx) = self.pending.lock().remove(&msg.subject) {
            let _ = tx.send(msg);
        }
        Offer::Accepted
    }
}

/// An in-process service: one internal connection, a bounded queue, workers.
pub struct Service {
    pub name: String,
    server: Arc<Server>,
    conn: Arc<ConnShared>,
    tx: mpsc::Sender<Item>,
    pub stats: Arc<ServiceStats>,
    inbox: String,
    next_req: AtomicU64,
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<InMsg>>>>,
    /// Accounts in which the reply inbox is subscribed.
    inbox_accounts: Mutex<HashSet<String>>,
}

impl Service {
    /// Starts a service with its workers; they stop when the server shuts down.
    pub fn start(server: &Arc<Server>, name: &str, opts: ServiceOpts) -> Arc<Service> {
        let (tx, rx) = mpsc::channel::<Item>(opts.queue_len.max(1));
        let conn = ConnShared::internal(server.next_cid(), name, "", true);
        let stats = Arc::new(ServiceStats::default());
        let svc = Arc::new(Service {
            name: name.to_string(),
            server: server.clone(),
            conn,
            tx,
            stats: stats.clone(),
            inbox: format!("_INBOX.{}", crate::core::nuid()),
            next_req: AtomicU64::new(0),
            pending: Arc::new(Mutex::new(HashMap::new())),
            inbox_accounts: Mutex::new(HashSet::new()),
        });
        server.register_service(name, stats.clone());
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..opts.workers.max(1) {
            let rx = rx.clone();
            let stats = stats.clone();
            let shutdown = server.shutdown.clone();
            let name = name.to_string();
            tokio::spawn(async move {
                loop {
                    let item = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        item = async { rx.lock().await.recv().await } => item,
                    };
                    let Some((handler, msg)) = item else {
                        return;
                    };
                    // A panic is contained and reported here (the call is inside the
                    // future: a sync handler runs when called). Caught in place rather than
                    // in a task of its own per message, whose allocation, registration and
                    // join showed in the JetStream publish profile (docs/BENCHMARKS.md).
                    let run = AssertUnwindSafe(async move { handler(msg).await });
                    match run.catch_unwind().await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            stats.errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!("service {name}: message skipped: {e}");
                        }
                        Err(panic) => {
                            stats.errors.fetch_add(1, Ordering::Relaxed);
                            let what = panic
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_default();
                            tracing::error!("service {name}: handler panicked: {what}");
                        }
                    }
                }
            });
        }
        svc
    }

    /// The service's connection id (the `cid` of what it publishes).
    pub fn cid(&self) -> u64 {
        self.conn.cid
    }

    /// Subscribes `handler` to `subject` (optionally in queue group `queue`) in `acc`.
    /// The interest is advertised to routes and leaf links like a client's.
    pub fn subscribe(
        &self,
        acc: &Arc<Account>,
        subject: &str,
        queue: Option<&str>,
        handler: Handler,
    ) -> Result<SubHandle, RequestError> {
        let sink = QueueSink {
            handler,
            tx: self.tx.clone(),
            stats: self.stats.clone(),
        };
        self.subscribe_sink(acc, subject, queue, Arc::new(sink))
    }

    /// Subscribes `sink` itself: the delivering reader calls it in place (it must not
    /// block). The subscription is this service's (its connection and subscription count);
    /// the sink counts what it takes and refuses (JetStream's in `stats`).
    pub fn subscribe_sink(
        &self,
        acc: &Arc<Account>,
        subject: &str,
        queue: Option<&str>,
        sink: Arc<dyn Sink>,
    ) -> Result<SubHandle, RequestError> {
        if !canopy_subject::is_well_formed(subject) {
            return Err(RequestError::InvalidSubject(subject.to_string()));
        }
        let sub = SubRef(Arc::new(Subscription::new(
            self.conn.clone(),
            subject.as_bytes(),
            queue.map(str::as_bytes),
            b"",
            Some(sink),
        )));
        if acc.sublist.insert(subject, queue, sub.clone()).is_err() {
            return Err(RequestError::InvalidSubject(subject.to_string()));
        }
        self.conn.num_subs.fetch_add(1, Ordering::Relaxed);
        if acc.track_interest {
            let key = Account::key_of(&sub);
            acc.interest_add(&key, self.conn.cid, LinkClass::Client, 1);
        }
        Ok(SubHandle {
            account: acc.clone(),
            sub,
        })
    }

    /// Removes a subscription made with [`Service::subscribe`].
    pub fn unsubscribe(&self, h: &SubHandle) {
        h.account.drop_subscription(&h.sub);
    }

    /// Publishes into `acc` with an optional reply subject and header block.
    pub fn publish(
        &self,
        acc: &Account,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> u64 {
        self.server
            .publish_from(self.conn.cid, acc, subject, reply, headers, payload)
    }

    /// Publishes the import agent's copy of a message that came from server `peer`
    /// (`None`: published here): delivered to local subscribers and to leaf servers below
    /// that do not import for themselves, never back to `peer` ([`Origin::imported`]).
    /// A JetStream delivery (`seen` is the stream message's own subject) is imported as
    /// one: routed by the mapped deliver subject `subject`, seen with `seen`.
    #[allow(clippy::too_many_arguments)]
    pub fn publish_imported(
        &self,
        acc: &Account,
        subject: &str,
        seen: Option<&str>,
        reply: Option<&str>,
        headers: Option<&[u8]>,
        peer: Option<&str>,
        payload: &[u8],
    ) -> u64 {
        let origin = Origin {
            peer,
            imported: true,
            ..own_origin(self.conn.cid)
        };
        self.server
            .route_from(&origin, acc, subject, seen, reply, headers, payload)
    }

    /// Delivers a JetStream message to `deliver_to`'s subscribers, who see `subject`
    /// ([`Server::deliver_from`]).
    pub fn deliver(
        &self,
        acc: &Account,
        deliver_to: &str,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> u64 {
        self.server.deliver_from(
            self.conn.cid,
            acc,
            deliver_to,
            subject,
            reply,
            headers,
            payload,
        )
    }

    /// Sends a request into `acc` and waits up to `timeout` for the first reply.
    pub async fn request(
        &self,
        acc: &Arc<Account>,
        subject: &str,
        headers: Option<&[u8]>,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<InMsg, RequestError> {
        self.send_request(acc, subject, headers, payload)?
            .wait(timeout)
            .await
    }

    /// Publishes a request into `acc` at once (in the caller's context); the returned
    /// [`PendingReply`] waits for its first reply. [`Service::request`] in two steps, for
    /// callers that must not wait for a task to be scheduled before the request goes out.
    pub fn send_request(
        &self,
        acc: &Arc<Account>,
        subject: &str,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<PendingReply, RequestError> {
        let is_new = self.inbox_accounts.lock().insert(acc.name.clone());
        if is_new {
            let sink = Arc::new(ReplySink {
                pending: self.pending.clone(),
            });
            self.subscribe_sink(acc, &format!("{}.*", self.inbox), None, sink)?;
        }
        let n = self.next_req.fetch_add(1, Ordering::Relaxed);
        let reply = format!("{}.{n}", self.inbox);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(reply.clone(), tx);
        let delivered = self.publish(acc, subject, Some(&reply), headers, payload);
        if delivered == 0 {
            self.pending.lock().remove(&reply);
            return Err(RequestError::NoResponders);
        }
        Ok(PendingReply {
            pending: self.pending.clone(),
            reply,
            rx,
        })
    }
}

/// A request sent by [`Service::send_request`], waiting for its reply.
pub struct PendingReply {
    pending: Arc<Mutex<HashMap<String, oneshot::Sender<InMsg>>>>,
    reply: String,
    rx: oneshot::Receiver<InMsg>,
}

impl PendingReply {
    /// Waits up to `timeout` for the first reply (a `503` status means no responders).
    pub async fn wait(self, timeout: Duration) -> Result<InMsg, RequestError> {
        match tokio::time::timeout(timeout, self.rx).await {
            Ok(Ok(m)) if is_status(&m, b"503") => Err(RequestError::NoResponders),
            Ok(Ok(m)) => Ok(m),
            Ok(Err(_)) | Err(_) => {
                self.pending.lock().remove(&self.reply);
                Err(RequestError::Timeout)
            }
        }
    }
}

/// The origin of a publish from inside the server by connection `cid`. The server itself
/// (cid 0) has no subscriptions; a service never hears its own publishes (the import agent
/// relies on it: a moved message is not moved again).
fn own_origin<'a>(cid: u64) -> Origin<'a> {
    Origin {
        echo: cid == 0,
        ..Origin::internal(cid)
    }
}

/// Is `m` a status-only message with this code (`NATS/1.0 503`)?
fn is_status(m: &InMsg, code: &[u8]) -> bool {
    m.payload.is_empty()
        && m.headers.as_deref().is_some_and(|h| {
            h.strip_prefix(b"NATS/1.0 ")
                .is_some_and(|rest| rest.starts_with(code))
        })
}

impl Server {
    /// Publishes a message from inside the server into an account (connection `cid`, 0
    /// for the server itself). Returns how many deliveries and forwards it made.
    pub fn publish_from(
        &self,
        cid: u64,
        acc: &Account,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> u64 {
        self.route_from(
            &own_origin(cid),
            acc,
            subject,
            None,
            reply,
            headers,
            payload,
        )
    }

    /// Delivers a JetStream message: routed to the subscribers of `deliver_to`, who see
    /// `subject` (the stream message's own subject); over links it travels as
    /// `deliver_to` with the subject in the ack reply ([`LinkForm`]).
    #[allow(clippy::too_many_arguments)]
    pub fn deliver_from(
        &self,
        cid: u64,
        acc: &Account,
        deliver_to: &str,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> u64 {
        self.route_from(
            &own_origin(cid),
            acc,
            deliver_to,
            Some(subject),
            reply,
            headers,
            payload,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn route_from(
        &self,
        origin: &Origin<'_>,
        acc: &Account,
        route_subject: &str,
        seen_subject: Option<&str>,
        reply: Option<&str>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> u64 {
        let joined;
        let (hdr_len, payload) = match headers {
            Some(h) => {
                joined = [h, payload].concat();
                (Some(h.len()), &joined[..])
            }
            None => (None, payload),
        };
        // A reply the server publishes (a JetStream pub ack or API answer to a request's
        // inbox) goes to that subject once; a delivery to a pull request's inbox (`seen`)
        // repeats it for the whole batch, and is cached.
        let result = if seen_subject.is_none()
            && crate::core::deliver::is_one_off(route_subject.as_bytes())
        {
            acc.sublist.match_once(route_subject).0
        } else {
            acc.sublist.matches(route_subject)
        };
        // Over links the subject rides in the ack reply (`<reply>@<subject>`); a delivery
        // without an ack reply crosses as the deliver subject, as in nats-server. Built
        // only for a delivery with an ack reply that may cross a link (or be spooled for
        // one): a delivery to a local client (most of them) does without the allocation,
        // and other replies the server publishes skip the check.
        let may_cross = || {
            acc.spooling.load(Ordering::Relaxed)
                || !result.qsubs.is_empty()
                || result
                    .psubs
                    .iter()
                    .any(|s| s.conn.kind != crate::core::conn::ConnKind::Client)
        };
        let link_reply = match (seen_subject, reply) {
            (Some(s), Some(r)) if r.as_bytes().starts_with(LinkForm::ACK_PREFIX) && may_cross() => {
                Some(format!("{r}@{s}"))
            }
            _ => None,
        };
        let msg = Msg {
            subject: seen_subject.unwrap_or(route_subject).as_bytes(),
            reply: reply.map(str::as_bytes),
            hdr_len,
            payload,
            link: seen_subject.map(|_| LinkForm {
                subject: route_subject.as_bytes(),
                reply: link_reply.as_deref().or(reply).map(str::as_bytes),
            }),
        };
        let mut flush = FlushList::default();
        let mut scratch = Scratch::default();
        let d = deliver(acc, &result, &msg, origin, &mut scratch, &mut flush);
        let held = DEFERRED.with(|l| match l.borrow_mut().as_mut() {
            Some(l) => {
                l.list.absorb(&mut flush);
                // The bytes written for it, near enough (payloads and subjects).
                l.bytes += (d.bytes as usize).max(payload.len()) + route_subject.len();
                if l.direct && l.bytes >= DIRECT_CHUNK_BYTES {
                    l.list.flush_direct();
                    l.bytes = 0;
                } else if l.bytes >= DEFER_MAX_BYTES {
                    l.list.flush();
                    l.bytes = 0;
                }
                true
            }
            None => false,
        });
        if !held {
            flush.flush();
        }
        self.stats.out_msgs.fetch_add(d.msgs, Ordering::Relaxed);
        self.stats.out_bytes.fetch_add(d.bytes, Ordering::Relaxed);
        d.msgs
    }

    /// Publishes a message from the server itself (no headers).
    pub fn publish_internal(
        &self,
        acc: &Account,
        subject: &str,
        reply: Option<&str>,
        payload: &[u8],
    ) {
        self.publish_from(0, acc, subject, reply, None, payload);
    }

    /// Publishes a system event in the system account (no-op without subscribers).
    pub fn publish_event(&self, subject: &str, body: &Value) {
        if let Some(acc) = self.account(&self.system_account) {
            if acc.sublist.has_interest(subject) {
                let payload = serde_json::to_vec(body).unwrap_or_default();
                self.publish_internal(&acc, subject, None, &payload);
            }
        }
    }

    /// Records a service's counters for monitoring.
    pub(crate) fn register_service(&self, name: &str, stats: Arc<ServiceStats>) {
        self.services.lock().push((name.to_string(), stats));
    }

    /// Every service's counters (`/varz` `canopy_services`).
    pub fn services_json(&self) -> Value {
        let m: serde_json::Map<String, Value> = self
            .services
            .lock()
            .iter()
            .map(|(n, s)| (n.clone(), s.to_json()))
            .collect();
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::AccountEvent;
    use std::time::Instant;

    fn deferring() -> bool {
        DEFERRED.with(|d| d.borrow().is_some())
    }

    #[test]
    fn deferred_flushes_end_with_their_scope_even_when_it_unwinds() {
        assert!(!deferring());
        with_deferred_flush(false, || {
            assert!(deferring());
            // A nested scope joins the outer one and does not end it.
            with_deferred_flush(true, || assert!(deferring()));
            assert!(deferring());
        });
        assert!(!deferring());
        let r = std::panic::catch_unwind(|| with_deferred_flush(true, || panic!("handler failed")));
        assert!(r.is_err());
        assert!(!deferring(), "a panic left this thread's flushes held back");
    }

    fn server() -> Arc<Server> {
        Server::new(canopy_conf::Options::default())
    }

    /// A scope holds back at most [`DEFER_MAX_BYTES`], and one whose thread writes
    /// directly at most [`DIRECT_CHUNK_BYTES`] (and a message): it writes on its way.
    #[tokio::test]
    async fn a_deferred_scope_holds_back_a_bounded_amount() {
        let s = server();
        let acc = s.global_account();
        let svc = Service::start(&s, "t", ServiceOpts::default());
        let held = || DEFERRED.with(|d| d.borrow().as_ref().map(|d| d.bytes));
        let payload = vec![b'x'; 1024];
        for (direct, bound) in [
            (true, DIRECT_CHUNK_BYTES + 2 * 1024),
            (false, DEFER_MAX_BYTES),
        ] {
            let (mut wrapped, mut most) = (false, 0);
            with_deferred_flush(direct, || {
                let mut last = 0;
                for _ in 0..(DEFER_MAX_BYTES / 1024) * 3 {
                    svc.publish(&acc, "burst", None, None, &payload);
                    let now = held().unwrap_or(usize::MAX);
                    assert!(now < bound, "direct {direct}: {now} bytes held back");
                    wrapped |= now < last;
                    (last, most) = (now, most.max(now));
                }
            });
            assert!(
                wrapped,
                "direct {direct}: the scope never flushed on its way"
            );
            assert_eq!(direct, most < DIRECT_CHUNK_BYTES + 2 * 1024, "{most}");
            assert_eq!(held(), None);
        }
    }

    /// A handler that records what it saw.
    fn recorder() -> (Handler, Arc<Mutex<Vec<InMsg>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let h = sync_handler(move |m| {
            s.lock().push(m);
            Ok(())
        });
        (h, seen)
    }

    async fn eventually<F: Fn() -> bool>(f: F) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached within 5 s");
    }

    #[tokio::test]
    async fn a_handler_gets_the_message_with_headers_and_origin() {
        let s = server();
        let acc = s.global_account();
        let svc = Service::start(&s, "t", ServiceOpts::default());
        let (h, seen) = recorder();
        svc.subscribe(&acc, "svc.>", None, h).expect("subscribe");
        let other = Service::start(&s, "pub", ServiceOpts::default());
        let hdr = b"NATS/1.0\r\nK: v\r\n\r\n";
        assert_eq!(
            other.publish(&acc, "svc.a", Some("r.1"), Some(hdr), b"body"),
            1
        );
        eventually(|| seen.lock().len() == 1).await;
        let m = seen.lock()[0].clone();
        assert_eq!(m.subject, "svc.a");
        assert_eq!(m.reply.as_deref(), Some("r.1"));
        assert_eq!(m.header("K"), Some("v"));
        assert_eq!(&m.payload[..], b"body");
        assert_eq!(&*m.origin.account, "$G");
        assert_eq!(m.origin.cid, other.cid());
        assert_eq!(m.origin.via, crate::core::inbox::Via::Internal);
    }

    #[tokio::test]
    async fn a_slow_handler_does_not_slow_the_publisher() {
        let s = server();
        let acc = s.global_account();
        let svc = Service::start(
            &s,
            "slow",
            ServiceOpts {
                queue_len: 10_000,
                workers: 1,
            },
        );
        let h = async_handler(|_m| async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(())
        });
        svc.subscribe(&acc, "slow", None, h).expect("subscribe");
        let start = Instant::now();
        for _ in 0..1000 {
            s.publish_internal(&acc, "slow", None, b"x");
        }
        // 1000 messages at 200 ms each would take minutes if the publisher waited.
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(svc.stats.received.load(Ordering::Relaxed), 1000);
    }

    #[tokio::test]
    async fn a_full_queue_answers_requests_with_503_and_counts() {
        let s = server();
        let acc = s.global_account();
        let svc = Service::start(
            &s,
            "busy",
            ServiceOpts {
                queue_len: 1,
                workers: 1,
            },
        );
        let gate = Arc::new(tokio::sync::Notify::new());
        let g = gate.clone();
        svc.subscribe(
            &acc,
            "busy",
            None,
            async_handler(move |_m| {
                let g = g.clone();
                async move {
                    g.notified().await;
                    Ok(())
                }
            }),
        )
        .expect("subscribe");
        // One message occupies the worker, one fills the queue.
        s.publish_internal(&acc, "busy", None, b"1");
        eventually(|| svc.stats.received.load(Ordering::Relaxed) == 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.publish_internal(&acc, "busy", None, b"2");
        let client = Service::start(&s, "client", ServiceOpts::default());
        let start = Instant::now();
        let r = client
            .request(&acc, "busy", None, b"3", Duration::from_secs(5))
            .await;
        assert_eq!(r.err(), Some(RequestError::NoResponders));
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(svc.stats.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(s.services_json()["busy"]["dropped"], 1);
        gate.notify_waiters();
    }

    #[tokio::test]
    async fn failing_and_panicking_handlers_do_not_stop_the_service() {
        let s = server();
        let acc = s.global_account();
        let svc = Service::start(&s, "fragile", ServiceOpts::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sn = seen.clone();
        let h = sync_handler(move |m| {
            let v: Value = serde_json::from_slice(&m.payload).map_err(|e| e.to_string())?;
            if v["panic"] == true {
                panic!("handler panicked on purpose");
            }
            sn.lock().push(v);
            Ok(())
        });
        svc.subscribe(&acc, "j", None, h).expect("subscribe");
        s.publish_internal(&acc, "j", None, b"{not json");
        s.publish_internal(&acc, "j", None, br#"{"panic":true}"#);
        s.publish_internal(&acc, "j", None, br#"{"ok":1}"#);
        eventually(|| seen.lock().len() == 1).await;
        assert_eq!(svc.stats.errors.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn request_reply_between_services() {
        let s = server();
        let acc = s.global_account();
        let echo = Service::start(&s, "echo", ServiceOpts::default());
        let e2 = echo.clone();
        let a2 = acc.clone();
        echo.subscribe(
            &acc,
            "echo",
            Some("q"),
            sync_handler(move |m| {
                if let Some(r) = &m.reply {
                    e2.publish(&a2, r, None, None, &m.payload);
                }
                Ok(())
            }),
        )
        .expect("subscribe");
        let client = Service::start(&s, "client", ServiceOpts::default());
        let r = client
            .request(&acc, "echo", None, b"ping", Duration::from_secs(5))
            .await
            .expect("reply");
        assert_eq!(&r.payload[..], b"ping");
        let none = client
            .request(&acc, "nobody", None, b"", Duration::from_secs(5))
            .await;
        assert_eq!(none.err(), Some(RequestError::NoResponders));
    }

    #[tokio::test]
    async fn unsubscribe_stops_delivery() {
        let s = server();
        let acc = s.global_account();
        let svc = Service::start(&s, "u", ServiceOpts::default());
        let (h, seen) = recorder();
        let sub = svc.subscribe(&acc, "u", None, h).expect("subscribe");
        svc.unsubscribe(&sub);
        s.publish_internal(&acc, "u", None, b"x");
        assert!(!acc.sublist.has_interest("u"));
        assert!(seen.lock().is_empty());
    }

    #[tokio::test]
    async fn account_hooks_run_for_existing_and_new_accounts() {
        let s = server();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sn = seen.clone();
        s.on_account(Arc::new(move |acc: &Arc<Account>, ev: AccountEvent| {
            sn.lock().push((acc.name.clone(), ev));
        }));
        assert!(seen
            .lock()
            .contains(&("$G".to_string(), AccountEvent::Created)));
        let before = seen.lock().len();
        s.account_for_jwt("ANEWACCOUNT");
        assert_eq!(seen.lock().len(), before + 1);
        assert_eq!(
            seen.lock().last().cloned(),
            Some(("ANEWACCOUNT".to_string(), AccountEvent::Created))
        );
        // An account that exists already runs nothing.
        s.account_for_jwt("ANEWACCOUNT");
        assert_eq!(seen.lock().len(), before + 1);
        s.shutdown_now();
        assert!(seen
            .lock()
            .contains(&("ANEWACCOUNT".to_string(), AccountEvent::Removed)));
    }
}
