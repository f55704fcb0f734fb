//! The live page (`/_aibridge/`), its event stream, and `pool status --watch`. The page is
//! driven in headless Chromium (Debian's) through playwright-core (npm), both installed by
//! `.ci/setup`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{K1, K2, MockUpstream, Reply, Server, Test, client, hint};

const TOKEN: &str = "page-token-0000000000000000000001";
const MODEL: &str = "claude-page-test";

fn bridge(mock: &MockUpstream, extra: &str) -> Test {
    Test::new().config(&format!(
        "{extra}\n[providers.anthropic]\nbase_url = \"{}\"\nkeys = [\"{K1}\", \"{K2}\"]\n",
        mock.url()
    ))
}

/// K1 answers 429 for the test's model, once; K2 answers.
fn mock_with_one_429() -> MockUpstream {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(600)]);
    mock
}

/// playwright-core as `.ci/setup` installs it, and Debian's Chromium; `None` when either is
/// missing and AIBRIDGE_SKIP_BROWSER is set (a missing browser is otherwise a broken setup).
fn browser() -> Option<PathBuf> {
    let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/page-driver/node_modules/playwright-core");
    if driver.is_dir() && std::path::Path::new("/usr/bin/chromium").exists() {
        return Some(driver);
    }
    assert!(
        std::env::var_os("AIBRIDGE_SKIP_BROWSER").is_some(),
        "headless Chromium or playwright-core is missing: run .ci/setup (it installs Debian's \
         chromium and playwright-core from npm), or set AIBRIDGE_SKIP_BROWSER=1 to skip"
    );
    eprintln!("SKIPPED: no browser (AIBRIDGE_SKIP_BROWSER is set)");
    None
}

/// How the page should be following the pool.
const LIVE: &str = "live";
const POLLING: &str = "polling every second";

/// Runs tests/page/drive_page.mjs against `server`, waiting for the page to show `status`,
/// and returns its report.
fn drive(
    driver: &PathBuf,
    server: &Server,
    token: Option<&str>,
    screenshot: Option<&str>,
    status: &str,
) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/page/drive_page.mjs");
    let mut command = Command::new("node");
    command
        .arg(script)
        .env("PLAYWRIGHT_CORE_DIR", driver)
        .env("BRIDGE", &server.base)
        .env("HINT", hint(K1))
        .env("MODEL", MODEL)
        .env("KEYS", "2")
        .env("STATUS", status)
        .env("HOME", std::env::temp_dir());
    if let Some(token) = token {
        command.env("TOKEN", token);
    }
    if let Some(path) = screenshot {
        command.env("SCREENSHOT", path);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "no report from the page driver:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn assert_no_token_in_urls(report: &Value) {
    let requests = report["requests"].as_array().unwrap();
    assert!(!requests.is_empty());
    for request in requests {
        let url = request["url"].as_str().unwrap();
        assert!(!url.contains(TOKEN), "the token went into a URL: {url}");
        assert!(
            !url.contains('?'),
            "the page put something in a query: {url}"
        );
    }
}

#[test]
fn in_chromium_a_429_shows_within_two_seconds_and_the_reset_button_clears_it() {
    let Some(driver) = browser() else { return };
    let mock = mock_with_one_429();
    let server = bridge(&mock, "").serve();
    // AIBRIDGE_SCREENSHOT=path keeps a picture of the page (README's screenshot comes from it).
    let screenshot = std::env::var("AIBRIDGE_SCREENSHOT").ok();
    let report = drive(&driver, &server, None, screenshot.as_deref(), LIVE);
    assert!(report["error"].is_null(), "{report:#}");
    assert_eq!(report["hints"], serde_json::json!([hint(K1), hint(K2)]));
    assert_eq!(
        report["status"], "live",
        "the page follows the event stream"
    );
    assert_eq!(report["request_status"], 200, "K2 answered");
    let shown = report["cooling_shown_ms"].as_u64().unwrap();
    assert!(shown < 2_000, "cooling showed after {shown} ms: {report:#}");
    assert!(
        report["cooling_text"].as_str().unwrap().starts_with(MODEL),
        "{report:#}"
    );
    assert_eq!(report["badge"], "cooling: 1 model");
    assert_eq!(
        report["reset_focused"], true,
        "the button takes keyboard focus"
    );
    assert_eq!(report["badge_after_reset"], "available");
    assert_eq!(report["console_errors"], serde_json::json!([]));
    assert_no_token_in_urls(&report);

    // What the upstream got: the 429 on K1, then the answer from K2.
    let keys: Vec<_> = mock.keys_used();
    assert_eq!(keys, [K1, K2]);
    // The reset reached the server: the pool has no cooling left, and the POST was the page's.
    let pool = server.pool();
    let first = &pool["providers"][0]["keys"][0];
    assert_eq!(first["hint"], hint(K1).as_str());
    assert_eq!(first["cooling"], serde_json::json!({}));
    let posts: Vec<_> = report["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|request| request["method"] == "POST")
        .collect();
    assert_eq!(posts.len(), 1, "{report:#}");
    assert!(
        posts[0]["url"]
            .as_str()
            .unwrap()
            .ends_with("/_aibridge/pool/reset")
    );
}

#[test]
fn in_chromium_with_tokens_the_page_shows_nothing_until_a_token_is_given() {
    let Some(driver) = browser() else { return };
    let mock = mock_with_one_429();
    let server = bridge(&mock, &format!("access_tokens = [\"{TOKEN}\"]")).serve();
    let report = drive(&driver, &server, Some(TOKEN), None, LIVE);
    assert!(report["error"].is_null(), "{report:#}");
    assert_eq!(report["keys_before_token"], 0);
    let before = report["text_before_token"].as_str().unwrap();
    assert!(
        !before.contains(&hint(K1)) && !before.contains(&hint(K2)),
        "{before}"
    );
    assert!(before.contains("needs an access token"), "{before}");
    assert_eq!(report["hints"], serde_json::json!([hint(K1), hint(K2)]));
    assert_eq!(report["badge_after_reset"], "available");
    assert_no_token_in_urls(&report);
    // Every data request after the token was typed carried it, as a header.
    let requests = report["requests"].as_array().unwrap();
    let after_token: Vec<_> = requests
        .iter()
        .skip_while(|request| request["token_header"] == false)
        .filter(|request| !request["url"].as_str().unwrap().ends_with("/_aibridge/"))
        .collect();
    assert!(after_token.len() >= 3, "{report:#}");
    assert!(
        after_token
            .iter()
            .all(|request| request["token_header"] == true)
    );
    assert_eq!(mock.keys_used(), [K1, K2]);
}

#[test]
fn in_chromium_with_the_event_stream_full_the_page_polls_and_still_shows_a_429_in_time() {
    let Some(driver) = browser() else { return };
    let mock = mock_with_one_429();
    let server = bridge(&mock, "").serve();
    // 64 pages follow the events: the cap. Raw connections, each read to its status line.
    let followers: Vec<_> = (0..64)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(server.address()).unwrap();
            write!(
                stream,
                "GET /_aibridge/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            )
            .unwrap();
            let mut reader = BufReader::new(stream);
            let mut status = String::new();
            reader.read_line(&mut status).unwrap();
            assert!(status.starts_with("HTTP/1.1 200"), "{status}");
            reader
        })
        .collect();
    let refused = client()
        .get(server.url("/_aibridge/events"))
        .send()
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    assert!(refused.text().unwrap().contains("too_many_watchers"));

    let report = drive(&driver, &server, None, None, POLLING);
    assert!(report["error"].is_null(), "{report:#}");
    assert_eq!(report["status"], POLLING);
    let shown = report["cooling_shown_ms"].as_u64().unwrap();
    assert!(shown < 2_000, "cooling showed after {shown} ms: {report:#}");
    assert_eq!(report["badge_after_reset"], "available");
    assert_eq!(mock.keys_used(), [K1, K2]);
    drop(followers);
}

#[test]
fn the_page_is_one_small_self_contained_file_with_no_data() {
    let mock = MockUpstream::start();
    let server = bridge(&mock, &format!("access_tokens = [\"{TOKEN}\"]")).serve();
    // Served to any allowed Host without a token: it holds no data.
    let page = client().get(server.url("/_aibridge/")).send().unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("connect-src 'self'")
    );
    let body = page.text().unwrap();
    assert!(body.len() < 100_000, "{} bytes", body.len());
    for outside in ["src=\"http", "href=\"http", "@import", "url(http"] {
        assert!(!body.contains(outside), "the page loads {outside}");
    }
    assert!(!body.contains(&hint(K1)) && !body.contains(K1));
    // Typed without its slash, the address still finds it.
    let bare = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(server.url("/_aibridge"))
        .send()
        .unwrap();
    assert_eq!(bare.status(), 308);
    assert_eq!(bare.headers()["location"], "/_aibridge/");
    // Its data routes are not.
    for route in ["/_aibridge/pool", "/_aibridge/events"] {
        let denied = client().get(server.url(route)).send().unwrap();
        assert_eq!(denied.status(), 401, "{route}");
    }
    // A rebinding Host gets no page either.
    let rebound = client()
        .get(server.url("/_aibridge/"))
        .header("host", "evil.example")
        .send()
        .unwrap();
    assert_eq!(rebound.status(), 403);
    assert!(mock.requests().is_empty());
}

#[test]
fn the_bridges_own_origin_may_reset_and_any_other_is_refused() {
    let mock = mock_with_one_429();
    let server = bridge(&mock, "").serve();
    assert_eq!(
        server
            .post_message_with(&[("content-type", "application/json")])
            .status(),
        200
    );
    assert!(!server.all_keys_available());
    let reset = |origin: &str| {
        client()
            .post(server.url("/_aibridge/pool/reset"))
            .header("origin", origin)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .unwrap()
    };
    let foreign = reset("http://evil.example");
    assert_eq!(foreign.status(), 403);
    let other_port = reset("http://127.0.0.1:1");
    assert_eq!(other_port.status(), 403);
    assert!(
        !server.all_keys_available(),
        "a refused reset clears nothing"
    );
    let own = reset(&server.base);
    assert_eq!(own.status(), 200);
    assert!(
        own.headers().get("access-control-allow-origin").is_none(),
        "same-origin needs no CORS"
    );
    assert!(server.all_keys_available());
}

/// Reads one server-sent event (up to its blank line) from `reader`: a pool report.
fn next_pool(reader: &mut impl BufRead) -> Value {
    let mut event = String::new();
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended");
        if line == "\n" {
            break;
        }
        event.push_str(&line);
    }
    let data = event.strip_prefix("event: pool\ndata: ");
    serde_json::from_str(data.unwrap_or_else(|| panic!("not a pool event: {event}"))).unwrap()
}

#[test]
fn the_event_stream_sends_the_pool_every_second_and_ends_when_the_server_stops() {
    let mock = mock_with_one_429();
    let mut server = bridge(&mock, "").serve();
    let response = client()
        .get(server.url("/_aibridge/events"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut events = BufReader::new(response);
    let pool = next_pool(&mut events);
    let provider = &pool["providers"][0];
    assert_eq!(provider["exhausted"], 0);
    assert_eq!(provider["keys"][0]["recent"].as_array().unwrap().len(), 15);

    // A 429 on K1 shows in the next event, in the minute's counts too.
    let answered = client()
        .post(server.url("/anthropic/v1/messages"))
        .body(format!("{{\"model\":\"{MODEL}\"}}"))
        .send()
        .unwrap();
    assert_eq!(answered.status(), 200);
    let started = Instant::now();
    let cooled = loop {
        let pool = next_pool(&mut events);
        if pool["providers"][0]["keys"][0]["cooling"][MODEL].is_object() {
            break pool;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "no cooling in the events"
        );
    };
    let keys = &cooled["providers"][0]["keys"];
    let now = |key: &Value| key["recent"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        now(&keys[0]),
        serde_json::json!({"answered": 0, "rate_limited": 1, "failed": 0})
    );
    assert_eq!(
        now(&keys[1]),
        serde_json::json!({"answered": 1, "rate_limited": 0, "failed": 0})
    );
    assert_eq!(mock.keys_used(), [K1, K2]);

    // Stopping ends the stream at once, not after the 30 s grace for requests.
    let stopping = Instant::now();
    server.signal("TERM");
    let mut rest = Vec::new();
    let _ = events.read_to_end(&mut rest);
    assert_eq!(server.wait(), 0);
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "{:?}",
        stopping.elapsed()
    );
}

#[test]
fn pool_status_watch_redraws_every_second_until_interrupted() {
    let mock = mock_with_one_429();
    let test = bridge(&mock, "");
    let server = test.serve();
    let mut watch = test
        .command()
        .args(["pool", "status", "--watch", "--server", &server.base])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut readings = 0;
    let mut seen = String::new();
    while readings < 2 {
        let line = lines.next().expect("a reading").unwrap();
        if line.starts_with("source: server ") {
            readings += 1;
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    assert!(
        seen.contains(&hint(K1)) && seen.contains(&hint(K2)),
        "{seen}"
    );
    assert!(
        !seen.contains('\x1b'),
        "no terminal codes into a pipe: {seen:?}"
    );
    let pid = watch.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = watch.wait().unwrap();
    assert_eq!(status.code(), Some(0), "Ctrl-C ends the watch cleanly");
}

#[test]
fn pool_status_watch_and_json_do_not_go_together() {
    Test::new()
        .args(["pool", "status", "--watch", "--json"])
        .run()
        .code(2)
        .stderr_has("cannot be used with");
}
