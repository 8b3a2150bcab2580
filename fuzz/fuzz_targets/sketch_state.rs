//! The `sketch_state` target: see `gallop_fuzz::sketch_state`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gallop_fuzz::sketch_state::check(data));
