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
