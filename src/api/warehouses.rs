//! Warehouses (admin): register, change and disable the warehouses routing chooses among.

use actix_web::{web, HttpResponse};

use crate::api::params::positive_id;
use crate::api::AppState;
use crate::engine::warehouse::{NewWarehouse, WarehouseChange, WarehouseView};
use crate::error::{ok, ApiError};

/// Every warehouse, by priority then id.
#[utoipa::path(get, path = "/warehouses", tag = "warehouses",
    responses(
        (status = 200, description = "The warehouses", body = crate::api::openapi::Success<Vec<WarehouseView>>),
        crate::api::openapi::ReadErrors,
    ))]
pub async fn list(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(ok(state.warehouses.list().await?))
}

/// Admin: registers a warehouse. Its id may already be used by stock positions. The same
/// body again answers `existed: true`; another warehouse under a taken id or code is 409.
#[utoipa::path(post, path = "/warehouses", tag = "warehouses",
    request_body = NewWarehouse,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Created (or existed with these fields)", body = crate::api::openapi::Success<WarehouseView>),
        (status = 409, description = "WAREHOUSE_CONFLICT: the id or the code is taken by another warehouse", body = crate::api::openapi::ErrorEnvelope),
        crate::api::openapi::BodyErrors,
    ))]
pub async fn create(
    state: web::Data<AppState>,
    body: web::Json<NewWarehouse>,
) -> Result<HttpResponse, ApiError> {
    Ok(ok(state.warehouses.create(body.into_inner()).await?))
}

/// Admin: changes the fields given (absent ones keep their value).
#[utoipa::path(put, path = "/warehouses/{id}", tag = "warehouses",
    request_body = WarehouseChange,
    params(("id" = i64, Path, minimum = 1, description = "The warehouse")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Changed", body = crate::api::openapi::Success<WarehouseView>),
        (status = 404, description = "WAREHOUSE_NOT_FOUND", body = crate::api::openapi::ErrorEnvelope),
        (status = 409, description = "WAREHOUSE_CONFLICT: the new code belongs to another warehouse", body = crate::api::openapi::ErrorEnvelope),
        crate::api::openapi::BodyErrors,
    ))]
pub async fn update(
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<WarehouseChange>,
) -> Result<HttpResponse, ApiError> {
    let id = positive_id("id", &path)?;
    Ok(ok(state.warehouses.update(id, body.into_inner()).await?))
}

/// Admin: disables a warehouse; routing never chooses it again (holds there stay).
#[utoipa::path(post, path = "/warehouses/{id}/disable", tag = "warehouses",
    params(("id" = i64, Path, minimum = 1, description = "The warehouse")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Disabled (or was)", body = crate::api::openapi::Success<WarehouseView>),
        (status = 404, description = "WAREHOUSE_NOT_FOUND", body = crate::api::openapi::ErrorEnvelope),
        crate::api::openapi::AuthErrors,
    ))]
pub async fn disable(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = positive_id("id", &path)?;
    Ok(ok(state.warehouses.disable(id).await?))
}
