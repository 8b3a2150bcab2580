//! [`ChangedVisits`]: the visits a flush hands to the sink, each string once.
//!
//! With short visits a flush carries about one visit per event. As owned [`SessionState`]s
//! (eight strings each, ~280 bytes) they were built, copied when the vector grew, and hashed
//! again by the sink to write each string once: together a tenth of the processor's time in
//! the pipeline, and a hundred megabytes of fresh memory per flush. Here a visit is plain
//! numbers (~110 bytes) and its strings are indexes into one table of the flush, filled from
//! the processor's interned strings without hashing.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use gallop_codec::reuse;

use crate::stored::{EngagedPage, SessionState};

/// Visits that changed since the previous flush (ended ones as tombstones), with the strings
/// they use, each once.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangedVisits {
    /// The strings end to end; string `i` is `text[ends[i - 1]..ends[i]]`, string 0 is `""`.
    text: String,
    ends: Vec<u32>,
    visits: Vec<ChangedVisit>,
    /// Where the visits' list goes, emptied, once the table is dropped (by the sink, after
    /// the insert): the next flush's table is built in it.
    recycle: Recycle,
}

/// The list of visits of the last dropped [`ChangedVisits`], empty, for the next flush. A
/// flush of a busy processor carries hundreds of thousands of visits: a list of tens of
/// megabytes, whose fresh pages the kernel faulted in and zeroed every flush (4 % of the
/// processor's time in a profile of `gallop process`).
#[derive(Clone, Default)]
pub(crate) struct Recycle(Option<Arc<Mutex<Vec<ChangedVisit>>>>);

impl Recycle {
    /// A pool for the lists of one processor's tables.
    pub(crate) fn on() -> Self {
        Self(Some(Arc::default()))
    }

    /// A list for the next flush's table: the recycled one, if [`reuse`] keeps it.
    fn list(&self, visits: usize) -> Vec<ChangedVisit> {
        let recycled = self.0.as_ref().and_then(|pool| pool.lock().ok().map(|mut list| std::mem::take(&mut *list)));
        reuse(recycled.unwrap_or_default(), visits)
    }
}

impl std::fmt::Debug for Recycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Recycle(on)" } else { "Recycle(off)" })
    }
}

/// Where a table's list goes is not part of its contents.
impl PartialEq for Recycle {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Drop for ChangedVisits {
    fn drop(&mut self) {
        let Some(pool) = &self.recycle.0 else { return };
        let mut visits = std::mem::take(&mut self.visits);
        visits.clear();
        if let Ok(mut kept) = pool.lock() {
            // A clone of a table may come back too: the larger list is kept.
            if kept.capacity() < visits.capacity() {
                *kept = visits;
            }
        }
    }
}

/// One changed visit: a [`SessionState`] whose strings are indexes into its
/// [`ChangedVisits`]' table.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangedVisit {
    /// Partition whose events make up the visit.
    pub partition: u32,
    /// Site (a string index).
    pub site: u32,
    /// Visitor id.
    pub visitor: u64,
    /// Grows with every change; with `last_ts` it orders the stored versions of a visit.
    pub seq: u64,
    /// Minute bucket (minutes since the epoch) the visit started in.
    pub bucket: u32,
    /// Earliest event time, ms.
    pub first_ts: i64,
    /// Latest event time, ms.
    pub last_ts: i64,
    /// Event time of the exit page's event, ms.
    pub exit_ts: i64,
    /// Interactive events so far.
    pub interactive: u32,
    /// String indexes of the entry page, exit page, source, country, device, browser and
    /// operating system, in this order (the stored form's order).
    pub attributes: [u32; 7],
    /// Pages with engagement.
    pub pages: Vec<ChangedPage>,
    /// A tombstone: the visit was ended early to make room.
    pub ended: bool,
}

/// An [`EngagedPage`] of a [`ChangedVisit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangedPage {
    /// Page path (a string index).
    pub path: u32,
    /// Deepest scroll reported so far, percent.
    pub scroll_depth: u8,
    /// Minute bucket of its first engagement event.
    pub bucket: u32,
}

impl Default for ChangedVisits {
    fn default() -> Self {
        Self { text: String::new(), ends: vec![0], visits: Vec::new(), recycle: Recycle::default() }
    }
}

impl ChangedVisits {
    /// Room for `visits` visits, in the list `recycle` holds when it is large enough; the
    /// table's list goes back to `recycle` when it is dropped.
    pub(crate) fn recycling(visits: usize, recycle: &Recycle) -> Self {
        Self { text: String::new(), ends: vec![0], visits: recycle.list(visits), recycle: recycle.clone() }
    }

    /// The same visits from owned states (tests, and callers that build a delta by hand).
    pub fn from_states<'a>(states: impl IntoIterator<Item = &'a SessionState>) -> Self {
        let mut changed = Self::default();
        let mut index: HashMap<&'a str, u32> = HashMap::from([("", 0)]);
        let mut intern =
            |changed: &mut Self, s: &'a str| -> u32 { *index.entry(s).or_insert_with(|| changed.push_string(s)) };
        for state in states {
            let attributes = [
                &state.entry_page,
                &state.exit_page,
                &state.source,
                &state.country,
                &state.device,
                &state.browser,
                &state.os,
            ]
            .map(|s| intern(&mut changed, s));
            let site = intern(&mut changed, &state.site);
            let pages = state
                .pages
                .iter()
                .map(|p| ChangedPage {
                    path: intern(&mut changed, &p.path),
                    scroll_depth: p.scroll_depth,
                    bucket: p.bucket,
                })
                .collect();
            changed.visits.push(ChangedVisit {
                partition: state.partition,
                site,
                visitor: state.visitor,
                seq: state.seq,
                bucket: state.bucket,
                first_ts: state.first_ts,
                last_ts: state.last_ts,
                exit_ts: state.exit_ts,
                interactive: state.interactive,
                attributes,
                pages,
                ended: state.ended,
            });
        }
        changed
    }

    /// Owned states of the same visits, in the same order.
    pub fn to_states(&self) -> Vec<SessionState> {
        self.visits
            .iter()
            .map(|v| {
                let s = |i: u32| self.string(i).into();
                let [entry_page, exit_page, source, country, device, browser, os] = v.attributes.map(s);
                SessionState {
                    partition: v.partition,
                    site: s(v.site),
                    visitor: v.visitor,
                    seq: v.seq,
                    bucket: v.bucket,
                    first_ts: v.first_ts,
                    last_ts: v.last_ts,
                    interactive: v.interactive,
                    entry_page,
                    exit_page,
                    exit_ts: v.exit_ts,
                    source,
                    country,
                    device,
                    browser,
                    os,
                    pages: v
                        .pages
                        .iter()
                        .map(|p| EngagedPage { path: s(p.path), scroll_depth: p.scroll_depth, bucket: p.bucket })
                        .collect(),
                    ended: v.ended,
                }
            })
            .collect()
    }

    /// The visits.
    pub fn visits(&self) -> &[ChangedVisit] {
        &self.visits
    }

    /// Number of visits.
    pub fn len(&self) -> usize {
        self.visits.len()
    }

    /// Whether there are no visits.
    pub fn is_empty(&self) -> bool {
        self.visits.is_empty()
    }

    /// Number of strings in the table (string 0, `""`, included).
    pub fn strings(&self) -> usize {
        self.ends.len()
    }

    /// String `index` of the table; `""` past its end.
    pub fn string(&self, index: u32) -> &str {
        let i = index as usize;
        match (i.checked_sub(1).and_then(|p| self.ends.get(p)), self.ends.get(i)) {
            (Some(&start), Some(&end)) => self.text.get(start as usize..end as usize).unwrap_or(""),
            _ => "",
        }
    }

    /// Appends `s` to the table; returns its index.
    pub(crate) fn push_string(&mut self, s: &str) -> u32 {
        self.text.push_str(s);
        // A flush's strings are those of at most `max_open_sessions` visits, each bounded
        // by the gateway's limits: far below 4 GiB.
        self.ends.push(self.text.len() as u32);
        (self.ends.len() - 1) as u32
    }

    /// Appends a visit whose string indexes are this table's.
    pub(crate) fn push(&mut self, visit: ChangedVisit) {
        self.visits.push(visit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(visitor: u64, page: &str) -> SessionState {
        SessionState {
            partition: 2,
            site: "example.com".into(),
            visitor,
            seq: 3,
            bucket: 29_999_999,
            first_ts: 1_799_999_940_000,
            last_ts: 1_800_000_000_123,
            interactive: 2,
            entry_page: "/".into(),
            exit_page: page.into(),
            exit_ts: 1_800_000_000_000,
            source: "".into(),
            country: "DE".into(),
            device: "Desktop".into(),
            browser: "Firefox".into(),
            os: "GNU/Linux".into(),
            pages: vec![EngagedPage { path: page.into(), scroll_depth: 40, bucket: 29_999_999 }],
            ended: visitor == 2,
        }
    }

    #[test]
    fn states_survive_the_table_and_share_its_strings() {
        let states: Vec<SessionState> = (0..3).map(|v| state(v, &format!("/p/{}", v % 2))).collect();
        let changed = ChangedVisits::from_states(&states);
        assert_eq!(changed.to_states(), states);
        assert_eq!(changed.len(), 3);
        // "", and each of "/", "/p/0", "DE", "Desktop", "Firefox", "GNU/Linux", "example.com",
        // "/p/1" once.
        assert_eq!(changed.strings(), 9);
        assert_eq!(changed.string(0), "");
        assert_eq!(changed.string(changed.visits()[0].site), "example.com");
        assert_eq!(changed.string(99), "");
    }

    #[test]
    fn a_dropped_tables_list_builds_the_next_one() {
        let visit = ChangedVisits::from_states([&state(1, "/a")]).visits[0].clone();
        let recycle = Recycle::on();
        let mut first = ChangedVisits::recycling(100, &recycle);
        first.push(visit.clone());
        let (at, capacity) = (first.visits.as_ptr(), first.visits.capacity());
        assert!(capacity >= 150, "room to spare: {capacity}");
        drop(first);

        let mut second = ChangedVisits::recycling(120, &recycle);
        assert_eq!((second.visits.as_ptr(), second.len()), (at, 0), "the same list, empty");
        second.push(visit);
        assert_eq!(second.visits().len(), 1);
        drop(second);
        let larger = ChangedVisits::recycling(capacity + 1, &recycle);
        assert_ne!(larger.visits.as_ptr(), at, "a list without room is not used");
        assert!(larger.visits.capacity() > capacity);

        // A burst's list comes back, but a much smaller flush does not keep it.
        let mut burst = ChangedVisits::recycling(1 << 17, &recycle);
        burst.push(ChangedVisits::from_states([&state(1, "/a")]).visits[0].clone());
        let burst_at = burst.visits.as_ptr();
        drop(burst);
        let small = ChangedVisits::recycling(10, &recycle);
        assert_ne!(small.visits.as_ptr(), burst_at, "a list far larger than needed is let go");
        assert!(small.visits.capacity() < 1 << 17);

        // Tables built by hand recycle nothing; where a list goes is no part of a table.
        assert!(ChangedVisits::from_states([&state(1, "/a")]).recycle.0.is_none());
        assert_eq!(Recycle::on(), Recycle::default());
    }

    #[test]
    fn an_empty_table_reads_back_nothing() {
        let changed = ChangedVisits::default();
        assert!(changed.is_empty());
        assert_eq!(changed.to_states(), Vec::new());
        assert_eq!(changed.strings(), 1);
        assert_eq!(changed.string(0), "");
        assert_eq!(changed.string(1), "");
    }
}
