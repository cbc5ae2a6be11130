//! Publishing to Kafka: an idempotent producer whose sends are confirmed (the caller
//! awaits the broker's acknowledgement) before the consumer stores its offset. A full
//! local queue makes sends wait: backpressure, not unbounded memory.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::events::client_log::KafkaLogContext;
use rdkafka::util::Timeout;

use crate::config::KafkaSettings;
use crate::events::wire::{Outcome, StockLevelMessage};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("encoding: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Creates the configured topics that do not exist yet. Failures are logged, not fatal:
/// a broker without CreateTopics (or with auto-creation) still works.
pub async fn ensure_topics(settings: &KafkaSettings) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<KafkaLogContext> = match ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .create_with_context(KafkaLogContext::default())
    {
        Ok(admin) => admin,
        Err(e) => {
            tracing::warn!(error = %e, "kafka admin client");
            return;
        }
    };
    let names = [
        &settings.order_topic,
        &settings.payment_topic,
        &settings.aftersales_topic,
        &settings.inventory_topic,
        &settings.dead_letter_topic,
        &settings.alert_topic,
    ];
    let topics: Vec<NewTopic> = names
        .iter()
        .filter(|name| !name.is_empty())
        .map(|name| NewTopic::new(name, settings.topic_partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    match admin.create_topics(&topics, &options).await {
        Ok(results) => {
            for result in results {
                match result {
                    Ok(name) => tracing::info!(topic = %name, "kafka topic created"),
                    Err((name, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                        tracing::debug!(topic = %name, "kafka topic exists")
                    }
                    Err((name, code)) => {
                        tracing::warn!(topic = %name, error = %code, "kafka topic not created")
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "kafka topics not created"),
    }
}

#[derive(Clone)]
pub struct EventPublisher {
    producer: FutureProducer<KafkaLogContext>,
    settings: KafkaSettings,
}

impl EventPublisher {
    pub fn new(settings: &KafkaSettings) -> Result<Self, KafkaError> {
        let producer: FutureProducer<KafkaLogContext> = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("client.id", &settings.client_id)
            .set(
                "enable.idempotence",
                if settings.idempotent_producer {
                    "true"
                } else {
                    "false"
                },
            )
            .set("acks", "all")
            .set(
                "queue.buffering.max.messages",
                settings.producer_queue_messages.to_string(),
            )
            .set(
                "message.timeout.ms",
                settings.delivery_timeout_ms.to_string(),
            )
            .set("linger.ms", settings.linger_ms.to_string())
            .create_with_context(KafkaLogContext::default())?;
        Ok(EventPublisher {
            producer,
            settings: settings.clone(),
        })
    }

    /// Publishes to `topic` and waits for the broker's acknowledgement.
    pub async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<(), PublishError> {
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        // Waits up to the delivery timeout for room in a full local queue.
        let queue_wait = Timeout::After(Duration::from_millis(self.settings.delivery_timeout_ms));
        self.producer
            .send(record, queue_wait)
            .await
            .map(|_| ())
            .map_err(|(e, _)| PublishError::Kafka(e))
    }

    /// Publishes an order's outcome to the inventory topic (tag and trace id as headers,
    /// the orderNo as key).
    pub async fn publish_outcome(&self, outcome: &Outcome) -> Result<(), PublishError> {
        let envelope = outcome.envelope(&self.settings.source);
        let body = serde_json::to_vec(&envelope)?;
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "tag",
                value: Some(outcome.tag.as_str()),
            })
            .insert(Header {
                key: "traceId",
                value: Some(outcome.trace_id.as_str()),
            });
        self.send(
            &self.settings.inventory_topic,
            &outcome.order_no,
            &body,
            headers,
        )
        .await
    }

    /// Sends a stock-level event to `topic` and waits for the broker's acknowledgement.
    pub async fn publish_stock_level(
        &self,
        topic: &str,
        message: &StockLevelMessage,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(&message.envelope)?;
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "tag",
                value: Some(message.tag),
            })
            .insert(Header {
                key: "traceId",
                value: Some(message.trace_id.as_str()),
            });
        self.send(topic, &message.key, &body, headers).await
    }

    /// Waits for everything queued to be delivered (shutdown).
    pub fn flush(&self, limit: Duration) -> Result<(), KafkaError> {
        self.producer.flush(Timeout::After(limit))
    }

    pub fn settings(&self) -> &KafkaSettings {
        &self.settings
    }
}
