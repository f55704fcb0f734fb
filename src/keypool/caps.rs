//! Per-key caps: requests in flight (`max_concurrency`) and requests per rolling minute
//! (`rpm`). A key at a cap is passed over for new work, without a mark, until a slot frees.
//! Caps are per process.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// A key's caps; `None` = no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyCaps {
    pub max_concurrency: Option<u32>,
    pub rpm: Option<u32>,
}

impl KeyCaps {
    pub fn is_none(&self) -> bool {
        self.max_concurrency.is_none() && self.rpm.is_none()
    }
}

/// How long a request held for a concurrency slot waits before it looks again: slots free
/// when answers end, which a walk does not hear of.
pub const CONCURRENCY_RETRY: Duration = Duration::from_millis(50);

const MINUTE_MS: u64 = 60_000;

/// A capped key's counters.
#[derive(Debug)]
pub(super) struct CapState {
    caps: KeyCaps,
    in_flight: AtomicU32,
    /// When each request of the last minute started (Unix ms), oldest first.
    recent: Mutex<VecDeque<u64>>,
}

/// A slot of a capped key, held until the answer ends; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    state: Arc<CapState>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.state.caps.max_concurrency.is_some() {
            self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl CapState {
    pub(super) fn new(caps: KeyCaps) -> Arc<Self> {
        Arc::new(Self {
            caps,
            in_flight: AtomicU32::new(0),
            recent: Mutex::new(VecDeque::new()),
        })
    }

    #[cfg(test)]
    fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// A slot at `now_ms`, or how long until one may free.
    pub(super) fn try_acquire(self: &Arc<Self>, now_ms: u64) -> Result<Permit, Duration> {
        if let Some(limit) = self.caps.max_concurrency {
            let taken = self
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| {
                    (count < limit).then_some(count + 1)
                });
            if taken.is_err() {
                return Err(CONCURRENCY_RETRY);
            }
        }
        let permit = Permit {
            state: self.clone(),
        };
        if let Some(rpm) = self.caps.rpm {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            while recent
                .front()
                .is_some_and(|started| started + MINUTE_MS <= now_ms)
            {
                recent.pop_front();
            }
            if recent.len() >= rpm as usize {
                let oldest = recent.front().copied().unwrap_or(now_ms);
                // Dropping the permit gives the concurrency slot back.
                return Err(Duration::from_millis(oldest + MINUTE_MS - now_ms));
            }
            recent.push_back(now_ms);
        }
        Ok(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_slots_free_when_permits_drop() {
        let state = CapState::new(KeyCaps {
            max_concurrency: Some(2),
            rpm: None,
        });
        let first = state.try_acquire(0).unwrap();
        let _second = state.try_acquire(0).unwrap();
        assert_eq!(state.try_acquire(0).unwrap_err(), CONCURRENCY_RETRY);
        drop(first);
        assert!(state.try_acquire(0).is_ok());
    }

    #[test]
    fn rpm_counts_a_rolling_minute_and_says_when_a_slot_frees() {
        let state = CapState::new(KeyCaps {
            max_concurrency: Some(10),
            rpm: Some(2),
        });
        drop(state.try_acquire(1_000).unwrap());
        drop(state.try_acquire(21_000).unwrap());
        assert_eq!(
            state.try_acquire(30_000).unwrap_err(),
            Duration::from_millis(31_000)
        );
        assert_eq!(
            state.in_flight(),
            0,
            "a refused rpm slot gives its concurrency back"
        );
        assert!(
            state.try_acquire(61_000).is_ok(),
            "the first left the window"
        );
        assert!(state.try_acquire(61_001).is_err());
    }
}
