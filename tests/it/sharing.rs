//! Processors that share the partitions by themselves (`consumer.assignment = "auto"`), on
//! both brokers: shares, a SIGKILLed processor's partitions taken over (and how fast), a new
//! processor given a share, a SIGTERMed one handing over after its last flush, a SIGSTOPped
//! one writing nothing for what it lost — every cell exact, and the position markers in
//! ClickHouse showing that no two owners' writes of a partition overlapped.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use crate::{
    brokers::Kind,
    pipeline::{
        clickhouse_url, on_both_brokers, send, send_workload, sql, workload, Pipeline, Sent, LARGE, PARTITIONS,
    },
    terminate,
};

on_both_brokers!(
    three_processors_share_eight_partitions_and_count_two_hundred_thousand_events_exactly,
    partitions_move_through_a_kill_a_join_a_sigterm_and_a_sigstop,
);

/// The one large run per broker: three processors start on the default configuration
/// (`consumer.assignment = "auto"`), share the eight partitions fairly, and every cell of
/// 200 000 events is exact.
async fn three_processors_share_eight_partitions_and_count_two_hundred_thousand_events_exactly(kind: Kind) {
    let mut pipeline = Pipeline::start(kind, clickhouse_url()).await;
    let mut members = Vec::new();
    for name in ["p0", "p1", "p2"] {
        members.push(pipeline.start_member(name).await);
    }
    let (took, shares) = wait_until_shared(&pipeline, &[], &members, true, Duration::from_secs(60)).await;
    println!("{kind:?}: 3 processors share {PARTITIONS} partitions fairly after {took:?}: {shares:?}");
    let (all, sender) = send_workload(&pipeline, 1, LARGE);
    sender.await.expect("sending finished");
    pipeline.wait_for(all.len()).await;
    pipeline.check(&all).await;
    assert_writes_follow_on(&markers(&pipeline).await);
}

/// What each processor with a status address says it owns (`/ready`), by index; a processor
/// that does not answer within a second (stopped) or is not ready owns nothing here.
async fn owners(pipeline: &Pipeline) -> BTreeMap<usize, Vec<u32>> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().expect("HTTP client");
    let mut owners = BTreeMap::new();
    for (index, address) in pipeline.status.iter().enumerate() {
        let Some(address) = address else { continue };
        let Ok(response) = client.get(format!("http://{address}/ready")).send().await else { continue };
        let Ok(body) = response.text().await else { continue };
        let Some(list) = body.split("owns partitions [").nth(1).and_then(|rest| rest.split(']').next()) else {
            continue;
        };
        let owned = list.split(", ").filter(|p| !p.is_empty()).map(|p| p.parse().expect("a partition")).collect();
        owners.insert(index, owned);
    }
    owners
}

/// Waits until the processors other than `away` own every partition once among them, and
/// every one of `expect` owns at least one — with `fair`, in shares that differ by at most
/// one (members joining one by one take more at first, then give up what is above their
/// share); returns how long that took and the shares.
async fn wait_until_shared(
    pipeline: &Pipeline,
    away: &[usize],
    expect: &[usize],
    fair: bool,
    within: Duration,
) -> (Duration, BTreeMap<usize, Vec<u32>>) {
    let started = Instant::now();
    loop {
        let shares: BTreeMap<usize, Vec<u32>> =
            owners(pipeline).await.into_iter().filter(|(i, _)| !away.contains(i)).collect();
        let all: Vec<u32> = shares.values().flatten().copied().collect();
        let distinct: BTreeSet<u32> = all.iter().copied().collect();
        let everyone = expect.iter().all(|i| shares.get(i).is_some_and(|owned| !owned.is_empty()));
        let sizes: Vec<usize> = shares.values().map(Vec::len).collect();
        let even = sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0) <= 1;
        if all.len() == PARTITIONS as usize && distinct.len() == PARTITIONS as usize && everyone && (even || !fair) {
            return (started.elapsed(), shares);
        }
        assert!(started.elapsed() < within, "partitions not shared within {within:?}: {shares:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One position marker as written where partitions are shared.
#[derive(Debug, Clone)]
struct Written {
    member: String,
    after: u64,
    position: u64,
}

/// Every claimed position marker of the pipeline's stream, per partition, in order.
async fn markers(pipeline: &Pipeline) -> BTreeMap<u32, Vec<Written>> {
    let query = format!(
        "SELECT value FROM {} WHERE site = '' AND kind = 'position' AND granularity = 'minute' AND dimension = '{}' \
         FORMAT TSV",
        pipeline.table(),
        pipeline.broker.events()
    );
    let mut markers: BTreeMap<u32, Vec<Written>> = BTreeMap::new();
    for line in sql(&pipeline.clickhouse_url, &query).await.lines() {
        let (partition, mark, claim) =
            gallop_sink::parse_marker_claim(line).unwrap_or_else(|| panic!("a marker value: {line:?}"));
        let claim = claim.unwrap_or_else(|| panic!("every marker of shared partitions names its writer: {line:?}"));
        let written = Written { member: claim.member.to_string(), after: claim.after, position: mark.position };
        markers.entry(partition).or_default().push(written);
    }
    for list in markers.values_mut() {
        list.sort_by_key(|w| (w.after, w.position));
    }
    markers
}

/// No two writes of a partition overlap and none leaves a hole: the markers that moved a
/// partition account for ranges `(after, position]` that follow each other exactly.
fn assert_writes_follow_on(markers: &BTreeMap<u32, Vec<Written>>) {
    for (partition, list) in markers {
        let mut at = 0;
        for written in list.iter().filter(|w| w.position > w.after) {
            assert_eq!(
                written.after, at,
                "partition {partition}: a write by {} continues {} but the partition stood at {at} — owners' writes \
                 interleaved: {list:?}",
                written.member, written.after
            );
            at = written.position;
        }
    }
}

/// Sends `events` and, once a flush of them has landed, does `step`; returns when all are sent.
async fn while_sending(pipeline: &mut Pipeline, events: &[Sent], step: impl AsyncFnOnce(&mut Pipeline)) {
    let before = pipeline.landed().await;
    let sending = {
        let (address, events) = (pipeline.address.clone(), events.to_vec());
        tokio::spawn(async move { send(&address, &events).await })
    };
    pipeline.wait_until_landed_above(before).await;
    step(pipeline).await;
    sending.await.expect("sending finished");
}

fn signal(pipeline: &mut Pipeline, index: usize, signal: &str) {
    let pid = pipeline.processor(index).id().expect("running").to_string();
    let status = std::process::Command::new("kill").args([signal, &pid]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill {signal} {pid}");
}

async fn partitions_move_through_a_kill_a_join_a_sigterm_and_a_sigstop(kind: Kind) {
    let mut pipeline = Pipeline::start(kind, clickhouse_url()).await;
    let ttl = pipeline.broker.lease_ttl();
    // The group's first assignment on Tansu took ~20 s in an earlier measurement.
    let settle = Duration::from_secs(60);
    let mut members = Vec::new();
    for name in ["p0", "p1", "p2"] {
        members.push(pipeline.start_member(name).await);
    }
    wait_until_shared(&pipeline, &[], &members, true, settle).await;

    let (main, late) = workload(21, 24_000);
    let all: Vec<Sent> = main.iter().chain(&late).cloned().collect();
    let slices: Vec<&[Sent]> = all.chunks(all.len().div_ceil(4)).collect();
    pipeline.wait_for_table().await;

    // SIGKILL: the dead processor's partitions are owned again within the TTL and 5 s.
    while_sending(&mut pipeline, slices[0], async |pipeline| {
        pipeline.kill_processor(members[0]).await;
        let (took, shares) = wait_until_shared(pipeline, &[], &[members[1], members[2]], false, settle).await;
        println!("{kind:?}: a SIGKILLed processor's partitions were owned again after {took:?} (lease TTL {ttl:?}): {shares:?}");
        assert!(took <= ttl + Duration::from_secs(5), "taken over after {took:?}, TTL {ttl:?}");
    })
    .await;

    // A fourth processor joins: it gets a share.
    while_sending(&mut pipeline, slices[1], async |pipeline| {
        let joined = pipeline.start_member("p3").await;
        members.push(joined);
        let (took, shares) = wait_until_shared(pipeline, &[], &[members[1], members[2], joined], true, settle).await;
        println!("{kind:?}: a joining processor got a share after {took:?}: {shares:?}");
    })
    .await;

    // SIGTERM: the last flush, then the partitions go to the others.
    while_sending(&mut pipeline, slices[2], async |pipeline| {
        let leaving = members[1];
        assert_eq!(terminate(pipeline.processor(leaving), Duration::from_secs(60)).await, Some(0), "clean stop");
        pipeline.forget_processor(leaving);
        let (took, shares) = wait_until_shared(pipeline, &[], &[members[2], members[3]], true, settle).await;
        println!("{kind:?}: a SIGTERMed processor's partitions were owned again after {took:?}: {shares:?}");
    })
    .await;

    // SIGSTOP past the TTL: the others take its partitions; after SIGCONT it writes nothing
    // for them (the markers below would show an overlap).
    while_sending(&mut pipeline, slices[3], async |pipeline| {
        let frozen = members[2];
        signal(pipeline, frozen, "-STOP");
        let (took, shares) = wait_until_shared(pipeline, &[frozen], &[members[3]], false, settle).await;
        println!("{kind:?}: a SIGSTOPped processor's partitions were owned again after {took:?}: {shares:?}");
        signal(pipeline, frozen, "-CONT");
        let (took, shares) = wait_until_shared(pipeline, &[], &[frozen, members[3]], true, settle).await;
        println!("{kind:?}: after SIGCONT the processor got a share again after {took:?}: {shares:?}");
    })
    .await;

    pipeline.wait_for(all.len()).await;
    pipeline.check(&all).await;
    let markers = markers(&pipeline).await;
    assert_writes_follow_on(&markers);
    let moved = markers.values().filter(|list| list.iter().map(|w| &w.member).collect::<BTreeSet<_>>().len() > 1);
    assert!(moved.count() >= 2, "partitions moved between processors: {markers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_static_lists_are_refused_naming_both_processors() {
    let mut pipeline =
        Pipeline::new(crate::brokers::Broker::new(Kind::Nats, &crate::pipeline::tag()), clickhouse_url());
    let pinned = |member: &str, list: &str| {
        vec![
            ("GALLOP_CONSUMER__ASSIGNMENT", "static".to_owned()),
            ("GALLOP_CONSUMER__PARTITIONS", list.to_owned()),
            ("GALLOP_CONSUMER__MEMBER", member.to_owned()),
        ]
    };
    let (left, address) = pipeline.spawn(&["process"], &pinned("left", "[0,1,2,3]"), Some("listening")).await;
    pipeline.status.push(address);
    let started = Instant::now();
    while owners(&pipeline).await.get(&0).is_none_or(|owned| owned.len() != 4) {
        assert!(started.elapsed() < Duration::from_secs(30), "the first processor took its list");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        pipeline.command(&["process"], &pinned("right", "[3,4]")).output(),
    )
    .await
    .expect("refused within 30 s")
    .expect("gallop runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "an overlapping list is refused: {stderr}");
    assert!(
        stderr.contains("partition 3 of consumer.partitions is held by live member left")
            && stderr.contains("member right refuses to start"),
        "the error names the partition and both processors: {stderr}"
    );
    drop(left);
}
