//! The one place where the Rust side and the Lua scripts agree on the Redis layout (v3):
//! key names, slot groups, the order directory and order records, the journal line
//! format, the reply shape every script returns, and the line states with their ranks.
//! docs/redis-layout.md describes the same in prose; `lua/lib.lua` is the Lua half.

use crate::domain::{SkuId, WarehouseId};
use redis::Value;
use std::collections::HashMap;

use crate::domain::{ReservationStatus, SkuKey};

/// The layout this code writes; stored in the meta hash. Layout 3 has the keys of layout
/// 2 and journal lines that may inherit their values ([`INHERITED`]), which a layout-2
/// persister cannot read: an instance of layout 2 refuses to start on it.
pub const LAYOUT_VERSION: i64 = 3;

/// The layout whose keys [`LAYOUT_VERSION`] reads as they are: start-up moves its
/// record to [`LAYOUT_VERSION`] (`RedisStore::claim_layout`).
pub const LAYOUT_SAME_KEYS: i64 = 2;

/// The slot group of a position: FNV-1a of (warehouse, sku), modulo the deployment's fixed
/// number of groups. Stable across processes and restarts (the std hasher is seeded).
pub fn group_of(key: SkuKey, groups: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key
        .warehouse_id
        .to_le_bytes()
        .iter()
        .chain(key.sku_id.to_le_bytes().iter())
    {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(groups.max(1))) as u32
}

/// Key naming. Every key of a group carries the hash tag `{g<N>}`, so everything one
/// group's batch touches lives in one Redis Cluster slot.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    groups: u32,
    cluster: bool,
}

impl Keys {
    pub fn new(prefix: &str, groups: u32) -> Self {
        Keys {
            prefix: prefix.to_string(),
            groups: groups.max(1),
            cluster: false,
        }
    }

    /// On a Redis Cluster the directory is sharded by orderNo and the lease keys share a
    /// hash tag (a script may only touch one slot).
    pub fn on_cluster(mut self, cluster: bool) -> Self {
        self.cluster = cluster;
        self
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn groups(&self) -> u32 {
        self.groups
    }

    pub fn group(&self, key: SkuKey) -> u32 {
        group_of(key, self.groups)
    }

    fn tag(&self, group: u32) -> String {
        format!("{}inv:{{g{group}}}", self.prefix)
    }

    /// Hash `{avail, reserved, confirmed, seq}` of one position.
    pub fn stock(&self, key: SkuKey) -> String {
        // One allocation: every read of a position names this key (reads at 100k/s).
        use std::fmt::Write;
        let mut out = String::with_capacity(self.prefix.len() + 48);
        let _ = write!(
            out,
            "{}inv:{{g{}}}:s:{}:{}",
            self.prefix,
            self.group(key),
            key.warehouse_id,
            key.sku_id
        );
        out
    }

    /// What every stock hash of a group starts with; a position's key is this followed by
    /// `w:s` (lua/expire.lua builds the keys of the records it reads).
    pub fn stock_prefix(&self, group: u32) -> String {
        format!("{}:s:", self.tag(group))
    }

    /// Marker of one stock adjustment request (idempotency of admin calls), hash
    /// `{delta}` with an expiry.
    pub fn adjustment(&self, key: SkuKey, request_id: &str) -> String {
        format!(
            "{}:adj:{}:{}:{}",
            self.tag(self.group(key)),
            key.warehouse_id,
            key.sku_id,
            request_id
        )
    }

    /// Hash of a group's order records: field orderNo, value [`OrderRecord`] (the order's
    /// lines in this group and their states).
    pub fn orders(&self, group: u32) -> String {
        format!("{}:o", self.tag(group))
    }

    /// Set of the positions (`w:s`) a group holds a stock hash for: every script that
    /// creates one adds it, so reconciliation finds Redis-only positions without a SCAN.
    pub fn positions(&self, group: u32) -> String {
        format!("{}:p", self.tag(group))
    }

    /// A position's member in its group's registry.
    pub fn position_member(key: SkuKey) -> String {
        format!("{}:{}", key.warehouse_id, key.sku_id)
    }

    /// The position a registry member names.
    pub fn parse_position_member(member: &str) -> Option<SkuKey> {
        let (w, s) = member.split_once(':')?;
        Some(SkuKey::new(
            WarehouseId(w.parse().ok()?),
            SkuId(s.parse().ok()?),
        ))
    }

    /// Sorted set of a group's orders with held lines, scored by expiry (ms).
    pub fn holds(&self, group: u32) -> String {
        format!("{}:h", self.tag(group))
    }

    /// The stream a group's changes are appended to (journal lines, see [`JournalLine`]).
    pub fn journal(&self, group: u32) -> String {
        format!("{}:j", self.tag(group))
    }

    /// The order directory: field orderNo, value [`DirectoryEntry`]: which lines an order
    /// has (so a lookup by orderNo alone finds its groups), or a tombstone.
    pub fn directory(&self) -> String {
        format!("{}inv:{{dir}}:o", self.prefix)
    }

    /// Cluster mode: the directory shard of an order (one of `groups` shards, each its own
    /// slot `{d<N>}`), chosen by FNV-1a of the orderNo.
    pub fn directory_shard(&self, order_no: &str) -> u32 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in order_no.as_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        (hash % u64::from(self.groups)) as u32
    }

    /// The directory hash that holds an order's entry: the one directory on a single Redis,
    /// its shard on a cluster.
    pub fn directory_of(&self, order_no: &str) -> String {
        if self.cluster {
            self.directory_shard_key(self.directory_shard(order_no))
        } else {
            self.directory()
        }
    }

    pub fn directory_shard_key(&self, shard: u32) -> String {
        format!("{}inv:{{d{shard}}}:o", self.prefix)
    }

    /// Hash `{layout, groups}`: what this deployment's Redis holds.
    pub fn meta(&self) -> String {
        format!("{}inv:meta", self.prefix)
    }

    /// The supervisor's lease and its fencing counter.
    pub fn leader(&self) -> String {
        if self.cluster {
            format!("{}inv:{{leader}}", self.prefix)
        } else {
            format!("{}inv:leader", self.prefix)
        }
    }

    pub fn leader_token(&self) -> String {
        if self.cluster {
            format!("{}inv:{{leader}}:token", self.prefix)
        } else {
            format!("{}inv:leader:token", self.prefix)
        }
    }

    /// The consume log's recent window in Redis: one hash per consumer group and time
    /// bucket (`bucket` = ms since the epoch / the window), field messageId, value the
    /// result the DB row records. One slot (`{clog}`) on a cluster.
    pub fn recent_log(&self, group: &str, bucket: i64) -> String {
        format!("{}inv:{{clog}}:{group}:{bucket}", self.prefix)
    }

    /// Set when Redis was loaded from the DB; its absence means Redis lost its data.
    pub fn epoch(&self) -> String {
        format!("{}inv:epoch", self.prefix)
    }

    /// SCAN pattern of every stock hash.
    pub fn stock_pattern(&self) -> String {
        format!("{}inv:{{g*}}:s:*", self.prefix)
    }

    /// The position a stock key names.
    pub fn parse_stock_key(&self, key: &str) -> Option<SkuKey> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("inv:{g")?;
        let (_, rest) = rest.split_once("}:s:")?;
        let (w, s) = rest.split_once(':')?;
        Some(SkuKey::new(
            WarehouseId(w.parse().ok()?),
            SkuId(s.parse().ok()?),
        ))
    }

    /// Every group's journal stream, in group order.
    pub fn journals(&self) -> Vec<String> {
        (0..self.groups).map(|g| self.journal(g)).collect()
    }
}

/// The groups and positions one script call names, in the order the script numbers them
/// (1-based), with the keys and arguments that describe them: the argument layout the
/// batch scripts share (docs/redis-layout.md, "Arguments"; lib.lua `call_groups`,
/// `call_positions`).
#[derive(Default)]
pub struct CallLayout {
    groups: Vec<u32>,
    group_index: HashMap<u32, usize>,
    pub positions: Vec<SkuKey>,
    position_index: HashMap<SkuKey, usize>,
}

impl CallLayout {
    fn group(&mut self, group: u32) -> usize {
        *self.group_index.entry(group).or_insert_with(|| {
            self.groups.push(group);
            self.groups.len()
        })
    }

    pub fn position(&mut self, keys: &Keys, key: SkuKey) -> usize {
        if let Some(i) = self.position_index.get(&key) {
            return *i;
        }
        self.group(keys.group(key));
        self.positions.push(key);
        let i = self.positions.len();
        self.position_index.insert(key, i);
        i
    }

    /// The call's number of a position's group; the position was added first (by
    /// `position`, which adds its group), so it is always there.
    fn group_of(&self, keys: &Keys, key: SkuKey) -> usize {
        let found = self.group_index.get(&keys.group(key)).copied();
        debug_assert!(found.is_some(), "group of {key} not in the call");
        found.unwrap_or(0)
    }

    /// Group keys (orders, holds, journal per group), then stock keys.
    pub fn push_keys(&self, keys: &Keys, invocation: &mut redis::ScriptInvocation<'_>) {
        for g in &self.groups {
            invocation
                .key(keys.orders(*g))
                .key(keys.holds(*g))
                .key(keys.journal(*g));
        }
        for key in &self.positions {
            invocation.key(keys.stock(*key));
        }
    }

    /// The number of the groups of `positions`, then their group#s (ascending, once each).
    pub fn push_groups_of(
        &self,
        keys: &Keys,
        positions: &[SkuKey],
        invocation: &mut redis::ScriptInvocation<'_>,
    ) {
        let mut groups: Vec<usize> = positions.iter().map(|k| self.group_of(keys, *k)).collect();
        groups.sort_unstable();
        groups.dedup();
        invocation.arg(groups.len());
        for g in groups {
            invocation.arg(g);
        }
    }

    /// What every reserving script starts with: the directory, the groups' and the
    /// positions' keys, the call's parameters and its positions.
    /// `head`: now (ms), hold (ms), the most entries a journal stream may hold.
    pub fn push_reserve_head(
        &self,
        keys: &Keys,
        head: [i64; 3],
        invocation: &mut redis::ScriptInvocation<'_>,
    ) {
        invocation.key(keys.directory());
        self.push_keys(keys, invocation);
        for value in head {
            invocation.arg(value);
        }
        self.push_position_args(keys, invocation);
    }

    /// Counts, then (group#, warehouseId, skuId) per position.
    pub fn push_position_args(&self, keys: &Keys, invocation: &mut redis::ScriptInvocation<'_>) {
        invocation.arg(self.groups.len()).arg(self.positions.len());
        for key in &self.positions {
            invocation
                .arg(self.group_of(keys, *key))
                .arg(key.warehouse_id)
                .arg(key.sku_id);
        }
    }
}

/// The line states a record and the DB share; each one's rank (a state of higher rank is
/// never left) is `ReservationStatus::rank`, defined there once. The Lua side's `RANK`
/// table in lua/lib.lua must say the same; a test checks it.
pub const STATES: [ReservationStatus; 3] = [
    ReservationStatus::Reserved,
    ReservationStatus::Confirmed,
    ReservationStatus::Released,
];

/// Cluster mode only (docs/redis-layout.md, "Orders across slots"): a line held in one group
/// while its order, which spans groups, is being decided. It counts as held; it never
/// reaches the DB (the journal has its units as a hold; the commit makes it RESERVED).
pub const PENDING: &str = "PENDING";
/// Cluster mode only: a PENDING line whose order was aborted; its units went back.
pub const ABORTED: &str = "ABORTED";

/// One line of an order record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLine {
    pub key: SkuKey,
    /// The units held.
    pub qty: i64,
    pub status: ReservationStatus,
    /// A partial confirm's units sold (the rest went back); None: all of `qty`.
    pub confirmed: Option<i64>,
}

impl RecordLine {
    /// Units sold by this line, if CONFIRMED.
    pub fn confirmed_qty(&self) -> Option<i64> {
        (self.status == ReservationStatus::Confirmed).then(|| self.confirmed.unwrap_or(self.qty))
    }
}

/// An order's lines in one group: `<expireAt ms> <w>:<s>:<qty>:<STATE>[:<confirmed>] ...`
/// (the fifth part only after a partial confirm).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    pub expire_at_ms: i64,
    pub lines: Vec<RecordLine>,
}

/// `w:s:qty` at the head of a line field; the rest of the field's parts follow.
fn parse_line_head<'a>(parts: &mut impl Iterator<Item = &'a str>) -> Option<(SkuKey, i64)> {
    let w = parts.next()?.parse().ok()?;
    let s = parts.next()?.parse().ok()?;
    let qty = parts.next()?.parse().ok()?;
    Some((SkuKey::new(WarehouseId(w), SkuId(s)), qty))
}

impl OrderRecord {
    pub fn parse(raw: &str) -> Option<OrderRecord> {
        let mut fields = raw.split(' ');
        // Cluster mode: '<x>@<claim token>' (lua/hold.lua).
        let first = fields.next()?;
        let expire_at_ms = first.split('@').next()?.parse().ok()?;
        let mut lines = Vec::new();
        for field in fields {
            let mut parts = field.split(':');
            let (key, qty) = parse_line_head(&mut parts)?;
            // PENDING and ABORTED (cluster mode, an order being decided or aborted) are not
            // line states a reader reports: such a record reads as absent here.
            let status = ReservationStatus::parse(parts.next()?)?;
            // Only a CONFIRMED line has units sold (lua/confirm_partial.lua).
            let confirmed = match parts.next() {
                None => None,
                Some(c) if status == ReservationStatus::Confirmed => Some(c.parse().ok()?),
                Some(_) => return None,
            };
            if parts.next().is_some() {
                return None;
            }
            lines.push(RecordLine {
                key,
                qty,
                status,
                confirmed,
            });
        }
        (!lines.is_empty()).then_some(OrderRecord {
            expire_at_ms,
            lines,
        })
    }

    pub fn format(&self) -> String {
        let mut out = self.expire_at_ms.to_string();
        for line in &self.lines {
            out.push_str(&format!(
                " {}:{}:{}:{}",
                line.key.warehouse_id,
                line.key.sku_id,
                line.qty,
                line.status.as_str()
            ));
            if let Some(c) = line.confirmed {
                out.push_str(&format!(":{c}"));
            }
        }
        out
    }

    pub fn line(&self, key: SkuKey) -> Option<&RecordLine> {
        self.lines.iter().find(|l| l.key == key)
    }
}

/// What the directory says of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryEntry {
    /// `<expireAt ms> <w>:<s>:<qty> ...`: every line of the order (they never change).
    Order {
        expire_at_ms: i64,
        lines: Vec<(SkuKey, i64)>,
    },
    /// `! <until ms>`: released before it was reserved; a late reservation is refused.
    Tombstone { until_ms: i64 },
}

impl DirectoryEntry {
    pub fn parse(raw: &str) -> Option<DirectoryEntry> {
        let mut fields = raw.split(' ');
        let first = fields.next()?;
        if first == "!" {
            return Some(DirectoryEntry::Tombstone {
                until_ms: fields.next()?.parse().ok()?,
            });
        }
        // A cluster entry's head (lua/lib.lua, parse_cluster_entry): a claim
        // `?<deadline>/<x>` or a decision letter before `<x>`; the lines are the same.
        if first.starts_with('A') {
            // An aborted order (cluster): nothing of it is held; it reads as absent.
            return None;
        }
        let first = first.trim_start_matches(['C', 'R', 'E', 'c', 'r', 'e']);
        let first = match first.strip_prefix('?') {
            Some(claim) => claim.split_once('/')?.1,
            None => first,
        };
        let expire_at_ms = first.parse().ok()?;
        let mut lines = Vec::new();
        for field in fields {
            let mut parts = field.split(':');
            let line = parse_line_head(&mut parts)?;
            if parts.next().is_some() {
                return None;
            }
            lines.push(line);
        }
        (!lines.is_empty()).then_some(DirectoryEntry::Order {
            expire_at_ms,
            lines,
        })
    }

    pub fn format(&self) -> String {
        match self {
            DirectoryEntry::Tombstone { until_ms } => format!("! {until_ms}"),
            DirectoryEntry::Order {
                expire_at_ms,
                lines,
            } => {
                let mut out = expire_at_ms.to_string();
                for (key, qty) in lines {
                    out.push_str(&format!(" {}:{}:{}", key.warehouse_id, key.sku_id, qty));
                }
                out
            }
        }
    }

    /// The positions of the order's lines (none for a tombstone).
    pub fn positions(&self) -> Vec<SkuKey> {
        match self {
            DirectoryEntry::Order { lines, .. } => lines.iter().map(|(k, _)| *k).collect(),
            DirectoryEntry::Tombstone { .. } => vec![],
        }
    }
}

/// Kinds of journal lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalKind {
    /// Available stock adjusted (inbound, outbound, adjust, refund, reconcile).
    Adjust,
    Reserve,
    Confirm,
    Release,
    /// The part of a line a partial confirm gives back (the line itself is confirmed by
    /// the CNF line that follows): a ledger row only.
    PartialRelease,
}

impl JournalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JournalKind::Adjust => "ADJ",
            JournalKind::Reserve => "RES",
            JournalKind::Confirm => "CNF",
            JournalKind::Release => "REL",
            JournalKind::PartialRelease => "PRL",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADJ" => JournalKind::Adjust,
            "RES" => JournalKind::Reserve,
            "CNF" => JournalKind::Confirm,
            "REL" => JournalKind::Release,
            "PRL" => JournalKind::PartialRelease,
            _ => return None,
        })
    }
}

/// One change as a script journalled it. An entry's payload is lines joined by `\n`, each
/// `KIND w s da dr a r v q x ts reason orderNo traceId remark`, space-separated; text
/// fields may be empty; the remark is last and may hold spaces (never a newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalLine {
    pub kind: JournalKind,
    pub key: SkuKey,
    /// Deltas of available and reserved, and the values after.
    pub delta_available: i64,
    pub delta_reserved: i64,
    pub available: i64,
    pub reserved: i64,
    /// The position's seq after this change.
    pub seq: i64,
    /// Line quantity and hold expiry (ms) for reservation lines; 0 otherwise.
    pub qty: i64,
    pub expire_at_ms: i64,
    /// When, in ms since the epoch.
    pub ts_ms: i64,
    pub reason: String,
    /// Order number (or adjustment request id).
    pub order_no: String,
    pub trace_id: String,
    pub remark: String,
}

pub const JOURNAL_FIELDS: usize = 15;

/// The text of `a`, `r` and `v` in a line that inherits them (see [`JournalLine::parse`]).
pub const INHERITED: &str = ".";

impl JournalLine {
    /// A line whose `a`, `r` and `v` are all given.
    pub fn parse(line: &str) -> Option<JournalLine> {
        Self::parse_after(line, |_| None)
    }

    /// A line of an entry. Its `a`, `r` and `v` may each be `.` (all three or none): the
    /// values after the previous line of the same position in the same entry (`previous`
    /// gives them: available, reserved, seq) plus this line's deltas, and seq + 1. The
    /// reserve script writes them so for every order of a position but the first in a
    /// call (lua/lib.lua, `hold_units`).
    pub fn parse_after(
        line: &str,
        previous: impl FnOnce(SkuKey) -> Option<(i64, i64, i64)>,
    ) -> Option<JournalLine> {
        let mut f = line.splitn(JOURNAL_FIELDS, ' ');
        let kind = JournalKind::parse(f.next()?)?;
        let mut num = || f.next()?.parse::<i64>().ok();
        let (w, s, da, dr) = (num()?, num()?, num()?, num()?);
        let key = SkuKey::new(WarehouseId(w), SkuId(s));
        let (a, r, v) = match (f.next()?, f.next()?, f.next()?) {
            (INHERITED, INHERITED, INHERITED) => {
                let (a, r, v) = previous(key)?;
                (a.checked_add(da)?, r.checked_add(dr)?, v.checked_add(1)?)
            }
            (a, r, v) => (a.parse().ok()?, r.parse().ok()?, v.parse().ok()?),
        };
        let mut num = || f.next()?.parse::<i64>().ok();
        let (q, x, ts) = (num()?, num()?, num()?);
        let reason = f.next()?.to_string();
        let order_no = f.next()?.to_string();
        let trace_id = f.next()?.to_string();
        let remark = f.next()?.to_string();
        Some(JournalLine {
            kind,
            key,
            delta_available: da,
            delta_reserved: dr,
            available: a,
            reserved: r,
            seq: v,
            qty: q,
            expire_at_ms: x,
            ts_ms: ts,
            reason,
            order_no,
            trace_id,
            remark,
        })
    }

    pub fn format(&self) -> String {
        format!(
            "{} {} {} {} {} {} {} {} {} {} {} {} {} {} {}",
            self.kind.as_str(),
            self.key.warehouse_id,
            self.key.sku_id,
            self.delta_available,
            self.delta_reserved,
            self.available,
            self.reserved,
            self.seq,
            self.qty,
            self.expire_at_ms,
            self.ts_ms,
            self.reason,
            self.order_no,
            self.trace_id,
            self.remark
        )
    }
}

/// A text field bound for a journal line or a record: no whitespace in single-word
/// fields, no newline anywhere, bounded length.
pub fn word(s: &str, max_chars: usize) -> String {
    s.chars()
        .take(max_chars)
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect()
}

/// The remark: the last journal field; spaces stay, line breaks become spaces.
pub fn remark(s: &str, max_chars: usize) -> String {
    s.chars()
        .take(max_chars)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Every script answers a flat array of items, [`REPLY_WIDTH`] values each: a status
/// word and four integers whose meaning depends on the script and the status.
pub const REPLY_WIDTH: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyItem {
    pub status: String,
    pub n: [i64; 4],
}

#[derive(Debug, thiserror::Error)]
#[error("unexpected reply from script {script}: {detail}")]
pub struct BadReply {
    pub script: &'static str,
    pub detail: String,
}

fn value_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Nil => Some(0),
        _ => None,
    }
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The status of a reply item that repeats the item before it `n[0]` more times
/// (lua/lib.lua, `reply`): equal items in a row are sent once.
pub const AGAIN: &str = "AGAIN";

/// Most items one reply may expand to: a script answers one item per order of a batch (a
/// few thousand at most) plus its positions, so a count beyond this is a bad reply, not
/// a reason to allocate.
const MAX_REPLY_ITEMS: usize = 1 << 20;

/// Reads a script's reply, `AGAIN` items expanded; `items`, when given, is how many items
/// it must hold.
pub fn parse_reply(
    script: &'static str,
    reply: &Value,
    items: Option<usize>,
) -> Result<Vec<ReplyItem>, BadReply> {
    let bad = |detail: String| BadReply { script, detail };
    let Value::Array(values) = reply else {
        return Err(bad(format!("not an array: {reply:?}")));
    };
    if values.len() % REPLY_WIDTH != 0 {
        return Err(bad(format!("{} values", values.len())));
    }
    let mut out: Vec<ReplyItem> = Vec::with_capacity(values.len() / REPLY_WIDTH);
    for chunk in values.chunks(REPLY_WIDTH) {
        let (status, numbers) = chunk
            .split_first()
            .ok_or_else(|| bad("empty item".into()))?;
        let mut n = [0i64; 4];
        for (slot, v) in n.iter_mut().zip(numbers) {
            *slot = value_i64(v).ok_or_else(|| bad(format!("{v:?}")))?;
        }
        let is_again = match status {
            Value::BulkString(bytes) => bytes.as_slice() == AGAIN.as_bytes(),
            Value::SimpleString(s) => s == AGAIN,
            _ => false,
        };
        if is_again {
            let previous = out
                .last()
                .cloned()
                .ok_or_else(|| bad(format!("{AGAIN} as the first item")))?;
            let times = usize::try_from(n[0])
                .ok()
                .filter(|t| *t >= 1 && out.len() + t <= MAX_REPLY_ITEMS)
                .ok_or_else(|| bad(format!("{AGAIN} {}", n[0])))?;
            out.extend(std::iter::repeat_n(previous, times));
            continue;
        }
        let status = value_text(status).ok_or_else(|| bad(format!("{status:?}")))?;
        out.push(ReplyItem { status, n });
    }
    if let Some(items) = items {
        if out.len() != items {
            return Err(bad(format!(
                "{} items where {items} were expected",
                out.len()
            )));
        }
    }
    Ok(out)
}

/// A position's counters as a script left them (its `LEVELS` reply item).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LevelsAfter {
    pub key: SkuKey,
    pub available: i64,
    pub reserved: i64,
    pub seq: i64,
}

/// Splits the reply of a batch script (reserve, confirm, release): `orders` items, one per
/// order, then a `LEVELS position# avail reserved seq` item per position the call read
/// (`positions` lists the call's positions in argument order, 1-based in the reply).
pub fn split_levels(
    script: &'static str,
    mut items: Vec<ReplyItem>,
    orders: usize,
    positions: &[SkuKey],
) -> Result<(Vec<ReplyItem>, Vec<LevelsAfter>), BadReply> {
    let bad = |detail: String| BadReply { script, detail };
    if items.len() < orders {
        return Err(bad(format!("{} items for {orders} orders", items.len())));
    }
    if items
        .iter()
        .take(orders)
        .any(|item| item.status == "LEVELS")
    {
        return Err(bad(format!("fewer than {orders} order items")));
    }
    let tail = items.split_off(orders);
    let levels = tail
        .into_iter()
        .map(|item| {
            let [k, available, reserved, seq] = item.n;
            let key = usize::try_from(k)
                .ok()
                .and_then(|k| k.checked_sub(1))
                .and_then(|k| positions.get(k))
                .filter(|_| item.status == "LEVELS")
                .ok_or_else(|| bad(format!("{} {k} after the orders", item.status)))?;
            Ok(LevelsAfter {
                key: *key,
                available,
                reserved,
                seq,
            })
        })
        .collect::<Result<Vec<_>, BadReply>>()?;
    Ok((items, levels))
}

/// Reads the `LEVELS:<w>:<s> 0 avail reserved seq` items of a script that finds its
/// positions itself (lua/expire.lua): the position is named in the status word.
pub fn named_levels<'a>(
    script: &'static str,
    items: impl IntoIterator<Item = &'a ReplyItem>,
) -> Result<Vec<LevelsAfter>, BadReply> {
    items
        .into_iter()
        .map(|item| {
            let key = item
                .status
                .strip_prefix("LEVELS:")
                .and_then(|rest| rest.split_once(':'))
                .and_then(|(w, s)| {
                    Some(SkuKey::new(
                        WarehouseId(w.parse().ok()?),
                        SkuId(s.parse().ok()?),
                    ))
                })
                .ok_or_else(|| BadReply {
                    script,
                    detail: format!("{} where LEVELS:<w>:<s> was expected", item.status),
                })?;
            let [_, available, reserved, seq] = item.n;
            Ok(LevelsAfter {
                key,
                available,
                reserved,
                seq,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_a_group_share_its_hash_tag() {
        let keys = Keys::new("p:", 16);
        let k = SkuKey::new(WarehouseId(1), SkuId(1001));
        let g = keys.group(k);
        assert!(g < 16);
        assert_eq!(keys.stock(k), format!("p:inv:{{g{g}}}:s:1:1001"));
        assert_eq!(format!("{}1:1001", keys.stock_prefix(g)), keys.stock(k));
        assert_eq!(keys.orders(g), format!("p:inv:{{g{g}}}:o"));
        assert_eq!(keys.journal(g), format!("p:inv:{{g{g}}}:j"));
        assert_eq!(keys.holds(g), format!("p:inv:{{g{g}}}:h"));
        assert_eq!(keys.parse_stock_key(&keys.stock(k)), Some(k));
        assert_eq!(keys.parse_stock_key("p:inv:{g1}:o"), None);
        assert_eq!(keys.journals().len(), 16);
    }

    #[test]
    fn named_levels_read_the_position_from_the_status() {
        let item = |status: &str, n: [i64; 4]| ReplyItem {
            status: status.to_string(),
            n,
        };
        let levels = named_levels("expire", &[item("LEVELS:2:1001", [0, 7, 3, 42])]).unwrap();
        assert_eq!(
            levels,
            vec![LevelsAfter {
                key: SkuKey::new(WarehouseId(2), SkuId(1001)),
                available: 7,
                reserved: 3,
                seq: 42,
            }]
        );
        for bad in ["LEVELS", "LEVELS:2", "LEVELS:x:1", "RELEASED"] {
            assert!(
                named_levels("expire", &[item(bad, [0; 4])]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn groups_spread_and_are_stable() {
        // Pinned: changing the hash would move every position of a running deployment.
        assert_eq!(
            group_of(SkuKey::new(WarehouseId(1), SkuId(1001)), 16),
            group_of(SkuKey::new(WarehouseId(1), SkuId(1001)), 16)
        );
        let mut seen = std::collections::HashSet::new();
        for s in 0..1000 {
            seen.insert(group_of(SkuKey::new(WarehouseId(1), SkuId(s)), 16));
        }
        assert_eq!(seen.len(), 16);
        assert_eq!(group_of(SkuKey::new(WarehouseId(1), SkuId(5)), 1), 0);
        // In range, and 1000 SKUs over 8 groups leave none nearly empty.
        let mut counts = [0; 8];
        for sku in 0..1000 {
            let g = group_of(SkuKey::new(WarehouseId(1), SkuId(sku)), 8) as usize;
            assert!(g < 8);
            counts[g] += 1;
        }
        assert!(counts.iter().all(|&c| c > 50), "{counts:?}");
    }

    #[test]
    fn records_and_directory_entries_round_trip() {
        let raw = "1732540000000 1:1001:2:RESERVED 2:7:1:CONFIRMED";
        let record = OrderRecord::parse(raw).unwrap();
        assert_eq!(record.lines.len(), 2);
        assert_eq!(
            record
                .line(SkuKey::new(WarehouseId(2), SkuId(7)))
                .unwrap()
                .qty,
            1
        );
        assert_eq!(record.format(), raw);
        let partial = "1732540000000 1:1001:5:CONFIRMED:3";
        let record = OrderRecord::parse(partial).unwrap();
        assert_eq!(record.lines[0].confirmed_qty(), Some(3));
        assert_eq!(record.lines[0].qty, 5);
        assert_eq!(record.format(), partial);
        for bad in [
            "",
            "x 1:1:1:RESERVED",
            "1 1:1:1:HELD",
            "1",
            "1 1:1:1:RESERVED:9",
            "1 1:1:3:CONFIRMED:x",
            "1 1:1:3:CONFIRMED:1:1",
        ] {
            assert_eq!(OrderRecord::parse(bad), None, "{bad:?}");
        }
        let dir = DirectoryEntry::parse("1732540000000 1:1001:2 2:7:1").unwrap();
        assert_eq!(
            dir.positions(),
            vec![
                SkuKey::new(WarehouseId(1), SkuId(1001)),
                SkuKey::new(WarehouseId(2), SkuId(7))
            ]
        );
        assert_eq!(dir.format(), "1732540000000 1:1001:2 2:7:1");
        assert_eq!(
            DirectoryEntry::parse("! 99"),
            Some(DirectoryEntry::Tombstone { until_ms: 99 })
        );
        assert_eq!(DirectoryEntry::parse("!"), None);
    }

    #[test]
    fn journal_lines_round_trip_with_empty_fields_and_spaced_remarks() {
        let line = JournalLine {
            kind: JournalKind::Release,
            key: SkuKey::new(WarehouseId(1), SkuId(1001)),
            delta_available: 2,
            delta_reserved: -2,
            available: 10,
            reserved: 0,
            seq: 7,
            qty: 2,
            expire_at_ms: 1_700_000_900_000,
            ts_ms: 1_700_000_000_123,
            reason: "RELEASE".into(),
            order_no: "ORD-1".into(),
            trace_id: String::new(),
            remark: "customer changed mind".into(),
        };
        assert_eq!(JournalLine::parse(&line.format()), Some(line));
        assert_eq!(JournalLine::parse("RES 1 x"), None);
        assert_eq!(word("a b\nc", 64), "a_b_c");
        assert_eq!(remark("a b\nc", 64), "a b c");
    }

    #[test]
    fn the_lua_side_names_the_same_states_and_ranks() {
        let lib = include_str!("../../lua/lib.lua");
        let line = lib
            .lines()
            .find(|l| l.starts_with("local RANK = "))
            .expect("RANK table in lua/lib.lua");
        for state in STATES {
            let rank = state.rank();
            assert!(
                line.contains(&format!("{} = {rank}", state.as_str())),
                "lua/lib.lua RANK lacks {} = {rank}: {line}",
                state.as_str()
            );
        }
        assert_eq!(line.matches(" = ").count(), STATES.len() + 1);
        // The journal line the Lua side writes has the fields the Rust side reads.
        let fields = lib
            .lines()
            .find(|l| l.starts_with("local JOURNAL_FIELDS = "))
            .expect("JOURNAL_FIELDS in lua/lib.lua");
        assert!(fields.ends_with(&format!("= {JOURNAL_FIELDS}")), "{fields}");
        let width = lib
            .lines()
            .find(|l| l.starts_with("local REPLY_WIDTH = "))
            .expect("REPLY_WIDTH in lua/lib.lua");
        assert!(width.ends_with(&format!("= {REPLY_WIDTH}")), "{width}");
        assert!(lib.contains(&format!("'{AGAIN}', 1, 0, 0, 0")));
        assert!(lib.contains(&format!("' {INHERITED} {INHERITED} {INHERITED} '")));
    }

    /// Every line state a script compares with (`st == 'X'`) or writes into a record
    /// (`':X'`) is one of `STATES` or a cluster state: a state spelt anywhere else would
    /// be a record the Rust side cannot read.
    #[test]
    fn every_state_a_script_names_is_a_known_one() {
        let known: Vec<&str> = STATES
            .iter()
            .map(|s| s.as_str())
            .chain([PENDING, ABORTED])
            .collect();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/lua");
        let mut seen = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(dir).expect("lua/") {
            let path = entry.expect("lua/ entry").path();
            let text = std::fs::read_to_string(&path).expect("a script");
            for marker in ["st == '", "st ~= '", "st = '", "':"] {
                for (at, _) in text.match_indices(marker) {
                    let word: String = text[at + marker.len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_uppercase())
                        .collect();
                    if word.len() >= 4 {
                        assert!(
                            known.contains(&word.as_str()),
                            "{} names the line state {word}, unknown to store::wire",
                            path.display()
                        );
                        seen.insert(word);
                    }
                }
            }
        }
        // The scan finds what it looks for: every state is named somewhere.
        for state in &known {
            assert!(seen.contains(*state), "no script names {state}: {seen:?}");
        }
    }

    #[test]
    fn a_call_numbers_groups_and_positions_once() {
        let keys = Keys::new("", 16);
        let mut layout = CallLayout::default();
        let a = SkuKey::new(WarehouseId(1), SkuId(1));
        let b = SkuKey::new(WarehouseId(1), SkuId(2));
        assert_eq!(layout.position(&keys, a), 1);
        assert_eq!(layout.position(&keys, b), 2);
        assert_eq!(layout.position(&keys, a), 1);
        assert_eq!(layout.positions.len(), 2);
        let expected_groups = if keys.group(a) == keys.group(b) { 1 } else { 2 };
        assert_eq!(layout.groups.len(), expected_groups);
        assert_eq!(layout.group_of(&keys, a), 1);
    }

    #[test]
    fn replies_have_one_shape() {
        let reply = Value::Array(vec![
            Value::BulkString(b"RESERVED".to_vec()),
            Value::Int(5),
            Value::Int(0),
            Value::Int(0),
            Value::Int(0),
        ]);
        let items = parse_reply("reserve", &reply, Some(1)).unwrap();
        assert_eq!(items[0].status, "RESERVED");
        assert_eq!(items[0].n, [5, 0, 0, 0]);
        assert!(parse_reply("reserve", &reply, Some(2)).is_err());
        assert!(parse_reply("reserve", &Value::Array(vec![Value::Int(1)]), None).is_err());
    }

    fn values(items: &[(&str, i64)]) -> Value {
        Value::Array(
            items
                .iter()
                .flat_map(|(status, n)| {
                    [
                        Value::BulkString(status.as_bytes().to_vec()),
                        Value::Int(*n),
                        Value::Int(0),
                        Value::Int(0),
                        Value::Int(0),
                    ]
                })
                .collect(),
        )
    }

    #[test]
    fn an_again_item_repeats_the_item_before_it() {
        let reply = values(&[
            ("RESERVED", 5),
            (AGAIN, 2),
            ("INSUFFICIENT", 1),
            (AGAIN, 1),
            ("RESERVED", 5),
        ]);
        let items = parse_reply("reserve", &reply, Some(6)).unwrap();
        let statuses: Vec<&str> = items.iter().map(|i| i.status.as_str()).collect();
        assert_eq!(
            statuses,
            [
                "RESERVED",
                "RESERVED",
                "RESERVED",
                "INSUFFICIENT",
                "INSUFFICIENT",
                "RESERVED"
            ]
        );
        assert!(items
            .iter()
            .all(|i| i.n[0] == 5 || i.status == "INSUFFICIENT"));
        // The count is checked after the expansion.
        assert!(parse_reply("reserve", &reply, Some(5)).is_err());
        // An AGAIN with nothing before it, or with no positive count, is a bad reply.
        assert!(parse_reply("reserve", &values(&[(AGAIN, 1)]), None).is_err());
        assert!(parse_reply("reserve", &values(&[("RESERVED", 5), (AGAIN, 0)]), None).is_err());
        assert!(parse_reply("reserve", &values(&[("RESERVED", 5), (AGAIN, -3)]), None).is_err());
        assert!(parse_reply(
            "reserve",
            &values(&[("RESERVED", 5), (AGAIN, i64::MAX)]),
            None
        )
        .is_err());
    }

    #[test]
    fn levels_follow_the_order_items() {
        let item = |status: &str, n: [i64; 4]| ReplyItem {
            status: status.to_string(),
            n,
        };
        let positions = [
            SkuKey::new(WarehouseId(1), SkuId(10)),
            SkuKey::new(WarehouseId(1), SkuId(20)),
        ];
        let items = vec![
            item("RESERVED", [5, 0, 0, 0]),
            item("INSUFFICIENT", [1, 0, 0, 0]),
            item("LEVELS", [2, 7, 3, 11]),
        ];
        let (orders, levels) = split_levels("reserve", items.clone(), 2, &positions).unwrap();
        assert_eq!(orders, items[..2].to_vec());
        assert_eq!(
            levels,
            vec![LevelsAfter {
                key: positions[1],
                available: 7,
                reserved: 3,
                seq: 11
            }]
        );
        assert!(split_levels("reserve", items.clone(), 3, &positions).is_err());
        assert!(split_levels("reserve", items.clone(), 4, &positions).is_err());
        let out_of_range = vec![item("LEVELS", [3, 0, 0, 0])];
        assert!(split_levels("reserve", out_of_range, 0, &positions).is_err());
    }
}
