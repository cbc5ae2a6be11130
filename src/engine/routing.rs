//! Warehouse routing, the planning half. From the register's enabled warehouses, the
//! request's strategy and the order's lines it builds the plans `lua/route.lua` tries in
//! order; the script holds the first plan whose lines all have the stock, in the same call,
//! so the choice is atomic with the hold (a read followed by a reserve would race).

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::domain::{SkuId, SkuKey, WarehouseId};
use crate::engine::EngineError;
use crate::store::routing::RoutePlan;
/// At most this many warehouses are considered per SKU (bounds the script's work).
pub const MAX_CANDIDATES: usize = 32;

/// At most this many positions (lines × eligible warehouses) are read to plan one order:
/// a larger order must name a region or fewer lines.
pub const MAX_POSITIONS_READ: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Strategy {
    /// By priority (lower first), optionally only the order's region.
    Priority,
    /// The warehouse with the most available units first.
    MostStock,
    /// One warehouse that can ship the whole order; else a split, when allowed.
    SingleWarehouseFirst,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Routing {
    pub strategy: Strategy,
    /// Only warehouses of this region.
    pub region: Option<String>,
    /// A line may be shipped from several warehouses.
    #[serde(default)]
    pub allow_split: bool,
}

/// An enabled warehouse, as routing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub warehouse_id: i64,
    pub priority: i32,
    pub region: Option<String>,
}

/// One line of the order: a pinned line names its warehouse and is not routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    pub sku_id: i64,
    pub qty: i64,
    pub warehouse_id: Option<i64>,
}

/// A line as planned: its quantity and the positions it may come from, in preference
/// order.
type PlannedLine = (i64, Vec<SkuKey>);

/// Sums lines that ask for the same SKU from the same place (a pinned warehouse, or
/// wherever routing puts it); by SKU, pinned lines before the routed one, so the script
/// fills what a pinned line needs before routing takes from the same warehouse.
pub fn merge_asks(asks: &[Ask]) -> Vec<Ask> {
    let mut merged: BTreeMap<(i64, bool, Option<i64>), i64> = BTreeMap::new();
    for a in asks {
        *merged
            .entry((a.sku_id, a.warehouse_id.is_none(), a.warehouse_id))
            .or_insert(0) += a.qty;
    }
    merged
        .into_iter()
        .map(|((sku_id, _, warehouse_id), qty)| Ask {
            sku_id,
            qty,
            warehouse_id,
        })
        .collect()
}

/// Checks routed lines as `merge_lines` checks fixed ones (ids, quantities, line count),
/// and merges them.
pub fn check_asks(asks: &[Ask], max_lines: usize, max_qty: i64) -> Result<Vec<Ask>, String> {
    if asks.is_empty() {
        return Err("an order needs at least one line".into());
    }
    if asks.len() > max_lines {
        return Err(format!(
            "an order may have at most {max_lines} lines, got {}",
            asks.len()
        ));
    }
    if asks
        .iter()
        .any(|a| a.sku_id <= 0 || a.warehouse_id.is_some_and(|w| w <= 0))
    {
        return Err("skuId and warehouseId must be positive integers".into());
    }
    let merged = merge_asks(asks);
    if let Some(a) = asks
        .iter()
        .chain(&merged)
        .find(|a| a.qty <= 0 || a.qty > max_qty)
    {
        return Err(format!(
            "qty must be between 1 and {max_qty}, got {} for sku {}",
            a.qty, a.sku_id
        ));
    }
    Ok(merged)
}

/// Whether an order held before (its lines as the directory lists them) is what these
/// asks ask for: the same units per SKU, and each pinned line's units in its warehouse.
pub fn same_order(asks: &[Ask], held: &[(SkuKey, i64)]) -> bool {
    let mut per_sku: BTreeMap<i64, i64> = BTreeMap::new();
    for a in asks {
        *per_sku.entry(a.sku_id).or_insert(0) += a.qty;
    }
    let mut held_per_sku: BTreeMap<i64, i64> = BTreeMap::new();
    for (k, q) in held {
        *held_per_sku.entry(k.sku_id).or_insert(0) += q;
    }
    per_sku == held_per_sku
        && asks.iter().all(|a| match a.warehouse_id {
            None => true,
            Some(w) => held
                .iter()
                .any(|(k, q)| k.sku_id == a.sku_id && k.warehouse_id == w && *q >= a.qty),
        })
}

/// The positions whose levels `plans` needs: every eligible warehouse for each routed SKU.
pub fn positions_to_read(routing: &Routing, asks: &[Ask], sites: &[Site]) -> Vec<SkuKey> {
    let mut keys: Vec<SkuKey> = asks
        .iter()
        .flat_map(|ask| match ask.warehouse_id {
            Some(w) => vec![SkuKey::new(WarehouseId(w), SkuId(ask.sku_id))],
            None => sites
                .iter()
                .filter(|s| in_region(routing, s))
                .map(|s| SkuKey::new(WarehouseId(s.warehouse_id), SkuId(ask.sku_id)))
                .collect(),
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

fn in_region(routing: &Routing, site: &Site) -> bool {
    routing.region.is_none() || site.region == routing.region
}

/// The plans for an order, in the order the script tries them. `levels` holds the
/// available units of every position that exists (a warehouse without a position for the
/// SKU is not a candidate); MOST_STOCK orders by them, the script decides on its own reads.
pub fn plans(
    routing: &Routing,
    asks: &[Ask],
    sites: &[Site],
    levels: &HashMap<SkuKey, i64>,
) -> Result<Vec<RoutePlan>, EngineError> {
    let mut eligible: Vec<&Site> = sites.iter().filter(|s| in_region(routing, s)).collect();
    eligible.sort_by_key(|s| (s.priority, s.warehouse_id));
    let lines: Vec<PlannedLine> = asks
        .iter()
        .map(|ask| candidates(routing, ask, &eligible, levels))
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    match routing.strategy {
        Strategy::Priority | Strategy::MostStock => {
            out.push(if routing.allow_split {
                RoutePlan::Split(lines)
            } else {
                RoutePlan::WholeLine(lines)
            });
        }
        Strategy::SingleWarehouseFirst if asks.iter().all(|a| a.warehouse_id.is_some()) => {
            out.push(RoutePlan::WholeLine(lines));
        }
        Strategy::SingleWarehouseFirst => {
            // Each warehouse that can be the source of every routed line, by priority.
            for site in &eligible {
                let w = WarehouseId(site.warehouse_id);
                let whole: Option<Vec<(SkuKey, i64)>> = lines
                    .iter()
                    .zip(asks)
                    .map(|((qty, cands), ask)| match ask.warehouse_id {
                        Some(_) => cands.first().map(|k| (*k, *qty)),
                        None => cands
                            .iter()
                            .find(|k| k.warehouse_id == w.0)
                            .map(|k| (*k, *qty)),
                    })
                    .collect();
                if let Some(whole) = whole {
                    out.push(RoutePlan::Fixed(whole));
                }
            }
            // Else each line whole from one warehouse (lines of other SKUs may come from
            // other warehouses), then, when allowed, lines of one SKU over several.
            if lines.len() > 1 || out.is_empty() {
                out.push(RoutePlan::WholeLine(lines.clone()));
            }
            if routing.allow_split {
                out.push(RoutePlan::Split(lines));
            }
        }
    }
    Ok(out)
}

fn candidates(
    routing: &Routing,
    ask: &Ask,
    eligible: &[&Site],
    levels: &HashMap<SkuKey, i64>,
) -> Result<PlannedLine, EngineError> {
    let key = |w: i64| SkuKey::new(WarehouseId(w), SkuId(ask.sku_id));
    if let Some(w) = ask.warehouse_id {
        return Ok((ask.qty, vec![key(w)]));
    }
    // Only warehouses that stock the SKU at all (a position exists).
    let mut warehouses: Vec<(SkuKey, i64)> = eligible
        .iter()
        .filter_map(|s| {
            let k = key(s.warehouse_id);
            levels.get(&k).map(|a| (k, *a))
        })
        .collect();
    if routing.strategy == Strategy::MostStock {
        // Stable: equal stock keeps the priority order.
        warehouses.sort_by_key(|(_, a)| std::cmp::Reverse(*a));
    }
    warehouses.truncate(MAX_CANDIDATES);
    if warehouses.is_empty() {
        return Err(EngineError::NoWarehouse {
            sku_id: ask.sku_id,
            region: routing.region.clone(),
        });
    }
    Ok((ask.qty, warehouses.into_iter().map(|(k, _)| k).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `super::plans` with its error as text (EngineError has no PartialEq).
    fn plans(
        routing: &Routing,
        asks: &[Ask],
        sites: &[Site],
        levels: &HashMap<SkuKey, i64>,
    ) -> Result<Vec<RoutePlan>, String> {
        super::plans(routing, asks, sites, levels).map_err(|e| e.to_string())
    }

    fn site(id: i64, priority: i32, region: &str) -> Site {
        Site {
            warehouse_id: id,
            priority,
            region: Some(region.into()),
        }
    }

    fn routing(strategy: Strategy, region: Option<&str>, allow_split: bool) -> Routing {
        Routing {
            strategy,
            region: region.map(Into::into),
            allow_split,
        }
    }

    fn key(w: i64, s: i64) -> SkuKey {
        SkuKey::new(WarehouseId(w), SkuId(s))
    }

    fn levels(of: &[(i64, i64, i64)]) -> HashMap<SkuKey, i64> {
        of.iter().map(|(w, s, a)| (key(*w, *s), *a)).collect()
    }

    fn ask(sku: i64, qty: i64) -> Ask {
        Ask {
            sku_id: sku,
            qty,
            warehouse_id: None,
        }
    }

    #[test]
    fn priority_orders_by_priority_and_keeps_to_the_region() {
        let sites = [
            site(1, 20, "east"),
            site(2, 10, "east"),
            site(3, 5, "north"),
        ];
        let lv = levels(&[(1, 100, 5), (2, 100, 5), (3, 100, 5)]);
        let all = plans(
            &routing(Strategy::Priority, None, false),
            &[ask(100, 2)],
            &sites,
            &lv,
        );
        assert_eq!(
            all,
            Ok(vec![RoutePlan::WholeLine(vec![(
                2,
                vec![key(3, 100), key(2, 100), key(1, 100)]
            )])])
        );
        let east = plans(
            &routing(Strategy::Priority, Some("east"), true),
            &[ask(100, 2)],
            &sites,
            &lv,
        );
        assert_eq!(
            east,
            Ok(vec![RoutePlan::Split(vec![(
                2,
                vec![key(2, 100), key(1, 100)]
            )])])
        );
        assert_eq!(
            positions_to_read(
                &routing(Strategy::Priority, Some("east"), true),
                &[ask(100, 2)],
                &sites
            ),
            vec![key(1, 100), key(2, 100)]
        );
    }

    #[test]
    fn most_stock_orders_by_the_levels_and_skips_warehouses_without_the_sku() {
        let sites = [site(1, 1, "e"), site(2, 2, "e"), site(3, 3, "e")];
        let lv = levels(&[(1, 7, 3), (2, 7, 9)]);
        let p = plans(
            &routing(Strategy::MostStock, None, false),
            &[ask(7, 1)],
            &sites,
            &lv,
        );
        assert_eq!(
            p,
            Ok(vec![RoutePlan::WholeLine(vec![(
                1,
                vec![key(2, 7), key(1, 7)]
            )])])
        );
    }

    #[test]
    fn single_warehouse_first_offers_whole_order_warehouses_then_lines_then_a_split() {
        let sites = [site(1, 1, "e"), site(2, 2, "e"), site(3, 3, "e")];
        // Warehouse 1 has only sku 7; warehouses 2 and 3 have both.
        let lv = levels(&[(1, 7, 5), (2, 7, 5), (2, 8, 5), (3, 7, 1), (3, 8, 1)]);
        let asks = [ask(7, 2), ask(8, 1)];
        let lines = vec![
            (2, vec![key(1, 7), key(2, 7), key(3, 7)]),
            (1, vec![key(2, 8), key(3, 8)]),
        ];
        let no_split = plans(
            &routing(Strategy::SingleWarehouseFirst, None, false),
            &asks,
            &sites,
            &lv,
        );
        assert_eq!(
            no_split,
            Ok(vec![
                RoutePlan::Fixed(vec![(key(2, 7), 2), (key(2, 8), 1)]),
                RoutePlan::Fixed(vec![(key(3, 7), 2), (key(3, 8), 1)]),
                RoutePlan::WholeLine(lines.clone()),
            ])
        );
        let split = plans(
            &routing(Strategy::SingleWarehouseFirst, None, true),
            &asks,
            &sites,
            &lv,
        );
        assert_eq!(
            split.map(|p| p.last().cloned()),
            Ok(Some(RoutePlan::Split(lines)))
        );
    }

    #[test]
    fn a_pinned_line_is_not_routed_and_an_unstocked_sku_is_an_error() {
        let sites = [site(1, 1, "e")];
        let lv = levels(&[(1, 7, 5)]);
        let pinned = Ask {
            sku_id: 9,
            qty: 1,
            warehouse_id: Some(4),
        };
        let p = plans(
            &routing(Strategy::Priority, None, false),
            &[pinned, ask(7, 1)],
            &sites,
            &lv,
        );
        assert_eq!(
            p,
            Ok(vec![RoutePlan::WholeLine(vec![
                (1, vec![key(4, 9)]),
                (1, vec![key(1, 7)])
            ])])
        );
        assert_eq!(
            plans(
                &routing(Strategy::Priority, Some("w"), false),
                &[ask(7, 1)],
                &sites,
                &lv
            ),
            Err("no enabled warehouse in region w stocks sku 7".to_string())
        );
    }

    #[test]
    fn asks_are_merged_per_sku_and_place() {
        let pinned = |sku, qty, w| Ask {
            sku_id: sku,
            qty,
            warehouse_id: Some(w),
        };
        assert_eq!(
            merge_asks(&[
                ask(7, 1),
                pinned(7, 2, 3),
                ask(7, 4),
                pinned(7, 1, 3),
                ask(5, 1)
            ]),
            vec![ask(5, 1), pinned(7, 3, 3), ask(7, 5)]
        );
        assert!(
            check_asks(&[ask(7, 60), ask(7, 60)], 10, 100).is_err(),
            "sum"
        );
        assert!(check_asks(&[ask(7, 60), pinned(7, 60, 1)], 10, 100).is_ok());
        assert!(check_asks(&[ask(7, 0)], 10, 100).is_err());
        assert!(check_asks(&[pinned(7, 1, 0)], 10, 100).is_err());
        assert!(check_asks(&[], 10, 100).is_err());
        assert!(check_asks(&[ask(1, 1), ask(2, 1)], 1, 100).is_err());
    }

    #[test]
    fn a_repeat_is_the_same_order_by_sku_totals_and_pinned_places() {
        let pinned = |sku, qty, w| Ask {
            sku_id: sku,
            qty,
            warehouse_id: Some(w),
        };
        let held = [(key(2, 7), 3), (key(3, 7), 2), (key(3, 8), 1)];
        assert!(same_order(&[ask(7, 5), ask(8, 1)], &held));
        assert!(same_order(&[pinned(7, 2, 3), ask(7, 3), ask(8, 1)], &held));
        assert!(!same_order(&[pinned(7, 2, 4), ask(7, 3), ask(8, 1)], &held));
        assert!(!same_order(&[ask(7, 4), ask(8, 1)], &held));
        assert!(!same_order(&[ask(7, 5)], &held));
    }
}
