//! Decoding broker messages (NDJSON of `EventRecord`) with several JSON decoders.
//!
//! Every decoder handles a message as `gallop_event::decode_message` does: split at `\n`,
//! skip blank lines, decode each line as one record, reject a record whose `v` is not
//! `FORMAT_VERSION`, count a bad line as an error and go on. The decoders:
//!
//! - `serde_json/owned`: `gallop_event::decode_message` into [`EventRecord`] (the baseline);
//! - `serde_json/borrowed`: `gallop_event::decode_message_view` (what the processor uses):
//!   serde_json into [`EventView`], whose strings borrow from the message where they hold no
//!   escape sequence, after one UTF-8 check of the whole message;
//! - `sonic-rs/owned`, `sonic-rs/borrowed`: `sonic_rs::from_slice` (0.5, SIMD, UTF-8 checked)
//!   into the same two types;
//! - `simd-json/owned`, `simd-json/borrowed`: `simd_json::serde::from_slice_with_buffers`
//!   (0.15, the newest release whose rust-version matches the workspace's 1.85) with one
//!   reused `Buffers`. simd-json parses in place, so each message is first copied into a
//!   scratch buffer; the copy is timed as part of its cost.
//!
//! Timed: decoding every record of every message, `rounds` times, and dropping the records;
//! every record is passed through `std::hint::black_box`. Not timed: one warm-up pass over
//! the first messages.

use std::hint::black_box;
use std::time::{Duration, Instant};

use gallop_event::{decode_message, decode_message_view, EventRecord, EventView, FORMAT_VERSION};
use serde::Deserialize;

/// The result of one decoder over all messages and rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeResult {
    /// Which decoder (see the module docs).
    pub decoder: &'static str,
    /// Records decoded (over all rounds).
    pub events: usize,
    /// Lines that failed to decode or had the wrong version (over all rounds).
    pub errors: usize,
    /// Time spent decoding.
    pub elapsed: Duration,
}

impl DecodeResult {
    /// Records decoded per second.
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// A JSON decoder under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// serde_json into the owned [`EventRecord`], through `gallop_event::decode_message`.
    SerdeJsonOwned,
    /// serde_json into [`EventView`], through `gallop_event::decode_message_view`.
    SerdeJsonBorrowed,
    /// sonic-rs into [`EventRecord`].
    SonicOwned,
    /// sonic-rs into [`EventView`].
    SonicBorrowed,
    /// simd-json into [`EventRecord`] (from a scratch copy of the message).
    SimdJsonOwned,
    /// simd-json into [`EventView`] (from a scratch copy of the message).
    SimdJsonBorrowed,
}

impl Decoder {
    /// Every decoder, the baseline first.
    pub const ALL: [Decoder; 6] = [
        Self::SerdeJsonOwned,
        Self::SerdeJsonBorrowed,
        Self::SonicOwned,
        Self::SonicBorrowed,
        Self::SimdJsonOwned,
        Self::SimdJsonBorrowed,
    ];

    /// The decoder's name in results.
    pub fn name(self) -> &'static str {
        match self {
            Self::SerdeJsonOwned => "serde_json/owned",
            Self::SerdeJsonBorrowed => "serde_json/borrowed",
            Self::SonicOwned => "sonic-rs/owned",
            Self::SonicBorrowed => "sonic-rs/borrowed",
            Self::SimdJsonOwned => "simd-json/owned",
            Self::SimdJsonBorrowed => "simd-json/borrowed",
        }
    }

    /// Decodes every record of `messages`, handing each to `sink`.
    fn run<S: Sink>(self, messages: &[Vec<u8>], sink: &mut S) {
        match self {
            Self::SerdeJsonOwned => {
                for message in messages {
                    for result in decode_message(message) {
                        match result {
                            Ok(record) => sink.owned(record),
                            Err(_) => sink.error(),
                        }
                    }
                }
            }
            Self::SerdeJsonBorrowed => {
                for message in messages {
                    for result in decode_message_view(message) {
                        match result {
                            Ok(view) => sink.borrowed(view),
                            Err(_) => sink.error(),
                        }
                    }
                }
            }
            Self::SonicOwned => for_each_line(messages, sink, |line| sonic_rs::from_slice::<EventRecord>(line).ok()),
            Self::SonicBorrowed => {
                for_each_line(messages, sink, |line| sonic_rs::from_slice::<EventView<'_>>(line).ok());
            }
            Self::SimdJsonOwned => simd_json_lines::<Owned, S>(messages, sink),
            Self::SimdJsonBorrowed => simd_json_lines::<Borrowed, S>(messages, sink),
        }
    }
}

/// Receives decoded records.
trait Sink {
    fn owned(&mut self, record: EventRecord);
    fn borrowed(&mut self, record: EventView<'_>);
    fn error(&mut self);
}

/// A record type a decoder can produce.
trait Decoded<'a>: Deserialize<'a> {
    fn version(&self) -> u8;
    fn hand_to<S: Sink>(self, sink: &mut S);
}

impl Decoded<'_> for EventRecord {
    fn version(&self) -> u8 {
        self.v
    }
    fn hand_to<S: Sink>(self, sink: &mut S) {
        sink.owned(self);
    }
}

impl<'a> Decoded<'a> for EventView<'a> {
    fn version(&self) -> u8 {
        self.v
    }
    fn hand_to<S: Sink>(self, sink: &mut S) {
        sink.borrowed(self);
    }
}

/// True for a line `decode_message` skips.
fn blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// Decodes each non-blank line of each message with `decode` (None: not a record).
fn for_each_line<'m, T: Decoded<'m>, S: Sink>(
    messages: &'m [Vec<u8>],
    sink: &mut S,
    decode: impl Fn(&'m [u8]) -> Option<T>,
) {
    for message in messages {
        for line in message.split(|&b| b == b'\n').filter(|line| !blank(line)) {
            match decode(line) {
                Some(record) if record.version() == FORMAT_VERSION => record.hand_to(sink),
                _ => sink.error(),
            }
        }
    }
}

/// simd-json over each non-blank line of a scratch copy of each message, into `F::Out`.
fn simd_json_lines<F: Family, S: Sink>(messages: &[Vec<u8>], sink: &mut S) {
    let mut scratch = Vec::new();
    let mut buffers = simd_json::Buffers::default();
    for message in messages {
        scratch.clear();
        scratch.extend_from_slice(message);
        for line in scratch.split_mut(|&b| b == b'\n').filter(|line| !blank(line)) {
            match simd_json::serde::from_slice_with_buffers::<F::Out<'_>>(line, &mut buffers) {
                Ok(record) if record.version() == FORMAT_VERSION => record.hand_to(sink),
                _ => sink.error(),
            }
        }
    }
}

/// A record type for any lifetime of the text it is decoded from.
trait Family {
    type Out<'a>: Decoded<'a>;
}

/// [`EventRecord`], whatever the text's lifetime.
struct Owned;

impl Family for Owned {
    type Out<'a> = EventRecord;
}

/// [`EventView`] borrowing from the text.
struct Borrowed;

impl Family for Borrowed {
    type Out<'a> = EventView<'a>;
}

/// Counts records and keeps the optimizer from skipping them.
#[derive(Default)]
struct CountSink {
    events: usize,
    errors: usize,
}

impl Sink for CountSink {
    fn owned(&mut self, record: EventRecord) {
        black_box(&record);
        self.events += 1;
    }
    fn borrowed(&mut self, record: EventView<'_>) {
        black_box(&record);
        self.events += 1;
    }
    fn error(&mut self) {
        self.errors += 1;
    }
}

/// Messages decoded once, untimed, before each decoder's timed rounds.
const WARM_UP_MESSAGES: usize = 64;

/// Decodes `messages` `rounds` times with each decoder in [`Decoder::ALL`] and reports the
/// time each took.
pub fn decode_bench(messages: &[Vec<u8>], rounds: usize) -> Vec<DecodeResult> {
    Decoder::ALL
        .iter()
        .map(|&decoder| {
            decoder.run(&messages[..messages.len().min(WARM_UP_MESSAGES)], &mut CountSink::default());
            let mut sink = CountSink::default();
            let start = Instant::now();
            for _ in 0..rounds {
                decoder.run(messages, &mut sink);
            }
            let elapsed = start.elapsed();
            DecodeResult { decoder: decoder.name(), events: sink.events, errors: sink.errors, elapsed }
        })
        .collect()
}

/// Every record of `messages` as `decoder` decodes it (as an owned record), and the number
/// of lines it rejected.
pub fn decode_all(decoder: Decoder, messages: &[Vec<u8>]) -> (Vec<EventRecord>, usize) {
    struct Collect(Vec<EventRecord>, usize);
    impl Sink for Collect {
        fn owned(&mut self, record: EventRecord) {
            self.0.push(record);
        }
        fn borrowed(&mut self, record: EventView<'_>) {
            self.0.push(record.to_record());
        }
        fn error(&mut self) {
            self.1 += 1;
        }
    }
    let mut sink = Collect(Vec::new(), 0);
    decoder.run(messages, &mut sink);
    (sink.0, sink.1)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use gallop_event::encode_into;

    use super::*;
    use crate::synth::{encode_messages, generate, SynthConfig};

    fn tricky() -> EventRecord {
        let mut r = EventRecord::new();
        r.site = "example.com".into();
        r.name = "signup \"quoted\" \\ back\tslash".into();
        r.path = "/caf\u{e9}/\u{1f600}".into();
        r.visitor = u64::MAX;
        r.ts = -5;
        r.props.insert("pl\u{e4}n".into(), "line\nbreak".into());
        r.props.insert("a".into(), "".into());
        r.value = Some(0.1 + 0.2);
        r.interactive = false;
        r
    }

    #[test]
    fn all_decoders_agree_with_serde_json() {
        let mut records: Vec<EventRecord> =
            generate(&SynthConfig { events: 2_000, seed: 3, ..SynthConfig::default() }).collect();
        records.push(tricky());
        let mut messages = encode_messages(&records, 50);
        // A bad line and a future version: every decoder must reject both and go on.
        let mut bad = b"{\"v\":1,\"site\":\n   \n{\"v\":2,\"site\":\"x\"}\n".to_vec();
        encode_into(&tricky(), &mut bad);
        messages.push(bad);
        records.push(tricky());

        let (baseline, errors) = decode_all(Decoder::SerdeJsonOwned, &messages);
        assert_eq!(baseline, records);
        assert_eq!(errors, 2);
        for decoder in Decoder::ALL {
            let (decoded, errors) = decode_all(decoder, &messages);
            assert_eq!(errors, 2, "{}", decoder.name());
            assert_eq!(decoded.len(), baseline.len(), "{}", decoder.name());
            for (i, (got, want)) in decoded.iter().zip(&baseline).enumerate() {
                assert_eq!(got, want, "{} record {i}", decoder.name());
            }
        }
    }

    #[test]
    fn borrowed_records_borrow_unescaped_strings() {
        let mut message = Vec::new();
        encode_into(&tricky(), &mut message);
        let line = message.strip_suffix(b"\n").unwrap_or(&message);
        for record in
            [serde_json::from_slice::<EventView<'_>>(line).ok(), sonic_rs::from_slice::<EventView<'_>>(line).ok()]
        {
            let record = record.expect("decodes");
            assert!(matches!(record.site, Cow::Borrowed("example.com")), "{:?}", record.site);
            assert!(matches!(record.name, Cow::Owned(_)), "an escaped string cannot be borrowed");
            assert!(matches!(record.props.0[0].0, Cow::Borrowed("a")));
            assert_eq!(record.to_record(), tricky());
        }
    }

    #[test]
    fn bench_counts_every_record_of_every_round() {
        let records: Vec<EventRecord> = generate(&SynthConfig { events: 300, ..SynthConfig::default() }).collect();
        let messages = encode_messages(&records, 7);
        let results = decode_bench(&messages, 3);
        assert_eq!(results.len(), Decoder::ALL.len());
        for result in results {
            assert_eq!((result.events, result.errors), (900, 0), "{}", result.decoder);
        }
    }
}
