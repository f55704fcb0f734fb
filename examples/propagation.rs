//! How long a mark made by one `serve` replica takes to reach another's pool through Redis,
//! for `benches/run.sh fleet`.
//!
//! ```sh
//! cargo run --release --example propagation -- --from http://A --to http://B --provider fleet
//! ```
//!
//! Each round sends replica A a request for a model of its own (`bench-model-N`) that the
//! provider's first key answers with a 429, so A cools that key for that model and fails over;
//! then it reads B's `/_aibridge/pool` as fast as it answers until B shows the cooldown. The
//! time from A's answer to B showing the mark is one sample. Prints the samples' p50, p99 and
//! max in milliseconds, as `p50=… p99=… max=… rounds=…`.

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
struct Args {
    /// The replica that makes the marks
    #[arg(long)]
    from: String,
    /// The replica that should hear of them
    #[arg(long)]
    to: String,
    /// The provider whose first key answers 429
    #[arg(long, default_value = "fleet")]
    provider: String,
    /// Marks to time
    #[arg(long, default_value_t = 500)]
    rounds: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::builder().no_proxy().build()?;
    let mut samples = Vec::with_capacity(args.rounds);
    for round in 0..args.rounds {
        let model = format!("bench-model-{round}");
        let body = json!({"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]});
        let answer = client
            .post(format!("{}/{}/v1/messages", args.from, args.provider))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()?;
        anyhow::ensure!(
            answer.status() == 200,
            "replica A answered {}",
            answer.status()
        );
        let answered = Instant::now();
        loop {
            if shows_cooldown(&client, &args, &model)? {
                samples.push(answered.elapsed());
                break;
            }
            anyhow::ensure!(
                answered.elapsed() < Duration::from_secs(5),
                "replica B never showed the cooldown of {model}"
            );
        }
    }
    samples.sort();
    let at = |quantile: f64| {
        let index = ((samples.len() as f64 - 1.0) * quantile).round() as usize;
        samples[index].as_secs_f64() * 1000.0
    };
    println!(
        "p50={:.2} p99={:.2} max={:.2} rounds={}",
        at(0.50),
        at(0.99),
        at(1.0),
        samples.len()
    );
    Ok(())
}

/// Whether replica B's pool shows the first key of the provider cooling for `model`.
fn shows_cooldown(
    client: &reqwest::blocking::Client,
    args: &Args,
    model: &str,
) -> anyhow::Result<bool> {
    let pool: Value = client
        .get(format!("{}/_aibridge/pool", args.to))
        .send()?
        .json()?;
    let provider = pool["providers"].as_array().and_then(|providers| {
        providers
            .iter()
            .find(|p| p["name"] == args.provider.as_str())
    });
    Ok(provider.is_some_and(|provider| provider["keys"][0]["cooling"][model].is_object()))
}
