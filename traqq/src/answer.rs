//! `query`, `query_days` and `find` answered from ClickHouse in traqq's shapes.
//!
//! traqq keys every metric by its day bucket and answers per day:
//! `[{"date": "2026-11-27", "timestamp": 1795737600, "results": [MetricResult…]}]`, where a
//! `MetricResult` is `{"metric_type", "key": [names…], "location", "add_key", "result"}` and
//! `result` one of `{"Count": n}` (bmp), `{"Hash": {value: n}}` (add),
//! `{"FloatHash": {value: sum}}` and `{"Summary": {"sum", "count"}}` (adv),
//! `{"Ranked": [[value, n]…]}` (top). The day starting at `t` is `[t, t + 86400)` read from
//! Gallop's minute, hour and day rows.
//!
//! Merging (`find` with `merge`) reads the whole range at once: counters and sums add up
//! as traqq's do, leaderboards are merged sketches, and unique counts are the union of
//! the days' sketches where traqq sums the days' counts (docs/traqq.md).

use std::collections::BTreeMap;

use gallop_config::{ClickHouseConfig, TraqqConfig, TraqqKind, TraqqMetric};
use gallop_sink::{ClickHouse, DimensionRow, Reader, TimeRange};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

const DAY: i64 = 86_400;

/// The data of one metric result (traqq's `MetricData`, tagged the same way).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) enum MetricData {
    /// bmp: distinct values.
    Count(u64),
    /// add: events per value.
    Hash(BTreeMap<String, i64>),
    /// adv: value sum per value.
    FloatHash(BTreeMap<String, f64>),
    /// adv: sum and count over all values.
    Summary { sum: f64, count: i64 },
    /// top: values with their counts, most first.
    Ranked(Vec<(String, f64)>),
}

/// One metric result (traqq's `MetricResult`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct MetricResult {
    pub(crate) metric_type: &'static str,
    pub(crate) key: Vec<String>,
    pub(crate) location: String,
    pub(crate) add_key: Option<String>,
    pub(crate) result: MetricData,
}

/// The results of one day (traqq's `DayResult`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct DayResult {
    date: String,
    timestamp: i64,
    results: Vec<MetricResult>,
}

/// Answers queries of the traqq site from ClickHouse, connecting on the first query (and
/// again after a failed connection), so records never wait for ClickHouse.
pub(crate) struct Answers {
    clickhouse: ClickHouseConfig,
    reader: tokio::sync::OnceCell<Reader>,
    site: String,
    metrics: Vec<TraqqMetric>,
    top_k: usize,
    max_days: u32,
}

impl Answers {
    pub(crate) fn new(clickhouse: ClickHouseConfig, config: &TraqqConfig) -> Self {
        Self {
            clickhouse,
            reader: tokio::sync::OnceCell::new(),
            site: config.site.clone(),
            metrics: config.mapping.metrics(),
            top_k: config.top_k,
            max_days: config.max_query_days,
        }
    }

    /// `query`: every metric of every day from `min` to `max`.
    pub(crate) async fn query(&self, min: i64, max: i64) -> Result<Value, String> {
        let mut days = Vec::new();
        for start in self.day_starts(min, max)? {
            let results = self.results(start, 1, &self.metrics).await?;
            days.push(DayResult { date: utc_date(start), timestamp: start, results });
        }
        serde_json::to_value(days).map_err(|e| e.to_string())
    }

    /// `query_days`: [`Answers::query`] from `days` days before today's start (UTC) to it.
    pub(crate) async fn query_days(&self, days: i32) -> Result<Value, String> {
        let today = today_start();
        self.query(today - i64::from(days.unsigned_abs()) * DAY, today).await
    }

    /// `find`: the metrics of `metric_type` and `key` (and `add_key`), per day or merged.
    pub(crate) async fn find(
        &self,
        min: i64,
        max: i64,
        metric_type: &str,
        key: &str,
        add_key: Option<&str>,
        merge: bool,
    ) -> Result<Value, String> {
        let mut want: Vec<&str> = key.split('~').collect();
        want.sort_unstable();
        let wanted: Vec<TraqqMetric> = self
            .metrics
            .iter()
            .filter(|m| m.kind.name() == metric_type && m.keys == want)
            .filter(|m| m.kind != TraqqKind::Adv || add_key.is_none_or(|a| m.add_key.as_deref() == Some(a)))
            .cloned()
            .collect();
        let starts = self.day_starts(min, max)?;
        let found = match (merge, starts.first()) {
            (_, None) => Vec::new(),
            (false, Some(_)) => {
                let mut found = Vec::new();
                for &start in &starts {
                    found.extend(self.results(start, 1, &wanted).await?);
                }
                found
            }
            (true, Some(&first)) => {
                let mut merged = self.results(first, starts.len() as i64, &wanted).await?;
                // traqq merges the results of the first match's kind (an `adv` pattern has
                // per-value sums and a summary; the sums come first).
                let kind = merged.first().map(|m| std::mem::discriminant(&m.result));
                merged.retain(|m| Some(std::mem::discriminant(&m.result)) == kind);
                merged.truncate(1);
                for m in &mut merged {
                    m.location.clear();
                }
                merged
            }
        };
        serde_json::to_value(found).map_err(|e| e.to_string())
    }

    /// The reader, connected.
    async fn reader(&self) -> Result<&Reader, String> {
        self.reader
            .get_or_try_init(|| async { ClickHouse::connect(&self.clickhouse).await.map(Reader::new) })
            .await
            .map_err(|e| format!("ClickHouse unavailable: {e}; retry later"))
    }

    /// The day starts traqq walks: `min`, `min + 86400`, … while not past `max`.
    fn day_starts(&self, min: i64, max: i64) -> Result<Vec<i64>, String> {
        if min > max {
            return Ok(Vec::new());
        }
        let days = (max - min) / DAY + 1;
        if days > i64::from(self.max_days) {
            return Err(format!("a range of {days} days is more than {} (traqq.max_query_days)", self.max_days));
        }
        Ok((0..days).map(|i| min + i * DAY).collect())
    }

    /// The results of `metrics` over `days` days from `start` (traqq's order per day:
    /// bmp, add, adv sums and summary, top; metrics without data are left out).
    async fn results(&self, start: i64, days: i64, metrics: &[TraqqMetric]) -> Result<Vec<MetricResult>, String> {
        let from = start - start.rem_euclid(60);
        let range = TimeRange::new(from, from + days * DAY).map_err(|e| e.to_string())?;
        let mut dimensions: Vec<String> =
            metrics.iter().filter(|m| m.kind != TraqqKind::Top).map(|m| m.dimension.clone()).collect();
        dimensions.sort();
        dimensions.dedup();
        let reader = self.reader().await?;
        let rows = reader.dimension_rows(&self.site, range, &dimensions).await.map_err(|e| e.to_string())?;
        let mut by_dimension: BTreeMap<&str, Vec<&DimensionRow>> = BTreeMap::new();
        for row in &rows {
            by_dimension.entry(row.dimension.as_str()).or_default().push(row);
        }
        let mut results = Vec::new();
        for metric in metrics {
            let rows = by_dimension.get(metric.dimension.as_str()).map(Vec::as_slice).unwrap_or_default();
            let pattern = metric.pattern();
            let location = |suffix: &str| format!("{}:{}:d:{start}:{suffix}", self.site, metric.kind.name());
            let result = |location: String, result: MetricData| MetricResult {
                metric_type: metric.kind.name(),
                key: metric.keys.clone(),
                location,
                add_key: metric.add_key.clone(),
                result,
            };
            match metric.kind {
                TraqqKind::Bmp => {
                    if let Some(row) = rows.iter().find(|r| r.events > 0) {
                        results.push(result(location(&pattern), MetricData::Count(row.visitors)));
                    }
                }
                TraqqKind::Add => {
                    let hash: BTreeMap<String, i64> =
                        rows.iter().map(|r| (r.value.clone(), i64::try_from(r.events).unwrap_or(i64::MAX))).collect();
                    if !hash.is_empty() {
                        results.push(result(location(&pattern), MetricData::Hash(hash)));
                    }
                }
                TraqqKind::Adv => {
                    let with_value: Vec<&&DimensionRow> = rows.iter().filter(|r| r.value_count > 0).collect();
                    if with_value.is_empty() {
                        continue;
                    }
                    let add_key = metric.add_key.as_deref().unwrap_or_default();
                    let sums = with_value.iter().map(|r| (r.value.clone(), r.value_sum)).collect();
                    results.push(result(location(&format!("{add_key}:{pattern}")), MetricData::FloatHash(sums)));
                    let summary = MetricData::Summary {
                        sum: with_value.iter().map(|r| r.value_sum).sum(),
                        count: with_value.iter().map(|r| i64::try_from(r.value_count).unwrap_or(i64::MAX)).sum(),
                    };
                    results.push(result(location(&format!("{add_key}:{pattern}:i")), summary));
                }
                TraqqKind::Top => {
                    let leaders = reader
                        .leaderboard(&self.site, range, &metric.dimension, self.top_k)
                        .await
                        .map_err(|e| e.to_string())?;
                    if !leaders.is_empty() {
                        let ranked = leaders.into_iter().map(|l| (l.value, l.count as f64)).collect();
                        results.push(result(location(&pattern), MetricData::Ranked(ranked)));
                    }
                }
            }
        }
        Ok(results)
    }
}

/// `YYYY-MM-DD` of `t` in UTC, as traqq writes a day's `date`.
fn utc_date(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t).map(|d| d.date().to_string()).unwrap_or_default()
}

/// The start of today, UTC.
fn today_start() -> i64 {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    now - now.rem_euclid(DAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_shapes_are_traqqs() {
        assert_eq!(utc_date(1_795_737_600), "2026-11-27");
        let result = MetricResult {
            metric_type: "adv",
            key: vec!["event".into()],
            location: "s:adv:d:0:amount:event:i".into(),
            add_key: Some("amount".into()),
            result: MetricData::Summary { sum: 1.5, count: 2 },
        };
        assert_eq!(
            serde_json::to_string(&result).expect("json"),
            r#"{"metric_type":"adv","key":["event"],"location":"s:adv:d:0:amount:event:i","add_key":"amount","result":{"Summary":{"sum":1.5,"count":2}}}"#
        );
        let ranked = serde_json::to_string(&MetricData::Ranked(vec![("US".into(), 3.0)])).expect("json");
        assert_eq!(ranked, r#"{"Ranked":[["US",3.0]]}"#);
    }
}
