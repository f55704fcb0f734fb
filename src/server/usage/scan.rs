//! Reads JSON in place, a byte at a time: one `usage` object of an answer, and the
//! top-level `model` and `stream` of a request for the request log.
//!
//! Every answer the bridge relays is searched for its usage, so this is on the request path.
//! serde_json's derive read the bench's two-field object in about 950 instructions (keys are
//! decoded, and each one is matched as a field); this reader takes about 400 (callgrind, see
//! BENCHMARKS.md). Answers keep their usage flat: counts, `null`s, and `*_details` objects of
//! counts. Anything else is stepped over without being decoded.
//!
//! With the request log on, every request body is read for its model and stream flag.
//! serde_json's derive decodes every string of the body on the way (about 4,700
//! instructions for the bench's 1 KiB request); stepping over them with `memchr` takes
//! about 1,070.

use super::UsageFields;

/// A request's top-level `model` (its contents as written, between the quotes) and
/// `stream` flag.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct RawFacts<'a> {
    pub model: Option<&'a [u8]>,
    pub stream: bool,
    /// A top-level name or the model holds an escape, which only a decoder reads right.
    pub escaped: bool,
}

/// The facts of `body` where serde's derive of [`super::RequestFacts`] would find them, or
/// `None` where it would refuse the body: not one object (and nothing but whitespace after
/// it), a `model` that is neither a string nor `null`, a `stream` that is not a boolean, or
/// either given twice. Values are stepped over, not checked, so a body that is not quite
/// JSON may still yield its facts; valid JSON always yields what serde finds.
pub(super) fn request_facts(body: &[u8]) -> Option<RawFacts<'_>> {
    let mut facts = RawFacts::default();
    let (mut saw_model, mut saw_stream) = (false, false);
    let mut cursor = Cursor { rest: body };
    cursor.object(|cursor, name| {
        facts.escaped |= name.contains(&b'\\');
        match name {
            b"model" if !saw_model => {
                saw_model = true;
                facts.model = cursor.string_or_null()?;
                facts.escaped |= facts.model.is_some_and(|model| model.contains(&b'\\'));
                Some(())
            }
            b"stream" if !saw_stream => {
                saw_stream = true;
                cursor.peek()?;
                facts.stream = match cursor.scalar_rest()? {
                    b"true" => true,
                    b"false" => false,
                    _ => return None,
                };
                Some(())
            }
            b"model" | b"stream" => None,
            _ => cursor.skip_value(),
        }
    })?;
    cursor.rest.trim_ascii().is_empty().then_some(facts)
}

/// The counts of the object that `object` starts with, or `None` when it is not a
/// well-formed object.
pub(super) fn usage_fields(object: &[u8]) -> Option<UsageFields> {
    let mut fields = UsageFields::default();
    let mut cursor = Cursor { rest: object };
    cursor.object(|cursor, name| {
        let count = match name {
            b"input_tokens" => &mut fields.input_tokens,
            b"output_tokens" => &mut fields.output_tokens,
            b"cache_read_input_tokens" => &mut fields.cache_read_input_tokens,
            b"cache_creation_input_tokens" => &mut fields.cache_creation_input_tokens,
            b"prompt_tokens" => &mut fields.prompt_tokens,
            b"completion_tokens" => &mut fields.completion_tokens,
            b"inputTokens" => &mut fields.input_camel,
            b"outputTokens" => &mut fields.output_camel,
            b"cacheReadInputTokens" => &mut fields.cache_read_camel,
            b"cacheWriteInputTokens" => &mut fields.cache_write_camel,
            b"prompt_tokens_details" => {
                fields.prompt_tokens_details = cursor.details()?;
                return Some(());
            }
            b"input_tokens_details" => {
                fields.input_tokens_details = cursor.details()?;
                return Some(());
            }
            _ => return cursor.skip_value(),
        };
        *count = cursor.count()?;
        Some(())
    })?;
    Some(fields)
}

struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// The next byte that is not whitespace, left in place.
    fn peek(&mut self) -> Option<u8> {
        self.rest = self.rest.trim_ascii_start();
        self.rest.first().copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.rest = &self.rest[1..])
    }

    /// An object's members, each handed to `member` with its name (as written, escapes
    /// and all: no count's name has one) to read its value.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            self.eat(b'"')?;
            let name = self.string_rest()?;
            self.eat(b':')?;
            member(self, name)?;
            match self.peek()? {
                b',' => self.rest = &self.rest[1..],
                b'}' => {
                    self.rest = &self.rest[1..];
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string's contents after its opening quote, up to (and past) its closing one.
    fn string_rest(&mut self) -> Option<&'a [u8]> {
        let mut at = 0;
        loop {
            at += memchr::memchr2(b'"', b'\\', &self.rest[at..])?;
            if self.rest[at] == b'"' {
                let contents = &self.rest[..at];
                self.rest = &self.rest[at + 1..];
                return Some(contents);
            }
            at += 2;
            if at > self.rest.len() {
                return None;
            }
        }
    }

    /// A string's contents, or nothing for `null`; any other value is refused.
    fn string_or_null(&mut self) -> Option<Option<&'a [u8]>> {
        match self.peek()? {
            b'"' => {
                self.rest = &self.rest[1..];
                self.string_rest().map(Some)
            }
            b'n' => {
                self.rest = self.rest.strip_prefix(b"null")?;
                Some(None)
            }
            _ => None,
        }
    }

    /// A count: a whole number, or `null`. Any other number is no count (`None`), as
    /// serde's `Option<u64>` would refuse it.
    fn count(&mut self) -> Option<Option<u64>> {
        match self.peek()? {
            b'0'..=b'9' => {}
            b'n' => {
                self.rest = self.rest.strip_prefix(b"null")?;
                return Some(None);
            }
            _ => {
                self.skip_value()?;
                return Some(None);
            }
        }
        let number = self.scalar_rest()?;
        if !number.iter().all(u8::is_ascii_digit) {
            return Some(None);
        }
        Some(number.iter().try_fold(0u64, |total, digit| {
            total.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
        }))
    }

    /// A `*_tokens_details` object's `cached_tokens`, or nothing when the value is `null`.
    fn details(&mut self) -> Option<Option<super::CachedTokens>> {
        if self.peek()? != b'{' {
            self.skip_value()?;
            return Some(None);
        }
        let mut cached = super::CachedTokens::default();
        self.object(|cursor, name| match name {
            b"cached_tokens" => {
                cached.cached_tokens = cursor.count()?;
                Some(())
            }
            _ => cursor.skip_value(),
        })?;
        Some(Some(cached))
    }

    /// A number or literal (`true`, `1.5e3`): the run of bytes such tokens are made of.
    fn scalar_rest(&mut self) -> Option<&'a [u8]> {
        let end = self
            .rest
            .iter()
            .position(|byte| !(byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'+' | b'.')))
            .unwrap_or(self.rest.len());
        if end == 0 {
            return None;
        }
        let (scalar, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(scalar)
    }

    /// Any value, stepped over: strings are skipped whole, so a brace inside one is not
    /// counted.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.rest = &self.rest[1..];
                self.string_rest().map(drop)
            }
            b'{' | b'[' => self.skip_nested(),
            _ => self.scalar_rest().map(drop),
        }
    }

    fn skip_nested(&mut self) -> Option<()> {
        let mut depth = 0usize;
        while let Some((&byte, rest)) = self.rest.split_first() {
            self.rest = rest;
            match byte {
                b'"' => {
                    self.string_rest()?;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        return Some(());
                    }
                }
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn by_serde(object: &str) -> Option<UsageFields> {
        let mut reader = serde_json::Deserializer::from_str(object);
        UsageFields::deserialize(&mut reader).ok()
    }

    #[test]
    fn reads_what_serde_reads() {
        for object in [
            r#"{"input_tokens":10,"output_tokens":20}"#,
            r#"{ "input_tokens" : 12 , "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens":900, "cache_creation": {"ephemeral_5m_input_tokens": 0,
                 "ephemeral_1h_input_tokens": 0}, "output_tokens": 5, "service_tier": "standard",
                 "server_tool_use": {"web_search_requests": 1}} trailing"#,
            r#"{"prompt_tokens":1000,"completion_tokens":7,"total_tokens":1007,
                 "prompt_tokens_details":{"cached_tokens":768,"audio_tokens":null},
                 "completion_tokens_details":{"reasoning_tokens":0,"accepted_prediction_tokens":0}}"#,
            r#"{"input_tokens":500,"input_tokens_details":{"cached_tokens":100},"output_tokens":3,
                 "output_tokens_details":{"reasoning_tokens":2},"total_tokens":503}"#,
            r#"{"inputTokens":3,"outputTokens":4,"totalTokens":7,"cacheReadInputTokens":1,
                 "cacheWriteInputTokens":2}"#,
            r#"{"input_tokens":null,"output_tokens":4,"prompt_tokens_details":null}"#,
            r#"{"note":"a \"quoted\" } brace ] and \\","list":[{"a":"}"},[1,2]],"output_tokens":9}"#,
            r#"{}"#,
            r#"{"output_tokens":18446744073709551615}"#,
        ] {
            let scanned = usage_fields(object.as_bytes());
            assert!(scanned.is_some(), "{object}");
            assert_eq!(
                format!("{scanned:?}"),
                format!("{:?}", by_serde(object)),
                "{object}"
            );
        }
    }

    #[test]
    fn odd_counts_are_no_counts() {
        for object in [
            r#"{"output_tokens":1.5}"#,
            r#"{"output_tokens":-3}"#,
            r#"{"output_tokens":1e3}"#,
            r#"{"output_tokens":18446744073709551616}"#,
            r#"{"output_tokens":"1,2"}"#,
            r#"{"output_tokens":{"n":1}}"#,
        ] {
            let fields = usage_fields(object.as_bytes());
            assert_eq!(fields.and_then(|f| f.output_tokens), None, "{object}");
        }
    }

    #[test]
    fn broken_objects_are_refused() {
        for object in [
            "",
            "{",
            r#"{"input_tokens":1"#,
            r#"{"input_tokens" 1}"#,
            r#"{"input_tokens":1;"output_tokens":2}"#,
            r#"{"a":"unterminated}"#,
            r#"{"a":{"b":1}"#,
            r#"{"a":}"#,
            r#"{"a":"\"#,
            "[1,2]",
        ] {
            assert!(usage_fields(object.as_bytes()).is_none(), "{object:?}");
        }
    }
}
