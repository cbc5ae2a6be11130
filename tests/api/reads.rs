//! Stock reads at flash-sale scale: Redis first, an in-process cache with bounded
//! staleness, many positions per call.

use inventory::domain::{SkuId, WarehouseId};
use std::time::{Duration, Instant};

use inventory::domain::SkuKey;
use inventory::engine::persistence::StopPersistence;
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, start, TestApp};

async fn available(app: &TestApp, sku: i64) -> i64 {
    let (status, body) = app.get(&format!("/inventory/{sku}?warehouseId=1")).await;
    assert_eq!(status, 200, "{body}");
    body["data"]["availableQty"].as_i64().expect("availableQty")
}

async fn reserve(app: &TestApp, order: &str, sku: i64, qty: i64) -> (u16, Value) {
    app.post_json(
        "/inventory/reserve",
        &json!({"orderNo": order, "skuId": sku, "warehouseId": 1, "qty": qty}),
    )
    .await
}

/// A second instance on the same Redis prefix and DB, with its own cache settings.
async fn second_instance(app: &TestApp, stock_ttl_ms: u64) -> TestApp {
    let mut settings = app.settings.clone();
    settings.cache.stock_ttl_ms = stock_ttl_ms;
    start(settings, app.db_name.clone()).await
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

async fn metrics_text(app: &TestApp) -> String {
    app.client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body")
}

#[actix_web::test]
async fn a_caller_reads_its_own_writes_on_the_instance_that_served_it() {
    // A TTL far longer than the test: what the reads see can only come from the script
    // replies of this instance's own changes, not from the entries running out.
    let app = spawn_app_with(&[("cache.stock_ttl_ms", 60_000.into())]).await;
    app.stock_in(SkuId(301), WarehouseId(1), 100).await;
    assert_eq!(available(&app, 301).await, 100);

    let (status, body) = reserve(&app, "RYW-1", 301, 3).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = app.get("/inventory/301?warehouseId=1").await;
    assert_eq!(body["data"]["availableQty"], 97, "{body}");
    assert_eq!(body["data"]["reservedQty"], 3, "{body}");
    assert_eq!(body["data"]["totalQty"], 100, "{body}");
    assert_eq!(body["data"]["redisAvailableQty"], 97, "{body}");

    let (status, body) = app
        .post("/inventory/reservations/release?orderNo=RYW-1")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(available(&app, 301).await, 100);

    let (status, body) = reserve(&app, "RYW-2", 301, 10).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .post("/inventory/reservations/confirm?orderNo=RYW-2")
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = app.get("/inventory/301?warehouseId=1").await;
    assert_eq!(body["data"]["availableQty"], 90, "{body}");
    assert_eq!(body["data"]["reservedQty"], 0, "{body}");

    app.stock_in(SkuId(301), WarehouseId(1), 5).await;
    assert_eq!(available(&app, 301).await, 95);

    // The cached figures are Redis' own, and the DB agrees once the journal drained.
    let audits = app
        .assert_invariants(&[SkuKey::new(WarehouseId(1), SkuId(301))])
        .await;
    assert_eq!(audits[0].redis.map(|l| l.available), Some(95));
    let (_, db) = app.get("/inventory/301?warehouseId=1&source=db").await;
    assert_eq!(db["data"]["availableQty"], 95, "{db}");
    // id and updatedAt are the DB row's.
    assert!(db["data"]["id"].is_i64(), "{db}");
    let (_, live) = app.get("/inventory/301?warehouseId=1").await;
    assert_eq!(live["data"]["id"], db["data"]["id"], "{live}");

    let text = metrics_text(&app).await;
    assert!(metric(&text, "inventory_stock_cache_lookups_total{result=\"hit\"}") >= 4.0);
    assert!(metric(&text, "inventory_stock_cache_entries") >= 1.0);
}

#[actix_web::test]
async fn another_instances_changes_show_within_the_ttl() {
    const TTL_MS: u64 = 300;
    // Scheduling on a shared 2-core machine: what a read may lag beyond the TTL.
    const MARGIN_MS: u64 = 300;
    let writer = spawn_app_with(&[("cache.stock_ttl_ms", (TTL_MS as i64).into())]).await;
    writer.stock_in(SkuId(302), WarehouseId(1), 1_000).await;
    let reader = second_instance(&writer, TTL_MS).await;

    let mut stale_reads = 0;
    let mut worst = Duration::ZERO;
    for round in 1..=5_i64 {
        // The reader caches the level, the writer changes it.
        let before = available(&reader, 302).await;
        let (status, body) = reserve(&writer, &format!("STALE-{round}"), 302, 1).await;
        assert_eq!(status, 200, "{body}");
        let changed_at = Instant::now();
        let expected = 1_000 - round;
        assert_eq!(before, expected + 1);
        loop {
            let seen = available(&reader, 302).await;
            if seen == expected {
                worst = worst.max(changed_at.elapsed());
                break;
            }
            assert_eq!(seen, expected + 1, "only the previous value may be served");
            stale_reads += 1;
            assert!(
                changed_at.elapsed() <= Duration::from_millis(TTL_MS + MARGIN_MS),
                "round {round}: still {seen} after {:?}",
                changed_at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The cache did serve the older value (the reads are cached at all), and never for
    // longer than the TTL and the margin.
    assert!(stale_reads > 0, "no read was served from the cache");
    println!("READS staleness across instances: worst {worst:?} with a TTL of {TTL_MS} ms");
}

#[actix_web::test]
async fn a_stale_cache_never_lets_an_order_be_held_that_redis_refuses() {
    let seller = spawn_app_with(&[("cache.stock_ttl_ms", 60_000.into())]).await;
    seller.stock_in(SkuId(303), WarehouseId(1), 5).await;
    let other = second_instance(&seller, 60_000).await;
    // The other instance caches "5 left"...
    assert_eq!(available(&other, 303).await, 5);
    // ...the seller sells them all...
    let (status, body) = reserve(&seller, "LAST-5", 303, 5).await;
    assert_eq!(status, 200, "{body}");
    // ...the other instance still shows its cached 5, but its reserve asks Redis.
    assert_eq!(available(&other, 303).await, 5);
    let (status, body) = reserve(&other, "ONE-MORE", 303, 1).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "INSUFFICIENT_STOCK");
    // Its refusal's own reply refreshed its cache.
    assert_eq!(available(&other, 303).await, 0);
    let audits = seller
        .assert_invariants(&[SkuKey::new(WarehouseId(1), SkuId(303))])
        .await;
    assert_eq!(audits[0].redis.map(|l| l.available), Some(0));
    assert_eq!(audits[0].db_reserved, Some(5));
}

#[actix_web::test]
async fn the_cache_stays_within_its_capacity() {
    let app = spawn_app_with(&[
        ("cache.capacity", 16.into()),
        ("cache.stock_ttl_ms", 60_000.into()),
    ])
    .await;
    for sku in 401..=460 {
        app.stock_in(SkuId(sku), WarehouseId(1), sku).await;
    }
    for _ in 0..2 {
        for sku in 401..=460 {
            assert_eq!(
                available(&app, sku).await,
                sku,
                "evicted or not, reads are right"
            );
        }
    }
    let text = metrics_text(&app).await;
    assert!(metric(&text, "inventory_stock_cache_entries") <= 16.0);
    assert!(metric(&text, "inventory_stock_cache_evictions_total") >= 60.0);
}

#[actix_web::test]
async fn many_positions_are_answered_in_one_call() {
    let app = spawn_app_with(&[("inventory.max_query_positions", 25.into())]).await;
    for sku in 501..=519 {
        app.stock_in(SkuId(sku), WarehouseId(1), sku).await;
    }
    app.stock_in(SkuId(501), WarehouseId(2), 7).await;
    let (status, body) = reserve(&app, "CART-1", 502, 2).await;
    assert_eq!(status, 200, "{body}");

    // 20 positions: 19 in warehouse 1 (one named twice, one through the default
    // warehouse), one in warehouse 2, one that does not exist.
    let mut positions: Vec<Value> = (501..=518)
        .map(|sku| json!({"skuId": sku, "warehouseId": 1}))
        .collect();
    positions.push(json!({"skuId": 519}));
    positions.push(json!({"skuId": 502, "warehouseId": 1}));
    positions.push(json!({"skuId": 501, "warehouseId": 2}));
    positions.push(json!({"skuId": 999, "warehouseId": 1}));
    let (status, body) = app
        .post_json("/inventory/query", &json!({"positions": positions}))
        .await;
    assert_eq!(status, 200, "{body}");
    let items = body["data"]["items"].as_array().expect("items");
    assert_eq!(items.len(), 20, "repeats answered once: {body}");
    assert_eq!(
        body["data"]["notFound"],
        json!([{"skuId": 999, "warehouseId": 1}])
    );
    // Each item is exactly what the single read answers.
    for item in items {
        let (_, single) = app
            .get(&format!(
                "/inventory/{}?warehouseId={}",
                item["skuId"], item["warehouseId"]
            ))
            .await;
        assert_eq!(item, &single["data"]);
    }
    assert_eq!(items[1]["skuId"], 502);
    assert_eq!(items[1]["availableQty"], 500);
    assert_eq!(items[1]["reservedQty"], 2);
    assert_eq!(items[19]["warehouseId"], 2);

    // The DB's view, once the journal is there.
    app.drain_journal().await;
    let (status, db) = app
        .post_json(
            "/inventory/query",
            &json!({"positions": [{"skuId": 502}], "source": "db"}),
        )
        .await;
    assert_eq!(status, 200, "{db}");
    assert_eq!(db["data"]["items"][0]["availableQty"], 500);
    assert!(db["data"]["items"][0]["id"].is_i64());

    // Bad input: a clear 400, nothing read.
    let too_many: Vec<Value> = (1..=26).map(|sku| json!({"skuId": sku})).collect();
    for (bad, why) in [
        (json!({"positions": []}), "empty"),
        (json!({"positions": too_many}), "over the limit"),
        (json!({"positions": [{"skuId": 0}]}), "skuId 0"),
        (
            json!({"positions": [{"skuId": 1, "warehouseId": -1}]}),
            "warehouse -1",
        ),
        (json!({"positions": [{"sku": 1}]}), "unknown field"),
        (
            json!({"positions": [{"skuId": 1}], "source": "cache"}),
            "bad source",
        ),
        (json!({"positions": "501"}), "not a list"),
    ] {
        let (status, body) = app.post_json("/inventory/query", &bad).await;
        assert_eq!(status, 400, "{why}: {body}");
        assert!(body["code"].is_string(), "{why}: {body}");
        assert!(body["data"].is_null(), "{why}: {body}");
    }
    let (status, body) = app.get("/inventory/501?source=cache").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "INVALID_PARAMETER");
}

#[actix_web::test]
async fn live_reads_run_ahead_of_the_db_and_source_db_shows_the_db() {
    let app = spawn_app_with(&[]).await;
    app.stock_in(SkuId(601), WarehouseId(1), 10).await;
    app.drain_journal().await;
    app.state.persistence.send(StopPersistence).await.unwrap();

    let (status, body) = reserve(&app, "AHEAD-1", 601, 4).await;
    assert_eq!(status, 200, "{body}");
    let (_, live) = app.get("/inventory/601?warehouseId=1").await;
    let (_, db) = app.get("/inventory/601?warehouseId=1&source=db").await;
    assert_eq!(live["data"]["availableQty"], 6, "{live}");
    assert_eq!(live["data"]["reservedQty"], 4, "{live}");
    assert_eq!(
        db["data"]["availableQty"], 10,
        "the journal has not reached it: {db}"
    );
    assert_eq!(db["data"]["redisAvailableQty"], 6, "{db}");
    let (_, all) = app.get("/inventory/601/all").await;
    assert_eq!(all["data"][0]["availableQty"], 6, "{all}");
    let (_, all_db) = app.get("/inventory/601/all?source=db").await;
    assert_eq!(all_db["data"][0]["availableQty"], 10, "{all_db}");

    // The order's lines come from Redis; the DB has no row yet.
    let (_, lines) = app.get("/inventory/reservations?orderNo=AHEAD-1").await;
    assert_eq!(lines["data"][0]["status"], "RESERVED", "{lines}");
    let (_, lines_db) = app
        .get("/inventory/reservations?orderNo=AHEAD-1&source=db")
        .await;
    assert_eq!(lines_db["data"], json!([]), "{lines_db}");
}
