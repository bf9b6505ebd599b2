//! The process: flags, configuration, `-t`, `--signal`, logging, listeners, the ports and
//! pid files, and the signal loop (SIGINT/SIGTERM stop, SIGHUP reload, SIGUSR1 reopen
//! logs, SIGUSR2 lame duck).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use canopy_conf::{Options, Pos};

use crate::process::flags::{self, Flags};
use crate::process::listen::{bind, join_host_port, Bound};
use crate::server::version;
use crate::server::Server;

fn prog_name() -> String {
    std::env::args()
        .next()
        .map(|a| {
            Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or(a)
        })
        .unwrap_or_else(|| "canopy-server".into())
}

fn flag_pos() -> Pos {
    Pos::new("<command line>".into(), 0, 0)
}

/// Loads the config file named by the flags (or defaults) and applies the flags on top.
pub fn load_options(f: &Flags) -> Result<Options, Vec<String>> {
    let mut o = match f.get("config") {
        Some(path) => canopy_conf::load_file(Path::new(path))
            .map_err(|e| e.iter().map(|e| e.to_string()).collect::<Vec<_>>())?,
        None => Options::default(),
    };
    apply_flags(&mut o, f).map_err(|e| vec![e])?;
    o.validate()
        .map_err(|e| e.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    // Operator mode: the operator and preloaded/stored account JWTs must verify, and
    // their imports/exports become configured accounts for the import agent.
    crate::auth::jwt::check_options(&o)?;
    crate::auth::jwt::accounts_from_jwts(&mut o)?;
    crate::services::imports::validate(&o)?;
    crate::core::mapping::validate(&o)?;
    // TLS settings are checked here (files at start and on reload: `TlsSet::build`).
    crate::auth::tls::check(&o).map_err(|e| vec![e.to_string()])?;
    Ok(o)
}

fn parse_num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("invalid value \"{v}\" for flag -{flag}"))
}

/// Command-line flags override the file, as with nats-server.
pub fn apply_flags(o: &mut Options, f: &Flags) -> Result<(), String> {
    for (k, v) in &f.values {
        let v = v.as_str();
        let on = v == "true";
        match *k {
            "addr" => o.host = v.to_string(),
            "port" => o.port = parse_num(k, v)?,
            "name" => o.server_name = Some(v.to_string()),
            "pid" => o.pid_file = Some(PathBuf::from(v)),
            "http_port" => o.http_port = Some(parse_num(k, v)?),
            "https_port" => o.https_port = Some(parse_num(k, v)?),
            "client_advertise" => o.client_advertise = Some(v.to_string()),
            "ports_file_dir" => o.ports_file_dir = Some(PathBuf::from(v)),
            "log" => o.log_file = Some(PathBuf::from(v)),
            "logtime" => o.logtime = on,
            "logtime_utc" => o.logtime_utc = on,
            "syslog" => o.syslog = on,
            "remote_syslog" => o.remote_syslog = Some(v.to_string()),
            "debug" => o.debug = on,
            "trace" => o.trace = on,
            "trace_verbose" => o.trace_verbose = on,
            "log_size_limit" => o.log_size_limit = parse_num(k, v)?,
            "max_traced_msg_len" => o.max_traced_msg_len = parse_num(k, v)?,
            "jetstream" => {
                let js = o
                    .jetstream
                    .get_or_insert_with(|| canopy_conf::JetStreamOpts {
                        pos: flag_pos(),
                        ..Default::default()
                    });
                js.enabled = on;
            }
            "store_dir" => {
                // Client test harnesses pass -sd on every start, with or without JetStream:
                // recording the directory is harmless until JetStream is enabled.
                if let Some(js) = o.jetstream.as_mut() {
                    js.store_dir = Some(PathBuf::from(v));
                } else {
                    let mut js = canopy_conf::JetStreamOpts {
                        pos: flag_pos(),
                        ..Default::default()
                    };
                    js.enabled = false;
                    js.store_dir = Some(PathBuf::from(v));
                    o.jetstream = Some(js);
                }
            }
            "user" => o.authorization.user = Some(v.to_string()),
            "pass" => o.authorization.password = Some(v.to_string()),
            "auth" => o.authorization.token = Some(v.to_string()),
            "tls" | "tlsverify" | "tlscert" | "tlskey" | "tlscacert" => {
                let t = o.tls.get_or_insert_with(|| canopy_conf::TlsConfig {
                    pos: flag_pos(),
                    ..Default::default()
                });
                match *k {
                    "tlsverify" => t.verify = on,
                    "tlscert" => t.cert_file = Some(PathBuf::from(v)),
                    "tlskey" => t.key_file = Some(PathBuf::from(v)),
                    "tlscacert" => t.ca_file = Some(PathBuf::from(v)),
                    _ => {}
                }
            }
            "routes" | "cluster" | "cluster_name" | "cluster_advertise" | "no_advertise"
            | "connect_retries" => {
                let c = o
                    .cluster
                    .get_or_insert_with(|| canopy_conf::ClusterOpts::new(flag_pos()));
                match *k {
                    "routes" => {
                        c.routes = v
                            .split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect()
                    }
                    "cluster" => {
                        let hp = v
                            .split_once("://")
                            .map(|(_, r)| r)
                            .unwrap_or(v)
                            .rsplit('@')
                            .next()
                            .unwrap_or(v);
                        let (h, p) = hp
                            .rsplit_once(':')
                            .ok_or_else(|| format!("invalid cluster url \"{v}\""))?;
                        c.host = h.to_string();
                        c.port = parse_num(k, p)?;
                        c.listen = Some(hp.to_string());
                    }
                    "cluster_name" => c.name = Some(v.to_string()),
                    "cluster_advertise" => c.advertise = Some(v.to_string()),
                    "no_advertise" => c.no_advertise = on,
                    "connect_retries" => c.connect_retries = parse_num(k, v)?,
                    _ => {}
                }
            }
            "profile" => return Err("--profile is not supported by canopy-server".into()),
            _ => {}
        }
    }
    if !f.rest.is_empty() {
        return Err(format!("unexpected arguments: {}", f.rest.join(" ")));
    }
    Ok(())
}

const TLS_HELP: &str = "\
TLS Options:
    --tls                        Enable TLS, do not verify clients (default: false)
    --tlscert <file>             Server certificate file
    --tlskey <file>              Private key for server certificate
    --tlsverify                  Enable TLS, verify client certificates
    --tlscacert <file>           Client certificate CA for verification
";

/// The `canopy-server` entry point. Returns the process exit code.
pub fn main() -> i32 {
    let prog = prog_name();
    let f = match flags::parse(std::env::args().skip(1)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}\n{}", flags::USAGE);
            return 1;
        }
    };
    if f.bool("help") == Some(true) {
        print!("{}", flags::USAGE);
        return 0;
    }
    if f.bool("help_tls") == Some(true) {
        print!("{TLS_HELP}");
        return 0;
    }
    if f.bool("version") == Some(true) {
        // First line as nats-server prints it (launchers parse it to gate features on
        // the server version); then what this binary really is.
        println!("{prog}: v{}", version::NATS_COMPAT_VERSION);
        println!(
            "canopy v{} (implements nats-server v{})",
            version::CANOPY_VERSION,
            version::NATS_COMPAT_VERSION
        );
        return 0;
    }
    if let Some(sig) = f.get("signal") {
        return match crate::process::signal::send(sig, f.get("pid")) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("{prog}: {e}");
                1
            }
        };
    }
    let opts = match load_options(&f) {
        Ok(o) => o,
        Err(errs) => {
            for e in errs {
                eprintln!("{prog}: {e}");
            }
            return 1;
        }
    };
    let warnings = opts.warnings();
    let tls_warnings = crate::auth::tls::warnings(&opts);
    if f.bool("test_config") == Some(true) {
        for w in &warnings {
            println!("{prog}: warning: {w}");
        }
        for w in &tls_warnings {
            println!("{prog}: warning: {w}");
        }
        if let Err(e) = crate::auth::tls::TlsSet::build(&opts) {
            println!("{prog}: warning: {e}; the server refuses to start until this is fixed");
        }
        for (pos, what) in opts.extensions_used() {
            println!("{prog}: {pos}: Canopy extension: {what}");
        }
        let leaf_keys = opts.leafnodes.as_ref().map(leaf_keys_not_implemented);
        for (pos, what) in opts
            .unsupported()
            .into_iter()
            .chain(crate::services::jetstream::unsupported(&opts))
            .chain(leaf_keys.into_iter().flatten())
        {
            println!("{prog}: {pos}: note: {what}; the server refuses to start with it");
        }
        match f.get("config") {
            Some(c) => println!("{prog}: configuration file {c} is valid"),
            None => println!("{prog}: configuration is valid"),
        }
        return 0;
    }
    let mut unsupported = opts.unsupported();
    unsupported.extend(crate::services::jetstream::unsupported(&opts));
    if let Some(lo) = &opts.leafnodes {
        unsupported.extend(leaf_keys_not_implemented(lo));
    }
    if let Some(canopy_conf::ResolverOpts::Dir(d)) = &opts.resolver {
        if d.allow_delete {
            unsupported.push((
                d.pos.clone(),
                "resolver allow_delete ($SYS.REQ.CLAIMS.DELETE) is not supported yet".into(),
            ));
        }
        if !d.ttl.is_zero() {
            unsupported.push((
                d.pos.clone(),
                "resolver ttl (cache expiry) is not supported yet".into(),
            ));
        }
    }
    // Export/import options the import agent does not act on are refused, not ignored
    // (config accounts only: in operator mode the accounts come from JWTs).
    let config_accounts = if opts.operators.is_empty() {
        opts.accounts.as_slice()
    } else {
        &[]
    };
    for acc in config_accounts {
        for e in &acc.exports {
            if let canopy_conf::Export::Service {
                latency,
                account_token_position,
                allow_trace,
                pos,
                ..
            } = e
            {
                let mut what = Vec::new();
                if latency.is_some() {
                    what.push("latency");
                }
                if account_token_position.is_some() {
                    what.push("account_token_position");
                }
                if *allow_trace {
                    what.push("allow_trace");
                }
                if !what.is_empty() {
                    unsupported.push((
                        pos.clone(),
                        format!(
                            "service export option(s) {} in account {} are not supported yet",
                            what.join(", "),
                            acc.name
                        ),
                    ));
                }
            }
        }
        for i in &acc.imports {
            if let canopy_conf::Import::Service {
                share: true, pos, ..
            } = i
            {
                unsupported.push((
                    pos.clone(),
                    format!(
                        "service import option share in account {} is not supported yet",
                        acc.name
                    ),
                ));
            }
        }
    }
    if !unsupported.is_empty() {
        for (pos, what) in unsupported {
            eprintln!("{prog}: {pos}: {what} (not implemented yet)");
        }
        return 1;
    }
    if let Err(e) = crate::server::logging::init(
        opts.debug,
        opts.trace,
        opts.logtime,
        opts.logtime_utc,
        opts.log_file.as_deref(),
    ) {
        eprintln!("{prog}: cannot open log file: {e}");
        return 1;
    }
    crate::server::logging::set_rotation(opts.log_size_limit, opts.log_max_files);
    crate::server::logging::set_max_traced(opts.max_traced_msg_len);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    for w in &tls_warnings {
        tracing::warn!("{w}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{prog}: cannot start runtime: {e}");
            return 1;
        }
    };
    let links = match crate::process::links::start() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{prog}: cannot start runtime: {e}");
            return 1;
        }
    };
    let res = rt.block_on(run_server(opts, f, prog));
    // Exit at once: tasks still parked (reconnect timers, services) are not waited for.
    rt.shutdown_background();
    links.shutdown_background();
    match res {
        Ok(()) => 0,
        Err(e) => {
            crate::server::logging::fatal(&format!("{e:#}"));
            1
        }
    }
}

fn fmt_hostport(a: &SocketAddr) -> String {
    a.to_string()
}

/// Starts the server and serves until a stop signal.
pub async fn run_server(opts: Options, f: Flags, prog: String) -> anyhow::Result<()> {
    let server = Server::new(opts.clone());
    tracing::info!("Starting nats-server");
    tracing::info!("  Version:  {}", version::NATS_COMPAT_VERSION);
    tracing::info!("  Canopy:   {}", version::CANOPY_VERSION);
    tracing::info!("  Git:      [not set]");
    tracing::info!("  Name:     {}", server.name);
    tracing::info!("  ID:       {}", server.id);
    if let Some(c) = &opts.config_file {
        tracing::info!("Using configuration file: {}", c.display());
    }
    server.set_tls(crate::auth::tls::TlsSet::build(&opts)?);
    // Before the listeners: the first client already finds JetStream.
    let jetstream = crate::services::jetstream::start(&server)?;
    let mut monitoring_urls = Vec::new();
    // The accept loops: each owns its listener, so ending the task closes the socket.
    let mut listeners: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    if let Some(hp) = opts.http_port {
        let host = opts.http_host.clone().unwrap_or_else(|| opts.host.clone());
        let Bound { listener: l, addr } = bind(&host, hp).await.map_err(|e| {
            anyhow::anyhow!("Can't start monitoring: can't listen to the monitor port: {e}")
        })?;
        *server.http_addr.lock() = Some(addr);
        tracing::info!("Starting http monitor on {}", fmt_hostport(&addr));
        monitoring_urls.push(format!("http://{}", fmt_hostport(&addr)));
        listeners.push(tokio::spawn(crate::monitor::serve(server.clone(), l)));
    }
    if let Some(hp) = opts.https_port {
        let host = opts.http_host.clone().unwrap_or_else(|| opts.host.clone());
        let Bound { listener: l, addr } = bind(&host, hp).await.map_err(|e| {
            anyhow::anyhow!("Can't start monitoring: can't listen to the monitor port: {e}")
        })?;
        tracing::info!("Starting https monitor on {}", fmt_hostport(&addr));
        monitoring_urls.push(format!("https://{}", fmt_hostport(&addr)));
        listeners.push(tokio::spawn(crate::monitor::serve_https(server.clone(), l)));
    }
    let mut prometheus_url = None;
    if let Some(p) = &opts.prometheus {
        let Bound {
            listener: l,
            addr: paddr,
        } = bind(&p.host, p.port)
            .await
            .map_err(|e| anyhow::anyhow!("Can't start prometheus metrics: {e}"))?;
        tracing::info!("Starting prometheus metrics on {paddr}");
        prometheus_url = Some(format!("http://{paddr}/metrics"));
        listeners.push(tokio::spawn(crate::monitor::metrics::serve_metrics(
            server.clone(),
            l,
        )));
    }
    let Bound { listener, addr } = bind(&opts.host, opts.port).await.map_err(|e| {
        let hp = join_host_port(&opts.host, opts.port.max(0) as u16);
        anyhow::anyhow!("Error listening on port: {hp}, {e:?}")
    })?;
    *server.client_addr.lock() = Some(addr);
    tracing::info!(
        "Listening for client connections on {}:{}",
        opts.host,
        addr.port()
    );
    if let Some(t) = &opts.tls {
        tracing::info!("TLS required for client connections");
        if t.verify {
            tracing::info!("Client certificates are required and verified");
        }
        if opts.allow_non_tls {
            tracing::warn!("Clients that do not use TLS are allowed (allow_non_tls)");
        }
    }
    listeners.push(tokio::spawn(crate::roles::client::accept_clients(
        server.clone(),
        listener,
    )));

    let mut ws_url = None;
    if let Some(w) = opts.websocket.as_ref().filter(|w| w.port != 0) {
        let host = w.host.clone().unwrap_or_else(|| "0.0.0.0".into());
        let Bound { listener: l, addr } = bind(&host, w.port)
            .await
            .map_err(|e| anyhow::anyhow!("Unable to listen for websocket connections: {e}"))?;
        *server.ws_addr.lock() = Some(addr);
        let scheme = if w.tls.is_some() { "wss" } else { "ws" };
        tracing::info!(
            "Listening for websocket clients on {scheme}://{}",
            join_host_port(&host, addr.port())
        );
        if w.tls.is_none() {
            tracing::warn!("Websocket not configured with TLS. DO NOT USE IN PRODUCTION!");
        }
        let shown = if host == "0.0.0.0" || host == "::" {
            "127.0.0.1".to_string()
        } else {
            host.clone()
        };
        ws_url = Some(format!(
            "{scheme}://{}",
            join_host_port(&shown, addr.port())
        ));
        listeners.push(tokio::spawn(crate::roles::websocket::accept_websocket(
            server.clone(),
            l,
        )));
    }
    let mut leaf_url = None;
    if let Some(lo) = opts.leafnodes.as_ref().filter(|l| l.port != 0) {
        let Bound {
            listener: l,
            addr: laddr,
        } = bind(&lo.host, lo.port).await.map_err(|e| {
            anyhow::anyhow!("Error listening on leafnode port: {} - {e}", lo.port.max(0))
        })?;
        tracing::info!(
            "Listening for leafnode connections on {}:{}",
            lo.host,
            laddr.port()
        );
        leaf_url = Some(format!(
            "nats-leaf://{}:{}",
            if lo.host == "0.0.0.0" || lo.host == "::" {
                "127.0.0.1"
            } else {
                lo.host.as_str()
            },
            laddr.port()
        ));
        *server.leaf_url.lock() = leaf_url.clone();
        *server.leaf_addr.lock() = Some(laddr);
        listeners.push(tokio::spawn(crate::roles::leaf::accept_leafs(
            server.clone(),
            l,
        )));
    }
    let mut route_url = None;
    if let Some(c) = &opts.cluster {
        *server.cluster.name.lock() = c.name.clone().unwrap_or_default();
        if c.port != 0 {
            let Bound {
                listener: l,
                addr: raddr,
            } = bind(&c.host, c.port).await.map_err(|e| {
                anyhow::anyhow!("Error listening on router port: {} - {e}", c.port.max(0))
            })?;
            let url = match &c.advertise {
                Some(a) => format!("nats-route://{a}/"),
                None => format!(
                    "nats-route://{}:{}/",
                    if c.host == "0.0.0.0" || c.host == "::" {
                        "127.0.0.1"
                    } else {
                        c.host.as_str()
                    },
                    raddr.port()
                ),
            };
            *server.cluster.url.lock() = url.clone();
            *server.route_addr.lock() = Some(raddr);
            tracing::info!("Cluster name is {}", server.cluster_name());
            tracing::info!(
                "Listening for route connections on {}:{}",
                c.host,
                raddr.port()
            );
            route_url = Some(url.trim_end_matches('/').to_string());
            // On the links runtime, which the accepted connections then register with.
            let l = l.into_std()?;
            let s = server.clone();
            listeners.push(crate::process::links::handle().spawn(async move {
                match tokio::net::TcpListener::from_std(l) {
                    Ok(l) => crate::roles::route::accept_routes(s, l).await,
                    Err(e) => tracing::error!("Error listening for route connections: {e}"),
                }
            }));
        }
        server.start_routes();
    }
    crate::roles::leaf::start_remotes(&server);
    crate::services::system::start(server.clone());
    crate::services::system::start_claims(server.clone());
    crate::services::imports::start(server.clone());

    let pid = std::process::id();
    if let Some(p) = &opts.pid_file {
        std::fs::write(p, pid.to_string())
            .map_err(|e| anyhow::anyhow!("Could not write pidfile {}: {e}", p.display()))?;
    }
    let mut ports_file = None;
    if let Some(dir) = &opts.ports_file_dir {
        let host = if opts.host == "0.0.0.0" || opts.host == "::" {
            "127.0.0.1".to_string()
        } else {
            opts.host.clone()
        };
        let mut ports = serde_json::json!({
            "nats": [format!("nats://{host}:{}", addr.port())],
            "monitoring": monitoring_urls,
        });
        if let Some(u) = &leaf_url {
            ports["leafnode"] = serde_json::json!([u]);
        }
        if let Some(u) = &route_url {
            ports["cluster"] = serde_json::json!([u]);
        }
        if let Some(u) = &ws_url {
            ports["websocket"] = serde_json::json!([u]);
        }
        if let Some(u) = &prometheus_url {
            ports["prometheus"] = serde_json::json!([u]);
        }
        let path = dir.join(format!("{prog}_{pid}.ports"));
        std::fs::write(&path, ports.to_string())
            .map_err(|e| anyhow::anyhow!("Error writing ports file {}: {e}", path.display()))?;
        ports_file = Some(path);
    }
    tracing::info!("Server is ready");

    crate::process::signal::wait(server.clone(), f).await;
    tracing::info!("Initiating Shutdown...");
    // As nats-server: listeners first (a client that sees its connection close and
    // reconnects at once is refused, not accepted by a server about to vanish), then
    // the connections, then exit as soon as their sockets are shut.
    server.accepting.cancel();
    for l in &listeners {
        l.abort();
    }
    for l in listeners {
        let _ = l.await;
    }
    server.shutdown_now();
    if let Some(js) = &jetstream {
        js.shutdown();
    }
    // Writers flush what was queued and shut their sockets; bounded by the writers'
    // own closing deadlines.
    server
        .wait_connections_closed(std::time::Duration::from_secs(3))
        .await;
    if let Some(p) = ports_file {
        let _ = std::fs::remove_file(p);
    }
    if let Some(p) = &opts.pid_file {
        let _ = std::fs::remove_file(p);
    }
    tracing::info!("Server Exiting..");
    Ok(())
}

/// Parsed nats-server leaf node keys the leaf role does not act on yet: refused at start
/// (and named by `-t`), not silently ignored.
fn leaf_keys_not_implemented(lo: &canopy_conf::LeafNodeOpts) -> Vec<(canopy_conf::Pos, String)> {
    let mut out = Vec::new();
    for (keys, set, what) in [
        (
            &["write_deadline", "write_timeout"][..],
            lo.write_deadline.is_some(),
            "leafnodes.write_deadline",
        ),
        (
            &["min_version"][..],
            lo.min_version.is_some(),
            "leafnodes.min_version",
        ),
        (
            &["isolate_leafnode_interest", "isolate"][..],
            lo.isolate_leafnode_interest,
            "leafnodes.isolate_leafnode_interest",
        ),
    ] {
        if set {
            let pos = keys
                .iter()
                .find_map(|k| lo.key_pos.get(*k))
                .unwrap_or(&lo.pos);
            out.push((pos.clone(), format!("{what} is not supported yet")));
        }
    }
    for r in &lo.remotes {
        if r.isolate_leafnode_interest {
            let pos = ["isolate_leafnode_interest", "isolate"]
                .iter()
                .find_map(|k| r.key_pos.get(*k))
                .unwrap_or(&r.pos);
            out.push((
                pos.clone(),
                "leafnodes.remotes[].isolate_leafnode_interest is not supported yet".into(),
            ));
        }
    }
    out
}
