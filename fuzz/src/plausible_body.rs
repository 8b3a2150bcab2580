//! Plausible's `POST /api/event` body through `gallop_ingest::BodyChecker` (parsing,
//! validation, enrichment) at a fixed clock: it never panics, and every record it accepts
//! has a non-empty site, name and host, a path starting with '/', a timestamp inside the
//! accepted window, and survives `encode_into` + `decode_message` (and
//! `decode_message_view`) unchanged.
//!
//! Input: first byte below 0x80 picks a realistic User-Agent and the rest is the body;
//! otherwise its low 7 bits are the length of a User-Agent that precedes the body.
use gallop_ingest::BodyFormat;

/// Runs the check on one input; panics on a finding.
pub fn check(data: &[u8]) {
    let Some((user_agent, body)) = crate::body::split(data) else {
        return;
    };
    crate::body::check_body(BodyFormat::Plausible, body, &user_agent);
}
