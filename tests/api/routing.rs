//! WORK IN PROGRESS (branch wip/routing): `lua/route.lua` through `RedisStore::route`, on
//! the real Redis and DB: the choice of warehouse is atomic with the hold.

use inventory::domain::{SkuId, SkuKey, WarehouseId};
use inventory::store::reservations::ReserveParams;
use inventory::store::routing::{RoutePlan, RouteReply};

use crate::helpers::{spawn_app, TestApp};

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
            .filter(|r| **r == RouteReply::Insufficient)
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
        RouteReply::Insufficient,
        "1 + 2 left, no warehouse has 2"
    );
    let audits = app.assert_invariants(&[a, b]).await;
    assert_eq!(audits[0].lines_reserved, 3);
    assert_eq!(audits[1].lines_reserved, 2);
}
