//! What the backend learns about the client: identity headers byte for byte as nginx (compared
//! against the openssl CLI on the same certificates), and nothing a client could invent.

use std::path::Path;
use std::process::Command;

use http::Request;

use crate::common::*;

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end_matches('\n')
        .to_string()
}

/// `openssl x509 -noout -<what> -nameopt RFC2253`, the reference for nginx's `$ssl_client_s_dn`.
fn openssl_dn(cert: &Path, what: &str) -> String {
    let out = openssl(&[
        "x509",
        "-in",
        cert.to_str().unwrap(),
        "-noout",
        &format!("-{what}"),
        "-nameopt",
        "RFC2253",
    ]);
    out.strip_prefix(&format!("{what}="))
        .unwrap_or(&out)
        .to_string()
}

fn our_dn(cert: &Path) -> (String, String) {
    let pem = std::fs::read(cert).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(&pem)
        .map(|d: rustls_pki_types::CertificateDer<'static>| d)
        .unwrap();
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    (
        certgate::tls::identity::format_dn(c.subject()),
        certgate::tls::identity::format_dn(c.issuer()),
    )
}

/// Subjects with every RFC 2253 special, leading/trailing spaces and `#`, multi-valued RDNs,
/// emailAddress, DC/UID, and non-ASCII UTF-8: certgate's DN equals openssl's byte for byte.
#[test]
fn dn_formatting_matches_openssl_rfc2253() {
    let dir = scratch_dir("dn");
    let subjects: &[(&str, bool)] = &[
        (
            "/C=CN/ST=Beijing/L=Beijing/O=FaceAnalysis/OU=Admin/CN=admin@face.analyze",
            false,
        ),
        ("/O=Acme, Inc./OU=R&D; Labs <x>/CN=quote\"q", false),
        ("/CN=a\\+b=c/OU=back\\\\slash", false),
        ("/CN=#hash/OU= lead and trail /O=#/L= ", false),
        ("/CN=张小明/O=人脸分析/OU=Ünïcödé", false),
        ("/emailAddress=admin@face.analyze/CN=mail", false),
        ("/DC=com/DC=example/UID=u1/CN=dc user", false),
        (
            "/serialNumber=42/title=Dr/GN=Xiao/SN=Zhang/CN=full name",
            false,
        ),
        ("/O=org/CN=multi+OU=valued+UID=x", true),
    ];
    for (i, (subj, multi)) in subjects.iter().enumerate() {
        let cert = dir.join(format!("c{i}.crt"));
        let key = dir.join(format!("c{i}.key"));
        let mut args = vec![
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-utf8",
            "-subj",
            subj,
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ];
        if *multi {
            args.push("-multivalue-rdn");
        }
        openssl(&args);
        let (subject, issuer) = our_dn(&cert);
        assert_eq!(subject, openssl_dn(&cert, "subject"), "subject {subj}");
        assert_eq!(issuer, openssl_dn(&cert, "issuer"), "issuer {subj}");
    }
}

/// The headers the backend receives for a real client over the proxy equal what openssl says
/// about the same certificate: DNs, serial, SHA-256 fingerprint, and the URL-encoded PEM.
#[tokio::test]
async fn identity_headers_match_openssl() {
    let pki = test_pki();
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    for (name, id) in [("alice", &pki.alice), ("zhang", &pki.zhang)] {
        let got = get_once(proxy.addr, client_config(Some(id), &[]), "/who").await;
        assert_eq!(got.status, 200);
        let seen = backend.seen().pop().unwrap();
        let file = pki.dir.join(format!("{name}.crt"));
        let h = |n: &str| seen.headers[n].to_str().unwrap().to_string();
        assert_eq!(h("x-ssl-client-verify"), "SUCCESS");
        assert_eq!(h("x-ssl-client-dn"), openssl_dn(&file, "subject"));
        assert_eq!(h("x-ssl-client-i-dn"), openssl_dn(&file, "issuer"));
        let serial = openssl(&["x509", "-in", file.to_str().unwrap(), "-noout", "-serial"]);
        assert_eq!(format!("serial={}", h("x-ssl-client-serial")), serial);
        let fp = openssl(&[
            "x509",
            "-in",
            file.to_str().unwrap(),
            "-noout",
            "-fingerprint",
            "-sha256",
        ]);
        let fp = fp
            .rsplit('=')
            .next()
            .unwrap()
            .replace(':', "")
            .to_lowercase();
        assert_eq!(h("x-ssl-client-fingerprint"), fp);
        let pem = percent_encoding::percent_decode_str(&h("x-ssl-client-cert"))
            .decode_utf8()
            .unwrap()
            .into_owned();
        assert_eq!(
            pem,
            std::fs::read_to_string(&file)
                .unwrap()
                .replace("\r\n", "\n")
        );
    }
    assert_eq!(
        backend.seen()[0].headers["x-ssl-client-dn"],
        "CN=admin@face.analyze,OU=Admin,O=FaceAnalysis,L=Beijing,ST=Beijing,C=CN"
    );
    assert_eq!(
        backend.seen()[1].headers["x-ssl-client-dn"],
        "CN=\\E5\\BC\\A0\\E5\\B0\\8F\\E6\\98\\8E,O=\\E4\\BA\\BA\\E8\\84\\B8\\E5\\88\\86\\E6\\9E\\90"
    );
}

/// Spoofed identity and forwarding headers: every spelling and case, duplicated, underscored,
/// the well-known aliases, and names listed in `Connection`.
const SPOOFS: &[(&str, &str)] = &[
    ("X-SSL-Client-DN", "CN=admin"),
    ("x-ssl-client-dn", "CN=root"),
    ("X_SSL_Client_DN", "CN=underscore"),
    ("X-SSL-CLIENT-VERIFY", "SUCCESS"),
    ("x_ssl_client_verify", "SUCCESS"),
    ("X-SSL-Client-I-DN", "CN=fake CA"),
    ("X-SSL-Client-Cert", "fake"),
    ("X-SSL-Client-Serial", "01"),
    ("X-SSL-Client-Fingerprint", "00"),
    ("X-SSL-Client-S-DN-CN", "admin"),
    ("X-Real-IP", "10.0.0.1"),
    ("X_Real_IP", "10.0.0.2"),
    ("X-Forwarded-For", "10.0.0.3"),
    ("X-Forwarded-Proto", "http"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-Port", "80"),
    ("Forwarded", "for=10.0.0.4"),
    ("X-Forwarded-Client-Cert", "Hash=00;Subject=\"CN=admin\""),
    ("Client-Cert", ":AAAA:"),
    ("Client-Cert-Chain", ":AAAA:"),
    ("X-Forwarded-Tls-Client-Cert", "fake"),
    ("X-Forwarded-Tls-Client-Cert-Info", "fake"),
    ("Ssl-Client-Subject-Dn", "CN=admin"),
    ("SSL_CLIENT_VERIFY", "SUCCESS"),
    ("X-Gradio-Server", "http://evil"),
];

fn assert_only_proxy_values(seen: &Seen) {
    let h = &seen.headers;
    let one = |n: &str| {
        let all: Vec<_> = h.get_all(n).iter().collect();
        assert_eq!(all.len(), 1, "{n}: {all:?}");
        all[0].to_str().unwrap().to_string()
    };
    assert_eq!(
        one("x-ssl-client-dn"),
        "CN=admin@face.analyze,OU=Admin,O=FaceAnalysis,L=Beijing,ST=Beijing,C=CN"
    );
    assert_eq!(one("x-ssl-client-verify"), "SUCCESS");
    assert_eq!(one("x-ssl-client-i-dn"), "CN=certgate test CA");
    assert_eq!(one("x-real-ip"), "127.0.0.1");
    assert_eq!(one("x-forwarded-for"), "127.0.0.1");
    assert_eq!(one("x-forwarded-proto"), "https");
    for name in h.keys() {
        let n = name.as_str().replace('_', "-");
        assert!(
            !n.starts_with("ssl-client")
                && !matches!(
                    n.as_str(),
                    "forwarded"
                        | "x-forwarded-port"
                        | "x-forwarded-client-cert"
                        | "client-cert"
                        | "client-cert-chain"
                        | "x-forwarded-tls-client-cert"
                        | "x-forwarded-tls-client-cert-info"
                        | "x-gradio-server"
                        | "x-ssl-client-s-dn-cn"
                        | "x-custom-hop"
                ),
            "spoofable header {name} reached the backend: {h:?}"
        );
        assert!(
            !name.as_str().contains('_'),
            "underscored {name} reached the backend"
        );
    }
    for (name, value) in h {
        for (_, spoof) in SPOOFS {
            assert!(
                value.to_str().unwrap() != *spoof || name == "x-ssl-client-verify",
                "spoofed value {spoof:?} reached the backend in {name}"
            );
        }
    }
}

#[tokio::test]
async fn spoofed_headers_never_reach_the_backend_http1() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    let mut send = h1(proxy.addr, alice()).await;
    let mut req = Request::get("/spoof").header("host", "localhost");
    for (k, v) in SPOOFS {
        req = req.header(*k, *v);
    }
    // Listed in Connection: hop-by-hop, must not be forwarded, and must not be a way to delete
    // the proxy's own headers either.
    req = req
        .header("connection", "X-Custom-Hop, X-SSL-Client-Verify, X-Real-IP")
        .header("x-custom-hop", "1");
    let resp = send.send_request(req.body(empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_only_proxy_values(&backend.only());
}

#[tokio::test]
async fn spoofed_headers_never_reach_the_backend_http2() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    let mut send = h2(proxy.addr, client_config(Some(&test_pki().alice), &["h2"])).await;
    let mut req = Request::get(format!("https://localhost:{}/spoof", proxy.addr.port()));
    for (k, v) in SPOOFS {
        req = req.header(*k, *v);
    }
    let resp = send.send_request(req.body(empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_only_proxy_values(&backend.only());
}

/// Gradio builds file URLs from the Host it was reached by: the port must survive, for HTTP/1.1
/// (Host) and HTTP/2 (:authority) clients alike.
#[tokio::test]
async fn host_and_forwarded_host_keep_the_port() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(backend.addr, "").await;
    let authority = format!("localhost:{}", proxy.addr.port());
    let mut send = h1(proxy.addr, alice()).await;
    let req = Request::get("/h1")
        .header("host", &authority)
        .body(empty())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
    let mut send = h2(proxy.addr, client_config(Some(&test_pki().alice), &["h2"])).await;
    let req = Request::get(format!("https://{authority}/h2"))
        .body(empty())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
    for seen in backend.seen() {
        assert_eq!(seen.headers["host"], authority.as_str());
        assert_eq!(seen.headers["x-forwarded-host"], authority.as_str());
        assert_eq!(seen.version, http::Version::HTTP_11, "{}", seen.target);
    }
}
