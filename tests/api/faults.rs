//! Fault injection: redis-server killed with kill -9 under load and restarted from its AOF.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use inventory::domain::SkuKey;
use inventory::store::models::Reservation;

use crate::crash::{free_port, reserve_until_dead, start_service_with, stock_in};
use crate::helpers::{create_test_database, test_settings};

fn start_redis(port: u16, dir: &std::path::Path) -> Child {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--dir", dir.to_str().expect("utf-8 path")])
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[actix_web::test]
async fn redis_killed_and_restarted_under_load_loses_no_acknowledged_reservation() {
    let dir = std::env::temp_dir().join(format!("inv-redis-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let mut redis_server = start_redis(port, &dir);
    let redis_url = format!("redis://127.0.0.1:{port}");
    let (db_name, db_url) = create_test_database().await;
    let prefix = format!("t{}:", &db_name["inventory_t_".len()..]);
    let service = start_service_with(
        &db_url,
        &prefix,
        &[
            ("INVENTORY__REDIS__URL", &redis_url),
            ("INVENTORY__REDIS__COMMAND_TIMEOUT_MS", "500"),
        ],
    )
    .await;
    let key = SkuKey::new(1, 779);
    stock_in(&service.base, 779, 100_000).await;

    let base = service.base.clone();
    let load = tokio::spawn(async move { reserve_until_dead(&base, "RK", 16_000, 779).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = redis_server.kill(); // SIGKILL
    let _ = redis_server.wait();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut redis_server = start_redis(port, &dir);
    let acknowledged: HashSet<String> = load.await.expect("load").into_iter().collect();
    assert!(!acknowledged.is_empty());

    // After the restart the service serves again and the journal drains.
    let mut settings = test_settings(&db_url, &prefix, &[]);
    settings.redis.url = inventory::config::Secret::new(redis_url.clone());
    let redis = inventory::store::redis::RedisStore::connect(&settings.redis)
        .await
        .expect("redis");
    let more = reserve_until_dead(&service.base, "AFTER", 80, 779).await;
    assert_eq!(
        more.len(),
        80,
        "the service serves again after Redis is back"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lag = redis
            .journal_lag(inventory::engine::persistence::PERSIST_GROUP)
            .await
            .expect("lag");
        if lag.not_persisted() == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "journal did not drain: {lag:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pool = inventory::store::db::build_pool(&settings.database).expect("pool");
    let audit = inventory::engine::audit::audit_position(&redis, &pool, key)
        .await
        .expect("audit");
    assert!(audit.is_clean(), "{audit:#?}");
    let mut conn = inventory::store::db::connection(&pool).await.expect("conn");
    let in_db: HashSet<String> = Reservation::for_position(&mut conn, key)
        .await
        .expect("rows")
        .into_iter()
        .map(|r| r.order_no)
        .collect();
    let missing: Vec<&String> = acknowledged.difference(&in_db).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    drop(service);
    let _ = redis_server.kill();
    let _ = redis_server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
