use inventory::domain::{SkuId, WarehouseId};
use serde_json::json;

use crate::helpers::{create_test_database, start, test_settings, CuttableProxy};

#[actix_web::test]
async fn liveness_readiness_and_metrics() {
    let app = crate::helpers::spawn_app().await;
    let (status, body) = app.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["status"], "UP");

    let (status, body) = app.get("/health/ready").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["redis"]["status"], "UP");
    assert_eq!(body["data"]["database"]["status"], "UP");
    assert!(body["data"]["journal"]["notPersisted"].is_u64(), "{body}");

    app.stock_in(SkuId(1), WarehouseId(1), 5).await;
    app.get("/inventory/abc").await;
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"inventory_http_requests_total{method="POST",route="/inventory/{skuId}/stock",status="200"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"inventory_http_requests_total{method="GET",route="/inventory/{skuId}",status="400"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("inventory_http_request_duration_seconds_bucket"));
    assert!(metrics.contains("inventory_journal_lag_entries"));
    assert!(
        metrics
            .contains(r#"inventory_stock_adjustments_total{outcome="applied",reason="INBOUND"} 1"#),
        "{metrics}"
    );
}

#[actix_web::test]
async fn readiness_is_degraded_without_the_db_and_down_without_redis_then_recovers() {
    let (db_name, db_url) = create_test_database().await;
    let db_proxy = CuttableProxy::start("127.0.0.1:3306").await;
    let redis_proxy = CuttableProxy::start("127.0.0.1:6379").await;
    let proxied_db = db_proxy.db_url(&db_url);
    let prefix = format!("t{}:", &db_name["inventory_t_".len()..]);
    let mut settings = test_settings(
        &proxied_db,
        &prefix,
        &[
            (
                "redis.url",
                format!("redis://127.0.0.1:{}", redis_proxy.port).into(),
            ),
            ("redis.command_timeout_ms", 300.into()),
            ("database.pool_timeout_ms", 300.into()),
        ],
    );
    settings.database.run_migrations = true;
    let app = start(settings, db_name).await;

    let (status, _) = app.get("/health/ready").await;
    assert_eq!(status, 200);

    db_proxy.cut().await;
    // Without the DB reservations are still decided in Redis: degraded, not out of rotation.
    let (status, body) = app.get("/health/ready").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "DEGRADED");
    assert_eq!(body["data"]["database"]["status"], "DOWN");
    assert_eq!(body["data"]["redis"]["status"], "UP");
    // A request that needs the DB gets a 503 with a code, not a hang or a 500.
    let (status, body) = app.get("/inventory/1").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "STORE_UNAVAILABLE");
    db_proxy.restore();

    redis_proxy.cut().await;
    let (status, body) = app.get("/health/ready").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "STORE_UNAVAILABLE");
    assert_eq!(body["data"]["status"], "DOWN");
    assert_eq!(body["data"]["redis"]["status"], "DOWN");
    redis_proxy.restore();

    // Both back: ready again (the pool and the connection manager reconnect).
    let mut ready = false;
    for _ in 0..50 {
        let (status, _) = app.get("/health/ready").await;
        if status == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "service did not become ready again");
    let (status, body) = app
        .post_json("/inventory/1/stock", &json!({"delta": 1}))
        .await;
    assert_eq!(status, 200, "{body}");
}
