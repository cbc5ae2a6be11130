//! Warehouse routing, the planning half (WORK IN PROGRESS on branch wip/routing: not wired
//! to the API yet). From the register's enabled warehouses, the request's strategy and the
//! order's lines, it builds the plans a routing script tries in order; the script holds
//! the first plan whose lines all have the stock, in the same call (so the choice is atomic
//! with the hold). See the closing note of stop 15 for the rest of the design.

use std::collections::HashMap;

use serde::Deserialize;

use crate::domain::{SkuId, SkuKey, WarehouseId};

/// At most this many warehouses are considered per SKU (bounds the script's work).
pub const MAX_CANDIDATES: usize = 32;

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

/// A line with its candidate warehouses in preference order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidates {
    pub sku_id: i64,
    pub qty: i64,
    pub warehouses: Vec<i64>,
}

/// What the script tries, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Every line from the position given.
    Fixed(Vec<(SkuKey, i64)>),
    /// Each line wholly from the first of its candidates that has the quantity.
    FirstFit(Vec<Candidates>),
    /// Each line filled over its candidates in order (a split).
    Greedy(Vec<Candidates>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("no enabled warehouse{} can ship sku {sku_id}", region_text(.region))]
    NoWarehouse { sku_id: i64, region: Option<String> },
}

fn region_text(region: &Option<String>) -> String {
    region
        .as_ref()
        .map(|r| format!(" in region {r}"))
        .unwrap_or_default()
}

/// The plans for an order, in the order the script tries them.
pub fn plans(
    routing: &Routing,
    asks: &[Ask],
    sites: &[Site],
    levels: &HashMap<SkuKey, i64>,
) -> Result<Vec<Plan>, RoutingError> {
    let mut eligible: Vec<&Site> = sites
        .iter()
        .filter(|s| routing.region.is_none() || s.region == routing.region)
        .collect();
    eligible.sort_by_key(|s| (s.priority, s.warehouse_id));
    let lines: Vec<Candidates> = asks
        .iter()
        .map(|ask| candidates(routing, ask, &eligible, levels))
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    match routing.strategy {
        Strategy::Priority | Strategy::MostStock => {
            out.push(if routing.allow_split {
                Plan::Greedy(lines)
            } else {
                Plan::FirstFit(lines)
            });
        }
        Strategy::SingleWarehouseFirst => {
            // Each warehouse that is a candidate of every routed line, by priority.
            for site in &eligible {
                let w = site.warehouse_id;
                if lines.iter().all(|l| l.warehouses.contains(&w)) {
                    out.push(Plan::Fixed(
                        lines
                            .iter()
                            .zip(asks)
                            .map(|(l, ask)| {
                                let at = ask.warehouse_id.unwrap_or(w);
                                (SkuKey::new(WarehouseId(at), SkuId(l.sku_id)), l.qty)
                            })
                            .collect(),
                    ));
                }
            }
            if routing.allow_split {
                out.push(Plan::Greedy(lines));
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
) -> Result<Candidates, RoutingError> {
    if let Some(w) = ask.warehouse_id {
        return Ok(Candidates {
            sku_id: ask.sku_id,
            qty: ask.qty,
            warehouses: vec![w],
        });
    }
    let level = |w: i64| {
        levels
            .get(&SkuKey::new(WarehouseId(w), SkuId(ask.sku_id)))
            .copied()
    };
    // Only warehouses that stock the SKU at all (a position exists).
    let mut warehouses: Vec<&Site> = eligible
        .iter()
        .copied()
        .filter(|s| level(s.warehouse_id).is_some())
        .collect();
    if routing.strategy == Strategy::MostStock {
        // Stable: equal stock keeps the priority order.
        warehouses.sort_by_key(|s| std::cmp::Reverse(level(s.warehouse_id).unwrap_or(0)));
    }
    warehouses.truncate(MAX_CANDIDATES);
    if warehouses.is_empty() {
        return Err(RoutingError::NoWarehouse {
            sku_id: ask.sku_id,
            region: routing.region.clone(),
        });
    }
    Ok(Candidates {
        sku_id: ask.sku_id,
        qty: ask.qty,
        warehouses: warehouses.iter().map(|s| s.warehouse_id).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn levels(of: &[(i64, i64, i64)]) -> HashMap<SkuKey, i64> {
        of.iter()
            .map(|(w, s, a)| (SkuKey::new(WarehouseId(*w), SkuId(*s)), *a))
            .collect()
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
            Ok(vec![Plan::FirstFit(vec![Candidates {
                sku_id: 100,
                qty: 2,
                warehouses: vec![3, 2, 1]
            }])])
        );
        let east = plans(
            &routing(Strategy::Priority, Some("east"), true),
            &[ask(100, 2)],
            &sites,
            &lv,
        );
        assert_eq!(
            east,
            Ok(vec![Plan::Greedy(vec![Candidates {
                sku_id: 100,
                qty: 2,
                warehouses: vec![2, 1]
            }])])
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
            Ok(vec![Plan::FirstFit(vec![Candidates {
                sku_id: 7,
                qty: 1,
                warehouses: vec![2, 1]
            }])])
        );
    }

    #[test]
    fn single_warehouse_first_offers_whole_order_warehouses_then_a_split() {
        let sites = [site(1, 1, "e"), site(2, 2, "e")];
        // Warehouse 1 has only sku 7; warehouse 2 has both.
        let lv = levels(&[(1, 7, 5), (2, 7, 5), (2, 8, 5)]);
        let asks = [ask(7, 2), ask(8, 1)];
        let key = |w, s| SkuKey::new(WarehouseId(w), SkuId(s));
        let no_split = plans(
            &routing(Strategy::SingleWarehouseFirst, None, false),
            &asks,
            &sites,
            &lv,
        );
        assert_eq!(
            no_split,
            Ok(vec![Plan::Fixed(vec![(key(2, 7), 2), (key(2, 8), 1)])])
        );
        let split = plans(
            &routing(Strategy::SingleWarehouseFirst, None, true),
            &asks,
            &sites,
            &lv,
        )
        .unwrap();
        assert_eq!(split.len(), 2);
        assert!(matches!(split[1], Plan::Greedy(_)));
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
        )
        .unwrap();
        let Plan::FirstFit(lines) = &p[0] else {
            panic!("{p:?}")
        };
        assert_eq!(lines[0].warehouses, vec![4]);
        assert_eq!(
            plans(
                &routing(Strategy::Priority, Some("w"), false),
                &[ask(7, 1)],
                &sites,
                &lv
            ),
            Err(RoutingError::NoWarehouse {
                sku_id: 7,
                region: Some("w".into())
            })
        );
    }
}
