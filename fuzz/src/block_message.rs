//! A compact block (`gallop_event::decode_block`) from arbitrary bytes: never a panic; a
//! block that is read must describe records that encode to a block read back the same
//! (compared by their Debug text, so NaN values compare by their text too), and every
//! prefix of that block is refused, as a cut message must be. Inputs that do not start with
//! the block header get it prepended half of the time, so the fuzzer spends its time past
//! the header.
//!
//! The same bytes carried over by a `BlockWriter` (behind a block of one event, so its
//! strings are renumbered and its times moved) must be refused exactly when the decoder
//! refuses them, and otherwise read as that event followed by the same records.
use gallop_event::{
    decode_block, encode_block, BlockEvent, BlockWriter, EventRecord, MessageFormat, BLOCK_MAGIC, BLOCK_VERSION,
};

/// Runs the check on one input; panics on a finding.
pub fn check(data: &[u8]) {
    let mut owned;
    let input = if MessageFormat::of(data) == MessageFormat::Ndjson && data.first().is_some_and(|b| b % 2 == 0) {
        owned = BLOCK_MAGIC.to_vec();
        owned.push(BLOCK_VERSION);
        owned.extend_from_slice(&data[1..]);
        &owned[..]
    } else {
        data
    };
    let mut first = EventRecord::new();
    first.site = "first.test".to_owned();
    first.ts = 1_700_000_000_000;
    let mut writer = BlockWriter::default();
    writer.record(&first);
    let carried = writer.block(input);
    let Ok(events) = decode_block(input) else {
        assert!(carried.is_err(), "the writer carried over a block the decoder refuses");
        return;
    };
    assert!(carried.is_ok(), "the writer refused a block the decoder reads: {carried:?}");
    let records: Vec<EventRecord> = events.iter().map(BlockEvent::to_record).collect();
    let mut again = Vec::new();
    encode_block(&records, &mut again);
    let back: Vec<EventRecord> =
        decode_block(&again).expect("a block just written reads back").iter().map(BlockEvent::to_record).collect();
    assert_eq!(format!("{back:?}"), format!("{records:?}"), "records change through encode/decode");
    let mut merged = Vec::new();
    writer.finish(&mut merged);
    let merged: Vec<EventRecord> =
        decode_block(&merged).expect("a block just written reads back").iter().map(BlockEvent::to_record).collect();
    let expected: Vec<EventRecord> = std::iter::once(first).chain(records.iter().cloned()).collect();
    assert_eq!(format!("{merged:?}"), format!("{expected:?}"), "records change when carried over");
    for cut in [again.len() / 2, again.len().saturating_sub(1)] {
        if cut < again.len() {
            assert!(decode_block(&again[..cut]).is_err(), "a block cut to {cut} of {} bytes was read", again.len());
        }
    }
}
