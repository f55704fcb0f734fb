//! Shared key health: every mark and clear any command makes goes through one store, so the
//! next `send`, a restarted `serve` and (through Redis) every replica of a fleet see it.
//!
//! Two backends: the state file ([`file`]), for processes on one machine, and Redis
//! ([`redis`]), for a fleet. Keys are recorded by provider name and fingerprint, never by
//! value. Merge rules are the same for both: a later deadline wins, a disable beats a
//! cooldown, and a reset or revive clears.

pub mod file;
mod recorder;
pub mod redis;
mod select;

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::keypool::{
    Affinity, DisableReason, KeyState, Pool, SessionId, StateKind, StateReason, to_unix_ms,
};

pub use file::{StateError, StateFile, StateStore};
pub use recorder::{HealthRecorder, HealthSink, RecorderTask, SharedStatus};
pub use redis::RedisHealth;
pub use select::{KeySelectError, KnownKey, select_key};

/// One observation of a key, to be merged into shared health.
#[derive(Debug, Clone)]
pub struct Observation {
    pub provider: String,
    pub fingerprint: String,
    pub hint: String,
    /// `None` for a transport failure.
    pub status: Option<u16>,
    /// The key's state after the attempt, when the attempt marked it.
    pub mark: Option<KeyState>,
    /// The model a cooling mark applies to alone; `None` when it is key-wide.
    pub model: Option<String>,
    /// Why that model is out: a rate limit unless said otherwise.
    pub model_reason: StateReason,
    pub at: SystemTime,
    /// The provider's `max_cooldown`: no cooldown written ends later than this after `at`,
    /// whatever the store held before.
    pub max_cooldown: Duration,
}

impl Observation {
    /// The latest a cooldown recorded with this observation may end.
    pub fn cap(&self) -> SystemTime {
        self.at.checked_add(self.max_cooldown).unwrap_or(self.at)
    }
}

/// A change to shared health.
#[derive(Debug, Clone)]
pub enum HealthChange {
    /// An attempt with a key: its status, and the mark it earned if any.
    Observed(Observation),
    /// Marks cleared by a reset or a revive: of every provider, one provider, or one key.
    Cleared {
        provider: Option<String>,
        fingerprint: Option<String>,
    },
    /// A session is on a key until `expires_ms` (shared through Redis only).
    Assigned {
        provider: String,
        fingerprint: String,
        session: u64,
        expires_ms: u64,
    },
}

/// A key whose mark was cleared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearedKey {
    pub provider: String,
    pub key: String,
    pub fingerprint: String,
    /// The state before: cooling or disabled.
    pub was: StateKind,
}

/// A mark as other processes hear of it: what they apply to their in-memory pools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum SharedChange {
    Cooling {
        provider: String,
        fingerprint: String,
        /// `None` for a key-wide cooldown.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        until_ms: u64,
        /// Why the model is out; a rate limit when absent.
        #[serde(default, skip_serializing_if = "StateReason::is_rate_limited")]
        reason: StateReason,
    },
    Disabled {
        provider: String,
        fingerprint: String,
        reason: DisableReason,
    },
    Cleared {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        provider: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
    },
    /// A session's key (the session by its hash only).
    Assigned {
        provider: String,
        fingerprint: String,
        session: u64,
        expires_ms: u64,
    },
}

impl SharedChange {
    /// What other processes need to hear of a change; `None` when it marks nothing.
    pub fn of(change: &HealthChange) -> Option<Self> {
        match change {
            HealthChange::Observed(seen) => match seen.mark? {
                KeyState::Available => None,
                KeyState::Disabled(reason) => Some(Self::Disabled {
                    provider: seen.provider.clone(),
                    fingerprint: seen.fingerprint.clone(),
                    reason,
                }),
                KeyState::Cooling { until_ms } => Some(Self::Cooling {
                    provider: seen.provider.clone(),
                    fingerprint: seen.fingerprint.clone(),
                    model: seen.model.clone(),
                    until_ms: until_ms.min(to_unix_ms(seen.cap())),
                    reason: seen.model_reason,
                }),
            },
            HealthChange::Cleared {
                provider,
                fingerprint,
            } => Some(Self::Cleared {
                provider: provider.clone(),
                fingerprint: fingerprint.clone(),
            }),
            HealthChange::Assigned {
                provider,
                fingerprint,
                session,
                expires_ms,
            } => Some(Self::Assigned {
                provider: provider.clone(),
                fingerprint: fingerprint.clone(),
                session: *session,
                expires_ms: *expires_ms,
            }),
        }
    }

    /// The provider the change is for; `None` for a clear of every provider.
    pub fn provider(&self) -> Option<&str> {
        match self {
            Self::Cooling { provider, .. }
            | Self::Disabled { provider, .. }
            | Self::Assigned { provider, .. } => Some(provider),
            Self::Cleared { provider, .. } => provider.as_deref(),
        }
    }

    /// Applies the change to one provider's pool. Returns whether it freed a key (a clear
    /// of a marked key), so requests held for a key can look again.
    pub fn apply_to(&self, pool: &Pool) -> bool {
        match self {
            Self::Cooling {
                fingerprint,
                model,
                until_ms,
                reason,
                ..
            } => {
                if let Some(index) = pool.index_of(fingerprint) {
                    match model {
                        Some(model) => pool.restore_model(index, model, *until_ms, *reason),
                        None => {
                            pool.merge_shared(
                                index,
                                KeyState::Cooling {
                                    until_ms: *until_ms,
                                },
                            );
                        }
                    }
                }
                false
            }
            Self::Disabled {
                fingerprint,
                reason,
                ..
            } => {
                if let Some(index) = pool.index_of(fingerprint) {
                    pool.merge_shared(index, KeyState::Disabled(*reason));
                }
                false
            }
            Self::Cleared { fingerprint, .. } => {
                let indices: Vec<usize> = match fingerprint {
                    Some(fingerprint) => pool.index_of(fingerprint).into_iter().collect(),
                    None => (0..pool.len()).collect(),
                };
                let mut freed = false;
                for index in indices {
                    freed |= pool.reset(index) != KeyState::Available;
                }
                freed
            }
            Self::Assigned { .. } => false,
        }
    }

    /// Applies a session's assignment to one provider's sessions (anything else is not
    /// about sessions).
    pub fn apply_to_sessions(&self, pool: &Pool, sessions: &Affinity) {
        if let Self::Assigned {
            fingerprint,
            session,
            expires_ms,
            ..
        } = self
            && let Some(index) = pool.index_of(fingerprint)
        {
            sessions.merge(SessionId(*session), index, *expires_ms);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(transparent)]
    File(#[from] StateError),
    /// The Redis error as text: its own message already holds its cause, which a chain
    /// would print again.
    #[error("redis {url}: {detail}")]
    Redis { url: String, detail: String },
    #[error("redis {url}: the connection closed")]
    Closed { url: String },
}

/// Where shared health lives.
pub enum HealthStore {
    File(StateStore),
    /// Boxed: the client and its connection are large, and made once per process.
    Redis(Box<RedisHealth>),
}

impl HealthStore {
    /// Where marks are kept, for people: `state file PATH` or `redis URL (prefix P)`, the
    /// URL's password masked.
    pub fn describe(&self) -> String {
        match self {
            Self::File(store) => format!("state file {}", store.path().display()),
            Self::Redis(redis) => redis.describe(),
        }
    }

    /// Every mark recorded, as a state file holds them.
    pub async fn load(&self) -> Result<StateFile, HealthError> {
        match self {
            Self::File(store) => {
                let store = store.clone();
                Ok(blocking(move || store.load()).await?)
            }
            Self::Redis(redis) => redis.load().await,
        }
    }

    /// Records `changes` (and, through Redis, tells every other process). Returns the keys
    /// a clear found marked.
    pub async fn apply(&self, changes: Vec<HealthChange>) -> Result<Vec<ClearedKey>, HealthError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let now = SystemTime::now();
        match self {
            Self::File(store) => {
                let store = store.clone();
                Ok(blocking(move || store.update(|state| state.apply(&changes, now))).await?)
            }
            Self::Redis(redis) => redis.apply(&changes, now).await,
        }
    }
}

/// Runs file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StateError> + Send + 'static,
) -> Result<T, StateError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keypool::{ManualClock, PoolSettings, from_unix_ms};
    use crate::secret::ApiKey;

    const T0: u64 = 1_800_000_000_000;

    fn pool() -> (Pool, std::sync::Arc<ManualClock>) {
        let clock = ManualClock::starting_at(T0);
        let keys = vec![ApiKey::new("sk-ant-shared-0000000000000001")];
        let settings = PoolSettings {
            max_cooldown: Duration::from_secs(60),
            ..PoolSettings::default()
        };
        (Pool::new(keys, settings, clock.clone()).unwrap(), clock)
    }

    #[test]
    fn shared_changes_follow_the_merge_rules() {
        let (pool, _clock) = pool();
        let fingerprint = pool.key(0).fingerprint().to_owned();
        let cooling = |until_ms| SharedChange::Cooling {
            provider: "anthropic".into(),
            fingerprint: fingerprint.clone(),
            model: None,
            until_ms,
            reason: StateReason::RateLimited,
        };
        cooling(T0 + 30_000).apply_to(&pool);
        cooling(T0 + 10_000).apply_to(&pool);
        assert_eq!(
            pool.state(0),
            KeyState::Cooling {
                until_ms: T0 + 30_000
            },
            "later wins"
        );
        cooling(T0 + 3_600_000).apply_to(&pool);
        assert_eq!(
            pool.state(0),
            KeyState::Cooling {
                until_ms: T0 + 60_000
            },
            "capped"
        );
        let disabled = SharedChange::Disabled {
            provider: "anthropic".into(),
            fingerprint: fingerprint.clone(),
            reason: DisableReason::Unauthorized,
        };
        disabled.apply_to(&pool);
        cooling(T0 + 50_000).apply_to(&pool);
        assert_eq!(
            pool.state(0),
            KeyState::Disabled(DisableReason::Unauthorized),
            "a disable beats a cooldown"
        );
        let cleared = SharedChange::Cleared {
            provider: None,
            fingerprint: Some(fingerprint.clone()),
        };
        assert!(cleared.apply_to(&pool), "a clear of a marked key frees it");
        assert_eq!(pool.state(0), KeyState::Available);
        assert!(!cleared.apply_to(&pool));
    }

    #[test]
    fn model_cooldowns_and_unknown_keys() {
        let (pool, clock) = pool();
        let change = SharedChange::Cooling {
            provider: "anthropic".into(),
            fingerprint: pool.key(0).fingerprint().to_owned(),
            model: Some("opus".into()),
            until_ms: T0 + 5_000,
            reason: StateReason::NoModelAccess,
        };
        change.apply_to(&pool);
        assert_eq!(pool.state(0), KeyState::Available, "key-wide untouched");
        assert!(pool.any_model_cooling(0));
        clock.advance(Duration::from_secs(6));
        assert!(!pool.any_model_cooling(0));
        let stranger = SharedChange::Disabled {
            provider: "anthropic".into(),
            fingerprint: "0000000000000000".into(),
            reason: DisableReason::Quota,
        };
        stranger.apply_to(&pool);
        assert_eq!(pool.state(0), KeyState::Available);
    }

    #[test]
    fn announcements_carry_no_key_and_cap_deadlines() {
        let seen = Observation {
            model_reason: StateReason::RateLimited,
            provider: "openai".into(),
            fingerprint: "0123456789abcdef".into(),
            hint: "sk-a...0001".into(),
            status: Some(429),
            mark: Some(KeyState::Cooling {
                until_ms: T0 + 86_400_000,
            }),
            model: Some("gpt-4o".into()),
            at: from_unix_ms(T0),
            max_cooldown: Duration::from_secs(60),
        };
        let change = SharedChange::of(&HealthChange::Observed(seen.clone())).unwrap();
        let text = serde_json::to_string(&change).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"change":"cooling","provider":"openai","fingerprint":"0123456789abcdef","model":"gpt-4o","until_ms":{}}}"#,
                T0 + 60_000
            )
        );
        let unmarked = Observation { mark: None, ..seen };
        assert_eq!(SharedChange::of(&HealthChange::Observed(unmarked)), None);
    }
}
