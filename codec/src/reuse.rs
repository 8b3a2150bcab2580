//! [`reuse`]: a large buffer of the last flush used again by the next one.
//!
//! A flush's lists and bodies run to tens or hundreds of megabytes; a fresh one every flush
//! had the kernel fault in and zero its pages each time. Both the processor (its list of
//! changed visits) and the sink (its insert body) keep theirs for the next flush, by this
//! one rule.

/// `buffer`, emptied, when it has room for `needed` items and is not far larger than that
/// (a burst's buffer is let go, so that its pages do not stay resident for good); otherwise
/// a new one with half again the room, so that the next, slightly larger flushes fit (room
/// never written costs no memory). A new allocation rather than `reserve`: growing would
/// copy the old capacity.
pub fn reuse<T>(mut buffer: Vec<T>, needed: usize) -> Vec<T> {
    let roomy = needed + needed / 2;
    buffer.clear();
    if buffer.capacity() >= needed && buffer.capacity() <= (4 * roomy).max(1 << 16) {
        buffer
    } else {
        Vec::with_capacity(roomy)
    }
}

#[cfg(test)]
mod tests {
    use super::reuse;

    #[test]
    fn a_buffer_is_used_again_only_when_its_room_fits() {
        // (capacity, needed, used again)
        let cases = [
            (0, 0, true),
            (100, 100, true),
            (99, 100, false),
            // Small buffers are kept up to 64 Ki items, whatever the need.
            (600, 100, true),
            (1 << 16, 10, true),
            ((1 << 16) + 1, 10, false),
            (6_000_000, 1_000_000, true),
            (6_000_001, 1_000_000, false),
        ];
        for (capacity, needed, used) in cases {
            let mut buffer: Vec<u8> = Vec::with_capacity(capacity);
            buffer.push(1);
            let (at, capacity) = (buffer.as_ptr(), buffer.capacity());
            let back = reuse(buffer, needed);
            assert!(back.is_empty());
            assert!(back.capacity() >= needed, "{capacity} for {needed}");
            assert_eq!(back.as_ptr() == at, used, "{capacity} for {needed}");
            if !used {
                assert_eq!(back.capacity(), needed + needed / 2, "a new one has half again the room");
            }
        }
    }
}
