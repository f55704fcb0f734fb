//! The key pool: an ordered list of keys, each one's health, and per-request walks over them.
//!
//! Pure logic: no I/O, time comes from an injected [`Clock`]. Each key's state lives in one
//! atomic word, so concurrent requests see each other's marks at once without a global lock.

mod clock;
mod retry_after;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderMap;
use serde::{Deserialize, Serialize};

pub use clock::{Clock, ManualClock, SystemClock, from_unix_ms, to_unix_ms};
pub use retry_after::cooldown_from_headers;

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

/// Why a key was taken out of service for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisableReason {
    /// The provider answered 401.
    Unauthorized,
    /// The provider answered 403.
    Forbidden,
}

impl DisableReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
        }
    }
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

impl KeyState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Cooling { .. } => "cooling",
            Self::Disabled(_) => "disabled",
        }
    }

    /// The reason string written to state files and admin output.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Self::Available => None,
            Self::Cooling { .. } => Some("rate_limited"),
            Self::Disabled(reason) => Some(reason.as_str()),
        }
    }

    /// Time left on a cooldown at `now_ms` (zero when not cooling).
    pub fn remaining(self, now_ms: u64) -> Duration {
        match self {
            Self::Cooling { until_ms } => Duration::from_millis(until_ms.saturating_sub(now_ms)),
            _ => Duration::ZERO,
        }
    }

    fn settle(self, now_ms: u64) -> Self {
        match self {
            Self::Cooling { until_ms } if until_ms <= now_ms => Self::Available,
            other => other,
        }
    }

    // One word per key: the top two bits hold the kind, the rest the deadline.
    const KIND_SHIFT: u32 = 62;
    const DEADLINE_MASK: u64 = (1 << Self::KIND_SHIFT) - 1;

    fn encode(self) -> u64 {
        match self {
            Self::Available => 0,
            Self::Cooling { until_ms } => 1 << Self::KIND_SHIFT | (until_ms & Self::DEADLINE_MASK),
            Self::Disabled(DisableReason::Unauthorized) => 2 << Self::KIND_SHIFT,
            Self::Disabled(DisableReason::Forbidden) => 3 << Self::KIND_SHIFT,
        }
    }

    fn decode(word: u64) -> Self {
        match word >> Self::KIND_SHIFT {
            0 => Self::Available,
            1 => Self::Cooling {
                until_ms: word & Self::DEADLINE_MASK,
            },
            2 => Self::Disabled(DisableReason::Unauthorized),
            _ => Self::Disabled(DisableReason::Forbidden),
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
    /// The key's state after the mark.
    pub state: KeyState,
    /// Whether the state's kind changed (available -> cooling, cooling -> disabled, ...);
    /// extending a cooldown is not a change, so logs and counters fire once per change.
    pub changed: bool,
}

/// Cooldown policy of one provider's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub strategy: Strategy,
    pub default_cooldown: Duration,
    pub max_cooldown: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            strategy: Strategy::Ordered,
            default_cooldown: Duration::from_secs(60),
            max_cooldown: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("key #{index} is empty")]
    EmptyKey { index: usize },
    #[error("key #{index} duplicates key #{first}")]
    DuplicateKey { index: usize, first: usize },
}

/// A key named by hint or fingerprint that names no key, or several.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySelectError {
    #[error("no key matches {0:?}")]
    NoMatch(String),
    #[error("{selector:?} matches {} keys ({}); use a fingerprint", .fingerprints.len(), .fingerprints.join(", "))]
    Ambiguous {
        selector: String,
        fingerprints: Vec<String>,
    },
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

/// No available key is left in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct Exhausted {
    pub kind: ExhaustionKind,
    /// The smallest remaining cooldown; zero when a key has become available meanwhile.
    pub retry_after: Duration,
}

impl Exhausted {
    /// Whole seconds to wait, rounded up.
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after)
    }

    pub fn message(&self) -> String {
        match self.kind {
            ExhaustionKind::RateLimited => format!(
                "all configured keys are rate-limited (retry after {}s)",
                self.retry_after_secs()
            ),
            ExhaustionKind::Unauthorized => "all configured keys failed authentication".to_owned(),
        }
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
    pub state: KeyState,
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
        Ok(Self {
            keys,
            states,
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

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn key(&self, index: usize) -> &PooledKey {
        &self.keys[index]
    }

    pub fn index_of(&self, fingerprint: &str) -> Option<usize> {
        self.by_fingerprint.get(fingerprint).copied()
    }

    /// The keys a person may mean by `selector`: the one with that fingerprint, else those
    /// with that masked hint.
    pub fn matches(&self, selector: &str) -> Vec<usize> {
        if let Some(index) = self.index_of(selector) {
            return vec![index];
        }
        (0..self.keys.len())
            .filter(|&index| self.keys[index].key.hint() == selector)
            .collect()
    }

    /// The one key a person named by its fingerprint or its masked hint.
    pub fn find(&self, selector: &str) -> Result<usize, KeySelectError> {
        match self.matches(selector).as_slice() {
            [] => Err(KeySelectError::NoMatch(selector.to_owned())),
            [index] => Ok(*index),
            several => Err(KeySelectError::Ambiguous {
                selector: selector.to_owned(),
                fingerprints: several
                    .iter()
                    .map(|&index| self.keys[index].fingerprint.clone())
                    .collect(),
            }),
        }
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

    /// The cooldown a 429 asks for, else the default, capped at the maximum.
    pub fn cooldown_for(&self, headers: &HeaderMap) -> Duration {
        cooldown_from_headers(headers, self.clock.now())
            .unwrap_or(self.settings.default_cooldown)
            .min(self.settings.max_cooldown)
    }

    /// Applies a mark. A disabled key stays disabled; a cooldown only ever extends.
    pub fn mark(&self, index: usize, mark: Mark) -> MarkOutcome {
        let now = self.clock.now_ms();
        let slot = &self.states[index];
        let mut word = slot.load(Ordering::Acquire);
        loop {
            let stored = KeyState::decode(word);
            let before = stored.settle(now);
            let after = match (before, mark) {
                (KeyState::Disabled(_), _) => before,
                (_, Mark::Disable(reason)) => KeyState::Disabled(reason),
                (KeyState::Cooling { until_ms }, Mark::Cool(cooldown)) => KeyState::Cooling {
                    until_ms: until_ms.max(now + cooldown.as_millis() as u64),
                },
                (KeyState::Available, Mark::Cool(cooldown)) => KeyState::Cooling {
                    until_ms: now + cooldown.as_millis() as u64,
                },
            };
            let outcome = MarkOutcome {
                state: after,
                changed: before.name() != after.name() || before.reason() != after.reason(),
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

    /// Sets a key's state outright: for state restored from disk, probes and resets.
    /// Returns whether the state changed.
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

    /// Why the pool has nothing to offer: rate-limited (with the soonest retry) while any
    /// key is not disabled, else unauthorized.
    pub fn exhaustion(&self) -> Exhausted {
        let now = self.clock.now_ms();
        let soonest = (0..self.keys.len())
            .map(|index| self.raw_state(index).settle(now))
            .filter(|state| !matches!(state, KeyState::Disabled(_)))
            .map(|state| state.remaining(now))
            .min();
        match soonest {
            Some(retry_after) => Exhausted {
                kind: ExhaustionKind::RateLimited,
                retry_after,
            },
            None => Exhausted {
                kind: ExhaustionKind::Unauthorized,
                retry_after: Duration::ZERO,
            },
        }
    }
}

/// One request's pass over the pool: each available key at most once, in pool order from the
/// strategy's starting point.
#[derive(Debug)]
pub struct Walk<'a> {
    pool: &'a Pool,
    start: usize,
    offset: usize,
}

impl Iterator for Walk<'_> {
    /// The index of the next key to try.
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
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
            if self.pool.raw_state(index).settle(now) == KeyState::Available {
                return Some(index);
            }
        }
        None
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
        let exhausted = pool.exhaustion();
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
        let exhausted = pool.exhaustion();
        assert_eq!(exhausted.kind, ExhaustionKind::RateLimited);
        assert_eq!(exhausted.retry_after, Duration::ZERO);
    }

    #[test]
    fn exhaustion_is_unauthorized_when_every_key_is_disabled() {
        let (pool, _) = pool(2);
        pool.mark(0, Mark::Disable(DisableReason::Unauthorized));
        pool.mark(1, Mark::Disable(DisableReason::Forbidden));
        let exhausted = pool.exhaustion();
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
    fn keys_are_found_by_fingerprint_or_unique_hint() {
        let clock = ManualClock::starting_at(T0);
        let keys = vec![
            ApiKey::new("sk-ant-aaaa-1111111111111-zzzz"),
            ApiKey::new("sk-ant-bbbb-2222222222222-zzzz"),
            ApiKey::new("sk-ant-cccc-3333333333333-yyyy"),
        ];
        let pool = Pool::new(keys, PoolSettings::default(), clock).unwrap();
        assert_eq!(pool.find("sk-a...yyyy"), Ok(2));
        assert_eq!(pool.find(pool.key(1).fingerprint()), Ok(1));
        assert_eq!(
            pool.find("sk-x...0000"),
            Err(KeySelectError::NoMatch("sk-x...0000".into()))
        );
        let ambiguous = pool.find("sk-a...zzzz").unwrap_err();
        assert!(
            matches!(&ambiguous, KeySelectError::Ambiguous { fingerprints, .. } if fingerprints.len() == 2)
        );
        assert!(
            ambiguous.to_string().contains(pool.key(0).fingerprint()),
            "{ambiguous}"
        );
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
}
