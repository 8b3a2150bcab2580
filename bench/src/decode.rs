//! Decoding broker messages (NDJSON of `EventRecord`) with several JSON decoders.
//!
//! Every decoder handles a message as `gallop_event::decode_message` does: split at `\n`,
//! skip blank lines, decode each line as one record, reject a record whose `v` is not
//! `FORMAT_VERSION`, count a bad line as an error and go on. The decoders:
//!
//! - `serde_json/owned`: `gallop_event::decode_message` into [`EventRecord`] (the baseline);
//! - `serde_json/borrowed`: serde_json into [`BorrowedRecord`], whose strings borrow from
//!   the message where they hold no escape sequence;
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

use std::borrow::Cow;
use std::fmt;
use std::hint::black_box;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use gallop_event::{decode_message, EventRecord, Props, FORMAT_VERSION};
use serde::de::{Deserializer, MapAccess, Visitor};
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
    /// serde_json into [`BorrowedRecord`].
    SerdeJsonBorrowed,
    /// sonic-rs into [`EventRecord`].
    SonicOwned,
    /// sonic-rs into [`BorrowedRecord`].
    SonicBorrowed,
    /// simd-json into [`EventRecord`] (from a scratch copy of the message).
    SimdJsonOwned,
    /// simd-json into [`BorrowedRecord`] (from a scratch copy of the message).
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
                for_each_line(messages, sink, |line| serde_json::from_slice::<BorrowedRecord<'_>>(line).ok());
            }
            Self::SonicOwned => for_each_line(messages, sink, |line| sonic_rs::from_slice::<EventRecord>(line).ok()),
            Self::SonicBorrowed => {
                for_each_line(messages, sink, |line| sonic_rs::from_slice::<BorrowedRecord<'_>>(line).ok());
            }
            Self::SimdJsonOwned => simd_json_lines::<Owned, S>(messages, sink),
            Self::SimdJsonBorrowed => simd_json_lines::<Borrowed, S>(messages, sink),
        }
    }
}

/// Receives decoded records.
trait Sink {
    fn owned(&mut self, record: EventRecord);
    fn borrowed(&mut self, record: BorrowedRecord<'_>);
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

impl<'a> Decoded<'a> for BorrowedRecord<'a> {
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

/// [`BorrowedRecord`] borrowing from the text.
struct Borrowed;

impl Family for Borrowed {
    type Out<'a> = BorrowedRecord<'a>;
}

/// An [`EventRecord`] whose strings borrow from the decoded text where they can (a string
/// with an escape sequence has to be unescaped into an owned one). Same fields, same JSON;
/// see [`EventRecord`] for what each field means.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct BorrowedRecord<'a> {
    /// Format version.
    pub v: u8,
    /// Site.
    #[serde(borrow)]
    pub site: Cow<'a, str>,
    /// Event id.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// Event time, ms since the Unix epoch.
    pub ts: i64,
    /// Event name.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// Host of the page URL.
    #[serde(borrow)]
    pub host: Cow<'a, str>,
    /// Path of the page URL.
    #[serde(borrow)]
    pub path: Cow<'a, str>,
    /// Full referrer URL.
    #[serde(borrow)]
    pub referrer: Cow<'a, str>,
    /// Host of the referrer.
    #[serde(borrow)]
    pub ref_host: Cow<'a, str>,
    /// Traffic source.
    #[serde(borrow)]
    pub source: Cow<'a, str>,
    /// `utm_source`.
    #[serde(borrow)]
    pub utm_source: Cow<'a, str>,
    /// `utm_medium`.
    #[serde(borrow)]
    pub utm_medium: Cow<'a, str>,
    /// `utm_campaign`.
    #[serde(borrow)]
    pub utm_campaign: Cow<'a, str>,
    /// `utm_content`.
    #[serde(borrow)]
    pub utm_content: Cow<'a, str>,
    /// `utm_term`.
    #[serde(borrow)]
    pub utm_term: Cow<'a, str>,
    /// Country code.
    #[serde(borrow)]
    pub country: Cow<'a, str>,
    /// Browser family.
    #[serde(borrow)]
    pub browser: Cow<'a, str>,
    /// Browser major version.
    #[serde(borrow)]
    pub browser_version: Cow<'a, str>,
    /// Operating system family.
    #[serde(borrow)]
    pub os: Cow<'a, str>,
    /// Device class.
    #[serde(borrow)]
    pub device: Cow<'a, str>,
    /// Visitor hash.
    pub visitor: u64,
    /// Custom properties.
    #[serde(borrow)]
    pub props: BorrowedProps<'a>,
    /// Numeric value.
    pub value: Option<f64>,
    /// Currency of `value`.
    #[serde(borrow)]
    pub currency: Cow<'a, str>,
    /// Whether the event counts as interaction.
    pub interactive: bool,
}

impl Default for BorrowedRecord<'_> {
    /// The defaults of [`EventRecord`]: empty strings, current version, interactive.
    fn default() -> Self {
        Self {
            v: FORMAT_VERSION,
            site: Cow::Borrowed(""),
            id: Cow::Borrowed(""),
            ts: 0,
            name: Cow::Borrowed(""),
            host: Cow::Borrowed(""),
            path: Cow::Borrowed(""),
            referrer: Cow::Borrowed(""),
            ref_host: Cow::Borrowed(""),
            source: Cow::Borrowed(""),
            utm_source: Cow::Borrowed(""),
            utm_medium: Cow::Borrowed(""),
            utm_campaign: Cow::Borrowed(""),
            utm_content: Cow::Borrowed(""),
            utm_term: Cow::Borrowed(""),
            country: Cow::Borrowed(""),
            browser: Cow::Borrowed(""),
            browser_version: Cow::Borrowed(""),
            os: Cow::Borrowed(""),
            device: Cow::Borrowed(""),
            visitor: 0,
            props: BorrowedProps::default(),
            value: None,
            currency: Cow::Borrowed(""),
            interactive: true,
        }
    }
}

impl BorrowedRecord<'_> {
    /// The owned record with the same content.
    pub fn to_owned_record(&self) -> EventRecord {
        EventRecord {
            v: self.v,
            site: self.site.clone().into_owned(),
            id: self.id.clone().into_owned(),
            ts: self.ts,
            name: self.name.clone().into_owned(),
            host: self.host.clone().into_owned(),
            path: self.path.clone().into_owned(),
            referrer: self.referrer.clone().into_owned(),
            ref_host: self.ref_host.clone().into_owned(),
            source: self.source.clone().into_owned(),
            utm_source: self.utm_source.clone().into_owned(),
            utm_medium: self.utm_medium.clone().into_owned(),
            utm_campaign: self.utm_campaign.clone().into_owned(),
            utm_content: self.utm_content.clone().into_owned(),
            utm_term: self.utm_term.clone().into_owned(),
            country: self.country.clone().into_owned(),
            browser: self.browser.clone().into_owned(),
            browser_version: self.browser_version.clone().into_owned(),
            os: self.os.clone().into_owned(),
            device: self.device.clone().into_owned(),
            visitor: self.visitor,
            props: self
                .props
                .0
                .iter()
                .map(|(k, v)| (k.clone().into_owned(), v.clone().into_owned()))
                .collect::<Props>(),
            value: self.value,
            currency: self.currency.clone().into_owned(),
            interactive: self.interactive,
        }
    }
}

/// Custom properties in the order of the JSON object (the encoder writes them sorted by key;
/// a repeated key is kept twice here, where [`EventRecord`] keeps the last).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BorrowedProps<'a>(pub Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'de: 'a, 'a> Deserialize<'de> for BorrowedProps<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PropsVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for PropsVisitor<'a> {
            type Value = BorrowedProps<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of string properties")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut props = Vec::with_capacity(map.size_hint().unwrap_or(0).min(16));
                while let Some((key, value)) = map.next_entry::<CowStr<'a>, CowStr<'a>>()? {
                    props.push((key.0, value.0));
                }
                Ok(BorrowedProps(props))
            }
        }
        deserializer.deserialize_map(PropsVisitor(PhantomData))
    }
}

/// A string that borrows from the input when the deserializer can lend it.
struct CowStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for StrVisitor<'a> {
            type Value = CowStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(StrVisitor(PhantomData))
    }
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
    fn borrowed(&mut self, record: BorrowedRecord<'_>) {
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
        fn borrowed(&mut self, record: BorrowedRecord<'_>) {
            self.0.push(record.to_owned_record());
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
        for record in [
            serde_json::from_slice::<BorrowedRecord<'_>>(line).ok(),
            sonic_rs::from_slice::<BorrowedRecord<'_>>(line).ok(),
        ] {
            let record = record.expect("decodes");
            assert!(matches!(record.site, Cow::Borrowed("example.com")), "{:?}", record.site);
            assert!(matches!(record.name, Cow::Owned(_)), "an escaped string cannot be borrowed");
            assert!(matches!(record.props.0[0].0, Cow::Borrowed("a")));
            assert_eq!(record.to_owned_record(), tricky());
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
