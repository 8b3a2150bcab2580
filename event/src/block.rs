//! The compact block: a whole broker message of records in one binary encoding, each
//! distinct string written once (a dictionary per message), the rest as small integers.
//!
//! ```text
//! header      0x00 'G' 'B' 0x02            (NDJSON never starts with a NUL byte)
//! events      varint N
//! base time   zigzag varint (ms since the epoch; events store their difference to it)
//! dictionary  varint D, then D × (varint length, UTF-8 bytes); index 0 is "" (not stored)
//! N events    varint site
//!             id: varint 0 + varint string | varint 1 + varint prefix + varint counter
//!                 (gateway ids are a prefix and a counter in 10 hex digits)
//!             zigzag varint ts − base
//!             varint bitmap of the non-empty string fields (FIELDS order), then one
//!                 varint string per set bit
//!             u64 LE visitor
//!             flags: 1 value (then f64 LE), 2 not interactive, 4 scroll depth (then u8),
//!                 8 engaged ms (then varint)
//!             varint P, then P × (varint key, varint value)      (properties)
//!             varint U, then U × (varint name, u64 LE)          (uniques)
//! ```
//!
//! Every length, count and index is checked against what the message holds: a truncated or
//! corrupt block is refused whole with the reason and the byte offset, never half-read and
//! never a panic.

use std::collections::HashMap;

use gallop_codec::{read_varint, unzigzag, write_varint, zigzag, VarintError};

use crate::{
    fields::EventFields,
    record::{EventRecord, FORMAT_VERSION},
};

/// The first bytes of a compact block.
pub const BLOCK_MAGIC: [u8; 3] = [0, b'G', b'B'];
/// The block layout this build writes and reads.
pub const BLOCK_VERSION: u8 = 2;

/// How a broker message is encoded, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageFormat {
    /// One JSON record per line (format version 1, the first one).
    Ndjson,
    /// A compact block of the given layout version.
    Block(u8),
}

impl MessageFormat {
    /// The format of `payload`.
    pub fn of(payload: &[u8]) -> Self {
        match payload {
            [0, b'G', b'B', version, ..] => Self::Block(*version),
            _ => Self::Ndjson,
        }
    }
}

/// Why a block could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The block's layout version is not one this build reads.
    #[error("compact block of layout version {0} (this build reads {BLOCK_VERSION})")]
    Version(u8),
    /// The message ends inside `what`.
    #[error("compact block truncated at byte {offset}: {what} is cut off")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where the message ended.
        offset: usize,
    },
    /// A value that cannot be right.
    #[error("compact block corrupt at byte {offset}: {reason}")]
    Corrupt {
        /// Where.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
}

/// The string fields of a record, in the order of the presence bitmap.
const FIELDS: usize = 17;

fn fields(r: &EventRecord) -> [&str; FIELDS] {
    [
        &r.name,
        &r.host,
        &r.path,
        &r.referrer,
        &r.ref_host,
        &r.source,
        &r.utm_source,
        &r.utm_medium,
        &r.utm_campaign,
        &r.utm_content,
        &r.utm_term,
        &r.country,
        &r.browser,
        &r.browser_version,
        &r.os,
        &r.device,
        &r.currency,
    ]
}

/// Bytes of a block's header, counts and base time at most.
pub const BLOCK_HEADER_BOUND: usize = 4 + 10 + 10 + 10;
/// Bytes of one event besides its strings at most: id kind, counter, time, bitmap, visitor,
/// flags, value, scroll depth, engaged ms and the two counts.
const EVENT_BOUND: usize = 10 * 4 + 4 + 8 + 1 + 8 + 1 + 10 + 10 + 10;
/// Bytes of one string besides its own at most: its index in the event and its length in
/// the dictionary, varints of values below 2^28 (4 bytes each; strings are bounded by the
/// gateway's limits, indices by the events of a message).
const STRING_OVERHEAD: usize = 10;

/// The most bytes `record` adds to a block (every string counted with its length prefix,
/// as if no other event shared it), so a message's size is known before it is encoded.
pub fn block_size_bound(record: &EventRecord) -> usize {
    let strings: usize = [record.site.as_str(), record.id.as_str()]
        .into_iter()
        .chain(fields(record))
        .map(|s| s.len() + STRING_OVERHEAD)
        .sum();
    let props: usize = record.props.iter().map(|(k, v)| k.len() + v.len() + 2 * STRING_OVERHEAD).sum();
    let uniques: usize = record.uniques.keys().map(|k| k.len() + STRING_OVERHEAD + 8).sum();
    EVENT_BOUND + strings + props + uniques
}

const FLAG_VALUE: u8 = 1;
const FLAG_NOT_INTERACTIVE: u8 = 2;
const FLAG_SCROLL: u8 = 4;
const FLAG_ENGAGED: u8 = 8;
const ID_STRING: u64 = 0;
const ID_COUNTER: u64 = 1;
/// Hex digits of a gateway id's counter.
const COUNTER_DIGITS: usize = 10;

/// Writes `records` as one compact block into `out` (cleared first).
pub fn encode_block(records: &[EventRecord], out: &mut Vec<u8>) {
    let mut writer = BlockWriter::with_capacity(records.len());
    for record in records {
        writer.record(record);
    }
    writer.finish(out);
}

/// Writes one block from records and from blocks written before (the parts of one message
/// that requests wrote on their own tasks), with one dictionary for all, in the order they
/// are added. A block is carried over without decoding its events: its string indices are
/// renumbered into the shared dictionary and its times moved to the shared base.
#[derive(Default)]
pub struct BlockWriter<'a> {
    dictionary: Dictionary<'a>,
    body: Vec<u8>,
    count: u64,
    /// The first event's time: the block's base (events store their difference to it).
    base: Option<i64>,
    /// For the block being carried over: its dictionary index → the shared one.
    renumber: Vec<u64>,
}

impl std::fmt::Debug for BlockWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockWriter")
            .field("events", &self.count)
            .field("strings", &self.dictionary.strings.len())
            .finish()
    }
}

impl<'a> BlockWriter<'a> {
    /// A writer sized for about `events` events.
    pub fn with_capacity(events: usize) -> Self {
        let mut writer = Self::default();
        writer.dictionary.index.reserve(events / 2 + 64);
        writer.body.reserve(events * 48);
        writer
    }

    /// Events written so far.
    pub fn events(&self) -> u64 {
        self.count
    }

    /// Adds `r`.
    pub fn record(&mut self, r: &'a EventRecord) {
        let base = *self.base.get_or_insert(r.ts);
        let (dictionary, body) = (&mut self.dictionary, &mut self.body);
        write_varint(dictionary.index(&r.site), body);
        match split_counter(&r.id) {
            Some((prefix, counter)) => {
                write_varint(ID_COUNTER, body);
                write_varint(dictionary.index(prefix), body);
                write_varint(counter, body);
            }
            None => {
                write_varint(ID_STRING, body);
                write_varint(dictionary.index(&r.id), body);
            }
        }
        write_varint(zigzag(r.ts.wrapping_sub(base)), body);
        let strings = fields(r);
        let present = strings.iter().enumerate().filter(|(_, s)| !s.is_empty()).fold(0u64, |m, (i, _)| m | 1 << i);
        write_varint(present, body);
        for (field, s) in strings.iter().enumerate().filter(|(_, s)| !s.is_empty()) {
            write_varint(dictionary.field_index(field, s), body);
        }
        body.extend_from_slice(&r.visitor.to_le_bytes());
        let mut flags = 0;
        flags |= if r.value.is_some() { FLAG_VALUE } else { 0 };
        flags |= if r.interactive { 0 } else { FLAG_NOT_INTERACTIVE };
        flags |= if r.scroll_depth.is_some() { FLAG_SCROLL } else { 0 };
        flags |= if r.engaged_ms.is_some() { FLAG_ENGAGED } else { 0 };
        body.push(flags);
        if let Some(value) = r.value {
            body.extend_from_slice(&value.to_le_bytes());
        }
        if let Some(depth) = r.scroll_depth {
            body.push(depth);
        }
        if let Some(ms) = r.engaged_ms {
            write_varint(ms, body);
        }
        write_varint(r.props.len() as u64, body);
        for (key, value) in &r.props {
            write_varint(dictionary.index(key), body);
            write_varint(dictionary.index(value), body);
        }
        write_varint(r.uniques.len() as u64, body);
        for (name, hash) in &r.uniques {
            write_varint(dictionary.index(name), body);
            body.extend_from_slice(&hash.to_le_bytes());
        }
        self.count += 1;
    }

    /// Adds every event of `block`, checked as [`decode_block`] checks it. On an error the
    /// writer is left as it was.
    pub fn block(&mut self, block: &'a [u8]) -> Result<(), BlockError> {
        let mut r = Reader { bytes: block, at: 0 };
        let head = read_head(&mut r)?;
        let (body_len, dictionary_len, base) = (self.body.len(), self.dictionary.strings.len(), self.base);
        let carried = self.carry(&mut r, &head);
        if carried.is_err() {
            self.body.truncate(body_len);
            self.dictionary.truncate(dictionary_len);
            self.base = base;
        }
        carried
    }

    fn carry(&mut self, r: &mut Reader<'a>, head: &Head<'a>) -> Result<(), BlockError> {
        let base = *self.base.get_or_insert(head.base);
        let shift = head.base.wrapping_sub(base);
        self.renumber.clear();
        self.renumber.extend(head.dictionary.iter().map(|s| self.dictionary.index(s)));
        let (renumber, body) = (&self.renumber, &mut self.body);
        let string = |r: &mut Reader<'a>, body: &mut Vec<u8>, what: &'static str| -> Result<(), BlockError> {
            let start = r.at;
            let index = r.varint(what)?;
            let shared = usize::try_from(index).ok().and_then(|i| renumber.get(i)).ok_or_else(|| {
                r.corrupt(start, format!("{what}: string {index} of a dictionary of {}", renumber.len()))
            })?;
            write_varint(*shared, body);
            Ok(())
        };
        for _ in 0..head.count {
            string(r, body, "a site")?;
            match r.varint("an id's kind")? {
                ID_STRING => {
                    write_varint(ID_STRING, body);
                    string(r, body, "an id")?;
                }
                ID_COUNTER => {
                    write_varint(ID_COUNTER, body);
                    string(r, body, "an id's prefix")?;
                    write_varint(r.varint("an id's counter")?, body);
                }
                other => return Err(r.corrupt(r.at, format!("id kind {other} (expected 0 or 1)"))),
            }
            let ts = unzigzag(r.varint("a time")?).wrapping_add(shift);
            write_varint(zigzag(ts), body);
            let present = read_bitmap(r)?;
            write_varint(present, body);
            for i in 0..FIELDS {
                if present & 1 << i != 0 {
                    string(r, body, "a field")?;
                }
            }
            body.extend_from_slice(r.take(8, "a visitor")?);
            let flags = read_flags(r)?;
            body.push(flags);
            if flags & FLAG_VALUE != 0 {
                body.extend_from_slice(r.take(8, "a value")?);
            }
            if flags & FLAG_SCROLL != 0 {
                body.extend_from_slice(r.take(1, "a scroll depth")?);
            }
            if flags & FLAG_ENGAGED != 0 {
                write_varint(r.varint("engaged ms")?, body);
            }
            let props = r.count("the property count", 2)?;
            write_varint(props as u64, body);
            for _ in 0..props {
                string(r, body, "a property key")?;
                string(r, body, "a property value")?;
            }
            let uniques = r.count("the identifier count", 9)?;
            write_varint(uniques as u64, body);
            for _ in 0..uniques {
                string(r, body, "an identifier name")?;
                body.extend_from_slice(r.take(8, "an identifier")?);
            }
        }
        if r.at != r.bytes.len() {
            return Err(r.corrupt(r.at, format!("{} bytes after the last event", r.bytes.len() - r.at)));
        }
        self.count += head.count as u64;
        Ok(())
    }

    /// Writes the block into `out` (cleared first).
    pub fn finish(&self, out: &mut Vec<u8>) {
        out.clear();
        let dictionary_bytes: usize = self.dictionary.strings.iter().map(|s| s.len() + 2).sum();
        out.reserve(BLOCK_HEADER_BOUND + 10 + dictionary_bytes + self.body.len());
        out.extend_from_slice(&BLOCK_MAGIC);
        out.push(BLOCK_VERSION);
        write_varint(self.count, out);
        write_varint(zigzag(self.base.unwrap_or(0)), out);
        write_varint(self.dictionary.strings.len() as u64, out);
        for s in &self.dictionary.strings {
            write_varint(s.len() as u64, out);
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(&self.body);
    }
}

/// A gateway id (`<prefix><counter in 10 lower-case hex digits>`) as its two parts.
fn split_counter(id: &str) -> Option<(&str, u64)> {
    let cut = id.len().checked_sub(COUNTER_DIGITS)?;
    let (prefix, digits) = (id.get(..cut)?, id.get(cut..)?);
    // Exactly ten lower-case hex digits: `{counter:010x}` writes the very same text back.
    if !digits.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    Some((prefix, u64::from_str_radix(digits, 16).ok()?))
}

/// Distinct strings of a block, each with its index (0 is the empty string).
struct Dictionary<'a> {
    strings: Vec<&'a str>,
    index: HashMap<&'a str, u64, foldhash::fast::FixedState>,
    /// The string each field had last and its index: a request's events share the
    /// sender's browser, OS, device and country, and often site, name and host, so most
    /// fields are found by one comparison instead of a hash lookup.
    last: [(&'a str, u64); FIELDS],
}

impl Default for Dictionary<'_> {
    fn default() -> Self {
        Self { strings: Vec::new(), index: HashMap::default(), last: [("", 0); FIELDS] }
    }
}

impl<'a> Dictionary<'a> {
    /// Forgets every string past the first `len`.
    fn truncate(&mut self, len: usize) {
        for s in self.strings.drain(len..) {
            self.index.remove(s);
        }
        self.last = [("", 0); FIELDS];
    }

    /// [`Self::index`] of `s`, the value of string field `field`.
    fn field_index(&mut self, field: usize, s: &'a str) -> u64 {
        let (last, index) = self.last[field];
        if last == s {
            return index;
        }
        let index = self.index(s);
        self.last[field] = (s, index);
        index
    }

    fn index(&mut self, s: &'a str) -> u64 {
        if s.is_empty() {
            return 0;
        }
        let next = self.strings.len() as u64 + 1;
        *self.index.entry(s).or_insert_with(|| {
            self.strings.push(s);
            next
        })
    }
}

/// One record of a decoded block: strings borrowed from the block's dictionary.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockEvent<'a> {
    site: &'a str,
    id: IdParts<'a>,
    ts: i64,
    strings: [&'a str; FIELDS],
    visitor: u64,
    value: Option<f64>,
    interactive: bool,
    scroll_depth: Option<u8>,
    engaged_ms: Option<u64>,
    props: Vec<(&'a str, &'a str)>,
    uniques: Vec<(&'a str, u64)>,
}

#[derive(Debug, Clone, PartialEq)]
enum IdParts<'a> {
    Whole(&'a str),
    Counter(&'a str, u64),
}

impl BlockEvent<'_> {
    /// The event id as the gateway wrote it.
    pub fn id(&self) -> String {
        match self.id {
            IdParts::Whole(id) => id.to_owned(),
            IdParts::Counter(prefix, counter) => format!("{prefix}{counter:010x}"),
        }
    }

    /// The owned record with the same content.
    pub fn to_record(&self) -> EventRecord {
        let s = |i: usize| self.strings[i].to_owned();
        EventRecord {
            v: FORMAT_VERSION,
            site: self.site.to_owned(),
            id: self.id(),
            ts: self.ts,
            name: s(0),
            host: s(1),
            path: s(2),
            referrer: s(3),
            ref_host: s(4),
            source: s(5),
            utm_source: s(6),
            utm_medium: s(7),
            utm_campaign: s(8),
            utm_content: s(9),
            utm_term: s(10),
            country: s(11),
            browser: s(12),
            browser_version: s(13),
            os: s(14),
            device: s(15),
            currency: s(16),
            visitor: self.visitor,
            props: self.props.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            uniques: self.uniques.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            value: self.value,
            interactive: self.interactive,
            scroll_depth: self.scroll_depth,
            engaged_ms: self.engaged_ms,
        }
    }
}

impl EventFields for BlockEvent<'_> {
    fn site(&self) -> &str {
        self.site
    }
    fn name(&self) -> &str {
        self.strings[0]
    }
    fn ts(&self) -> i64 {
        self.ts
    }
    fn host(&self) -> &str {
        self.strings[1]
    }
    fn path(&self) -> &str {
        self.strings[2]
    }
    fn referrer(&self) -> &str {
        self.strings[3]
    }
    fn ref_host(&self) -> &str {
        self.strings[4]
    }
    fn source(&self) -> &str {
        self.strings[5]
    }
    fn utm_source(&self) -> &str {
        self.strings[6]
    }
    fn utm_medium(&self) -> &str {
        self.strings[7]
    }
    fn utm_campaign(&self) -> &str {
        self.strings[8]
    }
    fn utm_content(&self) -> &str {
        self.strings[9]
    }
    fn utm_term(&self) -> &str {
        self.strings[10]
    }
    fn country(&self) -> &str {
        self.strings[11]
    }
    fn browser(&self) -> &str {
        self.strings[12]
    }
    fn browser_version(&self) -> &str {
        self.strings[13]
    }
    fn os(&self) -> &str {
        self.strings[14]
    }
    fn device(&self) -> &str {
        self.strings[15]
    }
    fn currency(&self) -> &str {
        self.strings[16]
    }
    fn visitor(&self) -> u64 {
        self.visitor
    }
    fn value(&self) -> Option<f64> {
        self.value
    }
    fn interactive(&self) -> bool {
        self.interactive
    }
    fn scroll_depth(&self) -> Option<u8> {
        self.scroll_depth
    }
    fn engaged_ms(&self) -> Option<u64> {
        self.engaged_ms
    }
    fn prop(&self, key: &str) -> Option<&str> {
        self.props.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
    fn props(&self) -> impl Iterator<Item = (&str, &str)> {
        self.props.iter().copied()
    }
    fn unique(&self, name: &str) -> Option<u64> {
        self.uniques.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }
}

/// Decodes a whole compact block; any flaw refuses it whole.
pub fn decode_block(payload: &[u8]) -> Result<Vec<BlockEvent<'_>>, BlockError> {
    let mut r = Reader { bytes: payload, at: 0 };
    let Head { count, base, dictionary } = read_head(&mut r)?;
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        let site = r.string(&dictionary, "a site")?;
        let id = match r.varint("an id's kind")? {
            ID_STRING => IdParts::Whole(r.string(&dictionary, "an id")?),
            ID_COUNTER => IdParts::Counter(r.string(&dictionary, "an id's prefix")?, r.varint("an id's counter")?),
            other => return Err(r.corrupt(r.at, format!("id kind {other} (expected 0 or 1)"))),
        };
        let ts = base.wrapping_add(unzigzag(r.varint("a time")?));
        let present = read_bitmap(&mut r)?;
        let mut strings = [""; FIELDS];
        for (i, slot) in strings.iter_mut().enumerate() {
            if present & 1 << i != 0 {
                *slot = r.string(&dictionary, "a field")?;
            }
        }
        let visitor = r.u64("a visitor")?;
        let flags = read_flags(&mut r)?;
        let value = if flags & FLAG_VALUE != 0 { Some(f64::from_bits(r.u64("a value")?)) } else { None };
        let scroll_depth = if flags & FLAG_SCROLL != 0 { Some(r.take(1, "a scroll depth")?[0]) } else { None };
        let engaged_ms = if flags & FLAG_ENGAGED != 0 { Some(r.varint("engaged ms")?) } else { None };
        let props_len = r.count("the property count", 2)?;
        let mut props: Vec<(&str, &str)> = Vec::with_capacity(props_len);
        for _ in 0..props_len {
            let (key, value) = (r.string(&dictionary, "a property key")?, r.string(&dictionary, "a property value")?);
            // As in the JSON forms: a key once, the last value wins.
            match props.iter_mut().find(|(k, _)| *k == key) {
                Some(existing) => existing.1 = value,
                None => props.push((key, value)),
            }
        }
        let uniques_len = r.count("the identifier count", 9)?;
        let mut uniques: Vec<(&str, u64)> = Vec::with_capacity(uniques_len);
        for _ in 0..uniques_len {
            let (name, hash) = (r.string(&dictionary, "an identifier name")?, r.u64("an identifier")?);
            match uniques.iter_mut().find(|(k, _)| *k == name) {
                Some(existing) => existing.1 = hash,
                None => uniques.push((name, hash)),
            }
        }
        events.push(BlockEvent {
            site,
            id,
            ts,
            strings,
            visitor,
            value,
            interactive: flags & FLAG_NOT_INTERACTIVE == 0,
            scroll_depth,
            engaged_ms,
            props,
            uniques,
        });
    }
    if r.at != payload.len() {
        return Err(r.corrupt(r.at, format!("{} bytes after the last event", payload.len() - r.at)));
    }
    Ok(events)
}

/// What precedes a block's events.
struct Head<'a> {
    count: usize,
    base: i64,
    /// Index 0 is the empty string.
    dictionary: Vec<&'a str>,
}

/// Reads the header, counts, base time and dictionary of a block.
fn read_head<'a>(r: &mut Reader<'a>) -> Result<Head<'a>, BlockError> {
    let magic = r.take(4, "the header")?;
    if magic[..3] != BLOCK_MAGIC {
        return Err(r.corrupt(0, "not a compact block (no 0x00 'G' 'B' header)".to_owned()));
    }
    if magic[3] != BLOCK_VERSION {
        return Err(BlockError::Version(magic[3]));
    }
    // An event takes at least 16 bytes (site, id, time, bitmap, visitor, flags, counts).
    let count = r.count("the event count", 16)?;
    let base = unzigzag(r.varint("the base time")?);
    let entries = r.count("the dictionary size", 1)?;
    let mut dictionary: Vec<&str> = Vec::with_capacity(entries + 1);
    dictionary.push("");
    for entry in 0..entries {
        let at = r.at;
        let len = r.count("a dictionary entry's length", 1)?;
        let bytes = r.take(len, "a dictionary entry")?;
        let text = std::str::from_utf8(bytes)
            .map_err(|e| r.corrupt(at, format!("dictionary entry {} is not UTF-8 ({e})", entry + 1)))?;
        if text.is_empty() {
            return Err(r.corrupt(at, format!("dictionary entry {} is empty (the empty string is entry 0)", entry + 1)));
        }
        dictionary.push(text);
    }
    Ok(Head { count, base, dictionary })
}

/// Reads an event's bitmap of present string fields.
fn read_bitmap(r: &mut Reader<'_>) -> Result<u64, BlockError> {
    let at = r.at;
    let present = r.varint("the field bitmap")?;
    if present >> FIELDS != 0 {
        return Err(r.corrupt(at, format!("field bitmap {present:#x} names fields past the {FIELDS} there are")));
    }
    Ok(present)
}

/// Reads an event's flags byte.
fn read_flags(r: &mut Reader<'_>) -> Result<u8, BlockError> {
    let at = r.at;
    let flags = r.take(1, "the flags")?[0];
    if flags & !(FLAG_VALUE | FLAG_NOT_INTERACTIVE | FLAG_SCROLL | FLAG_ENGAGED) != 0 {
        return Err(r.corrupt(at, format!("unknown flags {flags:#04x}")));
    }
    Ok(flags)
}

/// A cursor over a block's bytes; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn truncated(&self, what: &'static str) -> BlockError {
        BlockError::Truncated { what, offset: self.bytes.len() }
    }

    fn corrupt(&self, offset: usize, reason: String) -> BlockError {
        BlockError::Corrupt { offset, reason }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], BlockError> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len()).ok_or_else(|| self.truncated(what))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, BlockError> {
        let bytes = self.take(8, what)?;
        let mut le = [0u8; 8];
        le.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(le))
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, BlockError> {
        read_varint(self.bytes, &mut self.at).map_err(|e| match e {
            VarintError::Truncated { .. } => self.truncated(what),
            VarintError::TooLong { .. } => self.corrupt(self.at, format!("{what}: a varint past 64 bits")),
        })
    }

    /// A count of items of at least `min_bytes` each: never more than the bytes left can hold.
    fn count(&mut self, what: &'static str, min_bytes: usize) -> Result<usize, BlockError> {
        let start = self.at;
        let n = self.varint(what)?;
        let left = (self.bytes.len() - self.at) / min_bytes.max(1);
        usize::try_from(n).ok().filter(|&n| n <= left).ok_or_else(|| {
            self.corrupt(start, format!("{what} is {n}, more than the {left} the rest of the block can hold"))
        })
    }

    fn string(&mut self, dictionary: &[&'a str], what: &'static str) -> Result<&'a str, BlockError> {
        let start = self.at;
        let index = self.varint(what)?;
        usize::try_from(index).ok().and_then(|i| dictionary.get(i)).copied().ok_or_else(|| {
            self.corrupt(start, format!("{what}: string {index} of a dictionary of {}", dictionary.len()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: u64) -> EventRecord {
        let mut r = EventRecord::new();
        r.site = "example.com".into();
        r.id = format!("9f3a55d2c0b1e4a7{i:010x}");
        r.ts = 1_795_737_600_000 + i as i64 * 17;
        r.name = if i % 3 == 0 { "signup".into() } else { "pageview".into() };
        r.host = "example.com".into();
        r.path = format!("/p{}", i % 5);
        r.country = "DE".into();
        r.browser = "Firefox".into();
        r.browser_version = "121".into();
        r.os = "Windows".into();
        r.device = "desktop".into();
        r.visitor = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        if i % 3 == 0 {
            r.props.insert("plan".into(), "pro".into());
            r.value = Some(12.5);
            r.currency = "EUR".into();
        }
        if i % 7 == 0 {
            r.id = format!("client-{i}");
            r.interactive = false;
            r.uniques.insert("ip".into(), u64::MAX - i);
        }
        r
    }

    #[test]
    fn round_trips_and_is_small() {
        let records: Vec<EventRecord> = (0..1000).map(sample).collect();
        let mut block = Vec::new();
        encode_block(&records, &mut block);
        assert_eq!(MessageFormat::of(&block), MessageFormat::Block(BLOCK_VERSION));
        let decoded: Vec<EventRecord> =
            decode_block(&block).expect("decodes").iter().map(BlockEvent::to_record).collect();
        assert_eq!(decoded, records);
        let mut ndjson = Vec::new();
        for r in &records {
            crate::encode_into(r, &mut ndjson);
        }
        assert_eq!(MessageFormat::of(&ndjson), MessageFormat::Ndjson);
        let per_event = block.len() / records.len();
        assert!(per_event < 50, "{per_event} bytes per event (NDJSON: {})", ndjson.len() / records.len());
    }

    #[test]
    fn gateway_ids_split_only_when_they_come_back_the_same() {
        assert_eq!(split_counter("abc00000000ff"), Some(("abc", 255)));
        assert_eq!(split_counter("00000000ff"), Some(("", 255)));
        for id in ["abc00000000FF", "abc0000_00ff", "abc+000000ff", "x", ""] {
            assert_eq!(split_counter(id), None, "{id}");
        }
    }

    #[test]
    fn every_truncation_and_flipped_byte_is_refused_or_read_without_panic() {
        let records: Vec<EventRecord> = (0..30).map(sample).collect();
        let mut block = Vec::new();
        encode_block(&records, &mut block);
        for cut in 0..block.len() {
            let err = decode_block(&block[..cut]).expect_err("a cut block is refused");
            assert!(matches!(err, BlockError::Truncated { .. } | BlockError::Corrupt { .. }), "{cut}: {err}");
        }
        for at in 4..block.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = block.clone();
                bad[at] ^= flip;
                // Either refused, or read into records that encode again.
                if let Ok(events) = decode_block(&bad) {
                    let again: Vec<EventRecord> = events.iter().map(BlockEvent::to_record).collect();
                    let mut out = Vec::new();
                    encode_block(&again, &mut out);
                    assert_eq!(decode_block(&out).map(|e| e.len()), Ok(again.len()));
                }
            }
        }
        let mut trailing = block.clone();
        trailing.push(0);
        assert!(decode_block(&trailing).is_err_and(|e| e.to_string().contains("1 bytes after the last event")));
        let mut future = block;
        future[3] = 9;
        assert_eq!(decode_block(&future), Err(BlockError::Version(9)));
    }

    fn arbitrary_record() -> impl proptest::strategy::Strategy<Value = EventRecord> {
        use proptest::prelude::*;
        let text = || prop_oneof![Just(String::new()), "[a-z/.~:é ]{1,12}", "\\PC{0,6}"];
        (
            (text(), text(), any::<i64>(), proptest::collection::vec(text(), FIELDS)),
            (any::<u64>(), proptest::option::of(any::<f64>()), any::<bool>(), proptest::option::of(any::<u8>())),
            (
                proptest::option::of(any::<u64>()),
                proptest::collection::btree_map("[a-z]{1,6}", text(), 0..4),
                proptest::collection::btree_map("[a-z]{1,6}", any::<u64>(), 0..3),
                any::<u32>(),
            ),
        )
            .prop_map(|((site, id, ts, strings), (visitor, value, interactive, depth), (engaged, props, uniques, counter))| {
                let mut r = EventRecord::new();
                r.site = site;
                // Half the ids in the gateway's own form.
                r.id = if counter % 2 == 0 { format!("{id}{:010x}", u64::from(counter)) } else { id };
                r.ts = ts;
                let [name, host, path, referrer, ref_host, source, utm_source, utm_medium, utm_campaign, utm_content, utm_term, country, browser, browser_version, os, device, currency] =
                    <[String; FIELDS]>::try_from(strings).unwrap_or_default();
                (r.name, r.host, r.path, r.referrer, r.ref_host, r.source) = (name, host, path, referrer, ref_host, source);
                (r.utm_source, r.utm_medium, r.utm_campaign, r.utm_content, r.utm_term) =
                    (utm_source, utm_medium, utm_campaign, utm_content, utm_term);
                (r.country, r.browser, r.browser_version, r.os, r.device, r.currency) =
                    (country, browser, browser_version, os, device, currency);
                (r.visitor, r.value, r.interactive, r.scroll_depth, r.engaged_ms) = (visitor, value, interactive, depth, engaged);
                r.props = props;
                r.uniques = uniques;
                r
            })
    }

    /// Writes `groups` into one block: odd groups as records, even ones as blocks of their own
    /// carried over.
    fn written_by_parts(groups: &[Vec<EventRecord>]) -> Vec<u8> {
        let parts: Vec<Vec<u8>> = groups
            .iter()
            .map(|g| {
                let mut block = Vec::new();
                encode_block(g, &mut block);
                block
            })
            .collect();
        let mut writer = BlockWriter::default();
        for (i, (group, block)) in groups.iter().zip(&parts).enumerate() {
            if i % 2 == 0 {
                writer.block(block).expect("a block just written");
            } else {
                group.iter().for_each(|r| writer.record(r));
            }
        }
        let mut out = Vec::new();
        writer.finish(&mut out);
        out
    }

    #[test]
    fn blocks_carried_over_read_as_their_records_with_one_dictionary() {
        // Times before and after the first part's base, far apart: the base moves.
        let mut records: Vec<EventRecord> = (0..90).map(sample).collect();
        records[40].ts = 1;
        records[70].ts = i64::MAX - 5;
        let groups: Vec<Vec<EventRecord>> = records.chunks(30).map(<[EventRecord]>::to_vec).collect();
        let block = written_by_parts(&groups);
        let back: Vec<EventRecord> = decode_block(&block).expect("decodes").iter().map(BlockEvent::to_record).collect();
        assert_eq!(back, records);
        let mut whole = Vec::new();
        encode_block(&records, &mut whole);
        assert_eq!(block.len(), whole.len(), "the same dictionary as one block of all records");
    }

    #[test]
    fn a_flawed_block_is_refused_and_leaves_the_writer_as_it_was() {
        let records: Vec<EventRecord> = (0..20).map(sample).collect();
        let (first, second) = records.split_at(10);
        let (mut one, mut two) = (Vec::new(), Vec::new());
        encode_block(first, &mut one);
        encode_block(second, &mut two);
        let mut writer = BlockWriter::default();
        assert!(writer.block(&two[..two.len() - 1]).is_err());
        assert_eq!(format!("{writer:?}"), format!("{:?}", BlockWriter::default()));
        assert_eq!(writer.base, None, "a refused first block leaves no base");
        writer.block(&one).expect("whole");
        for cut in 0..two.len() {
            let err = writer.block(&two[..cut]).expect_err("a cut block is refused");
            let decoded = decode_block(&two[..cut]).expect_err("refused by the decoder too");
            assert_eq!(err, decoded, "{cut}");
        }
        let mut trailing = two.clone();
        trailing.push(0);
        assert!(writer.block(&trailing).is_err());
        assert_eq!(writer.events(), 10);
        writer.block(&two).expect("whole");
        let mut out = Vec::new();
        writer.finish(&mut out);
        let back: Vec<EventRecord> = decode_block(&out).expect("decodes").iter().map(BlockEvent::to_record).collect();
        assert_eq!(back, records);

        // Records written around a refused block keep their strings.
        let mut writer = BlockWriter::default();
        writer.record(&first[0]);
        assert!(writer.block(&two[..two.len() - 1]).is_err());
        writer.record(&first[0]);
        writer.block(&two).expect("whole");
        writer.record(&first[1]);
        writer.record(&first[0]);
        let mut out = Vec::new();
        writer.finish(&mut out);
        let back: Vec<EventRecord> = decode_block(&out).expect("decodes").iter().map(BlockEvent::to_record).collect();
        let expect: Vec<EventRecord> = [&first[..1], &first[..1], second, &first[1..2], &first[..1]].concat();
        assert_eq!(back, expect);
    }

    proptest::proptest! {
        #[test]
        fn any_records_survive_writing_by_parts(
            groups in proptest::collection::vec(proptest::collection::vec(arbitrary_record(), 0..12), 0..6),
        ) {
            let block = written_by_parts(&groups);
            let decoded: Vec<EventRecord> = decode_block(&block).expect("decodes").iter().map(BlockEvent::to_record).collect();
            let records: Vec<EventRecord> = groups.concat();
            proptest::prop_assert_eq!(format!("{decoded:?}"), format!("{records:?}"));
        }

        #[test]
        fn any_records_survive_encoding(records in proptest::collection::vec(arbitrary_record(), 0..40)) {
            let mut block = Vec::new();
            encode_block(&records, &mut block);
            let decoded: Vec<EventRecord> = decode_block(&block).expect("decodes").iter().map(BlockEvent::to_record).collect();
            // Debug compares values by their shortest text: equal bits, NaN included.
            proptest::prop_assert_eq!(format!("{decoded:?}"), format!("{records:?}"));
        }
    }

    /// A block written from the layout in this module's docs by another encoder (Python; the
    /// fuzz target's seed) reads as that encoder meant it.
    #[test]
    fn a_block_written_from_the_documented_layout_reads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/block_message/two-events");
        let bytes = std::fs::read(path).expect("the seed block");
        let events = decode_block(&bytes).expect("decodes");
        let records: Vec<EventRecord> = events.iter().map(BlockEvent::to_record).collect();
        let (first, second) = (&records[0], &records[1]);
        assert_eq!((first.site.as_str(), first.id.as_str(), first.ts), ("a.test", "run-000000004d", 1_795_737_600_000));
        assert_eq!((first.name.as_str(), first.path.as_str(), first.visitor), ("pageview", "pageview", 7));
        assert_eq!((first.value, first.props.get("plan").map(String::as_str)), (Some(12.5), Some("pro")));
        assert_eq!(first.uniques.get("ip"), Some(&u64::MAX));
        assert_eq!((second.id.as_str(), second.ts, second.name.as_str()), ("a.test", 1_795_737_599_995, ""));
        assert_eq!((second.interactive, second.scroll_depth, second.engaged_ms), (false, Some(40), Some(1500)));
    }

    #[test]
    fn reasons_name_what_and_where() {
        let err = decode_block(&[0, b'G', b'B', 2, 0x80]).expect_err("cut varint");
        assert_eq!(err.to_string(), "compact block truncated at byte 5: the event count is cut off");
        let err = decode_block(&[0, b'G', b'B', 2, 50, 0, 0]).expect_err("too many events");
        assert_eq!(
            err.to_string(),
            "compact block corrupt at byte 4: the event count is 50, more than the 0 the rest of the block can hold"
        );
    }
}
