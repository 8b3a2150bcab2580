//! [`truncate`]: cutting text to a byte limit without splitting a character, for every
//! field the gateway bounds (props, User-Agents).

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn cuts_on_a_character_boundary() {
        // (text, max bytes, kept)
        for (text, max, kept) in
            [("abc", 5, "abc"), ("abc", 2, "ab"), ("aé", 2, "a"), ("aé", 3, "aé"), ("€", 2, ""), ("", 0, "")]
        {
            assert_eq!(truncate(text, max), kept, "{text:?} to {max}");
        }
    }
}
