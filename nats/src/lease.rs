//! [`NatsLeases`]: processors share the partitions through leases in a JetStream key-value
//! bucket (`nats.lease_bucket`), since JetStream 2.9 (Debian's) has no consumer groups.
//!
//! The bucket expires every key `consumer.lease_ttl` after its last write (`max_age`; per-key
//! TTLs need 2.11). Each live member puts its heartbeat key `m.<member>` and renews the lease
//! key `p.<partition>` of each partition it owns with compare-and-set on the key's revision,
//! four times per TTL. From the members alive (heartbeat keys present), sorted by name,
//! member `i` of `n` wants `partitions / n` partitions, one more if `i < partitions % n`
//! ([`fair_share`]): it claims free partitions (`create` succeeds only where no lease
//! lives) up to its share and gives up those above it — after the process wrote what it
//! folded for them ([`Membership::hand_over`] deletes the lease). A lease that is not
//! renewed lapses, and another member claims it.
//!
//! **Fencing.** A member counts a lease valid until three quarters of the TTL after it sent
//! the renewal that last succeeded, so validity ends a quarter of the TTL before the server
//! can drop the key — before anyone else can claim it. A write is attempted only while the
//! lease stays valid for another quarter of the TTL ([`Membership::write_budget`]). A renewal
//! refused (another revision: the lease lapsed and was claimed) loses the partition at once.
//!
//! `consumer.assignment = "static"` uses the same leases for the hand-written list: a member
//! whose list overlaps a live member's is refused at start, naming both.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    self,
    kv::{self, Operation},
    stream::StorageType,
};
use futures::{
    future::{BoxFuture, FutureExt},
    TryStreamExt,
};
use gallop_broker::{fair_share, Assignment, Fence, Fenced, Membership};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{error, info, warn};

use crate::broker::{kv_bucket_stream, NatsError};

/// One lease this member holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// The key's revision after this member's last write, for the next compare-and-set.
    revision: u64,
    /// The revision of the claim: the lease's generation, written into the marks.
    generation: u64,
    /// Until when this member may count on the lease.
    valid_until: Instant,
}

/// What the leases look like to this member.
#[derive(Debug, Default)]
struct State {
    held: BTreeMap<u32, Held>,
    /// Held partitions above this member's share, run no more, released once written.
    giving_up: BTreeSet<u32>,
    trouble: Option<String>,
    members: u32,
    unowned: u32,
    handovers: BTreeMap<String, u64>,
    left: bool,
}

struct Inner {
    member: String,
    store: kv::Store,
    stream: jetstream::stream::Stream,
    bucket: String,
    /// The events stream whose partitions are shared: the keys' first token, so one
    /// bucket serves several deployments on one NATS.
    events: String,
    ttl: Duration,
    partitions: u32,
    /// `Some` in static mode: the hand-written list.
    pinned: Option<Vec<u32>>,
    state: Mutex<State>,
    sender: watch::Sender<Assignment>,
    /// Held by a round and by a release: a release never races a renewal of the same key.
    operations: tokio::sync::Mutex<()>,
}

/// A processor's membership through leases in a JetStream key-value bucket.
pub struct NatsLeases {
    inner: Arc<Inner>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for NatsLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsLeases").field("member", &self.inner.member).field("bucket", &self.inner.bucket).finish()
    }
}

impl Drop for NatsLeases {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

impl Inner {
    /// The key of `partition`'s lease.
    fn lease_key(&self, partition: u32) -> String {
        format!("{}.p.{partition}", self.events)
    }

    /// The key of `member`'s heartbeat.
    fn member_key(&self, member: &str) -> String {
        format!("{}.m.{member}", self.events)
    }
}

impl NatsLeases {
    /// Joins the members sharing `partitions` partitions as `member`, with leases lasting
    /// `ttl` in `bucket` (created when missing). `pinned`: the static list, or `None` to
    /// share automatically. Returns once the first round of claims is done.
    ///
    /// Refused: a bucket whose `max_age` is not `ttl` (members would disagree on when a
    /// lease lapses), a member name a live processor uses, and (static) a list overlapping
    /// a live member's.
    pub async fn join(
        jetstream: &jetstream::Context,
        bucket: &str,
        events: &str,
        ttl: Duration,
        partitions: u32,
        member: &str,
        pinned: Option<Vec<u32>>,
    ) -> Result<Self, NatsError> {
        let fail = |reason: String| NatsError::Bucket { bucket: bucket.to_owned(), reason };
        let config = kv_bucket_stream(bucket, "Gallop processors' partition leases", ttl, StorageType::File);
        let stream = jetstream.get_or_create_stream(config).await.map_err(|e| fail(e.to_string()))?;
        let found = stream.cached_info().config.clone();
        if found.max_age != ttl || found.max_messages_per_subject != 1 {
            return Err(fail(format!(
                "it keeps values for {:?} ({} per key), but consumer.lease_ttl is {ttl:?}: every processor sharing \
                 it must use the same consumer.lease_ttl (delete the stream KV_{bucket} to change it)",
                found.max_age, found.max_messages_per_subject
            )));
        }
        let store = jetstream.get_key_value(bucket).await.map_err(|e| fail(e.to_string()))?;
        let inner = Arc::new(Inner {
            member: member.to_owned(),
            store,
            stream,
            bucket: bucket.to_owned(),
            events: events.to_owned(),
            ttl,
            partitions,
            pinned,
            state: Mutex::new(State::default()),
            sender: watch::Sender::new(Assignment::default()),
            operations: tokio::sync::Mutex::new(()),
        });
        inner.wait_for_free(&inner.member_key(member), "the member name (consumer.member)").await?;
        if let Some(pinned) = &inner.pinned {
            for &partition in pinned {
                inner
                    .wait_for_free(
                        &inner.lease_key(partition),
                        &format!("partition {partition} of consumer.partitions"),
                    )
                    .await?;
            }
        }
        inner.round().await;
        let task = tokio::spawn({
            let inner = Arc::clone(&inner);
            async move {
                let mut tick = tokio::time::interval(inner.ttl / 4);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    inner.round().await;
                }
            }
        });
        info!(member, bucket, ?ttl, "joined the processors sharing the partitions");
        Ok(Self { inner, task: Mutex::new(Some(task)) })
    }
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, reason: String) -> NatsError {
        NatsError::Bucket { bucket: self.bucket.clone(), reason }
    }

    /// The live value of `key`: `(member, revision)`, or `None` when nobody holds it.
    async fn holder(&self, key: &str) -> Result<Option<(String, u64)>, String> {
        match bounded(self.ttl, self.store.entry(key)).await {
            Ok(Some(entry)) if entry.operation == Operation::Put => {
                Ok(Some((String::from_utf8_lossy(&entry.value).into_owned(), entry.revision)))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Waits until `key` is free, up to a TTL and a little more (a crashed processor's key
    /// lapsing); refuses when someone keeps renewing it.
    async fn wait_for_free(&self, key: &str, what: &str) -> Result<(), NatsError> {
        let deadline = Instant::now() + self.ttl + Duration::from_secs(1);
        let mut first_revision = None;
        loop {
            match self.holder(key).await.map_err(|e| self.fail(e))? {
                None => return Ok(()),
                Some((holder, revision)) => {
                    let renewed = first_revision.is_some_and(|first| first != revision);
                    first_revision.get_or_insert(revision);
                    if renewed || Instant::now() > deadline {
                        return Err(self.fail(format!(
                            "{what} is held by live member {holder}, so member {} refuses to start: give each \
                             processor its own consumer.member and, with consumer.assignment = \"static\", disjoint \
                             consumer.partitions",
                            self.member
                        )));
                    }
                    if Some(revision) == first_revision {
                        info!(key, holder, "waiting for a lease of a processor that may have died to lapse");
                    }
                }
            }
            tokio::time::sleep(self.ttl / 8).await;
        }
    }

    /// One round: heartbeat, renew, look at the others, give up or claim, publish.
    async fn round(&self) {
        let _operations = self.operations.lock().await;
        if self.state().left {
            return;
        }
        let mut trouble = None;
        if let Err(e) =
            bounded(self.ttl, self.store.put(self.member_key(&self.member), self.member.clone().into())).await
        {
            trouble = Some(format!("lease bucket {} unreachable: {e}", self.bucket));
        }
        self.renew().await;
        match self.look().await {
            Ok((members, holders)) => {
                if trouble.is_none() {
                    self.claim(&members, &holders).await;
                }
            }
            Err(e) => trouble = Some(format!("lease bucket {} unreachable: {e}", self.bucket)),
        }
        let now = Instant::now();
        let mut state = self.state();
        let lapsed: Vec<u32> = state.held.iter().filter(|(_, h)| h.valid_until <= now).map(|(&p, _)| p).collect();
        for partition in lapsed {
            error!(partition, member = %self.member, "a lease could not be renewed in time: partition lost");
            state.held.remove(&partition);
            state.giving_up.remove(&partition);
            *state.handovers.entry("lost".to_owned()).or_default() += 1;
        }
        state.trouble = trouble;
        self.publish(&state);
    }

    /// Renews every held lease with compare-and-set; a refused renewal loses the partition.
    async fn renew(&self) {
        let held: Vec<(u32, Held)> = self.state().held.iter().map(|(&p, &h)| (p, h)).collect();
        for (partition, lease) in held {
            let sent = Instant::now();
            match bounded(
                self.ttl,
                self.store.update(self.lease_key(partition), self.member.clone().into(), lease.revision),
            )
            .await
            {
                Ok(revision) => {
                    if let Some(held) = self.state().held.get_mut(&partition) {
                        held.revision = revision;
                        held.valid_until = sent + self.ttl * 3 / 4;
                    }
                }
                Err(Bounded::Failed(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    error!(partition, member = %self.member, "the lease lapsed and was claimed by another member: \
                        partition lost");
                    let mut state = self.state();
                    state.held.remove(&partition);
                    state.giving_up.remove(&partition);
                    *state.handovers.entry("lost".to_owned()).or_default() += 1;
                }
                Err(e) => warn!(partition, error = %e, "renewing a lease failed; retrying next round"),
            }
        }
    }

    /// The live members (sorted) and the live holder of each partition's lease.
    async fn look(&self) -> Result<(Vec<String>, BTreeMap<u32, String>), String> {
        let prefix = format!("$KV.{}.{}.m.", self.bucket, self.events);
        let listing = async {
            let subjects: Vec<(String, usize)> = self
                .stream
                .info_with_subjects(format!("{prefix}>"))
                .await
                .map_err(|e| e.to_string())?
                .try_collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(subjects)
        };
        let subjects = bounded(self.ttl, listing).await.map_err(|e| e.to_string())?;
        let mut members = Vec::new();
        for (subject, _) in &subjects {
            let Some(name) = subject.strip_prefix(&prefix) else { continue };
            if self.holder(&self.member_key(name)).await?.is_some() {
                members.push(name.to_owned());
            }
        }
        if !members.contains(&self.member) {
            members.push(self.member.clone());
        }
        members.sort();
        let mut holders = BTreeMap::new();
        for partition in 0..self.partitions {
            if let Some((holder, _)) = self.holder(&self.lease_key(partition)).await? {
                holders.insert(partition, holder);
            }
        }
        Ok((members, holders))
    }

    /// Gives up what is above this member's share and claims free partitions up to it.
    async fn claim(&self, members: &[String], holders: &BTreeMap<u32, String>) {
        let wanted: BTreeSet<u32> = match &self.pinned {
            Some(pinned) => pinned.iter().copied().collect(),
            None => {
                let index = members.iter().position(|m| *m == self.member).unwrap_or(0) as u32;
                let share = fair_share(self.partitions, members.len() as u32, index) as usize;
                let mut state = self.state();
                let running: Vec<u32> = state.held.keys().filter(|p| !state.giving_up.contains(p)).copied().collect();
                if running.len() > share {
                    let extra: Vec<u32> = running[share..].to_vec();
                    info!(partitions = ?extra, share, members = members.len(), "giving up partitions above the fair share");
                    state.giving_up.extend(extra);
                }
                let running = state.held.len() - state.giving_up.len();
                let free = (0..self.partitions).filter(|p| !holders.contains_key(p) && !state.held.contains_key(p));
                free.take(share.saturating_sub(running)).collect()
            }
        };
        for partition in wanted {
            if self.state().held.contains_key(&partition) {
                continue;
            }
            if let Some(holder) = holders.get(&partition).filter(|h| **h != self.member) {
                error!(partition, holder = %holder, member = %self.member,
                    "a partition of consumer.partitions is held by another live member: not taken");
                continue;
            }
            let sent = Instant::now();
            match bounded(self.ttl, self.store.create(self.lease_key(partition), self.member.clone().into())).await {
                Ok(revision) => {
                    info!(partition, generation = revision, "partition claimed");
                    let mut state = self.state();
                    state.held.insert(
                        partition,
                        Held { revision, generation: revision, valid_until: sent + self.ttl * 3 / 4 },
                    );
                    *state.handovers.entry("claimed".to_owned()).or_default() += 1;
                }
                Err(Bounded::Failed(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => warn!(partition, error = %e, "claiming a partition failed; retrying next round"),
            }
        }
        let live: BTreeSet<u32> = holders.keys().copied().chain(self.state().held.keys().copied()).collect();
        let mut state = self.state();
        state.members = members.len() as u32;
        state.unowned = self.partitions.saturating_sub(live.len() as u32);
    }

    fn publish(&self, state: &State) {
        let assignment = Assignment {
            owned: state
                .held
                .iter()
                .filter(|(p, _)| !state.giving_up.contains(p))
                .map(|(&p, h)| (p, h.generation))
                .collect(),
            members: Some(state.members),
            unowned: Some(state.unowned),
            handovers: state.handovers.clone(),
        };
        self.sender.send_if_modified(|current| {
            let changed = *current != assignment;
            *current = assignment;
            changed
        });
    }

    /// Deletes the leases of `partitions` (compare-and-set: only those still ours).
    async fn release(&self, partitions: &[u32], reason: &str) {
        let _operations = self.operations.lock().await;
        self.release_held(partitions, reason).await;
    }

    /// [`release`](Self::release), with the operations lock already held.
    async fn release_held(&self, partitions: &[u32], reason: &str) {
        for &partition in partitions {
            let Some(lease) = self.state().held.get(&partition).copied() else { continue };
            if let Err(e) =
                bounded(self.ttl, self.store.delete_expect_revision(self.lease_key(partition), Some(lease.revision)))
                    .await
            {
                warn!(partition, error = %e, "releasing a lease failed; it lapses after consumer.lease_ttl");
            }
            let mut state = self.state();
            state.held.remove(&partition);
            state.giving_up.remove(&partition);
            *state.handovers.entry(reason.to_owned()).or_default() += 1;
        }
        info!(partitions = ?partitions, reason, "partitions released");
    }
}

/// A key-value operation that failed, or did not answer within a quarter of the TTL.
#[derive(Debug)]
enum Bounded<E> {
    Failed(E),
    TimedOut(Duration),
}

impl<E: std::fmt::Display> std::fmt::Display for Bounded<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Failed(e) => e.fmt(f),
            Self::TimedOut(after) => write!(f, "no answer within {after:?}"),
        }
    }
}

/// `operation`, given up after a quarter of `ttl`: a frozen server must not stall a round,
/// or losses would go unnoticed (the fence refuses writes by the clock regardless).
async fn bounded<T, E>(
    ttl: Duration,
    operation: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Bounded<E>> {
    match tokio::time::timeout(ttl / 4, operation).await {
        Ok(result) => result.map_err(Bounded::Failed),
        Err(_) => Err(Bounded::TimedOut(ttl / 4)),
    }
}

impl Fence for NatsLeases {
    fn check(&self, partitions: &[u32], budget: Duration) -> Result<(), Fenced> {
        let state = self.inner.state();
        let now = Instant::now();
        for &partition in partitions {
            let fenced = |reason: String| Fenced { member: self.inner.member.clone(), partition, reason };
            match state.held.get(&partition) {
                None => return Err(fenced("no lease held".to_owned())),
                Some(held) if held.valid_until < now + budget => {
                    return Err(fenced(format!(
                        "the lease holds for {:?} more, less than the {budget:?} a write may take",
                        held.valid_until.saturating_duration_since(now)
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

impl Membership for NatsLeases {
    fn member(&self) -> &str {
        &self.inner.member
    }

    fn watch(&self) -> watch::Receiver<Assignment> {
        self.inner.sender.subscribe()
    }

    fn write_budget(&self) -> Duration {
        self.inner.ttl / 4
    }

    fn hand_over(&self, partitions: Vec<u32>) -> BoxFuture<'_, ()> {
        async move {
            let giving: Vec<u32> = {
                let state = self.inner.state();
                partitions.into_iter().filter(|p| state.giving_up.contains(p)).collect()
            };
            if !giving.is_empty() {
                self.inner.release(&giving, "handed_over").await;
                let state = self.inner.state();
                self.inner.publish(&state);
            }
        }
        .boxed()
    }

    fn leave(&self) -> BoxFuture<'_, ()> {
        async move {
            // A round under way finishes first (a claim it sent is then known and released).
            let _operations = self.inner.operations.lock().await;
            if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
                task.abort();
            }
            self.inner.state().left = true;
            let held: Vec<u32> = self.inner.state().held.keys().copied().collect();
            self.inner.release_held(&held, "shutdown").await;
            if let Err(e) =
                bounded(self.inner.ttl, self.inner.store.delete(self.inner.member_key(&self.inner.member))).await
            {
                warn!(error = %e, "removing this member's heartbeat failed; it lapses after consumer.lease_ttl");
            }
            let state = self.inner.state();
            self.inner.publish(&state);
        }
        .boxed()
    }

    fn trouble(&self) -> Option<String> {
        self.inner.state().trouble.clone()
    }
}
