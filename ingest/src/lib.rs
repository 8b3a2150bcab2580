//! Gallop's ingest gateway.
//!
//! Requests come in over HTTP (`POST /api/event` in Plausible's format, `POST /v1/events`
//! in Gallop's batch format), are validated against configured limits, enriched (URL,
//! UTM, referrer source, browser/OS/device, country) and made anonymous (a daily-salted
//! visitor hash replaces IP and User-Agent), then micro-batched into broker messages. A
//! request is answered `202` only after the broker acknowledged all of its events.
//!
//! [`Gateway::new`] builds everything from config plus a [`gallop_broker::Publisher`] and a
//! [`gallop_broker::SaltStore`]; [`run`] serves it on a listener until a shutdown future
//! resolves, mini-redis style, so tests and binaries choose the I/O. [`run_input`] does
//! the same for events applications publish to the input subject or topic (topic.rs);
//! [`Gateway::accept_foreign`] takes events of other protocols (traqq's) down the same path.
#![warn(missing_docs)]

mod admit;
mod batcher;
mod check;
mod client_ip;
mod error;
mod foreign;
mod geo;
mod input;
mod metrics;
mod normalize;
mod outbound;
mod privacy;
mod referrer;
mod serve;
mod server;
mod state;
mod text;
mod topic;
mod useragent;
mod weburl;

pub use check::{BodyChecker, BodyFormat};
pub use error::{ApiError, FieldError, IngestError};
pub use foreign::{ForeignError, ForeignEvent};
pub use metrics::{ListenerMetrics, Metrics};
pub use server::{run, Gateway};
pub use topic::{run_input, InputOutcome};
