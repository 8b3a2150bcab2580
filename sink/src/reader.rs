//! Reading aggregates back: the headline numbers, a breakdown by any dimension, and
//! leaderboards, over any time range.
//!
//! A range `[from, to)` is cut into the coarsest buckets that fit: whole UTC days from the
//! day rows, whole hours around them from the hour rows, and minutes at the edges from the
//! minute rows. The pieces are disjoint in time, so counters add up and visitor sketches
//! merge into the visitors of the whole range. A range in a time zone with a 30- or
//! 45-minute offset simply uses more minute rows.

use std::collections::BTreeMap;

use gallop_codec::read_clickhouse_varuint;
use gallop_processor::sketch::TopK;
use serde::{Deserialize, Serialize};

use crate::{
    client::{escape, ClickHouse},
    error::SinkError,
    schema::{Granularity, AGGREGATES_TABLE, MAX_LEADERBOARD_K},
};

/// A half-open time range `[from, to)`, seconds since the epoch, minute-aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TimeRange {
    /// First second inside the range.
    pub from: i64,
    /// First second after the range.
    pub to: i64,
}

impl TimeRange {
    /// A range; both ends must be whole minutes and `from < to`.
    pub fn new(from: i64, to: i64) -> Result<Self, SinkError> {
        let invalid = |reason: String| SinkError::Invalid { what: "time range".to_owned(), reason };
        if from.rem_euclid(60) != 0 || to.rem_euclid(60) != 0 {
            return Err(invalid(format!("[{from}, {to}) must start and end on whole minutes")));
        }
        if from >= to {
            return Err(invalid(format!("from ({from}) must be before to ({to})")));
        }
        Ok(Self { from, to })
    }

    /// The range as disjoint `(granularity, from, to)` pieces, coarsest buckets first.
    pub fn pieces(self) -> Vec<(Granularity, i64, i64)> {
        let up = |t: i64, step: i64| t + (step - t.rem_euclid(step)) % step;
        let down = |t: i64, step: i64| t - t.rem_euclid(step);
        let (day, hour) = (Granularity::Day.seconds(), Granularity::Hour.seconds());
        let mut pieces = Vec::new();
        let (day_from, day_to) = (up(self.from, day), down(self.to, day));
        let (hour_from, hour_to) = (up(self.from, hour), down(self.to, hour));
        if day_from < day_to {
            pieces.push((Granularity::Day, day_from, day_to));
            pieces.push((Granularity::Hour, hour_from, day_from));
            pieces.push((Granularity::Hour, day_to, hour_to));
        } else if hour_from < hour_to {
            pieces.push((Granularity::Hour, hour_from, hour_to));
        }
        if hour_from < hour_to {
            pieces.push((Granularity::Minute, self.from, hour_from));
            pieces.push((Granularity::Minute, hour_to, self.to));
        } else {
            pieces.push((Granularity::Minute, self.from, self.to));
        }
        pieces.retain(|(_, from, to)| from < to);
        pieces
    }

    /// A SQL condition selecting exactly the buckets of [`TimeRange::pieces`].
    pub fn condition(self) -> String {
        let parts: Vec<String> = self
            .pieces()
            .into_iter()
            .map(|(granularity, from, to)| {
                format!(
                    "(granularity = '{}' AND bucket >= toDateTime({from}, 'UTC') AND bucket < toDateTime({to}, 'UTC'))",
                    granularity.name()
                )
            })
            .collect();
        format!("({})", parts.join(" OR "))
    }
}

/// The numbers at the top of a dashboard.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Headline {
    /// Unique visitors in the range (uniqHLL12 estimate).
    pub visitors: u64,
    /// Visits (sessions) that started in the range.
    pub visits: u64,
    /// `pageview` events.
    pub pageviews: u64,
    /// All events (engagement events are not events).
    pub events: u64,
    /// Percentage of visits with a single interactive event (Plausible's bounce rate).
    pub bounce_rate: f64,
    /// Average visit duration, seconds.
    pub visit_duration: f64,
    /// Pageviews per visit.
    pub views_per_visit: f64,
    /// Revenue per ISO 4217 currency: amounts in different currencies are never added.
    pub revenue: BTreeMap<String, f64>,
    /// Sum of the values of events without a currency (numbers, not money).
    pub value: f64,
    /// Events that carried a value.
    pub value_events: u64,
}

/// A float as ClickHouse's JSON prints it: a number, or `null` (or a quoted `inf`/`nan`)
/// for a sum that is not finite. One bad row (a sum that overflowed before values were
/// bounded) then reads as NaN instead of failing every query of its site.
fn lenient_f64<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Float {
        Number(f64),
        Text(String),
        Null(()),
    }
    Ok(match Option::<Float>::deserialize(deserializer)? {
        Some(Float::Number(x)) => x,
        Some(Float::Text(text)) => text.parse().unwrap_or(f64::NAN),
        Some(Float::Null(())) | None => f64::NAN,
    })
}

/// What [`Reader::visit_totals`] reads.
#[derive(Debug, Default, Deserialize)]
struct VisitTotals {
    visits: u64,
    bounces: u64,
    #[serde(deserialize_with = "lenient_f64")]
    duration_ms: f64,
}

/// Dimensions whose values may also have visits (`session:<dimension>` rows, kept for
/// those in `processor.session_breakdowns`).
const WITH_VISITS: &[&str] = &["source", "country", "device", "browser", "os"];

/// One value of a breakdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakdownRow {
    /// Dimension value.
    pub value: String,
    /// Unique visitors with that value.
    pub visitors: u64,
    /// Events with that value (for `session:*` rows: visits; `engagement:*`: engaged
    /// pageviews).
    pub events: u64,
    /// Sum of their event values (`session:*`: duration ms; `engagement:*`: engaged ms).
    /// NaN where the stored sum is not a finite number (rows written before values were
    /// bounded), instead of failing the whole answer.
    #[serde(deserialize_with = "lenient_f64")]
    pub value_sum: f64,
    /// Visits that started with that value (source, country, device, browser, OS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visits: Option<u64>,
}

/// Events, visitors and value per value of one dimension, most events first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Breakdown {
    /// The dimension.
    pub dimension: String,
    /// Rows, most events first (ties by value).
    pub rows: Vec<BreakdownRow>,
}

/// One leaderboard entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leader {
    /// The value.
    pub value: String,
    /// Estimated count (an upper bound).
    pub count: u64,
    /// Most the count may overestimate: the true count is in `[count - error, count]`.
    pub error: u64,
}

/// One value of one of several dimensions, merged over a range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DimensionRow {
    /// The dimension.
    pub dimension: String,
    /// Its value.
    pub value: String,
    /// Distinct visitors (for `uniq:<name>` rows: distinct identifiers).
    pub visitors: u64,
    /// Events.
    pub events: u64,
    /// Sum of the events' values (NaN where the stored sum is not finite).
    #[serde(deserialize_with = "lenient_f64")]
    pub value_sum: f64,
    /// Events with a value.
    pub value_count: u64,
}

/// One stored rollup row, merged: what `gallop export` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportRow {
    /// `minute`, `hour` or `day`.
    pub granularity: String,
    /// Start of the bucket, seconds since the epoch (UTC).
    pub bucket: i64,
    /// Dimension.
    pub dimension: String,
    /// Value.
    pub value: String,
    /// Events (visits for `session:*`, engaged pageviews for `engagement:*`).
    pub events: u64,
    /// Unique visitors (estimate).
    pub visitors: u64,
    /// Sum of values (duration ms for `session:*`, engaged ms for `engagement:*`).
    pub value_sum: f64,
    /// Events with a value (bounces for `session:*`, scroll depth sum for `engagement:*`).
    pub value_count: u64,
}

/// Answers questions about one database.
#[derive(Debug, Clone)]
pub struct Reader {
    clickhouse: ClickHouse,
}

impl Reader {
    /// A reader over `clickhouse`.
    pub fn new(clickhouse: ClickHouse) -> Self {
        Self { clickhouse }
    }

    /// Seconds since the epoch of the local wall-clock time `local` (`YYYY-MM-DD` or
    /// `YYYY-MM-DD HH:MM:SS`) in the IANA time zone `tz`, as the server's time zone database
    /// sees it (daylight saving included).
    pub async fn local_to_epoch(&self, local: &str, tz: &str) -> Result<i64, SinkError> {
        #[derive(Deserialize)]
        struct Row {
            t: i64,
        }
        let invalid =
            |reason: &str| SinkError::Invalid { what: format!("time {local:?} in {tz:?}"), reason: reason.into() };
        let well_formed = local.len() == 10 || local.len() == 19;
        if !well_formed || !local.bytes().all(|b| b.is_ascii_digit() || b"-: ".contains(&b)) {
            return Err(invalid("expected YYYY-MM-DD or YYYY-MM-DD HH:MM:SS"));
        }
        if tz.is_empty() || !tz.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b)) {
            return Err(invalid("expected an IANA time zone such as Europe/Berlin or UTC"));
        }
        let full = if local.len() == 10 { format!("{local} 00:00:00") } else { local.to_owned() };
        let sql = format!("SELECT toInt64(toUnixTimestamp(toDateTime('{full}', '{tz}'))) AS t");
        match self.clickhouse.fetch::<Row>(&sql).await {
            Ok(rows) => rows.first().map(|r| r.t).ok_or_else(|| invalid("the server returned nothing")),
            Err(SinkError::Rejected { reason, .. }) => Err(invalid(&reason)),
            Err(e) => Err(e),
        }
    }

    fn table(&self) -> String {
        self.clickhouse.schema().table(AGGREGATES_TABLE)
    }

    /// Visitors, pageviews, events and value of `site` in `range`.
    pub async fn headline(&self, site: &str, range: TimeRange) -> Result<Headline, SinkError> {
        #[derive(Deserialize)]
        struct Totals {
            visitors: u64,
            events: u64,
            value_events: u64,
        }
        let totals_sql = format!(
            "SELECT uniqHLL12Merge(visitors) AS visitors, sumMerge(events) AS events, \
             sumMerge(value_count) AS value_events FROM {} \
             WHERE site = '{}' AND kind = 'rollup' AND dimension = 'total' AND {}",
            self.table(),
            escape(site),
            range.condition()
        );
        let totals = self.clickhouse.fetch::<Totals>(&totals_sql).await?;
        let totals = totals.into_iter().next().unwrap_or(Totals { visitors: 0, events: 0, value_events: 0 });
        let one = |rows: Vec<BreakdownRow>| rows.into_iter().next();
        let pageviews = one(self.breakdown_where(site, range, "name", "AND value = 'pageview'", 1).await?);
        let visits = self.visit_totals(site, range).await?;
        let visit_pageviews = one(self.breakdown_where(site, range, "session:pageviews", "", 1).await?);
        let mut revenue = BTreeMap::new();
        let mut value = 0.0;
        for row in self.breakdown_where(site, range, "currency", "", 1000).await? {
            if row.value.is_empty() {
                value = row.value_sum;
            } else {
                revenue.insert(row.value, row.value_sum);
            }
        }
        let visits_n = visits.visits;
        let per_visit = |x: f64| if visits_n == 0 { 0.0 } else { x / visits_n as f64 };
        Ok(Headline {
            visitors: totals.visitors,
            visits: visits_n,
            pageviews: pageviews.map_or(0, |r| r.events),
            events: totals.events,
            bounce_rate: per_visit(visits.bounces as f64 * 100.0),
            visit_duration: per_visit(visits.duration_ms / 1000.0),
            views_per_visit: per_visit(visit_pageviews.map_or(0, |r| r.events) as f64),
            revenue,
            value,
            value_events: totals.value_events,
        })
    }

    /// Visits of `site` that started in `range`: count, bounces and total duration (ms),
    /// from the `session:total` rows in one read.
    async fn visit_totals(&self, site: &str, range: TimeRange) -> Result<VisitTotals, SinkError> {
        let sql = format!(
            "SELECT sumMerge(events) AS visits, sumMerge(value_count) AS bounces, sumMerge(value_sum) AS duration_ms \
             FROM {} WHERE site = '{}' AND kind = 'rollup' AND dimension = 'session:total' AND {}",
            self.table(),
            escape(site),
            range.condition()
        );
        Ok(self.clickhouse.fetch::<VisitTotals>(&sql).await?.into_iter().next().unwrap_or_default())
    }

    /// Visitors with an event in the last five minutes before `now` (seconds): Plausible's
    /// "current visitors", from minute rows (the current minute included).
    pub async fn current_visitors(&self, site: &str, now: i64) -> Result<u64, SinkError> {
        let minute = now - now.rem_euclid(60);
        let range = TimeRange::new(minute - 300, minute + 60)?;
        Ok(self.breakdown_where(site, range, "total", "", 1).await?.first().map_or(0, |r| r.visitors))
    }

    /// Rows of `site` at `granularity` with buckets in `[from, to)`: how many.
    pub async fn export_count(
        &self,
        site: &str,
        granularity: Granularity,
        from: i64,
        to: i64,
    ) -> Result<u64, SinkError> {
        #[derive(Deserialize)]
        struct Row {
            n: u64,
        }
        let sql = format!(
            "SELECT count() AS n FROM (SELECT 1 FROM {} WHERE {} GROUP BY bucket, dimension, value)",
            self.table(),
            export_filter(site, granularity, from, to, None)
        );
        Ok(self.clickhouse.fetch::<Row>(&sql).await?.first().map_or(0, |r| r.n))
    }

    /// Rows of `site`'s `dimension` at `granularity` with buckets in `[from, to)`, merged,
    /// in bucket and value order.
    pub async fn export_rows(
        &self,
        site: &str,
        granularity: Granularity,
        from: i64,
        to: i64,
        dimension: &str,
    ) -> Result<Vec<ExportRow>, SinkError> {
        // Aliases differ from column names: ClickHouse 18.16 lets an alias shadow a column
        // in WHERE, so `'minute' AS granularity` would turn `granularity = 'minute'` true.
        #[derive(Deserialize)]
        struct Row {
            bucket_s: i64,
            name: String,
            value: String,
            events: u64,
            visitors: u64,
            #[serde(deserialize_with = "lenient_f64")]
            value_sum: f64,
            value_count: u64,
        }
        let sql = format!(
            "SELECT toInt64(toUnixTimestamp(bucket)) AS bucket_s, toString(dimension) AS name, value, \
             sumMerge(events) AS events, uniqHLL12Merge(visitors) AS visitors, sumMerge(value_sum) AS value_sum, \
             sumMerge(value_count) AS value_count FROM {} WHERE {} GROUP BY bucket, dimension, value \
             ORDER BY bucket, value",
            self.table(),
            export_filter(site, granularity, from, to, Some(dimension))
        );
        Ok(self
            .clickhouse
            .fetch::<Row>(&sql)
            .await?
            .into_iter()
            .map(|r| ExportRow {
                granularity: granularity.name().to_owned(),
                bucket: r.bucket_s,
                dimension: r.name,
                value: r.value,
                events: r.events,
                visitors: r.visitors,
                value_sum: r.value_sum,
                value_count: r.value_count,
            })
            .collect())
    }

    /// The rollup and leaderboard dimensions stored for `site` (any time).
    pub async fn stored_dimensions(&self, site: &str) -> Result<(Vec<String>, Vec<String>), SinkError> {
        #[derive(Deserialize)]
        struct Row {
            kind_name: String,
            name: String,
        }
        let sql = format!(
            "SELECT DISTINCT toString(kind) AS kind_name, toString(dimension) AS name FROM {} \
             WHERE site = '{}' AND kind IN ('rollup', 'leaderboard') AND granularity = 'day'",
            self.table(),
            escape(site)
        );
        let (mut rollups, mut boards) = (Vec::new(), Vec::new());
        for row in self.clickhouse.fetch::<Row>(&sql).await? {
            if row.kind_name == "rollup" {
                rollups.push(row.name)
            } else {
                boards.push(row.name)
            }
        }
        rollups.sort();
        boards.sort();
        Ok((rollups, boards))
    }

    /// Events, visitors and value per value of `dimension` (e.g. `path`, `country`,
    /// `name~props.plan`) of `site` in `range`, the `limit` values with most events.
    pub async fn breakdown(
        &self,
        site: &str,
        range: TimeRange,
        dimension: &str,
        limit: usize,
    ) -> Result<Breakdown, SinkError> {
        let mut rows = self.breakdown_where(site, range, dimension, "", limit).await?;
        if WITH_VISITS.contains(&dimension) {
            let visits = self.breakdown_where(site, range, &format!("session:{dimension}"), "", 100_000).await?;
            let visits: BTreeMap<String, u64> = visits.into_iter().map(|r| (r.value, r.events)).collect();
            // No rows at all: the breakdown is not kept (`processor.session_breakdowns`).
            if !visits.is_empty() {
                for row in &mut rows {
                    row.visits = Some(visits.get(&row.value).copied().unwrap_or(0));
                }
            }
        }
        Ok(Breakdown { dimension: dimension.to_owned(), rows })
    }

    async fn breakdown_where(
        &self,
        site: &str,
        range: TimeRange,
        dimension: &str,
        extra: &str,
        limit: usize,
    ) -> Result<Vec<BreakdownRow>, SinkError> {
        let sql = format!(
            "SELECT value, uniqHLL12Merge(visitors) AS visitors, sumMerge(events) AS events, \
             sumMerge(value_sum) AS value_sum FROM {} \
             WHERE site = '{}' AND kind = 'rollup' AND dimension = '{}' {extra} AND {} \
             GROUP BY value ORDER BY events DESC, value LIMIT {limit}",
            self.table(),
            escape(site),
            escape(dimension),
            range.condition()
        );
        self.clickhouse.fetch(&sql).await
    }

    /// Every value of each of `dimensions` of `site` in `range`, merged over the range, in
    /// one read: events, distinct visitors (identifiers for `uniq:` rows), value sum and
    /// count.
    pub async fn dimension_rows(
        &self,
        site: &str,
        range: TimeRange,
        dimensions: &[String],
    ) -> Result<Vec<DimensionRow>, SinkError> {
        if dimensions.is_empty() {
            return Ok(Vec::new());
        }
        let list = dimensions.iter().map(|d| format!("'{}'", escape(d))).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT dimension, value, uniqHLL12Merge(visitors) AS visitors, sumMerge(events) AS events, \
             sumMerge(value_sum) AS value_sum, sumMerge(value_count) AS value_count FROM {} \
             WHERE site = '{}' AND kind = 'rollup' AND dimension IN ({list}) AND {} \
             GROUP BY dimension, value ORDER BY dimension, events DESC, value",
            self.table(),
            escape(site),
            range.condition()
        );
        self.clickhouse.fetch(&sql).await
    }

    /// The `k` most frequent values of the leaderboard `dimension` (e.g. `referrer`) of
    /// `site` in `range`. Stored sketches are merged here, not in ClickHouse, because the
    /// server's `topKMerge` is unreliable on older releases (see ARCHITECTURE.md).
    pub async fn leaderboard(
        &self,
        site: &str,
        range: TimeRange,
        dimension: &str,
        k: usize,
    ) -> Result<Vec<Leader>, SinkError> {
        // Through a Distributed table, ClickHouse 18.16 sends `SELECT top FROM …` to the
        // shards without the quotes, which they read as `SELECT TOP n`: hence `identity`.
        let sql = format!(
            "SELECT identity(`top`) FROM {} WHERE site = '{}' AND kind = 'leaderboard' AND dimension = '{}' AND {} \
             FORMAT RowBinary",
            self.table(),
            escape(site),
            escape(dimension),
            range.condition()
        );
        let bytes = self.clickhouse.fetch_text_bytes(&sql).await?;
        let corrupt =
            |reason: String| SinkError::Corrupt { what: format!("leaderboard {dimension} of {site}"), reason };
        let mut merged = TopK::new(MAX_LEADERBOARD_K).map_err(|e| corrupt(e.to_string()))?;
        let as_string = !self.clickhouse.schema().features().topk_states;
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            if as_string {
                // A String column: a VarUInt length, then the state bytes.
                let mut header = 0;
                let len =
                    read_clickhouse_varuint(rest, &mut header).map_err(|e| corrupt(format!("the length: {e}")))?;
                let end = usize::try_from(len).ok().and_then(|l| header.checked_add(l)).filter(|&e| e <= rest.len());
                let end = end.ok_or_else(|| corrupt(format!("state of {len} bytes past the end")))?;
                let state = &rest[header..end];
                if !state.is_empty() {
                    merged.merge(&TopK::read_state(MAX_LEADERBOARD_K, state).map_err(|e| corrupt(e.to_string()))?);
                }
                rest = &rest[end..];
            } else {
                let (top, used) =
                    TopK::read_state_prefix(MAX_LEADERBOARD_K, rest).map_err(|e| corrupt(e.to_string()))?;
                merged.merge(&top);
                rest = &rest[used..];
            }
        }
        let mut leaders: BTreeMap<(std::cmp::Reverse<u64>, String), u64> = BTreeMap::new();
        for (key, count, error) in merged.top() {
            leaders.insert((std::cmp::Reverse(count), String::from_utf8_lossy(&key).into_owned()), error);
        }
        Ok(leaders
            .into_iter()
            .take(k)
            .map(|((std::cmp::Reverse(count), value), error)| Leader { value, count, error })
            .collect())
    }
}

/// The rows `gallop export` reads.
fn export_filter(site: &str, granularity: Granularity, from: i64, to: i64, dimension: Option<&str>) -> String {
    let dimension = dimension.map(|d| format!(" AND dimension = '{}'", escape(d))).unwrap_or_default();
    format!(
        "site = '{}' AND kind = 'rollup' AND granularity = '{}' AND bucket >= toDateTime({from}, 'UTC') \
         AND bucket < toDateTime({to}, 'UTC'){dimension}",
        escape(site),
        granularity.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(from: i64, to: i64, expect: &[(Granularity, i64, i64)]) {
        let range = TimeRange::new(from, to).expect("valid range");
        let pieces = range.pieces();
        assert_eq!(pieces, expect);
        // The pieces tile the range exactly.
        let mut covered: Vec<(i64, i64)> = pieces.iter().map(|&(_, a, b)| (a, b)).collect();
        covered.sort();
        assert_eq!(covered.first().map(|c| c.0), Some(from));
        assert_eq!(covered.last().map(|c| c.1), Some(to));
        assert!(covered.windows(2).all(|w| w[0].1 == w[1].0), "{covered:?}");
    }

    #[test]
    fn ranges_use_the_coarsest_buckets_that_fit() {
        use Granularity::{Day, Hour, Minute};
        const D: i64 = 86_400;
        const H: i64 = 3600;
        check(0, 60, &[(Minute, 0, 60)]);
        check(0, H, &[(Hour, 0, H)]);
        check(0, D, &[(Day, 0, D)]);
        check(0, 2 * D, &[(Day, 0, 2 * D)]);
        // Europe/Berlin in winter: a local day is 23:00..23:00 UTC.
        check(D - H, 2 * D - H, &[(Hour, D - H, 2 * D - H)]);
        // Asia/Kolkata (+5:30): half-hour edges come from minute rows.
        check(
            D - 5 * H - 1800,
            2 * D - 5 * H - 1800,
            &[
                (Hour, D - 5 * H, 2 * D - 6 * H),
                (Minute, D - 5 * H - 1800, D - 5 * H),
                (Minute, 2 * D - 6 * H, 2 * D - 5 * H - 1800),
            ],
        );
        check(120, 3 * D + 60, &[(Day, D, 3 * D), (Hour, H, D), (Minute, 120, H), (Minute, 3 * D, 3 * D + 60)]);
    }

    #[test]
    fn bad_ranges_are_refused() {
        assert!(TimeRange::new(0, 0).is_err());
        assert!(TimeRange::new(60, 0).is_err());
        assert!(TimeRange::new(1, 60).is_err());
    }
}
