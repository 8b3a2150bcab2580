//! Prometheus done right, proven with Prometheus itself against a running `gallop run`:
//! `promtool check metrics` passes on both `/metrics` pages; a real Prometheus (Debian
//! package) scrapes them, sees both targets up and counts what the test sent; it evaluates
//! every expression of the Pipeline dashboard (each must answer with data) and loads the
//! alert rules of deploy/prometheus without an evaluation error.

use std::{
    io::Write as _,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::{
    brokers::{Broker, Kind},
    pipeline::{clickhouse_url, free_port, generate, now_ms, send, tag, Pipeline},
    terminate,
};

/// `promtool check metrics` on the page at `address`; the page's text on success.
async fn promtool_check_metrics(address: &str) -> String {
    let page = reqwest::get(format!("http://{address}/metrics"))
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|e| panic!("GET {address}/metrics: {e}"))
        .text()
        .await
        .expect("metrics page");
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool must be installed (scripts/services.sh tools): {e}"));
    child.stdin.take().expect("stdin").write_all(page.as_bytes()).expect("write to promtool");
    let output = child.wait_with_output().expect("promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && said.trim().is_empty(), "promtool check metrics on {address}:\n{said}\n{page}");
    page
}

/// A Prometheus server of the test's own: its own port, data directory and configuration.
struct Prometheus {
    child: Child,
    address: String,
    dir: PathBuf,
}

impl Prometheus {
    /// Scrapes the gateway and the processor every second and loads Gallop's alert rules.
    async fn start(gateway: &str, processor: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("gallop-prometheus-{}", tag()));
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n\
             \x20 - job_name: gallop-ingest\n    static_configs:\n      - targets: [\"{gateway}\"]\n\
             \x20 - job_name: gallop-process\n    static_configs:\n      - targets: [\"{processor}\"]\n",
            rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
        let address = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={address}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("prometheus must be installed (scripts/services.sh tools): {e}"));
        Self { child, address, dir }
    }

    /// `GET /api/v1/<path>`'s `data`, or None while the server does not answer.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let response = reqwest::Client::new()
            .get(format!("http://{}/api/v1/{path}", self.address))
            .query(query)
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        assert_eq!(body["status"], "success", "{path} {query:?}: {body}");
        Some(body["data"].clone())
    }

    /// The instant vector `expr` evaluates to now.
    async fn query(&self, expr: &str) -> Option<Vec<Value>> {
        self.api("query", &[("query", expr)]).await.and_then(|data| data["result"].as_array().cloned())
    }

    /// Waits until `done` says yes, up to a minute, then fails with what it saw last.
    async fn until<T: std::fmt::Debug>(&self, what: &str, mut check: impl AsyncFnMut(&Self) -> (bool, T)) -> T {
        let started = Instant::now();
        loop {
            let (done, seen) = check(self).await;
            if done {
                return seen;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "Prometheus: {what} not within 60 s; last seen {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The one number of a single-sample vector.
fn scalar(result: &[Value]) -> Option<f64> {
    match result {
        [sample] => sample["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

#[tokio::test]
async fn prometheus_scrapes_gallop_run_and_answers_every_pipeline_panel() {
    let (gateway, processor) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let mut pipeline = Pipeline::new(Broker::new(Kind::Nats, &tag()), clickhouse_url());
    let env = [("GALLOP_INGEST__LISTEN", gateway.clone()), ("GALLOP_CONSUMER__LISTEN", processor.clone())];
    let (run, _) = pipeline.spawn(&["run"], &env, Some("listening")).await;
    pipeline.gateway = Some(run);
    pipeline.wait_for_table().await;

    // What the test sends: accepted events, and one request rejected as invalid.
    let sent = generate(21, 3_000, now_ms(), 5);
    send(&gateway, &sent).await;
    let rejected = reqwest::Client::new()
        .post(format!("http://{gateway}/v1/events"))
        .header("Content-Type", "application/json")
        .body(r#"{"site":"a.test","name":""}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(rejected.status(), 400);
    pipeline.wait_for(sent.len()).await;

    // promtool's linter on both pages, with every family present.
    let gateway_page = promtool_check_metrics(&gateway).await;
    let processor_page = promtool_check_metrics(&processor).await;
    for (page, families) in [
        (
            &gateway_page,
            &["gallop_build_info", "process_cpu_seconds_total", "gallop_broker_up", "gallop_events_accepted_total"][..],
        ),
        (
            &processor_page,
            &[
                "gallop_build_info",
                "process_resident_memory_bytes",
                "process_open_fds",
                "gallop_consumer_lag_messages{partition=",
                "gallop_consumer_lag_seconds{partition=",
                "gallop_watermark_timestamp_seconds{partition=",
                "gallop_live_keys_limit",
                "gallop_clickhouse_up 1",
            ][..],
        ),
    ] {
        for family in families {
            assert!(page.contains(family), "{family} missing:\n{page}");
        }
    }

    let prometheus = Prometheus::start(&gateway, &processor).await;
    let targets = prometheus
        .until("both targets up", async |p: &Prometheus| {
            let targets = p.api("targets", &[]).await.map(|d| d["activeTargets"].clone()).unwrap_or_default();
            let up: Vec<(String, String)> = targets
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|t| {
                    (
                        t["labels"]["job"].as_str().unwrap_or_default().to_owned(),
                        t["health"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            (up.len() == 2 && up.iter().all(|(_, health)| health == "up"), up)
        })
        .await;
    assert_eq!(targets.len(), 2);

    // `gallop probe`, the compose stack's health check, agrees with /ready and /health.
    for (url, ok) in [
        (format!("http://{processor}/ready"), true),
        (format!("http://{gateway}/ready"), true),
        (format!("http://{gateway}/no-such-page"), false),
        (format!("http://127.0.0.1:{}/ready", free_port()), false),
    ] {
        let output =
            Command::new(env!("CARGO_BIN_EXE_gallop")).args(["probe", &url]).output().await.expect("gallop probe");
        assert_eq!(output.status.success(), ok, "gallop probe {url}: {}", String::from_utf8_lossy(&output.stderr));
    }

    // Counters equal what was sent.
    let n = sent.len() as f64;
    for (expr, want) in [
        ("sum(gallop_events_accepted_total)", n),
        (r#"sum(gallop_events_total{outcome="counted"})"#, n),
        ("sum(gallop_events_rejected_total)", 1.0),
        (r#"sum(up{job=~"gallop-.*"})"#, 2.0),
    ] {
        let got = prometheus
            .until(&format!("{expr} = {want}"), async |p: &Prometheus| {
                let got = p.query(expr).await.as_deref().and_then(scalar);
                (got == Some(want), got)
            })
            .await;
        assert_eq!(got, Some(want), "{expr}");
    }

    // Every expression of the Pipeline dashboard answers with data.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/dashboards/pipeline.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("pipeline.json")).expect("JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let expr = target["expr"].as_str().expect("a Prometheus expression");
            // Grafana's $__rate_interval: at least four scrape intervals.
            exprs.push((
                panel["title"].as_str().unwrap_or_default().to_owned(),
                expr.replace("$__rate_interval", "10s"),
            ));
        }
    }
    assert!(exprs.len() >= 15, "{exprs:?}");
    for (title, expr) in &exprs {
        assert!(!expr.contains('$'), "{title}: a Grafana variable this test does not expand: {expr}");
        prometheus
            .until(&format!("{title}: {expr} has data"), async |p: &Prometheus| {
                let result = p.query(expr).await.unwrap_or_default();
                (!result.is_empty(), result)
            })
            .await;
    }

    // The alert rules load and evaluate; none fires on a healthy pipeline.
    let written = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml"))
        .expect("alerts.yml")
        .matches("- alert: ")
        .count();
    let rules = prometheus
        .until("every alert rule evaluated", async |p: &Prometheus| {
            let groups = p.api("rules", &[("type", "alert")]).await.map(|d| d["groups"].clone()).unwrap_or_default();
            let rules: Vec<(String, String, String)> = groups
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .map(|r| {
                    let field = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                    (field("name"), field("health"), field("state"))
                })
                .collect();
            (rules.len() == written && rules.iter().all(|(_, health, _)| health == "ok"), rules)
        })
        .await;
    for (name, _, state) in &rules {
        assert_eq!(state, "inactive", "{name} fires on a healthy pipeline");
    }

    let mut run = pipeline.gateway.take().expect("gallop run");
    assert_eq!(terminate(&mut run, Duration::from_secs(30)).await, Some(0), "SIGTERM is a clean stop");
}
