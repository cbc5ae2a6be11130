//! The persistence actor: reads every group's journal stream with one consumer group (one
//! XREADGROUP over all streams), writes each batch in
//! one DB transaction, then acknowledges. Unacknowledged entries are read again after a
//! restart (this consumer's own) or claimed from a dead consumer after `claim_idle_ms`.
//! A DB outage makes it retry the same batch with backoff while requests keep being
//! served from Redis; the scripts refuse new changes once the journal is full.

use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::watch;

use crate::config::JournalSettings;
use crate::engine::stock_level::StockLevelSink;
use crate::metrics::Metrics;
use crate::store::db::{self, DbError, DbPool};
use crate::store::journal::{parse_entry, persist_batch, plan_batch, txn_prefix};
use crate::store::redis::{JournalEntry, JournalLag, RedisStore, RedisStoreError};
use crate::store::wire::JournalLine;

pub const PERSIST_GROUP: &str = "persist";

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error(transparent)]
    Redis(#[from] RedisStoreError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Fault(#[from] crate::fault::Injected),
}

/// The logic, without the actor: read, write, acknowledge.
pub struct JournalPersister {
    redis: RedisStore,
    pool: DbPool,
    consumer: String,
    settings: JournalSettings,
    metrics: Metrics,
    /// Re-read this consumer's own pending entries before new ones.
    pending_first: bool,
    last_claim: Instant,
    last_trim: Instant,
    /// Stock-level events, when Kafka and `kafka.alert_topic` are on.
    stock_levels: Option<StockLevelSink>,
}

impl JournalPersister {
    /// `redis` should be a dedicated connection: reads block.
    pub fn new(
        redis: RedisStore,
        pool: DbPool,
        consumer: String,
        settings: JournalSettings,
        metrics: Metrics,
    ) -> Self {
        JournalPersister {
            redis,
            pool,
            consumer,
            settings,
            metrics,
            pending_first: true,
            last_claim: Instant::now(),
            last_trim: Instant::now(),
            stock_levels: None,
        }
    }

    /// Publishes stock-level events of every persisted batch, after its commit and before
    /// its acknowledgement (a crash in between derives and sends the same events again).
    /// A broker that does not confirm them in time does not hold the journal back
    /// (`StockLevelSink::publish`).
    pub fn with_stock_levels(mut self, sink: StockLevelSink) -> Self {
        self.stock_levels = Some(sink);
        self
    }

    pub async fn prepare(&self) -> Result<(), PersistError> {
        self.redis.ensure_journal_group(PERSIST_GROUP).await?;
        Ok(())
    }

    /// Reads the next batch: own pending entries first, then stale ones of dead
    /// consumers now and then, then new ones (blocking up to `block_ms`).
    pub async fn next_batch(&mut self) -> Result<Vec<JournalEntry>, PersistError> {
        // XREADGROUP's COUNT is per stream: one read brings up to `batch_size` entries of
        // each group's stream (a hot group's entries are large batches, a quiet group's
        // small ones; splitting the count made every transaction smaller and the drain
        // slower: docs/benchmarks.md).
        let count = self.settings.batch_size;
        if self.pending_first {
            let entries = self
                .redis
                .read_journal(PERSIST_GROUP, &self.consumer, "0", count, None)
                .await?;
            if !entries.is_empty() {
                return Ok(entries);
            }
            self.pending_first = false;
        }
        let claim_every = Duration::from_millis(self.settings.claim_idle_ms / 2);
        if self.last_claim.elapsed() >= claim_every {
            self.last_claim = Instant::now();
            // Our own pending entries too: after a failover the new master may hold entries
            // we persisted and acknowledged on the old one (the XACK did not replicate).
            self.pending_first = true;
            let claimed = self
                .redis
                .claim_stale(
                    PERSIST_GROUP,
                    &self.consumer,
                    Duration::from_millis(self.settings.claim_idle_ms),
                    count,
                )
                .await?;
            if !claimed.is_empty() {
                // Claimed (now this consumer's), not written: they wait here as pending.
                crate::fault::point("persist.claim").await?;
                tracing::warn!(
                    entries = claimed.len(),
                    "claimed journal entries a dead consumer left pending"
                );
                return Ok(claimed);
            }
        }
        let entries = self
            .redis
            .read_journal(
                PERSIST_GROUP,
                &self.consumer,
                ">",
                count,
                Some(Duration::from_millis(self.settings.block_ms)),
            )
            .await?;
        Ok(entries)
    }

    /// Writes entries to the DB in one transaction and acknowledges them.
    pub async fn persist(&self, entries: &[JournalEntry]) -> Result<(), PersistError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut parsed: Vec<(String, Vec<JournalLine>)> = Vec::with_capacity(entries.len());
        for entry in entries {
            match parse_entry(&entry.id, &entry.payload) {
                Ok(lines) => parsed.push((txn_prefix(entry.group, &entry.id), lines)),
                Err(e) => {
                    // Cannot happen with our scripts; keeping it would block the journal,
                    // so it is logged in full (for a manual fix) and skipped.
                    tracing::error!(error = %e, payload = %entry.payload, "unreadable journal entry skipped");
                    self.metrics
                        .journal_entries_persisted
                        .with_label_values(&["unreadable"])
                        .inc();
                }
            }
        }
        let writes = plan_batch(&parsed);
        let levels = {
            let mut conn = db::connection(&self.pool).await?;
            persist_batch(&mut conn, &writes)
                .await
                .map_err(DbError::from)?;
            match &self.stock_levels {
                Some(sink) => sink.derive(&mut conn, &parsed).await?,
                None => Vec::new(),
            }
        };
        // Committed, not acknowledged: the entries are read again and must insert nothing.
        crate::fault::point("persist.before_ack").await?;
        if let Some(sink) = &self.stock_levels {
            sink.publish(&levels).await;
        }
        let ids: Vec<(u32, String)> = entries.iter().map(|e| (e.group, e.id.clone())).collect();
        self.redis.ack_journal(PERSIST_GROUP, &ids).await?;
        self.metrics
            .journal_entries_persisted
            .with_label_values(&["ok"])
            .inc_by(entries.len() as u64);
        self.metrics
            .journal_batch_size
            .with_label_values(&["persist"])
            .observe(entries.len() as f64);
        Ok(())
    }

    /// Trims acknowledged entries, at most once a second.
    pub async fn maybe_trim(&mut self) {
        if self.last_trim.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_trim = Instant::now();
        match self.redis.trim_journal().await {
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "journal trim failed"),
        }
        if let Ok(lag) = self.redis.journal_lag(PERSIST_GROUP).await {
            self.metrics.journal_lag.set(lag.not_persisted() as i64);
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .settings
            .retry_min_ms
            .saturating_mul(1u64 << attempt.min(16));
        Duration::from_millis(base.min(self.settings.retry_max_ms))
    }

    /// Runs until `stop` turns true. A batch that fails is retried (same entries) with
    /// backoff; on stop, what is unacknowledged stays pending and is replayed later.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut attempt: u32 = 0;
        while let Err(e) = self.prepare().await {
            tracing::warn!(error = %e, "cannot create the journal consumer group; retrying");
            if sleep_or_stop(self.backoff(attempt), &mut stop).await {
                return;
            }
            attempt = attempt.saturating_add(1);
        }
        attempt = 0;
        let mut batch: Vec<JournalEntry> = Vec::new();
        loop {
            if *stop.borrow() {
                break;
            }
            if batch.is_empty() {
                match self.next_batch().await {
                    Ok(entries) => batch = entries,
                    Err(e) => {
                        self.failure("read", &e);
                        // A read whose reply was lost (a dropped connection, a failover) may
                        // have delivered entries to us: read our own pending ones first.
                        self.pending_first = true;
                        // Redis lost the stream and its group (data loss): make them again.
                        if e.to_string().contains("NOGROUP") {
                            let _ = self.prepare().await;
                        }
                        if sleep_or_stop(self.backoff(attempt), &mut stop).await {
                            break;
                        }
                        attempt = attempt.saturating_add(1);
                        continue;
                    }
                }
                if batch.is_empty() {
                    self.maybe_trim().await;
                    continue;
                }
            }
            match self.persist(&batch).await {
                Ok(()) => {
                    attempt = 0;
                    batch.clear();
                    self.maybe_trim().await;
                }
                Err(e) => {
                    self.failure("write", &e);
                    if sleep_or_stop(self.backoff(attempt), &mut stop).await {
                        break;
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        }
        tracing::info!(consumer = %self.consumer, "persistence stopped");
    }

    fn failure(&self, kind: &str, e: &PersistError) {
        self.metrics
            .journal_write_failures
            .with_label_values(&[kind])
            .inc();
        tracing::warn!(error = %e, kind, "journal persistence failed; retrying with backoff");
    }
}

/// Sleeps; true when stop was requested meanwhile.
async fn sleep_or_stop(pause: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => *stop.borrow(),
        changed = stop.changed() => changed.is_err() || *stop.borrow(),
    }
}

/// The actor shell: owns the running loop and answers questions about it.
pub struct PersistenceActor {
    persister: Option<JournalPersister>,
    stop: watch::Sender<bool>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
    lag_source: RedisStore,
}

impl PersistenceActor {
    pub fn new(persister: JournalPersister, lag_source: RedisStore) -> Self {
        let (stop, _) = watch::channel(false);
        PersistenceActor {
            persister: Some(persister),
            stop,
            done: None,
            lag_source,
        }
    }
}

impl Actor for PersistenceActor {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        if let Some(persister) = self.persister.take() {
            let stop = self.stop.subscribe();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            self.done = Some(done_rx);
            actix::spawn(async move {
                persister.run(stop).await;
                let _ = done_tx.send(());
            });
        }
    }
}

/// Stops the loop after the batch in hand; resolves when it has stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopPersistence;

impl Handler<StopPersistence> for PersistenceActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: StopPersistence, _ctx: &mut Self::Context) -> Self::Result {
        let _ = self.stop.send(true);
        let done = self.done.take();
        Box::pin(async move {
            if let Some(done) = done {
                let _ = done.await;
            }
        })
    }
}

/// How far the DB is behind the journal.
#[derive(Message)]
#[rtype(result = "Result<JournalLag, RedisStoreError>")]
pub struct GetLag;

impl Handler<GetLag> for PersistenceActor {
    type Result = ResponseFuture<Result<JournalLag, RedisStoreError>>;

    fn handle(&mut self, _msg: GetLag, _ctx: &mut Self::Context) -> Self::Result {
        let redis = self.lag_source.clone();
        Box::pin(async move { redis.journal_lag(PERSIST_GROUP).await })
    }
}
