//! The test PKI, made once per test run with certgate's own `pki` module: a root CA, an
//! intermediate, the server, and clients that are valid, intermediate-issued, expired, not yet
//! valid, revoked, issued by another CA with a copied DN, and a server-only certificate.

use std::path::PathBuf;
use std::sync::OnceLock;

use certgate::pki::{self, Issued, Profile, Revoked, San, Spec};
use rcgen::{DnType, DnValue};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

/// A client identity: chain (leaf first) and key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    fn new(issued: &Issued, extra_chain: &[&Issued]) -> Identity {
        let mut chain = vec![issued.cert.clone()];
        chain.extend(extra_chain.iter().map(|i| i.cert.clone()));
        Identity {
            chain,
            key: issued.key_der(),
        }
    }

    /// Writes the leaf certificate and the key as `dir/NAME.crt` and `dir/NAME.key` (PEM), for
    /// clients that read files (Python, openssl); returns their paths.
    pub fn write_pem(&self, dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(
            &cert,
            pem::encode(&pem::Pem::new("CERTIFICATE", self.chain[0].to_vec())),
        )
        .unwrap();
        std::fs::write(
            &key,
            pem::encode(&pem::Pem::new(
                "PRIVATE KEY",
                self.key.secret_der().to_vec(),
            )),
        )
        .unwrap();
        (cert, key)
    }
}

pub struct TestPki {
    /// Folder with ca.crt, ca-bundle.crt, ca.crl, server.crt, server.key and each client's
    /// NAME.crt / NAME.key.
    pub dir: PathBuf,
    pub ca: Issued,
    pub intermediate: Issued,
    pub other_ca: Issued,
    /// `C=CN, ST=Beijing, L=Beijing, O=FaceAnalysis, OU=Admin, CN=admin@face.analyze`.
    pub alice: Identity,
    /// Issued by the intermediate; sends the intermediate along.
    pub inter_client: Identity,
    pub expired: Identity,
    pub not_yet_valid: Identity,
    pub revoked: Identity,
    /// Same DN as `alice`, from a CA whose DN copies ours.
    pub impostor: Identity,
    /// A serverAuth-only certificate from our CA.
    pub server_only: Identity,
    /// CN with Chinese characters.
    pub zhang: Identity,
}

fn seed_admin_subject() -> Vec<(DnType, DnValue)> {
    vec![
        (
            DnType::CountryName,
            DnValue::PrintableString("CN".try_into().unwrap()),
        ),
        (
            DnType::StateOrProvinceName,
            DnValue::Utf8String("Beijing".into()),
        ),
        (DnType::LocalityName, DnValue::Utf8String("Beijing".into())),
        (
            DnType::OrganizationName,
            DnValue::Utf8String("FaceAnalysis".into()),
        ),
        (
            DnType::OrganizationalUnitName,
            DnValue::Utf8String("Admin".into()),
        ),
        (
            DnType::CommonName,
            DnValue::Utf8String("admin@face.analyze".into()),
        ),
    ]
}

fn make() -> TestPki {
    let dir = super::scratch_dir("pki");
    let now = OffsetDateTime::now_utc();
    let ca_spec = Spec::new(Profile::Ca, "certgate test CA", 3650);
    let ca = pki::issue(&ca_spec, None).unwrap();
    let intermediate = pki::issue(
        &Spec::new(Profile::Ca, "certgate test intermediate", 3650),
        Some(&ca),
    )
    .unwrap();
    // Another CA with exactly our CA's DN: only the key tells them apart.
    let other_ca = pki::issue(&ca_spec, None).unwrap();

    let mut server = Spec::new(Profile::Server, "localhost", 365);
    server.sans = vec![San::Dns("localhost".into()), San::Ip([127, 0, 0, 1].into())];
    let server = pki::issue(&server, Some(&ca)).unwrap();

    let client = |subject: Vec<(DnType, DnValue)>| {
        let mut s = Spec::new(Profile::Client, "x", 365);
        s.subject = subject;
        s
    };
    let alice = pki::issue(&client(seed_admin_subject()), Some(&ca)).unwrap();
    let inter_client = pki::issue(
        &Spec::new(Profile::Client, "inter-client", 365),
        Some(&intermediate),
    )
    .unwrap();
    let mut expired = Spec::new(Profile::Client, "expired-client", 1);
    expired.not_before = now - Duration::days(30);
    expired.not_after = now - Duration::days(1);
    let expired = pki::issue(&expired, Some(&ca)).unwrap();
    let mut not_yet = Spec::new(Profile::Client, "future-client", 30);
    not_yet.not_before = now + Duration::days(1);
    let not_yet = pki::issue(&not_yet, Some(&ca)).unwrap();
    let revoked = pki::issue(
        &Spec::new(Profile::Client, "revoked-client", 365),
        Some(&ca),
    )
    .unwrap();
    let impostor = pki::issue(&client(seed_admin_subject()), Some(&other_ca)).unwrap();
    let server_only = pki::issue(
        &Spec::new(Profile::Server, "server-as-client", 365),
        Some(&ca),
    )
    .unwrap();
    let zhang = pki::issue(
        &client(vec![
            (
                DnType::OrganizationName,
                DnValue::Utf8String("人脸分析".into()),
            ),
            (DnType::CommonName, DnValue::Utf8String("张小明".into())),
        ]),
        Some(&ca),
    )
    .unwrap();

    let crl = pki::crl(
        &ca,
        &[Revoked {
            serial: revoked.serial().clone(),
            at: now - Duration::minutes(1),
            reason: Some(rcgen::RevocationReason::KeyCompromise),
        }],
        1,
        30,
    )
    .unwrap();

    let w = |name: &str, data: &[u8]| std::fs::write(dir.join(name), data).unwrap();
    w("ca.crt", ca.cert_pem.as_bytes());
    w("ca-bundle.crt", ca.cert_pem.as_bytes());
    w("ca.crl", crl.as_bytes());
    w(
        "server.crt",
        format!("{}{}", server.cert_pem, ca.cert_pem).as_bytes(),
    );
    w("server.key", server.key_pem().as_bytes());
    for (name, i) in [
        ("alice", &alice),
        ("inter_client", &inter_client),
        ("zhang", &zhang),
        ("revoked", &revoked),
    ] {
        w(&format!("{name}.crt"), i.cert_pem.as_bytes());
        w(&format!("{name}.key"), i.key_pem().as_bytes());
    }
    w("intermediate.crt", intermediate.cert_pem.as_bytes());

    TestPki {
        dir,
        alice: Identity::new(&alice, &[]),
        inter_client: Identity::new(&inter_client, &[&intermediate]),
        expired: Identity::new(&expired, &[]),
        not_yet_valid: Identity::new(&not_yet, &[]),
        revoked: Identity::new(&revoked, &[]),
        impostor: Identity::new(&impostor, &[]),
        server_only: Identity::new(&server_only, &[]),
        zhang: Identity::new(&zhang, &[]),
        ca,
        intermediate,
        other_ca,
    }
}

/// A client certificate from the test CA with exactly `usages` as its keyUsage (and clientAuth
/// as its extended key usage), for the key-usage checks a private CA's tooling may get wrong.
pub fn client_with_key_usage(cn: &str, usages: Vec<rcgen::KeyUsagePurpose>) -> Identity {
    custom_client(|params| {
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = usages;
    })
}

/// A client certificate from the test CA, valid now, for clientAuth, shaped by `shape`
/// (subject, SANs, key usage): what `pki::Spec` does not offer.
pub fn custom_client(shape: impl FnOnce(&mut rcgen::CertificateParams)) -> Identity {
    let ca = &test_pki().ca;
    let ca_key = rcgen::KeyPair::from_pem(&ca.key_pem()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(1);
    shape(&mut params);
    let cert = params.signed_by(&key, &issuer).unwrap();
    Identity {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    }
}

/// The PKI, made on first use.
pub fn test_pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(make)
}
