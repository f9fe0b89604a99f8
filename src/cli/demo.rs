//! `certgate demo`: a one-command quickstart. Makes a demo PKI (CA, server certificate for
//! 127.0.0.1/localhost, a client certificate, a `.p12` of it, an empty CRL) if the folder has
//! none, starts a built-in echo backend on a loopback port and the proxy on 127.0.0.1:8443 in
//! front of it, and prints the curl commands that show the difference a client certificate
//! makes. The echo backend answers every request with the method, path and headers it received,
//! as JSON, which is also what the test suite's backend does.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http::{Request, Response, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{DnType, DnValue};
use tokio::net::TcpListener;

use crate::cli::commands::CliError;
use crate::config::Config;
use crate::pki::{self, Profile, San, Spec};
use crate::proxy::Server;

/// Where the demo listens.
pub const DEMO_ADDR: &str = "127.0.0.1:8443";
/// The demo `.p12` password; printed, since it protects nothing of value.
pub const DEMO_P12_PASSWORD: &str = "certgate-demo";

/// The demo PKI files, relative to the demo folder.
pub const FILES: [&str; 8] = [
    "ca.crt",
    "ca.key",
    "ca.crl",
    "server.crt",
    "server.key",
    "client.crt",
    "client.key",
    "client.p12",
];

/// Makes the demo PKI in `dir` unless it is already complete.
///
/// # Errors
/// A [`pki::PkiError`] naming the file that could not be written.
pub fn ensure_pki(dir: &Path) -> Result<bool, pki::PkiError> {
    if FILES.iter().all(|f| dir.join(f).exists()) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).map_err(|source| pki::PkiError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    let mut ca_spec = Spec::new(Profile::Ca, "certgate demo CA", 3650);
    ca_spec.subject.insert(
        0,
        (
            DnType::OrganizationName,
            DnValue::Utf8String("certgate demo".into()),
        ),
    );
    let ca = pki::issue(&ca_spec, None)?;
    let mut server_spec = Spec::new(Profile::Server, "localhost", 1095);
    server_spec.sans = vec![
        San::Dns("localhost".into()),
        San::Ip([127, 0, 0, 1].into()),
        San::Ip(std::net::Ipv6Addr::LOCALHOST.into()),
    ];
    let server = pki::issue(&server_spec, Some(&ca))?;
    let mut client_spec = Spec::new(Profile::Client, "demo-user@certgate.local", 365);
    client_spec.subject = vec![
        (
            DnType::CountryName,
            DnValue::PrintableString("CN".try_into()?),
        ),
        (
            DnType::OrganizationName,
            DnValue::Utf8String("certgate demo".into()),
        ),
        (
            DnType::OrganizationalUnitName,
            DnValue::Utf8String("Demo".into()),
        ),
        (
            DnType::CommonName,
            DnValue::Utf8String("demo-user@certgate.local".into()),
        ),
    ];
    client_spec.sans = vec![San::Email("demo-user@certgate.local".into())];
    let client = pki::issue(&client_spec, Some(&ca))?;
    let p12 = pki::pkcs12(
        &client,
        &[&ca.cert],
        "certgate demo client",
        DEMO_P12_PASSWORD,
        false,
    )?;
    let crl = pki::crl(&ca, &[], 1, 30)?;
    pki::write_file(&dir.join("ca.key"), ca.key_pem().as_bytes(), 0o600)?;
    pki::write_file(&dir.join("server.key"), server.key_pem().as_bytes(), 0o600)?;
    pki::write_file(&dir.join("client.key"), client.key_pem().as_bytes(), 0o600)?;
    pki::write_file(&dir.join("client.p12"), &p12, 0o600)?;
    pki::write_file(&dir.join("ca.crt"), ca.cert_pem.as_bytes(), 0o644)?;
    pki::write_file(&dir.join("ca.crl"), crl.as_bytes(), 0o644)?;
    let chain = format!("{}{}", server.cert_pem, ca.cert_pem);
    pki::write_file(&dir.join("server.crt"), chain.as_bytes(), 0o644)?;
    pki::write_file(&dir.join("client.crt"), client.cert_pem.as_bytes(), 0o644)?;
    Ok(true)
}

/// The config the demo runs with.
pub fn demo_config(listen: &str, backend: SocketAddr) -> String {
    format!(
        r#"# Written by `certgate demo`; rewritten on every demo run.
[listen]
https = "{listen}"
shutdown_timeout = "5s"

[tls]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"
crl = ["ca.crl"]
client_auth = "required"

[upstream]
url = "http://{backend}"

# Gradio's programmatic API surface is closed, the UI stays open (see config/certgate.toml).
[[route]]
path = "/gradio_api/info"
action = "deny"

[[route]]
path = "/internal"
action = "deny"
"#
    )
}

/// Runs the demo until Ctrl-C.
///
/// # Errors
/// Exit 2 when the PKI cannot be made, 1 when 127.0.0.1:8443 is taken.
pub fn run(dir: &Path) -> Result<(), CliError> {
    let made = ensure_pki(dir).map_err(CliError::invalid)?;
    crate::ops::logging::block_on(async {
        let backend = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(CliError::other)?;
        let backend_addr = backend.local_addr().map_err(CliError::other)?;
        tokio::spawn(serve_echo(backend));
        let config_path = dir.join("certgate.toml");
        pki::write_file(
            &config_path,
            demo_config(DEMO_ADDR, backend_addr).as_bytes(),
            0o644,
        )
        .map_err(CliError::other)?;
        let config = Config::load(&config_path).map_err(CliError::invalid)?;
        crate::ops::logging::init(config.log.format);
        let signals = crate::proxy::Signals::register().map_err(CliError::other)?;
        let server = Server::bind(&config).await?;
        let (shutdown, reload) = signals.split(server.shared());
        tokio::spawn(reload);
        print_instructions(dir, made, backend_addr);
        server.run(shutdown).await;
        Ok(())
    })
    .map_err(CliError::other)?
}

fn print_instructions(dir: &Path, made: bool, backend: SocketAddr) {
    let d = display_dir(dir);
    let url = format!("https://{DEMO_ADDR}/hello?name=world");
    let action = if made { "created" } else { "reused" };
    println!(
        "\ncertgate demo: proxy on https://{DEMO_ADDR} -> echo backend on http://{backend}\n\
         demo PKI {action} in {d}/ (CA, server and client certificates, client.p12 password \"{DEMO_P12_PASSWORD}\")\n\n\
         With the client certificate (200; the echo shows the X-SSL-Client-* headers certgate injected):\n\n  \
         curl --cacert {d}/ca.crt --cert {d}/client.crt --key {d}/client.key '{url}'\n\n\
         Without it (refused during the TLS handshake; certgate logs the reason \"no certificate\"):\n\n  \
         curl --cacert {d}/ca.crt '{url}'\n\n\
         A denied path (403 JSON from certgate, the backend never sees it):\n\n  \
         curl --cacert {d}/ca.crt --cert {d}/client.crt --key {d}/client.key https://{DEMO_ADDR}/internal/x\n\n\
         Config: {d}/certgate.toml. Press Ctrl-C to stop.\n"
    );
}

fn display_dir(dir: &Path) -> String {
    let s = dir.display().to_string();
    if s.contains(' ') { format!("'{s}'") } else { s }
}

/// Serves the echo backend on `listener` forever.
pub async fn serve_echo(listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc =
                service_fn(
                    |req: Request<Incoming>| async move { Ok::<_, Infallible>(echo(req).await) },
                );
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// The echo: method, path, query, headers (repeated ones joined with ", ") and body length.
pub async fn echo(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body_len = body
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let json = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_bytes": body_len,
    });
    let mut resp = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(&json).unwrap_or_default(),
    )));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The default demo folder.
pub fn default_dir() -> PathBuf {
    PathBuf::from("certs-example")
}
