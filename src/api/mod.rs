//! The HTTP API (actix-web): the reference's paths and fields, one error envelope.

pub mod auth;
pub mod console;
pub mod health;
pub mod inventory;
pub mod openapi;
pub mod ops;
pub mod params;
pub mod request_span;
pub mod reservations;
pub mod warehouses;

use actix::Addr;
use actix_web::dev::Service;
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::{header, Method};
use actix_web::middleware::from_fn;
use actix_web::{web, FromRequest, Handler, HttpRequest, HttpResponse, Responder};
use futures_util::FutureExt;
use tracing::Instrument;

use crate::config::Settings;
use crate::engine::persistence::PersistenceActor;
use crate::engine::reconcile::Reconciler;
use crate::engine::reservation::ReservationEngine;
use crate::engine::stock::StockService;
use crate::engine::supervisor::{ExpiryJob, SupervisorActor};
use crate::engine::warehouse::WarehouseService;
use crate::engine::EngineError;
use crate::error::{ApiError, Code};
use crate::metrics::Metrics;
use crate::store::redis::RedisStoreError;

/// Shared by every handler.
pub struct AppState {
    pub settings: Settings,
    pub auth: auth::Authenticator,
    pub stock: StockService,
    pub reservations: ReservationEngine,
    pub reconciler: Reconciler,
    pub expiry: ExpiryJob,
    pub supervisor: Addr<SupervisorActor>,
    pub metrics: Metrics,
    pub persistence: Addr<PersistenceActor>,
    pub warehouses: WarehouseService,
    /// This instance's id in the supervisor lease.
    pub instance_id: String,
    /// The OpenAPI document with this instance's limits, serialised once.
    pub openapi: web::Bytes,
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            EngineError::Invalid(_) => ApiError::new(Code::InvalidParameter, message),
            EngineError::QuantityOutOfRange(_) => ApiError::new(Code::QuantityOutOfRange, message),
            EngineError::InventoryNotFound(key) => ApiError::new(Code::InventoryNotFound, message)
                .with_data(
                    serde_json::json!({"skuId": key.sku_id, "warehouseId": key.warehouse_id}),
                ),
            EngineError::SkuNotFound(sku) => ApiError::new(Code::SkuNotFound, message)
                .with_data(serde_json::json!({"skuId": sku})),
            EngineError::InsufficientStock {
                key,
                available,
                requested,
            } => ApiError::new(Code::InsufficientStock, message).with_data(serde_json::json!({
                "skuId": key.sku_id, "warehouseId": key.warehouse_id,
                "availableQty": available, "requestedQty": requested,
            })),
            EngineError::StockLimitExceeded {
                key,
                available,
                max,
            } => ApiError::new(Code::StockLimitExceeded, message).with_data(serde_json::json!({
                "skuId": key.sku_id, "warehouseId": key.warehouse_id,
                "availableQty": available, "maxQty": max,
            })),
            EngineError::IdempotencyConflict(_) => {
                ApiError::new(Code::IdempotencyConflict, message)
            }
            EngineError::JournalFull | EngineError::Overloaded => {
                ApiError::new(Code::Overloaded, message)
            }
            EngineError::Timeout => ApiError::new(Code::Timeout, message),
            EngineError::WarehouseNotFound(id) => ApiError::new(Code::WarehouseNotFound, message)
                .with_data(serde_json::json!({"warehouseId": id})),
            EngineError::WarehouseConflict(_) => ApiError::new(Code::WarehouseConflict, message),
            EngineError::RoutedInsufficient {
                sku_id,
                requested,
                available,
            } => ApiError::new(Code::InsufficientStock, message).with_data(serde_json::json!({
                "skuId": sku_id, "warehouseId": null,
                "availableQty": available, "requestedQty": requested,
            })),
            EngineError::NoWarehouse { sku_id, region } => {
                ApiError::new(Code::NoRoutableWarehouse, message)
                    .with_data(serde_json::json!({"skuId": sku_id, "region": region}))
            }
            EngineError::UnsupportedOnCluster(_) => {
                ApiError::new(Code::UnsupportedOnCluster, message)
            }
            EngineError::ReservationNotFound(order_no) => {
                ApiError::new(Code::ReservationNotFound, message)
                    .with_data(serde_json::json!({"orderNo": order_no}))
            }
            EngineError::InvalidStatus(_) => ApiError::new(Code::InvalidReservationStatus, message),
            EngineError::OrderCancelled(order_no) => {
                ApiError::new(Code::InvalidReservationStatus, message)
                    .with_data(serde_json::json!({"orderNo": order_no, "status": "FAILED"}))
            }
            EngineError::JournalBehind(_) => ApiError::new(Code::Timeout, message),
            EngineError::Redis(RedisStoreError::Timeout(_)) => {
                ApiError::new(Code::Timeout, "redis did not answer in time")
            }
            // One classification of "try again" (EngineError::is_retryable): an outage is
            // 503 with Retry-After, anything else is a bug and 500.
            EngineError::Redis(e) if e.is_retryable() => {
                tracing::error!(error = %e, "redis call failed");
                ApiError::new(Code::StoreUnavailable, "redis is unavailable")
            }
            EngineError::Redis(e) => {
                tracing::error!(error = %e, "redis call failed (not retryable)");
                ApiError::system("redis error")
            }
            EngineError::Db(e) if e.is_retryable() => {
                tracing::error!(error = %e, "database unavailable");
                ApiError::new(Code::StoreUnavailable, "the database is unavailable")
            }
            EngineError::Db(e) => {
                tracing::error!(error = %e, "database error");
                ApiError::system("database error")
            }
            // Only leader-only jobs carry a fencing token; no request does.
            EngineError::Fenced => ApiError::system(message),
            // An armed fault point stands for an outage.
            EngineError::Fault(_) => ApiError::new(Code::StoreUnavailable, message),
        }
    }
}

fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let api = match &err {
        JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
            ApiError::new(Code::PayloadTooLarge, err.to_string())
        }
        JsonPayloadError::ContentType => ApiError::new(
            Code::UnsupportedMediaType,
            "expected Content-Type: application/json",
        ),
        JsonPayloadError::Deserialize(e) => ApiError::new(
            Code::InvalidJson,
            format!("invalid JSON body: {}", without_type_names(&e.to_string())),
        ),
        other => ApiError::new(Code::InvalidJson, format!("invalid JSON body: {other}")),
    };
    api.into()
}

/// serde names our Rust types ("expected struct ReserveBody"); callers need not see them.
pub(crate) fn without_type_names(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("struct ") {
        out.push_str(&rest[..at]);
        out.push_str("an object");
        let after = &rest[at + "struct ".len()..];
        let end = after
            .find(|c: char| !c.is_alphanumeric() && c != '_')
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::invalid(format!("invalid query string: {err}")).into()
}

fn path_error(err: PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::invalid(format!("invalid path: {err}")).into()
}

/// 405 with the envelope and, as RFC 9110 asks, `Allow` naming the method the path has.
fn method_not_allowed(allowed: Method) -> impl Fn(HttpRequest) -> HttpResponse + Clone {
    methods_not_allowed(allowed.as_str().to_string())
}

/// 405 with the envelope and `Allow: <allowed>` (a comma-separated list).
fn methods_not_allowed(allowed: String) -> impl Fn(HttpRequest) -> HttpResponse + Clone {
    move |req: HttpRequest| {
        let mut response = actix_web::ResponseError::error_response(&ApiError::new(
            Code::MethodNotAllowed,
            format!("{} is not allowed on {}", req.method(), req.path()),
        ));
        if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&allowed) {
            response
                .headers_mut()
                .insert(actix_web::http::header::ALLOW, value);
        }
        response
    }
}

/// Every "METHOD /path" the router serves, as `configure` registered them; a test holds
/// this against the OpenAPI document, both ways.
static ROUTES: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

pub fn registered_routes() -> Vec<String> {
    match ROUTES.lock() {
        Ok(routes) => routes.iter().cloned().collect(),
        Err(poisoned) => poisoned.into_inner().iter().cloned().collect(),
    }
}

/// One path with one method; its other methods answer 405 with the envelope.
fn endpoint<F, Args>(method: Method, path: &'static str, handler: F) -> actix_web::Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    let entry = format!("{method} {path}");
    match ROUTES.lock() {
        Ok(mut routes) => routes.insert(entry),
        Err(poisoned) => poisoned.into_inner().insert(entry),
    };
    let refuse = method_not_allowed(method.clone());
    web::resource(path)
        .route(web::method(method).to(handler))
        .default_service(web::to(move |req: HttpRequest| {
            let refuse = refuse.clone();
            async move { refuse(req) }
        }))
}

/// `/warehouses`: GET lists (readers), POST creates (admin), on one resource (wrapped with
/// `auth::readers_get_admin_otherwise`).
fn warehouses_resource() -> actix_web::Resource {
    for entry in ["GET /warehouses", "POST /warehouses"] {
        match ROUTES.lock() {
            Ok(mut routes) => routes.insert(entry.to_string()),
            Err(poisoned) => poisoned.into_inner().insert(entry.to_string()),
        };
    }
    let refuse = methods_not_allowed("GET, POST".to_string());
    web::resource("/warehouses")
        .route(web::get().to(warehouses::list))
        .route(web::post().to(warehouses::create))
        .default_service(web::to(move |req: HttpRequest| {
            let refuse = refuse.clone();
            async move { refuse(req) }
        }))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        Code::RouteNotFound,
        format!("no route for {} {}", req.method(), req.path()),
    ))
}

/// Registers every route and the extractor error handlers.
pub fn configure(cfg: &mut web::ServiceConfig, max_body_bytes: usize) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(max_body_bytes)
            .error_handler(json_error),
    )
    .app_data(web::QueryConfig::default().error_handler(query_error))
    .app_data(web::PathConfig::default().error_handler(path_error))
    .configure(console::configure)
    .service(endpoint(Method::GET, "/health", health::live))
    .service(endpoint(Method::GET, "/health/ready", health::ready))
    .service(endpoint(Method::GET, "/metrics", health::metrics))
    .service(endpoint(
        Method::GET,
        "/openapi.json",
        openapi::openapi_json,
    ))
    .service(warehouses_resource().wrap(from_fn(auth::readers_get_admin_otherwise)))
    .service(
        endpoint(Method::PUT, "/warehouses/{id}", warehouses::update)
            .wrap(from_fn(auth::admin_only)),
    )
    .service(
        endpoint(
            Method::POST,
            "/warehouses/{id}/disable",
            warehouses::disable,
        )
        .wrap(from_fn(auth::admin_only)),
    )
    // Fixed paths before `/inventory/{skuId}`, which would match them too.
    .service(
        endpoint(Method::POST, "/inventory/reserve", reservations::reserve)
            .wrap(from_fn(auth::service_only)),
    )
    .service(
        endpoint(Method::POST, "/inventory/reconcile", inventory::reconcile)
            .wrap(from_fn(auth::admin_only)),
    )
    .service(
        endpoint(
            Method::GET,
            "/inventory/reconcile/reports",
            ops::reconcile_reports,
        )
        .wrap(from_fn(auth::readers)),
    )
    .service(endpoint(Method::GET, "/inventory/ledger", ops::ledger).wrap(from_fn(auth::readers)))
    .service(endpoint(Method::GET, "/inventory/holds", ops::holds).wrap(from_fn(auth::readers)))
    .service(endpoint(Method::GET, "/ops/overview", ops::overview).wrap(from_fn(auth::readers)))
    .service(endpoint(Method::GET, "/ops/whoami", ops::whoami))
    .service(
        endpoint(Method::POST, "/inventory/query", inventory::query_many)
            .wrap(from_fn(auth::readers)),
    )
    .service(
        endpoint(Method::GET, "/inventory/reservations", reservations::list)
            .wrap(from_fn(auth::readers)),
    )
    .service(
        endpoint(
            Method::POST,
            "/inventory/reservations/confirm",
            reservations::confirm,
        )
        .wrap(from_fn(auth::service_only)),
    )
    .service(
        endpoint(
            Method::POST,
            "/inventory/reservations/release",
            reservations::release,
        )
        .wrap(from_fn(auth::service_only)),
    )
    .service(
        endpoint(Method::GET, "/inventory/{skuId}", inventory::get_inventory)
            .wrap(from_fn(auth::readers)),
    )
    .service(
        endpoint(
            Method::GET,
            "/inventory/{skuId}/all",
            inventory::get_all_warehouses,
        )
        .wrap(from_fn(auth::readers)),
    )
    .service(
        endpoint(
            Method::POST,
            "/inventory/{skuId}/sync",
            inventory::sync_to_redis,
        )
        .wrap(from_fn(auth::admin_only)),
    )
    .service(
        endpoint(
            Method::POST,
            "/inventory/{skuId}/stock",
            inventory::adjust_stock,
        )
        .wrap(from_fn(auth::admin_only)),
    )
    .service(
        endpoint(
            Method::PUT,
            "/inventory/{skuId}/low-stock-threshold",
            inventory::set_low_stock_threshold,
        )
        .wrap(from_fn(auth::admin_only)),
    )
    .default_service(web::to(not_found));
}

/// Runs each request in its span (`request_span`) and counts requests and their latency by
/// route pattern (bounded label set).
pub fn metrics_middleware<S, B>(
    metrics: Metrics,
) -> impl Fn(
    actix_web::dev::ServiceRequest,
    &S,
) -> futures_util::future::LocalBoxFuture<
    'static,
    Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>,
> + Clone
where
    S: Service<
        actix_web::dev::ServiceRequest,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
    S::Future: 'static,
{
    move |req, srv| {
        let metrics = metrics.clone();
        let started = std::time::Instant::now();
        let route = req
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_string());
        let method = req.method().to_string();
        // The request's span (trace_id, order_no) is entered whenever its handler runs.
        let span = request_span::start(&req, &method, &route);
        // An answer to a caller with a token may hold what only that caller may see.
        let authorized = req.headers().contains_key(header::AUTHORIZATION);
        let call = span.in_scope(|| srv.call(req));
        let span_end = span.clone();
        call.map(move |mut result| {
            if let (true, Ok(res)) = (authorized, result.as_mut()) {
                res.headers_mut().insert(
                    header::CACHE_CONTROL,
                    header::HeaderValue::from_static("no-store"),
                );
            }
            let code = match &result {
                Ok(res) => res.status().as_u16(),
                Err(e) => e.as_response_error().status_code().as_u16(),
            };
            request_span::end(&span_end, code);
            let status = code.to_string();
            metrics
                .http_requests
                .with_label_values(&[&method, &route, &status])
                .inc();
            metrics
                .http_latency
                .with_label_values(&[&method, &route])
                .observe(started.elapsed().as_secs_f64());
            result
        })
        .instrument(span)
        .boxed_local()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn type_names_are_not_shown_to_callers() {
        assert_eq!(
            super::without_type_names(
                "invalid type: sequence, expected struct ReserveBody at line 1"
            ),
            "invalid type: sequence, expected an object at line 1"
        );
        assert_eq!(
            super::without_type_names("missing field `delta`"),
            "missing field `delta`"
        );
    }
}
