//! Events on Kafka: the reference's wire format, the producer, and the consumer that
//! drives the engine from the order, payment and after-sales topics.

pub mod client_log;
pub mod consume_log;
pub mod consumer;
pub mod dlq;
pub mod handlers;
pub mod partition;
pub mod producer;
pub mod rejoin;
pub mod wire;
