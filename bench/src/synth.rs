//! A deterministic synthetic event stream shaped like a small analytics customer's traffic.
//!
//! Every number comes from a SplitMix64 generator defined here and every table from integer
//! arithmetic and IEEE-754 basic operations (`+ - * /`, which are correctly rounded everywhere;
//! no `powf`, `ln` or `exp`, whose results differ between platform math libraries), so a seed
//! yields the same stream on every machine and with every version of every dependency.
//!
//! Shape of the stream:
//!
//! - sites: `sites` names, skewed (weight `1/k`);
//! - visitors: uniform over `visitors` ids (so about 1M distinct visitors in 10M events); the
//!   visitor hash is a bijective mix of the id, and country, device, OS and browser are
//!   attributes of the visitor (a visitor keeps them from event to event);
//! - pages and referrer URLs: Zipf with exponent 1.1 over `pages` / `referrers` entries
//!   (a cumulative table, sampled by binary search); 45% of events have a referrer;
//! - countries: the first `countries` (at most 50) of a list of ISO codes, weight `1/k`;
//! - names: `pageview` 70%, and 9 custom events (`signup`, `login`, `purchase`, `download`,
//!   `outbound`, `search`, `share`, `video_play`, `form_submit`) that carry 1–3 props with
//!   skewed values; `purchase` carries a `value` (revenue, 5.00–504.99) and a currency;
//! - `utm_source` (with medium and campaign) on 10% of events;
//! - `source` derived as the gateway does: `utm_source`, else the known name of the referrer
//!   host (`Google`, `Hacker News`…; the hosts used here are a subset of the gateway's list),
//!   else the referrer host;
//! - timestamps: event `i` sits at `start_ms + span_ms * i / events` plus up to 250 ms of
//!   jitter; 2% of events are up to 5 s earlier than that (out of order), never before `start_ms`.

use gallop_event::{encode_into, EventRecord};

/// What to generate. Equal configs generate equal streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthConfig {
    /// Seed of the generator.
    pub seed: u64,
    /// Number of events.
    pub events: usize,
    /// Size of the visitor pool (visitors are drawn uniformly from it).
    pub visitors: u64,
    /// Number of distinct page paths.
    pub pages: usize,
    /// Number of distinct referrer URLs.
    pub referrers: usize,
    /// Number of distinct countries (at most 50).
    pub countries: usize,
    /// Number of sites.
    pub sites: usize,
    /// Event time of the first event, milliseconds since the Unix epoch.
    pub start_ms: i64,
    /// Event-time span of the whole stream, milliseconds.
    pub span_ms: i64,
}

impl Default for SynthConfig {
    /// 100k events of one day (2026-11-19 UTC) over 1M visitors, 5,000 pages, 2,000
    /// referrers, 50 countries and 3 sites.
    fn default() -> Self {
        Self {
            seed: 0x006a_110b,
            events: 100_000,
            visitors: 1_000_000,
            pages: 5_000,
            referrers: 2_000,
            countries: 50,
            sites: 3,
            start_ms: 1_795_046_400_000,
            span_ms: 86_400_000,
        }
    }
}

/// SplitMix64's output function: a bijection on `u64` that mixes every input bit into every
/// output bit.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The SplitMix64 generator (Steele, Lea, Flood 2014): tiny, fast and good enough for
/// synthetic data.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// A number in `0..n` (Lemire's multiply-shift; 0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// An index in `0..len` (0 when `len` is 0).
    fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// A number in `[0, 1)` with 53 random bits.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `per_mille / 1000`.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    /// An index in `0..len` skewed towards 0 (the smaller of two uniform draws).
    fn skewed(&mut self, len: usize) -> usize {
        self.index(len).min(self.index(len))
    }
}

/// A discrete distribution as a cumulative weight table, sampled by binary search.
#[derive(Debug, Clone)]
pub(crate) struct Cdf {
    cumulative: Vec<f64>,
}

impl Cdf {
    /// A table of the given weights (at least one entry is kept so sampling always has an answer).
    pub(crate) fn new(weights: impl IntoIterator<Item = f64>) -> Self {
        let mut total = 0.0;
        let mut cumulative: Vec<f64> = weights
            .into_iter()
            .map(|w| {
                total += w;
                total
            })
            .collect();
        if cumulative.is_empty() {
            cumulative.push(1.0);
        }
        Self { cumulative }
    }

    /// Zipf weights `1 / k^exponent` for `k = 1..=n`, with the exponent 1.0 or 1.1 (see [`zipf_weight`]).
    pub(crate) fn zipf(n: usize, exponent_1_1: bool) -> Self {
        Self::new((1..=n.max(1)).map(|k| zipf_weight(k as f64, exponent_1_1)))
    }

    /// Weights given as integers.
    fn weighted(weights: &[u32]) -> Self {
        Self::new(weights.iter().map(|&w| f64::from(w)))
    }

    pub(crate) fn sample(&self, rng: &mut SplitMix64) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let u = rng.unit() * total;
        self.cumulative.partition_point(|&c| c <= u).min(self.cumulative.len() - 1)
    }
}

/// `1 / k^1.1` (or `1 / k`), computed with basic IEEE operations only so it is the same on
/// every platform: `k^1.1 = k * k^(1/10)`, the tenth root by Newton's method.
pub(crate) fn zipf_weight(k: f64, exponent_1_1: bool) -> f64 {
    if exponent_1_1 {
        1.0 / (k * tenth_root(k))
    } else {
        1.0 / k
    }
}

/// `x^(1/10)` for `x >= 1` by Newton's method from above (Bernoulli: `(1 + (x-1)/10)^10 >= x`),
/// which decreases monotonically to the root; it stops when a step no longer decreases.
fn tenth_root(x: f64) -> f64 {
    let mut r = 1.0 + (x - 1.0) / 10.0;
    for _ in 0..1000 {
        let mut r9 = 1.0;
        for _ in 0..9 {
            r9 *= r;
        }
        let next = (9.0 * r + x / r9) / 10.0;
        if next >= r {
            break;
        }
        r = next;
    }
    r
}

/// Countries by typical share of web traffic, most frequent first.
const COUNTRIES: [&str; 50] = [
    "US", "DE", "GB", "IN", "FR", "CA", "BR", "NL", "JP", "ES", "IT", "AU", "PL", "SE", "CN", "KR", "MX", "RU", "CH",
    "TR", "ID", "BE", "AT", "UA", "CZ", "DK", "NO", "FI", "PT", "IE", "IL", "SG", "AR", "CO", "ZA", "VN", "PH", "TW",
    "HK", "NZ", "RO", "GR", "HU", "TH", "MY", "CL", "PK", "NG", "EG", "BD",
];

/// Well-known referrers: root URL, host (lower-case, no `www.`) and the gateway's source name.
const KNOWN_REFERRERS: [(&str, &str, &str); 20] = [
    ("https://www.google.com/", "google.com", "Google"),
    ("https://news.ycombinator.com/", "news.ycombinator.com", "Hacker News"),
    ("https://duckduckgo.com/", "duckduckgo.com", "DuckDuckGo"),
    ("https://t.co/", "t.co", "Twitter"),
    ("https://www.reddit.com/", "reddit.com", "Reddit"),
    ("https://www.bing.com/", "bing.com", "Bing"),
    ("https://github.com/", "github.com", "GitHub"),
    ("https://l.facebook.com/", "l.facebook.com", "Facebook"),
    ("https://www.linkedin.com/", "linkedin.com", "LinkedIn"),
    ("https://www.google.de/", "google.de", "Google"),
    ("https://www.google.co.uk/", "google.co.uk", "Google"),
    ("https://chatgpt.com/", "chatgpt.com", "ChatGPT"),
    ("https://lobste.rs/", "lobste.rs", "Lobsters"),
    ("https://yandex.ru/", "yandex.ru", "Yandex"),
    ("https://www.youtube.com/", "youtube.com", "YouTube"),
    ("https://stackoverflow.com/", "stackoverflow.com", "Stack Overflow"),
    ("https://www.producthunt.com/", "producthunt.com", "Product Hunt"),
    ("https://bsky.app/", "bsky.app", "Bluesky"),
    ("https://www.baidu.com/", "baidu.com", "Baidu"),
    ("https://www.ecosia.org/", "ecosia.org", "Ecosia"),
];

/// The first page paths; the rest are numbered pages in four sections.
const TOP_PAGES: [&str; 10] =
    ["/", "/pricing", "/blog", "/docs", "/about", "/signup", "/login", "/features", "/contact", "/changelog"];

/// The first site names; more sites are `site<N>.example.com`.
const SITES: [&str; 3] = ["example.com", "shop.example.org", "docs.example.net"];

/// Event names with weights per mille, `pageview` first.
const NAMES: [(&str, u32); 10] = [
    ("pageview", 700),
    ("signup", 30),
    ("login", 40),
    ("purchase", 20),
    ("download", 40),
    ("outbound", 50),
    ("search", 50),
    ("share", 20),
    ("video_play", 30),
    ("form_submit", 20),
];

/// The index of `purchase` in [`NAMES`].
const PURCHASE: usize = 3;

type PropChoices = &'static [(&'static str, &'static [&'static str])];

/// Props of each custom event (index = index in [`NAMES`]): an event carries the first 1–3.
const PROPS: [PropChoices; 10] = [
    &[],
    &[("plan", &["free", "pro", "team"]), ("method", &["email", "google", "github"]), ("variant", &["a", "b"])],
    &[("method", &["email", "google", "github", "sso"]), ("plan", &["free", "pro", "team"])],
    &[("plan", &["pro", "team", "enterprise"]), ("method", &["card", "paypal", "invoice"]), ("variant", &["a", "b"])],
    &[
        ("file", &["gallop-linux-x86_64.tar.gz", "gallop-macos.dmg", "gallop-windows.zip", "manual.pdf"]),
        ("version", &["0.9.2", "0.9.1", "0.8.0"]),
    ],
    &[("url", &["https://github.com/gallop/gallop", "https://docs.rs/gallop", "https://crates.io/crates/gallop"])],
    &[("results", &["1-10", "11+", "0"]), ("section", &["docs", "blog", "help"])],
    &[("network", &["twitter", "linkedin", "email", "mastodon"])],
    &[("video", &["intro", "demo", "tutorial-1", "tutorial-2"]), ("autoplay", &["false", "true"])],
    &[("form", &["newsletter", "contact", "demo-request"]), ("variant", &["a", "b"])],
];

/// UTM sources, most frequent first, with the medium each comes with.
const UTM: [(&str, &str); 8] = [
    ("newsletter", "email"),
    ("twitter", "social"),
    ("google", "cpc"),
    ("linkedin", "social"),
    ("producthunt", "referral"),
    ("reddit", "social"),
    ("facebook", "cpc"),
    ("partner", "referral"),
];

const CAMPAIGNS: [&str; 4] = ["spring-launch", "weekly-digest", "retargeting", "black-friday"];

/// (device, weight, [(os, weight, [(browser, weight, first major version)])]).
type BrowserTable = &'static [(&'static str, u32, u32)];
type OsTable = &'static [(&'static str, u32, BrowserTable)];
const DEVICES: [(&str, u32, OsTable); 3] = [
    (
        "desktop",
        55,
        &[
            ("Windows", 60, &[("Chrome", 65, 128), ("Edge", 20, 128), ("Firefox", 12, 130), ("Opera", 3, 112)]),
            ("Mac", 28, &[("Chrome", 50, 128), ("Safari", 40, 17), ("Firefox", 10, 130)]),
            ("Linux", 8, &[("Chrome", 55, 128), ("Firefox", 45, 130)]),
            ("Chrome OS", 4, &[("Chrome", 1, 128)]),
        ],
    ),
    (
        "mobile",
        40,
        &[
            ("Android", 60, &[("Chrome Mobile", 70, 128), ("Samsung Internet", 20, 25), ("Firefox Mobile", 10, 130)]),
            ("iOS", 40, &[("Mobile Safari", 80, 17), ("Chrome Mobile iOS", 20, 128)]),
        ],
    ),
    ("tablet", 5, &[("iOS", 65, &[("Mobile Safari", 1, 17)]), ("Android", 35, &[("Chrome Mobile", 1, 128)])]),
];

/// A referrer entry: full URL, host and source name.
#[derive(Debug, Clone)]
struct Referrer {
    url: String,
    host: String,
    source: String,
}

fn referrer_table(n: usize) -> Vec<Referrer> {
    (0..n.max(1))
        .map(|i| {
            if let Some((url, host, source)) = KNOWN_REFERRERS.get(i) {
                return Referrer { url: (*url).into(), host: (*host).into(), source: (*source).into() };
            }
            let j = i - KNOWN_REFERRERS.len();
            let known =
                |url: String, host: &str, source: &str| Referrer { url, host: host.into(), source: source.into() };
            match j % 5 {
                0 => known(
                    format!("https://news.ycombinator.com/item?id={}", 42_000_000 + j),
                    "news.ycombinator.com",
                    "Hacker News",
                ),
                1 => {
                    let sub = ["rust", "programming", "webdev", "selfhosted"][(j / 5) % 4];
                    known(
                        format!("https://www.reddit.com/r/{sub}/comments/{:x}/", 0x1a_0000 + j),
                        "reddit.com",
                        "Reddit",
                    )
                }
                2 => known(format!("https://github.com/org{j}/project/issues/{}", j % 97), "github.com", "GitHub"),
                3 => {
                    let host = format!("blog{j}.example.dev");
                    Referrer { url: format!("https://{host}/posts/{}", j % 31), source: host.clone(), host }
                }
                _ => {
                    let host = format!("writer{j}.substack.com");
                    Referrer { url: format!("https://{host}/p/issue-{}", j % 53), source: host.clone(), host }
                }
            }
        })
        .collect()
}

fn page_table(n: usize) -> Vec<String> {
    (0..n.max(1))
        .map(|i| match TOP_PAGES.get(i) {
            Some(page) => (*page).to_owned(),
            None => match i % 4 {
                0 => format!("/blog/post-{i}"),
                1 => format!("/docs/guide/{i}"),
                2 => format!("/products/{i}"),
                _ => format!("/help/article-{i}"),
            },
        })
        .collect()
}

fn site_table(n: usize) -> Vec<String> {
    (0..n.max(1))
        .map(|i| match SITES.get(i) {
            Some(site) => (*site).to_owned(),
            None => format!("site{i}.example.com"),
        })
        .collect()
}

/// Per-visitor attributes, as indices into the static tables.
struct VisitorAttrs {
    country: usize,
    device: usize,
    os: usize,
    browser: usize,
    version: u32,
}

/// The generator behind [`generate`]: an iterator of [`EventRecord`]s.
#[derive(Debug, Clone)]
pub struct Synth {
    config: SynthConfig,
    rng: SplitMix64,
    /// Key of the visitor hash and of the visitor attributes.
    visitor_key: u64,
    /// Key of the event ids.
    id_key: u64,
    next: usize,
    sites: Vec<String>,
    site_cdf: Cdf,
    pages: Vec<String>,
    page_cdf: Cdf,
    referrers: Vec<Referrer>,
    referrer_cdf: Cdf,
    country_cdf: Cdf,
    name_cdf: Cdf,
    utm_cdf: Cdf,
}

/// A stream of `config.events` synthetic events (see the [module docs](self) for its shape).
pub fn generate(config: &SynthConfig) -> Synth {
    let countries = config.countries.clamp(1, COUNTRIES.len());
    let mut seeder = SplitMix64::new(config.seed);
    let rng = SplitMix64::new(seeder.next_u64());
    let visitor_key = seeder.next_u64();
    let id_key = seeder.next_u64();
    Synth {
        config: config.clone(),
        rng,
        visitor_key,
        id_key,
        next: 0,
        sites: site_table(config.sites),
        site_cdf: Cdf::zipf(config.sites, false),
        pages: page_table(config.pages),
        page_cdf: Cdf::zipf(config.pages, true),
        referrers: referrer_table(config.referrers),
        referrer_cdf: Cdf::zipf(config.referrers, true),
        country_cdf: Cdf::zipf(countries, false),
        name_cdf: Cdf::weighted(&NAMES.map(|(_, w)| w)),
        utm_cdf: Cdf::zipf(UTM.len(), false),
    }
}

impl Synth {
    fn visitor_attrs(&self, visitor_index: u64) -> VisitorAttrs {
        let mut rng = SplitMix64::new(mix(visitor_index ^ self.visitor_key.rotate_left(17)));
        let country = self.country_cdf.sample(&mut rng);
        let device = pick(&mut rng, &DEVICES, |(_, w, _)| *w);
        let oses = DEVICES[device].2;
        let os = pick(&mut rng, oses, |(_, w, _)| *w);
        let browsers = oses[os].2;
        let browser = pick(&mut rng, browsers, |(_, w, _)| *w);
        let version = browsers[browser].2 + rng.below(4) as u32;
        VisitorAttrs { country, device, os, browser, version }
    }

    fn event(&mut self, i: usize) -> EventRecord {
        let mut r = EventRecord::new();
        let rng = &mut self.rng;

        r.site = self.sites[self.site_cdf.sample(rng)].clone();
        r.host = r.site.clone();
        r.id = format!("{:016x}", mix(self.id_key ^ i as u64));

        let jitter = rng.below(1000);
        let base = self
            .config
            .start_ms
            .saturating_add((i128::from(self.config.span_ms) * i as i128 / self.config.events.max(1) as i128) as i64);
        r.ts = if jitter < 20 {
            base.saturating_sub(1 + rng.below(5000) as i64).max(self.config.start_ms)
        } else {
            base.saturating_add(rng.below(250) as i64)
        };

        let name = self.name_cdf.sample(rng);
        r.name = NAMES[name].0.to_owned();
        r.path = self.pages[self.page_cdf.sample(rng)].clone();

        let visitor_index = rng.below(self.config.visitors.max(1));
        let mut referrer_source = None;
        if rng.chance(450) {
            let referrer = &self.referrers[self.referrer_cdf.sample(rng)];
            r.referrer = referrer.url.clone();
            r.ref_host = referrer.host.clone();
            referrer_source = Some(&referrer.source);
        }
        if rng.chance(100) {
            let (source, medium) = UTM[self.utm_cdf.sample(rng)];
            r.utm_source = source.to_owned();
            r.utm_medium = medium.to_owned();
            r.utm_campaign = CAMPAIGNS[rng.skewed(CAMPAIGNS.len())].to_owned();
        }

        let props = PROPS[name];
        if !props.is_empty() {
            let count = 1 + rng.index(props.len().min(3));
            for (key, values) in &props[..count] {
                r.props.insert((*key).to_owned(), values[rng.skewed(values.len())].to_owned());
            }
        }
        if name == PURCHASE {
            let cents = 500 + rng.below(50_000);
            r.value = Some(cents as f64 / 100.0);
            r.currency = if rng.chance(200) { "EUR" } else { "USD" }.to_owned();
        }

        // Source as the gateway derives it: utm_source, else the known name, else the host.
        r.source = if !r.utm_source.is_empty() {
            r.utm_source.clone()
        } else {
            // The table holds the known name for known hosts and the host itself otherwise.
            referrer_source.cloned().unwrap_or_default()
        };

        let attrs = self.visitor_attrs(visitor_index);
        r.visitor = mix(visitor_index ^ self.visitor_key);
        r.country = COUNTRIES[attrs.country].to_owned();
        let (device, _, oses) = DEVICES[attrs.device];
        let (os, _, browsers) = oses[attrs.os];
        r.device = device.to_owned();
        r.os = os.to_owned();
        r.browser = browsers[attrs.browser].0.to_owned();
        r.browser_version = attrs.version.to_string();
        r
    }
}

/// An index into `items` drawn with the integer weights `weight(item)`.
fn pick<T>(rng: &mut SplitMix64, items: &[T], weight: impl Fn(&T) -> u32) -> usize {
    let total: u64 = items.iter().map(|item| u64::from(weight(item))).sum();
    let mut u = rng.below(total);
    for (i, item) in items.iter().enumerate() {
        let w = u64::from(weight(item));
        if u < w {
            return i;
        }
        u -= w;
    }
    items.len().saturating_sub(1)
}

impl Iterator for Synth {
    type Item = EventRecord;

    fn next(&mut self) -> Option<EventRecord> {
        if self.next >= self.config.events {
            return None;
        }
        let i = self.next;
        self.next += 1;
        Some(self.event(i))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.config.events - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Synth {}

/// Encodes records as broker messages: NDJSON, `per_message` records per message (the last
/// message may hold fewer; 0 is taken as 1).
pub fn encode_messages(records: &[EventRecord], per_message: usize) -> Vec<Vec<u8>> {
    records
        .chunks(per_message.max(1))
        .map(|chunk| {
            let mut message = Vec::with_capacity(chunk.len() * 448);
            for record in chunk {
                encode_into(record, &mut message);
            }
            message
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn stream(seed: u64, events: usize) -> Vec<EventRecord> {
        generate(&SynthConfig { seed, events, ..SynthConfig::default() }).collect()
    }

    fn share(records: &[EventRecord], f: impl Fn(&EventRecord) -> bool) -> f64 {
        records.iter().filter(|r| f(r)).count() as f64 / records.len() as f64
    }

    #[test]
    fn same_seed_same_stream_other_seed_other_stream() {
        let a = stream(1, 3_000);
        assert_eq!(a.len(), 3_000);
        assert_eq!(a, stream(1, 3_000));
        let b = stream(2, 3_000);
        assert_ne!(a, b);
        // Not just one field: most events differ.
        assert!(a.iter().zip(&b).filter(|(x, y)| x.path != y.path || x.visitor != y.visitor).count() > 2_000);
    }

    /// FNV-1a over every field of every record (not over JSON text, whose number formatting
    /// belongs to serde_json).
    fn fingerprint(records: &[EventRecord]) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for &byte in bytes.iter().chain(&[0xff]) {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
        };
        for r in records {
            for field in [
                &r.site,
                &r.id,
                &r.name,
                &r.host,
                &r.path,
                &r.referrer,
                &r.ref_host,
                &r.source,
                &r.utm_source,
                &r.utm_medium,
                &r.utm_campaign,
                &r.utm_content,
                &r.utm_term,
                &r.country,
                &r.browser,
                &r.browser_version,
                &r.os,
                &r.device,
                &r.currency,
            ] {
                feed(field.as_bytes());
            }
            for (key, value) in &r.props {
                feed(key.as_bytes());
                feed(value.as_bytes());
            }
            feed(&[r.v, u8::from(r.interactive)]);
            feed(&r.ts.to_le_bytes());
            feed(&r.visitor.to_le_bytes());
            feed(&r.value.map_or(u64::MAX, f64::to_bits).to_le_bytes());
        }
        hash
    }

    #[test]
    fn stream_is_pinned_across_machines_and_versions() {
        // Any change to the generator changes this value. When the change is intended, update
        // it, and note that benchmark numbers from before were measured on another stream.
        let hash = fingerprint(&stream(42, 2_000));
        assert_eq!(hash, 0xe891_393d_23b3_c03f, "{hash:#x}");
        assert_ne!(fingerprint(&stream(42, 1_999)), hash);
    }

    #[test]
    fn tenth_root_is_accurate() {
        for x in [1.0, 2.0, 1024.0, 5_000.0, 1e6] {
            let r = tenth_root(x);
            let mut r10 = 1.0;
            for _ in 0..10 {
                r10 *= r;
            }
            assert!((r10 / x - 1.0).abs() < 1e-12, "{x}: {r}");
        }
    }

    #[test]
    fn distributions_have_the_intended_shape() {
        let records = stream(9, 50_000);
        let pageviews = share(&records, |r| r.name == "pageview");
        assert!((0.68..0.72).contains(&pageviews), "{pageviews}");
        let names: HashSet<&str> = records.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names.len(), 10);

        // Zipf(1.1) over 5,000 pages: the top page has 1 / H(5000, 1.1) of the traffic.
        let h: f64 = (1..=5_000).map(|k| (k as f64).powf(-1.1)).sum();
        let top = share(&records, |r| r.path == "/");
        assert!((top - 1.0 / h).abs() < 0.01, "{top} vs {}", 1.0 / h);
        let second = share(&records, |r| r.path == "/pricing");
        assert!((second - 2f64.powf(-1.1) / h).abs() < 0.01, "{second}");

        let mut countries: HashMap<&str, usize> = HashMap::new();
        for r in &records {
            *countries.entry(r.country.as_str()).or_default() += 1;
        }
        assert!(countries.len() >= 45 && countries.len() <= 50, "{}", countries.len());
        let us = countries["US"] as f64 / records.len() as f64;
        assert!((0.17..0.28).contains(&us), "{us}");

        let utm = share(&records, |r| !r.utm_source.is_empty());
        assert!((0.09..0.11).contains(&utm), "{utm}");
        let referred = share(&records, |r| !r.referrer.is_empty());
        assert!((0.43..0.47).contains(&referred), "{referred}");

        // About n (1 - n / 2N) distinct visitors out of a pool of N.
        let visitors: HashSet<u64> = records.iter().map(|r| r.visitor).collect();
        assert!(visitors.len() > 48_000, "{}", visitors.len());

        let sites: HashSet<&str> = records.iter().map(|r| r.site.as_str()).collect();
        assert_eq!(sites.len(), 3);
        let devices: HashSet<&str> = records.iter().map(|r| r.device.as_str()).collect();
        assert_eq!(devices, HashSet::from(["desktop", "mobile", "tablet"]));
    }

    #[test]
    fn fields_are_consistent() {
        let records = stream(5, 20_000);
        let mut by_visitor: HashMap<u64, (&str, &str, &str)> = HashMap::new();
        for r in &records {
            if r.name == "pageview" {
                assert!(r.props.is_empty());
            } else {
                assert!((1..=3).contains(&r.props.len()), "{r:?}");
            }
            assert_eq!(r.value.is_some(), r.name == "purchase");
            assert_eq!(r.currency.is_empty(), r.name != "purchase");
            if !r.utm_source.is_empty() {
                assert_eq!(r.source, r.utm_source);
            } else if r.ref_host == "google.com" || r.ref_host == "google.co.uk" {
                assert_eq!(r.source, "Google");
            } else if r.ref_host.ends_with(".example.dev") {
                assert_eq!(r.source, r.ref_host);
            } else if r.referrer.is_empty() {
                assert!(r.source.is_empty());
            }
            assert!(!r.ref_host.starts_with("www."));
            assert_eq!(r.host, r.site);
            let attrs = (r.country.as_str(), r.browser.as_str(), r.os.as_str());
            assert_eq!(*by_visitor.entry(r.visitor).or_insert(attrs), attrs, "a visitor keeps its attributes");
        }
        let ids: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids.len(), records.len());
    }

    #[test]
    fn timestamps_rise_with_bounded_disorder() {
        let config = SynthConfig { events: 20_000, span_ms: 3_600_000, ..SynthConfig::default() };
        let records: Vec<EventRecord> = generate(&config).collect();
        let mut max_seen = i64::MIN;
        let mut out_of_order = 0;
        for r in &records {
            assert!(r.ts >= config.start_ms && r.ts < config.start_ms + config.span_ms + 250);
            if r.ts < max_seen {
                out_of_order += 1;
                assert!(max_seen - r.ts <= 5_250, "{}", max_seen - r.ts);
            }
            max_seen = max_seen.max(r.ts);
        }
        // 2% moved back by up to 5 s, plus neighbours swapped by the jitter (180 ms apart here).
        assert!((400..3_000).contains(&out_of_order), "{out_of_order}");
    }

    #[test]
    fn messages_hold_the_records_in_order() {
        let records = stream(4, 250);
        let messages = encode_messages(&records, 100);
        assert_eq!(messages.len(), 3);
        let decoded: Vec<EventRecord> =
            messages.iter().flat_map(|m| gallop_event::decode_message(m)).collect::<Result<_, _>>().expect("decodes");
        assert_eq!(decoded, records);
        assert_eq!(encode_messages(&records, 0).len(), 250);
    }
}
