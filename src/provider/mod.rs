//! The providers aibridge fronts: their URLs, how a key is presented, and how an error the
//! bridge makes up itself is shaped so clients parse it like one of the provider's own.

mod anthropic;
pub mod bedrock;
mod copilot;
mod openai;

use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::keypool::{Exhausted, ExhaustionKind};
use crate::secret::ApiKey;

pub use anthropic::ANTHROPIC;
pub use bedrock::BEDROCK;
pub use copilot::COPILOT;
pub use openai::OPENAI;

/// The API family of a configured provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Anthropic,
    #[serde(rename = "openai")]
    OpenAi,
    Copilot,
    Bedrock,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 4] =
        [Self::Anthropic, Self::OpenAi, Self::Copilot, Self::Bedrock];

    pub fn api(self) -> &'static ProviderSpec {
        match self {
            Self::Anthropic => &ANTHROPIC,
            Self::OpenAi => &OPENAI,
            Self::Copilot => &COPILOT,
            Self::Bedrock => &BEDROCK,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Anthropic => "anthropic",
            Self::OpenAi => "openai",
            Self::Copilot => "copilot",
            Self::Bedrock => "bedrock",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What differs between providers, as data: one const spec per provider. The few things
/// that truly differ in code (how a key is presented, how an error is shaped) are picked by
/// `auth` and `errors`.
#[derive(Debug)]
pub struct ProviderSpec {
    default_base_url: &'static str,
    /// The path `aibridge send` uses when none is given.
    default_send_path: &'static str,
    /// The cheapest authenticated request: a models list, which costs no tokens.
    probe_path: &'static str,
    /// Whether keys must come from the caller (no pool).
    byok_only: bool,
    auth: Auth,
    errors: ErrorShape,
    /// The bridged APIs, by `POST` path.
    routes: &'static [(&'static str, ApiRoute)],
    /// Error answers that mean the account's quota or credit is used up.
    quota_signals: &'static [QuotaSignal],
}

/// How a provider takes its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// `x-api-key: KEY` (Anthropic).
    ApiKeyHeader,
    /// `Authorization: Bearer KEY`.
    Bearer,
    /// AWS Signature Version 4 for each attempt's own credential (Bedrock), done by the
    /// walker, which knows the URL; or a Bedrock API key as a bearer token.
    AwsSigV4,
}

/// The JSON shape of a provider's errors and stream error events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorShape {
    Anthropic,
    OpenAi,
    /// `{"message": ...}` with the type in `x-amzn-ErrorType`; streams end with an
    /// event-stream exception frame.
    Bedrock,
}

impl ProviderSpec {
    pub fn default_base_url(&self) -> &'static str {
        self.default_base_url
    }

    pub fn default_send_path(&self) -> &'static str {
        self.default_send_path
    }

    pub fn probe_path(&self) -> &'static str {
        self.probe_path
    }

    pub fn byok_only(&self) -> bool {
        self.byok_only
    }

    pub fn quota_signals(&self) -> &'static [QuotaSignal] {
        self.quota_signals
    }

    /// Whether each attempt is signed for its credential (by [`bedrock::sign_attempt`])
    /// rather than given a key header.
    pub fn signs_requests(&self) -> bool {
        self.auth == Auth::AwsSigV4
    }

    /// Whether the model is named in the path (Bedrock) rather than in the JSON body.
    pub fn model_in_path(&self) -> bool {
        self.errors == ErrorShape::Bedrock
    }

    /// Replaces any caller credential with `key` in the provider's auth header. A signing
    /// provider only loses the caller's credentials and signature here.
    pub fn apply_key(&self, headers: &mut HeaderMap, key: &ApiKey) {
        self.apply_key_value(headers, self.key_value(key).as_ref());
    }

    /// What carries `key` in the provider's auth header (`KEY` or `Bearer KEY`), marked
    /// sensitive; `None` for a signing provider, whose attempts carry a signature instead.
    /// A pool key's is made once and kept (see [`crate::keypool::PooledKey::key_value`]).
    pub fn key_value(&self, key: &ApiKey) -> Option<HeaderValue> {
        match self.auth {
            Auth::ApiKeyHeader => Some(secret_value(key.expose())),
            Auth::Bearer => Some(secret_value(&format!("Bearer {}", key.expose()))),
            Auth::AwsSigV4 => None,
        }
    }

    /// [`Self::apply_key`] with the key's value made already.
    ///
    /// The key's own header is overwritten, every value of it at once, rather than removed
    /// and added again: a removal that finds the header moves the map's entries (this way
    /// costs about 260 instructions less an attempt).
    pub fn apply_key_value(&self, headers: &mut HeaderMap, value: Option<&HeaderValue>) {
        match (self.auth, value) {
            (Auth::ApiKeyHeader, Some(value)) => {
                headers.remove(header::AUTHORIZATION);
                anthropic::apply_key_value(headers, value.clone());
            }
            (Auth::Bearer, Some(value)) => {
                headers.remove(anthropic::API_KEY_HEADER);
                headers.insert(header::AUTHORIZATION, value.clone());
            }
            (Auth::AwsSigV4, _) => {
                remove_credentials(headers);
                bedrock::remove_caller_signature(headers);
            }
            (_, None) => remove_credentials(headers),
        }
    }

    /// Renders an error in the provider's JSON shape.
    pub fn error_body(&self, error: &ApiError) -> Value {
        match self.errors {
            ErrorShape::Anthropic => anthropic::error_body(error),
            ErrorShape::OpenAi => openai::error_body(error),
            ErrorShape::Bedrock => bedrock::error_body(error),
        }
    }

    /// A header that carries the error's type where the provider's clients look for it
    /// (AWS's `x-amzn-ErrorType`); `None` where the type is in the body.
    pub fn error_type_header(&self, error: &ApiError) -> Option<(HeaderName, HeaderValue)> {
        (self.errors == ErrorShape::Bedrock).then(|| {
            (
                HeaderName::from_static("x-amzn-errortype"),
                HeaderValue::from_static(bedrock::error_type_of(error)),
            )
        })
    }

    /// Which bridged API a request is for, from its method and path (without query).
    pub fn route(&self, method: &http::Method, path: &str) -> ApiRoute {
        match self.errors {
            ErrorShape::Bedrock => bedrock::route(method, path),
            _ => ApiRoute::lookup(method, path, self.routes),
        }
    }

    /// The event that ends a stream which broke off, so a cut stream never looks complete:
    /// the provider's own error event for `route` (an SSE event, or an event-stream
    /// exception frame).
    pub fn stream_error_event(&self, route: ApiRoute, message: &str) -> Bytes {
        match self.errors {
            ErrorShape::Anthropic => anthropic::stream_error_event(message),
            ErrorShape::OpenAi => openai::stream_error_event(route, message),
            ErrorShape::Bedrock => bedrock::stream_error_frame(message),
        }
    }
}

/// An error answer that says the key's account is out of quota or credit: the key is out
/// for every model until it is rechecked, and another key may well answer. Every field
/// that is set must match the answer's `error` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaSignal {
    pub status: u16,
    /// `error.type` is exactly this.
    pub error_type: Option<&'static str>,
    /// `error.code` is exactly this.
    pub code: Option<&'static str>,
    /// `error.message` contains this, ignoring case.
    pub message_contains: Option<&'static str>,
}

impl QuotaSignal {
    fn matches(&self, status: u16, error: &Value) -> bool {
        let field = |name: &str| error.get(name).and_then(Value::as_str);
        status == self.status
            && self
                .error_type
                .is_none_or(|wanted| field("type") == Some(wanted))
            && self.code.is_none_or(|wanted| field("code") == Some(wanted))
            && self.message_contains.is_none_or(|wanted| {
                field("message").is_some_and(|message| {
                    message
                        .to_ascii_lowercase()
                        .contains(&wanted.to_ascii_lowercase())
                })
            })
    }
}

/// Whether an answer with `status` may be a quota error, so its body is worth reading.
pub fn may_signal_quota(api: &ProviderSpec, status: u16) -> bool {
    api.quota_signals()
        .iter()
        .any(|signal| signal.status == status)
}

/// Whether an error answer says the key's quota or credit is used up.
pub fn is_quota_error(api: &ProviderSpec, status: u16, body: &[u8]) -> bool {
    if !may_signal_quota(api, status) {
        return false;
    }
    let Ok(document) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let Some(error) = document.get("error") else {
        return false;
    };
    api.quota_signals()
        .iter()
        .any(|signal| signal.matches(status, error))
}

/// The APIs the bridge reads (model, stream flag, token usage); everything else passes
/// through unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiRoute {
    Messages,
    ChatCompletions,
    Responses,
    /// Bedrock `InvokeModel`.
    Invoke,
    /// Bedrock `InvokeModelWithResponseStream`.
    InvokeStream,
    /// Bedrock `Converse`.
    Converse,
    /// Bedrock `ConverseStream`.
    ConverseStream,
    /// Bedrock `CountTokens`.
    CountTokens,
    Other,
}

impl ApiRoute {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Messages => "messages",
            Self::ChatCompletions => "chat_completions",
            Self::Responses => "responses",
            Self::Invoke => "invoke",
            Self::InvokeStream => "invoke_with_response_stream",
            Self::Converse => "converse",
            Self::ConverseStream => "converse_stream",
            Self::CountTokens => "count_tokens",
            Self::Other => "other",
        }
    }

    /// Finds `route` among `(path, route)` pairs for a POST; anything else is `Other`.
    fn lookup(method: &http::Method, path: &str, table: &[(&str, ApiRoute)]) -> Self {
        if method != http::Method::POST {
            return Self::Other;
        }
        let path = path.trim_end_matches('/');
        table
            .iter()
            .find(|(known, _)| *known == path)
            .map_or(Self::Other, |(_, route)| *route)
    }
}

/// One SSE event: an optional `event:` line and one `data:` line.
fn sse_event(event: Option<&str>, data: &Value) -> String {
    match event {
        Some(name) => format!("event: {name}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

/// The caller's own credential, if the request carries one (BYOK).
pub fn caller_credential(headers: &HeaderMap) -> Option<ApiKey> {
    CREDENTIAL_HEADERS
        .iter()
        .find_map(|name| credential_in(headers, name))
}

/// The token in one credential header, without a `Bearer` scheme.
pub fn credential_in(headers: &HeaderMap, name: &header::HeaderName) -> Option<ApiKey> {
    let value = headers.get(name)?.to_str().ok()?.trim();
    let token = match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ if value.eq_ignore_ascii_case("bearer") => "",
        _ => value,
    };
    (!token.is_empty()).then(|| ApiKey::new(token))
}

/// Every header a caller may carry a credential in.
pub const CREDENTIAL_HEADERS: [header::HeaderName; 2] =
    [header::AUTHORIZATION, anthropic::API_KEY_HEADER];

pub fn remove_credentials(headers: &mut HeaderMap) {
    for name in &CREDENTIAL_HEADERS {
        headers.remove(name);
    }
}

/// A header value marked sensitive, so http's own Debug output hides it too.
fn secret_value(value: &str) -> HeaderValue {
    let mut value =
        HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static("invalid-key"));
    value.set_sensitive(true);
    value
}

/// An error aibridge answers with on its own account, one variant per cause; each provider
/// renders it in its own JSON shape (see [`ProviderSpec::error_body`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// No key is left for the request: every key rate-limited (429) or disabled (502).
    Exhausted {
        kind: ExhaustionKind,
        message: String,
    },
    UnknownProvider {
        name: String,
        known: Vec<String>,
    },
    InvalidAccessToken,
    /// No pool key and no caller key.
    NoKeys(String),
    BodyTooLarge {
        limit: u64,
    },
    Unreachable(String),
    /// The client was too slow to send its request (408).
    RequestTimeout(String),
    /// The upstream was too slow to answer (504).
    Timeout(String),
    NotFound(String),
    BadRequest(String),
    /// Refused by the bridge's guard; `code` says which rule.
    Forbidden {
        code: &'static str,
        message: String,
    },
    ProviderDisabled {
        name: String,
    },
}

impl ApiError {
    pub fn exhausted(exhausted: &Exhausted) -> Self {
        Self::Exhausted {
            kind: exhausted.kind,
            message: exhausted.message(),
        }
    }

    pub fn unknown_provider(name: &str, known: &[&str]) -> Self {
        Self::UnknownProvider {
            name: name.to_owned(),
            known: known.iter().map(|known| (*known).to_owned()).collect(),
        }
    }

    pub fn invalid_access_token() -> Self {
        Self::InvalidAccessToken
    }

    pub fn no_keys(message: String) -> Self {
        Self::NoKeys(message)
    }

    pub fn body_too_large(limit: u64) -> Self {
        Self::BodyTooLarge { limit }
    }

    pub fn unreachable(message: String) -> Self {
        Self::Unreachable(message)
    }

    pub fn request_timeout(message: String) -> Self {
        Self::RequestTimeout(message)
    }

    pub fn timeout(message: String) -> Self {
        Self::Timeout(message)
    }

    pub fn not_found(message: String) -> Self {
        Self::NotFound(message)
    }

    pub fn bad_request(message: String) -> Self {
        Self::BadRequest(message)
    }

    pub fn forbidden(code: &'static str, message: String) -> Self {
        Self::Forbidden { code, message }
    }

    pub fn provider_disabled(name: &str) -> Self {
        Self::ProviderDisabled {
            name: name.to_owned(),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Self::Exhausted {
                kind: ExhaustionKind::RateLimited,
                ..
            } => 429,
            Self::Exhausted { .. } | Self::Unreachable(_) => 502,
            Self::UnknownProvider { .. } | Self::NotFound(_) => 404,
            Self::InvalidAccessToken | Self::NoKeys(_) => 401,
            Self::BodyTooLarge { .. } => 413,
            Self::RequestTimeout(_) => 408,
            Self::Timeout(_) => 504,
            Self::BadRequest(_) => 400,
            Self::Forbidden { .. } => 403,
            Self::ProviderDisabled { .. } => 503,
        }
    }

    /// Anthropic `error.type` / OpenAI `error.type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::Exhausted {
                kind: ExhaustionKind::RateLimited,
                ..
            } => "rate_limit_error",
            Self::Exhausted { .. } => "api_error",
            Self::UnknownProvider { .. } | Self::NotFound(_) => "not_found_error",
            Self::InvalidAccessToken | Self::NoKeys(_) => "authentication_error",
            Self::BodyTooLarge { .. } => "request_too_large",
            Self::Unreachable(_) => "upstream_unreachable",
            Self::RequestTimeout(_) | Self::Timeout(_) => "timeout_error",
            Self::BadRequest(_) => "invalid_request_error",
            Self::Forbidden { .. } => "permission_error",
            Self::ProviderDisabled { .. } => "provider_disabled",
        }
    }

    /// OpenAI `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Exhausted {
                kind: ExhaustionKind::RateLimited,
                ..
            } => "rate_limit_exceeded",
            Self::Exhausted { .. } => "keys_exhausted",
            Self::UnknownProvider { .. } => "unknown_provider",
            Self::InvalidAccessToken => "invalid_access_token",
            Self::NoKeys(_) => "no_api_key",
            Self::BodyTooLarge { .. } => "request_too_large",
            Self::Unreachable(_) => "upstream_unreachable",
            Self::RequestTimeout(_) => "request_timeout",
            Self::Timeout(_) => "upstream_timeout",
            Self::NotFound(_) => "not_found",
            Self::BadRequest(_) => "invalid_request",
            Self::Forbidden { code, .. } => code,
            Self::ProviderDisabled { .. } => "provider_disabled",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::Exhausted { message, .. }
            | Self::NoKeys(message)
            | Self::Unreachable(message)
            | Self::RequestTimeout(message)
            | Self::Timeout(message)
            | Self::NotFound(message)
            | Self::BadRequest(message)
            | Self::Forbidden { message, .. } => message.clone(),
            Self::UnknownProvider { name, known } if known.is_empty() => {
                format!("unknown provider \"{}\"", crate::text::shown(name))
            }
            Self::UnknownProvider { name, known } => {
                format!(
                    "unknown provider \"{}\"; configured: {}",
                    crate::text::shown(name),
                    known.join(", ")
                )
            }
            Self::InvalidAccessToken => "missing or invalid aibridge access token: send it in \
                                         x-aibridge-token or the provider's auth header"
                .to_owned(),
            Self::BodyTooLarge { limit } => {
                format!("request body is larger than max_body_size ({limit} bytes)")
            }
            Self::ProviderDisabled { name } => {
                format!("provider_disabled: AI provider \"{name}\" is disabled")
            }
        }
    }

    /// Whether a client should retry this answer: yes for a rate limit; no where nothing
    /// changes by trying again (no key works, no token, a refused request, a disabled or
    /// unknown provider); unsaid where the upstream may answer next time (502 unreachable,
    /// 504, 408).
    pub fn should_retry(&self) -> Option<bool> {
        match self {
            Self::Exhausted {
                kind: ExhaustionKind::RateLimited,
                ..
            } => Some(true),
            Self::Exhausted { .. }
            | Self::UnknownProvider { .. }
            | Self::NotFound(_)
            | Self::InvalidAccessToken
            | Self::NoKeys(_)
            | Self::BodyTooLarge { .. }
            | Self::BadRequest(_)
            | Self::Forbidden { .. }
            | Self::ProviderDisabled { .. } => Some(false),
            Self::Unreachable(_) | Self::RequestTimeout(_) | Self::Timeout(_) => None,
        }
    }
}

#[cfg(test)]
mod tests;
