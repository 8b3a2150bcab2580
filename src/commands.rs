//! What each subcommand does; the binary's only logic is wiring adapters together.

use std::sync::Arc;

use anyhow::Context as _;
use gallop_broker::{NatsBroker, NatsSource, Publisher, SaltStore};
use gallop_config::{BrokerKind, Config};
use tokio::net::TcpListener;
use tracing::info;

/// `gallop config`: the effective configuration as TOML.
pub(crate) fn print_config(config: &Config) -> anyhow::Result<()> {
    print!("{}", gallop_config::to_toml(config)?);
    Ok(())
}

/// `gallop ingest`: the gateway until SIGTERM or Ctrl-C.
pub(crate) fn ingest(config: Config) -> anyhow::Result<()> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the Tokio runtime")?;
    runtime.block_on(async move {
        let (publisher, salts): (Arc<dyn Publisher>, Arc<dyn SaltStore>) = match config.broker.kind {
            BrokerKind::Nats => {
                let broker =
                    NatsBroker::connect(&config.nats, config.broker.partitions, config.ingest.publish_timeout).await?;
                let salts = broker.salt_store(&config.nats).await?;
                (Arc::new(broker), Arc::new(salts))
            }
        };
        let listener = TcpListener::bind(config.ingest.listen)
            .await
            .with_context(|| format!("binding ingest.listen = {}", config.ingest.listen))?;
        info!(address = %listener.local_addr()?, "gateway listening");
        let gateway = gallop_ingest::Gateway::new(config, publisher, salts).await?;
        gallop_ingest::run(gateway, listener, shutdown_signal()).await?;
        Ok(())
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the Tokio runtime")
}

async fn nats(config: &Config) -> anyhow::Result<NatsBroker> {
    match config.broker.kind {
        BrokerKind::Nats => {
            Ok(NatsBroker::connect(&config.nats, config.broker.partitions, config.ingest.publish_timeout).await?)
        }
    }
}

async fn bind(address: std::net::SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(address).await.with_context(|| format!("binding {key} = {address}"))?;
    info!(address = %listener.local_addr()?, key, "listening");
    Ok(listener)
}

/// `gallop process`: consume the owned partitions into ClickHouse until SIGTERM or Ctrl-C.
pub(crate) fn process(config: Config) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let broker = nats(&config).await?;
        let listener = bind(config.consumer.listen, "consumer.listen").await?;
        run_processor(config, broker, listener, shutdown_signal()).await
    })
}

/// Opens ClickHouse and the source of the owned partitions, then runs the processor.
async fn run_processor(
    config: Config,
    broker: NatsBroker,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let clickhouse = crate::process::open_clickhouse(&config, config.consumer.shutdown_timeout).await?;
    let partitions = crate::process::owned_partitions(&config);
    let source = NatsSource::open(&broker, &partitions, &config.consumer).await?;
    crate::process::run(config, clickhouse, source, broker.stream(), listener, shutdown).await
}

/// `gallop run`: the gateway and the processor in one process, sharing one NATS
/// connection; one signal stops both (the gateway first, so the processor's last flush
/// includes what the gateway accepted).
pub(crate) fn run(config: Config) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let broker = nats(&config).await?;
        let salts = broker.salt_store(&config.nats).await?;
        let ingest_listener = bind(config.ingest.listen, "ingest.listen").await?;
        let process_listener = bind(config.consumer.listen, "consumer.listen").await?;
        let (stop_gateway, gateway_stopped) = tokio::sync::oneshot::channel::<()>();
        let (stop_processor, processor_stopped) = tokio::sync::oneshot::channel::<()>();
        let gateway = gallop_ingest::Gateway::new(config.clone(), Arc::new(broker.clone()), Arc::new(salts)).await?;
        let gateway = tokio::spawn(gallop_ingest::run(gateway, ingest_listener, async move {
            let _ = gateway_stopped.await;
        }));
        let processor = tokio::spawn(run_processor(config, broker, process_listener, async move {
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

/// `gallop migrate`: create or upgrade the ClickHouse schema, then check it.
pub(crate) fn migrate(config: Config) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let clickhouse = gallop_sink::ClickHouse::connect(&config.clickhouse).await?;
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
