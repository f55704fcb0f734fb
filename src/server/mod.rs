//! `serve`: the HTTP front of the bridge. Every `/{provider}/...` request goes through the
//! shared failover walker; `/_aibridge/*` and `/metrics` are for operators.
//!
//! The configuration lives behind an `ArcSwap`, so a SIGHUP reload swaps it without a lock
//! on the request path.
//!
//! One single-threaded runtime per core serves requests, each keeping its own upstream
//! connections, as nginx's workers do: a request never wakes another thread. A separate
//! control thread accepts connections and hands each to the worker with the fewest open
//! (see [`accept`]), and handles signals, the state file and rechecks.
//!
//! Connections are served by hyper directly and proxied requests go straight to the proxy
//! handler; only the operator routes go through a router, which keeps its per-request cost
//! off the hot path.

mod accept;
mod admin;
mod clients;
mod guard;
mod journal;
mod lifecycle;
mod metrics;
mod page;
mod protocol;
mod proxy;
mod recheck;
mod relay;
mod shared;
mod shedding;
mod usage;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use http::HeaderMap;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tower::ServiceExt;

use crate::config::{Config, ServeSettings};
use crate::failover::{Upstream, Walker};
use crate::health::{HealthRecorder, HealthStore, StateFile};
use crate::keypool::{Clock, SystemClock};
use crate::provider::{ApiError, CREDENTIAL_HEADERS, credential_in};
use crate::transport::HttpClient;

use accept::{Accepted, AddressCap, Balancer};
pub use journal::Journal;
use lifecycle::{Signals, print_banner, wait_for_workers};
use metrics::Metrics;
use shedding::Shedding;

/// The largest request head (HTTP/1) or header list (HTTP/2) a client may send; larger heads
/// are answered 431.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// How long in-flight requests may run on after SIGINT/SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How far away each worker's nearest timer may be; see [`keep_timer_wakeups_near`]. Also
/// the resolution of the worker's coarse clock (see [`clients`]).
const TIMER_WAKEUP_BOUND: Duration = Duration::from_millis(100);

/// The header a client may carry its aibridge access token in.
const TOKEN_HEADER: http::HeaderName = http::HeaderName::from_static("x-aibridge-token");

/// Reloads the configuration (on SIGHUP), checked as it was at start.
pub type ConfigLoader = Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

/// Connections the kernel may queue before `serve` accepts them. Past the queue a client's
/// connect waits a second for its SYN to be sent again; under a connection flood the default
/// 128 fills between two accepts.
const LISTEN_BACKLOG: i32 = 4096;

/// A listening socket on `address`, with room in its queue for bursts of connections.
pub fn bind(address: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    // A restart must not wait for the last run's connections to leave TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

pub struct ServerOptions {
    pub listener: std::net::TcpListener,
    /// How many request-serving threads to run.
    pub workers: usize,
    /// Where key health is shared, if anywhere.
    pub store: Option<HealthStore>,
    pub reload: ConfigLoader,
}

/// A request-serving thread's own context, handed down from its loop to every request: the
/// shared state, and the thread's slot among the per-thread resources (its HTTP client and
/// its metrics shard), so no request touches another thread's.
#[derive(Clone, Copy)]
pub struct Worker {
    pub app: &'static AppState,
    /// `0..workers` for the workers; `workers` for the control thread.
    pub slot: usize,
}

/// What one configuration builds: swapped whole on reload.
pub struct Bridge {
    upstreams: BTreeMap<String, Upstream>,
    settings: ServeSettings,
    /// One HTTP client per worker, then one for the control thread, so each thread keeps
    /// its own upstream connections.
    walkers: Vec<Walker>,
    /// Fingerprints of the access tokens, so tokens are compared by hash.
    tokens: HashSet<String>,
    /// How often each provider's disabled keys are probed again.
    rechecks: BTreeMap<String, Duration>,
    /// Which hosts and web pages may use the bridge.
    guard: guard::Guard,
}

impl Bridge {
    fn build(
        config: &Config,
        clock: &Arc<dyn Clock>,
        state: Option<&StateFile>,
        previous: Option<&Bridge>,
        workers: usize,
    ) -> anyhow::Result<Self> {
        let mut upstreams = BTreeMap::new();
        for (name, provider) in &config.providers {
            let upstream = Upstream::from_config(provider, clock.clone())?;
            if let Some(state) = state {
                state.restore_into(name, &upstream.pool);
            }
            if let Some(old) = previous.and_then(|bridge| bridge.upstreams.get(name)) {
                upstream.pool.inherit_from(&old.pool);
                upstream.sessions.inherit_from(&old.sessions, |index| {
                    upstream.pool.index_of(old.pool.key(index).fingerprint())
                });
            }
            upstreams.insert(name.clone(), upstream);
        }
        Ok(Self {
            upstreams,
            walkers: (0..=workers)
                .map(|_| {
                    HttpClient::forwarding(config.serve.upstream_idle_timeout)
                        .map(|client| Walker::new(client, config.serve.response_timeout))
                })
                .collect::<Result<_, _>>()
                .context("cannot set up the HTTP client")?,
            tokens: config
                .serve
                .access_tokens
                .iter()
                .map(|token| token.fingerprint())
                .collect(),
            rechecks: config
                .providers
                .iter()
                .filter(|(_, provider)| !provider.keys.is_empty())
                .filter_map(|(name, provider)| Some((name.clone(), provider.recheck_disabled?)))
                .collect(),
            guard: guard::Guard {
                allowed_hosts: config.serve.allowed_hosts.clone(),
                allowed_origins: config.serve.allowed_origins.clone(),
            },
            settings: config.serve.clone(),
        })
    }

    /// The HTTP client of the thread in `slot`.
    fn walker(&self, slot: usize) -> &Walker {
        &self.walkers[slot.min(self.walkers.len() - 1)]
    }

    fn provider_names(&self) -> Vec<&str> {
        self.upstreams.keys().map(String::as_str).collect()
    }

    /// Checks the caller's access token when tokens are configured, and removes every
    /// header that carries one, whichever matched, so a token is never forwarded or taken
    /// for a provider key. A wrong `x-aibridge-token` is refused even when another header
    /// holds a right one. A credential header given twice, or holding a list, is refused
    /// whatever the tokens: which of its values counts would depend on who reads it, and
    /// the one not checked could be a token on its way upstream.
    fn authorize(&self, headers: &mut HeaderMap) -> Result<(), ApiError> {
        let carried = CarriedCredentials::of(headers);
        if let Some(name) = carried.ambiguous() {
            return Err(ApiError::bad_request(format!(
                "the {name} header is repeated or holds a list: send one credential"
            )));
        }
        // Removed only when present: a removal is a lookup, and most requests carry none.
        let dedicated = if carried.holds(&TOKEN_HEADER) {
            headers.remove(TOKEN_HEADER)
        } else {
            None
        };
        if self.tokens.is_empty() {
            return Ok(());
        }
        let is_token = |value: &str| {
            self.tokens
                .contains(&crate::secret::ApiKey::new(value).fingerprint())
        };
        let mut authorized = match dedicated {
            Some(value) if !value.to_str().is_ok_and(is_token) => {
                return Err(ApiError::invalid_access_token());
            }
            Some(_) => true,
            None => false,
        };
        for name in &CREDENTIAL_HEADERS {
            if credential_in(headers, name).is_some_and(|credential| is_token(credential.expose()))
            {
                headers.remove(name);
                authorized = true;
            }
        }
        if authorized {
            Ok(())
        } else {
            Err(ApiError::invalid_access_token())
        }
    }
}

/// Every header a caller may carry a credential or an access token in: the provider's
/// [`CREDENTIAL_HEADERS`] and the bridge's own.
static CREDENTIAL_CARRIERS: [http::HeaderName; 3] = [
    http::header::AUTHORIZATION,
    http::HeaderName::from_static("x-api-key"),
    TOKEN_HEADER,
];

/// What the headers that may carry a credential hold, read in one pass over the request's
/// headers: four lookups by name cost more than one look at each of a request's few headers.
struct CarriedCredentials {
    /// How many values each of [`CREDENTIAL_CARRIERS`] has.
    values: [usize; CREDENTIAL_CARRIERS.len()],
    /// Whether one of its values holds a comma-separated list of credentials.
    listed: [bool; CREDENTIAL_CARRIERS.len()],
}

impl CarriedCredentials {
    fn of(headers: &HeaderMap) -> Self {
        let mut carried = Self {
            values: [0; CREDENTIAL_CARRIERS.len()],
            listed: [false; CREDENTIAL_CARRIERS.len()],
        };
        for (name, value) in headers {
            let Some(index) = CREDENTIAL_CARRIERS
                .iter()
                .position(|carrier| carrier == name)
            else {
                continue;
            };
            carried.values[index] += 1;
            carried.listed[index] |= if *name == http::header::AUTHORIZATION {
                holds_several_credentials(value.as_bytes())
            } else {
                value.as_bytes().contains(&b',')
            };
        }
        carried
    }

    fn holds(&self, name: &http::HeaderName) -> bool {
        CREDENTIAL_CARRIERS
            .iter()
            .zip(self.values)
            .any(|(carrier, values)| carrier == name && values > 0)
    }

    /// The first header that may carry a credential and is repeated, or holds a
    /// comma-separated list of credentials.
    fn ambiguous(&self) -> Option<&'static http::HeaderName> {
        (0..CREDENTIAL_CARRIERS.len())
            .find(|&index| self.values[index] > 1 || self.listed[index])
            .map(|index| &CREDENTIAL_CARRIERS[index])
    }
}

/// Whether an `Authorization` value is a list of credentials (`Bearer a, Bearer b`) rather
/// than one credential with parameters (`AWS4-HMAC-SHA256 Credential=..., Signature=...`):
/// after a comma, a parameter is `name=value`, a second credential is `scheme token`.
fn holds_several_credentials(value: &[u8]) -> bool {
    value.split(|&byte| byte == b',').skip(1).any(|element| {
        let element = element.trim_ascii();
        let equals = element.iter().position(|&byte| byte == b'=');
        let space = element.iter().position(|&byte| byte == b' ');
        match (equals, space) {
            (Some(equals), Some(space)) => space < equals,
            (Some(_), None) => false,
            (None, _) => true,
        }
    })
}

/// Where a run's request ids start: the start time in ms, times 1,000. Ids stay unique
/// across restarts (so dumps of an earlier run are never overwritten) unless a run served
/// more than 1,000 requests per millisecond since it started.
fn first_request_id(now_ms: u64) -> u64 {
    now_ms.saturating_mul(1000)
}

/// Shared by every request.
pub struct AppState {
    bridge: ArcSwap<Bridge>,
    metrics: Metrics,
    journal: Journal,
    /// Shares key marks with other processes, when a store is configured.
    health: Option<HealthRecorder>,
    clock: Arc<dyn Clock>,
    next_request_id: AtomicU64,
    reload: ConfigLoader,
    workers: usize,
    balancer: Balancer,
    /// Open connections per client address.
    addresses: AddressCap,
    /// Connections to close when the server is full or heads hold too much memory.
    shedding: Shedding,
    /// Whether the listener is on a loopback address (see [`guard`]).
    loopback: bool,
    /// Cancelled when the server starts to stop: endless answers (the page's events) end.
    stopping: tokio_util::sync::CancellationToken,
    /// Pages following the pool's events now.
    watchers: page::Watchers,
}

impl AppState {
    fn reload(&self) {
        self.journal.reopen();
        let reloaded = (self.reload)().and_then(|config| {
            let previous = self.bridge.load();
            keeps_every_pool(&previous, &config)?;
            Bridge::build(&config, &self.clock, None, Some(&previous), self.workers)
        });
        match reloaded {
            Ok(bridge) => {
                let summary = bridge.provider_names().join(", ");
                self.bridge.store(Arc::new(bridge));
                // Keys new to this configuration take their shared marks.
                if let Some(health) = &self.health {
                    health.resync();
                }
                tracing::info!("configuration reloaded; providers: {summary}");
            }
            Err(error) => {
                tracing::error!("reload failed, keeping the running configuration: {error:#}")
            }
        }
    }
}

/// Refuses a reload that would leave a provider that had keys with none (an empty or
/// half-written keys file): its callers' own credentials would then go upstream. Switching
/// a provider off is `enabled = false`.
fn keeps_every_pool(previous: &Bridge, config: &Config) -> anyhow::Result<()> {
    for (name, upstream) in &previous.upstreams {
        let Some(next) = config.providers.get(name) else {
            continue;
        };
        if !upstream.pool.is_empty() && next.keys.is_empty() && next.enabled {
            anyhow::bail!(
                "provider \"{name}\" would be left without keys (set enabled = false to switch it off)"
            );
        }
    }
    Ok(())
}

/// Serves until SIGINT or SIGTERM, then lets in-flight requests finish: read shared health,
/// build the bridge, print the banner, start the workers, then run the control thread.
pub fn run(config: Config, options: ServerOptions) -> anyhow::Result<()> {
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Before anything is printed: a script that signals as soon as the banner shows must
    // not meet the signals' default action (SIGHUP would end the process).
    let signals = {
        let _runtime = control.enter();
        Signals::watch()?
    };
    let ServerOptions {
        listener,
        workers,
        store,
        reload,
    } = options;
    let (state, reachable) = control.block_on(shared::load_at_start(store.as_ref()))?;
    let workers = workers.max(1);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let bridge = Bridge::build(&config, &clock, state.as_ref(), None, workers)?;
    let journal = Journal::open(
        config.serve.request_log.as_deref(),
        config.serve.dump_dir.as_deref(),
    )?;
    let address = listener
        .local_addr()
        .context("cannot read the bound address")?;
    print_banner(address, &bridge);
    let connection_cap = connection_cap(&config);
    let (health, recorder) = store
        .map(|store| HealthRecorder::new(store, reachable))
        .unzip();
    let app = AppState::leak(AppState {
        bridge: ArcSwap::from_pointee(bridge),
        metrics: Metrics::new(workers + 1),
        journal,
        health,
        next_request_id: AtomicU64::new(first_request_id(clock.now_ms())),
        clock,
        reload,
        workers,
        balancer: Balancer::new(workers),
        addresses: AddressCap::new(
            config.serve.max_connections_per_ip,
            config.serve.cap_loopback_clients,
        ),
        shedding: Shedding::new(shedding::HEAD_BUDGET),
        loopback: address.ip().is_loopback(),
        stopping: tokio_util::sync::CancellationToken::new(),
        watchers: page::Watchers::default(),
    });
    let (inboxes, worker_results) = start_workers(app)?;
    control.block_on(async {
        listener
            .set_nonblocking(true)
            .context("cannot configure the listening socket")?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .context("cannot use the listening socket")?;
        let accepting = tokio::spawn(accept::hand_out_connections(
            listener,
            &app.balancer,
            &app.addresses,
            &app.shedding,
            inboxes,
            connection_cap,
        ));
        let recheck = tokio::spawn(recheck::run(app));
        if let Some(recorder) = recorder {
            tokio::spawn(recorder.run(Arc::new(shared::Pools(app))));
        }
        signals.wait_for_stop(app).await;
        app.stopping.cancel();
        recheck.abort();
        // Closes the socket, and the workers' inboxes: each then finishes what it has.
        accepting.abort();
        let _ = accepting.await;
        shut_down(app, worker_results).await
    })
}

impl AppState {
    /// One owner, the process: the state lives until exit. Leaked because nothing else
    /// fits. The tasks on the control runtime (accept, recheck, shared health) must be
    /// 'static, which rules out borrowing it from `run`'s frame with scoped threads. An
    /// `Arc` would put one count, written by every request on every worker, on a cache line
    /// the workers would take from each other.
    fn leak(state: AppState) -> &'static AppState {
        Box::leak(Box::new(state))
    }
}

/// How many client connections may be open at once, after raising the open-file limit.
fn connection_cap(config: &Config) -> usize {
    let open_files = clients::raise_open_file_limit();
    let cap = clients::connection_cap(config.serve.max_connections, open_files);
    tracing::info!(
        "serving at most {cap} client connections at once (max_connections {}, open-file \
         limit {open_files})",
        config.serve.max_connections
    );
    cap
}

/// What each worker reports when it has stopped.
type WorkerResults = std::sync::mpsc::Receiver<anyhow::Result<()>>;

/// One thread per worker, each fed connections through its inbox.
fn start_workers(
    app: &'static AppState,
) -> anyhow::Result<(
    Vec<tokio::sync::mpsc::UnboundedSender<Accepted>>,
    WorkerResults,
)> {
    let (finished, worker_results) = std::sync::mpsc::channel();
    let mut inboxes = Vec::with_capacity(app.workers);
    for worker in 0..app.workers {
        let (inbox, accepted) = tokio::sync::mpsc::unbounded_channel();
        inboxes.push(inbox);
        let finished = finished.clone();
        std::thread::Builder::new()
            .name(format!("aibridge-worker-{worker}"))
            .spawn(move || {
                let _ = finished.send(serve_worker(worker, accepted, app));
            })
            .context("cannot start a worker thread")?;
    }
    Ok((inboxes, worker_results))
}

/// Lets in-flight requests finish (up to the grace period), then writes what is left of
/// the marks and the journal.
async fn shut_down(app: &'static AppState, worker_results: WorkerResults) -> anyhow::Result<()> {
    tracing::info!(
        "shutting down; in-flight requests have {}s to finish",
        SHUTDOWN_GRACE.as_secs()
    );
    let workers = app.workers;
    let outcome = tokio::task::spawn_blocking(move || wait_for_workers(&worker_results, workers))
        .await
        .context("cannot wait for the workers")?;
    if let Some(health) = &app.health {
        // Redis out of reach must not hold the exit up for long.
        let _ = tokio::time::timeout(shared::FLUSH_LIMIT, health.flush()).await;
    }
    app.journal.flush();
    outcome
}

/// One worker: a single-threaded runtime serving the connections handed to it, until the
/// acceptor stops handing them out.
fn serve_worker(
    worker: usize,
    mut accepted: tokio::sync::mpsc::UnboundedReceiver<Accepted>,
    app: &'static AppState,
) -> anyhow::Result<()> {
    let worker = Worker { app, slot: worker };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a worker runtime")?;
    runtime.block_on(async move {
        let operator_routes = router(worker);
        let clock = Arc::new(clients::CoarseClock::new());
        tokio::spawn(keep_timer_wakeups_near(clock.clone()));
        let connections = GracefulShutdown::new();
        let builders = Arc::new(protocol::Builders::new(MAX_REQUEST_HEAD));
        // Connections still waiting for their first bytes stop when this sender drops.
        let (stop_waiting, stopping) = tokio::sync::watch::channel(());
        while let Some(Accepted {
            stream,
            open,
            address,
        }) = accepted.recv().await
        {
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!("cannot serve a connection: {error}");
                    continue;
                }
            };
            let settings = &app.bridge.load().settings;
            let limits = clients::ClientLimits {
                headers: settings.client_timeout,
                idle: settings.client_idle_timeout,
                first_byte: settings.client_first_byte_timeout,
            };
            let activity = clients::Activity::new(clock.clone(), &app.shedding);
            let operator_routes = operator_routes.clone();
            let noted = activity.clone();
            let service = hyper::service::service_fn(move |request| {
                dispatch(worker, operator_routes.clone(), request, noted.request())
            });
            let io = TokioIo::new(clients::Tracked::new(stream, activity.clone()));
            // Subscribed now, so that a shutdown while the connection waits is not missed.
            let watcher = connections.watcher();
            let (builders, mut stopping) = (builders.clone(), stopping.clone());
            let serving = tokio::spawn(async move {
                let start = tokio::select! {
                    start = protocol::start_of(io.inner().get_ref()) => start,
                    _ = stopping.changed() => None,
                };
                if let Some(start) = start {
                    let connection = builders.for_start(start).serve_connection(io, service);
                    // A client that goes away mid-request is not the server's error.
                    let _ = watcher.watch(connection).await;
                }
                drop((open, address));
            });
            let serving = serving.abort_handle();
            activity.serve_in(serving.clone());
            app.shedding.arrived(&activity);
            // A task of its own, so the connection's many wake-ups never poll its timer.
            let watched = activity.clone();
            let watchdog = tokio::spawn(async move {
                if let Some(why) = clients::past_limits(&watched, limits, &serving).await {
                    tracing::debug!("closing a client connection: {why:?}");
                    serving.abort();
                }
            });
            activity.watched_by(watchdog.abort_handle());
        }
        // Let requests in flight finish, and close idle connections.
        drop(stop_waiting);
        connections.shutdown().await;
        Ok(())
    })
}

/// Every request sets timers minutes away (response and idle timeouts). A timer due sooner
/// than the runtime's next wake-up makes tokio wake its driver with a write to an eventfd
/// and one more `epoll_wait`; with nothing else pending, that is every request. A timer
/// that is never more than 100 ms away keeps the request timers from ever being sooner.
/// Each tick also advances the worker's coarse clock (see [`clients`]).
async fn keep_timer_wakeups_near(clock: Arc<clients::CoarseClock>) {
    let mut tick = tokio::time::interval(TIMER_WAKEUP_BOUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        clock.tick();
    }
}

/// Admits the caller (see [`guard`]), then proxied requests go straight to the proxy and
/// operator routes through the router.
/// `in_flight` counts the request on its connection until the answer's body is out: it goes
/// into the answer's body (rather than a wrapping future, which would copy this one's few KB
/// per request).
async fn dispatch(
    worker: Worker,
    operator_routes: Router,
    request: http::Request<Incoming>,
    in_flight: clients::InFlight,
) -> Result<http::Response<clients::InFlightBody>, std::convert::Infallible> {
    let response = admit_and_route(worker, operator_routes, request).await;
    Ok(response.map(|body| clients::InFlightBody::new(body, in_flight)))
}

async fn admit_and_route(
    worker: Worker,
    operator_routes: Router,
    request: http::Request<Incoming>,
) -> axum::response::Response {
    let app = worker.app;
    let origin = match app
        .bridge
        .load()
        .guard
        .admit(app.loopback, request.uri(), request.headers())
    {
        Ok(origin) => origin.cloned(),
        Err(refusal) => {
            let api_error = crate::provider::ApiError::forbidden(refusal.code(), refusal.message());
            return proxy::refuse(worker, request.method(), request.uri(), &api_error);
        }
    };
    // A page of an allowed origin may read the answer; CORS headers need the request's.
    // Boxed: rare, and held across the await below by every request's future.
    let cors = origin.map(|origin| Box::new((origin, request.headers().clone())));
    let preflight = cors.is_some() && guard::is_preflight(request.method(), request.headers());
    // One await of the route, so the request's future holds one of its futures, not two.
    let mut response = if preflight {
        let mut preflight = axum::response::Response::new(Body::empty());
        *preflight.status_mut() = http::StatusCode::NO_CONTENT;
        preflight
    } else {
        route(worker, operator_routes, request).await
    };
    if let Some(cors) = cors {
        let (origin, request_headers) = &*cors;
        guard::allow_origin(response.headers_mut(), origin, request_headers);
    }
    response
}

async fn route(
    worker: Worker,
    operator_routes: Router,
    request: http::Request<Incoming>,
) -> axum::response::Response {
    let path = request.uri().path();
    if path.starts_with("/_aibridge/") || path == "/metrics" || path == "/_aibridge" {
        let routed = operator_routes.oneshot(request.map(Body::new)).await;
        return routed.unwrap_or_else(|never| match never {});
    }
    proxy::handle(worker, request).await
}

/// The operator routes of one worker; other paths are proxied (to a provider of that name).
fn router(worker: Worker) -> Router {
    let app = worker.app;
    Router::new()
        .route(
            "/_aibridge",
            get(|| async { axum::response::Redirect::permanent("/_aibridge/") }),
        )
        .route("/_aibridge/", get(page::page))
        .route("/_aibridge/events", get(page::events))
        .route("/_aibridge/health", get(admin::health))
        .route("/_aibridge/pool", get(admin::pool))
        .route("/_aibridge/pool/reset", post(admin::reset))
        .route("/metrics", get(admin::metrics))
        .fallback(move |request: axum::extract::Request| proxy::handle(worker, request))
        .with_state(app)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_provider_credential_header_is_checked_for_lists() {
        for name in &CREDENTIAL_HEADERS {
            assert!(CREDENTIAL_CARRIERS.contains(name), "{name}");
        }
        assert!(CREDENTIAL_CARRIERS.contains(&TOKEN_HEADER));
    }

    #[test]
    fn a_list_of_credentials_is_told_from_one_with_parameters() {
        for listed in [
            "Bearer sk-own, Bearer tok",
            "Bearer a,b",
            "Bearer a, Basic dXNlcjpwdw==",
            "Bearer a,",
        ] {
            assert!(holds_several_credentials(listed.as_bytes()), "{listed}");
        }
        for single in [
            "Bearer sk-own",
            "AWS4-HMAC-SHA256 Credential=AKIA/20261202/us-east-1/bedrock/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=abc123",
            "Digest username=\"a\", realm=\"b\", nonce=\"c\"",
            "Basic dXNlcjpwdw==",
        ] {
            assert!(!holds_several_credentials(single.as_bytes()), "{single}");
        }
    }

    #[test]
    fn repeated_credential_headers_are_ambiguous() {
        use http::HeaderValue;
        let mut headers = HeaderMap::new();
        headers.append("x-api-key", HeaderValue::from_static("a"));
        assert_eq!(CarriedCredentials::of(&headers).ambiguous(), None);
        headers.append("x-api-key", HeaderValue::from_static("b"));
        assert_eq!(
            CarriedCredentials::of(&headers)
                .ambiguous()
                .map(|name| name.as_str()),
            Some("x-api-key")
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-aibridge-token", HeaderValue::from_static("t1,t2"));
        assert_eq!(
            CarriedCredentials::of(&headers)
                .ambiguous()
                .map(|name| name.as_str()),
            Some("x-aibridge-token")
        );
    }
}
