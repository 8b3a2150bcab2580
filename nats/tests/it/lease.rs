//! Partition leases in a JetStream KV bucket: fair shares, a member that stops renewing
//! losing its partitions to the others, fencing, and the configurations refused at start.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use gallop_broker::{Fence, Membership};
use gallop_nats::NatsLeases;

use crate::nats_url;

const PARTITIONS: u32 = 8;
const TTL: Duration = Duration::from_secs(2);

/// A bucket of the test's own, deleted on drop.
struct Bucket {
    name: String,
    jetstream: async_nats::jetstream::Context,
}

impl Bucket {
    async fn new() -> Self {
        let client = async_nats::connect(nats_url()).await.expect("NATS must run (scripts/services.sh starts it)");
        let name = format!("gallop_lease_test_{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        Self { name, jetstream: async_nats::jetstream::new(client) }
    }

    async fn join(&self, member: &str, ttl: Duration, pinned: Option<Vec<u32>>) -> Result<NatsLeases, String> {
        NatsLeases::join(&self.jetstream, &self.name, "EVENTS", ttl, PARTITIONS, member, pinned)
            .await
            .map_err(|e| e.to_string())
    }
}

impl Drop for Bucket {
    fn drop(&mut self) {
        // A connection of its own: the test's runtime, which drives the test's, is blocked here.
        let stream = format!("KV_{}", self.name);
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                if let Ok(client) = async_nats::connect(nats_url()).await {
                    let _ = async_nats::jetstream::new(client).delete_stream(&stream).await;
                }
            });
        })
        .join();
    }
}

/// What the process does with a membership: partitions that leave the assignment are
/// handed over (at once: nothing to flush here).
fn hand_over_what_leaves(leases: Arc<NatsLeases>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut watch = leases.watch();
        let mut running: BTreeSet<u32> = watch.borrow().owned.keys().copied().collect();
        while watch.changed().await.is_ok() {
            let now: BTreeSet<u32> = watch.borrow_and_update().owned.keys().copied().collect();
            let gone: Vec<u32> = running.difference(&now).copied().collect();
            if !gone.is_empty() {
                leases.hand_over(gone).await;
            }
            running = now;
        }
    })
}

/// Waits until `members` own every partition once among them, in shares that differ by at
/// most one when `fair`; returns the shares.
async fn shared(members: &[&Arc<NatsLeases>], fair: bool) -> BTreeMap<String, Vec<u32>> {
    let started = Instant::now();
    loop {
        let shares: BTreeMap<String, Vec<u32>> =
            members.iter().map(|m| (m.member().to_owned(), m.watch().borrow().partitions())).collect();
        let all: Vec<u32> = shares.values().flatten().copied().collect();
        let sizes: Vec<usize> = shares.values().map(Vec::len).collect();
        let even = sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0) <= 1;
        if all.len() == PARTITIONS as usize
            && all.iter().collect::<BTreeSet<_>>().len() == PARTITIONS as usize
            && (even || !fair)
        {
            return shares;
        }
        let what = if fair { "shared fairly" } else { "owned" };
        assert!(started.elapsed() < Duration::from_secs(20), "not {what} within 20 s: {shares:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn members_share_fairly_and_take_over_a_silent_members_partitions() {
    let bucket = Bucket::new().await;
    let (mut members, mut loops) = (Vec::new(), Vec::new());
    for name in ["a", "b", "c"] {
        let leases = Arc::new(bucket.join(name, TTL, None).await.expect("joins"));
        loops.push(hand_over_what_leaves(Arc::clone(&leases)));
        members.push(leases);
    }
    // Members joining one by one first take more, then give up what is above their share.
    shared(&members.iter().collect::<Vec<_>>(), true).await;

    // Each member may write its own partitions for a quarter of the TTL, and no others.
    let a = &members[0];
    let own = a.watch().borrow().partitions();
    let other = (0..PARTITIONS).find(|p| !own.contains(p)).expect("a does not own everything");
    assert!(a.check(&own, a.write_budget()).is_ok(), "a writes its own partitions");
    assert!(a.check(&[other], Duration::ZERO).is_err(), "a may not write partition {other}");
    assert!(a.check(&own, TTL).is_err(), "no lease holds a whole TTL ahead");

    // c falls silent without leaving (its renewals stop, as in a crash): a and b take its
    // partitions once its leases lapse.
    let silent = members.pop().expect("c");
    let theirs = silent.watch().borrow().partitions();
    let dropped = Instant::now();
    if let Some(process) = loops.pop() {
        process.abort();
        let _ = process.await;
    }
    assert_eq!(Arc::strong_count(&silent), 1, "nothing else holds c");
    drop(silent);
    let shares = shared(&members.iter().collect::<Vec<_>>(), false).await;
    let took = dropped.elapsed();
    assert!(took < TTL + Duration::from_secs(3), "taken over after {took:?}: {shares:?}");
    assert!(theirs.iter().all(|p| shares.values().flatten().any(|q| q == p)), "c's {theirs:?} in {shares:?}");

    // A member that leaves releases everything at once.
    let b = members.pop().expect("b");
    b.leave().await;
    let shares = shared(&members.iter().collect::<Vec<_>>(), false).await;
    assert_eq!(shares["a"].len(), 8, "a runs everything: {shares:?}");
}

#[tokio::test]
async fn a_bucket_kept_for_another_ttl_is_refused() {
    let bucket = Bucket::new().await;
    let _first = bucket.join("a", TTL, None).await.expect("joins");
    let refused = bucket.join("b", Duration::from_secs(3), None).await.expect_err("another TTL is refused");
    assert!(
        refused.contains(&bucket.name) && refused.contains("consumer.lease_ttl is 3s") && refused.contains("2s"),
        "names the bucket and both durations: {refused}"
    );
}

#[tokio::test]
async fn a_member_name_in_use_and_an_overlapping_static_list_are_refused() {
    let bucket = Bucket::new().await;
    let _left = bucket.join("left", TTL, Some(vec![0, 1, 2, 3])).await.expect("joins");
    let again = bucket.join("left", TTL, None).await.expect_err("one name, two processes");
    assert!(again.contains("held by live member left"), "{again}");
    let overlap = bucket.join("right", TTL, Some(vec![3, 4])).await.expect_err("overlapping lists");
    assert!(
        overlap.contains("partition 3 of consumer.partitions is held by live member left")
            && overlap.contains("member right refuses to start"),
        "names the partition and both members: {overlap}"
    );
    let disjoint = bucket.join("right", TTL, Some(vec![4, 5])).await.expect("a disjoint list joins");
    assert_eq!(disjoint.watch().borrow().partitions(), [4, 5]);
}

/// A `nats-server` of the test's own (JetStream in a directory of its own), to freeze.
struct PrivateNats {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl PrivateNats {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let dir = std::env::temp_dir().join(format!("gallop-lease-nats-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let conf = dir.join("nats.conf");
        let store = dir.join("js");
        std::fs::write(
            &conf,
            format!("listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n}}\n", store.display()),
        )
        .expect("write nats.conf");
        let child = std::process::Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server must be installed (scripts/services.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "private nats-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, dir }
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill").arg(signal).arg(self.child.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {signal} nats-server");
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits up to 30 s for `done`.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(30), "{what} not within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_frozen_lease_store_fences_writes_then_loses_the_partitions_and_they_are_claimed_again() {
    let nats = PrivateNats::start();
    let client = async_nats::connect(format!("nats://127.0.0.1:{}", nats.port)).await.expect("connects");
    let jetstream = async_nats::jetstream::new(client);
    let leases = NatsLeases::join(&jetstream, "leases", "EVENTS", TTL, PARTITIONS, "solo", None).await.expect("joins");
    let all: Vec<u32> = (0..PARTITIONS).collect();
    until("all partitions owned", || leases.watch().borrow().partitions() == all).await;
    let generations = leases.watch().borrow().owned.clone();
    assert!(leases.check(&all, leases.write_budget()).is_ok());

    // The store stops answering: renewals hang. Writes are refused within the TTL, by the
    // clock alone; then the partitions are lost and /ready says why.
    nats.signal("-STOP");
    let frozen = Instant::now();
    until("writes fenced", || leases.check(&all, leases.write_budget()).is_err()).await;
    assert!(frozen.elapsed() < TTL, "fenced within the TTL ({:?})", frozen.elapsed());
    until("partitions lost", || leases.watch().borrow().owned.is_empty()).await;
    until("trouble reported", || leases.trouble().is_some()).await;
    assert!(leases.trouble().is_some_and(|t| t.contains("lease bucket leases unreachable")), "{:?}", leases.trouble());

    // Back: the lapsed leases are claimed again, under new generations.
    nats.signal("-CONT");
    until("claimed again", || leases.watch().borrow().partitions() == all).await;
    let again = leases.watch().borrow().owned.clone();
    assert!(again.iter().all(|(p, g)| generations[p] < *g), "new generations: {generations:?} → {again:?}");
    until("trouble cleared", || leases.trouble().is_none()).await;
}
