//! The MySQL side: the deadpool pool of diesel-async connections and the embedded
//! migrations. Queries live next to their models (`store::models`).

use std::time::Duration;

use diesel_async::pooled_connection::deadpool::{Object, Pool, PoolError};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::AsyncMysqlConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::config::DatabaseSettings;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

pub type DbPool = Pool<AsyncMysqlConnection>;
pub type DbConn = Object<AsyncMysqlConnection>;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("no database connection within {0:?}")]
    PoolTimeout(Duration),
    #[error("database connection failed: {0}")]
    Connect(String),
    #[error("database: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("migrations failed: {0}")]
    Migration(String),
}

impl DbError {
    /// Errors worth retrying (outage, pool exhaustion, deadlock), as opposed to a bug.
    pub fn is_retryable(&self) -> bool {
        match self {
            DbError::PoolTimeout(_) | DbError::Connect(_) => true,
            DbError::Query(diesel::result::Error::DatabaseError(kind, info)) => {
                // diesel-async reports client-side failures (a reset connection, "server
                // has gone away") as Unknown, with the server errors it does not list:
                // retried, as before. The bug kinds (constraint violations) are not.
                matches!(
                    kind,
                    diesel::result::DatabaseErrorKind::SerializationFailure
                        | diesel::result::DatabaseErrorKind::ClosedConnection
                        | diesel::result::DatabaseErrorKind::UnableToSendCommand
                        | diesel::result::DatabaseErrorKind::Unknown
                ) || info.message().contains("Deadlock")
                    || info.message().contains("Lock wait timeout")
            }
            DbError::Query(diesel::result::Error::BrokenTransactionManager) => true,
            _ => false,
        }
    }
}

pub fn build_pool(settings: &DatabaseSettings) -> Result<DbPool, DbError> {
    let manager = AsyncDieselConnectionManager::<AsyncMysqlConnection>::new(settings.url.expose());
    let wait = Duration::from_millis(settings.pool_timeout_ms);
    Pool::builder(manager)
        .max_size(settings.pool_max_size)
        .wait_timeout(Some(wait))
        .create_timeout(Some(wait))
        .recycle_timeout(Some(wait))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::Connect(e.to_string()))
}

/// A pooled connection, or 503-class errors when the pool cannot give one in time.
pub async fn connection(pool: &DbPool) -> Result<DbConn, DbError> {
    pool.get().await.map_err(|e| match e {
        PoolError::Timeout(_) => DbError::PoolTimeout(pool.timeouts().wait.unwrap_or_default()),
        PoolError::Backend(e) => DbError::Connect(e.to_string()),
        other => DbError::Connect(other.to_string()),
    })
}

/// Runs the embedded migrations on a connection of their own (diesel's migration harness
/// is synchronous, so it runs through the async connection wrapper on a blocking thread).
pub async fn run_migrations(url: &str) -> Result<Vec<String>, DbError> {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        use diesel::Connection;
        use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
        let mut conn = AsyncConnectionWrapper::<AsyncMysqlConnection>::establish(&url)
            .map_err(|e| DbError::Connect(e.to_string()))?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| DbError::Migration(e.to_string()))?;
        Ok(applied.iter().map(|m| m.to_string()).collect())
    })
    .await
    .map_err(|e| DbError::Migration(e.to_string()))?
}
