//! Whole-binary tests: `gallop` run as a user runs it, against the real NATS and ClickHouse
//! servers.

mod brokers;
mod cluster;
mod config_cmd;
mod deploy;
mod ingest_cmd;
mod pipeline;
mod prometheus;
mod sessions;
mod sharing;
mod topics;
mod traqq;

/// Sends SIGTERM to `child` and returns its exit code once it exits (panics if it takes
/// longer than `within`).
async fn terminate(child: &mut tokio::process::Child, within: std::time::Duration) -> Option<i32> {
    let pid = child.id().expect("still running").to_string();
    let signalled = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
    assert!(signalled.success(), "kill -TERM {pid}");
    let status = tokio::time::timeout(within, child.wait())
        .await
        .unwrap_or_else(|_| panic!("exits within {within:?} of SIGTERM"))
        .expect("wait");
    status.code()
}
