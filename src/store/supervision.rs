//! The Redis side of the supervisor: the leader lease, due holds, rebuilding positions from
//! the DB, and journalled RECONCILE repairs.

use redis::Value;

use crate::domain::{ReservationStatus, SkuKey, StockLevels};
use crate::store::redis::{value_string, RedisResult, RedisStore, RedisStoreError};

/// A line as the DB has it, for rebuilding its marker.
#[derive(Debug, Clone)]
pub struct LineSnapshot {
    pub order_no: String,
    pub status: ReservationStatus,
    pub qty: i64,
    pub expire_at_ms: i64,
}

impl RedisStore {
    /// Takes or keeps the lease; the fencing token while held, None otherwise.
    pub async fn lease(&self, owner: &str, ttl_ms: u64, give_up: bool) -> RedisResult<Option<i64>> {
        let mut invocation = self.scripts.lease.key(self.keys.leader());
        invocation
            .key(self.keys.leader_token())
            .arg(owner)
            .arg(ttl_ms)
            .arg(if give_up { "release" } else { "keep" });
        let mut conn = self.conn.clone();
        let token: i64 = self.timed(invocation.invoke_async(&mut conn)).await?;
        Ok((token > 0).then_some(token))
    }

    /// Orders whose holds expired by `now_ms`, oldest first.
    pub async fn due_holds(&self, now_ms: i64, limit: usize) -> RedisResult<Vec<String>> {
        let mut conn = self.conn.clone();
        self.timed(
            redis::cmd("ZRANGEBYSCORE")
                .arg(self.keys.holds())
                .arg("-inf")
                .arg(now_ms)
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query_async(&mut conn),
        )
        .await
    }

    pub async fn forget_hold(&self, order_no: &str) -> RedisResult<()> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .timed(
                redis::cmd("ZREM")
                    .arg(self.keys.holds())
                    .arg(order_no)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(())
    }

    /// Marks Redis as loaded from the DB (at start-up and after a rebuild).
    pub async fn mark_epoch(&self) -> RedisResult<()> {
        let mut conn = self.conn.clone();
        let _: Value = self
            .timed(
                redis::cmd("SET")
                    .arg(self.keys.epoch())
                    .arg(chrono::Utc::now().timestamp_millis())
                    .arg("NX")
                    .query_async(&mut conn),
            )
            .await?;
        Ok(())
    }

    /// False when Redis lost its data since it was loaded.
    pub async fn has_epoch(&self) -> RedisResult<bool> {
        let mut conn = self.conn.clone();
        self.timed(
            redis::cmd("EXISTS")
                .arg(self.keys.epoch())
                .query_async(&mut conn),
        )
        .await
    }

    /// Every position Redis holds a stock hash for.
    pub async fn scan_positions(&self) -> RedisResult<Vec<SkuKey>> {
        let mut conn = self.conn.clone();
        let pattern = self.keys.stock_pattern();
        let prefix_len = self.keys.prefix().len() + "inv:{".len();
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .timed(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn),
                )
                .await?;
            for key in keys {
                let inner = key
                    .get(prefix_len..key.len().saturating_sub(1))
                    .unwrap_or("");
                if let Some((w, s)) = inner.split_once(':') {
                    if let (Ok(w), Ok(s)) = (w.parse(), s.parse()) {
                        out.push(SkuKey::new(w, s));
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Loads a position and its lines' markers from the DB where Redis lacks them.
    /// Returns (stock loaded, markers restored).
    pub async fn rebuild_position(
        &self,
        key: SkuKey,
        levels: StockLevels,
        lines: &[LineSnapshot],
        marker_ttl_ms: i64,
        now_ms: i64,
    ) -> RedisResult<(bool, usize)> {
        let mut loaded = false;
        let mut restored = 0;
        // Bounded script calls: a hot SKU may have many lines.
        let chunks: Vec<&[LineSnapshot]> = if lines.is_empty() {
            vec![&[]]
        } else {
            lines.chunks(500).collect()
        };
        for chunk in chunks {
            let mut invocation = self.scripts.rebuild.key(self.keys.stock(key));
            invocation.key(self.keys.holds());
            for line in chunk {
                invocation
                    .key(self.keys.line(key, &line.order_no))
                    .key(self.keys.order(&line.order_no));
            }
            invocation
                .arg(levels.available)
                .arg(levels.reserved)
                .arg(levels.confirmed)
                .arg(levels.seq)
                .arg(marker_ttl_ms)
                .arg(now_ms)
                .arg(format!("{}:{}", key.warehouse_id, key.sku_id));
            for line in chunk {
                invocation
                    .arg(&line.order_no)
                    .arg(line.status.as_str())
                    .arg(line.qty)
                    .arg(line.expire_at_ms);
            }
            let mut conn = self.conn.clone();
            let reply: Vec<i64> = self.timed(invocation.invoke_async(&mut conn)).await?;
            loaded |= reply.first().copied() == Some(1);
            restored += reply.get(1).copied().unwrap_or(0) as usize;
        }
        Ok((loaded, restored))
    }

    /// Sets a position's counters as a journalled RECONCILE change, if its seq is still
    /// `expected_seq`. Returns the new seq, or None when it changed meanwhile.
    pub async fn reconcile_position(
        &self,
        key: SkuKey,
        expected_seq: i64,
        target: StockLevels,
        remark: &str,
        trace_id: &str,
    ) -> RedisResult<Option<i64>> {
        let mut invocation = self.scripts.reconcile.key(self.keys.stock(key));
        invocation
            .key(self.keys.journal())
            .arg(expected_seq)
            .arg(target.available)
            .arg(target.reserved)
            .arg(target.confirmed)
            .arg(key.warehouse_id)
            .arg(key.sku_id)
            .arg(chrono::Utc::now().timestamp_millis())
            .arg(remark)
            .arg(trace_id);
        let mut conn = self.conn.clone();
        let reply: Vec<Value> = self.timed(invocation.invoke_async(&mut conn)).await?;
        let status = reply.first().and_then(value_string).unwrap_or_default();
        let seq = reply
            .get(1)
            .and_then(value_string)
            .and_then(|s| s.parse().ok())
            .unwrap_or(-1);
        match status.as_str() {
            "OK" => Ok(Some(seq)),
            "CHANGED" => Ok(None),
            other => Err(RedisStoreError::BadReply {
                script: "reconcile",
                detail: format!("status {other}"),
            }),
        }
    }
}
