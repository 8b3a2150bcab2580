//! What an operator deploys, checked by the programs that read it (containers cannot run
//! here): `docker-compose config` validates docker-compose.yml (with and without the kafka
//! profile); `gallop config` loads every gallop service's environment; `promtool` checks
//! the Prometheus configuration, the alert rules and their unit tests; every file the
//! compose stack mounts is one of these or a Grafana file that `sink/tests/it/grafana.rs`
//! checks; the Dockerfile runs the one binary as a non-root user.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a tool of the Debian packages `scripts/services.sh tools` installs, failing loudly
/// when it is missing.
fn tool(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(program);
    command.args(args).current_dir(root());
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap_or_else(|e| {
        panic!("{program} must be installed for these tests (scripts/services.sh tools installs it): {e}")
    })
}

fn assert_success(output: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn prometheus_config_alert_rules_and_their_tests_pass_promtool() {
    let out = assert_success(
        &tool("promtool", &["check", "config", "deploy/prometheus/prometheus.yml"], &[]),
        "promtool check config",
    );
    let written =
        std::fs::read_to_string("deploy/prometheus/alerts.yml").expect("alerts.yml").matches("- alert: ").count();
    assert!(out.contains("1 rule files found") && out.contains(&format!("{written} rules found")), "{out}");
    assert_success(&tool("promtool", &["check", "rules", "deploy/prometheus/alerts.yml"], &[]), "promtool check rules");
    let out = assert_success(
        &tool("promtool", &["test", "rules", "deploy/prometheus/alerts_test.yml"], &[]),
        "promtool test rules",
    );
    assert!(out.contains("SUCCESS"), "{out}");

    // Every alert of alerts.yml has synthetic series in alerts_test.yml.
    let read = |path: &str| -> serde_yaml::Value {
        let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let rules = read("deploy/prometheus/alerts.yml");
    let alerts: Vec<&str> =
        rules["groups"][0]["rules"].as_sequence().expect("rules").iter().filter_map(|r| r["alert"].as_str()).collect();
    let tests = serde_yaml::to_string(&read("deploy/prometheus/alerts_test.yml")).expect("yaml");
    for alert in &alerts {
        assert!(tests.contains(&format!("alertname: {alert}")), "{alert} has no test in alerts_test.yml");
    }
    for wanted in [
        "GallopGatewayDown",
        "GallopHighServerErrorRatio",
        "GallopBrokerUnavailable",
        "GallopConsumerLagGrowing",
        "GallopInsertsFailing",
        "GallopEventsRejectedSpike",
        "GallopProcessorFull",
    ] {
        assert!(alerts.contains(&wanted), "{wanted} missing from alerts.yml");
    }
}

/// `docker-compose config` of the stack, resolved (anchors merged, defaults filled).
fn compose_config(profile: Option<&str>, env: &[(&str, &str)]) -> serde_yaml::Value {
    let mut args = Vec::new();
    if let Some(profile) = profile {
        args.extend(["--profile", profile]);
    }
    args.extend(["-f", "docker-compose.yml", "config"]);
    let out = assert_success(&tool("docker-compose", &args, env), "docker-compose config");
    serde_yaml::from_str(&out).unwrap_or_else(|e| panic!("docker-compose config printed no YAML: {e}\n{out}"))
}

/// Runs `gallop config` with exactly `env` (plus PATH) and returns what it printed.
fn gallop_config(env: &BTreeMap<String, String>) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_gallop"))
        .arg("config")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .output()
        .expect("gallop runs");
    assert_success(&output, &format!("gallop config with {env:?}"))
}

#[test]
fn the_compose_stack_validates_and_every_service_config_loads() {
    assert_success(&tool("docker-compose", &["-f", "docker-compose.yml", "config", "-q"], &[]), "compose check");
    for (profile, kind) in [(None, "nats"), (Some("kafka"), "kafka")] {
        let config = compose_config(profile, &[("GALLOP_BROKER__KIND", kind)]);
        let services = config["services"].as_mapping().expect("services");
        let names: Vec<&str> = services.keys().filter_map(|k| k.as_str()).collect();
        for wanted in ["nats", "clickhouse", "migrate", "ingest", "process", "prometheus", "grafana"] {
            assert!(names.contains(&wanted), "service {wanted} missing: {names:?}");
        }
        let profiles = |name: &str| services.get(name).map(|s| s["profiles"].clone()).unwrap_or_default();
        assert_eq!(profiles("kafka"), serde_yaml::from_str::<serde_yaml::Value>("[kafka]").expect("yaml"));
        assert!(profiles("ingest").is_null() && profiles("nats").is_null(), "only the Kafka broker is optional");
        for (name, service) in services {
            let name = name.as_str().unwrap_or_default();
            let image = service["image"].as_str().unwrap_or_else(|| panic!("{name}: no image"));
            let tag = image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or_default();
            assert!(
                tag == "local" || (tag != "latest" && tag.chars().any(|c| c.is_ascii_digit())),
                "{name}: image {image} is not pinned to a version"
            );
            if name != "migrate" {
                assert!(service["healthcheck"]["test"].is_sequence(), "{name} has no health check");
                assert!(service["restart"].as_str().is_some_and(|r| r != "no"), "{name} has no restart policy");
            }
            if service["command"].is_sequence() && image == "gallop:local" {
                let env: BTreeMap<String, String> = service["environment"]
                    .as_mapping()
                    .unwrap_or_else(|| panic!("{name}: no environment"))
                    .iter()
                    .map(|(k, v)| (k.as_str().unwrap_or_default().to_owned(), yaml_scalar(v)))
                    .collect();
                let printed = gallop_config(&env);
                for line in [
                    &format!("kind = \"{kind}\""),
                    "url = \"nats://nats:4222\"",
                    "bootstrap_servers = \"kafka:9092\"",
                    "url = \"http://clickhouse:8123\"",
                    "listen = \"0.0.0.0:8080\"",
                    "listen = \"0.0.0.0:9464\"",
                ] {
                    assert!(printed.contains(line), "{name}: `gallop config` lacks {line}:\n{printed}");
                }
                assert!(!printed.contains("password = \"gallop\""), "{name}: the password is printed:\n{printed}");
            }
        }
    }
}

fn yaml_scalar(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other).unwrap_or_default().trim().to_owned(),
    }
}

#[test]
fn every_mounted_file_is_one_a_test_checks() {
    // What reads each file, and which test proves it.
    let checked: BTreeMap<&str, &str> = BTreeMap::from([
        ("deploy/prometheus/prometheus.yml", "promtool check config (this file's tests)"),
        ("deploy/prometheus/alerts.yml", "promtool check rules / test rules (this file's tests)"),
        ("deploy/grafana/provisioning", "sink/tests/it/grafana.rs (datasources) and below (dashboard provider)"),
        ("deploy/grafana/dashboards", "sink/tests/it/grafana.rs (every panel's query)"),
    ]);
    let config = compose_config(Some("kafka"), &[]);
    let root = root();
    let mut mounts = BTreeMap::new();
    for (name, service) in config["services"].as_mapping().expect("services") {
        for volume in service["volumes"].as_sequence().map(Vec::as_slice).unwrap_or_default() {
            let spec = volume.as_str().unwrap_or_else(|| panic!("{name:?}: volume {volume:?} in the short syntax"));
            let mut parts = spec.split(':');
            let (source, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
            if !source.starts_with('/') {
                continue; // a named volume
            }
            let relative = Path::new(source)
                .strip_prefix(&root)
                .unwrap_or_else(|_| panic!("{name:?} mounts {source}, outside the repository"))
                .to_string_lossy()
                .into_owned();
            assert!(Path::new(source).exists(), "{name:?} mounts {relative}, which does not exist");
            assert!(
                checked.contains_key(relative.as_str()),
                "{name:?} mounts {relative}: add the check that proves it"
            );
            assert!(spec.ends_with(":ro"), "{name:?}: {spec} should be read-only");
            mounts.insert(relative, target.to_owned());
        }
    }
    assert_eq!(mounts.len(), checked.len(), "mounted: {mounts:?}");

    // Grafana's dashboard provider reads the folder the dashboards are mounted at.
    let provider = std::fs::read_to_string(root.join("deploy/grafana/provisioning/dashboards/gallop.yml"))
        .expect("dashboard provider");
    let provider: serde_yaml::Value = serde_yaml::from_str(&provider).expect("provider YAML");
    let path = provider["providers"][0]["options"]["path"].as_str().expect("provider path");
    assert_eq!(Some(path), mounts.get("deploy/grafana/dashboards").map(String::as_str));
    assert_eq!(provider["providers"][0]["type"].as_str(), Some("file"));
    assert_eq!(mounts.get("deploy/grafana/provisioning").map(String::as_str), Some("/etc/grafana/provisioning"));
}

#[test]
fn the_dockerfile_builds_the_one_binary_and_runs_it_unprivileged() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let stages: Vec<&str> = dockerfile.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage: {stages:?}");
    for stage in &stages {
        let image = stage.split_whitespace().nth(1).unwrap_or_default();
        assert!(image.contains(':') && !image.ends_with(":latest"), "{image} is not pinned");
    }
    assert!(dockerfile.contains("cargo build --release --locked --bin gallop"), "builds the gallop binary");
    assert!(dockerfile.contains("COPY --from=build /gallop /usr/local/bin/gallop"), "copies only the binary");
    let user = dockerfile.lines().rev().find_map(|l| l.strip_prefix("USER ")).expect("a USER line");
    assert!(!user.starts_with("root") && !user.starts_with("0"), "runs as {user}");
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/gallop\"]"));
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    assert!(ignore.lines().any(|l| l == "target"), "the build context leaves target/ out");
}

/// Where `scripts/services.sh tools` installs npm's `@grafana/schema` and `typescript`
/// (`TEST_GALLOP_TOOLS_DIR`, else `~/.cache/gallop/tools`, as the script does).
fn tools_dir() -> PathBuf {
    match std::env::var_os("TEST_GALLOP_TOOLS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/gallop/tools"),
    }
}

/// Grafana's own TypeScript types of a dashboard (npm `@grafana/schema`), checked by `tsc`
/// over each dashboard written as an object literal: unknown keys and wrong value types are
/// errors. A deliberately broken copy must fail, so the check itself is known to work.
/// The packages are installed by `scripts/services.sh tools`, never by the test.
#[test]
fn dashboards_type_check_against_grafanas_schema() {
    let tools = tools_dir().join("grafana-schema");
    let tsc = tools.join("node_modules/.bin/tsc");
    assert!(
        tsc.exists(),
        "{} is missing: scripts/services.sh tools installs @grafana/schema and typescript there",
        tsc.display()
    );
    // The dashboards as TypeScript files beside the installed packages' node_modules.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("grafana-schema-check");
    std::fs::create_dir_all(&dir).expect("a scratch dir");
    let modules = dir.join("node_modules");
    // A link of an earlier run may point at another tools folder, or nowhere: made anew.
    let _ = std::fs::remove_file(&modules);
    std::os::unix::fs::symlink(tools.join("node_modules"), &modules).expect("node_modules linked");
    let check = |name: &str, json: &str| -> Output {
        let file = dir.join(format!("{name}.ts"));
        let source = format!(
            "import type {{ Dashboard }} from '@grafana/schema';\nexport const dashboard: Dashboard = {json};\n"
        );
        std::fs::write(&file, source).expect("write the dashboard as TypeScript");
        let file = file.to_string_lossy().into_owned();
        let args = ["--noEmit", "--strict", "--skipLibCheck", "--moduleResolution", "bundler", "--module", "esnext"];
        let mut command = Command::new(&tsc);
        command.args(args).args(["--target", "es2022", &file]).current_dir(&dir);
        command.output().expect("tsc runs")
    };
    for name in ["site-analytics", "pipeline"] {
        let path = root().join(format!("deploy/grafana/dashboards/{name}.json"));
        let json = std::fs::read_to_string(&path).expect("dashboard");
        assert_success(&check(name, &json), &format!("tsc over {name}.json typed as @grafana/schema's Dashboard"));
        let broken = json.replacen("\"graphTooltip\": 1", "\"graphTooltip\": \"often\"", 1);
        assert_ne!(broken, json, "{name}: the broken copy differs");
        assert!(!check(&format!("{name}-broken"), &broken).status.success(), "tsc accepts a broken {name}");
    }
}
