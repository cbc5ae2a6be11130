//! The service on the local Redis Cluster (scripts/redis-cluster.sh: 3 masters, 3 replicas
//! on 127.0.0.1:7000-7005): oversell, orders across masters (all-or-nothing, also across a
//! kill -9 between the phases), two instances racing confirm against release, resharding
//! under load, and a master failover (docs/reliability.md).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use inventory::domain::{SkuId, SkuKey, WarehouseId};
use inventory::store::wire::Keys;
use serde_json::{json, Value};

use crate::crash::try_start_service_with;
use crate::helpers::{create_test_database, spawn_app_with, start, test_settings, TestApp};

pub fn cluster_urls() -> String {
    std::env::var("REDIS_CLUSTER_URLS").unwrap_or_else(|_| {
        "redis://127.0.0.1:7000,redis://127.0.0.1:7001,redis://127.0.0.1:7002".to_string()
    })
}

/// A connection to any node that answers (a failover test may have one down).
async fn any_node() -> redis::aio::MultiplexedConnection {
    for port in 7000..7006 {
        let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
            continue;
        };
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
            if redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .is_ok()
            {
                return conn;
            }
        }
    }
    panic!("no cluster node answers (run scripts/redis-cluster.sh)");
}

async fn spawn_cluster_app(extra: &[(&str, toml::Value)]) -> TestApp {
    wait_for_cluster().await;
    let mut overrides: Vec<(&str, toml::Value)> = vec![
        ("redis.cluster_urls", cluster_urls().into()),
        ("redis.pending_deadline_ms", 1500.into()),
        ("supervisor.tick_ms", 100.into()),
        // A failover may leave entries delivered but not acknowledged on the new master.
        ("journal.claim_idle_ms", 2000.into()),
    ];
    overrides.extend(extra.iter().cloned());
    spawn_app_with(&overrides).await
}

/// Waits (bounded) until every slot is served: a failover test may have just run.
async fn wait_for_cluster() {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let served: i64 = slot_owners().await.iter().map(|(a, b, _)| b - a + 1).sum();
        if served == 16384 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cluster does not serve every slot"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The master (its "host:port") that serves each slot range now.
async fn slot_owners() -> Vec<(i64, i64, String)> {
    let mut conn = any_node().await;
    let reply: redis::Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await
        .expect("CLUSTER SLOTS");
    let mut out = Vec::new();
    if let redis::Value::Array(ranges) = reply {
        for range in ranges {
            let redis::Value::Array(parts) = range else {
                continue;
            };
            let (Some(redis::Value::Int(from)), Some(redis::Value::Int(to))) =
                (parts.first(), parts.get(1))
            else {
                continue;
            };
            if let Some(redis::Value::Array(master)) = parts.get(2) {
                let port = match master.get(1) {
                    Some(redis::Value::Int(p)) => *p,
                    _ => 0,
                };
                out.push((*from, *to, format!("127.0.0.1:{port}")));
            }
        }
    }
    out
}

async fn key_slot(key: &str) -> i64 {
    let mut conn = any_node().await;
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("KEYSLOT")
}

/// The master that holds a position's group now.
async fn master_of(keys: &Keys, key: SkuKey) -> String {
    let slot = key_slot(&keys.orders(keys.group(key))).await;
    slot_owners()
        .await
        .into_iter()
        .find(|(from, to, _)| (*from..=*to).contains(&slot))
        .map(|(_, _, m)| m)
        .expect("slot served")
}

/// One SKU (warehouse 1) per master, from `from` upwards.
async fn skus_on_every_master(keys: &Keys, from: i64) -> Vec<SkuKey> {
    let masters: HashSet<String> = slot_owners().await.into_iter().map(|r| r.2).collect();
    let mut chosen: BTreeMap<String, SkuKey> = BTreeMap::new();
    let mut sku = from;
    while chosen.len() < masters.len() {
        let key = SkuKey::new(WarehouseId(1), SkuId(sku));
        chosen.entry(master_of(keys, key).await).or_insert(key);
        sku += 1;
        assert!(sku < from + 1000, "no SKU found for every master");
    }
    chosen.into_values().collect()
}

fn order_body(order_no: &str, keys: &[SkuKey]) -> Value {
    json!({
        "orderNo": order_no,
        "items": keys.iter().map(|k| json!({"skuId": k.sku_id, "warehouseId": k.warehouse_id, "qty": 1})).collect::<Vec<_>>()
    })
}

/// Every order is wholly held or wholly absent in Redis and the DB: its records hold no
/// PENDING line and either all its lines or none.
async fn assert_all_or_nothing(app: &TestApp, order_nos: &[String], keys: &[SkuKey]) -> usize {
    let mut held = 0;
    for no in order_nos {
        let markers = app
            .redis
            .line_markers(no, keys)
            .await
            .expect("line markers");
        let present = markers.iter().filter(|m| m.is_some()).count();
        assert!(
            present == 0 || present == keys.len(),
            "order {no} is held in {present} of {} groups: {markers:?}",
            keys.len()
        );
        if present == keys.len() {
            held += 1;
        }
    }
    held
}

#[actix_web::test]
async fn cluster_hot_sku_500_orders_for_100_units_hold_exactly_100() {
    let _shared = CLUSTER_TOPOLOGY.read().await;
    let app = spawn_cluster_app(&[]).await;
    let key = SkuKey::new(WarehouseId(1), SkuId(1001));
    app.stock_in(SkuId(1001), WarehouseId(1), 100).await;
    let mut tasks = Vec::new();
    for n in 0..500 {
        let client = app.client.clone();
        let url = app.url("/inventory/reserve");
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"orderNo": format!("CH-{n}"), "skuId": 1001, "warehouseId": 1, "qty": 1}))
                .send()
                .await
                .expect("sent");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.expect("json"))
        }));
    }
    let mut held = 0;
    for t in tasks {
        let (status, body) = t.await.expect("task");
        match status {
            200 => held += 1,
            409 => assert_eq!(body["code"], "INSUFFICIENT_STOCK", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(held, 100);
    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].db_available, Some(0));
    assert_eq!(audits[0].db_reserved, Some(100));
    assert_eq!(audits[0].lines_reserved, 100);
    // A repeat is a repeat, on a cluster too.
    let (status, body) = app
        .post_json(
            "/inventory/reserve",
            &json!({"orderNo": "CH-0", "skuId": 1001, "warehouseId": 1, "qty": 1}),
        )
        .await;
    assert!(status == 200 || status == 409, "{status} {body}");
}

#[actix_web::test]
async fn cluster_orders_across_three_masters_are_all_or_nothing() {
    let _shared = CLUSTER_TOPOLOGY.read().await;
    let app = spawn_cluster_app(&[]).await;
    let keys = skus_on_every_master(app.redis.keys(), 2000).await;
    assert_eq!(keys.len(), 3);
    // Short stock, unequal: orders race, some are held in one group and refused in another
    // (then aborted).
    for (k, stock) in keys.iter().zip([40, 25, 30]) {
        app.stock_in(SkuId(k.sku_id), WarehouseId(k.warehouse_id), stock)
            .await;
    }
    let order_nos: Vec<String> = (0..80).map(|n| format!("X3-{n}")).collect();
    let mut tasks = Vec::new();
    for no in &order_nos {
        let client = app.client.clone();
        let url = app.url("/inventory/reserve");
        let body = order_body(no, &keys);
        tasks.push(tokio::spawn(async move {
            let r = client.post(url).json(&body).send().await.expect("sent");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.expect("json"))
        }));
    }
    let mut answered_held = HashSet::new();
    for (no, t) in order_nos.iter().zip(tasks) {
        let (status, body) = t.await.expect("task");
        match status {
            200 => {
                answered_held.insert(no.clone());
            }
            409 => assert_eq!(body["code"], "INSUFFICIENT_STOCK", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(answered_held.len() <= 25, "{}", answered_held.len());
    assert!(!answered_held.is_empty());
    let held = assert_all_or_nothing(&app, &order_nos, &keys).await;
    assert_eq!(held, answered_held.len());
    let audits = app.assert_invariants(&keys).await;
    for (audit, stock) in audits.iter().zip([40, 25, 30]) {
        assert_eq!(audit.db_reserved, Some(held as i64));
        assert_eq!(audit.db_available, Some(stock - held as i64));
    }
}

#[actix_web::test]
async fn cluster_an_order_refused_in_one_group_gives_back_what_another_held_and_the_ledger_shows_it(
) {
    let _shared = CLUSTER_TOPOLOGY.read().await;
    let app = spawn_cluster_app(&[]).await;
    let keys = skus_on_every_master(app.redis.keys(), 2500).await;
    app.stock_in(SkuId(keys[0].sku_id), WarehouseId(1), 5).await;
    app.stock_in(SkuId(keys[1].sku_id), WarehouseId(1), 1).await;
    let (status, body) = app
        .post_json(
            "/inventory/reserve",
            &json!({"orderNo": "AB-1", "items": [
                {"skuId": keys[0].sku_id, "warehouseId": 1, "qty": 2},
                {"skuId": keys[1].sku_id, "warehouseId": 1, "qty": 3}
            ]}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "INSUFFICIENT_STOCK", "{body}");
    let audits = app.assert_invariants(&keys[..2]).await;
    assert_eq!(audits[0].db_available, Some(5));
    assert_eq!(audits[0].db_reserved, Some(0));
    // The first group held its line (PENDING) and gave it back: RES then REL ABORT.
    let mut conn = app.db_conn().await;
    let ledger = inventory::store::models::LedgerEntry::for_position(&mut conn, keys[0])
        .await
        .expect("ledger");
    let reasons: Vec<&str> = ledger.iter().map(|l| l.reason.as_str()).collect();
    assert_eq!(reasons, vec!["INBOUND", "RESERVE", "ABORT"], "{ledger:#?}");
    // The refusal is final for this orderNo (its lines are RELEASED in the DB): a repeat,
    // even after stock came in, gets the same answer and holds nothing.
    app.stock_in(SkuId(keys[1].sku_id), WarehouseId(1), 5).await;
    let (status, body) = app
        .post_json(
            "/inventory/reserve",
            &json!({"orderNo": "AB-1", "items": [
                {"skuId": keys[0].sku_id, "warehouseId": 1, "qty": 2},
                {"skuId": keys[1].sku_id, "warehouseId": 1, "qty": 3}
            ]}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "INSUFFICIENT_STOCK", "{body}");
    let audits = app.assert_invariants(&keys[..2]).await;
    assert_eq!(audits[0].db_reserved, Some(0));
    assert_eq!(audits[1].db_available, Some(6));
}

#[actix_web::test]
async fn cluster_two_instances_racing_confirm_against_release_have_one_winner_each() {
    let _shared = CLUSTER_TOPOLOGY.read().await;
    let (db_name, db_url) = create_test_database().await;
    let prefix = format!("t{}:", &db_name["inventory_t_".len()..]);
    let overrides: Vec<(&str, toml::Value)> = vec![
        ("redis.cluster_urls", cluster_urls().into()),
        ("redis.pending_deadline_ms", 1500.into()),
    ];
    let a = start(test_settings(&db_url, &prefix, &overrides), db_name.clone()).await;
    let b = start(test_settings(&db_url, &prefix, &overrides), db_name).await;
    let keys = skus_on_every_master(a.redis.keys(), 3000).await;
    for k in &keys {
        a.stock_in(SkuId(k.sku_id), WarehouseId(k.warehouse_id), 100)
            .await;
    }
    let order_nos: Vec<String> = (0..40).map(|n| format!("R2-{n}")).collect();
    for (n, no) in order_nos.iter().enumerate() {
        // Load spread over both instances; half the orders in one group only.
        let lines = if n % 2 == 0 { &keys[..] } else { &keys[..1] };
        let app = if n % 2 == 0 { &a } else { &b };
        let (status, body) = app
            .post_json("/inventory/reserve", &order_body(no, lines))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let mut tasks = Vec::new();
    for no in &order_nos {
        for (app, op) in [(&a, "confirm"), (&b, "release")] {
            let client = app.client.clone();
            let url = app.url(&format!("/inventory/reservations/{op}?orderNo={no}"));
            let op = op.to_string();
            let no = no.clone();
            tasks.push(tokio::spawn(async move {
                let r = client.post(url).send().await.expect("sent");
                (no, op, r.status().as_u16())
            }));
        }
    }
    let mut winners: HashMap<String, Vec<String>> = HashMap::new();
    for t in tasks {
        let (no, op, status) = t.await.expect("task");
        assert!(status == 200 || status == 409, "{no} {op}: {status}");
        if status == 200 {
            winners.entry(no).or_default().push(op);
        }
    }
    let mut confirmed = 0;
    for no in &order_nos {
        let won = winners.get(no).cloned().unwrap_or_default();
        assert_eq!(won.len(), 1, "order {no}: winners {won:?}");
        let markers = a.redis.line_markers(no, &keys).await.expect("markers");
        let states: HashSet<String> = markers
            .iter()
            .flatten()
            .map(|m| m.status.as_str().to_string())
            .collect();
        let expected = if won[0] == "confirm" {
            confirmed += 1;
            "CONFIRMED"
        } else {
            "RELEASED"
        };
        assert_eq!(states, HashSet::from([expected.to_string()]), "order {no}");
    }
    let audits = a.assert_invariants(&keys).await;
    assert_eq!(audits[0].lines_confirmed, confirmed);
}

/// kill -9 of the real binary between the phases of orders spanning three masters (the
/// fault point `cluster.after_hold` aborts the process there), then a restart: the PENDING
/// lines are resolved by the supervisor, every order ends wholly held or wholly free.
#[actix_web::test]
async fn cluster_kill_9_between_the_phases_leaves_no_pending_line() {
    let _shared = CLUSTER_TOPOLOGY.read().await;
    let (db_name, db_url) = create_test_database().await;
    let prefix = format!("t{}:", &db_name["inventory_t_".len()..]);
    let settings = test_settings(
        &db_url,
        &prefix,
        &[
            ("redis.cluster_urls", cluster_urls().into()),
            ("redis.pending_deadline_ms", 800.into()),
            // Journal entries a killed service had read but not acknowledged are claimed
            // by this instance after 2 s (the default, 30 s, outlasts the drain's 20 s
            // wait: a fresh-clone CI run failed with 24 entries pending).
            ("journal.claim_idle_ms", 2000.into()),
        ],
    );
    let app = start(settings, db_name).await;
    let keys = skus_on_every_master(app.redis.keys(), 4000).await;
    for k in &keys {
        app.stock_in(SkuId(k.sku_id), WarehouseId(k.warehouse_id), 30)
            .await;
    }
    app.drain_journal().await;
    let cluster = cluster_urls();
    let env_common: Vec<(&str, &str)> = vec![
        ("INVENTORY__REDIS__CLUSTER_URLS", cluster.as_str()),
        ("INVENTORY__REDIS__PENDING_DEADLINE_MS", "800"),
        ("INVENTORY__SUPERVISOR__TICK_MS", "100"),
    ];
    let client = reqwest::Client::new();
    let mut order_nos = Vec::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut aborted_by_fault = 0;
    for round in 0..4 {
        // Each round: a service that dies at the k-th pass of the point, k random.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let fault_seed = (seed % 1000).to_string();
        let mut env = env_common.clone();
        env.push(("INVENTORY_FAULTS", "cluster.after_hold=abort@0.3"));
        env.push(("INVENTORY_FAULT_SEED", fault_seed.as_str()));
        let service = try_start_service_with(&db_url, &prefix, &env)
            .await
            .expect("service starts");
        let mut service = service;
        let mut tasks = Vec::new();
        for n in 0..12 {
            let no = format!("K9-{round}-{n}");
            order_nos.push(no.clone());
            let client = client.clone();
            let url = format!("{}/inventory/reserve", service.base);
            let body = order_body(&no, &keys);
            tasks.push(tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(crate::helpers::ADMIN_TOKEN)
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }));
        }
        let mut unanswered = 0;
        for t in tasks {
            match t.await {
                Ok(Ok(status)) => *statuses.entry(status).or_insert(0) += 1,
                _ => unanswered += 1,
            }
        }
        // A process that aborted may take a moment to be gone (a core dump being written).
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut died = service.exited();
        while !died && unanswered > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            died = service.exited();
        }
        aborted_by_fault += usize::from(died);
        service.kill9();
    }
    // The point fired (the process died between the phases) in some round.
    assert!(
        aborted_by_fault > 0,
        "no round died at the point: {statuses:?}"
    );
    // A clean instance (this test's in-process app leads or a new one does): the resolver
    // settles every claim past its deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    let resolver = try_start_service_with(&db_url, &prefix, &env_common)
        .await
        .expect("service starts");
    let pending_after_kills = count_pending(&app, &order_nos, &keys).await;
    assert!(
        pending_after_kills > 0,
        "no claim was left in doubt: {statuses:?}"
    );
    loop {
        // The supervisor (of the restarted service or of this test's instance, whichever
        // leads) resolves them; nothing here does.
        let pending = count_pending(&app, &order_nos, &keys).await;
        if pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{pending} orders still PENDING");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(resolver);
    eprintln!(
        "kill-9 rounds: {statuses:?}, died at the point {aborted_by_fault} of 4, \
         {pending_after_kills} claims in doubt"
    );
    let held = assert_all_or_nothing(&app, &order_nos, &keys).await;
    let audits = app.assert_invariants(&keys).await;
    for audit in &audits {
        assert_eq!(audit.db_reserved, Some(held as i64), "{audit:#?}");
        assert_eq!(audit.db_available, Some(30 - held as i64), "{audit:#?}");
    }
}

async fn count_pending(app: &TestApp, order_nos: &[String], keys: &[SkuKey]) -> usize {
    let mut pending = 0;
    let entries = app.redis.cluster_entries(order_nos).await.expect("entries");
    for e in entries.iter().flatten() {
        if matches!(
            e.state,
            inventory::store::cluster::EntryState::Claimed { .. }
        ) {
            pending += 1;
        }
    }
    let _ = keys;
    pending
}

/// Tests that change the cluster itself (failover, resharding) run alone; the others share.
pub static CLUSTER_TOPOLOGY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

async fn node_pid(addr: &str) -> Option<u32> {
    let client = redis::Client::open(format!("redis://{addr}")).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
}

fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}

/// The pid of a replica of the master at `addr`.
async fn replica_pid_of(addr: &str) -> Option<u32> {
    let mut conn = any_node().await;
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await
        .ok()?;
    let master_id = text
        .lines()
        .find(|l| l.split(' ').nth(1).is_some_and(|a| a.starts_with(addr)))?
        .split(' ')
        .next()?
        .to_string();
    let replica = text.lines().find(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.len() > 3 && f[2].contains("slave") && f[3] == master_id
    })?;
    let replica_addr = replica.split(' ').nth(1)?.split('@').next()?.to_string();
    node_pid(&replica_addr).await
}

/// kill -9 of the master that holds a hot SKU while orders stream in; its replica takes
/// over. Returns (orders acknowledged, of those missing from Redis after the failover).
async fn failover_under_load(wait_replicas: u32, sku: i64) -> (usize, usize, TestApp, Vec<String>) {
    let app = spawn_cluster_app(&[
        ("redis.wait_replicas", wait_replicas.into()),
        ("redis.wait_timeout_ms", 500.into()),
        ("redis.command_timeout_ms", 1000.into()),
    ])
    .await;
    let key = SkuKey::new(WarehouseId(1), SkuId(sku));
    app.stock_in(SkuId(sku), WarehouseId(1), 100_000).await;
    let master = master_of(app.redis.keys(), key).await;
    let pid = node_pid(&master).await.expect("master pid");
    let mut tasks = Vec::new();
    for n in 0..600 {
        let client = app.client.clone();
        let url = app.url("/inventory/reserve");
        tasks.push(tokio::spawn(async move {
            // Spread over ~3 s: the kill lands in the middle.
            tokio::time::sleep(Duration::from_millis(n * 5)).await;
            let no = format!("FO-{n}");
            let status = client
                .post(url)
                .json(&json!({"orderNo": no, "skuId": sku, "warehouseId": 1, "qty": 1}))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            (no, status)
        }));
    }
    // The replica falls behind (stopped for 800 ms: a slow network, a busy host), then the
    // master dies before it caught up: what the master acknowledged meanwhile exists only
    // there, unless the service waited for the replica (WAIT).
    let replica_pid = replica_pid_of(&master)
        .await
        .expect("a replica of the master");
    tokio::time::sleep(Duration::from_millis(800)).await;
    signal(replica_pid, "STOP");
    // Its link dropped too (what the master wrote into the socket before would still reach
    // it): everything from here on exists only on the master.
    let _ = std::process::Command::new("redis-cli")
        .args(["-p", master.rsplit(':').next().unwrap_or("0")])
        .args(["CLIENT", "KILL", "TYPE", "replica"])
        .stdout(std::process::Stdio::null())
        .status();
    tokio::time::sleep(Duration::from_millis(800)).await;
    signal(pid, "KILL");
    tokio::time::sleep(Duration::from_millis(100)).await;
    signal(replica_pid, "CONT");
    let mut acked = Vec::new();
    for t in tasks {
        let (no, status) = t.await.expect("task");
        assert!(
            matches!(status, 200 | 503 | 504),
            "order {no}: unexpected {status}"
        );
        if status == 200 {
            acked.push(no);
        }
    }
    // The replica took over.
    let deadline = Instant::now() + Duration::from_secs(30);
    while master_of(app.redis.keys(), key).await == master {
        assert!(Instant::now() < deadline, "no failover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "failover of {master} (replica pid {replica_pid}): now {}",
        master_of(app.redis.keys(), key).await
    );
    let mut lost = 0;
    for no in &acked {
        let markers = app
            .redis
            .line_markers(no, &[key])
            .await
            .expect("markers after failover");
        if markers[0].is_none() {
            lost += 1;
            let entry = app
                .redis
                .cluster_entries(std::slice::from_ref(no))
                .await
                .ok();
            let raw: Option<String> = app
                .redis_cmd(
                    redis::cmd("HGET")
                        .arg(app.redis.keys().orders(app.redis.keys().group(key)))
                        .arg(no),
                )
                .await;
            eprintln!("lost after the failover: {no}: entry {entry:?}, record {raw:?}");
        }
    }
    // The killed node comes back (as a replica of the new master).
    let status = std::process::Command::new("bash")
        .arg(repo_root().join("scripts/redis-cluster.sh"))
        .status()
        .expect("cluster script");
    assert!(status.success());
    (acked.len(), lost, app, acked)
}

#[actix_web::test]
async fn cluster_master_failover_loses_nothing_acknowledged_with_wait_replicas_1() {
    let _alone = CLUSTER_TOPOLOGY.write().await;
    let (acked, lost, app, _) = failover_under_load(1, 5001).await;
    eprintln!("failover, wait_replicas=1: {acked} acknowledged, {lost} lost");
    assert!(acked > 0);
    assert_eq!(lost, 0, "acknowledged orders lost with wait_replicas = 1");
    let key = SkuKey::new(WarehouseId(1), SkuId(5001));
    // Changes the master made but could not get to the replica in time were answered 503
    // (not acknowledged) and may be gone from Redis while the DB has them: reconciliation
    // restores agreement.
    app.drain_journal().await;
    let (status, body) = app
        .post("/inventory/reconcile?skuId=5001&warehouseId=1&repair=true&full=true")
        .await;
    assert_eq!(status, 200, "{body}");
    let audits = app.assert_invariants(&[key]).await;
    assert!(audits[0].db_reserved >= Some(acked as i64));
}

#[actix_web::test]
async fn cluster_master_failover_without_wait_is_named_and_repaired_by_reconciliation() {
    let _alone = CLUSTER_TOPOLOGY.write().await;
    let (acked, lost, app, acked_orders) = failover_under_load(0, 5002).await;
    eprintln!("failover, wait_replicas=0: {acked} acknowledged, {lost} lost");
    // Without WAIT the orders acknowledged while the replica was behind are gone from Redis.
    assert!(
        lost > 0,
        "the replica was behind, yet nothing acknowledged was lost"
    );
    let key = SkuKey::new(WarehouseId(1), SkuId(5002));
    app.drain_journal().await;
    // Whatever Redis lost is named by reconciliation and repaired from the DB.
    let (status, body) = app
        .post("/inventory/reconcile?skuId=5002&warehouseId=1&repair=true&full=true")
        .await;
    assert_eq!(status, 200, "{body}");
    if lost > 0 {
        assert!(
            body["data"]["differences"]
                .as_array()
                .is_some_and(|d| !d.is_empty()),
            "{lost} acknowledged orders lost but reconciliation found nothing: {body}"
        );
    }
    let audits = app.assert_invariants(&[key]).await;
    // Every acknowledged order is held again (the repair rebuilt its hold from the DB,
    // which the persister had reached) or named lost (neither store had it any more).
    let named: Vec<String> = body["data"]["differences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["kind"] == "ORDER_LOST")
        .map(|d| d["detail"].as_str().unwrap_or_default().to_string())
        .collect();
    // What no store remembers (its directory shard died with the same master, and the
    // persister had not reached it) cannot be named: counted, and bounded by the orders
    // acknowledged while the replica was behind.
    let (mut restored, mut untraced) = (0, 0);
    let mut conn = app.db_conn().await;
    for no in &acked_orders {
        let markers = app.redis.line_markers(no, &[key]).await.expect("markers");
        if markers[0].is_some() {
            restored += 1;
            continue;
        }
        if named.iter().any(|d| d.starts_with(&format!("order {no}:"))) {
            continue;
        }
        let entry = app
            .redis
            .cluster_entries(std::slice::from_ref(no))
            .await
            .expect("entry");
        let rows = inventory::store::models::Reservation::by_order(&mut conn, no)
            .await
            .expect("rows");
        assert!(
            entry[0].is_none() && rows.is_empty(),
            "order {no} is known ({:?}, {} DB rows) but neither held nor named lost",
            entry[0],
            rows.len()
        );
        untraced += 1;
    }
    eprintln!(
        "after repair: {restored} of {acked} acknowledged held, {} named ORDER_LOST, \
         {untraced} without a trace",
        named.len()
    );
    assert!(untraced <= lost);
    // Zero oversell: never more reserved than came in.
    assert!(audits[0].db_reserved.unwrap_or(0) <= 100_000);
}

/// (node id, "host:port", slots) of every master.
async fn masters() -> Vec<(String, String, Vec<i64>)> {
    let mut conn = any_node().await;
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await
        .expect("CLUSTER NODES");
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 8 || !f[2].contains("master") || f[2].contains("fail") {
            continue;
        }
        let addr = f[1].split('@').next().unwrap_or_default().to_string();
        let mut slots = Vec::new();
        for range in &f[8..] {
            if range.starts_with('[') {
                continue;
            }
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) {
                slots.extend(a..=b);
            }
        }
        // redis-cli moves a source's lowest slots first; CLUSTER NODES need not list the
        // ranges in order.
        slots.sort_unstable();
        out.push((f[0].to_string(), addr, slots));
    }
    out
}

/// `redis-cli --cluster reshard` of `count` slots from one master to another (the source's
/// lowest slots first).
fn reshard(from: &str, to: &str, count: usize) -> bool {
    std::process::Command::new("redis-cli")
        .args([
            "--cluster",
            "reshard",
            "127.0.0.1:7000",
            "--cluster-from",
            from,
            "--cluster-to",
            to,
            "--cluster-slots",
            &count.to_string(),
            "--cluster-yes",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[actix_web::test]
async fn cluster_resharding_a_live_group_under_load_loses_nothing_and_holds_nothing_twice() {
    let _alone = CLUSTER_TOPOLOGY.write().await;
    let app = spawn_cluster_app(&[]).await;
    let keys = app.redis.keys().clone();
    // The group that sits lowest in its master's slots: the fewest slots to move with it.
    let owners = masters().await;
    let mut best: Option<(usize, u32, String, String)> = None;
    for g in 0..keys.groups() {
        let slot = key_slot(&keys.orders(g)).await;
        for (id, _, slots) in &owners {
            if let Some(pos) = slots.iter().position(|s| *s == slot) {
                if best.as_ref().is_none_or(|b| pos + 1 < b.0) {
                    let to = owners
                        .iter()
                        .find(|o| o.0 != *id)
                        .map(|o| o.0.clone())
                        .expect("another master");
                    best = Some((pos + 1, g, id.clone(), to));
                }
            }
        }
    }
    let (count, group, from, to) = best.expect("a group's slot is served");
    let hot = (1..10_000)
        .map(|s| SkuKey::new(WarehouseId(1), SkuId(6000 + s)))
        .find(|k| keys.group(*k) == group)
        .expect("a SKU of the group");
    let other = (1..10_000)
        .map(|s| SkuKey::new(WarehouseId(1), SkuId(7000 + s)))
        .find(|k| keys.group(*k) != group)
        .expect("a SKU of another group");
    app.stock_in(SkuId(hot.sku_id), WarehouseId(1), 300).await;
    app.stock_in(SkuId(other.sku_id), WarehouseId(1), 1_000)
        .await;

    // 500 orders over ~2.5 s, a third of them spanning the moving group and another.
    let send = |n: u64| {
        let client = app.client.clone();
        let url = app.url("/inventory/reserve");
        let no = format!("RS-{n}");
        let body = if n % 3 == 0 {
            order_body(&no, &[hot, other])
        } else {
            order_body(&no, &[hot])
        };
        async move {
            let r = client.post(url).json(&body).send().await.expect("sent");
            (no, r.status().as_u16())
        }
    };
    let mut tasks = Vec::new();
    for n in 0..500u64 {
        let f = send(n);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(n * 5)).await;
            f.await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let moved = {
        let (from, to) = (from.clone(), to.clone());
        tokio::task::spawn_blocking(move || reshard(&from, &to, count))
            .await
            .expect("reshard thread")
    };
    assert!(moved, "redis-cli --cluster reshard failed");
    let mut outcome: BTreeMap<String, u16> = BTreeMap::new();
    for t in tasks {
        let (no, status) = t.await.expect("task");
        outcome.insert(no, status);
    }
    // The nodes learn the new owner by gossip: give them a moment.
    let from_addr = owners
        .iter()
        .find(|o| o.0 == from)
        .map(|o| o.1.clone())
        .unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while master_of(&keys, hot).await == from_addr {
        assert!(Instant::now() < deadline, "the group did not move");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A request that got no answer in time is retried with its orderNo (safe: a repeat).
    let mut retried = 0;
    for (no, status) in outcome.iter_mut() {
        if *status != 200 && *status != 409 {
            retried += 1;
            let n: u64 = no.trim_start_matches("RS-").parse().expect("n");
            *status = send(n).await.1;
        }
        assert!(matches!(*status, 200 | 409), "order {no}: {status}");
    }
    let held: Vec<&String> = outcome
        .iter()
        .filter(|(_, s)| **s == 200)
        .map(|(no, _)| no)
        .collect();
    let audits = app.assert_invariants(&[hot, other]).await;
    assert_eq!(audits[0].db_reserved, Some(held.len() as i64));
    assert_eq!(audits[0].db_available, Some(300 - held.len() as i64));
    // Held once each: one RESERVED row per held order, none for a refused one.
    let mut conn = app.db_conn().await;
    let rows = inventory::store::models::Reservation::for_position(&mut conn, hot)
        .await
        .expect("rows");
    let in_db: HashSet<&String> = rows
        .iter()
        .filter(|r| r.status == "RESERVED")
        .map(|r| &r.order_no)
        .collect();
    assert_eq!(in_db.len(), held.len());
    assert!(held.iter().all(|no| in_db.contains(no)));
    eprintln!(
        "reshard: {count} slots moved under load, {} held of 500, {retried} retried",
        held.len()
    );
    // Put the slots back (the source's order is kept for the next run).
    let back = tokio::task::spawn_blocking(move || reshard(&to, &from, count))
        .await
        .expect("reshard thread");
    assert!(back, "moving the slots back failed");
}

/// An order the directory lists as held but that neither a group nor the DB knows (what a
/// failover without WAIT can leave when the persister had not reached it either): made here
/// by hand. Reconciliation names it ORDER_LOST, a confirm refuses it (no sale without
/// stock), and the repair removes the entry so that Redis agrees with the DB.
#[actix_web::test]
async fn cluster_an_order_lost_by_both_stores_is_named_and_never_confirmed() {
    let _shared = CLUSTER_TOPOLOGY.read().await;
    let app = spawn_cluster_app(&[]).await;
    let key = SkuKey::new(WarehouseId(1), SkuId(8001));
    app.stock_in(SkuId(8001), WarehouseId(1), 10).await;
    let (status, body) = app
        .post_json("/inventory/reserve", &order_body("LOST-1", &[key]))
        .await;
    assert_eq!(status, 200, "{body}");
    app.drain_journal().await;
    // Lose it in both stores, keep the directory entry (another shard survived).
    let group = app.redis.keys().group(key);
    let _: i64 = app
        .redis_cmd(
            redis::cmd("HDEL")
                .arg(app.redis.keys().orders(group))
                .arg("LOST-1"),
        )
        .await;
    {
        use diesel_async::RunQueryDsl;
        let mut conn = app.db_conn().await;
        diesel::sql_query("DELETE FROM t_inventory_reservation WHERE order_no = 'LOST-1'")
            .execute(&mut conn)
            .await
            .expect("delete rows");
    }
    let (status, body) = app
        .post("/inventory/reservations/confirm?orderNo=LOST-1")
        .await;
    assert_eq!(status, 404, "a lost order was confirmed: {body}");
    let (status, body) = app
        .post("/inventory/reconcile?skuId=8001&warehouseId=1&repair=true")
        .await;
    assert_eq!(status, 200, "{body}");
    let lost: Vec<&Value> = body["data"]["differences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["kind"] == "ORDER_LOST")
        .collect();
    assert_eq!(lost.len(), 1, "{body}");
    assert!(lost[0]["detail"]
        .as_str()
        .is_some_and(|d| d.starts_with("order LOST-1:")));
    assert_eq!(lost[0]["repaired"], true);
    let entry = app
        .redis
        .cluster_entries(&["LOST-1".to_string()])
        .await
        .expect("entry");
    assert!(entry[0].is_none(), "{entry:?}");
}

/// An order spanning groups that names a position Redis does not have is refused before
/// anything is held (no abort, so the orderNo stays free): once the position exists, the
/// same orderNo is held.
#[actix_web::test]
async fn cluster_an_unknown_position_refuses_an_order_across_groups_before_any_hold() {
    let _shared = CLUSTER_TOPOLOGY.read().await;
    let app = spawn_cluster_app(&[]).await;
    let keys = skus_on_every_master(app.redis.keys(), 8500).await;
    app.stock_in(SkuId(keys[0].sku_id), WarehouseId(1), 5).await;
    let body = json!({"orderNo": "NF-1", "items": [
        {"skuId": keys[0].sku_id, "warehouseId": 1, "qty": 1},
        {"skuId": keys[1].sku_id, "warehouseId": 1, "qty": 1}
    ]});
    let (status, reply) = app.post_json("/inventory/reserve", &body).await;
    assert_eq!(status, 404, "{reply}");
    app.drain_journal().await;
    let mut conn = app.db_conn().await;
    let ledger = inventory::store::models::LedgerEntry::for_position(&mut conn, keys[0])
        .await
        .expect("ledger");
    let reasons: Vec<&str> = ledger.iter().map(|l| l.reason.as_str()).collect();
    assert_eq!(reasons, vec!["INBOUND"], "nothing held, nothing aborted");
    app.stock_in(SkuId(keys[1].sku_id), WarehouseId(1), 5).await;
    let (status, reply) = app.post_json("/inventory/reserve", &body).await;
    assert_eq!(status, 200, "{reply}");
    app.assert_invariants(&keys[..2]).await;
}

/// A decision taken and not applied everywhere (here: an expiry decided, then a crash) is
/// completed by the next request with the decision's own ledger reason, not the request's:
/// a release finishing an expiry writes EXPIRED. And the sweep removes a lived-out
/// tombstone on a cluster (compared with what it read, so a renewed one would stay).
#[actix_web::test]
async fn cluster_a_decision_completed_by_a_later_request_keeps_its_reason() {
    let _shared = CLUSTER_TOPOLOGY.read().await;
    let app = spawn_cluster_app(&[]).await;
    let keys = skus_on_every_master(app.redis.keys(), 8100).await;
    for key in &keys[..2] {
        app.stock_in(SkuId(key.sku_id), WarehouseId(1), 10).await;
    }
    let (status, body) = app
        .post_json("/inventory/reserve", &order_body("DEC-1", &keys[..2]))
        .await;
    assert_eq!(status, 200, "{body}");
    // Expiry decided in the directory, applied nowhere yet.
    let directory = app.redis.keys().directory_of("DEC-1");
    let raw: String = app
        .redis_cmd(redis::cmd("HGET").arg(&directory).arg("DEC-1"))
        .await;
    assert!(raw.starts_with(|c: char| c.is_ascii_digit()), "{raw}");
    let _: i64 = app
        .redis_cmd(
            redis::cmd("HSET")
                .arg(&directory)
                .arg("DEC-1")
                .arg(format!("E{raw}")),
        )
        .await;
    let (status, body) = app
        .post("/inventory/reservations/release?orderNo=DEC-1")
        .await;
    assert_eq!(status, 200, "{body}");
    let audits = app.assert_invariants(&keys[..2]).await;
    let mut conn = app.db_conn().await;
    for (key, audit) in keys[..2].iter().zip(&audits) {
        assert_eq!(audit.db_available, Some(10), "{audit:?}");
        assert_eq!(audit.db_reserved, Some(0), "{audit:?}");
        let ledger = inventory::store::models::LedgerEntry::for_position(&mut conn, *key)
            .await
            .expect("ledger");
        let reasons: Vec<&str> = ledger.iter().map(|l| l.reason.as_str()).collect();
        assert_eq!(
            reasons,
            vec!["INBOUND", "RESERVE", "EXPIRED"],
            "{ledger:#?}"
        );
    }
    let entry = app
        .redis
        .cluster_entries(&["DEC-1".to_string()])
        .await
        .expect("entry");
    assert!(
        matches!(
            entry[0].as_ref().map(|e| e.state),
            Some(inventory::store::cluster::EntryState::Decided {
                kind: 'E',
                applied: true
            })
        ),
        "{entry:?}"
    );

    // A tombstone lives out and the sweep takes it (and nothing else).
    let (status, body) = app
        .post("/inventory/reservations/release?orderNo=DEC-EARLY")
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(app.redis.has_tombstone("DEC-EARLY").await.expect("lookup"));
    // The compare-and-delete: a tombstone renewed since it was read stays.
    let directory = app.redis.keys().directory_of("DEC-EARLY");
    let seen: String = app
        .redis_cmd(redis::cmd("HGET").arg(&directory).arg("DEC-EARLY"))
        .await;
    let renewed = format!("! {}", inventory::engine::now_ms() + 3_600_000);
    let _: i64 = app
        .redis_cmd(
            redis::cmd("HSET")
                .arg(&directory)
                .arg("DEC-EARLY")
                .arg(&renewed),
        )
        .await;
    let removed = app
        .redis
        .settle_counting(&[(
            "DEC-EARLY".to_string(),
            seen.clone(),
            "DROP_TOMBSTONE".to_string(),
        )])
        .await
        .expect("settle");
    assert_eq!(removed, 0, "a renewed tombstone was dropped");
    let current: String = app
        .redis_cmd(redis::cmd("HGET").arg(&directory).arg("DEC-EARLY"))
        .await;
    assert_eq!(current, renewed);
    // The value the release wrote back, so that the sweep below meets a lived-out one.
    let _: i64 = app
        .redis_cmd(
            redis::cmd("HSET")
                .arg(&directory)
                .arg("DEC-EARLY")
                .arg(&seen),
        )
        .await;
    let later =
        inventory::engine::now_ms() + app.settings.hold_ms() + app.settings.marker_ttl_ms() + 1_000;
    let mut cursor = 0;
    loop {
        let (next, _) = app
            .redis
            .sweep_orders(cursor, 1000, later, app.settings.marker_ttl_ms())
            .await
            .expect("sweep");
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert!(!app.redis.has_tombstone("DEC-EARLY").await.expect("lookup"));
}

/// The Kafka order path on a cluster: an ORDER_CREATED spanning all three masters is held
/// and answered STOCK_RESERVED, one short in one group is answered STOCK_RESERVE_FAILED
/// (and gives back what the other groups held), redeliveries answer the same, and a
/// payment confirms the held order in every group.
#[actix_web::test]
async fn cluster_kafka_orders_across_masters_are_held_refused_and_confirmed() {
    use crate::kafka::{mid, order_created, setup, WAIT};
    let _shared = CLUSTER_TOPOLOGY.read().await;
    wait_for_cluster().await;
    let s = setup(&[
        ("redis.cluster_urls", cluster_urls().into()),
        ("redis.pending_deadline_ms", 1500.into()),
        ("supervisor.tick_ms", 100.into()),
    ])
    .await;
    let keys = skus_on_every_master(s.app.redis.keys(), 8200).await;
    for key in &keys[..3] {
        s.app.stock_in(SkuId(key.sku_id), WarehouseId(1), 5).await;
    }
    let items = |qtys: [i64; 3]| {
        let lines: Vec<Value> = keys[..3]
            .iter()
            .zip(qtys)
            .map(|(k, q)| json!({"skuId": k.sku_id, "warehouseId": 1, "qty": q}))
            .collect();
        Value::Array(lines).to_string()
    };
    let held_id = mid();
    let held = order_created(&held_id, "KC-HELD", &items([2, 3, 4]));
    let short_id = mid();
    let short = order_created(&short_id, "KC-SHORT", &items([1, 1, 9]));
    s.kafka
        .send("ORDER_TOPIC", "ORDER_CREATED", "KC-HELD", &held)
        .await;
    s.kafka
        .send("ORDER_TOPIC", "ORDER_CREATED", "KC-SHORT", &short)
        .await;
    // Redeliveries of both, same message ids.
    s.kafka
        .send("ORDER_TOPIC", "ORDER_CREATED", "KC-HELD", &held)
        .await;
    s.kafka
        .send("ORDER_TOPIC", "ORDER_CREATED", "KC-SHORT", &short)
        .await;
    let out = s.kafka.collect("INVENTORY_TOPIC", 4, WAIT).await;
    assert_eq!(out.len(), 4);
    for m in &out {
        let expected = if m.key == "KC-HELD" {
            "STOCK_RESERVED"
        } else {
            "STOCK_RESERVE_FAILED"
        };
        assert_eq!(m.headers["tag"], expected, "{}", m.body);
    }
    let audits = s.app.assert_invariants(&keys[..3]).await;
    let held_now: Vec<i64> = audits.iter().map(|a| a.lines_reserved).collect();
    assert_eq!(held_now, vec![2, 3, 4], "{audits:?}");

    let pay = crate::kafka::payment(&mid(), "KC-HELD");
    s.kafka
        .send("PAYMENT_TOPIC", "PAYMENT_SUCCEEDED", "KC-HELD", &pay)
        .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = s.app.get("/inventory/reservations?orderNo=KC-HELD").await;
        assert_eq!(status, 200, "{body}");
        let states: Vec<&str> = body["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["status"].as_str())
            .collect();
        if states.len() == 3 && states.iter().all(|s| *s == "CONFIRMED") {
            break;
        }
        assert!(Instant::now() < deadline, "not confirmed: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let audits = s.app.assert_invariants(&keys[..3]).await;
    for (audit, sold) in audits.iter().zip([2, 3, 4]) {
        assert_eq!(audit.lines_reserved, 0, "{audit:?}");
        assert_eq!(audit.lines_confirmed, sold, "{audit:?}");
        assert_eq!(audit.db_available, Some(5 - sold), "{audit:?}");
    }
}

#[actix_web::test]
async fn cluster_routing_and_partial_confirm_are_refused_clearly_and_change_nothing() {
    let _shared = CLUSTER_TOPOLOGY.read().await;
    let app = spawn_cluster_app(&[]).await;
    let key = SkuKey::new(WarehouseId(1), SkuId(4450));
    app.stock_in(SkuId(4450), WarehouseId(1), 5).await;
    let (status, body) = app
        .post_json(
            "/inventory/reserve",
            &json!({"orderNo": "CR-1", "items": [{"skuId": 4450, "qty": 1}],
                    "routing": {"strategy": "PRIORITY"}}),
        )
        .await;
    assert_eq!(status, 501, "{body}");
    assert_eq!(body["code"], "UNSUPPORTED_ON_CLUSTER");
    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].lines_reserved, 0);
    // A partial confirm is refused the same way; the whole confirm works.
    let (status, body) = app
        .post_json(
            "/inventory/reserve",
            &json!({"orderNo": "CR-2", "skuId": 4450, "warehouseId": 1, "qty": 2}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .post_json(
            "/inventory/reservations/confirm?orderNo=CR-2",
            &json!({"items": [{"skuId": 4450, "qty": 1}]}),
        )
        .await;
    assert_eq!(status, 501, "{body}");
    assert_eq!(body["code"], "UNSUPPORTED_ON_CLUSTER");
    let (status, body) = app
        .post("/inventory/reservations/confirm?orderNo=CR-2")
        .await;
    assert_eq!(status, 200, "{body}");
    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].lines_confirmed, 2);

    // Routing Kafka orders by default cannot start on a cluster: it says so at start-up.
    wait_for_cluster().await;
    let (_, db_url) = create_test_database().await;
    let settings = test_settings(
        &db_url,
        "cr:",
        &[
            ("redis.cluster_urls", cluster_urls().into()),
            ("inventory.routing.default_strategy", "PRIORITY".into()),
        ],
    );
    let started = inventory::startup::Application::build(settings).await;
    let error = started.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        error.contains("inventory.routing.default_strategy"),
        "{error}"
    );
}
