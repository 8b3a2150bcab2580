//! The event contract between Gallop's gateway and its processors.
//!
//! A broker message is either UTF-8 NDJSON, one [`EventRecord`] per line, each carrying its
//! format version (`"v":1`; empty fields are left out, a reader fills them back with their
//! defaults), or a compact block ([`encode_block`]: a versioned binary header, each
//! distinct string of the message once, the records as small integers). Readers tell the
//! two apart by the first bytes ([`MessageFormat::of`]) and read both. This crate has no I/O and no broker
//! knowledge, so the processor core can depend on it and stay pure.
#![warn(missing_docs)]

mod block;
mod fields;
mod message;
mod record;
mod view;

pub use block::{
    block_size_bound, decode_block, encode_block, BlockError, BlockEvent, BlockWriter, MessageFormat,
    BLOCK_HEADER_BOUND, BLOCK_MAGIC, BLOCK_VERSION,
};
pub use fields::EventFields;
pub use message::{decode_message, decode_records, encode_into, DecodeError, MessageError};
pub use record::{EventRecord, Props, Uniques, ENGAGEMENT, FORMAT_VERSION};
pub use view::{decode_message_view, EventView, ViewProps, ViewUniques};
