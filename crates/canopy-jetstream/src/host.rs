//! The boundary between JetStream and the server. JetStream never sees the server's types:
//! the server implements [`Host`] on its internal service API (canopy-server
//! `services/jetstream.rs`) and hands the engine an `Arc<dyn Host>`.
//!
//! Contract:
//! - [`Host::subscribe`] installs a subscription in an account; the handler runs on a worker
//!   of the server's JetStream service, never on a connection reader. Each [`Lane`] has its
//!   own bounded queue and workers, so a flood of API requests cannot delay stream ingest or
//!   acks. When a lane's queue is full the server answers a request with a `503` status and
//!   counts it; the handler is not called.
//! - Handlers must not block for long: disk work belongs to the engine's own threads (a
//!   handler hands the message over and returns).
//! - [`Host::publish`] delivers like any publish from inside the server (to local clients,
//!   over routes and leaf links); the JetStream service never receives its own publishes.
//! - [`Host::request`] is the exception: mirrors and sources ask `$JS.API` (this server's
//!   or another domain's) through it, so it is sent by a sender the engine's own API
//!   subscription hears, and the reply comes back on a host task.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

/// How a message reached the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Client,
    Route,
    Leaf,
    Internal,
}

/// Who published a message.
#[derive(Clone, Debug)]
pub struct Origin {
    /// The publishing connection (0: the server itself).
    pub cid: u64,
    /// Its user (empty for links and internal publishers).
    pub user: String,
    /// The server a link message came from, `None` when published on this server.
    pub server: Option<Arc<str>>,
    pub via: Via,
}

/// A message delivered to a JetStream subscription.
#[derive(Clone, Debug)]
pub struct JsMsg {
    /// The account the subscription lives in.
    pub account: Arc<str>,
    pub subject: String,
    pub reply: Option<String>,
    /// The header block (`NATS/1.0…\r\n\r\n`), when there is one.
    pub headers: Option<Bytes>,
    pub payload: Bytes,
    pub origin: Origin,
}

/// Which of the JetStream service's queues a subscription uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// `$JS.API.>` requests.
    Api,
    /// Messages published to stream subjects (sources' deliveries; the streams' own
    /// subjects are subscribed inline and only use its counters).
    Ingest,
    /// Acks and flow control replies (`$JS.ACK.>`, `$JS.FC.>`: subscribed inline, only its
    /// counters are used) and the requests JetStream makes of its own server.
    Ack,
    /// Raft RPCs between the members of a JetStream cluster (`$CRG.>` in the system
    /// account): subscribed inline (handed to a task by the route's reader, never behind
    /// API floods or ingest); the lane's service holds their counters.
    Cluster,
}

/// A message handler. Cheap to clone; see the module contract.
pub type Handler = Arc<dyn Fn(JsMsg) + Send + Sync>;

/// A handler run where the message is delivered ([`Host::subscribe_inline`]): it only
/// hands the message on; `false` refuses it.
pub type InlineHandler = Arc<dyn Fn(JsMsg) -> bool + Send + Sync>;

/// What [`Host::request`] calls with the reply (`None`: no responders, a timeout, or a
/// host without requests).
pub type ReplyFn = Box<dyn FnOnce(Option<JsMsg>) + Send>;

/// A subscription made through [`Host::subscribe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubId(pub u64);

/// The server's identity as JetStream reports it (stream info `cluster`, advisories).
#[derive(Clone, Debug, Default)]
pub struct HostInfo {
    pub server_id: String,
    pub server_name: String,
    /// The cluster name, when the server is in one.
    pub cluster: Option<String>,
    /// The nats-server version the server claims.
    pub version: String,
    /// `max_payload` (bytes; 0: unknown). Raft RPCs over the routes are sized from it.
    pub max_payload: usize,
    /// The system account, where clustered JetStream's internal traffic (Raft RPCs) lives.
    /// `None`: no system account, hence no clustered JetStream.
    pub system_account: Option<String>,
    /// `server_tags` (placement tags).
    pub tags: Vec<String>,
    /// Is a `cluster {}` with routes configured (clustered JetStream)?
    pub clustered: bool,
    /// How many other servers the configured routes name (distinct addresses, minus those
    /// found to be this server's own: the Helm chart lists every member, itself included).
    pub configured_routes: usize,
}

/// A server this one has a route to, as clustered JetStream sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutePeer {
    /// Its server name.
    pub name: String,
    /// Its server id (new at every start).
    pub id: String,
    /// Its route INFO says `jetstream: true`.
    pub jetstream: bool,
    /// It is a Canopy server (speaks Canopy's Raft transport); a Go nats-server is not.
    pub canopy: bool,
}

/// What the server provides to JetStream.
pub trait Host: Send + Sync + 'static {
    /// Subscribes `handler` to `subject` (optionally in queue group `queue`) in `account`.
    /// The interest is advertised over routes and leaf links like a client's.
    fn subscribe(
        &self,
        account: &str,
        subject: &str,
        queue: Option<&str>,
        lane: Lane,
        handler: Handler,
    ) -> Result<SubId, String>;

    /// As [`Host::subscribe`], but `handler` runs where the message is delivered (the
    /// publishing connection's reader, or the thread that published it) instead of behind
    /// a lane's queue: one task hop fewer per message. It must never block (a channel send
    /// at most); `false` refuses the message, which is counted, and a request is answered
    /// with a 503 at once, as a full lane's are. `lane` names whose counters (and
    /// connection) the subscription uses. The default goes through that lane's queue.
    fn subscribe_inline(
        &self,
        account: &str,
        subject: &str,
        queue: Option<&str>,
        lane: Lane,
        handler: InlineHandler,
    ) -> Result<SubId, String> {
        self.subscribe(
            account,
            subject,
            queue,
            lane,
            Arc::new(move |m| {
                handler(m);
            }),
        )
    }

    /// Runs `f`, holding back until it returns the wake-ups of the receivers of what it
    /// publishes on this thread (a batch of pub acks then wakes each client's writer once).
    /// `f` must not wait for answers to what it publishes. `direct`: the calling thread
    /// has nothing else waiting, so it may write those receivers' output itself where it
    /// can, sparing their writers a wake-up. The default just runs `f`.
    fn batch(&self, direct: bool, f: &mut dyn FnMut()) {
        let _ = direct;
        f()
    }

    /// Removes a subscription.
    fn unsubscribe(&self, id: SubId);

    /// Publishes into `account`. Returns how many receivers (local subscribers and links)
    /// it reached; 0 means nobody is interested.
    fn publish(
        &self,
        account: &str,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> u64;

    /// Delivers a stored message: routed like a publish to `deliver_to` (a pull request's
    /// reply inbox or a push consumer's deliver subject), but the receivers see `subject`
    /// (the message's original subject) in their `MSG`/`HMSG` line, as nats-server's
    /// JetStream deliveries do. Clients read `msg.subject` of a consumed message, so this
    /// cannot be done with [`Host::publish`]. Over routes and leaf links the delivery
    /// travels as `deliver_to` with the subject appended to the ack reply
    /// (`<reply>@<subject>`), nats-server's encoding, split again by the receiving server.
    fn deliver(
        &self,
        account: &str,
        deliver_to: &str,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> u64;

    /// Sends a request into `account` and calls `done` with the reply, from a sender that
    /// the engine's own `$JS.API` subscriptions *do* hear (unlike [`Host::publish`]), so a
    /// stream can ask this server's JetStream as well as another domain's. `done` runs on a
    /// host task and must only hand the reply over. The default has no request facility.
    fn request(
        &self,
        account: &str,
        subject: &str,
        headers: Option<&[u8]>,
        payload: &[u8],
        timeout: Duration,
        done: ReplyFn,
    ) {
        let _ = (account, subject, headers, payload, timeout);
        done(None);
    }

    /// [`Host::request`] as a future: resolves with the reply (`None`: no reply in time, or
    /// no responders). A host that can send the request in the caller's context, and hand
    /// the reply straight to the waiting future, overrides it (the clustered JetStream's
    /// Raft RPCs take this path: the default costs a host task and two hand-overs per RPC).
    fn request_future(
        &self,
        account: &str,
        subject: &str,
        headers: Option<&[u8]>,
        payload: &[u8],
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Option<JsMsg>> + Send + 'static>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.request(
            account,
            subject,
            headers,
            payload,
            timeout,
            Box::new(move |m| {
                let _ = tx.send(m);
            }),
        );
        Box::pin(async move { rx.await.ok().flatten() })
    }

    /// Is anyone (locally or over a link) interested in `subject` in `account`?
    fn has_interest(&self, account: &str, subject: &str) -> bool;

    /// The server's identity.
    fn info(&self) -> HostInfo;

    /// The servers this one currently has a route to (clustered JetStream's peers).
    fn route_peers(&self) -> Vec<RoutePeer> {
        Vec::new()
    }
}
