//! The events bound for one broker message, in the configured encoding
//! (`ingest.batching.format`): NDJSON lines written as events are taken, or records kept
//! until the message closes and then written as one compact block (each distinct string
//! once per message, `gallop_event::encode_block`).
//!
//! Sizes are known before encoding: exact for NDJSON; for a block, the encoder's upper
//! bound (`gallop_event::block_size_bound`), so a message never exceeds
//! `batching.max_bytes` once encoded.

use gallop_config::MessageEncoding;
use gallop_event::{block_size_bound, encode_block_from, encode_into, EventRecord, BLOCK_HEADER_BOUND};

/// Events for one message (or one request's part of one), encoded or to be encoded.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// NDJSON, one line per event.
    Ndjson {
        /// The lines.
        bytes: Vec<u8>,
        /// Their count.
        events: u32,
    },
    /// Records to be written as one block, as the requests handed them over (moving whole
    /// lists, never single records: a record is some 600 bytes).
    Records {
        /// The records, in lists.
        records: Vec<Vec<EventRecord>>,
        /// The most bytes they take as a block, header included.
        bound: usize,
    },
}

impl Outbound {
    /// An empty body in `encoding`.
    pub(crate) fn new(encoding: MessageEncoding) -> Self {
        match encoding {
            MessageEncoding::Ndjson => Self::Ndjson { bytes: Vec::new(), events: 0 },
            MessageEncoding::Block => Self::Records { records: Vec::new(), bound: BLOCK_HEADER_BOUND },
        }
    }

    /// Adds `record`.
    pub(crate) fn push(&mut self, record: EventRecord) {
        match self {
            Self::Ndjson { bytes, events } => {
                encode_into(&record, bytes);
                *events += 1;
            }
            Self::Records { records, bound } => {
                *bound += block_size_bound(&record);
                match records.last_mut() {
                    Some(list) => list.push(record),
                    None => records.push(vec![record]),
                }
            }
        }
    }

    /// Events held.
    pub(crate) fn events(&self) -> u32 {
        match self {
            Self::Ndjson { events, .. } => *events,
            Self::Records { records, .. } => {
                u32::try_from(records.iter().map(Vec::len).sum::<usize>()).unwrap_or(u32::MAX)
            }
        }
    }

    /// Bytes of the encoded message (NDJSON) or the most it can take (block).
    pub(crate) fn size(&self) -> usize {
        match self {
            Self::Ndjson { bytes, .. } => bytes.len(),
            Self::Records { bound, .. } => *bound,
        }
    }

    /// The size of `self` and `other` as one message.
    pub(crate) fn size_with(&self, other: &Self) -> usize {
        match other {
            Self::Ndjson { bytes, .. } => self.size() + bytes.len(),
            // One header for both.
            Self::Records { bound, .. } => self.size() + bound - BLOCK_HEADER_BOUND,
        }
    }

    /// Moves `other`'s events after `self`'s (bodies of one gateway share its encoding).
    pub(crate) fn append(&mut self, other: Self) {
        match (self, other) {
            (Self::Ndjson { bytes, events }, Self::Ndjson { bytes: more, events: n }) => {
                if bytes.is_empty() {
                    *bytes = more;
                } else {
                    bytes.extend_from_slice(&more);
                }
                *events += n;
            }
            (Self::Records { records, bound }, Self::Records { records: more, bound: more_bound }) => {
                records.extend(more);
                *bound += more_bound - BLOCK_HEADER_BOUND;
            }
            (this, other) => {
                // Both encodings in one gateway cannot happen (one config); should it, the
                // events go as NDJSON, which every processor reads.
                let (mut bytes, mut events) =
                    std::mem::replace(this, Self::Ndjson { bytes: Vec::new(), events: 0 }).into_ndjson();
                let (more, n) = other.into_ndjson();
                bytes.extend_from_slice(&more);
                events += n;
                *this = Self::Ndjson { bytes, events };
            }
        }
    }

    /// The body cut into bodies of at most `max_bytes` each (an event larger than that alone
    /// stays whole, for the broker to refuse).
    pub(crate) fn split(self, max_bytes: usize) -> Vec<Self> {
        if self.size() <= max_bytes {
            return vec![self];
        }
        match self {
            Self::Ndjson { bytes, .. } => {
                let mut chunks = Vec::new();
                let (mut current, mut lines) = (Vec::new(), 0);
                for line in bytes.split_inclusive(|b| *b == b'\n') {
                    if !current.is_empty() && current.len() + line.len() > max_bytes {
                        chunks.push(Self::Ndjson { bytes: std::mem::take(&mut current), events: lines });
                        lines = 0;
                    }
                    current.extend_from_slice(line);
                    lines += 1;
                }
                if !current.is_empty() {
                    chunks.push(Self::Ndjson { bytes: current, events: lines });
                }
                chunks
            }
            Self::Records { records, .. } => {
                let mut chunks: Vec<Self> = Vec::new();
                let mut current = Self::Records { records: Vec::new(), bound: BLOCK_HEADER_BOUND };
                for record in records.into_iter().flatten() {
                    if current.events() > 0 && current.size() + block_size_bound(&record) > max_bytes {
                        chunks.push(std::mem::replace(
                            &mut current,
                            Self::Records { records: Vec::new(), bound: BLOCK_HEADER_BOUND },
                        ));
                    }
                    current.push(record);
                }
                if current.events() > 0 {
                    chunks.push(current);
                }
                chunks
            }
        }
    }

    /// The message bytes.
    pub(crate) fn into_payload(self) -> Vec<u8> {
        match self {
            Self::Ndjson { bytes, .. } => bytes,
            Self::Records { records, .. } => {
                let mut out = Vec::new();
                encode_block_from(records.iter().flatten(), &mut out);
                out
            }
        }
    }

    /// The events as NDJSON lines and their count.
    fn into_ndjson(self) -> (Vec<u8>, u32) {
        match self {
            Self::Ndjson { bytes, events } => (bytes, events),
            Self::Records { records, .. } => {
                let mut bytes = Vec::new();
                let mut events = 0;
                for record in records.iter().flatten() {
                    encode_into(record, &mut bytes);
                    events += 1;
                }
                (bytes, events)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use gallop_event::{decode_block, decode_message, BlockEvent};

    use super::*;

    fn record(i: usize) -> EventRecord {
        let mut r = EventRecord::new();
        r.site = "a.test".into();
        r.id = format!("{i:x}-some-client-id");
        r.name = "pageview".into();
        r.path = format!("/{}", "p".repeat(i % 300));
        r.props.insert(format!("k{i}"), "v".repeat(i % 50));
        r.uniques.insert("ip".into(), i as u64);
        r.value = Some(i as f64);
        r
    }

    #[test]
    fn bounds_hold_and_splits_keep_every_event_in_order() {
        for encoding in [MessageEncoding::Block, MessageEncoding::Ndjson] {
            let mut body = Outbound::new(encoding);
            let mut other = Outbound::new(encoding);
            let records: Vec<EventRecord> = (0..400).map(record).collect();
            for r in &records[..150] {
                body.push(r.clone());
            }
            for r in &records[150..] {
                other.push(r.clone());
            }
            let together = body.size_with(&other);
            body.append(other);
            assert_eq!((body.events(), body.size()), (400, together));
            let chunks = body.split(8 * 1024);
            assert!(chunks.len() > 5, "{encoding:?}: {} chunks", chunks.len());
            let mut back = Vec::new();
            for chunk in chunks {
                let (events, bound) = (chunk.events(), chunk.size());
                let payload = chunk.into_payload();
                assert!(
                    payload.len() <= bound && payload.len() <= 8 * 1024,
                    "{encoding:?}: {} > {bound}",
                    payload.len()
                );
                let decoded: Vec<EventRecord> = match encoding {
                    MessageEncoding::Block => {
                        decode_block(&payload).expect("block").iter().map(BlockEvent::to_record).collect()
                    }
                    MessageEncoding::Ndjson => decode_message(&payload).collect::<Result<_, _>>().expect("ndjson"),
                };
                assert_eq!(decoded.len() as u32, events);
                back.extend(decoded);
            }
            assert_eq!(back, records, "{encoding:?}");
        }
    }

    #[test]
    fn mixed_encodings_fall_back_to_ndjson() {
        let mut body = Outbound::new(MessageEncoding::Block);
        body.push(record(1));
        let mut other = Outbound::new(MessageEncoding::Ndjson);
        other.push(record(2));
        body.append(other);
        assert!(matches!(body, Outbound::Ndjson { events: 2, .. }));
        let payload = body.into_payload();
        let back: Vec<EventRecord> = decode_message(&payload).collect::<Result<_, _>>().expect("ndjson");
        assert_eq!(back, vec![record(1), record(2)]);
    }
}
