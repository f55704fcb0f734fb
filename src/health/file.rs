//! The state file: key marks that outlive the process, so the next `send` in a CI job skips a
//! key the last one found cooling or dead, and `serve` and `send` on one machine see each
//! other's marks.
//!
//! Keys are stored by fingerprint, never by value. Every change is a locked
//! read-merge-write with an atomic rename, so concurrent processes lose no marks and a crash
//! never leaves half a file.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{ClearedKey, HealthChange, Observation};
use crate::keypool::{
    DisableReason, KeyState, Pool, StateKind, StateReason, from_unix_ms, to_unix_ms,
};

const VERSION: u32 = 1;

/// The largest state file read: far past what the caps on keys and models let one grow to
/// in practice, and small enough that a device or a runaway file cannot fill memory.
const MAX_STATE_FILE: u64 = 64 * 1024 * 1024;

/// The whole file: provider name -> key fingerprint -> record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    pub version: u32,
    #[serde(default)]
    pub providers: BTreeMap<String, BTreeMap<String, KeyRecord>>,
}

impl Default for StateFile {
    fn default() -> Self {
        Self {
            version: VERSION,
            providers: BTreeMap::new(),
        }
    }
}

/// What is known of one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The masked hint, so a person reading the file can tell keys apart.
    pub hint: String,
    /// The key-wide state.
    #[serde(flatten)]
    pub state: RecordedState,
    /// Models the key is cooling for on their own (absent in files from before per-model
    /// health, which read as none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cooling: BTreeMap<String, ModelRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub last_used: Option<SystemTime>,
}

/// One model's cooldown on one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRecord {
    #[serde(with = "humantime_serde")]
    pub until: SystemTime,
    /// Why the model is out; a rate limit when absent.
    #[serde(default, skip_serializing_if = "StateReason::is_rate_limited")]
    pub reason: StateReason,
}

/// How many models' cooldowns one key's record keeps at most, the soonest to end dropped
/// first: model names come from callers, and the file must not grow without bound.
const MAX_MODELS_PER_RECORD: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RecordedState {
    Available,
    Cooling {
        reason: CoolingReason,
        #[serde(with = "humantime_serde")]
        until: SystemTime,
    },
    Disabled {
        reason: DisableReason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoolingReason {
    RateLimited,
}

impl From<KeyState> for RecordedState {
    fn from(state: KeyState) -> Self {
        match state {
            KeyState::Available => Self::Available,
            KeyState::Cooling { until_ms } => Self::Cooling {
                reason: CoolingReason::RateLimited,
                until: from_unix_ms(until_ms),
            },
            KeyState::Disabled(reason) => Self::Disabled { reason },
        }
    }
}

impl From<RecordedState> for KeyState {
    fn from(state: RecordedState) -> Self {
        match state {
            RecordedState::Available => Self::Available,
            RecordedState::Cooling { until, .. } => Self::Cooling {
                until_ms: to_unix_ms(until),
            },
            RecordedState::Disabled { reason } => Self::Disabled(reason),
        }
    }
}

impl StateFile {
    /// Records `changes` in order. Returns the keys a clear found marked.
    pub fn apply(&mut self, changes: &[HealthChange], now: SystemTime) -> Vec<ClearedKey> {
        let mut cleared = Vec::new();
        for change in changes {
            match change {
                HealthChange::Observed(seen) => self.observe(seen),
                HealthChange::Cleared {
                    provider,
                    fingerprint,
                } => cleared.extend(self.clear(provider.as_deref(), fingerprint.as_deref(), now)),
                // Sessions are shared through Redis only: `send` and probes have none.
                HealthChange::Assigned { .. } => {}
            }
        }
        cleared
    }

    /// Merges one attempt: a mark never weakens what another process recorded. Every
    /// cooldown of the provider is capped at its `max_cooldown` from now on the way, so no
    /// write carries a far deadline forward.
    pub fn observe(&mut self, seen: &Observation) {
        let keys = self.providers.entry(seen.provider.clone()).or_default();
        let cap = seen.cap();
        for record in keys.values_mut() {
            record.cap_deadlines(cap);
        }
        let record = keys
            .entry(seen.fingerprint.clone())
            .or_insert_with(|| KeyRecord {
                hint: seen.hint.clone(),
                state: RecordedState::Available,
                cooling: BTreeMap::new(),
                last_status: None,
                last_used: None,
            });
        record.hint.clone_from(&seen.hint);
        record.last_status = seen.status;
        record.last_used = Some(seen.at);
        record.cooling.retain(|_, cooling| cooling.until > seen.at);
        match (seen.mark, &seen.model) {
            (Some(KeyState::Cooling { until_ms }), Some(model)) => {
                let until = from_unix_ms(until_ms);
                let entry = record.cooling.entry(model.clone()).or_insert(ModelRecord {
                    until,
                    reason: seen.model_reason,
                });
                if until >= entry.until {
                    entry.reason = seen.model_reason;
                }
                entry.until = entry.until.max(until).min(cap);
                record.drop_excess_models();
            }
            (Some(mark), _) => {
                let merged = match KeyState::from(record.state).stronger(mark) {
                    KeyState::Cooling { until_ms } => KeyState::Cooling {
                        until_ms: until_ms.min(to_unix_ms(cap)),
                    },
                    other => other,
                };
                record.state = merged.into();
            }
            (None, _) => {}
        }
    }

    /// Clears marks, key-wide and per model: of every provider, one provider, or one key.
    /// Returns the keys that were marked at `now`.
    pub fn clear(
        &mut self,
        provider: Option<&str>,
        fingerprint: Option<&str>,
        now: SystemTime,
    ) -> Vec<ClearedKey> {
        let mut cleared = Vec::new();
        for (name, keys) in &mut self.providers {
            if provider.is_some_and(|wanted| wanted != name) {
                continue;
            }
            for (print, record) in keys.iter_mut() {
                if fingerprint.is_some_and(|wanted| wanted != print) {
                    continue;
                }
                let key_wide = KeyState::from(record.state).settle(to_unix_ms(now));
                let models_cooling = record.cooling.values().any(|model| model.until > now);
                record.state = RecordedState::Available;
                record.cooling.clear();
                let was = match key_wide {
                    KeyState::Available if models_cooling => StateKind::Cooling,
                    KeyState::Available => continue,
                    state => state.kind(),
                };
                cleared.push(ClearedKey {
                    provider: name.clone(),
                    key: record.hint.clone(),
                    fingerprint: print.clone(),
                    was,
                });
            }
        }
        cleared
    }

    /// Merges what is recorded about a pool's keys into the pool: a mark the pool already
    /// holds is kept when it is the stronger.
    pub fn restore_into(&self, provider: &str, pool: &Pool) {
        let Some(records) = self.providers.get(provider) else {
            return;
        };
        for (fingerprint, record) in records {
            if let Some(index) = pool.index_of(fingerprint) {
                pool.merge_shared(index, record.state.into());
                for (model, cooling) in &record.cooling {
                    pool.restore_model(index, model, to_unix_ms(cooling.until), cooling.reason);
                }
                pool.restore_usage(index, record.last_status, record.last_used.map(to_unix_ms));
            }
        }
    }
}

impl KeyRecord {
    fn cap_deadlines(&mut self, cap: SystemTime) {
        if let RecordedState::Cooling { until, .. } = &mut self.state {
            *until = (*until).min(cap);
        }
        for cooling in self.cooling.values_mut() {
            cooling.until = cooling.until.min(cap);
        }
    }

    fn drop_excess_models(&mut self) {
        while self.cooling.len() > MAX_MODELS_PER_RECORD {
            let soonest = self
                .cooling
                .iter()
                .min_by_key(|(_, cooling)| cooling.until)
                .map(|(model, _)| model.clone())
                .expect("more than the limit, so not empty");
            self.cooling.remove(&soonest);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The cause is part of the message, not a source, so a chain prints it once.
    #[error("state file {path}: {reason}")]
    Io { path: PathBuf, reason: io::Error },
}

/// The state file on disk.
#[derive(Debug, Clone)]
pub struct StateStore {
    path: PathBuf,
}

impl StateStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// `<state dir>/aibridge/state.json` (falling back to the local data dir).
    pub fn default_path() -> Option<PathBuf> {
        dirs::state_dir()
            .or_else(dirs::data_local_dir)
            .map(|dir| dir.join("aibridge").join("state.json"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file (an absent file is an empty state).
    pub fn load(&self) -> Result<StateFile, StateError> {
        let _lock = self.lock()?;
        self.read_or_reset()
    }

    /// Applies `change` under the lock: read, change, write atomically. Returns what
    /// `change` returns.
    pub fn update<T>(&self, change: impl FnOnce(&mut StateFile) -> T) -> Result<T, StateError> {
        let _lock = self.lock()?;
        let mut state = self.read_or_reset()?;
        let result = change(&mut state);
        self.write(&state).map_err(|source| self.io_error(source))?;
        Ok(result)
    }

    fn io_error(&self, reason: io::Error) -> StateError {
        StateError::Io {
            path: self.path.clone(),
            reason,
        }
    }

    fn lock(&self) -> Result<File, StateError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        create_private_dir(dir).map_err(|source| self.io_error(source))?;
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        let mut options = private_options();
        options.read(true).write(true).create(true).truncate(false);
        // A link planted in place of the lock file must not make us create or lock its target.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
        let file = options
            .open(lock_path)
            .map_err(|source| self.io_error(source))?;
        file.lock().map_err(|source| self.io_error(source))?;
        Ok(file)
    }

    /// Reads the file; a corrupt one is moved aside with a warning and an empty state returned.
    /// Something that is not a regular file (a FIFO, a device) is an error, and is never
    /// moved or replaced.
    fn read_or_reset(&self) -> Result<StateFile, StateError> {
        let bytes = match crate::files::read_regular(&self.path, MAX_STATE_FILE) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Ok(StateFile::default());
            }
            Err(source) => return Err(self.io_error(source)),
        };
        match serde_json::from_slice::<StateFile>(&bytes) {
            Ok(state) if state.version == VERSION => Ok(state),
            Ok(state) => Err(self.io_error(io::Error::other(format!(
                "written by a newer aibridge (version {}); refusing to overwrite it",
                state.version
            )))),
            Err(error) => {
                let aside = self.aside_path();
                fs::rename(&self.path, &aside).map_err(|source| self.io_error(source))?;
                tracing::warn!(
                    "state file {} is corrupt ({error}); moved it to {} and started afresh",
                    self.path.display(),
                    aside.display()
                );
                Ok(StateFile::default())
            }
        }
    }

    fn aside_path(&self) -> PathBuf {
        let stamp = to_unix_ms(SystemTime::now());
        let mut aside = self.path.clone().into_os_string();
        aside.push(format!(".corrupt-{stamp}"));
        aside.into()
    }

    fn write(&self, state: &StateFile) -> io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        // tempfile creates the file with mode 0600, which the rename keeps.
        let mut temp = tempfile::NamedTempFile::new_in(dir)?;
        serde_json::to_writer_pretty(&mut temp, state)?;
        temp.write_all(b"\n")?;
        temp.as_file().sync_all()?;
        temp.persist(&self.path).map_err(|error| error.error)?;
        Ok(())
    }
}

fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(test)]
mod tests;
