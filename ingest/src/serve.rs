//! The accept loop and the bounds that keep any client, or many, from exhausting the
//! gateway: a cap on connections, a deadline for each request head (which also ends idle
//! keep-alive connections), a deadline and a shared byte budget for request bodies, and
//! load shedding with `503` + `Retry-After` when a bound is reached.
//!
//! Past `max_connections` a few more connections (an eighth, at least 16) are still
//! accepted, with a one-second head deadline and no keep-alive: their ingestion requests
//! get `503` at once, `/health` and `/ready` are answered as usual, so probes keep working
//! during a flood. Past those the connection is closed as soon as it is accepted, which
//! frees its descriptor at once.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{header, HeaderMap, Request},
    Router,
};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use gallop_config::ServerConfig;
use gallop_support::Backoff;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{IntCounterVec, IntGauge};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tracing::{debug, warn};

use crate::error::ApiError;

/// The first and the longest wait after a failed `accept` (out of descriptors or memory):
/// long enough for connections to end, short enough not to leave clients waiting.
const ACCEPT_RETRY_INITIAL: Duration = Duration::from_millis(50);
const ACCEPT_RETRY_MAX: Duration = Duration::from_secs(1);

/// Head deadline of a connection accepted past `max_connections`.
const SHED_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// Set on requests of a connection accepted past `max_connections`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shedding;

/// What the accept loop counts.
#[derive(Clone)]
pub(crate) struct ConnectionMetrics {
    /// Open connections (served and shed).
    pub(crate) open: IntGauge,
    /// Connections refused or shed, by reason.
    pub(crate) refused: IntCounterVec,
}

/// Serves `router` on `listener` within `config`'s bounds until `shutdown` resolves; then
/// stops accepting and lets open connections finish their requests for up to `grace`.
pub(crate) async fn serve(
    router: Router,
    listener: TcpListener,
    config: &ServerConfig,
    metrics: ConnectionMetrics,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let shed_slots = (config.max_connections / 8).max(16);
    ensure_descriptors(config.max_connections + shed_slots);
    let served = Arc::new(Semaphore::new(config.max_connections));
    let shed = Arc::new(Semaphore::new(shed_slots));
    // One HTTP/1 setup for served connections and one for shed ones, made once.
    let http = |head_timeout: Duration, keep_alive: bool| {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(head_timeout)
            .max_buf_size(config.max_header_bytes.max(8192))
            .keep_alive(keep_alive);
        Arc::new(builder)
    };
    let (served_http, shed_http) = (http(config.header_timeout, true), http(SHED_HEADER_TIMEOUT, false));
    let stopping = CancellationToken::new();
    let mut connections = JoinSet::new();
    let mut accept_backoff = Backoff::new(ACCEPT_RETRY_INITIAL, ACCEPT_RETRY_MAX);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    accept_backoff.reset();
                    accepted
                }
                Err(e) => {
                    // Out of descriptors or memory: wait for connections to end instead of
                    // spinning.
                    warn!(error = %e, "cannot accept a connection");
                    metrics.refused.with_label_values(&["accept_error"]).inc();
                    accept_backoff.wait().await;
                    continue;
                }
            },
        };
        let (permit, shedding) = match served.clone().try_acquire_owned() {
            Ok(permit) => (permit, false),
            Err(_) => match shed.clone().try_acquire_owned() {
                Ok(permit) => {
                    metrics.refused.with_label_values(&["shed"]).inc();
                    (permit, true)
                }
                Err(_) => {
                    metrics.refused.with_label_values(&["closed"]).inc();
                    debug!(%peer, "connection closed at once: ingest.server.max_connections reached");
                    drop(stream);
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let builder = if shedding { shed_http.clone() } else { served_http.clone() };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            if shedding {
                request.extensions_mut().insert(Shedding);
            }
            router.clone().oneshot(request.map(Body::new))
        });
        let open = metrics.open.clone();
        let stopping = stopping.clone();
        connections.spawn(async move {
            open.inc();
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => log_end(peer, result),
                () = stopping.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    log_end(peer, connection.await);
                }
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    stopping.cancel();
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drain).await.is_err() {
        warn!(?grace, "shutdown timeout reached with requests still in flight");
        connections.abort_all();
    }
}

/// Descriptors besides client connections: the broker, listeners, files, the runtime.
const SPARE_DESCRIPTORS: u64 = 256;

/// Raises the soft limit on open files towards the hard one so `connections` fit, and
/// says so loudly when they cannot: past the limit, accepting fails and even `/health`
/// cannot be answered.
fn ensure_descriptors(connections: usize) {
    let wanted = connections as u64 + SPARE_DESCRIPTORS;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(limit) if limit < wanted => warn!(
            limit,
            wanted,
            "the open-file limit is below ingest.server.max_connections plus spare descriptors; lower \
             max_connections or raise the limit (ulimit -n / LimitNOFILE)"
        ),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot read or raise the open-file limit"),
    }
}

fn log_end(peer: SocketAddr, result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        // Timeouts and resets are what bounded clients look like; nothing to act on.
        debug!(%peer, error = %e, "connection ended");
    }
}

/// Request-body bytes held at once over every request in flight.
#[derive(Clone, Debug)]
pub(crate) struct InflightBytes {
    used: Arc<AtomicUsize>,
    max: usize,
    gauge: IntGauge,
}

/// Bytes taken from [`InflightBytes`], given back when dropped.
#[derive(Debug)]
pub(crate) struct BytesHeld {
    bytes: usize,
    owner: InflightBytes,
}

impl Drop for BytesHeld {
    fn drop(&mut self) {
        self.owner.used.fetch_sub(self.bytes, Ordering::AcqRel);
        self.owner.gauge.sub(self.bytes as i64);
    }
}

impl InflightBytes {
    /// A budget of `max` bytes, reported in `gauge`.
    pub(crate) fn new(max: usize, gauge: IntGauge) -> Self {
        Self { used: Arc::new(AtomicUsize::new(0)), max, gauge }
    }

    /// Takes `bytes` more for `held`, or fails when the budget would be exceeded.
    fn take(&self, held: &mut BytesHeld, bytes: usize) -> bool {
        let taken = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            used.checked_add(bytes).filter(|total| *total <= self.max)
        });
        if taken.is_ok() {
            held.bytes += bytes;
            self.gauge.add(bytes as i64);
        }
        taken.is_ok()
    }
}

/// How a body is read.
pub(crate) struct BodyLimits<'a> {
    pub(crate) max_body_bytes: usize,
    pub(crate) timeout: Duration,
    pub(crate) inflight: &'a InflightBytes,
    pub(crate) retry_after: u32,
}

/// Reads `body` whole, within `limits`: 413 past `max_body_bytes` (from `Content-Length`
/// before reading anything, else as soon as it is passed), 408 when it has not arrived
/// within `timeout`, 503 + `Retry-After` when the gateway's byte budget is spent. The bytes
/// stay counted until the returned guard is dropped.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limits: BodyLimits<'_>,
) -> Result<(Bytes, BytesHeld), ApiError> {
    let too_large = || ApiError::BodyTooLarge { limit: limits.max_body_bytes };
    let busy = || ApiError::Overloaded {
        reason: format!(
            "the gateway holds {} bytes of request bodies, its limit (ingest.server.max_inflight_bytes)",
            limits.inflight.max
        ),
        retry_after: limits.retry_after,
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return Err(too_large());
    }
    let mut held = BytesHeld { bytes: 0, owner: limits.inflight.clone() };
    // Reserve a declared length at once, so a thousand slow bodies cannot each take a
    // little and together pass the budget half-read.
    let declared = declared.map_or(0, |n| n as usize);
    if declared > 0 && !limits.inflight.take(&mut held, declared) {
        return Err(busy());
    }
    let read = async {
        // A declared length is already counted in the budget: take it in one allocation
        // rather than doubling towards it (each doubling leaves freed memory behind).
        let mut buffer = BytesMut::with_capacity(if declared > 0 { declared } else { 16 * 1024 });
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::Invalid(vec![crate::error::FieldError::request("body", format!("could not be read: {e}"))])
            })?;
            if buffer.len() + chunk.len() > limits.max_body_bytes {
                return Err(too_large());
            }
            let beyond_declared = (buffer.len() + chunk.len()).saturating_sub(held.bytes);
            if beyond_declared > 0 && !limits.inflight.take(&mut held, beyond_declared) {
                return Err(busy());
            }
            buffer.extend_from_slice(&chunk);
        }
        Ok(buffer.freeze())
    };
    let result = tokio::time::timeout(limits.timeout, read).await;
    match result {
        Ok(Ok(bytes)) => Ok((bytes, held)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::BodyTimeout { limit: limits.timeout }),
    }
}
