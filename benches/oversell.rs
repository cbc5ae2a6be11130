//! Oversell benchmark: drives reservations at the real service (in-process engine or HTTP)
//! against the real Redis and MariaDB, then verifies that nothing was oversold and that the
//! invariants hold once the journal drains. Any violation fails the run (exit 1).
//!
//! cargo bench --bench oversell -- [--target inprocess|http|kafka|reference] [--skus N]
//!     [--stock N] [--requests N] [--concurrency N] [--qty N] [--lines N]
//!     [--duplicates F] [--confirm F] [--release F] [--duration SECS] [--compare]
//!     [--json FILE] [--corrupt] [--flash-sale] [--rate N] [--sustain-secs SECS]
//!     [--lag-slack N] [--redis-cluster]
//!
//! --redis-cluster      the service on the local Redis Cluster (scripts/redis-cluster.sh;
//!                      seed nodes from $REDIS_CLUSTER_URLS) instead of the single Redis.
//! --flash-sale         preset: 1 SKU x 10,000 units, 500,000 orders (98% are refused);
//!                      flags after it override. Refusals are checked against the service's
//!                      own counters and against the stock left (a SKU that refused an order
//!                      must have less than qty left when nothing was released).
//! --rate N             open loop: order n is sent at start + n/N s (at most --concurrency in
//!                      flight; requests sent more than 100 ms late are counted as "late").
//! --sustain-secs S     with --rate: S seconds at that offered rate (requests = rate x S),
//!                      sampling every second the journal lag and the line changes the DB
//!                      holds (SUM(t_inventory.version)); reports persisted reservations/s and
//!                      whether the backlog stayed flat: the largest backlog in the last
//!                      min(10, S/3) s may exceed the backlog at min(10, S/3) s by at most
//!                      --lag-slack line changes (default: one second of the offered rate).
//!                      Without --stock, each SKU gets enough stock for the whole run.
//!
//! Every target's load is bracketed by `INFO commandstats`: Redis time of the scripts
//! (EVALSHA/EVAL) and the calls of every command, per held order (server-wide counters:
//! the persister's XREADGROUP/XACK and the lag sampler's XINFO/XLEN are in them too).
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

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use inventory::domain::{SkuId, WarehouseId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
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
    /// Offered requests per second (open loop); None: closed loop, as fast as answered.
    rate: Option<f64>,
    /// Sustained mode: this long at `rate`, with per-second samples of the backlog.
    sustain: Option<Duration>,
    /// Backlog growth (line changes) still counted as flat; None: one second of `rate`.
    lag_slack: Option<u64>,
    stock_given: bool,
    flash_sale: bool,
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
        rate: None,
        sustain: None,
        lag_slack: None,
        stock_given: false,
        flash_sale: false,
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
    // The flash sale: one SKU, 10,000 units, 500,000 distinct orders (98% refused).
    // Set before the flags so that any flag overrides it.
    if args.iter().any(|a| a == "--flash-sale") {
        o.flash_sale = true;
        o.skus = 1;
        o.stock = 10_000;
        o.requests = 500_000;
        o.qty = 1;
        o.lines = 1;
        o.duplicates = 0.0;
        o.confirm = 0.0;
        o.release = 0.0;
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
            "--stock" => {
                o.stock = value().parse().unwrap_or(o.stock);
                o.stock_given = true;
            }
            "--requests" => o.requests = value().parse().unwrap_or(o.requests),
            "--concurrency" => o.concurrency = value().parse().unwrap_or(o.concurrency),
            "--qty" => o.qty = value().parse().unwrap_or(o.qty),
            "--lines" => o.lines = value().parse().unwrap_or(o.lines),
            "--duplicates" => o.duplicates = value().parse().unwrap_or(o.duplicates),
            "--confirm" => o.confirm = value().parse().unwrap_or(o.confirm),
            "--release" => o.release = value().parse().unwrap_or(o.release),
            "--duration" => o.duration = value().parse::<f64>().ok().map(Duration::from_secs_f64),
            "--json" => o.json = Some(value()),
            "--rate" => o.rate = value().parse::<f64>().ok().filter(|r| *r > 0.0),
            "--sustain-secs" => {
                o.sustain = value()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| *s > 0.0)
                    .map(Duration::from_secs_f64)
            }
            "--lag-slack" => o.lag_slack = value().parse().ok(),
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
            "--flash-sale" => {
                i += 1;
                continue;
            }
            // The local Redis Cluster (scripts/redis-cluster.sh), or REDIS_CLUSTER_URLS.
            "--redis-cluster" => {
                let urls = std::env::var("REDIS_CLUSTER_URLS").unwrap_or_else(|_| {
                    "redis://127.0.0.1:7000,redis://127.0.0.1:7001,redis://127.0.0.1:7002"
                        .to_string()
                });
                o.settings
                    .push(("redis.cluster_urls".to_string(), toml::Value::String(urls)));
                i += 1;
                continue;
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
    if let (Some(sustain), Some(rate)) = (o.sustain, o.rate) {
        // Bounded in time and count: rate x seconds requests, and no longer than that.
        o.requests = (rate * sustain.as_secs_f64()).ceil() as usize;
        o.duration = Some(sustain);
        if !o.stock_given {
            // Enough for the whole run on every SKU (orders pick SKUs pseudo-randomly).
            let per_sku = o.requests as f64 * o.lines as f64 / o.skus as f64;
            o.stock = ((per_sku * 1.5 + 10.0 * per_sku.sqrt() + 10.0) as i64) * o.qty;
        }
    }
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
            key: SkuKey::new(WarehouseId(1), SkuId(base + (first + l) % o.skus)),
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
    /// Latencies of the held orders and of the refused ones (INSUFFICIENT_STOCK) apart: a
    /// flash sale's refusals must be fast.
    held_latencies: Vec<Duration>,
    refused_latencies: Vec<Duration>,
    /// Latencies of the requests sent after the warm-up (the first WARM_UP of the run,
    /// when a Kafka consumer group is still forming).
    warm_latencies: Vec<Duration>,
    held: u64,
    repeats: u64,
    insufficient: u64,
    errors: HashMap<String, u64>,
    confirmed: u64,
    released: u64,
    elapsed: Duration,
    requests: u64,
    peak_lag: u64,
    /// Open loop: requests sent more than 100 ms after their time (not enough concurrency,
    /// or the load generator starved of CPU).
    late: u64,
    /// Single-line orders: the SKUs that refused at least one order.
    refused_skus: HashSet<i64>,
    /// INFO commandstats over the load.
    redis: Option<RedisCost>,
    /// Sustained mode: one sample per second.
    samples: Vec<Sample>,
}

/// Counters the per-second sampler reads while the load runs.
#[derive(Default)]
struct Live {
    sent: AtomicU64,
    held: AtomicU64,
    settled: AtomicU64,
}

/// One second of a sustained run. `persisted` counts the line changes the DB holds since
/// the load started (SUM of t_inventory.version: each reserve, confirm or release of a line
/// is one); `client` the line changes callers were told of (held, confirmed, released).
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Sample {
    t: f64,
    sent: u64,
    held: u64,
    client: i64,
    persisted: i64,
    backlog: i64,
    journal_lag: u64,
}

/// What the DB and Redis are sampled with in sustained mode.
struct Sustain {
    redis: RedisStore,
    pool: DbPool,
    /// SUM(version) before the load.
    base: i64,
}

/// `INFO commandstats`: calls and usec per command.
type CommandStats = BTreeMap<String, (u64, u64)>;

async fn command_stats(redis: &RedisStore) -> Option<CommandStats> {
    let mut conn = redis.connection();
    let text: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .ok()?;
    Some(parse_command_stats(&text))
}

/// `cmdstat_evalsha:calls=10,usec=170,usec_per_call=17.00,...` per line.
fn parse_command_stats(text: &str) -> CommandStats {
    let mut stats = CommandStats::new();
    for line in text.lines() {
        let Some((name, fields)) = line
            .trim()
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let field = |key: &str| {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        stats.insert(name.to_string(), (field("calls"), field("usec")));
    }
    stats
}

const SCRIPT_COMMANDS: &[&str] = &[
    "evalsha",
    "eval",
    "evalsha_ro",
    "eval_ro",
    "fcall",
    "fcall_ro",
];

/// Redis work over one load, from two `INFO commandstats` snapshots.
#[derive(Debug, Clone, Default)]
struct RedisCost {
    /// Command -> (calls, usec) during the load.
    commands: CommandStats,
}

impl RedisCost {
    fn between(before: &CommandStats, after: &CommandStats) -> RedisCost {
        let mut commands = CommandStats::new();
        for (name, (calls, usec)) in after {
            let (c0, u0) = before.get(name).copied().unwrap_or((0, 0));
            let calls = calls.saturating_sub(c0);
            if calls > 0 {
                commands.insert(name.clone(), (calls, usec.saturating_sub(u0)));
            }
        }
        RedisCost { commands }
    }

    /// (calls, usec) of the script commands.
    fn scripts(&self) -> (u64, u64) {
        self.commands
            .iter()
            .filter(|(n, _)| SCRIPT_COMMANDS.contains(&n.as_str()))
            .fold((0, 0), |(c, u), (_, (calls, usec))| (c + calls, u + usec))
    }

    /// Calls of everything else: the commands run inside the scripts, plus the persister's
    /// and the samplers' (XREADGROUP, XACK, XINFO, INFO ...).
    fn others(&self) -> impl Iterator<Item = (&String, &(u64, u64))> {
        self.commands
            .iter()
            .filter(|(n, _)| !SCRIPT_COMMANDS.contains(&n.as_str()))
    }

    fn json(&self, held: u64, requests: u64) -> serde_json::Value {
        let per = |v: u64, n: u64| if n == 0 { 0.0 } else { v as f64 / n as f64 };
        let (script_calls, script_usec) = self.scripts();
        let inner: u64 = self.others().map(|(_, (c, _))| c).sum();
        json!({
            "heldOrders": held,
            "requests": requests,
            "scriptCalls": script_calls,
            "scriptUsec": script_usec,
            "scriptUsecPerHeldOrder": per(script_usec, held),
            "scriptUsecPerRequest": per(script_usec, requests),
            "scriptCallsPerHeldOrder": per(script_calls, held),
            "otherCallsPerHeldOrder": per(inner, held),
            "callsPerHeldOrder": self.others()
                .map(|(n, (c, _))| (n.clone(), json!(per(*c, held))))
                .collect::<serde_json::Map<_, _>>(),
            "commands": self.commands.iter()
                .map(|(n, (c, u))| (n.clone(), json!({"calls": c, "usec": u})))
                .collect::<serde_json::Map<_, _>>(),
        })
    }
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
type OutcomeSender = tokio::sync::oneshot::Sender<(String, String)>;

#[derive(Clone)]
struct KafkaDriver {
    producer: rdkafka::producer::FutureProducer,
    order_topic: String,
    payment_topic: String,
    /// Per orderNo, the sends waiting for an outcome (a duplicate may be in flight with
    /// its original: the first outcome answers both).
    waiting: Arc<dashmap::DashMap<String, Vec<OutcomeSender>>>,
    held: Arc<dashmap::DashMap<String, ()>>,
    sent: Arc<AtomicU64>,
    /// Every outcome the listener saw, checked against the first of its order.
    outcomes: Arc<OutcomeCheck>,
}

/// What the service published per orderNo: the first outcome's tag and a hash of its whole
/// message. A second outcome of another kind, or of the same kind but another message, is
/// a conflict (an order must have one outcome, republished identically).
#[derive(Default)]
struct OutcomeCheck {
    first: dashmap::DashMap<String, (String, u64)>,
    republished: AtomicU64,
    conflicts: AtomicU64,
    /// The first few conflicts, for the report.
    examples: std::sync::Mutex<Vec<String>>,
}

impl OutcomeCheck {
    fn see(&self, key: &str, tag: &str, message: &[u8]) {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        message.hash(&mut hasher);
        let hash = hasher.finish();
        let conflict = match self.first.entry(key.to_string()) {
            dashmap::mapref::entry::Entry::Vacant(v) => {
                v.insert((tag.to_string(), hash));
                None
            }
            dashmap::mapref::entry::Entry::Occupied(o) => {
                let (first_tag, first_hash) = o.get();
                if first_tag != tag {
                    Some(format!("order {key}: {first_tag}, then {tag}"))
                } else if *first_hash != hash {
                    Some(format!("order {key}: {tag} published twice, differently"))
                } else {
                    self.republished.fetch_add(1, Ordering::Relaxed);
                    None
                }
            }
        };
        if let Some(conflict) = conflict {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut examples) = self.examples.lock() {
                if examples.len() < 5 {
                    examples.push(conflict);
                }
            }
        }
    }

    /// Violations for the verdict: every conflict counts.
    fn violations(&self) -> Vec<String> {
        let conflicts = self.conflicts.load(Ordering::Relaxed);
        if conflicts == 0 {
            return Vec::new();
        }
        let examples = self
            .examples
            .lock()
            .map(|e| e.join("; "))
            .unwrap_or_default();
        vec![format!(
            "{conflicts} Kafka outcome(s) conflict with an earlier outcome of the same order ({examples})"
        )]
    }
}

fn envelope(order_no: &str, event_type: &str, payload: &serde_json::Value) -> String {
    json!({
        // One messageId per order and event kind: a duplicate (--duplicates) is a
        // redelivery of the same message, which idempotency layer 1 answers.
        "messageId": inventory::events::wire::derived_id(&format!("{order_no}/{event_type}"), "bench"),
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
    /// `linger_ms`: the service's setting, so that the stand-in order service batches its
    /// sends as the service batches its outcomes.
    fn start(brokers: &str, topics: &KafkaTopics, linger_ms: u64) -> KafkaDriver {
        use rdkafka::consumer::{Consumer, StreamConsumer};
        use rdkafka::message::{Headers, Message};
        let producer = rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", linger_ms.to_string())
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
        let waiting: Arc<dashmap::DashMap<String, Vec<OutcomeSender>>> =
            Arc::new(dashmap::DashMap::new());
        let listener = waiting.clone();
        let outcomes = Arc::new(OutcomeCheck::default());
        let check = outcomes.clone();
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
                check.see(&key, &tag, m.payload().unwrap_or_default());
                if let Some((_, waiters)) = listener.remove(&key) {
                    for tx in waiters {
                        let _ = tx.send((tag.clone(), code.clone()));
                    }
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
            outcomes,
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
        self.waiting
            .entry(order_no.to_string())
            .or_default()
            .push(tx);
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

/// The broker's echo ceiling: a consumer-to-producer loop with the service's client
/// settings (consumer group, manual offset store, `fetch.wait.max.ms`; idempotent producer,
/// `acks=all`, `linger.ms`) that does no work: every message of `from` goes to `to` with the
/// same key and body and a STOCK_RESERVED tag, its offset stored once the copy is
/// acknowledged. Driven by the same closed-loop clients as the service, it says what the
/// broker and the Kafka clients allow on this machine.
fn start_echo(brokers: &str, settings: &inventory::config::KafkaSettings, from: &str, to: &str) {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Header, Message, OwnedHeaders};
    let consumer: StreamConsumer = inventory::events::consumer::consumer_config(settings)
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("echo-{}", uuid::Uuid::new_v4()))
        .create()
        .expect("echo consumer");
    consumer.subscribe(&[from]).expect("echo subscribe");
    let producer: rdkafka::producer::FutureProducer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "queue.buffering.max.messages",
            settings.producer_queue_messages.to_string(),
        )
        .set("linger.ms", settings.linger_ms.to_string())
        .create()
        .expect("echo producer");
    let consumer = Arc::new(consumer);
    let to = to.to_string();
    // As many copies in flight as the service may have messages in flight.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(4096));
    actix_web::rt::spawn(async move {
        loop {
            let Ok(m) = consumer.recv().await else {
                continue;
            };
            let m = m.detach();
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let (producer, consumer, to) = (producer.clone(), consumer.clone(), to.clone());
            actix_web::rt::spawn(async move {
                let headers = OwnedHeaders::new().insert(Header {
                    key: "tag",
                    value: Some("STOCK_RESERVED"),
                });
                let key = m.key().unwrap_or_default();
                let record = rdkafka::producer::FutureRecord::to(&to)
                    .key(key)
                    .payload(m.payload().unwrap_or_default())
                    .headers(headers);
                if producer.send(record, Duration::from_secs(30)).await.is_ok() {
                    let _ = consumer.store_offset(m.topic(), m.partition(), m.offset() + 1);
                }
                drop(permit);
            });
        }
    });
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
    sustain: Option<Sustain>,
) -> LoadResult {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let live = Arc::new(Live::default());
    // INFO commandstats before and after the load (the same Redis as the service's).
    let stats_source = match &driver {
        Driver::Reference(r) => Some(r.redis.clone()),
        _ => lag_source.clone(),
    };
    let stats_before = match &stats_source {
        Some(redis) => command_stats(redis).await,
        None => None,
    };
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
    // Sustained mode: the backlog once a second.
    let per_second = sustain.map(|probe| {
        let done = done.clone();
        let live = live.clone();
        let lines = o.lines as i64;
        let skus = o.skus;
        actix_web::rt::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = 1;
            loop {
                tokio::time::sleep_until((started + Duration::from_secs(tick)).into()).await;
                if done.load(Ordering::Relaxed) {
                    break;
                }
                samples.push(sample(&probe, &live, started, lines, skus).await);
                tick += 1;
            }
            samples
        })
    });
    let mut workers = Vec::new();
    for _ in 0..o.concurrency {
        let o = o.clone();
        let next = next.clone();
        let driver = driver.clone();
        let prefix = prefix.to_string();
        let live = live.clone();
        workers.push(actix_web::rt::spawn(async move {
            let mut r = LoadResult::default();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= o.requests as u64 || deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                if let Some(rate) = o.rate {
                    // Open loop: order n is due at start + n / rate.
                    let due = started + Duration::from_secs_f64(n as f64 / rate);
                    let now = Instant::now();
                    if due > now {
                        tokio::time::sleep_until(due.into()).await;
                    } else if now - due > Duration::from_millis(100) {
                        r.late += 1;
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
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
                let single_sku = (lines.len() == 1).then(|| lines[0].key.sku_id);
                let order_no = format!("{prefix}{order_id}");
                live.sent.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let outcome = driver.reserve(order_no.clone(), lines).await;
                let latency = t.elapsed();
                r.latencies.push(latency);
                if t.duration_since(started) >= WARM_UP {
                    r.warm_latencies.push(latency);
                }
                r.requests += 1;
                match outcome {
                    Outcome::Held => {
                        r.held += 1;
                        r.held_latencies.push(latency);
                        live.held.fetch_add(1, Ordering::Relaxed);
                        let f = fraction(order_id, 0xC0);
                        let settled = if f < o.confirm {
                            let ok = driver.settle(&order_no, true).await;
                            r.confirmed += u64::from(ok);
                            ok
                        } else if f < o.confirm + o.release {
                            let ok = driver.settle(&order_no, false).await;
                            r.released += u64::from(ok);
                            ok
                        } else {
                            false
                        };
                        if settled {
                            live.settled.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Outcome::Repeat => r.repeats += 1,
                    Outcome::Insufficient => {
                        r.insufficient += 1;
                        r.refused_latencies.push(latency);
                        if let Some(sku) = single_sku {
                            r.refused_skus.insert(sku);
                        }
                    }
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
        total.held_latencies.extend(r.held_latencies);
        total.refused_latencies.extend(r.refused_latencies);
        total.warm_latencies.extend(r.warm_latencies);
        total.held += r.held;
        total.repeats += r.repeats;
        total.insufficient += r.insufficient;
        total.confirmed += r.confirmed;
        total.released += r.released;
        total.requests += r.requests;
        total.late += r.late;
        total.refused_skus.extend(r.refused_skus);
        for (code, n) in r.errors {
            *total.errors.entry(code).or_insert(0) += n;
        }
    }
    total.elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = s.await;
    }
    if let Some(s) = per_second {
        total.samples = s.await.unwrap_or_default();
    }
    // Taken when the load stops, before the drain: the scripts have all run by then.
    if let (Some(redis), Some(before)) = (&stats_source, &stats_before) {
        if let Some(after) = command_stats(redis).await {
            total.redis = Some(RedisCost::between(before, &after));
        }
    }
    total.peak_lag = peak.load(Ordering::Relaxed);
    total.latencies.sort();
    total.held_latencies.sort();
    total.refused_latencies.sort();
    total.warm_latencies.sort();
    total
}

/// The start of a run that `warm_latencies` leaves out.
const WARM_UP: Duration = Duration::from_secs(2);

/// The line changes the DB holds for the run's SKUs: SUM(version) of t_inventory.
async fn persisted_changes(pool: &DbPool, skus: i64) -> Option<i64> {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Sum {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        v: i64,
    }
    let mut conn = inventory::store::db::connection(pool).await.ok()?;
    let rows: Vec<Sum> = diesel::sql_query(format!(
        "SELECT CAST(COALESCE(SUM(version), 0) AS SIGNED) AS v FROM t_inventory \
         WHERE sku_id >= {SKU_BASE} AND sku_id < {}",
        SKU_BASE + skus
    ))
    .load(&mut conn)
    .await
    .ok()?;
    rows.into_iter().next().map(|r| r.v)
}

async fn sample(probe: &Sustain, live: &Live, started: Instant, lines: i64, skus: i64) -> Sample {
    let journal_lag = probe
        .redis
        .journal_lag(PERSIST_GROUP)
        .await
        .map(|l| l.not_persisted())
        .unwrap_or(0);
    let persisted = persisted_changes(&probe.pool, skus)
        .await
        .map(|v| v - probe.base)
        .unwrap_or(-1);
    let held = live.held.load(Ordering::Relaxed);
    let client = (held + live.settled.load(Ordering::Relaxed)) as i64 * lines;
    Sample {
        t: started.elapsed().as_secs_f64(),
        sent: live.sent.load(Ordering::Relaxed),
        held,
        client,
        persisted,
        backlog: client - persisted,
        journal_lag,
    }
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

/// Oversell, invariants 1-5 per SKU, "units held == what callers were told", and that
/// every refusal was due: a SKU that refused a single-line order has less than `qty` left
/// when no stock came back during the run (no releases).
async fn verify(
    state: &actix_web::web::Data<inventory::api::AppState>,
    keys: &[SkuKey],
    o: &Options,
    r: &LoadResult,
) -> Vec<String> {
    let mut violations = Vec::new();
    let mut units = 0;
    // Audited 8 positions at a time (10,000 SKUs one by one take long).
    let mut audits: Vec<_> = futures_util::stream::iter(keys.iter().copied())
        .map(|key| async move {
            let audit = audit_position(state.stock.redis(), state.stock.pool(), key)
                .await
                .expect("audit");
            (key, audit)
        })
        .buffer_unordered(8)
        .collect()
        .await;
    audits.sort_by_key(|(key, _)| *key);
    for (key, audit) in &audits {
        let held = audit.lines_reserved + audit.lines_confirmed;
        units += held;
        if held > o.stock {
            violations.push(format!("OVERSOLD {key}: {held} held of {} units", o.stock));
        }
        for v in &audit.violations {
            violations.push(format!("{key}: {v}"));
        }
        if o.release == 0.0 && r.refused_skus.contains(&key.sku_id) {
            let left = audit
                .redis
                .map(|l| l.available)
                .or(audit.db_available)
                .unwrap_or(0);
            if left >= o.qty {
                violations.push(format!(
                    "REFUSED WITH STOCK LEFT {key}: orders of {} were refused, {left} units are still available",
                    o.qty
                ));
            }
        }
    }
    let expected = (r.held - r.released) as i64 * o.qty * o.lines as i64;
    if units != expected {
        violations.push(format!(
            "callers were told {} orders are held ({} released since): {expected} units; the DB holds {units}",
            r.held, r.released
        ));
    }
    let errors: u64 = r.errors.values().sum();
    if r.held + r.repeats + r.insufficient + errors != r.requests {
        violations.push(format!(
            "outcomes do not add up: {} held + {} repeats + {} refused + {errors} errors != {} requests",
            r.held, r.repeats, r.insufficient, r.requests
        ));
    }
    violations
}

/// The service's own count of reserve outcomes (`reservations_total` on /metrics).
async fn service_outcomes(port: u16) -> Option<HashMap<String, u64>> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let mut counts = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.split("reservations_total{outcome=\"").nth(1) else {
            continue;
        };
        let (outcome, value) = rest.split_once("\"}")?;
        let value = value.trim().parse::<f64>().ok()? as u64;
        counts.insert(outcome.to_string(), value);
    }
    Some(counts)
}

/// The bench's counts against the service's (in-process and HTTP targets): a refusal the
/// bench counted must be one the service made, and so must every hold.
fn check_outcomes(r: &LoadResult, service: &HashMap<String, u64>) -> Vec<String> {
    let get = |k: &str| service.get(k).copied().unwrap_or(0);
    let mut violations = Vec::new();
    for (name, bench, svc) in [
        ("held", r.held, get("reserved")),
        (
            "refused (INSUFFICIENT_STOCK)",
            r.insufficient,
            get("insufficient"),
        ),
        ("repeats", r.repeats, get("exists")),
    ] {
        if bench != svc {
            violations.push(format!(
                "the bench counted {bench} {name}, the service {svc}"
            ));
        }
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

fn latency_json(sorted: &[Duration]) -> serde_json::Value {
    json!({
        "count": sorted.len(),
        "p50": percentile(sorted, 0.50),
        "p90": percentile(sorted, 0.90),
        "p99": percentile(sorted, 0.99),
        "max": percentile(sorted, 1.0),
    })
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
        "latencyMsHeld": latency_json(&r.held_latencies),
        "latencyMsRefused": latency_json(&r.refused_latencies),
        "outcomes": {
            "held": r.held, "repeat": r.repeats, "insufficient": r.insufficient,
            "confirmed": r.confirmed, "released": r.released,
        },
        "errorsByCode": r.errors,
        "journalPeakLag": r.peak_lag,
        "lateRequests": r.late,
        "redis": r.redis.as_ref().map(|c| c.json(r.held, r.requests)),
    })
}

/// Redis script time and the other commands' calls per held order, for the table.
fn redis_cells(r: &LoadResult) -> (String, String) {
    match &r.redis {
        Some(c) if r.held > 0 => {
            let (_, usec) = c.scripts();
            let others: u64 = c.others().map(|(_, (calls, _))| calls).sum();
            (
                format!("{:.1}", usec as f64 / r.held as f64),
                format!("{:.2}", others as f64 / r.held as f64),
            )
        }
        _ => (String::new(), String::new()),
    }
}

fn print_row(name: &str, r: &LoadResult) {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let errors: u64 = r.errors.values().sum();
    let (redis_usec, redis_calls) = redis_cells(r);
    println!(
        "| {name} | {:.0} | {:.0} | {:.2} / {:.2} / {:.2} / {:.2} | {} / {} / {} / {} | {} | {redis_usec} | {redis_calls} |",
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

/// Details under the table: held vs refused latency, Redis per order.
fn print_details(name: &str, r: &LoadResult) {
    if !r.warm_latencies.is_empty() && r.warm_latencies.len() < r.latencies.len() {
        println!(
            "{name}: after the first {} s (warm-up): {} requests, latency p50 {:.2} / p90 {:.2} / p99 {:.2} ms",
            WARM_UP.as_secs(),
            r.warm_latencies.len(),
            percentile(&r.warm_latencies, 0.5),
            percentile(&r.warm_latencies, 0.9),
            percentile(&r.warm_latencies, 0.99),
        );
    }
    if r.insufficient > 0 {
        println!(
            "{name}: held {} (p50 {:.2} / p99 {:.2} ms), refused INSUFFICIENT_STOCK {} (p50 {:.2} / p99 {:.2} ms)",
            r.held,
            percentile(&r.held_latencies, 0.5),
            percentile(&r.held_latencies, 0.99),
            r.insufficient,
            percentile(&r.refused_latencies, 0.5),
            percentile(&r.refused_latencies, 0.99),
        );
    }
    if r.late > 0 {
        println!(
            "{name}: {} requests were sent more than 100 ms after their time (offered rate not met)",
            r.late
        );
    }
    let Some(c) = &r.redis else {
        return;
    };
    let per = |v: u64, n: u64| if n == 0 { 0.0 } else { v as f64 / n as f64 };
    let (calls, usec) = c.scripts();
    let mut others: Vec<_> = c.others().collect();
    others.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(b.0)));
    let listed: Vec<String> = others
        .iter()
        .map(|(n, (calls, _))| format!("{n} {:.3}", per(*calls, r.held)))
        .collect();
    println!(
        "{name}: Redis per held order: scripts {:.1} us ({:.3} EVALSHA/EVAL calls, {:.1} us each); per request {:.2} us; other calls per held order: {}",
        per(usec, r.held),
        per(calls, r.held),
        per(usec, calls),
        per(usec, r.requests),
        if listed.is_empty() { "none".to_string() } else { listed.join(", ") }
    );
}

/// Sustained mode: the per-second backlog, persisted rate and the flatness verdict.
/// The backlog is the line changes callers were told of that the DB does not hold yet.
fn sustain_report(
    o: &Options,
    r: &LoadResult,
    drain: Duration,
    final_persisted: i64,
) -> (serde_json::Value, bool) {
    let secs = o.sustain.map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let rate = o.rate.unwrap_or(0.0);
    let window = (secs / 3.0).min(10.0);
    let samples = &r.samples;
    let reference = samples
        .iter()
        .find(|s| s.t >= window - 0.5)
        .or(samples.first())
        .copied();
    let last_t = samples.last().map(|s| s.t).unwrap_or(0.0);
    let tail: Vec<&Sample> = samples.iter().filter(|s| s.t > last_t - window).collect();
    let slack = o
        .lag_slack
        .unwrap_or_else(|| (rate * o.lines as f64).ceil() as u64) as i64;
    let tail_max = tail.iter().map(|s| s.backlog).max().unwrap_or(0);
    let flat = match reference {
        Some(r0) => tail_max <= r0.backlog + slack,
        None => false,
    };
    // Persisted rate over the steady part (from the reference sample to the last one).
    let steady = match (reference, samples.last()) {
        (Some(a), Some(b)) if b.t > a.t => (b.persisted - a.persisted) as f64 / (b.t - a.t),
        _ => 0.0,
    };
    let per_reservation = o.confirm == 0.0 && o.release == 0.0;
    let lines = o.lines as f64;
    let total_secs = r.elapsed.as_secs_f64() + drain.as_secs_f64();
    println!();
    println!(
        "sustained: offered {rate:.0} orders/s for {secs:.0} s over {} SKU(s); sent {} ({:.0}/s), held {} ({:.0}/s)",
        o.skus,
        r.requests,
        r.requests as f64 / r.elapsed.as_secs_f64().max(1e-9),
        r.held,
        r.held as f64 / r.elapsed.as_secs_f64().max(1e-9),
    );
    println!(
        "| t (s) | sent | held | line changes told | persisted | backlog | journal lag (entries) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for s in samples {
        println!(
            "| {:.1} | {} | {} | {} | {} | {} | {} |",
            s.t, s.sent, s.held, s.client, s.persisted, s.backlog, s.journal_lag
        );
    }
    if per_reservation {
        println!(
            "persisted reservations/s: {:.0} steady (t {:.0}-{:.0} s), {:.0} overall ({} in {:.1} s of load + {:.1} s of drain)",
            steady / lines,
            reference.map(|s| s.t).unwrap_or(0.0),
            last_t,
            final_persisted as f64 / lines / total_secs.max(1e-9),
            final_persisted as f64 / lines,
            r.elapsed.as_secs_f64(),
            drain.as_secs_f64()
        );
    } else {
        println!(
            "persisted line changes/s (reserve, confirm and release lines): {steady:.0} steady, {:.0} overall",
            final_persisted as f64 / total_secs.max(1e-9)
        );
    }
    println!(
        "backlog {}: largest in the last {window:.0} s {tail_max} vs {} at {:.0} s (slack {slack} line changes)",
        if flat { "FLAT" } else { "GROWING" },
        reference.map(|s| s.backlog).unwrap_or(0),
        reference.map(|s| s.t).unwrap_or(0.0),
    );
    let report = json!({
        "offeredRate": rate,
        "seconds": secs,
        "window": window,
        "slack": slack,
        "flat": flat,
        "backlogAtReference": reference.map(|s| s.backlog),
        "referenceT": reference.map(|s| s.t),
        "backlogTailMax": tail_max,
        "persistedPerSecSteady": if per_reservation { steady / lines } else { steady },
        "persistedPerSecOverall": final_persisted as f64 / if per_reservation { lines } else { 1.0 } / total_secs.max(1e-9),
        "persistedUnit": if per_reservation { "reservations" } else { "line changes" },
        "samples": samples,
    });
    (report, flat)
}

fn main() {
    let o = parse_options();
    let system = actix_web::rt::System::new();
    let code = system.block_on(run(o));
    std::process::exit(code);
}

async fn run(o: Options) -> i32 {
    if o.sustain.is_some() && o.rate.is_none() {
        eprintln!("--sustain-secs needs --rate N (orders per second)");
        return 2;
    }
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
    let keys: Vec<SkuKey> = (0..o.skus)
        .map(|s| SkuKey::new(WarehouseId(1), SkuId(SKU_BASE + s)))
        .collect();
    // 32 adjustments at a time: each waits for its journal entry to reach the DB, so
    // 10,000 SKUs one after the other take minutes.
    let stock_started = Instant::now();
    futures_util::stream::iter(keys.iter().copied())
        .for_each_concurrent(32, |key| {
            let stock = state.stock.clone();
            async move {
                stock
                    .adjust(AdjustRequest {
                        key,
                        delta: o.stock,
                        reason: LedgerReason::Inbound,
                        request_id: None,
                        remark: "bench".into(),
                        trace_id: "bench".into(),
                    })
                    .await
                    .expect("stock in");
            }
        })
        .await;
    if o.skus > 100 {
        eprintln!(
            "stocked {} SKUs in {:.1} s",
            o.skus,
            stock_started.elapsed().as_secs_f64()
        );
    }
    let reference = Reference {
        redis: state.stock.redis().clone(),
        pool: state.stock.pool().clone(),
        script: Arc::new(redis::Script::new(REFERENCE_LUA)),
        prefix: prefix.clone(),
    };
    let reference_keys: Vec<SkuKey> = (0..o.skus)
        .map(|s| SkuKey::new(WarehouseId(1), SkuId(REFERENCE_SKU_BASE + s)))
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
            None,
        )
        .await;
        results.push(("reference".into(), r));
    }
    // Kafka: the broker's echo ceiling, with the same load, in the same run.
    let mut echo_result = None;
    if o.target == "kafka" {
        eprintln!("baseline: the broker's echo ceiling (consume -> produce, no work)");
        let echo_topics = KafkaTopics {
            order: topic("ECHO_IN"),
            payment: topic("ECHO_PAYMENT"),
            aftersales: topic("ECHO_AFTERSALES"),
            inventory: topic("ECHO_OUT"),
            dead_letter: topic("ECHO_DLQ"),
        };
        let mut echo_settings = settings.kafka.clone();
        echo_settings.order_topic = echo_topics.order.clone();
        echo_settings.payment_topic = echo_topics.payment.clone();
        echo_settings.aftersales_topic = echo_topics.aftersales.clone();
        echo_settings.inventory_topic = echo_topics.inventory.clone();
        echo_settings.dead_letter_topic = echo_topics.dead_letter.clone();
        inventory::events::producer::ensure_topics(&echo_settings).await;
        start_echo(
            &brokers,
            &echo_settings,
            &echo_topics.order,
            &echo_topics.inventory,
        );
        let echo = KafkaDriver::start(&brokers, &echo_topics, settings.kafka.linger_ms);
        let r = drive(
            &o,
            Driver::Kafka(Box::new(echo)),
            SKU_BASE,
            "E-",
            None,
            None,
        )
        .await;
        echo_result = Some(r);
    }
    let main_driver = match o.target.as_str() {
        "http" => Some(Driver::Http(client, format!("http://127.0.0.1:{port}"))),
        "inprocess" => Some(Driver::InProcess(Box::new(state.reservations.clone()))),
        "kafka" => Some(Driver::Kafka(Box::new(KafkaDriver::start(
            &brokers,
            &topics,
            settings.kafka.linger_ms,
        )))),
        _ => None,
    };
    let mut drain = Duration::ZERO;
    let mut final_persisted = 0;
    let kafka_outcomes = match &main_driver {
        Some(Driver::Kafka(k)) => Some(k.outcomes.clone()),
        _ => None,
    };
    if let Some(driver) = main_driver {
        eprintln!("load: {}", o.target);
        let kafka_sent = match &driver {
            Driver::Kafka(k) => Some(k.sent.clone()),
            _ => None,
        };
        // Sustained mode starts from a drained journal, so that the DB's count of line
        // changes (SUM(version)) has a clean base.
        let sustain = if o.sustain.is_some() {
            let waited = Instant::now();
            while state
                .stock
                .redis()
                .journal_lag(PERSIST_GROUP)
                .await
                .map(|l| l.not_persisted())
                .unwrap_or(0)
                > 0
                && waited.elapsed() < Duration::from_secs(60)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Some(Sustain {
                redis: state.stock.redis().clone(),
                pool: state.stock.pool().clone(),
                base: persisted_changes(state.stock.pool(), o.skus)
                    .await
                    .expect("SUM(version)"),
            })
        } else {
            None
        };
        let base_changes = sustain.as_ref().map(|s| s.base);
        let r = drive(
            &o,
            driver,
            SKU_BASE,
            "B-",
            Some(state.stock.redis().clone()),
            sustain,
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
        if let Some(base) = base_changes {
            final_persisted = persisted_changes(state.stock.pool(), o.skus)
                .await
                .map(|v| v - base)
                .unwrap_or(0);
        }
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
        if let Some(check) = &kafka_outcomes {
            // The listener may still be reading outcomes republished at the end.
            tokio::time::sleep(Duration::from_millis(500)).await;
            eprintln!(
                "kafka: {} orders with an outcome, {} outcome(s) republished identically, {} conflicting",
                check.first.len(),
                check.republished.load(Ordering::Relaxed),
                check.conflicts.load(Ordering::Relaxed)
            );
            violations.extend(check.violations());
        }
        // The service's own outcome counters (through Kafka a message may be handled more
        // than once, and an error the bench saw may still have been decided).
        if matches!(o.target.as_str(), "inprocess" | "http") && r.errors.is_empty() {
            match service_outcomes(port).await {
                Some(counts) => violations.extend(check_outcomes(r, &counts)),
                None => violations.push("cannot read the service's /metrics".to_string()),
            }
        }
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
            // The Kafka outcome check, fed an identical republish, then a second kind and a
            // different message of one order.
            let check = OutcomeCheck::default();
            check.see("SELF-1", "STOCK_RESERVED", b"one");
            check.see("SELF-1", "STOCK_RESERVED", b"one");
            let clean = check.violations().is_empty();
            check.see("SELF-1", "STOCK_RESERVE_FAILED", b"two");
            check.see("SELF-2", "STOCK_RESERVED", b"one");
            check.see("SELF-2", "STOCK_RESERVED", b"other");
            if clean && check.conflicts.load(Ordering::Relaxed) == 2 {
                println!("self-test: conflicting Kafka outcomes were caught");
            } else {
                violations.push("self-test: the Kafka outcome check is wrong".to_string());
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
    println!("| target | requests/s | reservations/s | latency p50 / p90 / p99 / max (ms) | held / repeat / insufficient / errors | journal peak lag | Redis script us / held order | other Redis calls / held order |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, r) in &results {
        print_row(name, r);
    }
    if let Some(c) = ceiling {
        println!(
            "| redis-benchmark ceiling (pipelined check-and-decrement) | {c:.0} | | | | | | |"
        );
    }
    if let Some(r) = &echo_result {
        print_row("broker echo ceiling (no work)", r);
    }
    println!();
    for (name, r) in &results {
        print_details(name, r);
    }
    if let Some(r) = &echo_result {
        print_details("broker echo ceiling", r);
    }
    if results.iter().any(|(_, r)| r.redis.is_some()) {
        println!("(INFO commandstats counts the whole Redis server: the persister, the samplers and any other client of the same Redis are in it)");
    }
    let sustained = match (o.sustain, service_result) {
        (Some(_), Some(r)) => Some(sustain_report(&o, r, drain, final_persisted)),
        _ => None,
    };
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
    if let (Some(m), Some(e)) = (main_rate, &echo_result) {
        let echo_rate = e.requests as f64 / e.elapsed.as_secs_f64().max(1e-9);
        println!(
            "{}: {:.0}% of the broker's echo ceiling ({echo_rate:.0} messages/s in to out)",
            o.target,
            100.0 * m / echo_rate
        );
    }
    if o.target == "kafka" {
        let lookups = |answer: &str| {
            state
                .metrics
                .kafka_consume_log_lookups
                .with_label_values(&[answer])
                .get()
        };
        println!(
            "kafka: idempotency checks answered by Redis {} (handled before: {}), by the DB's consume log {}",
            lookups("redis_new") + lookups("redis_found"),
            lookups("redis_found"),
            lookups("db")
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
                "flashSale": o.flash_sale, "rate": o.rate,
                "sustainSecs": o.sustain.map(|d| d.as_secs_f64()),
            },
            "sustained": sustained.as_ref().map(|(report, _)| report.clone()),
            "results": results.iter().map(|(n, r)| summary(n, r)).collect::<Vec<_>>(),
            "redisBenchmarkCeiling": ceiling,
            "echoCeiling": echo_result.as_ref().map(|r| summary("echo", r)),
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
