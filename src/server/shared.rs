//! The server's end of shared key health: marks from other processes land in the running
//! pools, and the store is read once before the first request.

use std::time::Duration;

use anyhow::Context;

use super::AppState;
use crate::health::{HealthError, HealthSink, HealthStore, SharedChange, StateFile};

/// How long a stopping server waits for its last marks to be written.
pub const FLUSH_LIMIT: Duration = Duration::from_secs(3);

/// Every shared mark, before the server serves, and whether the store was reached. A state
/// file that cannot be read stops the start; Redis out of reach does not: the server starts
/// on its own health and catches up when Redis is back.
pub async fn load_at_start(
    store: Option<&HealthStore>,
) -> anyhow::Result<(Option<StateFile>, bool)> {
    let Some(store) = store else {
        return Ok((None, true));
    };
    match store.load().await {
        Ok(state) => Ok((Some(state), true)),
        Err(HealthError::File(error)) => Err(error).context("cannot read the state file"),
        Err(error) => {
            tracing::warn!(
                "shared key health degraded: {error}; serving on this process's own key health \
                 until Redis is reachable"
            );
            Ok((None, false))
        }
    }
}

/// The running pools, as the recorder's sink.
pub struct Pools(pub &'static AppState);

impl HealthSink for Pools {
    fn apply(&self, changes: &[SharedChange]) {
        let bridge = self.0.bridge.load();
        for change in changes {
            let upstreams = bridge
                .upstreams
                .values()
                .filter(|upstream| change.provider().is_none_or(|name| name == &*upstream.name));
            for upstream in upstreams {
                if change.apply_to(&upstream.pool) {
                    upstream.key_freed();
                }
                change.apply_to_sessions(&upstream.pool, &upstream.sessions);
            }
        }
    }

    fn restore(&self, shared: &StateFile) {
        let bridge = self.0.bridge.load();
        for upstream in bridge.upstreams.values() {
            shared.restore_into(&upstream.name, &upstream.pool);
        }
    }
}
