//! The warehouse register (admin): create, repeat, conflicts, update, disable, bad input
//! that changes nothing, and ids already used by stock positions.

use inventory::domain::{SkuId, WarehouseId};
use serde_json::{json, Value};

use crate::helpers::spawn_app;

fn ids_and_enabled(list: &Value) -> Vec<(i64, bool)> {
    list["data"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|w| (w["id"].as_i64().unwrap(), w["enabled"].as_bool().unwrap()))
        .collect()
}

#[actix_web::test]
async fn warehouses_are_created_changed_and_disabled_and_bad_input_changes_nothing() {
    let app = spawn_app().await;
    // Warehouse 7 already holds stock: it can be registered under its id.
    app.stock_in(SkuId(501), WarehouseId(7), 5).await;

    let east =
        json!({"id": 7, "code": "SH-1", "name": "Shanghai 1", "region": "east", "priority": 10});
    let (status, body) = app.post_json("/warehouses", &east).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["existed"], false);
    assert_eq!(body["data"]["enabled"], true);
    assert_eq!(body["data"]["region"], "east");
    // The same body again: existed, nothing changed.
    let (status, body) = app.post_json("/warehouses", &east).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["existed"], true);
    // Another warehouse under a taken id, or a taken code: 409, nothing changed.
    for clash in [
        json!({"id": 7, "code": "SH-2", "name": "Shanghai 2"}),
        json!({"id": 8, "code": "SH-1", "name": "Shanghai 2"}),
    ] {
        let (status, body) = app.post_json("/warehouses", &clash).await;
        assert_eq!(status, 409, "{clash}: {body}");
        assert_eq!(body["code"], "WAREHOUSE_CONFLICT", "{body}");
    }
    let (status, body) = app
        .post_json("/warehouses", &json!({"id": 9, "code": "BJ-1", "name": "Beijing 1", "region": "north", "priority": 5}))
        .await;
    assert_eq!(status, 200, "{body}");

    // Bad input: 400 with a code, and the register is unchanged.
    for (bad, code) in [
        (
            json!({"id": 0, "code": "X", "name": "x"}),
            "INVALID_PARAMETER",
        ),
        (
            json!({"id": 10, "code": "has space", "name": "x"}),
            "INVALID_PARAMETER",
        ),
        (
            json!({"id": 10, "code": "X", "name": "  "}),
            "INVALID_PARAMETER",
        ),
        (
            json!({"id": 10, "code": "X", "name": "x", "priority": -1}),
            "INVALID_PARAMETER",
        ),
        (
            json!({"id": 10, "code": "X", "name": "x", "colour": "red"}),
            "INVALID_JSON",
        ),
        (json!({"code": "X", "name": "x"}), "INVALID_JSON"),
    ] {
        let (status, body) = app.post_json("/warehouses", &bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["code"], code, "{bad}: {body}");
    }
    let (status, list) = app.get("/warehouses").await;
    assert_eq!(status, 200, "{list}");
    // By priority: BJ-1 (5) before SH-1 (10).
    assert_eq!(ids_and_enabled(&list), [(9, true), (7, true)]);

    // Update: only the fields given change; region null clears it.
    let (status, body) = app
        .put_json("/warehouses/7", &json!({"priority": 1, "region": null}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["priority"], 1);
    assert!(body["data"]["region"].is_null(), "{body}");
    assert_eq!(body["data"]["code"], "SH-1");
    assert_eq!(body["data"]["name"], "Shanghai 1");
    let (status, body) = app
        .put_json("/warehouses/7", &json!({"code": "BJ-1"}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "WAREHOUSE_CONFLICT");
    let (status, body) = app
        .put_json("/warehouses/7", &json!({"priority": 2_000_000}))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app
        .put_json("/warehouses/99", &json!({"priority": 1}))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "WAREHOUSE_NOT_FOUND");

    // Disable: listed as disabled; a repeat is harmless.
    for _ in 0..2 {
        let (status, body) = app.post("/warehouses/9/disable").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["enabled"], false);
    }
    let (status, body) = app.post("/warehouses/99/disable").await;
    assert_eq!(status, 404, "{body}");
    let (_, list) = app.get("/warehouses").await;
    assert_eq!(ids_and_enabled(&list), [(7, true), (9, false)]);

    // The stock of warehouse 7 is untouched by all this.
    let audits = app
        .assert_invariants(&[inventory::domain::SkuKey::new(WarehouseId(7), SkuId(501))])
        .await;
    assert_eq!(audits[0].db_available, Some(5));
}

#[actix_web::test]
async fn warehouse_admin_needs_an_admin_token() {
    let app = spawn_app().await;
    let response = reqwest::Client::new()
        .post(app.url("/warehouses"))
        .json(&json!({"id": 3, "code": "A", "name": "a"}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 401);
    let (_, list) = app.get("/warehouses").await;
    assert_eq!(ids_and_enabled(&list), []);
}
