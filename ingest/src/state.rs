//! [`AppState`]: everything the gateway's front doors share (config, publisher, batcher,
//! parsers, the day's salt, metrics, bounds and keys), and whether the broker can take events.

use std::sync::{atomic::AtomicU64, Arc};

use gallop_broker::Publisher;
use gallop_config::Config;
use gallop_support::ApiKeys;

use crate::{
    batcher::Batcher, geo::Geo, metrics::Metrics, privacy::Visitors, serve::InflightBytes, useragent::UserAgents,
};

/// What a gateway's handlers, its input consumer and other protocols' listeners share.
pub(crate) struct AppState {
    pub(crate) config: Config,
    pub(crate) publisher: Arc<dyn Publisher>,
    pub(crate) batcher: Batcher,
    pub(crate) user_agents: UserAgents,
    pub(crate) geo: Geo,
    pub(crate) visitors: Visitors,
    pub(crate) metrics: Metrics,
    pub(crate) inflight: InflightBytes,
    pub(crate) event_keys: ApiKeys,
    pub(crate) metrics_keys: ApiKeys,
    pub(crate) run_id: String,
    pub(crate) next_id: AtomicU64,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("partitions", &self.publisher.partitions())
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Why the broker cannot take events now, if it cannot: not connected, stalled (a publish
    /// waiting `ingest.stall_after` with no acknowledgement meanwhile), or out of storage.
    pub(crate) fn broker_trouble(&self) -> Option<String> {
        if !self.publisher.is_ready() {
            return Some("broker not connected".to_owned());
        }
        self.batcher.trouble()
    }
}
