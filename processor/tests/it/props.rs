//! Property tests: merging is associative and commutative, and splitting a stream over
//! several sketches then merging equals one sketch over the whole stream.
//!
//! `uniqHLL12`'s small form stores keys in insertion order (as ClickHouse does), so
//! `a ∪ b` and `b ∪ a` hold the same keys in a different order while the set is small:
//! commutativity is byte-identical once the result is large and set-identical (same keys,
//! same estimate) while it is small. Associativity and stream splitting are byte-identical
//! in both forms.

use gallop_processor::sketch::{SumF64, SumU64, UniqHll12};
use proptest::prelude::*;

fn sketch(keys: &[u64]) -> UniqHll12 {
    let mut h = UniqHll12::new();
    keys.iter().for_each(|&k| h.insert_u64(k));
    h
}

fn merged(a: &UniqHll12, b: &UniqHll12) -> UniqHll12 {
    let mut m = a.clone();
    m.merge(b);
    m
}

/// Small states with their keys sorted, so set equality can be compared as bytes.
fn canonical(h: &UniqHll12) -> Vec<u8> {
    let state = h.to_state();
    if h.is_large() {
        return state;
    }
    let mut keys: Vec<&[u8]> = state[2..].chunks(8).collect();
    keys.sort();
    [state[..2].to_vec(), keys.concat()].concat()
}

/// Key streams from a small domain (so they repeat and overlap) or the full range, of
/// sizes on both sides of the 16-key small set.
fn keys() -> impl Strategy<Value = Vec<u64>> {
    prop_oneof![prop::collection::vec(0u64..40, 0..40), prop::collection::vec(any::<u64>(), 0..300),]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn hll_merge_is_associative(a in keys(), b in keys(), c in keys()) {
        let (a, b, c) = (sketch(&a), sketch(&b), sketch(&c));
        prop_assert_eq!(
            merged(&merged(&a, &b), &c).to_state(),
            merged(&a, &merged(&b, &c)).to_state()
        );
    }

    #[test]
    fn hll_merge_is_commutative(a in keys(), b in keys()) {
        let (a, b) = (sketch(&a), sketch(&b));
        let (ab, ba) = (merged(&a, &b), merged(&b, &a));
        prop_assert_eq!(ab.estimate(), ba.estimate());
        prop_assert_eq!(canonical(&ab), canonical(&ba));
        if ab.is_large() {
            prop_assert_eq!(ab.to_state(), ba.to_state());
        }
    }

    #[test]
    fn hll_split_stream_merges_to_the_whole(stream in keys(), cut in any::<prop::sample::Index>()) {
        let at = cut.index(stream.len() + 1);
        let whole = sketch(&stream);
        let parts = merged(&sketch(&stream[..at]), &sketch(&stream[at..]));
        prop_assert_eq!(parts.to_state(), whole.to_state());
        prop_assert_eq!(
            UniqHll12::read_state(&whole.to_state()).map(|h| h.to_state()),
            Ok(whole.to_state())
        );
    }

    #[test]
    fn sums_split_and_merge_exactly(values in prop::collection::vec(any::<u64>(), 0..100), cut in any::<prop::sample::Index>()) {
        let at = cut.index(values.len() + 1);
        let total = |vs: &[u64]| {
            let mut s = SumU64::new();
            vs.iter().for_each(|&v| s.add(v));
            s
        };
        let mut left = total(&values[..at]);
        let right = total(&values[at..]);
        let mut swapped = right;
        swapped.merge(&left);
        left.merge(&right);
        prop_assert_eq!(left, total(&values));
        prop_assert_eq!(swapped, left);
    }

    #[test]
    fn float_sums_of_integers_split_and_merge_exactly(values in prop::collection::vec(-1_000_000i32..1_000_000, 0..100), cut in any::<prop::sample::Index>()) {
        // Integer-valued doubles far below 2^53 add exactly in any order.
        let at = cut.index(values.len() + 1);
        let total = |vs: &[i32]| {
            let mut s = SumF64::new();
            vs.iter().for_each(|&v| s.add(f64::from(v)));
            s
        };
        let mut left = total(&values[..at]);
        left.merge(&total(&values[at..]));
        prop_assert_eq!(left, total(&values));
    }
}
