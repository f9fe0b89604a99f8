//! The `certgate` binary: parses the command line and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use certgate::cli::commands::{self, CliError};
use certgate::config::DEFAULT_CONFIG_PATH;
use certgate::ops::logging::LogFormat;

/// A mutual-TLS reverse proxy for AI WebUIs and APIs.
#[derive(Parser)]
#[command(name = "certgate", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the proxy until SIGTERM or SIGINT; SIGHUP reloads the config and every file it names.
    Run {
        /// The config file.
        #[arg(short, long, env = "CERTGATE_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Log format, overriding [log] format.
        #[arg(long, value_enum)]
        log_format: Option<LogFormatArg>,
    },
    /// Validate the config and every file it names; print the effective settings.
    /// Exit 0 when valid, 2 when not.
    Check {
        /// The config file.
        #[arg(short, long, env = "CERTGATE_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Private-CA tooling: CA, server and client certificates, .p12 bundles, revocation.
    Certs {
        #[command(subcommand)]
        command: certgate::cli::certs::CertsCommand,
    },
    /// Bearer-token tooling: mint a token, or ask the config whether it accepts one.
    Token {
        #[command(subcommand)]
        command: certgate::cli::token::TokenCommand,
    },
    /// One-command quickstart: demo PKI, echo backend, proxy on 127.0.0.1:8443.
    Demo {
        /// Where the demo PKI lives (created if missing).
        #[arg(long, default_value = "certs-example")]
        dir: PathBuf,
    },
}

/// `--log-format`
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    /// key=value lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, log_format } => commands::run(
            &config,
            log_format.map(|f| match f {
                LogFormatArg::Text => LogFormat::Text,
                LogFormatArg::Json => LogFormat::Json,
            }),
        ),
        Command::Check { config } => commands::check(&config).map(|summary| print!("{summary}")),
        Command::Certs { command } => certgate::cli::certs::run(command),
        Command::Token { command } => certgate::cli::token::run(command),
        Command::Demo { dir } => certgate::cli::demo::run(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError { code, error }) => {
            eprintln!("certgate: {error:#}");
            ExitCode::from(code)
        }
    }
}
