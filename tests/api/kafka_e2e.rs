//! End to end through a real Kafka-protocol broker process (tansu, started by
//! `make services` / `.ci/run`; KAFKA_BROKERS names it): 1,000 ORDER_CREATED for a SKU with
//! 300 units give exactly 300 STOCK_RESERVED and 700 STOCK_RESERVE_FAILED, and the DB agrees.

use inventory::domain::{SkuId, WarehouseId};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use inventory::domain::SkuKey;

use crate::helpers::spawn_app_with;
use crate::kafka::{order_created, KafkaClient};

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

#[actix_web::test]
async fn a_thousand_orders_for_three_hundred_units_through_a_real_broker() {
    let brokers = brokers();
    // Topics of their own, so reruns against the same broker start clean.
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let topic = |name: &str| format!("e2e-{run}-{name}");
    let order_topic = topic("ORDER_TOPIC");
    let inventory_topic = topic("INVENTORY_TOPIC");
    let app = spawn_app_with(&[
        ("kafka.enabled", true.into()),
        ("kafka.brokers", brokers.clone().into()),
        ("kafka.group_id", format!("inventory-e2e-{run}").into()),
        ("kafka.order_topic", order_topic.clone().into()),
        ("kafka.payment_topic", topic("PAYMENT_TOPIC").into()),
        ("kafka.aftersales_topic", topic("AFTERSALES_TOPIC").into()),
        ("kafka.inventory_topic", inventory_topic.clone().into()),
        ("kafka.dead_letter_topic", topic("INVENTORY_DLQ").into()),
        ("kafka.topic_partitions", 4.into()),
    ])
    .await;
    let key = SkuKey::new(WarehouseId(1), SkuId(8001));
    app.stock_in(SkuId(8001), WarehouseId(1), 300).await;
    let kafka = KafkaClient::new(&brokers);

    let messages: Vec<(String, String)> = (0..1000)
        .map(|n| {
            let order = format!("E2E-{run}-{n}");
            let message = order_created(
                &uuid::Uuid::new_v4().simple().to_string(),
                &order,
                r#"[{"skuId":8001,"qty":1}]"#,
            );
            (order, message)
        })
        .collect();
    let started = Instant::now();
    futures_util::future::join_all(
        messages
            .iter()
            .map(|(order, message)| kafka.send(&order_topic, "ORDER_CREATED", order, message)),
    )
    .await;
    let out = kafka
        .collect(&inventory_topic, 1000, Duration::from_secs(120))
        .await;
    let elapsed = started.elapsed();
    eprintln!(
        "e2e: {} outcomes in {:.2} s = {:.0} orders/s (ORDER_CREATED in to outcome out)",
        out.len(),
        elapsed.as_secs_f64(),
        out.len() as f64 / elapsed.as_secs_f64()
    );
    let mut tags: HashMap<String, String> = HashMap::new();
    for m in &out {
        tags.insert(m.key.clone(), m.headers["tag"].clone());
    }
    assert_eq!(out.len(), 1000, "every order got exactly one outcome");
    assert_eq!(tags.len(), 1000);
    let reserved = tags.values().filter(|t| *t == "STOCK_RESERVED").count();
    let failed = tags
        .values()
        .filter(|t| *t == "STOCK_RESERVE_FAILED")
        .count();
    assert_eq!((reserved, failed), (300, 700));
    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].lines_reserved, 300);
    assert_eq!(audits[0].db_available, Some(0));
}
