//! Cooldowns of one key for single models. Providers rate-limit each model on its own
//! (OpenAI per model, Anthropic per model class), so a 429 for one model leaves the key
//! serving the others.
//!
//! Each key's list is an immutable vector of entries behind an `ArcSwapOption`, and each
//! entry's deadline is an atomic: a walk reads both without a lock, a mark that extends a
//! live cooldown is one compare-and-swap on its entry, and only a model that is not cooling
//! yet replaces the list (read-copy-update). Lists stay short: expired entries are dropped
//! whenever the list is replaced, and at most `limit` models are kept, the oldest dropped
//! first, so a caller inventing model names cannot grow memory without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use arc_swap::ArcSwapOption;

use super::StateReason;

/// One model's cooldown on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCooldown {
    pub model: Arc<str>,
    /// Unix milliseconds.
    pub until_ms: u64,
    /// Why: a rate limit, or (Bedrock) no access to the model or its quota spent.
    pub reason: StateReason,
}

/// What a model mark did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ModelMarked {
    /// The model's deadline after the mark.
    pub until_ms: u64,
    /// Whether the model was not cooling before (a change worth a log line).
    pub started: bool,
}

#[derive(Debug)]
struct Entry {
    model: Arc<str>,
    until_ms: AtomicU64,
    /// A [`StateReason`] code: the reason of the mark that set the deadline.
    reason: AtomicU8,
}

impl Entry {
    fn reason(&self) -> StateReason {
        StateReason::from_code(self.reason.load(Ordering::Relaxed))
    }

    /// Takes `reason` when the mark that gave it set the deadline (an informational label,
    /// so a race with another mark may leave either).
    fn note_reason(&self, marked: ModelMarked, until_ms: u64, reason: StateReason) {
        if marked.until_ms == until_ms {
            self.reason.store(reason.code(), Ordering::Relaxed);
        }
    }

    fn live_until(&self, now_ms: u64) -> Option<u64> {
        let until_ms = self.until_ms.load(Ordering::Acquire);
        (until_ms > now_ms).then_some(until_ms)
    }
}

type Entries = Vec<Arc<Entry>>;

#[derive(Debug, Default)]
pub(super) struct ModelMarks {
    /// Oldest first.
    list: ArcSwapOption<Entries>,
    /// The latest deadline ever set here since the last clear (0 = none): once it has
    /// passed, nothing in the list is live and a walk need not read it.
    latest_ms: AtomicU64,
}

impl ModelMarks {
    /// Whether `model` is cooling on this key at `now_ms`.
    pub fn is_cooling(&self, model: &str, now_ms: u64) -> bool {
        self.latest_ms.load(Ordering::Acquire) > now_ms && self.until(model, now_ms).is_some()
    }

    /// Whether some model may be cooling: one load, and `false` for a key that never had a
    /// model's cooldown or whose cooldowns have all ended.
    pub fn may_be_cooling(&self, now_ms: u64) -> bool {
        self.latest_ms.load(Ordering::Acquire) > now_ms
    }

    /// Whether any model is cooling, without reading the list in the common case.
    pub fn any_cooling(&self, now_ms: u64) -> bool {
        self.latest_ms.load(Ordering::Acquire) > now_ms && !self.live(now_ms).is_empty()
    }

    /// The live deadline of `model`, if it is cooling.
    pub fn until(&self, model: &str, now_ms: u64) -> Option<u64> {
        self.with_entry(model, |entry| entry.live_until(now_ms))?
    }

    /// Runs `read` on `model`'s entry, read in place: no reference count is touched.
    fn with_entry<T>(&self, model: &str, read: impl FnOnce(&Entry) -> T) -> Option<T> {
        let list = self.list.load();
        list.as_ref()?
            .iter()
            .find(|entry| &*entry.model == model)
            .map(|entry| read(entry))
    }

    /// Every model cooling at `now_ms`, oldest first.
    pub fn live(&self, now_ms: u64) -> Vec<ModelCooldown> {
        let list = self.list.load();
        let Some(list) = list.as_ref() else {
            return Vec::new();
        };
        list.iter()
            .filter_map(|entry| {
                Some(ModelCooldown {
                    model: entry.model.clone(),
                    until_ms: entry.live_until(now_ms)?,
                    reason: entry.reason(),
                })
            })
            .collect()
    }

    /// Cools `model` until `until_ms` for `reason`; a cooldown only ever extends. Keeps at
    /// most `limit` models.
    pub fn mark(
        &self,
        model: &str,
        until_ms: u64,
        now_ms: u64,
        limit: usize,
        reason: StateReason,
    ) -> ModelMarked {
        let marked = self
            .extend_live(model, until_ms, now_ms, reason)
            .unwrap_or_else(|| self.insert(model, until_ms, now_ms, limit, reason));
        self.latest_ms.fetch_max(marked.until_ms, Ordering::AcqRel);
        marked
    }

    /// Extends a cooldown that is still running, in place; `None` when the model has none.
    fn extend_live(
        &self,
        model: &str,
        until_ms: u64,
        now_ms: u64,
        reason: StateReason,
    ) -> Option<ModelMarked> {
        self.with_entry(model, |entry| {
            let marked = extend(entry, until_ms, now_ms)?;
            entry.note_reason(marked, until_ms, reason);
            Some(marked)
        })?
    }

    /// Starts a cooldown for a model that has none running: a new list, without expired
    /// entries and within `limit`.
    fn insert(
        &self,
        model: &str,
        until_ms: u64,
        now_ms: u64,
        limit: usize,
        reason: StateReason,
    ) -> ModelMarked {
        let mut marked = ModelMarked {
            until_ms,
            started: true,
        };
        self.list.rcu(|current| {
            let mut next: Entries = current
                .as_deref()
                .map(|list| {
                    list.iter()
                        .filter(|entry| entry.live_until(now_ms).is_some())
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            // Another mark may have started this model's cooldown meanwhile.
            if let Some(entry) = next.iter().find(|entry| &*entry.model == model) {
                let before = entry.until_ms.fetch_max(until_ms, Ordering::AcqRel);
                marked = ModelMarked {
                    until_ms: before.max(until_ms),
                    started: false,
                };
                entry.note_reason(marked, until_ms, reason);
            } else {
                marked = ModelMarked {
                    until_ms,
                    started: true,
                };
                next.push(Arc::new(Entry {
                    model: Arc::from(model),
                    until_ms: AtomicU64::new(until_ms),
                    reason: AtomicU8::new(reason.code()),
                }));
            }
            let excess = next.len().saturating_sub(limit.max(1));
            next.drain(..excess);
            Some(Arc::new(next))
        });
        marked
    }

    /// Drops every model's cooldown; returns whether any was live.
    pub fn clear(&self, now_ms: u64) -> bool {
        let previous = self.list.swap(None);
        self.latest_ms.store(0, Ordering::Release);
        previous.is_some_and(|list| list.iter().any(|entry| entry.live_until(now_ms).is_some()))
    }

    /// Takes over another key's cooldowns (after a config reload).
    pub fn copy_from(&self, other: &ModelMarks) {
        self.list.store(other.list.load_full());
        self.latest_ms
            .store(other.latest_ms.load(Ordering::Acquire), Ordering::Release);
    }
}

/// Extends a running cooldown in place with one compare-and-swap; `None` when it has ended.
fn extend(entry: &Entry, until_ms: u64, now_ms: u64) -> Option<ModelMarked> {
    let mut current = entry.until_ms.load(Ordering::Acquire);
    loop {
        if current <= now_ms {
            return None;
        }
        if current >= until_ms {
            return Some(ModelMarked {
                until_ms: current,
                started: false,
            });
        }
        match entry.until_ms.compare_exchange_weak(
            current,
            until_ms,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                return Some(ModelMarked {
                    until_ms,
                    started: false,
                });
            }
            Err(seen) => current = seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;

    #[test]
    fn a_model_cools_alone_and_expires() {
        let marks = ModelMarks::default();
        assert!(
            marks
                .mark("opus", NOW + 5_000, NOW, 64, StateReason::RateLimited)
                .started
        );
        assert!(marks.is_cooling("opus", NOW));
        assert!(!marks.is_cooling("haiku", NOW));
        assert!(!marks.is_cooling("opus", NOW + 5_000));
        assert!(!marks.any_cooling(NOW + 5_000));
    }

    #[test]
    fn a_cooldown_only_extends() {
        let marks = ModelMarks::default();
        marks.mark("opus", NOW + 5_000, NOW, 64, StateReason::RateLimited);
        let shorter = marks.mark("opus", NOW + 1_000, NOW, 64, StateReason::RateLimited);
        assert_eq!(
            shorter,
            ModelMarked {
                until_ms: NOW + 5_000,
                started: false
            }
        );
        assert_eq!(
            marks
                .mark("opus", NOW + 9_000, NOW, 64, StateReason::RateLimited)
                .until_ms,
            NOW + 9_000
        );
        assert_eq!(marks.until("opus", NOW), Some(NOW + 9_000));
    }

    #[test]
    fn memory_stays_bounded() {
        let marks = ModelMarks::default();
        for index in 0..1_000 {
            marks.mark(
                &format!("model-{index}"),
                NOW + 60_000,
                NOW,
                64,
                StateReason::RateLimited,
            );
        }
        let live = marks.live(NOW);
        assert_eq!(live.len(), 64);
        assert_eq!(&*live[0].model, "model-936", "the oldest are dropped first");
        // Extending a running cooldown keeps the list as it is.
        marks.mark("model-936", NOW + 90_000, NOW, 64, StateReason::RateLimited);
        assert_eq!(marks.until("model-936", NOW), Some(NOW + 90_000));
        assert_eq!(marks.live(NOW).len(), 64);
    }

    #[test]
    fn expired_entries_are_dropped_on_the_next_mark() {
        let marks = ModelMarks::default();
        marks.mark("old", NOW + 1_000, NOW, 64, StateReason::RateLimited);
        marks.mark(
            "new",
            NOW + 90_000,
            NOW + 2_000,
            64,
            StateReason::RateLimited,
        );
        let live = marks.live(NOW);
        assert_eq!(live.len(), 1, "{live:?}");
        assert_eq!(&*live[0].model, "new");
    }

    #[test]
    fn an_ended_cooldown_starts_again_as_a_change() {
        let marks = ModelMarks::default();
        marks.mark("opus", NOW + 1_000, NOW, 64, StateReason::RateLimited);
        let again = marks.mark(
            "opus",
            NOW + 9_000,
            NOW + 2_000,
            64,
            StateReason::RateLimited,
        );
        assert!(again.started);
        assert_eq!(marks.live(NOW + 2_000).len(), 1);
    }

    #[test]
    fn concurrent_marks_keep_the_latest_deadline_and_every_model() {
        let marks = ModelMarks::default();
        std::thread::scope(|scope| {
            for thread in 0..4u64 {
                let marks = &marks;
                scope.spawn(move || {
                    for round in 0..500 {
                        let model = format!("model-{}", round % 8);
                        marks.mark(
                            &model,
                            NOW + 1_000 + thread * 1_000 + round,
                            NOW,
                            64,
                            StateReason::RateLimited,
                        );
                    }
                });
            }
        });
        let live = marks.live(NOW);
        assert_eq!(live.len(), 8, "{live:?}");
        assert_eq!(marks.until("model-3", NOW), Some(NOW + 4_000 + 499));
    }

    #[test]
    fn clear_reports_live_marks() {
        let marks = ModelMarks::default();
        assert!(!marks.clear(NOW));
        marks.mark("opus", NOW + 1_000, NOW, 64, StateReason::RateLimited);
        assert!(!marks.clear(NOW + 2_000));
        marks.mark("opus", NOW + 1_000, NOW, 64, StateReason::RateLimited);
        assert!(marks.clear(NOW));
        assert!(!marks.is_cooling("opus", NOW));
    }
}
