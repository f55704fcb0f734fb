//! Cooldowns of one key for single models. Providers rate-limit each model on its own
//! (OpenAI per model, Anthropic per model class), so a 429 for one model leaves the key
//! serving the others.
//!
//! Each key's list is an immutable vector behind an `ArcSwapOption`: a walk reads it without
//! a lock, and a mark replaces it whole (read-copy-update). Lists stay short: expired entries
//! are dropped on every mark, and at most `limit` models are kept, the least recently marked
//! dropped first, so a caller inventing model names cannot grow memory without bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;

/// One model's cooldown on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCooldown {
    pub model: Arc<str>,
    /// Unix milliseconds.
    pub until_ms: u64,
}

/// What a model mark did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ModelMarked {
    /// The model's deadline after the mark.
    pub until_ms: u64,
    /// Whether the model was not cooling before (a change worth a log line).
    pub started: bool,
}

#[derive(Debug, Default)]
pub(super) struct ModelMarks {
    /// Least recently marked first.
    list: ArcSwapOption<Vec<ModelCooldown>>,
    /// The latest deadline ever put in `list` since it was last cleared (0 = none): once it
    /// has passed, nothing in the list is live and a walk need not read it.
    latest_ms: AtomicU64,
}

impl ModelMarks {
    /// Whether `model` is cooling on this key at `now_ms`.
    pub fn is_cooling(&self, model: &str, now_ms: u64) -> bool {
        self.latest_ms.load(Ordering::Acquire) > now_ms && self.until(model, now_ms).is_some()
    }

    /// Whether any model is cooling, without reading the list in the common case.
    pub fn any_cooling(&self, now_ms: u64) -> bool {
        self.latest_ms.load(Ordering::Acquire) > now_ms && !self.live(now_ms).is_empty()
    }

    /// The live deadline of `model`, if it is cooling.
    pub fn until(&self, model: &str, now_ms: u64) -> Option<u64> {
        let list = self.list.load();
        list.as_ref()?
            .iter()
            .find(|entry| &*entry.model == model && entry.until_ms > now_ms)
            .map(|entry| entry.until_ms)
    }

    /// Every model cooling at `now_ms`, least recently marked first.
    pub fn live(&self, now_ms: u64) -> Vec<ModelCooldown> {
        let list = self.list.load();
        list.as_ref().map_or_else(Vec::new, |list| {
            list.iter()
                .filter(|entry| entry.until_ms > now_ms)
                .cloned()
                .collect()
        })
    }

    /// Cools `model` until `until_ms`; a cooldown only ever extends. Keeps at most `limit`
    /// models.
    pub fn mark(&self, model: &str, until_ms: u64, now_ms: u64, limit: usize) -> ModelMarked {
        let mut marked = ModelMarked {
            until_ms,
            started: true,
        };
        self.list.rcu(|current| {
            let mut next: Vec<ModelCooldown> = current
                .as_deref()
                .map(|list| {
                    list.iter()
                        .filter(|entry| entry.until_ms > now_ms)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let existing = next.iter().position(|entry| &*entry.model == model);
            let (name, deadline) = match existing {
                Some(position) => {
                    let entry = next.remove(position);
                    (entry.model, entry.until_ms.max(until_ms))
                }
                None => (Arc::from(model), until_ms),
            };
            marked = ModelMarked {
                until_ms: deadline,
                started: existing.is_none(),
            };
            next.push(ModelCooldown {
                model: name,
                until_ms: deadline,
            });
            let excess = next.len().saturating_sub(limit.max(1));
            next.drain(..excess);
            Some(Arc::new(next))
        });
        self.latest_ms.fetch_max(marked.until_ms, Ordering::AcqRel);
        marked
    }

    /// Drops every model's cooldown; returns whether any was live.
    pub fn clear(&self, now_ms: u64) -> bool {
        let previous = self.list.swap(None);
        self.latest_ms.store(0, Ordering::Release);
        previous.is_some_and(|list| list.iter().any(|entry| entry.until_ms > now_ms))
    }

    /// Takes over another key's cooldowns (after a config reload).
    pub fn copy_from(&self, other: &ModelMarks) {
        self.list.store(other.list.load_full());
        self.latest_ms
            .store(other.latest_ms.load(Ordering::Acquire), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;

    #[test]
    fn a_model_cools_alone_and_expires() {
        let marks = ModelMarks::default();
        assert!(marks.mark("opus", NOW + 5_000, NOW, 64).started);
        assert!(marks.is_cooling("opus", NOW));
        assert!(!marks.is_cooling("haiku", NOW));
        assert!(!marks.is_cooling("opus", NOW + 5_000));
        assert!(!marks.any_cooling(NOW + 5_000));
    }

    #[test]
    fn a_cooldown_only_extends() {
        let marks = ModelMarks::default();
        marks.mark("opus", NOW + 5_000, NOW, 64);
        let shorter = marks.mark("opus", NOW + 1_000, NOW, 64);
        assert_eq!(
            shorter,
            ModelMarked {
                until_ms: NOW + 5_000,
                started: false
            }
        );
        assert_eq!(
            marks.mark("opus", NOW + 9_000, NOW, 64).until_ms,
            NOW + 9_000
        );
        assert_eq!(marks.until("opus", NOW), Some(NOW + 9_000));
    }

    #[test]
    fn memory_stays_bounded() {
        let marks = ModelMarks::default();
        for index in 0..1_000 {
            marks.mark(&format!("model-{index}"), NOW + 60_000, NOW, 64);
        }
        let live = marks.live(NOW);
        assert_eq!(live.len(), 64);
        assert_eq!(&*live[0].model, "model-936", "the oldest are dropped first");
        // Re-marking moves a model to the back, so it is dropped last.
        marks.mark("model-936", NOW + 60_000, NOW, 64);
        marks.mark("new", NOW + 60_000, NOW, 64);
        assert!(marks.is_cooling("model-936", NOW));
        assert!(!marks.is_cooling("model-937", NOW));
    }

    #[test]
    fn expired_entries_are_dropped_on_the_next_mark() {
        let marks = ModelMarks::default();
        marks.mark("old", NOW + 1_000, NOW, 64);
        marks.mark("new", NOW + 90_000, NOW + 2_000, 64);
        let live = marks.live(NOW);
        assert_eq!(live.len(), 1, "{live:?}");
        assert_eq!(&*live[0].model, "new");
    }

    #[test]
    fn clear_reports_live_marks() {
        let marks = ModelMarks::default();
        assert!(!marks.clear(NOW));
        marks.mark("opus", NOW + 1_000, NOW, 64);
        assert!(!marks.clear(NOW + 2_000));
        marks.mark("opus", NOW + 1_000, NOW, 64);
        assert!(marks.clear(NOW));
        assert!(!marks.is_cooling("opus", NOW));
    }
}
