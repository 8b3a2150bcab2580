//! Loading: built-in defaults < TOML file < `GALLOP_*` environment variables.

use std::path::{Path, PathBuf};

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};

use crate::{error::ConfigError, model::Config};

/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_PATH_ENV: &str = "GALLOP_CONFIG";

/// Where configuration comes from: an optional file and an environment prefix.
#[derive(Debug, Clone)]
pub struct Sources {
    /// TOML file to read. `None` uses defaults and the environment only.
    pub file: Option<PathBuf>,
    /// Prefix of environment variables; nested keys are separated by `__`
    /// (`GALLOP_NATS__URL` sets `nats.url`).
    pub env_prefix: String,
}

impl Sources {
    /// The usual sources: `file` if given, else `$GALLOP_CONFIG` if set; `GALLOP_` variables.
    pub fn standard(file: Option<PathBuf>) -> Self {
        let file = file.or_else(|| std::env::var_os(CONFIG_PATH_ENV).map(PathBuf::from));
        Self { file, env_prefix: "GALLOP_".to_owned() }
    }
}

/// Loads and validates the configuration. Every error names the offending key.
pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = &sources.file {
        check_readable(path)?;
        figment = figment.merge(Toml::file_exact(path));
    }
    // `<prefix>CONFIG` names the file itself and is no config key.
    figment = figment.merge(
        Env::prefixed(&sources.env_prefix).filter(|key| !key.as_str().eq_ignore_ascii_case("config")).split("__"),
    );
    let mut config: Config = figment.extract().map_err(|e| ConfigError::Parse(describe(e)))?;
    crate::validate::validate(&config)?;
    read_secret_files(&mut config)?;
    Ok(config)
}

/// Replaces secrets given as files (`clickhouse.password_file`) by the files' first line.
fn read_secret_files(config: &mut Config) -> Result<(), ConfigError> {
    if let Some(path) = &config.clickhouse.password_file {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.clone(),
            reason: format!("clickhouse.password_file cannot be read: {e}"),
        })?;
        let password = text.lines().next().unwrap_or_default().trim_end_matches('\r');
        config.clickhouse.password = Some(crate::model::Secret::new(password));
    }
    Ok(())
}

fn check_readable(path: &Path) -> Result<(), ConfigError> {
    std::fs::metadata(path).map(|_| ()).map_err(|e| ConfigError::File { path: path.to_owned(), reason: e.to_string() })
}

/// Flattens figment's error chain into lines that each name the key and the source.
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e.metadata.as_ref().map(|m| m.name.to_string()).unwrap_or_default();
            let mut line = String::new();
            if !key.is_empty() {
                line.push_str(&format!("key `{key}`: "));
            }
            line.push_str(&e.kind.to_string());
            if !source.is_empty() {
                line.push_str(&format!(" (from {source})"));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use figment::Jail;

    use super::*;

    /// Loads `toml` (written to a file) with `env` set, and returns the config or the error text.
    // figment's Jail fixes the closure's error type; its size is not ours to shrink.
    #[allow(clippy::result_large_err)]
    fn load_with(toml: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let mut out = Err(String::new());
        Jail::expect_with(|jail| {
            jail.create_file("gallop.toml", toml)?;
            for (k, v) in env {
                jail.set_env(k, v);
            }
            out = load(&Sources { file: Some("gallop.toml".into()), env_prefix: "GALLOP_".into() })
                .map_err(|e| e.to_string());
            Ok(())
        });
        out
    }

    #[track_caller]
    fn check_err(toml: &str, env: &[(&str, &str)], expect: &[&str]) {
        let err = load_with(toml, env).expect_err("config should be rejected");
        for needle in expect {
            assert!(err.contains(needle), "error {err:?} should contain {needle:?}");
        }
    }

    #[test]
    fn defaults_load_and_validate() {
        let config = load_with("", &[]).expect("defaults are valid");
        assert_eq!(config, Config::default());
        assert_eq!(config.nats.url, "nats://127.0.0.1:4222");
        assert_eq!(config.broker.partitions, 8);
    }

    #[test]
    fn file_overrides_defaults_and_env_overrides_file() {
        let config = load_with(
            "[nats]\nurl = \"nats://file:4222\"\nstream = \"FROM_FILE\"\n[ingest.batching]\nlinger = \"5ms\"\n",
            &[("GALLOP_NATS__URL", "nats://env:4222"), ("GALLOP_BROKER__PARTITIONS", "3")],
        )
        .expect("valid");
        assert_eq!(config.nats.url, "nats://env:4222");
        assert_eq!(config.nats.stream, "FROM_FILE");
        assert_eq!(config.broker.partitions, 3);
        assert_eq!(config.ingest.batching.linger, Duration::from_millis(5));
    }

    #[test]
    fn gallop_config_variable_is_not_a_key() {
        load_with("", &[("GALLOP_CONFIG", "gallop.toml")]).expect("GALLOP_CONFIG is the file path, not a key");
    }

    #[test]
    fn unknown_keys_are_named() {
        check_err("[nats]\nurll = \"x\"\n", &[], &["nats.urll", "unknown field"]);
        check_err("[ingset]\n", &[], &["ingset"]);
        check_err("", &[("GALLOP_INGEST__LIMITS__MAX_BODY", "3")], &["max_body", "unknown field"]);
    }

    #[test]
    fn bad_values_are_named() {
        check_err("[broker]\npartitions = \"many\"\n", &[], &["broker.partitions"]);
        check_err("[ingest]\npublish_timeout = \"soon\"\n", &[], &["ingest.publish_timeout"]);
        check_err("[ingest]\nlisten = \"nowhere\"\n", &[], &["ingest.listen"]);
        check_err("[log]\nformat = \"xml\"\n", &[], &["log.format", "human", "json"]);
        check_err("[ingest]\ntrusted_proxies = [\"10.0.0.0/99\"]\n", &[], &["ingest.trusted_proxies"]);
    }

    #[test]
    fn rules_between_values_list_every_problem() {
        check_err(
            "[broker]\npartitions = 0\n[ingest.batching]\nmax_events = 0\nlinger = \"5s\"\n[nats]\nstream = \"a b\"\n",
            &[],
            &[
                "broker.partitions: between 1 and 4096",
                "ingest.batching.max_events",
                "ingest.batching.linger",
                "nats.stream",
            ],
        );
        check_err("[nats]\nuser = \"u\"\n", &[], &["nats.password: set together with nats.user"]);
        check_err("[ingest]\ncors_allowed_origins = [\"example.com\"]\n", &[], &["ingest.cors_allowed_origins[0]"]);
        check_err("[consumer]\nfetch_max_bytes = 65536\n", &[], &["consumer.fetch_max_bytes: at least 1 MiB"]);
        check_err(
            "[consumer]\nfetch_max_bytes = 2000000\n[ingest.batching]\nmax_bytes = 1500000\n",
            &[],
            &["consumer.fetch_max_bytes", "twice ingest.batching.max_bytes"],
        );
    }

    #[test]
    fn a_cluster_takes_its_shards_from_file_or_environment_and_bad_ones_are_named() {
        let shards = r#"[["http://a:8123", "http://b:8123"], ["http://c:8123"]]"#;
        let config = load_with(&format!("[clickhouse]\ncluster = \"gallop\"\nshards = {shards}\n"), &[])
            .expect("a cluster of two shards");
        assert_eq!(config.clickhouse.cluster.as_deref(), Some("gallop"));
        assert_eq!(config.clickhouse.shards, [vec!["http://a:8123", "http://b:8123"], vec!["http://c:8123"]]);
        let from_env =
            load_with("", &[("GALLOP_CLICKHOUSE__CLUSTER", "gallop"), ("GALLOP_CLICKHOUSE__SHARDS", shards)])
                .expect("the same from the environment");
        assert_eq!(from_env.clickhouse, config.clickhouse);

        check_err("[clickhouse]\nshards = [[\"http://a:8123\"]]\n", &[], &["clickhouse.shards: only together with"]);
        check_err("[clickhouse]\ncluster = \"gallop\"\n", &[], &["clickhouse.shards: with clickhouse.cluster"]);
        check_err("[clickhouse]\ncluster = \"gallop\"\nshards = [[]]\n", &[], &["clickhouse.shards"]);
        check_err("[clickhouse]\ncluster = \"a b\"\nshards = [[\"http://a\"]]\n", &[], &["clickhouse.cluster"]);
        check_err("[clickhouse]\ncluster = \"g\"\nshards = [[\"a:8123\"]]\n", &[], &["clickhouse.shards: HTTP URLs"]);
        check_err(
            "[clickhouse]\ncluster = \"g\"\nshards = [[\"http://a\"], [\"http://a\"]]\n",
            &[],
            &["clickhouse.shards: every replica once"],
        );
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = load(&Sources { file: Some("/nonexistent/gallop.toml".into()), env_prefix: "GALLOP_".into() })
            .expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/gallop.toml"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_when_printed() {
        let config = load_with("[nats]\ntoken = \"s3cr3t-token\"\n", &[]).expect("valid");
        assert_eq!(config.nats.token.as_ref().map(|t| t.expose()), Some("s3cr3t-token"));
        let printed = crate::to_toml(&config).expect("renders");
        assert!(!printed.contains("s3cr3t-token"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
        assert!(!format!("{config:?}").contains("s3cr3t-token"));
    }
}
