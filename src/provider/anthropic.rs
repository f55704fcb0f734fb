//! Anthropic's Messages API: `x-api-key` auth and `{"type":"error","error":{...}}` errors.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use super::{ApiError, ApiRoute, Auth, ErrorShape, ProviderSpec, QuotaSignal, sse_event};

pub const ANTHROPIC: ProviderSpec = ProviderSpec {
    default_base_url: "https://api.anthropic.com",
    default_send_path: "/v1/messages",
    probe_path: "/v1/models",
    byok_only: false,
    auth: Auth::ApiKeyHeader,
    errors: ErrorShape::Anthropic,
    routes: &[("/v1/messages", ApiRoute::Messages)],
    quota_signals: &QUOTA_SIGNALS,
};

/// The version sent when the caller names none; the API rejects requests without one.
const DEFAULT_VERSION: &str = "2023-06-01";
// Constants, so the names are checked once at compile time rather than on every request.
/// Callers of every provider may carry a key in it.
pub(super) const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");
const VERSION_HEADER: HeaderName = HeaderName::from_static("anthropic-version");

/// A key whose account has no credit left answers 400, which is otherwise the caller's
/// fault; only its message tells them apart.
const QUOTA_SIGNALS: [QuotaSignal; 1] = [QuotaSignal {
    status: 400,
    error_type: Some("invalid_request_error"),
    code: None,
    message_contains: Some("credit balance is too low"),
}];

/// The key's value in `x-api-key`, in place of any the caller sent, and the API version
/// when the caller named none.
pub(super) fn apply_key_value(headers: &mut HeaderMap, value: HeaderValue) {
    headers.insert(API_KEY_HEADER, value);
    headers
        .entry(VERSION_HEADER)
        .or_insert(HeaderValue::from_static(DEFAULT_VERSION));
}

pub(super) fn error_body(error: &ApiError) -> Value {
    json!({"type": "error", "error": {"type": error.error_type(), "message": error.message()}})
}

pub(super) fn stream_error_event(message: &str) -> Bytes {
    let data = json!({"type": "error", "error": {"type": "api_error", "message": message}});
    sse_event(Some("error"), &data).into()
}
