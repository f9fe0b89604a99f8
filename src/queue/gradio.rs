//! Gradio's queue as a proxy sees it (`shared/notes/gradio-queue-protocol.md`): where a job
//! starts (a queue join, a REST call) and where its end shows.

/// Whether a route's path can be where Gradio jobs start: a queue join (`/queue/join`, under
/// `/gradio_api` for Gradio 5 and 6) or the REST entry (`/call/...`, or the `/call` prefix
/// itself). Compared by segments, ignoring ASCII case, as routes match.
pub fn is_job_entry(route_path: &str) -> bool {
    let lower = route_path.to_ascii_lowercase();
    let segments: Vec<&str> = lower.split('/').filter(|s| !s.is_empty()).collect();
    segments.ends_with(&["queue", "join"]) || segments.contains(&"call")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_and_calls_of_every_gradio_version_are_job_entries() {
        for p in [
            "/queue/join",
            "/gradio_api/queue/join",
            "/Gradio_API/queue/join/",
            "/gradio_api/call",
            "/gradio_api/call/predict",
            "/call/",
        ] {
            assert!(is_job_entry(p), "{p}");
        }
        for p in [
            "/",
            "/gradio_api",
            "/gradio_api/queue",
            "/gradio_api/queue/data",
            "/gradio_api/queue/joinx",
            "/api/colorize",
            "/callback",
        ] {
            assert!(!is_job_entry(p), "{p}");
        }
    }
}
