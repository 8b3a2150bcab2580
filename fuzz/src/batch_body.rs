//! Gallop's `POST /v1/events` body, as `application/json` (object or array) or
//! `application/x-ndjson`, through `gallop_ingest::BodyChecker` at a fixed clock: it never
//! panics, and every record it accepts has a non-empty site, name and host, a path starting
//! with '/', a timestamp inside the accepted window, and survives `encode_into` +
//! `decode_message` (and `decode_message_view`) unchanged.
//!
//! Input: first byte's low bit picks the framing (0: JSON, 1: NDJSON); the rest is split
//! into User-Agent and body as in `plausible_body`.
use gallop_ingest::BodyFormat;

/// Runs the check on one input; panics on a finding.
pub fn check(data: &[u8]) {
    let Some((&framing, rest)) = data.split_first() else {
        return;
    };
    let format = if framing & 1 == 0 { BodyFormat::Json } else { BodyFormat::NdJson };
    let Some((user_agent, body)) = crate::body::split(rest) else {
        return;
    };
    crate::body::check_body(format, body, &user_agent);
}
