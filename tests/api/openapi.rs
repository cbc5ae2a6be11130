//! The OpenAPI document is served, describes exactly the routes the router has, and matches
//! the copy in docs/ (regenerate with `UPDATE_OPENAPI=1 cargo test --test api openapi`).

use serde_json::Value;

use crate::helpers::spawn_app;

const DOC_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");

#[actix_web::test]
async fn the_document_lists_exactly_the_routes_the_router_serves() {
    let app = spawn_app().await;
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let documented = inventory::api::openapi::operations(&doc);
    let routed = inventory::api::registered_routes();
    assert_eq!(
        documented, routed,
        "the OpenAPI paths and the router disagree"
    );
    assert!(routed.len() >= 13, "{routed:?}");

    // Every documented operation reaches its handler: no 404 ROUTE_NOT_FOUND, no 405.
    for operation in &documented {
        let (method, path) = operation.split_once(' ').expect("METHOD /path");
        let url = app.url(&path.replace("{skuId}", "1"));
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = app
            .client
            .request(method, url)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            status != 405 && body["code"] != "ROUTE_NOT_FOUND",
            "{operation}: {status} {body}"
        );
    }

    // Every error code of the table is in the document's enum.
    let codes = doc["components"]["schemas"]["ErrorEnvelope"]["properties"]["code"]["enum"]
        .as_array()
        .expect("code enum")
        .len();
    assert_eq!(codes, inventory::error::Code::ALL.len());
}

#[actix_web::test]
async fn the_served_document_matches_docs_openapi_json() {
    let app = spawn_app().await;
    let (status, served) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    let pretty = serde_json::to_string_pretty(&served).expect("json") + "\n";
    if std::env::var("UPDATE_OPENAPI").is_ok() {
        std::fs::write(DOC_PATH, &pretty).expect("write docs/openapi.json");
    }
    let committed = std::fs::read_to_string(DOC_PATH).unwrap_or_default();
    let committed: Value = serde_json::from_str(&committed).unwrap_or(Value::Null);
    assert!(
        committed == served,
        "docs/openapi.json is out of date: run `UPDATE_OPENAPI=1 cargo test --test api openapi` and commit it"
    );
}
