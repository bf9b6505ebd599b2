//! The fuzz target's checks on stable: the record, sidecar, snapshot and consumer-state
//! decoders on random bytes and on valid encodings with one byte changed or cut short
//! never panic, and a flipped byte is always detected.

use canopy_store::record::{decode, encode_msg, MsgFields};
use canopy_store::sidecar::{Sidecar, Snapshot, SubjectSummary};
use canopy_store::ConsumerState;
use proptest::prelude::*;

fn sidecar() -> Sidecar {
    Sidecar {
        base: 5,
        seg_len: 300,
        last_rec: Some((250, 7)),
        max_ts: 9,
        subjects: vec![SubjectSummary {
            name: "a.b".into(),
            first: 5,
            last: 7,
            msgs: 2,
        }],
        slots: vec![(0, 40, 0), (0, 0, u32::MAX), (80, 40, 0)],
        deleted: vec![(6, 6)],
        tombstones: vec![(1, 3)],
        ttls: vec![(7, 100)],
    }
}

fn all_decoders(b: &[u8]) {
    let _ = decode(b);
    let _ = Sidecar::decode(b);
    let _ = Snapshot::decode(b);
    let _ = ConsumerState::decode(b);
}

proptest! {
    #[test]
    fn random_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..300)) {
        all_decoders(&b);
    }

    #[test]
    fn damaged_encodings_are_rejected(i in any::<prop::sample::Index>(), x in 1..=255u8) {
        let mut rec = Vec::new();
        encode_msg(&mut rec, &MsgFields { seq: 3, ts: 4, subject: "s.t", hdr: b"h", payload: b"p", ttl: Some(1) });
        let snap = Snapshot { first: 1, last: 9, open: sidecar(), ..Default::default() };
        for good in [rec, sidecar().encode(), snap.encode()] {
            let mut bad = good.clone();
            let k = i.index(bad.len());
            bad[k] ^= x;
            prop_assert!(decode(&bad).is_err() || k >= good.len());
            prop_assert!(Sidecar::decode(&bad).is_err());
            prop_assert!(Snapshot::decode(&bad).is_err());
            all_decoders(&good[..k]);
        }
    }
}

#[test]
fn sidecar_and_snapshot_round_trip() {
    assert_eq!(Sidecar::decode(&sidecar().encode()), Ok(sidecar()));
    let snap = Snapshot {
        first: 1,
        last: 9,
        deleted: vec![(2, 4)],
        open: sidecar(),
        ..Default::default()
    };
    assert_eq!(Snapshot::decode(&snap.encode()), Ok(snap));
}
