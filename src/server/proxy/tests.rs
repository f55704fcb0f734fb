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
fn paths_that_could_step_out_of_the_base_url_are_found() {
    for path in [
        "/v1/../admin",
        "/v1/./messages",
        "/..",
        "/v1/%2e%2E/x",
        "/v1/.%2e",
        "/%2e/x",
        "/v1/..%2f/admin",
        "/v1/..%2F..%2Fadmin",
        "/v1/..;/admin",
        "/v1/.;x=1/admin",
        "/v1/%2e%2e;/admin",
        "/v1/..%5c/admin",
        "/v1/a%5Cb",
        "/v1/a\\b",
        "/v1/%252e%252e/admin",
        "/v1/%252f",
        "/v1/%2f/x",
    ] {
        assert!(is_unsafe_path(path, false), "{path}");
        assert!(is_unsafe_path(path, true), "{path}");
    }
    for path in [
        "/v1/messages",
        "",
        "/",
        "/v1/models/gpt-4.1",
        "/v1/.../x",
        "/v1/..x/y",
        "/v1/%2e%2e%2e",
        "/files/a%2ex",
        "/v1/models/a;b",
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke",
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke",
    ] {
        assert!(!is_unsafe_path(path, false), "{path}");
    }
}

#[test]
fn a_bedrock_model_id_may_hold_an_encoded_slash_but_no_dot_segment() {
    let arn = "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2F\
               us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse";
    assert!(!is_unsafe_path(arn, true));
    assert!(
        is_unsafe_path(arn, false),
        "only Bedrock's model ids may hold one"
    );
    for path in [
        "/model/a%2F..%2Fb/invoke",
        "/model/%2e%2e/invoke",
        "/model/a%5Cb/invoke",
        "/model/x/..%2Fadmin",
        "/model/a%252F..%252Fb/invoke",
    ] {
        assert!(is_unsafe_path(path, true), "{path}");
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
