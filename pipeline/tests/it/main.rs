//! The runtime against the in-process broker and the memory store: the exactly-once rules
//! under crashes injected at every step, gaps, log-range checks and the dedup window. No
//! timing is asserted; every wait is on a condition.

mod exactly_once;
mod fencing;
mod harness;
mod log_range;
