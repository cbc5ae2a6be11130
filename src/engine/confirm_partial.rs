//! Partial confirm: the order service ships fewer units than it held (a damaged unit, a
//! line removed after payment). Each line sells the units asked and gives the rest back to
//! sale in one script call (lua/confirm_partial.lua), as TigerBeetle posts a pending
//! transfer for a smaller amount. Single Redis only, like routing.

use std::collections::HashMap;

use serde::Deserialize;

use crate::domain::SkuKey;
use crate::engine::reservation::views_of;
use crate::engine::reservation::{confirm_result, LineView, ReservationEngine, TransitionOutcome};
use crate::engine::{now_ms, EngineError};
use crate::store::reservations::{PartialConfirmReply, TransitionReply};
use crate::store::wire::DirectoryEntry;

/// One line of a partial confirm: the units of a held line that ship.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfirmItem {
    #[schema(minimum = 1)]
    pub sku_id: i64,
    /// Needed only when the order holds the SKU in several warehouses (a routed split).
    #[schema(minimum = 1)]
    pub warehouse_id: Option<i64>,
    /// 0 up to the units held; the rest of the line goes back to sale.
    #[schema(minimum = 0)]
    pub qty: i64,
}

/// The units to sell of every line of the order (lines not named sell 0), checked against
/// what the order holds. Errors name the item at fault.
pub fn units_per_line(
    order_no: &str,
    items: &[ConfirmItem],
    held: &[(SkuKey, i64)],
    max_lines: usize,
) -> Result<Vec<(SkuKey, i64)>, EngineError> {
    if items.is_empty() || items.len() > max_lines {
        return Err(EngineError::Invalid(format!(
            "items must name 1-{max_lines} lines; without a body the whole order is confirmed"
        )));
    }
    let mut units: HashMap<SkuKey, i64> = HashMap::new();
    for item in items {
        if item.sku_id <= 0 || item.warehouse_id.is_some_and(|w| w <= 0) {
            return Err(EngineError::Invalid(
                "skuId and warehouseId must be positive integers".into(),
            ));
        }
        let candidates: Vec<(SkuKey, i64)> = held
            .iter()
            .copied()
            .filter(|(k, _)| {
                k.sku_id == item.sku_id && item.warehouse_id.is_none_or(|w| k.warehouse_id == w)
            })
            .collect();
        let (key, held_qty) = match candidates.as_slice() {
            [one] => *one,
            [] => {
                return Err(EngineError::Invalid(format!(
                    "order {order_no} holds no sku {}{}",
                    item.sku_id,
                    item.warehouse_id
                        .map(|w| format!(" in warehouse {w}"))
                        .unwrap_or_default()
                )))
            }
            several => {
                let warehouses: Vec<String> = several
                    .iter()
                    .map(|(k, _)| k.warehouse_id.to_string())
                    .collect();
                return Err(EngineError::Invalid(format!(
                    "order {order_no} holds sku {} in warehouses {}: name warehouseId",
                    item.sku_id,
                    warehouses.join(", ")
                )));
            }
        };
        if item.qty < 0 || item.qty > held_qty {
            return Err(EngineError::QuantityOutOfRange(format!(
                "qty of sku {} in warehouse {} must be 0 to the {held_qty} units held, got {}",
                key.sku_id, key.warehouse_id, item.qty
            )));
        }
        if units.insert(key, item.qty).is_some() {
            return Err(EngineError::Invalid(format!(
                "sku {} in warehouse {} is named twice",
                key.sku_id, key.warehouse_id
            )));
        }
    }
    if units.values().all(|q| *q == 0) {
        return Err(EngineError::Invalid(
            "every qty is 0: nothing ships, so release the order instead".into(),
        ));
    }
    Ok(held
        .iter()
        .map(|(k, _)| (*k, units.get(k).copied().unwrap_or(0)))
        .collect())
}

impl ReservationEngine {
    /// Confirm with the units that ship; the rest of each line is released (ledger RELEASE,
    /// remark PARTIAL_CONFIRM). A repeat with the same units answers `existed`; other
    /// units after a confirm are IDEMPOTENCY_CONFLICT.
    pub async fn confirm_partial(
        &self,
        order_no: &str,
        trace_id: &str,
        items: &[ConfirmItem],
    ) -> Result<TransitionOutcome, EngineError> {
        let result = self.confirm_partial_inner(order_no, trace_id, items).await;
        self.count_transition("confirm", &result);
        result
    }

    async fn confirm_partial_inner(
        &self,
        order_no: &str,
        trace_id: &str,
        items: &[ConfirmItem],
    ) -> Result<TransitionOutcome, EngineError> {
        if self.redis.is_cluster() {
            return Err(EngineError::UnsupportedOnCluster(
                "a partial confirm needs a single Redis; on a Redis Cluster confirm the whole \
                 order and release what does not ship by adjusting stock"
                    .into(),
            ));
        }
        let _permit = self
            .direct_calls
            .try_acquire()
            .map_err(|_| EngineError::Overloaded)?;
        // RETRY: the order changed between the look-up and the script; bounded.
        for _ in 0..3 {
            let Some(DirectoryEntry::Order { lines: held, .. }) =
                self.directory_entry(order_no).await?
            else {
                return Err(EngineError::ReservationNotFound(order_no.to_string()));
            };
            let units = units_per_line(
                order_no,
                items,
                &held,
                self.settings.inventory.max_lines_per_order,
            )?;
            let sent_at = std::time::Instant::now();
            let (reply, after) = self
                .redis
                .confirm_partial(
                    order_no,
                    trace_id,
                    &units,
                    false,
                    now_ms(),
                    self.settings.journal.max_pending_entries,
                )
                .await?;
            self.stock.cache().store_writes(&after, sent_at);
            let sold: Vec<LineView> = views_of(&units);
            return match reply {
                PartialConfirmReply::Done => confirm_result(order_no, TransitionReply::Done, sold),
                PartialConfirmReply::Exists => {
                    confirm_result(order_no, TransitionReply::Exists, sold)
                }
                PartialConfirmReply::Conflict => Err(EngineError::IdempotencyConflict(format!(
                    "order {order_no} was confirmed before with other quantities"
                ))),
                PartialConfirmReply::TooMany { key } => {
                    Err(EngineError::QuantityOutOfRange(format!(
                        "qty of sku {} in warehouse {} is more than the line holds",
                        key.sku_id, key.warehouse_id
                    )))
                }
                PartialConfirmReply::Refused(
                    crate::store::reservations::TransitionReply::Retry,
                ) => continue,
                PartialConfirmReply::Refused(other) => confirm_result(order_no, other, sold),
            };
        }
        Err(EngineError::Overloaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{SkuId, WarehouseId};

    fn key(w: i64, s: i64) -> SkuKey {
        SkuKey::new(WarehouseId(w), SkuId(s))
    }

    fn item(sku: i64, warehouse: Option<i64>, qty: i64) -> ConfirmItem {
        ConfirmItem {
            sku_id: sku,
            warehouse_id: warehouse,
            qty,
        }
    }

    #[test]
    fn items_resolve_to_the_lines_held_and_unnamed_lines_sell_nothing() {
        let held = [(key(1, 7), 3), (key(2, 7), 2), (key(1, 8), 4)];
        assert_eq!(
            units_per_line("O", &[item(7, Some(2), 1), item(8, None, 4)], &held, 10).ok(),
            Some(vec![(key(1, 7), 0), (key(2, 7), 1), (key(1, 8), 4)])
        );
        // Sku 7 is held in two warehouses: which one must be said.
        assert!(units_per_line("O", &[item(7, None, 1)], &held, 10).is_err());
        assert!(units_per_line("O", &[item(9, None, 1)], &held, 10).is_err());
        assert!(matches!(
            units_per_line("O", &[item(8, None, 5)], &held, 10),
            Err(EngineError::QuantityOutOfRange(_))
        ));
        assert!(units_per_line("O", &[item(8, None, -1)], &held, 10).is_err());
        assert!(
            units_per_line("O", &[item(8, None, 0)], &held, 10).is_err(),
            "all 0"
        );
        assert!(units_per_line("O", &[item(8, None, 1), item(8, Some(1), 2)], &held, 10).is_err());
        assert!(units_per_line("O", &[], &held, 10).is_err());
        assert!(units_per_line("O", &[item(8, None, 1), item(7, Some(1), 1)], &held, 1).is_err());
    }
}
