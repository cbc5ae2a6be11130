//! `/inventory/{skuId}...`: stock queries and admin operations.

use crate::domain::{SkuId, WarehouseId};
use std::collections::HashMap;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use crate::api::params::{check_identifier, check_len, optional_id, positive_id, trace_id};
use crate::api::AppState;
use crate::domain::{LedgerReason, SkuKey};
use crate::engine::reconcile::ReconcileReport;
use crate::engine::stock::{
    AdjustRequest, AdjustResult, InventoryView, ReadSource, SyncResult, ThresholdView,
};
use crate::error::{ok, ok_sized, ApiError};

fn position(
    state: &AppState,
    sku_raw: &str,
    query: &HashMap<String, String>,
) -> Result<SkuKey, ApiError> {
    let sku_id = positive_id("skuId", sku_raw)?;
    let warehouse_id = optional_id(
        query,
        "warehouseId",
        state.settings.inventory.default_warehouse_id,
    )?;
    Ok(SkuKey::new(WarehouseId(warehouse_id), SkuId(sku_id)))
}

/// `?source=live` (the default) or `?source=db`.
pub(crate) fn read_source(query: &HashMap<String, String>) -> Result<ReadSource, ApiError> {
    parse_source(query.get("source").map(|s| s.as_str()))
}

fn parse_source(raw: Option<&str>) -> Result<ReadSource, ApiError> {
    match raw {
        None | Some("live") => Ok(ReadSource::Live),
        Some("db") => Ok(ReadSource::Db),
        Some(other) => Err(ApiError::invalid(format!(
            "source must be live or db, got {:?}",
            other.chars().take(20).collect::<String>()
        ))),
    }
}

const SOURCE_DOC: &str = "live (default): availableQty, reservedQty and redisAvailableQty are Redis' counters, where every decision is made, served from this instance's cache for at most cache.stock_ttl_ms (its own changes at once); id and updatedAt come from the DB row, cached for at most cache.row_ttl_ms. db: availableQty and reservedQty from the DB row as the journal wrote it, redisAvailableQty read from Redis now (reconciliation by hand).";

/// Stock of one position (`GET /inventory/{skuId}?warehouseId=W[&source=live|db]`).
#[utoipa::path(get, path = "/inventory/{skuId}", tag = "inventory",
    params(("skuId" = i64, Path, minimum = 1, description = "The SKU"), ("warehouseId" = Option<i64>, Query, minimum = 1, description = "Default: inventory.default_warehouse_id"), ("source" = Option<String>, Query, description = SOURCE_DOC)),
    responses(
        (status = 200, description = "The position's stock", body = crate::api::openapi::Success<InventoryView>),
        (status = 404, description = "INVENTORY_NOT_FOUND", body = crate::api::openapi::ErrorEnvelope),
        crate::api::openapi::ReadErrors,
    ))]
pub async fn get_inventory(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let key = position(&state, &path, &query)?;
    let source = read_source(&query)?;
    Ok(ok(state.stock.get(key, source).await?))
}

/// Stock of a SKU in every warehouse (`GET /inventory/{skuId}/all[?source=live|db]`).
#[utoipa::path(get, path = "/inventory/{skuId}/all", tag = "inventory",
    params(("skuId" = i64, Path, minimum = 1, description = "The SKU"), ("source" = Option<String>, Query, description = SOURCE_DOC)),
    responses(
        (status = 200, description = "One entry per warehouse", body = crate::api::openapi::Success<Vec<InventoryView>>),
        (status = 404, description = "SKU_NOT_FOUND: no warehouse has this SKU", body = crate::api::openapi::ErrorEnvelope),
        crate::api::openapi::ReadErrors,
    ))]
pub async fn get_all_warehouses(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let sku_id = positive_id("skuId", &path)?;
    let source = read_source(&query)?;
    Ok(ok(state.stock.list_by_sku(sku_id, source).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QueryBody {
    /// The positions to read (1 to inventory.max_query_positions; repeats are answered
    /// once).
    pub positions: Vec<PositionBody>,
    /// live (default) or db, as for `GET /inventory/{skuId}`.
    pub source: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PositionBody {
    #[schema(minimum = 1)]
    pub sku_id: i64,
    /// Default: inventory.default_warehouse_id.
    #[schema(minimum = 1)]
    pub warehouse_id: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PositionRef {
    pub sku_id: i64,
    pub warehouse_id: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryResult {
    /// The positions found, in the order asked.
    pub items: Vec<InventoryView>,
    /// The positions no store holds.
    pub not_found: Vec<PositionRef>,
}

/// Stock of many positions in one call (a cart page): `POST /inventory/query` with
/// `{"positions": [{"skuId": 1001, "warehouseId": 1}, ...]}`. Cached levels are answered
/// at once, the rest with one Redis round trip; freshness as for `GET /inventory/{skuId}`.
#[utoipa::path(post, path = "/inventory/query", tag = "inventory",
    request_body = QueryBody,
    responses(
        (status = 200, description = "The positions found and those not found", body = crate::api::openapi::Success<QueryResult>),
        crate::api::openapi::BodyErrors,
    ))]
pub async fn query_many(
    state: web::Data<AppState>,
    body: web::Json<QueryBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let limit = state.settings.inventory.max_query_positions;
    if body.positions.is_empty() || body.positions.len() > limit {
        return Err(ApiError::invalid(format!(
            "positions must hold 1 to {limit} entries, got {}",
            body.positions.len()
        )));
    }
    let source = parse_source(body.source.as_deref())?;
    let default_warehouse = state.settings.inventory.default_warehouse_id;
    let mut keys: Vec<SkuKey> = Vec::with_capacity(body.positions.len());
    for (i, p) in body.positions.iter().enumerate() {
        if p.sku_id <= 0 {
            return Err(ApiError::invalid(format!(
                "positions[{i}].skuId must be a positive integer, got {}",
                p.sku_id
            )));
        }
        let warehouse_id = match p.warehouse_id {
            None => default_warehouse,
            Some(w) if w > 0 => w,
            Some(w) => {
                return Err(ApiError::invalid(format!(
                    "positions[{i}].warehouseId must be a positive integer, got {w}"
                )))
            }
        };
        let key = SkuKey::new(WarehouseId(warehouse_id), SkuId(p.sku_id));
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let views = state.stock.query(&keys, source).await?;
    let mut result = QueryResult {
        items: Vec::with_capacity(keys.len()),
        not_found: vec![],
    };
    for (key, view) in keys.iter().zip(views) {
        match view {
            Some(v) => result.items.push(v),
            None => result.not_found.push(PositionRef {
                sku_id: key.sku_id,
                warehouse_id: key.warehouse_id,
            }),
        }
    }
    // About 230 bytes per position answered.
    let capacity = 64 + 256 * keys.len();
    Ok(ok_sized(result, capacity))
}

/// Admin: makes Redis hold the DB's stock for a position (`POST /inventory/{skuId}/sync?warehouseId=W`).
#[utoipa::path(post, path = "/inventory/{skuId}/sync", tag = "inventory",
    params(("skuId" = i64, Path, minimum = 1, description = "The SKU"), ("warehouseId" = Option<i64>, Query, minimum = 1, description = "Default: inventory.default_warehouse_id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "IN_SYNC, OVERWRITTEN or LOADED", body = crate::api::openapi::Success<SyncResult>),
        (status = 404, description = "INVENTORY_NOT_FOUND", body = crate::api::openapi::ErrorEnvelope),
        (status = 409, description = "CONCURRENT_CONFLICT: the position changed while syncing", body = crate::api::openapi::ErrorEnvelope),
        crate::api::openapi::AuthErrors,
    ))]
pub async fn sync_to_redis(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let key = position(&state, &path, &query)?;
    Ok(ok(state.stock.sync(key).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ThresholdBody {
    /// Units at or below which STOCK_LOW is told (0 to inventory.max_stock_qty); null
    /// clears it. Required (a body without it is refused rather than read as "clear").
    #[serde(default, deserialize_with = "crate::domain::present")]
    #[schema(value_type = Option<i64>, required = true)]
    pub low_stock_threshold: Option<Option<i64>>,
}

/// Admin: sets or clears a position's low-stock threshold
/// (`PUT /inventory/{skuId}/low-stock-threshold?warehouseId=W`). STOCK_LOW is told when
/// available falls from above it to it or below; every instance uses a new value from its
/// next persisted batch (docs/events.md, "Stock-level events").
#[utoipa::path(put, path = "/inventory/{skuId}/low-stock-threshold", tag = "inventory",
    request_body = ThresholdBody,
    params(("skuId" = i64, Path, minimum = 1, description = "The SKU"), ("warehouseId" = Option<i64>, Query, minimum = 1, description = "Default: inventory.default_warehouse_id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Set (or cleared)", body = crate::api::openapi::Success<ThresholdView>),
        (status = 404, description = "INVENTORY_NOT_FOUND: the position has no stock record", body = crate::api::openapi::ErrorEnvelope),
        crate::api::openapi::BodyErrors,
    ))]
pub async fn set_low_stock_threshold(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
    body: web::Json<ThresholdBody>,
) -> Result<HttpResponse, ApiError> {
    let key = position(&state, &path, &query)?;
    let Some(threshold) = body.into_inner().low_stock_threshold else {
        return Err(ApiError::invalid(
            "lowStockThreshold is required (null clears the threshold)",
        ));
    };
    Ok(ok(state
        .stock
        .set_low_stock_threshold(key, threshold)
        .await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StockAdjustBody {
    /// Units to add (> 0) or remove (< 0).
    pub delta: i64,
    /// INBOUND (delta > 0), OUTBOUND (delta < 0) or ADJUST (either); by default INBOUND
    /// for additions and OUTBOUND for removals.
    pub reason: Option<String>,
    /// Idempotency key: a retried request with the same id changes nothing.
    pub request_id: Option<String>,
    /// Free text kept in the ledger row.
    pub remark: Option<String>,
}

/// Admin: stock in, write-off or correction with a ledger row
/// (`POST /inventory/{skuId}/stock?warehouseId=W` with `{"delta": N, "reason": "..."}`).
#[utoipa::path(post, path = "/inventory/{skuId}/stock", tag = "inventory",
    request_body = StockAdjustBody,
    params(("skuId" = i64, Path, minimum = 1, description = "The SKU"), ("warehouseId" = Option<i64>, Query, minimum = 1, description = "Default: inventory.default_warehouse_id"), ("X-Trace-Id" = Option<String>, Header, description = "Trace id kept in the ledger")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Applied (or applied before under this requestId: applied false)", body = crate::api::openapi::Success<AdjustResult>),
        (status = 404, description = "INVENTORY_NOT_FOUND: units removed from a position with no stock record", body = crate::api::openapi::ErrorEnvelope),
        (status = 409, description = "INSUFFICIENT_STOCK, STOCK_LIMIT_EXCEEDED or IDEMPOTENCY_CONFLICT (requestId reused for another change)", body = crate::api::openapi::ErrorEnvelope),
        crate::api::openapi::BodyErrors,
    ))]
pub async fn adjust_stock(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
    body: web::Json<StockAdjustBody>,
) -> Result<HttpResponse, ApiError> {
    let key = position(&state, &path, &query)?;
    let body = body.into_inner();
    let reason = match body.reason.as_deref() {
        None if body.delta >= 0 => LedgerReason::Inbound,
        None => LedgerReason::Outbound,
        Some(raw) => match LedgerReason::parse(raw.trim()) {
            Some(r @ (LedgerReason::Inbound | LedgerReason::Outbound | LedgerReason::Adjust)) => r,
            _ => {
                return Err(ApiError::invalid(format!(
                    "reason must be INBOUND, OUTBOUND or ADJUST, got {:?}",
                    raw.chars().take(50).collect::<String>()
                )))
            }
        },
    };
    if let Some(id) = &body.request_id {
        check_identifier("requestId", id, 64)?;
    }
    let remark = body.remark.unwrap_or_default();
    check_len("remark", &remark, 255)?;
    let result = state
        .stock
        .adjust(AdjustRequest {
            key,
            delta: body.delta,
            reason,
            request_id: body.request_id,
            remark,
            trace_id: trace_id(&req),
        })
        .await?;
    Ok(ok(result))
}

/// Admin: compares Redis with the DB and the ledger now; repairs when asked (default:
/// `reconcile.repair`). `POST /inventory/reconcile[?skuId=S][&warehouseId=W][&repair=true|false][&full=true|false]`
#[utoipa::path(post, path = "/inventory/reconcile", tag = "inventory",
    params(
        ("skuId" = Option<i64>, Query, minimum = 1, description = "Only this SKU"),
        ("warehouseId" = Option<i64>, Query, minimum = 1, description = "Only this warehouse"),
        ("repair" = Option<bool>, Query, description = "Fix what can be fixed (never OVERSOLD)"),
        ("full" = Option<bool>, Query, description = "Compare against every ledger row and line ever written instead of the checkpoints (default false; slower, grows with history)"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The differences found (and repaired)", body = crate::api::openapi::Success<ReconcileReport>),
        crate::api::openapi::AuthErrors,
    ))]
pub async fn reconcile(
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let sku_id = query
        .get("skuId")
        .map(|raw| positive_id("skuId", raw))
        .transpose()?;
    let warehouse_id = query
        .get("warehouseId")
        .map(|raw| positive_id("warehouseId", raw))
        .transpose()?;
    let flag = |name: &str, default: bool| match query.get(name).map(|s| s.as_str()) {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(ApiError::invalid(format!(
            "{name} must be true or false, got {:?}",
            other.chars().take(20).collect::<String>()
        ))),
    };
    let repair = flag("repair", state.settings.reconcile.repair)?;
    let full = flag("full", false)?;
    let report = state
        .reconciler
        .run(sku_id, warehouse_id, repair, full, "request")
        .await?;
    Ok(ok(report))
}
