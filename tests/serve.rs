//! `aibridge serve` against a mock upstream, with requests shaped as the official SDKs send
//! them.

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use reqwest::blocking::{RequestBuilder, Response};
use serde_json::{Value, json};

use crate::harness::{CALLER, Gate, K1, K2, K3, MockUpstream, Reply, Server, Test, client, hint};

/// The key an SDK is configured with when it talks to the bridge: the bridge replaces it.
const SDK_KEY: &str = "sk-sdk-placeholder-0000000000000000";

/// One bridged API: how an SDK calls it and how its stream looks.
struct Route {
    name: &'static str,
    /// Path on the bridge.
    path: &'static str,
    /// Path the upstream sees.
    upstream_path: &'static str,
    body: Value,
    events: &'static [&'static str],
    /// The start of the error event that ends a cut stream.
    error_event: &'static str,
    /// What must close a cut stream after the error event.
    stream_end: &'static str,
}

const ANTHROPIC_EVENTS: &[&str] = &[
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
];

const CHAT_EVENTS: &[&str] = &[
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n",
    "data: [DONE]\n\n",
];

const RESPONSES_EVENTS: &[&str] = &[
    "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\"}}\n\n",
    "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Once\"}\n\n",
    "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"status\":\"completed\",\"usage\":{\"input_tokens\":5,\"output_tokens\":6}}}\n\n",
];

fn routes() -> [Route; 3] {
    [
        Route {
            name: "messages",
            path: "/anthropic/v1/messages",
            upstream_path: "/v1/messages",
            body: json!({"max_tokens": 1024, "messages": [{"role": "user", "content": "Hello, Claude"}], "model": "claude-sonnet-4-5"}),
            events: ANTHROPIC_EVENTS,
            error_event: "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"upstream stream interrupted: ",
            stream_end: "}}\n\n",
        },
        Route {
            name: "chat_completions",
            path: "/openai/v1/chat/completions",
            upstream_path: "/v1/chat/completions",
            body: json!({"messages": [{"role": "user", "content": "Say this is a test"}], "model": "gpt-4o"}),
            events: CHAT_EVENTS,
            error_event: "data: {\"error\":{\"message\":\"upstream stream interrupted: ",
            stream_end: "\"type\":\"api_error\",\"code\":\"stream_interrupted\"}}\n\ndata: [DONE]\n\n",
        },
        Route {
            name: "responses",
            path: "/openai/v1/responses",
            upstream_path: "/v1/responses",
            body: json!({"input": "Tell me a story", "model": "gpt-4.1"}),
            events: RESPONSES_EVENTS,
            error_event: "event: error\ndata: {\"type\":\"error\",\"code\":\"stream_interrupted\",\"message\":\"upstream stream interrupted: ",
            stream_end: "\"}\n\n",
        },
    ]
}

impl Route {
    fn is_anthropic(&self) -> bool {
        self.path.starts_with("/anthropic")
    }

    fn body(&self, stream: bool) -> Value {
        let mut body = self.body.clone();
        if stream {
            body["stream"] = json!(true);
            if self.name == "chat_completions" {
                body["stream_options"] = json!({"include_usage": true});
            }
        }
        body
    }

    /// The request as the official Python SDKs send it, carrying `key`.
    fn request(&self, server: &Server, stream: bool, key: &str) -> RequestBuilder {
        let body = serde_json::to_vec(&self.body(stream)).unwrap();
        let builder = client()
            .post(server.url(self.path))
            .header("content-type", "application/json")
            .header(
                "accept",
                if stream {
                    "text/event-stream"
                } else {
                    "application/json"
                },
            )
            .header("x-stainless-lang", "python")
            .header("x-stainless-retry-count", "0")
            .body(body);
        if self.is_anthropic() {
            builder
                .header("x-api-key", key)
                .header("anthropic-version", "2023-06-01")
                .header("user-agent", "Anthropic/Python 0.75.0")
        } else {
            builder
                .header("authorization", format!("Bearer {key}"))
                .header("user-agent", "OpenAI/Python 2.8.0")
        }
    }

    fn send(&self, server: &Server, stream: bool) -> Response {
        self.request(server, stream, SDK_KEY).send().unwrap()
    }

    fn ok_body(&self) -> String {
        format!(
            r#"{{"id":"{}-ok","usage":{{"input_tokens":3,"output_tokens":4}}}}"#,
            self.name
        )
    }

    fn success(&self, stream: bool) -> Reply {
        if stream {
            Reply::sse(self.events)
        } else {
            Reply::ok(&self.ok_body())
        }
    }

    fn expected(&self, stream: bool) -> String {
        if stream {
            self.events.concat()
        } else {
            self.ok_body()
        }
    }
}

/// A test whose `anthropic` and `openai` providers both point at `mock` with `keys`.
fn bridge(mock: &MockUpstream, keys: &[&str], extra: &str) -> Test {
    let keys: Vec<_> = keys.iter().map(|key| format!("{key:?}")).collect();
    let keys = keys.join(", ");
    let url = mock.url();
    Test::new().secret(SDK_KEY).config(&format!(
        "{extra}\n[providers.anthropic]\nbase_url = \"{url}\"\nkeys = [{keys}]\n\n[providers.openai]\nbase_url = \"{url}\"\nkeys = [{keys}]\n"
    ))
}

fn header<'a>(response: &'a Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .map_or("", |value| value.to_str().unwrap())
}

fn json_body(response: Response) -> Value {
    response.json().unwrap()
}

#[test]
fn bridged_routes_succeed_blocking_and_streaming() {
    for route in routes() {
        for stream in [false, true] {
            let mock = MockUpstream::start();
            mock.on_key(
                K1,
                vec![route.success(stream).header("request-id", "req_upstream")],
            );
            let test = bridge(&mock, &[K1, K2], "");
            let server = test.serve();
            let response = route.send(&server, stream);
            assert_eq!(response.status(), 200, "{} stream={stream}", route.name);
            assert_eq!(header(&response, "x-aibridge-key"), hint(K1));
            assert_eq!(header(&response, "x-aibridge-attempts"), "1");
            if stream {
                assert_eq!(header(&response, "content-type"), "text/event-stream");
            } else {
                assert_eq!(header(&response, "request-id"), "req_upstream");
                assert_eq!(
                    header(&response, "content-length"),
                    route.expected(stream).len().to_string(),
                    "one length, the answer's own"
                );
            }
            assert_eq!(
                response.text().unwrap(),
                route.expected(stream),
                "{}",
                route.name
            );

            let requests = mock.requests();
            assert_eq!(requests.len(), 1);
            let upstream = &requests[0];
            assert_eq!(
                upstream.key.as_deref(),
                Some(K1),
                "the SDK's key is replaced by the pool's"
            );
            assert_eq!(upstream.path, route.upstream_path);
            assert_eq!(
                upstream.body,
                serde_json::to_vec(&route.body(stream)).unwrap(),
                "body replayed as sent"
            );
            let lengths: Vec<_> = upstream.headers.get_all("content-length").iter().collect();
            assert_eq!(lengths, [&upstream.body.len().to_string()]);
            assert_eq!(upstream.headers["x-stainless-lang"], "python");
            assert!(
                upstream.headers["user-agent"]
                    .to_str()
                    .unwrap()
                    .contains("Python")
            );
            if route.is_anthropic() {
                assert_eq!(upstream.headers["anthropic-version"], "2023-06-01");
                assert!(upstream.headers.get("authorization").is_none());
            } else {
                assert!(upstream.headers.get("x-api-key").is_none());
            }
        }
    }
}

#[test]
fn failover_after_401_and_429_on_every_route() {
    for route in routes() {
        for stream in [false, true] {
            let mock = MockUpstream::start();
            mock.on_key(K1, vec![Reply::status(401)])
                .on_key(K2, vec![Reply::rate_limited(30)])
                .on_key(K3, vec![route.success(stream)]);
            let server = bridge(&mock, &[K1, K2, K3], "").serve();
            let response = route.send(&server, stream);
            assert_eq!(response.status(), 200);
            assert_eq!(header(&response, "x-aibridge-key"), hint(K3));
            assert_eq!(header(&response, "x-aibridge-attempts"), "3");
            assert_eq!(response.text().unwrap(), route.expected(stream));
            assert_eq!(mock.keys_used(), [K1, K2, K3]);
            let first = mock.requests()[0].body.clone();
            assert!(mock.requests().iter().all(|request| request.body == first));

            // The marks hold for the next request: only the healthy key is tried.
            route.send(&server, stream).text().unwrap();
            assert_eq!(mock.keys_used()[3..], [K3], "{}", route.name);
            server.wait_for_log("key disabled (unauthorized)");
        }
    }
}

#[test]
fn exhausted_pools_answer_429_with_retry_after_or_502() {
    for route in routes() {
        for stream in [false, true] {
            let mock = MockUpstream::start();
            mock.on_key(K1, vec![Reply::rate_limited(20)])
                .on_key(K2, vec![Reply::rate_limited(45)]);
            let server = bridge(&mock, &[K1, K2], "").serve();
            let response = route.send(&server, stream);
            assert_eq!(response.status(), 429, "{}", route.name);
            assert_eq!(header(&response, "retry-after"), "20");
            let body = json_body(response);
            let model = route.body["model"].as_str().unwrap();
            let message = format!(
                "all configured keys are rate-limited for model \"{model}\" (retry after 20s)"
            );
            if route.is_anthropic() {
                assert_eq!(
                    body,
                    json!({"type": "error", "error": {"type": "rate_limit_error", "message": message}})
                );
            } else {
                assert_eq!(body["error"]["code"], "rate_limit_exceeded");
                assert_eq!(body["error"]["message"], message);
            }

            let mock = MockUpstream::start();
            mock.on_key(K1, vec![Reply::status(401)])
                .on_key(K2, vec![Reply::status(403)]);
            let server = bridge(&mock, &[K1, K2], "").serve();
            let response = route.send(&server, stream);
            assert_eq!(response.status(), 502);
            assert!(response.headers().get("retry-after").is_none());
            let body = json_body(response);
            let error = &body["error"];
            assert_eq!(
                error["message"],
                "all configured keys failed authentication or are out of quota; run `aibridge \
                 pool status` to see why, and `aibridge pool reset` once they are fixed"
            );
            assert_eq!(error["type"], "api_error");
        }
    }
}

#[test]
fn server_errors_pass_through_without_retry() {
    for route in routes() {
        let mock = MockUpstream::start();
        mock.on_key(K1, vec![Reply::status(500)]);
        let server = bridge(&mock, &[K1, K2], "").serve();
        let response = route.send(&server, false);
        assert_eq!(response.status(), 500);
        assert!(response.text().unwrap().contains("mock status 500"));
        assert_eq!(
            mock.keys_used(),
            [K1],
            "{}: a 500 is not the key's fault",
            route.name
        );
    }
}

#[test]
fn byok_uses_the_callers_key_once_and_marks_nothing() {
    for route in routes() {
        let mock = MockUpstream::start();
        mock.on_key(CALLER, vec![Reply::status(401)]);
        let test = bridge(&mock, &[K1, K2], "");
        let config = std::fs::read_to_string(test.path("config.toml")).unwrap();
        std::fs::write(
            test.path("config.toml"),
            config.replace("keys = [", "byok = true\nkeys = ["),
        )
        .unwrap();
        let server = test.serve();
        let response = route.request(&server, false, CALLER).send().unwrap();
        assert_eq!(response.status(), 401, "{}", route.name);
        assert_eq!(header(&response, "x-aibridge-attempts"), "1");
        assert_eq!(mock.keys_used(), [CALLER]);
        assert!(server.all_keys_available(), "{}", route.name);
    }
}

#[test]
fn a_cut_stream_ends_with_the_providers_error_event() {
    for route in routes() {
        let mock = MockUpstream::start();
        let sent = &route.events[..2];
        mock.on_key(K1, vec![Reply::sse(sent).cut()]);
        let server = bridge(&mock, &[K1, K2], "").serve();
        let response = route.send(&server, true);
        assert_eq!(response.status(), 200);
        // The body ends cleanly: reading it to the end succeeds.
        let text = response.text().expect("a clean end after the error event");
        let events = sent.concat();
        assert!(text.starts_with(&events), "{text}");
        let rest = &text[events.len()..];
        assert!(
            rest.starts_with(route.error_event),
            "{}: {rest}",
            route.name
        );
        assert!(rest.ends_with(route.stream_end), "{}: {rest}", route.name);
        assert_eq!(
            mock.keys_used(),
            [K1],
            "no failover once the stream started"
        );
    }
}

#[test]
fn events_reach_the_client_unbuffered() {
    for route in routes() {
        let mock = MockUpstream::start();
        let gate = Gate::new();
        mock.on_key(K1, vec![Reply::sse(route.events).gated(&gate)]);
        let server = bridge(&mock, &[K1], "").serve();
        let response = route.send(&server, true);
        let mut reader = BufReader::new(response);
        let mut first = String::new();
        // The mock holds every later event until the first one has arrived here.
        while !first.ends_with("\n\n") {
            assert_ne!(
                reader.read_line(&mut first).unwrap(),
                0,
                "stream ended early"
            );
        }
        assert_eq!(first, route.events[0]);
        gate.open();
        let mut rest = String::new();
        reader.read_to_string(&mut rest).unwrap();
        assert_eq!(first + &rest, route.events.concat(), "{}", route.name);
    }
}

/// Bodies far larger than a socket buffer go through whole, in both directions, and are
/// replayed byte for byte after a failover.
#[test]
fn large_bodies_pass_through_whole_and_are_replayed() {
    let answer = format!(r#"{{"content":"{}"}}"#, "a".repeat(6 << 20));
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(10)])
        .on_key(K2, vec![Reply::ok(&answer)]);
    let server = bridge(&mock, &[K1, K2], "").serve();
    let request = format!(r#"{{"messages":"{}"}}"#, "q".repeat(5 << 20));
    let response = client()
        .post(server.url("/anthropic/v1/messages"))
        .header("x-api-key", SDK_KEY)
        .body(request.clone())
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-aibridge-key"), hint(K2));
    // `assert!`, not `assert_eq!`: a failure would print megabytes.
    assert!(
        response.text().unwrap() == answer,
        "the answer arrives whole"
    );
    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    assert!(
        requests
            .iter()
            .all(|upstream| upstream.body == request.as_bytes()),
        "each attempt carried the whole body"
    );
}

#[test]
fn other_routes_pass_through_with_failover() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(10)]).on_key(
        K2,
        vec![Reply::ok(r#"{"data":[{"id":"claude-sonnet-4-5"}]}"#)],
    );
    let server = bridge(&mock, &[K1, K2], "").serve();
    let response = client()
        .get(server.url("/anthropic/v1/models?limit=20"))
        .header("x-api-key", SDK_KEY)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(json_body(response)["data"][0]["id"], "claude-sonnet-4-5");
    let requests = mock.requests();
    assert_eq!(requests[1].path, "/v1/models?limit=20");
    assert_eq!(requests[1].method, "GET");
    assert_eq!(mock.keys_used(), [K1, K2]);
}

#[test]
fn disabled_and_unknown_providers() {
    let mock = MockUpstream::start();
    let test = Test::new().config(&format!(
        "[providers.anthropic]\nbase_url = \"{}\"\nkeys = [\"{K1}\"]\nenabled = false\n",
        mock.url()
    ));
    let server = test.serve();
    for path in ["/anthropic/v1/messages", "/anthropic/v1/models"] {
        let response = client().post(server.url(path)).body("{}").send().unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(
            json_body(response),
            json!({"type": "error", "error": {"type": "provider_disabled",
                   "message": "provider_disabled: AI provider \"anthropic\" is disabled"}})
        );
    }
    let response = client()
        .get(server.url("/gemini/v1/models"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 404);
    let body = json_body(response);
    assert_eq!(
        body["error"]["message"],
        "unknown provider \"gemini\"; configured: anthropic, bedrock, copilot, openai"
    );
    assert!(mock.requests().is_empty());
}

#[test]
fn body_limit_unreachable_upstream_and_timeout() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::Slow(Duration::from_secs(3))]);
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let test = Test::new().config(&format!(
        "max_body_size = 64\nresponse_timeout = \"300ms\"\n\
         [providers.anthropic]\nbase_url = \"{}\"\nkeys = [\"{K1}\"]\n\
         [providers.openai]\nbase_url = \"http://127.0.0.1:{dead_port}\"\nkeys = [\"{K1}\", \"{K2}\"]\n",
        mock.url()
    ));
    let server = test.serve();
    let response = client()
        .post(server.url("/anthropic/v1/messages"))
        .body("x".repeat(65))
        .send()
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(json_body(response)["error"]["type"], "request_too_large");
    assert!(mock.requests().is_empty());

    let response = client()
        .post(server.url("/openai/v1/chat/completions"))
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(response.status(), 502);
    let body = json_body(response);
    assert_eq!(body["error"]["code"], "upstream_unreachable");
    let pool = server.pool();
    let openai = pool["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "openai")
        .unwrap();
    assert!(
        openai["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|key| key["state"] == "available"),
        "{openai}"
    );

    let response = server.post_message();
    assert_eq!(response.status(), 504);
    assert!(
        json_body(response)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no response within 300ms")
    );
}

#[test]
fn access_tokens_guard_every_route() {
    const TOKEN: &str = "tok-bridge-0000000000000000000001";
    let mock = MockUpstream::start();
    let server = bridge(&mock, &[K1], &format!("access_tokens = [\"{TOKEN}\"]"))
        .secret(TOKEN)
        .serve();
    let route = &routes()[0];
    let denied = route.send(&server, false);
    assert_eq!(denied.status(), 401);
    assert_eq!(json_body(denied)["error"]["type"], "authentication_error");
    // The token may come as the SDK's API key (how Claude Code sends it) ...
    assert_eq!(
        route
            .request(&server, false, TOKEN)
            .send()
            .unwrap()
            .status(),
        200
    );
    // ... or in its own header.
    let response = route.send(&server, false);
    assert_eq!(response.status(), 401);
    let response = route
        .request(&server, false, SDK_KEY)
        .header("x-aibridge-token", TOKEN)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    for request in mock.requests() {
        assert_eq!(
            request.key.as_deref(),
            Some(K1),
            "the token is never forwarded"
        );
        assert!(request.headers.get("x-aibridge-token").is_none());
    }
    for path in ["/_aibridge/pool", "/metrics"] {
        assert_eq!(
            client().get(server.url(path)).send().unwrap().status(),
            401,
            "{path}"
        );
        let allowed = client()
            .get(server.url(path))
            .header("x-aibridge-token", TOKEN)
            .send()
            .unwrap();
        assert_eq!(allowed.status(), 200, "{path}");
    }
    assert_eq!(
        client()
            .get(server.url("/_aibridge/health"))
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn non_loopback_without_tokens_is_refused() {
    Test::new()
        .args(["serve", "--listen", "0.0.0.0:0"])
        .run()
        .code(2)
        .one_line_error("refusing to listen on 0.0.0.0:0 without access tokens");
}

#[test]
fn bad_config_or_busy_port_stops_serve() {
    Test::new()
        .config("listen = 8787\n")
        .args(["serve"])
        .run()
        .code(2)
        .one_line_error("config.toml:1:");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = busy.local_addr().unwrap().to_string();
    Test::new()
        .args(["serve", "--listen", &address])
        .run()
        .code(2)
        .one_line_error(&format!("cannot listen on {address}"));
}

#[test]
fn pool_admin_reports_and_resets_marks() {
    let mock = MockUpstream::start();
    let twin_a = "sk-ant-twin-000000000000000000000aaaa-zz99";
    let twin_b = "sk-ant-twin-000000000000000000000bbbb-zz99";
    mock.on_key(K1, vec![Reply::rate_limited(90)])
        .on_key(K2, vec![Reply::status(401)]);
    let server = bridge(&mock, &[K1, K2, K3, twin_a, twin_b], "")
        .secret(twin_a)
        .secret(twin_b)
        .serve();
    assert_eq!(routes()[0].send(&server, false).status(), 200);

    let health: Value = client()
        .get(server.url("/_aibridge/health"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health, json!({"status": "ok"}));
    let pool = server.pool();
    let anthropic = &pool["providers"][0];
    assert_eq!(anthropic["name"], "anthropic");
    let keys = anthropic["keys"].as_array().unwrap();
    assert_eq!(keys[0]["hint"], hint(K1));
    // The 429 cooled the key for the request's model; the key-wide state is untouched.
    assert_eq!(keys[0]["state"], "available");
    let cooling = &keys[0]["cooling"]["claude-sonnet-4-5"];
    let remaining = cooling["remaining_secs"].as_u64().unwrap();
    assert!((85..=90).contains(&remaining), "{remaining}");
    assert!(
        cooling["until"].as_str().unwrap().ends_with('Z'),
        "{cooling}"
    );
    assert_eq!(keys[2]["cooling"], json!({}));
    assert_eq!(keys[0]["last_status"], 429);
    assert_eq!(
        (keys[0]["requests"].as_u64(), keys[0]["failures"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(keys[1]["state"], "disabled");
    assert_eq!(keys[1]["reason"], "unauthorized");
    assert_eq!(keys[2]["state"], "available");
    assert_eq!(keys[2]["last_status"], 200);
    assert!(keys[2]["last_used"].as_str().unwrap().ends_with('Z'));

    let reset = |query: &str| -> (u16, Value) {
        let response = client()
            .post(server.url(&format!("/_aibridge/pool/reset{query}")))
            .send()
            .unwrap();
        (response.status().as_u16(), response.json().unwrap())
    };
    let (status, body) = reset(&format!("?provider=anthropic&key={}", hint(K2)));
    assert_eq!(status, 200);
    assert_eq!(
        body["cleared"],
        json!([{"provider": "anthropic", "key": hint(K2), "fingerprint": keys[1]["fingerprint"], "was": "disabled"}])
    );
    let (status, body) = reset("?key=sk-a...zz99");
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("matches 4 keys"),
        "{body}"
    );
    let response = client()
        .post(server.url("/_aibridge/pool/reset"))
        .json(&json!({"provider": "anthropic"}))
        .send()
        .unwrap();
    let body: Value = response.json().unwrap();
    assert_eq!(body["cleared"].as_array().unwrap().len(), 1, "{body}");
    assert!(server.all_keys_available());
}

#[test]
fn metrics_count_requests_transitions_and_exhaustion() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::status(401)])
        .on_key(K2, vec![Reply::rate_limited(30), Reply::ok("{}")]);
    let server = bridge(&mock, &[K1, K2], "").serve();
    let route = &routes()[0];
    assert_eq!(route.send(&server, false).status(), 429);
    assert_eq!(route.send(&server, false).status(), 429);
    let text = server.metrics();
    for line in [
        "aibridge_keys{provider=\"anthropic\",state=\"disabled\"} 1",
        "aibridge_keys{provider=\"anthropic\",state=\"cooling\"} 1",
        "aibridge_keys{provider=\"anthropic\",state=\"available\"} 0",
        "aibridge_key_transitions_total{provider=\"anthropic\",reason=\"unauthorized\"} 1",
        "aibridge_key_transitions_total{provider=\"anthropic\",reason=\"rate_limited\"} 1",
        "aibridge_pool_exhaustions_total{provider=\"anthropic\",kind=\"rate_limited\"} 2",
        "aibridge_requests_total{provider=\"anthropic\",route=\"messages\",status=\"429\"} 2",
        "aibridge_attempts_per_request_count{provider=\"anthropic\"} 2",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let mock = MockUpstream::start();
    let server = bridge(&mock, &[K1], "").serve();
    route.send(&server, false).text().unwrap();
    let text = server.metrics();
    for line in [
        "aibridge_requests_total{provider=\"anthropic\",route=\"messages\",status=\"200\"} 1",
        "aibridge_upstream_latency_seconds_count{provider=\"anthropic\"} 1",
        "aibridge_added_latency_seconds_count 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[test]
fn marks_are_shared_with_send_through_the_state_file() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(600)])
        .on_key(K2, vec![Reply::status(403)]);
    let test = bridge(&mock, &[K1, K2, K3], "");
    let mut server = test.serve();
    assert_eq!(routes()[0].send(&server, false).status(), 200);
    server.signal("TERM");
    assert_eq!(server.wait(), 0);
    // send reads what serve wrote, and skips both marked keys for that model.
    let same_model = routes()[0].body(false).to_string();
    test.args(["send", "-d", &same_model]).run().success();
    assert_eq!(mock.keys_used(), [K1, K2, K3, K3]);

    // And serve reads what send wrote.
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::status(401)]);
    let test = bridge(&mock, &[K1, K2], "");
    let send = test.args(["send", "-d", "{}"]);
    send.run().success();
    let server = send.serve();
    assert_eq!(routes()[0].send(&server, false).status(), 200);
    assert_eq!(mock.keys_used(), [K1, K2, K2]);
}

#[test]
fn sighup_reloads_config_and_keeps_marks_of_unchanged_keys() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::status(401)]);
    let test = bridge(&mock, &[K1, K2], "");
    let server = test.serve();
    let route = &routes()[0];
    assert_eq!(
        header(&route.send(&server, false), "x-aibridge-key"),
        hint(K2)
    );

    // K3 joins ahead of K2; K1 keeps its mark.
    let url = mock.url();
    std::fs::write(
        test.path("config.toml"),
        format!(
            "[providers.anthropic]\nbase_url = \"{url}\"\nkeys = [\"{K1}\", \"{K3}\", \"{K2}\"]\n\
             [providers.openai]\nbase_url = \"{url}\"\nkeys = [\"{K1}\"]\n"
        ),
    )
    .unwrap();
    server.signal("HUP");
    server.wait_for_log("configuration reloaded");
    assert_eq!(
        header(&route.send(&server, false), "x-aibridge-key"),
        hint(K3)
    );
    assert_eq!(mock.keys_used(), [K1, K2, K3]);

    // A broken config is logged and the running one kept.
    std::fs::write(test.path("config.toml"), "[providers.anthropic\n").unwrap();
    server.signal("HUP");
    server.wait_for_log("reload failed, keeping the running configuration");
    assert_eq!(route.send(&server, false).status(), 200);
}

#[test]
fn shutdown_lets_in_flight_streams_finish() {
    let mock = MockUpstream::start();
    let gate = Gate::new();
    let route = &routes()[0];
    mock.on_key(K1, vec![Reply::sse(route.events).gated(&gate)]);
    let mut server = bridge(&mock, &[K1], "").serve();
    let mut reader = BufReader::new(route.send(&server, true));
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    server.signal("TERM");
    server.wait_for_log("shutting down");
    // The bridge stops accepting right after the log line; the stream is still open.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let refused = || {
        std::net::TcpStream::connect_timeout(&server.address(), Duration::from_millis(200)).is_err()
    };
    while !refused() {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting connections after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    gate.open();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert_eq!(first + &rest, route.events.concat());
    assert_eq!(server.wait(), 0);
}

#[test]
fn a_client_that_leaves_drops_the_upstream() {
    let mock = MockUpstream::start();
    let gate = Gate::new();
    let route = &routes()[0];
    mock.on_key(K1, vec![Reply::sse(route.events).gated(&gate)]);
    let test = bridge(&mock, &[K1], "request_log = \"requests.jsonl\"");
    let server = test.serve();
    let mut reader = BufReader::new(route.send(&server, true));
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    drop(reader);
    std::thread::sleep(Duration::from_millis(200));
    gate.open();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while mock.streams().abandoned == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the upstream stream was never dropped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(mock.streams().finished, 0);
    let log = wait_for_lines(&test.path("requests.jsonl"), 1);
    assert_eq!(log[0]["outcome"], "client_disconnected");
}

#[test]
fn stream_idle_timeout_ends_the_stream_with_an_error_event() {
    let mock = MockUpstream::start();
    let gate = Gate::new();
    let route = &routes()[1];
    mock.on_key(K1, vec![Reply::sse(route.events).gated(&gate)]);
    let server = bridge(&mock, &[K1], "stream_idle_timeout = \"300ms\"").serve();
    let text = route.send(&server, true).text().unwrap();
    assert!(
        text.contains("upstream stream interrupted: no data from upstream for 300ms"),
        "{text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"));
    gate.open();
}

pub fn wait_for_lines(path: &std::path::Path, count: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        if lines.len() >= count {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} has {} lines",
            path.display(),
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn request_log_and_dumps_record_every_request_without_keys() {
    let mock = MockUpstream::start();
    let routes = routes();
    mock.on_key(K1, vec![Reply::rate_limited(30)])
        .on_key(K2, vec![Reply::sse(routes[0].events)]);
    let test = bridge(
        &mock,
        &[K1, K2],
        "request_log = \"requests.jsonl\"\ndump_dir = \"dumps\"",
    );
    let server = test.serve();
    assert_eq!(
        routes[0].send(&server, true).text().unwrap(),
        routes[0].events.concat()
    );
    let log = wait_for_lines(&test.path("requests.jsonl"), 1);
    let line = &log[0];
    assert_eq!(line["provider"], "anthropic");
    assert_eq!(line["route"], "messages");
    assert_eq!(line["model"], "claude-sonnet-4-5");
    assert_eq!(line["stream"], true);
    assert_eq!(line["status"], 200);
    assert_eq!(line["outcome"], "completed");
    assert_eq!(line["key"], hint(K2));
    assert_eq!(line["input_tokens"], 25);
    assert_eq!(line["output_tokens"], 15);
    assert_eq!(
        line["attempts"],
        json!([{"key": hint(K1), "status": 429, "mark": "cooling", "model": "claude-sonnet-4-5"}, {"key": hint(K2), "status": 200, "mark": null}])
    );
    assert!(line["latency_ms"].as_f64().unwrap() >= line["ttfb_ms"].as_f64().unwrap());

    let dumps = test.path("dumps");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&dumps).map_or(0, Iterator::count) < 2 {
        assert!(std::time::Instant::now() < deadline, "dumps missing");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut names: Vec<_> = std::fs::read_dir(&dumps)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let id = line["id"].as_u64().unwrap();
    assert_eq!(
        names,
        [
            format!("{id:08}-attempt1.json"),
            format!("{id:08}-attempt2.json")
        ]
    );
    let first: Value =
        serde_json::from_str(&std::fs::read_to_string(dumps.join(&names[0])).unwrap()).unwrap();
    assert_eq!(first["request"]["headers"]["x-api-key"], hint(K1));
    assert_eq!(first["response"]["status"], 429);
    let second: Value =
        serde_json::from_str(&std::fs::read_to_string(dumps.join(&names[1])).unwrap()).unwrap();
    assert_eq!(second["response"]["status"], 200);
    assert_eq!(second["response"]["body"], routes[0].events.concat());
    for name in names {
        let text = std::fs::read_to_string(dumps.join(name)).unwrap();
        for secret in [K1, K2, SDK_KEY] {
            assert!(!text.contains(secret), "a dump shows a full key");
        }
    }
    assert!(!server.stderr().contains(K1));
}

#[test]
fn no_pool_and_no_caller_key_is_401_naming_the_setting() {
    let mock = MockUpstream::start();
    let server = Test::new()
        .config(&format!(
            "[providers.anthropic]\nbase_url = \"{}\"\n",
            mock.url()
        ))
        .serve();
    let response = server.post_message();
    assert_eq!(response.status(), 401);
    let message = json_body(response)["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("AIBRIDGE_ANTHROPIC_KEYS"), "{message}");
    // Without a pool, a caller's key is used as is.
    let response = routes()[0].request(&server, false, CALLER).send().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(mock.keys_used(), [CALLER]);
}

#[test]
fn a_json_answer_that_breaks_is_a_clean_502() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::Truncated]);
    let test = bridge(&mock, &[K1, K2], "request_log = \"requests.jsonl\"");
    let server = test.serve();
    let response = routes()[0].send(&server, false);
    assert_eq!(response.status(), 502);
    let body = json_body(response);
    assert_eq!(body["error"]["type"], "upstream_unreachable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("upstream answer interrupted"),
        "{body}"
    );
    assert_eq!(
        mock.keys_used(),
        [K1],
        "the answer had started: no failover"
    );
    let log = wait_for_lines(&test.path("requests.jsonl"), 1);
    assert_eq!(
        (log[0]["status"].as_u64(), log[0]["outcome"].as_str()),
        (Some(502), Some("error"))
    );
}

/// Sends `count` requests, one after the other, through a bridge with one worker: every
/// request goes out through the same connection pool.
fn send_through_one_worker(mock: &MockUpstream, count: usize) {
    let test = bridge(mock, &[K1], "");
    let server = test.serve_with(&["--listen", "127.0.0.1:0", "--workers", "1"]);
    for _ in 0..count {
        assert_eq!(routes()[0].send(&server, false).status(), 200);
    }
}

/// `aibridge_open_connections` of each worker, in no particular order.
fn open_connections(server: &Server) -> Vec<u64> {
    server
        .metrics()
        .lines()
        .filter(|line| line.starts_with("aibridge_open_connections{"))
        .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn connections_opened_together_are_spread_over_the_workers() {
    let mock = MockUpstream::start();
    let server =
        bridge(&mock, &[K1], "").serve_with(&["--listen", "127.0.0.1:0", "--workers", "2"]);
    let address = server.address();
    let held: Vec<std::net::TcpStream> = (0..4)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            stream
                .write_all(b"GET /_aibridge/health HTTP/1.1\r\nhost: bridge\r\n\r\n")
                .unwrap();
            // An answer means a worker has taken the connection.
            let mut first = [0; 1];
            stream.read_exact(&mut first).unwrap();
            stream
        })
        .collect();
    // The scrape's own connection is the fifth.
    let mut open = open_connections(&server);
    open.sort_unstable();
    assert_eq!(open, [2, 3], "one worker took more than its share");

    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while open_connections(&server).iter().sum::<u64>() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "closed connections still counted: {:?}",
            open_connections(&server)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn workers_flag() {
    let mock = MockUpstream::start();
    send_through_one_worker(&mock, 3);
    assert_eq!(mock.keys_used(), [K1, K1, K1]);
    Test::new()
        .args(["serve", "--workers", "0"])
        .run()
        .code(2)
        .stderr_has("--workers");
}

#[test]
fn upstream_connections_are_reused() {
    let mock = MockUpstream::start();
    send_through_one_worker(&mock, 5);
    assert_eq!(mock.requests().len(), 5);
    assert_eq!(mock.connections_used(), 1);
}

#[test]
fn long_streams_to_an_http2_upstream_never_queue_behind_a_full_connection() {
    // The upstream allows 100 requests at a time on a connection, the least RFC 9113
    // recommends; the 101st stream must not wait for one of the first 100 to end.
    let mock = MockUpstream::start_https(100);
    let route = &routes()[0];
    let gate = Gate::new();
    mock.on_key(K1, vec![route.success(true).gated(&gate)]);
    let test = bridge(&mock, &[K1], "");
    let trusted = test.path("upstream.pem");
    std::fs::write(&trusted, mock.certificate()).unwrap();
    let test = test.env("SSL_CERT_FILE", trusted.to_str().unwrap());
    let server = test.serve_with(&["--listen", "127.0.0.1:0", "--workers", "1"]);
    let streams = 101;
    let (started, all_started) = std::sync::mpsc::channel();
    let server = &server;
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..streams)
            .map(|_| {
                let started = started.clone();
                scope.spawn(move || {
                    let mut response = route.send(server, true);
                    assert_eq!(response.status(), 200);
                    let mut seen = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !String::from_utf8_lossy(&seen).contains(route.events[0]) {
                        let read = response.read(&mut chunk).unwrap();
                        assert!(read > 0, "the stream ended before its first event");
                        seen.extend_from_slice(&chunk[..read]);
                    }
                    started.send(()).unwrap();
                    response.read_to_end(&mut seen).unwrap();
                    String::from_utf8(seen).unwrap()
                })
            })
            .collect();
        for _ in 0..streams {
            // The mock gives up on its gate after 10 s, so a queued stream shows here first.
            all_started
                .recv_timeout(Duration::from_secs(8))
                .expect("every stream started while the others were open");
        }
        assert_eq!(
            mock.connections_used(),
            2,
            "a second connection for the 101st"
        );
        for _ in 0..streams {
            gate.open();
        }
        for reader in readers {
            assert_eq!(reader.join().unwrap(), route.expected(true));
        }
    });
    let requests = mock.requests();
    assert_eq!(requests.len(), streams);
    for request in requests {
        assert_eq!(request.key.as_deref(), Some(K1));
        assert_eq!(request.path, route.upstream_path);
        assert!(
            !request.headers.contains_key("host"),
            "HTTP/2 names it in :authority"
        );
    }
}

#[test]
fn forwarding_adds_only_the_key_and_the_api_version() {
    let mock = MockUpstream::start();
    let server = bridge(&mock, &[K1], "").serve();
    let response = server.post_message_with(&[("x-api-key", SDK_KEY)]);
    assert_eq!(response.status(), 200);
    let requests = mock.requests();
    let mut names: Vec<_> = requests[0]
        .headers
        .keys()
        .map(|name| name.as_str())
        .collect();
    names.sort_unstable();
    // The caller's `accept` (its HTTP client's default), the pool's key, the API version
    // Anthropic requires, and the two headers of the message's own framing: no user agent.
    assert_eq!(
        names,
        [
            "accept",
            "anthropic-version",
            "content-length",
            "host",
            "x-api-key"
        ]
    );
    assert_eq!(
        requests[0].headers["accept"], "*/*",
        "the caller's client sent it"
    );
}

#[test]
fn an_upstream_that_closes_each_connection_still_answers_every_request() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::ok("{}").header("connection", "close")]);
    send_through_one_worker(&mock, 3);
    assert_eq!(mock.connections_used(), 3);
}

#[test]
fn a_proxy_in_the_environment_carries_forwarded_requests() {
    let upstream = MockUpstream::start();
    let proxy = MockUpstream::start();
    let test = Test::new()
        .anthropic(&upstream, &[K1])
        .env("HTTP_PROXY", &proxy.url());
    let server = test.serve();
    let response = server.post_message();
    assert_eq!(response.status(), 200);
    assert_eq!(proxy.keys_used(), [K1]);
    assert!(upstream.requests().is_empty());
}
