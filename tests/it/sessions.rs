//! Visits through the whole pipeline: seeded visitors with a known visit structure (gaps
//! just under, at and just over the timeout; events out of order inside a visit) sent
//! to `gallop ingest` while `gallop process` is SIGKILLed five times; the `session:*` rows
//! ClickHouse holds must equal a truth computed here from that structure.

use std::{collections::BTreeMap, time::Duration};

use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::{
    brokers::Kind,
    pipeline::{clickhouse_url, now_ms, on_both_brokers, sql, Pipeline},
};

/// The visit timeout the processor runs with here (`processor.session_timeout`).
const TIMEOUT: i64 = 120_000;
const DAY: i64 = 86_400_000;

#[derive(Debug, Clone)]
struct Event {
    id: String,
    visitor: u64,
    ts: i64,
    name: &'static str,
    interactive: bool,
    path: String,
}

impl Event {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "site": "s.test",
            "name": self.name,
            "url": format!("https://s.test{}", self.path),
            "timestamp": self.ts,
            "visitor": format!("sv{}", self.visitor),
            "interactive": self.interactive,
        })
    }
}

/// Visits (events in time order) and the order to send them in: per visitor, visits in
/// order, inside a visit the first event first and neighbours sometimes swapped (each
/// still within the timeout of what was sent before it); visitors merged by time.
fn scenario(seed: u64, now: i64) -> (Vec<Vec<Event>>, Vec<Event>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut visits, mut sequences) = (Vec::new(), Vec::new());
    let mut next_id = 0;
    for visitor in 0..500u64 {
        let mut sequence = Vec::new();
        let mut t = now - 50 * 60_000 + rng.random_range(0..20 * 60_000);
        'visits: for _ in 0..rng.random_range(1..4) {
            let mut visit: Vec<Event> = Vec::new();
            for i in 0..rng.random_range(1..6) {
                if i > 0 {
                    t += if rng.random_ratio(1, 5) { TIMEOUT } else { rng.random_range(1_000..TIMEOUT) };
                }
                if t > now - 60_000 {
                    break;
                }
                if i > 0 && t.div_euclid(DAY) != visit[0].ts.div_euclid(DAY) {
                    // A test run across UTC midnight: the day boundary ends the visit.
                    visits.push(finish(std::mem::take(&mut visit), &mut sequence, &mut rng));
                }
                let (name, interactive) = match rng.random_range(0..4) {
                    0 => ("signup", true),
                    1 => ("scroll", false),
                    _ => ("pageview", true),
                };
                next_id += 1;
                visit.push(Event {
                    id: format!("sv-{seed}-{next_id}"),
                    visitor,
                    ts: t,
                    name,
                    interactive,
                    path: format!("/p{}", rng.random_range(0..6)),
                });
            }
            if visit.is_empty() {
                break 'visits;
            }
            visits.push(finish(visit, &mut sequence, &mut rng));
            t += if rng.random_bool(0.5) { TIMEOUT + 1 } else { TIMEOUT + rng.random_range(0..5 * 60_000) };
        }
        sequences.push(std::collections::VecDeque::from(sequence));
    }
    let mut order = Vec::new();
    while let Some(next) =
        sequences.iter_mut().filter(|s| !s.is_empty()).min_by_key(|s| s.front().map_or(i64::MAX, |e| e.ts))
    {
        order.extend(next.pop_front());
    }
    (visits, order)
}

/// Appends `visit` to `sequence` in sending order; returns the visit.
fn finish(visit: Vec<Event>, sequence: &mut Vec<Event>, rng: &mut StdRng) -> Vec<Event> {
    let mut rest = visit[1..].to_vec();
    let mut i = 0;
    while i + 1 < rest.len() {
        let before = if i == 0 { visit[0].ts } else { rest[i - 1].ts };
        if rest[i + 1].ts - before <= TIMEOUT && rng.random_bool(0.5) {
            rest.swap(i, i + 1);
            i += 2;
        } else {
            i += 1;
        }
    }
    sequence.push(visit[0].clone());
    sequence.extend(rest);
    visit
}

/// (granularity, bucket seconds, dimension, value) → (events, value_sum, value_count).
type Rows = BTreeMap<(String, i64, String, String), (u64, f64, u64)>;

const CHECKED: [&str; 4] = ["session:total", "session:entry_page", "session:exit_page", "session:pageviews"];

/// What Plausible counts for `visits`, in Gallop's rows, at minute and hour.
fn truth(visits: &[Vec<Event>]) -> Rows {
    let mut rows = Rows::new();
    for visit in visits {
        let first = &visit[0];
        let duration = (visit.iter().map(|e| e.ts).max().unwrap_or(first.ts) - first.ts) as f64;
        let bounce = u64::from(visit.iter().filter(|e| e.interactive).count() == 1);
        let pageviews = visit.iter().filter(|e| e.name == "pageview").count() as u64;
        let exit = visit.iter().filter(|e| e.name == "pageview").max_by_key(|e| e.ts).unwrap_or(first);
        for (granularity, seconds) in [("minute", 60), ("hour", 3600)] {
            let bucket = first.ts.div_euclid(1000).div_euclid(seconds) * seconds;
            let mut add = |dimension: &str, value: &str, cell: (u64, f64, u64)| {
                let row =
                    rows.entry((granularity.to_owned(), bucket, dimension.to_owned(), value.to_owned())).or_default();
                *row = (row.0 + cell.0, row.1 + cell.1, row.2 + cell.2);
            };
            add("session:total", "", (1, duration, bounce));
            add("session:entry_page", &first.path, (1, duration, bounce));
            add("session:exit_page", &exit.path, (1, 0.0, 0));
            if pageviews > 0 {
                add("session:pageviews", "", (pageviews, 0.0, 0));
            }
        }
    }
    rows
}

/// The checked `session:*` rows ClickHouse holds (rows that add up to nothing left out).
async fn stored(pipeline: &Pipeline) -> Rows {
    let list = CHECKED.iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(", ");
    let text = sql(
        &pipeline.clickhouse_url,
        &format!(
            "SELECT toString(granularity), toUnixTimestamp(bucket), dimension, value, sumMerge(events), \
             sumMerge(value_sum), sumMerge(value_count) FROM {} WHERE site = 's.test' AND kind = 'rollup' \
             AND granularity IN ('minute', 'hour') AND dimension IN ({list}) \
             GROUP BY granularity, bucket, dimension, value FORMAT TSV",
            pipeline.table()
        ),
    )
    .await;
    let mut rows = Rows::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let number = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or_else(|| panic!("{line}"));
        let cell = (number(4), f[5].parse::<f64>().unwrap_or_else(|_| panic!("{line}")), number(6));
        if cell != (0, 0.0, 0) {
            rows.insert((f[0].to_owned(), number(1) as i64, f[2].to_owned(), f[3].to_owned()), cell);
        }
    }
    rows
}

/// Sends `events` in order, one batch at a time (so the log keeps the order), pacing so the
/// kills fall in the middle; a 503 is retried (ids make a retry count once).
async fn send_in_order(address: String, events: Vec<Event>) {
    let client = reqwest::Client::new();
    let url = format!("http://{address}/v1/events");
    // About 15 s of sending in all, whatever the number of events: the five kills (each once
    // a flush of the restarted processor landed, 1 to 2 s apart) fall inside it.
    let pause = Duration::from_millis(15_000 / events.len().div_ceil(100).max(1) as u64);
    for chunk in events.chunks(100) {
        let batch = serde_json::Value::Array(chunk.iter().map(Event::json).collect());
        loop {
            let response = client.post(&url).json(&batch).send().await.expect("gateway answers");
            match response.status().as_u16() {
                202 => break,
                503 => tokio::time::sleep(Duration::from_millis(200)).await,
                status => panic!("gateway answered {status}: {}", response.text().await.unwrap_or_default()),
            }
        }
        tokio::time::sleep(pause).await;
    }
}

on_both_brokers!(visits_survive_five_sigkills_of_the_processor);

async fn visits_survive_five_sigkills_of_the_processor(kind: Kind) {
    let mut pipeline = Pipeline::new(crate::brokers::Broker::new(kind, &crate::pipeline::tag()), clickhouse_url());
    pipeline.env.push(("GALLOP_PROCESSOR__SESSION_TIMEOUT", "2m".to_owned()));
    pipeline.start_front(&["ingest"], "gateway listening").await;
    let index = pipeline.start_processor(&[]).await;
    let (visits, order) = scenario(42, now_ms());
    let want = truth(&visits);
    assert!(visits.len() > 800, "many visits: {}", visits.len());
    let sender = tokio::spawn(send_in_order(pipeline.address.clone(), order.clone()));
    let mut rng = StdRng::seed_from_u64(5);
    pipeline.wait_for_table().await;
    for _ in 0..5 {
        // Once a flush of the running processor landed, at a random moment of the next one.
        let before = pipeline.landed().await;
        pipeline.wait_until_landed_above(before).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..600))).await;
        pipeline.kill_processor(index).await;
        pipeline.restart_processor(index, &[]).await;
    }
    assert!(!sender.is_finished(), "the kills fell while events were still being sent");
    sender.await.expect("sending finished");
    let tracker_events = send_as_the_plausible_tracker(&pipeline.address).await;
    pipeline.wait_for(order.len() + tracker_events).await;
    tracker_events_land_where_plausible_puts_them(&pipeline).await;

    let got = stored(&pipeline).await;
    let mut differences = Vec::new();
    for (key, w) in &want {
        if got.get(key) != Some(w) {
            differences.push(format!("{key:?}: want {w:?}, got {:?}", got.get(key)));
        }
    }
    differences.extend(got.keys().filter(|k| !want.contains_key(*k)).map(|k| format!("{k:?}: unexpected")));
    assert!(
        differences.is_empty(),
        "{} of {} session rows differ:\n{}",
        differences.len(),
        want.len(),
        differences[..differences.len().min(15)].join("\n")
    );
    if kind == Kind::Nats {
        query_and_export_tell_the_numbers(&pipeline, &visits, order.len()).await;
    }
}

/// What Plausible's tracker (npm 0.4.6, `tracker/src/engagement.js`) sends for a visitor who
/// opens /docs, signs up, scrolls, then moves to /pricing in a single-page app and leaves:
/// the bodies field for field, one request at a time. Returns the events that count
/// (engagement events are not events).
async fn send_as_the_plausible_tracker(address: &str) -> usize {
    let client = reqwest::Client::new();
    for body in [
        r#"{"n":"pageview","u":"https://pl.test/docs","d":"pl.test","r":"https://news.ycombinator.com/","v":28}"#,
        r#"{"n":"Signup","u":"https://pl.test/docs","d":"pl.test","r":"https://news.ycombinator.com/","p":{"plan":"pro"},"v":28}"#,
        r#"{"n":"engagement","sd":55,"d":"pl.test","u":"https://pl.test/docs","p":{},"e":3000,"v":28}"#,
        r#"{"n":"pageview","u":"https://pl.test/pricing","d":"pl.test","r":"https://news.ycombinator.com/","v":28}"#,
        r#"{"n":"engagement","sd":20,"d":"pl.test","u":"https://pl.test/pricing","p":{},"e":1500,"v":28}"#,
    ] {
        let response = client
            .post(format!("http://{address}/api/event"))
            .header("Content-Type", "text/plain")
            .header("User-Agent", "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15")
            .body(body)
            .send()
            .await
            .expect("gateway answers");
        assert_eq!(response.status().as_u16(), 202, "{body}");
    }
    3
}

/// The tracker's events in ClickHouse: two pageviews and one goal, engagement nowhere among
/// events or goals, per-page scroll depth and engaged time, one visit from /docs to
/// /pricing that is no bounce, and Plausible's labels. (The visit's duration is the few
/// milliseconds between the requests: not compared.)
async fn tracker_events_land_where_plausible_puts_them(pipeline: &Pipeline) {
    let text = sql(
        &pipeline.clickhouse_url,
        &format!(
            "SELECT dimension, value, sumMerge(events), if(dimension LIKE 'session:%', 0, sumMerge(value_sum)), \
             sumMerge(value_count) FROM {} \
             WHERE site = 'pl.test' AND kind = 'rollup' AND granularity = 'day' \
             AND dimension IN ('total', 'name', 'page', 'browser', 'os', 'source', 'engagement:path', \
             'session:total', 'session:entry_page', 'session:exit_page', 'session:source') \
             GROUP BY dimension, value ORDER BY dimension, value FORMAT TSV",
            pipeline.table()
        ),
    )
    .await;
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(
        rows,
        [
            "browser\tSafari\t3\t0\t0",
            "engagement:path\t/docs\t1\t3000\t55",
            "engagement:path\t/pricing\t1\t1500\t20",
            "name\tSignup\t1\t0\t0",
            "name\tpageview\t2\t0\t0",
            "os\tMac\t3\t0\t0",
            "page\t/docs\t1\t0\t0",
            "page\t/pricing\t1\t0\t0",
            "session:entry_page\t/docs\t1\t0\t0",
            "session:exit_page\t/docs\t0\t0\t0",
            "session:exit_page\t/pricing\t1\t0\t0",
            "session:source\tHacker News\t1\t0\t0",
            "session:total\t\t1\t0\t0",
            "source\tHacker News\t3\t0\t0",
            "total\t\t3\t0\t0",
        ],
        "{text}"
    );
}

/// `gallop query` and `gallop export` over what the test above stored: the headline's
/// visits, bounce rate and duration equal the truth; typos, impossible dates and unknown
/// zones are refused with the user's own text; no ANSI escapes; export holds every row.
async fn query_and_export_tell_the_numbers(pipeline: &Pipeline, visits: &[Vec<Event>], events: usize) {
    let (first, last) = (
        visits.iter().map(|v| v[0].ts).min().unwrap_or(0),
        visits.iter().flat_map(|v| v.iter().map(|e| e.ts)).max().unwrap_or(0),
    );
    // The UTC date of `ms` (days since the epoch to a civil date, H. Hinnant's algorithm).
    let utc = |ms: i64| {
        let z = ms.div_euclid(DAY) + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let (day, month) = (doy - (153 * mp + 2) / 5 + 1, if mp < 10 { mp + 3 } else { mp - 9 });
        format!("{:04}-{month:02}-{day:02}", yoe + era * 400 + i64::from(month <= 2))
    };
    let run = |args: Vec<String>| async move {
        let output = pipeline.command(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]).output().await;
        let output = output.expect("gallop runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let query = |extra: &[&str]| {
        let mut args: Vec<String> = ["query", "--site", "s.test"].map(String::from).to_vec();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        run(args)
    };
    let (from, to) = (utc(first - DAY), utc(last + DAY));
    let (code, out, err) = query(&["--from", &from, "--to", &to, "--format", "json"]).await;
    assert_eq!(code, Some(0), "{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let headline = &answer["headline"];
    let bounces = visits.iter().filter(|v| v.iter().filter(|e| e.interactive).count() == 1).count();
    let duration: i64 = visits.iter().map(|v| v.iter().map(|e| e.ts).max().unwrap_or(0) - v[0].ts).sum();
    assert_eq!(headline["visits"], visits.len(), "{headline}");
    assert_eq!(headline["events"], events, "{headline}");
    let close = |got: &serde_json::Value, want: f64| (got.as_f64().unwrap_or(f64::NAN) - want).abs() < 1e-6;
    assert!(close(&headline["bounce_rate"], bounces as f64 * 100.0 / visits.len() as f64), "{headline}");
    assert!(close(&headline["visit_duration"], duration as f64 / 1000.0 / visits.len() as f64), "{headline}");

    // Errors that name what the user typed; nothing printed with colour codes.
    for (args, message) in [
        (vec!["--from", &from, "--to", &to, "--by", "pth"], "--by \"pth\" is not a dimension Gallop keeps; known: "),
        (vec!["--from", "2026-02-30", "--to", &to], "--from \"2026-02-30\": 2026-02 has no day 30 (it has 28 days)"),
        (vec!["--from", &to, "--to", &from], "is not before --to"),
        (vec!["--from", &from, "--to", &to, "--tz", "Mars/Olympus"], "--tz \"Mars/Olympus\" is not a time zone"),
    ] {
        let (code, _, err) = query(&args).await;
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
        assert!(!err.contains('\u{1b}'), "no ANSI escapes when not a terminal: {err:?}");
    }
    let (_, _, err) = query(&["--from", &from, "--to", &to, "--by", "pth"]).await;
    assert!(err.contains("session:entry_page") && err.contains("page"), "{err}");

    // A breakdown by entry page as CSV, and the visits it adds up to.
    let (code, out, err) =
        query(&["--from", &from, "--to", &to, "--by", "session:entry_page", "--limit", "100", "--format", "csv"]).await;
    assert_eq!(code, Some(0), "{err}");
    let section = out.split("\n\n").find(|s| s.starts_with("session:entry_page,")).expect("a breakdown section");
    let entries: u64 =
        section.lines().skip(1).map(|l| l.split(',').nth(2).and_then(|n| n.parse::<u64>().ok()).expect("events")).sum();
    assert_eq!(entries, visits.len() as u64, "{section}");

    // Export: every minute, hour and day row, as NDJSON files.
    let dir = std::env::temp_dir().join(format!("gallop-export-{}", crate::pipeline::tag()));
    let (code, _, err) =
        run(["export", "--site", "s.test", "--from", &from, "--to", &to, "--format", "ndjson", "--out"]
            .map(String::from)
            .into_iter()
            .chain([dir.display().to_string()])
            .collect())
        .await;
    assert_eq!(code, Some(0), "{err}");
    let mut visits_by_granularity = BTreeMap::new();
    for granularity in ["minute", "hour", "day"] {
        let text = std::fs::read_to_string(dir.join(format!("s.test-{granularity}.ndjson"))).expect("export file");
        for line in text.lines() {
            let row: serde_json::Value = serde_json::from_str(line).expect("NDJSON");
            assert_eq!(row["granularity"], granularity);
            if row["dimension"] == "session:total" {
                *visits_by_granularity.entry(granularity).or_insert(0) += row["events"].as_u64().expect("events");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    for granularity in ["minute", "hour", "day"] {
        assert_eq!(visits_by_granularity.get(granularity), Some(&(visits.len() as u64)), "{granularity}");
    }
}
