//! The Redis side: one wrapper that owns key naming, the Lua scripts (called by SHA with
//! EVAL fallback) and typed operations.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::{AsyncCommands, FromRedisValue, Script, Value};

use crate::config::RedisSettings;
use crate::domain::{SkuKey, StockLevels};
use crate::store::conn::RedisConn;
use crate::store::wire::{self, parse_reply, BadReply, Keys, ReplyItem};

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
    /// Redis holds another layout or another number of groups than this instance's config.
    #[error("{0}")]
    Layout(String),
    /// An outage seen by a shard batch, passed on to every caller of the batch as text
    /// (the redis error itself cannot be cloned) and still retryable.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
}

impl RedisStoreError {
    /// Worth trying again (an outage, a timeout, a failover), as opposed to a bug or a
    /// misconfiguration that would fail the same way every time.
    pub fn is_retryable(&self) -> bool {
        match self {
            RedisStoreError::Timeout(_) | RedisStoreError::Unavailable(_) => true,
            RedisStoreError::Redis(e) => {
                !matches!(e.retry_method(), redis::RetryMethod::NoRetry)
                    // A busy script, a full memory, a failed snapshot and a loading replica
                    // pass; the client files them as NoRetry (codes it does not list).
                    || e.code().is_some_and(|code| {
                        matches!(code, "BUSY" | "OOM" | "MISCONF" | "LOADING" | "TRYAGAIN")
                    })
            }
            RedisStoreError::BadReply { .. } | RedisStoreError::Layout(_) => false,
        }
    }
}

impl From<BadReply> for RedisStoreError {
    fn from(e: BadReply) -> Self {
        RedisStoreError::BadReply {
            script: e.script,
            detail: e.detail,
        }
    }
}

pub type RedisResult<T> = Result<T, RedisStoreError>;

/// Every script is lua/lib.lua followed by its own file.
const LIB: &str = include_str!("../../lua/lib.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{LIB}\n{body}"))
}

pub(super) struct Scripts {
    pub(super) tombstone: Script,
    pub(super) sweep: Script,
    pub(super) adjust: Script,
    pub(super) warmup: Script,
    pub(super) sync: Script,
    pub(super) reserve: Script,
    pub(super) confirm: Script,
    pub(super) release: Script,
    pub(super) expire: Script,
    pub(super) lease: Script,
    pub(super) rebuild: Script,
    pub(super) reconcile: Script,
    pub(super) fence: Script,
    pub(super) claim: Script,
    pub(super) hold: Script,
    pub(super) commit: Script,
    pub(super) abort: Script,
    pub(super) settle: Script,
    pub(super) decide: Script,
    pub(super) route: Script,
    pub(super) confirm_partial: Script,
    pub(super) layout: Script,
}

impl Scripts {
    fn load() -> Self {
        Scripts {
            tombstone: script(include_str!("../../lua/tombstone.lua")),
            sweep: script(include_str!("../../lua/sweep.lua")),
            adjust: script(include_str!("../../lua/adjust.lua")),
            warmup: script(include_str!("../../lua/warmup.lua")),
            sync: script(include_str!("../../lua/sync.lua")),
            reserve: script(include_str!("../../lua/reserve.lua")),
            confirm: script(include_str!("../../lua/confirm.lua")),
            release: script(include_str!("../../lua/release.lua")),
            expire: script(include_str!("../../lua/expire.lua")),
            lease: script(include_str!("../../lua/lease.lua")),
            rebuild: script(include_str!("../../lua/rebuild.lua")),
            reconcile: script(include_str!("../../lua/reconcile.lua")),
            fence: script(include_str!("../../lua/fence.lua")),
            claim: script(include_str!("../../lua/claim.lua")),
            hold: script(include_str!("../../lua/hold.lua")),
            commit: script(include_str!("../../lua/commit.lua")),
            abort: script(include_str!("../../lua/abort.lua")),
            layout: script(include_str!("../../lua/layout.lua")),
            settle: script(include_str!("../../lua/settle.lua")),
            decide: script(include_str!("../../lua/decide.lua")),
            route: script(include_str!("../../lua/route.lua")),
            confirm_partial: script(include_str!("../../lua/confirm_partial.lua")),
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
    /// The slot group whose stream holds the entry.
    pub group: u32,
    pub id: String,
    /// The journal lines the script appended (see `wire::JournalLine`).
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

/// How to open another connection to the same deployment.
#[derive(Clone)]
enum Opener {
    Single {
        client: redis::Client,
        config: ConnectionManagerConfig,
    },
    Cluster {
        /// Without a response timeout: our own per-call timeout bounds the calls.
        unbounded: ClusterClient,
    },
}

/// WAIT after a script's writes (redis.wait_replicas).
#[derive(Debug, Clone, Copy)]
pub(super) struct WaitReplicas {
    pub(super) replicas: u32,
    pub(super) timeout: Duration,
}

#[derive(Clone)]
pub struct RedisStore {
    opener: Opener,
    connect_timeout: Duration,
    pub(super) conn: RedisConn,
    pub(super) keys: Keys,
    pub(super) scripts: Arc<Scripts>,
    pub(super) timeout: Duration,
    pub(super) wait: Option<WaitReplicas>,
    /// Cluster mode: how long a cross-group order may stay PENDING.
    pub(super) pending_deadline_ms: i64,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.keys.prefix())
            .finish()
    }
}

impl RedisStore {
    pub async fn connect(settings: &RedisSettings) -> RedisResult<Self> {
        let timeout = Duration::from_millis(settings.command_timeout_ms);
        let connect_timeout = Duration::from_millis(settings.connect_timeout_ms.saturating_mul(3));
        let nodes = settings.cluster_nodes();
        let (opener, conn) = if nodes.is_empty() {
            let client = redis::Client::open(settings.url.expose())?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(2);
            let conn = open_manager(&client, &config, connect_timeout).await?;
            (Opener::Single { client, config }, RedisConn::Single(conn))
        } else {
            let builder = || {
                ClusterClient::builder(nodes.clone())
                    .connection_timeout(Duration::from_millis(settings.connect_timeout_ms))
                    // MOVED/ASK and a failover are retried by the client, within our own
                    // per-call timeout (`timed`).
                    .retries(6)
                    .min_retry_wait(20)
                    .max_retry_wait(500)
            };
            let client = builder().response_timeout(timeout).build()?;
            let unbounded = builder().build()?;
            let conn = open_cluster(&client, connect_timeout).await?;
            (Opener::Cluster { unbounded }, RedisConn::Cluster(conn))
        };
        let cluster = conn.is_cluster();
        Ok(RedisStore {
            opener,
            connect_timeout,
            conn,
            keys: Keys::new(&settings.key_prefix, settings.groups).on_cluster(cluster),
            scripts: Arc::new(Scripts::load()),
            timeout,
            wait: (settings.wait_replicas > 0).then(|| WaitReplicas {
                replicas: settings.wait_replicas,
                timeout: Duration::from_millis(settings.wait_timeout_ms),
            }),
            pending_deadline_ms: i64::try_from(settings.pending_deadline_ms).unwrap_or(10_000),
        })
    }

    /// The same store on a connection of its own: blocking reads (XREADGROUP BLOCK) must
    /// not stall the shared multiplexed connection that serves requests.
    pub async fn dedicated(&self) -> RedisResult<RedisStore> {
        // Our own timeout (block time + command timeout) bounds each call here.
        let conn = match &self.opener {
            Opener::Single { client, config } => {
                let config = config.clone().set_response_timeout(None);
                RedisConn::Single(open_manager(client, &config, self.connect_timeout).await?)
            }
            Opener::Cluster { unbounded, .. } => {
                RedisConn::Cluster(open_cluster(unbounded, self.connect_timeout).await?)
            }
        };
        Ok(RedisStore {
            conn,
            ..self.clone()
        })
    }

    /// Whether this store talks to a Redis Cluster (scripts and pipelines stay in one slot).
    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    /// Runs the commands of a pipeline: as one pipeline on a single Redis; on a cluster,
    /// where a pipeline must stay in one slot, as concurrent commands (the cluster client
    /// sends them over its per-node connections). Replies in command order either way.
    pub(super) async fn query_pipe<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> RedisResult<T> {
        match &self.conn {
            RedisConn::Single(_) => {
                let mut conn = self.conn.clone();
                self.timed(pipe.query_async(&mut conn)).await
            }
            RedisConn::Cluster(_) => {
                let calls = pipe.cmd_iter().map(|cmd| {
                    let mut conn = self.conn.clone();
                    async move { cmd.query_async::<Value>(&mut conn).await }
                });
                let replies = self
                    .timed(async {
                        futures_util::future::join_all(calls)
                            .await
                            .into_iter()
                            .collect::<redis::RedisResult<Vec<Value>>>()
                    })
                    .await?;
                // Callers of `ignore()`d pipelines ask for (), which takes any reply.
                T::from_redis_value(Value::Array(replies)).map_err(|e| RedisStoreError::BadReply {
                    script: "pipeline",
                    detail: e.to_string(),
                })
            }
        }
    }

    /// A script and then `WAIT n` in one pipeline: WAIT counts the writes of the
    /// connection it arrives on, so it must follow the script on the same one (on a
    /// cluster the pipeline goes to the node of the script's first key). Fewer replicas in
    /// `redis.wait_timeout_ms` is an error: the change stays, the caller gets 503 and its
    /// retry answers "exists". A Redis that lost its script cache is given the script once.
    async fn invoke_and_wait(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        wait: WaitReplicas,
    ) -> RedisResult<Value> {
        let limit = self.timeout + wait.timeout;
        let mut conn = self.conn.clone();
        for attempt in 0..2 {
            let mut pipe = redis::pipe();
            pipe.invoke_script(invocation);
            pipe.cmd("WAIT")
                .arg(wait.replicas)
                .arg(wait.timeout.as_millis() as u64);
            let reply: redis::RedisResult<Vec<Value>> =
                tokio::time::timeout(limit, pipe.query_async(&mut conn))
                    .await
                    .map_err(|_| RedisStoreError::Timeout(limit))?;
            let no_script = |e: &redis::RedisError| {
                matches!(
                    e.kind(),
                    redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                )
            };
            let replies = match reply {
                Err(e) if attempt == 0 && no_script(&e) => {
                    let _: String = self.timed(invocation.load_async(&mut conn)).await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
                Ok(replies) => replies,
            };
            let mut replies = replies.into_iter();
            let (Some(value), Some(acked)) = (replies.next(), replies.next()) else {
                return Err(RedisStoreError::BadReply {
                    script: "WAIT",
                    detail: "a script and WAIT answered fewer than 2 replies".into(),
                });
            };
            if let Value::ServerError(e) = &value {
                let e: redis::RedisError = e.clone().into();
                if attempt == 0 && no_script(&e) {
                    let _: String = self.timed(invocation.load_async(&mut conn)).await?;
                    continue;
                }
                return Err(e.into());
            }
            let acked = match acked {
                Value::Int(n) => n,
                _ => 0,
            };
            if acked < i64::from(wait.replicas) {
                return Err(RedisStoreError::Unavailable(format!(
                    "{acked} of {} replicas acknowledged within {:?}",
                    wait.replicas, wait.timeout
                )));
            }
            return Ok(value);
        }
        Err(RedisStoreError::Unavailable(
            "the script could not be loaded".into(),
        ))
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A connection handle (multiplexed; cheap to clone).
    pub fn connection(&self) -> RedisConn {
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

    /// The levels of many positions in one round trip (a pipeline of HMGETs); None where
    /// Redis does not hold the position.
    pub async fn stock_many(&self, keys: &[SkuKey]) -> RedisResult<Vec<Option<StockLevels>>> {
        if keys.is_empty() {
            return Ok(vec![]);
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("HMGET").arg(self.keys.stock(*key)).arg(&[
                "avail",
                "reserved",
                "confirmed",
                "seq",
            ]);
        }
        let rows: Vec<[Option<i64>; 4]> = self.query_pipe(&pipe).await?;
        Ok(rows
            .into_iter()
            .map(|[avail, reserved, confirmed, seq]| {
                avail.map(|available| StockLevels {
                    available,
                    reserved: reserved.unwrap_or(0),
                    confirmed: confirmed.unwrap_or(0),
                    seq: seq.unwrap_or(0),
                })
            })
            .collect())
    }

    /// Runs a script and reads its reply items.
    pub(super) async fn run_script(
        &self,
        name: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
        items: Option<usize>,
    ) -> RedisResult<Vec<ReplyItem>> {
        let reply: Value = match self.wait {
            None => {
                let mut conn = self.conn.clone();
                self.timed(invocation.invoke_async(&mut conn)).await?
            }
            Some(wait) => self.invoke_and_wait(invocation, wait).await?,
        };
        Ok(parse_reply(name, &reply, items)?)
    }

    /// Runs a script that answers one item.
    pub(super) async fn run_script_one(
        &self,
        name: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> RedisResult<ReplyItem> {
        let mut items = self.run_script(name, invocation, Some(1)).await?;
        items.pop().ok_or_else(|| RedisStoreError::BadReply {
            script: name,
            detail: "no item".into(),
        })
    }

    pub async fn adjust(&self, cmd: &AdjustCommand<'_>) -> RedisResult<AdjustOutcome> {
        let marker = match cmd.request_id {
            Some(id) => self.keys.adjustment(cmd.key, id),
            // The key is declared even when unused so that the script's KEYS are fixed.
            None => self.keys.adjustment(cmd.key, ""),
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut invocation = self.scripts.adjust.key(self.keys.stock(cmd.key));
        invocation
            .key(self.keys.journal(self.keys.group(cmd.key)))
            .key(marker)
            .key(self.keys.positions(self.keys.group(cmd.key)))
            .arg(cmd.key.warehouse_id)
            .arg(cmd.key.sku_id)
            .arg(cmd.delta)
            .arg(cmd.max_available)
            .arg(wire::word(cmd.reason, 50))
            .arg(wire::word(cmd.trace_id, 64))
            .arg(cmd.request_id.unwrap_or(""))
            .arg(cmd.marker_ttl_secs)
            .arg(cmd.max_journal_entries)
            .arg(now_ms)
            .arg(wire::remark(cmd.remark, 255))
            .arg(if cmd.create_if_missing { "1" } else { "0" });
        let item = self.run_script_one("adjust", &invocation).await?;
        let levels = StockLevels {
            available: item.n[0],
            reserved: item.n[1],
            confirmed: item.n[2],
            seq: item.n[3],
        };
        Ok(match item.status.as_str() {
            "OK" => AdjustOutcome::Applied { levels },
            "EXISTS" => AdjustOutcome::AlreadyApplied { levels },
            "CONFLICT" => AdjustOutcome::Conflict {
                first_delta: item.n[0],
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
                    .key(self.keys.positions(self.keys.group(*key)))
                    .arg(levels.available)
                    .arg(levels.reserved)
                    .arg(levels.confirmed)
                    .arg(levels.seq)
                    .arg(Keys::position_member(*key)),
            );
        }
        let replies: Vec<Value> = self.query_pipe(&pipe).await?;
        let mut loaded = 0;
        for reply in &replies {
            for item in parse_reply("warmup", reply, Some(1))? {
                if item.status == "LOADED" {
                    loaded += 1;
                }
            }
        }
        Ok(loaded)
    }

    pub async fn sync(&self, key: SkuKey, db: StockLevels) -> RedisResult<SyncOutcome> {
        let mut invocation = self.scripts.sync.key(self.keys.stock(key));
        invocation
            .key(self.keys.positions(self.keys.group(key)))
            .arg(db.available)
            .arg(db.reserved)
            .arg(db.confirmed)
            .arg(db.seq)
            .arg(Keys::position_member(key));
        let item = self.run_script_one("sync", &invocation).await?;
        let status = match item.status.as_str() {
            "LOADED" => SyncStatus::Loaded,
            "PENDING" => SyncStatus::Pending,
            "IN_SYNC" => SyncStatus::InSync,
            "OVERWRITTEN" => SyncStatus::Overwritten,
            other => {
                return Err(RedisStoreError::BadReply {
                    script: "sync",
                    detail: format!("status {other}"),
                })
            }
        };
        let [before, after, seq, _] = item.n;
        Ok(SyncOutcome {
            status,
            available_before: (before >= 0).then_some(before),
            available_after: after,
            seq,
        })
    }

    /// Keys matching a pattern, all of them (SCAN).
    pub(super) async fn scan_keys(&self, pattern: &str) -> RedisResult<Vec<String>> {
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .timed(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn),
                )
                .await?;
            out.extend(keys);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(out)
    }

    // ----- layout -----

    /// What the meta hash says: (layout, groups), None when Redis has no meta yet.
    pub async fn layout_meta(&self) -> RedisResult<Option<(i64, u32)>> {
        let mut conn = self.conn.clone();
        let values: Vec<Option<i64>> = self
            .timed(
                redis::cmd("HMGET")
                    .arg(self.keys.meta())
                    .arg("layout")
                    .arg("groups")
                    .query_async(&mut conn),
            )
            .await?;
        Ok(match values.as_slice() {
            [Some(layout), Some(groups)] => Some((*layout, u32::try_from(*groups).unwrap_or(0))),
            _ => None,
        })
    }

    /// Records this deployment's layout and groups, unless another instance recorded
    /// them first; then checks that they are ours (start-up refuses otherwise). A record
    /// of layout 2 (the same keys) with our groups is moved to this layout in the same
    /// step (lua/layout.lua), so that an instance of the older version started later
    /// refuses to run beside this one (docs/operations.md, "Upgrading to layout 3").
    pub async fn claim_layout(&self) -> RedisResult<()> {
        let mut invocation = self.scripts.layout.key(self.keys.meta());
        invocation
            .arg(wire::LAYOUT_VERSION)
            .arg(self.keys.groups())
            .arg(wire::LAYOUT_SAME_KEYS);
        let item = self.run_script_one("layout", &invocation).await?;
        if item.status != "LAYOUT" {
            return Err(RedisStoreError::BadReply {
                script: "layout",
                detail: format!("status {}", item.status),
            });
        }
        if item.n[2] == 1 {
            tracing::warn!(
                from = wire::LAYOUT_SAME_KEYS,
                to = wire::LAYOUT_VERSION,
                "redis layout record moved on; instances of the older version refuse to start now"
            );
        }
        // The script answers with the record as it is now: no second read.
        let groups = u32::try_from(item.n[1]).unwrap_or(0);
        self.refuse_other_layout(Some((item.n[0], groups)))
    }

    /// Whether `claim_layout` would move the record on from layout 2 (the same keys, our
    /// groups): start-up first makes sure no older instance still reads the journal.
    pub async fn layout_moves_on(&self) -> RedisResult<bool> {
        Ok(self.layout_meta().await? == Some((wire::LAYOUT_SAME_KEYS, self.keys.groups())))
    }

    /// Consumers of `group` on the journal streams, other than `own`, that read within the
    /// last `quiet_ms`: (name, idle ms). Start-up asks this before it moves a layout-2
    /// record on, because a running instance of the older version never checks the
    /// layout again and would acknowledge entries it cannot read. A stream or group that
    /// does not exist yet has no consumers.
    pub async fn active_journal_consumers(
        &self,
        group: &str,
        own: &str,
        quiet_ms: u64,
    ) -> RedisResult<Vec<(String, u64)>> {
        let mut active = Vec::new();
        for journal in self.keys.journals() {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("XINFO");
            cmd.arg("CONSUMERS").arg(&journal).arg(group);
            let consumers: Vec<HashMap<String, Value>> =
                match self.timed(cmd.query_async(&mut conn)).await {
                    Ok(consumers) => consumers,
                    // "ERR no such key" / NOGROUP: nobody reads this stream yet.
                    Err(RedisStoreError::Redis(e))
                        if e.code().is_some_and(|c| c == "NOGROUP" || c == "ERR") =>
                    {
                        continue
                    }
                    Err(e) => return Err(e),
                };
            for consumer in consumers {
                let name = consumer.get("name").and_then(value_string);
                let idle = consumer
                    .get("idle")
                    .and_then(|v| match v {
                        Value::Int(n) => u64::try_from(*n).ok(),
                        other => value_string(other).and_then(|s| s.parse().ok()),
                    })
                    .unwrap_or(u64::MAX);
                if let Some(name) = name {
                    if name != own && idle < quiet_ms {
                        active.push((name, idle));
                    }
                }
            }
        }
        Ok(active)
    }

    /// Refuses a Redis whose stored (layout, groups) differ from this instance's.
    fn refuse_other_layout(&self, stored: Option<(i64, u32)>) -> RedisResult<()> {
        match stored {
            Some((layout, groups))
                if layout == wire::LAYOUT_VERSION && groups == self.keys.groups() =>
            {
                Ok(())
            }
            Some((layout, groups)) => Err(RedisStoreError::Layout(format!(
                "Redis holds layout {layout} with redis.groups = {groups}; this instance is \
                 configured with layout {} and redis.groups = {}. The number of groups is fixed \
                 per deployment: set redis.groups = {groups}",
                wire::LAYOUT_VERSION,
                self.keys.groups()
            ))),
            None => Err(RedisStoreError::Layout(
                "Redis has no layout record (inv:meta)".into(),
            )),
        }
    }

    // ----- journal: one stream per group, read together -----

    /// Creates the consumer group (and the stream) of every group's journal if missing.
    pub async fn ensure_journal_group(&self, group: &str) -> RedisResult<()> {
        for journal in self.keys.journals() {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("XGROUP");
            cmd.arg("CREATE")
                .arg(&journal)
                .arg(group)
                .arg("0")
                .arg("MKSTREAM");
            let create = cmd.query_async::<String>(&mut conn);
            match tokio::time::timeout(self.timeout, create).await {
                Err(_) => return Err(RedisStoreError::Timeout(self.timeout)),
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.code() == Some("BUSYGROUP") => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Reads up to `count` entries of each group's journal in one XREADGROUP:
    /// `start = ">"` for new ones, `"0"` for this consumer's pending ones. Blocks up to
    /// `block` when there are none.
    pub async fn read_journal(
        &self,
        group: &str,
        consumer: &str,
        start: &str,
        count: usize,
        block: Option<Duration>,
    ) -> RedisResult<Vec<JournalEntry>> {
        if self.is_cluster() {
            return self
                .read_journal_per_group(group, consumer, start, count, block)
                .await;
        }
        let mut conn = self.conn.clone();
        let journals = self.keys.journals();
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS");
        for journal in &journals {
            cmd.arg(journal);
        }
        for _ in &journals {
            cmd.arg(start);
        }
        // A blocking read may legitimately take `block` plus the usual call time, and a
        // read over every group's stream may bring megabytes.
        let limit = self.timeout * 5 + block.unwrap_or_default();
        let reply: Value = match tokio::time::timeout(limit, cmd.query_async(&mut conn)).await {
            Ok(reply) => reply?,
            Err(_) => return Err(RedisStoreError::Timeout(limit)),
        };
        parse_stream_read(&reply, &journals)
    }

    /// Cluster mode: a read may not span slots, so every group's stream is read by its own
    /// XREADGROUP, all at once (the client sends each to the master that holds the group
    /// now, so a slot move is followed). No BLOCK: several blocking reads would queue on
    /// one node's connection; an empty round sleeps a little instead.
    async fn read_journal_per_group(
        &self,
        group: &str,
        consumer: &str,
        start: &str,
        count: usize,
        block: Option<Duration>,
    ) -> RedisResult<Vec<JournalEntry>> {
        let journals = self.keys.journals();
        let reads = journals.iter().map(|journal| {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(group)
                .arg(consumer)
                .arg("COUNT")
                .arg(count)
                .arg("STREAMS")
                .arg(journal)
                .arg(start);
            async move { cmd.query_async::<Value>(&mut conn).await }
        });
        let limit = self.timeout * 5;
        let replies = tokio::time::timeout(limit, futures_util::future::join_all(reads))
            .await
            .map_err(|_| RedisStoreError::Timeout(limit))?;
        let mut out = Vec::new();
        for (g, reply) in (0u32..).zip(replies) {
            let journal = [self.keys.journal(g)];
            let mut entries = parse_stream_read(&reply?, &journal)?;
            for e in &mut entries {
                e.group = g;
            }
            out.extend(entries);
        }
        if out.is_empty() {
            if let Some(block) = block {
                tokio::time::sleep(block.min(Duration::from_millis(10))).await;
            }
        }
        Ok(out)
    }

    /// Claims entries another consumer left pending for longer than `min_idle`.
    pub async fn claim_stale(
        &self,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> RedisResult<Vec<JournalEntry>> {
        let mut out = Vec::new();
        for (g, journal) in (0u32..).zip(self.keys.journals()) {
            let mut conn = self.conn.clone();
            let reply: Value = self
                .timed(
                    redis::cmd("XAUTOCLAIM")
                        .arg(&journal)
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
                Value::Array(parts) if parts.len() >= 2 => {
                    if let Some(entries) = parts.get(1) {
                        out.extend(parse_entries(g, entries)?);
                    }
                }
                other => {
                    return Err(RedisStoreError::BadReply {
                        script: "XAUTOCLAIM",
                        detail: format!("{other:?}"),
                    })
                }
            }
            if out.len() >= count {
                break;
            }
        }
        Ok(out)
    }

    /// Acknowledges entries, one XACK per stream, pipelined.
    pub async fn ack_journal(&self, group: &str, entries: &[(u32, String)]) -> RedisResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut by_stream: std::collections::BTreeMap<u32, Vec<&str>> = Default::default();
        for (g, id) in entries {
            by_stream.entry(*g).or_default().push(id);
        }
        let mut pipe = redis::pipe();
        for (g, ids) in by_stream {
            pipe.cmd("XACK")
                .arg(self.keys.journal(g))
                .arg(group)
                .arg(ids)
                .ignore();
        }
        let _: () = self.query_pipe(&pipe).await?;
        Ok(())
    }

    /// The lag of every group's journal, added up: one pipelined round trip (health
    /// checks and drain waits call it often); stream by stream if a stream is missing
    /// (Redis lost its data).
    pub async fn journal_lag(&self, group: &str) -> RedisResult<JournalLag> {
        let journals = self.keys.journals();
        let mut pipe = redis::pipe();
        for journal in &journals {
            pipe.cmd("XINFO").arg("GROUPS").arg(journal);
            pipe.cmd("XLEN").arg(journal);
        }
        let replies: RedisResult<Vec<Value>> = self.query_pipe(&pipe).await;
        let replies = match replies {
            Ok(replies) => replies,
            Err(RedisStoreError::Redis(_)) => {
                let mut total = JournalLag::default();
                for journal in &journals {
                    let lag = self.stream_lag(journal, group).await?;
                    total.undelivered += lag.undelivered;
                    total.pending += lag.pending;
                    total.length += lag.length;
                }
                return Ok(total);
            }
            Err(e) => return Err(e),
        };
        let mut total = JournalLag::default();
        for pair in replies.chunks(2) {
            let [groups, length] = pair else { continue };
            let lag = lag_of(groups, value_u64(length).unwrap_or(0), group);
            total.undelivered += lag.undelivered;
            total.pending += lag.pending;
            total.length += lag.length;
        }
        Ok(total)
    }

    /// When the oldest journal entry the group has not acknowledged was written (ms since
    /// the epoch, from its stream id), over every group's journal; None when the group has
    /// everything. The alert on journal age reads it (GET /metrics).
    pub async fn journal_oldest_unpersisted_ms(&self, group: &str) -> RedisResult<Option<i64>> {
        let journals = self.keys.journals();
        let firsts = futures_util::future::join_all(
            journals
                .iter()
                .map(|journal| self.oldest_unpersisted_in(journal, group)),
        )
        .await;
        let mut oldest: Option<(u64, u64)> = None;
        for first in firsts {
            if let Some(id) = first?.as_deref().and_then(parse_stream_id) {
                oldest = Some(oldest.map_or(id, |o| o.min(id)));
            }
        }
        Ok(oldest.map(|(ms, _)| ms as i64))
    }

    /// The id of the oldest entry of one stream the group has not acknowledged.
    async fn oldest_unpersisted_in(
        &self,
        journal: &str,
        group: &str,
    ) -> RedisResult<Option<String>> {
        let mut conn = self.conn.clone();
        let info = self.xinfo_groups(journal).await?;
        let Some(mine) = value_maps(&info)
            .into_iter()
            .find(|g| g.get("name").and_then(value_string).as_deref() == Some(group))
        else {
            return Ok(None);
        };
        let pending = mine.get("pending").and_then(value_u64).unwrap_or(0);
        // Delivered entries are older than undelivered ones: the oldest pending entry comes
        // first, else the first entry after the last delivered one.
        if pending > 0 {
            return self.oldest_pending_id(journal, group).await;
        }
        let last = mine
            .get("last-delivered-id")
            .and_then(value_string)
            .unwrap_or_else(|| "0-0".to_string());
        let next: Vec<(String, HashMap<String, String>)> = self
            .timed(
                redis::cmd("XRANGE")
                    .arg(journal)
                    .arg(format!("({last}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(next.into_iter().next().map(|(id, _)| id))
    }

    /// The smallest id a consumer group has delivered and not acknowledged (XPENDING's
    /// summary).
    async fn oldest_pending_id(&self, journal: &str, group: &str) -> RedisResult<Option<String>> {
        let mut conn = self.conn.clone();
        let summary: Value = self
            .timed(
                redis::cmd("XPENDING")
                    .arg(journal)
                    .arg(group)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(match summary {
            Value::Array(parts) => parts.get(1).and_then(value_string),
            _ => None,
        })
    }

    /// XINFO GROUPS of a journal stream; no groups when the stream does not exist yet.
    async fn xinfo_groups(&self, journal: &str) -> RedisResult<Value> {
        let mut conn = self.conn.clone();
        self.timed(
            redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(journal)
                .query_async(&mut conn),
        )
        .await
        .or_else(|e| match &e {
            RedisStoreError::Redis(re) if re.to_string().contains("no such key") => {
                Ok(Value::Array(vec![]))
            }
            _ => Err(e),
        })
    }

    async fn stream_lag(&self, journal: &str, group: &str) -> RedisResult<JournalLag> {
        let mut conn = self.conn.clone();
        let groups = self.xinfo_groups(journal).await?;
        let length: u64 = self.timed(conn.xlen(journal)).await?;
        Ok(lag_of(&groups, length, group))
    }

    /// Removes entries every consumer group has acknowledged, in every group's journal.
    /// Returns how many were removed.
    pub async fn trim_journal(&self) -> RedisResult<u64> {
        let mut removed = 0;
        for journal in self.keys.journals() {
            removed += self.trim_stream(&journal).await?;
        }
        Ok(removed)
    }

    async fn trim_stream(&self, journal: &str) -> RedisResult<u64> {
        let mut conn = self.conn.clone();
        let groups: Value = self
            .timed(
                redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(journal)
                    .query_async(&mut conn),
            )
            .await?;
        let mut keep_from: Option<(u64, u64)> = None;
        for info in value_maps(&groups) {
            let name = info.get("name").and_then(value_string).unwrap_or_default();
            let pending = info.get("pending").and_then(value_u64).unwrap_or(0);
            let bound = if pending > 0 {
                self.oldest_pending_id(journal, &name).await?
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
                    .arg(journal)
                    .arg("MINID")
                    .arg(format!("{ms}-{seq}"))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(removed)
    }
}

/// One stream's lag for a consumer group, from its XINFO GROUPS reply and length.
fn lag_of(groups: &Value, length: u64, group: &str) -> JournalLag {
    let mut lag = JournalLag {
        length,
        ..JournalLag::default()
    };
    for info in value_maps(groups) {
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
    lag
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

async fn open_cluster(
    client: &ClusterClient,
    limit: Duration,
) -> RedisResult<redis::cluster_async::ClusterConnection> {
    tokio::time::timeout(limit, client.get_async_connection())
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

/// XREADGROUP reply: [[stream, [[id, [field, value, ...]], ...]]] (or a map under RESP3),
/// nil when the block timed out.
fn parse_stream_read(reply: &Value, journals: &[String]) -> RedisResult<Vec<JournalEntry>> {
    let group_of = |name: &Value| -> RedisResult<u32> {
        let name = value_string(name).unwrap_or_default();
        journals
            .iter()
            .position(|j| *j == name)
            .and_then(|g| u32::try_from(g).ok())
            .ok_or_else(|| RedisStoreError::BadReply {
                script: "XREADGROUP",
                detail: format!("unknown stream {name}"),
            })
    };
    match reply {
        Value::Nil => Ok(vec![]),
        Value::Array(streams) => {
            let mut out = Vec::new();
            for stream in streams {
                if let Value::Array(parts) = stream {
                    if let [name, entries] = parts.as_slice() {
                        out.extend(parse_entries(group_of(name)?, entries)?);
                    }
                }
            }
            Ok(out)
        }
        Value::Map(streams) => {
            let mut out = Vec::new();
            for (name, entries) in streams {
                out.extend(parse_entries(group_of(name)?, entries)?);
            }
            Ok(out)
        }
        other => Err(RedisStoreError::BadReply {
            script: "XREADGROUP",
            detail: format!("{other:?}"),
        }),
    }
}

pub(super) fn parse_entries(group: u32, v: &Value) -> RedisResult<Vec<JournalEntry>> {
    let Value::Array(entries) = v else {
        return Ok(vec![]);
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else { continue };
        let [id, body] = parts.as_slice() else {
            continue;
        };
        let Some(id) = value_string(id) else {
            continue;
        };
        // A claimed entry that was deleted meanwhile has a nil body.
        let payload = match body {
            Value::Array(fields) => fields
                .chunks(2)
                .find_map(|pair| match pair {
                    [k, v] if value_string(k).as_deref() == Some("e") => value_string(v),
                    _ => None,
                })
                .unwrap_or_default(),
            _ => String::new(),
        };
        out.push(JournalEntry { group, id, payload });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server error as the client hands it over (parsed from the wire).
    fn server_error(wire: &[u8]) -> RedisStoreError {
        let value = redis::parse_redis_value(wire).expect("a RESP error");
        match value.extract_error() {
            Err(e) => RedisStoreError::Redis(e),
            Ok(v) => panic!("not an error: {v:?}"),
        }
    }

    #[test]
    fn a_busy_or_full_redis_is_retried_and_a_script_error_is_not() {
        for wire in [
            &b"-BUSY Redis is busy running a script.\r\n"[..],
            b"-OOM command not allowed when used memory > 'maxmemory'.\r\n",
            b"-LOADING Redis is loading the dataset in memory\r\n",
        ] {
            let e = server_error(wire);
            assert!(e.is_retryable(), "{e}");
        }
        let bug = server_error(
            b"-ERR user_script:1: Script attempted to access nonexistent global variable\r\n",
        );
        assert!(!bug.is_retryable(), "{bug}");
        assert!(!RedisStoreError::Layout("other groups".into()).is_retryable());
    }

    #[test]
    fn stream_ids_compare_numerically() {
        assert!(parse_stream_id("9-1") < parse_stream_id("10-0"));
        assert_eq!(parse_stream_id("nope"), None);
    }
}
