//! What Gallop's binary encodings share, so that each exists once.
//!
//! - [`write_varint`] / [`read_varint`] (at a cursor): unsigned LEB128 (7 bits a byte, low
//!   group first, high bit = more follows), the integers of the compact event block, the
//!   stored visits and ClickHouse's `VarUInt` alike; [`read_clickhouse_varuint`] is the same
//!   read bounded to ClickHouse's 9 groups (the sketches' states, the lengths of a `String`
//!   column); [`zigzag`] / [`unzigzag`] map signed onto unsigned integers.
//! - [`reuse`]: the rule by which a flush's large buffers (the processor's list of changed
//!   visits, the sink's insert body) are used again by the next flush.
//!
//! No I/O, no dependencies beyond `thiserror`: the event crate, the processor's sketches
//! and the sink all build on it.
#![warn(missing_docs)]

mod reuse;
mod varint;

pub use reuse::reuse;
pub use varint::{
    read_clickhouse_varuint, read_varint, unzigzag, write_varint, zigzag, VarintError, CLICKHOUSE_VARUINT_MAX,
};
