//! canopy-raft on an in-memory transport: elections, proposals, failures, restarts.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use canopy_raft::{Peer, ProposeError};
use common::{entry, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_elect_and_propose() {
    let c = Cluster::start(&["a", "b", "c"], 1000).await;
    let l = c.leader(&["a", "b", "c"]).await;
    let g = c.group(&l);
    let mut want = Vec::new();
    let mut last = 0;
    for i in 0..10 {
        let (idx, answer) = g.propose(Bytes::from(entry(i))).await.expect("propose");
        assert!(idx > last, "indexes grow: {idx} after {last}");
        assert_eq!(answer, Bytes::from(format!("ok{idx}")));
        last = idx;
        want.push(entry(i));
    }
    c.wait_applied(&["a", "b", "c"], &want).await;

    let s = g.status();
    assert!(s.is_leader);
    assert!(s.leader_since.is_some());
    assert_eq!(s.leader.as_ref().map(|p| p.name.as_str()), Some(l.as_str()));
    assert_eq!(s.last_index, last);
    assert_eq!(s.committed, last);
    assert_eq!(s.applied, last);
    assert_eq!(s.replicas.len(), 3);
    assert!(s.replicas.iter().all(|r| r.voter));
    // Followers converge on the leader's index; the leader has heard from them.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = g.status();
        if s.replicas
            .iter()
            .all(|r| r.matched == last && r.lag == 0 && r.last_seen.is_some())
        {
            break;
        }
        assert!(Instant::now() < deadline, "replicas: {:?}", s.replicas);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in ["a", "b", "c"] {
        let w = c.group(n).leader_watch();
        assert_eq!(w.borrow().as_ref().map(|p| p.name.clone()), Some(l.clone()));
        if n != l {
            let s = c.group(n).status();
            assert!(!s.is_leader && s.leader_since.is_none());
            assert!(s.replicas.iter().all(|r| r.last_seen.is_none()));
        }
    }
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proposal_on_a_follower_names_the_leader() {
    let c = Cluster::start(&["a", "b", "c"], 1000).await;
    let l = c.leader(&["a", "b", "c"]).await;
    let f = ["a", "b", "c"]
        .into_iter()
        .find(|n| *n != l)
        .expect("follower");
    match c.group(f).propose(Bytes::from_static(b"x")).await {
        Err(ProposeError::NotLeader { leader: Some(p) }) => assert_eq!(p, Peer::new(&l)),
        other => panic!("expected NotLeader, got {other:?}"),
    }
    match c.group(f).ensure_leader().await {
        Err(ProposeError::NotLeader { leader: Some(p) }) => assert_eq!(p.name, l),
        other => panic!("expected NotLeader, got {other:?}"),
    }
    c.group(&l).ensure_leader().await.expect("leader confirms");
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bootstrap_is_idempotent_and_state_survives_restart() {
    let c = Cluster::start(&["a", "b", "c"], 1000).await;
    let members: Vec<Peer> = ["a", "b", "c"].iter().map(|n| Peer::new(n)).collect();
    let l = c.leader(&["a", "b", "c"]).await;
    for n in ["a", "b", "c"] {
        assert!(c.group(n).initialized());
        c.group(n).bootstrap(members.clone()).await.expect("again");
    }
    let mut want = Vec::new();
    want.extend(c.propose_range(&l, 0..5).await);
    c.wait_applied(&["a", "b", "c"], &want).await;
    let f = ["a", "b", "c"]
        .into_iter()
        .find(|n| *n != l)
        .expect("follower");
    // Down, the others go on; back up (same application state), it catches up.
    let sm = c.stop(f).await;
    let others: Vec<&str> = ["a", "b", "c"].into_iter().filter(|n| *n != f).collect();
    let l2 = c.leader(&others).await;
    want.extend(c.propose_range(&l2, 5..15).await);
    let g = c.open(f, Some(sm)).await;
    assert!(g.initialized());
    g.bootstrap(members.clone())
        .await
        .expect("no-op on a resumed member");
    c.wait_applied(&["a", "b", "c"], &want).await;
    assert_eq!(
        c.sm(f).restores.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_cut_off_loses_nothing_committed() {
    let all = ["a", "b", "c"];
    let c = Cluster::start(&all, 1000).await;
    let old = c.leader(&all).await;
    let mut want = Vec::new();
    want.extend(c.propose_range(&old, 0..5).await);
    c.wait_applied(&all, &want).await;

    c.net.cut(&old);
    let g_old = c.group(&old);
    let pending = tokio::spawn(async move { g_old.propose(Bytes::from_static(b"lost")).await });
    let others: Vec<&str> = all.into_iter().filter(|n| *n != old).collect();
    let new = c.leader(&others).await;
    assert_ne!(new, old);
    want.extend(c.propose_range(&new, 5..10).await);
    c.net.heal(&old);
    let res = pending.await.expect("join");
    assert!(
        matches!(
            res,
            Err(ProposeError::NoQuorum | ProposeError::NotLeader { .. })
        ),
        "the cut-off leader's proposal must fail: {res:?}"
    );
    c.wait_applied(&all, &want).await;
    assert!(c.sm(&old).entries().iter().all(|e| e != b"lost"));
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compacted_log_catches_up_by_snapshot() {
    let all = ["a", "b", "c"];
    let c = Cluster::start(&all, 10).await;
    let l = c.leader(&all).await;
    let f = all.into_iter().find(|n| *n != l).expect("follower");
    let mut want = Vec::new();
    want.extend(c.propose_range(&l, 0..3).await);
    c.wait_applied(&all, &want).await;
    let sm = c.stop(f).await;
    want.extend(c.propose_range(&l, 3..60).await);
    // The leader snapshotted and dropped the log the stopped follower still needs.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !c.dir_of(&l).join("snapshot.bin").exists() {
        assert!(Instant::now() < deadline, "no snapshot on the leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.open(f, Some(sm)).await;
    let others: Vec<&str> = all.into_iter().filter(|n| *n != f).collect();
    c.wait_applied(&others, &want).await;
    c.wait_applied(&[f], &want).await;
    assert!(
        c.sm(f).restores.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "the follower was caught up by a snapshot"
    );
    // And it is a full member again: it follows further proposals.
    c.group(&l)
        .propose(Bytes::from(entry(60)))
        .await
        .expect("propose");
    want.push(entry(60));
    c.wait_applied(&all, &want).await;
    c.shutdown_all().await;
}

/// openraft follows each commit with an empty append that carries only the commit index.
/// An empty append right behind one the follower accepted is answered without a round trip,
/// so proposals made one at a time cost one append per follower each (plus heartbeats), and
/// the followers still learn the last commit (from the heartbeat after the quiet spell).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commit_notices_ride_on_the_next_append() {
    let all = ["a", "b", "c"];
    let c = Cluster::start(&all, 1000).await;
    let l = c.leader(&all).await;
    let g = c.group(&l);
    let mut want = vec![entry(0)];
    g.propose(Bytes::from(entry(0))).await.expect("propose");
    const N: usize = 100;
    let before = c.net.calls.load(std::sync::atomic::Ordering::Relaxed);
    let t0 = Instant::now();
    for i in 1..=N {
        g.propose(Bytes::from(entry(i))).await.expect("propose");
        want.push(entry(i));
    }
    let calls = c.net.calls.load(std::sync::atomic::Ordering::Relaxed) - before;
    // Two followers: an append each per proposal, and at most the heartbeats of the time it
    // took (50 ms apart in these tests). Sending every commit notice doubles the appends.
    let beats = 2 * (t0.elapsed().as_millis() as usize / 50 + 2);
    assert!(
        calls <= 2 * N + beats,
        "{calls} RPCs for {N} proposals one at a time (allowed {})",
        2 * N + beats
    );
    c.wait_applied(&all, &want).await;
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_commit_with_two_down_not_three() {
    let all = ["a", "b", "c", "d", "e"];
    let c = Cluster::start(&all, 1000).await;
    let l = c.leader(&all).await;
    let down: Vec<&str> = all.into_iter().filter(|n| *n != l).take(3).collect();
    c.net.cut(down[0]);
    c.net.cut(down[1]);
    let (idx, _) = c
        .group(&l)
        .propose(Bytes::from_static(b"with three"))
        .await
        .expect("a quorum of 3 out of 5 commits");
    assert!(idx > 0);
    c.net.cut(down[2]);
    let t = Instant::now();
    let mut res = Ok((0, Bytes::new()));
    // The first proposal may still see the quorum of a moment ago; give it two tries.
    for _ in 0..2 {
        res = c.group(&l).propose(Bytes::from_static(b"with two")).await;
        if res.is_err() {
            break;
        }
    }
    assert!(
        matches!(res, Err(ProposeError::NoQuorum)),
        "expected NoQuorum, got {res:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "bounded: {:?}",
        t.elapsed()
    );
    // What is appended but not committed is no replica's lag (nats-server's count).
    let st = c.group(&l).status();
    assert!(st.last_index > st.committed, "{st:?}");
    for r in &st.replicas {
        assert_eq!(r.lag, st.committed.saturating_sub(r.matched), "{st:?}");
    }
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn set_voters_scales_one_three_one() {
    let c = Cluster::start(&["a"], 1000).await;
    c.open("b", None).await;
    c.open("c", None).await;
    assert!(!c.group("b").initialized());
    assert_eq!(c.leader(&["a"]).await, "a");
    let a = c.group("a");
    a.propose(Bytes::from(entry(0))).await.expect("alone");
    let three: Vec<Peer> = ["a", "b", "c"].iter().map(|n| Peer::new(n)).collect();
    a.set_voters(three).await.expect("scale up");
    let s = a.status();
    assert_eq!(s.replicas.iter().filter(|r| r.voter).count(), 3);
    a.propose(Bytes::from(entry(1))).await.expect("three");
    c.wait_applied(&["a", "b", "c"], &[entry(0), entry(1)])
        .await;
    assert!(c.group("b").initialized());

    a.set_voters(vec![Peer::new("a")])
        .await
        .expect("scale down");
    let s = a.status();
    assert_eq!(s.replicas.len(), 1, "{:?}", s.replicas);
    // Alone again: b and c being cut off does not matter.
    c.net.cut("b");
    c.net.cut("c");
    a.propose(Bytes::from(entry(2))).await.expect("alone again");
    c.wait_applied(&["a"], &[entry(0), entry(1), entry(2)])
        .await;
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn step_down_moves_leadership() {
    let all = ["a", "b", "c"];
    let c = Cluster::start(&all, 1000).await;
    let l = c.leader(&all).await;
    c.group(&l)
        .propose(Bytes::from(entry(0)))
        .await
        .expect("propose");
    let target = all.into_iter().find(|n| *n != l).expect("follower");
    let l2 = step_down_until_moved(&c, &all, &l, Some(target)).await;
    assert_ne!(l2, l);
    // Without a named target, and again right away.
    let l3 = step_down_until_moved(&c, &all, &l2, None).await;
    assert_ne!(l3, l2);
    c.group(&l3)
        .propose(Bytes::from(entry(1)))
        .await
        .expect("propose after");
    c.wait_applied(&all, &[entry(0), entry(1)]).await;
    match c.group(&l2).step_down(None).await {
        Err(ProposeError::NotLeader { .. }) => {}
        other => panic!("a follower cannot step down: {other:?}"),
    }
    c.shutdown_all().await;
}

/// Asks `from` to step down (towards `target`) and returns the new leader. The tests'
/// timeouts are short (150–300 ms elections): on a loaded machine the election a step-down
/// starts can miss its deadline, and then it is asked again (at most five times: CI once
/// saw three misses in a row), as an operator would, unless leadership moved anyway.
async fn step_down_until_moved(
    c: &Cluster,
    all: &[&str],
    from: &str,
    target: Option<&str>,
) -> String {
    const ATTEMPTS: u32 = 5;
    for attempt in 1..=ATTEMPTS {
        match c.group(from).step_down(target.map(Peer::new)).await {
            Ok(()) => return c.leader(all).await,
            Err(ProposeError::Fatal(e)) if attempt < ATTEMPTS => {
                let now = c.leader(all).await;
                if now != from {
                    return now;
                }
                eprintln!("step down attempt {attempt}: {e}; asking again");
                for n in all {
                    let s = c.group(n).status();
                    eprintln!(
                        "  {n}: leader {:?}, term {}, last {}, committed {}, applied {}",
                        s.leader.map(|p| p.name),
                        s.term,
                        s.last_index,
                        s.committed,
                        s.applied
                    );
                }
            }
            Err(e) => panic!("step down: {e:?}"),
        }
    }
    unreachable!("the last attempt returns or panics")
}

fn last_segment(c: &Cluster, node: &str) -> std::path::PathBuf {
    std::fs::read_dir(c.dir_of(node).join("log"))
        .expect("log dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .max()
        .expect("a segment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn torn_log_tail_after_a_crash_reopens() {
    let c = Cluster::start(&["a"], 1000).await;
    c.leader(&["a"]).await;
    let mut want = Vec::new();
    want.extend(c.propose_range("a", 0..5).await);
    c.stop("a").await;

    // A crash while writing a record: half of a record after the last whole one.
    let seg = last_segment(&c, "a");
    let mut b = std::fs::read(&seg).expect("read");
    let whole = b.len();
    let tail: Vec<u8> = b[whole - 20..].to_vec();
    b.extend_from_slice(&tail);
    std::fs::write(&seg, &b).expect("write");
    let g = c.open("a", Some(c_sm_with(&want))).await;
    assert_eq!(c.leader(&["a"]).await, "a");
    g.propose(Bytes::from_static(b"after"))
        .await
        .expect("propose after recovery");
    want.push(b"after".to_vec());
    c.wait_applied(&["a"], &want).await;
    c.stop("a").await;

    // The log cut in the middle of its last record, and the application state lost with
    // the applied index: the torn record is gone, everything before it is applied again.
    let seg = last_segment(&c, "a");
    let len = std::fs::metadata(&seg).expect("meta").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open");
    f.set_len(len - 5).expect("truncate");
    drop(f);
    std::fs::remove_file(c.dir_of("a").join("applied.json")).expect("rm applied");
    let g = c.open("a", None).await;
    assert_eq!(c.leader(&["a"]).await, "a");
    want.pop();
    c.wait_applied(&["a"], &want).await;
    g.propose(Bytes::from_static(b"again"))
        .await
        .expect("propose");
    want.push(b"again".to_vec());
    c.wait_applied(&["a"], &want).await;
    c.shutdown_all().await;
}

/// A state machine that already applied `entries` (at their indexes in a fresh group).
fn c_sm_with(entries: &[Vec<u8>]) -> std::sync::Arc<common::MemSm> {
    let sm = common::MemSm::default();
    // Index 0 is the membership, 1 the leader's blank entry.
    *sm.applied.lock() = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (i as u64 + 2, e.clone()))
        .collect();
    std::sync::Arc::new(sm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volatile_state_machine_is_rebuilt_on_open() {
    let c = Cluster::start(&["a"], 10).await;
    c.leader(&["a"]).await;
    let mut want = Vec::new();
    want.extend(c.propose_range("a", 0..25).await);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !c.dir_of("a").join("snapshot.bin").exists() {
        assert!(Instant::now() < deadline, "no snapshot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.stop("a").await;
    let fresh = std::sync::Arc::new(common::MemSm {
        volatile: true,
        ..Default::default()
    });
    c.open("a", Some(fresh.clone())).await;
    c.wait_applied(&["a"], &want).await;
    assert_eq!(fresh.restores.load(std::sync::atomic::Ordering::Relaxed), 1);
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn step_down_with_five_voters() {
    let all = ["a", "b", "c", "d", "e"];
    let c = Cluster::start(&all, 1000).await;
    let l = c.leader(&all).await;
    c.group(&l)
        .propose(Bytes::from(entry(0)))
        .await
        .expect("propose");
    let l2 = step_down_until_moved(&c, &all, &l, None).await;
    assert_ne!(l2, l);
    c.group(&l2)
        .propose(Bytes::from(entry(1)))
        .await
        .expect("propose after");
    c.wait_applied(&all, &[entry(0), entry(1)]).await;
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_rpc_bodies_are_errors() {
    let c = Cluster::start(&["a"], 1000).await;
    c.leader(&["a"]).await;
    let g = c.group("a");
    let bodies: [&[u8]; 5] = [
        b"",
        b"\xff\xff\xff\xff",
        b"\x05\x00\x00\x00{}{}{",
        b"{\"vote\":1}",
        &[0u8; 64],
    ];
    for kind in [
        canopy_raft::RpcKind::AppendEntries,
        canopy_raft::RpcKind::Vote,
        canopy_raft::RpcKind::InstallSnapshot,
        canopy_raft::RpcKind::TimeoutNow,
    ] {
        for b in bodies {
            assert!(
                g.handle_rpc(kind, Bytes::copy_from_slice(b)).await.is_err(),
                "{kind:?} accepted {b:?}"
            );
        }
    }
    // Still healthy.
    g.propose(Bytes::from_static(b"ok")).await.expect("propose");
    c.shutdown_all().await;
}

/// A follower that fell behind gets its missing entries in AppendEntries no larger than
/// the transport carries (a route closes on a message over `max_payload`): the leader's
/// batch of up to `max_payload_entries` entries goes out in parts. Without the split the
/// catch-up RPC failed again and again and the follower never caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catch_up_fits_the_transport() {
    let all = ["a", "b", "c"];
    let c = Cluster::start(&all, 100_000).await;
    let l = c.leader(&all).await;
    let f = all.into_iter().find(|n| *n != l).expect("follower");
    let sm = c.stop(f).await;
    let mut want = Vec::new();
    for i in 0..300 {
        let e = format!("{i:>200}").into_bytes();
        c.group(&l)
            .propose(Bytes::from(e.clone()))
            .await
            .expect("propose");
        want.push(e);
    }
    // 300 entries of 200 bytes are ~60 KB in one catch-up RPC; allow 8 KB.
    c.net
        .max_body
        .store(8 << 10, std::sync::atomic::Ordering::Relaxed);
    c.open(f, Some(sm)).await;
    c.wait_applied(&[f], &want).await;
    c.shutdown_all().await;
}
