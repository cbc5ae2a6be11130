//! The Redis side: one wrapper that owns key naming, the Lua scripts (called by SHA with
//! EVAL fallback) and typed operations.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, FromRedisValue, Script, Value};

use crate::config::RedisSettings;
use crate::domain::{SkuKey, StockLevels};

#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis call timed out after {0:?}")]
    Timeout(Duration),
    #[error("unexpected reply from script {script}: {detail}")]
    BadReply {
        script: &'static str,
        detail: String,
    },
}

pub type RedisResult<T> = Result<T, RedisStoreError>;

/// Key naming. Keys of one position share the hash tag `{warehouse:sku}` so one script may
/// touch them together (Redis Cluster places them in one slot).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash `{avail, reserved, confirmed, seq}` of one position.
    pub fn stock(&self, key: SkuKey) -> String {
        format!("{}inv:{{{}:{}}}", self.prefix, key.warehouse_id, key.sku_id)
    }

    /// Marker of one reservation line, the string `<state> <qty> <expireAt ms>` with a PX
    /// expiry: idempotency, and confirm-vs-release races decided in Redis.
    pub fn line(&self, key: SkuKey, order_no: &str) -> String {
        format!(
            "{}inv:{{{}:{}}}:r:{}",
            self.prefix, key.warehouse_id, key.sku_id, order_no
        )
    }

    /// Marker of one stock adjustment request (idempotency of admin calls).
    pub fn adjustment(&self, key: SkuKey, request_id: &str) -> String {
        format!(
            "{}inv:{{{}:{}}}:adj:{}",
            self.prefix, key.warehouse_id, key.sku_id, request_id
        )
    }

    /// The positions of one order, the string `w:s w:s ...` with a PX expiry; or `!`, a
    /// tombstone left by a release of an order we never saw (its late reservation is
    /// refused).
    pub fn order(&self, order_no: &str) -> String {
        format!("{}inv:ord:{{{}}}", self.prefix, order_no)
    }

    /// Orders with held lines, scored by expiry (ms): the expiry scan reads it.
    pub fn holds(&self) -> String {
        format!("{}inv:holds", self.prefix)
    }

    /// The supervisor's lease and its fencing counter.
    pub fn leader(&self) -> String {
        format!("{}inv:leader", self.prefix)
    }

    pub fn leader_token(&self) -> String {
        format!("{}inv:leader:token", self.prefix)
    }

    /// Set when Redis was loaded from the DB; its absence means Redis lost its data.
    pub fn epoch(&self) -> String {
        format!("{}inv:epoch", self.prefix)
    }

    /// The stream every stock change is appended to.
    pub fn journal(&self) -> String {
        format!("{}inv:journal", self.prefix)
    }

    /// Pattern matching every stock hash (for scans in tests and reconciliation).
    pub fn stock_pattern(&self) -> String {
        format!("{}inv:{{*}}", self.prefix)
    }
}

pub(super) struct Scripts {
    pub(super) adjust: Script,
    pub(super) warmup: Script,
    pub(super) sync: Script,
    pub(super) reserve: Script,
    pub(super) confirm: Script,
    pub(super) release: Script,
    pub(super) lease: Script,
    pub(super) rebuild: Script,
    pub(super) reconcile: Script,
}

impl Scripts {
    fn load() -> Self {
        Scripts {
            adjust: Script::new(include_str!("../../lua/adjust.lua")),
            warmup: Script::new(include_str!("../../lua/warmup.lua")),
            sync: Script::new(include_str!("../../lua/sync.lua")),
            reserve: Script::new(include_str!("../../lua/reserve.lua")),
            confirm: Script::new(include_str!("../../lua/confirm.lua")),
            release: Script::new(include_str!("../../lua/release.lua")),
            lease: Script::new(include_str!("../../lua/lease.lua")),
            rebuild: Script::new(include_str!("../../lua/rebuild.lua")),
            reconcile: Script::new(include_str!("../../lua/reconcile.lua")),
        }
    }
}

/// A request to change available stock.
#[derive(Debug, Clone)]
pub struct AdjustCommand<'a> {
    pub key: SkuKey,
    pub delta: i64,
    pub max_available: i64,
    pub reason: &'a str,
    pub trace_id: &'a str,
    pub request_id: Option<&'a str>,
    pub remark: &'a str,
    pub marker_ttl_secs: u64,
    pub max_journal_entries: u64,
    pub create_if_missing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdjustOutcome {
    Applied {
        levels: StockLevels,
        journal_id: String,
    },
    /// The same request id was applied before with the same delta.
    AlreadyApplied {
        levels: StockLevels,
    },
    /// The same request id was applied before with another delta.
    Conflict {
        first_delta: i64,
    },
    Missing,
    Insufficient {
        levels: StockLevels,
    },
    LimitExceeded {
        levels: StockLevels,
    },
    JournalFull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStatus {
    Loaded,
    Pending,
    InSync,
    Overwritten,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncOutcome {
    pub status: SyncStatus,
    /// None when Redis did not have the position.
    pub available_before: Option<i64>,
    pub available_after: i64,
    pub seq: i64,
}

/// Journal entries as read by a consumer group.
#[derive(Debug, Clone)]
pub struct JournalEntry {
    pub id: String,
    /// The JSON array of events the script appended.
    pub payload: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalLag {
    /// Entries not yet delivered to the group.
    pub undelivered: u64,
    /// Delivered but not acknowledged.
    pub pending: u64,
    /// Entries in the stream (acknowledged ones wait for the trimmer).
    pub length: u64,
}

impl JournalLag {
    pub fn not_persisted(&self) -> u64 {
        self.undelivered + self.pending
    }
}

#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    manager_config: ConnectionManagerConfig,
    connect_timeout: Duration,
    pub(super) conn: ConnectionManager,
    pub(super) keys: Keys,
    pub(super) scripts: Arc<Scripts>,
    pub(super) timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.keys.prefix)
            .finish()
    }
}

impl RedisStore {
    pub async fn connect(settings: &RedisSettings) -> RedisResult<Self> {
        let client = redis::Client::open(settings.url.expose())?;
        let timeout = Duration::from_millis(settings.command_timeout_ms);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2);
        let connect_timeout = Duration::from_millis(settings.connect_timeout_ms.saturating_mul(3));
        let conn = open_manager(&client, &config, connect_timeout).await?;
        Ok(RedisStore {
            client,
            manager_config: config,
            connect_timeout,
            conn,
            keys: Keys::new(&settings.key_prefix),
            scripts: Arc::new(Scripts::load()),
            timeout,
        })
    }

    /// The same store on a connection of its own: blocking reads (XREADGROUP BLOCK) must
    /// not stall the shared multiplexed connection that serves requests.
    pub async fn dedicated(&self) -> RedisResult<RedisStore> {
        // Our own timeout (block time + command timeout) bounds each call here.
        let config = self.manager_config.clone().set_response_timeout(None);
        let conn = open_manager(&self.client, &config, self.connect_timeout).await?;
        Ok(RedisStore {
            conn,
            ..self.clone()
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A connection handle (multiplexed; cheap to clone).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    pub(super) async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> RedisResult<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(RedisStoreError::Timeout(self.timeout)),
        }
    }

    pub async fn ping(&self) -> RedisResult<()> {
        let mut conn = self.conn.clone();
        let _: String = self
            .timed(redis::cmd("PING").query_async(&mut conn))
            .await?;
        Ok(())
    }

    /// Redis' `maxmemory-policy`, when the server lets us read it (managed services may not).
    pub async fn eviction_policy(&self) -> Option<String> {
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self
            .timed(
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("maxmemory-policy")
                    .query_async(&mut conn),
            )
            .await
            .ok()?;
        reply.get(1).cloned()
    }

    pub async fn stock(&self, key: SkuKey) -> RedisResult<Option<StockLevels>> {
        let mut conn = self.conn.clone();
        let values: HashMap<String, i64> = self.timed(conn.hgetall(self.keys.stock(key))).await?;
        if values.is_empty() {
            return Ok(None);
        }
        Ok(Some(StockLevels {
            available: values.get("avail").copied().unwrap_or(0),
            reserved: values.get("reserved").copied().unwrap_or(0),
            confirmed: values.get("confirmed").copied().unwrap_or(0),
            seq: values.get("seq").copied().unwrap_or(0),
        }))
    }

    pub async fn available(&self, key: SkuKey) -> RedisResult<Option<i64>> {
        let mut conn = self.conn.clone();
        self.timed(conn.hget(self.keys.stock(key), "avail")).await
    }

    pub async fn adjust(&self, cmd: &AdjustCommand<'_>) -> RedisResult<AdjustOutcome> {
        let mut conn = self.conn.clone();
        let marker = match cmd.request_id {
            Some(id) => self.keys.adjustment(cmd.key, id),
            // The key is declared even when unused so that the script's KEYS are fixed.
            None => self.keys.adjustment(cmd.key, ""),
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut invocation = self.scripts.adjust.key(self.keys.stock(cmd.key));
        invocation
            .key(self.keys.journal())
            .key(marker)
            .arg(cmd.key.warehouse_id)
            .arg(cmd.key.sku_id)
            .arg(cmd.delta)
            .arg(cmd.max_available)
            .arg(cmd.reason)
            .arg(cmd.trace_id)
            .arg(cmd.request_id.unwrap_or(""))
            .arg(cmd.marker_ttl_secs)
            .arg(cmd.max_journal_entries)
            .arg(now_ms)
            .arg(cmd.remark)
            .arg(if cmd.create_if_missing { "1" } else { "0" });
        let reply: Vec<Value> = self.timed(invocation.invoke_async(&mut conn)).await?;
        let (status, levels, id) = parse_levels_reply("adjust", &reply)?;
        Ok(match status.as_str() {
            "OK" => AdjustOutcome::Applied {
                levels,
                journal_id: id,
            },
            "EXISTS" => AdjustOutcome::AlreadyApplied { levels },
            "CONFLICT" => AdjustOutcome::Conflict {
                first_delta: levels.available,
            },
            "MISSING" => AdjustOutcome::Missing,
            "INSUFFICIENT" => AdjustOutcome::Insufficient { levels },
            "LIMIT" => AdjustOutcome::LimitExceeded { levels },
            "JOURNAL_FULL" => AdjustOutcome::JournalFull,
            other => {
                return Err(RedisStoreError::BadReply {
                    script: "adjust",
                    detail: format!("status {other}"),
                })
            }
        })
    }

    /// Loads positions that Redis does not have; returns how many were loaded.
    pub async fn warm_up(&self, positions: &[(SkuKey, StockLevels)]) -> RedisResult<usize> {
        if positions.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn.clone();
        // Make sure the script is cached so the pipelined EVALSHAs below find it.
        let _: String = self
            .timed(self.scripts.warmup.prepare_invoke().load_async(&mut conn))
            .await?;
        let mut pipe = redis::pipe();
        for (key, levels) in positions {
            pipe.invoke_script(
                self.scripts
                    .warmup
                    .key(self.keys.stock(*key))
                    .arg(levels.available)
                    .arg(levels.reserved)
                    .arg(levels.confirmed)
                    .arg(levels.seq),
            );
        }
        let loaded: Vec<i64> = self.timed(pipe.query_async(&mut conn)).await?;
        Ok(loaded.iter().filter(|&&n| n == 1).count())
    }

    pub async fn sync(&self, key: SkuKey, db: StockLevels) -> RedisResult<SyncOutcome> {
        let mut conn = self.conn.clone();
        let mut invocation = self.scripts.sync.key(self.keys.stock(key));
        invocation
            .arg(db.available)
            .arg(db.reserved)
            .arg(db.confirmed)
            .arg(db.seq);
        let reply: Vec<Value> = self.timed(invocation.invoke_async(&mut conn)).await?;
        let bad = |detail: String| RedisStoreError::BadReply {
            script: "sync",
            detail,
        };
        if reply.len() != 4 {
            return Err(bad(format!("{} values", reply.len())));
        }
        let status = String::from_redis_value(reply[0].clone()).map_err(|e| bad(e.to_string()))?;
        let before = i64::from_redis_value(reply[1].clone()).map_err(|e| bad(e.to_string()))?;
        let after = i64::from_redis_value(reply[2].clone()).map_err(|e| bad(e.to_string()))?;
        let seq = i64::from_redis_value(reply[3].clone()).map_err(|e| bad(e.to_string()))?;
        let status = match status.as_str() {
            "LOADED" => SyncStatus::Loaded,
            "PENDING" => SyncStatus::Pending,
            "IN_SYNC" => SyncStatus::InSync,
            "OVERWRITTEN" => SyncStatus::Overwritten,
            other => return Err(bad(format!("status {other}"))),
        };
        Ok(SyncOutcome {
            status,
            available_before: (before >= 0).then_some(before),
            available_after: after,
            seq,
        })
    }

    // ----- journal -----

    /// Creates the consumer group (and the stream) if missing.
    pub async fn ensure_journal_group(&self, group: &str) -> RedisResult<()> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(self.keys.journal())
            .arg(group)
            .arg("0")
            .arg("MKSTREAM");
        let create = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(self.timeout, create).await {
            Err(_) => Err(RedisStoreError::Timeout(self.timeout)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.code() == Some("BUSYGROUP") => Ok(()),
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// Reads up to `count` entries: `start = ">"` for new ones, `"0"` for this consumer's
    /// pending ones. Blocks up to `block` when there are none.
    pub async fn read_journal(
        &self,
        group: &str,
        consumer: &str,
        start: &str,
        count: usize,
        block: Option<Duration>,
    ) -> RedisResult<Vec<JournalEntry>> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(self.keys.journal()).arg(start);
        // A blocking read may legitimately take `block` plus the usual call time.
        let limit = self.timeout + block.unwrap_or_default();
        let reply: Value = match tokio::time::timeout(limit, cmd.query_async(&mut conn)).await {
            Ok(reply) => reply?,
            Err(_) => return Err(RedisStoreError::Timeout(limit)),
        };
        parse_stream_read(&reply)
    }

    /// Claims entries another consumer left pending for longer than `min_idle`.
    pub async fn claim_stale(
        &self,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> RedisResult<Vec<JournalEntry>> {
        let mut conn = self.conn.clone();
        let reply: Value = self
            .timed(
                redis::cmd("XAUTOCLAIM")
                    .arg(self.keys.journal())
                    .arg(group)
                    .arg(consumer)
                    .arg(min_idle.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut conn),
            )
            .await?;
        // [next-start, [[id, [field, value...]]...], [deleted ids]]
        match reply {
            Value::Array(parts) if parts.len() >= 2 => parse_entries(&parts[1]),
            other => Err(RedisStoreError::BadReply {
                script: "XAUTOCLAIM",
                detail: format!("{other:?}"),
            }),
        }
    }

    pub async fn ack_journal(&self, group: &str, ids: &[String]) -> RedisResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let _: i64 = self
            .timed(conn.xack(self.keys.journal(), group, ids))
            .await?;
        Ok(())
    }

    pub async fn journal_lag(&self, group: &str) -> RedisResult<JournalLag> {
        let mut conn = self.conn.clone();
        let journal = self.keys.journal();
        let groups: Value = self
            .timed(
                redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&journal)
                    .query_async(&mut conn),
            )
            .await
            .or_else(|e| match &e {
                RedisStoreError::Redis(re) if re.to_string().contains("no such key") => {
                    Ok(Value::Array(vec![]))
                }
                _ => Err(e),
            })?;
        let length: u64 = self.timed(conn.xlen(&journal)).await?;
        let mut lag = JournalLag {
            length,
            ..JournalLag::default()
        };
        for info in value_maps(&groups) {
            if info.get("name").and_then(value_string).as_deref() != Some(group) {
                continue;
            }
            lag.pending = info.get("pending").and_then(value_u64).unwrap_or(0);
            lag.undelivered = match info.get("lag").and_then(value_u64) {
                Some(n) => n,
                // Redis answers nil when it cannot tell; everything not acknowledged then.
                None => length.saturating_sub(lag.pending),
            };
        }
        Ok(lag)
    }

    /// Removes entries every group has acknowledged. Returns how many were removed.
    pub async fn trim_journal(&self) -> RedisResult<u64> {
        let mut conn = self.conn.clone();
        let journal = self.keys.journal();
        let groups: Value = self
            .timed(
                redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&journal)
                    .query_async(&mut conn),
            )
            .await?;
        let mut keep_from: Option<(u64, u64)> = None;
        for info in value_maps(&groups) {
            let name = info.get("name").and_then(value_string).unwrap_or_default();
            let pending = info.get("pending").and_then(value_u64).unwrap_or(0);
            let bound = if pending > 0 {
                let summary: Value = self
                    .timed(
                        redis::cmd("XPENDING")
                            .arg(&journal)
                            .arg(&name)
                            .query_async(&mut conn),
                    )
                    .await?;
                match summary {
                    Value::Array(parts) if parts.len() >= 2 => value_string(&parts[1]),
                    _ => None,
                }
            } else {
                info.get("last-delivered-id").and_then(value_string)
            };
            // A group we cannot read keeps everything.
            let Some(bound) = bound.as_deref().and_then(parse_stream_id) else {
                return Ok(0);
            };
            keep_from = Some(match keep_from {
                Some(current) if current <= bound => current,
                _ => bound,
            });
        }
        let Some((ms, seq)) = keep_from else {
            return Ok(0);
        };
        let removed: u64 = self
            .timed(
                redis::cmd("XTRIM")
                    .arg(&journal)
                    .arg("MINID")
                    .arg(format!("{ms}-{seq}"))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(removed)
    }
}

async fn open_manager(
    client: &redis::Client,
    config: &ConnectionManagerConfig,
    limit: Duration,
) -> RedisResult<ConnectionManager> {
    tokio::time::timeout(
        limit,
        ConnectionManager::new_with_config(client.clone(), config.clone()),
    )
    .await
    .map_err(|_| RedisStoreError::Timeout(limit))?
    .map_err(RedisStoreError::from)
}

fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

pub(super) fn value_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn value_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(_) | Value::SimpleString(_) => value_string(v)?.parse().ok(),
        _ => None,
    }
}

/// XINFO answers a list of flat [field, value, ...] lists (or maps under RESP3).
fn value_maps(v: &Value) -> Vec<HashMap<String, Value>> {
    let Value::Array(items) = v else {
        return vec![];
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::Array(flat) => Some(
                flat.chunks(2)
                    .filter_map(|pair| match pair {
                        [k, v] => Some((value_string(k)?, v.clone())),
                        _ => None,
                    })
                    .collect(),
            ),
            Value::Map(pairs) => Some(
                pairs
                    .iter()
                    .filter_map(|(k, v)| Some((value_string(k)?, v.clone())))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn parse_levels_reply(
    script: &'static str,
    reply: &[Value],
) -> RedisResult<(String, StockLevels, String)> {
    let bad = |detail: String| RedisStoreError::BadReply { script, detail };
    if reply.len() != 6 {
        return Err(bad(format!("{} values", reply.len())));
    }
    let status = value_string(&reply[0]).ok_or_else(|| bad("status".into()))?;
    let num = |i: usize| -> RedisResult<i64> {
        match &reply[i] {
            Value::Int(n) => Ok(*n),
            other => value_string(other)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(format!("value {i}: {other:?}"))),
        }
    };
    let levels = StockLevels {
        available: num(1)?,
        reserved: num(2)?,
        confirmed: num(3)?,
        seq: num(4)?,
    };
    let id = value_string(&reply[5]).unwrap_or_default();
    Ok((status, levels, id))
}

/// XREADGROUP reply: [[stream, [[id, [field, value, ...]], ...]]] (or a map under RESP3),
/// nil when the block timed out.
fn parse_stream_read(reply: &Value) -> RedisResult<Vec<JournalEntry>> {
    match reply {
        Value::Nil => Ok(vec![]),
        Value::Array(streams) => {
            let mut out = Vec::new();
            for stream in streams {
                if let Value::Array(parts) = stream {
                    if parts.len() == 2 {
                        out.extend(parse_entries(&parts[1])?);
                    }
                }
            }
            Ok(out)
        }
        Value::Map(streams) => {
            let mut out = Vec::new();
            for (_, entries) in streams {
                out.extend(parse_entries(entries)?);
            }
            Ok(out)
        }
        other => Err(RedisStoreError::BadReply {
            script: "XREADGROUP",
            detail: format!("{other:?}"),
        }),
    }
}

fn parse_entries(v: &Value) -> RedisResult<Vec<JournalEntry>> {
    let Value::Array(entries) = v else {
        return Ok(vec![]);
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else { continue };
        if parts.len() != 2 {
            continue;
        }
        let Some(id) = value_string(&parts[0]) else {
            continue;
        };
        // A claimed entry that was deleted meanwhile has a nil body.
        let payload = match &parts[1] {
            Value::Array(fields) => fields
                .chunks(2)
                .find_map(|pair| match pair {
                    [k, v] if value_string(k).as_deref() == Some("e") => value_string(v),
                    _ => None,
                })
                .unwrap_or_default(),
            _ => String::new(),
        };
        out.push(JournalEntry { id, payload });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_position_hash_tag() {
        let keys = Keys::new("p:");
        let k = SkuKey::new(1, 1001);
        assert_eq!(keys.stock(k), "p:inv:{1:1001}");
        assert_eq!(keys.line(k, "ORD001"), "p:inv:{1:1001}:r:ORD001");
        assert_eq!(keys.adjustment(k, "r1"), "p:inv:{1:1001}:adj:r1");
        assert_eq!(keys.journal(), "p:inv:journal");
    }

    #[test]
    fn stream_ids_compare_numerically() {
        assert!(parse_stream_id("9-1") < parse_stream_id("10-0"));
        assert_eq!(parse_stream_id("nope"), None);
    }
}
