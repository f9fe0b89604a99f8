//! Header sanitizing: whatever headers a client sends, none of the names certgate owns
//! survives with a client's value, and nothing panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    certgate::fuzz_sanitize(data);
});
