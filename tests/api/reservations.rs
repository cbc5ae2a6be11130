//! TryReserve, Confirm, Release against the real stores, asserting the invariants.

use inventory::domain::{SkuId, WarehouseId};
use std::collections::HashSet;

use inventory::domain::SkuKey;
use inventory::engine::persistence::StopPersistence;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, TestApp};

async fn reserve(app: &TestApp, body: Value) -> (u16, Value) {
    app.post_json("/inventory/reserve", &body).await
}

#[actix_web::test]
async fn five_hundred_concurrent_orders_for_one_hundred_units_sell_exactly_one_hundred() {
    let app = spawn_app().await;
    let key = SkuKey::new(WarehouseId(1), SkuId(1001));
    app.stock_in(SkuId(1001), WarehouseId(1), 100).await;

    let mut tasks = Vec::new();
    for n in 0..500 {
        let client = app.client.clone();
        let url = app.url("/inventory/reserve");
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .json(&json!({"orderNo": format!("FLASH-{n}"), "skuId": 1001, "warehouseId": 1, "qty": 1}))
                .send()
                .await
                .expect("sent");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("json");
            (n, status, body)
        }));
    }
    let mut held = HashSet::new();
    let mut refused = 0;
    for task in tasks {
        let (n, status, body) = task.await.unwrap();
        match status {
            200 => {
                assert_eq!(body["data"]["status"], "RESERVED");
                held.insert(format!("FLASH-{n}"));
            }
            409 => {
                assert_eq!(body["code"], "INSUFFICIENT_STOCK", "{body}");
                assert_eq!(body["data"]["status"], "FAILED");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(held.len(), 100);
    assert_eq!(refused, 400);

    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].db_available, Some(0));
    assert_eq!(audits[0].db_reserved, Some(100));
    assert_eq!(audits[0].lines_reserved, 100);
    // Exactly the orders told "held" are in the DB, each once.
    let mut conn = app.db_conn().await;
    let rows = inventory::store::models::Reservation::for_position(&mut conn, key)
        .await
        .unwrap();
    let in_db: HashSet<String> = rows.iter().map(|r| r.order_no.clone()).collect();
    assert_eq!(rows.len(), 100);
    assert_eq!(in_db, held);
}

#[actix_web::test]
async fn the_same_request_twice_reserves_once_and_another_qty_conflicts() {
    let app = spawn_app().await;
    let key = SkuKey::new(WarehouseId(1), SkuId(1001));
    app.stock_in(SkuId(1001), WarehouseId(1), 100).await;
    let body = json!({"orderNo": "ORD001", "skuId": 1001, "warehouseId": 1, "qty": 5});
    let (s1, first) = reserve(&app, body.clone()).await;
    let (s2, second) = reserve(&app, body).await;
    assert_eq!((s1, s2), (200, 200), "{first} {second}");
    assert_eq!(first["data"]["existed"], false);
    assert_eq!(second["data"]["existed"], true);
    assert_eq!(first["data"]["expireAt"], second["data"]["expireAt"]);

    let (status, conflict) = reserve(
        &app,
        json!({"orderNo": "ORD001", "skuId": 1001, "warehouseId": 1, "qty": 6}),
    )
    .await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["code"], "IDEMPOTENCY_CONFLICT");
    // Same order, other lines: a conflict too.
    let (status, conflict) = reserve(
        &app,
        json!({"orderNo": "ORD001", "items": [{"skuId": 1001, "qty": 5}, {"skuId": 1002, "qty": 1}]}),
    )
    .await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["code"], "IDEMPOTENCY_CONFLICT");
    // Same order, none of its lines: a conflict as well, nothing held on the other SKU.
    app.stock_in(SkuId(1003), WarehouseId(1), 10).await;
    let (status, conflict) =
        reserve(&app, json!({"orderNo": "ORD001", "skuId": 1003, "qty": 1})).await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["code"], "IDEMPOTENCY_CONFLICT");
    let (_, other) = app.get("/inventory/1003").await;
    assert_eq!(other["data"]["availableQty"], 10, "{other}");

    let audits = app
        .assert_invariants(&[key, SkuKey::new(WarehouseId(1), SkuId(1003))])
        .await;
    assert_eq!(audits[0].db_available, Some(95));
    assert_eq!(audits[0].lines_reserved, 5);
    assert_eq!(audits[0].ledger_rows, 2, "inbound + one reserve");
}

#[actix_web::test]
async fn multi_line_orders_are_all_or_nothing_and_duplicate_lines_are_summed() {
    let app = spawn_app().await;
    let a = SkuKey::new(WarehouseId(1), SkuId(11));
    let b = SkuKey::new(WarehouseId(1), SkuId(12));
    let c = SkuKey::new(WarehouseId(2), SkuId(11));
    app.stock_in(SkuId(11), WarehouseId(1), 10).await;
    app.stock_in(SkuId(12), WarehouseId(1), 3).await;
    app.stock_in(SkuId(11), WarehouseId(2), 5).await;

    // Line b is short: nothing is held anywhere.
    let (status, body) = reserve(
        &app,
        json!({"orderNo": "M1", "items": [
            {"skuId": 11, "warehouseId": 1, "qty": 2},
            {"skuId": 12, "warehouseId": 1, "qty": 4},
            {"skuId": 11, "warehouseId": 2, "qty": 1}]}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "INSUFFICIENT_STOCK");
    assert_eq!(body["data"]["failedSkuId"], 12);
    assert_eq!(body["data"]["availableQty"], 3);
    assert_eq!(body["data"]["requestedQty"], 4);
    for key in [a, b, c] {
        let levels = app.redis.stock(key).await.unwrap().unwrap();
        assert_eq!(levels.reserved, 0, "{key} held something");
    }

    // Two lines of the same position are summed before the check: 6 + 5 > 10.
    let (status, body) = reserve(
        &app,
        json!({"orderNo": "M2", "items": [{"skuId": 11, "qty": 6}, {"skuId": 11, "qty": 5}]}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["data"]["requestedQty"], 11);
    let (status, body) = reserve(
        &app,
        json!({"orderNo": "M3", "items": [
            {"skuId": 11, "qty": 6}, {"skuId": 11, "qty": 4}, {"skuId": 12, "qty": 3},
            {"skuId": 11, "warehouseId": 2, "qty": 5}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["items"].as_array().unwrap().len(), 3);

    let (_, lines) = app.get("/inventory/reservations?orderNo=M3").await;
    let lines = lines["data"].as_array().unwrap().clone();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["qty"], 10);
    let audits = app.assert_invariants(&[a, b, c]).await;
    assert!(audits.iter().all(|a| a.db_available == Some(0)));
}

#[actix_web::test]
async fn confirm_and_release_follow_the_line_states() {
    let app = spawn_app().await;
    let key = SkuKey::new(WarehouseId(1), SkuId(21));
    app.stock_in(SkuId(21), WarehouseId(1), 10).await;
    for order in ["C1", "R1", "C2"] {
        let (status, body) = reserve(&app, json!({"orderNo": order, "skuId": 21, "qty": 2})).await;
        assert_eq!(status, 200, "{body}");
    }

    // Confirm, then repeat: exists.
    let (status, body) = app.post("/inventory/reservations/confirm?orderNo=C1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "CONFIRMED");
    assert_eq!(body["data"]["existed"], false);
    let (status, body) = app.post("/inventory/reservations/confirm?orderNo=C1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["existed"], true);
    // A confirmed line is never released.
    let (status, body) = app.post("/inventory/reservations/release?orderNo=C1").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "INVALID_RESERVATION_STATUS");

    // Release with a reason, repeat; a released line is never confirmed.
    let (status, body) = app
        .post("/inventory/reservations/release?orderNo=R1&reason=%E6%89%8B%E5%8A%A8%E9%87%8A%E6%94%BE")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "RELEASED");
    let (status, body) = app.post("/inventory/reservations/release?orderNo=R1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["existed"], true);
    let (status, body) = app.post("/inventory/reservations/confirm?orderNo=R1").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "INVALID_RESERVATION_STATUS");

    // Unknown orders.
    let (status, body) = app
        .post("/inventory/reservations/confirm?orderNo=NOPE")
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "RESERVATION_NOT_FOUND");

    let (_, listed) = app.get("/inventory/reservations?orderNo=R1").await;
    assert_eq!(listed["data"][0]["status"], "RELEASED");
    assert_eq!(listed["data"][0]["statusDesc"], "已释放");
    assert_eq!(listed["data"][0]["expired"], false);

    let audits = app.assert_invariants(&[key]).await;
    let audit = &audits[0];
    // 10 in; C1 sold 2; R1 back; C2 held 2.
    assert_eq!(audit.db_available, Some(6));
    assert_eq!(audit.db_reserved, Some(2));
    assert_eq!(audit.lines_confirmed, 2);
    let mut conn = app.db_conn().await;
    let ledger = inventory::store::models::LedgerEntry::for_position(&mut conn, key)
        .await
        .unwrap();
    let release = ledger
        .iter()
        .find(|e| e.reason == "RELEASE")
        .expect("release row");
    assert_eq!(release.remark.as_deref(), Some("手动释放"));
    assert_eq!((release.delta_available, release.delta_reserved), (2, -2));
    let confirm = ledger
        .iter()
        .find(|e| e.reason == "CONFIRM")
        .expect("confirm row");
    assert_eq!((confirm.delta_available, confirm.delta_reserved), (0, -2));
}

#[actix_web::test]
async fn confirm_racing_release_has_exactly_one_winner() {
    let app = spawn_app().await;
    let key = SkuKey::new(WarehouseId(1), SkuId(31));
    app.stock_in(SkuId(31), WarehouseId(1), 1000).await;
    let rounds = 60;
    let mut confirmed = 0;
    let mut released = 0;
    for n in 0..rounds {
        let order = format!("RACE-{n}");
        let (status, _) = reserve(&app, json!({"orderNo": order, "skuId": 31, "qty": 3})).await;
        assert_eq!(status, 200);
        let confirm_path = format!("/inventory/reservations/confirm?orderNo={order}");
        let release_path = format!("/inventory/reservations/release?orderNo={order}");
        let confirm = app.post(&confirm_path);
        let release = app.post(&release_path);
        let ((cs, cb), (rs, rb)) = tokio::join!(confirm, release);
        match (cs, rs) {
            (200, 409) => {
                assert_eq!(rb["code"], "INVALID_RESERVATION_STATUS");
                confirmed += 1;
            }
            (409, 200) => {
                assert_eq!(cb["code"], "INVALID_RESERVATION_STATUS");
                released += 1;
            }
            other => panic!("both or neither won: {other:?} {cb} {rb}"),
        }
    }
    assert_eq!(confirmed + released, rounds);
    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].lines_confirmed, 3 * confirmed);
    assert_eq!(audits[0].db_reserved, Some(0));
    assert_eq!(audits[0].db_available, Some(1000 - 3 * confirmed));
}

#[actix_web::test]
async fn a_release_before_the_reservation_leaves_a_tombstone() {
    let app = spawn_app().await;
    let key = SkuKey::new(WarehouseId(1), SkuId(41));
    app.stock_in(SkuId(41), WarehouseId(1), 5).await;
    let (status, body) = app
        .post("/inventory/reservations/release?orderNo=LATE-1&reason=cancelled")
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = reserve(&app, json!({"orderNo": "LATE-1", "skuId": 41, "qty": 2})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "INVALID_RESERVATION_STATUS");
    assert_eq!(body["data"]["status"], "FAILED");
    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].db_available, Some(5));
    assert_eq!(audits[0].db_reserved, Some(0));
}

#[actix_web::test]
async fn reservations_are_answered_from_redis_before_the_journal_drains() {
    let app = spawn_app().await;
    app.stock_in(SkuId(51), WarehouseId(1), 5).await;
    app.drain_journal().await;
    app.state.persistence.send(StopPersistence).await.unwrap();

    let (status, body) = reserve(&app, json!({"orderNo": "EARLY", "skuId": 51, "qty": 2})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.get("/inventory/reservations?orderNo=EARLY").await;
    assert_eq!(status, 200, "{body}");
    let line = &body["data"][0];
    assert_eq!(line["status"], "RESERVED");
    assert_eq!(line["qty"], 2);
    assert!(line["id"].is_null(), "not in the DB yet: {line}");
    let (status, body) = app
        .post("/inventory/reservations/confirm?orderNo=EARLY")
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = app.get("/inventory/reservations?orderNo=EARLY").await;
    assert_eq!(body["data"][0]["status"], "CONFIRMED");

    let (status, body) = app.get("/inventory/reservations?orderNo=NEVER").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"], json!([]));
}

#[actix_web::test]
async fn bad_reservation_requests_change_nothing() {
    let app = spawn_app().await;
    let key = SkuKey::new(WarehouseId(1), SkuId(61));
    app.stock_in(SkuId(61), WarehouseId(1), 50).await;
    app.drain_journal().await;
    let before = app.audit(key).await;
    let many: Vec<Value> = (1..=101).map(|s| json!({"skuId": s, "qty": 1})).collect();
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"skuId": 61, "qty": 1}), 400, "INVALID_JSON"),
        (
            json!({"orderNo": "B1", "skuId": 61, "qty": 0}),
            400,
            "QUANTITY_OUT_OF_RANGE",
        ),
        (
            json!({"orderNo": "B1", "skuId": 61, "qty": -1}),
            400,
            "QUANTITY_OUT_OF_RANGE",
        ),
        (
            json!({"orderNo": "B1", "skuId": 61, "qty": 100001}),
            400,
            "QUANTITY_OUT_OF_RANGE",
        ),
        (
            json!({"orderNo": "B1", "skuId": 0, "qty": 1}),
            400,
            "INVALID_PARAMETER",
        ),
        (
            json!({"orderNo": "B1", "skuId": 61, "warehouseId": -1, "qty": 1}),
            400,
            "INVALID_PARAMETER",
        ),
        (
            json!({"orderNo": "B1", "skuId": 61}),
            400,
            "MISSING_PARAMETER",
        ),
        (
            json!({"orderNo": "B1", "items": []}),
            400,
            "INVALID_PARAMETER",
        ),
        (
            json!({"orderNo": "B1", "items": many}),
            400,
            "INVALID_PARAMETER",
        ),
        (
            json!({"orderNo": "B1", "skuId": 61, "qty": 1, "items": [{"skuId": 61, "qty": 1}]}),
            400,
            "INVALID_PARAMETER",
        ),
        (
            json!({"orderNo": "B{1}", "skuId": 61, "qty": 1}),
            400,
            "INVALID_PARAMETER",
        ),
        (
            json!({"orderNo": "", "skuId": 61, "qty": 1}),
            400,
            "INVALID_PARAMETER",
        ),
        (
            json!({"orderNo": "x".repeat(65), "skuId": 61, "qty": 1}),
            400,
            "INVALID_PARAMETER",
        ),
        (
            json!({"orderNo": "B1", "skuId": 61, "qty": 1, "price": 3}),
            400,
            "INVALID_JSON",
        ),
        (
            json!({"orderNo": "B1", "skuId": 62, "qty": 1}),
            404,
            "INVENTORY_NOT_FOUND",
        ),
    ];
    for (body, status, code) in cases {
        let (got_status, got) = reserve(&app, body.clone()).await;
        assert_eq!(
            (got_status, got["code"].as_str()),
            (status, Some(code)),
            "{body}: {got}"
        );
    }
    for path in [
        "/inventory/reservations/confirm",
        "/inventory/reservations/release",
        "/inventory/reservations/confirm?orderNo=",
    ] {
        let (status, body) = app.post(path).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("MISSING_PARAMETER")),
            "{path}: {body}"
        );
    }
    let (status, body) = app.get("/inventory/reservations").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("MISSING_PARAMETER")),
        "{body}"
    );
    let (status, body) = app
        .post(&format!(
            "/inventory/reservations/release?orderNo=B1&reason={}",
            "r".repeat(256)
        ))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("INVALID_PARAMETER")),
        "{body}"
    );

    app.drain_journal().await;
    assert_eq!(app.audit(key).await, before);
    assert!(!app.redis.has_tombstone("B1").await.unwrap());
}

#[actix_web::test]
async fn a_full_shard_queue_answers_503_and_sells_nothing_twice() {
    let app = spawn_app_with(&[
        ("engine.shards", 1.into()),
        ("engine.mailbox_capacity", 1.into()),
        ("engine.max_batch", 1.into()),
    ])
    .await;
    let key = SkuKey::new(WarehouseId(1), SkuId(71));
    app.stock_in(SkuId(71), WarehouseId(1), 1000).await;
    let mut tasks = Vec::new();
    for n in 0..300 {
        let client = app.client.clone();
        let url = app.url("/inventory/reserve");
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"orderNo": format!("Q-{n}"), "skuId": 71, "qty": 1}))
                .send()
                .await
                .expect("sent");
            let retry_after = r.headers().get("retry-after").is_some();
            let status = r.status().as_u16();
            let body: Value = r.json().await.expect("json");
            (status, retry_after, body)
        }));
    }
    let mut held = 0;
    let mut busy = 0;
    for task in tasks {
        let (status, retry_after, body) = task.await.unwrap();
        match status {
            200 => held += 1,
            503 => {
                assert_eq!(body["code"], "SERVICE_OVERLOADED", "{body}");
                assert!(retry_after);
                busy += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(held + busy, 300);
    assert!(held > 0 && busy > 0, "held {held}, busy {busy}");
    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].lines_reserved, held);
}
