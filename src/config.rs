//! Configuration: built-in defaults, then the TOML file, then `AIBRIDGE_*` variables.
//! (Command-line flags, the top of the precedence order, are applied by the commands.)
//!
//! The result is validated here, once, so everything downstream can trust it: keys are
//! non-empty and unique, URLs parse, durations are durations.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::keypool::{AffinityMode, CooldownScope, KeyCaps, PoolSettings, Strategy, validate_keys};
use crate::provider::ProviderKind;
use crate::secret::{ApiKey, RedisUrl};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";

/// How often disabled keys are probed again unless configured otherwise.
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(15 * 60);

/// How many keys one request tries at most, unless configured otherwise: keys of one
/// account share a quota, so walking a long pool on 429s mostly hammers the same limit.
pub const DEFAULT_MAX_ATTEMPTS: usize = 4;

/// How long a session keeps its key after its last request: the providers' default prompt
/// cache lifetime. A request that asks for a one-hour cache keeps it an hour.
pub const DEFAULT_AFFINITY_TTL: Duration = Duration::from_secs(5 * 60);

/// How long `serve` holds a request for a key that is about to come back.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(10);

/// Reads an environment variable; injected so tests need not touch the process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file that was read, if any.
    pub source: Option<PathBuf>,
    pub listen: SocketAddr,
    pub state_file: Option<PathBuf>,
    /// Where key health is shared with other processes; `None` = the state file.
    pub redis_url: Option<RedisUrl>,
    /// Namespaces every Redis key and channel aibridge uses.
    pub redis_prefix: String,
    /// By name: the route prefix and `--provider` value.
    pub providers: BTreeMap<String, ProviderConfig>,
    pub serve: ServeSettings,
}

/// Settings only `serve` uses.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// When non-empty, every request must carry one of these.
    pub access_tokens: Vec<ApiKey>,
    pub max_body_size: u64,
    /// How long an attempt may wait for response headers.
    pub response_timeout: Duration,
    /// How long a started response may go without a byte before it counts as broken.
    pub stream_idle_timeout: Duration,
    /// One JSON line per request.
    pub request_log: Option<PathBuf>,
    /// Every attempt's request and response, credentials masked.
    pub dump_dir: Option<PathBuf>,
    /// Host names a loopback listener serves besides loopback ones.
    pub allowed_hosts: Vec<String>,
    /// Origins whose web pages may call the bridge.
    pub allowed_origins: Vec<String>,
    /// The longest a client may take to send a request's headers once started, and the
    /// longest its request body may stall.
    pub client_timeout: Duration,
    /// The longest a client connection may sit idle between requests.
    pub client_idle_timeout: Duration,
    /// The longest a new client connection may take to send its first byte: a silent socket
    /// holds a descriptor for nothing.
    pub client_first_byte_timeout: Duration,
    /// The most connections one client address may hold open; 0 = no cap.
    pub max_connections_per_ip: usize,
    /// Whether the per-address cap applies to loopback clients too (by default it does not:
    /// on this machine they are the local clients the bridge is for).
    pub cap_loopback_clients: bool,
    /// The most client connections served at once; more are refused at once.
    pub max_connections: usize,
    /// How long an upstream connection may sit unused before it is closed; below the idle
    /// timeouts of the load balancers in front of providers, so the bridge never writes a
    /// request into a connection the other side is closing.
    pub upstream_idle_timeout: Duration,
}

impl Default for ServeSettings {
    fn default() -> Self {
        Self {
            access_tokens: Vec::new(),
            max_body_size: 32 * 1024 * 1024,
            response_timeout: Duration::from_secs(600),
            stream_idle_timeout: Duration::from_secs(120),
            request_log: None,
            dump_dir: None,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            client_timeout: Duration::from_secs(60),
            client_idle_timeout: Duration::from_secs(120),
            client_first_byte_timeout: Duration::from_secs(5),
            max_connections_per_ip: 256,
            cap_loopback_clients: false,
            max_connections: 10_000,
            upstream_idle_timeout: crate::transport::DEFAULT_UPSTREAM_IDLE_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    pub keys: Vec<ApiKey>,
    /// Each key's caps, in key order: its own table's, else the provider's defaults.
    pub key_caps: Vec<KeyCaps>,
    /// Whether the provider was given a pool (`keys`, `keys_file` or `keys_env`): such a
    /// provider never falls back to callers' own credentials because its list came out
    /// empty (a keys file emptied or half-written); it waits for keys instead.
    pub expects_keys: bool,
    pub enabled: bool,
    /// Whether a caller's own credential is used instead of the pool.
    pub byok: bool,
    pub pool: PoolSettings,
    /// How often `serve` probes disabled keys to bring back those that work again;
    /// `None` = never.
    pub recheck_disabled: Option<Duration>,
    /// The most upstream tries one request makes; `None` = the whole pool.
    pub max_attempts: Option<usize>,
    /// How long `serve` may hold a request for a cooling key in total; zero = not at all.
    pub max_wait: Duration,
    /// How long a session keeps its key after its last request; `None` = affinity off.
    pub affinity_ttl: Option<Duration>,
    /// Bedrock: the region of credentials that name none (and of callers' own API keys).
    pub region: Option<String>,
    /// Bedrock without a `base_url`: each attempt goes to its credential's regional
    /// endpoint (`bedrock-runtime.{region}` or, for the control plane, `bedrock.{region}`).
    pub regional: bool,
}

impl ProviderConfig {
    /// A setting that is valid but almost surely wrong, in words: a `base_url` of an
    /// `openai` or `anthropic` provider whose path ends in `/v1`, when routes already carry
    /// `/v1`.
    pub fn warning(&self) -> Option<String> {
        let doubled = matches!(self.kind, ProviderKind::OpenAi | ProviderKind::Anthropic)
            && url::Url::parse(&self.base_url)
                .is_ok_and(|url| url.path().trim_end_matches('/').ends_with("/v1"));
        doubled.then(|| {
            format!(
                "provider \"{}\": base_url {} ends in /v1, but request paths already start with \
                 /v1, so requests would go to .../v1/v1/...; drop the /v1",
                self.name, self.base_url
            )
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The causes below are part of the message, not a source, so a chain prints them once.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A value the file or a variable set is wrong; `place` says where it came from.
    #[error("{place}: {setting}: {message}")]
    Value {
        place: String,
        setting: String,
        message: String,
    },
    #[error("provider \"{provider}\": {message}")]
    Provider { provider: String, message: String },
    #[error("{setting}: {message}")]
    Setting {
        setting: &'static str,
        message: String,
    },
}

impl ConfigError {
    fn provider(provider: &str, message: impl Into<String>) -> Self {
        Self::Provider {
            provider: provider.to_owned(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Spanned<String>>,
    state_file: Option<PathBuf>,
    redis_url: Option<Spanned<String>>,
    redis_prefix: Option<Spanned<String>>,
    #[serde(default)]
    access_tokens: Vec<String>,
    max_body_size: Option<bytesize::ByteSize>,
    #[serde(default, with = "humantime_serde")]
    response_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    stream_idle_timeout: Option<Duration>,
    request_log: Option<PathBuf>,
    dump_dir: Option<PathBuf>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    client_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    client_idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    client_first_byte_timeout: Option<Duration>,
    max_connections_per_ip: Option<usize>,
    cap_loopback_clients: Option<bool>,
    max_connections: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    upstream_idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "provider_tables")]
    providers: BTreeMap<String, RawProvider>,
}

/// A key in `keys`: the key alone, or a table with its caps
/// (`{ key = "...", rpm = 50, max_concurrency = 4 }`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawKey {
    Plain(String),
    WithCaps(CappedKey),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CappedKey {
    key: String,
    max_concurrency: Option<u32>,
    rpm: Option<u32>,
}

/// The longest provider name: it is a route prefix and part of variable names, never a key.
const MAX_PROVIDER_NAME: usize = 32;

/// Provider tables, refusing a name that could not be a route prefix (a key pasted as a
/// table name is refused here, before anything prints it).
fn provider_tables<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, RawProvider>, D::Error> {
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    struct Name(String);
    impl<'de> Deserialize<'de> for Name {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let name = String::deserialize(deserializer)?;
            let allowed = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
            if name.is_empty() || name.len() > MAX_PROVIDER_NAME || !name.chars().all(allowed) {
                return Err(serde::de::Error::custom(format!(
                    "provider name {} must be 1 to {MAX_PROVIDER_NAME} letters, digits, - or _",
                    shown_value(&name)
                )));
            }
            Ok(Self(name))
        }
    }
    let tables = BTreeMap::<Name, RawProvider>::deserialize(deserializer)?;
    Ok(tables
        .into_iter()
        .map(|(name, table)| (name.0, table))
        .collect())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    kind: Option<ProviderKind>,
    base_url: Option<Spanned<String>>,
    #[serde(default)]
    keys: Vec<RawKey>,
    keys_file: Option<Spanned<PathBuf>>,
    keys_env: Option<String>,
    enabled: Option<bool>,
    byok: Option<bool>,
    strategy: Option<Strategy>,
    #[serde(default, with = "humantime_serde")]
    default_cooldown: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_cooldown: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    recheck_disabled: Option<Duration>,
    cooldown_scope: Option<CooldownScope>,
    max_models_per_key: Option<usize>,
    max_attempts: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    max_wait: Option<Duration>,
    region: Option<Spanned<String>>,
    affinity: Option<AffinityMode>,
    max_concurrency: Option<u32>,
    rpm: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    affinity_ttl: Option<Duration>,
}

/// The config file used when none is named: `<config dir>/aibridge/config.toml`.
pub fn default_path() -> Option<PathBuf> {
    dirs::config_dir().map(|dir| dir.join("aibridge").join("config.toml"))
}

/// Loads the configuration. `path` is the file named by `--config`/`AIBRIDGE_CONFIG`; without
/// one the default file is read when it exists, else the built-in defaults apply.
pub fn load(path: Option<&Path>, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
    let path = path
        .map(Path::to_path_buf)
        .or_else(|| default_path().filter(|candidate| candidate.is_file()));
    let Some(path) = path else {
        return resolve(RawConfig::default(), FileText::NONE, &PathBuf::new(), env);
    };
    let text = read_file(&path)?;
    parse(&text, &path, env)
}

/// Parses TOML text as a config (for tests and `load`).
pub fn parse(text: &str, path: &Path, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
    let raw = parse_toml(text, path)?;
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let file = FileText {
        path: Some(path),
        text,
    };
    resolve(raw, file, &base_dir, env)
}

/// The largest config file read; a real one is a few KiB.
const MAX_CONFIG_FILE: u64 = 1024 * 1024;

fn read_file(path: &Path) -> Result<String, ConfigError> {
    let text = crate::files::read_regular(path, MAX_CONFIG_FILE).and_then(crate::files::text);
    text.map_err(|reason| ConfigError::Read {
        path: path.to_path_buf(),
        reason,
    })
}

/// The config file as read, so an error about a value can say where it sits.
#[derive(Clone, Copy)]
struct FileText<'a> {
    path: Option<&'a Path>,
    text: &'a str,
}

impl FileText<'_> {
    const NONE: FileText<'static> = FileText {
        path: None,
        text: "",
    };

    /// `path:line:column` of a byte offset into the file.
    fn place(&self, offset: usize) -> String {
        let (line, column) = line_and_column(self.text, offset);
        let path = self.path.unwrap_or(Path::new("config"));
        format!("{}:{line}:{column}", path.display())
    }
}

/// The 1-based line and column (in characters) of a byte offset into `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// A setting's value and where it came from: a variable overrides the file.
struct Chosen {
    value: String,
    /// The variable's name, or the file's `path:line:column`.
    place: String,
}

impl Chosen {
    fn pick(
        variable: &str,
        env: EnvLookup<'_>,
        in_file: Option<&Spanned<String>>,
        file: FileText<'_>,
    ) -> Option<Self> {
        if let Some(value) = env(variable) {
            return Some(Self {
                value,
                place: variable.to_owned(),
            });
        }
        in_file.map(|value| Self {
            value: value.get_ref().clone(),
            place: file.place(value.span().start),
        })
    }

    fn error(&self, setting: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Value {
            place: self.place.clone(),
            setting: setting.into(),
            message: message.into(),
        }
    }
}

/// Parses the file; an error names the line, the column and the setting's path, never the
/// value found there (it may be a key or a token).
fn parse_toml(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
    let located = |error: &toml::de::Error, setting: Option<String>| {
        let offset = error.span().map_or(0, |span| span.start);
        let (line, column) = line_and_column(text, offset);
        let message = without_values(error.message().trim()).replace('\n', " ");
        ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message: match setting {
                Some(setting) if setting != "." => {
                    format!("{}: {message}", shown_setting(&setting, &message))
                }
                _ => message,
            },
        }
    };
    let document = toml::Deserializer::parse(text).map_err(|error| located(&error, None))?;
    serde_path_to_error::deserialize(document)
        .map_err(|error| located(error.inner(), Some(error.path().to_string())))
}

/// serde names a string it could not take (`invalid type: string "sk-...", expected a
/// sequence`); the line and column already point at it, so the value itself is left out.
fn without_values(message: &str) -> String {
    const STRING: &str = "string \"";
    let mut kept = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(STRING) {
        kept.push_str(&rest[..start + "string".len()]);
        let quoted = &rest[start + STRING.len()..];
        // serde quotes the value as Debug does: it ends at the first quote not escaped.
        let mut escaped = false;
        let end = quoted
            .char_indices()
            .find(|&(_, char)| {
                let closing = char == '"' && !escaped;
                escaped = char == '\\' && !escaped;
                closing
            })
            .map_or(quoted.len(), |(index, _)| index + 1);
        rest = &quoted[end..];
    }
    kept.push_str(rest);
    without_found_names(&kept)
}

/// serde also quotes what it found in backticks (``unknown variant `sk-...` ``, ``unknown
/// field `sk-...` ``): before the word "expected", what is quoted is the caller's, and is
/// shown only when it is short.
fn without_found_names(message: &str) -> String {
    let (found, expected) = match message.find("expected") {
        Some(at) => message.split_at(at),
        None => (message, ""),
    };
    let mut parts = found.split('`');
    let mut kept = parts.next().unwrap_or_default().to_owned();
    for (index, part) in parts.enumerate() {
        if index % 2 == 0 {
            match shown_value(part) {
                // Short: kept as serde quoted it.
                shown if shown.starts_with('"') => kept.push_str(&format!("`{part}`")),
                hidden => kept.push_str(&hidden),
            }
        } else {
            kept.push_str(part);
        }
    }
    kept + expected
}

/// A value from the config as an error may show it: a short one as it is, since it cannot
/// be a key; anything longer only by its length (the setting names where it is).
pub fn shown_value(value: &str) -> String {
    // Provider keys and tokens are 20 characters and more.
    const SHOWN: usize = 12;
    let length = value.chars().count();
    if length <= SHOWN && !value.contains(char::is_control) {
        format!("{value:?}")
    } else {
        format!("(a value of {length} characters, not shown)")
    }
}

/// A setting's path as an error may show it: an unknown field's own name, or a refused
/// provider name, is the caller's, and may be a key pasted in the wrong place.
fn shown_setting(setting: &str, message: &str) -> String {
    if !message.starts_with("unknown field") && !message.starts_with("provider name") {
        return setting.to_owned();
    }
    match setting.rsplit_once('.') {
        Some((parent, field)) => format!("{parent}.{}", shown_value(field)),
        None => shown_value(setting),
    }
}

fn resolve(
    mut raw: RawConfig,
    file: FileText<'_>,
    base_dir: &Path,
    env: EnvLookup<'_>,
) -> Result<Config, ConfigError> {
    // The built-in providers are always there; the file may adjust them or add more.
    for kind in ProviderKind::ALL {
        raw.providers.entry(kind.as_str().to_owned()).or_default();
    }
    // `serve --listen` reads the variable too; here it tells `pool` where the server is.
    let listen = match Chosen::pick("AIBRIDGE_LISTEN", env, raw.listen.as_ref(), file) {
        Some(chosen) => chosen.value.parse().map_err(|reason| {
            chosen.error(
                "listen",
                format!("invalid address {}: {reason}", shown_value(&chosen.value)),
            )
        })?,
        None => DEFAULT_LISTEN.parse().expect("the default address parses"),
    };
    let serve = resolve_serve(&raw, base_dir, env)?;
    let (redis_url, redis_prefix) = resolve_redis(&raw, file, env)?;
    let providers = raw
        .providers
        .into_iter()
        .map(|(name, provider)| {
            let resolved = resolve_provider(&name, provider, file, base_dir, env)?;
            Ok((name, resolved))
        })
        .collect::<Result<_, ConfigError>>()?;
    Ok(Config {
        source: file.path.map(Path::to_path_buf),
        listen,
        state_file: raw.state_file.map(|file| base_dir.join(file)),
        redis_url,
        redis_prefix,
        providers,
        serve,
    })
}

/// The prefix of every Redis key and channel, unless configured otherwise.
pub const DEFAULT_REDIS_PREFIX: &str = "aibridge";

fn resolve_redis(
    raw: &RawConfig,
    file: FileText<'_>,
    env: EnvLookup<'_>,
) -> Result<(Option<RedisUrl>, String), ConfigError> {
    let url = match Chosen::pick("AIBRIDGE_REDIS_URL", env, raw.redis_url.as_ref(), file) {
        Some(chosen) if !chosen.value.trim().is_empty() => Some(
            RedisUrl::parse(chosen.value.trim())
                .map_err(|error| chosen.error("redis_url", error.to_string()))?,
        ),
        _ => None,
    };
    let Some(chosen) = Chosen::pick(
        "AIBRIDGE_REDIS_PREFIX",
        env,
        raw.redis_prefix.as_ref(),
        file,
    ) else {
        return Ok((url, DEFAULT_REDIS_PREFIX.to_owned()));
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_.:-".contains(c);
    if chosen.value.is_empty() || !chosen.value.chars().all(allowed) {
        return Err(chosen.error(
            "redis_prefix",
            format!(
                "{} must be letters, digits and _ . : - only (it is part of Redis key patterns)",
                shown_value(&chosen.value)
            ),
        ));
    }
    Ok((url, chosen.value))
}

fn resolve_serve(
    raw: &RawConfig,
    base_dir: &Path,
    env: EnvLookup<'_>,
) -> Result<ServeSettings, ConfigError> {
    let defaults = ServeSettings::default();
    // The variable replaces the file's list, as env does for every setting.
    let access_tokens: Vec<ApiKey> = match env("AIBRIDGE_ACCESS_TOKENS") {
        Some(list) => split_key_list(&list).collect(),
        None => raw
            .access_tokens
            .iter()
            .map(|token| ApiKey::new(token.as_str()))
            .collect(),
    };
    validate_keys(&access_tokens).map_err(|error| ConfigError::Setting {
        setting: "access_tokens",
        message: error.to_string().replace("key", "token"),
    })?;
    let settings = ServeSettings {
        access_tokens,
        max_body_size: raw
            .max_body_size
            .map_or(defaults.max_body_size, |size| size.as_u64()),
        response_timeout: raw.response_timeout.unwrap_or(defaults.response_timeout),
        stream_idle_timeout: raw
            .stream_idle_timeout
            .unwrap_or(defaults.stream_idle_timeout),
        request_log: raw.request_log.as_ref().map(|path| base_dir.join(path)),
        dump_dir: raw.dump_dir.as_ref().map(|path| base_dir.join(path)),
        allowed_hosts: raw.allowed_hosts.clone(),
        allowed_origins: raw
            .allowed_origins
            .iter()
            .map(|origin| origin.trim_end_matches('/').to_owned())
            .collect(),
        client_timeout: raw.client_timeout.unwrap_or(defaults.client_timeout),
        client_idle_timeout: raw
            .client_idle_timeout
            .unwrap_or(defaults.client_idle_timeout),
        client_first_byte_timeout: raw
            .client_first_byte_timeout
            .unwrap_or(defaults.client_first_byte_timeout),
        max_connections_per_ip: raw
            .max_connections_per_ip
            .unwrap_or(defaults.max_connections_per_ip),
        cap_loopback_clients: raw
            .cap_loopback_clients
            .unwrap_or(defaults.cap_loopback_clients),
        max_connections: raw.max_connections.unwrap_or(defaults.max_connections),
        upstream_idle_timeout: raw
            .upstream_idle_timeout
            .unwrap_or(defaults.upstream_idle_timeout),
    };
    let zero = |setting, value: Duration| {
        value.is_zero().then_some(ConfigError::Setting {
            setting,
            message: "must be longer than zero".to_owned(),
        })
    };
    if let Some(error) = zero("response_timeout", settings.response_timeout)
        .or_else(|| zero("stream_idle_timeout", settings.stream_idle_timeout))
        .or_else(|| zero("client_timeout", settings.client_timeout))
        .or_else(|| zero("client_idle_timeout", settings.client_idle_timeout))
        .or_else(|| {
            zero(
                "client_first_byte_timeout",
                settings.client_first_byte_timeout,
            )
        })
        .or_else(|| zero("upstream_idle_timeout", settings.upstream_idle_timeout))
    {
        return Err(error);
    }
    if settings.max_connections == 0 {
        return Err(ConfigError::Setting {
            setting: "max_connections",
            message: "must be at least 1".to_owned(),
        });
    }
    if settings.max_body_size == 0 {
        return Err(ConfigError::Setting {
            setting: "max_body_size",
            message: "must be larger than zero".to_owned(),
        });
    }
    Ok(settings)
}

/// `AIBRIDGE_<NAME>_<SUFFIX>` with the name upper-cased and `-` turned into `_`.
pub fn provider_env_var(name: &str, suffix: &str) -> String {
    format!(
        "AIBRIDGE_{}_{suffix}",
        name.to_uppercase().replace('-', "_")
    )
}

fn resolve_provider(
    name: &str,
    raw: RawProvider,
    file: FileText<'_>,
    base_dir: &Path,
    env: EnvLookup<'_>,
) -> Result<ProviderConfig, ConfigError> {
    let kind = raw
        .kind
        .or_else(|| ProviderKind::from_name(name))
        .ok_or_else(|| {
            ConfigError::provider(
                name,
                "missing `kind` (one of \"anthropic\", \"openai\", \"copilot\", \"bedrock\")",
            )
        })?;
    let setting = |field: &str| format!("providers.{name}.{field}");
    let region = resolve_region(name, kind, &raw, file, env)?;
    let base_url_variable = provider_env_var(name, "BASE_URL");
    let chosen_base_url = Chosen::pick(&base_url_variable, env, raw.base_url.as_ref(), file);
    let regional = kind == ProviderKind::Bedrock && chosen_base_url.is_none();
    let base_url = match chosen_base_url {
        Some(chosen) => validate_base_url(&chosen.value)
            .map_err(|message| chosen.error(setting("base_url"), message))?,
        None => match &region {
            Some(region) => crate::provider::bedrock::Plane::Runtime.endpoint(region),
            None => kind.api().default_base_url().to_owned(),
        },
    };

    let expects_keys = !raw.keys.is_empty() || raw.keys_file.is_some() || raw.keys_env.is_some();
    let defaults = KeyCaps {
        max_concurrency: raw.max_concurrency,
        rpm: raw.rpm,
    };
    let (mut keys, mut key_caps): (Vec<ApiKey>, Vec<KeyCaps>) = raw
        .keys
        .into_iter()
        .map(|raw_key| match raw_key {
            RawKey::Plain(key) => (ApiKey::new(key), defaults),
            RawKey::WithCaps(capped) => (
                ApiKey::new(capped.key),
                KeyCaps {
                    max_concurrency: capped.max_concurrency.or(defaults.max_concurrency),
                    rpm: capped.rpm.or(defaults.rpm),
                },
            ),
        })
        .unzip();
    if let Some(keys_file) = raw.keys_file {
        let path = base_dir.join(keys_file.get_ref());
        let text = read_keys_file(&path).map_err(|error| ConfigError::Value {
            place: file.place(keys_file.span().start),
            setting: setting("keys_file"),
            message: format!(
                "cannot read {}: {error}",
                shown_value(&path.display().to_string())
            ),
        })?;
        keys.extend(parse_keys_file(&text));
    }
    if let Some(var) = raw.keys_env {
        keys.extend(split_key_list(&env(&var).unwrap_or_default()));
    }
    if let Some(list) = env(&provider_env_var(name, "KEYS")) {
        keys.extend(split_key_list(&list));
    }
    validate_keys(&keys).map_err(|error| ConfigError::provider(name, error.to_string()))?;
    // Keys from a file or a variable take the provider's caps.
    key_caps.resize(keys.len(), defaults);
    let zero_cap = key_caps
        .iter()
        .position(|caps| caps.max_concurrency == Some(0) || caps.rpm == Some(0));
    if let Some(index) = zero_cap {
        return Err(ConfigError::provider(
            name,
            format!(
                "key #{}: rpm and max_concurrency must be at least 1",
                index + 1
            ),
        ));
    }
    if kind == ProviderKind::Bedrock {
        validate_aws_credentials(name, &keys)?;
    }
    if kind.api().byok_only() && !keys.is_empty() {
        return Err(ConfigError::provider(
            name,
            format!("{kind} is bring-your-own-key only: remove its keys and send your own token"),
        ));
    }

    let defaults = PoolSettings::default();
    let pool = PoolSettings {
        strategy: raw.strategy.unwrap_or(defaults.strategy),
        default_cooldown: raw.default_cooldown.unwrap_or(defaults.default_cooldown),
        max_cooldown: raw.max_cooldown.unwrap_or(defaults.max_cooldown),
        cooldown_scope: raw.cooldown_scope.unwrap_or(defaults.cooldown_scope),
        max_models_per_key: raw
            .max_models_per_key
            .unwrap_or(defaults.max_models_per_key),
    };
    if pool.default_cooldown.is_zero() || pool.max_cooldown.is_zero() {
        return Err(ConfigError::provider(
            name,
            "cooldowns must be longer than zero",
        ));
    }
    if raw.affinity_ttl.is_some_and(|ttl| ttl.is_zero()) {
        return Err(ConfigError::provider(
            name,
            "affinity_ttl must be longer than zero (affinity = \"off\" turns affinity off)",
        ));
    }
    if pool.max_models_per_key == 0 {
        return Err(ConfigError::provider(
            name,
            "max_models_per_key must be at least 1",
        ));
    }
    Ok(ProviderConfig {
        name: name.to_owned(),
        kind,
        base_url,
        keys,
        expects_keys,
        enabled: raw.enabled.unwrap_or(true),
        byok: raw.byok.unwrap_or(false),
        pool,
        recheck_disabled: match raw.recheck_disabled {
            None => Some(DEFAULT_RECHECK),
            Some(interval) if interval.is_zero() => None,
            Some(interval) => Some(interval),
        },
        max_attempts: match raw.max_attempts {
            None => Some(DEFAULT_MAX_ATTEMPTS),
            Some(0) => None,
            Some(limit) => Some(limit),
        },
        max_wait: raw.max_wait.unwrap_or(DEFAULT_MAX_WAIT),
        key_caps,
        affinity_ttl: match raw.affinity.unwrap_or_default() {
            AffinityMode::Off => None,
            AffinityMode::Session => Some(raw.affinity_ttl.unwrap_or(DEFAULT_AFFINITY_TTL)),
        },
        region,
        regional,
    })
}

/// Bedrock's default region: `AIBRIDGE_<NAME>_REGION`, else `region`, else us-east-1. Other
/// kinds have none, and refuse the setting.
fn resolve_region(
    name: &str,
    kind: ProviderKind,
    raw: &RawProvider,
    file: FileText<'_>,
    env: EnvLookup<'_>,
) -> Result<Option<String>, ConfigError> {
    let setting = format!("providers.{name}.region");
    let chosen = Chosen::pick(
        &provider_env_var(name, "REGION"),
        env,
        raw.region.as_ref(),
        file,
    );
    if kind != ProviderKind::Bedrock {
        return match chosen {
            Some(chosen) => Err(chosen.error(setting, "only a bedrock provider has a region")),
            None => Ok(None),
        };
    }
    let Some(chosen) = chosen else {
        return Ok(Some(crate::provider::bedrock::DEFAULT_REGION.to_owned()));
    };
    if !crate::provider::bedrock::is_region(&chosen.value) {
        return Err(chosen.error(
            setting,
            format!(
                "{} is not an AWS region name (like us-east-1)",
                shown_value(&chosen.value)
            ),
        ));
    }
    Ok(Some(chosen.value))
}

/// Every pooled Bedrock key must be a credential in the documented one-line form.
fn validate_aws_credentials(name: &str, keys: &[ApiKey]) -> Result<(), ConfigError> {
    let bad = keys
        .iter()
        .position(|key| crate::provider::bedrock::AwsCredential::parse(key.expose()).is_none());
    match bad {
        Some(index) => Err(ConfigError::provider(
            name,
            format!(
                "key #{} {}",
                index + 1,
                crate::provider::bedrock::CREDENTIAL_FORM
            ),
        )),
        None => Ok(()),
    }
}

/// Why a URL with user info is refused; the URL itself is then never printed.
const CREDENTIALS_IN_URL: &str =
    "a user name or password in the URL is not allowed: the pool's keys are the credentials";

/// The URL without a trailing slash, or why it is refused (never showing a long value).
fn validate_base_url(url: &str) -> Result<String, String> {
    normalized_base_url(url).map_err(|reason| {
        if reason == CREDENTIALS_IN_URL {
            format!("invalid URL: {reason}")
        } else {
            format!("invalid URL {}: {reason}", shown_value(url))
        }
    })?;
    Ok(url.trim_end_matches('/').to_owned())
}

/// A base URL as requests are built on it: percent-encoded, without a trailing slash.
pub fn normalized_base_url(url: &str) -> Result<String, String> {
    let parsed = url::Url::parse(url).map_err(|error| error.to_string())?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(CREDENTIALS_IN_URL.to_owned());
    }
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("scheme must be http or https".to_owned());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("a query or fragment cannot be followed by a request path".to_owned());
    }
    let normalized = parsed.as_str().trim_end_matches('/').to_owned();
    http::Uri::try_from(normalized.as_str()).map_err(|error| error.to_string())?;
    Ok(normalized)
}

mod keys;

pub use keys::{MAX_KEYS_FILE, parse_keys_file, read_keys_file, split_key_list};

#[cfg(test)]
mod tests;
