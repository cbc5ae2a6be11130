//! The Kafka entry point: consumes the order, payment and after-sales events the
//! reference's services publish, drives the same engine as HTTP, publishes the outcome, and
//! only then stores the offset (at-least-once; `enable.auto.offset.store=false`).
//!
//! One worker per partition keeps each partition's order while partitions run
//! concurrently. Idempotency layer 1 is `t_mq_consume_log` keyed (messageId, group): a
//! redelivered ORDER_CREATED republishes its recorded outcome and reserves nothing.
//! Unparseable or invalid messages go to the dead-letter topic with the reason.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};

use crate::config::{KafkaSettings, Settings};
use crate::domain::{LedgerReason, SkuKey};
use crate::engine::reservation::{ReservationEngine, ReserveRequest};
use crate::engine::stock::{AdjustRequest, StockService};
use crate::engine::EngineError;
use crate::events::client_log::KafkaLogContext;
use crate::events::consume_log::ConsumeLogBatcher;
use crate::events::producer::EventPublisher;
use crate::events::rejoin::RejoinWatchdog;
use crate::events::wire::{
    self, AfterSaleRefundedEvent, Envelope, OrderCanceledEvent, OrderCreatedEvent, Outcome,
    PaymentSucceededEvent, StockItem, StockReserveFailedEvent, StockReservedEvent,
};
use crate::metrics::Metrics;
use crate::store::db::DbPool;
use crate::store::models::NewConsumeLog;
use crate::store::reservations::OrderLine;

/// Why a message is not done yet.
#[derive(Debug)]
pub enum Retry {
    /// A store or the broker failed: try the same message again (forever, with backoff).
    Transient(String),
    /// It may succeed later (a payment that overtook its order): a few tries, then the
    /// dead-letter topic.
    NotYet(String),
}

const NOT_YET_ATTEMPTS: u32 = 5;

/// What handling a message came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    Published(String),
    Republished(String),
    Applied,
    Ignored,
    DeadLettered(String),
}

#[derive(Clone)]
pub struct OrderEventHandler {
    reservations: ReservationEngine,
    stock: StockService,
    publisher: EventPublisher,
    log: ConsumeLogBatcher,
    settings: Settings,
    metrics: Metrics,
}

fn header<'a>(msg: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    let headers = msg.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

fn transient(e: impl std::fmt::Display) -> Retry {
    Retry::Transient(e.to_string())
}

fn parse<T: DeserializeOwned>(what: &str, text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| format!("{what} cannot be parsed: {e}"))
}

fn is_transient(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::Overloaded
            | EngineError::Timeout
            | EngineError::JournalFull
            | EngineError::JournalBehind(_)
            | EngineError::Redis(_)
            | EngineError::Db(_)
    )
}

/// The reference's error code for a failed reservation.
fn failure_code(e: &EngineError) -> &'static str {
    match e {
        EngineError::InsufficientStock { .. } => "INSUFFICIENT_STOCK",
        EngineError::InventoryNotFound(_) => "INVENTORY_NOT_FOUND",
        EngineError::SkuNotFound(_) => "SKU_NOT_FOUND",
        EngineError::IdempotencyConflict(_) => "CONCURRENT_CONFLICT",
        EngineError::OrderCancelled(_) | EngineError::InvalidStatus(_) => {
            "INVALID_RESERVATION_STATUS"
        }
        _ => "SYSTEM_ERROR",
    }
}

impl OrderEventHandler {
    pub fn new(
        reservations: ReservationEngine,
        stock: StockService,
        publisher: EventPublisher,
        pool: DbPool,
        settings: Settings,
        metrics: Metrics,
    ) -> Self {
        let log = ConsumeLogBatcher::start(pool, settings.kafka.group_id.clone());
        OrderEventHandler {
            reservations,
            stock,
            publisher,
            log,
            settings,
            metrics,
        }
    }

    fn kafka(&self) -> &KafkaSettings {
        &self.settings.kafka
    }

    /// The tag: the `tag` header, or else the envelope's event type.
    fn tag_of(msg: &OwnedMessage, envelope: Option<&Envelope>) -> String {
        if let Some(tag) = header(msg, "tag") {
            return tag.to_string();
        }
        match envelope.map(|e| e.event_type.as_str()) {
            Some("OrderCreatedEvent") => wire::TAG_ORDER_CREATED.into(),
            Some("OrderCanceledEvent") | Some("OrderCancelledEvent") => {
                wire::TAG_ORDER_CANCELED.into()
            }
            Some("PaymentSucceededEvent") => wire::TAG_PAYMENT_SUCCEEDED.into(),
            Some("AfterSaleRefundedEvent") | Some("AftersaleRefundedEvent") => {
                wire::TAG_AFTERSALE_REFUNDED.into()
            }
            _ => String::new(),
        }
    }

    /// Handles one message completely, or says why it must be tried again.
    pub async fn handle(&self, msg: &OwnedMessage) -> Result<Handled, Retry> {
        let started = Instant::now();
        let text = match msg.payload().map(std::str::from_utf8) {
            Some(Ok(text)) => text,
            Some(Err(_)) => return self.dead_letter(msg, "", "payload is not UTF-8").await,
            None => return self.dead_letter(msg, "", "empty message").await,
        };
        let envelope: Envelope = match parse("envelope", text) {
            Ok(env) => env,
            Err(reason) => {
                let tag = Self::tag_of(msg, None);
                return self.dead_letter(msg, &tag, &reason).await;
            }
        };
        let tag = Self::tag_of(msg, Some(&envelope));
        let k = self.kafka();
        let enabled = match tag.as_str() {
            wire::TAG_ORDER_CREATED => k.consume_order_created,
            wire::TAG_ORDER_CANCELED => k.consume_order_canceled,
            wire::TAG_PAYMENT_SUCCEEDED => k.consume_payment_succeeded,
            wire::TAG_AFTERSALE_REFUNDED => k.consume_aftersale_refunded,
            // Other events on these topics are not ours.
            _ => false,
        };
        if !enabled {
            self.count(&tag, "ignored");
            return Ok(Handled::Ignored);
        }
        if envelope.message_id.is_empty() || envelope.message_id.len() > 64 {
            return self
                .dead_letter(msg, &tag, "messageId must be 1-64 characters")
                .await;
        }

        // Idempotency layer 1.
        let group = k.group_id.clone();
        let previous = self
            .log
            .find(&envelope.message_id)
            .await
            .map_err(Retry::Transient)?;
        if let Some(log) = previous.filter(|l| l.status == "SUCCESS") {
            if tag == wire::TAG_ORDER_CREATED {
                if let Some(outcome) = log
                    .result
                    .as_deref()
                    .and_then(|r| serde_json::from_str::<Outcome>(r).ok())
                {
                    self.publish(&outcome).await?;
                    self.count(&tag, "redelivered");
                    return Ok(Handled::Republished(outcome.tag));
                }
            }
            self.count(&tag, "redelivered");
            return Ok(Handled::Ignored);
        }

        let trace_id = envelope
            .trace_id
            .clone()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| envelope.message_id.clone());
        let (handled, result) = match tag.as_str() {
            wire::TAG_ORDER_CREATED => {
                let event: OrderCreatedEvent = match parse("OrderCreatedEvent", &envelope.payload) {
                    Ok(e) => e,
                    Err(reason) => return self.dead_letter(msg, &tag, &reason).await,
                };
                match self
                    .order_created(&event, &envelope.message_id, &trace_id)
                    .await?
                {
                    Ok(outcome) => {
                        self.publish(&outcome).await?;
                        let result = serde_json::to_string(&outcome).map_err(transient)?;
                        (Handled::Published(outcome.tag), result)
                    }
                    Err(reason) => return self.dead_letter(msg, &tag, &reason).await,
                }
            }
            wire::TAG_ORDER_CANCELED => {
                let event: OrderCanceledEvent = match parse("OrderCanceledEvent", &envelope.payload)
                {
                    Ok(e) => e,
                    Err(reason) => return self.dead_letter(msg, &tag, &reason).await,
                };
                match self.order_canceled(&event, &trace_id).await? {
                    Ok(result) => (Handled::Applied, result),
                    Err(reason) => return self.dead_letter(msg, &tag, &reason).await,
                }
            }
            wire::TAG_PAYMENT_SUCCEEDED => {
                let event: PaymentSucceededEvent =
                    match parse("PaymentSucceededEvent", &envelope.payload) {
                        Ok(e) => e,
                        Err(reason) => return self.dead_letter(msg, &tag, &reason).await,
                    };
                match self.payment_succeeded(&event, &trace_id).await? {
                    Ok(result) => (Handled::Applied, result),
                    Err(reason) => return self.dead_letter(msg, &tag, &reason).await,
                }
            }
            _ => {
                let event: AfterSaleRefundedEvent =
                    match parse("AfterSaleRefundedEvent", &envelope.payload) {
                        Ok(e) => e,
                        Err(reason) => return self.dead_letter(msg, &tag, &reason).await,
                    };
                match self.aftersale_refunded(&event, &trace_id).await? {
                    Ok(result) => (Handled::Applied, result),
                    Err(reason) => return self.dead_letter(msg, &tag, &reason).await,
                }
            }
        };
        let row = NewConsumeLog {
            event_id: envelope.message_id.clone(),
            consumer_group: group,
            topic: msg.topic().to_string(),
            tag: Some(tag.clone()),
            business_key: envelope
                .business_key
                .clone()
                .map(|k| k.chars().take(64).collect()),
            status: "SUCCESS".to_string(),
            result: Some(result),
            cost_ms: Some(started.elapsed().as_millis().min(i32::MAX as u128) as i32),
        };
        self.log.record(row).await.map_err(Retry::Transient)?;
        self.count(&tag, "ok");
        Ok(handled)
    }

    /// Reserves; Ok(outcome to publish) or Err(reason for the dead-letter topic).
    /// The outcome's eventId and its envelope's messageId are derived from the incoming
    /// messageId (UUID v5), so a redelivery publishes the identical message.
    async fn order_created(
        &self,
        event: &OrderCreatedEvent,
        message_id: &str,
        trace_id: &str,
    ) -> Result<Result<Outcome, String>, Retry> {
        let event_id = wire::derived_id(message_id, "outcome-event");
        let envelope_id = wire::derived_id(message_id, "outcome-envelope");
        let default_warehouse = self.settings.inventory.default_warehouse_id;
        let lines: Vec<OrderLine> = event
            .items
            .iter()
            .map(|i| OrderLine {
                key: SkuKey::new(i.warehouse_id.unwrap_or(default_warehouse), i.sku_id),
                qty: i.qty,
            })
            .collect();
        let requested: Vec<StockItem> = lines
            .iter()
            .map(|l| StockItem {
                sku_id: l.key.sku_id,
                warehouse_id: l.key.warehouse_id,
                qty: l.qty,
            })
            .collect();
        let result = self
            .reservations
            .reserve(ReserveRequest {
                order_no: event.order_no.clone(),
                lines,
                trace_id: trace_id.to_string(),
            })
            .await;
        let outcome = match result {
            Ok(held) => Outcome::reserved(
                &StockReservedEvent {
                    event_id,
                    order_no: event.order_no.clone(),
                    items: held
                        .items
                        .iter()
                        .map(|l| StockItem {
                            sku_id: l.sku_id,
                            warehouse_id: l.warehouse_id,
                            qty: l.qty,
                        })
                        .collect(),
                    event_time: wire::now_event_time(),
                    trace_id: trace_id.to_string(),
                    version: wire::EVENT_VERSION.to_string(),
                },
                envelope_id,
            ),
            Err(e) if is_transient(&e) => return Err(transient(e)),
            Err(e @ (EngineError::Invalid(_) | EngineError::QuantityOutOfRange(_))) => {
                return Ok(Err(format!("invalid OrderCreatedEvent: {e}")))
            }
            Err(e) => {
                let failed_sku_id = match &e {
                    EngineError::InsufficientStock { key, .. }
                    | EngineError::InventoryNotFound(key) => Some(key.sku_id),
                    _ => None,
                };
                Outcome::failed(
                    &StockReserveFailedEvent {
                        event_id,
                        order_no: event.order_no.clone(),
                        error_code: failure_code(&e).to_string(),
                        error_message: e.to_string(),
                        failed_sku_id,
                        requested_items: requested,
                        event_time: wire::now_event_time(),
                        trace_id: trace_id.to_string(),
                        version: wire::EVENT_VERSION.to_string(),
                    },
                    envelope_id,
                )
            }
        };
        outcome.map(Ok).map_err(transient)
    }

    async fn order_canceled(
        &self,
        event: &OrderCanceledEvent,
        trace_id: &str,
    ) -> Result<Result<String, String>, Retry> {
        let remark: String = event
            .cancel_reason
            .clone()
            .unwrap_or_else(|| "order canceled".to_string())
            .chars()
            .take(255)
            .collect();
        match self
            .reservations
            .release(&event.order_no, LedgerReason::Release, &remark, trace_id)
            .await
        {
            Ok(outcome) => Ok(Ok(format!("RELEASED existed={}", outcome.existed))),
            // Cancelled before we saw the order: the release left a tombstone.
            Err(EngineError::ReservationNotFound(_)) => Ok(Ok("TOMBSTONE".to_string())),
            Err(e) if is_transient(&e) => Err(transient(e)),
            Err(e) => Ok(Err(format!("cancel refused: {e}"))),
        }
    }

    async fn payment_succeeded(
        &self,
        event: &PaymentSucceededEvent,
        trace_id: &str,
    ) -> Result<Result<String, String>, Retry> {
        match self.reservations.confirm(&event.order_no, trace_id).await {
            Ok(outcome) => Ok(Ok(format!("CONFIRMED existed={}", outcome.existed))),
            // The payment may have overtaken its order (different topics): retry a little.
            Err(EngineError::ReservationNotFound(order)) => Err(Retry::NotYet(format!(
                "payment for order {order}, which has no reservation"
            ))),
            Err(e) if is_transient(&e) => Err(transient(e)),
            // Paid, but the hold is gone: people must look at it.
            Err(e) => Ok(Err(format!("confirm refused: {e}"))),
        }
    }

    async fn aftersale_refunded(
        &self,
        event: &AfterSaleRefundedEvent,
        trace_id: &str,
    ) -> Result<Result<String, String>, Retry> {
        if event.items.is_empty() {
            return Ok(Err("AfterSaleRefundedEvent has no items".to_string()));
        }
        // The warehouse a unit came from is the one its order line held it in.
        let lines = self
            .reservations
            .order_positions(&event.order_no)
            .await
            .unwrap_or_default();
        let mut restored = 0;
        for item in &event.items {
            let warehouse_id = lines
                .iter()
                .find(|k| k.sku_id == item.sku_id)
                .map(|k| k.warehouse_id)
                .unwrap_or(self.settings.inventory.default_warehouse_id);
            // Once per (asNo, sku), whatever the redeliveries.
            let request_id = refund_request_id(&event.as_no, item.sku_id);
            let result = self
                .stock
                .adjust(AdjustRequest {
                    key: SkuKey::new(warehouse_id, item.sku_id),
                    delta: item.qty,
                    reason: LedgerReason::RefundRestore,
                    request_id: Some(request_id),
                    remark: format!("refund {} of order {}", event.as_no, event.order_no)
                        .chars()
                        .take(255)
                        .collect(),
                    trace_id: trace_id.to_string(),
                })
                .await;
            match result {
                Ok(_) => restored += item.qty,
                Err(e) if is_transient(&e) => return Err(transient(e)),
                Err(e) => return Ok(Err(format!("refund of sku {} refused: {e}", item.sku_id))),
            }
        }
        Ok(Ok(format!("REFUND_RESTORED units={restored}")))
    }

    async fn publish(&self, outcome: &Outcome) -> Result<(), Retry> {
        match self.publisher.publish_outcome(outcome).await {
            Ok(()) => {
                self.metrics
                    .kafka_produced
                    .with_label_values(&[&outcome.tag, "ok"])
                    .inc();
                Ok(())
            }
            Err(e) => {
                self.metrics
                    .kafka_produced
                    .with_label_values(&[&outcome.tag, "error"])
                    .inc();
                Err(transient(e))
            }
        }
    }

    /// Sends the original message to the dead-letter topic with the reason.
    pub async fn dead_letter(
        &self,
        msg: &OwnedMessage,
        tag: &str,
        reason: &str,
    ) -> Result<Handled, Retry> {
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
                &self.kafka().dead_letter_topic,
                &key,
                msg.payload().unwrap_or_default(),
                headers,
            )
            .await
            .map_err(transient)?;
        self.metrics
            .kafka_dead_lettered
            .with_label_values(&[tag])
            .inc();
        self.count(tag, "dead_letter");
        Ok(Handled::DeadLettered(reason.to_string()))
    }

    fn count(&self, tag: &str, outcome: &str) {
        let tag = if tag.is_empty() { "unknown" } else { tag };
        self.metrics
            .kafka_consumed
            .with_label_values(&[tag, outcome])
            .inc();
    }
}

/// `refund:<asNo>:<sku>`, hashed when the asNo would make it too long or unusable as a key.
fn refund_request_id(as_no: &str, sku_id: i64) -> String {
    let plain = format!("refund:{as_no}:{sku_id}");
    let usable = plain.len() <= 64
        && plain
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '{' && c != '}');
    if usable {
        return plain;
    }
    // FNV-1a: stable across processes.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in as_no.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("refund:h{hash:016x}:{sku_id}")
}

/// A consumer whose closing (leaving the group, which waits for the broker) happens on a
/// thread of its own: dropping it never blocks the async runtime, not even when the broker
/// is gone.
pub struct ClosingConsumer {
    inner: Option<StreamConsumer<KafkaLogContext>>,
}

impl std::ops::Deref for ClosingConsumer {
    type Target = StreamConsumer<KafkaLogContext>;

    fn deref(&self) -> &StreamConsumer<KafkaLogContext> {
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
        let consumer: StreamConsumer<KafkaLogContext> = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("group.id", &settings.group_id)
            .set("client.id", &settings.client_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            // Offsets are stored by hand, after the work is durable and the outcome sent.
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                settings.session_timeout_ms.to_string(),
            )
            .set("enable.partition.eof", "false")
            // Brokers that hold a fetch for its whole wait (tansu does) would add this much
            // latency to every message.
            .set("fetch.wait.max.ms", settings.fetch_wait_max_ms.to_string())
            .create_with_context(KafkaLogContext::default())?;
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
        let mut workers: HashMap<(String, i32), mpsc::Sender<OwnedMessage>> = HashMap::new();
        let mut handles = Vec::new();
        let watchdog = actix::spawn(Self::rejoin_watchdog(
            self.consumer.clone(),
            self.topics.clone(),
            Duration::from_millis(self.settings.rejoin_unassigned_ms),
            self.handler.metrics.clone(),
            stop.clone(),
        ));
        let mut lag_check = Instant::now();
        loop {
            let received = tokio::select! {
                _ = stop.changed() => break,
                received = self.consumer.recv() => received.map(|m| m.detach()),
            };
            if *stop.borrow() {
                break;
            }
            match received {
                Ok(msg) => {
                    let key = (msg.topic().to_string(), msg.partition());
                    let tx = workers.entry(key).or_insert_with(|| {
                        let (tx, rx) = mpsc::channel(self.settings.partition_queue);
                        handles.push(actix::spawn(partition_worker(
                            rx,
                            self.consumer.clone(),
                            self.handler.clone(),
                            self.settings.clone(),
                            stop.clone(),
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
            if lag_check.elapsed() > Duration::from_secs(5) {
                lag_check = Instant::now();
                self.update_lag().await;
            }
        }
        drop(workers);
        for handle in handles {
            let _ = handle.await;
        }
        watchdog.abort();
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

    async fn update_lag(&self) {
        let consumer = self.consumer.clone();
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
        if let Ok(Some(lag)) = lag {
            self.handler.metrics.kafka_consumer_lag.set(lag);
        }
    }
}

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
        if *stop.borrow() {
            // Not done: its offset is not stored, so it is redelivered after restart.
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
async fn partition_worker(
    mut rx: mpsc::Receiver<OwnedMessage>,
    consumer: Arc<ClosingConsumer>,
    handler: OrderEventHandler,
    settings: KafkaSettings,
    stop: watch::Receiver<bool>,
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
            in_flight.push(async move {
                let done = process_message(&msg, &handler, &settings, &stop).await;
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
                    if let Err(e) = consumer.store_offset(msg.topic(), msg.partition(), next) {
                        // A revoked partition: its new owner re-reads from the committed offset.
                        tracing::debug!(error = %e, "offset not stored");
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

    #[test]
    fn refund_ids_are_stable_and_usable_as_keys() {
        assert_eq!(refund_request_id("AS001", 1001), "refund:AS001:1001");
        let long = "A".repeat(100);
        let id = refund_request_id(&long, 1);
        assert!(id.len() <= 64, "{id}");
        assert_eq!(id, refund_request_id(&long, 1));
        assert_ne!(refund_request_id("a b", 1), "refund:a b:1");
    }
}
