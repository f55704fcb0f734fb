//! The command line, as clap types only: doc comments are the help text.
//! Precedence for every setting: flag > environment variable > config file > default.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use http::{HeaderName, HeaderValue, Method};

/// A local proxy that puts a pool of API keys in front of LLM provider APIs and fails over
/// between keys on its own.
#[derive(Debug, Parser)]
#[command(
    name = "aibridge",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Config file [default: <config dir>/aibridge/config.toml when it exists]
    #[arg(long, global = true, env = "AIBRIDGE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// State file holding key marks between runs [default: state_file from the config, else
    /// <state dir>/aibridge/state.json]
    #[arg(long, global = true, env = "AIBRIDGE_STATE_FILE", value_name = "FILE")]
    pub state_file: Option<PathBuf>,

    /// Share key health through this Redis (redis://[user:password@]host:port/db, or rediss://
    /// for TLS) instead of the state file [default: redis_url from the config]
    #[arg(long, global = true, env = "AIBRIDGE_REDIS_URL", value_name = "URL",
          value_parser = QuietParser(parse_redis_url), hide_env_values = true)]
    pub redis_url: Option<crate::secret::RedisUrl>,

    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Print errors only
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the local proxy: /{provider}/... forwards to the provider with key failover
    ///
    /// Point clients at it, e.g. ANTHROPIC_BASE_URL=http://127.0.0.1:8787/anthropic or
    /// OPENAI_BASE_URL=http://127.0.0.1:8787/openai/v1. SIGHUP reloads the config; SIGINT and
    /// SIGTERM stop it after in-flight requests finish (up to 30 s).
    Serve(ServeArgs),

    /// Check which keys work: one cheap request per key (a models list), no failover
    ///
    /// Verdicts: valid (2xx), invalid (401/403), rate-limited (429), error (anything else).
    /// Results go to shared key health (the state file, or Redis): invalid disables,
    /// rate-limited cools, valid clears a mark.
    /// Exit codes: 0 every key is valid; 1 any is not; 2 usage or config error.
    ProbeKeys(ProbeKeysArgs),

    /// Send one request through the failover walker and report which keys were marked
    ///
    /// The response body goes to stdout as it arrives; one line per attempt goes to stderr.
    /// Exit codes: 0 the upstream answered 2xx; 1 it answered another error (body still
    /// printed); 2 usage or config error; 3 every key is cooling; 4 every key is disabled;
    /// 5 upstream unreachable, timed out, or the answer broke off mid-way.
    Send(SendArgs),

    /// Inspect the key pool
    #[command(subcommand)]
    Pool(PoolCommand),

    /// Write shell completions and man pages (for maintainers)
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port [default: listen from the config, else
    /// 127.0.0.1:8787]
    #[arg(long, env = "AIBRIDGE_LISTEN", value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,

    /// Allow listening on a non-loopback address without access tokens
    #[arg(long, env = "AIBRIDGE_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    /// Neither read nor write shared key health (the state file, or Redis)
    #[arg(long, env = "AIBRIDGE_NO_STATE")]
    pub no_state: bool,

    /// Request-serving threads [default: one per CPU core]
    #[arg(long, env = "AIBRIDGE_WORKERS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
}

#[derive(Debug, Args)]
pub struct ProbeKeysArgs {
    /// Probe only this provider's keys (repeatable); with --key/--keys-file, the API the keys
    /// belong to [default: anthropic]
    #[arg(short, long = "provider", value_name = "NAME")]
    pub providers: Vec<String>,

    /// Probe the keys in this file instead of the configured ones ("-" for stdin; one per
    /// line, blank lines and # comments skipped)
    #[arg(long, env = "AIBRIDGE_KEYS_FILE", value_name = "FILE|-")]
    pub keys_file: Option<PathBuf>,

    /// Probe this key instead of the configured ones (repeatable)
    #[arg(long = "key", value_name = "KEY")]
    pub keys: Vec<String>,

    /// How many probes run at once
    #[arg(long, env = "AIBRIDGE_PROBE_CONCURRENCY", default_value_t = 8, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,

    /// Print a JSON array instead of a table
    #[arg(long)]
    pub json: bool,

    /// Do not write the results to shared key health (the state file, or Redis)
    #[arg(long, env = "AIBRIDGE_NO_STATE")]
    pub no_state: bool,

    /// How long each probe may take
    #[arg(long, env = "AIBRIDGE_PROBE_TIMEOUT", default_value = "10s", value_name = "DURATION",
          value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Show every key's state, from the running server or else shared key health
    ///
    /// Exit codes: 0 every provider with keys has an available one; 1 some provider has
    /// none; 2 usage or config error.
    Status(PoolStatusArgs),

    /// Clear marks (all, one provider's, or one key's) in shared key health and the running
    /// server; through Redis, on every replica
    Reset(PoolResetArgs),
}

#[derive(Debug, Args)]
pub struct PoolStatusArgs {
    /// Only this provider
    #[arg(short, long, value_name = "NAME")]
    pub provider: Option<String>,

    /// Print JSON (the schema of GET /_aibridge/pool)
    #[arg(long)]
    pub json: bool,

    /// Ask this server [default: the server on the configured listen address, if one
    /// answers within 300 ms]
    #[arg(long, env = "AIBRIDGE_SERVER", value_name = "URL")]
    pub server: Option<String>,

    /// Keep showing the table, read again every second, until Ctrl-C
    #[arg(short, long, conflicts_with = "json")]
    pub watch: bool,
}

#[derive(Debug, Args)]
pub struct PoolResetArgs {
    /// Only this provider's keys
    #[arg(short, long, value_name = "NAME")]
    pub provider: Option<String>,

    /// Only this key, by masked hint (sk-a...efgh) or fingerprint
    #[arg(long, value_name = "HINT|FINGERPRINT")]
    pub key: Option<String>,

    /// Also reset on this server [default: the server on the configured listen address, if
    /// one answers within 300 ms]
    #[arg(long, env = "AIBRIDGE_SERVER", value_name = "URL")]
    pub server: Option<String>,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Provider to send to: a provider name from the config
    #[arg(
        short,
        long,
        env = "AIBRIDGE_PROVIDER",
        default_value = "anthropic",
        value_name = "NAME"
    )]
    pub provider: String,

    /// Path and query under the provider's base URL [default: /v1/messages for anthropic,
    /// /v1/chat/completions for openai, /chat/completions for copilot,
    /// /model/{--model}/invoke for bedrock]
    #[arg(value_name = "PATH")]
    pub path: Option<String>,

    /// The model: for bedrock, the model id in the default path (e.g.
    /// us.anthropic.claude-sonnet-4-5-20250929-v1:0); for the others, the JSON body's
    /// "model", added or replaced
    #[arg(short, long, env = "AIBRIDGE_MODEL", value_name = "MODEL")]
    pub model: Option<String>,

    /// Request body: the text itself, @FILE, or @- for stdin
    #[arg(short, long, value_name = "DATA|@FILE|@-")]
    pub data: Option<String>,

    /// HTTP method [default: POST with a body, else GET]
    #[arg(short = 'X', long = "request", value_name = "METHOD", value_parser = parse_method)]
    pub method: Option<Method>,

    /// Add a header; a credential header (authorization, x-api-key) sends the request with
    /// that key alone (bring your own key: one attempt, nothing marked)
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = QuietParser(parse_header))]
    pub headers: Vec<(HeaderName, HeaderValue)>,

    /// Use this key instead of the configured pool (repeat for several, first tried first)
    #[arg(long = "key", value_name = "KEY")]
    pub keys: Vec<String>,

    /// Use the keys in this file instead of the configured pool (one per line, # comments)
    #[arg(long, env = "AIBRIDGE_KEYS_FILE", value_name = "FILE")]
    pub keys_file: Option<PathBuf>,

    /// Print one JSON object (status, outcome, attempts, body) instead of the raw body
    #[arg(long)]
    pub json: bool,

    /// Neither read nor write shared key health (the state file, or Redis)
    #[arg(long, env = "AIBRIDGE_NO_STATE")]
    pub no_state: bool,

    /// When every key is cooling, wait for the soonest one and retry, up to this long in total
    /// (e.g. 30s, 2m)
    #[arg(long, env = "AIBRIDGE_WAIT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,

    /// How long each attempt may wait for the response to start
    #[arg(long, env = "AIBRIDGE_TIMEOUT", default_value = "10m", value_name = "DURATION",
          value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Directory to write completions/ and man/ into
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub dir: PathBuf,
}

fn parse_redis_url(text: &str) -> Result<crate::secret::RedisUrl, String> {
    crate::secret::RedisUrl::parse(text).map_err(|error| error.to_string())
}

fn parse_method(text: &str) -> Result<Method, String> {
    Method::from_bytes(text.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("invalid HTTP method {text:?}"))
}

/// A value parser whose errors never repeat the value, which may carry a secret (a header's
/// credential, a Redis password): clap's own message for a failed parser quotes it whole.
#[derive(Clone, Copy)]
struct QuietParser<T>(fn(&str) -> Result<T, String>);

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for QuietParser<T> {
    type Value = T;

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let parsed = value
            .to_str()
            .ok_or_else(|| "not valid UTF-8".to_owned())
            .and_then(self.0);
        parsed.map_err(|message| {
            let arg = arg.map_or_else(|| "the value".to_owned(), ToString::to_string);
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for '{arg}': {message}\n"),
            )
            .with_cmd(command)
        })
    }
}

fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = text.split_once(':').ok_or_else(|| {
        format!(
            "expected 'Name: value', got {:?}",
            crate::secret::mask(text)
        )
    })?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("invalid header name {:?}", crate::secret::mask(name.trim())))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("invalid value for header {name}"))?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn header_parsing() {
        let (name, value) = parse_header("Anthropic-Beta:  tools-2024 ").unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("anthropic-beta", "tools-2024")
        );
        assert!(
            parse_header("no colon here")
                .unwrap_err()
                .starts_with("expected 'Name: value'")
        );
        assert!(parse_header("bad name: x").is_err());
    }
}
