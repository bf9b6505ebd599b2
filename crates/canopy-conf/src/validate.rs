//! Cross-field checks run before start (`Options::validate`) and warning collection
//! (`Options::warnings`). Messages follow nats-server's wording where users search for it.

use std::collections::{BTreeMap, HashSet};

use crate::error::{ConfError, Warning};
use crate::options::*;
use crate::value::Pos;

fn key_pos(o: &Options, key: &str) -> Pos {
    o.key_pos.get(key).cloned().unwrap_or_default()
}

/// True for any `$2a$`/`$2b$`/`$2x$`/`$2y$`-prefixed password (a bcrypt hash, well-formed or not).
pub fn looks_like_bcrypt(p: &str) -> bool {
    ["$2a$", "$2b$", "$2x$", "$2y$"]
        .iter()
        .any(|pre| p.starts_with(pre))
}

/// A complete bcrypt hash: `$2?$` + two-digit cost + `$` + 53 characters of `./A-Za-z0-9`.
pub fn is_wellformed_bcrypt(p: &str) -> bool {
    let b = p.as_bytes();
    looks_like_bcrypt(p)
        && b.len() == 60
        && b[4].is_ascii_digit()
        && b[5].is_ascii_digit()
        && b[6] == b'$'
        && b[7..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'/')
}

/// Every (user, password, position) in the configuration.
fn all_passwords(o: &Options) -> Vec<(String, String, Pos)> {
    let mut out = Vec::new();
    let a = &o.authorization;
    if let (Some(u), Some(p)) = (&a.user, &a.password) {
        out.push((u.clone(), p.clone(), a.pos.clone()));
    }
    let users = a
        .users
        .iter()
        .chain(o.accounts.iter().flat_map(|a| a.users.iter()));
    for u in users {
        if let Some(p) = &u.password {
            out.push((u.user.clone(), p.clone(), u.pos.clone()));
        }
    }
    if let Some(ca) = o.cluster.as_ref().and_then(|c| c.authorization.as_ref()) {
        if let (Some(u), Some(p)) = (&ca.user, &ca.password) {
            out.push((u.clone(), p.clone(), ca.pos.clone()));
        }
    }
    if let Some(la) = o.leafnodes.as_ref().and_then(|l| l.authorization.as_ref()) {
        if let (Some(u), Some(p)) = (&la.user, &la.password) {
            out.push((u.clone(), p.clone(), la.pos.clone()));
        }
        for u in &la.users {
            if let Some(p) = &u.password {
                out.push((u.user.clone(), p.clone(), u.pos.clone()));
            }
        }
    }
    out
}

pub(crate) fn warnings(o: &Options, out: &mut Vec<Warning>) {
    for (user, pass, pos) in all_passwords(o) {
        if looks_like_bcrypt(&pass) && !is_wellformed_bcrypt(&pass) {
            out.push(Warning {
                pos,
                message: format!(
                    "password for user \"{user}\" looks like a bcrypt hash but is not a valid \
                     one; no password will match it"
                ),
            });
        }
    }
    // nats-server #4148: a leaf whose JetStream has no domain shares the hub's default
    // one; with JetStream on the hub too, neither side's API reaches the other (it is
    // denied on the link) and streams end up on the wrong side.
    if let (Some(j), Some(l)) = (o.jetstream.as_ref(), o.leafnodes.as_ref()) {
        if j.enabled && j.domain.as_deref().is_none_or(str::is_empty) && !l.remotes.is_empty() {
            out.push(Warning {
                pos: j.pos.clone(),
                message:
                    "JetStream on a server with leafnode remotes but no jetstream { domain }: \
                          if the hub runs JetStream too, give each side its own domain so \
                          clients can address either one ($JS.<domain>.API)"
                        .into(),
            });
        }
    }
    if o.max_payload > MAX_PAYLOAD_WARN_SIZE && o.max_payload <= MAX_PAYLOAD_MAX_SIZE {
        out.push(Warning {
            pos: key_pos(o, "max_payload"),
            message: format!(
                "max_payload ({}) is over the recommended {} bytes",
                o.max_payload, MAX_PAYLOAD_WARN_SIZE
            ),
        });
    }
}

/// An account public key as nkeys writes it: 56 base32 characters starting with `A`.
fn looks_like_account_key(k: &str) -> bool {
    k.len() == 56
        && k.starts_with('A')
        && k.bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

/// Operator (JWT) mode: an operator needs a resolver and vice versa; users come from
/// JWTs, so configured users, tokens and accounts are refused.
fn validate_operator_mode(o: &Options, err: &mut dyn FnMut(&Pos, String)) {
    let operator_mode = !o.operators.is_empty();
    let op_pos = o
        .key_pos
        .get("operator")
        .or(o.key_pos.get("operators"))
        .or(o.key_pos.get("trusted_operators"))
        .cloned()
        .unwrap_or_default();
    match (&o.resolver, operator_mode) {
        (Some(r), false) => err(
            r.pos(),
            "resolver requires operator mode (an \"operator\" JWT)".into(),
        ),
        (None, true) => err(
            &op_pos,
            "operator mode requires a resolver (resolver: MEMORY with resolver_preload, or resolver { type: full, dir: … })".into(),
        ),
        _ => {}
    }
    if !o.resolver_preload.is_empty() && !operator_mode {
        err(
            &key_pos(o, "resolver_preload"),
            "resolver_preload requires operator mode (an \"operator\" JWT)".into(),
        );
    }
    for k in o.resolver_preload.keys() {
        if !looks_like_account_key(k) {
            err(
                &key_pos(o, "resolver_preload"),
                format!("resolver_preload: \"{k}\" is not an account public key"),
            );
        }
    }
    if !operator_mode {
        return;
    }
    let a = &o.authorization;
    if a.user.is_some() || a.token.is_some() || !a.users.is_empty() {
        err(
            &a.pos,
            "operator mode does not allow users or tokens in \"authorization\"; users come from JWTs".into(),
        );
    }
    if let Some(acc) = o.accounts.first() {
        err(
            &acc.pos,
            "operator mode does not allow \"accounts\" in the configuration; accounts come from JWTs".into(),
        );
    }
    if let Some(sys) = &o.system_account {
        if !looks_like_account_key(sys) {
            err(
                &key_pos(o, "system_account"),
                format!(
                    "in operator mode system_account must be an account public key, got \"{sys}\""
                ),
            );
        }
    }
}

pub(crate) fn validate(o: &Options, errs: &mut Vec<ConfError>) {
    let mut err = |pos: &Pos, msg: String| errs.push(ConfError::new(pos.clone(), msg));

    if o.max_payload > MAX_PAYLOAD_MAX_SIZE {
        err(
            &key_pos(o, "max_payload"),
            format!(
                "max_payload ({}) can not be higher than {}",
                o.max_payload, MAX_PAYLOAD_MAX_SIZE
            ),
        );
    }
    if o.max_payload > o.max_pending {
        err(
            &key_pos(o, "max_payload"),
            format!(
                "max_payload ({}) can not be higher than max_pending ({})",
                o.max_payload, o.max_pending
            ),
        );
    }

    let a = &o.authorization;
    if !a.users.is_empty() && (a.user.is_some() || a.password.is_some()) {
        err(
            &a.pos,
            "can not have a single user/pass and a users array".into(),
        );
    }
    if a.token.is_some() && !a.users.is_empty() {
        err(&a.pos, "can not have a token and a users array".into());
    }
    if a.token.is_some() && a.user.is_some() {
        err(&a.pos, "can not have a token and a user/password".into());
    }
    if a.password.is_some() && a.user.is_none() {
        err(&a.pos, "a password requires a user".into());
    }

    // Accounts: unique names; implicit $G and (unless disabled) $SYS.
    let mut names: HashSet<&str> = HashSet::new();
    for acc in &o.accounts {
        if !names.insert(acc.name.as_str()) {
            err(&acc.pos, format!("duplicate account name \"{}\"", acc.name));
        }
        if acc.name == DEFAULT_GLOBAL_ACCOUNT {
            err(
                &acc.pos,
                format!("account name \"{}\" is reserved", acc.name),
            );
        }
    }
    let exists = |n: &str| {
        n == DEFAULT_GLOBAL_ACCOUNT
            || (n == DEFAULT_SYSTEM_ACCOUNT && !o.no_system_account)
            || names.contains(n)
    };

    // Users: unique names and nkeys across authorization and accounts.
    let mut seen_users: HashSet<&str> = HashSet::new();
    let mut seen_nkeys: HashSet<&str> = HashSet::new();
    for u in a
        .users
        .iter()
        .chain(o.accounts.iter().flat_map(|a| a.users.iter()))
    {
        if !u.user.is_empty() && !seen_users.insert(u.user.as_str()) {
            err(&u.pos, format!("duplicate user \"{}\" detected", u.user));
        }
        if let Some(nk) = &u.nkey {
            if !seen_nkeys.insert(nk.as_str()) {
                err(&u.pos, format!("duplicate nkey \"{nk}\" detected"));
            }
            if !nk.starts_with('U') {
                err(&u.pos, format!("not a valid public user nkey: \"{nk}\""));
            }
        }
    }
    if let Some(user) = &o.no_auth_user {
        let known = a.user.as_deref() == Some(user.as_str())
            || seen_users.contains(user.as_str())
            || seen_nkeys.contains(user.as_str());
        if !known {
            err(
                &key_pos(o, "no_auth_user"),
                format!(
                    "no_auth_user: \"{user}\" not present as user or nkey in authorization block \
                     or account configuration"
                ),
            );
        }
    }
    let operator_mode = !o.operators.is_empty();
    validate_operator_mode(o, &mut err);
    // Routes authenticate with one user/password only (nats-server's rule): a token or a
    // users list here would otherwise be silently ignored.
    if let Some(ca) = o.cluster.as_ref().and_then(|c| c.authorization.as_ref()) {
        if ca.token.is_some() {
            err(
                &ca.pos,
                "Cluster authorization does not support tokens".into(),
            );
        }
        if !ca.users.is_empty() {
            err(
                &ca.pos,
                "Cluster authorization does not allow multiple users".into(),
            );
        }
    }
    if let Some(sys) = &o.system_account {
        if !operator_mode && !exists(sys) {
            err(
                &key_pos(o, "system_account"),
                format!("system account \"{sys}\" not defined in accounts"),
            );
        }
    }

    for acc in &o.accounts {
        for imp in &acc.imports {
            if !exists(imp.account()) {
                err(
                    imp.pos(),
                    format!(
                        "cannot find account \"{}\" for import in account \"{}\"",
                        imp.account(),
                        acc.name
                    ),
                );
            }
        }
        for exp in &acc.exports {
            let accounts = match exp {
                Export::Stream { accounts, .. } | Export::Service { accounts, .. } => accounts,
            };
            for n in accounts {
                if !exists(n) {
                    err(
                        exp.pos(),
                        format!(
                            "cannot find account \"{n}\" named in an export of account \"{}\"",
                            acc.name
                        ),
                    );
                }
            }
        }
        check_mappings(&acc.mappings, &mut err);
    }
    check_mappings(&o.mappings, &mut err);

    if let Some(l) = &o.leafnodes {
        if let Some(la) = &l.authorization {
            if la.user.is_some() && !la.users.is_empty() {
                err(
                    &la.pos,
                    "can not have a single user/pass and a users array".into(),
                );
            }
            let accs = la
                .account
                .iter()
                .chain(la.users.iter().filter_map(|u| u.account.as_ref()));
            for acc in accs {
                if !exists(acc) {
                    err(
                        &la.pos,
                        format!(
                            "cannot find local account \"{acc}\" specified in leafnode authorization"
                        ),
                    );
                }
            }
        }
        let mut seen: HashSet<(Vec<String>, String)> = HashSet::new();
        for r in &l.remotes {
            if let Some(acc) = &r.account {
                if !exists(acc) {
                    err(
                        &r.pos,
                        format!("cannot find local account \"{acc}\" specified in leafnode remote"),
                    );
                }
            }
            let ws = r
                .urls
                .iter()
                .filter(|u| {
                    let u = u.to_ascii_lowercase();
                    u.starts_with("ws://") || u.starts_with("wss://")
                })
                .count();
            if ws != 0 && ws != r.urls.len() {
                err(
                    &r.pos,
                    "leafnode remote mixes websocket and non-websocket urls".into(),
                );
            }
            if r.credentials.is_some() && r.nkey.is_some() {
                err(
                    &r.pos,
                    "leafnode remote can not have both credentials and nkey".into(),
                );
            }
            let mut urls = r.urls.clone();
            urls.sort();
            let key = (
                urls,
                r.account
                    .clone()
                    .unwrap_or_else(|| DEFAULT_GLOBAL_ACCOUNT.into()),
            );
            if !seen.insert(key) {
                err(
                    &r.pos,
                    "duplicate leafnode remote (same urls and account)".into(),
                );
            }
            check_account_mappings(&r.account_mappings, &mut err);
            if let Some(t) = &r.tls {
                check_tls(t, &mut err);
            }
        }
        if let Some(t) = &l.tls {
            check_tls(t, &mut err);
        }
    }
    if let Some(t) = &o.tls {
        check_tls(t, &mut err);
    }
    if let Some(c) = &o.cluster {
        if let Some(t) = &c.tls {
            check_tls(t, &mut err);
        }
        // nats-server's rules for per-account routes.
        if !c.accounts.is_empty() && c.pool_size.is_some_and(|p| p < 0) {
            err(
                &c.pos,
                "pool_size cannot be negative if pinned accounts are specified".into(),
            );
        }
        let mut pinned = HashSet::new();
        for a in &c.accounts {
            if !pinned.insert(a.as_str()) {
                err(
                    &c.pos,
                    format!(
                        "found duplicate account name {a:?} in pinned accounts list {:?}",
                        c.accounts
                    ),
                );
            }
        }
    }
    if let Some(w) = &o.websocket {
        if let Some(t) = &w.tls {
            check_tls(t, &mut err);
        }
        if w.tls.is_none() && !w.no_tls && w.port != 0 {
            err(
                &w.pos,
                "websocket requires TLS configuration, or \"no_tls: true\"".into(),
            );
        }
        validate_websocket_auth(o, w, &mut err);
    }
}

/// nats-server's `validateWebsocketOptions` rules for the websocket auth override, cookies
/// and headers.
fn validate_websocket_auth(o: &Options, w: &WebsocketOpts, err: &mut impl FnMut(&Pos, String)) {
    let at = |k: &str| w.key_pos.get(k).cloned().unwrap_or_else(|| w.pos.clone());
    let users = o
        .authorization
        .users
        .iter()
        .chain(o.accounts.iter().flat_map(|a| a.users.iter()));
    if let Some(nau) = &w.no_auth_user {
        let known = users
            .clone()
            .any(|u| u.user == *nau || u.nkey.as_deref() == Some(nau.as_str()));
        if !known {
            err(
                &at("no_auth_user"),
                format!(
                    "no_auth_user: \"{nau}\" not present as user or nkey in authorization block \
                     or account configuration"
                ),
            );
        }
    }
    if let Some(a) = &w.authorization {
        if users.clone().next().is_some() {
            if a.user.is_some() {
                err(
                    &a.pos,
                    "websocket authentication username not compatible with presence of users/nkeys"
                        .into(),
                );
            }
            if a.token.is_some() {
                err(
                    &a.pos,
                    "websocket authentication token not compatible with presence of users/nkeys"
                        .into(),
                );
            }
        }
        if a.user.is_some() && a.token.is_some() {
            err(
                &a.pos,
                "websocket authorization: a user and a token are exclusive".into(),
            );
        }
    }
    if let Some(c) = &w.jwt_cookie {
        if o.operators.is_empty() {
            err(
                &at("jwt_cookie"),
                format!(
                    "trusted operators or trusted keys configuration is required for JWT \
                     authentication via cookie \"{c}\""
                ),
            );
        }
    }
    for (k, v) in &w.headers {
        let l = k.to_ascii_lowercase();
        if matches!(
            l.as_str(),
            "host" | "content-length" | "connection" | "upgrade" | "nats-no-masking"
        ) {
            err(
                &at("headers"),
                format!("websocket: invalid header {k:?} not allowed"),
            );
        } else if l.starts_with("sec-websocket-") {
            err(
                &at("headers"),
                format!("websocket: invalid header {k:?}, \"Sec-WebSocket-\" prefix not allowed"),
            );
        } else if k.is_empty()
            || !k.bytes().all(|b| b.is_ascii_graphic() && b != b':')
            || v.bytes().any(|b| b == b'\r' || b == b'\n')
        {
            err(&at("headers"), format!("websocket: invalid header {k:?}"));
        }
    }
}

fn check_tls(t: &TlsConfig, err: &mut impl FnMut(&Pos, String)) {
    match (&t.cert_file, &t.key_file) {
        (Some(_), None) => err(&t.pos, "missing 'key_file' in TLS configuration".into()),
        (None, Some(_)) => err(&t.pos, "missing 'cert_file' in TLS configuration".into()),
        _ => {}
    }
}

fn check_mappings(ms: &[Mapping], err: &mut impl FnMut(&Pos, String)) {
    for m in ms {
        let mut totals: BTreeMap<Option<&str>, u32> = BTreeMap::new();
        for d in &m.destinations {
            *totals.entry(d.cluster.as_deref()).or_default() += u32::from(d.weight);
        }
        if totals.values().any(|t| *t > 100) {
            err(
                &m.pos,
                format!("total weight of mapping \"{}\" exceeds 100%", m.source),
            );
        }
        if m.destinations.is_empty() {
            err(
                &m.pos,
                format!("mapping \"{}\" has no destination", m.source),
            );
        }
    }
}

/// A remote's `account_mappings` must be a one-to-one prefix map: no key may lie under
/// another key (`events` and `events.eu`), and no `to` under another `to`, or a subject
/// would have two translations (or two subjects one).
fn check_account_mappings(ms: &[Mapping], err: &mut impl FnMut(&Pos, String)) {
    fn prefix(s: &str) -> &str {
        s.strip_suffix(".>").unwrap_or(s)
    }
    fn under(a: &str, b: &str) -> bool {
        a == b || a.strip_prefix(b).is_some_and(|r| r.starts_with('.'))
    }
    let pairs: Vec<(&str, &str, &Pos)> = ms
        .iter()
        .filter_map(|m| {
            let to = m.destinations.first()?;
            Some((prefix(&m.source), prefix(&to.subject), &m.pos))
        })
        .collect();
    for (i, (k, t, pos)) in pairs.iter().enumerate() {
        for (ek, et, epos) in &pairs[..i] {
            if under(k, ek) || under(ek, k) {
                err(
                    pos,
                    format!(
                        "account mapping \"{k}\" overlaps \"{ek}\" (at {epos}): keys may not lie under one another"
                    ),
                );
            }
            if under(t, et) || under(et, t) {
                err(
                    pos,
                    format!(
                        "account mapping \"{k}\" -> \"{t}\" conflicts with \"{ek}\" -> \"{et}\" (at {epos}): destinations may not lie under one another"
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcrypt_shapes() {
        let good = "$2a$11$PWIFAL8RsWyGI3jVZtO9Nu8.6jOxzxfZo7c/W0eLk017hjgUKWrhy";
        assert!(is_wellformed_bcrypt(good));
        assert!(looks_like_bcrypt("$2a$11$secrethash"));
        assert!(!is_wellformed_bcrypt("$2a$11$secrethash"));
        assert!(!looks_like_bcrypt("plain"));
    }
}
