//! `aibridge pool status` and `aibridge pool reset`, from the state file and a live server.

use serde_json::Value;

use crate::harness::{K1, K2, K3, MockUpstream, Reply, Test, client, dead_port, hint};

/// A config at the mock whose `listen` address has no server, so the state file is read.
fn offline(mock: &MockUpstream, keys: &[&str], extra: &str) -> Test {
    let keys: Vec<_> = keys.iter().map(|key| format!("{key:?}")).collect();
    Test::new().config(&format!(
        "listen = \"127.0.0.1:{}\"\n{extra}\n[providers.anthropic]\nbase_url = \"{}\"\nkeys = [{}]\n",
        dead_port(),
        mock.url(),
        keys.join(", ")
    ))
}

/// Marks K1 cooling and K2 disabled by sending one request.
fn mark_two(test: &Test) {
    test.run_with(&["send", "-d", "{}"]).success();
}

fn marked_mock() -> MockUpstream {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(600)])
        .on_key(K2, vec![Reply::status(401)]);
    mock
}

#[test]
fn status_from_the_state_file() {
    let mock = marked_mock();
    let test = offline(&mock, &[K1, K2, K3], "");
    mark_two(&test);
    let output = test.args(["pool", "status"]).run().success();
    let lines: Vec<&str> = output.stdout.lines().collect();
    assert!(lines[0].starts_with("source: state file "), "{}", lines[0]);
    assert!(
        lines[0].ends_with("are as last recorded there, and may be old)"),
        "{}",
        lines[0]
    );
    assert!(lines[1].starts_with("PROVIDER"), "{}", lines[1]);
    let cooling = format!("anthropic  {}  cooling ", hint(K1));
    assert!(lines[2].starts_with(&cooling), "{}", lines[2]);
    assert!(
        lines[2].contains("cooling 10m ") || lines[2].contains("cooling 9m 5"),
        "{}",
        lines[2]
    );
    assert!(lines[2].contains("429"));
    assert!(
        lines[3].contains("disabled (401 unauthorized)  401"),
        "{}",
        lines[3]
    );
    assert!(
        lines[3].contains("just now") || lines[3].contains(" ago "),
        "{}",
        lines[3]
    );
    let columns: Vec<&str> = lines[4].split_whitespace().collect();
    assert_eq!(
        columns[..4],
        ["anthropic", hint(K3).as_str(), "available", "200"],
        "{}",
        lines[4]
    );
}

#[test]
fn status_exits_1_when_a_provider_has_no_available_key() {
    let mock = marked_mock();
    let test = offline(&mock, &[K1, K2], "");
    test.run_with(&["send", "-d", "{}"]).code(3);
    let output = test.args(["pool", "status", "--json"]).run().code(1);
    let report = output.json();
    let anthropic = &report["providers"][0];
    assert_eq!(anthropic["name"], "anthropic");
    assert_eq!(anthropic["keys"][0]["state"], "cooling");
    assert_eq!(anthropic["keys"][1]["reason"], "unauthorized");
    assert!(
        output.stderr.starts_with("source: state file"),
        "{}",
        output.stderr
    );
}

#[test]
fn status_from_a_live_server_matches_its_pool_route() {
    let mock = marked_mock();
    const TOKEN: &str = "tok-admin-00000000000000000000001";
    let test = offline(
        &mock,
        &[K1, K2, K3],
        &format!("access_tokens = [\"{TOKEN}\"]"),
    )
    .secret(TOKEN);
    let server = test.serve();
    let response = server.post_message_with(&[("x-aibridge-token", TOKEN)]);
    assert_eq!(response.status(), 200);
    let output = test
        .args([
            "pool",
            "status",
            "--json",
            "--provider",
            "anthropic",
            "--server",
            &server.base,
        ])
        .run()
        .success();
    assert_eq!(
        output.stderr.trim(),
        format!("source: server {}", server.base)
    );
    let live: Value = client()
        .get(server.url("/_aibridge/pool"))
        .header("x-aibridge-token", TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let mut expected = live.clone();
    expected["providers"]
        .as_array_mut()
        .unwrap()
        .retain(|provider| provider["name"] == "anthropic");
    assert_eq!(output.json(), expected);
    assert_eq!(output.json()["providers"][0]["keys"][2]["requests"], 1);
}

#[test]
fn status_finds_the_server_on_the_configured_address() {
    let mock = marked_mock();
    let port = dead_port();
    let test = Test::new().config(&format!(
        "listen = \"127.0.0.1:{port}\"\n[providers.anthropic]\nbase_url = \"{}\"\nkeys = [\"{K1}\", \"{K2}\"]\n",
        mock.url()
    ));
    let _server = test.serve_with(&[]);
    test.args(["pool", "status"])
        .run()
        .success()
        .stdout_has(&format!("source: server http://127.0.0.1:{port}"));
}

#[test]
fn status_usage_errors() {
    Test::new()
        .args(["pool", "status", "--provider", "gemini"])
        .run()
        .code(2)
        .one_line_error("unknown provider \"gemini\"");
    Test::new()
        .args([
            "pool",
            "status",
            "--server",
            &format!("http://127.0.0.1:{}", dead_port()),
        ])
        .run()
        .code(2)
        .one_line_error("cannot read the pool from http://127.0.0.1:");
}

#[test]
fn reset_clears_all_one_provider_or_one_key() {
    let mock = marked_mock();
    let test = offline(&mock, &[K1, K2, K3], "");
    mark_two(&test);
    let reset = |args: &[&str]| {
        let output = test.run_with(&[&["pool", "reset"][..], args].concat());
        (output.code, output.stdout, output.stderr)
    };
    let (code, stdout, _) = reset(&["--key", &hint(K2)]);
    assert_eq!(code, 0);
    let place = format!("state file {}", test.state_file().display());
    assert_eq!(
        stdout,
        format!("{place}: cleared anthropic {} (was disabled)\n", hint(K2))
    );
    let (code, stdout, _) = reset(&["--provider", "openai"]);
    assert_eq!((code, stdout), (0, format!("{place}: nothing to clear\n")));
    let (code, stdout, _) = reset(&[]);
    assert_eq!(
        (code, stdout),
        (
            0,
            format!("{place}: cleared anthropic {} (was cooling)\n", hint(K1))
        )
    );
    let (code, _, stderr) = reset(&["--key", "sk-z...zzzz"]);
    assert_eq!(code, 2);
    assert_eq!(stderr, "error: no key matches \"sk-z...zzzz\"\n");
}

#[test]
fn reset_refuses_an_ambiguous_hint() {
    let twin_a = "sk-ant-twin-000000000000000000000aaaa-zz99";
    let twin_b = "sk-ant-twin-000000000000000000000bbbb-zz99";
    let mock = MockUpstream::start();
    Test::new()
        .anthropic(&mock, &[twin_a, twin_b])
        .secret(twin_a)
        .secret(twin_b)
        .args(["pool", "reset", "--key", "sk-a...zz99"])
        .run()
        .code(2)
        .one_line_error("\"sk-a...zz99\" matches 2 keys (anthropic:");
}

#[test]
fn reset_reaches_the_running_server_too() {
    let mock = marked_mock();
    let test = offline(&mock, &[K1, K2, K3], "");
    let server = test.serve();
    let response = server.post_message();
    assert_eq!(response.status(), 200);
    server.wait_for_log("key disabled");
    let output = test
        .args([
            "pool",
            "reset",
            "--provider",
            "anthropic",
            "--server",
            &server.base,
        ])
        .run()
        .success();
    let server_lines: Vec<_> = output
        .stdout
        .lines()
        .filter(|line| line.starts_with("server "))
        .collect();
    assert_eq!(server_lines.len(), 2, "{}", output.stdout);
    assert!(server.all_keys_available());
}

#[test]
fn serve_revives_a_disabled_key_whose_probe_succeeds() {
    let mock = MockUpstream::start();
    // The first request disables K1; its next request, the recheck probe, succeeds.
    mock.on_key(K1, vec![Reply::status(401), Reply::ok(r#"{"data":[]}"#)]);
    let test = offline(&mock, &[K1, K2], "").config(&format!(
        "[providers.anthropic]\nbase_url = \"{}\"\nkeys = [\"{K1}\", \"{K2}\"]\nrecheck_disabled = \"200ms\"\n",
        mock.url()
    ));
    let server = test.serve();
    let response = server.post_message();
    assert_eq!(response.headers()["x-aibridge-key"], hint(K2).as_str());
    server.wait_for_log("key revived");
    let pool = server.pool();
    assert_eq!(pool["providers"][0]["keys"][0]["state"], "available");
    let probe = &mock.requests()[2];
    assert_eq!(
        (
            probe.method.as_str(),
            probe.path.as_str(),
            probe.key.as_deref()
        ),
        ("GET", "/v1/models", Some(K1))
    );
    let response = server.post_message();
    assert_eq!(response.headers()["x-aibridge-key"], hint(K1).as_str());
}
