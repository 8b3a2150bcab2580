//! The log-range check: a stored position must still make sense in the broker's log.
//!
//! A stored position P says "everything of the partition up to P is in". The partition's
//! log now holds positions `first..next`. If `P + 1 < first`, messages after P were removed
//! before they were processed (retention, a size limit); if `P + 1 > next`, the log ends
//! before P (it was deleted and recreated, and positions started again). Either way,
//! resuming "after P" would skip events without a word, so the runtime stops with a
//! [`LogGap`] unless the operator accepts gaps (`consumer.accept_log_gaps`).

use gallop_broker::LogRange;

use crate::mark::Mark;

/// Which way a stored position is off the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapKind {
    /// The log starts after the stored position: unprocessed messages were removed.
    Removed,
    /// The log ends before the stored position: it was deleted and recreated.
    Recreated,
}

impl GapKind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Removed => "removed",
            Self::Recreated => "recreated",
        }
    }
}

/// A stored position outside the log's range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogGap {
    /// `NATS stream GALLOP_EVENTS`, `Kafka topic gallop-events`, …
    pub source_name: String,
    /// Partition.
    pub partition: u32,
    /// The position stored (or folded in) for it.
    pub stored: u64,
    /// What the log holds.
    pub range: LogRange,
    /// Which way it is off.
    pub kind: GapKind,
}

impl std::fmt::Display for LogGap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            GapKind::Removed => {
                "below the log's first position: messages after it were removed before they were processed"
            }
            GapKind::Recreated => "beyond the log's end: the log was deleted and recreated",
        };
        write!(
            f,
            "{}, partition {}: the stored position {} is {what} (the log holds positions {}..{}); resuming would \
             skip events without counting them. Find out what happened to the log; to go on anyway from position {}, \
             set consumer.accept_log_gaps = true (the gap is logged and counted in gallop_log_gaps_total)",
            self.source_name, self.partition, self.stored, self.range.first, self.range.next, self.range.first
        )
    }
}

impl std::error::Error for LogGap {}

impl LogGap {
    /// Positions skipped by going on from the log's first position: the removed ones
    /// (with a stream-wide sequence, other partitions' messages are among them).
    pub fn skipped(&self) -> u64 {
        match self.kind {
            GapKind::Removed => self.range.first.saturating_sub(self.stored + 1),
            GapKind::Recreated => 0,
        }
    }
}

/// Where to go on from a checked position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resume {
    /// Everything up to here counts as processed; delivery starts after it.
    pub(crate) after: Mark,
    /// The mark differs from the stored one and must be written with the next flush.
    pub(crate) reset: bool,
}

/// Checks `stored` (absent: nothing stored) against `range`; with `accept`, a gap yields
/// the resume point past it (the log's first position; a recreated log in a new epoch)
/// together with the gap, to be logged and counted.
pub(crate) fn check(
    source_name: &str,
    partition: u32,
    stored: Option<Mark>,
    range: LogRange,
    accept: bool,
) -> Result<(Resume, Option<LogGap>), LogGap> {
    let Some(stored) = stored else {
        // Nothing stored: start at the beginning of what the log holds.
        let after = Mark { position: range.first.saturating_sub(1), ..Mark::default() };
        return Ok((Resume { after, reset: false }, None));
    };
    let kind = if stored.position + 1 < range.first {
        GapKind::Removed
    } else if stored.position + 1 > range.next {
        GapKind::Recreated
    } else {
        return Ok((Resume { after: stored, reset: false }, None));
    };
    let gap = LogGap { source_name: source_name.to_owned(), partition, stored: stored.position, range, kind };
    if !accept {
        return Err(gap);
    }
    let epoch = match kind {
        GapKind::Removed => stored.epoch,
        GapKind::Recreated => stored.epoch + 1,
    };
    let after = Mark { epoch, position: range.first.saturating_sub(1), time_ms: 0 };
    Ok((Resume { after, reset: true }, Some(gap)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u64, next: u64) -> LogRange {
        LogRange { first, next }
    }

    /// (stored, range, accept) → (resume after, epoch, reset) or the gap's kind.
    fn run(stored: Option<u64>, log: LogRange, accept: bool) -> Result<(u64, u32, bool), GapKind> {
        let stored = stored.map(|position| Mark { epoch: 2, position, time_ms: 7 });
        match check("log", 3, stored, log, accept) {
            Ok((resume, gap)) => {
                assert_eq!(gap.is_some(), resume.reset, "an accepted gap is reported");
                Ok((resume.after.position, resume.after.epoch, resume.reset))
            }
            Err(gap) => Err(gap.kind),
        }
    }

    #[test]
    fn positions_inside_the_log_resume_where_they_are() {
        assert_eq!(run(Some(10), range(5, 20), false), Ok((10, 2, false)));
        assert_eq!(run(Some(4), range(5, 20), false), Ok((4, 2, false)), "first position not yet processed");
        assert_eq!(run(Some(19), range(5, 20), false), Ok((19, 2, false)), "everything processed");
        assert_eq!(run(Some(19), range(20, 20), false), Ok((19, 2, false)), "processed, then all removed");
        assert_eq!(run(Some(0), range(1, 1), false), Ok((0, 2, false)), "empty log, nothing processed");
    }

    #[test]
    fn nothing_stored_starts_at_the_log_start() {
        assert_eq!(run(None, range(1, 9), false), Ok((0, 0, false)));
        assert_eq!(run(None, range(40, 90), false), Ok((39, 0, false)));
    }

    #[test]
    fn removed_and_recreated_logs_are_refused() {
        assert_eq!(run(Some(3), range(5, 20), false), Err(GapKind::Removed));
        assert_eq!(run(Some(30), range(1, 20), false), Err(GapKind::Recreated));
        assert_eq!(run(Some(20), range(1, 20), false), Err(GapKind::Recreated), "the log ends at 19");
    }

    #[test]
    fn accepted_gaps_go_on_from_the_log_start_and_a_recreated_log_in_a_new_epoch() {
        assert_eq!(run(Some(3), range(5, 20), true), Ok((4, 2, true)));
        assert_eq!(run(Some(30), range(1, 20), true), Ok((0, 3, true)));
    }

    #[test]
    fn the_error_names_the_partition_the_position_the_range_and_the_switch() {
        let stored = Some(Mark { epoch: 0, position: 1200, time_ms: 0 });
        let gap = check("NATS stream E", 3, stored, range(4300, 9001), false).expect_err("a gap");
        let text = gap.to_string();
        for part in ["NATS stream E", "partition 3", "1200", "4300..9001", "removed", "consumer.accept_log_gaps"] {
            assert!(text.contains(part), "{part:?} missing from: {text}");
        }
        assert_eq!(gap.skipped(), 3099);
    }
}
