use super::*;

#[test]
fn provider_is_the_first_segment() {
    assert_eq!(
        split_provider("/anthropic/v1/messages"),
        ("anthropic", "/v1/messages")
    );
    assert_eq!(
        split_provider("/openai/v1/chat/completions"),
        ("openai", "/v1/chat/completions")
    );
    assert_eq!(split_provider("/openai"), ("openai", ""));
    assert_eq!(split_provider("/"), ("", ""));
}

#[test]
fn dot_segments_are_found_plain_and_percent_encoded() {
    for path in [
        "/v1/../admin",
        "/v1/./messages",
        "/..",
        "/v1/%2e%2E/x",
        "/v1/.%2e",
        "/%2e/x",
    ] {
        assert!(has_dot_segment(path), "{path}");
    }
    for path in [
        "/v1/messages",
        "",
        "/",
        "/v1/models/gpt-4.1",
        "/v1/.../x",
        "/v1/..x/y",
        "/v1/%2f/x",
        "/v1/%2e%2e%2e",
        "/files/a%2ex",
    ] {
        assert!(!has_dot_segment(path), "{path}");
    }
}

#[test]
fn exhaustion_sets_retry_after() {
    let mut exhausted = crate::keypool::Exhausted {
        kind: crate::keypool::ExhaustionKind::RateLimited,
        retry_after: std::time::Duration::from_millis(2500),
        model: None,
        attempt_limit: None,
    };
    let response = failover_error_response(
        ProviderKind::Anthropic.api(),
        &FailoverError::Exhausted(exhausted.clone()),
    );
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    // A key came back during the walk: still never "retry at once".
    exhausted.retry_after = std::time::Duration::ZERO;
    let response = failover_error_response(
        ProviderKind::Anthropic.api(),
        &FailoverError::Exhausted(exhausted),
    );
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
}
