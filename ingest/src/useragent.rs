//! User-Agent parsing (uap-core rules through the `ua-parser` crate), device classes and
//! bot detection, with a cache because a site's visitors share a few hundred UAs.

use std::sync::{Arc, OnceLock};

use quick_cache::sync::Cache;

use crate::{error::IngestError, text::truncate};

/// The uap-core rules, compiled into the binary.
const RULES: &str = include_str!("../data/uap-regexes.yaml");

/// Words that mark automated clients the uap rules do not classify as spiders.
const BOT_MARKERS: &[&str] = &[
    "bot",
    "crawl",
    "spider",
    "slurp",
    "headless",
    "lighthouse",
    "phantomjs",
    "pingdom",
    "uptime",
    "prerender",
    "preview",
    "scrap",
    "archiver",
    "facebookexternalhit",
    "mediapartners",
];

/// What Gallop keeps of a User-Agent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct UaInfo {
    pub(crate) browser: String,
    pub(crate) browser_version: String,
    pub(crate) os: String,
    pub(crate) device: &'static str,
    pub(crate) bot: bool,
}

/// Weighs a cache entry by the bytes it holds, so the cache is bounded in memory, not
/// only in entries: a client sending many long distinct User-Agents cannot grow it.
#[derive(Clone)]
struct EntryBytes;

impl quick_cache::Weighter<String, Arc<UaInfo>> for EntryBytes {
    fn weight(&self, key: &String, value: &Arc<UaInfo>) -> u64 {
        // Strings' heap bytes plus the fixed parts and the cache's own bookkeeping.
        (key.capacity()
            + value.browser.capacity()
            + value.browser_version.capacity()
            + value.os.capacity()
            + std::mem::size_of::<UaInfo>()
            + ENTRY_OVERHEAD) as u64
    }
}

/// Bytes a cache entry costs beyond its strings (Arc header, slot, hash, key struct).
const ENTRY_OVERHEAD: usize = 96;

/// A cached User-Agent parser.
pub(crate) struct UserAgents {
    extractor: &'static ua_parser::Extractor<'static>,
    cache: Cache<String, Arc<UaInfo>, EntryBytes>,
    max_len: usize,
}

impl std::fmt::Debug for UserAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserAgents").field("cached", &self.cache.len()).finish()
    }
}

/// The compiled rules, built once per process (compiling takes a moment).
fn extractor() -> Result<&'static ua_parser::Extractor<'static>, IngestError> {
    static EXTRACTOR: OnceLock<Result<ua_parser::Extractor<'static>, String>> = OnceLock::new();
    EXTRACTOR
        .get_or_init(|| {
            let regexes: ua_parser::Regexes<'static> = serde_yaml::from_str(RULES).map_err(|e| e.to_string())?;
            ua_parser::Extractor::try_from(regexes).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| IngestError::UserAgentRules(e.clone()))
}

impl UserAgents {
    /// A parser caching about `capacity` distinct User-Agents in at most `max_bytes`, and
    /// parsing at most the first `max_len` bytes of each.
    pub(crate) fn new(capacity: usize, max_bytes: usize, max_len: usize) -> Result<Self, IngestError> {
        let cache = Cache::with_weighter(capacity.max(1), max_bytes as u64, EntryBytes);
        Ok(Self { extractor: extractor()?, cache, max_len })
    }

    /// Bytes the cache holds now.
    pub(crate) fn cached_bytes(&self) -> u64 {
        self.cache.weight()
    }

    /// Parses `ua` (its first `max_len` bytes), from the cache when seen before.
    pub(crate) fn parse(&self, ua: &str) -> Arc<UaInfo> {
        let ua = truncate(ua, self.max_len);
        if let Some(info) = self.cache.get(ua) {
            return info;
        }
        let info = Arc::new(self.parse_uncached(ua));
        self.cache.insert(ua.to_owned(), info.clone());
        info
    }

    fn parse_uncached(&self, ua: &str) -> UaInfo {
        if ua.trim().is_empty() {
            return UaInfo { bot: true, ..UaInfo::default() };
        }
        let (agent, os, device) = self.extractor.extract(ua);
        let lower = ua.to_ascii_lowercase();
        let spider = device.as_ref().is_some_and(|d| d.device == "Spider");
        let bot = spider || BOT_MARKERS.iter().any(|m| lower.contains(m));
        let browser = agent
            .as_ref()
            .map(|a| plausible_browser(&a.family).to_owned())
            .filter(|f| f != "Other")
            .unwrap_or_default();
        let browser_version = agent.as_ref().and_then(|a| a.major).unwrap_or_default().to_owned();
        let os_name = os.as_ref().map(|o| plausible_os(&o.os).to_owned()).filter(|f| f != "Other").unwrap_or_default();
        let device_family = device.as_ref().map(|d| d.device.as_ref()).unwrap_or("");
        UaInfo { browser, browser_version, device: device_class(&lower, device_family, &os_name), os: os_name, bot }
    }
}

/// `tablet`, `mobile` or `desktop`, from the UA text, the uap device family and the OS.
/// The browser name Plausible shows for a uap-core family: one name per browser, not one
/// per platform ("Safari" for Mobile Safari, "Chrome" for Chrome Mobile and Chrome on iOS),
/// and in-app web views as "Mobile App", as Plausible's ingestion maps them.
fn plausible_browser(family: &str) -> &str {
    match family {
        "Mobile Safari" | "Mobile Safari UI/WKWebView" => "Safari",
        "Chrome Mobile" | "Chrome Mobile iOS" => "Chrome",
        "Chrome Mobile WebView" | "Facebook" | "Instagram" => "Mobile App",
        "Firefox Mobile" | "Firefox iOS" => "Firefox",
        "Opera Mobile" | "Opera Mini" => "Opera",
        "Edge" | "Edge Mobile" => "Microsoft Edge",
        "Yandex Browser Lite" => "Yandex Browser",
        other => other,
    }
}

/// The operating system name Plausible shows for a uap-core name ("Mac" for Mac OS X,
/// "GNU/Linux" for Linux).
fn plausible_os(os: &str) -> &str {
    match os {
        "Mac OS X" | "Mac OS" => "Mac",
        "Linux" => "GNU/Linux",
        other => other,
    }
}

fn device_class(lower_ua: &str, device_family: &str, os: &str) -> &'static str {
    let tablet = device_family == "iPad"
        || lower_ua.contains("tablet")
        || lower_ua.contains("ipad")
        || lower_ua.contains("kindle")
        || lower_ua.contains("silk/")
        || (lower_ua.contains("android") && !lower_ua.contains("mobile"));
    if tablet {
        "tablet"
    } else if lower_ua.contains("mobi")
        || lower_ua.contains("iphone")
        || lower_ua.contains("windows phone")
        || os == "iOS"
        || os == "Android"
    {
        "mobile"
    } else {
        "desktop"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(ua: &str, expect: (&str, &str, &str, &str, bool)) {
        let agents = UserAgents::new(16, 1 << 20, 1024).expect("rules compile");
        let info = agents.parse(ua);
        let got = (info.browser.as_str(), info.browser_version.as_str(), info.os.as_str(), info.device, info.bot);
        assert_eq!(got, expect, "{ua}");
    }

    #[test]
    fn real_user_agents() {
        check(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
            ("Firefox", "121", "Windows", "desktop", false),
        );
        check(
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
            ("Chrome", "120", "Mac", "desktop", false),
        );
        check(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
            ("Safari", "17", "iOS", "mobile", false),
        );
        check(
            "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
            ("Safari", "16", "iOS", "tablet", false),
        );
        check(
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36",
            ("Chrome", "120", "Android", "mobile", false),
        );
        check(
            "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 Safari/537.36",
            ("Chrome", "119", "Android", "tablet", false),
        );
        // Labels as Plausible shows them: one name per browser and platform family.
        check(
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
            ("Safari", "17", "Mac", "desktop", false),
        );
        check(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/120.0.6099.119 Mobile/15E148 Safari/604.1",
            ("Chrome", "120", "iOS", "mobile", false),
        );
        check(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) FxiOS/121.0 Mobile/15E148 Safari/605.1.15",
            ("Firefox", "121", "iOS", "mobile", false),
        );
        check(
            "Mozilla/5.0 (Android 14; Mobile; rv:121.0) Gecko/121.0 Firefox/121.0",
            ("Firefox", "121", "Android", "mobile", false),
        );
        check(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91",
            ("Microsoft Edge", "120", "Windows", "desktop", false),
        );
        check(
            "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
            ("Firefox", "121", "GNU/Linux", "desktop", false),
        );
        check(
            "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36",
            ("Samsung Internet", "23", "Android", "mobile", false),
        );
        check(
            "Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/UQ1A.240105.004; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/120.0.6099.193 Mobile Safari/537.36",
            ("Mobile App", "120", "Android", "mobile", false),
        );
        check(
            "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
            ("Chrome", "120", "Chrome OS", "desktop", false),
        );
    }

    #[test]
    fn bots_are_flagged() {
        let agents = UserAgents::new(16, 1 << 20, 1024).expect("rules compile");
        for ua in [
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            "Mozilla/5.0 (Linux; Android 11; moto g power (2022)) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/112.0.0.0 Mobile Safari/537.36 Chrome-Lighthouse",
            "",
        ] {
            assert!(agents.parse(ua).bot, "{ua:?} should be a bot");
        }
    }

    #[test]
    fn cache_returns_the_same_parse() {
        let agents = UserAgents::new(2, 1 << 20, 1024).expect("rules compile");
        let ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0";
        let a = agents.parse(ua);
        let b = agents.parse(ua);
        assert!(Arc::ptr_eq(&a, &b));
    }
}
