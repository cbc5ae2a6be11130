//! `/inventory/reserve` and `/inventory/reservations...`: TryReserve, Confirm, Release.

use crate::domain::{SkuId, WarehouseId};
use std::collections::HashMap;

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::api::params::{check_len, required_str, trace_id};
use crate::api::AppState;
use crate::domain::{LedgerReason, SkuKey};
use crate::engine::confirm_partial::ConfirmItem;
use crate::engine::reservation::{
    ReservationView, ReserveOutcome, ReserveRequest, RoutedRequest, TransitionOutcome,
};
use crate::engine::routing::{Ask, Routing};
use crate::engine::EngineError;
use crate::error::{ok, ApiError, Code};
use crate::store::reservations::OrderLine;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ItemBody {
    #[schema(minimum = 1)]
    pub sku_id: i64,
    /// Default: inventory.default_warehouse_id; with `routing`, the strategy chooses.
    #[schema(minimum = 1)]
    pub warehouse_id: Option<i64>,
    pub qty: i64,
}

/// The reference's single-line body, or `items` for several lines (not both).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReserveBody {
    pub order_no: String,
    #[schema(minimum = 1)]
    pub sku_id: Option<i64>,
    #[schema(minimum = 1)]
    pub warehouse_id: Option<i64>,
    pub qty: Option<i64>,
    pub items: Option<Vec<ItemBody>>,
    /// Warehouse routing: lines without a warehouseId are placed by the strategy (a line
    /// with one is pinned there). Without it, a missing warehouseId is the default
    /// warehouse.
    pub routing: Option<Routing>,
}

/// The lines as given: (skuId, warehouseId or none, qty).
fn asks_of(body: &ReserveBody) -> Result<Vec<Ask>, ApiError> {
    let line = |sku_id: i64, warehouse_id: Option<i64>, qty: i64| Ask {
        sku_id,
        qty,
        warehouse_id,
    };
    match (&body.items, body.sku_id, body.qty) {
        (Some(items), None, None) if body.warehouse_id.is_none() => Ok(items
            .iter()
            .map(|i| line(i.sku_id, i.warehouse_id, i.qty))
            .collect()),
        (None, Some(sku), Some(qty)) => Ok(vec![line(sku, body.warehouse_id, qty)]),
        (None, _, _) => Err(ApiError::new(
            Code::MissingParameter,
            "give skuId and qty, or items",
        )),
        _ => Err(ApiError::invalid(
            "give either skuId/warehouseId/qty or items, not both",
        )),
    }
}

fn lines_of(asks: &[Ask], default_warehouse: i64) -> Vec<OrderLine> {
    asks.iter()
        .map(|a| OrderLine {
            key: SkuKey::new(
                WarehouseId(a.warehouse_id.unwrap_or(default_warehouse)),
                SkuId(a.sku_id),
            ),
            qty: a.qty,
        })
        .collect()
}

/// TryReserve: holds every line of an order or none (`POST /inventory/reserve`).
///
/// Idempotent per order line: a repeat answers 200 with `existed: true` and changes nothing.
/// With `routing`, the warehouses are chosen in the same Redis call that holds the stock
/// (`items` name each line's warehouse); a repeat answers the same warehouses.
#[utoipa::path(post, path = "/inventory/reserve", tag = "reservations",
    request_body = ReserveBody,
    params(("X-Trace-Id" = Option<String>, Header, description = "Trace id kept in the ledger (1-64 of [A-Za-z0-9_-]); a new one otherwise")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Held (or held before: existed)", body = crate::api::openapi::Success<ReserveOutcome>),
        (status = 404, description = "INVENTORY_NOT_FOUND: a line names a position with no stock record", body = crate::api::openapi::ErrorEnvelope),
        (status = 409, description = "INSUFFICIENT_STOCK (data names the short line; with routing, failedWarehouseId is null and availableQty is what the candidate warehouses offered), IDEMPOTENCY_CONFLICT (same orderNo, other lines), INVALID_RESERVATION_STATUS (the order was cancelled) or NO_ROUTABLE_WAREHOUSE (routing: no enabled warehouse, in the region if given, stocks a line's SKU)", body = crate::api::openapi::ErrorEnvelope),
        (status = 501, description = "UNSUPPORTED_ON_CLUSTER: routing was asked on a Redis Cluster", body = crate::api::openapi::ErrorEnvelope),
        crate::api::openapi::BodyErrors,
    ))]
pub async fn reserve(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<ReserveBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    crate::api::request_span::record_order_no(&body.order_no);
    let asks = asks_of(&body)?;
    let order_no = body.order_no.clone();
    let result = match body.routing {
        Some(routing) => {
            state
                .reservations
                .reserve_routed(RoutedRequest {
                    order_no: body.order_no,
                    asks,
                    routing,
                    trace_id: trace_id(&req),
                })
                .await
        }
        None => {
            let lines = lines_of(&asks, state.settings.inventory.default_warehouse_id);
            state
                .reservations
                .reserve(ReserveRequest {
                    order_no: body.order_no,
                    lines,
                    trace_id: trace_id(&req),
                })
                .await
        }
    };
    match result {
        Ok(outcome) => Ok(ok(outcome)),
        // A short line is a normal business outcome: FAILED, with which line and why.
        Err(EngineError::InsufficientStock {
            key,
            available,
            requested,
        }) => {
            let data = json!({
                "orderNo": order_no,
                "status": "FAILED",
                "failedSkuId": key.sku_id,
                "failedWarehouseId": key.warehouse_id,
                "requestedQty": requested,
                "availableQty": available,
            });
            let e = EngineError::InsufficientStock {
                key,
                available,
                requested,
            };
            Err(ApiError::from(e).with_data(data))
        }
        Err(e @ EngineError::RoutedInsufficient { .. }) => {
            let EngineError::RoutedInsufficient {
                sku_id,
                requested,
                available,
            } = e
            else {
                return Err(ApiError::from(e));
            };
            let data = json!({
                "orderNo": order_no,
                "status": "FAILED",
                "failedSkuId": sku_id,
                "failedWarehouseId": null,
                "requestedQty": requested,
                "availableQty": available,
            });
            Err(ApiError::from(e).with_data(data))
        }
        Err(e) => {
            // A retryable error decided nothing: the order may still be held by a retry.
            let failed = !e.is_retryable();
            let mut api = ApiError::from(e);
            if failed && api.data.is_null() {
                api = api.with_data(json!({"orderNo": order_no, "status": "FAILED"}));
            }
            Err(api)
        }
    }
}

/// `POST /inventory/reservations/confirm`'s optional body: the units that ship per line.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfirmBody {
    /// Lines not named ship nothing (their units go back to sale).
    pub items: Vec<ConfirmItem>,
}

/// An optional JSON body: none when empty.
fn optional_json<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    body: &web::Bytes,
) -> Result<Option<T>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    if req.content_type() != "application/json" {
        return Err(ApiError::new(
            Code::UnsupportedMediaType,
            "expected Content-Type: application/json",
        ));
    }
    serde_json::from_slice(body).map(Some).map_err(|e| {
        ApiError::new(
            Code::InvalidJson,
            format!(
                "invalid JSON body: {}",
                crate::api::without_type_names(&e.to_string())
            ),
        )
    })
}

/// Confirm: the held units are sold (`POST /inventory/reservations/confirm?orderNo=...`).
///
/// Without a body every line is confirmed whole. With `{"items": [...]}` it confirms those
/// units (at most what each line holds) and releases the rest of each line (ledger reason
/// RELEASE, remark PARTIAL_CONFIRM); `items` in the answer are then the units sold. A
/// repeat with the same units answers `existed`; other units after a confirm are 409
/// IDEMPOTENCY_CONFLICT.
#[utoipa::path(post, path = "/inventory/reservations/confirm", tag = "reservations",
    params(("orderNo" = String, Query, description = "The order to confirm"), ("X-Trace-Id" = Option<String>, Header, description = "Trace id kept in the ledger (1-64 of [A-Za-z0-9_-]); a new one otherwise")),
    request_body(content = Option<ConfirmBody>, description = "Optional: the units that ship (a partial confirm)"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Confirmed (or confirmed before: existed)", body = crate::api::openapi::Success<TransitionOutcome>),
        (status = 404, description = "RESERVATION_NOT_FOUND", body = crate::api::openapi::ErrorEnvelope),
        (status = 409, description = "INVALID_RESERVATION_STATUS: released or expired; IDEMPOTENCY_CONFLICT: confirmed before with other units", body = crate::api::openapi::ErrorEnvelope),
        (status = 501, description = "UNSUPPORTED_ON_CLUSTER: a partial confirm on a Redis Cluster", body = crate::api::openapi::ErrorEnvelope),
        crate::api::openapi::BodyErrors,
    ))]
pub async fn confirm(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<HashMap<String, String>>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let order_no = required_str(&query, "orderNo", 64)?;
    let partial: Option<ConfirmBody> = optional_json(&req, &body)?;
    let outcome = match partial {
        Some(body) => {
            state
                .reservations
                .confirm_partial(order_no, &trace_id(&req), &body.items)
                .await?
        }
        None => {
            state
                .reservations
                .confirm(order_no, &trace_id(&req))
                .await?
        }
    };
    Ok(ok(outcome))
}

/// Release: the held units go back to sale (`POST /inventory/reservations/release?orderNo=...&reason=...`).
#[utoipa::path(post, path = "/inventory/reservations/release", tag = "reservations",
    params(
        ("orderNo" = String, Query, description = "The order to release"),
        ("reason" = Option<String>, Query, max_length = 255, description = "Kept in the ledger row's remark"),
        ("X-Trace-Id" = Option<String>, Header, description = "Trace id kept in the ledger (1-64 of [A-Za-z0-9_-]); a new one otherwise")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Released (or released before: existed)", body = crate::api::openapi::Success<TransitionOutcome>),
        (status = 404, description = "RESERVATION_NOT_FOUND", body = crate::api::openapi::ErrorEnvelope),
        (status = 409, description = "INVALID_RESERVATION_STATUS: already confirmed", body = crate::api::openapi::ErrorEnvelope),
        crate::api::openapi::AuthErrors,
    ))]
pub async fn release(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let order_no = required_str(&query, "orderNo", 64)?;
    let remark = query.get("reason").map(|s| s.trim()).unwrap_or("");
    check_len("reason", remark, 255)?;
    let outcome = state
        .reservations
        .release(order_no, LedgerReason::Release, remark, &trace_id(&req))
        .await?;
    Ok(ok(outcome))
}

/// The lines of an order and their states
/// (`GET /inventory/reservations?orderNo=...[&source=live|db]`).
#[utoipa::path(get, path = "/inventory/reservations", tag = "reservations",
    params(("orderNo" = String, Query, description = "The order"), ("source" = Option<String>, Query, description = "live (default): the lines' states in Redis, current before the journal reaches the DB; the DB is read only for lines Redis no longer holds (their markers aged out), so id is null for lines Redis answered. db: the DB rows as the journal wrote them, with their ids.")),
    responses(
        (status = 200, description = "The order's lines; empty when unknown", body = crate::api::openapi::Success<Vec<ReservationView>>),
        crate::api::openapi::ReadErrors,
    ))]
pub async fn list(
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let order_no = required_str(&query, "orderNo", 64)?;
    let source = crate::api::inventory::read_source(&query)?;
    Ok(ok(state
        .reservations
        .reservations(order_no, source)
        .await?))
}
