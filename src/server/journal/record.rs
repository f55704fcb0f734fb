//! The request log's line: one JSON object per request.

use std::time::SystemTime;

use serde::Serialize;

use crate::failover::{Exchange, OutboundRequest, Upstream};
use crate::keypool::{AffinityOutcome, KeyState, StateKind};
use crate::provider::ApiRoute;
use crate::server::usage::RequestFacts;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The whole answer reached the client.
    Completed,
    /// The answer broke off after it started.
    Interrupted,
    /// The client left first.
    ClientDisconnected,
    /// The bridge answered with an error of its own.
    Error,
}

/// One line of the request log.
#[derive(Debug, Serialize)]
pub struct RequestRecord {
    pub time: String,
    pub id: u64,
    pub provider: String,
    pub method: String,
    pub path: String,
    pub route: &'static str,
    pub model: Option<String>,
    pub stream: bool,
    pub status: u16,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub attempts: Vec<AttemptRecord>,
    /// The hint of the key that answered.
    pub key: Option<String>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_read_tokens: Option<u64>,
    pub cache_write_tokens: Option<u64>,
    pub latency_ms: f64,
    pub ttfb_ms: Option<f64>,
    /// How long the request was held for a key.
    pub waited_ms: u64,
    /// For a session's request: whether the pick followed its assignment (`kept`), moved
    /// it (`moved`), or made one (`new`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct AttemptRecord {
    pub key: String,
    pub status: Option<u16>,
    pub mark: Option<StateKind>,
    /// The model a cooldown applies to alone; absent when key-wide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Present when this try got no answer before the upstream could start on the request,
    /// which was then sent again (the next attempt).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub resent: bool,
}

impl RequestRecord {
    pub fn new(
        id: u64,
        upstream: &Upstream,
        request: &OutboundRequest,
        route: ApiRoute,
        exchange: &Exchange,
    ) -> Self {
        let attempts = &exchange.attempts;
        let facts = match route {
            ApiRoute::Other => RequestFacts::default(),
            _ => RequestFacts::read(&request.body),
        };
        let answered = attempts
            .last()
            .filter(|attempt| exchange.result.is_ok() && attempt.answered());
        let mut record = Self::unanswered(
            id,
            &upstream.name,
            &request.method,
            &request.path_and_query,
            route,
        );
        record.model = match facts.model {
            Some(model) => Some(model),
            // Bedrock names the model in the path.
            None if upstream.kind.api().model_in_path() => request.model().map(str::to_owned),
            None => None,
        };
        record.stream = facts.stream;
        record.attempts = attempts
            .iter()
            .map(|attempt| AttemptRecord {
                key: attempt.key_hint.clone(),
                status: attempt.status,
                mark: attempt.mark.map(KeyState::kind),
                model: attempt.model.clone(),
                resent: attempt.resent,
            })
            .collect();
        record.key = answered.map(|attempt| attempt.key_hint.clone());
        record.waited_ms = exchange.waited.as_millis() as u64;
        record.affinity = exchange
            .affinity
            .map(|assigned| AffinityOutcome::as_str(assigned.outcome));
        record
    }

    /// A request with no attempt (yet): refused by the bridge, or abandoned by its client.
    pub fn unanswered(
        id: u64,
        provider: &str,
        method: &http::Method,
        path: &str,
        route: ApiRoute,
    ) -> Self {
        Self {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            id,
            provider: provider.to_owned(),
            method: method.to_string(),
            path: crate::text::shown_owned(path),
            route: route.as_str(),
            model: None,
            stream: false,
            status: 0,
            outcome: Outcome::Error,
            error: None,
            attempts: Vec::new(),
            key: None,
            input_tokens: None,
            output_tokens: None,
            cache_read_tokens: None,
            cache_write_tokens: None,
            latency_ms: 0.0,
            ttfb_ms: None,
            waited_ms: 0,
            affinity: None,
        }
    }
}
