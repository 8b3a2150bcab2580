//! `gallop publish`: NDJSON events (the public event contract, docs/topics.md) from a file
//! or stdin to the input subject (NATS) or topic (Kafka) of the configured broker, for
//! backfills and imports.
//! Lines that are not JSON objects are rejected here and reported with their line number;
//! everything else is checked by the gateways that consume the input, which dead-letter
//! what they refuse.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    sync::Arc,
};

use anyhow::Context as _;
use bytes::Bytes;
use futures::{stream::FuturesUnordered, StreamExt};
use gallop_broker::{KafkaInputPublisher, NatsBroker, NatsInput};
use gallop_config::{BrokerKind, Config};
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `gallop publish`.
#[derive(Debug, clap::Args)]
pub(crate) struct PublishArgs {
    /// NDJSON file, one event per line ("-" or none: standard input).
    file: Option<PathBuf>,
    /// NATS subject to publish to (default: `input.nats_subject` with `*` and `>` replaced
    /// by `import`). On Kafka the records go to `input.kafka_topic`.
    #[arg(long)]
    subject: Option<String>,
    /// Records per broker message (at most `input.max_records_per_message`).
    #[arg(long, default_value_t = 500)]
    batch: usize,
}

/// What a run did, printed at its end.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Summary {
    sent: u64,
    messages: u64,
    bytes: u64,
    rejected: u64,
    failed: u64,
}

/// Most bytes of one message: well below NATS's default `max_payload` (1 MiB).
const MAX_MESSAGE_BYTES: usize = 512 * 1024;
/// Messages awaiting the broker's acknowledgement at once.
const IN_FLIGHT: usize = 64;
/// Rejected lines reported one by one; the rest are only counted.
const REPORTED: u64 = 20;

pub(crate) fn run(config: &Config, args: &PublishArgs) -> anyhow::Result<()> {
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
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting Tokio")?;
    let (target, summary) = runtime.block_on(async {
        let target = Target::open(config, args).await?;
        let summary = publish(&target, BufReader::new(reader), total, batch).await?;
        anyhow::Ok((target, summary))
    })?;
    eprintln!(
        "gallop publish: sent {} records in {} messages ({} bytes) to {}; rejected locally {}; failed {}",
        summary.sent,
        summary.messages,
        summary.bytes,
        target.describe(),
        summary.rejected,
        summary.failed
    );
    anyhow::ensure!(
        summary.rejected == 0 && summary.failed == 0,
        "{} lines rejected, {} records not acknowledged by the broker",
        summary.rejected,
        summary.failed
    );
    Ok(())
}

/// `input.nats_subject` made publishable: wildcard tokens become `import`.
fn default_subject(pattern: &str) -> String {
    pattern.split('.').map(|t| if t == "*" || t == ">" { "import" } else { t }).collect::<Vec<_>>().join(".")
}

/// Where the records go: the input subject (NATS) or topic (Kafka) of the configured broker.
pub(crate) enum Target {
    Nats(Arc<async_nats::jetstream::Context>, String),
    Kafka(KafkaInputPublisher),
}

impl Target {
    /// Connects and makes the input (and dead-letter) stream or topic exist.
    async fn open(config: &Config, args: &PublishArgs) -> anyhow::Result<Self> {
        Self::open_for(config, args.subject.clone()).await
    }

    /// The input of `config`'s broker; `subject` overrides the NATS subject.
    pub(crate) async fn open_for(config: &Config, subject: Option<String>) -> anyhow::Result<Self> {
        Ok(match config.broker.kind {
            BrokerKind::Nats => {
                let broker =
                    NatsBroker::connect(&config.nats, config.broker.partitions, config.ingest.ack_timeout).await?;
                NatsInput::create_streams(&broker, &config.nats, &config.input).await?;
                let subject = subject.unwrap_or_else(|| default_subject(&config.input.nats_subject));
                Self::Nats(Arc::new(broker.jetstream().clone()), subject)
            }
            BrokerKind::Kafka => {
                anyhow::ensure!(subject.is_none(), "--subject is for NATS; on Kafka the topic is input.kafka_topic");
                Self::Kafka(KafkaInputPublisher::open(&config.kafka, config.broker.partitions, &config.input).await?)
            }
        })
    }

    /// Publishes one message and waits for the broker's acknowledgement.
    pub(crate) fn send(&self, payload: Bytes) -> futures::future::BoxFuture<'static, Result<(), String>> {
        use futures::FutureExt as _;
        match self {
            Self::Nats(jetstream, subject) => {
                let (jetstream, subject) = (Arc::clone(jetstream), subject.clone());
                async move {
                    match jetstream.publish(subject, payload).await {
                        Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
                .boxed()
            }
            Self::Kafka(publisher) => publisher.send(payload),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Nats(_, subject) => format!("NATS subject {subject}"),
            Self::Kafka(publisher) => format!("Kafka topic {}", publisher.topic()),
        }
    }
}

async fn publish(
    target: &Target,
    mut reader: impl BufRead,
    total: Option<u64>,
    batch: usize,
) -> anyhow::Result<Summary> {
    let progress = match total {
        Some(bytes) => ProgressBar::new(bytes).with_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} ({eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {bytes} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    let mut summary = Summary::default();
    let mut in_flight = FuturesUnordered::new();
    let mut message = Vec::new();
    let mut records = 0u64;
    let mut line = String::new();
    let mut number = 0u64;
    loop {
        line.clear();
        let read = reader.read_line(&mut line).context("reading the input")?;
        if read > 0 {
            number += 1;
            progress.inc(read as u64);
            let record = line.trim();
            if record.is_empty() {
                continue;
            }
            if let Err(e) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(record) {
                summary.rejected += 1;
                if summary.rejected <= REPORTED {
                    progress.suspend(|| eprintln!("line {number}: not a JSON object: {e}"));
                }
                continue;
            }
        }
        let full = records as usize >= batch || message.len() + line.len() > MAX_MESSAGE_BYTES;
        if (read == 0 || full) && records > 0 {
            let payload = Bytes::from(std::mem::take(&mut message));
            summary.bytes += payload.len() as u64;
            let (sent, n) = (target.send(payload), records);
            in_flight.push(async move { (n, sent.await) });
            records = 0;
            while in_flight.len() >= IN_FLIGHT {
                settle(in_flight.next().await, &mut summary, &progress);
            }
        }
        if read == 0 {
            break;
        }
        message.extend_from_slice(line.trim_end().as_bytes());
        message.push(b'\n');
        records += 1;
    }
    while let Some(done) = in_flight.next().await {
        settle(Some(done), &mut summary, &progress);
    }
    progress.finish_and_clear();
    Ok(summary)
}

/// Books one acknowledged (or failed) message.
fn settle(done: Option<(u64, Result<(), String>)>, summary: &mut Summary, progress: &ProgressBar) {
    let Some((records, acked)) = done else { return };
    match acked {
        Ok(()) => {
            summary.sent += records;
            summary.messages += 1;
        }
        Err(e) => {
            summary.failed += records;
            progress.suspend(|| eprintln!("a message of {records} records was not acknowledged: {e}"));
        }
    }
    progress.set_message(format!("{} records sent", summary.sent));
}

#[cfg(test)]
mod tests {
    use super::default_subject;

    #[test]
    fn wildcards_become_import() {
        for (pattern, subject) in
            [("gallop.in.>", "gallop.in.import"), ("apps.*.events", "apps.import.events"), ("plain", "plain")]
        {
            assert_eq!(default_subject(pattern), subject);
        }
    }
}
