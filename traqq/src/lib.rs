//! traqq's clients on Gallop, without a code change: traqq 0.2.0's TCP protocol
//! (newline-delimited JSON commands `record`, `query`, `query_days`, `find`), served by the
//! gateway process.
//!
//! `record` takes the gateway's own path ([`gallop_ingest::Gateway::accept_foreign`]):
//! the same limits, site allow-list and salted hashing (traqq's `bmp` fields never reach the
//! broker raw), answered only once the broker acknowledged. Queries are answered from
//! ClickHouse in traqq's response shapes. traqq's mapping lives in `[traqq.mapping]`
//! ([`gallop_config::TraqqMapping`]); [`convert`] turns a traqq configuration into it plus
//! the processor rules it needs (`gallop traqq-config`). [`run`] serves a listener until a
//! shutdown future resolves, mini-redis style.
#![warn(missing_docs)]

mod answer;
mod convert;
mod event;
mod protocol;
mod server;

pub use convert::{convert, ConvertError};
pub use protocol::Response;
pub use server::run;
