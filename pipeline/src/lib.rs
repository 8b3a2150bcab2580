//! Gallop's processing runtime: the consume → fold → write → acknowledge loop that makes
//! `gallop process` exactly once in effect.
//!
//! [`run`] takes deliveries from a broker [`Source`](gallop_broker::Source), folds them into
//! the pure [`Processor`](gallop_processor::Processor), hands each flush to a [`Store`]
//! together with the position [`Mark`]s it accounts for (one atomic write), and
//! acknowledges only what a landed write holds. It knows no broker and no database: NATS,
//! Kafka and the in-process broker are sources (their adapters implement
//! [`Source`](gallop_broker::Source)); ClickHouse (`gallop_sink::ClickHouseStore`) and
//! [`MemoryStore`] are stores (they implement [`Store`]). The rules it keeps:
//!
//! - positions stored with the rows are read back at start; a delivery at or below what was
//!   already folded in (stored, or in memory) is a redelivery and is skipped;
//! - an acknowledgement is sent only after the write holding its message landed;
//! - a gap in deliveries resumes the partition after the last position folded in;
//! - a stored position outside the log's range (messages removed unprocessed, or the log
//!   recreated) stops the processor unless `consumer.accept_log_gaps` says otherwise
//!   ([`LogGap`]);
//! - where the broker does not drop republished message ids (Kafka), a window of ids per
//!   partition does, rebuilt after a restart from the messages before the stored position.
#![warn(missing_docs)]

mod dedup;
mod folds;
mod log_range;
mod mark;
mod metrics;
mod runtime;
mod status;
mod store;

pub use log_range::{GapKind, LogGap};
pub use mark::{Claim, Mark};
pub use metrics::ProcessMetrics;
pub use runtime::{run, Ownership, RunError, RunOptions};
pub use status::{status_router, Health, OwnershipStatus};
pub use store::{Cell, Flush, MemoryStore, MemoryStoreFaults, Store, WriteFence, WriteReport};
