//! The proxy route: `/{provider}/{rest}` to `{base_url}/{rest}` through the failover walker.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};

use super::journal::{Outcome, RequestRecord, dump_failed_attempts, dump_request};
use super::relay::{Completion, Framing, Relay};
use super::{AppState, Bridge, Worker};
use crate::failover::{
    Attempt, Credentials, Exchange, FailoverError, OutboundRequest, Upstream, WalkObserver,
};
use crate::health::{HealthChange, SharedStatus};
use crate::provider::{ApiError, ApiRoute, ProviderKind, ProviderSpec};
use crate::transport::{self, CollectError, Response as UpstreamResponse};

mod refused;

pub use refused::refuse;
use refused::{Abandoned, Refused, UNKNOWN_PROVIDER, request_id};

/// One proxied request, top to bottom: find its provider (or refuse it at once), admit the
/// caller and read the body, walk the pool, record what the walk learned, then answer.
pub async fn handle<B>(worker: Worker, request: http::Request<B>) -> Response
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let started = Instant::now();
    // A guard, not a clone: no reference count shared between the workers is touched.
    let bridge = worker.app.bridge.load();
    let (mut parts, body) = request.into_parts();
    let mut target = match Target::find(worker, &bridge, &mut parts, started) {
        Ok(target) => target,
        Err(refusal) => return *refusal,
    };
    let (headers, body, credentials) = match admit(&bridge, target.upstream, &mut parts, body).await
    {
        Ok(admitted) => admitted,
        Err(api_error) => return target.refuse(&parts.method, &api_error),
    };
    // Taken, not cloned: the request owns its path from here on.
    let path_and_query = std::mem::take(&mut target.path_and_query);
    let mut request = OutboundRequest::new(parts.method, path_and_query, headers, body);
    if target.api.model_in_path() {
        request = request.with_model_in_path();
    }
    let exchange = walk(worker, &bridge, &target, &request, &credentials).await;
    let (id, completion) = record(worker, &target, &request, &credentials, &exchange);
    answer(
        &bridge,
        &target,
        &request,
        &credentials,
        exchange,
        id,
        completion,
    )
    .await
}

/// Where a request goes: its provider, that provider's API and route, and the path to
/// forward.
struct Target<'a> {
    worker: Worker,
    upstream: &'a Upstream,
    api: &'static ProviderSpec,
    route: ApiRoute,
    path_and_query: String,
    started: Instant,
}

impl<'a> Target<'a> {
    /// The provider the path names, or the answer that refuses the request: an unknown
    /// provider, a dot segment, or a look at the provider's root (answered by the bridge).
    /// The answer is boxed: it is the rare way out, and would double the common one's size.
    fn find(
        worker: Worker,
        bridge: &'a Bridge,
        parts: &mut http::request::Parts,
        started: Instant,
    ) -> Result<Self, Box<Response>> {
        // Taken, not cloned: the forwarded request is built from the path alone.
        let uri = std::mem::take(&mut parts.uri);
        let (name, rest) = split_provider(uri.path());
        let path_and_query = match uri.query() {
            Some(query) => format!("{rest}?{query}"),
            None => rest.to_owned(),
        };
        let Some(upstream) = bridge.upstreams.get(name) else {
            // Only a caller the bridge would serve learns which providers it has.
            let known = if bridge.authorize(&mut parts.headers.clone()).is_ok() {
                bridge.provider_names()
            } else {
                Vec::new()
            };
            let api_error = ApiError::unknown_provider(name, &known);
            let refused = Refused::new(worker, UNKNOWN_PROVIDER, &parts.method, &path_and_query);
            let api = ProviderKind::OpenAi.api();
            return Err(Box::new(refused.answer(
                api,
                ApiRoute::Other,
                &api_error,
                started,
            )));
        };
        let api = upstream.kind.api();
        let target = Self {
            worker,
            upstream,
            api,
            route: api.route(&parts.method, rest),
            path_and_query,
            started,
        };
        if is_provider_root(rest) && matches!(parts.method, Method::GET | Method::HEAD) {
            let refused = Refused::new(
                worker,
                &upstream.name,
                &parts.method,
                &target.path_and_query,
            );
            return Err(Box::new(refused.reachable(started)));
        }
        if is_unsafe_path(rest, api.model_in_path()) {
            let api_error = ApiError::bad_request(
                "the path may not contain \".\" or \"..\" segments (encoded or not), \
                 backslashes or encoded slashes"
                    .to_owned(),
            );
            return Err(Box::new(target.refuse(&parts.method, &api_error)));
        }
        Ok(target)
    }

    /// The bridge's own answer to a request it will not forward.
    fn refuse(&self, method: &Method, api_error: &ApiError) -> Response {
        let refused = Refused::new(
            self.worker,
            &self.upstream.name,
            method,
            &self.path_and_query,
        );
        refused.answer(self.api, self.route, api_error, self.started)
    }
}

/// Walks the pool for `request`; a client that leaves meanwhile is still counted.
async fn walk(
    worker: Worker,
    bridge: &Bridge,
    target: &Target<'_>,
    request: &OutboundRequest,
    credentials: &Credentials,
) -> Exchange {
    let upstream = target.upstream;
    let held = HoldLog {
        provider: &upstream.name,
        logged: std::sync::atomic::AtomicBool::new(false),
    };
    let mut abandoned = Abandoned {
        worker,
        provider: &upstream.name,
        route: target.route,
        started: target.started,
        request: Some(request),
    };
    let exchange = bridge
        .walker(worker.slot)
        .send(upstream, request, credentials, upstream.max_wait, &held)
        .await;
    abandoned.request = None;
    exchange
}

/// What the walk learned, recorded: the wait, the keys' marks, dumps of failed attempts,
/// and the log line. Returns the request's id and what accounts for it when it ends.
fn record(
    worker: Worker,
    target: &Target<'_>,
    request: &OutboundRequest,
    credentials: &Credentials,
    exchange: &Exchange,
) -> (u64, Completion) {
    let (app, upstream) = (worker.app, target.upstream);
    if !exchange.waited.is_zero() {
        app.metrics.waited(&upstream.name, exchange.waited);
    }
    if let Some(assigned) = exchange.affinity {
        app.metrics.affinity(&upstream.name, assigned.outcome);
        // Only a fleet (Redis) shares sessions; the state file does not keep them.
        let shared = app
            .health
            .as_ref()
            .filter(|health| assigned.announce && health.status() != SharedStatus::Local);
        if let Some(health) = shared {
            health.record(HealthChange::Assigned {
                provider: upstream.name.to_string(),
                fingerprint: upstream.pool.key(assigned.key).fingerprint().to_owned(),
                session: assigned.session.0,
                expires_ms: assigned.expires_ms,
            });
        }
    }
    let id = request_id(app);
    record_marks(app, upstream, &exchange.attempts);
    dump_failed_attempts(
        &app.journal,
        id,
        upstream,
        request,
        credentials,
        &exchange.attempts,
    );
    // The log line is only put together when there is a log to write it to.
    let record = app
        .journal
        .logging()
        .then(|| RequestRecord::new(id, upstream, request, target.route, exchange));
    let attempts = exchange.attempts.len();
    let mut completion = Completion::new(
        worker,
        upstream.name.clone(),
        target.route,
        attempts,
        target.started,
        record,
    );
    let answering_key = exchange
        .attempts
        .last()
        .filter(|_| exchange.result.is_ok() && target.route != ApiRoute::Other)
        .and_then(|attempt| attempt.index);
    if let Some(index) = answering_key {
        let tokens = upstream.pool.key(index).tokens().clone();
        // The answer names its model; a request whose model a walk already read gives it
        // for an answer that does not. The body is not parsed for it.
        completion = completion.answered_by(tokens, request.known_model());
    }
    (id, completion)
}

/// The walk's answer relayed to the caller, or the error it ended with.
async fn answer(
    bridge: &Bridge,
    target: &Target<'_>,
    request: &OutboundRequest,
    credentials: &Credentials,
    exchange: Exchange,
    id: u64,
    mut completion: Completion,
) -> Response {
    let (app, upstream, api) = (target.worker.app, target.upstream, target.api);
    let attempts = exchange.attempts.len();
    // The key's slot (when it has caps) is held until the answer ends.
    completion.hold(exchange.permit);
    let response = match exchange.result {
        Ok(response) => response,
        Err(error) => {
            if let FailoverError::Exhausted(exhausted) = &error {
                app.metrics.exhausted(&upstream.name, exhausted.kind);
                upstream.pool.count_exhaustion();
            }
            if matches!(
                error,
                FailoverError::Unreachable(_) | FailoverError::Timeout(_)
            ) {
                tracing::warn!(provider = %upstream.name, "{error}");
            }
            let mut response = failover_error_response(api, &error);
            let headers = response.headers_mut();
            headers.insert(ATTEMPTS_HEADER, count_value(attempts));
            note_wait(headers, exchange.waited);
            completion.failed(response.status().as_u16(), &error.to_string());
            return response;
        }
    };
    let upstream_time = exchange
        .attempts
        .iter()
        .map(|attempt| attempt.elapsed)
        .sum();
    app.metrics.latency(
        target.worker.slot,
        &upstream.name,
        upstream_time,
        target.started.elapsed().saturating_sub(upstream_time),
    );
    let answering = &exchange.attempts[attempts - 1];
    if app.journal.dumping() {
        let mut dump = dump_request(upstream, request, credentials, answering);
        dump.request_id = id;
        completion.dump_answer(format!("{id:08}-attempt{attempts}.json"), dump);
    }
    let mut relayed = relay_response(
        bridge,
        api,
        target.route,
        response,
        completion,
        hint_value(upstream, answering),
    )
    .await;
    note_wait(relayed.headers_mut(), exchange.waited);
    relayed
}

/// How long the request was held for a key, on an answer that was held.
const WAITED_HEADER: HeaderName = HeaderName::from_static("x-aibridge-waited-ms");

fn note_wait(headers: &mut HeaderMap, waited: std::time::Duration) {
    if !waited.is_zero() {
        let millis = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
        headers.insert(WAITED_HEADER, HeaderValue::from(millis));
    }
}

/// Logs, once per request, that it is held for a key.
struct HoldLog<'a> {
    provider: &'a str,
    logged: std::sync::atomic::AtomicBool,
}

impl WalkObserver for HoldLog<'_> {
    fn waiting(&self, wait: std::time::Duration, model: Option<&str>) {
        if self.logged.swap(true, Ordering::Relaxed) {
            return;
        }
        let wait = humantime::format_duration(std::time::Duration::from_secs(
            crate::keypool::ceil_secs(wait),
        ));
        tracing::info!(
            provider = self.provider,
            model,
            "request held: waiting {wait} for a key"
        );
    }
}

/// Checks the access token, reads the body within the limit and picks whose key to use.
/// Takes the request's headers.
async fn admit<B>(
    bridge: &Bridge,
    upstream: &Upstream,
    parts: &mut http::request::Parts,
    body: B,
) -> Result<(HeaderMap, Bytes, Credentials), ApiError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut headers = std::mem::take(&mut parts.headers);
    bridge.authorize(&mut headers)?;
    let settings = &bridge.settings;
    let body = read_body(
        body,
        &headers,
        settings.max_body_size,
        settings.client_timeout,
    )
    .await?;
    let credentials = upstream
        .credentials_for(&headers, upstream.byok)
        .map_err(|error| failover_error_spec(&error))?;
    Ok((headers, body, credentials))
}

/// `/anthropic` and `/anthropic/` once the provider is split off.
fn is_provider_root(rest: &str) -> bool {
    rest.is_empty() || rest == "/"
}

/// Whether a path could step out of the base URL's path once some server on the way decodes
/// it: a segment that is `.` or `..` as written, or once or twice percent-decoded, or before
/// a `;` parameter (`..;`), or one that holds a backslash or an encoded slash. Every request
/// is checked, so a path without a `.`, `%`, `;` or `\` is passed at once, allocating nothing.
/// With `model_in_path` (Bedrock), the model id of `/model/{id}/...` may hold encoded
/// slashes, as an inference-profile ARN does; each piece between them is still checked.
fn is_unsafe_path(path: &str, model_in_path: bool) -> bool {
    // Paths are short: a plain scan beats a vectorised search's set-up.
    if !path
        .bytes()
        .any(|byte| matches!(byte, b'.' | b'%' | b';' | b'\\'))
    {
        return false;
    }
    let mut segments = path.split('/');
    if model_in_path && path.starts_with("/model/") {
        let model = segments.nth(2).unwrap_or_default();
        if is_unsafe_model_id(model) {
            return true;
        }
    }
    segments.any(is_unsafe_segment)
}

/// A model id may hold encoded slashes (an ARN), but no piece between them may be a dot
/// segment, however often decoded.
fn is_unsafe_model_id(model: &str) -> bool {
    let once = percent_encoding::percent_decode_str(model).decode_utf8_lossy();
    let twice = percent_encoding::percent_decode_str(&once).decode_utf8_lossy();
    [model, &once, &twice]
        .into_iter()
        .any(|form| form.contains('\\') || form.split('/').any(is_dot_segment))
}

fn is_unsafe_segment(segment: &str) -> bool {
    let once = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
    let twice = percent_encoding::percent_decode_str(&once).decode_utf8_lossy();
    [segment, &once, &twice]
        .into_iter()
        .any(|form| is_dot_segment(form) || form.contains(['/', '\\']))
}

/// `.` or `..`, also before a `;` parameter (`..;`).
fn is_dot_segment(form: &str) -> bool {
    let before_parameters = form.split(';').next().unwrap_or_default();
    matches!(before_parameters, "." | "..")
}

/// `/anthropic/v1/messages` -> (`anthropic`, `/v1/messages`).
fn split_provider(path: &str) -> (&str, &str) {
    let path = path.strip_prefix('/').unwrap_or(path);
    match path.find('/') {
        Some(slash) => (&path[..slash], &path[slash..]),
        None => (path, ""),
    }
}

/// The request body, within `limit` bytes, with no pause longer than `stall`.
async fn read_body<B>(
    body: B,
    headers: &HeaderMap,
    limit: u64,
    stall: std::time::Duration,
) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ApiError::body_too_large(limit));
    }
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    let limited = http_body_util::Limited::new(body, limit_usize);
    match transport::collect_within(limited, stall).await {
        Ok(body) => Ok(body),
        Err(CollectError::Stalled(stall)) => Err(ApiError::request_timeout(format!(
            "the request body stalled: no data for {} (client_timeout)",
            humantime::format_duration(stall)
        ))),
        Err(CollectError::Body(error)) if error.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::body_too_large(limit))
        }
        Err(CollectError::Body(error)) => Err(ApiError::bad_request(format!(
            "cannot read the request body: {error}"
        ))),
    }
}

/// Counts state changes and hands marks to shared health.
fn record_marks(app: &AppState, upstream: &Upstream, attempts: &[Attempt]) {
    for attempt in attempts.iter().filter(|attempt| attempt.mark.is_some()) {
        if attempt.changed
            && let Some(state) = attempt.mark
        {
            app.metrics.key_transition(&upstream.name, state);
        }
        if let (Some(health), Some(seen)) = (&app.health, attempt.observation(upstream)) {
            health.record(HealthChange::Observed(seen));
        }
    }
}

/// Which pool key answered, as its hint.
const KEY_HEADER: HeaderName = HeaderName::from_static("x-aibridge-key");

/// The answering key's hint as a header value: a pool key's is made once and shared.
fn hint_value(upstream: &Upstream, answering: &Attempt) -> Option<HeaderValue> {
    match answering.index {
        Some(index) => Some(upstream.pool.key(index).hint_value().clone()),
        None => HeaderValue::from_str(&answering.key_hint).ok(),
    }
}

/// How many attempts the request took.
const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-aibridge-attempts");

/// A small count without formatting it.
fn count_value(count: usize) -> HeaderValue {
    const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    DIGITS.get(count).map_or_else(
        || HeaderValue::from(count),
        |digit| HeaderValue::from_static(digit),
    )
}

/// AWS's binary event stream (Bedrock's streaming answers).
const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";

/// Answers up to this size with a known length are read whole and sent in one write, as a
/// buffering proxy does; anything larger, and every SSE stream, is relayed as it arrives.
const BUFFERED_ANSWER_LIMIT: u64 = 256 * 1024;

async fn relay_response(
    bridge: &Bridge,
    api: &'static ProviderSpec,
    route: ApiRoute,
    response: UpstreamResponse,
    completion: Completion,
    hint: Option<HeaderValue>,
) -> Response {
    let content_length = transport::content_length(&response);
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let is_sse = content_type.starts_with("text/event-stream");
    let framing = if is_sse {
        Framing::sse(api, route)
    } else if content_type.starts_with(EVENT_STREAM) {
        Framing::event_stream(api)
    } else {
        Framing::Opaque
    };
    let is_stream = !matches!(framing, Framing::Opaque);
    let mut completion = completion.with_response(status.as_u16(), &parts.headers, &framing);
    let mut headers = parts.headers;
    // A stream is relayed event by event; anything else with the length it declared.
    transport::strip_hop_by_hop(&mut headers, content_length.filter(|_| !is_stream));
    if let Some(value) = hint {
        headers.insert(KEY_HEADER, value);
    }
    headers.insert(ATTEMPTS_HEADER, count_value(completion.attempts()));
    let idle_timeout = bridge.settings.stream_idle_timeout;

    let small = !is_stream && content_length.is_some_and(|length| length <= BUFFERED_ANSWER_LIMIT);
    if small {
        let body = match tokio::time::timeout(idle_timeout, transport::read_body(body)).await {
            Ok(Ok(body)) => body,
            Ok(Err(error)) => {
                return broken_answer(api, completion, &transport::error_chain(&*error));
            }
            Err(_) => {
                let idle = humantime::format_duration(idle_timeout);
                return broken_answer(
                    api,
                    completion,
                    &format!("no data from upstream for {idle}"),
                );
            }
        };
        completion.saw_whole(&body);
        completion.finish(Outcome::Completed);
        return reply(status, headers, Body::from(body));
    }

    let relay = Relay::new(body, idle_timeout, framing, completion);
    reply(status, headers, relay.into_body())
}

/// An answer whose body broke before any of it was sent: the caller gets a clean 502.
fn broken_answer(api: &ProviderSpec, mut completion: Completion, reason: &str) -> Response {
    let message = format!("upstream answer interrupted: {reason}");
    tracing::warn!("{message}");
    let mut response = error_response(api, &ApiError::unreachable(message.clone()));
    response
        .headers_mut()
        .insert(ATTEMPTS_HEADER, count_value(completion.attempts()));
    completion.failed(response.status().as_u16(), &message);
    response
}

fn reply(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut reply = Response::new(body);
    *reply.status_mut() = status;
    *reply.headers_mut() = headers;
    reply
}

/// Tells the official SDKs (and Claude Code) whether to retry an answer the bridge made.
const SHOULD_RETRY_HEADER: HeaderName = HeaderName::from_static("x-should-retry");

/// The bridge's own error, in the provider's shape, with `x-should-retry` where a retry
/// could not help (or is what to do), and no attempt made unless the caller says otherwise.
pub fn error_response(api: &ProviderSpec, api_error: &ApiError) -> Response {
    let status = StatusCode::from_u16(api_error.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (status, axum::Json(api.error_body(api_error))).into_response();
    let headers = response.headers_mut();
    if let Some((name, value)) = api.error_type_header(api_error) {
        headers.insert(name, value);
    }
    if let Some(retry) = api_error.should_retry() {
        let value = if retry { "true" } else { "false" };
        headers.insert(SHOULD_RETRY_HEADER, HeaderValue::from_static(value));
    }
    headers.insert(ATTEMPTS_HEADER, count_value(0));
    response
}

/// The bridge's own error for a failed exchange.
fn failover_error_spec(error: &FailoverError) -> ApiError {
    match error {
        FailoverError::ProviderDisabled { provider } => ApiError::provider_disabled(provider),
        FailoverError::NoKeys { .. } => ApiError::no_keys(error.to_string()),
        FailoverError::Unreachable(_) => ApiError::unreachable(error.to_string()),
        FailoverError::Timeout(_) => ApiError::timeout(error.to_string()),
        FailoverError::Exhausted(exhausted) => ApiError::exhausted(exhausted),
    }
}

fn failover_error_response(api: &ProviderSpec, error: &FailoverError) -> Response {
    let mut response = error_response(api, &failover_error_spec(error));
    if let FailoverError::Exhausted(exhausted) = error
        && exhausted.kind == crate::keypool::ExhaustionKind::RateLimited
    {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(exhausted.retry_after_secs()),
        );
    }
    response
}

#[cfg(test)]
mod tests;
