//! The SQL of `docs/queries.md`, run as written (Grafana's `$__timeFilter` macro expanded)
//! against a flush written by the sink, each answer compared with the truth computed from
//! the events.

use std::collections::{BTreeMap, BTreeSet};

use gallop_event::EventRecord;
use gallop_sink::Writer;
use serde_json::Value;

use crate::common::{event, marks, message, number, processor, query, TestDb};

/// 2026-11-23 10:00:00 UTC, in seconds.
const HOUR0: i64 = 1_795_428_000;
/// 2026-11-23 00:00:00 UTC.
const DAY0: i64 = HOUR0 - 10 * 3600;
const SITE: &str = "d.test";
const REFERRERS: [&str; 3] = ["https://a.example/", "https://b.example/", "https://c.example/"];

/// 60 events over 10:00–11:28: pageviews, signups and purchases with values, four pages,
/// 13 visitors (few enough for uniqHLL12 to count exactly), three referrers.
fn events() -> Vec<EventRecord> {
    (0..60u64)
        .map(|i| {
            let name = match i {
                _ if i % 6 == 0 => "signup",
                _ if i % 10 == 3 => "purchase",
                _ => "pageview",
            };
            let path = ["/", "/pricing", "/docs", "/blog"][(i * i % 7 % 4) as usize];
            let mut e = event(SITE, (HOUR0 + i as i64 * 90) * 1000, name, path, i % 13);
            if name == "purchase" {
                e.value = Some(i as f64 * 1.5);
            }
            e.referrer = match i % 10 {
                0..=4 => REFERRERS[0],
                5..=7 => REFERRERS[1],
                8 => REFERRERS[2],
                _ => "",
            }
            .to_owned();
            e
        })
        .collect()
}

/// The ```sql blocks of docs/queries.md with the `##` heading above each.
fn documented_queries() -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/queries.md");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let (mut heading, mut block, mut queries) = (String::new(), None::<String>, Vec::new());
    for line in text.lines() {
        match (&mut block, line.trim_end()) {
            (None, l) if l.starts_with("## ") => heading = l[3..].to_owned(),
            (None, "```sql") => block = Some(String::new()),
            (Some(sql), "```") => {
                queries.push((heading.clone(), std::mem::take(sql)));
                block = None;
            }
            (Some(sql), l) => {
                sql.push_str(l);
                sql.push('\n');
            }
            _ => {}
        }
    }
    queries
}

/// `sql` made runnable: our database and site, the time filter over the whole sample at the
/// query's granularity.
fn runnable(sql: &str, database: &str) -> String {
    let (from, to) = if sql.contains("granularity = 'day'") { (DAY0, DAY0 + 86_400) } else { (HOUR0, HOUR0 + 7200) };
    let filter = format!("bucket >= toDateTime({from}, 'UTC') AND bucket < toDateTime({to}, 'UTC')");
    sql.replace("gallop.aggregates", &format!("`{database}`.`aggregates`"))
        .replace("'example.com'", &format!("'{SITE}'"))
        .replace("$__timeFilter(bucket)", &filter)
}

fn rows(sql: &str) -> Vec<Value> {
    query(&format!("{sql} FORMAT JSONEachRow"))
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

#[tokio::test]
async fn every_documented_query_answers_with_the_truth() {
    let db = TestDb::new("docs");
    let ch = db.migrated().await;
    let events = events();
    let mut processor = processor();
    processor.process_message(0, 1, &message(&events), (HOUR0 + 7200) * 1000).expect("not full");
    let delta = processor.flush(0);
    Writer::new(ch.clone(), "EVENTS", &db.config).write(&delta, &marks(&delta), HOUR0).await.expect("write");

    // The truth.
    let visitors = |of: &mut dyn Iterator<Item = &EventRecord>| of.map(|e| e.visitor).collect::<BTreeSet<_>>().len();
    let value: f64 = events.iter().filter_map(|e| e.value).sum();
    let priced = events.iter().filter(|e| e.value.is_some()).count();
    let pageviews = events.iter().filter(|e| e.name == "pageview").count();
    let mut per_hour: BTreeMap<i64, Vec<&EventRecord>> = BTreeMap::new();
    let mut per_path: BTreeMap<&str, Vec<&EventRecord>> = BTreeMap::new();
    let mut per_name: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    let mut per_referrer: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &events {
        per_hour.entry(e.ts / 1000 / 3600 * 3600).or_default().push(e);
        per_path.entry(&e.path).or_default().push(e);
        let name = per_name.entry(&e.name).or_default();
        name.0 += e.value.unwrap_or(0.0);
        name.1 += usize::from(e.value.is_some());
        if !e.referrer.is_empty() {
            *per_referrer.entry(&e.referrer).or_default() += 1;
        }
    }
    assert_eq!(per_hour.len(), 2, "the sample spans two hours");

    let queries = documented_queries();
    assert!(queries.len() >= 6, "docs/queries.md lost its queries: {queries:?}");
    for (heading, sql) in &queries {
        let sql = runnable(sql, &db.config.database);
        match heading.as_str() {
            "Visitors, events, value for a range" => {
                let r = &rows(&sql)[0];
                assert_eq!(number(&r["visitors"]) as usize, visitors(&mut events.iter()), "{sql}");
                assert_eq!(number(&r["events"]) as usize, events.len(), "{sql}");
                assert!((number(&r["value"]) - value).abs() < 1e-9, "{sql}: {r}");
                assert_eq!(number(&r["value_events"]) as usize, priced, "{sql}");
            }
            "Pageviews" => assert_eq!(number(&rows(&sql)[0]["pageviews"]) as usize, pageviews, "{sql}"),
            "Time series (visitors and pageviews per hour)" => {
                let series: Vec<(String, usize, usize)> = rows(&sql)
                    .iter()
                    .map(|r| {
                        (
                            r["time"].as_str().unwrap_or_default().to_owned(),
                            number(&r["visitors"]) as usize,
                            number(&r["events"]) as usize,
                        )
                    })
                    .collect();
                let hours = ["2026-11-23 10:00:00", "2026-11-23 11:00:00"];
                let want: Vec<(String, usize, usize)> = per_hour
                    .values()
                    .zip(hours)
                    .map(|(es, hour)| (hour.to_owned(), visitors(&mut es.iter().copied()), es.len()))
                    .collect();
                assert_eq!(series, want, "{sql}");
            }
            "Breakdown (top pages, sources, countries, browsers, UTM, props)" => {
                let got: BTreeMap<String, (usize, usize)> = rows(&sql)
                    .iter()
                    .map(|r| {
                        let page = r["page"].as_str().unwrap_or_default().to_owned();
                        (page, (number(&r["visitors"]) as usize, number(&r["events"]) as usize))
                    })
                    .collect();
                let want: BTreeMap<String, (usize, usize)> = per_path
                    .iter()
                    .map(|(path, es)| ((*path).to_owned(), (visitors(&mut es.iter().copied()), es.len())))
                    .collect();
                assert_eq!(got, want, "{sql}");
            }
            "Revenue by event" => {
                let got: BTreeMap<String, (f64, usize)> = rows(&sql)
                    .iter()
                    .map(|r| {
                        let name = r["event"].as_str().unwrap_or_default().to_owned();
                        (name, (number(&r["revenue"]), number(&r["orders"]) as usize))
                    })
                    .collect();
                let want: BTreeMap<String, (f64, usize)> =
                    per_name.iter().map(|(name, totals)| ((*name).to_owned(), *totals)).collect();
                assert_eq!(got, want, "{sql}");
            }
            "Leaderboards (full referrer URLs, free-form props)" => {
                // The document says this query is for servers with topK state columns;
                // older ones are answered by `gallop query --top` (covered in write.rs).
                if ch.schema().features().topk_states {
                    let top = &rows(&sql)[0]["top_referrers"];
                    let mut want: Vec<(&str, usize)> = per_referrer.iter().map(|(r, n)| (*r, *n)).collect();
                    want.sort_by_key(|&(r, n)| (std::cmp::Reverse(n), r));
                    let want: Vec<Value> = want.iter().map(|(r, _)| Value::from(*r)).collect();
                    assert_eq!(top, &Value::Array(want), "{sql}");
                } else {
                    assert!(sql.contains("topKMerge"), "{sql}");
                }
            }
            other => panic!("docs/queries.md has a query under {other:?} that this test does not check yet:\n{sql}"),
        }
    }
}
