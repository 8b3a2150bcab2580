//! The `plausible_body` target: see `gallop_fuzz::plausible_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gallop_fuzz::plausible_body::check(data));
