//! Relays an upstream body to the client chunk by chunk as it arrives, and accounts for the
//! request when the body ends, breaks, or the client goes away.
//!
//! A stream that breaks after it started cannot fail over any more; an SSE stream then gets
//! the provider's own error event and a clean end, so a cut stream never looks complete.
//! Any other body is aborted, so the client sees a short read rather than a silent truncation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::HeaderMap;

use super::Worker;
use super::journal::{AttemptDump, Outcome, RequestRecord, http_message};
use super::metrics::{KeyTokens, RequestMetrics};
use super::usage::{TapFormat, UsageTap};
use crate::keypool::{Permit, TokenCounts, TokenTotals};
use crate::provider::bedrock::FrameTracker;
use crate::provider::{ApiRoute, ProviderSpec};
use crate::transport::error_chain;
use crate::transport::{self, ResponseBody};

/// The status a request the client abandoned before any answer is counted with, as nginx
/// logs it.
pub const CLIENT_CLOSED: u16 = 499;

/// How much of the answer a dump keeps.
const MAX_DUMPED_BODY: usize = 1024 * 1024;

/// Accounts for one request once: metrics, the request log and the final dump.
pub struct Completion {
    worker: Worker,
    /// Shared with the upstream: no copy per request.
    provider: Arc<str>,
    route: ApiRoute,
    status: u16,
    attempts: usize,
    started: Instant,
    /// The log line, when there is a request log.
    record: Option<Box<RequestRecord>>,
    /// Reads token usage for the log line, the key's counters and metrics.
    tap: Option<Box<UsageTap>>,
    /// The answering key's slot, when it has caps: freed when the answer ends.
    permit: Option<Permit>,
    /// The pool key that answered, and the request's model: where its usage is counted.
    answered_by: Option<(Arc<TokenTotals>, Option<Box<str>>)>,
    /// Boxed: rare, and the completion moves with the answer.
    dump: Option<Box<AnswerDump>>,
    finished: bool,
}

/// The answering attempt's dump, filled in as the answer passes.
struct AnswerDump {
    name: String,
    dump: AttemptDump,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Completion {
    pub fn new(
        worker: Worker,
        provider: Arc<str>,
        route: ApiRoute,
        attempts: usize,
        started: Instant,
        record: Option<Box<RequestRecord>>,
    ) -> Self {
        Self {
            worker,
            provider,
            route,
            status: 0,
            attempts,
            started,
            record,
            tap: None,
            answered_by: None,
            permit: None,
            dump: None,
            finished: false,
        }
    }

    /// Holds the answering key's slot until the answer ends.
    pub fn hold(&mut self, permit: Option<Permit>) {
        self.permit = permit;
    }

    /// The answer is a pool key's: its usage is added to the key's counters and to
    /// `aibridge_tokens_total` for `model`.
    pub fn answered_by(mut self, tokens: Arc<TokenTotals>, model: Option<&str>) -> Self {
        self.answered_by = Some((tokens, model.map(Box::from)));
        self
    }

    /// Dumps the answering attempt, with the answer's body, when the body has been relayed.
    pub fn dump_answer(&mut self, name: String, dump: AttemptDump) {
        self.dump = Some(Box::new(AnswerDump {
            name,
            dump,
            headers: HeaderMap::new(),
            body: Vec::new(),
        }));
    }

    pub fn attempts(&self) -> usize {
        self.attempts
    }

    /// The answer has started: its status and headers are known.
    pub fn with_response(mut self, status: u16, headers: &HeaderMap, framing: &Framing) -> Self {
        self.status = status;
        if let Some(record) = &mut self.record {
            record.stream |= !matches!(framing, Framing::Opaque);
        }
        let counted = self.record.is_some() || self.answered_by.is_some();
        if self.route != ApiRoute::Other && counted {
            // Boxed: the completion moves with every poll of the answer's body.
            self.tap = Some(Box::new(UsageTap::new(match framing {
                Framing::Opaque => TapFormat::Json,
                Framing::Sse { .. } => TapFormat::Sse,
                Framing::EventStream { .. } => TapFormat::Events,
            })));
        }
        if let Some(answer) = &mut self.dump {
            answer.headers = headers.clone();
        }
        self
    }

    /// The client left before any answer: counted with nginx's 499.
    pub fn abandoned(mut self) {
        self.status = CLIENT_CLOSED;
        self.finish(Outcome::ClientDisconnected);
    }

    /// The bridge answered with its own error.
    pub fn failed(&mut self, status: u16, error: &str) {
        self.status = status;
        if let Some(record) = &mut self.record {
            // Bridge-made messages may quote the caller (an unknown provider's name).
            record.error = Some(crate::text::shown_owned(error));
        }
        self.finish(Outcome::Error);
    }

    /// One whole frame of an event stream, for its usage.
    fn saw_event(&mut self, payload: &[u8]) {
        if let Some(tap) = &mut self.tap {
            tap.absorb_event(payload);
        }
    }

    pub fn saw(&mut self, chunk: &[u8]) {
        self.saw_part(chunk, false);
    }

    /// The answer's whole body, in one piece: its usage is read in place.
    pub fn saw_whole(&mut self, body: &[u8]) {
        self.saw_part(body, true);
    }

    fn saw_part(&mut self, chunk: &[u8], whole: bool) {
        if let Some(record) = &mut self.record
            && record.ttfb_ms.is_none()
        {
            record.ttfb_ms = Some(millis(self.started.elapsed()));
        }
        match &mut self.tap {
            Some(tap) if whole => tap.whole(chunk),
            Some(tap) => tap.feed(chunk),
            None => {}
        }
        if let Some(AnswerDump { body, .. }) = self.dump.as_deref_mut() {
            let room = MAX_DUMPED_BODY.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
    }

    fn interrupted(&mut self, message: &str) {
        if let Some(record) = &mut self.record {
            record.error = Some(message.to_owned());
        }
        self.finish(Outcome::Interrupted);
    }

    pub fn finish(&mut self, outcome: Outcome) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.permit = None;
        if let Some(answer) = self.dump.take() {
            let AnswerDump {
                name,
                mut dump,
                headers,
                body,
            } = *answer;
            dump.attempt = self.attempts;
            dump.response = http_message(Some(self.status), &headers, &body);
            self.worker.app.journal.dump(name, &dump);
        }
        let usage = self
            .tap
            .as_mut()
            .map(|tap| tap.finish())
            .unwrap_or_default();
        let tokens = self.answered_by.as_ref().filter(|_| usage.is_known()).map(
            |(totals, request_model)| {
                let counts = TokenCounts {
                    input: usage.input_tokens.unwrap_or(0),
                    output: usage.output_tokens.unwrap_or(0),
                    cache_read: usage.cache_read_tokens.unwrap_or(0),
                    cache_write: usage.cache_write_tokens.unwrap_or(0),
                };
                totals.add(counts);
                KeyTokens {
                    key: totals.fingerprint(),
                    model: self
                        .tap
                        .as_ref()
                        .and_then(|tap| tap.model())
                        .or(request_model.as_deref()),
                    counts,
                }
            },
        );
        let request = RequestMetrics {
            provider: &self.provider,
            route: self.route.as_str(),
            status: self.status,
            attempts: self.attempts,
            tokens,
        };
        self.worker.app.metrics.request(self.worker.slot, &request);
        if let Some(record) = &mut self.record {
            record.outcome = outcome;
            record.status = self.status;
            record.latency_ms = millis(self.started.elapsed());
            record.input_tokens = usage.input_tokens;
            record.output_tokens = usage.output_tokens;
            record.cache_read_tokens = usage.cache_read_tokens;
            record.cache_write_tokens = usage.cache_write_tokens;
            self.worker.app.journal.log(record);
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        // Dropped before the body ended: the client went away, and with it the upstream.
        self.finish(Outcome::ClientDisconnected);
    }
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// How a streamed answer is framed, and so how a break in it is told to the client.
pub enum Framing {
    /// Not a stream format the bridge knows: a break ends the body with an error.
    Opaque,
    /// Server-sent events; `tail` holds the last two bytes relayed, to close a half-sent
    /// event before the provider's error event.
    Sse {
        api: &'static ProviderSpec,
        route: ApiRoute,
        tail: [u8; 2],
    },
    /// An AWS event stream (Bedrock): an exception frame follows, when the break falls
    /// between frames (a half-sent frame cannot be closed, so the body ends in an error).
    EventStream {
        api: &'static ProviderSpec,
        frames: Box<FrameTracker>,
    },
}

impl Framing {
    pub fn sse(api: &'static ProviderSpec, route: ApiRoute) -> Self {
        Self::Sse {
            api,
            route,
            tail: *b"\n\n",
        }
    }

    pub fn event_stream(api: &'static ProviderSpec) -> Self {
        Self::EventStream {
            api,
            frames: Box::default(),
        }
    }

    fn saw(&mut self, chunk: &[u8], completion: &mut Completion) {
        match self {
            Self::Opaque => {}
            Self::Sse { tail, .. } => match chunk {
                [] => {}
                [only] => *tail = [tail[1], *only],
                [.., a, b] => *tail = [*a, *b],
            },
            Self::EventStream { frames, .. } => {
                frames.saw(chunk, |payload| completion.saw_event(payload));
            }
        }
    }

    /// What ends the stream after a break: the provider's error event, or none.
    fn error_event(&self, message: &str) -> Option<Bytes> {
        match self {
            Self::Opaque => None,
            Self::Sse { api, route, tail } => {
                let event = api.stream_error_event(*route, message);
                Some(if tail == b"\n\n" {
                    event
                } else {
                    // Close the half-sent event first, so the error event stands on its own.
                    [&b"\n\n"[..], &event].concat().into()
                })
            }
            Self::EventStream { api, frames } => frames
                .at_boundary()
                .then(|| api.stream_error_event(ApiRoute::Other, message)),
        }
    }
}

/// The body of a relayed answer.
pub struct Relay {
    upstream: ResponseBody,
    idle_timeout: Duration,
    framing: Framing,
    completion: Completion,
    done: bool,
}

impl Relay {
    pub fn new(
        body: ResponseBody,
        idle_timeout: Duration,
        framing: Framing,
        completion: Completion,
    ) -> Self {
        Self {
            upstream: body,
            idle_timeout,
            framing,
            completion,
            done: false,
        }
    }

    pub fn into_body(self) -> Body {
        Body::from_stream(futures_util::stream::unfold(self, Self::next_chunk))
    }

    async fn next_chunk(mut self) -> Option<(std::io::Result<Bytes>, Self)> {
        if self.done {
            return None;
        }
        match tokio::time::timeout(self.idle_timeout, transport::next_chunk(&mut self.upstream))
            .await
        {
            Ok(Some(Ok(chunk))) => {
                self.completion.saw(&chunk);
                self.framing.saw(&chunk, &mut self.completion);
                Some((Ok(chunk), self))
            }
            Ok(None) => {
                self.completion.finish(Outcome::Completed);
                None
            }
            Ok(Some(Err(error))) => self.interrupt(error_chain(&*error)),
            Err(_) => {
                let idle = humantime::format_duration(self.idle_timeout);
                self.interrupt(format!("no data from upstream for {idle}"))
            }
        }
    }

    fn interrupt(mut self, reason: String) -> Option<(std::io::Result<Bytes>, Self)> {
        self.done = true;
        let message = format!("upstream stream interrupted: {reason}");
        tracing::warn!(provider = %self.completion.provider, "{message}");
        self.completion.interrupted(&message);
        match self.framing.error_event(&message) {
            Some(event) => Some((Ok(event), self)),
            None => Some((Err(std::io::Error::other(message)), self)),
        }
    }
}
