//! The Redis side of reservations: the batched reserve script, confirm, release, and
//! reading line markers.

use std::collections::HashMap;

use redis::Value;
use serde::Deserialize;

use crate::domain::{LedgerReason, ReservationStatus, SkuKey};
use crate::store::redis::{value_string, RedisResult, RedisStore, RedisStoreError};

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
    pub marker_ttl_ms: i64,
    pub max_journal_entries: u64,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionReply {
    /// The transition happened now.
    Done,
    /// It had happened before (repeat).
    Exists,
    NotFound {
        line: usize,
    },
    /// A line is released (confirm refused).
    Released {
        line: usize,
    },
    /// A line's hold expired (confirm refused).
    Expired {
        line: usize,
    },
    /// A line is confirmed (release refused).
    Confirmed {
        line: usize,
    },
    /// The expiry scan found a line not yet expired.
    NotExpired,
    /// Release of an unknown order: tombstone left.
    Tombstone,
    /// Called without lines, but the order has some by now: read them again.
    Retry,
    JournalFull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineMarker {
    pub status: ReservationStatus,
    pub qty: i64,
    pub expire_at_ms: i64,
}

#[derive(Deserialize)]
struct RawReply {
    st: String,
    #[serde(default)]
    i: Option<i64>,
}

fn bad(script: &'static str, detail: impl Into<String>) -> RedisStoreError {
    RedisStoreError::BadReply {
        script,
        detail: detail.into(),
    }
}

/// Lua line numbers are 1-based.
fn line_index(i: Option<i64>) -> usize {
    i.and_then(|i| usize::try_from(i - 1).ok()).unwrap_or(0)
}

/// One order's result: status and two numbers (see lua/reserve.lua).
fn parse_reserve_reply(status: &str, n1: i64, n2: i64) -> RedisResult<ReserveReply> {
    let line = |n: i64| usize::try_from(n - 1).unwrap_or(0);
    Ok(match status {
        "RESERVED" => ReserveReply::Reserved { expire_at_ms: n1 },
        "INSUFFICIENT" => ReserveReply::Insufficient {
            line: line(n1),
            available: n2,
        },
        "NOT_FOUND" => ReserveReply::NotFound { line: line(n1) },
        "CONFLICT" => ReserveReply::Conflict {
            line: (n1 > 0).then(|| line(n1)),
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

/// The order index of an order released before it was reserved.
const TOMBSTONE: &str = "!";

/// `w:s w:s ...` (see lua/reserve.lua), sorted; a tombstone lists nothing.
fn parse_order_index(index: &str) -> Vec<SkuKey> {
    let mut lines: Vec<SkuKey> = index
        .split(' ')
        .filter_map(|m| {
            let (w, s) = m.split_once(':')?;
            Some(SkuKey::new(w.parse().ok()?, s.parse().ok()?))
        })
        .collect();
    lines.sort();
    lines
}

/// `<state> <qty> <expireAt ms>` (see lua/reserve.lua).
fn parse_marker(raw: &str) -> Option<LineMarker> {
    let mut fields = raw.split(' ');
    let marker = LineMarker {
        status: ReservationStatus::parse(fields.next()?)?,
        qty: fields.next()?.parse().ok()?,
        expire_at_ms: fields.next()?.parse().ok()?,
    };
    fields.next().is_none().then_some(marker)
}

/// Trace ids end up in a space-separated journal line: no whitespace, at most 64 chars.
fn journal_safe(trace_id: &str) -> String {
    trace_id
        .chars()
        .take(64)
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect()
}

fn parse_transition(script: &'static str, json: &str) -> RedisResult<TransitionReply> {
    let raw: RawReply = serde_json::from_str(json).map_err(|e| bad(script, e.to_string()))?;
    let line = line_index(raw.i);
    Ok(match raw.st.as_str() {
        "CONFIRMED" if script == "confirm" => TransitionReply::Done,
        "RELEASED" if script == "release" => TransitionReply::Done,
        "EXISTS" => TransitionReply::Exists,
        "NOT_FOUND" => TransitionReply::NotFound { line },
        "RELEASED" => TransitionReply::Released { line },
        "EXPIRED" => TransitionReply::Expired { line },
        "CONFIRMED" => TransitionReply::Confirmed { line },
        "NOT_EXPIRED" => TransitionReply::NotExpired,
        "TOMBSTONE" => TransitionReply::Tombstone,
        "RETRY" => TransitionReply::Retry,
        "JOURNAL_FULL" => TransitionReply::JournalFull,
        other => return Err(bad(script, format!("status {other}"))),
    })
}

impl RedisStore {
    /// Reserves a batch of orders in one script call.
    pub async fn reserve_batch(
        &self,
        orders: &[ReserveOrder],
        params: ReserveParams,
    ) -> RedisResult<Vec<ReserveReply>> {
        if orders.is_empty() {
            return Ok(vec![]);
        }
        let keys = &self.keys;
        let mut key_list: Vec<String> = vec![keys.journal(), keys.holds()];
        let mut stock_index: HashMap<SkuKey, usize> = HashMap::new();
        let mut args: Vec<String> = Vec::with_capacity(5 + orders.len() * 9);
        args.push(params.now_ms.to_string());
        args.push(params.hold_ms.to_string());
        args.push(params.marker_ttl_ms.to_string());
        args.push(params.max_journal_entries.to_string());
        args.push(orders.len().to_string());
        for order in orders {
            key_list.push(keys.order(&order.order_no));
            let order_key = key_list.len();
            args.push(order.order_no.clone());
            // The journal line is space-separated; the trace id goes last, without newlines.
            args.push(journal_safe(&order.trace_id));
            args.push(order_key.to_string());
            args.push(order.lines.len().to_string());
            for line in &order.lines {
                let stock = *stock_index.entry(line.key).or_insert_with(|| {
                    key_list.push(keys.stock(line.key));
                    key_list.len()
                });
                key_list.push(keys.line(line.key, &order.order_no));
                let marker = key_list.len();
                args.push(stock.to_string());
                args.push(marker.to_string());
                args.push(line.key.warehouse_id.to_string());
                args.push(line.key.sku_id.to_string());
                args.push(line.qty.to_string());
            }
        }
        let mut invocation = self.scripts.reserve.prepare_invoke();
        for key in &key_list {
            invocation.key(key);
        }
        for arg in &args {
            invocation.arg(arg);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<Value> = self.timed(invocation.invoke_async(&mut conn)).await?;
        if reply.len() != orders.len() * 3 {
            return Err(bad(
                "reserve",
                format!("{} values for {} orders", reply.len(), orders.len()),
            ));
        }
        reply
            .chunks(3)
            .map(|chunk| {
                let status = value_string(&chunk[0]).unwrap_or_default();
                let number = |v: &Value| match v {
                    Value::Int(n) => *n,
                    other => value_string(other)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                };
                parse_reserve_reply(&status, number(&chunk[1]), number(&chunk[2]))
            })
            .collect()
    }

    /// The order's index: what `GET` of it says.
    async fn order_index(&self, order_no: &str) -> RedisResult<Option<String>> {
        let mut conn = self.conn.clone();
        self.timed(
            redis::cmd("GET")
                .arg(self.keys.order(order_no))
                .query_async(&mut conn),
        )
        .await
    }

    /// The positions of an order's lines, as its index in Redis lists them (none for an
    /// unknown order or a tombstone).
    pub async fn order_lines(&self, order_no: &str) -> RedisResult<Vec<SkuKey>> {
        Ok(parse_order_index(
            self.order_index(order_no).await?.as_deref().unwrap_or(""),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn confirm_order(
        &self,
        order_no: &str,
        lines: &[SkuKey],
        trace_id: &str,
        now_ms: i64,
        max_journal_entries: u64,
        even_if_expired: bool,
    ) -> RedisResult<TransitionReply> {
        let mut invocation = self.scripts.confirm.prepare_invoke();
        invocation.key(self.keys.journal()).key(self.keys.holds());
        for line in lines {
            invocation
                .key(self.keys.stock(*line))
                .key(self.keys.line(*line, order_no));
        }
        invocation
            .arg(now_ms)
            .arg(order_no)
            .arg(trace_id)
            .arg(max_journal_entries)
            .arg(if even_if_expired { "1" } else { "0" });
        for line in lines {
            invocation.arg(line.warehouse_id).arg(line.sku_id);
        }
        let mut conn = self.conn.clone();
        let reply: String = self.timed(invocation.invoke_async(&mut conn)).await?;
        parse_transition("confirm", &reply)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn release_order(
        &self,
        order_no: &str,
        lines: &[SkuKey],
        trace_id: &str,
        reason: LedgerReason,
        remark: &str,
        tombstone_ttl_ms: i64,
        only_if_expired: bool,
        now_ms: i64,
        max_journal_entries: u64,
    ) -> RedisResult<TransitionReply> {
        let mut invocation = self.scripts.release.prepare_invoke();
        invocation
            .key(self.keys.journal())
            .key(self.keys.holds())
            .key(self.keys.order(order_no));
        for line in lines {
            invocation
                .key(self.keys.stock(*line))
                .key(self.keys.line(*line, order_no));
        }
        invocation
            .arg(now_ms)
            .arg(order_no)
            .arg(trace_id)
            .arg(max_journal_entries)
            .arg(reason.as_str())
            .arg(remark)
            .arg(tombstone_ttl_ms)
            .arg(if only_if_expired { "1" } else { "0" });
        for line in lines {
            invocation.arg(line.warehouse_id).arg(line.sku_id);
        }
        let mut conn = self.conn.clone();
        let reply: String = self.timed(invocation.invoke_async(&mut conn)).await?;
        parse_transition("release", &reply)
    }

    /// The markers of an order's lines (None where a marker is gone).
    pub async fn line_markers(
        &self,
        order_no: &str,
        lines: &[SkuKey],
    ) -> RedisResult<Vec<Option<LineMarker>>> {
        let keys = lines.iter().map(|l| self.keys.line(*l, order_no)).collect();
        self.markers(keys).await
    }

    /// The markers of many orders' lines in one position.
    pub async fn position_markers(
        &self,
        key: SkuKey,
        orders: &[String],
    ) -> RedisResult<Vec<Option<LineMarker>>> {
        let keys = orders.iter().map(|o| self.keys.line(key, o)).collect();
        self.markers(keys).await
    }

    /// Reads markers, pipelined in chunks.
    async fn markers(&self, keys: Vec<String>) -> RedisResult<Vec<Option<LineMarker>>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(1000) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("GET").arg(key);
            }
            let mut conn = self.conn.clone();
            let replies: Vec<Option<String>> = self.timed(pipe.query_async(&mut conn)).await?;
            out.extend(replies.iter().map(|raw| parse_marker(raw.as_deref()?)));
        }
        Ok(out)
    }

    /// Whether a release left a tombstone for this order.
    pub async fn has_tombstone(&self, order_no: &str) -> RedisResult<bool> {
        Ok(self.order_index(order_no).await?.as_deref() == Some(TOMBSTONE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_and_order_indexes_parse() {
        assert_eq!(
            parse_marker("CONFIRMED 3 1732540000000"),
            Some(LineMarker {
                status: ReservationStatus::Confirmed,
                qty: 3,
                expire_at_ms: 1_732_540_000_000
            })
        );
        for bad in [
            "",
            "RESERVED 3",
            "HELD 3 1",
            "RESERVED x 1",
            "RESERVED 3 1 extra",
        ] {
            assert_eq!(parse_marker(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse_order_index("2:7 1:9"),
            vec![SkuKey::new(1, 9), SkuKey::new(2, 7)]
        );
        assert!(parse_order_index(TOMBSTONE).is_empty());
        assert!(parse_order_index("").is_empty());
    }

    #[test]
    fn replies_parse() {
        assert_eq!(
            parse_reserve_reply("EXISTS:CONFIRMED", 1_700_000_000_000, 0).unwrap(),
            ReserveReply::Exists {
                lines: vec![(ReservationStatus::Confirmed, 1_700_000_000_000)]
            }
        );
        assert_eq!(
            parse_reserve_reply("INSUFFICIENT", 2, 3).unwrap(),
            ReserveReply::Insufficient {
                line: 1,
                available: 3
            }
        );
        assert_eq!(
            parse_reserve_reply("CONFLICT", 0, 0).unwrap(),
            ReserveReply::Conflict { line: None }
        );
        assert!(parse_reserve_reply("WHAT", 0, 0).is_err());
        assert_eq!(journal_safe("a b\nc"), "a_b_c");
        assert_eq!(
            parse_transition("release", r#"{"st":"RELEASED"}"#).unwrap(),
            TransitionReply::Done
        );
        assert_eq!(
            parse_transition("confirm", r#"{"st":"RELEASED","i":1}"#).unwrap(),
            TransitionReply::Released { line: 0 }
        );
    }
}
