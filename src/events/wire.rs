//! The wire format the reference's services speak: a JSON envelope whose `payload` is the
//! event itself as a JSON *string*. Inbound parsing is lenient (unknown fields are
//! ignored); outbound events carry exactly the documented fields, because the consumers on
//! the other side reject unknown ones.

use chrono::NaiveDateTime;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

pub const TAG_ORDER_CREATED: &str = "ORDER_CREATED";
pub const TAG_ORDER_CANCELED: &str = "ORDER_CANCELED";
pub const TAG_PAYMENT_SUCCEEDED: &str = "PAYMENT_SUCCEEDED";
pub const TAG_AFTERSALE_REFUNDED: &str = "AFTERSALE_REFUNDED";
pub const TAG_STOCK_RESERVED: &str = "STOCK_RESERVED";
pub const TAG_STOCK_RESERVE_FAILED: &str = "STOCK_RESERVE_FAILED";
pub const TAG_STOCK_LOW: &str = "STOCK_LOW";
pub const TAG_STOCK_OUT: &str = "STOCK_OUT";
pub const TAG_STOCK_BACK: &str = "STOCK_BACK";

pub const EVENT_VERSION: &str = "1.0";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub message_id: String,
    #[serde(default)]
    pub business_key: Option<String>,
    #[serde(default)]
    pub trace_id: Option<String>,
    pub event_type: String,
    #[serde(default = "default_version")]
    pub version: String,
    #[serde(default)]
    pub event_time: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    /// The event, serialised to a JSON string.
    pub payload: String,
}

fn default_version() -> String {
    EVENT_VERSION.to_string()
}

/// The reference's local date-time format (no zone, milliseconds).
pub fn format_event_time(t: &NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
}

pub fn now_event_time() -> String {
    format_event_time(&chrono::Local::now().naive_local())
}

/// Parses `2024-01-15T10:30:45`, with an optional fraction.
pub fn parse_event_time(s: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").ok()
}

/// A new message id: 32 lowercase hex digits, unique per send.
pub fn new_message_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The namespace of ids derived from an incoming message (UUID v5 over it).
const DERIVED_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6f1c_2a4e_9b7d_4c1e_8a53_0d2f_7e61_b9a4);

/// An id derived from an incoming messageId and what it is for (32 lowercase hex digits):
/// the same message always gives the same id, so an outcome published again after a
/// redelivery is the identical message.
pub fn derived_id(incoming_message_id: &str, purpose: &str) -> String {
    let name = format!("{purpose}:{incoming_message_id}");
    uuid::Uuid::new_v5(&DERIVED_ID_NAMESPACE, name.as_bytes())
        .simple()
        .to_string()
}

/// Java's Long may arrive as a number or a numeric string.
fn long<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| serde::de::Error::custom(format!("not an integer: {n}"))),
        Value::String(s) => s.trim().parse().map_err(serde::de::Error::custom),
        other => Err(serde::de::Error::custom(format!(
            "expected an integer, got {other}"
        ))),
    }
}

fn opt_long<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("not an integer: {n}"))),
        Some(Value::String(s)) => s.trim().parse().map(Some).map_err(serde::de::Error::custom),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected an integer, got {other}"
        ))),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderItem {
    #[serde(deserialize_with = "long")]
    pub sku_id: i64,
    #[serde(deserialize_with = "long")]
    pub qty: i64,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub price: Option<Value>,
    /// The order service does not send it: the default warehouse then.
    #[serde(default, deserialize_with = "opt_long")]
    pub warehouse_id: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreatedEvent {
    #[serde(default)]
    pub event_id: Option<String>,
    pub order_no: String,
    #[serde(default)]
    pub user_id: Option<Value>,
    #[serde(default)]
    pub amount: Option<Value>,
    #[serde(default)]
    pub status: Option<Value>,
    pub items: Vec<OrderItem>,
    #[serde(default)]
    pub event_time: Option<String>,
    #[serde(default)]
    pub trace_id: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCanceledEvent {
    #[serde(default)]
    pub event_id: Option<String>,
    pub order_no: String,
    #[serde(default)]
    pub user_id: Option<Value>,
    #[serde(default)]
    pub amount: Option<Value>,
    #[serde(default)]
    pub cancel_reason: Option<String>,
    #[serde(default)]
    pub operator: Option<Value>,
    #[serde(default)]
    pub event_time: Option<String>,
    #[serde(default)]
    pub trace_id: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentSucceededEvent {
    #[serde(default)]
    pub event_id: Option<String>,
    #[serde(default)]
    pub pay_no: Option<String>,
    pub order_no: String,
    #[serde(default)]
    pub amount: Option<Value>,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub channel_trade_no: Option<String>,
    #[serde(default)]
    pub paid_at: Option<String>,
    #[serde(default)]
    pub event_time: Option<String>,
    #[serde(default)]
    pub trace_id: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefundItem {
    #[serde(default)]
    pub order_item_id: Option<Value>,
    #[serde(deserialize_with = "long")]
    pub sku_id: i64,
    #[serde(deserialize_with = "long")]
    pub qty: i64,
    #[serde(default)]
    pub refund_amount: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AfterSaleRefundedEvent {
    #[serde(default)]
    pub event_id: Option<String>,
    pub as_no: String,
    pub order_no: String,
    #[serde(default)]
    pub user_id: Option<Value>,
    #[serde(default)]
    pub refund_amount: Option<Value>,
    #[serde(default)]
    pub refund_no: Option<String>,
    pub items: Vec<RefundItem>,
    #[serde(default)]
    pub refunded_at: Option<String>,
    #[serde(default)]
    pub event_time: Option<String>,
    #[serde(default)]
    pub trace_id: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
}

/// `{"skuId","warehouseId","qty"}` of the events we publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StockItem {
    pub sku_id: i64,
    pub warehouse_id: i64,
    pub qty: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StockReservedEvent {
    pub event_id: String,
    pub order_no: String,
    pub items: Vec<StockItem>,
    pub event_time: String,
    pub trace_id: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StockReserveFailedEvent {
    pub event_id: String,
    pub order_no: String,
    pub error_code: String,
    pub error_message: String,
    pub failed_sku_id: Option<i64>,
    pub requested_items: Vec<StockItem>,
    pub event_time: String,
    pub trace_id: String,
    pub version: String,
}

/// What we publish for an order: the tag and the inner event as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub tag: String,
    pub event_type: String,
    pub order_no: String,
    pub trace_id: String,
    /// The inner event, serialised.
    pub payload: String,
    /// The envelope's messageId and eventTime, fixed when the outcome is decided so that
    /// every send of it is the identical message. Empty in outcomes recorded by earlier
    /// versions: then each send gets a fresh id and time.
    #[serde(default)]
    pub message_id: String,
    #[serde(default)]
    pub event_time: String,
}

impl Outcome {
    /// STOCK_RESERVED, its envelope's messageId derived from the incoming `message_id`.
    pub fn reserved(
        event: &StockReservedEvent,
        message_id: String,
    ) -> Result<Self, serde_json::Error> {
        Ok(Outcome {
            tag: TAG_STOCK_RESERVED.to_string(),
            event_type: "StockReservedEvent".to_string(),
            order_no: event.order_no.clone(),
            trace_id: event.trace_id.clone(),
            payload: serde_json::to_string(event)?,
            message_id,
            event_time: event.event_time.clone(),
        })
    }

    /// STOCK_RESERVE_FAILED, its envelope's messageId derived from the incoming one.
    pub fn failed(
        event: &StockReserveFailedEvent,
        message_id: String,
    ) -> Result<Self, serde_json::Error> {
        Ok(Outcome {
            tag: TAG_STOCK_RESERVE_FAILED.to_string(),
            event_type: "StockReserveFailedEvent".to_string(),
            order_no: event.order_no.clone(),
            trace_id: event.trace_id.clone(),
            payload: serde_json::to_string(event)?,
            message_id,
            event_time: event.event_time.clone(),
        })
    }

    /// The envelope of every send of this outcome: the same messageId and eventTime each
    /// time (fresh ones only for outcomes recorded before they were fixed).
    pub fn envelope(&self, source: &str) -> Envelope {
        let or_new = |value: &str, new: fn() -> String| {
            if value.is_empty() {
                new()
            } else {
                value.to_string()
            }
        };
        Envelope {
            message_id: or_new(&self.message_id, new_message_id),
            business_key: Some(self.order_no.clone()),
            trace_id: Some(self.trace_id.clone()),
            event_type: self.event_type.clone(),
            version: EVENT_VERSION.to_string(),
            event_time: Some(or_new(&self.event_time, now_event_time)),
            source: Some(source.to_string()),
            payload: self.payload.clone(),
        }
    }
}

/// STOCK_LOW, STOCK_OUT and STOCK_BACK (on `kafka.alert_topic`): a position's available
/// stock crossed its low-stock threshold, reached zero, or came back from zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StockLevelEvent {
    pub event_id: String,
    pub sku_id: i64,
    pub warehouse_id: i64,
    /// Available units after the change that crossed the level.
    pub available_qty: i64,
    /// The position's low-stock threshold when the event was derived (null: none set).
    pub threshold: Option<i64>,
    /// The position's change counter after this change: with several instances events
    /// may arrive out of order, and one with a lower seq than one already seen for the
    /// position is older.
    pub seq: i64,
    pub event_time: String,
    pub version: String,
}

/// A stock-level event ready to send: tag, key and the whole envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockLevelMessage {
    pub tag: &'static str,
    /// `warehouseId:skuId`: one position's events stay in order on one partition.
    pub key: String,
    pub trace_id: String,
    pub envelope: Envelope,
}

impl StockLevelMessage {
    /// `journal_ref` names the journal line the event comes from; the ids derive from it, so
    /// a replay of the journal sends the identical message.
    pub fn new(
        tag: &'static str,
        event: StockLevelEvent,
        journal_ref: &str,
        trace_id: &str,
        source: &str,
    ) -> Result<Self, serde_json::Error> {
        let event_type = match tag {
            TAG_STOCK_LOW => "StockLowEvent",
            TAG_STOCK_OUT => "StockOutEvent",
            _ => "StockBackEvent",
        };
        let key = format!("{}:{}", event.warehouse_id, event.sku_id);
        let envelope = Envelope {
            message_id: derived_id(journal_ref, "stock-level-envelope"),
            business_key: Some(key.clone()),
            trace_id: Some(trace_id.to_string()),
            event_type: event_type.to_string(),
            version: EVENT_VERSION.to_string(),
            event_time: Some(event.event_time.clone()),
            source: Some(source.to_string()),
            payload: serde_json::to_string(&event)?,
        };
        Ok(StockLevelMessage {
            tag,
            key,
            trace_id: trace_id.to_string(),
            envelope,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_order_created_message_parses() {
        let inner = r#"{"eventId":"e1","orderNo":"ORD20240115001","userId":10001,"amount":199.00,"status":"CREATED","items":[{"skuId":1001,"qty":2,"title":"Phone","price":99.50}],"eventTime":"2024-01-15T10:30:45.123","traceId":"t-1","version":"1.0"}"#;
        let envelope = format!(
            r#"{{"messageId":"0123456789abcdef0123456789abcdef","businessKey":"ORD20240115001","traceId":"t-1","eventType":"OrderCreatedEvent","version":"1.0","eventTime":"2024-01-15T10:30:45.123","source":"order-service","payload":{}}}"#,
            serde_json::to_string(inner).unwrap()
        );
        let env: Envelope = serde_json::from_str(&envelope).unwrap();
        assert_eq!(env.message_id.len(), 32);
        let event: OrderCreatedEvent = serde_json::from_str(&env.payload).unwrap();
        assert_eq!(event.items[0].sku_id, 1001);
        assert_eq!(event.items[0].warehouse_id, None);
        assert!(parse_event_time("2024-01-15T10:30:45.123").is_some());
        assert!(parse_event_time("2024-01-15T10:30:45").is_some());
    }

    #[test]
    fn published_events_have_exactly_the_documented_fields() {
        let event = StockReserveFailedEvent {
            event_id: "e".into(),
            order_no: "o".into(),
            error_code: "INSUFFICIENT_STOCK".into(),
            error_message: "m".into(),
            failed_sku_id: None,
            requested_items: vec![StockItem {
                sku_id: 1,
                warehouse_id: 1,
                qty: 1,
            }],
            event_time: now_event_time(),
            trace_id: "t".into(),
            version: EVENT_VERSION.into(),
        };
        let value = serde_json::to_value(&event).unwrap();
        let mut keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            vec![
                "errorCode",
                "errorMessage",
                "eventId",
                "eventTime",
                "failedSkuId",
                "orderNo",
                "requestedItems",
                "traceId",
                "version"
            ]
        );
        assert!(parse_event_time(&event.event_time).is_some());
        assert_eq!(new_message_id().len(), 32);
    }

    #[test]
    fn outcomes_derived_from_one_message_are_identical_on_every_send() {
        let a = derived_id("0123456789abcdef0123456789abcdef", "outcome-event");
        assert_eq!(a.len(), 32);
        assert_eq!(
            a,
            derived_id("0123456789abcdef0123456789abcdef", "outcome-event")
        );
        assert_ne!(
            a,
            derived_id("0123456789abcdef0123456789abcdef", "outcome-envelope")
        );
        assert_ne!(
            a,
            derived_id("0123456789abcdef0123456789abcdee", "outcome-event")
        );
        let event = StockReservedEvent {
            event_id: a,
            order_no: "O-1".into(),
            items: vec![],
            event_time: "2026-11-26T10:00:00.000".into(),
            trace_id: "t".into(),
            version: EVENT_VERSION.into(),
        };
        let outcome = Outcome::reserved(&event, derived_id("m", "outcome-envelope")).unwrap();
        // Recorded in the consume log and read back for a redelivery: the same bytes.
        let recorded: Outcome =
            serde_json::from_str(&serde_json::to_string(&outcome).unwrap()).unwrap();
        let first = serde_json::to_string(&outcome.envelope("inventory-service")).unwrap();
        let again = serde_json::to_string(&recorded.envelope("inventory-service")).unwrap();
        assert_eq!(first, again);
        // An outcome recorded before the ids were fixed still gets an id on each send.
        let old: Outcome = serde_json::from_str(
            r#"{"tag":"STOCK_RESERVED","event_type":"StockReservedEvent","order_no":"O-1","trace_id":"t","payload":"{}"}"#,
        )
        .unwrap();
        assert_eq!(old.envelope("s").message_id.len(), 32);
    }
}
