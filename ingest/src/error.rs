//! Errors the HTTP API answers with: a status code and a JSON body naming every problem.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Serialize;

/// One problem with the request or with one of its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Index of the event in the request; absent for request-level problems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// The field at fault (`url`, `props.plan`, `body`, `Content-Type`…).
    pub field: String,
    /// What is wrong and, for limits, which limit and its config key.
    pub reason: String,
}

impl FieldError {
    /// A problem with a field of a whole request.
    pub fn request(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { index: None, field: field.into(), reason: reason.into() }
    }

    /// A problem with a field of event `index`.
    pub fn event(index: usize, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { index: Some(index), field: field.into(), reason: reason.into() }
    }
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400: one or more events or request fields are invalid; nothing was published.
    Invalid(Vec<FieldError>),
    /// 413: the body is larger than `ingest.limits.max_body_bytes`.
    BodyTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// 415: the Content-Type is not one the route reads.
    UnsupportedMediaType {
        /// The Content-Type received (empty when absent).
        got: String,
        /// The types the route reads.
        expected: &'static str,
    },
    /// 503: the broker is down, refused the events or could not be reached in time;
    /// nothing of the request was stored and the client should retry after the given
    /// seconds.
    Unavailable {
        /// Why.
        reason: String,
        /// Seconds for `Retry-After`.
        retry_after: u32,
    },
    /// 503: a bound of the gateway itself is reached (connections, request bytes in
    /// flight); the request was not read and the client should retry after the seconds.
    Overloaded {
        /// Which bound, naming its config key.
        reason: String,
        /// Seconds for `Retry-After`.
        retry_after: u32,
    },
    /// 408: the body did not arrive within `ingest.server.body_timeout`.
    BodyTimeout {
        /// The configured limit.
        limit: std::time::Duration,
    },
    /// 504: the events were sent to the broker but no acknowledgement came within
    /// `ingest.ack_timeout`: they may or may not be stored. A retry with the same event
    /// ids is stored once; a retry without ids may count them twice.
    OutcomeUnknown {
        /// Why.
        reason: String,
    },
    /// 401: the route needs an API key (`ingest.auth`) and none, or a wrong one, came.
    Unauthorized,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    errors: &'a [FieldError],
}

impl ApiError {
    /// The status code this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unavailable { .. } | Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::OutcomeUnknown { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
        }
    }

    /// The label used for `gallop_events_rejected_total{reason}`.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::UnsupportedMediaType { .. } => "unsupported_media_type",
            Self::Unavailable { .. } => "broker_unavailable",
            Self::Overloaded { .. } => "overloaded",
            Self::BodyTimeout { .. } => "body_timeout",
            Self::OutcomeUnknown { .. } => "outcome_unknown",
            Self::Unauthorized => "unauthorized",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (summary, errors, retry_after) = match self {
            Self::Invalid(errors) => ("invalid request", errors, None),
            Self::BodyTooLarge { limit } => (
                "request body too large",
                vec![FieldError::request(
                    "body",
                    format!("larger than {limit} bytes (limit: ingest.limits.max_body_bytes)"),
                )],
                None,
            ),
            Self::UnsupportedMediaType { got, expected } => (
                "unsupported Content-Type",
                vec![FieldError::request(
                    "Content-Type",
                    if got.is_empty() {
                        format!("missing; expected {expected}")
                    } else {
                        format!("{got:?} is not supported; expected {expected}")
                    },
                )],
                None,
            ),
            Self::Unavailable { reason, retry_after } => {
                ("service unavailable", vec![FieldError::request("broker", reason)], Some(retry_after))
            }
            Self::Overloaded { reason, retry_after } => {
                ("service unavailable", vec![FieldError::request("server", reason)], Some(retry_after))
            }
            Self::BodyTimeout { limit } => (
                "request timeout",
                vec![FieldError::request(
                    "body",
                    format!("not received within {} (ingest.server.body_timeout)", humantime::format_duration(limit)),
                )],
                None,
            ),
            Self::OutcomeUnknown { reason } => (
                "outcome unknown",
                vec![FieldError::request(
                    "broker",
                    format!(
                        "{reason}; the events may or may not be stored: retrying with the same event ids stores \
                         them once, retrying without ids may count them twice"
                    ),
                )],
                None,
            ),
            Self::Unauthorized => (
                "unauthorized",
                vec![FieldError::request(
                    "Authorization",
                    "this route needs an API key: send `Authorization: Bearer <key>` or `X-Api-Key: <key>`",
                )],
                None,
            ),
        };
        let body = serde_json::to_vec(&Body { error: summary, errors: &errors }).unwrap_or_default();
        let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Failure to build the gateway at start.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The bundled User-Agent rules could not be compiled.
    #[error("User-Agent rules: {0}")]
    UserAgentRules(String),
    /// The GeoIP database could not be opened.
    #[error("GeoIP database {path}: {reason}")]
    GeoIp {
        /// Path from `ingest.geoip_database`.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The visitor salt could not be obtained at start.
    #[error("visitor salt: {0}")]
    Salt(#[from] gallop_broker::SaltError),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Serve(#[from] std::io::Error),
}
