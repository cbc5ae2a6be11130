//! Warehouse routing on the real Redis and DB: `lua/route.lua` through `RedisStore::route`
//! (the choice of warehouse is atomic with the hold), then `POST /inventory/reserve` with
//! `routing` end to end.

use inventory::domain::{SkuId, SkuKey, WarehouseId};
use inventory::store::reservations::ReserveParams;
use inventory::store::routing::{RoutePlan, RouteReply};

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, TestApp};

fn params(app: &TestApp) -> ReserveParams {
    ReserveParams {
        now_ms: inventory::engine::now_ms(),
        hold_ms: app.settings.hold_ms(),
        max_journal_entries: app.settings.journal.max_pending_entries,
    }
}

#[actix_web::test]
async fn racing_orders_for_the_last_units_over_three_warehouses_get_one_unit_each() {
    let app = spawn_app().await;
    let keys: Vec<SkuKey> = [1, 2, 3]
        .iter()
        .map(|w| SkuKey::new(WarehouseId(*w), SkuId(4401)))
        .collect();
    for (key, units) in keys.iter().zip([3, 3, 4]) {
        app.stock_in(SkuId(key.sku_id), WarehouseId(key.warehouse_id), units)
            .await;
    }
    let orders = (0..50).map(|i| {
        let app = &app;
        let keys = keys.clone();
        async move {
            app.redis
                .route(
                    &format!("RT-{i}"),
                    "t",
                    &[RoutePlan::WholeLine(vec![(1, keys)])],
                    params(app),
                )
                .await
                .expect("route")
                .0
        }
    });
    let replies = futures_util::future::join_all(orders).await;
    let held: Vec<&RouteReply> = replies
        .iter()
        .filter(|r| matches!(r, RouteReply::Reserved { .. }))
        .collect();
    assert_eq!(held.len(), 10, "{replies:?}");
    assert_eq!(
        replies
            .iter()
            .filter(|r| matches!(r, RouteReply::Insufficient { .. }))
            .count(),
        40
    );
    let audits = app.assert_invariants(&keys).await;
    let per_warehouse: Vec<i64> = audits.iter().map(|a| a.lines_reserved).collect();
    assert_eq!(per_warehouse, vec![3, 3, 4]);
}

#[actix_web::test]
async fn a_split_is_taken_only_when_no_single_warehouse_has_the_line_and_a_repeat_answers_the_same()
{
    let app = spawn_app().await;
    let a = SkuKey::new(WarehouseId(1), SkuId(4402));
    let b = SkuKey::new(WarehouseId(2), SkuId(4402));
    app.stock_in(SkuId(4402), WarehouseId(1), 3).await;
    app.stock_in(SkuId(4402), WarehouseId(2), 4).await;
    let plans = [
        RoutePlan::WholeLine(vec![(5, vec![a, b])]),
        RoutePlan::Split(vec![(5, vec![a, b])]),
    ];
    let (reply, _) = app
        .redis
        .route("RT-SPLIT", "t", &plans, params(&app))
        .await
        .expect("route");
    let RouteReply::Reserved { plan, lines, .. } = &reply else {
        panic!("{reply:?}")
    };
    assert_eq!(*plan, 1, "the split plan");
    assert_eq!(lines, &vec![(a, 3), (b, 2)]);
    // The same order again: the same lines; other quantities: a conflict.
    let (again, _) = app
        .redis
        .route("RT-SPLIT", "t", &plans, params(&app))
        .await
        .expect("route");
    assert!(
        matches!(&again, RouteReply::Exists { lines: l, .. } if l == lines),
        "{again:?}"
    );
    let (other, _) = app
        .redis
        .route(
            "RT-SPLIT",
            "t",
            &[RoutePlan::Split(vec![(4, vec![a, b])])],
            params(&app),
        )
        .await
        .expect("route");
    assert_eq!(other, RouteReply::Conflict);
    // Left: 0 in warehouse 1, 2 in warehouse 2; 3 units are in no single one.
    let (whole, _) = app
        .redis
        .route(
            "RT-WHOLE",
            "t",
            &[RoutePlan::WholeLine(vec![(3, vec![a, b])])],
            params(&app),
        )
        .await
        .expect("route");
    assert_eq!(
        whole,
        RouteReply::Insufficient {
            sku_id: 4402,
            requested: 3,
            offered: 2
        },
        "0 + 2 left, no warehouse has 3"
    );
    let audits = app.assert_invariants(&[a, b]).await;
    assert_eq!(audits[0].lines_reserved, 3);
    assert_eq!(audits[1].lines_reserved, 2);
}

async fn warehouse(app: &TestApp, id: i64, priority: i64, region: &str) {
    let (status, body) = app
        .post_json(
            "/warehouses",
            &json!({"id": id, "code": format!("W{id}"), "name": format!("Warehouse {id}"),
                    "region": region, "priority": priority}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// (warehouseId, qty) of each line of a reserve answer, as given.
fn placed(body: &Value) -> Vec<(i64, i64, i64)> {
    body["data"]["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    (
                        i["skuId"].as_i64().unwrap_or(0),
                        i["warehouseId"].as_i64().unwrap_or(0),
                        i["qty"].as_i64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[actix_web::test]
async fn http_routing_priority_most_stock_split_repeat_and_confirm() {
    let app = spawn_app().await;
    let sku = 4410;
    // A lower priority is preferred: 32, then 31, then 33.
    warehouse(&app, 31, 30, "east").await;
    warehouse(&app, 32, 20, "east").await;
    warehouse(&app, 33, 40, "north").await;
    app.stock_in(SkuId(sku), WarehouseId(31), 5).await;
    app.stock_in(SkuId(sku), WarehouseId(32), 2).await;
    app.stock_in(SkuId(sku), WarehouseId(33), 9).await;
    let keys: Vec<SkuKey> = [31, 32, 33]
        .iter()
        .map(|w| SkuKey::new(WarehouseId(*w), SkuId(sku)))
        .collect();

    // PRIORITY, no split: 32 (priority 20) has only 2, so the whole line goes to 31.
    let reserve = |order: &str, qty: i64, routing: Value| json!({"orderNo": order, "items": [{"skuId": sku, "qty": qty}], "routing": routing});
    let (status, body) = app
        .post_json(
            "/inventory/reserve",
            &reserve("RT-P1", 3, json!({"strategy": "PRIORITY"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(placed(&body), vec![(sku, 31, 3)]);
    assert_eq!(body["data"]["existed"], false);
    // A repeat answers the same warehouse, though 32 would now be tried first as well.
    let (status, again) = app
        .post_json(
            "/inventory/reserve",
            &reserve("RT-P1", 3, json!({"strategy": "PRIORITY"})),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["data"]["existed"], true);
    assert_eq!(placed(&again), vec![(sku, 31, 3)]);
    // The same orderNo with another quantity is a conflict and changes nothing.
    let (status, conflict) = app
        .post_json(
            "/inventory/reserve",
            &reserve("RT-P1", 4, json!({"strategy": "PRIORITY"})),
        )
        .await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["code"], "IDEMPOTENCY_CONFLICT");

    // MOST_STOCK: 33 has 9.
    let (status, body) = app
        .post_json(
            "/inventory/reserve",
            &reserve("RT-M1", 1, json!({"strategy": "MOST_STOCK"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(placed(&body), vec![(sku, 33, 1)]);

    // Region east, 4 units: 32 has 2, 31 has 2 left. Without a split: refused, with
    // what the best warehouse offered; with a split: 2 + 2 in priority order.
    let (status, short) = app
        .post_json(
            "/inventory/reserve",
            &reserve(
                "RT-S1",
                4,
                json!({"strategy": "PRIORITY", "region": "east", "allowSplit": false}),
            ),
        )
        .await;
    assert_eq!(status, 409, "{short}");
    assert_eq!(short["code"], "INSUFFICIENT_STOCK");
    assert_eq!(short["data"]["failedSkuId"], sku);
    assert_eq!(short["data"]["availableQty"], 2);
    assert_eq!(short["data"]["failedWarehouseId"], Value::Null);
    let (status, split) = app
        .post_json(
            "/inventory/reserve",
            &reserve(
                "RT-S2",
                4,
                json!({"strategy": "PRIORITY", "region": "east", "allowSplit": true}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{split}");
    assert_eq!(placed(&split), vec![(sku, 32, 2), (sku, 31, 2)]);
    // The order lists both lines; confirming it confirms both.
    let (status, confirmed) = app
        .post("/inventory/reservations/confirm?orderNo=RT-S2")
        .await;
    assert_eq!(status, 200, "{confirmed}");
    assert_eq!(confirmed["data"]["items"].as_array().map(Vec::len), Some(2));
    let (status, again) = app
        .post_json(
            "/inventory/reserve",
            &reserve(
                "RT-S2",
                4,
                json!({"strategy": "PRIORITY", "region": "east", "allowSplit": true}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["data"]["status"], "CONFIRMED");
    assert_eq!(placed(&again), vec![(sku, 32, 2), (sku, 31, 2)]);

    // Bad routing input is refused and changes nothing.
    for bad in [
        json!({"strategy": "NEAREST"}),
        json!({"strategy": "PRIORITY", "region": "no spaces"}),
        json!({"strategy": "PRIORITY", "other": 1}),
    ] {
        let (status, body) = app
            .post_json("/inventory/reserve", &reserve("RT-BAD", 1, bad.clone()))
            .await;
        assert!(
            status == 400
                && matches!(
                    body["code"].as_str(),
                    Some("INVALID_JSON" | "INVALID_PARAMETER")
                ),
            "{bad}: {status} {body}"
        );
    }
    let (_, bad_lines) = app.get("/inventory/reservations?orderNo=RT-BAD").await;
    assert_eq!(bad_lines["data"], json!([]), "nothing held for RT-BAD");
    // A region nobody stocks: NO_ROUTABLE_WAREHOUSE.
    let (status, none) = app
        .post_json(
            "/inventory/reserve",
            &reserve(
                "RT-N1",
                1,
                json!({"strategy": "PRIORITY", "region": "west"}),
            ),
        )
        .await;
    assert_eq!(status, 409, "{none}");
    assert_eq!(none["code"], "NO_ROUTABLE_WAREHOUSE");

    let audits = app.assert_invariants(&keys).await;
    let available: Vec<Option<i64>> = audits.iter().map(|a| a.db_available).collect();
    assert_eq!(
        available,
        vec![Some(0), Some(0), Some(8)],
        "31: 5-3-2, 32: 2-2, 33: 9-1"
    );
}

#[actix_web::test]
async fn a_disabled_warehouse_is_never_routed_to_and_single_warehouse_first_keeps_orders_whole() {
    let app = spawn_app().await;
    let (a, b) = (4420, 4421);
    warehouse(&app, 41, 1, "east").await;
    warehouse(&app, 42, 2, "east").await;
    warehouse(&app, 43, 3, "east").await;
    // 41 (preferred) has a and b; 42 has only a; 43 has both.
    app.stock_in(SkuId(a), WarehouseId(41), 50).await;
    app.stock_in(SkuId(b), WarehouseId(41), 50).await;
    app.stock_in(SkuId(a), WarehouseId(42), 50).await;
    app.stock_in(SkuId(a), WarehouseId(43), 50).await;
    app.stock_in(SkuId(b), WarehouseId(43), 50).await;
    let order = |no: &str| {
        json!({"orderNo": no, "items": [{"skuId": a, "qty": 1}, {"skuId": b, "qty": 1}],
               "routing": {"strategy": "SINGLE_WAREHOUSE_FIRST"}})
    };
    let (status, body) = app.post_json("/inventory/reserve", &order("RT-D0")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(placed(&body), vec![(a, 41, 1), (b, 41, 1)]);

    let (status, body) = app.post("/warehouses/41/disable").await;
    assert_eq!(status, 200, "{body}");
    // A repeat of an order held in 41 answers what it held, though 41 is disabled now.
    let (status, body) = app.post_json("/inventory/reserve", &order("RT-D0")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["existed"], true);
    assert_eq!(placed(&body), vec![(a, 41, 1), (b, 41, 1)]);
    // 42 is preferred now but lacks b: the whole order goes to 43, never to 41.
    for i in 1..=20 {
        let (status, body) = app
            .post_json("/inventory/reserve", &order(&format!("RT-D{i}")))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(placed(&body), vec![(a, 43, 1), (b, 43, 1)]);
    }
    // PRIORITY places each line on its own: a from 42, b from 43; still never 41.
    let (status, body) = app
        .post_json(
            "/inventory/reserve",
            &json!({"orderNo": "RT-DP", "items": [{"skuId": a, "qty": 1}, {"skuId": b, "qty": 1}],
                    "routing": {"strategy": "PRIORITY"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(placed(&body), vec![(a, 42, 1), (b, 43, 1)]);
    // Only the disabled warehouse has what is asked: refused, though 41 has the units.
    let (status, body) = app
        .post_json(
            "/inventory/reserve",
            &json!({"orderNo": "RT-DX", "items": [{"skuId": b, "qty": 40}],
                    "routing": {"strategy": "MOST_STOCK", "allowSplit": true}}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "INSUFFICIENT_STOCK");
    assert_eq!(body["data"]["availableQty"], 29);
    // A pinned line still goes where it says (the register only steers routing).
    let (status, body) = app
        .post_json(
            "/inventory/reserve",
            &json!({"orderNo": "RT-DPIN", "items": [{"skuId": b, "qty": 1, "warehouseId": 41}],
                    "routing": {"strategy": "PRIORITY"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(placed(&body), vec![(b, 41, 1)]);
    let keys: Vec<SkuKey> = [(41, a), (41, b), (42, a), (43, a), (43, b)]
        .iter()
        .map(|(w, s)| SkuKey::new(WarehouseId(*w), SkuId(*s)))
        .collect();
    let audits = app.assert_invariants(&keys).await;
    let reserved: Vec<i64> = audits.iter().map(|x| x.lines_reserved).collect();
    assert_eq!(reserved, vec![1, 2, 1, 20, 21]);
}

#[actix_web::test]
async fn racing_http_orders_route_the_last_units_once_each() {
    let app = spawn_app_with(&[(
        "inventory.routing.register_refresh_ms",
        toml::Value::Integer(0),
    )])
    .await;
    let sku = 4430;
    for (w, units) in [(51, 3), (52, 3), (53, 4)] {
        warehouse(&app, w, w, "east").await;
        app.stock_in(SkuId(sku), WarehouseId(w), units).await;
    }
    let orders = (0..40).map(|i| {
        let app = &app;
        async move {
            let strategy = ["PRIORITY", "MOST_STOCK", "SINGLE_WAREHOUSE_FIRST"][i % 3];
            app.post_json(
                "/inventory/reserve",
                &json!({"orderNo": format!("RT-R{i}"), "items": [{"skuId": sku, "qty": 1}],
                        "routing": {"strategy": strategy, "allowSplit": i % 2 == 0}}),
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(orders).await;
    let won: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(won.len(), 10, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(s, b)| *s == 200 || b["code"] == "INSUFFICIENT_STOCK"),
        "{answers:?}"
    );
    let keys: Vec<SkuKey> = [51, 52, 53]
        .iter()
        .map(|w| SkuKey::new(WarehouseId(*w), SkuId(sku)))
        .collect();
    let audits = app.assert_invariants(&keys).await;
    let reserved: Vec<i64> = audits.iter().map(|x| x.lines_reserved).collect();
    assert_eq!(reserved, vec![3, 3, 4]);
}

#[actix_web::test]
async fn kafka_orders_are_routed_by_the_configured_strategy() {
    use crate::kafka::{mid, order_created, payment, setup, wait_for, WAIT};
    let s = setup(&[
        (
            "inventory.routing.default_strategy",
            "MOST_STOCK".to_string().into(),
        ),
        ("inventory.routing.default_allow_split", true.into()),
    ])
    .await;
    let sku = 4440;
    warehouse(&s.app, 61, 1, "east").await;
    warehouse(&s.app, 62, 2, "east").await;
    s.app.stock_in(SkuId(sku), WarehouseId(61), 5).await;
    s.app.stock_in(SkuId(sku), WarehouseId(62), 8).await;
    s.app.stock_in(SkuId(sku), WarehouseId(1), 100).await;

    // 10 units, no warehouse named: 62 has the most (8), then 61 (2 of 5). The default
    // warehouse 1 is not in the register, so routing never uses it.
    let id = mid();
    let message = order_created(&id, "RT-K1", &format!(r#"[{{"skuId":{sku},"qty":10}}]"#));
    s.kafka
        .send("ORDER_TOPIC", "ORDER_CREATED", "RT-K1", &message)
        .await;
    let out = s.kafka.collect("INVENTORY_TOPIC", 1, WAIT).await;
    assert_eq!(out[0].headers["tag"], "STOCK_RESERVED");
    let typed: inventory::events::wire::StockReservedEvent =
        serde_json::from_str(out[0].envelope()["payload"].as_str().unwrap_or("")).expect("strict");
    let items: Vec<(i64, i64)> = typed
        .items
        .iter()
        .map(|i| (i.warehouse_id, i.qty))
        .collect();
    assert_eq!(items, vec![(62, 8), (61, 2)]);
    // A redelivery publishes the identical outcome and holds nothing more.
    s.kafka
        .send("ORDER_TOPIC", "ORDER_CREATED", "RT-K1", &message)
        .await;
    let both = s
        .kafka
        .collect_settled("INVENTORY_TOPIC", 2, WAIT, Duration::from_secs(2))
        .await;
    assert_eq!(both.len(), 2, "one outcome per delivery, no more");
    assert_eq!(both[0].envelope(), both[1].envelope());

    // 4 more: 3 are left over the register's warehouses. Refused, naming the SKU.
    let short = order_created(&mid(), "RT-K2", &format!(r#"[{{"skuId":{sku},"qty":4}}]"#));
    s.kafka
        .send("ORDER_TOPIC", "ORDER_CREATED", "RT-K2", &short)
        .await;
    let out = s
        .kafka
        .collect_settled("INVENTORY_TOPIC", 3, WAIT, Duration::from_secs(2))
        .await;
    assert_eq!(out.len(), 3);
    assert_eq!(out[2].headers["tag"], "STOCK_RESERVE_FAILED");
    let failed: inventory::events::wire::StockReserveFailedEvent =
        serde_json::from_str(out[2].envelope()["payload"].as_str().unwrap_or("")).expect("strict");
    assert_eq!(failed.error_code, "INSUFFICIENT_STOCK");
    assert_eq!(failed.failed_sku_id, Some(sku));

    // A line that names its warehouse is not routed: it goes to warehouse 1.
    let pinned = order_created(
        &mid(),
        "RT-K3",
        &format!(r#"[{{"skuId":{sku},"qty":4,"warehouseId":1}}]"#),
    );
    s.kafka
        .send("ORDER_TOPIC", "ORDER_CREATED", "RT-K3", &pinned)
        .await;
    let out = s.kafka.collect("INVENTORY_TOPIC", 4, WAIT).await;
    assert_eq!(out.len(), 4);
    assert_eq!(out[3].headers["tag"], "STOCK_RESERVED");

    // Payment confirms both routed lines.
    s.kafka
        .send(
            "ORDER_TOPIC",
            "PAYMENT_SUCCEEDED",
            "RT-K1",
            &payment(&mid(), "RT-K1"),
        )
        .await;
    wait_for("RT-K1 confirmed", || async {
        let (_, body) = s.app.get("/inventory/reservations?orderNo=RT-K1").await;
        body["data"]
            .as_array()
            .is_some_and(|l| l.len() == 2 && l.iter().all(|x| x["status"] == "CONFIRMED"))
    })
    .await;
    let keys: Vec<SkuKey> = [61, 62, 1]
        .iter()
        .map(|w| SkuKey::new(WarehouseId(*w), SkuId(sku)))
        .collect();
    let audits = s.app.assert_invariants(&keys).await;
    let held: Vec<(i64, i64)> = audits
        .iter()
        .map(|a| (a.lines_reserved, a.lines_confirmed))
        .collect();
    assert_eq!(held, vec![(0, 2), (0, 8), (4, 0)]);
}

#[actix_web::test]
async fn a_pinned_line_is_filled_before_routing_takes_from_its_warehouse() {
    let app = spawn_app().await;
    let sku = 4460;
    warehouse(&app, 71, 1, "east").await;
    warehouse(&app, 72, 2, "east").await;
    app.stock_in(SkuId(sku), WarehouseId(71), 5).await;
    app.stock_in(SkuId(sku), WarehouseId(72), 5).await;
    // 5 pinned to 71 (all it has) and 1 routed: the routed unit must come from 72.
    let (status, body) = app
        .post_json(
            "/inventory/reserve",
            &json!({"orderNo": "RT-PIN", "items": [{"skuId": sku, "qty": 1},
                    {"skuId": sku, "qty": 5, "warehouseId": 71}],
                    "routing": {"strategy": "PRIORITY"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(placed(&body), vec![(sku, 71, 5), (sku, 72, 1)]);
    // The same order pinned elsewhere is another order.
    let (status, body) = app
        .post_json(
            "/inventory/reserve",
            &json!({"orderNo": "RT-PIN", "items": [{"skuId": sku, "qty": 1},
                    {"skuId": sku, "qty": 5, "warehouseId": 72}],
                    "routing": {"strategy": "PRIORITY"}}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "IDEMPOTENCY_CONFLICT");
    let keys = [71, 72].map(|w| SkuKey::new(WarehouseId(w), SkuId(sku)));
    let audits = app.assert_invariants(&keys).await;
    assert_eq!(audits[0].lines_reserved, 5);
    assert_eq!(audits[1].lines_reserved, 1);
}
