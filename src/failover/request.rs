//! The request the walker sends: read in full once, replayed as is on every attempt.

use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderMap, Method};

use crate::keypool::SessionId;
use crate::transport;

/// A request, read in full once and replayed as is on every attempt.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    pub method: Method,
    /// Path and query, appended to the provider's base URL.
    pub path_and_query: String,
    /// As forwarded: without hop-by-hop headers (see [`transport::strip_hop_by_hop`]).
    pub(super) headers: HeaderMap,
    pub body: Bytes,
    /// The body's top-level `"model"`, read the first time a walk needs it.
    model: OnceLock<Option<Box<str>>>,
    /// The session the request belongs to, worked out the first time affinity asks.
    session: OnceLock<Option<SessionId>>,
}

impl OutboundRequest {
    pub fn new(
        method: Method,
        path_and_query: String,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Self {
        // Once here rather than on every attempt.
        transport::strip_hop_by_hop(&mut headers, u64::try_from(body.len()).ok());
        Self {
            method,
            path_and_query,
            headers,
            body,
            model: OnceLock::new(),
            session: OnceLock::new(),
        }
    }

    /// For a provider that names the model in the path (Bedrock's `/model/{id}/...`): the
    /// model is read from there, not from the body.
    pub fn with_model_in_path(self) -> Self {
        let model = crate::provider::bedrock::model_of_path(&self.path_and_query);
        // Fresh: nothing has read the body's model yet.
        let _ = self.model.set(model);
        self
    }

    /// The session the request belongs to, hashed: `x-aibridge-session`, Claude Code's
    /// `x-claude-code-session-id`, the Anthropic body's `metadata.user_id`, or the OpenAI
    /// body's `prompt_cache_key`, then `user`. The body is parsed only when it names one.
    pub fn session(&self) -> Option<SessionId> {
        *self.session.get_or_init(|| {
            SESSION_HEADERS
                .iter()
                .find_map(|name| self.headers.get(name)?.to_str().ok())
                .filter(|id| !id.is_empty())
                .map(SessionId::of)
                .or_else(|| session_in_body(&self.body))
        })
    }

    /// Whether the request asks for a one-hour prompt cache (`"ttl": "1h"` in a
    /// `cache_control`), so its session's assignment should last as long.
    pub fn wants_long_cache(&self) -> bool {
        memchr::memmem::find(&self.body, b"\"1h\"").is_some()
            && memchr::memmem::find(&self.body, b"\"ttl\"").is_some()
    }

    /// The model, when something already read it (a mark, a model's cooldown, the path):
    /// never parses the body.
    pub fn known_model(&self) -> Option<&str> {
        self.model.get()?.as_deref()
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The model the request is for: its JSON body's top-level `"model"` string (Messages,
    /// Chat Completions, Responses, Embeddings, count_tokens, any JSON POST). Parsed at most
    /// once, and only when a mark or a model's cooldown makes it matter.
    pub fn model(&self) -> Option<&str> {
        self.model.get_or_init(|| model_of(&self.body)).as_deref()
    }
}

pub(super) fn model_of(body: &[u8]) -> Option<Box<str>> {
    #[derive(serde::Deserialize)]
    struct Model<'a> {
        #[serde(borrow)]
        model: Option<std::borrow::Cow<'a, str>>,
    }
    let first = body.iter().find(|byte| !byte.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    let model = serde_json::from_slice::<Model>(body).ok()?.model?;
    // The name a model's health goes by, in reports and logs: a caller's text, so bounded
    // and escaped (the upstream still gets the body as sent).
    (!model.is_empty()).then(|| crate::text::shown(&model).into())
}

/// The headers that name a session, first found first used.
const SESSION_HEADERS: [http::HeaderName; 2] = [
    http::HeaderName::from_static("x-aibridge-session"),
    http::HeaderName::from_static("x-claude-code-session-id"),
];

/// A session id in a JSON body: Anthropic's `metadata.user_id`, else OpenAI's
/// `prompt_cache_key`, else `user`. A body that names none of them is not parsed (a
/// Messages body's `"role":"user"` is a value, not a `"user":` field).
fn session_in_body(body: &[u8]) -> Option<SessionId> {
    use std::borrow::Cow;
    #[derive(serde::Deserialize)]
    struct Metadata<'a> {
        #[serde(borrow)]
        user_id: Option<Cow<'a, str>>,
    }
    #[derive(serde::Deserialize)]
    struct Ids<'a> {
        #[serde(borrow)]
        metadata: Option<Metadata<'a>>,
        #[serde(borrow)]
        prompt_cache_key: Option<Cow<'a, str>>,
        #[serde(borrow)]
        user: Option<Cow<'a, str>>,
    }
    let named = memchr::memmem::find(body, b"\"user_id\"").is_some()
        || memchr::memmem::find(body, b"\"prompt_cache_key\"").is_some()
        || names_user_field(body);
    if !named {
        return None;
    }
    let ids: Ids = serde_json::from_slice(body).ok()?;
    let id = ids
        .metadata
        .and_then(|metadata| metadata.user_id)
        .or(ids.prompt_cache_key)
        .or(ids.user)?;
    (!id.is_empty()).then(|| SessionId::of(&id))
}

/// Whether `"user"` appears as a field name: followed, after any spaces, by `:`.
fn names_user_field(body: &[u8]) -> bool {
    memchr::memmem::find_iter(body, b"\"user\"").any(|at| {
        body[at + 6..]
            .iter()
            .find(|byte| !byte.is_ascii_whitespace())
            .is_some_and(|byte| *byte == b':')
    })
}
