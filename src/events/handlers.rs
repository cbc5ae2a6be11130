//! What each inbound event does: the order, payment and after-sales events the
//! reference's services publish drive the same engine as HTTP, and ORDER_CREATED's outcome
//! is published. One function per event kind; `handle` parses the envelope, checks
//! idempotency layer 1 (the recent window in Redis, and `t_mq_consume_log` when Redis
//! cannot vouch for the message; both batched by events::consume_log) and dispatches.
//! A redelivered ORDER_CREATED republishes its recorded outcome (identical: its ids are
//! derived from the incoming messageId) and reserves nothing.

use crate::domain::{SkuId, WarehouseId};
use std::time::Instant;

use tracing::Instrument;

use rdkafka::message::{Headers, Message, OwnedMessage};
use serde::de::DeserializeOwned;

use crate::config::{KafkaSettings, Settings};
use crate::domain::{LedgerReason, SkuKey};
use crate::engine::reservation::{ReservationEngine, ReserveRequest, RoutedRequest};
use crate::engine::routing::Ask;
use crate::engine::stock::{AdjustRequest, StockService};
use crate::engine::EngineError;
use crate::events::consume_log::{ConsumeLogBatcher, LogError, Recent, RecentLog};
use crate::events::dlq::DeadLetters;
use crate::events::producer::EventPublisher;
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

/// Tries of a message that may succeed later, before the dead-letter topic.
pub const NOT_YET_ATTEMPTS: u32 = 5;

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
    pub(crate) publisher: EventPublisher,
    dead_letters: DeadLetters,
    log: ConsumeLogBatcher,
    recent: RecentLog,
    pub(crate) settings: Settings,
    pub(crate) metrics: Metrics,
}

/// What an event handler decided: Ok((what happened, the result recorded in the consume
/// log)), Err(reason) for the dead-letter topic; the outer Err when it must be retried.
type Decided = Result<Result<(Handled, String), String>, Retry>;

fn applied(result: String) -> Decided {
    Ok(Ok((Handled::Applied, result)))
}

pub fn header<'a>(msg: &'a OwnedMessage, name: &str) -> Option<&'a str> {
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

/// The reference's error code for a failed reservation.
fn failure_code(e: &EngineError) -> &'static str {
    match e {
        EngineError::InsufficientStock { .. } | EngineError::RoutedInsufficient { .. } => {
            "INSUFFICIENT_STOCK"
        }
        // Consumers know the reference's codes only: no routable warehouse stocks the SKU.
        EngineError::InventoryNotFound(_) | EngineError::NoWarehouse { .. } => {
            "INVENTORY_NOT_FOUND"
        }
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
        let recent = RecentLog::start(
            stock.redis().clone(),
            settings.kafka.group_id.clone(),
            settings.kafka.recent_log_window_ms,
            settings.kafka.clock_skew_ms,
            metrics.clone(),
        );
        let dead_letters =
            DeadLetters::new(publisher.clone(), settings.kafka.dead_letter_topic.clone());
        OrderEventHandler {
            reservations,
            stock,
            publisher,
            dead_letters,
            log,
            recent,
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
        // One span per message: its log lines carry the envelope's traceId and the orderNo
        // (the same trace id the ledger keeps), so a ledger row leads to them.
        let span = tracing::info_span!(
            target: crate::telemetry::SPAN_TARGET,
            "kafka_message",
            topic = msg.topic(),
            partition = msg.partition(),
            offset = msg.offset(),
            tag = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            order_no = tracing::field::Empty,
        );
        let result = self
            .handle_in_span(msg, &span)
            .instrument(span.clone())
            .await;
        span.in_scope(|| match &result {
            Ok(handled) => tracing::debug!(?handled, "message handled"),
            Err(retry) => tracing::debug!(?retry, "message to be retried"),
        });
        result
    }

    async fn handle_in_span(
        &self,
        msg: &OwnedMessage,
        span: &tracing::Span,
    ) -> Result<Handled, Retry> {
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
        span.record("tag", tag.as_str());
        if let Some(order_no) = envelope.business_key.as_deref() {
            span.record("order_no", order_no);
        }
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

        // Idempotency layer 1: the recent window in Redis, or the DB's log when Redis cannot
        // vouch for this message.
        // A read of the recent window that fails for good leaves the answer to the DB's
        // log. A DB read that fails for good is tried a few times (NotYet) and then the
        // message goes to the dead-letter topic: nothing was decided yet, and retrying it
        // forever would block the partition.
        let sent_ms = msg.timestamp().to_millis();
        let recent = match self.recent.find(&envelope.message_id, sent_ms).await {
            Ok(recent) => recent,
            Err(e) if e.is_retryable() => return Err(transient(e)),
            Err(e) => {
                tracing::warn!(error = %e, "recent consume log unreadable; asking the DB's log");
                Recent::Unknown
            }
        };
        let previous = match recent {
            Recent::Found(result) => Some((result, true)),
            Recent::New => None,
            Recent::Unknown => match self.log.find(&envelope.message_id).await {
                Ok(row) => row
                    .filter(|l| l.status == "SUCCESS")
                    .map(|l| (l.result.unwrap_or_default(), false)),
                Err(e) if e.is_retryable() => return Err(transient(e)),
                Err(e) => {
                    return Err(Retry::NotYet(format!(
                        "the consume log cannot be read: {e}"
                    )))
                }
            },
        };
        if let Some((result, from_redis)) = previous {
            let outcome = if tag == wire::TAG_ORDER_CREATED {
                serde_json::from_str::<Outcome>(&result).ok()
            } else {
                None
            };
            // Known to Redis only (a crash or a DB failure came after it was remembered):
            // the DB row is written again before the offset is stored.
            // It is remembered again as well, so that it stays in Redis while the DB row is
            // still missing (a DB outage longer than the window would otherwise let it be
            // decided again).
            let durable = async {
                if !from_redis {
                    return Ok(());
                }
                self.recent
                    .remember(&envelope.message_id, &result)
                    .await
                    .map_err(transient)?;
                // Remembered in Redis: a DB row that fails for good may be passed over.
                let row = self.log_row(msg, &envelope, &tag, result, started);
                self.record_beside_redis(self.log.record(row).await)
            };
            let republished = async {
                match &outcome {
                    Some(outcome) => self.publish(outcome).await,
                    None => Ok(()),
                }
            };
            let (durable, republished) = tokio::join!(durable, republished);
            durable?;
            republished?;
            self.count(&tag, "redelivered");
            return Ok(match outcome {
                Some(outcome) => Handled::Republished(outcome.tag),
                None => Handled::Ignored,
            });
        }

        let trace_id = envelope
            .trace_id
            .clone()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| envelope.message_id.clone());
        span.record("trace_id", trace_id.as_str());
        // One line per event kind; each parses its own payload. Err(reason): the message
        // goes to the dead-letter topic.
        // An order's outcome is published only once it is recorded: published first, a
        // decision lost with its log row (DB down) could be decided again differently on
        // redelivery (refused, then held once stock came back) and the order service would
        // get both. Recorded first, a redelivery republishes the recorded outcome.
        let mut to_publish: Option<Outcome> = None;
        let decided = match tag.as_str() {
            wire::TAG_ORDER_CREATED => {
                match self
                    .order_created(&envelope.payload, &envelope.message_id, &trace_id)
                    .await?
                {
                    Ok(outcome) => {
                        let result = serde_json::to_string(&outcome).map_err(transient)?;
                        let handled = Handled::Published(outcome.tag.clone());
                        to_publish = Some(outcome);
                        Ok((handled, result))
                    }
                    Err(reason) => Err(reason),
                }
            }
            wire::TAG_ORDER_CANCELED => self.order_canceled(&envelope.payload, &trace_id).await?,
            wire::TAG_PAYMENT_SUCCEEDED => {
                self.payment_succeeded(&envelope.payload, &trace_id).await?
            }
            _ => {
                self.aftersale_refunded(&envelope.payload, &trace_id)
                    .await?
            }
        };
        let (handled, result) = match decided {
            Ok(done) => done,
            Err(reason) => return self.dead_letter(msg, &tag, &reason).await,
        };
        let row = self.log_row(msg, &envelope, &tag, result, started);
        if self.recent.is_on() {
            // Remembered in Redis first: from here a redelivery republishes this outcome
            // rather than deciding again. The DB row and the broker's ack are awaited
            // together; the offset is stored only after both.
            // Always retried when it fails: published without it, a redelivery could be
            // decided again (a refusal turned into a hold) and the order service would get
            // both outcomes.
            self.recent
                .remember(&envelope.message_id, row.result.as_deref().unwrap_or(""))
                .await
                .map_err(transient)?;
            let published = async {
                match &to_publish {
                    Some(outcome) => self.publish(outcome).await,
                    None => Ok(()),
                }
            };
            let (recorded, published) = tokio::join!(self.log.record(row), published);
            self.record_beside_redis(recorded)?;
            published?;
        } else {
            // The DB's log is the only record of the decision here: retried until written.
            self.log.record(row).await.map_err(transient)?;
            if let Some(outcome) = &to_publish {
                self.publish(outcome).await?;
            }
        }
        self.count(&tag, "ok");
        Ok(handled)
    }

    /// The DB's consume-log row of a message whose result Redis' recent window already
    /// remembers (the caller wrote it first): an outage is retried; a bug-class failure is
    /// logged and counted (`internal_errors_total{what="kafka_consume_log"}`) and the
    /// message goes on, since Redis answers its redeliveries and retrying it forever would
    /// block the partition.
    fn record_beside_redis(&self, written: Result<(), LogError>) -> Result<(), Retry> {
        match written {
            Ok(()) => Ok(()),
            Err(e) if e.is_retryable() => Err(transient(e)),
            Err(e) => {
                tracing::error!(error = %e, "consume log row failed for good; Redis remembers the result, the message goes on");
                self.metrics
                    .internal_errors
                    .with_label_values(&["kafka_consume_log"])
                    .inc();
                Ok(())
            }
        }
    }

    /// The consume-log row of a message handled with `result`.
    fn log_row(
        &self,
        msg: &OwnedMessage,
        envelope: &Envelope,
        tag: &str,
        result: String,
        started: Instant,
    ) -> NewConsumeLog {
        NewConsumeLog {
            event_id: envelope.message_id.clone(),
            consumer_group: self.kafka().group_id.clone(),
            topic: msg.topic().to_string(),
            tag: Some(tag.to_string()),
            business_key: envelope
                .business_key
                .clone()
                .map(|k| k.chars().take(64).collect()),
            status: "SUCCESS".to_string(),
            result: Some(result),
            cost_ms: Some(started.elapsed().as_millis().min(i32::MAX as u128) as i32),
        }
    }

    /// Reserves and decides the outcome (published by `handle` once recorded); Ok(outcome)
    /// or Err(reason for the dead-letter topic).
    /// The outcome's eventId and its envelope's messageId are derived from the incoming
    /// messageId (UUID v5), so a redelivery publishes the identical message.
    async fn order_created(
        &self,
        payload: &str,
        message_id: &str,
        trace_id: &str,
    ) -> Result<Result<Outcome, String>, Retry> {
        let event: OrderCreatedEvent = match parse("OrderCreatedEvent", payload) {
            Ok(e) => e,
            Err(reason) => return Ok(Err(reason)),
        };
        let event = &event;
        let event_id = wire::derived_id(message_id, "outcome-event");
        let envelope_id = wire::derived_id(message_id, "outcome-envelope");
        let default_warehouse = self.settings.inventory.default_warehouse_id;
        let lines: Vec<OrderLine> = event
            .items
            .iter()
            .map(|i| OrderLine {
                key: SkuKey::new(
                    WarehouseId(i.warehouse_id.unwrap_or(default_warehouse)),
                    SkuId(i.sku_id),
                ),
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
        let routing = self.settings.inventory.routing.kafka_default();
        let result = match routing {
            // Routed only when some line leaves the warehouse open.
            Some(routing) if event.items.iter().any(|i| i.warehouse_id.is_none()) => {
                self.reservations
                    .reserve_routed(RoutedRequest {
                        order_no: event.order_no.clone(),
                        asks: event
                            .items
                            .iter()
                            .map(|i| Ask {
                                sku_id: i.sku_id,
                                qty: i.qty,
                                warehouse_id: i.warehouse_id,
                            })
                            .collect(),
                        routing,
                        trace_id: trace_id.to_string(),
                    })
                    .await
            }
            _ => {
                self.reservations
                    .reserve(ReserveRequest {
                        order_no: event.order_no.clone(),
                        lines,
                        trace_id: trace_id.to_string(),
                    })
                    .await
            }
        };
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
                    // When the hold was made, as Redis has it (its expiry less the hold
                    // time): the same for every decision of this order, so the outcome is
                    // the identical message even when a crash lost the consume log row and
                    // a redelivery decides it again.
                    event_time: wire::format_event_time(
                        &(held.expire_at - chrono::Duration::milliseconds(self.settings.hold_ms())),
                    ),
                    trace_id: trace_id.to_string(),
                    version: wire::EVENT_VERSION.to_string(),
                },
                envelope_id,
            ),
            Err(e) if e.is_retryable() => return Err(transient(e)),
            Err(e @ (EngineError::Invalid(_) | EngineError::QuantityOutOfRange(_))) => {
                return Ok(Err(format!("invalid OrderCreatedEvent: {e}")));
            }
            Err(e) => {
                let failed_sku_id = match &e {
                    EngineError::InsufficientStock { key, .. }
                    | EngineError::InventoryNotFound(key) => Some(key.sku_id),
                    EngineError::RoutedInsufficient { sku_id, .. }
                    | EngineError::NoWarehouse { sku_id, .. } => Some(*sku_id),
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
        Ok(Ok(outcome.map_err(transient)?))
    }

    async fn order_canceled(&self, payload: &str, trace_id: &str) -> Decided {
        let event: OrderCanceledEvent = match parse("OrderCanceledEvent", payload) {
            Ok(e) => e,
            Err(reason) => return Ok(Err(reason)),
        };
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
            Ok(outcome) => applied(format!("RELEASED existed={}", outcome.existed)),
            // Cancelled before we saw the order: the release left a tombstone.
            Err(EngineError::ReservationNotFound(_)) => applied("TOMBSTONE".to_string()),
            // Held, but Redis lacks a position of it until reconciliation restores it.
            Err(e @ EngineError::InventoryNotFound(_)) => Err(transient(e)),
            Err(e) if e.is_retryable() => Err(transient(e)),
            Err(e) => Ok(Err(format!("cancel refused: {e}"))),
        }
    }

    async fn payment_succeeded(&self, payload: &str, trace_id: &str) -> Decided {
        let event: PaymentSucceededEvent = match parse("PaymentSucceededEvent", payload) {
            Ok(e) => e,
            Err(reason) => return Ok(Err(reason)),
        };
        match self.reservations.confirm(&event.order_no, trace_id).await {
            Ok(outcome) => applied(format!("CONFIRMED existed={}", outcome.existed)),
            // Held, but Redis lacks a position of it until reconciliation restores it.
            Err(e @ EngineError::InventoryNotFound(_)) => Err(transient(e)),
            // The payment may have overtaken its order (different topics): retry a little.
            Err(EngineError::ReservationNotFound(order)) => Err(Retry::NotYet(format!(
                "payment for order {order}, which has no reservation"
            ))),
            Err(e) if e.is_retryable() => Err(transient(e)),
            // Paid, but the hold is gone: people must look at it.
            Err(e) => Ok(Err(format!("confirm refused: {e}"))),
        }
    }

    async fn aftersale_refunded(&self, payload: &str, trace_id: &str) -> Decided {
        let event: AfterSaleRefundedEvent = match parse("AfterSaleRefundedEvent", payload) {
            Ok(e) => e,
            Err(reason) => return Ok(Err(reason)),
        };
        if event.items.is_empty() {
            return Ok(Err("AfterSaleRefundedEvent has no items".to_string()));
        }
        // The warehouse a unit came from is the one its order line held it in.
        let lines = match self.reservations.order_positions(&event.order_no).await {
            Ok(lines) => lines,
            // A guess here would restore the units to the wrong warehouse for good (the
            // refund is applied once per asNo and sku).
            Err(e) if e.is_retryable() => return Err(transient(e)),
            Err(_) => Vec::new(),
        };
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
                    key: SkuKey::new(WarehouseId(warehouse_id), SkuId(item.sku_id)),
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
                Err(e) if e.is_retryable() => return Err(transient(e)),
                Err(e) => return Ok(Err(format!("refund of sku {} refused: {e}", item.sku_id))),
            }
        }
        applied(format!("REFUND_RESTORED units={restored}"))
    }

    async fn publish(&self, outcome: &Outcome) -> Result<(), Retry> {
        // Decided, not produced: a redelivery must publish the same outcome, reserve nothing.
        crate::fault::point("kafka.before_produce")
            .await
            .map_err(|e| Retry::Transient(e.to_string()))?;
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
        self.dead_letters
            .send(msg, tag, reason)
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

#[cfg(test)]
mod tests {
    use super::*;

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
