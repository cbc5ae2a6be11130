//! The Redis side of the supervisor: the leader lease, due holds, rebuilding positions from
//! the DB, and journalled RECONCILE repairs.

use redis::Value;

use crate::domain::{ReservationStatus, SkuKey, StockLevels};
use crate::store::redis::{RedisResult, RedisStore, RedisStoreError};
use crate::store::wire::{DirectoryEntry, Keys, OrderRecord, RecordLine};

/// An order as the DB has it (every line), for rebuilding its directory entry and records.
#[derive(Debug, Clone)]
pub struct OrderSnapshot {
    pub order_no: String,
    pub expire_at_ms: i64,
    pub lines: Vec<RecordLine>,
}

/// The most due orders one expire.lua call reads (its HMGETs pass them at once).
pub const EXPIRE_CALL_MAX: usize = 4000;

/// One expire.lua call's arguments (see [`RedisStore::expire_group`]).
#[derive(Debug, Clone, Copy)]
pub struct ExpireCall<'a> {
    pub now_ms: i64,
    pub max_journal_entries: u64,
    pub limit: usize,
    pub offset: usize,
    pub fence: i64,
    pub trace_id: &'a str,
}

/// What one expire.lua call did in its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpireReply {
    /// Orders released, the orders passed over (still held and in the index: the general
    /// path decides them), due orders read (as many as the limit: more may be due),
    /// orders that left the index unreleased (nothing of them held any more), and the
    /// positions' counters after.
    Expired {
        released: usize,
        passed_over: Vec<String>,
        read: usize,
        forgotten: usize,
        levels: Vec<crate::store::wire::LevelsAfter>,
    },
    /// A newer leader's token was seen: nothing changed.
    Fenced,
    /// The group's journal is full: nothing changed.
    JournalFull,
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
        let item = self.run_script_one("lease", &invocation).await?;
        Ok((item.status == "LEADER" && item.n[0] > 0).then_some(item.n[0]))
    }

    /// Raises every group's fence to a new lease's token (lua/fence.lua), so that the
    /// writes of an earlier leader are refused from now on. False when a group has seen a
    /// newer token (this instance no longer leads).
    pub async fn raise_fences(&self, token: i64) -> RedisResult<bool> {
        for g in 0..self.keys.groups() {
            let mut invocation = self.scripts.fence.key(self.keys.orders(g));
            invocation.arg(token);
            if self.run_script_one("fence", &invocation).await?.status != "OK" {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Due holds per group: for group g, the orders whose holds expire in
    /// `from_ms[g]..=now_ms`, oldest first (ties by orderNo), at most `limit`, as
    /// (orderNo, expireAt ms). One pipeline. A multi-group order is held in each of its
    /// groups, so it is listed in each.
    pub async fn due_holds(
        &self,
        from_ms: &[i64],
        now_ms: i64,
        limit: usize,
    ) -> RedisResult<Vec<Vec<(String, i64)>>> {
        let mut pipe = redis::pipe();
        for g in 0..self.keys.groups() {
            let from = from_ms.get(g as usize).copied().unwrap_or(i64::MIN);
            pipe.cmd("ZRANGEBYSCORE")
                .arg(self.keys.holds(g))
                .arg(from)
                .arg(now_ms)
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(limit);
        }
        let per_group: Vec<Vec<(String, f64)>> = self.query_pipe(&pipe).await?;
        Ok(per_group
            .into_iter()
            .map(|entries| {
                entries
                    .into_iter()
                    .map(|(order, score)| (order, score as i64))
                    .collect()
            })
            .collect())
    }

    /// Releases the due holds of one group in one call (lua/expire.lua; single Redis
    /// only): at most `limit` due orders, after skipping the first `offset` (orders this
    /// run could not settle). `fence` is the leader's token (0: none).
    pub async fn expire_group(
        &self,
        group: u32,
        call: &ExpireCall<'_>,
    ) -> RedisResult<ExpireReply> {
        if self.is_cluster() {
            return Err(RedisStoreError::BadReply {
                script: "expire",
                detail: "not available on a Redis Cluster".into(),
            });
        }
        let keys = &self.keys;
        let mut invocation = self.scripts.expire.key(keys.orders(group));
        invocation
            .key(keys.holds(group))
            .key(keys.journal(group))
            .key(keys.directory())
            .arg(call.now_ms)
            .arg(call.max_journal_entries)
            .arg(call.limit.clamp(1, EXPIRE_CALL_MAX))
            .arg(call.offset)
            .arg(call.fence)
            .arg(crate::store::wire::word(call.trace_id, 64))
            .arg(keys.stock_prefix(group));
        let items = self.run_script("expire", &invocation, None).await?;
        let Some((head, rest)) = items.split_first() else {
            return Err(RedisStoreError::BadReply {
                script: "expire",
                detail: "no item".into(),
            });
        };
        Ok(match head.status.as_str() {
            "FENCED" => ExpireReply::Fenced,
            "JOURNAL_FULL" => ExpireReply::JournalFull,
            "EXPIRED" => {
                let count = |n: i64| usize::try_from(n).unwrap_or(0);
                let (passed, levels): (Vec<_>, Vec<_>) = rest
                    .iter()
                    .partition(|item| item.status.starts_with("PASSED:"));
                let passed_over = passed
                    .iter()
                    .filter_map(|item| item.status.strip_prefix("PASSED:"))
                    .map(str::to_string)
                    .collect();
                ExpireReply::Expired {
                    released: count(head.n[0]),
                    passed_over,
                    read: count(head.n[2]),
                    forgotten: count(head.n[3]),
                    levels: crate::store::wire::named_levels("expire", levels)?,
                }
            }
            other => {
                return Err(RedisStoreError::BadReply {
                    script: "expire",
                    detail: format!("status {other}"),
                })
            }
        })
    }

    /// Drops orders from every group's holds (they are settled, or Redis has no record).
    pub async fn forget_holds(&self, order_nos: &[String]) -> RedisResult<()> {
        if order_nos.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for chunk in order_nos.chunks(1000) {
            for g in 0..self.keys.groups() {
                pipe.cmd("ZREM").arg(self.keys.holds(g)).arg(chunk).ignore();
            }
        }
        let _: () = self.query_pipe(&pipe).await?;
        Ok(())
    }

    /// Holds due by `now_ms` that are still held, across groups: (count, oldest expiry ms).
    pub async fn due_hold_stats(&self, now_ms: i64) -> RedisResult<(u64, Option<i64>)> {
        let mut pipe = redis::pipe();
        for g in 0..self.keys.groups() {
            pipe.cmd("ZCOUNT")
                .arg(self.keys.holds(g))
                .arg("-inf")
                .arg(now_ms);
            pipe.cmd("ZRANGE")
                .arg(self.keys.holds(g))
                .arg(0)
                .arg(0)
                .arg("WITHSCORES");
        }
        let replies: Vec<Value> = self.query_pipe(&pipe).await?;
        let mut count = 0u64;
        let mut oldest: Option<i64> = None;
        for pair in replies.chunks(2) {
            if let [Value::Int(n), first] = pair {
                count += u64::try_from(*n).unwrap_or(0);
                if *n > 0 {
                    let score = match first {
                        Value::Array(v) => v.get(1).and_then(super::redis::value_string),
                        _ => None,
                    };
                    if let Some(ms) = score.and_then(|s| s.parse::<f64>().ok()) {
                        let ms = ms as i64;
                        oldest = Some(oldest.map_or(ms, |o| o.min(ms)));
                    }
                }
            }
        }
        Ok((count, oldest))
    }

    /// Forgets, in bulk, orders whose holds and markers have lived out (never one with a
    /// held line): the directory is scanned from `cursor` (`count` entries); returns the
    /// next cursor (0 when done) and how many orders were removed.
    pub async fn sweep_orders(
        &self,
        cursor: u64,
        count: usize,
        now_ms: i64,
        marker_ttl_ms: i64,
    ) -> RedisResult<(u64, u64)> {
        if self.is_cluster() {
            return self
                .sweep_orders_cluster(cursor, count, now_ms, marker_ttl_ms)
                .await;
        }
        let mut conn = self.conn.clone();
        let (next, flat): (u64, Vec<String>) = self
            .timed(
                redis::cmd("HSCAN")
                    .arg(self.keys.directory())
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut conn),
            )
            .await?;
        let mut candidates: Vec<(String, Vec<u32>)> = Vec::new();
        for pair in flat.chunks(2) {
            let [order_no, raw] = pair else { continue };
            match DirectoryEntry::parse(raw) {
                Some(DirectoryEntry::Tombstone { until_ms }) if until_ms <= now_ms => {
                    candidates.push((order_no.clone(), vec![]));
                }
                Some(entry @ DirectoryEntry::Order { expire_at_ms, .. })
                    if expire_at_ms + marker_ttl_ms <= now_ms =>
                {
                    let mut groups: Vec<u32> = entry
                        .positions()
                        .iter()
                        .map(|k| self.keys.group(*k))
                        .collect();
                    groups.sort_unstable();
                    groups.dedup();
                    candidates.push((order_no.clone(), groups));
                }
                _ => {}
            }
        }
        if candidates.is_empty() {
            return Ok((next, 0));
        }
        let mut call_groups: Vec<u32> = candidates.iter().flat_map(|(_, g)| g.clone()).collect();
        call_groups.sort_unstable();
        call_groups.dedup();
        let index = |g: u32| {
            call_groups
                .iter()
                .position(|x| *x == g)
                .map_or(0, |i| i + 1)
        };
        let mut invocation = self.scripts.sweep.key(self.keys.directory());
        for g in &call_groups {
            invocation
                .key(self.keys.orders(*g))
                .key(self.keys.holds(*g))
                .key(self.keys.journal(*g));
        }
        invocation
            .arg(now_ms)
            .arg(marker_ttl_ms)
            .arg(call_groups.len())
            .arg(candidates.len());
        for (order_no, groups) in &candidates {
            // No trace id: the script reads orders the way confirm and release pass them.
            invocation.arg(order_no).arg("").arg(groups.len());
            for g in groups {
                invocation.arg(index(*g));
            }
        }
        let item = self.run_script_one("sweep", &invocation).await?;
        Ok((next, u64::try_from(item.n[0]).unwrap_or(0)))
    }

    /// Cluster mode: the directory entries of orders rebuilt from the DB, in their shards,
    /// with the state the DB's lines say (held; or confirmed / released, decided and
    /// applied), where the shard has none or a tombstone (the DB has the order, so a
    /// tombstone is wrong, as on a single Redis).
    async fn rebuild_directory_cluster(&self, orders: &[OrderSnapshot]) -> RedisResult<()> {
        let entries: Vec<(String, String, String)> = orders
            .iter()
            .map(|order| {
                let listed = DirectoryEntry::Order {
                    expire_at_ms: order.expire_at_ms,
                    lines: order.lines.iter().map(|l| (l.key, l.qty)).collect(),
                }
                .format();
                let all = |s: ReservationStatus| order.lines.iter().all(|l| l.status == s);
                let value = if all(ReservationStatus::Confirmed) {
                    format!("c{listed}")
                } else if all(ReservationStatus::Released) {
                    format!("r{listed}")
                } else {
                    listed
                };
                (
                    self.keys.directory_of(&order.order_no),
                    order.order_no.clone(),
                    value,
                )
            })
            .collect();
        let mut pipe = redis::pipe();
        for (key, no, value) in &entries {
            pipe.cmd("HSETNX").arg(key).arg(no).arg(value);
        }
        let written: Vec<i64> = self.query_pipe(&pipe).await?;
        let mut conn = self.conn.clone();
        for ((key, no, value), written) in entries.iter().zip(written) {
            if written == 1 {
                continue;
            }
            let current: Option<String> = self
                .timed(redis::cmd("HGET").arg(key).arg(no).query_async(&mut conn))
                .await?;
            if current.is_some_and(|c| c.starts_with("! ")) {
                let _: i64 = self
                    .timed(
                        redis::cmd("HSET")
                            .arg(key)
                            .arg(no)
                            .arg(value)
                            .query_async(&mut conn),
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// Cluster mode of [`Self::sweep_orders`]: the directory shards are scanned one after
    /// the other (`cursor`: the shard in its top 16 bits, the HSCAN cursor below); an
    /// order goes once no line of it is held or pending in any group: first its records,
    /// then its entry (only if unchanged), so a crash in between leaves an entry that the
    /// next sweep removes.
    async fn sweep_orders_cluster(
        &self,
        cursor: u64,
        count: usize,
        now_ms: i64,
        marker_ttl_ms: i64,
    ) -> RedisResult<(u64, u64)> {
        const LOW: u64 = (1 << 48) - 1;
        let shard = (cursor >> 48) as u32;
        if shard >= self.keys.groups() {
            return Ok((0, 0));
        }
        let key = self.keys.directory_shard_key(shard);
        let mut conn = self.conn.clone();
        let (next, flat): (u64, Vec<String>) = self
            .timed(
                redis::cmd("HSCAN")
                    .arg(&key)
                    .arg(cursor & LOW)
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut conn),
            )
            .await?;
        let mut removed = 0;
        // Lived-out tombstones go in one call, each only if no release renewed it since the
        // scan read it.
        let mut tombstones = Vec::new();
        for pair in flat.chunks(2) {
            let [order_no, raw] = pair else { continue };
            if let Some(DirectoryEntry::Tombstone { until_ms }) = DirectoryEntry::parse(raw) {
                if until_ms <= now_ms {
                    tombstones.push((order_no.clone(), raw.clone()));
                }
                continue;
            }
            let Some(entry) = crate::store::cluster::ClusterEntry::parse(raw) else {
                continue;
            };
            if entry.expire_at_ms + marker_ttl_ms > now_ms
                || matches!(
                    entry.state,
                    crate::store::cluster::EntryState::Claimed { .. }
                        | crate::store::cluster::EntryState::Decided { applied: false, .. }
                )
            {
                continue;
            }
            let mut groups: Vec<u32> = entry
                .lines
                .iter()
                .map(|(k, _)| self.keys.group(*k))
                .collect();
            groups.sort_unstable();
            groups.dedup();
            let mut live = false;
            for g in &groups {
                let raw: Option<String> = self
                    .timed(
                        redis::cmd("HGET")
                            .arg(self.keys.orders(*g))
                            .arg(order_no)
                            .query_async(&mut conn),
                    )
                    .await?;
                live |= raw.is_some_and(|r| r.contains(":RESERVED") || r.contains(":PENDING"));
            }
            if live {
                continue;
            }
            for g in &groups {
                let mut pipe = redis::pipe();
                pipe.cmd("HDEL")
                    .arg(self.keys.orders(*g))
                    .arg(order_no)
                    .ignore();
                pipe.cmd("ZREM")
                    .arg(self.keys.holds(*g))
                    .arg(order_no)
                    .ignore();
                let () = self.timed(pipe.query_async(&mut conn)).await?;
            }
            let mut settle = self.scripts.settle.key(&key);
            settle.arg(1).arg(order_no).arg(&entry.head).arg("DROP");
            self.run_script_one("settle", &settle).await?;
            removed += 1;
        }
        let drops: Vec<(String, String, String)> = tombstones
            .into_iter()
            .map(|(no, raw)| (no, raw, "DROP_TOMBSTONE".to_string()))
            .collect();
        removed += self.settle_counting(&drops).await?;
        let next = if next != 0 {
            (u64::from(shard) << 48) | (next & LOW)
        } else if shard + 1 < self.keys.groups() {
            u64::from(shard + 1) << 48
        } else {
            0
        };
        Ok((next, removed))
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

    /// Who holds the supervisor lease now: (instance id, fencing token); None when no one.
    pub async fn lease_holder(&self) -> RedisResult<Option<(String, i64)>> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = self
            .timed(
                redis::cmd("GET")
                    .arg(self.keys.leader())
                    .query_async(&mut conn),
            )
            .await?;
        Ok(raw.and_then(|v| {
            let (owner, token) = v.rsplit_once('|')?;
            Some((owner.to_string(), token.parse().ok()?))
        }))
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

    /// Every position Redis holds a stock hash for, from the groups' registries (no
    /// keyspace SCAN). A Redis written by a version without registries is registered by
    /// one SCAN, the first time; `inv:meta` field `registry` records that it was.
    pub async fn registered_positions(&self) -> RedisResult<Vec<SkuKey>> {
        let mut conn = self.conn.clone();
        let registered: Option<String> = self
            .timed(
                redis::cmd("HGET")
                    .arg(self.keys.meta())
                    .arg("registry")
                    .query_async(&mut conn),
            )
            .await?;
        // A cluster was never written without registries (and SCAN reaches one node).
        if registered.is_none() && self.is_cluster() {
            let () = self
                .timed(
                    redis::cmd("HSET")
                        .arg(self.keys.meta())
                        .arg("registry")
                        .arg(1)
                        .query_async(&mut conn),
                )
                .await?;
        } else if registered.is_none() {
            let scanned: Vec<SkuKey> = self
                .scan_keys(&self.keys.stock_pattern())
                .await?
                .iter()
                .filter_map(|k| self.keys.parse_stock_key(k))
                .collect();
            for chunk in scanned.chunks(1000) {
                let mut pipe = redis::pipe();
                for key in chunk {
                    pipe.cmd("SADD")
                        .arg(self.keys.positions(self.keys.group(*key)))
                        .arg(Keys::position_member(*key))
                        .ignore();
                }
                let () = self.query_pipe(&pipe).await?;
            }
            let () = self
                .timed(
                    redis::cmd("HSET")
                        .arg(self.keys.meta())
                        .arg("registry")
                        .arg(1)
                        .query_async(&mut conn),
                )
                .await?;
            tracing::info!(
                positions = scanned.len(),
                "position registries filled from a keyspace scan (once)"
            );
        }
        let mut out = Vec::new();
        for group in 0..self.keys.groups() {
            let registry = self.keys.positions(group);
            let mut cursor: u64 = 0;
            loop {
                let (next, members): (u64, Vec<String>) = self
                    .timed(
                        redis::cmd("SSCAN")
                            .arg(&registry)
                            .arg(cursor)
                            .arg("COUNT")
                            .arg(1000)
                            .query_async(&mut conn),
                    )
                    .await?;
                out.extend(
                    members
                        .iter()
                        .filter_map(|m| Keys::parse_position_member(m)),
                );
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Loads a position and the orders with lines in it from the DB where Redis lacks
    /// them. Returns (stock loaded, orders restored), or None when `fence` (a leader's lease
    /// token; 0 for none) was refused: a newer leader raised the group's fence.
    pub async fn rebuild_position(
        &self,
        key: SkuKey,
        levels: StockLevels,
        orders: &[OrderSnapshot],
        fence: i64,
    ) -> RedisResult<Option<(bool, usize)>> {
        let mut loaded = false;
        let mut restored = 0;
        let group = self.keys.group(key);
        // Bounded script calls: a hot SKU may have many orders.
        let chunks: Vec<&[OrderSnapshot]> = if orders.is_empty() {
            vec![&[]]
        } else {
            orders.chunks(500).collect()
        };
        for chunk in chunks {
            let cluster = self.is_cluster();
            let mut invocation = self.scripts.rebuild.key(self.keys.stock(key));
            invocation
                // On a cluster the directory shards are in other slots: written below.
                .key(if cluster {
                    self.keys.orders(group)
                } else {
                    self.keys.directory()
                })
                .key(self.keys.orders(group))
                .key(self.keys.holds(group))
                .key(self.keys.positions(group))
                .arg(levels.available)
                .arg(levels.reserved)
                .arg(levels.confirmed)
                .arg(levels.seq)
                .arg(chunk.len())
                .arg(Keys::position_member(key))
                .arg(fence);
            for order in chunk {
                let listed = DirectoryEntry::Order {
                    expire_at_ms: order.expire_at_ms,
                    lines: order.lines.iter().map(|l| (l.key, l.qty)).collect(),
                };
                let record = OrderRecord {
                    expire_at_ms: order.expire_at_ms,
                    lines: order
                        .lines
                        .iter()
                        .filter(|l| self.keys.group(l.key) == group)
                        .copied()
                        .collect(),
                };
                let held = record
                    .lines
                    .iter()
                    .any(|l| l.status == ReservationStatus::Reserved);
                invocation
                    .arg(&order.order_no)
                    .arg(if cluster {
                        String::new()
                    } else {
                        listed.format()
                    })
                    .arg(record.format())
                    .arg(order.expire_at_ms)
                    .arg(if held { "1" } else { "0" });
            }
            let item = self.run_script_one("rebuild", &invocation).await?;
            if item.status == "FENCED" {
                return Ok(None);
            }
            if cluster && !chunk.is_empty() {
                self.rebuild_directory_cluster(chunk).await?;
            }
            loaded |= item.status == "LOADED";
            restored += item
                .n
                .first()
                .and_then(|n| usize::try_from(*n).ok())
                .ok_or_else(|| RedisStoreError::BadReply {
                    script: "rebuild",
                    detail: format!("restored count {:?}", item.n.first()),
                })?;
        }
        Ok(Some((loaded, restored)))
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
        fence: i64,
    ) -> RedisResult<RepairOutcome> {
        let mut invocation = self.scripts.reconcile.key(self.keys.stock(key));
        invocation
            .key(self.keys.journal(self.keys.group(key)))
            .key(self.keys.orders(self.keys.group(key)))
            .arg(expected_seq)
            .arg(target.available)
            .arg(target.reserved)
            .arg(target.confirmed)
            .arg(key.warehouse_id)
            .arg(key.sku_id)
            .arg(chrono::Utc::now().timestamp_millis())
            .arg(crate::store::wire::remark(remark, 255))
            .arg(crate::store::wire::word(trace_id, 64))
            .arg(fence);
        let item = self.run_script_one("reconcile", &invocation).await?;
        match item.status.as_str() {
            "OK" => Ok(RepairOutcome::Repaired { seq: item.n[0] }),
            "CHANGED" => Ok(RepairOutcome::Changed),
            "FENCED" => Ok(RepairOutcome::Fenced),
            other => Err(RedisStoreError::BadReply {
                script: "reconcile",
                detail: format!("status {other}"),
            }),
        }
    }
}

/// What a reconciliation repair did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairOutcome {
    /// Written as a journalled RECONCILE change; the position's new seq.
    Repaired { seq: i64 },
    /// The position changed since it was compared: nothing written.
    Changed,
    /// A newer supervisor lease's token was seen: this run no longer leads.
    Fenced,
}
