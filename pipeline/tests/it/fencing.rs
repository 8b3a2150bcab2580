//! Where processors share the partitions: a runtime follows its assignment (partitions
//! written and handed over, others read back and resumed), and a runtime whose claim lapsed
//! writes and acknowledges nothing more, stops with [`RunError::Fenced`], and the next owner
//! goes on from the stored marks — every event exactly once.

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use futures::future::{BoxFuture, FutureExt};
use gallop_broker::{Assignment, Fence, Fenced, Membership, MemoryBroker};
use gallop_pipeline::RunError;
use tokio::sync::watch;

use crate::harness::Harness;

/// A membership the test drives: it assigns, takes claims away, and records hand-overs.
#[derive(Debug)]
struct Member {
    name: String,
    assignment: watch::Sender<Assignment>,
    /// Partitions claimed and not handed over (assigned, or leaving and not yet written).
    held: Mutex<BTreeSet<u32>>,
    lost: AtomicBool,
}

impl Member {
    fn new(name: &str, partitions: &[u32]) -> Arc<Self> {
        let member = Arc::new(Self {
            name: name.to_owned(),
            assignment: watch::Sender::new(Assignment::default()),
            held: Mutex::default(),
            lost: AtomicBool::new(false),
        });
        member.assign(partitions);
        member
    }

    /// Assigns `partitions` (generation 1); those that leave stay held until handed over.
    fn assign(&self, partitions: &[u32]) {
        self.held.lock().expect("lock").extend(partitions);
        self.assignment
            .send_replace(Assignment { owned: partitions.iter().map(|&p| (p, 1)).collect(), ..Assignment::default() });
    }

    fn held(&self) -> BTreeSet<u32> {
        self.held.lock().expect("lock").clone()
    }
}

impl Fence for Member {
    fn check(&self, partitions: &[u32], _budget: Duration) -> Result<(), Fenced> {
        let held = self.held();
        match partitions.iter().find(|p| self.lost.load(Ordering::SeqCst) || !held.contains(p)) {
            Some(&partition) => {
                Err(Fenced { member: self.name.clone(), partition, reason: "not held (the test says)".to_owned() })
            }
            None => Ok(()),
        }
    }
}

impl Membership for Member {
    fn member(&self) -> &str {
        &self.name
    }

    fn watch(&self) -> watch::Receiver<Assignment> {
        self.assignment.subscribe()
    }

    fn write_budget(&self) -> Duration {
        Duration::from_millis(10)
    }

    fn hand_over(&self, partitions: Vec<u32>) -> BoxFuture<'_, ()> {
        self.held.lock().expect("lock").retain(|p| !partitions.contains(p));
        futures::future::ready(()).boxed()
    }

    fn leave(&self) -> BoxFuture<'_, ()> {
        self.held.lock().expect("lock").clear();
        futures::future::ready(()).boxed()
    }

    fn trouble(&self) -> Option<String> {
        None
    }
}

/// Waits until `member` no longer holds `partition` (it wrote and handed it over).
async fn handed_over(member: &Member, partition: u32) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while member.held().contains(&partition) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} did not hand partition {partition} over", member.name));
}

#[tokio::test]
async fn partitions_move_between_running_runtimes_and_every_event_counts_once() {
    let mut harness = Harness::new(MemoryBroker::new(4), 43);
    let first = Member::new("first", &[0, 1, 2, 3]);
    let running_first = harness.start_member(Arc::clone(&first) as Arc<dyn Membership>);
    harness.publish(40).await;
    harness.wait_until_stored().await;

    // A second member joins: partitions 2 and 3 move to it while the first goes on with 0, 1.
    first.assign(&[0, 1]);
    harness.publish(20).await;
    handed_over(&first, 2).await;
    handed_over(&first, 3).await;
    let second = Member::new("second", &[2, 3]);
    let running_second = harness.start_member(Arc::clone(&second) as Arc<dyn Membership>);
    harness.publish(40).await;
    harness.wait_until_stored().await;

    // The second one leaves its partitions to the first again.
    second.assign(&[]);
    handed_over(&second, 2).await;
    handed_over(&second, 3).await;
    first.assign(&[0, 1, 2, 3]);
    harness.publish(40).await;
    harness.wait_until_stored().await;

    running_second.stop().await.expect("a clean stop");
    running_first.stop().await.expect("a clean stop");
    harness.assert_store_is_the_truth().await;
}

#[tokio::test]
async fn a_runtime_that_lost_its_claim_writes_and_acknowledges_nothing_more() {
    let mut harness = Harness::new(MemoryBroker::new(3), 41);
    let first = Member::new("first", &[0, 1, 2]);
    let running = harness.start_member(Arc::clone(&first) as Arc<dyn Membership>);
    harness.publish(30).await;
    harness.wait_until_stored().await;
    let (writes, marks) = (harness.store.writes(), harness.store.marks());
    let acked: Vec<u64> = (0..3).map(|p| harness.broker.acked(p)).collect();

    first.lost.store(true, Ordering::SeqCst);
    harness.publish(30).await;
    let outcome = running.finished().await;
    assert!(matches!(outcome, Err(RunError::Fenced(_))), "stops as fenced: {outcome:?}");
    assert_eq!(harness.store.writes(), writes, "nothing written after the claim was lost");
    assert_eq!(harness.store.marks(), marks, "no mark moved");
    assert_eq!((0..3).map(|p| harness.broker.acked(p)).collect::<Vec<_>>(), acked, "nothing acknowledged");

    // The next owner goes on from the stored marks: what the first one held in memory is
    // read again, and every event counts once.
    let next = harness.start_member(Member::new("second", &[0, 1, 2]));
    harness.wait_until_stored().await;
    next.stop().await.expect("a clean stop");
    harness.assert_store_is_the_truth().await;
}

#[tokio::test]
async fn a_partition_claimed_again_under_a_new_generation_was_lost_in_between() {
    let mut harness = Harness::new(MemoryBroker::new(2), 47);
    let first = Member::new("first", &[0, 1]);
    let running = harness.start_member(Arc::clone(&first) as Arc<dyn Membership>);
    harness.publish(10).await;
    harness.wait_until_stored().await;
    first.assignment.send_replace(Assignment { owned: [(0, 1), (1, 2)].into(), ..Assignment::default() });
    let outcome = running.finished().await;
    assert!(matches!(&outcome, Err(RunError::Fenced(f)) if f.partition == 1), "partition 1 was lost: {outcome:?}");
}
