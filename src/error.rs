//! The one error type of the HTTP boundary: a stable machine-readable code, one mapping to
//! an HTTP status, and the response envelope `{code, message, data}`.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use serde_json::Value;

macro_rules! error_codes {
    ($($variant:ident => ($status:ident, $code:literal)),* $(,)?) => {
        /// Every code this service answers with. The strings are part of the API: never
        /// rename one.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code { $($variant),* }

        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $code),* }
            }

            pub fn status(self) -> StatusCode {
                match self { $(Code::$variant => StatusCode::$status),* }
            }
        }
    };
}

error_codes! {
    // Request problems: nothing was changed.
    InvalidParameter => (BAD_REQUEST, "INVALID_PARAMETER"),
    MissingParameter => (BAD_REQUEST, "MISSING_PARAMETER"),
    InvalidJson => (BAD_REQUEST, "INVALID_JSON"),
    QuantityOutOfRange => (BAD_REQUEST, "QUANTITY_OUT_OF_RANGE"),
    PayloadTooLarge => (PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
    UnsupportedMediaType => (UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE"),
    RouteNotFound => (NOT_FOUND, "ROUTE_NOT_FOUND"),
    Unauthorized => (UNAUTHORIZED, "UNAUTHORIZED"),
    Forbidden => (FORBIDDEN, "FORBIDDEN"),
    MethodNotAllowed => (METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
    // The reference's business codes.
    InsufficientStock => (CONFLICT, "INSUFFICIENT_STOCK"),
    SkuNotFound => (NOT_FOUND, "SKU_NOT_FOUND"),
    InventoryNotFound => (NOT_FOUND, "INVENTORY_NOT_FOUND"),
    ReservationNotFound => (NOT_FOUND, "RESERVATION_NOT_FOUND"),
    InvalidReservationStatus => (CONFLICT, "INVALID_RESERVATION_STATUS"),
    ConcurrentConflict => (CONFLICT, "CONCURRENT_CONFLICT"),
    // Same identity (order line, adjustment request) with different content.
    IdempotencyConflict => (CONFLICT, "IDEMPOTENCY_CONFLICT"),
    StockLimitExceeded => (CONFLICT, "STOCK_LIMIT_EXCEEDED"),
    // The warehouse register.
    WarehouseNotFound => (NOT_FOUND, "WAREHOUSE_NOT_FOUND"),
    WarehouseConflict => (CONFLICT, "WAREHOUSE_CONFLICT"),
    NoRoutableWarehouse => (CONFLICT, "NO_ROUTABLE_WAREHOUSE"),
    UnsupportedOnCluster => (NOT_IMPLEMENTED, "UNSUPPORTED_ON_CLUSTER"),
    // Backpressure and outages: the caller may retry.
    Overloaded => (SERVICE_UNAVAILABLE, "SERVICE_OVERLOADED"),
    StoreUnavailable => (SERVICE_UNAVAILABLE, "STORE_UNAVAILABLE"),
    Timeout => (SERVICE_UNAVAILABLE, "TIMEOUT"),
    SystemError => (INTERNAL_SERVER_ERROR, "SYSTEM_ERROR"),
}

/// The response envelope of every endpoint.
#[derive(Debug, Serialize)]
pub struct Envelope<T: Serialize> {
    pub code: &'static str,
    pub message: String,
    pub data: T,
}

impl<T: Serialize> Envelope<T> {
    pub fn success(data: T) -> Self {
        Envelope {
            code: "0",
            message: "success".to_string(),
            data,
        }
    }
}

pub fn ok<T: Serialize>(data: T) -> HttpResponse {
    ok_sized(data, 512)
}

/// `ok` with the body's buffer sized up front (serde_json::to_string starts empty and grows
/// by doubling: five reallocations for a 20-position query).
pub fn ok_sized<T: Serialize>(data: T, capacity: usize) -> HttpResponse {
    let mut body = Vec::with_capacity(capacity);
    match serde_json::to_writer(&mut body, &Envelope::success(data)) {
        Ok(()) => HttpResponse::Ok()
            .content_type(actix_web::http::header::ContentType::json())
            .body(body),
        Err(e) => ApiError::system(format!("response not serialisable: {e}")).error_response(),
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub data: Value,
    /// Seconds, sent as `Retry-After` with 503s.
    pub retry_after_secs: Option<u32>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        let retry_after_secs = (code.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(1);
        ApiError {
            code,
            message: message.into(),
            data: Value::Null,
            retry_after_secs,
        }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidParameter, message)
    }

    pub fn system(message: impl Into<String>) -> Self {
        Self::new(Code::SystemError, message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Some(secs) = self.retry_after_secs {
            response.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        response.json(Envelope {
            code: self.code.as_str(),
            message: self.message.clone(),
            data: &self.data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_upper_snake() {
        let mut seen = HashSet::new();
        for code in Code::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "duplicate code {s}");
            assert!(s.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{s}");
        }
    }

    #[test]
    fn statuses_follow_the_table() {
        assert_eq!(Code::InsufficientStock.status(), StatusCode::CONFLICT);
        assert_eq!(Code::InventoryNotFound.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            Code::StoreUnavailable.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(Code::InvalidParameter.status(), StatusCode::BAD_REQUEST);
        assert!(ApiError::new(Code::Overloaded, "busy")
            .retry_after_secs
            .is_some());
        assert!(ApiError::invalid("x").retry_after_secs.is_none());
    }
}
