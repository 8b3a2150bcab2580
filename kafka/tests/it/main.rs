//! The Kafka adapter against a real Kafka-protocol broker (Tansu at 127.0.0.1:9092, or
//! `TEST_GALLOP_KAFKA_BOOTSTRAP`) and librdkafka's mock cluster for fault injection; each
//! test on topics of its own.

mod broker;
