//! `aibridge pool status` and `aibridge pool reset`: the pool as the running server sees it,
//! or as the state file records it when no server runs.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};

use super::output::{Table, ago, print_stdout, seconds};
use super::{block_on, health_store, load_config};
use crate::cli::{GlobalArgs, PoolResetArgs, PoolStatusArgs};
use crate::config::Config;
use crate::exit;
use crate::failover::Upstream;
use crate::health::{HealthChange, KeySelectError, KnownKey, StateFile, select_key};
use crate::keypool::{StateKind, StateReason, SystemClock, to_unix_ms};
use crate::report::{ClearedKey, KeyReport, PoolReport, ResetRequest, ResetResponse, TokenReport};
use crate::secret::ApiKey;
use crate::token_proof;
use crate::transport::error_chain;
use crate::transport::{self, HttpClient};

/// How long a server on the configured address gets to answer before the state file is read.
const DETECT_TIMEOUT: Duration = Duration::from_millis(300);
/// How long a server named with --server gets.
const SERVER_TIMEOUT: Duration = Duration::from_secs(5);

pub fn status(global: &GlobalArgs, args: &PoolStatusArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(global)?;
    if args.watch {
        return block_on(watch(global, &config, args))?;
    }
    let (report, source) = block_on(read_pool(global, &config, args.server.as_deref()))??;
    let report = only_provider(report, args.provider.as_deref())?;
    if args.json {
        eprintln!("source: {source}");
        print_stdout(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        print_stdout(&format!("source: {source}\n{}", status_table(&report)))?;
    }
    // Keys only shared health knows serve no request here: they count for nothing.
    let starved = report.providers.iter().any(|provider| {
        let mut pool = provider.keys.iter().filter(|key| key.configured).peekable();
        pool.peek().is_some() && pool.all(|key| key.state != StateKind::Available)
    });
    Ok(ExitCode::from(if starved {
        exit::FAILURE
    } else {
        exit::OK
    }))
}

/// The report of provider `name` alone, when one is named.
fn only_provider(mut report: PoolReport, name: Option<&str>) -> anyhow::Result<PoolReport> {
    if let Some(name) = name {
        // Checked against what was read: a server may have providers this config lacks.
        known_provider(
            name,
            report
                .providers
                .iter()
                .map(|provider| provider.name.as_str()),
        )?;
        report.providers.retain(|provider| provider.name == name);
    }
    Ok(report)
}

/// How often `pool status --watch` reads the pool again.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// `pool status --watch`: the table, read again every second until Ctrl-C (exit 0). On a
/// terminal each reading replaces the last; otherwise readings follow one another. A
/// reading that fails is shown, and the next one tried.
async fn watch(
    global: &GlobalArgs,
    config: &Config,
    args: &PoolStatusArgs,
) -> anyhow::Result<ExitCode> {
    let terminal = std::io::stdout().is_terminal();
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let reading = read_pool(global, config, args.server.as_deref())
            .await
            .and_then(|(report, source)| {
                Ok((only_provider(report, args.provider.as_deref())?, source))
            });
        let body = match reading {
            Ok((report, source)) => format!("source: {source}\n{}", status_table(&report)),
            Err(error) => format!("cannot read the pool: {error:#}\n"),
        };
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let frame = if terminal {
            // Home and clear, then the reading: the table stays in place as it changes.
            format!("\x1b[H\x1b[2J{now}  (read every second; Ctrl-C to stop)\n{body}")
        } else {
            format!("{now}\n{body}\n")
        };
        print_stdout(&frame)?;
        tokio::select! {
            _ = &mut stop => return Ok(ExitCode::from(exit::OK)),
            () = tokio::time::sleep(WATCH_INTERVAL) => {}
        }
    }
}

/// `name` among `providers`, or an error naming them.
fn known_provider<'a>(name: &str, providers: impl Iterator<Item = &'a str>) -> anyhow::Result<()> {
    let known: BTreeSet<&str> = providers.collect();
    if !known.contains(name) {
        bail!(
            "unknown provider \"{name}\" (known: {})",
            known.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

/// The server named with --server, or else the one on the configured address if it answers.
async fn find_server(client: &HttpClient, config: &Config, url: Option<&str>) -> Option<Server> {
    match url {
        Some(url) => Some(Server::new(url, config)),
        None => Server::local(config).detect(client).await,
    }
}

/// The pool from the server (named, or found on the configured address), else shared health.
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
    if let Some(local) = Server::local(config).detect(&client).await {
        let report = local
            .pool(&client, SERVER_TIMEOUT)
            .await
            .with_context(|| format!("cannot read the pool from {}", local.base))?;
        return Ok((report, format!("server {}", local.base)));
    }
    let clock = Arc::new(SystemClock);
    let upstreams = config
        .providers
        .values()
        .map(|provider| Upstream::from_config(provider, clock.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(store) = health_store(global, config, false)? else {
        let report = PoolReport::new(&upstreams).with_records(&Default::default(), 0);
        return Ok((report, "configuration only (no state file)".to_owned()));
    };
    let state = store.load().await.context("cannot read key marks")?;
    for upstream in &upstreams {
        state.restore_into(&upstream.name, &upstream.pool);
    }
    let now = to_unix_ms(std::time::SystemTime::now());
    let report = PoolReport::new(&upstreams).with_records(&state, now);
    // No server answered: what was recorded is all there is, and it may be old.
    let source = format!(
        "{} (no server answered: LAST STATUS and LAST USED are as last recorded there, and may be old)",
        store.describe()
    );
    Ok((report, source))
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
        "TOKENS IN",
        "TOKENS OUT",
        "CACHE READ",
    ]);
    for provider in &report.providers {
        // Keys only shared health knows, of providers or pools not configured here.
        let (name, unlisted) = if provider.configured {
            (provider.name.clone(), " (not in config)")
        } else {
            (format!("{} (not in config)", provider.name), "")
        };
        for key in &provider.keys {
            let hint = if key.configured {
                key.hint.clone()
            } else {
                format!("{}{unlisted}", key.hint)
            };
            table.row(vec![
                name.clone(),
                hint,
                state_label(key),
                key.last_status
                    .map_or("-".to_owned(), |status| status.to_string()),
                ago(key.last_used.as_deref()),
                count(key.requests),
                count(key.failures),
                count(key.tokens.as_ref().map(prompt_tokens)),
                count(key.tokens.as_ref().map(|tokens| tokens.output)),
                key.tokens
                    .as_ref()
                    .and_then(|tokens| tokens.cache_read_share)
                    .map_or_else(|| "-".to_owned(), |share| format!("{:.0}%", share * 100.0)),
            ]);
        }
    }
    table.render()
}

/// The whole prompt: full-rate input, cache reads and cache writes.
fn prompt_tokens(tokens: &TokenReport) -> u64 {
    tokens.input + tokens.cache_read + tokens.cache_write
}

/// A count, or `-` where the source keeps none.
fn count(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| value.to_string())
}

/// `available`, `cooling 41s`, `cooling 41s (claude-opus-4-5, gpt-4o)` for a key cooling for
/// some models only (the longest of their cooldowns; a model out for another reason than a
/// rate limit names it: `anthropic.claude-x: no_model_access`), `disabled (401 unauthorized)`.
fn state_label(key: &KeyReport) -> String {
    match (key.state, key.reason) {
        (StateKind::Cooling, _) => format!(
            "cooling {}",
            seconds(key.cooldown_remaining_secs.unwrap_or(0))
        ),
        (StateKind::Disabled, Some(StateReason::Unauthorized)) => {
            "disabled (401 unauthorized)".to_owned()
        }
        (StateKind::Disabled, Some(StateReason::Forbidden)) => {
            "disabled (403 forbidden)".to_owned()
        }
        (StateKind::Disabled, Some(StateReason::Quota)) => {
            "disabled (quota or credit used up)".to_owned()
        }
        (StateKind::Disabled, Some(StateReason::Expired)) => {
            "disabled (credential expired)".to_owned()
        }
        (StateKind::Available, _) if !key.cooling.is_empty() => {
            let longest = key
                .cooling
                .values()
                .map(|cooling| cooling.remaining_secs)
                .max()
                .unwrap_or(0);
            // Model names are callers' text, and a state file or Redis may be tampered with.
            let models: Vec<_> = key
                .cooling
                .iter()
                .map(|(model, cooling)| match cooling.reason {
                    StateReason::RateLimited => crate::text::shown(model).into_owned(),
                    reason => format!("{}: {}", crate::text::shown(model), reason.as_str()),
                })
                .collect();
            format!("cooling {} ({})", seconds(longest), models.join(", "))
        }
        (state, _) => state.as_str().to_owned(),
    }
}

pub fn reset(global: &GlobalArgs, args: &PoolResetArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(global)?;
    let store = health_store(global, &config, false)?
        .context("no state directory on this system; pass --state-file or --redis-url")?;
    block_on(async {
        let client = Server::client()?;
        let server = find_server(&client, &config, args.server.as_deref()).await;
        let served = match &server {
            Some(server) => Some(
                server
                    .pool(&client, SERVER_TIMEOUT)
                    .await
                    .with_context(|| format!("cannot read the pool from {}", server.base))?,
            ),
            None => None,
        };
        let shared = store.load().await.context("cannot read key marks")?;
        let known = known_keys(&config, &shared, served.as_ref());
        if let Some(name) = &args.provider {
            let served_providers = served.iter().flat_map(|report| &report.providers);
            let providers = config
                .providers
                .keys()
                .chain(shared.providers.keys())
                .chain(served_providers.map(|provider| &provider.name));
            known_provider(name, providers.map(String::as_str))?;
        }
        let fingerprint = match &args.key {
            Some(selector) => Some(resolve_key(&known, args.provider.as_deref(), selector)?),
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
        report_cleared(&store.describe(), &cleared)?;
        let Some(server) = server else {
            return Ok(());
        };
        let request = ResetRequest {
            provider: args.provider.clone(),
            key: fingerprint,
        };
        let cleared = server
            .reset(&client, &request, SERVER_TIMEOUT)
            .await
            .with_context(|| format!("cannot reset marks on {}", server.base))?;
        report_cleared(&format!("server {}", server.base), &cleared)
    })??;
    Ok(ExitCode::SUCCESS)
}

/// Every key a reset may name: configured, recorded in shared health, or held by the server.
fn known_keys(config: &Config, shared: &StateFile, served: Option<&PoolReport>) -> Vec<KnownKey> {
    let configured = config.providers.iter().flat_map(|(name, provider)| {
        provider.keys.iter().map(|key| KnownKey {
            provider: name.clone(),
            fingerprint: key.fingerprint(),
            hint: key.hint(),
        })
    });
    let recorded = shared.providers.iter().flat_map(|(name, records)| {
        records.iter().map(|(fingerprint, record)| KnownKey {
            provider: name.clone(),
            fingerprint: fingerprint.clone(),
            hint: record.hint.clone(),
        })
    });
    let held = served.into_iter().flat_map(|report| {
        report.providers.iter().flat_map(|provider| {
            provider.keys.iter().map(|key| KnownKey {
                provider: provider.name.clone(),
                fingerprint: key.fingerprint.clone(),
                hint: key.hint.clone(),
            })
        })
    });
    configured.chain(recorded).chain(held).collect()
}

/// The fingerprint of the one key `selector` names among `known`. When the keys a hint
/// matches belong to several providers, the error says `--provider` tells them apart.
fn resolve_key(
    known: &[KnownKey],
    provider: Option<&str>,
    selector: &str,
) -> anyhow::Result<String> {
    match select_key(known, provider, selector) {
        Ok(key) => Ok(key.fingerprint.clone()),
        Err(error) => {
            let providers: BTreeSet<_> = known
                .iter()
                .filter(|key| key.hint == selector)
                .map(|key| key.provider.as_str())
                .collect();
            if matches!(error, KeySelectError::Ambiguous { .. }) && providers.len() > 1 {
                bail!("{error}, or name the provider with --provider");
            }
            Err(error.into())
        }
    }
}

fn report_cleared(place: &str, cleared: &[ClearedKey]) -> anyhow::Result<()> {
    let mut text = String::new();
    if cleared.is_empty() {
        text.push_str(&format!("{place}: nothing to clear\n"));
    }
    for key in cleared {
        text.push_str(&format!(
            "{place}: cleared {} {} (was {})\n",
            key.provider, key.key, key.was
        ));
    }
    print_stdout(&text)
}

/// A running `aibridge serve`, reached over its admin routes.
struct Server {
    base: String,
    /// Sent to a server named with --server, and to one found on the listen address only
    /// once it has proved it holds the token (see [`token_proof`]).
    token: Option<ApiKey>,
    /// A token this command has but did not send, as the server did not prove it holds it.
    withheld: bool,
}

impl Server {
    fn client() -> anyhow::Result<HttpClient> {
        Ok(HttpClient::local()?)
    }

    fn new(url: &str, config: &Config) -> Self {
        Self {
            base: url.trim_end_matches('/').to_owned(),
            token: config.serve.access_tokens.first().cloned(),
            withheld: false,
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

    /// This server, if something answers its health route; its token kept only if it proves
    /// it holds the token. Whatever listens on the port may not be `aibridge serve`.
    async fn detect(mut self, client: &HttpClient) -> Option<Self> {
        let token = self.token.take();
        let challenge = token_proof::new_challenge().ok()?;
        let mut request = self.request(Method::GET, "/_aibridge/health", None).ok()?;
        request.headers_mut().insert(
            token_proof::CHALLENGE_HEADER,
            HeaderValue::from_str(&challenge).ok()?,
        );
        let (parts, _) = exchange(client, request, DETECT_TIMEOUT).await.ok()?;
        if !parts.status.is_success() {
            return None;
        }
        let Some(token) = token else {
            return Some(self);
        };
        let proofs = parts
            .headers
            .get(token_proof::PROOF_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        if token_proof::proves(proofs, &token, &challenge) {
            self.token = Some(token);
        } else {
            self.withheld = true;
        }
        Some(self)
    }

    /// The server wants an access token this command did not send (or had wrong).
    fn needs_token(&self) -> anyhow::Error {
        if self.withheld {
            return anyhow!(
                "the server on {} did not prove it holds the access token, so the token was not \
                 sent; if that server is yours, name it with --server {}",
                self.base,
                self.base
            );
        }
        anyhow!(
            "the server answered 401: it requires an access token; set AIBRIDGE_ACCESS_TOKENS \
             (or access_tokens in the config) to one of the server's"
        )
    }

    /// An admin request to this server, with the token when it may have it.
    fn request(
        &self,
        method: Method,
        path: &str,
        json: Option<Vec<u8>>,
    ) -> anyhow::Result<http::Request<Bytes>> {
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
                HeaderValue::from_str(token.expose())
                    .context("the access token is not a valid header")?,
            );
        }
        Ok(request)
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
        let request = self.request(method, path, json)?;
        let (parts, body) = exchange(client, request, timeout).await?;
        Ok((parts.status, body))
    }

    async fn pool(&self, client: &HttpClient, timeout: Duration) -> anyhow::Result<PoolReport> {
        let (status, body) = self
            .call(client, Method::GET, "/_aibridge/pool", None, timeout)
            .await?;
        if status == StatusCode::UNAUTHORIZED {
            return Err(self.needs_token());
        }
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
            401 => Err(self.needs_token()),
            status => bail!(
                "the server answered {status}: {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }
}

/// Sends `request` and reads the whole answer within `timeout`; redirects are not followed,
/// so a token goes nowhere but where it was sent.
async fn exchange(
    client: &HttpClient,
    request: http::Request<Bytes>,
    timeout: Duration,
) -> anyhow::Result<(http::response::Parts, Bytes)> {
    let exchange = async {
        let response = client
            .send(request)
            .await
            .map_err(|error| anyhow!(error_chain(&*error)))?;
        let (parts, body) = response.into_parts();
        let body = transport::read_body(body)
            .await
            .map_err(|error| anyhow!(error_chain(&*error)))?;
        anyhow::Ok((parts, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow!("no answer within {}", humantime::format_duration(timeout)))?
}
