//! Why no key is left for a request, and when one is back.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

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
    pub attempt_limit: Option<AttemptLimit>,
}

/// A walk that `max_attempts` stopped with keys left untried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptLimit {
    /// Keys tried, which is `max_attempts`.
    pub tried: usize,
    /// Keys in the pool.
    pub keys: usize,
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
        if let Some(limit) = self.attempt_limit {
            return self.limit_message(limit);
        }
        match (self.kind, &self.model) {
            (ExhaustionKind::RateLimited, Some(model)) => format!(
                "all configured keys are rate-limited for model \"{model}\" (retry after {}s)",
                self.retry_after_secs()
            ),
            (ExhaustionKind::RateLimited, None) => format!(
                "all configured keys are rate-limited (retry after {}s)",
                self.retry_after_secs()
            ),
            (ExhaustionKind::Unauthorized, _) => "all configured keys failed authentication or \
                 are out of quota; run `aibridge pool status` to see why, and `aibridge pool \
                 reset` once they are fixed"
                .to_owned(),
        }
    }

    /// What happened when `max_attempts` stopped the walk: untried keys are ready, so a
    /// retry goes to them (the tried ones are now cooling or disabled).
    fn limit_message(&self, limit: AttemptLimit) -> String {
        let AttemptLimit { tried, keys } = limit;
        let model = match &self.model {
            Some(model) => format!(" for model \"{model}\""),
            None => String::new(),
        };
        let failure = match self.kind {
            ExhaustionKind::RateLimited => "each rate-limited or disabled",
            ExhaustionKind::Unauthorized => "each disabled (authentication or quota)",
        };
        format!(
            "{tried} of {keys} keys tried{model}, {failure}; stopped after max_attempts \
             ({tried}); the {} keys not tried are ready for a retry",
            keys.saturating_sub(tried)
        )
    }
}

pub fn ceil_secs(duration: Duration) -> u64 {
    duration.as_millis().div_ceil(1000) as u64
}
