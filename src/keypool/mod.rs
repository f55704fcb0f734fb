//! The key pool: an ordered list of keys, each one's health, and per-request walks over them.
//!
//! Pure logic: no I/O, time comes from an injected [`Clock`]. Each key's state lives in one
//! atomic word, so concurrent requests see each other's marks at once without a global lock.

mod affinity;
mod caps;
mod clock;
mod exhausted;
mod history;
mod models;
mod retry_after;
mod state;
mod walk;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};

pub use affinity::{Affinity, AffinityOutcome, Assigned, DEFAULT_MAX_SESSIONS, SessionId};
pub use caps::{CONCURRENCY_RETRY, KeyCaps, Permit};
pub use clock::{Clock, ManualClock, SystemClock, from_unix_ms, to_unix_ms};
pub use exhausted::{AttemptLimit, Exhausted, ExhaustionKind, ceil_secs};
pub use history::{MINUTES, MinuteCounts};
pub use models::ModelCooldown;
pub use retry_after::{budget_spent, cooldown_from_headers, spent_budget_reset};
pub use state::{DisableReason, KeyState, Mark, MarkOutcome, StateKind, StateReason};
pub use walk::Walk;

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

/// Whether a provider keeps each session on one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AffinityMode {
    /// A session keeps the key that last served it while that key is healthy.
    #[default]
    Session,
    /// Every request is picked by the strategy alone.
    Off,
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
    /// Shared rather than copied into each attempt that reports it.
    fingerprint: Arc<str>,
    /// The masked hint, worked out once: requests report it on every attempt.
    hint: Arc<str>,
    /// The hint as a header value, for the answers it gives (`x-aibridge-key`).
    hint_value: HeaderValue,
    requests: AtomicU64,
    failures: AtomicU64,
    /// Tokens its answers reported since start; shared with the answers still streaming.
    tokens: Arc<TokenTotals>,
    /// Its caps and their counters; `None` for a key without caps.
    caps: Option<Arc<caps::CapState>>,
    /// 0 = never answered.
    last_status: AtomicU16,
    /// Unix ms; 0 = never used.
    last_used_ms: AtomicU64,
    /// Its attempts in each of the last minutes.
    history: history::History,
    /// The key as its provider's auth header carries it, made on first use rather than
    /// for every attempt (see [`Self::key_value`]).
    key_value: OnceLock<Option<HeaderValue>>,
}

impl PooledKey {
    fn new(key: ApiKey) -> Self {
        let fingerprint: Arc<str> = key.fingerprint().into();
        let hint = key.hint();
        Self {
            tokens: Arc::new(TokenTotals {
                fingerprint: fingerprint.clone(),
                ..TokenTotals::default()
            }),
            fingerprint,
            hint_value: HeaderValue::from_str(&hint).unwrap_or(HeaderValue::from_static("****")),
            hint: hint.into(),
            key,
            caps: None,
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_status: AtomicU16::new(0),
            last_used_ms: AtomicU64::new(0),
            history: history::History::default(),
            key_value: OnceLock::new(),
        }
    }

    pub fn key(&self) -> &ApiKey {
        &self.key
    }

    /// The key's auth header value, made by `make` the first time. A pool serves one
    /// provider, so every caller makes the same value. Cloning it later shares its bytes.
    pub fn key_value(
        &self,
        make: impl FnOnce(&ApiKey) -> Option<HeaderValue>,
    ) -> Option<&HeaderValue> {
        self.key_value.get_or_init(|| make(&self.key)).as_ref()
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn hint(&self) -> &str {
        &self.hint
    }

    pub fn hint_value(&self) -> &HeaderValue {
        &self.hint_value
    }

    /// The fingerprint and hint, shared, for an attempt to report.
    pub fn labels(&self) -> (Arc<str>, Arc<str>) {
        (self.fingerprint.clone(), self.hint.clone())
    }

    /// The key's token counters, for an answer to add its usage to when it ends.
    pub fn tokens(&self) -> &Arc<TokenTotals> {
        &self.tokens
    }
}

/// Tokens one key's answers reported since start.
#[derive(Debug, Default)]
pub struct TokenTotals {
    /// The key's fingerprint, the label its tokens are counted under; its key's, shared.
    fingerprint: Arc<str>,
    input: AtomicU64,
    output: AtomicU64,
    cache_read: AtomicU64,
    cache_write: AtomicU64,
}

/// A copy of [`TokenTotals`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TokenCounts {
    /// Billed at the full input rate.
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl TokenCounts {
    /// The share of the whole prompt (input, cache reads and writes) read from the cache;
    /// `None` before any input.
    pub fn cache_read_share(&self) -> Option<f64> {
        let prompt = self.input + self.cache_read + self.cache_write;
        (prompt > 0).then(|| self.cache_read as f64 / prompt as f64)
    }
}

impl TokenTotals {
    pub fn add(&self, counts: TokenCounts) {
        for (total, count) in [
            (&self.input, counts.input),
            (&self.output, counts.output),
            (&self.cache_read, counts.cache_read),
            (&self.cache_write, counts.cache_write),
        ] {
            if count != 0 {
                total.fetch_add(count, Ordering::Relaxed);
            }
        }
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn counts(&self) -> TokenCounts {
        TokenCounts {
            input: self.input.load(Ordering::Relaxed),
            output: self.output.load(Ordering::Relaxed),
            cache_read: self.cache_read.load(Ordering::Relaxed),
            cache_write: self.cache_write.load(Ordering::Relaxed),
        }
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
    pub tokens: TokenCounts,
    /// Attempts per minute, the last [`MINUTES`] of them, oldest first.
    pub recent: [MinuteCounts; MINUTES],
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
    /// Requests the pool could not serve.
    exhaustions: AtomicU64,
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
            .map(|(index, key)| (key.fingerprint.to_string(), index))
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
            exhaustions: AtomicU64::new(0),
            clock,
        })
    }

    /// Gives each key its caps (in key order; a key past the list has none).
    pub fn with_caps(mut self, caps: &[KeyCaps]) -> Self {
        for (key, caps) in self.keys.iter_mut().zip(caps) {
            key.caps = (!caps.is_none()).then(|| caps::CapState::new(*caps));
        }
        self
    }

    /// A slot of key `index` for one request (`None`: the key has no caps), or how long
    /// until one may free.
    pub fn try_acquire(&self, index: usize) -> Result<Option<Permit>, Duration> {
        match &self.keys[index].caps {
            None => Ok(None),
            Some(state) => state.try_acquire(self.clock.now_ms()).map(Some),
        }
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

    /// Counts a request the pool could not serve (every key cooling, disabled or full).
    pub fn count_exhaustion(&self) {
        self.exhaustions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn exhaustions(&self) -> u64 {
        self.exhaustions.load(Ordering::Relaxed)
    }

    pub fn key(&self, index: usize) -> &PooledKey {
        &self.keys[index]
    }

    pub fn index_of(&self, fingerprint: &str) -> Option<usize> {
        self.by_fingerprint.get(fingerprint).copied()
    }

    /// Takes over state and counters of the keys both pools hold (after a config reload).
    pub fn inherit_from(&self, previous: &Pool) {
        self.exhaustions
            .store(previous.exhaustions(), Ordering::Relaxed);
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
            key.tokens.add(old.tokens.counts());
            key.history.copy_from(&old.history);
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
        self.walk_preferring(None)
    }

    /// Starts a walk that tries `preferred` (a session's key) first when it is usable, then
    /// the others by the strategy. Round-robin turns only for walks without a preferred
    /// key, so it spreads sessions, not the requests of one session.
    pub fn walk_preferring(&self, preferred: Option<usize>) -> Walk<'_> {
        let start = match self.settings.strategy {
            Strategy::Ordered => 0,
            Strategy::RoundRobin if self.keys.is_empty() => 0,
            Strategy::RoundRobin if preferred.is_some() => {
                self.next_start.load(Ordering::Relaxed) % self.keys.len()
            }
            Strategy::RoundRobin => {
                self.next_start.fetch_add(1, Ordering::Relaxed) % self.keys.len()
            }
        };
        Walk::new(self, start, preferred)
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
            let after = before.stronger(target);
            let outcome = MarkOutcome {
                model_reason: StateReason::RateLimited,
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

    /// Cools one model of a key for a rate limit; a cooldown only ever extends.
    pub fn cool_model(&self, index: usize, model: &str, cooldown: Duration) -> MarkOutcome {
        self.rest_model(index, model, cooldown, StateReason::RateLimited)
    }

    /// Takes one model of a key out for `pause`, for `reason` (a rate limit, or the
    /// account's access to or quota for that model).
    pub fn rest_model(
        &self,
        index: usize,
        model: &str,
        pause: Duration,
        reason: StateReason,
    ) -> MarkOutcome {
        let now = self.clock.now_ms();
        self.cool_model_until(index, model, now + pause.as_millis() as u64, now, reason)
    }

    /// Restores a model's cooldown read from shared state, capped as [`Pool::merge_shared`]
    /// caps.
    pub fn restore_model(&self, index: usize, model: &str, until_ms: u64, reason: StateReason) {
        let now = self.clock.now_ms();
        let cap = now + self.settings.max_cooldown.as_millis() as u64;
        if until_ms > now {
            self.cool_model_until(index, model, until_ms.min(cap), now, reason);
        }
    }

    fn cool_model_until(
        &self,
        index: usize,
        model: &str,
        until_ms: u64,
        now: u64,
        reason: StateReason,
    ) -> MarkOutcome {
        let marked = self.models[index].mark(
            model,
            until_ms,
            now,
            self.settings.max_models_per_key,
            reason,
        );
        MarkOutcome {
            state: KeyState::Cooling {
                until_ms: marked.until_ms,
            },
            changed: marked.started,
            per_model: true,
            model_reason: reason,
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
        let now = self.clock.now_ms();
        key.last_used_ms.store(now, Ordering::Relaxed);
        key.history.record(now, status);
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
        let now = self.clock.now_ms();
        KeySnapshot {
            index,
            hint: key.key.hint(),
            fingerprint: key.fingerprint.to_string(),
            state: self.state(index),
            models: self.models[index].live(now),
            last_status: match key.last_status.load(Ordering::Relaxed) {
                0 => None,
                code => Some(code),
            },
            last_used_ms: nonzero(key.last_used_ms.load(Ordering::Relaxed)),
            requests: key.requests.load(Ordering::Relaxed),
            failures: key.failures.load(Ordering::Relaxed),
            tokens: key.tokens.counts(),
            recent: key.history.last_minutes(now),
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

#[cfg(test)]
mod tests;
