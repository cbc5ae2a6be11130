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
        .unwrap_or_else(new_trace_id)
}

/// A new trace id: 32 lowercase hex digits. The first 16 are a random number drawn once
/// per process, the last 16 a per-process counter passed through a bijection (splitmix64's
/// finaliser), so ids look random and never repeat. A uuid v4 per request cost a getrandom
/// system call each on the hot path.
pub fn new_trace_id() -> String {
    static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let process = *PROCESS.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{process:016x}{:016x}", mix(n))
}

/// splitmix64's finaliser: a bijection on u64 that scatters consecutive numbers.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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
    fn new_trace_ids_are_32_hex_digits_and_distinct() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| new_trace_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.len() == 32
            && id
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())));
        let mixed: std::collections::HashSet<u64> = (0..1000).map(mix).collect();
        assert_eq!(mixed.len(), 1000);
    }

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
