//! The events bound for one broker message, in the configured encoding
//! (`ingest.batching.format`): NDJSON lines written as events are taken, or one compact
//! block (each distinct string once per message, `gallop_event::BlockWriter`).
//!
//! A block is written in two steps. The request that made the events writes its part as a
//! block of its own when it cuts the part to size ([`Outbound::split`]), on its own task,
//! so its records are freed where they were made; parts of fewer than [`WRITE_FROM`]
//! events (a tracker sends one event per request) stay records, which are cheaper to
//! carry. When the message closes, its parts become one block: a lone written part as is,
//! several parts with one dictionary, written parts carried over without decoding.
//!
//! Sizes are known before encoding: exact for NDJSON; for a block, the encoder's upper
//! bound (`gallop_event::block_size_bound`), which holds for the merged block too, so a
//! message never exceeds `batching.max_bytes` once encoded.

use gallop_config::MessageEncoding;
use gallop_event::{
    block_size_bound, decode_block, encode_block, encode_into, BlockError, BlockEvent, BlockWriter, EventRecord,
    BLOCK_HEADER_BOUND,
};

/// Parts with at least this many events are written as blocks by their request.
pub(crate) const WRITE_FROM: usize = 16;

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
    /// Events to be written as one block, in order.
    Block {
        /// Parts as the requests handed them over (moving whole parts, never single
        /// records: a record is some 600 bytes).
        pieces: Vec<Piece>,
        /// The most bytes they take as one block, header included.
        bound: usize,
    },
}

/// A run of events of a block message.
#[derive(Debug)]
pub(crate) enum Piece {
    /// Records not written yet.
    Records(Vec<EventRecord>),
    /// A block a request wrote.
    Written {
        /// The block.
        bytes: Vec<u8>,
        /// Its events.
        events: u32,
        /// The most bytes its events take in a block, header excluded.
        bound: usize,
    },
}

impl Piece {
    fn events(&self) -> usize {
        match self {
            Self::Records(records) => records.len(),
            Self::Written { events, .. } => *events as usize,
        }
    }
}

impl Outbound {
    /// An empty body in `encoding`.
    pub(crate) fn new(encoding: MessageEncoding) -> Self {
        match encoding {
            MessageEncoding::Ndjson => Self::Ndjson { bytes: Vec::new(), events: 0 },
            MessageEncoding::Block => Self::Block { pieces: Vec::new(), bound: BLOCK_HEADER_BOUND },
        }
    }

    /// Makes room for `records` more records of a block body, so that pushing them does not
    /// copy the ones before (a record is some 600 bytes).
    pub(crate) fn reserve(&mut self, records: usize) {
        if let Self::Block { pieces, .. } = self {
            match pieces.last_mut() {
                Some(Piece::Records(held)) => held.reserve(records),
                _ => pieces.push(Piece::Records(Vec::with_capacity(records))),
            }
        }
    }

    /// Adds `record`.
    pub(crate) fn push(&mut self, record: EventRecord) {
        match self {
            Self::Ndjson { bytes, events } => {
                encode_into(&record, bytes);
                *events += 1;
            }
            Self::Block { pieces, bound } => {
                *bound += block_size_bound(&record);
                match pieces.last_mut() {
                    Some(Piece::Records(records)) => records.push(record),
                    _ => pieces.push(Piece::Records(vec![record])),
                }
            }
        }
    }

    /// Events held.
    pub(crate) fn events(&self) -> u32 {
        match self {
            Self::Ndjson { events, .. } => *events,
            Self::Block { pieces, .. } => {
                u32::try_from(pieces.iter().map(Piece::events).sum::<usize>()).unwrap_or(u32::MAX)
            }
        }
    }

    /// Bytes of the encoded message (NDJSON) or the most it can take (block).
    pub(crate) fn size(&self) -> usize {
        match self {
            Self::Ndjson { bytes, .. } => bytes.len(),
            Self::Block { bound, .. } => *bound,
        }
    }

    /// The size of `self` and `other` as one message.
    pub(crate) fn size_with(&self, other: &Self) -> usize {
        match other {
            Self::Ndjson { bytes, .. } => self.size() + bytes.len(),
            // One header for both.
            Self::Block { bound, .. } => self.size() + bound - BLOCK_HEADER_BOUND,
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
            (Self::Block { pieces, bound }, Self::Block { pieces: more, bound: more_bound }) => {
                pieces.extend(more);
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
    /// stays whole, for the broker to refuse). Block parts of [`WRITE_FROM`] events or more
    /// are written as blocks here, and their records freed.
    pub(crate) fn split(self, max_bytes: usize) -> Vec<Self> {
        match self {
            Self::Ndjson { bytes, .. } if bytes.len() > max_bytes => {
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
            ndjson @ Self::Ndjson { .. } => vec![ndjson],
            Self::Block { pieces, .. } => {
                let mut chunks: Vec<Self> = Vec::new();
                for piece in pieces {
                    match piece {
                        // Written to fit when its request was cut: a chunk of its own.
                        Piece::Written { bytes, events, bound } => chunks.push(Self::Block {
                            pieces: vec![Piece::Written { bytes, events, bound }],
                            bound: BLOCK_HEADER_BOUND + bound,
                        }),
                        Piece::Records(records) => split_records(records, max_bytes, &mut chunks),
                    }
                }
                chunks
            }
        }
    }

    /// The message bytes. A block fails only if a part a request wrote does not read back,
    /// which would be a bug of this gateway.
    pub(crate) fn into_payload(self) -> Result<Vec<u8>, BlockError> {
        match self {
            Self::Ndjson { bytes, .. } => Ok(bytes),
            Self::Block { mut pieces, .. } => {
                if let [Piece::Written { .. }] = pieces.as_slice() {
                    if let Some(Piece::Written { bytes, .. }) = pieces.pop() {
                        return Ok(bytes);
                    }
                }
                let events = pieces.iter().map(Piece::events).sum();
                let mut writer = BlockWriter::with_capacity(events);
                for piece in &pieces {
                    match piece {
                        Piece::Records(records) => records.iter().for_each(|r| writer.record(r)),
                        Piece::Written { bytes, .. } => writer.block(bytes)?,
                    }
                }
                let mut out = Vec::new();
                writer.finish(&mut out);
                Ok(out)
            }
        }
    }

    /// The events as NDJSON lines and their count.
    fn into_ndjson(self) -> (Vec<u8>, u32) {
        match self {
            Self::Ndjson { bytes, events } => (bytes, events),
            Self::Block { pieces, .. } => {
                let mut bytes = Vec::new();
                let mut events = 0;
                for piece in pieces {
                    match piece {
                        Piece::Records(records) => {
                            for record in &records {
                                encode_into(record, &mut bytes);
                                events += 1;
                            }
                        }
                        Piece::Written { bytes: block, events: n, .. } => match decode_block(&block) {
                            Ok(decoded) => {
                                for event in decoded.iter().map(BlockEvent::to_record) {
                                    encode_into(&event, &mut bytes);
                                    events += 1;
                                }
                            }
                            Err(e) => {
                                tracing::error!(error = %e, events = n, "a block this gateway wrote does not read back: its events are lost");
                            }
                        },
                    }
                }
                (bytes, events)
            }
        }
    }
}

/// Cuts `records` into chunks of at most `max_bytes` as blocks, in order, onto `chunks`:
/// chunks of [`WRITE_FROM`] events or more written as blocks (the records freed), smaller
/// ones kept as records. Records are not moved to be written (one is some 600 bytes).
fn split_records(records: Vec<EventRecord>, max_bytes: usize, chunks: &mut Vec<Outbound>) {
    // (events, bound with the header) of each chunk.
    let mut cuts: Vec<(usize, usize)> = Vec::new();
    let (mut events, mut bound) = (0, BLOCK_HEADER_BOUND);
    for record in &records {
        let size = block_size_bound(record);
        if events > 0 && bound + size > max_bytes {
            cuts.push((events, bound));
            (events, bound) = (0, BLOCK_HEADER_BOUND);
        }
        events += 1;
        bound += size;
    }
    if events > 0 {
        cuts.push((events, bound));
    }
    if let [(n, bound)] = cuts[..] {
        if n < WRITE_FROM {
            chunks.push(Outbound::Block { pieces: vec![Piece::Records(records)], bound });
            return;
        }
    }
    // Front to back: a written chunk reads the records in place, then drops them; a small
    // one takes its few records along.
    let mut rest = records.into_iter();
    for (n, bound) in cuts {
        let piece = if n >= WRITE_FROM {
            let mut bytes = Vec::new();
            encode_block(rest.as_slice().get(..n).unwrap_or_default(), &mut bytes);
            rest.by_ref().take(n).for_each(drop);
            Piece::Written { bytes, events: n as u32, bound: bound - BLOCK_HEADER_BOUND }
        } else {
            Piece::Records(rest.by_ref().take(n).collect())
        };
        chunks.push(Outbound::Block { pieces: vec![piece], bound });
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
        // 8 KiB chunks hold about WRITE_FROM of these records, 32 KiB ones more: kept as
        // records, or written by the request.
        let cases = [
            (MessageEncoding::Block, 8 * 1024),
            (MessageEncoding::Block, 32 * 1024),
            (MessageEncoding::Ndjson, 8 * 1024),
        ];
        for (encoding, max_bytes) in cases {
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
            let chunks = body.split(max_bytes);
            assert!(chunks.len() > 5, "{encoding:?}: {} chunks", chunks.len());
            if encoding == MessageEncoding::Block {
                let written: Vec<bool> = chunks.iter().flat_map(written).collect();
                let expected: Vec<bool> = chunks.iter().map(|c| c.events() as usize >= WRITE_FROM).collect();
                assert_eq!(written, expected, "{max_bytes}: written exactly when large enough");
                assert!(written.contains(&true), "{max_bytes}: {written:?}");
                assert!(max_bytes > 8 * 1024 || written.contains(&false), "{max_bytes}: {written:?}");
            }
            let mut back = Vec::new();
            for chunk in chunks {
                let (events, bound) = (chunk.events(), chunk.size());
                let payload = chunk.into_payload().expect("payload");
                assert!(
                    payload.len() <= bound && payload.len() <= max_bytes,
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
        let payload = body.into_payload().expect("payload");
        let back: Vec<EventRecord> = decode_message(&payload).collect::<Result<_, _>>().expect("ndjson");
        assert_eq!(back, vec![record(1), record(2)]);
    }

    /// A request's part as the handler makes it: records pushed, then cut to size.
    fn part(records: &[EventRecord], max_bytes: usize) -> Vec<Outbound> {
        let mut body = Outbound::new(MessageEncoding::Block);
        for r in records {
            body.push(r.clone());
        }
        body.split(max_bytes)
    }

    fn written(body: &Outbound) -> Vec<bool> {
        match body {
            Outbound::Block { pieces, .. } => pieces.iter().map(|p| matches!(p, Piece::Written { .. })).collect(),
            Outbound::Ndjson { .. } => Vec::new(),
        }
    }

    #[test]
    fn parts_written_by_requests_and_loose_records_make_one_block_in_order() {
        let records: Vec<EventRecord> = (0..200).map(record).collect();
        // Three requests: a large part (written), a tracker's single event (kept as a
        // record), another large part (written).
        let (large, single, other) = (&records[..120], &records[120..121], &records[121..]);
        let mut message = None::<Outbound>;
        for request in [large, single, other] {
            let mut chunks = part(request, 1 << 20);
            assert_eq!(chunks.len(), 1);
            let chunk = chunks.remove(0);
            assert_eq!(written(&chunk), vec![request.len() >= WRITE_FROM]);
            match &mut message {
                Some(m) => {
                    let together = m.size_with(&chunk);
                    m.append(chunk);
                    assert_eq!(m.size(), together);
                }
                None => message = Some(chunk),
            }
        }
        let message = message.expect("three parts");
        let (events, bound) = (message.events(), message.size());
        assert_eq!(written(&message), vec![true, false, true]);
        let payload = message.into_payload().expect("payload");
        assert!(payload.len() <= bound, "{} > {bound}", payload.len());
        let back: Vec<EventRecord> = decode_block(&payload).expect("block").iter().map(BlockEvent::to_record).collect();
        assert_eq!(events, 200);
        assert_eq!(back, records);
        // One dictionary: a string shared by the parts is written once.
        assert_eq!(payload.windows(6).filter(|w| w == b"a.test").count(), 1);
    }

    #[test]
    fn a_lone_written_part_is_sent_as_written() {
        let records: Vec<EventRecord> = (0..50).map(record).collect();
        let mut chunks = part(&records, 1 << 20);
        let Some(Outbound::Block { pieces, .. }) = chunks.first() else { panic!("one block chunk") };
        let Some(Piece::Written { bytes, .. }) = pieces.first() else { panic!("a written part") };
        let expected = bytes.clone();
        assert_eq!(chunks.remove(0).into_payload().expect("payload"), expected);
    }

    #[test]
    fn a_written_part_that_does_not_read_back_fails_the_message() {
        let records: Vec<EventRecord> = (0..40).map(record).collect();
        let mut message = part(&records, 1 << 20).remove(0);
        let mut cut = part(&records, 1 << 20).remove(0);
        if let Outbound::Block { pieces, .. } = &mut cut {
            if let Some(Piece::Written { bytes, .. }) = pieces.first_mut() {
                bytes.truncate(bytes.len() - 3);
            }
        }
        message.append(cut);
        let error = message.into_payload().expect_err("a cut block");
        assert!(error.to_string().starts_with("compact block"), "{error}");
    }
}
