//! The stored form of open visits: many visits of one partition in one compact binary value.
//!
//! Every flush stores each visit that changed (see the processor's `session` module), which
//! with short visits is about one visit per event. Stored as one JSON object per row, those
//! rows were most of what the pipeline wrote and ClickHouse's largest cost. Now one row
//! holds up to [`VISITS_PER_ROW`] visits of a partition, each distinct string once:
//!
//! ```text
//! value   = <partition:010> "/" 00 'V' 'S' 01 dictionary visits
//! dictionary = varint n, n × (varint length, UTF-8 bytes)       entry 0 is "" and not written
//! visits  = varint n, n × visit
//! visit   = site, visitor (u64 LE), seq, bucket, first_ts (zigzag), last_ts − first_ts,
//!           exit_ts − first_ts (zigzag), interactive, entry_page, exit_page, source,
//!           country, device, browser, os, ended (1 byte), varint pages,
//!           pages × (path, scroll depth (1 byte), bucket)
//! ```
//!
//! Strings are dictionary indexes, numbers unsigned LEB128 varints unless noted. Rows written
//! before this form hold one visit as a JSON object (`<partition:010>/{…}`) and still read.

use gallop_codec::{read_varint, unzigzag, write_varint, zigzag, VarintError};
use gallop_processor::{ChangedVisits, EngagedPage, SessionState};

/// Visits per stored row: a row per few hundred visits of a partition instead of a row per
/// visit (ClickHouse sorts and merges rows; its cost per row dominated).
pub(crate) const VISITS_PER_ROW: usize = 256;

/// What follows `<partition:010>/` in a compact row: a zero byte (JSON never starts so),
/// "VS", the form's version.
const MAGIC: [u8; 4] = [0, b'V', b'S', 1];

/// Where each string of a flush's table went in the row being written: a row's dictionary
/// holds only the strings its visits use, found again by the flush's index, not by hashing.
#[derive(Default)]
pub(crate) struct RowDictionary {
    /// Per flush string: (row stamp, index in the row's dictionary).
    slots: Vec<(u32, u32)>,
    /// Flush string indexes in the row's dictionary order (entry 0, `""`, not included).
    order: Vec<u32>,
    stamp: u32,
}

impl RowDictionary {
    /// Starts the dictionary of a new row over `changed`'s table.
    fn start(&mut self, changed: &ChangedVisits) {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.slots.clear();
            self.stamp = 1;
        }
        if self.slots.len() < changed.strings() {
            self.slots.resize(changed.strings(), (0, 0));
        }
        self.order.clear();
    }

    /// The row's index of the flush's string `index`.
    fn index(&mut self, index: u32) -> u64 {
        if index == 0 {
            return 0;
        }
        let Some(slot) = self.slots.get_mut(index as usize) else { return 0 };
        if slot.0 != self.stamp {
            self.order.push(index);
            // A row holds at most VISITS_PER_ROW visits of a few dozen strings each.
            *slot = (self.stamp, self.order.len() as u32);
        }
        u64::from(slot.1)
    }
}

/// Appends the compact form of the visits `chunk` (indexes into `changed`'s visits, all of
/// one partition) to `out`.
pub(crate) fn encode_visits(changed: &ChangedVisits, chunk: &[u32], dictionary: &mut RowDictionary, out: &mut Vec<u8>) {
    dictionary.start(changed);
    let mut body = Vec::with_capacity(chunk.len() * 40);
    let visits: Vec<_> = chunk.iter().filter_map(|&i| changed.visits().get(i as usize)).collect();
    // The visits go to their own buffer, so the dictionary they fill can be written first.
    write_varint(visits.len() as u64, &mut body);
    for visit in visits {
        write_varint(dictionary.index(visit.site), &mut body);
        body.extend_from_slice(&visit.visitor.to_le_bytes());
        write_varint(visit.seq, &mut body);
        write_varint(u64::from(visit.bucket), &mut body);
        write_varint(zigzag(visit.first_ts), &mut body);
        write_varint(visit.last_ts.wrapping_sub(visit.first_ts) as u64, &mut body);
        write_varint(zigzag(visit.exit_ts.wrapping_sub(visit.first_ts)), &mut body);
        write_varint(u64::from(visit.interactive), &mut body);
        for &attribute in &visit.attributes {
            write_varint(dictionary.index(attribute), &mut body);
        }
        body.push(u8::from(visit.ended));
        write_varint(visit.pages.len() as u64, &mut body);
        for page in &visit.pages {
            write_varint(dictionary.index(page.path), &mut body);
            body.push(page.scroll_depth);
            write_varint(u64::from(page.bucket), &mut body);
        }
    }
    out.extend_from_slice(&MAGIC);
    write_varint(dictionary.order.len() as u64, out);
    for &index in &dictionary.order {
        let entry = changed.string(index);
        write_varint(entry.len() as u64, out);
        out.extend_from_slice(entry.as_bytes());
    }
    out.extend_from_slice(&body);
}

/// Whether `payload` (what follows `<partition:010>/`) is in the compact form.
pub(crate) fn is_compact(payload: &[u8]) -> bool {
    payload.starts_with(&MAGIC[..3])
}

/// Reads the compact form back; the error says what was wrong and at which byte.
pub(crate) fn decode_visits(payload: &[u8]) -> Result<Vec<SessionState>, String> {
    let mut r = Reader { bytes: payload, at: 0 };
    let magic = r.take(MAGIC.len(), "the header")?;
    if magic[..3] != MAGIC[..3] {
        return Err("not a compact visits value (no 00 'V' 'S' header)".to_owned());
    }
    if magic[3] != MAGIC[3] {
        return Err(format!("compact visits version {} (this build reads {})", magic[3], MAGIC[3]));
    }
    let entries = r.count("the dictionary size", 1)?;
    let mut dictionary: Vec<&str> = Vec::with_capacity(entries + 1);
    dictionary.push("");
    for _ in 0..entries {
        let at = r.at;
        let len = r.count("a string's length", 1)?;
        let text = std::str::from_utf8(r.take(len, "a string")?)
            .map_err(|e| format!("byte {at}: a dictionary string is not UTF-8 ({e})"))?;
        dictionary.push(text);
    }
    // A visit takes at least 26 bytes.
    let count = r.count("the visit count", 26)?;
    let mut states = Vec::with_capacity(count);
    for _ in 0..count {
        let site = r.string(&dictionary, "a site")?;
        let visitor = u64::from_le_bytes(r.array("a visitor")?);
        let seq = r.varint("a seq")?;
        let bucket = r.u32("a bucket")?;
        let first_ts = unzigzag(r.varint("a first time")?);
        let last_ts = first_ts.wrapping_add(r.varint("a duration")? as i64);
        let exit_ts = first_ts.wrapping_add(unzigzag(r.varint("an exit time")?));
        let interactive = r.u32("an interactive count")?;
        let mut strings = [""; 7];
        for slot in &mut strings {
            *slot = r.string(&dictionary, "a visit attribute")?;
        }
        let at = r.at;
        let ended = match r.take(1, "the ended flag")?[0] {
            0 => false,
            1 => true,
            other => return Err(format!("byte {at}: ended flag {other} (expected 0 or 1)")),
        };
        let pages_len = r.count("the page count", 3)?;
        let mut pages = Vec::with_capacity(pages_len);
        for _ in 0..pages_len {
            let path = r.string(&dictionary, "a page")?;
            let scroll_depth = r.take(1, "a scroll depth")?[0];
            let bucket = r.u32("a page's bucket")?;
            pages.push(EngagedPage { path: path.into(), scroll_depth, bucket });
        }
        let [entry_page, exit_page, source, country, device, browser, os] = strings;
        states.push(SessionState {
            partition: 0,
            site: site.into(),
            visitor,
            seq,
            bucket,
            first_ts,
            last_ts,
            interactive,
            entry_page: entry_page.into(),
            exit_page: exit_page.into(),
            exit_ts,
            source: source.into(),
            country: country.into(),
            device: device.into(),
            browser: browser.into(),
            os: os.into(),
            pages,
            ended,
        });
    }
    if r.at != payload.len() {
        return Err(format!("byte {}: {} bytes after the last visit", r.at, payload.len() - r.at));
    }
    Ok(states)
}

/// A cursor over a compact value; errors name the field and the byte.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let left = self.bytes.len() - self.at;
        if n > left {
            return Err(format!("byte {}: {what} needs {n} bytes, {left} left", self.at));
        }
        let taken = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(taken)
    }

    fn array(&mut self, what: &str) -> Result<[u8; 8], String> {
        let at = self.at;
        self.take(8, what)?.try_into().map_err(|_| format!("byte {at}: {what} is not 8 bytes"))
    }

    fn varint(&mut self, what: &str) -> Result<u64, String> {
        let at = self.at;
        read_varint(self.bytes, &mut self.at).map_err(|e| match e {
            VarintError::Truncated { .. } => {
                format!("byte {at}: {what} needs more bytes than the {} left", self.bytes.len() - at)
            }
            VarintError::TooLong { .. } => format!("byte {at}: {what} is not a varint of at most 64 bits"),
        })
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let at = self.at;
        let value = self.varint(what)?;
        u32::try_from(value).map_err(|_| format!("byte {at}: {what} {value} exceeds 32 bits"))
    }

    /// A count of items that take at least `min_bytes` each, checked against what is left.
    fn count(&mut self, what: &str, min_bytes: usize) -> Result<usize, String> {
        let at = self.at;
        let value = self.varint(what)?;
        let left = (self.bytes.len() - self.at) / min_bytes.max(1);
        match usize::try_from(value) {
            Ok(n) if n <= left => Ok(n),
            _ => Err(format!(
                "byte {at}: {what} {value} exceeds what the {} bytes left can hold",
                self.bytes.len() - self.at
            )),
        }
    }

    fn string(&mut self, dictionary: &[&'a str], what: &str) -> Result<&'a str, String> {
        let at = self.at;
        let index = self.varint(what)?;
        usize::try_from(index).ok().and_then(|i| dictionary.get(i)).copied().ok_or_else(|| {
            format!("byte {at}: {what} is string {index}, past the {} the dictionary holds", dictionary.len())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visit(visitor: u64) -> SessionState {
        SessionState {
            partition: 3,
            site: "example.com".into(),
            visitor,
            seq: visitor % 5,
            bucket: 29_999_999,
            first_ts: 1_799_999_940_000 + visitor as i64,
            last_ts: 1_800_000_000_123,
            interactive: 2,
            entry_page: "/a/b".into(),
            exit_page: format!("/page/{}", visitor % 3).into(),
            exit_ts: 1_799_999_000_000,
            source: "Google".into(),
            country: "DE".into(),
            device: "".into(),
            browser: "Firefox".into(),
            os: "GNU/Linux".into(),
            pages: (0..visitor % 3)
                .map(|i| EngagedPage { path: format!("/p{i}").into(), scroll_depth: 80, bucket: 29_999_999 })
                .collect(),
            ended: visitor % 2 == 0,
        }
    }

    /// The compact form of `states`.
    fn encode(states: &[SessionState]) -> Vec<u8> {
        let changed = ChangedVisits::from_states(states);
        let chunk: Vec<u32> = (0..states.len() as u32).collect();
        let mut out = Vec::new();
        encode_visits(&changed, &chunk, &mut RowDictionary::default(), &mut out);
        out
    }

    #[test]
    fn visits_round_trip_and_share_strings() {
        let states: Vec<SessionState> = (0..100).map(visit).collect();
        let out = encode(&states);
        assert!(is_compact(&out));
        let back = decode_visits(&out).unwrap_or_default();
        let expected: Vec<SessionState> = states.iter().map(|s| SessionState { partition: 0, ..s.clone() }).collect();
        assert_eq!(back, expected);
        // Each string once: far below the JSON form of the same visits.
        let json = serde_json::to_string(&states).unwrap_or_default();
        assert!(out.len() * 5 < json.len(), "{} bytes compact, {} as JSON", out.len(), json.len());
    }

    #[test]
    fn empty_and_extreme_values_round_trip() {
        let mut extreme = visit(u64::MAX);
        extreme.first_ts = i64::MIN + 1;
        extreme.last_ts = i64::MAX;
        extreme.exit_ts = i64::MIN;
        extreme.seq = u64::MAX;
        extreme.bucket = u32::MAX;
        extreme.interactive = u32::MAX;
        for states in [vec![], vec![extreme]] {
            let out = encode(&states);
            let back = decode_visits(&out);
            let expected: Vec<SessionState> =
                states.iter().map(|s| SessionState { partition: 0, ..s.clone() }).collect();
            assert_eq!(back, Ok(expected));
        }
    }

    #[test]
    fn every_truncation_and_flawed_values_are_refused_with_a_reason() {
        let states: Vec<SessionState> = (0..4).map(visit).collect();
        let out = encode(&states);
        for cut in 0..out.len() {
            let error = decode_visits(&out[..cut]).err().unwrap_or_default();
            assert!(error.starts_with("byte ") || error.starts_with("not a compact"), "cut at {cut}: {error:?}");
        }
        let mut longer = out.clone();
        longer.push(0);
        assert!(decode_visits(&longer).is_err_and(|e| e.contains("after the last visit")));
        let mut version = out.clone();
        version[3] = 9;
        assert!(decode_visits(&version).is_err_and(|e| e.contains("version 9")));
        assert!(decode_visits(b"{\"site\":1}").is_err());
    }
}
