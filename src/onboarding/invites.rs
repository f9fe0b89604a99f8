//! Invitations: the folder `certgate certs invite` writes and the daemon serves once.
//!
//! An invitation is two files in the enroll folder, both 0600 and named by a hash of the link's
//! token, never by the token itself: `ID.json` (who it is for, when it expires) and `ID.p12`
//! (the bundle). The bundle's password is derived from the token too, so the folder alone
//! gives nothing away: whoever can read it holds a `.p12` without its password and a list of
//! hashes that lead to no link. The daemon, which never holds the CA key, only reads the folder
//! and deletes a bundle when it is downloaded or found expired; `ID.json` stays, so a used or
//! expired link answers 410 rather than 404. A third, empty file, `ID.unclaimed`, goes only
//! with a download: the daemon may delete but never write in the folder, and without it an
//! expired bundle the daemon deleted would look downloaded to `certs list`.

use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Where the daemon serves invitation links: `LINK_PREFIX` + token.
pub const LINK_PREFIX: &str = "/.well-known/certgate/enroll/";

/// The secret in a link: 128 random bits, base64url without padding (22 characters).
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never in a log line: it is a credential until it is used.
        f.write_str("Token(..)")
    }
}

const TOKEN_BYTES: usize = 16;
const TOKEN_CHARS: usize = 22;

impl Token {
    /// A fresh token from the system's CSPRNG.
    ///
    /// # Errors
    /// When the random source fails.
    pub fn generate() -> io::Result<Token> {
        let mut bytes = [0u8; TOKEN_BYTES];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| io::Error::other("no random bytes"))?;
        Ok(Token(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
        ))
    }

    /// The token in a link, when it has a token's form (anything else is simply unknown).
    pub fn parse(text: &str) -> Option<Token> {
        if text.len() != TOKEN_CHARS {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        // Only the canonical spelling: one link, one token.
        (bytes.len() == TOKEN_BYTES
            && base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes) == text)
            .then(|| Token(text.to_string()))
    }

    /// The token's text, for the link.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn digest(&self, purpose: &str) -> Vec<u8> {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(b"certgate enroll ");
        ctx.update(purpose.as_bytes());
        ctx.update(&[0]);
        ctx.update(self.0.as_bytes());
        ctx.finish().as_ref().to_vec()
    }

    /// The file name stem the invitation is stored under: a hash, so the folder does not hold
    /// the link.
    pub fn id(&self) -> String {
        self.digest("id")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The `.p12` password: derived from the token (100 bits of it), so that it is stored
    /// nowhere and only the link's holder can open the bundle. Grouped for reading aloud,
    /// from an alphabet without look-alikes (Crockford's base32).
    pub fn password(&self) -> String {
        const ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";
        let digest = self.digest("password");
        let mut bits: u128 = 0;
        for b in &digest[..16] {
            bits = (bits << 8) | u128::from(*b);
        }
        let mut out = String::with_capacity(23);
        for i in 0..20 {
            if i > 0 && i % 5 == 0 {
                out.push('-');
            }
            out.push(ALPHABET[(bits & 31) as usize] as char);
            bits >>= 5;
        }
        out
    }
}

/// What `ID.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Invitation {
    /// The certificate's name (its CN and the `.p12` file name).
    pub name: String,
    /// Its subject DN.
    pub subject: String,
    /// Its serial, upper-case hex.
    pub serial: String,
    /// Its end of validity, RFC 3339.
    pub not_after: String,
    /// When the invitation was made, Unix time.
    pub created: i64,
    /// When the link stops working, Unix time.
    pub expires: i64,
}

/// Why a link gives nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No invitation has this token (404; counts as a failed attempt).
    #[error("unknown invitation")]
    Unknown,
    /// The bundle was downloaded already, or the invitation was cancelled (410).
    #[error("invitation already used or cancelled")]
    Used,
    /// Past its expiry (410).
    #[error("invitation expired")]
    Expired,
}

/// Where an invitation stands, for `certs list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The link works.
    Pending,
    /// Downloaded, or cancelled.
    Used,
    /// Not downloaded in time (whether or not the daemon has deleted its bundle yet).
    Expired,
    /// Its files are gone.
    Missing,
}

/// The enroll folder.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The folder at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    fn json(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn p12(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.p12"))
    }

    fn unclaimed(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.unclaimed"))
    }

    /// Stores an invitation: the bundle and its unclaimed mark first, then the record that makes
    /// the link live; what was written is removed again when a later file fails. The
    /// files belong to the folder's owner: the operator runs `certs invite` as root (it needs
    /// the CA key), the daemon reads them as its own user, who owns the folder.
    ///
    /// # Errors
    /// When a file cannot be written or handed to the folder's owner.
    pub fn put(&self, token: &Token, invitation: &Invitation, p12: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(&self.dir)?;
        let owner = (meta.uid(), meta.gid());
        let id = token.id();
        let json = serde_json::to_vec_pretty(invitation).map_err(io::Error::other)?;
        let files = [
            (self.p12(&id), p12),
            (self.unclaimed(&id), &[][..]),
            (self.json(&id), &json[..]),
        ];
        for (i, (path, bytes)) in files.iter().enumerate() {
            if let Err(e) = write_private(path, bytes, owner) {
                for (written, _) in &files[..i] {
                    let _ = std::fs::remove_file(written);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Where the invitation stored under `id` stands at `now` (Unix time).
    pub fn status(&self, id: &str, now: i64) -> Status {
        let Ok(inv) = self.read(id) else {
            return Status::Missing;
        };
        let expired = inv.expires <= now;
        if self.p12(id).exists() {
            return if expired {
                Status::Expired
            } else {
                Status::Pending
            };
        }
        // No bundle: downloaded (the mark went with it), cancelled, or expired unclaimed. An
        // invitation stored before the mark existed reads as downloaded, as it always did.
        if expired && self.unclaimed(id).exists() {
            Status::Expired
        } else {
            Status::Used
        }
    }

    /// Cancels the invitation under `id`: its bundle is deleted, the link answers 410.
    /// Whether there was a bundle to delete.
    ///
    /// # Errors
    /// When the bundle exists and cannot be deleted.
    pub fn cancel(&self, id: &str) -> io::Result<bool> {
        match std::fs::remove_file(self.p12(id)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn read(&self, id: &str) -> io::Result<Invitation> {
        let bytes = std::fs::read(self.json(id))?;
        serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// The invitation behind a link, when it can still be downloaded. An expired one loses
    /// its bundle here (the daemon has no other reason to look).
    ///
    /// # Errors
    /// The [`Refusal`]; an unreadable record counts as unknown.
    pub fn open(&self, token: &Token, now: i64) -> Result<Invitation, Refusal> {
        let id = token.id();
        let invitation = self.read(&id).map_err(|_| Refusal::Unknown)?;
        if invitation.expires <= now {
            let _ = std::fs::remove_file(self.p12(&id));
            return Err(Refusal::Expired);
        }
        if !self.p12(&id).exists() {
            return Err(Refusal::Used);
        }
        Ok(invitation)
    }

    /// Takes the bundle: it is read and deleted, and handed out only by the one caller whose
    /// delete succeeded, so two downloads racing for one link get it once between them.
    ///
    /// # Errors
    /// The [`Refusal`].
    pub fn take(&self, token: &Token, now: i64) -> Result<(Invitation, Vec<u8>), Refusal> {
        let invitation = self.open(token, now)?;
        let path = self.p12(&token.id());
        let bytes = std::fs::read(&path).map_err(|_| Refusal::Used)?;
        std::fs::remove_file(&path).map_err(|_| Refusal::Used)?;
        // Claimed: only `certs list` reads the mark, so failing to delete it costs only that.
        let _ = std::fs::remove_file(self.unclaimed(&token.id()));
        Ok((invitation, bytes))
    }
}

fn write_private(path: &Path, bytes: &[u8], (uid, gid): (u32, u32)) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let mine = f.metadata()?;
    if (mine.uid(), mine.gid()) != (uid, gid) {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot hand {} to the folder's owner (uid {uid}): {e}; run as root or as that user", path.display()),
            )
        })?;
    }
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_only_in_their_own_spelling() {
        let t = Token::generate().unwrap();
        assert_eq!(t.as_str().len(), TOKEN_CHARS);
        assert!(Token::parse(t.as_str()).is_some());
        assert!(Token::parse("short").is_none());
        assert!(Token::parse(&format!("{}=", t.as_str())).is_none());
        assert!(Token::parse("../../../../etc/passwd1").is_none());
        // The last character carries 2 spare bits; a non-canonical one is refused.
        let mut odd = t.as_str().to_string();
        let last = odd.pop().unwrap();
        let alt = if last == 'A' { 'B' } else { 'A' };
        odd.push(alt);
        let parsed = Token::parse(&odd);
        assert!(parsed.is_none() || parsed.unwrap().as_str() == odd);
    }

    #[test]
    fn id_and_password_are_stable_and_distinct() {
        let t = Token::parse("AAAAAAAAAAAAAAAAAAAAAA").unwrap();
        let u = Token::parse("AAAAAAAAAAAAAAAAAAAAAQ").unwrap();
        assert_eq!(t.id(), t.clone().id());
        assert_ne!(t.id(), u.id());
        assert_eq!(t.id().len(), 64);
        let p = t.password();
        assert_eq!(p.len(), 23);
        assert_eq!(p.matches('-').count(), 3);
        assert_ne!(p, u.password());
        assert!(!t.id().contains(t.as_str()));
        assert_eq!(format!("{t:?}"), "Token(..)");
    }

    #[test]
    fn a_bundle_is_taken_once_then_the_link_is_gone() {
        let dir = std::env::temp_dir().join(format!("certgate-invites-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::new(&dir);
        let t = Token::generate().unwrap();
        let inv = Invitation {
            name: "alice".into(),
            subject: "CN=alice".into(),
            serial: "01".into(),
            not_after: "2027-01-01T00:00:00Z".into(),
            created: 100,
            expires: 200,
        };
        store.put(&t, &inv, b"bundle").unwrap();
        assert_eq!(store.status(&t.id(), 150), Status::Pending);
        assert_eq!(store.open(&t, 150), Ok(inv.clone()));
        assert_eq!(store.take(&t, 150), Ok((inv, b"bundle".to_vec())));
        assert_eq!(store.take(&t, 150), Err(Refusal::Used));
        assert_eq!(store.status(&t.id(), 150), Status::Used);
        let other = Token::generate().unwrap();
        assert_eq!(store.open(&other, 150), Err(Refusal::Unknown));
        // Downloaded, it stays downloaded after its expiry.
        assert_eq!(store.status(&t.id(), 250), Status::Used);
        // Expired unclaimed, it stays expired after the daemon deleted its bundle.
        let late = Token::generate().unwrap();
        let inv = Invitation {
            name: "bob".into(),
            ..store.read(&t.id()).unwrap()
        };
        store.put(&late, &inv, b"bundle").unwrap();
        assert_eq!(store.status(&late.id(), 250), Status::Expired);
        assert_eq!(store.open(&late, 250), Err(Refusal::Expired));
        assert!(!store.p12(&late.id()).exists());
        assert_eq!(store.status(&late.id(), 250), Status::Expired);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
