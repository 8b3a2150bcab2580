//! Prints the hex of a `uniqHLL12` state built by Gallop, for cross-checking with ClickHouse.
//!
//! `cargo run -p gallop-processor --example hll_state -- <seed> <n> [u64|str]`
//!
//! Inputs are the same ones the SQL below generates, so the output must equal
//! `hex(uniqHLL12State(..))` of the server (with `max_threads = 1`, which fixes the order of
//! the small set):
//!
//! - `u64`: `intHash64(number + seed)` for `number` in `0..n`;
//! - `str`: with `x = intHash64(number + seed)`,
//!   `substring(concat(toString(x), toString(x), toString(x), toString(x)), 1, x % 81)`.

use std::process::ExitCode;

use gallop_processor::sketch::{int_hash64, UniqHll12};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(seed), Some(n)) =
        (args.first().and_then(|s| s.parse::<u64>().ok()), args.get(1).and_then(|s| s.parse::<u64>().ok()))
    else {
        eprintln!("usage: hll_state <seed> <n> [u64|str]");
        return ExitCode::from(2);
    };
    let kind = args.get(2).map(String::as_str).unwrap_or("u64");
    let mut sketch = UniqHll12::new();
    for number in 0..n {
        let x = int_hash64(number.wrapping_add(seed));
        match kind {
            "u64" => sketch.insert_u64(x),
            "str" => {
                let digits = x.to_string().repeat(4);
                let len = usize::try_from(x % 81).unwrap_or(0).min(digits.len());
                sketch.insert_str(&digits.as_bytes()[..len]);
            }
            other => {
                eprintln!("unknown kind {other:?}: expected u64 or str");
                return ExitCode::from(2);
            }
        }
    }
    let hex: String = sketch.to_state().iter().map(|b| format!("{b:02X}")).collect();
    println!("{hex}");
    ExitCode::SUCCESS
}
