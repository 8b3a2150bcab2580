//! The Grafana dashboards of `deploy/grafana`, proven without Grafana (no package of it
//! reaches this machine): every panel's SQL is taken out of the dashboard JSON, Grafana's
//! variables and the ClickHouse plugin's macros are expanded exactly as the plugin expands
//! them (`pkg/macros/macros.go` of grafana-clickhouse-datasource), and the query runs against
//! a flush the sink wrote — on ClickHouse 18.16 and, in `scripts/test.sh`'s second pass, on
//! 26.9 through chDB. Each answer is compared with a truth computed from the events, for
//! ranges that select minute, hour and day rows. The dashboards' structure is checked too:
//! datasource uids, panel ids, query formats, time columns of time series.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{SystemTime, UNIX_EPOCH},
};

use gallop_event::{EventRecord, ENGAGEMENT};
use serde_json::Value;

use crate::common::{event, message, number, processor, TestDb};

const SITE: &str = "it's.test";
const OTHER_SITE: &str = "other.test";
/// Site names that broke out of `${site:sqlstring}` (a backslash escapes its quote): each gets
/// a copy of `SITE`'s events, and its panels must show exactly those.
const HOSTILE_SITES: [&str; 2] = ["x\\' OR 1=1 -- ", "back\\slash.example"];
const CLICKHOUSE_UID: &str = "gallop-clickhouse";
const PROMETHEUS_UID: &str = "gallop-prometheus";

fn deploy(path: &str) -> String {
    format!("{}/../deploy/grafana/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// Every dashboard file: (file name, JSON).
fn dashboards() -> Vec<(String, Value)> {
    let dir = deploy("dashboards");
    let mut found: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {dir}: {e}"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path.file_name().unwrap_or_default().to_string_lossy().into_owned(), json)
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<&str> = found.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["pipeline.json", "site-analytics.json"], "dashboards in {dir}");
    found
}

/// The uid and type of every provisioned datasource.
fn provisioned_datasources() -> BTreeMap<String, String> {
    let path = deploy("provisioning/datasources/gallop.yml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    yaml["datasources"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{path}: no datasources list"))
        .iter()
        .map(|ds| {
            let field = |key: &str| ds[key].as_str().unwrap_or_else(|| panic!("{path}: a datasource without {key}"));
            (field("uid").to_owned(), field("type").to_owned())
        })
        .collect()
}

/// Every panel of a dashboard, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().map(Vec::as_slice).unwrap_or_default() {
        out.push(panel);
        for nested in panel["panels"].as_array().map(Vec::as_slice).unwrap_or_default() {
            out.push(nested);
        }
    }
    out
}

/// Grafana's time range as the plugin sees it, in Unix seconds: a bucket counts when it starts
/// at or after `from` and before `to` (one starting exactly at `to` is outside).
#[derive(Debug, Clone, Copy)]
struct Range {
    from: i64,
    to: i64,
}

/// `sql` as the plugin sends it: Grafana's variables (`${database}`, `${site:percentencode}`)
/// replaced by the template service, then the plugin's macros. Macros that ClickHouse 18.16
/// cannot run, or whose value this test cannot know, are refused.
fn expand(sql: &str, range: Range, database: &str, site: &str) -> String {
    for banned in ["$__timeInterval", "_ms", "$__interval_s", "$__dateFilter", "$__dateTimeFilter", "$__dt("] {
        assert!(
            !sql.contains(banned),
            "{banned} is not allowed in a panel while ClickHouse 18.16 is supported (toStartOfInterval and \
             DateTime64 do not exist there) or its value depends on the panel's width:\n{sql}"
        );
    }
    // `$__timeFilter(bucket)` ends with `bucket <= to`: it counts the bucket that starts
    // exactly at the range's end (an absolute range ending on the hour, one hour too many).
    assert!(!sql.contains("$__timeFilter("), "use (bucket >= $__fromTime AND bucket < $__toTime):\n{sql}");
    let mut out = sql.replace("${database}", database).replace("${site:percentencode}", &percent_encode(site));
    out = out
        .replace("$__fromTime", &format!("toDateTime({})", range.from))
        .replace("$__toTime", &format!("toDateTime({})", range.to));
    assert!(!out.contains("$__"), "a macro this test does not expand (add it here, as the plugin expands it):\n{sql}");
    assert!(!out.contains('$'), "a Grafana variable this test does not know:\n{sql}");
    out
}

/// `text` as Grafana's `percentencode` format writes it (`encodeURIComponentStrict`): every
/// UTF-8 byte other than letters, digits and `-_.~` as `%XX`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The granularity the dashboards read for a range: minutes up to 6 hours, hours up to 14
/// days, days beyond (docs/dashboards.md).
fn granularity(range: Range) -> i64 {
    match range.to - range.from {
        span if span <= 6 * 3600 => 60,
        span if span <= 14 * 86_400 => 3600,
        _ => 86_400,
    }
}

/// Result of a query in ClickHouse's `JSON` format: column (name, type) and rows.
struct Answer {
    columns: Vec<(String, String)>,
    rows: Vec<Value>,
}

fn answer(body: &str, sql: &str) -> Answer {
    let json: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}\n{sql}"));
    let columns = json["meta"]
        .as_array()
        .unwrap_or_else(|| panic!("no meta in {body}"))
        .iter()
        .map(|c| (c["name"].as_str().unwrap_or_default().to_owned(), c["type"].as_str().unwrap_or_default().to_owned()))
        .collect();
    let rows = json["data"].as_array().cloned().unwrap_or_default();
    Answer { columns, rows }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_owned()
}

/// UTC midnight two days ago, in seconds: recent enough that no retention removes the rows.
fn day0() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    now / 86_400 * 86_400 - 2 * 86_400
}

/// The events: on `SITE` 60 events over 10:00–11:28 of day 0, 12 three days before and 6
/// ten days before (13 visitors in all, few enough for uniqHLL12 to count exactly), four
/// referrers with distinct counts, browsers, systems, devices, countries, a `plan` prop and
/// purchases with values; a few events of `OTHER_SITE` that no panel of `SITE` may show.
/// Returned as three batches, oldest first, each to be processed at its own arrival time.
fn batches() -> Vec<Vec<EventRecord>> {
    let hour0 = day0() + 10 * 3600;
    let make = |i: u64, ts: i64| {
        let name = match i {
            _ if i % 6 == 0 => "signup",
            _ if i % 10 == 3 => "purchase",
            _ => "pageview",
        };
        let path = ["/", "/pricing", "/docs", "/blog"][(i * i % 7 % 4) as usize];
        let mut e = event(SITE, ts * 1000, name, path, i % 13);
        e.value = (name == "purchase").then_some(i as f64 * 1.5);
        if name == "purchase" {
            e.currency = if i % 20 == 3 { "EUR" } else { "USD" }.to_owned();
        }
        if name != "pageview" {
            e.props.insert("plan".to_owned(), ["free", "pro"][(i % 2) as usize].to_owned());
        }
        (e.referrer, e.ref_host, e.source) = owned(match i % 10 {
            0..=3 => ("https://a.example/x", "a.example", "a.example"),
            4..=6 => ("https://b.example/y", "b.example", "Bee"),
            7 | 8 => ("https://c.example/", "c.example", "c.example"),
            _ => ("", "", ""),
        });
        e.country = ["DE", "FR", "US"][(i % 3) as usize].to_owned();
        (e.browser, e.os, e.device) =
            owned([("Firefox", "Linux", "Desktop"), ("Safari", "iOS", "Mobile")][(i % 2) as usize]);
        e
    };
    let old = |count: u64, day: i64| {
        (0..count).map(move |i| make(100 + i, day0() - day * 86_400 + 15 * 3600 + i as i64 * 60))
    };
    let mut ten_days = old(6, 10).collect::<Vec<_>>();
    ten_days.push(event(OTHER_SITE, (day0() - 10 * 86_400 + 15 * 3600) * 1000, "pageview", "/", 99));
    let three_days = old(12, 3).collect();
    let mut recent: Vec<EventRecord> = (0..60u64).map(|i| make(i, hour0 + i as i64 * 90)).collect();
    recent.push(event(OTHER_SITE, (hour0 + 3000) * 1000, "pageview", "/other", 98));
    // Engagement from Plausible's tracker: visitors 0 and 1 leave the page of their last
    // event (visitor 0 twice, deeper the second time), and a visitor without a visit.
    let last = |v: u64| recent.iter().filter(|e| e.visitor == v && e.site == SITE).max_by_key(|e| e.ts).cloned();
    let mut engaged = Vec::new();
    for (visitor, of, after, sd, ms) in
        [(0, 0, 5, 40, 5_000), (0, 0, 9, 70, 3_000), (1, 1, 4, 100, 1_000), (77, 1, 4, 10, 500)]
    {
        let Some(of) = last(of) else { continue };
        let mut e = event(SITE, of.ts + after * 1000, ENGAGEMENT, &of.path, visitor);
        (e.scroll_depth, e.engaged_ms) = (Some(sd), Some(ms));
        engaged.push(e);
    }
    recent.extend(engaged);
    vec![ten_days, three_days, recent]
}

fn owned((a, b, c): (&str, &str, &str)) -> (String, String, String) {
    (a.to_owned(), b.to_owned(), c.to_owned())
}

/// What one panel must show for `events` (already cut to the range and the site;
/// engagement events apart), the visits that started in the range and its engagement.
struct Truth<'a> {
    events: Vec<&'a EventRecord>,
    visits: Vec<Vec<&'a EventRecord>>,
    engagements: Vec<&'a EventRecord>,
    bucket: i64,
}

/// The visits of `events` (one site): per visitor, runs with no gap over 30 minutes within
/// one UTC day, in time order.
fn visits<'a>(events: &[&'a EventRecord]) -> Vec<Vec<&'a EventRecord>> {
    let mut per_visitor: BTreeMap<u64, Vec<&EventRecord>> = BTreeMap::new();
    for e in events {
        per_visitor.entry(e.visitor).or_default().push(e);
    }
    let mut visits: Vec<Vec<&EventRecord>> = Vec::new();
    for mut es in per_visitor.into_values() {
        es.sort_by_key(|e| e.ts);
        let mut current: Vec<&EventRecord> = Vec::new();
        for e in es {
            if let Some(last) = current.last() {
                if e.ts - last.ts > 30 * 60_000 || e.ts / 86_400_000 != current[0].ts / 86_400_000 {
                    visits.push(std::mem::take(&mut current));
                }
            }
            current.push(e);
        }
        visits.push(current);
    }
    visits
}

impl Truth<'_> {
    fn visitors<'e>(of: impl Iterator<Item = &'e &'e EventRecord>) -> f64 {
        of.map(|e| e.visitor).collect::<BTreeSet<_>>().len() as f64
    }

    /// (label, visitors, events) per value of `field`, ordered as the panels order them.
    fn breakdown(&self, field: impl Fn(&EventRecord) -> Option<String>) -> Vec<(String, f64, f64)> {
        let mut groups: BTreeMap<String, Vec<&EventRecord>> = BTreeMap::new();
        for e in &self.events {
            if let Some(label) = field(e) {
                groups.entry(label).or_default().push(e);
            }
        }
        let mut rows: Vec<(String, f64, f64)> =
            groups.into_iter().map(|(label, es)| (label, Self::visitors(es.iter()), es.len() as f64)).collect();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.2.total_cmp(&a.2)).then(a.0.cmp(&b.0)));
        rows.truncate(20);
        rows
    }

    /// (bucket start, value) per bucket with at least one event passing `keep`.
    fn series(&self, keep: impl Fn(&EventRecord) -> bool, value: impl Fn(&[&EventRecord]) -> f64) -> Vec<(i64, f64)> {
        let mut buckets: BTreeMap<i64, Vec<&EventRecord>> = BTreeMap::new();
        for e in self.events.iter().filter(|e| keep(e)) {
            buckets.entry(e.ts / 1000 / self.bucket * self.bucket).or_default().push(e);
        }
        buckets.into_iter().map(|(t, es)| (t, value(&es))).collect()
    }
}

fn label_or(v: &str, empty: &str) -> String {
    if v.is_empty() { empty } else { v }.to_owned()
}

/// Rows of a breakdown table: (label column, visitors, events).
fn breakdown_rows(answer: &Answer, label: &str) -> Vec<(String, f64, f64)> {
    answer.rows.iter().map(|r| (text(&r[label]), number(&r["visitors"]), number(&r["events"]))).collect()
}

/// Compares one ClickHouse panel's answer with the truth; the panel is known by its title.
fn check(title: &str, ref_id: &str, answer: &Answer, truth: &Truth<'_>, topk_states: bool, sql: &str) {
    let single = |column: &str| {
        assert_eq!(answer.rows.len(), 1, "{title}: one row expected\n{sql}");
        number(&answer.rows[0][column])
    };
    // A rate over visits or engaged pages: no data (null) when there are none, not 0.
    let rate = |column: &str| {
        assert_eq!(answer.rows.len(), 1, "{title}: one row expected\n{sql}");
        let value = &answer.rows[0][column];
        (!value.is_null()).then(|| number(value))
    };
    let events = &truth.events;
    match (title, ref_id) {
        ("Unique visitors", _) => assert_eq!(single("visitors"), Truth::visitors(events.iter()), "{title}\n{sql}"),
        ("Pageviews", _) => {
            let want = events.iter().filter(|e| e.name == "pageview").count() as f64;
            assert_eq!(single("pageviews"), want, "{title}\n{sql}");
        }
        ("Events", _) => assert_eq!(single("events"), events.len() as f64, "{title}\n{sql}"),
        ("Value", _) => {
            let want: f64 = events.iter().filter(|e| e.currency.is_empty()).filter_map(|e| e.value).sum();
            // Aliased apart from the column: 18.16 would read `value = ''` as the alias.
            let got = single("plain_value");
            assert!((got - want).abs() < 1e-9, "{title}: {got} != {want}\n{sql}");
        }
        ("Visitors and pageviews", "A" | "B") => {
            let (column, want) = if ref_id == "A" {
                ("visitors", truth.series(|_| true, |es| Truth::visitors(es.iter())))
            } else {
                ("pageviews", truth.series(|e| e.name == "pageview", |es| es.len() as f64))
            };
            let got: Vec<(String, f64)> = answer.rows.iter().map(|r| (text(&r["time"]), number(&r[column]))).collect();
            let want: Vec<(String, f64)> = want.iter().map(|&(t, v)| (datetime(t), v)).collect();
            assert_eq!(got, want, "{title} {ref_id}\n{sql}");
        }
        ("Top pages", _) => {
            let got: Vec<(String, f64, f64)> = answer
                .rows
                .iter()
                .map(|r| (text(&r["page"]), number(&r["visitors"]), number(&r["pageviews"])))
                .collect();
            let want = truth.breakdown(|e| (e.name == "pageview").then(|| e.path.clone()));
            assert_eq!(got, want, "{title}\n{sql}")
        }
        ("Visits", _) => assert_eq!(single("visits"), truth.visits.len() as f64, "{title}\n{sql}"),
        ("Bounce rate", _) => {
            let bounces = truth.visits.iter().filter(|v| v.len() == 1).count() as f64;
            let want = (!truth.visits.is_empty()).then(|| 100.0 * bounces / truth.visits.len() as f64);
            let got = rate("bounce_rate");
            assert!(
                got.zip(want).map_or(got == want, |(g, w)| (g - w).abs() < 1e-9),
                "{title}: {got:?}, want {want:?}\n{sql}"
            );
        }
        ("Visit duration", _) => {
            let ms: i64 = truth.visits.iter().map(|v| v[v.len() - 1].ts - v[0].ts).sum();
            let want = (!truth.visits.is_empty()).then(|| ms as f64 / 1000.0 / truth.visits.len() as f64);
            let got = rate("visit_duration");
            assert!(
                got.zip(want).map_or(got == want, |(g, w)| (g - w).abs() < 1e-9),
                "{title}: {got:?}, want {want:?}\n{sql}"
            );
        }
        ("Entry pages", _) => {
            let mut per_page: BTreeMap<String, (f64, f64)> = BTreeMap::new();
            for v in &truth.visits {
                let entry = per_page.entry(v[0].path.clone()).or_default();
                *entry = (entry.0 + 1.0, entry.1 + f64::from(u8::from(v.len() == 1)));
            }
            let mut want: Vec<(String, f64, f64)> =
                per_page.into_iter().map(|(p, (n, b))| (p, n, 100.0 * b / n)).collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let got: Vec<(String, f64, f64)> = answer
                .rows
                .iter()
                .map(|r| (text(&r["page"]), number(&r["visits"]), number(&r["bounce_rate"])))
                .collect();
            assert_eq!(got, want, "{title}\n{sql}");
        }
        ("Exit pages", _) => {
            let mut per_page: BTreeMap<String, f64> = BTreeMap::new();
            for v in &truth.visits {
                let exit = v.iter().filter(|e| e.name == "pageview").max_by_key(|e| e.ts).unwrap_or(&v[0]);
                *per_page.entry(exit.path.clone()).or_default() += 1.0;
            }
            let mut want: Vec<(String, f64)> = per_page.into_iter().collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let got: Vec<(String, f64)> = answer.rows.iter().map(|r| (text(&r["page"]), number(&r["exits"]))).collect();
            assert_eq!(got, want, "{title}\n{sql}");
        }
        ("Scroll depth" | "Scroll depth and time on page", _) => {
            // Per (visitor, page): one engaged pageview, its deepest scroll, the time summed.
            let mut pages: BTreeMap<(u64, String), (f64, f64)> = BTreeMap::new();
            for e in &truth.engagements {
                let entry = pages.entry((e.visitor, e.path.clone())).or_default();
                entry.0 = entry.0.max(f64::from(e.scroll_depth.unwrap_or(0)));
                entry.1 += e.engaged_ms.unwrap_or(0) as f64;
            }
            let mut per_page: BTreeMap<String, (f64, f64, f64)> = BTreeMap::new();
            for ((_, page), (depth, ms)) in &pages {
                let entry = per_page.entry(page.clone()).or_default();
                *entry = (entry.0 + 1.0, entry.1 + depth, entry.2 + ms);
            }
            if title == "Scroll depth" {
                let (n, depth) = per_page.values().fold((0.0, 0.0), |(n, d), v| (n + v.0, d + v.1));
                assert_eq!(rate("scroll_depth"), (n > 0.0).then(|| depth / n), "{title}\n{sql}");
            } else {
                let mut want: Vec<(String, f64, f64, f64)> =
                    per_page.into_iter().map(|(p, (n, d, ms))| (p, n, d / n, ms / n / 1000.0)).collect();
                want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                let got: Vec<(String, f64, f64, f64)> = answer
                    .rows
                    .iter()
                    .map(|r| {
                        let page = text(&r["page"]);
                        (page, number(&r["pageviews"]), number(&r["scroll_depth"]), number(&r["time_on_page"]))
                    })
                    .collect();
                assert_eq!(got, want, "{title}\n{sql}");
            }
        }
        ("Revenue per currency", _) => {
            let mut per_currency: BTreeMap<String, (f64, f64)> = BTreeMap::new();
            for e in events.iter().filter(|e| !e.currency.is_empty()) {
                let entry = per_currency.entry(e.currency.clone()).or_default();
                *entry = (entry.0 + e.value.unwrap_or(0.0), entry.1 + 1.0);
            }
            let want: Vec<(String, f64, f64)> = per_currency.into_iter().map(|(c, (r, o))| (c, r, o)).collect();
            let got: Vec<(String, f64, f64)> = answer
                .rows
                .iter()
                .map(|r| (text(&r["currency"]), number(&r["revenue"]), number(&r["orders"])))
                .collect();
            assert_eq!(got, want, "{title}\n{sql}");
        }
        ("Sources", _) => assert_eq!(
            breakdown_rows(answer, "source"),
            truth.breakdown(|e| Some(label_or(&e.source, "Direct / None"))),
            "{title}\n{sql}"
        ),
        ("Referrers", _) => assert_eq!(
            breakdown_rows(answer, "referrer"),
            truth.breakdown(|e| Some(label_or(&e.ref_host, "Direct / None"))),
            "{title}\n{sql}"
        ),
        ("Countries", _) => assert_eq!(
            breakdown_rows(answer, "country"),
            truth.breakdown(|e| Some(label_or(&e.country, "Unknown"))),
            "{title}\n{sql}"
        ),
        ("Browsers", _) => assert_eq!(
            breakdown_rows(answer, "browser"),
            truth.breakdown(|e| Some(label_or(&e.browser, "Unknown"))),
            "{title}\n{sql}"
        ),
        ("Operating systems", _) => assert_eq!(
            breakdown_rows(answer, "os"),
            truth.breakdown(|e| Some(label_or(&e.os, "Unknown"))),
            "{title}\n{sql}"
        ),
        ("Devices", _) => assert_eq!(
            breakdown_rows(answer, "device"),
            truth.breakdown(|e| Some(label_or(&e.device, "Unknown"))),
            "{title}\n{sql}"
        ),
        ("Custom events", _) => assert_eq!(
            breakdown_rows(answer, "event"),
            truth.breakdown(|e| (e.name != "pageview").then(|| e.name.clone())),
            "{title}\n{sql}"
        ),
        ("Event properties", _) => {
            let mut got: Vec<((String, String, String), f64, f64)> = answer
                .rows
                .iter()
                .map(|r| {
                    let key = (text(&r["event"]), text(&r["property"]), text(&r["prop_value"]));
                    (key, number(&r["visitors"]), number(&r["events"]))
                })
                .collect();
            let mut groups: BTreeMap<(String, String, String), Vec<&EventRecord>> = BTreeMap::new();
            for e in events {
                for (key, value) in &e.props {
                    groups.entry((e.name.clone(), key.clone(), value.clone())).or_default().push(e);
                }
            }
            let mut want: Vec<_> =
                groups.into_iter().map(|(k, es)| (k, Truth::visitors(es.iter()), es.len() as f64)).collect();
            got.sort_by(|a, b| a.0.cmp(&b.0));
            want.sort_by(|a, b| a.0.cmp(&b.0));
            assert!(!want.is_empty(), "the sample has props");
            assert_eq!(got, want, "{title}\n{sql}");
        }
        ("Revenue", _) => {
            let got: Vec<(String, f64, f64)> =
                answer.rows.iter().map(|r| (text(&r["event"]), number(&r["revenue"]), number(&r["orders"]))).collect();
            let mut per_name: BTreeMap<String, (f64, f64)> = BTreeMap::new();
            for e in events.iter().filter(|e| e.value.is_some()) {
                let entry = per_name.entry(e.name.clone()).or_default();
                entry.0 += e.value.unwrap_or_default();
                entry.1 += 1.0;
            }
            let mut want: Vec<(String, f64, f64)> = per_name.into_iter().map(|(n, (r, o))| (n, r, o)).collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            assert_eq!(got, want, "{title}\n{sql}");
        }
        ("Top referrer URLs (leaderboard)", _) => {
            assert!(topk_states, "checked by the caller on servers without topK state columns");
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for e in events.iter().filter(|e| !e.referrer.is_empty()) {
                *counts.entry(&e.referrer).or_default() += 1;
            }
            let mut want: Vec<(&str, usize)> = counts.into_iter().collect();
            want.sort_by_key(|&(r, n)| (std::cmp::Reverse(n), r));
            let want: Vec<String> = want.iter().take(10).map(|(r, _)| (*r).to_owned()).collect();
            let got: Vec<String> = answer.rows.iter().map(|r| text(&r["referrer"])).collect();
            assert_eq!(got, want, "{title}\n{sql}");
        }
        (other, ref_id) => panic!(
            "the dashboard has a panel {other:?} (query {ref_id}) that this test does not check yet; add its truth \
             here:\n{sql}"
        ),
    }
}

/// `YYYY-MM-DD hh:mm:ss` of Unix seconds, as ClickHouse prints a `DateTime('UTC')` (civil
/// date from days since 1970, after Howard Hinnant's `civil_from_days`).
fn datetime(seconds: i64) -> String {
    let (days, secs) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[test]
fn datetimes_print_as_clickhouse_prints_them() {
    for (seconds, want) in
        [(0, "1970-01-01 00:00:00"), (951_782_400, "2000-02-29 00:00:00"), (1_795_431_480, "2026-11-23 10:58:00")]
    {
        assert_eq!(datetime(seconds), want);
    }
}

#[test]
fn dashboards_name_provisioned_datasources_and_unique_panels() {
    let datasources = provisioned_datasources();
    assert_eq!(
        datasources,
        BTreeMap::from([
            (CLICKHOUSE_UID.to_owned(), "grafana-clickhouse-datasource".to_owned()),
            (PROMETHEUS_UID.to_owned(), "prometheus".to_owned()),
        ])
    );
    let mut uids = BTreeSet::new();
    for (file, dashboard) in dashboards() {
        let uid = dashboard["uid"].as_str().unwrap_or_else(|| panic!("{file}: no uid"));
        assert!(uids.insert(uid.to_owned()), "{file}: uid {uid} used twice");
        let mut ids = BTreeSet::new();
        let all = panels(&dashboard);
        assert!(all.len() >= 10, "{file}: {} panels", all.len());
        for panel in all {
            let title = panel["title"].as_str().unwrap_or_default();
            let id = panel["id"].as_u64().unwrap_or_else(|| panic!("{file}: panel {title:?} has no id"));
            assert!(ids.insert(id), "{file}: panel id {id} used twice");
            assert!(panel["gridPos"]["w"].as_u64().is_some(), "{file}: {title} has no gridPos");
            let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{file}: {title} has no targets"));
            assert!(!targets.is_empty(), "{file}: {title} has no targets");
            let mut refs = BTreeSet::new();
            for target in targets {
                let ds = &target["datasource"];
                let uid = ds["uid"].as_str().unwrap_or_else(|| panic!("{file}: {title}: a target without uid"));
                let kind = datasources.get(uid).unwrap_or_else(|| panic!("{file}: {title}: unprovisioned uid {uid}"));
                assert_eq!(ds["type"].as_str(), Some(kind.as_str()), "{file}: {title}: datasource type");
                assert!(refs.insert(target["refId"].as_str().unwrap_or_default()), "{file}: {title}: refId twice");
                if uid == CLICKHOUSE_UID {
                    let sql = target["rawSql"].as_str().unwrap_or_else(|| panic!("{file}: {title}: no rawSql"));
                    assert_eq!(target["editorType"], "sql", "{file}: {title}");
                    let time_series = panel["type"] == "timeseries";
                    let (format, query_type) = if time_series { (0, "timeSeries") } else { (1, "table") };
                    assert_eq!(target["format"], format, "{file}: {title}: format");
                    assert_eq!(target["queryType"], query_type, "{file}: {title}: queryType");
                    assert!(
                        sql.contains("site = decodeURLComponent('${site:percentencode}')"),
                        "{file}: {title}: every query filters on the site, in a form no site name breaks out of"
                    );
                } else {
                    let expr = target["expr"].as_str().unwrap_or_else(|| panic!("{file}: {title}: no expr"));
                    assert!(expr.contains("gallop_") || expr.contains("process_"), "{file}: {title}: {expr}");
                }
            }
        }
        for variable in dashboard["templating"]["list"].as_array().map(Vec::as_slice).unwrap_or_default() {
            if let Some(uid) = variable["datasource"]["uid"].as_str() {
                assert!(
                    datasources.contains_key(uid),
                    "{file}: variable {}: unprovisioned uid {uid}",
                    variable["name"]
                );
            }
        }
    }
}

#[tokio::test]
async fn every_site_analytics_panel_answers_with_the_truth() {
    site_analytics_panels_answer_with_the_truth(TestDb::new("grafana")).await;
}

/// The same panels on the cluster (through its `Distributed` table): the same answers,
/// the visitors split over two partitions, one per shard.
#[tokio::test]
async fn every_site_analytics_panel_answers_with_the_truth_on_a_cluster() {
    site_analytics_panels_answer_with_the_truth(TestDb::on_cluster("grafana")).await;
}

async fn site_analytics_panels_answer_with_the_truth(db: TestDb) {
    let ch = db.migrated().await;
    let batches = batches();
    // Every event counted (none late or in the future): the processor's own check.
    let mut processor = processor();
    for (position, batch) in batches.iter().enumerate() {
        let arrival = batch.iter().map(|e| e.ts).max().unwrap_or_default() + 60_000;
        let report = processor.process_message(0, position as u64 + 1, &message(batch), arrival).expect("not full");
        assert_eq!(report.counted, batch.len(), "every event counted (none late or in the future)");
    }
    // Hostile site names, each with a copy of SITE's events right after the original (in
    // event-time order: appended at the end they would be older than the allowed lateness).
    let batches: Vec<Vec<EventRecord>> = batches
        .into_iter()
        .map(|batch| {
            batch
                .into_iter()
                .flat_map(|e| {
                    let copies: Vec<EventRecord> = if e.site == SITE {
                        HOSTILE_SITES.iter().map(|h| EventRecord { site: (*h).to_owned(), ..e.clone() }).collect()
                    } else {
                        Vec::new()
                    };
                    std::iter::once(e).chain(copies)
                })
                .collect()
        })
        .collect();
    // Visitors split over two partitions (a visit stays in one): on a cluster, two shards.
    let mut messages = Vec::new();
    for batch in &batches {
        let arrival = batch.iter().map(|e| e.ts).max().unwrap_or_default() + 60_000;
        for odd in [0, 1] {
            let half: Vec<EventRecord> = batch.iter().filter(|e| e.visitor % 2 == odd).cloned().collect();
            if !half.is_empty() {
                messages.push((odd as u32, message(&half), arrival));
            }
        }
    }
    db.write(&ch, &messages, day0()).await;
    let all: Vec<&EventRecord> = batches.iter().flatten().collect();
    let topk_states = ch.schema().features().topk_states;

    let (_, dashboard) =
        dashboards().into_iter().find(|(file, _)| file == "site-analytics.json").expect("site analytics dashboard");

    // The `site` variable: every site with data, from Grafana's own variable query.
    let variables = dashboard["templating"]["list"].as_array().expect("variables");
    let database = variables.iter().find(|v| v["name"] == "database").expect("database variable");
    assert_eq!((database["type"].as_str(), database["query"].as_str()), (Some("constant"), Some("gallop")));
    let site = variables.iter().find(|v| v["name"] == "site").expect("site variable");
    let sql = expand(site["query"].as_str().expect("site query"), Range { from: 0, to: 0 }, &db.config.database, "");
    let sites: Vec<String> =
        answer(&db.query(&format!("{sql} FORMAT JSON")), &sql).rows.iter().map(|r| text(&r["site"])).collect();
    let mut want = vec![SITE, OTHER_SITE];
    want.extend(HOSTILE_SITES);
    want.sort_unstable();
    let mut sites = sites;
    sites.sort_unstable();
    assert_eq!(sites, want, "{sql}");

    let day0 = day0();
    let hour0 = day0 + 10 * 3600;
    let ranges = [
        ("two hours: minute rows", Range { from: hour0, to: hour0 + 7200 }),
        ("half an hour inside them", Range { from: hour0 + 1800, to: hour0 + 3600 }),
        // An event starts the minute (and hour) at 11:00: an absolute range ending there
        // must not count it.
        ("an hour ending on the hour", Range { from: hour0, to: hour0 + 3600 }),
        ("two days: hour rows", Range { from: day0, to: day0 + 2 * 86_400 }),
        ("a week from mid-hour: hour rows", Range { from: day0 - 5 * 86_400 + 1800, to: day0 + 2 * 86_400 }),
        ("thirty days: day rows", Range { from: day0 - 20 * 86_400, to: day0 + 10 * 86_400 }),
    ];
    let mut checked = BTreeSet::new();
    for (site, (what, range)) in
        [SITE].into_iter().chain(HOSTILE_SITES).flat_map(|site| ranges.iter().map(move |r| (site, *r)))
    {
        let bucket = granularity(range);
        let in_range = |e: &EventRecord| (range.from..range.to).contains(&(e.ts / 1000 / bucket * bucket));
        let site_events: Vec<&EventRecord> =
            all.iter().copied().filter(|e| e.site == site && e.name != ENGAGEMENT).collect();
        let truth = Truth {
            events: site_events.iter().copied().filter(|e| in_range(e)).collect(),
            visits: visits(&site_events).into_iter().filter(|v| in_range(v[0])).collect(),
            engagements: all
                .iter()
                .copied()
                .filter(|e| e.site == site && e.name == ENGAGEMENT && in_range(e))
                .collect(),
            bucket,
        };
        assert!(!truth.events.is_empty(), "{what}: the range holds events");
        for panel in panels(&dashboard) {
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let ref_id = target["refId"].as_str().unwrap_or_default();
                let sql = expand(target["rawSql"].as_str().unwrap_or_default(), range, &db.config.database, site);
                let sql = format!("{sql}\nFORMAT JSON");
                if title == "Top referrer URLs (leaderboard)" && !topk_states {
                    // Servers before 22.8 keep leaderboards as raw bytes (their topK states are
                    // corrupted when stored); the plugin needs a current server anyway.
                    let error = db.try_query(&sql).expect_err("topKMerge over raw bytes fails on this server");
                    assert!(error.contains("topKMerge") || error.contains("String"), "{error}");
                    continue;
                }
                let answer = answer(&db.query(&sql), &sql);
                if panel["type"] == "timeseries" {
                    let (name, kind) = answer.columns.first().cloned().unwrap_or_default();
                    assert!(name == "time" && kind.starts_with("DateTime"), "{title}: first column {name} {kind}");
                }
                check(title, ref_id, &answer, &truth, topk_states, &format!("site {site:?}, {what}:\n{sql}"));
                checked.insert(format!("{title}/{ref_id}"));
            }
        }
    }
    assert!(checked.len() >= 24, "panels checked: {checked:?}");

    // A site without visits or engagement: the rates show no data, not 0.
    let range = Range { from: hour0, to: hour0 + 7200 };
    for panel in panels(&dashboard) {
        let (title, column) = match panel["title"].as_str().unwrap_or_default() {
            "Bounce rate" => ("Bounce rate", "bounce_rate"),
            "Visit duration" => ("Visit duration", "visit_duration"),
            "Scroll depth" => ("Scroll depth", "scroll_depth"),
            _ => continue,
        };
        let sql = expand(
            panel["targets"][0]["rawSql"].as_str().unwrap_or_default(),
            range,
            &db.config.database,
            "nobody.test",
        );
        let answer = answer(&db.query(&format!("{sql}\nFORMAT JSON")), &sql);
        assert!(
            answer.rows.len() == 1 && answer.rows[0][column].is_null(),
            "{title}: no data, not {:?}\n{sql}",
            answer.rows
        );
        checked.insert(format!("{title}/no data"));
    }
    assert_eq!(checked.iter().filter(|c| c.ends_with("/no data")).count(), 3, "{checked:?}");
}
