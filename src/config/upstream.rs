//! `[upstream]` and `[upstreams.NAME]`: a group's servers (plain `http://host:port`, weights,
//! drain), how it balances and keeps affinity, its passive and active health checks and timeouts.

use toml::Spanned;

use super::Validator;
use super::raw::{RawHealth, RawUpstream};
use crate::upstream::{Balance, HealthSettings, ServerSettings, Upstream};

/// The usual place of a Gradio app.
const DEFAULT_UPSTREAM_URL: &str = "http://127.0.0.1:7860";
/// nginx `keepalive 32` in the classic guide.
const DEFAULT_MAX_IDLE: usize = 32;
/// Gradio forgets a session about an hour after the browser left; a binding outlives that.
const DEFAULT_AFFINITY_TIMEOUT: &str = "60m";
/// nginx's `max_fails=1 fail_timeout=10s`, with three failures: one refused connect during a
/// backend restart should not take a server out.
const DEFAULT_MAX_FAILS: u32 = 3;
const DEFAULT_FAIL_TIMEOUT: &str = "10s";
/// Active checks (HAProxy's `inter 2s rise 2 fall 3`, slower: a WebUI is not a database).
const DEFAULT_HEALTH_INTERVAL: &str = "5s";
const DEFAULT_HEALTH_TIMEOUT: &str = "2s";
const DEFAULT_HEALTH_RISE: u32 = 2;
const DEFAULT_HEALTH_FALL: u32 = 3;
/// nginx's `proxy_connect_timeout` default.
pub(super) const DEFAULT_CONNECT_TIMEOUT: &str = "30s";
/// nginx's `proxy_read_timeout` default; a model that takes longer should stream.
pub(super) const DEFAULT_RESPONSE_TIMEOUT: &str = "60s";
/// nginx's `proxy_read_timeout` applies between reads too; Gradio's SSE heartbeat is 15 s.
pub(super) const DEFAULT_IDLE_TIMEOUT: &str = "60s";

/// Why a backend or forward-auth URL with `user:password@` is refused. The URL is not quoted:
/// the message goes to the journal and the operator's page.
pub(super) const USERINFO: &str = "the URL carries credentials (user:password@), which certgate never sends and would show wherever the server is named; remove them";

/// Whether the authority of `url` has a `user:password@` part. certgate sends no credentials
/// to a backend, and the URL is shown in logs, `check`, a client's 502 and the operator's page.
pub(super) fn has_userinfo(url: &str) -> bool {
    let rest = url.trim().split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?', '#'])
        .next()
        .is_some_and(|authority| authority.contains('@'))
}

impl Validator<'_> {
    /// One server URL: plain `http://host:port`, nothing else.
    fn server_url(&mut self, key: &str, url: &Spanned<String>) -> Option<http::uri::Authority> {
        let span = (url.span() != (0..0)).then(|| url.span());
        if has_userinfo(url.get_ref()) {
            self.problem(key, span, USERINFO);
            return None;
        }
        match url.get_ref().trim().parse::<http::Uri>() {
            Ok(u) if u.scheme_str() != Some("http") => {
                self.problem(
                    key,
                    span,
                    format!(
                        "{:?}: only plain http:// backends are supported (the backend sits on loopback or a private network)",
                        url.get_ref()
                    ),
                );
                None
            }
            Ok(u) if !matches!(u.path(), "" | "/") || u.query().is_some() => {
                self.problem(
                    key,
                    span,
                    format!(
                        "{:?}: give only scheme, host and port, like \"http://127.0.0.1:7860\"; the request path is forwarded as it is",
                        url.get_ref()
                    ),
                );
                None
            }
            Ok(u) => u.authority().cloned(),
            Err(e) => {
                self.problem(key, span, format!("{:?} is not a URL: {e}", url.get_ref()));
                None
            }
        }
    }

    /// `[upstream]` (`key` = "upstream", `name` = "default") or `[upstreams.NAME]`.
    pub(super) fn upstream(
        &mut self,
        key: &str,
        name: &str,
        raw: &RawUpstream,
    ) -> Option<Upstream> {
        let k = |sub: &str| format!("{key}.{sub}");
        let mut servers = Vec::new();
        let mut ok = true;
        match (&raw.url, &raw.servers) {
            (Some(url), Some(list)) => {
                self.problem(
                    &k("servers"),
                    Some(list.span()),
                    format!("give url or servers, not both (url = {:?})", url.get_ref()),
                );
                ok = false;
            }
            (url, None) => {
                let default_url = Spanned::new(0..0, DEFAULT_UPSTREAM_URL.to_string());
                let url = url.as_ref().unwrap_or(&default_url);
                match self.server_url(&k("url"), url) {
                    Some(authority) => servers.push(ServerSettings {
                        url: url.get_ref().trim().to_string(),
                        authority,
                        weight: 1,
                        drain: false,
                    }),
                    None => ok = false,
                }
            }
            (None, Some(list)) => {
                if list.get_ref().is_empty() {
                    self.problem(
                        &k("servers"),
                        Some(list.span()),
                        "list at least one server, like [{ url = \"http://127.0.0.1:7860\" }]",
                    );
                    ok = false;
                }
                for (i, s) in list.get_ref().iter().enumerate() {
                    let skey = format!("{key}.servers[{i}]");
                    let Some(authority) = self.server_url(&format!("{skey}.url"), &s.url) else {
                        ok = false;
                        continue;
                    };
                    let weight = match &s.weight {
                        Some(w) if *w.get_ref() == 0 => {
                            self.problem(
                                &format!("{skey}.weight"),
                                Some(w.span()),
                                "a weight of 0 would send nothing; use drain = true to stop new clients",
                            );
                            ok = false;
                            1
                        }
                        Some(w) => *w.get_ref(),
                        None => 1,
                    };
                    if servers
                        .iter()
                        .any(|o: &ServerSettings| o.authority == authority)
                    {
                        self.problem(
                            &format!("{skey}.url"),
                            Some(s.url.span()),
                            format!("{:?} is listed twice in this group", s.url.get_ref()),
                        );
                        ok = false;
                        continue;
                    }
                    servers.push(ServerSettings {
                        url: s.url.get_ref().trim().to_string(),
                        authority,
                        weight,
                        drain: s.drain,
                    });
                }
            }
        }
        let balance = match raw.balance.as_ref().map(|b| b.get_ref().as_str()) {
            None | Some("identity") => Balance::Identity,
            Some("least_requests") => Balance::LeastRequests,
            Some("round_robin") => Balance::RoundRobin,
            Some(other) => {
                self.problem(
                    &k("balance"),
                    raw.balance.as_ref().map(Spanned::span),
                    format!("{other:?}: use \"identity\", \"least_requests\" or \"round_robin\""),
                );
                Balance::Identity
            }
        };
        let affinity_timeout = self.duration(
            &k("affinity_timeout"),
            raw.affinity_timeout.as_ref(),
            DEFAULT_AFFINITY_TIMEOUT,
        );
        let fail_timeout = self.duration(
            &k("fail_timeout"),
            raw.fail_timeout.as_ref(),
            DEFAULT_FAIL_TIMEOUT,
        );
        let health_raw = raw.health.as_ref();
        let health = if health_raw.and_then(|h| h.enabled) == Some(false) {
            None
        } else {
            let default_health = RawHealth::default();
            let h = health_raw.unwrap_or(&default_health);
            let path = h.path.as_ref().map_or("/", |p| p.get_ref().as_str());
            let path = match path.parse::<http::uri::PathAndQuery>() {
                Ok(p) if path.starts_with('/') => Some(p),
                _ => {
                    self.problem(
                        &k("health.path"),
                        h.path.as_ref().map(Spanned::span),
                        format!("{path:?}: give an absolute path like \"/\" or \"/healthz\""),
                    );
                    None
                }
            };
            let count = |this: &mut Self, sub: &str, v: &Option<Spanned<u32>>, default: u32| match v
            {
                Some(n) if *n.get_ref() == 0 => {
                    this.problem(&k(sub), Some(n.span()), "give 1 or more");
                    default
                }
                Some(n) => *n.get_ref(),
                None => default,
            };
            let rise = count(self, "health.rise", &h.rise, DEFAULT_HEALTH_RISE);
            let fall = count(self, "health.fall", &h.fall, DEFAULT_HEALTH_FALL);
            let interval = self.duration(
                &k("health.interval"),
                h.interval.as_ref(),
                DEFAULT_HEALTH_INTERVAL,
            );
            let timeout = self.duration(
                &k("health.timeout"),
                h.timeout.as_ref(),
                DEFAULT_HEALTH_TIMEOUT,
            );
            path.map(|path| HealthSettings {
                path,
                interval,
                timeout,
                rise,
                fall,
            })
        };
        let max_idle_connections = raw.max_idle_connections.unwrap_or(DEFAULT_MAX_IDLE);
        let connect_timeout = self.duration(
            &k("connect_timeout"),
            raw.connect_timeout.as_ref(),
            DEFAULT_CONNECT_TIMEOUT,
        );
        let response_timeout = self.duration(
            &k("response_timeout"),
            raw.response_timeout.as_ref(),
            DEFAULT_RESPONSE_TIMEOUT,
        );
        let idle_timeout = self.duration(
            &k("idle_timeout"),
            raw.idle_timeout.as_ref(),
            DEFAULT_IDLE_TIMEOUT,
        );
        ok.then(|| Upstream {
            name: name.to_string(),
            servers,
            balance,
            affinity_timeout,
            health,
            max_fails: raw.max_fails.unwrap_or(DEFAULT_MAX_FAILS),
            fail_timeout,
            max_idle_connections,
            connect_timeout,
            response_timeout,
            idle_timeout,
        })
    }
}
