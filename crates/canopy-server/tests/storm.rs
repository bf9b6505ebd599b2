//! Connection storms, black box: many clients at once against one listener, and many
//! leaf remotes reconnecting to a hub that restarts.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use canopy_testkit::ServerProcess;

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
