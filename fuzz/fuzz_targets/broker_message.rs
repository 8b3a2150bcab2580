//! The `broker_message` target: see `gallop_fuzz::broker_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gallop_fuzz::broker_message::check(data));
