//! The client's identity, from its verified certificate, and the headers that carry it.
//!
//! Parsed once per connection, right after the handshake, into a [`ClientIdentity`] whose header
//! values are rendered once and shared by every request on the connection. The DN strings are
//! byte for byte what nginx puts in `$ssl_client_s_dn` / `$ssl_client_i_dn` (OpenSSL's
//! `X509_NAME_print_ex` with `XN_FLAG_RFC2253`), so a backend written against nginx sees no
//! difference.

use std::fmt::Write as _;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS};
use rustls_pki_types::CertificateDer;
use x509_parser::asn1_rs::{Any, FromDer as _, ToDer as _};
use x509_parser::certificate::X509Certificate;
use x509_parser::x509::X509Name;

/// A certificate that passed verification could not be read back. Should not happen: rustls
/// parsed it already.
#[derive(Debug, thiserror::Error)]
#[error("cannot parse the client certificate: {0}")]
pub struct IdentityError(String);

/// Who the client is, as proven by its certificate.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// Subject DN, RFC 2253, as nginx `$ssl_client_s_dn`.
    pub subject_dn: String,
    /// Issuer DN, RFC 2253, as nginx `$ssl_client_i_dn`.
    pub issuer_dn: String,
    /// Serial number, upper-case hex, as nginx `$ssl_client_serial`.
    pub serial: String,
    /// SHA-256 of the DER certificate, lower-case hex.
    pub fingerprint: String,
    /// Subject attributes and SANs that route allow-lists match on (decoded values).
    pub names: IdentityNames,
    /// End of validity, Unix time.
    pub not_after: i64,
}

/// The values a route's `allow` list can name; each list holds every occurrence.
#[derive(Debug, Clone, Default)]
pub struct IdentityNames {
    /// Subject CN values.
    pub cn: Vec<String>,
    /// Subject OU values.
    pub ou: Vec<String>,
    /// Subject O values.
    pub o: Vec<String>,
    /// dNSName SANs.
    pub san_dns: Vec<String>,
    /// rfc822Name SANs.
    pub san_email: Vec<String>,
    /// URI SANs.
    pub san_uri: Vec<String>,
}

fn attr_strings<'a>(
    iter: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
) -> Vec<String> {
    iter.filter_map(|a| a.as_str().ok().map(str::to_string))
        .collect()
}

fn names_of(cert: &X509Certificate<'_>) -> IdentityNames {
    use x509_parser::extensions::GeneralName;
    let subject = cert.subject();
    let mut names = IdentityNames {
        cn: attr_strings(subject.iter_common_name()),
        ou: attr_strings(subject.iter_organizational_unit()),
        o: attr_strings(subject.iter_organization()),
        ..IdentityNames::default()
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => names.san_dns.push((*d).to_string()),
                GeneralName::RFC822Name(e) => names.san_email.push((*e).to_string()),
                GeneralName::URI(u) => names.san_uri.push((*u).to_string()),
                _ => {}
            }
        }
    }
    names
}

impl ClientIdentity {
    /// Reads the identity from a DER certificate.
    ///
    /// # Errors
    /// [`IdentityError`] when the DER does not parse.
    pub fn from_der(der: &[u8]) -> Result<ClientIdentity, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| IdentityError(e.to_string()))?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        Ok(ClientIdentity {
            subject_dn: format_dn(cert.subject()),
            issuer_dn: format_dn(cert.issuer()),
            serial: serial_hex(cert.raw_serial()),
            fingerprint: hex_lower(digest.as_ref()),
            names: names_of(&cert),
            not_after: cert.validity().not_after.timestamp(),
        })
    }
}

/// The certificate as URL-encoded PEM, as nginx `$ssl_client_escaped_cert`. Made only when the
/// header is configured, straight into the header value: at close to a kilobyte it is the
/// largest thing a connection would otherwise keep twice.
fn escaped_pem(der: &[u8]) -> String {
    let pem = pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    percent_encoding::utf8_percent_encode(&pem, NGINX_URI_COMPONENT).to_string()
}

/// Who is at the other end of a connection, as the checks and the backend see it: computed
/// once after the handshake and shared by every request on the connection.
#[derive(Debug)]
pub struct Peer {
    /// The client's address, IPv4-mapped IPv6 folded to IPv4.
    pub addr: std::net::SocketAddr,
    /// The client's IP as a header value (`X-Real-IP`, `X-Forwarded-For`).
    pub ip: HeaderValue,
    /// The verified client identity, if a certificate was presented.
    pub identity: Option<std::sync::Arc<ClientIdentity>>,
    /// The identity headers, rendered once.
    pub headers: IdentityHeaders,
}

/// The format of the identity headers (spec §14): who reads them decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderProfile {
    /// nginx's `X-SSL-Client-*` (names from `[headers]`): Gradio, Flask, the seeds' backends.
    #[default]
    Nginx,
    /// RFC 9440 `Client-Cert` / `Client-Cert-Chain`: Keycloak, Vault/OpenBao.
    Rfc9440,
    /// Envoy's `X-Forwarded-Client-Cert`: Envoy/Istio-aware services, Keycloak's envoy provider.
    Xfcc,
}

impl HeaderProfile {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            HeaderProfile::Nginx => "nginx",
            HeaderProfile::Rfc9440 => "rfc9440",
            HeaderProfile::Xfcc => "xfcc",
        }
    }
}

/// The identity headers for one connection, rendered once.
#[derive(Debug, Clone, Default)]
pub struct IdentityHeaders(Vec<(HeaderName, HeaderValue)>);

impl IdentityHeaders {
    /// Renders the headers of `names.profile` for a client with or without a certificate (its
    /// identity, and its verified path: the leaf, then each issuer up to but not including the
    /// trust anchor, never other certificates the client sent). In the nginx profile a client
    /// without one gets only the verify header (`NONE`), so a backend can tell the two apart;
    /// the other profiles, like RFC 9440 and Envoy, send nothing then.
    pub fn render(
        names: &HeaderNames,
        id: Option<(&ClientIdentity, &[CertificateDer<'_>])>,
    ) -> IdentityHeaders {
        match (names.profile, id) {
            (HeaderProfile::Nginx, id) => {
                Self::nginx(names, id.and_then(|(i, c)| Some((i, c.first()?.as_ref()))))
            }
            (_, None) => IdentityHeaders::default(),
            (HeaderProfile::Rfc9440, Some((_, chain))) => Self::rfc9440(chain),
            (HeaderProfile::Xfcc, Some((id, chain))) => Self::xfcc(id, chain),
        }
    }

    /// RFC 9440 §2: `Client-Cert` is the leaf's DER as a structured-field byte sequence
    /// (`:base64:`), `Client-Cert-Chain` a list of the certificates "used to validate" it: the
    /// verified path's intermediates, issuer first, and absent when the leaf's issuer is the
    /// trust anchor itself.
    fn rfc9440(chain: &[CertificateDer<'_>]) -> IdentityHeaders {
        let sf = |der: &CertificateDer<'_>| {
            use base64::Engine as _;
            format!(
                ":{}:",
                base64::engine::general_purpose::STANDARD.encode(der)
            )
        };
        let mut out = Vec::with_capacity(2);
        let Some((leaf, rest)) = chain.split_first() else {
            return IdentityHeaders(out);
        };
        // Base64 and colons only: always a valid header value.
        if let Ok(v) = HeaderValue::from_str(&sf(leaf)) {
            out.push((HeaderName::from_static("client-cert"), v));
        }
        if !rest.is_empty() {
            let list = rest.iter().map(sf).collect::<Vec<_>>().join(", ");
            if let Ok(v) = HeaderValue::from_str(&list) {
                out.push((HeaderName::from_static("client-cert-chain"), v));
            }
        }
        IdentityHeaders(out)
    }

    /// One XFCC element as Envoy writes it with `set_current_client_cert_details` (subject,
    /// cert, chain, uri, dns): `Hash=<sha256 hex>;Cert="<url-encoded PEM>"`, `Chain` (the leaf
    /// and the verified path's intermediates) when the path has intermediates,
    /// `Subject="<RFC 2253 DN>"`, the first URI SAN, every DNS SAN. Quoting follows Envoy's
    /// grammar, see [`xfcc_quoted`].
    fn xfcc(id: &ClientIdentity, chain: &[CertificateDer<'_>]) -> IdentityHeaders {
        let mut v = format!("Hash={}", id.fingerprint);
        if let Some(leaf) = chain.first() {
            let _ = write!(v, ";Cert=\"{}\"", escaped_pem(leaf));
        }
        if chain.len() > 1 {
            let pems: String = chain.iter().map(|c| escaped_pem(c)).collect();
            let _ = write!(v, ";Chain=\"{pems}\"");
        }
        v.push_str(";Subject=");
        // The DN is always quoted, as Envoy writes it; see `xfcc_dn` for its backslashes.
        let mut ok = xfcc_quoted(&xfcc_dn(&id.subject_dn), &mut v);
        if let Some(uri) = id.names.san_uri.first() {
            v.push_str(";URI=");
            ok &= xfcc_value(uri, &mut v);
        }
        for dns in &id.names.san_dns {
            v.push_str(";DNS=");
            ok &= xfcc_value(dns, &mut v);
        }
        let mut out = Vec::with_capacity(1);
        // The DN and SANs are escaped ASCII (non-ASCII DN bytes are \XX escapes). A SAN that
        // XFCC cannot carry unambiguously, or with a control character (no header value), leaves
        // the header out rather than sent with fields a parser would read otherwise or without
        // the identity it must carry.
        if let (true, Ok(v)) = (ok, HeaderValue::from_str(&v)) {
            out.push((HeaderName::from_static("x-forwarded-client-cert"), v));
        }
        IdentityHeaders(out)
    }

    fn nginx(names: &HeaderNames, id: Option<(&ClientIdentity, &[u8])>) -> IdentityHeaders {
        let mut out = Vec::with_capacity(6);
        let mut push = |name: &Option<HeaderName>, value: Result<HeaderValue, _>| {
            if let (Some(name), Ok(v)) = (name, value) {
                out.push((name.clone(), v));
            }
        };
        let text = HeaderValue::from_str;
        match id {
            None => push(&names.verify, text("NONE")),
            Some((id, der)) => {
                push(&names.verify, text("SUCCESS"));
                push(&names.subject_dn, text(&id.subject_dn));
                push(&names.issuer_dn, text(&id.issuer_dn));
                if names.cert.is_some() {
                    let pem = Bytes::from(escaped_pem(der));
                    push(&names.cert, HeaderValue::from_maybe_shared(pem));
                }
                push(&names.serial, text(&id.serial));
                push(&names.fingerprint, text(&id.fingerprint));
            }
        }
        IdentityHeaders(out)
    }

    /// The headers, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = &(HeaderName, HeaderValue)> {
        self.0.iter()
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No headers (a client without a certificate, in a profile other than nginx's).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An XFCC value, quoted when it holds a character that separates XFCC keys or elements, or a
/// double quote. Unquoted, a backslash is an ordinary character. `false` when the value cannot
/// be written (see [`xfcc_quoted`]).
fn xfcc_value(value: &str, out: &mut String) -> bool {
    if value.contains([',', ';', '=', '"']) {
        xfcc_quoted(value, out)
    } else {
        out.push_str(value);
        true
    }
}

/// An XFCC value in double quotes, read the same by both readings of the header in use:
/// Envoy's documentation (a `"` in the value is written `\"`, a backslash before anything else
/// is itself) and Envoy's own reader, the `XFCC_VALUE` formatter, as the Go and Rust XFCC
/// parsers (a quote preceded by an odd number of backslashes is escaped, `\\` is a backslash).
/// They agree on a backslash that is not next to a quote, so the value is written as it is with
/// its quotes escaped; they disagree on a backslash before a quote, so a value that has one, or
/// that ends in one (it would come before the closing quote), is not written at all: `\\"` is
/// an escaped quote to the first and the closing quote to the second, swallowing or injecting
/// the fields after it. Then nothing is written and `false` returned.
fn xfcc_quoted(value: &str, out: &mut String) -> bool {
    if value.ends_with('\\') || value.contains("\\\"") {
        return false;
    }
    out.reserve(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    true
}

/// An RFC 2253 DN as XFCC's `Subject` carries it: each `\"` and `\\` pair written as the hex
/// pair RFC 4514 gives the same character (`\22`, `\5C`), the same DN. The quoted value then
/// has no backslash next to a quote, which the readings of XFCC take differently (see
/// [`xfcc_quoted`]), and no `\\` that one of them would unescape into another DN.
fn xfcc_dn(dn: &str) -> String {
    let mut out = String::with_capacity(dn.len());
    let mut chars = dn.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('"') => out.push_str("\\22"),
            Some('\\') => out.push_str("\\5C"),
            Some(next) => {
                out.push('\\');
                out.push(next);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// nginx's `NGX_ESCAPE_URI_COMPONENT` table: what `$ssl_client_escaped_cert` escapes.
const NGINX_URI_COMPONENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'$')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b',')
    .add(b'/')
    .add(b':')
    .add(b';')
    .add(b'<')
    .add(b'=')
    .add(b'>')
    .add(b'?')
    .add(b'@')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

fn hex_lower(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// OpenSSL prints the INTEGER's magnitude: the DER sign byte in front of a high bit is dropped.
fn serial_hex(raw: &[u8]) -> String {
    let raw = match raw {
        [0, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let mut s = String::with_capacity(raw.len() * 2);
    for b in raw {
        let _ = write!(s, "{b:02X}");
    }
    s
}

/// OpenSSL's short names (`OBJ_nid2sn`) for the attribute types that appear in DNs.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "title",
        "2.5.4.13" => "description",
        "2.5.4.15" => "businessCategory",
        "2.5.4.16" => "postalAddress",
        "2.5.4.17" => "postalCode",
        "2.5.4.18" => "postOfficeBox",
        "2.5.4.20" => "telephoneNumber",
        "2.5.4.41" => "name",
        "2.5.4.42" => "GN",
        "2.5.4.43" => "initials",
        "2.5.4.44" => "generationQualifier",
        "2.5.4.45" => "x500UniqueIdentifier",
        "2.5.4.46" => "dnQualifier",
        "2.5.4.65" => "pseudonym",
        "2.5.4.72" => "role",
        "2.5.4.97" => "organizationIdentifier",
        "1.2.840.113549.1.9.1" => "emailAddress",
        "1.2.840.113549.1.9.2" => "unstructuredName",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.3.6.1.4.1.311.60.2.1.1" => "jurisdictionL",
        "1.3.6.1.4.1.311.60.2.1.2" => "jurisdictionST",
        "1.3.6.1.4.1.311.60.2.1.3" => "jurisdictionC",
        _ => return None,
    })
}

/// Formats a name exactly as OpenSSL's `X509_NAME_print_ex(.., XN_FLAG_RFC2253)`: entries in
/// reverse order (multi-valued RDN members too), `,` between RDNs and `+` inside one, short
/// names, unknown types as a dotted OID with the value dumped as `#` + DER hex, and
/// `ASN1_STRFLGS_RFC2253` escaping of the values.
pub fn format_dn(name: &X509Name<'_>) -> String {
    let mut out = String::new();
    let rdns: Vec<_> = name.iter().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let attrs: Vec<_> = rdn.iter().collect();
        for (j, attr) in attrs.iter().rev().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = attr.attr_type().to_id_string();
            match short_name(&oid) {
                Some(sn) => {
                    out.push_str(sn);
                    out.push('=');
                    format_value(attr.attr_value(), &mut out);
                }
                None => {
                    out.push_str(&oid);
                    out.push('=');
                    dump_der(attr.attr_value(), &mut out);
                }
            }
        }
    }
    out
}

fn dump_der(value: &Any<'_>, out: &mut String) {
    out.push('#');
    let der = value.to_der_vec().unwrap_or_default();
    for b in der {
        let _ = write!(out, "{b:02X}");
    }
}

fn format_value(value: &Any<'_>, out: &mut String) {
    let data: &[u8] = value.data;
    let tag = value.tag().0;
    // OpenSSL's tag2nbyte: bytes per character, or dump for types it does not print.
    match tag {
        // UTF8String: printed byte by byte, so non-ASCII comes out as \XX escapes.
        12 => escape_chars(data.iter().map(|&b| u32::from(b)), false, out),
        // NumericString, PrintableString, T61String, IA5String, VisibleString, times:
        // one byte per character, converted to UTF-8 (so Latin-1 bytes become two escapes).
        18 | 19 | 20 | 22 | 23 | 24 | 26 => {
            escape_chars(data.iter().map(|&b| u32::from(b)), true, out)
        }
        // BMPString: UCS-2 big-endian.
        30 if data.len().is_multiple_of(2) => escape_chars(
            data.chunks_exact(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))),
            true,
            out,
        ),
        // UniversalString: UCS-4 big-endian.
        28 if data.len().is_multiple_of(4) => escape_chars(
            data.chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])),
            true,
            out,
        ),
        _ => dump_der(value, out),
    }
}

/// Escapes one UTF8String attribute value exactly as OpenSSL's RFC 2253 output does.
pub fn escape_value(value: &str) -> String {
    let mut out = String::new();
    escape_chars(value.bytes().map(u32::from), false, &mut out);
    out
}

/// OpenSSL's `do_buf` + `do_esc_char` with `ASN1_STRFLGS_RFC2253`.
fn escape_chars(chars: impl ExactSizeIterator<Item = u32>, to_utf8: bool, out: &mut String) {
    let n = chars.len();
    for (i, c) in chars.enumerate() {
        // OpenSSL sets "first" then overwrites it with "last", so a one-character value is only
        // "last": a lone `#` is not escaped, a lone space is.
        let (first, last) = if i + 1 == n {
            (false, true)
        } else {
            (i == 0, false)
        };
        if to_utf8 && c > 0x7f {
            let mut buf = [0u8; 4];
            match char::from_u32(c) {
                Some(ch) => {
                    for b in ch.encode_utf8(&mut buf).bytes() {
                        let _ = write!(out, "\\{b:02X}");
                    }
                }
                None => {
                    let _ = write!(out, "\\U{c:04X}");
                }
            }
            continue;
        }
        // In the byte-wise (UTF8String) case every value is a byte.
        let b = c as u8;
        match b {
            0x80..=0xff => {
                let _ = write!(out, "\\{b:02X}");
            }
            b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' => {
                out.push('\\');
                out.push(b as char);
            }
            b'#' if first => out.push_str("\\#"),
            b' ' if first || last => out.push_str("\\ "),
            0..=0x1f | 0x7f => {
                let _ = write!(out, "\\{b:02X}");
            }
            _ => out.push(b as char),
        }
    }
}

/// The identity headers the proxy injects: their format, and in the nginx profile their names
/// (`None` when turned off).
#[derive(Debug, Clone)]
pub struct HeaderNames {
    /// Which format (spec §14).
    pub profile: crate::tls::identity::HeaderProfile,
    /// `X-SSL-Client-Verify`
    pub verify: Option<HeaderName>,
    /// `X-SSL-Client-DN`
    pub subject_dn: Option<HeaderName>,
    /// `X-SSL-Client-I-DN`
    pub issuer_dn: Option<HeaderName>,
    /// `X-SSL-Client-Cert`
    pub cert: Option<HeaderName>,
    /// `X-SSL-Client-Serial`
    pub serial: Option<HeaderName>,
    /// `X-SSL-Client-Fingerprint`
    pub fingerprint: Option<HeaderName>,
}

impl Default for HeaderNames {
    fn default() -> Self {
        Self {
            profile: crate::tls::identity::HeaderProfile::Nginx,
            verify: Some(HeaderName::from_static("x-ssl-client-verify")),
            subject_dn: Some(HeaderName::from_static("x-ssl-client-dn")),
            issuer_dn: Some(HeaderName::from_static("x-ssl-client-i-dn")),
            cert: Some(HeaderName::from_static("x-ssl-client-cert")),
            serial: Some(HeaderName::from_static("x-ssl-client-serial")),
            fingerprint: Some(HeaderName::from_static("x-ssl-client-fingerprint")),
        }
    }
}

impl HeaderNames {
    /// Every configured name, for stripping from client requests.
    pub fn all(&self) -> impl Iterator<Item = &HeaderName> {
        [
            &self.verify,
            &self.subject_dn,
            &self.issuer_dn,
            &self.cert,
            &self.serial,
            &self.fingerprint,
        ]
        .into_iter()
        .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(s: &str) -> String {
        let mut out = String::new();
        escape_chars(s.bytes().map(u32::from), false, &mut out);
        out
    }

    #[test]
    fn escapes_rfc2253_specials() {
        assert_eq!(esc("a,b+c\"d\\e<f>g;h"), "a\\,b\\+c\\\"d\\\\e\\<f\\>g\\;h");
        assert_eq!(esc("#x"), "\\#x");
        assert_eq!(esc("x#"), "x#");
        assert_eq!(esc(" x "), "\\ x\\ ");
        assert_eq!(esc("#"), "#");
        assert_eq!(esc(" "), "\\ ");
        assert_eq!(esc("a=b"), "a=b");
    }

    #[test]
    fn escapes_utf8_bytes_as_hex() {
        assert_eq!(esc("张"), "\\E5\\BC\\A0");
        assert_eq!(esc("a\u{1}b"), "a\\01b");
    }

    #[test]
    fn serial_drops_sign_byte() {
        assert_eq!(serial_hex(&[0x00, 0x9a, 0x01]), "9A01");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[0x0a]), "0A");
    }

    #[test]
    fn xfcc_values_are_quoted_when_they_must_be() {
        let q = |s: &str| {
            let mut out = String::new();
            xfcc_value(s, &mut out);
            out
        };
        assert_eq!(q("spiffe://x/y"), "spiffe://x/y");
        assert_eq!(q("a;b"), "\"a;b\"");
        assert_eq!(q("a=b,c"), "\"a=b,c\"");
        // Only the quote is escaped; a backslash away from a quote reads the same either way.
        assert_eq!(q("say \"hi\" \\o/"), "\"say \\\"hi\\\" \\o/\"");
        // Unquoted, a trailing backslash is harmless; quoted, it cannot be written, nor can a
        // backslash before a quote.
        assert_eq!(q("x\\"), "x\\");
        for bad in ["a;b\\", "a\\\"b", "a\\\\\";DNS=x"] {
            let mut out = String::new();
            assert!(!xfcc_value(bad, &mut out), "{bad}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn xfcc_dn_writes_quote_and_backslash_escapes_as_hex() {
        assert_eq!(
            xfcc_dn("CN=plain,O=Acme\\, Inc."),
            "CN=plain,O=Acme\\, Inc."
        );
        assert_eq!(xfcc_dn("CN=a\\\"b"), "CN=a\\22b");
        assert_eq!(xfcc_dn("CN=trailing\\\\"), "CN=trailing\\5C");
        assert_eq!(xfcc_dn("CN=\\\\\\\"\\;x,O=\\0A"), "CN=\\5C\\22\\;x,O=\\0A");
    }

    #[test]
    fn escaped_pem_matches_nginx_table() {
        let s = percent_encoding::utf8_percent_encode(
            "-----BEGIN CERTIFICATE-----\nab+/=\n",
            NGINX_URI_COMPONENT,
        )
        .to_string();
        assert_eq!(s, "-----BEGIN%20CERTIFICATE-----%0Aab%2B%2F%3D%0A");
    }
}
