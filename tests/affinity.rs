//! Session affinity through `serve`: a conversation keeps its key while the key is healthy,
//! so the provider's prompt cache keeps paying.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Gate, K1, K2, K3, MockUpstream, Reply, Server, Test, client, hint};

fn bridge(mock: &MockUpstream, provider_extra: &str) -> Test {
    Test::new().config(&format!(
        "request_log = \"requests.jsonl\"\n[providers.anthropic]\nbase_url = \"{}\"\n\
         keys = [\"{K1}\", \"{K2}\", \"{K3}\"]\n{provider_extra}\n",
        mock.url()
    ))
}

/// A Messages request, with `headers`, and Claude Code's `metadata.user_id` when given.
fn ask(server: &Server, headers: &[(&str, &str)], user_id: Option<&str>) -> String {
    let mut body = json!({"model": "claude-sonnet-4-5", "max_tokens": 8,
                          "messages": [{"role": "user", "content": "Hi"}]});
    if let Some(user_id) = user_id {
        body["metadata"] = json!({"user_id": user_id});
    }
    let mut request = client()
        .post(server.url("/anthropic/v1/messages"))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let answer = request.send().unwrap();
    assert_eq!(answer.status(), 200);
    let key = answer.headers()["x-aibridge-key"]
        .to_str()
        .unwrap()
        .to_owned();
    // Read to the end, so the answer is accounted for before the test looks.
    answer.text().unwrap();
    key
}

fn session(id: &str) -> [(&'static str, &str); 1] {
    [("x-aibridge-session", id)]
}

#[test]
fn sessions_stick_to_a_key_under_round_robin_and_new_ones_are_spread() {
    let mock = MockUpstream::start();
    let test = bridge(&mock, "strategy = \"round-robin\"");
    let server = test.serve();
    let first: Vec<_> = (0..4)
        .map(|_| ask(&server, &session("alpha"), None))
        .collect();
    assert!(first.iter().all(|key| *key == first[0]), "{first:?}");
    // Claude Code's header and body id are sessions too.
    let code: Vec<_> = (0..3)
        .map(|_| ask(&server, &[("x-claude-code-session-id", "c0de")], None))
        .collect();
    assert!(code.iter().all(|key| *key == code[0]), "{code:?}");
    let body: Vec<_> = (0..3)
        .map(|_| ask(&server, &[], Some("user_abc_account__session_1")))
        .collect();
    assert!(body.iter().all(|key| *key == body[0]), "{body:?}");
    let sessions = [&first[0], &code[0], &body[0]];
    assert!(
        sessions[0] != sessions[1] && sessions[1] != sessions[2] && sessions[0] != sessions[2],
        "round-robin spreads sessions: {sessions:?}"
    );
    // Without a session, round-robin still rotates per request.
    let plain: Vec<_> = (0..3).map(|_| ask(&server, &[], None)).collect();
    assert_ne!(plain[0], plain[1]);

    let metrics = server.metrics();
    for (outcome, count) in [("kept", 7), ("new", 3)] {
        let line = format!(
            "aibridge_affinity_total{{provider=\"anthropic\",outcome=\"{outcome}\"}} {count}"
        );
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
    drop(server);
    let log = std::fs::read_to_string(test.path("requests.jsonl")).unwrap();
    assert_eq!(log.matches("\"affinity\":\"kept\"").count(), 7, "{log}");
    assert_eq!(log.matches("\"affinity\":\"new\"").count(), 3, "{log}");
    assert!(!log.contains("alpha") && !log.contains("c0de") && !log.contains("user_abc"));
}

#[test]
fn a_cooling_key_moves_its_sessions_once_and_they_stay_moved() {
    let mock = MockUpstream::start();
    mock.on_key(
        K1,
        vec![Reply::ok("{}"), Reply::rate_limited(1), Reply::ok("{}")],
    );
    let server = bridge(&mock, "").serve();
    assert_eq!(ask(&server, &session("s1"), None), hint(K1));
    // K1 answers 429: the session moves to K2.
    assert_eq!(ask(&server, &session("s1"), None), hint(K2));
    std::thread::sleep(Duration::from_millis(1_100));
    // K1 is back, but the session stays where its cache now is.
    for _ in 0..3 {
        assert_eq!(ask(&server, &session("s1"), None), hint(K2));
    }
    // A new session under the ordered strategy starts on K1 again.
    assert_eq!(ask(&server, &session("s2"), None), hint(K1));
    let metrics = server.metrics();
    let moved = "aibridge_affinity_total{provider=\"anthropic\",outcome=\"moved\"} 1";
    assert!(metrics.contains(moved), "{metrics}");
}

#[test]
fn affinity_off_follows_the_strategy_alone() {
    let mock = MockUpstream::start();
    let server = bridge(&mock, "strategy = \"round-robin\"\naffinity = \"off\"").serve();
    let keys: Vec<_> = (0..3)
        .map(|_| ask(&server, &session("alpha"), None))
        .collect();
    assert_ne!(keys[0], keys[1], "{keys:?}");
    assert!(!server.metrics().contains("aibridge_affinity_total{"));
}

const BLOCKING: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":40,"cache_read_input_tokens":900,"cache_creation_input_tokens":60,"output_tokens":5}}"#;

/// An Anthropic stream: usage in `message_start` and `message_delta`.
fn streamed() -> Reply {
    Reply::sse(&[
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-opus-4-5\",\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":300,\"cache_creation_input_tokens\":0,\"output_tokens\":1}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ])
}

#[test]
fn tokens_and_cache_reads_are_counted_per_key_blocking_and_streaming() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::ok(BLOCKING), streamed()]);
    let test = bridge(&mock, "");
    let server = test.serve();
    assert_eq!(ask(&server, &[], None), hint(K1));
    assert_eq!(ask(&server, &[], None), hint(K1));

    let metrics = server.metrics();
    let fingerprint = {
        let pool = server.pool();
        pool["providers"][0]["keys"][0]["fingerprint"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for (model, kind, count) in [
        ("claude-sonnet-4-5", "input", 40),
        ("claude-sonnet-4-5", "cache_read", 900),
        ("claude-sonnet-4-5", "cache_write", 60),
        ("claude-sonnet-4-5", "output", 5),
        ("claude-opus-4-5", "input", 10),
        ("claude-opus-4-5", "cache_read", 300),
        ("claude-opus-4-5", "output", 7),
    ] {
        let line = format!(
            "aibridge_tokens_total{{provider=\"anthropic\",key=\"{fingerprint}\",model=\"{model}\",kind=\"{kind}\"}} {count}"
        );
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
    let key = &server.pool()["providers"][0]["keys"][0];
    assert_eq!(key["requests"], 2);
    let tokens = &key["tokens"];
    assert_eq!(
        (
            tokens["input"].clone(),
            tokens["output"].clone(),
            tokens["cache_read"].clone()
        ),
        (json!(50), json!(12), json!(1200))
    );
    assert_eq!(tokens["cache_write"], 60);
    // 1,200 of 1,310 prompt tokens came from the cache.
    assert_eq!(tokens["cache_read_share"], 0.916);
    let status = test
        .run_with(&["pool", "status", "--server", &server.base])
        .success();
    let row = status
        .stdout
        .lines()
        .find(|line| line.contains(&hint(K1)))
        .unwrap()
        .to_owned();
    let columns: Vec<_> = row.split_whitespace().collect();
    assert_eq!(
        columns[columns.len() - 3..],
        ["1310", "12", "92%"],
        "{}",
        status.stdout
    );
    drop(server);
    let log = std::fs::read_to_string(test.path("requests.jsonl")).unwrap();
    assert!(
        log.contains("\"input_tokens\":40,\"output_tokens\":5,\"cache_read_tokens\":900,\"cache_write_tokens\":60"),
        "{log}"
    );
    assert!(
        log.contains("\"input_tokens\":10,\"output_tokens\":7,\"cache_read_tokens\":300,\"cache_write_tokens\":0"),
        "{log}"
    );
}

/// A stream that holds its key's slot until `gate` opens.
fn held_stream(gate: &std::sync::Arc<Gate>) -> Reply {
    streamed().gated(gate)
}

/// Starts a streaming request in the background and waits for its first bytes, so its key's
/// slot is taken; the handle ends when the stream does.
fn open_stream(server: &Server) -> std::thread::JoinHandle<String> {
    let url = server.url("/anthropic/v1/messages");
    let (started, first_bytes) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        use std::io::Read;
        let mut answer = client()
            .post(url)
            .body(r#"{"model":"claude-sonnet-4-5","stream":true}"#)
            .send()
            .unwrap();
        let key = answer.headers()["x-aibridge-key"]
            .to_str()
            .unwrap()
            .to_owned();
        let mut first = [0u8; 16];
        let _ = answer.read(&mut first);
        started.send(()).unwrap();
        let mut rest = String::new();
        let _ = answer.read_to_string(&mut rest);
        key
    });
    first_bytes.recv_timeout(Duration::from_secs(5)).unwrap();
    handle
}

#[test]
fn a_key_at_max_concurrency_spills_to_the_next_and_comes_back() {
    let mock = MockUpstream::start();
    let gate = Gate::new();
    mock.on_key(K1, vec![held_stream(&gate), Reply::ok(BLOCKING)]);
    let server = Test::new()
        .config(&format!(
            "[providers.anthropic]\nbase_url = \"{}\"\n\
             keys = [{{ key = \"{K1}\", max_concurrency = 1 }}, \"{K2}\", \"{K3}\"]\n",
            mock.url()
        ))
        .serve();
    let stream = open_stream(&server);
    assert_eq!(ask(&server, &[], None), hint(K2), "K1's one slot is taken");
    gate.open();
    assert_eq!(stream.join().unwrap(), hint(K1));
    assert_eq!(ask(&server, &[], None), hint(K1), "the slot is free again");
    assert!(server.all_keys_available(), "a cap marks nothing");
}

#[test]
fn with_every_key_full_a_request_waits_for_a_slot_then_gets_429() {
    let mock = MockUpstream::start();
    let gate = Gate::new();
    mock.on_key(K1, vec![held_stream(&gate), Reply::ok(BLOCKING)]);
    let server = Test::new()
        .config(&format!(
            "[providers.anthropic]\nbase_url = \"{}\"\nkeys = [\"{K1}\"]\nmax_concurrency = 1\n\
             max_wait = \"400ms\"\n",
            mock.url()
        ))
        .serve();
    let stream = open_stream(&server);
    let started = std::time::Instant::now();
    let full = client()
        .post(server.url("/anthropic/v1/messages"))
        .body(r#"{"model":"claude-sonnet-4-5"}"#)
        .send()
        .unwrap();
    assert_eq!(full.status(), 429);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "held first"
    );
    assert!(full.headers().contains_key("retry-after"));
    let body: serde_json::Value = full.json().unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    // A slot that frees during the hold serves the held request.
    let opener = {
        let gate = gate.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            gate.open();
        })
    };
    let held = client()
        .post(server.url("/anthropic/v1/messages"))
        .body(r#"{"model":"claude-sonnet-4-5"}"#)
        .send()
        .unwrap();
    assert_eq!(held.status(), 200);
    assert!(held.headers().contains_key("x-aibridge-waited-ms"));
    opener.join().unwrap();
    stream.join().unwrap();
    assert_eq!(mock.requests().len(), 2, "nothing sent while full");
}

#[test]
fn a_key_at_its_rpm_is_passed_over_for_the_rest_of_the_minute() {
    let mock = MockUpstream::start();
    let server = bridge(&mock, "rpm = 2").serve();
    let keys: Vec<_> = (0..5).map(|_| ask(&server, &[], None)).collect();
    assert_eq!(keys, [hint(K1), hint(K1), hint(K2), hint(K2), hint(K3)]);
    assert!(server.all_keys_available());
}
