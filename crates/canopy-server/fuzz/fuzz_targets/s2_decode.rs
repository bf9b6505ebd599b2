//! The S2 stream decoder of leaf links (`auth/s2.rs`), which runs before the peer has
//! authenticated: never a panic, nothing allocated beyond its fixed bounds, whatever the
//! bytes and however they are split across reads. A prefix byte picks the split size.
#![no_main]

use bytes::BytesMut;
use canopy_server::auth::s2::S2Decoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let piece = usize::from(split).max(1);
    let mut dec = S2Decoder::default();
    let mut src = BytesMut::new();
    for chunk in data.chunks(piece) {
        src.extend_from_slice(chunk);
        loop {
            match dec.decode(&mut src) {
                Ok(Some(block)) => assert!(block.len() <= 4 << 20),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
