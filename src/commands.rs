//! What each subcommand does; the binary's only logic is wiring adapters together.

use std::{
    future::Future,
    io::{BufReader, IsTerminal as _, Read},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use futures::future::FutureExt as _;
use gallop_broker::{InputPublisher, Publisher, SaltStore, StaticMembership};
use gallop_config::{BrokerKind, Config};
use gallop_kafka::{KafkaBroker, KafkaDeadLetters, KafkaGroup, KafkaInput, KafkaInputPublisher, KafkaSource};
use gallop_nats::{NatsBroker, NatsDeadLetters, NatsInput, NatsInputPublisher, NatsLeases, NatsSource};
use gallop_sink::{ClickHouse, Reader};
use tokio::net::TcpListener;
use tracing::info;

/// `gallop config`: the effective configuration as TOML.
pub(crate) fn print_config(config: &Config) -> anyhow::Result<()> {
    print!("{}", gallop_config::to_toml(config)?);
    Ok(())
}

/// GETs `url` and succeeds on a 2xx answer within 2 s.
pub(crate) fn probe(url: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting Tokio")?;
    runtime.block_on(async {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().context("HTTP client")?;
        let response = client.get(url).send().await.with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        anyhow::ensure!(status.is_success(), "GET {url}: {status} {}", body.trim());
        Ok(())
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the Tokio runtime")
}

/// The publishing side of the configured broker (one per process, so the size difference
/// of the variants does not matter).
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
enum Broker {
    Nats(NatsBroker),
    Kafka(KafkaBroker),
}

impl Broker {
    /// Connects, creating or updating the stream or topic.
    async fn connect(config: &Config) -> anyhow::Result<Self> {
        let partitions = config.broker.partitions;
        Ok(match config.broker.kind {
            // A NATS publish waits for its acknowledgement up to ack_timeout; a Kafka one is
            // bounded by publish_timeout (librdkafka's message.timeout.ms is derived from it).
            BrokerKind::Nats => {
                Self::Nats(NatsBroker::connect(&config.nats, partitions, config.ingest.ack_timeout).await?)
            }
            BrokerKind::Kafka => {
                Self::Kafka(KafkaBroker::connect(&config.kafka, partitions, config.ingest.publish_timeout).await?)
            }
        })
    }

    fn publisher(&self) -> Arc<dyn Publisher> {
        match self {
            Self::Nats(broker) => Arc::new(broker.clone()),
            Self::Kafka(broker) => Arc::new(broker.clone()),
        }
    }

    /// The salt store every gateway of the deployment shares, on the same broker.
    async fn salts(&self, config: &Config) -> anyhow::Result<Arc<dyn SaltStore>> {
        Ok(match self {
            Self::Nats(broker) => Arc::new(broker.salt_store(&config.nats).await?),
            Self::Kafka(broker) => Arc::new(broker.salt_store().await?),
        })
    }
}

/// The input subject or topic of the configured broker, opened (`input.enabled`); one per
/// process, so the size difference of the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Input {
    Nats(NatsInput, NatsDeadLetters),
    Kafka(KafkaInput, KafkaDeadLetters),
}

impl Input {
    /// Opens the configured broker's input and dead letters, creating what is missing.
    async fn open(broker: &Broker, config: &Config) -> anyhow::Result<Self> {
        match broker {
            Broker::Nats(nats) => {
                let (input, dead) = NatsInput::open(nats, &config.nats, &config.input).await?;
                Ok(Self::Nats(input, dead))
            }
            Broker::Kafka(_) => {
                let (input, dead) = KafkaInput::open(&config.kafka, config.broker.partitions, &config.input).await?;
                Ok(Self::Kafka(input, dead))
            }
        }
    }

    /// Consumes it into `gateway` until `shutdown` resolves.
    async fn run(self, gateway: gallop_ingest::Gateway, shutdown: impl Future<Output = ()>) {
        match self {
            Self::Nats(input, dead) => gallop_ingest::run_input(gateway, input, Arc::new(dead), shutdown).await,
            Self::Kafka(input, dead) => gallop_ingest::run_input(gateway, input, Arc::new(dead), shutdown).await,
        }
    }
}

/// Serves `gateway` on `listener` and, with `input.enabled`, consumes the input subject or
/// topic into it, and with `traqq.enabled` serves traqq's protocol, until `shutdown`
/// resolves: then the traqq listener and topic ingestion stop taking work and finish what
/// they hold (their events still need the gateway's batcher), and only then does HTTP stop.
async fn serve_gateway(
    config: &Config,
    broker: &Broker,
    gateway: gallop_ingest::Gateway,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let when_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let (stop_input, input_stopped) = tokio::sync::watch::channel(false);
    let (stop_http, http_stopped) = tokio::sync::watch::channel(false);
    let (stop_traqq, traqq_stopped) = tokio::sync::watch::channel(false);
    let input = match config.input.enabled {
        true => {
            Some(tokio::spawn(Input::open(broker, config).await?.run(gateway.clone(), when_stopped(input_stopped))))
        }
        false => None,
    };
    let stop_input = async move {
        let _ = stop_input.send(true);
        match input {
            Some(input) => input.await.context("topic ingestion task panicked"),
            None => Ok(()),
        }
    };
    let traqq = match config.traqq.enabled {
        true => {
            let traqq_listener = bind(config.traqq.listen, "traqq.listen").await?;
            // Queries are answered from ClickHouse (connected when first asked); records
            // need only the broker.
            Some(tokio::spawn(gallop_traqq::run(
                traqq_listener,
                gateway.clone(),
                config.clickhouse.clone(),
                config.traqq.clone(),
                when_stopped(traqq_stopped),
            )))
        }
        false => None,
    };
    let stop_input = async move {
        let _ = stop_traqq.send(true);
        if let Some(traqq) = traqq {
            traqq.await.context("traqq listener task panicked")?;
        }
        stop_input.await
    };
    let http = gallop_ingest::run(gateway, listener, when_stopped(http_stopped));
    tokio::pin!(http);
    tokio::select! {
        result = &mut http => {
            stop_input.await?;
            Ok(result?)
        }
        () = shutdown => {
            stop_input.await?;
            let _ = stop_http.send(true);
            Ok(http.await?)
        }
    }
}

async fn bind(address: std::net::SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(address).await.with_context(|| format!("binding {key} = {address}"))?;
    info!(address = %listener.local_addr()?, key, "listening");
    Ok(listener)
}

/// `gallop traqq-config`: a traqq configuration (JSON file, or stdin for `-` or none) as
/// Gallop TOML on stdout.
pub(crate) fn traqq_config(file: Option<&std::path::Path>, site: &str, listen: &str) -> anyhow::Result<()> {
    let json = match file {
        Some(path) if path != std::path::Path::new("-") => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        _ => std::io::read_to_string(std::io::stdin()).context("reading stdin")?,
    };
    print!("{}", gallop_traqq::convert(&json, site, listen)?);
    Ok(())
}

/// `gallop ingest`: the gateway until SIGTERM or Ctrl-C.
pub(crate) fn ingest(config: Config) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let broker = Broker::connect(&config).await?;
        let salts = broker.salts(&config).await?;
        let listener = TcpListener::bind(config.ingest.listen)
            .await
            .with_context(|| format!("binding ingest.listen = {}", config.ingest.listen))?;
        info!(address = %listener.local_addr()?, broker = config.broker.kind.name(), "gateway listening");
        let gateway = gallop_ingest::Gateway::new(config.clone(), broker.publisher(), salts).await?;
        serve_gateway(&config, &broker, gateway, listener, shutdown_signal()).await
    })
}

/// `gallop process`: consume the owned partitions into ClickHouse until SIGTERM or Ctrl-C.
pub(crate) fn process(config: Config) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let listener = bind(config.consumer.listen, "consumer.listen").await?;
        let nats = match config.broker.kind {
            BrokerKind::Nats => {
                Some(NatsBroker::connect(&config.nats, config.broker.partitions, config.ingest.publish_timeout).await?)
            }
            BrokerKind::Kafka => None,
        };
        run_processor(config, nats, listener, shutdown_signal()).await
    })
}

/// Opens ClickHouse and the source of the owned partitions (on `nats`' connection when the
/// broker is NATS), then runs the processor.
async fn run_processor(
    config: Config,
    nats: Option<NatsBroker>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let clickhouse = crate::process::open_clickhouse(&config, config.consumer.shutdown_timeout).await?;
    let pinned = crate::process::pinned_partitions(&config);
    let member = crate::process::member_name(&config);
    let total = config.broker.partitions;
    match (config.broker.kind, nats) {
        (BrokerKind::Nats, Some(broker)) => {
            let leases = NatsLeases::join(
                broker.jetstream(),
                &config.nats.lease_bucket,
                broker.stream(),
                config.consumer.lease_ttl,
                total,
                &member,
                pinned,
            )
            .await?;
            let consumer = config.consumer.clone();
            let stream = broker.stream().to_owned();
            let open = move |partitions: Vec<u32>| {
                let (broker, consumer) = (broker.clone(), consumer.clone());
                async move { Ok(NatsSource::open(&broker, &partitions, &consumer).await?) }.boxed()
            };
            crate::process::run(config, clickhouse, Arc::new(leases), open, &stream, listener, shutdown).await
        }
        (BrokerKind::Nats, None) => anyhow::bail!("broker.kind = \"nats\" needs a NATS connection"),
        (BrokerKind::Kafka, _) => {
            let topic = config.kafka.topic.clone();
            let kafka = config.kafka.clone();
            let open = move |partitions: Vec<u32>| {
                let kafka = kafka.clone();
                async move { Ok(KafkaSource::open(&kafka, total, &partitions).await?) }.boxed()
            };
            match pinned {
                Some(pinned) => {
                    let membership = Arc::new(StaticMembership::new(&member, &pinned));
                    crate::process::run(config, clickhouse, membership, open, &topic, listener, shutdown).await
                }
                None => {
                    let group = Arc::new(
                        KafkaGroup::join(
                            &config.kafka,
                            total,
                            &member,
                            config.consumer.lease_ttl,
                            config.consumer.shutdown_timeout,
                        )
                        .await?,
                    );
                    let (kafka, member_of) = (config.kafka.clone(), Arc::clone(&group));
                    let open = move |partitions: Vec<u32>| {
                        let (kafka, group) = (kafka.clone(), Arc::clone(&member_of));
                        async move { Ok(KafkaSource::open(&kafka, total, &partitions).await?.commit_through(&group)) }
                            .boxed()
                    };
                    crate::process::run(config, clickhouse, group, open, &topic, listener, shutdown).await
                }
            }
        }
    }
}

/// `gallop run`: the gateway and the processor in one process (sharing one connection on
/// NATS); one signal stops both (the gateway first, so the processor's last flush includes
/// what the gateway accepted).
pub(crate) fn run(config: Config) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let broker = Broker::connect(&config).await?;
        let salts = broker.salts(&config).await?;
        let ingest_listener = bind(config.ingest.listen, "ingest.listen").await?;
        let process_listener = bind(config.consumer.listen, "consumer.listen").await?;
        let (stop_gateway, gateway_stopped) = tokio::sync::oneshot::channel::<()>();
        let (stop_processor, processor_stopped) = tokio::sync::oneshot::channel::<()>();
        let gateway = gallop_ingest::Gateway::new(config.clone(), broker.publisher(), salts).await?;
        let gateway = {
            let (config, broker) = (config.clone(), broker.clone());
            tokio::spawn(async move {
                serve_gateway(&config, &broker, gateway, ingest_listener, async move {
                    let _ = gateway_stopped.await;
                })
                .await
            })
        };
        let nats = match &broker {
            Broker::Nats(nats) => Some(nats.clone()),
            Broker::Kafka(_) => None,
        };
        let processor = tokio::spawn(run_processor(config, nats, process_listener, async move {
            let _ = processor_stopped.await;
        }));
        tokio::pin!(processor);
        tokio::select! {
            () = shutdown_signal() => {}
            result = &mut processor => {
                let _ = stop_gateway.send(());
                let _ = gateway.await;
                return result.context("processor task panicked")?;
            }
        }
        let _ = stop_gateway.send(());
        gateway.await.context("gateway task panicked")??;
        let _ = stop_processor.send(());
        processor.await.context("processor task panicked")?
    })
}

/// `gallop query`: the answer on stdout.
pub(crate) fn query(config: &Config, args: &gallop_cli::QueryArgs) -> anyhow::Result<()> {
    args.check()?;
    current_thread()?.block_on(async {
        let reader = Reader::new(ClickHouse::connect(&config.clickhouse).await?);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        Ok(gallop_cli::query(config, &reader, args, now, &mut std::io::stdout().lock()).await?)
    })
}

/// `gallop export`: rows to stdout or files, a progress bar when stderr is a terminal.
pub(crate) fn export(config: &Config, args: &gallop_cli::ExportArgs) -> anyhow::Result<()> {
    args.check()?;
    current_thread()?.block_on(async {
        let reader = Reader::new(ClickHouse::connect(&config.clickhouse).await?);
        let progress = std::io::stderr().is_terminal();
        gallop_cli::export(&reader, args, &mut std::io::stdout().lock(), progress).await?;
        Ok(())
    })
}

/// `gallop publish`: the file (or stdin) to the configured broker's input subject or topic.
pub(crate) fn publish(config: &Config, args: &gallop_cli::PublishArgs) -> anyhow::Result<()> {
    let batch = args.batch.clamp(1, config.input.max_records_per_message.max(1));
    let (reader, total): (Box<dyn Read>, Option<u64>) = match args.file.as_deref() {
        None => (Box::new(std::io::stdin()), None),
        Some(path) if path.as_os_str() == "-" => (Box::new(std::io::stdin()), None),
        Some(path) => {
            let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let size = file.metadata().map(|m| m.len()).ok();
            (Box::new(file), size)
        }
    };
    runtime()?.block_on(async {
        let target: Box<dyn InputPublisher> = match config.broker.kind {
            BrokerKind::Nats => {
                let broker =
                    NatsBroker::connect(&config.nats, config.broker.partitions, config.ingest.ack_timeout).await?;
                let subject =
                    args.subject.clone().unwrap_or_else(|| gallop_cli::default_subject(&config.input.nats_subject));
                Box::new(NatsInputPublisher::open(&broker, &config.nats, &config.input, subject).await?)
            }
            BrokerKind::Kafka => {
                anyhow::ensure!(
                    args.subject.is_none(),
                    "--subject is for NATS; on Kafka the topic is input.kafka_topic"
                );
                Box::new(KafkaInputPublisher::open(&config.kafka, config.broker.partitions, &config.input).await?)
            }
        };
        let progress = std::io::stderr().is_terminal();
        let summary = gallop_cli::publish(target.as_ref(), BufReader::new(reader), total, batch, progress).await?;
        eprintln!(
            "gallop publish: sent {} records in {} messages ({} bytes) to {}; rejected locally {}; failed {}",
            summary.sent,
            summary.messages,
            summary.bytes,
            target.describe(),
            summary.rejected,
            summary.failed
        );
        Ok(summary.complete()?)
    })
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the Tokio runtime")
}

/// `gallop migrate`: create or upgrade the ClickHouse schema, then check it.
pub(crate) fn migrate(config: Config) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let clickhouse = ClickHouse::connect(&config.clickhouse).await?;
        let report = clickhouse.migrate().await?;
        clickhouse.check_schema().await?;
        println!(
            "ClickHouse {} at {}: database {} at schema version {} (was {}; applied {:?})",
            report.server,
            clickhouse.url(),
            clickhouse.schema().database(),
            report.to,
            report.from,
            report.applied
        );
        Ok(())
    })
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("Ctrl-C received"),
        () = term => info!("SIGTERM received"),
    }
}

/// `gallop hash-key`: the `sha256:…` form of the key on stdin's first line.
pub(crate) fn hash_key() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading the key from stdin")?;
    let key = line.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(key.len() >= 16, "an API key should have at least 16 characters (got {})", key.len());
    println!("{}", gallop_support::hash_key(key));
    Ok(())
}
