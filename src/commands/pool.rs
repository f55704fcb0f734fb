//! `aibridge pool status` and `aibridge pool reset`: the pool as the running server sees it,
//! or as the state file records it when no server runs.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};

use super::output::{Table, ago, seconds};
use super::{block_on, health_store, load_config, provider_config};
use crate::cli::{GlobalArgs, PoolResetArgs, PoolStatusArgs};
use crate::config::Config;
use crate::exit;
use crate::failover::{Upstream, error_chain};
use crate::health::{HealthChange, HealthStore, KnownKey, select_key};
use crate::keypool::SystemClock;
use crate::report::{ClearedKey, KeyReport, PoolReport, ResetRequest, ResetResponse};
use crate::transport::{self, HttpClient};

/// How long a server on the configured address gets to answer before the state file is read.
const DETECT_TIMEOUT: Duration = Duration::from_millis(300);
/// How long a server named with --server gets.
const SERVER_TIMEOUT: Duration = Duration::from_secs(5);

pub fn status(global: &GlobalArgs, args: &PoolStatusArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(global)?;
    if let Some(name) = &args.provider {
        provider_config(&config, name)?;
    }
    let (mut report, source) = block_on(read_pool(global, &config, args.server.as_deref()))??;
    if let Some(name) = &args.provider {
        report.providers.retain(|provider| provider.name == *name);
    }
    if args.json {
        eprintln!("source: {source}");
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("source: {source}");
        print!("{}", status_table(&report));
    }
    let starved = report.providers.iter().any(|provider| {
        !provider.keys.is_empty() && provider.keys.iter().all(|key| key.state != "available")
    });
    Ok(ExitCode::from(if starved {
        exit::FAILURE
    } else {
        exit::OK
    }))
}

/// The pool from the server (named, or found on the configured address), else the state file.
async fn read_pool(
    global: &GlobalArgs,
    config: &Config,
    server: Option<&str>,
) -> anyhow::Result<(PoolReport, String)> {
    let client = Server::client()?;
    if let Some(url) = server {
        let server = Server::new(url, config);
        let report = server
            .pool(&client, SERVER_TIMEOUT)
            .await
            .with_context(|| format!("cannot read the pool from {url}"))?;
        return Ok((report, format!("server {}", server.base)));
    }
    let local = Server::local(config);
    if let Ok(report) = local.pool(&client, DETECT_TIMEOUT).await {
        return Ok((report, format!("server {}", local.base)));
    }
    let clock = Arc::new(SystemClock);
    let upstreams = config
        .providers
        .values()
        .map(|provider| Upstream::from_config(provider, clock.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(store) = health_store(global, config, false)? else {
        return Ok((
            PoolReport::new(&upstreams),
            "configuration only (no state file)".to_owned(),
        ));
    };
    let state = store.load().await.context("cannot read key marks")?;
    for upstream in &upstreams {
        state.restore_into(&upstream.name, &upstream.pool);
    }
    Ok((PoolReport::new(&upstreams), store.describe()))
}

fn status_table(report: &PoolReport) -> String {
    let mut table = Table::new(&[
        "PROVIDER",
        "KEY",
        "STATE",
        "LAST STATUS",
        "LAST USED",
        "REQUESTS",
        "FAILURES",
    ]);
    for provider in &report.providers {
        for key in &provider.keys {
            table.row(vec![
                provider.name.clone(),
                key.hint.clone(),
                state_label(key),
                key.last_status
                    .map_or("-".to_owned(), |status| status.to_string()),
                ago(key.last_used.as_deref()),
                key.requests.to_string(),
                key.failures.to_string(),
            ]);
        }
    }
    table.render()
}

/// `available`, `cooling 41s`, `cooling 41s (claude-opus-4-5, gpt-4o)` for a key cooling for
/// some models only (the longest of their cooldowns), `disabled (401 unauthorized)`.
fn state_label(key: &KeyReport) -> String {
    match (key.state.as_str(), key.reason.as_deref()) {
        ("cooling", _) => format!(
            "cooling {}",
            seconds(key.cooldown_remaining_secs.unwrap_or(0))
        ),
        ("disabled", Some("unauthorized")) => "disabled (401 unauthorized)".to_owned(),
        ("disabled", Some("forbidden")) => "disabled (403 forbidden)".to_owned(),
        ("disabled", Some("quota")) => "disabled (quota or credit used up)".to_owned(),
        ("available", _) if !key.cooling.is_empty() => {
            let longest = key
                .cooling
                .values()
                .map(|cooling| cooling.remaining_secs)
                .max()
                .unwrap_or(0);
            let models: Vec<&str> = key.cooling.keys().map(String::as_str).collect();
            format!("cooling {} ({})", seconds(longest), models.join(", "))
        }
        (state, _) => state.to_owned(),
    }
}

pub fn reset(global: &GlobalArgs, args: &PoolResetArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(global)?;
    if let Some(name) = &args.provider {
        provider_config(&config, name)?;
    }
    let store = health_store(global, &config, false)?
        .context("no state directory on this system; pass --state-file or --redis-url")?;
    block_on(async {
        let fingerprint = match &args.key {
            Some(selector) => {
                Some(resolve_key(&config, &store, args.provider.as_deref(), selector).await?)
            }
            None => None,
        };
        let clear = HealthChange::Cleared {
            provider: args.provider.clone(),
            fingerprint: fingerprint.clone(),
        };
        let cleared = store
            .apply(vec![clear])
            .await
            .context("cannot clear key marks")?;
        report_cleared(&store.describe(), &cleared);
        let request = ResetRequest {
            provider: args.provider.clone(),
            key: fingerprint,
        };
        reset_server(&config, args.server.as_deref(), &request).await
    })??;
    Ok(ExitCode::SUCCESS)
}

/// The fingerprint of the one key `selector` names, among configured keys and keys shared
/// health knows.
async fn resolve_key(
    config: &Config,
    store: &HealthStore,
    provider: Option<&str>,
    selector: &str,
) -> anyhow::Result<String> {
    let state = store.load().await.context("cannot read key marks")?;
    let configured = config.providers.iter().flat_map(|(name, provider)| {
        provider.keys.iter().map(|key| KnownKey {
            provider: name.clone(),
            fingerprint: key.fingerprint(),
            hint: key.hint(),
        })
    });
    let recorded = state.providers.iter().flat_map(|(name, records)| {
        records.iter().map(|(fingerprint, record)| KnownKey {
            provider: name.clone(),
            fingerprint: fingerprint.clone(),
            hint: record.hint.clone(),
        })
    });
    let known: Vec<KnownKey> = configured.chain(recorded).collect();
    Ok(select_key(&known, provider, selector)?.fingerprint.clone())
}

async fn reset_server(
    config: &Config,
    url: Option<&str>,
    request: &ResetRequest,
) -> anyhow::Result<()> {
    let client = Server::client()?;
    let (server, timeout) = match url {
        Some(url) => (Server::new(url, config), SERVER_TIMEOUT),
        None => {
            let local = Server::local(config);
            if !local.is_up(&client).await {
                return Ok(());
            }
            (local, SERVER_TIMEOUT)
        }
    };
    let cleared = server
        .reset(&client, request, timeout)
        .await
        .with_context(|| format!("cannot reset marks on {}", server.base))?;
    report_cleared(&format!("server {}", server.base), &cleared);
    Ok(())
}

fn report_cleared(place: &str, cleared: &[ClearedKey]) {
    if cleared.is_empty() {
        println!("{place}: nothing to clear");
    }
    for key in cleared {
        println!(
            "{place}: cleared {} {} (was {})",
            key.provider, key.key, key.was
        );
    }
}

/// A running `aibridge serve`, reached over its admin routes.
struct Server {
    base: String,
    token: Option<String>,
}

impl Server {
    fn client() -> anyhow::Result<HttpClient> {
        Ok(HttpClient::local()?)
    }

    fn new(url: &str, config: &Config) -> Self {
        Self {
            base: url.trim_end_matches('/').to_owned(),
            token: config
                .serve
                .access_tokens
                .first()
                .map(|token| token.expose().to_owned()),
        }
    }

    /// The server on the configured listen address (a wildcard address is reached on loopback).
    fn local(config: &Config) -> Self {
        let mut address: SocketAddr = config.listen;
        if address.ip().is_unspecified() {
            address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Self::new(&format!("http://{address}"), config)
    }

    /// One admin call within `timeout`: the status and the whole body.
    async fn call(
        &self,
        client: &HttpClient,
        method: Method,
        path: &str,
        json: Option<Vec<u8>>,
        timeout: Duration,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let is_json = json.is_some();
        let mut request = http::Request::new(Bytes::from(json.unwrap_or_default()));
        *request.method_mut() = method;
        *request.uri_mut() = format!("{}{path}", self.base)
            .parse()
            .context("invalid server URL")?;
        let headers = request.headers_mut();
        transport::identify_as_aibridge(headers);
        if is_json {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if let Some(token) = &self.token {
            headers.insert(
                "x-aibridge-token",
                HeaderValue::from_str(token).context("the access token is not a valid header")?,
            );
        }
        let exchange = async {
            let response = client
                .send(request)
                .await
                .map_err(|error| anyhow!(error_chain(&*error)))?;
            let status = response.status();
            let body = transport::read_body(response.into_body())
                .await
                .map_err(|error| anyhow!(error_chain(&*error)))?;
            anyhow::Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| anyhow!("no answer within {}", humantime::format_duration(timeout)))?
    }

    async fn is_up(&self, client: &HttpClient) -> bool {
        let health = self
            .call(
                client,
                Method::GET,
                "/_aibridge/health",
                None,
                DETECT_TIMEOUT,
            )
            .await;
        matches!(health, Ok((status, _)) if status.is_success())
    }

    async fn pool(&self, client: &HttpClient, timeout: Duration) -> anyhow::Result<PoolReport> {
        let (status, body) = self
            .call(client, Method::GET, "/_aibridge/pool", None, timeout)
            .await?;
        if !status.is_success() {
            bail!("the server answered {status}");
        }
        serde_json::from_slice(&body).context("the server's answer is not a pool report")
    }

    async fn reset(
        &self,
        client: &HttpClient,
        request: &ResetRequest,
        timeout: Duration,
    ) -> anyhow::Result<Vec<ClearedKey>> {
        let json = serde_json::to_vec(request)?;
        let (status, body) = self
            .call(
                client,
                Method::POST,
                "/_aibridge/pool/reset",
                Some(json),
                timeout,
            )
            .await?;
        match status.as_u16() {
            200 => Ok(serde_json::from_slice::<ResetResponse>(&body)
                .context("the server's answer is not a reset report")?
                .cleared),
            // The server does not hold that key: nothing to clear there.
            404 => Ok(Vec::new()),
            status => bail!(
                "the server answered {status}: {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }
}
