//! [`Folds`]: one [`Processor`] per group of partitions the store keeps apart.
//!
//! A store may write different partitions to different places (a ClickHouse cluster: each
//! partition to its shard, [`Store::group_of`](crate::Store::group_of)). A processor's rows
//! mix every partition it folded, so each group gets a processor of its own and each flush
//! one delta per group: a group's delta holds only its partitions' events and goes, with
//! their marks, to its place in one write. Where the store keeps everything in one place
//! there is one group, and this is the processor alone.

use gallop_processor::{Delta, MessageReport, OpenSessions, Processor, ProcessorError};

/// The processors of one runtime, indexed by group.
pub(crate) struct Folds {
    groups: Vec<Processor>,
}

impl Folds {
    /// `first` for group 0 and fresh copies of it for the other `groups - 1`.
    pub(crate) fn new(first: Processor, groups: usize) -> Self {
        let mut all = Vec::with_capacity(groups.max(1));
        for _ in 1..groups.max(1) {
            all.push(first.fresh());
        }
        all.insert(0, first);
        Self { groups: all }
    }

    /// How many groups there are.
    pub(crate) fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether some group is at its bound on live keys (intake pauses until a flush).
    pub(crate) fn is_full(&self) -> bool {
        self.groups.iter().any(Processor::is_full)
    }

    /// Whether some group's flush is due at `now_ms` (all groups flush together).
    pub(crate) fn should_flush(&mut self, now_ms: i64) -> bool {
        // Every one is asked: the first call starts each processor's interval.
        self.groups.iter_mut().fold(false, |due, p| p.should_flush(now_ms) | due)
    }

    /// Live keys of all groups.
    pub(crate) fn live_keys(&self) -> usize {
        self.groups.iter().map(Processor::live_keys).sum()
    }

    /// The bound on live keys of all groups together.
    pub(crate) fn max_live_keys(&self) -> usize {
        self.groups.iter().map(Processor::max_live_keys).sum()
    }

    /// Visits held open in all groups.
    pub(crate) fn open_sessions(&self) -> usize {
        self.groups.iter().map(Processor::open_sessions).sum()
    }

    /// Visits evicted so far in all groups.
    pub(crate) fn sessions_evicted(&self) -> u64 {
        self.groups.iter().map(|p| p.stats().sessions_evicted).sum()
    }

    /// See [`Processor::session_horizon_ms`] (the same in every group).
    pub(crate) fn session_horizon_ms(&self) -> i64 {
        self.groups[0].session_horizon_ms()
    }

    /// Hands each group what was stored of its partitions (`group_of` tells which).
    pub(crate) fn restore(&mut self, stored: OpenSessions, group_of: impl Fn(u32) -> usize) {
        let mut split: Vec<OpenSessions> = self.groups.iter().map(|_| OpenSessions::default()).collect();
        let last = split.len() - 1;
        let index = |partition: u32| group_of(partition).min(last);
        for (partition, watermark) in stored.watermarks {
            let group = index(partition);
            split[group].watermarks.insert(partition, watermark);
        }
        for session in stored.sessions {
            let group = index(session.partition);
            split[group].sessions.push(session);
        }
        for (processor, stored) in self.groups.iter_mut().zip(split) {
            processor.restore(stored);
        }
    }

    /// Forgets `partitions` in every group (see [`Processor::release`]).
    pub(crate) fn release(&mut self, partitions: &[u32]) {
        for processor in &mut self.groups {
            processor.release(partitions);
        }
    }

    /// Folds a message of `partition` into `group`'s processor.
    pub(crate) fn process_message(
        &mut self,
        group: usize,
        partition: u32,
        position: u64,
        payload: &[u8],
        arrival_ms: i64,
    ) -> Result<MessageReport, ProcessorError> {
        self.group_mut(group).process_message(partition, position, payload, arrival_ms)
    }

    /// `partition`'s watermark, kept by `group`'s processor.
    pub(crate) fn watermark(&self, group: usize, partition: u32) -> Option<i64> {
        self.groups.get(group).and_then(|p| p.watermark(partition))
    }

    /// One delta per group, in group order.
    pub(crate) fn flush(&mut self, now_ms: i64) -> Vec<Delta> {
        self.groups.iter_mut().map(|p| p.flush(now_ms)).collect()
    }

    fn group_mut(&mut self, group: usize) -> &mut Processor {
        let last = self.groups.len() - 1;
        &mut self.groups[group.min(last)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gallop_config::Config;

    fn message(visitor: u64) -> Vec<u8> {
        format!(
            r#"{{"v":1,"site":"s","name":"pageview","ts":1800000000000,"visitor":{visitor},"path":"/","received_at":1800000000000}}"#
        )
        .into_bytes()
    }

    #[test]
    fn each_group_holds_only_its_partitions() {
        let config = Config::default();
        let first = Processor::new(&config.processor, &config.time).expect("default rules");
        let mut folds = Folds::new(first, 2);
        assert_eq!(folds.len(), 2);
        // Partitions 0 and 2 in group 0, partition 1 in group 1.
        for (partition, visitor) in [(0u32, 1u64), (2, 2), (1, 3)] {
            let group = (partition % 2) as usize;
            let report =
                folds.process_message(group, partition, 1, &message(visitor), 1_800_000_000_000).expect("room for it");
            assert_eq!(report.counted, 1, "{report:?}");
        }
        let deltas = folds.flush(1_800_000_001_000);
        let events =
            |delta: &Delta| delta.rows.iter().filter(|r| r.dimension == "total").map(|r| r.events).sum::<u64>();
        assert_eq!(deltas.iter().map(events).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(deltas[0].watermarks.keys().copied().collect::<Vec<_>>(), [0, 2]);
        assert_eq!(deltas[1].watermarks.keys().copied().collect::<Vec<_>>(), [1]);
    }
}
