//! Log lines carry the trace id the ledger keeps: the real binary logging JSON, a request
//! with `X-Trace-Id` and a Kafka message with a traceId, then each ledger row's trace id is
//! looked up in the log (docs/operations.md, "Logs").

use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use serde_json::{json, Value};

use crate::crash::{try_start_service_with, LOG_FILE_ENV};
use crate::helpers::{create_test_database, test_settings, ADMIN_TOKEN};
use crate::kafka::{mid, order_created, KafkaClient};
use inventory::domain::{SkuId, SkuKey, WarehouseId};
use inventory::store::models::LedgerEntry;

/// The JSON log lines (one object per line) whose span has `trace_id`.
fn lines_with_trace(path: &std::path::Path, trace_id: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["span"]["trace_id"] == trace_id)
        .collect()
}

#[actix_web::test]
async fn a_trace_id_from_the_ledger_finds_its_request_and_kafka_log_lines() {
    let (db_name, db_url) = create_test_database().await;
    let prefix = format!("t{}:", &db_name["inventory_t_".len()..]);
    let cluster = MockCluster::new(1).expect("mock cluster");
    for topic in [
        "ORDER_TOPIC",
        "PAYMENT_TOPIC",
        "AFTERSALES_TOPIC",
        "INVENTORY_TOPIC",
        "INVENTORY_DLQ",
    ] {
        cluster.create_topic(topic, 1, 1).expect("topic");
    }
    let brokers = cluster.bootstrap_servers();
    let log = std::env::temp_dir().join(format!("inventory-log-{}.jsonl", mid()));
    let log_text = log.display().to_string();
    let service = try_start_service_with(
        &db_url,
        &prefix,
        &[
            (LOG_FILE_ENV, &log_text),
            ("INVENTORY__LOG__FORMAT", "json"),
            (
                "RUST_LOG",
                "warn,inventory::access=debug,inventory::events::handlers=debug",
            ),
            ("INVENTORY__DATABASE__RUN_MIGRATIONS", "true"),
            ("INVENTORY__KAFKA__ENABLED", "true"),
            ("INVENTORY__KAFKA__BROKERS", &brokers),
            ("INVENTORY__KAFKA__CREATE_TOPICS", "false"),
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let http = reqwest::Client::new();
    let stock = http
        .post(format!("{}/inventory/71/stock?warehouseId=1", service.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"delta": 10, "reason": "INBOUND"}))
        .send()
        .await
        .expect("stock in");
    assert_eq!(stock.status(), 200);

    // Over HTTP, with the caller's trace id.
    let reserve = http
        .post(format!("{}/inventory/reserve", service.base))
        .bearer_auth(ADMIN_TOKEN)
        .header("X-Trace-Id", "trace-http-1")
        .json(&json!({"orderNo": "LOG-HTTP", "skuId": 71, "warehouseId": 1, "qty": 2}))
        .send()
        .await
        .expect("reserve");
    assert_eq!(reserve.status(), 200);
    // Confirm without a trace id: a new one, the same in the ledger and the log.
    let confirm = http
        .post(format!(
            "{}/inventory/reservations/confirm?orderNo=LOG-HTTP",
            service.base
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("confirm");
    assert_eq!(confirm.status(), 200);

    // Over Kafka: the envelope's traceId is "trace-LOG-KAFKA" (kafka::order_created).
    KafkaClient::new(&brokers)
        .send(
            "ORDER_TOPIC",
            "ORDER_CREATED",
            "LOG-KAFKA",
            &order_created(&mid(), "LOG-KAFKA", r#"[{"skuId":71,"qty":1}]"#),
        )
        .await;

    // Every ledger row of the three operations, then its log lines.
    let settings = test_settings(&db_url, &prefix, &[]);
    let pool = inventory::store::db::build_pool(&settings.database).expect("pool");
    let key = SkuKey::new(WarehouseId(1), SkuId(71));
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows: Vec<LedgerEntry> = loop {
        let mut conn = inventory::store::db::connection(&pool)
            .await
            .expect("db connection");
        let rows: Vec<LedgerEntry> = LedgerEntry::for_position(&mut conn, key)
            .await
            .expect("ledger")
            .into_iter()
            .filter(|r| r.order_no.as_deref().is_some_and(|o| o.starts_with("LOG-")))
            .collect();
        // RESERVE and CONFIRM of LOG-HTTP, RESERVE of LOG-KAFKA.
        if rows.len() >= 3 {
            break rows;
        }
        assert!(Instant::now() < deadline, "ledger rows missing: {rows:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for row in &rows {
        let order_no = row.order_no.as_deref().expect("orderNo");
        let trace_id = row
            .trace_id
            .as_deref()
            .expect("a ledger row has a trace id");
        if order_no == "LOG-HTTP" && row.reason == "RESERVE" {
            assert_eq!(trace_id, "trace-http-1");
        }
        if order_no == "LOG-KAFKA" {
            assert_eq!(trace_id, "trace-LOG-KAFKA");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = lines_with_trace(&log, trace_id);
            if lines.iter().any(|l| l["span"]["order_no"] == order_no) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with trace_id {trace_id} and order_no {order_no}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    drop(service);
    let _ = std::fs::remove_file(&log);
}
