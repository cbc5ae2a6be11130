//! The OpenAPI 3.1 description of the HTTP API. It is generated from the handlers'
//! `#[utoipa::path]` annotations and the request and response types themselves, then the
//! configured limits (order number length, quantities, lines) are written into it at
//! start-up, so the document says what this instance accepts. Served at `/openapi.json`.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::api::{health, inventory, ops, reservations, warehouses, AppState};
use crate::config::Settings;
use crate::error::Code;

/// The success envelope: `code` is "0".
#[derive(ToSchema)]
#[allow(dead_code)] // a description only; responses are built with `error::ok`
pub struct Success<T> {
    #[schema(example = "0", pattern = "^0$")]
    code: String,
    #[schema(example = "success")]
    message: String,
    data: T,
}

/// The error envelope: a stable machine-readable `code` (see the table in the README), a
/// message for people and, for some codes, details in `data`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorEnvelope {
    #[schema(schema_with = error_code_schema)]
    code: String,
    message: String,
    /// Details (the short line, the order's state, the readiness report) or null.
    #[schema(value_type = Option<Object>)]
    data: Option<Value>,
}

fn error_code_schema() -> impl Into<RefOr<utoipa::openapi::schema::Schema>> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(Code::ALL.iter().map(|c| c.as_str())))
        .description(Some("Every code this service answers with"))
}

fn error_response(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                .build(),
        )
        .build()
        .into()
}

fn common_errors(with_auth: bool, with_body: bool) -> BTreeMap<String, RefOr<Response>> {
    let mut out = BTreeMap::new();
    out.insert(
        "400".to_string(),
        error_response(
            "Bad request, nothing changed: INVALID_PARAMETER, MISSING_PARAMETER, INVALID_JSON, QUANTITY_OUT_OF_RANGE",
        ),
    );
    if with_auth {
        out.insert(
            "401".to_string(),
            error_response("UNAUTHORIZED: no or an unknown bearer token"),
        );
        out.insert(
            "403".to_string(),
            error_response("FORBIDDEN: the token's role may not call this"),
        );
    }
    if with_body {
        out.insert(
            "413".to_string(),
            error_response("PAYLOAD_TOO_LARGE: the body is over http.max_body_bytes"),
        );
        out.insert(
            "415".to_string(),
            error_response("UNSUPPORTED_MEDIA_TYPE: the body is not application/json"),
        );
    }
    out.insert(
        "500".to_string(),
        error_response("SYSTEM_ERROR: a bug; nothing was half-applied"),
    );
    out.insert(
        "503".to_string(),
        error_response(
            "Retry later (Retry-After): SERVICE_OVERLOADED, STORE_UNAVAILABLE or TIMEOUT",
        ),
    );
    out
}

/// Errors every read can answer with.
pub struct ReadErrors;

impl utoipa::IntoResponses for ReadErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        common_errors(false, false)
    }
}

/// Errors of a call that needs a token but has no body.
pub struct AuthErrors;

impl utoipa::IntoResponses for AuthErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        common_errors(true, false)
    }
}

/// Errors of a call that needs a token and has a JSON body.
pub struct BodyErrors;

impl utoipa::IntoResponses for BodyErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        common_errors(true, true)
    }
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Inventory reservation service",
        description = "Stock queries, TryReserve -> Confirm -> Release with expiry, admin adjustments and reconciliation. \
Every JSON answer is the envelope {code, message, data}; code \"0\" is success. Mutating calls need \
`Authorization: Bearer <token>`: a service token (reserve, confirm, release) or an admin token (everything)."
    ),
    paths(
        reservations::reserve,
        reservations::confirm,
        reservations::release,
        reservations::list,
        inventory::get_inventory,
        inventory::get_all_warehouses,
        inventory::query_many,
        inventory::sync_to_redis,
        inventory::adjust_stock,
        inventory::set_low_stock_threshold,
        inventory::reconcile,
        ops::overview,
        ops::ledger,
        ops::holds,
        ops::reconcile_reports,
        ops::whoami,
        warehouses::list,
        warehouses::create,
        warehouses::update,
        warehouses::disable,
        health::live,
        health::ready,
        health::metrics,
        openapi_json,
    ),
    components(schemas(ErrorEnvelope)),
    modifiers(&BearerAuth),
    tags(
        (name = "reservations", description = "What the order service calls"),
        (name = "inventory", description = "Stock queries and admin operations"),
        (name = "warehouses", description = "The warehouse register routing chooses among"),
        (name = "health", description = "Liveness, readiness, metrics and this document"),
        (name = "operations", description = "What operators (and the console at /console) read"),
    )
)]
pub struct ApiDoc;

/// The document with this instance's limits written in. Built once at start-up from our
/// own static description; `Value`'s index operators only create missing keys there.
#[allow(clippy::indexing_slicing)]
pub fn document(settings: &Settings) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    let limits = &settings.inventory;
    let schemas = &mut doc["components"]["schemas"];
    let order_no = json!({
        "type": "string", "minLength": 1, "maxLength": limits.max_order_no_len,
        "pattern": ORDER_NO_PATTERN,
        "description": "Printable ASCII without spaces or braces",
    });
    schemas["ReserveBody"]["properties"]["orderNo"] = order_no.clone();
    for (schema, field) in [("ReserveBody", "qty"), ("ItemBody", "qty")] {
        let qty = &mut schemas[schema]["properties"][field];
        qty["minimum"] = json!(1);
        qty["maximum"] = json!(limits.max_qty_per_line);
    }
    schemas["ReserveBody"]["properties"]["items"]["minItems"] = json!(1);
    for schema in ["NewWarehouse", "WarehouseChange"] {
        let props = &mut schemas[schema]["properties"];
        props["code"]["pattern"] = json!("^[A-Za-z0-9_-]{1,32}$");
        props["region"]["pattern"] = json!("^[A-Za-z0-9_-]{1,32}$");
        props["name"]["minLength"] = json!(1);
        props["name"]["maxLength"] = json!(128);
        props["name"]["pattern"] = json!(
            "^[^\\u0000-\\u001f\\u007f]*[^\\s\\u0000-\\u001f\\u007f][^\\u0000-\\u001f\\u007f]*$"
        );
        props["priority"]["minimum"] = json!(0);
        props["priority"]["maximum"] = json!(crate::engine::warehouse::MAX_PRIORITY);
    }
    schemas["NewWarehouse"]["properties"]["id"]["minimum"] = json!(1);
    let threshold = &mut schemas["ThresholdBody"]["properties"]["lowStockThreshold"];
    threshold["minimum"] = json!(0);
    threshold["maximum"] = json!(limits.max_stock_qty);
    // One line (skuId, qty, optional warehouseId) or several (items), never both.
    schemas["ReserveBody"]["oneOf"] = json!([
        {"required": ["skuId", "qty"], "not": {"required": ["items"]}},
        {"required": ["items"], "not": {"anyOf": [
            {"required": ["skuId"]}, {"required": ["qty"]}, {"required": ["warehouseId"]}]}},
    ]);
    schemas["ReserveBody"]["properties"]["items"]["maxItems"] = json!(limits.max_lines_per_order);
    let positions = &mut schemas["QueryBody"]["properties"]["positions"];
    positions["minItems"] = json!(1);
    positions["maxItems"] = json!(limits.max_query_positions);
    let delta = &mut schemas["StockAdjustBody"]["properties"]["delta"];
    delta["minimum"] = json!(-limits.max_adjust_qty);
    delta["maximum"] = json!(limits.max_adjust_qty);
    delta["not"] = json!({"const": 0});
    // Query parameters named orderNo follow the same rule.
    if let Some(paths) = doc["paths"].as_object_mut() {
        for item in paths.values_mut() {
            for op in item
                .as_object_mut()
                .into_iter()
                .flat_map(|o| o.values_mut())
            {
                let params = op.get_mut("parameters").and_then(Value::as_array_mut);
                for param in params.into_iter().flatten() {
                    if param["name"] == "orderNo" {
                        param["schema"] = order_no.clone();
                    }
                }
            }
        }
    }
    doc
}

/// What `check_order_no` accepts: `!`..`~` without `{` and `}`.
const ORDER_NO_PATTERN: &str = "^[!-z|~]+$";

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub async fn openapi_json(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.openapi.clone())
}

/// Lists every operation as "METHOD /path", sorted.
pub fn operations(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for method in item.as_object().into_iter().flat_map(|o| o.keys()) {
                out.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_from_the_settings_are_in_the_document() {
        let mut settings =
            Settings::defaults_with(&[("auth.disabled", true.into())]).expect("defaults");
        settings.inventory.max_qty_per_line = 77;
        settings.inventory.max_lines_per_order = 5;
        let doc = document(&settings);
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["ItemBody"]["properties"]["qty"]["maximum"], 77);
        assert_eq!(schemas["ReserveBody"]["properties"]["items"]["maxItems"], 5);
        assert_eq!(doc["openapi"], "3.1.0");
        let codes = &schemas["ErrorEnvelope"]["properties"]["code"]["enum"];
        assert_eq!(codes.as_array().map(Vec::len), Some(Code::ALL.len()));
    }

    #[test]
    fn the_order_no_pattern_matches_check_order_no() {
        // The pattern's character class, checked against the engine's rule byte by byte.
        for b in 0u8..128 {
            let c = b as char;
            let pattern_allows = matches!(b, b'!'..=b'z' | b'|' | b'~');
            let engine_allows =
                crate::engine::reservation::check_order_no(&c.to_string(), 64).is_ok();
            assert_eq!(pattern_allows, engine_allows, "{c:?}");
        }
    }
}
