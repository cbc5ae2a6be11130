//! Events on Kafka: the reference's wire format and the producer.

pub mod producer;
pub mod wire;
