//! One request's pass over a pool.

use super::{KeyState, Pool};

/// One request's pass over the pool: each available key at most once, in pool order from the
/// strategy's starting point. As an iterator it walks for a request without a model.
#[derive(Debug)]
pub struct Walk<'a> {
    pool: &'a Pool,
    start: usize,
    offset: usize,
    /// A key to try before the others (a session's key), and then to skip.
    preferred: Option<usize>,
    preferred_tried: bool,
}

impl<'a> Walk<'a> {
    /// A pass over `pool` starting at key `start`, or at `preferred` when it is usable.
    pub(super) fn new(pool: &'a Pool, start: usize, preferred: Option<usize>) -> Self {
        Self {
            pool,
            start,
            offset: 0,
            preferred: preferred.filter(|index| *index < pool.keys.len()),
            preferred_tried: false,
        }
    }

    /// The index of the next key to try for `model`: one available key-wide and not
    /// cooling for that model.
    pub fn next_for(&mut self, model: Option<&str>) -> Option<usize> {
        self.next_lazy(|| model)
    }

    /// [`Walk::next_for`] with the model asked for only when a key has a model's cooldown
    /// running: reading it may mean parsing the request body, which most requests never
    /// need.
    pub fn next_lazy<'m>(&mut self, model: impl Fn() -> Option<&'m str>) -> Option<usize> {
        let len = self.pool.keys.len();
        // One clock read per call, not per key skipped: a walk may pass thousands.
        let now = self.pool.clock.now_ms();
        if let Some(preferred) = self.preferred
            && !self.preferred_tried
        {
            self.preferred_tried = true;
            if self.usable(preferred, now, &model) {
                return Some(preferred);
            }
        }
        while self.offset < len {
            // start < len and offset < len, so one subtraction wraps (no division per key).
            let mut index = self.start + self.offset;
            if index >= len {
                index -= len;
            }
            self.offset += 1;
            if Some(index) == self.preferred || !self.usable(index, now, &model) {
                continue;
            }
            return Some(index);
        }
        None
    }

    /// Whether key `index` is available key-wide and not cooling for the model.
    fn usable<'m>(&self, index: usize, now: u64, model: &impl Fn() -> Option<&'m str>) -> bool {
        if self.pool.raw_state(index).settle(now) != KeyState::Available {
            return false;
        }
        let marks = &self.pool.models[index];
        !(marks.may_be_cooling(now) && model().is_some_and(|model| marks.is_cooling(model, now)))
    }
}

impl Iterator for Walk<'_> {
    /// The index of the next key to try.
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        self.next_for(None)
    }
}
