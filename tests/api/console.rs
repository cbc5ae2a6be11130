//! The console's files and the read endpoints it uses (`/ops/*`, `/inventory/ledger`,
//! `/inventory/holds`, `/inventory/reconcile/reports`), over HTTP against the real stores.
//! The page itself is driven in a real browser in `browser.rs`.

use inventory::domain::{SkuId, SkuKey, WarehouseId};
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, ADMIN_TOKEN, SERVICE_TOKEN};

#[actix_web::test]
async fn the_console_is_served_with_a_strict_policy() {
    let app = spawn_app_with(&[]).await;
    let client = reqwest::Client::new();
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let response = client.get(app.url(path)).send().await.expect("get");
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let h = response.headers();
        let header = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        assert!(header("content-type").starts_with(kind), "{path}");
        let csp = header("content-security-policy");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("http"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(header("x-frame-options"), "DENY");
        assert_eq!(header("cache-control"), "no-store");
    }
    // The page has no inline script or style for the policy to refuse.
    let page = client
        .get(app.url("/console"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(!page.contains("<script>") && !page.contains("style=") && !page.contains("onclick"));
    // An authenticated API answer is not cached.
    let response = app
        .client
        .get(app.url("/ops/whoami"))
        .send()
        .await
        .expect("get");
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
}

async fn whoami(app: &crate::helpers::TestApp, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(app.url("/ops/whoami"));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.expect("get");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[actix_web::test]
async fn the_operations_endpoints_answer_what_the_console_shows() {
    // Holds of 5 minutes: they count as ending in the next 10.
    let app = spawn_app_with(&[("reservation.expire_after_ms", 300_000.into())]).await;
    for (token, role) in [
        (Some(ADMIN_TOKEN), "admin"),
        (Some(SERVICE_TOKEN), "service"),
        (None, "anonymous"),
    ] {
        let (status, body) = whoami(&app, token).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["role"], role);
    }
    let (status, body) = whoami(&app, Some("not-a-token-at-all-x")).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["code"], "UNAUTHORIZED");

    let sku = 4601;
    let key = SkuKey::new(WarehouseId(1), SkuId(sku));
    app.stock_in(SkuId(sku), WarehouseId(1), 20).await;
    for order in ["OPS-1", "OPS-2"] {
        let (status, body) = app
            .post_json(
                "/inventory/reserve",
                &json!({"orderNo": order, "skuId": sku, "qty": 3}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    app.drain_journal().await;

    // The ledger, newest first, paged.
    let (status, page) = app
        .get(&format!("/inventory/ledger?skuId={sku}&limit=2"))
        .await;
    assert_eq!(status, 200, "{page}");
    let reasons: Vec<&str> = page["data"]["rows"]
        .as_array()
        .map(|r| r.iter().filter_map(|x| x["reason"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(reasons, vec!["RESERVE", "RESERVE"]);
    let before = page["data"]["nextBeforeId"].as_i64().expect("a next page");
    let (_, older) = app
        .get(&format!(
            "/inventory/ledger?skuId={sku}&warehouseId=1&limit=2&beforeId={before}"
        ))
        .await;
    assert_eq!(older["data"]["rows"][0]["reason"], "INBOUND", "{older}");
    assert_eq!(older["data"]["nextBeforeId"], Value::Null);
    let (_, by_order) = app.get("/inventory/ledger?orderNo=OPS-2").await;
    assert_eq!(by_order["data"]["rows"].as_array().map(Vec::len), Some(1));
    assert_eq!(by_order["data"]["rows"][0]["orderNo"], "OPS-2");
    for bad in [
        "/inventory/ledger",
        "/inventory/ledger?skuId=0",
        "/inventory/ledger?skuId=1&limit=0",
        "/inventory/ledger?skuId=1&limit=201",
        "/inventory/ledger?orderNo=%C3%97%C3%B8",
        "/inventory/ledger?orderNo=a%20b",
    ] {
        let (status, body) = app.get(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // Holds, soonest first, by SKU.
    let (status, holds) = app.get(&format!("/inventory/holds?skuId={sku}")).await;
    assert_eq!(status, 200, "{holds}");
    let orders: Vec<&str> = holds["data"]
        .as_array()
        .map(|h| h.iter().filter_map(|x| x["orderNo"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(orders, vec!["OPS-1", "OPS-2"]);
    let (_, none) = app.get("/inventory/holds?skuId=999999").await;
    assert_eq!(none["data"], json!([]));

    // The overview counts them.
    let (status, o) = app.get("/ops/overview").await;
    assert_eq!(status, 200, "{o}");
    assert_eq!(o["data"]["readiness"]["status"], "UP");
    assert_eq!(o["data"]["reservations"]["reserved"], 2);
    assert_eq!(o["data"]["holdsEndingIn10Min"], 2);
    assert_eq!(
        o["data"]["journalOldestAgeMs"], 0,
        "the journal was drained"
    );
    assert!(o["data"]["instance"]
        .as_str()
        .is_some_and(|i| !i.is_empty()));

    // Reconciliation reports: none, then the run just made.
    let (_, reports) = app.get("/inventory/reconcile/reports").await;
    assert_eq!(reports["data"], json!([]));
    let (status, run) = app
        .post(&format!("/inventory/reconcile?skuId={sku}&repair=false"))
        .await;
    assert_eq!(status, 200, "{run}");
    let (_, reports) = app.get("/inventory/reconcile/reports").await;
    assert_eq!(reports["data"][0]["trigger"], "request", "{reports}");
    assert_eq!(reports["data"][0]["report"]["differences"], json!([]));
    assert_eq!(reports["data"][0]["instance"], o["data"]["instance"]);
    app.assert_invariants(&[key]).await;
    // Another instance on the same DB lists the run too (the leader runs the scheduled
    // ones; an operator's console may reach any instance).
    let other = crate::helpers::start(app.settings.clone(), app.db_name.clone()).await;
    let (_, seen) = other.get("/inventory/reconcile/reports").await;
    assert_eq!(seen["data"][0]["instance"], o["data"]["instance"], "{seen}");
}

#[actix_web::test]
async fn with_protected_reads_the_operations_endpoints_need_a_token() {
    let app = spawn_app_with(&[("auth.protect_reads", true.into())]).await;
    let anonymous = reqwest::Client::new();
    for path in [
        "/ops/overview",
        "/inventory/ledger?skuId=1",
        "/inventory/holds",
        "/inventory/reconcile/reports",
    ] {
        let response = anonymous.get(app.url(path)).send().await.expect("get");
        assert_eq!(response.status().as_u16(), 401, "{path}");
        let (status, body) = app.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // whoami stays open: it is how the page learns that reads need a token.
    let (status, body) = whoami(&app, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["readsProtected"], true);
}
