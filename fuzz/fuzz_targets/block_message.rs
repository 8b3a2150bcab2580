//! A compact block (`gallop_event::decode_block`) from arbitrary bytes: never a panic; a
//! block that is read must describe records that encode to a block read back the same
//! (compared by their Debug text, so NaN values compare by their text too), and every
//! prefix of that block is refused, as a cut message must be. Inputs that do not start with
//! the block header get it prepended half of the time, so the fuzzer spends its time past
//! the header.
#![no_main]

use gallop_event::{decode_block, encode_block, BlockEvent, EventRecord, MessageFormat, BLOCK_MAGIC, BLOCK_VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut owned;
    let input = if MessageFormat::of(data) == MessageFormat::Ndjson && data.first().is_some_and(|b| b % 2 == 0) {
        owned = BLOCK_MAGIC.to_vec();
        owned.push(BLOCK_VERSION);
        owned.extend_from_slice(&data[1..]);
        &owned[..]
    } else {
        data
    };
    let Ok(events) = decode_block(input) else { return };
    let records: Vec<EventRecord> = events.iter().map(BlockEvent::to_record).collect();
    let mut again = Vec::new();
    encode_block(&records, &mut again);
    let back: Vec<EventRecord> = decode_block(&again).expect("a block just written reads back").iter().map(BlockEvent::to_record).collect();
    assert_eq!(format!("{back:?}"), format!("{records:?}"), "records change through encode/decode");
    for cut in [again.len() / 2, again.len().saturating_sub(1)] {
        if cut < again.len() {
            assert!(decode_block(&again[..cut]).is_err(), "a block cut to {cut} of {} bytes was read", again.len());
        }
    }
});
