//! The error type of the benchmarks.

use std::fmt;

/// A benchmark could not run to the end.
#[derive(Debug)]
pub enum BenchError {
    /// traqq refused a configuration or an event (traqq reports errors as strings).
    Traqq(String),
    /// An event could not be turned into the JSON value traqq takes.
    Json(serde_json::Error),
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Traqq(message) => write!(f, "traqq: {message}"),
            Self::Json(err) => write!(f, "building traqq's JSON input: {err}"),
        }
    }
}

impl std::error::Error for BenchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Traqq(_) => None,
            Self::Json(err) => Some(err),
        }
    }
}

impl From<serde_json::Error> for BenchError {
    fn from(err: serde_json::Error) -> Self {
        Self::Json(err)
    }
}
