//! Probing keys: one cheap authenticated request per key (a models list, which costs no
//! tokens), never failing over, and a verdict on each. Used by `probe-keys` and by `serve`
//! to bring back disabled keys that work again.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde::Serialize;

use crate::failover::{FailoverError, OutboundRequest, Upstream, Walker};
use crate::health::{HealthChange, Observation};
use crate::keypool::{DisableReason, KeyState, Mark, StateReason, ceil_secs, to_unix_ms};
use crate::provider::is_quota_error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// 2xx.
    Valid,
    /// 401 or 403.
    Invalid,
    /// 429.
    RateLimited,
    /// Anything else: another status, a network error, a timeout.
    Error,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Invalid => "invalid",
            Self::RateLimited => "rate-limited",
            Self::Error => "error",
        }
    }
}

/// The verdict on one key.
#[derive(Debug, Clone)]
pub struct Probe {
    pub provider: String,
    pub index: usize,
    pub hint: String,
    pub fingerprint: String,
    pub verdict: Verdict,
    pub status: Option<u16>,
    pub detail: String,
    pub latency: Duration,
    /// What the verdict does to the key (`None` for valid and error).
    pub mark: Option<Mark>,
    /// The provider's cap on cooldowns, for what is written to the state file.
    pub max_cooldown: Duration,
}

/// Probes key `index` of `upstream` with one request, giving up after `timeout`.
pub async fn probe(walker: &Walker, upstream: &Upstream, index: usize, timeout: Duration) -> Probe {
    let started = Instant::now();
    match tokio::time::timeout(timeout, probe_once(walker, upstream, index)).await {
        Ok(probe) => probe,
        Err(_) => {
            let mut probe = Probe::unanswered(upstream, index);
            // Worded as the client's own timeout, which races this one.
            probe.detail = FailoverError::Timeout(timeout).to_string();
            probe.latency = started.elapsed();
            probe
        }
    }
}

async fn probe_once(walker: &Walker, upstream: &Upstream, index: usize) -> Probe {
    let key = upstream.pool.key(index);
    let mut headers = HeaderMap::new();
    crate::transport::identify_as_aibridge(&mut headers);
    let request = OutboundRequest::new(
        Method::GET,
        upstream.kind.api().probe_path().to_owned(),
        headers,
        Bytes::new(),
    );
    let started = Instant::now();
    let result = walker.send_with_key(upstream, &request, key).await;
    let mut probe = Probe::unanswered(upstream, index);
    let response = match result {
        Ok(response) => response,
        Err(error) => {
            probe.latency = started.elapsed();
            probe.detail = error.to_string();
            return probe;
        }
    };
    let status = response.status().as_u16();
    probe.status = Some(status);
    probe.mark = upstream.pool.mark_for(status, response.headers());
    let body = crate::transport::read_body(response.into_body())
        .await
        .unwrap_or_default();
    if is_quota_error(upstream.kind.api(), status, &body) {
        probe.mark = Some(Mark::Disable(DisableReason::Quota));
    }
    probe.latency = started.elapsed();
    (probe.verdict, probe.detail) = match (status, probe.mark) {
        (200..=299, _) => (Verdict::Valid, String::new()),
        (_, Some(Mark::Disable(reason))) => (
            Verdict::Invalid,
            with_message(&format!("{status} {}", reason.as_str()), &body),
        ),
        (_, Some(Mark::Cool(cooldown))) => (
            Verdict::RateLimited,
            format!("retry after {}s", ceil_secs(cooldown)),
        ),
        _ => (
            Verdict::Error,
            with_message(&format!("HTTP {status}"), &body),
        ),
    };
    probe
}

/// `prefix: message` with the provider's error message, when the body has one.
fn with_message(prefix: &str, body: &[u8]) -> String {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| value.pointer("/error/message")?.as_str().map(str::to_owned));
    match message {
        Some(message) => {
            let short: String = message.chars().take(160).collect();
            format!("{prefix}: {short}")
        }
        None => prefix.to_owned(),
    }
}

impl Probe {
    fn unanswered(upstream: &Upstream, index: usize) -> Self {
        let key = upstream.pool.key(index);
        Self {
            provider: upstream.name.to_string(),
            index,
            hint: key.key().hint(),
            fingerprint: key.fingerprint().to_owned(),
            verdict: Verdict::Error,
            status: None,
            detail: String::new(),
            latency: Duration::ZERO,
            mark: None,
            max_cooldown: upstream.pool.max_cooldown(),
        }
    }

    /// Applies the verdict to the pool: invalid disables, rate-limited cools, valid clears
    /// any mark. Returns the key's state when it changed.
    pub fn apply(&self, upstream: &Upstream) -> Option<KeyState> {
        let pool = &upstream.pool;
        match (self.verdict, self.mark) {
            (Verdict::Valid, _) => {
                (pool.reset(self.index) != KeyState::Available).then_some(KeyState::Available)
            }
            (_, Some(mark)) => {
                let outcome = pool.mark(self.index, mark);
                outcome.changed.then_some(outcome.state)
            }
            _ => None,
        }
    }

    /// The verdict as changes to shared health, made the same way: nothing for a probe
    /// that failed on the network, which says nothing about the key.
    pub fn changes(&self, at: SystemTime) -> Vec<HealthChange> {
        if self.status.is_none() {
            return Vec::new();
        }
        let mut changes = Vec::new();
        if self.verdict == Verdict::Valid {
            changes.push(HealthChange::Cleared {
                provider: Some(self.provider.clone()),
                fingerprint: Some(self.fingerprint.clone()),
            });
        }
        let mark = match self.mark {
            Some(Mark::Disable(reason)) => Some(KeyState::Disabled(reason)),
            Some(Mark::Cool(cooldown)) => Some(KeyState::Cooling {
                until_ms: to_unix_ms(at) + cooldown.as_millis() as u64,
            }),
            None => None,
        };
        changes.push(HealthChange::Observed(Observation {
            provider: self.provider.clone(),
            fingerprint: self.fingerprint.clone(),
            hint: self.hint.clone(),
            status: self.status,
            mark,
            model: None,
            model_reason: StateReason::RateLimited,
            at,
            max_cooldown: self.max_cooldown,
        }));
        changes
    }
}

/// The keys of `upstream` that are disabled now.
pub fn disabled_keys(upstream: &Upstream) -> Vec<usize> {
    (0..upstream.pool.len())
        .filter(|&index| matches!(upstream.pool.state(index), KeyState::Disabled(_)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_details_carry_the_providers_message() {
        let anthropic = br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
        assert_eq!(
            with_message("401 unauthorized", anthropic),
            "401 unauthorized: invalid x-api-key"
        );
        let openai =
            br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error"}}"#;
        assert_eq!(
            with_message("401 unauthorized", openai),
            "401 unauthorized: Incorrect API key provided"
        );
        assert_eq!(with_message("HTTP 500", b"<html>"), "HTTP 500");
    }

    #[test]
    fn verdict_names() {
        let names: Vec<_> = [
            Verdict::Valid,
            Verdict::Invalid,
            Verdict::RateLimited,
            Verdict::Error,
        ]
        .into_iter()
        .map(|verdict| serde_json::to_value(verdict).unwrap())
        .collect();
        assert_eq!(names, ["valid", "invalid", "rate-limited", "error"]);
        assert_eq!(Verdict::RateLimited.as_str(), "rate-limited");
    }
}
