//! The listener: connections, line framing, pipelining, answers in order.
//!
//! A connection reads whatever the client has sent, cuts it into lines, and answers every
//! line in order. The `record` lines of one read go to the gateway together (one
//! [`Gateway::accept_foreign`] call, so they share broker messages), and the next read is
//! taken while earlier ones still wait for the broker, up to `traqq.max_pipelined` lines.
//! A line longer than `traqq.max_line_bytes`, one that is not JSON or not a command, or an
//! event that breaks a rule gets `{"success":false,"error":…}` and the connection goes on.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::{stream::FuturesOrdered, StreamExt};
use gallop_config::{ClickHouseConfig, TraqqConfig};
use gallop_ingest::{ForeignEvent, Gateway, ListenerMetrics};
use gallop_support::Backoff;
use prometheus::{IntCounterVec, IntGauge};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    answer::Answers,
    event::read_event,
    protocol::{parse_command, Command, Response},
};

/// Everything connections share.
struct Shared {
    gateway: Gateway,
    answers: Answers,
    config: TraqqConfig,
    metrics: TraqqMetrics,
    connections: AtomicUsize,
}

/// The listener's metrics, on the gateway's `/metrics` page.
#[derive(Clone)]
struct TraqqMetrics {
    connections: IntGauge,
    commands: IntCounterVec,
}

impl TraqqMetrics {
    /// The gateway's metrics of its traqq listener (shared by a second listener).
    fn register(gateway: &Gateway) -> Self {
        let ListenerMetrics { connections, commands } = gateway.metrics().listener("traqq");
        Self { connections, commands }
    }

    fn count(&self, command: &str, response: &Response) {
        let outcome = if response.success { "ok" } else { "error" };
        self.commands.with_label_values(&[command, outcome]).inc();
    }
}

/// Serves traqq's protocol on `listener` until `shutdown` resolves: records go through
/// `gateway`, queries are answered from the ClickHouse of `clickhouse` (connected at the
/// first query; while it is down queries get an error and records go on). At shutdown it
/// stops accepting, and each connection stops reading, answers what it has read and closes.
pub async fn run(
    listener: TcpListener,
    gateway: Gateway,
    clickhouse: ClickHouseConfig,
    config: TraqqConfig,
    shutdown: impl Future<Output = ()>,
) {
    let metrics = TraqqMetrics::register(&gateway);
    let shared = Arc::new(Shared {
        answers: Answers::new(clickhouse, &config),
        gateway,
        config,
        metrics,
        connections: AtomicUsize::new(0),
    });
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    // After a failed accept (out of descriptors): wait for connections to end, not spin.
    let mut accept_backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    accept_backoff.reset();
                    let shared = shared.clone();
                    let stop = stop.clone();
                    tasks.spawn(async move {
                        if let Err(e) = connection(stream, &shared, stop).await {
                            debug!(%peer, error = %e, "traqq connection ended");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "accepting a traqq connection failed");
                    accept_backoff.wait().await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    info!("traqq listener stopped");
}

/// Serves one connection until the client closes it or `stop`.
async fn connection(mut stream: TcpStream, shared: &Shared, stop: CancellationToken) -> std::io::Result<()> {
    let config = &shared.config;
    if shared.connections.fetch_add(1, Ordering::AcqRel) >= config.max_connections {
        shared.connections.fetch_sub(1, Ordering::AcqRel);
        let mut out = Vec::new();
        let refusal = Response::err(format!(
            "too many connections: {} are open (traqq.max_connections); retry later",
            config.max_connections
        ));
        shared.metrics.count("connect", &refusal);
        refusal.write_line(&mut out);
        stream.write_all(&out).await?;
        return stream.shutdown().await;
    }
    shared.metrics.connections.inc();
    let result = serve_lines(&mut stream, shared, stop).await;
    shared.metrics.connections.dec();
    shared.connections.fetch_sub(1, Ordering::AcqRel);
    result
}

/// The read/answer loop of one connection.
async fn serve_lines(stream: &mut TcpStream, shared: &Shared, stop: CancellationToken) -> std::io::Result<()> {
    let config = &shared.config;
    let (mut read, mut write) = stream.split();
    let mut framer = Framer::new(config.max_line_bytes);
    let mut pending = FuturesOrdered::new();
    let mut pending_lines = 0usize;
    let mut out = Vec::new();
    let mut reading = true;
    let idle = tokio::time::sleep(config.idle_timeout);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            biased;
            Some(responses) = pending.next(), if !pending.is_empty() => {
                let responses: Vec<(&'static str, Response)> = responses;
                pending_lines -= responses.len();
                out.clear();
                for (command, response) in &responses {
                    shared.metrics.count(command, response);
                    response.write_line(&mut out);
                }
                write.write_all(&out).await?;
                // Idle means nothing sent and nothing to answer: count from the last answer too.
                idle.as_mut().reset(tokio::time::Instant::now() + config.idle_timeout);
            }
            () = stop.cancelled(), if reading => reading = false,
            () = &mut idle, if reading && pending.is_empty() => {
                debug!(timeout = ?config.idle_timeout, "closing an idle traqq connection (traqq.idle_timeout)");
                reading = false;
            }
            read_bytes = read.read_buf(framer.buffer()), if reading && pending_lines < config.max_pipelined => {
                idle.as_mut().reset(tokio::time::Instant::now() + config.idle_timeout);
                if read_bytes? == 0 {
                    reading = false;
                    framer.finish();
                }
                let lines = framer.lines();
                if !lines.is_empty() {
                    pending_lines += lines.len();
                    pending.push_back(answer_lines(shared, lines));
                }
            }
            else => break,
        }
        if !reading && pending.is_empty() {
            break;
        }
    }
    write.flush().await
}

/// One line read off a connection.
#[derive(Debug, PartialEq)]
enum Line {
    /// A line's bytes (newline and surrounding whitespace removed).
    Text(Vec<u8>),
    /// A line longer than the limit (skipped up to its newline).
    TooLong,
}

/// Cuts the bytes of a connection into lines, skipping blank ones (as traqq does) and
/// over-long ones (answered with an error, once, as soon as they pass the limit).
struct Framer {
    buffer: Vec<u8>,
    max_line: usize,
    /// Inside an over-long line: drop bytes up to the next newline.
    skipping: bool,
    /// The peer closed: what is left is the last line.
    finished: bool,
}

impl Framer {
    fn new(max_line: usize) -> Self {
        Self { buffer: Vec::with_capacity(64 * 1024), max_line, skipping: false, finished: false }
    }

    /// Where the next read goes (room is made for it).
    fn buffer(&mut self) -> &mut Vec<u8> {
        self.buffer.reserve(64 * 1024);
        &mut self.buffer
    }

    fn finish(&mut self) {
        self.finished = true;
    }

    /// The complete lines received so far.
    fn lines(&mut self) -> Vec<Line> {
        let mut lines = Vec::new();
        let mut start = 0;
        while let Some(newline) = self.buffer[start..].iter().position(|&b| b == b'\n') {
            let end = start + newline;
            self.take(start, end, &mut lines);
            start = end + 1;
        }
        if self.finished && start < self.buffer.len() {
            let end = self.buffer.len();
            self.take(start, end, &mut lines);
            start = end;
        }
        self.buffer.drain(..start);
        if self.buffer.len() > self.max_line {
            if !self.skipping {
                lines.push(Line::TooLong);
            }
            self.skipping = true;
            self.buffer.clear();
        }
        lines
    }

    fn take(&mut self, start: usize, end: usize, lines: &mut Vec<Line>) {
        if std::mem::take(&mut self.skipping) {
            return;
        }
        let line = self.buffer[start..end].trim_ascii();
        if line.len() > self.max_line {
            lines.push(Line::TooLong);
        } else if !line.is_empty() {
            lines.push(Line::Text(line.to_vec()));
        }
    }
}

/// What a line asks for, once read.
enum Work {
    Done(&'static str, Response),
    /// The index of its event among the read's records.
    Record(usize),
    Query(Command),
}

/// Answers `lines` in order: records together through the gateway, queries one by one.
async fn answer_lines(shared: &Shared, lines: Vec<Line>) -> Vec<(&'static str, Response)> {
    let config = &shared.config;
    let mut records: Vec<ForeignEvent> = Vec::new();
    let work: Vec<Work> = lines
        .into_iter()
        .map(|line| match line {
            Line::TooLong => Work::Done(
                "invalid",
                Response::err(format!(
                    "invalid command: line longer than {} bytes (traqq.max_line_bytes); skipped",
                    config.max_line_bytes
                )),
            ),
            Line::Text(text) => match parse_command(&text) {
                Err(error) => Work::Done("invalid", Response::err(error)),
                Ok(Command::Record { event }) => match read_event(&event, &config.mapping) {
                    Ok(foreign) => {
                        records.push(foreign);
                        Work::Record(records.len() - 1)
                    }
                    Err(error) => Work::Done("record", Response::err(error)),
                },
                Ok(query) => Work::Query(query),
            },
        })
        .collect();
    let stored =
        if records.is_empty() { Vec::new() } else { shared.gateway.accept_foreign(&config.site, records).await };
    let mut responses = Vec::with_capacity(work.len());
    for item in work {
        responses.push(match item {
            Work::Done(command, response) => (command, response),
            Work::Record(index) => match stored.get(index) {
                Some(Ok(())) => ("record", Response::ok_empty()),
                Some(Err(e)) => ("record", Response::err(e.to_string())),
                None => ("record", Response::err("not stored: the gateway gave no outcome; retry later")),
            },
            Work::Query(command) => query(&shared.answers, command).await,
        });
    }
    responses
}

/// Answers a query command.
async fn query(answers: &Answers, command: Command) -> (&'static str, Response) {
    let (name, answer) = match command {
        Command::Query { min, max } => ("query", answers.query(min, max).await),
        Command::QueryDays { days } => ("query_days", answers.query_days(days).await),
        Command::Find { min, max, metric_type, key, add_key, merge } => {
            ("find", answers.find(min, max, &metric_type, &key, add_key.as_deref(), merge).await)
        }
        Command::Record { .. } => ("record", Err("a record is not a query".to_owned())),
    };
    (name, answer.map_or_else(Response::err, Response::ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Line {
        Line::Text(s.as_bytes().to_vec())
    }

    #[test]
    fn frames_lines_and_skips_long_ones_once() {
        let mut framer = Framer::new(8);
        framer.buffer().extend_from_slice(b"a\r\n\n  \nbb");
        assert_eq!(framer.lines(), vec![text("a")]);
        framer.buffer().extend_from_slice(b"b\n0123456789");
        assert_eq!(framer.lines(), vec![text("bbb"), Line::TooLong]);
        framer.buffer().extend_from_slice(b"more of it");
        assert_eq!(framer.lines(), vec![], "the same long line is told once");
        framer.buffer().extend_from_slice(b"end\nc\n0123456789\nd");
        assert_eq!(framer.lines(), vec![text("c"), Line::TooLong]);
        framer.finish();
        assert_eq!(framer.lines(), vec![text("d")]);
    }
}
