//! `/inventory/{skuId}...`: stock queries and admin operations.

use std::collections::HashMap;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use crate::api::params::{check_identifier, check_len, optional_id, positive_id, trace_id};
use crate::api::AppState;
use crate::domain::{LedgerReason, SkuKey};
use crate::engine::stock::AdjustRequest;
use crate::error::{ok, ApiError};

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
    Ok(SkuKey::new(warehouse_id, sku_id))
}

/// `GET /inventory/{skuId}?warehouseId=W`
pub async fn get_inventory(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let key = position(&state, &path, &query)?;
    Ok(ok(state.stock.get(key).await?))
}

/// `GET /inventory/{skuId}/all`
pub async fn get_all_warehouses(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let sku_id = positive_id("skuId", &path)?;
    Ok(ok(state.stock.list_by_sku(sku_id).await?))
}

/// `POST /inventory/{skuId}/sync?warehouseId=W`
pub async fn sync_to_redis(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let key = position(&state, &path, &query)?;
    Ok(ok(state.stock.sync(key).await?))
}

#[derive(Debug, Deserialize)]
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

/// `POST /inventory/{skuId}/stock?warehouseId=W` with `{"delta": N, "reason": "..."}`
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

/// `POST /inventory/reconcile[?skuId=S][&warehouseId=W][&repair=true|false]`: compares Redis
/// with the DB and the ledger now; repairs when asked (default: `reconcile.repair`).
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
    let repair = match query.get("repair").map(|s| s.as_str()) {
        None => state.settings.reconcile.repair,
        Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "repair must be true or false, got {:?}",
                other.chars().take(20).collect::<String>()
            )))
        }
    };
    let report = state
        .reconciler
        .run(sku_id, warehouse_id, repair, "request")
        .await?;
    Ok(ok(report))
}
