//! Fuzz target: the config parser and option builder must never panic on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(src) = std::str::from_utf8(data) {
        let _ = canopy_conf::parse_str(src, "fuzz.conf");
        if let Ok(opts) = canopy_conf::from_str(src, "fuzz.conf") {
            let _ = opts.validate();
            let _ = opts.warnings();
            let _ = opts.unsupported();
        }
    }
});
