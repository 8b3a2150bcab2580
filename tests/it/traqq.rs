//! traqq's clients on Gallop: `gallop traqq-config` turns a traqq configuration into
//! Gallop's; `gallop run` serves traqq's protocol with it; traqq 0.2.0's own client records a
//! seeded stream and queries it back; the same stream fed to traqq's own in-memory engine
//! must give the same answers (counts and sums equal, unique counts within the sketch's
//! error, leaderboards' top items equal), day by day and merged.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};

use crate::{
    brokers::{Broker, Kind},
    pipeline::{clickhouse_url, free_port, on_both_brokers, tag, Pipeline},
};

/// traqq's configuration, as its users have it (the README's mapping plus a plan counter
/// and a referrer leaderboard).
const TRAQQ_CONFIG: &str = r#"{
    "time": {"store_hourly": false, "timezone": "UTC"},
    "mapping": {
        "bitmap": ["ip"],
        "add": ["event", "event~geo", "plan"],
        "add_value": [{"key": "event~geo", "add_key": "amount"}],
        "top": ["geo", "ref"]
    },
    "limits": {"max_field_length": 128, "max_value_length": 512, "max_combinations": 1000, "max_metrics_per_event": 1000}
}"#;

const SITE: &str = "traqq.e2e";
const DAY: i64 = 86_400;

/// A seeded stream of traqq events: 5 names, 6 countries (one event in ten without), 3
/// plans on half, 12 referrer URLs on most, 300 addresses, amounts as numbers, as numeric
/// strings and as text traqq does not add, and properties no metric uses.
fn stream(seed: u64, n: usize) -> Vec<Value> {
    let mut rng = StdRng::seed_from_u64(seed);
    let names = ["purchase", "signup", "view", "click", "share"];
    let geos = ["US", "DE", "FR", "BR", "JP", "IN"];
    (0..n)
        .map(|i| {
            let mut event = json!({
                "event": names[rng.random_range(0..names.len())],
                "ip": format!("10.0.{}.{}", rng.random_range(0..3), rng.random_range(0..100)),
                "session_id": format!("s{i}"),
                "user_agent": "Mozilla/5.0",
            });
            if rng.random_ratio(9, 10) {
                event["geo"] = json!(geos[rng.random_range(0..geos.len())]);
            }
            if rng.random_bool(0.5) {
                event["plan"] = json!(["free", "pro", "team"][rng.random_range(0..3)]);
            }
            if rng.random_ratio(7, 10) {
                event["ref"] = json!(format!("https://r{}.test/p", rng.random_range(0..12)));
            }
            match rng.random_range(0..10) {
                0..=2 => event["amount"] = json!(f64::from(rng.random_range(1..10_000)) / 100.0),
                3 => event["amount"] = json!(format!("{}.5", rng.random_range(0..50))),
                4 => event["amount"] = json!("n/a"),
                _ => {}
            }
            event
        })
        .collect()
}

/// A metric result reduced to what both engines must agree on.
#[derive(Debug, Clone, PartialEq)]
enum Data {
    Count(u64),
    Hash(BTreeMap<String, i64>),
    /// Sums, in cents (both engines add the same numbers in different orders).
    FloatHash(BTreeMap<String, i64>),
    Summary(i64, i64),
    Ranked(BTreeSet<(String, i64)>),
}

/// (metric_type, key, add_key, location) → data, of one `query` day or `find` answer.
type Results = BTreeMap<(String, String, String, String), Data>;

fn cents(x: &Value) -> i64 {
    (x.as_f64().expect("a number") * 100.0).round() as i64
}

fn results(list: &Value) -> Results {
    let mut out = Results::new();
    for r in list.as_array().expect("a list of results") {
        let (kind, data) = r["result"].as_object().and_then(|o| o.iter().next()).expect("tagged result");
        let data = match kind.as_str() {
            "Count" => Data::Count(data.as_u64().expect("count")),
            "Hash" => Data::Hash(
                data.as_object().expect("hash").iter().map(|(k, v)| (k.clone(), v.as_i64().expect("n"))).collect(),
            ),
            "FloatHash" => {
                Data::FloatHash(data.as_object().expect("hash").iter().map(|(k, v)| (k.clone(), cents(v))).collect())
            }
            "Summary" => Data::Summary(cents(&data["sum"]), data["count"].as_i64().expect("count")),
            "Ranked" => Data::Ranked(
                data.as_array()
                    .expect("ranked")
                    .iter()
                    .map(|p| (p[0].as_str().expect("member").to_owned(), cents(&p[1])))
                    .collect(),
            ),
            other => panic!("unknown result kind {other}"),
        };
        let key = r["key"].as_array().expect("key").iter().map(|k| k.as_str().unwrap_or_default()).collect::<Vec<_>>();
        let entry = (
            r["metric_type"].as_str().unwrap_or_default().to_owned(),
            key.join("~"),
            r["add_key"].as_str().unwrap_or_default().to_owned(),
            r["location"].as_str().unwrap_or_default().to_owned(),
        );
        out.insert(entry, data);
    }
    out
}

/// The relative error a unique count of `exact` distinct values may show: six standard
/// errors of ClickHouse's `uniqHLL12` at that count (4096 registers). Identifiers are hashed
/// with a salt drawn per run, so the estimate is a random variable; at six standard errors a
/// correct count fails about once in 10⁹ comparisons, while a lost day still fails (the
/// counters compared beside it catch a doubled one: doubling leaves distinct counts alone).
fn sketch_tolerance(exact: u64) -> f64 {
    const REGISTERS: f64 = 4096.0;
    if exact <= 16 {
        return 0.0; // up to 16 keys are kept verbatim: exact
    }
    let n = exact as f64;
    let load = n / REGISTERS;
    let standard_error = if load <= 2.5 {
        // Linear counting (Whang et al. 1990): sqrt(m (e^t - t - 1)) / n.
        (REGISTERS * (load.exp() - load - 1.0)).sqrt() / n
    } else {
        1.04 / REGISTERS.sqrt()
    };
    6.0 * standard_error
}

/// Both engines' results agree: equal, but unique counts within the sketch's error
/// ([`sketch_tolerance`]).
#[track_caller]
fn agree(ours: &Results, theirs: &Results, what: &str) {
    assert_eq!(ours.keys().collect::<Vec<_>>(), theirs.keys().collect::<Vec<_>>(), "{what}: the same metrics");
    for (key, mine) in ours {
        match (mine, &theirs[key]) {
            (Data::Count(a), Data::Count(b)) => {
                let error = (*a as f64 - *b as f64).abs() / (*b as f64).max(1.0);
                let tolerance = sketch_tolerance(*b);
                assert!(
                    error <= tolerance,
                    "{what} {key:?}: {a} distinct vs traqq's exact {b} (error {error:.4} > {tolerance:.4})"
                );
            }
            (a, b) => assert_eq!(a, b, "{what} {key:?}"),
        }
    }
}

async fn traqq_clients_get_traqqs_answers(kind: Kind) {
    // gallop traqq-config, as a user runs it.
    let traqq_port = free_port();
    let listen = format!("127.0.0.1:{traqq_port}");
    let mut converter = std::process::Command::new(env!("CARGO_BIN_EXE_gallop"))
        .args(["traqq-config", "--site", SITE, "--listen", &listen])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gallop traqq-config runs");
    std::io::Write::write_all(&mut converter.stdin.take().expect("stdin"), TRAQQ_CONFIG.as_bytes()).expect("write");
    let converted = converter.wait_with_output().expect("output");
    assert!(converted.status.success(), "gallop traqq-config failed");
    let config_path = std::env::temp_dir().join(format!("gallop-traqq-{}.toml", tag()));
    std::fs::write(&config_path, &converted.stdout).expect("write config");

    let mut pipeline = Pipeline::new(Broker::new(kind, &tag()), clickhouse_url());
    pipeline.env.push(("GALLOP_CONFIG", config_path.display().to_string()));
    pipeline.start_front(&["run"], "listening").await;
    pipeline.wait_for_table().await;

    let events = stream(15, 3_000);
    let sent = events.clone();
    let address = listen.clone();
    let (answers, traqq) = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut client = loop {
            match traqq::client::Client::connect(&address) {
                Ok(client) => break client,
                Err(e) => assert!(Instant::now() < deadline, "the traqq listener did not open: {e}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let theirs = traqq_engine();
        let answers: Vec<_> = sent.iter().map(|e| client.record(e.clone()).expect("an answer")).collect();
        for event in sent {
            theirs.record(traqq::IncomingEvent::from_json(event).expect("event")).expect("traqq records");
        }
        (answers, theirs)
    })
    .await
    .expect("client thread");
    assert!(answers.iter().all(|r| r.success), "{:?}", answers.iter().find(|r| !r.success));

    // Wait until every event is counted (by traqq's own find), then ask both.
    let today = time::OffsetDateTime::now_utc().unix_timestamp() / DAY * DAY;
    let (min, max) = (today - DAY, today);
    let address = listen.clone();
    let (query, found) = tokio::task::spawn_blocking(move || {
        let mut client = traqq::client::Client::connect(&address).expect("connect");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let merged = client.find(min, max, "add", "event", None, true).expect("find");
            assert!(merged.success, "{merged:?}");
            let counted: i64 = merged
                .data
                .as_ref()
                .and_then(|d| d[0]["result"]["Hash"].as_object())
                .map_or(0, |h| h.values().filter_map(Value::as_i64).sum());
            assert!(counted <= 3_000, "counted {counted} of 3000");
            if counted == 3_000 {
                break;
            }
            assert!(Instant::now() < deadline, "only {counted} of 3000 events counted in 120 s");
            std::thread::sleep(Duration::from_millis(300));
        }
        let query = client.query(min, max).expect("query").data.expect("days");
        let finds: Vec<(String, Value)> = [
            ("bmp", "ip", None, true),
            ("add", "geo~event", None, true),
            ("add", "plan", None, false),
            ("adv", "event~geo", Some("amount"), false),
            ("top", "ref", None, true),
            ("top", "geo", None, false),
        ]
        .into_iter()
        .map(|(kind, key, add_key, merge)| {
            let answer = client.find(min, max, kind, key, add_key, merge).expect("find");
            (format!("find {kind} {key} merge={merge}"), answer.data.expect("found"))
        })
        .collect();
        (query, finds)
    })
    .await
    .expect("client thread");

    // Day by day: the same days, the same metrics at the same locations, the same numbers.
    let theirs_query = serde_json::to_value(&traqq.query(min, max).expect("traqq query").days).expect("json");
    let (ours_days, theirs_days) = (query.as_array().expect("days"), theirs_query.as_array().expect("days"));
    assert_eq!(ours_days.len(), 2);
    for (ours, theirs) in ours_days.iter().zip(theirs_days) {
        assert_eq!((&ours["date"], &ours["timestamp"]), (&theirs["date"], &theirs["timestamp"]));
        agree(&results(&ours["results"]), &results(&theirs["results"]), &format!("day {}", ours["date"]));
    }
    let today_results = results(&ours_days[1]["results"]);
    assert_eq!(today_results.len(), 8, "bmp, 3 add, adv sums and summary, 2 top: {today_results:?}");

    // find, per day and merged (traqq's merge of an adv pattern depends on its hash order,
    // so adv is compared per day; see docs/traqq.md).
    for (what, ours) in found {
        let mut words = what.split(' ').skip(1);
        let (kind, key) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
        let merge = what.ends_with("true");
        let add_key = (kind == "adv").then_some("amount".to_owned());
        let theirs = traqq.query(min, max).expect("traqq query").find(traqq::FindOptions {
            metric_type: kind.to_owned(),
            key: key.to_owned(),
            add_key,
            merge,
        });
        agree(&results(&ours), &results(&serde_json::to_value(theirs).expect("json")), &what);
    }

    // Nothing that identifies a person reached the broker.
    for payload in pipeline.broker.payloads(3_000).await {
        let text = String::from_utf8_lossy(&payload);
        assert!(!text.contains("10.0."), "a raw address reached the broker: {text:.200}");
        assert!(!text.contains("session_id") && !text.contains("Mozilla"), "unmapped properties were kept");
    }
    let _ = std::fs::remove_file(config_path);
}

/// traqq's engine with the same configuration (its `adv` set after `Traqq::new`, whose
/// validation refuses `event~geo` in both `add` and `add_value`, see gallop-bench).
fn traqq_engine() -> traqq::Traqq {
    let config: Value = serde_json::from_str(TRAQQ_CONFIG).expect("json");
    let mut traqq_config: traqq::TraqqConfig = serde_json::from_value(config).expect("traqq config");
    let add_value = std::mem::take(&mut traqq_config.mapping.add_value);
    let mut engine = traqq::Traqq::new(traqq_config, Box::new(traqq::storage::memory::MemoryStorage::new()), SITE)
        .expect("traqq accepts");
    engine.config.mapping.add_value = add_value;
    engine
}

on_both_brokers!(traqq_clients_get_traqqs_answers);
