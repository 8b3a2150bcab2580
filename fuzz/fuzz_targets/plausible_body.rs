//! Plausible's `POST /api/event` body through `gallop_ingest::BodyChecker` (parsing,
//! validation, enrichment) at a fixed clock: it never panics, and every record it accepts
//! has a non-empty site, name and host, a path starting with '/', a timestamp inside the
//! accepted window, and survives `encode_into` + `decode_message` (and
//! `decode_message_view`) unchanged.
//!
//! Input: first byte below 0x80 picks a realistic User-Agent and the rest is the body;
//! otherwise its low 7 bits are the length of a User-Agent that precedes the body.
#![no_main]

mod common;

use gallop_ingest::BodyFormat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((user_agent, body)) = common::split(data) else {
        return;
    };
    common::check_body(BodyFormat::Plausible, body, &user_agent);
});
