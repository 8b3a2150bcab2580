//! Who owns which partition when several processors share them: [`Membership`] (what a
//! processor runs, changing as members come and go) and [`Fence`] (whether it may still
//! write a partition).
//!
//! Neither broker stops a processor that lost a partition from writing to ClickHouse, so
//! ownership is self-fenced: a member writes a partition only while its claim provably
//! holds for longer than the write can take, and a new owner starts only after the previous
//! claim ended. [`StaticMembership`] is the hand-written list (`consumer.assignment =
//! "static"` without a lease store): it never changes and never fences.

use std::{
    collections::BTreeMap,
    fmt::Debug,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::future::{BoxFuture, FutureExt};
use tokio::sync::watch;

/// What a member may run now, as its membership last settled it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// The partitions to run, each with the generation of this member's claim on it (NATS:
    /// the lease key's revision when it was claimed; Kafka: when the group assigned it). A
    /// partition lost and claimed again comes back with a new generation.
    pub owned: BTreeMap<u32, u64>,
    /// Members seen alive, this one included (`None`: the broker does not tell).
    pub members: Option<u32>,
    /// Partitions no live member holds, as this member last saw them (`None`: the broker
    /// does not tell).
    pub unowned: Option<u32>,
    /// Partitions that moved to or from this member so far, by reason (`claimed`,
    /// `handed_over`, `lost`, `shutdown`): cumulative, for the handover counter.
    pub handovers: BTreeMap<String, u64>,
}

impl Assignment {
    /// The partitions to run, in order.
    pub fn partitions(&self) -> Vec<u32> {
        self.owned.keys().copied().collect()
    }
}

/// Why a member may not write a partition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("member {member} may not write partition {partition}: {reason}")]
pub struct Fenced {
    /// The member.
    pub member: String,
    /// The partition.
    pub partition: u32,
    /// Why (no claim, a claim too close to its end, a pause noticed).
    pub reason: String,
}

/// Whether this member may write partitions now.
pub trait Fence: Send + Sync + Debug + 'static {
    /// `Ok` when this member's claim on every one of `partitions` holds for at least
    /// `budget` from now, so that a write started now ends before any other member can
    /// start them.
    fn check(&self, partitions: &[u32], budget: Duration) -> Result<(), Fenced>;
}

/// A processor's place among those sharing the partitions.
///
/// The process runs the partitions of [`watch`](Self::watch)'s current [`Assignment`] and
/// follows it: before a partition leaves, it writes what it folded (fenced by
/// [`Fence::check`]) and then calls [`hand_over`](Self::hand_over); a partition that joins is
/// read back from the store and resumed.
pub trait Membership: Fence {
    /// This member's name (in markers and logs).
    fn member(&self) -> &str;

    /// The assignment, updated whenever it changes.
    fn watch(&self) -> watch::Receiver<Assignment>;

    /// How long a write may take and still be fenced safely: the budget to pass to
    /// [`Fence::check`] before each write attempt.
    fn write_budget(&self) -> Duration;

    /// Gives up `partitions` after everything folded for them was written (or could not
    /// be): another member may start them now.
    fn hand_over(&self, partitions: Vec<u32>) -> BoxFuture<'_, ()>;

    /// Leaves at shutdown, after the last flush: gives up every partition at once.
    fn leave(&self) -> BoxFuture<'_, ()>;

    /// `None` while the membership works; otherwise what is wrong (the lease store
    /// unreachable), for `/ready`.
    fn trouble(&self) -> Option<String>;
}

/// A fixed list of partitions, written by hand: never changes, never fences.
#[derive(Debug)]
pub struct StaticMembership {
    member: String,
    sender: watch::Sender<Assignment>,
}

impl StaticMembership {
    /// `member` owns `partitions` for good.
    pub fn new(member: &str, partitions: &[u32]) -> Self {
        let assignment = Assignment {
            owned: partitions.iter().map(|&p| (p, 0)).collect(),
            members: Some(1),
            unowned: Some(0),
            handovers: BTreeMap::new(),
        };
        Self { member: member.to_owned(), sender: watch::Sender::new(assignment) }
    }
}

impl Fence for StaticMembership {
    fn check(&self, _partitions: &[u32], _budget: Duration) -> Result<(), Fenced> {
        Ok(())
    }
}

impl Membership for StaticMembership {
    fn member(&self) -> &str {
        &self.member
    }

    fn watch(&self) -> watch::Receiver<Assignment> {
        self.sender.subscribe()
    }

    fn write_budget(&self) -> Duration {
        Duration::ZERO
    }

    fn hand_over(&self, _partitions: Vec<u32>) -> BoxFuture<'_, ()> {
        futures::future::ready(()).boxed()
    }

    fn leave(&self) -> BoxFuture<'_, ()> {
        futures::future::ready(()).boxed()
    }

    fn trouble(&self) -> Option<String> {
        None
    }
}

/// The fair share of member `index` (0-based, in the members' sorted order) of `members`
/// sharing `partitions`: everyone gets `partitions / members`, the first `partitions %
/// members` one more, so shares differ by at most one.
pub fn fair_share(partitions: u32, members: u32, index: u32) -> u32 {
    let members = members.max(1);
    partitions / members + u32::from(index < partitions % members)
}

/// The default member name: `<host>-<pid>`.
pub fn default_member_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "gallop".to_owned());
    let host: String =
        host.trim().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    format!("{host}-{}", std::process::id())
}

/// Wall-clock milliseconds, for generations that must grow across members sharing a clock.
pub fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::fair_share;

    #[test]
    fn fair_shares_add_up_and_differ_by_at_most_one() {
        for partitions in 1..=40 {
            for members in 1..=12 {
                let shares: Vec<u32> = (0..members).map(|i| fair_share(partitions, members, i)).collect();
                assert_eq!(shares.iter().sum::<u32>(), partitions, "{partitions} over {members}: {shares:?}");
                let (min, max) = (shares.iter().min().unwrap_or(&0), shares.iter().max().unwrap_or(&0));
                assert!(max - min <= 1, "{partitions} over {members}: {shares:?}");
            }
        }
        assert_eq!((0..3).map(|i| fair_share(8, 3, i)).collect::<Vec<_>>(), [3, 3, 2]);
    }
}
