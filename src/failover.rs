//! The failover walker: one buffered request, replayed byte for byte with each healthy key
//! until an answer is not the key's fault. Every subcommand sends through here.
//!
//! The HTTP client's own retries are off: this is the only retry loop, so each key failure is
//! seen, marked and reported exactly once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Uri};
use http_body_util::Full;

use crate::health::Observation;
use crate::keypool::{
    Assigned, AttemptLimit, DisableReason, Exhausted, ExhaustionKind, KeyState, Mark, MarkOutcome,
    Permit, PooledKey, SessionId, StateReason,
};
use crate::provider::bedrock::{self, AwsCredential, Plane};
use crate::provider::{is_quota_error, may_signal_quota};
use crate::secret::ApiKey;
use crate::transport::{self, HttpClient, Response, ResponseBody, Reuse};

mod request;
mod upstream;

pub use request::OutboundRequest;
pub use upstream::{Credentials, Upstream};

/// One try with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub key_hint: Arc<str>,
    /// The pool key's index; `None` for a caller's own key.
    pub index: Option<usize>,
    /// `None` for a caller's own key, which is not tracked.
    pub fingerprint: Option<Arc<str>>,
    /// `None` when no response came.
    pub status: Option<u16>,
    /// The key's state after this attempt marked it; for a cooldown of one model, that
    /// model's.
    pub mark: Option<KeyState>,
    /// The model a cooldown applies to alone; `None` when the mark is key-wide.
    pub model: Option<String>,
    /// Why `model` is out, for a mark of one model.
    pub model_reason: StateReason,
    /// Whether the mark changed the key's state (for logs and counters).
    pub changed: bool,
    /// This try got no answer before the upstream could start on the request, so the
    /// request was sent again, as the next attempt, with the same key.
    pub resent: bool,
    /// This try could not connect to the upstream.
    pub cannot_connect: bool,
    pub at_ms: u64,
    /// Time until the response headers arrived (or the attempt failed).
    pub elapsed: Duration,
    /// A failed answer the walker read and dropped, kept for request dumps.
    pub drained: Option<DrainedResponse>,
}

/// Status line, headers and body of an answer that did not reach the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainedResponse {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Attempt {
    /// Why this attempt got no answer, in words; `None` when it got one.
    pub fn no_answer(&self) -> Option<&'static str> {
        if self.status.is_some() {
            return None;
        }
        Some(match (self.cannot_connect, self.resent) {
            (true, true) => "cannot connect to the upstream; trying once more",
            (true, false) => "cannot connect to the upstream",
            (false, true) => {
                "the connection closed before the upstream could read the request; sent again"
            }
            (false, false) => "no response",
        })
    }

    /// The state file's view of this attempt (caller keys are not recorded).
    pub fn observation(&self, upstream: &Upstream) -> Option<Observation> {
        Some(Observation {
            provider: upstream.name.to_string(),
            max_cooldown: upstream.pool.max_cooldown(),
            fingerprint: self.fingerprint.as_deref()?.to_owned(),
            hint: self.key_hint.to_string(),
            status: self.status,
            mark: self.mark,
            model: self.model.clone(),
            model_reason: self.model_reason,
            at: crate::keypool::from_unix_ms(self.at_ms),
        })
    }

    /// Whether the answer of this attempt went back to the caller (a 2xx that marked its
    /// key for a spent budget did too).
    pub fn answered(&self) -> bool {
        self.status
            .is_some_and(|status| self.mark.is_none() || (200..300).contains(&status))
    }

    fn record_mark(&mut self, outcome: MarkOutcome, model: Option<&str>) {
        self.mark = Some(outcome.state);
        self.model_reason = outcome.model_reason;
        self.changed = outcome.changed;
        self.at_ms = outcome.at_ms;
        self.model = outcome
            .per_model
            .then(|| model.unwrap_or_default().to_owned());
    }
}

/// Hears of a walk as it goes: `send` prints each attempt at once and shows a spinner while
/// held; `serve` logs the hold.
pub trait WalkObserver: Sync {
    fn attempted(&self, _attempt: &Attempt) {}
    /// The request is held for `wait` until a key is back for `model`.
    fn waiting(&self, _wait: Duration, _model: Option<&str>) {}
    /// The hold is over: the key is back, or one was freed early.
    fn resumed(&self) {}
}

/// How long to hold a request before walking again, if at all: only when every key is
/// merely cooling, the walk was not cut short by `max_attempts`, and the soonest key is
/// back within what is left of the wait budget. A few ms past the deadline, so the key
/// reads as available when the request wakes.
pub fn hold_for(exhausted: &Exhausted, budget_left: Duration) -> Option<Duration> {
    let waitable = exhausted.kind == ExhaustionKind::RateLimited
        && exhausted.attempt_limit.is_none()
        && !budget_left.is_zero()
        && exhausted.retry_after <= budget_left;
    waitable.then(|| exhausted.retry_after + HOLD_MARGIN)
}

const HOLD_MARGIN: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error("provider_disabled: AI provider \"{provider}\" is disabled")]
    ProviderDisabled { provider: String },
    #[error("no API key for provider \"{provider}\": {hint}")]
    NoKeys { provider: String, hint: String },
    #[error(transparent)]
    Exhausted(Exhausted),
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    #[error("upstream sent no response within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
}

/// The walker's result: every attempt made, and the answer or why there is none.
#[derive(Debug)]
pub struct Exchange {
    pub attempts: Vec<Attempt>,
    pub result: Result<Response, FailoverError>,
    /// How long the request was held for a key.
    pub waited: Duration,
    /// For a request of a session that a pool key answered: the key it is on now, and
    /// whether it kept its key.
    pub affinity: Option<Assigned>,
    /// The answering key's slot, when it has caps: held until the answer ends.
    pub permit: Option<Permit>,
}

/// How one pass over the pool ended.
enum PassEnd {
    /// With the index of the key whose answer it is, if one answered, and its slot.
    Done(
        Result<Response, FailoverError>,
        Option<usize>,
        Option<Permit>,
    ),
    Exhausted(Exhausted),
}

/// Sends requests across a pool's keys.
#[derive(Debug, Clone)]
pub struct Walker {
    client: HttpClient,
    response_timeout: Duration,
}

impl Walker {
    /// `response_timeout` bounds the wait for response headers on each attempt.
    pub fn new(client: HttpClient, response_timeout: Duration) -> Self {
        Self {
            client,
            response_timeout,
        }
    }

    /// Sends `request` to `upstream` with `credentials`, failing over across the pool, and
    /// holding the request up to `max_wait` in total for a key that is about to come back.
    pub async fn send(
        &self,
        upstream: &Upstream,
        request: &OutboundRequest,
        credentials: &Credentials,
        max_wait: Duration,
        observer: &dyn WalkObserver,
    ) -> Exchange {
        match credentials {
            Credentials::Caller(key) => {
                let exchange = self.send_as_caller(upstream, request, key).await;
                exchange.attempts.iter().for_each(|a| observer.attempted(a));
                exchange
            }
            Credentials::Pool => {
                self.send_with_pool(upstream, request, max_wait, observer)
                    .await
            }
        }
    }

    /// One request with one key of the pool: no failover, nothing marked, never sent again.
    /// For probes.
    pub async fn send_with_key(
        &self,
        upstream: &Upstream,
        request: &OutboundRequest,
        key: &PooledKey,
    ) -> Result<Response, FailoverError> {
        self.execute(upstream, request, Some(key), Reuse::Pooled)
            .await
            .map_err(|failed| failed.error)
    }

    /// The caller's own key: one attempt (sent again only when it cannot have been read),
    /// nothing marked.
    async fn send_as_caller(
        &self,
        upstream: &Upstream,
        request: &OutboundRequest,
        key: &ApiKey,
    ) -> Exchange {
        let mut attempts = Vec::new();
        loop {
            let started = Instant::now();
            // A re-send goes on a new connection: the pooled one it failed on was stale.
            let reuse = if attempts.is_empty() {
                Reuse::Pooled
            } else {
                Reuse::Fresh
            };
            let result = self.execute(upstream, request, None, reuse).await;
            let mut attempt = Attempt {
                key_hint: key.hint().into(),
                index: None,
                fingerprint: None,
                status: result
                    .as_ref()
                    .ok()
                    .map(|response| response.status().as_u16()),
                mark: None,
                model: None,
                model_reason: StateReason::RateLimited,
                changed: false,
                resent: false,
                cannot_connect: result.as_ref().is_err_and(|failed| failed.cannot_connect),
                at_ms: upstream.pool.clock().now_ms(),
                elapsed: started.elapsed(),
                drained: None,
            };
            let result = match result {
                Err(failed) if failed.replayable && attempts.is_empty() => {
                    attempt.resent = true;
                    attempts.push(attempt);
                    continue;
                }
                other => other.map_err(|failed| failed.error),
            };
            attempts.push(attempt);
            return Exchange {
                attempts,
                result,
                waited: Duration::ZERO,
                affinity: None,
                permit: None,
            };
        }
    }

    async fn send_with_pool(
        &self,
        upstream: &Upstream,
        request: &OutboundRequest,
        max_wait: Duration,
        observer: &dyn WalkObserver,
    ) -> Exchange {
        let mut attempts = Vec::new();
        let mut waited = Duration::ZERO;
        let session = session_of(upstream, request);
        let assigned = session.and_then(|session| {
            let now = upstream.pool.clock().now_ms();
            upstream.sessions.assigned(session, now)
        });
        loop {
            let pass = self.pass(upstream, request, assigned, &mut attempts, observer);
            let exhausted = match pass.await {
                PassEnd::Done(result, answered_by, permit) => {
                    let answered_by = answered_by.filter(|_| result.is_ok());
                    let affinity = session.zip(answered_by).map(|(session, index)| {
                        settle_affinity(upstream, request, session, assigned, index)
                    });
                    return Exchange {
                        attempts,
                        result,
                        waited,
                        affinity,
                        permit,
                    };
                }
                PassEnd::Exhausted(exhausted) => exhausted,
            };
            // A hold ends in another walk: pointless with no attempt left to make.
            let attempts_left = upstream
                .max_attempts
                .is_none_or(|limit| attempts.len() < limit);
            let pause = attempts_left
                .then(|| hold_for(&exhausted, max_wait.saturating_sub(waited)))
                .flatten();
            let Some(pause) = pause else {
                return Exchange {
                    attempts,
                    result: Err(FailoverError::Exhausted(exhausted)),
                    waited,
                    affinity: None,
                    permit: None,
                };
            };
            // Boxed: rare, and its timer would otherwise grow every request's future.
            waited += Box::pin(hold(upstream, pause, exhausted.model.as_deref(), observer)).await;
        }
    }

    /// One pass over the keys available for the request's model, until an answer is not
    /// the key's fault, no key is left, or `max_attempts` is reached.
    async fn pass(
        &self,
        upstream: &Upstream,
        request: &OutboundRequest,
        preferred: Option<usize>,
        attempts: &mut Vec<Attempt>,
        observer: &dyn WalkObserver,
    ) -> PassEnd {
        let pool = &upstream.pool;
        let mut walk = pool.walk_preferring(preferred);
        // The body is parsed for its model only once a key has a model's cooldown to honor.
        let model = || request.model();
        // The soonest a key passed over for its caps may have a slot.
        let mut capped: Option<Duration> = None;
        loop {
            if upstream
                .max_attempts
                .is_some_and(|limit| attempts.len() >= limit)
            {
                return PassEnd::Exhausted(match walk.next_lazy(model) {
                    Some(_) => limit_exhaustion(upstream, attempts, request.model()),
                    None => pool.exhaustion(request.model()),
                });
            }
            let Some(index) = walk.next_lazy(model) else {
                let exhausted = pool.exhaustion(request.model());
                return PassEnd::Exhausted(match capped {
                    Some(wait) => at_caps(exhausted, wait),
                    None => exhausted,
                });
            };
            let permit = match pool.try_acquire(index) {
                Ok(permit) => permit,
                Err(wait) => {
                    // At a cap: passed over like a cooling key, and not marked.
                    capped = Some(capped.map_or(wait, |soonest| soonest.min(wait)));
                    continue;
                }
            };
            let mut may_send_again = true;
            loop {
                let (attempt, next) = self.attempt(upstream, request, index, may_send_again).await;
                observer.attempted(&attempt);
                attempts.push(attempt);
                match next {
                    Next::Answer(result) => return PassEnd::Done(result, Some(index), permit),
                    Next::FailOver => break,
                    Next::SendAgain => may_send_again = false,
                }
            }
        }
    }

    /// One try with the pool's key `index`: the attempt, and what the walk does next. With
    /// `may_send_again`, a try the upstream cannot have started on asks to be sent again.
    async fn attempt(
        &self,
        upstream: &Upstream,
        request: &OutboundRequest,
        index: usize,
        may_send_again: bool,
    ) -> (Attempt, Next) {
        let pool = &upstream.pool;
        let pooled = pool.key(index);
        let started = Instant::now();
        // A re-send goes on a new connection: the pooled one it failed on was stale.
        let reuse = if may_send_again {
            Reuse::Pooled
        } else {
            Reuse::Fresh
        };
        let result = self.execute(upstream, request, Some(pooled), reuse).await;
        let status = result
            .as_ref()
            .ok()
            .map(|response| response.status().as_u16());
        pool.record_attempt(index, status);
        let (fingerprint, hint) = pooled.labels();
        let mut attempt = Attempt {
            key_hint: hint,
            index: Some(index),
            fingerprint: Some(fingerprint),
            status,
            mark: None,
            model: None,
            model_reason: StateReason::RateLimited,
            changed: false,
            resent: false,
            cannot_connect: result.as_ref().is_err_and(|failed| failed.cannot_connect),
            at_ms: pool.clock().now_ms(),
            elapsed: started.elapsed(),
            drained: None,
        };
        let response = match result {
            Ok(response) => response,
            Err(failed) if failed.replayable && may_send_again => {
                attempt.resent = true;
                return (attempt, Next::SendAgain);
            }
            Err(failed) => return (attempt, Next::Answer(Err(failed.error))),
        };
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            // A budget this answer used up: rest the key now rather than pay for a 429 next.
            if let Some(cooldown) = pool.spent_budget_cooldown(response.headers()) {
                let model = request.model();
                let outcome = pool.mark_request(index, Mark::Cool(cooldown), model);
                attempt.record_mark(outcome, model);
                if outcome.changed {
                    log_mark(&upstream.name, &attempt, pool.clock().now_ms());
                }
            }
            return (attempt, Next::Answer(Ok(response)));
        }
        let api = upstream.kind.api();
        let worth_reading = if api.model_in_path() {
            bedrock::may_be_fault(status) && Plane::of(&request.path_and_query) == Plane::Runtime
        } else {
            pool.mark_for(status, response.headers()).is_some() || may_signal_quota(api, status)
        };
        if !worth_reading {
            return (attempt, Next::Answer(Ok(response)));
        }
        let (parts, body) = read_whole(response).await;
        let read = body.as_deref().unwrap_or_default();
        let mark = if api.model_in_path() {
            bedrock::fault(status, &parts.headers, read).map(|fault| aws_mark(pool, fault))
        } else if is_quota_error(api, status, read) {
            Some(KeyMark::Pool(Mark::Disable(DisableReason::Quota)))
        } else {
            pool.mark_for(status, &parts.headers).map(KeyMark::Pool)
        };
        let Some(mark) = mark else {
            // Read for its body, but the caller's fault after all: passed back as it came.
            let result = body
                .map(|body| Response::from_parts(parts, ResponseBody::Whole(Full::new(body))))
                .map_err(|error| {
                    FailoverError::Unreachable(format!("upstream answer interrupted: {error}"))
                });
            return (attempt, Next::Answer(result));
        };
        let model = request.model();
        let outcome = match (mark, model) {
            (KeyMark::ModelRest(reason), Some(model)) => {
                tracing::info!(
                    target: MARKS_TARGET,
                    provider = %upstream.name,
                    key = %attempt.key_hint,
                    model = %model,
                    "key out for model {model} ({})",
                    reason.as_str()
                );
                pool.rest_model(index, model, pool.max_cooldown(), reason)
            }
            (KeyMark::ModelRest(_), None) => pool.mark(index, Mark::Cool(pool.max_cooldown())),
            (KeyMark::Pool(mark), model) => pool.mark_request(index, mark, model),
        };
        attempt.record_mark(outcome, model);
        if outcome.changed {
            log_mark(&upstream.name, &attempt, pool.clock().now_ms());
        }
        attempt.drained = Some(DrainedResponse {
            headers: parts.headers,
            body: body.unwrap_or_default(),
        });
        (attempt, Next::FailOver)
    }

    /// One try, with `key` or else the caller's own credentials.
    async fn execute(
        &self,
        upstream: &Upstream,
        request: &OutboundRequest,
        key: Option<&PooledKey>,
        reuse: Reuse,
    ) -> Result<Response, Failed> {
        let cannot_send = |message: String| Failed {
            error: FailoverError::Unreachable(message),
            replayable: false,
            cannot_connect: false,
        };
        let api = upstream.kind.api();
        // Read once: a signing provider's credential names the region and signs the attempt.
        let credential = match key.filter(|_| api.signs_requests()) {
            Some(key) => Some(
                AwsCredential::parse(key.key().expose())
                    .ok_or_else(|| cannot_send("invalid Bedrock credential".to_owned()))?,
            ),
            None => None,
        };
        let region = credential
            .and_then(|credential| credential.region)
            .unwrap_or(&upstream.region);
        let destination = upstream
            .endpoints
            .for_request(region, &request.path_and_query)
            .ok_or_else(|| cannot_send(format!("no endpoint for region {region}")))?;
        let path = destination
            .path_for(&request.path_and_query)
            .map_err(|error| cannot_send(format!("invalid request path: {error}")))?;
        let mut outbound = http::Request::new(request.body.clone());
        *outbound.method_mut() = request.method.clone();
        let headers = outbound.headers_mut();
        headers.clone_from(&request.headers);
        if let Some(key) = key {
            api.apply_key_value(headers, key.key_value(|key| api.key_value(key)));
        }
        if let Some(credential) = credential {
            let url = format!("{}{path}", destination.origin.prefix());
            let host = destination
                .origin
                .host_header()
                .map_err(|error| cannot_send(error.to_string()))?;
            let now = std::time::UNIX_EPOCH + Duration::from_millis(upstream.pool.clock().now_ms());
            bedrock::sign_attempt(&mut outbound, credential, region, &url, host, now)
                .map_err(cannot_send)?;
        }
        *outbound.uri_mut() = Uri::from(path);
        match tokio::time::timeout(
            self.response_timeout,
            self.client.send_to(&destination.origin, outbound, reuse),
        )
        .await
        {
            Err(_) => Err(Failed {
                error: FailoverError::Timeout(self.response_timeout),
                replayable: false,
                cannot_connect: false,
            }),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(failure)) => Err(Failed {
                error: FailoverError::Unreachable(transport::error_chain(&*failure.error)),
                replayable: failure.replayable,
                cannot_connect: failure.cannot_connect,
            }),
        }
    }
}

/// What an answer that was the key's fault does to it.
#[derive(Debug, Clone, Copy)]
enum KeyMark {
    /// A mark by the pool's own rules (its cooldown scope).
    Pool(Mark),
    /// The key rests for the request's model alone, for `max_cooldown`, whatever the scope:
    /// the account cannot use that model (or its quota for it is spent), but may serve
    /// others.
    ModelRest(StateReason),
}

/// The mark an AWS error earns a Bedrock credential.
fn aws_mark(pool: &crate::keypool::Pool, fault: bedrock::Fault) -> KeyMark {
    match fault {
        bedrock::Fault::Throttled => {
            // Bedrock sends no Retry-After: the default cooldown.
            KeyMark::Pool(Mark::Cool(pool.cooldown_for(&HeaderMap::new())))
        }
        bedrock::Fault::NoModelAccess => KeyMark::ModelRest(StateReason::NoModelAccess),
        bedrock::Fault::Quota => KeyMark::ModelRest(StateReason::Quota),
        bedrock::Fault::Disabled(reason) => KeyMark::Pool(Mark::Disable(reason)),
    }
}

/// The exhaustion of a walk that passed over keys at their caps: rate-limited, and back when
/// the soonest slot may free (or a cooling key comes back, if sooner).
fn at_caps(mut exhausted: Exhausted, wait: Duration) -> Exhausted {
    let cooling = exhausted.kind == ExhaustionKind::RateLimited && !exhausted.retry_after.is_zero();
    exhausted.retry_after = if cooling {
        exhausted.retry_after.min(wait)
    } else {
        wait
    };
    exhausted.kind = ExhaustionKind::RateLimited;
    exhausted
}

/// The session a pooled request belongs to, when its provider keeps sessions on keys and has
/// more than one key to choose from.
fn session_of(upstream: &Upstream, request: &OutboundRequest) -> Option<SessionId> {
    upstream.affinity_ttl?;
    if upstream.pool.len() < 2 {
        return None;
    }
    request.session()
}

/// Sticks the session to the key that answered, for the assignment's lifetime from now,
/// and says whether that kept its key.
fn settle_affinity(
    upstream: &Upstream,
    request: &OutboundRequest,
    session: SessionId,
    assigned: Option<usize>,
    answered_by: usize,
) -> Assigned {
    let configured = upstream.affinity_ttl.unwrap_or(LONG_CACHE_TTL);
    let ttl = if request.wants_long_cache() {
        configured.max(LONG_CACHE_TTL)
    } else {
        configured
    };
    let now = upstream.pool.clock().now_ms();
    upstream
        .sessions
        .assign(session, answered_by, assigned, ttl, now)
}

/// How long a session that asked for a one-hour prompt cache keeps its key.
const LONG_CACHE_TTL: Duration = Duration::from_secs(3600);

/// One try that got no answer.
struct Failed {
    error: FailoverError,
    /// Whether the upstream cannot have started on the request, so it may be sent again.
    replayable: bool,
    /// No connection could be made.
    cannot_connect: bool,
}

/// What a try leaves the walk to do.
enum Next {
    /// The answer (or the error) goes to the caller.
    Answer(Result<Response, FailoverError>),
    /// The answer was the key's fault: the next key.
    FailOver,
    /// No answer, and the upstream cannot have started on the request: once more.
    SendAgain,
}

/// Reads an error answer in full, to classify it and so its connection can be reused;
/// gives up quickly.
async fn read_whole(response: Response) -> (http::response::Parts, Result<Bytes, String>) {
    let (parts, body) = response.into_parts();
    let body = match tokio::time::timeout(Duration::from_secs(2), transport::read_body(body)).await
    {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(error)) => Err(transport::error_chain(&*error)),
        Err(_) => Err("no data from upstream for 2s".to_owned()),
    };
    (parts, body)
}

/// The answer when `max_attempts` stopped a walk with keys left untried: a 429 when any
/// key tried was rate-limited, else a 502; untried keys keep their state.
fn limit_exhaustion(upstream: &Upstream, attempts: &[Attempt], model: Option<&str>) -> Exhausted {
    let rate_limited = attempts
        .iter()
        .any(|attempt| matches!(attempt.mark, Some(KeyState::Cooling { .. })));
    let mut exhausted = upstream.pool.exhaustion(model);
    exhausted.kind = if rate_limited {
        ExhaustionKind::RateLimited
    } else {
        ExhaustionKind::Unauthorized
    };
    exhausted.attempt_limit = Some(AttemptLimit {
        tried: attempts.len(),
        keys: upstream.pool.len(),
    });
    exhausted
}

/// Holds a request for `pause`, or until a key is freed early; returns how long it waited.
/// A caller that leaves drops this future, and with it the request.
async fn hold(
    upstream: &Upstream,
    pause: Duration,
    model: Option<&str>,
    observer: &dyn WalkObserver,
) -> Duration {
    struct LeftWhileHeld<'a>(Option<&'a str>);
    impl Drop for LeftWhileHeld<'_> {
        fn drop(&mut self) {
            if let Some(provider) = self.0 {
                tracing::info!(provider, "request dropped while held: the client left");
            }
        }
    }
    let started = Instant::now();
    let mut guard = LeftWhileHeld(Some(&upstream.name));
    // Observers hear of the wait the cooldown asks for, not of the safety margin.
    observer.waiting(pause.saturating_sub(HOLD_MARGIN), model);
    tokio::select! {
        () = tokio::time::sleep(pause) => {}
        () = upstream.freed.notified() => {}
    }
    guard.0 = None;
    observer.resumed();
    started.elapsed()
}

/// The log target of mark lines, so a command that reports each attempt itself (`send`)
/// can leave them out rather than say each mark twice.
pub const MARKS_TARGET: &str = "aibridge::marks";

fn log_mark(provider: &str, attempt: &Attempt, now_ms: u64) {
    let remaining = |state: KeyState| {
        humantime::format_duration(Duration::from_secs(crate::keypool::ceil_secs(
            state.remaining(now_ms),
        )))
    };
    match (attempt.mark, &attempt.model) {
        (Some(state @ KeyState::Cooling { .. }), Some(model)) => tracing::info!(
            target: MARKS_TARGET,
            provider,
            key = %attempt.key_hint,
            status = attempt.status,
            model = %model,
            "key cooling for {} for model {model}",
            remaining(state)
        ),
        (Some(state @ KeyState::Cooling { .. }), None) => tracing::info!(
            target: MARKS_TARGET,
            provider,
            key = %attempt.key_hint,
            status = attempt.status,
            "key cooling for {}",
            remaining(state)
        ),
        (Some(KeyState::Disabled(reason)), _) => tracing::info!(
            target: MARKS_TARGET,
            provider,
            key = %attempt.key_hint,
            status = attempt.status,
            "key disabled ({})",
            reason.as_str()
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests;
