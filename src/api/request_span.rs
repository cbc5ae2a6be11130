//! One tracing span per HTTP request, carrying the request's
//! trace id and, once known, its orderNo. The trace id is the one the ledger keeps (the
//! handlers read it back from the request, `params::trace_id`), so a ledger row's trace id
//! finds the request's log lines.

use actix_web::dev::ServiceRequest;
use actix_web::http::header::HeaderMap;
use actix_web::HttpMessage;
use tracing::field::Empty;
use tracing::Span;

/// The request's trace id, chosen once when the request starts.
#[derive(Debug, Clone)]
pub struct TraceId(pub String);

/// The caller's `X-Trace-Id` when well-formed (1-64 of `[A-Za-z0-9_-]`), else a new one.
pub fn trace_id_from(headers: &HeaderMap) -> String {
    headers
        .get("x-trace-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

/// `orderNo` from a query string, if there is one (confirm, release, reads).
fn order_no_in(query: &str) -> Option<String> {
    if !query.contains("orderNo=") {
        return None;
    }
    let params =
        actix_web::web::Query::<std::collections::HashMap<String, String>>::from_query(query)
            .ok()?;
    params.get("orderNo").map(|v| v.chars().take(64).collect())
}

/// Records the orderNo of a request whose orderNo is in its body (reserve).
pub fn record_order_no(order_no: &str) {
    Span::current().record("order_no", order_no);
}

/// The span of a request that starts now (called by the request middleware in `api`, which
/// has the route and method at hand). Its trace id is kept in the request for the handlers.
pub fn start(request: &ServiceRequest, method: &str, route: &str) -> Span {
    let trace_id = trace_id_from(request.headers());
    let span = tracing::info_span!(
        target: crate::telemetry::SPAN_TARGET,
        "request",
        method,
        route,
        trace_id = %trace_id,
        order_no = Empty,
    );
    if let Some(order_no) = order_no_in(request.query_string()) {
        span.record("order_no", order_no.as_str());
    }
    request.extensions_mut().insert(TraceId(trace_id));
    span
}

/// With `RUST_LOG=inventory::access=debug`, one access-log line with the answer's status.
/// (The status is not recorded in the span: each record re-formats the span's fields.)
pub fn end(span: &Span, status: u16) {
    span.in_scope(|| tracing::debug!(target: "inventory::access", status, "request done"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_no_is_read_from_the_query_string() {
        assert_eq!(
            order_no_in("a=1&orderNo=ORD%2D1+x&b=2").as_deref(),
            Some("ORD-1 x")
        );
        assert_eq!(order_no_in("orderNo=").as_deref(), Some(""));
        assert_eq!(order_no_in("skuId=1"), None);
        assert_eq!(order_no_in(""), None);
    }
}
