//! `canopy topology check|graph PATH...`: reads a whole deployment's server configs (files,
//! or directories of `*.conf`) with canopy-conf, links them into one graph of servers,
//! routes and leaf links, and reports what no single config shows: leaf credentials the hub
//! refuses, accounts bound on one side that do not exist, TLS on one side only, JetStream
//! domain mistakes, shared store directories, deny rules that block replies, duplicate
//! server names, cluster name mismatches, routes and remotes that lead nowhere, and leaf
//! loops. `graph` draws the same graph as Mermaid, Graphviz DOT or JSON.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use canopy_conf::{Options, Pos, RemoteLeafOpts};
use serde_json::{json, Value};

#[derive(clap::Subcommand, Debug)]
pub enum TopologyCmd {
    /// Check a deployment: every finding with its severity, both ends' file:line and a fix.
    /// Exit code 1 when there is an error.
    Check(TopoArgs),
    /// Draw the deployment's servers, routes and leaf links.
    Graph(TopoArgs),
}

#[derive(clap::Args, Debug)]
pub struct TopoArgs {
    /// Config files, or directories whose `*.conf` files are read.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Resolve a URL's `host:port` to a config file: `--map hub.example.com:7422=hub.conf`.
    #[arg(long = "map", value_name = "HOST:PORT=FILE")]
    maps: Vec<String>,
    /// `text` or `json` for check; `mermaid`, `dot` or `json` for graph.
    #[arg(long, default_value = "")]
    format: String,
}

/// One server of the deployment.
struct Node {
    name: String,
    file: PathBuf,
    opts: Options,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Severity {
    Error,
    Warning,
}

/// One thing to fix (or look at).
#[derive(Debug)]
struct Finding {
    severity: Severity,
    message: String,
    /// file:line:col of each end.
    at: Vec<String>,
    fix: String,
}

/// A leaf link: `leaf`'s remote number `remote` (its URL `url`) dials `hub`.
struct LeafEdge {
    leaf: usize,
    remote: usize,
    hub: usize,
    url: Url,
}

/// A route: `from` lists a route to `to`.
struct RouteEdge {
    from: usize,
    to: usize,
}

/// The parts of a NATS URL the checks need.
#[derive(Clone, Debug, Default)]
struct Url {
    scheme: String,
    user: Option<String>,
    pass: Option<String>,
    host: String,
    port: u16,
}

impl Url {
    fn parse(s: &str, default_port: u16) -> Url {
        let (scheme, rest) = s.split_once("://").unwrap_or(("nats", s));
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let hostport = hostport.trim_end_matches('/');
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse().unwrap_or(default_port))
            }
            _ => (hostport, default_port),
        };
        let (user, pass) = match userinfo.map(|u| u.split_once(':')) {
            Some(Some((u, p))) => (Some(u.to_string()), Some(p.to_string())),
            Some(None) => (userinfo.map(str::to_string), None),
            None => (None, None),
        };
        Url {
            scheme: scheme.to_ascii_lowercase(),
            user,
            pass,
            host: host.trim_matches(['[', ']']).to_string(),
            port,
        }
    }

    fn hostport(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A user the hub accepts a leaf as.
struct HubUser {
    user: String,
    pass: Option<String>,
    account: Option<String>,
    nkey: Option<String>,
}

impl HubUser {
    fn plain(user: &str, pass: &Option<String>, account: &Option<String>) -> HubUser {
        HubUser {
            user: user.to_string(),
            pass: pass.clone(),
            account: account.clone(),
            nkey: None,
        }
    }
}

/// The public nkey a remote authenticates with: from its `nkey` seed, or from the seed
/// block of its `.creds` file (relative paths are relative to the leaf's config).
fn remote_nkey(remote: &RemoteLeafOpts, leaf_file: &Path) -> Result<Option<String>, String> {
    let seed = match (&remote.nkey, &remote.credentials) {
        (Some(seed), _) => seed.clone(),
        (None, Some(path)) => {
            let path = match leaf_file.parent() {
                Some(dir) if path.is_relative() => dir.join(path),
                _ => path.clone(),
            };
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read the credentials file {}: {e}", path.display()))?;
            let mut lines = text.lines().map(str::trim);
            let mut seed = None;
            while let Some(l) = lines.next() {
                if l.starts_with("---") && l.contains("BEGIN") && l.contains("SEED") {
                    seed = lines.by_ref().find(|x| !x.is_empty()).map(str::to_string);
                }
            }
            seed.ok_or_else(|| format!("no nkey seed in the credentials file {}", path.display()))?
        }
        (None, None) => return Ok(None),
    };
    nkeys::KeyPair::from_seed(&seed)
        .map(|k| Some(k.public_key()))
        .map_err(|e| format!("the remote's nkey seed is not valid: {e}"))
}

/// The deployment: its servers and the links between them.
struct Deployment {
    nodes: Vec<Node>,
    leafs: Vec<LeafEdge>,
    routes: Vec<RouteEdge>,
    findings: Vec<Finding>,
}

pub fn run(cmd: TopologyCmd) -> anyhow::Result<()> {
    let (args, check) = match cmd {
        TopologyCmd::Check(a) => (a, true),
        TopologyCmd::Graph(a) => (a, false),
    };
    let d = Deployment::load(&args)?;
    if check {
        let errors = d
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count();
        match args.format.as_str() {
            "json" => println!("{}", serde_json::to_string_pretty(&d.findings_json())?),
            "" | "text" => print!("{}", d.findings_text()),
            f => bail!("unknown format {f:?} (text, json)"),
        }
        if errors > 0 {
            std::process::exit(1);
        }
        return Ok(());
    }
    match args.format.as_str() {
        "" | "mermaid" => print!("{}", d.mermaid()),
        "dot" => print!("{}", d.dot()),
        "json" => println!("{}", serde_json::to_string_pretty(&d.graph_json())?),
        f => bail!("unknown format {f:?} (mermaid, dot, json)"),
    }
    Ok(())
}

/// The config files named by `paths` (directories: their `*.conf`, sorted).
fn config_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "conf"))
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        bail!("no config files found");
    }
    Ok(out)
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn finding(severity: Severity, message: String, at: &[&Pos], fix: &str) -> Finding {
    Finding {
        severity,
        message,
        at: at.iter().map(|p| p.to_string()).collect(),
        fix: fix.to_string(),
    }
}

impl Deployment {
    fn load(args: &TopoArgs) -> anyhow::Result<Deployment> {
        let mut d = Deployment {
            nodes: Vec::new(),
            leafs: Vec::new(),
            routes: Vec::new(),
            findings: Vec::new(),
        };
        for file in config_files(&args.paths)? {
            match canopy_conf::load_file(&file) {
                Ok(opts) => {
                    let name = opts
                        .server_name
                        .clone()
                        .filter(|n| !n.is_empty())
                        .unwrap_or_else(|| stem(&file));
                    d.nodes.push(Node { name, file, opts });
                }
                Err(errs) => d.findings.push(Finding {
                    severity: Severity::Error,
                    message: format!("the config does not load: {errs}"),
                    at: vec![file.display().to_string()],
                    fix: "run canopy-server -t on it and fix what it reports".into(),
                }),
            }
        }
        let mut maps = HashMap::new();
        for m in &args.maps {
            let Some((hp, f)) = m.split_once('=') else {
                bail!("--map wants HOST:PORT=FILE, got {m:?}");
            };
            let want = PathBuf::from(f);
            let idx = d
                .nodes
                .iter()
                .position(|n| n.file == want || stem(&n.file) == stem(&want))
                .with_context(|| format!("--map {m}: {f} is not one of the configs"))?;
            maps.insert(hp.to_string(), idx);
        }
        d.link(&maps);
        d.check();
        d.findings.sort_by_key(|f| f.severity);
        // A remote that lists one hub under several URLs is reported once.
        let mut seen = std::collections::HashSet::new();
        d.findings
            .retain(|f| seen.insert((f.message.clone(), f.at.clone())));
        Ok(d)
    }

    /// Which server a URL names: `--map`, then a server (or file) name equal to the host,
    /// then the only server listening on the port for that kind of link.
    fn resolve(
        &self,
        url: &Url,
        maps: &HashMap<String, usize>,
        port_of: impl Fn(&Node) -> i32,
    ) -> Option<usize> {
        if let Some(&i) = maps.get(&url.hostport()) {
            return Some(i);
        }
        if let Some(i) = self
            .nodes
            .iter()
            .position(|n| n.name == url.host || stem(&n.file) == url.host)
        {
            return Some(i);
        }
        let by_port: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| port_of(&self.nodes[i]) == i32::from(url.port))
            .collect();
        (by_port.len() == 1).then(|| by_port[0])
    }

    fn link(&mut self, maps: &HashMap<String, usize>) {
        let leaf_port = |n: &Node| n.opts.leafnodes.as_ref().map_or(0, |l| l.port);
        let route_port = |n: &Node| n.opts.cluster.as_ref().map_or(0, |c| c.port);
        let mut findings = Vec::new();
        let mut leafs = Vec::new();
        let mut routes = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(l) = &n.opts.leafnodes {
                for (r, remote) in l.remotes.iter().enumerate() {
                    for u in &remote.urls {
                        let url = Url::parse(u, 7422);
                        match self.resolve(&url, maps, leaf_port) {
                            Some(hub)
                                if hub == i
                                    || leafs.iter().any(|e: &LeafEdge| {
                                        e.leaf == i && e.remote == r && e.hub == hub
                                    }) => {}
                            Some(hub) => leafs.push(LeafEdge {
                                leaf: i,
                                remote: r,
                                hub,
                                url,
                            }),
                            None => findings.push(finding(
                                Severity::Warning,
                                format!("{}: leaf remote {u} matches no config", n.name),
                                &[&remote.pos],
                                "name the hub's config after the URL's host (server_name or \
                                 file name), or pass --map HOST:PORT=FILE",
                            )),
                        }
                    }
                }
            }
            if let Some(c) = &n.opts.cluster {
                for u in &c.routes {
                    let url = Url::parse(u, 6222);
                    match self.resolve(&url, maps, route_port) {
                        Some(to)
                            if to == i
                                || routes.iter().any(|r: &RouteEdge| r.from == i && r.to == to) => {
                        }
                        Some(to) => routes.push(RouteEdge { from: i, to }),
                        None => findings.push(finding(
                            Severity::Warning,
                            format!("{}: route {u} matches no config", n.name),
                            &[&c.pos],
                            "add the peer's config, or pass --map HOST:PORT=FILE",
                        )),
                    }
                }
            }
        }
        self.leafs = leafs;
        self.routes = routes;
        self.findings.extend(findings);
    }

    fn check(&mut self) {
        let mut f = Vec::new();
        self.check_names(&mut f);
        self.check_routes(&mut f);
        for e in &self.leafs {
            self.check_leaf(e, &mut f);
        }
        self.check_store_dirs(&mut f);
        self.check_loops(&mut f);
        self.findings.extend(f);
    }

    fn check_names(&self, f: &mut Vec<Finding>) {
        let mut by_name: BTreeMap<&str, Vec<&Node>> = BTreeMap::new();
        for n in &self.nodes {
            by_name.entry(n.name.as_str()).or_default().push(n);
        }
        for (name, ns) in by_name.iter().filter(|(_, ns)| ns.len() > 1) {
            let files: Vec<String> = ns.iter().map(|n| n.file.display().to_string()).collect();
            f.push(Finding {
                severity: Severity::Error,
                message: format!("server_name {name:?} is used by {} configs", ns.len()),
                at: files,
                fix: "give every server its own server_name (monitoring, routes and JetStream \
                      tell servers apart by it)"
                    .into(),
            });
        }
    }

    fn check_routes(&self, f: &mut Vec<Finding>) {
        for r in &self.routes {
            let (a, b) = (&self.nodes[r.from], &self.nodes[r.to]);
            let (Some(ca), Some(cb)) = (&a.opts.cluster, &b.opts.cluster) else {
                if a.opts.cluster.is_some() {
                    f.push(finding(
                        Severity::Error,
                        format!(
                            "{} routes to {}, which has no cluster block",
                            a.name, b.name
                        ),
                        &[&a.opts
                            .cluster
                            .as_ref()
                            .map(|c| c.pos.clone())
                            .unwrap_or_default()],
                        "add a cluster block with the same name to the peer",
                    ));
                }
                continue;
            };
            if ca.name != cb.name {
                f.push(finding(
                    Severity::Error,
                    format!(
                        "{} (cluster {:?}) routes to {} (cluster {:?}): the route is refused",
                        a.name,
                        ca.name.as_deref().unwrap_or(""),
                        b.name,
                        cb.name.as_deref().unwrap_or("")
                    ),
                    &[&ca.pos, &cb.pos],
                    "use one cluster name on every member",
                ));
            }
        }
    }

    fn check_leaf(&self, e: &LeafEdge, f: &mut Vec<Finding>) {
        let (leaf, hub) = (&self.nodes[e.leaf], &self.nodes[e.hub]);
        let Some(remote) = leaf
            .opts
            .leafnodes
            .as_ref()
            .and_then(|l| l.remotes.get(e.remote))
        else {
            return;
        };
        let Some(hl) = hub.opts.leafnodes.as_ref() else {
            return;
        };
        let what = format!("{} → {} ({})", leaf.name, hub.name, e.url.hostport());
        if hl.port == 0 {
            f.push(finding(
                Severity::Error,
                format!("{what}: the hub has no leafnode listener"),
                &[&remote.pos, &hl.pos],
                "give the hub's leafnodes block a port (7422 is the default)",
            ));
            return;
        }
        self.check_leaf_account(&what, leaf, remote, f);
        let bound = self.check_leaf_auth(&what, e, remote, hub, f);
        if let Some(acc) = bound {
            if !hub.opts.accounts.is_empty() && acc != "$G" && hub.opts.account(&acc).is_none() {
                f.push(finding(
                    Severity::Error,
                    format!("{what}: the hub binds the leaf to account {acc:?}, which the hub does not define"),
                    &[&remote.pos, &hl.pos],
                    "define the account on the hub or bind the leaf user to an existing one",
                ));
            }
        }
        self.check_leaf_tls(&what, e, remote, leaf, hub, f);
        self.check_leaf_js(&what, remote, leaf, hub, f);
        for (key, list) in [
            ("deny_imports", &remote.deny_imports),
            ("deny_exports", &remote.deny_exports),
        ] {
            for d in list {
                if canopy_subject::subject_matches(d, "_INBOX.x.y") {
                    f.push(finding(
                        Severity::Warning,
                        format!("{what}: {key} {d:?} also blocks reply subjects (_INBOX.>): requests across the link get no answer"),
                        &[remote.key_pos.get(key).unwrap_or(&remote.pos)],
                        "deny narrower subjects, or leave _INBOX.> out of the rule",
                    ));
                }
            }
        }
    }

    /// The leaf side: the local account the remote bridges must exist.
    fn check_leaf_account(
        &self,
        what: &str,
        leaf: &Node,
        remote: &RemoteLeafOpts,
        f: &mut Vec<Finding>,
    ) {
        if let Some(acc) = &remote.account {
            if acc != "$G" && leaf.opts.account(acc).is_none() {
                f.push(finding(
                    Severity::Error,
                    format!("{what}: the remote bridges local account {acc:?}, which this server does not define"),
                    &[remote.key_pos.get("account").unwrap_or(&remote.pos)],
                    "define the account in the leaf's accounts block or fix the name",
                ));
            }
        }
    }

    /// Would the hub accept the remote's credentials? Returns the account the hub binds
    /// the leaf to, when the configs say.
    fn check_leaf_auth(
        &self,
        what: &str,
        e: &LeafEdge,
        remote: &RemoteLeafOpts,
        hub: &Node,
        f: &mut Vec<Finding>,
    ) -> Option<String> {
        let hl = hub.opts.leafnodes.as_ref()?;
        let creds = remote.credentials.is_some() || remote.nkey.is_some();
        let operator = !hub.opts.operators.is_empty();
        let refuse = |f: &mut Vec<Finding>, why: String, fix: &str| {
            f.push(finding(
                Severity::Error,
                format!("{what}: {why}"),
                &[&remote.pos, &hl.pos],
                fix,
            ));
        };
        if operator {
            if !creds {
                refuse(
                    f,
                    "the hub is in operator mode and the remote has no credentials".into(),
                    "give the remote a .creds file of a user of the account it should bind to",
                );
            }
            return None;
        }
        // Who the hub checks a leaf against: its leafnodes authorization, else its client
        // users, nkeys and token (a leaf may log in as a client user).
        let mut users: Vec<HubUser> = Vec::new();
        let mut token = None;
        if let Some(a) = &hl.authorization {
            if let Some(u) = &a.user {
                users.push(HubUser::plain(u, &a.password, &a.account));
            }
            users.extend(
                a.users
                    .iter()
                    .map(|u| HubUser::plain(&u.user, &u.password, &u.account)),
            );
        }
        if users.is_empty() {
            let top = &hub.opts.authorization;
            token = top.token.clone();
            if let Some(u) = &top.user {
                users.push(HubUser::plain(u, &top.password, &None));
            }
            let accounts = hub
                .opts
                .accounts
                .iter()
                .flat_map(|a| a.users.iter().map(move |u| (u, Some(a.name.clone()))));
            for (u, acc) in top
                .users
                .iter()
                .map(|u| (u, u.account.clone()))
                .chain(accounts)
            {
                users.push(HubUser {
                    user: u.user.clone(),
                    pass: u.password.clone(),
                    account: acc,
                    nkey: u.nkey.clone(),
                });
            }
        }
        if users.is_empty() && token.is_none() {
            return None; // the hub accepts any leaf
        }
        // An nkey (the remote's seed, or its .creds file's) is checked against nkey users.
        match remote_nkey(remote, &self.nodes[e.leaf].file) {
            Err(why) => {
                f.push(finding(
                    Severity::Warning,
                    format!("{what}: {why}"),
                    &[&remote.pos],
                    "make the file readable to check it",
                ));
                return None;
            }
            Ok(Some(key)) => {
                return match users
                    .iter()
                    .find(|u| u.nkey.as_deref() == Some(key.as_str()))
                {
                    Some(u) => u.account.clone(),
                    None => {
                        refuse(
                            f,
                            format!(
                                "the hub has no nkey user {key} (the remote's nkey or .creds key)"
                            ),
                            "add the public key as an nkey user on the hub, or use the hub's users",
                        );
                        None
                    }
                };
            }
            Ok(None) => {}
        }
        let (user, pass) = match (&e.url.user, &e.url.pass) {
            (None, _) => {
                refuse(
                    f,
                    "the hub requires credentials and the remote presents none".into(),
                    "put user:password (or a token) in the remote URL, or give it credentials",
                );
                return None;
            }
            // `nats-leaf://token@host`: a token when the hub has one.
            (Some(t), None) if token.is_some() => {
                if token.as_deref() != Some(t.as_str()) {
                    refuse(
                        f,
                        "the token in the remote URL is not the hub's".into(),
                        "use the hub's token",
                    );
                }
                return None;
            }
            (Some(u), p) => (u, p),
        };
        let Some(hu) = users.iter().find(|u| !u.user.is_empty() && u.user == *user) else {
            refuse(
                f,
                format!("the hub has no leaf user {user:?}"),
                "add the user to the hub's leafnodes { authorization { users } } or fix the URL",
            );
            return None;
        };
        if let (Some(want), Some(got)) = (&hu.pass, pass) {
            if !want.starts_with("$2") && want != got {
                refuse(
                    f,
                    format!("the password in the remote URL for user {user:?} is not the hub's"),
                    "use the same password on both sides",
                );
            }
        }
        hu.account.clone()
    }

    fn check_leaf_tls(
        &self,
        what: &str,
        e: &LeafEdge,
        remote: &RemoteLeafOpts,
        leaf: &Node,
        hub: &Node,
        f: &mut Vec<Finding>,
    ) {
        let Some(hl) = hub.opts.leafnodes.as_ref() else {
            return;
        };
        let remote_tls = remote.tls.is_some() || e.url.scheme == "tls" || e.url.scheme == "wss";
        match (remote_tls, hl.tls.as_ref()) {
            (false, Some(t)) => {
                let misplaced = leaf.opts.tls.is_some();
                f.push(finding(
                    Severity::Error,
                    format!("{what}: the hub's leafnode port requires TLS and the remote does not use it{}",
                        if misplaced { " (the leaf's top-level tls block applies to its client port, not to remotes: nats-server #2868)" } else { "" }),
                    &[&remote.pos, &t.pos],
                    "add a tls {} block inside the remote (or use a tls:// URL)",
                ));
            }
            (true, None) => f.push(finding(
                Severity::Error,
                format!("{what}: the remote uses TLS and the hub's leafnode port has none: the handshake fails"),
                &[&remote.pos, &hl.pos],
                "add tls {} to the hub's leafnodes block, or drop TLS from the remote",
            )),
            (true, Some(t)) if t.verify && remote.tls.as_ref().is_none_or(|r| r.cert_file.is_none()) => {
                f.push(finding(
                    Severity::Error,
                    format!("{what}: the hub verifies client certificates and the remote presents none"),
                    &[&remote.pos, &t.pos],
                    "give the remote's tls block a cert_file and key_file",
                ));
            }
            _ => {}
        }
    }

    fn check_leaf_js(
        &self,
        what: &str,
        remote: &RemoteLeafOpts,
        leaf: &Node,
        hub: &Node,
        f: &mut Vec<Finding>,
    ) {
        fn js(n: &Node) -> Option<&canopy_conf::JetStreamOpts> {
            n.opts.jetstream.as_ref().filter(|j| j.enabled)
        }
        let domain = |n: &Node| js(n).and_then(|j| j.domain.clone()).unwrap_or_default();
        let (Some(lj), Some(hj)) = (js(leaf), js(hub)) else {
            return;
        };
        let (ld, hd) = (domain(leaf), domain(hub));
        if ld.is_empty() && !hd.is_empty() {
            f.push(finding(
                Severity::Warning,
                format!("{what}: the leaf runs JetStream without a domain under a hub with domain {hd:?} (nats-server #4148: messages published at the leaf while the hub is away are lost)"),
                &[&lj.pos, &hj.pos],
                "give the leaf its own jetstream { domain } and source its streams from the hub",
            ));
        } else if ld == hd {
            let system = remote
                .account
                .as_deref()
                .is_some_and(|a| Some(a) == leaf.opts.system_account.as_deref());
            if !system {
                f.push(finding(
                    Severity::Warning,
                    format!("{what}: both sides use JetStream domain {:?} and the link is not the system account's: neither side reaches the other's JetStream", ld),
                    &[&lj.pos, &hj.pos],
                    "give each side its own domain",
                ));
            }
        }
    }

    fn check_store_dirs(&self, f: &mut Vec<Finding>) {
        let mut by_dir: BTreeMap<PathBuf, Vec<&Node>> = BTreeMap::new();
        for n in &self.nodes {
            if let Some(d) = n
                .opts
                .jetstream
                .as_ref()
                .filter(|j| j.enabled)
                .and_then(|j| j.store_dir.clone())
            {
                by_dir.entry(d).or_default().push(n);
            }
        }
        for (dir, ns) in by_dir.iter().filter(|(_, ns)| ns.len() > 1) {
            let at: Vec<&Pos> = ns
                .iter()
                .filter_map(|n| n.opts.jetstream.as_ref().map(|j| &j.pos))
                .collect();
            let names: Vec<&str> = ns.iter().map(|n| n.name.as_str()).collect();
            f.push(finding(
                Severity::Error,
                format!("JetStream store_dir {} is shared by {}: only one server can lock it (and on one host they would corrupt each other)", dir.display(), names.join(", ")),
                &at,
                "give each server its own store_dir",
            ));
        }
    }

    /// Cycles of leaf links (in the direction they are dialled; a pair that dials each
    /// other is not a loop).
    fn check_loops(&self, f: &mut Vec<Finding>) {
        let n = self.nodes.len();
        let mut adj = vec![Vec::new(); n];
        for e in &self.leafs {
            if !adj[e.leaf].contains(&e.hub) {
                adj[e.leaf].push(e.hub);
            }
        }
        let mut reported: Vec<Vec<usize>> = Vec::new();
        for start in 0..n {
            let mut path = vec![start];
            self.walk(start, &adj, &mut path, &mut reported);
        }
        for cycle in reported {
            let names: Vec<&str> = cycle.iter().map(|&i| self.nodes[i].name.as_str()).collect();
            let at: Vec<&Pos> = cycle
                .iter()
                .filter_map(|&i| self.nodes[i].opts.leafnodes.as_ref().map(|l| &l.pos))
                .collect();
            f.push(finding(
                Severity::Warning,
                format!("leaf loop {} → {}: Canopy's mesh rule keeps it loop-free only when every server on it is canopy-server (and the hubs are regional hubs); nats-server cuts such a link with 'Loop detected'", names.join(" → "), names[0]),
                &at,
                "break the cycle, or run Canopy on every server of it",
            ));
        }
    }

    fn walk(
        &self,
        at: usize,
        adj: &[Vec<usize>],
        path: &mut Vec<usize>,
        out: &mut Vec<Vec<usize>>,
    ) {
        for &next in &adj[at] {
            if next == path[0] && path.len() > 2 {
                let mut c = path.clone();
                // One report per cycle: the rotation that starts at its smallest index.
                let min = c
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, v)| **v)
                    .map_or(0, |(i, _)| i);
                c.rotate_left(min);
                if !out.contains(&c) {
                    out.push(c);
                }
            } else if !path.contains(&next) && path.len() < 16 {
                path.push(next);
                self.walk(next, adj, path, out);
                path.pop();
            }
        }
    }

    fn findings_text(&self) -> String {
        let mut s = String::new();
        for x in &self.findings {
            let sev = match x.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            };
            s.push_str(&format!("{sev}: {}\n", x.message));
            for a in &x.at {
                s.push_str(&format!("  at {a}\n"));
            }
            s.push_str(&format!("  fix: {}\n", x.fix));
        }
        let errors = self
            .findings
            .iter()
            .filter(|x| x.severity == Severity::Error)
            .count();
        s.push_str(&format!(
            "{} servers, {} leaf links, {} routes: {errors} errors, {} warnings\n",
            self.nodes.len(),
            self.leafs.len(),
            self.routes.len(),
            self.findings.len() - errors
        ));
        s
    }

    fn findings_json(&self) -> Value {
        Value::Array(
            self.findings
                .iter()
                .map(|x| {
                    json!({
                        "severity": if x.severity == Severity::Error { "error" } else { "warning" },
                        "message": x.message, "at": x.at, "fix": x.fix,
                    })
                })
                .collect(),
        )
    }

    fn node_label(&self, n: &Node) -> String {
        let mut parts = vec![n.name.clone()];
        if let Some(c) = n.opts.cluster.as_ref().and_then(|c| c.name.clone()) {
            parts.push(format!("cluster {c}"));
        }
        if let Some(j) = n.opts.jetstream.as_ref().filter(|j| j.enabled) {
            parts.push(match &j.domain {
                Some(d) => format!("JetStream domain {d}"),
                None => "JetStream".into(),
            });
        }
        parts.join("\\n")
    }

    fn leaf_label(&self, e: &LeafEdge) -> String {
        let Some(r) = self.nodes[e.leaf]
            .opts
            .leafnodes
            .as_ref()
            .and_then(|l| l.remotes.get(e.remote))
        else {
            return String::new();
        };
        let mut parts = vec![format!("leaf {}", r.account.as_deref().unwrap_or("$G"))];
        if !r.deny_imports.is_empty() {
            parts.push(format!("deny in {}", r.deny_imports.join(" ")));
        }
        if !r.deny_exports.is_empty() {
            parts.push(format!("deny out {}", r.deny_exports.join(" ")));
        }
        parts.join(", ")
    }

    /// Servers by cluster name ("" for servers without a cluster).
    fn clusters(&self) -> BTreeMap<String, Vec<usize>> {
        let mut clusters: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let c = n
                .opts
                .cluster
                .as_ref()
                .and_then(|c| c.name.clone())
                .unwrap_or_default();
            clusters.entry(c).or_default().push(i);
        }
        clusters
    }

    fn mermaid(&self) -> String {
        let mut s = String::from("graph LR\n");
        let clusters = self.clusters();
        for (c, members) in &clusters {
            if !c.is_empty() {
                s.push_str(&format!("  subgraph {}\n", mermaid_id(c)));
            }
            for &i in members {
                let label = self.node_label(&self.nodes[i]).replace("\\n", "<br/>");
                s.push_str(&format!("  n{i}[\"{}\"]\n", label.replace('"', "'")));
            }
            if !c.is_empty() {
                s.push_str("  end\n");
            }
        }
        for r in self.routes.iter().filter(|r| {
            r.from < r.to || !self.routes.iter().any(|o| o.from == r.to && o.to == r.from)
        }) {
            s.push_str(&format!("  n{} ---|route| n{}\n", r.from, r.to));
        }
        for e in &self.leafs {
            s.push_str(&format!(
                "  n{} -->|\"{}\"| n{}\n",
                e.leaf,
                self.leaf_label(e).replace('"', "'"),
                e.hub
            ));
        }
        s
    }

    fn dot(&self) -> String {
        let mut s = String::from("digraph topology {\n  rankdir=LR;\n  node [shape=box];\n");
        let clusters = self.clusters();
        for (k, (c, members)) in clusters.iter().enumerate() {
            if !c.is_empty() {
                s.push_str(&format!(
                    "  subgraph cluster_{k} {{\n    label={};\n",
                    dot_str(c)
                ));
            }
            for &i in members {
                s.push_str(&format!(
                    "    n{i} [label={}];\n",
                    dot_str(&self.node_label(&self.nodes[i]))
                ));
            }
            if !c.is_empty() {
                s.push_str("  }\n");
            }
        }
        for r in &self.routes {
            s.push_str(&format!(
                "  n{} -> n{} [label=\"route\", dir=none, style=dashed];\n",
                r.from, r.to
            ));
        }
        for e in &self.leafs {
            s.push_str(&format!(
                "  n{} -> n{} [label={}];\n",
                e.leaf,
                e.hub,
                dot_str(&self.leaf_label(e))
            ));
        }
        s.push_str("}\n");
        s
    }

    fn graph_json(&self) -> Value {
        json!({
            "servers": self.nodes.iter().map(|n| json!({
                "name": n.name,
                "file": n.file.display().to_string(),
                "cluster": n.opts.cluster.as_ref().and_then(|c| c.name.clone()),
                "jetstream": n.opts.jetstream.as_ref().is_some_and(|j| j.enabled),
                "domain": n.opts.jetstream.as_ref().and_then(|j| j.domain.clone()),
            })).collect::<Vec<_>>(),
            "routes": self.routes.iter().map(|r| json!({
                "from": self.nodes[r.from].name, "to": self.nodes[r.to].name,
            })).collect::<Vec<_>>(),
            "leafs": self.leafs.iter().map(|e| json!({
                "leaf": self.nodes[e.leaf].name, "hub": self.nodes[e.hub].name,
                "url": e.url.hostport(), "label": self.leaf_label(e),
            })).collect::<Vec<_>>(),
        })
    }
}

fn mermaid_id(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn dot_str(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\\\""))
}
