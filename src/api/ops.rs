//! Read endpoints for operators (the console at `/console` uses them, as anyone may):
//! an overview of the service, ledger pages, the holds that end soonest and the last
//! reconciliation reports.

use std::collections::{BTreeMap, HashMap};

use actix_web::{web, HttpResponse};
use chrono::NaiveDateTime;
use serde::Serialize;

use crate::api::health::{readiness, Readiness};
use crate::api::params::positive_id;
use crate::api::AppState;
use crate::engine::reconcile::RecentReport;
use crate::error::{ok, ApiError};
use crate::store::db;
use crate::store::models::{LedgerEntry, LedgerFilter, Reservation};

/// Most rows one page may ask for.
const MAX_PAGE: i64 = 200;

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaderView {
    /// The instance holding the supervisor lease (null: none holds it now).
    pub instance: Option<String>,
    pub token: Option<i64>,
    /// Whether that is the instance that answered.
    pub this_instance: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaView {
    pub enabled: bool,
    /// Messages the consumer group has not read yet (as of the last fetch).
    pub consumer_lag: i64,
    pub consumed_total: u64,
}

/// What the console's overview shows; counters are totals since start, a client takes
/// their differences over time for rates.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    pub readiness: Readiness,
    pub instance: String,
    pub leader: Option<LeaderView>,
    pub kafka: KafkaView,
    /// Reserve requests per outcome since this instance started.
    pub reservations: BTreeMap<String, u64>,
    /// RESERVED lines whose hold ends in the next 10 minutes (per the DB; null while the
    /// DB does not answer).
    pub holds_ending_in_10_min: Option<i64>,
    /// How long the oldest journal entry not yet in the DB has waited, in milliseconds (0:
    /// none waits; null while Redis does not answer).
    pub journal_oldest_age_ms: Option<i64>,
}

/// The service at a glance (`GET /ops/overview`).
#[utoipa::path(get, path = "/ops/overview", tag = "operations",
    responses(
        (status = 200, description = "Readiness, leader, Kafka, counters", body = crate::api::openapi::Success<Overview>),
        crate::api::openapi::ReadErrors,
    ))]
pub async fn overview(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ready = readiness(&state).await;
    let leader = match state.stock.redis().lease_holder().await {
        Ok(holder) => Some(LeaderView {
            this_instance: holder
                .as_ref()
                .is_some_and(|(i, _)| *i == state.instance_id),
            instance: holder.as_ref().map(|(i, _)| i.clone()),
            token: holder.map(|(_, t)| t),
        }),
        Err(_) => None,
    };
    let soon = crate::domain::local_now() + chrono::Duration::minutes(10);
    let holds_ending_in_10_min = match db::connection(state.stock.pool()).await {
        Ok(mut conn) => Reservation::holds_ending_before(&mut conn, soon).await.ok(),
        Err(_) => None,
    };
    let journal_oldest_age_ms = state
        .stock
        .redis()
        .journal_oldest_unpersisted_ms(crate::engine::persistence::PERSIST_GROUP)
        .await
        .ok()
        .map(|oldest| oldest.map_or(0, |at| (crate::domain::now_ms() - at).max(0)));
    let m = &state.metrics;
    let reservations = crate::metrics::RESERVE_OUTCOMES
        .iter()
        .map(|o| (o.to_string(), m.reservations.with_label_values(&[o]).get()))
        .collect();
    let consumed_total = prometheus::core::Collector::collect(&m.kafka_consumed)
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|metric| metric.get_counter().get_value() as u64)
        .sum();
    Ok(ok(Overview {
        readiness: ready,
        instance: state.instance_id.clone(),
        leader,
        kafka: KafkaView {
            enabled: state.settings.kafka.enabled,
            consumer_lag: m.kafka_consumer_lag.get(),
            consumed_total,
        },
        reservations,
        holds_ending_in_10_min,
        journal_oldest_age_ms,
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LedgerRow {
    pub id: i64,
    pub txn_id: String,
    pub order_no: Option<String>,
    pub sku_id: i64,
    pub warehouse_id: i64,
    pub delta_available: i64,
    pub delta_reserved: i64,
    pub available_after: i64,
    pub reserved_after: i64,
    pub reason: String,
    pub trace_id: Option<String>,
    pub remark: Option<String>,
    #[schema(value_type = String, example = "2026-11-25 10:30:00")]
    #[serde(serialize_with = "crate::engine::serialize_local_datetime")]
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LedgerPage {
    /// Newest first.
    pub rows: Vec<LedgerRow>,
    /// Pass as beforeId for the next (older) page; null on the last page.
    pub next_before_id: Option<i64>,
}

fn limit_of(query: &HashMap<String, String>, default: i64) -> Result<i64, ApiError> {
    match query.get("limit") {
        None => Ok(default),
        Some(raw) => {
            let n = positive_id("limit", raw)?;
            if n > MAX_PAGE {
                return Err(ApiError::invalid(format!(
                    "limit must be 1-{MAX_PAGE}, got {n}"
                )));
            }
            Ok(n)
        }
    }
}

/// Ledger rows, newest first (`GET /inventory/ledger?skuId=...[&warehouseId=...]` or
/// `?orderNo=...`), paged with beforeId.
#[utoipa::path(get, path = "/inventory/ledger", tag = "operations",
    params(
        ("skuId" = Option<i64>, Query, minimum = 1, description = "The SKU's rows (skuId or orderNo is required)"),
        ("warehouseId" = Option<i64>, Query, minimum = 1, description = "With skuId: one warehouse only"),
        ("orderNo" = Option<String>, Query, description = "The order's rows"),
        ("beforeId" = Option<i64>, Query, minimum = 1, description = "Rows with a lower id (the previous page's nextBeforeId)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "1-200, default 50"),
    ),
    responses(
        (status = 200, description = "A page of rows", body = crate::api::openapi::Success<LedgerPage>),
        crate::api::openapi::ReadErrors,
    ))]
pub async fn ledger(
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let id = |name: &str| {
        query
            .get(name)
            .map(|raw| positive_id(name, raw))
            .transpose()
    };
    let order_no = match query.get("orderNo") {
        Some(o) => {
            crate::engine::reservation::check_order_no(
                o,
                state.settings.inventory.max_order_no_len,
            )?;
            Some(o.clone())
        }
        None => None,
    };
    let filter = LedgerFilter {
        sku_id: id("skuId")?,
        warehouse_id: id("warehouseId")?,
        order_no,
    };
    if filter.sku_id.is_none() && filter.order_no.is_none() {
        return Err(ApiError::new(
            crate::error::Code::MissingParameter,
            "give skuId (and optionally warehouseId) or orderNo",
        ));
    }
    let limit = limit_of(&query, 50)?;
    let mut conn = db::connection(state.stock.pool())
        .await
        .map_err(crate::engine::EngineError::from)?;
    let rows = LedgerEntry::page(&mut conn, &filter, id("beforeId")?, limit)
        .await
        .map_err(|e| crate::engine::EngineError::from(db::DbError::from(e)))?;
    let next_before_id = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(ok(LedgerPage {
        rows: rows
            .into_iter()
            .map(|r| LedgerRow {
                id: r.id,
                txn_id: r.txn_id,
                order_no: r.order_no,
                sku_id: r.sku_id,
                warehouse_id: r.warehouse_id,
                delta_available: r.delta_available.into(),
                delta_reserved: r.delta_reserved.into(),
                available_after: r.available_after.into(),
                reserved_after: r.reserved_after.into(),
                reason: r.reason,
                trace_id: r.trace_id,
                remark: r.remark,
                created_at: r.created_at,
            })
            .collect(),
        next_before_id,
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HoldView {
    pub order_no: String,
    pub sku_id: i64,
    pub warehouse_id: i64,
    pub qty: i64,
    #[schema(value_type = String, example = "2026-11-25 10:30:00")]
    #[serde(serialize_with = "crate::engine::serialize_local_datetime")]
    pub expire_at: NaiveDateTime,
    /// Past expireAt, not yet released by the expiry scan.
    pub expired: bool,
}

/// Holds that end soonest (`GET /inventory/holds[?skuId=...&limit=...]`), per the DB (the
/// journal's last entries may not be there yet).
#[utoipa::path(get, path = "/inventory/holds", tag = "operations",
    params(
        ("skuId" = Option<i64>, Query, minimum = 1, description = "One SKU's holds"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "1-200, default 50"),
    ),
    responses(
        (status = 200, description = "RESERVED lines by expiry, soonest first", body = crate::api::openapi::Success<Vec<HoldView>>),
        crate::api::openapi::ReadErrors,
    ))]
pub async fn holds(
    state: web::Data<AppState>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let sku_id = query
        .get("skuId")
        .map(|raw| positive_id("skuId", raw))
        .transpose()?;
    let limit = limit_of(&query, 50)?;
    let mut conn = db::connection(state.stock.pool())
        .await
        .map_err(crate::engine::EngineError::from)?;
    let rows = Reservation::holds_soonest(&mut conn, sku_id, limit)
        .await
        .map_err(|e| crate::engine::EngineError::from(db::DbError::from(e)))?;
    let now = crate::domain::local_now();
    Ok(ok(rows
        .into_iter()
        .map(|r| HoldView {
            expired: r.expire_at <= now,
            order_no: r.order_no,
            sku_id: r.sku_id,
            warehouse_id: r.warehouse_id,
            qty: r.qty.into(),
            expire_at: r.expire_at,
        })
        .collect::<Vec<_>>()))
}

/// The last reconciliation reports of every instance, newest first
/// (`GET /inventory/reconcile/reports`).
#[utoipa::path(get, path = "/inventory/reconcile/reports", tag = "operations",
    responses(
        (status = 200, description = "Up to 20 reports, newest first", body = crate::api::openapi::Success<Vec<RecentReport>>),
        crate::api::openapi::ReadErrors,
    ))]
pub async fn reconcile_reports(state: web::Data<AppState>) -> HttpResponse {
    ok(state.reconciler.recent_reports().await)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WhoAmI {
    /// `admin`, `service` or `anonymous` (no token given).
    #[schema(value_type = String, example = "admin")]
    pub role: &'static str,
    /// Whether reads need a token (`auth.protect_reads`).
    pub reads_protected: bool,
}

/// The role of the caller's token (`GET /ops/whoami`): what the console shows and offers.
/// An unknown token is 401.
#[utoipa::path(get, path = "/ops/whoami", tag = "operations",
    security(("bearer" = []), ()),
    responses(
        (status = 200, description = "The caller's role", body = crate::api::openapi::Success<WhoAmI>),
        crate::api::openapi::AuthErrors,
    ))]
pub async fn whoami(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let role = match state.auth.who(&req)? {
        Some(crate::api::auth::Role::Admin) => "admin",
        Some(crate::api::auth::Role::Service) => "service",
        None => "anonymous",
    };
    Ok(ok(WhoAmI {
        role,
        reads_protected: state.settings.auth.protect_reads,
    }))
}
