//! Operator (JWT) mode: decoding and verifying NATS JWTs (operator, account, user and
//! activation claims), the trust chain (operator → account → user, each step possibly
//! through a signing key), the account resolver (`resolver: MEMORY` with
//! `resolver_preload`, or a directory of `<account key>.jwt` files updated over `$SYS`),
//! and user authentication with a signed nonce.
//!
//! A JWT is `base64url(header).base64url(claims).base64url(ed25519 signature)`; the
//! signature covers the first two parts as written (version 2, `"alg":"ed25519-nkey"`) or
//! the claims part alone (version 1, `"alg":"ed25519"`), and is checked with the public
//! key in `iss`. Times are Unix seconds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use canopy_conf::{Options, ResolverOpts};
use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::users::{Authenticated, Perms, SubjectRules};
use crate::core::conn::{conn_label, CloseReason, ConnShared};
use crate::core::errors;

/// Why a JWT (or an authentication with one) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("malformed JWT: {0}")]
    Malformed(String),
    #[error("unsupported JWT algorithm {0:?}")]
    Algorithm(String),
    #[error("JWT signature does not verify with issuer {0}")]
    BadSignature(String),
    #[error("expected {expected} JWT, got a JWT whose subject is {subject}")]
    WrongKind {
        expected: &'static str,
        subject: String,
    },
    #[error("{what} JWT {subject} expired at {at}")]
    Expired {
        what: &'static str,
        subject: String,
        at: i64,
    },
    #[error("{what} JWT {subject} not valid before {at}")]
    NotYetValid {
        what: &'static str,
        subject: String,
        at: i64,
    },
    #[error("{what} JWT {subject} is issued by {issuer}, which is not trusted for it")]
    Untrusted {
        what: &'static str,
        subject: String,
        issuer: String,
    },
    #[error("user {user} is revoked by account {account}")]
    Revoked { user: String, account: String },
    #[error("account {0} is unknown to the resolver")]
    UnknownAccount(String),
    #[error("nonce signature does not verify with user key {0}")]
    NonceSignature(String),
    #[error("user {user} may not connect as {kind} (allowed: {allowed})")]
    ConnectionType {
        user: String,
        kind: &'static str,
        allowed: String,
    },
    #[error("{0}")]
    Resolver(String),
}

impl JwtError {
    /// The `-ERR` text a client gets (nats-server sends `Authorization Violation` for
    /// every refusal at CONNECT; the expiry/revocation texts are for live connections).
    pub fn client_text(&self) -> &'static str {
        errors::AUTH_VIOLATION
    }
}

/// The registered claims plus the NATS-specific `nats` object.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Claims<T> {
    #[serde(default)]
    pub jti: String,
    #[serde(default)]
    pub iat: i64,
    #[serde(default)]
    pub iss: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default)]
    pub nats: T,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OperatorNats {
    #[serde(default)]
    pub signing_keys: Vec<String>,
    #[serde(default)]
    pub system_account: String,
}

fn no_limit() -> i64 {
    -1
}

/// Account limits (`nats.limits`); negative = unlimited, absent = unlimited.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountLimits {
    #[serde(default = "no_limit")]
    pub subs: i64,
    #[serde(default = "no_limit")]
    pub conn: i64,
    #[serde(default = "no_limit")]
    pub leaf: i64,
    #[serde(default = "no_limit")]
    pub payload: i64,
    #[serde(default = "no_limit")]
    pub data: i64,
    /// JetStream (zero memory and disk storage: no JetStream for the account).
    #[serde(default)]
    pub mem_storage: i64,
    #[serde(default)]
    pub disk_storage: i64,
    #[serde(default = "no_limit")]
    pub streams: i64,
    #[serde(default = "no_limit")]
    pub consumer: i64,
    #[serde(default = "no_limit")]
    pub max_ack_pending: i64,
    #[serde(default = "no_limit")]
    pub mem_max_stream_bytes: i64,
    #[serde(default = "no_limit")]
    pub disk_max_stream_bytes: i64,
    #[serde(default)]
    pub max_bytes_required: bool,
}

impl Default for AccountLimits {
    fn default() -> Self {
        AccountLimits {
            subs: -1,
            conn: -1,
            leaf: -1,
            payload: -1,
            data: -1,
            mem_storage: 0,
            disk_storage: 0,
            streams: -1,
            consumer: -1,
            max_ack_pending: -1,
            mem_max_stream_bytes: -1,
            disk_max_stream_bytes: -1,
            max_bytes_required: false,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JwtPermission {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JwtPermissions {
    #[serde(default, rename = "pub")]
    pub publish: JwtPermission,
    #[serde(default, rename = "sub")]
    pub subscribe: JwtPermission,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp: Option<Value>,
}

/// A user's permissions and limits (the user claims, or a scoped signing key's template).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserLimits {
    #[serde(flatten)]
    pub perms: JwtPermissions,
    #[serde(default = "no_limit")]
    pub subs: i64,
    #[serde(default = "no_limit")]
    pub data: i64,
    #[serde(default = "no_limit")]
    pub payload: i64,
    #[serde(default)]
    pub bearer_token: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_connection_types: Vec<String>,
}

impl Default for UserLimits {
    fn default() -> Self {
        UserLimits {
            perms: JwtPermissions::default(),
            subs: -1,
            data: -1,
            payload: -1,
            bearer_token: false,
            allowed_connection_types: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserNats {
    #[serde(flatten)]
    pub limits: UserLimits,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub issuer_account: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JwtExport {
    #[serde(default)]
    pub name: String,
    pub subject: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub token_req: bool,
    #[serde(default)]
    pub response_type: String,
    /// Nanoseconds.
    #[serde(default)]
    pub response_threshold: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JwtImport {
    #[serde(default)]
    pub name: String,
    pub subject: String,
    pub account: String,
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub to: String,
    #[serde(default)]
    pub local_subject: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub share: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AccountNats {
    #[serde(default)]
    pub imports: Vec<JwtImport>,
    #[serde(default)]
    pub exports: Vec<JwtExport>,
    #[serde(default)]
    pub limits: AccountLimits,
    /// Plain keys, or `{kind: "user_scope", key, template}` scoped keys.
    #[serde(default)]
    pub signing_keys: Vec<Value>,
    #[serde(default)]
    pub revocations: HashMap<String, i64>,
    #[serde(default)]
    pub default_permissions: JwtPermissions,
    /// Subject mappings (`nsc add mapping`): source → weighted destinations.
    #[serde(default)]
    pub mappings: BTreeMap<String, Vec<JwtWeightedMapping>>,
}

/// One destination of an account JWT's mapping.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JwtWeightedMapping {
    pub subject: String,
    /// Percent; 0 (absent) means 100, as in nats-io/jwt.
    #[serde(default)]
    pub weight: u8,
    #[serde(default)]
    pub cluster: String,
}

/// An account JWT's mappings in the configuration's form (checked with the configured
/// ones: `mapping::validate` at start, `Mappings::new` when an account appears later).
pub fn jwt_mappings(a: &AccountJwt) -> Vec<canopy_conf::Mapping> {
    a.claims
        .nats
        .mappings
        .iter()
        .map(|(source, dests)| canopy_conf::Mapping {
            source: source.clone(),
            destinations: dests
                .iter()
                .map(|d| canopy_conf::MapDest {
                    subject: d.subject.clone(),
                    weight: if d.weight == 0 {
                        100
                    } else {
                        d.weight.min(100)
                    },
                    cluster: (!d.cluster.is_empty()).then(|| d.cluster.clone()),
                })
                .collect(),
            pos: Default::default(),
        })
        .collect()
}

fn b64(part: &str) -> Result<Vec<u8>, JwtError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| JwtError::Malformed(format!("bad base64url: {e}")))
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Decodes a JWT and verifies its signature against its own `iss` key. Says nothing about
/// whether that issuer is trusted, nor about times: see the `verify_*` functions.
pub fn decode<T: DeserializeOwned + Default>(token: &str) -> Result<Claims<T>, JwtError> {
    let token = token.trim();
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts.as_slice() else {
        return Err(JwtError::Malformed(format!(
            "expected 3 dot-separated parts, got {}",
            parts.len()
        )));
    };
    let header: Value = serde_json::from_slice(&b64(h)?)
        .map_err(|e| JwtError::Malformed(format!("bad header: {e}")))?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    if !alg.eq_ignore_ascii_case("ed25519-nkey") && !alg.eq_ignore_ascii_case("ed25519") {
        return Err(JwtError::Algorithm(alg.to_string()));
    }
    let payload = b64(p)?;
    let claims: Claims<T> = serde_json::from_slice(&payload)
        .map_err(|e| JwtError::Malformed(format!("bad claims: {e}")))?;
    let sig = b64(s)?;
    let kp = nkeys::KeyPair::from_public_key(&claims.iss)
        .map_err(|_| JwtError::BadSignature(claims.iss.clone()))?;
    // Version 1 tokens (`"alg":"ed25519"`, no `nats.version` ≥ 2) were signed over the
    // payload segment only; version 2 (`ed25519-nkey`) over `header.payload`. nats-server
    // accepts both (its jwt library picks the rule by the claims' version).
    let signed = if alg.eq_ignore_ascii_case("ed25519") && claims_version(&payload) <= 1 {
        *p
    } else {
        &token[..h.len() + 1 + p.len()]
    };
    kp.verify(signed.as_bytes(), &sig)
        .map_err(|_| JwtError::BadSignature(claims.iss.clone()))?;
    Ok(claims)
}

/// `nats.version` of raw claims (absent in version 1 claims: 1).
fn claims_version(payload: &[u8]) -> i64 {
    serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| v.get("nats")?.get("version")?.as_i64())
        .unwrap_or(1)
}

fn check_times<T>(c: &Claims<T>, what: &'static str, now: i64) -> Result<(), JwtError> {
    if let Some(exp) = c.exp.filter(|e| *e > 0) {
        if now >= exp {
            return Err(JwtError::Expired {
                what,
                subject: c.sub.clone(),
                at: exp,
            });
        }
    }
    if let Some(nbf) = c.nbf.filter(|n| *n > 0) {
        if now < nbf {
            return Err(JwtError::NotYetValid {
                what,
                subject: c.sub.clone(),
                at: nbf,
            });
        }
    }
    Ok(())
}

fn check_kind<T>(c: &Claims<T>, prefix: char, expected: &'static str) -> Result<(), JwtError> {
    let ok = c.sub.starts_with(prefix) && nkeys::KeyPair::from_public_key(&c.sub).is_ok();
    if ok {
        Ok(())
    } else {
        Err(JwtError::WrongKind {
            expected,
            subject: c.sub.clone(),
        })
    }
}

/// A verified operator.
#[derive(Debug, Clone)]
pub struct Operator {
    pub key: String,
    pub name: String,
    pub signing_keys: Vec<String>,
    pub system_account: String,
}

/// Verifies a self-signed operator JWT.
pub fn verify_operator(token: &str) -> Result<Operator, JwtError> {
    let c: Claims<OperatorNats> = decode(token)?;
    check_kind(&c, 'O', "an operator")?;
    if c.iss != c.sub {
        return Err(JwtError::Untrusted {
            what: "operator",
            subject: c.sub,
            issuer: c.iss,
        });
    }
    check_times(&c, "operator", now_unix())?;
    Ok(Operator {
        key: c.sub,
        name: c.name,
        signing_keys: c.nats.signing_keys,
        system_account: c.nats.system_account,
    })
}

/// A verified account JWT.
#[derive(Debug, Clone)]
pub struct AccountJwt {
    pub key: String,
    pub raw: String,
    pub claims: Claims<AccountNats>,
    /// Signing keys → the scope template for scoped keys.
    pub signing_keys: HashMap<String, Option<UserLimits>>,
}

impl AccountJwt {
    fn is_revoked(&self, user: &str, iat: i64) -> bool {
        let r = &self.claims.nats.revocations;
        r.get(user).is_some_and(|t| iat <= *t) || r.get("*").is_some_and(|t| iat <= *t)
    }
}

/// Verifies an account JWT: signature, issued by one of `trusted` (operator keys), times.
pub fn verify_account(token: &str, trusted: &HashSet<String>) -> Result<AccountJwt, JwtError> {
    let c: Claims<AccountNats> = decode(token)?;
    check_kind(&c, 'A', "an account")?;
    if !trusted.contains(&c.iss) {
        return Err(JwtError::Untrusted {
            what: "account",
            subject: c.sub,
            issuer: c.iss,
        });
    }
    check_times(&c, "account", now_unix())?;
    let mut signing_keys = HashMap::new();
    for k in &c.nats.signing_keys {
        match k {
            Value::String(s) => {
                signing_keys.insert(s.clone(), None);
            }
            Value::Object(o) => {
                let Some(key) = o.get("key").and_then(Value::as_str) else {
                    continue;
                };
                let template = o
                    .get("template")
                    .cloned()
                    .map(serde_json::from_value::<UserLimits>)
                    .transpose()
                    .map_err(|e| JwtError::Malformed(format!("bad signing key scope: {e}")))?
                    .unwrap_or_default();
                signing_keys.insert(key.to_string(), Some(template));
            }
            _ => {}
        }
    }
    Ok(AccountJwt {
        key: c.sub.clone(),
        raw: token.trim().to_string(),
        claims: c,
        signing_keys,
    })
}

/// What a verified user JWT grants.
#[derive(Debug, Clone)]
pub struct JwtUser {
    pub key: String,
    pub name: String,
    pub account: String,
    pub iat: i64,
    pub expires: Option<i64>,
    /// Subscriptions allowed (`None` = unlimited).
    pub max_subs: Option<u64>,
    /// Largest payload allowed (`None` = server default).
    pub max_payload: Option<u64>,
}

fn limit(v: i64) -> Option<u64> {
    (v >= 0).then_some(v as u64)
}

fn perms_from(p: &JwtPermissions) -> Option<Arc<Perms>> {
    let rules = |x: &JwtPermission| SubjectRules {
        allow: (!x.allow.is_empty()).then(|| x.allow.clone()),
        deny: x.deny.clone(),
    };
    let empty = p.publish.allow.is_empty()
        && p.publish.deny.is_empty()
        && p.subscribe.allow.is_empty()
        && p.subscribe.deny.is_empty();
    if empty && p.resp.is_none() {
        return None;
    }
    // `resp: {max, ttl}` (ttl in nanoseconds); zeros mean nats-server's defaults.
    let allow_responses = p.resp.as_ref().map(|r| {
        let max = r.get("max").and_then(Value::as_i64).unwrap_or(0);
        let ttl = r.get("ttl").and_then(Value::as_i64).unwrap_or(0);
        (
            if max <= 0 { 1 } else { max as u64 },
            if ttl <= 0 {
                Duration::from_secs(120)
            } else {
                Duration::from_nanos(ttl as u64)
            },
        )
    });
    let mut publish = rules(&p.publish);
    if allow_responses.is_some() && p.publish.allow.is_empty() && p.publish.deny.is_empty() {
        publish.allow = Some(Vec::new());
    }
    Some(Arc::new(Perms {
        publish,
        subscribe: rules(&p.subscribe),
        allow_responses,
    }))
}

/// The connection kind a user JWT's `allowed_connection_types` is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnType {
    #[default]
    Standard,
    Websocket,
    Leafnode,
}

impl ConnType {
    fn as_str(self) -> &'static str {
        match self {
            ConnType::Standard => "STANDARD",
            ConnType::Websocket => "WEBSOCKET",
            ConnType::Leafnode => "LEAFNODE",
        }
    }
}

enum Store {
    Memory,
    Dir {
        dir: PathBuf,
        full: bool,
        limit: u64,
    },
}

/// A live JWT user, for revocation on account updates.
struct LiveUser {
    conn: Weak<ConnShared>,
    account: String,
    user: String,
    iat: i64,
}

/// Operator mode state: the trusted operators and the account resolver.
pub struct Trust {
    pub operators: Vec<Operator>,
    /// Keys allowed to issue account JWTs (operators and their signing keys).
    trusted: HashSet<String>,
    accounts: RwLock<HashMap<String, Arc<AccountJwt>>>,
    store: Store,
    live: Mutex<Vec<LiveUser>>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("operators", &self.operators)
            .field("accounts", &self.accounts.read().len())
            .finish()
    }
}

/// Reads an operator given as a JWT or as a path to a file holding one (possibly inside
/// `-----BEGIN NATS OPERATOR JWT-----` armor).
fn operator_jwt(spec: &str, base: Option<&Path>) -> Result<String, String> {
    let spec = spec.trim();
    if spec.starts_with("eyJ") && spec.matches('.').count() == 2 {
        return Ok(spec.to_string());
    }
    let mut path = PathBuf::from(spec);
    if path.is_relative() {
        if let Some(b) = base {
            path = b.join(path);
        }
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read operator JWT file {:?}: {e}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("eyJ") && l.matches('.').count() == 2)
        .map(str::to_string)
        .ok_or_else(|| format!("operator JWT file {:?} holds no JWT", path.display()))
}

impl Trust {
    /// Builds the trust from the options: verifies the operators, loads the preloaded and
    /// stored account JWTs. `Ok(None)` when not in operator mode.
    pub fn from_options(o: &Options) -> Result<Option<Trust>, String> {
        if o.operators.is_empty() {
            return Ok(None);
        }
        let mut operators = Vec::new();
        let mut trusted = HashSet::new();
        for spec in &o.operators {
            let token = operator_jwt(spec, o.config_dir())?;
            let op = verify_operator(&token).map_err(|e| format!("operator {spec:?}: {e}"))?;
            trusted.insert(op.key.clone());
            trusted.extend(op.signing_keys.iter().cloned());
            operators.push(op);
        }
        let store = match &o.resolver {
            Some(ResolverOpts::Memory { .. }) | None => Store::Memory,
            Some(ResolverOpts::Url { url, .. }) => {
                return Err(format!("URL account resolver {url} is not supported yet"))
            }
            Some(ResolverOpts::Dir(d)) => {
                let mut dir = d.dir.clone();
                if dir.is_relative() {
                    if let Some(b) = o.config_dir() {
                        dir = b.join(dir);
                    }
                }
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("cannot create resolver dir {:?}: {e}", dir.display()))?;
                Store::Dir {
                    dir,
                    full: d.full,
                    limit: d.limit,
                }
            }
        };
        let t = Trust {
            operators,
            trusted,
            accounts: RwLock::new(HashMap::new()),
            store,
            live: Mutex::new(Vec::new()),
        };
        if let Store::Dir { dir, .. } = &t.store {
            let entries = std::fs::read_dir(dir)
                .map_err(|e| format!("cannot read resolver dir {:?}: {e}", dir.display()))?;
            for e in entries.flatten() {
                let path = e.path();
                if path.extension().and_then(|x| x.to_str()) != Some("jwt") {
                    continue;
                }
                let loaded = std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|text| t.install(&text).map_err(|e| e.to_string()));
                if let Err(e) = loaded {
                    tracing::warn!("resolver: skipping {:?}: {e}", path.display());
                }
            }
        }
        for (key, token) in &o.resolver_preload {
            let acc = verify_account(token, &t.trusted)
                .map_err(|e| format!("resolver_preload {key}: {e}"))?;
            if &acc.key != key {
                return Err(format!(
                    "resolver_preload {key}: the JWT is for account {}",
                    acc.key
                ));
            }
            t.install(token)
                .map_err(|e| format!("resolver_preload {key}: {e}"))?;
        }
        Ok(Some(t))
    }

    /// A trust that refuses everything (operator mode whose setup failed: fail closed).
    pub fn deny_all() -> Trust {
        Trust {
            operators: Vec::new(),
            trusted: HashSet::new(),
            accounts: RwLock::new(HashMap::new()),
            store: Store::Memory,
            live: Mutex::new(Vec::new()),
        }
    }

    /// The operator-mode trust for a server, or `None` outside operator mode. A setup
    /// error (already reported by `check_options` at start) yields a trust that refuses
    /// every user.
    pub fn for_server(o: &Options) -> Option<Arc<Trust>> {
        match Trust::from_options(o) {
            Ok(t) => t.map(Arc::new),
            Err(e) => {
                tracing::error!("operator mode: {e}; refusing all users");
                Some(Arc::new(Trust::deny_all()))
            }
        }
    }

    /// The verified account JWT for a key.
    pub fn account(&self, key: &str) -> Option<Arc<AccountJwt>> {
        self.accounts.read().get(key).cloned()
    }

    /// All known account keys, sorted.
    pub fn account_keys(&self) -> Vec<String> {
        let mut v: Vec<String> = self.accounts.read().keys().cloned().collect();
        v.sort();
        v
    }

    /// Verifies and installs an account JWT (newer `iat` wins; an older one is refused),
    /// storing it in the resolver directory if there is one. Returns the account.
    pub fn install(&self, token: &str) -> Result<Arc<AccountJwt>, JwtError> {
        let acc = Arc::new(verify_account(token, &self.trusted)?);
        {
            let mut accounts = self.accounts.write();
            if let Some(old) = accounts.get(&acc.key) {
                if old.claims.iat > acc.claims.iat {
                    return Err(JwtError::Resolver(format!(
                        "account {}: the update is older than the JWT in use",
                        acc.key
                    )));
                }
            } else if let Store::Dir { limit, .. } = &self.store {
                if accounts.len() as u64 >= *limit {
                    return Err(JwtError::Resolver(format!(
                        "account {}: resolver limit of {limit} accounts reached",
                        acc.key
                    )));
                }
            }
            accounts.insert(acc.key.clone(), acc.clone());
        }
        if let Store::Dir { dir, .. } = &self.store {
            let path = dir.join(format!("{}.jwt", acc.key));
            let same = std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == acc.raw);
            if !same {
                std::fs::write(&path, &acc.raw).map_err(|e| {
                    JwtError::Resolver(format!("cannot store {:?}: {e}", path.display()))
                })?;
            }
        }
        Ok(acc)
    }

    /// True for the full resolver (updates are accepted for any account); the cache and
    /// memory resolvers accept updates only for accounts they know.
    pub fn accepts_new_accounts(&self) -> bool {
        matches!(self.store, Store::Dir { full: true, .. })
    }

    /// Authenticates a CONNECT's user JWT and nonce signature.
    pub fn authenticate(
        &self,
        jwt: &str,
        sig: &str,
        nonce: &str,
        kind: ConnType,
    ) -> Result<JwtUser, JwtError> {
        let uc: Claims<UserNats> = decode(jwt)?;
        check_kind(&uc, 'U', "a user")?;
        let now = now_unix();
        check_times(&uc, "user", now)?;
        let acc_key = if uc.nats.issuer_account.is_empty() {
            uc.iss.clone()
        } else {
            uc.nats.issuer_account.clone()
        };
        let acc = self
            .account(&acc_key)
            .ok_or_else(|| JwtError::UnknownAccount(acc_key.clone()))?;
        check_times(&acc.claims, "account", now)?;
        let scope = if uc.iss == acc.key {
            None
        } else {
            match acc.signing_keys.get(&uc.iss) {
                Some(scope) => scope.as_ref(),
                None => {
                    return Err(JwtError::Untrusted {
                        what: "user",
                        subject: uc.sub.clone(),
                        issuer: uc.iss.clone(),
                    })
                }
            }
        };
        if acc.is_revoked(&uc.sub, uc.iat) {
            return Err(JwtError::Revoked {
                user: uc.sub.clone(),
                account: acc.key.clone(),
            });
        }
        // A scoped signing key's template replaces the user's own permissions and limits.
        let limits = scope.unwrap_or(&uc.nats.limits);
        if !limits.bearer_token && !crate::auth::users::verify_nonce_signature(&uc.sub, nonce, sig)
        {
            return Err(JwtError::NonceSignature(uc.sub.clone()));
        }
        let types = &limits.allowed_connection_types;
        if !types.is_empty() && !types.iter().any(|t| t.eq_ignore_ascii_case(kind.as_str())) {
            return Err(JwtError::ConnectionType {
                user: uc.sub.clone(),
                kind: kind.as_str(),
                allowed: types.join(","),
            });
        }
        let al = &acc.claims.nats.limits;
        let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        Ok(JwtUser {
            key: uc.sub.clone(),
            name: uc.name.clone(),
            account: acc.key.clone(),
            iat: uc.iat,
            expires: uc.exp.filter(|e| *e > 0),
            max_subs: min(limit(limits.subs), limit(al.subs)),
            max_payload: min(limit(limits.payload), limit(al.payload)),
        })
    }

    /// The permissions a user JWT grants (its own, its scope's, or the account defaults).
    pub fn permissions(&self, jwt: &str) -> Option<Arc<Perms>> {
        let uc: Claims<UserNats> = decode(jwt).ok()?;
        let acc_key = if uc.nats.issuer_account.is_empty() {
            uc.iss.clone()
        } else {
            uc.nats.issuer_account.clone()
        };
        let acc = self.account(&acc_key)?;
        let own = match acc.signing_keys.get(&uc.iss) {
            Some(Some(scope)) => &scope.perms,
            _ => &uc.nats.limits.perms,
        };
        perms_from(own).or_else(|| perms_from(&acc.claims.nats.default_permissions))
    }

    pub fn track(&self, conn: &Arc<ConnShared>, u: &JwtUser) {
        let mut live = self.live.lock();
        live.retain(|l| l.conn.strong_count() > 0);
        live.push(LiveUser {
            conn: Arc::downgrade(conn),
            account: u.account.clone(),
            user: u.key.clone(),
            iat: u.iat,
        });
    }

    /// Closes live connections of `acc` whose users its (new) revocations cover.
    pub fn enforce_revocations(&self, acc: &AccountJwt) {
        let live = self.live.lock();
        for l in live.iter().filter(|l| l.account == acc.key) {
            if acc.is_revoked(&l.user, l.iat) {
                if let Some(c) = l.conn.upgrade() {
                    tracing::warn!(
                        "{} - user {} revoked by an update of account {}",
                        conn_label(&c),
                        l.user,
                        acc.key
                    );
                    c.error_and_close(
                        errors::USER_AUTH_REVOKED,
                        CloseReason::Other("Authentication Revoked".into()),
                    );
                }
            }
        }
    }
}

/// Start-time check of the operator-mode options (bad operator JWT, unreadable resolver
/// directory, preload JWTs that do not verify): the server refuses to start.
pub fn check_options(o: &Options) -> Result<(), Vec<String>> {
    Trust::from_options(o).map(|_| ()).map_err(|e| vec![e])
}

/// Authenticates a client or leaf CONNECT in operator mode. `Err` is the log text.
pub fn authenticate(
    trust: &Trust,
    jwt: &str,
    sig: &str,
    nonce: &str,
    kind: ConnType,
) -> Result<Authenticated, String> {
    if jwt.is_empty() {
        return Err("no user JWT presented (the server is in operator mode)".into());
    }
    match trust.authenticate(jwt, sig, nonce, kind) {
        Ok(u) => Ok(Authenticated {
            user: u.key.clone(),
            account: u.account.clone(),
            perms: trust.permissions(jwt),
            jwt: Some(Arc::new(u)),
        }),
        Err(e) => Err(e.to_string()),
    }
}

/// Operator mode: turns the imports, exports and mappings of the known account JWTs into
/// configured accounts (named by their public keys), so that the import agent
/// ([`crate::services::imports`]) serves them. Private exports (`token_req`) are granted only to
/// importers presenting a valid activation token. Imports from unknown accounts are
/// dropped with a warning.
pub fn accounts_from_jwts(o: &mut Options) -> Result<(), Vec<String>> {
    let trust = match Trust::from_options(o) {
        Ok(Some(t)) => t,
        Ok(None) => return Ok(()),
        Err(e) => return Err(vec![e]),
    };
    let keys = trust.account_keys();
    let mut accounts: BTreeMap<String, canopy_conf::AccountConfig> = BTreeMap::new();
    let all: Vec<Arc<AccountJwt>> = keys.iter().filter_map(|k| trust.account(k)).collect();
    let uses_imports = all.iter().any(|a| {
        !a.claims.nats.imports.is_empty()
            || !a.claims.nats.exports.is_empty()
            || !a.claims.nats.mappings.is_empty()
    });
    if !uses_imports {
        return Ok(());
    }
    for a in &all {
        let mut cfg = canopy_conf::AccountConfig {
            name: a.key.clone(),
            mappings: jwt_mappings(a),
            ..Default::default()
        };
        for e in &a.claims.nats.exports {
            let mut importers: Vec<String> = Vec::new();
            if e.token_req {
                for other in &all {
                    let granted = other.claims.nats.imports.iter().any(|i| {
                        i.account == a.key
                            && canopy_subject::subject_is_subset_of(&i.subject, &e.subject)
                            && activation_ok(&i.token, a, &other.key)
                    });
                    if granted {
                        importers.push(other.key.clone());
                    }
                }
                if importers.is_empty() {
                    // A list nobody matches: the export stays private.
                    importers.push("<activation token required>".into());
                }
            }
            if e.kind.eq_ignore_ascii_case("service") {
                let response_type = match e.response_type.to_ascii_lowercase().as_str() {
                    "stream" => canopy_conf::ResponseType::Stream,
                    "chunked" => canopy_conf::ResponseType::Chunked,
                    _ => canopy_conf::ResponseType::Singleton,
                };
                cfg.exports.push(canopy_conf::Export::Service {
                    subject: e.subject.clone(),
                    accounts: importers,
                    response_type,
                    response_threshold: (e.response_threshold > 0)
                        .then(|| Duration::from_nanos(e.response_threshold as u64)),
                    latency: None,
                    account_token_position: None,
                    allow_trace: false,
                    pos: Default::default(),
                });
            } else {
                cfg.exports.push(canopy_conf::Export::Stream {
                    subject: e.subject.clone(),
                    accounts: importers,
                    pos: Default::default(),
                });
            }
        }
        for i in &a.claims.nats.imports {
            let Some(exporter) = trust.account(&i.account) else {
                tracing::warn!(
                    "account {}: import of {} from unknown account {} ignored",
                    a.key,
                    i.subject,
                    i.account
                );
                continue;
            };
            // nats-server skips (does not refuse to start on) an import no export allows.
            let service = i.kind.eq_ignore_ascii_case("service");
            let allowed = exporter.claims.nats.exports.iter().any(|e| {
                e.kind.eq_ignore_ascii_case("service") == service
                    && canopy_subject::subject_is_subset_of(&i.subject, &e.subject)
                    && (!e.token_req || activation_ok(&i.token, &exporter, &a.key))
            });
            if !allowed {
                tracing::warn!(
                    "account {}: import of {} from account {} ignored: no export allows it (or its activation token is missing or invalid)",
                    a.key,
                    i.subject,
                    i.account
                );
                continue;
            }
            let imp = if i.kind.eq_ignore_ascii_case("service") {
                // `subject` is in the exporter; `local_subject` (or legacy `to`) is ours.
                let local = [&i.local_subject, &i.to]
                    .into_iter()
                    .find(|s| !s.is_empty())
                    .cloned();
                canopy_conf::Import::Service {
                    account: i.account.clone(),
                    subject: i.subject.clone(),
                    to: local,
                    share: i.share,
                    pos: Default::default(),
                }
            } else {
                let (prefix, to) = if !i.local_subject.is_empty() {
                    (None, Some(i.local_subject.clone()))
                } else if !i.to.is_empty() {
                    (Some(i.to.clone()), None)
                } else {
                    (None, None)
                };
                canopy_conf::Import::Stream {
                    account: i.account.clone(),
                    subject: i.subject.clone(),
                    prefix,
                    to,
                    pos: Default::default(),
                }
            };
            cfg.imports.push(imp);
        }
        accounts.insert(a.key.clone(), cfg);
    }
    o.accounts.extend(accounts.into_values());
    Ok(())
}

/// An activation token: issued by the exporting account (or one of its signing keys) to
/// the importing account, not expired.
fn activation_ok(token: &str, exporter: &AccountJwt, importer: &str) -> bool {
    if token.is_empty() {
        return false;
    }
    let Ok(c) = decode::<Value>(token) else {
        return false;
    };
    let issuer_ok = c.iss == exporter.key || exporter.signing_keys.contains_key(&c.iss);
    issuer_ok && c.sub == importer && check_times(&c, "activation", now_unix()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<T: Serialize>(claims: &T, signer: &nkeys::KeyPair) -> String {
        let e = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let h = e(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
        let p = e(&serde_json::to_vec(claims).unwrap());
        let sig = signer.sign(format!("{h}.{p}").as_bytes()).unwrap();
        format!("{h}.{p}.{}", e(&sig))
    }

    #[test]
    fn operator_account_user_chain() {
        let op = nkeys::KeyPair::new_operator();
        let op_sk = nkeys::KeyPair::new_operator();
        let acc = nkeys::KeyPair::new_account();
        let acc_sk = nkeys::KeyPair::new_account();
        let user = nkeys::KeyPair::new_user();
        let op_jwt = encode(
            &serde_json::json!({"iss": op.public_key(), "sub": op.public_key(), "iat": 1,
                "nats": {"type": "operator", "signing_keys": [op_sk.public_key()]}}),
            &op,
        );
        let o = verify_operator(&op_jwt).unwrap();
        let trusted: HashSet<String> = [o.key.clone(), op_sk.public_key()].into();
        let acc_jwt = encode(
            &serde_json::json!({"iss": op_sk.public_key(), "sub": acc.public_key(), "iat": 2,
                "nats": {"type": "account", "signing_keys": [acc_sk.public_key()],
                         "limits": {"conn": 5}, "revocations": {"UX": 10}}}),
            &op_sk,
        );
        let a = verify_account(&acc_jwt, &trusted).unwrap();
        assert_eq!(a.claims.nats.limits.conn, 5);
        assert_eq!(a.claims.nats.limits.leaf, -1);
        assert!(a.signing_keys.contains_key(&acc_sk.public_key()));
        // Not trusted when the operator set is different.
        let e = verify_account(&acc_jwt, &[op.public_key()].into()).unwrap_err();
        assert!(matches!(e, JwtError::Untrusted { .. }), "{e}");
        // Tampered claims fail the signature.
        let mut parts: Vec<String> = acc_jwt.split('.').map(String::from).collect();
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(
                &serde_json::json!({"iss": op_sk.public_key(), "sub": acc.public_key()}),
            )
            .unwrap(),
        );
        let e = verify_account(&parts.join("."), &trusted).unwrap_err();
        assert!(matches!(e, JwtError::BadSignature(_)), "{e}");

        let t = Trust {
            operators: vec![o],
            trusted,
            accounts: RwLock::new(HashMap::new()),
            store: Store::Memory,
            live: Mutex::new(Vec::new()),
        };
        t.install(&acc_jwt).unwrap();
        let user_jwt = encode(
            &serde_json::json!({"iss": acc_sk.public_key(), "sub": user.public_key(), "iat": 3,
                "nats": {"type": "user", "issuer_account": acc.public_key(), "subs": 2,
                         "pub": {"allow": ["a.>"]}}}),
            &acc_sk,
        );
        let nonce = "abcdef";
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(user.sign(nonce.as_bytes()).unwrap());
        let u = t
            .authenticate(&user_jwt, &sig, nonce, ConnType::Standard)
            .unwrap();
        assert_eq!(u.account, acc.public_key());
        assert_eq!(u.max_subs, Some(2));
        assert_eq!(u.max_payload, None);
        let p = t.permissions(&user_jwt).unwrap();
        assert!(p.publish.permits_publish("a.b") && !p.publish.permits_publish("b"));
        let e = t
            .authenticate(&user_jwt, &sig, "other", ConnType::Standard)
            .unwrap_err();
        assert!(matches!(e, JwtError::NonceSignature(_)), "{e}");
        // An expired user.
        let old = encode(
            &serde_json::json!({"iss": acc.public_key(), "sub": user.public_key(), "iat": 3, "exp": 100,
                "nats": {"type": "user"}}),
            &acc,
        );
        let e = t
            .authenticate(&old, &sig, nonce, ConnType::Standard)
            .unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        assert!(matches!(
            decode::<Value>("a.b"),
            Err(JwtError::Malformed(_))
        ));
    }
}
