//! One worker per partition: up to `kafka.partition_concurrency` messages in flight, never
//! two with the same key (the orderNo, so an order's events keep their order), and offsets
//! stored in order, only up to the first message not yet done, and only once its work is
//! durable and its outcome acknowledged (at-least-once; `enable.auto.offset.store=false`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::{mpsc, watch};

use crate::config::KafkaSettings;
use crate::events::consumer::ClosingConsumer;
use crate::events::handlers::{header, OrderEventHandler, Retry, NOT_YET_ATTEMPTS};

/// Which offsets of a partition may be stored: only up to the first message not yet done,
/// however the ones after it finish (plain struct, unit-tested).
#[derive(Debug, Default)]
pub struct OffsetTracker {
    dispatched: std::collections::VecDeque<i64>,
    completed: std::collections::BTreeSet<i64>,
}

impl OffsetTracker {
    pub fn dispatch(&mut self, offset: i64) {
        self.dispatched.push_back(offset);
    }

    /// Marks `offset` done; returns the offset to store (next to read) if it advanced.
    pub fn complete(&mut self, offset: i64) -> Option<i64> {
        self.completed.insert(offset);
        let mut advanced = None;
        while let Some(&front) = self.dispatched.front() {
            if !self.completed.remove(&front) {
                break;
            }
            self.dispatched.pop_front();
            advanced = Some(front + 1);
        }
        advanced
    }
}

/// Handles one message until it is done (true), or until stop is requested (false).
async fn process_message(
    msg: &OwnedMessage,
    handler: &OrderEventHandler,
    settings: &KafkaSettings,
    stop: &watch::Receiver<bool>,
    revoked: &AtomicBool,
) -> bool {
    let mut attempt: u32 = 0;
    loop {
        match handler.handle(msg).await {
            Ok(_) => return true,
            Err(Retry::NotYet(reason)) if attempt + 1 >= NOT_YET_ATTEMPTS => {
                let tag = header(msg, "tag").unwrap_or("").to_string();
                match handler.dead_letter(msg, &tag, &reason).await {
                    Ok(_) => return true,
                    Err(_) => attempt += 1,
                }
            }
            Err(Retry::NotYet(reason)) | Err(Retry::Transient(reason)) => {
                tracing::warn!(
                    topic = msg.topic(),
                    partition = msg.partition(),
                    offset = msg.offset(),
                    attempt,
                    reason,
                    "message will be retried"
                );
                attempt = attempt.saturating_add(1);
            }
        }
        if *stop.borrow() || revoked.load(Ordering::Relaxed) {
            // Not done: its offset is not stored, so it is redelivered (after a restart, or
            // to the partition's new owner).
            return false;
        }
        let pause = settings
            .retry_min_ms
            .saturating_mul(1u64 << attempt.min(16))
            .min(settings.retry_max_ms);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// One partition: up to `partition_concurrency` messages in flight, but never two with
/// the same key (an order's cancel waits for its creation); offsets are stored in order.
pub async fn partition_worker(
    mut rx: mpsc::Receiver<OwnedMessage>,
    consumer: Arc<ClosingConsumer>,
    handler: OrderEventHandler,
    settings: KafkaSettings,
    stop: watch::Receiver<bool>,
    revoked: Arc<AtomicBool>,
) {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let max = settings.partition_concurrency.max(1);
    let mut in_flight = FuturesUnordered::new();
    let mut keys: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
    let mut offsets = OffsetTracker::default();
    let mut waiting: Option<OwnedMessage> = None;
    let mut closed = false;
    let mut stopping = false;
    loop {
        // Revoked: no new message starts; those queued are dropped unhandled (the new owner
        // of the partition reads them again), those in flight finish.
        if revoked.load(Ordering::Relaxed) {
            stopping = true;
            waiting = None;
        }
        // Start what may start.
        while !stopping && in_flight.len() < max {
            let msg = match waiting.take() {
                Some(msg) => msg,
                None => match rx.try_recv() {
                    Ok(msg) => msg,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                },
            };
            let key = msg.key().map(<[u8]>::to_vec).unwrap_or_default();
            if keys.contains(&key) {
                waiting = Some(msg);
                break;
            }
            keys.insert(key.clone());
            offsets.dispatch(msg.offset());
            let (handler, settings, stop) = (handler.clone(), settings.clone(), stop.clone());
            let revoked = revoked.clone();
            in_flight.push(async move {
                let done = process_message(&msg, &handler, &settings, &stop, &revoked).await;
                (msg, key, done)
            });
        }
        if in_flight.is_empty() {
            if closed || stopping {
                return;
            }
            match rx.recv().await {
                Some(msg) => waiting = Some(msg),
                None => return,
            }
            continue;
        }
        let can_take = waiting.is_none() && !closed && !stopping && in_flight.len() < max;
        tokio::select! {
            finished = in_flight.next() => {
                let Some((msg, key, done)) = finished else { continue };
                keys.remove(&key);
                if !done {
                    stopping = true;
                    continue;
                }
                if let Some(next) = offsets.complete(msg.offset()) {
                    // Produced, offset not stored: the message comes again after a restart.
                    if crate::fault::point("kafka.before_offset_store").await.is_err() {
                        continue;
                    }
                    if let Err(e) = consumer.store_offset(msg.topic(), msg.partition(), next) {
                        // A revoked partition: its new owner re-reads from the committed offset.
                        tracing::debug!(error = %e, "offset not stored");
                        handler.metrics.kafka_offset_store_failures.inc();
                    }
                }
            }
            received = rx.recv(), if can_take => match received {
                Some(msg) => waiting = Some(msg),
                None => closed = true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_stored_only_up_to_the_first_unfinished_message() {
        let mut t = OffsetTracker::default();
        for offset in [10, 11, 12] {
            t.dispatch(offset);
        }
        assert_eq!(t.complete(11), None, "10 is still in flight");
        assert_eq!(t.complete(10), Some(12));
        t.dispatch(13);
        assert_eq!(t.complete(13), None);
        assert_eq!(t.complete(12), Some(14));
    }
}
