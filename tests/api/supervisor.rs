//! The supervisor: expiry (with the order-status hook), reconciliation and repair, Redis
//! data loss, and leader failover between instances.

use inventory::domain::{SkuId, WarehouseId};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use diesel_async::RunQueryDsl;
use inventory::domain::SkuKey;
use inventory::engine::supervisor::LeaderToken;
use inventory::store::models::LedgerEntry;
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, start, TestApp};

async fn reserve(app: &TestApp, order: &str, items: Value) -> Value {
    let (status, body) = app
        .post_json(
            "/inventory/reserve",
            &json!({"orderNo": order, "items": items}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn ledger_reasons(app: &TestApp, key: SkuKey) -> Vec<String> {
    let mut conn = app.db_conn().await;
    LedgerEntry::for_position(&mut conn, key)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.reason)
        .collect()
}

async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status_of(app: &TestApp, order: &str) -> String {
    let (_, body) = app
        .get(&format!("/inventory/reservations?orderNo={order}"))
        .await;
    body["data"][0]["status"].as_str().unwrap_or("").to_string()
}

#[actix_web::test]
async fn expired_holds_are_released_once_by_the_scheduled_job() {
    let app = spawn_app_with(&[
        ("reservation.expire_after_ms", 400.into()),
        ("reservation.timeout.enabled", true.into()),
        ("reservation.timeout.interval_ms", 100.into()),
        ("supervisor.tick_ms", 50.into()),
        ("supervisor.lease_ms", 1000.into()),
    ])
    .await;
    let a = SkuKey::new(WarehouseId(1), SkuId(101));
    let b = SkuKey::new(WarehouseId(1), SkuId(102));
    app.stock_in(SkuId(101), WarehouseId(1), 10).await;
    app.stock_in(SkuId(102), WarehouseId(1), 10).await;
    reserve(
        &app,
        "EXP-1",
        json!([{"skuId": 101, "qty": 2}, {"skuId": 102, "qty": 1}]),
    )
    .await;
    reserve(&app, "EXP-2", json!([{"skuId": 101, "qty": 3}])).await;
    reserve(&app, "KEEP-1", json!([{"skuId": 102, "qty": 4}])).await;
    let (status, _) = app
        .post("/inventory/reservations/confirm?orderNo=KEEP-1")
        .await;
    assert_eq!(status, 200);

    eventually("expiry", Duration::from_secs(10), || async {
        status_of(&app, "EXP-1").await == "RELEASED" && status_of(&app, "EXP-2").await == "RELEASED"
    })
    .await;
    assert_eq!(status_of(&app, "KEEP-1").await, "CONFIRMED");
    // A confirm after expiry fails.
    let (status, body) = app
        .post("/inventory/reservations/confirm?orderNo=EXP-2")
        .await;
    assert_eq!(status, 409, "{body}");

    // Give the job a few more runs: nothing is released twice.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let audits = app.assert_invariants(&[a, b]).await;
    assert_eq!(audits[0].db_available, Some(10));
    assert_eq!(audits[1].db_available, Some(6));
    let expired_a = ledger_reasons(&app, a)
        .await
        .iter()
        .filter(|r| *r == "EXPIRED")
        .count();
    let expired_b = ledger_reasons(&app, b)
        .await
        .iter()
        .filter(|r| *r == "EXPIRED")
        .count();
    assert_eq!((expired_a, expired_b), (2, 1), "one EXPIRED row per line");
}

/// The default configuration (`config/default.toml` with nothing but the test's stores and
/// a short hold) releases an unconfirmed hold on its own: no `reservation.timeout.*` set.
#[actix_web::test]
async fn the_default_configuration_releases_an_unconfirmed_hold() {
    let app = spawn_app_with(&[("reservation.expire_after_ms", 300.into())]).await;
    assert!(
        app.settings.reservation.timeout.enabled,
        "expiry is on by default"
    );
    let key = SkuKey::new(WarehouseId(1), SkuId(151));
    app.stock_in(SkuId(151), WarehouseId(1), 10).await;
    reserve(&app, "DEFAULT-1", json!([{"skuId": 151, "qty": 4}])).await;
    reserve(&app, "DEFAULT-PAID", json!([{"skuId": 151, "qty": 1}])).await;
    let (status, body) = app
        .post("/inventory/reservations/confirm?orderNo=DEFAULT-PAID")
        .await;
    assert_eq!(status, 200, "{body}");
    // The default schedule is every 5 s.
    eventually(
        "the default expiry scan",
        Duration::from_secs(15),
        || async { status_of(&app, "DEFAULT-1").await == "RELEASED" },
    )
    .await;
    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].db_available, Some(9));
    assert_eq!(audits[0].lines_confirmed, 1);
    assert_eq!(status_of(&app, "DEFAULT-PAID").await, "CONFIRMED");
    let (_, ready) = app.get("/health/ready").await;
    assert_eq!(ready["data"]["expiry"]["dueHolds"], 0, "{ready}");
}

/// Expiry lag is visible in /health/ready and /metrics, and goes back to zero once the
/// scan has run.
#[actix_web::test]
async fn due_holds_show_in_readiness_and_metrics() {
    let app = spawn_app_with(&[
        ("reservation.expire_after_ms", 200.into()),
        ("reservation.timeout.enabled", false.into()),
    ])
    .await;
    app.stock_in(SkuId(161), WarehouseId(1), 10).await;
    app.stock_in(SkuId(162), WarehouseId(1), 10).await;
    reserve(&app, "LAG-1", json!([{"skuId": 161, "qty": 1}])).await;
    reserve(&app, "LAG-2", json!([{"skuId": 162, "qty": 1}])).await;
    let (_, ready) = app.get("/health/ready").await;
    assert_eq!(
        ready["data"]["expiry"]["dueHolds"], 0,
        "not due yet: {ready}"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, ready) = app.get("/health/ready").await;
    assert_eq!(status, 200, "{ready}");
    let expiry = &ready["data"]["expiry"];
    assert_eq!(expiry["enabled"], false, "{ready}");
    assert_eq!(expiry["dueHolds"], 2, "{ready}");
    let age = expiry["oldestDueAgeMs"].as_u64().unwrap();
    assert!((400..60_000).contains(&age), "{ready}");
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("inventory_expiry_due_holds 2"),
        "{metrics}"
    );
    let age_line = metrics
        .lines()
        .find(|l| l.starts_with("inventory_expiry_oldest_due_age_seconds "))
        .unwrap();
    let age_s: f64 = age_line.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(age_s >= 0.4, "{age_line}");

    let report = app.state.expiry.run_once().await.unwrap();
    assert_eq!(report.released, 2, "{report:?}");
    let (_, ready) = app.get("/health/ready").await;
    assert_eq!(ready["data"]["expiry"]["dueHolds"], 0, "{ready}");
    assert_eq!(ready["data"]["expiry"]["oldestDueAgeMs"], 0, "{ready}");
}

/// One run drains everything due in steps of batch_size, releases through the shards in
/// batches (multi-group orders included), and an order confirmed while it runs stays
/// confirmed: each hold ends released once or confirmed, never both.
#[actix_web::test]
async fn one_run_drains_every_due_hold_and_a_racing_confirm_keeps_its_order() {
    let app = spawn_app_with(&[
        ("reservation.expire_after_ms", 300.into()),
        ("reservation.timeout.enabled", false.into()),
        ("reservation.timeout.batch_size", 50.into()),
    ])
    .await;
    let keys: Vec<SkuKey> = (0..20)
        .map(|n| SkuKey::new(WarehouseId(1), SkuId(1700 + n)))
        .collect();
    for key in &keys {
        app.stock_in(SkuId(key.sku_id), WarehouseId(1), 1000).await;
    }
    let orders = 600usize;
    futures_util::future::join_all((0..orders).map(|n| {
        let app = &app;
        async move {
            // Every third order has two lines, most of them in two slot groups.
            let first = 1700 + (n % 20) as i64;
            let items = if n % 3 == 0 {
                json!([{"skuId": first, "qty": 2}, {"skuId": 1700 + ((n + 7) % 20) as i64, "qty": 1}])
            } else {
                json!([{"skuId": first, "qty": 2}])
            };
            reserve(app, &format!("DRAIN-{n}"), items).await;
        }
    }))
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, ready) = app.get("/health/ready").await;
    assert!(
        ready["data"]["expiry"]["dueHolds"].as_u64().unwrap() >= orders as u64,
        "{ready}"
    );
    // The order service confirms every tenth order (paid at the last moment) while the
    // scan runs; whichever comes first wins.
    let racing = (0..orders).step_by(10).map(|n| format!("DRAIN-{n}"));
    let confirms = futures_util::future::join_all(racing.map(|order| {
        let engine = app.state.reservations.clone();
        async move {
            (
                order.clone(),
                engine.confirm_paid(&order, "race").await.is_ok(),
            )
        }
    }));
    let (report, confirmed) = tokio::join!(app.state.expiry.run_once(), confirms);
    let report = report.unwrap();
    let confirmed: Vec<String> = confirmed
        .into_iter()
        .filter(|(_, ok)| *ok)
        .map(|(o, _)| o)
        .collect();
    assert!(
        report.steps >= (orders - confirmed.len()) / 50,
        "steps of 50: {report:?}"
    );
    assert!(!report.budget_spent, "{report:?}");
    assert_eq!(
        report.released + confirmed.len(),
        orders,
        "{report:?}, {} confirmed",
        confirmed.len()
    );
    for order in &confirmed {
        assert_eq!(status_of(&app, order).await, "CONFIRMED", "{order}");
    }
    // Nothing is due any more, and a second run finds nothing.
    let again = app.state.expiry.run_once().await.unwrap();
    assert_eq!((again.released, again.steps), (0, 0), "{again:?}");

    let audits = app.assert_invariants(&keys).await;
    let expired_rows: usize =
        futures_util::future::join_all(keys.iter().map(|k| ledger_reasons(&app, *k)))
            .await
            .iter()
            .map(|reasons| reasons.iter().filter(|r| *r == "EXPIRED").count())
            .sum();
    // Lines: orders n % 3 == 0 have two.
    let lines_of = |n: usize| if n % 3 == 0 { 2 } else { 1 };
    let confirmed_lines: usize = confirmed
        .iter()
        .map(|o| lines_of(o["DRAIN-".len()..].parse().unwrap()))
        .sum();
    let all_lines: usize = (0..orders).map(lines_of).sum();
    assert_eq!(
        expired_rows,
        all_lines - confirmed_lines,
        "one EXPIRED row per released line"
    );
    let held: i64 = audits.iter().map(|a| a.lines_reserved).sum();
    assert_eq!(held, 0, "nothing is still held");
}

/// The first SKU after `sku` (warehouse 1) whose slot group is (`same`) or is not `sku`'s.
fn sku_after(app: &TestApp, sku: i64, same: bool) -> i64 {
    let keys = app.redis.keys();
    let group = |s: i64| keys.group(SkuKey::new(WarehouseId(1), SkuId(s)));
    (sku + 1..sku + 1000)
        .find(|s| (group(*s) == group(sku)) == same)
        .expect("a SKU in the wanted group")
}

/// Stocks `qty` units of each SKU in warehouse 1; their positions.
async fn stock_each(app: &TestApp, skus: &[i64], qty: i64) -> Vec<SkuKey> {
    let mut keys = Vec::new();
    for sku in skus {
        app.stock_in(SkuId(*sku), WarehouseId(1), qty).await;
        keys.push(SkuKey::new(WarehouseId(1), SkuId(*sku)));
    }
    keys
}

/// Without an order-status hook, on a single Redis, due holds are released in their groups
/// (lua/expire.lua: one call per group, no per-order arguments): single-line orders and
/// orders whose lines share a group. An order with lines in two groups is left to the
/// general path in the same run; settled orders only leave the holds index; this
/// instance's read cache has the stock back at once.
#[actix_web::test]
async fn due_holds_are_released_in_their_groups_and_cross_group_orders_by_the_general_path() {
    let app = spawn_app_with(&[
        ("reservation.expire_after_ms", 300.into()),
        ("reservation.timeout.enabled", false.into()),
        // Served from the cache for a minute unless this instance's own writes refresh it.
        ("cache.stock_ttl_ms", 60_000.into()),
    ])
    .await;
    let a = 1800;
    let b = sku_after(&app, a, true);
    let c = sku_after(&app, a, false);
    let keys = stock_each(&app, &[a, b, c], 100).await;
    for n in 0..20 {
        reserve(&app, &format!("ONE-{n}"), json!([{"skuId": a, "qty": 1}])).await;
    }
    for n in 0..5 {
        let items = json!([{"skuId": a, "qty": 1}, {"skuId": b, "qty": 2}]);
        reserve(&app, &format!("SAME-{n}"), items).await;
        let items = json!([{"skuId": a, "qty": 1}, {"skuId": c, "qty": 3}]);
        reserve(&app, &format!("TWO-{n}"), items).await;
    }
    for n in 0..3 {
        reserve(&app, &format!("PAID-{n}"), json!([{"skuId": a, "qty": 1}])).await;
        let (status, body) = app
            .post(&format!("/inventory/reservations/confirm?orderNo=PAID-{n}"))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    for n in 0..2 {
        reserve(&app, &format!("GONE-{n}"), json!([{"skuId": a, "qty": 1}])).await;
        let (status, body) = app
            .post(&format!("/inventory/reservations/release?orderNo=GONE-{n}"))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, before) = app.get(&format!("/inventory/{a}?warehouseId=1")).await;
    assert_eq!(before["data"]["reservedQty"], 30, "{before}");
    tokio::time::sleep(Duration::from_millis(400)).await;

    let report = app.state.expiry.run_once().await.unwrap();
    assert_eq!(report.released, 30, "{report:?}");
    assert_eq!(report.released_in_groups, 25, "{report:?}");
    assert!(!report.budget_spent && !report.lease_lost, "{report:?}");
    // Read from this instance's cache: the script's levels replaced the minute-old entry.
    let (_, after) = app.get(&format!("/inventory/{a}?warehouseId=1")).await;
    assert_eq!(after["data"]["availableQty"], 97, "{after}");
    assert_eq!(after["data"]["reservedQty"], 0, "{after}");
    for order in ["ONE-0", "ONE-19", "SAME-4", "TWO-0", "GONE-1"] {
        assert_eq!(status_of(&app, order).await, "RELEASED", "{order}");
    }
    assert_eq!(status_of(&app, "PAID-2").await, "CONFIRMED");
    let again = app.state.expiry.run_once().await.unwrap();
    assert_eq!((again.released, again.steps), (0, 0), "{again:?}");
    let (due, _) = app
        .redis
        .due_hold_stats(inventory::engine::now_ms())
        .await
        .unwrap();
    assert_eq!(due, 0);

    let audits = app.assert_invariants(&keys).await;
    let held: i64 = audits.iter().map(|a| a.lines_reserved).sum();
    assert_eq!(held, 0);
    let expired = |reasons: Vec<String>| reasons.iter().filter(|r| *r == "EXPIRED").count();
    assert_eq!(expired(ledger_reasons(&app, keys[0]).await), 30);
    assert_eq!(expired(ledger_reasons(&app, keys[1]).await), 5);
    assert_eq!(expired(ledger_reasons(&app, keys[2]).await), 5);
    assert_eq!(audits[1].db_available, Some(100));
    assert_eq!(audits[2].db_available, Some(100));
}

/// A hold whose position Redis lost (the stock hash gone, the order still held) is kept by
/// the expiry job, not forgotten: once the position is loaded again (sync), it expires.
#[actix_web::test]
async fn a_hold_on_a_position_redis_lost_expires_once_the_position_is_back() {
    let app = spawn_app_with(&[
        ("reservation.expire_after_ms", 300.into()),
        ("reservation.timeout.enabled", false.into()),
    ])
    .await;
    let keys = stock_each(&app, &[1900], 10).await;
    reserve(&app, "LOST-POS", json!([{"skuId": 1900, "qty": 3}])).await;
    app.drain_journal().await;
    let _: () = app
        .redis_cmd(redis::cmd("DEL").arg(app.redis.keys().stock(keys[0])))
        .await;
    tokio::time::sleep(Duration::from_millis(400)).await;

    let report = app.state.expiry.run_once().await.unwrap();
    assert_eq!(report.released, 0, "{report:?}");
    let (due, _) = app
        .redis
        .due_hold_stats(inventory::engine::now_ms())
        .await
        .unwrap();
    assert_eq!(
        due, 1,
        "the hold stays due: forgotten, it would never expire"
    );
    let (status, body) = app
        .post("/inventory/reservations/release?orderNo=LOST-POS")
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "INVENTORY_NOT_FOUND", "{body}");
    assert_eq!(status_of(&app, "LOST-POS").await, "RESERVED");

    let (status, body) = app.post("/inventory/1900/sync?warehouseId=1").await;
    assert_eq!(status, 200, "{body}");
    let report = app.state.expiry.run_once().await.unwrap();
    assert_eq!(report.released, 1, "{report:?}");
    assert_eq!(status_of(&app, "LOST-POS").await, "RELEASED");
    let audits = app.assert_invariants(&keys).await;
    assert_eq!(audits[0].lines_reserved, 0);
    assert_eq!(audits[0].db_available, Some(10));
}

/// Orders with lines in two groups are passed over by the groups' calls and released by the
/// general path within the same step: a run whose budget ends after its first call still
/// moves them on, and runs one after the other release them all, once each.
#[actix_web::test]
async fn cross_group_orders_expire_even_when_every_run_ends_on_its_budget() {
    let app = spawn_app_with(&[
        ("reservation.expire_after_ms", 200.into()),
        ("reservation.timeout.enabled", false.into()),
        ("reservation.timeout.batch_size", 5.into()),
        ("reservation.timeout.run_budget_ms", 1.into()),
    ])
    .await;
    let a = 1900;
    let c = sku_after(&app, a, false);
    let keys = stock_each(&app, &[a, c], 100).await;
    for n in 0..40 {
        let items = json!([{"skuId": a, "qty": 1}, {"skuId": c, "qty": 1}]);
        reserve(&app, &format!("CROSS-{n}"), items).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut released = 0;
    for _ in 0..100 {
        let report = app.state.expiry.run_once().await.unwrap();
        assert_eq!(report.released_in_groups, 0, "{report:?}");
        released += report.released;
        if released == 40 {
            break;
        }
    }
    assert_eq!(released, 40);
    let audits = app.assert_invariants(&keys).await;
    for (key, audit) in keys.iter().zip(&audits) {
        assert_eq!(audit.db_available, Some(100), "{key}");
        let expired = ledger_reasons(&app, *key)
            .await
            .iter()
            .filter(|r| *r == "EXPIRED")
            .count();
        assert_eq!(expired, 40, "{key}: one EXPIRED row per line");
    }
}

/// A run stops when its budget is spent and says so; the next runs finish the job.
#[actix_web::test]
async fn a_run_stops_at_its_budget_and_the_next_one_goes_on() {
    let app = spawn_app_with(&[
        ("reservation.expire_after_ms", 200.into()),
        ("reservation.timeout.enabled", false.into()),
        ("reservation.timeout.batch_size", 5.into()),
        ("reservation.timeout.run_budget_ms", 1.into()),
    ])
    .await;
    let key = SkuKey::new(WarehouseId(1), SkuId(181));
    app.stock_in(SkuId(181), WarehouseId(1), 100).await;
    for n in 0..40 {
        reserve(
            &app,
            &format!("BUDGET-{n}"),
            json!([{"skuId": 181, "qty": 1}]),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = app.state.expiry.run_once().await.unwrap();
    assert!(first.budget_spent, "{first:?}");
    assert!(first.released < 40, "{first:?}");
    let mut released = first.released;
    for _ in 0..100 {
        if released == 40 {
            break;
        }
        released += app.state.expiry.run_once().await.unwrap().released;
    }
    assert_eq!(released, 40);
    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].db_available, Some(100));
}

#[actix_web::test]
async fn an_expired_hold_reads_as_expired_before_any_scan() {
    let app = spawn_app_with(&[("reservation.expire_after_ms", 200.into())]).await;
    app.stock_in(SkuId(201), WarehouseId(1), 5).await;
    reserve(&app, "LATE-PAY", json!([{"skuId": 201, "qty": 1}])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, body) = app.get("/inventory/reservations?orderNo=LATE-PAY").await;
    assert_eq!(body["data"][0]["status"], "RESERVED");
    assert_eq!(body["data"][0]["expired"], true);
    let (status, body) = app
        .post("/inventory/reservations/confirm?orderNo=LATE-PAY")
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "INVALID_RESERVATION_STATUS");
}

#[actix_web::test]
async fn two_expiry_jobs_at_once_release_each_hold_once() {
    // The scheduled scan is off: this test runs both jobs itself.
    let first = spawn_app_with(&[
        ("reservation.expire_after_ms", 300.into()),
        ("reservation.timeout.enabled", false.into()),
    ])
    .await;
    let second = start(first.settings.clone(), first.db_name.clone()).await;
    let key = SkuKey::new(WarehouseId(1), SkuId(301));
    first.stock_in(SkuId(301), WarehouseId(1), 100).await;
    for n in 0..25 {
        reserve(
            &first,
            &format!("TWO-{n}"),
            json!([{"skuId": 301, "qty": 2}]),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (a, b) = tokio::join!(
        first.state.expiry.run_once(),
        second.state.expiry.run_once()
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.released + b.released, 25, "{a:?} {b:?}");
    let audits = first.assert_invariants(&[key]).await;
    assert_eq!(audits[0].db_available, Some(100));
    let expired = ledger_reasons(&first, key)
        .await
        .iter()
        .filter(|r| *r == "EXPIRED")
        .count();
    assert_eq!(expired, 25);
}

/// A stand-in for the order service: PAID-* are paid, DOWN-* fail, others are not paid;
/// SLOW-* are answered after 2.5 s.
async fn order_service() -> u16 {
    let server = HttpServer::new(|| {
        App::new().route(
            "/orders/{order_no}/status",
            web::get().to(|path: web::Path<String>| async move {
                let order = path.into_inner();
                if order.starts_with("SLOW-") {
                    tokio::time::sleep(Duration::from_millis(2_500)).await;
                }
                if order.starts_with("DOWN-") {
                    HttpResponse::InternalServerError().finish()
                } else if order.starts_with("PAID-") {
                    HttpResponse::Ok().json(json!({"code": "0", "data": {"status": "PAID"}}))
                } else {
                    HttpResponse::Ok().json(json!({"code": "0", "data": {"status": "CANCELLED"}}))
                }
            }),
        )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .expect("bind");
    let port = server.addrs()[0].port();
    actix_web::rt::spawn(server.run());
    port
}

#[actix_web::test]
async fn the_order_status_hook_confirms_paid_orders_instead_of_releasing_them() {
    let port = order_service().await;
    let app = spawn_app_with(&[
        ("reservation.expire_after_ms", 200.into()),
        (
            "reservation.timeout.order_status_url",
            format!("http://127.0.0.1:{port}/orders/{{orderNo}}/status").into(),
        ),
        ("reservation.timeout.order_status_max_attempts", 3.into()),
        ("reservation.timeout.enabled", false.into()),
    ])
    .await;
    let key = SkuKey::new(WarehouseId(1), SkuId(401));
    app.stock_in(SkuId(401), WarehouseId(1), 10).await;
    reserve(&app, "PAID-1", json!([{"skuId": 401, "qty": 1}])).await;
    reserve(&app, "UNPAID-1", json!([{"skuId": 401, "qty": 2}])).await;
    reserve(&app, "DOWN-1", json!([{"skuId": 401, "qty": 3}])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let report = app.state.expiry.run_once().await.unwrap();
    assert_eq!(
        (report.confirmed, report.released, report.kept),
        (1, 1, 1),
        "{report:?}"
    );
    assert_eq!(status_of(&app, "PAID-1").await, "CONFIRMED");
    assert_eq!(status_of(&app, "UNPAID-1").await, "RELEASED");
    assert_eq!(
        status_of(&app, "DOWN-1").await,
        "RESERVED",
        "kept while unknown"
    );
    // Bounded: after max attempts the hold is released.
    app.state.expiry.run_once().await.unwrap();
    assert_eq!(status_of(&app, "DOWN-1").await, "RESERVED");
    let report = app.state.expiry.run_once().await.unwrap();
    assert_eq!(report.released, 1, "{report:?}");
    assert_eq!(status_of(&app, "DOWN-1").await, "RELEASED");
    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].lines_confirmed, 1);
    assert_eq!(audits[0].db_available, Some(9));
}

fn kinds(report: &Value) -> Vec<(i64, String)> {
    let mut out: Vec<(i64, String)> = report["data"]["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["skuId"].as_i64().unwrap(),
                d["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[actix_web::test]
async fn reconciliation_reports_each_difference_and_repair_restores_the_invariants() {
    let app = spawn_app_with(&[]).await;
    let a = SkuKey::new(WarehouseId(1), SkuId(501));
    let b = SkuKey::new(WarehouseId(1), SkuId(502));
    let c = SkuKey::new(WarehouseId(1), SkuId(503));
    for sku in [501, 502, 503] {
        app.stock_in(SkuId(sku), WarehouseId(1), 20).await;
    }
    reserve(&app, "R-A", json!([{"skuId": 501, "qty": 2}])).await;
    reserve(&app, "R-B", json!([{"skuId": 502, "qty": 3}])).await;
    app.drain_journal().await;

    let (status, clean) = app.post("/inventory/reconcile?repair=false").await;
    assert_eq!(status, 200, "{clean}");
    assert_eq!(clean["data"]["differences"], json!([]), "{clean}");
    assert_eq!(clean["data"]["positionsChecked"], 3);

    // Corrupt on purpose: Redis stock of A, the marker of R-B, the DB row of C.
    let _: i64 = app
        .redis_cmd(
            redis::cmd("HINCRBY")
                .arg(app.redis.keys().stock(a))
                .arg("avail")
                .arg(5),
        )
        .await;
    let keys = app.redis.keys();
    let _: i64 = app
        .redis_cmd(
            redis::cmd("HDEL")
                .arg(keys.orders(keys.group(b)))
                .arg("R-B"),
        )
        .await;
    let mut conn = app.db_conn().await;
    diesel::sql_query(
        "UPDATE t_inventory SET available_qty = available_qty + 7 WHERE sku_id = 503",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let (status, report) = app.post("/inventory/reconcile?repair=false").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        kinds(&report),
        vec![
            (501, "REDIS_STOCK".to_string()),
            (502, "MARKER_MISSING".to_string()),
            (503, "DB_STOCK".to_string()),
        ],
        "{report}"
    );
    assert!(!app.audit(a).await.is_clean());

    let (status, report) = app.post("/inventory/reconcile?repair=true").await;
    assert_eq!(status, 200, "{report}");
    let diffs = report["data"]["differences"].as_array().unwrap();
    assert_eq!(diffs.len(), 3, "{report}");
    assert!(diffs.iter().all(|d| d["repaired"] == true), "{report}");

    let audits = app.assert_invariants(&[a, b, c]).await;
    assert_eq!(audits[0].db_available, Some(18));
    assert_eq!(audits[2].db_available, Some(20));
    assert!(ledger_reasons(&app, a)
        .await
        .contains(&"RECONCILE".to_string()));
    assert!(ledger_reasons(&app, c)
        .await
        .contains(&"RECONCILE".to_string()));
    // The restored marker works: confirming R-B goes through.
    let (status, body) = app
        .post("/inventory/reservations/confirm?orderNo=R-B")
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, after) = app.post("/inventory/reconcile?repair=false").await;
    assert_eq!(after["data"]["differences"], json!([]), "{after}");
}

#[derive(diesel::QueryableByName, Debug, PartialEq, Eq)]
struct CheckpointRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    on_hand: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    reserved_qty: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    confirmed_qty: i64,
}

async fn checkpoint_of(app: &TestApp, sku: i64) -> Option<(i64, i64, i64)> {
    let mut conn = app.db_conn().await;
    let rows: Vec<CheckpointRow> = diesel::sql_query(format!(
        "SELECT on_hand, reserved_qty, confirmed_qty FROM t_reconcile_checkpoint \
         WHERE sku_id = {sku} AND warehouse_id = 1"
    ))
    .load(&mut conn)
    .await
    .unwrap();
    rows.iter()
        .map(|r| (r.on_hand, r.reserved_qty, r.confirmed_qty))
        .next()
}

#[actix_web::test]
async fn reconciliation_reads_from_its_checkpoint_and_a_wrong_checkpoint_is_rewritten() {
    let app = spawn_app_with(&[
        ("reconcile.enabled", false.into()),
        ("reconcile.fold_margin_ms", 1000.into()),
    ])
    .await;
    let a = SkuKey::new(WarehouseId(1), SkuId(521));
    let b = SkuKey::new(WarehouseId(1), SkuId(522));
    app.stock_in(SkuId(521), WarehouseId(1), 20).await;
    app.stock_in(SkuId(522), WarehouseId(1), 20).await;
    reserve(&app, "CK-1", json!([{"skuId": 521, "qty": 2}])).await;
    reserve(&app, "CK-2", json!([{"skuId": 522, "qty": 3}])).await;
    let (status, _) = app
        .post("/inventory/reservations/confirm?orderNo=CK-2")
        .await;
    assert_eq!(status, 200);
    app.drain_journal().await;
    // Past the fold margin: the next run folds all of it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, report) = app.post("/inventory/reconcile?repair=false").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["data"]["differences"], json!([]), "{report}");
    assert_eq!(report["data"]["checkpointsFolded"], 2, "{report}");
    assert_eq!(checkpoint_of(&app, 521).await, Some((20, 2, 0)));
    assert_eq!(checkpoint_of(&app, 522).await, Some((20, 0, 3)));

    // After the fold: a line the checkpoint holds as RESERVED is released, new holds and
    // stock arrive. The run adds them to the checkpoint without a recheck.
    let (status, _) = app
        .post("/inventory/reservations/release?orderNo=CK-1")
        .await;
    assert_eq!(status, 200);
    reserve(&app, "CK-3", json!([{"skuId": 521, "qty": 4}])).await;
    app.stock_in(SkuId(521), WarehouseId(1), 5).await;
    app.drain_journal().await;
    let (_, report) = app.post("/inventory/reconcile?repair=false").await;
    assert_eq!(report["data"]["differences"], json!([]), "{report}");
    assert_eq!(report["data"]["rechecked"], 0, "{report}");

    // A wrong checkpoint is no difference: the position is checked against its whole
    // history, which agrees with Redis, and the checkpoint is rewritten.
    let mut conn = app.db_conn().await;
    diesel::sql_query(
        "UPDATE t_reconcile_checkpoint SET on_hand = on_hand + 100 WHERE sku_id = 522",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let (_, report) = app.post("/inventory/reconcile?repair=false").await;
    assert_eq!(report["data"]["differences"], json!([]), "{report}");
    assert_eq!(report["data"]["rechecked"], 1, "{report}");
    assert_eq!(report["data"]["checkpointsFixed"], 1, "{report}");
    let rewritten = checkpoint_of(&app, 522).await;
    assert_eq!(rewritten, Some((20, 0, 3)));

    // A real drift is found through the checkpoint, confirmed by the full check, repaired.
    let _: i64 = app
        .redis_cmd(
            redis::cmd("HINCRBY")
                .arg(app.redis.keys().stock(a))
                .arg("avail")
                .arg(5),
        )
        .await;
    let (_, report) = app.post("/inventory/reconcile?repair=false").await;
    assert_eq!(
        kinds(&report),
        vec![(521, "REDIS_STOCK".to_string())],
        "{report}"
    );
    assert_eq!(report["data"]["checkpointsFixed"], 0, "{report}");
    let (_, report) = app.post("/inventory/reconcile?repair=true").await;
    assert_eq!(
        report["data"]["differences"][0]["repaired"], true,
        "{report}"
    );
    let audits = app.assert_invariants(&[a, b]).await;
    assert_eq!(audits[0].db_available, Some(21));

    // The next fold takes in the release, the new hold and the repair; a full check agrees.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, report) = app.post("/inventory/reconcile?repair=false").await;
    assert_eq!(report["data"]["differences"], json!([]), "{report}");
    assert_eq!(checkpoint_of(&app, 521).await, Some((25, 4, 0)));

    // A marker of a line older than the watermark (CK-1, released before the last fold) is
    // still checked while it should live: its loss is found and repaired.
    let keys = app.redis.keys().clone();
    let _: i64 = app
        .redis_cmd(
            redis::cmd("HDEL")
                .arg(keys.orders(keys.group(a)))
                .arg("CK-1"),
        )
        .await;
    let (_, report) = app.post("/inventory/reconcile?repair=false").await;
    assert_eq!(
        kinds(&report),
        vec![(521, "MARKER_MISSING".to_string())],
        "{report}"
    );
    let (_, report) = app.post("/inventory/reconcile?repair=true").await;
    assert_eq!(
        report["data"]["differences"][0]["repaired"], true,
        "{report}"
    );

    let (_, report) = app
        .post("/inventory/reconcile?repair=false&full=true")
        .await;
    assert_eq!(report["data"]["full"], true, "{report}");
    assert_eq!(report["data"]["differences"], json!([]), "{report}");
    let (status, body) = app.post("/inventory/reconcile?full=yes").await;
    assert_eq!(status, 400, "{body}");
}

#[actix_web::test]
async fn reconciliation_finds_positions_only_redis_holds_through_the_registry() {
    let app = spawn_app_with(&[("reconcile.enabled", false.into())]).await;
    app.stock_in(SkuId(531), WarehouseId(1), 10).await;
    app.stock_in(SkuId(532), WarehouseId(2), 10).await;
    app.drain_journal().await;
    // The DB loses one row: only Redis' registry still names the position.
    let mut conn = app.db_conn().await;
    diesel::sql_query("DELETE FROM t_inventory WHERE sku_id = 532")
        .execute(&mut conn)
        .await
        .unwrap();
    let (_, report) = app.post("/inventory/reconcile?repair=false").await;
    assert_eq!(
        kinds(&report),
        vec![(532, "DB_STOCK".to_string())],
        "{report}"
    );

    // A Redis from before registries (no registry sets, no meta field) is registered by
    // one SCAN, and the same position is found.
    let keys = app.redis.keys().clone();
    for g in 0..keys.groups() {
        let _: i64 = app
            .redis_cmd(redis::cmd("DEL").arg(keys.positions(g)))
            .await;
    }
    let _: i64 = app
        .redis_cmd(redis::cmd("HDEL").arg(keys.meta()).arg("registry"))
        .await;
    let (_, report) = app.post("/inventory/reconcile?repair=false").await;
    assert_eq!(
        kinds(&report),
        vec![(532, "DB_STOCK".to_string())],
        "{report}"
    );
    let registered: Option<String> = app
        .redis_cmd(redis::cmd("HGET").arg(keys.meta()).arg("registry"))
        .await;
    assert_eq!(registered.as_deref(), Some("1"));
    let member: i64 = app
        .redis_cmd(
            redis::cmd("SISMEMBER")
                .arg(keys.positions(keys.group(SkuKey::new(WarehouseId(2), SkuId(532)))))
                .arg("2:532"),
        )
        .await;
    assert_eq!(member, 1);
}

#[actix_web::test]
async fn a_redis_that_lost_everything_is_rebuilt_from_the_db() {
    // The supervisor would notice the loss on its own; keep it out of the way so the
    // endpoint's report is what is checked.
    let app = spawn_app_with(&[
        ("supervisor.lease_ms", 600_000.into()),
        ("supervisor.tick_ms", 300_000.into()),
    ])
    .await;
    let key = SkuKey::new(WarehouseId(2), SkuId(601));
    app.stock_in(SkuId(601), WarehouseId(2), 30).await;
    reserve(
        &app,
        "LOST-1",
        json!([{"skuId": 601, "warehouseId": 2, "qty": 4}]),
    )
    .await;
    reserve(
        &app,
        "LOST-2",
        json!([{"skuId": 601, "warehouseId": 2, "qty": 5}]),
    )
    .await;
    let (status, _) = app
        .post("/inventory/reservations/confirm?orderNo=LOST-2")
        .await;
    assert_eq!(status, 200);
    app.drain_journal().await;

    // Everything of this deployment disappears from Redis (a restart without persistence).
    let keys: Vec<String> = app
        .redis_cmd(redis::cmd("KEYS").arg(format!("{}*", app.redis.keys().prefix())))
        .await;
    let _: i64 = app.redis_cmd(redis::cmd("DEL").arg(&keys)).await;

    let (status, report) = app.post("/inventory/reconcile?repair=false").await;
    assert_eq!(status, 200, "{report}");
    assert!(
        kinds(&report).contains(&(0, "REDIS_LOST_DATA".to_string())),
        "{report}"
    );
    let (status, report) = app.post("/inventory/reconcile?repair=true").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["data"]["redisRebuilt"], true, "{report}");

    let levels = app.redis.stock(key).await.unwrap().expect("stock rebuilt");
    assert_eq!(
        (levels.available, levels.reserved, levels.confirmed),
        (21, 4, 5)
    );
    // The markers came back: the same order is recognised, not held twice.
    let (status, body) = app
        .post_json(
            "/inventory/reserve",
            &json!({"orderNo": "LOST-1", "skuId": 601, "warehouseId": 2, "qty": 4}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["existed"], true);
    let (status, _) = app
        .post("/inventory/reservations/release?orderNo=LOST-1")
        .await;
    assert_eq!(status, 200);
    app.assert_invariants(&[key]).await;
}

async fn token(app: &TestApp) -> Option<i64> {
    app.state.supervisor.send(LeaderToken).await.unwrap()
}

#[actix_web::test]
async fn another_instance_takes_over_when_the_leader_is_killed() {
    let (db_name, db_url) = crate::helpers::create_test_database().await;
    let prefix = format!("t{}:", &db_name["inventory_t_".len()..]);
    let env = [
        ("INVENTORY__SUPERVISOR__LEASE_MS", "800"),
        ("INVENTORY__SUPERVISOR__TICK_MS", "100"),
    ];
    // The leader: the real binary, first to take the lease.
    let mut leader = crate::crash::start_service_with(&db_url, &prefix, &env).await;
    let settings = crate::helpers::test_settings(
        &db_url,
        &prefix,
        &[
            ("supervisor.lease_ms", 800.into()),
            ("supervisor.tick_ms", 100.into()),
        ],
    );
    let lease_key = inventory::store::wire::Keys::new(&prefix, 16).leader();
    let redis = inventory::store::redis::RedisStore::connect(&settings.redis)
        .await
        .unwrap();
    eventually("the binary to lead", Duration::from_secs(10), || async {
        let mut conn = redis.connection();
        let owner: Option<String> = redis::cmd("GET")
            .arg(&lease_key)
            .query_async(&mut conn)
            .await
            .unwrap();
        owner.is_some()
    })
    .await;
    let follower = start(settings, db_name).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(token(&follower).await, None, "one leader at a time");
    let mut conn = redis.connection();
    let held: String = redis::cmd("GET")
        .arg(&lease_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let old: i64 = held.rsplit('|').next().unwrap().parse().unwrap();

    // kill -9: the lease is not given up; it runs out and the follower takes over.
    leader.kill9();
    let killed = Instant::now();
    eventually("failover", Duration::from_secs(5), || async {
        token(&follower).await.is_some()
    })
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(3),
        "{:?}",
        killed.elapsed()
    );
    let new = token(&follower).await.unwrap();
    assert!(new > old, "fencing token grows: {old} -> {new}");
}

#[actix_web::test]
async fn a_cancel_while_redis_had_lost_the_order_does_not_strand_its_hold() {
    let app = spawn_app_with(&[
        ("supervisor.lease_ms", 600_000.into()),
        ("supervisor.tick_ms", 300_000.into()),
    ])
    .await;
    let key = SkuKey::new(WarehouseId(1), SkuId(611));
    app.stock_in(SkuId(611), WarehouseId(1), 10).await;
    reserve(&app, "STRAND-1", json!([{"skuId": 611, "qty": 4}])).await;
    app.drain_journal().await;

    // Redis loses this order (marker and index); a cancel arrives in that window.
    let keys = app.redis.keys();
    let _: i64 = app
        .redis_cmd(
            redis::cmd("HDEL")
                .arg(keys.orders(keys.group(key)))
                .arg("STRAND-1"),
        )
        .await;
    let _: i64 = app
        .redis_cmd(redis::cmd("HDEL").arg(keys.directory()).arg("STRAND-1"))
        .await;
    let (status, body) = app
        .post("/inventory/reservations/release?orderNo=STRAND-1")
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(app.redis.has_tombstone("STRAND-1").await.unwrap());

    // Repair restores the order from the DB: the DB's line replaces the tombstone.
    let (status, report) = app.post("/inventory/reconcile?repair=true").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        kinds(&report),
        vec![(611, "MARKER_MISSING".to_string())],
        "{report}"
    );
    assert!(!app.redis.has_tombstone("STRAND-1").await.unwrap());
    let (status, body) = app
        .post("/inventory/reservations/release?orderNo=STRAND-1")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "RELEASED", "{body}");
    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].db_available, Some(10));
    assert_eq!(audits[0].lines_reserved, 0);
}

/// A run that loses the supervisor lease part-way stops between steps, leaving the rest
/// due; the next leader's run releases the rest, each hold once.
#[actix_web::test]
async fn a_run_that_loses_the_lease_stops_between_steps() {
    use futures_util::StreamExt;
    use inventory::engine::leadership::{Leadership, LeaseGuard};
    const ORDERS: usize = 600;
    let app = spawn_app_with(&[
        ("reservation.expire_after_ms", 200.into()),
        ("reservation.timeout.enabled", false.into()),
        // One order per step: a step takes well under a millisecond, and the run must
        // outlast the 60 ms the lease has left.
        ("reservation.timeout.batch_size", 1.into()),
    ])
    .await;
    let key = SkuKey::new(WarehouseId(1), SkuId(191));
    app.stock_in(SkuId(191), WarehouseId(1), 1_000).await;
    futures_util::stream::iter(0..ORDERS)
        .for_each_concurrent(16, |n| {
            let app = &app;
            async move {
                reserve(
                    app,
                    &format!("LEASE-{n}"),
                    json!([{"skuId": 191, "qty": 1}]),
                )
                .await;
            }
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Tokens above the one the instance's own supervisor raised the fences to (tokens
    // start at Redis' clock in ms).
    eventually("leadership", Duration::from_secs(5), || async {
        token(&app).await.is_some()
    })
    .await;
    let own = token(&app).await.unwrap();

    // A lease this instance holds for about 60 ms more (a 1 s lease renewed 940 ms ago,
    // less the tenth kept for drift... counted from now - 840 ms).
    let leadership = Leadership::default();
    leadership.renewed(Some(own + 41), inventory::engine::now_ms() - 840, 1_000);
    let guard = LeaseGuard {
        leadership: leadership.clone(),
        token: own + 41,
    };
    assert!(guard.holds());
    let lost = app.state.expiry.run_as_leader(&guard).await.unwrap();
    assert!(lost.lease_lost, "{lost:?}");
    assert!(lost.released < ORDERS, "{lost:?}");
    assert!(!guard.holds());

    // Another token is another lease: a guard of the old one does nothing at all.
    leadership.renewed(Some(own + 42), inventory::engine::now_ms(), 60_000);
    let stale = app.state.expiry.run_as_leader(&guard).await.unwrap();
    assert!(stale.lease_lost && stale.steps == 0, "{stale:?}");

    // The new leader finishes the job.
    let next = LeaseGuard {
        leadership,
        token: own + 42,
    };
    let mut released = lost.released;
    for _ in 0..50 {
        let r = app.state.expiry.run_as_leader(&next).await.unwrap();
        assert!(!r.lease_lost, "{r:?}");
        released += r.released;
        if released == ORDERS {
            break;
        }
    }
    assert_eq!(released, ORDERS);
    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].db_available, Some(1_000));
    let expired = ledger_reasons(&app, key)
        .await
        .iter()
        .filter(|r| r.as_str() == "EXPIRED")
        .count();
    assert_eq!(expired, ORDERS, "each hold released once");
}

/// The lease is renewed on its own timer: a job that takes longer than the lease (here an
/// order service that answers after 2.5 s, with a 0.9 s lease) keeps it throughout.
#[actix_web::test]
async fn the_lease_outlives_a_job_longer_than_it() {
    let port = order_service().await;
    let app = spawn_app_with(&[
        ("reservation.expire_after_ms", 200.into()),
        (
            "reservation.timeout.order_status_url",
            format!("http://127.0.0.1:{port}/orders/{{orderNo}}/status").into(),
        ),
        ("reservation.timeout.order_status_timeout_ms", 5_000.into()),
        ("reservation.timeout.interval_ms", 100.into()),
        ("supervisor.lease_ms", 900.into()),
        ("supervisor.tick_ms", 100.into()),
    ])
    .await;
    app.stock_in(SkuId(196), WarehouseId(1), 10).await;
    eventually("leadership", Duration::from_secs(5), || async {
        token(&app).await.is_some()
    })
    .await;
    let first = token(&app).await;
    reserve(&app, "SLOW-1", json!([{"skuId": 196, "qty": 1}])).await;
    let lease_key = app.redis.keys().leader();
    // The hold is due after 200 ms; the job then waits 2.5 s for the order service.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_millis(3_000) {
        let owner: Option<String> = app.redis_cmd(redis::cmd("GET").arg(&lease_key)).await;
        assert!(
            owner.is_some(),
            "the lease lapsed {:?} into the job",
            watch.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually("the slow hold released", Duration::from_secs(5), || async {
        status_of(&app, "SLOW-1").await == "RELEASED"
    })
    .await;
    assert_eq!(token(&app).await, first, "the same lease throughout");
}

/// A leader paused past its lease while another instance took over: the new leader raised
/// every group's fence to its token, so the old one's expiry releases and reconciliation
/// repairs are refused, even while its own clock still says it leads.
#[actix_web::test]
async fn a_stale_leaders_writes_are_refused_by_the_fence() {
    use inventory::engine::leadership::{Leadership, LeaseGuard};
    let app = spawn_app_with(&[
        ("reservation.expire_after_ms", 200.into()),
        ("reservation.timeout.enabled", false.into()),
        ("reconcile.enabled", false.into()),
    ])
    .await;
    // The instance's own supervisor leads (and raised the fences to its token first).
    eventually("leadership", Duration::from_secs(5), || async {
        token(&app).await.is_some()
    })
    .await;
    let own = token(&app).await.unwrap();
    let keys = app.redis.keys().clone();
    for g in 0..keys.groups() {
        let fence: Option<i64> = app
            .redis_cmd(redis::cmd("HGET").arg(keys.orders(g)).arg(" fence"))
            .await;
        assert_eq!(fence, Some(own), "group {g}");
    }

    let key = SkuKey::new(WarehouseId(1), SkuId(197));
    app.stock_in(SkuId(197), WarehouseId(1), 50).await;
    for n in 0..10 {
        reserve(
            &app,
            &format!("FENCE-{n}"),
            json!([{"skuId": 197, "qty": 1}]),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A newer leader (token own + 10) has raised the fences.
    let newer = own + 10;
    assert!(app.redis.raise_fences(newer).await.unwrap());
    assert!(
        !app.redis.raise_fences(own).await.unwrap(),
        "a lower token is refused"
    );

    // The stale leader still believes it leads, for a minute.
    let leadership = Leadership::default();
    leadership.renewed(Some(own), inventory::engine::now_ms(), 60_000);
    let stale = LeaseGuard {
        leadership,
        token: own,
    };
    let report = app.state.expiry.run_as_leader(&stale).await.unwrap();
    assert!(report.lease_lost, "{report:?}");
    assert_eq!(report.released, 0, "{report:?}");
    for n in 0..10 {
        assert_eq!(status_of(&app, &format!("FENCE-{n}")).await, "RESERVED");
    }
    // Its repair is refused too.
    app.drain_journal().await;
    let _: i64 = app
        .redis_cmd(
            redis::cmd("HINCRBY")
                .arg(keys.stock(key))
                .arg("avail")
                .arg(3),
        )
        .await;
    let refused = app
        .state
        .reconciler
        .run_guarded(Some(197), Some(1), true, true, "test", Some(&stale))
        .await
        .unwrap();
    assert!(refused.lease_lost, "{refused:?}");
    assert!(
        refused.differences.iter().all(|d| !d.repaired),
        "{refused:?}"
    );
    // Its rebuild of a position is refused as well; a rebuild without a token (a request
    // loading a position Redis lacks) and one with the newer token are not.
    assert!(matches!(
        app.state.stock.rebuild_position(key, own).await,
        Err(inventory::engine::EngineError::Fenced)
    ));
    assert!(app
        .state
        .stock
        .rebuild_position(key, 0)
        .await
        .unwrap()
        .is_some());
    assert!(app
        .state
        .stock
        .rebuild_position(key, newer)
        .await
        .unwrap()
        .is_some());

    // The new leader's token goes through: the holds are released once, the repair made.
    let current = Leadership::default();
    current.renewed(Some(newer), inventory::engine::now_ms(), 60_000);
    let fresh = LeaseGuard {
        leadership: current,
        token: newer,
    };
    let repaired = app
        .state
        .reconciler
        .run_guarded(Some(197), Some(1), true, true, "test", Some(&fresh))
        .await
        .unwrap();
    assert!(!repaired.lease_lost, "{repaired:?}");
    assert!(
        repaired.differences.iter().any(|d| d.repaired),
        "{repaired:?}"
    );
    let report = app.state.expiry.run_as_leader(&fresh).await.unwrap();
    assert_eq!(report.released, 10, "{report:?}");
    // A customer's release carries no token and is never fenced.
    reserve(&app, "FENCE-USER", json!([{"skuId": 197, "qty": 1}])).await;
    let (status, body) = app
        .post("/inventory/reservations/release?orderNo=FENCE-USER")
        .await;
    assert_eq!(status, 200, "{body}");
    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].db_available, Some(50));

    // Redis losing the token counter with its data does not take tokens back: a new lease's
    // token is at least Redis' clock in ms, so above every token handed out before.
    let _: i64 = app
        .redis_cmd(
            redis::cmd("DEL")
                .arg(keys.leader())
                .arg(keys.leader_token()),
        )
        .await;
    // (Whoever takes the lease now, this call or the instance's own supervisor.)
    let _ = app.redis.lease("after-loss", 60_000, false).await.unwrap();
    let after_loss: i64 = app
        .redis_cmd(redis::cmd("GET").arg(keys.leader_token()))
        .await;
    assert!(after_loss > newer, "{after_loss} <= {newer}");
}
