//! `gallop traqq-config`: a traqq `TraqqConfig` (JSON, as traqq deserializes it) turned
//! into Gallop's configuration: the `[traqq]` section with the same mapping, and the
//! processor rules that keep every metric of it.

use std::fmt::Write as _;

use gallop_config::{TraqqKind, TraqqMapping, MAX_TOP_K};
use serde::Deserialize;

/// Why a traqq configuration could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Not a traqq configuration.
    #[error("not a traqq TraqqConfig: {0}")]
    Parse(#[from] serde_json::Error),
    /// A mapping Gallop cannot keep as it is; every problem names its entry.
    #[error("the mapping cannot be kept: {}", .0.join("; "))]
    Mapping(Vec<String>),
    /// `--site` is empty.
    #[error("a site is needed (--site): traqq events are recorded under one Gallop site")]
    NoSite,
}

/// traqq's `TraqqConfig`; missing sections take traqq's defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TraqqFile {
    time: TraqqTime,
    mapping: TraqqMapping,
    limits: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct TraqqTime {
    store_hourly: bool,
    timezone: String,
}

impl Default for TraqqTime {
    fn default() -> Self {
        Self { store_hourly: false, timezone: "UTC".to_owned() }
    }
}

/// The Gallop TOML for the traqq configuration `json`: records go to `site`, the listener
/// listens on `listen`.
pub fn convert(json: &str, site: &str, listen: &str) -> Result<String, ConvertError> {
    let file: TraqqFile = serde_json::from_str(json)?;
    if site.trim().is_empty() {
        return Err(ConvertError::NoSite);
    }
    let problems = file.mapping.problems_for_conversion();
    if !problems.is_empty() {
        return Err(ConvertError::Mapping(problems));
    }
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let list = |items: &[String]| format!("[{}]", items.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", "));
    let mapping = &file.mapping;
    let mut out = String::new();
    let _ = writeln!(out, "# Converted from a traqq TraqqConfig by `gallop traqq-config` (docs/traqq.md).");
    let _ = writeln!(out, "[traqq]\nenabled = true\nlisten = {}\nsite = {}", quote(listen), quote(site));
    let _ = writeln!(out, "top_k = {MAX_TOP_K}  # traqq reads 250 items per leaderboard; Gallop keeps 100");
    if file.time.timezone != "UTC" {
        let _ = writeln!(
            out,
            "# traqq's timezone was {}: a day is [t, t + 86400) from the day start t a query names, \
             and query_days counts UTC days.",
            file.time.timezone
        );
    }
    if file.time.store_hourly {
        let _ = writeln!(
            out,
            "# store_hourly: Gallop keeps minute, hour and day rows always; traqq's protocol reads days."
        );
    }
    if file.limits.is_object() {
        let _ = writeln!(
            out,
            "# traqq's limits cut long values; Gallop refuses them by [ingest.limits] (max_name_bytes, \
             max_prop_value_bytes, max_props) with an error naming the limit."
        );
    }
    let _ = writeln!(out, "\n[traqq.mapping]");
    let _ = writeln!(out, "bitmap = {}", list(&mapping.bitmap));
    let _ = writeln!(out, "add = {}", list(&mapping.add));
    let adv: Vec<String> = mapping
        .add_value
        .iter()
        .map(|a| format!("{{ key = {}, add_key = {} }}", quote(&a.key), quote(&a.add_key)))
        .collect();
    let _ = writeln!(out, "add_value = [{}]", adv.join(", "));
    let _ = writeln!(out, "top = {}", list(&mapping.top));

    let _ = writeln!(
        out,
        "\n# What the processor keeps for these metrics (merge with any [[processor.rollups]] you have)."
    );
    let mut written: Vec<String> = Vec::new();
    for metric in mapping.metrics().iter().filter(|m| m.kind != TraqqKind::Top) {
        if written.contains(&metric.dimension) {
            continue;
        }
        written.push(metric.dimension.clone());
        let what = match metric.kind {
            TraqqKind::Bmp => format!("bmp {}: distinct hashed values", metric.pattern()),
            _ => format!("{} {}", metric.kind.name(), metric.pattern()),
        };
        let _ = writeln!(
            out,
            "[[processor.rollups]]  # {what}\ndimension = {}\nvisitors = {}",
            quote(&metric.dimension),
            metric.kind == TraqqKind::Bmp
        );
    }
    for metric in mapping.metrics().iter().filter(|m| m.kind == TraqqKind::Top) {
        let _ = writeln!(
            out,
            "[[processor.leaderboards]]  # top {}\ndimension = {}\nk = {MAX_TOP_K}",
            metric.pattern(),
            quote(&metric.dimension)
        );
    }
    Ok(out)
}

/// The mapping's problems, worded for the converter (the config keys are the ones it prints).
trait ConversionProblems {
    fn problems_for_conversion(&self) -> Vec<String>;
}

impl ConversionProblems for TraqqMapping {
    fn problems_for_conversion(&self) -> Vec<String> {
        let mut config = gallop_config::Config::default();
        config.traqq.enabled = true;
        config.traqq.site = "check".to_owned();
        config.traqq.mapping = self.clone();
        match gallop_config::validate(&config) {
            Ok(()) => Vec::new(),
            Err(gallop_config::ConfigError::Invalid(problems)) => problems
                .into_iter()
                .filter(|p| p.key.starts_with("traqq.mapping") && !p.expected.contains("gallop traqq-config"))
                .map(|p| format!("{}: {}", p.key, p.expected))
                .collect(),
            Err(other) => vec![other.to_string()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const README_CONFIG: &str = r#"{
        "time": {"store_hourly": false, "timezone": "UTC"},
        "mapping": {
            "bitmap": ["ip"],
            "add": ["event", "event~geo"],
            "add_value": [{"key": "event~geo", "add_key": "amount"}],
            "top": ["geo"]
        },
        "limits": {"max_field_length": 128, "max_value_length": 512, "max_combinations": 1000, "max_metrics_per_event": 1000}
    }"#;

    #[test]
    fn converts_traqqs_readme_example() {
        let toml_text = convert(README_CONFIG, "myapp", "127.0.0.1:9876").expect("converts");
        let config: gallop_config::Config = toml::from_str(&toml_text).expect("valid Gallop TOML");
        assert!(config.traqq.enabled);
        assert_eq!(config.traqq.site, "myapp");
        assert_eq!(config.traqq.mapping.add, ["event", "event~geo"]);
        let rollups: Vec<(&str, bool)> =
            config.processor.rollups.iter().map(|r| (r.dimension.as_str(), r.visitors)).collect();
        assert_eq!(rollups, [("uniq:ip", true), ("name", false), ("name~props.geo", false)]);
        let boards: Vec<(&str, usize)> =
            config.processor.leaderboards.iter().map(|l| (l.dimension.as_str(), l.k)).collect();
        assert_eq!(boards, [("props.geo", 100)]);
        gallop_config::validate(&config).expect("the converted configuration passes validation");
    }

    #[test]
    fn refuses_what_gallop_cannot_keep() {
        let two_values = README_CONFIG.replace(
            r#"[{"key": "event~geo", "add_key": "amount"}]"#,
            r#"[{"key": "event", "add_key": "amount"}, {"key": "geo", "add_key": "price"}]"#,
        );
        let err = convert(&two_values, "myapp", "127.0.0.1:9876").expect_err("two value fields").to_string();
        assert!(err.contains("traqq.mapping.add_value[1].add_key") && err.contains("one value"), "{err}");
        assert!(matches!(convert(README_CONFIG, " ", "x"), Err(ConvertError::NoSite)));
        assert!(matches!(convert(r#"{"mapping": 5}"#, "s", "x"), Err(ConvertError::Parse(_))));
    }
}
