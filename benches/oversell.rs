//! Oversell benchmark: drives reservations at the real service (in-process engine or HTTP)
//! against the real Redis and MariaDB, then verifies that nothing was oversold and that the
//! invariants hold once the journal drains. Any violation fails the run (exit 1).
//!
//! cargo bench --bench oversell -- [--target inprocess|http|kafka|reference] [--skus N]
//!     [--stock N] [--requests N] [--concurrency N] [--qty N] [--lines N]
//!     [--duplicates F] [--confirm F] [--release F] [--duration SECS] [--compare]
//!     [--json FILE] [--corrupt]
//!
//! --target kafka       ORDER_CREATED to the broker in $KAFKA_BROKERS (topics of the run's
//!                      own), latency until the outcome arrives on INVENTORY_TOPIC.
//! --target reference   the reference's design, for comparison: one EVALSHA per line, then a
//!                      synchronous DB transaction per request (CAS update of t_inventory,
//!                      reservation row, ledger row).
//! --compare            also measures, in the same run and with the same load, the reference
//!                      design and the single-Redis ceiling (redis-benchmark, pipelined, of a
//!                      minimal check-and-decrement script), and prints the ratios.
//! --confirm / --release fractions of held orders confirmed / released right after; the rest
//!                      are left to expire.
//! --corrupt            changes a stock count behind the service's back before verifying;
//!                      the run must then fail (proves the verification works).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inventory::config::Settings;
use inventory::domain::{LedgerReason, SkuKey};
use inventory::engine::audit::audit_position;
use inventory::engine::persistence::PERSIST_GROUP;
use inventory::engine::reservation::{ReservationEngine, ReserveRequest};
use inventory::engine::stock::AdjustRequest;
use inventory::engine::EngineError;
use inventory::startup::Application;
use inventory::store::db::DbPool;
use inventory::store::redis::RedisStore;
use inventory::store::reservations::OrderLine;
use serde_json::json;

#[derive(Debug, Clone)]
struct Options {
    target: String,
    skus: i64,
    stock: i64,
    requests: usize,
    concurrency: usize,
    qty: i64,
    lines: usize,
    duplicates: f64,
    confirm: f64,
    release: f64,
    duration: Option<Duration>,
    compare: bool,
    json: Option<String>,
    corrupt: bool,
    smoke: bool,
    /// Service settings for the run (`--set journal.batch_size=512`), to compare tunings.
    settings: Vec<(String, toml::Value)>,
}

fn parse_options() -> Options {
    let mut o = Options {
        target: "inprocess".into(),
        skus: 1,
        stock: 10_000,
        requests: 50_000,
        concurrency: 256,
        qty: 1,
        lines: 1,
        duplicates: 0.0,
        confirm: 0.0,
        release: 0.0,
        duration: None,
        compare: false,
        json: None,
        corrupt: false,
        smoke: false,
        settings: Vec::new(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs this without `--bench`: a small smoke run, so CI checks
    // that the harness and its verification work.
    if !args.iter().any(|a| a == "--bench") {
        o.smoke = true;
        o.requests = 2_000;
        o.stock = 500;
        o.concurrency = 64;
        o.confirm = 0.3;
        o.release = 0.2;
        o.duplicates = 0.1;
    }
    let mut i = 0;
    while i < args.len() {
        let value = || args.get(i + 1).cloned().unwrap_or_default();
        let flag = |o: &mut Options, name: &str| match name {
            "--corrupt" => o.corrupt = true,
            "--compare" => o.compare = true,
            _ => {}
        };
        match args[i].as_str() {
            "--target" => o.target = value(),
            "--skus" => o.skus = value().parse().unwrap_or(o.skus),
            "--stock" => o.stock = value().parse().unwrap_or(o.stock),
            "--requests" => o.requests = value().parse().unwrap_or(o.requests),
            "--concurrency" => o.concurrency = value().parse().unwrap_or(o.concurrency),
            "--qty" => o.qty = value().parse().unwrap_or(o.qty),
            "--lines" => o.lines = value().parse().unwrap_or(o.lines),
            "--duplicates" => o.duplicates = value().parse().unwrap_or(o.duplicates),
            "--confirm" => o.confirm = value().parse().unwrap_or(o.confirm),
            "--release" => o.release = value().parse().unwrap_or(o.release),
            "--duration" => o.duration = value().parse::<f64>().ok().map(Duration::from_secs_f64),
            "--json" => o.json = Some(value()),
            "--set" => {
                let raw = value();
                if let Some((key, v)) = raw.split_once('=') {
                    let v = match (v.parse::<i64>(), v.parse::<bool>()) {
                        (Ok(n), _) => toml::Value::Integer(n),
                        (_, Ok(b)) => toml::Value::Boolean(b),
                        _ => toml::Value::String(v.to_string()),
                    };
                    o.settings.push((key.to_string(), v));
                }
            }
            name @ ("--corrupt" | "--compare") => {
                flag(&mut o, name);
                i += 1;
                continue;
            }
            // cargo bench passes --bench
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o.skus = o.skus.max(1);
    o.lines = o.lines.clamp(1, o.skus as usize);
    o.concurrency = o.concurrency.max(1);
    o
}

/// Deterministic per-request choice (no shared RNG on the hot path).
fn mix(n: u64) -> u64 {
    let mut x = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn fraction(n: u64, salt: u64) -> f64 {
    (mix(n ^ salt) % 10_000) as f64 / 10_000.0
}

const SKU_BASE: i64 = 100_000;
const BENCH_TOKEN: &str = "bench-admin-token-0123456789";
const REFERENCE_SKU_BASE: i64 = 900_000;

fn order_lines(o: &Options, n: u64, base: i64) -> Vec<OrderLine> {
    let first = (mix(n) % o.skus as u64) as i64;
    (0..o.lines as i64)
        .map(|l| OrderLine {
            key: SkuKey::new(1, base + (first + l) % o.skus),
            qty: o.qty,
        })
        .collect()
}

enum Outcome {
    Held,
    Repeat,
    Insufficient,
    Error(String),
}

#[derive(Default)]
struct LoadResult {
    latencies: Vec<Duration>,
    held: u64,
    repeats: u64,
    insufficient: u64,
    errors: HashMap<String, u64>,
    confirmed: u64,
    released: u64,
    elapsed: Duration,
    requests: u64,
    peak_lag: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

/// The reference's design: one EVALSHA per line (check the marker, check and decrement
/// the stock, set the marker), then one synchronous DB transaction per request.
#[derive(Clone)]
struct Reference {
    redis: RedisStore,
    pool: DbPool,
    script: Arc<redis::Script>,
    prefix: String,
}

const REFERENCE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local available = tonumber(redis.call('GET', KEYS[1]) or '-1')
if available < tonumber(ARGV[1]) then return -1 end
redis.call('DECRBY', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[1], 'EX', 86400)
return 1
"#;

impl Reference {
    fn stock_key(&self, key: SkuKey) -> String {
        format!("{}ref:{}:{}", self.prefix, key.warehouse_id, key.sku_id)
    }

    async fn setup(&self, keys: &[SkuKey], stock: i64) {
        use diesel_async::RunQueryDsl;
        let mut conn = inventory::store::db::connection(&self.pool)
            .await
            .expect("db");
        for key in keys {
            diesel::sql_query(format!(
                "INSERT INTO t_inventory (sku_id, warehouse_id, available_qty, reserved_qty) VALUES ({}, {}, {stock}, 0)",
                key.sku_id, key.warehouse_id
            ))
            .execute(&mut conn)
            .await
            .expect("reference stock row");
            let mut r = self.redis.connection();
            let _: () = redis::cmd("SET")
                .arg(self.stock_key(*key))
                .arg(stock)
                .query_async(&mut r)
                .await
                .expect("reference stock key");
        }
    }

    async fn reserve(&self, order_no: &str, lines: &[OrderLine]) -> Outcome {
        for line in lines {
            let mut r = self.redis.connection();
            let result: Result<i64, _> = self
                .script
                .key(self.stock_key(line.key))
                .key(format!(
                    "{}ref:res:{order_no}:{}",
                    self.prefix, line.key.sku_id
                ))
                .arg(line.qty)
                .invoke_async(&mut r)
                .await;
            match result {
                Ok(1) => {}
                Ok(0) => return Outcome::Repeat,
                Ok(_) => return Outcome::Insufficient,
                Err(e) => return Outcome::Error(format!("redis: {e}")),
            }
        }
        match self.write_db(order_no, lines).await {
            Ok(()) => Outcome::Held,
            Err(e) => Outcome::Error(format!("db: {e}")),
        }
    }

    async fn write_db(&self, order_no: &str, lines: &[OrderLine]) -> Result<(), String> {
        use diesel::sql_types::{BigInt, Integer, Varchar};
        use diesel_async::{AsyncConnection, RunQueryDsl};
        let mut conn = inventory::store::db::connection(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        let order_no = order_no.to_string();
        let lines = lines.to_vec();
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            for line in &lines {
                let updated = diesel::sql_query(
                    "UPDATE t_inventory SET available_qty = available_qty - ?, reserved_qty = reserved_qty + ?, version = version + 1 \
                     WHERE sku_id = ? AND warehouse_id = ? AND available_qty >= ?",
                )
                .bind::<Integer, _>(line.qty as i32)
                .bind::<Integer, _>(line.qty as i32)
                .bind::<BigInt, _>(line.key.sku_id)
                .bind::<BigInt, _>(line.key.warehouse_id)
                .bind::<Integer, _>(line.qty as i32)
                .execute(conn)
                .await?;
                if updated != 1 {
                    return Err(diesel::result::Error::RollbackTransaction);
                }
                diesel::sql_query(
                    "INSERT INTO t_inventory_reservation (order_no, sku_id, warehouse_id, qty, status, expire_at, version) \
                     VALUES (?, ?, ?, ?, 'RESERVED', NOW() + INTERVAL 30 MINUTE, 1)",
                )
                .bind::<Varchar, _>(&order_no)
                .bind::<BigInt, _>(line.key.sku_id)
                .bind::<BigInt, _>(line.key.warehouse_id)
                .bind::<Integer, _>(line.qty as i32)
                .execute(conn)
                .await?;
                diesel::sql_query(
                    "INSERT INTO t_inventory_txn (txn_id, order_no, sku_id, warehouse_id, delta_available, delta_reserved, \
                     available_after, reserved_after, reason) \
                     SELECT ?, ?, sku_id, warehouse_id, ?, ?, available_qty, reserved_qty, 'RESERVE' \
                     FROM t_inventory WHERE sku_id = ? AND warehouse_id = ?",
                )
                .bind::<Varchar, _>(format!("ref-{order_no}-{}", line.key.sku_id))
                .bind::<Varchar, _>(&order_no)
                .bind::<Integer, _>(-(line.qty as i32))
                .bind::<Integer, _>(line.qty as i32)
                .bind::<BigInt, _>(line.key.sku_id)
                .bind::<BigInt, _>(line.key.warehouse_id)
                .execute(conn)
                .await?;
            }
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())
    }
}

/// Orders through Kafka: ORDER_CREATED in, the outcome awaited on INVENTORY_TOPIC.
#[derive(Clone)]
struct KafkaDriver {
    producer: rdkafka::producer::FutureProducer,
    order_topic: String,
    payment_topic: String,
    waiting: Arc<dashmap::DashMap<String, tokio::sync::oneshot::Sender<(String, String)>>>,
    held: Arc<dashmap::DashMap<String, ()>>,
    sent: Arc<AtomicU64>,
}

fn envelope(order_no: &str, event_type: &str, payload: &serde_json::Value) -> String {
    json!({
        "messageId": uuid::Uuid::new_v4().simple().to_string(),
        "businessKey": order_no,
        "traceId": format!("bench-{order_no}"),
        "eventType": event_type,
        "version": "1.0",
        "eventTime": "2024-01-15T10:30:45.123",
        "source": "bench",
        "payload": payload.to_string(),
    })
    .to_string()
}

impl KafkaDriver {
    fn start(brokers: &str, topics: &KafkaTopics) -> KafkaDriver {
        use rdkafka::consumer::{Consumer, StreamConsumer};
        use rdkafka::message::{Headers, Message};
        let producer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "1")
            .create()
            .expect("bench producer");
        let consumer: StreamConsumer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set(
                "group.id",
                format!("bench-listener-{}", uuid::Uuid::new_v4()),
            )
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            // tansu holds a fetch for the whole wait even when data arrives: with the
            // default 500 ms every outcome looked 500 ms late, and the closed-loop clients
            // (each waits for its outcome) were capped at concurrency / 0.5 s.
            .set("fetch.wait.max.ms", "10")
            .create()
            .expect("bench consumer");
        consumer.subscribe(&[&topics.inventory]).expect("subscribe");
        let waiting: Arc<dashmap::DashMap<String, tokio::sync::oneshot::Sender<(String, String)>>> =
            Arc::new(dashmap::DashMap::new());
        let listener = waiting.clone();
        actix_web::rt::spawn(async move {
            loop {
                let Ok(m) = consumer.recv().await else {
                    continue;
                };
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).to_string();
                let tag = m
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "tag").and_then(|h| h.value))
                    .map(|v| String::from_utf8_lossy(v).to_string())
                    .unwrap_or_default();
                let body: serde_json::Value =
                    serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
                let payload: serde_json::Value = body["payload"]
                    .as_str()
                    .and_then(|p| serde_json::from_str(p).ok())
                    .unwrap_or_default();
                let code = payload["errorCode"].as_str().unwrap_or("").to_string();
                if let Some((_, tx)) = listener.remove(&key) {
                    let _ = tx.send((tag, code));
                }
            }
        });
        KafkaDriver {
            producer,
            order_topic: topics.order.clone(),
            payment_topic: topics.payment.clone(),
            waiting,
            held: Arc::new(dashmap::DashMap::new()),
            sent: Arc::new(AtomicU64::new(0)),
        }
    }

    async fn send(&self, topic: &str, tag: &str, key: &str, body: &str) -> bool {
        use rdkafka::message::{Header, OwnedHeaders};
        let headers = OwnedHeaders::new().insert(Header {
            key: "tag",
            value: Some(tag),
        });
        let sent = self
            .producer
            .send(
                rdkafka::producer::FutureRecord::to(topic)
                    .key(key)
                    .payload(body)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .is_ok();
        if sent {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    async fn reserve(&self, order_no: &str, lines: &[OrderLine]) -> Outcome {
        let items: Vec<_> = lines
            .iter()
            .map(
                |l| json!({"skuId": l.key.sku_id, "warehouseId": l.key.warehouse_id, "qty": l.qty}),
            )
            .collect();
        let payload = json!({"eventId": uuid::Uuid::new_v4().simple().to_string(),
            "orderNo": order_no, "userId": 1, "amount": 1.0, "status": "CREATED", "items": items,
            "eventTime": "2024-01-15T10:30:45.123", "traceId": format!("bench-{order_no}"), "version": "1.0"});
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting.insert(order_no.to_string(), tx);
        let body = envelope(order_no, "OrderCreatedEvent", &payload);
        if !self
            .send(&self.order_topic, "ORDER_CREATED", order_no, &body)
            .await
        {
            self.waiting.remove(order_no);
            return Outcome::Error("PRODUCE_FAILED".into());
        }
        match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok((tag, _))) if tag == "STOCK_RESERVED" => {
                if self.held.insert(order_no.to_string(), ()).is_some() {
                    Outcome::Repeat
                } else {
                    Outcome::Held
                }
            }
            Ok(Ok((_, code))) if code == "INSUFFICIENT_STOCK" => Outcome::Insufficient,
            Ok(Ok((_, code))) => Outcome::Error(code),
            _ => Outcome::Error("NO_OUTCOME".into()),
        }
    }

    async fn settle(&self, order_no: &str, confirm: bool) -> bool {
        if confirm {
            let payload = json!({"eventId": uuid::Uuid::new_v4().simple().to_string(),
                "payNo": format!("PAY-{order_no}"), "orderNo": order_no, "amount": 1.0,
                "channel": "BENCH", "channelTradeNo": "T", "paidAt": "2024-01-15T10:32:00",
                "eventTime": "2024-01-15T10:32:00.000", "traceId": "bench", "version": "1.0"});
            let body = envelope(order_no, "PaymentSucceededEvent", &payload);
            self.send(&self.payment_topic, "PAYMENT_SUCCEEDED", order_no, &body)
                .await
        } else {
            let payload = json!({"eventId": uuid::Uuid::new_v4().simple().to_string(),
                "orderNo": order_no, "userId": 1, "amount": 1.0, "cancelReason": "bench",
                "operator": "bench", "eventTime": "2024-01-15T10:32:00.000", "traceId": "bench",
                "version": "1.0"});
            let body = envelope(order_no, "OrderCanceledEvent", &payload);
            self.send(&self.order_topic, "ORDER_CANCELED", order_no, &body)
                .await
        }
    }
}

struct KafkaTopics {
    order: String,
    payment: String,
    aftersales: String,
    inventory: String,
    dead_letter: String,
}

#[derive(Clone)]
enum Driver {
    InProcess(Box<ReservationEngine>),
    Http(reqwest::Client, String),
    Reference(Box<Reference>),
    Kafka(Box<KafkaDriver>),
}

impl Driver {
    async fn reserve(&self, order_no: String, lines: Vec<OrderLine>) -> Outcome {
        match self {
            Driver::InProcess(engine) => match engine
                .reserve(ReserveRequest {
                    order_no,
                    lines,
                    trace_id: String::new(),
                })
                .await
            {
                Ok(out) if out.existed => Outcome::Repeat,
                Ok(_) => Outcome::Held,
                Err(EngineError::InsufficientStock { .. }) => Outcome::Insufficient,
                Err(e) => Outcome::Error(error_code(&e)),
            },
            Driver::Http(client, base) => {
                let items: Vec<_> = lines
                    .iter()
                    .map(|l| json!({"skuId": l.key.sku_id, "warehouseId": l.key.warehouse_id, "qty": l.qty}))
                    .collect();
                match client
                    .post(format!("{base}/inventory/reserve"))
                    .json(&json!({"orderNo": order_no, "items": items}))
                    .send()
                    .await
                {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body: serde_json::Value = r.json().await.unwrap_or_default();
                        match (status, body["data"]["existed"].as_bool()) {
                            (200, Some(true)) => Outcome::Repeat,
                            (200, _) => Outcome::Held,
                            _ if body["code"] == "INSUFFICIENT_STOCK" => Outcome::Insufficient,
                            _ => {
                                Outcome::Error(body["code"].as_str().unwrap_or("HTTP").to_string())
                            }
                        }
                    }
                    Err(e) => Outcome::Error(format!("transport: {e}")),
                }
            }
            Driver::Reference(reference) => reference.reserve(&order_no, &lines).await,
            Driver::Kafka(kafka) => kafka.reserve(&order_no, &lines).await,
        }
    }

    /// Settles a held order right away (confirm or release); false when not supported.
    async fn settle(&self, order_no: &str, confirm: bool) -> bool {
        match self {
            Driver::InProcess(engine) => {
                if confirm {
                    engine.confirm(order_no, "").await.is_ok()
                } else {
                    engine
                        .release(order_no, LedgerReason::Release, "bench", "")
                        .await
                        .is_ok()
                }
            }
            Driver::Http(client, base) => {
                let op = if confirm { "confirm" } else { "release" };
                client
                    .post(format!(
                        "{base}/inventory/reservations/{op}?orderNo={order_no}"
                    ))
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            }
            Driver::Reference(_) => false,
            Driver::Kafka(kafka) => kafka.settle(order_no, confirm).await,
        }
    }
}

fn error_code(e: &EngineError) -> String {
    match e {
        EngineError::Overloaded | EngineError::JournalFull => "SERVICE_OVERLOADED".into(),
        EngineError::Timeout => "TIMEOUT".into(),
        EngineError::Redis(_) | EngineError::Db(_) => "STORE_UNAVAILABLE".into(),
        EngineError::IdempotencyConflict(_) => "IDEMPOTENCY_CONFLICT".into(),
        EngineError::InventoryNotFound(_) => "INVENTORY_NOT_FOUND".into(),
        other => format!("{other:?}").chars().take(40).collect(),
    }
}

async fn drive(
    o: &Options,
    driver: Driver,
    base: i64,
    prefix: &str,
    lag_source: Option<RedisStore>,
) -> LoadResult {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    // Journal lag sampled while the load runs.
    let sampler = lag_source.map(|redis| {
        let done = done.clone();
        let peak = peak.clone();
        actix_web::rt::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Ok(lag) = redis.journal_lag(PERSIST_GROUP).await {
                    peak.fetch_max(lag.not_persisted(), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    });
    let progress_every = (o.requests / 10).max(1) as u64;
    let deadline = o.duration.map(|d| Instant::now() + d);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..o.concurrency {
        let o = o.clone();
        let next = next.clone();
        let driver = driver.clone();
        let prefix = prefix.to_string();
        workers.push(actix_web::rt::spawn(async move {
            let mut r = LoadResult::default();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= o.requests as u64 || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                if n > 0 && n % progress_every == 0 {
                    eprintln!("  {n} requests sent");
                }
                // A duplicate re-sends an earlier order (a client retry).
                let order_id = if o.duplicates > 0.0 && n > 0 && fraction(n, 0xD0) < o.duplicates {
                    mix(n) % n
                } else {
                    n
                };
                let lines = order_lines(&o, order_id, base);
                let order_no = format!("{prefix}{order_id}");
                let t = Instant::now();
                let outcome = driver.reserve(order_no.clone(), lines).await;
                r.latencies.push(t.elapsed());
                r.requests += 1;
                match outcome {
                    Outcome::Held => {
                        r.held += 1;
                        let f = fraction(order_id, 0xC0);
                        if f < o.confirm {
                            r.confirmed += u64::from(driver.settle(&order_no, true).await);
                        } else if f < o.confirm + o.release {
                            r.released += u64::from(driver.settle(&order_no, false).await);
                        }
                    }
                    Outcome::Repeat => r.repeats += 1,
                    Outcome::Insufficient => r.insufficient += 1,
                    Outcome::Error(code) => *r.errors.entry(code).or_insert(0) += 1,
                }
            }
            r
        }));
    }
    let mut total = LoadResult::default();
    for w in workers {
        let r = w.await.expect("worker");
        total.latencies.extend(r.latencies);
        total.held += r.held;
        total.repeats += r.repeats;
        total.insufficient += r.insufficient;
        total.confirmed += r.confirmed;
        total.released += r.released;
        total.requests += r.requests;
        for (code, n) in r.errors {
            *total.errors.entry(code).or_insert(0) += n;
        }
    }
    total.elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = s.await;
    }
    total.peak_lag = peak.load(Ordering::Relaxed);
    total.latencies.sort();
    total
}

/// redis-benchmark of a minimal check-and-decrement script, pipelined: what one Redis can do
/// at best on this machine. None when redis-benchmark is not installed.
fn redis_ceiling(redis_url: &str, prefix: &str) -> Option<f64> {
    let port = redis_url
        .rsplit(':')
        .next()?
        .trim_end_matches('/')
        .parse::<u16>()
        .ok()?;
    let script = "local a = tonumber(redis.call('GET', KEYS[1]) or '0') if a < 1 then return -1 end return redis.call('DECRBY', KEYS[1], 1)";
    let cli = |args: &[&str]| {
        std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .ok()
    };
    let key = format!("{prefix}ceiling");
    cli(&["SET", &key, "1000000000000"])?;
    let sha = String::from_utf8(cli(&["SCRIPT", "LOAD", script])?.stdout).ok()?;
    let out = std::process::Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-n",
            "300000",
            "-c",
            "32",
            "-P",
            "32",
            "-q",
        ])
        .args(["EVALSHA", sha.trim(), "1", &key])
        .output()
        .ok()?;
    cli(&["DEL", &key]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // "EVALSHA <sha> 1 <key>: 259740.27 requests per second, p50=..." after \r progress.
    let line = text.rsplit('\r').next().unwrap_or(&text);
    let end = line.find(" requests per second")?;
    let value = line[..end].rsplit(' ').next()?.parse::<f64>().ok()?;
    Some(value)
}

/// Waits until the service's consume log has `sent` messages (every one handled).
async fn wait_consumed(state: &actix_web::web::Data<inventory::api::AppState>, sent: u64) {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use inventory::store::schema::t_mq_consume_log;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut conn = inventory::store::db::connection(state.stock.pool())
            .await
            .expect("db");
        let done: i64 = t_mq_consume_log::table
            .count()
            .get_result(&mut conn)
            .await
            .unwrap_or(0);
        if done as u64 >= sent || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Oversell, invariants 1-5 per SKU, and "units held == what callers were told".
async fn verify(
    state: &actix_web::web::Data<inventory::api::AppState>,
    keys: &[SkuKey],
    o: &Options,
    r: &LoadResult,
) -> Vec<String> {
    let mut violations = Vec::new();
    let mut units = 0;
    for key in keys {
        let audit = audit_position(state.stock.redis(), state.stock.pool(), *key)
            .await
            .expect("audit");
        let held = audit.lines_reserved + audit.lines_confirmed;
        units += held;
        if held > o.stock {
            violations.push(format!("OVERSOLD {key}: {held} held of {} units", o.stock));
        }
        for v in &audit.violations {
            violations.push(format!("{key}: {v}"));
        }
    }
    let expected = (r.held - r.released) as i64 * o.qty * o.lines as i64;
    if units != expected {
        violations.push(format!(
            "callers were told {} orders are held ({} released since): {expected} units; the DB holds {units}",
            r.held, r.released
        ));
    }
    violations
}

async fn admin_sql(url: &str, sql: &str) {
    use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl};
    let mut conn = AsyncMysqlConnection::establish(url)
        .await
        .expect("MariaDB reachable (make services)");
    diesel::sql_query(sql)
        .execute(&mut conn)
        .await
        .expect("admin statement");
}

fn summary(name: &str, r: &LoadResult) -> serde_json::Value {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    json!({
        "target": name,
        "seconds": secs,
        "requests": r.requests,
        "requestsPerSec": r.requests as f64 / secs,
        "reservationsPerSec": r.held as f64 / secs,
        "latencyMs": {
            "p50": percentile(&r.latencies, 0.50),
            "p90": percentile(&r.latencies, 0.90),
            "p99": percentile(&r.latencies, 0.99),
            "max": percentile(&r.latencies, 1.0),
        },
        "outcomes": {
            "held": r.held, "repeat": r.repeats, "insufficient": r.insufficient,
            "confirmed": r.confirmed, "released": r.released,
        },
        "errorsByCode": r.errors,
        "journalPeakLag": r.peak_lag,
    })
}

fn print_row(name: &str, r: &LoadResult) {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let errors: u64 = r.errors.values().sum();
    println!(
        "| {name} | {:.0} | {:.0} | {:.2} / {:.2} / {:.2} / {:.2} | {} / {} / {} / {} | {} |",
        r.requests as f64 / secs,
        r.held as f64 / secs,
        percentile(&r.latencies, 0.5),
        percentile(&r.latencies, 0.9),
        percentile(&r.latencies, 0.99),
        percentile(&r.latencies, 1.0),
        r.held,
        r.repeats,
        r.insufficient,
        errors,
        r.peak_lag,
    );
}

fn main() {
    let o = parse_options();
    let system = actix_web::rt::System::new();
    let code = system.block_on(run(o));
    std::process::exit(code);
}

async fn run(o: Options) -> i32 {
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "mysql://inventory:inventory@127.0.0.1:3306/inventory".into());
    let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let db_name = format!("inventory_bench_{id}");
    admin_sql(&base, &format!("CREATE DATABASE `{db_name}`")).await;
    let db_url = match base.rfind('/') {
        Some(i) => format!("{}/{}", &base[..i], db_name),
        None => format!("{base}/{db_name}"),
    };
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    let prefix = format!("b{id}:");
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_string());
    let topic = |name: &str| format!("bench-{id}-{name}");
    let topics = KafkaTopics {
        order: topic("ORDER_TOPIC"),
        payment: topic("PAYMENT_TOPIC"),
        aftersales: topic("AFTERSALES_TOPIC"),
        inventory: topic("INVENTORY_TOPIC"),
        dead_letter: topic("INVENTORY_DLQ"),
    };
    let mut overrides: Vec<(&str, toml::Value)> = vec![
        ("http.bind", "127.0.0.1:0".into()),
        ("database.url", db_url.clone().into()),
        ("redis.url", redis_url.clone().into()),
        ("redis.key_prefix", prefix.clone().into()),
        ("log.format", "pretty".into()),
        ("engine.mailbox_capacity", 100_000.into()),
        ("journal.block_ms", 10.into()),
        ("auth.admin_tokens", BENCH_TOKEN.into()),
    ];
    if o.target == "kafka" {
        overrides.extend([
            ("kafka.enabled", true.into()),
            ("kafka.brokers", brokers.clone().into()),
            ("kafka.group_id", format!("bench-{id}").into()),
            ("kafka.order_topic", topics.order.clone().into()),
            ("kafka.payment_topic", topics.payment.clone().into()),
            ("kafka.aftersales_topic", topics.aftersales.clone().into()),
            ("kafka.inventory_topic", topics.inventory.clone().into()),
            ("kafka.dead_letter_topic", topics.dead_letter.clone().into()),
            ("kafka.topic_partitions", 8.into()),
        ]);
    }
    overrides.extend(o.settings.iter().map(|(k, v)| (k.as_str(), v.clone())));
    let settings = Settings::defaults_with(&overrides).expect("settings");
    inventory::telemetry::init_with_default(settings.log.format, "warn");
    let app = Application::build(settings.clone())
        .await
        .expect("service starts");
    let port = app.port();
    let state = app.state();
    let handle = app.server_handle();
    actix_web::rt::spawn(app.run_until_stopped());

    eprintln!(
        "setting up {} SKU(s) x {} units ({} target, {} requests, concurrency {})",
        o.skus, o.stock, o.target, o.requests, o.concurrency
    );
    let keys: Vec<SkuKey> = (0..o.skus).map(|s| SkuKey::new(1, SKU_BASE + s)).collect();
    for key in &keys {
        state
            .stock
            .adjust(AdjustRequest {
                key: *key,
                delta: o.stock,
                reason: LedgerReason::Inbound,
                request_id: None,
                remark: "bench".into(),
                trace_id: "bench".into(),
            })
            .await
            .expect("stock in");
    }
    let reference = Reference {
        redis: state.stock.redis().clone(),
        pool: state.stock.pool().clone(),
        script: Arc::new(redis::Script::new(REFERENCE_LUA)),
        prefix: prefix.clone(),
    };
    let reference_keys: Vec<SkuKey> = (0..o.skus)
        .map(|s| SkuKey::new(1, REFERENCE_SKU_BASE + s))
        .collect();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {BENCH_TOKEN}")).expect("header"),
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(o.concurrency)
        .default_headers(headers)
        .build()
        .expect("client");

    let mut results: Vec<(String, LoadResult)> = Vec::new();
    let mut ceiling = None;
    if o.compare {
        eprintln!("baseline: redis-benchmark ceiling");
        ceiling = redis_ceiling(&redis_url, &prefix);
    }
    if o.compare || o.target == "reference" {
        eprintln!("baseline: the reference design (EVALSHA per request + DB transaction)");
        reference.setup(&reference_keys, o.stock).await;
        let r = drive(
            &o,
            Driver::Reference(Box::new(reference.clone())),
            REFERENCE_SKU_BASE,
            "R-",
            None,
        )
        .await;
        results.push(("reference".into(), r));
    }
    let main_driver = match o.target.as_str() {
        "http" => Some(Driver::Http(client, format!("http://127.0.0.1:{port}"))),
        "inprocess" => Some(Driver::InProcess(Box::new(state.reservations.clone()))),
        "kafka" => Some(Driver::Kafka(Box::new(KafkaDriver::start(
            &brokers, &topics,
        )))),
        _ => None,
    };
    let mut drain = Duration::ZERO;
    if let Some(driver) = main_driver {
        eprintln!("load: {}", o.target);
        let kafka_sent = match &driver {
            Driver::Kafka(k) => Some(k.sent.clone()),
            _ => None,
        };
        let r = drive(
            &o,
            driver,
            SKU_BASE,
            "B-",
            Some(state.stock.redis().clone()),
        )
        .await;
        // Kafka: the confirms and cancels sent are consumed before anything is checked.
        if let Some(sent) = kafka_sent {
            wait_consumed(&state, sent.load(Ordering::Relaxed)).await;
        }
        // Journal drain after the load stops.
        let drain_started = Instant::now();
        loop {
            let lag = state
                .stock
                .redis()
                .journal_lag(PERSIST_GROUP)
                .await
                .expect("lag")
                .not_persisted();
            if lag == 0 {
                break;
            }
            if drain_started.elapsed() > Duration::from_secs(120) {
                eprintln!("FAIL: journal did not drain in 120 s (lag {lag})");
                return 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drain = drain_started.elapsed();
        results.push((o.target.clone(), r));
    }

    if o.corrupt {
        eprintln!("--corrupt: adding 1 unit to Redis behind the service's back");
        let mut conn = state.stock.redis().connection();
        let _: i64 = redis::cmd("HINCRBY")
            .arg(state.stock.redis().keys().stock(keys[0]))
            .arg("avail")
            .arg(1)
            .query_async(&mut conn)
            .await
            .expect("corrupt");
    }

    // Verification: the service's positions (invariants 1-5) ...
    let mut violations = Vec::new();
    let service_result = results
        .iter()
        .find(|(n, _)| n != "reference")
        .map(|(_, r)| r);
    if let Some(r) = service_result {
        violations.extend(verify(&state, &keys, &o, r).await);
        // Smoke runs (under `cargo test`) also prove the verification catches a corruption.
        if o.smoke && violations.is_empty() {
            let redis = state.stock.redis();
            let stock_key = redis.keys().stock(keys[0]);
            let mut conn = redis.connection();
            let _: i64 = redis::cmd("HINCRBY")
                .arg(&stock_key)
                .arg("avail")
                .arg(1)
                .query_async(&mut conn)
                .await
                .expect("corrupt");
            let caught = verify(&state, &keys, &o, r).await;
            let _: i64 = redis::cmd("HINCRBY")
                .arg(&stock_key)
                .arg("avail")
                .arg(-1)
                .query_async(&mut conn)
                .await
                .expect("undo");
            if caught.is_empty() {
                violations.push("self-test: a corrupted count went unnoticed".to_string());
            } else {
                println!(
                    "self-test: an injected corruption was caught: {}",
                    caught[0]
                );
            }
        }
    }
    // ... and the reference's (no oversell there either, or the comparison is void).
    if results.iter().any(|(n, _)| n == "reference") {
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            sku_id: i64,
            #[diesel(sql_type = diesel::sql_types::Integer)]
            available_qty: i32,
            #[diesel(sql_type = diesel::sql_types::Integer)]
            reserved_qty: i32,
        }
        let mut conn = inventory::store::db::connection(state.stock.pool())
            .await
            .expect("db");
        let rows: Vec<Row> = diesel::sql_query(format!(
            "SELECT sku_id, available_qty, reserved_qty FROM t_inventory WHERE sku_id >= {REFERENCE_SKU_BASE}"
        ))
        .load(&mut conn)
        .await
        .expect("reference rows");
        for row in rows {
            if row.available_qty < 0 || i64::from(row.reserved_qty) > o.stock {
                violations.push(format!(
                    "OVERSOLD reference sku {}: available {}, reserved {}",
                    row.sku_id, row.available_qty, row.reserved_qty
                ));
            }
        }
    }

    println!();
    println!(
        "{} SKU(s) x {} units, {} requests, concurrency {}, qty {}, lines {}, duplicates {}, confirm {}, release {}",
        o.skus, o.stock, o.requests, o.concurrency, o.qty, o.lines, o.duplicates, o.confirm, o.release
    );
    println!();
    println!("| target | requests/s | reservations/s | latency p50 / p90 / p99 / max (ms) | held / repeat / insufficient / errors | journal peak lag |");
    println!("|---|---|---|---|---|---|");
    for (name, r) in &results {
        print_row(name, r);
    }
    if let Some(c) = ceiling {
        println!("| redis-benchmark ceiling (pipelined check-and-decrement) | {c:.0} | | | | |");
    }
    let reference_rate = results
        .iter()
        .find(|(n, _)| n == "reference")
        .map(|(_, r)| r.requests as f64 / r.elapsed.as_secs_f64().max(1e-9));
    let main_rate = service_result.map(|r| r.requests as f64 / r.elapsed.as_secs_f64().max(1e-9));
    if let (Some(m), Some(r)) = (main_rate, reference_rate) {
        println!(
            "\n{}: {:.1}x the reference design's request rate",
            o.target,
            m / r
        );
    }
    if let (Some(m), Some(c)) = (main_rate, ceiling) {
        println!(
            "{}: {:.0}% of the pipelined redis-benchmark ceiling",
            o.target,
            100.0 * m / c
        );
    }
    if service_result.is_some() {
        println!(
            "journal drained {:.0} ms after the load stopped",
            drain.as_secs_f64() * 1000.0
        );
    }
    for (name, r) in &results {
        if !r.errors.is_empty() {
            println!("{name} errors by code: {:?}", r.errors);
        }
    }

    if let Some(path) = &o.json {
        let report = json!({
            "options": {
                "target": o.target, "skus": o.skus, "stockPerSku": o.stock, "requests": o.requests,
                "concurrency": o.concurrency, "qty": o.qty, "linesPerOrder": o.lines,
                "duplicates": o.duplicates, "confirm": o.confirm, "release": o.release,
            },
            "results": results.iter().map(|(n, r)| summary(n, r)).collect::<Vec<_>>(),
            "redisBenchmarkCeiling": ceiling,
            "journalDrainMs": drain.as_secs_f64() * 1000.0,
            "oversold": violations.iter().any(|v| v.starts_with("OVERSOLD")),
            "violations": violations,
        });
        if let Err(e) = std::fs::write(
            path,
            serde_json::to_string_pretty(&report).unwrap_or_default(),
        ) {
            eprintln!("cannot write {path}: {e}");
        }
    }
    handle.stop(false).await;
    // Leave nothing behind.
    admin_sql(&base, &format!("DROP DATABASE `{db_name}`")).await;
    let mut conn = state.stock.redis().connection();
    let stale: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    for chunk in stale.chunks(500) {
        let _: Result<i64, _> = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await;
    }
    if violations.is_empty() {
        println!(
            "\nOK: zero oversell, invariants hold for all {} SKU(s)",
            o.skus
        );
        0
    } else {
        println!("\nFAIL: {} violation(s):", violations.len());
        for v in violations.iter().take(20) {
            println!("  {v}");
        }
        1
    }
}
