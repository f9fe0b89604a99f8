//! The oracle that the path property test and the `path_normalize` fuzz target share (the fuzz
//! target includes this file by path): how a backend that strips path parameters routes what
//! certgate forwarded. Only `percent_encoding` is used, which both crates have.

/// How a servlet container (Tomcat, Jetty, Spring) routes a path: each segment's `;parameters`
/// dropped, then percent-decoded, empty and `.` segments dropped, `..` resolved; lower-cased
/// here because deny rules are matched without case.
pub fn parameter_stripping_backend(forwarded: &str) -> String {
    let mut segments: Vec<String> = Vec::new();
    for seg in forwarded.split('/') {
        let name = seg.split(';').next().unwrap_or_default();
        let name = percent_encoding::percent_decode_str(name)
            .decode_utf8_lossy()
            .to_ascii_lowercase();
        match name.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other.to_string()),
        }
    }
    format!("/{}", segments.join("/"))
}
