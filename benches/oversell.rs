//! Oversell benchmark: drives reservations at the real service (in-process engine or HTTP)
//! against the real Redis and MariaDB, then verifies that nothing was oversold and that
//! the invariants hold once the journal drains. Any violation fails the run (exit 1).
//!
//! cargo bench --bench oversell -- [--target inprocess|http] [--skus N] [--stock N]
//!     [--requests N] [--concurrency N] [--qty N] [--lines N] [--duplicates F]
//!     [--json FILE] [--corrupt]
//!
//! --corrupt changes a stock count behind the service's back before verifying, to show
//! that the verification catches it (the run must then fail).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inventory::config::Settings;
use inventory::domain::SkuKey;
use inventory::engine::audit::audit_position;
use inventory::engine::persistence::PERSIST_GROUP;
use inventory::engine::reservation::ReserveRequest;
use inventory::startup::Application;
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
    json: Option<String>,
    corrupt: bool,
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
        json: None,
        corrupt: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs this without `--bench`: a small smoke run, so CI checks
    // that the harness and its verification work.
    if !args.iter().any(|a| a == "--bench") {
        o.requests = 2_000;
        o.stock = 500;
        o.concurrency = 64;
    }
    let mut i = 0;
    while i < args.len() {
        let value = || args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--target" => o.target = value(),
            "--skus" => o.skus = value().parse().unwrap_or(o.skus),
            "--stock" => o.stock = value().parse().unwrap_or(o.stock),
            "--requests" => o.requests = value().parse().unwrap_or(o.requests),
            "--concurrency" => o.concurrency = value().parse().unwrap_or(o.concurrency),
            "--qty" => o.qty = value().parse().unwrap_or(o.qty),
            "--lines" => o.lines = value().parse().unwrap_or(o.lines),
            "--duplicates" => o.duplicates = value().parse().unwrap_or(o.duplicates),
            "--json" => o.json = Some(value()),
            "--corrupt" => {
                o.corrupt = true;
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

#[derive(Default)]
struct Tally {
    held: AtomicU64,
    repeats: AtomicU64,
    insufficient: AtomicU64,
    other: AtomicU64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

/// Deterministic per-request choice (no shared RNG on the hot path).
fn mix(n: u64) -> u64 {
    let mut x = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn order_lines(o: &Options, n: u64) -> Vec<OrderLine> {
    let first = (mix(n) % o.skus as u64) as i64;
    (0..o.lines as i64)
        .map(|l| OrderLine {
            key: SkuKey::new(1, 100_000 + (first + l) % o.skus),
            qty: o.qty,
        })
        .collect()
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
    let settings = Settings::defaults_with(&[
        ("http.bind", "127.0.0.1:0".into()),
        ("database.url", db_url.clone().into()),
        ("redis.url", redis_url.into()),
        ("redis.key_prefix", format!("b{id}:").into()),
        ("log.format", "pretty".into()),
        ("engine.mailbox_capacity", 100_000.into()),
        ("journal.block_ms", 10.into()),
    ])
    .expect("settings");
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
    let keys: Vec<SkuKey> = (0..o.skus).map(|s| SkuKey::new(1, 100_000 + s)).collect();
    for key in &keys {
        state
            .stock
            .adjust(inventory::engine::stock::AdjustRequest {
                key: *key,
                delta: o.stock,
                reason: inventory::domain::LedgerReason::Inbound,
                request_id: None,
                remark: "bench".into(),
                trace_id: "bench".into(),
            })
            .await
            .expect("stock in");
    }

    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(o.concurrency)
        .build()
        .expect("client");
    let url = format!("http://127.0.0.1:{port}/inventory/reserve");
    let started = Instant::now();
    let progress_every = (o.requests / 10).max(1) as u64;
    let mut workers = Vec::new();
    for _ in 0..o.concurrency {
        let o = o.clone();
        let tally = tally.clone();
        let next = next.clone();
        let engine = state.reservations.clone();
        let client = client.clone();
        let url = url.clone();
        workers.push(actix_web::rt::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= o.requests as u64 {
                    break;
                }
                if n > 0 && n % progress_every == 0 {
                    eprintln!("  {n} requests sent");
                }
                // A duplicate re-sends an earlier order (a client retry).
                let order_id = if o.duplicates > 0.0
                    && n > 0
                    && (mix(n ^ 0xD0) % 10_000) as f64 / 10_000.0 < o.duplicates
                {
                    mix(n) % n
                } else {
                    n
                };
                let lines = order_lines(&o, order_id);
                let order_no = format!("B-{order_id}");
                let t = Instant::now();
                let outcome = if o.target == "http" {
                    let items: Vec<_> = lines
                        .iter()
                        .map(|l| json!({"skuId": l.key.sku_id, "warehouseId": 1, "qty": l.qty}))
                        .collect();
                    match client
                        .post(&url)
                        .json(&json!({"orderNo": order_no, "items": items}))
                        .send()
                        .await
                    {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body: serde_json::Value = r.json().await.unwrap_or_default();
                            match (status, body["data"]["existed"].as_bool()) {
                                (200, Some(true)) => "repeat",
                                (200, _) => "held",
                                (409, _) if body["code"] == "INSUFFICIENT_STOCK" => "insufficient",
                                _ => "other",
                            }
                        }
                        Err(_) => "other",
                    }
                } else {
                    match engine
                        .reserve(ReserveRequest {
                            order_no,
                            lines,
                            trace_id: String::new(),
                        })
                        .await
                    {
                        Ok(out) if out.existed => "repeat",
                        Ok(_) => "held",
                        Err(inventory::engine::EngineError::InsufficientStock { .. }) => {
                            "insufficient"
                        }
                        Err(_) => "other",
                    }
                };
                latencies.push(t.elapsed());
                let counter = match outcome {
                    "held" => &tally.held,
                    "repeat" => &tally.repeats,
                    "insufficient" => &tally.insufficient,
                    _ => &tally.other,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(o.requests);
    for w in workers {
        latencies.extend(w.await.expect("worker"));
    }
    let elapsed = started.elapsed();
    latencies.sort();

    // Journal drain.
    let drain_started = Instant::now();
    let mut peak_lag = 0;
    loop {
        let lag = state
            .stock
            .redis()
            .journal_lag(PERSIST_GROUP)
            .await
            .expect("lag")
            .not_persisted();
        peak_lag = peak_lag.max(lag);
        if lag == 0 {
            break;
        }
        if drain_started.elapsed() > Duration::from_secs(120) {
            eprintln!("FAIL: journal did not drain in 120 s (lag {lag})");
            return 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain = drain_started.elapsed();

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

    // Verification.
    let mut violations = Vec::new();
    let mut reserved_units = 0;
    let mut sold_per_key: HashMap<SkuKey, i64> = HashMap::new();
    for key in &keys {
        let audit = audit_position(state.stock.redis(), state.stock.pool(), *key)
            .await
            .expect("audit");
        let held = audit.lines_reserved + audit.lines_confirmed;
        sold_per_key.insert(*key, held);
        reserved_units += held;
        if held > o.stock {
            violations.push(format!("OVERSOLD {key}: {held} held of {} units", o.stock));
        }
        for v in &audit.violations {
            violations.push(format!("{key}: {v}"));
        }
    }
    let held = tally.held.load(Ordering::Relaxed);
    let expected_units = held as i64 * o.qty * o.lines as i64;
    if reserved_units != expected_units {
        violations.push(format!(
            "callers were told {held} orders ({expected_units} units) are held; the DB holds {reserved_units} units"
        ));
    }

    let secs = elapsed.as_secs_f64();
    let report = json!({
        "target": o.target,
        "skus": o.skus,
        "stockPerSku": o.stock,
        "requests": o.requests,
        "concurrency": o.concurrency,
        "qty": o.qty,
        "linesPerOrder": o.lines,
        "duplicates": o.duplicates,
        "seconds": secs,
        "requestsPerSec": o.requests as f64 / secs,
        "reservationsPerSec": held as f64 / secs,
        "latencyMs": {
            "p50": percentile(&latencies, 0.50),
            "p90": percentile(&latencies, 0.90),
            "p99": percentile(&latencies, 0.99),
            "max": percentile(&latencies, 1.0),
        },
        "outcomes": {
            "held": held,
            "repeat": tally.repeats.load(Ordering::Relaxed),
            "insufficient": tally.insufficient.load(Ordering::Relaxed),
            "other": tally.other.load(Ordering::Relaxed),
        },
        "journal": {"peakLagEntries": peak_lag, "drainMs": drain.as_secs_f64() * 1000.0},
        "oversold": violations.iter().any(|v| v.starts_with("OVERSOLD")),
        "violations": violations,
    });
    println!();
    println!("| metric | value |");
    println!("|---|---|");
    println!("| target | {} |", o.target);
    println!("| SKUs x stock | {} x {} |", o.skus, o.stock);
    println!(
        "| requests / concurrency | {} / {} |",
        o.requests, o.concurrency
    );
    println!("| requests/s | {:.0} |", o.requests as f64 / secs);
    println!("| reservations/s | {:.0} |", held as f64 / secs);
    println!(
        "| latency p50 / p90 / p99 / max (ms) | {:.2} / {:.2} / {:.2} / {:.2} |",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    println!(
        "| held / repeat / insufficient / other | {} / {} / {} / {} |",
        held,
        tally.repeats.load(Ordering::Relaxed),
        tally.insufficient.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed)
    );
    println!(
        "| journal peak lag / drain | {} entries / {:.0} ms |",
        peak_lag,
        drain.as_secs_f64() * 1000.0
    );
    println!("| units held (DB) | {reserved_units} |");
    if let Some(path) = &o.json {
        if let Err(e) = std::fs::write(
            path,
            serde_json::to_string_pretty(&report).unwrap_or_default(),
        ) {
            eprintln!("cannot write {path}: {e}");
        }
    }
    handle.stop(false).await;
    // Leave no bench database behind.
    admin_sql(&base, &format!("DROP DATABASE `{db_name}`")).await;
    let mut conn = state.stock.redis().connection();
    let stale: Vec<String> = redis::cmd("KEYS")
        .arg(format!("b{id}:*"))
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
