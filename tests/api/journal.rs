//! The journal: every change reaches the DB, also across a restart with entries pending.

use inventory::domain::SkuKey;
use inventory::domain::{SkuId, WarehouseId};
use inventory::engine::persistence::{StopPersistence, PERSIST_GROUP};
use serde_json::json;

use crate::helpers::{spawn_app_with, start};

#[actix_web::test]
async fn entries_left_unpersisted_by_a_stopped_instance_are_persisted_after_restart() {
    let mut app = spawn_app_with(&[("inventory.adjust_persist_wait_ms", 50.into())]).await;
    let key = SkuKey::new(WarehouseId(1), SkuId(42));
    app.stock_in(SkuId(42), WarehouseId(1), 10).await;
    app.drain_journal().await;

    // The persistence loop stops: Redis keeps deciding, the DB falls behind.
    app.state.persistence.send(StopPersistence).await.unwrap();
    for _ in 0..5 {
        let (status, body) = app
            .post_json("/inventory/42/stock", &json!({"delta": -1}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["persisted"], false);
    }
    let lag = app.redis.journal_lag(PERSIST_GROUP).await.unwrap();
    assert_eq!(lag.not_persisted(), 5, "{lag:?}");
    let behind = app.audit(key).await;
    assert_eq!(behind.db_available, Some(10));
    assert_eq!(behind.redis.unwrap().available, 5);
    app.stop().await;

    // A new instance picks the entries up; nothing is applied twice.
    let restarted = start(app.settings.clone(), app.db_name.clone()).await;
    let audits = restarted.assert_invariants(&[key]).await;
    assert_eq!(audits[0].db_available, Some(5));
    assert_eq!(audits[0].ledger_rows, 6);
}

#[actix_web::test]
async fn replaying_entries_that_were_already_written_changes_nothing() {
    let app = spawn_app_with(&[]).await;
    let key = SkuKey::new(WarehouseId(2), SkuId(43));
    app.stock_in(SkuId(43), WarehouseId(2), 10).await;
    let (status, _) = app
        .post_json("/inventory/43/stock?warehouseId=2", &json!({"delta": -4}))
        .await;
    assert_eq!(status, 200);
    app.drain_journal().await;

    // Write every entry still in the stream to the DB again, as a crash between the DB
    // commit and the acknowledgement would.
    let keys = app.redis.keys();
    let group = keys.group(key);
    let entries: redis::streams::StreamRangeReply = app
        .redis_cmd(
            redis::cmd("XRANGE")
                .arg(keys.journal(group))
                .arg("-")
                .arg("+"),
        )
        .await;
    assert!(!entries.ids.is_empty());
    let parsed: Vec<_> = entries
        .ids
        .iter()
        .map(|e| {
            let payload: String = e.get("e").unwrap();
            (
                inventory::store::journal::txn_prefix(group, &e.id),
                inventory::store::journal::parse_entry(&e.id, &payload).unwrap(),
            )
        })
        .collect();
    let writes = inventory::store::journal::plan_batch(&parsed);
    let mut conn = app.db_conn().await;
    inventory::store::journal::persist_batch(&mut conn, &writes)
        .await
        .unwrap();

    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].db_available, Some(6));
    assert_eq!(audits[0].ledger_rows, 2);
}

#[actix_web::test]
async fn a_batch_larger_than_one_statement_allows_is_written_in_chunks() {
    let app = spawn_app_with(&[]).await;
    // One journal entry with 5,000 events (a shard batch can carry thousands of lines),
    // beyond MySQL's 65,535 placeholders if written as one statement.
    let events: Vec<String> = (0..5_000)
        .map(|n| {
            format!(
                "RES 1 {} -1 1 100 1 {} 1 1700000000000 0 RESERVE BIG-{n}  ",
                90_000 + n % 50,
                n + 1
            )
        })
        .collect();
    let entry = ("1-0".to_string(), events.join("\n"));
    let parsed = vec![(
        entry.0.clone(),
        inventory::store::journal::parse_entry(&entry.0, &entry.1).unwrap(),
    )];
    let writes = inventory::store::journal::plan_batch(&parsed);
    let mut conn = app.db_conn().await;
    inventory::store::journal::persist_batch(&mut conn, &writes)
        .await
        .expect("a large batch is written");
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use inventory::store::schema::{t_inventory_reservation, t_inventory_txn};
    let lines: i64 = t_inventory_reservation::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    let ledger: i64 = t_inventory_txn::table
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!((lines, ledger), (5_000, 5_000));
}

#[actix_web::test]
async fn any_text_reaches_the_ledger_as_it_was_sent() {
    let app = spawn_app_with(&[]).await;
    let remark = "it's a \\ \"quote\" -- ; DROP TABLE t_inventory; 库存 \u{1F600}";
    let (status, body) = app
        .post_json(
            "/inventory/44/stock",
            &json!({"delta": 5, "reason": "INBOUND", "remark": remark, "requestId": "R'1"}),
        )
        .await;
    if status == 400 {
        // The requestId may be refused by validation; the remark still must get through.
        let (status, body) = app
            .post_json(
                "/inventory/44/stock",
                &json!({"delta": 5, "reason": "INBOUND", "remark": remark}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    } else {
        assert_eq!(status, 200, "{body}");
    }
    let key = SkuKey::new(WarehouseId(1), SkuId(44));
    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].db_available, Some(5));
    let mut conn = app.db_conn().await;
    let rows = inventory::store::models::LedgerEntry::for_position(&mut conn, key)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].remark.as_deref(), Some(remark));
}
