//! The subcommands: thin adapters from the command line to the library.

pub mod generate;
mod output;
pub mod pool;
pub mod probe_keys;
pub mod send;
pub mod serve;

use anyhow::Context;

use crate::cli::GlobalArgs;
use crate::config::{self, Config};
use crate::state::StateStore;

/// The configuration, from `--config`/`AIBRIDGE_CONFIG`, the default file, or defaults.
pub fn load_config(global: &GlobalArgs) -> anyhow::Result<Config> {
    let env = |name: &str| std::env::var(name).ok();
    config::load(global.config.as_deref(), &env).context("invalid configuration")
}

/// The state file to use: `--state-file`/`AIBRIDGE_STATE_FILE`, else the config's, else the
/// default location. `None` with `--no-state`.
pub fn state_store(global: &GlobalArgs, config: &Config, no_state: bool) -> Option<StateStore> {
    if no_state {
        return None;
    }
    let path = global
        .state_file
        .clone()
        .or_else(|| config.state_file.clone())
        .or_else(StateStore::default_path);
    if path.is_none() {
        tracing::warn!("no state directory on this system; key marks will not be kept");
    }
    path.map(StateStore::new)
}

/// Runs a future on a runtime made for one command.
pub fn block_on<F: std::future::Future>(future: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(future))
}
