//! The dead-letter topic: a message that cannot be handled (unparseable, invalid, or a
//! payment for an order that never came) goes there unchanged, with why, where it came
//! from, and its original headers; the partition moves on.

use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};

use crate::events::producer::{EventPublisher, PublishError};

/// Where dead letters go.
#[derive(Clone)]
pub struct DeadLetters {
    publisher: EventPublisher,
    topic: String,
}

impl DeadLetters {
    pub fn new(publisher: EventPublisher, topic: String) -> Self {
        DeadLetters { publisher, topic }
    }

    /// Sends the original message with the reason; waits for the broker's acknowledgement.
    pub async fn send(
        &self,
        msg: &OwnedMessage,
        tag: &str,
        reason: &str,
    ) -> Result<(), PublishError> {
        tracing::warn!(
            topic = msg.topic(),
            partition = msg.partition(),
            offset = msg.offset(),
            tag,
            reason,
            "message sent to the dead-letter topic"
        );
        let key = msg
            .key()
            .and_then(|k| std::str::from_utf8(k).ok())
            .unwrap_or("")
            .to_string();
        let mut headers = OwnedHeaders::new();
        if let Some(original) = msg.headers() {
            for h in original.iter() {
                if let Some(value) = h.value {
                    headers = headers.insert(Header {
                        key: h.key,
                        value: Some(value),
                    });
                }
            }
        }
        let partition = msg.partition().to_string();
        let offset = msg.offset().to_string();
        let headers = headers
            .insert(Header {
                key: "dlq-reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "dlq-source-topic",
                value: Some(msg.topic()),
            })
            .insert(Header {
                key: "dlq-source-partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "dlq-source-offset",
                value: Some(offset.as_str()),
            });
        self.publisher
            .send(
                &self.topic,
                &key,
                msg.payload().unwrap_or_default(),
                headers,
            )
            .await
    }
}
