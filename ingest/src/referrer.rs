//! Traffic sources: which well-known site a referrer host belongs to.

/// Known referrer hosts and the source name shown for them. A host matches an entry when
/// it equals the entry or ends with `.` + entry (`l.facebook.com` matches `facebook.com`).
const KNOWN: &[(&str, &str)] = &[
    ("bing.com", "Bing"),
    ("duckduckgo.com", "DuckDuckGo"),
    ("search.yahoo.com", "Yahoo!"),
    ("yahoo.com", "Yahoo!"),
    ("baidu.com", "Baidu"),
    ("ecosia.org", "Ecosia"),
    ("search.brave.com", "Brave"),
    ("startpage.com", "Startpage"),
    ("kagi.com", "Kagi"),
    ("facebook.com", "Facebook"),
    ("fb.com", "Facebook"),
    ("fb.me", "Facebook"),
    ("instagram.com", "Instagram"),
    ("t.co", "Twitter"),
    ("twitter.com", "Twitter"),
    ("x.com", "Twitter"),
    ("linkedin.com", "LinkedIn"),
    ("lnkd.in", "LinkedIn"),
    ("reddit.com", "Reddit"),
    ("github.com", "GitHub"),
    ("news.ycombinator.com", "Hacker News"),
    ("youtube.com", "YouTube"),
    ("youtu.be", "YouTube"),
    ("t.me", "Telegram"),
    ("web.telegram.org", "Telegram"),
    ("wa.me", "WhatsApp"),
    ("web.whatsapp.com", "WhatsApp"),
    ("stackoverflow.com", "Stack Overflow"),
    ("producthunt.com", "Product Hunt"),
    ("lobste.rs", "Lobsters"),
    ("mastodon.social", "Mastodon"),
    ("bsky.app", "Bluesky"),
    ("threads.net", "Threads"),
    ("tiktok.com", "TikTok"),
    ("wikipedia.org", "Wikipedia"),
    ("chatgpt.com", "ChatGPT"),
    ("chat.openai.com", "ChatGPT"),
    ("perplexity.ai", "Perplexity"),
    ("news.google.com", "Google News"),
];

/// Second-level labels that name a source whatever the country TLD
/// (`google.co.uk`, `yandex.ru`, `pinterest.de`).
const KNOWN_ANY_TLD: &[(&str, &str)] =
    &[("google", "Google"), ("yandex", "Yandex"), ("pinterest", "Pinterest"), ("naver", "Naver"), ("seznam", "Seznam")];

/// The source name for a referrer host (lower-case, without `www.`), if it is a known one.
pub(crate) fn known_source(host: &str) -> Option<&'static str> {
    let suffix_match = |entry: &str| {
        host == entry
            || (host.len() > entry.len()
                && host.ends_with(entry)
                && host.as_bytes()[host.len() - entry.len() - 1] == b'.')
    };
    // Longest entry first, so news.google.com beats the google rule.
    if let Some((_, name)) = KNOWN.iter().filter(|(entry, _)| suffix_match(entry)).max_by_key(|(entry, _)| entry.len())
    {
        return Some(name);
    }
    let labels: Vec<&str> = host.split('.').collect();
    // `google.com`, `www.google.co.uk`, `google.de`: the label before the public suffix.
    // A two-letter second-level (`co`, `com`) under a country TLD is skipped over.
    let n = labels.len();
    let candidates = [n.checked_sub(2), n.checked_sub(3)];
    for index in candidates.into_iter().flatten() {
        if let Some((_, name)) = KNOWN_ANY_TLD.iter().find(|(label, _)| labels[index] == *label) {
            if index == n - 2 || matches!(labels[n - 2], "co" | "com" | "ac" | "or" | "ne") {
                return Some(name);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_known_sources() {
        let cases = [
            ("google.com", Some("Google")),
            ("google.co.uk", Some("Google")),
            ("google.de", Some("Google")),
            ("news.google.com", Some("Google News")),
            ("notgoogle.com", None),
            ("google.example.com", None),
            ("l.facebook.com", Some("Facebook")),
            ("m.facebook.com", Some("Facebook")),
            ("t.co", Some("Twitter")),
            ("x.com", Some("Twitter")),
            ("xx.com", None),
            ("news.ycombinator.com", Some("Hacker News")),
            ("ycombinator.com", None),
            ("out.reddit.com", Some("Reddit")),
            ("github.com", Some("GitHub")),
            ("duckduckgo.com", Some("DuckDuckGo")),
            ("bing.com", Some("Bing")),
            ("yandex.ru", Some("Yandex")),
            ("lnkd.in", Some("LinkedIn")),
            ("example.org", None),
        ];
        for (host, want) in cases {
            assert_eq!(known_source(host), want, "{host}");
        }
    }
}
