//! librdkafka's logs and errors, routed through `tracing` (target `librdkafka`).
//!
//! While a broker is unreachable, librdkafka reports every failed connection attempt and
//! every "all brokers down", several times a second per client. Those are expected during a
//! broker restart and already visible elsewhere (consumer lag, `/health/ready`, delivery
//! failures, which are retried). So a streak of them is logged once at WARN and then at
//! DEBUG until a minute has passed; anything else (authentication, a fatal producer error,
//! an unknown topic...) keeps its level.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// How often a streak of connection failures is logged at WARN.
const CONNECTION_WARN_EVERY_MS: u64 = 60_000;

/// The client context of every Kafka client the service creates.
#[derive(Debug, Default)]
pub struct KafkaLogContext {
    /// When a connection failure was last logged at WARN (ms since the epoch).
    last_connection_warn_ms: AtomicU64,
}

/// Whether an error code means "the broker cannot be reached right now".
pub fn is_connection_failure(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::NetworkException
    )
}

/// Whether a librdkafka log line reports a failed connection (facility FAIL, or the text
/// of one), rather than anything else at error level.
fn is_connection_log(facility: &str, message: &str) -> bool {
    facility == "FAIL"
        || message.contains("Connection refused")
        || message.contains("Disconnected")
        || message.contains("brokers are down")
}

impl KafkaLogContext {
    /// True when this connection failure should be logged at WARN (the first of a
    /// minute), false for DEBUG.
    fn warn_now(&self) -> bool {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let last = self.last_connection_warn_ms.load(Ordering::Relaxed);
        now_ms.saturating_sub(last) >= CONNECTION_WARN_EVERY_MS
            && self
                .last_connection_warn_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn connection_failure(&self, what: &str, detail: &str) {
        if self.warn_now() {
            tracing::warn!(
                target: "librdkafka",
                detail,
                "{what} (repeats are logged at DEBUG for a minute)"
            );
        } else {
            tracing::debug!(target: "librdkafka", detail, "{what}");
        }
    }
}

impl ClientContext for KafkaLogContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                if is_connection_log(facility, message) {
                    self.connection_failure("kafka broker connection failed", message);
                } else {
                    tracing::error!(target: "librdkafka", facility, "{message}");
                }
            }
            RDKafkaLogLevel::Warning => {
                if is_connection_log(facility, message) {
                    self.connection_failure("kafka broker connection failed", message);
                } else {
                    tracing::warn!(target: "librdkafka", facility, "{message}");
                }
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", facility, "{message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(code) if is_connection_failure(code) => {
                self.connection_failure("kafka brokers unreachable", reason)
            }
            _ => {
                tracing::error!(target: "librdkafka", error = %error, reason, "kafka client error")
            }
        }
    }
}

impl ConsumerContext for KafkaLogContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streak_of_connection_failures_warns_once_a_minute() {
        let context = KafkaLogContext::default();
        assert!(context.warn_now());
        assert!(!context.warn_now());
        assert!(!context.warn_now());
        context.last_connection_warn_ms.store(0, Ordering::Relaxed);
        assert!(context.warn_now());
    }

    #[test]
    fn connection_failures_are_told_from_other_errors() {
        assert!(is_connection_failure(RDKafkaErrorCode::AllBrokersDown));
        assert!(is_connection_failure(
            RDKafkaErrorCode::BrokerTransportFailure
        ));
        assert!(!is_connection_failure(
            RDKafkaErrorCode::SaslAuthenticationFailed
        ));
        assert!(!is_connection_failure(
            RDKafkaErrorCode::UnknownTopicOrPartition
        ));
        assert!(is_connection_log(
            "FAIL",
            "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused"
        ));
        assert!(!is_connection_log("SASL", "SASL authentication failed"));
    }
}
