//! The traqq listener against real NATS JetStream and ClickHouse, spoken to by traqq
//! 0.2.0's own client and by raw lines: what reaches the broker, errors word for word as
//! traqq's own server gives them, pipelining, connection bounds. The comparison of answers
//! with traqq's engine over the whole pipeline is in the root `tests/it/traqq.rs`.

mod fixture;
mod protocol;
