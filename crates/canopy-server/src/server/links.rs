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
    /// Slot of this connection in the peer's pool (nats-server 2.10 `route_pool_idx`); 0
    /// on a dedicated route and on a route without pooling.
    pub pool_idx: usize,
    /// A route dedicated to one account (`cluster { accounts }`, INFO `route_account`):
    /// it carries only that account, and its ops name no account.
    pub account: Option<String>,
    /// No pooling with this peer (2.9, or `pool_size: -1` on either side): this one
    /// connection carries every account.
    pub no_pool: bool,
    /// What was negotiated, as `/routez` `compression` shows it when the link does not
    /// compress (`off`, `not supported`); the level in use otherwise.
    pub compression: String,
    /// Its INFO says `jetstream: true` (clustered JetStream's peers).
    pub jetstream: bool,
    /// It is a Canopy server (INFO `canopy_version`), so it speaks Canopy's Raft transport.
    pub canopy: bool,
    pub(crate) links: Mutex<Vec<(Arc<Account>, Arc<Link>)>>,
    /// `cluster.permissions`: `import` limits the interest we advertise and the messages
    /// we accept, `export` the interest we accept (and, its deny list, what we send).
    pub perms: RoutePerms,
}

impl Route {
    /// Whether `account`'s interest and messages travel on this connection: its own
    /// account on a dedicated route; every account without pooling; otherwise an account
    /// not pinned to a dedicated route whose pool index (nats-server's FNV-1a hash of the
    /// name) is this connection's.
    pub fn serves(&self, account: &str, pool: Option<usize>, pinned: &[String]) -> bool {
        match (&self.account, self.no_pool) {
            (Some(a), _) => a == account,
            (None, true) => true,
            (None, false) => {
                !pinned.iter().any(|p| p == account)
                    && pool_index(account, pool.unwrap_or(1)) == self.pool_idx
            }
        }
    }

    /// `/routez` `compression`: the level this side writes with, else the outcome.
    pub fn compression_shown(&self) -> String {
        match crate::auth::s2::Level::from_code(
            self.conn
                .compression
                .load(std::sync::atomic::Ordering::Relaxed),
        ) {
            Some(l) => l.as_str().to_string(),
            None => self.compression.clone(),
        }
    }
}

/// nats-server's `computeRoutePoolIdx`: FNV-1a (32 bit) of the account name modulo the
/// pool size, so both ends pick the same connection for an account.
pub fn pool_index(account: &str, pool_size: usize) -> usize {
    if pool_size <= 1 {
        return 0;
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in account.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % pool_size as u32) as usize
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

#[cfg(test)]
mod tests {
    use super::pool_index;

    #[test]
    fn pool_index_is_fnv1a_of_the_account_name() {
        // FNV-1a("a") = 0xe40c292c; "$G" = 0x7abc619c; "$SYS" = 0x02d66af8.
        assert_eq!(pool_index("a", 1 << 31), 0xe40c292c % (1 << 31));
        assert_eq!(pool_index("$G", 3), 2);
        assert_eq!(pool_index("$SYS", 3), 0);
        assert_eq!(pool_index("C", 3), 1);
        assert_eq!(pool_index("anything", 1), 0);
    }
}
