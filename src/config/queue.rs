//! `[[queue]]`: the queues held in front of the backend (spec §15), each with its slots, its
//! per-person limits and its longest wait. Routes refer to them by name (see `routes`).

use super::Validator;
use super::raw::RawQueue;
use crate::queue::QueueSettings;

/// One job at a time: a GPU that runs one inference at once.
const DEFAULT_QUEUE_SLOTS: usize = 1;
/// One running job per person: the others wait their turn.
const DEFAULT_QUEUE_PER_IDENTITY: usize = 1;
/// Enough for a batch of a few jobs; a flood beyond it is refused, so memory stays bounded.
const DEFAULT_QUEUE_MAX_WAITING: usize = 16;
/// A person behind a few long jobs still gets an answer, and a dead backend frees the wait.
const DEFAULT_QUEUE_MAX_WAIT: &str = "10m";

impl Validator<'_> {
    pub(super) fn queues(&mut self, raw: &[RawQueue]) -> Vec<QueueSettings> {
        let mut queues: Vec<QueueSettings> = Vec::new();
        for (i, q) in raw.iter().enumerate() {
            let key = |k: &str| format!("queue[{i}].{k}");
            let name = q.name.get_ref().trim().to_string();
            if name.is_empty() || queues.iter().any(|other| other.name == name) {
                self.problem(
                    &key("name"),
                    Some(q.name.span()),
                    format!("{name:?}: queue names must be unique and not empty"),
                );
            }
            queues.push(QueueSettings {
                name,
                slots: self.count(&key("slots"), q.slots.as_ref(), DEFAULT_QUEUE_SLOTS),
                per_identity: self.count(
                    &key("per_identity"),
                    q.per_identity.as_ref(),
                    DEFAULT_QUEUE_PER_IDENTITY,
                ),
                max_waiting: self.count(
                    &key("max_waiting"),
                    q.max_waiting.as_ref(),
                    DEFAULT_QUEUE_MAX_WAITING,
                ),
                max_wait: self.duration(
                    &key("max_wait"),
                    q.max_wait.as_ref(),
                    DEFAULT_QUEUE_MAX_WAIT,
                ),
                key: q
                    .key
                    .as_ref()
                    .map_or(crate::queue::KeyBy::Client, |k| *k.get_ref()),
                protocol: q
                    .protocol
                    .as_ref()
                    .map_or(crate::queue::Protocol::Http, |p| *p.get_ref()),
            });
        }
        queues
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::Config;

    /// Routes may queue on a Gradio join or call, and by subject when they authenticate; the
    /// defaults of `[[queue]]` are those of spec §15.
    #[test]
    fn queues_accept_what_spec_15_allows() {
        let dir = std::env::temp_dir().join(format!("certgate-queue-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        use crate::pki::{Profile, Spec, issue};
        let ca = issue(&Spec::new(Profile::Ca, "Queue Test CA", 1), None).unwrap();
        let mut spec = Spec::new(Profile::Server, "localhost", 1);
        spec.sans = vec![crate::pki::San::parse("localhost").unwrap()];
        let server = issue(&spec, Some(&ca)).unwrap();
        std::fs::write(dir.join("ca.crt"), &ca.cert_pem).unwrap();
        std::fs::write(dir.join("s.crt"), &server.cert_pem).unwrap();
        std::fs::write(dir.join("s.key"), server.key_pem()).unwrap();
        std::fs::write(dir.join("jwt.secret"), "0123456789abcdef0123456789abcdef").unwrap();
        let text = "[listen]\nhttps = \"127.0.0.1:8443\"\n[tls]\ncert=\"s.crt\"\nkey=\"s.key\"\nclient_ca=\"ca.crt\"\n\
            [jwt]\nalgorithms = [\"HS256\"]\nsecret_file = \"jwt.secret\"\n\
            [[queue]]\nname = \"gpu\"\n\
            [[queue]]\nname = \"ui\"\nprotocol = \"gradio\"\nkey = \"subject\"\nslots = 2\n\
            [[route]]\npath = \"/gradio_api/queue/join\"\naction = \"allow\"\nauth = \"jwt\"\nqueue = \"ui\"\n\
            [[route]]\npath = \"/gradio_api/call\"\naction = \"allow\"\nauth = \"jwt\"\nqueue = \"ui\"\n\
            [[route]]\npath = \"/api/colorize\"\naction = \"allow\"\nqueue = \"gpu\"\n";
        let c = Config::from_str(text, &dir.join("certgate.toml")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(c.queues.len(), 2);
        let gpu = &c.queues[0];
        assert_eq!(
            (gpu.slots, gpu.per_identity, gpu.max_waiting, gpu.max_wait),
            (1, 1, 16, Duration::from_secs(600))
        );
        assert_eq!(gpu.key, crate::queue::KeyBy::Client);
        assert_eq!(gpu.protocol, crate::queue::Protocol::Http);
        assert_eq!(c.queues[1].slots, 2);
        let queues: Vec<_> = c.routes.iter().map(|r| r.rules.queue).collect();
        assert_eq!(queues, [Some(1), Some(1), Some(0)]);
    }
}
