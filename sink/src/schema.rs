//! The tables Gallop writes, as versioned, idempotent migrations.
//!
//! Everything lives in one `AggregatingMergeTree` table, `aggregates`, keyed by
//! `(site, kind, granularity, dimension, bucket, value)`:
//!
//! - `kind = 'rollup'`: per (site, bucket, dimension, value) `events`, `visitors`,
//!   `value_sum`, `value_count` states, at `granularity` minute, hour and day;
//! - `kind = 'leaderboard'`: one `top` state per (site, bucket, dimension) and flush, with the
//!   flush id as `value` so that the server never merges two of them (ClickHouse 18.16's
//!   `topKMerge` loses items; readers merge leaderboards themselves or with `topKMerge` on a
//!   current server). Below 22.8 `top` is a `String` of raw state bytes: 18.16 truncates
//!   stored topK states to 10 counters;
//! - `kind = 'position'`: one marker per partition and flush, `dimension` = stream,
//!   `value` = `<partition:010>/<position:020>`: the consumed stream position.
//!
//! One table, one insert per flush, no partition key: the whole flush is one data part, so
//! the rows and the positions they account for land together or not at all. That is what
//! makes redelivery after a crash safe (see ARCHITECTURE.md). Hour and day rows are written
//! by the sink in the same insert for the same reason; materialized views would be a second
//! write that a crash can separate from the first. Views named `rollup_minute`,
//! `rollup_hour`, `rollup_day`, `leaderboard_minute`, `leaderboard_hour` and
//! `leaderboard_day` show each slice on its own.

use crate::version::Features;

/// The main table.
pub const AGGREGATES_TABLE: &str = "aggregates";
/// The table recording applied migrations.
pub const MIGRATIONS_TABLE: &str = "schema_migrations";
/// `k` of the `top` column's type: leaderboards with `k` up to this fit.
pub const MAX_LEADERBOARD_K: usize = 100;

/// Granularities, as stored in the `granularity` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Granularity {
    /// One minute (the processor's bucket).
    Minute = 1,
    /// One hour (UTC).
    Hour = 2,
    /// One day (UTC).
    Day = 3,
}

impl Granularity {
    /// All of them, finest first.
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    /// Bucket length in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            Self::Minute => 60,
            Self::Hour => 3600,
            Self::Day => 86_400,
        }
    }

    /// The name stored in the `granularity` column.
    pub fn name(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }
}

/// Row kinds, as stored in the `kind` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Breakdown row.
    Rollup = 1,
    /// Leaderboard state.
    Leaderboard = 2,
    /// Stream position marker.
    Position = 3,
}

/// One migration: a version and statements that are each safe to run again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// Increasing version number.
    pub version: u32,
    /// What it does.
    pub description: &'static str,
    /// SQL statements, in order; every one idempotent (`IF NOT EXISTS`).
    pub statements: Vec<String>,
}

/// The schema of one database on a server with `features`.
#[derive(Debug, Clone)]
pub struct Schema {
    database: String,
    features: Features,
}

impl Schema {
    /// The schema for `database` using `features`.
    pub fn new(database: &str, features: Features) -> Self {
        Self { database: database.to_owned(), features }
    }

    /// The database name.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Features in use.
    pub fn features(&self) -> Features {
        self.features
    }

    /// `database.table`, quoted.
    pub fn table(&self, table: &str) -> String {
        format!("`{}`.`{table}`", self.database)
    }

    /// Statements creating the database and the migrations table (run before anything).
    pub fn bootstrap(&self) -> Vec<String> {
        vec![
            format!("CREATE DATABASE IF NOT EXISTS `{}`", self.database),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (version UInt32, description String, applied_at DateTime('UTC')) \
                 ENGINE = MergeTree() ORDER BY version",
                self.table(MIGRATIONS_TABLE)
            ),
        ]
    }

    /// Every migration, oldest first.
    pub fn migrations(&self) -> Vec<Migration> {
        let views = [
            ("rollup_minute", "rollup", "minute"),
            ("rollup_hour", "rollup", "hour"),
            ("rollup_day", "rollup", "day"),
            ("leaderboard_minute", "leaderboard", "minute"),
            ("leaderboard_hour", "leaderboard", "hour"),
            ("leaderboard_day", "leaderboard", "day"),
        ];
        vec![
            Migration {
                version: 1,
                description: "aggregates table: rollups, leaderboards and positions at minute, hour and day",
                statements: vec![self.create_aggregates()],
            },
            Migration {
                version: 2,
                description: "one view per kind and granularity",
                statements: views
                    .iter()
                    .map(|(name, kind, granularity)| {
                        let columns = if *kind == "rollup" {
                            "site, bucket, dimension, value, events, visitors, value_sum, value_count"
                        } else {
                            "site, bucket, dimension, value AS flush, `top`"
                        };
                        format!(
                            "CREATE VIEW IF NOT EXISTS {} AS SELECT {columns} FROM {} \
                             WHERE kind = '{kind}' AND granularity = '{granularity}'",
                            self.table(name),
                            self.table(AGGREGATES_TABLE)
                        )
                    })
                    .collect(),
            },
        ]
    }

    /// The newest migration version.
    pub fn latest_version(&self) -> u32 {
        self.migrations().last().map_or(0, |m| m.version)
    }

    fn string_type(&self) -> &'static str {
        if self.features.low_cardinality {
            "LowCardinality(String)"
        } else {
            "String"
        }
    }

    /// Type of the `top` column: topK states where the server keeps them intact, raw state
    /// bytes in a `String` elsewhere (see [`Features::topk_states`]).
    pub fn top_type(&self) -> String {
        if self.features.topk_states {
            format!("AggregateFunction(topK({MAX_LEADERBOARD_K}), String)")
        } else {
            "String".to_owned()
        }
    }

    /// Type of the `expires` column. Current servers refuse a plain column outside the
    /// sorting key of an `AggregatingMergeTree` (merges would keep an arbitrary value), so
    /// where TTL is used it is a `SimpleAggregateFunction(max, …)`: rows merged from flushes
    /// written under different retention settings keep the longest. Older servers take the
    /// plain type, which has no TTL to feed there.
    pub fn expires_type(&self) -> &'static str {
        if self.features.ttl {
            "SimpleAggregateFunction(max, DateTime('UTC'))"
        } else {
            "DateTime('UTC')"
        }
    }

    /// The columns of `aggregates` as `system.columns` reports them, in order.
    pub fn aggregates_columns(&self) -> Vec<(&'static str, String)> {
        let low = self.string_type().to_owned();
        vec![
            ("site", low.clone()),
            ("kind", "Enum8('rollup' = 1, 'leaderboard' = 2, 'position' = 3)".to_owned()),
            ("granularity", "Enum8('minute' = 1, 'hour' = 2, 'day' = 3)".to_owned()),
            ("bucket", "DateTime('UTC')".to_owned()),
            ("dimension", low),
            ("value", "String".to_owned()),
            ("events", "AggregateFunction(sum, UInt64)".to_owned()),
            ("visitors", "AggregateFunction(uniqHLL12, UInt64)".to_owned()),
            ("value_sum", "AggregateFunction(sum, Float64)".to_owned()),
            ("value_count", "AggregateFunction(sum, UInt64)".to_owned()),
            ("top", self.top_type()),
            ("expires", self.expires_type().to_owned()),
        ]
    }

    fn create_aggregates(&self) -> String {
        let columns =
            self.aggregates_columns().iter().map(|(name, ty)| format!("{name} {ty}")).collect::<Vec<_>>().join(", ");
        let ttl = if self.features.ttl { " TTL expires" } else { "" };
        let dedup = if self.features.dedup_token { ", non_replicated_deduplication_window = 1000" } else { "" };
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({columns}) ENGINE = AggregatingMergeTree() PARTITION BY tuple() \
             ORDER BY (site, kind, granularity, dimension, bucket, value){ttl} \
             SETTINGS index_granularity = 8192{dedup}",
            self.table(AGGREGATES_TABLE)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_uses_features_only_where_present() {
        let old = Schema::new("g", Features::default());
        let sql = old.migrations()[0].statements[0].clone();
        assert!(sql.contains("site String") && !sql.contains("LowCardinality"), "{sql}");
        assert!(!sql.contains("TTL") && !sql.contains("deduplication"), "{sql}");
        assert!(sql.contains("expires DateTime('UTC')"), "{sql}");
        assert!(sql.contains("top String"), "{sql}");
        assert!(sql.starts_with("CREATE TABLE IF NOT EXISTS `g`.`aggregates`"), "{sql}");
        assert!(sql.contains("PARTITION BY tuple()"), "{sql}");

        let new = Schema::new("g", Features { low_cardinality: true, ttl: true, dedup_token: true, topk_states: true });
        let sql = new.migrations()[0].statements[0].clone();
        assert!(sql.contains("site LowCardinality(String)") && sql.contains("dimension LowCardinality(String)"));
        assert!(sql.contains(" TTL expires ") && sql.contains("non_replicated_deduplication_window"), "{sql}");
        assert!(sql.contains("top AggregateFunction(topK(100), String)"), "{sql}");
        assert!(sql.contains("expires SimpleAggregateFunction(max, DateTime('UTC'))"), "{sql}");
    }

    #[test]
    fn every_statement_is_idempotent_and_versions_increase() {
        let schema = Schema::new("g", Features::default());
        for statement in schema.bootstrap().iter().chain(schema.migrations().iter().flat_map(|m| &m.statements)) {
            assert!(statement.contains("IF NOT EXISTS"), "{statement}");
        }
        let versions: Vec<u32> = schema.migrations().iter().map(|m| m.version).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]) && versions[0] == 1, "{versions:?}");
        assert_eq!(schema.latest_version(), *versions.last().unwrap_or(&0));
    }
}
