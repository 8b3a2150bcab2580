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
    // The host, then each shorter suffix at a label boundary: the first known one is the
    // longest match, so news.google.com beats the google rule.
    let mut suffix = host;
    loop {
        if let Some(&(_, name)) = KNOWN.iter().find(|(entry, _)| *entry == suffix) {
            return Some(name);
        }
        match suffix.split_once('.') {
            Some((_, rest)) => suffix = rest,
            None => break,
        }
    }
    // `google.com`, `www.google.co.uk`, `google.de`: the label before the public suffix.
    // A two-letter second-level (`co`, `com`) under a country TLD is skipped over.
    let mut labels = host.rsplit('.').skip(1);
    let (second, third) = (labels.next(), labels.next());
    let any_tld =
        |label: Option<&str>| KNOWN_ANY_TLD.iter().find(|(known, _)| label == Some(*known)).map(|(_, name)| *name);
    if let Some(name) = any_tld(second) {
        return Some(name);
    }
    if matches!(second, Some("co" | "com" | "ac" | "or" | "ne")) {
        return any_tld(third);
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
            ("www.google.com.au", Some("Google")),
            ("google", None),
            ("", None),
            ("com", None),
            (".google.com", Some("Google")),
            ("yandex.net.ru", None),
            ("a.b.search.brave.com", Some("Brave")),
            ("brave.com", None),
        ];
        for (host, want) in cases {
            assert_eq!(known_source(host), want, "{host}");
        }
    }
}
