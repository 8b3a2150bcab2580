//! [`Processor`]: events in, per-minute partial aggregates out, in bounded memory.
//!
//! State is two-level: a table of (site, minute bucket) entries, each holding one small hash
//! table of value cells per dimension and one top-k per leaderboard dimension. An event
//! finds its bucket once, then does one probe per dimension in a table that holds only that
//! dimension's values — small and cache-resident for low-cardinality fields. Values up to
//! 24 bytes are stored inline, so a hit touches only the cell and allocates nothing.
//! [`Processor::flush`] hands everything out as a [`Delta`] and forgets it: memory is
//! bounded by what arrived since the last flush, and a hard bound on live keys turns into
//! [`ProcessorError::Full`] (backpressure) instead of growth.

use std::{
    collections::{BTreeMap, HashMap},
    hash::BuildHasher,
};

use compact_str::CompactString;
use foldhash::fast::FixedState;
use gallop_config::{EmptyValues, LateEvents, ProcessorConfig, TimeConfig, MAX_ABS_VALUE};
use gallop_event::{decode_block, decode_message_view, DecodeError, EventFields, MessageFormat, ENGAGEMENT};
use hashbrown::HashTable;

use crate::{
    delta::{Delta, LeaderboardRow, RollupRow},
    dimension::{compose, truncate},
    error::ProcessorError,
    intern::Interner,
    rules::Rules,
    same_bytes::same_bytes,
    session::{Change, Sessions, DIMENSIONS},
    sketch::{TopK, UniqHll12},
    stored::OpenSessions,
};

/// Milliseconds in one base bucket.
const BUCKET_MS: i64 = 60_000;

/// Counters of everything the processor saw, cumulative since it was built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events aggregated.
    pub events: u64,
    /// Late events dropped (`late_events = "drop"`).
    pub late_dropped: u64,
    /// Late events aggregated into their arrival bucket (`late_events = "arrival_bucket"`).
    pub late_reassigned: u64,
    /// Events rejected for being too far in the future.
    pub future: u64,
    /// Records that could not be used, by reason (`json`, `version`, `missing_site`,
    /// `missing_name`, `missing_timestamp`).
    pub invalid: HashMap<&'static str, u64>,
    /// Dimension values cut to `processor.max_value_bytes`.
    pub values_truncated: u64,
    /// Rows not written because a value was empty (`empty_values = "skip"`).
    pub values_empty_skipped: u64,
    /// Rows not written because an event exceeded `processor.max_combinations_per_event`.
    pub combinations_capped: u64,
    /// Flushes done.
    pub flushes: u64,
    /// Rows and leaderboards handed out by flushes.
    pub keys_flushed: u64,
    /// Engagement events folded into per-page engagement (not counted in `events`).
    pub engagements: u64,
    /// Visits started.
    pub sessions_started: u64,
    /// Visits ended early at `processor.max_open_sessions`.
    pub sessions_evicted: u64,
}

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Aggregated into its own bucket.
    Counted,
    /// Older than the watermark minus the allowed lateness, and dropped.
    LateDropped,
    /// Older than the watermark minus the allowed lateness, aggregated at arrival time.
    LateReassigned,
    /// Too far ahead of arrival time, rejected.
    Future,
    /// Missing a required field, rejected.
    Invalid(&'static str),
}

/// A record of a message that could not be used, with its position, for a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRecord {
    /// Zero-based index of the record in its message.
    pub index: usize,
    /// Short reason, as counted in [`Stats::invalid`].
    pub reason: &'static str,
    /// The decoder's or validator's full message.
    pub detail: String,
}

/// Per-message result of [`Processor::process_message`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageReport {
    /// Records aggregated (late ones reassigned to arrival included).
    pub counted: usize,
    /// Records dropped as late.
    pub late: usize,
    /// Records rejected as too far in the future.
    pub future: usize,
    /// Records that could not be used.
    pub invalid: Vec<InvalidRecord>,
}

impl MessageReport {
    /// Counts the outcome of record `index`.
    fn tally(&mut self, index: usize, outcome: Outcome) {
        match outcome {
            Outcome::Counted | Outcome::LateReassigned => self.counted += 1,
            Outcome::LateDropped => self.late += 1,
            Outcome::Future => self.future += 1,
            Outcome::Invalid(reason) => {
                self.invalid.push(InvalidRecord { index, reason, detail: format!("record {index}: {reason}") })
            }
        }
    }
}

/// One (site, bucket, dimension, value) cell.
struct Cell {
    hash: u64,
    value: CompactString,
    events: u64,
    value_sum: f64,
    value_count: u64,
    visitors: Option<UniqHll12>,
}

/// Everything of one site in one minute.
struct BucketState {
    site: u32,
    bucket: u32,
    /// Value cells per dimension id (`None` until the dimension is seen).
    rows: Vec<Option<HashTable<Cell>>>,
    /// Leaderboard per dimension id.
    boards: Vec<Option<TopK>>,
}

/// The aggregation core. Pure: no clock, no I/O; the caller passes arrival times and
/// decides when to flush (see [`Processor::should_flush`]).
pub struct Processor {
    rules: Rules,
    /// Interned ids of each rollup's and leaderboard's own spec.
    rollup_ids: Vec<u32>,
    board_ids: Vec<u32>,
    /// Interned id of the first of the visit and engagement dimensions ([`DIMENSIONS`]).
    session_base: u32,
    sessions: Sessions,
    state: State,
    watermarks: HashMap<u32, i64, FixedState>,
    positions: BTreeMap<u32, u64>,
    last_flush_ms: Option<i64>,
}

/// The mutable tables, apart from the rules so both can be borrowed at once.
struct State {
    hasher: FixedState,
    buckets: Buckets,
    live_keys: usize,
    sites: Interner,
    /// Dimension names: the configured specs first, then concrete `props.*` expansions.
    dimensions: Interner,
    stats: Stats,
    max_value_bytes: usize,
    empty_values: EmptyValues,
    /// Reused buffers for composed values and expanded dimension names.
    scratch: String,
    name_scratch: String,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor").field("live_keys", &self.live_keys()).field("stats", &self.state.stats).finish()
    }
}

impl Processor {
    /// Builds a processor from `processor` and `time` config; errors name the bad key.
    pub fn new(processor: &ProcessorConfig, time: &TimeConfig) -> Result<Self, ProcessorError> {
        Ok(Self::with_rules(Rules::compile(processor, time)?))
    }

    /// Another processor with the same rules and nothing folded in: where one process keeps
    /// apart what goes to different places (a cluster's shards), one per place.
    pub fn fresh(&self) -> Self {
        Self::with_rules(self.rules.clone())
    }

    fn with_rules(rules: Rules) -> Self {
        let mut dimensions = Interner::default();
        let rollup_ids = rules.rollups.iter().map(|r| dimensions.id(&r.dimension.spec)).collect();
        let board_ids = rules.leaderboards.iter().map(|l| dimensions.id(&l.dimension.spec)).collect();
        let session_base = dimensions.names.len() as u32;
        for name in DIMENSIONS {
            dimensions.id(name);
        }
        dimensions.keep = dimensions.names.len();
        let sessions = Sessions::new(
            rules.session_timeout_ms,
            rules.lateness_ms(),
            rules.max_open_sessions,
            &rules.session_breakdowns,
        );
        let state = State {
            hasher: FixedState::with_seed(0x6761_6c6c_6f70),
            buckets: Buckets::default(),
            live_keys: 0,
            sites: Interner::default(),
            dimensions,
            stats: Stats::default(),
            max_value_bytes: rules.max_value_bytes,
            empty_values: rules.empty_values,
            scratch: String::with_capacity(256),
            name_scratch: String::with_capacity(64),
        };
        Self {
            rules,
            rollup_ids,
            board_ids,
            session_base,
            sessions,
            state,
            watermarks: HashMap::default(),
            positions: BTreeMap::new(),
            last_flush_ms: None,
        }
    }

    /// Keys (rows and leaderboards) held since the last flush.
    pub fn live_keys(&self) -> usize {
        self.state.live_keys
    }

    /// Cumulative counters.
    pub fn stats(&self) -> &Stats {
        &self.state.stats
    }

    /// How far before a partition's watermark a stored visit may have ended and still be
    /// extended: `time.allowed_lateness` + `processor.session_timeout`, ms.
    pub fn session_horizon_ms(&self) -> i64 {
        self.rules.lateness_ms().saturating_add(self.rules.session_timeout_ms)
    }

    /// Visits held open (for the `gallop_sessions_open` gauge).
    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Takes back what a previous run (or the partitions' previous owner) stored with its
    /// last flush: the watermarks and the open visits of partitions this processor is about
    /// to fold — before any event of those partitions.
    pub fn restore(&mut self, stored: OpenSessions) {
        for (partition, watermark) in stored.watermarks {
            let known = self.watermarks.entry(partition).or_insert(watermark);
            *known = (*known).max(watermark);
        }
        self.sessions.restore(stored.sessions, &self.watermarks);
    }

    /// Forgets what this processor holds of `partitions` — their open visits, watermarks
    /// and positions — once a flush stored it and the partitions go to another processor.
    /// Aggregated rows are not per partition: flush first.
    pub fn release(&mut self, partitions: &[u32]) {
        self.sessions.release(partitions);
        for partition in partitions {
            self.watermarks.remove(partition);
            self.positions.remove(partition);
        }
    }

    /// The event-time watermark of `partition`: the newest event time seen there (ms).
    pub fn watermark(&self, partition: u32) -> Option<i64> {
        self.watermarks.get(&partition).copied()
    }

    /// Whether a flush is due at `now_ms`: enough live keys, or the flush interval
    /// passed since the last flush (or since the first call).
    pub fn should_flush(&mut self, now_ms: i64) -> bool {
        let since = *self.last_flush_ms.get_or_insert(now_ms);
        self.live_keys() >= self.rules.flush_keys
            || (self.live_keys() > 0 && now_ms.saturating_sub(since) >= self.rules.flush_interval_ms)
    }

    /// The hard bound on live keys (`processor.max_live_keys`).
    pub fn max_live_keys(&self) -> usize {
        self.rules.max_live_keys
    }

    /// Whether the state is at its hard bound; events are refused until a flush.
    pub fn is_full(&self) -> bool {
        self.live_keys() >= self.rules.max_live_keys
    }

    /// Decodes a broker message (NDJSON records, or a compact block: told by its first
    /// bytes) and aggregates every usable record. `position` is the message's stream
    /// sequence / offset in `partition`; it is remembered for the next [`Delta`]. A bad NDJSON
    /// record is reported and skipped; it never stops the message. A corrupt or truncated
    /// block is refused whole (reason `block`), before any of its records counts.
    pub fn process_message(
        &mut self,
        partition: u32,
        position: u64,
        payload: &[u8],
        arrival_ms: i64,
    ) -> Result<MessageReport, ProcessorError> {
        self.check_capacity()?;
        let mut report = MessageReport::default();
        match MessageFormat::of(payload) {
            MessageFormat::Ndjson => {
                for (index, decoded) in decode_message_view(payload).enumerate() {
                    let event = match decoded {
                        Ok(event) => event,
                        Err(e) => {
                            let reason = match e {
                                DecodeError::Json { .. } => "json",
                                DecodeError::Version { .. } => "version",
                            };
                            *self.state.stats.invalid.entry(reason).or_default() += 1;
                            report.invalid.push(InvalidRecord { index, reason, detail: e.to_string() });
                            continue;
                        }
                    };
                    let outcome = self.add(partition, &event, arrival_ms);
                    report.tally(index, outcome);
                }
            }
            MessageFormat::Block(_) => match decode_block(payload) {
                Ok(events) => {
                    for (index, event) in events.iter().enumerate() {
                        let outcome = self.add(partition, event, arrival_ms);
                        report.tally(index, outcome);
                    }
                }
                Err(e) => {
                    *self.state.stats.invalid.entry("block").or_default() += 1;
                    report.invalid.push(InvalidRecord { index: 0, reason: "block", detail: e.to_string() });
                }
            },
        }
        let seen = self.positions.entry(partition).or_insert(position);
        *seen = (*seen).max(position);
        Ok(report)
    }

    /// Aggregates one decoded event of `partition` that arrived at `arrival_ms`.
    pub fn process<E: EventFields>(
        &mut self,
        partition: u32,
        event: &E,
        arrival_ms: i64,
    ) -> Result<Outcome, ProcessorError> {
        self.check_capacity()?;
        Ok(self.add(partition, event, arrival_ms))
    }

    fn check_capacity(&self) -> Result<(), ProcessorError> {
        if self.is_full() {
            return Err(ProcessorError::Full { live_keys: self.live_keys(), max_live_keys: self.rules.max_live_keys });
        }
        Ok(())
    }

    /// Checks the event's time, then updates every rollup and leaderboard.
    fn add<E: EventFields>(&mut self, partition: u32, event: &E, arrival_ms: i64) -> Outcome {
        let stats = &mut self.state.stats;
        let invalid = if event.site().is_empty() {
            Some("missing_site")
        } else if event.name().is_empty() {
            Some("missing_name")
        } else if event.ts() <= 0 {
            Some("missing_timestamp")
        } else {
            None
        };
        if let Some(reason) = invalid {
            *stats.invalid.entry(reason).or_default() += 1;
            return Outcome::Invalid(reason);
        }
        if event.ts() > arrival_ms.saturating_add(self.rules.max_future_ms) {
            stats.future += 1;
            return Outcome::Future;
        }
        if let Some(value) = event.value() {
            if !value.is_finite() || value.abs() > MAX_ABS_VALUE {
                *stats.invalid.entry("value_out_of_range").or_default() += 1;
                return Outcome::Invalid("value_out_of_range");
            }
        }
        // The watermark never passes arrival time: a future-dated event (inside
        // `max_future`) must not make events the gateway accepted a moment ago late.
        let seen = event.ts().min(arrival_ms);
        let watermark = self.watermarks.entry(partition).or_insert(seen);
        *watermark = (*watermark).max(seen);
        let mut ts = event.ts();
        let mut outcome = Outcome::Counted;
        if ts < watermark.saturating_sub(self.rules.lateness_ms()) {
            match self.rules.late_events {
                LateEvents::Drop => {
                    stats.late_dropped += 1;
                    return Outcome::LateDropped;
                }
                LateEvents::ArrivalBucket => {
                    stats.late_reassigned += 1;
                    ts = arrival_ms;
                    outcome = Outcome::LateReassigned;
                }
            }
        }
        // Minutes since the epoch fit u32 until the year 10136.
        let bucket = ts.div_euclid(BUCKET_MS) as u32;
        let (state, base) = (&mut self.state, self.session_base);
        if event.name() == ENGAGEMENT {
            state.stats.engagements += 1;
            let site = state.sites.id(event.site());
            self.sessions.on_engagement(event, ts, &mut |bucket, dim, value, change| {
                state.apply(site, bucket, base + dim as u32, value, change);
            });
            return outcome;
        }
        state.stats.events += 1;
        let site = state.aggregate(&self.rules, &self.rollup_ids, &self.board_ids, event, bucket);
        if self.rules.sessions {
            self.sessions.on_event(partition, event, ts, &self.watermarks, &mut |bucket, dim, value, change| {
                state.apply(site, bucket, base + dim as u32, value, change);
            });
            state.stats.sessions_started = self.sessions.started;
            state.stats.sessions_evicted = self.sessions.evicted;
        }
        outcome
    }

    /// Hands out everything aggregated since the last flush and forgets it. `now_ms`
    /// restarts the flush interval.
    pub fn flush(&mut self, now_ms: i64) -> Delta {
        let state = &mut self.state;
        let mut delta = Delta {
            rows: Vec::with_capacity(state.live_keys),
            leaderboards: Vec::new(),
            positions: std::mem::take(&mut self.positions),
            sessions: self.sessions.take_changed(&self.watermarks),
            watermarks: self.watermarks.iter().map(|(&p, &w)| (p, w)).collect(),
        };
        for entry in state.buckets.drain() {
            let site = state.sites.name(entry.site);
            let bucket = i64::from(entry.bucket) * 60;
            for (id, table) in entry.rows.into_iter().enumerate() {
                let Some(table) = table else { continue };
                let dimension = state.dimensions.name(id as u32);
                for cell in table {
                    delta.rows.push(RollupRow {
                        site: site.to_owned(),
                        bucket,
                        dimension: dimension.to_owned(),
                        value: cell.value.into(),
                        events: cell.events,
                        visitors: cell.visitors.unwrap_or_default(),
                        value_sum: cell.value_sum,
                        value_count: cell.value_count,
                    });
                }
            }
            for (id, top) in entry.boards.into_iter().enumerate() {
                let Some(top) = top else { continue };
                delta.leaderboards.push(LeaderboardRow {
                    site: site.to_owned(),
                    bucket,
                    dimension: state.dimensions.name(id as u32).to_owned(),
                    top,
                });
            }
        }
        state.live_keys = 0;
        state.dimensions.reset();
        state.sites.reset();
        self.last_flush_ms = Some(now_ms);
        state.stats.flushes += 1;
        state.stats.keys_flushed += (delta.rows.len() + delta.leaderboards.len()) as u64;
        delta
    }
}

impl State {
    /// Adds `change` to the row `(site, bucket, dimension id, value)` (visits, engagement).
    fn apply(&mut self, site: u32, bucket: u32, id: u32, value: &str, change: Change) {
        let value = if value.len() > self.max_value_bytes {
            self.scratch.clear();
            self.scratch.push_str(value);
            count_truncation(&mut self.stats, self.max_value_bytes, &mut self.scratch);
            self.scratch.as_str()
        } else {
            value
        };
        let entry = self.buckets.entry(&self.hasher, site, bucket);
        self.live_keys += add_change(entry, &self.hasher, id, value, change);
    }

    /// Updates every rollup and leaderboard of `rules` with `event`, in `bucket`; returns
    /// the event's interned site id.
    fn aggregate<E: EventFields>(
        &mut self,
        rules: &Rules,
        rollup_ids: &[u32],
        board_ids: &[u32],
        event: &E,
        bucket: u32,
    ) -> u32 {
        let site = self.sites.id(event.site());
        let mut budget = rules.max_combinations;
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut name = std::mem::take(&mut self.name_scratch);
        let entry = self.buckets.entry(&self.hasher, site, bucket);

        for (rollup, &static_id) in rules.rollups.iter().zip(rollup_ids) {
            let dimension = &rollup.dimension;
            if let Some(name) = &dimension.uniques_of {
                // Only events carrying the identifier count here.
                let Some(hash) = event.unique(name) else { continue };
                if budget == 0 {
                    self.stats.combinations_capped += 1;
                    continue;
                }
                budget -= 1;
                self.live_keys += upsert_unique(entry, &self.hasher, static_id, event, hash);
            } else if dimension.is_wildcard() {
                for (key, value) in event.props() {
                    let Some(any_empty) = compose(dimension, event, Some((key, value)), &mut scratch) else { continue };
                    dimension.write_with_prop(key, &mut name);
                    let id = self.dimensions.id(&name);
                    if rollup_ids.contains(&id) {
                        // A rollup configured for this very dimension counts it once.
                        continue;
                    }
                    if budget == 0 {
                        self.stats.combinations_capped += 1;
                        continue;
                    }
                    if accept_value(&mut self.stats, self.empty_values, self.max_value_bytes, &mut scratch, any_empty) {
                        budget -= 1;
                        self.live_keys += upsert_cell(entry, &self.hasher, id, &scratch, event, rollup.visitors);
                    }
                }
            } else if let Some(value) = dimension.single_field().and_then(|f| f.read(event)) {
                // One plain field: use the event's own string, copying only to truncate.
                if budget == 0 {
                    self.stats.combinations_capped += 1;
                    continue;
                }
                if value.is_empty() && self.empty_values == EmptyValues::Skip {
                    self.stats.values_empty_skipped += 1;
                    continue;
                }
                budget -= 1;
                let value = if value.len() > self.max_value_bytes {
                    scratch.clear();
                    scratch.push_str(value);
                    count_truncation(&mut self.stats, self.max_value_bytes, &mut scratch);
                    scratch.as_str()
                } else {
                    value
                };
                self.live_keys += upsert_cell(entry, &self.hasher, static_id, value, event, rollup.visitors);
            } else {
                let Some(any_empty) = compose(dimension, event, None, &mut scratch) else { continue };
                if budget == 0 {
                    self.stats.combinations_capped += 1;
                    continue;
                }
                if accept_value(&mut self.stats, self.empty_values, self.max_value_bytes, &mut scratch, any_empty) {
                    budget -= 1;
                    self.live_keys += upsert_cell(entry, &self.hasher, static_id, &scratch, event, rollup.visitors);
                }
            }
        }

        for (board, &static_id) in rules.leaderboards.iter().zip(board_ids) {
            let dimension = &board.dimension;
            // Leaderboards rank values; an empty value is nothing to rank.
            if dimension.is_wildcard() {
                for (key, value) in event.props() {
                    if compose(dimension, event, Some((key, value)), &mut scratch) != Some(false) {
                        continue;
                    }
                    dimension.write_with_prop(key, &mut name);
                    let id = self.dimensions.id(&name);
                    if board_ids.contains(&id) {
                        // A leaderboard configured for this very dimension keeps it (its k).
                        continue;
                    }
                    if budget == 0 {
                        self.stats.combinations_capped += 1;
                        continue;
                    }
                    budget -= 1;
                    count_truncation(&mut self.stats, self.max_value_bytes, &mut scratch);
                    self.live_keys += insert_board(entry, id, board.k, &scratch);
                }
            } else {
                if compose(dimension, event, None, &mut scratch) != Some(false) {
                    continue;
                }
                if budget == 0 {
                    self.stats.combinations_capped += 1;
                    continue;
                }
                budget -= 1;
                count_truncation(&mut self.stats, self.max_value_bytes, &mut scratch);
                self.live_keys += insert_board(entry, static_id, board.k, &scratch);
            }
        }
        self.scratch = scratch;
        self.name_scratch = name;
        site
    }
}

/// The (site, minute) entries: a vector indexed by a hash table, so the entry used last is
/// found again without hashing (an event's rollups and its visit's rows mostly share one).
#[derive(Default)]
struct Buckets {
    entries: Vec<BucketState>,
    /// Index into `entries` by (site, bucket).
    index: HashTable<(u64, u32)>,
    /// The entry found last: (site, bucket, index).
    last: Option<(u32, u32, usize)>,
}

impl Buckets {
    /// The (site, bucket) entry, made when missing.
    #[inline]
    fn entry(&mut self, hasher: &FixedState, site: u32, bucket: u32) -> &mut BucketState {
        let at = match self.last {
            Some((s, b, at)) if s == site && b == bucket => at,
            _ => {
                let hash = hasher.hash_one((site, bucket));
                let entries = &mut self.entries;
                let at = match self.index.find(hash, |&(_, at)| {
                    let e = &entries[at as usize];
                    e.site == site && e.bucket == bucket
                }) {
                    Some(&(_, at)) => at as usize,
                    None => {
                        // Entries are (site, minute) pairs alive since the last flush: far
                        // fewer than u32::MAX.
                        let at = entries.len();
                        entries.push(BucketState { site, bucket, rows: Vec::new(), boards: Vec::new() });
                        self.index.insert_unique(hash, (hash, at as u32), |&(h, _)| h);
                        at
                    }
                };
                self.last = Some((site, bucket, at));
                at
            }
        };
        &mut self.entries[at]
    }

    /// Hands out every entry and forgets them.
    fn drain(&mut self) -> std::vec::Drain<'_, BucketState> {
        self.index.clear();
        self.last = None;
        self.entries.drain(..)
    }
}

/// Counts `event` into the cell of `value` in dimension `id`; 1 if the cell is new.
#[inline]
fn upsert_cell<E: EventFields>(
    entry: &mut BucketState,
    hasher: &FixedState,
    id: u32,
    value: &str,
    event: &E,
    visitors: bool,
) -> usize {
    let (cell, new) = cell_of(entry, hasher, id, value, visitors);
    cell.events += 1;
    if let Some(value) = event.value() {
        cell.value_sum += value;
        cell.value_count += 1;
    }
    if let Some(hll) = &mut cell.visitors {
        hll.insert_u64(event.visitor());
    }
    new
}

/// Counts `event` into the one cell of the distinct count `id`, its sketch fed with the
/// event's identifier `hash` instead of the visitor; 1 if the cell is new.
fn upsert_unique<E: EventFields>(entry: &mut BucketState, hasher: &FixedState, id: u32, event: &E, hash: u64) -> usize {
    let (cell, new) = cell_of(entry, hasher, id, "", true);
    cell.events += 1;
    if let Some(value) = event.value() {
        cell.value_sum += value;
        cell.value_count += 1;
    }
    if let Some(hll) = &mut cell.visitors {
        hll.insert_u64(hash);
    }
    new
}

/// Adds `change` to the cell of `value` in dimension `id`; 1 if the cell is new. Counters
/// wrap, so a change of `u64::MAX` takes one away (see `session`).
fn add_change(entry: &mut BucketState, hasher: &FixedState, id: u32, value: &str, change: Change) -> usize {
    let (cell, new) = cell_of(entry, hasher, id, value, false);
    cell.events = cell.events.wrapping_add(change.events);
    cell.value_sum += change.sum;
    cell.value_count = cell.value_count.wrapping_add(change.count);
    new
}

/// The cell of `value` in dimension `id` (made when missing, with a visitor sketch when
/// `visitors`), and 1 if it is new.
#[inline]
fn cell_of<'e>(
    entry: &'e mut BucketState,
    hasher: &FixedState,
    id: u32,
    value: &str,
    visitors: bool,
) -> (&'e mut Cell, usize) {
    let index = id as usize;
    if entry.rows.len() <= index {
        entry.rows.resize_with(index + 1, || None);
    }
    let table = entry.rows[index].get_or_insert_with(HashTable::new);
    let hash = hasher.hash_one(value);
    match table.find_entry(hash, |c| c.hash == hash && same_bytes(c.value.as_bytes(), value.as_bytes())) {
        Ok(found) => (found.into_mut(), 0),
        Err(absent) => {
            let cell = Cell {
                hash,
                value: CompactString::new(value),
                events: 0,
                value_sum: 0.0,
                value_count: 0,
                visitors: visitors.then(UniqHll12::new),
            };
            (absent.into_table().insert_unique(hash, cell, |c| c.hash).into_mut(), 1)
        }
    }
}

/// Inserts `value` into the leaderboard of dimension `id`; 1 if the leaderboard is new.
fn insert_board(entry: &mut BucketState, id: u32, k: usize, value: &str) -> usize {
    let index = id as usize;
    if entry.boards.len() <= index {
        entry.boards.resize_with(index + 1, || None);
    }
    let mut new = 0;
    if entry.boards[index].is_none() {
        // k was checked by Rules::compile, so TopK::new succeeds; a failure leaves the
        // leaderboard out rather than panic.
        entry.boards[index] = TopK::new(k).ok();
        new = 1;
    }
    if let Some(top) = &mut entry.boards[index] {
        top.insert(value.as_bytes());
    }
    new
}

/// Applies the empty-value policy and truncation; whether the row is written.
fn accept_value(stats: &mut Stats, empty: EmptyValues, max: usize, value: &mut String, any_empty: bool) -> bool {
    if any_empty && empty == EmptyValues::Skip {
        stats.values_empty_skipped += 1;
        return false;
    }
    count_truncation(stats, max, value);
    true
}

fn count_truncation(stats: &mut Stats, max: usize, value: &mut String) {
    if truncate(value, max) {
        stats.values_truncated += 1;
    }
}

#[cfg(test)]
mod tests {
    use gallop_config::{LeaderboardConfig, RollupConfig};
    use gallop_event::EventRecord;

    use super::*;

    const T0: i64 = 1_795_428_000_000; // 2026-11-23T10:00:00Z

    fn event(name: &str, path: &str, visitor: u64, ts: i64) -> EventRecord {
        let mut e = EventRecord::new();
        e.site = "example.com".into();
        e.name = name.into();
        e.path = path.into();
        e.host = "example.com".into();
        e.country = "DE".into();
        e.visitor = visitor;
        e.ts = ts;
        e
    }

    fn processor(config: ProcessorConfig) -> Processor {
        Processor::new(&config, &TimeConfig::default()).expect("valid config")
    }

    /// (dimension, value, bucket) → (events, visitors, value_sum, value_count).
    type Table = std::collections::BTreeMap<(String, String, i64), (u64, u64, f64, u64)>;

    fn table(delta: &Delta) -> Table {
        delta
            .rows
            .iter()
            .map(|r| {
                (
                    (r.dimension.clone(), r.value.clone(), r.bucket),
                    (r.events, r.visitors.estimate(), r.value_sum, r.value_count),
                )
            })
            .collect()
    }

    #[test]
    fn release_forgets_what_a_handed_over_partition_held_and_nothing_else() {
        let mut p = processor(ProcessorConfig::default());
        for (partition, visitor) in [(0, 1), (0, 2), (1, 3)] {
            assert_eq!(p.process(partition, &event("pageview", "/", visitor, T0), T0), Ok(Outcome::Counted));
        }
        let delta = p.flush(T0 + 1_000);
        assert_eq!(delta.sessions.len(), 3, "every visit stored once");
        assert_eq!(p.open_sessions(), 3);
        p.release(&[0]);
        assert_eq!(p.open_sessions(), 1, "partition 1's visit stays open");
        assert_eq!((p.watermark(0), p.watermark(1)), (None, Some(T0)));
        // Partition 1's visit goes on; partition 0 is read back elsewhere.
        assert_eq!(p.process(1, &event("pageview", "/b", 3, T0 + 5_000), T0 + 5_000), Ok(Outcome::Counted));
        assert_eq!(p.open_sessions(), 1, "no new visit: the old one goes on");
        let delta = p.flush(T0 + 6_000);
        assert_eq!(delta.sessions.visits().iter().map(|v| v.partition).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn one_event_touches_every_default_rollup() {
        let mut p = processor(ProcessorConfig { sessions: false, ..ProcessorConfig::default() });
        let mut e = event("signup", "/pricing", 7, T0 + 5_000);
        e.props.insert("plan".into(), "pro".into());
        e.value = Some(12.5);
        assert_eq!(p.process(0, &e, T0 + 6_000), Ok(Outcome::Counted));
        let delta = p.flush(T0 + 7_000);
        let t = table(&delta);
        let bucket = T0 / 1000;
        assert_eq!(t.get(&("total".into(), "".into(), bucket)), Some(&(1, 1, 12.5, 1)));
        assert_eq!(t.get(&("path".into(), "/pricing".into(), bucket)), Some(&(1, 1, 12.5, 1)));
        assert_eq!(t.get(&("name~props.plan".into(), "signup~pro".into(), bucket)), Some(&(1, 1, 12.5, 1)));
        assert_eq!(t.get(&("utm_source".into(), "".into(), bucket)), Some(&(1, 1, 12.5, 1)), "empty kept by default");
        assert_eq!(t.get(&("currency".into(), "".into(), bucket)), Some(&(1, 0, 12.5, 1)), "a value, no currency");
        assert_eq!(t.get(&("page".into(), "/pricing".into(), bucket)), None, "page counts pageviews only");
        // Every default rollup but `page`, and `currency`.
        assert_eq!(delta.rows.len(), crate::rules::DEFAULT_ROLLUPS.len());
        let boards: Vec<(&str, Vec<Vec<u8>>)> = delta
            .leaderboards
            .iter()
            .map(|b| (b.dimension.as_str(), b.top.top().into_iter().map(|i| i.0).collect()))
            .collect();
        assert_eq!(boards, vec![("props.plan", vec![b"pro".to_vec()])], "no referrer: no referrer leaderboard");
        assert_eq!(p.live_keys(), 0, "flush forgets");
    }

    #[test]
    fn compact_blocks_and_ndjson_count_the_same() {
        let records: Vec<EventRecord> = (0..300u64)
            .map(|i| {
                let mut e = event(
                    if i % 4 == 0 { "signup" } else { "pageview" },
                    &format!("/p{}", i % 7),
                    i % 40,
                    T0 + i as i64,
                );
                e.id = format!("run{i:010x}");
                if i % 4 == 0 {
                    e.props.insert("plan".into(), ["free", "pro"][i as usize % 2].into());
                    e.value = Some(i as f64 / 4.0);
                }
                e
            })
            .collect();
        let mut ndjson = Vec::new();
        for r in &records {
            gallop_event::encode_into(r, &mut ndjson);
        }
        let mut old_half = Vec::new();
        for r in &records[..150] {
            gallop_event::encode_into(r, &mut old_half);
        }
        let mut first = Vec::new();
        gallop_event::encode_block(&records[150..], &mut first);
        let mut by_json = processor(ProcessorConfig::default());
        let report = by_json.process_message(0, 1, &ndjson, T0 + 1_000).expect("room");
        assert_eq!(report.counted, 300);
        // A stream of both formats, as during a rolling upgrade.
        let mut mixed = processor(ProcessorConfig::default());
        for (position, message) in [&old_half, &first].into_iter().enumerate() {
            let report = mixed.process_message(0, position as u64 + 1, message, T0 + 1_000).expect("room");
            assert_eq!((report.counted, report.invalid.len()), (150, 0));
        }
        assert_eq!(table(&mixed.flush(T0 + 2_000)), table(&by_json.flush(T0 + 2_000)));

        let mut corrupt = first.clone();
        corrupt.truncate(first.len() - 3);
        let mut p = processor(ProcessorConfig::default());
        let report = p.process_message(0, 1, &corrupt, T0 + 1_000).expect("room");
        assert_eq!(report.counted, 0, "a cut block counts nothing");
        assert_eq!(report.invalid[0].reason, "block");
        assert!(
            report.invalid[0].detail.starts_with("compact block truncated at byte"),
            "{}",
            report.invalid[0].detail
        );
        assert_eq!(p.stats().invalid.get("block"), Some(&1));
        assert_eq!(p.live_keys(), 0);
    }

    #[test]
    fn a_configured_dimension_is_not_counted_again_by_a_wildcard() {
        let config = ProcessorConfig {
            sessions: false,
            rollups: vec![RollupConfig { dimension: "name~props.plan".into(), visitors: false }],
            leaderboards: vec![LeaderboardConfig { dimension: "props.plan".into(), k: 50 }],
            ..ProcessorConfig::default()
        };
        let mut p = processor(config);
        let mut e = event("signup", "/", 1, T0);
        e.props.insert("plan".into(), "pro".into());
        e.props.insert("seats".into(), "5".into());
        p.process(0, &e, T0 + 1_000).expect("room");
        let delta = p.flush(T0);
        let t = table(&delta);
        let b = T0 / 1000;
        assert_eq!(t[&("name~props.plan".into(), "signup~pro".into(), b)].0, 1, "once, not once per rule");
        assert_eq!(t[&("name~props.seats".into(), "signup~5".into(), b)].0, 1);
        let boards: Vec<(&str, usize, u64)> = delta
            .leaderboards
            .iter()
            .map(|l| (l.dimension.as_str(), l.top.k(), l.top.top().iter().map(|i| i.1).sum()))
            .collect();
        assert_eq!(boards.len(), 2, "{boards:?}");
        assert!(boards.contains(&("props.plan", 50, 1)) && boards.contains(&("props.seats", 10, 1)), "{boards:?}");
    }

    #[test]
    fn a_distinct_count_counts_its_identifier_not_the_visitor() {
        let config = ProcessorConfig {
            default_rollups: false,
            sessions: false,
            rollups: vec![RollupConfig { dimension: "uniq:ip".into(), visitors: false }],
            ..ProcessorConfig::default()
        };
        let mut p = processor(config);
        // 40 events of one visitor from 8 distinct hashed addresses, and 5 without one.
        for i in 0..45u64 {
            let mut e = event("hit", "/", 1, T0 + i as i64);
            if i < 40 {
                e.uniques.insert("ip".into(), 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(i % 8 + 1));
                e.value = Some(1.5);
            }
            p.process(0, &e, T0 + 1_000).expect("room");
        }
        let t = table(&p.flush(T0));
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[&("uniq:ip".into(), "".into(), T0 / 1000)], (40, 8, 60.0, 40));
        let boards = ProcessorConfig {
            leaderboards: vec![LeaderboardConfig { dimension: "uniq:ip".into(), k: 5 }],
            ..ProcessorConfig::default()
        };
        let err = Processor::new(&boards, &TimeConfig::default()).expect_err("not rankable");
        assert!(err.to_string().contains("processor.leaderboards[0].dimension"), "{err}");
    }

    #[test]
    fn counters_sums_and_visitors_add_up() {
        let mut p = processor(ProcessorConfig::default());
        for i in 0..100u64 {
            let mut e =
                event(if i % 4 == 0 { "purchase" } else { "pageview" }, &format!("/p{}", i % 3), i % 10, T0 + i as i64);
            if i % 4 == 0 {
                e.value = Some(2.5);
            }
            p.process(0, &e, T0 + 1_000).expect("room");
        }
        let t = table(&p.flush(T0));
        let b = T0 / 1000;
        assert_eq!(t[&("total".into(), "".into(), b)], (100, 10, 62.5, 25));
        assert_eq!(t[&("name".into(), "purchase".into(), b)], (25, 5, 62.5, 25));
        assert_eq!(t[&("name".into(), "pageview".into(), b)], (75, 10, 0.0, 0));
        assert_eq!(t[&("path".into(), "/p0".into(), b)].0, 34);
    }

    #[test]
    fn buckets_are_utc_minutes() {
        let mut p = processor(ProcessorConfig {
            default_rollups: false,
            sessions: false,
            rollups: vec![RollupConfig { dimension: "total".into(), visitors: false }],
            ..ProcessorConfig::default()
        });
        for ts in [T0, T0 + 59_999, T0 + 60_000, T0 - 1] {
            p.process(0, &event("pageview", "/", 1, ts), T0 + 120_000).expect("room");
        }
        let buckets: Vec<(i64, u64)> = p
            .flush(T0)
            .rows
            .iter()
            .map(|r| (r.bucket, r.events))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect();
        assert_eq!(buckets, vec![(T0 / 1000 - 60, 1), (T0 / 1000, 2), (T0 / 1000 + 60, 1)]);
    }

    #[test]
    fn late_and_future_events() {
        // Allowed lateness (1 h) plus the acceptance grace (2 min).
        let hour = 3_600_000 + 120_000;
        let mut drop = processor(ProcessorConfig::default());
        assert_eq!(drop.process(0, &event("pageview", "/", 1, T0), T0), Ok(Outcome::Counted));
        assert_eq!(
            drop.process(0, &event("pageview", "/", 1, T0 - hour + 1), T0),
            Ok(Outcome::Counted),
            "inside lateness"
        );
        assert_eq!(drop.process(0, &event("pageview", "/", 1, T0 - hour - 1), T0), Ok(Outcome::LateDropped));
        assert_eq!(
            drop.process(1, &event("pageview", "/", 1, T0 - hour - 1), T0),
            Ok(Outcome::Counted),
            "watermarks are per partition"
        );
        assert_eq!(drop.process(0, &event("pageview", "/", 1, T0 + 301_000), T0), Ok(Outcome::Future));
        assert_eq!((drop.stats().late_dropped, drop.stats().future, drop.stats().events), (1, 1, 3));
        assert_eq!(drop.watermark(0), Some(T0));

        let mut reassign =
            processor(ProcessorConfig { late_events: LateEvents::ArrivalBucket, ..ProcessorConfig::default() });
        reassign.process(0, &event("pageview", "/", 1, T0), T0).expect("room");
        let arrival = T0 + 30_000;
        assert_eq!(
            reassign.process(0, &event("pageview", "/late", 1, T0 - 2 * hour), arrival),
            Ok(Outcome::LateReassigned)
        );
        let late_row =
            reassign.flush(T0).rows.into_iter().find(|r| r.dimension == "path" && r.value == "/late").expect("row");
        assert_eq!(late_row.bucket, arrival / 60_000 * 60);
    }

    #[test]
    fn an_event_the_gateway_accepted_is_never_late() {
        // The gateway accepts ts in [now - 1h, now + 5m]. A future-dated event must not
        // move the watermark past arrival time, or a 58-minute-old event accepted a moment
        // later would be dropped.
        let minute = 60_000;
        let mut p = processor(ProcessorConfig::default());
        assert_eq!(p.process(0, &event("pageview", "/future", 1, T0 + 4 * minute), T0), Ok(Outcome::Counted));
        assert_eq!(p.watermark(0), Some(T0), "the watermark stops at arrival time");
        assert_eq!(p.process(0, &event("pageview", "/old", 2, T0 - 58 * minute), T0 + 1_000), Ok(Outcome::Counted));
        // Accepted at the edge of the window, stamped by the broker a while later.
        let accepted_at = T0 + 2_000;
        let stamped = accepted_at + 35_000;
        assert_eq!(
            p.process(0, &event("pageview", "/edge", 3, accepted_at - 60 * minute), stamped),
            Ok(Outcome::Counted)
        );
        assert_eq!(p.stats().late_dropped, 0);
    }

    #[test]
    fn values_that_could_overflow_a_sum_are_refused() {
        let mut p = processor(ProcessorConfig { sessions: false, ..ProcessorConfig::default() });
        for value in [1.797e308, f64::INFINITY, f64::NAN, -2e15] {
            let mut e = event("purchase", "/checkout", 1, T0);
            e.value = Some(value);
            assert_eq!(p.process(0, &e, T0), Ok(Outcome::Invalid("value_out_of_range")), "{value}");
        }
        let mut e = event("purchase", "/checkout", 1, T0);
        e.value = Some(1e15);
        assert_eq!(p.process(0, &e, T0), Ok(Outcome::Counted));
        assert_eq!(p.process(0, &e, T0), Ok(Outcome::Counted));
        let t = table(&p.flush(T0));
        assert_eq!(t.get(&("total".into(), "".into(), T0 / 1000)).map(|c| c.2), Some(2e15));
    }

    #[test]
    fn bad_records_are_counted_reported_and_skipped() {
        let mut p = processor(ProcessorConfig::default());
        let mut payload = Vec::new();
        gallop_event::encode_into(&event("pageview", "/a", 1, T0), &mut payload);
        payload.extend_from_slice(b"{not json\n");
        let mut no_site = event("pageview", "/b", 1, T0);
        no_site.site.clear();
        gallop_event::encode_into(&no_site, &mut payload);
        payload.extend_from_slice(b"{\"v\":2,\"site\":\"x\"}\n");
        gallop_event::encode_into(&event("pageview", "/c", 1, T0), &mut payload);
        let report = p.process_message(3, 41, &payload, T0).expect("room");
        assert_eq!(report.counted, 2);
        let reasons: Vec<(usize, &str)> = report.invalid.iter().map(|r| (r.index, r.reason)).collect();
        assert_eq!(reasons, vec![(1, "json"), (2, "missing_site"), (3, "version")]);
        assert_eq!(p.stats().invalid.get("json"), Some(&1));
        let delta = p.flush(T0);
        assert_eq!(delta.positions.get(&3), Some(&41));
        assert_eq!(table(&delta)[&("total".into(), "".into(), T0 / 1000)].0, 2);
    }

    #[test]
    fn empty_values_truncation_and_explosions() {
        let config = ProcessorConfig {
            default_rollups: false,
            sessions: false,
            rollups: vec![
                RollupConfig { dimension: "utm_source".into(), visitors: false },
                RollupConfig { dimension: "path".into(), visitors: false },
                RollupConfig { dimension: "props.*".into(), visitors: false },
            ],
            empty_values: EmptyValues::Skip,
            max_value_bytes: 8,
            max_combinations_per_event: 4,
            ..ProcessorConfig::default()
        };
        let mut p = processor(config);
        let mut e = event("pageview", "/a-very-long-path", 1, T0);
        for i in 0..5 {
            e.props.insert(format!("k{i}"), "v".into());
        }
        p.process(0, &e, T0).expect("room");
        let stats = p.stats().clone();
        assert_eq!(stats.values_empty_skipped, 1, "utm_source is empty");
        assert_eq!(stats.values_truncated, 1);
        assert_eq!(stats.combinations_capped, 2, "path + 3 props fit the budget of 4");
        let delta = p.flush(T0);
        let mut dims: Vec<(String, String)> =
            delta.rows.iter().map(|r| (r.dimension.clone(), r.value.clone())).collect();
        dims.sort();
        assert_eq!(
            dims,
            vec![
                ("path".into(), "/a-very-".into()),
                ("props.k0".into(), "v".into()),
                ("props.k1".into(), "v".into()),
                ("props.k2".into(), "v".into())
            ]
        );
    }

    #[test]
    fn full_state_refuses_until_flushed() {
        let config = ProcessorConfig {
            default_rollups: false,
            sessions: false,
            rollups: vec![RollupConfig { dimension: "path".into(), visitors: true }],
            flush_keys: 2,
            max_live_keys: 3,
            ..ProcessorConfig::default()
        };
        let mut p = processor(config);
        for i in 0..3 {
            p.process(0, &event("pageview", &format!("/{i}"), 1, T0), T0).expect("room");
        }
        assert!(p.should_flush(T0));
        assert!(p.is_full());
        let err = p.process(0, &event("pageview", "/3", 1, T0), T0).expect_err("full");
        assert_eq!(err, ProcessorError::Full { live_keys: 3, max_live_keys: 3 });
        assert_eq!(p.flush(T0).rows.len(), 3);
        assert_eq!(p.process(0, &event("pageview", "/3", 1, T0), T0), Ok(Outcome::Counted));
    }

    #[test]
    fn flush_is_time_triggered_too() {
        let mut p = processor(ProcessorConfig::default());
        assert!(!p.should_flush(T0), "nothing to flush");
        p.process(0, &event("pageview", "/", 1, T0), T0).expect("room");
        assert!(!p.should_flush(T0 + 1_000));
        assert!(p.should_flush(T0 + 5_000));
        p.flush(T0 + 5_000);
        p.process(0, &event("pageview", "/", 1, T0), T0).expect("room");
        assert!(!p.should_flush(T0 + 9_000));
    }

    #[test]
    fn leaderboards_rank_values() {
        let config = ProcessorConfig {
            default_rollups: false,
            sessions: false,
            leaderboards: vec![LeaderboardConfig { dimension: "referrer".into(), k: 2 }],
            ..ProcessorConfig::default()
        };
        let mut p = processor(config);
        for (referrer, n) in [("https://a.example/", 5), ("https://b.example/", 3), ("https://c.example/", 1), ("", 9)]
        {
            for _ in 0..n {
                let mut e = event("pageview", "/", 1, T0);
                e.referrer = referrer.into();
                p.process(0, &e, T0).expect("room");
            }
        }
        let delta = p.flush(T0);
        assert_eq!(delta.leaderboards.len(), 1);
        let top: Vec<(Vec<u8>, u64)> =
            delta.leaderboards[0].top.top().into_iter().map(|i| (i.0, i.1)).take(2).collect();
        assert_eq!(top, vec![(b"https://a.example/".to_vec(), 5), (b"https://b.example/".to_vec(), 3)]);
    }
}
