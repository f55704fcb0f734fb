//! Trust, second pass: no access token through any door (repeated credentials, a stranger on
//! the listen port), no test that leans on the default port, and failures said once in the
//! log.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::{CALLER, K1, K2, MockUpstream, Reply, Test, client, dead_port};

const TOKEN: &str = "tok-hardening-secret-000000000000001";

/// A BYOK `anthropic` at the mock behind an access token.
fn byok_behind_token(mock: &MockUpstream) -> Test {
    Test::new().secret(TOKEN).config(&format!(
        "access_tokens = [\"{TOKEN}\"]\n[providers.anthropic]\nbase_url = \"{}\"\nbyok = true\n",
        mock.url()
    ))
}

#[test]
fn repeated_or_listed_credentials_are_refused_and_never_forwarded() {
    let mock = MockUpstream::start();
    let server = byok_behind_token(&mock).serve();
    let own = format!("Bearer {CALLER}");
    let token = format!("Bearer {TOKEN}");
    let listed = format!("{own}, {token}");
    let cases: [&[(&str, &str)]; 4] = [
        &[("authorization", &own), ("authorization", &token)],
        &[("x-api-key", CALLER), ("x-api-key", TOKEN)],
        &[("authorization", &listed)],
        &[("x-aibridge-token", TOKEN), ("x-aibridge-token", TOKEN)],
    ];
    for headers in cases {
        let response = server.post_message_with(headers);
        assert_eq!(response.status(), 400, "{headers:?}");
        assert_eq!(response.headers()["x-should-retry"], "false");
        let body = response.text().unwrap();
        assert!(body.contains("is repeated or holds a list"), "{body}");
        assert!(!body.contains(TOKEN) && !body.contains(CALLER), "{body}");
    }
    assert!(mock.requests().is_empty(), "nothing forwarded");

    // One credential of each kind is still fine: the token is taken, the caller's key goes on.
    let response =
        server.post_message_with(&[("x-aibridge-token", TOKEN), ("authorization", &own)]);
    assert_eq!(response.status(), 200);
    let requests = mock.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].key.as_deref(), Some(CALLER));
    assert!(!format!("{:?}", requests[0].headers).contains(TOKEN));
}

/// A stranger on a port: answers every request with `status` and `headers`, and keeps
/// what it was sent.
fn stranger(status: &str, headers: &str) -> (u16, Arc<Mutex<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(String::new()));
    let sink = received.clone();
    let answer = format!(
        "HTTP/1.1 {status}\r\n{headers}content-type: application/json\r\ncontent-length: 15\r\n\
         connection: close\r\n\r\n{{\"status\":\"ok\"}}"
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            stream
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut buffer = [0u8; 8192];
            let read = stream.read(&mut buffer).unwrap_or(0);
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buffer[..read]));
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    (port, received)
}

fn with_token_listening_on(port: u16) -> Test {
    Test::new().secret(TOKEN).config(&format!(
        "listen = \"127.0.0.1:{port}\"\naccess_tokens = [\"{TOKEN}\"]\n"
    ))
}

#[test]
fn pool_commands_never_hand_the_token_to_a_stranger_on_the_listen_port() {
    let (port, received) = stranger("200 OK", "");
    let test = with_token_listening_on(port);
    for command in ["status", "reset"] {
        test.run_with(&["pool", command])
            .code(2)
            .one_line_error("the server's answer is not a pool report");
    }
    let seen = received.lock().unwrap().clone();
    assert!(seen.contains("x-aibridge-challenge"), "{seen}");
    assert!(
        !seen.contains(TOKEN),
        "the token reached a stranger:\n{seen}"
    );

    // A redirect leads the token nowhere either.
    let (elsewhere, followed) = stranger("200 OK", "");
    let location = format!("location: http://127.0.0.1:{elsewhere}/_aibridge/pool\r\n");
    let (port, redirected) = stranger("307 Temporary Redirect", &location);
    let test = with_token_listening_on(port);
    test.run_with(&[
        "pool",
        "status",
        "--server",
        &format!("http://127.0.0.1:{port}"),
    ]);
    assert!(
        followed.lock().unwrap().is_empty(),
        "a redirect was followed"
    );
    assert!(
        redirected.lock().unwrap().contains(TOKEN),
        "--server names a trusted server"
    );
}

#[test]
fn pool_commands_send_the_token_to_a_server_that_proves_it_holds_it() {
    let mock = MockUpstream::start();
    let serving = Test::new().secret(TOKEN).config(&format!(
        "access_tokens = [\"other-token-000000000000000002\", \"{TOKEN}\"]\n\
         [providers.anthropic]\nbase_url = \"{}\"\nkeys = [\"{K1}\"]\n",
        mock.url()
    ));
    let server = serving.serve();
    let test = with_token_listening_on(server.address().port());
    let output = test.run_with(&["pool", "status"]).success();
    assert!(
        output
            .stdout
            .starts_with(&format!("source: server {}", server.base)),
        "{}",
        output.stdout
    );
    test.run_with(&["pool", "reset"])
        .success()
        .stdout_has(&format!("server {}: nothing to clear", server.base));

    // A wrong token is refused by the server, and the proof fails without sending it.
    let wrong = "tok-wrong-wrong-000000000000000003";
    Test::new()
        .secret(wrong)
        .config(&format!(
            "listen = \"{}\"\naccess_tokens = [\"{wrong}\"]\n",
            server.address()
        ))
        .run_with(&["pool", "status"])
        .code(2)
        .one_line_error(&format!(
            "the server on {0} did not prove it holds the access token, so the token was not \
         sent; if that server is yours, name it with --server {0}",
            server.base
        ));
}

#[test]
fn an_unreachable_upstream_and_a_response_timeout_are_each_one_warning() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::Slow(Duration::from_secs(3))]);
    let server = Test::new()
        .config(&format!(
            "response_timeout = \"300ms\"\n[providers.anthropic]\nbase_url = \"{}\"\nkeys = [\"{K1}\"]\n\
             [providers.openai]\nbase_url = \"http://127.0.0.1:{}\"\nkeys = [\"{K1}\"]\n",
            mock.url(),
            dead_port()
        ))
        .serve();
    assert_eq!(server.post_message().status(), 504);
    let unreachable = client()
        .post(server.url("/openai/v1/chat/completions"))
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(unreachable.status(), 502);
    server.wait_for_log("upstream sent no response within 300ms");
    server.wait_for_log("upstream unreachable");
    let log = server.stderr();
    let warnings: Vec<_> = log.lines().filter(|line| line.contains("WARN")).collect();
    assert_eq!(warnings.len(), 2, "{log}");
    assert!(warnings[0].contains("anthropic"), "{log}");
    assert!(warnings[1].contains("openai"), "{log}");
}

/// An upstream that answers each connection's first request, then reads the next one whole
/// and closes the connection without an answer (a reset after reading). Returns its port and
/// every request body it read whole, in order.
fn read_then_close_upstream() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let sink = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let sink = sink.clone();
            std::thread::spawn(move || {
                for answered in [true, false] {
                    let Some(body) = read_request(&mut stream) else {
                        return;
                    };
                    sink.lock().unwrap().push(body);
                    if !answered {
                        return;
                    }
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                          content-length: 11\r\n\r\n{\"id\":\"ok\"}",
                    );
                }
            });
        }
    });
    (port, bodies)
}

/// One HTTP/1.1 request's body (by its content-length), read whole.
fn read_request(stream: &mut std::net::TcpStream) -> Option<String> {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        seen.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&seen).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |value| value.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    Some(String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn a_request_written_whole_is_never_sent_again_however_soon_the_connection_closed() {
    let (port, bodies) = read_then_close_upstream();
    let test = Test::new().config(&format!(
        "request_log = \"requests.jsonl\"\n[providers.anthropic]\nbase_url = \"http://127.0.0.1:{port}\"\nkeys = [\"{K1}\", \"{K2}\"]\n"
    ));
    let server = test.serve_with(&["--listen", "127.0.0.1:0", "--workers", "1"]);
    let first = server.post_message_with(&[]);
    assert_eq!(first.status(), 200);
    // The same worker reuses the connection; the upstream reads this one whole, then closes.
    let second = client()
        .post(server.url("/anthropic/v1/messages"))
        .body(r#"{"model":"m","n":2}"#)
        .send()
        .unwrap();
    assert_eq!(second.status(), 502);
    assert_eq!(second.headers()["x-aibridge-attempts"], "1");
    let body: serde_json::Value = second.json().unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("may have reached the provider"),
        "{message}"
    );
    assert_eq!(
        *bodies.lock().unwrap(),
        ["{}", r#"{"model":"m","n":2}"#],
        "the upstream saw the second request once"
    );
    assert!(server.all_keys_available(), "nothing marked");
}

#[test]
fn refused_requests_are_logged_bounded_and_at_a_bounded_rate() {
    let mock = MockUpstream::start();
    let test = Test::new().secret(TOKEN).config(&format!(
        "request_log = \"requests.jsonl\"\naccess_tokens = [\"{TOKEN}\"]\n\
         [providers.anthropic]\nbase_url = \"{}\"\nkeys = [\"{K1}\"]\n",
        mock.url()
    ));
    let server = test.serve();
    let long = "a".repeat(8_000);
    let started = std::time::Instant::now();
    // A burst from four clients at once, as a hostile page or script would send it.
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let (server, long) = (&server, &long);
            scope.spawn(move || {
                let client = client();
                for round in 0..200 {
                    let request = if (round + thread) % 2 == 0 {
                        client.post(server.url(&format!("/nowhere/{long}")))
                    } else {
                        client
                            .post(server.url(&format!("/anthropic/{long}")))
                            .header("origin", "https://evil.example")
                    };
                    let response = request.body("{}").send().unwrap();
                    let status = response.status().as_u16();
                    assert!(status == 404 || status == 403, "{status}");
                    let body = response.text().unwrap();
                    assert!(!body.contains("configured"), "providers listed: {body}");
                    assert!(
                        body.len() < 2_000,
                        "the answer echoes the path: {}",
                        body.len()
                    );
                }
            });
        }
    });
    // The unix seconds the burst touched, however it fell across their boundaries.
    let seconds = started.elapsed().as_secs() + 2;
    let client = client();
    // A refusal in a later second says how many went unlogged.
    std::thread::sleep(Duration::from_millis(1100));
    client.post(server.url("/nowhere")).send().unwrap();
    server.wait_for_log("refused requests not logged (at most 100 a second are)");
    let log = std::fs::read_to_string(test.path("requests.jsonl")).unwrap();
    let lines = log.lines().count() as u64;
    assert!(lines <= 100 * seconds + 1, "{lines} lines in {seconds}s");
    assert!(lines >= 100, "{lines} lines in {seconds}s:\n{log}");
    assert!(
        log.lines().all(|line| line.len() < 1_000),
        "a log line copies the path whole"
    );
    assert!(log.contains("...[cut]"));
    assert!(mock.requests().is_empty());

    // With the token, the 404 names the providers.
    let response = client
        .post(server.url("/nowhere"))
        .header("x-aibridge-token", TOKEN)
        .send()
        .unwrap();
    assert!(response.text().unwrap().contains("configured: anthropic"));
}

#[test]
fn a_callers_model_name_is_escaped_and_bounded_wherever_it_is_shown() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(30)])
        .on_key(K2, vec![Reply::ok("{}")]);
    let test = Test::new().config(&format!(
        "request_log = \"requests.jsonl\"\n[providers.anthropic]\nbase_url = \"{}\"\nkeys = [\"{K1}\", \"{K2}\"]\n",
        mock.url()
    ));
    let server = test.serve();
    let forged = format!("m\nERROR forged line\u{1b}[2J{}", "x".repeat(10_000));
    let body = serde_json::json!({"model": forged}).to_string();
    let response = client()
        .post(server.url("/anthropic/v1/messages"))
        .body(body.clone())
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        mock.requests()[0].body,
        body.as_bytes(),
        "forwarded as sent"
    );
    server.wait_for_log("key cooling for");
    let stderr = server.stderr();
    assert!(!stderr.contains('\u{1b}'), "a raw escape reached the log");
    assert!(
        !stderr.lines().any(|line| line.starts_with("ERROR forged")),
        "{stderr}"
    );
    assert!(stderr.lines().all(|line| line.len() < 1_000), "{stderr}");

    let status = test
        .run_with(&["pool", "status", "--server", &server.base])
        .success();
    assert!(!status.stdout.contains('\u{1b}'), "{}", status.stdout);
    assert!(
        status.stdout.contains("m\\nERROR forged line\\u{1b}[2J"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.len() < 2_000, "{}", status.stdout);
    let log = crate::serve::wait_for_lines(&test.path("requests.jsonl"), 1);
    assert!(log[0]["model"].as_str().unwrap().len() < 300);
}

#[cfg(unix)]
#[test]
fn the_request_log_is_private_follows_no_link_and_is_reopened_on_sighup() {
    use std::os::unix::fs::PermissionsExt;
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::ok("{}")]);
    let test = Test::new().config(&format!(
        "request_log = \"requests.jsonl\"\n[providers.anthropic]\nbase_url = \"{}\"\nkeys = [\"{K1}\"]\n",
        mock.url()
    ));
    let log = test.path("requests.jsonl");
    std::fs::write(&log, "").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = test.serve();
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a world-readable log was left so");

    // logrotate moves the log away, then signals.
    assert_eq!(server.post_message().status(), 200);
    crate::serve::wait_for_lines(&log, 1);
    std::fs::rename(&log, test.path("requests.jsonl.1")).unwrap();
    server.signal("HUP");
    server.wait_for_log("configuration reloaded");
    assert_eq!(server.post_message().status(), 200);
    let fresh = crate::serve::wait_for_lines(&log, 1);
    assert_eq!(fresh.len(), 1);
    let rotated = std::fs::read_to_string(test.path("requests.jsonl.1")).unwrap();
    assert_eq!(rotated.lines().count(), 1, "the old file got no more lines");
    drop(server);

    // A link planted at the log's path is not followed.
    let target = test.path("elsewhere.txt");
    std::fs::write(&target, "").unwrap();
    std::fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(&target, &log).unwrap();
    test.run_with(&["serve", "--listen", "127.0.0.1:0"])
        .code(2)
        .one_line_error("it is a symbolic link, which is not followed");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "");
}

#[cfg(unix)]
#[test]
fn files_that_never_end_or_are_not_files_are_refused_at_once_and_left_alone() {
    let test = Test::new();
    let fifo = test.fifo("state.fifo");
    for state in [fifo.to_str().unwrap(), "/dev/zero"] {
        for args in [
            vec!["pool", "status", "--state-file", state],
            vec!["send", "--state-file", state, "--key", K1, "-d", "{}"],
        ] {
            let started = std::time::Instant::now();
            test.run_with(&args)
                .code(2)
                .one_line_error("not a regular file");
            assert!(started.elapsed() < Duration::from_secs(5), "{args:?} hung");
        }
    }
    let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
    assert!(
        std::os::unix::fs::FileTypeExt::is_fifo(&kind),
        "the FIFO was moved or replaced"
    );

    // Endless input where a file is named: refused once past the limit.
    for command in [
        format!("yes {K1} | exec \"$0\" send --keys-file - -d '{{}}'"),
        "exec \"$0\" send --key sk-x-000000000000 -d @- < /dev/zero".to_owned(),
        "exec \"$0\" send --key sk-x-000000000000 -d @/dev/zero".to_owned(),
    ] {
        let mut shell = std::process::Command::new("sh");
        shell.arg("-c").arg(&command).arg(crate::harness::BIN);
        let output = test.run_other(shell);
        assert_eq!(output.code, 2, "{command}: {}", output.stderr);
        assert!(
            output.stderr.contains("larger than") || output.stderr.contains("not a regular file"),
            "{command}: {}",
            output.stderr
        );
    }
}
