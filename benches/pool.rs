//! Micro-benchmarks of the key pool: picking a key and marking one, with 10 and 10,000 keys,
//! on 1 and 2 threads sharing one pool.
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

/// The worst case: every key but the last is cooling, so a pick passes all of them.
#[divan::bench(args = [10, 10_000], threads = [1, 2])]
fn pick_past_cooling_keys(bencher: Bencher, keys: usize) {
    let pool = pool(keys);
    for index in 0..keys - 1 {
        pool.mark(index, Mark::Cool(Duration::from_secs(3600)));
    }
    bencher.bench(|| pool.walk().next());
}
