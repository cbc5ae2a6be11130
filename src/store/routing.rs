//! One routed order in one `lua/route.lua` call (single Redis): the first plan whose lines
//! all have the stock is held.

use crate::domain::{SkuId, SkuKey, WarehouseId};
use crate::store::redis::{RedisResult, RedisStore, RedisStoreError};
use crate::store::reservations::ReserveParams;
use crate::store::wire::{self, LevelsAfter};

/// What the script tries, in order (engine::routing builds them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutePlan {
    /// Every line from the position given.
    Fixed(Vec<(SkuKey, i64)>),
    /// Each line (qty, candidates in order) wholly from the first candidate that has it.
    WholeLine(Vec<(i64, Vec<SkuKey>)>),
    /// Each line filled over its candidates in order.
    Split(Vec<(i64, Vec<SkuKey>)>),
}

/// A plan as the script numbers it: kind (F, W, S), then per line qty and the candidates'
/// position#s.
type NumberedPlan = (&'static str, Vec<(i64, Vec<usize>)>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteReply {
    /// Held now by plan `plan` (0-based), with the lines held.
    Reserved {
        expire_at_ms: i64,
        plan: usize,
        lines: Vec<(SkuKey, i64)>,
    },
    /// Reserved before with the same SKUs and quantities.
    Exists {
        expire_at_ms: i64,
        lines: Vec<(SkuKey, i64)>,
    },
    Conflict,
    Cancelled,
    /// No plan had the stock; the first line the last plan could not fill, and the most
    /// its candidates offered (a split: their sum). Nothing was held.
    Insufficient {
        sku_id: i64,
        requested: i64,
        offered: i64,
    },
    JournalFull,
}

impl RedisStore {
    pub async fn route(
        &self,
        order_no: &str,
        trace_id: &str,
        plans: &[RoutePlan],
        params: ReserveParams,
    ) -> RedisResult<(RouteReply, Vec<LevelsAfter>)> {
        let bad = |detail: String| RedisStoreError::BadReply {
            script: "route",
            detail,
        };
        if self.is_cluster() {
            return Err(bad("routing is not built for a Redis Cluster yet".into()));
        }
        let keys = self.keys();
        let mut layout = wire::CallLayout::default();
        let mut numbered: Vec<NumberedPlan> = Vec::with_capacity(plans.len());
        for plan in plans {
            let (kind, lines): (&'static str, Vec<(i64, Vec<SkuKey>)>) = match plan {
                RoutePlan::Fixed(lines) => {
                    ("F", lines.iter().map(|(k, q)| (*q, vec![*k])).collect())
                }
                RoutePlan::WholeLine(lines) => ("W", lines.clone()),
                RoutePlan::Split(lines) => ("S", lines.clone()),
            };
            let lines = lines
                .into_iter()
                .map(|(q, cands)| (q, cands.iter().map(|k| layout.position(keys, *k)).collect()))
                .collect();
            numbered.push((kind, lines));
        }
        let mut invocation = self.scripts.route.prepare_invoke();
        layout.push_reserve_head(keys, params.head(), &mut invocation);
        invocation
            .arg(order_no)
            .arg(wire::word(trace_id, 64))
            .arg(numbered.len());
        for (kind, lines) in &numbered {
            invocation.arg(*kind).arg(lines.len());
            for (qty, cands) in lines {
                invocation.arg(*qty).arg(cands.len());
                for c in cands {
                    invocation.arg(*c);
                }
            }
        }
        let items = self.run_script("route", &invocation, None).await?;
        let head = items
            .iter()
            .position(|i| i.status == "LEVELS")
            .unwrap_or(items.len());
        let (items, levels) = wire::split_levels("route", items, head, &layout.positions)?;
        let Some((first, rest)) = items.split_first() else {
            return Err(bad("no reply".into()));
        };
        let lines = rest
            .iter()
            .filter(|i| i.status == "LINE")
            .map(|i| (SkuKey::new(WarehouseId(i.n[0]), SkuId(i.n[1])), i.n[2]))
            .collect();
        let reply = match first.status.as_str() {
            "RESERVED" => RouteReply::Reserved {
                expire_at_ms: first.n[0],
                plan: usize::try_from(first.n[1] - 1).map_err(|_| bad("plan 0".into()))?,
                lines,
            },
            s if s.starts_with("EXISTS") => RouteReply::Exists {
                expire_at_ms: first.n[0],
                lines,
            },
            "CONFLICT" => RouteReply::Conflict,
            "CANCELLED" => RouteReply::Cancelled,
            "INSUFFICIENT" => RouteReply::Insufficient {
                sku_id: first.n[0],
                requested: first.n[1],
                offered: first.n[2],
            },
            "JOURNAL_FULL" => RouteReply::JournalFull,
            other => return Err(bad(format!("status {other}"))),
        };
        Ok((reply, levels))
    }
}
