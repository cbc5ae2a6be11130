//! The journal: what the Lua scripts append to the Redis stream, and how a batch of
//! entries becomes one DB transaction (ledger rows, reservation rows, one `t_inventory`
//! update per position).

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDateTime;
use diesel_async::{AsyncConnection, AsyncMysqlConnection};

use crate::domain::{ReservationStatus, SkuKey, StockLevels};
use crate::store::models::{
    ledger_i32, Inventory, LedgerEntry, NewLedgerEntry, Reservation, ReservationUpsert,
};
use crate::store::wire::{JournalKind, JournalLine};

#[derive(Debug, thiserror::Error)]
#[error("journal entry {id} cannot be read: {reason}")]
pub struct BadEntry {
    pub id: String,
    pub reason: String,
}

/// The lines of one entry (see `wire::JournalLine`).
pub fn parse_entry(id: &str, payload: &str) -> Result<Vec<JournalLine>, BadEntry> {
    if payload.is_empty() {
        return Ok(vec![]);
    }
    // A line may inherit its values from the previous line of its position in the entry.
    let mut last: HashMap<SkuKey, (i64, i64, i64)> = HashMap::new();
    payload
        .split('\n')
        .map(|line| {
            let previous = |key: SkuKey| last.get(&key).copied();
            let parsed =
                JournalLine::parse_after(line, previous).ok_or_else(|| format!("line {line:?}"));
            let parsed = parsed.and_then(|l| fits_the_db(&l).map(|()| l));
            if let Ok(l) = &parsed {
                last.insert(l.key, (l.available, l.reserved, l.seq));
            }
            parsed.map_err(|reason| BadEntry {
                id: id.to_string(),
                reason,
            })
        })
        .collect()
}

/// The ledger and line columns are INT: a value beyond them is a bug upstream (config bounds
/// stock far below), named here rather than clamped into a wrong row.
fn fits_the_db(line: &JournalLine) -> Result<(), String> {
    for (name, value) in [
        ("delta available", line.delta_available),
        ("delta reserved", line.delta_reserved),
        ("available", line.available),
        ("reserved", line.reserved),
        ("qty", line.qty),
    ] {
        if i32::try_from(value).is_err() {
            return Err(format!(
                "{name} {value} of {:?} does not fit the DB's INT column",
                line.key
            ));
        }
    }
    Ok(())
}

/// The ledger id prefix of an entry: `g<group>-<entry id>`; a line's txn_id appends its
/// index, so a replayed entry inserts nothing new.
pub fn txn_prefix(group: u32, entry_id: &str) -> String {
    format!("g{group}-{entry_id}")
}

/// Entries of the layout-1 journal (one stream, JSON events and compact `RES` lines): read
/// once, when a deployment is upgraded, to drain what it had not persisted yet.
pub mod legacy {
    use serde::{Deserialize, Deserializer};

    use super::BadEntry;
    use crate::domain::{SkuId, SkuKey, WarehouseId};
    use crate::store::wire::{JournalKind, JournalLine};

    #[derive(Deserialize)]
    struct Event {
        k: String,
        #[serde(deserialize_with = "int_or_string")]
        w: i64,
        #[serde(deserialize_with = "int_or_string")]
        s: i64,
        da: i64,
        dr: i64,
        a: i64,
        r: i64,
        v: i64,
        rs: String,
        #[serde(default)]
        o: String,
        #[serde(default)]
        tr: String,
        ts: i64,
        #[serde(default)]
        rm: String,
        #[serde(default)]
        q: i64,
        #[serde(default)]
        x: i64,
    }

    fn int_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Float(f64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(n),
            Raw::Float(f) if f.fract() == 0.0 => Ok(f as i64),
            Raw::Float(f) => Err(serde::de::Error::custom(format!("not an integer: {f}"))),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }

    pub fn parse_entry(id: &str, payload: &str) -> Result<Vec<JournalLine>, BadEntry> {
        if payload.is_empty() || payload == "{}" {
            return Ok(vec![]);
        }
        let bad = |reason: String| BadEntry {
            id: id.to_string(),
            reason,
        };
        if payload.starts_with("RES ") {
            // The reserve script's compact lines; the entry id's milliseconds are its time.
            let ts = id
                .split('-')
                .next()
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(0);
            return payload
                .lines()
                .map(|line| reserve_line(line, ts).ok_or_else(|| bad(format!("line {line:?}"))))
                .collect();
        }
        let events: Vec<Event> = serde_json::from_str(payload).map_err(|e| bad(e.to_string()))?;
        events
            .into_iter()
            .map(|e| {
                Ok(JournalLine {
                    kind: JournalKind::parse(&e.k).ok_or_else(|| bad(format!("kind {}", e.k)))?,
                    key: SkuKey::new(WarehouseId(e.w), SkuId(e.s)),
                    delta_available: e.da,
                    delta_reserved: e.dr,
                    available: e.a,
                    reserved: e.r,
                    seq: e.v,
                    qty: e.q,
                    expire_at_ms: e.x,
                    ts_ms: e.ts,
                    reason: e.rs,
                    order_no: e.o,
                    trace_id: e.tr,
                    remark: e.rm,
                })
            })
            .collect()
    }

    /// `RES <w> <s> <qty> <available> <reserved> <seq> <expireAt> <orderNo> <traceId>`
    fn reserve_line(line: &str, ts: i64) -> Option<JournalLine> {
        let mut f = line.splitn(10, ' ');
        if f.next()? != "RES" {
            return None;
        }
        let mut num = || f.next()?.parse::<i64>().ok();
        let (w, s, q, a, r, v, x) = (num()?, num()?, num()?, num()?, num()?, num()?, num()?);
        let order_no = f.next()?.to_string();
        let trace_id = f.next().unwrap_or("").to_string();
        Some(JournalLine {
            kind: JournalKind::Reserve,
            key: SkuKey::new(WarehouseId(w), SkuId(s)),
            delta_available: -q,
            delta_reserved: q,
            available: a,
            reserved: r,
            seq: v,
            qty: q,
            expire_at_ms: x,
            ts_ms: ts,
            reason: "RESERVE".to_string(),
            order_no,
            trace_id,
            remark: String::new(),
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn reads_both_layout_1_formats() {
            let events = parse_entry(
                "1-0",
                r#"[{"k":"ADJ","w":"1","s":"1001","da":10,"dr":0,"a":110,"r":0,"v":3,"rs":"INBOUND","o":"","tr":"t","ts":1700000000000,"rm":"x"}]"#,
            )
            .unwrap();
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].key, SkuKey::new(WarehouseId(1), SkuId(1001)));
            assert_eq!(events[0].kind, JournalKind::Adjust);
            assert!(parse_entry("1-0", "not json").is_err());
            assert!(parse_entry("1-0", "{}").unwrap().is_empty());
            let lines = parse_entry(
                "1700000000123-0",
                "RES 1 1001 2 98 2 7 1700000900000 ORD-1 trace-1\nRES 2 5 1 4 1 3 1700000900000 ORD-2 ",
            )
            .unwrap();
            assert_eq!(lines.len(), 2);
            let e = &lines[0];
            assert_eq!((e.qty, e.available, e.reserved, e.seq), (2, 98, 2, 7));
            assert_eq!((e.delta_available, e.ts_ms), (-2, 1_700_000_000_123));
            assert_eq!(lines[1].trace_id, "");
        }
    }
}

fn ms_to_datetime(ms: i64) -> NaiveDateTime {
    crate::domain::ms_to_local(ms)
}

/// Everything one batch writes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchWrites {
    pub ledger: Vec<NewLedgerEntry>,
    pub reservations: Vec<ReservationUpsert>,
    /// The newest levels per position (the highest seq in the batch).
    pub levels: Vec<(SkuKey, StockLevels)>,
}

/// Turns entries into rows. `txn_id` is `<txn prefix>-<index>`, stable across replays.
pub fn plan_batch(entries: &[(String, Vec<JournalLine>)]) -> BatchWrites {
    let mut writes = BatchWrites::default();
    let mut newest: BTreeMap<SkuKey, StockLevels> = BTreeMap::new();
    for (entry_id, events) in entries {
        for (index, event) in events.iter().enumerate() {
            let key = event.key;
            let non_empty = |s: &str| (!s.is_empty()).then(|| truncate(s, 64));
            writes.ledger.push(NewLedgerEntry {
                txn_id: format!("{entry_id}-{index}"),
                order_no: non_empty(&event.order_no),
                sku_id: key.sku_id,
                warehouse_id: key.warehouse_id,
                delta_available: ledger_i32(event.delta_available),
                delta_reserved: ledger_i32(event.delta_reserved),
                available_after: ledger_i32(event.available),
                reserved_after: ledger_i32(event.reserved),
                reason: truncate(&event.reason, 50),
                trace_id: non_empty(&event.trace_id),
                remark: (!event.remark.is_empty()).then(|| truncate(&event.remark, 255)),
            });
            let status = match event.kind {
                JournalKind::Adjust | JournalKind::PartialRelease => None,
                JournalKind::Reserve => Some(ReservationStatus::Reserved),
                JournalKind::Confirm => Some(ReservationStatus::Confirmed),
                JournalKind::Release => Some(ReservationStatus::Released),
            };
            if let Some(status) = status {
                writes.reservations.push(ReservationUpsert {
                    order_no: truncate(&event.order_no, 64),
                    key,
                    qty: ledger_i32(event.qty),
                    status: status.as_str(),
                    rank: status.rank(),
                    expire_at: ms_to_datetime(event.expire_at_ms),
                    release_reason: (status == ReservationStatus::Released)
                        .then(|| truncate(&event.reason, 50)),
                    // A CNF line's reserved delta is the units sold (a partial confirm
                    // sells fewer than the line holds).
                    confirmed_qty: (status == ReservationStatus::Confirmed)
                        .then(|| ledger_i32(-event.delta_reserved)),
                    trace_id: non_empty(&event.trace_id),
                });
            }
            let levels = StockLevels {
                available: event.available,
                reserved: event.reserved,
                confirmed: 0,
                seq: event.seq,
            };
            newest
                .entry(key)
                .and_modify(|current| {
                    if levels.seq > current.seq {
                        *current = levels;
                    }
                })
                .or_insert(levels);
        }
    }
    // Sorted by position, so concurrent writers lock rows in one order (no deadlocks).
    writes.levels = newest.into_iter().collect();
    writes
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

/// Writes one batch in one transaction.
pub async fn persist_batch(
    conn: &mut AsyncMysqlConnection,
    writes: &BatchWrites,
) -> diesel::QueryResult<()> {
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        LedgerEntry::insert_new(conn, &writes.ledger).await?;
        // Half a batch written: the transaction must leave none of it.
        crate::fault::point("persist.mid_batch")
            .await
            .map_err(|e| diesel::result::Error::QueryBuilderError(Box::new(e)))?;
        Reservation::upsert(conn, &writes.reservations).await?;
        Inventory::upsert_levels(conn, &writes.levels).await?;
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{SkuId, WarehouseId};

    fn line(raw: &str) -> JournalLine {
        JournalLine::parse(raw).unwrap()
    }

    #[test]
    fn parses_what_the_scripts_write() {
        let lines = parse_entry(
            "1-0",
            "ADJ 1 1001 10 0 110 0 3 0 0 1700000000000 INBOUND  t a remark\nRES 1 1001 -2 2 108 2 4 2 1700000900000 1700000000000 RESERVE ORD-1  ",
        )
        .unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].key, SkuKey::new(WarehouseId(1), SkuId(1001)));
        assert_eq!(lines[0].kind, JournalKind::Adjust);
        assert_eq!(lines[0].remark, "a remark");
        assert_eq!(lines[1].order_no, "ORD-1");
        assert!(parse_entry("1-0", "not a line").is_err());
        assert!(parse_entry("1-0", "").unwrap().is_empty());
        assert_eq!(txn_prefix(3, "1-0"), "g3-1-0");
    }

    #[test]
    fn a_line_may_inherit_the_values_of_its_positions_previous_line() {
        let lines = parse_entry(
            "1-0",
            "RES 1 1001 -2 2 108 2 4 2 9 1 RESERVE ORD-1 t \n\
             RES 1 2002 -1 1 50 1 7 1 9 1 RESERVE ORD-2 t \n\
             RES 1 1001 -3 3 . . . 3 9 1 RESERVE ORD-3 t \n\
             RES 1 1001 -1 1 . . . 1 9 1 RESERVE ORD-4 t ",
        )
        .unwrap();
        let values: Vec<(i64, i64, i64)> = lines
            .iter()
            .map(|l| (l.available, l.reserved, l.seq))
            .collect();
        assert_eq!(values, [(108, 2, 4), (50, 1, 7), (105, 5, 5), (104, 6, 6)]);
        assert_eq!(lines[3].order_no, "ORD-4");
        // Nothing to inherit from: the first line of a position, or another entry's.
        assert!(parse_entry("1-0", "RES 1 1001 -1 1 . . . 1 9 1 RESERVE ORD-4 t ").is_err());
        assert!(parse_entry(
            "1-0",
            "RES 1 2002 -1 1 50 1 7 1 9 1 RESERVE ORD-2 t \nRES 1 1001 -1 1 . . . 1 9 1 RESERVE O t "
        )
        .is_err());
        // All three inherited or none.
        assert!(parse_entry(
            "1-0",
            "RES 1 1001 -2 2 108 2 4 2 9 1 RESERVE ORD-1 t \nRES 1 1001 -1 1 107 . . 1 9 1 RESERVE O t "
        )
        .is_err());
    }

    #[test]
    fn a_value_beyond_the_db_columns_is_named_not_clamped() {
        let err = parse_entry(
            "1-0",
            "RES 1 7 -3000000000 3000000000 8 2 5 2 1000 0 RESERVE O1  ",
        )
        .unwrap_err();
        assert!(err.reason.contains("does not fit"), "{}", err.reason);
    }

    #[test]
    fn plan_keeps_the_newest_levels_and_stable_txn_ids() {
        let a = line("RES 1 7 -2 2 8 2 5 2 1000 0 RESERVE O1  ");
        let b = line("CNF 1 7 0 -2 8 0 6 2 1000 0 CONFIRM O1  ");
        // Out of order on purpose: the plan must still pick seq 6.
        let plan = plan_batch(&[("g0-2-0".into(), vec![b]), ("g0-1-0".into(), vec![a])]);
        assert_eq!(plan.ledger.len(), 2);
        assert_eq!(plan.ledger[0].txn_id, "g0-2-0-0");
        assert_eq!(plan.levels.len(), 1);
        assert_eq!(plan.levels[0].1.seq, 6);
        assert_eq!(plan.levels[0].1.reserved, 0);
        assert_eq!(plan.reservations.len(), 2);
        assert_eq!(plan.reservations[0].status, "CONFIRMED");
        assert_eq!(plan.reservations[0].rank, 2);
    }
}
