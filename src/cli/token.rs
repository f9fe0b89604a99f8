//! `certgate token issue` / `verify`: mint bearer tokens shaped like the seed's
//! `token_manager.generate_token` (HS256, `exp`, issuer `deoldify_api_gateway`, `user_id`), and
//! ask the configured `[jwt]` whether it accepts one and, if not, why.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};

use crate::cli::commands::CliError;
use crate::config::{Config, DEFAULT_CONFIG_PATH};

/// `certgate token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a signed token.
    Issue(IssueArgs),
    /// Say whether the configured `[jwt]` accepts a token, and why not.
    Verify(VerifyArgs),
}

/// `token issue`
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// The shared secret (the same file as `[jwt] secret_file`).
    #[arg(long, value_name = "FILE")]
    pub secret_file: PathBuf,
    /// The `sub` claim.
    #[arg(long)]
    pub sub: String,
    /// Lifetime, like "24h", "30m".
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// The `iss` claim.
    #[arg(long)]
    pub iss: Option<String>,
    /// The `aud` claim.
    #[arg(long)]
    pub aud: Option<String>,
    /// HS256, HS384 or HS512.
    #[arg(long, default_value = "HS256")]
    pub alg: String,
    /// Extra claim `K=V` (repeatable); V is read as JSON when it parses, else as a string.
    #[arg(long = "claim", value_name = "K=V")]
    pub claims: Vec<String>,
}

/// `token verify`
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The config file whose `[jwt]` decides.
    #[arg(short, long, env = "CERTGATE_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// The token.
    pub token: String,
}

fn invalid(msg: impl Into<String>) -> CliError {
    CliError::invalid(anyhow::anyhow!(msg.into()))
}

/// Runs one `certgate token` command.
///
/// # Errors
/// Exit 2 for bad input or config; exit 1 when `verify` refuses the token.
pub fn run(cmd: TokenCommand) -> Result<(), CliError> {
    match cmd {
        TokenCommand::Issue(a) => {
            println!("{}", issue(&a)?);
            Ok(())
        }
        TokenCommand::Verify(a) => verify(&a),
    }
}

/// Builds and signs the token.
///
/// # Errors
/// Exit 2 for an unreadable or short secret, a bad claim or algorithm.
pub fn issue(a: &IssueArgs) -> Result<String, CliError> {
    let secret = std::fs::read(&a.secret_file).map_err(|e| {
        invalid(format!(
            "{}: cannot read the secret: {e}",
            a.secret_file.display()
        ))
    })?;
    let trimmed = String::from_utf8_lossy(&secret)
        .trim_end_matches(['\r', '\n'])
        .len();
    if trimmed < 32 {
        return Err(invalid(format!(
            "{}: the secret has {trimmed} bytes; use at least 32 (certgate's [jwt] refuses shorter ones)",
            a.secret_file.display()
        )));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut claims = serde_json::Map::new();
    for kv in &a.claims {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| invalid(format!("--claim {kv:?}: write it as KEY=VALUE")))?;
        let value =
            serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
        claims.insert(k.to_string(), value);
    }
    claims.insert("sub".into(), a.sub.clone().into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + a.ttl.as_secs()).into());
    if let Some(iss) = &a.iss {
        claims.insert("iss".into(), iss.clone().into());
    }
    if let Some(aud) = &a.aud {
        claims.insert("aud".into(), aud.clone().into());
    }
    crate::policy::jwt::issue_hmac(&a.alg, &secret, &claims).map_err(invalid)
}

fn verify(a: &VerifyArgs) -> Result<(), CliError> {
    let config = Config::load(&a.config).map_err(CliError::invalid)?;
    let jwt = config
        .jwt
        .ok_or_else(|| invalid(format!("{}: there is no [jwt] section", a.config.display())))?;
    match jwt.verify(a.token.trim()) {
        Ok(subject) => {
            println!(
                "accepted: subject {subject:?} (sent to the backend as {})",
                jwt.subject_header
            );
            Ok(())
        }
        Err(e) => Err(CliError::other(anyhow::anyhow!("refused: {e}"))),
    }
}
