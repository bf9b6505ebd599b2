//! Value tree → typed [`Options`] (`load_file`, `from_str`): key aliases, type checks and
//! defaults for every block, collecting all errors (nats-server style:
//! `file:line:col: unknown field "x"`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::duration::parse_duration;
use crate::error::{ConfError, ConfErrors, Warning};
use crate::lex::classify_bare;
use crate::options::*;
use crate::parse::{parse_file, parse_str};
use crate::value::{Entry, Kind, Map, Pos, Value};

/// Reads, parses and types a configuration file (does not run [`Options::validate`]).
pub fn load_file(path: &Path) -> Result<Options, ConfErrors> {
    let map = parse_file(path)?;
    let mut opts = Options::from_map(&map)?;
    opts.config_file = Some(path.to_path_buf());
    Ok(opts)
}

/// Parses and types configuration text; `name` is used in positions and for includes.
pub fn from_str(src: &str, name: &str) -> Result<Options, ConfErrors> {
    let map = parse_str(src, name)?;
    Options::from_map(&map)
}

impl Options {
    /// Types a parsed configuration. All errors are collected.
    pub fn from_map(map: &Map) -> Result<Options, ConfErrors> {
        let mut cx = Ctx::default();
        let mut o = Options::default();
        top_level(&mut cx, &mut o, map);
        if cx.errors.is_empty() {
            o.build_warnings = cx.warnings;
            o.unmodelled.append(&mut cx.unmodelled);
            Ok(o)
        } else {
            Err(ConfErrors(cx.errors))
        }
    }
}

#[derive(Default)]
struct Ctx {
    errors: Vec<ConfError>,
    warnings: Vec<Warning>,
    unmodelled: Vec<RawBlock>,
}

/// The entries of a map that are options (not `$variable` definitions), with lowercased keys.
fn live(map: &Map) -> impl Iterator<Item = (String, &Entry)> {
    map.entries
        .iter()
        .filter(|e| !e.used_as_variable)
        .map(|e| (e.key.to_ascii_lowercase(), e))
}

impl Ctx {
    fn err(&mut self, pos: &Pos, msg: impl Into<String>) {
        self.errors.push(ConfError::new(pos.clone(), msg));
    }

    fn warn(&mut self, pos: &Pos, msg: impl Into<String>) {
        self.warnings.push(Warning {
            pos: pos.clone(),
            message: msg.into(),
        });
    }

    fn unknown(&mut self, e: &Entry) {
        self.err(&e.key_pos, format!("unknown field \"{}\"", e.key));
    }

    fn keep_raw(&mut self, path: &str, e: &Entry) {
        self.unmodelled.push(RawBlock {
            key: path.to_string(),
            value: e.value.clone(),
            pos: e.key_pos.clone(),
        });
    }

    fn type_err(&mut self, key: &str, v: &Value, expected: &str) {
        self.err(
            &v.pos,
            format!("expected {expected} for \"{key}\", got {}", v.type_name()),
        );
    }

    fn string(&mut self, key: &str, v: &Value) -> Option<String> {
        match &v.kind {
            Kind::String(s) => Some(s.clone()),
            Kind::Integer(i) => Some(i.to_string()),
            _ => {
                self.type_err(key, v, "a string");
                None
            }
        }
    }

    fn path(&mut self, key: &str, v: &Value) -> Option<PathBuf> {
        self.string(key, v).map(PathBuf::from)
    }

    fn bool(&mut self, key: &str, v: &Value) -> Option<bool> {
        match &v.kind {
            Kind::Bool(b) => Some(*b),
            Kind::String(s) => match classify_bare(s) {
                Ok(Some(Kind::Bool(b))) => Some(b),
                _ => {
                    self.type_err(key, v, "a boolean");
                    None
                }
            },
            _ => {
                self.type_err(key, v, "a boolean");
                None
            }
        }
    }

    /// An integer; a quoted size such as `"8MB"` is accepted too.
    fn int(&mut self, key: &str, v: &Value) -> Option<i64> {
        match &v.kind {
            Kind::Integer(i) => Some(*i),
            Kind::String(s) => match classify_bare(s) {
                Ok(Some(Kind::Integer(i))) => Some(i),
                _ => {
                    self.type_err(key, v, "an integer");
                    None
                }
            },
            _ => {
                self.type_err(key, v, "an integer");
                None
            }
        }
    }

    fn u64(&mut self, key: &str, v: &Value) -> Option<u64> {
        let i = self.int(key, v)?;
        if i < 0 {
            self.err(&v.pos, format!("\"{key}\" must not be negative, got {i}"));
            return None;
        }
        Some(i as u64)
    }

    fn u32(&mut self, key: &str, v: &Value) -> Option<u32> {
        let i = self.u64(key, v)?;
        match u32::try_from(i) {
            Ok(n) => Some(n),
            Err(_) => {
                self.err(&v.pos, format!("\"{key}\" is too large: {i}"));
                None
            }
        }
    }

    fn port(&mut self, key: &str, v: &Value) -> Option<i32> {
        let i = self.int(key, v)?;
        if !(-1..=65535).contains(&i) {
            self.err(
                &v.pos,
                format!("\"{key}\" must be a port between -1 and 65535, got {i}"),
            );
            return None;
        }
        Some(i as i32)
    }

    /// A Go duration string; a bare number means seconds (with a deprecation warning unless
    /// `int_ok`).
    fn duration_opt(&mut self, key: &str, v: &Value, int_ok: bool) -> Option<Duration> {
        match &v.kind {
            Kind::String(s) => match parse_duration(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.err(&v.pos, format!("invalid duration for \"{key}\": {e}"));
                    None
                }
            },
            Kind::Integer(i) => {
                // `2m` unquoted lexes as the size 2,000,000; read it as a duration instead.
                if let Some(d) = v.raw.as_deref().and_then(|r| parse_duration(r).ok()) {
                    return Some(d);
                }
                if *i < 0 {
                    self.err(&v.pos, format!("\"{key}\" must not be negative, got {i}"));
                    return None;
                }
                if !int_ok {
                    self.warn(
                        &v.pos,
                        format!(
                            "\"{key}\": a bare number of seconds is deprecated, write \"{i}s\""
                        ),
                    );
                }
                Some(Duration::from_secs(*i as u64))
            }
            Kind::Float(f) if *f >= 0.0 && f.is_finite() && *f < 1e12 => {
                if !int_ok {
                    self.warn(
                        &v.pos,
                        format!("\"{key}\": a bare number of seconds is deprecated"),
                    );
                }
                Some(Duration::from_secs_f64(*f))
            }
            _ => {
                self.type_err(key, v, "a duration");
                None
            }
        }
    }

    fn duration(&mut self, key: &str, v: &Value) -> Option<Duration> {
        self.duration_opt(key, v, false)
    }

    /// Timeouts that nats-server documents as (fractional) seconds.
    fn seconds(&mut self, key: &str, v: &Value) -> Option<Duration> {
        self.duration_opt(key, v, true)
    }

    fn string_list(&mut self, key: &str, v: &Value) -> Vec<String> {
        match &v.kind {
            Kind::String(s) => vec![s.clone()],
            Kind::Array(items) => items.iter().filter_map(|i| self.string(key, i)).collect(),
            _ => {
                self.type_err(key, v, "a string or an array of strings");
                Vec::new()
            }
        }
    }

    fn map<'a>(&mut self, key: &str, v: &'a Value) -> Option<&'a Map> {
        match &v.kind {
            Kind::Map(m) => Some(m),
            _ => {
                self.type_err(key, v, "a map");
                None
            }
        }
    }

    fn array<'a>(&mut self, key: &str, v: &'a Value) -> &'a [Value] {
        match &v.kind {
            Kind::Array(a) => a,
            // A single map where a list is expected is a list of one.
            Kind::Map(_) => std::slice::from_ref(v),
            _ => {
                self.type_err(key, v, "an array");
                &[]
            }
        }
    }

    fn subjects(&mut self, key: &str, v: &Value, queue_ok: bool) -> Vec<String> {
        let list = self.string_list(key, v);
        for s in &list {
            if !valid_subject(s, queue_ok) {
                self.err(&v.pos, format!("invalid subject \"{s}\" in \"{key}\""));
            }
        }
        list
    }

    fn subject(&mut self, key: &str, v: &Value) -> Option<String> {
        let s = self.string(key, v)?;
        if !valid_subject(&s, false) {
            self.err(&v.pos, format!("invalid subject \"{s}\" for \"{key}\""));
        }
        Some(s)
    }
}

/// A well-formed subject (wildcards allowed); with `queue_ok`, `subject queue` is accepted.
pub(crate) fn valid_subject(s: &str, queue_ok: bool) -> bool {
    let (subj, queue) = match s.split_once(' ') {
        Some((a, b)) if queue_ok => (a, Some(b)),
        Some(_) => return false,
        None => (s, None),
    };
    if let Some(q) = queue {
        if q.is_empty() || q.contains(char::is_whitespace) {
            return false;
        }
    }
    if subj.is_empty() {
        return false;
    }
    let toks: Vec<&str> = subj.split('.').collect();
    toks.iter().enumerate().all(|(i, t)| {
        !t.is_empty()
            && !t.contains(char::is_whitespace)
            && (*t != ">" || i == toks.len() - 1)
            && (!t.contains('>') || *t == ">")
            && (!t.contains('*') || *t == "*")
    })
}

/// Splits `host:port` (optionally `scheme://host:port`, `[v6]:port`, or a bare port number).
fn host_port(cx: &mut Ctx, key: &str, v: &Value) -> (Option<String>, Option<i32>) {
    if let Kind::Integer(_) = v.kind {
        return (None, cx.port(key, v));
    }
    let Some(s) = cx.string(key, v) else {
        return (None, None);
    };
    let rest = s.split_once("://").map_or(s.as_str(), |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let (host, port) = if let Some(r) = rest.strip_prefix('[') {
        match r.split_once(']') {
            Some((h, p)) => (h.to_string(), p.strip_prefix(':')),
            None => {
                cx.err(&v.pos, format!("invalid address \"{s}\" for \"{key}\""));
                return (None, None);
            }
        }
    } else if rest.matches(':').count() > 1 {
        (rest.to_string(), None) // bare IPv6 address
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<i32>() {
            Ok(n) if (-1..=65535).contains(&n) => Some(n),
            _ => {
                cx.err(&v.pos, format!("invalid port in \"{s}\" for \"{key}\""));
                None
            }
        },
    };
    let host = if host.is_empty() { None } else { Some(host) };
    (host, port)
}

fn top_level(cx: &mut Ctx, o: &mut Options, map: &Map) {
    for (k, e) in live(map) {
        let v = &e.value;
        o.key_pos.insert(k.clone(), e.key_pos.clone());
        match k.as_str() {
            "listen" => {
                let (h, p) = host_port(cx, &k, v);
                if let Some(h) = h {
                    o.host = h;
                }
                if let Some(p) = p {
                    o.port = p;
                }
            }
            "host" | "net" => set(&mut o.host, cx.string(&k, v)),
            "port" => set(&mut o.port, cx.port(&k, v)),
            "server_name" => {
                if let Some(s) = cx.string(&k, v) {
                    if s.contains(char::is_whitespace) {
                        cx.err(
                            &v.pos,
                            format!("server name \"{s}\" can not contain spaces"),
                        );
                    }
                    o.server_name = Some(s);
                }
            }
            "client_advertise" => o.client_advertise = cx.string(&k, v),
            "http" | "monitor" => {
                let (h, p) = host_port(cx, &k, v);
                o.http_host = h.or(o.http_host.take());
                o.http_port = p.or(o.http_port);
            }
            "http_port" | "monitor_port" => o.http_port = cx.port(&k, v),
            "https" => {
                let (h, p) = host_port(cx, &k, v);
                o.http_host = h.or(o.http_host.take());
                o.https_port = p.or(o.https_port);
            }
            "https_port" => o.https_port = cx.port(&k, v),
            "http_base_path" => o.http_base_path = cx.string(&k, v),
            "max_payload" => set(&mut o.max_payload, cx.u64(&k, v)),
            "max_control_line" => set(&mut o.max_control_line, cx.u64(&k, v)),
            "max_connections" | "max_conn" => set(&mut o.max_connections, cx.u64(&k, v)),
            "max_subscriptions" | "max_subs" => set(&mut o.max_subscriptions, cx.u64(&k, v)),
            "max_pending" => set(&mut o.max_pending, cx.u64(&k, v)),
            "write_deadline" => set(&mut o.write_deadline, cx.duration(&k, v)),
            // nats-server 2.11's switch: `false` asks for its fast-producer stall.
            "no_fast_producer_stall" => {
                if let Some(no) = cx.bool(&k, v) {
                    o.producer_backoff = (!no).then_some(PRODUCER_BACKOFF_DEFAULT);
                }
            }
            "producer_backoff" => {
                o.producer_backoff = match &v.kind {
                    // nats-server's longest stall of a fast producer.
                    Kind::Bool(true) => Some(PRODUCER_BACKOFF_DEFAULT),
                    Kind::Bool(false) => None,
                    _ => cx.duration(&k, v).filter(|d| !d.is_zero()),
                }
            }
            "ping_interval" => set(&mut o.ping_interval, cx.duration(&k, v)),
            "ping_max" => set(&mut o.ping_max, cx.u32(&k, v)),
            "lame_duck_duration" => set(&mut o.lame_duck_duration, cx.duration(&k, v)),
            "lame_duck_grace_period" => set(&mut o.lame_duck_grace_period, cx.duration(&k, v)),
            "debug" => set(&mut o.debug, cx.bool(&k, v)),
            "trace" => set(&mut o.trace, cx.bool(&k, v)),
            "trace_verbose" => {
                if let Some(b) = cx.bool(&k, v) {
                    o.trace_verbose = b;
                    o.trace |= b;
                }
            }
            "logtime" => set(&mut o.logtime, cx.bool(&k, v)),
            "logtime_utc" => set(&mut o.logtime_utc, cx.bool(&k, v)),
            "log_file" | "logfile" | "log" => o.log_file = cx.path(&k, v),
            "log_size_limit" | "logfile_size_limit" => set(&mut o.log_size_limit, cx.u64(&k, v)),
            "logfile_max_num" | "log_max_num" => set(&mut o.log_max_files, cx.u64(&k, v)),
            "max_traced_msg_len" => set(&mut o.max_traced_msg_len, cx.u64(&k, v)),
            "syslog" => set(&mut o.syslog, cx.bool(&k, v)),
            "remote_syslog" | "rsyslog" => o.remote_syslog = cx.string(&k, v),
            "pid_file" | "pidfile" => o.pid_file = cx.path(&k, v),
            "ports_file_dir" => o.ports_file_dir = cx.path(&k, v),
            "no_header_support" => set(&mut o.no_header_support, cx.bool(&k, v)),
            "disable_sublist_cache" | "no_sublist_cache" => {
                set(&mut o.disable_sublist_cache, cx.bool(&k, v))
            }
            "no_system_account" | "no_system" | "no_sys_acc" => {
                set(&mut o.no_system_account, cx.bool(&k, v))
            }
            "server_tags" => o.server_tags = cx.string_list(&k, v),
            "connect_error_reports" => set(&mut o.connect_error_reports, cx.u64(&k, v)),
            "reconnect_error_reports" => set(&mut o.reconnect_error_reports, cx.u64(&k, v)),
            "max_closed_clients" => o.max_closed_clients = cx.u64(&k, v),
            "authorization" => {
                if let Some(m) = cx.map(&k, v) {
                    o.authorization = authorization(cx, m, &e.key_pos);
                }
            }
            "no_auth_user" => o.no_auth_user = cx.string(&k, v),
            "accounts" => {
                if let Some(m) = cx.map(&k, v) {
                    o.accounts = accounts(cx, m);
                }
            }
            "system_account" | "system" => o.system_account = cx.string(&k, v),
            "mappings" | "maps" => {
                if let Some(m) = cx.map(&k, v) {
                    o.mappings = mappings(cx, m);
                }
            }
            "tls" => o.tls = tls(cx, &k, v),
            "allow_non_tls" => set(&mut o.allow_non_tls, cx.bool(&k, v)),
            "cluster" => {
                if let Some(m) = cx.map(&k, v) {
                    o.cluster = Some(cluster(cx, m, &e.key_pos));
                }
            }
            "leafnodes" | "leaf" => {
                if let Some(m) = cx.map(&k, v) {
                    o.leafnodes = Some(leafnodes(cx, m, &e.key_pos));
                }
            }
            "jetstream" => o.jetstream = jetstream(cx, &k, v, &e.key_pos),
            "websocket" | "ws" => {
                if let Some(m) = cx.map(&k, v) {
                    o.websocket = Some(websocket(cx, m, &e.key_pos));
                }
            }
            "mqtt" | "gateway" => {
                if cx.map(&k, v).is_some() {
                    let raw = RawBlock {
                        key: e.key.clone(),
                        value: v.clone(),
                        pos: e.key_pos.clone(),
                    };
                    if k == "mqtt" {
                        o.mqtt = Some(raw);
                    } else {
                        o.gateway = Some(raw);
                    }
                }
            }
            "prometheus" => o.prometheus = prometheus(cx, &k, v, &e.key_pos),
            "operator" | "operators" | "trusted_operators" => {
                o.operators.extend(cx.string_list(&k, v))
            }
            "resolver" => o.resolver = resolver(cx, &k, v, &e.key_pos),
            "resolver_preload" => {
                if let Some(m) = cx.map(&k, v) {
                    for (_, pe) in live(m) {
                        if let Some(jwt) = cx.string(&pe.key, &pe.value) {
                            o.resolver_preload.insert(pe.key.clone(), jwt);
                        }
                    }
                }
            }
            // nats-server keys accepted but not modelled yet.
            "resolver_tls"
            | "resolver_pinned_accounts"
            | "trusted"
            | "trusted_keys"
            | "ocsp"
            | "ocsp_cache"
            | "prof_port"
            | "default_js_domain"
            | "pedantic"
            | "strict"
            | "verbose"
            | "max_pending_size" => cx.keep_raw(&e.key, e),
            _ => cx.unknown(e),
        }
    }
}

/// `resolver: MEMORY`, `resolver: URL("http://…")` or `resolver { type: full|cache, dir, … }`.
fn resolver(cx: &mut Ctx, key: &str, v: &Value, pos: &Pos) -> Option<ResolverOpts> {
    match &v.kind {
        Kind::String(s) => {
            let t = s.trim();
            if t.eq_ignore_ascii_case("memory") || t.eq_ignore_ascii_case("mem") {
                Some(ResolverOpts::Memory { pos: pos.clone() })
            } else if t.len() > 5
                && t.as_bytes()[..4].eq_ignore_ascii_case(b"url(")
                && t.ends_with(')')
            {
                let url = t[4..t.len() - 1].trim().trim_matches('"').to_string();
                Some(ResolverOpts::Url {
                    url,
                    pos: pos.clone(),
                })
            } else {
                cx.err(
                    &v.pos,
                    format!("resolver \"{s}\" not recognized: expected MEMORY, URL(\"…\") or a {{type, dir}} map"),
                );
                None
            }
        }
        Kind::Map(m) => {
            let mut full = None;
            let mut d = DirResolverOpts {
                full: true,
                dir: PathBuf::new(),
                allow_delete: false,
                interval: DEFAULT_RESOLVER_INTERVAL,
                limit: DEFAULT_RESOLVER_LIMIT,
                ttl: Duration::ZERO,
                timeout: DEFAULT_RESOLVER_TIMEOUT,
                pos: pos.clone(),
            };
            let mut have_dir = false;
            for (k, e) in live(m) {
                let v = &e.value;
                match k.as_str() {
                    "type" => {
                        if let Some(t) = cx.string(&k, v) {
                            match t.to_ascii_lowercase().as_str() {
                                "full" => full = Some(true),
                                "cache" => full = Some(false),
                                _ => cx.err(
                                    &v.pos,
                                    format!("resolver type \"{t}\" not recognized: expected full or cache"),
                                ),
                            }
                        }
                    }
                    "dir" => {
                        if let Some(p) = cx.path(&k, v) {
                            d.dir = p;
                            have_dir = true;
                        }
                    }
                    "allow_delete" => set(&mut d.allow_delete, cx.bool(&k, v)),
                    "interval" => set(&mut d.interval, cx.duration(&k, v)),
                    "limit" => set(&mut d.limit, cx.u64(&k, v)),
                    "ttl" => set(&mut d.ttl, cx.duration(&k, v)),
                    "timeout" => set(&mut d.timeout, cx.seconds(&k, v)),
                    _ => cx.unknown(e),
                }
            }
            let Some(full) = full else {
                cx.err(pos, format!("\"{key}\" requires a type (full or cache)"));
                return None;
            };
            if !have_dir {
                cx.err(pos, format!("\"{key}\" requires a dir"));
                return None;
            }
            d.full = full;
            if !full && d.allow_delete {
                cx.err(pos, "resolver: allow_delete is only valid with type full");
            }
            if full && d.interval < Duration::from_secs(1) {
                cx.err(pos, "resolver: interval must be at least 1s");
            }
            Some(ResolverOpts::Dir(d))
        }
        _ => {
            cx.type_err(key, v, "MEMORY, URL(...) or a map");
            None
        }
    }
}

fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

fn authorization(cx: &mut Ctx, m: &Map, pos: &Pos) -> Authorization {
    let mut a = Authorization {
        pos: pos.clone(),
        ..Default::default()
    };
    for (k, e) in live(m) {
        let v = &e.value;
        if simple_auth_key(cx, &mut a, &k, v) {
            continue;
        }
        match k.as_str() {
            "users" => {
                let items = cx.array(&k, v);
                a.users = items.iter().filter_map(|u| user(cx, u, None)).collect();
            }
            "default_permissions" | "default_permission" => {
                a.default_permissions = permissions(cx, &k, v)
            }
            "auth_callout" => cx.keep_raw("authorization.auth_callout", e),
            _ => cx.unknown(e),
        }
    }
    a
}

/// nats-server's "simple" authorization block (`websocket { authorization {} }`): one
/// user or a token and a timeout; `users` and permissions are unknown fields there.
fn simple_authorization(cx: &mut Ctx, m: &Map, pos: &Pos) -> Authorization {
    let mut a = Authorization {
        pos: pos.clone(),
        ..Default::default()
    };
    for (k, e) in live(m) {
        if !simple_auth_key(cx, &mut a, &k, &e.value) {
            cx.unknown(e);
        }
    }
    a
}

/// The keys every authorization block has (user, password, token, timeout); false for
/// any other key.
fn simple_auth_key(cx: &mut Ctx, a: &mut Authorization, k: &str, v: &Value) -> bool {
    match k {
        "user" | "username" => a.user = cx.string(k, v),
        "password" | "pass" => a.password = cx.string(k, v),
        "token" => a.token = cx.string(k, v),
        "timeout" => a.timeout = cx.seconds(k, v),
        _ => return false,
    }
    true
}

fn user(cx: &mut Ctx, v: &Value, account: Option<&str>) -> Option<User> {
    let m = cx.map("users", v)?;
    let mut u = User {
        account: account.map(str::to_string),
        pos: v.pos.clone(),
        ..Default::default()
    };
    let mut named = false;
    for (k, e) in live(m) {
        let v = &e.value;
        match k.as_str() {
            "user" | "username" => {
                if let Some(s) = cx.string(&k, v) {
                    u.user = s;
                    named = true;
                }
            }
            "password" | "pass" => u.password = cx.string(&k, v),
            "nkey" => u.nkey = cx.string(&k, v),
            "permissions" | "permission" => u.permissions = permissions(cx, &k, v),
            "allowed_connection_types" | "allowed_connection_type" => {
                u.allowed_connection_types = cx.string_list(&k, v)
            }
            "account" if account.is_none() => u.account = cx.string(&k, v),
            "proxy_required" => cx.keep_raw("users[].proxy_required", e),
            _ => cx.unknown(e),
        }
    }
    if !named && u.nkey.is_none() {
        cx.err(&v.pos, "user entry requires a user or an nkey");
        return None;
    }
    Some(u)
}

fn permissions(cx: &mut Ctx, key: &str, v: &Value) -> Option<Permissions> {
    let m = cx.map(key, v)?;
    let mut p = Permissions {
        pos: v.pos.clone(),
        ..Default::default()
    };
    for (k, e) in live(m) {
        let v = &e.value;
        match k.as_str() {
            "publish" | "pub" | "import" => p.publish = subject_permission(cx, &k, v, false),
            "subscribe" | "sub" | "export" => p.subscribe = subject_permission(cx, &k, v, true),
            "allow_responses" | "allow_response" => p.allow_responses = response_perm(cx, &k, v),
            _ => cx.unknown(e),
        }
    }
    Some(p)
}

fn subject_permission(
    cx: &mut Ctx,
    key: &str,
    v: &Value,
    queue_ok: bool,
) -> Option<SubjectPermission> {
    match &v.kind {
        Kind::String(_) | Kind::Array(_) => Some(SubjectPermission {
            allow: cx.subjects(key, v, queue_ok),
            deny: Vec::new(),
        }),
        Kind::Map(m) => {
            let mut sp = SubjectPermission::default();
            for (k, e) in live(m) {
                match k.as_str() {
                    "allow" => sp.allow = cx.subjects(&k, &e.value, queue_ok),
                    "deny" => sp.deny = cx.subjects(&k, &e.value, queue_ok),
                    _ => cx.unknown(e),
                }
            }
            Some(sp)
        }
        _ => {
            cx.type_err(
                key,
                v,
                "a subject, a list of subjects or an {allow, deny} map",
            );
            None
        }
    }
}

fn response_perm(cx: &mut Ctx, key: &str, v: &Value) -> Option<ResponsePermission> {
    match &v.kind {
        Kind::Bool(true) => Some(ResponsePermission::default()),
        Kind::Bool(false) => None,
        Kind::Map(m) => {
            let mut r = ResponsePermission::default();
            for (k, e) in live(m) {
                match k.as_str() {
                    "max" | "max_msgs" | "max_messages" | "max_responses" => {
                        if let Some(n) = cx.u64(&k, &e.value) {
                            r.max = n as usize;
                        }
                    }
                    "expires" | "expiration" | "ttl" => {
                        set(&mut r.expires, cx.duration(&k, &e.value))
                    }
                    _ => cx.unknown(e),
                }
            }
            Some(r)
        }
        _ => {
            cx.type_err(key, v, "a boolean or a {max, expires} map");
            None
        }
    }
}

fn accounts(cx: &mut Ctx, m: &Map) -> Vec<AccountConfig> {
    let mut out = Vec::new();
    for (_, e) in live(m) {
        let Some(am) = cx.map(&e.key, &e.value) else {
            continue;
        };
        let mut a = AccountConfig {
            name: e.key.clone(),
            pos: e.key_pos.clone(),
            ..Default::default()
        };
        for (k, ae) in live(am) {
            let v = &ae.value;
            match k.as_str() {
                "users" => {
                    let items = cx.array(&k, v);
                    a.users = items
                        .iter()
                        .filter_map(|u| user(cx, u, Some(&e.key)))
                        .collect();
                }
                "nkey" => a.nkey = cx.string(&k, v),
                "exports" => {
                    let items = cx.array(&k, v);
                    a.exports = items.iter().filter_map(|x| export(cx, x)).collect();
                }
                "imports" => {
                    let items = cx.array(&k, v);
                    a.imports = items.iter().filter_map(|x| import(cx, x)).collect();
                }
                "mappings" | "maps" => {
                    if let Some(mm) = cx.map(&k, v) {
                        a.mappings = mappings(cx, mm);
                    }
                }
                "jetstream" => a.jetstream = account_jetstream(cx, &k, v, &ae.key_pos),
                "default_permissions" | "default_permission" => {
                    a.default_permissions = permissions(cx, &k, v)
                }
                "limits" => {
                    if cx.map(&k, v).is_some() {
                        a.limits = Some(RawBlock {
                            key: ae.key.clone(),
                            value: v.clone(),
                            pos: ae.key_pos.clone(),
                        });
                    }
                }
                "msg_trace" | "trace_dest" => cx.keep_raw(&format!("accounts.{}.{k}", e.key), ae),
                _ => cx.unknown(ae),
            }
        }
        out.push(a);
    }
    out
}

fn export(cx: &mut Ctx, v: &Value) -> Option<Export> {
    let m = cx.map("exports", v)?;
    let mut stream = None;
    let mut service = None;
    let mut accounts = Vec::new();
    let mut response_type = ResponseType::Singleton;
    let mut response_threshold = None;
    let mut latency = None;
    let mut token_pos = None;
    let mut allow_trace = false;
    for (k, e) in live(m) {
        let v = &e.value;
        match k.as_str() {
            "stream" => stream = cx.subject(&k, v),
            "service" => service = cx.subject(&k, v),
            "accounts" => accounts = cx.string_list(&k, v),
            "response_type" | "response" => {
                if let Some(s) = cx.string(&k, v) {
                    response_type = match s.to_ascii_lowercase().as_str() {
                        "singleton" | "single" => ResponseType::Singleton,
                        "stream" | "streamed" => ResponseType::Stream,
                        "chunked" | "chunk" => ResponseType::Chunked,
                        _ => {
                            cx.err(&v.pos, format!("unknown response type \"{s}\""));
                            ResponseType::Singleton
                        }
                    }
                }
            }
            "response_threshold" | "threshold" => response_threshold = cx.duration(&k, v),
            "latency" => latency = service_latency(cx, &k, v),
            "account_token_position" => token_pos = cx.u32(&k, v),
            "allow_trace" => set(&mut allow_trace, cx.bool(&k, v)),
            "advertise" => cx.keep_raw("exports[].advertise", e),
            _ => cx.unknown(e),
        }
    }
    let pos = v.pos.clone();
    match (stream, service) {
        (Some(subject), None) => {
            if response_threshold.is_some() || latency.is_some() {
                cx.err(&pos, "response settings are only valid for service exports");
            }
            Some(Export::Stream {
                subject,
                accounts,
                pos,
            })
        }
        (None, Some(subject)) => Some(Export::Service {
            subject,
            accounts,
            response_type,
            response_threshold,
            latency,
            account_token_position: token_pos,
            allow_trace,
            pos,
        }),
        (Some(_), Some(_)) => {
            cx.err(&pos, "an export can not be both a stream and a service");
            None
        }
        (None, None) => {
            cx.err(
                &pos,
                "an export needs a \"stream\" or a \"service\" subject",
            );
            None
        }
    }
}

fn service_latency(cx: &mut Ctx, key: &str, v: &Value) -> Option<ServiceLatency> {
    match &v.kind {
        Kind::String(s) => Some(ServiceLatency {
            sampling: 100,
            subject: s.clone(),
        }),
        Kind::Map(m) => {
            let mut l = ServiceLatency {
                sampling: 100,
                subject: String::new(),
            };
            for (k, e) in live(m) {
                let v = &e.value;
                match k.as_str() {
                    "subject" => set(&mut l.subject, cx.string(&k, v)),
                    "sampling" => match &v.kind {
                        Kind::String(s) if s.eq_ignore_ascii_case("headers") => l.sampling = 0,
                        _ => {
                            if let Some(p) = percent(cx, &k, v) {
                                l.sampling = p;
                            }
                        }
                    },
                    _ => cx.unknown(e),
                }
            }
            if l.subject.is_empty() {
                cx.err(&v.pos, "service latency requires a \"subject\"");
            }
            Some(l)
        }
        _ => {
            cx.type_err(key, v, "a subject or a {sampling, subject} map");
            None
        }
    }
}

/// `50`, `"50%"` → 50 (1..=100).
fn percent(cx: &mut Ctx, key: &str, v: &Value) -> Option<u8> {
    let n = match &v.kind {
        Kind::Integer(i) => *i,
        Kind::String(s) => match s.trim().trim_end_matches('%').trim().parse::<i64>() {
            Ok(n) => n,
            Err(_) => {
                cx.err(&v.pos, format!("invalid percentage \"{s}\" for \"{key}\""));
                return None;
            }
        },
        _ => {
            cx.type_err(key, v, "a percentage");
            return None;
        }
    };
    if !(1..=100).contains(&n) {
        cx.err(
            &v.pos,
            format!("\"{key}\" must be between 1 and 100, got {n}"),
        );
        return None;
    }
    Some(n as u8)
}

fn import(cx: &mut Ctx, v: &Value) -> Option<Import> {
    let m = cx.map("imports", v)?;
    let mut stream: Option<(String, String)> = None;
    let mut service: Option<(String, String)> = None;
    let mut prefix = None;
    let mut to = None;
    let mut share = false;
    for (k, e) in live(m) {
        let v = &e.value;
        match k.as_str() {
            "stream" => stream = import_source(cx, &k, v),
            "service" => service = import_source(cx, &k, v),
            "prefix" => prefix = cx.string(&k, v),
            "to" => to = cx.string(&k, v),
            "share" => set(&mut share, cx.bool(&k, v)),
            "allow_trace" => cx.keep_raw("imports[].allow_trace", e),
            _ => cx.unknown(e),
        }
    }
    let pos = v.pos.clone();
    match (stream, service) {
        (Some((account, subject)), None) => {
            if prefix.is_some() && to.is_some() {
                cx.err(
                    &pos,
                    "a stream import can not have both \"prefix\" and \"to\"",
                );
            }
            Some(Import::Stream {
                account,
                subject,
                prefix,
                to,
                pos,
            })
        }
        (None, Some((account, subject))) => {
            if prefix.is_some() {
                cx.err(&pos, "\"prefix\" is only valid for stream imports");
            }
            Some(Import::Service {
                account,
                subject,
                to,
                share,
                pos,
            })
        }
        (Some(_), Some(_)) => {
            cx.err(&pos, "an import can not be both a stream and a service");
            None
        }
        (None, None) => {
            cx.err(&pos, "an import needs a \"stream\" or a \"service\" source");
            None
        }
    }
}

fn import_source(cx: &mut Ctx, key: &str, v: &Value) -> Option<(String, String)> {
    let m = cx.map(key, v)?;
    let mut account = None;
    let mut subject = None;
    for (k, e) in live(m) {
        match k.as_str() {
            "account" => account = cx.string(&k, &e.value),
            "subject" => subject = cx.subject(&k, &e.value),
            _ => cx.unknown(e),
        }
    }
    match (account, subject) {
        (Some(a), Some(s)) => Some((a, s)),
        (None, _) => {
            cx.err(&v.pos, format!("{key} import requires an \"account\""));
            None
        }
        (_, None) => {
            cx.err(&v.pos, format!("{key} import requires a \"subject\""));
            None
        }
    }
}

fn mappings(cx: &mut Ctx, m: &Map) -> Vec<Mapping> {
    let mut out = Vec::new();
    for (_, e) in live(m) {
        let source = e.key.clone();
        if !valid_subject(&source, false) {
            cx.err(
                &e.key_pos,
                format!("invalid mapping source subject \"{source}\""),
            );
            continue;
        }
        let v = &e.value;
        let destinations = match &v.kind {
            Kind::String(_) | Kind::Map(_) => map_dest(cx, v).into_iter().collect(),
            Kind::Array(items) => items.iter().filter_map(|d| map_dest(cx, d)).collect(),
            _ => {
                cx.type_err(
                    &source,
                    v,
                    "a destination subject, a map or an array of maps",
                );
                continue;
            }
        };
        out.push(Mapping {
            source,
            destinations,
            pos: e.key_pos.clone(),
        });
    }
    out
}

fn map_dest(cx: &mut Ctx, v: &Value) -> Option<MapDest> {
    match &v.kind {
        Kind::String(s) => Some(MapDest {
            subject: s.clone(),
            weight: 100,
            cluster: None,
        }),
        Kind::Map(m) => {
            let mut d = MapDest {
                subject: String::new(),
                weight: 100,
                cluster: None,
            };
            for (k, e) in live(m) {
                let v = &e.value;
                match k.as_str() {
                    "dest" | "destination" => set(&mut d.subject, cx.string(&k, v)),
                    "weight" => set(&mut d.weight, percent(cx, &k, v)),
                    "cluster" => d.cluster = cx.string(&k, v),
                    _ => cx.err(
                        &e.key_pos,
                        format!("unknown field \"{}\" for mapping destination", e.key),
                    ),
                }
            }
            if d.subject.is_empty() {
                cx.err(&v.pos, "mapping destination requires \"destination\"");
                return None;
            }
            Some(d)
        }
        _ => {
            cx.type_err("mapping destination", v, "a subject or a map");
            None
        }
    }
}

fn tls(cx: &mut Ctx, key: &str, v: &Value) -> Option<TlsConfig> {
    let m = cx.map(key, v)?;
    let mut t = TlsConfig {
        pos: v.pos.clone(),
        ..Default::default()
    };
    for (k, e) in live(m) {
        let v = &e.value;
        match k.as_str() {
            "cert_file" => t.cert_file = cx.path(&k, v),
            "key_file" => t.key_file = cx.path(&k, v),
            "ca_file" => t.ca_file = cx.path(&k, v),
            "certs" => {
                for item in cx.array(&k, v) {
                    let Some(cm) = cx.map(&k, item) else { continue };
                    let (mut c, mut kf) = (None, None);
                    for (ck, ce) in live(cm) {
                        match ck.as_str() {
                            "cert_file" => c = cx.path(&ck, &ce.value),
                            "key_file" => kf = cx.path(&ck, &ce.value),
                            _ => cx.unknown(ce),
                        }
                    }
                    match (c, kf) {
                        (Some(c), Some(kf)) => t.certs.push((c, kf)),
                        _ => cx.err(&item.pos, "\"certs\" entries need cert_file and key_file"),
                    }
                }
            }
            "verify" => set(&mut t.verify, cx.bool(&k, v)),
            "verify_and_map" => {
                if let Some(b) = cx.bool(&k, v) {
                    t.verify_and_map = b;
                    t.verify |= b;
                }
            }
            "verify_cert_and_check_known_urls" => {
                if let Some(b) = cx.bool(&k, v) {
                    t.verify_cert_and_check_known_urls = b;
                    t.verify |= b;
                }
            }
            "timeout" => t.timeout = cx.seconds(&k, v),
            "insecure" => set(&mut t.insecure, cx.bool(&k, v)),
            "cipher_suites" => t.cipher_suites = cx.string_list(&k, v),
            "curve_preferences" => t.curve_preferences = cx.string_list(&k, v),
            "pinned_certs" => t.pinned_certs = cx.string_list(&k, v),
            "handshake_first" | "first" | "immediate" => {
                t.handshake_first = match &v.kind {
                    Kind::Bool(true) => Some(HandshakeFirst::Always),
                    Kind::Bool(false) => None,
                    Kind::String(s) if s.eq_ignore_ascii_case("auto") => {
                        Some(HandshakeFirst::Fallback(Duration::from_millis(50)))
                    }
                    _ => cx.duration(&k, v).map(HandshakeFirst::Fallback),
                }
            }
            "min_version" => t.min_version = cx.string(&k, v),
            "connection_rate_limit" => t.connection_rate_limit = cx.u64(&k, v),
            "ocsp_peer"
            | "cert_store"
            | "cert_match"
            | "cert_match_by"
            | "cert_match_skip_invalid"
            | "ca_certs_match"
            | "allow_insecure_cipher_suites" => cx.keep_raw(&format!("tls.{k}"), e),
            _ => cx.unknown(e),
        }
    }
    Some(t)
}

fn compression(cx: &mut Ctx, key: &str, v: &Value) -> Option<Compression> {
    let mode_of = |cx: &mut Ctx, v: &Value| -> Option<CompressionMode> {
        match &v.kind {
            Kind::Bool(true) => Some(CompressionMode::On),
            Kind::Bool(false) => Some(CompressionMode::Off),
            Kind::String(s) => {
                let m = CompressionMode::parse(s);
                if m.is_none() {
                    cx.err(&v.pos, format!("unknown compression mode \"{s}\""));
                }
                m
            }
            _ => {
                cx.type_err("compression", v, "a compression mode");
                None
            }
        }
    };
    match &v.kind {
        Kind::Map(m) => {
            let mut c = Compression {
                mode: CompressionMode::S2Auto,
                rtt_thresholds: Vec::new(),
                pos: v.pos.clone(),
            };
            for (k, e) in live(m) {
                match k.as_str() {
                    "mode" => set(&mut c.mode, mode_of(cx, &e.value)),
                    "rtt_thresholds" | "thresholds" | "rtts" | "rtt" => {
                        for item in cx.array(&k, &e.value) {
                            if let Some(d) = cx.duration(&k, item) {
                                c.rtt_thresholds.push(d);
                            }
                        }
                    }
                    _ => cx.unknown(e),
                }
            }
            Some(c)
        }
        Kind::Bool(_) | Kind::String(_) => mode_of(cx, v).map(|mode| Compression {
            mode,
            rtt_thresholds: Vec::new(),
            pos: v.pos.clone(),
        }),
        _ => {
            cx.type_err(key, v, "a compression mode or a {mode, rtt_thresholds} map");
            None
        }
    }
}

fn cluster(cx: &mut Ctx, m: &Map, pos: &Pos) -> ClusterOpts {
    let mut c = ClusterOpts::new(pos.clone());
    for (k, e) in live(m) {
        let v = &e.value;
        match k.as_str() {
            "name" => {
                if let Some(s) = cx.string(&k, v) {
                    if s.contains(char::is_whitespace) {
                        cx.err(
                            &v.pos,
                            format!("cluster name \"{s}\" can not contain spaces"),
                        );
                    }
                    c.name = Some(s);
                }
            }
            "host" | "net" => set(&mut c.host, cx.string(&k, v)),
            "port" => set(&mut c.port, cx.port(&k, v)),
            "listen" => {
                c.listen = cx.string(&k, v).or(c.listen.take());
                let (h, p) = host_port(cx, &k, v);
                set(&mut c.host, h);
                set(&mut c.port, p);
            }
            "advertise" | "cluster_advertise" => c.advertise = cx.string(&k, v),
            "no_advertise" => set(&mut c.no_advertise, cx.bool(&k, v)),
            "routes" => c.routes = cx.string_list(&k, v),
            "authorization" => {
                if let Some(am) = cx.map(&k, v) {
                    c.authorization = Some(authorization(cx, am, &e.key_pos));
                }
            }
            "connect_retries" => set(&mut c.connect_retries, cx.u32(&k, v)),
            "pool_size" => c.pool_size = cx.int(&k, v).map(|i| i.clamp(-1, 1024) as i32),
            "accounts" => c.accounts = cx.string_list(&k, v),
            "permissions" => {
                if let Some(pm) = cx.map(&k, v) {
                    let mut rp = RoutePermissions::default();
                    for (pk, pe) in live(pm) {
                        match pk.as_str() {
                            "import" => rp.import = subject_permission(cx, &pk, &pe.value, false),
                            "export" => rp.export = subject_permission(cx, &pk, &pe.value, false),
                            _ => cx.unknown(pe),
                        }
                    }
                    c.permissions = Some(rp);
                }
            }
            "tls" => c.tls = tls(cx, &k, v),
            "compression" => c.compression = compression(cx, &k, v),
            "write_deadline" | "ping_interval" | "ping_max" => {
                cx.keep_raw(&format!("cluster.{k}"), e)
            }
            _ => cx.unknown(e),
        }
    }
    c
}

fn leafnodes(cx: &mut Ctx, m: &Map, pos: &Pos) -> LeafNodeOpts {
    let mut l = LeafNodeOpts::new(pos.clone());
    for (k, e) in live(m) {
        let v = &e.value;
        l.key_pos.insert(k.clone(), e.key_pos.clone());
        match k.as_str() {
            "host" | "net" => set(&mut l.host, cx.string(&k, v)),
            "port" => set(&mut l.port, cx.port(&k, v)),
            "listen" => {
                l.listen = cx.string(&k, v).or(l.listen.take());
                let (h, p) = host_port(cx, &k, v);
                set(&mut l.host, h);
                set(&mut l.port, p);
            }
            "advertise" => l.advertise = cx.string(&k, v),
            "no_advertise" => set(&mut l.no_advertise, cx.bool(&k, v)),
            "authorization" => {
                if let Some(am) = cx.map(&k, v) {
                    l.authorization = Some(leaf_authorization(cx, am, &e.key_pos));
                }
            }
            "tls" => l.tls = tls(cx, &k, v),
            "remotes" => {
                for item in cx.array(&k, v) {
                    if let Some(r) = remote(cx, item) {
                        l.remotes.push(r);
                    }
                }
            }
            // 2.9/2.10 take integer seconds here, so no deprecation warning for them.
            "reconnect" | "reconnect_delay" | "reconnect_interval" => {
                set(&mut l.reconnect_interval, cx.seconds(&k, v))
            }
            "reconnect_buffer_size" => l.reconnect_buffer_size = cx.u64(&k, v),
            "store_dir" => l.store_dir = cx.path(&k, v),
            "min_version" => l.min_version = cx.string(&k, v),
            "compression" => l.compression = compression(cx, &k, v),
            "isolate_leafnode_interest" | "isolate" => {
                set(&mut l.isolate_leafnode_interest, cx.bool(&k, v))
            }
            "write_deadline" | "write_timeout" => l.write_deadline = cx.duration(&k, v),
            "dial_timeout" => l.dial_timeout = cx.duration(&k, v),
            _ => cx.unknown(e),
        }
    }
    l
}

fn leaf_authorization(cx: &mut Ctx, m: &Map, pos: &Pos) -> LeafAuthorization {
    let mut a = LeafAuthorization {
        pos: pos.clone(),
        ..Default::default()
    };
    for (k, e) in live(m) {
        let v = &e.value;
        match k.as_str() {
            "user" | "username" => a.user = cx.string(&k, v),
            "password" | "pass" => a.password = cx.string(&k, v),
            "account" => a.account = cx.string(&k, v),
            "nkey" => a.nkey = cx.string(&k, v),
            "timeout" => a.timeout = cx.seconds(&k, v),
            "users" => {
                for item in cx.array(&k, v) {
                    let Some(um) = cx.map(&k, item) else { continue };
                    let mut u = LeafUser {
                        pos: item.pos.clone(),
                        ..Default::default()
                    };
                    let mut named = false;
                    for (uk, ue) in live(um) {
                        let uv = &ue.value;
                        match uk.as_str() {
                            "user" | "username" => {
                                if let Some(s) = cx.string(&uk, uv) {
                                    u.user = s;
                                    named = true;
                                }
                            }
                            "password" | "pass" => u.password = cx.string(&uk, uv),
                            "account" => u.account = cx.string(&uk, uv),
                            "proxy_required" => {
                                cx.keep_raw("leafnodes.authorization.users[].proxy_required", ue)
                            }
                            _ => cx.unknown(ue),
                        }
                    }
                    if named {
                        a.users.push(u);
                    } else {
                        cx.err(&item.pos, "leafnode user entry requires a user");
                    }
                }
            }
            _ => cx.unknown(e),
        }
    }
    a
}

fn remote(cx: &mut Ctx, v: &Value) -> Option<RemoteLeafOpts> {
    let m = cx.map("remotes", v)?;
    let mut r = RemoteLeafOpts {
        pos: v.pos.clone(),
        ..Default::default()
    };
    for (k, e) in live(m) {
        let v = &e.value;
        r.key_pos.insert(k.clone(), e.key_pos.clone());
        match k.as_str() {
            "url" | "urls" => r.urls.extend(cx.string_list(&k, v)),
            "account" | "local" => r.account = cx.string(&k, v),
            "credentials" | "creds" => r.credentials = cx.path(&k, v),
            "nkey" | "seed" => r.nkey = cx.string(&k, v),
            "tls" => r.tls = tls(cx, &k, v),
            "deny_imports" | "deny_import" => r.deny_imports = cx.subjects(&k, v, false),
            "deny_exports" | "deny_export" => r.deny_exports = cx.subjects(&k, v, false),
            "hub" => set(&mut r.hub, cx.bool(&k, v)),
            "no_randomize" | "dont_randomize" => set(&mut r.no_randomize, cx.bool(&k, v)),
            "first_info_timeout" => r.first_info_timeout = cx.duration(&k, v),
            "dial_timeout" => r.dial_timeout = cx.duration(&k, v),
            "compression" => r.compression = compression(cx, &k, v),
            "disabled" => set(&mut r.disabled, cx.bool(&k, v)),
            "ignore_discovered_servers" => set(&mut r.ignore_discovered_servers, cx.bool(&k, v)),
            "isolate_leafnode_interest" | "isolate" => {
                set(&mut r.isolate_leafnode_interest, cx.bool(&k, v))
            }
            "jetstream_cluster_migrate" | "js_cluster_migrate" => {
                set(&mut r.jetstream_cluster_migrate, cx.bool(&k, v))
            }
            "ws_compression" => set(&mut r.ws_compression, cx.bool(&k, v)),
            "ws_no_masking" => set(&mut r.ws_no_masking, cx.bool(&k, v)),
            "request_isolation" | "proxy" | "jetstream_cluster_migrate_delay" => {
                cx.keep_raw(&format!("leafnodes.remotes[].{k}"), e)
            }
            // Canopy extensions (the seed's keys).
            "reconnect_interval" => r.reconnect_interval = cx.seconds(&k, v),
            "reconnect" => r.reconnect = cx.bool(&k, v),
            "connect_timeout" => r.connect_timeout = cx.seconds(&k, v),
            "reconnect_buffer_size" => r.reconnect_buffer_size = cx.u64(&k, v),
            "spool" => r.spool = cx.bool(&k, v),
            "account_mappings" => {
                if let Some(mm) = cx.map(&k, v) {
                    r.account_mappings = account_mappings(cx, mm);
                }
            }
            _ => cx.unknown(e),
        }
    }
    if r.urls.is_empty() {
        cx.err(&v.pos, "leafnode remote requires \"url\" or \"urls\"");
    }
    for u in &r.urls {
        if u.trim().is_empty() {
            cx.err(&v.pos, "leafnode remote has an empty url");
        }
    }
    Some(r)
}

/// Canopy extension: `account_mappings { events: { to: "site-a.events" } }` maps the local
/// prefix `events` (the subject `events` and everything under it) to the hub's prefix
/// `site-a.events` on one remote. Keys and `to` are literal subject prefixes (a trailing
/// `.>` is accepted and means the same); they are stored as `events.>` → `site-a.events.>`.
fn account_mappings(cx: &mut Ctx, m: &Map) -> Vec<Mapping> {
    let mut out = Vec::new();
    for (_, e) in live(m) {
        let v = &e.value;
        let to = match &v.kind {
            Kind::String(s) => Some(s.clone()),
            Kind::Map(tm) => {
                let mut to = None;
                for (k, te) in live(tm) {
                    match k.as_str() {
                        "to" | "dest" | "destination" => to = cx.string(&k, &te.value),
                        _ => cx.unknown(te),
                    }
                }
                if to.is_none() {
                    cx.err(
                        &v.pos,
                        format!("account mapping \"{}\" requires \"to\"", e.key),
                    );
                }
                to
            }
            _ => {
                cx.type_err(&e.key, v, "a subject or a {to} map");
                None
            }
        };
        let Some(to) = to else { continue };
        let prefix = |s: &str| s.strip_suffix(".>").unwrap_or(s).to_string();
        let (local, hub) = (prefix(&e.key), prefix(&to));
        let literal =
            |s: &str| valid_subject(s, false) && !s.split('.').any(|t| t == "*" || t == ">");
        if !literal(&local) || !literal(&hub) {
            cx.err(
                &e.key_pos,
                format!(
                    "invalid account mapping \"{}\" -> \"{to}\": keys and \"to\" are subject prefixes without wildcards",
                    e.key
                ),
            );
            continue;
        }
        let (source, dest) = (format!("{local}.>"), format!("{hub}.>"));
        out.push(Mapping {
            source,
            destinations: vec![MapDest {
                subject: dest,
                weight: 100,
                cluster: None,
            }],
            pos: e.key_pos.clone(),
        });
    }
    out
}

fn jetstream(cx: &mut Ctx, key: &str, v: &Value, pos: &Pos) -> Option<JetStreamOpts> {
    let mut j = JetStreamOpts {
        enabled: true,
        pos: pos.clone(),
        ..Default::default()
    };
    match &v.kind {
        Kind::Bool(b) => j.enabled = *b,
        Kind::String(s) => match s.to_ascii_lowercase().as_str() {
            "enabled" | "enable" | "true" | "yes" | "on" => j.enabled = true,
            "disabled" | "disable" | "false" | "no" | "off" => j.enabled = false,
            _ => {
                cx.err(
                    &v.pos,
                    format!("expected \"enabled\" or \"disabled\" for \"{key}\", got \"{s}\""),
                );
                return None;
            }
        },
        Kind::Map(m) => {
            for (k, e) in live(m) {
                let v = &e.value;
                match k.as_str() {
                    "enabled" | "enable" => set(&mut j.enabled, cx.bool(&k, v)),
                    "store_dir" | "store" | "storedir" => j.store_dir = cx.path(&k, v),
                    "max_memory_store" | "max_mem_store" | "max_mem" => {
                        j.max_memory_store = cx.int(&k, v)
                    }
                    "max_file_store" | "max_file" => j.max_file_store = cx.int(&k, v),
                    "domain" => j.domain = cx.string(&k, v),
                    "sync_interval" | "sync" => {
                        j.sync_interval = match &v.kind {
                            Kind::String(s) if s.eq_ignore_ascii_case("always") => {
                                Some(SyncInterval::Always)
                            }
                            _ => cx.duration(&k, v).map(SyncInterval::Every),
                        }
                    }
                    "extension_hint" => j.extension_hint = cx.string(&k, v),
                    "unique_tag" => j.unique_tag = cx.string(&k, v),
                    "strict" => j.strict = cx.bool(&k, v),
                    "max_buffered_size" => j.max_buffered_size = cx.int(&k, v),
                    "max_buffered_msgs" => j.max_buffered_msgs = cx.int(&k, v),
                    "max_outstanding_catchup" | "max_catchup" => {
                        j.max_outstanding_catchup = cx.int(&k, v)
                    }
                    "request_queue_limit" => j.request_queue_limit = cx.int(&k, v),
                    "cipher" => j.cipher = cx.string(&k, v),
                    "key" | "ek" | "encryption_key" => j.key = cx.string(&k, v),
                    "limits" => {
                        if cx.map(&k, v).is_some() {
                            j.limits = Some(RawBlock {
                                key: e.key.clone(),
                                value: v.clone(),
                                pos: e.key_pos.clone(),
                            });
                        }
                    }
                    "prev_key" | "prev_encryption_key" | "tpm" | "max_ha_assets" => {
                        cx.keep_raw(&format!("jetstream.{k}"), e)
                    }
                    _ => cx.unknown(e),
                }
            }
        }
        _ => {
            cx.type_err(key, v, "a boolean, \"enabled\" or a map");
            return None;
        }
    }
    Some(j)
}

fn account_jetstream(cx: &mut Ctx, key: &str, v: &Value, pos: &Pos) -> Option<AccountJetStream> {
    let mut j = AccountJetStream {
        enabled: true,
        pos: pos.clone(),
        ..Default::default()
    };
    match &v.kind {
        Kind::Bool(b) => j.enabled = *b,
        Kind::String(s) => match s.to_ascii_lowercase().as_str() {
            "enabled" | "enable" | "true" | "yes" | "on" => j.enabled = true,
            "disabled" | "disable" | "false" | "no" | "off" => j.enabled = false,
            _ => {
                cx.err(
                    &v.pos,
                    format!("expected \"enabled\" or \"disabled\" for \"{key}\", got \"{s}\""),
                );
                return None;
            }
        },
        Kind::Map(m) => {
            for (k, e) in live(m) {
                let v = &e.value;
                match k.as_str() {
                    "enabled" | "enable" => set(&mut j.enabled, cx.bool(&k, v)),
                    "max_mem" | "max_memory" | "max_mem_store" | "max_memory_store" => {
                        j.max_memory = cx.int(&k, v)
                    }
                    "max_file" | "max_store" | "max_disk" | "max_file_store" => {
                        j.max_file = cx.int(&k, v)
                    }
                    "max_streams" => j.max_streams = cx.int(&k, v),
                    "max_consumers" => j.max_consumers = cx.int(&k, v),
                    "max_ack_pending" => j.max_ack_pending = cx.int(&k, v),
                    "max_bytes_required" | "max_stream_bytes_required" => {
                        set(&mut j.max_bytes_required, cx.bool(&k, v))
                    }
                    "memory_max_stream_bytes" | "mem_max_stream_bytes" => {
                        j.memory_max_stream_bytes = cx.int(&k, v)
                    }
                    "store_max_stream_bytes"
                    | "disk_max_stream_bytes"
                    | "file_max_stream_bytes" => j.store_max_stream_bytes = cx.int(&k, v),
                    "max_stream_bytes" => {
                        let n = cx.int(&k, v);
                        j.memory_max_stream_bytes = n;
                        j.store_max_stream_bytes = n;
                    }
                    _ => cx.unknown(e),
                }
            }
        }
        _ => {
            cx.type_err(key, v, "a boolean, \"enabled\" or a map");
            return None;
        }
    }
    Some(j)
}

fn websocket(cx: &mut Ctx, m: &Map, pos: &Pos) -> WebsocketOpts {
    let mut w = WebsocketOpts {
        pos: pos.clone(),
        ..Default::default()
    };
    for (k, e) in live(m) {
        let v = &e.value;
        w.key_pos.insert(k.clone(), e.key_pos.clone());
        match k.as_str() {
            "host" | "net" => w.host = cx.string(&k, v),
            "port" => set(&mut w.port, cx.port(&k, v)),
            "listen" => {
                let (h, p) = host_port(cx, &k, v);
                w.host = h.or(w.host.take());
                set(&mut w.port, p);
            }
            "advertise" => w.advertise = cx.string(&k, v),
            "no_tls" => set(&mut w.no_tls, cx.bool(&k, v)),
            "compression" | "compress" => set(&mut w.compression, cx.bool(&k, v)),
            "tls" => w.tls = tls(cx, &k, v),
            "same_origin" => set(&mut w.same_origin, cx.bool(&k, v)),
            "allowed_origins" | "allowed_origin" | "allow_origins" | "allow_origin" | "origins"
            | "origin" => w.allowed_origins = cx.string_list(&k, v),
            "handshake_timeout" => w.handshake_timeout = cx.seconds(&k, v),
            "no_auth_user" => w.no_auth_user = cx.string(&k, v),
            "authorization" | "authentication" => {
                if let Some(am) = cx.map(&k, v) {
                    w.authorization = Some(simple_authorization(cx, am, &e.key_pos));
                }
            }
            "jwt_cookie" => w.jwt_cookie = cx.string(&k, v),
            "user_cookie" => w.user_cookie = cx.string(&k, v),
            "pass_cookie" => w.pass_cookie = cx.string(&k, v),
            "token_cookie" => w.token_cookie = cx.string(&k, v),
            "headers" => {
                if let Some(hm) = cx.map(&k, v) {
                    // Header names keep their case (`live` lower-cases keys).
                    for he in hm.entries.iter().filter(|e| !e.used_as_variable) {
                        if let Some(hv) = cx.string(&he.key, &he.value) {
                            w.headers.push((he.key.clone(), hv));
                        }
                    }
                }
            }
            _ => cx.unknown(e),
        }
    }
    w
}

fn prometheus(cx: &mut Ctx, key: &str, v: &Value, pos: &Pos) -> Option<PrometheusOpts> {
    let mut p = PrometheusOpts {
        host: DEFAULT_HOST.to_string(),
        port: DEFAULT_PROMETHEUS_PORT,
        pos: pos.clone(),
    };
    match &v.kind {
        Kind::Bool(false) => return None,
        Kind::Bool(true) => {}
        Kind::Integer(_) => set(&mut p.port, cx.port(key, v)),
        Kind::Map(m) => {
            for (k, e) in live(m) {
                let v = &e.value;
                match k.as_str() {
                    "enabled" => {
                        if cx.bool(&k, v) == Some(false) {
                            return None;
                        }
                    }
                    "host" | "net" => set(&mut p.host, cx.string(&k, v)),
                    "port" => set(&mut p.port, cx.port(&k, v)),
                    "listen" => {
                        let (h, pt) = host_port(cx, &k, v);
                        set(&mut p.host, h);
                        set(&mut p.port, pt);
                    }
                    _ => cx.unknown(e),
                }
            }
        }
        _ => {
            cx.type_err(key, v, "a boolean, a port or a {host, port} map");
            return None;
        }
    }
    Some(p)
}
