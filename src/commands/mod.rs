//! The subcommands: thin adapters from the command line to the library.

pub mod generate;
mod output;
pub mod pool;
pub mod probe_keys;
pub mod send;
pub mod serve;

use std::path::Path;

use anyhow::Context;

use crate::cli::GlobalArgs;
use crate::config::{self, Config, ProviderConfig, parse_keys_file};
use crate::health::{HealthChange, HealthError, HealthStore, RedisHealth, StateFile, StateStore};
use crate::secret::ApiKey;

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
            crate::files::read_bounded(std::io::stdin().lock(), config::MAX_KEYS_FILE)
                .and_then(crate::files::text)
                .context("cannot read keys from stdin")?
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

/// Where key health is shared: Redis when a URL is given (`--redis-url`,
/// `AIBRIDGE_REDIS_URL`, `redis_url`), else the state file (`--state-file`,
/// `AIBRIDGE_STATE_FILE`, `state_file`, else the default location). `None` with `--no-state`,
/// or when the system has no state directory.
pub fn health_store(
    global: &GlobalArgs,
    config: &Config,
    no_state: bool,
) -> anyhow::Result<Option<HealthStore>> {
    if no_state {
        return Ok(None);
    }
    if let Some(url) = global.redis_url.as_ref().or(config.redis_url.as_ref()) {
        let redis = RedisHealth::new(url, &config.redis_prefix)?;
        return Ok(Some(HealthStore::Redis(Box::new(redis))));
    }
    let path = global
        .state_file
        .clone()
        .or_else(|| config.state_file.clone())
        .or_else(StateStore::default_path);
    if path.is_none() {
        tracing::warn!("no state directory on this system; key marks will not be kept");
    }
    Ok(path.map(|path| HealthStore::File(StateStore::new(path))))
}

/// Shared key health around a one-shot command: read before it, written after. Redis out of
/// reach is said once on stderr and the command goes on with its own marks; a state file that
/// cannot be read is an error.
pub struct SharedHealth {
    store: Option<HealthStore>,
    /// Whether loading reached the store: a store that could not be read is not written.
    reachable: bool,
}

impl SharedHealth {
    pub fn open(global: &GlobalArgs, config: &Config, no_state: bool) -> anyhow::Result<Self> {
        Ok(Self {
            store: health_store(global, config, no_state)?,
            reachable: true,
        })
    }

    /// Every shared mark; `None` without a store, or with Redis out of reach.
    pub async fn load(&mut self) -> anyhow::Result<Option<StateFile>> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        match store.load().await {
            Ok(state) => Ok(Some(state)),
            Err(HealthError::File(error)) => {
                Err(error).context("cannot read the state file (--no-state skips it)")
            }
            Err(error) => {
                self.reachable = false;
                tracing::warn!("key marks are not shared: {error}");
                Ok(None)
            }
        }
    }

    /// Records what the command saw; a failure is a warning, as the command's result stands.
    pub async fn record(&self, changes: Vec<HealthChange>) {
        let Some(store) = self.store.as_ref().filter(|_| self.reachable) else {
            return;
        };
        if let Err(error) = store.apply(changes).await {
            tracing::warn!("key marks not saved: {error}");
        }
    }
}

/// Runs a future on a runtime made for one command.
pub fn block_on<F: std::future::Future>(future: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(future))
}
