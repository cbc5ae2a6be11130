//! The journal: what the Lua scripts append to the Redis stream, and how a batch of
//! entries becomes one DB transaction (ledger rows, reservation rows, one `t_inventory`
//! update per position).

use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use diesel_async::{AsyncConnection, AsyncMysqlConnection};
use serde::{Deserialize, Deserializer};

use crate::domain::{ReservationStatus, SkuKey, StockLevels};
use crate::store::models::{
    ledger_i32, Inventory, LedgerEntry, NewLedgerEntry, Reservation, ReservationUpsert,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum EventKind {
    /// Available stock adjusted (inbound, outbound, adjust, refund, reconcile).
    #[serde(rename = "ADJ")]
    Adjust,
    /// A line was reserved.
    #[serde(rename = "RES")]
    Reserve,
    /// A line was confirmed.
    #[serde(rename = "CNF")]
    Confirm,
    /// A line was released (by request or expiry).
    #[serde(rename = "REL")]
    Release,
}

/// One change as a script recorded it. Short field names keep the stream small.
#[derive(Debug, Clone, Deserialize)]
pub struct JournalEvent {
    pub k: EventKind,
    /// Warehouse and SKU arrive as strings (Lua's cjson would round large numbers).
    #[serde(deserialize_with = "int_or_string")]
    pub w: i64,
    #[serde(deserialize_with = "int_or_string")]
    pub s: i64,
    /// Deltas of available and reserved, and the values after.
    pub da: i64,
    pub dr: i64,
    pub a: i64,
    pub r: i64,
    /// The position's seq after this change.
    pub v: i64,
    /// Ledger reason.
    pub rs: String,
    /// Order number (or adjustment request id).
    #[serde(default)]
    pub o: String,
    #[serde(default)]
    pub tr: String,
    /// When, in ms since the epoch.
    pub ts: i64,
    #[serde(default)]
    pub rm: String,
    /// Line quantity and expiry (ms) for reservation events.
    #[serde(default)]
    pub q: i64,
    #[serde(default)]
    pub x: i64,
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

impl JournalEvent {
    pub fn key(&self) -> SkuKey {
        SkuKey::new(self.w, self.s)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("journal entry {id} cannot be read: {reason}")]
pub struct BadEntry {
    pub id: String,
    pub reason: String,
}

pub fn parse_entry(id: &str, payload: &str) -> Result<Vec<JournalEvent>, BadEntry> {
    // Lua's cjson encodes an empty table as {}.
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
            .map(|line| parse_reserve_line(line, ts).ok_or_else(|| bad(format!("line {line:?}"))))
            .collect();
    }
    serde_json::from_str(payload).map_err(|e| bad(e.to_string()))
}

/// `RES <w> <s> <qty> <available> <reserved> <seq> <expireAt> <orderNo> <traceId>`
fn parse_reserve_line(line: &str, ts: i64) -> Option<JournalEvent> {
    let mut f = line.splitn(10, ' ');
    if f.next()? != "RES" {
        return None;
    }
    let mut num = || f.next()?.parse::<i64>().ok();
    let (w, s, q, a, r, v, x) = (num()?, num()?, num()?, num()?, num()?, num()?, num()?);
    let o = f.next()?.to_string();
    let tr = f.next().unwrap_or("").to_string();
    Some(JournalEvent {
        k: EventKind::Reserve,
        w,
        s,
        da: -q,
        dr: q,
        a,
        r,
        v,
        rs: "RESERVE".to_string(),
        o,
        tr,
        ts,
        rm: String::new(),
        q,
        x,
    })
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

/// Turns entries into rows. `txn_id` is `<entry id>-<index>`, stable across replays.
pub fn plan_batch(entries: &[(String, Vec<JournalEvent>)]) -> BatchWrites {
    let mut writes = BatchWrites::default();
    let mut newest: BTreeMap<SkuKey, StockLevels> = BTreeMap::new();
    for (entry_id, events) in entries {
        for (index, event) in events.iter().enumerate() {
            let key = event.key();
            let non_empty = |s: &str| (!s.is_empty()).then(|| truncate(s, 64));
            writes.ledger.push(NewLedgerEntry {
                txn_id: format!("{entry_id}-{index}"),
                order_no: non_empty(&event.o),
                sku_id: key.sku_id,
                warehouse_id: key.warehouse_id,
                delta_available: ledger_i32(event.da),
                delta_reserved: ledger_i32(event.dr),
                available_after: ledger_i32(event.a),
                reserved_after: ledger_i32(event.r),
                reason: truncate(&event.rs, 50),
                trace_id: non_empty(&event.tr),
                remark: (!event.rm.is_empty()).then(|| truncate(&event.rm, 255)),
            });
            let status = match event.k {
                EventKind::Adjust => None,
                EventKind::Reserve => Some(ReservationStatus::Reserved),
                EventKind::Confirm => Some(ReservationStatus::Confirmed),
                EventKind::Release => Some(ReservationStatus::Released),
            };
            if let Some(status) = status {
                writes.reservations.push(ReservationUpsert {
                    order_no: truncate(&event.o, 64),
                    key,
                    qty: ledger_i32(event.q),
                    status: status.as_str(),
                    rank: status.rank(),
                    expire_at: ms_to_datetime(event.x),
                    release_reason: (status == ReservationStatus::Released)
                        .then(|| truncate(&event.rs, 50)),
                    trace_id: non_empty(&event.tr),
                });
            }
            let levels = StockLevels {
                available: event.a,
                reserved: event.r,
                confirmed: 0,
                seq: event.v,
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
        Reservation::upsert(conn, &writes.reservations).await?;
        Inventory::upsert_levels(conn, &writes.levels).await?;
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> JournalEvent {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn parses_what_the_scripts_write() {
        let events = parse_entry(
            "1-0",
            r#"[{"k":"ADJ","w":"1","s":"1001","da":10,"dr":0,"a":110,"r":0,"v":3,"rs":"INBOUND","o":"","tr":"t","ts":1700000000000,"rm":"x"}]"#,
        )
        .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].key(), SkuKey::new(1, 1001));
        assert_eq!(events[0].k, EventKind::Adjust);
        assert!(parse_entry("1-0", "not json").is_err());
        assert!(parse_entry("1-0", "{}").unwrap().is_empty());
    }

    #[test]
    fn parses_the_reserve_scripts_compact_lines() {
        let events = parse_entry(
            "1700000000123-0",
            "RES 1 1001 2 98 2 7 1700000900000 ORD-1 trace-1\nRES 2 5 1 4 1 3 1700000900000 ORD-2 ",
        )
        .unwrap();
        assert_eq!(events.len(), 2);
        let e = &events[0];
        assert_eq!((e.w, e.s, e.q, e.a, e.r, e.v), (1, 1001, 2, 98, 2, 7));
        assert_eq!((e.da, e.dr, e.ts), (-2, 2, 1_700_000_000_123));
        assert_eq!((e.o.as_str(), e.tr.as_str()), ("ORD-1", "trace-1"));
        assert_eq!(events[1].tr, "");
        assert!(parse_entry("1-0", "RES 1 x").is_err());
    }

    #[test]
    fn plan_keeps_the_newest_levels_and_stable_txn_ids() {
        let a = event(
            r#"{"k":"RES","w":1,"s":7,"da":-2,"dr":2,"a":8,"r":2,"v":5,"rs":"RESERVE","o":"O1","ts":0,"q":2,"x":1000}"#,
        );
        let b = event(
            r#"{"k":"CNF","w":1,"s":7,"da":0,"dr":-2,"a":8,"r":0,"v":6,"rs":"CONFIRM","o":"O1","ts":0,"q":2,"x":1000}"#,
        );
        // Out of order on purpose: the plan must still pick seq 6.
        let plan = plan_batch(&[("2-0".into(), vec![b]), ("1-0".into(), vec![a])]);
        assert_eq!(plan.ledger.len(), 2);
        assert_eq!(plan.ledger[0].txn_id, "2-0-0");
        assert_eq!(plan.levels.len(), 1);
        assert_eq!(plan.levels[0].1.seq, 6);
        assert_eq!(plan.levels[0].1.reserved, 0);
        assert_eq!(plan.reservations.len(), 2);
        assert_eq!(plan.reservations[0].status, "CONFIRMED");
        assert_eq!(plan.reservations[0].rank, 2);
    }
}
