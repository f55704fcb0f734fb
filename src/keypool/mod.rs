//! The key pool: an ordered list of keys, each one's health, and per-request walks over them.
//!
//! Pure logic: no I/O, time comes from an injected [`Clock`]. Each key's state lives in one
//! atomic word, so concurrent requests see each other's marks at once without a global lock.

mod clock;
mod models;
mod retry_after;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderMap;
use serde::{Deserialize, Serialize};

pub use clock::{Clock, ManualClock, SystemClock, from_unix_ms, to_unix_ms};
pub use models::ModelCooldown;
pub use retry_after::{budget_spent, cooldown_from_headers, spent_budget_reset};

use models::ModelMarks;

use crate::secret::ApiKey;

/// Which key a request tries first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Always the first healthy key in pool order: later keys are spares.
    #[default]
    Ordered,
    /// Rotate the starting key per request to spread load.
    RoundRobin,
}

/// What a 429 takes out of service: the key for the request's model only, or the whole key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CooldownScope {
    /// Providers limit each model on its own: a 429 cools the key for that model only.
    #[default]
    Model,
    /// For upstreams whose limits are per key: a 429 cools the key for every model.
    Key,
}

/// Why a key was taken out of service until it is rechecked or reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisableReason {
    /// The provider answered 401.
    Unauthorized,
    /// The provider answered 403.
    Forbidden,
    /// The account's quota or credit is used up (recognised from the error body).
    Quota,
}

impl DisableReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::Quota => "quota",
        }
    }

    /// The reason [`DisableReason::as_str`] names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == name)
    }

    const ALL: [Self; 3] = [Self::Unauthorized, Self::Forbidden, Self::Quota];
}

/// A key's health. A cooling key whose deadline has passed reads as `Available`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Available,
    /// Rate-limited until the deadline (Unix milliseconds).
    Cooling {
        until_ms: u64,
    },
    Disabled(DisableReason),
}

/// Which state a key is in, without its deadline or reason: what reports, logs and metrics
/// show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    Available,
    Cooling,
    Disabled,
}

impl StateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Cooling => "cooling",
            Self::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for StateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a key is out of service: a rate limit, or the reason it was disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateReason {
    RateLimited,
    Unauthorized,
    Forbidden,
    Quota,
}

impl StateReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::Quota => "quota",
        }
    }
}

impl From<DisableReason> for StateReason {
    fn from(reason: DisableReason) -> Self {
        match reason {
            DisableReason::Unauthorized => Self::Unauthorized,
            DisableReason::Forbidden => Self::Forbidden,
            DisableReason::Quota => Self::Quota,
        }
    }
}

impl KeyState {
    pub fn kind(self) -> StateKind {
        match self {
            Self::Available => StateKind::Available,
            Self::Cooling { .. } => StateKind::Cooling,
            Self::Disabled(_) => StateKind::Disabled,
        }
    }

    /// The state's name, as logs and metric labels show it.
    pub fn name(self) -> &'static str {
        self.kind().as_str()
    }

    pub fn reason(self) -> Option<StateReason> {
        match self {
            Self::Available => None,
            Self::Cooling { .. } => Some(StateReason::RateLimited),
            Self::Disabled(reason) => Some(reason.into()),
        }
    }

    /// Time left on a cooldown at `now_ms` (zero when not cooling).
    pub fn remaining(self, now_ms: u64) -> Duration {
        match self {
            Self::Cooling { until_ms } => Duration::from_millis(until_ms.saturating_sub(now_ms)),
            _ => Duration::ZERO,
        }
    }

    /// The state as it reads at `now_ms`: an ended cooldown is available.
    pub fn settle(self, now_ms: u64) -> Self {
        match self {
            Self::Cooling { until_ms } if until_ms <= now_ms => Self::Available,
            other => other,
        }
    }

    // One word per key: the top two bits hold the kind, the rest the deadline (cooling) or
    // the reason's place in `DisableReason::ALL` (disabled).
    const KIND_SHIFT: u32 = 62;
    const DEADLINE_MASK: u64 = (1 << Self::KIND_SHIFT) - 1;

    fn encode(self) -> u64 {
        match self {
            Self::Available => 0,
            Self::Cooling { until_ms } => 1 << Self::KIND_SHIFT | (until_ms & Self::DEADLINE_MASK),
            Self::Disabled(reason) => {
                let place = DisableReason::ALL
                    .iter()
                    .position(|known| *known == reason)
                    .expect("every reason is listed");
                2 << Self::KIND_SHIFT | place as u64
            }
        }
    }

    fn decode(word: u64) -> Self {
        match word >> Self::KIND_SHIFT {
            0 => Self::Available,
            1 => Self::Cooling {
                until_ms: word & Self::DEADLINE_MASK,
            },
            _ => {
                let place = (word & Self::DEADLINE_MASK) as usize;
                Self::Disabled(DisableReason::ALL[place.min(DisableReason::ALL.len() - 1)])
            }
        }
    }
}

/// What an upstream answer does to the key that sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    Cool(Duration),
    Disable(DisableReason),
}

/// The result of applying a mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkOutcome {
    /// The key's state after the mark; for a cooldown of one model, that model's.
    pub state: KeyState,
    /// Whether the state's kind changed (available -> cooling, cooling -> disabled, ...);
    /// extending a cooldown is not a change, so logs and counters fire once per change.
    pub changed: bool,
    /// Whether the mark is a cooldown of the request's model alone.
    pub per_model: bool,
    /// The clock's reading the mark was made at (Unix ms).
    pub at_ms: u64,
}

/// Cooldown policy of one provider's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub strategy: Strategy,
    pub default_cooldown: Duration,
    pub max_cooldown: Duration,
    pub cooldown_scope: CooldownScope,
    /// How many models' cooldowns each key keeps at most.
    pub max_models_per_key: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            strategy: Strategy::Ordered,
            default_cooldown: Duration::from_secs(60),
            max_cooldown: Duration::from_secs(3600),
            cooldown_scope: CooldownScope::Model,
            max_models_per_key: 64,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("key #{index} is empty")]
    EmptyKey { index: usize },
    #[error("key #{index} contains whitespace or a character that is not printable ASCII")]
    InvalidCharacter { index: usize },
    #[error("key #{index} duplicates key #{first}")]
    DuplicateKey { index: usize, first: usize },
}

/// Why no key is left for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExhaustionKind {
    /// At least one key is only cooling: retry later.
    RateLimited,
    /// Every key is disabled.
    Unauthorized,
}

/// No available key is left in the pool for a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct Exhausted {
    pub kind: ExhaustionKind,
    /// The smallest remaining cooldown; zero when a key has become available meanwhile.
    pub retry_after: Duration,
    /// The request's model, when the walk was for one.
    pub model: Option<Arc<str>>,
    /// Set when the walk stopped at `max_attempts` with keys left untried.
    pub attempt_limit: Option<usize>,
}

impl Exhausted {
    /// Whole seconds to wait, rounded up; at least 1 when rate-limited, so a client told to
    /// retry never retries at once.
    pub fn retry_after_secs(&self) -> u64 {
        match self.kind {
            ExhaustionKind::RateLimited => ceil_secs(self.retry_after).max(1),
            ExhaustionKind::Unauthorized => ceil_secs(self.retry_after),
        }
    }

    pub fn message(&self) -> String {
        let mut message = match (self.kind, &self.model) {
            (ExhaustionKind::RateLimited, Some(model)) => format!(
                "all configured keys are rate-limited for model \"{model}\" (retry after {}s)",
                self.retry_after_secs()
            ),
            (ExhaustionKind::RateLimited, None) => format!(
                "all configured keys are rate-limited (retry after {}s)",
                self.retry_after_secs()
            ),
            (ExhaustionKind::Unauthorized, _) => {
                "all configured keys failed authentication".to_owned()
            }
        };
        if let Some(limit) = self.attempt_limit {
            message.push_str(&format!("; stopped after {limit} attempts (max_attempts)"));
        }
        message
    }
}

pub fn ceil_secs(duration: Duration) -> u64 {
    duration.as_millis().div_ceil(1000) as u64
}

/// Checks a key list: every key non-empty and unique. Errors name the 1-based index, never
/// the key.
pub fn validate_keys(keys: &[ApiKey]) -> Result<(), PoolError> {
    let mut first_seen = HashMap::with_capacity(keys.len());
    for (position, key) in keys.iter().enumerate() {
        let index = position + 1;
        if key.is_empty() {
            return Err(PoolError::EmptyKey { index });
        }
        // A stray newline or a pasted comment would be sent upstream as part of the key.
        if !key.expose().bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(PoolError::InvalidCharacter { index });
        }
        if let Some(first) = first_seen.insert(key.expose(), index) {
            return Err(PoolError::DuplicateKey { index, first });
        }
    }
    Ok(())
}

/// One key of a pool with its state and counters.
#[derive(Debug)]
pub struct PooledKey {
    key: ApiKey,
    fingerprint: String,
    /// The masked hint, worked out once: requests report it on every attempt.
    hint: String,
    requests: AtomicU64,
    failures: AtomicU64,
    /// 0 = never answered.
    last_status: AtomicU16,
    /// Unix ms; 0 = never used.
    last_used_ms: AtomicU64,
}

impl PooledKey {
    fn new(key: ApiKey) -> Self {
        Self {
            fingerprint: key.fingerprint(),
            hint: key.hint(),
            key,
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_status: AtomicU16::new(0),
            last_used_ms: AtomicU64::new(0),
        }
    }

    pub fn key(&self) -> &ApiKey {
        &self.key
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn hint(&self) -> &str {
        &self.hint
    }
}

/// A point-in-time view of one key, for status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySnapshot {
    pub index: usize,
    pub hint: String,
    pub fingerprint: String,
    /// The key-wide state.
    pub state: KeyState,
    /// Models this key is cooling for on their own, least recently marked first.
    pub models: Vec<ModelCooldown>,
    pub last_status: Option<u16>,
    pub last_used_ms: Option<u64>,
    pub requests: u64,
    pub failures: u64,
}

/// An ordered pool of keys for one provider.
pub struct Pool {
    keys: Box<[PooledKey]>,
    /// Each key's state word, apart from the rest so a walk scans a dense, cache-resident
    /// array.
    states: Box<[AtomicU64]>,
    /// Each key's cooldowns for single models.
    models: Box<[ModelMarks]>,
    by_fingerprint: HashMap<String, usize>,
    settings: PoolSettings,
    next_start: AtomicUsize,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("keys", &self.keys.len())
            .field("settings", &self.settings)
            .finish()
    }
}

impl Pool {
    /// Builds a pool from keys in priority order. Empty and duplicate keys are rejected by
    /// index (1-based), never by value.
    pub fn new(
        keys: Vec<ApiKey>,
        settings: PoolSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, PoolError> {
        validate_keys(&keys)?;
        let keys: Box<[PooledKey]> = keys.into_iter().map(PooledKey::new).collect();
        let by_fingerprint = keys
            .iter()
            .enumerate()
            .map(|(index, key)| (key.fingerprint.clone(), index))
            .collect();
        let states = keys
            .iter()
            .map(|_| AtomicU64::new(KeyState::Available.encode()))
            .collect();
        let models = keys.iter().map(|_| ModelMarks::default()).collect();
        Ok(Self {
            keys,
            states,
            models,
            by_fingerprint,
            settings,
            next_start: AtomicUsize::new(0),
            clock,
        })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The longest any cooldown of this pool may run.
    pub fn max_cooldown(&self) -> Duration {
        self.settings.max_cooldown
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn key(&self, index: usize) -> &PooledKey {
        &self.keys[index]
    }

    pub fn index_of(&self, fingerprint: &str) -> Option<usize> {
        self.by_fingerprint.get(fingerprint).copied()
    }

    /// Takes over state and counters of the keys both pools hold (after a config reload).
    pub fn inherit_from(&self, previous: &Pool) {
        for (index, key) in self.keys.iter().enumerate() {
            let Some(old_index) = previous.index_of(&key.fingerprint) else {
                continue;
            };
            let old = &previous.keys[old_index];
            self.states[index].store(
                previous.states[old_index].load(Ordering::Acquire),
                Ordering::Release,
            );
            self.models[index].copy_from(&previous.models[old_index]);
            for (new, old) in [
                (&key.requests, &old.requests),
                (&key.failures, &old.failures),
                (&key.last_used_ms, &old.last_used_ms),
            ] {
                new.store(old.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            key.last_status
                .store(old.last_status.load(Ordering::Relaxed), Ordering::Relaxed);
            debug_assert_eq!(self.index_of(&key.fingerprint), Some(index));
        }
    }

    fn raw_state(&self, index: usize) -> KeyState {
        KeyState::decode(self.states[index].load(Ordering::Acquire))
    }

    /// The key's state now, with an expired cooldown read as available.
    pub fn state(&self, index: usize) -> KeyState {
        self.raw_state(index).settle(self.clock.now_ms())
    }

    /// Starts one request's walk over the pool.
    pub fn walk(&self) -> Walk<'_> {
        let start = match self.settings.strategy {
            Strategy::Ordered => 0,
            Strategy::RoundRobin if self.keys.is_empty() => 0,
            Strategy::RoundRobin => {
                self.next_start.fetch_add(1, Ordering::Relaxed) % self.keys.len()
            }
        };
        Walk {
            pool: self,
            start,
            offset: 0,
        }
    }

    /// The mark an upstream answer earns: 429 cools, 401/403 disable, anything else is not
    /// the key's fault.
    pub fn mark_for(&self, status: u16, headers: &HeaderMap) -> Option<Mark> {
        match status {
            429 => Some(Mark::Cool(self.cooldown_for(headers))),
            401 => Some(Mark::Disable(DisableReason::Unauthorized)),
            403 => Some(Mark::Disable(DisableReason::Forbidden)),
            _ => None,
        }
    }

    /// For a successful answer whose rate-limit headers say a budget is used up: how long
    /// the key should rest (until the budget's reset, capped at the maximum).
    pub fn spent_budget_cooldown(&self, headers: &HeaderMap) -> Option<Duration> {
        if !budget_spent(headers) {
            return None;
        }
        spent_budget_reset(headers, self.clock.now())
            .map(|reset| reset.min(self.settings.max_cooldown))
    }

    /// The cooldown a 429 asks for, else the default, capped at the maximum.
    pub fn cooldown_for(&self, headers: &HeaderMap) -> Duration {
        cooldown_from_headers(headers, self.clock.now())
            .unwrap_or(self.settings.default_cooldown)
            .min(self.settings.max_cooldown)
    }

    /// Applies a mark. A disabled key stays disabled; a cooldown only ever extends.
    pub fn mark(&self, index: usize, mark: Mark) -> MarkOutcome {
        let now = self.clock.now_ms();
        let target = match mark {
            Mark::Disable(reason) => KeyState::Disabled(reason),
            Mark::Cool(cooldown) => KeyState::Cooling {
                until_ms: now + cooldown.as_millis() as u64,
            },
        };
        self.strengthen(index, target, now)
    }

    /// Applies a key-wide state another process recorded, by the rule of [`Pool::mark`]; a
    /// cooldown is capped at `max_cooldown` from now.
    pub fn merge_shared(&self, index: usize, state: KeyState) -> MarkOutcome {
        let now = self.clock.now_ms();
        let cap = now + self.settings.max_cooldown.as_millis() as u64;
        let target = match state {
            KeyState::Cooling { until_ms } => KeyState::Cooling {
                until_ms: until_ms.min(cap),
            },
            other => other,
        };
        self.strengthen(index, target, now)
    }

    /// Moves the key to the stronger of its state and `target`: disabled beats cooling, the
    /// later deadline beats the earlier, and available changes nothing.
    fn strengthen(&self, index: usize, target: KeyState, now: u64) -> MarkOutcome {
        let slot = &self.states[index];
        let mut word = slot.load(Ordering::Acquire);
        loop {
            let stored = KeyState::decode(word);
            let before = stored.settle(now);
            let after = match (before, target) {
                (KeyState::Disabled(_), _) | (_, KeyState::Available) => before,
                (_, KeyState::Disabled(_)) => target,
                (KeyState::Cooling { until_ms }, KeyState::Cooling { until_ms: wanted }) => {
                    KeyState::Cooling {
                        until_ms: until_ms.max(wanted),
                    }
                }
                (KeyState::Available, KeyState::Cooling { .. }) => target,
            };
            let outcome = MarkOutcome {
                state: after,
                changed: before.kind() != after.kind() || before.reason() != after.reason(),
                per_model: false,
                at_ms: now,
            };
            if after == stored {
                return outcome;
            }
            match slot.compare_exchange_weak(
                word,
                after.encode(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return outcome,
                Err(current) => word = current,
            }
        }
    }

    /// Applies a mark earned by a request for `model`: with the per-model scope, a
    /// cooldown takes the key out for that model alone. A request without a model, and
    /// every disable, mark the whole key.
    pub fn mark_request(&self, index: usize, mark: Mark, model: Option<&str>) -> MarkOutcome {
        match (mark, model, self.settings.cooldown_scope) {
            (Mark::Cool(cooldown), Some(model), CooldownScope::Model) => {
                self.cool_model(index, model, cooldown)
            }
            _ => self.mark(index, mark),
        }
    }

    /// Cools one model of a key; a cooldown only ever extends.
    pub fn cool_model(&self, index: usize, model: &str, cooldown: Duration) -> MarkOutcome {
        let now = self.clock.now_ms();
        self.cool_model_until(index, model, now + cooldown.as_millis() as u64, now)
    }

    /// Restores a model's cooldown read from shared state, capped as [`Pool::merge_shared`]
    /// caps.
    pub fn restore_model(&self, index: usize, model: &str, until_ms: u64) {
        let now = self.clock.now_ms();
        let cap = now + self.settings.max_cooldown.as_millis() as u64;
        if until_ms > now {
            self.cool_model_until(index, model, until_ms.min(cap), now);
        }
    }

    fn cool_model_until(&self, index: usize, model: &str, until_ms: u64, now: u64) -> MarkOutcome {
        let marked =
            self.models[index].mark(model, until_ms, now, self.settings.max_models_per_key);
        MarkOutcome {
            state: KeyState::Cooling {
                until_ms: marked.until_ms,
            },
            changed: marked.started,
            per_model: true,
            at_ms: now,
        }
    }

    /// Clears every mark of a key, key-wide and per model (a reset by hand). Returns the
    /// state it had: `Cooling` when only some models were cooling.
    pub fn reset(&self, index: usize) -> KeyState {
        let now = self.clock.now_ms();
        let before = self.state(index);
        let soonest_model = self.models[index]
            .live(now)
            .iter()
            .map(|entry| entry.until_ms)
            .max();
        self.set_state(index, KeyState::Available);
        self.models[index].clear(now);
        match (before, soonest_model) {
            (KeyState::Available, Some(until_ms)) => KeyState::Cooling { until_ms },
            _ => before,
        }
    }

    /// Whether the key is cooling for any model on its own.
    pub fn any_model_cooling(&self, index: usize) -> bool {
        self.models[index].any_cooling(self.clock.now_ms())
    }

    /// Sets a key's key-wide state outright: for state restored from disk, probes and
    /// resets. Returns whether the state changed.
    pub fn set_state(&self, index: usize, state: KeyState) -> bool {
        let now = self.clock.now_ms();
        let previous = KeyState::decode(self.states[index].swap(state.encode(), Ordering::AcqRel));
        previous.settle(now) != state.settle(now)
    }

    /// Counts one attempt with this key; `status` is `None` for a transport failure.
    pub fn record_attempt(&self, index: usize, status: Option<u16>) {
        let key = &self.keys[index];
        key.requests.fetch_add(1, Ordering::Relaxed);
        if !status.is_some_and(|code| (200..300).contains(&code)) {
            key.failures.fetch_add(1, Ordering::Relaxed);
        }
        key.last_status
            .store(status.unwrap_or(0), Ordering::Relaxed);
        key.last_used_ms
            .store(self.clock.now_ms(), Ordering::Relaxed);
    }

    /// Restores the last-use details read from the state file.
    pub fn restore_usage(&self, index: usize, last_status: Option<u16>, last_used_ms: Option<u64>) {
        let key = &self.keys[index];
        key.last_status
            .store(last_status.unwrap_or(0), Ordering::Relaxed);
        key.last_used_ms
            .store(last_used_ms.unwrap_or(0), Ordering::Relaxed);
    }

    pub fn snapshot(&self, index: usize) -> KeySnapshot {
        let key = &self.keys[index];
        let nonzero = |value: u64| (value != 0).then_some(value);
        KeySnapshot {
            index,
            hint: key.key.hint(),
            fingerprint: key.fingerprint.clone(),
            state: self.state(index),
            models: self.models[index].live(self.clock.now_ms()),
            last_status: match key.last_status.load(Ordering::Relaxed) {
                0 => None,
                code => Some(code),
            },
            last_used_ms: nonzero(key.last_used_ms.load(Ordering::Relaxed)),
            requests: key.requests.load(Ordering::Relaxed),
            failures: key.failures.load(Ordering::Relaxed),
        }
    }

    pub fn snapshots(&self) -> Vec<KeySnapshot> {
        (0..self.keys.len())
            .map(|index| self.snapshot(index))
            .collect()
    }

    /// Why the pool has nothing to offer a request for `model`: rate-limited (with the
    /// soonest time a key is back for that model) while any key is not disabled, else
    /// unauthorized.
    pub fn exhaustion(&self, model: Option<&str>) -> Exhausted {
        let now = self.clock.now_ms();
        let soonest = (0..self.keys.len())
            .filter_map(|index| self.back_for(index, model, now))
            .min();
        Exhausted {
            kind: match soonest {
                Some(_) => ExhaustionKind::RateLimited,
                None => ExhaustionKind::Unauthorized,
            },
            retry_after: soonest.unwrap_or(Duration::ZERO),
            model: model.map(Arc::from),
            attempt_limit: None,
        }
    }

    /// How long until a key serves `model`; `None` while it is disabled.
    fn back_for(&self, index: usize, model: Option<&str>, now: u64) -> Option<Duration> {
        let state = self.raw_state(index).settle(now);
        if matches!(state, KeyState::Disabled(_)) {
            return None;
        }
        let model_until = model
            .and_then(|model| self.models[index].until(model, now))
            .unwrap_or(0);
        Some(
            state
                .remaining(now)
                .max(Duration::from_millis(model_until.saturating_sub(now))),
        )
    }
}

/// One request's pass over the pool: each available key at most once, in pool order from the
/// strategy's starting point. As an iterator it walks for a request without a model.
#[derive(Debug)]
pub struct Walk<'a> {
    pool: &'a Pool,
    start: usize,
    offset: usize,
}

impl<'a> Walk<'a> {
    /// The index of the next key to try for `model`: one available key-wide and not
    /// cooling for that model.
    pub fn next_for(&mut self, model: Option<&str>) -> Option<usize> {
        self.next_lazy(|| model)
    }

    /// [`Walk::next_for`] with the model asked for only when a key has a model's cooldown
    /// running: reading it may mean parsing the request body, which most requests never
    /// need.
    pub fn next_lazy<'m>(&mut self, model: impl Fn() -> Option<&'m str>) -> Option<usize> {
        let len = self.pool.keys.len();
        // One clock read per call, not per key skipped: a walk may pass thousands.
        let now = self.pool.clock.now_ms();
        while self.offset < len {
            // start < len and offset < len, so one subtraction wraps (no division per key).
            let mut index = self.start + self.offset;
            if index >= len {
                index -= len;
            }
            self.offset += 1;
            if self.pool.raw_state(index).settle(now) != KeyState::Available {
                continue;
            }
            let marks = &self.pool.models[index];
            if marks.may_be_cooling(now)
                && model().is_some_and(|model| marks.is_cooling(model, now))
            {
                continue;
            }
            return Some(index);
        }
        None
    }
}

impl Iterator for Walk<'_> {
    /// The index of the next key to try.
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        self.next_for(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    fn keys(count: usize) -> Vec<ApiKey> {
        (0..count)
            .map(|i| ApiKey::new(format!("sk-test-key-{i:04}")))
            .collect()
    }

    fn pool_with(count: usize, settings: PoolSettings) -> (Pool, Arc<ManualClock>) {
        let clock = ManualClock::starting_at(T0);
        let pool = Pool::new(keys(count), settings, clock.clone()).unwrap();
        (pool, clock)
    }

    fn pool(count: usize) -> (Pool, Arc<ManualClock>) {
        pool_with(count, PoolSettings::default())
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (http::HeaderName::from_static(name), value.parse().unwrap()))
            .collect()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn walk_hands_out_keys_in_order_each_once() {
        let (pool, _) = pool(3);
        assert_eq!(pool.walk().collect::<Vec<_>>(), vec![0, 1, 2]);
    }

    #[test]
    fn walk_skips_cooling_and_disabled_keys() {
        let (pool, _) = pool(4);
        pool.mark(0, Mark::Cool(secs(30)));
        pool.mark(2, Mark::Disable(DisableReason::Forbidden));
        assert_eq!(pool.walk().collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn marks_are_seen_by_a_walk_already_under_way() {
        let (pool, _) = pool(3);
        let mut walk = pool.walk();
        assert_eq!(walk.next(), Some(0));
        pool.mark(1, Mark::Cool(secs(5)));
        assert_eq!(walk.next(), Some(2));
        assert_eq!(walk.next(), None);
    }

    #[test]
    fn cooldown_expires_with_the_clock() {
        let (pool, clock) = pool(2);
        pool.mark(0, Mark::Cool(secs(30)));
        clock.advance(secs(29));
        assert_eq!(pool.walk().next(), Some(1));
        clock.advance(secs(1));
        assert_eq!(pool.state(0), KeyState::Available);
        assert_eq!(pool.walk().next(), Some(0));
    }

    #[test]
    fn cooldown_only_extends() {
        let (pool, _) = pool(1);
        let first = pool.mark(0, Mark::Cool(secs(60)));
        assert!(first.changed);
        let shorter = pool.mark(0, Mark::Cool(secs(10)));
        assert!(!shorter.changed);
        assert_eq!(
            shorter.state,
            KeyState::Cooling {
                until_ms: T0 + 60_000
            }
        );
        let longer = pool.mark(0, Mark::Cool(secs(90)));
        assert!(!longer.changed, "extending is not a change of state");
        assert_eq!(
            longer.state,
            KeyState::Cooling {
                until_ms: T0 + 90_000
            }
        );
    }

    #[test]
    fn a_new_cooldown_after_expiry_is_a_change() {
        let (pool, clock) = pool(1);
        pool.mark(0, Mark::Cool(secs(1)));
        clock.advance(secs(2));
        assert!(pool.mark(0, Mark::Cool(secs(1))).changed);
    }

    #[test]
    fn disabled_is_permanent_and_reports_one_change() {
        let (pool, clock) = pool(1);
        assert!(pool.mark(0, Mark::Cool(secs(5))).changed);
        let disabled = pool.mark(0, Mark::Disable(DisableReason::Unauthorized));
        assert!(disabled.changed);
        assert!(
            !pool
                .mark(0, Mark::Disable(DisableReason::Forbidden))
                .changed
        );
        assert!(!pool.mark(0, Mark::Cool(secs(5))).changed);
        clock.advance(secs(100_000));
        assert_eq!(
            pool.state(0),
            KeyState::Disabled(DisableReason::Unauthorized)
        );
    }

    #[test]
    fn statuses_map_to_marks() {
        let (pool, _) = pool(1);
        let none = HeaderMap::new();
        assert_eq!(pool.mark_for(429, &none), Some(Mark::Cool(secs(60))));
        assert_eq!(
            pool.mark_for(401, &none),
            Some(Mark::Disable(DisableReason::Unauthorized))
        );
        assert_eq!(
            pool.mark_for(403, &none),
            Some(Mark::Disable(DisableReason::Forbidden))
        );
        for status in [200, 201, 400, 404, 413, 500, 502, 503, 529] {
            assert_eq!(pool.mark_for(status, &none), None, "{status}");
        }
    }

    #[test]
    fn cooldown_uses_headers_default_and_cap() {
        let settings = PoolSettings {
            default_cooldown: secs(45),
            max_cooldown: secs(600),
            ..PoolSettings::default()
        };
        let (pool, _) = pool_with(1, settings);
        assert_eq!(
            pool.cooldown_for(&headers(&[("retry-after", "30")])),
            secs(30)
        );
        assert_eq!(
            pool.cooldown_for(&headers(&[("retry-after", "0")])),
            secs(45)
        );
        assert_eq!(pool.cooldown_for(&HeaderMap::new()), secs(45));
        assert_eq!(
            pool.cooldown_for(&headers(&[("retry-after", "86400")])),
            secs(600)
        );
    }

    #[test]
    fn exhaustion_reports_smallest_remaining_cooldown() {
        let (pool, clock) = pool(3);
        pool.mark(0, Mark::Cool(secs(30)));
        pool.mark(1, Mark::Cool(secs(10)));
        pool.mark(2, Mark::Disable(DisableReason::Unauthorized));
        clock.advance(Duration::from_millis(2500));
        let exhausted = pool.exhaustion(None);
        assert_eq!(exhausted.kind, ExhaustionKind::RateLimited);
        assert_eq!(exhausted.retry_after, Duration::from_millis(7500));
        assert_eq!(exhausted.retry_after_secs(), 8);
        assert_eq!(
            exhausted.to_string(),
            "all configured keys are rate-limited (retry after 8s)"
        );
    }

    #[test]
    fn exhaustion_is_zero_when_a_key_came_back() {
        let (pool, clock) = pool(2);
        pool.mark(0, Mark::Cool(secs(1)));
        pool.mark(1, Mark::Cool(secs(50)));
        clock.advance(secs(5));
        let exhausted = pool.exhaustion(None);
        assert_eq!(exhausted.kind, ExhaustionKind::RateLimited);
        assert_eq!(exhausted.retry_after, Duration::ZERO);
    }

    #[test]
    fn exhaustion_is_unauthorized_when_every_key_is_disabled() {
        let (pool, _) = pool(2);
        pool.mark(0, Mark::Disable(DisableReason::Unauthorized));
        pool.mark(1, Mark::Disable(DisableReason::Forbidden));
        let exhausted = pool.exhaustion(None);
        assert_eq!(exhausted.kind, ExhaustionKind::Unauthorized);
        assert_eq!(
            exhausted.to_string(),
            "all configured keys failed authentication"
        );
    }

    #[test]
    fn empty_and_duplicate_keys_are_rejected_by_index() {
        let clock = ManualClock::starting_at(T0);
        let empty = Pool::new(
            vec![ApiKey::new("sk-one-secret"), ApiKey::new("  ")],
            PoolSettings::default(),
            clock.clone(),
        );
        assert_eq!(empty.unwrap_err(), PoolError::EmptyKey { index: 2 });
        let duplicate = Pool::new(
            vec![
                ApiKey::new("sk-one-secret"),
                ApiKey::new("sk-two-secret"),
                ApiKey::new("sk-one-secret"),
            ],
            PoolSettings::default(),
            clock,
        );
        let error = duplicate.unwrap_err();
        assert_eq!(error, PoolError::DuplicateKey { index: 3, first: 1 });
        assert!(!error.to_string().contains("secret"));
    }

    #[test]
    fn ten_thousand_keys_work() {
        let (pool, _) = pool(10_000);
        for index in 0..9_999 {
            pool.mark(index, Mark::Cool(secs(60)));
        }
        assert_eq!(pool.walk().collect::<Vec<_>>(), vec![9_999]);
        assert_eq!(pool.index_of(pool.key(1234).fingerprint()), Some(1234));
    }

    #[test]
    fn round_robin_rotates_the_start() {
        let settings = PoolSettings {
            strategy: Strategy::RoundRobin,
            ..PoolSettings::default()
        };
        let (pool, _) = pool_with(3, settings);
        let firsts: Vec<_> = (0..4).map(|_| pool.walk().next().unwrap()).collect();
        assert_eq!(firsts, vec![0, 1, 2, 0]);
        assert_eq!(pool.walk().collect::<Vec<_>>(), vec![1, 2, 0]);
        pool.mark(2, Mark::Cool(secs(9)));
        assert_eq!(pool.walk().collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn concurrent_marks_keep_the_longest_cooldown() {
        let (pool, _) = pool(1);
        std::thread::scope(|scope| {
            for thread in 1..=8u64 {
                let pool = &pool;
                scope.spawn(move || {
                    for round in 0..1000 {
                        pool.mark(0, Mark::Cool(secs(thread * 10 + round % 3)));
                    }
                });
            }
        });
        assert_eq!(
            pool.state(0),
            KeyState::Cooling {
                until_ms: T0 + 82_000
            }
        );
    }

    #[test]
    fn concurrent_walkers_each_see_every_key_once() {
        let (pool, _) = pool(64);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..100 {
                        let seen: Vec<_> = pool.walk().collect();
                        assert_eq!(seen.len(), 64);
                    }
                });
            }
        });
    }

    #[test]
    fn a_reloaded_pool_keeps_the_state_of_unchanged_keys() {
        let (old, clock) = pool(3);
        old.mark(1, Mark::Disable(DisableReason::Forbidden));
        old.record_attempt(1, Some(403));
        let mut reordered = keys(3);
        reordered.swap(0, 1);
        reordered.push(ApiKey::new("sk-test-key-new1"));
        let new = Pool::new(reordered, PoolSettings::default(), clock).unwrap();
        new.inherit_from(&old);
        assert_eq!(new.state(0), KeyState::Disabled(DisableReason::Forbidden));
        assert_eq!(new.snapshot(0).requests, 1);
        assert_eq!(new.state(3), KeyState::Available);
    }

    #[test]
    fn state_word_round_trips() {
        for state in [
            KeyState::Available,
            KeyState::Cooling { until_ms: T0 },
            KeyState::Disabled(DisableReason::Unauthorized),
            KeyState::Disabled(DisableReason::Forbidden),
            KeyState::Disabled(DisableReason::Quota),
        ] {
            assert_eq!(KeyState::decode(state.encode()), state);
        }
    }

    #[test]
    fn attempts_are_counted() {
        let (pool, clock) = pool(1);
        pool.record_attempt(0, Some(200));
        clock.advance(secs(1));
        pool.record_attempt(0, Some(429));
        pool.record_attempt(0, None);
        let snapshot = pool.snapshot(0);
        assert_eq!((snapshot.requests, snapshot.failures), (3, 2));
        assert_eq!(snapshot.last_status, None);
        assert_eq!(snapshot.last_used_ms, Some(T0 + 1000));
        assert_eq!(snapshot.hint, "sk...00");
    }

    #[test]
    fn a_429_for_one_model_leaves_the_key_serving_others() {
        let (pool, clock) = pool(2);
        let outcome = pool.mark_request(0, Mark::Cool(secs(30)), Some("opus"));
        assert!(outcome.changed && outcome.per_model);
        assert_eq!(pool.state(0), KeyState::Available, "key-wide untouched");
        assert_eq!(pool.walk().next_for(Some("opus")), Some(1));
        assert_eq!(pool.walk().next_for(Some("haiku")), Some(0));
        assert_eq!(pool.walk().next_for(None), Some(0), "no model: any key");
        assert!(pool.any_model_cooling(0));
        clock.advance(secs(30));
        assert_eq!(pool.walk().next_for(Some("opus")), Some(0));
        assert!(!pool.any_model_cooling(0));
    }

    #[test]
    fn key_scope_and_model_less_requests_cool_the_whole_key() {
        let settings = PoolSettings {
            cooldown_scope: CooldownScope::Key,
            ..PoolSettings::default()
        };
        let (key_scoped, _) = pool_with(2, settings);
        let outcome = key_scoped.mark_request(0, Mark::Cool(secs(30)), Some("opus"));
        assert!(!outcome.per_model);
        assert_eq!(key_scoped.walk().next_for(Some("haiku")), Some(1));

        let (model_scoped, _) = pool(2);
        assert!(
            !model_scoped
                .mark_request(0, Mark::Cool(secs(30)), None)
                .per_model
        );
        assert_eq!(model_scoped.walk().next_for(Some("haiku")), Some(1));
    }

    #[test]
    fn auth_and_quota_disable_the_key_for_every_model() {
        let (pool, _) = pool(3);
        pool.mark_request(0, Mark::Disable(DisableReason::Unauthorized), Some("opus"));
        pool.mark_request(1, Mark::Disable(DisableReason::Quota), Some("opus"));
        assert_eq!(pool.state(1), KeyState::Disabled(DisableReason::Quota));
        assert_eq!(pool.walk().next_for(Some("haiku")), Some(2));
        assert_eq!(pool.state(1).reason(), Some(StateReason::Quota));
    }

    #[test]
    fn exhaustion_is_per_model() {
        let (pool, clock) = pool(3);
        pool.mark_request(0, Mark::Cool(secs(30)), Some("opus"));
        pool.mark_request(1, Mark::Cool(secs(10)), Some("opus"));
        pool.mark(1, Mark::Cool(secs(20)));
        pool.mark(2, Mark::Disable(DisableReason::Forbidden));
        clock.advance(Duration::from_millis(500));
        let exhausted = pool.exhaustion(Some("opus"));
        assert_eq!(exhausted.kind, ExhaustionKind::RateLimited);
        // Key 1 is back for opus when both its cooldowns end: the key-wide one, at 20 s.
        assert_eq!(exhausted.retry_after, Duration::from_millis(19_500));
        assert_eq!(
            exhausted.to_string(),
            "all configured keys are rate-limited for model \"opus\" (retry after 20s)"
        );
        // Another model only waits for the key-wide cooldowns.
        assert_eq!(pool.exhaustion(Some("haiku")).retry_after, Duration::ZERO);
        assert_eq!(pool.exhaustion(Some("haiku")).retry_after_secs(), 1);
    }

    #[test]
    fn attempt_limit_is_named_in_the_message() {
        let exhausted = Exhausted {
            kind: ExhaustionKind::Unauthorized,
            retry_after: Duration::ZERO,
            model: None,
            attempt_limit: Some(4),
        };
        assert_eq!(
            exhausted.to_string(),
            "all configured keys failed authentication; stopped after 4 attempts (max_attempts)"
        );
    }

    #[test]
    fn reset_clears_key_wide_and_model_marks() {
        let (pool, _) = pool(2);
        pool.mark_request(0, Mark::Cool(secs(30)), Some("opus"));
        assert_eq!(
            pool.reset(0),
            KeyState::Cooling {
                until_ms: T0 + 30_000
            },
            "a key cooling for a model was cooling"
        );
        assert_eq!(pool.walk().next_for(Some("opus")), Some(0));
        pool.mark(1, Mark::Disable(DisableReason::Forbidden));
        assert_eq!(pool.reset(1), KeyState::Disabled(DisableReason::Forbidden));
        assert_eq!(pool.reset(1), KeyState::Available);
    }

    #[test]
    fn restored_model_cooldowns_are_capped() {
        let settings = PoolSettings {
            max_cooldown: secs(60),
            ..PoolSettings::default()
        };
        let (pool, _) = pool_with(1, settings);
        pool.restore_model(0, "opus", T0 + 86_400_000);
        pool.restore_model(0, "old", T0 - 1);
        let models = pool.snapshot(0).models;
        assert_eq!(models.len(), 1);
        assert_eq!(models[0].until_ms, T0 + 60_000);
    }

    #[test]
    fn spent_budgets_cool_until_the_reset_capped() {
        let settings = PoolSettings {
            max_cooldown: secs(60),
            ..PoolSettings::default()
        };
        let (pool, _) = pool_with(1, settings);
        let spent = headers(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "20s"),
        ]);
        assert_eq!(pool.spent_budget_cooldown(&spent), Some(secs(20)));
        let long = headers(&[
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "2h"),
        ]);
        assert_eq!(pool.spent_budget_cooldown(&long), Some(secs(60)));
        assert_eq!(pool.spent_budget_cooldown(&HeaderMap::new()), None);
    }

    #[test]
    fn a_reload_keeps_model_cooldowns() {
        let (old, clock) = pool(2);
        old.mark_request(1, Mark::Cool(secs(30)), Some("opus"));
        let new = Pool::new(keys(2), PoolSettings::default(), clock).unwrap();
        new.inherit_from(&old);
        assert_eq!(new.walk().next_for(Some("opus")), Some(0));
        pool_is_cooling(&new, 1, "opus");
    }

    fn pool_is_cooling(pool: &Pool, index: usize, model: &str) {
        let models = pool.snapshot(index).models;
        assert!(
            models.iter().any(|entry| &*entry.model == model),
            "{models:?}"
        );
    }
}
