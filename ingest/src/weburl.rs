//! Page and referrer URLs: the scheme, host, port, path and query an event's fields come
//! from.
//!
//! Browsers send `location.href` and `document.referrer` already in WHATWG's normal form
//! (`https://example.com/pricing?utm_source=news`), and a full WHATWG parse of each (the
//! `url` crate: percent-encoding, IDNA, IPv4 forms, dot segments) was about a sixth of the
//! gateway's CPU. [`WebUrl::parse`] reads a URL written in that normal form directly, and
//! hands everything else to the `url` crate. A URL is read directly only where the `url`
//! crate would give the same scheme, host, port, path and query: an `http` or `https`
//! scheme in lower case, a host of lower-case letters, digits, dots and hyphens whose last
//! label starts with a letter (no IPv4 form, no IDNA label), no user, no port, and a path
//! and query of characters that are never percent-encoded, without dot segments. The tests
//! hold both readings equal on generated URLs.

use url::{form_urlencoded, ParseError, Url};

/// A parsed absolute URL.
pub(crate) enum WebUrl<'a> {
    /// Read directly: already in normal form, so these are slices of the text.
    Plain {
        /// `http` or `https`.
        scheme: &'a str,
        /// Lower case, not empty.
        host: &'a str,
        /// Starts with `/`.
        path: &'a str,
        /// After `?`, before `#`.
        query: Option<&'a str>,
    },
    /// Parsed by the `url` crate.
    Parsed(Url),
}

impl<'a> WebUrl<'a> {
    /// Parses `text` as an absolute URL (what [`Url::parse`] accepts).
    pub(crate) fn parse(text: &'a str) -> Result<Self, ParseError> {
        match plain(text) {
            Some(url) => Ok(url),
            None => Url::parse(text).map(WebUrl::Parsed),
        }
    }

    /// The scheme, lower case.
    pub(crate) fn scheme(&self) -> &str {
        match self {
            WebUrl::Plain { scheme, .. } => scheme,
            WebUrl::Parsed(url) => url.scheme(),
        }
    }

    /// The host, if the URL has one.
    pub(crate) fn host_str(&self) -> Option<&str> {
        match self {
            WebUrl::Plain { host, .. } => Some(host),
            WebUrl::Parsed(url) => url.host_str(),
        }
    }

    /// The port, unless none is written or it is the scheme's default.
    pub(crate) fn port(&self) -> Option<u16> {
        match self {
            WebUrl::Plain { .. } => None,
            WebUrl::Parsed(url) => url.port(),
        }
    }

    /// The path, percent-encoded as written.
    pub(crate) fn path(&self) -> &str {
        match self {
            WebUrl::Plain { path, .. } => path,
            WebUrl::Parsed(url) => url.path(),
        }
    }

    /// The query's `key=value` pairs, decoded (`application/x-www-form-urlencoded`).
    pub(crate) fn query_pairs(&self) -> form_urlencoded::Parse<'_> {
        match self {
            WebUrl::Plain { query, .. } => form_urlencoded::parse(query.unwrap_or("").as_bytes()),
            WebUrl::Parsed(url) => url.query_pairs(),
        }
    }
}

/// `text` read directly, if it is in the normal form described in the module's doc: one
/// pass over its bytes.
fn plain(text: &str) -> Option<WebUrl<'_>> {
    let (scheme, start) = if text.starts_with("https://") {
        ("https", 8)
    } else if text.starts_with("http://") {
        ("http", 7)
    } else {
        return None;
    };
    let bytes = text.as_bytes();
    let host_end = plain_host_end(bytes, start)?;
    // The path: up to `?` or `#`, no segment starting with `.` or `%2e` (a dot segment the
    // `url` crate would resolve; stricter than needed, and cheap).
    let mut at = host_end;
    while at < bytes.len() && PATH_AS_IS[usize::from(bytes[at])] {
        if bytes[at] == b'/' {
            let next = &bytes[at + 1..];
            if next.first() == Some(&b'.') || next.get(..3).is_some_and(|n| n.eq_ignore_ascii_case(b"%2e")) {
                return None;
            }
        }
        at += 1;
    }
    let path_end = at;
    let mut query = None;
    if bytes.get(at) == Some(&b'?') {
        at += 1;
        while at < bytes.len() && QUERY_AS_IS[usize::from(bytes[at])] {
            at += 1;
        }
        query = Some(&text[path_end + 1..at]);
    }
    // Whatever follows is a fragment (ignored), or a byte the `url` crate would change.
    if at < bytes.len() && bytes[at] != b'#' {
        return None;
    }
    let path = if path_end == host_end { "/" } else { &text[host_end..path_end] };
    Some(WebUrl::Plain { scheme, host: &text[start..host_end], path, query })
}

/// Where a host the `url` crate keeps as it is ends (at `/`, `?`, `#` or the end), reading
/// from `start`: labels of `a-z`, `0-9` and `-`, none empty, none an IDNA label (`xn--`),
/// the last starting with a letter (so it is no IPv4 address).
fn plain_host_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut label = start;
    let mut at = start;
    loop {
        let byte = bytes.get(at).copied();
        match byte {
            Some(b'a'..=b'z' | b'0'..=b'9' | b'-') => {}
            Some(b'.') | Some(b'/' | b'?' | b'#') | None => {
                let text = &bytes[label..at];
                if text.is_empty() || text.starts_with(b"xn--") {
                    return None;
                }
                if byte != Some(b'.') {
                    return text[0].is_ascii_lowercase().then_some(at);
                }
                label = at + 1;
            }
            Some(_) => return None,
        }
        at += 1;
    }
}

/// Bytes a path keeps as written: letters, digits and `-._~!$&()*+,;=:@/%`. The `url` crate
/// percent-encodes controls, space, `"#<>?`{}` and non-ASCII, and turns `\` into `/`.
const PATH_AS_IS: [bool; 256] = as_is(b"-._~!$&()*+,;=:@/%");

/// Bytes a query keeps as written: those of a path and `?`.
const QUERY_AS_IS: [bool; 256] = as_is(b"-._~!$&()*+,;=:@/%?");

const fn as_is(punctuation: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < punctuation.len() {
        table[punctuation[i] as usize] = true;
        i += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Scheme, host, port, path and query pairs, the way [`WebUrl`] gives them.
    fn parts(url: &WebUrl<'_>) -> String {
        let pairs: Vec<String> = url.query_pairs().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{} {:?} {:?} {} [{}]", url.scheme(), url.host_str(), url.port(), url.path(), pairs.join(" "))
    }

    /// The same, read by the `url` crate.
    fn reference(text: &str) -> Result<String, ParseError> {
        Url::parse(text).map(|url| parts(&WebUrl::Parsed(url)))
    }

    #[track_caller]
    fn check(text: &str, read_directly: bool) {
        assert_eq!(plain(text).is_some(), read_directly, "{text:?} read directly");
        let got = WebUrl::parse(text).map(|url| parts(&url));
        assert_eq!(got, reference(text), "{text:?}");
    }

    #[test]
    fn urls_in_normal_form_are_read_directly() {
        for text in [
            "https://example.com/pricing?utm_source=news&utm_medium=email&utm_campaign=nov#top",
            "https://example.com",
            "http://example.com?ref=producthunt",
            "https://blog.example.org/a/b/c.html",
            "https://example.com/search?q=caf%C3%A9+au+lait&x=a+b",
            "https://a-b.example.com/%7Euser/?a=1?b=2&c",
            "https://news.ycombinator.com/item?id=1",
            "https://example.com/#/route?x=1",
            "https://x1.example.io/",
        ] {
            check(text, true);
        }
    }

    #[test]
    fn everything_else_goes_to_the_url_crate() {
        for text in [
            "https://Example.com/",
            "HTTPS://example.com/",
            "https://example.com:443/",
            "https://example.com:8080/a",
            "https://alice:s3cret@example.com/",
            "https://127.0.0.1/",
            "https://0x7f.1/",
            "https://example.123/",
            "https://xn--caf-dma.example/",
            "https://café.example/",
            "https://example..com/",
            "https://example.com./",
            "https://example.com/a/../b",
            "https://example.com/a/./b",
            "https://example.com/a/%2e%2E/b",
            "https://example.com/.well-known/x",
            "https://example.com/a b",
            "https://example.com/a\\b",
            "https://example.com/a\tb",
            "https://example.com/{x}",
            "https://example.com/a?it's",
            "https://example.com/a?<b>",
            "https://example.com/é",
            " https://example.com/",
            "https://example.com/ ",
            "ftp://example.com/",
            "android-app://com.google.android.gm/path?x=1",
            "https:///example.com/",
            "https://",
            "not a url",
        ] {
            check(text, false);
        }
    }

    /// URL-ish text: a scheme, a host and a path and query of pieces that are often read
    /// directly and characters that are not.
    fn url_like() -> impl Strategy<Value = String> {
        let scheme = prop_oneof![
            8 => Just("https://"),
            2 => Just("http://"),
            1 => prop::sample::select(vec!["HTTP://", "ftp://", "https:/", ""]),
        ];
        let label = prop_oneof![
            8 => prop::sample::select(vec!["example", "com", "a-b", "x1"]),
            1 => prop::sample::select(vec!["1", "0x7f", "xn--caf-dma", "xn--", "xn--a-ecp", "B", "", ":8080", ":443", "@", "é", "%41"]),
        ];
        let host = prop::collection::vec(label, 1..4);
        let piece = prop_oneof![
            4 => prop::sample::select(vec!["/", "a", "Z9", "=", "&", "?"]),
            2 => prop::sample::select(vec![".", "..", "%2e", "%2E", "%", "%zz", "#", "+", "~", "!$()*,;:@", "utm_source"]),
            1 => prop::sample::select(vec![" ", "\t", "\\", "'", "\"", "<", "{", "é"]),
        ];
        let tail = prop::collection::vec(piece, 0..12);
        let start = prop::sample::select(vec!["/", "/", "?", "#", ""]);
        (scheme, host, start, tail)
            .prop_map(|(scheme, host, start, tail)| format!("{scheme}{}{start}{}", host.join("."), tail.concat()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn both_readings_agree(text in url_like()) {
            let got = WebUrl::parse(&text).map(|url| parts(&url));
            prop_assert_eq!(got, reference(&text), "{:?}", text);
        }
    }
}
