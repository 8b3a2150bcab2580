//! A window of recent message ids per partition, for brokers that store a republished
//! message again (Kafka): a gateway retrying a publish, or a client retrying a request whose
//! events carry ids, produces a second message with the same id, which must count once.
//!
//! Ids are kept as 128-bit keyed hashes (a false match would drop a message: at 2⁻¹²⁸ per
//! pair it does not happen), for `window` of broker time after the newest message seen and
//! at most `max_ids`; past that bound the oldest go first, counted as evicted early.

use std::{
    collections::{HashSet, VecDeque},
    hash::Hasher,
    time::Duration,
};

use siphasher::sip128::{Hasher128, SipHasher13};

/// The ids seen in one partition's recent messages.
#[derive(Debug)]
pub(crate) struct DedupWindow {
    window_ms: i64,
    max_ids: usize,
    order: VecDeque<(i64, u128)>,
    ids: HashSet<u128>,
    newest_ms: i64,
    evicted_early: u64,
}

impl DedupWindow {
    /// A window of `window` of broker time, holding at most `max_ids` (at least 1).
    pub(crate) fn new(window: Duration, max_ids: usize) -> Self {
        Self {
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
            max_ids: max_ids.max(1),
            order: VecDeque::new(),
            ids: HashSet::new(),
            newest_ms: i64::MIN,
            evicted_early: 0,
        }
    }

    /// Whether `id` was seen inside the window; records it when not.
    pub(crate) fn seen_before(&mut self, id: &str, timestamp_ms: i64) -> bool {
        let key = key(id);
        // The window moves with the message's own stamp first: a copy stamped past the window
        // of its first is not a copy any more (it once was, when no other message came between).
        self.newest_ms = self.newest_ms.max(timestamp_ms);
        let horizon = self.newest_ms.saturating_sub(self.window_ms);
        while self.order.front().is_some_and(|&(at, _)| at < horizon) {
            self.pop();
        }
        if self.ids.contains(&key) {
            return true;
        }
        while self.order.len() >= self.max_ids {
            self.pop();
            self.evicted_early += 1;
        }
        self.order.push_back((timestamp_ms, key));
        self.ids.insert(key);
        false
    }

    /// Ids held now.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Ids dropped by the size bound while still inside the time window, and clears the count.
    pub(crate) fn take_evicted_early(&mut self) -> u64 {
        std::mem::take(&mut self.evicted_early)
    }

    fn pop(&mut self) {
        if let Some((_, key)) = self.order.pop_front() {
            self.ids.remove(&key);
        }
    }
}

fn key(id: &str) -> u128 {
    let mut hasher = SipHasher13::new_with_keys(0x6761_6c6c_6f70_6964, 0x6465_6475_7000_0001);
    hasher.write(id.as_bytes());
    hasher.finish128().as_u128()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_repeated_inside_the_window_is_seen_and_outside_is_not() {
        let mut window = DedupWindow::new(Duration::from_secs(60), 100);
        assert!(!window.seen_before("a", 1_000));
        assert!(window.seen_before("a", 2_000));
        assert!(!window.seen_before("b", 30_000));
        // 62 s after "a": "a" has left the window, "b" has not.
        assert!(!window.seen_before("c", 62_000));
        assert!(!window.seen_before("a", 62_500), "a left the window");
        assert!(window.seen_before("b", 63_000));
        assert_eq!(window.take_evicted_early(), 0);
    }

    #[test]
    fn a_copy_stamped_past_the_window_is_a_message_of_its_own() {
        let mut window = DedupWindow::new(Duration::from_secs(60), 100);
        assert!(!window.seen_before("a", 1_000));
        assert!(window.seen_before("a", 61_000), "inside: 60 s after");
        assert!(!window.seen_before("a", 61_001), "outside, with nothing between");
        assert!(window.seen_before("a", 61_002), "and the new one is remembered");
    }

    #[test]
    fn the_size_bound_evicts_the_oldest_and_counts_it() {
        let mut window = DedupWindow::new(Duration::from_secs(3600), 3);
        for (i, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
            assert!(!window.seen_before(id, i as i64));
        }
        assert_eq!(window.len(), 3);
        assert_eq!(window.take_evicted_early(), 1);
        assert!(!window.seen_before("a", 10), "a was evicted");
        assert!(window.seen_before("d", 11));
    }

    #[test]
    fn out_of_order_timestamps_keep_the_window_anchored_to_the_newest() {
        let mut window = DedupWindow::new(Duration::from_secs(10), 100);
        assert!(!window.seen_before("new", 100_000));
        assert!(!window.seen_before("old", 50_000), "an old stamp is still recorded");
        assert!(window.seen_before("new", 100_001));
    }
}
