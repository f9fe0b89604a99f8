//! The operator's page as HTML: one self-contained document (one inline stylesheet allowed by
//! its hash, no script, no external assets), charts drawn as inline SVG on the server, every
//! value escaped, tables that scroll sideways on a phone. The people filter is a plain GET
//! form, so it works without script too.

use std::fmt::Write as _;
use std::sync::OnceLock;

use http::HeaderValue;

use super::view::View;
use crate::onboarding::{esc, style_only_csp};

const STYLE: &str = "\
*{box-sizing:border-box}\
body{margin:0;font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d2330;background:#f3f5f8}\
main{max-width:80rem;margin:0 auto;padding:1rem 1rem 3rem}\
h1{font-size:1.4rem;margin:.25rem 0 .5rem}\
h2{font-size:1.1rem;margin:1.75rem 0 .5rem}\
.card{background:#fff;border:1px solid #d8dde6;border-radius:10px;padding:.75rem 1rem;margin:.75rem 0}\
.summary{display:flex;flex-wrap:wrap;gap:.5rem 1.5rem}\
.summary div{min-width:8rem}\
.summary b{display:block;font-size:1.3rem}\
.scroll{overflow-x:auto}\
table{border-collapse:collapse;width:100%;font-size:.85rem}\
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #e4e8ef;vertical-align:top;white-space:nowrap}\
td.wrap{white-space:normal;min-width:10rem;max-width:18rem;overflow-wrap:anywhere}\
th{background:#eef1f6;white-space:nowrap}\
td.num{text-align:right;font-variant-numeric:tabular-nums}\
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.8rem;overflow-wrap:anywhere}\
tr.soon td.expiry{background:#fdecea;color:#a32116;font-weight:600}\
.bad{color:#a32116;font-weight:600}\
.good{color:#1e824c;font-weight:600}\
.warn{color:#9a6700;font-weight:600}\
.muted{color:#5a6475}\
details summary{cursor:pointer;color:#1f5fbf}\
form{display:flex;gap:.5rem;margin:.5rem 0}\
input{font:inherit;padding:.3rem .5rem;border:1px solid #b8c0cc;border-radius:6px;min-width:0;flex:1;max-width:24rem}\
button{font:inherit;color:#fff;background:#1f5fbf;border:0;border-radius:6px;padding:.3rem 1rem}\
svg{width:100%;height:auto;display:block}\
svg .bar{fill:#1f5fbf}\
svg .line{fill:none;stroke:#1f5fbf;stroke-width:2}\
svg .axis{stroke:#b8c0cc;stroke-width:1}\
svg text{font-size:13px;fill:#5a6475}\
.spark{max-width:16rem}\
@media (max-width:40rem){main{padding:.5rem}.summary div{min-width:6rem}}";

/// The page's Content-Security-Policy: the one stylesheet, forms to this site, no frames.
pub(super) fn csp() -> HeaderValue {
    static CSP: OnceLock<HeaderValue> = OnceLock::new();
    CSP.get_or_init(|| style_only_csp(STYLE)).clone()
}

/// `YYYY-MM-DD HH:MM` of a `YYYY-MM-DD HH:MM:SS UTC` time: the table is narrower, and the
/// page says once that times are UTC.
fn minute(t: &str) -> &str {
    t.get(..16).unwrap_or(t)
}

fn bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

/// Requests per minute as bars, oldest on the left.
fn bar_chart(out: &mut String, id: &str, per_minute: &[u32]) {
    let max = per_minute.iter().copied().max().unwrap_or(0).max(1);
    let (w, h) = (1200.0, 150.0);
    let step = w / per_minute.len().max(1) as f64;
    let _ = write!(
        out,
        "<svg id=\"{id}\" viewBox=\"0 0 {w} {}\" role=\"img\" aria-label=\"requests per minute, last hour, at most {max}\">",
        h + 16.0
    );
    for (i, &c) in per_minute.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let bh = (f64::from(c) / f64::from(max) * h).max(1.0);
        let _ = write!(
            out,
            "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\"><title>{c}</title></rect>",
            i as f64 * step + 1.0,
            h - bh,
            step - 2.0
        );
    }
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"0\" y1=\"{h}\" x2=\"{w}\" y2=\"{h}\"/>\
         <text x=\"0\" y=\"{}\">60 min ago</text><text x=\"{w}\" y=\"{}\" text-anchor=\"end\">now</text>\
         <text x=\"2\" y=\"13\">{max}/min</text></svg>",
        h + 13.0,
        h + 13.0
    );
}

/// Requests per minute as a line, for one person.
fn sparkline(out: &mut String, per_minute: &[u32]) {
    let max = per_minute.iter().copied().max().unwrap_or(0).max(1);
    let (w, h) = (240.0, 36.0);
    let step = w / (per_minute.len().max(2) - 1) as f64;
    let points: Vec<String> = per_minute
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            format!(
                "{:.1},{:.1}",
                i as f64 * step,
                h - f64::from(c) / f64::from(max) * (h - 2.0) - 1.0
            )
        })
        .collect();
    let _ = write!(
        out,
        "<svg class=\"spark\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"at most {max} per minute\"><polyline class=\"line\" points=\"{}\"/></svg>",
        points.join(" ")
    );
}

fn summary(out: &mut String, v: &View) {
    let healthy: usize = v
        .backends
        .iter()
        .flat_map(|g| &g.servers)
        .filter(|s| s.healthy)
        .count();
    let servers: usize = v.backends.iter().map(|g| g.servers.len()).sum();
    let last_hour: u64 = v.requests_per_minute.iter().map(|&c| u64::from(c)).sum();
    let expiring = v.people.rows.iter().filter(|r| r.expiring_soon).count();
    let _ = writeln!(
        out,
        "<div class=\"card summary\" id=\"summary\">\
         <div><span class=\"muted\">People seen</span><b id=\"people-total\">{}</b></div>\
         <div><span class=\"muted\">Requests, last hour</span><b>{last_hour}</b></div>\
         <div><span class=\"muted\">Refused since start</span><b id=\"refused-total\">{}</b></div>\
         <div><span class=\"muted\">Certificates ending within 14 days</span><b class=\"{}\">{expiring}</b></div>\
         <div><span class=\"muted\">Backends up</span><b class=\"{}\">{healthy} of {servers}</b></div>\
         </div>",
        v.people.total,
        v.refusals.total,
        if expiring > 0 { "warn" } else { "good" },
        if healthy < servers { "bad" } else { "good" },
    );
}

fn people(out: &mut String, v: &View) {
    let p = &v.people;
    let _ = write!(
        out,
        "<h2 id=\"people\">People</h2>\
         <form method=\"get\" role=\"search\"><input type=\"search\" name=\"q\" value=\"{}\" placeholder=\"Filter: name, DN, serial, fingerprint\" aria-label=\"Filter people\"><button type=\"submit\">Filter</button></form>\
         <p class=\"muted\" id=\"showing\">Showing {} of {}{}{}.</p>",
        esc(&p.filter),
        p.showing,
        p.matching,
        if p.filter.is_empty() {
            String::new()
        } else {
            format!(
                " matching \u{201c}{}\u{201d} ({} remembered)",
                esc(&p.filter),
                p.total
            )
        },
        if p.evicted > 0 {
            format!(
                "; {} seen earlier were forgotten to stay within bounds",
                p.evicted
            )
        } else {
            String::new()
        },
    );
    out.push_str(
        "<div class=\"card scroll\"><table id=\"people-table\"><thead><tr>\
         <th>Name</th><th>Certificate ends</th><th>First seen (UTC)</th><th>Last seen</th>\
         <th>2xx/3xx</th><th>4xx</th><th>5xx</th><th>In</th><th>Out</th>\
         <th>Refused</th><th>Rate-limited</th><th>Queue</th><th>Server</th><th>Details</th>\
         </tr></thead><tbody>\n",
    );
    for r in &p.rows {
        let _ = writeln!(
            out,
            "<tr class=\"person{}\" data-fingerprint=\"{}\">\
             <td class=\"wrap\"><b class=\"cn\">{}</b>{}<br><span class=\"mono muted\">{}</span></td>\
             <td class=\"expiry\">{}<br><span class=\"days\">{} days</span></td>\
             <td>{}</td><td>{}</td>\
             <td class=\"num ok\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"refused wrap\">{}{}</td><td class=\"num limited\">{}</td>\
             <td class=\"muted\">{}</td><td>{}</td>\
             <td><details><summary>more</summary><dl>\
             <dt>Issuer</dt><dd class=\"mono\">{}</dd><dt>Serial</dt><dd class=\"mono\">{}</dd>\
             <dt>SHA-256</dt><dd class=\"mono\">{}</dd>\
             <dt>Revoke (run where the CA is)</dt><dd><code class=\"revoke\">{}</code></dd>\
             <dt>New certificate</dt><dd><code class=\"renew\">{}</code></dd></dl></details></td></tr>",
            if r.expiring_soon { " soon" } else { "" },
            esc(&r.fingerprint),
            esc(&r.cn),
            if r.revoked_while_connected {
                " <span class=\"bad revoked\">revoked while connected</span>"
            } else {
                ""
            },
            esc(&r.subject_dn),
            esc(minute(&r.expires)),
            r.days_left,
            esc(minute(&r.first_seen)),
            esc(minute(&r.last_seen)),
            r.ok,
            r.client_errors,
            r.server_errors,
            bytes(r.bytes_in),
            bytes(r.bytes_out),
            r.refusals,
            r.last_refusal
                .as_deref()
                .map(|w| format!("<br><span class=\"muted last-refusal\">{}</span>", esc(w)))
                .unwrap_or_default(),
            r.rate_limited,
            r.queue.as_ref().map_or_else(
                || "\u{2013}".to_string(),
                |q| format!(
                    "{} running, {} waiting<br>{} jobs, {:.0} s busy",
                    q.running, q.waiting, q.jobs, q.busy_seconds
                )
            ),
            r.bound_to
                .as_deref()
                .map(esc)
                .unwrap_or_else(|| "\u{2013}".into()),
            esc(&r.issuer_dn),
            esc(&r.serial),
            esc(&r.fingerprint),
            esc(&r.revoke_command),
            esc(&r.renew_command),
        );
    }
    if p.rows.is_empty() {
        out.push_str("<tr><td colspan=\"14\" class=\"muted\">Nobody yet.</td></tr>\n");
    }
    out.push_str("</tbody></table></div>\n");
}

fn refusals(out: &mut String, v: &View) {
    let r = &v.refusals;
    out.push_str("<h2 id=\"refusals\">Who could not get in</h2><div class=\"card scroll\"><table id=\"reasons\"><thead><tr><th>Reason</th><th>Since start</th></tr></thead><tbody>\n");
    for c in &r.per_reason {
        let _ = writeln!(
            out,
            "<tr data-reason=\"{}\"><td>{}</td><td class=\"num\">{}</td></tr>",
            esc(&c.reason),
            esc(&c.reason),
            c.count
        );
    }
    if r.per_reason.is_empty() {
        out.push_str("<tr><td colspan=\"2\" class=\"muted\">Nobody was refused.</td></tr>\n");
    }
    out.push_str("</tbody></table></div><div class=\"card scroll\"><table id=\"recent-refusals\"><thead><tr><th>When</th><th>Address</th><th>Certificate</th><th>Why</th></tr></thead><tbody>\n");
    for x in &r.recent {
        let _ = writeln!(
            out,
            "<tr class=\"refusal\" data-reason=\"{}\"><td>{}</td><td class=\"mono\">{}</td><td class=\"mono wrap\">{}</td><td class=\"wrap\">{}<br><span class=\"muted\">{}</span></td></tr>",
            esc(&x.reason),
            esc(&x.at),
            esc(&x.address),
            x.subject
                .as_deref()
                .map(esc)
                .unwrap_or_else(|| "\u{2013}".into()),
            esc(&x.words),
            esc(&x.reason),
        );
    }
    out.push_str("</tbody></table></div>\n");
}

fn backends(out: &mut String, v: &View) {
    out.push_str("<h2 id=\"backends\">Backends</h2><div class=\"card scroll\"><table id=\"servers\"><thead><tr><th>Group</th><th>Server</th><th>Health</th><th>In flight</th><th>Bound clients</th><th>Weight</th><th>Drain</th></tr></thead><tbody>\n");
    for g in &v.backends {
        for s in &g.servers {
            let _ = writeln!(
                out,
                "<tr class=\"server\"><td>{} <span class=\"muted\">({})</span></td><td class=\"mono\">{}</td><td class=\"{}\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                esc(&g.name),
                esc(g.balance),
                esc(&s.url),
                if s.healthy { "good" } else { "bad" },
                if s.healthy { "up" } else { "down" },
                s.in_flight,
                s.bound,
                s.weight,
                if s.drain { "draining" } else { "\u{2013}" },
            );
        }
    }
    out.push_str(
        "</tbody></table></div>\n<h2 id=\"queues\">Queues</h2><div class=\"card scroll\">",
    );
    if v.queues.is_empty() {
        out.push_str("<p class=\"muted\" id=\"no-queues\">No queues configured.</p>");
    } else {
        out.push_str("<table><thead><tr><th>Queue</th><th>Slots</th><th>Busy</th><th>Waiting</th></tr></thead><tbody>");
        for q in &v.queues {
            let _ = write!(
                out,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                esc(&q.name),
                q.slots,
                q.busy,
                q.waiting
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</div>\n");
}

fn daemon(out: &mut String, v: &View) {
    let d = &v.daemon;
    let _ = write!(
        out,
        "<h2 id=\"daemon\">The daemon</h2><div class=\"card scroll\"><table><tbody>\
         <tr><th>Version</th><td>certgate {}</td></tr>\
         <tr><th>Up since</th><td>{} ({})</td></tr>\
         <tr><th>Config file</th><td class=\"mono\">{}</td></tr>\
         <tr><th>Last reload</th><td id=\"last-reload\">{}</td></tr>\
         <tr><th>Server certificate</th><td>serial <span class=\"mono\">{}</span>, ends {} <span class=\"{}\">({} days)</span></td></tr>",
        esc(d.version),
        esc(&d.started),
        humantime::format_duration(std::time::Duration::from_secs(d.uptime_seconds)),
        esc(&d.config_file),
        match &d.last_reload {
            None => "none since start".to_string(),
            Some(r) => format!(
                "{} \u{2013} <span class=\"{}\">{}</span> ({}): {}",
                esc(&r.at),
                if r.applied { "good" } else { "bad" },
                if r.applied {
                    "applied"
                } else {
                    "refused, running config kept"
                },
                esc(&r.trigger),
                esc(&r.detail)
            ),
        },
        esc(&d.server_certificate_serial),
        esc(&d.server_certificate_expires),
        if d.server_certificate_days_left < super::view::EXPIRY_WARNING_DAYS {
            "bad"
        } else {
            "muted"
        },
        d.server_certificate_days_left,
    );
    for c in &d.crls {
        let _ = write!(
            out,
            "<tr class=\"crl\"><th>CRL</th><td><span class=\"mono\">{}</span> ({} revoked) next update {} <span class=\"{}\">{}</span></td></tr>",
            esc(&c.file),
            c.entries,
            esc(c.next_update.as_deref().unwrap_or("none")),
            match c.state {
                "ok" => "good",
                "soon" => "warn",
                _ => "bad",
            },
            match c.state {
                "ok" => "",
                "soon" => "within 7 days",
                _ => "past: update it",
            }
        );
    }
    match &d.shared {
        None => out.push_str("<tr><th>Shared limits</th><td class=\"muted\">off (limits are this replica's own)</td></tr>"),
        Some(s) => {
            let _ = write!(
                out,
                "<tr><th>Shared limits</th><td><span class=\"mono\">{}</span> <span class=\"{}\">{}</span> (while unavailable: {})</td></tr>",
                esc(&s.redis),
                if s.available { "good" } else { "bad" },
                if s.available { "available" } else { "unavailable" },
                esc(s.on_unavailable)
            );
        }
    }
    out.push_str("</tbody></table></div>\n");
}

/// The whole page; `refresh` seconds when asked to reload itself.
pub(super) fn render(v: &View, refresh: Option<u32>) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">{}\
         <title>certgate \u{2013} who is here</title><style>{STYLE}</style></head>\n<body><main>\n\
         <h1>Who is here</h1><p class=\"muted\">certgate {} \u{b7} {} \u{b7} <a href=\"?refresh=10\">refresh every 10 s</a> \u{b7} <a href=\"?format=json\">JSON</a></p>\n",
        refresh
            .map(|s| format!("<meta http-equiv=\"refresh\" content=\"{s}\">"))
            .unwrap_or_default(),
        esc(v.daemon.version),
        esc(&v.generated),
    );
    summary(&mut out, v);
    out.push_str("<h2 id=\"traffic\">Requests per minute</h2><div class=\"card\">");
    bar_chart(&mut out, "chart", &v.requests_per_minute);
    out.push_str("</div>\n");
    if !v.busiest.is_empty() {
        out.push_str("<div class=\"card scroll\"><table id=\"busiest\"><thead><tr><th>Busiest, last hour</th><th>Requests</th><th>Per minute</th></tr></thead><tbody>\n");
        for b in &v.busiest {
            let _ = write!(
                out,
                "<tr><td><b>{}</b></td><td class=\"num\">{}</td><td>",
                esc(&b.cn),
                b.last_hour
            );
            sparkline(&mut out, &b.per_minute);
            out.push_str("</td></tr>\n");
        }
        out.push_str("</tbody></table></div>\n");
    }
    people(&mut out, v);
    refusals(&mut out, v);
    backends(&mut out, v);
    daemon(&mut out, v);
    out.push_str("<p class=\"muted\"><small>Read-only. Actions that need the CA key run where the CA is, with <code>certgate certs</code>; the commands above name the certificate. Nothing on this page is a secret: no keys, tokens or passwords are kept here.</small></p>\n</main></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy itself is pinned beside its builder (`onboarding::page`); here, that the page
    /// uses it for its own stylesheet, which cannot close the style element early.
    #[test]
    fn the_policy_allows_exactly_the_stylesheet() {
        assert_eq!(csp(), style_only_csp(STYLE));
        assert!(!STYLE.contains("</"));
    }

    #[test]
    fn charts_are_drawn_without_script() {
        let mut out = String::new();
        let mut m = vec![0u32; 60];
        m[59] = 4;
        m[0] = 2;
        bar_chart(&mut out, "c", &m);
        assert_eq!(out.matches("<rect").count(), 2);
        assert!(out.contains("4/min"));
        let mut s = String::new();
        sparkline(&mut s, &m);
        assert!(s.contains("<polyline"));
    }
}
