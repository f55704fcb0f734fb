//! What the bridge reads from bridged requests and responses: the model, the stream flag,
//! and token usage, from a JSON body or from SSE events as they pass.

use std::sync::LazyLock;

use serde::Deserialize;
use serde_json::Value;

mod scan;

/// The fields of a bridged request the log records.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
pub struct RequestFacts {
    pub model: Option<String>,
    #[serde(default)]
    pub stream: bool,
}

impl RequestFacts {
    /// Reads the request body; anything that is not a JSON object yields no facts.
    pub fn read(body: &[u8]) -> Self {
        let mut facts = match scan::request_facts(body) {
            None => return Self::default(),
            Some(raw) if raw.escaped => serde_json::from_slice(body).unwrap_or_default(),
            Some(raw) => Self {
                model: match raw.model.map(std::str::from_utf8) {
                    Some(Ok(model)) => Some(model.to_owned()),
                    // serde refuses the whole body then.
                    Some(Err(_)) => return Self::default(),
                    None => None,
                },
                stream: raw.stream,
            },
        };
        // The caller's own text: bounded and escaped before it reaches the log.
        if let Some(model) = &mut facts.model {
            *model = crate::text::shown_owned(model);
        }
        facts
    }
}

/// Token counts, as far as the response told them. `input_tokens` is what the provider
/// bills at the full input rate, so `input + cache_read + cache_write` is the whole prompt
/// for every provider.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_read_tokens: Option<u64>,
    pub cache_write_tokens: Option<u64>,
}

impl Usage {
    /// Takes the counts from one JSON document: a whole response, or one SSE event's data.
    /// Anthropic puts usage in `usage` or `message.usage`; Chat Completions uses
    /// `prompt_tokens`/`completion_tokens`; Responses puts it in `response.usage`.
    fn absorb(&mut self, document: &Value) {
        let candidates = [
            document.get("usage"),
            document.pointer("/message/usage"),
            document.pointer("/response/usage"),
        ];
        for usage in candidates.into_iter().flatten() {
            if let Ok(fields) = UsageFields::deserialize(usage) {
                self.absorb_usage(&fields);
            }
        }
    }

    /// One `usage` object. Later events carry running totals, so the latest count wins.
    /// Anthropic counts cached tokens apart from `input_tokens`; OpenAI counts them inside
    /// `prompt_tokens`/`input_tokens` (and apart in `*_tokens_details.cached_tokens`), so
    /// they are taken out; Bedrock's Converse writes the names in camelCase.
    fn absorb_usage(&mut self, usage: &UsageFields) {
        let openai_cached = usage
            .prompt_tokens_details
            .or(usage.input_tokens_details)
            .and_then(|details| details.cached_tokens);
        let cache_read = usage
            .cache_read_input_tokens
            .or(usage.cache_read_camel)
            .or(openai_cached);
        if let Some(read) = cache_read {
            self.cache_read_tokens = Some(read);
        }
        if let Some(write) = usage
            .cache_creation_input_tokens
            .or(usage.cache_write_camel)
        {
            self.cache_write_tokens = Some(write);
        }
        let input = usage
            .input_tokens
            .or(usage.prompt_tokens)
            .or(usage.input_camel);
        if let Some(input) = input {
            self.input_tokens = Some(input.saturating_sub(openai_cached.unwrap_or(0)));
        }
        let output = usage
            .output_tokens
            .or(usage.completion_tokens)
            .or(usage.output_camel);
        if let Some(output) = output {
            self.output_tokens = Some(output);
        }
    }

    /// Whether the answer reported any count.
    pub fn is_known(&self) -> bool {
        *self != Self::default()
    }
}

/// The counts a `usage` object may hold, under each provider's names. A typed struct: its
/// fields are matched by name as they are read, with no map built or hashed.
#[derive(Debug, Default, Deserialize)]
struct UsageFields {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<CachedTokens>,
    input_tokens_details: Option<CachedTokens>,
    #[serde(rename = "inputTokens")]
    input_camel: Option<u64>,
    #[serde(rename = "outputTokens")]
    output_camel: Option<u64>,
    #[serde(rename = "cacheReadInputTokens")]
    cache_read_camel: Option<u64>,
    #[serde(rename = "cacheWriteInputTokens")]
    cache_write_camel: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct CachedTokens {
    cached_tokens: Option<u64>,
}

/// How much of an answer's end is searched for its usage first.
const USAGE_TAIL: usize = 512;

/// The counts of the last `"usage": {...}` object of a JSON document, read without parsing
/// the rest: usage comes after the content in every provider's answers, and content (a
/// tool's input) may hold a `usage` field of its own. A `"usage"` inside a string is written
/// `\"usage\"`, so it never matches. The object is read from where it starts and the
/// reading stops at its end (see [`scan`]); parsing the whole answer cost several thousand
/// instructions on the bench's 1 KiB answer, on every request.
fn last_usage(body: &[u8]) -> Option<UsageFields> {
    static FIELD: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));
    // Usage closes the answer, so the tail is searched from its end first: the search stops
    // within the few bytes the usage object takes. Past the tail (usage early in a long
    // answer), the forward search is vectorised; the reverse one is not.
    let tail_start = body.len().saturating_sub(USAGE_TAIL);
    let at = match last_field_in(body, tail_start, b"\"usage\"") {
        Some(at) => at,
        None => FIELD.find_iter(body).last()?,
    };
    let rest = body[at + b"\"usage\"".len()..].trim_ascii_start();
    let object = rest.strip_prefix(b":")?.trim_ascii_start();
    if !object.starts_with(b"{") {
        return None;
    }
    scan::usage_fields(object)
}

/// Where the last `field` (a quoted name) starts in `body`, looking no further back than
/// `start`: from the end, a quote at a time (memrchr). The usage object is a few dozen
/// bytes from the end, so this stops within them; memmem's reverse search (Two-Way) cost
/// about 370 instructions more on the bench's answer, and a plain byte loop about 120 more.
fn last_field_in(body: &[u8], start: usize, field: &[u8]) -> Option<usize> {
    let mut end = body.len();
    while let Some(quote) = memchr::memrchr(b'"', &body[start..end]) {
        let closing = start + quote + 1;
        if body[start..closing].ends_with(field) {
            return Some(closing - field.len());
        }
        end = start + quote;
    }
    None
}

/// The first `"model": "..."` string of a JSON answer: every provider's answer names its
/// model before its content, so the first is the answer's own. A name that is not 1 to 256
/// printable ASCII characters is skipped (no model is named otherwise), so the name is safe
/// to log as it is.
fn first_model_string(body: &[u8]) -> Option<&str> {
    static FIELD: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\"model\""));
    let at = FIELD.find(body)?;
    let rest = body[at + b"\"model\"".len()..].trim_ascii_start();
    let rest = rest
        .strip_prefix(b":")?
        .trim_ascii_start()
        .strip_prefix(b"\"")?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    let name = &rest[..end];
    let plain = rest[end] == b'"' && (1..=crate::text::SHOWN_LIMIT).contains(&end);
    if !plain
        || !name
            .iter()
            .all(|byte| byte.is_ascii_graphic() || *byte == b' ')
    {
        return None;
    }
    std::str::from_utf8(name).ok()
}

/// How an answer carries its usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapFormat {
    /// One JSON document: read once the body has ended.
    Json,
    /// Server-sent events: data lines that mention usage.
    Sse,
    /// An AWS event stream (Bedrock): the relay hands over each frame's payload.
    Events,
}

/// Watches response bytes go by and keeps the usage they report.
#[derive(Debug)]
pub struct UsageTap {
    format: TapFormat,
    /// SSE: the unfinished line; JSON: the body so far (up to a limit).
    buffer: Vec<u8>,
    overflowed: bool,
    /// JSON: the whole body was read at once, so nothing is left to read at the end.
    read: bool,
    usage: Usage,
    /// The model the answer names, which the request may not (or only deep in its body).
    model: Option<Box<str>>,
}

/// Bodies larger than this are not kept for reading usage.
const MAX_JSON_BODY: usize = 4 * 1024 * 1024;

impl UsageTap {
    pub fn new(format: TapFormat) -> Self {
        Self {
            format,
            buffer: Vec::new(),
            overflowed: false,
            read: false,
            usage: Usage::default(),
            model: None,
        }
    }

    /// A JSON answer's whole body, read in place rather than copied (the relay has it in
    /// one piece for small answers).
    pub fn whole(&mut self, body: &[u8]) {
        if self.format != TapFormat::Json || !self.buffer.is_empty() {
            return self.feed(body);
        }
        self.read_json(body);
        self.read = true;
    }

    fn read_json(&mut self, body: &[u8]) {
        if let Some(usage) = last_usage(body) {
            self.usage.absorb_usage(&usage);
        }
        if self.model.is_none() {
            self.model = first_model_string(body).map(Box::from);
        }
    }

    /// An event that mentions usage: its counts, and the model it names (Anthropic's
    /// `message_start`, OpenAI's chunks, Responses' `response`).
    fn absorb_document(&mut self, document: &Value) {
        self.usage.absorb(document);
        if self.model.is_none() {
            let named = ["/model", "/message/model", "/response/model"]
                .iter()
                .find_map(|pointer| document.pointer(pointer)?.as_str());
            self.model = named.map(|model| crate::text::shown(model).into());
        }
    }

    /// The model the answer named, if it did.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        if self.format == TapFormat::Events {
            return;
        }
        if self.format == TapFormat::Json {
            if self.buffer.len() + chunk.len() > MAX_JSON_BODY {
                self.overflowed = true;
                self.buffer = Vec::new();
            } else if !self.overflowed {
                self.buffer.extend_from_slice(chunk);
            }
            return;
        }
        let mut rest = chunk;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            if self.buffer.is_empty() {
                self.read_line(&rest[..end]);
            } else {
                self.buffer.extend_from_slice(&rest[..end]);
                let line = std::mem::take(&mut self.buffer);
                self.read_line(&line);
            }
            rest = &rest[end + 1..];
        }
        if self.buffer.len() + rest.len() <= MAX_JSON_BODY {
            self.buffer.extend_from_slice(rest);
        }
    }

    /// Only data lines that mention usage are parsed; the rest pass at memchr speed.
    fn read_line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        if memchr::memmem::find(data, b"\"usage\"").is_none() {
            return;
        }
        if let Ok(document) = serde_json::from_slice::<Value>(data) {
            self.absorb_document(&document);
        }
    }

    /// One event-stream frame's payload. Converse's `metadata` event carries `usage`;
    /// InvokeModel's chunks carry the model's own events, base64-encoded in `bytes`.
    pub fn absorb_event(&mut self, payload: &[u8]) {
        let mentions = |needle: &[u8]| memchr::memmem::find(payload, needle).is_some();
        if !mentions(b"\"usage\"") && !mentions(b"\"bytes\"") {
            return;
        }
        let Ok(document) = serde_json::from_slice::<Value>(payload) else {
            return;
        };
        match document.get("bytes").and_then(Value::as_str) {
            Some(encoded) => {
                let inner = aws_smithy_types::base64::decode(encoded).ok();
                if let Some(event) = inner.and_then(|inner| serde_json::from_slice(&inner).ok()) {
                    self.absorb_document(&event);
                }
            }
            None => self.absorb_document(&document),
        }
    }

    /// The usage seen, once the body has ended.
    pub fn finish(&mut self) -> Usage {
        if self.format == TapFormat::Json && !self.overflowed && !self.read {
            let body = std::mem::take(&mut self.buffer);
            self.read_json(&body);
        }
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap(sse: bool, chunks: &[&str]) -> Usage {
        let mut tap = UsageTap::new(if sse { TapFormat::Sse } else { TapFormat::Json });
        for chunk in chunks {
            tap.feed(chunk.as_bytes());
        }
        tap.finish()
    }

    #[test]
    fn request_facts() {
        let facts =
            RequestFacts::read(br#"{"model":"claude-sonnet-4-5","stream":true,"messages":[]}"#);
        assert_eq!(
            facts,
            RequestFacts {
                model: Some("claude-sonnet-4-5".into()),
                stream: true
            }
        );
        assert_eq!(RequestFacts::read(b"not json"), RequestFacts::default());
    }

    /// The scanner's facts are serde's on every body serde reads, escapes included.
    #[test]
    fn request_facts_are_what_serde_reads() {
        let by_serde = |body: &str| -> RequestFacts {
            let mut facts: RequestFacts = serde_json::from_str(body).unwrap_or_default();
            if let Some(model) = &mut facts.model {
                *model = crate::text::shown_owned(model);
            }
            facts
        };
        for body in [
            r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hi"}]}"#,
            r#" { "messages" : [ {"content": "a \"model\": \"fake\", {[ \\"} ], "stream" : true , "model" : "gpt-4.1" } "#,
            r#"{"model":null,"stream":false}"#,
            r#"{"stream":true}"#,
            r#"{}"#,
            r#"{"model":"m\u00e9\n\u001b[2J"}"#,
            r#"{"mod\u0065l":"escaped-name","stream":true}"#,
            r#"{"model":"gpt-4o","metadata":{"model":"inner","stream":true},"tools":[[1,2],{"a":null}]}"#,
            r#"{"model":"a","model":"b"}"#,
            r#"{"stream":true,"stream":false}"#,
            r#"{"model":7}"#,
            r#"{"model":"x","stream":"yes"}"#,
            r#"{"model":"x","stream":null}"#,
            r#"{"model":"x"} {"#,
            r#"{"model":"x""#,
            r#"{"model":"x",}"#,
            r#"["model","x"]"#,
            "",
            "null",
        ] {
            assert_eq!(
                RequestFacts::read(body.as_bytes()),
                by_serde(body),
                "{body}"
            );
        }
        let invalid_utf8 = b"{\"model\":\"\xff\"}";
        assert_eq!(RequestFacts::read(invalid_utf8), RequestFacts::default());
    }

    #[test]
    fn anthropic_blocking_usage() {
        let usage = tap(
            false,
            &[
                r#"{"id":"msg","usage":{"input_tokens":12,"#,
                r#""output_tokens":34}}"#,
            ],
        );
        assert_eq!(
            usage,
            Usage {
                input_tokens: Some(12),
                output_tokens: Some(34),
                ..Usage::default()
            }
        );
    }

    #[test]
    fn anthropic_stream_usage_split_across_chunks() {
        let usage = tap(
            true,
            &[
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\"}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usa",
                "ge\":{\"output_tokens\":15}}\n\n",
            ],
        );
        assert_eq!(
            usage,
            Usage {
                input_tokens: Some(25),
                output_tokens: Some(15),
                ..Usage::default()
            }
        );
    }

    #[test]
    fn openai_chat_and_responses_usage() {
        let chat = tap(
            false,
            &[r#"{"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}"#],
        );
        assert_eq!(
            chat,
            Usage {
                input_tokens: Some(9),
                output_tokens: Some(12),
                ..Usage::default()
            }
        );
        let chat_stream = tap(
            true,
            &[
                "data: {\"choices\":[]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n",
            ],
        );
        assert_eq!(
            chat_stream,
            Usage {
                input_tokens: Some(3),
                output_tokens: Some(4),
                ..Usage::default()
            }
        );
        let responses = tap(
            true,
            &[
                "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":6}}}\n\n",
            ],
        );
        assert_eq!(
            responses,
            Usage {
                input_tokens: Some(5),
                output_tokens: Some(6),
                ..Usage::default()
            }
        );
    }

    #[test]
    fn no_usage_is_none() {
        assert_eq!(tap(true, &["data: {\"x\":1}\n\n"]), Usage::default());
        assert_eq!(tap(false, &["<html>"]), Usage::default());
    }

    #[test]
    fn bedrock_event_payloads() {
        let mut tap = UsageTap::new(TapFormat::Events);
        tap.feed(b"binary frames are not read");
        let start =
            r#"{"type":"message_start","message":{"usage":{"input_tokens":11,"output_tokens":1}}}"#;
        let delta = r#"{"type":"message_delta","usage":{"output_tokens":7}}"#;
        for event in [start, delta] {
            let encoded = aws_smithy_types::base64::encode(event);
            tap.absorb_event(format!(r#"{{"bytes":"{encoded}"}}"#).as_bytes());
        }
        assert_eq!(
            tap.finish(),
            Usage {
                input_tokens: Some(11),
                output_tokens: Some(7),
                ..Usage::default()
            }
        );
        let mut converse = UsageTap::new(TapFormat::Events);
        converse.absorb_event(br#"{"contentBlockDelta":{"delta":{"text":"hi"}}}"#);
        converse.absorb_event(br#"{"usage":{"inputTokens":3,"outputTokens":4},"metrics":{}}"#);
        assert_eq!(converse.finish().output_tokens, Some(4));
    }

    #[test]
    fn cache_tokens_and_the_full_rate_input_of_each_provider() {
        let anthropic = tap(
            false,
            &[
                r#"{"content":[{"type":"tool_use","input":{"usage":{"input_tokens":999}}}],"usage":{"input_tokens":40,"cache_read_input_tokens":900,"cache_creation_input_tokens":60,"output_tokens":5}}"#,
            ],
        );
        assert_eq!(
            anthropic,
            Usage {
                input_tokens: Some(40),
                output_tokens: Some(5),
                cache_read_tokens: Some(900),
                cache_write_tokens: Some(60),
            },
            "the answer's own usage, not a tool input's"
        );
        let chat = tap(
            false,
            &[
                r#"{"usage":{"prompt_tokens":1000,"completion_tokens":7,"prompt_tokens_details":{"cached_tokens":768}}}"#,
            ],
        );
        assert_eq!(
            (chat.input_tokens, chat.cache_read_tokens),
            (Some(232), Some(768))
        );
        let responses = tap(
            true,
            &[
                "data: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":500,\"input_tokens_details\":{\"cached_tokens\":100},\"output_tokens\":3}}}\n\n",
            ],
        );
        assert_eq!(
            (responses.input_tokens, responses.cache_read_tokens),
            (Some(400), Some(100))
        );
        let text = tap(
            false,
            &[r#"{"text":"say \"usage\": {\"input_tokens\": 5}"}"#],
        );
        assert!(
            !text.is_known(),
            "a usage inside a string is not one: {text:?}"
        );
    }

    #[test]
    fn the_answers_model_is_taken_only_when_plainly_named() {
        fn named(body: &str) -> Option<&str> {
            first_model_string(body.as_bytes())
        }
        assert_eq!(
            named(r#"{"id":"m","model" : "claude-sonnet-4-5-20250929","content":[{"model":"x"}]}"#),
            Some("claude-sonnet-4-5-20250929")
        );
        assert_eq!(
            named(r#"{"model":"us.anthropic.claude-3-5:0/v2"}"#),
            Some("us.anthropic.claude-3-5:0/v2")
        );
        for hostile in [
            r#"{"model":"bad\nname"}"#,
            "{\"model\":\"bell\u{7}name\"}",
            r#"{"model":"modèle"}"#,
            r#"{"model":""}"#,
            r#"{"model":12}"#,
        ] {
            assert_eq!(named(hostile), None, "{hostile:?}");
        }
        assert_eq!(
            named(&format!(r#"{{"model":"{}"}}"#, "m".repeat(257))),
            None
        );
    }

    #[test]
    fn usage_early_in_a_long_answer_is_found() {
        let padding = "x".repeat(2_000);
        let body =
            format!(r#"{{"usage":{{"input_tokens":3,"output_tokens":4}},"text":"{padding}"}}"#);
        let usage = tap(false, &[&body]);
        assert_eq!(
            (usage.input_tokens, usage.output_tokens),
            (Some(3), Some(4))
        );
    }
}
