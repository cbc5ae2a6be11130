//! Idempotency layer 1 (`t_mq_consume_log`), batched: every message in flight asks "was
//! this messageId handled?" before its work and records its result after it. One task
//! collects those requests from all partitions and answers each kind with one statement
//! per batch (one SELECT ... IN, one multi-row INSERT ... ON DUPLICATE KEY UPDATE), the way
//! the shards batch Redis calls: a message costs a share of two statements, not two round
//! trips of its own. Bounded: a full queue makes callers wait.

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot};

use crate::store::db::{self, DbPool};
use crate::store::models::{ConsumeLog, NewConsumeLog};

/// Requests one statement may carry.
const MAX_BATCH: usize = 1000;
/// Requests waiting at most (callers wait beyond it).
const QUEUE: usize = 8192;

enum Request {
    Find {
        event_id: String,
        reply: oneshot::Sender<Result<Option<ConsumeLog>, String>>,
    },
    Record {
        row: NewConsumeLog,
        reply: oneshot::Sender<Result<(), String>>,
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
    pub async fn find(&self, event_id: &str) -> Result<Option<ConsumeLog>, String> {
        let (reply, rx) = oneshot::channel();
        let request = Request::Find {
            event_id: event_id.to_string(),
            reply,
        };
        self.tx
            .send(request)
            .await
            .map_err(|_| "the consume log is shut down".to_string())?;
        rx.await
            .map_err(|_| "the consume log dropped the request".to_string())?
    }

    /// Inserts or updates the row.
    pub async fn record(&self, row: NewConsumeLog) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Record { row, reply })
            .await
            .map_err(|_| "the consume log is shut down".to_string())?;
        rx.await
            .map_err(|_| "the consume log dropped the request".to_string())?
    }
}

async fn run(mut rx: mpsc::Receiver<Request>, pool: DbPool, group: String) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
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

async fn write(pool: &DbPool, rows: &[NewConsumeLog]) -> Result<(), String> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut conn = db::connection(pool).await.map_err(|e| e.to_string())?;
    ConsumeLog::record_many(&mut conn, rows)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn read(
    pool: &DbPool,
    ids: &[String],
    group: &str,
) -> Result<HashMap<String, ConsumeLog>, String> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut conn = db::connection(pool).await.map_err(|e| e.to_string())?;
    let rows = ConsumeLog::find_many(&mut conn, ids, group)
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows.into_iter().map(|r| (r.event_id.clone(), r)).collect())
}
