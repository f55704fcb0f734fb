//! The request the walker sends: read in full once, replayed as is on every attempt.

use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderMap, Method};

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
