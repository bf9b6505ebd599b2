//! Connection storms, black box: many clients at once against one listener, and many
//! leaf remotes reconnecting to a hub that restarts.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use canopy_testkit::{assert_eventually, ServerProcess};

/// Raises this process's open-file limit (inherited by the servers it starts) to at least
/// `want`, within the hard limit.
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit struct.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}

/// 2,000 clients connect at the same moment: every one gets INFO and a PONG (the listen
/// backlog is the kernel's `somaxconn`, not 128, so the accept queue does not overflow).
#[test]
fn connection_storm_all_get_info_and_pong() {
    const N: usize = 2000;
    let limit = raise_nofile(2 * N as u64 + 512);
    if limit < N as u64 + 256 {
        eprintln!("skipping: open-file limit {limit} is too low for {N} connections");
        return;
    }
    let server = ServerProcess::canopy("port: -1\nhttp: 127.0.0.1:-1\n").unwrap();
    let addr = server.addr();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let t0 = Instant::now();
    let results = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(N));
        let mut tasks = Vec::with_capacity(N);
        for _ in 0..N {
            let addr = addr.clone();
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                let one = async {
                    let mut s = tokio::net::TcpStream::connect(&addr).await?;
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !got.windows(2).any(|w| w == b"\r\n") {
                        let n = s.read(&mut buf).await?;
                        anyhow::ensure!(n > 0, "closed before INFO");
                        got.extend_from_slice(&buf[..n]);
                    }
                    anyhow::ensure!(got.starts_with(b"INFO "), "expected INFO");
                    s.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
                        .await?;
                    got.clear();
                    while !got.windows(6).any(|w| w == b"PONG\r\n") {
                        let n = s.read(&mut buf).await?;
                        anyhow::ensure!(n > 0, "closed before PONG");
                        got.extend_from_slice(&buf[..n]);
                    }
                    Ok::<_, anyhow::Error>(s)
                };
                tokio::time::timeout(Duration::from_secs(20), one).await
            }));
        }
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        for t in tasks {
            match t.await {
                Ok(Ok(Ok(s))) => ok.push(s),
                Ok(Ok(Err(e))) => failed.push(e.to_string()),
                Ok(Err(_)) => failed.push("no INFO/PONG within 20s".into()),
                Err(e) => failed.push(e.to_string()),
            }
        }
        (ok.len(), failed)
    });
    let secs = t0.elapsed().as_secs_f64();
    let (ok, failed) = results;
    assert!(
        failed.is_empty(),
        "{ok} of {N} clients got INFO and PONG in {secs:.1}s; {} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    eprintln!("{N} simultaneous clients served in {secs:.2}s");
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after ')'.
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("VmRSS"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

fn leafnodes(s: &ServerProcess) -> u64 {
    s.monitor("/leafz")
        .ok()
        .and_then(|v| v["leafnodes"].as_u64())
        .unwrap_or(0)
}

/// Waits until `s` has `n` leaf connections; returns how long it took.
fn wait_leafs(s: &ServerProcess, n: u64, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let have = leafnodes(s);
        if have == n {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "only {have} of {n} leaf connections after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A reconnect storm: one leaf server with 500 remotes (each bound to its own account,
/// as 500 leaf servers would be), started before its hub, then the hub killed and
/// restarted. Connect failures are logged once per remote, not per attempt. Every remote
/// is back within a bounded time (remotes retry every second with jitter), and the hub's
/// CPU and memory during the storm stay bounded.
#[test]
fn reconnect_storm_of_500_leaf_remotes() {
    const N: usize = 500;
    raise_nofile(4 * N as u64 + 512);
    let leaf_port = canopy_testkit::free_fixed_port();
    let mut hub_conf = String::from("server_name: hub\nport: -1\nhttp: 127.0.0.1:-1\naccounts {\n");
    let mut users = String::new();
    let mut leaf_conf =
        String::from("server_name: many\nport: -1\nhttp: 127.0.0.1:-1\naccounts {\n");
    let mut remotes = String::new();
    for i in 0..N {
        hub_conf.push_str(&format!("  A{i}: {{}}\n"));
        leaf_conf.push_str(&format!("  A{i}: {{}}\n"));
        users.push_str(&format!(
            "    {{ user: u{i}, password: p{i}, account: A{i} }}\n"
        ));
        remotes.push_str(&format!(
            "    {{ url: \"nats-leaf://u{i}:p{i}@127.0.0.1:{leaf_port}\", account: A{i} }}\n"
        ));
    }
    hub_conf.push_str(&format!(
        "}}\nleafnodes {{\n  listen: \"127.0.0.1:{leaf_port}\"\n  authorization {{ users: [\n{users}  ] }}\n}}\n"
    ));
    leaf_conf.push_str(&format!(
        "}}\nleafnodes {{\n  reconnect: \"1s\"\n  remotes: [\n{remotes}  ]\n}}\n"
    ));
    // The leaf starts first: every remote fails a few times before the hub is there.
    let leaf = ServerProcess::canopy(&leaf_conf).unwrap();
    let min_attempts = || {
        leaf.monitor("/leafz").ok().map_or(0, |v| {
            v["canopy_remotes"].as_array().map_or(0, |r| {
                r.iter()
                    .map(|x| x["attempts"].as_u64().unwrap_or(0))
                    .min()
                    .unwrap_or(0)
            })
        })
    };
    assert_eventually!(
        Duration::from_secs(20),
        min_attempts() >= 3,
        "remotes did not retry"
    );
    let hub = ServerProcess::canopy(&hub_conf).unwrap();
    let first = wait_leafs(&hub, N as u64, Duration::from_secs(30));
    eprintln!("{N} remotes connected in {first:?}");
    // Failed first connects are reported once per remote (then every
    // `connect_error_reports`th attempt, as nats-server), not once per remote per second.
    let errors = leaf
        .log()
        .matches("Error trying to connect as leafnode")
        .count();
    assert!(
        errors <= N + N / 10,
        "{errors} connect errors logged for {N} remotes that each failed 3+ times"
    );

    // The hub goes away hard and comes back on the same leafnode port.
    drop(hub);
    let down = Instant::now();
    let hub = ServerProcess::canopy(&hub_conf).unwrap();
    let pid = hub.pid().unwrap();
    let cpu0 = cpu_secs(pid);
    let back = wait_leafs(&hub, N as u64, Duration::from_secs(20));
    let cpu = cpu_secs(pid) - cpu0;
    let rss = rss_mib(pid);
    eprintln!(
        "{N} remotes back {back:?} after the hub restarted ({:?} after it went down); hub used {cpu:.2}s CPU, RSS {rss} MiB",
        down.elapsed()
    );
    assert!(cpu < 10.0, "hub CPU ran away during the storm: {cpu:.1}s");
    assert!(rss < 256, "hub memory ran away during the storm: {rss} MiB");
    // Stable: nothing flaps once everyone is back.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(leafnodes(&hub), N as u64);
    let varz = leaf.monitor("/varz").unwrap();
    assert_eq!(
        varz["leafnodes"].as_u64(),
        Some(N as u64),
        "leaf side: {varz}"
    );
}
