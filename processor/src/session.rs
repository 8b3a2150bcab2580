//! Visits (sessions) and engagement, as Plausible counts them, written as additive rows.
//!
//! A visit is a run of events of one visitor of one site with no gap longer than
//! `processor.session_timeout`, inside one UTC day (the daily salt gives the visitor a new
//! id at midnight anyway). Every change of a visit is written as a *delta* of plain sums
//! into rows of the minute bucket where the visit started, so ClickHouse only ever adds:
//!
//! | dimension | value | `events` | `value_sum` | `value_count` |
//! |---|---|---|---|---|
//! | `session:total` | `""` | visits | duration, ms | bounces |
//! | `session:entry_page`, and those of `processor.session_breakdowns` (default `session:source`; also `country`, `device`, `browser`, `os`) | the visit's first event's | visits | duration, ms | bounces |
//! | `session:exit_page` | path of the visit's last pageview | exits | 0 | 0 |
//! | `session:pageviews` | `""` | pageviews in visits | 0 | 0 |
//! | `engagement:total`, `engagement:path` | `""`, the page | engaged pageviews | engaged ms | sum of each pageview's deepest scroll, % |
//!
//! A bounce is a visit with exactly one interactive event (pageviews and custom events not
//! marked `interactive: false`). When a visit's second interactive event arrives its
//! bounce is taken back (−1), and when a later pageview moves its exit page the old page
//! gets −1 and the new one +1: `UInt64` sums wrap, so the −1 is written as `2^64 − 1` and
//! every merged total is exact; a reader sums all rows of a bucket, never a part of them.
//! Durations are whole milliseconds in a `Float64` sum (exact below 2^53). Visit and
//! engagement rows keep no visitor sketch: visitors per value are the plain rollups' (a
//! sketch per visit row cost more than the rest of a visit's bookkeeping).
//!
//! Engagement events (`engagement`, sent by Plausible's tracker when a page is left or
//! hidden: `sd` = deepest scroll so far of that pageview, `e` = engaged time since the
//! previous engagement event) count nowhere else. Within a visit each page's deepest
//! scroll is kept (Plausible's scroll depth is the deepest per visit and page), so later
//! engagement events of that page add only the difference; the first one counts the
//! engaged pageview.
//!
//! Open visits span flushes, so each flush carries every visit that changed since the
//! previous one ([`ChangedVisits`], written by the sink in the same atomic insert as the
//! rows and positions) and each partition's watermark; at start the pipeline hands the
//! newest stored states back ([`OpenSessions`]) and the processor goes on exactly where the
//! stored positions say it was.

use std::collections::HashMap;

use compact_str::CompactString;
use foldhash::fast::FixedState;
use gallop_event::EventFields;

use crate::{
    changed::{ChangedPage, ChangedVisit, ChangedVisits, Recycle},
    intern::Interner,
    open_visits::{Clock, OpenVisits, Timed},
    stored::SessionState,
};

/// Milliseconds in one UTC day.
const DAY_MS: i64 = 86_400_000;
/// Most engaged pages a visit remembers the deepest scroll of; older ones are forgotten
/// (a later engagement event of a forgotten page counts as a new engaged pageview).
const MAX_ENGAGED_PAGES: usize = 16;

/// The rows visits and engagement write, in the order of [`DIMENSIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dim {
    Total,
    EntryPage,
    Source,
    Country,
    Device,
    Browser,
    Os,
    ExitPage,
    Pageviews,
    EngagementTotal,
    EngagementPath,
}

/// Dimension names of [`Dim`], in order.
pub(crate) const DIMENSIONS: [&str; 11] = [
    "session:total",
    "session:entry_page",
    "session:source",
    "session:country",
    "session:device",
    "session:browser",
    "session:os",
    "session:exit_page",
    "session:pageviews",
    "engagement:total",
    "engagement:path",
];

/// The optional breakdowns of visits (`processor.session_breakdowns`), in [`Dim`] order.
pub(crate) const BREAKDOWNS: [&str; 5] = ["source", "country", "device", "browser", "os"];

/// The rows that carry visits, duration and bounces of a visit (all but exit pages and
/// pageviews), with the value each has for `open`; `kept[i]` says whether breakdown `i`
/// of [`BREAKDOWNS`] is written.
fn attribute_rows<'s>(
    open: &Open,
    strings: &'s Strings,
    kept: &[bool; 5],
) -> impl Iterator<Item = (Dim, &'s str)> + 's {
    let a = open.attrs;
    let breakdowns = [
        (Dim::Source, strings.name(a[SOURCE])),
        (Dim::Country, strings.name(a[COUNTRY])),
        (Dim::Device, strings.name(a[DEVICE])),
        (Dim::Browser, strings.name(a[BROWSER])),
        (Dim::Os, strings.name(a[OS])),
    ];
    let kept = *kept;
    [(Dim::Total, ""), (Dim::EntryPage, strings.name(a[ENTRY_PAGE]))]
        .into_iter()
        .chain(breakdowns.into_iter().zip(kept).filter(|(_, k)| *k).map(|(row, _)| row))
}

/// One additive change of a row.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Change {
    /// Added to `events` (wrapping: `u64::MAX` takes one away).
    pub(crate) events: u64,
    /// Added to `value_sum`.
    pub(crate) sum: f64,
    /// Added to `value_count` (wrapping).
    pub(crate) count: u64,
}

/// −1 in a wrapping `UInt64` sum.
const MINUS_ONE: u64 = u64::MAX;

/// The open visits of every partition this processor folds.
pub(crate) struct Sessions {
    timeout_ms: i64,
    /// Which of [`BREAKDOWNS`] are written.
    kept: [bool; 5],
    lateness_ms: i64,
    max_open: usize,
    /// Site names as ids (never reset: sites are few).
    sites: Interner,
    open: OpenVisits<Open>,
    /// The strings the open visits hold, by id.
    strings: Strings,
    /// Visits ended early since the last flush, to be stored as ended; `site` is a site id.
    tombstones: Vec<ChangedVisit>,
    /// Where each interned string went in the flush being built: (flush stamp, index).
    carried: Vec<(u32, u32)>,
    /// Tells this flush's entries of `carried` from older ones.
    stamp: u32,
    /// [`Sessions::make_room`]'s lists (expired slots; idle times and slots), kept between
    /// passes: half a million entries, fresh pages each pass otherwise.
    room_scratch: (Vec<u32>, Vec<(i64, u32)>),
    /// The list of visits of the last flush's table, back from the sink for the next one.
    recycle: Recycle,
    /// Visits made dirty since the last flush, at most (room for the next flush's visits,
    /// without a pass to count them).
    dirtied: usize,
    pub(crate) started: u64,
    pub(crate) evicted: u64,
}

/// Interned strings of open visits (pages, sources, countries, devices, browsers, systems).
/// An open visit holds their ids: about 100 bytes in memory where a [`SessionState`] takes
/// about 330, and starting one allocates nothing. With short visits the open visits are most
/// of a processor's memory, and copying them as the table grew most of its time. Ids are
/// rebuilt from the open visits when the table outgrows them ([`Sessions::take_changed`]).
type Strings = Interner;

/// An id [`Strings`] never hands out: its name is `""`.
const NO_STRING: u32 = u32::MAX;

/// Indexes of [`Open::attrs`].
const ENTRY_PAGE: usize = 0;
const EXIT_PAGE: usize = 1;
const SOURCE: usize = 2;
const COUNTRY: usize = 3;
const DEVICE: usize = 4;
const BROWSER: usize = 5;
const OS: usize = 6;

/// An open visit in memory: a [`SessionState`] whose strings are ids in [`Strings`] and
/// whose site and visitor are its key.
pub(crate) struct Open {
    partition: u32,
    bucket: u32,
    interactive: u32,
    seq: u64,
    first_ts: i64,
    last_ts: i64,
    exit_ts: i64,
    /// Entry page, exit page, source, country, device, browser, os (see [`ENTRY_PAGE`]…).
    attrs: [u32; 7],
    pages: Vec<Page>,
    /// Changed since the last flush.
    dirty: bool,
}

/// An [`EngagedPage`] of an open visit.
struct Page {
    path: u32,
    scroll_depth: u8,
    bucket: u32,
}

impl Timed for Open {
    fn clock(&self) -> Clock {
        Clock::new(self.partition, self.first_ts, self.last_ts)
    }
}

impl Open {
    /// The tombstone of this visit of `site` (a site id) and `visitor`, ended early to make
    /// room: a version one newer than its last, without pages or strings (a restart only
    /// needs to know that it ended).
    fn ended(&self, site: u32, visitor: u64) -> ChangedVisit {
        ChangedVisit {
            partition: self.partition,
            site,
            visitor,
            seq: self.seq + 1,
            bucket: self.bucket,
            first_ts: self.first_ts,
            last_ts: self.last_ts,
            exit_ts: self.exit_ts,
            interactive: self.interactive,
            attributes: [0; 7],
            pages: Vec::new(),
            ended: true,
        }
    }

    /// A stored visit back in memory.
    fn from_state(state: &SessionState, strings: &mut Strings) -> Self {
        Self {
            partition: state.partition,
            bucket: state.bucket,
            interactive: state.interactive,
            seq: state.seq,
            first_ts: state.first_ts,
            last_ts: state.last_ts,
            exit_ts: state.exit_ts,
            attrs: [
                strings.id(&state.entry_page),
                strings.id(&state.exit_page),
                strings.id(&state.source),
                strings.id(&state.country),
                strings.id(&state.device),
                strings.id(&state.browser),
                strings.id(&state.os),
            ],
            pages: state
                .pages
                .iter()
                .map(|p| Page { path: strings.id(&p.path), scroll_depth: p.scroll_depth, bucket: p.bucket })
                .collect(),
            dirty: false,
        }
    }
}

impl Sessions {
    pub(crate) fn new(timeout_ms: i64, lateness_ms: i64, max_open: usize, breakdowns: &[String]) -> Self {
        Self {
            timeout_ms,
            kept: BREAKDOWNS.map(|b| breakdowns.iter().any(|k| k == b)),
            lateness_ms,
            max_open,
            sites: Interner::default(),
            open: OpenVisits::default(),
            strings: Strings::default(),
            tombstones: Vec::new(),
            room_scratch: (Vec::new(), Vec::new()),
            recycle: Recycle::on(),
            carried: Vec::new(),
            stamp: 0,
            dirtied: 0,
            started: 0,
            evicted: 0,
        }
    }

    /// Visits held open.
    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }

    fn key(&mut self, site: &str, visitor: u64) -> (u32, u64) {
        (self.sites.id(site), visitor)
    }

    /// Folds a pageview or custom event at `ts` into its visit; `emit(bucket, dim, value,
    /// change)` receives the row changes.
    pub(crate) fn on_event<E: EventFields>(
        &mut self,
        partition: u32,
        event: &E,
        ts: i64,
        watermarks: &HashMap<u32, i64, FixedState>,
        emit: &mut impl FnMut(u32, Dim, &str, Change),
    ) {
        let key = self.key(event.site(), event.visitor());
        let pageview = event.name() == "pageview";
        let interactive = event.interactive();
        /// What the visit already open for the key (if any) makes of the event.
        enum Found {
            Extended,
            /// Out of order beyond the timeout: earlier than the open visit, after a gap.
            Earlier,
            /// After the open visit's timeout: a new visit, with this `seq`.
            Later(u64),
        }
        let (timeout, strings, kept, dirtied) = (self.timeout_ms, &mut self.strings, &self.kept, &mut self.dirtied);
        let found = self.open.update(&key, |open| {
            if continues(timeout, open, ts) {
                *dirtied += usize::from(!open.dirty);
                open.dirty = true;
                extend(open, strings, event, ts, pageview, interactive, kept, emit);
                Found::Extended
            } else if ts < open.first_ts {
                Found::Earlier
            } else {
                Found::Later(open.seq + 1)
            }
        });
        // The seq of the visit that replaces an ended one of the key; `None`: the key has none.
        let replacing = match found {
            Some(Found::Extended) => return,
            Some(Found::Earlier) => {
                // An event of an earlier visit that is over: a visit of its own, without
                // replacing the open one.
                let alone = start(partition, event, ts, interactive, 0, &self.kept, &mut self.strings);
                emit_start(&alone, &self.strings, pageview, &self.kept, emit);
                self.started += 1;
                return;
            }
            Some(Found::Later(seq)) => Some(seq),
            None => {
                if self.open.len() >= self.max_open {
                    // Only ends visits: the key still holds none.
                    self.make_room(watermarks);
                }
                None
            }
        };
        let open = start(partition, event, ts, interactive, replacing.unwrap_or(0), &self.kept, &mut self.strings);
        emit_start(&open, &self.strings, pageview, &self.kept, emit);
        self.started += 1;
        self.dirtied += 1;
        if replacing.is_some() {
            self.open.insert(key, open);
        } else {
            self.open.add(key, open);
        }
    }

    /// Folds an engagement event at `ts`: per page of its visit, engaged time and the
    /// deepest scroll; without an open visit it counts as one engaged pageview of its own.
    pub(crate) fn on_engagement<E: EventFields>(
        &mut self,
        event: &E,
        ts: i64,
        emit: &mut impl FnMut(u32, Dim, &str, Change),
    ) {
        let key = self.key(event.site(), event.visitor());
        let depth = event.scroll_depth().unwrap_or(0);
        let engaged = event.engaged_ms().unwrap_or(0) as f64;
        let path = event.path();
        let own_bucket = ts.div_euclid(60_000) as u32;
        let mut change = Change { events: 1, sum: engaged, count: u64::from(depth) };
        let mut bucket = own_bucket;
        let (timeout, strings, dirtied) = (self.timeout_ms, &mut self.strings, &mut self.dirtied);
        self.open.update(&key, |open| {
            if !continues(timeout, open, ts) {
                return;
            }
            let pages = &mut open.pages;
            if let Some(page) = pages.iter_mut().find(|p| strings.name(p.path) == path) {
                change = Change { events: 0, sum: engaged, count: u64::from(depth.saturating_sub(page.scroll_depth)) };
                page.scroll_depth = page.scroll_depth.max(depth);
                bucket = page.bucket;
            } else {
                if pages.len() >= MAX_ENGAGED_PAGES {
                    pages.remove(0);
                }
                pages.push(Page { path: strings.id(path), scroll_depth: depth, bucket: own_bucket });
            }
            open.seq += 1;
            *dirtied += usize::from(!open.dirty);
            open.dirty = true;
        });
        emit(bucket, Dim::EngagementTotal, "", change);
        emit(bucket, Dim::EngagementPath, path, change);
    }

    /// Makes room for a new visit: expired visits go; unless that freed an eighth of the
    /// bound, the visits idle longest go too, down to seven eighths, each stored as ended.
    /// Freeing an eighth at once keeps this O(open visits) pass rare. The pass reads only
    /// the visits' clocks, and the idlest are selected exactly (equal times by slot).
    fn make_room(&mut self, watermarks: &HashMap<u32, i64, FixedState>) {
        let mut is_expired = expiry(self.timeout_ms, self.lateness_ms, watermarks);
        let target = self.max_open - (self.max_open / 8).max(1);
        let (mut expired, mut idle) = std::mem::take(&mut self.room_scratch);
        expired.clear();
        idle.clear();
        for (slot, clock) in self.open.clocks() {
            if is_expired(&clock) {
                expired.push(slot);
            } else {
                idle.push((clock.last_ts, slot));
            }
        }
        self.open.end(expired.iter().copied(), |_, _| {});
        if idle.len() > target {
            let cut = idle.len() - target;
            idle.select_nth_unstable(cut - 1);
            let (tombstones, evicted) = (&mut self.tombstones, &mut self.evicted);
            tombstones.reserve(cut);
            self.open.end(idle[..cut].iter().map(|&(_, slot)| slot), |(site, visitor), open| {
                tombstones.push(open.ended(site, visitor));
                *evicted += 1;
            });
        }
        self.room_scratch = (expired, idle);
    }

    /// Every visit changed since the last call (ended ones as tombstones); the expired ones
    /// are forgotten, changed or not (a restart would not take them back).
    pub(crate) fn take_changed(&mut self, watermarks: &HashMap<u32, i64, FixedState>) -> ChangedVisits {
        let mut changed = ChangedVisits::recycling(self.tombstones.len() + self.dirtied, &self.recycle);
        self.dirtied = 0;
        // Each interned string (and site) is copied into the flush's table once, found again
        // by its id: no hashing. Entries of earlier flushes carry an older stamp.
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.carried.clear();
            self.stamp = 1;
        }
        if self.carried.len() < self.strings.names.len() {
            self.carried.resize(self.strings.names.len(), (0, 0));
        }
        let mut sites = vec![None; self.sites.names.len()];
        let mut site_index = |changed: &mut ChangedVisits, site: u32| -> u32 {
            let name = self.sites.name(site);
            match sites.get_mut(site as usize) {
                Some(Some(index)) => *index,
                Some(slot) => *slot.insert(changed.push_string(name)),
                None => changed.push_string(name),
            }
        };
        // Drained, not taken: the list keeps its room for the next flush's visits ended early.
        for mut tombstone in self.tombstones.drain(..) {
            tombstone.site = site_index(&mut changed, tombstone.site);
            changed.push(tombstone);
        }
        let (strings, carried, stamp) = (&self.strings, &mut self.carried, self.stamp);
        let mut carry = |changed: &mut ChangedVisits, id: u32| -> u32 {
            let name = strings.name(id);
            if name.is_empty() {
                return 0;
            }
            match carried.get_mut(id as usize) {
                Some((seen, index)) if *seen == stamp => *index,
                Some(slot) => {
                    *slot = (stamp, changed.push_string(name));
                    slot.1
                }
                None => changed.push_string(name),
            }
        };
        // One pass over the open visits forgets the expired ones and takes the changed ones.
        let mut is_expired = expiry(self.timeout_ms, self.lateness_ms, watermarks);
        self.open.retain(|&(site, visitor), open| {
            if is_expired(&open.clock()) {
                return false;
            }
            if !open.dirty {
                return true;
            }
            open.dirty = false;
            let site = site_index(&mut changed, site);
            let attributes = open.attrs.map(|id| carry(&mut changed, id));
            let pages = open
                .pages
                .iter()
                .map(|p| ChangedPage {
                    path: carry(&mut changed, p.path),
                    scroll_depth: p.scroll_depth,
                    bucket: p.bucket,
                })
                .collect();
            changed.push(ChangedVisit {
                partition: open.partition,
                site,
                visitor,
                seq: open.seq,
                bucket: open.bucket,
                first_ts: open.first_ts,
                last_ts: open.last_ts,
                exit_ts: open.exit_ts,
                interactive: open.interactive,
                attributes,
                pages,
                ended: false,
            });
            true
        });
        // Strings of visits that ended stay interned until the table is rebuilt from the
        // open visits, once it holds far more strings than they can use.
        if self.strings.names.len() > (self.open.len() * 8).max(1 << 16) {
            self.rebuild_strings();
        }
        changed
    }

    /// Interns anew the strings the open visits hold, forgetting all others.
    fn rebuild_strings(&mut self) {
        let old = std::mem::take(&mut self.strings);
        // Sized for the old table; the next flush sizes it for the new one.
        self.carried = Vec::new();
        for open in self.open.values_mut() {
            for id in open.attrs.iter_mut().filter(|id| **id != NO_STRING) {
                *id = self.strings.id(old.name(*id));
            }
            for page in &mut open.pages {
                page.path = self.strings.id(old.name(page.path));
            }
        }
    }

    /// Forgets the open visits of `partitions` (handed over to another processor after a
    /// flush that stored them).
    pub(crate) fn release(&mut self, partitions: &[u32]) {
        self.open.retain(|_, open| !partitions.contains(&open.partition));
        self.tombstones.retain(|visit| !partitions.contains(&visit.partition));
    }

    /// Takes back stored visits: the newest version of each, unless ended or expired under
    /// the restored `watermarks`.
    pub(crate) fn restore(&mut self, stored: Vec<SessionState>, watermarks: &HashMap<u32, i64, FixedState>) {
        let mut newest: HashMap<(u32, CompactString, u64), SessionState> = HashMap::new();
        for state in stored {
            let key = (state.partition, state.site.clone(), state.visitor);
            match newest.get(&key) {
                Some(have) if have.version() >= state.version() => {}
                _ => {
                    newest.insert(key, state);
                }
            }
        }
        for state in newest.into_values() {
            let watermark = watermarks.get(&state.partition).copied();
            let open = Open::from_state(&state, &mut self.strings);
            if state.ended || expired(self.timeout_ms, self.lateness_ms, &open.clock(), watermark) {
                continue;
            }
            let key = self.key(&state.site, state.visitor);
            self.open.insert(key, open);
        }
    }
}

/// Whether an event at `ts` belongs to `state`'s visit (a timeout of `timeout_ms`).
fn continues(timeout_ms: i64, state: &Open, ts: i64) -> bool {
    ts.div_euclid(DAY_MS) == state.first_ts.div_euclid(DAY_MS)
        && ts <= state.last_ts.saturating_add(timeout_ms)
        && ts >= state.first_ts.saturating_sub(timeout_ms)
}

/// [`expired`] for visit after visit, under `watermarks`: the watermark of the partition
/// looked up last is kept (a processor folds few partitions, one lookup per visit showed in
/// profiles of a pass over half a million).
fn expiry(
    timeout_ms: i64,
    lateness_ms: i64,
    watermarks: &HashMap<u32, i64, FixedState>,
) -> impl FnMut(&Clock) -> bool + '_ {
    let mut last: Option<(u32, Option<i64>)> = None;
    move |open| {
        let watermark = match last {
            Some((partition, watermark)) if partition == open.partition => watermark,
            _ => {
                let watermark = watermarks.get(&open.partition).copied();
                last = Some((open.partition, watermark));
                watermark
            }
        };
        expired(timeout_ms, lateness_ms, open, watermark)
    }
}

/// Whether no event the processor still accepts (`ts >= watermark - lateness`) can extend
/// `state`'s visit.
fn expired(timeout_ms: i64, lateness_ms: i64, state: &Clock, watermark: Option<i64>) -> bool {
    let Some(watermark) = watermark else { return false };
    let earliest = watermark.saturating_sub(lateness_ms);
    earliest > state.last_ts.saturating_add(timeout_ms)
        || earliest.div_euclid(DAY_MS) > state.first_ts.div_euclid(DAY_MS)
}

/// A new visit of `event`.
fn start<E: EventFields>(
    partition: u32,
    event: &E,
    ts: i64,
    interactive: bool,
    seq: u64,
    kept: &[bool; 5],
    strings: &mut Strings,
) -> Open {
    let path = strings.id(event.path());
    // A breakdown that is not written needs no value: its id names no string (read as "").
    let mut breakdown = |i: usize, value: &str| if kept[i] { strings.id(value) } else { NO_STRING };
    Open {
        partition,
        bucket: ts.div_euclid(60_000) as u32,
        interactive: u32::from(interactive),
        seq,
        first_ts: ts,
        last_ts: ts,
        exit_ts: ts,
        attrs: [
            path,
            path,
            breakdown(0, event.source()),
            breakdown(1, event.country()),
            breakdown(2, event.device()),
            breakdown(3, event.browser()),
            breakdown(4, event.os()),
        ],
        pages: Vec::new(),
        dirty: true,
    }
}

/// The rows of a visit that just started.
fn emit_start(
    open: &Open,
    strings: &Strings,
    pageview: bool,
    kept: &[bool; 5],
    emit: &mut impl FnMut(u32, Dim, &str, Change),
) {
    let bounce = u64::from(open.interactive == 1);
    for (dim, value) in attribute_rows(open, strings, kept) {
        emit(open.bucket, dim, value, Change { events: 1, sum: 0.0, count: bounce });
    }
    emit(open.bucket, Dim::ExitPage, strings.name(open.attrs[EXIT_PAGE]), Change { events: 1, ..Change::default() });
    if pageview {
        emit(open.bucket, Dim::Pageviews, "", Change { events: 1, ..Change::default() });
    }
}

/// Extends `state`'s visit with an event at `ts` and emits what changed.
#[allow(clippy::too_many_arguments)]
fn extend<E: EventFields>(
    state: &mut Open,
    strings: &mut Strings,
    event: &E,
    ts: i64,
    pageview: bool,
    interactive: bool,
    kept: &[bool; 5],
    emit: &mut impl FnMut(u32, Dim, &str, Change),
) {
    state.seq += 1;
    let before = state.last_ts - state.first_ts;
    state.first_ts = state.first_ts.min(ts);
    state.last_ts = state.last_ts.max(ts);
    let longer = (state.last_ts - state.first_ts) - before;
    let mut bounce = 0;
    if interactive {
        state.interactive = state.interactive.saturating_add(1);
        bounce = match state.interactive {
            1 => 1,
            2 => MINUS_ONE,
            _ => 0,
        };
    }
    if longer != 0 || bounce != 0 {
        let change = Change { events: 0, sum: longer as f64, count: bounce };
        for (dim, value) in attribute_rows(state, strings, kept) {
            emit(state.bucket, dim, value, change);
        }
    }
    if pageview {
        emit(state.bucket, Dim::Pageviews, "", Change { events: 1, ..Change::default() });
        if ts >= state.exit_ts {
            state.exit_ts = ts;
            let exit = strings.name(state.attrs[EXIT_PAGE]);
            if exit != event.path() {
                emit(state.bucket, Dim::ExitPage, exit, Change { events: MINUS_ONE, ..Change::default() });
                emit(state.bucket, Dim::ExitPage, event.path(), Change { events: 1, ..Change::default() });
                state.attrs[EXIT_PAGE] = strings.id(event.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use gallop_event::EventRecord;

    use std::collections::BTreeMap;

    use super::*;

    const T0: i64 = 1_800_000_000_000;

    fn pageview(visitor: u64, ts: i64, path: &str) -> EventRecord {
        let mut e = EventRecord::new();
        e.site = "s.test".into();
        e.name = "pageview".into();
        e.path = path.into();
        e.visitor = visitor;
        e.ts = ts;
        e.source = format!("source {visitor}");
        e.interactive = true;
        e
    }

    /// Rows emitted as (dimension, value, events), events as the wrapping sum.
    type Emitted = BTreeMap<(&'static str, String), u64>;

    fn fold(sessions: &mut Sessions, event: &EventRecord, emitted: &mut Emitted) {
        let watermarks = HashMap::default();
        sessions.on_event(0, event, event.ts, &watermarks, &mut |_, dim, value, change| {
            let events = emitted.entry((DIMENSIONS[dim as usize], value.to_owned())).or_default();
            *events = events.wrapping_add(change.events);
        });
    }

    #[test]
    fn evicted_visits_are_stored_as_tombstones_newer_than_their_last_version() {
        let mut sessions = Sessions::new(1_800_000, 0, 8, &["source".to_owned()]);
        let mut emitted = Emitted::new();
        for visitor in 0..20 {
            fold(&mut sessions, &pageview(visitor, T0 + visitor as i64, &format!("/p{visitor}")), &mut emitted);
        }
        assert!(sessions.len() <= 8);
        let stored = sessions.take_changed(&HashMap::default()).to_states();
        assert_eq!(stored.iter().filter(|s| s.ended).count() as u64, sessions.evicted);
        assert!(sessions.evicted >= 12);
        assert_eq!(stored.len(), 20, "every visit once: ended or open");
        for state in &stored {
            let v = state.visitor;
            let (t, seq) = (T0 + v as i64, u64::from(state.ended));
            assert_eq!((state.site.as_str(), state.first_ts, state.last_ts, state.seq), ("s.test", t, t, seq));
            let strings = [&state.entry_page, &state.exit_page, &state.source].map(CompactString::as_str);
            if state.ended {
                assert_eq!(strings, [""; 3], "a tombstone carries no content");
            } else {
                assert_eq!(strings, [format!("/p{v}").as_str(), &format!("/p{v}"), &format!("source {v}")]);
            }
        }
        assert_eq!(emitted.get(&("session:total", String::new())), Some(&20));
    }

    #[test]
    fn a_flush_takes_each_changed_visit_once_and_forgets_expired_ones() {
        let mut sessions = Sessions::new(1_000, 0, 8, &[]);
        let mut emitted = Emitted::new();
        fold(&mut sessions, &pageview(1, T0, "/a"), &mut emitted);
        fold(&mut sessions, &pageview(2, T0 + 5_000, "/b"), &mut emitted);
        fold(&mut sessions, &pageview(2, T0 + 5_500, "/c"), &mut emitted);
        // Visitor 1's visit is over under this watermark, visitor 2's is not.
        let watermarks = HashMap::from_iter([(0, T0 + 5_500)]);
        let taken = sessions.take_changed(&watermarks).to_states();
        let visitors: Vec<(u64, &str, &str)> =
            taken.iter().map(|s| (s.visitor, s.exit_page.as_str(), s.source.as_str())).collect();
        // No breakdown is written here, so the visit keeps no source.
        assert_eq!(visitors, [(2, "/c", "")], "the expired visit is not stored");
        assert_eq!(sessions.len(), 1);
        assert!(sessions.take_changed(&watermarks).is_empty(), "nothing changed since");
        fold(&mut sessions, &pageview(2, T0 + 5_800, "/d"), &mut emitted);
        let taken = sessions.take_changed(&watermarks).to_states();
        assert_eq!(taken.iter().map(|s| (s.visitor, s.seq, s.exit_page.as_str())).collect::<Vec<_>>(), [(2, 2, "/d")]);
    }

    #[test]
    fn room_is_made_from_expired_visits_first_then_from_the_idlest() {
        let max_open = 8 * 1024;
        let mut sessions = Sessions::new(1_000, 0, max_open, &[]);
        let fold_at = |sessions: &mut Sessions, visitor: u64, ts: i64, watermark: i64| {
            let watermarks = HashMap::from_iter([(0, watermark)]);
            sessions.on_event(0, &pageview(visitor, ts, "/"), ts, &watermarks, &mut |_, _, _, _| {});
        };
        // A full table of visits that are over once the watermark moves past their timeout.
        for visitor in 0..max_open as u64 {
            fold_at(&mut sessions, visitor, T0, T0);
        }
        let later = T0 + 10_000;
        fold_at(&mut sessions, u64::MAX, later, later);
        assert_eq!((sessions.len(), sessions.evicted), (1, 0), "expired visits go without tombstones");
        assert!(sessions.tombstones.is_empty());

        // Visits that can all go on: the idlest end, stored as ended, and only they.
        let total = 3 * max_open as u64;
        for visitor in 0..total {
            fold_at(&mut sessions, visitor, later + visitor as i64, later);
        }
        assert!(sessions.len() <= max_open, "{} open", sessions.len());
        assert!(sessions.len() >= max_open - max_open / 8, "{} open: more ended than an eighth", sessions.len());
        let ended = std::mem::take(&mut sessions.tombstones);
        assert_eq!(ended.len() as u64, sessions.evicted);
        assert_eq!(ended.len() + sessions.len(), total as usize + 1, "every visit open or ended, once");
        assert!(ended.iter().all(|s| s.ended));
        let newest_ended = ended.iter().map(|s| (s.last_ts, s.visitor)).max();
        let idlest_open = sessions.open.iter().map(|(k, o)| (o.last_ts, k.1)).min();
        assert!(newest_ended < idlest_open, "ended {newest_ended:?}, still open {idlest_open:?}");
    }

    #[test]
    fn strings_are_rebuilt_from_the_open_visits_and_keep_their_values() {
        let mut sessions = Sessions::new(1_800_000, 0, 4, &["source".to_owned()]);
        let mut emitted = Emitted::new();
        // Far more distinct pages than the open visits hold: the strings are rebuilt.
        for visitor in 0..70_000u64 {
            fold(&mut sessions, &pageview(visitor, T0, &format!("/p{visitor}")), &mut emitted);
        }
        let interned = sessions.strings.names.len();
        assert!(interned > 1 << 16, "{interned} strings before");
        let _ = sessions.take_changed(&HashMap::default());
        assert!(sessions.strings.names.len() <= 4 * 8, "{} strings after", sessions.strings.names.len());
        // An open visit goes on with its own strings: its exit page moves from its page.
        let (&(_, visitor), _) = sessions.open.iter().next().unwrap_or_else(|| unreachable!("visits are open"));
        let mut moved = Emitted::new();
        fold(&mut sessions, &pageview(visitor, T0 + 1_000, "/next"), &mut moved);
        assert_eq!(moved.get(&("session:exit_page", format!("/p{visitor}"))), Some(&u64::MAX));
        assert_eq!(moved.get(&("session:exit_page", "/next".to_owned())), Some(&1));
        let stored = sessions.take_changed(&HashMap::default()).to_states();
        let state = stored.iter().find(|s| s.visitor == visitor && !s.ended);
        assert_eq!(
            state.map(|s| (s.entry_page.as_str(), s.exit_page.as_str())),
            Some((format!("/p{visitor}").as_str(), "/next"))
        );
    }
}
