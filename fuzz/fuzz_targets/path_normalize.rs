//! Path normalization never panics, is idempotent, and leaves no `.`/`..`/empty segment and
//! no encoded separator in what it forwards.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(n) = certgate::routes::normalize(s) {
        let out = n.as_str();
        assert!(out.starts_with('/'));
        let again = certgate::routes::normalize(out).expect("normalized output must normalize");
        assert_eq!(again.as_str(), out, "not idempotent");
        let lower = out.to_ascii_lowercase();
        assert!(!lower.contains("%2f") && !lower.contains("%5c") && !out.contains('\\'));
        let inner = out.trim_start_matches('/').trim_end_matches('/');
        if !inner.is_empty() {
            for seg in inner.split('/') {
                assert!(!seg.is_empty() && seg != "." && seg != "..", "bad segment in {out}");
            }
        }
    }
});
