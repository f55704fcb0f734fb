//! `aibridge send`: one request through the failover walker, the body to stdout and one line
//! per attempt to stderr, so CI scripts can see which keys were marked.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::Value;

use super::{SharedHealth, block_on, keys_from_flags, load_config, provider_config};
use crate::cli::{GlobalArgs, SendArgs};
use crate::config::{Config, ProviderConfig};
use crate::exit;
use crate::failover::{
    Attempt, Credentials, FailoverError, OutboundRequest, Upstream, WalkObserver, Walker,
};
use crate::health::HealthChange;
use crate::keypool::{ExhaustionKind, KeyState, StateKind, SystemClock, ceil_secs, validate_keys};
use crate::provider::ApiError;
use crate::secret::ApiKey;
use crate::transport::{self, HttpClient, Response};

pub fn run(global: &GlobalArgs, args: SendArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(global)?;
    let provider = provider_for_run(&config, &args)?;
    if let Some(warning) = provider.warning() {
        tracing::warn!("{warning}");
    }
    let request = build_request(&args, &provider)?;
    let upstream = Upstream::from_config(&provider, Arc::new(SystemClock))?;
    let credentials = upstream.credentials_for(request.headers(), true)?;
    let mut health = SharedHealth::open(global, &config, args.no_state)?;
    let walker = Walker::new(HttpClient::general()?, args.timeout);
    block_on(async {
        if let Some(shared) = health.load().await? {
            shared.restore_into(&upstream.name, &upstream.pool);
        }
        let send = Send {
            upstream: &upstream,
            request: &request,
            credentials: &credentials,
            walker: &walker,
            health: &health,
            args: &args,
            quiet: global.quiet,
            verbose: global.verbose > 0,
        };
        send.run().await
    })?
}

/// The provider to use, with `--key`/`--keys-file` in place of its configured keys.
fn provider_for_run(config: &Config, args: &SendArgs) -> anyhow::Result<ProviderConfig> {
    let mut provider = provider_config(config, &args.provider)?.clone();
    if args.keys.is_empty() && args.keys_file.is_none() {
        return Ok(provider);
    }
    if provider.kind.api().byok_only() {
        bail!(
            "{} is bring-your-own-key only: pass your token with -H 'Authorization: Bearer TOKEN'",
            provider.kind
        );
    }
    let keys = keys_from_flags(&args.keys, args.keys_file.as_deref())?;
    validate_keys(&keys).context("invalid --key/--keys-file list")?;
    provider.keys = keys;
    Ok(provider)
}

fn build_request(args: &SendArgs, provider: &ProviderConfig) -> anyhow::Result<OutboundRequest> {
    let api = provider.kind.api();
    let mut body = read_body(args.data.as_deref())?;
    if let (Some(model), false) = (&args.model, api.model_in_path()) {
        body = with_model(&body, model)?;
    }
    let method = args
        .method
        .clone()
        .unwrap_or(if args.data.is_some() || !body.is_empty() {
            Method::POST
        } else {
            Method::GET
        });
    let path = match (&args.path, &args.model) {
        (Some(path), _) => path.clone(),
        (None, Some(model)) if api.model_in_path() => {
            let encoded = percent_encoding::utf8_percent_encode(model, MODEL_ID);
            api.default_send_path()
                .replace("{model}", &encoded.to_string())
        }
        (None, None) if api.model_in_path() => {
            bail!(
                "{} names the model in the path: pass --model ID (or a PATH)",
                provider.kind
            )
        }
        (None, _) => api.default_send_path().to_owned(),
    };
    if path.contains("://") {
        bail!(
            "PATH is a path under the provider's base URL ({}), not a URL: {path}",
            provider.base_url
        );
    }
    let path_and_query = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    if let Err(error) = path_and_query.parse::<http::uri::PathAndQuery>() {
        bail!("invalid PATH {path_and_query:?}: {error} (escape spaces and the like as %20)");
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &args.headers {
        headers.append(name.clone(), value.clone());
    }
    let is_json = serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok();
    if is_json && !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    transport::identify_as_aibridge(&mut headers);
    let request = OutboundRequest::new(method, path_and_query, headers, body);
    Ok(if api.model_in_path() {
        request.with_model_in_path()
    } else {
        request
    })
}

/// What a model id keeps encoded in a path, as AWS's SDKs write it: everything but
/// letters, digits and `-._~`, so `:` and the `/` of an ARN stay inside one segment.
const MODEL_ID: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `body` with its top-level `"model"` set to `model`.
fn with_model(body: &[u8], model: &str) -> anyhow::Result<Bytes> {
    let mut document: serde_json::Map<String, serde_json::Value> = if body.is_empty() {
        serde_json::Map::new()
    } else {
        serde_json::from_slice(body)
            .context("--model needs a JSON object body to put the model in")?
    };
    document.insert("model".to_owned(), model.into());
    Ok(serde_json::to_vec(&document)?.into())
}

/// The largest body `send` reads from a file or stdin: `serve`'s default `max_body_size`.
const MAX_SENT_BODY: u64 = 32 * 1024 * 1024;

fn read_body(data: Option<&str>) -> anyhow::Result<Bytes> {
    let bytes = match data {
        None => Vec::new(),
        Some("@-") => crate::files::read_bounded(std::io::stdin().lock(), MAX_SENT_BODY)
            .context("cannot read the request body from stdin")?,
        Some(text) => match text.strip_prefix('@') {
            Some(path) => crate::files::read_regular(Path::new(path), MAX_SENT_BODY)
                .with_context(|| format!("cannot read request body from {path}"))?,
            None => text.as_bytes().to_vec(),
        },
    };
    Ok(Bytes::from(bytes))
}

struct Send<'a> {
    upstream: &'a Upstream,
    request: &'a OutboundRequest,
    credentials: &'a Credentials,
    walker: &'a Walker,
    health: &'a SharedHealth,
    args: &'a SendArgs,
    quiet: bool,
    /// `-v`: each attempt's request and response headers too.
    verbose: bool,
}

impl Send<'_> {
    async fn run(&self) -> anyhow::Result<ExitCode> {
        let (attempts, result) = self.exchange().await;
        if let (Ok(response), true) = (&result, self.verbose && !self.quiet) {
            eprint!("{}", response_headers(response.headers()));
        }
        let code = match result {
            Ok(response) if self.args.json => self.print_json_answer(&attempts, response).await?,
            Ok(response) => self.stream_answer(response).await?,
            Err(error) => self.report_failure(&attempts, &error)?,
        };
        Ok(ExitCode::from(code))
    }

    /// Walks the pool; with `--wait`, the walker holds the request for the soonest key while
    /// the wait budget allows. Attempt lines are printed as they happen.
    async fn exchange(&self) -> (Vec<Attempt>, Result<Response, FailoverError>) {
        let observer = SendObserver {
            quiet: self.quiet,
            request: self.verbose.then_some((self.request, self.upstream)),
            byok: matches!(self.credentials, Credentials::Caller(_)),
            spinner: std::sync::Mutex::new(None),
        };
        let exchange = self
            .walker
            .send(
                self.upstream,
                self.request,
                self.credentials,
                self.args.wait.unwrap_or_default(),
                &observer,
            )
            .await;
        let changes = exchange
            .attempts
            .iter()
            .filter_map(|attempt| attempt.observation(self.upstream))
            .map(HealthChange::Observed)
            .collect();
        self.health.record(changes).await;
        (exchange.attempts, exchange.result)
    }

    /// Copies the body to stdout chunk by chunk, so a stream shows as it arrives.
    async fn stream_answer(&self, response: Response) -> anyhow::Result<u8> {
        let code = status_exit_code(response.status().as_u16());
        let mut body = response.into_body();
        let mut stdout = std::io::stdout().lock();
        loop {
            let chunk = match transport::next_chunk(&mut body).await {
                Some(Ok(chunk)) => chunk,
                None => break,
                Some(Err(error)) => {
                    let _ = stdout.flush();
                    eprintln!(
                        "error: upstream stream interrupted: {}",
                        transport::error_chain(&*error)
                    );
                    return Ok(exit::UNREACHABLE);
                }
            };
            // A reader that has gone away (`| head`) ends the command in `main`, as success.
            stdout
                .write_all(&chunk)
                .and_then(|()| stdout.flush())
                .context("cannot write to stdout")?;
        }
        Ok(code)
    }

    async fn print_json_answer(
        &self,
        attempts: &[Attempt],
        response: Response,
    ) -> anyhow::Result<u8> {
        let status = response.status().as_u16();
        let body = match transport::read_body(response.into_body()).await {
            Ok(bytes) => bytes,
            Err(error) => {
                let report = self.report(attempts, Some(status), Outcome::NetworkError, None);
                let message = format!(
                    "upstream stream interrupted: {}",
                    transport::error_chain(&*error)
                );
                print_json(&report.with_error(ErrorKind::StreamInterrupted, message))?;
                return Ok(exit::UNREACHABLE);
            }
        };
        let outcome = if (200..300).contains(&status) {
            Outcome::Ok
        } else {
            Outcome::UpstreamError
        };
        let body = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        print_json(
            &self
                .report(attempts, Some(status), outcome, None)
                .with_body(body),
        )?;
        Ok(status_exit_code(status))
    }

    fn report_failure(&self, attempts: &[Attempt], error: &FailoverError) -> anyhow::Result<u8> {
        let FailoverError::Exhausted(exhausted) = error else {
            // Unreachable or timed out; nothing was marked.
            if self.args.json {
                let report = self.report(attempts, None, Outcome::NetworkError, None);
                print_json(&report.with_error(ErrorKind::of(error), error.to_string()))?;
            }
            eprintln!("error: {error}");
            return Ok(exit::UNREACHABLE);
        };
        let (outcome, code, retry_after) = match exhausted.kind {
            ExhaustionKind::RateLimited => (
                Outcome::RateLimited,
                exit::RATE_LIMITED,
                Some(exhausted.retry_after_secs()),
            ),
            ExhaustionKind::Unauthorized => (Outcome::Unauthorized, exit::UNAUTHORIZED, None),
        };
        if self.args.json {
            let api_error = ApiError::exhausted(exhausted);
            let body = self.upstream.kind.api().error_body(&api_error);
            print_json(
                &self
                    .report(attempts, Some(api_error.status()), outcome, retry_after)
                    .with_body(body),
            )?;
        }
        match retry_after {
            Some(_) => {
                let back_at = std::time::SystemTime::now() + exhausted.retry_after;
                eprintln!(
                    "error: {exhausted}; the soonest key is back at {}",
                    humantime::format_rfc3339_seconds(back_at)
                );
            }
            None => eprintln!("error: {exhausted}"),
        }
        Ok(code)
    }

    fn report(
        &self,
        attempts: &[Attempt],
        status: Option<u16>,
        outcome: Outcome,
        retry_after_secs: Option<u64>,
    ) -> SendReport {
        SendReport {
            provider: self.upstream.name.to_string(),
            status,
            outcome,
            key: attempts
                .iter()
                .rev()
                .find(|attempt| attempt.answered())
                .map(|attempt| attempt.key_hint.to_string()),
            attempts: attempts.iter().map(AttemptReport::from).collect(),
            retry_after_secs,
            body: Value::Null,
            error: None,
        }
    }
}

/// Prints each attempt as it is made (with `-v`, its request and response headers), and the
/// wait for a key: a spinner counting down on a terminal, one line per wait otherwise.
struct SendObserver<'a> {
    quiet: bool,
    /// With `-v`: the request, and the provider whose auth header it gets.
    request: Option<(&'a OutboundRequest, &'a Upstream)>,
    byok: bool,
    spinner: std::sync::Mutex<Option<ProgressBar>>,
}

impl WalkObserver for SendObserver<'_> {
    fn attempted(&self, attempt: &Attempt) {
        if self.quiet {
            return;
        }
        let status = attempt
            .status
            .map_or("---".to_owned(), |code| code.to_string());
        let mut text = format!(
            "{}  {status}  {}\n",
            attempt.key_hint,
            describe(attempt, self.byok)
        );
        if let Some((request, upstream)) = self.request {
            text.push_str(&request_headers(request, upstream, &attempt.key_hint));
            if let Some(drained) = &attempt.drained {
                text.push_str(&response_headers(&drained.headers));
            }
        }
        eprint!("{text}");
    }

    fn waiting(&self, wait: Duration, model: Option<&str>) {
        if self.quiet {
            return;
        }
        let for_what = match model {
            Some(model) => format!("for a key (model {model})"),
            None => "for a key".to_owned(),
        };
        let left = move |remaining: Duration| {
            let secs = Duration::from_secs(ceil_secs(remaining));
            format!("waiting {} {for_what}", humantime::format_duration(secs))
        };
        if !std::io::stderr().is_terminal() {
            eprintln!("{}", left(wait));
            return;
        }
        let spinner = ProgressBar::new_spinner()
            .with_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"))
            .with_message(left(wait));
        spinner.enable_steady_tick(Duration::from_millis(100));
        // Counts down until the wait is over and the spinner cleared.
        let counting = spinner.clone();
        let until = std::time::Instant::now() + wait;
        std::thread::spawn(move || {
            while !counting.is_finished() {
                counting.set_message(left(
                    until.saturating_duration_since(std::time::Instant::now()),
                ));
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        *self
            .spinner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(spinner);
    }

    fn resumed(&self) {
        let spinner = self
            .spinner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        if let Some(spinner) = spinner {
            spinner.finish_and_clear();
        }
    }
}

/// `-v`: the request line and headers as sent with the key `hint`, its credential masked.
fn request_headers(request: &OutboundRequest, upstream: &Upstream, hint: &str) -> String {
    let mut headers = request.headers().clone();
    // The hint in place of the key: what was sent, without the secret.
    upstream
        .kind
        .api()
        .apply_key(&mut headers, &ApiKey::new(hint));
    let mut text = format!("  > {} {}\n", request.method, request.path_and_query);
    for (name, value) in &headers {
        text.push_str(&format!(
            "  > {name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    text
}

/// `-v`: an answer's headers.
fn response_headers(headers: &HeaderMap) -> String {
    headers
        .iter()
        .map(|(name, value)| {
            format!(
                "  < {name}: {}\n",
                String::from_utf8_lossy(value.as_bytes())
            )
        })
        .collect()
}

fn status_exit_code(status: u16) -> u8 {
    if (200..300).contains(&status) {
        exit::OK
    } else {
        exit::FAILURE
    }
}

/// What an attempt did to its key, in words.
fn describe(attempt: &Attempt, byok: bool) -> String {
    match (attempt.mark, attempt.status) {
        (Some(KeyState::Cooling { until_ms }), status) => {
            let cooldown = humantime::format_duration(Duration::from_secs(cooldown_secs(
                until_ms,
                attempt.at_ms,
            )));
            let scope = attempt
                .model
                .as_ref()
                .map_or_else(String::new, |model| format!(" for model {model}"));
            if status.is_some_and(|code| (200..300).contains(&code)) {
                format!("ok; marked cooling for {cooldown}{scope} (rate-limit budget used up)")
            } else {
                format!("marked cooling for {cooldown}{scope}")
            }
        }
        (Some(KeyState::Disabled(reason)), _) => format!("marked disabled ({})", reason.as_str()),
        (_, None) => attempt.no_answer().unwrap_or("no response").to_owned(),
        (_, Some(status)) if byok && (200..300).contains(&status) => "ok (your own key)".to_owned(),
        (_, Some(status)) if (200..300).contains(&status) => "ok".to_owned(),
        (_, Some(_)) if byok => "error (your own key, not marked)".to_owned(),
        (_, Some(_)) => "error, not the key's fault (not marked)".to_owned(),
    }
}

fn cooldown_secs(until_ms: u64, at_ms: u64) -> u64 {
    ceil_secs(Duration::from_millis(until_ms.saturating_sub(at_ms)))
}

fn print_json(report: &SendReport) -> anyhow::Result<()> {
    let text = serde_json::to_string(report).expect("plain data serializes");
    super::output::print_stdout(&format!("{text}\n"))
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Ok,
    UpstreamError,
    RateLimited,
    Unauthorized,
    NetworkError,
}

/// `--json` output.
#[derive(Debug, Serialize)]
struct SendReport {
    provider: String,
    status: Option<u16>,
    outcome: Outcome,
    /// The key whose answer this is, masked; `null` when none answered.
    key: Option<String>,
    attempts: Vec<AttemptReport>,
    retry_after_secs: Option<u64>,
    /// The answer: its JSON when it is JSON, else its text; `null` when there is none.
    body: Value,
    /// Why there is no whole answer: the upstream out of reach, or the answer cut off.
    error: Option<ErrorReport>,
}

impl SendReport {
    fn with_body(mut self, body: Value) -> Self {
        self.body = body;
        self
    }

    fn with_error(mut self, kind: ErrorKind, message: String) -> Self {
        self.error = Some(ErrorReport { kind, message });
        self
    }
}

#[derive(Debug, Serialize)]
struct ErrorReport {
    kind: ErrorKind,
    message: String,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
enum ErrorKind {
    Unreachable,
    Timeout,
    StreamInterrupted,
    ProviderDisabled,
    NoKeys,
}

impl ErrorKind {
    /// For a walk that ended without an answer, other than every key being marked.
    fn of(error: &FailoverError) -> Self {
        match error {
            FailoverError::Timeout(_) => Self::Timeout,
            FailoverError::ProviderDisabled { .. } => Self::ProviderDisabled,
            FailoverError::NoKeys { .. } => Self::NoKeys,
            FailoverError::Unreachable(_) | FailoverError::Exhausted(_) => Self::Unreachable,
        }
    }
}

#[derive(Debug, Serialize)]
struct AttemptReport {
    key: String,
    status: Option<u16>,
    mark: Option<StateKind>,
    cooldown_secs: Option<u64>,
    /// The model a cooldown applies to alone; `null` when key-wide.
    model: Option<String>,
    /// Present when the request was sent again after this try (it cannot have been read).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    resent: bool,
}

impl From<&Attempt> for AttemptReport {
    fn from(attempt: &Attempt) -> Self {
        Self {
            key: attempt.key_hint.to_string(),
            status: attempt.status,
            mark: attempt.mark.map(KeyState::kind),
            cooldown_secs: match attempt.mark {
                Some(KeyState::Cooling { until_ms }) => {
                    Some(cooldown_secs(until_ms, attempt.at_ms))
                }
                _ => None,
            },
            model: attempt.model.clone(),
            resent: attempt.resent,
        }
    }
}

#[cfg(test)]
mod tests;
