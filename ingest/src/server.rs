//! The HTTP front door: routes, request handling and the serve loop.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{ConnectInfo, Extension, State},
    http::HeaderName,
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use bytes::Bytes;
use gallop_broker::{PublishError, Publisher, SaltStore};
use gallop_config::Config;
use gallop_support::ApiKeys;
use tokio::net::TcpListener;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tracing::{info, warn};

use crate::{
    admit::{Admission, Admitted, EventId, VisitorFrom},
    batcher::{Batcher, BrokerWaits},
    client_ip::client_ip,
    error::{ApiError, FieldError, IngestError},
    geo::Geo,
    input::{parse_batch, parse_plausible, Framing, RawEvent},
    metrics::Metrics,
    normalize::{normalize, Rules, Sender},
    privacy::Visitors,
    serve::{read_body as read_bounded, serve, BodyLimits, BytesHeld, ConnectionMetrics, InflightBytes, Shedding},
    state::AppState,
    useragent::UserAgents,
};

/// A ready-to-serve gateway: configuration checked, parsers built, salt fetched,
/// batching tasks running.
#[derive(Clone, Debug)]
pub struct Gateway {
    state: Arc<AppState>,
}

/// Which front door a request came through; they differ in framing and bot rules.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Plausible,
    Batch,
}

impl Route {
    fn path(self) -> &'static str {
        match self {
            Self::Plausible => "/api/event",
            Self::Batch => "/v1/events",
        }
    }
}

impl Gateway {
    /// Builds a gateway publishing through `publisher`, hashing visitors with salts from
    /// `salts`. Must be called inside a Tokio runtime (it starts the batching tasks).
    pub async fn new(
        config: Config,
        publisher: Arc<dyn Publisher>,
        salts: Arc<dyn SaltStore>,
    ) -> Result<Self, IngestError> {
        let metrics = Metrics::new();
        let user_agents = UserAgents::new(
            config.ingest.user_agent_cache,
            config.ingest.user_agent_cache_bytes,
            config.ingest.limits.max_user_agent_bytes,
        )?;
        let geo = Geo::new(&config.ingest)?;
        let visitors = Visitors::new(salts).await?;
        let run_id = format!("{:016x}", rand::random::<u64>());
        let waits = BrokerWaits { ack_timeout: config.ingest.ack_timeout, stall_after: config.ingest.stall_after };
        let batcher =
            Batcher::start(publisher.clone(), config.ingest.batching.clone(), waits, metrics.clone(), run_id.clone());
        let inflight = InflightBytes::new(config.ingest.server.max_inflight_bytes, metrics.inflight_bytes.clone());
        Ok(Self {
            state: Arc::new(AppState {
                inflight,
                event_keys: ApiKeys::new(&config.ingest.auth.event_keys),
                metrics_keys: ApiKeys::new(&config.ingest.auth.metrics_keys),
                config,
                publisher,
                batcher,
                user_agents,
                geo,
                visitors,
                metrics,
                run_id,
                next_id: AtomicU64::new(0),
            }),
        })
    }

    /// Everything the gateway's handlers share.
    pub(crate) fn state(&self) -> &AppState {
        &self.state
    }

    /// The gateway's metrics (to register more collectors on the same `/metrics`).
    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    /// The HTTP routes, with CORS and body limits applied.
    pub fn router(&self) -> Router {
        let ingest = &self.state.config.ingest;
        let origins = if ingest.cors_allowed_origins.iter().any(|o| o == "*") {
            AllowOrigin::from(Any)
        } else {
            AllowOrigin::list(ingest.cors_allowed_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
        };
        let cors = CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::POST, Method::GET, Method::OPTIONS])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION, HeaderName::from_static("x-api-key")])
            .max_age(Duration::from_secs(86_400));
        Router::new()
            .route("/api/event", post(plausible_event))
            .route("/v1/events", post(batch_events))
            .layer(cors)
            .route("/health", get(|| async { "ok" }))
            .route("/ready", get(ready))
            .route("/metrics", get(metrics))
            .with_state(self.state.clone())
    }
}

/// Serves `gateway` on `listener` until `shutdown` resolves; then stops accepting,
/// finishes in-flight requests and publishes (bounded by `ingest.shutdown_timeout`) and
/// returns.
pub async fn run(
    gateway: Gateway,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), IngestError> {
    let state = gateway.state.clone();
    let ingest = &state.config.ingest;
    let signal = async move {
        shutdown.await;
        info!("shutting down: no new connections; finishing in-flight requests");
    };
    let connections = ConnectionMetrics {
        open: state.metrics.connections.clone(),
        refused: state.metrics.connections_refused.clone(),
    };
    serve(gateway.router(), listener, &ingest.server, connections, signal, ingest.shutdown_timeout).await;
    state.batcher.close().await;
    info!("gateway stopped");
    Ok(())
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match state.broker_trouble() {
        None => (StatusCode::OK, "ready").into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}")).into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !state.metrics_keys.allows(&headers) {
        return ApiError::Unauthorized.into_response();
    }
    state.metrics.broker_up.set(i64::from(state.broker_trouble().is_none()));
    state.metrics.user_agent_cache_bytes.set(i64::try_from(state.user_agents.cached_bytes()).unwrap_or(i64::MAX));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

async fn plausible_event(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    shedding: Option<Extension<Shedding>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = std::time::Instant::now();
    let result = async {
        let (body, _held) = read_body(&state, &headers, body, Route::Plausible, shedding.is_some()).await?;
        let events =
            parse_plausible(utf8(&body)?, state.config.ingest.limits.max_domains).map_err(ApiError::Invalid)?;
        accept(&state, events, &headers, peer.ip(), Route::Plausible).await?;
        Ok((StatusCode::ACCEPTED, [(header::CONTENT_TYPE, "text/plain")], "ok").into_response())
    }
    .await;
    respond(&state, Route::Plausible, result, started)
}

async fn batch_events(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    shedding: Option<Extension<Shedding>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = std::time::Instant::now();
    let result = async {
        if !state.event_keys.allows(&headers) {
            return Err(ApiError::Unauthorized);
        }
        let (body, _held) = read_body(&state, &headers, body, Route::Batch, shedding.is_some()).await?;
        let text = utf8(&body)?;
        let framing = match content_type(&headers).as_str() {
            "application/x-ndjson" | "application/jsonl" | "application/x-jsonlines" => Framing::NdJson,
            _ => Framing::Json,
        };
        let events =
            parse_batch(text, framing, state.config.ingest.limits.max_batch_events).map_err(ApiError::Invalid)?;
        let outcome = accept(&state, events, &headers, peer.ip(), Route::Batch).await?;
        let body = serde_json::json!({
            "accepted": outcome.accepted,
            "dropped_bots": outcome.dropped,
            "dropped_duplicates": outcome.duplicates,
        });
        Ok((StatusCode::ACCEPTED, Json(body)).into_response())
    }
    .await;
    respond(&state, Route::Batch, result, started)
}

/// Turns a handler's result into its response and records it in the request metrics.
fn respond(
    state: &AppState,
    route: Route,
    result: Result<Response, ApiError>,
    started: std::time::Instant,
) -> Response {
    let response = result.unwrap_or_else(IntoResponse::into_response);
    let status = response.status();
    state.metrics.requests.with_label_values(&[route.path(), status.as_str()]).inc();
    state.metrics.request_duration.with_label_values(&[route.path()]).observe(started.elapsed().as_secs_f64());
    response
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Checks Content-Type, then reads the body within the server's bounds (size, time,
/// bytes held over all requests); on a connection accepted past `max_connections` answers
/// 503 without reading it. The guard keeps the bytes counted while the request is served.
async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    route: Route,
    shedding: bool,
) -> Result<(Bytes, BytesHeld), ApiError> {
    let ingest = &state.config.ingest;
    if shedding {
        return Err(ApiError::Overloaded {
            reason: format!(
                "the gateway has {} connections open, its limit (ingest.server.max_connections)",
                ingest.server.max_connections
            ),
            retry_after: ingest.retry_after_seconds,
        });
    }
    let got = content_type(headers);
    let supported = match route {
        // Plausible's tracker sends text/plain (to skip CORS preflight) or JSON; curl
        // users often send none.
        Route::Plausible => matches!(got.as_str(), "" | "text/plain" | "application/json"),
        Route::Batch => matches!(
            got.as_str(),
            "application/json" | "application/x-ndjson" | "application/jsonl" | "application/x-jsonlines"
        ),
    };
    if !supported {
        return Err(ApiError::UnsupportedMediaType {
            got,
            expected: match route {
                Route::Plausible => "text/plain or application/json",
                Route::Batch => "application/json or application/x-ndjson",
            },
        });
    }
    let limits = BodyLimits {
        max_body_bytes: ingest.limits.max_body_bytes,
        timeout: ingest.server.body_timeout,
        inflight: &state.inflight,
        retry_after: ingest.retry_after_seconds,
    };
    read_bounded(headers, body, limits).await
}

/// The body as UTF-8 text, or an error pointing at the first bad byte.
fn utf8(body: &[u8]) -> Result<&str, ApiError> {
    std::str::from_utf8(body).map_err(|e| {
        ApiError::Invalid(vec![FieldError::request(
            "body",
            format!("not valid UTF-8 (first bad byte at offset {})", e.valid_up_to()),
        )])
    })
}

struct Outcome {
    accepted: usize,
    dropped: usize,
    duplicates: usize,
}

/// Validates, enriches and publishes `events`; all or nothing.
async fn accept(
    state: &AppState,
    events: Vec<RawEvent>,
    headers: &HeaderMap,
    peer: IpAddr,
    route: Route,
) -> Result<Outcome, ApiError> {
    let config = &state.config;
    let unavailable = |reason: String| ApiError::Unavailable { reason, retry_after: config.ingest.retry_after_seconds };
    if let Some(reason) = state.broker_trouble() {
        return Err(unavailable(reason));
    }
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let dropped = Outcome { accepted: 0, dropped: events.len(), duplicates: 0 };
    if is_prefetch(headers) {
        state.metrics.events_prefetch.inc_by(events.len() as u64);
        return Ok(dropped);
    }
    let ua = state.user_agents.parse(user_agent);
    // Browsers always send a User-Agent; servers posting batches may not.
    let bot = ua.bot && (route == Route::Plausible || !user_agent.trim().is_empty());
    if bot {
        state.metrics.events_bots.inc_by(events.len() as u64);
        return Ok(dropped);
    }
    let ip =
        client_ip(peer, headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()), &config.ingest.trusted_proxies);
    let country = state.geo.country(headers, ip);
    let mut admission = Admission::begin(state, events.len()).await.map_err(|e| {
        warn!(error = %e, "visitor salt unavailable");
        unavailable("visitor salt store unavailable".to_owned())
    })?;
    let sender = Sender { ua: &ua, country: &country, now_ms: admission.now_ms() };
    let rules =
        Rules { limits: &config.ingest.limits, time: &config.time, sites: &config.ingest.sites, url_required: true };

    let mut errors: Vec<FieldError> = Vec::new();
    let total = events.len();
    let mut duplicates = 0;
    for (index, raw) in events.into_iter().enumerate() {
        // `normalize` checks both; they travel apart from the record (the key only as a hash).
        let client_id = raw.id.clone();
        let visitor_key = raw.visitor.clone();
        match normalize(raw, index, &sender, &rules) {
            Ok(record) if errors.is_empty() => {
                let visitor = match &visitor_key {
                    Some(key) => VisitorFrom::Key(key),
                    None => VisitorFrom::Request(ip, user_agent),
                };
                let id = client_id.map_or(EventId::Generated, EventId::Client);
                if admission.admit(record, visitor, id) == Admitted::Duplicate {
                    duplicates += 1;
                }
            }
            Ok(_) => {}
            Err(mut e) => errors.append(&mut e),
        }
    }
    if !errors.is_empty() {
        if route == Route::Plausible {
            // Plausible requests carry one event per site: report without an index.
            errors.iter_mut().for_each(|e| e.index = None);
        }
        state.metrics.events_rejected.with_label_values(&["invalid"]).inc_by(total as u64);
        return Err(ApiError::Invalid(errors));
    }

    let accepted = total - duplicates;
    let results = admission.submit().await;
    if let Some((_, error)) = results.into_iter().find_map(|(partition, result)| Some((partition, result.err()?))) {
        let error = match error {
            PublishError::TooLarge { .. } => ApiError::BodyTooLarge { limit: config.ingest.batching.max_bytes },
            unknown if unknown.may_be_stored() => ApiError::OutcomeUnknown { reason: unknown.to_string() },
            other => unavailable(other.to_string()),
        };
        // The whole request is refused, its repeated ids with it.
        state.metrics.events_rejected.with_label_values(&[error.metric_reason()]).inc_by(total as u64);
        return Err(error);
    }
    state.metrics.events_accepted.inc_by(accepted as u64);
    state.metrics.events_duplicate.inc_by(duplicates as u64);
    Ok(Outcome { accepted, dropped: 0, duplicates })
}

/// Browser prefetch and prerender requests are not visits.
fn is_prefetch(headers: &HeaderMap) -> bool {
    ["purpose", "sec-purpose", "x-purpose", "x-moz"].iter().any(|name| {
        headers.get(*name).and_then(|v| v.to_str().ok()).is_some_and(|v| {
            let v = v.to_ascii_lowercase();
            v.contains("prefetch") || v.contains("prerender") || v.contains("preview")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_headers() {
        let mut headers = HeaderMap::new();
        assert!(!is_prefetch(&headers));
        headers.insert("sec-purpose", HeaderValue::from_static("prefetch;prerender"));
        assert!(is_prefetch(&headers));
    }
}
