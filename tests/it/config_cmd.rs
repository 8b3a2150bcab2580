//! `gallop config`: effective configuration, redaction, and start-up errors naming keys.

use std::process::Command;

fn gallop() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gallop"));
    command.env_remove("GALLOP_CONFIG").env_remove("RUST_LOG");
    command
}

#[test]
fn prints_effective_config_with_env_overrides_and_redacted_secrets() {
    let output = gallop()
        .args(["config"])
        .env("GALLOP_NATS__TOKEN", "hunter2-token")
        .env("GALLOP_INGEST__BATCHING__LINGER", "7ms")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("linger = \"7ms\""), "{stdout}");
    assert!(stdout.contains("token = \"<redacted>\""), "{stdout}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
}

#[test]
fn credentials_in_urls_and_secret_files_are_redacted() {
    let dir = std::env::temp_dir().join(format!("gallop-config-test-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let password_file = dir.join("clickhouse-password");
    std::fs::write(&password_file, "from-a-file-pw\n").expect("write");
    let output = gallop()
        .args(["config"])
        .env("GALLOP_NATS__URL", "nats://alice:url-secret@127.0.0.1:4222,nats://bob:other-secret@10.0.0.2:4222")
        .env("GALLOP_CLICKHOUSE__URL", "http://ch-user:ch-secret@127.0.0.1:8123")
        .env("GALLOP_CLICKHOUSE__PASSWORD_FILE", &password_file)
        .env("GALLOP_NATS__NKEY", "SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("url = \"nats://<redacted>@127.0.0.1:4222,nats://<redacted>@10.0.0.2:4222\""), "{stdout}");
    assert!(stdout.contains("url = \"http://<redacted>@127.0.0.1:8123\""), "{stdout}");
    for secret in ["url-secret", "other-secret", "ch-secret", "from-a-file-pw", "SUAIBDPB"] {
        assert!(!stdout.contains(secret), "{secret} printed:\n{stdout}");
    }
    assert!(stdout.contains("password = \"<redacted>\""), "the file's password is loaded: {stdout}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn hash_key_prints_what_the_config_takes() {
    use std::io::Write as _;
    let mut child = gallop()
        .arg("hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    child.stdin.take().expect("stdin").write_all(b"secret-key-1-long-enough\n").expect("write");
    let output = child.wait_with_output().expect("exits");
    assert!(output.status.success());
    // sha256sum of "secret-key-1-long-enough", computed outside Gallop.
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "sha256:c01da6efdc88f86a39be139e8d3fc8ab7ec26e048b21d6065c9db2a0c6d562b0"
    );
    let output =
        gallop().args(["config"]).env("GALLOP_INGEST__AUTH__EVENT_KEYS", "[\"not-a-hash\"]").output().expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("ingest.auth.event_keys[0]: a key's hash, sha256:<64 hex digits>"), "{stderr}");
}

#[test]
fn example_config_is_complete_and_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/gallop.example.toml");
    let output = gallop().args(["--config", example, "config"]).output().expect("runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // Every key the effective config prints is documented in the example.
    let printed = String::from_utf8_lossy(&output.stdout);
    let documented = std::fs::read_to_string(example).expect("example exists");
    for line in printed.lines() {
        let Some((key, _)) = line.split_once(" = ") else { continue };
        let key = key.trim();
        assert!(
            documented.lines().any(|l| l.trim_start_matches('#').trim_start().starts_with(&format!("{key} ="))),
            "gallop.example.toml does not document `{key}`"
        );
    }
}

#[test]
fn bad_config_fails_at_start_naming_the_key() {
    for (var, value, needle) in [
        ("GALLOP_NATS__URLL", "x", "nats.urll"),
        ("GALLOP_BROKER__PARTITIONS", "0", "broker.partitions: between 1 and 4096"),
        ("GALLOP_INGEST__PUBLISH_TIMEOUT", "soon", "ingest.publish_timeout"),
        (
            "GALLOP_PROCESSOR__ROLLUPS",
            "[{dimension=\"name~colour\"}]",
            "processor.rollups[0].dimension: dimension \"name~colour\": unknown field \"colour\"",
        ),
    ] {
        let output = gallop().args(["config"]).env(var, value).output().expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{var}: {stderr}");
        assert!(stderr.contains(needle), "{var}: {stderr}");
    }
    let output = gallop().args(["--config", "/nonexistent/gallop.toml", "config"]).output().expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/gallop.toml"));
}

#[test]
fn kafka_properties_pass_through_with_secrets_redacted_and_guarantees_kept() {
    let dir = std::env::temp_dir().join(format!("gallop-config-test-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write config");
        path
    };
    let good = write(
        "good.toml",
        "[broker]\nkind = \"kafka\"\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.password\" = \"hunter2-kafka\"\n",
    );
    let output = gallop().arg("--config").arg(&good).arg("config").output().expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("kind = \"kafka\""), "{stdout}");
    assert!(stdout.contains("\"security.protocol\" = \"SASL_SSL\""), "{stdout}");
    assert!(stdout.contains("\"sasl.password\" = \"<redacted>\"") && !stdout.contains("hunter2"), "{stdout}");

    let bad = write("bad.toml", "[kafka]\ntopic = \"no spaces\"\n[kafka.properties]\n\"acks\" = \"1\"\n");
    let output = gallop().arg("--config").arg(&bad).arg("config").output().expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for needle in ["kafka.topic", "kafka.properties.\"acks\"", "left to Gallop"] {
        assert!(stderr.contains(needle), "{needle} missing: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `gallop --help` describes each command by the brokers it works with: both run on NATS
/// JetStream and on Kafka (it once said "NATS JetStream" alone).
#[test]
fn help_names_both_brokers_for_the_gateway_and_the_processor() {
    let output = gallop().arg("--help").output().expect("runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let help = String::from_utf8_lossy(&output.stdout);
    for command in ["ingest", "process"] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{command} ")))
            .unwrap_or_else(|| panic!("no line for `{command}` in:\n{help}"));
        for broker in ["NATS JetStream", "Kafka"] {
            assert!(line.contains(broker), "`{command}` does not name {broker}: {line}");
        }
    }
}

/// Config loading turns every `GALLOP_*` variable into a config key and refuses unknown
/// ones, so a test-only variable must not start with `GALLOP_`: every variable the tests,
/// fuzz checks and scripts read for themselves is `TEST_GALLOP_*`. Finds each name read with
/// `env::var(…)`/`var_os(…)` (or `${NAME…}` in a script) and checks its prefix, and that
/// `gallop config` indeed refuses an unknown `GALLOP_` name (the trap this avoids).
#[test]
fn test_only_environment_variables_stay_out_of_the_config_prefix() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut read = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("a readable tree").flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | ".git" | "node_modules" | "corpus" | "regressions") {
                    pending.push(path);
                }
                continue;
            }
            if !(name.ends_with(".rs") || name.ends_with(".sh") || name == "run") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for pattern in ["var(\"", "var_os(\"", "${"] {
                for (at, _) in text.match_indices(pattern) {
                    let rest = &text[at + pattern.len()..];
                    let variable: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    if variable.starts_with("GALLOP") || variable.starts_with("TEST_GALLOP") {
                        read.push((path.strip_prefix(root).unwrap_or(&path).display().to_string(), variable));
                    }
                }
            }
        }
    }
    assert!(
        read.iter().any(|(_, v)| v == "TEST_GALLOP_CLICKHOUSE_URL"),
        "the scan finds the variables the tests read: {read:?}"
    );
    let config_prefixed: Vec<_> = read.iter().filter(|(_, v)| v.starts_with("GALLOP_")).collect();
    // `GALLOP_CONFIG` names the config file; it is read by config loading itself.
    let config_prefixed: Vec<_> = config_prefixed.into_iter().filter(|(_, v)| v != "GALLOP_CONFIG").collect();
    assert!(config_prefixed.is_empty(), "test-only variables in the config's prefix: {config_prefixed:?}");

    let output =
        gallop().arg("config").env("GALLOP_TEST_CLICKHOUSE_URL", "http://127.0.0.1:8123").output().expect("runs");
    assert!(!output.status.success(), "an unknown GALLOP_ variable is refused");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("test_clickhouse_url"), "the error names the key: {stderr}");
}
