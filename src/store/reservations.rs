//! The Redis side of reservations: the batched reserve, confirm and release scripts, the
//! order directory and order records (see store::wire and docs/redis-layout.md).

use crate::domain::{SkuId, WarehouseId};
use std::collections::HashMap;

use crate::domain::{LedgerReason, ReservationStatus, SkuKey};
use crate::store::redis::{RedisResult, RedisStore, RedisStoreError};
use crate::store::wire::{self, DirectoryEntry, LevelsAfter, OrderRecord, ReplyItem};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderLine {
    pub key: SkuKey,
    pub qty: i64,
}

/// One order to reserve. Its lines name distinct positions (duplicates summed first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveOrder {
    pub order_no: String,
    pub trace_id: String,
    pub lines: Vec<OrderLine>,
}

#[derive(Debug, Clone, Copy)]
pub struct ReserveParams {
    pub now_ms: i64,
    pub hold_ms: i64,
    pub max_journal_entries: u64,
}

impl ReserveParams {
    /// The head of a reserving script's arguments (`wire::CallLayout::push_reserve_head`).
    pub fn head(&self) -> [i64; 3] {
        [
            self.now_ms,
            self.hold_ms,
            i64::try_from(self.max_journal_entries).unwrap_or(i64::MAX),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveReply {
    Reserved {
        expire_at_ms: i64,
    },
    /// The same order (same lines, same quantities) was reserved before; its lines now.
    Exists {
        lines: Vec<(ReservationStatus, i64)>,
    },
    /// Line `line` (0-based) is short.
    Insufficient {
        line: usize,
        available: i64,
    },
    NotFound {
        line: usize,
    },
    /// The same order with other content; `line` is the differing line, if one.
    Conflict {
        line: Option<usize>,
    },
    Cancelled,
    JournalFull,
    /// Cluster mode: another request is reserving the same orderNo right now.
    InProgress,
    /// Cluster mode: this orderNo was refused after a partial hold and aborted (final).
    Aborted,
}

/// What a transition does to an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionOp {
    /// RESERVED -> CONFIRMED; `even_if_expired` when the order service says it was paid.
    Confirm { even_if_expired: bool },
    /// RESERVED -> RELEASED; `only_if_expired` for the expiry scan.
    Release {
        reason: LedgerReason,
        remark: String,
        only_if_expired: bool,
        /// The supervisor lease's fencing token of a leader-only release (expiry); 0: none.
        fence: i64,
    },
}

impl TransitionOp {
    pub fn is_confirm(&self) -> bool {
        matches!(self, TransitionOp::Confirm { .. })
    }
}

/// One order to confirm or release, with the positions its directory entry lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionOrder {
    pub order_no: String,
    pub trace_id: String,
    pub positions: Vec<SkuKey>,
    pub op: TransitionOp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionReply {
    /// The transition happened now.
    Done,
    /// It had happened before (repeat).
    Exists,
    /// Redis has no record of the order.
    NotFound,
    /// The order is known, but Redis lacks the stock hash of one of its positions (lost,
    /// not yet restored by reconciliation): nothing changed, and the order must be kept.
    PositionMissing {
        key: SkuKey,
    },
    /// A newer supervisor lease's token was seen: this leader-only release is refused.
    Fenced,
    /// A line is released (confirm refused).
    Released {
        key: SkuKey,
    },
    /// A line's hold expired (confirm refused).
    Expired {
        key: SkuKey,
    },
    /// A line is confirmed (release refused).
    Confirmed {
        key: SkuKey,
    },
    /// The expiry scan found a line not yet expired.
    NotExpired,
    /// Release of an unknown order: tombstone left.
    Tombstone,
    /// The order changed since its positions were read: read them again.
    Retry,
    JournalFull,
}

/// A line's state as Redis holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineMarker {
    pub status: ReservationStatus,
    pub qty: i64,
    /// Units sold, when CONFIRMED.
    pub confirmed_qty: Option<i64>,
    pub expire_at_ms: i64,
}

/// What a partial confirm did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartialConfirmReply {
    Done,
    /// Confirmed before with the same units per line.
    Exists,
    /// Confirmed before with other units.
    Conflict,
    /// A line was asked for more units than it holds.
    TooMany {
        key: SkuKey,
    },
    /// As confirm.lua refuses (not found, released, expired, retry, journal full).
    Refused(TransitionReply),
}

fn bad(script: &'static str, detail: impl Into<String>) -> RedisStoreError {
    RedisStoreError::BadReply {
        script,
        detail: detail.into(),
    }
}

/// One order's reply item (see lua/reserve.lua); `lines`: how many lines the order has.
/// A line number outside 1..=lines is a script bug, reported as such (not defaulted to the
/// first line, which would blame the wrong SKU).
fn parse_reserve_reply(item: &ReplyItem, lines: usize) -> RedisResult<ReserveReply> {
    let line = |n: i64| {
        usize::try_from(n)
            .ok()
            .filter(|n| (1..=lines).contains(n))
            .map(|n| n - 1)
            .ok_or_else(|| {
                bad(
                    "reserve",
                    format!("{} names line {n} of an order of {lines}", item.status),
                )
            })
    };
    let [n1, n2, _, _] = item.n;
    Ok(match item.status.as_str() {
        "RESERVED" => ReserveReply::Reserved { expire_at_ms: n1 },
        "INSUFFICIENT" => ReserveReply::Insufficient {
            line: line(n1)?,
            available: n2,
        },
        "NOT_FOUND" => ReserveReply::NotFound { line: line(n1)? },
        "CONFLICT" => ReserveReply::Conflict {
            line: if n1 == 0 { None } else { Some(line(n1)?) },
        },
        "CANCELLED" => ReserveReply::Cancelled,
        "JOURNAL_FULL" => ReserveReply::JournalFull,
        other => match other
            .strip_prefix("EXISTS:")
            .and_then(ReservationStatus::parse)
        {
            Some(state) => ReserveReply::Exists {
                lines: vec![(state, n1)],
            },
            None => return Err(bad("reserve", format!("status {other}"))),
        },
    })
}

fn parse_transition(script: &'static str, item: &ReplyItem) -> RedisResult<TransitionReply> {
    let key = SkuKey::new(WarehouseId(item.n[0]), SkuId(item.n[1]));
    Ok(match item.status.as_str() {
        "CONFIRMED" if script == "confirm" => TransitionReply::Done,
        "RELEASED" if script == "release" => TransitionReply::Done,
        "EXISTS" => TransitionReply::Exists,
        "NOT_FOUND" => TransitionReply::NotFound,
        "MISSING" => TransitionReply::PositionMissing { key },
        "RELEASED" => TransitionReply::Released { key },
        "EXPIRED" => TransitionReply::Expired { key },
        "CONFIRMED" => TransitionReply::Confirmed { key },
        "NOT_EXPIRED" => TransitionReply::NotExpired,
        "TOMBSTONE" => TransitionReply::Tombstone,
        "RETRY" => TransitionReply::Retry,
        "JOURNAL_FULL" => TransitionReply::JournalFull,
        "FENCED" => TransitionReply::Fenced,
        other => return Err(bad(script, format!("status {other}"))),
    })
}

impl RedisStore {
    /// Reserves a batch of orders in one script call.
    pub async fn reserve_batch(
        &self,
        orders: &[ReserveOrder],
        params: ReserveParams,
    ) -> RedisResult<(Vec<ReserveReply>, Vec<LevelsAfter>)> {
        if orders.is_empty() {
            return Ok((vec![], vec![]));
        }
        if self.is_cluster() {
            return self.reserve_batch_cluster(orders, params).await;
        }
        let keys = &self.keys;
        let mut layout = wire::CallLayout::default();
        let line_positions: Vec<Vec<usize>> = orders
            .iter()
            .map(|o| {
                o.lines
                    .iter()
                    .map(|l| layout.position(keys, l.key))
                    .collect()
            })
            .collect();
        let mut invocation = self.scripts.reserve.prepare_invoke();
        layout.push_reserve_head(keys, params.head(), &mut invocation);
        invocation.arg(orders.len());
        for (order, positions) in orders.iter().zip(&line_positions) {
            invocation
                .arg(&order.order_no)
                .arg(wire::word(&order.trace_id, 64))
                .arg(order.lines.len());
            for (line, position) in order.lines.iter().zip(positions) {
                invocation.arg(*position).arg(line.qty);
            }
        }
        let items = self.run_script("reserve", &invocation, None).await?;
        let (items, levels) =
            wire::split_levels("reserve", items, orders.len(), &layout.positions)?;
        let replies = items
            .iter()
            .zip(orders)
            .map(|(item, order)| parse_reserve_reply(item, order.lines.len()))
            .collect::<RedisResult<Vec<_>>>()?;
        Ok((replies, levels))
    }

    /// What the directory says of each order (None: unknown).
    pub async fn lookup_orders(
        &self,
        order_nos: &[String],
    ) -> RedisResult<Vec<Option<DirectoryEntry>>> {
        if order_nos.is_empty() {
            return Ok(vec![]);
        }
        if self.is_cluster() {
            return Ok(self
                .raw_directory_cluster(order_nos)
                .await?
                .iter()
                .map(|r| r.as_deref().and_then(DirectoryEntry::parse))
                .collect());
        }
        let mut conn = self.conn.clone();
        let mut out = Vec::with_capacity(order_nos.len());
        for chunk in order_nos.chunks(1000) {
            let raw: Vec<Option<String>> = self
                .timed(
                    redis::cmd("HMGET")
                        .arg(self.keys.directory())
                        .arg(chunk)
                        .query_async(&mut conn),
                )
                .await?;
            out.extend(
                raw.iter()
                    .map(|r| r.as_deref().and_then(DirectoryEntry::parse)),
            );
        }
        Ok(out)
    }

    /// The positions of an order's lines, as the directory lists them (none for an unknown
    /// order or a tombstone), sorted.
    pub async fn order_lines(&self, order_no: &str) -> RedisResult<Vec<SkuKey>> {
        let entry = self
            .lookup_orders(&[order_no.to_string()])
            .await?
            .pop()
            .flatten();
        let mut lines = entry.map(|e| e.positions()).unwrap_or_default();
        lines.sort();
        Ok(lines)
    }

    /// Whether a release left a tombstone for this order.
    pub async fn has_tombstone(&self, order_no: &str) -> RedisResult<bool> {
        Ok(matches!(
            self.lookup_orders(&[order_no.to_string()])
                .await?
                .pop()
                .flatten(),
            Some(DirectoryEntry::Tombstone { .. })
        ))
    }

    /// Confirms or releases a batch of orders (all of one kind): in one script call on a
    /// single Redis, decided per order and applied per group on a cluster.
    pub async fn transition_batch(
        &self,
        orders: &[TransitionOrder],
        now_ms: i64,
        max_journal_entries: u64,
    ) -> RedisResult<(Vec<TransitionReply>, Vec<LevelsAfter>)> {
        if self.is_cluster() && !orders.is_empty() {
            return self
                .transition_batch_cluster(orders, now_ms, max_journal_entries)
                .await;
        }
        self.transition_batch_single(orders, now_ms, max_journal_entries)
            .await
    }

    /// One confirm.lua / release.lua call (on a cluster: the orders' positions are in one
    /// group).
    pub(super) async fn transition_batch_single(
        &self,
        orders: &[TransitionOrder],
        now_ms: i64,
        max_journal_entries: u64,
    ) -> RedisResult<(Vec<TransitionReply>, Vec<LevelsAfter>)> {
        let Some(first) = orders.first() else {
            return Ok((vec![], vec![]));
        };
        let confirm = first.op.is_confirm();
        if orders.iter().any(|o| o.op.is_confirm() != confirm) {
            return Err(bad("transition", "a batch mixes confirms and releases"));
        }
        let keys = &self.keys;
        let mut layout = wire::CallLayout::default();
        for order in orders {
            for key in &order.positions {
                layout.position(keys, *key);
            }
        }
        let (script, name) = if confirm {
            (&self.scripts.confirm, "confirm")
        } else {
            (&self.scripts.release, "release")
        };
        let mut invocation = script.prepare_invoke();
        layout.push_keys(keys, &mut invocation);
        invocation.arg(now_ms).arg(max_journal_entries);
        layout.push_position_args(keys, &mut invocation);
        invocation.arg(orders.len());
        for order in orders {
            invocation
                .arg(&order.order_no)
                .arg(wire::word(&order.trace_id, 64));
            match &order.op {
                TransitionOp::Confirm { even_if_expired } => {
                    invocation.arg(if *even_if_expired { "1" } else { "0" });
                }
                TransitionOp::Release {
                    reason,
                    remark,
                    only_if_expired,
                    fence,
                } => {
                    invocation
                        .arg(reason.as_str())
                        .arg(wire::remark(remark, 255))
                        .arg(if *only_if_expired { "1" } else { "0" })
                        .arg(*fence);
                }
            }
            layout.push_groups_of(keys, &order.positions, &mut invocation);
        }
        let items = self.run_script(name, &invocation, None).await?;
        let (items, levels) = wire::split_levels(name, items, orders.len(), &layout.positions)?;
        let replies = items
            .iter()
            .map(|item| parse_transition(name, item))
            .collect::<RedisResult<Vec<_>>>()?;
        Ok((replies, levels))
    }

    /// Confirms one order with the units to sell per line (lua/confirm_partial.lua; single
    /// Redis). `lines` names every line of the order (from the directory) with its units
    /// to confirm. Done, Exists (the same quantities before), Conflict (others before), or
    /// a refusal as confirm.lua answers it; TooMany names a line asked for more than held.
    pub async fn confirm_partial(
        &self,
        order_no: &str,
        trace_id: &str,
        lines: &[(SkuKey, i64)],
        even_if_expired: bool,
        now_ms: i64,
        max_journal_entries: u64,
    ) -> RedisResult<(PartialConfirmReply, Vec<LevelsAfter>)> {
        if self.is_cluster() {
            return Err(bad("confirm_partial", "not available on a Redis Cluster"));
        }
        let keys = &self.keys;
        let mut layout = wire::CallLayout::default();
        for (key, _) in lines {
            layout.position(keys, *key);
        }
        let units: HashMap<SkuKey, i64> = lines.iter().copied().collect();
        let mut invocation = self.scripts.confirm_partial.prepare_invoke();
        layout.push_keys(keys, &mut invocation);
        invocation.arg(now_ms).arg(max_journal_entries);
        layout.push_position_args(keys, &mut invocation);
        invocation
            .arg(1)
            .arg(order_no)
            .arg(wire::word(trace_id, 64))
            .arg(if even_if_expired { "1" } else { "0" });
        for key in &layout.positions {
            invocation.arg(units.get(key).copied().unwrap_or(0));
        }
        layout.push_groups_of(keys, &layout.positions, &mut invocation);
        let items = self
            .run_script("confirm_partial", &invocation, None)
            .await?;
        let (items, levels) = wire::split_levels("confirm_partial", items, 1, &layout.positions)?;
        let item = items
            .first()
            .ok_or_else(|| bad("confirm_partial", "no reply"))?;
        let key = SkuKey::new(WarehouseId(item.n[0]), SkuId(item.n[1]));
        let reply = match item.status.as_str() {
            "CONFIRMED" => PartialConfirmReply::Done,
            "EXISTS" => PartialConfirmReply::Exists,
            "CONFLICT" => PartialConfirmReply::Conflict,
            "TOO_MANY" => PartialConfirmReply::TooMany { key },
            _ => PartialConfirmReply::Refused(parse_transition("confirm", item)?),
        };
        Ok((reply, levels))
    }

    /// Leaves a tombstone for an order Redis has no record of (a release that came before
    /// its reservation). Tombstone, or Retry when the order was reserved meanwhile.
    pub async fn tombstone(&self, order_no: &str, until_ms: i64) -> RedisResult<TransitionReply> {
        let mut invocation = self.scripts.tombstone.key(self.keys.directory_of(order_no));
        invocation.arg(order_no).arg(until_ms);
        let item = self.run_script_one("tombstone", &invocation).await?;
        parse_transition("tombstone", &item)
    }

    /// The states of an order's lines (None where Redis no longer has a line).
    pub async fn line_markers(
        &self,
        order_no: &str,
        lines: &[SkuKey],
    ) -> RedisResult<Vec<Option<LineMarker>>> {
        if lines.is_empty() {
            return Ok(vec![]);
        }
        let mut groups: Vec<u32> = lines.iter().map(|k| self.keys.group(*k)).collect();
        groups.sort_unstable();
        groups.dedup();
        let mut pipe = redis::pipe();
        for g in &groups {
            pipe.cmd("HGET").arg(self.keys.orders(*g)).arg(order_no);
        }
        let raw: Vec<Option<String>> = self.query_pipe(&pipe).await?;
        let records: HashMap<u32, OrderRecord> = groups
            .iter()
            .zip(raw)
            .filter_map(|(g, r)| Some((*g, OrderRecord::parse(r.as_deref()?)?)))
            .collect();
        Ok(lines
            .iter()
            .map(|key| {
                let record = records.get(&self.keys.group(*key))?;
                let line = record.line(*key)?;
                Some(LineMarker {
                    status: line.status,
                    qty: line.qty,
                    confirmed_qty: line.confirmed_qty(),
                    expire_at_ms: record.expire_at_ms,
                })
            })
            .collect())
    }

    /// The states of many orders' lines in one position.
    pub async fn position_markers(
        &self,
        key: SkuKey,
        orders: &[String],
    ) -> RedisResult<Vec<Option<LineMarker>>> {
        let mut out = Vec::with_capacity(orders.len());
        let hash = self.keys.orders(self.keys.group(key));
        let mut conn = self.conn.clone();
        for chunk in orders.chunks(1000) {
            let raw: Vec<Option<String>> = self
                .timed(
                    redis::cmd("HMGET")
                        .arg(&hash)
                        .arg(chunk)
                        .query_async(&mut conn),
                )
                .await?;
            out.extend(raw.iter().map(|r| {
                let record = OrderRecord::parse(r.as_deref()?)?;
                let line = record.line(key)?;
                Some(LineMarker {
                    status: line.status,
                    qty: line.qty,
                    confirmed_qty: line.confirmed_qty(),
                    expire_at_ms: record.expire_at_ms,
                })
            }));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_number_outside_the_order_is_a_bad_reply() {
        let item = |status: &str, n1: i64| item(status, [n1, 4, 0, 0]);
        assert_eq!(
            parse_reserve_reply(&item("INSUFFICIENT", 2), 2).unwrap(),
            ReserveReply::Insufficient {
                line: 1,
                available: 4
            }
        );
        assert_eq!(
            parse_reserve_reply(&item("CONFLICT", 0), 2).unwrap(),
            ReserveReply::Conflict { line: None }
        );
        for (status, n1) in [
            ("INSUFFICIENT", 0),
            ("INSUFFICIENT", 3),
            ("NOT_FOUND", -1),
            ("CONFLICT", 5),
        ] {
            assert!(
                matches!(
                    parse_reserve_reply(&item(status, n1), 2),
                    Err(RedisStoreError::BadReply { .. })
                ),
                "{status} {n1}"
            );
        }
    }

    fn item(status: &str, n: [i64; 4]) -> ReplyItem {
        ReplyItem {
            status: status.into(),
            n,
        }
    }

    #[test]
    fn replies_parse() {
        assert_eq!(
            parse_reserve_reply(&item("EXISTS:CONFIRMED", [1_700_000_000_000, 0, 0, 0]), 1)
                .unwrap(),
            ReserveReply::Exists {
                lines: vec![(ReservationStatus::Confirmed, 1_700_000_000_000)]
            }
        );
        assert_eq!(
            parse_reserve_reply(&item("INSUFFICIENT", [2, 3, 0, 0]), 2).unwrap(),
            ReserveReply::Insufficient {
                line: 1,
                available: 3
            }
        );
        assert_eq!(
            parse_reserve_reply(&item("CONFLICT", [0; 4]), 1).unwrap(),
            ReserveReply::Conflict { line: None }
        );
        assert!(parse_reserve_reply(&item("WHAT", [0; 4]), 1).is_err());
        assert_eq!(
            parse_transition("release", &item("RELEASED", [0; 4])).unwrap(),
            TransitionReply::Done
        );
        assert_eq!(
            parse_transition("confirm", &item("RELEASED", [1, 1001, 0, 0])).unwrap(),
            TransitionReply::Released {
                key: SkuKey::new(WarehouseId(1), SkuId(1001))
            }
        );
    }
}
