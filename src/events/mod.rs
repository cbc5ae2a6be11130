//! Events on Kafka: the reference's wire format and the producer.

pub mod client_log;
pub mod consume_log;
pub mod producer;
pub mod rejoin;
pub mod wire;
