//! Validation and enrichment: a [`RawEvent`] plus what the request tells about its sender
//! becomes an [`EventRecord`], or a list of every problem with it.

use gallop_config::{LimitsConfig, TimeConfig};
use gallop_event::{EventRecord, ENGAGEMENT};

use crate::{
    error::FieldError, input::RawEvent, referrer::known_source, text::truncate, useragent::UaInfo, weburl::WebUrl,
};

/// The parts of a request every event of it shares.
pub(crate) struct Sender<'a> {
    /// Parsed User-Agent.
    pub(crate) ua: &'a UaInfo,
    /// Country code or empty.
    pub(crate) country: &'a str,
    /// Gateway clock, epoch milliseconds.
    pub(crate) now_ms: i64,
}

/// The rules events are checked against.
pub(crate) struct Rules<'a> {
    pub(crate) limits: &'a LimitsConfig,
    pub(crate) time: &'a TimeConfig,
    /// Allowed sites; empty allows all.
    pub(crate) sites: &'a [String],
    /// Whether an event must have a page `url` (web events); events of other protocols
    /// (traqq) have none, and their records no host, path or UTM fields.
    pub(crate) url_required: bool,
}

/// Checks `raw` and builds its record, without `id` and `visitor` (the caller sets those).
/// `index` is the event's position in the request, for error reports.
pub(crate) fn normalize(
    raw: RawEvent,
    index: usize,
    sender: &Sender<'_>,
    rules: &Rules<'_>,
) -> Result<EventRecord, Vec<FieldError>> {
    let limits = rules.limits;
    let mut errors = Vec::new();
    let mut error = |field: &str, reason: String| errors.push(FieldError::event(index, field, reason));

    let site = required(raw.site, "site", limits.max_site_bytes, "max_site_bytes", &mut error);
    if let Some(site) = &site {
        if let Some(bad) = site.chars().find(|&c| !is_site_char(c)) {
            error(
                "site",
                format!(
                    "{bad:?} is not allowed in a site name: a host name such as example.com, of letters, digits, \
                     '.', '-', '_' and ':' only"
                ),
            );
        } else if !rules.sites.is_empty() && !rules.sites.iter().any(|s| s == site) {
            error("site", format!("{site:?} is not an allowed site (ingest.sites)"));
        }
    }
    let name = required(raw.name, "name", limits.max_name_bytes, "max_name_bytes", &mut error);
    let url_text = if raw.url.is_none() && !rules.url_required {
        None
    } else {
        required(raw.url, "url", limits.max_url_bytes, "max_url_bytes", &mut error)
    };
    let url = url_text.as_deref().and_then(|text| match WebUrl::parse(text) {
        Ok(url) if url.host_str().is_some() => Some(url),
        Ok(_) => {
            error("url", "must be an absolute URL with a host, such as https://example.com/page".into());
            None
        }
        Err(e) => {
            error("url", format!("not a valid absolute URL: {e}"));
            None
        }
    });
    let referrer_text = raw.referrer;
    let referrer = referrer_text.as_deref().and_then(|text| {
        if text.len() > limits.max_referrer_bytes {
            error("referrer", too_long(limits.max_referrer_bytes, "max_referrer_bytes"));
            return None;
        }
        match WebUrl::parse(text) {
            Ok(url) if SCRIPT_SCHEMES.contains(&url.scheme()) => {
                error(
                    "referrer",
                    format!("the {}: scheme is refused (referrers are http or https URLs)", url.scheme()),
                );
                None
            }
            Ok(url) if url.host_str().is_some() => Some(url),
            _ => {
                error("referrer", "not an absolute URL with a host".into());
                None
            }
        }
    });
    if let Some(id) = &raw.id {
        if id.is_empty() {
            error("id", "must not be empty when given".into());
        } else if id.len() > limits.max_id_bytes {
            error("id", too_long(limits.max_id_bytes, "max_id_bytes"));
        }
    }
    if let Some(visitor) = &raw.visitor {
        if visitor.is_empty() {
            error("visitor", "must not be empty when given".into());
        } else if visitor.len() > limits.max_id_bytes {
            error("visitor", too_long(limits.max_id_bytes, "max_id_bytes"));
        }
    }
    if raw.props.len() > limits.max_props {
        error(
            "props",
            format!(
                "has {} properties, more than {} (limit: ingest.limits.max_props)",
                raw.props.len(),
                limits.max_props
            ),
        );
    }
    for (key, value) in &raw.props {
        if key.is_empty() {
            error("props", "property keys must not be empty".into());
        } else if key.len() > limits.max_prop_key_bytes {
            error(
                &format!("props.{}", truncate(key, 40)),
                format!("key {}", too_long(limits.max_prop_key_bytes, "max_prop_key_bytes")),
            );
        } else if value.len() > limits.max_prop_value_bytes {
            error(
                &format!("props.{key}"),
                format!("value {}", too_long(limits.max_prop_value_bytes, "max_prop_value_bytes")),
            );
        }
    }
    if let Some(value) = raw.value {
        if !value.is_finite() || value.abs() > limits.max_abs_value {
            error(
                "value",
                format!(
                    "must be a finite number from -{max:e} to {max:e} (ingest.limits.max_abs_value), got {value:e}",
                    max = limits.max_abs_value
                ),
            );
        }
    }
    if let Some(currency) = &raw.currency {
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_alphabetic()) {
            error("currency", "must be a 3-letter ISO 4217 code such as EUR".into());
        }
    }
    let engagement = name.as_deref() == Some(ENGAGEMENT);
    let scroll_depth = engagement_number(raw.scroll_depth, "scroll_depth", MAX_SCROLL_DEPTH, engagement, &mut error);
    let engaged_ms = engagement_number(raw.engaged_ms, "engaged_ms", MAX_ENGAGED_MS, engagement, &mut error);
    let ts = raw.timestamp_ms.unwrap_or(sender.now_ms);
    let lateness_ms = millis(rules.time.allowed_lateness);
    let future_ms = millis(rules.time.max_future);
    if ts < sender.now_ms.saturating_sub(lateness_ms) {
        error(
            "timestamp",
            format!(
                "older than the allowed lateness of {} (time.allowed_lateness)",
                humantime::format_duration(rules.time.allowed_lateness)
            ),
        );
    } else if ts > sender.now_ms.saturating_add(future_ms) {
        error(
            "timestamp",
            format!("more than {} in the future (time.max_future)", humantime::format_duration(rules.time.max_future)),
        );
    }

    let (Some(site), Some(name), true) = (site, name, errors.is_empty()) else {
        return Err(errors);
    };
    if url.is_none() && rules.url_required {
        return Err(errors);
    }

    let mut record = EventRecord::new();
    let mut ref_param = None;
    if let Some(url) = &url {
        record.host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        record.path = if url.path().is_empty() { "/".to_owned() } else { url.path().to_owned() };
    }
    for (key, value) in url.iter().flat_map(WebUrl::query_pairs) {
        let slot = match key.as_ref() {
            "utm_source" => &mut record.utm_source,
            "utm_medium" => &mut record.utm_medium,
            "utm_campaign" => &mut record.utm_campaign,
            "utm_content" => &mut record.utm_content,
            "utm_term" => &mut record.utm_term,
            "ref" | "source" => {
                if ref_param.is_none() && !value.is_empty() {
                    ref_param = Some(value.into_owned());
                }
                continue;
            }
            _ => continue,
        };
        if slot.is_empty() {
            *slot = truncate(&value, limits.max_prop_value_bytes).to_owned();
        }
    }
    if let Some(referrer) = referrer {
        let ref_host = strip_www(&referrer.host_str().unwrap_or_default().to_ascii_lowercase()).to_owned();
        if ref_host != strip_www(&record.host) {
            record.referrer = bare_referrer(&referrer);
            record.ref_host = ref_host;
        }
    }
    record.source = if !record.utm_source.is_empty() {
        record.utm_source.clone()
    } else if let Some(param) = ref_param {
        truncate(&param, limits.max_prop_value_bytes).to_owned()
    } else if let Some(known) = known_source(&record.ref_host) {
        known.to_owned()
    } else {
        record.ref_host.clone()
    };
    record.site = site;
    record.name = name;
    record.ts = ts;
    record.country = sender.country.to_owned();
    record.browser = sender.ua.browser.clone();
    record.browser_version = sender.ua.browser_version.clone();
    record.os = sender.ua.os.clone();
    record.device = sender.ua.device.to_owned();
    record.props = raw.props.into_iter().collect();
    record.value = raw.value;
    record.currency = raw.currency.map(|c| c.to_ascii_uppercase()).unwrap_or_default();
    record.interactive = raw.interactive;
    // Both fit: checked against their maxima above.
    record.scroll_depth = scroll_depth.map(|v| v as u8);
    record.engaged_ms = engaged_ms;
    Ok(record)
}

/// Schemes whose URLs run code or carry data rather than name a page; a referrer with one is
/// refused.
const SCRIPT_SCHEMES: &[&str] = &["javascript", "data", "vbscript", "blob", "file"];

/// What the numbers need of a referrer: scheme, host, port and path. Credentials, query
/// and fragment (tokens, e-mail addresses, search terms) are never published. Schemes
/// other than http and https (app referrers such as `android-app://`) keep their host only.
fn bare_referrer(url: &WebUrl<'_>) -> String {
    let (scheme, host) = (url.scheme(), url.host_str().unwrap_or_default());
    let web = matches!(scheme, "http" | "https");
    let path = if web { url.path() } else { "" };
    let mut bare = String::with_capacity(scheme.len() + 3 + host.len() + 6 + path.len());
    bare.push_str(scheme);
    bare.push_str("://");
    bare.extend(host.chars().map(|c| c.to_ascii_lowercase()));
    if let Some(port) = url.port() {
        bare.push(':');
        bare.push_str(&port.to_string());
    }
    bare.push_str(path);
    bare
}

/// Most a scroll depth can be, in percent.
const MAX_SCROLL_DEPTH: u64 = 100;
/// Most engaged time one engagement event may report: a day, in milliseconds. The tracker
/// sends one whenever a page is hidden, so a real value is minutes at most.
const MAX_ENGAGED_MS: u64 = 86_400_000;

/// Checks an engagement field (`scroll_depth` / Plausible `sd`, `engaged_ms` / `e`): only
/// engagement events carry it, and it is a whole number in `0..=max`.
fn engagement_number(
    value: Option<f64>,
    field: &str,
    max: u64,
    engagement: bool,
    error: &mut impl FnMut(&str, String),
) -> Option<u64> {
    let value = value?;
    let alias = if field == "scroll_depth" { "sd" } else { "e" };
    if !engagement {
        error(field, format!("only `{ENGAGEMENT}` events carry {field} (Plausible: {alias})"));
        return None;
    }
    if !(value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value <= max as f64) {
        error(field, format!("must be a whole number from 0 to {max} (Plausible: {alias}), got {value}"));
        return None;
    }
    Some(value as u64)
}

/// Whether `c` may be part of a site name: sites are host names (`example.com`,
/// `shop.example.co.uk:8080`, `bücher.de`), and nothing that quotes, escapes or separates —
/// a site name ends up in SQL literals and URLs of every reader.
fn is_site_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | ':')
}

fn required(
    value: Option<String>,
    field: &str,
    max: usize,
    key: &str,
    error: &mut impl FnMut(&str, String),
) -> Option<String> {
    match value {
        None => {
            error(field, "missing; this field is required".into());
            None
        }
        Some(v) if v.trim().is_empty() => {
            error(field, "must not be empty".into());
            None
        }
        Some(v) if v.len() > max => {
            error(field, too_long(max, key));
            None
        }
        // Trimmed text is copied only when there is something to trim.
        Some(v) if v.trim().len() == v.len() => Some(v),
        Some(v) => Some(v.trim().to_owned()),
    }
}

fn too_long(max: usize, key: &str) -> String {
    format!("longer than {max} bytes (limit: ingest.limits.{key})")
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn strip_www(host: &str) -> &str {
    host.strip_prefix("www.").unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(url: &str, referrer: Option<&str>) -> RawEvent {
        RawEvent {
            site: Some("example.com".into()),
            name: Some("pageview".into()),
            url: Some(url.into()),
            referrer: referrer.map(Into::into),
            interactive: true,
            ..RawEvent::default()
        }
    }

    #[track_caller]
    fn check(event: RawEvent, expect: &str) {
        let ua = UaInfo {
            browser: "Firefox".into(),
            browser_version: "121".into(),
            os: "Linux".into(),
            device: "desktop",
            bot: false,
        };
        let sender = Sender { ua: &ua, country: "DE", now_ms: 1_795_428_000_000 };
        let limits = LimitsConfig::default();
        let time = TimeConfig::default();
        let rules = Rules { limits: &limits, time: &time, sites: &[], url_required: true };
        let got = match normalize(event, 0, &sender, &rules) {
            Ok(r) => format!(
                "host={} path={} ref={} ref_host={} source={} utm={}/{}/{}/{}/{}",
                r.host,
                r.path,
                r.referrer,
                r.ref_host,
                r.source,
                r.utm_source,
                r.utm_medium,
                r.utm_campaign,
                r.utm_content,
                r.utm_term
            ),
            Err(errors) => errors.iter().map(|e| format!("{}: {}", e.field, e.reason)).collect::<Vec<_>>().join("; "),
        };
        assert_eq!(got, expect);
    }

    #[test]
    fn url_and_referrer_enrichment() {
        check(
            raw("https://Example.com/pricing?utm_source=news&utm_medium=email&utm_campaign=nov#top", Some("https://www.google.com/")),
            "host=example.com path=/pricing ref=https://www.google.com/ ref_host=google.com source=news utm=news/email/nov//",
        );
        check(
            raw("https://example.com/", Some("https://news.ycombinator.com/item?id=1")),
            "host=example.com path=/ ref=https://news.ycombinator.com/item ref_host=news.ycombinator.com source=Hacker News utm=////",
        );
        check(
            raw("https://example.com/a?ref=producthunt", None),
            "host=example.com path=/a ref= ref_host= source=producthunt utm=////",
        );
        check(
            raw("https://example.com/b", Some("https://blog.example.org/post")),
            "host=example.com path=/b ref=https://blog.example.org/post ref_host=blog.example.org source=blog.example.org utm=////",
        );
        // A self-referral is no source.
        check(
            raw("https://www.example.com/b", Some("https://example.com/a")),
            "host=www.example.com path=/b ref= ref_host= source= utm=////",
        );
        check(
            raw("https://example.com/", Some("https://t.co/xyz")),
            "host=example.com path=/ ref=https://t.co/xyz ref_host=t.co source=Twitter utm=////",
        );
    }

    #[test]
    fn referrers_keep_only_what_the_numbers_need() {
        // Credentials, query and fragment never leave the gateway.
        check(
            raw("https://example.com/", Some("https://alice:s3cret@Mail.Example.net:8443/inbox/42?token=abc&u=a@b.c#m")),
            "host=example.com path=/ ref=https://mail.example.net:8443/inbox/42 ref_host=mail.example.net source=mail.example.net utm=////",
        );
        check(
            raw("https://example.com/", Some("android-app://com.google.android.gm/path?x=1")),
            "host=example.com path=/ ref=android-app://com.google.android.gm ref_host=com.google.android.gm source=com.google.android.gm utm=////",
        );
        for script in [
            "javascript://example.org/%0aalert(1)",
            "data://text/html,<script>",
            "vbscript://x/y",
            "file://host/etc/passwd",
        ] {
            let scheme = script.split(':').next().unwrap_or_default();
            check(
                raw("https://example.com/", Some(script)),
                &format!("referrer: the {scheme}: scheme is refused (referrers are http or https URLs)"),
            );
        }
    }

    #[test]
    fn values_are_bounded() {
        let mut event = raw("https://example.com/", None);
        event.value = Some(1.797e308);
        check(
            event.clone(),
            "value: must be a finite number from -1e12 to 1e12 (ingest.limits.max_abs_value), got 1.797e308",
        );
        event.value = Some(-1e12);
        check(event, "host=example.com path=/ ref= ref_host= source= utm=////");
    }

    #[test]
    fn problems_are_all_reported() {
        let mut event = raw("not a url", Some("also not"));
        event.name = None;
        event.props = vec![("".into(), "x".into()), ("k".into(), "v".repeat(3000))];
        event.timestamp_ms = Some(0);
        event.value = Some(f64::NAN);
        check(
            event,
            "name: missing; this field is required; url: not a valid absolute URL: relative URL without a base; \
             referrer: not an absolute URL with a host; props: property keys must not be empty; \
             props.k: value longer than 2000 bytes (limit: ingest.limits.max_prop_value_bytes); \
             value: must be a finite number from -1e12 to 1e12 (ingest.limits.max_abs_value), got NaN; \
             timestamp: older than the allowed lateness of 1h (time.allowed_lateness)",
        );
    }

    #[test]
    fn site_names_are_host_names_and_hostile_ones_are_refused_naming_the_character() {
        let ua = UaInfo::default();
        let sender = Sender { ua: &ua, country: "", now_ms: 1_795_428_000_000 };
        let limits = LimitsConfig::default();
        let time = TimeConfig::default();
        let rules = Rules { limits: &limits, time: &time, sites: &[], url_required: true };
        let with_site = |site: &str| {
            let mut event = raw("https://example.com/", None);
            event.site = Some(site.to_owned());
            normalize(event, 0, &sender, &rules)
        };
        for site in ["example.com", "shop.example.co.uk:8080", "bücher.de", "my_site-1"] {
            assert!(with_site(site).is_ok(), "{site} is a host name");
        }
        for (site, bad) in [
            ("x\\' OR 1=1 -- ", "'\\\\'"),
            ("back\\slash.example", "'\\\\'"),
            ("it's.test", "'\\''"),
            ("a b.example", "' '"),
            ("\"quoted\".example", "'\"'"),
            ("tab\t.example", "'\\t'"),
            ("example.com/blog", "'/'"),
        ] {
            let errors = with_site(site).expect_err(site);
            let reason = &errors[0].reason;
            assert_eq!(errors[0].field, "site", "{site}: {errors:?}");
            assert!(reason.contains(bad) && reason.contains("not allowed in a site name"), "{site}: {reason}");
        }
    }

    #[test]
    fn site_allow_list() {
        let ua = UaInfo::default();
        let sender = Sender { ua: &ua, country: "", now_ms: 1_795_428_000_000 };
        let limits = LimitsConfig::default();
        let time = TimeConfig::default();
        let sites = vec!["other.com".to_owned()];
        let rules = Rules { limits: &limits, time: &time, sites: &sites, url_required: true };
        let errors = normalize(raw("https://example.com/", None), 3, &sender, &rules).expect_err("not allowed");
        assert_eq!(errors[0].index, Some(3));
        assert!(errors[0].reason.contains("not an allowed site"), "{errors:?}");
    }
}
