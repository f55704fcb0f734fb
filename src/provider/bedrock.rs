//! Amazon Bedrock: a pool of AWS credentials. Each attempt is signed with SigV4 for its own
//! credential and region (AWS's `aws-sigv4` crate does the signing), errors are read by
//! their AWS error type, and the bridge's own errors and stream breaks are AWS-shaped.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder, write_message_to};
use aws_smithy_types::event_stream::{Header, HeaderValue as FrameValue, Message};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use serde_json::{Value, json};

use super::{ApiError, ApiRoute, Auth, ErrorShape, ProviderSpec, secret_value};
use crate::keypool::{DisableReason, ExhaustionKind};

pub const BEDROCK: ProviderSpec = ProviderSpec {
    default_base_url: "https://bedrock-runtime.us-east-1.amazonaws.com",
    default_send_path: "/model/{model}/invoke",
    probe_path: "/foundation-models?byOutputModality=TEXT",
    byok_only: false,
    auth: Auth::AwsSigV4,
    errors: ErrorShape::Bedrock,
    routes: &[],
    quota_signals: &[],
};

/// The region a credential without one uses, unless the provider sets `region`.
pub const DEFAULT_REGION: &str = "us-east-1";

/// The service name both Bedrock endpoints sign for.
const SIGNING_NAME: &str = "bedrock";

/// Where AWS puts an error's type: this header, else the body's `__type`.
const ERROR_TYPE_HEADER: HeaderName = HeaderName::from_static("x-amzn-errortype");

/// What callers sign with, removed before each attempt is signed again for its credential.
const CALLER_SIGNING_HEADERS: [HeaderName; 4] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-amz-date"),
    HeaderName::from_static("x-amz-security-token"),
    HeaderName::from_static("x-amz-content-sha256"),
];

/// One pooled credential, as written in `keys`, a keys file or `AIBRIDGE_BEDROCK_KEYS`:
/// `ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN][@REGION]`, or a Bedrock API key
/// `API_KEY[@REGION]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwsCredential<'a> {
    pub secret: AwsSecret<'a>,
    /// `None`: the provider's `region`.
    pub region: Option<&'a str>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum AwsSecret<'a> {
    AccessKey {
        id: &'a str,
        secret: &'a str,
        session_token: Option<&'a str>,
    },
    /// A Bedrock API key, sent as `Authorization: Bearer`.
    ApiKey(&'a str),
}

impl std::fmt::Debug for AwsSecret<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AccessKey { id, .. } => write!(f, "AccessKey({})", crate::secret::mask(id)),
            Self::ApiKey(key) => write!(f, "ApiKey({})", crate::secret::mask(key)),
        }
    }
}

/// Why a pooled key is not a Bedrock credential; names no part of it.
pub const CREDENTIAL_FORM: &str = "is not a Bedrock credential: write \
    ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN][@REGION], or API_KEY[@REGION]";

impl<'a> AwsCredential<'a> {
    pub fn parse(text: &'a str) -> Option<Self> {
        let (secret, region) = match text.rsplit_once('@') {
            Some((secret, region)) if is_region(region) => (secret, Some(region)),
            Some(_) => return None,
            None => (text, None),
        };
        let parts: Vec<&str> = secret.split(':').collect();
        let secret = match parts.as_slice() {
            [key] if !key.is_empty() => AwsSecret::ApiKey(key),
            [id, secret] | [id, secret, _] if !id.is_empty() && !secret.is_empty() => {
                AwsSecret::AccessKey {
                    id,
                    secret,
                    session_token: parts.get(2).copied().filter(|token| !token.is_empty()),
                }
            }
            _ => return None,
        };
        Some(Self { secret, region })
    }
}

/// An AWS region name as it appears in endpoints: `us-east-1`, `eu-central-2`.
pub fn is_region(text: &str) -> bool {
    (3..=32).contains(&text.len())
        && text
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// Which Bedrock endpoint a path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Plane {
    /// `bedrock-runtime`: inference (`/model/...`, `/async-invoke`, `/guardrail/...`).
    Runtime,
    /// `bedrock`: the control plane clients reach through the same base URL
    /// (`/inference-profiles`, `/foundation-models`).
    Control,
}

impl Plane {
    pub fn of(path: &str) -> Self {
        let runtime = ["/model/", "/async-invoke", "/guardrail/"]
            .iter()
            .any(|prefix| path.starts_with(prefix));
        if runtime {
            Self::Runtime
        } else {
            Self::Control
        }
    }

    /// The endpoint for `region`.
    pub fn endpoint(self, region: &str) -> String {
        match self {
            Self::Runtime => format!("https://bedrock-runtime.{region}.amazonaws.com"),
            Self::Control => format!("https://bedrock.{region}.amazonaws.com"),
        }
    }
}

/// The runtime operations the bridge recognises, by the path's last segment.
const OPERATIONS: [(&str, ApiRoute); 5] = [
    ("invoke", ApiRoute::Invoke),
    ("invoke-with-response-stream", ApiRoute::InvokeStream),
    ("converse", ApiRoute::Converse),
    ("converse-stream", ApiRoute::ConverseStream),
    ("count-tokens", ApiRoute::CountTokens),
];

/// `POST /model/{modelId}/{operation}`: the operation's route, else `Other`.
pub(super) fn route(method: &Method, path: &str) -> ApiRoute {
    if method != Method::POST {
        return ApiRoute::Other;
    }
    let Some((_, operation)) = model_segment(path) else {
        return ApiRoute::Other;
    };
    OPERATIONS
        .iter()
        .find(|(name, _)| *name == operation)
        .map_or(ApiRoute::Other, |(_, route)| *route)
}

/// The model id of a runtime path, percent-decoded (boto3 writes `:` as `%3A` and keeps
/// `%2F` encoded inside ARNs; Claude Code writes `:` raw), bounded and escaped for display.
pub fn model_of_path(path_and_query: &str) -> Option<Box<str>> {
    let path = path_and_query.split('?').next().unwrap_or_default();
    let (model, _) = model_segment(path)?;
    let decoded = percent_encoding::percent_decode_str(model).decode_utf8_lossy();
    (!decoded.is_empty()).then(|| crate::text::shown(&decoded).into())
}

/// `/model/{id}/{operation}` -> (`id` as written, `operation`).
fn model_segment(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/model/")?;
    let (model, operation) = rest.split_once('/')?;
    Some((model, operation.trim_end_matches('/')))
}

/// Drops what a caller signed with; the attempt is signed again for its own credential.
pub(super) fn remove_caller_signature(headers: &mut HeaderMap) {
    for name in &CALLER_SIGNING_HEADERS {
        headers.remove(name);
    }
}

/// Whether a caller's `Authorization` is an AWS signature, which cannot be forwarded: it
/// was made for the bridge's host, not AWS's.
pub fn is_caller_signature(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("AWS4-"))
}

/// Signs one attempt for `credential` in `region`: SigV4 over the exact method, URL, headers
/// and body sent, or a bearer API key. The caller's credentials and signature are already
/// gone ([`ProviderSpec::apply_key`]). `url` is the absolute URL the request goes to; `host`
/// is the `Host` header the transport sends, set here so the signature covers it.
pub fn sign_attempt(
    request: &mut http::Request<Bytes>,
    credential: AwsCredential<'_>,
    region: &str,
    url: &str,
    host: HeaderValue,
    now: SystemTime,
) -> Result<(), String> {
    let headers = request.headers_mut();
    let (id, secret, session_token) = match credential.secret {
        AwsSecret::ApiKey(token) => {
            headers.insert(
                header::AUTHORIZATION,
                secret_value(&format!("Bearer {token}")),
            );
            return Ok(());
        }
        AwsSecret::AccessKey {
            id,
            secret,
            session_token,
        } => (id, secret, session_token),
    };
    headers.insert(header::HOST, host);
    let identity = Credentials::new(
        id,
        secret,
        session_token.map(str::to_owned),
        None,
        "aibridge",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGNING_NAME)
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|error| format!("cannot sign: {error}"))?
        .into();
    let mut pairs = Vec::with_capacity(request.headers().len());
    for (name, value) in request.headers() {
        let value = value
            .to_str()
            .map_err(|_| format!("cannot sign: header {name} is not text"))?;
        pairs.push((name.as_str(), value));
    }
    let signable = SignableRequest::new(
        request.method().as_str(),
        url,
        pairs.into_iter(),
        SignableBody::Bytes(request.body()),
    )
    .map_err(|error| format!("cannot sign: {error}"))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|error| format!("cannot sign: {error}"))?
        .into_parts();
    let (signed, _query) = instructions.into_parts();
    let signed: Vec<(HeaderName, HeaderValue)> = signed
        .into_iter()
        .map(|signed| {
            let mut value = HeaderValue::try_from(signed.value())
                .map_err(|error| format!("cannot sign: {error}"))?;
            value.set_sensitive(true);
            Ok((HeaderName::from_static(signed.name()), value))
        })
        .collect::<Result<_, String>>()?;
    let headers = request.headers_mut();
    for (name, value) in signed {
        headers.insert(name, value);
    }
    Ok(())
}

/// An AWS error type without the namespace or `:http://...` suffix AWS may add.
pub fn error_type<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> Option<String> {
    let raw = match headers.get(ERROR_TYPE_HEADER).and_then(|v| v.to_str().ok()) {
        Some(value) => value.to_owned(),
        None => {
            let document: Value = serde_json::from_slice(body).ok()?;
            document.get("__type")?.as_str()?.to_owned()
        }
    };
    let without_suffix = raw.split(':').next().unwrap_or_default();
    let name = without_suffix.rsplit('#').next().unwrap_or_default().trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// The message of an AWS error body (`message` or `Message`), lower-cased.
fn error_message(body: &[u8]) -> String {
    let Ok(document) = serde_json::from_slice::<Value>(body) else {
        return String::new();
    };
    ["message", "Message"]
        .iter()
        .find_map(|field| document.get(*field)?.as_str())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// What an error answer from Bedrock says about the credential that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Throttled: the credential cools for the model.
    Throttled,
    /// The account may not use this model: the credential rests for that model alone.
    NoModelAccess,
    /// The account's quota for the model is used up: it rests for that model alone.
    Quota,
    /// The credential itself is bad or expired: out for every model.
    Disabled(DisableReason),
}

/// Whether an answer with `status` may be the credential's fault, so its body is read.
pub fn may_be_fault(status: u16) -> bool {
    matches!(status, 400 | 401 | 403 | 429)
}

/// The credential's fault in a runtime answer, if any. Classified by error type, not status:
/// `ModelNotReadyException` is a 429 that no other credential fixes.
pub fn fault(status: u16, headers: &HeaderMap, body: &[u8]) -> Option<Fault> {
    let kind = error_type(headers, body)?;
    match kind.as_str() {
        "ThrottlingException" | "TooManyRequestsException" => Some(Fault::Throttled),
        "ServiceQuotaExceededException" => Some(Fault::Quota),
        "AccessDeniedException" if status == 403 => Some(access_denied(body)),
        "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "IncompleteSignatureException"
        | "InvalidClientTokenId"
        | "MissingAuthenticationTokenException"
        | "SignatureDoesNotMatch" => Some(Fault::Disabled(DisableReason::Unauthorized)),
        "ExpiredTokenException" | "ExpiredToken" | "TokenRefreshRequired" => {
            Some(Fault::Disabled(DisableReason::Expired))
        }
        _ => None,
    }
}

/// A 403 `AccessDeniedException` is about one model when it says so (no access to the
/// model, the model not enabled for the account, or a policy that denies that model's
/// resource); otherwise the credential's policy denies Bedrock as a whole. A key-wide
/// mark read from a model's denial would take a credential out for every model.
fn access_denied(body: &[u8]) -> Fault {
    const ABOUT_ONE_MODEL: [&str; 6] = [
        "the model",
        "this model",
        "model access",
        "specified model",
        "foundation-model/",
        "inference-profile/",
    ];
    let message = error_message(body);
    let about_model = ABOUT_ONE_MODEL
        .iter()
        .any(|phrase| message.contains(phrase));
    if about_model {
        Fault::NoModelAccess
    } else {
        Fault::Disabled(DisableReason::Forbidden)
    }
}

/// `{"message": ...}`, as AWS errors are.
pub(super) fn error_body(error: &ApiError) -> Value {
    json!({"message": error.message()})
}

/// The `x-amzn-ErrorType` of the bridge's own errors, so boto3 raises the matching
/// exception class and the Anthropic Bedrock client its matching error.
pub(super) fn error_type_of(error: &ApiError) -> &'static str {
    match error {
        ApiError::Exhausted {
            kind: ExhaustionKind::RateLimited,
            ..
        } => "ThrottlingException",
        ApiError::Exhausted { .. } | ApiError::Forbidden { .. } => "AccessDeniedException",
        ApiError::InvalidAccessToken | ApiError::NoKeys(_) => "UnrecognizedClientException",
        ApiError::UnknownProvider { .. } | ApiError::NotFound(_) => "ResourceNotFoundException",
        ApiError::BodyTooLarge { .. } | ApiError::BadRequest(_) | ApiError::RequestTimeout(_) => {
            "ValidationException"
        }
        ApiError::Timeout(_) => "ModelTimeoutException",
        ApiError::Unreachable(_) | ApiError::ProviderDisabled { .. } => {
            "ServiceUnavailableException"
        }
    }
}

/// The exception frame that ends a stream which broke off: boto3 and the Anthropic
/// Bedrock client raise it rather than return a short answer.
pub(super) fn stream_error_frame(message: &str) -> Bytes {
    let string = |text: &str| FrameValue::String(text.to_owned().into());
    let frame = Message::new_from_parts(
        vec![
            Header::new(":message-type", string("exception")),
            Header::new(":exception-type", string("internalServerException")),
            Header::new(":content-type", string("application/json")),
        ],
        json!({"message": message}).to_string(),
    );
    let mut buffer = Vec::new();
    write_message_to(&frame, &mut buffer).expect("a small frame always encodes");
    buffer.into()
}

/// Follows an event stream as it is relayed, to know whether the last byte sent ended a
/// frame: only then can an exception frame follow and be read as one.
#[derive(Debug, Default)]
pub struct FrameTracker {
    /// The bytes of the frame not yet whole.
    pending: BytesMut,
    /// The stream is not valid event-stream framing; nothing can follow it cleanly.
    broken: bool,
}

impl FrameTracker {
    /// Follows `chunk`, handing each frame it completes to `on_frame` (its payload).
    pub fn saw(&mut self, chunk: &[u8], mut on_frame: impl FnMut(&[u8])) {
        if self.broken {
            return;
        }
        self.pending.extend_from_slice(chunk);
        loop {
            let mut unread = &self.pending[..];
            // A fresh decoder each time: the frame in progress is kept whole in `pending`.
            match MessageFrameDecoder::new().decode_frame(&mut unread) {
                Ok(DecodedFrame::Complete(message)) => {
                    on_frame(message.payload());
                    let used = self.pending.len() - unread.len();
                    self.pending.advance(used);
                }
                Ok(DecodedFrame::Incomplete) => break,
                Err(_) => {
                    self.broken = true;
                    self.pending.clear();
                    break;
                }
            }
        }
    }

    /// Whether the bytes so far end on a frame boundary.
    pub fn at_boundary(&self) -> bool {
        !self.broken && self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_their_one_line_forms() {
        let pair = AwsCredential::parse("AKIDX:se/cr+et:tok==@eu-west-1").unwrap();
        assert_eq!(pair.region, Some("eu-west-1"));
        assert_eq!(
            pair.secret,
            AwsSecret::AccessKey {
                id: "AKIDX",
                secret: "se/cr+et",
                session_token: Some("tok==")
            }
        );
        let plain = AwsCredential::parse("AKIDX:hunter2hunter2").unwrap();
        assert_eq!(plain.region, None);
        assert_eq!(
            AwsCredential::parse("ABSKkey@us-east-1").unwrap().secret,
            AwsSecret::ApiKey("ABSKkey")
        );
        for bad in ["", "a:", ":b", "a:b:c:d", "a:b@Not A Region", "key@"] {
            assert_eq!(AwsCredential::parse(bad), None, "{bad:?}");
        }
        assert!(!format!("{plain:?}").contains("hunter2"));
    }

    #[test]
    fn runtime_operations_and_models_from_the_path() {
        let post = Method::POST;
        assert_eq!(route(&post, "/model/m/invoke"), ApiRoute::Invoke);
        assert_eq!(
            route(&post, "/model/m/invoke-with-response-stream"),
            ApiRoute::InvokeStream
        );
        assert_eq!(
            route(&post, "/model/m/converse-stream"),
            ApiRoute::ConverseStream
        );
        assert_eq!(route(&Method::GET, "/model/m/invoke"), ApiRoute::Other);
        assert_eq!(route(&post, "/inference-profiles"), ApiRoute::Other);
        let arn = "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.x-v1%3A0/converse?a=b";
        assert_eq!(
            model_of_path(arn).as_deref(),
            Some("arn:aws:bedrock:us-east-1:1:inference-profile/us.x-v1:0")
        );
        assert_eq!(
            model_of_path("/model/us.x-v1:0/invoke").as_deref(),
            Some("us.x-v1:0")
        );
        assert_eq!(model_of_path("/foundation-models"), None);
        assert_eq!(Plane::of("/model/m/invoke"), Plane::Runtime);
        assert_eq!(Plane::of("/inference-profiles"), Plane::Control);
        assert_eq!(
            Plane::Control.endpoint("eu-west-1"),
            "https://bedrock.eu-west-1.amazonaws.com"
        );
    }

    fn typed(kind: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ERROR_TYPE_HEADER, HeaderValue::from_str(kind).unwrap());
        headers
    }

    #[test]
    fn faults_are_read_by_error_type_not_status() {
        let none = HeaderMap::new();
        let suffixed = typed("ThrottlingException:http://internal.amazon.com/coral/");
        assert_eq!(fault(429, &suffixed, b""), Some(Fault::Throttled));
        assert_eq!(fault(429, &typed("ModelNotReadyException"), b""), None);
        assert_eq!(
            fault(
                400,
                &none,
                br#"{"__type":"com.amazon#ServiceQuotaExceededException"}"#
            ),
            Some(Fault::Quota)
        );
        let model =
            br#"{"message":"You don't have access to the model with the specified model ID."}"#;
        assert_eq!(
            fault(403, &typed("AccessDeniedException"), model),
            Some(Fault::NoModelAccess)
        );
        let policy = br#"{"message":"User: arn:aws:iam::1:user/ci is not authorized to perform: bedrock:InvokeModel because no identity-based policy allows it"}"#;
        assert_eq!(
            fault(403, &typed("AccessDeniedException"), policy),
            Some(Fault::Disabled(DisableReason::Forbidden))
        );
        let one_resource = br#"{"message":"User: arn:aws:iam::1:user/ci is not authorized to perform: bedrock:InvokeModel on resource: arn:aws:bedrock:us-east-1::foundation-model/anthropic.x"}"#;
        assert_eq!(
            fault(403, &typed("AccessDeniedException"), one_resource),
            Some(Fault::NoModelAccess)
        );
        assert_eq!(
            fault(403, &typed("ExpiredTokenException"), b""),
            Some(Fault::Disabled(DisableReason::Expired))
        );
        assert_eq!(
            fault(403, &typed("InvalidSignatureException"), b""),
            Some(Fault::Disabled(DisableReason::Unauthorized))
        );
        for caller in [
            "ValidationException",
            "ModelErrorException",
            "InternalServerException",
        ] {
            assert_eq!(fault(400, &typed(caller), b""), None, "{caller}");
        }
    }

    #[test]
    fn a_break_between_frames_gets_an_exception_frame_that_decodes() {
        let frame = stream_error_frame("upstream stream interrupted: reset");
        let mut tracker = FrameTracker::default();
        assert!(tracker.at_boundary());
        let mut payloads = Vec::new();
        tracker.saw(&frame[..10], |payload| payloads.push(payload.to_vec()));
        assert!(!tracker.at_boundary() && payloads.is_empty());
        tracker.saw(&frame[10..], |payload| payloads.push(payload.to_vec()));
        assert!(tracker.at_boundary());
        assert_eq!(payloads.len(), 1);
        let mut unread = &frame[..];
        let DecodedFrame::Complete(message) = MessageFrameDecoder::new()
            .decode_frame(&mut unread)
            .unwrap()
        else {
            panic!("incomplete");
        };
        let header = |name: &str| {
            message
                .headers()
                .iter()
                .find(|header| header.name().as_str() == name)
                .and_then(|header| header.value().as_string().ok())
                .map(|value| value.as_str().to_owned())
        };
        assert_eq!(header(":message-type").as_deref(), Some("exception"));
        assert_eq!(
            header(":exception-type").as_deref(),
            Some("internalServerException")
        );
        assert!(String::from_utf8_lossy(message.payload()).contains("interrupted: reset"));
        let mut garbage = FrameTracker::default();
        garbage.saw(&[0xff; 32], |_| panic!("no frame in garbage"));
        assert!(
            !garbage.at_boundary(),
            "not a frame stream: nothing may follow"
        );
    }
}
