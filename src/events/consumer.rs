//! The Kafka consumer's lifecycle: subscribe, a receive loop feeding one worker per
//! partition (events::partition), the rejoin watchdog (events::rejoin), the lag gauge, and
//! on shutdown: finish the messages in hand, commit stored offsets, flush the producer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::{mpsc, watch};

use crate::config::KafkaSettings;
use crate::events::client_log::KafkaLogContext;
use crate::events::handlers::OrderEventHandler;
use crate::events::partition::partition_worker;
use crate::events::rejoin::RejoinWatchdog;

/// The consumer's context: librdkafka's logs (events::client_log), and the partitions a
/// rebalance took away, for the receive loop to retire their workers.
#[derive(Default)]
pub struct ConsumerEvents {
    log: KafkaLogContext,
    /// Revoked (topic, partition)s not yet handled; at most the partitions assigned.
    revoked: std::sync::Mutex<std::collections::HashSet<(String, i32)>>,
    /// Each live partition worker's revoked flag. A revoke sets it at once, inside the
    /// rebalance: the worker drops its queued messages and stops retrying (its offsets can
    /// no longer be stored), without waiting for the receive loop's next message.
    flags: std::sync::Mutex<HashMap<(String, i32), Arc<AtomicBool>>>,
}

impl ConsumerEvents {
    /// The flag a revoke of `partition` sets (the receive loop registers each new worker).
    fn register(&self, partition: (String, i32), flag: Arc<AtomicBool>) {
        if let Ok(mut flags) = self.flags.lock() {
            flags.insert(partition, flag);
        }
    }

    /// Records revoked partitions and tells their workers at once.
    fn revoke(&self, partitions: impl IntoIterator<Item = (String, i32)>) {
        let (Ok(mut revoked), Ok(mut flags)) = (self.revoked.lock(), self.flags.lock()) else {
            return;
        };
        for partition in partitions {
            if let Some(flag) = flags.remove(&partition) {
                flag.store(true, Ordering::Relaxed);
            }
            revoked.insert(partition);
        }
    }

    /// The partitions revoked since the last call.
    fn take_revoked(&self) -> Vec<(String, i32)> {
        match self.revoked.lock() {
            Ok(mut revoked) => revoked.drain().collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl ClientContext for ConsumerEvents {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.log.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason);
    }
}

impl ConsumerContext for ConsumerEvents {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            self.revoke(
                partitions
                    .elements()
                    .iter()
                    .map(|p| (p.topic().to_string(), p.partition())),
            );
        }
    }
}

/// A consumer whose closing (leaving the group, which waits for the broker) happens on a
/// thread of its own: dropping it never blocks the async runtime, not even when the broker
/// is gone.
pub struct ClosingConsumer {
    inner: Option<StreamConsumer<ConsumerEvents>>,
}

impl std::ops::Deref for ClosingConsumer {
    type Target = StreamConsumer<ConsumerEvents>;

    fn deref(&self) -> &StreamConsumer<ConsumerEvents> {
        // Only taken in drop.
        self.inner
            .as_ref()
            .unwrap_or_else(|| unreachable!("consumer used after drop"))
    }
}

impl Drop for ClosingConsumer {
    fn drop(&mut self) {
        if let Some(consumer) = self.inner.take() {
            let closing = std::thread::Builder::new()
                .name("kafka-close".into())
                .spawn(move || drop(consumer));
            if let Err(e) = closing {
                tracing::warn!(error = %e, "kafka consumer closed inline");
            }
        }
    }
}

/// The consumer settings of the service, without its group and client ids: offsets are
/// stored by hand after the work is durable, committed by librdkafka. Shared with the
/// benchmark's echo consumer, which measures the broker with the same settings.
pub fn consumer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "session.timeout.ms",
            settings.session_timeout_ms.to_string(),
        )
        .set("enable.partition.eof", "false")
        // Brokers that hold a fetch for its whole wait (tansu does) would add this much
        // latency to every message.
        .set("fetch.wait.max.ms", settings.fetch_wait_max_ms.to_string());
    config
}

/// The running consumer: a receive loop feeding one worker per partition.
pub struct KafkaConsumer {
    consumer: Arc<ClosingConsumer>,
    handler: OrderEventHandler,
    settings: KafkaSettings,
    /// What it subscribed to (a rejoin subscribes again).
    topics: Vec<String>,
}

impl KafkaConsumer {
    pub fn new(handler: OrderEventHandler) -> Result<Self, KafkaError> {
        let settings = handler.settings.kafka.clone();
        let consumer: StreamConsumer<ConsumerEvents> = consumer_config(&settings)
            .set("group.id", &settings.group_id)
            .set("client.id", &settings.client_id)
            .create_with_context(ConsumerEvents::default())?;
        let mut topics: Vec<&str> = Vec::new();
        if settings.consume_order_created || settings.consume_order_canceled {
            topics.push(&settings.order_topic);
        }
        if settings.consume_payment_succeeded {
            topics.push(&settings.payment_topic);
        }
        if settings.consume_aftersale_refunded {
            topics.push(&settings.aftersales_topic);
        }
        if !topics.is_empty() {
            consumer.subscribe(&topics)?;
        }
        let topics = topics.into_iter().map(str::to_string).collect();
        Ok(KafkaConsumer {
            consumer: Arc::new(ClosingConsumer {
                inner: Some(consumer),
            }),
            handler,
            settings,
            topics,
        })
    }

    /// Leaves the group and joins again when no partition has come for
    /// `kafka.rejoin_unassigned_ms` (events::rejoin says why), until `stop` turns true.
    async fn rejoin_watchdog(
        consumer: Arc<ClosingConsumer>,
        topics: Vec<String>,
        after: Duration,
        metrics: crate::metrics::Metrics,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut watchdog = RejoinWatchdog::new(after);
        if topics.is_empty() || after.is_zero() {
            return;
        }
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let assigned = consumer.assignment().map(|a| a.count() > 0).unwrap_or(true);
            if !watchdog.observe(assigned, Instant::now()) {
                continue;
            }
            tracing::warn!(
                unassigned_ms = after.as_millis() as u64,
                "kafka consumer has no partition: leaving the group and joining again"
            );
            metrics.kafka_rejoins.inc();
            consumer.unsubscribe();
            // The leave must reach the coordinator before the new join does.
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(3)) => {}
            }
            if let Err(e) = consumer.subscribe(&topics) {
                tracing::error!(error = %e, "kafka consumer could not subscribe again");
            }
        }
    }

    /// Runs until `stop` turns true; then lets the workers finish the message in hand,
    /// commits the stored offsets and flushes the producer.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        // Each partition's worker; its revoked flag is with the context (`register`).
        let mut workers: HashMap<(String, i32), mpsc::Sender<OwnedMessage>> = HashMap::new();
        let mut handles = Vec::new();
        let watchdog = actix::spawn(Self::rejoin_watchdog(
            self.consumer.clone(),
            self.topics.clone(),
            Duration::from_millis(self.settings.rejoin_unassigned_ms),
            self.handler.metrics.clone(),
            stop.clone(),
        ));
        // Its own task: the lag asks the broker for every partition's high watermark (one
        // request each, tens of ms each on tansu), and a receive loop that waited for it
        // held every message back for that long, every 5 s (the bench's p99 of 600 ms).
        let lag_sampler = actix::spawn(Self::lag_sampler(
            self.consumer.clone(),
            self.handler.metrics.clone(),
            stop.clone(),
        ));
        loop {
            let received = tokio::select! {
                _ = stop.changed() => break,
                received = self.consumer.recv() => received.map(|m| m.detach()),
            };
            if *stop.borrow() {
                break;
            }
            // Partitions a rebalance took away: their workers finish the messages in
            // flight and drop the queued ones (the new owner reads them again from the
            // committed offset); a later message of the partition gets a new worker.
            // This must stay between `recv` and the send below: rdkafka runs the rebalance
            // callback only inside `recv`, so a worker told to stop (it may have returned)
            // is out of the map before any message could be sent to it (a failed send ends
            // this loop).
            // (The rebalance already set their flags: here they only leave the map.)
            for partition in self.consumer.context().take_revoked() {
                workers.remove(&partition);
            }
            handles.retain(|h: &tokio::task::JoinHandle<()>| !h.is_finished());
            match received {
                Ok(msg) => {
                    let key = (msg.topic().to_string(), msg.partition());
                    let tx = workers.entry(key.clone()).or_insert_with(|| {
                        let (tx, rx) = mpsc::channel(self.settings.partition_queue);
                        let revoked = Arc::new(AtomicBool::new(false));
                        self.consumer.context().register(key, revoked.clone());
                        handles.push(actix::spawn(partition_worker(
                            rx,
                            self.consumer.clone(),
                            self.handler.clone(),
                            self.settings.clone(),
                            stop.clone(),
                            revoked,
                        )));
                        tx
                    });
                    // Waits when the worker is behind: backpressure on consumption.
                    if tx.send(msg).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "kafka receive failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        drop(workers);
        for handle in handles {
            let _ = handle.await;
        }
        watchdog.abort();
        lag_sampler.abort();
        // Both block on the broker: off the async runtime.
        let consumer = self.consumer.clone();
        let publisher = self.handler.publisher.clone();
        let finished = tokio::task::spawn_blocking(move || {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, "final offset commit");
            }
            if let Err(e) = publisher.flush(Duration::from_secs(10)) {
                tracing::warn!(error = %e, "producer flush on shutdown failed");
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(15), finished).await;
        tracing::info!("kafka consumer stopped");
    }

    /// Sets `kafka_consumer_lag_messages` every 5 s until stop.
    async fn lag_sampler(
        consumer: Arc<ClosingConsumer>,
        metrics: crate::metrics::Metrics,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            if *stop.borrow() {
                return;
            }
            if let Some(lag) = Self::lag(consumer.clone()).await {
                metrics.kafka_consumer_lag.set(lag);
            }
        }
    }

    async fn lag(consumer: Arc<ClosingConsumer>) -> Option<i64> {
        let lag = tokio::task::spawn_blocking(move || -> Option<i64> {
            let positions = consumer.position().ok()?;
            let mut lag = 0;
            for element in positions.elements() {
                let (_, high) = consumer
                    .fetch_watermarks(
                        element.topic(),
                        element.partition(),
                        Duration::from_millis(500),
                    )
                    .ok()?;
                if let rdkafka::Offset::Offset(position) = element.offset() {
                    lag += (high - position).max(0);
                }
            }
            Some(lag)
        })
        .await;
        lag.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoke_tells_the_partitions_workers_at_once_and_only_them() {
        let events = ConsumerEvents::default();
        let (p0, p1) = (("T".to_string(), 0), ("T".to_string(), 1));
        let (f0, f1) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        events.register(p0.clone(), f0.clone());
        events.register(p1.clone(), f1.clone());
        events.revoke([p0.clone()]);
        assert!(
            f0.load(Ordering::Relaxed),
            "the revoked partition's worker is told"
        );
        assert!(
            !f1.load(Ordering::Relaxed),
            "another partition's worker is not"
        );
        assert_eq!(events.take_revoked(), vec![p0.clone()]);
        assert!(events.take_revoked().is_empty());
        // A new worker of the partition, assigned again later, has a flag of its own.
        let again = Arc::new(AtomicBool::new(false));
        events.register(p0.clone(), again.clone());
        assert!(!again.load(Ordering::Relaxed));
        events.revoke([p0, p1]);
        assert!(again.load(Ordering::Relaxed) && f1.load(Ordering::Relaxed));
    }
}
