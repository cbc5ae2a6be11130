//! Expiry benchmark: many holds expire at once; how fast does the scan give the stock back?
//!
//! cargo bench --bench expiry -- [--holds N] [--skus N] [--race F] [--json FILE]
//!     [--set key=value]...
//!
//! --holds N    holds created, each of 1 unit (default 100,000)
//! --skus N     spread over N SKUs of warehouse 1 (default 10,000; 1 = one hot SKU)
//! --race F     while the scan runs, the order service "confirms" this fraction of the
//!              orders (confirm of a paid order, even if expired: the path the order-status
//!              hook and a late payment take). Default 0.05.
//! --set k=v    a service setting for the run (`--set reservation.timeout.batch_size=1000`)
//!
//! The holds are created through the in-process engine with a 1 ms hold and the scheduled
//! scan off, so all of them are due when the drain starts; the journal is drained first.
//! Then the bench runs the expiry job (`ExpiryJob::run_once`, what the supervisor's leader
//! runs) back to back until nothing is due, and measures:
//! - Redis: time until every hold is released or confirmed and no hold is due;
//! - DB: time until the journal has reached the DB (stock back in `t_inventory`).
//!
//! Verification (the run fails on any violation): per position the invariants of
//! docs/design.md (audit), no line still held, every racing confirm that succeeded is
//! CONFIRMED with no EXPIRED ledger row, every other order has exactly one EXPIRED row (no
//! double release), and the stock is back: available = stock - confirmed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use inventory::domain::{SkuId, WarehouseId};
use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use inventory::config::Settings;
use inventory::domain::{LedgerReason, SkuKey};
use inventory::engine::audit::audit_position;
use inventory::engine::persistence::PERSIST_GROUP;
use inventory::engine::reservation::ReserveRequest;
use inventory::engine::stock::AdjustRequest;
use inventory::startup::Application;
use inventory::store::reservations::OrderLine;
use serde_json::json;

const SKU_BASE: i64 = 500_000;

struct Options {
    holds: u64,
    skus: i64,
    race: f64,
    json: Option<String>,
    settings: Vec<(String, toml::Value)>,
    smoke: bool,
}

fn parse_options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut o = Options {
        holds: 100_000,
        skus: 10_000,
        race: 0.05,
        json: None,
        settings: Vec::new(),
        smoke: false,
    };
    // `cargo test --all-targets` runs this without `--bench`: a small smoke run, so CI checks
    // that the harness and its verification work.
    if !args.iter().any(|a| a == "--bench") {
        o.smoke = true;
        o.holds = 2_000;
        o.skus = 20;
        o.race = 0.1;
    }
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_default();
        match arg.as_str() {
            "--holds" => o.holds = value().parse().unwrap_or(o.holds),
            "--skus" => o.skus = value().parse::<i64>().unwrap_or(o.skus).max(1),
            "--race" => o.race = value().parse().unwrap_or(o.race),
            "--json" => o.json = Some(value()),
            "--set" => {
                let pair = value();
                let (k, v) = pair.split_once('=').expect("--set key=value");
                let v = v
                    .parse::<i64>()
                    .map(toml::Value::from)
                    .or_else(|_| v.parse::<bool>().map(toml::Value::from))
                    .unwrap_or_else(|_| toml::Value::from(v));
                o.settings.push((k.to_string(), v));
            }
            "--bench" => {}
            other if other.starts_with("--") => eprintln!("ignored option {other}"),
            _ => {}
        }
    }
    o
}

fn main() {
    let o = parse_options();
    let system = actix_web::rt::System::new();
    let code = system.block_on(run(o));
    std::process::exit(code);
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

#[derive(diesel::QueryableByName)]
struct OrderCount {
    #[diesel(sql_type = diesel::sql_types::Text)]
    order_no: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    reason: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Mixes an order number into a fraction in [0, 1), the same in every run.
fn fraction(n: u64) -> f64 {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5851_F42D_4C95_7F2D;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    (x >> 11) as f64 / (1u64 << 53) as f64
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
    let prefix = format!("e{id}:");
    let mut overrides: Vec<(&str, toml::Value)> = vec![
        ("http.bind", "127.0.0.1:0".into()),
        ("database.url", db_url.clone().into()),
        ("redis.url", redis_url.clone().into()),
        ("redis.key_prefix", prefix.clone().into()),
        ("log.format", "pretty".into()),
        ("engine.mailbox_capacity", 100_000.into()),
        ("journal.block_ms", 10.into()),
        ("auth.disabled", true.into()),
        // Every hold is due 1 ms after it is made; the bench runs the scan itself.
        ("reservation.expire_after_ms", 1.into()),
        ("reservation.timeout.enabled", false.into()),
        ("reconcile.enabled", false.into()),
    ];
    overrides.extend(o.settings.iter().map(|(k, v)| (k.as_str(), v.clone())));
    let settings = Settings::defaults_with(&overrides).expect("settings");
    inventory::telemetry::init_with_default(settings.log.format, "warn");
    let app = Application::build(settings.clone())
        .await
        .expect("service starts");
    let state = app.state();
    let handle = app.server_handle();
    actix_web::rt::spawn(app.run_until_stopped());

    let skus = o.skus;
    let per_sku = (o.holds as i64 + skus - 1) / skus;
    let keys: Vec<SkuKey> = (0..skus)
        .map(|s| SkuKey::new(WarehouseId(1), SkuId(SKU_BASE + s)))
        .collect();
    eprintln!(
        "stocking {skus} SKU(s) x {per_sku} units, then {} holds of 1 unit",
        o.holds
    );
    futures_util::stream::iter(keys.iter().copied())
        .for_each_concurrent(32, |key| {
            let stock = state.stock.clone();
            async move {
                stock
                    .adjust(AdjustRequest {
                        key,
                        delta: per_sku,
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
    let created = Instant::now();
    let held: usize = futures_util::stream::iter(0..o.holds)
        .map(|n| {
            let engine = state.reservations.clone();
            let key = keys[(n % skus as u64) as usize];
            async move {
                engine
                    .reserve(ReserveRequest {
                        order_no: format!("X-{n}"),
                        lines: vec![OrderLine { key, qty: 1 }],
                        trace_id: "bench".into(),
                    })
                    .await
                    .is_ok()
            }
        })
        .buffer_unordered(512)
        .filter(|ok| futures_util::future::ready(*ok))
        .count()
        .await;
    let create_secs = created.elapsed().as_secs_f64();
    let create_rate = held as f64 / create_secs.max(1e-9);
    eprintln!("{held} holds in {create_secs:.1} s; draining the journal");
    if held as u64 != o.holds {
        eprintln!("FAIL: only {held} of {} holds were made", o.holds);
        return 1;
    }
    let redis = state.stock.redis().clone();
    let not_persisted = || async {
        redis
            .journal_lag(PERSIST_GROUP)
            .await
            .map(|l| l.not_persisted())
            .unwrap_or(u64::MAX)
    };
    let waited = Instant::now();
    while not_persisted().await > 0 {
        if waited.elapsed() > Duration::from_secs(300) {
            eprintln!("FAIL: the journal did not drain before the scan");
            return 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (due, _) = redis
        .due_hold_stats(inventory::engine::now_ms())
        .await
        .expect("due");
    eprintln!("{due} holds due; scanning");

    // The race: the order service confirms some orders while the scan runs.
    let racing: Vec<String> = (0..o.holds)
        .filter(|n| fraction(*n) < o.race)
        .map(|n| format!("X-{n}"))
        .collect();
    let engine = state.reservations.clone();
    let race = actix_web::rt::spawn(async move {
        futures_util::stream::iter(racing)
            .map(|order| {
                let engine = engine.clone();
                async move {
                    let ok = engine.confirm_paid(&order, "bench-race").await.is_ok();
                    (order, ok)
                }
            })
            .buffer_unordered(64)
            .filter_map(|(order, ok)| futures_util::future::ready(ok.then_some(order)))
            .collect::<HashSet<String>>()
            .await
    });

    let started = Instant::now();
    let mut runs = 0;
    let mut released = 0usize;
    let mut steps = 0usize;
    loop {
        let report = state.expiry.run_once().await.expect("expiry run");
        runs += 1;
        released += report.released;
        steps += report.steps;
        if report.steps == 0 {
            break;
        }
    }
    let redis_done = started.elapsed();
    let confirmed = race.await.expect("race task");
    let racing_done = started.elapsed();
    while not_persisted().await > 0 {
        if started.elapsed() > Duration::from_secs(600) {
            eprintln!("FAIL: the journal did not drain after the scan");
            return 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let db_done = started.elapsed();
    let rate = released as f64 / redis_done.as_secs_f64().max(1e-9);

    // Verification.
    let mut violations = Vec::new();
    let (due_after, _) = redis
        .due_hold_stats(inventory::engine::now_ms())
        .await
        .expect("due");
    if due_after > 0 {
        violations.push(format!("{due_after} holds are still due after the scan"));
    }
    if released + confirmed.len() != held {
        violations.push(format!(
            "{released} released + {} confirmed != {held} holds",
            confirmed.len()
        ));
    }
    let audits: Vec<_> = futures_util::stream::iter(keys.iter().copied())
        .map(|key| {
            let redis = state.stock.redis().clone();
            let pool = state.stock.pool().clone();
            async move {
                (
                    key,
                    audit_position(&redis, &pool, key).await.expect("audit"),
                )
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut confirmed_units = 0;
    let mut available_units = 0;
    for (key, audit) in &audits {
        for v in &audit.violations {
            violations.push(format!("{key}: {v}"));
        }
        if audit.lines_reserved != 0 {
            violations.push(format!("{key}: {} units still held", audit.lines_reserved));
        }
        confirmed_units += audit.lines_confirmed;
        available_units += audit.db_available.unwrap_or(0);
    }
    if confirmed_units != confirmed.len() as i64 {
        violations.push(format!(
            "{} racing confirms succeeded, {confirmed_units} units are CONFIRMED",
            confirmed.len()
        ));
    }
    if available_units != per_sku * skus - confirmed_units {
        violations.push(format!(
            "stock not back: {available_units} available of {} - {confirmed_units} confirmed",
            per_sku * skus
        ));
    }
    // The ledger: one EXPIRED row per released order, none for a confirmed one.
    {
        use diesel_async::RunQueryDsl;
        let mut conn = inventory::store::db::connection(state.stock.pool())
            .await
            .expect("db");
        let rows: Vec<OrderCount> = diesel::sql_query(
            "SELECT order_no, reason, COUNT(*) AS n FROM t_inventory_txn \
             WHERE reason IN ('EXPIRED', 'CONFIRM') GROUP BY order_no, reason",
        )
        .load(&mut conn)
        .await
        .expect("ledger");
        let mut expired_orders = 0;
        for row in rows {
            let is_confirmed = confirmed.contains(&row.order_no);
            match row.reason.as_str() {
                "EXPIRED" if row.n != 1 => violations.push(format!(
                    "DOUBLE RELEASE: {} has {} EXPIRED rows",
                    row.order_no, row.n
                )),
                "EXPIRED" if is_confirmed => violations.push(format!(
                    "DOUBLE RELEASE: {} was confirmed and has an EXPIRED row",
                    row.order_no
                )),
                "EXPIRED" => expired_orders += 1,
                "CONFIRM" if !is_confirmed => violations.push(format!(
                    "{} has a CONFIRM row but its confirm failed",
                    row.order_no
                )),
                _ => {}
            }
        }
        if expired_orders != released {
            violations.push(format!(
                "{expired_orders} orders have an EXPIRED row, {released} were released"
            ));
        }
    }

    println!();
    println!(
        "{held} holds on {skus} SKU(s) expired at once; {} confirmed by the racing order service",
        confirmed.len()
    );
    println!();
    println!("| holds | SKUs | released | confirmed (race) | scan runs / steps | Redis: all released | released/s | DB: stock back | same run: holds made/s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {held} | {skus} | {released} | {} | {runs} / {steps} | {:.2} s | {rate:.0} | {:.2} s | {create_rate:.0} |",
        confirmed.len(),
        redis_done.as_secs_f64(),
        db_done.as_secs_f64()
    );
    println!(
        "(racing confirms finished after {:.2} s)",
        racing_done.as_secs_f64()
    );
    if let Some(path) = &o.json {
        let report = json!({
            "holds": held, "skus": skus, "released": released, "confirmed": confirmed.len(),
            "runs": runs, "steps": steps,
            "redisSeconds": redis_done.as_secs_f64(), "releasedPerSecond": rate,
            "dbSeconds": db_done.as_secs_f64(), "holdsMadePerSecond": create_rate,
            "batchSize": settings.reservation.timeout.batch_size,
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
        println!("\nOK: no double release, every hold released or confirmed, stock back");
        if o.smoke {
            println!("(smoke run)");
        }
        0
    } else {
        println!("\nFAIL: {} violation(s):", violations.len());
        for v in violations.iter().take(20) {
            println!("  {v}");
        }
        1
    }
}
