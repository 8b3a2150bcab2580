//! What an operator deploys, checked by the programs that read it (containers cannot run
//! here): `docker-compose config` validates docker-compose.yml (without a profile and with
//! the kafka and cluster profiles); `gallop config` loads every gallop service's environment;
//! `promtool` checks the Prometheus configuration, the alert rules and their unit tests; the
//! cluster profile's ClickHouse and Keeper XML parses (Python's xml.etree) and agrees with
//! itself, the compose services and GALLOP_CLICKHOUSE__SHARDS; every file the compose stack
//! mounts is one of these or a Grafana file that `sink/tests/it/grafana.rs` checks; the
//! Dockerfile runs the one binary as a non-root user.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

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

/// `docker-compose config` of the stack with `profiles` on, resolved (anchors merged,
/// defaults filled).
fn compose_config(profiles: &[&str], env: &[(&str, &str)]) -> serde_yaml::Value {
    let mut args = Vec::new();
    for profile in profiles {
        args.extend(["--profile", profile]);
    }
    args.extend(["-f", "docker-compose.yml", "config"]);
    let out = assert_success(&tool("docker-compose", &args, env), "docker-compose config");
    serde_yaml::from_str(&out).unwrap_or_else(|e| panic!("docker-compose config printed no YAML: {e}\n{out}"))
}

/// The ClickHouse servers of the `cluster` profile (docker-compose.yml), in the order of
/// cluster `gallop`'s remote_servers (shard 1: replicas 1, 2; shard 2: replicas 1, 2).
const CLUSTER_SERVERS: [&str; 4] = ["ch-s1r1", "ch-s1r2", "ch-s2r1", "ch-s2r2"];
/// Every service of the `cluster` profile: Keeper, the servers and the gallop services
/// writing to them.
const CLUSTER_SERVICES: [&str; 7] =
    ["keeper", "ch-s1r1", "ch-s1r2", "ch-s2r1", "ch-s2r2", "migrate-cluster", "process-cluster"];

/// Runs `python3 -c script args…` with `stdin` and returns what it printed as JSON. Python
/// (3.11: `tomllib`) is on every machine the tests run on; the root crate has no XML or TOML
/// parser of its own.
fn python_json(script: &str, args: &[&str], stdin: &str) -> Json {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python3 must be installed for these tests: {e}"));
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write to python3");
    let output = child.wait_with_output().expect("python3 runs");
    let out = assert_success(&output, &format!("python3 {args:?}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("python3 printed no JSON: {e}\n{out}"))
}

/// What `gallop config` printed (TOML), as JSON.
fn toml_to_json(toml: &str) -> Json {
    python_json("import json, sys, tomllib; print(json.dumps(tomllib.loads(sys.stdin.read())))", &[], toml)
}

/// The XML files at `paths` (relative to the repository), parsed by Python's xml.etree (a
/// file that is not well-formed fails the test): each element as `{"tag", "attrib", "text",
/// "children"}`, comments left out.
fn parse_xml(paths: &[&str]) -> BTreeMap<String, Json> {
    const SCRIPT: &str = "
import json, sys, xml.etree.ElementTree as ET
def tree(e):
    return {'tag': e.tag, 'attrib': e.attrib, 'text': (e.text or '').strip(), 'children': [tree(c) for c in e]}
def parse(p):
    try:
        return tree(ET.parse(p).getroot())
    except ET.ParseError as e:
        sys.exit(f'{p}: {e}')
print(json.dumps({p: parse(p) for p in sys.argv[1:]}))
";
    let parsed = python_json(SCRIPT, paths, "");
    serde_json::from_value(parsed).expect("one tree per file")
}

/// The children of XML element `element` tagged `tag`.
fn xml_all<'a>(element: &'a Json, tag: &str) -> Vec<&'a Json> {
    let children = element["children"].as_array().map(Vec::as_slice).unwrap_or_default();
    children.iter().filter(|c| c["tag"] == tag).collect()
}

/// The one element at `path` ("a/b/c") below `element`.
fn xml_one<'a>(element: &'a Json, path: &str) -> &'a Json {
    path.split('/').fold(element, |at, tag| match xml_all(at, tag).as_slice() {
        [one] => one,
        found => panic!("{path}: {} <{tag}> below <{}>, not one", found.len(), at["tag"]),
    })
}

/// The text of the one element at `path` below `element`.
fn xml_text(element: &Json, path: &str) -> String {
    xml_one(element, path)["text"].as_str().unwrap_or_default().to_owned()
}

/// A service's `environment`, as strings.
fn service_env(name: &str, service: &Yaml) -> BTreeMap<String, String> {
    service["environment"]
        .as_mapping()
        .unwrap_or_else(|| panic!("{name}: no environment"))
        .iter()
        .map(|(k, v)| (k.as_str().unwrap_or_default().to_owned(), yaml_scalar(v)))
        .collect()
}

/// A service's mounts of files of the repository: (source relative to the repository,
/// target in the container).
fn bind_mounts(name: &str, service: &Yaml) -> Vec<(String, String)> {
    let root = root();
    let mut mounts = Vec::new();
    for volume in service["volumes"].as_sequence().map(Vec::as_slice).unwrap_or_default() {
        let spec = volume.as_str().unwrap_or_else(|| panic!("{name}: volume {volume:?} in the short syntax"));
        let mut parts = spec.split(':');
        let (source, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        if !source.starts_with('/') {
            continue; // a named volume
        }
        let relative = Path::new(source)
            .strip_prefix(&root)
            .unwrap_or_else(|_| panic!("{name} mounts {source}, outside the repository"))
            .to_string_lossy()
            .into_owned();
        assert!(spec.ends_with(":ro"), "{name}: {spec} should be read-only");
        mounts.push((relative, target.to_owned()));
    }
    mounts
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
    let runs: [(&[&str], &str); 4] =
        [(&[], "nats"), (&["kafka"], "kafka"), (&["cluster"], "nats"), (&["kafka", "cluster"], "kafka")];
    for (profiles, kind) in runs {
        let config = compose_config(profiles, &[("GALLOP_BROKER__KIND", kind)]);
        let services = config["services"].as_mapping().expect("services");
        let names: Vec<&str> = services.keys().filter_map(|k| k.as_str()).collect();
        for wanted in ["nats", "clickhouse", "migrate", "ingest", "process", "prometheus", "grafana"] {
            assert!(names.contains(&wanted), "service {wanted} missing: {names:?}");
        }
        if profiles.contains(&"cluster") {
            for wanted in CLUSTER_SERVICES {
                assert!(names.contains(&wanted), "service {wanted} missing with --profile cluster: {names:?}");
            }
        }
        // Only the Kafka broker and the cluster are optional: `docker compose up` starts the rest.
        for name in &names {
            let expected = match *name {
                "kafka" => "[kafka]",
                name if CLUSTER_SERVICES.contains(&name) => "[cluster]",
                _ => "null",
            };
            let expected: Yaml = serde_yaml::from_str(expected).expect("yaml");
            assert_eq!(services[*name]["profiles"], expected, "{name}: profiles");
        }
        let mut printed_by_name = BTreeMap::new();
        for (name, service) in services {
            let name = name.as_str().unwrap_or_default();
            let image = service["image"].as_str().unwrap_or_else(|| panic!("{name}: no image"));
            let tag = image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or_default();
            assert!(
                tag == "local" || (tag != "latest" && tag.chars().any(|c| c.is_ascii_digit())),
                "{name}: image {image} is not pinned to a version"
            );
            if !name.starts_with("migrate") {
                assert!(service["healthcheck"]["test"].is_sequence(), "{name} has no health check");
                assert!(service["restart"].as_str().is_some_and(|r| r != "no"), "{name} has no restart policy");
            }
            if service["command"].is_sequence() && image == "gallop:local" {
                let env = service_env(name, service);
                let printed = gallop_config(&env);
                for line in [
                    &format!("kind = \"{kind}\""),
                    "url = \"nats://nats:4222\"",
                    "bootstrap_servers = \"kafka:9092\"",
                    "listen = \"0.0.0.0:8080\"",
                    "listen = \"0.0.0.0:9464\"",
                ] {
                    assert!(printed.contains(line), "{name}: `gallop config` lacks {line}:\n{printed}");
                }
                assert!(!printed.contains("password = \"gallop\""), "{name}: the password is printed:\n{printed}");
                // The single server, or (the cluster profile's services) the cluster whose
                // shards GALLOP_CLICKHOUSE__SHARDS lists, as figment loaded them.
                let loaded = toml_to_json(&printed);
                let clickhouse = &loaded["clickhouse"];
                match env.get("GALLOP_CLICKHOUSE__CLUSTER") {
                    None => {
                        assert_eq!(clickhouse["url"], "http://clickhouse:8123", "{name}: {clickhouse}");
                        assert!(clickhouse["cluster"].is_null(), "{name}: {clickhouse}");
                        assert_eq!(clickhouse["shards"], serde_json::json!([]), "{name}: {clickhouse}");
                    }
                    Some(cluster) => {
                        assert!(CLUSTER_SERVICES.contains(&name), "{name} writes to a cluster outside the profile");
                        let shards: Json = serde_json::from_str(&env["GALLOP_CLICKHOUSE__SHARDS"])
                            .unwrap_or_else(|e| panic!("{name}: GALLOP_CLICKHOUSE__SHARDS is not JSON: {e}"));
                        assert_eq!(clickhouse["cluster"].as_str(), Some(cluster.as_str()), "{name}: {clickhouse}");
                        assert_eq!(clickhouse["shards"], shards, "{name}: {clickhouse}");
                        assert_eq!(clickhouse["url"].as_str(), env.get("GALLOP_CLICKHOUSE__URL").map(String::as_str));
                    }
                }
                printed_by_name.insert(name.to_owned(), loaded);
            }
        }
        // Both processors read the one broker: with their own durable consumers, leases and
        // Kafka group, each aggregates every event into its own store instead of the two
        // splitting the partitions between them.
        if profiles.contains(&"cluster") {
            let (single, cluster) = (&printed_by_name["process"], &printed_by_name["process-cluster"]);
            for (section, key) in
                [("consumer", "durable_prefix"), ("nats", "lease_bucket"), ("kafka", "consumer_group")]
            {
                assert_ne!(
                    single[section][key], cluster[section][key],
                    "{section}.{key} of process and process-cluster"
                );
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
        ("deploy/clickhouse-cluster/keeper.xml", "the_cluster_profile_is_one_consistent_clickhouse_cluster (below)"),
        ("deploy/clickhouse-cluster/cluster.xml", "the_cluster_profile_is_one_consistent_clickhouse_cluster (below)"),
        ("deploy/clickhouse-cluster/ch-s1r1.xml", "the_cluster_profile_is_one_consistent_clickhouse_cluster (below)"),
        ("deploy/clickhouse-cluster/ch-s1r2.xml", "the_cluster_profile_is_one_consistent_clickhouse_cluster (below)"),
        ("deploy/clickhouse-cluster/ch-s2r1.xml", "the_cluster_profile_is_one_consistent_clickhouse_cluster (below)"),
        ("deploy/clickhouse-cluster/ch-s2r2.xml", "the_cluster_profile_is_one_consistent_clickhouse_cluster (below)"),
    ]);
    let config = compose_config(&["kafka", "cluster"], &[]);
    let root = root();
    let mut mounts = BTreeMap::new();
    for (name, service) in config["services"].as_mapping().expect("services") {
        let name = name.as_str().unwrap_or_default();
        for (relative, target) in bind_mounts(name, service) {
            assert!(root.join(&relative).exists(), "{name} mounts {relative}, which does not exist");
            assert!(checked.contains_key(relative.as_str()), "{name} mounts {relative}: add the check that proves it");
            mounts.insert(relative, target);
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

/// The `cluster` profile is one cluster, whichever file says it: Keeper's config and the
/// address the servers reach it at; remote_servers of cluster `gallop` and the four server
/// services; each server's macros and its place in remote_servers; and the gallop services'
/// GALLOP_CLICKHOUSE__CLUSTER / __SHARDS and that order.
#[test]
fn the_cluster_profile_is_one_consistent_clickhouse_cluster() {
    let config = compose_config(&["cluster"], &[]);
    let services = config["services"].as_mapping().expect("services");
    let service = |name: &str| -> &Yaml { services.get(name).unwrap_or_else(|| panic!("service {name} missing")) };
    let mounted = |name: &str, target: &str| -> String {
        let mounts = bind_mounts(name, service(name));
        let found = mounts.iter().find(|(_, t)| t == target);
        found.unwrap_or_else(|| panic!("{name} mounts nothing at {target}: {mounts:?}")).0.clone()
    };
    let depends = |name: &str, on: &str| service(name)["depends_on"][on]["condition"].as_str().map(str::to_owned);
    let dir = "deploy/clickhouse-cluster";
    let files: Vec<String> = std::fs::read_dir(root().join(dir))
        .expect("deploy/clickhouse-cluster")
        .map(|entry| format!("{dir}/{}", entry.expect("entry").file_name().to_string_lossy()))
        .collect();
    let xml = parse_xml(&files.iter().map(String::as_str).collect::<Vec<_>>());
    let root_of = |path: &str| -> &Json {
        let tree = xml.get(path).unwrap_or_else(|| panic!("{path} is not in {dir}"));
        assert_eq!(tree["tag"], "clickhouse", "{path}: the root element");
        tree
    };

    // The servers run the single-server service's ClickHouse, Keeper the same release.
    let single = service("clickhouse");
    let image = single["image"].as_str().expect("clickhouse image");
    let (_, tag) = image.rsplit_once(':').expect("a tagged image");
    let keeper = service("keeper");
    assert_eq!(keeper["image"].as_str(), Some(format!("clickhouse/clickhouse-keeper:{tag}").as_str()));
    let servers: Vec<&str> = services
        .iter()
        .filter(|(_, s)| s["image"].as_str().is_some_and(|i| i.starts_with("clickhouse/clickhouse-server:")))
        .filter_map(|(name, _)| name.as_str())
        .filter(|name| *name != "clickhouse")
        .collect();
    assert_eq!(servers, CLUSTER_SERVERS, "the cluster's server services");

    // Keeper: one Raft node, named as its service, the ZooKeeper protocol on tcp_port, its
    // logs and snapshots on its data volume, /ready what its health check asks.
    let keeper_xml = root_of(&mounted("keeper", "/etc/clickhouse-keeper/keeper_config.xml"));
    assert!(
        ["0.0.0.0", "::"].contains(&xml_text(keeper_xml, "listen_host").as_str()),
        "Keeper listens beyond localhost"
    );
    let keeper_server = xml_one(keeper_xml, "keeper_server");
    let keeper_port = xml_text(keeper_server, "tcp_port");
    assert_eq!(keeper_port, "9181");
    let server_id = xml_text(keeper_server, "server_id");
    let raft = xml_all(xml_one(keeper_server, "raft_configuration"), "server");
    assert_eq!(raft.len(), 1, "a single Raft node");
    assert_eq!(xml_text(raft[0], "id"), server_id);
    assert_eq!(server_id, "1");
    assert_eq!(xml_text(raft[0], "hostname"), "keeper");
    assert_eq!(keeper["hostname"].as_str(), Some("keeper"));
    let volumes = keeper["volumes"].as_sequence().expect("keeper volumes");
    let data = volumes
        .iter()
        .filter_map(|v| v.as_str())
        .find_map(|v| v.strip_prefix("keeper-data:"))
        .and_then(|v| v.split(':').next())
        .expect("keeper's data volume");
    for path in ["log_storage_path", "snapshot_storage_path"] {
        assert!(xml_text(keeper_server, path).starts_with(data), "Keeper's {path} is not on its volume {data}");
    }
    let ready = format!(
        "http://127.0.0.1:{}{}",
        xml_text(keeper_server, "http_control/port"),
        xml_text(keeper_server, "http_control/readiness/endpoint")
    );
    let check = serde_yaml::to_string(&keeper["healthcheck"]["test"]).expect("yaml");
    assert!(check.contains(&ready), "Keeper's health check does not ask {ready}: {check}");

    // Every server: the shared cluster.xml and its own macros, the single server's user,
    // started once Keeper is ready.
    let mut cluster_xml = None;
    for name in CLUSTER_SERVERS {
        let server = service(name);
        assert_eq!(server["image"].as_str(), Some(image), "{name}");
        for key in ["CLICKHOUSE_USER", "CLICKHOUSE_PASSWORD"] {
            assert_eq!(server["environment"][key], single["environment"][key], "{name}: {key}");
        }
        assert_eq!(depends(name, "keeper").as_deref(), Some("service_healthy"), "{name} waits for Keeper");
        let shared = mounted(name, "/etc/clickhouse-server/config.d/cluster.xml");
        assert_eq!(*cluster_xml.get_or_insert_with(|| shared.clone()), shared, "{name}: one cluster.xml for all");
        assert_eq!(mounted(name, "/etc/clickhouse-server/config.d/macros.xml"), format!("{dir}/{name}.xml"), "{name}");
    }
    let cluster_xml = root_of(&cluster_xml.expect("cluster.xml"));

    // Keeper as the servers reach it, and the queue of `ON CLUSTER` DDL.
    let nodes = xml_all(xml_one(cluster_xml, "zookeeper"), "node");
    assert_eq!(nodes.len(), 1, "one Keeper node");
    assert_eq!(xml_text(nodes[0], "host"), "keeper", "the Keeper service");
    assert_eq!(xml_text(nodes[0], "port"), keeper_port, "Keeper's tcp_port");
    assert_eq!(xml_text(cluster_xml, "distributed_ddl/path"), "/clickhouse/task_queue/ddl");

    // remote_servers: cluster `gallop`, every server once on its native port, connecting as
    // the user the image's entrypoint creates (it removes `default`).
    let clusters = xml_one(cluster_xml, "remote_servers")["children"].as_array().expect("clusters").clone();
    assert_eq!(clusters.len(), 1, "one cluster");
    let cluster_name = clusters[0]["tag"].as_str().expect("cluster name");
    assert_eq!(cluster_name, "gallop");
    let mut shards: Vec<Vec<String>> = Vec::new();
    for (i, shard) in xml_all(&clusters[0], "shard").into_iter().enumerate() {
        let number = i + 1;
        assert_eq!(xml_text(shard, "internal_replication"), "true", "shard {number}");
        let mut names = BTreeSet::new();
        let mut hosts = Vec::new();
        for replica in xml_all(shard, "replica") {
            let host = xml_text(replica, "host");
            assert_eq!(xml_text(replica, "port"), "9000", "{host}: the native protocol port");
            for (field, env) in [("user", "CLICKHOUSE_USER"), ("password", "CLICKHOUSE_PASSWORD")] {
                assert_eq!(xml_one(replica, field)["attrib"]["from_env"], env, "{host}: {field}");
            }
            // Its own macros: this shard, a replica name of its own within the shard.
            let macros = root_of(&format!("{dir}/{host}.xml"));
            assert_eq!(xml_text(macros, "macros/shard").parse::<usize>().ok(), Some(number), "{host}: shard macro");
            assert!(names.insert(xml_text(macros, "macros/replica")), "{host}: a replica name twice in shard {number}");
            assert_eq!(xml_text(macros, "macros/cluster"), cluster_name, "{host}: cluster macro");
            assert_eq!(xml_text(macros, "interserver_http_host"), host, "{host}: interserver_http_host");
            hosts.push(host);
        }
        assert!(!hosts.is_empty(), "shard {number} has no replica");
        shards.push(hosts);
    }
    let mut listed: Vec<&str> = shards.iter().flatten().map(String::as_str).collect();
    listed.sort_unstable();
    assert_eq!(listed, CLUSTER_SERVERS, "remote_servers names each server service once: {shards:?}");
    assert_eq!(shards.len(), 2, "2 shards × 2 replicas: {shards:?}");
    assert!(shards.iter().all(|replicas| replicas.len() == 2), "2 shards × 2 replicas: {shards:?}");

    // The gallop services write to that cluster, shards in remote_servers' order; migrate
    // once every server is up (`ON CLUSTER` waits for all), process once migrated.
    let urls: Vec<Vec<String>> =
        shards.iter().map(|replicas| replicas.iter().map(|host| format!("http://{host}:8123")).collect()).collect();
    let mut writers = Vec::new();
    for (name, gallop) in services {
        let name = name.as_str().unwrap_or_default();
        if gallop["image"] != "gallop:local" {
            continue;
        }
        let env = service_env(name, gallop);
        let Some(cluster) = env.get("GALLOP_CLICKHOUSE__CLUSTER") else { continue };
        assert_eq!(cluster, cluster_name, "{name}: GALLOP_CLICKHOUSE__CLUSTER");
        let listed: Vec<Vec<String>> = serde_json::from_str(&env["GALLOP_CLICKHOUSE__SHARDS"])
            .unwrap_or_else(|e| panic!("{name}: GALLOP_CLICKHOUSE__SHARDS: {e}"));
        assert_eq!(listed, urls, "{name}: GALLOP_CLICKHOUSE__SHARDS against remote_servers");
        let url = &env["GALLOP_CLICKHOUSE__URL"];
        assert!(urls.iter().flatten().any(|u| u == url), "{name}: {url} is no server of the cluster");
        writers.push(name);
    }
    assert_eq!(writers, ["migrate-cluster", "process-cluster"]);
    for server in CLUSTER_SERVERS {
        assert_eq!(depends("migrate-cluster", server).as_deref(), Some("service_healthy"), "migrate-cluster: {server}");
    }
    assert_eq!(depends("process-cluster", "migrate-cluster").as_deref(), Some("service_completed_successfully"));

    // Nothing in deploy/clickhouse-cluster goes unmounted (and so unchecked).
    let mut used: BTreeSet<String> = BTreeSet::new();
    for (name, s) in services {
        used.extend(bind_mounts(name.as_str().unwrap_or_default(), s).into_iter().map(|(source, _)| source));
    }
    for file in &files {
        assert!(used.contains(file), "{file} is mounted by no service");
    }
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
