//! `aibridge probe-keys` against a mock upstream.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{K1, K2, K3, K4, K5, MockUpstream, Reply, Test, hint};

/// K1 valid, K2 invalid (401), K3 rate-limited, K4 a server error, K5 too slow.
fn mixed_mock() -> MockUpstream {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::ok(r#"{"data":[]}"#)])
        .on_key(
            K2,
            vec![Reply::json(401, r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#)],
        )
        .on_key(K3, vec![Reply::rate_limited(30)])
        .on_key(K4, vec![Reply::status(500)])
        .on_key(K5, vec![Reply::Slow(Duration::from_secs(3))]);
    mock
}

#[test]
fn every_verdict_in_a_table() {
    let mock = mixed_mock();
    let output = Test::new()
        .anthropic(&mock, &[K1, K2, K3, K4, K5])
        .args(["probe-keys", "--timeout", "500ms"])
        .run()
        .code(1);
    let lines: Vec<&str> = output.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{}", output.stdout);
    assert!(
        lines[0].starts_with("PROVIDER   KEY          VERDICT"),
        "{}",
        lines[0]
    );
    let expect = [
        (K1, "valid", ""),
        (K2, "invalid", "401 unauthorized: invalid x-api-key"),
        (K3, "rate-limited", "retry after 30s"),
        (K4, "error", "HTTP 500: mock status 500"),
        (K5, "error", "no response within 500ms"),
    ];
    for (line, (key, verdict, detail)) in lines[1..].iter().zip(expect) {
        assert!(
            line.starts_with(&format!("anthropic  {}  {verdict}", hint(key))),
            "{line}"
        );
        assert!(line.contains(detail), "{line}");
        assert!(line.ends_with("ms"), "{line}");
    }
    // One probe per key, a models list, with the provider's auth; never a failover.
    let requests = mock.requests();
    assert_eq!(requests.len(), 5);
    for request in &requests {
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("GET", "/v1/models")
        );
        assert_eq!(request.headers["anthropic-version"], "2023-06-01");
    }
    // Not a terminal: no progress bar.
    assert_eq!(output.stderr, "");
}

#[test]
fn json_output_and_state_written() {
    let mock = mixed_mock();
    let test = Test::new()
        .anthropic(&mock, &[K1, K2, K3, K4])
        .args(["probe-keys", "--json"]);
    let output = test.run().code(1);
    let report = output.json();
    let entries = report.as_array().unwrap();
    assert_eq!(entries.len(), 4);
    assert_eq!(entries[1]["provider"], "anthropic");
    assert_eq!(entries[1]["key"], hint(K2));
    assert_eq!(entries[1]["fingerprint"].as_str().unwrap().len(), 16);
    assert_eq!(entries[1]["verdict"], "invalid");
    assert_eq!(entries[1]["status"], 401);
    assert_eq!(entries[2]["verdict"], "rate-limited");
    assert_eq!(entries[3]["verdict"], "error");
    assert!(entries[0]["latency_ms"].is_u64());
    let verdicts: Vec<&Value> = entries.iter().map(|entry| &entry["verdict"]).collect();
    assert_eq!(verdicts, ["valid", "invalid", "rate-limited", "error"]);
    assert_eq!(output.stderr, "", "no progress bar with --json");

    let state = test.state();
    let records = state["providers"]["anthropic"].as_object().unwrap();
    let by_hint = |key: &str| {
        records
            .values()
            .find(|record| record["hint"] == hint(key))
            .unwrap()
            .clone()
    };
    assert_eq!(by_hint(K2)["state"], "disabled");
    assert_eq!(by_hint(K3)["state"], "cooling");
    assert_eq!(by_hint(K4)["state"], "available");
}

#[test]
fn a_valid_probe_brings_a_key_back() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::status(401), Reply::ok("{}")]);
    let test = Test::new().anthropic(&mock, &[K1, K2]);
    let k1_state = |test: &Test| {
        let state = test.state();
        let records = state["providers"]["anthropic"].as_object().unwrap().clone();
        let record = records
            .values()
            .find(|record| record["hint"] == hint(K1))
            .unwrap();
        record["state"].as_str().unwrap().to_owned()
    };
    test.run_with(&["send", "-d", "{}"]).success();
    assert_eq!(k1_state(&test), "disabled");
    test.run_with(&["probe-keys", "--no-state"]).success();
    assert_eq!(
        k1_state(&test),
        "disabled",
        "--no-state leaves the file alone"
    );
    test.run_with(&["probe-keys"]).success();
    assert_eq!(
        k1_state(&test),
        "available",
        "a valid verdict clears the mark"
    );
}

#[test]
fn keys_file_with_comments_and_duplicates() {
    let mock = MockUpstream::start();
    let test = Test::new().anthropic(&mock, &[]);
    std::fs::write(
        test.path("keys.txt"),
        format!("# rotation list\n{K1}\n\n  {K2}  \n# old\n{K1}\n"),
    )
    .unwrap();
    let output = test
        .args(["probe-keys", "--keys-file", "keys.txt", "--key", K3])
        .run()
        .success();
    assert_eq!(
        output.stderr.trim(),
        "note: key #4 duplicates key #2; probed once"
    );
    // Probes run concurrently, so only the set is fixed.
    let mut used = mock.keys_used();
    used.sort();
    assert_eq!(used, [K1, K2, K3]);

    let mock = MockUpstream::start();
    Test::new()
        .provider("openai", "openai", &mock, &[])
        .args(["probe-keys", "--provider", "openai", "--keys-file", "-"])
        .stdin(&format!("{K4}\n{K5}\n"))
        .run()
        .success()
        .stdout_has("openai");
    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    for request in requests {
        let key = request.key.clone().unwrap();
        assert!(key == K4 || key == K5);
        assert_eq!(request.headers["authorization"], format!("Bearer {key}"));
        assert_eq!(request.path, "/v1/models");
    }
}

#[test]
fn usage_errors_exit_2() {
    Test::new()
        .args(["probe-keys"])
        .run()
        .code(2)
        .one_line_error("no keys to probe");
    Test::new()
        .args(["probe-keys", "--provider", "gemini"])
        .run()
        .code(2)
        .one_line_error("unknown provider \"gemini\"");
    Test::new()
        .args([
            "probe-keys",
            "--provider",
            "anthropic",
            "--provider",
            "openai",
            "--key",
            K1,
        ])
        .run()
        .code(2)
        .one_line_error("name one --provider");
    Test::new()
        .args(["probe-keys", "--keys-file", "missing.txt"])
        .run()
        .code(2)
        .one_line_error("cannot read keys file missing.txt");
}
