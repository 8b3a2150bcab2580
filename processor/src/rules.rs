//! The compiled rollup set: built-in defaults plus the configured extras.

use gallop_config::{EmptyValues, LateEvents, ProcessorConfig, TimeConfig};

use crate::{dimension::Dimension, error::ProcessorError, sketch::TopK};

/// Breakdowns a web-analytics dashboard shows, each with visitors.
pub(crate) const DEFAULT_ROLLUPS: &[&str] = &[
    "total",
    "name",
    "host",
    "path",
    "source",
    "ref_host",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_content",
    "utm_term",
    "country",
    "browser",
    "os",
    "device",
    "name~props.*",
    "page",
];

/// Built-in breakdowns without visitors: revenue per currency (never one sum of EUR and USD).
pub(crate) const DEFAULT_ROLLUPS_WITHOUT_VISITORS: &[&str] = &["currency"];

/// Leaderboards for high-cardinality fields: (dimension, k).
pub(crate) const DEFAULT_LEADERBOARDS: &[(&str, usize)] = &[("referrer", 20), ("props.*", 10)];

/// One breakdown to maintain.
#[derive(Debug, Clone)]
pub(crate) struct Rollup {
    pub(crate) dimension: Dimension,
    pub(crate) visitors: bool,
}

/// One leaderboard to maintain.
#[derive(Debug, Clone)]
pub(crate) struct Leaderboard {
    pub(crate) dimension: Dimension,
    pub(crate) k: usize,
}

/// Everything the processor needs to know, checked once.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) rollups: Vec<Rollup>,
    pub(crate) leaderboards: Vec<Leaderboard>,
    pub(crate) allowed_lateness_ms: i64,
    /// Extra lateness for the time between the gateway's check and the broker's stamp.
    pub(crate) acceptance_grace_ms: i64,
    pub(crate) max_future_ms: i64,
    pub(crate) max_value_bytes: usize,
    pub(crate) max_combinations: usize,
    pub(crate) flush_keys: usize,
    pub(crate) flush_interval_ms: i64,
    pub(crate) max_live_keys: usize,
    pub(crate) empty_values: EmptyValues,
    pub(crate) late_events: LateEvents,
    pub(crate) sessions: bool,
    pub(crate) session_timeout_ms: i64,
    pub(crate) max_open_sessions: usize,
    pub(crate) session_breakdowns: Vec<String>,
}

impl Rules {
    /// How far behind its partition's watermark an event may be and still count:
    /// `time.allowed_lateness` plus `time.acceptance_grace`.
    pub(crate) fn lateness_ms(&self) -> i64 {
        self.allowed_lateness_ms.saturating_add(self.acceptance_grace_ms)
    }

    /// Compiles `config`; errors name the config key.
    pub(crate) fn compile(config: &ProcessorConfig, time: &TimeConfig) -> Result<Self, ProcessorError> {
        let mut rollups: Vec<Rollup> = Vec::new();
        let mut add_rollup = |dimension: Dimension, visitors: bool| match rollups
            .iter_mut()
            .find(|r| r.dimension.spec == dimension.spec)
        {
            Some(existing) => existing.visitors |= visitors,
            // A distinct count is nothing but its sketch.
            None => rollups.push(Rollup { visitors: visitors || dimension.uniques_of.is_some(), dimension }),
        };
        if config.default_rollups {
            for spec in DEFAULT_ROLLUPS {
                add_rollup(Dimension::parse(spec, "built-in rollups")?, true);
            }
            for spec in DEFAULT_ROLLUPS_WITHOUT_VISITORS {
                add_rollup(Dimension::parse(spec, "built-in rollups")?, false);
            }
        }
        for (i, rollup) in config.rollups.iter().enumerate() {
            add_rollup(
                Dimension::parse(&rollup.dimension, &format!("processor.rollups[{i}].dimension"))?,
                rollup.visitors,
            );
        }

        let mut leaderboards: Vec<Leaderboard> = Vec::new();
        let defaults = if config.default_rollups { DEFAULT_LEADERBOARDS } else { &[] };
        let configured = config.leaderboards.iter().enumerate().map(|(i, l)| (i, l.dimension.as_str(), l.k));
        for (i, spec, k) in defaults.iter().map(|(s, k)| (usize::MAX, *s, *k)).chain(configured) {
            let key = if i == usize::MAX {
                "built-in leaderboards".to_owned()
            } else {
                format!("processor.leaderboards[{i}]")
            };
            let dimension = Dimension::parse(spec, &format!("{key}.dimension"))?;
            if dimension.uniques_of.is_some() {
                return Err(ProcessorError::Dimension {
                    key: format!("{key}.dimension"),
                    spec: spec.to_owned(),
                    reason: "a distinct count (uniq:) has no values to rank; use it as a rollup".to_owned(),
                });
            }
            TopK::new(k).map_err(|e| ProcessorError::Leaderboard { key: format!("{key}.k"), reason: e.to_string() })?;
            match leaderboards.iter_mut().find(|l| l.dimension.spec == dimension.spec) {
                Some(existing) => existing.k = k,
                None => leaderboards.push(Leaderboard { dimension, k }),
            }
        }

        let millis = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Ok(Self {
            rollups,
            leaderboards,
            allowed_lateness_ms: millis(time.allowed_lateness),
            acceptance_grace_ms: millis(time.acceptance_grace),
            max_future_ms: millis(time.max_future),
            max_value_bytes: config.max_value_bytes,
            max_combinations: config.max_combinations_per_event,
            flush_keys: config.flush_keys,
            flush_interval_ms: millis(config.flush_interval),
            max_live_keys: config.max_live_keys,
            empty_values: config.empty_values,
            late_events: config.late_events,
            sessions: config.sessions,
            session_timeout_ms: millis(config.session_timeout),
            max_open_sessions: config.max_open_sessions,
            session_breakdowns: config.session_breakdowns.clone(),
        })
    }
}

/// The dimensions a processor built from `config` writes: breakdowns (rollups, visits
/// and engagement included) and leaderboards, as specs. A spec with `props.*` stands for
/// one dimension per property key (`props.plan`, `name~props.plan`).
pub fn dimensions(config: &ProcessorConfig) -> Result<(Vec<String>, Vec<String>), ProcessorError> {
    let rules = Rules::compile(config, &TimeConfig::default())?;
    let mut rollups: Vec<String> = rules.rollups.iter().map(|r| r.dimension.spec.clone()).collect();
    if config.sessions {
        rollups
            .extend(crate::session::DIMENSIONS.iter().filter(|d| d.starts_with("session:")).map(|d| (*d).to_owned()));
    }
    rollups.extend(crate::session::DIMENSIONS.iter().filter(|d| d.starts_with("engagement:")).map(|d| (*d).to_owned()));
    let boards = rules.leaderboards.iter().map(|l| l.dimension.spec.clone()).collect();
    Ok((rollups, boards))
}

#[cfg(test)]
mod tests {
    use gallop_config::{LeaderboardConfig, RollupConfig};

    use super::*;

    /// `bench/no-visitor-sketches.toml` measures what the visitor sketches cost: it must
    /// stay the defaults, rollup for rollup and leaderboard for leaderboard, less the sketches.
    #[test]
    fn the_benchmarks_no_sketch_config_is_the_defaults_without_sketches() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/no-visitor-sketches.toml");
        // A prefix no variable has: the file alone, whatever GALLOP_* the shell holds.
        let sources = gallop_config::Sources { file: Some(path.into()), env_prefix: "NO_SUCH_PREFIX_".into() };
        let config = gallop_config::load(&sources).expect("the file loads");
        let bench = Rules::compile(&config.processor, &config.time).expect("valid");
        let defaults = Rules::compile(&ProcessorConfig::default(), &TimeConfig::default()).expect("valid");
        let rollups = |rules: &Rules| rules.rollups.iter().map(|r| r.dimension.spec.clone()).collect::<Vec<_>>();
        assert_eq!(rollups(&bench), rollups(&defaults));
        assert!(bench.rollups.iter().all(|r| !r.visitors));
        let boards =
            |rules: &Rules| rules.leaderboards.iter().map(|l| (l.dimension.spec.clone(), l.k)).collect::<Vec<_>>();
        assert_eq!(boards(&bench), boards(&defaults));
    }

    #[test]
    fn defaults_plus_extras_without_duplicates() {
        let config = ProcessorConfig {
            rollups: vec![
                RollupConfig { dimension: "name~country".into(), visitors: false },
                RollupConfig { dimension: "path".into(), visitors: false },
            ],
            leaderboards: vec![LeaderboardConfig { dimension: "referrer".into(), k: 50 }],
            ..ProcessorConfig::default()
        };
        let rules = Rules::compile(&config, &TimeConfig::default()).expect("valid");
        let specs: Vec<&str> = rules.rollups.iter().map(|r| r.dimension.spec.as_str()).collect();
        assert_eq!(specs.len(), DEFAULT_ROLLUPS.len() + DEFAULT_ROLLUPS_WITHOUT_VISITORS.len() + 1);
        assert_eq!(specs.last(), Some(&"name~country"));
        let path = rules.rollups.iter().find(|r| r.dimension.spec == "path").expect("path");
        assert!(path.visitors, "a default with visitors keeps them");
        let referrer = rules.leaderboards.iter().find(|l| l.dimension.spec == "referrer").expect("referrer");
        assert_eq!(referrer.k, 50, "configured k wins");
        assert_eq!(rules.allowed_lateness_ms, 3_600_000);
    }

    #[test]
    fn bad_specs_name_their_key() {
        let config = ProcessorConfig {
            default_rollups: false,
            leaderboards: vec![LeaderboardConfig { dimension: "referer".into(), k: 5 }],
            ..ProcessorConfig::default()
        };
        let err = Rules::compile(&config, &TimeConfig::default()).expect_err("typo");
        assert!(err.to_string().starts_with("processor.leaderboards[0].dimension"), "{err}");
        let config = ProcessorConfig {
            default_rollups: false,
            leaderboards: vec![LeaderboardConfig { dimension: "referrer".into(), k: 0 }],
            ..ProcessorConfig::default()
        };
        let err = Rules::compile(&config, &TimeConfig::default()).expect_err("k = 0");
        assert!(err.to_string().starts_with("processor.leaderboards[0].k"), "{err}");
    }
}
