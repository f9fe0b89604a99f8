//! `[console]`: the operator's page, on a path of its own and never open to every client.

use toml::Spanned;

use super::Validator;
use super::raw::RawConsole;
use crate::policy::routes::Route;

impl Validator<'_> {
    /// `[console]`: a path of its own (no route's, not the invitation links') and a non-empty
    /// `allow` (the page names everyone who came in: it is never open to every client).
    pub(super) fn console(
        &mut self,
        section: &Spanned<RawConsole>,
        routes: &[Route],
    ) -> Option<crate::console::Settings> {
        let raw = section.get_ref();
        let (path, span) = match &raw.path {
            Some(p) => (p.get_ref().trim().to_string(), Some(p.span())),
            None => (
                crate::console::DEFAULT_PATH.to_string(),
                Some(section.span()),
            ),
        };
        let Some(allow) = &raw.allow else {
            self.problem(
                "console.allow",
                span.clone(),
                "required: name who may read the operator's page, e.g. allow = { ou = [\"Admin\"] }",
            );
            return None;
        };
        let a = allow.get_ref();
        let allow = self.identity_allow("console.allow.fingerprint", allow.span(), a);
        let n = &allow.names;
        if n.cn.is_empty()
            && n.ou.is_empty()
            && n.o.is_empty()
            && n.san_dns.is_empty()
            && n.san_email.is_empty()
            && n.san_uri.is_empty()
            && allow.fingerprint.is_empty()
        {
            self.problem(
                "console.allow",
                Some(
                    raw.allow
                        .as_ref()
                        .map_or_else(|| section.span(), Spanned::span),
                ),
                "empty: list at least one cn, ou, o, san_dns, san_email, san_uri or fingerprint",
            );
            return None;
        }
        if path.trim_matches('/').is_empty() {
            self.problem(
                "console.path",
                span,
                "\"/\" would hide the whole site behind the page; give it a path of its own",
            );
            return None;
        }
        let settings = match crate::console::Settings::new(&path, allow) {
            Ok(s) => s,
            Err(e) => {
                self.problem("console.path", span, e.to_string());
                return None;
            }
        };
        // One path, one owner: the page is answered before any route, so a route under it (or
        // above it, other than the catch-all) would silently lose part of its paths.
        let prefix = |a: &str, b: &str| {
            let (a, b) = (
                a.trim_end_matches('/').to_ascii_lowercase(),
                b.trim_end_matches('/').to_ascii_lowercase(),
            );
            b == a || b.starts_with(&format!("{a}/"))
        };
        for (i, r) in routes.iter().enumerate() {
            if !r.is_catch_all() && (prefix(&r.path, &path) || prefix(&path, &r.path)) {
                self.problem(
                    "console.path",
                    span.clone(),
                    format!(
                        "{path:?} collides with route[{i}] path {:?}; give the console a path of its own",
                        r.path
                    ),
                );
            }
        }
        let enroll = crate::onboarding::invites::LINK_PREFIX;
        if prefix(&path, enroll) || prefix(enroll, &path) {
            self.problem(
                "console.path",
                span,
                format!("{path:?} collides with the invitation links under {enroll:?}"),
            );
        }
        Some(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Problem;
    use super::super::tests::problems;

    fn console_problems(extra: &str) -> Vec<Problem> {
        problems(&format!(
            "[listen]\nhttps = \"127.0.0.1:8443\"\n[tls]\ncert=\"a\"\nkey=\"b\"\nclient_ca=\"c\"\n{extra}"
        ))
        .into_iter()
        .filter(|p| p.key.starts_with("console"))
        .collect()
    }

    #[test]
    fn console_needs_a_non_empty_allow_and_a_path_of_its_own() {
        let p = console_problems("[console]\npath = \"/ops\"\n");
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].key.as_str(), p[0].at),
            ("console.allow", Some((8, 8)))
        );
        let p = console_problems("[console]\nallow = {}\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            (p[0].key.as_str(), p[0].at),
            ("console.allow", Some((8, 9)))
        );
        assert!(p[0].message.contains("empty"), "{}", p[0].message);
        let p = console_problems(
            "[[route]]\npath = \"/ops/internal\"\naction = \"deny\"\n[console]\npath = \"/ops\"\nallow = { ou = [\"Admin\"] }\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            (p[0].key.as_str(), p[0].at),
            ("console.path", Some((11, 8)))
        );
        assert!(p[0].message.contains("route[0]"), "{}", p[0].message);
        let p = console_problems(
            "[console]\npath = \"/.well-known/certgate/enroll\"\nallow = { ou = [\"Admin\"] }\n",
        );
        assert!(
            p[0].message.contains("invitation links"),
            "{}",
            p[0].message
        );
        // The catch-all route and unrelated routes are no collision.
        assert!(
            console_problems(
                "[[route]]\npath = \"/gradio_api/info\"\naction = \"deny\"\n[[route]]\npath = \"/\"\naction = \"allow\"\n[console]\nallow = { ou = [\"Admin\"] }\n"
            )
            .is_empty()
        );
    }
}
