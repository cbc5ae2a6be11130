//! Rows and the queries that read and write them. Every function takes a connection, so
//! callers can compose them inside one transaction.

use crate::domain::{SkuId, WarehouseId};
use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::mysql::Mysql;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncMysqlConnection, RunQueryDsl, SimpleAsyncConnection};

use crate::domain::{SkuKey, StockLevels};
use crate::store::schema::{
    t_inventory, t_inventory_reservation, t_inventory_txn, t_reconcile_report, t_stock_threshold,
    t_warehouse,
};
use crate::store::sql_text::{push_datetime, push_int, push_opt_text, push_text};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = t_inventory, check_for_backend(Mysql))]
pub struct Inventory {
    pub id: i64,
    pub sku_id: i64,
    pub warehouse_id: i64,
    pub available_qty: i32,
    pub reserved_qty: i32,
    pub version: i64,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub deleted: i8,
}

impl Inventory {
    pub fn key(&self) -> SkuKey {
        SkuKey::new(WarehouseId(self.warehouse_id), SkuId(self.sku_id))
    }

    pub async fn find(conn: &mut AsyncMysqlConnection, key: SkuKey) -> QueryResult<Option<Self>> {
        use t_inventory::dsl as inv;
        inv::t_inventory
            .filter(inv::sku_id.eq(key.sku_id))
            .filter(inv::warehouse_id.eq(key.warehouse_id))
            .filter(inv::deleted.eq(0))
            .select(Inventory::as_select())
            .first(conn)
            .await
            .optional()
    }

    /// The rows of many positions in one query (any order; absent positions are missing).
    pub async fn find_many(
        conn: &mut AsyncMysqlConnection,
        keys: &[SkuKey],
    ) -> QueryResult<Vec<Self>> {
        use t_inventory::dsl as inv;
        if keys.is_empty() {
            return Ok(vec![]);
        }
        let mut skus: Vec<i64> = keys.iter().map(|k| k.sku_id).collect();
        let mut warehouses: Vec<i64> = keys.iter().map(|k| k.warehouse_id).collect();
        skus.sort_unstable();
        skus.dedup();
        warehouses.sort_unstable();
        warehouses.dedup();
        // The cross product of both lists may name positions nobody asked for: keep those
        // asked for (the unique (sku_id, warehouse_id) index serves the IN lists).
        let wanted: std::collections::HashSet<SkuKey> = keys.iter().copied().collect();
        let rows: Vec<Self> = inv::t_inventory
            .filter(inv::sku_id.eq_any(&skus))
            .filter(inv::warehouse_id.eq_any(&warehouses))
            .filter(inv::deleted.eq(0))
            .select(Inventory::as_select())
            .load(conn)
            .await?;
        Ok(rows
            .into_iter()
            .filter(|row| wanted.contains(&row.key()))
            .collect())
    }

    pub async fn by_sku(conn: &mut AsyncMysqlConnection, sku_id: i64) -> QueryResult<Vec<Self>> {
        use t_inventory::dsl as inv;
        inv::t_inventory
            .filter(inv::sku_id.eq(sku_id))
            .filter(inv::deleted.eq(0))
            .order(inv::warehouse_id.asc())
            .select(Inventory::as_select())
            .load(conn)
            .await
    }

    /// Keyset pagination over every position (warm-up, reconciliation).
    pub async fn page_after(
        conn: &mut AsyncMysqlConnection,
        after_id: i64,
        limit: i64,
    ) -> QueryResult<Vec<Self>> {
        use t_inventory::dsl as inv;
        inv::t_inventory
            .filter(inv::id.gt(after_id))
            .filter(inv::deleted.eq(0))
            .order(inv::id.asc())
            .limit(limit)
            .select(Inventory::as_select())
            .load(conn)
            .await
    }

    /// Moves each row to the levels of its newest journal event, and only forward:
    /// a row already at (or past) that version is left alone, which makes replays and
    /// out-of-order batches harmless. Creates rows for new positions.
    pub async fn upsert_levels(
        conn: &mut AsyncMysqlConnection,
        rows: &[(SkuKey, StockLevels)],
    ) -> QueryResult<usize> {
        let mut written = 0;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            written += Self::upsert_levels_chunk(conn, chunk).await?;
        }
        Ok(written)
    }

    async fn upsert_levels_chunk(
        conn: &mut AsyncMysqlConnection,
        rows: &[(SkuKey, StockLevels)],
    ) -> QueryResult<usize> {
        let mut sql = String::with_capacity(128 + rows.len() * 48);
        sql.push_str(
            "INSERT INTO t_inventory (sku_id, warehouse_id, available_qty, reserved_qty, version) VALUES ",
        );
        for (i, (key, levels)) in rows.iter().enumerate() {
            sql.push_str(if i == 0 { "(" } else { ", (" });
            push_int(&mut sql, key.sku_id);
            sql.push_str(", ");
            push_int(&mut sql, key.warehouse_id);
            sql.push_str(", ");
            push_int(&mut sql, i64::from(clamp_i32(levels.available)));
            sql.push_str(", ");
            push_int(&mut sql, i64::from(clamp_i32(levels.reserved)));
            sql.push_str(", ");
            push_int(&mut sql, levels.seq);
            sql.push(')');
        }
        // MySQL applies these left to right, each seeing the columns updated before it:
        // `version` must come last.
        sql.push_str(
            " ON DUPLICATE KEY UPDATE \
             available_qty = IF(VALUES(version) > version, VALUES(available_qty), available_qty), \
             reserved_qty = IF(VALUES(version) > version, VALUES(reserved_qty), reserved_qty), \
             version = GREATEST(version, VALUES(version))",
        );
        conn.batch_execute(&sql).await?;
        Ok(rows.len())
    }
}

/// Rows per statement: MySQL allows 65,535 placeholders (the widest row has 11 columns),
/// and a text statement of this many rows stays far below max_allowed_packet.
const ROWS_PER_STATEMENT: usize = 2_000;

/// Quantities are bounded by config far below i32::MAX; the clamp only keeps a corrupt
/// value from wrapping around.
fn clamp_i32(v: i64) -> i32 {
    v.clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = t_inventory_reservation, check_for_backend(Mysql))]
pub struct Reservation {
    pub id: i64,
    pub order_no: String,
    pub sku_id: i64,
    pub warehouse_id: i64,
    pub qty: i32,
    pub status: String,
    pub expire_at: NaiveDateTime,
    pub version: i32,
    pub release_reason: Option<String>,
    pub trace_id: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    /// Units sold once CONFIRMED (a partial confirm sells fewer than `qty`); NULL: all.
    pub confirmed_qty: Option<i32>,
}

impl Reservation {
    /// Units this line sold, if CONFIRMED (as `RecordLine::confirmed_qty` says of Redis).
    pub fn confirmed_qty(&self) -> Option<i64> {
        (self.status == "CONFIRMED").then(|| i64::from(self.confirmed_qty.unwrap_or(self.qty)))
    }
}

/// A reservation line as the journal describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationUpsert {
    pub order_no: String,
    pub key: SkuKey,
    pub qty: i32,
    pub status: &'static str,
    pub rank: i32,
    pub expire_at: NaiveDateTime,
    pub release_reason: Option<String>,
    pub trace_id: Option<String>,
    /// For CONFIRMED: the units sold.
    pub confirmed_qty: Option<i32>,
}

#[derive(QueryableByName)]
struct ConfirmedTotal {
    #[diesel(sql_type = BigInt)]
    sku_id: i64,
    #[diesel(sql_type = BigInt)]
    warehouse_id: i64,
    #[diesel(sql_type = BigInt)]
    total: i64,
}

impl Reservation {
    pub async fn by_order(
        conn: &mut AsyncMysqlConnection,
        order_no: &str,
    ) -> QueryResult<Vec<Self>> {
        use t_inventory_reservation::dsl as r;
        r::t_inventory_reservation
            .filter(r::order_no.eq(order_no))
            .order(r::id.asc())
            .select(Reservation::as_select())
            .load(conn)
            .await
    }

    /// Every line of these orders.
    pub async fn by_orders(
        conn: &mut AsyncMysqlConnection,
        order_nos: &[String],
    ) -> QueryResult<Vec<Self>> {
        use t_inventory_reservation::dsl as r;
        let mut out = Vec::new();
        for chunk in order_nos.chunks(ROWS_PER_STATEMENT) {
            out.extend(
                r::t_inventory_reservation
                    .filter(r::order_no.eq_any(chunk))
                    .order(r::id.asc())
                    .select(Reservation::as_select())
                    .load(conn)
                    .await?,
            );
        }
        Ok(out)
    }

    pub async fn for_position(
        conn: &mut AsyncMysqlConnection,
        key: SkuKey,
    ) -> QueryResult<Vec<Self>> {
        use t_inventory_reservation::dsl as r;
        r::t_inventory_reservation
            .filter(r::sku_id.eq(key.sku_id))
            .filter(r::warehouse_id.eq(key.warehouse_id))
            .order(r::id.asc())
            .select(Reservation::as_select())
            .load(conn)
            .await
    }

    /// RESERVED lines by expiry, soonest first (the console's holds page), optionally of
    /// one SKU; at most `limit`.
    pub async fn holds_soonest(
        conn: &mut AsyncMysqlConnection,
        sku_id: Option<i64>,
        limit: i64,
    ) -> QueryResult<Vec<Self>> {
        use t_inventory_reservation::dsl as r;
        let mut query = r::t_inventory_reservation
            .filter(r::status.eq("RESERVED"))
            .into_boxed();
        if let Some(sku) = sku_id {
            query = query.filter(r::sku_id.eq(sku));
        }
        query
            .order((r::expire_at.asc(), r::id.asc()))
            .limit(limit)
            .select(Reservation::as_select())
            .load(conn)
            .await
    }

    /// RESERVED lines whose hold ends before `until`.
    pub async fn holds_ending_before(
        conn: &mut AsyncMysqlConnection,
        until: NaiveDateTime,
    ) -> QueryResult<i64> {
        use t_inventory_reservation::dsl as r;
        r::t_inventory_reservation
            .filter(r::status.eq("RESERVED"))
            .filter(r::expire_at.lt(until))
            .count()
            .get_result(conn)
            .await
    }

    /// Lines whose Redis markers should still exist (hold end + marker ttl after `since`).
    pub async fn live_for_position(
        conn: &mut AsyncMysqlConnection,
        key: SkuKey,
        expiring_after: NaiveDateTime,
    ) -> QueryResult<Vec<Self>> {
        use t_inventory_reservation::dsl as r;
        r::t_inventory_reservation
            .filter(r::sku_id.eq(key.sku_id))
            .filter(r::warehouse_id.eq(key.warehouse_id))
            .filter(r::expire_at.gt(expiring_after))
            .order(r::id.asc())
            .select(Reservation::as_select())
            .load(conn)
            .await
    }

    /// Inserts lines and moves existing ones forward (never back: a CONFIRMED or RELEASED
    /// row stays so even if an older RESERVED event is replayed after it).
    pub async fn upsert(
        conn: &mut AsyncMysqlConnection,
        rows: &[ReservationUpsert],
    ) -> QueryResult<usize> {
        let mut written = 0;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            written += Self::upsert_chunk(conn, chunk).await?;
        }
        Ok(written)
    }

    async fn upsert_chunk(
        conn: &mut AsyncMysqlConnection,
        rows: &[ReservationUpsert],
    ) -> QueryResult<usize> {
        let mut sql = String::with_capacity(256 + rows.len() * 128);
        sql.push_str(
            "INSERT INTO t_inventory_reservation \
             (order_no, sku_id, warehouse_id, qty, status, expire_at, version, release_reason, trace_id, confirmed_qty) VALUES ",
        );
        for (i, row) in rows.iter().enumerate() {
            sql.push_str(if i == 0 { "(" } else { ", (" });
            push_text(&mut sql, &row.order_no);
            sql.push_str(", ");
            push_int(&mut sql, row.key.sku_id);
            sql.push_str(", ");
            push_int(&mut sql, row.key.warehouse_id);
            sql.push_str(", ");
            push_int(&mut sql, i64::from(row.qty));
            sql.push_str(", ");
            push_text(&mut sql, row.status);
            sql.push_str(", ");
            push_datetime(&mut sql, &row.expire_at);
            sql.push_str(", ");
            push_int(&mut sql, i64::from(row.rank));
            sql.push_str(", ");
            push_opt_text(&mut sql, row.release_reason.as_deref());
            sql.push_str(", ");
            push_opt_text(&mut sql, row.trace_id.as_deref());
            sql.push_str(", ");
            match row.confirmed_qty {
                Some(c) => push_int(&mut sql, i64::from(c)),
                None => sql.push_str("NULL"),
            }
            sql.push(')');
        }
        sql.push_str(
            " ON DUPLICATE KEY UPDATE \
             status = IF(VALUES(version) > version, VALUES(status), status), \
             release_reason = IF(VALUES(version) > version, VALUES(release_reason), release_reason), \
             confirmed_qty = IF(VALUES(version) > version, VALUES(confirmed_qty), confirmed_qty), \
             version = GREATEST(version, VALUES(version))",
        );
        conn.batch_execute(&sql).await?;
        Ok(rows.len())
    }

    /// Units sold (CONFIRMED lines) per position.
    pub async fn confirmed_totals(
        conn: &mut AsyncMysqlConnection,
        keys: &[SkuKey],
    ) -> QueryResult<HashMap<SkuKey, i64>> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let mut sql = String::from(
            "SELECT sku_id, warehouse_id, CAST(SUM(COALESCE(confirmed_qty, qty)) AS SIGNED) AS total \
             FROM t_inventory_reservation WHERE status = 'CONFIRMED' AND (sku_id, warehouse_id) IN (",
        );
        sql.push_str(&vec!["(?, ?)"; keys.len()].join(", "));
        sql.push_str(") GROUP BY sku_id, warehouse_id");
        let mut query = diesel::sql_query(sql).into_boxed::<Mysql>();
        for key in keys {
            query = query
                .bind::<BigInt, _>(key.sku_id)
                .bind::<BigInt, _>(key.warehouse_id);
        }
        let totals: Vec<ConfirmedTotal> = query.load(conn).await?;
        Ok(totals
            .into_iter()
            .map(|t| {
                (
                    SkuKey::new(WarehouseId(t.warehouse_id), SkuId(t.sku_id)),
                    t.total,
                )
            })
            .collect())
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = t_inventory_txn, check_for_backend(Mysql))]
pub struct LedgerEntry {
    pub id: i64,
    pub txn_id: String,
    pub order_no: Option<String>,
    pub sku_id: i64,
    pub warehouse_id: i64,
    pub delta_available: i32,
    pub delta_reserved: i32,
    pub available_after: i32,
    pub reserved_after: i32,
    pub reason: String,
    pub trace_id: Option<String>,
    pub remark: Option<String>,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Clone, Insertable, PartialEq, Eq)]
#[diesel(table_name = t_inventory_txn)]
pub struct NewLedgerEntry {
    pub txn_id: String,
    pub order_no: Option<String>,
    pub sku_id: i64,
    pub warehouse_id: i64,
    pub delta_available: i32,
    pub delta_reserved: i32,
    pub available_after: i32,
    pub reserved_after: i32,
    pub reason: String,
    pub trace_id: Option<String>,
    pub remark: Option<String>,
}

impl LedgerEntry {
    /// Inserts rows; a `txn_id` already present (a replayed journal entry) is skipped.
    pub async fn insert_new(
        conn: &mut AsyncMysqlConnection,
        rows: &[NewLedgerEntry],
    ) -> QueryResult<usize> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut sql = String::with_capacity(256 + chunk.len() * 160);
            sql.push_str(
                "INSERT IGNORE INTO t_inventory_txn (txn_id, order_no, sku_id, warehouse_id, \
                 delta_available, delta_reserved, available_after, reserved_after, reason, \
                 trace_id, remark) VALUES ",
            );
            for (i, row) in chunk.iter().enumerate() {
                sql.push_str(if i == 0 { "(" } else { ", (" });
                push_text(&mut sql, &row.txn_id);
                sql.push_str(", ");
                push_opt_text(&mut sql, row.order_no.as_deref());
                for n in [
                    row.sku_id,
                    row.warehouse_id,
                    i64::from(row.delta_available),
                    i64::from(row.delta_reserved),
                    i64::from(row.available_after),
                    i64::from(row.reserved_after),
                ] {
                    sql.push_str(", ");
                    push_int(&mut sql, n);
                }
                sql.push_str(", ");
                push_text(&mut sql, &row.reason);
                sql.push_str(", ");
                push_opt_text(&mut sql, row.trace_id.as_deref());
                sql.push_str(", ");
                push_opt_text(&mut sql, row.remark.as_deref());
                sql.push(')');
            }
            conn.batch_execute(&sql).await?;
        }
        Ok(rows.len())
    }

    /// Ledger rows newest first, of a SKU (optionally one warehouse) or of an order, with
    /// an id below `before_id` (the previous page's last); at most `limit`.
    pub async fn page(
        conn: &mut AsyncMysqlConnection,
        filter: &LedgerFilter,
        before_id: Option<i64>,
        limit: i64,
    ) -> QueryResult<Vec<Self>> {
        use t_inventory_txn::dsl as t;
        let mut query = t::t_inventory_txn.into_boxed();
        if let Some(sku) = filter.sku_id {
            query = query.filter(t::sku_id.eq(sku));
        }
        if let Some(w) = filter.warehouse_id {
            query = query.filter(t::warehouse_id.eq(w));
        }
        if let Some(order_no) = &filter.order_no {
            query = query.filter(t::order_no.eq(order_no.clone()));
        }
        if let Some(before) = before_id {
            query = query.filter(t::id.lt(before));
        }
        query
            .order(t::id.desc())
            .limit(limit)
            .select(LedgerEntry::as_select())
            .load(conn)
            .await
    }

    pub async fn for_position(
        conn: &mut AsyncMysqlConnection,
        key: SkuKey,
    ) -> QueryResult<Vec<Self>> {
        use t_inventory_txn::dsl as t;
        t::t_inventory_txn
            .filter(t::sku_id.eq(key.sku_id))
            .filter(t::warehouse_id.eq(key.warehouse_id))
            .order(t::id.asc())
            .select(LedgerEntry::as_select())
            .load(conn)
            .await
    }
}

/// Which ledger rows a page lists: a SKU (and warehouse) or an order.
#[derive(Debug, Clone, Default)]
pub struct LedgerFilter {
    pub sku_id: Option<i64>,
    pub warehouse_id: Option<i64>,
    pub order_no: Option<String>,
}

/// A journal value as the INT column it goes to. `journal::parse_entry` refused every
/// entry with a value beyond i32, so the clamp cannot change anything.
pub fn ledger_i32(v: i64) -> i32 {
    debug_assert!(
        i32::try_from(v).is_ok(),
        "{v} passed the journal's range check"
    );
    clamp_i32(v)
}

/// Idempotency layer 1: what was done with one message, per consumer group.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = crate::store::schema::t_mq_consume_log, check_for_backend(Mysql))]
pub struct ConsumeLog {
    pub id: i64,
    pub event_id: String,
    pub consumer_group: String,
    pub topic: String,
    pub tag: Option<String>,
    pub business_key: Option<String>,
    pub status: String,
    pub result: Option<String>,
    pub cost_ms: Option<i32>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = crate::store::schema::t_mq_consume_log)]
pub struct NewConsumeLog {
    pub event_id: String,
    pub consumer_group: String,
    pub topic: String,
    pub tag: Option<String>,
    pub business_key: Option<String>,
    pub status: String,
    pub result: Option<String>,
    pub cost_ms: Option<i32>,
}

impl ConsumeLog {
    pub async fn find(
        conn: &mut AsyncMysqlConnection,
        event_id: &str,
        group: &str,
    ) -> QueryResult<Option<Self>> {
        use crate::store::schema::t_mq_consume_log::dsl as l;
        l::t_mq_consume_log
            .filter(l::event_id.eq(event_id))
            .filter(l::consumer_group.eq(group))
            .select(ConsumeLog::as_select())
            .first(conn)
            .await
            .optional()
    }

    /// The rows of many events of one group, in one query (in no particular order).
    pub async fn find_many(
        conn: &mut AsyncMysqlConnection,
        event_ids: &[String],
        group: &str,
    ) -> QueryResult<Vec<Self>> {
        use crate::store::schema::t_mq_consume_log::dsl as l;
        if event_ids.is_empty() {
            return Ok(vec![]);
        }
        l::t_mq_consume_log
            .filter(l::event_id.eq_any(event_ids))
            .filter(l::consumer_group.eq(group))
            .select(ConsumeLog::as_select())
            .load(conn)
            .await
    }

    /// Inserts many rows in one statement (SQL text, see store::sql_text), or updates
    /// status, result and cost of those that exist.
    pub async fn record_many(
        conn: &mut AsyncMysqlConnection,
        rows: &[NewConsumeLog],
    ) -> QueryResult<usize> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut sql = String::with_capacity(256 + chunk.len() * 160);
            sql.push_str(
                "INSERT INTO t_mq_consume_log (event_id, consumer_group, topic, tag, \
                 business_key, status, result, cost_ms) VALUES ",
            );
            for (i, row) in chunk.iter().enumerate() {
                sql.push_str(if i == 0 { "(" } else { ", (" });
                push_text(&mut sql, &row.event_id);
                sql.push_str(", ");
                push_text(&mut sql, &row.consumer_group);
                sql.push_str(", ");
                push_text(&mut sql, &row.topic);
                sql.push_str(", ");
                push_opt_text(&mut sql, row.tag.as_deref());
                sql.push_str(", ");
                push_opt_text(&mut sql, row.business_key.as_deref());
                sql.push_str(", ");
                push_text(&mut sql, &row.status);
                sql.push_str(", ");
                push_opt_text(&mut sql, row.result.as_deref());
                sql.push_str(", ");
                match row.cost_ms {
                    Some(ms) => push_int(&mut sql, i64::from(ms)),
                    None => sql.push_str("NULL"),
                }
                sql.push(')');
            }
            sql.push_str(
                " ON DUPLICATE KEY UPDATE status = VALUES(status), result = VALUES(result), \
                 cost_ms = VALUES(cost_ms)",
            );
            conn.batch_execute(&sql).await?;
        }
        Ok(rows.len())
    }
}

/// A position's low-stock threshold (`t_stock_threshold`): the persistence path tells
/// STOCK_LOW when available falls to it or below.
pub struct StockThreshold;

impl StockThreshold {
    /// Sets (Some) or clears (None) the threshold of a position. A cleared one stays as
    /// NULL, with a new updated_at (see `last_change`).
    pub async fn set(
        conn: &mut AsyncMysqlConnection,
        key: SkuKey,
        threshold: Option<i32>,
    ) -> QueryResult<()> {
        use t_stock_threshold::dsl as t;
        diesel::replace_into(t::t_stock_threshold)
            .values((
                t::sku_id.eq(key.sku_id),
                t::warehouse_id.eq(key.warehouse_id),
                t::low_stock_threshold.eq(threshold),
            ))
            .execute(conn)
            .await?;
        Ok(())
    }

    pub async fn get(conn: &mut AsyncMysqlConnection, key: SkuKey) -> QueryResult<Option<i32>> {
        use t_stock_threshold::dsl as t;
        Ok(t::t_stock_threshold
            .filter(t::sku_id.eq(key.sku_id))
            .filter(t::warehouse_id.eq(key.warehouse_id))
            .select(t::low_stock_threshold)
            .first::<Option<i32>>(conn)
            .await
            .optional()?
            .flatten())
    }

    /// The newest change (rows are never deleted, and every set, a clear included, writes
    /// a new updated_at): a cache of thresholds is stale when this differs from what it was
    /// filled under. One index look-up (`idx_stock_threshold_updated`).
    pub async fn last_change(
        conn: &mut AsyncMysqlConnection,
    ) -> QueryResult<Option<NaiveDateTime>> {
        use t_stock_threshold::dsl as t;
        t::t_stock_threshold
            .select(diesel::dsl::max(t::updated_at))
            .first(conn)
            .await
    }

    /// The thresholds of those positions that have one (one query).
    pub async fn for_positions(
        conn: &mut AsyncMysqlConnection,
        keys: &[SkuKey],
    ) -> QueryResult<HashMap<SkuKey, i64>> {
        use t_stock_threshold::dsl as t;
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let mut skus: Vec<i64> = keys.iter().map(|k| k.sku_id).collect();
        skus.sort_unstable();
        skus.dedup();
        let rows: Vec<(i64, i64, Option<i32>)> = t::t_stock_threshold
            .filter(t::sku_id.eq_any(skus))
            .filter(t::low_stock_threshold.is_not_null())
            .select((t::sku_id, t::warehouse_id, t::low_stock_threshold))
            .load(conn)
            .await?;
        let wanted: std::collections::HashSet<&SkuKey> = keys.iter().collect();
        Ok(rows
            .into_iter()
            .filter_map(|(s, w, v)| Some((SkuKey::new(WarehouseId(w), SkuId(s)), i64::from(v?))))
            .filter(|(k, _)| wanted.contains(k))
            .collect())
    }
}

/// A warehouse (`t_warehouse`): what routing chooses among.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = t_warehouse, check_for_backend(Mysql))]
pub struct Warehouse {
    pub id: i64,
    pub code: String,
    pub name: String,
    pub region: Option<String>,
    pub priority: i32,
    pub enabled: i8,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// The fields an operator sets.
#[derive(Debug, Clone, PartialEq, Eq, Insertable, AsChangeset)]
#[diesel(table_name = t_warehouse, treat_none_as_null = true)]
pub struct WarehouseFields {
    pub code: String,
    pub name: String,
    pub region: Option<String>,
    pub priority: i32,
    pub enabled: i8,
}

impl Warehouse {
    pub async fn find(conn: &mut AsyncMysqlConnection, id: i64) -> QueryResult<Option<Self>> {
        use t_warehouse::dsl as w;
        w::t_warehouse
            .filter(w::id.eq(id))
            .select(Warehouse::as_select())
            .first(conn)
            .await
            .optional()
    }

    pub async fn find_by_code(
        conn: &mut AsyncMysqlConnection,
        code: &str,
    ) -> QueryResult<Option<Self>> {
        use t_warehouse::dsl as w;
        w::t_warehouse
            .filter(w::code.eq(code))
            .select(Warehouse::as_select())
            .first(conn)
            .await
            .optional()
    }

    /// Every warehouse, by priority (lower first), then id.
    pub async fn all(conn: &mut AsyncMysqlConnection) -> QueryResult<Vec<Self>> {
        use t_warehouse::dsl as w;
        w::t_warehouse
            .order((w::priority.asc(), w::id.asc()))
            .select(Warehouse::as_select())
            .load(conn)
            .await
    }

    pub async fn insert(
        conn: &mut AsyncMysqlConnection,
        id: i64,
        fields: &WarehouseFields,
    ) -> QueryResult<()> {
        use t_warehouse::dsl as w;
        diesel::insert_into(w::t_warehouse)
            .values((w::id.eq(id), fields))
            .execute(conn)
            .await
            .map(|_| ())
    }

    /// Rows changed (0: no such warehouse).
    pub async fn update(
        conn: &mut AsyncMysqlConnection,
        id: i64,
        fields: &WarehouseFields,
    ) -> QueryResult<usize> {
        use t_warehouse::dsl as w;
        diesel::update(w::t_warehouse.filter(w::id.eq(id)))
            .set(fields)
            .execute(conn)
            .await
    }
}

/// A finished reconciliation run (`t_reconcile_report`), its report as JSON.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = t_reconcile_report, check_for_backend(Mysql))]
pub struct StoredReport {
    pub id: i64,
    pub finished_at: NaiveDateTime,
    pub run_trigger: String,
    pub instance: String,
    pub report: String,
}

impl StoredReport {
    /// Records a run and drops all but the newest `keep`.
    pub async fn record(
        conn: &mut AsyncMysqlConnection,
        finished_at: NaiveDateTime,
        run_trigger: &str,
        instance: &str,
        report_json: &str,
        keep: i64,
    ) -> QueryResult<()> {
        use t_reconcile_report::dsl as r;
        diesel::insert_into(r::t_reconcile_report)
            .values((
                r::finished_at.eq(finished_at),
                r::run_trigger.eq(run_trigger),
                r::instance.eq(instance),
                r::report.eq(report_json),
            ))
            .execute(conn)
            .await?;
        let oldest_kept: Option<i64> = r::t_reconcile_report
            .select(r::id)
            .order(r::id.desc())
            .offset(keep - 1)
            .limit(1)
            .first(conn)
            .await
            .optional()?;
        if let Some(id) = oldest_kept {
            diesel::delete(r::t_reconcile_report.filter(r::id.lt(id)))
                .execute(conn)
                .await?;
        }
        Ok(())
    }

    /// The newest runs, newest first.
    pub async fn newest(conn: &mut AsyncMysqlConnection, limit: i64) -> QueryResult<Vec<Self>> {
        use t_reconcile_report::dsl as r;
        r::t_reconcile_report
            .order(r::id.desc())
            .limit(limit)
            .select(StoredReport::as_select())
            .load(conn)
            .await
    }
}
