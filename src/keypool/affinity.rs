//! Session affinity: a conversation keeps the key that last served it while that key is
//! healthy, so the provider's prompt cache (held per organization) keeps paying. Sessions
//! are known only by a hash of their id; the id itself is never kept.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;

use lru::LruCache;
use sha2::{Digest, Sha256};

/// A session, by the first 8 bytes of its id's SHA-256: stable across processes (replicas
/// share assignments by it), and the id cannot be read back from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

impl SessionId {
    pub fn of(id: &str) -> Self {
        let digest = Sha256::digest(id.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Self(u64::from_be_bytes(first))
    }
}

/// How a request's key related to its session's assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AffinityOutcome {
    /// The session's key answered.
    Kept,
    /// The session had a key, and another one answered (it was cooling, or failed).
    Moved,
    /// The session had no live assignment.
    New,
}

impl AffinityOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kept => "kept",
            Self::Moved => "moved",
            Self::New => "new",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Assignment {
    key: usize,
    expires_ms: u64,
    /// When other processes last heard of it (0: never from here).
    announced_ms: u64,
}

/// A session's request settled on a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assigned {
    pub session: SessionId,
    pub key: usize,
    pub expires_ms: u64,
    pub outcome: AffinityOutcome,
    /// Whether other processes should hear of it: a new or changed assignment, or one
    /// whose last announcement is half its lifetime old (so theirs does not expire while
    /// the session is alive here).
    pub announce: bool,
}

/// The sessions the bridge remembers, and their keys; least recently used dropped past the
/// capacity. Sharded so concurrent requests rarely wait on one lock.
#[derive(Debug)]
pub struct Affinity {
    shards: Box<[Mutex<LruCache<u64, Assignment>>]>,
}

const SHARDS: usize = 16;

/// Sessions remembered per provider unless configured otherwise.
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;

impl Affinity {
    pub fn new(max_sessions: usize) -> Self {
        let per_shard =
            NonZeroUsize::new(max_sessions.div_ceil(SHARDS).max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
        }
    }

    fn shard(&self, session: SessionId) -> std::sync::MutexGuard<'_, LruCache<u64, Assignment>> {
        let shard = &self.shards[(session.0 as usize) % SHARDS];
        shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key the session is assigned to, if the assignment is live; an expired one is
    /// forgotten (the session counts as new).
    pub fn assigned(&self, session: SessionId, now_ms: u64) -> Option<usize> {
        let mut shard = self.shard(session);
        let assignment = *shard.get(&session.0)?;
        if assignment.expires_ms <= now_ms {
            shard.pop(&session.0);
            return None;
        }
        Some(assignment.key)
    }

    /// Assigns the session to `key` for `ttl` from `now_ms` (every use refreshes it);
    /// `previous` is the key it had when the request began, for the outcome.
    pub fn assign(
        &self,
        session: SessionId,
        key: usize,
        previous: Option<usize>,
        ttl: Duration,
        now_ms: u64,
    ) -> Assigned {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let expires_ms = now_ms.saturating_add(ttl_ms);
        let mut shard = self.shard(session);
        let before = shard.peek(&session.0).copied();
        let announce = before.is_none_or(|before| {
            before.key != key || now_ms.saturating_sub(before.announced_ms) >= ttl_ms / 2
        });
        let announced_ms = match before {
            Some(before) if !announce => before.announced_ms,
            _ => now_ms,
        };
        shard.put(
            session.0,
            Assignment {
                key,
                expires_ms,
                announced_ms,
            },
        );
        Assigned {
            session,
            key,
            expires_ms,
            outcome: match previous {
                None => AffinityOutcome::New,
                Some(previous) if previous == key => AffinityOutcome::Kept,
                Some(_) => AffinityOutcome::Moved,
            },
            announce,
        }
    }

    /// An assignment heard from another process: kept unless this one holds a later one.
    pub fn merge(&self, session: SessionId, key: usize, expires_ms: u64) {
        let mut shard = self.shard(session);
        let newer = shard
            .peek(&session.0)
            .is_none_or(|current| current.expires_ms <= expires_ms);
        if newer {
            // Heard from elsewhere: this process need not announce it again soon.
            let announced_ms = expires_ms;
            shard.put(
                session.0,
                Assignment {
                    key,
                    expires_ms,
                    announced_ms,
                },
            );
        }
    }

    /// How many sessions are remembered (live or not yet found expired).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().map_or(0, |shard| shard.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes over another table's assignments (after a reload), with each key's new index:
    /// sessions of a key that is gone are dropped.
    pub fn inherit_from(&self, previous: &Affinity, new_index: impl Fn(usize) -> Option<usize>) {
        for shard in &previous.shards {
            let shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Oldest first, so the most recent stay the most recent here too.
            for (session, assignment) in shard.iter().rev() {
                if let Some(key) = new_index(assignment.key) {
                    self.shard(SessionId(*session))
                        .put(*session, Assignment { key, ..*assignment });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn a_session_keeps_its_key_until_the_assignment_expires() {
        let affinity = Affinity::new(100);
        let session = SessionId::of("conversation-1");
        assert_eq!(affinity.assigned(session, 0), None);
        let first = affinity.assign(session, 2, None, 5 * MIN, 0);
        assert_eq!(
            (first.outcome, first.announce),
            (AffinityOutcome::New, true)
        );
        assert_eq!(affinity.assigned(session, 299_999), Some(2));
        // Refreshed on use; announced again only past half the lifetime.
        let soon = affinity.assign(session, 2, Some(2), 5 * MIN, 100_000);
        assert_eq!(
            (soon.outcome, soon.announce),
            (AffinityOutcome::Kept, false)
        );
        let later = affinity.assign(session, 2, Some(2), 5 * MIN, 200_000);
        assert!(later.announce);
        assert_eq!(affinity.assigned(session, 499_999), Some(2));
        let moved = affinity.assign(session, 1, Some(2), 5 * MIN, 200_001);
        assert_eq!(
            (moved.outcome, moved.announce),
            (AffinityOutcome::Moved, true)
        );
        affinity.assign(session, 2, Some(1), 5 * MIN, 200_000);
        assert_eq!(affinity.assigned(session, 500_000), None, "expired: new");
        assert!(affinity.is_empty(), "forgotten once found expired");
    }

    #[test]
    fn ids_are_hashed_and_memory_is_bounded() {
        assert_eq!(SessionId::of("a"), SessionId::of("a"));
        assert_ne!(SessionId::of("a"), SessionId::of("b"));
        let affinity = Affinity::new(1_000);
        for n in 0..10_000 {
            affinity.assign(SessionId::of(&n.to_string()), 0, None, MIN, 0);
        }
        assert!(affinity.len() <= 1_000 + SHARDS, "{}", affinity.len());
        // The most recent are kept.
        assert_eq!(affinity.assigned(SessionId::of("9999"), 1), Some(0));
    }

    #[test]
    fn merges_keep_the_later_and_reloads_follow_the_keys() {
        let affinity = Affinity::new(100);
        let session = SessionId::of("s");
        affinity.assign(session, 1, None, MIN, 0);
        affinity.merge(session, 0, 30_000);
        assert_eq!(
            affinity.assigned(session, 1),
            Some(1),
            "the later one stays"
        );
        affinity.merge(session, 0, 90_000);
        assert_eq!(affinity.assigned(session, 1), Some(0));
        let reloaded = Affinity::new(100);
        reloaded.inherit_from(&affinity, |old| (old == 0).then_some(3));
        assert_eq!(reloaded.assigned(session, 1), Some(3));
        let gone = Affinity::new(100);
        gone.inherit_from(&affinity, |_| None);
        assert!(gone.is_empty());
    }
}
