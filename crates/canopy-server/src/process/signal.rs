//! Signals: handling them in the server, and `--signal` sending them to a running one.

use std::sync::Arc;

use canopy_conf::{AccountConfig, Export, Import, Pos};
use tokio::signal::unix::{signal, SignalKind};

use crate::process::flags::Flags;
use crate::server::Server;

/// Serves signals until the server should stop (SIGINT/SIGTERM, or lame duck finished).
pub async fn wait(server: Arc<Server>, flags: Flags) {
    let (Ok(mut int), Ok(mut term), Ok(mut hup), Ok(mut usr1), Ok(mut usr2), Ok(mut quit)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
        signal(SignalKind::user_defined2()),
        signal(SignalKind::quit()),
    ) else {
        tracing::error!("cannot install signal handlers");
        server.shutdown.cancelled().await;
        return;
    };
    loop {
        tokio::select! {
            _ = int.recv() => { tracing::debug!("Trapped \"interrupt\" signal"); return; }
            _ = term.recv() => { tracing::debug!("Trapped \"terminated\" signal"); return; }
            _ = quit.recv() => { tracing::debug!("Trapped \"quit\" signal"); return; }
            _ = hup.recv() => reload(&server, &flags),
            _ = usr1.recv() => { crate::server::logging::reopen(); tracing::info!("Reopened log file"); }
            _ = usr2.recv() => { tokio::spawn(server.clone().lame_duck()); }
            _ = server.shutdown.cancelled() => return,
        }
    }
}

/// Re-reads the configuration and applies what may change while running.
pub fn reload(server: &Arc<Server>, flags: &Flags) {
    match try_reload(server, flags) {
        Ok(()) => tracing::info!("Reloaded server configuration"),
        Err(e) => tracing::error!("Failed to reload server configuration: {e}"),
    }
}

fn try_reload(server: &Arc<Server>, flags: &Flags) -> Result<(), String> {
    let new = crate::process::run::load_options(flags).map_err(|e| e.join("; "))?;
    let old = server.opts();
    let mut fixed = Vec::new();
    if new.host != old.host || new.port != old.port {
        fixed.push("listen");
    }
    if new.server_name != old.server_name {
        fixed.push("server_name");
    }
    if new.http_port != old.http_port || new.http_host != old.http_host {
        fixed.push("http_port");
    }
    if new.cluster != old.cluster {
        fixed.push("cluster");
    }
    if new.leafnodes != old.leafnodes {
        fixed.push("leafnodes");
    }
    let names = |o: &canopy_conf::Options| {
        let mut v: Vec<String> = o.accounts.iter().map(|a| a.name.clone()).collect();
        v.sort();
        v
    };
    if names(&new) != names(&old) {
        fixed.push("accounts");
    }
    if !fixed.is_empty() {
        return Err(format!(
            "config reload not supported for {}",
            fixed.join(", ")
        ));
    }
    // Mappings are compiled into the accounts at start.
    let unmapped = |ms: &[canopy_conf::Mapping]| -> Vec<canopy_conf::Mapping> {
        ms.iter()
            .cloned()
            .map(|mut m| {
                m.pos = Pos::default();
                m
            })
            .collect()
    };
    let mappings_changed = unmapped(&new.mappings) != unmapped(&old.mappings)
        || new.accounts.iter().any(|a| {
            old.account(&a.name)
                .is_some_and(|b| unmapped(&a.mappings) != unmapped(&b.mappings))
        });
    if mappings_changed {
        return Err("config reload not supported for mappings".into());
    }
    // The import agent is built at start from the imports and exports; until it can be
    // rebuilt live, a change to them is refused rather than reported as applied.
    let changed: Vec<&str> = new
        .accounts
        .iter()
        .filter(|a| {
            old.account(&a.name)
                .is_some_and(|b| !same_imports_exports(a, b))
        })
        .map(|a| a.name.as_str())
        .collect();
    if !changed.is_empty() {
        return Err(format!(
            "config reload not supported for accounts: imports/exports of {} changed",
            changed
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !new.unsupported().is_empty() {
        let what: Vec<String> = new
            .unsupported()
            .into_iter()
            .map(|(p, w)| format!("{p}: {w}"))
            .collect();
        return Err(what.join("; "));
    }
    // Certificates are re-read (rotation); existing connections keep their session.
    let tls = crate::auth::tls::TlsSet::build(&new).map_err(|e| e.to_string())?;
    crate::server::logging::set_rotation(new.log_size_limit, new.log_max_files);
    crate::server::logging::set_max_traced(new.max_traced_msg_len);
    server.set_tls(tls);
    server.apply_reload(new);
    Ok(())
}

/// True when two versions of an account import and export the same (positions in the
/// file aside).
fn same_imports_exports(a: &AccountConfig, b: &AccountConfig) -> bool {
    fn imports(v: &[Import]) -> Vec<Import> {
        v.iter()
            .cloned()
            .map(|mut i| {
                match &mut i {
                    Import::Stream { pos, .. } | Import::Service { pos, .. } => {
                        *pos = Pos::default()
                    }
                }
                i
            })
            .collect()
    }
    fn exports(v: &[Export]) -> Vec<Export> {
        v.iter()
            .cloned()
            .map(|mut e| {
                match &mut e {
                    Export::Stream { pos, .. } | Export::Service { pos, .. } => {
                        *pos = Pos::default()
                    }
                }
                e
            })
            .collect()
    }
    imports(&a.imports) == imports(&b.imports) && exports(&a.exports) == exports(&b.exports)
}

/// `--signal <cmd>[=<pid>]`: sends the matching signal to a running server.
pub fn send(spec: &str, pid_file: Option<&str>) -> Result<(), String> {
    let (cmd, pid) = match spec.split_once('=') {
        Some((c, p)) => (c, Some(p.to_string())),
        None => (spec, None),
    };
    let sig = match cmd {
        "stop" | "term" => libc::SIGTERM,
        "quit" => libc::SIGINT,
        "reopen" => libc::SIGUSR1,
        "reload" => libc::SIGHUP,
        "ldm" => libc::SIGUSR2,
        "kill" => libc::SIGKILL,
        _ => return Err(format!("unknown signal \"{cmd}\"")),
    };
    let pid = match pid {
        Some(p) => p,
        None => match pid_file {
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read pid file {f}: {e}"))?
                .trim()
                .to_string(),
            None => find_pid()?,
        },
    };
    // A pid may also be given as a path to a pid file.
    let pid = if pid.chars().all(|c| c.is_ascii_digit()) {
        pid
    } else {
        std::fs::read_to_string(&pid)
            .map_err(|e| format!("cannot read pid file {pid}: {e}"))?
            .trim()
            .to_string()
    };
    let n: i32 = pid.parse().map_err(|_| format!("invalid pid \"{pid}\""))?;
    kill(n, sig)
}

#[allow(unsafe_code)]
fn kill(pid: i32, sig: i32) -> Result<(), String> {
    // SAFETY: kill(2) takes plain integers and has no memory-safety preconditions.
    let r = unsafe { libc::kill(pid, sig) };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "failed to signal pid {pid}: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// Finds the single running process with our executable name (as nats-server does with
/// pgrep when no pid is given). Both the name we were started under (`nats-server`, the
/// image's alias) and the real executable's name (`canopy-server`) count.
fn find_pid() -> Result<String, String> {
    let me = std::process::id();
    let base = |p: &std::path::Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut names = vec![base(&exe)];
    if let Some(arg0) = std::env::args_os().next() {
        let n = base(std::path::Path::new(&arg0));
        if !n.is_empty() && !names.contains(&n) {
            names.push(n);
        }
    }
    // /proc/<pid>/comm holds at most 15 bytes of the name.
    let matches = |comm: &str| {
        names
            .iter()
            .any(|n| comm == n || (comm.len() == 15 && n.starts_with(comm)))
    };
    let name = names.join(" or ");
    let mut found = Vec::new();
    let dir = std::fs::read_dir("/proc").map_err(|e| e.to_string())?;
    for ent in dir.flatten() {
        let fname = ent.file_name();
        let Some(pid) = fname.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
            if matches(comm.trim()) {
                found.push(pid.to_string());
            }
        }
    }
    match found.len() {
        0 => Err(format!("no {name} process running")),
        1 => Ok(found.remove(0)),
        _ => Err(format!(
            "multiple {name} processes running:\n{}",
            found.join("\n")
        )),
    }
}
