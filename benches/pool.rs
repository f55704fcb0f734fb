//! Micro-benchmarks of the key pool: picking a key and marking one, with 10 and 10,000 keys,
//! on 1 and 2 threads sharing one pool, with and without models cooling on their own.
//!
//! ```sh
//! cargo bench --bench pool
//! ```

use std::sync::Arc;
use std::time::Duration;

use aibridge::keypool::{Mark, Pool, PoolSettings, SystemClock};
use aibridge::secret::ApiKey;
use divan::Bencher;

fn main() {
    divan::main();
}

fn pool(keys: usize) -> Pool {
    let keys = (0..keys)
        .map(|index| ApiKey::new(format!("sk-bench-key-{index:08}")))
        .collect();
    Pool::new(keys, PoolSettings::default(), Arc::new(SystemClock)).expect("distinct keys")
}

/// The request path: take the first healthy key, then mark it as an answer would. A zero
/// cooldown writes the mark without taking the key out, so every iteration does both.
#[divan::bench(args = [10, 10_000], threads = [1, 2])]
fn pick_and_mark(bencher: Bencher, keys: usize) {
    let pool = pool(keys);
    bencher.bench(|| {
        let index = pool.walk().next().expect("a healthy key");
        pool.mark(index, Mark::Cool(Duration::ZERO))
    });
}

/// Per-model health: every key is cooling for 20 models (not the request's), so each pick
/// reads a key's model list, and each mark extends one of those cooldowns (a repeated 429).
#[divan::bench(args = [10, 10_000], threads = [1, 2])]
fn pick_and_mark_with_20_models_cooling(bencher: Bencher, keys: usize) {
    let pool = pool_with_models_cooling(keys, 20);
    bencher.bench(|| {
        let index = pool
            .walk()
            .next_for(Some("claude-opus-4-5"))
            .expect("a key for this model");
        pool.mark_request(
            index,
            Mark::Cool(Duration::from_secs(7200)),
            Some("model-7"),
        )
    });
}

/// The rarer mark: a model that is not cooling yet starts to, so the key's list is copied
/// (the names cycle through more than the 64 kept, so every mark starts a cooldown).
#[divan::bench(args = [10, 10_000], threads = [1, 2])]
fn pick_and_mark_a_model_not_cooling_yet(bencher: Bencher, keys: usize) {
    let pool = pool_with_models_cooling(keys, 20);
    let names: Vec<String> = (0..100).map(|model| format!("new-{model}")).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    bencher.bench(|| {
        let index = pool
            .walk()
            .next_for(Some("claude-opus-4-5"))
            .expect("a key for this model");
        let name = &names[next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 100];
        pool.mark_request(index, Mark::Cool(Duration::from_secs(3600)), Some(name))
    });
}

fn pool_with_models_cooling(keys: usize, models: usize) -> Pool {
    let pool = pool(keys);
    for index in 0..keys {
        for model in 0..models {
            pool.cool_model(index, &format!("model-{model}"), Duration::from_secs(3600));
        }
    }
    pool
}

/// The worst case: every key but the last is cooling, so a pick passes all of them.
#[divan::bench(args = [10, 10_000], threads = [1, 2])]
fn pick_past_cooling_keys(bencher: Bencher, keys: usize) {
    let pool = pool(keys);
    for index in 0..keys - 1 {
        pool.mark(index, Mark::Cool(Duration::from_secs(3600)));
    }
    bencher.bench(|| pool.walk().next());
}
