//! OpenAI's Chat Completions and Responses APIs: bearer auth and `{"error":{...}}` errors.

use http::HeaderMap;
use serde_json::{Value, json};

use super::{ErrorSpec, ProviderApi, set_bearer};
use crate::secret::ApiKey;

pub struct OpenAi;

impl ProviderApi for OpenAi {
    fn default_base_url(&self) -> &'static str {
        "https://api.openai.com"
    }

    fn default_send_path(&self) -> &'static str {
        "/v1/chat/completions"
    }

    fn probe_path(&self) -> &'static str {
        "/v1/models"
    }

    fn apply_key(&self, headers: &mut HeaderMap, key: &ApiKey) {
        set_bearer(headers, key);
    }

    fn error_body(&self, error: &ErrorSpec) -> Value {
        openai_error(error)
    }
}

/// The OpenAI error shape, which Copilot shares.
pub(super) fn openai_error(error: &ErrorSpec) -> Value {
    json!({"error": {
        "message": error.message,
        "type": error.error_type,
        "code": error.code,
        "param": null,
    }})
}
