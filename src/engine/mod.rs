//! The engine: decides every stock change in Redis, journals it, and gets it into the DB.

pub mod audit;
pub mod confirm_partial;
pub mod leadership;
pub mod persistence;
pub mod reconcile;
pub mod reservation;
pub mod routing;
pub mod shard;
pub mod stock;
pub mod stock_cache;
pub mod stock_level;
pub mod supervisor;
pub mod warehouse;

use chrono::NaiveDateTime;
use serde::Serializer;

use crate::domain::SkuKey;
use crate::store::db::DbError;
use crate::store::redis::RedisStoreError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    QuantityOutOfRange(String),
    #[error("no inventory for sku {} in warehouse {}", .0.sku_id, .0.warehouse_id)]
    InventoryNotFound(SkuKey),
    #[error("sku {0} has no inventory in any warehouse")]
    SkuNotFound(i64),
    #[error("insufficient stock for sku {} in warehouse {}: available {available}, requested {requested}", .key.sku_id, .key.warehouse_id)]
    InsufficientStock {
        key: SkuKey,
        available: i64,
        requested: i64,
    },
    #[error("available stock of sku {} in warehouse {} would exceed {max} (now {available})", .key.sku_id, .key.warehouse_id)]
    StockLimitExceeded {
        key: SkuKey,
        available: i64,
        max: i64,
    },
    #[error("{0}")]
    IdempotencyConflict(String),
    #[error("too many changes are waiting to be persisted; retry shortly")]
    JournalFull,
    #[error("the journal has not reached the DB for sku {} in warehouse {} yet; retry shortly", .0.sku_id, .0.warehouse_id)]
    JournalBehind(SkuKey),
    #[error("no reservation for order {0}")]
    ReservationNotFound(String),
    #[error("{0}")]
    InvalidStatus(String),
    #[error("order {0} was released before it was reserved")]
    OrderCancelled(String),
    #[error("the service is busy; retry shortly")]
    Overloaded,
    #[error("refused: another instance took over the supervisor lease")]
    Fenced,
    #[error("no answer in time; retrying with the same orderNo is safe")]
    Timeout,
    #[error("no warehouse {0}")]
    WarehouseNotFound(i64),
    #[error("{0}")]
    WarehouseConflict(String),
    #[error("insufficient stock for sku {sku_id} in the warehouses routing may use: available {available}, requested {requested}")]
    RoutedInsufficient {
        sku_id: i64,
        requested: i64,
        available: i64,
    },
    #[error("no enabled warehouse{} stocks sku {sku_id}", .region.as_ref().map(|r| format!(" in region {r}")).unwrap_or_default())]
    NoWarehouse { sku_id: i64, region: Option<String> },
    #[error("{0}")]
    UnsupportedOnCluster(String),
    #[error(transparent)]
    Redis(#[from] RedisStoreError),
    #[error(transparent)]
    Db(#[from] DbError),
    /// A fault point armed with `error` (builds with the `fault-injection` feature only).
    #[error(transparent)]
    Fault(#[from] crate::fault::Injected),
}

impl EngineError {
    /// The one classification of "try again later" (Kafka retries the message, HTTP answers
    /// 503 with Retry-After, the supervisor ends its run and tries at the next one): load
    /// shedding, timeouts, a journal that is full or behind, and the store errors of an
    /// outage. A store error of the bug kind (a constraint violation, a bad script reply) is
    /// not: retrying it forever would block a Kafka partition for nothing.
    pub fn is_retryable(&self) -> bool {
        match self {
            EngineError::Overloaded
            | EngineError::Timeout
            | EngineError::JournalFull
            | EngineError::JournalBehind(_)
            | EngineError::Fault(_) => true,
            EngineError::Redis(e) => e.is_retryable(),
            EngineError::Db(e) => e.is_retryable(),
            EngineError::Invalid(_)
            | EngineError::QuantityOutOfRange(_)
            | EngineError::InventoryNotFound(_)
            | EngineError::SkuNotFound(_)
            | EngineError::InsufficientStock { .. }
            | EngineError::StockLimitExceeded { .. }
            | EngineError::IdempotencyConflict(_)
            | EngineError::ReservationNotFound(_)
            | EngineError::InvalidStatus(_)
            | EngineError::OrderCancelled(_)
            | EngineError::WarehouseNotFound(_)
            | EngineError::WarehouseConflict(_)
            | EngineError::RoutedInsufficient { .. }
            | EngineError::NoWarehouse { .. }
            | EngineError::UnsupportedOnCluster(_)
            // The job that got it stops; the new leader does the work.
            | EngineError::Fenced => false,
        }
    }
}

/// Local date-time without zone, as the reference prints them (`2024-01-01T12:00:00`).
pub fn format_local_datetime(t: &NaiveDateTime) -> String {
    let mut buf = [0u8; 23];
    match write_local_datetime(t, &mut buf) {
        Some(text) => text.to_string(),
        // chrono's own formatting for years that need a sign or a fifth digit.
        None => t.format("%Y-%m-%dT%H:%M:%S").to_string(),
    }
}

/// `format_local_datetime` into a stack buffer (`domain::datetime_digits`). None for years
/// outside 0..=9999.
fn write_local_datetime<'b>(t: &NaiveDateTime, buf: &'b mut [u8; 23]) -> Option<&'b str> {
    crate::domain::datetime_digits(t, buf, b'T', false)
}

pub fn ms_to_local_datetime(ms: i64) -> NaiveDateTime {
    crate::domain::ms_to_local(ms)
}

pub use crate::domain::now_ms;

pub fn serialize_local_datetime<S: Serializer>(t: &NaiveDateTime, s: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; 23];
    match write_local_datetime(t, &mut buf) {
        Some(text) => s.serialize_str(text),
        None => s.serialize_str(&format_local_datetime(t)),
    }
}

pub fn serialize_local_datetime_opt<S: Serializer>(
    t: &Option<NaiveDateTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize_local_datetime(t, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::DbError;
    use crate::store::redis::RedisStoreError;
    use std::time::Duration;

    #[test]
    fn dates_print_as_chrono_would() {
        for (y, mo, d, h, mi, se) in [
            (2026, 11, 26, 16, 5, 9),
            (1, 1, 1, 0, 0, 0),
            (9999, 12, 31, 23, 59, 59),
            (-5, 3, 4, 5, 6, 7),
            (12345, 1, 2, 3, 4, 5),
        ] {
            let t = chrono::NaiveDate::from_ymd_opt(y, mo, d)
                .unwrap()
                .and_hms_opt(h, mi, se)
                .unwrap();
            assert_eq!(
                format_local_datetime(&t),
                t.format("%Y-%m-%dT%H:%M:%S").to_string()
            );
        }
    }

    #[test]
    fn one_classification_of_what_is_worth_retrying() {
        let io = redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert!(EngineError::Redis(RedisStoreError::Redis(io)).is_retryable());
        assert!(
            EngineError::Redis(RedisStoreError::Timeout(Duration::from_secs(1))).is_retryable()
        );
        assert!(!EngineError::Redis(RedisStoreError::BadReply {
            script: "reserve",
            detail: "x".into()
        })
        .is_retryable());
        assert!(EngineError::Db(DbError::PoolTimeout(Duration::from_secs(1))).is_retryable());
        // A bug-class DB error would block a Kafka partition forever if retried.
        let violation = diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            Box::new("duplicate".to_string()),
        );
        assert!(!EngineError::Db(DbError::Query(violation)).is_retryable());
        // diesel-async's kind for a dropped connection ("server has gone away").
        let gone = diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::Unknown,
            Box::new("MySQL server has gone away".to_string()),
        );
        assert!(EngineError::Db(DbError::Query(gone)).is_retryable());
        assert!(EngineError::Overloaded.is_retryable());
        assert!(!EngineError::ReservationNotFound("o".into()).is_retryable());
    }
}
