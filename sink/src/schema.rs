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
//! On a cluster (`clickhouse.cluster`) the table of that name is a `Distributed` table over
//! every shard's `aggregates_local`, a `ReplicatedAggregatingMergeTree` of the same columns:
//! readers run the same SQL on a cluster and on one server, and writers insert into the
//! local table of a partition's shard (see ARCHITECTURE.md "A ClickHouse cluster"). Every
//! statement then runs `ON CLUSTER`, and the migrations table is replicated to every server.
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
/// On a cluster, each shard's replicated table behind the `Distributed` [`AGGREGATES_TABLE`].
pub const LOCAL_AGGREGATES_TABLE: &str = "aggregates_local";
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
    cluster: Option<String>,
}

impl Schema {
    /// The schema for `database` using `features`.
    pub fn new(database: &str, features: Features) -> Self {
        Self { database: database.to_owned(), features, cluster: None }
    }

    /// The same schema spread over the servers of `cluster` (replicated local tables and
    /// `Distributed` ones under the usual names).
    pub fn on_cluster(mut self, cluster: &str) -> Self {
        self.cluster = Some(cluster.to_owned());
        self
    }

    /// The cluster, where the schema is spread over one.
    pub fn cluster(&self) -> Option<&str> {
        self.cluster.as_deref()
    }

    /// The table inserts go to: [`AGGREGATES_TABLE`] on one server, a shard's
    /// [`LOCAL_AGGREGATES_TABLE`] on a cluster. Reads at start use it too (they read the
    /// shard a partition is written to).
    pub fn write_table(&self) -> String {
        self.table(if self.cluster.is_some() { LOCAL_AGGREGATES_TABLE } else { AGGREGATES_TABLE })
    }

    /// ` ON CLUSTER <name>` on a cluster, else nothing.
    fn on(&self) -> String {
        self.cluster.as_ref().map_or_else(String::new, |c| format!(" ON CLUSTER `{c}`"))
    }

    /// The ZooKeeper path of a replicated table `table`, one per shard where `per_shard`.
    fn zookeeper_path(&self, table: &str, per_shard: bool) -> String {
        let cluster = self.cluster.as_deref().unwrap_or_default();
        let shard = if per_shard { "{shard}" } else { "all" };
        format!("/clickhouse/gallop/{cluster}/{}/{shard}/{table}", self.database)
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
        // On a cluster one copy on every server (each server its own replica), so the
        // version reads the same wherever it is asked.
        let engine = if self.cluster.is_some() {
            format!("ReplicatedMergeTree('{}', '{{shard}}_{{replica}}')", self.zookeeper_path(MIGRATIONS_TABLE, false))
        } else {
            "MergeTree()".to_owned()
        };
        vec![
            format!("CREATE DATABASE IF NOT EXISTS `{}`{}", self.database, self.on()),
            format!(
                "CREATE TABLE IF NOT EXISTS {}{} (version UInt32, description String, applied_at DateTime('UTC')) \
                 ENGINE = {engine} ORDER BY version",
                self.table(MIGRATIONS_TABLE),
                self.on()
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
                statements: self.create_aggregates(),
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
                            "CREATE VIEW IF NOT EXISTS {}{} AS SELECT {columns} FROM {} \
                             WHERE kind = '{kind}' AND granularity = '{granularity}'",
                            self.table(name),
                            self.on(),
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

    /// The aggregates table; on a cluster, each shard's replicated local table and the
    /// `Distributed` table over them.
    fn create_aggregates(&self) -> Vec<String> {
        let columns =
            self.aggregates_columns().iter().map(|(name, ty)| format!("{name} {ty}")).collect::<Vec<_>>().join(", ");
        let ttl = if self.features.ttl { " TTL expires" } else { "" };
        let order = "PARTITION BY tuple() ORDER BY (site, kind, granularity, dimension, bucket, value)";
        let Some(cluster) = &self.cluster else {
            let dedup = if self.features.dedup_token { ", non_replicated_deduplication_window = 1000" } else { "" };
            return vec![format!(
                "CREATE TABLE IF NOT EXISTS {} ({columns}) ENGINE = AggregatingMergeTree() {order}{ttl} \
                 SETTINGS index_granularity = 8192{dedup}",
                self.table(AGGREGATES_TABLE)
            )];
        };
        // A retried insert of the same block on any replica of the shard is dropped by the
        // replicated block deduplication (hashes kept in ZooKeeper): the window is the
        // number of recent blocks remembered per shard (100 by default).
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {}{} ({columns}) \
                 ENGINE = ReplicatedAggregatingMergeTree('{}', '{{replica}}') {order}{ttl} \
                 SETTINGS index_granularity = 8192, replicated_deduplication_window = 1000",
                self.table(LOCAL_AGGREGATES_TABLE),
                self.on(),
                self.zookeeper_path(AGGREGATES_TABLE, true)
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {}{} ({columns}) ENGINE = Distributed(`{cluster}`, `{}`, `{LOCAL_AGGREGATES_TABLE}`)",
                self.table(AGGREGATES_TABLE),
                self.on(),
                self.database
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_uses_features_only_where_present() {
        let old = Schema::new("g", Features::default());
        assert_eq!(old.migrations()[0].statements.len(), 1, "one table on one server");
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
    fn on_a_cluster_every_statement_runs_on_every_server_and_the_table_is_distributed() {
        let schema = Schema::new("g", Features::default()).on_cluster("c1");
        let all: Vec<String> =
            schema.bootstrap().into_iter().chain(schema.migrations().into_iter().flat_map(|m| m.statements)).collect();
        for statement in &all {
            assert!(statement.contains(" ON CLUSTER `c1`"), "{statement}");
        }
        let tables = &schema.migrations()[0].statements;
        assert!(tables[0].starts_with("CREATE TABLE IF NOT EXISTS `g`.`aggregates_local` ON CLUSTER"), "{}", tables[0]);
        assert!(
            tables[0]
                .contains("ReplicatedAggregatingMergeTree('/clickhouse/gallop/c1/g/{shard}/aggregates', '{replica}')"),
            "{}",
            tables[0]
        );
        assert!(tables[1].contains("ENGINE = Distributed(`c1`, `g`, `aggregates_local`)"), "{}", tables[1]);
        assert!(schema.bootstrap()[1]
            .contains("ReplicatedMergeTree('/clickhouse/gallop/c1/g/all/schema_migrations', '{shard}_{replica}')"));
        assert_eq!(schema.write_table(), "`g`.`aggregates_local`");
        assert_eq!(Schema::new("g", Features::default()).write_table(), "`g`.`aggregates`");
        // Views read through the Distributed table, like every reader.
        assert!(schema.migrations()[1].statements[0].contains("FROM `g`.`aggregates` WHERE"));
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
