//! Client authentication and permissions: user/password (plain or bcrypt), token, nkey
//! (nonce signature), `no_auth_user`, users bound to accounts, and `verify_and_map` (the
//! client certificate picks the user).

use std::collections::HashMap;
use std::sync::Arc;

use canopy_conf::{Options, Permissions};
use canopy_proto::ClientConnect;

use crate::core::account::GLOBAL_ACCOUNT;
pub use crate::core::perms::{Perms, SubjectRules};

#[derive(Debug, Clone)]
struct UserEntry {
    password: Option<String>,
    account: String,
    perms: Option<Arc<Perms>>,
}

/// What a successful authentication yields.
#[derive(Debug, Clone, Default)]
pub struct Authenticated {
    pub user: String,
    pub account: String,
    pub perms: Option<Arc<Perms>>,
    /// Operator mode: the verified user JWT (limits, expiry).
    pub jwt: Option<Arc<crate::auth::jwt::JwtUser>>,
}

/// The server's client authentication table, rebuilt on reload.
#[derive(Debug, Default)]
pub struct ClientAuth {
    users: HashMap<String, UserEntry>,
    nkeys: HashMap<String, UserEntry>,
    token: Option<String>,
    no_auth_user: Option<String>,
    /// Operator mode: users are authenticated by their JWTs only.
    trust: Option<Arc<crate::auth::jwt::Trust>>,
    /// Top-level `tls { verify_and_map: true }`: client users come from certificates.
    tls_map: bool,
    /// What a user JWT's `allowed_connection_types` must permit.
    conn_type: crate::auth::jwt::ConnType,
}

fn is_bcrypt(s: &str) -> bool {
    s.starts_with("$2a$") || s.starts_with("$2b$") || s.starts_with("$2x$") || s.starts_with("$2y$")
}

/// Compares a presented secret with a configured one (plain or bcrypt hash).
/// Runs blocking work (bcrypt, signature checks) from a synchronous handler that is on a
/// runtime worker, without stalling that worker's other tasks: on the multi-thread runtime
/// the worker first hands its queued tasks to another thread (`block_in_place`); elsewhere
/// (a current-thread runtime in unit tests, no runtime) it just runs.
pub fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

pub fn check_password(configured: &str, presented: &str) -> bool {
    if is_bcrypt(configured) {
        bcrypt::verify(presented, configured).unwrap_or(false)
    } else {
        // Constant-time comparison of equal-length strings.
        let (a, b) = (configured.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// The single user (or token) and `no_auth_user` a listener authenticates with, besides
/// the users lists.
struct Simple<'a> {
    user: Option<&'a str>,
    password: Option<&'a str>,
    perms: Option<&'a Permissions>,
    token: Option<&'a str>,
    no_auth_user: Option<&'a str>,
}

impl<'a> Simple<'a> {
    /// The top-level `authorization` block's single user and token, and `no_auth_user`.
    fn top(o: &'a Options) -> Simple<'a> {
        let a = &o.authorization;
        Simple {
            user: a.user.as_deref(),
            password: a.password.as_deref(),
            perms: a.default_permissions.as_ref(),
            token: a.token.as_deref(),
            no_auth_user: o.no_auth_user.as_deref(),
        }
    }
}

impl ClientAuth {
    pub fn from_options(o: &Options) -> ClientAuth {
        let tls_map = o.tls.as_ref().is_some_and(|t| t.verify_and_map);
        Self::build(
            o,
            Simple::top(o),
            tls_map,
            crate::auth::jwt::ConnType::Standard,
        )
    }

    /// The table for websocket clients. As in nats-server, a `websocket {}` block with a
    /// user, a token or a `no_auth_user` overrides the top-level single user, token and
    /// `no_auth_user` (the users lists apply either way); `verify_and_map` comes from
    /// `websocket { tls {} }`; user JWTs are checked as `WEBSOCKET` connections.
    pub fn for_websocket(o: &Options) -> ClientAuth {
        let Some(w) = &o.websocket else {
            return Self::from_options(o);
        };
        let wa = w.authorization.as_ref();
        let overrides =
            wa.is_some_and(|a| a.user.is_some() || a.token.is_some()) || w.no_auth_user.is_some();
        let simple = if overrides {
            Simple {
                user: wa.and_then(|a| a.user.as_deref()),
                password: wa.and_then(|a| a.password.as_deref()),
                perms: None,
                token: wa.and_then(|a| a.token.as_deref()),
                no_auth_user: w.no_auth_user.as_deref(),
            }
        } else {
            Simple::top(o)
        };
        let tls_map = w.tls.as_ref().is_some_and(|t| t.verify_and_map);
        Self::build(o, simple, tls_map, crate::auth::jwt::ConnType::Websocket)
    }

    fn build(
        o: &Options,
        simple: Simple<'_>,
        tls_map: bool,
        conn_type: crate::auth::jwt::ConnType,
    ) -> ClientAuth {
        let mut a = ClientAuth {
            token: simple.token.map(str::to_string),
            no_auth_user: simple.no_auth_user.map(str::to_string),
            tls_map,
            conn_type,
            ..Default::default()
        };
        let default_perms = o.authorization.default_permissions.as_ref();
        if let Some(u) = simple.user {
            a.users.insert(
                u.to_string(),
                UserEntry {
                    password: simple.password.map(str::to_string),
                    account: GLOBAL_ACCOUNT.to_string(),
                    perms: simple.perms.map(|p| Arc::new(Perms::from_config(p))),
                },
            );
        }
        let mut add = |u: &canopy_conf::User, account: &str, dflt: Option<&Permissions>| {
            let perms = u
                .permissions
                .as_ref()
                .or(dflt)
                .map(|p| Arc::new(Perms::from_config(p)));
            let entry = UserEntry {
                password: u.password.clone(),
                account: u.account.clone().unwrap_or_else(|| account.to_string()),
                perms,
            };
            if let Some(nk) = &u.nkey {
                a.nkeys.insert(nk.clone(), entry);
            } else {
                a.users.insert(u.user.clone(), entry);
            }
        };
        for u in &o.authorization.users {
            add(u, GLOBAL_ACCOUNT, default_perms);
        }
        for acc in &o.accounts {
            for u in &acc.users {
                add(
                    u,
                    &acc.name,
                    acc.default_permissions.as_ref().or(default_perms),
                );
            }
        }
        a
    }

    /// Switches to operator mode (`Some`): every user must present a valid user JWT.
    pub fn with_trust(mut self, trust: Option<Arc<crate::auth::jwt::Trust>>) -> ClientAuth {
        self.trust = trust;
        self
    }

    /// The operator-mode trust, if the server is in operator mode.
    pub fn trust(&self) -> Option<&Arc<crate::auth::jwt::Trust>> {
        self.trust.as_ref()
    }

    /// True when clients must present credentials (INFO `auth_required`).
    pub fn required(&self) -> bool {
        !self.users.is_empty()
            || !self.nkeys.is_empty()
            || self.token.is_some()
            || self.trust.is_some()
            || self.tls_map
    }

    /// True when the INFO must carry a nonce (nkey users exist, or operator mode).
    pub fn needs_nonce(&self) -> bool {
        !self.nkeys.is_empty() || self.trust.is_some()
    }

    /// Checks a client CONNECT with the peer's TLS certificate (DER). With
    /// `verify_and_map` (outside operator mode) the user is the configured one whose name
    /// equals a SAN email, a SAN DNS name or the RFC 2253 subject, tried in that order; no
    /// password is checked. `Err` names the certificate subject for the log.
    pub fn authenticate_client(
        &self,
        c: &ClientConnect,
        nonce: &str,
        cert: Option<&[u8]>,
    ) -> Result<Authenticated, String> {
        if !self.tls_map || self.trust.is_some() {
            return self.authenticate(c, nonce);
        }
        let Some(der) = cert else {
            return Err("<no client certificate>".to_string());
        };
        let Some(id) = crate::auth::tls::cert_identity(der) else {
            return Err("<unreadable client certificate>".to_string());
        };
        for name in id.candidates() {
            // nkey users are keyed by their public key, never by a certificate name.
            if let Some(e) = self.users.get(name) {
                return Ok(Authenticated {
                    user: name.to_string(),
                    account: e.account.clone(),
                    perms: e.perms.clone(),
                    jwt: None,
                });
            }
        }
        Err(format!(
            "certificate subject {} (no user mapped)",
            id.subject
        ))
    }

    /// Checks a CONNECT. `nonce` is what our INFO sent. Runs bcrypt, so call it off the
    /// async executor when hashes are configured. `Err` carries the user name for the log.
    pub fn authenticate(&self, c: &ClientConnect, nonce: &str) -> Result<Authenticated, String> {
        if let Some(t) = &self.trust {
            return crate::auth::jwt::authenticate(t, &c.jwt, &c.sig, nonce, self.conn_type);
        }
        if !self.required() {
            return Ok(Authenticated {
                user: String::new(),
                account: GLOBAL_ACCOUNT.to_string(),
                ..Default::default()
            });
        }
        // A `.creds` file's seed signs the nonce like a plain nkey user: outside operator
        // mode its JWT is ignored and the nkey is matched against the configured users
        // (Canopy's documented answer, docs/CONFIG.md).
        if let Some(nk) = Some(c.nkey.as_str()).filter(|s| !s.is_empty()) {
            let entry = self.nkeys.get(nk).ok_or_else(|| nk.to_string())?;
            let sig = c.sig.as_str();
            if !verify_nonce_signature(nk, nonce, sig) {
                return Err(nk.to_string());
            }
            return Ok(Authenticated {
                user: nk.to_string(),
                account: entry.account.clone(),
                perms: entry.perms.clone(),
                jwt: None,
            });
        }
        if let Some(tok) = &self.token {
            let presented = c.auth_token.as_str();
            if check_password(tok, presented) {
                return Ok(Authenticated {
                    user: String::new(),
                    account: GLOBAL_ACCOUNT.to_string(),
                    ..Default::default()
                });
            }
            return Err("<token>".to_string());
        }
        let user = c.user.as_str();
        if user.is_empty() && c.auth_token.is_empty() && c.nkey.is_empty() && c.jwt.is_empty() {
            if let Some(nau) = &self.no_auth_user {
                if let Some(e) = self.users.get(nau) {
                    return Ok(Authenticated {
                        user: nau.clone(),
                        account: e.account.clone(),
                        perms: e.perms.clone(),
                        jwt: None,
                    });
                }
            }
        }
        let entry = self.users.get(user).ok_or_else(|| user.to_string())?;
        let presented = c.pass.as_str();
        match &entry.password {
            Some(p) if check_password(p, presented) => Ok(Authenticated {
                user: user.to_string(),
                account: entry.account.clone(),
                perms: entry.perms.clone(),
                jwt: None,
            }),
            None if presented.is_empty() => Ok(Authenticated {
                user: user.to_string(),
                account: entry.account.clone(),
                perms: entry.perms.clone(),
                jwt: None,
            }),
            _ => Err(user.to_string()),
        }
    }
}

/// Verifies an nkey signature over the nonce (base64url without padding, or standard
/// base64, as nats-server accepts both).
pub fn verify_nonce_signature(public_key: &str, nonce: &str, sig: &str) -> bool {
    use base64::Engine as _;
    let Ok(kp) = nkeys::KeyPair::from_public_key(public_key) else {
        return false;
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(sig));
    match raw {
        Ok(raw) => kp.verify(nonce.as_bytes(), &raw).is_ok(),
        Err(_) => false,
    }
}

/// A fresh nonce for INFO (11 random bytes, base64url, like nats-server's 15-character nonce).
pub fn new_nonce() -> String {
    use base64::Engine as _;
    let bytes: [u8; 11] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_rules() {
        let r = SubjectRules {
            allow: Some(vec!["foo.>".into()]),
            deny: vec!["foo.secret".into()],
        };
        assert!(r.permits_publish("foo.bar"));
        assert!(!r.permits_publish("foo.secret"));
        assert!(!r.permits_publish("bar"));
        assert!(r.permits_subscribe("foo.*"));
        assert!(!r.permits_subscribe(">"));
        assert!(r.denies_delivery("foo.secret"));
    }

    #[test]
    fn passwords() {
        assert!(check_password("s3cr3t", "s3cr3t"));
        assert!(!check_password("s3cr3t", "s3cr3"));
        let h = bcrypt::hash("pw", 4).unwrap();
        assert!(check_password(&h, "pw"));
        assert!(!check_password(&h, "px"));
        assert!(!check_password("$2a$11$secrethash", "x"));
    }

    #[test]
    fn nkey_signature() {
        use base64::Engine as _;
        let kp = nkeys::KeyPair::new_user();
        let nonce = new_nonce();
        let sig = kp.sign(nonce.as_bytes()).unwrap();
        let s = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig);
        assert!(verify_nonce_signature(&kp.public_key(), &nonce, &s));
        assert!(!verify_nonce_signature(&kp.public_key(), "other", &s));
    }
}
