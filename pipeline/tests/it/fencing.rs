//! Where processors share the partitions: a runtime whose claim lapsed writes and
//! acknowledges nothing more, stops with [`RunError::Fenced`], and the next owner goes on
//! from the stored marks — every event exactly once.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use gallop_broker::{Fence, Fenced, MemoryBroker};
use gallop_pipeline::RunError;

use crate::harness::Harness;

/// A claim a test keeps or takes away.
#[derive(Debug, Default)]
struct Claim {
    lost: AtomicBool,
}

impl Fence for Claim {
    fn check(&self, partitions: &[u32], _budget: std::time::Duration) -> Result<(), Fenced> {
        match partitions.first() {
            Some(&partition) if self.lost.load(Ordering::SeqCst) => {
                Err(Fenced { member: "first".to_owned(), partition, reason: "taken away by the test".to_owned() })
            }
            _ => Ok(()),
        }
    }
}

#[tokio::test]
async fn a_runtime_that_lost_its_claim_writes_and_acknowledges_nothing_more() {
    let mut harness = Harness::new(MemoryBroker::new(3), 41);
    let claim = Arc::new(Claim::default());
    let running = harness.start_fenced("first", Arc::clone(&claim) as Arc<dyn Fence>);
    harness.publish(30).await;
    harness.wait_until_stored().await;
    let (writes, marks) = (harness.store.writes(), harness.store.marks());
    let acked: Vec<u64> = (0..3).map(|p| harness.broker.acked(p)).collect();

    claim.lost.store(true, Ordering::SeqCst);
    harness.publish(30).await;
    let outcome = running.finished().await;
    assert!(matches!(outcome, Err(RunError::Fenced(_))), "stops as fenced: {outcome:?}");
    assert_eq!(harness.store.writes(), writes, "nothing written after the claim was lost");
    assert_eq!(harness.store.marks(), marks, "no mark moved");
    assert_eq!((0..3).map(|p| harness.broker.acked(p)).collect::<Vec<_>>(), acked, "nothing acknowledged");

    // The next owner goes on from the stored marks: what the first one held in memory is
    // read again, and every event counts once.
    let next = harness.start_fenced("second", Arc::new(Claim::default()));
    harness.wait_until_stored().await;
    next.stop().await.expect("a clean stop");
    harness.assert_store_is_the_truth().await;
}
