//! The pool as people and scripts see it: every provider's keys with their state and
//! counters. One schema for `GET /_aibridge/pool` and `aibridge pool status --json`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::failover::Upstream;
pub use crate::health::ClearedKey;
use crate::health::StateFile;
use crate::health::file::KeyRecord;
use crate::keypool::{
    KeySnapshot, KeyState, MinuteCounts, ModelCooldown, StateKind, StateReason, TokenCounts,
    ceil_secs, from_unix_ms, to_unix_ms,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolReport {
    pub providers: Vec<ProviderReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderReport {
    pub name: String,
    /// `anthropic`, `openai` or `copilot`; `-` for a provider only shared health knows.
    pub kind: String,
    pub enabled: bool,
    /// False for a provider only shared health knows (not in the configuration).
    #[serde(default = "configured")]
    pub configured: bool,
    /// Requests the pool could not serve since the server started (429 or 502 from the
    /// bridge); `null` when read from shared health.
    #[serde(default)]
    pub exhausted: Option<u64>,
    pub keys: Vec<KeyReport>,
}

fn configured() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyReport {
    pub hint: String,
    pub fingerprint: String,
    /// The key-wide state.
    pub state: StateKind,
    pub reason: Option<StateReason>,
    pub cooldown_remaining_secs: Option<u64>,
    /// Models the key is cooling for on their own, beside the key-wide state.
    #[serde(default)]
    pub cooling: BTreeMap<String, ModelCooling>,
    pub last_status: Option<u16>,
    /// RFC 3339.
    pub last_used: Option<String>,
    /// Requests and failures since the server started; `null` when read from shared health,
    /// which does not count them.
    pub requests: Option<u64>,
    pub failures: Option<u64>,
    /// Tokens the key's answers reported since the server started; `null` when read from
    /// shared health.
    #[serde(default)]
    pub tokens: Option<TokenReport>,
    /// Attempts per minute over the last 15 minutes, oldest first; `null` when read from
    /// shared health.
    #[serde(default)]
    pub recent: Option<Vec<MinuteCounts>>,
    /// False for a key only shared health knows (written by `probe-keys --keys-file`, say).
    #[serde(default = "configured")]
    pub configured: bool,
}

/// Tokens one key's answers reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenReport {
    /// Billed at the full input rate.
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    /// The share of the whole prompt (input + cache read + cache write) read from the
    /// provider's prompt cache; `null` before any input.
    pub cache_read_share: Option<f64>,
}

impl From<TokenCounts> for TokenReport {
    fn from(counts: TokenCounts) -> Self {
        Self {
            input: counts.input,
            output: counts.output,
            cache_read: counts.cache_read,
            cache_write: counts.cache_write,
            cache_read_share: counts
                .cache_read_share()
                .map(|share| (share * 1000.0).round() / 1000.0),
        }
    }
}

/// One model's cooldown on one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCooling {
    /// RFC 3339.
    pub until: String,
    pub remaining_secs: u64,
    /// Why: a 429, or a success that used up a budget.
    pub reason: StateReason,
}

impl PoolReport {
    pub fn new<'a>(upstreams: impl IntoIterator<Item = &'a Upstream>) -> Self {
        let providers = upstreams
            .into_iter()
            .map(|upstream| {
                let now = upstream.pool.clock().now_ms();
                ProviderReport {
                    name: upstream.name.to_string(),
                    kind: upstream.kind.to_string(),
                    enabled: upstream.enabled,
                    configured: true,
                    exhausted: Some(upstream.pool.exhaustions()),
                    keys: upstream
                        .pool
                        .snapshots()
                        .iter()
                        .map(|snapshot| KeyReport::new(snapshot, now))
                        .collect(),
                }
            })
            .collect();
        Self { providers }
    }
}

impl PoolReport {
    /// The report of configured pools restored from shared health, which keeps no request
    /// counts, with every key it records that the configuration lacks, marked as such.
    pub fn with_records(mut self, shared: &StateFile, now_ms: u64) -> Self {
        for provider in &mut self.providers {
            provider.exhausted = None;
            for key in &mut provider.keys {
                key.forget_counts();
            }
        }
        for (name, records) in &shared.providers {
            let position = match self.providers.iter().position(|p| p.name == *name) {
                Some(position) => position,
                None => {
                    self.providers.push(ProviderReport {
                        name: name.clone(),
                        kind: "-".to_owned(),
                        enabled: false,
                        configured: false,
                        exhausted: None,
                        keys: Vec::new(),
                    });
                    self.providers.len() - 1
                }
            };
            let provider = &mut self.providers[position];
            for (fingerprint, record) in records {
                if provider
                    .keys
                    .iter()
                    .any(|key| key.fingerprint == *fingerprint)
                {
                    continue;
                }
                let mut key = KeyReport::new(&snapshot_of(fingerprint, record, now_ms), now_ms);
                key.forget_counts();
                key.configured = false;
                provider.keys.push(key);
            }
        }
        self
    }
}

/// A recorded key as the pool would show it.
fn snapshot_of(fingerprint: &str, record: &KeyRecord, now_ms: u64) -> KeySnapshot {
    KeySnapshot {
        index: 0,
        hint: record.hint.clone(),
        fingerprint: fingerprint.to_owned(),
        state: KeyState::from(record.state).settle(now_ms),
        models: record
            .cooling
            .iter()
            .map(|(model, cooling)| ModelCooldown {
                model: model.as_str().into(),
                until_ms: to_unix_ms(cooling.until),
                reason: cooling.reason,
            })
            .filter(|cooling| cooling.until_ms > now_ms)
            .collect(),
        last_status: record.last_status,
        last_used_ms: record.last_used.map(to_unix_ms),
        requests: 0,
        failures: 0,
        tokens: TokenCounts::default(),
        recent: Default::default(),
    }
}

impl KeyReport {
    pub fn new(snapshot: &KeySnapshot, now_ms: u64) -> Self {
        Self {
            hint: snapshot.hint.clone(),
            fingerprint: snapshot.fingerprint.clone(),
            state: snapshot.state.kind(),
            reason: snapshot.state.reason(),
            cooldown_remaining_secs: match snapshot.state {
                KeyState::Cooling { .. } => Some(ceil_secs(snapshot.state.remaining(now_ms))),
                _ => None,
            },
            cooling: snapshot
                .models
                .iter()
                .map(|entry| {
                    let cooling = ModelCooling {
                        until: humantime::format_rfc3339_seconds(from_unix_ms(entry.until_ms))
                            .to_string(),
                        remaining_secs: ceil_secs(std::time::Duration::from_millis(
                            entry.until_ms.saturating_sub(now_ms),
                        )),
                        reason: entry.reason,
                    };
                    (entry.model.to_string(), cooling)
                })
                .collect(),
            last_status: snapshot.last_status,
            last_used: snapshot
                .last_used_ms
                .map(|ms| humantime::format_rfc3339_seconds(from_unix_ms(ms)).to_string()),
            requests: Some(snapshot.requests),
            failures: Some(snapshot.failures),
            tokens: Some(snapshot.tokens.into()),
            recent: Some(snapshot.recent.to_vec()),
            configured: true,
        }
    }

    /// Shared health counts nothing: its keys show no counts rather than zeros.
    fn forget_counts(&mut self) {
        self.requests = None;
        self.failures = None;
        self.tokens = None;
        self.recent = None;
    }
}

/// Which marks `POST /_aibridge/pool/reset` clears: all, one provider's, or one key's.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// A masked hint or a fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResetResponse {
    pub cleared: Vec<ClearedKey>,
}
