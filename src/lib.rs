//! aibridge: a pool of API keys in front of LLM provider APIs, with failover between keys.
//!
//! The library modules (`keypool`, `provider`, `failover`, `config`, `state`) know nothing of
//! the command line or the terminal; `commands` adapts them to the subcommands.

pub mod cli;
pub mod commands;
pub mod config;
pub mod failover;
pub mod files;
pub mod health;
pub mod keypool;
mod logging;
pub mod probe;
pub mod provider;
pub mod report;
pub mod secret;
pub mod server;
pub mod table;
pub mod text;
pub mod token_proof;
pub mod transport;

use std::process::ExitCode;

use cli::{Cli, Command, PoolCommand};

/// Exit codes, shared by every subcommand.
pub mod exit {
    pub const OK: u8 = 0;
    /// The upstream answered with an error that is not the key's fault, or a check failed.
    pub const FAILURE: u8 = 1;
    /// Bad flags or config.
    pub const USAGE: u8 = 2;
    /// Every key is cooling.
    pub const RATE_LIMITED: u8 = 3;
    /// Every key is disabled.
    pub const UNAUTHORIZED: u8 = 4;
    /// The upstream could not be reached or did not answer in time.
    pub const UNREACHABLE: u8 = 5;
}

/// Whether `error` comes from writing to a stdout whose reader has gone (a closed pipe).
pub fn is_closed_stdout(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // A server's log is its output; a one-shot command's is only for trouble.
    let baseline = u8::from(matches!(cli.command, Command::Serve(_)));
    // `send` prints each attempt with its mark: the mark's log line would say it twice.
    let without_marks = matches!(cli.command, Command::Send(_));
    logging::init(
        cli.global.verbose + baseline,
        cli.global.quiet,
        without_marks,
    );
    match cli.command {
        Command::Send(args) => commands::send::run(&cli.global, args),
        Command::Serve(args) => commands::serve::run(&cli.global, &args),
        Command::Generate(args) => commands::generate::run(&args),
        Command::ProbeKeys(args) => commands::probe_keys::run(&cli.global, &args),
        Command::Pool(PoolCommand::Status(args)) => commands::pool::status(&cli.global, &args),
        Command::Pool(PoolCommand::Reset(args)) => commands::pool::reset(&cli.global, &args),
    }
}
