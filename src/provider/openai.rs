//! OpenAI's Chat Completions and Responses APIs: bearer auth and `{"error":{...}}` errors.

use bytes::Bytes;
use serde_json::{Value, json};

use super::{ApiError, ApiRoute, Auth, ErrorShape, ProviderSpec, QuotaSignal, sse_event};

pub const OPENAI: ProviderSpec = ProviderSpec {
    default_base_url: "https://api.openai.com",
    default_send_path: "/v1/chat/completions",
    probe_path: "/v1/models",
    byok_only: false,
    auth: Auth::Bearer,
    errors: ErrorShape::OpenAi,
    routes: &[
        ("/v1/chat/completions", ApiRoute::ChatCompletions),
        ("/v1/responses", ApiRoute::Responses),
    ],
    quota_signals: &QUOTA_SIGNALS,
};

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

/// Responses streams end with an `error` event; Chat Completions streams carry the error in
/// a data line and still end with `[DONE]`, which is what clients wait for.
pub(super) fn stream_error_event(route: ApiRoute, message: &str) -> Bytes {
    if route == ApiRoute::Responses {
        let data = json!({"type": "error", "code": "stream_interrupted", "message": message});
        return sse_event(Some("error"), &data).into();
    }
    let data =
        json!({"error": {"message": message, "type": "api_error", "code": "stream_interrupted"}});
    format!("{}data: [DONE]\n\n", sse_event(None, &data)).into()
}

/// The OpenAI error shape, which Copilot shares.
pub(super) fn error_body(error: &ApiError) -> Value {
    json!({"error": {
        "message": error.message(),
        "type": error.error_type(),
        "code": error.code(),
        "param": null,
    }})
}
