use inventory::domain::SkuKey;
use inventory::domain::{SkuId, WarehouseId};
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, start};

const FIELDS: &[&str] = &[
    "id",
    "skuId",
    "warehouseId",
    "availableQty",
    "reservedQty",
    "totalQty",
    "redisAvailableQty",
    "updatedAt",
];

fn field_names(v: &Value) -> Vec<String> {
    let mut names: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    names.sort();
    names
}

#[actix_web::test]
async fn get_inventory_returns_exactly_the_reference_fields() {
    let app = spawn_app().await;
    app.stock_in(SkuId(1001), WarehouseId(1), 100).await;

    let (status, body) = app.get("/inventory/1001?warehouseId=1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["code"], "0");
    assert_eq!(body["message"], "success");
    let data = &body["data"];
    let mut expected: Vec<String> = FIELDS.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(field_names(data), expected);
    assert_eq!(data["skuId"], 1001);
    assert_eq!(data["warehouseId"], 1);
    assert_eq!(data["availableQty"], 100);
    assert_eq!(data["reservedQty"], 0);
    assert_eq!(data["totalQty"], 100);
    assert_eq!(data["redisAvailableQty"], 100);
    // Local date-time without zone, as the reference prints it.
    let updated = data["updatedAt"].as_str().expect("updatedAt");
    assert!(
        chrono::NaiveDateTime::parse_from_str(updated, "%Y-%m-%dT%H:%M:%S").is_ok(),
        "{updated}"
    );

    // warehouseId omitted: the configured default warehouse (1).
    let (status, default_wh) = app.get("/inventory/1001").await;
    assert_eq!(status, 200);
    assert_eq!(default_wh["data"], body["data"]);
}

#[actix_web::test]
async fn default_warehouse_comes_from_config() {
    let app = spawn_app_with(&[("inventory.default_warehouse_id", 7.into())]).await;
    app.stock_in(SkuId(55), WarehouseId(7), 3).await;
    let (status, body) = app.get("/inventory/55").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["warehouseId"], 7);
    let (status, body) = app.get("/inventory/55?warehouseId=1").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "INVENTORY_NOT_FOUND");
}

#[actix_web::test]
async fn all_warehouses_lists_every_position_of_the_sku() {
    let app = spawn_app().await;
    app.stock_in(SkuId(2001), WarehouseId(1), 10).await;
    app.stock_in(SkuId(2001), WarehouseId(2), 20).await;
    app.stock_in(SkuId(2002), WarehouseId(1), 5).await;

    let (status, body) = app.get("/inventory/2001/all").await;
    assert_eq!(status, 200, "{body}");
    let list = body["data"].as_array().expect("list");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["warehouseId"], 1);
    assert_eq!(list[0]["availableQty"], 10);
    assert_eq!(list[1]["warehouseId"], 2);
    assert_eq!(list[1]["availableQty"], 20);
    for item in list {
        assert_eq!(field_names(item).len(), FIELDS.len());
    }

    let (status, body) = app.get("/inventory/9999/all").await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], "SKU_NOT_FOUND");
    let (status, body) = app.get("/inventory/9999?warehouseId=1").await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], "INVENTORY_NOT_FOUND");
}

#[actix_web::test]
async fn stock_adjustments_write_the_ledger_and_keep_redis_equal_to_the_db() {
    let app = spawn_app().await;
    let key = SkuKey::new(WarehouseId(3), SkuId(3001));

    // Inbound creates the position.
    let (status, body) = app
        .post_json(
            "/inventory/3001/stock?warehouseId=3",
            &json!({"delta": 50, "reason": "INBOUND", "remark": "first delivery"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["applied"], true);
    assert_eq!(body["data"]["availableQty"], 50);
    assert_eq!(body["data"]["persisted"], true);

    // Write-off and a manual adjustment.
    let (status, body) = app
        .post_json(
            "/inventory/3001/stock?warehouseId=3",
            &json!({"delta": -8, "reason": "OUTBOUND"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .post_json(
            "/inventory/3001/stock?warehouseId=3",
            &json!({"delta": 3, "reason": "ADJUST"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["availableQty"], 45);

    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].ledger_rows, 3);
    assert_eq!(audits[0].ledger_stock_on_hand, 45);

    let mut conn = app.db_conn().await;
    let ledger = inventory::store::models::LedgerEntry::for_position(&mut conn, key)
        .await
        .unwrap();
    let summary: Vec<(String, i32, i32)> = ledger
        .iter()
        .map(|e| (e.reason.clone(), e.delta_available, e.available_after))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("INBOUND".to_string(), 50, 50),
            ("OUTBOUND".to_string(), -8, 42),
            ("ADJUST".to_string(), 3, 45),
        ]
    );
    assert_eq!(ledger[0].remark.as_deref(), Some("first delivery"));
    assert!(ledger.iter().all(|e| e.trace_id.is_some()));

    let (_, view) = app.get("/inventory/3001?warehouseId=3").await;
    assert_eq!(view["data"]["availableQty"], 45);
    assert_eq!(view["data"]["redisAvailableQty"], 45);
}

#[actix_web::test]
async fn removing_more_than_available_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let key = SkuKey::new(WarehouseId(1), SkuId(4001));
    app.stock_in(SkuId(4001), WarehouseId(1), 10).await;

    let (status, body) = app
        .post_json("/inventory/4001/stock", &json!({"delta": -11}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "INSUFFICIENT_STOCK");
    assert_eq!(body["data"]["availableQty"], 10);

    // Removing from a position that does not exist creates nothing.
    let (status, body) = app
        .post_json("/inventory/4002/stock", &json!({"delta": -1}))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "INVENTORY_NOT_FOUND");
    assert!(app
        .redis
        .stock(SkuKey::new(WarehouseId(1), SkuId(4002)))
        .await
        .unwrap()
        .is_none());

    // Above the documented ceiling.
    let (status, body) = app
        .post_json("/inventory/4001/stock", &json!({"delta": 100_000_000}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .post_json("/inventory/4001/stock", &json!({"delta": 100_000_000}))
        .await;
    assert_eq!(status, 200, "{body}");
    for _ in 0..8 {
        app.post_json("/inventory/4001/stock", &json!({"delta": 100_000_000}))
            .await;
    }
    let (status, body) = app
        .post_json("/inventory/4001/stock", &json!({"delta": 100_000_000}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "STOCK_LIMIT_EXCEEDED");

    let audits = app.assert_invariants(&[key]).await;
    // 10 + 9 x 100,000,000 fit under the ceiling of 1,000,000,000; the 10th does not.
    assert_eq!(audits[0].db_available, Some(900_000_010));
}

#[actix_web::test]
async fn a_repeated_request_id_applies_once_and_a_different_delta_conflicts() {
    let app = spawn_app().await;
    let key = SkuKey::new(WarehouseId(1), SkuId(5001));
    let body = json!({"delta": 7, "reason": "INBOUND", "requestId": "grn-77"});
    let (s1, first) = app.post_json("/inventory/5001/stock", &body).await;
    let (s2, second) = app.post_json("/inventory/5001/stock", &body).await;
    assert_eq!((s1, s2), (200, 200), "{first} {second}");
    assert_eq!(first["data"]["applied"], true);
    assert_eq!(second["data"]["applied"], false);
    assert_eq!(second["data"]["availableQty"], 7);

    let (status, conflict) = app
        .post_json(
            "/inventory/5001/stock",
            &json!({"delta": 8, "reason": "INBOUND", "requestId": "grn-77"}),
        )
        .await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["code"], "IDEMPOTENCY_CONFLICT");

    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].ledger_rows, 1);
    assert_eq!(audits[0].db_available, Some(7));
}

#[actix_web::test]
async fn concurrent_write_offs_never_take_available_below_zero() {
    let app = spawn_app().await;
    let key = SkuKey::new(WarehouseId(1), SkuId(6001));
    app.stock_in(SkuId(6001), WarehouseId(1), 30).await;

    let mut tasks = Vec::new();
    for _ in 0..60 {
        let client = app.client.clone();
        let url = app.url("/inventory/6001/stock");
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"delta": -1}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            200 => ok += 1,
            409 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok, 30);
    assert_eq!(refused, 30);
    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].db_available, Some(0));
    assert_eq!(audits[0].ledger_rows, 31);
}

/// (path, body, expected status, expected code)
fn bad_requests() -> Vec<(
    &'static str,
    &'static str,
    Option<&'static str>,
    u16,
    &'static str,
)> {
    vec![
        ("GET", "/inventory/abc", None, 400, "INVALID_PARAMETER"),
        ("GET", "/inventory/0", None, 400, "INVALID_PARAMETER"),
        ("GET", "/inventory/-5", None, 400, "INVALID_PARAMETER"),
        ("GET", "/inventory/1.5", None, 400, "INVALID_PARAMETER"),
        (
            "GET",
            "/inventory/99999999999999999999",
            None,
            400,
            "INVALID_PARAMETER",
        ),
        (
            "GET",
            "/inventory/7001?warehouseId=x",
            None,
            400,
            "INVALID_PARAMETER",
        ),
        (
            "GET",
            "/inventory/7001?warehouseId=0",
            None,
            400,
            "INVALID_PARAMETER",
        ),
        ("GET", "/inventory/abc/all", None, 400, "INVALID_PARAMETER"),
        (
            "POST",
            "/inventory/abc/sync",
            None,
            400,
            "INVALID_PARAMETER",
        ),
        (
            "POST",
            "/inventory/7001/sync?warehouseId=-1",
            None,
            400,
            "INVALID_PARAMETER",
        ),
        (
            "POST",
            "/inventory/7001/stock",
            Some("{\"delta\": "),
            400,
            "INVALID_JSON",
        ),
        (
            "POST",
            "/inventory/7001/stock",
            Some("{}"),
            400,
            "INVALID_JSON",
        ),
        (
            "POST",
            "/inventory/7001/stock",
            Some("{\"delta\": 1.5}"),
            400,
            "INVALID_JSON",
        ),
        (
            "POST",
            "/inventory/7001/stock",
            Some("{\"delta\": \"5\"}"),
            400,
            "INVALID_JSON",
        ),
        (
            "POST",
            "/inventory/7001/stock",
            Some("{\"delta\": 5, \"colour\": 1}"),
            400,
            "INVALID_JSON",
        ),
        (
            "POST",
            "/inventory/7001/stock",
            Some("{\"delta\": 0}"),
            400,
            "QUANTITY_OUT_OF_RANGE",
        ),
        (
            "POST",
            "/inventory/7001/stock",
            Some("{\"delta\": 100000001}"),
            400,
            "QUANTITY_OUT_OF_RANGE",
        ),
        (
            "POST",
            "/inventory/7001/stock",
            Some("{\"delta\": -100000001}"),
            400,
            "QUANTITY_OUT_OF_RANGE",
        ),
        (
            "POST",
            "/inventory/7001/stock",
            Some("{\"delta\": -9223372036854775808}"),
            400,
            "QUANTITY_OUT_OF_RANGE",
        ),
        (
            "POST",
            "/inventory/7001/stock",
            Some("{\"delta\": 99999999999999999999}"),
            400,
            "INVALID_JSON",
        ),
        (
            "POST",
            "/inventory/7001/stock",
            Some("{\"delta\": 5, \"reason\": \"GIFT\"}"),
            400,
            "INVALID_PARAMETER",
        ),
        (
            "POST",
            "/inventory/7001/stock",
            Some("{\"delta\": -5, \"reason\": \"INBOUND\"}"),
            400,
            "INVALID_PARAMETER",
        ),
        (
            "POST",
            "/inventory/7001/stock",
            Some("{\"delta\": 5, \"reason\": \"OUTBOUND\"}"),
            400,
            "INVALID_PARAMETER",
        ),
        (
            "POST",
            "/inventory/7001/stock",
            Some("{\"delta\": 5, \"requestId\": \"a b\"}"),
            400,
            "INVALID_PARAMETER",
        ),
        (
            "POST",
            "/inventory/abc/stock",
            Some("{\"delta\": 5}"),
            400,
            "INVALID_PARAMETER",
        ),
        ("GET", "/nowhere", None, 404, "ROUTE_NOT_FOUND"),
        (
            "GET",
            "/inventory/7001/stock",
            None,
            405,
            "METHOD_NOT_ALLOWED",
        ),
        ("POST", "/inventory/7001", None, 405, "METHOD_NOT_ALLOWED"),
        ("GET", "/inventory/reserve", None, 405, "METHOD_NOT_ALLOWED"),
    ]
}

#[actix_web::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let app = spawn_app().await;
    let key = SkuKey::new(WarehouseId(1), SkuId(7001));
    app.stock_in(SkuId(7001), WarehouseId(1), 10).await;
    app.drain_journal().await;
    let before = app.audit(key).await;

    for (method, path, body, status, code) in bad_requests() {
        let (got_status, got) = match (method, body) {
            ("GET", _) => app.get(path).await,
            ("POST", Some(body)) => app.post_raw(path, "application/json", body).await,
            _ => app.post(path).await,
        };
        assert_eq!(got_status, status, "{method} {path} {body:?}: {got}");
        assert_eq!(got["code"], code, "{method} {path} {body:?}: {got}");
        assert!(
            got["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{got}"
        );
        assert!(got.get("data").is_some(), "envelope has data: {got}");
    }

    // Wrong content type and an oversized body.
    let (status, got) = app
        .post_raw("/inventory/7001/stock", "text/plain", "{\"delta\": 5}")
        .await;
    assert_eq!(
        (status, got["code"].as_str()),
        (415, Some("UNSUPPORTED_MEDIA_TYPE")),
        "{got}"
    );
    let huge = format!("{{\"delta\": 5, \"remark\": \"{}\"}}", "x".repeat(70_000));
    let (status, got) = app
        .post_raw("/inventory/7001/stock", "application/json", &huge)
        .await;
    assert_eq!(
        (status, got["code"].as_str()),
        (413, Some("PAYLOAD_TOO_LARGE")),
        "{got}"
    );

    app.drain_journal().await;
    let after = app.audit(key).await;
    assert_eq!(before, after, "a refused request changed state");
    assert!(after.is_clean(), "{after:#?}");
    assert!(app
        .redis
        .stock(SkuKey::new(WarehouseId(1), SkuId(1)))
        .await
        .unwrap()
        .is_none());
}

#[actix_web::test]
async fn sync_copies_the_db_to_redis() {
    let app = spawn_app().await;
    let key = SkuKey::new(WarehouseId(1), SkuId(8001));
    app.stock_in(SkuId(8001), WarehouseId(1), 40).await;
    app.drain_journal().await;

    let (status, body) = app.post("/inventory/8001/sync?warehouseId=1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "IN_SYNC");

    // Someone edits Redis behind our back: sync puts the DB's value back.
    let stock_key = app.redis.keys().stock(key);
    let _: i64 = app
        .redis_cmd(redis::cmd("HSET").arg(&stock_key).arg("avail").arg(999))
        .await;
    let (status, body) = app.post("/inventory/8001/sync").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "OVERWRITTEN");
    assert_eq!(body["data"]["redisAvailableBefore"], 999);
    assert_eq!(body["data"]["redisAvailableQty"], 40);

    // Redis lost the key: sync loads it.
    let _: i64 = app.redis_cmd(redis::cmd("DEL").arg(&stock_key)).await;
    let (status, body) = app.post("/inventory/8001/sync").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "LOADED");
    app.assert_invariants(&[key]).await;

    let (status, body) = app.post("/inventory/8999/sync").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "INVENTORY_NOT_FOUND");
}

#[actix_web::test]
async fn warm_up_loads_missing_positions_and_never_overwrites_redis() {
    let mut app = spawn_app().await;
    let lost = SkuKey::new(WarehouseId(1), SkuId(9001));
    let kept = SkuKey::new(WarehouseId(1), SkuId(9002));
    app.stock_in(SkuId(9001), WarehouseId(1), 11).await;
    app.stock_in(SkuId(9002), WarehouseId(1), 22).await;
    app.drain_journal().await;
    app.stop().await;

    // While the service is down: Redis loses one position, and holds a newer value of
    // the other than the DB (as if its journal entry were still on the way).
    let _: i64 = app
        .redis_cmd(redis::cmd("DEL").arg(app.redis.keys().stock(lost)))
        .await;
    let _: i64 = app
        .redis_cmd(
            redis::cmd("HSET")
                .arg(app.redis.keys().stock(kept))
                .arg("avail")
                .arg(21)
                .arg("seq")
                .arg(100),
        )
        .await;

    let restarted = start(app.settings.clone(), app.db_name.clone()).await;
    let lost_levels = restarted.redis.stock(lost).await.unwrap().expect("loaded");
    assert_eq!(lost_levels.available, 11);
    let kept_levels = restarted.redis.stock(kept).await.unwrap().expect("kept");
    assert_eq!(kept_levels.available, 21);
    assert_eq!(kept_levels.seq, 100);
    restarted.assert_invariants(&[lost]).await;
}

#[actix_web::test]
async fn demo_stock_is_seeded_once() {
    let mut app = spawn_app_with(&[("demo.seed_stock", true.into())]).await;
    let (status, body) = app.get("/inventory/1001?warehouseId=1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["availableQty"], 100);
    let (_, body) = app.get("/inventory/1002").await;
    assert_eq!(body["data"]["availableQty"], 200);

    // Sell some, restart: the seed must not top it up again.
    let (status, _) = app
        .post_json("/inventory/1001/stock", &json!({"delta": -30}))
        .await;
    assert_eq!(status, 200);
    app.drain_journal().await;
    app.stop().await;
    let restarted = start(app.settings.clone(), app.db_name.clone()).await;
    let (_, body) = restarted.get("/inventory/1001").await;
    assert_eq!(body["data"]["availableQty"], 70);
    restarted
        .assert_invariants(&[
            SkuKey::new(WarehouseId(1), SkuId(1001)),
            SkuKey::new(WarehouseId(1), SkuId(1002)),
        ])
        .await;
}
