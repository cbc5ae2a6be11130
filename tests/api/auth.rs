//! Who may call what: 401 without a valid token, 403 for the wrong role, nothing changed.

use inventory::domain::SkuKey;
use inventory::domain::{SkuId, WarehouseId};
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, SERVICE_TOKEN};

#[actix_web::test]
async fn mutations_need_a_token_of_the_right_role_and_reads_are_open() {
    let app = spawn_app().await;
    let key = SkuKey::new(WarehouseId(1), SkuId(91));
    app.stock_in(SkuId(91), WarehouseId(1), 10).await;
    app.drain_journal().await;
    let before = app.audit(key).await;
    let anonymous = reqwest::Client::new();
    let url = |path: &str| app.url(path);

    // No token, a bad token, a malformed header: 401.
    for header in [None, Some("Bearer not-a-real-token-123"), Some("Basic abc")] {
        let mut request = anonymous
            .post(url("/inventory/reserve"))
            .json(&json!({"orderNo": "A-1", "skuId": 91, "qty": 1}));
        if let Some(h) = header {
            request = request.header("Authorization", h);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{header:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["code"], "UNAUTHORIZED");
    }
    // Refused before the body is even read: malformed JSON without a token is still 401.
    let r = anonymous
        .post(url("/inventory/91/stock"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // The service token may reserve, confirm and release, not adjust stock.
    let service = |path: &str| {
        anonymous
            .post(url(path))
            .header("Authorization", format!("Bearer {SERVICE_TOKEN}"))
    };
    let r = service("/inventory/reserve")
        .json(&json!({"orderNo": "A-2", "skuId": 91, "qty": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = service("/inventory/reservations/release?orderNo=A-2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    for path in [
        "/inventory/91/stock",
        "/inventory/91/sync",
        "/inventory/reconcile",
    ] {
        let r = service(path)
            .json(&json!({"delta": 5}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], "FORBIDDEN");
    }
    // Reads, health and metrics are open.
    for path in [
        "/inventory/91",
        "/inventory/91/all",
        "/inventory/reservations?orderNo=A-2",
        "/health",
        "/metrics",
    ] {
        let r = anonymous.get(url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
    }
    app.drain_journal().await;
    let after = app.audit(key).await;
    assert_eq!(
        after.db_available, before.db_available,
        "refused calls changed stock"
    );
    assert!(after.is_clean(), "{after:#?}");
}

#[actix_web::test]
async fn reads_can_be_protected_too() {
    let app = spawn_app_with(&[("auth.protect_reads", true.into())]).await;
    let r = reqwest::Client::new()
        .get(app.url("/inventory/91"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (status, _) = app.get("/health").await;
    assert_eq!(status, 200);
}
