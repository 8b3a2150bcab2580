//! Stored positions outside the broker's log: refused by default, gone past when accepted,
//! and not mistaken for a loss when a partition was merely idle.

use gallop_broker::MemoryBroker;
use gallop_pipeline::{GapKind, RunError};

use crate::harness::Harness;

async fn processed_then_stopped(harness: &mut Harness) {
    let running = harness.start();
    harness.publish(20).await;
    harness.wait_until_stored().await;
    running.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn messages_removed_before_they_were_processed_are_refused() {
    let mut harness = Harness::new(MemoryBroker::new(2), 11);
    processed_then_stopped(&mut harness).await;
    // More messages arrive while no processor runs, and retention removes some of them.
    harness.publish(20).await;
    let first_unprocessed = harness.store.marks()[&0].position + 1;
    harness.broker.remove_before(first_unprocessed + 2);
    let result = harness.start().finished().await;
    let Err(RunError::LogGap(gap)) = result else { panic!("a log gap, got {result:?}") };
    assert_eq!(gap.kind, GapKind::Removed);
    assert_eq!(gap.stored, first_unprocessed - 1);
    let text = gap.to_string();
    assert!(
        text.contains(&format!("partition {}", gap.partition)) && text.contains("consumer.accept_log_gaps"),
        "{text}"
    );
}

#[tokio::test]
async fn an_accepted_gap_is_counted_and_not_refused_again() {
    let mut harness = Harness::new(MemoryBroker::new(1), 12);
    processed_then_stopped(&mut harness).await;
    harness.publish(10).await;
    let stored = harness.store.marks()[&0].position;
    harness.broker.remove_before(stored + 4);
    harness.accept_log_gaps = true;
    let running = harness.start();
    harness.publish(5).await;
    harness.wait_until_stored().await;
    assert_eq!(running.metric("gallop_log_gaps_total{kind=\"removed\"}"), 1.0);
    assert_eq!(running.metric("gallop_log_gap_positions_total{kind=\"removed\"}"), 3.0);
    running.stop().await.expect("a clean stop");
    harness.accept_log_gaps = false;
    let running = harness.start();
    harness.publish(5).await;
    harness.wait_until_stored().await;
    running.stop().await.expect("the stored position is inside the log again");
}

#[tokio::test]
async fn a_recreated_log_is_refused_and_when_accepted_counts_in_a_new_epoch() {
    let mut harness = Harness::new(MemoryBroker::new(1), 13);
    processed_then_stopped(&mut harness).await;
    let before = harness.store.cells();
    harness.broker.recreate();
    harness.published.clear();
    harness.publish(3).await;
    let result = harness.start().finished().await;
    let Err(RunError::LogGap(gap)) = result else { panic!("a log gap, got {result:?}") };
    assert_eq!(gap.kind, GapKind::Recreated);

    harness.accept_log_gaps = true;
    let running = harness.start();
    harness.wait_until_stored().await;
    assert_eq!(running.metric("gallop_log_gaps_total{kind=\"recreated\"}"), 1.0);
    running.stop().await.expect("a clean stop");
    assert_eq!(harness.store.marks()[&0].epoch, 1, "positions of the new log are marked in a new epoch");
    let total = |cells: &std::collections::BTreeMap<_, gallop_pipeline::Cell>| {
        cells.iter().filter(|(k, _): &(&crate::harness::Key, _)| k.2 == "total").map(|(_, c)| c.events).sum::<u64>()
    };
    let new_events: u64 = total(&harness.truth().await);
    assert_eq!(total(&harness.store.cells()), total(&before) + new_events, "the new log's events counted once");

    // A later start without the switch finds the new epoch's mark inside the log.
    harness.accept_log_gaps = false;
    let running = harness.start();
    harness.publish(2).await;
    harness.wait_until_stored().await;
    running.stop().await.expect("no gap any more");
}

#[tokio::test]
async fn an_idle_partition_is_not_mistaken_for_a_loss_when_retention_passes_it() {
    // One stream sequence over both partitions: partition 1 gets one message, then only
    // partition 0 gets traffic, and retention removes everything partition 1 ever had.
    let mut harness = Harness::new(MemoryBroker::new(2).with_stream_sequence(), 14);
    let running = harness.start();
    harness.publish_to(1).await;
    for _ in 0..10 {
        harness.publish_to(0).await;
    }
    harness.wait_until_stored().await;
    // The caught-up position of the idle partition is stored with the flushes.
    let last = harness.broker.messages(0).last().map_or(0, |m| m.offset);
    while harness.store.marks().get(&1).is_none_or(|m| m.position < last) {
        harness.store.wait_for_writes(harness.store.writes() + 1).await;
    }
    running.stop().await.expect("a clean stop");
    harness.broker.remove_before(last);
    let running = harness.start();
    harness.publish_to(1).await;
    harness.wait_until_stored().await;
    running.stop().await.expect("no gap: partition 1 had nothing between its mark and the log's start");
    harness.assert_store_is_the_truth().await;
}

#[tokio::test]
async fn a_log_end_reported_one_short_is_not_taken_for_a_recreated_log() {
    let mut harness = Harness::new(MemoryBroker::new(1), 15);
    processed_then_stopped(&mut harness).await;
    harness.broker.faults().report_end_one_short(true);
    // The check runs before the runtime takes anything: a stop right away reports it.
    harness.start().stop().await.expect("the stored message is in the log: no gap");
    let running = harness.start();
    harness.publish(3).await;
    harness.wait_until_stored().await;
    running.stop().await.expect("a clean stop");
    harness.assert_store_is_the_truth().await;
}
