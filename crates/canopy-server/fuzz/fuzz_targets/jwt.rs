//! JWT decoding and verification (operator, account and user claims): any token text must
//! give a value or an error, never a panic.
#![no_main]

use std::collections::HashSet;

use canopy_server::auth::jwt::{decode, verify_account, verify_operator, Claims, UserNats};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let _ = decode::<serde_json::Value>(token);
    let _: Result<Claims<UserNats>, _> = decode(token);
    let _ = verify_operator(token);
    // Trusting the issuer named in the token itself reaches the checks past the
    // signature's key (claims types, limits, exports/imports).
    let mut trusted = HashSet::new();
    if let Ok(c) = decode::<serde_json::Value>(token) {
        trusted.insert(c.iss.clone());
    }
    let _ = verify_account(token, &trusted);
});
