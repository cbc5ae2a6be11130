//! Cluster mode of the reservation path (docs/redis-layout.md, "Orders across slots").
//!
//! On a Redis Cluster a script may only touch keys of one slot, so the one-call reserve,
//! confirm and release of a single Redis become steps, each batched per slot:
//!
//! - reserve: claim the orderNo in its directory shard (`claim.lua`), hold the lines in
//!   each group (`hold.lua`: RESERVED at once for an order in one group, PENDING for one
//!   spanning groups), commit the PENDING lines when every group held them
//!   (`commit.lua`) or abort them when one refused (`abort.lua`), then settle the claim
//!   (`settle.lua`). Presumed abort: a claim past its deadline is resolved by
//!   [`RedisStore::resolve_in_doubt`]: committed if any line of the order is past PENDING,
//!   aborted otherwise.
//! - confirm / release: decide in the directory shard (`decide.lua`: one winner), apply in
//!   every group (`confirm.lua` / `release.lua`), mark applied (`settle.lua`). A decision
//!   not applied everywhere is completed by a repeat or by the resolver.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::future::join_all;

use crate::domain::{LedgerReason, ReservationStatus, SkuKey};
use crate::store::redis::{RedisResult, RedisStore, RedisStoreError};
use crate::store::reservations::{
    OrderLine, ReserveOrder, ReserveParams, ReserveReply, TransitionOp, TransitionOrder,
    TransitionReply,
};
use crate::store::wire::{self, LevelsAfter, ReplyItem};

/// How often and how long a request waits for another request's claim on the same order.
const BUSY_ROUNDS: usize = 25;
const BUSY_WAIT: Duration = Duration::from_millis(20);
/// The resolver leaves a claim alone until this long after its deadline: the nodes' clocks
/// may differ this much (the deadline is checked on each group's node).
pub const RESOLVE_MARGIN_MS: i64 = 1_000;

fn bad(script: &'static str, detail: impl Into<String>) -> RedisStoreError {
    RedisStoreError::BadReply {
        script,
        detail: detail.into(),
    }
}

/// The state of a cluster directory entry (see lua/lib.lua, `parse_cluster_entry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    Claimed {
        deadline_ms: i64,
    },
    Held,
    /// `kind`: 'C' confirm, 'R' release, 'E' expiry.
    Decided {
        kind: char,
        applied: bool,
    },
    /// Refused after a partial hold and aborted: final for this orderNo (the ledger has
    /// its RES and REL ABORT lines, the DB its RELEASED rows).
    Aborted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterEntry {
    /// The first field as stored (settle compares it).
    pub head: String,
    /// A claim's token '<deadline>.<nonce>' (the records it held carry it).
    pub token: Option<String>,
    pub state: EntryState,
    pub expire_at_ms: i64,
    pub lines: Vec<(SkuKey, i64)>,
}

impl ClusterEntry {
    /// None for a tombstone or a malformed entry.
    pub fn parse(raw: &str) -> Option<ClusterEntry> {
        let (head, rest) = raw.split_once(' ')?;
        if head == "!" {
            return None;
        }
        let mut token = None;
        let (state, x) = if let Some(claim) = head.strip_prefix('?') {
            let (t, x) = claim.split_once('/')?;
            let (d, _nonce) = t.split_once('.')?;
            token = Some(t.to_string());
            (
                EntryState::Claimed {
                    deadline_ms: d.parse().ok()?,
                },
                x,
            )
        } else if let Some(marker) = head.strip_prefix('A') {
            (EntryState::Aborted, marker.split(':').next()?)
        } else if let Some(kind) = head.chars().next().filter(|c| "CREcre".contains(*c)) {
            (
                EntryState::Decided {
                    kind: kind.to_ascii_uppercase(),
                    applied: kind.is_ascii_lowercase(),
                },
                &head[1..],
            )
        } else {
            (EntryState::Held, head)
        };
        let crate::store::wire::DirectoryEntry::Order { lines, .. } =
            crate::store::wire::DirectoryEntry::parse(&format!("0 {rest}"))?
        else {
            return None;
        };
        Some(ClusterEntry {
            head: head.to_string(),
            token,
            state,
            expire_at_ms: x.parse().ok()?,
            lines,
        })
    }

    fn groups(&self, store: &RedisStore) -> Vec<u32> {
        let mut groups: Vec<u32> = self
            .lines
            .iter()
            .map(|(k, _)| store.keys.group(*k))
            .collect();
        groups.sort_unstable();
        groups.dedup();
        groups
    }
}

/// Line states of a raw group record (`<x>[@<token>] w:s:q:STATE[:sold] ...`), PENDING
/// and ABORTED included.
fn record_states(raw: &str) -> Vec<&str> {
    raw.split(' ')
        .skip(1)
        .filter_map(|f| f.split(':').nth(3))
        .collect()
}

/// The claim token a raw record carries (`<x>@<token>`), if any.
fn record_token(raw: &str) -> Option<&str> {
    raw.split(' ').next()?.split_once('@').map(|(_, t)| t)
}

fn lines_text(lines: &[OrderLine]) -> String {
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&format!(
            "{}:{}:{}",
            l.key.warehouse_id, l.key.sku_id, l.qty
        ));
    }
    out
}

/// What a hold of one order's lines in one group answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Yes,
    /// Refused: the reply for the whole order (line numbers already the order's).
    No,
    /// The call failed: the group may or may not hold the lines.
    Unknown,
}

/// One order's claim to abort in one group: its lines there and the claim's token.
struct AbortClaim {
    order_no: String,
    trace_id: String,
    token: String,
    keys: Vec<SkuKey>,
}

/// What the resolver did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResolveReport {
    pub committed: u64,
    pub aborted: u64,
    /// Decisions (confirm, release, expiry) completed in every group.
    pub applied: u64,
    /// Orders that could not be resolved in this pass (tried again in the next).
    pub failed: u64,
}

impl RedisStore {
    // ----- shared steps -----

    /// Runs a directory-shard script for orders spread over shards: one call per shard,
    /// all at once; `args` writes one order's arguments. Items come back in order.
    async fn per_shard(
        &self,
        name: &'static str,
        order_nos: &[&str],
        head_args: &[String],
        mut args: impl FnMut(usize, &mut redis::ScriptInvocation<'_>),
    ) -> RedisResult<Vec<ReplyItem>> {
        let script = match name {
            "claim" => &self.scripts.claim,
            "decide" => &self.scripts.decide,
            "settle" => &self.scripts.settle,
            _ => return Err(bad(name, "not a directory script")),
        };
        let by_shard = self.by_directory_shard(order_nos);
        let calls = by_shard.iter().map(|(shard, idx)| {
            let mut inv = script.key(self.keys.directory_shard_key(*shard));
            for a in head_args {
                inv.arg(a);
            }
            inv.arg(idx.len());
            for i in idx {
                args(*i, &mut inv);
            }
            async move {
                let items = self
                    .run_script_retrying(name, &inv, Some(idx.len()))
                    .await?;
                Ok::<_, RedisStoreError>((idx, items))
            }
        });
        let mut out: Vec<Option<ReplyItem>> = vec![None; order_nos.len()];
        for result in join_all(calls).await {
            let (idx, items) = result?;
            for (i, item) in idx.iter().zip(items) {
                if let Some(slot) = out.get_mut(*i) {
                    *slot = Some(item);
                }
            }
        }
        out.into_iter()
            .map(|o| o.ok_or_else(|| bad(name, "an order without a reply")))
            .collect()
    }

    /// A script call, tried once more after a failure that may pass (a timeout, a failover,
    /// a slot on the move): every cluster script is idempotent (a claim with the same
    /// deadline is ours again, a hold already there is HELD, a commit, abort or settle done
    /// is done), so the retry answers as if the first call had been the only one.
    async fn run_script_retrying(
        &self,
        name: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
        items: Option<usize>,
    ) -> RedisResult<Vec<ReplyItem>> {
        match self.run_script(name, invocation, items).await {
            Err(e) if e.is_retryable() => {
                tracing::debug!(error = %e, script = name, "retrying a cluster script");
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.run_script(name, invocation, items).await
            }
            other => other,
        }
    }

    /// settle.lua for (orderNo, head seen, action) triples.
    async fn settle(&self, entries: &[(String, String, String)]) -> RedisResult<()> {
        self.settle_counting(entries).await.map(|_| ())
    }

    /// settle.lua for (orderNo, head seen, action) triples: how many took effect (the others
    /// had changed since they were read).
    pub async fn settle_counting(&self, entries: &[(String, String, String)]) -> RedisResult<u64> {
        if entries.is_empty() {
            return Ok(0);
        }
        let nos: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        let items = self
            .per_shard("settle", &nos, &[], |i, inv| {
                if let Some((no, head, action)) = entries.get(i) {
                    inv.arg(no).arg(head).arg(action);
                }
            })
            .await?;
        Ok(items.iter().filter(|item| item.status == "OK").count() as u64)
    }

    /// The raw records of orders in groups: one HMGET per group, all at once.
    async fn records_in(
        &self,
        wanted: &BTreeMap<u32, Vec<String>>,
    ) -> RedisResult<HashMap<(u32, String), String>> {
        let reads = wanted.iter().map(|(g, nos)| {
            let mut conn = self.conn.clone();
            let key = self.keys.orders(*g);
            async move {
                let raw: Vec<Option<String>> = redis::cmd("HMGET")
                    .arg(key)
                    .arg(nos)
                    .query_async(&mut conn)
                    .await?;
                Ok::<_, redis::RedisError>((*g, nos, raw))
            }
        });
        let results = self.timed(async { Ok(join_all(reads).await) }).await?;
        let mut out = HashMap::new();
        for r in results {
            let (g, nos, raw) = r?;
            for (no, raw) in nos.iter().zip(raw) {
                if let Some(raw) = raw {
                    out.insert((g, no.clone()), raw);
                }
            }
        }
        Ok(out)
    }

    // ----- reserve -----

    pub(super) async fn reserve_batch_cluster(
        &self,
        orders: &[ReserveOrder],
        params: ReserveParams,
    ) -> RedisResult<(Vec<ReserveReply>, Vec<LevelsAfter>)> {
        let expire_at = params.now_ms + params.hold_ms;
        let mut replies: Vec<Option<ReserveReply>> = vec![None; orders.len()];
        let mut levels = Vec::new();
        let texts: Vec<String> = orders.iter().map(|o| lines_text(&o.lines)).collect();

        // 1. Claim, waiting (bounded) for a concurrent request's claim to settle.
        let mut todo: Vec<usize> = (0..orders.len()).collect();
        let mut claimed: Vec<usize> = Vec::new();
        let mut known: Vec<usize> = Vec::new();
        // Each claimed order's claim token ('<deadline>.<nonce>'): its holds carry it, so a
        // commit or abort of another claim of the same orderNo cannot touch them.
        let mut tokens: HashMap<usize, String> = HashMap::new();
        for round in 0..BUSY_ROUNDS {
            let now = if round == 0 {
                params.now_ms
            } else {
                crate::domain::now_ms()
            };
            let token = format!(
                "{}.{}",
                now + self.pending_deadline_ms,
                uuid::Uuid::new_v4().as_u128() as u32
            );
            let nos: Vec<&str> = todo
                .iter()
                .filter_map(|i| orders.get(*i))
                .map(|o| o.order_no.as_str())
                .collect();
            let items = self
                .per_shard(
                    "claim",
                    &nos,
                    &[token.clone(), expire_at.to_string()],
                    |k, inv| {
                        let i = todo.get(k).copied().unwrap_or(usize::MAX);
                        if let (Some(o), Some(text)) = (orders.get(i), texts.get(i)) {
                            inv.arg(&o.order_no).arg(text);
                        }
                    },
                )
                .await?;
            let mut again = Vec::new();
            for (i, item) in todo.iter().copied().zip(items) {
                let order = at(orders, i)?;
                let lines = order.lines.len();
                match item.status.as_str() {
                    "CLAIMED" => {
                        claimed.push(i);
                        tokens.insert(i, token.clone());
                    }
                    "KNOWN" => known.push(i),
                    "CANCELLED" => set(&mut replies, i, ReserveReply::Cancelled),
                    "CONFLICT" => {
                        let n = item.n[0];
                        let line = usize::try_from(n)
                            .ok()
                            .filter(|n| (1..=lines).contains(n))
                            .map(|n| n - 1);
                        set(&mut replies, i, ReserveReply::Conflict { line });
                    }
                    aborted if aborted.starts_with("ABORTED:") => {
                        let line = usize::try_from(item.n[0])
                            .ok()
                            .filter(|n| (1..=lines).contains(n))
                            .map(|n| n - 1);
                        let kind = aborted.strip_prefix("ABORTED:").unwrap_or("");
                        set(
                            &mut replies,
                            i,
                            match (kind, line) {
                                ("I", Some(line)) => ReserveReply::Insufficient {
                                    line,
                                    available: item.n[1],
                                },
                                ("N", Some(line)) => ReserveReply::NotFound { line },
                                _ => ReserveReply::Aborted,
                            },
                        );
                    }
                    "BUSY" => again.push(i),
                    "IN_DOUBT" => {
                        let now = self.redis_time_ms().await?;
                        self.resolve_order(&order.order_no, now).await?;
                        again.push(i);
                    }
                    other => return Err(bad("claim", format!("status {other}"))),
                }
            }
            if !another_round(
                again,
                &mut todo,
                round,
                &mut replies,
                ReserveReply::InProgress,
            )
            .await
            {
                break;
            }
        }

        // Repeats: their state from the groups.
        if !known.is_empty() {
            let mut wanted: BTreeMap<u32, Vec<String>> = BTreeMap::new();
            for i in &known {
                let order = at(orders, *i)?;
                for l in &order.lines {
                    let nos = wanted.entry(self.keys.group(l.key)).or_default();
                    if !nos.contains(&order.order_no) {
                        nos.push(order.order_no.clone());
                    }
                }
            }
            let records = self.records_in(&wanted).await?;
            for i in known {
                let order = at(orders, i)?;
                let mut state: Option<ReservationStatus> = None;
                let mut x = 0;
                for l in &order.lines {
                    let g = self.keys.group(l.key);
                    let Some(raw) = records.get(&(g, order.order_no.clone())) else {
                        continue;
                    };
                    x = raw
                        .split(' ')
                        .next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    for st in record_states(raw) {
                        // PENDING only while the order is being decided: it reads as held.
                        let s = ReservationStatus::parse(st).unwrap_or(ReservationStatus::Reserved);
                        if state.is_none_or(|cur| s.rank() > cur.rank()) {
                            state = Some(s);
                        }
                    }
                }
                set(
                    &mut replies,
                    i,
                    ReserveReply::Exists {
                        lines: vec![(state.unwrap_or(ReservationStatus::Reserved), x)],
                    },
                );
            }
        }

        if claimed.is_empty() {
            return finish(replies, levels);
        }

        // 2. Hold in every group of the claimed orders.
        let spans: HashMap<usize, Vec<u32>> = claimed
            .iter()
            .filter_map(|i| Some((i, orders.get(*i)?)))
            .map(|(i, order)| {
                let mut gs: Vec<u32> = order.lines.iter().map(|l| self.keys.group(l.key)).collect();
                gs.sort_unstable();
                gs.dedup();
                (*i, gs)
            })
            .collect();
        self.refuse_before_holding(
            &mut claimed,
            orders,
            &spans,
            &tokens,
            expire_at,
            params,
            &mut replies,
        )
        .await?;
        let mut per_group: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for i in &claimed {
            for g in span(&spans, *i) {
                per_group.entry(*g).or_default().push(*i);
            }
        }
        let now = crate::domain::now_ms().max(params.now_ms);
        let calls = per_group.iter().map(|(g, idx)| {
            self.hold_in_group(*g, idx, orders, &spans, &tokens, now, expire_at, params)
        });
        // held[(order, group)]
        let mut held: HashMap<(usize, u32), Held> = HashMap::new();
        let mut refusal: HashMap<usize, ReserveReply> = HashMap::new();
        let mut failure: Option<RedisStoreError> = None;
        for ((g, idx), result) in per_group.iter().zip(join_all(calls).await) {
            match result {
                Ok((outcomes, lv)) => {
                    levels.extend(lv);
                    for (i, (h, reply)) in idx.iter().zip(outcomes) {
                        held.insert((*i, *g), h);
                        if let Some(reply) = reply {
                            refusal.entry(*i).or_insert(reply);
                        }
                    }
                }
                Err(e) => {
                    for i in idx {
                        held.insert((*i, *g), Held::Unknown);
                    }
                    failure = Some(e);
                }
            }
        }

        // A crash here leaves PENDING lines and an unsettled claim: the resolver's case.
        if crate::fault::point("cluster.after_hold").await.is_err() {
            return Err(RedisStoreError::Unavailable(
                "fault injected after the holds".into(),
            ));
        }

        // 3. Decide each claimed order.
        let mut settles: Vec<(String, String, String)> = Vec::new();
        let mut to_commit: Vec<usize> = Vec::new();
        let mut to_abort: Vec<usize> = Vec::new();
        let head_of = |i: usize| {
            format!(
                "?{}/{expire_at}",
                tokens.get(&i).map(String::as_str).unwrap_or("0.0")
            )
        };
        for i in &claimed {
            let head = head_of(*i);
            let gs = span(&spans, *i);
            let states: Vec<Held> = gs
                .iter()
                .map(|g| held.get(&(*i, *g)).copied().unwrap_or(Held::Unknown))
                .collect();
            let no = at(orders, *i)?.order_no.clone();
            if states.iter().all(|h| *h == Held::Yes) {
                if gs.len() == 1 {
                    settles.push((no, head.clone(), "COMMIT".into()));
                    set(
                        &mut replies,
                        *i,
                        ReserveReply::Reserved {
                            expire_at_ms: expire_at,
                        },
                    );
                } else {
                    to_commit.push(*i);
                }
            } else if states.contains(&Held::Unknown) {
                // In doubt: the resolver decides after the deadline.
            } else {
                if let Some(slot) = replies.get_mut(*i) {
                    *slot = refusal.remove(i);
                }
                if states.contains(&Held::Yes) {
                    to_abort.push(*i);
                } else {
                    settles.push((no, head.clone(), "DROP".into()));
                }
            }
        }

        // 3a. Commit: PENDING -> RESERVED in every group; decided once one group took it.
        if !to_commit.is_empty() {
            let mut per_group: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
            for i in &to_commit {
                for g in span(&spans, *i) {
                    per_group.entry(*g).or_default().push(*i);
                }
            }
            let calls = per_group.iter().map(|(g, idx)| {
                let claims: Vec<(&str, &str)> = idx
                    .iter()
                    .filter_map(|i| {
                        Some((orders.get(*i)?.order_no.as_str(), tokens.get(i)?.as_str()))
                    })
                    .collect();
                self.commit_in_group(*g, claims, false)
            });
            // took[order]: the groups that committed it.
            let mut took: HashMap<usize, Vec<u32>> = HashMap::new();
            for ((g, idx), result) in per_group.iter().zip(join_all(calls).await) {
                match result {
                    Ok(items) => {
                        for (i, item) in idx.iter().zip(items) {
                            if item.status == "OK" {
                                took.entry(*i).or_default().push(*g);
                            }
                        }
                    }
                    Err(e) => failure = Some(e),
                }
            }
            for i in to_commit {
                let committed = took.get(&i).cloned().unwrap_or_default();
                let mut ok = committed.len();
                if ok > 0 && ok < span(&spans, i).len() {
                    // Decided (a line is RESERVED): complete the groups left (one was late
                    // or failed) now, rather than leave the order claimed until the resolver.
                    let claim = (
                        at(orders, i)?.order_no.as_str(),
                        tokens.get(&i).map(String::as_str).unwrap_or_default(),
                    );
                    for g in span(&spans, i).iter().filter(|g| !committed.contains(g)) {
                        if let Ok(items) = self.commit_in_group(*g, vec![claim], true).await {
                            ok += usize::from(items.first().is_some_and(|it| it.status == "OK"));
                        }
                    }
                }
                if ok == span(&spans, i).len() {
                    settles.push((at(orders, i)?.order_no.clone(), head_of(i), "COMMIT".into()));
                }
                if ok > 0 {
                    // Decided: a line is RESERVED; the resolver completes any group left.
                    set(
                        &mut replies,
                        i,
                        ReserveReply::Reserved {
                            expire_at_ms: expire_at,
                        },
                    );
                }
            }
        }

        if crate::fault::point("cluster.after_commit").await.is_err() {
            return Err(RedisStoreError::Unavailable(
                "fault injected after the commits".into(),
            ));
        }

        // 3b. Abort: the PENDING lines give their units back. The claim becomes an abort
        // marker with the refusal, so a repeat gets the same answer (and the orderNo's
        // RELEASED rows in the DB are never contradicted by a second hold).
        if !to_abort.is_empty() {
            match self
                .abort_orders(&to_abort, orders, &spans, &tokens, now)
                .await
            {
                Ok(lv) => {
                    levels.extend(lv);
                    for i in to_abort {
                        let marker = match replies.get(i).and_then(Option::as_ref) {
                            Some(ReserveReply::Insufficient { line, available }) => {
                                format!("ABORT:I:{}:{available}", line + 1)
                            }
                            Some(ReserveReply::NotFound { line }) => {
                                format!("ABORT:N:{}:0", line + 1)
                            }
                            _ => "ABORT:X:0:0".to_string(),
                        };
                        settles.push((at(orders, i)?.order_no.clone(), head_of(i), marker));
                    }
                }
                Err(e) => {
                    for i in to_abort {
                        if let Some(slot) = replies.get_mut(i) {
                            *slot = None;
                        }
                    }
                    failure = Some(e);
                }
            }
        }

        // 4. Settle the claims whose outcome is known.
        self.settle(&settles).await?;
        if let Some(e) = failure {
            if replies.iter().any(Option::is_none) {
                return Err(e);
            }
        }
        if replies.iter().any(Option::is_none) {
            return Err(RedisStoreError::Unavailable(
                "an order spanning slot groups could not be decided in time; the supervisor \
                 resolves it, and a retry with the same orderNo answers its outcome"
                    .into(),
            ));
        }
        finish(replies, levels)
    }

    /// Orders spanning groups: refuses now, before anything is held, what would make a
    /// group refuse for a reason that passes (a position Redis lacks: the engine loads it
    /// and tries again; a full journal: 503). Refused after a partial hold, the order would
    /// be aborted, and an aborted orderNo is final. Their claims are dropped. A check, not a
    /// guarantee: the state may change before the holds (then the abort path decides).
    #[allow(clippy::too_many_arguments)]
    async fn refuse_before_holding(
        &self,
        claimed: &mut Vec<usize>,
        orders: &[ReserveOrder],
        spans: &HashMap<usize, Vec<u32>>,
        tokens: &HashMap<usize, String>,
        expire_at: i64,
        params: ReserveParams,
        replies: &mut [Option<ReserveReply>],
    ) -> RedisResult<()> {
        let spanning: Vec<&ReserveOrder> = claimed
            .iter()
            .filter(|i| span(spans, **i).len() > 1)
            .filter_map(|i| orders.get(*i))
            .collect();
        if spanning.is_empty() {
            return Ok(());
        }
        let mut keys: Vec<SkuKey> = spanning
            .iter()
            .flat_map(|o| o.lines.iter().map(|l| l.key))
            .collect();
        keys.sort();
        keys.dedup();
        let mut groups: Vec<u32> = keys.iter().map(|k| self.keys.group(*k)).collect();
        groups.sort_unstable();
        groups.dedup();
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("EXISTS").arg(self.keys.stock(*k));
        }
        for g in &groups {
            pipe.cmd("XLEN").arg(self.keys.journal(*g));
        }
        let answers: Vec<i64> = self.query_pipe(&pipe).await?;
        let (present, lengths) = answers.split_at(keys.len().min(answers.len()));
        let missing: Vec<SkuKey> = keys
            .iter()
            .zip(present)
            .filter(|(_, n)| **n == 0)
            .map(|(k, _)| *k)
            .collect();
        let full: Vec<u32> = groups
            .iter()
            .zip(lengths)
            .filter(|(_, n)| u64::try_from(**n).unwrap_or(0) >= params.max_journal_entries)
            .map(|(g, _)| *g)
            .collect();
        if missing.is_empty() && full.is_empty() {
            return Ok(());
        }
        let mut drops = Vec::new();
        claimed.retain(|i| {
            let Some(order) = orders.get(*i) else {
                return true;
            };
            let groups = span(spans, *i);
            if groups.len() < 2 {
                return true;
            }
            let reply =
                if let Some(line) = order.lines.iter().position(|l| missing.contains(&l.key)) {
                    ReserveReply::NotFound { line }
                } else if groups.iter().any(|g| full.contains(g)) {
                    ReserveReply::JournalFull
                } else {
                    return true;
                };
            set(replies, *i, reply);
            drops.push((
                order.order_no.clone(),
                format!(
                    "?{}/{expire_at}",
                    tokens.get(i).map(String::as_str).unwrap_or("0.0")
                ),
                "DROP".to_string(),
            ));
            false
        });
        self.settle(&drops).await
    }

    /// hold.lua for some claimed orders in one group: per order, whether the group holds
    /// its lines now, and the order's reply if it refused.
    #[allow(clippy::too_many_arguments)]
    async fn hold_in_group(
        &self,
        group: u32,
        idx: &[usize],
        orders: &[ReserveOrder],
        spans: &HashMap<usize, Vec<u32>>,
        tokens: &HashMap<usize, String>,
        now: i64,
        expire_at: i64,
        params: ReserveParams,
    ) -> RedisResult<(Vec<(Held, Option<ReserveReply>)>, Vec<LevelsAfter>)> {
        let mut positions: Vec<SkuKey> = Vec::new();
        let mut position_of: HashMap<SkuKey, usize> = HashMap::new();
        // Per order: its lines in this group, as (line index in the order, line).
        let local: Vec<Vec<(usize, OrderLine)>> = idx
            .iter()
            .map(|i| {
                orders
                    .get(*i)
                    .map(|o| o.lines.as_slice())
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| self.keys.group(l.key) == group)
                    .map(|(j, l)| (j, *l))
                    .collect()
            })
            .collect();
        for lines in &local {
            for (_, l) in lines {
                position_of.entry(l.key).or_insert_with(|| {
                    positions.push(l.key);
                    positions.len()
                });
            }
        }
        let mut inv = self.scripts.hold.prepare_invoke();
        inv.key(self.keys.orders(group))
            .key(self.keys.holds(group))
            .key(self.keys.journal(group));
        for k in &positions {
            inv.key(self.keys.stock(*k));
        }
        inv.arg(now)
            .arg(expire_at)
            .arg(params.max_journal_entries)
            .arg(positions.len());
        for k in &positions {
            inv.arg(1).arg(k.warehouse_id).arg(k.sku_id);
        }
        inv.arg(idx.len());
        for (i, lines) in idx.iter().zip(&local) {
            let order = at(orders, *i)?;
            let state = if span(spans, *i).len() == 1 {
                ReservationStatus::Reserved.as_str()
            } else {
                wire::PENDING
            };
            inv.arg(&order.order_no)
                .arg(wire::word(&order.trace_id, 64))
                .arg(tokens.get(i).map(String::as_str).unwrap_or("0.0"))
                .arg(state)
                .arg(lines.len());
            for (_, l) in lines {
                inv.arg(position_of.get(&l.key).copied().unwrap_or(0))
                    .arg(l.qty);
            }
        }
        let items = self.run_script_retrying("hold", &inv, None).await?;
        let (items, levels) = wire::split_levels("hold", items, idx.len(), &positions)?;
        let out = items
            .iter()
            .zip(&local)
            .map(|(item, lines)| {
                let line = |n: i64| {
                    usize::try_from(n)
                        .ok()
                        .and_then(|n| n.checked_sub(1))
                        .and_then(|n| lines.get(n))
                        .map(|(j, _)| *j)
                        .ok_or_else(|| bad("hold", format!("{} names line {n}", item.status)))
                };
                Ok(match item.status.as_str() {
                    "HELD" => (Held::Yes, None),
                    "INSUFFICIENT" => (
                        Held::No,
                        Some(ReserveReply::Insufficient {
                            line: line(item.n[0])?,
                            available: item.n[1],
                        }),
                    ),
                    "NOT_FOUND" => (
                        Held::No,
                        Some(ReserveReply::NotFound {
                            line: line(item.n[0])?,
                        }),
                    ),
                    "JOURNAL_FULL" => (Held::No, Some(ReserveReply::JournalFull)),
                    // A record of another claim of this orderNo: not ours to decide.
                    "STALE" => (Held::Unknown, None),
                    "LATE" => (Held::No, Some(ReserveReply::InProgress)),
                    other => return Err(bad("hold", format!("status {other}"))),
                })
            })
            .collect::<RedisResult<Vec<_>>>()?;
        Ok((out, levels))
    }

    async fn commit_in_group(
        &self,
        group: u32,
        claims: Vec<(&str, &str)>,
        forced: bool,
    ) -> RedisResult<Vec<ReplyItem>> {
        let mut inv = self.scripts.commit.key(self.keys.orders(group));
        inv.arg(0)
            .arg(if forced { "1" } else { "0" })
            .arg(claims.len());
        for (no, token) in &claims {
            inv.arg(*no).arg(*token);
        }
        let items = self
            .run_script_retrying("commit", &inv, Some(claims.len()))
            .await?;
        Ok(items)
    }

    /// abort.lua in every group of the orders (lines from `orders`).
    async fn abort_orders(
        &self,
        idx: &[usize],
        orders: &[ReserveOrder],
        spans: &HashMap<usize, Vec<u32>>,
        tokens: &HashMap<usize, String>,
        now: i64,
    ) -> RedisResult<Vec<LevelsAfter>> {
        let mut per_group: BTreeMap<u32, Vec<AbortClaim>> = BTreeMap::new();
        for i in idx {
            let order = at(orders, *i)?;
            for g in span(spans, *i) {
                let keys = order
                    .lines
                    .iter()
                    .map(|l| l.key)
                    .filter(|k| self.keys.group(*k) == *g)
                    .collect();
                per_group.entry(*g).or_default().push(AbortClaim {
                    order_no: order.order_no.clone(),
                    trace_id: order.trace_id.clone(),
                    token: tokens.get(i).cloned().unwrap_or_default(),
                    keys,
                });
            }
        }
        self.abort_in_groups(per_group, now).await
    }

    async fn abort_in_groups(
        &self,
        per_group: BTreeMap<u32, Vec<AbortClaim>>,
        now: i64,
    ) -> RedisResult<Vec<LevelsAfter>> {
        let calls = per_group.iter().map(|(g, list)| async move {
            let mut positions: Vec<SkuKey> =
                list.iter().flat_map(|o| o.keys.iter().copied()).collect();
            positions.sort();
            positions.dedup();
            let mut inv = self.scripts.abort.prepare_invoke();
            inv.key(self.keys.orders(*g))
                .key(self.keys.holds(*g))
                .key(self.keys.journal(*g));
            for k in &positions {
                inv.key(self.keys.stock(*k));
            }
            inv.arg(now).arg(positions.len());
            for k in &positions {
                inv.arg(1).arg(k.warehouse_id).arg(k.sku_id);
            }
            inv.arg(list.len());
            for claim in list {
                inv.arg(&claim.order_no)
                    .arg(wire::word(&claim.trace_id, 64))
                    .arg(&claim.token);
            }
            let items = self.run_script_retrying("abort", &inv, None).await?;
            let (items, levels) = wire::split_levels("abort", items, list.len(), &positions)?;
            for item in &items {
                if item.status != wire::ABORTED && item.status != "NONE" {
                    return Err(RedisStoreError::Unavailable(format!(
                        "abort of an order spanning groups answered {}",
                        item.status
                    )));
                }
            }
            Ok::<_, RedisStoreError>(levels)
        });
        let mut levels = Vec::new();
        for r in join_all(calls).await {
            levels.extend(r?);
        }
        Ok(levels)
    }

    // ----- confirm, release, expiry -----

    pub(super) async fn transition_batch_cluster(
        &self,
        orders: &[TransitionOrder],
        now_ms: i64,
        max_journal_entries: u64,
    ) -> RedisResult<(Vec<TransitionReply>, Vec<LevelsAfter>)> {
        let mut replies: Vec<Option<TransitionReply>> = vec![None; orders.len()];
        let mut levels = Vec::new();
        let kind = |op: &TransitionOp| match op {
            TransitionOp::Confirm { .. } => "C",
            TransitionOp::Release {
                only_if_expired: true,
                ..
            } => "E",
            TransitionOp::Release { .. } => "R",
        };
        let paid = |op: &TransitionOp| {
            matches!(
                op,
                TransitionOp::Confirm {
                    even_if_expired: true
                }
            )
        };
        // 1. Decide (waiting, bounded, for an order still being reserved).
        let mut todo: Vec<usize> = (0..orders.len()).collect();
        // (order, decided by this call, the decided kind when it is not the request's own
        // (a release meeting an expiry's decision applies the expiry, and the reverse), the
        // entry's head decide.lua wrote).
        let mut apply: Vec<(usize, bool, Option<char>, String)> = Vec::new();
        for round in 0..BUSY_ROUNDS {
            let now = if round == 0 {
                now_ms
            } else {
                crate::domain::now_ms()
            };
            let nos: Vec<&str> = todo
                .iter()
                .filter_map(|i| orders.get(*i))
                .map(|o| o.order_no.as_str())
                .collect();
            let items = self
                .per_shard("decide", &nos, &[now.to_string()], |k, inv| {
                    if let Some(o) = todo.get(k).and_then(|i| orders.get(*i)) {
                        inv.arg(&o.order_no).arg(kind(&o.op)).arg(if paid(&o.op) {
                            "1"
                        } else {
                            "0"
                        });
                    }
                })
                .await?;
            let mut again = Vec::new();
            for (i, item) in todo.iter().copied().zip(items) {
                let order = at(orders, i)?;
                let first = order.positions.first().copied();
                let key = |r: fn(SkuKey) -> TransitionReply| first.map(r);
                let reply = match item.status.as_str() {
                    "DECIDED" => {
                        let head = format!("{}{}", kind(&order.op), item.n[0]);
                        apply.push((i, true, None, head));
                        None
                    }
                    "SAME" if item.n[1] == 1 => Some(TransitionReply::Exists),
                    "SAME" => {
                        let decided = match item.n[2] {
                            2 => 'R',
                            3 => 'E',
                            _ => 'C',
                        };
                        let own = kind(&order.op).starts_with(decided);
                        let head = format!("{decided}{}", item.n[0]);
                        apply.push((i, false, (!own).then_some(decided), head));
                        None
                    }
                    "OTHER" if order.op.is_confirm() => {
                        key(|key| TransitionReply::Released { key })
                    }
                    "OTHER" => key(|key| TransitionReply::Confirmed { key }),
                    "EXPIRED" => key(|key| TransitionReply::Expired { key }),
                    "NOT_EXPIRED" => Some(TransitionReply::NotExpired),
                    "NOT_FOUND" => Some(TransitionReply::NotFound),
                    "PENDING" => {
                        again.push(i);
                        None
                    }
                    other => return Err(bad("decide", format!("status {other}"))),
                };
                if let Some(slot) = replies.get_mut(i) {
                    *slot = reply;
                }
            }
            if !another_round(
                again,
                &mut todo,
                round,
                &mut replies,
                TransitionReply::Retry,
            )
            .await
            {
                break;
            }
        }

        // 2. Apply in every group, 3. mark applied.
        if !apply.is_empty() {
            let mut to_apply = Vec::with_capacity(apply.len());
            for (i, _, decided, _) in &apply {
                let mut order = at(orders, *i)?.clone();
                if let Some(kind) = decided {
                    order.op = decided_op(*kind, "a later request");
                }
                to_apply.push(order);
            }
            let idx: Vec<usize> = (0..to_apply.len()).collect();
            let (outcomes, lv) = self
                .apply_decisions(&idx, &to_apply, now_ms, max_journal_entries)
                .await?;
            levels.extend(lv);
            let mut settles = Vec::new();
            for ((i, decided_here, _, head), outcome) in apply.iter().zip(outcomes) {
                match outcome {
                    None => {
                        settles.push((
                            at(orders, *i)?.order_no.clone(),
                            head.clone(),
                            "APPLIED".to_string(),
                        ));
                        set(
                            &mut replies,
                            *i,
                            if *decided_here {
                                TransitionReply::Done
                            } else {
                                TransitionReply::Exists
                            },
                        );
                    }
                    Some(reply) => set(&mut replies, *i, reply),
                }
            }
            // Marked applied under the head decide.lua wrote ('<kind><x>'): settle compares
            // it, so an entry that changed meanwhile is left alone (STALE).
            self.settle(&settles).await?;
        }
        finish_transitions(replies, levels)
    }

    /// The indexes of orders by their directory shard.
    fn by_directory_shard<S: AsRef<str>>(&self, order_nos: &[S]) -> BTreeMap<u32, Vec<usize>> {
        let mut by_shard: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, no) in order_nos.iter().enumerate() {
            by_shard
                .entry(self.keys.directory_shard(no.as_ref()))
                .or_default()
                .push(i);
        }
        by_shard
    }

    /// The raw directory values of orders: one HMGET per directory shard, all at once.
    pub(super) async fn raw_directory_cluster(
        &self,
        order_nos: &[String],
    ) -> RedisResult<Vec<Option<String>>> {
        let by_shard = self.by_directory_shard(order_nos);
        let reads = by_shard.iter().map(|(shard, idx)| {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(self.keys.directory_shard_key(*shard));
            for i in idx {
                cmd.arg(order_nos.get(*i).map_or("", String::as_str));
            }
            async move { cmd.query_async::<Vec<Option<String>>>(&mut conn).await }
        });
        let results = self.timed(async { Ok(join_all(reads).await) }).await?;
        let mut out = vec![None; order_nos.len()];
        for (idx, result) in by_shard.values().zip(results) {
            for (i, raw) in idx.iter().zip(result.map_err(RedisStoreError::from)?) {
                set(&mut out, *i, raw);
            }
        }
        Ok(out.into_iter().map(Option::flatten).collect())
    }

    /// The cluster directory entries of orders (None: absent or a tombstone).
    pub async fn cluster_entries(
        &self,
        order_nos: &[String],
    ) -> RedisResult<Vec<Option<ClusterEntry>>> {
        Ok(self
            .raw_directory_cluster(order_nos)
            .await?
            .iter()
            .map(|r| r.as_deref().and_then(ClusterEntry::parse))
            .collect())
    }

    /// Applies decided confirms / releases in every group of the orders with the
    /// single-group scripts (confirm even if expired: the decision was taken in time).
    /// Per order: None when every group applied it, else the reply that stopped it.
    async fn apply_decisions(
        &self,
        idx: &[usize],
        orders: &[TransitionOrder],
        now_ms: i64,
        max_journal_entries: u64,
    ) -> RedisResult<(Vec<Option<TransitionReply>>, Vec<LevelsAfter>)> {
        let mut per_group: BTreeMap<(u32, bool), Vec<(usize, TransitionOrder)>> = BTreeMap::new();
        for (k, i) in idx.iter().enumerate() {
            let o = at(orders, *i)?;
            let op = match &o.op {
                TransitionOp::Confirm { .. } => TransitionOp::Confirm {
                    even_if_expired: true,
                },
                TransitionOp::Release {
                    reason,
                    remark,
                    fence,
                    ..
                } => TransitionOp::Release {
                    reason: *reason,
                    remark: remark.clone(),
                    only_if_expired: false,
                    fence: *fence,
                },
            };
            let mut by_group: BTreeMap<u32, Vec<SkuKey>> = BTreeMap::new();
            for key in &o.positions {
                by_group
                    .entry(self.keys.group(*key))
                    .or_default()
                    .push(*key);
            }
            for (g, positions) in by_group {
                per_group.entry((g, op.is_confirm())).or_default().push((
                    k,
                    TransitionOrder {
                        order_no: o.order_no.clone(),
                        trace_id: o.trace_id.clone(),
                        positions,
                        op: op.clone(),
                    },
                ));
            }
        }
        let calls = per_group.values().map(|list| {
            let batch: Vec<TransitionOrder> = list.iter().map(|(_, o)| o.clone()).collect();
            async move {
                self.transition_batch_single(&batch, now_ms, max_journal_entries)
                    .await
            }
        });
        let mut out: Vec<Option<TransitionReply>> = vec![None; idx.len()];
        let mut levels = Vec::new();
        for (((_, op_is_confirm), list), result) in per_group.iter().zip(join_all(calls).await) {
            let op_is_confirm = *op_is_confirm;
            let (replies, lv) = result?;
            levels.extend(lv);
            for ((k, _), reply) in list.iter().zip(replies) {
                match reply {
                    TransitionReply::Done | TransitionReply::Exists => {}
                    // A release finds nothing to give back where the records were swept; a
                    // confirm of an order whose records are gone (lost in a failover,
                    // reconciliation names it) must not report a sale.
                    TransitionReply::NotFound if !op_is_confirm => {}
                    other => {
                        if let Some(slot) = out.get_mut(*k) {
                            slot.get_or_insert(other);
                        }
                    }
                }
            }
        }
        Ok((out, levels))
    }

    // ----- the resolver -----

    /// Resolves one order's claim past its deadline (plus the clock margin): committed
    /// when a line of it in any group is past PENDING (the decision was commit), aborted
    /// otherwise; and completes a decided confirm or release not yet applied everywhere.
    pub async fn resolve_order(&self, order_no: &str, now_ms: i64) -> RedisResult<ResolveReport> {
        let mut report = ResolveReport::default();
        let Some(entry) = self
            .cluster_entries(&[order_no.to_string()])
            .await?
            .pop()
            .flatten()
        else {
            return Ok(report);
        };
        match entry.state {
            EntryState::Claimed { deadline_ms } => {
                if deadline_ms + RESOLVE_MARGIN_MS > now_ms {
                    return Ok(report);
                }
                let token = entry.token.clone().unwrap_or_default();
                let groups = entry.groups(self);
                let wanted: BTreeMap<u32, Vec<String>> = groups
                    .iter()
                    .map(|g| (*g, vec![order_no.to_string()]))
                    .collect();
                // Only this claim's records count (another claim's, of an earlier attempt
                // of the orderNo, are not this claim's to decide).
                let records: HashMap<u32, String> = self
                    .records_in(&wanted)
                    .await?
                    .into_iter()
                    .filter(|(_, raw)| record_token(raw) == Some(token.as_str()))
                    .map(|((g, _), raw)| (g, raw))
                    .collect();
                let states: Vec<&str> = records.values().flat_map(|r| record_states(r)).collect();
                let committed = states.iter().any(|s| ReservationStatus::parse(s).is_some());
                let aborted = states.contains(&wire::ABORTED);
                if committed && aborted {
                    tracing::error!(
                        order_no,
                        ?records,
                        "an order both committed and aborted in its groups: left for an operator"
                    );
                    return Ok(report);
                }
                if committed {
                    if records.len() < groups.len() {
                        tracing::warn!(
                            order_no,
                            held = records.len(),
                            groups = groups.len(),
                            "committing an order some of whose groups hold no record of it"
                        );
                    }
                    let calls = groups
                        .iter()
                        .filter(|g| records.contains_key(g))
                        .map(|g| self.commit_in_group(*g, vec![(order_no, token.as_str())], true));
                    for r in join_all(calls).await {
                        r?;
                    }
                    self.settle(&[(order_no.to_string(), entry.head.clone(), "COMMIT".into())])
                        .await?;
                    report.committed += 1;
                } else {
                    let mut per_group: BTreeMap<u32, Vec<AbortClaim>> = BTreeMap::new();
                    for g in &groups {
                        let keys = entry
                            .lines
                            .iter()
                            .map(|(k, _)| *k)
                            .filter(|k| self.keys.group(*k) == *g)
                            .collect();
                        per_group.entry(*g).or_default().push(AbortClaim {
                            order_no: order_no.to_string(),
                            trace_id: String::new(),
                            token: token.clone(),
                            keys,
                        });
                    }
                    self.abort_in_groups(per_group, now_ms).await?;
                    // Lines given back (now or by an abort before) are in the ledger and the
                    // DB as RELEASED: the orderNo is final then; with nothing held anywhere
                    // it is free again.
                    let action = if records.is_empty() {
                        "DROP"
                    } else {
                        "ABORT:X:0:0"
                    };
                    self.settle(&[(order_no.to_string(), entry.head.clone(), action.into())])
                        .await?;
                    report.aborted += 1;
                }
            }
            EntryState::Decided {
                kind,
                applied: false,
            } => {
                let op = decided_op(kind, "the supervisor");
                let order = TransitionOrder {
                    order_no: order_no.to_string(),
                    trace_id: String::new(),
                    positions: entry.lines.iter().map(|(k, _)| *k).collect(),
                    op,
                };
                let (outcomes, _) = self
                    .apply_decisions(&[0], &[order], now_ms, u64::MAX)
                    .await?;
                if outcomes.first().is_some_and(Option::is_none) {
                    self.settle(&[(order_no.to_string(), entry.head.clone(), "APPLIED".into())])
                        .await?;
                    report.applied += 1;
                }
            }
            _ => {}
        }
        Ok(report)
    }

    /// Cluster mode: orders the directory lists as held or decided (not claimed, not
    /// aborted, hold not lived out) of which no group holds a record: acknowledged, then
    /// lost with a master that failed over before its replica had them. At most `max`.
    pub async fn orphaned_entries(
        &self,
        now_ms: i64,
        marker_ttl_ms: i64,
        max: usize,
    ) -> RedisResult<Vec<(String, ClusterEntry)>> {
        let mut out = Vec::new();
        for shard in 0..self.keys.groups() {
            let key = self.keys.directory_shard_key(shard);
            let mut cursor: u64 = 0;
            loop {
                let mut conn = self.conn.clone();
                let (next, flat): (u64, Vec<String>) = self
                    .timed(
                        redis::cmd("HSCAN")
                            .arg(&key)
                            .arg(cursor)
                            .arg("COUNT")
                            .arg(500)
                            .query_async(&mut conn),
                    )
                    .await?;
                let mut candidates = Vec::new();
                let mut wanted: BTreeMap<u32, Vec<String>> = BTreeMap::new();
                for pair in flat.chunks(2) {
                    let [no, raw] = pair else { continue };
                    let Some(entry) = ClusterEntry::parse(raw) else {
                        continue;
                    };
                    let live = matches!(entry.state, EntryState::Held | EntryState::Decided { .. })
                        && entry.expire_at_ms + marker_ttl_ms > now_ms;
                    if live {
                        for g in entry.groups(self) {
                            wanted.entry(g).or_default().push(no.clone());
                        }
                        candidates.push((no.clone(), entry));
                    }
                }
                let records = self.records_in(&wanted).await?;
                for (no, entry) in candidates {
                    let held_somewhere = entry
                        .groups(self)
                        .iter()
                        .any(|g| records.contains_key(&(*g, no.clone())));
                    if !held_somewhere {
                        out.push((no, entry));
                        if out.len() >= max {
                            return Ok(out);
                        }
                    }
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Removes a directory entry if its head is still `head` (a lost order, once named).
    pub async fn drop_entry(&self, order_no: &str, head: &str) -> RedisResult<()> {
        self.settle(&[(order_no.to_string(), head.to_string(), "DROP".into())])
            .await
    }

    /// Redis' clock (ms), which the scripts check deadlines against.
    pub async fn redis_time_ms(&self) -> RedisResult<i64> {
        let mut conn = self.conn.clone();
        let (secs, micros): (i64, i64) = self
            .timed(redis::cmd("TIME").query_async(&mut conn))
            .await?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// The supervisor's pass over every directory shard: resolves claims past their
    /// deadline (by Redis' clock when it answers, else `now_ms`) and completes decisions
    /// not applied everywhere. Bounded per call by `max_orders`; an order that cannot be
    /// resolved now is logged and left for the next pass.
    pub async fn resolve_in_doubt(
        &self,
        now_ms: i64,
        max_orders: usize,
    ) -> RedisResult<ResolveReport> {
        let now_ms = self.redis_time_ms().await.unwrap_or(now_ms);
        let mut report = ResolveReport::default();
        let mut seen = 0usize;
        for shard in 0..self.keys.groups() {
            let key = self.keys.directory_shard_key(shard);
            let mut cursor: u64 = 0;
            loop {
                let mut conn = self.conn.clone();
                let (next, flat): (u64, Vec<String>) = self
                    .timed(
                        redis::cmd("HSCAN")
                            .arg(&key)
                            .arg(cursor)
                            .arg("COUNT")
                            .arg(500)
                            .query_async(&mut conn),
                    )
                    .await?;
                for pair in flat.chunks(2) {
                    let [no, raw] = pair else { continue };
                    let due = match ClusterEntry::parse(raw).map(|e| e.state) {
                        Some(EntryState::Claimed { deadline_ms }) => {
                            deadline_ms + RESOLVE_MARGIN_MS <= now_ms
                        }
                        Some(EntryState::Decided { applied, .. }) => !applied,
                        _ => false,
                    };
                    if due {
                        // One order that cannot be resolved now (a group away, a decision
                        // its groups refuse) must not keep the others waiting.
                        let r = match self.resolve_order(no, now_ms).await {
                            Ok(r) => r,
                            Err(e) => {
                                tracing::warn!(order_no = %no, error = %e, "order not resolved");
                                report.failed += 1;
                                ResolveReport::default()
                            }
                        };
                        report.committed += r.committed;
                        report.aborted += r.aborted;
                        report.applied += r.applied;
                        seen += 1;
                        if seen >= max_orders {
                            return Ok(report);
                        }
                    }
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(report)
    }
}

/// The transition that applies a decision someone else took (`kind` as stored: C, R, E),
/// with that decision's ledger reason; `who` names the completer in a release's remark.
fn decided_op(kind: char, who: &str) -> TransitionOp {
    match kind {
        'C' => TransitionOp::Confirm {
            even_if_expired: true,
        },
        'E' => TransitionOp::Release {
            reason: LedgerReason::Expired,
            remark: "hold expired".into(),
            only_if_expired: false,
            fence: 0,
        },
        _ => TransitionOp::Release {
            reason: LedgerReason::Release,
            remark: format!("release completed by {who}"),
            only_if_expired: false,
            fence: 0,
        },
    }
}

fn at<T>(items: &[T], i: usize) -> RedisResult<&T> {
    items
        .get(i)
        .ok_or_else(|| bad("cluster", format!("no item {i} of {}", items.len())))
}

fn set<T>(replies: &mut [Option<T>], i: usize, value: T) {
    if let Some(slot) = replies.get_mut(i) {
        *slot = Some(value);
    }
}

/// After a round of claims or decisions: the orders still waiting for another request's
/// claim (`again`) get another round after a pause (true), or, after the last round,
/// `give_up` (false, as when none waits).
async fn another_round<T: Clone>(
    again: Vec<usize>,
    todo: &mut Vec<usize>,
    round: usize,
    replies: &mut [Option<T>],
    give_up: T,
) -> bool {
    if again.is_empty() {
        return false;
    }
    *todo = again;
    if round + 1 == BUSY_ROUNDS {
        for i in todo.iter() {
            set(replies, *i, give_up.clone());
        }
        return false;
    }
    tokio::time::sleep(BUSY_WAIT).await;
    true
}

fn span(spans: &HashMap<usize, Vec<u32>>, i: usize) -> &[u32] {
    spans.get(&i).map(Vec::as_slice).unwrap_or_default()
}

fn finish(
    replies: Vec<Option<ReserveReply>>,
    levels: Vec<LevelsAfter>,
) -> RedisResult<(Vec<ReserveReply>, Vec<LevelsAfter>)> {
    let replies = replies
        .into_iter()
        .map(|r| r.ok_or_else(|| bad("reserve", "an order without an outcome")))
        .collect::<RedisResult<Vec<_>>>()?;
    Ok((replies, levels))
}

fn finish_transitions(
    replies: Vec<Option<TransitionReply>>,
    levels: Vec<LevelsAfter>,
) -> RedisResult<(Vec<TransitionReply>, Vec<LevelsAfter>)> {
    let replies = replies
        .into_iter()
        .map(|r| r.ok_or_else(|| bad("transition", "an order without an outcome")))
        .collect::<RedisResult<Vec<_>>>()?;
    Ok((replies, levels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{SkuId, WarehouseId};

    #[test]
    fn record_states_read_the_state_part_whatever_follows_it() {
        assert_eq!(
            record_states("900@5.x 1:7:2:PENDING 2:7:5:CONFIRMED:3 3:7:1:RESERVED"),
            vec!["PENDING", "CONFIRMED", "RESERVED"]
        );
    }

    #[test]
    fn cluster_entries_parse_every_head() {
        let k = SkuKey::new(WarehouseId(1), SkuId(7));
        let e = ClusterEntry::parse("?500.7/900 1:7:2").unwrap();
        assert_eq!(e.state, EntryState::Claimed { deadline_ms: 500 });
        assert_eq!(e.token.as_deref(), Some("500.7"));
        assert_eq!(record_token("900@500.7 1:7:2:PENDING"), Some("500.7"));
        assert_eq!(record_token("900 1:7:2:RESERVED"), None);
        assert_eq!(e.expire_at_ms, 900);
        assert_eq!(e.lines, vec![(k, 2)]);
        assert_eq!(
            ClusterEntry::parse("900 1:7:2").unwrap().state,
            EntryState::Held
        );
        assert_eq!(
            ClusterEntry::parse("C900 1:7:2").unwrap().state,
            EntryState::Decided {
                kind: 'C',
                applied: false
            }
        );
        assert_eq!(
            ClusterEntry::parse("e900 1:7:2").unwrap().state,
            EntryState::Decided {
                kind: 'E',
                applied: true
            }
        );
        assert!(ClusterEntry::parse("! 900").is_none());
        assert!(ClusterEntry::parse("X900 1:7:2").is_none());
        assert_eq!(
            record_states("900 1:7:2:PENDING 1:8:1:RESERVED"),
            vec!["PENDING", "RESERVED"]
        );
    }
}
