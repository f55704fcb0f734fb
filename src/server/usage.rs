//! What the bridge reads from bridged requests and responses: the model, the stream flag,
//! and token usage, from a JSON body or from SSE events as they pass.

use serde::Deserialize;
use serde_json::Value;

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
        let mut facts: Self = serde_json::from_slice(body).unwrap_or_default();
        // The caller's own text: bounded and escaped before it reaches the log.
        if let Some(model) = &mut facts.model {
            *model = crate::text::shown_owned(model);
        }
        facts
    }
}

/// Token counts, as far as the response told them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
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
            let count = |names: [&str; 3]| names.iter().find_map(|name| usage.get(*name)?.as_u64());
            // Later events carry running totals, so the latest count wins. Bedrock's
            // Converse writes the names in camelCase.
            if let Some(input) = count(["input_tokens", "prompt_tokens", "inputTokens"]) {
                self.input_tokens = Some(input);
            }
            if let Some(output) = count(["output_tokens", "completion_tokens", "outputTokens"]) {
                self.output_tokens = Some(output);
            }
        }
    }
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
    usage: Usage,
}

/// Bodies larger than this are not kept for reading usage.
const MAX_JSON_BODY: usize = 4 * 1024 * 1024;

impl UsageTap {
    pub fn new(format: TapFormat) -> Self {
        Self {
            format,
            buffer: Vec::new(),
            overflowed: false,
            usage: Usage::default(),
        }
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
            self.usage.absorb(&document);
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
                    self.usage.absorb(&event);
                }
            }
            None => self.usage.absorb(&document),
        }
    }

    /// The usage seen, once the body has ended.
    pub fn finish(&mut self) -> Usage {
        if self.format == TapFormat::Json && !self.overflowed {
            if let Ok(document) = serde_json::from_slice::<Value>(&self.buffer) {
                self.usage.absorb(&document);
            }
            self.buffer = Vec::new();
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
                output_tokens: Some(34)
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
                output_tokens: Some(15)
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
                output_tokens: Some(12)
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
                output_tokens: Some(4)
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
                output_tokens: Some(6)
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
                output_tokens: Some(7)
            }
        );
        let mut converse = UsageTap::new(TapFormat::Events);
        converse.absorb_event(br#"{"contentBlockDelta":{"delta":{"text":"hi"}}}"#);
        converse.absorb_event(br#"{"usage":{"inputTokens":3,"outputTokens":4},"metrics":{}}"#);
        assert_eq!(converse.finish().output_tokens, Some(4));
    }
}
