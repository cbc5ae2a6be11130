//! The Redis layout (docs/redis-layout.md): what a batch costs in Redis commands, and the
//! upgrade of a deployment that runs layout 1.

use inventory::domain::{SkuId, WarehouseId};
use std::collections::BTreeMap;
use std::time::Duration;

use diesel_async::RunQueryDsl;
use inventory::domain::{LedgerReason, SkuKey};
use inventory::store::redis::{AdjustCommand, AdjustOutcome, RedisStore};
use inventory::store::reservations::{
    OrderLine, ReserveOrder, ReserveParams, ReserveReply, TransitionOp, TransitionOrder,
    TransitionReply,
};
use serde_json::json;

use crate::crash::free_port;
use crate::faults::start_redis;
use crate::helpers::{create_test_database, start, test_settings};

/// Commands Redis ran since the last CONFIG RESETSTAT, by name, without the script calls
/// themselves and the bookkeeping of the test.
async fn inner_calls(redis: &RedisStore) -> BTreeMap<String, u64> {
    let mut conn = redis.connection();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    let mut calls = BTreeMap::new();
    for line in info.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, stats)) = rest.split_once(':') else {
            continue;
        };
        if matches!(name, "evalsha" | "eval" | "info" | "ping")
            || name.starts_with("config")
            || name.starts_with("script")
        {
            continue;
        }
        let n = stats
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        calls.insert(name.to_string(), n);
    }
    calls
}

async fn reset_stats(redis: &RedisStore) {
    let mut conn = redis.connection();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .expect("CONFIG RESETSTAT");
}

fn orders(from: usize, n: usize, key: SkuKey) -> Vec<ReserveOrder> {
    (from..from + n)
        .map(|i| ReserveOrder {
            order_no: format!("CNT-{i}"),
            trace_id: "t".into(),
            lines: vec![OrderLine { key, qty: 1 }],
        })
        .collect()
}

fn transitions(from: usize, n: usize, key: SkuKey, op: TransitionOp) -> Vec<TransitionOrder> {
    (from..from + n)
        .map(|i| TransitionOrder {
            order_no: format!("CNT-{i}"),
            trace_id: "t".into(),
            positions: vec![key],
            op: op.clone(),
        })
        .collect()
}

#[actix_web::test]
async fn a_batch_costs_the_same_redis_commands_for_1_order_and_for_200() {
    // A Redis of its own: INFO commandstats counts every client of the server.
    let dir = std::env::temp_dir().join(format!("inv-redis-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let mut server = start_redis(port, &dir);
    let settings = test_settings(
        "mysql://unused@127.0.0.1:1/unused",
        "cnt:",
        &[("redis.url", format!("redis://127.0.0.1:{port}").into())],
    );
    let redis = RedisStore::connect(&settings.redis).await.expect("connect");
    redis.claim_layout().await.expect("layout");
    let key = SkuKey::new(WarehouseId(1), SkuId(4242));
    let adjusted = redis
        .adjust(&AdjustCommand {
            key,
            delta: 1_000,
            max_available: 1_000_000,
            reason: LedgerReason::Inbound.as_str(),
            trace_id: "t",
            request_id: None,
            remark: "",
            marker_ttl_secs: 3600,
            max_journal_entries: 1_000_000,
            create_if_missing: true,
        })
        .await
        .expect("stock in");
    assert!(matches!(adjusted, AdjustOutcome::Applied { .. }));
    let params = ReserveParams {
        now_ms: inventory::engine::now_ms(),
        hold_ms: 600_000,
        max_journal_entries: 1_000_000,
    };

    let mut costs = Vec::new();
    for (from, n) in [(0, 1), (1, 200)] {
        reset_stats(&redis).await;
        let (replies, levels) = redis
            .reserve_batch(&orders(from, n, key), params)
            .await
            .expect("reserve");
        assert!(replies
            .iter()
            .all(|r| matches!(r, ReserveReply::Reserved { .. })));
        costs.push(inner_calls(&redis).await);
        // The counters after the batch come with the reply (the read cache's input).
        let now = redis.stock(key).await.expect("stock").expect("position");
        assert_eq!(levels.len(), 1, "{levels:?}");
        assert_eq!(
            (
                levels[0].key,
                levels[0].available,
                levels[0].reserved,
                levels[0].seq
            ),
            (key, now.available, now.reserved, now.seq)
        );
    }
    assert_eq!(costs[0], costs[1], "reserve: 1 order vs 200 orders");
    let per_batch: u64 = costs[0].values().sum();
    assert!(per_batch <= 8, "a hot-SKU reserve batch ran {costs:?}");
    println!(
        "LAYOUT reserve batch of 1 and of 200 orders: {per_batch} commands each {:?}",
        costs[0]
    );

    // Repeats cost one read more (their state), still not one per order.
    reset_stats(&redis).await;
    let (repeats, unchanged) = redis
        .reserve_batch(&orders(1, 200, key), params)
        .await
        .expect("repeat");
    assert!(
        unchanged.is_empty(),
        "repeats change no counters: {unchanged:?}"
    );
    assert!(repeats
        .iter()
        .all(|r| matches!(r, ReserveReply::Exists { .. })));
    let repeat_cost: u64 = inner_calls(&redis).await.values().sum();
    assert!(repeat_cost <= per_batch + 1, "repeats ran {repeat_cost}");

    // Confirm and release batches: the same for 1 order and for 100.
    let now = inventory::engine::now_ms();
    let confirm = TransitionOp::Confirm {
        even_if_expired: false,
    };
    let release = TransitionOp::Release {
        reason: LedgerReason::Release,
        remark: "test".into(),
        only_if_expired: false,
        fence: 0,
    };
    for op in [confirm, release] {
        let base = if op.is_confirm() { 1 } else { 101 };
        let mut costs = Vec::new();
        for (from, n) in [(base, 1), (base + 1, 99)] {
            reset_stats(&redis).await;
            let (replies, _) = redis
                .transition_batch(&transitions(from, n, key, op.clone()), now, 1_000_000)
                .await
                .expect("transition");
            assert!(
                replies.iter().all(|r| *r == TransitionReply::Done),
                "{replies:?}"
            );
            costs.push(inner_calls(&redis).await);
        }
        assert_eq!(costs[0], costs[1], "{op:?}: 1 order vs 99 orders");
    }
    let stock = redis.stock(key).await.expect("stock").expect("position");
    assert_eq!(
        (stock.available, stock.reserved, stock.confirmed),
        (1_000 - 201 + 100, 1, 100)
    );
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_web::test]
async fn a_layout_1_deployment_upgrades_with_its_holds_markers_tombstones_and_journal() {
    let (db_name, db_url) = create_test_database().await;
    inventory::store::db::run_migrations(&db_url)
        .await
        .expect("migrations");
    let prefix = format!("t{}:", &db_name["inventory_t_".len()..]);
    let now = inventory::engine::now_ms();
    let expire = now + 30 * 60_000;
    let expire_sql = inventory::domain::ms_to_local(expire).format("%Y-%m-%d %H:%M:%S%.3f");

    // What layout 1 left: 10 units stocked in; OLD-HELD (2 units) persisted; OLD-NEW
    // (1 unit) held in Redis and still in the journal; a tombstone for OLD-CANCELLED; an
    // applied adjustment REQ-1.
    let mut conn = inventory::store::db::connection(
        &inventory::store::db::build_pool(&test_settings(&db_url, &prefix, &[]).database)
            .expect("pool"),
    )
    .await
    .expect("conn");
    for sql in [
        "INSERT INTO t_inventory (sku_id, warehouse_id, available_qty, reserved_qty, version) VALUES (7001, 1, 8, 2, 2)".to_string(),
        "INSERT INTO t_inventory_txn (txn_id, order_no, sku_id, warehouse_id, delta_available, delta_reserved, available_after, reserved_after, reason) VALUES ('1-0-0', 'REQ-1', 7001, 1, 10, 0, 10, 0, 'INBOUND')".to_string(),
        "INSERT INTO t_inventory_txn (txn_id, order_no, sku_id, warehouse_id, delta_available, delta_reserved, available_after, reserved_after, reason) VALUES ('2-0-0', 'OLD-HELD', 7001, 1, -2, 2, 8, 2, 'RESERVE')".to_string(),
        format!("INSERT INTO t_inventory_reservation (order_no, sku_id, warehouse_id, qty, status, expire_at) VALUES ('OLD-HELD', 7001, 1, 2, 'RESERVED', '{expire_sql}')"),
    ] {
        diesel::sql_query(sql).execute(&mut conn).await.expect("seed the DB");
    }
    let client = redis::Client::open(crate::helpers::redis_url()).expect("redis url");
    let mut r = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let p = &prefix;
    let journal = format!("{p}inv:journal");
    let mut pipe = redis::pipe();
    pipe.cmd("HSET")
        .arg(format!("{p}inv:{{1:7001}}"))
        .arg(&["avail", "7", "reserved", "3", "confirmed", "0", "seq", "3"])
        .cmd("SET")
        .arg(format!("{p}inv:{{1:7001}}:r:OLD-HELD"))
        .arg(format!("RESERVED 2 {expire}"))
        .arg("PX")
        .arg(3_600_000)
        .cmd("SET")
        .arg(format!("{p}inv:ord:{{OLD-HELD}}"))
        .arg("1:7001")
        .arg("PX")
        .arg(3_600_000)
        .cmd("SET")
        .arg(format!("{p}inv:{{1:7001}}:r:OLD-NEW"))
        .arg(format!("RESERVED 1 {expire}"))
        .arg("PX")
        .arg(3_600_000)
        .cmd("SET")
        .arg(format!("{p}inv:ord:{{OLD-NEW}}"))
        .arg("1:7001")
        .arg("PX")
        .arg(3_600_000)
        .cmd("ZADD")
        .arg(format!("{p}inv:holds"))
        .arg(expire)
        .arg("OLD-HELD")
        .arg(expire)
        .arg("OLD-NEW")
        .cmd("SET")
        .arg(format!("{p}inv:ord:{{OLD-CANCELLED}}"))
        .arg("!")
        .arg("PX")
        .arg(3_600_000)
        .cmd("HSET")
        .arg(format!("{p}inv:{{1:7001}}:adj:REQ-1"))
        .arg("delta")
        .arg(10)
        .cmd("EXPIRE")
        .arg(format!("{p}inv:{{1:7001}}:adj:REQ-1"))
        .arg(3600)
        .cmd("SET")
        .arg(format!("{p}inv:epoch"))
        .arg(now)
        .cmd("XGROUP")
        .arg("CREATE")
        .arg(&journal)
        .arg("persist")
        .arg("$")
        .arg("MKSTREAM")
        .cmd("XADD")
        .arg(&journal)
        .arg("*")
        .arg("e")
        .arg(format!("RES 1 7001 1 7 3 3 {expire} OLD-NEW trace-new"));
    let _: () = pipe.query_async(&mut r).await.expect("seed layout 1");

    // Upgrade: the service starts on the same Redis prefix and DB.
    let settings = test_settings(&db_url, &prefix, &[]);
    let app = start(settings, db_name).await;
    let key = SkuKey::new(WarehouseId(1), SkuId(7001));

    // No layout-1 key is left.
    let left: Vec<String> = app
        .redis_cmd(redis::cmd("KEYS").arg(format!("{p}inv:{{*:*}}*")))
        .await;
    assert!(left.is_empty(), "{left:?}");
    let left: Vec<String> = app
        .redis_cmd(redis::cmd("KEYS").arg(format!("{p}inv:ord:*")))
        .await;
    assert!(left.is_empty(), "{left:?}");

    // The journal entry that had not reached the DB did.
    let (status, body) = app.get("/inventory/reservations?orderNo=OLD-NEW").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["status"], "RESERVED", "{body}");
    let (_, from_db) = app
        .get("/inventory/reservations?orderNo=OLD-NEW&source=db")
        .await;
    assert!(
        from_db["data"][0]["id"].is_i64(),
        "the DB has it: {from_db}"
    );

    // Markers survive: a repeat answers existed.
    for (order, qty) in [("OLD-HELD", 2), ("OLD-NEW", 1)] {
        let (status, body) = app
            .post_json(
                "/inventory/reserve",
                &json!({"orderNo": order, "skuId": 7001, "qty": qty}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["existed"], true, "{order}: {body}");
    }
    // The tombstone survives: the late reservation is refused.
    let (status, body) = app
        .post_json(
            "/inventory/reserve",
            &json!({"orderNo": "OLD-CANCELLED", "skuId": 7001, "qty": 1}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(app.redis.has_tombstone("OLD-CANCELLED").await.unwrap());
    // The adjustment marker survives: the same requestId is not applied twice.
    let (status, body) = app
        .post_json(
            "/inventory/7001/stock",
            &json!({"delta": 10, "reason": "INBOUND", "requestId": "REQ-1"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["applied"], false, "{body}");

    // Holds survive: both are held, and the expiry index knows them.
    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].db_available, Some(7));
    assert_eq!(audits[0].lines_reserved, 3);
    let due = app
        .redis
        .due_holds(&[], expire + 1, 10)
        .await
        .expect("due holds")
        .concat();
    assert_eq!(due.len(), 2, "{due:?}");

    // And they settle as before.
    let (status, body) = app
        .post("/inventory/reservations/confirm?orderNo=OLD-HELD")
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .post("/inventory/reservations/release?orderNo=OLD-NEW")
        .await;
    assert_eq!(status, 200, "{body}");
    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].db_available, Some(8));
    assert_eq!(audits[0].lines_reserved, 0);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[actix_web::test]
async fn the_sweep_forgets_settled_orders_once_their_markers_lived_out_and_never_a_held_one() {
    let app = crate::helpers::spawn_app().await;
    app.stock_in(SkuId(7101), WarehouseId(1), 10).await;
    for order in ["SW-HELD", "SW-DONE"] {
        let (status, body) = app
            .post_json(
                "/inventory/reserve",
                &json!({"orderNo": order, "skuId": 7101, "qty": 1}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = app
        .post("/inventory/reservations/release?orderNo=SW-DONE")
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .post("/inventory/reservations/release?orderNo=SW-EARLY")
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(app.redis.has_tombstone("SW-EARLY").await.unwrap());

    let marker_ttl_ms = app.settings.marker_ttl_ms();
    let hold_ms = app.settings.hold_ms();
    let now = inventory::engine::now_ms();
    // Before the markers lived out: nothing goes.
    let (_, removed) = app
        .redis
        .sweep_orders(0, 1000, now, marker_ttl_ms)
        .await
        .unwrap();
    assert_eq!(removed, 0);
    // Long after: the settled order and the tombstone go, the held order stays.
    let later = now + hold_ms + marker_ttl_ms + 1_000;
    let mut cursor = 0;
    let mut removed = 0;
    loop {
        let (next, n) = app
            .redis
            .sweep_orders(cursor, 1000, later, marker_ttl_ms)
            .await
            .unwrap();
        removed += n;
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert_eq!(removed, 2);
    let found = app
        .redis
        .lookup_orders(&["SW-HELD".into(), "SW-DONE".into(), "SW-EARLY".into()])
        .await
        .unwrap();
    assert!(found[0].is_some(), "a held order is never swept");
    assert!(found[1].is_none() && found[2].is_none(), "{found:?}");
    let key = SkuKey::new(WarehouseId(1), SkuId(7101));
    let markers = app.redis.line_markers("SW-DONE", &[key]).await.unwrap();
    assert_eq!(markers, vec![None], "its record went with it");
    let markers = app.redis.line_markers("SW-HELD", &[key]).await.unwrap();
    assert!(markers[0].is_some());
    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].lines_reserved, 1);
}

#[actix_web::test]
async fn a_layout_2_record_moves_to_layout_3_and_an_unknown_layout_is_refused() {
    let prefix = format!("lay{}:", uuid::Uuid::new_v4().simple());
    let settings = test_settings("mysql://unused@127.0.0.1:1/unused", &prefix, &[]);
    let redis = RedisStore::connect(&settings.redis).await.expect("connect");
    let meta = format!("{prefix}inv:meta");
    let client = redis::Client::open(crate::helpers::redis_url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let groups = settings.redis.groups;

    // Layout 2 has the same keys: start-up moves the record on, so that an instance of the
    // older version (which checks for 2) refuses to start beside this one.
    let _: () = redis::cmd("HSET")
        .arg(&meta)
        .arg("layout")
        .arg(2)
        .arg("groups")
        .arg(groups)
        .query_async(&mut conn)
        .await
        .unwrap();
    redis.claim_layout().await.expect("layout 2 is taken over");
    assert_eq!(
        redis.layout_meta().await.unwrap(),
        Some((inventory::store::wire::LAYOUT_VERSION, groups))
    );
    assert_eq!(inventory::store::wire::LAYOUT_VERSION, 3);

    // Layout 2 with other groups is not ours to move; our layout with other groups names
    // the stored count; a layout this build does not know is refused; no record changes.
    for (layout, other_groups) in [(2, groups + 1), (3, groups + 1), (4, groups)] {
        let _: () = redis::cmd("HSET")
            .arg(&meta)
            .arg("layout")
            .arg(layout)
            .arg("groups")
            .arg(other_groups)
            .query_async(&mut conn)
            .await
            .unwrap();
        let refused = redis.claim_layout().await;
        let Err(refusal) = refused else {
            panic!("layout {layout}, groups {other_groups} was accepted")
        };
        if layout == inventory::store::wire::LAYOUT_VERSION {
            // Our layout with another group count: positions would live under other keys.
            let message = refusal.to_string();
            assert!(
                message.contains(&format!("set redis.groups = {other_groups}")),
                "{message}"
            );
        }
        assert_eq!(
            redis.layout_meta().await.unwrap(),
            Some((layout, other_groups))
        );
    }
    let _: () = redis::cmd("DEL")
        .arg(&meta)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[actix_web::test]
async fn start_up_moves_layout_2_on_only_once_no_other_instance_reads_the_journal() {
    let (db_name, db_url) = create_test_database().await;
    let prefix = format!("t{}:", &db_name["inventory_t_".len()..]);
    let quiet_ms = 1_500u64;
    let settings = test_settings(
        &db_url,
        &prefix,
        &[("journal.claim_idle_ms", (quiet_ms as i64).into())],
    );
    let keys = inventory::store::wire::Keys::new(&prefix, settings.redis.groups);
    let client = redis::Client::open(crate::helpers::redis_url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let layout = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        let meta = keys.meta();
        async move {
            let layout: Option<i64> = redis::cmd("HGET")
                .arg(meta)
                .arg("layout")
                .query_async(&mut conn)
                .await
                .unwrap();
            layout
        }
    };
    // A deployment of the older version: layout 2 recorded, and one of its instances
    // reading a journal stream right now.
    let _: () = redis::cmd("HSET")
        .arg(keys.meta())
        .arg("layout")
        .arg(2)
        .arg("groups")
        .arg(settings.redis.groups)
        .query_async(&mut conn)
        .await
        .unwrap();
    let journal = keys.journal(0);
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&journal)
        .arg("persist")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Redis lists a consumer once something was delivered to it: an (empty) entry.
    let _: String = redis::cmd("XADD")
        .arg(&journal)
        .arg("*")
        .arg("e")
        .arg("")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("persist")
        .arg("old-host:8082")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&journal)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();

    match inventory::startup::Application::build(settings.clone()).await {
        Ok(_) => panic!("start-up moved layout 2 on while another instance read the journal"),
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains("old-host:8082"), "{message}");
            assert!(message.contains("stop them first"), "{message}");
        }
    }
    assert_eq!(
        layout(&mut conn).await,
        Some(2),
        "the record is left as it was"
    );

    // Once that consumer has been quiet for journal.claim_idle_ms, start-up goes on.
    tokio::time::sleep(Duration::from_millis(quiet_ms + 300)).await;
    let app = start(settings, db_name).await;
    assert_eq!(
        layout(&mut conn).await,
        Some(inventory::store::wire::LAYOUT_VERSION)
    );
    let (status, _) = app.get("/health").await;
    assert_eq!(status, 200);
}
