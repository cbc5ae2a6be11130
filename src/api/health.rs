//! `/health` (liveness), `/health/ready` (Redis and DB reachable) and `/metrics`.
//!
//! Readiness has three states. UP: both stores answer. DEGRADED (still 200): Redis answers
//! but the DB does not; reservations are decided in Redis and journalled, so the service
//! keeps serving them while the journal grows, and a load balancer must not take it out of
//! rotation for that. DOWN (503): Redis does not answer, so nothing can be decided.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use diesel_async::RunQueryDsl;
use serde_json::json;

use crate::api::AppState;
use crate::engine::persistence::GetLag;
use crate::error::{ok, Code, Envelope};
use crate::store::db;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn live() -> HttpResponse {
    ok(json!({"status": "UP"}))
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

pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let redis = match tokio::time::timeout(CHECK_TIMEOUT, state.stock.redis().ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_string()),
    };
    let database = match tokio::time::timeout(CHECK_TIMEOUT, check_db(&state)).await {
        Ok(result) => result,
        Err(_) => Err("timed out".to_string()),
    };
    let lag = match state.persistence.send(GetLag).await {
        Ok(Ok(lag)) => json!({
            "notPersisted": lag.not_persisted(),
            "undelivered": lag.undelivered,
            "pending": lag.pending,
            "length": lag.length,
        }),
        _ => json!(null),
    };
    let status = |r: &Result<(), String>| match r {
        Ok(()) => json!({"status": "UP"}),
        Err(e) => json!({"status": "DOWN", "error": e}),
    };
    let overall = match (&redis, &database) {
        (Ok(()), Ok(())) => "UP",
        (Ok(()), Err(_)) => "DEGRADED",
        (Err(_), _) => "DOWN",
    };
    let data = json!({
        "status": overall,
        "redis": status(&redis),
        "database": status(&database),
        "journal": lag,
    });
    if redis.is_ok() {
        ok(data)
    } else {
        HttpResponse::ServiceUnavailable().json(Envelope {
            code: Code::StoreUnavailable.as_str(),
            message: "a store is unreachable".to_string(),
            data,
        })
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    // Refresh the lag gauge at scrape time so it is never stale.
    if let Ok(Ok(lag)) = state.persistence.send(GetLag).await {
        state.metrics.journal_lag.set(lag.not_persisted() as i64);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
