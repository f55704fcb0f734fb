//! Trust: no secret echoed by config errors, flags or selectors; files that hold prompts are
//! private and never overwritten; hostile key lists and keys files are refused.
//! (Every run of the harness also checks that no registered key shows in any output.)

use std::time::Duration;

use serde_json::json;

use crate::harness::{K1, K2, MockUpstream, Reply, Test, client, dead_port, hint};

const TOKEN: &str = "tok-secret-access-token-000000000001";

#[test]
fn config_type_errors_never_print_the_secret() {
    let keys = Test::new()
        .config(&format!("[providers.anthropic]\nkeys = \"{K1}\"\n"))
        .args(["pool", "status"])
        .run()
        .code(2);
    keys.one_line_error("providers.anthropic.keys: invalid type: string, expected a sequence");
    Test::new()
        .secret(TOKEN)
        .config(&format!("access_tokens = \"{TOKEN}\"\n"))
        .args(["serve"])
        .run()
        .code(2)
        .one_line_error(":1:17: access_tokens: invalid type: string, expected a sequence");
}

#[test]
fn a_malformed_header_flag_never_echoes_its_value() {
    for header in [format!("x-api-key {K1}"), format!("Bearer {K1}: x")] {
        let output = Test::new()
            .args(["send", "-H", &header, "-d", "{}"])
            .run()
            .code(2);
        assert!(
            output
                .stderr
                .contains("invalid value for '--header <NAME: VALUE>'"),
            "{}",
            output.stderr
        );
        assert!(
            output.stderr.contains("...0001"),
            "masked: {}",
            output.stderr
        );
    }
}

#[test]
fn keys_with_whitespace_are_refused_by_index() {
    let mock = MockUpstream::start();
    let spaced = "sk-ant-spaced 000000000000000000003";
    Test::new()
        .secret(spaced)
        .anthropic(&mock, &[K1, spaced])
        .args(["send", "-d", "{}"])
        .run()
        .code(2)
        .one_line_error("key #2 contains whitespace or a character that is not printable ASCII");
    assert!(mock.requests().is_empty());
}

#[test]
fn a_comment_after_a_key_in_a_keys_file_is_not_part_of_it() {
    let mock = MockUpstream::start();
    let test = Test::new();
    std::fs::write(
        test.path("keys.txt"),
        format!("{K1}   # prod\n# spare\n{K2}\t#staging\n"),
    )
    .unwrap();
    let test = test.config(&format!(
        "[providers.anthropic]\nbase_url = \"{}\"\nkeys_file = \"keys.txt\"\n",
        mock.url()
    ));
    mock.on_key(K1, vec![Reply::status(401)]);
    test.args(["send", "-d", "{}"]).run().success();
    assert_eq!(
        mock.keys_used(),
        [K1, K2],
        "the keys exactly, comments dropped"
    );
}

#[test]
fn keys_files_that_are_devices_fifos_or_directories_are_config_errors() {
    let test = Test::new();
    let fifo = test.fifo("keys.fifo");
    for path in ["/dev/zero", fifo.to_str().unwrap(), "/tmp"] {
        let started = std::time::Instant::now();
        Test::new()
            .config(&format!("[providers.anthropic]\nkeys_file = \"{path}\"\n"))
            .args(["pool", "status"])
            .run()
            .code(2)
            .one_line_error("not a regular file");
        assert!(started.elapsed() < Duration::from_secs(10), "{path} hung");
        Test::new()
            .args(["send", "--keys-file", path, "-d", "{}"])
            .run()
            .code(2)
            .one_line_error("not a regular file");
    }
}

#[test]
fn a_full_key_selects_by_fingerprint_and_is_never_echoed() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::status(401)]);
    let test = Test::new().config(&format!(
        "listen = \"127.0.0.1:{}\"\n[providers.anthropic]\nbase_url = \"{}\"\nkeys = [\"{K1}\", \"{K2}\"]\n",
        dead_port(),
        mock.url()
    ));
    test.run_with(&["send", "-d", "{}"]).success();
    let output = test.run_with(&["pool", "reset", "--key", K1]).success();
    assert!(
        output
            .stdout
            .contains(&format!("cleared anthropic {} (was disabled)", hint(K1))),
        "{}",
        output.stdout
    );
    let unknown = "sk-ant-unknown-key-00000000000000099";
    let output = test.run_with(&["pool", "reset", "--key", unknown]).code(2);
    assert!(!output.stderr.contains(unknown), "{}", output.stderr);
    assert!(
        output.stderr.contains("no key matches \"sk-a...0099\""),
        "{}",
        output.stderr
    );

    // The server's reset route takes a full key too, and never echoes one.
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::status(401)]);
    let server = Test::new().anthropic(&mock, &[K1, K2]).serve();
    server.post_message();
    let reset = |key: &str| {
        client()
            .post(server.url("/_aibridge/pool/reset"))
            .json(&json!({"key": key}))
            .send()
            .unwrap()
    };
    let cleared: serde_json::Value = reset(K1).json().unwrap();
    assert_eq!(cleared["cleared"][0]["key"], hint(K1));
    let missing = reset(unknown);
    assert_eq!(missing.status(), 404);
    let text = missing.text().unwrap();
    assert!(
        !text.contains(unknown) && text.contains("sk-a...0099"),
        "{text}"
    );
}

#[cfg(unix)]
#[test]
fn logs_and_dumps_are_private_and_a_restart_overwrites_no_dump() {
    use std::os::unix::fs::PermissionsExt;
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(30)]);
    let test = Test::new().config(&format!(
        "request_log = \"requests.jsonl\"\ndump_dir = \"dumps\"\n\
         [providers.anthropic]\nbase_url = \"{}\"\nkeys = [\"{K1}\", \"{K2}\"]\n",
        mock.url()
    ));
    let dumps = test.path("dumps");
    let count = || std::fs::read_dir(&dumps).map_or(0, Iterator::count);
    for run in 1..=2 {
        let mut server = test.serve_with(&["--listen", "127.0.0.1:0", "--no-state"]);
        assert_eq!(server.post_message().status(), 200);
        server.signal("TERM");
        assert_eq!(server.wait(), 0);
        assert_eq!(
            count(),
            2 * run,
            "run {run}: each attempt dumped, none replaced"
        );
    }
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&test.path("requests.jsonl")), 0o600);
    assert_eq!(mode(&dumps), 0o700);
    for entry in std::fs::read_dir(&dumps).unwrap() {
        assert_eq!(mode(&entry.unwrap().path()), 0o600);
    }
    assert_eq!(mock.keys_used(), [K1, K2, K1, K2]);
}

fn bridge_with_log(mock: &MockUpstream, extra: &str) -> Test {
    Test::new().config(&format!(
        "request_log = \"requests.jsonl\"\n{extra}\n[providers.anthropic]\nbase_url = \"{}\"\nkeys = [\"{K1}\", \"{K2}\"]\n\
         [providers.off]\nkind = \"openai\"\nenabled = false\n",
        mock.url()
    ))
}

#[test]
fn bridge_made_answers_say_whether_to_retry_and_are_counted_and_logged() {
    let mock = MockUpstream::start();
    let test = bridge_with_log(&mock, "access_tokens = [\"tok-bridge-access-0000000001\"]")
        .secret("tok-bridge-access-0000000001");
    let server = test.serve();
    let post = |path: &str, token: Option<&str>| {
        let mut request = client().post(server.url(path)).body("{}");
        if let Some(token) = token {
            request = request.header("x-aibridge-token", token);
        }
        request.send().unwrap()
    };
    let token = Some("tok-bridge-access-0000000001");
    for (path, token, status) in [
        ("/anthropic/v1/messages", None, 401),
        ("/nowhere/v1/messages", token, 404),
        ("/off/v1/chat/completions", token, 503),
    ] {
        let response = post(path, token);
        assert_eq!(response.status(), status, "{path}");
        let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
        assert_eq!(header("x-should-retry"), "false", "{path}");
        assert_eq!(header("x-aibridge-attempts"), "0", "{path}");
    }
    // Sent as they are: an HTTP client would resolve the dot-segments itself.
    for path in [
        "/anthropic/v1/../admin",
        "/anthropic/v1/%2E%2e/admin",
        "/anthropic/./v1",
        "/anthropic/v1/..%2fadmin",
        "/anthropic/v1/..;/admin",
        "/anthropic/v1/..%5cadmin",
        "/anthropic/v1/%252e%252e/admin",
    ] {
        let head = raw_post(server.address(), path, "tok-bridge-access-0000000001");
        assert!(head.starts_with("HTTP/1.1 400"), "{path}: {head}");
        assert!(head.contains("x-should-retry: false"), "{path}: {head}");
    }
    assert!(mock.requests().is_empty(), "nothing was forwarded");
    let log = crate::serve::wait_for_lines(&test.path("requests.jsonl"), 10);
    let statuses: Vec<_> = log
        .iter()
        .map(|line| line["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [401, 404, 503, 400, 400, 400, 400, 400, 400, 400]);
    assert!(log.iter().all(|line| line["outcome"] == "error"));
    assert_eq!(log[1]["provider"], "unknown");
    let metrics = client()
        .get(server.url("/metrics"))
        .header("x-aibridge-token", "tok-bridge-access-0000000001")
        .send()
        .unwrap()
        .text()
        .unwrap();
    for line in [
        "aibridge_requests_total{provider=\"anthropic\",route=\"messages\",status=\"401\"} 1",
        "aibridge_requests_total{provider=\"unknown\",route=\"other\",status=\"404\"} 1",
        "aibridge_requests_total{provider=\"off\",route=\"chat_completions\",status=\"503\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }

    // A 429 the bridge makes says to retry.
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(60)])
        .on_key(K2, vec![Reply::rate_limited(60)]);
    let server = bridge_with_log(&mock, "").serve();
    let response = server.post_message();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["x-should-retry"], "true");
    assert_eq!(response.headers()["x-aibridge-attempts"], "2");
}

#[test]
fn a_provider_root_answers_reachability_checks_itself() {
    let mock = MockUpstream::start();
    let test = bridge_with_log(&mock, "");
    let server = test.serve();
    for path in ["/anthropic", "/anthropic/"] {
        let head = client().head(server.url(path)).send().unwrap();
        assert_eq!(head.status(), 200, "HEAD {path}");
        let get = client().get(server.url(path)).send().unwrap();
        assert_eq!(get.status(), 200, "GET {path}");
        assert_eq!(get.headers()["x-aibridge-attempts"], "0");
        let body: serde_json::Value = get.json().unwrap();
        assert_eq!(body, json!({"status": "ok", "provider": "anthropic"}));
    }
    assert!(
        mock.requests().is_empty(),
        "no pool key spent on a reachability check"
    );
    let log = crate::serve::wait_for_lines(&test.path("requests.jsonl"), 4);
    assert!(
        log.iter()
            .all(|line| line["status"] == 200 && line["outcome"] == "completed")
    );
}

#[test]
fn a_request_abandoned_before_any_answer_is_logged_and_counted() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::Slow(Duration::from_secs(3))]);
    let test = bridge_with_log(&mock, "");
    let server = test.serve();
    assert!(
        crate::harness::client_giving_up_after(Duration::from_millis(300))
            .post(server.url("/anthropic/v1/messages"))
            .body(r#"{"model":"m"}"#)
            .send()
            .is_err()
    );
    let log = crate::serve::wait_for_lines(&test.path("requests.jsonl"), 1);
    assert_eq!(log[0]["outcome"], "client_disconnected");
    assert_eq!(log[0]["status"], 499);
    assert_eq!(log[0]["path"], "/v1/messages");
    assert_eq!(mock.requests().len(), 1, "the upstream had the request");
    assert!(server.metrics().contains(
        "aibridge_requests_total{provider=\"anthropic\",route=\"messages\",status=\"499\"} 1"
    ));
}

/// Posts `{}` to `path` exactly as written, and returns the answer's status line and headers.
fn raw_post(address: std::net::SocketAddr, path: &str, token: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nx-aibridge-token: {token}\r\n\
         content-length: 2\r\nconnection: close\r\n\r\n{{}}"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.split("\r\n\r\n").next().unwrap().to_owned()
}

#[test]
fn a_reload_that_would_drop_a_pool_or_open_the_bridge_is_refused() {
    let mock = MockUpstream::start();
    let test = Test::new();
    let keys = test.path("keys.txt");
    std::fs::write(&keys, format!("{K1}\n")).unwrap();
    let config = |keys_file: &str, extra: &str| {
        format!(
            "{extra}\n[providers.anthropic]\nbase_url = \"{}\"\nkeys_file = \"{keys_file}\"\n",
            mock.url()
        )
    };
    let test = test.config(&config("keys.txt", ""));
    let server = test.serve();
    // A half-written keys file: the provider would forward callers' own credentials.
    std::fs::write(&keys, "").unwrap();
    server.signal("HUP");
    server.wait_for_log("provider \"anthropic\" would be left without keys");
    let response = server.post_message_with(&[("x-api-key", crate::harness::CALLER)]);
    assert_eq!(response.status(), 200);
    assert_eq!(mock.keys_used(), [K1], "the pool key, not the caller's");

    // Listening on every address without tokens: refused at start, and at reload.
    let open = Test::new()
        .config(&config(
            "keys.txt",
            "access_tokens = [\"tok-open-bridge-00000001\"]",
        ))
        .secret("tok-open-bridge-00000001");
    std::fs::write(open.path("keys.txt"), format!("{K1}\n")).unwrap();
    let server = open.serve_with(&["--listen", "0.0.0.0:0"]);
    std::fs::write(open.path("config.toml"), config("keys.txt", "")).unwrap();
    server.signal("HUP");
    server.wait_for_log("reload failed, keeping the running configuration: refusing to listen on 0.0.0.0:0 without access tokens");
    let refused = client()
        .post(
            server
                .url("/anthropic/v1/messages")
                .replace("0.0.0.0", "127.0.0.1"),
        )
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(refused.status(), 401, "the tokens still hold");
}

#[test]
fn a_provider_whose_key_list_is_empty_never_forwards_callers_keys() {
    let mock = MockUpstream::start();
    let test = Test::new();
    std::fs::write(test.path("keys.txt"), "# keys go here\n").unwrap();
    let config = |enabled: bool| {
        format!(
            "[providers.anthropic]\nbase_url = \"{}\"\nkeys_file = \"keys.txt\"\nenabled = {enabled}\n",
            mock.url()
        )
    };
    let test = test.config(&config(true));
    let server = test.serve();
    server.wait_for_log("no keys yet (its key list is empty)");
    let refused = |server: &crate::harness::Server| {
        let response = server.post_message_with(&[("x-api-key", crate::harness::CALLER)]);
        assert_eq!(response.status(), 401);
        let body = response.text().unwrap();
        assert!(
            body.contains("providers.anthropic has a key list, but it is empty"),
            "{body}"
        );
    };
    refused(&server);
    let reload = |count: usize| {
        server.signal("HUP");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while server.stderr().matches("configuration reloaded").count() < count {
            assert!(std::time::Instant::now() < deadline, "{}", server.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Off with the empty file, then on again: still nobody's key goes upstream.
    std::fs::write(test.path("config.toml"), config(false)).unwrap();
    reload(1);
    std::fs::write(test.path("config.toml"), config(true)).unwrap();
    reload(2);
    refused(&server);
    assert!(mock.requests().is_empty(), "no caller key was forwarded");
    // Keys arrive: served from the pool.
    std::fs::write(test.path("keys.txt"), format!("{K1}\n")).unwrap();
    reload(3);
    let response = server.post_message_with(&[("x-api-key", crate::harness::CALLER)]);
    assert_eq!(response.status(), 200);
    assert_eq!(mock.keys_used(), [K1]);
}

#[test]
fn browsers_and_rebinding_hosts_are_refused_before_anything_is_forwarded() {
    let mock = MockUpstream::start();
    let test = Test::new().config(&format!(
        "request_log = \"requests.jsonl\"\nallowed_hosts = [\"bridge.internal\"]\n\
         allowed_origins = [\"https://app.example\"]\n\
         [providers.anthropic]\nbase_url = \"{}\"\nkeys = [\"{K1}\"]\n",
        mock.url()
    ));
    let server = test.serve();
    let post = |headers: &[(&str, &str)]| server.post_message_with(headers);
    let rebinding = post(&[("host", "evil.example:8787")]);
    assert_eq!(rebinding.status(), 403);
    assert_eq!(rebinding.headers()["x-should-retry"], "false");
    let body: serde_json::Value = rebinding.json().unwrap();
    assert_eq!(body["error"]["type"], "permission_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("forbidden_host:") && message.contains("allowed_hosts"),
        "{message}"
    );
    let page = post(&[("origin", "https://evil.example")]);
    assert_eq!(page.status(), 403);
    assert!(page.headers().get("access-control-allow-origin").is_none());
    // The operator routes are guarded too.
    let pool = client()
        .get(server.url("/_aibridge/pool"))
        .header("host", "evil.example")
        .send()
        .unwrap();
    assert_eq!(pool.status(), 403);
    assert!(mock.requests().is_empty(), "nothing was forwarded");

    // Listed hosts and origins are served; an allowed page may read the answer.
    assert_eq!(post(&[("host", "bridge.internal:8787")]).status(), 200);
    let allowed = post(&[("origin", "https://app.example")]);
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let preflight = client()
        .request(
            reqwest::Method::OPTIONS,
            server.url("/anthropic/v1/messages"),
        )
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-api-key, content-type")
        .send()
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(preflight.headers()["access-control-allow-methods"], "POST");
    assert_eq!(
        preflight.headers()["access-control-allow-headers"],
        "x-api-key, content-type"
    );
    assert_eq!(mock.requests().len(), 2, "the preflight is not forwarded");
    let log = crate::serve::wait_for_lines(&test.path("requests.jsonl"), 5);
    assert_eq!(log[0]["status"], 403);
}

#[test]
fn an_access_token_is_never_forwarded_whichever_header_carries_it() {
    let mock = MockUpstream::start();
    let token = "tok-forward-never-0000000001";
    let server = Test::new()
        .secret(token)
        .config(&format!(
            "access_tokens = [\"{token}\"]\n[providers.anthropic]\nbase_url = \"{}\"\nbyok = true\n",
            mock.url()
        ))
        .serve();
    let bearer = format!("Bearer {token}");
    for headers in [
        vec![("x-aibridge-token", token), ("x-api-key", token)],
        vec![("x-api-key", token), ("authorization", bearer.as_str())],
        vec![
            ("x-aibridge-token", token),
            ("authorization", bearer.as_str()),
            ("x-api-key", crate::harness::CALLER),
        ],
    ] {
        server.post_message_with(&headers);
    }
    for request in mock.requests() {
        for name in ["x-api-key", "authorization", "x-aibridge-token"] {
            let value = request
                .headers
                .get(name)
                .map(|value| value.to_str().unwrap().to_owned());
            assert!(
                !value.unwrap_or_default().contains(token),
                "{name} forwarded the token"
            );
        }
    }
    // The third carried the caller's own key beside the token: that one is forwarded.
    let keys: Vec<_> = mock
        .requests()
        .iter()
        .map(|request| request.key.clone())
        .collect();
    assert_eq!(
        keys.last().unwrap().as_deref(),
        Some(crate::harness::CALLER)
    );
}

/// An upstream on 127.0.0.1 that reads each request, waits `pause`, and closes the connection
/// without an answer; returns its port and how many requests it read.
fn silent_upstream(pause: Duration) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let read = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = read.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                if stream.read(&mut buffer).unwrap_or(0) > 0 {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(pause);
                }
            });
        }
    });
    (port, read)
}

#[test]
fn a_request_the_upstream_may_have_started_on_is_never_sent_again() {
    let (port, read) = silent_upstream(Duration::from_millis(1500));
    let test = Test::new().config(&format!(
        "request_log = \"requests.jsonl\"\n[providers.anthropic]\nbase_url = \"http://127.0.0.1:{port}\"\nkeys = [\"{K1}\", \"{K2}\"]\n"
    ));
    let server = test.serve();
    let response = server.post_message();
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-aibridge-attempts"], "1");
    let body: serde_json::Value = response.json().unwrap();
    assert_eq!(body["error"]["type"], "upstream_unreachable");
    assert_eq!(
        read.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "sent once"
    );
    assert!(server.all_keys_available(), "nothing marked");
}

#[test]
fn a_request_that_never_reached_the_upstream_is_sent_again_as_its_own_attempt() {
    let dead = dead_port();
    let test = Test::new().config(&format!(
        "request_log = \"requests.jsonl\"\n[providers.anthropic]\nbase_url = \"http://127.0.0.1:{dead}\"\nkeys = [\"{K1}\", \"{K2}\"]\n"
    ));
    let server = test.serve();
    let response = server.post_message();
    assert_eq!(response.status(), 502);
    assert_eq!(response.headers()["x-aibridge-attempts"], "2");
    let log = crate::serve::wait_for_lines(&test.path("requests.jsonl"), 1);
    assert_eq!(
        log[0]["attempts"],
        json!([
            {"key": hint(K1), "status": null, "mark": null, "resent": true},
            {"key": hint(K1), "status": null, "mark": null}
        ])
    );
    assert!(server.all_keys_available(), "a network error marks nothing");

    // `send --json` shows the re-send too.
    let output = test.run_with(&["send", "--json", "-d", "{}"]).code(5);
    let attempts = &output.json()["attempts"];
    assert_eq!(attempts[0]["resent"], true);
    assert!(attempts[1].get("resent").is_none());
}

#[cfg(unix)]
#[test]
fn a_link_planted_as_the_lock_file_is_not_followed() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(30)]);
    let test = Test::new().anthropic(&mock, &[K1, K2]);
    let state = test.state_file();
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    let target = test.path("planted-target");
    std::os::unix::fs::symlink(&target, state.with_extension("json.lock")).unwrap();
    let output = test.args(["send", "-d", "{}"]).run().code(2);
    assert!(output.stderr.contains("state file"), "{}", output.stderr);
    assert!(!target.exists(), "the link's target was created");
    assert!(
        mock.requests().is_empty(),
        "nothing sent without the state file"
    );
}

#[test]
fn a_far_deadline_in_the_state_file_is_capped_at_max_cooldown() {
    let mock = MockUpstream::start();
    let test = Test::new().config(&format!(
        "listen = \"127.0.0.1:{}\"\n[providers.anthropic]\nbase_url = \"{}\"\nkeys = [\"{K1}\", \"{K2}\"]\nmax_cooldown = \"60s\"\n",
        dead_port(),
        mock.url()
    ));
    let fingerprint = {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(K1.as_bytes())[..8])
    };
    let state = test.state_file();
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    std::fs::write(
        &state,
        json!({"version": 1, "providers": {"anthropic": {fingerprint.clone(): {
            "hint": hint(K1), "state": "cooling", "reason": "rate_limited",
            "until": "2126-01-01T00:00:00Z"}}}})
        .to_string(),
    )
    .unwrap();
    let status = test.run_with(&["pool", "status", "--json"]).success();
    let remaining = status.json()["providers"][0]["keys"][0]["cooldown_remaining_secs"]
        .as_u64()
        .unwrap();
    assert!((55..=60).contains(&remaining), "{remaining}");
    // And a write caps what the file held.
    test.run_with(&["send", "-d", "{}"]).success();
    assert_eq!(mock.keys_used(), [K2]);
    let until = test.state()["providers"]["anthropic"][&fingerprint]["until"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        until.starts_with("20") && !until.starts_with("2126"),
        "{until}"
    );
}
