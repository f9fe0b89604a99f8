//! `[enroll]`: the folder invitation links are served from.

use std::path::PathBuf;

use super::Validator;
use super::raw::{RawEnroll, RawTls};
use crate::tls::{ClientAuth, OnFailure};

impl Validator<'_> {
    /// `[enroll] dir`: an existing folder, reachable only when a browser without a
    /// certificate can complete the handshake.
    pub(super) fn enroll(&mut self, raw: &RawEnroll, tls: &RawTls) -> Option<PathBuf> {
        let dir = self.path(&raw.dir);
        // Absolute: the sandbox grants this folder by path, and the log names it.
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        if tls.on_failure != OnFailure::Help && tls.client_auth != ClientAuth::Optional {
            self.problem(
                "enroll.dir",
                Some(raw.dir.span()),
                "invitation links are for browsers without a certificate, and this [tls] refuses \
                 their handshake: set [tls] on_failure = \"help\" (or client_auth = \"optional\")",
            );
            return None;
        }
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Some(dir),
            Ok(_) => {
                self.problem(
                    "enroll.dir",
                    Some(raw.dir.span()),
                    format!("{}: not a folder", dir.display()),
                );
                None
            }
            Err(e) => {
                self.problem(
                    "enroll.dir",
                    Some(raw.dir.span()),
                    format!(
                        "{}: {e}; `certgate certs invite --enroll-dir {}` creates it",
                        dir.display(),
                        dir.display()
                    ),
                );
                None
            }
        }
    }
}
