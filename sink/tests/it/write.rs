//! Writing flushes: one atomic insert with positions, hour/day rows, leaderboards, retries.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use gallop_event::EventRecord;
use gallop_pipeline::Mark;
use gallop_sink::{Reader, TimeRange, Writer, AGGREGATES_TABLE};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{event, marks, message, processor, query, TestDb};

/// 2026-11-23 10:58:00 UTC, in ms.
const T0: i64 = 1_795_431_480_000;

/// Events over four minutes across an hour boundary, on two partitions.
fn sample() -> Vec<(u32, u64, Vec<EventRecord>)> {
    let mut batches = Vec::new();
    let paths = ["/", "/pricing", "/docs"];
    for i in 0..12u64 {
        let partition = (i % 2) as u32;
        let ts = T0 + (i as i64) * 20_000; // every 20 s: 10:58:00 .. 11:01:40
        let mut events = vec![event("a.test", ts, "pageview", paths[(i % 3) as usize], i % 5)];
        if i % 4 == 0 {
            let mut signup = event("a.test", ts + 1, "signup", "/pricing", i % 5);
            signup.value = Some(2.5);
            events.push(signup);
        }
        batches.push((partition, 10 + i, events));
    }
    batches
}

#[tokio::test]
async fn a_flush_lands_with_its_positions_and_reads_back_at_every_granularity() {
    let db = TestDb::new("write");
    let ch = db.migrated().await;
    let writer = Writer::new(ch.clone(), "EVENTS", &db.config);
    let mut processor = processor();
    let batches = sample();
    for (partition, position, events) in &batches {
        processor.process_message(*partition, *position, &message(events), T0 + 300_000).expect("not full");
    }
    let delta = processor.flush(0);
    let report = writer.write(&delta, &marks(&delta), T0 / 1000).await.expect("write");
    assert_eq!(report.attempts, 1);

    // Positions: the highest message of each partition.
    let positions = ch.positions("EVENTS", &[0, 1, 2]).await.expect("positions");
    assert_eq!(positions, BTreeMap::from([(0, Mark::at(20)), (1, Mark::at(21))]));
    assert!(ch.positions("OTHER", &[0, 1]).await.expect("positions").is_empty());

    // Truth, from the events themselves.
    let all: Vec<&EventRecord> = batches.iter().flat_map(|(_, _, e)| e).collect();
    let mut by_path: BTreeMap<&str, (u64, BTreeSet<u64>)> = BTreeMap::new();
    for e in &all {
        let entry = by_path.entry(&e.path).or_default();
        entry.0 += 1;
        entry.1.insert(e.visitor);
    }
    let visitors: BTreeSet<u64> = all.iter().map(|e| e.visitor).collect();
    let value: f64 = all.iter().filter_map(|e| e.value).sum();

    let reader = Reader::new(ch.clone());
    // The same numbers from minute rows only, from hour + minute rows, and from day rows.
    for (from, to) in [
        (T0 / 1000, T0 / 1000 + 240),                                       // 10:58..11:02: minutes
        (T0 / 1000 - 58 * 60 - 3600, T0 / 1000 + 62 * 60),                  // 09:00..12:00: hours
        (T0 / 1000 - 10 * 3600 - 58 * 60, T0 / 1000 + 14 * 3600 - 58 * 60), // the whole day
    ] {
        let range = TimeRange::new(from, to).expect("range");
        let headline = reader.headline("a.test", range).await.expect("headline");
        assert_eq!(headline.events, all.len() as u64, "{range:?}");
        assert_eq!(headline.pageviews, 12, "{range:?}");
        assert_eq!(headline.visitors, visitors.len() as u64, "{range:?}");
        assert_eq!((headline.value, headline.value_events), (value, 3), "{range:?}");
        let breakdown = reader.breakdown("a.test", range, "path", 10).await.expect("breakdown");
        let got: BTreeMap<&str, (u64, u64)> =
            breakdown.rows.iter().map(|r| (r.value.as_str(), (r.events, r.visitors))).collect();
        let want: BTreeMap<&str, (u64, u64)> = by_path.iter().map(|(p, (n, v))| (*p, (*n, v.len() as u64))).collect();
        assert_eq!(got, want, "{range:?}");
    }

    // Minute, hour and day rows of one value agree with each other in SQL too.
    let table = format!("`{}`.`{AGGREGATES_TABLE}`", db.config.database);
    let per_granularity = query(&format!(
        "SELECT granularity, sumMerge(events), uniqHLL12Merge(visitors) FROM {table} \
         WHERE site = 'a.test' AND kind = 'rollup' AND dimension = 'total' GROUP BY granularity ORDER BY granularity \
         FORMAT TSV"
    ));
    let n = all.len();
    let v = visitors.len();
    assert_eq!(per_granularity, format!("minute\t{n}\t{v}\nhour\t{n}\t{v}\nday\t{n}\t{v}\n"));
    let hours = query(&format!(
        "SELECT toString(bucket), sumMerge(events) FROM {table} WHERE site = 'a.test' AND kind = 'rollup' \
         AND granularity = 'hour' AND dimension = 'total' GROUP BY bucket ORDER BY bucket FORMAT TSV"
    ));
    // 10:58:00..10:59:40 → 6 pageviews + 2 signups (i = 0, 4); 11:00..11:01:40 → 6 + 1 (i = 8).
    assert_eq!(hours, "2026-11-23 10:00:00\t8\n2026-11-23 11:00:00\t7\n");
}

#[tokio::test]
async fn server_merges_keep_totals_and_leaderboards_stay_readable() {
    let db = TestDb::new("merge");
    let ch = db.migrated().await;
    let writer = Writer::new(ch.clone(), "EVENTS", &db.config);
    let referrers = ["https://a.example/", "https://b.example/", "https://a.example/", "https://c.example/"];
    for round in 0..3u64 {
        let mut processor = processor();
        let events: Vec<EventRecord> = (0..40u64)
            .map(|i| {
                let mut e = event("m.test", T0 + i as i64 * 1000, "pageview", "/", i + round * 100);
                e.referrer = referrers[(i % 4) as usize].to_owned();
                e
            })
            .collect();
        processor.process_message(0, round + 1, &message(&events), T0 + 60_000).expect("not full");
        let delta = processor.flush(0);
        writer.write(&delta, &marks(&delta), T0 / 1000).await.expect("write");
    }
    let table = format!("`{}`.`{AGGREGATES_TABLE}`", db.config.database);
    query(&format!("OPTIMIZE TABLE {table} FINAL"));
    let reader = Reader::new(ch.clone());
    let range = TimeRange::new(T0 / 1000, T0 / 1000 + 120).expect("range");
    let headline = reader.headline("m.test", range).await.expect("headline");
    // 120 distinct visitors: what ClickHouse's own uniqHLL12 says over the raw ids.
    let ids: Vec<String> = (0..3u64).flat_map(|r| (0..40u64).map(move |i| (i + r * 100).to_string())).collect();
    let expected =
        query(&format!("SELECT uniqHLL12(toUInt64(x)) FROM (SELECT arrayJoin([{}]) AS x) FORMAT TSV", ids.join(",")));
    assert_eq!((headline.events, headline.visitors.to_string()), (120, expected.trim().to_owned()));
    // Rollup rows of the three flushes merged into one per key; leaderboard rows did not.
    let kinds = query(&format!(
        "SELECT kind, count() FROM {table} WHERE site = 'm.test' AND granularity = 'minute' AND dimension IN ('total', 'referrer') \
         GROUP BY kind ORDER BY kind FORMAT TSV"
    ));
    assert_eq!(kinds, "rollup\t1\nleaderboard\t3\n");
    let leaders = reader.leaderboard("m.test", range, "referrer", 2).await.expect("leaderboard");
    let top: Vec<(&str, u64, u64)> = leaders.iter().map(|l| (l.value.as_str(), l.count, l.error)).collect();
    assert_eq!(top[0], ("https://a.example/", 60, 0));
    assert_eq!(top.len(), 2);
    assert_eq!(top[1].1, 30);
    assert_eq!(ch.positions("EVENTS", &[0]).await.expect("positions"), BTreeMap::from([(0, Mark::at(3))]));
}

/// A TCP proxy to the test ClickHouse that can refuse service and cut live connections.
struct Proxy {
    address: SocketAddr,
    up: Arc<AtomicBool>,
}

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let up = Arc::new(AtomicBool::new(true));
        let target: SocketAddr = crate::common::clickhouse_url()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("TEST_GALLOP_CLICKHOUSE_URL is http://host:port");
        let flag = Arc::clone(&up);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    continue; // dropped: connection reset
                }
                let flag = Arc::clone(&flag);
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    tokio::pin!(copy);
                    loop {
                        tokio::select! {
                            _ = &mut copy => return,
                            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                                if !flag.load(Ordering::SeqCst) { return; }
                            }
                        }
                    }
                });
            }
        });
        Self { address, up }
    }
}

#[tokio::test]
async fn an_outage_is_retried_until_the_insert_lands_once() {
    let db = TestDb::new("outage");
    db.migrated().await;
    let proxy = Proxy::start().await;
    let mut config = db.config.clone();
    config.url = format!("http://{}", proxy.address);
    config.request_timeout = Duration::from_secs(2);
    let ch = gallop_sink::ClickHouse::connect(&config).await.expect("connect through the proxy");
    let writer = Arc::new(Writer::new(ch.clone(), "EVENTS", &config));
    let status = writer.status();

    let mut processor = processor();
    let events: Vec<EventRecord> = (0..50u64).map(|i| event("o.test", T0 + i as i64, "pageview", "/", i)).collect();
    processor.process_message(3, 99, &message(&events), T0).expect("not full");
    let delta = processor.flush(0);

    proxy.up.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await; // live connections are cut
    let task = tokio::spawn({
        let writer = Arc::clone(&writer);
        async move { writer.write(&delta, &marks(&delta), T0 / 1000).await }
    });
    // Until an attempt has failed and the writer is retrying: it waits for ClickHouse.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while status.retries.load(Ordering::Relaxed) < 1 {
        assert!(tokio::time::Instant::now() < deadline, "the write was not retried within 30 s");
        if task.is_finished() {
            panic!("the write must wait for ClickHouse, it ended with {:?}", task.await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!task.is_finished(), "the write goes on retrying while ClickHouse is away");
    assert!(!status.healthy.load(Ordering::Relaxed));
    proxy.up.store(true, Ordering::SeqCst);
    let report =
        tokio::time::timeout(Duration::from_secs(30), task).await.expect("lands").expect("task").expect("write");
    assert!(report.attempts >= 2, "{report:?}");
    assert!(status.healthy.load(Ordering::Relaxed));

    let direct = db.connect().await;
    let range = TimeRange::new(T0 / 1000 - 60, T0 / 1000 + 60).expect("range");
    let headline = Reader::new(direct.clone()).headline("o.test", range).await.expect("headline");
    assert_eq!(headline.events, 50, "stored exactly once");
    assert_eq!(direct.positions("EVENTS", &[3]).await.expect("positions"), BTreeMap::from([(3, Mark::at(99))]));
}

#[tokio::test]
async fn the_newest_mark_of_a_partition_wins_across_epochs_and_older_marker_formats() {
    let db = TestDb::new("epochs");
    let ch = db.migrated().await;
    let writer = Writer::new(ch.clone(), "EVENTS", &db.config);
    // A marker as Gallop wrote them before epochs existed: `<partition>/<position>`.
    let table = format!("`{}`.`{AGGREGATES_TABLE}`", db.config.database);
    let columns = "site, kind, granularity, bucket, dimension, value";
    query(&format!(
        "INSERT INTO {table} ({columns}) VALUES ('', 'position', 'minute', now(), 'EVENTS', '0000000001/00000000000000000900')"
    ));
    assert_eq!(ch.positions("EVENTS", &[1]).await.expect("positions"), BTreeMap::from([(1, Mark::at(900))]));
    let write = |marks: BTreeMap<u32, Mark>| {
        let writer = &writer;
        async move { writer.write(&gallop_processor::Delta::default(), &marks, T0 / 1000).await.expect("write") }
    };
    write(BTreeMap::from([(1, Mark { epoch: 0, position: 901, time_ms: T0 })])).await;
    // The log was recreated and an operator accepted it: positions start again at 1.
    write(BTreeMap::from([(1, Mark { epoch: 1, position: 3, time_ms: T0 + 5 })])).await;
    write(BTreeMap::from([(2, Mark { epoch: 0, position: 7, time_ms: 0 })])).await;
    assert_eq!(
        ch.positions("EVENTS", &[1, 2]).await.expect("positions"),
        BTreeMap::from([(1, Mark { epoch: 1, position: 3, time_ms: T0 + 5 }), (2, Mark::at(7))])
    );
}

#[tokio::test]
async fn a_rejected_insert_is_a_fatal_error_not_a_retry_loop() {
    let db = TestDb::new("reject");
    let ch = db.migrated().await;
    let table = format!("`{}`.`{AGGREGATES_TABLE}`", db.config.database);
    query(&format!("ALTER TABLE {table} DROP COLUMN `top`"));
    let writer = Writer::new(ch, "EVENTS", &db.config);
    let mut processor = processor();
    processor.process_message(0, 1, &message(&[event("r.test", T0, "pageview", "/", 1)]), T0).expect("not full");
    let delta = processor.flush(0);
    let err = tokio::time::timeout(Duration::from_secs(20), writer.write(&delta, &marks(&delta), T0 / 1000))
        .await
        .expect("no retry loop")
        .expect_err("rejected");
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("insert of"), "{err}");
}

#[tokio::test]
async fn a_stored_sum_that_is_not_finite_reads_as_nan_instead_of_failing_the_site() {
    // Rows like this were written before values were bounded: two values of 1.797e308
    // summed to +inf, which ClickHouse prints as null.
    let db = TestDb::new("inf");
    let ch = db.migrated().await;
    let writer = Writer::new(ch.clone(), "EVENTS", &db.config);
    let mut processor = processor();
    let mut e = event("inf.test", T0, "purchase", "/checkout", 1);
    e.value = Some(5.0);
    processor.process_message(0, 1, &message(&[e]), T0).expect("not full");
    let delta = processor.flush(0);
    writer.write(&delta, &marks(&delta), T0 / 1000).await.expect("write");
    let table = format!("`{}`.`{AGGREGATES_TABLE}`", db.config.database);
    query(&format!(
        "INSERT INTO {table} (site, kind, granularity, bucket, dimension, value, events, value_sum, value_count) \
         SELECT 'inf.test', 'rollup', 'minute', toDateTime({}), 'currency', '', sumState(toUInt64(2)), \
         sumState(x), sumState(toUInt64(2)) FROM (SELECT arrayJoin([1.797e308, 1.797e308]) AS x)",
        T0 / 1000
    ));
    let reader = Reader::new(ch.clone());
    let range = TimeRange::new(T0 / 1000, T0 / 1000 + 60).expect("range");
    let headline = reader.headline("inf.test", range).await.expect("one bad row does not fail the headline");
    assert_eq!(headline.events, 1);
    assert!(headline.value.is_nan(), "{}", headline.value);
    let rows = reader.breakdown("inf.test", range, "path", 10).await.expect("breakdown");
    assert_eq!(rows.rows.iter().map(|r| (r.value.as_str(), r.value_sum)).collect::<Vec<_>>(), [("/checkout", 5.0)]);
}

#[tokio::test]
async fn open_visits_read_back_from_compact_rows_and_older_json_rows() {
    let db = TestDb::new("visits");
    let ch = db.migrated().await;
    let writer = Writer::new(ch.clone(), "EVENTS", &db.config);
    let visit = |partition: u32, visitor: u64, seq: u64| gallop_processor::SessionState {
        partition,
        site: "a.test".into(),
        visitor,
        seq,
        bucket: (T0 / 60_000) as u32,
        first_ts: T0,
        last_ts: T0 + 1_000 * seq as i64,
        interactive: 1,
        // Strings past ASCII and a byte that is not printable reach the binary value.
        entry_page: format!("/ünïcode/{}", visitor % 7).into(),
        exit_page: "/\u{1}x".into(),
        exit_ts: T0,
        source: "Google".into(),
        country: "DE".into(),
        device: "Desktop".into(),
        browser: "Firefox".into(),
        os: "".into(),
        pages: vec![gallop_processor::EngagedPage { path: "/p".into(), scroll_depth: 255, bucket: 1 }],
        ended: false,
    };
    // 600 visits of partition 0 (three rows) and one of partition 1; then newer versions
    // of two of them in a second flush.
    let first: Vec<_> = (0..600).map(|v| visit(0, v, 1)).chain([visit(1, 9, 1)]).collect();
    let watermarks = BTreeMap::from([(0, T0 + 10_000), (1, T0 + 10_000)]);
    let delta = gallop_processor::Delta {
        sessions: gallop_processor::ChangedVisits::from_states(&first),
        watermarks: watermarks.clone(),
        ..Default::default()
    };
    writer.write(&delta, &BTreeMap::from([(0, Mark::at(1)), (1, Mark::at(1))]), T0 / 1000).await.expect("write");
    let newer = vec![visit(0, 5, 2), visit(1, 9, 3)];
    let delta = gallop_processor::Delta {
        sessions: gallop_processor::ChangedVisits::from_states(&newer),
        watermarks,
        ..Default::default()
    };
    writer.write(&delta, &BTreeMap::from([(0, Mark::at(2)), (1, Mark::at(2))]), T0 / 1000).await.expect("write");
    // A row as Gallop wrote them before the compact form: one visit as JSON.
    let table = format!("`{}`.`{AGGREGATES_TABLE}`", db.config.database);
    let old = visit(1, 77, 1);
    let json = serde_json::to_string(&old).expect("json").replace('\\', "\\\\").replace('\'', "\\'");
    query(&format!(
        "INSERT INTO {table} (site, kind, granularity, bucket, dimension, value) VALUES \
         ('', 'position', 'minute', toDateTime({}, 'UTC'), 'EVENTS#sessions', '0000000001/{json}')",
        T0 / 1000
    ));

    let open = ch.open_sessions("EVENTS", &[0, 1], 3_600_000).await.expect("open visits");
    let mut expected: Vec<_> = first.into_iter().chain(newer).chain([old]).collect();
    let key = |s: &gallop_processor::SessionState| (s.partition, s.visitor, s.seq);
    expected.sort_by_key(key);
    let mut stored = open.sessions;
    stored.sort_by_key(key);
    assert_eq!(stored.len(), expected.len());
    assert!(stored == expected, "the stored visits differ from those written");
    let stored_rows = query(&format!(
        "SELECT count() FROM {table} WHERE kind = 'position' AND dimension = 'EVENTS#sessions' FORMAT TSV"
    ));
    // 601 visits in 4 rows (256 per row and partition), 2 in 2, the JSON row.
    assert_eq!(stored_rows.trim(), "7");
}
