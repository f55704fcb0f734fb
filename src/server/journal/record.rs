//! The request log's line: one JSON object per request.
//!
//! The line is written field by field ([`RequestRecord::to_line`]) rather than by serde's
//! derive, which runs every field name and value through its escaper a byte at a time:
//! about 6,000 instructions a line for the bench's request against about 1,900 (callgrind,
//! see BENCHMARKS.md). The derive stays, as the reference a test holds the line to.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::failover::{Exchange, OutboundRequest, Upstream};
use crate::keypool::{AffinityOutcome, KeyState, StateKind};
use crate::provider::ApiRoute;
use crate::server::usage::RequestFacts;

/// Writes a line's time as humantime's RFC 3339 text to the millisecond. The text of the
/// second is made once a second and reused: a date takes humantime about 1,000
/// instructions to write, and every request writes one (callgrind, see BENCHMARKS.md).
#[derive(Debug)]
pub struct LineClock {
    /// The unix second last written, and its text up to the seconds (`2026-12-03T13:27:15`).
    second: Mutex<(u64, [u8; 19])>,
}

impl Default for LineClock {
    fn default() -> Self {
        Self {
            second: Mutex::new((u64::MAX, [0; 19])),
        }
    }
}

impl LineClock {
    fn write(&self, time: SystemTime, out: &mut Vec<u8>) {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs();
        out.push(b'"');
        {
            let mut cached = self.second.lock().unwrap_or_else(PoisonError::into_inner);
            if cached.0 != second {
                let whole =
                    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(second))
                        .to_string();
                // `2026-12-03T13:27:15Z`: all but the `Z`.
                let mut text = [b'0'; 19];
                let end = whole.len().saturating_sub(1).min(text.len());
                text[..end].copy_from_slice(&whole.as_bytes()[..end]);
                *cached = (second, text);
            }
            out.extend_from_slice(&cached.1);
        }
        let millis = since.subsec_millis();
        let digits = [
            b'.',
            b'0' + (millis / 100) as u8,
            b'0' + (millis / 10 % 10) as u8,
            b'0' + (millis % 10) as u8,
            b'Z',
            b'"',
        ];
        out.extend_from_slice(&digits);
    }
}

/// A member's name as written in the line, quotes and colon included: one copy per name.
macro_rules! name {
    ($name:literal) => {
        concat!("\"", $name, "\":")
    };
}

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

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Interrupted => "interrupted",
            Self::ClientDisconnected => "client_disconnected",
            Self::Error => "error",
        }
    }
}

/// One line of the request log.
#[derive(Debug, Serialize)]
pub struct RequestRecord {
    /// When the request came, written to the millisecond (RFC 3339, UTC).
    #[serde(serialize_with = "rfc3339_millis")]
    pub time: SystemTime,
    pub id: u64,
    pub provider: Arc<str>,
    #[serde(serialize_with = "method_name")]
    pub method: http::Method,
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
    pub key: Option<Arc<str>>,
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

fn rfc3339_millis<S: serde::Serializer>(
    time: &SystemTime,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_millis(*time))
}

fn method_name<S: serde::Serializer>(
    method: &http::Method,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(method.as_str())
}

#[derive(Debug, Serialize)]
pub struct AttemptRecord {
    pub key: Arc<str>,
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

impl AttemptRecord {
    fn write(&self, out: &mut Vec<u8>) {
        let mut object = Object::open(out);
        object.string(name!("key"), &self.key);
        object.optional_count(name!("status"), self.status.map(u64::from));
        object.optional_string(name!("mark"), self.mark.map(StateKind::as_str));
        if let Some(model) = &self.model {
            object.string(name!("model"), model);
        }
        if self.resent {
            object.boolean(name!("resent"), true);
        }
        object.close();
    }
}

/// A JSON object being written into a line. Names are the record's own and need no
/// escaping; values are escaped as serde_json escapes them.
struct Object<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

// Inlined, so each name's length is known where it is copied: a few moves, not a call to
// memcpy per name.
impl<'a> Object<'a> {
    #[inline(always)]
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, empty: true }
    }

    /// A member's name, written as [`name!`] made it.
    #[inline(always)]
    fn name(&mut self, name: &str) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.extend_from_slice(name.as_bytes());
    }

    #[inline(always)]
    fn string(&mut self, name: &str, value: &str) {
        self.name(name);
        write_string(self.out, value);
    }

    #[inline(always)]
    fn optional_string(&mut self, name: &str, value: Option<&str>) {
        match value {
            Some(value) => self.string(name, value),
            None => self.null(name),
        }
    }

    #[inline(always)]
    fn count(&mut self, name: &str, value: u64) {
        self.name(name);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    #[inline(always)]
    fn optional_count(&mut self, name: &str, value: Option<u64>) {
        match value {
            Some(value) => self.count(name, value),
            None => self.null(name),
        }
    }

    /// A float as serde_json writes one (shortest form that reads back the same).
    #[inline(always)]
    fn millis(&mut self, name: &str, value: Option<f64>) {
        self.name(name);
        // Writing into a Vec cannot fail; a NaN is written as null.
        let _ = serde_json::to_writer(&mut *self.out, &value);
    }

    #[inline(always)]
    fn boolean(&mut self, name: &str, value: bool) {
        self.name(name);
        let text: &[u8] = if value { b"true" } else { b"false" };
        self.out.extend_from_slice(text);
    }

    #[inline(always)]
    fn null(&mut self, name: &str) {
        self.name(name);
        self.out.extend_from_slice(b"null");
    }

    #[inline(always)]
    fn close(self) {
        self.out.push(b'}');
    }
}

/// A JSON string. Record values are plain text nearly always (caller text has had its
/// control characters escaped already), so they are copied as they are; one that holds a
/// quote, a backslash or a control character goes through serde_json's escaper.
fn write_string(out: &mut Vec<u8>, value: &str) {
    // No early exit: the whole-string test compiles to a vector loop.
    let plain = value.bytes().fold(true, |plain, byte| {
        plain & (byte >= 0x20) & (byte != b'"') & (byte != b'\\')
    });
    if plain {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(out, value);
    }
}

impl RequestRecord {
    pub fn new(
        id: u64,
        upstream: &Upstream,
        request: &OutboundRequest,
        route: ApiRoute,
        exchange: &Exchange,
    ) -> Box<Self> {
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
            upstream.name.clone(),
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

    /// The record as one line of JSON (without its newline), byte for byte what
    /// `serde_json::to_vec` makes of it. `clock` writes its time.
    pub fn to_line(&self, clock: &LineClock) -> Vec<u8> {
        let mut line = Vec::with_capacity(512);
        let mut object = Object::open(&mut line);
        object.name(name!("time"));
        clock.write(self.time, object.out);
        object.count(name!("id"), self.id);
        object.string(name!("provider"), &self.provider);
        object.string(name!("method"), self.method.as_str());
        object.string(name!("path"), &self.path);
        object.string(name!("route"), self.route);
        object.optional_string(name!("model"), self.model.as_deref());
        object.boolean(name!("stream"), self.stream);
        object.count(name!("status"), u64::from(self.status));
        object.string(name!("outcome"), self.outcome.as_str());
        if let Some(error) = &self.error {
            object.string(name!("error"), error);
        }
        object.name(name!("attempts"));
        object.out.push(b'[');
        for (index, attempt) in self.attempts.iter().enumerate() {
            if index > 0 {
                object.out.push(b',');
            }
            attempt.write(object.out);
        }
        object.out.push(b']');
        object.optional_string(name!("key"), self.key.as_deref());
        object.optional_count(name!("input_tokens"), self.input_tokens);
        object.optional_count(name!("output_tokens"), self.output_tokens);
        object.optional_count(name!("cache_read_tokens"), self.cache_read_tokens);
        object.optional_count(name!("cache_write_tokens"), self.cache_write_tokens);
        object.millis(name!("latency_ms"), Some(self.latency_ms));
        object.millis(name!("ttfb_ms"), self.ttfb_ms);
        object.count(name!("waited_ms"), self.waited_ms);
        if let Some(affinity) = self.affinity {
            object.string(name!("affinity"), affinity);
        }
        object.close();
        line
    }

    /// A request with no attempt (yet): refused by the bridge, or abandoned by its client.
    pub fn unanswered(
        id: u64,
        provider: Arc<str>,
        method: &http::Method,
        path: &str,
        route: ApiRoute,
    ) -> Box<Self> {
        // Built in place: a record is a few hundred bytes, moved with every answer otherwise.
        Box::new(Self {
            time: SystemTime::now(),
            id,
            provider,
            method: method.clone(),
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(key: &str) -> AttemptRecord {
        AttemptRecord {
            key: key.into(),
            status: Some(429),
            mark: Some(StateKind::Cooling),
            model: Some("claude-sonnet-4-5".to_owned()),
            resent: false,
        }
    }

    /// The time of the second, made once and reused, reads as humantime writes it, in the
    /// same second and across seconds, in either order.
    #[test]
    fn the_clock_writes_what_humantime_writes() {
        let clock = LineClock::default();
        let base = UNIX_EPOCH + Duration::from_millis(1_796_304_430_000);
        for offset_ms in [
            0,
            7,
            999,
            1_000,
            1_001,
            59_999,
            86_400_123,
            500,
            31_536_000_045,
        ] {
            let time = base + Duration::from_millis(offset_ms);
            let mut out = Vec::new();
            clock.write(time, &mut out);
            let expected = format!("\"{}\"", humantime::format_rfc3339_millis(time));
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }

    /// The hand-written line is byte for byte what serde's derive writes.
    #[test]
    fn the_line_is_what_serde_writes() {
        let plain = RequestRecord::unanswered(
            7,
            "anthropic".into(),
            &http::Method::POST,
            "/v1/messages",
            ApiRoute::Messages,
        );
        let mut full = RequestRecord::unanswered(
            u64::MAX,
            "open\"ai".into(),
            &http::Method::from_bytes(b"PATCH").unwrap(),
            "/v1/x?q=\"a\\b\"&\u{1b}[2J\n",
            ApiRoute::Other,
        );
        full.model = Some("m\\u{1b}\"é".to_owned());
        full.stream = true;
        full.status = 200;
        full.outcome = Outcome::ClientDisconnected;
        full.error = Some("upstream said \"no\"\r".to_owned());
        full.attempts = vec![
            attempt("sk-ant-...0001"),
            AttemptRecord {
                key: "sk-ant-...0002".into(),
                status: None,
                mark: None,
                model: None,
                resent: true,
            },
        ];
        full.key = Some("sk-ant-...0002".into());
        full.input_tokens = Some(12);
        full.output_tokens = Some(0);
        full.cache_read_tokens = Some(u64::MAX);
        full.latency_ms = 1234.5678;
        full.ttfb_ms = Some(0.1);
        full.waited_ms = 2000;
        full.affinity = Some("kept");
        let mut whole =
            RequestRecord::unanswered(1, "a".into(), &http::Method::GET, "/", ApiRoute::Other);
        whole.latency_ms = 3.0;
        whole.attempts = vec![attempt("k")];
        let clock = LineClock::default();
        for record in [plain, full, whole] {
            let line = String::from_utf8(record.to_line(&clock)).unwrap();
            assert_eq!(line, serde_json::to_string(&record).unwrap());
        }
    }
}
