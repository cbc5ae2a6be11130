//! Stock positions: queries, adjustments, sync to Redis, start-up warm-up.
//! Redis decides every change (in a Lua script that also journals it); the DB follows
//! through the persistence actor.

use crate::domain::{SkuId, WarehouseId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use serde::Serialize;

use crate::config::Settings;
use crate::domain::{LedgerReason, SkuKey, StockLevels};
use crate::engine::stock_cache::{CacheMetrics, CachedLevels, RowMeta, StockCache};
use crate::engine::EngineError;
use crate::metrics::Metrics;
use crate::store::db::{self, DbError, DbPool};
use crate::store::models::{Inventory, Reservation, StockThreshold};
use crate::store::redis::{AdjustCommand, AdjustOutcome, RedisStore, SyncStatus};
use crate::store::supervision::OrderSnapshot;
use crate::store::wire::RecordLine;

/// A local date-time (as stored) to ms since the epoch.
pub fn local_to_ms(t: NaiveDateTime) -> i64 {
    use chrono::TimeZone;
    chrono::Local
        .from_local_datetime(&t)
        .earliest()
        .map(|t| t.timestamp_millis())
        .unwrap_or_else(|| t.and_utc().timestamp_millis())
}

/// The reference's inventory view (`GET /inventory/{skuId}`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventoryView {
    pub id: Option<i64>,
    pub sku_id: i64,
    pub warehouse_id: i64,
    pub available_qty: i64,
    pub reserved_qty: i64,
    pub total_qty: i64,
    pub redis_available_qty: Option<i64>,
    #[schema(value_type = Option<String>, example = "2026-11-25 10:30:00")]
    #[serde(serialize_with = "crate::engine::serialize_local_datetime_opt")]
    pub updated_at: Option<NaiveDateTime>,
    /// With `source=db`: Redis' reserved units beside the DB's (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_reserved_qty: Option<i64>,
    /// With `source=db`: the units sold, per Redis (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_confirmed_qty: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct AdjustRequest {
    pub key: SkuKey,
    pub delta: i64,
    pub reason: LedgerReason,
    pub request_id: Option<String>,
    pub remark: String,
    pub trace_id: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdjustResult {
    pub sku_id: i64,
    pub warehouse_id: i64,
    pub delta: i64,
    #[schema(value_type = String, example = "INBOUND")]
    pub reason: &'static str,
    pub request_id: Option<String>,
    /// False when this request id was applied before (nothing changed this time).
    pub applied: bool,
    pub available_qty: i64,
    pub reserved_qty: i64,
    /// Whether the DB had the change when we answered.
    pub persisted: bool,
}

/// A position's low-stock threshold (STOCK_LOW events, docs/events.md).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThresholdView {
    pub sku_id: i64,
    pub warehouse_id: i64,
    /// null: none (STOCK_OUT and STOCK_BACK are still told).
    pub low_stock_threshold: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncResult {
    pub sku_id: i64,
    pub warehouse_id: i64,
    /// IN_SYNC, OVERWRITTEN or LOADED
    #[schema(value_type = String, example = "IN_SYNC")]
    pub status: &'static str,
    pub db_available_qty: i64,
    pub redis_available_before: Option<i64>,
    pub redis_available_qty: i64,
}

/// Where a stock read takes `availableQty` and `reservedQty` from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadSource {
    /// Redis' counters (where every decision is made), through the in-process cache:
    /// at most `cache.stock_ttl_ms` behind other instances' changes, never behind this
    /// instance's own.
    Live,
    /// The DB row as the journal has written it (reconciliation by hand); uncached.
    Db,
}

#[derive(Clone)]
pub struct StockService {
    redis: RedisStore,
    pool: DbPool,
    settings: Settings,
    metrics: Metrics,
    cache: Arc<StockCache>,
}

/// Demo stock of the reference's quick start: (sku, available) in the default warehouse.
const DEMO_STOCK: &[(i64, i64)] = &[(1001, 100), (1002, 200)];

impl StockService {
    pub fn new(redis: RedisStore, pool: DbPool, settings: Settings, metrics: Metrics) -> Self {
        let cache = Arc::new(StockCache::new(
            Duration::from_millis(settings.cache.stock_ttl_ms),
            Duration::from_millis(settings.cache.row_ttl_ms),
            settings.cache.capacity,
            CacheMetrics::of(&metrics),
        ));
        StockService {
            redis,
            pool,
            settings,
            metrics,
            cache,
        }
    }

    /// The read cache this service and the shards keep current.
    pub fn cache(&self) -> Arc<StockCache> {
        self.cache.clone()
    }

    pub fn redis(&self) -> &RedisStore {
        &self.redis
    }

    pub fn pool(&self) -> &DbPool {
        &self.pool
    }

    /// One position's stock (`GET /inventory/{skuId}`).
    pub async fn get(&self, key: SkuKey, source: ReadSource) -> Result<InventoryView, EngineError> {
        let found = match source {
            ReadSource::Live => self.live_views(&[key]).await?.pop().flatten(),
            ReadSource::Db => self.db_views(&[key]).await?.pop().flatten(),
        };
        found.ok_or(EngineError::InventoryNotFound(key))
    }

    /// Many positions at once (`POST /inventory/query`), in the order asked; None where no
    /// store holds the position.
    pub async fn query(
        &self,
        keys: &[SkuKey],
        source: ReadSource,
    ) -> Result<Vec<Option<InventoryView>>, EngineError> {
        match source {
            ReadSource::Live => self.live_views(keys).await,
            ReadSource::Db => self.db_views(keys).await,
        }
    }

    /// Every warehouse's stock of a SKU (`GET /inventory/{skuId}/all`): the DB says which
    /// positions exist, the levels come from `source`.
    pub async fn list_by_sku(
        &self,
        sku_id: i64,
        source: ReadSource,
    ) -> Result<Vec<InventoryView>, EngineError> {
        let rows = {
            let mut conn = db::connection(&self.pool).await?;
            Inventory::by_sku(&mut conn, sku_id)
                .await
                .map_err(db::DbError::from)?
        };
        if rows.is_empty() {
            return Err(EngineError::SkuNotFound(sku_id));
        }
        let keys: Vec<SkuKey> = rows.iter().map(Inventory::key).collect();
        let views = match source {
            ReadSource::Live => {
                for row in &rows {
                    self.cache.store_row(row.key(), row_meta(row));
                }
                self.live_views(&keys).await?
            }
            ReadSource::Db => {
                let redis = self.redis.stock_many(&keys).await?;
                let rows = rows.into_iter().map(|row| (row.key(), row)).collect();
                db_side_views(&keys, &rows, redis)
            }
        };
        Ok(views.into_iter().flatten().collect())
    }

    /// Levels from the cache or, for the misses, one Redis round trip; the DB row's id and
    /// updatedAt from the cache or one DB query. A position Redis does not hold (not
    /// loaded yet) is answered from its DB row, with `redisAvailableQty` null.
    async fn live_views(&self, keys: &[SkuKey]) -> Result<Vec<Option<InventoryView>>, EngineError> {
        let (mut levels, mut rows): (Vec<Option<CachedLevels>>, Vec<Option<RowMeta>>) =
            keys.iter().map(|k| self.cache.lookup(*k)).unzip();
        let misses: Vec<SkuKey> = keys
            .iter()
            .zip(&levels)
            .filter(|(_, l)| l.is_none())
            .map(|(k, _)| *k)
            .collect();
        if !misses.is_empty() {
            // Taken before the read: an entry this instance writes meanwhile stays newer.
            let read_at = Instant::now();
            let mut read = self.redis.stock_many(&misses).await?.into_iter();
            // `misses` lists the empty slots in order: fill them in the same order.
            for (slot, key) in levels.iter_mut().zip(keys) {
                if slot.is_some() {
                    continue;
                }
                *slot = read.next().flatten().map(|l| {
                    let cached = CachedLevels::from(l);
                    self.cache.store_read(*key, cached, read_at);
                    cached
                });
            }
        }

        // Positions without Redis levels need their whole DB row.
        let mut db_rows: HashMap<SkuKey, Inventory> = HashMap::new();
        let wanted: Vec<SkuKey> = keys
            .iter()
            .zip(levels.iter().zip(&rows))
            .filter(|(_, (l, r))| l.is_none() || r.is_none())
            .map(|(k, _)| *k)
            .collect();
        if !wanted.is_empty() {
            let found = match db::connection(&self.pool).await {
                Ok(mut conn) => Inventory::find_many(&mut conn, &wanted)
                    .await
                    .map_err(|e| EngineError::from(db::DbError::from(e))),
                Err(e) => Err(e.into()),
            };
            match found {
                Ok(found) => {
                    for row in found {
                        self.cache.store_row(row.key(), row_meta(&row));
                        db_rows.insert(row.key(), row);
                    }
                }
                // Redis alone answers what it holds while the DB is away (id and
                // updatedAt null); what only the DB could answer fails.
                Err(e) if levels.iter().all(Option::is_some) => {
                    tracing::warn!(error = %e, "stock read answered from Redis only");
                }
                Err(e) => return Err(e),
            }
            for (slot, key) in rows.iter_mut().zip(keys) {
                if slot.is_none() {
                    *slot = db_rows.get(key).map(row_meta);
                }
            }
        }

        Ok(keys
            .iter()
            .zip(levels.into_iter().zip(rows))
            .map(|(key, (levels, row))| match levels {
                Some(l) => Some(redis_view(*key, l.available, l.reserved, row)),
                None => db_rows.get(key).map(|row| view(row, None)),
            })
            .collect())
    }

    /// The DB rows as the journal wrote them, with Redis' available beside them (one
    /// pipeline); positions only Redis holds (journal behind) from Redis.
    async fn db_views(&self, keys: &[SkuKey]) -> Result<Vec<Option<InventoryView>>, EngineError> {
        let rows: HashMap<SkuKey, Inventory> = {
            let mut conn = db::connection(&self.pool).await?;
            Inventory::find_many(&mut conn, keys)
                .await
                .map_err(db::DbError::from)?
                .into_iter()
                .map(|row| (row.key(), row))
                .collect()
        };
        let redis = self.redis.stock_many(keys).await?;
        Ok(db_side_views(keys, &rows, redis))
    }

    pub async fn adjust(&self, req: AdjustRequest) -> Result<AdjustResult, EngineError> {
        let limits = &self.settings.inventory;
        // unsigned_abs: i64::MIN has no positive counterpart (abs() would overflow).
        if req.delta == 0 || req.delta.unsigned_abs() > limits.max_adjust_qty.unsigned_abs() {
            return Err(EngineError::QuantityOutOfRange(format!(
                "delta must be non-zero and at most {} in absolute value",
                limits.max_adjust_qty
            )));
        }
        let sign_ok = match req.reason {
            LedgerReason::Inbound | LedgerReason::RefundRestore => req.delta > 0,
            LedgerReason::Outbound => req.delta < 0,
            LedgerReason::Adjust => true,
            _ => false,
        };
        if !sign_ok {
            return Err(EngineError::Invalid(format!(
                "reason {} does not allow delta {}",
                req.reason.as_str(),
                req.delta
            )));
        }
        let mut cmd = AdjustCommand {
            key: req.key,
            delta: req.delta,
            max_available: limits.max_stock_qty,
            reason: req.reason.as_str(),
            trace_id: &req.trace_id,
            request_id: req.request_id.as_deref(),
            remark: &req.remark,
            marker_ttl_secs: self.settings.reservation.marker_ttl_hours * 3600,
            max_journal_entries: self.settings.journal.max_pending_entries,
            create_if_missing: false,
        };
        // At most: missing -> load from DB (or create) -> apply.
        let mut outcome = self.timed_adjust(&cmd).await?;
        if outcome == AdjustOutcome::Missing {
            if self.load_position(req.key).await? {
                outcome = self.timed_adjust(&cmd).await?;
            }
            if outcome == AdjustOutcome::Missing {
                if req.delta < 0 {
                    self.count_adjust(req.reason, "not_found");
                    return Err(EngineError::InventoryNotFound(req.key));
                }
                cmd.create_if_missing = true;
                outcome = self.timed_adjust(&cmd).await?;
            }
        }
        let (applied, levels) = match outcome {
            AdjustOutcome::Applied { levels, .. } => (true, levels),
            AdjustOutcome::AlreadyApplied { levels } => (false, levels),
            AdjustOutcome::Conflict { first_delta } => {
                self.count_adjust(req.reason, "conflict");
                return Err(EngineError::IdempotencyConflict(format!(
                    "request {} was applied with delta {first_delta}, not {}",
                    req.request_id.as_deref().unwrap_or(""),
                    req.delta
                )));
            }
            AdjustOutcome::Insufficient { levels } => {
                self.count_adjust(req.reason, "insufficient");
                return Err(EngineError::InsufficientStock {
                    key: req.key,
                    available: levels.available,
                    requested: -req.delta,
                });
            }
            AdjustOutcome::LimitExceeded { levels } => {
                self.count_adjust(req.reason, "limit");
                return Err(EngineError::StockLimitExceeded {
                    key: req.key,
                    available: levels.available,
                    max: limits.max_stock_qty,
                });
            }
            AdjustOutcome::JournalFull => {
                self.count_adjust(req.reason, "journal_full");
                return Err(EngineError::JournalFull);
            }
            AdjustOutcome::Missing => return Err(EngineError::InventoryNotFound(req.key)),
        };
        self.count_adjust(req.reason, if applied { "applied" } else { "repeat" });
        let persisted = self
            .wait_persisted(
                req.key,
                levels.seq,
                Duration::from_millis(limits.adjust_persist_wait_ms),
            )
            .await?;
        Ok(AdjustResult {
            sku_id: req.key.sku_id,
            warehouse_id: req.key.warehouse_id,
            delta: req.delta,
            reason: req.reason.as_str(),
            request_id: req.request_id,
            applied,
            available_qty: levels.available,
            reserved_qty: levels.reserved,
            persisted,
        })
    }

    async fn timed_adjust(&self, cmd: &AdjustCommand<'_>) -> Result<AdjustOutcome, EngineError> {
        let started = Instant::now();
        let outcome = self.redis.adjust(cmd).await;
        self.metrics
            .redis_call_latency
            .with_label_values(&["adjust"])
            .observe(started.elapsed().as_secs_f64());
        let outcome = outcome?;
        // The script's counters are the newest: the caller reads its own adjustment.
        match &outcome {
            AdjustOutcome::Applied { levels, .. }
            | AdjustOutcome::AlreadyApplied { levels }
            | AdjustOutcome::Insufficient { levels }
            | AdjustOutcome::LimitExceeded { levels } => {
                self.cache.store_write(cmd.key, (*levels).into(), started)
            }
            AdjustOutcome::Conflict { .. }
            | AdjustOutcome::JournalFull
            | AdjustOutcome::Missing => {}
        }
        Ok(outcome)
    }

    fn count_adjust(&self, reason: LedgerReason, outcome: &str) {
        self.metrics
            .stock_adjustments
            .with_label_values(&[reason.as_str(), outcome])
            .inc();
    }

    /// Puts a DB position Redis lacks into Redis, with the markers of its lines (so that a
    /// repeated order is still recognised); false when the DB has none either.
    pub async fn load_position(&self, key: SkuKey) -> Result<bool, EngineError> {
        Ok(self.rebuild_position(key, 0).await?.is_some())
    }

    /// Rebuilds one position from the DB where Redis lacks it: the stock hash (if missing
    /// or behind) and the markers of lines still within their marker lifetime.
    /// Returns (stock loaded, markers restored), or None when the DB has no such position.
    /// `fence`: the lease token of a leader-only job (0: none); EngineError::Fenced when a
    /// newer leader raised the fence.
    pub async fn rebuild_position(
        &self,
        key: SkuKey,
        fence: i64,
    ) -> Result<Option<(bool, usize)>, EngineError> {
        let Some(levels) = self.db_levels(key).await? else {
            return Ok(None);
        };
        let now = crate::engine::now_ms();
        let marker_ttl = self.settings.marker_ttl_ms();
        // The lines still within their marker lifetime, then every line of those orders, so
        // that their directory entries list all of them (one pooled connection for both).
        let rows = {
            let mut conn = db::connection(&self.pool).await?;
            let lines = Reservation::live_for_position(
                &mut conn,
                key,
                crate::domain::ms_to_local(now - marker_ttl),
            )
            .await
            .map_err(db::DbError::from)?;
            let mut order_nos: Vec<String> = lines.into_iter().map(|l| l.order_no).collect();
            order_nos.sort();
            order_nos.dedup();
            if order_nos.is_empty() {
                vec![]
            } else {
                Reservation::by_orders(&mut conn, &order_nos)
                    .await
                    .map_err(db::DbError::from)?
            }
        };
        let mut orders: std::collections::BTreeMap<String, OrderSnapshot> = Default::default();
        for row in &rows {
            let Some(status) = crate::domain::ReservationStatus::parse(&row.status) else {
                continue;
            };
            let order = orders
                .entry(row.order_no.clone())
                .or_insert_with(|| OrderSnapshot {
                    order_no: row.order_no.clone(),
                    expire_at_ms: local_to_ms(row.expire_at),
                    lines: vec![],
                });
            order.lines.push(RecordLine {
                key: SkuKey::new(WarehouseId(row.warehouse_id), SkuId(row.sku_id)),
                qty: row.qty.into(),
                status,
                // Only a partial confirm's units sold differ from the line's (the record
                // keeps its four-part form otherwise, as confirm.lua writes it).
                confirmed: row
                    .confirmed_qty
                    .map(i64::from)
                    .filter(|sold| *sold < i64::from(row.qty)),
            });
        }
        let snapshots: Vec<OrderSnapshot> = orders.into_values().collect();
        let result = self
            .redis
            .rebuild_position(key, levels, &snapshots, fence)
            .await?
            .ok_or(EngineError::Fenced)?;
        self.cache.forget(key);
        Ok(Some(result))
    }

    /// Rebuilds every DB position in Redis (Redis lost its data). Returns (positions
    /// loaded, markers restored). `fence` as for `rebuild_position`.
    pub async fn rebuild_all(&self, fence: i64) -> Result<(usize, usize), EngineError> {
        const PAGE: i64 = 500;
        let mut after_id = 0;
        let (mut loaded, mut restored) = (0, 0);
        loop {
            let rows = {
                let mut conn = db::connection(&self.pool).await?;
                Inventory::page_after(&mut conn, after_id, PAGE)
                    .await
                    .map_err(db::DbError::from)?
            };
            let Some(last) = rows.last() else { break };
            after_id = last.id;
            for row in &rows {
                if let Some((l, r)) = self.rebuild_position(row.key(), fence).await? {
                    loaded += usize::from(l);
                    restored += r;
                }
            }
            if (rows.len() as i64) < PAGE {
                break;
            }
        }
        Ok((loaded, restored))
    }

    /// The DB's levels of one position, with the units sold.
    pub async fn db_levels(&self, key: SkuKey) -> Result<Option<StockLevels>, EngineError> {
        let mut conn = db::connection(&self.pool).await?;
        let Some(row) = Inventory::find(&mut conn, key)
            .await
            .map_err(db::DbError::from)?
        else {
            return Ok(None);
        };
        let confirmed = Reservation::confirmed_totals(&mut conn, &[key])
            .await
            .map_err(db::DbError::from)?;
        Ok(Some(StockLevels {
            available: row.available_qty.into(),
            reserved: row.reserved_qty.into(),
            confirmed: confirmed.get(&key).copied().unwrap_or(0),
            seq: row.version,
        }))
    }

    /// Waits until the DB row has reached `seq` (the journal entry is persisted).
    pub async fn wait_persisted(
        &self,
        key: SkuKey,
        seq: i64,
        limit: Duration,
    ) -> Result<bool, EngineError> {
        let deadline = Instant::now() + limit;
        let mut pause = Duration::from_millis(5);
        loop {
            let row = {
                let mut conn = db::connection(&self.pool).await?;
                Inventory::find(&mut conn, key)
                    .await
                    .map_err(db::DbError::from)?
            };
            if let Some(row) = row.filter(|row| row.version >= seq) {
                // The row as this change left it: reads of it need no DB query.
                self.cache.store_row(key, row_meta(&row));
                return Ok(true);
            }
            if Instant::now() + pause > deadline {
                return Ok(false);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Sets (Some) or clears (None) a position's low-stock threshold, 0 to
    /// `inventory.max_stock_qty`. The position must exist in the DB.
    pub async fn set_low_stock_threshold(
        &self,
        key: SkuKey,
        threshold: Option<i64>,
    ) -> Result<ThresholdView, EngineError> {
        let max = self.settings.inventory.max_stock_qty;
        let value = match threshold {
            Some(t) if !(0..=max).contains(&t) => {
                return Err(EngineError::QuantityOutOfRange(format!(
                    "lowStockThreshold must be 0 to {max}, got {t}"
                )))
            }
            Some(t) => Some(i32::try_from(t).map_err(|_| {
                EngineError::QuantityOutOfRange(format!("lowStockThreshold {t} is too large"))
            })?),
            None => None,
        };
        let mut conn = db::connection(&self.pool).await?;
        if Inventory::find(&mut conn, key)
            .await
            .map_err(DbError::from)?
            .is_none()
        {
            return Err(EngineError::InventoryNotFound(key));
        }
        StockThreshold::set(&mut conn, key, value)
            .await
            .map_err(DbError::from)?;
        Ok(ThresholdView {
            sku_id: key.sku_id,
            warehouse_id: key.warehouse_id,
            low_stock_threshold: value.map(i64::from),
        })
    }

    /// Copies the DB's stock to Redis. While Redis is ahead of the DB (the journal has
    /// not drained for this position) it waits for the journal first.
    pub async fn sync(&self, key: SkuKey) -> Result<SyncResult, EngineError> {
        let wait = Duration::from_millis(self.settings.inventory.adjust_persist_wait_ms);
        for _ in 0..3 {
            let Some(levels) = self.db_levels(key).await? else {
                return Err(EngineError::InventoryNotFound(key));
            };
            let sent_at = Instant::now();
            let outcome = self.redis.sync(key, levels).await?;
            if outcome.status != SyncStatus::Pending {
                // Redis holds the DB's levels now (or did already): what this instance
                // reads next, even against a read that was in flight.
                self.cache.store_write(key, levels.into(), sent_at);
            }
            let status = match outcome.status {
                SyncStatus::Pending => {
                    self.wait_persisted(key, outcome.seq, wait).await?;
                    continue;
                }
                SyncStatus::Loaded => "LOADED",
                SyncStatus::InSync => "IN_SYNC",
                SyncStatus::Overwritten => {
                    tracing::warn!(
                        position = %key,
                        redis_before = ?outcome.available_before,
                        db = levels.available,
                        "sync overwrote a Redis value that differed from the DB at the same version"
                    );
                    "OVERWRITTEN"
                }
            };
            return Ok(SyncResult {
                sku_id: key.sku_id,
                warehouse_id: key.warehouse_id,
                status,
                db_available_qty: levels.available,
                redis_available_before: outcome.available_before,
                redis_available_qty: outcome.available_after,
            });
        }
        Err(EngineError::JournalBehind(key))
    }

    /// Loads every DB position Redis lacks; existing Redis values are left alone.
    pub async fn warm_up(&self) -> Result<usize, EngineError> {
        const PAGE: i64 = 500;
        let mut after_id = 0;
        let mut loaded = 0;
        loop {
            let (rows, confirmed) = {
                let mut conn = db::connection(&self.pool).await?;
                let rows = Inventory::page_after(&mut conn, after_id, PAGE)
                    .await
                    .map_err(db::DbError::from)?;
                let keys: Vec<SkuKey> = rows.iter().map(Inventory::key).collect();
                let confirmed = Reservation::confirmed_totals(&mut conn, &keys)
                    .await
                    .map_err(db::DbError::from)?;
                (rows, confirmed)
            };
            let Some(last) = rows.last() else { break };
            after_id = last.id;
            let positions: Vec<(SkuKey, StockLevels)> = rows
                .iter()
                .map(|row| {
                    let key = row.key();
                    (
                        key,
                        StockLevels {
                            available: row.available_qty.into(),
                            reserved: row.reserved_qty.into(),
                            confirmed: confirmed.get(&key).copied().unwrap_or(0),
                            seq: row.version,
                        },
                    )
                })
                .collect();
            loaded += self.redis.warm_up(&positions).await?;
            // The rows' ids and updatedAt, so that the first reads need no DB query.
            for row in &rows {
                self.cache.store_row(row.key(), row_meta(row));
            }
            if (rows.len() as i64) < PAGE {
                break;
            }
        }
        Ok(loaded)
    }

    /// The reference's demo stock, created through the normal adjustment path (so it has
    /// ledger rows) and only where the position does not exist anywhere yet.
    pub async fn seed_demo(&self) -> Result<usize, EngineError> {
        let warehouse_id = self.settings.inventory.default_warehouse_id;
        let mut created = 0;
        for &(sku_id, qty) in DEMO_STOCK {
            let key = SkuKey::new(WarehouseId(warehouse_id), SkuId(sku_id));
            if self.db_levels(key).await?.is_some() || self.redis.stock(key).await?.is_some() {
                continue;
            }
            self.adjust(AdjustRequest {
                key,
                delta: qty,
                reason: LedgerReason::Inbound,
                request_id: Some(format!("demo-seed-{warehouse_id}-{sku_id}")),
                remark: "demo stock".to_string(),
                trace_id: "demo-seed".to_string(),
            })
            .await?;
            created += 1;
        }
        Ok(created)
    }
}

/// A view whose levels are Redis' (the DB row, when known, gives id and updatedAt).
fn redis_view(key: SkuKey, available: i64, reserved: i64, row: Option<RowMeta>) -> InventoryView {
    InventoryView {
        id: row.map(|r| r.id),
        sku_id: key.sku_id,
        warehouse_id: key.warehouse_id,
        available_qty: available,
        reserved_qty: reserved,
        total_qty: available + reserved,
        redis_available_qty: Some(available),
        updated_at: row.map(|r| r.updated_at),
        redis_reserved_qty: None,
        redis_confirmed_qty: None,
    }
}

/// The DB's view (`?source=db`): each DB row with Redis' available beside it; a position
/// only Redis holds (its journal has not reached the DB) from Redis.
fn db_side_views(
    keys: &[SkuKey],
    rows: &HashMap<SkuKey, Inventory>,
    redis: Vec<Option<StockLevels>>,
) -> Vec<Option<InventoryView>> {
    keys.iter()
        .zip(redis)
        .map(|(key, levels)| {
            let mut v = match (rows.get(key), levels) {
                (Some(row), levels) => view(row, levels.map(|l| l.available)),
                (None, Some(l)) => redis_view(*key, l.available, l.reserved, None),
                (None, None) => return None,
            };
            v.redis_reserved_qty = levels.map(|l| l.reserved);
            v.redis_confirmed_qty = levels.map(|l| l.confirmed);
            Some(v)
        })
        .collect()
}

fn row_meta(row: &Inventory) -> RowMeta {
    RowMeta {
        id: row.id,
        updated_at: row.updated_at,
    }
}

fn view(row: &Inventory, redis_available: Option<i64>) -> InventoryView {
    let available = i64::from(row.available_qty);
    let reserved = i64::from(row.reserved_qty);
    InventoryView {
        id: Some(row.id),
        sku_id: row.sku_id,
        warehouse_id: row.warehouse_id,
        available_qty: available,
        reserved_qty: reserved,
        total_qty: available + reserved,
        redis_available_qty: redis_available,
        updated_at: Some(row.updated_at),
        redis_reserved_qty: None,
        redis_confirmed_qty: None,
    }
}
