//! State the server keeps of its links: established routes and the cluster
//! ([`Cluster`], [`Route`]), and the live state of each configured leaf remote
//! ([`RemoteState`]). The route and leaf roles fill them in; monitoring reads them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::core::account::Account;
use crate::core::conn::ConnShared;
use crate::core::interest::Link;
use crate::core::perms::SubjectRules;

/// One established route.
pub struct Route {
    pub conn: Arc<ConnShared>,
    pub remote_id: String,
    pub remote_name: String,
    pub solicited: bool,
    /// Configured in `cluster.routes` (not learned by gossip).
    pub configured: bool,
    /// The peer's route URL (from its INFO `ip`), for gossip.
    pub url: String,
    pub connect_urls: Vec<String>,
    /// The peer's leafnode URLs (its INFO `leafnode_urls`), passed on to our leafs.
    pub leafnode_urls: Vec<String>,
    /// Its INFO says `jetstream: true` (clustered JetStream's peers).
    pub jetstream: bool,
    /// It is a Canopy server (INFO `canopy_version`), so it speaks Canopy's Raft transport.
    pub canopy: bool,
    pub(crate) links: Mutex<Vec<(Arc<Account>, Arc<Link>)>>,
    /// `cluster.permissions`: `import` limits the interest we advertise and the messages
    /// we accept, `export` the interest we accept (and, its deny list, what we send).
    pub perms: RoutePerms,
}

/// `cluster.permissions`, compiled (`None`: no rules in that direction).
#[derive(Clone, Default)]
pub struct RoutePerms {
    pub import: Option<Arc<SubjectRules>>,
    pub export: Option<Arc<SubjectRules>>,
}

impl RoutePerms {
    pub fn from_options(o: &canopy_conf::Options) -> RoutePerms {
        let Some(p) = o.cluster.as_ref().and_then(|c| c.permissions.as_ref()) else {
            return RoutePerms::default();
        };
        let rules = |sp: &Option<canopy_conf::SubjectPermission>| {
            sp.is_some()
                .then(|| Arc::new(SubjectRules::from_config(sp)))
        };
        RoutePerms {
            import: rules(&p.import),
            export: rules(&p.export),
        }
    }
}

/// Cluster state kept by the server.
#[derive(Default)]
pub struct Cluster {
    pub routes: Mutex<Vec<Arc<Route>>>,
    /// Server ids we are dialling (explicit or implicit), to avoid duplicate dials.
    pub(crate) dialing: Mutex<HashSet<String>>,
    /// Our route URL as peers should dial it.
    pub url: Mutex<String>,
    /// The cluster name (configured or learned).
    pub name: Mutex<String>,
    /// Route URLs (host:port) that turned out to be ourselves: not dialled again.
    pub(crate) self_urls: Mutex<HashSet<String>>,
}

/// Live state of one configured remote, for `/leafz` (Canopy extension) and metrics.
#[derive(Default)]
pub struct RemoteState {
    pub urls: Vec<String>,
    pub account: String,
    pub connected: AtomicBool,
    /// Set once the remote has connected: failures are then reconnect errors.
    pub ever_connected: AtomicBool,
    pub connected_url: Mutex<Option<String>>,
    pub last_error: Mutex<Option<String>>,
    pub attempts: AtomicU64,
    pub reconnects: AtomicU64,
    /// Store-and-forward spool (`reconnect_buffer_size`), when this remote spools.
    pub spool: Option<Arc<crate::server::spool::Spool>>,
}
