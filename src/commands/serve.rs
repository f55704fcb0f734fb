//! `aibridge serve`: binds the listener, then hands over to the server.

use std::process::ExitCode;

use anyhow::{Context, bail};

use super::{load_config, state_store};
use crate::cli::{GlobalArgs, ServeArgs};
use crate::config;
use crate::server::{self, ServerOptions};

pub fn run(global: &GlobalArgs, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(global)?;
    let listen = args.listen.unwrap_or(config.listen);
    if !listen.ip().is_loopback()
        && config.serve.access_tokens.is_empty()
        && !args.allow_unauthenticated
    {
        bail!(
            "refusing to listen on {listen} without access tokens: anyone who can reach it could spend \
             your keys; set access_tokens (or AIBRIDGE_ACCESS_TOKENS), or pass --allow-unauthenticated"
        );
    }
    let store = state_store(global, &config, args.no_state);
    let config_path = global.config.clone();
    let reload = Box::new(move || {
        let env = |name: &str| std::env::var(name).ok();
        config::load(config_path.as_deref(), &env)
    });
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    let workers = args.workers.map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        usize::from,
    );
    server::run(
        config,
        ServerOptions {
            listener,
            workers,
            store,
            reload,
        },
    )?;
    Ok(ExitCode::SUCCESS)
}
