//! Partial confirm (`POST /inventory/reservations/confirm` with `items`) on the real Redis
//! and DB: the units that ship are sold, the rest go back to sale, the ledger says so, and
//! every invariant holds; bad input changes nothing.

use inventory::domain::{SkuId, SkuKey, WarehouseId};
use inventory::store::models::LedgerEntry;
use serde_json::{json, Value};

use crate::helpers::spawn_app;

const CONFIRM: &str = "/inventory/reservations/confirm?orderNo=";

fn sold(body: &Value) -> Vec<(i64, i64)> {
    body["data"]["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    (
                        i["skuId"].as_i64().unwrap_or(0),
                        i["qty"].as_i64().unwrap_or(-1),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[actix_web::test]
async fn a_partial_confirm_sells_what_ships_and_gives_the_rest_back() {
    let app = spawn_app().await;
    let (a, b) = (4501, 4502);
    let ka = SkuKey::new(WarehouseId(1), SkuId(a));
    let kb = SkuKey::new(WarehouseId(1), SkuId(b));
    app.stock_in(SkuId(a), WarehouseId(1), 10).await;
    app.stock_in(SkuId(b), WarehouseId(1), 5).await;
    let (status, body) = app
        .post_json(
            "/inventory/reserve",
            &json!({"orderNo": "PC-1", "items": [{"skuId": a, "qty": 4}, {"skuId": b, "qty": 2}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // 3 of 4 units of a ship; b was removed after payment (not named: 0 ship).
    let partial = json!({"items": [{"skuId": a, "qty": 3}]});
    let (status, body) = app.post_json(&format!("{CONFIRM}PC-1"), &partial).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "CONFIRMED");
    assert_eq!(body["data"]["existed"], false);
    assert_eq!(sold(&body), vec![(a, 3), (b, 0)]);

    // The same body again: existed. Other units: a conflict. No body: existed, the units
    // sold.
    let (status, body) = app.post_json(&format!("{CONFIRM}PC-1"), &partial).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["existed"], true);
    let (status, body) = app
        .post_json(
            &format!("{CONFIRM}PC-1"),
            &json!({"items": [{"skuId": a, "qty": 4}]}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "IDEMPOTENCY_CONFLICT");
    let (status, body) = app.post(&format!("{CONFIRM}PC-1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["existed"], true);
    assert_eq!(sold(&body), vec![(a, 3), (b, 0)]);
    // A confirmed order is not released.
    let (status, body) = app
        .post("/inventory/reservations/release?orderNo=PC-1")
        .await;
    assert_eq!(status, 409, "{body}");

    // The lines: held 4 and 2, sold 3 and 0; live and, once the journal drained, in the DB.
    for source in ["live", "db"] {
        if source == "db" {
            app.drain_journal().await;
        }
        let (status, body) = app
            .get(&format!(
                "/inventory/reservations?orderNo=PC-1&source={source}"
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        let lines: Vec<(i64, i64, i64, String)> = body["data"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|x| {
                        (
                            x["skuId"].as_i64().unwrap_or(0),
                            x["qty"].as_i64().unwrap_or(0),
                            x["confirmedQty"].as_i64().unwrap_or(-1),
                            x["status"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            lines,
            vec![
                (a, 4, 3, "CONFIRMED".to_string()),
                (b, 2, 0, "CONFIRMED".to_string())
            ],
            "{source}"
        );
    }

    // Stock: a sold 3 (7 available), b sold none (5 available); invariants hold.
    let audits = app.assert_invariants(&[ka, kb]).await;
    assert_eq!(audits[0].db_available, Some(7));
    assert_eq!(audits[0].lines_confirmed, 3);
    assert_eq!(audits[0].redis.map(|r| r.confirmed), Some(3));
    assert_eq!(audits[1].db_available, Some(5));
    assert_eq!(audits[1].lines_confirmed, 0);
    // The ledger: the unit given back is a RELEASE with remark PARTIAL_CONFIRM.
    let mut conn = app.db_conn().await;
    let rows = LedgerEntry::for_position(&mut conn, ka)
        .await
        .expect("ledger");
    let summary: Vec<(String, i32, i32, Option<String>)> = rows
        .iter()
        .map(|r| {
            (
                r.reason.clone(),
                r.delta_available,
                r.delta_reserved,
                r.remark.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("INBOUND".to_string(), 10, 0, None),
            ("RESERVE".to_string(), -4, 4, None),
            (
                "RELEASE".to_string(),
                1,
                -1,
                Some("PARTIAL_CONFIRM".to_string())
            ),
            ("CONFIRM".to_string(), 0, -3, None),
        ]
    );
    let (status, report) = app
        .post("/inventory/reconcile?repair=false&full=true")
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["data"]["differences"], json!([]), "{report}");

    // Redis loses everything; the rebuild from the DB keeps the units sold.
    let keys: Vec<String> = app
        .redis_cmd(redis::cmd("KEYS").arg(format!("{}*", app.redis.keys().prefix())))
        .await;
    let _: i64 = app.redis_cmd(redis::cmd("DEL").arg(&keys)).await;
    let (status, report) = app.post("/inventory/reconcile?repair=true").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["data"]["redisRebuilt"], true, "{report}");
    let (_, lines) = app
        .get("/inventory/reservations?orderNo=PC-1&source=live")
        .await;
    assert_eq!(lines["data"][0]["confirmedQty"], 3, "{lines}");
    assert_eq!(
        lines["data"][0]["id"],
        Value::Null,
        "answered by Redis: {lines}"
    );
    let (status, body) = app.post_json(&format!("{CONFIRM}PC-1"), &partial).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["existed"], true,
        "the repeat is still recognised"
    );
    let audits = app.assert_invariants(&[ka, kb]).await;
    assert_eq!(audits[0].redis.map(|r| r.confirmed), Some(3));
}

#[actix_web::test]
async fn bad_partial_confirms_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let sku = 4510;
    let key = SkuKey::new(WarehouseId(1), SkuId(sku));
    app.stock_in(SkuId(sku), WarehouseId(1), 10).await;
    let (status, body) = app
        .post_json(
            "/inventory/reserve",
            &json!({"orderNo": "PC-2", "skuId": sku, "qty": 2}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let url = format!("{CONFIRM}PC-2");
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"items": [{"skuId": sku, "qty": 3}]}),
            400,
            "QUANTITY_OUT_OF_RANGE",
        ),
        (
            json!({"items": [{"skuId": sku, "qty": -1}]}),
            400,
            "QUANTITY_OUT_OF_RANGE",
        ),
        (
            json!({"items": [{"skuId": sku, "qty": 0}]}),
            400,
            "INVALID_PARAMETER",
        ),
        (
            json!({"items": [{"skuId": 9999, "qty": 1}]}),
            400,
            "INVALID_PARAMETER",
        ),
        (
            json!({"items": [{"skuId": sku, "warehouseId": 2, "qty": 1}]}),
            400,
            "INVALID_PARAMETER",
        ),
        (json!({"items": []}), 400, "INVALID_PARAMETER"),
        (
            json!({"items": [{"skuId": sku, "qty": 1}, {"skuId": sku, "qty": 1}]}),
            400,
            "INVALID_PARAMETER",
        ),
        (
            json!({"items": [{"skuId": sku, "qty": 1, "x": 1}]}),
            400,
            "INVALID_JSON",
        ),
        (json!({"lines": []}), 400, "INVALID_JSON"),
    ];
    for (body, status, code) in cases {
        let (got, answer) = app.post_json(&url, &body).await;
        assert_eq!(
            (got, answer["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
    }
    let (status, answer) = app
        .post_raw(&url, "text/plain", r#"{"items":[{"skuId":4510,"qty":1}]}"#)
        .await;
    assert_eq!(status, 415, "{answer}");
    let (status, answer) = app
        .post_json(
            &format!("{CONFIRM}PC-NONE"),
            &json!({"items": [{"skuId": sku, "qty": 1}]}),
        )
        .await;
    assert_eq!(status, 404, "{answer}");
    // Nothing changed: still held, then a release and a partial confirm of it is refused.
    let (_, lines) = app.get("/inventory/reservations?orderNo=PC-2").await;
    assert_eq!(lines["data"][0]["status"], "RESERVED", "{lines}");
    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].lines_reserved, 2);
    let (status, body) = app
        .post("/inventory/reservations/release?orderNo=PC-2")
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .post_json(&url, &json!({"items": [{"skuId": sku, "qty": 1}]}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "INVALID_RESERVATION_STATUS");
    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].db_available, Some(10));
    assert_eq!(audits[0].lines_confirmed, 0);
}

#[actix_web::test]
async fn a_routed_split_is_confirmed_partly_per_warehouse() {
    let app = spawn_app().await;
    let sku = 4520;
    for w in [81, 82] {
        let (status, body) = app
            .post_json(
                "/warehouses",
                &json!({"id": w, "code": format!("P{w}"), "name": format!("P {w}"), "priority": w}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        app.stock_in(SkuId(sku), WarehouseId(w), 2).await;
    }
    let (status, body) = app
        .post_json(
            "/inventory/reserve",
            &json!({"orderNo": "PC-R", "items": [{"skuId": sku, "qty": 3}],
                    "routing": {"strategy": "PRIORITY", "allowSplit": true}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // The SKU is held in two warehouses: an item without warehouseId is ambiguous.
    let (status, body) = app
        .post_json(
            &format!("{CONFIRM}PC-R"),
            &json!({"items": [{"skuId": sku, "qty": 1}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app
        .post_json(
            &format!("{CONFIRM}PC-R"),
            &json!({"items": [{"skuId": sku, "warehouseId": 81, "qty": 1},
                              {"skuId": sku, "warehouseId": 82, "qty": 1}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let keys = [81, 82].map(|w| SkuKey::new(WarehouseId(w), SkuId(sku)));
    let audits = app.assert_invariants(&keys).await;
    let after: Vec<(Option<i64>, i64)> = audits
        .iter()
        .map(|a| (a.db_available, a.lines_confirmed))
        .collect();
    assert_eq!(after, vec![(Some(1), 1), (Some(1), 1)], "81 gave 1 back");
}
