//! Crash safety with the real binary: `kill -9` after Redis answered but before the DB
//! heard of it, and at random moments under load. Every reservation a caller was told is
//! held must be in the DB exactly once after a restart, and nothing else.

use inventory::domain::{SkuId, WarehouseId};
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use inventory::domain::SkuKey;
use inventory::store::models::Reservation;
use serde_json::{json, Value};

use crate::helpers::{create_test_database, redis_url, test_settings, CuttableProxy};

pub struct Service {
    child: Child,
    pub base: String,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn start_service(db_url: &str, prefix: &str) -> Service {
    start_service_with(db_url, prefix, &[]).await
}

/// Where a started service's log goes: the file named by TEST_SERVICE_LOG (appended; for
/// debugging a failed run), or nowhere.
fn service_log() -> Stdio {
    std::env::var("TEST_SERVICE_LOG")
        .ok()
        .and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        })
        .map_or_else(Stdio::null, Stdio::from)
}

/// Set in the environment given to `try_start_service_with`: the service's output goes to
/// this file.
pub const LOG_FILE_ENV: &str = "INVENTORY_TEST_LOG_FILE";

/// The real binary against the given database and key prefix.
pub async fn start_service_with(db_url: &str, prefix: &str, env: &[(&str, &str)]) -> Service {
    match try_start_service_with(db_url, prefix, env).await {
        Ok(service) => service,
        Err(e) => panic!("{e}"),
    }
}

/// `start_service_with`, or why the service did not come up (it exited, or no /health in
/// 30 s).
pub async fn try_start_service_with(
    db_url: &str,
    prefix: &str,
    env: &[(&str, &str)],
) -> Result<Service, String> {
    let port = free_port();
    // A caller that reads the log names the file in the environment it passes.
    let (stdout, stderr) = match env.iter().find(|(k, _)| *k == LOG_FILE_ENV) {
        Some((_, path)) => {
            let file = std::fs::File::create(path).map_err(|e| format!("log file: {e}"))?;
            let copy = file.try_clone().map_err(|e| format!("log file: {e}"))?;
            (Stdio::from(file), Stdio::from(copy))
        }
        None => (service_log(), service_log()),
    };
    let child = Command::new(env!("CARGO_BIN_EXE_inventory-service"))
        .env("INVENTORY__HTTP__BIND", format!("127.0.0.1:{port}"))
        .env("INVENTORY__DATABASE__URL", db_url)
        .env("INVENTORY__REDIS__URL", redis_url())
        .env("INVENTORY__REDIS__KEY_PREFIX", prefix)
        .env("INVENTORY__JOURNAL__BLOCK_MS", "20")
        .env("INVENTORY__JOURNAL__RETRY_MAX_MS", "200")
        .env("INVENTORY__DATABASE__POOL_TIMEOUT_MS", "500")
        .env("INVENTORY_INSTANCE_ID", "crash-test")
        .env("INVENTORY__AUTH__ADMIN_TOKENS", crate::helpers::ADMIN_TOKEN)
        .env("RUST_LOG", "error")
        // The caller's settings win.
        .envs(env.iter().copied())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("service does not start: {e}"))?;
    let mut service = Service {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{}/health", service.base)).send().await {
            if r.status().is_success() {
                return Ok(service);
            }
        }
        if let Ok(Some(status)) = service.child.try_wait() {
            return Err(format!("service exited at start-up: {status}"));
        }
        if Instant::now() > deadline {
            return Err("service did not come up".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Service {
    /// SIGTERM, then waits for the process to exit (at most `limit`); true if it exited 0.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends a signal by name (STOP, CONT, ...).
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status();
    }

    /// True once the process has exited (killed, or aborted by a fault point).
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Reserves until the service dies or `limit` orders were sent; returns the orders the
/// service answered 200 for.
pub async fn reserve_until_dead(base: &str, prefix: &str, limit: usize, sku: i64) -> Vec<String> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_static("Bearer test-admin-token-0123456789"),
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .default_headers(headers)
        .build()
        .expect("client");
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let client = client.clone();
        let base = base.to_string();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            for n in 0..limit / 8 {
                let order = format!("{prefix}-{worker}-{n}");
                let sent = client
                    .post(format!("{base}/inventory/reserve"))
                    .json(&json!({"orderNo": order, "skuId": sku, "qty": 1}))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().as_u16() == 200 => held.push(order),
                    Ok(_) => {}
                    Err(_) => break, // the service is gone
                }
            }
            held
        }));
    }
    let mut held = Vec::new();
    for task in tasks {
        held.extend(task.await.expect("worker"));
    }
    held
}

pub async fn stock_in(base: &str, sku: i64, qty: i64) {
    let r = crate::helpers::admin_client()
        .post(format!("{base}/inventory/{sku}/stock"))
        .json(&json!({"delta": qty}))
        .send()
        .await
        .expect("stock in");
    assert_eq!(r.status().as_u16(), 200);
}

/// kill -9 rounds at random moments under load (plus the one with the DB cut off):
/// FAULT_KILL_ROUNDS, 12 by default (`make bench-faults` runs 100).
fn kill_rounds() -> usize {
    std::env::var("FAULT_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

#[actix_web::test]
async fn kill_9_never_loses_or_invents_a_reservation() {
    let (db_name, db_url) = create_test_database().await;
    let prefix = format!("t{}:", &db_name["inventory_t_".len()..]);
    let db_proxy = CuttableProxy::start("127.0.0.1:3306").await;
    let proxied = db_proxy.db_url(&db_url);
    let key = SkuKey::new(WarehouseId(1), SkuId(777));
    let mut acknowledged: HashSet<String> = HashSet::new();

    // 1. The DB is unreachable: Redis answers, the journal waits, then kill -9.
    let mut service = start_service(&proxied, &prefix).await;
    stock_in(&service.base, 777, 100_000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    db_proxy.cut().await;
    let held = reserve_until_dead(&service.base, "DBDOWN", 200, 777).await;
    assert_eq!(
        held.len(),
        200,
        "reservations keep being served while the DB is down"
    );
    acknowledged.extend(held);
    service.kill9();
    db_proxy.restore();

    // 2. kill -9 at random moments under load, several times.
    let rounds = kill_rounds();
    for round in 0..rounds {
        let mut service = start_service(&proxied, &prefix).await;
        let base = service.base.clone();
        let load = tokio::spawn({
            let order_prefix = format!("R{round}");
            async move { reserve_until_dead(&base, &order_prefix, 4000, 777).await }
        });
        let pause = 100 + (rand::random::<u64>() % 400);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        service.kill9();
        acknowledged.extend(load.await.expect("load"));
    }

    // 3. Restart, drain, check.
    let service = start_service(&proxied, &prefix).await;
    let settings = test_settings(&db_url, &prefix, &[]);
    let redis = inventory::store::redis::RedisStore::connect(&settings.redis)
        .await
        .expect("redis");
    let pool = inventory::store::db::build_pool(&settings.database).expect("pool");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lag = redis
            .journal_lag(inventory::engine::persistence::PERSIST_GROUP)
            .await
            .expect("lag");
        if lag.not_persisted() == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "journal did not drain: {lag:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let audit = inventory::engine::audit::audit_position(&redis, &pool, key)
        .await
        .expect("audit");
    assert!(audit.is_clean(), "{audit:#?}");

    let mut conn = inventory::store::db::connection(&pool).await.expect("conn");
    let rows = Reservation::for_position(&mut conn, key)
        .await
        .expect("rows");
    let in_db: HashSet<String> = rows.iter().map(|r| r.order_no.clone()).collect();
    assert_eq!(in_db.len(), rows.len(), "a line is in the DB twice");
    let missing: Vec<&String> = acknowledged.difference(&in_db).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not in the DB: {missing:?}"
    );
    // Nothing in the DB that Redis never held: every row has its Redis marker.
    let lines: Vec<SkuKey> = vec![key];
    for order in &in_db {
        let markers = redis.line_markers(order, &lines).await.expect("markers");
        assert!(
            markers[0].is_some(),
            "{order} is in the DB but Redis never held it"
        );
    }
    assert_eq!(audit.lines_reserved as usize, rows.len());
    assert!(acknowledged.len() >= 200);
    println!(
        "FAULT service-kill-9: {} kills (1 with the DB cut off), acknowledged {}, in the DB {} (the rest held but unanswered at the kill; each has its Redis marker), lost 0, duplicated 0",
        rounds + 1,
        acknowledged.len(),
        rows.len()
    );

    // The restarted service still answers with the right state.
    let body: Value = reqwest::Client::new()
        .get(format!("{}/inventory/777", service.base))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(
        body["data"]["availableQty"].as_i64(),
        Some(100_000 - rows.len() as i64)
    );
}

#[actix_web::test]
async fn sigterm_under_load_persists_every_acknowledged_reservation_before_exit() {
    let (db_name, db_url) = create_test_database().await;
    let prefix = format!("t{}:", &db_name["inventory_t_".len()..]);
    let key = SkuKey::new(WarehouseId(1), SkuId(778));
    let mut service = start_service(&db_url, &prefix).await;
    stock_in(&service.base, 778, 100_000).await;
    let base = service.base.clone();
    let load = tokio::spawn(async move { reserve_until_dead(&base, "TERM", 100_000, 778).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The load runs on this runtime; the signal and the wait happen on a thread of their own.
    let stopped = tokio::task::spawn_blocking(move || {
        let ok = service.terminate(Duration::from_secs(20));
        (ok, service)
    });
    let acknowledged: HashSet<String> = load.await.expect("load").into_iter().collect();
    let (exited_cleanly, _service) = stopped.await.expect("stop");
    assert!(
        exited_cleanly,
        "the service did not exit 0 within the deadline"
    );
    assert!(!acknowledged.is_empty());

    // No restart: the DB must already have everything.
    let settings = test_settings(&db_url, &prefix, &[]);
    let redis = inventory::store::redis::RedisStore::connect(&settings.redis)
        .await
        .expect("redis");
    let lag = redis
        .journal_lag(inventory::engine::persistence::PERSIST_GROUP)
        .await
        .expect("lag");
    assert_eq!(lag.not_persisted(), 0, "journal left undrained: {lag:?}");
    let pool = inventory::store::db::build_pool(&settings.database).expect("pool");
    let audit = inventory::engine::audit::audit_position(&redis, &pool, key)
        .await
        .expect("audit");
    assert!(audit.is_clean(), "{audit:#?}");
    let mut conn = inventory::store::db::connection(&pool).await.expect("conn");
    let in_db: HashSet<String> = Reservation::for_position(&mut conn, key)
        .await
        .expect("rows")
        .into_iter()
        .map(|r| r.order_no)
        .collect();
    let missing: Vec<&String> = acknowledged.difference(&in_db).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not in the DB: {missing:?}"
    );
    println!(
        "FAULT sigterm: exited 0 within 20 s under load, acknowledged {}, in the DB {}, journal left 0, lost 0",
        acknowledged.len(),
        in_db.len()
    );
}

/// The sum of the samples of a service's metric whose lines start with `prefix` (0 when it
/// does not answer).
pub async fn scrape_metric(client: &reqwest::Client, base: &str, prefix: &str) -> u64 {
    let Ok(r) = client.get(format!("{base}/metrics")).send().await else {
        return 0;
    };
    let Ok(text) = r.text().await else { return 0 };
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The SIGSTOP drill (issue "reliability", part 3): the leader is frozen between deciding
/// which holds to release and releasing them, past its lease; a second process takes over,
/// raises the fences and releases them; the old leader resumes and its releases are refused.
/// Every hold is released exactly once.
#[actix_web::test]
async fn a_leader_paused_past_its_lease_is_fenced_and_nothing_is_released_twice() {
    let (db_name, db_url) = create_test_database().await;
    let prefix = format!("t{}:", &db_name["inventory_t_".len()..]);
    let settings = test_settings(&db_url, &prefix, &[]);
    let redis = inventory::store::redis::RedisStore::connect(&settings.redis)
        .await
        .expect("redis");
    let leader_key = redis.keys().leader();
    let leader = || async {
        let mut conn = redis.connection();
        let owner: Option<String> = redis::cmd("GET")
            .arg(&leader_key)
            .query_async(&mut conn)
            .await
            .unwrap_or(None);
        owner.unwrap_or_default()
    };
    let common = [
        ("INVENTORY__RESERVATION__EXPIRE_AFTER_MS", "1000"),
        ("INVENTORY__RESERVATION__TIMEOUT__CRON", "* * * * * ?"),
        ("INVENTORY__SUPERVISOR__LEASE_MS", "1000"),
        ("INVENTORY__SUPERVISOR__TICK_MS", "100"),
    ];
    // A decides, then waits 1.5 s before releasing (once): the window the pause hits.
    let mut env_a: Vec<(&str, &str)> = common.to_vec();
    env_a.push(("INVENTORY_INSTANCE_ID", "leader-a"));
    env_a.push(("INVENTORY_FAULTS", "expiry.before_release=sleep(1500)*1"));
    let a = start_service_with(&db_url, &prefix, &env_a).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !leader().await.starts_with("leader-a") {
        assert!(Instant::now() < deadline, "A never led");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut env_b: Vec<(&str, &str)> = common.to_vec();
    env_b.push(("INVENTORY_INSTANCE_ID", "follower-b"));
    let b = start_service_with(&db_url, &prefix, &env_b).await;

    stock_in(&a.base, 791, 1000).await;
    let client = crate::helpers::admin_client();
    let orders: Vec<String> = (0..40).map(|n| format!("PAUSE-{n}")).collect();
    for order in &orders {
        let r = client
            .post(format!("{}/inventory/reserve", a.base))
            .json(&json!({"orderNo": order, "skuId": 791, "qty": 1}))
            .send()
            .await
            .expect("reserve");
        assert_eq!(r.status().as_u16(), 200);
    }

    // A has read the due holds and decided: freeze it there.
    let deadline = Instant::now() + Duration::from_secs(10);
    while scrape_metric(
        &client,
        &a.base,
        "inventory_fault_injected_total{point=\"expiry.before_release\"}",
    )
    .await
        != 1
    {
        assert!(Instant::now() < deadline, "A never reached its release");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.signal("STOP");
    let paused = Instant::now();
    // B takes over (the lease lapses after 1 s) and releases every hold.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let levels = redis
            .stock(SkuKey::new(WarehouseId(1), SkuId(791)))
            .await
            .expect("stock")
            .expect("position");
        if leader().await.starts_with("follower-b") && levels.reserved == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "B did not take over and release");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b_took_over_in = paused.elapsed();
    a.signal("CONT");
    // A's sleep is over at once; its releases carry the old token and are refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    let fenced = loop {
        let fenced = scrape_metric(
            &client,
            &a.base,
            "inventory_holds_expired_total{outcome=\"fenced\"}",
        )
        .await;
        if fenced > 0 {
            break fenced;
        }
        assert!(
            Instant::now() < deadline,
            "A's stale releases were not refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Each hold released once: one EXPIRED ledger row per order, stock whole again.
    let pool = inventory::store::db::build_pool(&settings.database).expect("pool");
    let key = SkuKey::new(WarehouseId(1), SkuId(791));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lag = redis
            .journal_lag(inventory::engine::persistence::PERSIST_GROUP)
            .await;
        if lag.is_ok_and(|l| l.not_persisted() == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "journal did not drain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut conn = inventory::store::db::connection(&pool).await.expect("conn");
    let ledger = inventory::store::models::LedgerEntry::for_position(&mut conn, key)
        .await
        .expect("ledger");
    for order in &orders {
        let expired = ledger
            .iter()
            .filter(|e| e.order_no.as_deref() == Some(order.as_str()) && e.reason == "EXPIRED")
            .count();
        assert_eq!(expired, 1, "{order} released {expired} times");
    }
    let audit = inventory::engine::audit::audit_position(&redis, &pool, key)
        .await
        .expect("audit");
    assert!(audit.is_clean(), "{audit:#?}");
    assert_eq!(audit.redis.map(|l| l.available), Some(1000));
    println!(
        "FAULT sigstop-leader: leader frozen between its decision and its release; the follower led and released {} holds {:?} into the pause; the resumed leader's releases were refused {fenced} times (fenced); each hold released once",
        orders.len(),
        b_took_over_in
    );
    drop(b);
}
