//! `gallop bench pipeline`: the whole pipeline on this machine, measured end to end.
//!
//! `gallop ingest` and `gallop process` run as child processes (so each one's CPU time can
//! be read from /proc) against the configured NATS or Kafka broker (`--broker`) and
//! ClickHouse, in a stream or topics and a database of their own. This process sends the
//! synthetic stream of `gallop-bench process` over HTTP (`POST /v1/events`) or, with
//! `--input topic`, as NDJSON messages to the input subject or topic that the gateway
//! consumes (topic ingestion), as fast as it is taken or at `--rate`, and watches ClickHouse
//! until every event has landed. It prints the sustained rate, the lag behind real time,
//! the CPU split between gateway, broker, processor, ClickHouse and itself, the bytes the
//! gateway published and the broker stores per million events, and the rows and bytes
//! ClickHouse holds per million events.
//!
//! With `clickhouse.cluster` it also prints, over the same window, the CPU of each server of
//! `clickhouse.shards` (µs per event) and the rows each shard took per second
//! (`system.events` `InsertedRows` of its replicas); storage is read from every shard's
//! `aggregates_local`, and the database is dropped `ON CLUSTER`.
//!
//! The brokers are reached through their adapters (`gallop-nats`, `gallop-kafka`): the
//! topic load through an [`InputPublisher`], the stream's size and the clean-up through
//! the adapters' own calls.

use std::{
    path::PathBuf,
    process::Stdio,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use gallop_broker::InputPublisher;
use gallop_config::{BrokerKind, Config};
use gallop_event::EventRecord;
use gallop_kafka::{KafkaInputPublisher, KafkaSetupError};
use gallop_nats::{NatsBroker, NatsError, NatsInputPublisher};
use gallop_sink::{ClickHouse, SinkError, AGGREGATES_TABLE, LOCAL_AGGREGATES_TABLE};
use gallop_support::Backoff;
use serde::Deserialize;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::synth::{generate, SynthConfig};

/// Why `gallop bench pipeline` stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The options do not fit each other or the config.
    #[error("{0}")]
    Options(String),
    /// Something of this process failed (the runtime, a child process, a task).
    #[error("{what}: {reason}")]
    Run {
        /// What was being done.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// A child (`gallop ingest`, `gallop process`) failed or exited.
    #[error("gallop {command}: {reason}")]
    Child {
        /// `ingest` or `process`.
        command: String,
        /// What happened.
        reason: String,
    },
    /// The gateway refused the load.
    #[error("the gateway answered {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// Not every event landed in time.
    #[error("only {landed} of {sent} events landed in {seconds} s")]
    TimedOut {
        /// Events in ClickHouse.
        landed: u64,
        /// Events sent.
        sent: usize,
        /// `--timeout-secs`.
        seconds: u64,
    },
    /// ClickHouse holds another number of events than were sent.
    #[error("ClickHouse holds {landed} events, {sent} were sent")]
    Miscounted {
        /// Events in ClickHouse.
        landed: u64,
        /// Events sent.
        sent: usize,
    },
    /// ClickHouse failed.
    #[error(transparent)]
    ClickHouse(#[from] SinkError),
    /// The NATS adapter failed.
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// The Kafka adapter failed.
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
}

/// `PipelineError::Run` of `what` from any displayable error.
fn failed<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> PipelineError + '_ {
    move |e| PipelineError::Run { what: what.to_owned(), reason: e.to_string() }
}

/// Options of `gallop bench pipeline`.
#[derive(Debug, clap::Args)]
pub struct PipelineBench {
    /// Events to send.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Events per HTTP request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// HTTP requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Offered load in events per second (0: as fast as the gateway accepts). At a fixed
    /// rate the lag shows whether the pipeline keeps up with it.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Event-time span of the stream in minutes, ending now; must stay inside
    /// `time.allowed_lateness`. Fewer events per minute means more rows per event.
    #[arg(long, default_value_t = 5)]
    span_minutes: i64,
    /// Seed of the synthetic stream.
    #[arg(long, default_value_t = 0x006a_110b)]
    seed: u64,
    /// Give up when not every event has landed this many seconds after the start.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Keep the bench's stream and database afterwards (for a look in ClickHouse).
    #[arg(long)]
    keep: bool,
    /// The broker between gateway and processor (default: `broker.kind` of the config).
    #[arg(long, value_enum)]
    broker: Option<BrokerArg>,
    /// How the load reaches the gateway: `http` (`POST /v1/events`, a JSON array per
    /// request) or `topic` (NDJSON messages of `--batch` events published to the input
    /// subject or topic, which the gateway consumes: topic ingestion).
    #[arg(long, value_enum, default_value = "http")]
    input: InputArg,
    /// `gallop process` instances sharing the partitions (`consumer.assignment = "auto"`);
    /// the load starts once they share them.
    #[arg(long, default_value_t = 1)]
    processors: usize,
    /// Once half the events landed, SIGKILL the first processor and print how long until
    /// another one wrote a row of its partitions (needs `--processors` 2 or more).
    #[arg(long)]
    kill_one: bool,
}

/// `--input`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputArg {
    /// HTTP requests to the gateway.
    Http,
    /// Messages to the input subject or topic.
    Topic,
}

/// `--broker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerArg {
    /// NATS JetStream (`[nats]`).
    Nats,
    /// Kafka (`[kafka]`).
    Kafka,
}

/// User-Agents the load rotates through (the gateway derives browser, OS and device).
const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
];
/// Countries the load sends in the gateway's country header.
const COUNTRIES: [&str; 5] = ["DE", "US", "FR", "GB", "NL"];
/// HitKeep's published storage per million raw hits, the reference of the storage figure.
const HITKEEP_BYTES_PER_MILLION: f64 = 120.0 * 1_000_000.0;

/// One HTTP request's worth of events, ready to send.
struct Request {
    body: Vec<u8>,
    events: u64,
    user_agent: &'static str,
    country: &'static str,
}

/// Runs the benchmark with the loaded `config` (`config_path` is passed on to the
/// children, which are this process's own executable: the `gallop` binary).
pub fn pipeline(options: &PipelineBench, config: &Config, config_path: Option<PathBuf>) -> Result<(), PipelineError> {
    if options.events == 0 || options.batch == 0 || options.concurrency == 0 {
        return Err(PipelineError::Options("--events, --batch and --concurrency must be at least 1".to_owned()));
    }
    if options.processors == 0 || (options.kill_one && options.processors < 2) {
        return Err(PipelineError::Options(
            "--processors must be at least 1, and at least 2 with --kill-one (someone must take over)".to_owned(),
        ));
    }
    let span = Duration::from_secs(u64::try_from(options.span_minutes).unwrap_or(0) * 60);
    if span.is_zero() || span >= config.time.allowed_lateness {
        return Err(PipelineError::Options(format!(
            "--span-minutes {} must be at least 1 and below time.allowed_lateness ({:?})",
            options.span_minutes, config.time.allowed_lateness
        )));
    }
    if options.batch > config.ingest.limits.max_batch_events {
        return Err(PipelineError::Options(format!(
            "--batch {} is above ingest.limits.max_batch_events ({})",
            options.batch, config.ingest.limits.max_batch_events
        )));
    }
    let mut config = config.clone();
    if let Some(broker) = options.broker {
        config.broker.kind = match broker {
            BrokerArg::Nats => BrokerKind::Nats,
            BrokerArg::Kafka => BrokerKind::Kafka,
        };
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(failed("starting the Tokio runtime"))?
        .block_on(run(options, &config, config_path))
}

async fn run(options: &PipelineBench, config: &Config, config_path: Option<PathBuf>) -> Result<(), PipelineError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let tag = format!("{:x}{:x}", std::process::id(), now % 1_000_000_000);
    let bench = Bench::new(&tag, config, config_path, options.input == InputArg::Topic);

    // Events of the last minutes: on time for the processor, however long the run.
    let span_ms = options.span_minutes * 60_000;
    let synth = SynthConfig {
        seed: options.seed,
        events: options.events,
        start_ms: now - span_ms,
        span_ms,
        ..SynthConfig::default()
    };
    let topic = options.input == InputArg::Topic;
    let requests = requests(&synth, options.batch, topic);
    let body_bytes: usize = requests.iter().map(|r| r.body.len()).sum();
    let offered =
        if options.rate > 0 { format!("{} events/s offered", options.rate) } else { "as fast as accepted".to_owned() };
    let unit = if topic { "input messages (NDJSON)" } else { "requests" };
    println!(
        "gallop bench pipeline: {} events over the last {} minutes ({} visitors, {} pages, {} referrers, {} sites) in {} {unit} of {} \
         ({:.0} bytes/event of JSON), {} in flight, {offered}",
        options.events,
        options.span_minutes,
        synth.visitors,
        synth.pages,
        synth.referrers,
        synth.sites,
        requests.len(),
        options.batch,
        body_bytes as f64 / options.events as f64,
        options.concurrency
    );
    let broker = match config.broker.kind {
        BrokerKind::Nats => format!("NATS {}", config.nats.url),
        BrokerKind::Kafka => format!("Kafka {}", config.kafka.bootstrap_servers),
    };
    let cluster = match &config.clickhouse.cluster {
        Some(cluster) => {
            let shards: Vec<String> = config
                .clickhouse
                .shards
                .iter()
                .map(|replicas| {
                    format!("[{}]", replicas.iter().map(|url| host_port(url)).collect::<Vec<_>>().join(", "))
                })
                .collect();
            format!(" (cluster {cluster}, shards {})", shards.join(", "))
        }
        None => String::new(),
    };
    println!(
        "processor: flush every {:?} or {} keys; ClickHouse {}{cluster}; broker {broker}",
        config.processor.flush_interval, config.processor.flush_keys, config.clickhouse.url
    );

    let result = bench.measure(options, config, requests).await;
    bench.clean_up(options.keep).await;
    result
}

/// The children, names and services of one run.
struct Bench {
    tag: String,
    kind: BrokerKind,
    database: String,
    /// `[nats]` with this run's stream, subjects and bucket.
    nats: gallop_config::NatsConfig,
    /// `[kafka]` with this run's topics.
    kafka: gallop_config::KafkaConfig,
    partitions: u32,
    /// How long a publish to the input may wait for its acknowledgement.
    ack_timeout: Duration,
    clickhouse: gallop_config::ClickHouseConfig,
    config_path: Option<PathBuf>,
    /// The input settings the children get (names of this run's own).
    input: gallop_config::InputConfig,
    /// Topic ingestion: the gateway consumes the input.
    topic_input: bool,
}

impl Bench {
    fn new(tag: &str, config: &Config, config_path: Option<PathBuf>, topic_input: bool) -> Self {
        let input = gallop_config::InputConfig {
            enabled: topic_input,
            nats_stream: format!("GALLOP_BENCH_IN_{tag}"),
            nats_subject: format!("gallop-bench-in-{tag}.>"),
            nats_dead_stream: format!("GALLOP_BENCH_DEAD_{tag}"),
            nats_dead_subject: format!("gallop-bench-dead-{tag}"),
            nats_consumer: format!("bench-in-{tag}"),
            kafka_topic: format!("gallop-bench-in-{tag}"),
            kafka_dead_topic: format!("gallop-bench-dead-{tag}"),
            kafka_group: format!("gallop-bench-in-{tag}"),
            ..config.input.clone()
        };
        Self {
            input,
            topic_input,
            tag: tag.to_owned(),
            kind: config.broker.kind,
            database: format!("gallop_bench_{tag}"),
            nats: gallop_config::NatsConfig {
                stream: format!("GALLOP_BENCH_{tag}"),
                subject_prefix: format!("gallop-bench-{tag}"),
                salt_bucket: format!("gallop_bench_{tag}"),
                // As the children are told (GALLOP_NATS__MAX_AGE): connecting here updates the
                // stream to this config.
                max_age: Duration::from_secs(3600),
                ..config.nats.clone()
            },
            kafka: gallop_config::KafkaConfig {
                topic: format!("gallop-bench-{tag}"),
                salt_topic: format!("gallop-bench-{tag}-salts"),
                consumer_group: format!("gallop-bench-{tag}"),
                ..config.kafka.clone()
            },
            partitions: config.broker.partitions,
            ack_timeout: config.ingest.ack_timeout,
            clickhouse: gallop_config::ClickHouseConfig {
                database: format!("gallop_bench_{tag}"),
                ..config.clickhouse.clone()
            },
            config_path,
        }
    }

    /// `gallop <command>` on this bench's stream and database; returns the child and the
    /// address it logged as listening.
    async fn spawn(&self, command: &str, extra: &[(&str, String)]) -> Result<(Child, String), PipelineError> {
        let child_error = |reason: String| PipelineError::Child { command: command.to_owned(), reason };
        let exe = std::env::current_exe().map_err(|e| child_error(format!("finding the gallop binary: {e}")))?;
        let mut cmd = Command::new(exe);
        if let Some(path) = &self.config_path {
            cmd.arg("--config").arg(path);
        }
        cmd.arg("--log-json")
            .arg(command)
            .env("GALLOP_LOG__FILTER", "info")
            .env_remove("RUST_LOG")
            .env("GALLOP_BROKER__KIND", self.kind.name())
            .env("GALLOP_KAFKA__TOPIC", &self.kafka.topic)
            .env("GALLOP_KAFKA__SALT_TOPIC", &self.kafka.salt_topic)
            .env("GALLOP_KAFKA__CONSUMER_GROUP", &self.kafka.consumer_group)
            .env("GALLOP_NATS__STREAM", &self.nats.stream)
            .env("GALLOP_NATS__SUBJECT_PREFIX", &self.nats.subject_prefix)
            .env("GALLOP_NATS__SALT_BUCKET", &self.nats.salt_bucket)
            .env("GALLOP_NATS__MAX_AGE", "1h")
            .env("GALLOP_INGEST__LISTEN", "127.0.0.1:0")
            .env("GALLOP_INGEST__COUNTRY_HEADER", "X-Country")
            .env("GALLOP_CONSUMER__LISTEN", "127.0.0.1:0")
            .env("GALLOP_CONSUMER__DURABLE_PREFIX", format!("bench-{}", self.tag))
            .env("GALLOP_CLICKHOUSE__DATABASE", &self.database)
            .env("GALLOP_INPUT__ENABLED", (self.topic_input && command == "ingest").to_string())
            .env("GALLOP_INPUT__NATS_STREAM", &self.input.nats_stream)
            .env("GALLOP_INPUT__NATS_SUBJECT", &self.input.nats_subject)
            .env("GALLOP_INPUT__NATS_DEAD_STREAM", &self.input.nats_dead_stream)
            .env("GALLOP_INPUT__NATS_DEAD_SUBJECT", &self.input.nats_dead_subject)
            .env("GALLOP_INPUT__NATS_CONSUMER", &self.input.nats_consumer)
            .env("GALLOP_INPUT__KAFKA_TOPIC", &self.input.kafka_topic)
            .env("GALLOP_INPUT__KAFKA_DEAD_TOPIC", &self.input.kafka_dead_topic)
            .env("GALLOP_INPUT__KAFKA_GROUP", &self.input.kafka_group)
            .env("GALLOP_NATS__LEASE_BUCKET", self.lease_bucket())
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| child_error(format!("starting: {e}")))?;
        let stderr = child.stderr.take().ok_or_else(|| child_error("its stderr is not piped".to_owned()))?;
        let mut lines = BufReader::new(stderr).lines();
        let address = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.map_err(|e| child_error(format!("reading its log: {e}")))? {
                let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                let message = entry["fields"]["message"].as_str().unwrap_or_default();
                if message == "listening" || message == "gateway listening" {
                    return Ok(entry["fields"]["address"].as_str().unwrap_or_default().to_owned());
                }
                if entry["level"] == "ERROR" {
                    return Err(child_error(line));
                }
            }
            Err(child_error("exited before listening".to_owned()))
        })
        .await
        .map_err(|_| child_error("did not start within 60 s".to_owned()))??;
        let label = command.to_owned();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("\"WARN\"") || line.contains("\"ERROR\"") {
                    eprintln!("[gallop {label}] {line}");
                }
            }
        });
        Ok((child, address))
    }

    async fn measure(
        &self,
        options: &PipelineBench,
        config: &Config,
        requests: Vec<Request>,
    ) -> Result<(), PipelineError> {
        let ticks = clock_ticks_per_second();
        let mut processors = Vec::new();
        for i in 0..options.processors {
            let member = [("GALLOP_CONSUMER__MEMBER", format!("bench-{i}"))];
            processors.push(self.spawn("process", &member).await?);
        }
        let shares = shared(&processors, self.partitions).await?;
        println!("processors: {} sharing {} partitions: {shares:?}", options.processors, self.partitions);
        let (mut gateway, address) = self.spawn("ingest", &[]).await?;
        let gateway_address = address.clone();
        let clickhouse = ClickHouse::connect(&self.clickhouse).await?;
        let table = clickhouse.schema().table(AGGREGATES_TABLE);
        let landed_sql = format!(
            "SELECT sumMerge(events) AS n FROM {table} WHERE kind = 'rollup' AND granularity = 'minute' AND dimension = 'total'"
        );

        let servers = self.servers();
        let pids = Pids {
            gateway: gateway.id().ok_or_else(|| exited("ingest"))?,
            processors: processors
                .iter()
                .map(|(p, _)| p.id().ok_or_else(|| exited("process")))
                .collect::<Result<_, _>>()?,
            broker: match self.kind {
                BrokerKind::Nats => find_process("nats-server"),
                // Tansu's binary is named after its version; /proc shows 15 bytes of it.
                BrokerKind::Kafka => find_process("tansu").or_else(|| find_process("java")),
            },
            // One server: the oldest clickhouse-server of this machine. A cluster: each server
            // of `clickhouse.shards` by its HTTP port (see `Server`); `clickhouse` stays unset.
            clickhouse: if servers.is_empty() { find_process("clickhouse-serv") } else { None },
            servers: servers.iter().map(|s| s.pid).collect(),
            this: std::process::id(),
        };
        let inserted_before = insert_counters(&clickhouse, &servers).await;
        let cpu_before = pids.cpu(ticks);
        let started = Instant::now();
        let total = requests.len();
        let accepted = Arc::new(Mutex::new(vec![(0.0f64, 0u64)]));
        let pace = (options.rate > 0).then(|| Duration::from_secs_f64(options.batch as f64 / options.rate as f64));
        let load = if self.topic_input { Load::Topic(self.input_publisher().await?) } else { Load::Http(address) };
        let sender = send_all(load, requests, options.concurrency, pace, started, accepted.clone());

        // Sample the landed count until everything is there.
        let mut samples: Vec<(f64, u64)> = Vec::new();
        let mut sender = Some(tokio::spawn(sender));
        let mut sent_at = None;
        let deadline = Duration::from_secs(options.timeout_secs);
        let mut killed: Option<Killed> = None;
        let mut killed_cpu = 0.0;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let landed = landed(&clickhouse, &landed_sql).await;
            samples.push((started.elapsed().as_secs_f64(), landed));
            if options.kill_one && killed.is_none() && landed >= options.events as u64 / 2 {
                let (victim, address) = &mut processors[0];
                let partitions = owned(address).await.unwrap_or_default();
                let before = self.markers(&clickhouse).await?.into_iter().map(|(_, value)| value).collect();
                killed_cpu = pids.processors.first().and_then(|&p| cpu_seconds(p, ticks)).unwrap_or(0.0);
                victim.kill().await.map_err(failed("SIGKILL of a processor"))?;
                println!("SIGKILLed processor bench-0 (partitions {partitions:?}) with {landed} events landed");
                killed = Some(Killed { at: Instant::now(), partitions, before, taken_over: None });
            }
            if let Some(kill) = killed.as_mut().filter(|k| k.taken_over.is_none()) {
                let new: Vec<(u32, String)> = self
                    .markers(&clickhouse)
                    .await?
                    .into_iter()
                    .filter(|(p, value)| {
                        kill.partitions.contains(p) && !kill.before.contains(value) && !value.ends_with("/obench-0")
                    })
                    .collect();
                if let Some((partition, value)) = new.first() {
                    let took = kill.at.elapsed();
                    println!(
                        "takeover: {took:.2?} from the SIGKILL to the first row of its partitions written by another processor \
                         (partition {partition}, marker {value}); consumer.lease_ttl {:?}",
                        config.consumer.lease_ttl
                    );
                    kill.taken_over = Some(took);
                }
            }
            if sender.as_ref().is_some_and(|s| s.is_finished()) {
                if let Some(finished) = sender.take() {
                    finished.await.map_err(failed("the sender task"))??;
                    sent_at = accepted.lock().ok().and_then(|a| a.last().map(|l| l.0));
                }
            }
            if sent_at.is_some() && landed >= options.events as u64 {
                break;
            }
            if started.elapsed() > deadline {
                return Err(PipelineError::TimedOut { landed, sent: options.events, seconds: options.timeout_secs });
            }
            let alive = processors.iter_mut().skip(usize::from(killed.is_some())).map(|(child, _)| ("process", child));
            for (command, child) in alive.chain([("ingest", &mut gateway)]) {
                if let Some(status) = child.try_wait().map_err(failed("waiting for a child"))? {
                    return Err(PipelineError::Child {
                        command: command.to_owned(),
                        reason: format!("exited: {status}"),
                    });
                }
            }
        }
        let sent_at = sent_at.unwrap_or_default();
        let (done_at, landed_total) = *samples.last().unwrap_or(&(0.0, 0));
        let cpu_after = pids.cpu(ticks);
        let inserted_after = insert_counters(&clickhouse, &servers).await;
        if landed_total != options.events as u64 {
            return Err(PipelineError::Miscounted { landed: landed_total, sent: options.events });
        }

        // Lag: how long ago the landed events had been accepted by the gateway.
        let accepted = accepted.lock().map(|a| a.clone()).unwrap_or_default();
        let mut lags: Vec<f64> = samples
            .iter()
            .filter(|&&(t, landed)| landed > 0 && t <= sent_at)
            .map(|&(t, landed)| t - accepted_at(&accepted, landed))
            .collect();
        lags.sort_by(f64::total_cmp);

        let n = options.events as f64;
        println!();
        if self.topic_input {
            println!(
                "sent:   {} events in {:.2} s → {:.0} events/s acknowledged by the input {} ({} messages)",
                options.events,
                sent_at,
                n / sent_at,
                match self.kind {
                    BrokerKind::Nats => "subject",
                    BrokerKind::Kafka => "topic",
                },
                total
            );
        } else {
            println!(
                "sent:   {} events in {:.2} s → {:.0} events/s accepted by the gateway ({} requests)",
                options.events,
                sent_at,
                n / sent_at,
                total
            );
        }
        println!(
            "landed: all {} in ClickHouse {:.2} s after the first request → {:.0} events/s end to end",
            options.events,
            done_at,
            n / done_at
        );
        // Sustained rate: events that landed between the first and the last flush seen
        // while the gateway was still accepting, over the time between them (the run's
        // start-up and final flush interval left out).
        let steps: Vec<(f64, u64)> =
            samples.windows(2).filter(|w| w[1].1 > w[0].1 && w[1].0 <= sent_at + 0.5).map(|w| w[1]).collect();
        if let (Some(first), Some(last)) = (steps.first(), steps.last()) {
            if last.0 > first.0 {
                println!(
                    "sustained: {:.0} events/s landed between the flushes at {:.1} s and {:.1} s",
                    (last.1 - first.1) as f64 / (last.0 - first.0),
                    first.0,
                    last.0
                );
            }
        }
        if let (Some(median), Some(max)) = (lags.get(lags.len() / 2), lags.last()) {
            println!(
                "lag behind the gateway while sending: median {median:.1} s, max {max:.1} s; last event landed {:.1} s \
                 after the last request (sampled every 0.5 s; flush interval {:?})",
                done_at - sent_at,
                config.processor.flush_interval
            );
        }
        let used = |f: fn(&Cpu) -> Option<f64>| match (f(&cpu_before), f(&cpu_after)) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        // Each server of the cluster, and all of them together (a process counted once where
        // two URLs lead to it).
        let server_cpu: Vec<Option<f64>> =
            cpu_before.servers.iter().zip(&cpu_after.servers).map(|(a, b)| Some((*b)? - (*a)?)).collect();
        let (clickhouse_label, clickhouse_cpu) = if servers.is_empty() {
            ("ClickHouse (clickhouse-server)".to_owned(), used(|c| c.clickhouse))
        } else {
            let mut seen = std::collections::HashSet::new();
            let found: Vec<f64> = servers
                .iter()
                .zip(&server_cpu)
                .filter_map(|(server, cpu)| Some((server.pid?, (*cpu)?)))
                .filter(|(pid, _)| seen.insert(*pid))
                .map(|(_, cpu)| cpu)
                .collect();
            let label = if found.len() == servers.len() {
                format!("ClickHouse ({} servers)", servers.len())
            } else {
                format!("ClickHouse ({} of {} servers)", found.len(), servers.len())
            };
            (label, (!found.is_empty()).then(|| found.iter().sum()))
        };
        let parts: [(&str, Option<f64>); 5] = [
            ("gateway (gallop ingest)", used(|c| c.gateway)),
            (
                match self.kind {
                    BrokerKind::Nats => "NATS (nats-server)",
                    BrokerKind::Kafka => "Kafka broker (tansu)",
                },
                used(|c| c.broker),
            ),
            ("processors (gallop process)", used(|c| c.processors).map(|s| s + killed_cpu)),
            (&clickhouse_label, clickhouse_cpu),
            ("load generator (this process)", used(|c| c.this)),
        ];
        let busy: f64 = parts.iter().filter_map(|p| p.1).sum();
        println!(
            "CPU over the {done_at:.1} s run: {busy:.1} CPU-seconds = {:.2} cores busy of {}",
            busy / done_at,
            std::thread::available_parallelism().map_or(0, |p| p.get())
        );
        for (name, seconds) in parts {
            match seconds {
                Some(s) => {
                    println!("  {name:<32} {s:>7.2} s  {:>5.1} %  {:>8.2} µs/event", 100.0 * s / busy, s * 1e6 / n)
                }
                None => println!("  {name:<32} (process not found on this machine)"),
            }
        }
        if !servers.is_empty() {
            let run = Window { events: n, seconds: done_at, busy };
            self.cluster_report(&servers, &server_cpu, &inserted_before, &inserted_after, run);
        }
        let published = scrape(&gateway_address, "gallop_published_bytes_total").await;
        self.storage(&clickhouse, n, published).await?;

        if options.processors > 1 {
            let each: Vec<String> = pids
                .processors
                .iter()
                .zip(&cpu_before.each)
                .map(|(&pid, before)| match (cpu_seconds(pid, ticks), before) {
                    (Some(after), Some(before)) => format!("{:.2} s", after - before),
                    _ => "killed".to_owned(),
                })
                .collect();
            println!("  per processor: {}", each.join(", "));
        }
        let _ = terminate(&mut gateway).await;
        for (processor, _) in processors.iter_mut().skip(usize::from(killed.is_some())) {
            let _ = terminate(processor).await;
        }
        Ok(())
    }

    /// Bytes on the broker, rows and bytes in ClickHouse, per million events.
    async fn storage(&self, clickhouse: &ClickHouse, events: f64, published: Option<f64>) -> Result<(), PipelineError> {
        let parts_sql = |table: &str| {
            format!(
                "SELECT sum(rows) AS rows, count() AS parts, sum(data_compressed_bytes) AS compressed, \
                 sum(data_uncompressed_bytes) AS uncompressed FROM system.parts \
                 WHERE database = '{}' AND table = '{table}' AND active",
                self.database
            )
        };
        let per_million = events / 1_000_000.0;
        if let Some(bytes) = published {
            println!(
                "broker messages: {:.1} MB/M events of payload as published ({:.0} bytes/event, uncompressed; \
                 gallop_published_bytes_total)",
                bytes / per_million / 1e6,
                bytes / events
            );
        }
        let show = |label: &str, p: &Parts| {
            println!(
                "  {label:<24} {:>9.0} rows/M events, {:>7.2} MB/M compressed ({:.2} MB/M uncompressed), {} parts; \
                 HitKeep's raw hits: 120 MB/M → {:.0}× smaller",
                p.rows as f64 / per_million,
                p.compressed as f64 / per_million / 1e6,
                p.uncompressed as f64 / per_million / 1e6,
                p.parts,
                HITKEEP_BYTES_PER_MILLION / (p.compressed as f64 / per_million).max(1.0)
            )
        };
        if let Some(cluster) = &self.clickhouse.cluster {
            // The Distributed `aggregates` has no parts: each shard's are those of
            // `aggregates_local` on its replicas.
            println!(
                "ClickHouse storage (table {LOCAL_AGGREGATES_TABLE} of cluster {cluster}: all shards, one replica each, then \
                 each shard; rollups at minute + hour + day, leaderboards, markers):"
            );
            let sql = parts_sql(LOCAL_AGGREGATES_TABLE);
            let written = self.replica_parts(clickhouse, &sql).await;
            self.show_shards("as written", &written, per_million, &show);
            for (shard, replicas) in self.clickhouse.shards.iter().enumerate() {
                let table = clickhouse.schema().table(LOCAL_AGGREGATES_TABLE);
                let mut result = Err("no replica".to_owned());
                for url in replicas {
                    let optimize = clickhouse.at(url).execute(&format!("OPTIMIZE TABLE {table} FINAL")).await;
                    result = optimize.map_err(|e| e.to_string());
                    if result.is_ok() {
                        break;
                    }
                }
                if let Err(e) = result {
                    println!("  shard {}: OPTIMIZE FINAL failed: {e}", shard + 1);
                }
            }
            let merged = self.replica_parts(clickhouse, &sql).await;
            self.show_shards("after OPTIMIZE FINAL", &merged, per_million, &show);
        } else {
            println!("ClickHouse storage (table aggregates, rollups at minute + hour + day, leaderboards, markers):");
            let sql = parts_sql(AGGREGATES_TABLE);
            let written = clickhouse.fetch::<Parts>(&sql).await?;
            if let Some(p) = written.first() {
                show("as written:", p);
            }
            clickhouse
                .execute(&format!("OPTIMIZE TABLE {} FINAL", clickhouse.schema().table(AGGREGATES_TABLE)))
                .await?;
            let merged = clickhouse.fetch::<Parts>(&sql).await?;
            if let Some(p) = merged.first() {
                show("after OPTIMIZE FINAL:", p);
            }
        }
        if self.kind == BrokerKind::Kafka {
            println!(
                "Kafka topic: the producer compresses batches with lz4 (kafka.properties can change it); Tansu's memory \
                 storage reports no size, so the stored bytes are not measured here"
            );
        } else {
            // A figure beside the measurement: when NATS cannot tell, say so and go on.
            match async { self.nats().await?.stored().await }.await {
                Ok((bytes, messages)) => println!(
                    "NATS stream (the raw events, kept for nats.max_age): {:.1} MB/M events in {messages} messages",
                    bytes as f64 / per_million / 1e6,
                ),
                Err(e) => println!("NATS stream: its size could not be read ({e})"),
            }
        }
        Ok(())
    }

    /// The servers of the cluster (`clickhouse.shards`), each with its process where it runs
    /// on this machine; none on one server.
    fn servers(&self) -> Vec<Server> {
        if self.clickhouse.cluster.is_none() {
            return Vec::new();
        }
        let shards = self.clickhouse.shards.iter().enumerate();
        shards
            .flat_map(|(shard, replicas)| {
                replicas.iter().map(move |url| Server { shard, url: url.clone(), pid: server_pid(url) })
            })
            .collect()
    }

    /// The cluster's part of the report: CPU of each server, rows inserted per shard.
    fn cluster_report(
        &self,
        servers: &[Server],
        cpu: &[Option<f64>],
        before: &[Option<InsertCounters>],
        after: &[Option<InsertCounters>],
        run: Window,
    ) {
        let cluster = self.clickhouse.cluster.as_deref().unwrap_or_default();
        println!(
            "ClickHouse servers of cluster {cluster} over the {:.1} s run (each the clickhouse process listening on its \
             HTTP port):",
            run.seconds
        );
        for (server, cpu) in servers.iter().zip(cpu) {
            let name = format!("shard {} {}", server.shard + 1, host_port(&server.url));
            match (server.pid, cpu) {
                (Some(pid), Some(s)) => println!(
                    "  {name:<32} {s:>7.2} s  {:>5.1} %  {:>8.2} µs/event  (pid {pid})",
                    100.0 * s / run.busy,
                    s * 1e6 / run.events
                ),
                (Some(pid), None) => println!("  {name:<32} (pid {pid} exited during the run)"),
                (None, _) => println!("  {name:<32} (process not found on this machine)"),
            }
        }
        println!(
            "rows inserted per shard over the {:.1} s run (system.events InsertedRows of its replicas: the rows of the \
             inserts each took; parts fetched from another replica do not count):",
            run.seconds
        );
        let (mut all_rows, mut all_duplicates, mut all_cpu, mut complete) = (0u64, 0u64, 0.0, true);
        for shard in 0..self.clickhouse.shards.len() {
            let (mut rows, mut shard_cpu, mut each) = (0u64, 0.0, Vec::new());
            for (i, server) in servers.iter().enumerate().filter(|(_, s)| s.shard == shard) {
                shard_cpu += cpu.get(i).copied().flatten().unwrap_or(0.0);
                match (before.get(i).copied().flatten(), after.get(i).copied().flatten()) {
                    (Some(b), Some(a)) => {
                        let took = a.rows.saturating_sub(b.rows);
                        rows += took;
                        all_duplicates += a.duplicates.saturating_sub(b.duplicates);
                        each.push(format!("{} {took}", host_port(&server.url)));
                    }
                    _ => {
                        complete = false;
                        each.push(format!("{} unreadable", host_port(&server.url)));
                    }
                }
            }
            all_rows += rows;
            all_cpu += shard_cpu;
            println!(
                "  {:<32} {rows:>9} rows  {:>8.0} rows/s  {:>6.3} rows/event  {:>8.2} µs/event of its servers' CPU  ({})",
                format!("shard {}", shard + 1),
                rows as f64 / run.seconds,
                rows as f64 / run.events,
                shard_cpu * 1e6 / run.events,
                each.join(", ")
            );
        }
        println!(
            "  {:<32} {all_rows:>9} rows  {:>8.0} rows/s  {:>6.3} rows/event  {:>8.2} µs/event of all servers' CPU{}",
            "all shards",
            all_rows as f64 / run.seconds,
            all_rows as f64 / run.events,
            all_cpu * 1e6 / run.events,
            if complete { "" } else { " (a replica's counter could not be read)" }
        );
        if all_duplicates > 0 {
            println!(
                "  {all_duplicates} inserted blocks were retries dropped by the replicated deduplication; InsertedRows \
                 counts their rows all the same"
            );
        }
    }

    /// The parts of `sql` (on `aggregates_local`) of every replica of every shard, each
    /// replica first synced with its shard's replication log (`SYSTEM SYNC REPLICA`: it holds
    /// every insert any replica took); `None` where the replica did not answer.
    async fn replica_parts(&self, clickhouse: &ClickHouse, sql: &str) -> Vec<Vec<(String, Option<Parts>)>> {
        let mut shards = Vec::new();
        for replicas in &self.clickhouse.shards {
            let mut each = Vec::new();
            for url in replicas {
                let server = clickhouse.at(url);
                let parts = async {
                    server.sync_replica().await?;
                    server.fetch::<Parts>(sql).await
                };
                each.push((host_port(url), parts.await.ok().and_then(|rows| rows.into_iter().next())));
            }
            shards.push(each);
        }
        shards
    }

    /// The shards' parts together (`show`; each shard's first replica that answered), then
    /// each shard's, and what all replicas hold together.
    fn show_shards(
        &self,
        phase: &str,
        shards: &[Vec<(String, Option<Parts>)>],
        per_million: f64,
        show: &dyn Fn(&str, &Parts),
    ) {
        let (mut total, mut copies, mut servers) = (Parts::default(), Parts::default(), 0);
        let mut lines = Vec::new();
        for (shard, replicas) in shards.iter().enumerate() {
            let label = format!("shard {}", shard + 1);
            match replicas.iter().find_map(|(_, p)| *p) {
                Some(p) => {
                    lines.push(format!(
                        "    {label:<22} {:>9.0} rows/M events, {:>7.2} MB/M compressed ({:.2} MB/M uncompressed), {} \
                         parts",
                        p.rows as f64 / per_million,
                        p.compressed as f64 / per_million / 1e6,
                        p.uncompressed as f64 / per_million / 1e6,
                        p.parts
                    ));
                    total.add(&p);
                }
                None => lines.push(format!("    {label:<22} no replica answered")),
            }
            for p in replicas.iter().filter_map(|(_, p)| p.as_ref()) {
                copies.add(p);
                servers += 1;
            }
            let mut rows: Vec<Option<u64>> = replicas.iter().map(|(_, p)| p.map(|p| p.rows)).collect();
            rows.dedup();
            if rows.len() > 1 {
                let each: Vec<String> = replicas
                    .iter()
                    .map(|(address, p)| match p {
                        Some(p) => format!("{address} {} rows in {} parts", p.rows, p.parts),
                        None => format!("{address} did not answer"),
                    })
                    .collect();
                lines.push(format!("    {:<22} the replicas differ: {}", "", each.join(", ")));
            }
        }
        show(&format!("{phase}:"), &total);
        for line in lines {
            println!("{line}");
        }
        println!(
            "    {:<22} {:>9} {:>7.2} MB/M compressed (each replica holds its shard's copy)",
            format!("all {servers} replicas"),
            "",
            copies.compressed as f64 / per_million / 1e6
        );
    }

    /// `DROP DATABASE … ON CLUSTER`, sent to `clickhouse.url` or, where that does not answer,
    /// the first replica that does. A server that does not run it within 10 s
    /// (`distributed_ddl_task_timeout`) runs it later from the DDL queue.
    async fn drop_on_cluster(&self, cluster: &str) -> Result<(), String> {
        let sql = format!("DROP DATABASE IF EXISTS `{}` ON CLUSTER `{cluster}`", self.database);
        let client = reqwest::Client::new();
        let mut urls = vec![&self.clickhouse.url];
        urls.extend(self.clickhouse.shards.iter().flatten().filter(|url| **url != self.clickhouse.url));
        let mut last = "no server".to_owned();
        for url in urls {
            let mut request = client
                .post(format!("{}/?distributed_ddl_task_timeout=10", url.trim_end_matches('/')))
                .header("X-ClickHouse-User", &self.clickhouse.user)
                .timeout(Duration::from_secs(60))
                .body(sql.clone());
            if let Some(password) = &self.clickhouse.password {
                request = request.header("X-ClickHouse-Key", password.expose());
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => return Ok(()),
                // The server took the statement into the DDL queue: another one would not do better.
                Ok(response) => {
                    let status = response.status();
                    return Err(format!(
                        "{}: {status} {}",
                        host_port(url),
                        response.text().await.unwrap_or_default().trim()
                    ));
                }
                Err(e) => last = format!("{}: {e}", host_port(url)),
            }
        }
        Err(last)
    }

    /// A connection to this run's NATS stream.
    async fn nats(&self) -> Result<NatsBroker, NatsError> {
        NatsBroker::connect(&self.nats, self.partitions, self.ack_timeout).await
    }

    /// Where the topic load goes: the run's input subject (NATS) or topic (Kafka).
    async fn input_publisher(&self) -> Result<Arc<dyn InputPublisher>, PipelineError> {
        Ok(match self.kind {
            BrokerKind::Nats => {
                let subject = self.input.nats_subject.replace('>', "bench");
                Arc::new(NatsInputPublisher::open(&self.nats().await?, &self.nats, &self.input, subject).await?)
            }
            BrokerKind::Kafka => Arc::new(KafkaInputPublisher::open(&self.kafka, self.partitions, &self.input).await?),
        })
    }

    /// The processors' lease bucket of this run (NATS).
    fn lease_bucket(&self) -> String {
        format!("gallop_bench_lease_{}", self.tag)
    }

    /// Every position marker of this run's stream: (partition, value).
    async fn markers(&self, clickhouse: &ClickHouse) -> Result<Vec<(u32, String)>, PipelineError> {
        #[derive(Deserialize)]
        struct Marker {
            value: String,
        }
        let stream = match self.kind {
            BrokerKind::Nats => &self.nats.stream,
            BrokerKind::Kafka => &self.kafka.topic,
        };
        let sql = format!(
            "SELECT value FROM {} WHERE site = '' AND kind = 'position' AND granularity = 'minute' AND dimension = '{stream}'",
            clickhouse.schema().table(AGGREGATES_TABLE)
        );
        let rows: Vec<Marker> = clickhouse.fetch(&sql).await?;
        Ok(rows
            .into_iter()
            .filter_map(|m| gallop_sink::parse_marker(&m.value).map(|(partition, _)| (partition, m.value)))
            .collect())
    }

    async fn clean_up(&self, keep: bool) {
        if keep {
            println!("kept: stream {} / topic {} and database {}", self.nats.stream, self.kafka.topic, self.database);
            return;
        }
        // Clean-up is best effort: what fails to go is named.
        let report = |what: &str, result: Result<(), String>| {
            if let Err(e) = result {
                eprintln!("gallop bench pipeline: could not delete {what}: {e}");
            }
        };
        match self.kind {
            BrokerKind::Kafka => {
                let k = &self.kafka;
                let topics = [&k.topic, &k.salt_topic, &self.input.kafka_topic, &self.input.kafka_dead_topic];
                let topics: Vec<&str> = topics.iter().map(|t| t.as_str()).collect();
                report("the bench's topics", gallop_kafka::delete_topics(k, &topics).await.map_err(|e| e.to_string()));
            }
            BrokerKind::Nats => match self.nats().await {
                Ok(nats) => {
                    let bucket = format!("KV_{}", self.nats.salt_bucket);
                    let leases = format!("KV_{}", self.lease_bucket());
                    let input = &self.input;
                    for stream in [&self.nats.stream, &bucket, &leases, &input.nats_stream, &input.nats_dead_stream] {
                        report(stream, nats.delete_stream(stream).await.map(|_| ()).map_err(|e| e.to_string()));
                    }
                }
                Err(e) => report("the bench's streams", Err(e.to_string())),
            },
        }
        if let Some(cluster) = &self.clickhouse.cluster {
            report(&format!("database {} on cluster {cluster}", self.database), self.drop_on_cluster(cluster).await);
        } else if let Ok(clickhouse) = ClickHouse::connect(&self.clickhouse).await {
            let _ = clickhouse.execute(&format!("DROP DATABASE IF EXISTS `{}`", self.database)).await;
        }
    }
}

/// The events of `synth` as `/v1/events` request bodies (JSON arrays) or input messages
/// (`ndjson`) of `batch` events each.
fn requests(synth: &SynthConfig, batch: usize, ndjson: bool) -> Vec<Request> {
    let mut records = generate(synth);
    let mut requests = Vec::with_capacity(synth.events.div_ceil(batch));
    loop {
        let events: Vec<serde_json::Value> = records.by_ref().take(batch).map(|r| raw_event(&r)).collect();
        if events.is_empty() {
            return requests;
        }
        let i = requests.len();
        // Serializing plain JSON values cannot fail.
        let body = if ndjson {
            events.iter().flat_map(|e| serde_json::to_vec(e).unwrap_or_default().into_iter().chain([b'\n'])).collect()
        } else {
            serde_json::to_vec(&events).unwrap_or_default()
        };
        requests.push(Request {
            body,
            events: events.len() as u64,
            user_agent: USER_AGENTS[i % USER_AGENTS.len()],
            country: COUNTRIES[i % COUNTRIES.len()],
        });
    }
}

/// A synthetic record as a client sends it to `/v1/events`.
fn raw_event(r: &EventRecord) -> serde_json::Value {
    let mut url = format!("https://{}{}", r.host, r.path);
    if !r.utm_source.is_empty() {
        url.push_str(&format!(
            "?utm_source={}&utm_medium={}&utm_campaign={}",
            r.utm_source, r.utm_medium, r.utm_campaign
        ));
    }
    let mut event = serde_json::json!({
        "id": r.id,
        "site": r.site,
        "name": r.name,
        "url": url,
        "timestamp": r.ts,
        "visitor": format!("{:016x}", r.visitor),
    });
    if !r.referrer.is_empty() {
        event["referrer"] = r.referrer.clone().into();
    }
    if !r.props.is_empty() {
        event["props"] = serde_json::json!(r.props);
    }
    if let Some(value) = r.value {
        event["value"] = value.into();
        event["currency"] = r.currency.clone().into();
    }
    event
}

/// Where the load goes.
enum Load {
    /// `POST /v1/events` to the gateway at this address.
    Http(String),
    /// Messages to the input subject or topic.
    Topic(Arc<dyn InputPublisher>),
}

/// Sends every request, `concurrency` at a time (request `i` not before `i · pace` when
/// paced), retrying 503s (HTTP) and failed publishes (topic); records the cumulative
/// accepted events with their time.
async fn send_all(
    load: Load,
    requests: Vec<Request>,
    concurrency: usize,
    pace: Option<Duration>,
    started: Instant,
    accepted: Arc<Mutex<Vec<(f64, u64)>>>,
) -> Result<(), PipelineError> {
    let client = reqwest::Client::new();
    let (url, topic) = match load {
        Load::Http(address) => (format!("http://{address}/v1/events"), None),
        Load::Topic(target) => (String::new(), Some(target)),
    };
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let count = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url, requests, next, count, accepted, topic) = (
            client.clone(),
            url.clone(),
            requests.clone(),
            next.clone(),
            count.clone(),
            accepted.clone(),
            topic.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(request) = requests.get(i) else { return Ok::<(), PipelineError>(()) };
                if let Some(pace) = pace {
                    tokio::time::sleep_until((started + pace * i as u32).into()).await;
                }
                // A refused request is sent again after a wait that grows while refusals go on.
                let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
                while let Some(target) = &topic {
                    match target.send(bytes::Bytes::from(request.body.clone())).await {
                        Ok(()) => break,
                        Err(e) => {
                            eprintln!("publishing to the input failed, retrying: {e}");
                            backoff.wait().await;
                        }
                    }
                }
                while topic.is_none() {
                    let response = client
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .header("User-Agent", request.user_agent)
                        .header("X-Country", request.country)
                        .body(request.body.clone())
                        .send()
                        .await
                        .map_err(failed("sending to the gateway"))?;
                    match response.status().as_u16() {
                        202 => break,
                        503 => backoff.wait().await,
                        status => {
                            let body = response.text().await.unwrap_or_default();
                            return Err(PipelineError::Refused { status, body });
                        }
                    }
                }
                let total = count.fetch_add(request.events, Ordering::Relaxed) + request.events;
                if let Ok(mut a) = accepted.lock() {
                    a.push((started.elapsed().as_secs_f64(), total));
                }
            }
        }));
    }
    for worker in workers {
        worker.await.map_err(failed("a sender task"))??;
    }
    Ok(())
}

/// Events ClickHouse holds (0 while the table does not exist yet).
async fn landed(clickhouse: &ClickHouse, sql: &str) -> u64 {
    #[derive(Deserialize)]
    struct Row {
        n: u64,
    }
    clickhouse.fetch::<Row>(sql).await.ok().and_then(|rows| rows.first().map(|r| r.n)).unwrap_or(0)
}

/// When the gateway had accepted at least `events` (seconds since the start).
fn accepted_at(accepted: &[(f64, u64)], events: u64) -> f64 {
    let i = accepted.partition_point(|&(_, n)| n < events);
    accepted.get(i).or(accepted.last()).map_or(0.0, |a| a.0)
}

/// Rows, parts and bytes of a table's active parts (`system.parts`).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
struct Parts {
    rows: u64,
    parts: u64,
    compressed: u64,
    uncompressed: u64,
}

impl Parts {
    fn add(&mut self, other: &Parts) {
        self.rows += other.rows;
        self.parts += other.parts;
        self.compressed += other.compressed;
        self.uncompressed += other.uncompressed;
    }
}

/// The measured window: events, seconds, CPU-seconds of every measured process.
#[derive(Debug, Clone, Copy)]
struct Window {
    events: f64,
    seconds: f64,
    busy: f64,
}

/// A ClickHouse server of the cluster (`clickhouse.shards`).
struct Server {
    /// Index in `clickhouse.shards` (partition `p` is written to shard `p % shards`).
    shard: usize,
    url: String,
    /// Its process, where it runs on this machine ([`server_pid`]).
    pid: Option<u32>,
}

/// A server's insert counters (`system.events`).
#[derive(Debug, Clone, Copy, Deserialize)]
struct InsertCounters {
    /// `InsertedRows`: rows of the INSERTs this server took. Parts a replica fetches from
    /// another are not counted (checked on 18.16: 12 345 rows inserted on one replica raise
    /// its InsertedRows by 12 345 and leave the other replica's at 0, whose
    /// ReplicatedPartFetches goes up by 1), so the sum over a shard's replicas is the rows
    /// written to the shard once.
    rows: u64,
    /// `DuplicatedInsertedBlocks`: retried blocks the replicated deduplication dropped, whose
    /// rows InsertedRows counts all the same.
    duplicates: u64,
}

/// Each server's insert counters; `None` where it does not answer.
async fn insert_counters(clickhouse: &ClickHouse, servers: &[Server]) -> Vec<Option<InsertCounters>> {
    // system.events lists only the counters above 0 (18.16): a sum of nothing is 0.
    let sql = "SELECT sumIf(value, event = 'InsertedRows') AS rows, \
               sumIf(value, event = 'DuplicatedInsertedBlocks') AS duplicates FROM system.events";
    let mut counters = Vec::new();
    for server in servers {
        let rows = clickhouse.at(&server.url).fetch::<InsertCounters>(sql).await;
        counters.push(rows.ok().and_then(|rows| rows.into_iter().next()));
    }
    counters
}

/// `host:port` of `url` (no scheme, no credentials), for the output.
fn host_port(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}:{}", u.host_str().unwrap_or_default(), u.port_or_known_default().unwrap_or_default()),
        Err(_) => url.rsplit('@').next().unwrap_or(url).to_owned(),
    }
}

/// The process of the ClickHouse server at `url`, where it runs on this machine: the
/// process whose command name starts with `clickhouse` that holds the socket listening on
/// the URL's port at its address (or at the wildcard address).
///
/// The URL is all the bench knows of a server, whatever started it (scripts/cluster.sh,
/// systemd, by hand), so the process is found from it rather than from pid files (the
/// loopback cluster's `$TEST_GALLOP_CLUSTER_DIR/chN/clickhouse.pid`) or command lines
/// (`--config-file=…`), which only one way of starting servers writes. `None` (printed as
/// "process not found on this machine", its CPU left out) where the server runs on another
/// host, behind a proxy or in a container's network namespace (docker-proxy holds the
/// port), or where this user may not read the server's /proc/<pid>/fd.
fn server_pid(url: &str) -> Option<u32> {
    use std::net::{IpAddr, ToSocketAddrs};
    let url = reqwest::Url::parse(url).ok()?;
    let port = url.port_or_known_default()?;
    let host = url.host_str()?.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => (host, port).to_socket_addrs().ok()?.map(|a| a.ip()).collect(),
    };
    // Only an address of this machine (one a socket can be bound to) can be a server here.
    let local: Vec<IpAddr> = addresses
        .into_iter()
        .map(|ip| ip.to_canonical())
        .filter(|ip| ip.is_loopback() || std::net::UdpSocket::bind((*ip, 0)).is_ok())
        .collect();
    if local.is_empty() {
        return None;
    }
    let mut sockets = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(address), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9)) else {
                continue;
            };
            let Some((ip, listening_port)) = address.split_once(':') else { continue };
            // 0A: LISTEN.
            if *state != "0A" || u16::from_str_radix(listening_port, 16).ok() != Some(port) {
                continue;
            }
            if proc_net_ip(ip).is_some_and(|ip| ip.is_unspecified() || local.contains(&ip)) {
                sockets.insert(format!("socket:[{inode}]"));
            }
        }
    }
    if sockets.is_empty() {
        return None;
    }
    std::fs::read_dir("/proc").ok()?.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok()).find(
        |pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("clickhouse"))
                && std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                    fds.filter_map(Result::ok).any(|fd| {
                        std::fs::read_link(fd.path())
                            .is_ok_and(|link| link.to_str().is_some_and(|link| sockets.contains(link)))
                    })
                })
        },
    )
}

/// An address as /proc/net/tcp{,6} writes it: the bytes of the address as 32-bit words in
/// the machine's byte order, each in hex.
fn proc_net_ip(hex: &str) -> Option<std::net::IpAddr> {
    let words: Vec<u32> =
        (0..hex.len() / 8).map(|i| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()).collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    match bytes.len() {
        4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?).to_canonical()),
        _ => None,
    }
}

/// Processes whose CPU time is measured.
struct Pids {
    gateway: u32,
    processors: Vec<u32>,
    broker: Option<u32>,
    clickhouse: Option<u32>,
    /// Each server of the cluster (none on one server), where found on this machine.
    servers: Vec<Option<u32>>,
    this: u32,
}

/// CPU seconds (user + system) of each measured process.
struct Cpu {
    gateway: Option<f64>,
    /// All processors together (those still alive).
    processors: Option<f64>,
    /// Each processor.
    each: Vec<Option<f64>>,
    broker: Option<f64>,
    clickhouse: Option<f64>,
    /// Each server of the cluster.
    servers: Vec<Option<f64>>,
    this: Option<f64>,
}

impl Pids {
    fn cpu(&self, ticks: f64) -> Cpu {
        let of = |pid: Option<u32>| pid.and_then(|p| cpu_seconds(p, ticks));
        Cpu {
            gateway: of(Some(self.gateway)),
            processors: {
                let alive: Vec<f64> = self.processors.iter().filter_map(|&p| cpu_seconds(p, ticks)).collect();
                (!alive.is_empty()).then(|| alive.iter().sum())
            },
            each: self.processors.iter().map(|&p| cpu_seconds(p, ticks)).collect(),
            broker: of(self.broker),
            clickhouse: of(self.clickhouse),
            servers: self.servers.iter().map(|&p| of(p)).collect(),
            this: of(Some(self.this)),
        }
    }
}

/// utime + stime of `pid` and all its threads, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (`state`).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// The oldest process whose command name starts with `comm` (as /proc shows it, at most
/// 15 bytes).
fn find_process(comm: &str) -> Option<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim().starts_with(comm)))
        .collect();
    pids.sort_unstable();
    pids.first().copied()
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 where that fails).
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The value of the sample `name` on the `/metrics` page at `address`.
async fn scrape(address: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{address}/metrics")).await.ok()?.text().await.ok()?;
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A processor SIGKILLed by `--kill-one`.
struct Killed {
    at: Instant,
    partitions: Vec<u32>,
    /// The values of the markers stored before the kill.
    before: std::collections::HashSet<String>,
    /// How long until another processor wrote a row of its partitions.
    taken_over: Option<Duration>,
}

/// The partitions a processor says it owns (`/ready`).
async fn owned(address: &str) -> Option<Vec<u32>> {
    let body = reqwest::get(format!("http://{address}/ready")).await.ok()?.text().await.ok()?;
    let list = body.split("owns partitions [").nth(1)?.split(']').next()?;
    list.split(", ").filter(|p| !p.is_empty()).map(|p| p.parse().ok()).collect()
}

/// Waits (up to a minute) until `processors` own every one of `partitions` once, in shares
/// that differ by at most one; returns the shares.
async fn shared(processors: &[(Child, String)], partitions: u32) -> Result<Vec<Vec<u32>>, PipelineError> {
    let started = Instant::now();
    loop {
        let mut shares = Vec::new();
        for (_, address) in processors {
            shares.push(owned(address).await.unwrap_or_default());
        }
        let mut all: Vec<u32> = shares.iter().flatten().copied().collect();
        all.sort_unstable();
        all.dedup();
        let sizes: Vec<usize> = shares.iter().map(Vec::len).collect();
        let even = sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0) <= 1;
        if all.len() == partitions as usize && sizes.iter().sum::<usize>() == all.len() && even {
            return Ok(shares);
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(PipelineError::Run {
                what: "sharing the partitions".to_owned(),
                reason: format!("not shared fairly within 60 s: {shares:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM, then wait up to 30 s.
async fn terminate(child: &mut Child) -> Result<(), PipelineError> {
    if let Some(pid) = child.id() {
        std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().map_err(failed("kill -TERM"))?;
        tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .map_err(failed("waiting for a child after SIGTERM"))?
            .map_err(failed("waiting for a child after SIGTERM"))?;
    }
    Ok(())
}

/// A child that has already exited (no pid).
fn exited(command: &str) -> PipelineError {
    PipelineError::Child { command: command.to_owned(), reason: "exited at once".to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_endian = "little")]
    fn proc_net_addresses_are_read_in_the_machines_byte_order() {
        assert_eq!(proc_net_ip("0100007F"), Some("127.0.0.1".parse().expect("an address")));
        assert_eq!(proc_net_ip("00000000"), Some("0.0.0.0".parse().expect("an address")));
        assert_eq!(proc_net_ip("00000000000000000000000001000000"), Some("::1".parse().expect("an address")));
        // An IPv4-mapped IPv6 address is the IPv4 one.
        assert_eq!(proc_net_ip("0000000000000000FFFF00000100007F"), Some("127.0.0.1".parse().expect("an address")));
        assert_eq!(proc_net_ip("0100007"), None);
        assert_eq!(proc_net_ip("zz00007F"), None);
    }

    #[test]
    fn addresses_are_shown_without_scheme_or_credentials() {
        assert_eq!(host_port("http://127.0.0.1:18121"), "127.0.0.1:18121");
        assert_eq!(host_port("https://user:secret@ch.example.com/"), "ch.example.com:443");
        assert_eq!(host_port("http://[::1]:8123"), "[::1]:8123");
    }

    #[test]
    fn a_server_elsewhere_or_not_listening_has_no_process_here() {
        // TEST-NET-1: no address of this machine.
        assert_eq!(server_pid("http://192.0.2.1:8123"), None);
        // A port this test holds: listening, but not a clickhouse process.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let port = listener.local_addr().expect("its address").port();
        assert_eq!(server_pid(&format!("http://127.0.0.1:{port}")), None);
    }
}
