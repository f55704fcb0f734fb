//! Anthropic's Messages API: `x-api-key` auth and `{"type":"error","error":{...}}` errors.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::{Value, json};

use super::{
    ApiRoute, ErrorSpec, ProviderApi, QuotaSignal, remove_credentials, secret_value, sse_event,
};
use crate::secret::ApiKey;

/// The version sent when the caller names none; the API rejects requests without one.
const DEFAULT_VERSION: &str = "2023-06-01";
// Constants, so the names are checked once at compile time rather than on every request.
const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");
const VERSION_HEADER: HeaderName = HeaderName::from_static("anthropic-version");

/// A key whose account has no credit left answers 400, which is otherwise the caller's
/// fault; only its message tells them apart.
const QUOTA_SIGNALS: [QuotaSignal; 1] = [QuotaSignal {
    status: 400,
    error_type: Some("invalid_request_error"),
    code: None,
    message_contains: Some("credit balance is too low"),
}];

pub struct Anthropic;

impl ProviderApi for Anthropic {
    fn default_base_url(&self) -> &'static str {
        "https://api.anthropic.com"
    }

    fn default_send_path(&self) -> &'static str {
        "/v1/messages"
    }

    fn probe_path(&self) -> &'static str {
        "/v1/models"
    }

    fn apply_key(&self, headers: &mut HeaderMap, key: &ApiKey) {
        remove_credentials(headers);
        headers.insert(API_KEY_HEADER, secret_value(key.expose()));
        headers
            .entry(VERSION_HEADER)
            .or_insert(HeaderValue::from_static(DEFAULT_VERSION));
    }

    fn error_body(&self, error: &ErrorSpec) -> Value {
        json!({"type": "error", "error": {"type": error.error_type, "message": error.message}})
    }

    fn route(&self, method: &Method, path: &str) -> ApiRoute {
        ApiRoute::lookup(method, path, &[("/v1/messages", ApiRoute::Messages)])
    }

    fn stream_error_event(&self, _route: ApiRoute, message: &str) -> Bytes {
        let data = json!({"type": "error", "error": {"type": "api_error", "message": message}});
        sse_event(Some("error"), &data).into()
    }

    fn quota_signals(&self) -> &'static [QuotaSignal] {
        &QUOTA_SIGNALS
    }
}
