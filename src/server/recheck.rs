//! Brings disabled keys back: keys get re-enabled upstream (billing fixed, a permission
//! restored), so every `recheck_disabled` each disabled key gets one cheap probe request,
//! never a user's request, and a key whose probe answers 2xx is available again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::AppState;
use crate::health::HealthChange;
use crate::probe::{Verdict, disabled_keys, probe};

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often to look again when no provider rechecks (a reload may change that).
const IDLE_POLL: Duration = Duration::from_secs(60);

pub async fn run(app: &'static AppState) {
    let mut last_round: HashMap<String, Instant> = HashMap::new();
    loop {
        let pause = app
            .bridge
            .load()
            .rechecks
            .values()
            .copied()
            .min()
            .unwrap_or(IDLE_POLL);
        tokio::time::sleep(pause).await;
        let bridge = app.bridge.load_full();
        for (name, interval) in &bridge.rechecks {
            let started = *last_round
                .entry(name.clone())
                .or_insert_with(|| Instant::now() - pause);
            if started.elapsed() < *interval {
                continue;
            }
            last_round.insert(name.clone(), Instant::now());
            let Some(upstream) = bridge.upstreams.get(name) else {
                continue;
            };
            for index in disabled_keys(upstream) {
                let walker = bridge.walker(app.workers);
                let result = probe(walker, upstream, index, PROBE_TIMEOUT).await;
                if result.verdict != Verdict::Valid || result.apply(upstream).is_none() {
                    continue;
                }
                upstream.key_freed();
                tracing::info!(
                    provider = %name,
                    key = %result.hint,
                    "key revived: its probe answered {}",
                    result.status.unwrap_or_default()
                );
                if let Some(health) = &app.health {
                    health.record(HealthChange::Cleared {
                        provider: Some(name.clone()),
                        fingerprint: Some(result.fingerprint.clone()),
                    });
                }
            }
        }
    }
}
