//! The `block_message` target: see `gallop_fuzz::block_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gallop_fuzz::block_message::check(data));
