//! The CLI's corners, as a new user and a CI script meet them: pool commands against a server,
//! `send` in scripts, closed pipes, messages, the serve banner, generated files.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{K1, K2, K4, K5, MockUpstream, Reply, Test, client, dead_port, hint};

const BODY: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}"#;

/// A config whose `listen` address has no server, with `providers` TOML after it.
fn offline(providers: &str) -> Test {
    Test::new().config(&format!(
        "listen = \"127.0.0.1:{}\"\n{providers}",
        dead_port()
    ))
}

fn provider(name: &str, mock: &MockUpstream, keys: &[&str]) -> String {
    let keys: Vec<_> = keys.iter().map(|key| format!("{key:?}")).collect();
    format!(
        "[providers.{name}]\nkind = \"anthropic\"\nbase_url = \"{}\"\nkeys = [{}]\n",
        mock.url(),
        keys.join(", ")
    )
}

// ---- pool status and pool reset ----

#[test]
fn pool_status_checks_the_provider_against_the_servers() {
    let mock = MockUpstream::start();
    let server_side = offline(&provider("team", &mock, &[K4]));
    let server = server_side.serve();
    let status = |provider: &str| {
        let args = [
            "pool",
            "status",
            "--server",
            &server.base,
            "--provider",
            provider,
        ];
        offline("").args(args).run()
    };
    let output = status("team").success();
    assert!(output.stdout.contains(&hint(K4)), "{}", output.stdout);
    status("nope").code(2).one_line_error(
        "unknown provider \"nope\" (known: anthropic, bedrock, copilot, openai, team)",
    );
}

#[test]
fn pool_reset_finds_a_key_only_the_server_holds() {
    let mock = MockUpstream::start();
    mock.on_key(K4, vec![Reply::status(401), Reply::ok("{}")]);
    let server = offline(&provider("team", &mock, &[K4, K5])).serve();
    let marked = client()
        .post(server.url("/team/v1/messages"))
        .body(BODY)
        .send()
        .unwrap();
    assert_eq!(marked.status(), 200);
    let output = offline("")
        .args([
            "pool",
            "reset",
            "--server",
            &server.base,
            "--key",
            &hint(K4),
        ])
        .run()
        .success();
    assert!(
        output.stdout.contains(&format!(
            "server {}: cleared team {} (was disabled)",
            server.base,
            hint(K4)
        )),
        "{}",
        output.stdout
    );
    assert!(server.all_keys_available());
}

#[test]
fn an_ended_cooldown_is_available_not_cleared() {
    let mock = MockUpstream::start();
    let brief = || Reply::status(429).header("retry-after-ms", "200");
    mock.on_key(K1, vec![brief(), Reply::ok("{}")]);
    let test = offline(&provider("anthropic", &mock, &[K1, K2]));
    test.run_with(&["send", "-d", BODY]).success();
    std::thread::sleep(Duration::from_millis(300));
    let status = test.run_with(&["pool", "status"]).success();
    let k1 = status
        .stdout
        .lines()
        .find(|line| line.contains(&hint(K1)))
        .unwrap();
    assert!(k1.contains("  available  "), "{k1}");
    let reset = test.run_with(&["pool", "reset"]).success();
    assert!(
        reset.stdout.ends_with(": nothing to clear\n"),
        "{}",
        reset.stdout
    );
    // The same on a server, key-wide and for one model.
    mock.on_key(K1, vec![brief(), brief(), Reply::ok("{}")]);
    let server = test.serve();
    for body in [BODY, "{}"] {
        let response = client()
            .post(server.url("/anthropic/v1/messages"))
            .body(body)
            .send();
        assert_eq!(response.unwrap().status(), 200);
    }
    assert_eq!(
        mock.keys_used()[2..],
        [K1, K2, K1, K2],
        "a model mark, then a key-wide one"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(server.all_keys_available(), "{}", server.pool());
    let reset = test
        .run_with(&["pool", "reset", "--server", &server.base])
        .success();
    assert!(
        reset
            .stdout
            .ends_with(&format!("server {}: nothing to clear\n", server.base)),
        "{}",
        reset.stdout
    );
}

#[test]
fn offline_status_shows_keys_and_providers_the_config_lacks() {
    let mock = MockUpstream::start();
    mock.on_key(K4, vec![Reply::status(401)]);
    let state = tempfile::tempdir().unwrap();
    let state_file = state.path().join("state.json");
    let state_file = state_file.to_str().unwrap();
    // A probe of keys that are in no pool, and a provider a later config drops.
    let earlier = offline(&provider("anthropic", &mock, &[K1])).args([
        "probe-keys",
        "--state-file",
        state_file,
        "--key",
        K4,
    ]);
    earlier.run().code(1);
    let team = offline(&provider("team", &mock, &[K5]));
    team.run_with(&[
        "probe-keys",
        "--state-file",
        state_file,
        "--provider",
        "team",
    ])
    .success();

    let now = offline(&provider("anthropic", &mock, &[K1]));
    let output = now
        .run_with(&["pool", "status", "--state-file", state_file])
        .success();
    let k4 = output
        .stdout
        .lines()
        .find(|line| line.contains(&hint(K4)))
        .unwrap();
    assert!(
        k4.contains("(not in config)") && k4.contains("disabled (401"),
        "{k4}"
    );
    let counts: Vec<&str> = k4.split_whitespace().rev().take(2).collect();
    assert_eq!(counts, ["-", "-"], "counts the file lacks: {k4}");
    let k5 = output
        .stdout
        .lines()
        .find(|line| line.contains(&hint(K5)))
        .unwrap();
    assert!(k5.starts_with("team (not in config)"), "{k5}");
    let report = now
        .run_with(&["pool", "status", "--json", "--state-file", state_file])
        .success()
        .json();
    let team = report["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|provider| provider["name"] == "team")
        .unwrap();
    assert_eq!(team["configured"], false);
    assert_eq!(team["keys"][0]["requests"], Value::Null);
}

#[test]
fn an_ambiguous_hint_across_providers_suggests_provider() {
    let twin_a = "sk-ant-twin-000000000000000000000aaaa-zz99";
    let twin_b = "sk-ant-twin-000000000000000000000bbbb-zz99";
    let mock = MockUpstream::start();
    let providers = provider("one", &mock, &[twin_a]) + &provider("two", &mock, &[twin_b]);
    let test = offline(&providers).secret(twin_a).secret(twin_b);
    test.run_with(&["pool", "reset", "--key", "sk-a...zz99"])
        .code(2)
        .one_line_error("or name the provider with --provider");
    test.run_with(&["pool", "reset", "--key", "sk-a...zz99", "--provider", "two"])
        .success();
}

#[test]
fn a_server_that_wants_a_token_is_named_so() {
    let server = Test::new()
        .env("AIBRIDGE_ACCESS_TOKENS", "tok-secret-0123456789abcdef")
        .secret("tok-secret-0123456789abcdef")
        .serve();
    offline("")
        .args(["pool", "status", "--server", &server.base])
        .run()
        .code(2)
        .one_line_error("AIBRIDGE_ACCESS_TOKENS");
}

// ---- send in scripts ----

#[test]
fn send_json_body_key_and_error_are_always_shaped_alike() {
    let mock = MockUpstream::start();
    mock.on_key(
        K1,
        vec![Reply::Plain {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: "plain words".into(),
        }],
    );
    let test = offline(&provider("anthropic", &mock, &[K1]));
    let text = test
        .run_with(&["send", "--json", "-d", BODY])
        .success()
        .json();
    assert_eq!(text["body"], "plain words");
    assert_eq!(text["key"], hint(K1));
    assert_eq!(text["error"], Value::Null);

    let down = offline(&format!(
        "[providers.anthropic]\nbase_url = \"http://127.0.0.1:{}\"\nkeys = [{K1:?}]\n",
        dead_port()
    ));
    let unreachable = down
        .run_with(&["send", "--json", "-d", BODY])
        .code(5)
        .json();
    assert_eq!(unreachable["error"]["kind"], "unreachable");
    assert!(
        unreachable["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("upstream unreachable")
    );
    assert_eq!(
        (&unreachable["body"], &unreachable["key"]),
        (&Value::Null, &Value::Null)
    );

    let cut = MockUpstream::start();
    cut.on_key(K2, vec![Reply::sse(&["event: ping\ndata: {}\n\n"]).cut()]);
    let cut_test = offline(&provider("anthropic", &cut, &[K2]));
    let report = cut_test
        .run_with(&["send", "--json", "-d", BODY])
        .code(5)
        .json();
    assert_eq!(report["error"]["kind"], "stream_interrupted");
    assert_eq!(report["key"], hint(K2));
    assert_eq!(report["body"], Value::Null);
}

#[test]
fn verbose_send_shows_headers_with_the_key_masked_and_quiet_keeps_the_error() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(30)]);
    let test = offline(&provider("anthropic", &mock, &[K1, K2]));
    let output = test.run_with(&["send", "-v", "-d", BODY]).success();
    for line in [
        "  > POST /v1/messages".to_owned(),
        format!("  > x-api-key: {}", hint(K1)),
        format!("  > x-api-key: {}", hint(K2)),
        "  < retry-after: 30".to_owned(),
        "  < content-type: application/json".to_owned(),
    ] {
        assert!(
            output.stderr.contains(&line),
            "{line:?} missing:\n{}",
            output.stderr
        );
    }
    let quiet = offline(&provider("anthropic", &mock, &[K1]));
    let output = quiet.run_with(&["send", "-q", "-d", BODY]).code(3);
    let lines = output.stderr_lines();
    assert_eq!(lines.len(), 1, "{}", output.stderr);
    assert!(lines[0].starts_with("error: all configured keys are rate-limited"));
}

#[test]
fn a_path_that_is_not_a_path_is_a_usage_error() {
    let mock = MockUpstream::start();
    offline(&provider("anthropic", &mock, &[K1]))
        .args(["send", "/a b", "-d", BODY])
        .run()
        .code(2)
        .one_line_error("invalid PATH \"/a b\"");
    assert!(mock.requests().is_empty());
}

#[test]
fn wait_counts_down_on_a_terminal() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(2), Reply::ok("{}")]);
    let test = offline(&provider("anthropic", &mock, &[K1]));
    let command = format!("{} send --wait 5s -d '{BODY}'", crate::harness::BIN);
    // `script` gives the command a terminal, as a person's shell would.
    let mut script = std::process::Command::new("script");
    script.args(["-qec", &command, "/dev/null"]);
    let output = test.env("TERM", "xterm").run_other(script);
    assert_eq!(output.code, 0, "{}{}", output.stdout, output.stderr);
    for left in ["waiting 2s for a key", "waiting 1s for a key"] {
        assert!(
            output.stdout.contains(left),
            "{left:?} missing:\n{}",
            output.stdout
        );
    }
}

// ---- everywhere ----

#[test]
fn a_closed_stdout_is_success() {
    let mock = MockUpstream::start();
    let many: Vec<String> = (0..1000)
        .map(|index| format!("sk-ant-many-{index:024}"))
        .collect();
    let keys: Vec<&str> = many.iter().map(String::as_str).collect();
    for args in [
        &["probe-keys", "--json", "--concurrency", "64"][..],
        &["pool", "status"][..],
    ] {
        let test = offline(&provider("anthropic", &mock, &keys)).args(args);
        let output = test.run_closing_stdout_after_first_line();
        assert_eq!(output.code, 0, "{args:?}: {}", output.stderr);
        assert!(!output.stderr.contains("panicked"), "{}", output.stderr);
        assert!(!output.stdout.is_empty());
    }
    let big = format!(r#"{{"text":"{}"}}"#, "a".repeat(300_000));
    mock.on_key(K1, vec![Reply::ok(&big)]);
    let output = offline(&provider("anthropic", &mock, &[K1]))
        .args(["send", "--json", "-d", BODY])
        .run_closing_stdout_after_first_line();
    assert_eq!(output.code, 0, "{}", output.stderr);
    assert!(!output.stderr.contains("error"), "{}", output.stderr);
    assert!(
        output.stdout.starts_with(r#"{"provider":"anthropic""#),
        "{}",
        output.stdout
    );
}

#[test]
fn no_error_says_its_cause_twice() {
    let missing = Test::new()
        .args(["--config", "/nonexistent/aibridge.toml", "pool", "status"])
        .run()
        .code(2);
    assert_eq!(
        missing.stderr.matches("(os error 2)").count(),
        1,
        "{}",
        missing.stderr
    );
    let listen = Test::new()
        .config("listen = \"nowhere\"\n")
        .args(["pool", "status"])
        .run()
        .code(2);
    assert_eq!(
        listen
            .stderr
            .matches("invalid socket address syntax")
            .count(),
        1,
        "{}",
        listen.stderr
    );
    let state = Test::new()
        .args([
            "--state-file",
            "/proc/nonexistent/state.json",
            "pool",
            "reset",
        ])
        .run()
        .code(2);
    assert_eq!(
        state.stderr.matches("os error").count(),
        1,
        "{}",
        state.stderr
    );
}

#[test]
fn serve_prints_its_url_alone_on_stdout_and_an_aligned_banner() {
    let mock = MockUpstream::start();
    let test = offline(&format!(
        "[providers.anthropic]\nbase_url = \"{}/v1\"\nkeys = [{K1:?}]\n\
         [providers.a-much-longer-name]\nkind = \"openai\"\nbase_url = \"{}\"\n",
        mock.url(),
        mock.url()
    ));
    let test = test.args(["serve", "--listen", "127.0.0.1:0"]);
    let mut child = test.spawn();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut url = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut url).unwrap();
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let port = url
        .strip_prefix("http://127.0.0.1:")
        .and_then(|rest| rest.trim_end().parse::<u16>().ok());
    assert!(port.is_some_and(|port| port > 0), "stdout: {url:?}");
    assert!(stderr.contains(&format!("aibridge listening on {}", url.trim_end())));
    // Every provider row has its URL in the same column.
    let columns: Vec<usize> = stderr
        .lines()
        .filter(|line| line.starts_with("  "))
        .filter_map(|line| line.find("http"))
        .collect();
    assert!(columns.len() >= 3, "{stderr}");
    assert!(
        columns.windows(2).all(|pair| pair[0] == pair[1]),
        "{stderr}"
    );
    assert!(
        stderr.contains("provider \"anthropic\": base_url") && stderr.contains("ends in /v1"),
        "{stderr}"
    );
}

#[test]
fn generated_files_hide_generate_and_show_placeholders() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "aibridge.bash",
        "_aibridge",
        "aibridge.fish",
        "aibridge.elv",
        "_aibridge.ps1",
    ] {
        let text = std::fs::read_to_string(root.join("completions").join(file)).unwrap();
        assert!(!text.contains("generate"), "{file} offers generate");
    }
    let send = std::fs::read_to_string(root.join("man/aibridge-send.1")).unwrap();
    assert!(send.contains(r"[\-\-config <FILE>]"), "{send}");
    assert!(send.contains(r"[\-\-wait <DURATION>]"), "{send}");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.contains("keeps the terminal"),
        "the set-up says serve keeps the terminal"
    );
    assert!(
        !readme.contains("| c=1 requests/s"),
        "the full tables live in BENCHMARKS.md"
    );
}
