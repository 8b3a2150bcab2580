//! The ClickHouse connection: version detection, migrations, schema check, positions,
//! inserts. Every request has a deadline; errors carry the URL and the operation.

use std::time::Duration;

use bytes::Bytes;
use clickhouse::{Client, Compression};
use gallop_config::ClickHouseConfig;
use gallop_pipeline::Mark;
use gallop_processor::OpenSessions;
use serde::{de::DeserializeOwned, Deserialize};
use tracing::info;

use crate::{
    encode::{
        parse_marker, parse_session_value, parse_watermark_value, session_dimension, watermark_dimension, EncodedFlush,
    },
    error::{classify, server_code, SinkError},
    schema::{Schema, AGGREGATES_TABLE, LOCAL_AGGREGATES_TABLE, MIGRATIONS_TABLE},
    version::ServerVersion,
};

/// Server error codes meaning "someone else created it first" (two `gallop migrate` at once).
const ALREADY_EXISTS_CODES: &[u32] = &[57, 82];

/// A connection to one ClickHouse server and Gallop's database on it.
#[derive(Clone)]
pub struct ClickHouse {
    client: Client,
    url: String,
    timeout: Duration,
    version: ServerVersion,
    schema: Schema,
}

impl std::fmt::Debug for ClickHouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouse").field("url", &self.url).field("version", &self.version).finish()
    }
}

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Server version the DDL was made for.
    pub server: ServerVersion,
    /// Schema version found before.
    pub from: u32,
    /// Schema version now.
    pub to: u32,
    /// Migrations applied by this call.
    pub applied: Vec<u32>,
}

#[derive(Deserialize)]
struct VersionRow {
    version: String,
}

impl ClickHouse {
    /// Connects and asks the server for its version; the schema follows its features. With
    /// `clickhouse.cluster`, the server must know that cluster, with as many shards as
    /// `clickhouse.shards` lists, and the schema is the cluster's.
    pub async fn connect(config: &ClickHouseConfig) -> Result<Self, SinkError> {
        if config.cluster.is_none() {
            return Self::connect_to(config, &config.url).await;
        }
        // On a cluster any server will do: `url` first, then the replicas in order.
        let mut candidates = vec![&config.url];
        candidates.extend(config.shards.iter().flatten().filter(|url| **url != config.url));
        let mut last = None;
        for url in candidates {
            match Self::connect_to(config, url).await {
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "a server of the cluster does not answer; trying the next");
                    last = Some(e);
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| SinkError::Unavailable {
            url: config.url.clone(),
            operation: "connecting".to_owned(),
            reason: "no server to connect to".to_owned(),
        }))
    }

    /// [`connect`](Self::connect) to the server at `url`.
    async fn connect_to(config: &ClickHouseConfig, url: &str) -> Result<Self, SinkError> {
        let mut client = Client::default()
            .with_url(url)
            .with_user(config.user.as_str())
            .with_validation(false)
            .with_compression(if config.compression { Compression::Lz4 } else { Compression::None })
            .with_setting("output_format_json_quote_64bit_integers", "0");
        if let Some(password) = &config.password {
            client = client.with_password(password.expose());
        }
        let mut this = Self {
            client,
            url: url.to_owned(),
            timeout: config.request_timeout,
            version: ServerVersion { major: 0, minor: 0, patch: 0 },
            schema: Schema::new(&config.database, Default::default()),
        };
        let rows: Vec<VersionRow> = this.fetch("SELECT version() AS version").await?;
        let text = rows.into_iter().next().map(|r| r.version).unwrap_or_default();
        this.version = ServerVersion::parse(&text)?;
        this.schema = Schema::new(&config.database, this.version.features());
        if let Some(cluster) = &config.cluster {
            this.check_cluster(cluster, config.shards.len()).await?;
            this.schema = this.schema.on_cluster(cluster);
        }
        Ok(this)
    }

    /// The same connection to another server at `url` (a replica of the cluster), taken to
    /// run the same version; nothing is sent until it is used.
    pub fn at(&self, url: &str) -> Self {
        Self { client: self.client.clone().with_url(url), url: url.to_owned(), ..self.clone() }
    }

    /// Fails unless this server knows `cluster` with `shards` shards.
    async fn check_cluster(&self, cluster: &str, shards: usize) -> Result<(), SinkError> {
        #[derive(Deserialize)]
        struct Row {
            cluster: String,
            shards: u64,
        }
        let known: Vec<Row> = self
            .fetch(
                "SELECT cluster, uniqExact(shard_num) AS shards FROM system.clusters GROUP BY cluster ORDER BY cluster",
            )
            .await?;
        let problem = match known.iter().find(|row| row.cluster == cluster) {
            None => format!(
                "the server at {} knows no such cluster (its remote_servers: [{}]); set clickhouse.cluster to one of them",
                self.url,
                known.iter().map(|row| row.cluster.as_str()).collect::<Vec<_>>().join(", ")
            ),
            Some(row) if usize::try_from(row.shards).ok() != Some(shards) => format!(
                "the server at {} gives it {} shards, clickhouse.shards lists {shards}",
                self.url, row.shards
            ),
            Some(_) => return Ok(()),
        };
        Err(SinkError::Cluster { cluster: cluster.to_owned(), problem })
    }

    /// This server's `shard` macro (the ZooKeeper path its replicated tables share with the
    /// other replicas of its shard).
    pub async fn shard_macro(&self) -> Result<String, SinkError> {
        #[derive(Deserialize)]
        struct Row {
            substitution: String,
        }
        let rows: Vec<Row> = self.fetch("SELECT substitution FROM system.macros WHERE macro = 'shard'").await?;
        rows.into_iter().next().map(|row| row.substitution).ok_or_else(|| SinkError::Cluster {
            cluster: self.schema.cluster().unwrap_or_default().to_owned(),
            problem: format!("the server at {} has no `shard` macro (<macros> in its config)", self.url),
        })
    }

    /// Waits until this replica has fetched every part its shard's replication log holds
    /// (`SYSTEM SYNC REPLICA`), so that what is read from it next includes every insert
    /// that landed on any replica of the shard. Fails (transient) while a part it needs is
    /// only on a replica that is down, or while ZooKeeper is away.
    pub async fn sync_replica(&self) -> Result<(), SinkError> {
        self.execute(&format!("SYSTEM SYNC REPLICA {}", self.schema.table(LOCAL_AGGREGATES_TABLE))).await
    }

    /// The server's version.
    pub fn version(&self) -> ServerVersion {
        self.version
    }

    /// The schema for this server.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Server URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `sql`, returning nothing.
    pub async fn execute(&self, sql: &str) -> Result<(), SinkError> {
        let query = self.client.query(sql).execute();
        self.deadline(sql, query).await
    }

    /// Runs `sql` and parses each `JSONEachRow` line as a `T`.
    pub async fn fetch<T: DeserializeOwned>(&self, sql: &str) -> Result<Vec<T>, SinkError> {
        let text = self.fetch_text(&format!("{sql} FORMAT JSONEachRow")).await?;
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line).map_err(|e| SinkError::Corrupt {
                    what: format!("a row of `{sql}`"),
                    reason: format!("{e}: {line}"),
                })
            })
            .collect()
    }

    /// Runs `sql` (with its own `FORMAT`) and returns the response body as text.
    pub async fn fetch_text(&self, sql: &str) -> Result<String, SinkError> {
        let bytes = self.fetch_text_bytes(sql).await?;
        String::from_utf8(bytes)
            .map_err(|e| SinkError::Corrupt { what: format!("the result of `{sql}`"), reason: e.to_string() })
    }

    /// Runs `sql` (with its own `FORMAT`) and returns the response body.
    pub async fn fetch_text_bytes(&self, sql: &str) -> Result<Vec<u8>, SinkError> {
        let body = async {
            let mut cursor = self.client.query(sql).fetch_bytes("TabSeparated")?;
            let mut out = Vec::new();
            while let Some(chunk) = cursor.next().await? {
                out.extend_from_slice(&chunk);
            }
            Ok(out)
        };
        self.deadline(sql, body).await
    }

    async fn deadline<T>(
        &self,
        operation: &str,
        future: impl std::future::Future<Output = clickhouse::error::Result<T>>,
    ) -> Result<T, SinkError> {
        match tokio::time::timeout(self.timeout, future).await {
            Ok(result) => result.map_err(|e| classify(&self.url, short(operation), e)),
            Err(_) => Err(SinkError::Unavailable {
                url: self.url.clone(),
                operation: short(operation),
                reason: format!("no answer within {:?}", self.timeout),
            }),
        }
    }

    /// Creates or upgrades the database and tables. Safe to run again and from two
    /// processes at once: every statement is `IF NOT EXISTS`, and a race on creation
    /// counts as success.
    ///
    /// On a cluster every statement runs `ON CLUSTER` and waits (up to ¾ of
    /// `clickhouse.request_timeout`) until every server ran it; a server that is down fails
    /// the migration, which is not recorded. The statements stay queued for that server,
    /// and running `gallop migrate` again once it is back completes it: every statement is
    /// idempotent, so nothing is applied twice.
    pub async fn migrate(&self) -> Result<MigrationReport, SinkError> {
        // Up to date: no DDL at all (on a cluster, DDL waits for every server, and a replica
        // that is down must not keep processors from starting).
        let latest = self.schema.latest_version();
        let found = self.schema_version().await?;
        if found >= latest {
            return Ok(MigrationReport { server: self.version, from: found, to: found, applied: Vec::new() });
        }
        for statement in self.schema.bootstrap() {
            self.execute_idempotent(&statement).await?;
        }
        let from = self.schema_version().await?;
        let mut applied = Vec::new();
        for migration in self.schema.migrations() {
            if migration.version <= from {
                continue;
            }
            for statement in &migration.statements {
                self.execute_idempotent(statement).await?;
            }
            let record = format!(
                "INSERT INTO {} (version, description, applied_at) SELECT {}, '{}', now()",
                self.schema.table(MIGRATIONS_TABLE),
                migration.version,
                migration.description.replace('\'', "\\'")
            );
            self.execute(&record).await?;
            info!(version = migration.version, description = migration.description, "migration applied");
            applied.push(migration.version);
        }
        Ok(MigrationReport { server: self.version, from, to: from.max(self.schema.latest_version()), applied })
    }

    async fn execute_idempotent(&self, sql: &str) -> Result<(), SinkError> {
        let result = if self.schema.cluster().is_some() {
            // The server's own answer (which hosts did not finish) before the request's deadline.
            let wait = (self.timeout.as_secs() * 3 / 4).max(1).to_string();
            let query = self.client.query(sql).with_setting("distributed_ddl_task_timeout", wait).execute();
            self.deadline(sql, query).await
        } else {
            self.execute(sql).await
        };
        match result {
            Err(SinkError::Rejected { reason, .. })
                if server_code(&reason).is_some_and(|code| ALREADY_EXISTS_CODES.contains(&code)) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// The highest migration recorded (0 when none or when the table is missing).
    pub async fn schema_version(&self) -> Result<u32, SinkError> {
        #[derive(Deserialize)]
        struct Row {
            version: u32,
        }
        let sql = format!("SELECT max(version) AS version FROM {}", self.schema.table(MIGRATIONS_TABLE));
        match self.fetch::<Row>(&sql).await {
            Ok(rows) => Ok(rows.first().map_or(0, |r| r.version)),
            Err(SinkError::Rejected { reason, .. }) if matches!(server_code(&reason), Some(60 | 81)) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Fails unless the database is migrated to this Gallop's schema and `aggregates` has
    /// exactly the columns, in order and of the types, that inserts write.
    pub async fn check_schema(&self) -> Result<(), SinkError> {
        let table = format!("{}.{AGGREGATES_TABLE}", self.schema.database());
        let found = self.schema_version().await?;
        let latest = self.schema.latest_version();
        if found < latest {
            return Err(SinkError::SchemaMismatch {
                table,
                problem: format!("database is at schema version {found}, this Gallop needs {latest}"),
            });
        }
        if found > latest {
            return Err(SinkError::SchemaMismatch {
                table,
                problem: format!(
                    "database is at schema version {found}, newer than this Gallop ({latest}); upgrade Gallop"
                ),
            });
        }
        #[derive(Deserialize)]
        struct Column {
            name: String,
            r#type: String,
        }
        let sql = format!(
            "SELECT name, type FROM system.columns WHERE database = '{}' AND table = '{AGGREGATES_TABLE}'",
            self.schema.database()
        );
        let columns: Vec<Column> = self.fetch(&sql).await?;
        let expected = self.schema.aggregates_columns();
        for (i, (name, ty)) in expected.iter().enumerate() {
            let Some(column) = columns.get(i) else {
                return Err(SinkError::SchemaMismatch { table, problem: format!("column {i} `{name}` is missing") });
            };
            // A table made before a server upgrade keeps String where LowCardinality(String)
            // would be used now; both take the same RowBinary.
            if column.name != *name || plain(&column.r#type) != plain(ty) {
                return Err(SinkError::SchemaMismatch {
                    table,
                    problem: format!("column {i} is `{} {}`, expected `{name} {ty}`", column.name, column.r#type),
                });
            }
        }
        if columns.len() > expected.len() {
            return Err(SinkError::SchemaMismatch {
                table,
                problem: format!("unexpected extra column `{}`", columns[expected.len()].name),
            });
        }
        Ok(())
    }

    /// The newest stored mark of each of `partitions` in `stream` (absent: none stored).
    pub async fn positions(
        &self,
        stream: &str,
        partitions: &[u32],
    ) -> Result<std::collections::BTreeMap<u32, Mark>, SinkError> {
        #[derive(Deserialize)]
        struct Row {
            marker: String,
        }
        let sql = format!(
            "SELECT max(value) AS marker FROM {} WHERE site = '' AND kind = 'position' AND granularity = 'minute' \
             AND dimension = '{}' GROUP BY substring(value, 1, 10)",
            self.schema.write_table(),
            escape(stream)
        );
        let mut positions = std::collections::BTreeMap::new();
        for row in self.fetch::<Row>(&sql).await? {
            let (partition, mark) = parse_marker(&row.marker).ok_or_else(|| SinkError::Corrupt {
                what: format!("position marker of stream {stream}"),
                reason: format!("{:?} is not <partition>/e<epoch>/<position>/t<time>", row.marker),
            })?;
            if partitions.contains(&partition) {
                positions.insert(partition, mark);
            }
        }
        Ok(positions)
    }

    /// What a processor of `partitions` of `stream` stored for a restart besides positions:
    /// each partition's newest watermark and the stored versions of every visit that may
    /// still be open (last event no older than the oldest watermark less `horizon_ms`).
    pub async fn open_sessions(
        &self,
        stream: &str,
        partitions: &[u32],
        horizon_ms: i64,
    ) -> Result<OpenSessions, SinkError> {
        #[derive(Deserialize)]
        struct Hexed {
            hexed: String,
        }
        #[derive(Deserialize)]
        struct Newest {
            newest: String,
        }
        let table = self.schema.write_table();
        // ClickHouse 18.16 cannot alias an aggregate of `value` as `value`.
        let sql = format!(
            "SELECT max(value) AS newest FROM {table} WHERE site = '' AND kind = 'position' AND granularity = 'minute' \
             AND dimension = '{}' GROUP BY substring(value, 1, 10)",
            escape(&watermark_dimension(stream))
        );
        let mut open = OpenSessions::default();
        for row in self.fetch::<Newest>(&sql).await? {
            let (partition, watermark) = parse_watermark_value(&row.newest).ok_or_else(|| SinkError::Corrupt {
                what: format!("watermark of stream {stream}"),
                reason: format!("{:?} is not <partition>/<watermark ms>", row.newest),
            })?;
            if partitions.contains(&partition) {
                open.watermarks.insert(partition, watermark);
            }
        }
        let Some(oldest) = open.watermarks.values().min() else { return Ok(open) };
        let since = oldest.saturating_sub(horizon_ms).div_euclid(1000) - 60;
        let owned: Vec<String> = partitions.iter().map(|p| format!("'{p:010}'")).collect();
        // The values are binary (the compact form of `visits`): read as hex, which every
        // server version has and any client reads as text.
        let sql = format!(
            "SELECT hex(value) AS hexed FROM {table} WHERE site = '' AND kind = 'position' AND granularity = 'minute' \
             AND dimension = '{}' AND bucket >= toDateTime({}, 'UTC') AND substring(value, 1, 10) IN ({})",
            escape(&session_dimension(stream)),
            since.max(0),
            owned.join(", ")
        );
        for row in self.fetch::<Hexed>(&sql).await? {
            let corrupt = |reason: String| SinkError::Corrupt {
                what: format!("open visits of stream {stream}"),
                reason: format!("{reason} in {:?}", truncate_for_error(&row.hexed)),
            };
            let value = unhex(&row.hexed).ok_or_else(|| corrupt("not hex".to_owned()))?;
            open.sessions.extend(parse_session_value(&value).map_err(corrupt)?);
        }
        Ok(open)
    }

    /// Whether the markers of `encoded` are stored, i.e. an insert of it landed.
    pub async fn landed(&self, stream: &str, encoded: &EncodedFlush) -> Result<bool, SinkError> {
        let Some((_, marker)) = encoded.markers.first() else { return Ok(false) };
        let sql = format!(
            "SELECT count() AS n FROM {} WHERE site = '' AND kind = 'position' AND granularity = 'minute' \
             AND dimension = '{}' AND value = '{}'",
            self.schema.write_table(),
            escape(stream),
            escape(marker)
        );
        Ok(self.count(&sql).await? > 0)
    }

    /// Runs `sql`, a `SELECT count() AS n …`, and returns `n`.
    async fn count(&self, sql: &str) -> Result<u64, SinkError> {
        #[derive(Deserialize)]
        struct Row {
            n: u64,
        }
        Ok(self.fetch::<Row>(sql).await?.first().map_or(0, |r| r.n))
    }

    /// Whether the server is still running the query `query_id`.
    pub async fn is_running(&self, query_id: &str) -> Result<bool, SinkError> {
        let sql = format!("SELECT count() AS n FROM system.processes WHERE query_id = '{}'", escape(query_id));
        Ok(self.count(&sql).await? > 0)
    }

    /// The query ids of Gallop inserts into the aggregates table that the server runs now,
    /// other than those of writer `instance` (`gallop-<instance>-…`).
    pub async fn inserts_running(&self, instance: &str) -> Result<Vec<String>, SinkError> {
        #[derive(Deserialize)]
        struct Row {
            query_id: String,
        }
        let sql = format!(
            "SELECT query_id FROM system.processes WHERE startsWith(query_id, 'gallop-') \
             AND NOT startsWith(query_id, '{}') AND position(query, '{}') > 0",
            escape(&format!("gallop-{instance}-")),
            escape(&format!("INSERT INTO {}", self.schema.write_table()))
        );
        Ok(self.fetch::<Row>(&sql).await?.into_iter().map(|r| r.query_id).collect())
    }

    /// The time one request may take (`clickhouse.request_timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// One insert attempt of a whole flush, as one block (one data part).
    pub async fn insert(
        &self,
        encoded: &EncodedFlush,
        data: Bytes,
        flush_id: &str,
        query_id: &str,
    ) -> Result<(), SinkError> {
        let sql = format!("INSERT INTO {} FORMAT RowBinary", self.schema.write_table());
        let mut insert = self
            .client
            .insert_formatted_with(sql)
            .with_timeouts(Some(self.timeout), Some(self.timeout))
            // One block, hence one part: the rows and their position markers are atomic.
            .with_setting("max_insert_block_size", (encoded.rows + 1).to_string())
            .with_setting("query_id", query_id);
        if self.schema.features().dedup_token {
            insert = insert.with_setting("insert_deduplication_token", flush_id);
        }
        let operation = format!("insert of {} rows ({} bytes)", encoded.rows, data.len());
        let result = async {
            // In pieces: the client compresses each piece into a buffer it zero-fills first,
            // and one buffer of a whole flush (tens of megabytes, fresh pages every time)
            // cost the processor more than the compression itself. The pieces are one body,
            // hence still one block.
            // At least one piece, as before (an empty body is still one send).
            let mut at = 0;
            loop {
                let end = (at + INSERT_PIECE_BYTES).min(data.len());
                insert.send(data.slice(at..end)).await?;
                at = end;
                if at >= data.len() {
                    break;
                }
            }
            insert.end().await
        };
        self.deadline(&operation, result).await
    }
}

/// Bytes of an insert's body handed to the client (and compressed) at a time.
const INSERT_PIECE_BYTES: usize = 1 << 20;

/// The bytes of ClickHouse's `hex()` text (upper-case pairs); `None` when it is not that.
fn unhex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| char::from(c).to_digit(16);
    let text = text.as_bytes();
    if text.len() % 2 != 0 {
        return None;
    }
    // Two hex digits make one byte: at most 0xFF.
    text.chunks_exact(2).map(|pair| Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)).collect()
}

/// A type without its `LowCardinality(..)` wrapper.
fn plain(ty: &str) -> &str {
    ty.strip_prefix("LowCardinality(").and_then(|t| t.strip_suffix(')')).unwrap_or(ty)
}

/// Escapes a string for a single-quoted SQL literal.
pub(crate) fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "\\'")
}

/// The first line of `sql`, shortened, for error messages.
fn short(sql: &str) -> String {
    let line = sql.lines().next().unwrap_or_default();
    if line.len() > 160 {
        let mut end = 160;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &line[..end])
    } else {
        line.to_owned()
    }
}
/// The first 200 bytes of `text`, for an error message.
fn truncate_for_error(text: &str) -> &str {
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::unhex;

    #[test]
    fn unhex_reads_clickhouse_hex_and_refuses_other_text() {
        assert_eq!(unhex("00FF7a41"), Some(vec![0, 255, 0x7a, b'A']));
        assert_eq!(unhex(""), Some(vec![]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("0G"), None);
        assert_eq!(unhex("é1"), None);
    }
}
