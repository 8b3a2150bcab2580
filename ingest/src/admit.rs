//! The accept path every front door shares (HTTP in `server.rs`, the input topic in
//! `topic.rs`, other protocols in `foreign.rs`): once `normalize` has made a record of an
//! event, [`Admission::admit`] gives it its visitor (keyed with the day's salt), its id and
//! its partition, and adds it to that partition's [`Part`] of the request; then
//! [`Admission::submit`] hands the parts to the batcher and returns each partition's
//! outcome once the broker answered.
//!
//! An event `id` names one event: a second event of the same site with an id already
//! admitted in the same request (or input message) is the same event sent twice, and is
//! counted once ([`Admitted::Duplicate`]), as a retried request is.

use std::{collections::HashSet, hash::Hasher as _, net::IpAddr, sync::atomic::Ordering};

use gallop_broker::{partition_for, PublishError, Salt, SaltError};
use gallop_config::MessageEncoding;
use gallop_event::EventRecord;
use siphasher::sip128::{Hasher128, SipHasher13};
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::{
    outbound::Outbound,
    privacy::{visitor_from_key, visitor_from_request},
    state::AppState,
};

/// Where an event's visitor comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum VisitorFrom<'a> {
    /// A key the client chose (`visitor`): apps and servers that know their user.
    Key(&'a str),
    /// The client's address and User-Agent: a browser.
    Request(IpAddr, &'a str),
    /// Already hashed with the day's salt (another protocol's identifier).
    Hashed(u64),
}

/// Where an event's id comes from.
#[derive(Debug, Clone)]
pub(crate) enum EventId {
    /// The client's `id`: a retry of the same request or message carries it again.
    Client(String),
    /// Derived from where the event sits in its input message: processing the message
    /// again yields it again.
    Derived(String),
    /// None given: the gateway numbers the event (its message then has no id a retry
    /// could reproduce).
    Generated,
}

/// What became of an event handed to [`Admission::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admitted {
    /// Added to the part of this partition.
    To(u32),
    /// An event of the same site with the same client id was admitted before it: it is
    /// that event again, and is not added.
    Duplicate,
}

/// One request's (or input message's) events on their way to the broker.
pub(crate) struct Admission<'s> {
    state: &'s AppState,
    salt: Salt,
    now_ms: i64,
    partitions: u32,
    parts: Vec<Part>,
    /// (site, client id) pairs admitted so far, as 128-bit hashes.
    ids: HashSet<u128>,
}

impl<'s> Admission<'s> {
    /// Starts the admission of up to `events` events: the day's salt and the gateway's
    /// clock are read once for all of them.
    pub(crate) async fn begin(state: &'s AppState, events: usize) -> Result<Self, SaltError> {
        let salt = state.visitors.salt().await?;
        let now_ms = i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
        let partitions = state.publisher.partitions();
        let parts = Part::per_partition(state.config.ingest.batching.format, partitions, events);
        Ok(Self { state, salt, now_ms, partitions, parts, ids: HashSet::new() })
    }

    /// The gateway's clock at the start, ms since the epoch (the time window's "now").
    pub(crate) fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// The day's salt, for identifiers hashed before admission.
    pub(crate) fn salt(&self) -> &Salt {
        &self.salt
    }

    /// Gives `record` its visitor and id and adds it to its partition's part, unless it
    /// repeats a client id already admitted for its site.
    pub(crate) fn admit(&mut self, mut record: EventRecord, visitor: VisitorFrom<'_>, id: EventId) -> Admitted {
        if let EventId::Client(client_id) = &id {
            if !self.ids.insert(pair_hash(&record.site, client_id)) {
                return Admitted::Duplicate;
            }
        }
        record.visitor = match visitor {
            VisitorFrom::Key(key) => visitor_from_key(&self.salt, &record.site, key),
            VisitorFrom::Request(ip, user_agent) => visitor_from_request(&self.salt, &record.site, ip, user_agent),
            VisitorFrom::Hashed(hash) => hash,
        };
        let partition = partition_for(&record.site, record.visitor, self.partitions);
        let replayable = match id {
            EventId::Client(id) | EventId::Derived(id) => {
                record.id = id;
                true
            }
            EventId::Generated => {
                let state = self.state;
                record.id = format!("{}{:010x}", state.run_id, state.next_id.fetch_add(1, Ordering::Relaxed));
                false
            }
        };
        self.parts[partition as usize].push(record, replayable);
        Admitted::To(partition)
    }

    /// Hands each part (cut to `batching.max_bytes`) to the batcher, under a message id
    /// derived from its events' ids where they can all be reproduced, and waits until every
    /// chunk is acknowledged or failed: chunks not sent within `ingest.publish_timeout`
    /// fail, sent ones are awaited to their outcome (at most `ingest.ack_timeout` more).
    /// One outcome per chunk, with its partition.
    pub(crate) async fn submit(self) -> Vec<(u32, Result<(), PublishError>)> {
        let state = self.state;
        let deadline = Instant::now() + state.config.ingest.publish_timeout;
        let max_bytes = state.config.ingest.batching.max_bytes;
        let submissions = self
            .parts
            .into_iter()
            .enumerate()
            .filter(|(_, part)| part.body.events() > 0)
            .flat_map(|(partition, part)| {
                let dedup = part.dedup_id();
                part.body.split(max_bytes).into_iter().enumerate().map(move |(chunk_index, chunk)| {
                    let id = dedup.as_ref().map(|id| format!("{id}-{chunk_index}"));
                    // Partitions number below `Publisher::partitions`, a u32.
                    (partition as u32, chunk, id)
                })
            })
            .map(|(partition, chunk, id)| async move {
                (partition, state.batcher.submit(partition, chunk, id, deadline).await)
            });
        futures::future::join_all(submissions).await
    }
}

/// The 128-bit hash of a (site, id) pair: two pairs collide with odds of 2^-128.
fn pair_hash(site: &str, id: &str) -> u128 {
    let mut hasher = SipHasher13::new_with_keys(0x6761_6c6c_6f70, 2);
    hasher.write(site.as_bytes());
    hasher.write_u8(0xff);
    hasher.write(id.as_bytes());
    hasher.finish128().as_u128()
}

/// The events of one request bound for one partition.
struct Part {
    body: Outbound,
    /// Records to make room for at the first push (a share of the request's events).
    expected: usize,
    /// Hash of the (site, id) pairs while every event so far had a reproducible id.
    ids: Option<SipHasher13>,
    not_replayable: bool,
}

impl Part {
    /// The parts of a request of `events` events in `encoding`, one per partition.
    fn per_partition(encoding: MessageEncoding, partitions: u32, events: usize) -> Vec<Self> {
        // A partition's share, with room for an uneven spread.
        let share = events.div_ceil(partitions.max(1) as usize);
        let expected = share + share / 4;
        (0..partitions)
            .map(|_| Self { body: Outbound::new(encoding), expected, ids: None, not_replayable: false })
            .collect()
    }

    /// Adds `record`; `replayable`: its id comes back when the request is sent again.
    fn push(&mut self, record: EventRecord, replayable: bool) {
        self.note_id(&record.site, replayable.then_some(record.id.as_str()));
        if self.expected > 0 {
            self.body.reserve(std::mem::take(&mut self.expected));
        }
        self.body.push(record);
    }

    fn note_id(&mut self, site: &str, id: Option<&str>) {
        match id {
            Some(id) if !self.not_replayable => {
                let hasher = self.ids.get_or_insert_with(|| SipHasher13::new_with_keys(0x6761_6c6c_6f70, 1));
                hasher.write(site.as_bytes());
                hasher.write_u8(0xff);
                hasher.write(id.as_bytes());
                hasher.write_u8(0xfe);
            }
            _ => {
                self.not_replayable = true;
                self.ids = None;
            }
        }
    }

    /// A message id that a retry of the same request reproduces, when every event of the
    /// part has a reproducible id.
    fn dedup_id(&self) -> Option<String> {
        let hasher = self.ids.as_ref().filter(|_| !self.not_replayable)?;
        let wide = hasher.finish128();
        Some(format!("c-{:016x}{:016x}-{}", wide.h1, wide.h2, self.body.events()))
    }
}
