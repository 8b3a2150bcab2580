//! One flush as one RowBinary insert: minute rows, the hour and day rows derived from them,
//! leaderboards, and the position markers. Pure: no I/O, no clock.

use std::{
    collections::{hash_map::Entry, BTreeMap, HashMap},
    ops::Range,
};

use foldhash::fast::FixedState;

use gallop_codec::write_varint;
use gallop_pipeline::{Claim, Mark};
use gallop_processor::{
    sketch::{SumF64, SumU64, TopK, UniqHll12},
    ChangedVisits, Delta, RollupRow, SessionState,
};

use crate::schema::{Granularity, Kind, MAX_LEADERBOARD_K};
use crate::visits::{decode_visits, encode_visits, is_compact, RowDictionary, VISITS_PER_ROW};

/// How long position markers are kept where the server has TTL. A restart reads the newest
/// marker; only a crash between an insert and its acknowledgement needs it, so a month is
/// far more than enough.
const MARKER_RETENTION_SECS: i64 = 30 * 86_400;

/// How long rows of each granularity live (`None`: forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Minute rows.
    pub minute: Option<i64>,
    /// Hour rows.
    pub hour: Option<i64>,
    /// Day rows.
    pub day: Option<i64>,
}

impl Retention {
    fn of(&self, granularity: Granularity) -> Option<i64> {
        match granularity {
            Granularity::Minute => self.minute,
            Granularity::Hour => self.hour,
            Granularity::Day => self.day,
        }
    }
}

/// What an insert needs to know besides the delta.
#[derive(Debug, Clone, Copy)]
pub struct FlushContext<'a> {
    /// Stream (or topic) the positions belong to.
    pub stream: &'a str,
    /// The position marks stored with the rows, per partition.
    pub marks: &'a BTreeMap<u32, Mark>,
    /// Who writes each mark and what it continues, where partitions are shared.
    pub claims: &'a BTreeMap<u32, Claim>,
    /// Unique id of this flush: the `value` of its leaderboard rows, the dedup token.
    pub flush_id: &'a str,
    /// Wall-clock seconds, for the markers' `bucket` and expiry.
    pub now: i64,
    /// Row lifetimes.
    pub retention: Retention,
    /// The `top` column is a `String` of raw state bytes (length-prefixed in RowBinary)
    /// rather than an `AggregateFunction` column.
    pub top_as_string: bool,
}

/// A flush encoded for `INSERT INTO aggregates FORMAT RowBinary`.
#[derive(Debug, Clone)]
pub struct EncodedFlush {
    /// RowBinary bytes, columns in table order.
    pub bytes: Vec<u8>,
    /// Number of rows.
    pub rows: usize,
    /// Breakdown of `rows`: minute, hour and day rollup rows.
    pub rollup_rows: [usize; 3],
    /// Leaderboard rows, all granularities.
    pub leaderboard_rows: usize,
    /// The position markers' values, `(partition, value)`.
    pub markers: Vec<(u32, String)>,
}

/// The `value` of the position marker of `partition` at `mark`: fixed-width so that
/// the lexicographic maximum is the numeric one; where partitions are shared, followed by
/// the claim it was written under (`/a<after>/g<generation>/o<member>`).
pub fn marker_value(partition: u32, mark: &Mark, claim: Option<&Claim>) -> String {
    let mut value = format!("{partition:010}/e{:010}/{:020}/t{}", mark.epoch, mark.position, mark.time_ms);
    if let Some(claim) = claim {
        value.push_str(&format!("/a{}/g{}/o{}", claim.after, claim.generation, claim.member));
    }
    value
}

/// Parses a marker value back into `(partition, mark)`. Markers written before epochs
/// existed (`<partition>/<position>`) read as epoch 0; they sort below every newer marker
/// of their partition (`e` comes after the digits).
pub fn parse_marker(value: &str) -> Option<(u32, Mark)> {
    parse_marker_claim(value).map(|(partition, mark, _)| (partition, mark))
}

/// Parses a marker value into `(partition, mark, claim)`; the claim is `None` for markers
/// written where partitions were not shared (and by versions before shared partitions).
pub fn parse_marker_claim(value: &str) -> Option<(u32, Mark, Option<Claim>)> {
    let mut parts = value.split('/');
    let partition = parts.next()?.parse().ok()?;
    let second = parts.next()?;
    let mark = match (second.strip_prefix('e'), parts.next(), parts.next()) {
        (None, None, None) => return Some((partition, Mark::at(second.parse().ok()?), None)),
        (Some(epoch), Some(position), Some(time)) => Mark {
            epoch: epoch.parse().ok()?,
            position: position.parse().ok()?,
            time_ms: time.strip_prefix('t')?.parse().ok()?,
        },
        _ => return None,
    };
    let claim = match (parts.next(), parts.next(), parts.next()) {
        (None, None, None) => None,
        (Some(after), Some(generation), Some(member)) => Some(Claim {
            after: after.strip_prefix('a')?.parse().ok()?,
            generation: generation.strip_prefix('g')?.parse().ok()?,
            member: member.strip_prefix('o').filter(|m| !m.is_empty())?.into(),
        }),
        _ => return None,
    };
    parts.next().is_none().then_some((partition, mark, claim))
}

/// The `dimension` of the open-visit rows of `stream` (kind `position`).
pub fn session_dimension(stream: &str) -> String {
    format!("{stream}#sessions")
}

/// The `dimension` of the watermark rows of `stream` (kind `position`).
pub fn watermark_dimension(stream: &str) -> String {
    format!("{stream}#watermarks")
}

/// The `value` of an open-visit row: `<partition:010>/` and the visits, in the compact form
/// of [`crate::visits`].
fn session_value(partition: u32, changed: &ChangedVisits, chunk: &[u32], dictionary: &mut RowDictionary) -> Vec<u8> {
    let mut value = format!("{partition:010}/").into_bytes();
    encode_visits(changed, chunk, dictionary, &mut value);
    value
}

/// Parses an open-visit row's `value` (see [`session_dimension`]): the visits it holds, in
/// the compact form or, as rows written before it, one visit as JSON. The error says why.
pub fn parse_session_value(value: &[u8]) -> Result<Vec<SessionState>, String> {
    let slash = value.iter().position(|&b| b == b'/').ok_or("no '/' after the partition")?;
    let partition: u32 = std::str::from_utf8(&value[..slash])
        .ok()
        .and_then(|p| p.parse().ok())
        .ok_or("the partition before '/' is not a number")?;
    let payload = &value[slash + 1..];
    let mut states = if is_compact(payload) {
        decode_visits(payload)?
    } else {
        vec![serde_json::from_slice::<SessionState>(payload).map_err(|e| format!("a visit as JSON: {e}"))?]
    };
    for state in &mut states {
        state.partition = partition;
    }
    Ok(states)
}

/// Parses a watermark row's `value`: `(partition, watermark ms)`.
pub fn parse_watermark_value(value: &str) -> Option<(u32, i64)> {
    let (partition, watermark) = value.split_once('/')?;
    Some((partition.parse().ok()?, watermark.parse().ok()?))
}

/// (site, dimension, value, bucket) of a coarser rollup row.
type RowKey<'a> = (&'a str, &'a str, &'a str, i64);

/// An hour or day row being accumulated. Most keys have one minute row in a flush (a flush
/// spans seconds), so until a second one comes the row is only pointed at, and its coarser
/// rows copy the state bytes already written for it: merging sketches into empty ones and
/// writing the same states again were a tenth of the processor's time.
enum Acc<'a> {
    /// One row so far, whose states were written at `states` of the output.
    One { row: &'a RollupRow, states: Range<usize> },
    /// The sums of several rows.
    Many { events: u64, visitors: UniqHll12, value_sum: f64, value_count: u64 },
}

impl<'a> Acc<'a> {
    /// Adds another row's states (visit rows carry −1 as 2^64 − 1, see the processor's
    /// `session` module: counters wrap, as ClickHouse's `sum(UInt64)` does).
    fn add(&mut self, other: &Acc<'_>) {
        if let Acc::One { row, .. } = *self {
            *self = Acc::Many {
                events: row.events,
                visitors: row.visitors.clone(),
                value_sum: row.value_sum,
                value_count: row.value_count,
            };
        }
        let (events, visitors, value_sum, value_count) = other.parts();
        if let Acc::Many { events: e, visitors: v, value_sum: s, value_count: c } = self {
            *e = e.wrapping_add(events);
            v.merge(visitors);
            *s += value_sum;
            *c = c.wrapping_add(value_count);
        }
    }

    fn parts(&self) -> (u64, &UniqHll12, f64, u64) {
        match self {
            Acc::One { row, .. } => (row.events, &row.visitors, row.value_sum, row.value_count),
            Acc::Many { events, visitors, value_sum, value_count } => (*events, visitors, *value_sum, *value_count),
        }
    }

    /// Writes the states: a copy of bytes already written for a single row.
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Acc::One { states, .. } => out.extend_from_within(states.clone()),
            Acc::Many { events, visitors, value_sum, value_count } => {
                write_states(out, *events, visitors, *value_sum, *value_count);
            }
        }
    }
}

/// Rows of one coarser granularity, in the order their keys first came.
#[derive(Default)]
struct Coarse<'a> {
    index: HashMap<RowKey<'a>, usize, FixedState>,
    rows: Vec<(RowKey<'a>, Acc<'a>)>,
}

impl<'a> Coarse<'a> {
    fn with_capacity(rows: usize) -> Self {
        Self { index: HashMap::with_capacity_and_hasher(rows, FixedState::default()), rows: Vec::with_capacity(rows) }
    }

    fn add(&mut self, key: RowKey<'a>, acc: Acc<'a>) {
        match self.index.entry(key) {
            Entry::Occupied(at) => self.rows[*at.get()].1.add(&acc),
            Entry::Vacant(slot) => {
                slot.insert(self.rows.len());
                self.rows.push((key, acc));
            }
        }
    }
}

/// Encodes `delta` as one insert: every rollup row at minute, hour and day; every
/// leaderboard at minute, hour and day; one position marker per partition of
/// `context.marks`.
pub fn encode_flush(delta: &Delta, context: &FlushContext<'_>) -> EncodedFlush {
    encode_flush_into(delta, context, Vec::new())
}

/// [`encode_flush`] into `buffer`, whose contents are dropped and whose allocation is used
/// when [`gallop_codec::reuse`] keeps it. A processor hands each insert's buffer to the next one: a body
/// is tens of megabytes, and a fresh one every flush had the kernel fault in and zero its
/// pages (a third of the encoding's time in a profile of `gallop process`).
pub(crate) fn encode_flush_into(delta: &Delta, context: &FlushContext<'_>, buffer: Vec<u8>) -> EncodedFlush {
    // Sized once: growing a buffer of hundreds of megabytes copied it again and again (a
    // tenth of the processor's time). Hour and day rows are at most as many and as large
    // as the minute rows they merge; capacity never written costs no memory.
    let minute_bytes: usize = delta
        .rows
        .iter()
        .map(|row| 96 + row.site.len() + row.dimension.len() + row.value.len() + row.visitors.state_len())
        .sum();
    let needed = 3 * minute_bytes + delta.leaderboards.len() * 3 * 1024 + delta.sessions.len() * 64 + 64 * 1024;
    let mut out = gallop_codec::reuse(buffer, needed);
    let mut rows = 0;
    let mut rollup_rows = [0; 3];

    // Coarser rollups: the delta's minute rows merged per hour, and the hour rows per day.
    let mut hours = Coarse::with_capacity(delta.rows.len());
    for row in &delta.rows {
        let states = write_minute_row(&mut out, context, row);
        rollup_rows[0] += 1;
        let hour = row.bucket - row.bucket.rem_euclid(Granularity::Hour.seconds());
        hours.add((&row.site, &row.dimension, &row.value, hour), Acc::One { row, states });
    }
    let day_of = |bucket: i64| bucket - bucket.rem_euclid(Granularity::Day.seconds());
    let mut hour_states = Vec::with_capacity(hours.rows.len());
    for ((site, dimension, value, bucket), acc) in &hours.rows {
        hour_states.push(write_rollup(&mut out, context, Granularity::Hour, *bucket, site, dimension, value, |o| {
            acc.write(o)
        }));
        rollup_rows[1] += 1;
    }
    // A flush inside one hour (nearly all: a flush spans seconds) has one hour row per day
    // row, whose states it copies; otherwise the hour rows are merged per day.
    let one_hour = hours.rows.first().is_none_or(|(first, _)| hours.rows.iter().all(|(key, _)| key.3 == first.3));
    if one_hour {
        for (((site, dimension, value, bucket), _), states) in hours.rows.iter().zip(hour_states) {
            write_rollup(&mut out, context, Granularity::Day, day_of(*bucket), site, dimension, value, |o| {
                o.extend_from_within(states)
            });
            rollup_rows[2] += 1;
        }
    } else {
        let mut days = Coarse::with_capacity(hours.rows.len());
        for ((site, dimension, value, bucket), acc) in &hours.rows {
            let parts = match acc {
                Acc::One { row, states } => Acc::One { row, states: states.clone() },
                many => {
                    let (events, visitors, value_sum, value_count) = many.parts();
                    Acc::Many { events, visitors: visitors.clone(), value_sum, value_count }
                }
            };
            days.add((site, dimension, value, day_of(*bucket)), parts);
        }
        for ((site, dimension, value, bucket), acc) in &days.rows {
            write_rollup(&mut out, context, Granularity::Day, *bucket, site, dimension, value, |o| acc.write(o));
            rollup_rows[2] += 1;
        }
    }
    rows += rollup_rows.iter().sum::<usize>();

    let mut leaderboard_rows = 0;
    let mut boards: [BTreeMap<(&str, &str, i64), TopK>; 2] = Default::default();
    for board in &delta.leaderboards {
        write_leaderboard(
            &mut out,
            context,
            Granularity::Minute,
            board.bucket,
            &board.site,
            &board.dimension,
            &board.top,
        );
        leaderboard_rows += 1;
        for (map, granularity) in boards.iter_mut().zip([Granularity::Hour, Granularity::Day]) {
            let bucket = board.bucket - board.bucket.rem_euclid(granularity.seconds());
            map.entry((&board.site, &board.dimension, bucket))
                .and_modify(|top| top.merge(&board.top))
                .or_insert_with(|| board.top.clone());
        }
    }
    for (map, granularity) in boards.iter().zip([Granularity::Hour, Granularity::Day]) {
        for ((site, dimension, bucket), top) in map {
            write_leaderboard(&mut out, context, granularity, *bucket, site, dimension, top);
            leaderboard_rows += 1;
        }
    }
    rows += leaderboard_rows;

    let mut markers = Vec::with_capacity(context.marks.len());
    for (&partition, mark) in context.marks {
        let value = marker_value(partition, mark, context.claims.get(&partition));
        write_key(&mut out, "", Kind::Position, Granularity::Minute, context.now, context.stream, &value);
        write_states(&mut out, 0, &UniqHll12::new(), 0.0, 0);
        write_empty_top(&mut out, context.top_as_string);
        write_datetime(&mut out, context.now.saturating_add(MARKER_RETENTION_SECS));
        markers.push((partition, value));
        rows += 1;
    }

    // What a restart needs besides positions: open visits and watermarks (see the
    // processor's `session` module), in the same insert, so they match the positions.
    let sessions = session_dimension(context.stream);
    let changed = &delta.sessions;
    let visits = changed.visits();
    // Visits grouped by partition (a processor folds a few), in their order within each.
    let mut by_partition: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (i, visit) in visits.iter().enumerate() {
        // A flush holds at most `max_open_sessions` visits and their tombstones.
        by_partition.entry(visit.partition).or_default().push(i as u32);
    }
    let mut dictionary = RowDictionary::default();
    for (&partition, group) in &by_partition {
        for chunk in group.chunks(VISITS_PER_ROW) {
            // The row's bucket is its newest visit's last event, so a restart reading rows
            // of visits that may still be extended reads every row holding one.
            let newest = chunk.iter().map(|&i| visits[i as usize].last_ts).max().unwrap_or_default();
            write_key(
                &mut out,
                "",
                Kind::Position,
                Granularity::Minute,
                newest.div_euclid(1000),
                &sessions,
                session_value(partition, changed, chunk, &mut dictionary),
            );
            write_states(&mut out, 0, &UniqHll12::new(), 0.0, 0);
            write_empty_top(&mut out, context.top_as_string);
            write_datetime(&mut out, context.now.saturating_add(MARKER_RETENTION_SECS));
            rows += 1;
        }
    }
    let watermarks = watermark_dimension(context.stream);
    for (&partition, &watermark) in &delta.watermarks {
        let value = format!("{partition:010}/{:020}", watermark.max(0));
        write_key(&mut out, "", Kind::Position, Granularity::Minute, context.now, &watermarks, &value);
        write_states(&mut out, 0, &UniqHll12::new(), 0.0, 0);
        write_empty_top(&mut out, context.top_as_string);
        write_datetime(&mut out, context.now.saturating_add(MARKER_RETENTION_SECS));
        rows += 1;
    }

    EncodedFlush { bytes: out, rows, rollup_rows, leaderboard_rows, markers }
}

#[allow(clippy::too_many_arguments)]
fn write_rollup(
    out: &mut Vec<u8>,
    context: &FlushContext<'_>,
    granularity: Granularity,
    bucket: i64,
    site: &str,
    dimension: &str,
    value: &str,
    states: impl FnOnce(&mut Vec<u8>),
) -> Range<usize> {
    write_key(out, site, Kind::Rollup, granularity, bucket, dimension, value);
    let at = out.len();
    states(out);
    let states = at..out.len();
    write_empty_top(out, context.top_as_string);
    write_expiry(out, context, granularity, bucket);
    states
}

/// Writes `row` as a minute row; returns where its states lie in `out`.
fn write_minute_row(out: &mut Vec<u8>, context: &FlushContext<'_>, row: &RollupRow) -> Range<usize> {
    write_rollup(out, context, Granularity::Minute, row.bucket, &row.site, &row.dimension, &row.value, |o| {
        write_states(o, row.events, &row.visitors, row.value_sum, row.value_count)
    })
}

fn write_leaderboard(
    out: &mut Vec<u8>,
    context: &FlushContext<'_>,
    granularity: Granularity,
    bucket: i64,
    site: &str,
    dimension: &str,
    top: &TopK,
) {
    write_key(out, site, Kind::Leaderboard, granularity, bucket, dimension, context.flush_id);
    write_states(out, 0, &UniqHll12::new(), 0.0, 0);
    if context.top_as_string {
        let state = top.to_state();
        write_bytes(out, &state);
    } else if top.write_state_for(MAX_LEADERBOARD_K, out).is_err() {
        // Unreachable: configured leaderboards have k ≤ MAX_LEADERBOARD_K (validated at
        // start), so their counters always fit the column's topK. Were it reached, the
        // server would refuse this state and the writer stop with its named error.
        top.write_state(out);
    }
    write_expiry(out, context, granularity, bucket);
}

fn write_key(
    out: &mut Vec<u8>,
    site: &str,
    kind: Kind,
    granularity: Granularity,
    bucket: i64,
    dimension: &str,
    value: impl AsRef<[u8]>,
) {
    write_string(out, site);
    out.push(kind as u8);
    out.push(granularity as u8);
    write_datetime(out, bucket);
    write_string(out, dimension);
    write_bytes(out, value.as_ref());
}

fn write_states(out: &mut Vec<u8>, events: u64, visitors: &UniqHll12, value_sum: f64, value_count: u64) {
    let mut sum = SumU64::new();
    sum.add(events);
    sum.write_state(out);
    visitors.write_state(out);
    let mut float = SumF64::new();
    float.add(value_sum);
    float.write_state(out);
    let mut count = SumU64::new();
    count.add(value_count);
    count.write_state(out);
}

/// An empty `topK` state: no counters, an empty alpha map. ClickHouse reads it as an
/// empty sketch (its own empty state carries a zeroed alpha map, which changes nothing).
/// As a `String` column: the empty string.
fn write_empty_top(out: &mut Vec<u8>, as_string: bool) {
    if as_string {
        out.push(0);
    } else {
        out.extend_from_slice(&[0, 0]);
    }
}

fn write_expiry(out: &mut Vec<u8>, context: &FlushContext<'_>, granularity: Granularity, bucket: i64) {
    let expires = match context.retention.of(granularity) {
        Some(seconds) => bucket.saturating_add(seconds),
        None => i64::from(u32::MAX),
    };
    write_datetime(out, expires);
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    write_bytes(out, s.as_bytes());
}

fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// `DateTime` is seconds since the epoch as `UInt32`; times outside it are clamped (the
/// processor never produces them: it rejects events far in the future).
fn write_datetime(out: &mut Vec<u8>, seconds: i64) {
    let clamped = seconds.clamp(0, i64::from(u32::MAX)) as u32;
    out.extend_from_slice(&clamped.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use gallop_processor::{Delta, LeaderboardRow, RollupRow};

    use super::*;

    fn row(bucket: i64, dimension: &str, value: &str, events: u64, visitor: u64) -> RollupRow {
        let mut visitors = UniqHll12::new();
        visitors.insert_u64(visitor);
        RollupRow {
            site: "s".to_owned(),
            bucket,
            dimension: dimension.to_owned(),
            value: value.to_owned(),
            events,
            visitors,
            value_sum: 1.5 * events as f64,
            value_count: events,
        }
    }

    static NO_CLAIMS: BTreeMap<u32, Claim> = BTreeMap::new();

    fn context(marks: &BTreeMap<u32, Mark>) -> FlushContext<'_> {
        FlushContext {
            stream: "EVENTS",
            marks,
            claims: &NO_CLAIMS,
            flush_id: "f1",
            now: 1_800_000_000,
            retention: Retention { minute: Some(60), hour: None, day: None },
            top_as_string: false,
        }
    }

    #[test]
    fn a_reused_buffer_encodes_the_same_bytes_in_the_same_allocation() {
        let day = 1_799_971_200;
        let delta = Delta {
            rows: vec![row(day + 36_000, "path", "/", 2, 1), row(day + 36_060, "total", "", 3, 2)],
            ..Delta::default()
        };
        let marks = BTreeMap::from([(0, Mark::at(4))]);
        let fresh = encode_flush(&delta, &context(&marks)).bytes;

        // A used buffer with room: its contents go, its allocation stays. (This flush's
        // estimate is a little over the fixed 64 KiB; four times half again that is the most
        // a buffer may have.)
        let mut used = Vec::with_capacity(200_000);
        used.extend_from_slice(b"the last flush's bytes");
        let at = used.as_ptr();
        let reused = encode_flush_into(&delta, &context(&marks), used).bytes;
        assert_eq!(reused, fresh);
        assert_eq!(reused.as_ptr(), at, "the buffer's allocation is used");

        // One far larger than needed is let go; one too small is replaced.
        for capacity in [1 << 26, 8] {
            let buffer = Vec::with_capacity(capacity);
            let at = buffer.as_ptr();
            let encoded = encode_flush_into(&delta, &context(&marks), buffer).bytes;
            assert_eq!(encoded, fresh);
            assert_ne!(encoded.as_ptr(), at, "capacity {capacity}");
        }
    }

    #[test]
    fn minute_rows_roll_up_into_hours_and_days() {
        // 10:00 and 10:01 share an hour; 11:00 is another hour of the same day.
        let day = 1_799_971_200; // a UTC midnight
        let delta = Delta {
            rows: vec![
                row(day + 36_000, "path", "/", 2, 1),
                row(day + 36_060, "path", "/", 3, 2),
                row(day + 39_600, "path", "/", 4, 3),
                row(day + 36_000, "path", "/a", 1, 1),
            ],
            ..Delta::default()
        };
        let marks = BTreeMap::from([(3, Mark::at(17)), (5, Mark { epoch: 1, position: 2, time_ms: 9 })]);
        let encoded = encode_flush(&delta, &context(&marks));
        // minute: 4 rows; hour: (10h, /), (11h, /), (10h, /a); day: (/), (/a).
        assert_eq!(encoded.rollup_rows, [4, 3, 2]);
        assert_eq!(encoded.rows, 4 + 3 + 2 + 2);
        assert_eq!(
            encoded.markers,
            vec![(3, marker_value(3, &marks[&3], None)), (5, marker_value(5, &marks[&5], None))]
        );
    }

    /// The rollup rows `encode_flush` must write for `delta`, from sums computed here row by
    /// row: minute rows, then hour rows and day rows, each in the order their keys first come.
    fn expected_rollups(delta: &Delta, context: &FlushContext<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        type Sums = Vec<((String, String, i64), RollupRow)>;
        let mut coarse: [Sums; 2] = Default::default();
        for row in &delta.rows {
            write_minute_row(&mut out, context, row);
            for (rows, granularity) in coarse.iter_mut().zip([Granularity::Hour, Granularity::Day]) {
                let key = (
                    row.dimension.clone(),
                    row.value.clone(),
                    row.bucket - row.bucket.rem_euclid(granularity.seconds()),
                );
                match rows.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, sum)) => {
                        sum.events += row.events;
                        sum.visitors.merge(&row.visitors);
                        sum.value_sum += row.value_sum;
                        sum.value_count += row.value_count;
                    }
                    None => rows.push((key, row.clone())),
                }
            }
        }
        for (rows, granularity) in coarse.iter().zip([Granularity::Hour, Granularity::Day]) {
            for ((dimension, value, bucket), sum) in rows {
                write_rollup(&mut out, context, granularity, *bucket, &sum.site, dimension, value, |o| {
                    write_states(o, sum.events, &sum.visitors, sum.value_sum, sum.value_count)
                });
            }
        }
        out
    }

    #[test]
    fn coarse_rows_hold_the_sums_of_their_minute_rows() {
        let day = 1_799_971_200; // a UTC midnight
        let cases = [
            // Inside one hour: day rows copy the hour rows.
            vec![
                row(day + 36_000, "path", "/", 2, 1),
                row(day + 36_060, "path", "/", 3, 2),
                row(day + 36_060, "path", "/a", 1, 1),
                row(day + 36_000, "total", "", 6, 3),
            ],
            // Across an hour (and within a day): hour rows merged per day.
            vec![
                row(day + 39_540, "path", "/", 2, 1),
                row(day + 39_600, "path", "/", 3, 2),
                row(day + 39_600, "path", "/a", 1, 1),
                row(day + 39_540, "total", "", 6, 3),
            ],
            // Across midnight.
            vec![row(day - 60, "path", "/", 2, 1), row(day, "path", "/", 3, 2)],
        ];
        let marks = BTreeMap::new();
        for rows in cases {
            let delta = Delta { rows, ..Delta::default() };
            let context = context(&marks);
            let encoded = encode_flush(&delta, &context);
            let expected = expected_rollups(&delta, &context);
            assert_eq!(&encoded.bytes[..expected.len()], &expected[..], "{:?}", delta.rows);
            assert_eq!(encoded.rows, encoded.rollup_rows.iter().sum::<usize>());
        }
    }

    #[test]
    fn a_rollup_row_is_encoded_column_by_column() {
        let delta = Delta { rows: vec![row(120, "path", "/x", 2, 7)], ..Delta::default() };
        let encoded = encode_flush(&delta, &context(&BTreeMap::new()));
        let mut expect = vec![1, b's', 1, 1];
        expect.extend_from_slice(&120u32.to_le_bytes());
        expect.extend_from_slice(b"\x04path\x02/x");
        expect.extend_from_slice(&2u64.to_le_bytes());
        expect.extend_from_slice(&[0, 1]);
        expect.extend_from_slice(&7u64.to_le_bytes());
        expect.extend_from_slice(&3.0f64.to_le_bytes());
        expect.extend_from_slice(&2u64.to_le_bytes());
        expect.extend_from_slice(&[0, 0]);
        expect.extend_from_slice(&180u32.to_le_bytes());
        assert_eq!(&encoded.bytes[..expect.len()], &expect[..]);
    }

    #[test]
    fn leaderboards_carry_the_flush_id_and_merge_per_hour() {
        let top = |keys: &[&str]| {
            let mut top = TopK::new(2).expect("k = 2 is valid");
            for key in keys {
                top.insert(key.as_bytes());
            }
            top
        };
        let board = |bucket: i64, keys: &[&str]| LeaderboardRow {
            site: "s".to_owned(),
            bucket,
            dimension: "referrer".to_owned(),
            top: top(keys),
        };
        let delta =
            Delta { rows: vec![], leaderboards: vec![board(0, &["a", "b"]), board(60, &["a"])], ..Delta::default() };
        let encoded = encode_flush(&delta, &context(&BTreeMap::from([(0, Mark::at(1))])));
        assert_eq!(encoded.leaderboard_rows, 2 + 1 + 1);
        let needle = b"\x08referrer\x02f1";
        assert_eq!(encoded.bytes.windows(needle.len()).filter(|w| w == needle).count(), 4);
    }

    #[test]
    fn open_visits_and_watermarks_travel_in_the_insert_and_parse_back() {
        let state = SessionState {
            partition: 4,
            site: "s,/\"x".into(),
            visitor: u64::MAX,
            seq: 3,
            bucket: 29_999_999,
            first_ts: 1_799_999_940_000,
            last_ts: 1_800_000_000_123,
            interactive: 2,
            entry_page: "/a/b".into(),
            exit_page: "/c".into(),
            exit_ts: 1_800_000_000_123,
            source: "Google".into(),
            country: "DE".into(),
            device: "desktop".into(),
            browser: "Firefox".into(),
            os: "GNU/Linux".into(),
            pages: vec![gallop_processor::EngagedPage { path: "/a/b".into(), scroll_depth: 80, bucket: 29_999_999 }],
            ended: false,
        };
        let delta = Delta {
            sessions: ChangedVisits::from_states([&state]),
            watermarks: BTreeMap::from([(4, 1_800_000_000_500)]),
            ..Delta::default()
        };
        let encoded = encode_flush(&delta, &context(&BTreeMap::from([(4, Mark::at(9))])));
        assert_eq!(encoded.rows, 3, "a marker, a visit, a watermark");
        let value = session_value(4, &ChangedVisits::from_states([&state]), &[0], &mut RowDictionary::default());
        assert!(value.starts_with(b"0000000004/\0VS"), "{value:?}");
        assert_eq!(parse_session_value(&value), Ok(vec![state.clone()]));
        let needle = session_dimension("EVENTS");
        assert!(encoded.bytes.windows(needle.len()).any(|w| w == needle.as_bytes()));
        assert_eq!(parse_watermark_value("0000000004/00000001800000000500"), Some((4, 1_800_000_000_500)));
        assert!(parse_session_value(b"0000000004/{not json").is_err_and(|e| e.contains("JSON")));
        assert!(parse_session_value(b"0000000004/\0VS\x01\x05").is_err_and(|e| e.starts_with("byte 4:")));
        assert!(parse_session_value(b"x/{}").is_err_and(|e| e.contains("partition")));

        // A row written before the compact form: one visit as a JSON object.
        let old = format!("0000000004/{}", serde_json::to_string(&state).unwrap_or_default());
        assert_eq!(parse_session_value(old.as_bytes()), Ok(vec![state.clone()]));

        // Many visits of two partitions: a row per partition and VISITS_PER_ROW visits.
        let many: Vec<SessionState> = (0..2 * VISITS_PER_ROW as u64 + 1)
            .map(|visitor| SessionState { visitor, partition: (visitor % 2) as u32 * 4, ..state.clone() })
            .collect();
        let delta = Delta { sessions: ChangedVisits::from_states(&many), ..Delta::default() };
        let encoded = encode_flush(&delta, &context(&BTreeMap::new()));
        // 257 visits of partition 0 (2 rows), 256 of partition 4 (1 row).
        assert_eq!(encoded.rows, 3, "visit rows only");
    }

    #[test]
    fn marker_values_sort_by_partition_epoch_position_and_parse_back() {
        let mark = |epoch, position| Mark { epoch, position, time_ms: 1_800_000_000_123 };
        let claim = |after| Claim { member: "host-7".into(), generation: 42, after };
        assert!(marker_value(2, &mark(0, 9), None) < marker_value(2, &mark(0, 10), None));
        assert!(marker_value(2, &mark(0, 9), Some(&claim(9_999))) < marker_value(2, &mark(0, 10), Some(&claim(0))));
        assert!(marker_value(2, &mark(0, u64::MAX), None) < marker_value(2, &mark(1, 1), None));
        assert!(marker_value(2, &mark(u32::MAX, u64::MAX), None) < marker_value(10, &mark(0, 0), None));
        assert_eq!(parse_marker(&marker_value(7, &mark(3, 12345), None)), Some((7, mark(3, 12345))));
        let value = marker_value(7, &mark(3, 12345), Some(&claim(12000)));
        assert_eq!(value, "0000000007/e0000000003/00000000000000012345/t1800000000123/a12000/g42/ohost-7");
        assert_eq!(parse_marker(&value), Some((7, mark(3, 12345))));
        assert_eq!(parse_marker_claim(&value), Some((7, mark(3, 12345), Some(claim(12000)))));
        for bad in ["x/1", "1/e2/3", "1/e2/3/4", "1/2/3", "1/e2/3/t4/5", "", "1/e2/3/t4/a1/g2/o", "1/e2/3/t4/a1/g2"] {
            assert_eq!(parse_marker(bad), None, "{bad}");
        }
    }

    #[test]
    fn markers_from_before_epochs_read_as_epoch_zero_and_sort_below_new_ones() {
        let old = "0000000007/00000000000000012345";
        assert_eq!(parse_marker(old), Some((7, Mark::at(12345))));
        assert!(old < marker_value(7, &Mark::at(1), None).as_str(), "a new marker of the partition wins");
        assert!(old > marker_value(6, &Mark::at(u64::MAX), None).as_str(), "the partition still comes first");
    }
}
