//! `aibridge probe-keys`: a verdict on every key, one cheap request each, no failover.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde::Serialize;

use super::output::{Table, print_stdout, progress_bar};
use super::{SharedHealth, block_on, keys_from_flags, load_config, provider_config};
use crate::cli::{GlobalArgs, ProbeKeysArgs};
use crate::config::Config;
use crate::exit;
use crate::failover::{Upstream, Walker};
use crate::keypool::{SystemClock, validate_keys};
use crate::probe::{Probe, Verdict, probe};
use crate::secret::ApiKey;
use crate::transport::HttpClient;

pub fn run(global: &GlobalArgs, args: &ProbeKeysArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(global)?;
    let upstreams = targets(&config, args)?;
    let total: usize = upstreams.iter().map(|upstream| upstream.pool.len()).sum();
    if total == 0 {
        bail!(
            "no keys to probe: configure keys (e.g. AIBRIDGE_ANTHROPIC_KEYS) or pass --key/--keys-file"
        );
    }
    let mut health = SharedHealth::open(global, &config, args.no_state)?;
    let walker = Walker::new(HttpClient::general()?, args.timeout);
    let bar = progress_bar(total, !args.json && !global.quiet);
    let probes = block_on(async {
        // Reached first, so Redis out of reach is said before the probes rather than after.
        if let Err(error) = health.load().await {
            tracing::warn!("{error:#}");
        }
        let jobs = upstreams
            .iter()
            .flat_map(|upstream| (0..upstream.pool.len()).map(move |index| (upstream, index)))
            .map(|(upstream, index)| {
                let (walker, bar) = (&walker, &bar);
                async move {
                    let result = probe(walker, upstream, index, args.timeout).await;
                    if let Some(bar) = bar {
                        bar.inc(1);
                    }
                    result
                }
            });
        let probes = futures_util::stream::iter(jobs)
            .buffered(usize::from(args.concurrency))
            .collect::<Vec<_>>()
            .await;
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        let now = SystemTime::now();
        let changes = probes.iter().flat_map(|probe| probe.changes(now)).collect();
        health.record(changes).await;
        probes
    })?;
    print(&probes, args.json)?;
    let all_valid = probes.iter().all(|probe| probe.verdict == Verdict::Valid);
    Ok(ExitCode::from(if all_valid {
        exit::OK
    } else {
        exit::FAILURE
    }))
}

/// The pools to probe: the given keys under one provider, or the configured ones.
fn targets(config: &Config, args: &ProbeKeysArgs) -> anyhow::Result<Vec<Upstream>> {
    let clock = Arc::new(SystemClock);
    if args.keys.is_empty() && args.keys_file.is_none() {
        let names: Vec<&str> = if args.providers.is_empty() {
            config.providers.keys().map(String::as_str).collect()
        } else {
            args.providers.iter().map(String::as_str).collect()
        };
        let mut upstreams = Vec::new();
        for name in names {
            upstreams.push(Upstream::from_config(
                provider_config(config, name)?,
                clock.clone(),
            )?);
        }
        return Ok(upstreams);
    }
    let name = match args.providers.as_slice() {
        [] => "anthropic",
        [one] => one.as_str(),
        _ => bail!("--key and --keys-file probe the keys of one provider: name one --provider"),
    };
    let mut provider = provider_config(config, name)?.clone();
    provider.keys = unique(keys_from_flags(&args.keys, args.keys_file.as_deref())?)?;
    Ok(vec![Upstream::from_config(&provider, clock)?])
}

/// Drops repeated keys, reporting each once: a key is probed once however often it is listed.
fn unique(keys: Vec<ApiKey>) -> anyhow::Result<Vec<ApiKey>> {
    let mut unique: Vec<ApiKey> = Vec::with_capacity(keys.len());
    for (position, key) in keys.into_iter().enumerate() {
        match unique.iter().position(|seen| *seen == key) {
            Some(first) => eprintln!(
                "note: key #{} duplicates key #{}; probed once",
                position + 1,
                first + 1
            ),
            None => unique.push(key),
        }
    }
    validate_keys(&unique).context("invalid key list")?;
    Ok(unique)
}

#[derive(Serialize)]
struct ProbeReport<'a> {
    provider: &'a str,
    key: &'a str,
    fingerprint: &'a str,
    verdict: Verdict,
    status: Option<u16>,
    detail: &'a str,
    latency_ms: u64,
}

fn print(probes: &[Probe], json: bool) -> anyhow::Result<()> {
    if json {
        let reports: Vec<_> = probes
            .iter()
            .map(|probe| ProbeReport {
                provider: &probe.provider,
                key: &probe.hint,
                fingerprint: &probe.fingerprint,
                verdict: probe.verdict,
                status: probe.status,
                detail: &probe.detail,
                latency_ms: probe.latency.as_millis() as u64,
            })
            .collect();
        return print_stdout(&format!("{}\n", serde_json::to_string_pretty(&reports)?));
    }
    let mut table = Table::new(&["PROVIDER", "KEY", "VERDICT", "DETAIL", "LATENCY"]);
    for probe in probes {
        table.row(vec![
            probe.provider.clone(),
            probe.hint.clone(),
            probe.verdict.as_str().to_owned(),
            probe.detail.clone(),
            format!("{}ms", probe.latency.as_millis()),
        ]);
    }
    print_stdout(&table.render())
}
