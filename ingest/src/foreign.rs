//! Events that arrive through another protocol (traqq's TCP lines, `gallop-traqq`), already
//! shaped into a name, properties, a value and identifiers. From there they take the HTTP
//! path: the same validation and limits (`normalize`), the site allow-list, the day's salt,
//! partitioning, micro-batching, and an answer only after the broker acknowledged them.
//!
//! Identifiers (traqq's `bmp` fields, such as IP addresses) are hashed here with the day's
//! salt into the record's `uniques`; their raw values never leave the gateway.

use tracing::warn;

use crate::{
    admit::{Admission, Admitted, EventId, VisitorFrom},
    error::FieldError,
    input::RawEvent,
    normalize::{normalize, Rules, Sender},
    privacy::identifier_hash,
    useragent::UaInfo,
    Gateway,
};

/// One event of another protocol, in Gallop's terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ForeignEvent {
    /// Event name.
    pub name: String,
    /// Custom properties to keep (each key once).
    pub props: Vec<(String, String)>,
    /// Numeric value, when the event has one.
    pub value: Option<f64>,
    /// Identifiers to count distinct values of, by name (hashed with the day's salt; the
    /// first also makes the record's visitor, so visits group by it).
    pub identifiers: Vec<(String, String)>,
}

/// Why a foreign event was not stored, or may not have been.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForeignError {
    /// The event breaks a rule; nothing of it was published. Each problem names the
    /// field and, for limits, the limit and its config key.
    #[error("{0}")]
    Invalid(String),
    /// Not stored (the broker is down, full or refused it); retrying is safe.
    #[error("not stored: {0}; retry later")]
    NotStored(String),
    /// Sent, but no acknowledgement came in time: it may or may not be stored.
    #[error("outcome unknown: {0}; the event may or may not be stored")]
    OutcomeUnknown(String),
}

impl Gateway {
    /// Validates, hashes and publishes `events` of `site`; one outcome per event, in order.
    /// Valid events are published even when others are not; each answer comes only once
    /// the broker acknowledged (or refused) the message holding its event.
    pub async fn accept_foreign(&self, site: &str, events: Vec<ForeignEvent>) -> Vec<Result<(), ForeignError>> {
        let state = self.state();
        let config = &state.config;
        let total = events.len() as u64;
        if let Some(reason) = state.broker_trouble() {
            state.metrics.events_rejected.with_label_values(&["broker_unavailable"]).inc_by(total);
            return vec![Err(ForeignError::NotStored(reason)); events.len()];
        }
        let mut admission = match Admission::begin(state, events.len()).await {
            Ok(admission) => admission,
            Err(e) => {
                warn!(error = %e, "visitor salt unavailable");
                state.metrics.events_rejected.with_label_values(&["broker_unavailable"]).inc_by(total);
                return vec![Err(ForeignError::NotStored("visitor salt store unavailable".to_owned())); events.len()];
            }
        };
        let ua = UaInfo::default();
        let sender = Sender { ua: &ua, country: "", now_ms: admission.now_ms() };
        let rules = Rules {
            limits: &config.ingest.limits,
            time: &config.time,
            sites: &config.ingest.sites,
            url_required: false,
        };
        // Per event: its partition, or why it was refused.
        let mut placed: Vec<Result<u32, ForeignError>> = Vec::with_capacity(events.len());
        let mut invalid = 0u64;
        for (index, event) in events.into_iter().enumerate() {
            let raw = RawEvent {
                site: Some(site.to_owned()),
                name: Some(event.name),
                props: event.props,
                value: event.value,
                interactive: true,
                ..RawEvent::default()
            };
            let mut record = match normalize(raw, index, &sender, &rules) {
                Ok(record) => record,
                Err(errors) => {
                    invalid += 1;
                    placed.push(Err(ForeignError::Invalid(describe(&errors))));
                    continue;
                }
            };
            for (name, value) in &event.identifiers {
                record.uniques.insert(name.clone(), identifier_hash(admission.salt(), site, name, value));
            }
            let visitor = match event.identifiers.first() {
                Some((name, _)) => VisitorFrom::Hashed(record.uniques.get(name).copied().unwrap_or_default()),
                // Without an identifier every event of the site and day is one visitor.
                None => VisitorFrom::Key(""),
            };
            placed.push(match admission.admit(record, visitor, EventId::Generated) {
                Admitted::To(partition) => Ok(partition),
                // Generated ids never repeat; kept for the match's sake.
                Admitted::Duplicate => Err(ForeignError::Invalid("the same event twice".to_owned())),
            });
        }
        if invalid > 0 {
            state.metrics.events_rejected.with_label_values(&["invalid"]).inc_by(invalid);
        }
        let mut outcome: Vec<Option<Result<(), ForeignError>>> = vec![None; state.publisher.partitions() as usize];
        for (partition, result) in admission.submit().await {
            let slot = &mut outcome[partition as usize];
            // A partition's part may be cut into chunks: its events are stored only if all are.
            match result {
                Ok(()) => {
                    slot.get_or_insert(Ok(()));
                }
                Err(e) if slot.as_ref().is_none_or(Result::is_ok) => {
                    *slot = Some(Err(if e.may_be_stored() {
                        ForeignError::OutcomeUnknown(e.to_string())
                    } else {
                        ForeignError::NotStored(e.to_string())
                    }));
                }
                Err(_) => {}
            }
        }
        let results: Vec<Result<(), ForeignError>> = placed
            .into_iter()
            .map(|p| p.and_then(|partition| outcome[partition as usize].clone().unwrap_or(Ok(()))))
            .collect();
        let count = |f: fn(&Result<(), ForeignError>) -> bool| results.iter().filter(|r| f(r)).count() as u64;
        state.metrics.events_accepted.inc_by(count(Result::is_ok));
        for (reason, n) in [
            ("broker_unavailable", count(|r| matches!(r, Err(ForeignError::NotStored(_))))),
            ("outcome_unknown", count(|r| matches!(r, Err(ForeignError::OutcomeUnknown(_))))),
        ] {
            if n > 0 {
                state.metrics.events_rejected.with_label_values(&[reason]).inc_by(n);
            }
        }
        results
    }
}

/// The problems of one event in its protocol's words: `props.geo` is `geo`, `name` is
/// `event`.
fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| {
            let field = match e.field.as_str() {
                "name" => "event",
                other => other.strip_prefix("props.").unwrap_or(other),
            };
            format!("{field}: {}", e.reason)
        })
        .collect::<Vec<_>>()
        .join("; ")
}
