//! Rows and the queries that read and write them. Every function takes a connection, so
//! callers can compose them inside one transaction.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::mysql::Mysql;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Datetime, Integer, Nullable, Varchar};
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};

use crate::domain::{SkuKey, StockLevels};
use crate::store::schema::{t_inventory, t_inventory_reservation, t_inventory_txn};

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
        SkuKey::new(self.warehouse_id, self.sku_id)
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
        let mut sql = String::from(
            "INSERT INTO t_inventory (sku_id, warehouse_id, available_qty, reserved_qty, version) VALUES ",
        );
        sql.push_str(&vec!["(?, ?, ?, ?, ?)"; rows.len()].join(", "));
        // MySQL applies these left to right, each seeing the columns updated before it:
        // `version` must come last.
        sql.push_str(
            " ON DUPLICATE KEY UPDATE \
             available_qty = IF(VALUES(version) > version, VALUES(available_qty), available_qty), \
             reserved_qty = IF(VALUES(version) > version, VALUES(reserved_qty), reserved_qty), \
             version = GREATEST(version, VALUES(version))",
        );
        let mut query = diesel::sql_query(sql).into_boxed::<Mysql>();
        for (key, levels) in rows {
            query = query
                .bind::<BigInt, _>(key.sku_id)
                .bind::<BigInt, _>(key.warehouse_id)
                .bind::<Integer, _>(clamp_i32(levels.available))
                .bind::<Integer, _>(clamp_i32(levels.reserved))
                .bind::<BigInt, _>(levels.seq);
        }
        query.execute(conn).await
    }
}

/// MySQL allows 65,535 placeholders per statement; the widest row here has 11 columns.
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
        let mut sql = String::from(
            "INSERT INTO t_inventory_reservation \
             (order_no, sku_id, warehouse_id, qty, status, expire_at, version, release_reason, trace_id) VALUES ",
        );
        sql.push_str(&vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; rows.len()].join(", "));
        sql.push_str(
            " ON DUPLICATE KEY UPDATE \
             status = IF(VALUES(version) > version, VALUES(status), status), \
             release_reason = IF(VALUES(version) > version, VALUES(release_reason), release_reason), \
             version = GREATEST(version, VALUES(version))",
        );
        let mut query = diesel::sql_query(sql).into_boxed::<Mysql>();
        for row in rows {
            query = query
                .bind::<Varchar, _>(row.order_no.clone())
                .bind::<BigInt, _>(row.key.sku_id)
                .bind::<BigInt, _>(row.key.warehouse_id)
                .bind::<Integer, _>(row.qty)
                .bind::<Varchar, _>(row.status)
                .bind::<Datetime, _>(row.expire_at)
                .bind::<Integer, _>(row.rank)
                .bind::<Nullable<Varchar>, _>(row.release_reason.clone())
                .bind::<Nullable<Varchar>, _>(row.trace_id.clone());
        }
        query.execute(conn).await
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
            "SELECT sku_id, warehouse_id, CAST(SUM(qty) AS SIGNED) AS total \
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
            .map(|t| (SkuKey::new(t.warehouse_id, t.sku_id), t.total))
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
        let mut written = 0;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            written += diesel::insert_or_ignore_into(t_inventory_txn::table)
                .values(chunk)
                .execute(conn)
                .await?;
        }
        Ok(written)
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

pub fn ledger_i32(v: i64) -> i32 {
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

    /// Inserts the row, or updates status, result and cost of an existing one.
    pub async fn record(
        conn: &mut AsyncMysqlConnection,
        row: &NewConsumeLog,
    ) -> QueryResult<usize> {
        use crate::store::schema::t_mq_consume_log::dsl as l;
        diesel::insert_into(l::t_mq_consume_log)
            .values(row)
            .on_conflict(diesel::dsl::DuplicatedKeys)
            .do_update()
            .set((
                l::status.eq(&row.status),
                l::result.eq(&row.result),
                l::cost_ms.eq(row.cost_ms),
            ))
            .execute(conn)
            .await
    }
}
