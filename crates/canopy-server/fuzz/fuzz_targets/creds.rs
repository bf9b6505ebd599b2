//! `.creds` files as a leaf remote reads them: the JWT and seed blocks, then the JWT's
//! claims and the seed as an nkey (what signing the nonce needs). Never a panic.
#![no_main]

use canopy_server::auth::jwt::decode;
use canopy_server::roles::leaf::parse_creds;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok((jwt, seed)) = parse_creds(&text) else {
        return;
    };
    assert!(!jwt.is_empty() && seed.starts_with('S'));
    let _ = decode::<serde_json::Value>(&jwt);
    if let Ok(kp) = nkeys::KeyPair::from_seed(&seed) {
        let _ = kp.sign(b"nonce");
    }
});
