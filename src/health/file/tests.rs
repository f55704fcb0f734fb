use super::*;
use crate::keypool::{ManualClock, PoolSettings};
use crate::secret::ApiKey;
use std::time::Duration;

const T0: u64 = 1_800_000_000_000;

fn at(ms: u64) -> SystemTime {
    from_unix_ms(ms)
}

fn observe(state: &mut StateFile, fingerprint: &str, status: u16, mark: Option<KeyState>) {
    observe_model(state, fingerprint, status, mark, None);
}

fn observe_model(
    state: &mut StateFile,
    fingerprint: &str,
    status: u16,
    mark: Option<KeyState>,
    model: Option<&str>,
) {
    state.observe(&Observation {
        model_reason: StateReason::RateLimited,
        provider: "anthropic".to_owned(),
        fingerprint: fingerprint.to_owned(),
        hint: "sk-a...efgh".to_owned(),
        status: Some(status),
        mark,
        model: model.map(str::to_owned),
        at: at(T0),
        max_cooldown: Duration::from_secs(3600),
    });
}

fn record<'a>(state: &'a StateFile, fingerprint: &str) -> &'a KeyRecord {
    &state.providers["anthropic"][fingerprint]
}

#[test]
fn longer_cooldown_wins_and_disabled_sticks() {
    let mut state = StateFile::default();
    observe(
        &mut state,
        "f1",
        429,
        Some(KeyState::Cooling {
            until_ms: T0 + 60_000,
        }),
    );
    observe(
        &mut state,
        "f1",
        429,
        Some(KeyState::Cooling {
            until_ms: T0 + 5_000,
        }),
    );
    assert_eq!(
        KeyState::from(record(&state, "f1").state),
        KeyState::Cooling {
            until_ms: T0 + 60_000
        }
    );
    observe(
        &mut state,
        "f1",
        401,
        Some(KeyState::Disabled(DisableReason::Unauthorized)),
    );
    observe(&mut state, "f1", 200, None);
    let last = record(&state, "f1");
    assert_eq!(
        KeyState::from(last.state),
        KeyState::Disabled(DisableReason::Unauthorized)
    );
    assert_eq!(last.last_status, Some(200));
}

#[test]
fn clear_by_provider_and_key() {
    let mut state = StateFile::default();
    observe(
        &mut state,
        "f1",
        401,
        Some(KeyState::Disabled(DisableReason::Unauthorized)),
    );
    observe(
        &mut state,
        "f2",
        403,
        Some(KeyState::Disabled(DisableReason::Forbidden)),
    );
    assert!(state.clear(Some("openai"), None, at(T0)).is_empty());
    let cleared = state.clear(Some("anthropic"), Some("f2"), at(T0));
    assert_eq!(
        cleared,
        [ClearedKey {
            provider: "anthropic".into(),
            key: "sk-a...efgh".into(),
            fingerprint: "f2".into(),
            was: StateKind::Disabled
        }]
    );
    assert_eq!(record(&state, "f2").state, RecordedState::Available);
    assert_eq!(state.clear(None, None, at(T0)).len(), 1);
}

#[test]
fn model_cooldowns_are_kept_beside_the_key_wide_state() {
    let mut state = StateFile::default();
    let cooling = |ms| Some(KeyState::Cooling { until_ms: T0 + ms });
    observe_model(&mut state, "f1", 429, cooling(60_000), Some("opus"));
    observe_model(&mut state, "f1", 429, cooling(5_000), Some("opus"));
    observe_model(&mut state, "f1", 429, cooling(9_000), Some("haiku"));
    let record = record(&state, "f1");
    assert_eq!(record.state, RecordedState::Available, "key-wide untouched");
    assert_eq!(record.cooling["opus"].until, at(T0 + 60_000), "later wins");
    assert_eq!(record.cooling["haiku"].until, at(T0 + 9_000));
    let text = serde_json::to_string(&state).unwrap();
    assert!(text.contains(r#""cooling":{"haiku":{"until":"#), "{text}");
    // A reset clears models too, and says the key was cooling.
    let cleared = state.clear(None, Some("f1"), at(T0));
    assert_eq!(cleared[0].was, StateKind::Cooling);
    assert!(self::record(&state, "f1").cooling.is_empty());
    // Once every cooldown has ended, there is nothing to clear.
    observe_model(&mut state, "f1", 429, cooling(1_000), Some("opus"));
    assert!(state.clear(None, None, at(T0 + 2_000)).is_empty());
}

#[test]
fn files_from_before_model_cooldowns_still_read() {
    let text = r#"{"version": 1, "providers": {"anthropic": {"f1": {
        "hint": "sk-a...efgh", "state": "cooling", "reason": "rate_limited",
        "until": "2027-01-15T08:00:00Z", "last_status": 429}}}}"#;
    let state: StateFile = serde_json::from_str(text).unwrap();
    let record = record(&state, "f1");
    assert!(matches!(record.state, RecordedState::Cooling { .. }));
    assert!(record.cooling.is_empty());
    let disabled = r#"{"version": 1, "providers": {"a": {"f": {
        "hint": "h", "state": "disabled", "reason": "quota"}}}}"#;
    let state: StateFile = serde_json::from_str(disabled).unwrap();
    assert_eq!(
        state.providers["a"]["f"].state,
        RecordedState::Disabled {
            reason: DisableReason::Quota
        }
    );
}

#[test]
fn a_record_keeps_a_bounded_number_of_models() {
    let mut state = StateFile::default();
    for index in 0..300 {
        let until_ms = T0 + 60_000 + index;
        observe_model(
            &mut state,
            "f1",
            429,
            Some(KeyState::Cooling { until_ms }),
            Some(&format!("model-{index}")),
        );
    }
    let cooling = &record(&state, "f1").cooling;
    assert_eq!(cooling.len(), MAX_MODELS_PER_RECORD);
    assert!(
        !cooling.contains_key("model-0"),
        "the soonest to end go first"
    );
    assert!(cooling.contains_key("model-299"));
}

#[test]
fn file_round_trip_never_holds_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::new(dir.path().join("nested/state.json"));
    let key = ApiKey::new("sk-ant-secret-value-0123456789");
    store
        .update(|state| {
            state.observe(&Observation {
                model_reason: StateReason::RateLimited,
                provider: "anthropic".to_owned(),
                fingerprint: key.fingerprint(),
                hint: key.hint(),
                status: Some(429),
                mark: Some(KeyState::Cooling {
                    until_ms: T0 + 1_500,
                }),
                model: None,
                at: at(T0),
                max_cooldown: Duration::from_secs(3600),
            })
        })
        .unwrap();
    let text = fs::read_to_string(store.path()).unwrap();
    assert!(!text.contains("secret-value"), "{text}");
    assert!(text.contains("\"reason\": \"rate_limited\""), "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(store.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let clock = ManualClock::starting_at(T0);
    let pool = Pool::new(vec![key], PoolSettings::default(), clock.clone()).unwrap();
    store.load().unwrap().restore_into("anthropic", &pool);
    assert_eq!(
        pool.state(0),
        KeyState::Cooling {
            until_ms: T0 + 1_500
        }
    );
    assert_eq!(pool.snapshot(0).last_status, Some(429));
    clock.advance(Duration::from_secs(2));
    assert_eq!(pool.state(0), KeyState::Available);
}

#[cfg(unix)]
#[test]
fn a_link_in_place_of_the_lock_file_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere");
    std::os::unix::fs::symlink(&target, dir.path().join("state.json.lock")).unwrap();
    let store = StateStore::new(dir.path().join("state.json"));
    let error = store.load().unwrap_err().to_string();
    assert!(error.starts_with("state file "), "{error}");
    assert!(!target.exists(), "the link's target was created");
}

#[test]
fn deadlines_read_from_the_file_are_capped() {
    let clock = ManualClock::starting_at(T0);
    let key = ApiKey::new("sk-ant-capped-key-0123456789");
    let settings = PoolSettings {
        max_cooldown: Duration::from_secs(60),
        ..PoolSettings::default()
    };
    let pool = Pool::new(vec![key.clone()], settings, clock).unwrap();
    let mut state = StateFile::default();
    let far = T0 + 100 * 365 * 86_400_000;
    for model in [None, Some("opus")] {
        state.observe(&Observation {
            model_reason: StateReason::RateLimited,
            provider: "anthropic".to_owned(),
            fingerprint: key.fingerprint(),
            hint: key.hint(),
            status: Some(429),
            mark: Some(KeyState::Cooling { until_ms: far }),
            model: model.map(str::to_owned),
            at: at(T0),
            // Written as another build might have: only reading caps it here.
            max_cooldown: Duration::from_secs(200 * 365 * 86_400),
        });
    }
    state.restore_into("anthropic", &pool);
    assert_eq!(
        pool.state(0),
        KeyState::Cooling {
            until_ms: T0 + 60_000
        }
    );
    assert_eq!(pool.snapshot(0).models[0].until_ms, T0 + 60_000);
}

#[test]
fn deadlines_written_are_capped_whatever_the_file_held() {
    let mut state = StateFile::default();
    let far = KeyState::Cooling {
        until_ms: T0 + 100 * 365 * 86_400_000,
    };
    observe(&mut state, "f1", 429, Some(far));
    observe_model(&mut state, "f1", 429, Some(far), Some("opus"));
    let record = record(&state, "f1");
    let hour = T0 + 3_600_000;
    assert_eq!(
        KeyState::from(record.state),
        KeyState::Cooling { until_ms: hour }
    );
    assert_eq!(record.cooling["opus"].until, at(hour));
}

#[test]
fn corrupt_file_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    fs::write(&path, "{not json").unwrap();
    let store = StateStore::new(&path);
    assert_eq!(store.load().unwrap(), StateFile::default());
    let aside: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("state.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(
        fs::read_to_string(dir.path().join(&aside[0])).unwrap(),
        "{not json"
    );
}

#[test]
fn concurrent_updates_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::new(dir.path().join("state.json"));
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let store = store.clone();
            scope.spawn(move || {
                for round in 0..10 {
                    let fingerprint = format!("t{thread}-{round}");
                    store
                        .update(|state| {
                            observe(
                                state,
                                &fingerprint,
                                429,
                                Some(KeyState::Cooling { until_ms: T0 }),
                            )
                        })
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(store.load().unwrap().providers["anthropic"].len(), 40);
}

#[test]
fn a_model_rest_keeps_its_reason_through_the_file() {
    let mut state = StateFile::default();
    state.observe(&Observation {
        model_reason: StateReason::NoModelAccess,
        provider: "anthropic".to_owned(),
        fingerprint: "f1".to_owned(),
        hint: "AKIA...0001@us-east-1".to_owned(),
        status: Some(403),
        mark: Some(KeyState::Cooling {
            until_ms: T0 + 60_000,
        }),
        model: Some("anthropic.claude-x".to_owned()),
        at: at(T0),
        max_cooldown: Duration::from_secs(3600),
    });
    let text = serde_json::to_string(&state).unwrap();
    assert!(text.contains("\"reason\":\"no_model_access\""), "{text}");
    let read: StateFile = serde_json::from_str(&text).unwrap();
    let cooling = &record(&read, "f1").cooling["anthropic.claude-x"];
    assert_eq!(cooling.reason, StateReason::NoModelAccess);
    // A rate limit writes no reason, so older files read the same.
    observe_model(
        &mut state,
        "f2",
        429,
        Some(KeyState::Cooling {
            until_ms: T0 + 60_000,
        }),
        Some("opus"),
    );
    let text = serde_json::to_string(&state.providers["anthropic"]["f2"]).unwrap();
    assert!(!text.contains("reason"), "{text}");
}
