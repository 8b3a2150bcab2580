//! The `batch_body` target: see `gallop_fuzz::batch_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gallop_fuzz::batch_body::check(data));
