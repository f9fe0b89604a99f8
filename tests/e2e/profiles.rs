//! Identity header profiles (spec §14): RFC 9440 `Client-Cert` for Keycloak and Vault, Envoy's
//! `X-Forwarded-Client-Cert` for Envoy/Istio-aware services. What the backend receives is
//! decoded by implementations certgate shares nothing with (Python's `http_sfv` and
//! `cryptography`, `tests/e2e/tools/decode_identity.py`) and compared with the certificate.

use std::io::Write as _;
use std::process::{Command, Stdio};

use http::HeaderMap;

use crate::common::*;

/// What the independent decoder makes of the identity headers the backend saw.
fn decode(headers: &HeaderMap) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for name in [
        "client-cert",
        "client-cert-chain",
        "x-forwarded-client-cert",
    ] {
        let all: Vec<_> = headers.get_all(name).iter().collect();
        assert!(all.len() <= 1, "{name} sent {} times", all.len());
        if let Some(v) = all.first() {
            map.insert(name.into(), v.to_str().unwrap().into());
        }
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/e2e/tools/decode_identity.py"
    );
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; run scripts/test", python()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::Value::Object(map).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "decode_identity.py failed (scripts/test installs http-sfv and cryptography):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every profile's headers, in every spelling, as a client might invent them.
const INVENTED: &[(&str, &str)] = &[
    ("client-cert", ":AAAA:"),
    ("client_cert_chain", ":AAAA:"),
    ("x-forwarded-client-cert", "Hash=00;Subject=\"CN=root\""),
    ("X_Forwarded_Client_Cert", "Hash=00"),
    ("x-ssl-client-verify", "SUCCESS"),
    ("X_SSL_Client_DN", "CN=root"),
];

/// `profile = "rfc9440"`: `Client-Cert` is the leaf's DER and `Client-Cert-Chain` the
/// intermediate the client sent, each an RFC 8941 byte sequence; nothing of the nginx profile
/// is sent, and the client's own versions of any profile's headers are gone.
#[tokio::test]
async fn rfc9440_profile_decodes_to_the_certificate_and_chain() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "[headers]\nprofile = \"rfc9440\"\n").await;
    let pki = test_pki();
    let mut send = h1(proxy.addr, client_config(Some(&pki.inter_client), &[])).await;
    assert_eq!(get1(&mut send, "/", INVENTED).await.status, 200);
    let seen = backend.only();
    let decoded = decode(&seen.headers);
    let r = &decoded["rfc9440"];
    assert_eq!(r["cert"], hex(&pki.inter_client.chain[0]), "{decoded}");
    assert_eq!(
        r["chain"],
        serde_json::json!([hex(&pki.intermediate.cert)]),
        "{decoded}"
    );
    assert_eq!(r["parsed"]["subject"], "CN=inter-client");
    assert!(decoded.get("xfcc").is_none(), "{decoded}");
    for (name, _) in INVENTED {
        let n = name.to_ascii_lowercase();
        if n != "client-cert" {
            assert!(!seen.headers.contains_key(n.as_str()), "{name} reached it");
        }
    }

    // A client without intermediates: Client-Cert alone.
    let got = get_once(proxy.addr, alice(), "/").await;
    assert_eq!(got.status, 200);
    let decoded = decode(&backend.seen()[1].headers);
    assert_eq!(decoded["rfc9440"]["cert"], hex(&pki.alice.chain[0]));
    assert!(decoded["rfc9440"].get("chain").is_none(), "{decoded}");
}

/// `profile = "xfcc"`: one element whose Hash is the certificate's SHA-256, whose Cert is its
/// URL-encoded PEM, whose Subject is its DN (commas escaped, quotes as `\22`, quoted), with its
/// URI SAN and each DNS SAN, all parsed by an independent XFCC parser and
/// checked against what `cryptography` reads from the certificate itself.
#[tokio::test]
async fn xfcc_profile_decodes_to_the_certificate() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "[headers]\nprofile = \"xfcc\"\n").await;
    let odd = custom_client(|p| {
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme; Inc");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "Doe, \"J\" <ops>");
        p.subject_alt_names = vec![
            rcgen::SanType::URI("spiffe://example.org/ns/a;b".try_into().unwrap()),
            rcgen::SanType::DnsName("a.example".try_into().unwrap()),
            rcgen::SanType::DnsName("b.example".try_into().unwrap()),
        ];
    });
    let mut send = h1(proxy.addr, client_config(Some(&odd), &[])).await;
    assert_eq!(get1(&mut send, "/", INVENTED).await.status, 200);
    let seen = backend.only();
    let decoded = decode(&seen.headers);
    let x = &decoded["xfcc"];
    assert_eq!(x["elements"], 1, "{decoded}");
    assert_eq!(x["cert"], hex(&odd.chain[0]), "{decoded}");
    assert_eq!(x["hash"], x["cert_sha256"], "{decoded}");
    assert_eq!(
        x["subject_attrs"], x["parsed"]["subject_attrs"],
        "{decoded}"
    );
    // rcgen writes the CN first, so RFC 2253 order (last RDN first) puts O in front; the
    // quotes are written `\22`, the same DN, as a backslash next to a quote reads differently
    // to different XFCC readers.
    assert_eq!(x["subject"], "O=Acme\\; Inc,CN=Doe\\, \\22J\\22 \\<ops\\>");
    assert_eq!(x["envoy_code"]["subject"], x["subject"], "{decoded}");
    assert_eq!(x["uris"], x["parsed"]["uris"], "{decoded}");
    assert_eq!(
        x["uris"],
        serde_json::json!(["spiffe://example.org/ns/a;b"])
    );
    assert_eq!(x["dns"], serde_json::json!(["a.example", "b.example"]));
    assert!(x.get("chain").is_none(), "{decoded}");
    assert!(decoded.get("rfc9440").is_none(), "{decoded}");
    assert!(!seen.headers.contains_key("x-ssl-client-verify"));
    assert!(!seen.headers.contains_key("x-ssl-client-dn"));

    // A client that sends its intermediate: Chain holds leaf and intermediate.
    let pki = test_pki();
    let got = get_once(proxy.addr, client_config(Some(&pki.inter_client), &[]), "/").await;
    assert_eq!(got.status, 200);
    let decoded = decode(&backend.seen()[1].headers);
    assert_eq!(
        decoded["xfcc"]["chain"],
        serde_json::json!([hex(&pki.inter_client.chain[0]), hex(&pki.intermediate.cert)])
    );
}

/// A client's certificate with extra certificates appended after its chain: a self-signed
/// one with a hostile subject, a genuine intermediate of the CA that issued nothing here, and
/// the root itself.
fn padded(id: &Identity) -> Identity {
    let pki = test_pki();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "<script>alert(1)</script>");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let stranger = params.self_signed(&key).unwrap();
    let unused = certgate::pki::issue(
        &certgate::pki::Spec::new(certgate::pki::Profile::Ca, "unused intermediate", 30),
        Some(&pki.ca),
    )
    .unwrap();
    let mut chain = id.chain.clone();
    chain.extend([
        stranger.der().clone(),
        unused.cert.clone(),
        pki.ca.cert.clone(),
    ]);
    Identity {
        chain,
        key: id.key.clone_key(),
    }
}

/// `Client-Cert-Chain` and XFCC `Chain` carry the chain used to validate the certificate
/// (RFC 9440 §2), never other certificates the client sent: with a self-signed
/// `CN=<script>` certificate, an unused intermediate and the root appended, the RFC 9440 chain
/// is the one intermediate of the verified path and XFCC's is the leaf and that intermediate;
/// for a certificate the root issued directly there is no chain at all. Decoded by `http_sfv`
/// and `cryptography`.
#[tokio::test]
async fn forwarded_chains_are_the_verified_path_only() {
    let pki = test_pki();
    let leaf = hex(&pki.inter_client.chain[0]);
    let inter = hex(&pki.intermediate.cert);
    for profile in ["rfc9440", "xfcc"] {
        let backend = Backend::start().await;
        let proxy = Proxy::start(
            backend.addr,
            &format!("[headers]\nprofile = \"{profile}\"\n"),
        )
        .await;
        for (who, id) in [("inter_client", &pki.inter_client), ("alice", &pki.alice)] {
            let got = get_once(proxy.addr, client_config(Some(&padded(id)), &[]), "/").await;
            assert_eq!(got.status, 200, "{profile} {who}: {}", got.body);
            let decoded = decode(&backend.seen().last().unwrap().headers);
            let chain = match (profile, who) {
                ("rfc9440", _) => &decoded["rfc9440"]["chain"],
                _ => &decoded["xfcc"]["chain"],
            };
            let want = match (profile, who) {
                ("rfc9440", "inter_client") => serde_json::json!([inter]),
                ("xfcc", "inter_client") => serde_json::json!([leaf, inter]),
                _ => serde_json::Value::Null,
            };
            assert_eq!(*chain, want, "{profile} {who}: {decoded}");
        }
    }
}

/// XFCC quoting holds against hostile subjects, read by a parser that follows Envoy's grammar
/// exactly (`"` written `\"`, no other escape): a subject ending in a backslash, quotes,
/// commas, semicolons, `=` and an attempt to inject a `DNS=` field each come out as one
/// element whose Subject is the certificate's subject (compared attribute by attribute through
/// an RFC 4514 parser) and whose URI and DNS fields after it are all there. A SAN that XFCC
/// cannot carry unambiguously (quoted, ending in a backslash) leaves the header out.
#[tokio::test]
async fn xfcc_quoting_survives_hostile_subjects() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "[headers]\nprofile = \"xfcc\"\n").await;
    let hostile = [
        ("trailing\\", "Acme"),
        ("plain", "trailing\\"),
        ("two\\\\", "Acme\\"),
        ("a\"b;c=d,e", "\""),
        ("\\\";DNS=evil.example;Subject=\"CN=root", "x=y"),
        ("\\\"", "\\,\\;\\="),
        ("x\";DNS=evil.example;O=\"y", "a\\\\\"b"),
    ];
    for (i, (cn, o)) in hostile.iter().enumerate() {
        let id = custom_client(|p| {
            p.distinguished_name
                .push(rcgen::DnType::OrganizationName, *o);
            p.distinguished_name.push(rcgen::DnType::CommonName, *cn);
            p.subject_alt_names = vec![
                rcgen::SanType::URI("spiffe://example.org/ns/a;b".try_into().unwrap()),
                rcgen::SanType::DnsName("a.example".try_into().unwrap()),
            ];
        });
        let got = get_once(proxy.addr, client_config(Some(&id), &[]), "/").await;
        assert_eq!(got.status, 200, "{cn:?}: {}", got.body);
        let seen = backend.seen();
        let headers = &seen[i].headers;
        let decoded = decode(headers);
        let x = &decoded["xfcc"];
        let raw = headers.get("x-forwarded-client-cert").unwrap();
        assert_eq!(x["elements"], 1, "{cn:?}: {raw:?} {decoded}");
        assert_eq!(x["hash"], x["cert_sha256"], "{cn:?}: {raw:?}");
        assert_eq!(
            x["subject_attrs"], x["parsed"]["subject_attrs"],
            "{cn:?}: {raw:?} {decoded}"
        );
        assert_eq!(
            x["uris"],
            serde_json::json!(["spiffe://example.org/ns/a;b"]),
            "{cn:?}: {raw:?}"
        );
        assert_eq!(
            x["dns"],
            serde_json::json!(["a.example"]),
            "{cn:?}: {raw:?}"
        );
        // Envoy's own reader, which counts the backslashes before a quote, finds the same.
        let code = &x["envoy_code"];
        assert_eq!(code["elements"], 1, "{cn:?}: {raw:?} {decoded}");
        assert_eq!(code["subject"], x["subject"], "{cn:?}: {raw:?}");
        assert_eq!(code["uris"], x["uris"], "{cn:?}: {raw:?}");
        assert_eq!(code["dns"], x["dns"], "{cn:?}: {raw:?}");
    }
    // A URI SAN that must be quoted and ends in a backslash, or holds a backslash before a
    // quote (which the two readings close at different places): no header rather than one
    // that reads otherwise.
    for (i, uri) in [
        "spiffe://example.org/a;b\\",
        "spiffe://a\\\";DNS=evil.example;X=\\\"b",
    ]
    .into_iter()
    .enumerate()
    {
        let id = custom_client(|p| {
            p.distinguished_name.push(rcgen::DnType::CommonName, "uri");
            p.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        });
        let got = get_once(proxy.addr, client_config(Some(&id), &[]), "/").await;
        assert_eq!(got.status, 200, "{}", got.body);
        let seen = backend.seen();
        let headers = &seen[hostile.len() + i].headers;
        assert!(
            !headers.contains_key("x-forwarded-client-cert"),
            "{uri:?}: {headers:?}"
        );
    }
}

/// Without a certificate (`client_auth = "optional"`) the RFC 9440 and XFCC profiles send
/// nothing, and a client's invented versions are still stripped.
#[tokio::test]
async fn profiles_send_nothing_for_a_client_without_a_certificate() {
    let backend = Backend::start().await;
    for profile in ["rfc9440", "xfcc"] {
        let proxy = Proxy::start_with(&test_config(
            backend.addr,
            "client_auth = \"optional\"",
            &format!("[headers]\nprofile = \"{profile}\"\n"),
        ))
        .await;
        let mut send = h1(proxy.addr, client_config(None, &[])).await;
        assert_eq!(get1(&mut send, "/", INVENTED).await.status, 200);
    }
    for seen in backend.seen() {
        for name in [
            "client-cert",
            "client-cert-chain",
            "x-forwarded-client-cert",
        ] {
            assert!(
                !seen.headers.contains_key(name),
                "{name}: {:?}",
                seen.headers
            );
        }
        assert!(!seen.headers.keys().any(|k| k.as_str().contains("ssl")));
    }
}

/// An unknown profile, and a header name set beside a profile that does not use names, are
/// config errors naming the key.
#[test]
fn profile_config_errors_name_the_key() {
    let pki = test_pki();
    let backend: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (extra, key) in [
        ("[headers]\nprofile = \"apache\"\n", "headers.profile"),
        (
            "[headers]\nprofile = \"xfcc\"\nsubject_dn = \"X-DN\"\n",
            "headers.subject_dn",
        ),
    ] {
        let err = certgate::config::Config::from_str(
            &test_config(backend, "", extra),
            &pki.dir.join("certgate.toml"),
        )
        .err()
        .unwrap_or_else(|| panic!("accepted: {extra}"))
        .to_string();
        assert!(err.contains(key), "{err}");
    }
}
