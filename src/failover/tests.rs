use super::request::model_of;
use super::upstream::Destination;
use super::*;
use http::Method;

#[test]
fn paths_join_base_path_and_request_path() {
    let path = |base: &str, request: &str| {
        let destination = Destination::parse(base);
        let path = destination.path_for(request).unwrap();
        destination.origin.url(path).unwrap().to_string()
    };
    assert_eq!(
        path("https://api.openai.com", "/v1/models?limit=5"),
        "https://api.openai.com/v1/models?limit=5"
    );
    assert_eq!(
        path("https://api.openai.com", ""),
        "https://api.openai.com/"
    );
    assert_eq!(
        path("http://127.0.0.1:9/proxy/openai/", "/v1/chat/completions"),
        "http://127.0.0.1:9/proxy/openai/v1/chat/completions"
    );
}

#[test]
fn the_model_is_the_bodys_top_level_string() {
    let model = |body: &str| model_of(body.as_bytes()).map(String::from);
    assert_eq!(
        model(r#"{"max_tokens":5,"model":"claude-opus-4-5","messages":[{"model":"x"}]}"#),
        Some("claude-opus-4-5".into())
    );
    assert_eq!(model(r#"  {"model":"gpt-4o"}"#), Some("gpt-4o".into()));
    assert_eq!(model(r#"{"model":"a\"b"}"#), Some("a\"b".into()));
    assert_eq!(model(r#"{"messages":[]}"#), None);
    assert_eq!(model(r#"{"model":5}"#), None);
    assert_eq!(model(r#"{"model":""}"#), None);
    assert_eq!(model(r#"["model"]"#), None);
    assert_eq!(model("model=gpt-4o"), None);
    assert_eq!(model(""), None);
    let request = OutboundRequest::new(
        Method::POST,
        "/v1/messages".into(),
        HeaderMap::new(),
        Bytes::from_static(br#"{"model":"m"}"#),
    );
    assert_eq!(request.model(), Some("m"));
}

#[test]
fn a_request_is_held_only_for_a_key_back_within_the_budget() {
    let secs = Duration::from_secs;
    let exhausted = |kind, retry_after, attempt_limit| Exhausted {
        kind,
        retry_after,
        model: None,
        attempt_limit,
    };
    let cooling = exhausted(ExhaustionKind::RateLimited, secs(2), None);
    assert_eq!(hold_for(&cooling, secs(10)), Some(secs(2) + HOLD_MARGIN));
    assert_eq!(hold_for(&cooling, secs(2)), Some(secs(2) + HOLD_MARGIN));
    assert_eq!(hold_for(&cooling, secs(1)), None, "back too late");
    assert_eq!(hold_for(&cooling, Duration::ZERO), None, "max_wait = 0");
    let back_now = exhausted(ExhaustionKind::RateLimited, Duration::ZERO, None);
    assert_eq!(hold_for(&back_now, secs(1)), Some(HOLD_MARGIN));
    let disabled = exhausted(ExhaustionKind::Unauthorized, Duration::ZERO, None);
    assert_eq!(hold_for(&disabled, secs(10)), None);
    let limit = AttemptLimit { tried: 4, keys: 7 };
    let limited = exhausted(ExhaustionKind::RateLimited, secs(1), Some(limit));
    assert_eq!(hold_for(&limited, secs(10)), None, "max_attempts reached");
}

#[test]
fn a_session_comes_from_headers_then_the_body_and_a_role_is_not_a_user() {
    use crate::keypool::SessionId;
    let request = |headers: &[(&'static str, &str)], body: &str| {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, value.parse().unwrap());
        }
        OutboundRequest::new(
            http::Method::POST,
            "/v1/messages".to_owned(),
            map,
            bytes::Bytes::from(body.to_owned()),
        )
    };
    let messages = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    assert_eq!(request(&[], messages).session(), None);
    let with_id = r#"{"metadata":{"user_id":"u1"},"messages":[{"role":"user"}]}"#;
    assert_eq!(request(&[], with_id).session(), Some(SessionId::of("u1")));
    assert_eq!(
        request(&[("x-claude-code-session-id", "cc")], with_id).session(),
        Some(SessionId::of("cc")),
        "a header comes first"
    );
    assert_eq!(
        request(
            &[
                ("x-aibridge-session", "a"),
                ("x-claude-code-session-id", "cc")
            ],
            ""
        )
        .session(),
        Some(SessionId::of("a"))
    );
    let openai = r#"{"prompt_cache_key":"pk","user" : "u2"}"#;
    assert_eq!(request(&[], openai).session(), Some(SessionId::of("pk")));
    assert_eq!(
        request(&[], r#"{"user" : "u2"}"#).session(),
        Some(SessionId::of("u2"))
    );
    assert!(
        request(&[], r#"{"cache_control":{"type":"ephemeral","ttl":"1h"}}"#).wants_long_cache()
    );
    assert!(!request(&[], messages).wants_long_cache());
}
