//! `[[route]]`: the rules of one compiled route (methods, addresses, client certificate and
//! identity, auth, rate-limit zone, queue, body size, upstream group, prefix stripping), each
//! checked against the sections it refers to.

use std::ops::Range;

use toml::Spanned;

use super::limits::DEFAULT_MAX_BODY;
use super::raw::{RawAllow, RawRoute};
use super::{Known, Validator};
use crate::policy::routes::{Action, Auth, IdentityAllow, Route};

impl Validator<'_> {
    pub(super) fn route_rules(
        &mut self,
        i: usize,
        r: &RawRoute,
        route: &mut Route,
        known: &Known<'_>,
    ) {
        let key = |k: &str| format!("route[{i}].{k}");
        let mut rules = std::mem::take(&mut route.rules);
        if let Some(methods) = &r.methods {
            let mut list = Vec::new();
            for m in methods.get_ref() {
                match http::Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()) {
                    Ok(m) if m != http::Method::CONNECT => list.push(m),
                    _ => self.problem(
                        &key("methods"),
                        Some(methods.span()),
                        format!("{m:?} is not a usable HTTP method"),
                    ),
                }
            }
            if list.is_empty() {
                self.problem(
                    &key("methods"),
                    Some(methods.span()),
                    "list at least one method, or leave methods out to allow all",
                );
            }
            rules.methods = Some(list);
        }
        rules.allow_ips = self.ip_list(&key("allow_ips"), &r.allow_ips);
        if let Some(cc) = &r.client_cert {
            match cc.get_ref().as_str() {
                "required" => rules.client_cert_required = true,
                "optional" => {}
                other => self.problem(
                    &key("client_cert"),
                    Some(cc.span()),
                    format!("{other:?}: use \"required\" or \"optional\""),
                ),
            }
        }
        if let Some(a) = &r.allow {
            // An identity allow-list implies the route needs a certificate.
            rules.client_cert_required = true;
            rules.allow = Some(self.identity_allow(&key("allow.fingerprint"), r.path.span(), a));
        }
        rules.auth = r.auth;
        match r.auth {
            Auth::Jwt if !known.jwt => self.problem(
                &key("auth"),
                Some(r.path.span()),
                "auth = \"jwt\" needs a [jwt] section",
            ),
            Auth::Forward if !known.forward_auth => self.problem(
                &key("auth"),
                Some(r.path.span()),
                "auth = \"forward\" needs a [forward_auth] section",
            ),
            _ => {}
        }
        if let Some(z) = &r.rate_limit {
            match known
                .zones
                .iter()
                .position(|zone| zone.name == *z.get_ref())
            {
                Some(idx) => rules.rate_limit = Some(idx),
                None => self.problem(
                    &key("rate_limit"),
                    Some(z.span()),
                    format!(
                        "no [[rate_limit]] zone named {:?} (zones: {})",
                        z.get_ref(),
                        known
                            .zones
                            .iter()
                            .map(|z| z.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
            }
        }
        if let Some(q) = &r.queue {
            self.route_queue(i, r, q, &mut rules, known);
        }
        if let Some(mb) = &r.max_body {
            rules.max_body = Some(self.size(&key("max_body"), Some(mb), DEFAULT_MAX_BODY));
        }
        if let Some(u) = &r.upstream {
            match known.groups.iter().position(|g| *g == u.get_ref().as_str()) {
                Some(g) => {
                    rules.upstream = g + 1;
                    rules.upstream_named = true;
                }
                None => self.problem(
                    &key("upstream"),
                    Some(u.span()),
                    format!(
                        "no [upstreams.{}] group (groups: {})",
                        u.get_ref(),
                        if known.groups.is_empty() {
                            "none".to_string()
                        } else {
                            known.groups.join(", ")
                        }
                    ),
                ),
            }
        }
        if let Some(sp) = &r.strip_prefix {
            let prefix = sp.get_ref().trim_end_matches('/');
            let route_path = crate::policy::routes::normalize(&route.path).ok();
            let ok = prefix.is_ascii()
                && crate::policy::routes::normalize(prefix).is_ok_and(|n| n.as_str() == prefix)
                && Route::new(prefix, Action::Allow)
                    .ok()
                    .zip(route_path)
                    .is_some_and(|(p, rp)| p.matches(&rp));
            if ok {
                rules.strip_prefix = Some(prefix.to_string());
            } else {
                self.problem(
                    &key("strip_prefix"),
                    Some(sp.span()),
                    format!(
                        "{:?} must be a plain path that the route's path {:?} starts with, like \"/api\"",
                        sp.get_ref(),
                        route.path
                    ),
                );
            }
        }
        route.rules = rules;
    }

    /// A route's `queue`: a queue that exists, whose person key the route can tell (a subject
    /// needs the route's `auth`), and whose protocol fits the route's path (a Gradio job
    /// starts at a queue join or a REST call).
    fn route_queue(
        &mut self,
        i: usize,
        r: &RawRoute,
        q: &Spanned<String>,
        rules: &mut crate::policy::routes::RouteRules,
        known: &Known<'_>,
    ) {
        let key = format!("route[{i}].queue");
        let Some(idx) = known.queues.iter().position(|s| s.name == *q.get_ref()) else {
            let names: Vec<&str> = known.queues.iter().map(|s| s.name.as_str()).collect();
            self.problem(
                &key,
                Some(q.span()),
                format!(
                    "no [[queue]] named {:?} (queues: {})",
                    q.get_ref(),
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            );
            return;
        };
        let settings = &known.queues[idx];
        if settings.key == crate::queue::KeyBy::Subject && r.auth == Auth::None {
            self.problem(
                &key,
                Some(q.span()),
                format!(
                    "queue {:?} tells people apart by key = \"subject\", but this route has no auth to give a subject; set auth = \"jwt\" or \"forward\" on the route, or key = \"client\" on the queue",
                    settings.name
                ),
            );
        }
        if settings.protocol == crate::queue::Protocol::Gradio
            && !crate::queue::gradio::is_job_entry(r.path.get_ref())
        {
            self.problem(
                &key,
                Some(q.span()),
                format!(
                    "queue {:?} has protocol = \"gradio\", but route {:?} is not a Gradio queue join or REST call (its path must end in /queue/join, like /gradio_api/queue/join, or name the /call/ entry, like /gradio_api/call); give other routes a protocol = \"http\" queue",
                    settings.name,
                    r.path.get_ref()
                ),
            );
        }
        rules.queue = Some(idx);
    }

    /// An identity allow-list (a route's `allow`, `[console] allow`); `span` is where a bad
    /// fingerprint is reported.
    pub(super) fn identity_allow(
        &mut self,
        key: &str,
        span: Range<usize>,
        a: &RawAllow,
    ) -> IdentityAllow {
        let fingerprint: Vec<String> = a
            .fingerprint
            .iter()
            .map(|f| f.replace(':', "").to_ascii_lowercase())
            .collect();
        for f in &fingerprint {
            if f.len() != 64 || !f.chars().all(|c| c.is_ascii_hexdigit()) {
                self.problem(
                    key,
                    Some(span.clone()),
                    format!("{f:?} is not a SHA-256 fingerprint (64 hex digits)"),
                );
            }
        }
        IdentityAllow {
            names: crate::tls::identity::IdentityNames {
                cn: a.cn.clone(),
                ou: a.ou.clone(),
                o: a.o.clone(),
                san_dns: a.san_dns.clone(),
                san_email: a.san_email.clone(),
                san_uri: a.san_uri.clone(),
            },
            fingerprint,
        }
    }
}
