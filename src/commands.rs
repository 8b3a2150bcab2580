//! What each subcommand does; the binary's only logic is wiring adapters together.

use std::sync::Arc;

use anyhow::Context as _;
use gallop_broker::{NatsBroker, Publisher, SaltStore};
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
