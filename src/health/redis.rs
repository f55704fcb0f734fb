//! Redis as the shared store of a fleet: every replica, `send` and probe reads and writes the
//! same marks, and hears of each other's through pub/sub.
//!
//! Layout, every name under the prefix `P` (provider and model names are percent-encoded, so
//! a `:` or a glob character in them is never taken for a separator or a pattern):
//! - `P:key:{provider}:{fingerprint}`: hash of `hint`, `last_status`, `last_used_ms`.
//! - `P:disabled:{provider}:{fingerprint}`: the disable reason, until a reset or revive.
//! - `P:cooling:{provider}:{fingerprint}`: when a key-wide cooldown ends (unix ms); the
//!   entry expires then.
//! - `P:cooling:{provider}:{fingerprint}:{model}`: the same for one model.
//! - channel `P:marks`: each batch of changes, as JSON, for the other processes' pools.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime};

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::{RedisError, RedisResult};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use super::file::{KeyRecord, ModelRecord, RecordedState};
use super::{ClearedKey, HealthChange, HealthError, Observation, SharedChange, StateFile};
use crate::keypool::{DisableReason, KeyState, StateReason, from_unix_ms, to_unix_ms};
use crate::secret::RedisUrl;

/// How long connecting may take before the process goes on without Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one command may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Keys one SCAN step asks for.
const SCAN_BATCH: usize = 1000;

/// What is escaped in names: separators, glob characters, and anything not printable.
const ESCAPED: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'%')
    .add(b':')
    .add(b'*')
    .add(b'?')
    .add(b'[')
    .add(b']')
    .add(b'\\');

/// Raises a cooldown's end, never lowers it, and has the entry expire when it ends.
const RAISE_COOLDOWN: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= nil and current >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[1])
return 1
";

/// A batch of changes as published.
#[derive(Debug, Serialize, Deserialize)]
struct Announcement {
    /// The process that made them, which skips its own.
    from: String,
    changes: Vec<SharedChange>,
}

pub struct RedisHealth {
    url: RedisUrl,
    prefix: String,
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    /// This process, in announcements.
    origin: String,
}

impl RedisHealth {
    pub fn new(url: &RedisUrl, prefix: &str) -> Result<Self, HealthError> {
        let client = redis::Client::open(url.expose()).map_err(|source| HealthError::Redis {
            url: url.to_string(),
            detail: source.to_string(),
        })?;
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Ok(Self {
            url: url.clone(),
            prefix: prefix.to_owned(),
            client,
            connection: OnceCell::new(),
            origin: format!("{}-{random:016x}", std::process::id()),
        })
    }

    pub fn describe(&self) -> String {
        format!("redis {} (prefix {})", self.url, self.prefix)
    }

    fn error(&self, source: RedisError) -> HealthError {
        HealthError::Redis {
            url: self.url.to_string(),
            detail: source.to_string(),
        }
    }

    /// The shared connection, made on first use; it reconnects by itself after a failure.
    async fn connection(&self) -> Result<ConnectionManager, HealthError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50));
        let connection = self
            .connection
            .get_or_try_init(|| self.client.get_connection_manager_with_config(config))
            .await
            .map_err(|source| self.error(source))?;
        Ok(connection.clone())
    }

    /// The error for a subscription Redis ended.
    pub fn closed(&self) -> HealthError {
        HealthError::Closed {
            url: self.url.to_string(),
        }
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), HealthError> {
        let mut connection = self.connection().await?;
        redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await
            .map_err(|source| self.error(source))
    }

    /// Every mark recorded, as a state file holds them.
    pub async fn load(&self) -> Result<StateFile, HealthError> {
        let mut connection = self.connection().await?;
        self.read_all(&mut connection)
            .await
            .map_err(|source| self.error(source))
    }

    async fn read_all(&self, connection: &mut ConnectionManager) -> Result<StateFile, RedisError> {
        let names = scan(connection, &format!("{}:*", self.prefix)).await?;
        let mut metas = Vec::new();
        let mut strings = Vec::new();
        for name in names {
            match self.parse_name(&name) {
                Some(
                    parsed @ Name {
                        kind: Kind::Key, ..
                    },
                ) => metas.push((name, parsed)),
                Some(parsed) => strings.push((name, parsed)),
                None => {}
            }
        }
        // One entry of the wrong type (a stray SET by hand, another program's key under the
        // prefix) fails only its own read, not the load: the rest of the fleet's marks count.
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (name, _) in &metas {
            pipe.hgetall(name);
        }
        let meta_values: Vec<RedisResult<HashMap<String, String>>> =
            query(pipe, connection).await?;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (name, _) in &strings {
            pipe.get(name);
        }
        let string_values: Vec<RedisResult<Option<String>>> = query(pipe, connection).await?;
        let mut skipped = Skipped::default();
        let meta_values = skipped.readable(&metas, meta_values);
        let string_values = skipped.readable(&strings, string_values);
        skipped.warn();

        let mut state = StateFile::default();
        let now = SystemTime::now();
        for ((_, name), meta) in meta_values {
            let record = record_of(&mut state, name);
            if let Some(hint) = meta.get("hint") {
                record.hint.clone_from(hint);
            }
            record.last_status = meta.get("last_status").and_then(|text| text.parse().ok());
            record.last_used = meta
                .get("last_used_ms")
                .and_then(|text| text.parse().ok())
                .map(from_unix_ms);
        }
        for ((_, name), value) in string_values {
            let Some(value) = value else { continue };
            match name.kind {
                Kind::Disabled => {
                    if let Some(reason) = DisableReason::from_name(&value) {
                        record_of(&mut state, name).state = RecordedState::Disabled { reason };
                    }
                }
                Kind::Cooling => {
                    let Some(until) = value.parse().ok().map(from_unix_ms) else {
                        continue;
                    };
                    if until <= now {
                        continue;
                    }
                    let model = name.model.clone();
                    let record = record_of(&mut state, name);
                    match model {
                        Some(model) => {
                            // Redis keeps the deadline; the reason travels with the
                            // announcement only.
                            let reason = StateReason::RateLimited;
                            record.cooling.insert(model, ModelRecord { until, reason });
                        }
                        None if !matches!(record.state, RecordedState::Disabled { .. }) => {
                            record.state = KeyState::Cooling {
                                until_ms: to_unix_ms(until),
                            }
                            .into();
                        }
                        None => {}
                    }
                }
                Kind::Key => {}
            }
        }
        Ok(state)
    }

    /// Records `changes` and announces them to every other process.
    pub async fn apply(
        &self,
        changes: &[HealthChange],
        now: SystemTime,
    ) -> Result<Vec<ClearedKey>, HealthError> {
        let mut connection = self.connection().await?;
        self.write(&mut connection, changes, now)
            .await
            .map_err(|source| self.error(source))
    }

    async fn write(
        &self,
        connection: &mut ConnectionManager,
        changes: &[HealthChange],
        now: SystemTime,
    ) -> Result<Vec<ClearedKey>, RedisError> {
        let clears = changes
            .iter()
            .any(|change| matches!(change, HealthChange::Cleared { .. }));
        // What a clear clears, worked out on what is recorded before any of it is deleted.
        let cleared = if clears {
            self.read_all(connection).await?.apply(changes, now)
        } else {
            Vec::new()
        };
        let mut pipe = redis::pipe();
        for change in changes {
            match change {
                HealthChange::Observed(seen) => self.queue_observation(&mut pipe, seen, now),
                HealthChange::Cleared {
                    provider,
                    fingerprint,
                } => {
                    // Marks queued so far must land before the clear deletes them.
                    query::<()>(std::mem::take(&mut pipe), connection).await?;
                    let doomed = self
                        .marks_of(connection, provider.as_deref(), fingerprint.as_deref())
                        .await?;
                    if !doomed.is_empty() {
                        pipe.del(doomed).ignore();
                    }
                }
                // Sessions are announced (below), not stored: each replica keeps its own
                // table, and a stored copy would only lengthen every load's scan.
                HealthChange::Assigned { .. } => {}
            }
        }
        let shared: Vec<_> = changes.iter().filter_map(SharedChange::of).collect();
        if !shared.is_empty() {
            let announcement = Announcement {
                from: self.origin.clone(),
                changes: shared,
            };
            let text = serde_json::to_string(&announcement).expect("plain data serializes");
            pipe.publish(self.channel(), text).ignore();
        }
        query::<()>(pipe, connection).await?;
        Ok(cleared)
    }

    fn queue_observation(&self, pipe: &mut redis::Pipeline, seen: &Observation, now: SystemTime) {
        let meta = self.name("key", &seen.provider, &seen.fingerprint, None);
        pipe.hset(&meta, "hint", &seen.hint).ignore();
        pipe.hset(&meta, "last_used_ms", to_unix_ms(seen.at))
            .ignore();
        match seen.status {
            Some(status) => pipe.hset(&meta, "last_status", status).ignore(),
            None => pipe.hdel(&meta, "last_status").ignore(),
        };
        match seen.mark {
            Some(KeyState::Disabled(reason)) => {
                let name = self.name("disabled", &seen.provider, &seen.fingerprint, None);
                pipe.set(name, reason.as_str()).ignore();
            }
            Some(KeyState::Cooling { until_ms }) => {
                let until_ms = until_ms.min(to_unix_ms(seen.cap()));
                if until_ms > to_unix_ms(now) {
                    let model = seen.model.as_deref();
                    let name = self.name("cooling", &seen.provider, &seen.fingerprint, model);
                    pipe.cmd("EVAL")
                        .arg(RAISE_COOLDOWN)
                        .arg(1)
                        .arg(name)
                        .arg(until_ms)
                        .ignore();
                }
            }
            Some(KeyState::Available) | None => {}
        }
    }

    /// The names of every mark (disabled, cooling) of one key, one provider, or all.
    async fn marks_of(
        &self,
        connection: &mut ConnectionManager,
        provider: Option<&str>,
        fingerprint: Option<&str>,
    ) -> Result<Vec<String>, RedisError> {
        let mut names = Vec::new();
        let mut patterns = Vec::new();
        if let (Some(provider), Some(fingerprint)) = (provider, fingerprint) {
            // One key's key-wide marks have known names: only its models need a scan.
            names.push(self.name("disabled", provider, fingerprint, None));
            names.push(self.name("cooling", provider, fingerprint, None));
        } else {
            let provider = provider.map_or_else(|| "*".to_owned(), escape);
            let fingerprint = fingerprint.map_or_else(|| "*".to_owned(), escape);
            patterns.push(format!("{}:disabled:{provider}:{fingerprint}", self.prefix));
            patterns.push(format!("{}:cooling:{provider}:{fingerprint}", self.prefix));
        }
        let provider = provider.map_or_else(|| "*".to_owned(), escape);
        let fingerprint = fingerprint.map_or_else(|| "*".to_owned(), escape);
        patterns.push(format!(
            "{}:cooling:{provider}:{fingerprint}:*",
            self.prefix
        ));
        for pattern in patterns {
            names.extend(scan(connection, &pattern).await?);
        }
        Ok(names)
    }

    fn channel(&self) -> String {
        format!("{}:marks", self.prefix)
    }

    fn name(&self, kind: &str, provider: &str, fingerprint: &str, model: Option<&str>) -> String {
        let mut name = format!(
            "{}:{kind}:{}:{}",
            self.prefix,
            escape(provider),
            escape(fingerprint)
        );
        if let Some(model) = model {
            name.push(':');
            name.push_str(&escape(model));
        }
        name
    }

    fn parse_name(&self, name: &str) -> Option<Name> {
        let rest = name.strip_prefix(&self.prefix)?.strip_prefix(':')?;
        let mut parts = rest.split(':');
        let kind = match parts.next()? {
            "key" => Kind::Key,
            "disabled" => Kind::Disabled,
            "cooling" => Kind::Cooling,
            _ => return None,
        };
        let provider = unescape(parts.next()?)?;
        let fingerprint = unescape(parts.next()?)?;
        let model = match parts.next() {
            Some(model) if kind == Kind::Cooling => Some(unescape(model)?),
            Some(_) => return None,
            None => None,
        };
        parts.next().is_none().then_some(Name {
            kind,
            provider,
            fingerprint,
            model,
        })
    }

    /// A connection that hears every other process's changes.
    pub async fn subscribe(&self) -> Result<PubSub, HealthError> {
        let subscribing = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(self.channel()).await?;
            Ok::<_, RedisError>(pubsub)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT + RESPONSE_TIMEOUT, subscribing).await {
            Ok(result) => result.map_err(|source| self.error(source)),
            Err(_) => Err(self.error(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer in time",
            )))),
        }
    }

    /// Another process's changes in a message; `None` for this process's own, or a message
    /// that is not an announcement.
    pub fn decode(&self, payload: &[u8]) -> Option<Vec<SharedChange>> {
        let announcement: Announcement = serde_json::from_slice(payload).ok()?;
        (announcement.from != self.origin).then_some(announcement.changes)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Key,
    Disabled,
    Cooling,
}

struct Name {
    kind: Kind,
    provider: String,
    fingerprint: String,
    model: Option<String>,
}

fn escape(text: &str) -> String {
    utf8_percent_encode(text, ESCAPED).to_string()
}

fn unescape(text: &str) -> Option<String> {
    percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|text| text.into_owned())
}

fn record_of<'a>(state: &'a mut StateFile, name: &Name) -> &'a mut KeyRecord {
    state
        .providers
        .entry(name.provider.clone())
        .or_default()
        .entry(name.fingerprint.clone())
        .or_insert_with(|| KeyRecord {
            hint: String::new(),
            state: RecordedState::Available,
            cooling: BTreeMap::new(),
            last_status: None,
            last_used: None,
        })
}

/// Runs `pipe`; Redis refuses an empty one, which answers nothing.
/// Entries a load could not read, said once per load.
#[derive(Default)]
struct Skipped {
    count: usize,
    first: Option<(String, String)>,
}

impl Skipped {
    /// The entries whose read succeeded, paired with their values; the others counted.
    fn readable<'a, T>(
        &mut self,
        entries: &'a [(String, Name)],
        values: Vec<RedisResult<T>>,
    ) -> Vec<(&'a (String, Name), T)> {
        let mut readable = Vec::with_capacity(values.len());
        for (entry, value) in entries.iter().zip(values) {
            match value {
                Ok(value) => readable.push((entry, value)),
                Err(error) => {
                    self.count += 1;
                    self.first
                        .get_or_insert_with(|| (entry.0.clone(), error.to_string()));
                }
            }
        }
        readable
    }

    fn warn(&self) {
        if let Some((name, error)) = &self.first {
            tracing::warn!(
                "skipped {} unreadable Redis entr{} (first: {}: {})",
                self.count,
                if self.count == 1 { "y" } else { "ies" },
                name.escape_debug(),
                error.escape_debug()
            );
        }
    }
}

async fn query<T: redis::FromRedisValue + Default>(
    pipe: redis::Pipeline,
    connection: &mut ConnectionManager,
) -> Result<T, RedisError> {
    if pipe.is_empty() {
        return Ok(T::default());
    }
    pipe.query_async(connection).await
}

/// Every key name matching `pattern`.
async fn scan(
    connection: &mut ConnectionManager,
    pattern: &str,
) -> Result<Vec<String>, RedisError> {
    let mut names = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_BATCH)
            .query_async(connection)
            .await?;
        names.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    names.sort();
    names.dedup();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> RedisHealth {
        let url = RedisUrl::parse("redis://127.0.0.1:1/0").unwrap();
        RedisHealth::new(&url, "fleet:a").unwrap()
    }

    #[test]
    fn names_round_trip_whatever_the_provider_and_model_hold() {
        let health = health();
        let name = health.name(
            "cooling",
            "my:prov*",
            "0123456789abcdef",
            Some("ft:gpt-4o:org [x]"),
        );
        assert_eq!(
            name,
            "fleet:a:cooling:my%3Aprov%2A:0123456789abcdef:ft%3Agpt-4o%3Aorg%20%5Bx%5D"
        );
        let parsed = health.parse_name(&name).unwrap();
        assert_eq!(parsed.kind, Kind::Cooling);
        assert_eq!(parsed.provider, "my:prov*");
        assert_eq!(parsed.model.as_deref(), Some("ft:gpt-4o:org [x]"));
        let key_wide = health
            .parse_name("fleet:a:disabled:openai:0123456789abcdef")
            .unwrap();
        assert_eq!((key_wide.kind, key_wide.model), (Kind::Disabled, None));
        assert!(
            health
                .parse_name("fleet:a:disabled:openai:f:extra")
                .is_none()
        );
        assert!(health.parse_name("fleet:b:key:openai:f").is_none());
        assert!(health.parse_name("fleet:a:other:openai:f").is_none());
    }

    #[test]
    fn own_announcements_are_skipped() {
        let health = health();
        let change = SharedChange::Cleared {
            provider: None,
            fingerprint: None,
        };
        let own = serde_json::to_vec(&Announcement {
            from: health.origin.clone(),
            changes: vec![change.clone()],
        })
        .unwrap();
        assert_eq!(health.decode(&own), None);
        let other = serde_json::to_vec(&Announcement {
            from: "another".into(),
            changes: vec![change.clone()],
        })
        .unwrap();
        assert_eq!(health.decode(&other), Some(vec![change]));
        assert_eq!(health.decode(b"not json"), None);
    }

    #[test]
    fn the_password_stays_out_of_descriptions() {
        let url = RedisUrl::parse("redis://:hunter2secret@127.0.0.1:6379/0").unwrap();
        let health = RedisHealth::new(&url, "aibridge").unwrap();
        assert_eq!(
            health.describe(),
            "redis redis://:***@127.0.0.1:6379/0 (prefix aibridge)"
        );
    }
}
