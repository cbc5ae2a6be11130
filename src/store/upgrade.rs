//! Upgrade of a Redis that holds layout 1 (a key per line marker and per order, one global
//! journal and holds set) to the current layout (slot groups, docs/redis-layout.md), at
//! start-up.
//!
//! 1. Drain the layout-1 journal into the DB (every entry, whoever left it pending; the
//!    ledger's unique txn ids make a replay insert nothing).
//! 2. Convert what only Redis holds: tombstones (releases that came before their
//!    reservation) and adjustment request markers (idempotency of admin calls).
//! 3. Delete the layout-1 keys, the epoch key among them, so that start-up rebuilds the
//!    stock, the directory, the order records and the holds from the DB.
//!
//! Each step can be repeated after a crash. Every instance of the old version must be
//! stopped first: the upgrade does not coordinate with one still writing layout 1.

use crate::domain::{SkuId, WarehouseId};
use std::time::Duration;

use redis::Value;

use crate::domain::SkuKey;
use crate::store::db::{self, DbError, DbPool};
use crate::store::journal::{legacy, persist_batch, plan_batch};
use crate::store::redis::{parse_entries, RedisResult, RedisStore, RedisStoreError};

const LEGACY_GROUP: &str = "persist";
const UPGRADE_CONSUMER: &str = "layout-upgrade";

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(transparent)]
    Redis(#[from] RedisStoreError),
    #[error(transparent)]
    Db(#[from] DbError),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeReport {
    pub journal_entries: usize,
    pub tombstones: usize,
    pub adjustment_markers: usize,
    pub keys_deleted: usize,
}

impl RedisStore {
    fn legacy_key(&self, name: &str) -> String {
        format!("{}inv:{name}", self.keys.prefix())
    }

    /// Layout-1 keys: position keys `inv:{w:s}...`, order indexes `inv:ord:{orderNo}`, and
    /// the global journal, holds and epoch. (Layout-2 keys never have a colon inside
    /// their hash tag, so the patterns cannot match them.)
    async fn legacy_keys(&self) -> RedisResult<Vec<String>> {
        let prefix = self.keys.prefix();
        let mut keys = self.scan_keys(&format!("{prefix}inv:{{*:*}}*")).await?;
        keys.extend(self.scan_keys(&format!("{prefix}inv:ord:*")).await?);
        for name in ["journal", "holds"] {
            let key = self.legacy_key(name);
            let mut conn = self.conn.clone();
            let exists: i64 = self
                .timed(redis::cmd("EXISTS").arg(&key).query_async(&mut conn))
                .await?;
            if exists == 1 {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    async fn drain_legacy_journal(&self, pool: &DbPool) -> Result<usize, UpgradeError> {
        let journal = self.legacy_key("journal");
        let mut conn = self.conn.clone();
        let exists: i64 = self
            .timed(redis::cmd("EXISTS").arg(&journal).query_async(&mut conn))
            .await?;
        if exists == 0 {
            return Ok(0);
        }
        // From the start: entries already persisted insert nothing again.
        let created: redis::RedisResult<String> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&journal)
            .arg(LEGACY_GROUP)
            .arg("0")
            .query_async(&mut conn)
            .await;
        if let Err(e) = created {
            if e.code() != Some("BUSYGROUP") {
                return Err(RedisStoreError::from(e).into());
            }
        }
        let mut drained = 0;
        loop {
            // What any consumer left pending, then what none was given yet.
            let claimed: Value = self
                .timed(
                    redis::cmd("XAUTOCLAIM")
                        .arg(&journal)
                        .arg(LEGACY_GROUP)
                        .arg(UPGRADE_CONSUMER)
                        .arg(0)
                        .arg("0-0")
                        .arg("COUNT")
                        .arg(500)
                        .query_async(&mut conn),
                )
                .await?;
            let mut entries = match &claimed {
                Value::Array(parts) => match parts.get(1) {
                    Some(body) => parse_entries(0, body)?,
                    None => vec![],
                },
                _ => vec![],
            };
            if entries.is_empty() {
                let read: Value = self
                    .timed(
                        redis::cmd("XREADGROUP")
                            .arg("GROUP")
                            .arg(LEGACY_GROUP)
                            .arg(UPGRADE_CONSUMER)
                            .arg("COUNT")
                            .arg(500)
                            .arg("STREAMS")
                            .arg(&journal)
                            .arg(">")
                            .query_async(&mut conn),
                    )
                    .await?;
                if let Value::Array(streams) = &read {
                    for stream in streams {
                        if let Value::Array(parts) = stream {
                            if let [_, body] = parts.as_slice() {
                                entries.extend(parse_entries(0, body)?);
                            }
                        }
                    }
                }
            }
            if entries.is_empty() {
                return Ok(drained);
            }
            let mut parsed = Vec::with_capacity(entries.len());
            for entry in &entries {
                match legacy::parse_entry(&entry.id, &entry.payload) {
                    // Layout 1's txn ids were `<entry id>-<index>`: kept, so that what it
                    // persisted already is recognised.
                    Ok(lines) => parsed.push((entry.id.clone(), lines)),
                    Err(e) => {
                        tracing::error!(error = %e, payload = %entry.payload, "unreadable layout-1 journal entry skipped")
                    }
                }
            }
            let writes = plan_batch(&parsed);
            {
                let mut db = db::connection(pool).await?;
                persist_batch(&mut db, &writes)
                    .await
                    .map_err(DbError::from)?;
            }
            let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
            let _: i64 = self
                .timed(
                    redis::cmd("XACK")
                        .arg(&journal)
                        .arg(LEGACY_GROUP)
                        .arg(&ids)
                        .query_async(&mut conn),
                )
                .await?;
            drained += entries.len();
        }
    }

    /// Tombstones of layout 1 (`inv:ord:{orderNo}` = `!`) into the directory, with the
    /// time they had left.
    async fn convert_legacy_tombstones(&self, keys: &[String], now_ms: i64) -> RedisResult<usize> {
        let head = format!("{}inv:ord:{{", self.keys.prefix());
        let mut converted = 0;
        for key in keys {
            let Some(order_no) = key.strip_prefix(&head).and_then(|k| k.strip_suffix('}')) else {
                continue;
            };
            let mut conn = self.conn.clone();
            let (value, ttl_ms): (Option<String>, i64) = self
                .timed(
                    redis::pipe()
                        .cmd("GET")
                        .arg(key)
                        .cmd("PTTL")
                        .arg(key)
                        .query_async(&mut conn),
                )
                .await?;
            if value.as_deref() == Some("!") && ttl_ms > 0 {
                self.tombstone(order_no, now_ms + ttl_ms).await?;
                converted += 1;
            }
        }
        Ok(converted)
    }

    /// Adjustment request markers `inv:{w:s}:adj:<requestId>` to their layout-2 keys.
    async fn convert_legacy_adjustments(&self, keys: &[String]) -> RedisResult<usize> {
        let head = format!("{}inv:{{", self.keys.prefix());
        let mut converted = 0;
        for key in keys {
            let Some(rest) = key.strip_prefix(&head) else {
                continue;
            };
            let Some((position, request_id)) = rest.split_once("}:adj:") else {
                continue;
            };
            let Some((w, s)) = position.split_once(':') else {
                continue;
            };
            let (Ok(w), Ok(s)) = (w.parse(), s.parse()) else {
                continue;
            };
            let target = self
                .keys
                .adjustment(SkuKey::new(WarehouseId(w), SkuId(s)), request_id);
            let mut conn = self.conn.clone();
            let (delta, ttl_ms): (Option<String>, i64) = self
                .timed(
                    redis::pipe()
                        .cmd("HGET")
                        .arg(key)
                        .arg("delta")
                        .cmd("PTTL")
                        .arg(key)
                        .query_async(&mut conn),
                )
                .await?;
            let Some(delta) = delta else { continue };
            let mut pipe = redis::pipe();
            pipe.cmd("HSET")
                .arg(&target)
                .arg("delta")
                .arg(delta)
                .ignore();
            if ttl_ms > 0 {
                pipe.cmd("PEXPIRE").arg(&target).arg(ttl_ms).ignore();
            }
            let _: () = self.timed(pipe.query_async(&mut conn)).await?;
            converted += 1;
        }
        Ok(converted)
    }

    /// Upgrades layout 1 in place when Redis holds it and no layout record yet (see the
    /// module doc). Returns what it did; nothing when there is nothing to upgrade.
    pub async fn upgrade_from_layout_1(
        &self,
        pool: &DbPool,
        now_ms: i64,
    ) -> Result<UpgradeReport, UpgradeError> {
        let mut report = UpgradeReport::default();
        // Layout 1 never ran on a cluster.
        if self.is_cluster() || self.layout_meta().await?.is_some() {
            return Ok(report);
        }
        // Layout 1 always kept its epoch key (and a journal and holds once used); without
        // them there is nothing to upgrade, and no SCAN of the whole keyspace is needed.
        let mut conn = self.conn.clone();
        let signs: i64 = self
            .timed(
                redis::cmd("EXISTS")
                    .arg(self.legacy_key("epoch"))
                    .arg(self.legacy_key("journal"))
                    .arg(self.legacy_key("holds"))
                    .query_async(&mut conn),
            )
            .await?;
        if signs == 0 {
            return Ok(report);
        }
        let keys = self.legacy_keys().await?;
        if keys.is_empty() {
            return Ok(report);
        }
        tracing::warn!(
            keys = keys.len(),
            "redis holds layout 1: upgrading to the current layout"
        );
        report.journal_entries = self.drain_legacy_journal(pool).await?;
        report.tombstones = self.convert_legacy_tombstones(&keys, now_ms).await?;
        report.adjustment_markers = self.convert_legacy_adjustments(&keys).await?;
        let mut doomed = keys;
        doomed.push(self.legacy_key("epoch"));
        let mut conn = self.conn.clone();
        for chunk in doomed.chunks(500) {
            let deleted: usize = tokio::time::timeout(
                Duration::from_secs(30),
                redis::cmd("UNLINK").arg(chunk).query_async(&mut conn),
            )
            .await
            .map_err(|_| RedisStoreError::Timeout(Duration::from_secs(30)))?
            .map_err(RedisStoreError::from)?;
            report.keys_deleted += deleted;
        }
        tracing::warn!(
            ?report,
            "layout 1 upgraded; the DB now rebuilds the current layout"
        );
        Ok(report)
    }
}
