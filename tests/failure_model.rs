//! The failure model through the real binary: health per key and model, quota errors that
//! disable a key for every model, bounded attempts, requests held for a key, and budgets
//! reported used up on a success.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::harness::{K1, K2, K3, K4, K5, MockUpstream, Reply, Server, Test, client, hint};

const OPUS: &str = "claude-opus-4-5";
const HAIKU: &str = "claude-haiku-4-5";

/// A config with `anthropic` and `openai` at the mock, both with `keys`, each provider
/// table ending with `provider_extra`.
fn bridge(mock: &MockUpstream, keys: &[&str], top: &str, provider_extra: &str) -> Test {
    let keys: Vec<_> = keys.iter().map(|key| format!("{key:?}")).collect();
    let (keys, url) = (keys.join(", "), mock.url());
    Test::new().config(&format!(
        "{top}\n[providers.anthropic]\nbase_url = \"{url}\"\nkeys = [{keys}]\n{provider_extra}\n\
         [providers.openai]\nbase_url = \"{url}\"\nkeys = [{keys}]\n{provider_extra}\n"
    ))
}

fn message(model: &str) -> String {
    json!({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]})
        .to_string()
}

fn post(server: &Server, path: &str, body: &str) -> reqwest::blocking::Response {
    client()
        .post(server.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .unwrap()
}

fn messages(server: &Server, model: &str) -> reqwest::blocking::Response {
    post(server, "/anthropic/v1/messages", &message(model))
}

fn header(response: &reqwest::blocking::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map_or_else(String::new, |value| value.to_str().unwrap().to_owned())
}

/// The `"model"` of each request the mock received, in order.
fn models_seen(mock: &MockUpstream) -> Vec<String> {
    mock.requests()
        .iter()
        .map(|request| {
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            body["model"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

fn anthropic_keys(server: &Server) -> Vec<Value> {
    server.pool()["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|provider| provider["name"] == "anthropic")
        .unwrap()["keys"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_429_for_one_model_leaves_the_key_serving_another() {
    let mock = MockUpstream::start();
    mock.on_key(
        K1,
        vec![Reply::rate_limited(60), Reply::ok(r#"{"id":"haiku"}"#)],
    )
    .on_key(K2, vec![Reply::ok(r#"{"id":"k2"}"#)]);
    let test = bridge(&mock, &[K1, K2], "", "");
    let server = test.serve();

    let first = messages(&server, OPUS);
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-aibridge-key"), hint(K2));
    let second = messages(&server, HAIKU);
    assert_eq!(
        header(&second, "x-aibridge-key"),
        hint(K1),
        "K1 still serves haiku"
    );
    assert_eq!(second.text().unwrap(), r#"{"id":"haiku"}"#);
    let third = messages(&server, OPUS);
    assert_eq!(
        header(&third, "x-aibridge-attempts"),
        "1",
        "K1 skipped for opus"
    );
    assert_eq!(mock.keys_used(), [K1, K2, K1, K2]);
    assert_eq!(models_seen(&mock), [OPUS, OPUS, HAIKU, OPUS]);

    let keys = anthropic_keys(&server);
    assert_eq!(keys[0]["state"], "available");
    assert_eq!(keys[0]["cooling"].as_object().unwrap().len(), 1);
    let remaining = keys[0]["cooling"][OPUS]["remaining_secs"].as_u64().unwrap();
    assert!((55..=60).contains(&remaining), "{remaining}");
    assert!(
        server
            .metrics()
            .contains("aibridge_keys{provider=\"anthropic\",state=\"cooling\"} 1"),
        "a key cooling for one model counts as cooling"
    );
    server.wait_for_log(&format!("key cooling for 1m for model {OPUS}"));

    let status = test
        .run_with(&["pool", "status", "--server", &server.base])
        .success();
    let line = status
        .stdout
        .lines()
        .find(|line| line.contains(&hint(K1)))
        .unwrap();
    let label = if remaining == 60 {
        format!("cooling 1m ({OPUS})")
    } else {
        format!("cooling {remaining}s ({OPUS})")
    };
    assert!(line.contains(&label), "{}", status.stdout);
}

#[test]
fn key_scope_cools_the_key_for_every_model() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(60)]);
    let server = bridge(&mock, &[K1, K2], "", "cooldown_scope = \"key\"").serve();
    assert_eq!(messages(&server, OPUS).status(), 200);
    assert_eq!(messages(&server, HAIKU).status(), 200);
    assert_eq!(mock.keys_used(), [K1, K2, K2]);
    let keys = anthropic_keys(&server);
    assert_eq!(keys[0]["state"], "cooling");
    assert_eq!(keys[0]["cooling"], json!({}));
}

#[test]
fn a_request_without_a_model_cools_the_whole_key() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(60)]);
    let server = bridge(&mock, &[K1, K2], "", "").serve();
    let models = client()
        .get(server.url("/anthropic/v1/models"))
        .send()
        .unwrap();
    assert_eq!(models.status(), 200);
    assert_eq!(messages(&server, OPUS).status(), 200);
    assert_eq!(mock.keys_used(), [K1, K2, K2]);
    assert_eq!(anthropic_keys(&server)[0]["state"], "cooling");
}

#[test]
fn quota_errors_fail_over_and_disable_the_key_for_every_model() {
    let mock = MockUpstream::start();
    let credit = r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#;
    let quota = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    mock.on_key(K1, vec![Reply::json(400, credit)])
        .on_key(K3, vec![Reply::json(429, quota)]);
    let url = mock.url();
    let test = Test::new().config(&format!(
        "[providers.anthropic]\nbase_url = \"{url}\"\nkeys = [\"{K1}\", \"{K2}\"]\n\
         [providers.openai]\nbase_url = \"{url}\"\nkeys = [\"{K3}\", \"{K4}\"]\n"
    ));
    let server = test.serve();

    let anthropic = messages(&server, OPUS);
    assert_eq!(anthropic.status(), 200);
    assert_eq!(header(&anthropic, "x-aibridge-key"), hint(K2));
    let chat = |model: &str| {
        let body = json!({"model": model, "messages": []}).to_string();
        post(&server, "/openai/v1/chat/completions", &body)
    };
    let openai = chat("gpt-4o");
    assert_eq!(openai.status(), 200);
    assert_eq!(header(&openai, "x-aibridge-key"), hint(K4));
    // The credit error and the quota error each failed over to the next key.
    assert_eq!(mock.keys_used(), [K1, K2, K3, K4]);

    for (provider, keys) in server.pool()["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_owned(), p["keys"].clone()))
    {
        // Only the two configured with keys here.
        if provider == "copilot" || provider == "bedrock" {
            continue;
        }
        assert_eq!(keys[0]["state"], "disabled", "{provider}");
        assert_eq!(keys[0]["reason"], "quota", "{provider}");
        assert_eq!(keys[1]["state"], "available", "{provider}");
    }
    // Disabled for every model: other models skip the key too.
    assert_eq!(
        header(&messages(&server, HAIKU), "x-aibridge-key"),
        hint(K2)
    );
    assert_eq!(header(&chat("gpt-4.1"), "x-aibridge-key"), hint(K4));
    assert_eq!(mock.keys_used()[4..], [K2, K4]);
    server.wait_for_log("key disabled (quota)");
    let status = test.run_with(&["pool", "status", "--server", &server.base]);
    assert!(
        status.stdout.contains("disabled (quota or credit used up)"),
        "{}",
        status.stdout
    );
}

#[test]
fn a_400_that_is_not_a_quota_error_goes_back_unchanged() {
    let mock = MockUpstream::start();
    let invalid = r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#;
    mock.on_key(
        K1,
        vec![Reply::json(400, invalid).header("request-id", "req_400")],
    );
    let server = bridge(&mock, &[K1, K2], "", "").serve();
    let response = messages(&server, OPUS);
    assert_eq!(response.status(), 400);
    assert_eq!(header(&response, "request-id"), "req_400");
    assert_eq!(header(&response, "content-type"), "application/json");
    assert_eq!(response.text().unwrap(), invalid);
    assert_eq!(mock.keys_used(), [K1], "not the key's fault: no failover");
    assert!(server.all_keys_available());
}

#[test]
fn attempts_per_request_are_bounded() {
    let keys = [
        K1,
        K2,
        K3,
        K4,
        K5,
        "sk-ant-six-0000000000000000000000006",
        "sk-ant-sev-0000000000000000000000007",
    ];
    let mock = MockUpstream::start();
    for key in keys {
        mock.on_key(key, vec![Reply::rate_limited(60)]);
    }
    let test = bridge(&mock, &keys, "", "").secret(keys[5]).secret(keys[6]);
    let server = test.serve();
    let response = messages(&server, OPUS);
    assert_eq!(response.status(), 429);
    assert_eq!(
        header(&response, "retry-after"),
        "1",
        "untried keys are ready now"
    );
    assert_eq!(header(&response, "x-aibridge-attempts"), "4");
    let body: Value = response.json().unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert_eq!(
        message,
        format!(
            "4 of 7 keys tried for model \"{OPUS}\", each rate-limited or disabled; stopped \
             after max_attempts (4); the 3 keys not tried are ready for a retry"
        ),
        "says what happened, not that every key is rate-limited"
    );
    assert_eq!(mock.requests().len(), 4);
    let states: Vec<_> = anthropic_keys(&server)
        .iter()
        .map(|key| key["cooling"].as_object().unwrap().len())
        .collect();
    assert_eq!(
        states,
        [1, 1, 1, 1, 0, 0, 0],
        "untried keys keep their state"
    );

    // `max_attempts = 0` walks the whole pool.
    let mock = MockUpstream::start();
    for key in keys {
        mock.on_key(key, vec![Reply::rate_limited(60)]);
    }
    let server = bridge(&mock, &keys, "", "max_attempts = 0")
        .secret(keys[5])
        .secret(keys[6])
        .serve();
    let response = messages(&server, OPUS);
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after"), "60");
    assert_eq!(mock.requests().len(), 7);
}

#[test]
fn attempts_that_saw_no_429_end_in_a_502() {
    let mock = MockUpstream::start();
    for key in [K1, K2, K3] {
        mock.on_key(key, vec![Reply::status(401)]);
    }
    let server = bridge(&mock, &[K1, K2, K3], "", "max_attempts = 2").serve();
    let response = messages(&server, OPUS);
    assert_eq!(response.status(), 502);
    assert!(response.headers().get("retry-after").is_none());
    assert_eq!(mock.keys_used(), [K1, K2]);
    assert_eq!(anthropic_keys(&server)[2]["state"], "available");
}

#[test]
fn serve_waits_for_a_key_that_is_about_to_come_back() {
    let mock = MockUpstream::start();
    mock.on_key(
        K1,
        vec![Reply::rate_limited(2), Reply::ok(r#"{"id":"after-wait"}"#)],
    );
    let test = bridge(&mock, &[K1], "request_log = \"requests.jsonl\"", "");
    let server = test.serve();
    let started = Instant::now();
    let response = messages(&server, OPUS);
    let took = started.elapsed();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-aibridge-attempts"), "2");
    let waited_header: u64 = header(&response, "x-aibridge-waited-ms").parse().unwrap();
    assert!((1900..5000).contains(&waited_header), "{waited_header}");
    assert_eq!(response.text().unwrap(), r#"{"id":"after-wait"}"#);
    assert!(
        (Duration::from_millis(1900)..Duration::from_secs(5)).contains(&took),
        "{took:?}"
    );
    assert_eq!(mock.keys_used(), [K1, K1]);
    assert_eq!(models_seen(&mock), [OPUS, OPUS]);
    server.wait_for_log("request held: waiting 2s");
    let log = crate::serve::wait_for_lines(&test.path("requests.jsonl"), 1);
    let waited = log[0]["waited_ms"].as_u64().unwrap();
    assert!((1900..5000).contains(&waited), "{waited}");
    assert_eq!(log[0]["attempts"][0]["model"], OPUS);
    assert!(
        server
            .metrics()
            .contains("aibridge_wait_seconds_count{provider=\"anthropic\"} 1")
    );
}

#[test]
fn a_request_with_no_attempt_left_is_not_held() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(2)])
        .on_key(K2, vec![Reply::rate_limited(2)]);
    let server = bridge(&mock, &[K1, K2], "", "max_attempts = 2").serve();
    let started = Instant::now();
    let response = messages(&server, OPUS);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "held for {:?} with no attempt left",
        started.elapsed()
    );
    assert_eq!(response.status(), 429);
    assert!(response.headers().get("x-aibridge-waited-ms").is_none());
    assert_eq!(header(&response, "retry-after"), "2");
    assert_eq!(mock.keys_used(), [K1, K2]);
}

#[test]
fn an_answer_made_after_a_wait_says_how_long_it_waited() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(1), Reply::status(401)]);
    let server = bridge(&mock, &[K1], "", "").serve();
    let response = messages(&server, OPUS);
    assert_eq!(response.status(), 502);
    let waited: u64 = header(&response, "x-aibridge-waited-ms").parse().unwrap();
    assert!((900..3000).contains(&waited), "{waited}");
    let body: Value = response.json().unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("run `aibridge pool status` to see why"),
        "{message}"
    );
}

#[test]
fn max_wait_zero_answers_at_once() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(1)]);
    let server = bridge(&mock, &[K1], "", "max_wait = \"0s\"").serve();
    let response = messages(&server, OPUS);
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after"), "1");
    assert_eq!(mock.requests().len(), 1);
}

#[test]
fn a_held_request_whose_client_leaves_is_dropped() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(1), Reply::ok("{}")]);
    let server = bridge(&mock, &[K1], "", "").serve();
    let result = crate::harness::client_giving_up_after(Duration::from_millis(300))
        .post(server.url("/anthropic/v1/messages"))
        .body(message(OPUS))
        .send();
    assert!(result.is_err(), "the client gave up first");
    server.wait_for_log("request dropped while held: the client left");
    // Past the cooldown, the request is not walked again.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(mock.requests().len(), 1);
}

#[test]
fn a_success_that_spends_a_budget_sends_the_next_request_elsewhere() {
    let reset = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(30));
    let mock = MockUpstream::start();
    mock.on_key(
        K1,
        vec![
            Reply::ok(r#"{"id":"last-of-budget"}"#)
                .header("anthropic-ratelimit-requests-remaining", "0")
                .header("anthropic-ratelimit-requests-reset", &reset.to_string())
                .header("x-ratelimit-remaining-tokens", "0")
                .header("x-ratelimit-reset-tokens", "20s"),
        ],
    );
    let server = bridge(&mock, &[K1, K2], "", "").serve();
    let first = messages(&server, OPUS);
    assert_eq!(first.status(), 200);
    assert_eq!(
        header(&first, "anthropic-ratelimit-requests-remaining"),
        "0",
        "relayed unchanged"
    );
    assert_eq!(first.text().unwrap(), r#"{"id":"last-of-budget"}"#);
    assert_eq!(header(&messages(&server, OPUS), "x-aibridge-key"), hint(K2));
    let chat = json!({"model": "gpt-4o", "messages": []}).to_string();
    post(&server, "/openai/v1/chat/completions", &chat);
    post(&server, "/openai/v1/chat/completions", &chat);
    assert_eq!(mock.keys_used(), [K1, K2, K1, K2]);

    let keys = anthropic_keys(&server);
    assert_eq!(keys[0]["last_status"], 200);
    let remaining = keys[0]["cooling"][OPUS]["remaining_secs"].as_u64().unwrap();
    assert!((25..=30).contains(&remaining), "{remaining}");
    assert_eq!(keys[0]["cooling"][OPUS]["reason"], "rate_limited");
    server.wait_for_log(&format!("for model {OPUS}"));
}

#[test]
fn send_and_offline_pool_status_show_cooling_per_model() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(40), Reply::ok("{}")]);
    let test = Test::new().anthropic(&mock, &[K1, K2]);
    test.run_with(&["send", "-d", &message(OPUS)]).success();
    let state = test.state();
    let record = &state["providers"]["anthropic"]
        .as_object()
        .unwrap()
        .values()
        .find(|record| record["hint"] == hint(K1))
        .unwrap()
        .clone();
    assert_eq!(record["state"], "available");
    assert!(record["cooling"][OPUS]["until"].is_string(), "{record}");

    let status = test.run_with(&["pool", "status"]).success();
    assert!(
        status.stdout.contains(&format!("cooling 40s ({OPUS})"))
            || status.stdout.contains(&format!("cooling 39s ({OPUS})")),
        "{}",
        status.stdout
    );
    // The next send for another model still uses K1; for the same model it skips it.
    test.run_with(&["send", "-d", &message(HAIKU)]).success();
    test.run_with(&["send", "-d", &message(OPUS)]).success();
    assert_eq!(mock.keys_used(), [K1, K2, K1, K2]);
}
