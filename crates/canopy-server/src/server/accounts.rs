//! Accounts at run time: binding an authenticated user to its account (creating it from
//! its JWT in operator mode), leaf JWT authentication, and the resolver's claims requests.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::auth::jwt::{authenticate, decode, now_unix, Claims, ConnType, Trust};
use crate::auth::users::Authenticated;
use crate::core::account::Account;
use crate::core::conn::{conn_label, CloseReason, ConnShared};
use crate::core::errors;
use crate::server::Server;

impl Server {
    /// Finds the account of an authenticated user; in operator mode, creates it from its
    /// JWT when first used and enforces the account's connection limit, the user JWT's
    /// expiry and later revocations. `Err` is the `-ERR` text (the cause is logged).
    pub fn bind_account(
        &self,
        conn: &Arc<ConnShared>,
        a: &Authenticated,
    ) -> Result<Arc<Account>, &'static str> {
        let Some(u) = &a.jwt else {
            return self.account(&a.account).ok_or_else(|| {
                tracing::error!(
                    "{} - account {:?} of user {:?} does not exist",
                    conn_label(conn),
                    a.account,
                    a.user
                );
                errors::AUTH_VIOLATION
            });
        };
        let Some(trust) = self.trust() else {
            return Err(errors::AUTH_VIOLATION);
        };
        let acc = self.account_for_jwt(&u.account);
        let max_conns = trust
            .account(&u.account)
            .map(|j| j.claims.nats.limits.conn)
            .unwrap_or(-1);
        if max_conns >= 0 && acc.num_conns.load(Ordering::Relaxed) as i64 >= max_conns {
            tracing::error!(
                "{} - account {} connection limit ({max_conns}) reached; user {} refused",
                conn_label(conn),
                u.account,
                u.key
            );
            return Err(errors::MAX_ACCOUNT_CONNECTIONS);
        }
        trust.track(conn, u);
        if let Some(exp) = u.expires {
            let conn = conn.clone();
            let user = u.key.clone();
            let left = Duration::from_secs((exp - now_unix()).max(0) as u64);
            tokio::spawn(async move {
                tokio::select! {
                    _ = conn.cancel.cancelled() => {}
                    _ = tokio::time::sleep(left) => {
                        tracing::warn!("{} - user JWT {user} expired", conn_label(&conn));
                        conn.error_and_close(
                            errors::USER_AUTH_EXPIRED,
                            CloseReason::Other("Authentication Expired".into()),
                        );
                    }
                }
            });
        }
        Ok(acc)
    }

    /// The server account named by an account public key, created on first use.
    pub fn account_for_jwt(&self, key: &str) -> Arc<Account> {
        if let Some(a) = self.account(key) {
            return a;
        }
        let o = self.opts();
        let cache = !o.disable_sublist_cache;
        let track = o.leafnodes.is_some() || o.cluster.is_some();
        let acc = Account::new(key, cache, track);
        // An account whose JWT arrived after start-up: its mappings apply from now on.
        let jwt = self.trust().and_then(|t| t.account(key));
        if let Some(ms) = jwt.map(|j| crate::auth::jwt::jwt_mappings(&j)) {
            if !ms.is_empty() {
                let cluster = o.cluster.as_ref().and_then(|c| c.name.as_deref());
                match crate::core::mapping::Mappings::new(&ms, cluster) {
                    Ok(m) => acc.set_mappings(m),
                    Err(e) => tracing::error!("account {key}: mappings of its JWT: {e}"),
                }
            }
        }
        self.insert_account(acc)
    }

    /// Operator mode: authenticates a leaf CONNECT with a user JWT and binds the leaf to
    /// the JWT's account, within the account's leaf connection limit. Returns the
    /// account name, or the log text.
    pub fn authenticate_leaf_jwt(
        &self,
        trust: &Trust,
        jwt: &str,
        sig: &str,
        nonce: &str,
    ) -> Result<String, String> {
        let a = authenticate(trust, jwt, sig, nonce, ConnType::Leafnode)?;
        let acc = self.account_for_jwt(&a.account);
        let max = trust
            .account(&a.account)
            .map(|j| j.claims.nats.limits.leaf)
            .unwrap_or(-1);
        if max >= 0 && acc.num_leafs.load(Ordering::Relaxed) as i64 >= max {
            return Err(format!(
                "{}: account {} leaf connection limit ({max}) reached",
                a.user, a.account
            ));
        }
        Ok(a.account)
    }

    /// Handles a `$SYS` claims request (full/cache resolver and memory-resolver updates):
    /// `$SYS.REQ.CLAIMS.UPDATE`, `$SYS.REQ.ACCOUNT.<acc>.CLAIMS.UPDATE` (body: the
    /// account JWT), `$SYS.REQ.ACCOUNT.<acc>.CLAIMS.LOOKUP` and `$SYS.REQ.CLAIMS.LIST`.
    /// Returns the reply body, `None` to stay silent.
    pub fn handle_claims_request(&self, subject: &str, body: &[u8]) -> Option<Vec<u8>> {
        let trust = self.trust()?;
        let tokens: Vec<&str> = subject.split('.').collect();
        match tokens.as_slice() {
            ["$SYS", "REQ", "ACCOUNT", acc, "CLAIMS", "LOOKUP"] => {
                trust.account(acc).map(|a| a.raw.clone().into_bytes())
            }
            ["$SYS", "REQ", "CLAIMS", "LIST"] if trust.accepts_new_accounts() => {
                let v = serde_json::json!({"data": trust.account_keys()});
                Some(serde_json::to_vec(&v).unwrap_or_default())
            }
            ["$SYS", "REQ", "CLAIMS", "UPDATE"] => Some(self.claims_update(&trust, None, body)),
            ["$SYS", "REQ", "ACCOUNT", acc, "CLAIMS", "UPDATE"] => {
                Some(self.claims_update(&trust, Some(acc), body))
            }
            _ => None,
        }
    }

    fn claims_update(&self, trust: &Trust, expect: Option<&str>, body: &[u8]) -> Vec<u8> {
        let token = String::from_utf8_lossy(body).trim().to_string();
        let result = (|| {
            let peek: Claims<Value> = decode(&token).map_err(|e| (String::new(), e.to_string()))?;
            let key = peek.sub.clone();
            if let Some(exp) = expect {
                if exp != key {
                    return Err((
                        key,
                        format!("subject {exp} does not match the JWT's account"),
                    ));
                }
            }
            if !trust.accepts_new_accounts() && trust.account(&key).is_none() {
                return Err((
                    key,
                    "the memory resolver only updates accounts it knows".into(),
                ));
            }
            let acc = trust
                .install(&token)
                .map_err(|e| (key.clone(), e.to_string()))?;
            Ok(acc)
        })();
        let v = match result {
            Ok(acc) => {
                tracing::info!("resolver: account {} updated", acc.key);
                trust.enforce_revocations(&acc);
                let has_links =
                    !acc.claims.nats.imports.is_empty() || !acc.claims.nats.exports.is_empty();
                if has_links && self.account(&acc.key).is_some() {
                    tracing::warn!(
                        "resolver: imports/exports of account {} change at the next restart",
                        acc.key
                    );
                }
                if !acc.claims.nats.mappings.is_empty() && self.account(&acc.key).is_some() {
                    tracing::warn!(
                        "resolver: mappings of account {} change at the next restart",
                        acc.key
                    );
                }
                serde_json::json!({"data": {"account": acc.key, "code": 200, "message": "jwt updated"}})
            }
            Err((key, e)) => {
                tracing::warn!("resolver: claims update refused: {e}");
                serde_json::json!({"error": {"account": key, "code": 400, "description": format!("jwt update resulted in error - {e}")}})
            }
        };
        serde_json::to_vec(&v).unwrap_or_default()
    }
}
