//! Visits and engagement against a truth computed here from the events' structure: visits
//! split where a visitor is idle longer than the timeout or a UTC day ends, bounces,
//! durations, entry and exit pages, pageviews per visit — with events out of order inside
//! a visit, and through processors "killed" between flushes and restarted from what the
//! flushes stored (as the pipeline runtime restarts them).

use std::{collections::BTreeMap, time::Duration};

use gallop_config::{ProcessorConfig, TimeConfig};
use gallop_event::{EventRecord, ENGAGEMENT};
use gallop_processor::{Delta, OpenSessions, Processor, SessionState};

/// 2026-11-25 00:00 UTC.
const DAY0: i64 = 1_795_564_800_000;
const MINUTE: i64 = 60_000;
const TIMEOUT: i64 = 30 * MINUTE;
const DAY: i64 = 86_400_000;

/// (bucket seconds, dimension, value) → (events, value_sum, value_count), wrapping sums.
type Rows = BTreeMap<(i64, String, String), (u64, f64, u64)>;

fn config() -> (ProcessorConfig, TimeConfig) {
    let processor = ProcessorConfig {
        flush_keys: 1_000_000,
        session_breakdowns: ["source", "country", "device", "browser", "os"].map(String::from).to_vec(),
        ..ProcessorConfig::default()
    };
    // Events of two days arrive interleaved; nothing here is late.
    let time = TimeConfig { allowed_lateness: Duration::from_secs(3 * 86_400), ..TimeConfig::default() };
    (processor, time)
}

fn add(rows: &mut Rows, delta: &Delta) {
    for row in &delta.rows {
        if !(row.dimension.starts_with("session:") || row.dimension.starts_with("engagement:")) {
            continue;
        }
        let cell = rows.entry((row.bucket, row.dimension.clone(), row.value.clone())).or_insert((0, 0.0, 0));
        cell.0 = cell.0.wrapping_add(row.events);
        cell.1 += row.value_sum;
        cell.2 = cell.2.wrapping_add(row.value_count);
    }
}

fn without_zeros(rows: Rows) -> Rows {
    rows.into_iter().filter(|(_, c)| *c != (0, 0.0, 0)).collect()
}

fn event(visitor: u64, ts: i64, name: &str, path: &str) -> EventRecord {
    let mut e = EventRecord::new();
    e.site = "s.test".into();
    e.host = "s.test".into();
    e.name = name.into();
    e.path = path.into();
    e.visitor = visitor;
    e.ts = ts;
    e.source = if visitor % 3 == 0 { "Google".into() } else { String::new() };
    e.country = ["DE", "US", "FR"][(visitor % 3) as usize].into();
    e
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Visitors with known visit structure. Returns the visits (each a list of events in time
/// order) and the arrival order: per visitor its visits in order, inside a visit the first
/// event first and the rest shuffled (out of order within the lateness); visitors
/// interleaved at random.
fn scenario(seed: u64) -> (Vec<Vec<EventRecord>>, Vec<EventRecord>) {
    let mut rng = Rng(seed);
    let mut visits: Vec<Vec<EventRecord>> = Vec::new();
    let mut per_visitor: Vec<std::collections::VecDeque<EventRecord>> = Vec::new();
    for visitor in 1..=150u64 {
        let mut arrival = std::collections::VecDeque::new();
        let mut finish = |visit: Vec<EventRecord>, rng: &mut Rng| {
            // Out of order inside the visit: neighbours swap where the later one is still
            // within the timeout of what arrived before it. (Visits are made of what has
            // arrived, as Plausible's are: an event beyond the timeout of everything
            // before it starts a visit even if a later arrival would have bridged the gap.)
            let mut rest: Vec<EventRecord> = visit[1..].to_vec();
            let mut i = 0;
            while i + 1 < rest.len() {
                let before = if i == 0 { visit[0].ts } else { rest[i - 1].ts };
                if rest[i + 1].ts - before <= TIMEOUT && rng.next(2) == 0 {
                    rest.swap(i, i + 1);
                    i += 2;
                } else {
                    i += 1;
                }
            }
            arrival.push_back(visit[0].clone());
            arrival.extend(rest);
            visits.push(visit);
        };
        // Every tenth visitor starts 3 minutes before midnight and comes back 1 minute
        // after: the day boundary ends the visit although the gap is short.
        let midnight = visitor % 10 == 0;
        let mut t = if midnight { DAY0 + DAY - 3 * MINUTE } else { DAY0 + 9 * 3_600_000 + rng.next(3_600_000) as i64 };
        for _ in 0..1 + rng.next(3) {
            let mut visit: Vec<EventRecord> = Vec::new();
            for i in 0..1 + rng.next(6) {
                if i > 0 {
                    // Gaps up to the timeout, sometimes exactly the timeout (the same visit).
                    t += if rng.next(5) == 0 { TIMEOUT } else { 1 + rng.next((TIMEOUT / 4) as u64) as i64 };
                }
                if midnight && i > 0 && t < DAY0 + DAY {
                    t = DAY0 + DAY + MINUTE;
                }
                if i > 0 && t.div_euclid(DAY) != visit[0].ts.div_euclid(DAY) {
                    // The day changed: the visit ends however short the gap.
                    finish(std::mem::take(&mut visit), &mut rng);
                }
                let (name, interactive) = match rng.next(4) {
                    0 => ("signup", true),
                    1 => ("scroll", false),
                    _ => ("pageview", true),
                };
                let mut e = event(visitor, t, name, &format!("/p{}", rng.next(5)));
                e.interactive = interactive;
                visit.push(e);
            }
            finish(visit, &mut rng);
            // The next visit: just over the timeout, or much later.
            t += if rng.next(2) == 0 { TIMEOUT + 1 } else { TIMEOUT + rng.next(3_600_000) as i64 };
        }
        per_visitor.push(arrival);
    }
    // Visitors interleaved at random; each visitor's own order kept.
    let mut order = Vec::new();
    loop {
        let live: Vec<usize> = (0..per_visitor.len()).filter(|&i| !per_visitor[i].is_empty()).collect();
        if live.is_empty() {
            break;
        }
        let pick = live[rng.next(live.len() as u64) as usize];
        order.extend(per_visitor[pick].pop_front());
    }
    (visits, order)
}

/// What Plausible would count for `visits`, in the rows Gallop writes.
fn truth(visits: &[Vec<EventRecord>]) -> Rows {
    let mut rows = Rows::new();
    let mut add = |bucket: i64, dim: &str, value: &str, events: u64, sum: f64, count: u64| {
        let cell = rows.entry((bucket, dim.to_owned(), value.to_owned())).or_insert((0, 0.0, 0));
        cell.0 += events;
        cell.1 += sum;
        cell.2 += count;
    };
    for visit in visits {
        let first = &visit[0];
        let bucket = first.ts.div_euclid(MINUTE) * 60;
        let duration = (visit.iter().map(|e| e.ts).max().unwrap_or(0) - first.ts) as f64;
        let interactive = visit.iter().filter(|e| e.interactive).count();
        let bounce = u64::from(interactive == 1);
        let pageviews = visit.iter().filter(|e| e.name == "pageview").count() as u64;
        let exit = visit.iter().filter(|e| e.name == "pageview").max_by_key(|e| e.ts).unwrap_or(first);
        for (dim, value) in [
            ("session:total", ""),
            ("session:entry_page", first.path.as_str()),
            ("session:source", first.source.as_str()),
            ("session:country", first.country.as_str()),
            ("session:device", ""),
            ("session:browser", ""),
            ("session:os", ""),
        ] {
            add(bucket, dim, value, 1, duration, bounce);
        }
        add(bucket, "session:exit_page", &exit.path, 1, 0.0, 0);
        if pageviews > 0 {
            add(bucket, "session:pageviews", "", pageviews, 0.0, 0);
        }
    }
    rows
}

/// Runs `order` through a processor, flushing every `flush_every` events; at each of
/// `kills` the processor is dropped with what it held since its last flush and a new one
/// restarts from the stored visits and watermarks, re-reading the events after the last
/// flush (as the runtime re-reads the log after the stored positions).
fn run(order: &[EventRecord], flush_every: usize, kills: &[usize]) -> Rows {
    let (processor_config, time) = config();
    let arrival = DAY0 + 3 * DAY;
    let mut rows = Rows::new();
    let mut stored_sessions: Vec<SessionState> = Vec::new();
    let mut stored_watermarks: BTreeMap<u32, i64> = BTreeMap::new();
    let store = |delta: Delta, rows: &mut Rows, sessions: &mut Vec<SessionState>, marks: &mut BTreeMap<u32, i64>| {
        add(rows, &delta);
        sessions.extend(delta.sessions.to_states());
        marks.extend(delta.watermarks);
    };
    let mut processor = Processor::new(&processor_config, &time).expect("config");
    let (mut i, mut flushed_up_to, mut kills) = (0, 0, kills.iter().copied().peekable());
    while i < order.len() {
        if kills.peek() == Some(&i) {
            kills.next();
            processor = Processor::new(&processor_config, &time).expect("config");
            processor
                .restore(OpenSessions { watermarks: stored_watermarks.clone(), sessions: stored_sessions.clone() });
            i = flushed_up_to;
            continue;
        }
        processor.process(0, &order[i], arrival).expect("room");
        i += 1;
        if i % flush_every == 0 {
            store(processor.flush(arrival), &mut rows, &mut stored_sessions, &mut stored_watermarks);
            flushed_up_to = i;
        }
    }
    store(processor.flush(arrival), &mut rows, &mut stored_sessions, &mut stored_watermarks);
    without_zeros(rows)
}

#[track_caller]
fn check_equal(got: &Rows, want: &Rows) {
    let mut differences = Vec::new();
    for (key, w) in want {
        if got.get(key) != Some(w) {
            differences.push(format!("{key:?}: want {w:?}, got {:?}", got.get(key)));
        }
    }
    differences
        .extend(got.keys().filter(|k| !want.contains_key(*k)).map(|k| format!("{k:?}: unexpected {:?}", got[k])));
    assert!(
        differences.is_empty(),
        "{} of {} rows differ:\n{}",
        differences.len(),
        want.len(),
        differences[..differences.len().min(12)].join("\n")
    );
}

#[test]
fn visits_match_the_truth_in_order_out_of_order_and_across_midnight() {
    for seed in [7, 8, 9] {
        let (visits, order) = scenario(seed);
        let want = truth(&visits);
        let visits_total: u64 = want.iter().filter(|((_, d, _), _)| d == "session:total").map(|(_, c)| c.0).sum();
        assert_eq!(visits_total, visits.len() as u64, "the truth counts every visit");
        assert!(visits.len() > 200, "a scenario has many visits: {}", visits.len());
        check_equal(&run(&order, 1_000_000, &[]), &want);
        check_equal(&run(&order, 37, &[]), &want);
    }
}

#[test]
fn visits_survive_five_kills_between_flushes() {
    let (visits, order) = scenario(11);
    let want = truth(&visits);
    let kills: Vec<usize> = (1..=5).map(|k| k * order.len() / 6 + 5).collect();
    check_equal(&run(&order, 23, &kills), &want);
}

#[test]
fn a_gap_just_over_the_timeout_starts_a_new_visit_and_bounces_are_taken_back() {
    let (processor_config, time) = config();
    let mut processor = Processor::new(&processor_config, &time).expect("config");
    let t = DAY0 + 10 * 3_600_000;
    for e in [
        event(1, t, "pageview", "/a"),
        event(1, t + TIMEOUT, "pageview", "/b"), // same visit: exactly the timeout
        event(1, t + 2 * TIMEOUT + 1, "pageview", "/c"), // new visit: 1 ms over
        event(2, t, "pageview", "/a"),           // a bounce
    ] {
        processor.process(0, &e, t + DAY).expect("room");
    }
    let mut rows = Rows::new();
    add(&mut rows, &processor.flush(t + DAY));
    let rows = without_zeros(rows);
    let b0 = t.div_euclid(MINUTE) * 60;
    let b1 = (t + 2 * TIMEOUT + 1).div_euclid(MINUTE) * 60;
    let get = |b: i64, d: &str, v: &str| rows.get(&(b, d.to_owned(), v.to_owned())).copied();
    // Visits 3, bounces 2 (visitor 2 and the third visit), duration 30 min.
    assert_eq!(get(b0, "session:total", ""), Some((2, TIMEOUT as f64, 1)));
    assert_eq!(get(b1, "session:total", ""), Some((1, 0.0, 1)));
    assert_eq!(get(b0, "session:exit_page", "/b"), Some((1, 0.0, 0)));
    assert_eq!(get(b0, "session:exit_page", "/a"), Some((1, 0.0, 0)), "visitor 2's exit; visitor 1's moved to /b");
    assert_eq!(get(b0, "session:pageviews", ""), Some((3, 0.0, 0)));
}

#[test]
fn engagement_counts_nowhere_else_and_keeps_each_pageviews_deepest_scroll() {
    let (processor_config, time) = config();
    let mut processor = Processor::new(&processor_config, &time).expect("config");
    let t = DAY0 + 10 * 3_600_000;
    let engagement = |visitor: u64, ts: i64, path: &str, sd: u8, e: u64| {
        let mut r = event(visitor, ts, ENGAGEMENT, path);
        r.scroll_depth = Some(sd);
        r.engaged_ms = Some(e);
        r
    };
    for e in [
        event(1, t, "pageview", "/a"),
        engagement(1, t + 5_000, "/a", 30, 4_000),
        engagement(1, t + 65_000, "/a", 80, 2_000), // deeper: adds 50; next minute, same row
        engagement(1, t + 70_000, "/a", 60, 1_000), // shallower: adds nothing to depth
        event(1, t + 80_000, "pageview", "/b"),
        engagement(1, t + 90_000, "/b", 10, 500),
        engagement(9, t, "/a", 40, 3_000), // no visit open: an engaged pageview on its own
    ] {
        processor.process(0, &e, t + DAY).expect("room");
    }
    assert_eq!(processor.stats().engagements, 5);
    assert_eq!(processor.stats().events, 2, "engagement is not an event");
    let delta = processor.flush(t + DAY);
    let b0 = t.div_euclid(MINUTE) * 60;
    let b1 = (t + 90_000).div_euclid(MINUTE) * 60;
    let mut rows = Rows::new();
    add(&mut rows, &delta);
    let get = |b: i64, d: &str, v: &str| rows.get(&(b, d.to_owned(), v.to_owned())).copied();
    assert_eq!(get(b0, "engagement:path", "/a"), Some((2, 10_000.0, 120)), "two engaged pageviews of /a");
    assert_eq!(get(b1, "engagement:path", "/b"), Some((1, 500.0, 10)));
    assert_eq!(get(b0, "engagement:total", ""), Some((2, 10_000.0, 120)));
    for row in &delta.rows {
        assert!(!row.value.contains(ENGAGEMENT), "engagement counted as {row:?}");
    }
    let total: u64 = delta.rows.iter().filter(|r| r.dimension == "total").map(|r| r.events).sum();
    assert_eq!(total, 2, "only the two pageviews are events");
}
