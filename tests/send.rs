//! `aibridge send` against a mock upstream.

use std::io::{BufRead, BufReader, Read};

use serde_json::json;

use crate::harness::{CALLER, Gate, K1, K2, K3, MockUpstream, Reply, Test, hint};

const BODY: &str =
    r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hi"}]}"#;

#[test]
fn fails_over_401_then_429_then_succeeds_with_identical_bodies() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::status(401)])
        .on_key(K2, vec![Reply::rate_limited(30)])
        .on_key(K3, vec![Reply::ok(r#"{"id":"msg_3"}"#)]);
    let test = Test::new()
        .anthropic(&mock, &[K1, K2, K3])
        .args(["send", "-d", BODY]);
    let output = test.run().success().stdout_is(r#"{"id":"msg_3"}"#);
    assert_eq!(
        output.stderr_lines(),
        [
            format!("{}  401  marked disabled (unauthorized)", hint(K1)),
            format!(
                "{}  429  marked cooling for 30s for model claude-sonnet-4-5",
                hint(K2)
            ),
            format!("{}  200  ok", hint(K3)),
        ]
    );
    let requests = mock.requests();
    assert_eq!(mock.keys_used(), [K1, K2, K3]);
    for request in &requests {
        assert_eq!(request.body, BODY.as_bytes());
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("POST", "/v1/messages")
        );
        assert_eq!(request.headers["anthropic-version"], "2023-06-01");
        assert_eq!(request.headers["content-type"], "application/json");
        assert!(request.headers.get("authorization").is_none());
        let agent = request.headers["user-agent"].to_str().unwrap();
        assert!(agent.starts_with("aibridge/"), "{agent}");
    }
}

#[test]
fn all_keys_rate_limited_exits_3_with_retry_after() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(40)]).on_key(
        K2,
        vec![Reply::status(429).header("retry-after-ms", "12500")],
    );
    let test = Test::new().anthropic(&mock, &[K1, K2]);
    test.args(["send", "-d", BODY])
        .run()
        .code(3)
        .stdout_is("")
        .stderr_has(
            "error: all configured keys are rate-limited for model \"claude-sonnet-4-5\" (retry after 13s)",
        )
        .stderr_has("the soonest key is back at");
}

#[test]
fn json_report_for_rate_limited_pool() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(40)]);
    let output = Test::new()
        .anthropic(&mock, &[K1])
        .args(["send", "--json", "-d", BODY])
        .run()
        .code(3);
    assert_eq!(
        output.json(),
        json!({
            "provider": "anthropic",
            "status": 429,
            "outcome": "rate_limited",
            "key": null,
            "attempts": [{"key": hint(K1), "status": 429, "mark": "cooling", "cooldown_secs": 40, "model": "claude-sonnet-4-5"}],
            "retry_after_secs": 40,
            "body": {"type": "error", "error": {
                "type": "rate_limit_error",
                "message": "all configured keys are rate-limited for model \"claude-sonnet-4-5\" (retry after 40s)"}},
            "error": null
        })
    );
}

#[test]
fn all_keys_unauthorized_exits_4() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::status(401)])
        .on_key(K2, vec![Reply::status(403)]);
    let output = Test::new()
        .provider("openai", "openai", &mock, &[K1, K2])
        .args(["send", "--provider", "openai", "--json", "-d", "{}"])
        .run()
        .code(4)
        .stderr_has("error: all configured keys failed authentication");
    let report = output.json();
    assert_eq!(report["outcome"], "unauthorized");
    assert_eq!(report["status"], 502);
    assert_eq!(report["body"]["error"]["code"], "keys_exhausted");
    assert_eq!(report["attempts"][1]["mark"], "disabled");
    assert_eq!(report["retry_after_secs"], serde_json::Value::Null);
    // OpenAI keys go in a bearer header, to the default chat path.
    let requests = mock.requests();
    assert_eq!(requests[0].headers["authorization"], format!("Bearer {K1}"));
    assert_eq!(requests[0].path, "/v1/chat/completions");
}

#[test]
fn forbidden_disables_and_is_recorded() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::status(403)]);
    let test = Test::new()
        .anthropic(&mock, &[K1, K2])
        .args(["send", "-d", BODY]);
    test.run()
        .success()
        .stderr_has(&format!("{}  403  marked disabled (forbidden)", hint(K1)));
    let state = test.state();
    let record = state["providers"]["anthropic"].as_object().unwrap();
    let disabled: Vec<_> = record
        .values()
        .filter(|key| key["state"] == "disabled")
        .collect();
    assert_eq!(disabled.len(), 1);
    assert_eq!(disabled[0]["reason"], "forbidden");
    assert_eq!(disabled[0]["hint"], hint(K1));
}

#[test]
fn server_and_client_errors_are_not_retried() {
    for status in [500, 400, 529] {
        let mock = MockUpstream::start();
        mock.on_key(K1, vec![Reply::status(status)]);
        let output = Test::new()
            .anthropic(&mock, &[K1, K2])
            .args(["send", "-d", BODY])
            .run()
            .code(1)
            .stdout_has(&format!("mock status {status}"));
        assert_eq!(
            output.stderr_lines(),
            [format!(
                "{}  {status}  error, not the key's fault (not marked)",
                hint(K1)
            )]
        );
        assert_eq!(mock.keys_used(), [K1], "status {status} was retried");
    }
}

#[test]
fn caller_key_is_one_attempt_and_marks_nothing() {
    let mock = MockUpstream::start();
    mock.on_key(CALLER, vec![Reply::status(401)]);
    let test = Test::new().anthropic(&mock, &[K1, K2]).args([
        "send",
        "-d",
        BODY,
        "-H",
        &format!("x-api-key: {CALLER}"),
    ]);
    let output = test.run().code(1);
    assert_eq!(
        output.stderr_lines(),
        [format!(
            "{}  401  error (your own key, not marked)",
            hint(CALLER)
        )]
    );
    assert_eq!(mock.keys_used(), [CALLER]);
    assert!(
        !test.state_file().exists(),
        "a caller's key must not be recorded"
    );
}

#[test]
fn marks_persist_and_the_next_run_skips_the_key() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(600)])
        .on_key(K2, vec![Reply::status(401)]);
    let test = Test::new()
        .anthropic(&mock, &[K1, K2, K3])
        .args(["send", "-d", BODY]);
    test.run().success();
    assert_eq!(mock.keys_used(), [K1, K2, K3]);
    let output = test.run().success();
    assert_eq!(mock.keys_used(), [K1, K2, K3, K3]);
    assert_eq!(output.stderr_lines(), [format!("{}  200  ok", hint(K3))]);
    // --no-state neither reads nor writes the marks, so the walk starts afresh.
    let before = std::fs::read_to_string(test.state_file()).unwrap();
    let test = test.args(["--no-state"]);
    test.run().success();
    assert_eq!(mock.keys_used()[4..], [K1, K2, K3]);
    assert_eq!(std::fs::read_to_string(test.state_file()).unwrap(), before);
}

#[test]
fn state_file_flag_and_env_choose_the_file() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::status(401)]);
    let test = Test::new().anthropic(&mock, &[K1, K2]);
    let custom = test.path("custom/state.json");
    let test = test.args(["send", "--state-file", custom.to_str().unwrap()]);
    test.run().success();
    assert!(custom.exists());
    assert!(!test.state_file().exists());
}

#[test]
fn concurrent_runs_lose_no_marks() {
    let mock = MockUpstream::start();
    let keys = [
        "sk-ant-para-00000000000000000000a1",
        "sk-ant-para-00000000000000000000a2",
        "sk-ant-para-00000000000000000000a3",
        "sk-ant-para-00000000000000000000a4",
    ];
    for key in keys {
        mock.on_key(key, vec![Reply::rate_limited(300)]);
    }
    let test = Test::new().anthropic(&mock, &[K1]);
    let state = test.path("shared-state.json");
    let children: Vec<_> = keys
        .iter()
        .map(|key| {
            let run = Test::new().anthropic(&mock, &[key, K1]).args([
                "send",
                "--state-file",
                state.to_str().unwrap(),
                "-d",
                BODY,
            ]);
            (run.spawn(), run)
        })
        .collect();
    for (child, _run) in children {
        assert!(child.wait_with_output().unwrap().status.success());
    }
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let cooling = state["providers"]["anthropic"]
        .as_object()
        .unwrap()
        .values()
        .filter(|key| key["cooling"]["claude-sonnet-4-5"]["until"].is_string())
        .count();
    assert_eq!(cooling, 4);
}

#[test]
fn sse_is_streamed_as_it_arrives() {
    let mock = MockUpstream::start();
    let gate = Gate::new();
    let events = [
        "event: message_start\ndata: {\"type\":\"message_start\"}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\"}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ];
    mock.on_key(K1, vec![Reply::sse(&events).gated(&gate)]);
    let test = Test::new().anthropic(&mock, &[K1]).args([
        "send",
        "-d",
        r#"{"stream":true,"messages":[]}"#,
    ]);
    let mut child = test.spawn();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    // The mock holds the rest of the stream until this line has arrived.
    assert_eq!(first, "event: message_start\n");
    gate.open();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(first + &rest, events.concat());
}

#[test]
fn a_cut_stream_is_an_error_not_a_clean_end() {
    let mock = MockUpstream::start();
    mock.on_key(
        K1,
        vec![Reply::sse(&["event: message_start\ndata: {}\n\n"]).cut()],
    );
    Test::new()
        .anthropic(&mock, &[K1])
        .args(["send", "-d", "{}"])
        .run()
        .code(5)
        .stdout_is("event: message_start\ndata: {}\n\n")
        .stderr_has("error: upstream stream interrupted");
}

#[test]
fn unreachable_upstream_exits_5_and_marks_nothing() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let test = Test::new()
        .config(&format!("[providers.anthropic]\nbase_url = \"http://127.0.0.1:{port}\"\nkeys = [\"{K1}\", \"{K2}\"]\n"))
        .args(["send", "-d", BODY]);
    let output = test.run().code(5).stderr_has("error: upstream unreachable");
    // Refused: the request never left, so it was tried once more, as an attempt of its own,
    // and each attempt says it could not connect.
    assert_eq!(
        output.stderr_lines()[..2],
        [
            format!(
                "{}  ---  cannot connect to the upstream; trying once more",
                hint(K1)
            ),
            format!("{}  ---  cannot connect to the upstream", hint(K1)),
        ]
    );
    let state = test.state();
    assert_eq!(
        state["providers"]["anthropic"].as_object().unwrap().len(),
        1
    );
    assert!(
        state["providers"]["anthropic"]
            .as_object()
            .unwrap()
            .values()
            .all(|key| key["state"] == "available")
    );
    let json = test.args(["--json"]).run().code(5).json();
    assert_eq!(json["outcome"], "network_error");
}

#[test]
fn wait_retries_when_the_soonest_key_is_back() {
    let mock = MockUpstream::start();
    mock.on_key(
        K1,
        vec![
            Reply::status(429).header("retry-after-ms", "300"),
            Reply::ok(r#"{"id":"later"}"#),
        ],
    );
    let output = Test::new()
        .anthropic(&mock, &[K1])
        .args(["send", "--wait", "5s", "-d", BODY])
        .run()
        .success()
        .stdout_is(r#"{"id":"later"}"#);
    assert_eq!(
        output.stderr_lines(),
        [
            format!(
                "{}  429  marked cooling for 1s for model claude-sonnet-4-5",
                hint(K1)
            ),
            "waiting 1s for a key (model claude-sonnet-4-5)".to_owned(),
            format!("{}  200  ok", hint(K1)),
        ]
    );
    assert_eq!(mock.keys_used(), [K1, K1]);
}

#[test]
fn wait_gives_up_when_no_key_is_back_in_time() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(120)]);
    Test::new()
        .anthropic(&mock, &[K1])
        .args(["send", "--wait", "1s", "-d", BODY])
        .run()
        .code(3);
    assert_eq!(mock.keys_used(), [K1]);
}

#[test]
fn json_success_report() {
    let mock = MockUpstream::start();
    mock.on_key(
        K1,
        vec![Reply::ok(r#"{"id":"msg_1","usage":{"input_tokens":3}}"#)],
    );
    let report = Test::new()
        .anthropic(&mock, &[K1])
        .args(["send", "--json", "-d", BODY])
        .run()
        .success()
        .json();
    assert_eq!(
        report,
        json!({"provider": "anthropic", "status": 200, "outcome": "ok", "key": hint(K1),
               "attempts": [{"key": hint(K1), "status": 200, "mark": null, "cooldown_secs": null, "model": null}],
               "retry_after_secs": null,
               "body": {"id": "msg_1", "usage": {"input_tokens": 3}},
               "error": null})
    );
}

#[test]
fn keys_flags_replace_the_configured_pool() {
    let mock = MockUpstream::start();
    mock.on_key(K2, vec![Reply::status(401)]);
    let test = Test::new().anthropic(&mock, &[K1]);
    std::fs::write(test.path("keys.txt"), format!("# rotation\n\n{K3}\n")).unwrap();
    test.args(["send", "-d", BODY, "--key", K2, "--keys-file", "keys.txt"])
        .run()
        .success();
    assert_eq!(mock.keys_used(), [K2, K3]);
}

#[test]
fn env_keys_and_base_url_override_the_file() {
    let mock = MockUpstream::start();
    Test::new()
        .config("[providers.anthropic]\nbase_url = \"http://127.0.0.1:9\"\n")
        .env("AIBRIDGE_ANTHROPIC_BASE_URL", &mock.url())
        .env("AIBRIDGE_ANTHROPIC_KEYS", &format!("{K1},{K2}"))
        .args(["send", "-d", BODY])
        .run()
        .success();
    assert_eq!(mock.keys_used(), [K1]);
}

#[test]
fn body_from_file_and_stdin_and_get_without_body() {
    let mock = MockUpstream::start();
    let test = Test::new().anthropic(&mock, &[K1]);
    std::fs::write(test.path("body.json"), BODY).unwrap();
    Test::new()
        .anthropic(&mock, &[K1])
        .args(["send", "-d", "@-"])
        .stdin(BODY)
        .run()
        .success();
    test.args(["send", "-d", "@body.json"]).run().success();
    Test::new()
        .anthropic(&mock, &[K1])
        .args(["send", "/v1/models?limit=5"])
        .run()
        .success();
    let requests = mock.requests();
    assert_eq!(requests[0].body, BODY.as_bytes());
    assert_eq!(requests[1].body, BODY.as_bytes());
    assert_eq!(
        (requests[2].method.as_str(), requests[2].path.as_str()),
        ("GET", "/v1/models?limit=5")
    );
    Test::new()
        .anthropic(&mock, &[K1])
        .args(["send", "-d", "@missing.json"])
        .run()
        .code(2)
        .one_line_error("cannot read request body from missing.json");
}

#[test]
fn corrupt_state_file_is_moved_aside_and_the_run_goes_on() {
    let mock = MockUpstream::start();
    let test = Test::new()
        .anthropic(&mock, &[K1])
        .args(["send", "-d", BODY]);
    std::fs::create_dir_all(test.state_file().parent().unwrap()).unwrap();
    std::fs::write(test.state_file(), "{ this is not json").unwrap();
    test.run().success().stderr_has("is corrupt");
    assert_eq!(test.state()["version"], 1);
    let aside: Vec<_> = std::fs::read_dir(test.state_file().parent().unwrap())
        .unwrap()
        .filter_map(|entry| entry.unwrap().file_name().into_string().ok())
        .filter(|name| name.contains(".corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the corrupt file is kept, not lost");
}

#[test]
fn no_keys_unknown_and_disabled_providers_exit_2() {
    let mock = MockUpstream::start();
    Test::new()
        .args(["send", "-d", BODY])
        .run()
        .code(2)
        .one_line_error("AIBRIDGE_ANTHROPIC_KEYS");
    Test::new()
        .args(["send", "--provider", "gemini"])
        .run()
        .code(2)
        .one_line_error(
            "unknown provider \"gemini\" (configured: anthropic, bedrock, copilot, openai)",
        );
    Test::new()
        .config(&format!(
            "[providers.anthropic]\nbase_url = \"{}\"\nkeys = [\"{K1}\"]\nenabled = false\n",
            mock.url()
        ))
        .args(["send", "-d", BODY])
        .run()
        .code(2)
        .one_line_error("provider_disabled: AI provider \"anthropic\" is disabled");
    assert!(mock.requests().is_empty());
}

#[test]
fn copilot_is_bring_your_own_key() {
    let mock = MockUpstream::start();
    let test = Test::new().config(&format!(
        "[providers.copilot]\nbase_url = \"{}\"\n",
        mock.url()
    ));
    test.args(["send", "--provider", "copilot", "-d", "{}"])
        .run()
        .code(2)
        .one_line_error("bring-your-own-key only");
    Test::new()
        .config(&format!(
            "[providers.copilot]\nbase_url = \"{}\"\n",
            mock.url()
        ))
        .args([
            "send",
            "--provider",
            "copilot",
            "-d",
            "{}",
            "-H",
            &format!("Authorization: Bearer {CALLER}"),
        ])
        .run()
        .success();
    let requests = mock.requests();
    assert_eq!(requests[0].path, "/chat/completions");
    assert_eq!(
        requests[0].headers["authorization"],
        format!("Bearer {CALLER}")
    );
}

#[test]
fn a_connection_dropped_after_it_was_made_is_not_sent_again() {
    // The upstream accepted the connection, so it may have read the request: sending it
    // again could bill it twice.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let run = Test::new()
        .config(&format!(
            "[providers.anthropic]\nbase_url = \"{url}\"\nkeys = [\"{K1}\", \"{K2}\"]\n"
        ))
        .args(["send", "-d", BODY]);
    let child = run.spawn();
    let (stream, _) = listener.accept().unwrap();
    drop(stream);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(5));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with(&format!("{}  ---  no response\n", hint(K1))),
        "{stderr}"
    );
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "a second connection was made");
}

#[test]
fn model_flag_sets_the_body_model_for_json_providers() {
    let mock = MockUpstream::start();
    let test = Test::new().anthropic(&mock, &[K1]);
    test.run_with(&[
        "send",
        "--no-state",
        "--model",
        "claude-opus-4-1",
        "-d",
        BODY,
    ])
    .success();
    test.run_with(&["send", "--no-state", "-m", "claude-haiku-4-5"])
        .success();
    let bodies: Vec<serde_json::Value> = mock
        .requests()
        .iter()
        .map(|request| serde_json::from_slice(&request.body).unwrap())
        .collect();
    assert_eq!(bodies[0]["model"], "claude-opus-4-1", "replaced");
    assert_eq!(bodies[0]["max_tokens"], 64, "the rest kept");
    assert_eq!(
        bodies[1],
        json!({"model": "claude-haiku-4-5"}),
        "added to an empty body"
    );
    assert_eq!(mock.requests()[1].method, "POST", "a body is posted");
    test.run_with(&["send", "--no-state", "--model", "m", "-d", "[1]"])
        .code(2)
        .one_line_error("--model needs a JSON object body");
    assert_eq!(mock.requests().len(), 2);
}

#[test]
fn verbose_send_says_each_mark_once() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::status(401)])
        .on_key(K2, vec![Reply::rate_limited(30)])
        .on_key(K3, vec![Reply::ok(r#"{"id":"msg_3"}"#)]);
    let output = Test::new()
        .anthropic(&mock, &[K1, K2, K3])
        .args(["send", "-v", "--no-state", "-d", BODY])
        .run()
        .success();
    assert_eq!(
        output.stderr.matches("cooling").count(),
        1,
        "{}",
        output.stderr
    );
    assert_eq!(
        output.stderr.matches("disabled").count(),
        1,
        "{}",
        output.stderr
    );
}
