//! Config parsing never panics on any text, and every problem it reports has a key or position.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    match certgate::config::Config::from_str(s, std::path::Path::new("/nonexistent/fuzz.toml")) {
        Ok(_) => {}
        Err(certgate::config::ConfigError::Invalid(problems)) => assert!(!problems.is_empty()),
        Err(_) => {}
    }
});
