//! Crashes at every step of consume → fold → write → acknowledge, and replays: the store
//! ends up holding every event exactly once.

use std::time::Duration;

use gallop_broker::MemoryBroker;
use gallop_pipeline::RunError;

use crate::harness::{now_ms, Harness};

/// The steps a crash is injected at.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Deliveries folded into memory, nothing of them written.
    AfterFold,
    /// A write under way, nothing of it stored.
    DuringWrite,
    /// A write stored, its answer lost: nothing acknowledged.
    AfterWriteBeforeAck,
    /// Acknowledgements under way.
    DuringAck,
}

const STEPS: [Step; 4] = [Step::AfterFold, Step::DuringWrite, Step::AfterWriteBeforeAck, Step::DuringAck];

/// Runs `harness`'s runtime while publishing, crashes it at `step`, restarts it.
async fn crash_at(harness: &mut Harness, step: Step) {
    let running = harness.start();
    harness.publish(20).await;
    // The broker delivers again what is not acknowledged yet (JetStream after ack_wait):
    // some of it is in memory, some stored and waiting for its acknowledgement.
    harness.broker.faults().redeliver_unacknowledged();
    harness.publish(20).await;
    // Some writes land normally first, so the crash hits a runtime with stored positions.
    harness.store.wait_for_writes(harness.store.writes() + 1).await;
    match step {
        Step::AfterFold => {
            harness.broker.faults().stall_after_deliveries(harness.broker.faults().delivered() + 15);
            harness.publish(20).await;
            harness.broker.faults().stalled().await;
        }
        Step::DuringWrite => {
            harness.store.faults().stall_before_landing(true);
            harness.publish(20).await;
            harness.store.faults().stalled().await;
        }
        Step::AfterWriteBeforeAck => {
            harness.store.faults().stall_after_landing(true);
            harness.publish(20).await;
            harness.store.faults().stalled().await;
        }
        Step::DuringAck => {
            harness.broker.faults().stall_acks(true);
            harness.publish(20).await;
            harness.broker.faults().stalled().await;
        }
    }
    running.crash().await;
    harness.broker.faults().clear();
    harness.store.faults().clear();
}

async fn every_step(broker: MemoryBroker, dedup_window: Option<Duration>, seed: u64) {
    every_step_of(Harness::new(broker, seed), dedup_window).await;
}

async fn every_step_of(mut harness: Harness, dedup_window: Option<Duration>) {
    harness.dedup_window = dedup_window;
    for round in 0..2 {
        for step in STEPS {
            crash_at(&mut harness, step).await;
            assert!(harness.store.writes() > 0, "round {round}, {step:?}: writes landed before the crash");
        }
    }
    let running = harness.start();
    harness.publish(30).await;
    harness.wait_until_stored().await;
    running.stop().await.expect("a clean stop");
    harness.assert_store_is_the_truth().await;
}

#[tokio::test]
async fn a_crash_at_every_step_loses_nothing_and_counts_nothing_twice_with_offsets() {
    every_step(MemoryBroker::new(3), None, 1).await;
}

#[tokio::test]
async fn a_crash_at_every_step_loses_nothing_and_counts_nothing_twice_with_a_stream_sequence() {
    every_step(MemoryBroker::new(3).with_stream_sequence(), None, 2).await;
}

#[tokio::test]
async fn a_crash_at_every_step_loses_nothing_and_counts_nothing_twice_with_a_dedup_window() {
    every_step(MemoryBroker::new(3).without_dedup(), Some(Duration::from_secs(120)), 3).await;
}

/// A store that keeps partitions apart (a ClickHouse cluster's shards): each flush is one
/// write per group, holding that group's partitions only, and crashes still lose nothing.
#[tokio::test]
async fn a_crash_at_every_step_loses_nothing_where_the_store_keeps_groups_of_partitions_apart() {
    let mut harness = Harness::new(MemoryBroker::new(3), 5);
    harness.store = std::sync::Arc::new(gallop_pipeline::MemoryStore::with_groups(2));
    every_step_of(harness, None).await;
}

#[tokio::test]
async fn nothing_is_acknowledged_before_its_write_lands() {
    let mut harness = Harness::new(MemoryBroker::new(2), 4);
    harness.store.faults().stall_before_landing(true);
    let running = harness.start();
    harness.publish(30).await;
    harness.store.faults().stalled().await;
    assert_eq!((harness.broker.acked(0), harness.broker.acked(1)), (0, 0), "nothing stored, nothing acknowledged");
    assert_eq!(harness.broker.faults().acks(), 0);
    running.crash().await;
}

#[tokio::test]
async fn a_rejected_write_stops_the_runtime_without_acknowledging() {
    let mut harness = Harness::new(MemoryBroker::new(2), 5);
    harness.store.faults().reject(true);
    let running = harness.start();
    harness.publish(10).await;
    let result = running.finished().await;
    assert!(matches!(result, Err(RunError::Rejected(_))), "{result:?}");
    assert_eq!(harness.broker.faults().acks(), 0);
}

#[tokio::test]
async fn a_gap_in_deliveries_resumes_after_the_last_message_taken() {
    let mut harness = Harness::new(MemoryBroker::new(2).with_stream_sequence(), 6);
    let running = harness.start();
    harness.publish(20).await;
    harness.wait_until_stored().await;
    for _ in 0..3 {
        harness.broker.faults().lose_next_delivery(0);
        harness.broker.faults().lose_next_delivery(1);
        harness.publish(20).await;
        harness.wait_until_stored().await;
    }
    running.stop().await.expect("a clean stop");
    harness.assert_store_is_the_truth().await;
}

#[tokio::test]
async fn redelivered_messages_are_skipped_and_copies_inside_the_window_count_once() {
    let mut harness = Harness::new(MemoryBroker::new(2).without_dedup(), 7);
    harness.dedup_window = Some(Duration::from_secs(120));
    let running = harness.start();
    let (id, payload) = harness.publish_to(1).await;
    harness.publish(10).await;
    // A publisher retrying: the same message id stored a second time.
    harness.send(1, &id, payload.clone()).await;
    harness.wait_until_stored().await;
    assert_eq!(running.metric("gallop_messages_total{outcome=\"duplicate\"}"), 1.0);
    running.stop().await.expect("a clean stop");

    // After a restart the window is rebuilt from the messages before the stored position:
    // a copy arriving now still counts once.
    let running = harness.start();
    harness.send(1, &id, payload).await;
    harness.publish(5).await;
    harness.wait_until_stored().await;
    assert_eq!(running.metric("gallop_messages_total{outcome=\"duplicate\"}"), 1.0, "the copy after the restart");
    running.stop().await.expect("a clean stop");
    harness.assert_store_is_the_truth().await;
}

/// The dedup window is broker time (Kafka's message timestamps), not the processor's clock:
/// a copy the broker stamped inside the window after the first is dropped; one stamped past
/// it is a message of its own and counts, as Kafka keeps it (documented for
/// `kafka.dedup_window`).
#[tokio::test]
async fn the_dedup_window_is_measured_in_the_brokers_time() {
    let mut harness = Harness::new(MemoryBroker::new(2).without_dedup(), 11);
    harness.dedup_window = Some(Duration::from_secs(120));
    let start = u64::try_from(now_ms()).expect("a clock after 1970");
    harness.broker.set_clock_ms(start);
    let running = harness.start();
    let (id, payload) = harness.publish_to(1).await;
    harness.broker.set_clock_ms(start + 119_000);
    harness.send(1, &id, payload.clone()).await;
    harness.broker.set_clock_ms(start + 240_000);
    harness.publish_copy(1, &id, payload).await;
    harness.publish(5).await;
    harness.wait_until_stored().await;
    assert_eq!(running.metric("gallop_messages_total{outcome=\"duplicate\"}"), 1.0, "only the copy inside the window");
    running.stop().await.expect("a clean stop");
    harness.assert_store_is_the_truth().await;
}
