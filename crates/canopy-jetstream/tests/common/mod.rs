//! The fake [`Host`] the engine tests run on: it records what the engine publishes and
//! lets a test inject messages as if clients had published them.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use canopy_jetstream::host::{Handler, Host, HostInfo, JsMsg, Lane, Origin, SubId, Via};
use parking_lot::Mutex;

/// A message the engine published (`to`: the subject it was routed by).
#[derive(Clone, Debug)]
pub struct Out {
    pub to: String,
    pub subject: String,
    pub reply: Option<String>,
    pub hdr: Vec<u8>,
    pub payload: Vec<u8>,
    /// The thread that published it.
    pub thread: std::thread::ThreadId,
}

pub struct FakeHost {
    /// The server's name (its id is the name in capitals).
    pub name: String,
    pub cluster: Option<String>,
    pub subs: Mutex<Vec<(u64, String, String, Handler)>>,
    pub out: Mutex<Vec<Out>>,
    next: AtomicU64,
    /// Subjects [`Host::has_interest`] says yes to.
    pub interest: Mutex<Vec<String>>,
}

impl FakeHost {
    pub fn new(name: &str, cluster: Option<&str>) -> FakeHost {
        FakeHost {
            name: name.into(),
            cluster: cluster.map(String::from),
            subs: Mutex::new(Vec::new()),
            out: Mutex::new(Vec::new()),
            next: AtomicU64::new(1),
            interest: Mutex::new(Vec::new()),
        }
    }

    /// Hands a message to the engine's subscriptions in `account` matching `subject`, as
    /// a client publish.
    pub fn inject(
        &self,
        account: &str,
        subject: &str,
        reply: Option<&str>,
        hdr: Option<&[u8]>,
        payload: &[u8],
    ) {
        let subs: Vec<Handler> = self
            .subs
            .lock()
            .iter()
            .filter(|s| s.1 == account && canopy_subject::subject_matches(&s.2, subject))
            .map(|s| s.3.clone())
            .collect();
        for h in subs {
            h(JsMsg {
                account: Arc::from(account),
                subject: subject.into(),
                reply: reply.map(str::to_string),
                headers: hdr.map(Bytes::copy_from_slice),
                payload: Bytes::copy_from_slice(payload),
                origin: Origin {
                    cid: 1,
                    user: String::new(),
                    server: None,
                    via: Via::Client,
                },
            });
        }
    }

    /// What was published to `to` so far.
    pub fn sent_to(&self, to: &str) -> Vec<Out> {
        self.out
            .lock()
            .iter()
            .filter(|o| o.to == to)
            .cloned()
            .collect()
    }
}

impl Host for FakeHost {
    fn subscribe(
        &self,
        account: &str,
        subject: &str,
        _q: Option<&str>,
        _lane: Lane,
        handler: Handler,
    ) -> Result<SubId, String> {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        self.subs
            .lock()
            .push((id, account.into(), subject.into(), handler));
        Ok(SubId(id))
    }
    fn unsubscribe(&self, id: SubId) {
        self.subs.lock().retain(|s| s.0 != id.0);
    }
    fn publish(
        &self,
        account: &str,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> u64 {
        self.deliver(account, subject, subject, reply, headers, payload)
    }
    fn deliver(
        &self,
        _account: &str,
        to: &str,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> u64 {
        self.out.lock().push(Out {
            to: to.into(),
            subject: subject.into(),
            reply: reply.map(str::to_string),
            hdr: headers.unwrap_or(&[]).to_vec(),
            payload: payload.to_vec(),
            thread: std::thread::current().id(),
        });
        1
    }
    fn has_interest(&self, _account: &str, subject: &str) -> bool {
        self.interest.lock().iter().any(|s| s == subject)
    }
    fn info(&self) -> HostInfo {
        HostInfo {
            server_id: self.name.to_uppercase(),
            server_name: self.name.clone(),
            cluster: self.cluster.clone(),
            version: "2.10.0".into(),
            ..Default::default()
        }
    }
}
