use super::*;

const T0: u64 = 1_800_000_000_000;

fn keys(count: usize) -> Vec<ApiKey> {
    (0..count)
        .map(|i| ApiKey::new(format!("sk-test-key-{i:04}")))
        .collect()
}

fn pool_with(count: usize, settings: PoolSettings) -> (Pool, Arc<ManualClock>) {
    let clock = ManualClock::starting_at(T0);
    let pool = Pool::new(keys(count), settings, clock.clone()).unwrap();
    (pool, clock)
}

fn pool(count: usize) -> (Pool, Arc<ManualClock>) {
    pool_with(count, PoolSettings::default())
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(name, value)| (http::HeaderName::from_static(name), value.parse().unwrap()))
        .collect()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn walk_hands_out_keys_in_order_each_once() {
    let (pool, _) = pool(3);
    assert_eq!(pool.walk().collect::<Vec<_>>(), vec![0, 1, 2]);
}

#[test]
fn walk_skips_cooling_and_disabled_keys() {
    let (pool, _) = pool(4);
    pool.mark(0, Mark::Cool(secs(30)));
    pool.mark(2, Mark::Disable(DisableReason::Forbidden));
    assert_eq!(pool.walk().collect::<Vec<_>>(), vec![1, 3]);
}

#[test]
fn marks_are_seen_by_a_walk_already_under_way() {
    let (pool, _) = pool(3);
    let mut walk = pool.walk();
    assert_eq!(walk.next(), Some(0));
    pool.mark(1, Mark::Cool(secs(5)));
    assert_eq!(walk.next(), Some(2));
    assert_eq!(walk.next(), None);
}

#[test]
fn cooldown_expires_with_the_clock() {
    let (pool, clock) = pool(2);
    pool.mark(0, Mark::Cool(secs(30)));
    clock.advance(secs(29));
    assert_eq!(pool.walk().next(), Some(1));
    clock.advance(secs(1));
    assert_eq!(pool.state(0), KeyState::Available);
    assert_eq!(pool.walk().next(), Some(0));
}

#[test]
fn cooldown_only_extends() {
    let (pool, _) = pool(1);
    let first = pool.mark(0, Mark::Cool(secs(60)));
    assert!(first.changed);
    let shorter = pool.mark(0, Mark::Cool(secs(10)));
    assert!(!shorter.changed);
    assert_eq!(
        shorter.state,
        KeyState::Cooling {
            until_ms: T0 + 60_000
        }
    );
    let longer = pool.mark(0, Mark::Cool(secs(90)));
    assert!(!longer.changed, "extending is not a change of state");
    assert_eq!(
        longer.state,
        KeyState::Cooling {
            until_ms: T0 + 90_000
        }
    );
}

#[test]
fn a_new_cooldown_after_expiry_is_a_change() {
    let (pool, clock) = pool(1);
    pool.mark(0, Mark::Cool(secs(1)));
    clock.advance(secs(2));
    assert!(pool.mark(0, Mark::Cool(secs(1))).changed);
}

#[test]
fn disabled_is_permanent_and_reports_one_change() {
    let (pool, clock) = pool(1);
    assert!(pool.mark(0, Mark::Cool(secs(5))).changed);
    let disabled = pool.mark(0, Mark::Disable(DisableReason::Unauthorized));
    assert!(disabled.changed);
    assert!(
        !pool
            .mark(0, Mark::Disable(DisableReason::Forbidden))
            .changed
    );
    assert!(!pool.mark(0, Mark::Cool(secs(5))).changed);
    clock.advance(secs(100_000));
    assert_eq!(
        pool.state(0),
        KeyState::Disabled(DisableReason::Unauthorized)
    );
}

#[test]
fn statuses_map_to_marks() {
    let (pool, _) = pool(1);
    let none = HeaderMap::new();
    assert_eq!(pool.mark_for(429, &none), Some(Mark::Cool(secs(60))));
    assert_eq!(
        pool.mark_for(401, &none),
        Some(Mark::Disable(DisableReason::Unauthorized))
    );
    assert_eq!(
        pool.mark_for(403, &none),
        Some(Mark::Disable(DisableReason::Forbidden))
    );
    for status in [200, 201, 400, 404, 413, 500, 502, 503, 529] {
        assert_eq!(pool.mark_for(status, &none), None, "{status}");
    }
}

#[test]
fn cooldown_uses_headers_default_and_cap() {
    let settings = PoolSettings {
        default_cooldown: secs(45),
        max_cooldown: secs(600),
        ..PoolSettings::default()
    };
    let (pool, _) = pool_with(1, settings);
    assert_eq!(
        pool.cooldown_for(&headers(&[("retry-after", "30")])),
        secs(30)
    );
    assert_eq!(
        pool.cooldown_for(&headers(&[("retry-after", "0")])),
        secs(45)
    );
    assert_eq!(pool.cooldown_for(&HeaderMap::new()), secs(45));
    assert_eq!(
        pool.cooldown_for(&headers(&[("retry-after", "86400")])),
        secs(600)
    );
}

#[test]
fn exhaustion_reports_smallest_remaining_cooldown() {
    let (pool, clock) = pool(3);
    pool.mark(0, Mark::Cool(secs(30)));
    pool.mark(1, Mark::Cool(secs(10)));
    pool.mark(2, Mark::Disable(DisableReason::Unauthorized));
    clock.advance(Duration::from_millis(2500));
    let exhausted = pool.exhaustion(None);
    assert_eq!(exhausted.kind, ExhaustionKind::RateLimited);
    assert_eq!(exhausted.retry_after, Duration::from_millis(7500));
    assert_eq!(exhausted.retry_after_secs(), 8);
    assert_eq!(
        exhausted.to_string(),
        "all configured keys are rate-limited (retry after 8s)"
    );
}

#[test]
fn exhaustion_is_zero_when_a_key_came_back() {
    let (pool, clock) = pool(2);
    pool.mark(0, Mark::Cool(secs(1)));
    pool.mark(1, Mark::Cool(secs(50)));
    clock.advance(secs(5));
    let exhausted = pool.exhaustion(None);
    assert_eq!(exhausted.kind, ExhaustionKind::RateLimited);
    assert_eq!(exhausted.retry_after, Duration::ZERO);
}

#[test]
fn exhaustion_is_unauthorized_when_every_key_is_disabled() {
    let (pool, _) = pool(2);
    pool.mark(0, Mark::Disable(DisableReason::Unauthorized));
    pool.mark(1, Mark::Disable(DisableReason::Forbidden));
    let exhausted = pool.exhaustion(None);
    assert_eq!(exhausted.kind, ExhaustionKind::Unauthorized);
    assert_eq!(
        exhausted.to_string(),
        "all configured keys failed authentication or are out of quota; run `aibridge pool \
         status` to see why, and `aibridge pool reset` once they are fixed"
    );
}

#[test]
fn empty_and_duplicate_keys_are_rejected_by_index() {
    let clock = ManualClock::starting_at(T0);
    let empty = Pool::new(
        vec![ApiKey::new("sk-one-secret"), ApiKey::new("  ")],
        PoolSettings::default(),
        clock.clone(),
    );
    assert_eq!(empty.unwrap_err(), PoolError::EmptyKey { index: 2 });
    let duplicate = Pool::new(
        vec![
            ApiKey::new("sk-one-secret"),
            ApiKey::new("sk-two-secret"),
            ApiKey::new("sk-one-secret"),
        ],
        PoolSettings::default(),
        clock,
    );
    let error = duplicate.unwrap_err();
    assert_eq!(error, PoolError::DuplicateKey { index: 3, first: 1 });
    assert!(!error.to_string().contains("secret"));
}

#[test]
fn ten_thousand_keys_work() {
    let (pool, _) = pool(10_000);
    for index in 0..9_999 {
        pool.mark(index, Mark::Cool(secs(60)));
    }
    assert_eq!(pool.walk().collect::<Vec<_>>(), vec![9_999]);
    assert_eq!(pool.index_of(pool.key(1234).fingerprint()), Some(1234));
}

#[test]
fn round_robin_rotates_the_start() {
    let settings = PoolSettings {
        strategy: Strategy::RoundRobin,
        ..PoolSettings::default()
    };
    let (pool, _) = pool_with(3, settings);
    let firsts: Vec<_> = (0..4).map(|_| pool.walk().next().unwrap()).collect();
    assert_eq!(firsts, vec![0, 1, 2, 0]);
    assert_eq!(pool.walk().collect::<Vec<_>>(), vec![1, 2, 0]);
    pool.mark(2, Mark::Cool(secs(9)));
    assert_eq!(pool.walk().collect::<Vec<_>>(), vec![0, 1]);
}

#[test]
fn concurrent_marks_keep_the_longest_cooldown() {
    let (pool, _) = pool(1);
    std::thread::scope(|scope| {
        for thread in 1..=8u64 {
            let pool = &pool;
            scope.spawn(move || {
                for round in 0..1000 {
                    pool.mark(0, Mark::Cool(secs(thread * 10 + round % 3)));
                }
            });
        }
    });
    assert_eq!(
        pool.state(0),
        KeyState::Cooling {
            until_ms: T0 + 82_000
        }
    );
}

#[test]
fn concurrent_walkers_each_see_every_key_once() {
    let (pool, _) = pool(64);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..100 {
                    let seen: Vec<_> = pool.walk().collect();
                    assert_eq!(seen.len(), 64);
                }
            });
        }
    });
}

#[test]
fn a_reloaded_pool_keeps_the_state_of_unchanged_keys() {
    let (old, clock) = pool(3);
    old.mark(1, Mark::Disable(DisableReason::Forbidden));
    old.record_attempt(1, Some(403));
    let mut reordered = keys(3);
    reordered.swap(0, 1);
    reordered.push(ApiKey::new("sk-test-key-new1"));
    let new = Pool::new(reordered, PoolSettings::default(), clock).unwrap();
    new.inherit_from(&old);
    assert_eq!(new.state(0), KeyState::Disabled(DisableReason::Forbidden));
    assert_eq!(new.snapshot(0).requests, 1);
    assert_eq!(new.state(3), KeyState::Available);
}

#[test]
fn state_word_round_trips() {
    for state in [
        KeyState::Available,
        KeyState::Cooling { until_ms: T0 },
        KeyState::Disabled(DisableReason::Unauthorized),
        KeyState::Disabled(DisableReason::Forbidden),
        KeyState::Disabled(DisableReason::Quota),
    ] {
        assert_eq!(KeyState::decode(state.encode()), state);
    }
}

#[test]
fn attempts_are_counted() {
    let (pool, clock) = pool(1);
    pool.record_attempt(0, Some(200));
    clock.advance(secs(1));
    pool.record_attempt(0, Some(429));
    pool.record_attempt(0, None);
    let snapshot = pool.snapshot(0);
    assert_eq!((snapshot.requests, snapshot.failures), (3, 2));
    assert_eq!(snapshot.last_status, None);
    assert_eq!(snapshot.last_used_ms, Some(T0 + 1000));
    assert_eq!(snapshot.hint, "sk...00");
}

#[test]
fn a_429_for_one_model_leaves_the_key_serving_others() {
    let (pool, clock) = pool(2);
    let outcome = pool.mark_request(0, Mark::Cool(secs(30)), Some("opus"));
    assert!(outcome.changed && outcome.per_model);
    assert_eq!(pool.state(0), KeyState::Available, "key-wide untouched");
    assert_eq!(pool.walk().next_for(Some("opus")), Some(1));
    assert_eq!(pool.walk().next_for(Some("haiku")), Some(0));
    assert_eq!(pool.walk().next_for(None), Some(0), "no model: any key");
    assert!(pool.any_model_cooling(0));
    clock.advance(secs(30));
    assert_eq!(pool.walk().next_for(Some("opus")), Some(0));
    assert!(!pool.any_model_cooling(0));
}

#[test]
fn key_scope_and_model_less_requests_cool_the_whole_key() {
    let settings = PoolSettings {
        cooldown_scope: CooldownScope::Key,
        ..PoolSettings::default()
    };
    let (key_scoped, _) = pool_with(2, settings);
    let outcome = key_scoped.mark_request(0, Mark::Cool(secs(30)), Some("opus"));
    assert!(!outcome.per_model);
    assert_eq!(key_scoped.walk().next_for(Some("haiku")), Some(1));

    let (model_scoped, _) = pool(2);
    assert!(
        !model_scoped
            .mark_request(0, Mark::Cool(secs(30)), None)
            .per_model
    );
    assert_eq!(model_scoped.walk().next_for(Some("haiku")), Some(1));
}

#[test]
fn auth_and_quota_disable_the_key_for_every_model() {
    let (pool, _) = pool(3);
    pool.mark_request(0, Mark::Disable(DisableReason::Unauthorized), Some("opus"));
    pool.mark_request(1, Mark::Disable(DisableReason::Quota), Some("opus"));
    assert_eq!(pool.state(1), KeyState::Disabled(DisableReason::Quota));
    assert_eq!(pool.walk().next_for(Some("haiku")), Some(2));
    assert_eq!(pool.state(1).reason(), Some(StateReason::Quota));
}

#[test]
fn exhaustion_is_per_model() {
    let (pool, clock) = pool(3);
    pool.mark_request(0, Mark::Cool(secs(30)), Some("opus"));
    pool.mark_request(1, Mark::Cool(secs(10)), Some("opus"));
    pool.mark(1, Mark::Cool(secs(20)));
    pool.mark(2, Mark::Disable(DisableReason::Forbidden));
    clock.advance(Duration::from_millis(500));
    let exhausted = pool.exhaustion(Some("opus"));
    assert_eq!(exhausted.kind, ExhaustionKind::RateLimited);
    // Key 1 is back for opus when both its cooldowns end: the key-wide one, at 20 s.
    assert_eq!(exhausted.retry_after, Duration::from_millis(19_500));
    assert_eq!(
        exhausted.to_string(),
        "all configured keys are rate-limited for model \"opus\" (retry after 20s)"
    );
    // Another model only waits for the key-wide cooldowns.
    assert_eq!(pool.exhaustion(Some("haiku")).retry_after, Duration::ZERO);
    assert_eq!(pool.exhaustion(Some("haiku")).retry_after_secs(), 1);
}

#[test]
fn attempt_limit_is_named_in_the_message() {
    let exhausted = Exhausted {
        kind: ExhaustionKind::RateLimited,
        retry_after: Duration::ZERO,
        model: Some("opus".into()),
        attempt_limit: Some(AttemptLimit { tried: 4, keys: 7 }),
    };
    assert_eq!(
        exhausted.to_string(),
        "4 of 7 keys tried for model \"opus\", each rate-limited or disabled; stopped after \
         max_attempts (4); the 3 keys not tried are ready for a retry"
    );
    assert_eq!(
        exhausted.retry_after_secs(),
        1,
        "a retry goes to the untried keys"
    );
}

#[test]
fn reset_clears_key_wide_and_model_marks() {
    let (pool, _) = pool(2);
    pool.mark_request(0, Mark::Cool(secs(30)), Some("opus"));
    assert_eq!(
        pool.reset(0),
        KeyState::Cooling {
            until_ms: T0 + 30_000
        },
        "a key cooling for a model was cooling"
    );
    assert_eq!(pool.walk().next_for(Some("opus")), Some(0));
    pool.mark(1, Mark::Disable(DisableReason::Forbidden));
    assert_eq!(pool.reset(1), KeyState::Disabled(DisableReason::Forbidden));
    assert_eq!(pool.reset(1), KeyState::Available);
}

#[test]
fn restored_model_cooldowns_are_capped() {
    let settings = PoolSettings {
        max_cooldown: secs(60),
        ..PoolSettings::default()
    };
    let (pool, _) = pool_with(1, settings);
    pool.restore_model(0, "opus", T0 + 86_400_000, StateReason::Quota);
    pool.restore_model(0, "old", T0 - 1, StateReason::RateLimited);
    let models = pool.snapshot(0).models;
    assert_eq!(models.len(), 1);
    assert_eq!(models[0].until_ms, T0 + 60_000);
    assert_eq!(
        models[0].reason,
        StateReason::Quota,
        "the reason travels with it"
    );
}

#[test]
fn spent_budgets_cool_until_the_reset_capped() {
    let settings = PoolSettings {
        max_cooldown: secs(60),
        ..PoolSettings::default()
    };
    let (pool, _) = pool_with(1, settings);
    let spent = headers(&[
        ("x-ratelimit-remaining-requests", "0"),
        ("x-ratelimit-reset-requests", "20s"),
    ]);
    assert_eq!(pool.spent_budget_cooldown(&spent), Some(secs(20)));
    let long = headers(&[
        ("x-ratelimit-remaining-tokens", "0"),
        ("x-ratelimit-reset-tokens", "2h"),
    ]);
    assert_eq!(pool.spent_budget_cooldown(&long), Some(secs(60)));
    assert_eq!(pool.spent_budget_cooldown(&HeaderMap::new()), None);
}

#[test]
fn a_reload_keeps_model_cooldowns() {
    let (old, clock) = pool(2);
    old.mark_request(1, Mark::Cool(secs(30)), Some("opus"));
    let new = Pool::new(keys(2), PoolSettings::default(), clock).unwrap();
    new.inherit_from(&old);
    assert_eq!(new.walk().next_for(Some("opus")), Some(0));
    pool_is_cooling(&new, 1, "opus");
}

fn pool_is_cooling(pool: &Pool, index: usize, model: &str) {
    let models = pool.snapshot(index).models;
    assert!(
        models.iter().any(|entry| &*entry.model == model),
        "{models:?}"
    );
}
