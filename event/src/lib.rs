//! The event contract between Gallop's gateway and its processors.
//!
//! A broker message is UTF-8 NDJSON: one [`EventRecord`] per line, each carrying its format
//! version (`"v":1`). Empty fields are left out of the JSON to keep messages small; a
//! reader fills them back with their defaults. This crate has no I/O and no broker
//! knowledge, so the processor core can depend on it and stay pure.
#![warn(missing_docs)]

mod block;
mod message;
mod record;
mod view;

pub use block::{decode_block, encode_block, BlockError, BlockEvent, MessageFormat, BLOCK_MAGIC, BLOCK_VERSION};
pub use message::{decode_message, encode_into, DecodeError};
pub use record::{EventRecord, Props, Uniques, ENGAGEMENT, FORMAT_VERSION};
pub use view::{decode_message_view, EventFields, EventView, ViewProps, ViewUniques};
