//! Path normalization never panics, is idempotent, and leaves no `.`/`..`/empty segment and
//! no encoded separator in what it forwards; and no path that a deny rule lets through reaches
//! the denied prefix at a backend that strips `;parameters` before routing (Tomcat, Spring).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/e2e/servlet_view.rs"]
mod servlet_view;
use servlet_view::parameter_stripping_backend;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(n) = certgate::policy::routes::normalize(s) {
        let deny = [certgate::policy::routes::Route::new("/internal", certgate::policy::routes::Action::Deny).unwrap()];
        if certgate::policy::routes::first_match(&deny, &n).is_none() {
            let seen = parameter_stripping_backend(n.as_str());
            assert!(seen != "/internal" && !seen.starts_with("/internal/"), "{s} reaches {seen}");
        }
        let out = n.as_str();
        assert!(out.starts_with('/'));
        let again = certgate::policy::routes::normalize(out).expect("normalized output must normalize");
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
