//! Kafka order events on librdkafka's in-process mock cluster (a real Kafka protocol
//! peer), with messages written by hand in the reference's wire format.

use inventory::domain::{SkuId, WarehouseId};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use inventory::domain::SkuKey;
use inventory::events::client_log::KafkaLogContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use serde_json::Value;

use crate::helpers::{spawn_app_with, start, TestApp};

const TOPICS: &[&str] = &[
    "ORDER_TOPIC",
    "PAYMENT_TOPIC",
    "AFTERSALES_TOPIC",
    "INVENTORY_TOPIC",
    "INVENTORY_DLQ",
    "INVENTORY_ALERT_TOPIC",
];

pub struct Received {
    pub key: String,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Received {
    pub fn envelope(&self) -> Value {
        serde_json::from_str(&self.body).expect("envelope is JSON")
    }
    pub fn payload(&self) -> Value {
        let env = self.envelope();
        serde_json::from_str(env["payload"].as_str().expect("payload is a string"))
            .expect("payload is JSON")
    }
}

pub struct KafkaClient {
    pub brokers: String,
    producer: FutureProducer<KafkaLogContext>,
}

impl KafkaClient {
    pub fn new(brokers: &str) -> Self {
        Self::with_message_timeout(brokers, Duration::from_secs(10))
    }

    /// A producer that keeps retrying a message for `timeout` (through a broker restart).
    pub fn with_message_timeout(brokers: &str, timeout: Duration) -> Self {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("message.timeout.ms", timeout.as_millis().to_string())
            .set("enable.idempotence", "true")
            .create_with_context(KafkaLogContext::default())
            .expect("test producer");
        KafkaClient {
            brokers: brokers.to_string(),
            producer,
        }
    }

    pub async fn send(&self, topic: &str, tag: &str, key: &str, body: &str) {
        self.send_stamped(topic, tag, key, body, None).await
    }

    /// `send` with the message's timestamp (ms since the epoch) set by hand.
    pub async fn send_stamped(
        &self,
        topic: &str,
        tag: &str,
        key: &str,
        body: &str,
        timestamp_ms: Option<i64>,
    ) {
        let headers = OwnedHeaders::new().insert(Header {
            key: "tag",
            value: Some(tag),
        });
        let mut record = FutureRecord::to(topic)
            .key(key)
            .payload(body)
            .headers(headers);
        if let Some(ms) = timestamp_ms {
            record = record.timestamp(ms);
        }
        self.producer
            .send(record, Duration::from_secs(60))
            .await
            .expect("test message sent");
    }

    /// Reads `topic` from the beginning until `count` messages arrived (or the time is up).
    pub async fn collect(&self, topic: &str, count: usize, limit: Duration) -> Vec<Received> {
        self.collect_until(topic, limit, Duration::ZERO, |out| out.len() >= count)
            .await
    }

    /// `collect`, then on until no message came for `settle` (to see that no more come).
    pub async fn collect_settled(
        &self,
        topic: &str,
        count: usize,
        limit: Duration,
        settle: Duration,
    ) -> Vec<Received> {
        self.collect_until(topic, limit, settle, |out| out.len() >= count)
            .await
    }

    /// Reads until messages with `keys` distinct keys arrived (redeliveries may repeat one).
    pub async fn collect_keys(&self, topic: &str, keys: usize, limit: Duration) -> Vec<Received> {
        self.collect_until(topic, limit, Duration::ZERO, |out| {
            out.iter().map(|m| &m.key).collect::<HashSet<_>>().len() >= keys
        })
        .await
    }

    /// `collect_keys`, then on until no message came for `settle`: every message of those
    /// keys, not only the first of each.
    pub async fn collect_keys_settled(
        &self,
        topic: &str,
        keys: usize,
        limit: Duration,
        settle: Duration,
    ) -> Vec<Received> {
        self.collect_until(topic, limit, settle, |out| {
            out.iter().map(|m| &m.key).collect::<HashSet<_>>().len() >= keys
        })
        .await
    }

    async fn collect_until(
        &self,
        topic: &str,
        limit: Duration,
        settle: Duration,
        enough: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let consumer: StreamConsumer<KafkaLogContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("test-{}", uuid::Uuid::new_v4()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create_with_context(KafkaLogContext::default())
            .expect("test consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        while Instant::now() < deadline {
            let enough_now = enough(&out);
            if enough_now && settle.is_zero() {
                break;
            }
            let mut left = deadline.saturating_duration_since(Instant::now());
            if enough_now {
                // Enough: read on until nothing more comes for `settle`.
                left = left.min(settle);
            }
            match tokio::time::timeout(left, consumer.recv()).await {
                Ok(Ok(m)) => {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .filter_map(|h| {
                                    Some((
                                        h.key.to_string(),
                                        String::from_utf8(h.value?.to_vec()).ok()?,
                                    ))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(Received {
                        key: m
                            .key()
                            .map(|k| String::from_utf8_lossy(k).to_string())
                            .unwrap_or_default(),
                        headers,
                        body: m
                            .payload()
                            .map(|p| String::from_utf8_lossy(p).to_string())
                            .unwrap_or_default(),
                    });
                }
                _ => break,
            }
        }
        out
    }
}

/// A message byte for byte as the reference's services write it.
pub fn envelope(message_id: &str, event_type: &str, key: &str, payload: &str) -> String {
    format!(
        r#"{{"messageId":"{message_id}","businessKey":"{key}","traceId":"trace-{key}","eventType":"{event_type}","version":"1.0","eventTime":"2024-01-15T10:30:45.123","source":"order-service","payload":{}}}"#,
        serde_json::to_string(payload).expect("string")
    )
}

pub fn order_created(message_id: &str, order_no: &str, items: &str) -> String {
    let payload = format!(
        r#"{{"eventId":"ev-{message_id}","orderNo":"{order_no}","userId":10001,"amount":199.00,"status":"CREATED","items":{items},"eventTime":"2024-01-15T10:30:45.123","traceId":"trace-{order_no}","version":"1.0"}}"#
    );
    envelope(message_id, "OrderCreatedEvent", order_no, &payload)
}

pub fn mid() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

pub(crate) struct Setup {
    pub app: TestApp,
    pub kafka: KafkaClient,
    // Dropped last: the broker.
    _cluster: MockCluster<'static, DefaultProducerContext>,
}

pub(crate) async fn setup(overrides: &[(&str, toml::Value)]) -> Setup {
    let cluster = MockCluster::new(1).expect("mock cluster");
    for topic in TOPICS {
        cluster.create_topic(topic, 2, 1).expect("topic");
    }
    let brokers = cluster.bootstrap_servers();
    let mut all: Vec<(&str, toml::Value)> = vec![
        ("kafka.enabled", true.into()),
        ("kafka.brokers", brokers.clone().into()),
        ("kafka.retry_max_ms", 200.into()),
        ("kafka.session_timeout_ms", 6000.into()),
        // The mock broker has no CreateTopics; the test made them.
        ("kafka.create_topics", false.into()),
    ];
    all.extend(overrides.iter().cloned());
    let app = spawn_app_with(&all).await;
    Setup {
        app,
        kafka: KafkaClient::new(&brokers),
        _cluster: cluster,
    }
}

pub(crate) const WAIT: Duration = Duration::from_secs(20);

fn sorted_keys(v: &Value) -> Vec<String> {
    let mut keys: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    keys.sort();
    keys
}

#[actix_web::test]
async fn order_created_is_reserved_and_answered_in_the_reference_format() {
    let s = setup(&[]).await;
    s.app.stock_in(SkuId(1001), WarehouseId(1), 10).await;
    let message = order_created(
        "0123456789abcdef0123456789abcdef",
        "ORD20240115001",
        r#"[{"skuId":1001,"qty":2,"title":"Phone","price":99.50}]"#,
    );
    s.kafka
        .send("ORDER_TOPIC", "ORDER_CREATED", "ORD20240115001", &message)
        .await;
    let out = s.kafka.collect("INVENTORY_TOPIC", 1, WAIT).await;
    assert_eq!(out.len(), 1, "no STOCK_RESERVED published");
    let m = &out[0];
    assert_eq!(m.key, "ORD20240115001");
    assert_eq!(
        m.headers.get("tag").map(String::as_str),
        Some("STOCK_RESERVED")
    );
    assert_eq!(
        m.headers.get("traceId").map(String::as_str),
        Some("trace-ORD20240115001")
    );
    let env = m.envelope();
    assert_eq!(
        sorted_keys(&env),
        [
            "businessKey",
            "eventTime",
            "eventType",
            "messageId",
            "payload",
            "source",
            "traceId",
            "version"
        ]
    );
    assert_eq!(env["eventType"], "StockReservedEvent");
    assert_eq!(env["version"], "1.0");
    let message_id = env["messageId"].as_str().unwrap();
    assert!(message_id.len() == 32 && message_id.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(
        inventory::events::wire::parse_event_time(env["eventTime"].as_str().unwrap()).is_some()
    );
    // The inner event: exactly the documented fields.
    let payload = m.payload();
    assert_eq!(
        sorted_keys(&payload),
        [
            "eventId",
            "eventTime",
            "items",
            "orderNo",
            "traceId",
            "version"
        ]
    );
    let typed: inventory::events::wire::StockReservedEvent =
        serde_json::from_str(env["payload"].as_str().unwrap()).expect("strict parse");
    assert_eq!(typed.items.len(), 1);
    assert_eq!(
        sorted_keys(&payload["items"][0]),
        ["qty", "skuId", "warehouseId"]
    );
    assert_eq!(
        payload["items"][0]["warehouseId"], 1,
        "missing warehouseId = default"
    );
    assert_eq!(payload["items"][0]["qty"], 2);

    let audits = s
        .app
        .assert_invariants(&[SkuKey::new(WarehouseId(1), SkuId(1001))])
        .await;
    assert_eq!(audits[0].lines_reserved, 2);
    // The consume log recorded it.
    let mut conn = s.app.db_conn().await;
    let log = inventory::store::models::ConsumeLog::find(
        &mut conn,
        "0123456789abcdef0123456789abcdef",
        "inventory-service",
    )
    .await
    .unwrap()
    .expect("consume log row");
    assert_eq!(log.status, "SUCCESS");
    assert_eq!(log.tag.as_deref(), Some("ORDER_CREATED"));
}

#[actix_web::test]
async fn insufficient_stock_publishes_stock_reserve_failed() {
    let s = setup(&[]).await;
    s.app.stock_in(SkuId(2001), WarehouseId(1), 1).await;
    s.app.stock_in(SkuId(2002), WarehouseId(1), 5).await;
    let message = order_created(
        &mid(),
        "ORD-SHORT",
        r#"[{"skuId":2002,"qty":1},{"skuId":2001,"qty":3,"warehouseId":1}]"#,
    );
    s.kafka
        .send("ORDER_TOPIC", "ORDER_CREATED", "ORD-SHORT", &message)
        .await;
    let out = s.kafka.collect("INVENTORY_TOPIC", 1, WAIT).await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].headers["tag"], "STOCK_RESERVE_FAILED");
    let env = out[0].envelope();
    assert_eq!(env["eventType"], "StockReserveFailedEvent");
    let typed: inventory::events::wire::StockReserveFailedEvent =
        serde_json::from_str(env["payload"].as_str().unwrap()).expect("strict parse");
    assert_eq!(typed.error_code, "INSUFFICIENT_STOCK");
    assert_eq!(typed.failed_sku_id, Some(2001));
    assert_eq!(typed.requested_items.len(), 2);
    let audits = s
        .app
        .assert_invariants(&[
            SkuKey::new(WarehouseId(1), SkuId(2001)),
            SkuKey::new(WarehouseId(1), SkuId(2002)),
        ])
        .await;
    assert!(audits.iter().all(|a| a.lines_reserved == 0), "nothing held");
}

#[actix_web::test]
async fn a_redelivered_message_reserves_once_and_republishes_the_same_outcome() {
    let s = setup(&[]).await;
    s.app.stock_in(SkuId(3001), WarehouseId(1), 10).await;
    let id = mid();
    let message = order_created(&id, "ORD-TWICE", r#"[{"skuId":3001,"qty":4}]"#);
    s.kafka
        .send("ORDER_TOPIC", "ORDER_CREATED", "ORD-TWICE", &message)
        .await;
    let first = s.kafka.collect("INVENTORY_TOPIC", 1, WAIT).await;
    assert_eq!(first.len(), 1);
    s.kafka
        .send("ORDER_TOPIC", "ORDER_CREATED", "ORD-TWICE", &message)
        .await;
    let both = s.kafka.collect("INVENTORY_TOPIC", 2, WAIT).await;
    assert_eq!(both.len(), 2);
    assert_eq!(
        both[0].payload(),
        both[1].payload(),
        "the same outcome, eventId included"
    );
    // The identical message, envelope included: its messageId and eventTime are derived
    // from the incoming message, not made anew for the second send.
    assert_eq!(both[0].envelope(), both[1].envelope());
    assert_eq!(
        both[0].envelope()["messageId"],
        inventory::events::wire::derived_id(&id, "outcome-envelope").as_str()
    );
    let audits = s
        .app
        .assert_invariants(&[SkuKey::new(WarehouseId(1), SkuId(3001))])
        .await;
    assert_eq!(audits[0].lines_reserved, 4);
    assert_eq!(audits[0].db_available, Some(6));
    assert_eq!(audits[0].ledger_rows, 2, "inbound + one reserve");
}

fn lookups(app: &TestApp, answer: &str) -> u64 {
    app.state
        .metrics
        .kafka_consume_log_lookups
        .with_label_values(&[answer])
        .get()
}

async fn consume_log_result(app: &TestApp, event_id: &str) -> Option<String> {
    let mut conn = app.db_conn().await;
    inventory::store::models::ConsumeLog::find_many(
        &mut conn,
        &[event_id.to_string()],
        &app.settings.kafka.group_id,
    )
    .await
    .expect("consume log read")
    .into_iter()
    .next()
    .and_then(|row| row.result)
}

/// Idempotency layer 1 in two tiers. A redelivery within the recent window is answered by
/// Redis (and a DB row lost meanwhile is written again); one Redis cannot vouch for (older
/// than the window, or sent before Redis was reloaded) by the DB's log. Either way a refused
/// order stays refused after stock came back, and every republish is the identical message.
#[actix_web::test]
async fn redeliveries_are_answered_by_redis_within_the_window_and_by_the_db_beyond_it() {
    let s = setup(&[]).await;
    let app = &s.app;
    let prefix = app.redis.keys().prefix().to_string();
    let epoch_key = format!("{prefix}inv:epoch");
    let now = || chrono::Utc::now().timestamp_millis();
    // Redis vouches only for messages sent clock_skew_ms after its process started: a Redis
    // started just before the test (a fresh CI machine) is given that long.
    let info: String = app.redis_cmd(redis::cmd("INFO").arg("server")).await;
    let uptime_s = inventory::store::recent_log::uptime_seconds(&info)
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(0);
    let needed_s = app.settings.kafka.clock_skew_ms / 1000 + 3;
    if uptime_s < needed_s {
        tokio::time::sleep(Duration::from_secs(needed_s - uptime_s)).await;
    }
    // Redis was loaded an hour ago: it vouches for what was sent since (a load just now
    // would make it vouch for nothing sent within the clock allowance).
    let _: () = app
        .redis_cmd(redis::cmd("SET").arg(&epoch_key).arg(now() - 3_600_000))
        .await;
    let sku = SkuKey::new(WarehouseId(1), SkuId(3101));
    app.stock_in(SkuId(3101), WarehouseId(1), 2).await;
    let id = mid();
    let message = order_created(&id, "ORD-REFUSED", r#"[{"skuId":3101,"qty":5}]"#);
    let send = |stamp: Option<i64>| {
        s.kafka.send_stamped(
            "ORDER_TOPIC",
            "ORDER_CREATED",
            "ORD-REFUSED",
            &message,
            stamp,
        )
    };

    send(None).await;
    let first = s.kafka.collect("INVENTORY_TOPIC", 1, WAIT).await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].headers["tag"], "STOCK_RESERVE_FAILED");
    assert_eq!(
        lookups(app, "redis_new"),
        1,
        "a new message: Redis vouched, no DB read"
    );
    assert_eq!(lookups(app, "db"), 0);
    wait_for("the consume-log row", || async {
        consume_log_result(app, &id).await.is_some()
    })
    .await;
    // Enough stock now: deciding again would hold it.
    app.stock_in(SkuId(3101), WarehouseId(1), 10).await;

    // 1. Within the window, with the DB row lost: Redis answers, the row comes back.
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query("DELETE FROM t_mq_consume_log WHERE event_id = ?")
            .bind::<diesel::sql_types::Text, _>(id.as_str()),
        &mut app.db_conn().await,
    )
    .await
    .expect("row deleted");
    send(None).await;
    let two = s.kafka.collect("INVENTORY_TOPIC", 2, WAIT).await;
    assert_eq!(two.len(), 2);
    assert_eq!(lookups(app, "redis_found"), 1);
    assert_eq!(
        lookups(app, "db"),
        0,
        "no DB read for a redelivery in the window"
    );
    wait_for("the consume-log row written again", || async {
        consume_log_result(app, &id).await.is_some()
    })
    .await;

    // 2. Stamped before the window (its result would have left Redis by now): the DB log
    // answers.
    let windows: Vec<String> = app
        .redis_cmd(redis::cmd("KEYS").arg(format!("{prefix}inv:{{clog}}:*")))
        .await;
    assert!(!windows.is_empty(), "results are remembered in Redis");
    let _: () = app.redis_cmd(redis::cmd("DEL").arg(&windows)).await;
    let window_ms = app.settings.kafka.recent_log_window_ms as i64;
    send(Some(now() - window_ms)).await;
    let three = s.kafka.collect("INVENTORY_TOPIC", 3, WAIT).await;
    assert_eq!(three.len(), 3);
    assert_eq!(lookups(app, "db"), 1, "an old message is checked in the DB");

    // 3. Redis was reloaded after the message was sent (it lost the window): the DB log.
    let sent = now();
    let _: () = app
        .redis_cmd(redis::cmd("SET").arg(&epoch_key).arg(sent + 1_000))
        .await;
    send(Some(sent)).await;
    let four = s.kafka.collect("INVENTORY_TOPIC", 4, WAIT).await;
    assert_eq!(four.len(), 4);
    assert_eq!(lookups(app, "db"), 2);

    for other in &four[1..] {
        assert_eq!(other.headers["tag"], "STOCK_RESERVE_FAILED");
        assert_eq!(
            other.envelope(),
            four[0].envelope(),
            "the identical message"
        );
    }
    let audits = app.assert_invariants(&[sku]).await;
    assert_eq!(
        audits[0].lines_reserved, 0,
        "the refused order never held stock"
    );
    assert_eq!(audits[0].db_available, Some(12));
}

#[actix_web::test]
async fn a_poison_message_goes_to_the_dead_letter_topic_and_the_next_one_is_processed() {
    let s = setup(&[]).await;
    s.app.stock_in(SkuId(4001), WarehouseId(1), 10).await;
    s.kafka
        .send("ORDER_TOPIC", "ORDER_CREATED", "BAD-1", "{not json")
        .await;
    let invalid = order_created(&mid(), "BAD-2", r#"[{"skuId":4001,"qty":0}]"#);
    s.kafka
        .send("ORDER_TOPIC", "ORDER_CREATED", "BAD-2", &invalid)
        .await;
    let no_items = envelope(
        &mid(),
        "OrderCreatedEvent",
        "BAD-3",
        r#"{"orderNo":"BAD-3"}"#,
    );
    s.kafka
        .send("ORDER_TOPIC", "ORDER_CREATED", "BAD-3", &no_items)
        .await;
    let good = order_created(&mid(), "GOOD-1", r#"[{"skuId":4001,"qty":1}]"#);
    s.kafka
        .send("ORDER_TOPIC", "ORDER_CREATED", "GOOD-1", &good)
        .await;

    let dlq = s.kafka.collect("INVENTORY_DLQ", 3, WAIT).await;
    assert_eq!(dlq.len(), 3);
    let keys: HashSet<&str> = dlq.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(keys, HashSet::from(["BAD-1", "BAD-2", "BAD-3"]));
    for m in &dlq {
        assert!(!m.headers["dlq-reason"].is_empty());
        assert_eq!(m.headers["dlq-source-topic"], "ORDER_TOPIC");
        assert_eq!(m.headers["tag"], "ORDER_CREATED");
    }
    let bad1 = dlq.iter().find(|m| m.key == "BAD-1").unwrap();
    assert_eq!(bad1.body, "{not json", "the original bytes are kept");
    let out = s.kafka.collect("INVENTORY_TOPIC", 1, WAIT).await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].key, "GOOD-1");
    let audits = s
        .app
        .assert_invariants(&[SkuKey::new(WarehouseId(1), SkuId(4001))])
        .await;
    assert_eq!(audits[0].lines_reserved, 1);
}

fn cancel(message_id: &str, order_no: &str) -> String {
    let payload = format!(
        r#"{{"eventId":"c-{message_id}","orderNo":"{order_no}","userId":10001,"amount":10.00,"cancelReason":"user cancelled","operator":"user","eventTime":"2024-01-15T10:31:00.000","traceId":"t","version":"1.0"}}"#
    );
    envelope(message_id, "OrderCanceledEvent", order_no, &payload)
}

pub(crate) fn payment(message_id: &str, order_no: &str) -> String {
    let payload = format!(
        r#"{{"eventId":"p-{message_id}","payNo":"PAY-{order_no}","orderNo":"{order_no}","amount":10.00,"channel":"ALIPAY","channelTradeNo":"T1","paidAt":"2024-01-15T10:32:00","eventTime":"2024-01-15T10:32:00.000","traceId":"t","version":"1.0"}}"#
    );
    envelope(message_id, "PaymentSucceededEvent", order_no, &payload)
}

pub fn refund(message_id: &str, as_no: &str, order_no: &str, sku: i64, qty: i64) -> String {
    let payload = format!(
        r#"{{"eventId":"r-{message_id}","asNo":"{as_no}","orderNo":"{order_no}","userId":10001,"refundAmount":5.00,"refundNo":"RF1","items":[{{"orderItemId":1,"skuId":{sku},"qty":{qty},"refundAmount":5.00}}],"refundedAt":"2024-01-16T09:00:00","eventTime":"2024-01-16T09:00:00.000","traceId":"t","version":"1.0"}}"#
    );
    envelope(message_id, "AfterSaleRefundedEvent", order_no, &payload)
}

pub(crate) async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn line_status(app: &TestApp, order: &str) -> String {
    let (_, body) = app
        .get(&format!("/inventory/reservations?orderNo={order}"))
        .await;
    body["data"][0]["status"].as_str().unwrap_or("").to_string()
}

#[actix_web::test]
async fn cancel_payment_and_refund_events_do_their_job() {
    let s = setup(&[]).await;
    let key = SkuKey::new(WarehouseId(1), SkuId(5001));
    s.app.stock_in(SkuId(5001), WarehouseId(1), 20).await;
    for order in ["PAID-1", "CANCEL-1"] {
        let m = order_created(&mid(), order, r#"[{"skuId":5001,"qty":3}]"#);
        s.kafka
            .send("ORDER_TOPIC", "ORDER_CREATED", order, &m)
            .await;
    }
    assert_eq!(s.kafka.collect("INVENTORY_TOPIC", 2, WAIT).await.len(), 2);

    s.kafka
        .send(
            "PAYMENT_TOPIC",
            "PAYMENT_SUCCEEDED",
            "PAID-1",
            &payment(&mid(), "PAID-1"),
        )
        .await;
    s.kafka
        .send(
            "ORDER_TOPIC",
            "ORDER_CANCELED",
            "CANCEL-1",
            &cancel(&mid(), "CANCEL-1"),
        )
        .await;
    wait_for("payment", || async {
        line_status(&s.app, "PAID-1").await == "CONFIRMED"
    })
    .await;
    wait_for("cancel", || async {
        line_status(&s.app, "CANCEL-1").await == "RELEASED"
    })
    .await;

    // A refund of 2 of the 3 sold units, delivered twice under two message ids: once.
    s.kafka
        .send(
            "AFTERSALES_TOPIC",
            "AFTERSALE_REFUNDED",
            "PAID-1",
            &refund(&mid(), "AS-1", "PAID-1", 5001, 2),
        )
        .await;
    s.kafka
        .send(
            "AFTERSALES_TOPIC",
            "AFTERSALE_REFUNDED",
            "PAID-1",
            &refund(&mid(), "AS-1", "PAID-1", 5001, 2),
        )
        .await;
    // A cancel that overtakes its order leaves a tombstone: the order is then refused.
    s.kafka
        .send(
            "ORDER_TOPIC",
            "ORDER_CANCELED",
            "EARLY-1",
            &cancel(&mid(), "EARLY-1"),
        )
        .await;
    let late = order_created(&mid(), "EARLY-1", r#"[{"skuId":5001,"qty":1}]"#);
    s.kafka
        .send("ORDER_TOPIC", "ORDER_CREATED", "EARLY-1", &late)
        .await;
    let out = s.kafka.collect("INVENTORY_TOPIC", 3, WAIT).await;
    let refused = out
        .iter()
        .find(|m| m.key == "EARLY-1")
        .expect("outcome for EARLY-1");
    assert_eq!(refused.headers["tag"], "STOCK_RESERVE_FAILED");
    assert_eq!(refused.payload()["errorCode"], "INVALID_RESERVATION_STATUS");

    wait_for("refund", || async {
        let mut conn = s.app.db_conn().await;
        inventory::store::models::LedgerEntry::for_position(&mut conn, key)
            .await
            .unwrap()
            .iter()
            .any(|e| e.reason == "REFUND_RESTORE")
    })
    .await;
    // Give the duplicate refund time to be (not) applied.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let audits = s.app.assert_invariants(&[key]).await;
    let a = &audits[0];
    // 20 in; PAID-1 sold 3; CANCEL-1 back; 2 refunded units back on the shelf.
    assert_eq!(a.lines_confirmed, 3);
    assert_eq!(a.db_reserved, Some(0));
    assert_eq!(a.db_available, Some(20 - 3 + 2));
    assert_eq!(a.ledger_stock_on_hand, 22);
}

#[actix_web::test]
async fn a_consumer_restarted_mid_stream_loses_nothing_and_reserves_nothing_twice() {
    let mut s = setup(&[]).await;
    let key = SkuKey::new(WarehouseId(1), SkuId(6001));
    s.app.stock_in(SkuId(6001), WarehouseId(1), 150).await;
    for n in 0..300 {
        let order = format!("STREAM-{n}");
        let m = order_created(&mid(), &order, r#"[{"skuId":6001,"qty":1}]"#);
        s.kafka
            .send("ORDER_TOPIC", "ORDER_CREATED", &order, &m)
            .await;
    }
    // Stop after some were handled, then a new instance takes over the group.
    let deadline = Instant::now() + WAIT;
    loop {
        let handled = s
            .app
            .redis
            .journal_lag(inventory::engine::persistence::PERSIST_GROUP)
            .await
            .unwrap()
            .length;
        if handled >= 20 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.app.stop().await;
    let settings = s.app.settings.clone();
    let db_name = s.app.db_name.clone();
    s.app = start(settings, db_name).await;

    let out = s
        .kafka
        .collect_keys("INVENTORY_TOPIC", 300, Duration::from_secs(60))
        .await;
    let mut outcome: HashMap<String, String> = HashMap::new();
    for m in &out {
        let previous = outcome.insert(m.key.clone(), m.headers["tag"].clone());
        if let Some(previous) = previous {
            assert_eq!(
                previous, m.headers["tag"],
                "{} got two different outcomes",
                m.key
            );
        }
    }
    assert_eq!(outcome.len(), 300, "every order got an outcome");
    let reserved = outcome.values().filter(|t| *t == "STOCK_RESERVED").count();
    assert_eq!(reserved, 150);
    let audits = s.app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].lines_reserved, 150);
    assert_eq!(audits[0].db_available, Some(0));
}

/// Stock-level events: a flash sale from 100 to 0 with a threshold of 10 tells one
/// STOCK_LOW and one STOCK_OUT (not one per order), a restock tells STOCK_BACK; a bad
/// threshold is refused and changes nothing.
#[actix_web::test]
async fn a_flash_sale_tells_stock_low_and_out_once_and_a_restock_tells_back() {
    let s = setup(&[]).await;
    let key = SkuKey::new(WarehouseId(1), SkuId(9101));
    s.app.stock_in(SkuId(9101), WarehouseId(1), 100).await;
    let (status, body) = s
        .app
        .put_json(
            "/inventory/9101/low-stock-threshold?warehouseId=1",
            &serde_json::json!({"lowStockThreshold": 10}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["lowStockThreshold"], 10, "{body}");
    // Bad input: refused with a code, the threshold stays.
    for (path, bad, code, want) in [
        (
            "/inventory/9101/low-stock-threshold?warehouseId=1",
            serde_json::json!({"lowStockThreshold": -1}),
            "QUANTITY_OUT_OF_RANGE",
            400,
        ),
        (
            "/inventory/9101/low-stock-threshold?warehouseId=1",
            serde_json::json!({"threshold": 5}),
            "INVALID_JSON",
            400,
        ),
        (
            "/inventory/9101/low-stock-threshold?warehouseId=1",
            serde_json::json!({}),
            "INVALID_PARAMETER",
            400,
        ),
        (
            "/inventory/9199/low-stock-threshold?warehouseId=1",
            serde_json::json!({"lowStockThreshold": 5}),
            "INVENTORY_NOT_FOUND",
            404,
        ),
    ] {
        let (status, body) = s.app.put_json(path, &bad).await;
        assert_eq!(status, want, "{bad}: {body}");
        assert_eq!(body["code"], code, "{bad}: {body}");
    }
    let mut conn = s.app.db_conn().await;
    assert_eq!(
        inventory::store::models::StockThreshold::get(&mut conn, key)
            .await
            .unwrap(),
        Some(10)
    );
    drop(conn);

    let orders = (0..105).map(|i| {
        let app = &s.app;
        async move {
            app.post_json(
                "/inventory/reserve",
                &serde_json::json!({"orderNo": format!("LV-{i}"), "skuId": 9101, "warehouseId": 1, "qty": 1}),
            )
            .await
            .0
        }
    });
    let statuses = futures_util::future::join_all(orders).await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 100);
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 5);
    s.app.stock_in(SkuId(9101), WarehouseId(1), 50).await;

    // The first stock-in (0 -> 100) is a STOCK_BACK too.
    // Four events, then nothing more for 2 s (one per crossing, not one per order).
    let out = s
        .kafka
        .collect_settled("INVENTORY_ALERT_TOPIC", 4, WAIT, Duration::from_secs(2))
        .await;
    let told: Vec<(String, i64)> = out
        .iter()
        .map(|m| {
            (
                m.headers["tag"].clone(),
                m.payload()["availableQty"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        told,
        [
            ("STOCK_BACK".to_string(), 100),
            ("STOCK_LOW".to_string(), 10),
            ("STOCK_OUT".to_string(), 0),
            ("STOCK_BACK".to_string(), 50),
        ],
        "{told:?}"
    );
    let low = &out[1];
    assert_eq!(low.key, "1:9101");
    let env = low.envelope();
    assert_eq!(env["eventType"], "StockLowEvent");
    let typed: inventory::events::wire::StockLevelEvent =
        serde_json::from_str(env["payload"].as_str().unwrap()).expect("strict parse");
    assert_eq!(typed.threshold, Some(10));
    assert_eq!((typed.sku_id, typed.warehouse_id), (9101, 1));
    // Distinct events, distinct ids.
    let ids: HashSet<String> = out
        .iter()
        .map(|m| m.payload()["eventId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 4);
    let audits = s.app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].lines_reserved, 100);
    // null clears it.
    let (status, body) = s
        .app
        .put_json(
            "/inventory/9101/low-stock-threshold?warehouseId=1",
            &serde_json::json!({"lowStockThreshold": null}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"]["lowStockThreshold"].is_null(), "{body}");
    let mut conn = s.app.db_conn().await;
    assert_eq!(
        inventory::store::models::StockThreshold::get(&mut conn, key)
            .await
            .unwrap(),
        None
    );
}
