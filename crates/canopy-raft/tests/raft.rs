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
    for i in 0..5 {
        c.group(&l)
            .propose(Bytes::from(entry(i)))
            .await
            .expect("propose");
        want.push(entry(i));
    }
    c.wait_applied(&["a", "b", "c"], &want).await;
    let f = ["a", "b", "c"]
        .into_iter()
        .find(|n| *n != l)
        .expect("follower");
    // Down, the others go on; back up (same application state), it catches up.
    let sm = c.stop(f).await;
    let others: Vec<&str> = ["a", "b", "c"].into_iter().filter(|n| *n != f).collect();
    let l2 = c.leader(&others).await;
    for i in 5..15 {
        c.group(&l2)
            .propose(Bytes::from(entry(i)))
            .await
            .expect("propose");
        want.push(entry(i));
    }
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
