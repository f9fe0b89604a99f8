//! The HTML a person reads: the help page, the invitation page and the page of a link that no
//! longer works. Self-contained (one inline stylesheet allowed by its hash in the
//! Content-Security-Policy, no scripts, no external assets), and every value that came from a
//! certificate, a config or a file is escaped.

use std::fmt::Write as _;
use std::sync::OnceLock;

use base64::Engine as _;
use http::HeaderValue;

use super::help::{Presented, Problem};
use super::invites::Invitation;

const STYLE: &str = "\
*{box-sizing:border-box}\
body{margin:0;font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d2330;background:#f3f5f8}\
main{max-width:46rem;margin:0 auto;padding:1.5rem 1rem 3rem}\
h1{font-size:1.6rem;line-height:1.25;margin:.5rem 0 1rem}\
h2{font-size:1.15rem;margin:2rem 0 .5rem}\
h2.first{margin-top:0}\
.card{background:#fff;border:1px solid #d8dde6;border-radius:10px;padding:1rem 1.25rem;margin:1rem 0}\
.reason{border-left:6px solid #c0392b}\
.ok{border-left:6px solid #1e824c}\
.reason p,.ok p{margin:.25rem 0}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:0}\
dt{color:#5a6475}\
dd{margin:0;overflow-wrap:anywhere;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9rem}\
details{background:#fff;border:1px solid #d8dde6;border-radius:8px;margin:.5rem 0;padding:.5rem 1rem}\
summary{cursor:pointer;font-weight:600}\
details ol{margin:.5rem 0;padding-left:1.25rem}\
.password{font:600 1.4rem ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;letter-spacing:.05em;background:#fff8e1;border:1px dashed #c9a227;border-radius:8px;padding:.5rem 1rem;display:inline-block;user-select:all}\
button{font:inherit;font-weight:600;color:#fff;background:#1f5fbf;border:0;border-radius:8px;padding:.75rem 1.5rem;cursor:pointer}\
.contact{font-weight:600}\
small{color:#5a6475}\
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em}\
@media (max-width:30rem){dl{grid-template-columns:1fr}dt{margin-top:.5rem}}";

/// The Content-Security-Policy of every page here: nothing but the one stylesheet, forms only
/// to this site, never in a frame.
pub(super) fn csp() -> HeaderValue {
    static CSP: OnceLock<HeaderValue> = OnceLock::new();
    CSP.get_or_init(|| style_only_csp(STYLE)).clone()
}

/// A Content-Security-Policy that allows one inline stylesheet, `style`, by its hash and
/// nothing else: no script, no other source, forms only to this site, never in a frame. The
/// pages certgate serves itself (the help page, the operator's page) use it.
pub(crate) fn style_only_csp(style: &str) -> HeaderValue {
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, style.as_bytes());
    let policy = format!(
        "default-src 'none'; style-src 'sha256-{}'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        base64::engine::general_purpose::STANDARD.encode(hash.as_ref())
    );
    HeaderValue::from_str(&policy)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
}

/// Escapes text for HTML content and quoted attributes.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn document(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>{}</title><style>{STYLE}</style></head>\n<body><main>\n{body}</main></body></html>\n",
        esc(title)
    )
}

fn contact_line(out: &mut String, contact: Option<&str>) {
    if let Some(c) = contact {
        let _ = writeln!(out, "<p class=\"contact\" id=\"contact\">{}</p>", esc(c));
    }
}

fn presented_card(out: &mut String, p: &Presented) {
    let _ = writeln!(
        out,
        "<div class=\"card\" id=\"presented\"><h2 class=\"first\">The certificate your browser presented</h2><dl>\
         <dt>Subject</dt><dd id=\"subject\">{}</dd>\
         <dt>Issued by</dt><dd id=\"issuer\">{}</dd>\
         <dt>Valid from</dt><dd>{}</dd>\
         <dt>Valid until</dt><dd>{}</dd>\
         <dt>Serial</dt><dd>{}</dd>\
         <dt>SHA-256 fingerprint</dt><dd id=\"fingerprint\">{}</dd></dl></div>",
        esc(&p.subject),
        esc(&p.issuer),
        esc(&p.not_before),
        esc(&p.not_after),
        esc(&p.serial),
        esc(&p.fingerprint),
    );
}

/// How to import a `.p12`, per browser and system.
const IMPORT_STEPS: &str = "\
<details><summary>Chrome or Edge on Windows</summary><ol>\
<li>Double-click the <code>.p12</code> file. The Certificate Import Wizard opens.</li>\
<li>Choose <b>Current User</b>, then <b>Next</b> until it asks for the password; enter it.</li>\
<li>Keep <b>Automatically select the certificate store</b>, then <b>Finish</b>.</li>\
<li>Close every Chrome or Edge window and open this site again.</li></ol></details>\
<details><summary>Chrome, Edge or Safari on macOS</summary><ol>\
<li>Double-click the <code>.p12</code> file. Keychain Access opens.</li>\
<li>Add it to the <b>login</b> keychain and enter the password.</li>\
<li>Quit the browser (<kbd>\u{2318}</kbd>Q) and open this site again; choose the certificate when asked, and <b>Always Allow</b> the keychain prompt.</li></ol></details>\
<details><summary>Firefox (Windows, macOS, Linux)</summary><ol>\
<li>Settings \u{203a} Privacy &amp; Security \u{203a} Certificates \u{203a} <b>View Certificates</b>.</li>\
<li>Tab <b>Your Certificates</b> \u{203a} <b>Import\u{2026}</b>, choose the file, enter the password.</li>\
<li>Reload this page and choose the certificate when asked.</li></ol></details>\
<details><summary>Chrome on Linux</summary><ol>\
<li>Settings \u{203a} Privacy and security \u{203a} Security \u{203a} <b>Manage certificates</b> \u{203a} Your certificates \u{203a} <b>Import</b>.</li>\
<li>Choose the file, enter the password.</li>\
<li>Close every Chrome window and open this site again.</li></ol></details>\
<details><summary>Safari on iPhone or iPad</summary><ol>\
<li>Open the <code>.p12</code> file (from Files or Mail). \u{201c}Profile Downloaded\u{201d} appears.</li>\
<li>Settings \u{203a} General \u{203a} <b>VPN &amp; Device Management</b> \u{203a} the profile \u{203a} <b>Install</b>; enter your passcode, then the certificate password.</li>\
<li>Close Safari (swipe it away) and open this site again.</li></ol></details>\
<details><summary>Android</summary><ol>\
<li>Settings \u{203a} Security \u{203a} Encryption &amp; credentials \u{203a} <b>Install a certificate</b> \u{203a} <b>VPN &amp; app user certificate</b>.</li>\
<li>Choose the file, enter the password, give it a name.</li>\
<li>Open this site in Chrome and choose the certificate when asked.</li></ol></details>\n";

/// How to make a browser ask for a certificate again.
const ASK_AGAIN: &str = "\
<h2>Make the browser ask again</h2>\
<p>Browsers remember which certificate (or none) they chose for a site.</p><ul>\
<li><b>Chrome and Edge</b> keep the choice until they restart: close every window (or open <code>chrome://restart</code> or <code>edge://restart</code>) and come back.</li>\
<li><b>Firefox</b>: Settings \u{203a} Privacy &amp; Security \u{203a} Certificates \u{203a} View Certificates \u{203a} <b>Authentication Decisions</b>: delete this site; or restart Firefox.</li>\
<li><b>Safari on macOS</b> remembers the choice in the keychain: in Keychain Access, delete the identity preference named after this site.</li>\
<li><b>iPhone, iPad, Android</b>: close the browser app completely and open it again.</li></ul>\n";

/// The help page for a connection whose certificate was missing or refused.
pub(super) fn help(problem: &Problem, contact: Option<&str>) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>{}</h1>\n<div class=\"card reason\" id=\"reason\" data-reason=\"{}\"><p>{}</p><p><small>{}</small></p></div>\n",
        esc(problem.headline()),
        esc(problem.reason),
        esc(&problem.sentence()),
        esc(problem.advice()),
    );
    contact_line(&mut body, contact);
    if let Some(p) = &problem.presented {
        presented_card(&mut body, p);
    }
    body.push_str("<h2>Install a certificate</h2><p>If you were given a <code>.p12</code> file (or an invitation link), import it into your browser or system:</p>\n");
    body.push_str(IMPORT_STEPS);
    body.push_str(ASK_AGAIN);
    body.push_str("<p><small>Nothing was sent to the application behind this site. This page comes from the site's gateway (certgate).</small></p>\n");
    document(problem.headline(), &body)
}

/// The invitation page: the password, the one download, the steps.
pub(super) fn invitation(
    inv: &Invitation,
    password: &str,
    download: &str,
    contact: Option<&str>,
) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>Your certificate for this site</h1>\n\
         <div class=\"card ok\"><p>This link holds a certificate for <b id=\"name\">{}</b>, valid until {}. \
         It can be downloaded <b>once</b>; the link stops working afterwards.</p></div>\n\
         <h2>1. Note the password</h2><p>The file is protected by this password; you need it to import the file.</p>\
         <p class=\"password\" id=\"password\">{}</p>\n\
         <h2>2. Download the file</h2>\
         <form method=\"post\" action=\"{}\"><button type=\"submit\" id=\"download\">Download {}.p12</button></form>\n\
         <p><small>Keep this page open until the file is imported. If the download fails, ask for a new invitation.</small></p>\n\
         <h2>3. Import it</h2>\n",
        esc(&inv.name),
        esc(inv.not_after.get(..10).unwrap_or(&inv.not_after)),
        esc(password),
        esc(download),
        esc(&inv.name),
    );
    body.push_str(IMPORT_STEPS);
    body.push_str("<h2>4. Open the site</h2><p>Open the site's address in the browser you imported into and choose this certificate when asked.</p>\n");
    contact_line(&mut body, contact);
    document("Your certificate", &body)
}

/// The page of a link that gives nothing (used, expired, unknown).
pub(super) fn link_refused(headline: &str, sentence: &str, contact: Option<&str>) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>{}</h1>\n<div class=\"card reason\"><p>{}</p></div>\n",
        esc(headline),
        esc(sentence)
    );
    contact_line(&mut body, contact);
    document(headline, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_text() {
        assert_eq!(
            esc("<script>alert('x')</script>\"&"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;"
        );
        assert_eq!(esc("a\u{0}b\nc"), "a\u{FFFD}b\u{FFFD}c");
    }

    #[test]
    fn the_policy_allows_exactly_the_stylesheet() {
        let csp = csp();
        let csp = csp.to_str().unwrap();
        assert!(csp.starts_with("default-src 'none'; style-src 'sha256-"));
        assert!(!csp.contains("unsafe"));
        assert!(!csp.contains("script-src"));
        assert!(!STYLE.contains("</"));
    }
}
