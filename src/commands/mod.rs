//! The subcommands: thin adapters from the command line to the library.

pub mod generate;
mod output;
pub mod pool;
pub mod probe_keys;
pub mod send;
pub mod serve;

use std::io::Read;
use std::path::Path;

use anyhow::Context;

use crate::cli::GlobalArgs;
use crate::config::{self, Config, ProviderConfig, parse_keys_file};
use crate::secret::ApiKey;
use crate::state::StateStore;

/// The configured provider `name`, or an error naming the configured ones.
pub fn provider_config<'a>(config: &'a Config, name: &str) -> anyhow::Result<&'a ProviderConfig> {
    config.providers.get(name).with_context(|| {
        let known: Vec<_> = config.providers.keys().map(String::as_str).collect();
        format!(
            "unknown provider \"{name}\" (configured: {})",
            known.join(", ")
        )
    })
}

/// Keys given on the command line: `--key` values, then the lines of `--keys-file` (`-` is
/// stdin; blank lines and `#` comments are skipped).
pub fn keys_from_flags(keys: &[String], keys_file: Option<&Path>) -> anyhow::Result<Vec<ApiKey>> {
    let mut list: Vec<ApiKey> = keys.iter().map(|key| ApiKey::new(key.as_str())).collect();
    if let Some(path) = keys_file {
        let text = if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read keys from stdin")?;
            text
        } else {
            config::read_keys_file(path)
                .with_context(|| format!("cannot read keys file {}", path.display()))?
        };
        list.extend(parse_keys_file(&text));
    }
    Ok(list)
}

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
