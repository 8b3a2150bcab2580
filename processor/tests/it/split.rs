//! Splitting a stream over two processors (as two instances owning disjoint partitions
//! do) and merging their deltas gives what one processor gives: counters and sums exactly,
//! visitor sketches with the same estimate and, once in register form, the same bytes.

use std::collections::BTreeMap;

use gallop_config::{ProcessorConfig, TimeConfig};
use gallop_event::EventRecord;
use gallop_processor::{sketch::UniqHll12, Delta, Processor};
use proptest::prelude::*;

const T0: i64 = 1_795_428_000_000;

type Key = (String, i64, String, String);
type Merged = BTreeMap<Key, (u64, f64, u64, UniqHll12)>;

fn merge_into(acc: &mut Merged, delta: Delta) {
    for row in delta.rows {
        let entry = acc
            .entry((row.site, row.bucket, row.dimension, row.value))
            .or_insert_with(|| (0, 0.0, 0, UniqHll12::new()));
        entry.0 = entry.0.wrapping_add(row.events);
        entry.1 += row.value_sum;
        entry.2 = entry.2.wrapping_add(row.value_count);
        entry.3.merge(&row.visitors);
    }
}

fn arb_event() -> impl Strategy<Value = (u8, u8, u8, u16, i64, Option<u8>, Option<u8>)> {
    // (site, name, path, visitor, offset ms, value in halves, plan)
    (0u8..2, 0u8..3, 0u8..6, 0u16..400, 0i64..180_000, proptest::option::of(0u8..20), proptest::option::of(0u8..3))
}

fn build(e: &(u8, u8, u8, u16, i64, Option<u8>, Option<u8>)) -> EventRecord {
    let mut r = EventRecord::new();
    r.site = format!("site{}.example", e.0);
    r.name = ["pageview", "signup", "purchase"][e.1 as usize].to_owned();
    r.host = r.site.clone();
    r.path = format!("/p{}", e.2);
    r.visitor = u64::from(e.3).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    r.ts = T0 + e.4;
    // Halves are exact in binary floating point, so sums do not depend on order.
    r.value = e.5.map(|v| f64::from(v) / 2.0);
    if let Some(plan) = e.6 {
        r.props.insert("plan".into(), ["free", "pro", "team"][plan as usize].into());
    }
    r
}

fn run(events: &[EventRecord], partition_of: impl Fn(&EventRecord) -> Option<u32>) -> Merged {
    let mut processor = Processor::new(&ProcessorConfig::default(), &TimeConfig::default()).expect("config");
    let mut merged = Merged::new();
    for (i, event) in events.iter().enumerate() {
        if let Some(partition) = partition_of(event) {
            processor.process(partition, event, T0 + 200_000).expect("room");
        }
        // Flush now and then, as the time trigger would.
        if i % 37 == 36 {
            merge_into(&mut merged, processor.flush(T0));
        }
    }
    merge_into(&mut merged, processor.flush(T0));
    merged
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn two_processors_on_disjoint_partitions_equal_one(raw in proptest::collection::vec(arb_event(), 1..400)) {
        let events: Vec<EventRecord> = raw.iter().map(build).collect();
        let partition = |e: &EventRecord| (e.visitor % 2) as u32;
        let whole = run(&events, |e| Some(partition(e)));
        let mut split = run(&events, |e| (partition(e) == 0).then_some(0));
        let other = run(&events, |e| (partition(e) == 1).then_some(1));
        for (key, (events, sum, count, hll)) in other {
            let entry = split.entry(key).or_insert_with(|| (0, 0.0, 0, UniqHll12::new()));
            entry.0 = entry.0.wrapping_add(events);
            entry.1 += sum;
            entry.2 = entry.2.wrapping_add(count);
            entry.3.merge(&hll);
        }
        prop_assert_eq!(whole.len(), split.len());
        for (key, (events, sum, count, hll)) in &whole {
            let (s_events, s_sum, s_count, s_hll) = &split[key];
            prop_assert_eq!((events, sum, count), (s_events, s_sum, s_count), "{:?}", key);
            prop_assert_eq!(hll.estimate(), s_hll.estimate(), "{:?}", key);
            if hll.is_large() {
                prop_assert_eq!(hll.to_state(), s_hll.to_state(), "{:?}", key);
            }
        }
    }
}
