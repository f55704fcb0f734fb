//! A fleet on one Redis: `serve` replicas, `send` and `pool` commands sharing key health
//! through a real `redis-server`, including Redis going away and coming back.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::redis::Redis;
use crate::harness::{
    K1, K2, K3, K4, K5, MockUpstream, Reply, Server, Test, client, dead_port, hint,
};

const OPUS: &str = "claude-opus-4-5";
const HAIKU: &str = "claude-haiku-4-5";

/// A member of the fleet: `anthropic` at the mock with `keys`, key health in `redis`, and a
/// listen address where no server runs (so `pool` commands read Redis).
fn member(mock: &MockUpstream, keys: &[&str], redis: &Redis) -> Test {
    let keys: Vec<_> = keys.iter().map(|key| format!("{key:?}")).collect();
    Test::new().config(&format!(
        "listen = \"127.0.0.1:{}\"\nredis_url = \"{}\"\n\
         [providers.anthropic]\nbase_url = \"{}\"\nkeys = [{}]\n",
        dead_port(),
        redis.url(),
        mock.url(),
        keys.join(", ")
    ))
}

fn message(model: &str) -> String {
    json!({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]})
        .to_string()
}

fn messages(server: &Server, model: &str) -> reqwest::blocking::Response {
    client()
        .post(server.url("/anthropic/v1/messages"))
        .header("content-type", "application/json")
        .body(message(model))
        .send()
        .unwrap()
}

/// The key `key` as `server` reports it.
fn key_report(server: &Server, key: &str) -> Value {
    server.pool()["providers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|provider| provider["keys"].as_array().unwrap().clone())
        .find(|report| report["hint"] == hint(key))
        .unwrap()
}

fn health(server: &Server) -> Value {
    client()
        .get(server.url("/_aibridge/health"))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// Waits up to 3 s for `condition`, which another process makes true.
fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !condition() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Keys the mock saw from the request numbered `from` on.
fn keys_since(mock: &MockUpstream, from: usize) -> Vec<String> {
    mock.keys_used()[from..].to_vec()
}

/// Nothing stored in Redis holds a full key, and every cooling entry expires.
fn assert_redis_holds_no_key(redis: &Redis) {
    let stored = redis.dump();
    assert!(!stored.is_empty(), "nothing was shared");
    for (name, value) in &stored {
        for key in [K1, K2, K3, K4, K5] {
            assert!(
                !name.contains(key) && !value.contains(key),
                "{name} = {value} holds a key"
            );
        }
        if name.contains(":cooling:") {
            let ttl = redis.ttl_ms(name);
            assert!((1..=60_000).contains(&ttl), "{name} expires in {ttl} ms");
        }
    }
}

#[test]
fn a_429_on_one_replica_sends_the_other_past_that_key_for_that_model() {
    let redis = Redis::start();
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(60)]);
    let a = member(&mock, &[K1, K2], &redis).serve();
    let b = member(&mock, &[K1, K2], &redis).serve();

    assert_eq!(messages(&a, OPUS).status(), 200);
    assert_eq!(mock.keys_used(), [K1, K2]);
    eventually("replica B hears of the cooldown", || {
        key_report(&b, K1)["cooling"][OPUS].is_object()
    });
    let before = mock.requests().len();
    assert_eq!(messages(&b, OPUS).status(), 200);
    assert_eq!(
        keys_since(&mock, before),
        [K2],
        "B must not contact K1 for opus"
    );
    let report = key_report(&b, K1);
    assert_eq!(report["state"], "available", "only opus cools: {report}");
    assert!(report["cooling"][HAIKU].is_null(), "{report}");
    assert_redis_holds_no_key(&redis);
}

#[test]
fn a_401_on_one_replica_disables_the_key_on_the_other() {
    let redis = Redis::start();
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::status(401)]);
    let a = member(&mock, &[K1, K2], &redis).serve();
    let b = member(&mock, &[K1, K2], &redis).serve();

    assert_eq!(messages(&b, HAIKU).status(), 200);
    eventually("replica A hears of the disable", || {
        key_report(&a, K1)["state"] == "disabled"
    });
    assert_eq!(key_report(&a, K1)["reason"], "unauthorized");
    let before = mock.requests().len();
    assert_eq!(messages(&a, OPUS).status(), 200);
    assert_eq!(keys_since(&mock, before), [K2]);
    assert_redis_holds_no_key(&redis);
}

#[test]
fn pool_reset_clears_every_replica() {
    let redis = Redis::start();
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::status(401), Reply::ok("{}")]);
    let operator = member(&mock, &[K1, K2], &redis);
    let a = operator.serve();
    let b = member(&mock, &[K1, K2], &redis).serve();
    assert_eq!(messages(&a, OPUS).status(), 200);
    eventually("both replicas hold the disable", || {
        key_report(&a, K1)["state"] == "disabled" && key_report(&b, K1)["state"] == "disabled"
    });

    let output = operator
        .run_with(&["pool", "reset", "--key", &hint(K1)])
        .success();
    let source = format!("redis {} (prefix aibridge)", redis.url());
    assert_eq!(
        output.stdout,
        format!("{source}: cleared anthropic {} (was disabled)\n", hint(K1))
    );
    eventually("both replicas clear K1", || {
        key_report(&a, K1)["state"] == "available" && key_report(&b, K1)["state"] == "available"
    });
    assert!(
        redis
            .dump()
            .iter()
            .all(|(name, _)| !name.contains(":disabled:")),
        "{:?}",
        redis.dump()
    );
    let before = mock.requests().len();
    assert_eq!(messages(&b, OPUS).status(), 200);
    assert_eq!(keys_since(&mock, before), [K1], "K1 serves again");
}

#[test]
fn send_marks_reach_a_replica_and_pool_status_reads_them() {
    let redis = Redis::start();
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(30)]);
    let replica = member(&mock, &[K1, K2], &redis).serve();
    let ci = member(&mock, &[K1, K2], &redis);

    ci.run_with(&["send", "-d", &message(OPUS)])
        .success()
        .stderr_has(&format!("{}  429", hint(K1)));
    eventually("the replica hears of send's mark", || {
        key_report(&replica, K1)["cooling"][OPUS].is_object()
    });

    let status = ci.run_with(&["pool", "status", "--json"]).success();
    assert!(
        status
            .stderr
            .contains(&format!("source: redis {}", redis.url())),
        "{}",
        status.stderr
    );
    let report = status.json();
    let k1 = &report["providers"][0]["keys"][0];
    assert_eq!(k1["hint"], hint(K1));
    assert!(
        k1["cooling"][OPUS]["remaining_secs"].as_u64().unwrap() > 20,
        "{k1}"
    );
    assert_eq!(k1["last_status"], 429);
    assert_redis_holds_no_key(&redis);
}

#[test]
fn entries_of_the_wrong_type_are_skipped_and_the_rest_still_count() {
    let redis = Redis::start();
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(30)]);
    let ci = member(&mock, &[K1, K2], &redis);
    ci.run_with(&["send", "-d", &message(OPUS)]).success();
    // Another program's keys, or a hand-made mistake, under the prefix.
    redis.command(&["SET", "aibridge:key:anthropic:00000000000000ff", "garbage"]);
    redis.command(&[
        "HSET",
        "aibridge:cooling:anthropic:00000000000000ee",
        "a",
        "b",
    ]);
    redis.command(&[
        "HSET",
        "aibridge:disabled:anthropic:00000000000000dd",
        "a",
        "\x1b[31m",
    ]);

    let status = ci.run_with(&["pool", "status", "--json"]).success();
    assert!(
        status
            .stderr
            .contains("skipped 3 unreadable Redis entries (first: aibridge:"),
        "{}",
        status.stderr
    );
    assert!(status.json()["providers"][0]["keys"][0]["cooling"][OPUS].is_object());

    let replica = member(&mock, &[K1, K2], &redis).serve();
    assert_eq!(health(&replica), json!({"status": "ok", "shared": "ok"}));
    assert!(key_report(&replica, K1)["cooling"][OPUS].is_object());
    replica.wait_for_log("skipped 3 unreadable Redis entries");
}

#[test]
fn redis_going_away_degrades_health_and_its_return_catches_up() {
    let mut redis = Redis::start();
    let mock = MockUpstream::start();
    let a = member(&mock, &[K1, K2], &redis).serve();
    let b = member(&mock, &[K1, K2], &redis).serve();
    assert_eq!(health(&a), json!({"status": "ok", "shared": "ok"}));

    redis.kill();
    eventually("both replicas say shared health is degraded", || {
        health(&a)["shared"] == "degraded" && health(&b)["shared"] == "degraded"
    });
    assert!(
        a.metrics().contains("aibridge_shared_health_degraded 1"),
        "{}",
        a.metrics()
    );
    // Requests keep flowing on local health, and a mark made meanwhile is kept.
    mock.on_key(K1, vec![Reply::rate_limited(60)]);
    for _ in 0..3 {
        assert_eq!(messages(&a, OPUS).status(), 200);
        assert_eq!(messages(&b, HAIKU).status(), 200);
    }
    assert_eq!(
        a.stderr().matches("shared key health degraded").count(),
        1,
        "one warning, not one per request or retry:\n{}",
        a.stderr()
    );

    redis.restart();
    eventually("both replicas reach Redis again", || {
        health(&a)["shared"] == "ok" && health(&b)["shared"] == "ok"
    });
    eventually("A's mark made while Redis was away reaches B", || {
        key_report(&b, K1)["cooling"][OPUS].is_object()
    });
    assert!(a.metrics().contains("aibridge_shared_health_degraded 0"));
    assert_redis_holds_no_key(&redis);
}

#[test]
fn serve_starts_without_redis_and_joins_when_it_comes() {
    let mut redis = Redis::start();
    redis.kill();
    let mock = MockUpstream::start();
    let a = member(&mock, &[K1, K2], &redis).serve();
    assert_eq!(health(&a), json!({"status": "ok", "shared": "degraded"}));
    assert_eq!(
        messages(&a, OPUS).status(),
        200,
        "it serves on its own health"
    );
    redis.restart();
    eventually("the replica reaches Redis", || health(&a)["shared"] == "ok");
}

#[test]
fn send_and_probe_keys_go_on_without_redis_and_say_so() {
    let mock = MockUpstream::start();
    mock.on_key(K1, vec![Reply::rate_limited(30)]);
    let down = format!("redis://127.0.0.1:{}/0", dead_port());
    let test = Test::new().anthropic(&mock, &[K1, K2]);
    test.run_with(&["send", "--redis-url", &down, "-d", &message(OPUS)])
        .success()
        .stderr_has("key marks are not shared: redis ")
        .stderr_has(&format!("{}  200", hint(K2)));
    let probe = test.run_with(&["probe-keys", "--redis-url", &down]).code(1);
    assert!(
        probe.stderr.contains("key marks are not shared"),
        "{}",
        probe.stderr
    );
    assert!(probe.stdout.contains("rate-limited"), "{}", probe.stdout);
    assert!(!test.state_file().exists(), "Redis replaces the state file");
}

#[test]
fn redis_settings_are_checked() {
    Test::new()
        .config("redis_url = \"http://127.0.0.1:6379\"\n")
        .args(["pool", "status"])
        .run()
        .code(2)
        .one_line_error("redis_url: the scheme must be redis:// or rediss://, not http://");
    Test::new()
        .config("redis_url = \"redis://127.0.0.1:6379\"\nredis_prefix = \"a*b\"\n")
        .args(["pool", "status"])
        .run()
        .code(2)
        .one_line_error("redis_prefix: \"a*b\" must be letters");
    let output = Test::new()
        .args(["pool", "status", "--redis-url", "redis://:hunter2secret@"])
        .run()
        .code(2);
    assert!(output.stderr.contains("--redis-url"), "{}", output.stderr);
    assert!(
        !output.stderr.contains("hunter2secret"),
        "{}",
        output.stderr
    );
}

#[test]
fn pool_commands_with_redis_down_fail_clearly() {
    let down = format!("redis://:hunter2secret@127.0.0.1:{}/0", dead_port());
    let test = Test::new().config(&format!("listen = \"127.0.0.1:{}\"\n", dead_port()));
    for command in [&["pool", "status"][..], &["pool", "reset"][..]] {
        let output = test
            .run_with(&[command, &["--redis-url", &down]].concat())
            .code(2);
        let lines = output.stderr_lines();
        assert_eq!(lines.len(), 1, "{}", output.stderr);
        assert!(
            lines[0].starts_with("error: cannot ")
                && lines[0].contains("redis redis://:***@127.0.0.1"),
            "{}",
            lines[0]
        );
        assert!(!output.stderr.contains("hunter2secret"));
        assert_eq!(
            lines[0].matches("os error").count(),
            1,
            "a cause said twice: {}",
            lines[0]
        );
    }
}

#[test]
fn two_replicas_keep_a_session_on_one_key() {
    let redis = Redis::start();
    let mock = MockUpstream::start();
    let keys = [K1, K2, K3];
    let config = |mock: &MockUpstream| {
        let keys: Vec<_> = keys.iter().map(|key| format!("{key:?}")).collect();
        format!(
            "redis_url = \"{}\"\n[providers.anthropic]\nbase_url = \"{}\"\nkeys = [{}]\n\
             strategy = \"round-robin\"\n",
            redis.url(),
            mock.url(),
            keys.join(", ")
        )
    };
    let (a, b) = (
        Test::new().config(&config(&mock)),
        Test::new().config(&config(&mock)),
    );
    let (first, second) = (a.serve(), b.serve());
    let ask = |server: &Server, session: &str| {
        let answer = client()
            .post(server.url("/anthropic/v1/messages"))
            .header("x-aibridge-session", session)
            .body(message(OPUS))
            .send()
            .unwrap();
        assert_eq!(answer.status(), 200);
        answer.headers()["x-aibridge-key"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    // Turn the second replica's round-robin off the first's, so only sharing can agree.
    ask(&second, "warm-up");
    let on_first = ask(&first, "conversation");
    // The announcement is in the background; asking the second replica before it lands
    // would make it a new session there.
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..4 {
        assert_eq!(ask(&second, "conversation"), on_first);
        assert_eq!(ask(&first, "conversation"), on_first);
    }
    let stored = format!("{:?}", redis.dump());
    assert!(!stored.contains("conversation"), "{stored}");
}
