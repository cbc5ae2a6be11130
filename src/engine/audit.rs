//! Checks the invariants of the design notes for one position, comparing Redis, the DB
//! row, the reservation rows and the ledger. Used by tests, the benchmark harness and
//! reconciliation.

use serde::Serialize;

use crate::domain::{LedgerReason, SkuKey, StockLevels};
use crate::engine::EngineError;
use crate::store::db::{self, DbError, DbPool};
use crate::store::models::{Inventory, LedgerEntry, Reservation};
use crate::store::redis::RedisStore;

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PositionAudit {
    pub sku_id: i64,
    pub warehouse_id: i64,
    pub redis: Option<StockLevels>,
    pub db_available: Option<i64>,
    pub db_reserved: Option<i64>,
    pub db_version: Option<i64>,
    /// Sum of RESERVED / CONFIRMED reservation rows.
    pub lines_reserved: i64,
    pub lines_confirmed: i64,
    /// Initial stock plus every adjustment, from the ledger.
    pub ledger_stock_on_hand: i64,
    /// Units sold according to the ledger (CONFIRM rows).
    pub ledger_confirmed: i64,
    pub ledger_rows: usize,
    /// Every broken invariant, in words with the numbers.
    pub violations: Vec<String>,
}

impl PositionAudit {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Audits one position. Meant for a drained journal: while entries are pending, the DB
/// legitimately trails Redis and the comparison reports that as a difference.
pub async fn audit_position(
    redis: &RedisStore,
    pool: &DbPool,
    key: SkuKey,
) -> Result<PositionAudit, EngineError> {
    let redis_levels = redis.stock(key).await?;
    let mut conn = db::connection(pool).await?;
    let row = Inventory::find(&mut conn, key)
        .await
        .map_err(DbError::from)?;
    let lines = Reservation::for_position(&mut conn, key)
        .await
        .map_err(DbError::from)?;
    let ledger = LedgerEntry::for_position(&mut conn, key)
        .await
        .map_err(DbError::from)?;

    let mut audit = PositionAudit {
        sku_id: key.sku_id,
        warehouse_id: key.warehouse_id,
        redis: redis_levels,
        db_available: row.as_ref().map(|r| r.available_qty.into()),
        db_reserved: row.as_ref().map(|r| r.reserved_qty.into()),
        db_version: row.as_ref().map(|r| r.version),
        ledger_rows: ledger.len(),
        ..PositionAudit::default()
    };
    for line in &lines {
        match line.status.as_str() {
            "RESERVED" => audit.lines_reserved += i64::from(line.qty),
            "CONFIRMED" => audit.lines_confirmed += line.confirmed_qty().unwrap_or(0),
            _ => {}
        }
    }
    for entry in &ledger {
        let reason = LedgerReason::parse(&entry.reason);
        if reason.is_some_and(LedgerReason::changes_stock_on_hand) {
            audit.ledger_stock_on_hand +=
                i64::from(entry.delta_available) + i64::from(entry.delta_reserved);
        }
        if reason == Some(LedgerReason::Confirm) {
            audit.ledger_confirmed -= i64::from(entry.delta_reserved);
        }
        if entry.available_after < 0 || entry.reserved_after < 0 {
            audit.violations.push(format!(
                "ledger row {} has negative values after: available {}, reserved {}",
                entry.txn_id, entry.available_after, entry.reserved_after
            ));
        }
    }
    let v = &mut audit.violations;

    // 1. Never negative.
    if let Some(r) = redis_levels {
        if r.available < 0 || r.reserved < 0 || r.confirmed < 0 {
            v.push(format!("redis has negative stock: {r:?}"));
        }
    }
    if let Some(row) = &row {
        if row.available_qty < 0 || row.reserved_qty < 0 {
            v.push(format!(
                "db has negative stock: available {}, reserved {}",
                row.available_qty, row.reserved_qty
            ));
        }
    }

    // 5. Redis and the DB agree.
    match (redis_levels, &row) {
        (Some(r), Some(row)) => {
            if r.available != i64::from(row.available_qty)
                || r.reserved != i64::from(row.reserved_qty)
                || r.seq != row.version
            {
                v.push(format!(
                    "redis (available {}, reserved {}, seq {}) != db (available {}, reserved {}, version {})",
                    r.available, r.reserved, r.seq, row.available_qty, row.reserved_qty, row.version
                ));
            }
            if r.confirmed != audit.lines_confirmed {
                v.push(format!(
                    "redis confirmed {} != CONFIRMED lines {}",
                    r.confirmed, audit.lines_confirmed
                ));
            }
        }
        (Some(r), None) => v.push(format!("redis has the position ({r:?}), the db does not")),
        (None, Some(_)) => v.push("the db has the position, redis does not".to_string()),
        (None, None) => {}
    }

    if let Some(row) = &row {
        let available = i64::from(row.available_qty);
        let reserved = i64::from(row.reserved_qty);
        // 3/4. Reserved stock is exactly the RESERVED lines.
        if reserved != audit.lines_reserved {
            v.push(format!(
                "db reserved {reserved} != RESERVED lines {}",
                audit.lines_reserved
            ));
        }
        // 2. initial + adjustments = available + reserved + confirmed.
        if audit.ledger_stock_on_hand != available + reserved + audit.lines_confirmed {
            v.push(format!(
                "ledger stock on hand {} != available {available} + reserved {reserved} + confirmed {}",
                audit.ledger_stock_on_hand, audit.lines_confirmed
            ));
        }
        if audit.ledger_confirmed != audit.lines_confirmed {
            v.push(format!(
                "ledger confirmed {} != CONFIRMED lines {}",
                audit.ledger_confirmed, audit.lines_confirmed
            ));
        }
        // The ledger can rebuild the totals: its newest row ends where the row is.
        // Journal order is stream-id order (`<ms>-<seq>-<index>`), whatever order
        // concurrent writers inserted the rows in.
        if let Some(last) = ledger.iter().max_by_key(|e| txn_order(&e.txn_id)) {
            if i64::from(last.available_after) != available
                || i64::from(last.reserved_after) != reserved
            {
                v.push(format!(
                    "newest ledger row {} ends at available {}, reserved {}; db has {available}, {reserved}",
                    last.txn_id, last.available_after, last.reserved_after
                ));
            }
        }
    }
    Ok(audit)
}

/// `g<group>-<ms>-<seq>-<index>` (layouts 2 and 3; a position's rows all come from its group's
/// stream) or `<ms>-<seq>-<index>` (layout 1): ordered by stream id, then index.
fn txn_order(txn_id: &str) -> (u64, u64, u64) {
    let id = match txn_id
        .strip_prefix('g')
        .and_then(|rest| rest.split_once('-'))
    {
        Some((_, id)) => id,
        None => txn_id,
    };
    let mut parts = id.split('-').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}
