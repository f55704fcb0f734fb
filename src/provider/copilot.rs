//! GitHub Copilot's OpenAI-compatible API. Bring-your-own-key only: Copilot tokens belong to
//! one user, so pooling them is not offered.

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::Value;

use super::openai::{openai_error, openai_stream_error};
use super::{ApiRoute, ErrorSpec, ProviderApi, set_bearer};
use crate::secret::ApiKey;

pub struct Copilot;

impl ProviderApi for Copilot {
    fn default_base_url(&self) -> &'static str {
        "https://api.githubcopilot.com"
    }

    fn default_send_path(&self) -> &'static str {
        "/chat/completions"
    }

    fn probe_path(&self) -> &'static str {
        "/models"
    }

    fn byok_only(&self) -> bool {
        true
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
                ("/chat/completions", ApiRoute::ChatCompletions),
                ("/v1/chat/completions", ApiRoute::ChatCompletions),
                ("/responses", ApiRoute::Responses),
                ("/v1/responses", ApiRoute::Responses),
            ],
        )
    }

    fn stream_error_event(&self, route: ApiRoute, message: &str) -> Bytes {
        openai_stream_error(route, message)
    }
}
