//! `gallop publish`: NDJSON events (the public event contract, docs/topics.md) from a file
//! or stdin into the input subject (NATS) or topic (Kafka), for backfills and imports.
//!
//! Lines that are not JSON objects are refused here and reported with their line number;
//! everything else is checked by the gateways that consume the input, which dead-letter
//! what they refuse. Up to 64 messages await the broker's acknowledgement at once.

use std::{io::BufRead, path::PathBuf};

use bytes::Bytes;
use futures::{stream::FuturesUnordered, StreamExt};
use gallop_broker::{InputPublisher, PublishError};
use indicatif::{ProgressBar, ProgressStyle};

use crate::error::CliError;

/// Arguments of `gallop publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// NDJSON file, one event per line ("-" or none: standard input).
    pub file: Option<PathBuf>,
    /// NATS subject to publish to (default: `input.nats_subject` with `*` and `>` replaced
    /// by `import`). On Kafka the records go to `input.kafka_topic`.
    #[arg(long)]
    pub subject: Option<String>,
    /// Records per broker message (at most `input.max_records_per_message`).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PublishSummary {
    /// Records the broker acknowledged.
    pub sent: u64,
    /// Messages the broker acknowledged.
    pub messages: u64,
    /// Bytes of every message handed to the broker, acknowledged or not.
    pub bytes: u64,
    /// Lines refused here (not JSON objects).
    pub rejected: u64,
    /// Records in messages the broker did not acknowledge.
    pub failed: u64,
}

impl PublishSummary {
    /// Ok when every line was published; otherwise what was not.
    pub fn complete(&self) -> Result<(), CliError> {
        match (self.rejected, self.failed) {
            (0, 0) => Ok(()),
            (rejected, failed) => Err(CliError::NotAllPublished { rejected, failed }),
        }
    }
}

/// Most bytes of one message: well below NATS's default `max_payload` (1 MiB).
const MAX_MESSAGE_BYTES: usize = 512 * 1024;
/// Messages awaiting the broker's acknowledgement at once.
const IN_FLIGHT: usize = 64;
/// Rejected lines reported one by one; the rest are only counted.
const REPORTED: u64 = 20;

/// `input.nats_subject` made publishable: wildcard tokens become `import`.
pub fn default_subject(pattern: &str) -> String {
    pattern.split('.').map(|t| if t == "*" || t == ">" { "import" } else { t }).collect::<Vec<_>>().join(".")
}

/// Publishes the lines of `reader` through `target`, `batch` records per message; `total`
/// (the input's size in bytes, when known) sizes the progress bar, drawn when `progress`.
pub async fn publish(
    target: &dyn InputPublisher,
    mut reader: impl BufRead,
    total: Option<u64>,
    batch: usize,
    progress: bool,
) -> Result<PublishSummary, CliError> {
    let bar = match (progress, total) {
        (false, _) => ProgressBar::hidden(),
        (true, Some(bytes)) => ProgressBar::new(bytes).with_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} ({eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        (true, None) => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {bytes} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    let batch = batch.max(1);
    let mut summary = PublishSummary::default();
    let mut in_flight = FuturesUnordered::new();
    let mut message = Vec::new();
    let mut records = 0u64;
    let mut line = String::new();
    let mut number = 0u64;
    loop {
        line.clear();
        let read = reader.read_line(&mut line).map_err(CliError::io("reading the input"))?;
        if read > 0 {
            number += 1;
            bar.inc(read as u64);
            let record = line.trim();
            if record.is_empty() {
                continue;
            }
            if let Err(e) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(record) {
                summary.rejected += 1;
                if summary.rejected <= REPORTED {
                    bar.suspend(|| eprintln!("line {number}: not a JSON object: {e}"));
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
                settle(in_flight.next().await, &mut summary, &bar);
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
        settle(Some(done), &mut summary, &bar);
    }
    bar.finish_and_clear();
    Ok(summary)
}

/// Books one acknowledged (or failed) message.
fn settle(done: Option<(u64, Result<(), PublishError>)>, summary: &mut PublishSummary, bar: &ProgressBar) {
    let Some((records, acked)) = done else { return };
    match acked {
        Ok(()) => {
            summary.sent += records;
            summary.messages += 1;
        }
        Err(e) => {
            summary.failed += records;
            bar.suspend(|| eprintln!("a message of {records} records was not acknowledged: {e}"));
        }
    }
    bar.set_message(format!("{} records sent", summary.sent));
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::future::{BoxFuture, FutureExt};

    use super::*;

    #[test]
    fn wildcards_become_import() {
        for (pattern, subject) in
            [("gallop.in.>", "gallop.in.import"), ("apps.*.events", "apps.import.events"), ("plain", "plain")]
        {
            assert_eq!(default_subject(pattern), subject);
        }
    }

    /// Keeps what it is sent; refuses messages holding `refuse`.
    #[derive(Default)]
    struct Recorder {
        messages: Mutex<Vec<Bytes>>,
        refuse: Option<&'static str>,
    }

    impl InputPublisher for Recorder {
        fn send(&self, payload: Bytes) -> BoxFuture<'static, Result<(), PublishError>> {
            let refused = self.refuse.is_some_and(|r| payload.windows(r.len()).any(|w| w == r.as_bytes()));
            if !refused {
                self.messages.lock().unwrap_or_else(|p| p.into_inner()).push(payload);
            }
            let result = match refused {
                true => Err(PublishError::Rejected { id: "m".into(), reason: "refused".into() }),
                false => Ok(()),
            };
            async move { result }.boxed()
        }

        fn describe(&self) -> String {
            "a recorder".to_owned()
        }
    }

    #[tokio::test]
    async fn lines_are_batched_bad_ones_counted_and_failures_reported() {
        let input = "{\"n\":1}\n\n{\"n\":2}\nnot json\n{\"n\":3}\n[1]\n{\"n\":4,\"x\":\"refuse\"}\n{\"n\":5}";
        let target = Recorder { refuse: Some("refuse"), ..Recorder::default() };
        let summary = publish(&target, input.as_bytes(), None, 2, false).await.expect("publishes");
        let messages: Vec<String> =
            target.messages.lock().expect("lock").iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect();
        assert_eq!(messages, ["{\"n\":1}\n{\"n\":2}\n", "{\"n\":5}\n"]);
        assert_eq!(
            summary,
            // Bytes: 16 + 8 acknowledged, and the refused message's 29 (`{"n":3}` and
            // `{"n":4,"x":"refuse"}`, each with its newline).
            PublishSummary { sent: 3, messages: 2, bytes: 53, rejected: 2, failed: 2 },
            "the refused message held records 3 and 4"
        );
        assert_eq!(
            summary.complete().map_err(|e| e.to_string()),
            Err("2 lines rejected, 2 records not acknowledged by the broker".to_owned())
        );
    }
}
