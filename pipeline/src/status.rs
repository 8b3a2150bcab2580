//! The processor's HTTP endpoint: `/health`, `/ready`, `/metrics`.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex,
};

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};
use gallop_support::ApiKeys;

use crate::metrics::ProcessMetrics;

/// Whether the runtime's broker and store work right now; the runtime keeps it current.
#[derive(Debug)]
pub struct Health {
    broker: AtomicBool,
    store: AtomicBool,
    /// What this processor owns, for `/ready` (set where partitions are shared).
    ownership: Mutex<Option<OwnershipStatus>>,
}

/// What `/ready` says about the partitions a processor shares with others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnershipStatus {
    /// This processor's name.
    pub member: String,
    /// The partitions it runs.
    pub owned: Vec<u32>,
    /// Processors seen alive (`None`: the broker does not tell).
    pub members: Option<u32>,
    /// Partitions no live processor holds (`None`: the broker does not tell).
    pub unowned: Option<u32>,
    /// What keeps the membership from working (the lease store unreachable).
    pub trouble: Option<String>,
}

impl Default for Health {
    fn default() -> Self {
        Self { broker: AtomicBool::new(true), store: AtomicBool::new(true), ownership: Mutex::new(None) }
    }
}

impl Health {
    /// `Ok` with what the processor owns when everything works, else what does not.
    pub fn ready(&self) -> Result<String, String> {
        let ownership = self.ownership.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !self.store.load(Ordering::Relaxed) {
            Err("ClickHouse inserts are failing".to_owned())
        } else if !self.broker.load(Ordering::Relaxed) {
            Err("broker not connected".to_owned())
        } else if let Some(trouble) = ownership.as_ref().and_then(|o| o.trouble.clone()) {
            Err(trouble)
        } else {
            Ok(ownership.map_or_else(String::new, |o| {
                let owned: Vec<String> = o.owned.iter().map(u32::to_string).collect();
                let count = |n: Option<u32>| n.map_or_else(|| "unknown".to_owned(), |n| n.to_string());
                format!(
                    "member {} owns partitions [{}] ({} members; {} partitions unowned)",
                    o.member,
                    owned.join(", "),
                    count(o.members),
                    count(o.unowned)
                )
            }))
        }
    }

    /// Records what this processor owns, for `/ready`.
    pub fn set_ownership(&self, status: OwnershipStatus) {
        *self.ownership.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
    }

    pub(crate) fn set(&self, broker: bool, store: bool) {
        self.broker.store(broker, Ordering::Relaxed);
        self.store.store(store, Ordering::Relaxed);
    }
}

struct Status {
    metrics: ProcessMetrics,
    health: Arc<Health>,
    metrics_keys: ApiKeys,
}

/// Routes `/health` (always `ok`), `/ready` (`503` with the reason while `health` says
/// no) and `/metrics` (`401` without one of `metrics_keys`, when there are any).
pub fn status_router(metrics: ProcessMetrics, health: Arc<Health>, metrics_keys: ApiKeys) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(readiness))
        .route("/metrics", get(render))
        .with_state(Arc::new(Status { metrics, health, metrics_keys }))
}

async fn readiness(State(status): State<Arc<Status>>) -> axum::response::Response {
    match status.health.ready() {
        Ok(owned) if owned.is_empty() => (StatusCode::OK, "ready".to_owned()).into_response(),
        Ok(owned) => (StatusCode::OK, format!("ready: {owned}")).into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}")).into_response(),
    }
}

async fn render(State(status): State<Arc<Status>>, headers: HeaderMap) -> axum::response::Response {
    if !status.metrics_keys.allows(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "an API key is needed (ingest.auth.metrics_keys)",
        )
            .into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], status.metrics.render()).into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt as _;

    use super::*;

    async fn status_of(router: &Router, headers: &[(&str, &str)]) -> StatusCode {
        let mut request = axum::http::Request::get("/metrics");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Body::empty()).expect("request");
        router.clone().oneshot(request).await.expect("infallible").status()
    }

    #[tokio::test]
    async fn metrics_need_a_configured_key_when_there_are_keys() {
        let open = status_router(ProcessMetrics::new(), Arc::default(), ApiKeys::new(&[]));
        assert_eq!(status_of(&open, &[]).await, StatusCode::OK);
        let keys = ApiKeys::new(&[gallop_support::hash_key("scraper-key-0123456789")]);
        let locked = status_router(ProcessMetrics::new(), Arc::default(), keys);
        assert_eq!(status_of(&locked, &[]).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status_of(&locked, &[("authorization", "Bearer nope")]).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status_of(&locked, &[("authorization", "Bearer scraper-key-0123456789")]).await, StatusCode::OK);
        assert_eq!(status_of(&locked, &[("x-api-key", "scraper-key-0123456789")]).await, StatusCode::OK);
    }
}
