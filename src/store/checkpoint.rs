//! Reconciliation checkpoints: what the ledger and the lines said per position up to a
//! watermark (migration `reconcile_checkpoint`), so that a run reads only the rows written
//! or changed after it.
//!
//! - The ledger is append-only: a position's stock on hand is its checkpoint's `on_hand`
//!   plus its stock-changing rows with a higher id.
//! - A line moves at most once (RESERVED -> CONFIRMED or RELEASED), its `qty` (the units
//!   held) never changes (a partial confirm sets `confirmed_qty`, the units sold, in the
//!   same move), and MariaDB stamps
//!   `updated_at` only when a value changes. So the state a line had at time T is known
//!   from the row now: none if `created_at > T`, its status if `updated_at <= T`, else
//!   RESERVED. The checkpoint holds those states at `lines_until`; a run reads the lines
//!   with `updated_at > lines_until` and replaces their old contribution with the current.
//! - Both watermarks trail the DB's clock by a margin longer than any transaction, so each
//!   row they cover had committed when it was folded. A row that commits later than that
//!   (a transaction held open by a paused process) makes the checkpoint wrong for its
//!   position; reconciliation finds that as a difference, checks the position against its
//!   whole history and rewrites its checkpoint (`recompute_position`).

use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Datetime, Integer, Text};
use diesel_async::{AsyncConnection, AsyncMysqlConnection, RunQueryDsl, SimpleAsyncConnection};

use crate::domain::{LedgerReason, SkuId, SkuKey, WarehouseId};
use crate::store::sql_text::{push_datetime, push_int};

/// How far the checkpoints reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    /// Ledger rows with an id up to this are in the checkpoints.
    pub ledger_id: i64,
    /// Lines are in the checkpoints in the state they had at this time (DB clock).
    pub lines_until: NaiveDateTime,
}

impl Watermark {
    /// No checkpoint: a run against it reads every row (a full check).
    pub fn zero() -> Self {
        Watermark {
            ledger_id: 0,
            lines_until: NaiveDateTime::default(),
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Watermark::zero()
    }
}

/// What the ledger and the lines say about one position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PositionTotals {
    /// Units the shop owns: the sum of the stock-changing ledger rows.
    pub on_hand: i64,
    /// Units held by RESERVED lines.
    pub reserved: i64,
    /// Units sold: CONFIRMED lines.
    pub confirmed: i64,
}

/// A line written or changed after the lines watermark.
#[derive(Debug, Clone, QueryableByName)]
pub struct ChangedLine {
    #[diesel(sql_type = Text)]
    pub order_no: String,
    #[diesel(sql_type = BigInt)]
    pub sku_id: i64,
    #[diesel(sql_type = BigInt)]
    pub warehouse_id: i64,
    #[diesel(sql_type = Integer)]
    pub qty: i32,
    #[diesel(sql_type = Text)]
    pub status: String,
    #[diesel(sql_type = Datetime)]
    pub expire_at: NaiveDateTime,
    #[diesel(sql_type = Datetime)]
    pub created_at: NaiveDateTime,
    #[diesel(sql_type = Datetime)]
    pub updated_at: NaiveDateTime,
    #[diesel(sql_type = diesel::sql_types::Nullable<Integer>)]
    pub confirmed_qty: Option<i32>,
}

impl ChangedLine {
    pub fn key(&self) -> SkuKey {
        SkuKey::new(WarehouseId(self.warehouse_id), SkuId(self.sku_id))
    }
}

/// What a position holds now: its checkpoint, its ledger rows after the watermark
/// (`ledger_after`, their stock-changing sum) and its lines changed after it.
pub fn current_totals(
    checkpoint: PositionTotals,
    ledger_after: i64,
    changed: &[&ChangedLine],
    lines_until: NaiveDateTime,
) -> PositionTotals {
    let mut totals = checkpoint;
    totals.on_hand += ledger_after;
    for line in changed {
        let qty = i64::from(line.qty);
        // Out: the state the checkpoint counted (RESERVED if the line existed then; a
        // changed line cannot have been in a final state).
        if line.created_at <= lines_until {
            totals.reserved -= qty;
        }
        // In: the state now.
        match line.status.as_str() {
            "RESERVED" => totals.reserved += qty,
            "CONFIRMED" => totals.confirmed += line.confirmed_qty.map_or(qty, i64::from),
            _ => {}
        }
    }
    totals
}

fn stock_changing_reasons() -> String {
    LedgerReason::ALL
        .iter()
        .filter(|r| r.changes_stock_on_hand())
        .map(|r| format!("'{}'", r.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn push_keys(sql: &mut String, keys: &[SkuKey]) {
    sql.push_str("(sku_id, warehouse_id) IN (");
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        push_int(sql, key.sku_id);
        sql.push_str(", ");
        push_int(sql, key.warehouse_id);
        sql.push(')');
    }
    sql.push(')');
}

#[derive(QueryableByName)]
struct WatermarkRow {
    #[diesel(sql_type = BigInt)]
    ledger_id: i64,
    #[diesel(sql_type = Datetime)]
    lines_until: NaiveDateTime,
    #[diesel(sql_type = Datetime)]
    target: NaiveDateTime,
}

#[derive(QueryableByName)]
struct MaxId {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
struct PositionSum {
    #[diesel(sql_type = BigInt)]
    sku_id: i64,
    #[diesel(sql_type = BigInt)]
    warehouse_id: i64,
    #[diesel(sql_type = BigInt)]
    total: i64,
}

#[derive(QueryableByName)]
struct LineDeltas {
    #[diesel(sql_type = BigInt)]
    sku_id: i64,
    #[diesel(sql_type = BigInt)]
    warehouse_id: i64,
    #[diesel(sql_type = BigInt)]
    reserved: i64,
    #[diesel(sql_type = BigInt)]
    confirmed: i64,
}

#[derive(QueryableByName)]
struct CheckpointRow {
    #[diesel(sql_type = BigInt)]
    sku_id: i64,
    #[diesel(sql_type = BigInt)]
    warehouse_id: i64,
    #[diesel(sql_type = BigInt)]
    on_hand: i64,
    #[diesel(sql_type = BigInt)]
    reserved_qty: i64,
    #[diesel(sql_type = BigInt)]
    confirmed_qty: i64,
}

/// What one fold did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoldReport {
    /// The watermark after the fold.
    pub watermark: Watermark,
    /// Checkpoint rows written.
    pub positions: usize,
    /// False when the watermark was already within the margin of the clock.
    pub folded: bool,
}

pub async fn load_watermark(conn: &mut AsyncMysqlConnection) -> QueryResult<Watermark> {
    let row: Option<WatermarkRow> = diesel::sql_query(
        "SELECT ledger_id, lines_until, lines_until AS target FROM t_reconcile_watermark WHERE id = 1",
    )
    .get_result(conn)
    .await
    .optional()?;
    Ok(row.map_or(Watermark::zero(), |r| Watermark {
        ledger_id: r.ledger_id,
        lines_until: r.lines_until,
    }))
}

/// The checkpoints of these positions (absent: zero).
pub async fn checkpoints(
    conn: &mut AsyncMysqlConnection,
    keys: &[SkuKey],
) -> QueryResult<HashMap<SkuKey, PositionTotals>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let mut sql = String::from(
        "SELECT sku_id, warehouse_id, on_hand, reserved_qty, confirmed_qty \
         FROM t_reconcile_checkpoint WHERE ",
    );
    push_keys(&mut sql, keys);
    let rows: Vec<CheckpointRow> = diesel::sql_query(sql).load(conn).await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                SkuKey::new(WarehouseId(r.warehouse_id), SkuId(r.sku_id)),
                PositionTotals {
                    on_hand: r.on_hand,
                    reserved: r.reserved_qty,
                    confirmed: r.confirmed_qty,
                },
            )
        })
        .collect())
}

/// The stock-changing ledger sum of each position after `after_id`.
pub async fn ledger_after(
    conn: &mut AsyncMysqlConnection,
    keys: &[SkuKey],
    after_id: i64,
) -> QueryResult<HashMap<SkuKey, i64>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let mut sql = String::from(
        "SELECT sku_id, warehouse_id, CAST(SUM(delta_available + delta_reserved) AS SIGNED) AS total \
         FROM t_inventory_txn WHERE id > ",
    );
    push_int(&mut sql, after_id);
    sql.push_str(" AND reason IN (");
    sql.push_str(&stock_changing_reasons());
    sql.push_str(") AND ");
    push_keys(&mut sql, keys);
    sql.push_str(" GROUP BY sku_id, warehouse_id");
    let rows: Vec<PositionSum> = diesel::sql_query(sql).load(conn).await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                SkuKey::new(WarehouseId(r.warehouse_id), SkuId(r.sku_id)),
                r.total,
            )
        })
        .collect())
}

/// The lines of these positions written or changed after `since`.
pub async fn lines_changed_after(
    conn: &mut AsyncMysqlConnection,
    keys: &[SkuKey],
    since: NaiveDateTime,
) -> QueryResult<Vec<ChangedLine>> {
    if keys.is_empty() {
        return Ok(vec![]);
    }
    let mut sql = String::from(
        "SELECT order_no, sku_id, warehouse_id, qty, status, expire_at, created_at, updated_at, confirmed_qty \
         FROM t_inventory_reservation WHERE updated_at > ",
    );
    push_datetime(&mut sql, &since);
    sql.push_str(" AND ");
    push_keys(&mut sql, keys);
    sql.push_str(" ORDER BY id");
    diesel::sql_query(sql).load(conn).await
}

/// The lines of these positions whose hold ends after `expiring_after`: those whose Redis
/// markers should still exist (bounded by the marker lifetime, not by history).
pub async fn live_lines(
    conn: &mut AsyncMysqlConnection,
    keys: &[SkuKey],
    expiring_after: NaiveDateTime,
) -> QueryResult<Vec<ChangedLine>> {
    if keys.is_empty() {
        return Ok(vec![]);
    }
    let mut sql = String::from(
        "SELECT order_no, sku_id, warehouse_id, qty, status, expire_at, created_at, updated_at, confirmed_qty \
         FROM t_inventory_reservation WHERE expire_at > ",
    );
    push_datetime(&mut sql, &expiring_after);
    sql.push_str(" AND ");
    push_keys(&mut sql, keys);
    sql.push_str(" ORDER BY id");
    diesel::sql_query(sql).load(conn).await
}

/// Moves the watermark to `margin_ms` before the DB's clock and adds what the rows in
/// between say to the checkpoints, in one transaction. Concurrent folds serialise on the
/// watermark row.
pub async fn fold(conn: &mut AsyncMysqlConnection, margin_ms: u64) -> QueryResult<FoldReport> {
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        conn.batch_execute("INSERT IGNORE INTO t_reconcile_watermark (id) VALUES (1)")
            .await?;
        let row: WatermarkRow = diesel::sql_query(
            "SELECT ledger_id, lines_until, NOW(3) - INTERVAL ? MICROSECOND AS target \
             FROM t_reconcile_watermark WHERE id = 1 FOR UPDATE",
        )
        .bind::<BigInt, _>(i64::try_from(margin_ms.saturating_mul(1000)).unwrap_or(i64::MAX))
        .get_result(conn)
        .await?;
        let old = Watermark {
            ledger_id: row.ledger_id,
            lines_until: row.lines_until,
        };
        if row.target <= old.lines_until {
            return Ok(FoldReport {
                watermark: old,
                positions: 0,
                folded: false,
            });
        }
        let new_lines_until = row.target;
        // Ids are handed out in time order, so every row below the last one stamped
        // before the target began before it, and has committed.
        let last: MaxId = diesel::sql_query(
            "SELECT COALESCE(MAX(id), ?) AS id FROM t_inventory_txn WHERE id > ? AND created_at <= ?",
        )
        .bind::<BigInt, _>(old.ledger_id)
        .bind::<BigInt, _>(old.ledger_id)
        .bind::<Datetime, _>(new_lines_until)
        .get_result(conn)
        .await?;
        let new = Watermark {
            ledger_id: last.id,
            lines_until: new_lines_until,
        };

        let mut deltas: HashMap<SkuKey, PositionTotals> = HashMap::new();
        let ledger: Vec<PositionSum> = diesel::sql_query(format!(
            "SELECT sku_id, warehouse_id, CAST(SUM(delta_available + delta_reserved) AS SIGNED) AS total \
             FROM t_inventory_txn WHERE id > ? AND id <= ? AND reason IN ({}) \
             GROUP BY sku_id, warehouse_id",
            stock_changing_reasons()
        ))
        .bind::<BigInt, _>(old.ledger_id)
        .bind::<BigInt, _>(new.ledger_id)
        .load(conn)
        .await?;
        for r in ledger {
            deltas
                .entry(SkuKey::new(WarehouseId(r.warehouse_id), SkuId(r.sku_id)))
                .or_default()
                .on_hand += r.total;
        }
        // current_totals' rule, in SQL: the state at the new watermark minus the state at
        // the old one, for every line changed after the old one.
        let lines: Vec<LineDeltas> = diesel::sql_query(
            "SELECT sku_id, warehouse_id, \
               CAST(SUM(CASE WHEN created_at <= ? AND (updated_at > ? OR status = 'RESERVED') THEN qty ELSE 0 END) \
                  - SUM(CASE WHEN created_at <= ? THEN qty ELSE 0 END) AS SIGNED) AS reserved, \
               CAST(SUM(CASE WHEN created_at <= ? AND updated_at <= ? AND status = 'CONFIRMED' THEN COALESCE(confirmed_qty, qty) ELSE 0 END) AS SIGNED) AS confirmed \
             FROM t_inventory_reservation WHERE updated_at > ? GROUP BY sku_id, warehouse_id",
        )
        .bind::<Datetime, _>(new.lines_until)
        .bind::<Datetime, _>(new.lines_until)
        .bind::<Datetime, _>(old.lines_until)
        .bind::<Datetime, _>(new.lines_until)
        .bind::<Datetime, _>(new.lines_until)
        .bind::<Datetime, _>(old.lines_until)
        .load(conn)
        .await?;
        for r in lines {
            let totals = deltas
                .entry(SkuKey::new(WarehouseId(r.warehouse_id), SkuId(r.sku_id)))
                .or_default();
            totals.reserved += r.reserved;
            totals.confirmed += r.confirmed;
        }
        deltas.retain(|_, d| *d != PositionTotals::default());
        let changed: Vec<(SkuKey, PositionTotals)> = deltas.into_iter().collect();
        for chunk in changed.chunks(1000) {
            add_to_checkpoints(conn, chunk).await?;
        }
        diesel::sql_query(
            "UPDATE t_reconcile_watermark SET ledger_id = ?, lines_until = ?, folded_at = NOW(3) WHERE id = 1",
        )
        .bind::<BigInt, _>(new.ledger_id)
        .bind::<Datetime, _>(new.lines_until)
        .execute(conn)
        .await?;
        Ok(FoldReport {
            watermark: new,
            positions: changed.len(),
            folded: true,
        })
    })
    .await
}

async fn add_to_checkpoints(
    conn: &mut AsyncMysqlConnection,
    rows: &[(SkuKey, PositionTotals)],
) -> QueryResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut sql = String::from(
        "INSERT INTO t_reconcile_checkpoint (sku_id, warehouse_id, on_hand, reserved_qty, confirmed_qty) VALUES ",
    );
    for (i, (key, d)) in rows.iter().enumerate() {
        sql.push_str(if i == 0 { "(" } else { ", (" });
        for (j, n) in [
            key.sku_id,
            key.warehouse_id,
            d.on_hand,
            d.reserved,
            d.confirmed,
        ]
        .into_iter()
        .enumerate()
        {
            if j > 0 {
                sql.push_str(", ");
            }
            push_int(&mut sql, n);
        }
        sql.push(')');
    }
    sql.push_str(
        " ON DUPLICATE KEY UPDATE on_hand = on_hand + VALUES(on_hand), \
         reserved_qty = reserved_qty + VALUES(reserved_qty), \
         confirmed_qty = confirmed_qty + VALUES(confirmed_qty)",
    );
    conn.batch_execute(&sql).await
}

/// Rewrites one position's checkpoint from its whole history, as of `watermark`, under the
/// watermark's lock (so a fold cannot move it in between).
pub async fn recompute_position(
    conn: &mut AsyncMysqlConnection,
    key: SkuKey,
) -> QueryResult<PositionTotals> {
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        let row: Option<WatermarkRow> = diesel::sql_query(
            "SELECT ledger_id, lines_until, lines_until AS target FROM t_reconcile_watermark WHERE id = 1 FOR UPDATE",
        )
        .get_result(conn)
        .await
        .optional()?;
        let Some(row) = row else {
            return Ok(PositionTotals::default());
        };
        let ledger: Vec<PositionSum> = diesel::sql_query(format!(
            "SELECT sku_id, warehouse_id, CAST(SUM(delta_available + delta_reserved) AS SIGNED) AS total \
             FROM t_inventory_txn WHERE sku_id = ? AND warehouse_id = ? AND id <= ? AND reason IN ({}) \
             GROUP BY sku_id, warehouse_id",
            stock_changing_reasons()
        ))
        .bind::<BigInt, _>(key.sku_id)
        .bind::<BigInt, _>(key.warehouse_id)
        .bind::<BigInt, _>(row.ledger_id)
        .load(conn)
        .await?;
        let lines: Vec<LineDeltas> = diesel::sql_query(
            "SELECT sku_id, warehouse_id, \
               CAST(SUM(CASE WHEN updated_at > ? OR status = 'RESERVED' THEN qty ELSE 0 END) AS SIGNED) AS reserved, \
               CAST(SUM(CASE WHEN updated_at <= ? AND status = 'CONFIRMED' THEN COALESCE(confirmed_qty, qty) ELSE 0 END) AS SIGNED) AS confirmed \
             FROM t_inventory_reservation WHERE sku_id = ? AND warehouse_id = ? AND created_at <= ? \
             GROUP BY sku_id, warehouse_id",
        )
        .bind::<Datetime, _>(row.lines_until)
        .bind::<Datetime, _>(row.lines_until)
        .bind::<BigInt, _>(key.sku_id)
        .bind::<BigInt, _>(key.warehouse_id)
        .bind::<Datetime, _>(row.lines_until)
        .load(conn)
        .await?;
        let totals = PositionTotals {
            on_hand: ledger.iter().map(|r| r.total).sum(),
            reserved: lines.iter().map(|r| r.reserved).sum(),
            confirmed: lines.iter().map(|r| r.confirmed).sum(),
        };
        let mut sql = String::from(
            "INSERT INTO t_reconcile_checkpoint (sku_id, warehouse_id, on_hand, reserved_qty, confirmed_qty) VALUES (",
        );
        for (j, n) in [
            key.sku_id,
            key.warehouse_id,
            totals.on_hand,
            totals.reserved,
            totals.confirmed,
        ]
        .into_iter()
        .enumerate()
        {
            if j > 0 {
                sql.push_str(", ");
            }
            push_int(&mut sql, n);
        }
        sql.push_str(
            ") ON DUPLICATE KEY UPDATE on_hand = VALUES(on_hand), \
             reserved_qty = VALUES(reserved_qty), confirmed_qty = VALUES(confirmed_qty)",
        );
        conn.batch_execute(&sql).await?;
        Ok(totals)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn at(ms: i64) -> NaiveDateTime {
        DateTime::from_timestamp_millis(ms).map_or_else(NaiveDateTime::default, |d| d.naive_utc())
    }

    fn line(qty: i32, status: &str, created: i64, updated: i64) -> ChangedLine {
        ChangedLine {
            order_no: "O".into(),
            sku_id: 1,
            warehouse_id: 1,
            qty,
            status: status.into(),
            expire_at: at(0),
            created_at: at(created),
            updated_at: at(updated),
            confirmed_qty: None,
        }
    }

    #[test]
    fn a_changed_line_leaves_the_state_the_checkpoint_counted() {
        // Checkpoint at t=100: on hand 10, one line of 3 RESERVED (created at 50).
        let checkpoint = PositionTotals {
            on_hand: 10,
            reserved: 3,
            confirmed: 0,
        };
        let confirmed_later = line(3, "CONFIRMED", 50, 150);
        let new_hold = line(2, "RESERVED", 120, 120);
        let new_and_released = line(4, "RELEASED", 130, 140);
        let now = current_totals(
            checkpoint,
            5,
            &[&confirmed_later, &new_hold, &new_and_released],
            at(100),
        );
        assert_eq!(
            now,
            PositionTotals {
                on_hand: 15,
                reserved: 2,
                confirmed: 3
            }
        );
    }

    #[test]
    fn against_the_zero_watermark_every_line_counts_as_it_is() {
        let lines = [
            line(3, "CONFIRMED", 50, 150),
            line(2, "RESERVED", 120, 120),
            line(4, "RELEASED", 130, 140),
        ];
        let refs: Vec<&ChangedLine> = lines.iter().collect();
        let now = current_totals(
            PositionTotals::default(),
            9,
            &refs,
            Watermark::zero().lines_until,
        );
        assert_eq!(
            now,
            PositionTotals {
                on_hand: 9,
                reserved: 2,
                confirmed: 3
            }
        );
    }
}
