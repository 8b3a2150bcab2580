//! The comparison target: `traqq` 0.2.0 (crates.io) recording the same events.
//!
//! # traqq's API and what it does per event
//!
//! traqq takes one event at a time: `Traqq::record(IncomingEvent)`, where an
//! `IncomingEvent` is made from a `serde_json::Value` object by `IncomingEvent::from_json`
//! (its README's way and what its own TCP server does with each parsed line). `record`
//! then, per event: deep-clones the value (in `from_json`); rebuilds the set of keys the
//! mapping needs and drops every other property; sanitizes every kept string (trim, cut,
//! replace `~` and `:`); copies every property into three `HashMap<String, String>`s;
//! generates a compound key `a~b` for **every pair** of kept properties (quadratic in their
//! number); formats one storage key per metric and executes it against the storage
//! (`MemoryStorage`: `RwLock`ed `HashMap`s keyed by `String`; its "HyperLogLog" is an exact
//! `HashSet<String>`); finally adds every key it wrote to a per-day key-tracking set.
//! traqq buckets by **processing time** (`Utc::now()`, daily buckets; event time is ignored),
//! where Gallop buckets by event time per minute.
//!
//! # Configuration: the metrics of Gallop's default rollups
//!
//! One `Traqq` per site (the site is the storage prefix, traqq's tenant namespace; traqq has
//! no site field of its own), each with [`traqq_config`]:
//!
//! - `bitmap` (uniques): `visitor`, i.e. unique visitors per site and day;
//! - `add` (counters): `event` (the name), `path`, `country`, `browser`, `os`, `device`,
//!   `source`, `utm_source`, and the compound `event~country`;
//! - `add_value` (`adv`, sum and count): `value` by `event`;
//! - `top` (leaderboard): `referrer` (the full referrer URL).
//!
//! traqq 0.2.0's `TraqqConfig::validate` rejects a pattern used both in `add` and in
//! `add_value` ("duplicate pattern: event"; the README's own example trips on it) although
//! the two live in different key spaces (`add:…:event` and `adv:…:value:event`). So the `adv`
//! mapping is added to the public `Traqq::config` after `Traqq::new` has validated the rest.
//!
//! # What is timed
//!
//! Events are fed in chunks of [`CHUNK`]. For each chunk, first (not timed: input
//! preparation) every [`EventRecord`] becomes the JSON object traqq takes, `serde_json::to_value`
//! of the record (all its non-empty fields, as on the broker) plus `"event": name`, and its
//! site's `Traqq` is looked up. Then (timed) for each event: `IncomingEvent::from_json` and
//! `Traqq::record`, including dropping the returned `ProcessedEvent`. With
//! [`TraqqEntry::Prebuilt`] the `IncomingEvent` is built during preparation instead and
//! only `record` is timed. JSON text parsing is in neither: Gallop's processor core gets
//! decoded records as well (the [`decode`](crate::decode) benchmark measures decoding).
//! Reading the results back (`Traqq::query_days`) after the run is not timed either.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use gallop_event::EventRecord;
use serde_json::Value;
use traqq::prelude::{AddValueConfig, IncomingEvent, MappingConfig, MemoryStorage, MetricData, Traqq, TraqqConfig};

use gallop_config::{LeaderboardConfig, ProcessorConfig, RollupConfig};

use crate::BenchError;

/// Gallop's processor configured for the metrics [`traqq_config`] gives traqq, on top of
/// `base`'s bounds: counters per event name, path, country, browser, os, device, source,
/// utm_source and name~country; visitors per site only; value by event name (the `name`
/// rows carry value sums); a referrer leaderboard; no visits (traqq has none).
pub fn gallop_like_traqq(base: &ProcessorConfig) -> ProcessorConfig {
    let rollup = |dimension: &str, visitors: bool| RollupConfig { dimension: dimension.to_owned(), visitors };
    ProcessorConfig {
        default_rollups: false,
        rollups: vec![
            rollup("total", true),
            rollup("name", false),
            rollup("path", false),
            rollup("country", false),
            rollup("browser", false),
            rollup("os", false),
            rollup("device", false),
            rollup("source", false),
            rollup("utm_source", false),
            rollup("name~country", false),
        ],
        leaderboards: vec![LeaderboardConfig { dimension: "referrer".to_owned(), k: 20 }],
        sessions: false,
        ..base.clone()
    }
}

/// Events prepared and then recorded at a time (bounds the memory of prepared JSON values).
pub const CHUNK: usize = 8192;

/// How events enter traqq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraqqEntry {
    /// `IncomingEvent::from_json(value)` then `record` (timed: both). traqq's documented path.
    FromJson,
    /// The `IncomingEvent` is built outside the timed region; timed: `record` only.
    Prebuilt,
}

/// The mapping of Gallop's default rollups, without the `adv` part (see the module docs):
/// add it with [`add_value_mapping`] after `Traqq::new`.
pub fn traqq_config() -> TraqqConfig {
    let strings = |names: &[&str]| names.iter().map(|&name| name.to_owned()).collect::<Vec<_>>();
    TraqqConfig {
        mapping: MappingConfig {
            bitmap: strings(&["visitor"]),
            add: strings(&[
                "event",
                "path",
                "country",
                "browser",
                "os",
                "device",
                "source",
                "utm_source",
                "event~country",
            ]),
            add_value: Vec::new(),
            top: strings(&["referrer"]),
        },
        ..TraqqConfig::default()
    }
}

/// The `adv` mapping: sum and count of `value` by event name.
pub fn add_value_mapping() -> Vec<AddValueConfig> {
    vec![AddValueConfig { key: "event".into(), add_key: "value".into() }]
}

/// What one traqq run did, and what it wrote (read back through traqq's query API).
#[derive(Debug, Clone)]
pub struct TraqqRun {
    /// Events recorded.
    pub events: usize,
    /// Time spent in traqq (see the module docs for what is timed).
    pub elapsed: Duration,
    /// Time spent preparing traqq's input (not part of `elapsed`).
    pub prep_elapsed: Duration,
    /// How events entered traqq.
    pub entry: TraqqEntry,
    /// Sites seen (one `Traqq` each).
    pub sites: usize,
    /// Storage operations traqq executed (its `ProcessedEvent::commands`).
    pub storage_ops: u64,
    /// Metric keys found in storage afterwards (all sites, all day buckets).
    pub metric_keys: usize,
    /// `add` counters by pattern (`"event"`, `"country~event"`…: traqq sorts compound keys),
    /// then field value, summed over sites and day buckets.
    pub counters: BTreeMap<String, HashMap<String, i64>>,
    /// Unique visitors (`bmp`), summed over sites and day buckets.
    pub unique_visitors: u64,
    /// Sum of `value` over all events (the `adv` summaries).
    pub value_sum: f64,
    /// Number of events with a `value` (the `adv` summaries).
    pub value_count: i64,
    /// Sum of `value` by event name (the `adv` per-label hash).
    pub value_by_name: HashMap<String, f64>,
    /// Referrer URLs (as traqq sanitized them: `:` becomes `_`) with their counts, merged from
    /// each site's top 250 (traqq's read limit), highest first.
    pub top_referrers: Vec<(String, f64)>,
}

impl TraqqRun {
    /// Events per second of traqq's timed work.
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// The `add` counter of `pattern` (as traqq writes it) for `field`, 0 when absent.
    pub fn counter(&self, pattern: &str, field: &str) -> i64 {
        self.counters.get(pattern).and_then(|fields| fields.get(field)).copied().unwrap_or(0)
    }
}

/// An event as prepared for traqq.
enum Prepared {
    Json(Value),
    Incoming(IncomingEvent),
}

/// Feeds events to traqq chunk by chunk, so a stream never has to be in memory at once.
pub struct TraqqRunner {
    entry: TraqqEntry,
    site_index: HashMap<String, usize>,
    traqqs: Vec<Traqq>,
    events: usize,
    storage_ops: u64,
    elapsed: Duration,
    prep_elapsed: Duration,
}

impl TraqqRunner {
    /// A runner with no events yet.
    pub fn new(entry: TraqqEntry) -> Self {
        Self {
            entry,
            site_index: HashMap::new(),
            traqqs: Vec::new(),
            events: 0,
            storage_ops: 0,
            elapsed: Duration::ZERO,
            prep_elapsed: Duration::ZERO,
        }
    }

    fn site(&mut self, site: &str) -> Result<usize, BenchError> {
        if let Some(&index) = self.site_index.get(site) {
            return Ok(index);
        }
        let mut traqq = Traqq::new(traqq_config(), Box::new(MemoryStorage::new()), site).map_err(BenchError::Traqq)?;
        traqq.config.mapping.add_value = add_value_mapping();
        self.traqqs.push(traqq);
        let index = self.traqqs.len() - 1;
        self.site_index.insert(site.to_owned(), index);
        Ok(index)
    }

    /// Records `records` (prepared [`CHUNK`] at a time, see the module docs).
    pub fn feed(&mut self, records: &[EventRecord]) -> Result<(), BenchError> {
        let mut prepared = Vec::with_capacity(CHUNK.min(records.len()));
        for chunk in records.chunks(CHUNK) {
            let prep_start = Instant::now();
            for record in chunk {
                let site = self.site(&record.site)?;
                let mut value = serde_json::to_value(record)?;
                if let Value::Object(map) = &mut value {
                    map.insert("event".to_owned(), Value::String(record.name.clone()));
                }
                let input = match self.entry {
                    TraqqEntry::FromJson => Prepared::Json(value),
                    TraqqEntry::Prebuilt => {
                        Prepared::Incoming(IncomingEvent { event: record.name.clone(), properties: value })
                    }
                };
                prepared.push((site, input));
            }
            self.prep_elapsed += prep_start.elapsed();

            let start = Instant::now();
            for (site, input) in prepared.drain(..) {
                let incoming = match input {
                    Prepared::Json(value) => IncomingEvent::from_json(value).map_err(BenchError::Traqq)?,
                    Prepared::Incoming(incoming) => incoming,
                };
                // `site` came from `self.site`, which pushed the Traqq it indexes.
                let processed = self.traqqs[site].record(incoming).map_err(BenchError::Traqq)?;
                self.storage_ops += processed.commands.len() as u64;
            }
            self.elapsed += start.elapsed();
            self.events += chunk.len();
        }
        Ok(())
    }

    /// Reads back what traqq wrote (yesterday's and today's day buckets: traqq buckets by
    /// processing time) and reports the run.
    pub fn finish(self) -> Result<TraqqRun, BenchError> {
        let mut run = TraqqRun {
            events: self.events,
            elapsed: self.elapsed,
            prep_elapsed: self.prep_elapsed,
            entry: self.entry,
            sites: self.traqqs.len(),
            storage_ops: self.storage_ops,
            metric_keys: 0,
            counters: BTreeMap::new(),
            unique_visitors: 0,
            value_sum: 0.0,
            value_count: 0,
            value_by_name: HashMap::new(),
            top_referrers: Vec::new(),
        };
        let mut referrers: HashMap<String, f64> = HashMap::new();
        for traqq in &self.traqqs {
            let result = traqq.query_days(1).map_err(BenchError::Traqq)?;
            for metric in result.days.iter().flat_map(|day| &day.results) {
                run.metric_keys += 1;
                let pattern = metric.key.join("~");
                match (&metric.result, metric.metric_type.as_str()) {
                    (MetricData::Count(count), "bmp") if pattern == "visitor" => run.unique_visitors += count,
                    (MetricData::Hash(fields), "add") => {
                        let merged = run.counters.entry(pattern).or_default();
                        for (field, count) in fields {
                            *merged.entry(field.clone()).or_default() += count;
                        }
                    }
                    (MetricData::Summary { sum, count }, "adv") => {
                        run.value_sum += sum;
                        run.value_count += count;
                    }
                    (MetricData::FloatHash(fields), "adv") => {
                        for (field, sum) in fields {
                            *run.value_by_name.entry(field.clone()).or_default() += sum;
                        }
                    }
                    (MetricData::Ranked(members), "top") if pattern == "referrer" => {
                        for (member, score) in members {
                            *referrers.entry(member.clone()).or_default() += score;
                        }
                    }
                    _ => {}
                }
            }
        }
        run.top_referrers = referrers.into_iter().collect();
        run.top_referrers.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(run)
    }
}

/// Runs traqq on `records` through its documented entry ([`TraqqEntry::FromJson`]).
pub fn run_traqq(records: &[EventRecord]) -> Result<TraqqRun, BenchError> {
    run_traqq_with(records, TraqqEntry::FromJson)
}

/// Runs traqq on `records` with the given entry.
pub fn run_traqq_with(records: &[EventRecord], entry: TraqqEntry) -> Result<TraqqRun, BenchError> {
    let mut runner = TraqqRunner::new(entry);
    runner.feed(records)?;
    runner.finish()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::synth::{generate, SynthConfig};

    fn stream(events: usize) -> Vec<EventRecord> {
        generate(&SynthConfig { events, seed: 7, ..SynthConfig::default() }).collect()
    }

    #[test]
    fn counts_match_an_independent_count() {
        let records = stream(3_000);
        let run = run_traqq(&records).expect("traqq runs");
        assert_eq!(run.events, records.len());
        assert_eq!(run.sites, 3);

        let count = |f: &dyn Fn(&EventRecord) -> bool| records.iter().filter(|r| f(r)).count() as i64;
        let pageviews = count(&|r| r.name == "pageview");
        assert!(pageviews > 1_500, "{pageviews}");
        assert_eq!(run.counter("event", "pageview"), pageviews);
        assert_eq!(run.counters["event"].values().sum::<i64>(), records.len() as i64);
        assert_eq!(run.counter("path", "/pricing"), count(&|r| r.path == "/pricing"));
        assert_eq!(run.counter("country~event", "US~pageview"), count(&|r| r.country == "US" && r.name == "pageview"));
        assert_eq!(run.counter("utm_source", "newsletter"), count(&|r| r.utm_source == "newsletter"));
        assert_eq!(run.counter("source", "Hacker News"), count(&|r| r.source == "Hacker News"));

        let per_site: HashSet<(&str, u64)> = records.iter().map(|r| (r.site.as_str(), r.visitor)).collect();
        assert_eq!(run.unique_visitors, per_site.len() as u64);

        let purchases: Vec<f64> = records.iter().filter_map(|r| r.value).collect();
        assert!(!purchases.is_empty());
        assert_eq!(run.value_count, purchases.len() as i64);
        let total: f64 = purchases.iter().sum();
        assert!((run.value_sum - total).abs() < 1e-6 * total, "{} vs {total}", run.value_sum);
        assert!((run.value_by_name["purchase"] - total).abs() < 1e-6 * total);

        let google = count(&|r| r.referrer == "https://www.google.com/");
        assert!(run.top_referrers.contains(&("https_//www.google.com/".to_owned(), google as f64)));
        // Per event: bmp visitor, 7 counters always present, 3 present when non-empty, and 3
        // adv operations (per-label sum, summary sum, summary count) when there is a value.
        let ops: usize = records
            .iter()
            .map(|r| {
                let present = [&r.source, &r.utm_source, &r.referrer].iter().filter(|s| !s.is_empty()).count();
                8 + present + if r.value.is_some() { 3 } else { 0 }
            })
            .sum();
        assert_eq!(run.storage_ops, ops as u64);
    }

    #[test]
    fn both_entries_write_the_same_counters() {
        let records = stream(500);
        let from_json = run_traqq_with(&records, TraqqEntry::FromJson).expect("traqq runs");
        let prebuilt = run_traqq_with(&records, TraqqEntry::Prebuilt).expect("traqq runs");
        assert_eq!(from_json.counters, prebuilt.counters);
        assert_eq!(from_json.storage_ops, prebuilt.storage_ops);
        assert_eq!(prebuilt.entry, TraqqEntry::Prebuilt);
    }

    #[test]
    fn traqq_rejects_the_adv_pattern_in_its_config() {
        // Why `add_value_mapping` is added after validation: if traqq stops rejecting it,
        // the workaround can go.
        let mut config = traqq_config();
        config.mapping.add_value = add_value_mapping();
        let err = Traqq::new(config, Box::new(MemoryStorage::new()), "x").err();
        assert_eq!(err.as_deref(), Some("duplicate pattern: event"));
    }
}
