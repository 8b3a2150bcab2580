//! [`KafkaGroup`]: processors share the events topic's partitions through the broker's
//! consumer group (`kafka.consumer_group`; librdkafka's round-robin assignor by default,
//! see [`ASSIGNOR`]).
//!
//! The group member is a consumer of its own that never reads a message: it subscribes,
//! pauses every partition the group assigns it, and is polled on a thread of its own, where
//! librdkafka calls the rebalance hooks. The partitions are read by [`crate::KafkaSource`]s
//! the process makes for each assignment (`assign()`, positioned from the marks stored in
//! ClickHouse, not from group offsets).
//!
//! - **Assigned** partitions join the assignment with a generation (the assignment's wall
//!   clock in ms: rust-rdkafka 0.39 does not expose librdkafka's group generation).
//! - **Revoked** partitions leave the assignment at once, and the hook waits (up to
//!   `consumer.shutdown_timeout`) until the process wrote what it folded for them and
//!   called [`Membership::hand_over`]: the group moves them only after that.
//! - **Lost** partitions (librdkafka's `assignment_lost`: the session expired) leave without
//!   waiting: the process may write nothing more for them.
//!
//! **Fencing.** The broker evicts a member `session.timeout.ms` (`consumer.lease_ttl`) after
//! its last heartbeat; librdkafka heartbeats every quarter of it from its own threads. A
//! member may write while its poll thread ran within the last quarter of the TTL and no
//! pause was noticed: a gap between two polls longer than that (a SIGSTOP, a frozen VM)
//! suspends writes for half a TTL, time for librdkafka to heartbeat and learn whether the
//! group still counts it in (if not, the partitions come back as lost).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use futures::future::{BoxFuture, FutureExt};
use gallop_broker::{wall_ms, Assignment, Fence, Fenced, Membership};
use gallop_config::KafkaConfig;
use rdkafka::{
    consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance},
    ClientContext, TopicPartitionList,
};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::client::{client_config, KafkaSetupError};

/// How long one poll of the group member waits.
const POLL: Duration = Duration::from_millis(100);
/// How often the group's members and their assignments are read, for the unowned gauge.
const CENSUS_EVERY: Duration = Duration::from_secs(2);

/// The assignor: librdkafka's eager round-robin. Its cooperative-sticky assignor moves only
/// the partitions that must move, but Tansu 0.6 never completes its second rebalance (a
/// joining member got nothing and revoked partitions stayed unowned, measured here); on a
/// broker that does (Apache Kafka 2.4 and later) set
/// `kafka.properties."partition.assignment.strategy" = "cooperative-sticky"`, which the
/// hooks below handle as well (they act on the partitions each callback names).
const ASSIGNOR: &str = "roundrobin";

/// What the group looks like to this member.
#[derive(Debug, Default)]
struct State {
    /// Partitions assigned and not revoked, with their generation.
    owned: BTreeMap<u32, u64>,
    /// Revoked partitions the process is still writing; held (and fenced) until handed over.
    revoking: BTreeSet<u32>,
    handovers: BTreeMap<String, u64>,
    /// When the poll thread last ran.
    last_poll: Option<Instant>,
    /// Writes are suspended until then (a pause was noticed).
    suspect_until: Option<Instant>,
    trouble: Option<String>,
    leaving: bool,
    /// Members of the group and partitions none of them is assigned, as last described
    /// (`None` while the broker describes no group: Tansu 0.6 lists none).
    members: Option<u32>,
    unowned: Option<u32>,
}

struct Shared {
    member: String,
    ttl: Duration,
    handover_timeout: Duration,
    state: Mutex<State>,
    /// Signalled when partitions are handed over.
    handed: Condvar,
    sender: watch::Sender<Assignment>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, state: &State) {
        let assignment = Assignment {
            owned: state.owned.clone(),
            members: state.members,
            unowned: state.unowned,
            handovers: state.handovers.clone(),
        };
        self.sender.send_if_modified(|current| {
            let changed = *current != assignment;
            *current = assignment;
            changed
        });
    }
}

/// The rebalance hooks of the group member.
pub(crate) struct GroupContext {
    shared: Arc<Shared>,
}

impl ClientContext for GroupContext {}

fn partitions_of(list: &TopicPartitionList) -> Vec<u32> {
    list.elements().iter().filter_map(|e| u32::try_from(e.partition()).ok()).collect()
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else { return };
        let partitions = partitions_of(list);
        let shared = &self.shared;
        let mut state = shared.state();
        if consumer.assignment_lost() {
            error!(?partitions, member = %shared.member, "the group dropped this member (session expired): partitions lost");
            for partition in &partitions {
                if state.owned.remove(partition).is_some() {
                    *state.handovers.entry("lost".to_owned()).or_default() += 1;
                }
            }
            shared.publish(&state);
            return;
        }
        let mut waiting = Vec::new();
        for partition in partitions {
            if state.owned.remove(&partition).is_some() && !state.leaving {
                state.revoking.insert(partition);
                waiting.push(partition);
            }
        }
        shared.publish(&state);
        if waiting.is_empty() {
            return;
        }
        info!(partitions = ?waiting, "the group revokes partitions: waiting for their last flush");
        let deadline = Instant::now() + shared.handover_timeout;
        while waiting.iter().any(|p| state.revoking.contains(p)) && !state.leaving {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                error!(partitions = ?waiting, "the last flush of revoked partitions did not land within \
                    consumer.shutdown_timeout: released unwritten (the next owner reads them again)");
                break;
            }
            // Waiting here is not a pause (librdkafka heartbeats from its own threads
            // meanwhile), but a SIGSTOP during the wait is.
            note_poll(&mut state, shared.ttl);
            let slice = left.min(POLL);
            state = shared.handed.wait_timeout(state, slice).map(|(s, _)| s).unwrap_or_else(|p| p.into_inner().0);
        }
        for partition in &waiting {
            if state.revoking.remove(partition) {
                *state.handovers.entry("lost".to_owned()).or_default() += 1;
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions = partitions_of(list);
                if partitions.is_empty() {
                    return;
                }
                // This member only tells who owns what: the process's sources read.
                if let Err(e) = consumer.pause(list) {
                    warn!(error = %e, "pausing the group member's partitions failed; it drops what it fetches");
                }
                let generation = wall_ms();
                let shared = &self.shared;
                let mut state = shared.state();
                for partition in &partitions {
                    state.owned.insert(*partition, generation);
                    *state.handovers.entry("claimed".to_owned()).or_default() += 1;
                }
                info!(?partitions, generation, "the group assigned partitions");
                shared.publish(&state);
            }
            Rebalance::Error(e) => {
                error!(error = %e, "consumer group rebalance failed");
                self.shared.state().trouble = Some(format!("consumer group rebalance failed: {e}"));
            }
            Rebalance::Revoke(_) => {}
        }
    }
}

/// A processor's membership in the consumer group of the events topic.
pub struct KafkaGroup {
    shared: Arc<Shared>,
    consumer: Arc<BaseConsumer<GroupContext>>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    census: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for KafkaGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaGroup").field("member", &self.shared.member).finish()
    }
}

impl KafkaGroup {
    /// Joins `kafka.consumer_group` on `kafka.topic` (of `partitions` partitions, created or
    /// grown as the gateway does it) as `member`, with a session of `ttl`; a revocation
    /// waits up to `handover_timeout` for the last flush of its partitions.
    pub async fn join(
        config: &KafkaConfig,
        partitions: u32,
        member: &str,
        ttl: Duration,
        handover_timeout: Duration,
    ) -> Result<Self, KafkaSetupError> {
        crate::client::ensure_events_topic(config, partitions).await?;
        let session = ttl.as_millis().to_string();
        let heartbeat = (ttl / 4).as_millis().max(100).to_string();
        let mut settings = client_config(
            config,
            &[
                ("partition.assignment.strategy", ASSIGNOR),
                ("session.timeout.ms", &session),
                ("heartbeat.interval.ms", &heartbeat),
                ("client.id", member),
            ],
        );
        settings
            .set("group.id", &config.consumer_group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // It reads nothing (its partitions are paused): no offsets to look up.
            .set("auto.offset.reset", "latest")
            .set("enable.partition.eof", "false");
        let shared = Arc::new(Shared {
            member: member.to_owned(),
            ttl,
            handover_timeout,
            state: Mutex::new(State::default()),
            handed: Condvar::new(),
            sender: watch::Sender::new(Assignment::default()),
        });
        let context = GroupContext { shared: Arc::clone(&shared) };
        let consumer: BaseConsumer<GroupContext> =
            settings.create_with_context(context).map_err(|e| KafkaSetupError::Client {
                client: "group member",
                servers: config.bootstrap_servers.clone(),
                reason: e.to_string(),
            })?;
        consumer.subscribe(&[&config.topic]).map_err(|e| KafkaSetupError::Topic {
            topic: config.topic.clone(),
            servers: config.bootstrap_servers.clone(),
            reason: format!("joining consumer group {}: {e}", config.consumer_group),
        })?;
        let consumer = Arc::new(consumer);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("kafka-group".to_owned())
            .spawn({
                let (consumer, shared, stop) = (Arc::clone(&consumer), Arc::clone(&shared), Arc::clone(&stop));
                move || poll(&consumer, &shared, &stop)
            })
            .map_err(|e| KafkaSetupError::Client {
                client: "group member",
                servers: config.bootstrap_servers.clone(),
                reason: format!("starting its thread: {e}"),
            })?;
        let census = tokio::spawn(census(
            Arc::clone(&consumer),
            Arc::clone(&shared),
            config.consumer_group.clone(),
            config.topic.clone(),
            partitions,
        ));
        info!(member, group = %config.consumer_group, ?ttl, "joined the consumer group");
        Ok(Self { shared, consumer, stop, thread: Mutex::new(Some(thread)), census })
    }

    /// The group member's client: positions are committed through it (the broker refuses
    /// commits from outside a group that has members).
    pub(crate) fn consumer(&self) -> Arc<BaseConsumer<GroupContext>> {
        Arc::clone(&self.consumer)
    }
}

/// Reads the group's members and their assignments every [`CENSUS_EVERY`]: how many members
/// there are and how many of the topic's `partitions` none of them is assigned.
async fn census(
    consumer: Arc<BaseConsumer<GroupContext>>,
    shared: Arc<Shared>,
    group: String,
    topic: String,
    partitions: u32,
) {
    loop {
        tokio::time::sleep(CENSUS_EVERY).await;
        let (consumer, name, topic) = (Arc::clone(&consumer), group.clone(), topic.clone());
        let described = tokio::task::spawn_blocking(move || {
            let list = consumer.fetch_group_list(Some(&name), CENSUS_EVERY).ok()?;
            let info = list.groups().iter().find(|g| g.name() == name)?;
            let mut owned = BTreeSet::new();
            for member in info.members() {
                owned.extend(member.assignment().map(|bytes| assigned(bytes, &topic)).unwrap_or_default());
            }
            Some((info.members().len() as u32, owned))
        })
        .await;
        let Ok(Some((members, owned))) = described else { continue };
        let mut state = shared.state();
        state.members = Some(members);
        state.unowned = Some((0..partitions).filter(|p| !owned.contains(p)).count() as u32);
        shared.publish(&state);
    }
}

/// The partitions of `topic` in a member's assignment, as the consumer protocol encodes it
/// (version: i16, topics: [name: i16-length string, partitions: [i32]], user data); what
/// cannot be read counts as nothing.
fn assigned(bytes: &[u8], topic: &str) -> Vec<u32> {
    fn take<const N: usize>(bytes: &[u8], at: &mut usize) -> Option<[u8; N]> {
        let chunk = bytes.get(*at..*at + N)?.try_into().ok()?;
        *at += N;
        Some(chunk)
    }
    let read = || -> Option<Vec<u32>> {
        let mut at = 0;
        take::<2>(bytes, &mut at)?;
        let topics = i32::from_be_bytes(take::<4>(bytes, &mut at)?);
        let mut found = Vec::new();
        for _ in 0..topics.max(0) {
            let len = usize::try_from(i16::from_be_bytes(take::<2>(bytes, &mut at)?)).ok()?;
            let name = bytes.get(at..at + len)?;
            at += len;
            let count = i32::from_be_bytes(take::<4>(bytes, &mut at)?);
            for _ in 0..count.max(0) {
                let partition = i32::from_be_bytes(take::<4>(bytes, &mut at)?);
                if name == topic.as_bytes() {
                    found.extend(u32::try_from(partition).ok());
                }
            }
        }
        Some(found)
    };
    read().unwrap_or_default()
}

/// Notes that the poll thread runs now; a gap since the last time longer than a quarter of
/// the TTL (the process was paused) suspends writes for half a TTL, time for librdkafka to
/// heartbeat and learn whether the group still counts this member in.
fn note_poll(state: &mut State, ttl: Duration) {
    let now = Instant::now();
    if let Some(last) = state.last_poll {
        let gap = now.saturating_duration_since(last);
        if gap > ttl / 4 {
            warn!(?gap, "the group member was not polled for a while (a pause?): writes wait for a heartbeat");
            state.suspect_until = Some(now + ttl / 2);
        }
    }
    state.last_poll = Some(now);
}

/// Polls the group member until `stop`: rebalance hooks run here.
fn poll(consumer: &BaseConsumer<GroupContext>, shared: &Shared, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        note_poll(&mut shared.state(), shared.ttl);
        match consumer.poll(POLL) {
            Some(Err(e)) => {
                warn!(error = %e, "consumer group member error");
                shared.state().trouble = Some(format!("consumer group: {e}"));
            }
            Some(Ok(_)) => {}
            None => {
                let mut state = shared.state();
                if state.trouble.as_deref().is_some_and(|t| t.starts_with("consumer group")) {
                    state.trouble = None;
                }
            }
        }
    }
}

impl Drop for KafkaGroup {
    fn drop(&mut self) {
        self.census.abort();
        self.shared.state().leaving = true;
        self.shared.handed.notify_all();
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Fence for KafkaGroup {
    fn check(&self, partitions: &[u32], budget: Duration) -> Result<(), Fenced> {
        let state = self.shared.state();
        let now = Instant::now();
        for &partition in partitions {
            let fenced = |reason: String| Fenced { member: self.shared.member.clone(), partition, reason };
            if !state.owned.contains_key(&partition) && !state.revoking.contains(&partition) {
                return Err(fenced("not assigned to this member".to_owned()));
            }
            let polled = state.last_poll.map_or(Duration::MAX, |at| now.saturating_duration_since(at));
            if polled.saturating_add(budget) > self.shared.ttl / 2 {
                return Err(fenced(format!("the group member was last polled {polled:?} ago (a pause?)")));
            }
            if state.suspect_until.is_some_and(|until| now < until) {
                return Err(fenced(
                    "a pause was noticed; waiting for a heartbeat to confirm the membership".to_owned(),
                ));
            }
        }
        Ok(())
    }
}

impl Membership for KafkaGroup {
    fn member(&self) -> &str {
        &self.shared.member
    }

    fn watch(&self) -> watch::Receiver<Assignment> {
        self.shared.sender.subscribe()
    }

    fn write_budget(&self) -> Duration {
        self.shared.ttl / 4
    }

    fn hand_over(&self, partitions: Vec<u32>) -> BoxFuture<'_, ()> {
        let mut state = self.shared.state();
        for partition in partitions {
            if state.revoking.remove(&partition) {
                *state.handovers.entry("handed_over".to_owned()).or_default() += 1;
            }
        }
        drop(state);
        self.shared.handed.notify_all();
        futures::future::ready(()).boxed()
    }

    fn leave(&self) -> BoxFuture<'_, ()> {
        async move {
            {
                let mut state = self.shared.state();
                state.leaving = true;
                let owned = std::mem::take(&mut state.owned).len() as u64;
                *state.handovers.entry("shutdown".to_owned()).or_default() += owned;
                self.shared.publish(&state);
            }
            self.shared.handed.notify_all();
            self.census.abort();
            self.stop.store(true, Ordering::Relaxed);
            let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
            let consumer = Arc::clone(&self.consumer);
            // Unsubscribes off the async threads, polling until the revocation it causes ran
            // (it does not wait: `leaving`), so the group rebalances at once rather than after
            // the session times out; librdkafka's close follows when the group is dropped.
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(thread) = thread {
                    let _ = thread.join();
                }
                consumer.unsubscribe();
                let until = Instant::now() + Duration::from_secs(2);
                while Instant::now() < until && consumer.assignment().is_ok_and(|a| a.count() > 0) {
                    let _ = consumer.poll(POLL);
                }
            })
            .await;
        }
        .boxed()
    }

    fn trouble(&self) -> Option<String> {
        self.shared.state().trouble.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::assigned;

    #[test]
    fn reads_a_members_assignment() {
        // version 1; two topics: "ev" [3, 7], "other" [1]; 4 bytes of user data.
        let mut bytes = vec![0, 1, 0, 0, 0, 2];
        bytes.extend([0, 2, b'e', b'v', 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 7]);
        bytes.extend([0, 5, b'o', b't', b'h', b'e', b'r', 0, 0, 0, 1, 0, 0, 0, 1]);
        bytes.extend([0, 0, 0, 0]);
        for (topic, want) in [("ev", vec![3, 7]), ("other", vec![1]), ("none", vec![])] {
            assert_eq!(assigned(&bytes, topic), want, "{topic}");
        }
        assert_eq!(assigned(&bytes[..9], "ev"), Vec::<u32>::new(), "cut short: nothing");
        assert_eq!(assigned(&[], "ev"), Vec::<u32>::new());
    }
}
