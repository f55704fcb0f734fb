//! Prometheus metrics for `GET /metrics`.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::shedding::ShedCounts;
use crate::failover::Upstream;
use crate::keypool::{AffinityOutcome, ExhaustionKind, KeyState, TokenCounts};

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
struct WorkerLabels {
    worker: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShedLabels {
    reason: &'static str,
}

/// The connection counts `/metrics` reports.
pub struct ConnectionCounts {
    /// Open connections, one count per worker.
    pub open: Vec<usize>,
    /// Closed at once because the server was full and none could be shed.
    pub refused: u64,
    /// Closed to make room.
    pub shed: ShedCounts,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExhaustionLabels {
    provider: String,
    kind: &'static str,
}

pub struct Metrics {
    registry: Registry,
    keys: Family<KeyLabels, Gauge>,
    transitions: Family<TransitionLabels, Counter>,
    exhaustions: Family<ExhaustionLabels, Counter>,
    connections: Family<WorkerLabels, Gauge>,
    refused_connections: Counter,
    shed_connections: Family<ShedLabels, Counter>,
    shared_degraded: Gauge,
    waits: Family<ProviderLabels, Histogram>,
    affinity: Family<AffinityLabels, Counter>,
    requests: Arc<RequestStats>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AffinityLabels {
    provider: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

/// Brings a counter up to a count kept elsewhere.
fn catch_up(counter: &Counter, count: u64) {
    counter.inc_by(count.saturating_sub(counter.get()));
}

/// 50 ms .. ~100 s: a held request waits for a cooldown to end.
const WAIT_BOUNDS: [f64; 12] = exponential_bounds(0.05);

/// What [`Metrics::request`] counts of one request.
pub struct RequestMetrics<'a> {
    pub provider: &'a str,
    pub route: &'static str,
    pub status: u16,
    pub attempts: usize,
    pub tokens: Option<KeyTokens<'a>>,
}

/// Tokens a pool key's answer reported: `key` is its fingerprint.
pub struct KeyTokens<'a> {
    pub key: &'a str,
    pub model: Option<&'a str>,
    pub counts: TokenCounts,
}

impl Metrics {
    /// `threads`: how many threads record requests, each into its own shard.
    pub fn new(threads: usize) -> Self {
        let mut registry = Registry::default();
        let keys = Family::default();
        let transitions = Family::default();
        let exhaustions = Family::default();
        let connections = Family::default();
        let refused_connections = Counter::default();
        let shed_connections = Family::default();
        let shared_degraded = Gauge::default();
        let waits = Family::<ProviderLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(WAIT_BOUNDS)) as fn() -> Histogram,
        );
        let affinity = Family::default();
        let requests = Arc::new(RequestStats::new(threads));
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
            "aibridge_open_connections",
            "Open client connections per worker thread",
            connections.clone(),
        );
        registry.register(
            "aibridge_refused_connections",
            "Client connections closed at once because max_connections were open, none of \
             them waiting for a whole request",
            refused_connections.clone(),
        );
        registry.register(
            "aibridge_shed_connections",
            "Client connections without a whole request closed to make room, by reason \
             (full: max_connections were open; head_memory: unfinished request heads were \
             over budget)",
            shed_connections.clone(),
        );
        registry.register(
            "aibridge_shared_health_degraded",
            "1 while Redis, where key health is shared, is out of reach; else 0",
            shared_degraded.clone(),
        );
        registry.register(
            "aibridge_wait_seconds",
            "Time held requests waited for a key to come back",
            waits.clone(),
        );
        registry.register(
            "aibridge_affinity",
            "Requests of a session answered by a pool key: on the session's key (kept), on \
             another because it was not usable (moved), or with no live assignment (new)",
            affinity.clone(),
        );
        registry.register_collector(Box::new(requests.clone()));
        Self {
            registry,
            keys,
            transitions,
            exhaustions,
            connections,
            refused_connections,
            shed_connections,
            shared_degraded,
            waits,
            affinity,
            requests,
        }
    }

    /// A session's request and whether it kept its key.
    pub fn affinity(&self, provider: &str, outcome: AffinityOutcome) {
        let labels = AffinityLabels {
            provider: provider.to_owned(),
            outcome: outcome.as_str(),
        };
        self.affinity.get_or_create(&labels).inc();
    }

    pub fn key_transition(&self, provider: &str, state: KeyState) {
        if let Some(reason) = state.reason() {
            let labels = TransitionLabels {
                provider: provider.to_owned(),
                reason: reason.as_str(),
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

    /// A request that was held for a key, for `waited`.
    pub fn waited(&self, provider: &str, waited: Duration) {
        let labels = ProviderLabels {
            provider: provider.to_owned(),
        };
        self.waits
            .get_or_create(&labels)
            .observe(waited.as_secs_f64());
    }

    /// Counts one request in worker `slot`'s shard.
    /// One answered request, with the tokens its answer reported when a pool key answered:
    /// one lock of worker `slot`'s shard for both.
    pub fn request(&self, slot: usize, request: &RequestMetrics<'_>) {
        let mut shard = self.requests.shard(slot);
        let stats = shard.provider(request.provider);
        stats.count(request.route, request.status, 1);
        // Zero attempts is a real value: every key was already marked.
        stats.attempts.observe(request.attempts as f64);
        if let Some(tokens) = &request.tokens {
            stats.add_tokens(tokens.key, tokens.model.unwrap_or_default(), tokens.counts);
        }
    }

    pub fn latency(&self, slot: usize, provider: &str, upstream: Duration, added: Duration) {
        let mut shard = self.requests.shard(slot);
        shard
            .provider(provider)
            .upstream_latency
            .observe(upstream.as_secs_f64());
        shard.added_latency.observe(added.as_secs_f64());
    }

    /// The exposition text, with the key gauges read from the pools now, the connection
    /// figures as counted so far, and whether shared health is `degraded`.
    pub fn render<'a>(
        &self,
        upstreams: impl IntoIterator<Item = &'a Upstream>,
        connections: ConnectionCounts,
        degraded: bool,
    ) -> String {
        self.shared_degraded.set(i64::from(degraded));
        catch_up(&self.refused_connections, connections.refused);
        let ShedCounts { full, head_memory } = connections.shed;
        for (reason, count) in [("full", full), ("head_memory", head_memory)] {
            catch_up(
                &self.shed_connections.get_or_create(&ShedLabels { reason }),
                count,
            );
        }
        for (worker, open) in connections.open.into_iter().enumerate() {
            let open = i64::try_from(open).unwrap_or(i64::MAX);
            self.connections
                .get_or_create(&WorkerLabels { worker })
                .set(open);
        }
        self.keys.clear();
        for upstream in upstreams {
            for state in ["available", "cooling", "disabled"] {
                let labels = KeyLabels {
                    provider: upstream.name.to_string(),
                    state,
                };
                self.keys.get_or_create(&labels).set(0);
            }
            for index in 0..upstream.pool.len() {
                // A key cooling for any one model counts as cooling.
                let state = match upstream.pool.state(index) {
                    KeyState::Available if upstream.pool.any_model_cooling(index) => "cooling",
                    state => state.name(),
                };
                let labels = KeyLabels {
                    provider: upstream.name.to_string(),
                    state,
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

/// Upstream attempts per request.
const ATTEMPT_BOUNDS: [f64; 9] = [0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0];
/// 1 ms .. ~65 s.
const UPSTREAM_BOUNDS: [f64; 17] = exponential_bounds(0.001);
/// 10 us .. ~80 ms.
const ADDED_BOUNDS: [f64; 14] = exponential_bounds(0.000_01);

const fn exponential_bounds<const N: usize>(start: f64) -> [f64; N] {
    let mut bounds = [0.0; N];
    let mut index = 0;
    let mut bound = start;
    while index < N {
        bounds[index] = bound;
        bound *= 2.0;
        index += 1;
    }
    bounds
}

/// The per-request series. Every worker thread records into a shard of its own, and a
/// scrape adds the shards up, so recording a request takes no lock another core holds and
/// writes no cache line another core reads.
#[derive(Debug)]
struct RequestStats {
    shards: Box<[Padded]>,
}

/// Keeps each shard on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(Mutex<Shard>);

#[derive(Debug)]
struct Shard {
    /// A handful of providers: a scan is cheaper than hashing the name.
    providers: Vec<ProviderStats>,
    added_latency: Buckets,
}

#[derive(Debug)]
struct ProviderStats {
    provider: String,
    /// Requests by route and status.
    requests: Vec<(&'static str, u16, u64)>,
    attempts: Buckets,
    upstream_latency: Buckets,
    /// Tokens by key fingerprint, then model ("" when none was named). A pool has few
    /// keys and a key few models: a scan beats hashing, and models past
    /// [`MAX_TOKEN_MODELS`] are counted as `other`, so a caller inventing names cannot
    /// grow the metrics without bound.
    tokens: Vec<(Box<str>, ModelTokens)>,
}

/// A histogram's counts: one per bound, then the overflow.
#[derive(Debug)]
struct Buckets {
    bounds: &'static [f64],
    counts: Box<[u64]>,
    sum: f64,
}

impl RequestStats {
    fn new(threads: usize) -> Self {
        Self {
            shards: (0..threads.max(1)).map(|_| Padded::default()).collect(),
        }
    }

    /// Worker `slot`'s shard; the control thread has the last one.
    fn shard(&self, slot: usize) -> MutexGuard<'_, Shard> {
        lock(&self.shards[slot.min(self.shards.len() - 1)].0)
    }

    /// All shards added up.
    fn total(&self) -> Shard {
        let mut total = Shard::default();
        for shard in &self.shards {
            total.add(&lock(&shard.0));
        }
        total
    }
}

/// Counts cannot be torn, so a shard stays usable after a panic while it was held.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for Shard {
    fn default() -> Self {
        Self {
            providers: Vec::new(),
            added_latency: Buckets::new(&ADDED_BOUNDS),
        }
    }
}

impl Shard {
    fn provider(&mut self, name: &str) -> &mut ProviderStats {
        let index = match self
            .providers
            .iter()
            .position(|stats| stats.provider == name)
        {
            Some(index) => index,
            None => {
                self.providers.push(ProviderStats::new(name));
                self.providers.len() - 1
            }
        };
        &mut self.providers[index]
    }

    fn add(&mut self, other: &Shard) {
        for theirs in &other.providers {
            let ours = self.provider(&theirs.provider);
            for &(route, status, count) in &theirs.requests {
                ours.count(route, status, count);
            }
            ours.attempts.add(&theirs.attempts);
            ours.upstream_latency.add(&theirs.upstream_latency);
            for (key, models) in &theirs.tokens {
                for (model, counts) in models {
                    ours.add_tokens(key, model, *counts);
                }
            }
        }
        self.added_latency.add(&other.added_latency);
    }
}

impl ProviderStats {
    fn new(provider: &str) -> Self {
        Self {
            provider: provider.to_owned(),
            requests: Vec::new(),
            attempts: Buckets::new(&ATTEMPT_BOUNDS),
            upstream_latency: Buckets::new(&UPSTREAM_BOUNDS),
            tokens: Vec::new(),
        }
    }

    /// Adds `counts` for `key` and `model`, allocating only for a key or model seen the
    /// first time.
    fn add_tokens(&mut self, key: &str, model: &str, counts: TokenCounts) {
        let key_index = match self.tokens.iter().position(|(seen, _)| **seen == *key) {
            Some(index) => index,
            None => {
                self.tokens.push((key.into(), Vec::new()));
                self.tokens.len() - 1
            }
        };
        let models = &mut self.tokens[key_index].1;
        let model = if models.len() >= MAX_TOKEN_MODELS
            && !models.iter().any(|(seen, _)| **seen == *model)
        {
            OTHER_MODELS
        } else {
            model
        };
        let model_index = match models.iter().position(|(seen, _)| **seen == *model) {
            Some(index) => index,
            None => {
                models.push((model.into(), TokenCounts::default()));
                models.len() - 1
            }
        };
        let total = &mut models[model_index].1;
        total.input += counts.input;
        total.output += counts.output;
        total.cache_read += counts.cache_read;
        total.cache_write += counts.cache_write;
    }

    fn count(&mut self, route: &'static str, status: u16, count: u64) {
        let existing = self
            .requests
            .iter_mut()
            .find(|(r, s, _)| *r == route && *s == status);
        match existing {
            Some((_, _, total)) => *total += count,
            None => self.requests.push((route, status, count)),
        }
    }
}

impl Buckets {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1].into(),
            sum: 0.0,
        }
    }

    fn observe(&mut self, value: f64) {
        self.sum += value;
        let index = self.bounds.partition_point(|bound| *bound < value);
        self.counts[index] += 1;
    }

    fn add(&mut self, other: &Self) {
        for (ours, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *ours += theirs;
        }
        self.sum += other.sum;
    }

    fn encode(&self, encoder: &mut MetricEncoder) -> fmt::Result {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts.iter().copied())
            .collect();
        let count = self.counts.iter().sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum, count, &buckets, None)
    }
}

impl Collector for RequestStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let total = self.total();
        let mut requests = encoder.encode_descriptor(
            "aibridge_requests",
            "Requests by provider, route and status",
            None,
            MetricType::Counter,
        )?;
        for stats in &total.providers {
            for &(route, status, count) in &stats.requests {
                let labels = (
                    [("provider", stats.provider.as_str()), ("route", route)],
                    [("status", status)],
                );
                requests
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
            }
        }
        encode_per_provider(
            &mut encoder,
            "aibridge_attempts_per_request",
            "Upstream attempts per request",
            &total.providers,
            |stats| &stats.attempts,
        )?;
        encode_tokens(&mut encoder, &total.providers)?;
        encode_per_provider(
            &mut encoder,
            "aibridge_upstream_latency_seconds",
            "Time from sending an attempt to its response headers",
            &total.providers,
            |stats| &stats.upstream_latency,
        )?;
        let mut added = encoder.encode_descriptor(
            "aibridge_added_latency_seconds",
            "Time the bridge itself adds before the response starts",
            None,
            MetricType::Histogram,
        )?;
        total.added_latency.encode(&mut added)
    }
}

/// One key's token counts by model.
type ModelTokens = Vec<(Box<str>, TokenCounts)>;

/// Models one key's token counts keep apart; the rest are `other`.
const MAX_TOKEN_MODELS: usize = 64;
const OTHER_MODELS: &str = "other";

/// `aibridge_tokens_total{provider,key,model,kind}`: `input` is billed at the full input
/// rate, so input + cache_read + cache_write is the whole prompt.
fn encode_tokens(encoder: &mut DescriptorEncoder, providers: &[ProviderStats]) -> fmt::Result {
    let mut family = encoder.encode_descriptor(
        "aibridge_tokens",
        "Tokens the provider reported, by key fingerprint, model and kind",
        None,
        MetricType::Counter,
    )?;
    for stats in providers {
        for (key, models) in &stats.tokens {
            for (model, counts) in models {
                let kinds = [
                    ("input", counts.input),
                    ("output", counts.output),
                    ("cache_read", counts.cache_read),
                    ("cache_write", counts.cache_write),
                ];
                for (kind, count) in kinds {
                    let labels = [
                        ("provider", stats.provider.as_str()),
                        ("key", key),
                        ("model", model),
                        ("kind", kind),
                    ];
                    family
                        .encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
                }
            }
        }
    }
    Ok(())
}

fn encode_per_provider(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    providers: &[ProviderStats],
    histogram: impl Fn(&ProviderStats) -> &Buckets,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for stats in providers {
        let labels = [("provider", stats.provider.as_str())];
        histogram(stats).encode(&mut family.encode_family(&labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(stats: RequestStats) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(stats));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn shards_add_up_when_scraped() {
        let stats = RequestStats::new(2);
        for shard in &stats.shards {
            let mut shard = lock(&shard.0);
            let anthropic = shard.provider("anthropic");
            anthropic.count("messages", 200, 1);
            anthropic.attempts.observe(1.0);
            shard.added_latency.observe(0.000_02);
        }
        lock(&stats.shards[1].0)
            .provider("openai")
            .count("responses", 429, 1);
        let text = exposition(stats);
        for line in [
            "aibridge_requests_total{provider=\"anthropic\",route=\"messages\",status=\"200\"} 2",
            "aibridge_requests_total{provider=\"openai\",route=\"responses\",status=\"429\"} 1",
            "aibridge_attempts_per_request_count{provider=\"anthropic\"} 2",
            "aibridge_attempts_per_request_bucket{le=\"1.0\",provider=\"anthropic\"} 2",
            "aibridge_added_latency_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn a_value_on_a_bound_falls_in_its_bucket() {
        let mut buckets = Buckets::new(&ATTEMPT_BOUNDS);
        for value in [0.0, 1.0, 1.5, 1000.0] {
            buckets.observe(value);
        }
        assert_eq!(buckets.counts[..3], [1, 1, 1]);
        assert_eq!(buckets.counts[ATTEMPT_BOUNDS.len()], 1);
        assert_eq!(buckets.sum, 1002.5);
    }

    #[test]
    fn exponential_bounds_double() {
        assert_eq!(UPSTREAM_BOUNDS[0], 0.001);
        assert_eq!(UPSTREAM_BOUNDS[16], 65.536);
        assert_eq!(ADDED_BOUNDS[13], 0.081_92);
    }
}
