//! Request dumps: each attempt's request and response as JSON, the key shown as its hint.

use std::time::SystemTime;

use http::{HeaderMap, HeaderValue};
use serde::Serialize;
use serde_json::{Map, Value};

use super::Journal;
use crate::failover::{Attempt, Credentials, OutboundRequest, Upstream};
use crate::provider::{CREDENTIAL_HEADERS, credential_in};
use crate::secret::ApiKey;

/// One attempt's request and response, as written to `dump_dir`.
#[derive(Debug, Serialize)]
pub struct AttemptDump {
    pub request_id: u64,
    pub attempt: usize,
    pub provider: String,
    pub time: String,
    pub key: String,
    pub request: Value,
    pub response: Value,
}

pub fn dump_failed_attempts(
    journal: &Journal,
    id: u64,
    upstream: &Upstream,
    request: &OutboundRequest,
    credentials: &Credentials,
    attempts: &[Attempt],
) {
    if !journal.dumping() {
        return;
    }
    for (index, attempt) in attempts.iter().enumerate() {
        let response = match (&attempt.drained, attempt.status) {
            (Some(drained), Some(status)) => {
                http_message(Some(status), &drained.headers, &drained.body)
            }
            (None, None) => serde_json::json!({"error": attempt.no_answer()}),
            // The answer that reaches the caller is dumped when its body has been relayed.
            _ => continue,
        };
        let mut dump = dump_request(upstream, request, credentials, attempt);
        dump.attempt = index + 1;
        dump.request_id = id;
        dump.response = response;
        journal.dump(format!("{id:08}-attempt{}.json", index + 1), &dump);
    }
}

/// The request of one attempt as it was sent, with the key shown as its hint.
pub fn dump_request(
    upstream: &Upstream,
    request: &OutboundRequest,
    credentials: &Credentials,
    attempt: &Attempt,
) -> AttemptDump {
    let mut headers = request.headers().clone();
    match credentials {
        Credentials::Pool => upstream
            .kind
            .api()
            .apply_key(&mut headers, &ApiKey::new(&*attempt.key_hint)),
        Credentials::Caller(_) => {
            for name in &CREDENTIAL_HEADERS {
                let masked = credential_in(&headers, name)
                    .and_then(|credential| HeaderValue::from_str(&credential.hint()).ok());
                if let Some(masked) = masked {
                    headers.insert(name.clone(), masked);
                }
            }
        }
    }
    let mut message = http_message(None, &headers, &request.body);
    message["method"] = Value::String(request.method.to_string());
    message["url"] = Value::String(format!("{}{}", upstream.base_url, request.path_and_query));
    AttemptDump {
        request_id: 0,
        attempt: 0,
        provider: upstream.name.to_string(),
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        key: attempt.key_hint.to_string(),
        request: message,
        response: Value::Null,
    }
}

/// Status, headers and body as JSON; the body as parsed JSON when it is JSON, else text.
pub fn http_message(status: Option<u16>, headers: &HeaderMap, body: &[u8]) -> Value {
    let headers: Map<String, Value> = headers
        .iter()
        .map(|(name, value)| {
            let text = value
                .to_str()
                .map_or_else(|_| "<binary>".to_owned(), str::to_owned);
            (name.as_str().to_owned(), Value::String(text))
        })
        .collect();
    let body = serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
    let mut message = serde_json::json!({"headers": headers, "body": body});
    if let Some(status) = status {
        message["status"] = Value::from(status);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_message_parses_json_bodies() {
        let message = http_message(Some(429), &HeaderMap::new(), b"{\"a\":1}");
        assert_eq!(
            message,
            serde_json::json!({"headers": {}, "body": {"a": 1}, "status": 429})
        );
        let text = http_message(None, &HeaderMap::new(), b"plain");
        assert_eq!(text["body"], "plain");
    }
}
