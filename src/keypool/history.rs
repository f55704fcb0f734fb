//! Each key's last quarter hour, a minute at a time: answers, 429s and other failures, for
//! the live page's charts.
//!
//! Counting is two relaxed atomic operations per attempt, with no lock: the attempt that
//! first reaches a new minute clears that minute's slot. An attempt racing that turn may go
//! uncounted; a chart of a quarter hour does not need it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// How many minutes a history shows, the current one last.
pub const MINUTES: usize = 15;

/// One more slot than minutes shown, so the minute being cleared is never one on show.
const SLOTS: usize = MINUTES + 1;

const MINUTE_MS: u64 = 60_000;

/// One minute of one key's attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteCounts {
    /// Answers in 2xx.
    pub answered: u32,
    /// 429s.
    pub rate_limited: u32,
    /// Every other answer, and attempts with no answer.
    pub failed: u32,
}

#[derive(Debug, Default)]
pub struct History {
    slots: [Slot; SLOTS],
}

#[derive(Debug, Default)]
struct Slot {
    /// The minute counted here, plus one (0: none yet).
    minute: AtomicU64,
    answered: AtomicU32,
    rate_limited: AtomicU32,
    failed: AtomicU32,
}

impl History {
    /// Counts one attempt at `now_ms`; `status` is `None` when there was no answer.
    pub fn record(&self, now_ms: u64, status: Option<u16>) {
        let minute = now_ms / MINUTE_MS + 1;
        let slot = &self.slots[slot_of(minute)];
        if slot.minute.load(Ordering::Relaxed) != minute
            && slot.minute.swap(minute, Ordering::Relaxed) != minute
        {
            for count in [&slot.answered, &slot.rate_limited, &slot.failed] {
                count.store(0, Ordering::Relaxed);
            }
        }
        let count = match status {
            Some(200..=299) => &slot.answered,
            Some(429) => &slot.rate_limited,
            _ => &slot.failed,
        };
        count.fetch_add(1, Ordering::Relaxed);
    }

    /// The last [`MINUTES`] minutes up to `now_ms`, oldest first.
    pub fn last_minutes(&self, now_ms: u64) -> [MinuteCounts; MINUTES] {
        let current = now_ms / MINUTE_MS + 1;
        std::array::from_fn(|position| {
            let minute = current + 1 + position as u64 - MINUTES as u64;
            let slot = &self.slots[slot_of(minute)];
            if slot.minute.load(Ordering::Relaxed) != minute {
                return MinuteCounts::default();
            }
            MinuteCounts {
                answered: slot.answered.load(Ordering::Relaxed),
                rate_limited: slot.rate_limited.load(Ordering::Relaxed),
                failed: slot.failed.load(Ordering::Relaxed),
            }
        })
    }
}

impl History {
    /// Takes over another history's counts (the same key, after a configuration reload).
    pub fn copy_from(&self, other: &History) {
        for (slot, old) in self.slots.iter().zip(&other.slots) {
            for (new, old) in [
                (&slot.answered, &old.answered),
                (&slot.rate_limited, &old.rate_limited),
                (&slot.failed, &old.failed),
            ] {
                new.store(old.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            slot.minute
                .store(old.minute.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

fn slot_of(minute: u64) -> usize {
    (minute % SLOTS as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: u64 = 1_800_000_000_000;

    #[test]
    fn counts_land_in_their_minute() {
        let history = History::default();
        history.record(START, Some(200));
        history.record(START + 1_000, Some(429));
        history.record(START + MINUTE_MS, Some(500));
        history.record(START + MINUTE_MS, None);
        let minutes = history.last_minutes(START + MINUTE_MS);
        assert_eq!(
            minutes[MINUTES - 2],
            MinuteCounts {
                answered: 1,
                rate_limited: 1,
                failed: 0
            }
        );
        assert_eq!(minutes[MINUTES - 1].failed, 2);
        assert!(
            minutes[..MINUTES - 2]
                .iter()
                .all(|m| *m == MinuteCounts::default())
        );
    }

    #[test]
    fn old_minutes_scroll_off_and_their_slots_start_again() {
        let history = History::default();
        history.record(START, Some(200));
        let later = START + MINUTES as u64 * MINUTE_MS;
        assert_eq!(history.last_minutes(later - MINUTE_MS)[0].answered, 1);
        assert!(
            history
                .last_minutes(later)
                .iter()
                .all(|m| *m == MinuteCounts::default()),
            "a minute older than the window is not shown"
        );
        // The slot comes round again a window later, and starts from zero.
        let reused = START + SLOTS as u64 * MINUTE_MS;
        history.record(reused, Some(429));
        let minutes = history.last_minutes(reused);
        assert_eq!(
            minutes[MINUTES - 1],
            MinuteCounts {
                answered: 0,
                rate_limited: 1,
                failed: 0
            }
        );
    }
}
