//! Plain domain types shared by every layer.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A SKU's id. A newtype so that a warehouse id cannot go where a SKU id goes: positions
/// are made with `SkuKey::new(WarehouseId(w), SkuId(s))`, which says which is which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SkuId(pub i64);

/// A warehouse's id (see [`SkuId`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WarehouseId(pub i64);

impl fmt::Display for SkuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for WarehouseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One stock position: a SKU in a warehouse. The fields stay plain integers (they go to
/// SQL, Redis keys and JSON as such); the constructor and the accessors are typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SkuKey {
    pub warehouse_id: i64,
    pub sku_id: i64,
}

impl SkuKey {
    pub fn new(warehouse: WarehouseId, sku: SkuId) -> Self {
        SkuKey {
            warehouse_id: warehouse.0,
            sku_id: sku.0,
        }
    }

    pub fn sku(&self) -> SkuId {
        SkuId(self.sku_id)
    }

    pub fn warehouse(&self) -> WarehouseId {
        WarehouseId(self.warehouse_id)
    }
}

impl fmt::Display for SkuKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.warehouse_id, self.sku_id)
    }
}

/// State of one reservation line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReservationStatus {
    Reserved,
    Confirmed,
    Released,
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::Reserved => "RESERVED",
            ReservationStatus::Confirmed => "CONFIRMED",
            ReservationStatus::Released => "RELEASED",
        }
    }

    /// The reference's `statusDesc`.
    pub fn description(self) -> &'static str {
        match self {
            ReservationStatus::Reserved => "已预留",
            ReservationStatus::Confirmed => "已确认",
            ReservationStatus::Released => "已释放",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "RESERVED" => Some(ReservationStatus::Reserved),
            "CONFIRMED" => Some(ReservationStatus::Confirmed),
            "RELEASED" => Some(ReservationStatus::Released),
            _ => None,
        }
    }

    /// Position in the one-way life of a line; a DB row only ever moves to a higher rank,
    /// which makes replaying journal entries in any order safe.
    pub fn rank(self) -> i32 {
        match self {
            ReservationStatus::Reserved => 1,
            ReservationStatus::Confirmed | ReservationStatus::Released => 2,
        }
    }
}

/// Why a ledger row was written (`t_inventory_txn.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LedgerReason {
    Reserve,
    Confirm,
    Release,
    Expired,
    Adjust,
    Inbound,
    Outbound,
    RefundRestore,
    Reconcile,
    /// Cluster mode: an order spanning slot groups that was not held everywhere; the lines
    /// held in its first phase go back (docs/redis-layout.md, "Orders across slots").
    Abort,
}

impl LedgerReason {
    pub const ALL: &'static [LedgerReason] = &[
        LedgerReason::Reserve,
        LedgerReason::Confirm,
        LedgerReason::Release,
        LedgerReason::Expired,
        LedgerReason::Adjust,
        LedgerReason::Inbound,
        LedgerReason::Outbound,
        LedgerReason::RefundRestore,
        LedgerReason::Reconcile,
        LedgerReason::Abort,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LedgerReason::Reserve => "RESERVE",
            LedgerReason::Confirm => "CONFIRM",
            LedgerReason::Release => "RELEASE",
            LedgerReason::Expired => "EXPIRED",
            LedgerReason::Adjust => "ADJUST",
            LedgerReason::Inbound => "INBOUND",
            LedgerReason::Outbound => "OUTBOUND",
            LedgerReason::RefundRestore => "REFUND_RESTORE",
            LedgerReason::Reconcile => "RECONCILE",
            LedgerReason::Abort => "ABORT",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        LedgerReason::ALL
            .iter()
            .copied()
            .find(|r| r.as_str().eq_ignore_ascii_case(s))
    }

    /// Reasons that change what the shop owns (as opposed to moving units between
    /// available, reserved and sold). Invariant 2 sums these. RECONCILE rows record
    /// corrections of a store that had drifted from the ledger, not changes of stock.
    pub fn changes_stock_on_hand(self) -> bool {
        matches!(
            self,
            LedgerReason::Adjust
                | LedgerReason::Inbound
                | LedgerReason::Outbound
                | LedgerReason::RefundRestore
        )
    }
}

/// The stock counters of one position as Redis holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StockLevels {
    pub available: i64,
    pub reserved: i64,
    pub confirmed: i64,
    /// Bumped by every change; the DB row's `version` follows it.
    pub seq: i64,
}

/// Times are local date-times without zone, as the reference stores and prints them.
pub fn ms_to_local(ms: i64) -> chrono::NaiveDateTime {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .with_timezone(&chrono::Local)
        .naive_local()
}

/// `t` as `YYYY-MM-DD<sep>HH:MM:SS`, with `.mmm` when `millis`, written digit by digit into
/// `buf`: chrono's strftime parses its format string on every call, which was 5% of a
/// read-heavy service's CPU (20 dates per `POST /inventory/query`) and shows on the
/// persister's rows too. None for years outside 0..=9999 (callers fall back to chrono).
pub fn datetime_digits<'b>(
    t: &chrono::NaiveDateTime,
    buf: &'b mut [u8; 23],
    sep: u8,
    millis: bool,
) -> Option<&'b str> {
    use chrono::{Datelike, Timelike};
    let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
    let fields = [
        (year, 4, b'-'),
        (t.month(), 2, b'-'),
        (t.day(), 2, sep),
        (t.hour(), 2, b':'),
        (t.minute(), 2, b':'),
        // A leap second keeps second 59 with nanoseconds past 10^9; chrono prints it as 60.
        (
            t.second() + t.nanosecond() / 1_000_000_000,
            2,
            if millis { b'.' } else { 0 },
        ),
        (
            (t.nanosecond() % 1_000_000_000) / 1_000_000,
            if millis { 3 } else { 0 },
            0,
        ),
    ];
    let mut at = 0;
    for (value, width, next) in fields {
        for p in (0..width).rev() {
            let digit = (value / 10u32.pow(p)) % 10;
            *buf.get_mut(at)? = b'0' + digit as u8;
            at += 1;
        }
        if next != 0 {
            *buf.get_mut(at)? = next;
            at += 1;
        }
    }
    std::str::from_utf8(buf.get(..at)?).ok()
}

pub fn local_now() -> chrono::NaiveDateTime {
    chrono::Local::now().naive_local()
}

/// For `#[serde(default, deserialize_with = "crate::domain::present")]` on an
/// `Option<Option<T>>`: a field that is there, null (Some(None)) or a value (Some(Some)),
/// told apart from one that is absent (None, from `default`).
pub fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

/// Wall-clock time in ms since the epoch (the store and the engine both stamp with it).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip() {
        for reason in LedgerReason::ALL {
            assert_eq!(LedgerReason::parse(reason.as_str()), Some(*reason));
        }
        assert_eq!(LedgerReason::parse("inbound"), Some(LedgerReason::Inbound));
        assert_eq!(LedgerReason::parse("nope"), None);
    }

    #[test]
    fn statuses_only_move_forward() {
        assert!(ReservationStatus::Reserved.rank() < ReservationStatus::Confirmed.rank());
        assert!(ReservationStatus::Reserved.rank() < ReservationStatus::Released.rank());
        assert_eq!(ReservationStatus::Reserved.description(), "已预留");
    }
}
