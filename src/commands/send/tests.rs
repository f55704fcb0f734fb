use super::*;
use crate::keypool::DisableReason;

fn attempt(status: Option<u16>, mark: Option<KeyState>) -> Attempt {
    Attempt {
        index: None,
        model_reason: crate::keypool::StateReason::RateLimited,
        key_hint: "sk-a...efgh".into(),
        fingerprint: Some("f".into()),
        status,
        mark,
        model: None,
        changed: true,
        resent: false,
        cannot_connect: false,
        at_ms: 1_000,
        elapsed: Duration::ZERO,
        drained: None,
    }
}

#[test]
fn attempt_lines() {
    let cooling = attempt(Some(429), Some(KeyState::Cooling { until_ms: 31_000 }));
    assert_eq!(describe(&cooling, false), "marked cooling for 30s");
    let disabled = attempt(
        Some(401),
        Some(KeyState::Disabled(DisableReason::Unauthorized)),
    );
    assert_eq!(describe(&disabled, false), "marked disabled (unauthorized)");
    assert_eq!(describe(&attempt(Some(200), None), false), "ok");
    assert_eq!(
        describe(&attempt(Some(500), None), false),
        "error, not the key's fault (not marked)"
    );
    assert_eq!(describe(&attempt(None, None), false), "no response");
    assert_eq!(
        describe(&attempt(Some(401), None), true),
        "error (your own key, not marked)"
    );
}

#[test]
fn json_attempts_carry_mark_and_cooldown() {
    let report = AttemptReport::from(&attempt(
        Some(429),
        Some(KeyState::Cooling { until_ms: 90_500 }),
    ));
    assert_eq!(
        serde_json::to_value(report).unwrap(),
        serde_json::json!({"key": "sk-a...efgh", "status": 429, "mark": "cooling", "cooldown_secs": 90, "model": null})
    );
}
