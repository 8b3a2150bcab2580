//! A request body through the gateway's parsing and checks, without a server, broker or
//! salt: what the HTTP routes would publish, or every error they would answer with. For
//! fuzzing (`fuzz/`) and tools that validate events offline.

use gallop_config::Config;
use gallop_event::EventRecord;

use crate::{
    error::{FieldError, IngestError},
    input::{parse_batch, parse_plausible, Framing},
    normalize::{normalize, Rules, Sender},
    useragent::UserAgents,
};

/// How a body is framed: the route and Content-Type it would arrive with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// `POST /api/event`: one Plausible event.
    Plausible,
    /// `POST /v1/events` as `application/json`: an object or an array of objects.
    Json,
    /// `POST /v1/events` as `application/x-ndjson`: one object per line.
    NdJson,
}

/// Checks bodies as the gateway built from the same config would.
#[derive(Debug)]
pub struct BodyChecker {
    config: Config,
    user_agents: UserAgents,
}

impl BodyChecker {
    /// A checker applying `config`'s limits, sites and time window.
    pub fn new(config: Config) -> Result<Self, IngestError> {
        let user_agents = UserAgents::new(
            config.ingest.user_agent_cache,
            config.ingest.user_agent_cache_bytes,
            config.ingest.limits.max_user_agent_bytes,
        )?;
        Ok(Self { config, user_agents })
    }

    /// The records `body` would become (without `id` and `visitor`, which the gateway sets
    /// from the request), sent with `user_agent` at `now_ms`; or every problem found.
    pub fn check(
        &self,
        format: BodyFormat,
        body: &[u8],
        user_agent: &str,
        now_ms: i64,
    ) -> Result<Vec<EventRecord>, Vec<FieldError>> {
        let limits = &self.config.ingest.limits;
        if body.len() > limits.max_body_bytes {
            return Err(vec![FieldError::request(
                "body",
                format!("larger than {} bytes (ingest.limits.max_body_bytes)", limits.max_body_bytes),
            )]);
        }
        let text = std::str::from_utf8(body).map_err(|e| {
            vec![FieldError::request("body", format!("not valid UTF-8 (first bad byte at offset {})", e.valid_up_to()))]
        })?;
        let events = match format {
            BodyFormat::Plausible => parse_plausible(text, limits.max_domains)?,
            BodyFormat::Json => parse_batch(text, Framing::Json, limits.max_batch_events)?,
            BodyFormat::NdJson => parse_batch(text, Framing::NdJson, limits.max_batch_events)?,
        };
        let ua = self.user_agents.parse(user_agent);
        let sender = Sender { ua: &ua, country: "", now_ms };
        let rules = Rules { limits, time: &self.config.time, sites: &self.config.ingest.sites, url_required: true };
        let mut records = Vec::with_capacity(events.len());
        let mut errors = Vec::new();
        for (index, raw) in events.into_iter().enumerate() {
            match normalize(raw, index, &sender, &rules) {
                Ok(record) => records.push(record),
                Err(mut e) => errors.append(&mut e),
            }
        }
        if errors.is_empty() {
            Ok(records)
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_428_000_000;
    const FIREFOX: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0";

    #[test]
    fn checks_bodies_as_the_routes_do() {
        let checker = BodyChecker::new(Config::default()).expect("rules compile");
        let body = br#"{"n":"pageview","u":"https://example.com/a?utm_source=x","d":"example.com","r":"https://u:p@news.ycombinator.com/item?id=1"}"#;
        let records = checker.check(BodyFormat::Plausible, body, FIREFOX, NOW).expect("valid");
        let r = &records[0];
        assert_eq!(
            (r.site.as_str(), r.path.as_str(), r.referrer.as_str(), r.source.as_str(), r.browser.as_str()),
            ("example.com", "/a", "https://news.ycombinator.com/item", "x", "Firefox")
        );
        let batch = b"{\"site\":\"a.test\",\"name\":\"x\",\"url\":\"https://a.test/\"}\n{\"site\":\"a.test\",\"name\":\"x\",\"url\":\"nope\"}\n";
        let errors = checker.check(BodyFormat::NdJson, batch, "", NOW).expect_err("second is bad");
        assert_eq!((errors.len(), errors[0].index, errors[0].field.as_str()), (1, Some(1), "url"));
        let errors = checker.check(BodyFormat::Json, b"\xff", "", NOW).expect_err("not UTF-8");
        assert!(errors[0].reason.contains("not valid UTF-8"), "{errors:?}");
    }
}
