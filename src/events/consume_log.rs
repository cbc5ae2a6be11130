//! Idempotency layer 1 (`t_mq_consume_log`), batched: every message in flight asks "was
//! this messageId handled?" before its work and records its result after it. One task
//! collects those requests from all partitions and answers each kind with one statement
//! per batch (one SELECT ... IN, one multi-row INSERT ... ON DUPLICATE KEY UPDATE), the way
//! the shards batch Redis calls: a message costs a share of two statements, not two round
//! trips of its own. Bounded: a full queue makes callers wait.

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::store::db::{self, DbError, DbPool};
use crate::store::models::{ConsumeLog, NewConsumeLog};
use crate::store::redis::{RedisStore, RedisStoreError};

/// A consume-log failure, shared by every message of the batch it hit. `retryable` is the
/// store's own classification (`DbError::is_retryable`, `RedisStoreError::is_retryable`,
/// the one `EngineError::is_retryable` builds on): an outage is retried, a bug-class
/// error (a constraint, a bad reply) is not, so that it cannot block a partition forever.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LogError {
    pub message: String,
    pub retryable: bool,
}

impl LogError {
    fn db(e: &DbError) -> Self {
        LogError {
            message: e.to_string(),
            retryable: e.is_retryable(),
        }
    }

    fn redis(e: &RedisStoreError) -> Self {
        LogError {
            message: e.to_string(),
            retryable: e.is_retryable(),
        }
    }

    /// The batching task is gone (shutting down): the message is tried again later.
    fn gone(what: &str) -> Self {
        LogError {
            message: what.to_string(),
            retryable: true,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

/// Requests one statement may carry.
const MAX_BATCH: usize = 1000;
/// Requests waiting at most (callers wait beyond it).
const QUEUE: usize = 8192;

enum Request {
    Find {
        event_id: String,
        reply: oneshot::Sender<Result<Option<ConsumeLog>, LogError>>,
    },
    Record {
        row: NewConsumeLog,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
}

/// Cheap to clone; every clone talks to the same task.
#[derive(Clone)]
pub struct ConsumeLogBatcher {
    tx: mpsc::Sender<Request>,
}

impl ConsumeLogBatcher {
    /// Starts the task (on the current runtime). `group` is the consumer group every row
    /// belongs to.
    pub fn start(pool: DbPool, group: String) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(rx, pool, group));
        ConsumeLogBatcher { tx }
    }

    /// The row of `event_id` in this group, if any.
    pub async fn find(&self, event_id: &str) -> Result<Option<ConsumeLog>, LogError> {
        let (reply, rx) = oneshot::channel();
        let request = Request::Find {
            event_id: event_id.to_string(),
            reply,
        };
        self.tx
            .send(request)
            .await
            .map_err(|_| LogError::gone("the consume log is shut down"))?;
        rx.await
            .map_err(|_| LogError::gone("the consume log dropped the request"))?
    }

    /// Inserts or updates the row.
    pub async fn record(&self, row: NewConsumeLog) -> Result<(), LogError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Record { row, reply })
            .await
            .map_err(|_| LogError::gone("the consume log is shut down"))?;
        rx.await
            .map_err(|_| LogError::gone("the consume log dropped the request"))?
    }
}

/// The next batch: whatever waits in the queue, up to MAX_BATCH; None when it closed.
async fn next_batch<T>(rx: &mut mpsc::Receiver<T>) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
    Some(batch)
}

async fn run(mut rx: mpsc::Receiver<Request>, pool: DbPool, group: String) {
    while let Some(batch) = next_batch(&mut rx).await {
        let mut finds = Vec::new();
        let mut records = Vec::new();
        for request in batch {
            match request {
                Request::Find { event_id, reply } => finds.push((event_id, reply)),
                Request::Record { row, reply } => records.push((row, reply)),
            }
        }
        let rows: Vec<NewConsumeLog> = records.iter().map(|(row, _)| row.clone()).collect();
        let ids: Vec<String> = finds.iter().map(|(id, _)| id.clone()).collect();
        let (written, found) = tokio::join!(write(&pool, &rows), read(&pool, &ids, &group));
        if written.is_ok() {
            for (_, reply) in records {
                let _ = reply.send(Ok(()));
            }
        } else {
            // One bad row must not fail the others batched with it (they would be retried
            // forever): each row on its own, each caller gets its own answer.
            for (row, reply) in records {
                let _ = reply.send(write(&pool, std::slice::from_ref(&row)).await);
            }
        }
        match found {
            Ok(mut found) => {
                for (id, reply) in finds {
                    let _ = reply.send(Ok(found.remove(&id)));
                }
            }
            Err(e) => {
                for (_, reply) in finds {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

async fn write(pool: &DbPool, rows: &[NewConsumeLog]) -> Result<(), LogError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut conn = db::connection(pool).await.map_err(|e| LogError::db(&e))?;
    ConsumeLog::record_many(&mut conn, rows)
        .await
        .map(|_| ())
        .map_err(|e| LogError::db(&DbError::from(e)))
}

async fn read(
    pool: &DbPool,
    ids: &[String],
    group: &str,
) -> Result<HashMap<String, ConsumeLog>, LogError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut conn = db::connection(pool).await.map_err(|e| LogError::db(&e))?;
    let rows = ConsumeLog::find_many(&mut conn, ids, group)
        .await
        .map_err(|e| LogError::db(&DbError::from(e)))?;
    Ok(rows.into_iter().map(|r| (r.event_id.clone(), r)).collect())
}

/// The most a recent window may be (config check).
pub const RECENT_WINDOW_MAX_MS: u64 = 86_400_000;

/// What the recent window in Redis says of a messageId.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recent {
    /// Handled before: the recorded result.
    Found(String),
    /// Not handled before, for sure: Redis would hold its result if it had been.
    New,
    /// Redis cannot tell (the message is older than the window, has no usable timestamp, or
    /// Redis lost data or restarted since it was sent): ask the DB's log.
    Unknown,
}

/// Whether the absence of a message from the recent window proves it new.
///
/// A message is decided no earlier than it was sent (`sent_ms`, its Kafka timestamp, less
/// the clock allowance), and a result stays in the window for at least `window_ms` after
/// it was written. So when the message was sent less than `window_ms` (less the allowance)
/// ago, and after Redis last became whole (loaded from the DB, and on a single Redis
/// started: a restart may lose its AOF's last second), any result of it would be there.
/// `skew_ms`: how far the sender's clock may be ahead of this instance's.
pub fn absence_proves_new(
    sent_ms: Option<i64>,
    now_ms: i64,
    window_ms: i64,
    skew_ms: i64,
    whole_since_ms: Option<i64>,
) -> bool {
    let (Some(sent), Some(whole_since)) = (sent_ms, whole_since_ms) else {
        return false;
    };
    window_ms > 0
        && sent <= now_ms + skew_ms
        && now_ms - sent < window_ms - skew_ms
        && sent - skew_ms > whole_since
}

enum RecentRequest {
    Find {
        event_id: String,
        sent_ms: Option<i64>,
        reply: oneshot::Sender<Result<Recent, LogError>>,
    },
    Remember {
        event_id: String,
        result: String,
        reply: oneshot::Sender<Result<(), LogError>>,
    },
}

/// The consume log's recent window in Redis (`store::recent_log`), batched like the DB
/// log: one task answers every message in flight with one pipeline per batch. Off
/// (`window_ms` 0): every find is Unknown and nothing is remembered.
#[derive(Clone)]
pub struct RecentLog {
    tx: Option<mpsc::Sender<RecentRequest>>,
    metrics: Metrics,
}

impl RecentLog {
    pub fn start(
        redis: RedisStore,
        group: String,
        window_ms: u64,
        skew_ms: u64,
        metrics: Metrics,
    ) -> Self {
        if window_ms == 0 {
            return RecentLog { tx: None, metrics };
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let limits = Window {
            window_ms: window_ms as i64,
            skew_ms: skew_ms as i64,
        };
        tokio::spawn(run_recent(rx, redis, group, limits, metrics.clone()));
        RecentLog {
            tx: Some(tx),
            metrics,
        }
    }

    /// Off: results are recorded in the DB only, and read from it.
    pub fn is_on(&self) -> bool {
        self.tx.is_some()
    }

    /// What Redis knows of `event_id`, sent at `sent_ms` (its Kafka timestamp).
    pub async fn find(&self, event_id: &str, sent_ms: Option<i64>) -> Result<Recent, LogError> {
        let Some(tx) = &self.tx else {
            self.metrics
                .kafka_consume_log_lookups
                .with_label_values(&["db"])
                .inc();
            return Ok(Recent::Unknown);
        };
        ask(tx, |reply| RecentRequest::Find {
            event_id: event_id.to_string(),
            sent_ms,
            reply,
        })
        .await
    }

    /// Records a message's result in the window (before its outcome is published: a
    /// redelivery then republishes it instead of deciding again).
    pub async fn remember(&self, event_id: &str, result: &str) -> Result<(), LogError> {
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        ask(tx, |reply| RecentRequest::Remember {
            event_id: event_id.to_string(),
            result: result.to_string(),
            reply,
        })
        .await
    }
}

/// Sends one request to the task and waits for its answer.
async fn ask<T>(
    tx: &mpsc::Sender<RecentRequest>,
    request: impl FnOnce(oneshot::Sender<Result<T, LogError>>) -> RecentRequest,
) -> Result<T, LogError> {
    let (reply, rx) = oneshot::channel();
    tx.send(request(reply))
        .await
        .map_err(|_| LogError::gone("the recent consume log is shut down"))?;
    rx.await
        .map_err(|_| LogError::gone("the recent consume log dropped the request"))?
}

#[derive(Clone, Copy)]
struct Window {
    window_ms: i64,
    skew_ms: i64,
}

type FindReply = (
    String,
    Option<i64>,
    oneshot::Sender<Result<Recent, LogError>>,
);
type RememberReply = (String, String, oneshot::Sender<Result<(), LogError>>);

async fn run_recent(
    mut rx: mpsc::Receiver<RecentRequest>,
    redis: RedisStore,
    group: String,
    limits: Window,
    metrics: Metrics,
) {
    let window_ms = limits.window_ms;
    while let Some(batch) = next_batch(&mut rx).await {
        let mut finds: Vec<FindReply> = Vec::new();
        let mut remembers: Vec<RememberReply> = Vec::new();
        for request in batch {
            match request {
                RecentRequest::Find {
                    event_id,
                    sent_ms,
                    reply,
                } => finds.push((event_id, sent_ms, reply)),
                RecentRequest::Remember {
                    event_id,
                    result,
                    reply,
                } => remembers.push((event_id, result, reply)),
            }
        }
        let now_ms = crate::domain::now_ms();
        let ids: Vec<String> = finds.iter().map(|(id, _, _)| id.clone()).collect();
        let entries: Vec<(String, String)> = remembers
            .iter()
            .map(|(id, result, _)| (id.clone(), result.clone()))
            .collect();
        let read = async {
            if ids.is_empty() {
                return Ok(None);
            }
            redis
                .recent_log_read(&group, &ids, now_ms, window_ms)
                .await
                .map(Some)
        };
        let (written, read) = tokio::join!(
            redis.recent_log_write(&group, &entries, now_ms, window_ms),
            read
        );
        let written = written.map_err(|e| LogError::redis(&e));
        for (_, _, reply) in remembers {
            let _ = reply.send(written.clone());
        }
        match read {
            Ok(Some(mut read)) => {
                for (id, sent_ms, reply) in finds {
                    let answer = match read.found.remove(&id) {
                        Some(result) => Recent::Found(result),
                        None if absence_proves_new(
                            sent_ms,
                            now_ms,
                            window_ms,
                            limits.skew_ms,
                            read.whole_since_ms,
                        ) =>
                        {
                            Recent::New
                        }
                        None => Recent::Unknown,
                    };
                    let label = match answer {
                        Recent::Found(_) => "redis_found",
                        Recent::New => "redis_new",
                        Recent::Unknown => "db",
                    };
                    metrics
                        .kafka_consume_log_lookups
                        .with_label_values(&[label])
                        .inc();
                    let _ = reply.send(Ok(answer));
                }
            }
            Ok(None) => {}
            Err(e) => {
                let e = LogError::redis(&e);
                for (_, _, reply) in finds {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: i64 = 600_000;
    const SKEW: i64 = 5_000;

    #[test]
    fn a_log_error_keeps_the_stores_classification() {
        use diesel::result::{DatabaseErrorKind, Error};
        let outage = LogError::db(&DbError::PoolTimeout(std::time::Duration::from_secs(2)));
        assert!(outage.is_retryable(), "{outage}");
        let bug = LogError::db(&DbError::Query(Error::DatabaseError(
            DatabaseErrorKind::CheckViolation,
            Box::new("check constraint failed".to_string()),
        )));
        assert!(!bug.is_retryable(), "{bug}");
        assert!(LogError::gone("shut down").is_retryable());
    }

    #[test]
    fn a_fresh_message_after_redis_became_whole_is_new_when_absent() {
        let now = 10_000_000;
        assert!(absence_proves_new(
            Some(now - 1_000),
            now,
            W,
            SKEW,
            Some(now - 3_600_000)
        ));
        // Sent just inside the window less the allowance.
        assert!(absence_proves_new(
            Some(now - (W - SKEW) + 1),
            now,
            W,
            SKEW,
            Some(0)
        ));
    }

    #[test]
    fn redis_cannot_vouch_for_old_future_or_unstamped_messages() {
        let now = 10_000_000;
        // Older than the window less the allowance: its result may have expired.
        assert!(!absence_proves_new(
            Some(now - (W - SKEW)),
            now,
            W,
            SKEW,
            Some(0)
        ));
        // From a clock far ahead: when it was really sent is unknown.
        assert!(!absence_proves_new(
            Some(now + SKEW + 1),
            now,
            W,
            SKEW,
            Some(0)
        ));
        assert!(!absence_proves_new(None, now, W, SKEW, Some(0)));
        // The window is off.
        assert!(!absence_proves_new(Some(now), now, 0, SKEW, Some(0)));
    }

    #[test]
    fn redis_cannot_vouch_for_messages_from_before_it_became_whole() {
        let now = 10_000_000;
        let whole_since = now - 5_000;
        // Sent before Redis was reloaded (or restarted): a result may have been lost.
        assert!(!absence_proves_new(
            Some(whole_since + SKEW),
            now,
            W,
            SKEW,
            Some(whole_since)
        ));
        assert!(absence_proves_new(
            Some(whole_since + SKEW + 1),
            now,
            W,
            SKEW,
            Some(whole_since)
        ));
        // Lost and not rebuilt yet.
        assert!(!absence_proves_new(Some(now), now, W, SKEW, None));
    }
}
