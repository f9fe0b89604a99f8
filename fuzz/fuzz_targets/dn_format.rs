//! DN formatting never panics on any DER a client could present as a name.
#![no_main]
use libfuzzer_sys::fuzz_target;
use x509_parser::prelude::FromDer;

fuzz_target!(|data: &[u8]| {
    if let Ok((_, name)) = x509_parser::x509::X509Name::from_der(data) {
        let s = certgate::tls::identity::format_dn(&name);
        // Whatever the input, the result must be a valid header value.
        assert!(http::HeaderValue::from_str(&s).is_ok() || s.is_empty(), "{s:?}");
    }
    let _ = certgate::tls::identity::ClientIdentity::from_der(data);
});
