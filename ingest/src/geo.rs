//! Country of a visitor: from a CDN header, or a MaxMind-format database, or unknown.

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderName};
use gallop_config::IngestConfig;

use crate::error::IngestError;

/// Looks up countries; holds the opened database, if any.
pub(crate) struct Geo {
    header: Option<HeaderName>,
    database: Option<maxminddb::Reader<Vec<u8>>>,
}

impl std::fmt::Debug for Geo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Geo").field("header", &self.header).field("database", &self.database.is_some()).finish()
    }
}

impl Geo {
    /// Opens what `config` names.
    pub(crate) fn new(config: &IngestConfig) -> Result<Self, IngestError> {
        let header = config.country_header.as_deref().and_then(|h| HeaderName::try_from(h.to_ascii_lowercase()).ok());
        let database = match &config.geoip_database {
            Some(path) => Some(
                maxminddb::Reader::open_readfile(path)
                    .map_err(|e| IngestError::GeoIp { path: path.display().to_string(), reason: e.to_string() })?,
            ),
            None => None,
        };
        Ok(Self { header, database })
    }

    /// ISO 3166-1 alpha-2 code, upper-case, or empty when unknown.
    pub(crate) fn country(&self, headers: &HeaderMap, ip: IpAddr) -> String {
        if let Some(code) = self.header.as_ref().and_then(|h| headers.get(h)).and_then(|v| v.to_str().ok()) {
            if let Some(code) = normalize_code(code) {
                return code;
            }
        }
        self.database
            .as_ref()
            .and_then(|db| db.lookup::<maxminddb::geoip2::Country>(ip).ok().flatten())
            .and_then(|found| found.country.and_then(|c| c.iso_code).and_then(normalize_code))
            .unwrap_or_default()
    }
}

/// A two-letter code, upper-cased; CDN placeholders for "unknown" and "Tor" are none.
fn normalize_code(code: &str) -> Option<String> {
    let code = code.trim().to_ascii_uppercase();
    (code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()) && code != "XX" && code != "T1").then_some(code)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn country_from_header() {
        let config = IngestConfig { country_header: Some("CF-IPCountry".into()), ..IngestConfig::default() };
        let geo = Geo::new(&config).expect("no database to open");
        let ip: IpAddr = "198.51.100.7".parse().expect("ip");
        let mut headers = HeaderMap::new();
        assert_eq!(geo.country(&headers, ip), "");
        for (value, want) in [("de", "DE"), ("XX", ""), ("T1", ""), ("DEU", ""), ("1A", "")] {
            headers.insert("cf-ipcountry", HeaderValue::from_static(value));
            assert_eq!(geo.country(&headers, ip), want, "{value}");
        }
    }

    #[test]
    fn missing_database_is_a_start_error() {
        let config = IngestConfig {
            geoip_database: Some("/nonexistent/GeoLite2-Country.mmdb".into()),
            ..IngestConfig::default()
        };
        let err = Geo::new(&config).expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/GeoLite2-Country.mmdb"), "{err}");
    }
}
