use super::*;
use std::time::Duration;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(name, value)| {
            (
                header::HeaderName::from_static(name),
                value.parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn caller_credential_from_either_header() {
    let bearer = caller_credential(&headers(&[(
        "authorization",
        "Bearer sk-caller-1234567890",
    )]));
    assert_eq!(bearer.unwrap().expose(), "sk-caller-1234567890");
    let api_key = caller_credential(&headers(&[("x-api-key", "sk-ant-caller")]));
    assert_eq!(api_key.unwrap().expose(), "sk-ant-caller");
    assert!(caller_credential(&headers(&[("authorization", "Bearer  ")])).is_none());
    assert!(caller_credential(&HeaderMap::new()).is_none());
}

#[test]
fn anthropic_key_replaces_caller_credentials_and_sets_version() {
    let mut map = headers(&[("authorization", "Bearer caller"), ("x-api-key", "caller")]);
    map.append("x-api-key", HeaderValue::from_static("second"));
    ANTHROPIC.apply_key(&mut map, &ApiKey::new("sk-ant-pool"));
    let keys: Vec<_> = map.get_all("x-api-key").iter().collect();
    assert_eq!(keys, ["sk-ant-pool"]);
    assert!(map.get("authorization").is_none());
    assert_eq!(map.get("anthropic-version").unwrap(), "2023-06-01");

    let mut pinned = headers(&[("anthropic-version", "2024-01-01")]);
    ANTHROPIC.apply_key(&mut pinned, &ApiKey::new("sk-ant-pool"));
    assert_eq!(pinned.get("anthropic-version").unwrap(), "2024-01-01");
}

#[test]
fn openai_and_copilot_use_bearer() {
    for api in [ProviderKind::OpenAi.api(), ProviderKind::Copilot.api()] {
        let mut map = headers(&[("x-api-key", "caller"), ("authorization", "Bearer one")]);
        map.append("authorization", HeaderValue::from_static("Bearer two"));
        api.apply_key(&mut map, &ApiKey::new("sk-pool"));
        let authorizations: Vec<_> = map.get_all("authorization").iter().collect();
        assert_eq!(authorizations, ["Bearer sk-pool"]);
        assert!(map.get("x-api-key").is_none());
        assert!(format!("{map:?}").contains("Sensitive"));
    }
}

#[test]
fn exhaustion_renders_in_each_shape() {
    let rate_limited = ApiError::exhausted(&Exhausted {
        kind: ExhaustionKind::RateLimited,
        retry_after: Duration::from_millis(1200),
        model: None,
        attempt_limit: None,
    });
    assert_eq!(rate_limited.status(), 429);
    assert_eq!(
        ANTHROPIC.error_body(&rate_limited),
        serde_json::json!({"type": "error", "error": {
            "type": "rate_limit_error",
            "message": "all configured keys are rate-limited (retry after 2s)"}})
    );
    let unauthorized = ApiError::exhausted(&Exhausted {
        kind: ExhaustionKind::Unauthorized,
        retry_after: Duration::ZERO,
        model: None,
        attempt_limit: None,
    });
    assert_eq!(unauthorized.status(), 502);
    assert_eq!(
        OPENAI.error_body(&unauthorized),
        serde_json::json!({"error": {
            "message": "all configured keys failed authentication or are out of quota; run \
                `aibridge pool status` to see why, and `aibridge pool reset` once they are fixed",
            "type": "api_error", "code": "keys_exhausted", "param": null}})
    );
    assert_eq!(
        COPILOT.error_body(&unauthorized),
        OPENAI.error_body(&unauthorized)
    );
}

#[test]
fn provider_disabled_sentinel() {
    let spec = ApiError::provider_disabled("work");
    assert_eq!(spec.status(), 503);
    assert_eq!(
        spec.message(),
        "provider_disabled: AI provider \"work\" is disabled"
    );
    assert_eq!(
        ANTHROPIC.error_body(&spec)["error"]["type"],
        "provider_disabled"
    );
}

#[test]
fn bridged_routes() {
    use http::Method;
    let cases: [(&ProviderSpec, Method, &str, ApiRoute); 7] = [
        (&ANTHROPIC, Method::POST, "/v1/messages", ApiRoute::Messages),
        (
            &ANTHROPIC,
            Method::POST,
            "/v1/messages/count_tokens",
            ApiRoute::Other,
        ),
        (&ANTHROPIC, Method::GET, "/v1/messages", ApiRoute::Other),
        (
            &OPENAI,
            Method::POST,
            "/v1/chat/completions",
            ApiRoute::ChatCompletions,
        ),
        (&OPENAI, Method::POST, "/v1/responses/", ApiRoute::Responses),
        (&OPENAI, Method::GET, "/v1/models", ApiRoute::Other),
        (
            &COPILOT,
            Method::POST,
            "/chat/completions",
            ApiRoute::ChatCompletions,
        ),
    ];
    for (api, method, path, route) in cases {
        assert_eq!(api.route(&method, path), route, "{method} {path}");
    }
}

#[test]
fn stream_error_events_in_each_shape() {
    let anthropic =
        ANTHROPIC.stream_error_event(ApiRoute::Messages, "upstream stream interrupted: reset");
    assert_eq!(
        anthropic,
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"upstream stream interrupted: reset\"}}\n\n"
    );
    let chat = OPENAI.stream_error_event(ApiRoute::ChatCompletions, "cut");
    assert_eq!(
        chat,
        "data: {\"error\":{\"message\":\"cut\",\"type\":\"api_error\",\"code\":\"stream_interrupted\"}}\n\ndata: [DONE]\n\n"
    );
    let responses = OPENAI.stream_error_event(ApiRoute::Responses, "cut");
    assert_eq!(
        responses,
        "event: error\ndata: {\"type\":\"error\",\"code\":\"stream_interrupted\",\"message\":\"cut\"}\n\n"
    );
}

#[test]
fn kinds_round_trip_by_name() {
    for kind in ProviderKind::ALL {
        assert_eq!(ProviderKind::from_name(kind.as_str()), Some(kind));
    }
    assert_eq!(ProviderKind::from_name("gemini"), None);
}

#[test]
fn quota_errors_are_recognised_from_the_body() {
    let openai_code = br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
    let openai_type = br#"{"error":{"message":"quota","type":"insufficient_quota","code":null}}"#;
    let openai_rate = br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
    assert!(is_quota_error(&OPENAI, 429, openai_code));
    assert!(is_quota_error(&OPENAI, 429, openai_type));
    assert!(!is_quota_error(&OPENAI, 429, openai_rate));
    assert!(!is_quota_error(&OPENAI, 400, openai_code));
    assert!(!is_quota_error(&OPENAI, 429, b"not json"));

    let credit = br#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#;
    let other_400 = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#;
    let wrong_type = br#"{"type":"error","error":{"type":"api_error","message":"Your credit balance is too low"}}"#;
    assert!(is_quota_error(&ANTHROPIC, 400, credit));
    assert!(!is_quota_error(&ANTHROPIC, 400, other_400));
    assert!(!is_quota_error(&ANTHROPIC, 400, wrong_type));
    assert!(!is_quota_error(&ANTHROPIC, 429, credit));
    assert!(may_signal_quota(&ANTHROPIC, 400));
    assert!(!may_signal_quota(&ANTHROPIC, 500));
    assert!(!may_signal_quota(&COPILOT, 429));
}
