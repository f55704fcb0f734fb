//! Prometheus metrics for `GET /metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::failover::Upstream;
use crate::keypool::{ExhaustionKind, KeyState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    provider: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    provider: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExhaustionLabels {
    provider: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    provider: String,
    route: &'static str,
    status: u16,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    keys: Family<KeyLabels, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
    exhaustions: Family<ExhaustionLabels, Counter>,
    attempts: HistogramFamily<ProviderLabels>,
    requests: Family<RequestLabels, Counter>,
    upstream_latency: HistogramFamily<ProviderLabels>,
    added_latency: Histogram,
}

fn attempt_buckets() -> Histogram {
    Histogram::new([0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0])
}

fn upstream_buckets() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let keys = Family::default();
        let transitions = Family::default();
        let exhaustions = Family::default();
        let attempts = HistogramFamily::new_with_constructor(attempt_buckets as fn() -> Histogram);
        let requests = Family::default();
        let upstream_latency =
            HistogramFamily::new_with_constructor(upstream_buckets as fn() -> Histogram);
        // 10 us .. ~80 ms
        let added_latency = Histogram::new(exponential_buckets(0.000_01, 2.0, 14));
        registry.register("aibridge_keys", "Keys per provider and state", keys.clone());
        registry.register(
            "aibridge_key_transitions",
            "Key state changes by reason",
            transitions.clone(),
        );
        registry.register(
            "aibridge_pool_exhaustions",
            "Requests that found no usable key, by kind",
            exhaustions.clone(),
        );
        registry.register(
            "aibridge_attempts_per_request",
            "Upstream attempts per request",
            attempts.clone(),
        );
        registry.register(
            "aibridge_requests",
            "Requests by provider, route and status",
            requests.clone(),
        );
        registry.register(
            "aibridge_upstream_latency_seconds",
            "Time from sending an attempt to its response headers",
            upstream_latency.clone(),
        );
        registry.register(
            "aibridge_added_latency_seconds",
            "Time the bridge itself adds before the response starts",
            added_latency.clone(),
        );
        Self {
            registry,
            keys,
            transitions,
            exhaustions,
            attempts,
            requests,
            upstream_latency,
            added_latency,
        }
    }

    pub fn key_transition(&self, provider: &str, state: KeyState) {
        if let Some(reason) = state.reason() {
            let labels = TransitionLabels {
                provider: provider.to_owned(),
                reason,
            };
            self.transitions.get_or_create(&labels).inc();
        }
    }

    pub fn exhausted(&self, provider: &str, kind: ExhaustionKind) {
        let kind = match kind {
            ExhaustionKind::RateLimited => "rate_limited",
            ExhaustionKind::Unauthorized => "unauthorized",
        };
        let labels = ExhaustionLabels {
            provider: provider.to_owned(),
            kind,
        };
        self.exhaustions.get_or_create(&labels).inc();
    }

    pub fn request(&self, provider: &str, route: &'static str, status: u16, attempts: usize) {
        let labels = RequestLabels {
            provider: provider.to_owned(),
            route,
            status,
        };
        self.requests.get_or_create(&labels).inc();
        let labels = ProviderLabels {
            provider: provider.to_owned(),
        };
        // Zero attempts is a real value: every key was already marked.
        self.attempts
            .get_or_create(&labels)
            .observe(attempts as f64);
    }

    pub fn latency(&self, provider: &str, upstream: Duration, added: Duration) {
        let labels = ProviderLabels {
            provider: provider.to_owned(),
        };
        self.upstream_latency
            .get_or_create(&labels)
            .observe(upstream.as_secs_f64());
        self.added_latency.observe(added.as_secs_f64());
    }

    /// The exposition text, with the key gauges read from the pools now.
    pub fn render<'a>(&self, upstreams: impl IntoIterator<Item = &'a Upstream>) -> String {
        self.keys.clear();
        for upstream in upstreams {
            for state in ["available", "cooling", "disabled"] {
                let labels = KeyLabels {
                    provider: upstream.name.clone(),
                    state,
                };
                self.keys.get_or_create(&labels).set(0);
            }
            for index in 0..upstream.pool.len() {
                let labels = KeyLabels {
                    provider: upstream.name.clone(),
                    state: upstream.pool.state(index).name(),
                };
                self.keys.get_or_create(&labels).inc();
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
