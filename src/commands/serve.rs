//! `aibridge serve`: binds the listener, then hands over to the server.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::{health_store, load_config};
use crate::cli::{GlobalArgs, ServeArgs};
use crate::config::{self, Config, ProviderConfig};
use crate::server::{self, ServerOptions};

pub fn run(global: &GlobalArgs, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(global)?;
    for warning in config
        .providers
        .values()
        .filter_map(ProviderConfig::warning)
    {
        tracing::warn!("{warning}");
    }
    let listen = args.listen.unwrap_or(config.listen);
    let allow_unauthenticated = args.allow_unauthenticated;
    check_exposure(listen, &config, allow_unauthenticated)?;
    let store = health_store(global, &config, args.no_state)?;
    let config_path = global.config.clone();
    // A reload is held to the same rule as the start.
    let reload = Box::new(move || {
        let env = |name: &str| std::env::var(name).ok();
        let config = config::load(config_path.as_deref(), &env)?;
        check_exposure(listen, &config, allow_unauthenticated)?;
        Ok(config)
    });
    let listener = server::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
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

/// A listener others can reach needs access tokens, or anyone who can reach it could spend
/// the keys.
fn check_exposure(
    listen: SocketAddr,
    config: &Config,
    allow_unauthenticated: bool,
) -> anyhow::Result<()> {
    if !listen.ip().is_loopback() && config.serve.access_tokens.is_empty() && !allow_unauthenticated
    {
        bail!(
            "refusing to listen on {listen} without access tokens: anyone who can reach it could spend \
             your keys; set access_tokens (or AIBRIDGE_ACCESS_TOKENS), or pass --allow-unauthenticated"
        );
    }
    Ok(())
}
