//! Room for real clients under a flood. When every connection slot is taken, or the request
//! heads still arriving hold more than the head budget, the server closes the connections
//! that have waited longest without sending a whole request (silent sockets, slow heads)
//! instead of turning new clients away. A real client sends its head at once, so it is never
//! the oldest of those, and a head that arrives in one read is never charged to the budget.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::clients::Activity;

/// Bytes of unfinished request heads the whole process may hold (heads that took more than
/// one read); past it the oldest are closed. 512 heads of the 64 KiB limit, so hyper's read
/// buffers for them stay near 64 MB however many connections send them.
pub const HEAD_BUDGET: usize = 32 * 1024 * 1024;

/// Queues shorter than this are never pruned.
const PRUNE_FLOOR: usize = 1024;

/// Connections closed to make room so far, by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShedCounts {
    /// Every connection slot was taken when a new client arrived.
    pub full: u64,
    /// Unfinished heads held more than the head budget.
    pub head_memory: u64,
}

/// Connections that may be closed to make room, oldest first.
#[derive(Debug)]
pub struct Shedding {
    /// Connections that have not sent a whole request yet. Entries whose connection has
    /// since sent one, or closed, are skipped when met and pruned as the queue grows.
    newcomers: Queue,
    /// Connections whose head has been charged to the budget, same rules.
    slow_heads: Queue,
    /// Bytes charged by unfinished heads, process-wide.
    head_bytes: AtomicUsize,
    budget: usize,
    shed_full: AtomicU64,
    shed_head_memory: AtomicU64,
}

impl Shedding {
    pub fn new(budget: usize) -> Self {
        Self {
            newcomers: Queue::default(),
            slow_heads: Queue::default(),
            head_bytes: AtomicUsize::new(0),
            budget,
            shed_full: AtomicU64::new(0),
            shed_head_memory: AtomicU64::new(0),
        }
    }

    /// A new connection, sheddable until it sends a whole request.
    pub fn arrived(&self, connection: &Arc<Activity>) {
        self.newcomers
            .push(connection, |activity| !activity.has_sent_a_request());
    }

    /// Closes the oldest connection that has not sent a whole request, so a new one can be
    /// served; false when every open connection has.
    pub fn make_room(&self) -> bool {
        let Some(oldest) = self
            .newcomers
            .pop_first(|activity| !activity.has_sent_a_request())
        else {
            return false;
        };
        oldest.close_for_room();
        self.shed_full.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Charges `bytes` more of `connection`'s unfinished head; closes the oldest charged heads
    /// while the total is over budget.
    pub fn charge(&self, connection: &Arc<Activity>, bytes: usize) {
        // The total first: a release on another thread (shedding) then never takes more
        // from it than was added.
        let total = self.head_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if connection.add_charge(bytes) == 0 {
            self.slow_heads
                .push(connection, |activity| activity.charged() > 0);
        }
        if total > self.budget {
            self.shed_heads();
        }
    }

    /// `bytes` of a head no longer held: it completed, or its connection closed.
    pub fn release(&self, bytes: usize) {
        self.head_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn shed_heads(&self) {
        while self.head_bytes.load(Ordering::Relaxed) > self.budget {
            let Some(oldest) = self.slow_heads.pop_first(|activity| activity.charged() > 0) else {
                return;
            };
            // Released now, not when its task ends on its own worker: the loop needs the
            // total to fall.
            oldest.release_head();
            oldest.close_for_room();
            self.shed_head_memory.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn shed(&self) -> ShedCounts {
        ShedCounts {
            full: self.shed_full.load(Ordering::Relaxed),
            head_memory: self.shed_head_memory.load(Ordering::Relaxed),
        }
    }

    #[cfg(test)]
    pub fn head_bytes(&self) -> usize {
        self.head_bytes.load(Ordering::Relaxed)
    }
}

/// Connections in the order they qualified.
#[derive(Debug, Default)]
struct Queue(Mutex<QueueState>);

#[derive(Debug, Default)]
struct QueueState {
    entries: VecDeque<Weak<Activity>>,
    /// The length at which stale entries are next pruned; doubling keeps pruning O(1) a
    /// push, amortized.
    prune_at: usize,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.0.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Adds `connection`; first drops the entries no longer `qualifying` when the queue has
    /// doubled since it was last pruned.
    fn push(&self, connection: &Arc<Activity>, qualifying: impl Fn(&Activity) -> bool) {
        let mut state = self.lock();
        if state.entries.len() >= state.prune_at.max(PRUNE_FLOOR) {
            state.entries.retain(|entry| {
                entry
                    .upgrade()
                    .is_some_and(|activity| qualifying(&activity))
            });
            state.prune_at = state.entries.len() * 2;
        }
        state.entries.push_back(Arc::downgrade(connection));
    }

    /// Removes and returns the oldest entry still `qualifying`, dropping stale ones before it.
    fn pop_first(&self, qualifying: impl Fn(&Activity) -> bool) -> Option<Arc<Activity>> {
        let mut state = self.lock();
        while let Some(entry) = state.entries.pop_front() {
            if let Some(activity) = entry.upgrade().filter(|activity| qualifying(activity)) {
                return Some(activity);
            }
        }
        None
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::clients::CoarseClock;

    fn shedding(budget: usize) -> &'static Shedding {
        Box::leak(Box::new(Shedding::new(budget)))
    }

    fn connection(shedding: &'static Shedding) -> Arc<Activity> {
        let activity = Activity::new(Arc::new(CoarseClock::new()), shedding);
        shedding.arrived(&activity);
        activity
    }

    #[test]
    fn room_is_made_by_closing_the_oldest_connection_without_a_request() {
        let shedding = shedding(HEAD_BUDGET);
        let served = connection(shedding);
        let oldest_silent = connection(shedding);
        let newer = connection(shedding);
        drop(served.request());
        assert!(shedding.make_room());
        assert!(
            oldest_silent.is_closed_for_room(),
            "the oldest without a request"
        );
        assert!(
            !served.is_closed_for_room(),
            "a connection that sent a request stays"
        );
        assert!(!newer.is_closed_for_room());
        assert!(shedding.make_room());
        assert!(newer.is_closed_for_room());
        assert!(!shedding.make_room(), "nothing left to close");
        assert_eq!(
            shedding.shed(),
            ShedCounts {
                full: 2,
                head_memory: 0
            }
        );
    }

    #[test]
    fn heads_over_the_budget_close_the_oldest_charged_head() {
        let shedding = shedding(10_000);
        let fast = connection(shedding);
        let slow = connection(shedding);
        let slower = connection(shedding);
        fast.read_bytes(9_000);
        drop(fast.request());
        assert_eq!(
            shedding.head_bytes(),
            0,
            "a head read at once is never charged"
        );
        slow.read_bytes(100);
        slow.read_bytes(6_000);
        slower.read_bytes(100);
        slower.read_bytes(3_000);
        assert_eq!(shedding.head_bytes(), 9_000);
        assert!(!slow.is_closed_for_room());
        slower.read_bytes(2_000);
        assert!(slow.is_closed_for_room(), "the oldest charged head goes");
        assert!(!slower.is_closed_for_room());
        assert_eq!(shedding.head_bytes(), 5_000);
        assert_eq!(
            shedding.shed(),
            ShedCounts {
                full: 0,
                head_memory: 1
            }
        );
        drop(slower.request());
        assert_eq!(
            shedding.head_bytes(),
            0,
            "a finished head gives its bytes back"
        );
    }

    #[test]
    fn closed_connections_give_their_bytes_back_and_are_pruned() {
        let shedding = shedding(HEAD_BUDGET);
        for _ in 0..3 * PRUNE_FLOOR {
            let activity = connection(shedding);
            activity.read_bytes(10);
            activity.read_bytes(10);
            activity.release_head();
        }
        assert_eq!(shedding.head_bytes(), 0);
        assert!(
            shedding.newcomers.len() <= PRUNE_FLOOR + 1,
            "stale entries pruned"
        );
        assert!(shedding.slow_heads.len() <= PRUNE_FLOOR + 1);
        assert!(
            !shedding.make_room(),
            "closed connections are not closed again"
        );
    }
}
