//! Gallop's typed configuration.
//!
//! Load order: built-in defaults < TOML file (`--config PATH` or `GALLOP_CONFIG`) <
//! `GALLOP_*` environment variables with `__` between nested keys
//! (`GALLOP_NATS__URL=nats://…` sets `nats.url`). Unknown keys and bad values fail at start
//! with an error naming the key; rules between values are checked once by [`load`].
#![warn(missing_docs)]

mod error;
mod load;
mod model;
mod traqq;
mod validate;

pub use error::{ConfigError, Problem};
pub use load::{load, Sources, CONFIG_PATH_ENV};
pub use model::{
    redact_url, Assignment, AuthConfig, BatchingConfig, BrokerConfig, BrokerKind, ClickHouseConfig, Config,
    ConsumerConfig, DiscardKind, EmptyValues, IngestConfig, InputConfig, KafkaConfig, KafkaProperties, LateEvents,
    LeaderboardConfig, LimitsConfig, LogConfig, LogFormat, MessageEncoding, NatsConfig, ProcessorConfig, RollupConfig,
    Secret, ServerConfig, StorageKind, TimeConfig, MAX_ABS_VALUE,
};
pub use traqq::{field_spec, TraqqAddValue, TraqqConfig, TraqqKind, TraqqMapping, TraqqMetric, EVENT, MAX_TOP_K};

/// Checks the rules between values of `config` (what [`load`] checks after parsing), for
/// configurations built in code.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    validate::validate(config)
}

/// Renders a configuration as TOML with secrets redacted, for `gallop config`.
pub fn to_toml(config: &Config) -> Result<String, ConfigError> {
    toml::to_string_pretty(config).map_err(|e| ConfigError::Parse(format!("cannot render config as TOML: {e}")))
}
