//! `/health` (liveness), `/health/ready` (Redis and DB reachable, journal and expiry lag)
//! and `/metrics`.
//!
//! Readiness has three states. UP: both stores answer. DEGRADED (still 200): Redis answers
//! but the DB does not; reservations are decided in Redis and journalled, so the service
//! keeps serving them while the journal grows, and a load balancer must not take it out of
//! rotation for that. DOWN (503): Redis does not answer, so nothing can be decided.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use diesel_async::RunQueryDsl;
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::AppState;
use crate::engine::persistence::{GetLag, PERSIST_GROUP};
use crate::error::{ok, Code, Envelope};
use crate::store::db;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    /// Always UP while the process answers.
    #[schema(value_type = String, example = "UP")]
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StoreHealth {
    /// UP or DOWN
    #[schema(value_type = String, example = "UP")]
    pub status: &'static str,
    /// Why the store is DOWN.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Journal entries between Redis and the DB.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JournalHealth {
    /// Entries whose changes are not in the DB yet.
    pub not_persisted: u64,
    pub undelivered: u64,
    pub pending: u64,
    pub length: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// UP, DEGRADED (DB down: reservations still served) or DOWN (Redis down)
    #[schema(value_type = String, example = "UP")]
    pub status: &'static str,
    pub redis: StoreHealth,
    pub database: StoreHealth,
    /// Null when the persistence actor does not answer.
    pub journal: Option<JournalHealth>,
    /// How far the expiry scan is behind; null when Redis does not answer.
    pub expiry: Option<ExpiryHealth>,
}

/// Holds past their expiry that the scan has not released yet.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExpiryHealth {
    /// Whether this instance runs the scan (`reservation.timeout.enabled`; only the
    /// supervisor leader actually does).
    pub enabled: bool,
    /// Due holds not yet released (per slot group: an order held in two groups counts
    /// twice).
    pub due_holds: u64,
    /// How long the oldest of them has been due, in milliseconds (0 when none is).
    pub oldest_due_age_ms: u64,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "The process is alive", body = crate::api::openapi::Success<Liveness>)))]
pub async fn live() -> HttpResponse {
    ok(Liveness { status: "UP" })
}

async fn check_db(state: &AppState) -> Result<(), String> {
    let mut conn = db::connection(state.stock.pool())
        .await
        .map_err(|e| e.to_string())?;
    diesel::sql_query("SELECT 1")
        .execute(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn store_health(result: Result<(), String>) -> StoreHealth {
    match result {
        Ok(()) => StoreHealth {
            status: "UP",
            error: None,
        },
        Err(e) => StoreHealth {
            status: "DOWN",
            error: Some(e),
        },
    }
}

/// Pings both stores at once (bounded by CHECK_TIMEOUT) and records the outcome in the
/// `store_up` and `readiness` gauges.
async fn check_stores(state: &AppState) -> (Result<(), String>, Result<(), String>) {
    let redis = async {
        match tokio::time::timeout(CHECK_TIMEOUT, state.stock.redis().ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_string()),
        }
    };
    let database = async {
        match tokio::time::timeout(CHECK_TIMEOUT, check_db(state)).await {
            Ok(result) => result,
            Err(_) => Err("timed out".to_string()),
        }
    };
    let (redis, database) = futures_util::join!(redis, database);
    let m = &state.metrics;
    m.store_up
        .with_label_values(&["redis"])
        .set(i64::from(redis.is_ok()));
    m.store_up
        .with_label_values(&["database"])
        .set(i64::from(database.is_ok()));
    m.readiness.set(match (&redis, &database) {
        (Ok(()), Ok(())) => 2,
        (Ok(()), Err(_)) => 1,
        (Err(_), _) => 0,
    });
    (redis, database)
}

/// Readiness: UP, DEGRADED or DOWN, with the journal lag.
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses(
        (status = 200, description = "UP, or DEGRADED: the DB is down but reservations are still served", body = crate::api::openapi::Success<Readiness>),
        (status = 503, description = "DOWN: Redis does not answer (code STORE_UNAVAILABLE, data as for 200)", body = crate::api::openapi::ErrorEnvelope),
    ))]
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let data = readiness(&state).await;
    if data.redis.status == "UP" {
        ok(data)
    } else {
        HttpResponse::ServiceUnavailable().json(Envelope {
            code: Code::StoreUnavailable.as_str(),
            message: "redis is unreachable".to_string(),
            data,
        })
    }
}

/// The stores, the journal and the expiry scan, each bounded by CHECK_TIMEOUT.
pub(crate) async fn readiness(state: &AppState) -> Readiness {
    let (redis, database) = check_stores(state).await;
    let journal = match state.persistence.send(GetLag).await {
        Ok(Ok(lag)) => Some(JournalHealth {
            not_persisted: lag.not_persisted(),
            undelivered: lag.undelivered,
            pending: lag.pending,
            length: lag.length,
        }),
        _ => None,
    };
    let expiry = match tokio::time::timeout(CHECK_TIMEOUT, state.expiry.lag()).await {
        Ok(Ok(lag)) => Some(ExpiryHealth {
            enabled: state.settings.reservation.timeout.enabled,
            due_holds: lag.due_holds,
            oldest_due_age_ms: lag.oldest_due_age_ms,
        }),
        _ => None,
    };
    let status = match (&redis, &database) {
        (Ok(()), Ok(())) => "UP",
        (Ok(()), Err(_)) => "DEGRADED",
        (Err(_), _) => "DOWN",
    };
    Readiness {
        status,
        redis: store_health(redis),
        database: store_health(database),
        journal,
        expiry,
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    // Refresh the lag and store gauges at scrape time so they are never stale (the expiry
    // gauges are set by `lag()` itself). All at once, each bounded by CHECK_TIMEOUT, so a
    // scrape answers within it even with a store down.
    let journal_lag = async {
        if let Ok(Ok(Ok(lag))) =
            tokio::time::timeout(CHECK_TIMEOUT, state.persistence.send(GetLag)).await
        {
            state.metrics.journal_lag.set(lag.not_persisted() as i64);
        }
    };
    let expiry = async {
        let _ = tokio::time::timeout(CHECK_TIMEOUT, state.expiry.lag()).await;
    };
    let stores = check_stores(&state);
    let journal_age = async {
        let oldest = tokio::time::timeout(
            CHECK_TIMEOUT,
            state
                .stock
                .redis()
                .journal_oldest_unpersisted_ms(PERSIST_GROUP),
        )
        .await;
        // Unreadable (Redis down): the last value stays, and InventoryRedisDown tells why.
        if let Ok(Ok(oldest)) = oldest {
            let age_ms = oldest.map_or(0, |at| (crate::domain::now_ms() - at).max(0));
            state.metrics.journal_oldest_age.set(age_ms as f64 / 1000.0);
        }
    };
    let ((_redis, _database), (), (), ()) =
        futures_util::join!(stores, journal_lag, expiry, journal_age);
    state.stock.cache().entries();
    let mut body = state.metrics.render();
    // Only builds with the fault-injection feature have armed points to report.
    for (point, fired) in crate::fault::fired() {
        body.push_str(&format!(
            "inventory_fault_injected_total{{point=\"{point}\"}} {fired}\n"
        ));
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}
