//! Property tests: path normalization and DN escaping hold for generated inputs, not just the
//! hand-picked ones.

use certgate::policy::routes::{Action, Route, first_match, normalize};
use proptest::prelude::*;

use crate::servlet_view::parameter_stripping_backend;

/// Path-ish strings: letters, separators, dots, escapes (valid and not), backslashes.
fn pathish() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("/".to_string()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("%2e".to_string()),
            Just("%2E".to_string()),
            Just("%2f".to_string()),
            Just("%5C".to_string()),
            Just("%41".to_string()),
            Just("%".to_string()),
            Just("%zz".to_string()),
            Just("\\".to_string()),
            Just("%00".to_string()),
            "[a-zA-Z0-9_=~-]{1,4}",
            Just("%E5%BC%A0".to_string()),
            Just(";".to_string()),
            Just("%3B".to_string()),
            Just(";jsessionid=1".to_string()),
            Just("internal".to_string()),
            Just("INTERNAL".to_string()),
        ],
        0..16,
    )
    .prop_map(|parts| format!("/{}", parts.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Normalizing twice is normalizing once, and the result has no `.`, `..` or empty
    /// segment and no encoded or raw separator other than `/`.
    #[test]
    fn normalization_is_idempotent_and_clean(p in pathish()) {
        if let Ok(n) = normalize(&p) {
            let out = n.as_str().to_string();
            let again = normalize(&out).expect("normalized output normalizes");
            prop_assert_eq!(again.as_str(), out.as_str());
            let lower = out.to_ascii_lowercase();
            prop_assert!(!lower.contains("%2f") && !lower.contains("%5c") && !out.contains('\\'));
            let inner = out.trim_start_matches('/').trim_end_matches('/');
            if !inner.is_empty() {
                for seg in inner.split('/') {
                    prop_assert!(!seg.is_empty() && seg != "." && seg != "..", "{}", out);
                }
            }
        }
    }

    /// A path that a deny rule matches is never allowed by any spelling of it: random
    /// percent-encoding of its characters, random letter case, extra slashes, `./` and
    /// `x/../` detours. Each spelling is either denied by the rule or refused (400).
    #[test]
    fn no_spelling_escapes_a_deny_rule(
        tail in "[a-z0-9_]{0,6}",
        encode in proptest::collection::vec(any::<bool>(), 32),
        upper in proptest::collection::vec(any::<bool>(), 32),
        detour in proptest::collection::vec(0u8..4, 4),
        params in proptest::collection::vec(0u8..4, 4),
    ) {
        let rules = [Route::new("/gradio_api/info", Action::Deny).unwrap()];
        let target = if tail.is_empty() { "gradio_api/info".to_string() } else { format!("gradio_api/info/{tail}") };
        let mut spelled = String::from("/");
        for (i, seg) in target.split('/').enumerate() {
            match detour[i % detour.len()] {
                1 => spelled.push('/'),
                2 => spelled.push_str("./"),
                3 => spelled.push_str("x/../"),
                _ => {}
            }
            for (j, c) in seg.chars().enumerate() {
                let k = (i * 7 + j) % 32;
                let c = if upper[k] { c.to_ascii_uppercase() } else { c };
                if encode[k] {
                    spelled.push_str(&format!("%{:02X}", c as u32));
                } else {
                    spelled.push(c);
                }
            }
            // Path parameters on the segment, as Tomcat, Jetty and Spring strip them.
            match params[i % params.len()] {
                1 => spelled.push(';'),
                2 => spelled.push_str(";x=1"),
                3 => spelled.push_str("%3Bv"),
                _ => {}
            }
            spelled.push('/');
        }
        spelled.pop();
        // An error means the spelling is refused with 400, which is fine too.
        if let Ok(n) = normalize(&spelled) {
            let m = first_match(&rules, &n);
            prop_assert!(m.is_some(), "{} escaped the rule as {}", spelled, n.as_str());
        }
    }

    /// What certgate forwards never reaches a denied prefix at a backend that strips path
    /// parameters before routing (Tomcat, Jetty, Spring): whenever the deny rule does not
    /// match, that backend's view of the forwarded path is outside the denied prefix too.
    #[test]
    fn a_parameter_stripping_backend_never_sees_a_denied_path(p in pathish()) {
        let rules = [Route::new("/internal", Action::Deny).unwrap()];
        if let Ok(n) = normalize(&p)
            && first_match(&rules, &n).is_none()
        {
            let seen = parameter_stripping_backend(n.as_str());
            prop_assert!(
                seen != "/internal" && !seen.starts_with("/internal/"),
                "{} was forwarded as {} and routed to {}", p, n.as_str(), seen
            );
        }
    }

    /// DN value escaping round-trips: unescaping what certgate writes (RFC 2253 `\c` and `\XX`)
    /// gives the original bytes back, and the escaped form has no unescaped special.
    #[test]
    fn dn_escaping_round_trips(value in "\\PC{0,24}") {
        let escaped = certgate::tls::identity::escape_value(&value);
        prop_assert!(escaped.is_ascii());
        let mut out = Vec::new();
        let b = escaped.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' {
                let next = b[i + 1];
                if next.is_ascii_hexdigit() && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit) && !matches!(next, b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' | b'#' | b' ') {
                    out.push(u8::from_str_radix(&escaped[i + 1..i + 3], 16).unwrap());
                    i += 3;
                } else {
                    out.push(next);
                    i += 2;
                }
            } else {
                prop_assert!(!matches!(b[i], b',' | b'+' | b'"' | b';' | b'<' | b'>'), "unescaped special in {}", escaped);
                out.push(b[i]);
                i += 1;
            }
        }
        prop_assert_eq!(out, value.as_bytes().to_vec());
    }
}
