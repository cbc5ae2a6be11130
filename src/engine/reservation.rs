//! TryReserve, Confirm and Release. All three go through the shard actors, which batch
//! what arrives together into one script call per batch. Every decision is made in Redis.

use crate::domain::{SkuId, WarehouseId};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use actix::Addr;
use chrono::NaiveDateTime;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::config::Settings;
use crate::domain::{LedgerReason, ReservationStatus, SkuKey};
use crate::engine::routing::{self, Ask, Routing};
use crate::engine::shard::{ShardActor, ShardError, ShardReply, ShardRequest, Submit};
use crate::engine::stock::ReadSource;
use crate::engine::stock::StockService;
use crate::engine::warehouse::WarehouseService;
use crate::engine::{ms_to_local_datetime, now_ms, EngineError};
use crate::metrics::Metrics;
use crate::store::db::{self, DbPool};
use crate::store::models::Reservation;
use crate::store::redis::{RedisStore, RedisStoreError};
use crate::store::reservations::{
    OrderLine, ReserveOrder, ReserveParams, ReserveReply, TransitionOp, TransitionOrder,
    TransitionReply,
};
use crate::store::routing::RouteReply;
use crate::store::wire::DirectoryEntry;

/// A reservation request as callers (HTTP, Kafka) give it.
#[derive(Debug, Clone)]
pub struct ReserveRequest {
    pub order_no: String,
    pub lines: Vec<OrderLine>,
    pub trace_id: String,
}

/// A reservation whose lines routing places (`routing` in `POST /inventory/reserve`, or
/// `inventory.routing.default_strategy` on Kafka). A line with a warehouse is pinned there.
#[derive(Debug, Clone)]
pub struct RoutedRequest {
    pub order_no: String,
    pub asks: Vec<Ask>,
    pub routing: Routing,
    pub trace_id: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LineView {
    pub sku_id: i64,
    pub warehouse_id: i64,
    pub qty: i64,
}

/// The outcome of a successful reserve: held now, or held before (a repeat).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReserveOutcome {
    pub order_no: String,
    /// RESERVED; for a repeat, the order's state now (it may since be CONFIRMED/RELEASED).
    pub status: ReservationStatus,
    /// True when this request repeated an earlier one and changed nothing.
    pub existed: bool,
    #[schema(value_type = String, example = "2026-11-25 10:30:00")]
    #[serde(serialize_with = "crate::engine::serialize_local_datetime")]
    pub expire_at: NaiveDateTime,
    pub items: Vec<LineView>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransitionOutcome {
    pub order_no: String,
    pub status: ReservationStatus,
    pub existed: bool,
    pub items: Vec<LineView>,
}

/// The reference's reservation view (`GET /inventory/reservations`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReservationView {
    pub id: Option<i64>,
    pub order_no: String,
    pub sku_id: i64,
    pub warehouse_id: i64,
    /// The units held.
    pub qty: i64,
    /// Units sold, when CONFIRMED: `qty`, or fewer after a partial confirm (the rest went
    /// back to sale); null otherwise.
    pub confirmed_qty: Option<i64>,
    pub status: ReservationStatus,
    #[schema(value_type = String)]
    pub status_desc: &'static str,
    #[schema(value_type = String, example = "2026-11-25 10:30:00")]
    #[serde(serialize_with = "crate::engine::serialize_local_datetime")]
    pub expire_at: NaiveDateTime,
    pub expired: bool,
}

#[derive(Clone)]
pub struct ReservationEngine {
    shards: Vec<Addr<ShardActor>>,
    pub(super) redis: RedisStore,
    pool: DbPool,
    pub(super) stock: StockService,
    warehouses: WarehouseService,
    /// Bounds the calls that go to Redis directly (routed reserves, partial confirms).
    pub(super) direct_calls: Arc<Semaphore>,
    pub(super) settings: Settings,
    pub(super) metrics: Metrics,
}

/// Checks an orderNo: it becomes part of Redis keys and a VARCHAR(64) column.
pub fn check_order_no(order_no: &str, max_len: usize) -> Result<(), EngineError> {
    if order_no.is_empty()
        || order_no.len() > max_len
        || !order_no
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '{' && c != '}')
    {
        return Err(EngineError::Invalid(format!(
            "orderNo must be 1-{max_len} printable ASCII characters without spaces or braces"
        )));
    }
    Ok(())
}

/// Validates lines and sums those naming the same position (sorted by position).
pub fn merge_lines(
    lines: &[OrderLine],
    max_lines: usize,
    max_qty: i64,
) -> Result<Vec<OrderLine>, EngineError> {
    if lines.is_empty() {
        return Err(EngineError::Invalid(
            "an order needs at least one line".into(),
        ));
    }
    if lines.len() > max_lines {
        return Err(EngineError::Invalid(format!(
            "an order may have at most {max_lines} lines, got {}",
            lines.len()
        )));
    }
    let mut merged: BTreeMap<SkuKey, i64> = BTreeMap::new();
    for line in lines {
        if line.key.sku_id <= 0 || line.key.warehouse_id <= 0 {
            return Err(EngineError::Invalid(
                "skuId and warehouseId must be positive integers".into(),
            ));
        }
        if line.qty <= 0 || line.qty > max_qty {
            return Err(EngineError::QuantityOutOfRange(format!(
                "qty must be between 1 and {max_qty}, got {} for sku {}",
                line.qty, line.key.sku_id
            )));
        }
        *merged.entry(line.key).or_insert(0) += line.qty;
    }
    let merged: Vec<OrderLine> = merged
        .into_iter()
        .map(|(key, qty)| OrderLine { key, qty })
        .collect();
    if let Some(line) = merged.iter().find(|l| l.qty > max_qty) {
        return Err(EngineError::QuantityOutOfRange(format!(
            "lines of sku {} add up to {}, more than {max_qty}",
            line.key.sku_id, line.qty
        )));
    }
    Ok(merged)
}

fn line_views(lines: &[OrderLine]) -> Vec<LineView> {
    lines
        .iter()
        .map(|l| LineView {
            sku_id: l.key.sku_id,
            warehouse_id: l.key.warehouse_id,
            qty: l.qty,
        })
        .collect()
}

/// Lines given as (position, units), as callers see them.
pub(super) fn views_of(lines: &[(SkuKey, i64)]) -> Vec<LineView> {
    lines
        .iter()
        .map(|(key, qty)| LineView {
            sku_id: key.sku_id,
            warehouse_id: key.warehouse_id,
            qty: *qty,
        })
        .collect()
}

/// The transition of an order whose lines the directory lists, and the lines as callers
/// see them.
fn transition_for(
    order_no: &str,
    trace_id: &str,
    lines: &[(SkuKey, i64)],
    op: TransitionOp,
) -> (TransitionOrder, Vec<LineView>) {
    let items = views_of(lines);
    let order = TransitionOrder {
        order_no: order_no.to_string(),
        trace_id: trace_id.to_string(),
        positions: lines.iter().map(|(k, _)| *k).collect(),
        op,
    };
    (order, items)
}

/// What a release's reply means for its caller.
fn release_result(
    order_no: &str,
    reply: TransitionReply,
    items: Vec<LineView>,
) -> Result<TransitionOutcome, EngineError> {
    let outcome = |existed| TransitionOutcome {
        order_no: order_no.to_string(),
        status: ReservationStatus::Released,
        existed,
        items,
    };
    match reply {
        TransitionReply::Done => Ok(outcome(false)),
        TransitionReply::Exists => Ok(outcome(true)),
        TransitionReply::Tombstone | TransitionReply::NotFound => {
            Err(EngineError::ReservationNotFound(order_no.to_string()))
        }
        TransitionReply::PositionMissing { key } => Err(EngineError::InventoryNotFound(key)),
        TransitionReply::Confirmed { key } => Err(EngineError::InvalidStatus(format!(
            "order {order_no} cannot be released: sku {} is CONFIRMED",
            key.sku_id
        ))),
        TransitionReply::NotExpired => Err(EngineError::InvalidStatus(format!(
            "order {order_no} has not expired"
        ))),
        TransitionReply::Fenced => Err(EngineError::Fenced),
        TransitionReply::Released { .. } | TransitionReply::Expired { .. } => Err(
            EngineError::InvalidStatus(format!("order {order_no} cannot be released")),
        ),
        TransitionReply::JournalFull | TransitionReply::Retry => Err(EngineError::Overloaded),
    }
}

/// What a confirm's reply means for its caller; `items` are the order's lines.
pub(super) fn confirm_result(
    order_no: &str,
    reply: TransitionReply,
    items: Vec<LineView>,
) -> Result<TransitionOutcome, EngineError> {
    let outcome = |existed| TransitionOutcome {
        order_no: order_no.to_string(),
        status: ReservationStatus::Confirmed,
        existed,
        items,
    };
    match reply {
        TransitionReply::Done => Ok(outcome(false)),
        TransitionReply::Exists => Ok(outcome(true)),
        TransitionReply::NotFound | TransitionReply::Tombstone | TransitionReply::Retry => {
            Err(EngineError::ReservationNotFound(order_no.to_string()))
        }
        TransitionReply::PositionMissing { key } => Err(EngineError::InventoryNotFound(key)),
        TransitionReply::Released { key } => Err(EngineError::InvalidStatus(format!(
            "order {order_no} cannot be confirmed: sku {} is RELEASED",
            key.sku_id
        ))),
        TransitionReply::Expired { key } => Err(EngineError::InvalidStatus(format!(
            "order {order_no} cannot be confirmed: the hold of sku {} has expired",
            key.sku_id
        ))),
        TransitionReply::Confirmed { .. } | TransitionReply::NotExpired => Err(
            EngineError::InvalidStatus(format!("order {order_no} cannot be confirmed")),
        ),
        TransitionReply::JournalFull => Err(EngineError::Overloaded),
        TransitionReply::Fenced => Err(EngineError::Fenced),
    }
}

impl ReservationEngine {
    pub fn new(
        shards: Vec<Addr<ShardActor>>,
        redis: RedisStore,
        pool: DbPool,
        stock: StockService,
        warehouses: WarehouseService,
        settings: Settings,
        metrics: Metrics,
    ) -> Self {
        ReservationEngine {
            shards,
            redis,
            pool,
            stock,
            warehouses,
            direct_calls: Arc::new(Semaphore::new(settings.inventory.routing.max_in_flight)),
            settings,
            metrics,
        }
    }

    /// A reply that does not fit the request it answers: a bug, not a business outcome.
    /// Logged at error level, counted, and answered as an error that names it.
    fn inconsistent(&self, what: &'static str, order_no: &str, line: usize) -> EngineError {
        tracing::error!(
            what,
            order_no,
            line,
            "script reply names a line the order does not have"
        );
        self.metrics
            .internal_errors
            .with_label_values(&[what])
            .inc();
        EngineError::Redis(crate::store::redis::RedisStoreError::BadReply {
            script: "reserve",
            detail: format!("order {order_no}: line {line} is not one of its lines"),
        })
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .reservations
            .with_label_values(&[outcome])
            .inc();
    }

    /// Hands a request to the shard that owns the group of its first position and waits
    /// for the answer of the batch it went out in.
    async fn submit(&self, request: ShardRequest) -> Result<ShardReply, EngineError> {
        let first = match &request {
            ShardRequest::Reserve(o) => o.lines.first().map(|l| l.key),
            ShardRequest::Transition(t) => t.positions.first().copied(),
        };
        let group = first.map(|k| self.redis.keys().group(k)).unwrap_or(0);
        let shard = group as usize % self.shards.len().max(1);
        let addr = self.shards.get(shard).ok_or(EngineError::Overloaded)?;
        let (tx, rx) = oneshot::channel();
        addr.try_send(Submit { request, reply: tx })
            .map_err(|e| match e {
                actix::prelude::SendError::Full(_) => EngineError::Overloaded,
                actix::prelude::SendError::Closed(_) => {
                    EngineError::Invalid("the reservation engine is shutting down".into())
                }
            })?;
        let wait = Duration::from_millis(self.settings.engine.reply_timeout_ms);
        match tokio::time::timeout(wait, rx).await {
            Err(_) => Err(EngineError::Timeout),
            Ok(Err(_)) => Err(EngineError::Timeout),
            Ok(Ok(Err(ShardError::Overloaded))) => Err(EngineError::Overloaded),
            Ok(Ok(Err(ShardError::Timeout))) => Err(EngineError::Timeout),
            Ok(Ok(Err(ShardError::Unavailable(e)))) => Err(EngineError::Redis(
                crate::store::redis::RedisStoreError::Unavailable(e),
            )),
            Ok(Ok(Err(ShardError::Store(e)))) => Err(EngineError::Redis(
                crate::store::redis::RedisStoreError::BadReply {
                    script: "batch",
                    detail: e,
                },
            )),
            Ok(Ok(Ok(reply))) => Ok(reply),
        }
    }

    async fn send_to_shard(&self, order: ReserveOrder) -> Result<ReserveReply, EngineError> {
        match self.submit(ShardRequest::Reserve(order)).await? {
            ShardReply::Reserve(reply) => Ok(reply),
            ShardReply::Transition(_) => Err(EngineError::Invalid(
                "a reserve got a transition reply".into(),
            )),
        }
    }

    async fn send_transition(
        &self,
        order: TransitionOrder,
    ) -> Result<TransitionReply, EngineError> {
        match self.submit(ShardRequest::Transition(order)).await? {
            ShardReply::Transition(reply) => Ok(reply),
            ShardReply::Reserve(_) => Err(EngineError::Invalid(
                "a transition got a reserve reply".into(),
            )),
        }
    }

    /// TryReserve: all lines of the order are held, or none.
    pub async fn reserve(&self, req: ReserveRequest) -> Result<ReserveOutcome, EngineError> {
        let limits = &self.settings.inventory;
        check_order_no(&req.order_no, limits.max_order_no_len)?;
        let lines = merge_lines(
            &req.lines,
            limits.max_lines_per_order,
            limits.max_qty_per_line,
        )?;
        let order = ReserveOrder {
            order_no: req.order_no.clone(),
            trace_id: req.trace_id.clone(),
            lines: lines.clone(),
        };
        let mut reply = self.send_to_shard(order.clone()).await?;
        // A position Redis lacks may exist in the DB (Redis lost it): load it, once.
        if let ReserveReply::NotFound { line } = reply {
            let key = lines.get(line).map(|l| l.key);
            if let Some(key) = key {
                if self.stock.load_position(key).await? {
                    reply = self.send_to_shard(order).await?;
                }
            }
        }
        let result = match reply {
            ReserveReply::Reserved { expire_at_ms } => Ok(ReserveOutcome {
                order_no: req.order_no,
                status: ReservationStatus::Reserved,
                existed: false,
                expire_at: ms_to_local_datetime(expire_at_ms),
                items: line_views(&lines),
            }),
            ReserveReply::Exists { lines: states } => {
                let status = states
                    .iter()
                    .map(|(s, _)| *s)
                    .max_by_key(|s| s.rank())
                    .unwrap_or(ReservationStatus::Reserved);
                let expire = states.first().map(|(_, x)| *x).unwrap_or(0);
                Ok(ReserveOutcome {
                    order_no: req.order_no,
                    status,
                    existed: true,
                    expire_at: ms_to_local_datetime(expire),
                    items: line_views(&lines),
                })
            }
            // The store checked the line numbers against the order's lines.
            ReserveReply::Insufficient { line, available } => match lines.get(line) {
                Some(failed) => Err(EngineError::InsufficientStock {
                    key: failed.key,
                    available,
                    requested: failed.qty,
                }),
                None => Err(self.inconsistent("reserve_line", &req.order_no, line)),
            },
            ReserveReply::NotFound { line } => match lines.get(line) {
                Some(failed) => Err(EngineError::InventoryNotFound(failed.key)),
                None => Err(self.inconsistent("reserve_line", &req.order_no, line)),
            },
            ReserveReply::Conflict { line: Some(i) } => match lines.get(i) {
                Some(l) => Err(EngineError::IdempotencyConflict(format!(
                    "order {} was reserved before with another quantity of sku {}",
                    req.order_no, l.key.sku_id
                ))),
                None => Err(self.inconsistent("reserve_line", &req.order_no, i)),
            },
            ReserveReply::Conflict { line: None } => {
                Err(EngineError::IdempotencyConflict(format!(
                    "order {} was reserved before with other lines",
                    req.order_no
                )))
            }
            ReserveReply::Cancelled => Err(EngineError::OrderCancelled(req.order_no)),
            ReserveReply::JournalFull => Err(EngineError::Overloaded),
            ReserveReply::Aborted => Err(EngineError::IdempotencyConflict(format!(
                "order {} was refused before (it could not be held in every slot group); \
                 reserve under a new orderNo",
                req.order_no
            ))),
            ReserveReply::InProgress => {
                Err(EngineError::Redis(RedisStoreError::Unavailable(format!(
                    "order {} is being reserved by another request; retry shortly",
                    req.order_no
                ))))
            }
        };
        self.count_reserve(&result);
        result
    }

    fn count_reserve(&self, result: &Result<ReserveOutcome, EngineError>) {
        self.count(match result {
            Ok(o) if o.existed => "exists",
            Ok(_) => "reserved",
            Err(EngineError::InsufficientStock { .. } | EngineError::RoutedInsufficient { .. }) => {
                "insufficient"
            }
            Err(EngineError::IdempotencyConflict(_)) => "conflict",
            Err(EngineError::OrderCancelled(_)) => "cancelled",
            Err(EngineError::InventoryNotFound(_) | EngineError::NoWarehouse { .. }) => "not_found",
            Err(EngineError::Overloaded) => "overloaded",
            Err(_) => "error",
        });
    }

    /// The answer to a repeat of a routed order: the lines held, in the state they are in.
    async fn routed_repeat(
        &self,
        order_no: &str,
        lines: &[(SkuKey, i64)],
    ) -> Result<ReserveOutcome, EngineError> {
        let keys: Vec<SkuKey> = lines.iter().map(|(k, _)| *k).collect();
        let markers = self.redis.line_markers(order_no, &keys).await?;
        let status = markers
            .iter()
            .flatten()
            .map(|m| m.status)
            .max_by_key(|s| s.rank())
            .unwrap_or(ReservationStatus::Reserved);
        let expire_at_ms = markers
            .iter()
            .flatten()
            .map(|m| m.expire_at_ms)
            .next()
            .unwrap_or(0);
        Ok(ReserveOutcome {
            order_no: order_no.to_string(),
            status,
            existed: true,
            expire_at: ms_to_local_datetime(expire_at_ms),
            items: views_of(lines),
        })
    }

    /// TryReserve with warehouse routing: the plans for the order (engine::routing) go to
    /// Redis in one script call, which holds the first plan with the stock; all lines or
    /// none. A single Redis only: on a Redis Cluster the positions of one order's
    /// candidates live on several masters, where no one script can choose among them.
    pub async fn reserve_routed(&self, req: RoutedRequest) -> Result<ReserveOutcome, EngineError> {
        let result = self.reserve_routed_inner(&req).await;
        if let Err(EngineError::Redis(RedisStoreError::BadReply { script, .. })) = &result {
            self.metrics
                .internal_errors
                .with_label_values(&[script])
                .inc();
        }
        self.count_reserve(&result);
        result
    }

    async fn reserve_routed_inner(
        &self,
        req: &RoutedRequest,
    ) -> Result<ReserveOutcome, EngineError> {
        let limits = &self.settings.inventory;
        check_order_no(&req.order_no, limits.max_order_no_len)?;
        if self.redis.is_cluster() {
            return Err(EngineError::UnsupportedOnCluster(
                "warehouse routing needs a single Redis; on a Redis Cluster name each line's \
                 warehouseId"
                    .into(),
            ));
        }
        if let Some(region) = &req.routing.region {
            crate::engine::warehouse::word("routing.region", region, 32)?;
        }
        let asks = routing::check_asks(
            &req.asks,
            limits.max_lines_per_order,
            limits.max_qty_per_line,
        )
        .map_err(EngineError::Invalid)?;
        // Bounded: routed reserves (and partial confirms) call Redis directly, not through
        // the shard queues; past the bound they are shed as the queues shed.
        let _permit = self
            .direct_calls
            .try_acquire()
            .map_err(|_| EngineError::Overloaded)?;
        // A repeat answers what was held, whatever the register or stock says now (the
        // script checks again, for a repeat racing the first call).
        match self
            .redis
            .lookup_orders(std::slice::from_ref(&req.order_no))
            .await?
            .pop()
            .flatten()
        {
            Some(DirectoryEntry::Order { lines, .. }) => {
                return if routing::same_order(&asks, &lines) {
                    self.routed_repeat(&req.order_no, &lines).await
                } else {
                    Err(EngineError::IdempotencyConflict(format!(
                        "order {} was reserved before with other SKUs or quantities",
                        req.order_no
                    )))
                };
            }
            Some(DirectoryEntry::Tombstone { .. }) => {
                return Err(EngineError::OrderCancelled(req.order_no.clone()))
            }
            None => {}
        }

        let sites = self.warehouses.enabled_sites().await?;
        let keys = routing::positions_to_read(&req.routing, &asks, &sites);
        if keys.len() > routing::MAX_POSITIONS_READ {
            return Err(EngineError::Invalid(format!(
                "routing this order would weigh {} positions, more than {}: name a region or \
                 split the order",
                keys.len(),
                routing::MAX_POSITIONS_READ
            )));
        }
        let mut views = self.stock.query(&keys, ReadSource::Live).await?;
        // A position only the DB has (Redis lost it) is loaded, as an unrouted reserve
        // does, so the script can hold it.
        let mut loaded = false;
        for (key, view) in keys.iter().zip(&views) {
            if view
                .as_ref()
                .is_some_and(|v| v.redis_available_qty.is_none())
            {
                loaded |= self.stock.load_position(*key).await?;
            }
        }
        if loaded {
            views = self.stock.query(&keys, ReadSource::Live).await?;
        }
        let levels: HashMap<SkuKey, i64> = keys
            .iter()
            .zip(&views)
            .filter_map(|(k, v)| v.as_ref().map(|v| (*k, v.available_qty)))
            .collect();
        if let Some(pinned) = asks.iter().find_map(|a| {
            let key = SkuKey::new(WarehouseId(a.warehouse_id?), SkuId(a.sku_id));
            (!levels.contains_key(&key)).then_some(key)
        }) {
            return Err(EngineError::InventoryNotFound(pinned));
        }
        let plans = routing::plans(&req.routing, &asks, &sites, &levels)?;

        let params = ReserveParams {
            now_ms: now_ms(),
            hold_ms: self.settings.hold_ms(),
            max_journal_entries: self.settings.journal.max_pending_entries,
        };
        let sent_at = Instant::now();
        let (reply, after) = self
            .redis
            .route(&req.order_no, &req.trace_id, &plans, params)
            .await?;
        self.stock.cache().store_writes(&after, sent_at);
        match reply {
            RouteReply::Reserved {
                expire_at_ms,
                lines,
                ..
            } => Ok(ReserveOutcome {
                order_no: req.order_no.clone(),
                status: ReservationStatus::Reserved,
                existed: false,
                expire_at: ms_to_local_datetime(expire_at_ms),
                items: views_of(&lines),
            }),
            RouteReply::Exists { lines, .. } => self.routed_repeat(&req.order_no, &lines).await,
            RouteReply::Conflict => Err(EngineError::IdempotencyConflict(format!(
                "order {} was reserved before with other SKUs or quantities",
                req.order_no
            ))),
            RouteReply::Cancelled => Err(EngineError::OrderCancelled(req.order_no.clone())),
            RouteReply::Insufficient {
                sku_id,
                requested,
                offered,
            } => Err(EngineError::RoutedInsufficient {
                sku_id,
                requested,
                available: offered,
            }),
            RouteReply::JournalFull => Err(EngineError::Overloaded),
        }
    }

    /// The positions an order holds (or held) stock in, per Redis.
    pub async fn order_positions(&self, order_no: &str) -> Result<Vec<SkuKey>, EngineError> {
        self.lines_of(order_no).await
    }

    async fn lines_of(&self, order_no: &str) -> Result<Vec<SkuKey>, EngineError> {
        check_order_no(order_no, self.settings.inventory.max_order_no_len)?;
        Ok(self.redis.order_lines(order_no).await?)
    }

    pub(super) fn count_transition(
        &self,
        op: &str,
        result: &Result<TransitionOutcome, EngineError>,
    ) {
        let outcome = match result {
            Ok(o) if o.existed => "exists",
            Ok(_) => "done",
            Err(EngineError::ReservationNotFound(_)) => "not_found",
            Err(EngineError::InvalidStatus(_)) => "invalid_status",
            Err(_) => "error",
        };
        self.metrics
            .transitions
            .with_label_values(&[op, outcome])
            .inc();
    }

    /// The directory entry of an order (None: unknown or a tombstone).
    pub(super) async fn directory_entry(
        &self,
        order_no: &str,
    ) -> Result<Option<DirectoryEntry>, EngineError> {
        check_order_no(order_no, self.settings.inventory.max_order_no_len)?;
        Ok(self
            .redis
            .lookup_orders(&[order_no.to_string()])
            .await?
            .pop()
            .flatten()
            .filter(|e| matches!(e, DirectoryEntry::Order { .. })))
    }

    /// Finds an order's positions in the directory and runs the transition through the
    /// shard of its first group. An unknown order gets a tombstone when released. Bounded:
    /// RETRY (the order changed between the look-up and the script) is tried 3 times.
    async fn transition(
        &self,
        order_no: &str,
        trace_id: &str,
        op: TransitionOp,
    ) -> Result<(TransitionReply, Vec<LineView>), EngineError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let entry = self.directory_entry(order_no).await?;
            let (reply, items) = match entry {
                Some(DirectoryEntry::Order { lines, .. }) => {
                    let (order, items) = transition_for(order_no, trace_id, &lines, op.clone());
                    (self.send_transition(order).await?, items)
                }
                _ => match &op {
                    TransitionOp::Release {
                        only_if_expired: false,
                        ..
                    } => {
                        let until =
                            now_ms() + self.settings.hold_ms() + self.settings.marker_ttl_ms();
                        (self.redis.tombstone(order_no, until).await?, vec![])
                    }
                    _ => (TransitionReply::NotFound, vec![]),
                },
            };
            if reply != TransitionReply::Retry || attempts >= 3 {
                return Ok((reply, items));
            }
        }
    }

    /// Confirm: every line RESERVED -> CONFIRMED, or nothing.
    pub async fn confirm(
        &self,
        order_no: &str,
        trace_id: &str,
    ) -> Result<TransitionOutcome, EngineError> {
        let result = self.confirm_inner(order_no, trace_id, false).await;
        self.count_transition("confirm", &result);
        result
    }

    /// Confirm for an order the order service says was paid, even if its hold expired
    /// (the expiry job's order-status hook).
    pub async fn confirm_paid(
        &self,
        order_no: &str,
        trace_id: &str,
    ) -> Result<TransitionOutcome, EngineError> {
        let result = self.confirm_inner(order_no, trace_id, true).await;
        self.count_transition("confirm", &result);
        result
    }

    async fn confirm_inner(
        &self,
        order_no: &str,
        trace_id: &str,
        even_if_expired: bool,
    ) -> Result<TransitionOutcome, EngineError> {
        let (reply, items) = self
            .transition(
                order_no,
                trace_id,
                TransitionOp::Confirm { even_if_expired },
            )
            .await?;
        let result = confirm_result(order_no, reply, items);
        match result {
            // A repeat: the units each line sold (fewer than held after a partial confirm).
            Ok(mut outcome) if outcome.existed => {
                let keys: Vec<SkuKey> = outcome
                    .items
                    .iter()
                    .map(|i| SkuKey::new(WarehouseId(i.warehouse_id), SkuId(i.sku_id)))
                    .collect();
                let markers = self.redis.line_markers(order_no, &keys).await?;
                for (item, marker) in outcome.items.iter_mut().zip(markers) {
                    if let Some(sold) = marker.and_then(|m| m.confirmed_qty) {
                        item.qty = sold;
                    }
                }
                Ok(outcome)
            }
            other => other,
        }
    }

    /// Release: every held line RESERVED -> RELEASED (stock back), or nothing if a line is
    /// confirmed. An unknown order gets a tombstone (its late reservation is refused).
    pub async fn release(
        &self,
        order_no: &str,
        reason: LedgerReason,
        remark: &str,
        trace_id: &str,
    ) -> Result<TransitionOutcome, EngineError> {
        let result = self
            .release_inner(order_no, reason, remark, trace_id, false, 0)
            .await;
        self.count_transition("release", &result);
        result
    }

    async fn release_inner(
        &self,
        order_no: &str,
        reason: LedgerReason,
        remark: &str,
        trace_id: &str,
        only_if_expired: bool,
        fence: i64,
    ) -> Result<TransitionOutcome, EngineError> {
        let op = TransitionOp::Release {
            reason,
            remark: remark.to_string(),
            only_if_expired,
            fence,
        };
        let (reply, items) = self.transition(order_no, trace_id, op).await?;
        release_result(order_no, reply, items)
    }

    /// Releases the expired holds of many orders at once (the expiry scan): one directory
    /// read for all of them, then every order goes to its shard at the same time, so the
    /// shards batch them into one script call per batch, as they do reserves. Only lines
    /// whose hold has expired are released (ledger reason EXPIRED). One result per order,
    /// in order; Err as a whole only when the directory cannot be read. `fence`: the
    /// supervisor lease's token (0: none), refused (EngineError::Fenced) once a newer
    /// leader has raised the groups' fences.
    pub async fn release_expired_many(
        &self,
        order_nos: &[String],
        trace_id: &str,
        fence: i64,
    ) -> Result<Vec<Result<TransitionOutcome, EngineError>>, EngineError> {
        let entries = self.redis.lookup_orders(order_nos).await?;
        let op = TransitionOp::Release {
            reason: LedgerReason::Expired,
            remark: "hold expired".to_string(),
            only_if_expired: true,
            fence,
        };
        let releases = order_nos.iter().zip(entries).map(|(order_no, entry)| {
            let op = op.clone();
            async move {
                let Some(DirectoryEntry::Order { lines, .. }) = entry else {
                    return Err(EngineError::ReservationNotFound(order_no.clone()));
                };
                let (order, items) = transition_for(order_no, trace_id, &lines, op);
                match self.send_transition(order).await? {
                    // The order changed since the directory was read: the one-order path
                    // reads it again (bounded retries).
                    TransitionReply::Retry => {
                        self.release_inner(
                            order_no,
                            LedgerReason::Expired,
                            "hold expired",
                            trace_id,
                            true,
                            fence,
                        )
                        .await
                    }
                    reply => release_result(order_no, reply, items),
                }
            }
        });
        let results = futures_util::future::join_all(releases).await;
        for result in &results {
            self.count_transition("expire", result);
        }
        Ok(results)
    }

    /// The order's lines. `Live`: Redis' state (current even before the journal drains),
    /// answered by Redis alone while it holds every line (id null: the DB is not asked);
    /// lines whose markers aged out come from the DB. `Db`: the DB rows as the journal
    /// wrote them, with their ids.
    pub async fn reservations(
        &self,
        order_no: &str,
        source: ReadSource,
    ) -> Result<Vec<ReservationView>, EngineError> {
        check_order_no(order_no, self.settings.inventory.max_order_no_len)?;
        let (lines, markers) = match source {
            ReadSource::Live => {
                let lines = self.redis.order_lines(order_no).await?;
                let markers = self.redis.line_markers(order_no, &lines).await?;
                (lines, markers)
            }
            ReadSource::Db => (vec![], vec![]),
        };
        let redis_has_all = !lines.is_empty() && markers.iter().all(Option::is_some);
        let rows = if redis_has_all {
            Ok(vec![])
        } else {
            match db::connection(&self.pool).await {
                Ok(mut conn) => Reservation::by_order(&mut conn, order_no)
                    .await
                    .map_err(db::DbError::from),
                Err(e) => Err(e),
            }
        };
        let rows = match rows {
            Ok(rows) => rows,
            // Redis alone can answer while the DB is away.
            Err(e) if !lines.is_empty() => {
                tracing::warn!(error = %e, "reservations answered from Redis only");
                vec![]
            }
            Err(e) => return Err(e.into()),
        };
        let now = crate::domain::local_now();
        let mut views: BTreeMap<SkuKey, ReservationView> = BTreeMap::new();
        for row in &rows {
            let Some(status) = ReservationStatus::parse(&row.status) else {
                continue;
            };
            views.insert(
                SkuKey::new(WarehouseId(row.warehouse_id), SkuId(row.sku_id)),
                ReservationView {
                    id: Some(row.id),
                    order_no: row.order_no.clone(),
                    sku_id: row.sku_id,
                    warehouse_id: row.warehouse_id,
                    qty: row.qty.into(),
                    confirmed_qty: row.confirmed_qty(),
                    status,
                    status_desc: status.description(),
                    expire_at: row.expire_at,
                    expired: status == ReservationStatus::Reserved && row.expire_at <= now,
                },
            );
        }
        for (key, marker) in lines.iter().zip(markers) {
            let Some(marker) = marker else { continue };
            let expire_at = ms_to_local_datetime(marker.expire_at_ms);
            let id = views.get(key).and_then(|v| v.id);
            views.insert(
                *key,
                ReservationView {
                    id,
                    order_no: order_no.to_string(),
                    sku_id: key.sku_id,
                    warehouse_id: key.warehouse_id,
                    qty: marker.qty,
                    confirmed_qty: marker.confirmed_qty,
                    status: marker.status,
                    status_desc: marker.status.description(),
                    expire_at,
                    expired: marker.status == ReservationStatus::Reserved && expire_at <= now,
                },
            );
        }
        Ok(views.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(w: i64, s: i64, qty: i64) -> OrderLine {
        OrderLine {
            key: SkuKey::new(WarehouseId(w), SkuId(s)),
            qty,
        }
    }

    #[test]
    fn duplicate_lines_are_summed_and_sorted() {
        let merged = merge_lines(&[line(1, 9, 2), line(1, 3, 1), line(1, 9, 3)], 10, 100).unwrap();
        assert_eq!(merged, vec![line(1, 3, 1), line(1, 9, 5)]);
    }

    #[test]
    fn limits_are_enforced() {
        assert!(merge_lines(&[], 10, 100).is_err());
        assert!(merge_lines(&[line(1, 1, 0)], 10, 100).is_err());
        assert!(merge_lines(&[line(1, 1, 101)], 10, 100).is_err());
        assert!(merge_lines(&[line(1, 1, 60), line(1, 1, 60)], 10, 100).is_err());
        assert!(merge_lines(&[line(0, 1, 1)], 10, 100).is_err());
        let many: Vec<OrderLine> = (1..=11).map(|s| line(1, s, 1)).collect();
        assert!(merge_lines(&many, 10, 100).is_err());
    }

    #[test]
    fn order_numbers_are_checked() {
        assert!(check_order_no("ORD-2024_01", 64).is_ok());
        assert!(check_order_no("", 64).is_err());
        assert!(check_order_no("a{b}", 64).is_err());
        assert!(check_order_no("a b", 64).is_err());
        assert!(check_order_no(&"x".repeat(65), 64).is_err());
    }
}
