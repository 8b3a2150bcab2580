//! ClickHouse aggregate-state readers of `gallop_processor::sketch` on arbitrary bytes:
//! `UniqHll12::read_state`, `TopK::read_state` / `read_state_prefix`, `SumU64::read_state`
//! and `SumF64::read_state` never panic, and whatever they accept round-trips: the state
//! written from it reads back, and writing that again gives the same bytes
//! (write(read(write(read(x)))) == write(read(x))).
//!
//! Input: first byte is `k` for `topK(k)` (0 must be refused); the rest is handed to every
//! reader, so one corpus serves all four (an HLL or sum seed's `k` byte is arbitrary).
use gallop_processor::sketch::{SumF64, SumU64, TopK, UniqHll12};

/// Runs the check on one input; panics on a finding.
pub fn check(data: &[u8]) {
    let Some((&k, state)) = data.split_first() else {
        return;
    };
    hll(state);
    sums(state);
    top_k(usize::from(k), state);
}

fn hll(state: &[u8]) {
    let Ok(sketch) = UniqHll12::read_state(state) else {
        return;
    };
    assert_eq!(sketch.is_large(), state[0] == 1, "form byte and representation disagree");
    let written = sketch.to_state();
    let again = UniqHll12::read_state(&written)
        .unwrap_or_else(|e| panic!("uniqHLL12: a state it wrote does not read back: {e}"));
    assert_eq!(again, sketch, "uniqHLL12: read(write(s)) != s");
    assert_eq!(again.to_state(), written, "uniqHLL12: state bytes not stable");
    assert_eq!(again.estimate(), sketch.estimate());
    let mut appended = vec![0xAA];
    sketch.write_state(&mut appended);
    assert_eq!(&appended[1..], &written[..], "uniqHLL12: write_state and to_state differ");
    // A large state is fixed-size and canonical: it must come back byte for byte.
    if sketch.is_large() {
        assert_eq!(written, state, "uniqHLL12: large state not reproduced exactly");
    }
}

fn sums(state: &[u8]) {
    let u = SumU64::read_state(state);
    let f = SumF64::read_state(state);
    assert_eq!(u.is_ok(), state.len() == 8, "sum(UInt64) accepts exactly 8 bytes");
    assert_eq!(f.is_ok(), state.len() == 8, "sum(Float64) accepts exactly 8 bytes");
    if let (Ok(u), Ok(f)) = (u, f) {
        let mut out = Vec::new();
        u.write_state(&mut out);
        assert_eq!(out, state, "sum(UInt64) state not reproduced");
        assert_eq!(u.value(), u64::from_le_bytes(state.try_into().expect("8 bytes")));
        out.clear();
        f.write_state(&mut out);
        assert_eq!(out, state, "sum(Float64) state not reproduced (NaN payloads included)");
    }
}

fn top_k(k: usize, state: &[u8]) {
    let whole = TopK::read_state(k, state);
    let prefix = TopK::read_state_prefix(k, state);
    if k == 0 {
        assert!(whole.is_err() && prefix.is_err(), "topK(0) must be refused");
        return;
    }
    // read_state is read_state_prefix plus "nothing left over".
    match (&whole, &prefix) {
        (Ok(w), Ok((p, used))) => {
            assert_eq!(*used, state.len(), "read_state accepted a state read_state_prefix stops short of");
            assert_eq!(w.to_state(), p.to_state());
        }
        (Err(_), Ok((p, used))) => {
            assert!(*used < state.len(), "read_state refused a state read_state_prefix read entirely");
            let exact = TopK::read_state(k, &state[..*used])
                .unwrap_or_else(|e| panic!("topK: the prefix read_state_prefix took does not read alone: {e}"));
            assert_eq!(exact.to_state(), p.to_state());
        }
        (Ok(_), Err(e)) => panic!("topK: read_state accepted what read_state_prefix refused: {e}"),
        (Err(_), Err(_)) => {}
    }
    let Ok((sketch, _)) = prefix else {
        return;
    };
    assert_eq!(sketch.k(), k);
    assert!(sketch.len() <= 3 * k, "more than 3k counters");
    // The check is that the two agree.
    #[allow(clippy::len_zero)]
    let empty_by_len = sketch.len() == 0;
    assert_eq!(sketch.is_empty(), empty_by_len);
    let top = sketch.top();
    assert!(top.len() <= k && top.len() <= sketch.len());
    let written = sketch.to_state();
    let again = TopK::read_state(k, &written)
        .unwrap_or_else(|e| panic!("topK({k}): a state it wrote does not read back: {e}\nwritten: {}", hex(&written)));
    let rewritten = again.to_state();
    assert!(
        rewritten == written,
        "topK({k}): state bytes not stable\nfirst read -> {}\nre-read   -> {}",
        hex(&written),
        hex(&rewritten)
    );
    let mut appended = vec![0xAA];
    sketch.write_state(&mut appended);
    assert_eq!(&appended[1..], &written[..], "topK: write_state and to_state differ");
    // For its own k, write_state_for is write_state.
    let mut same_k = Vec::new();
    sketch.write_state_for(k, &mut same_k).expect("own k always fits");
    assert_eq!(same_k, written, "topK: write_state_for(own k) differs from write_state");
    // For another k it either refuses (too many counters) or writes a state that reads back
    // with that k and holds the same counters.
    for other in [1, 100, k + 1] {
        let mut out = Vec::new();
        match sketch.write_state_for(other, &mut out) {
            Ok(()) => {
                let read = TopK::read_state(other, &out).unwrap_or_else(|e| {
                    panic!("topK: a state written for k={other} does not read back with it: {e}\n{}", hex(&out))
                });
                assert_eq!(read.len(), sketch.len(), "topK: counters lost writing for k={other}");
            }
            Err(_) => {
                assert!(sketch.len() > 3 * other, "topK: write_state_for({other}) refused {} counters", sketch.len())
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
