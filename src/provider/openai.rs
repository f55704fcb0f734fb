//! OpenAI's Chat Completions and Responses APIs: bearer auth and `{"error":{...}}` errors.

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::{Value, json};

use super::{ApiRoute, ErrorSpec, ProviderApi, QuotaSignal, set_bearer, sse_event};
use crate::secret::ApiKey;

/// A 429 is a rate limit unless the account's quota is used up, which a wait does not fix.
const QUOTA_SIGNALS: [QuotaSignal; 2] = [
    QuotaSignal {
        status: 429,
        error_type: None,
        code: Some("insufficient_quota"),
        message_contains: None,
    },
    QuotaSignal {
        status: 429,
        error_type: Some("insufficient_quota"),
        code: None,
        message_contains: None,
    },
];

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

    fn route(&self, method: &Method, path: &str) -> ApiRoute {
        ApiRoute::lookup(
            method,
            path,
            &[
                ("/v1/chat/completions", ApiRoute::ChatCompletions),
                ("/v1/responses", ApiRoute::Responses),
            ],
        )
    }

    fn stream_error_event(&self, route: ApiRoute, message: &str) -> Bytes {
        openai_stream_error(route, message)
    }

    fn quota_signals(&self) -> &'static [QuotaSignal] {
        &QUOTA_SIGNALS
    }
}

/// Responses streams end with an `error` event; Chat Completions streams carry the error in
/// a data line and still end with `[DONE]`, which is what clients wait for.
pub(super) fn openai_stream_error(route: ApiRoute, message: &str) -> Bytes {
    if route == ApiRoute::Responses {
        let data = json!({"type": "error", "code": "stream_interrupted", "message": message});
        return sse_event(Some("error"), &data).into();
    }
    let data =
        json!({"error": {"message": message, "type": "api_error", "code": "stream_interrupted"}});
    format!("{}data: [DONE]\n\n", sse_event(None, &data)).into()
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
