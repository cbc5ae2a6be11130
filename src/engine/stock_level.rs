//! Stock-level events (STOCK_LOW, STOCK_OUT, STOCK_BACK), derived from the journal by the
//! persistence path, which sees every change with its before and after values. An event is
//! a property of one journal line (available before = after - delta), so it is told once
//! per crossing however many orders are in flight, and a replay of the journal derives the
//! same events with the same ids (docs/events.md, "Stock-level events").

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use diesel_async::AsyncMysqlConnection;
use futures_util::future::join_all;

use crate::domain::SkuKey;
use crate::events::producer::{EventPublisher, PublishError};
use crate::events::wire::{
    format_event_time, StockLevelEvent, StockLevelMessage, EVENT_VERSION, TAG_STOCK_BACK,
    TAG_STOCK_LOW, TAG_STOCK_OUT,
};
use crate::metrics::Metrics;
use crate::store::models::StockThreshold;
use crate::store::wire::JournalLine;

/// How long a threshold read from the DB is used at most. A change through the API empties
/// every instance's cache at its next batch (`StockThreshold::last_change`); this bounds
/// the one case that check misses (two changes within one millisecond).
const THRESHOLD_TTL: Duration = Duration::from_secs(60);
/// How long a batch waits for the broker to confirm its events. The journal is acknowledged
/// either way: a broker outage must not stop reservations (the journal would fill). Events
/// not confirmed in time stay queued in the producer and are still delivered if the broker
/// comes back within `kafka.delivery_timeout_ms`; they are counted as `unconfirmed`.
const PUBLISH_WAIT: Duration = Duration::from_secs(2);
/// Bound of the threshold cache (positions); it is emptied when full.
const THRESHOLD_CACHE_MAX: usize = 100_000;

/// The levels a change from `before` to `after` available units crosses.
/// - STOCK_OUT: from above zero to zero (or below, which the scripts never allow);
/// - STOCK_BACK: from zero to above zero;
/// - STOCK_LOW: from above the threshold to at or below it, still above zero (reaching zero
///   at once is STOCK_OUT only).
pub fn crossed(before: i64, after: i64, threshold: Option<i64>) -> Option<&'static str> {
    if before > 0 && after <= 0 {
        Some(TAG_STOCK_OUT)
    } else if before <= 0 && after > 0 {
        Some(TAG_STOCK_BACK)
    } else {
        match threshold {
            Some(t) if before > t && after <= t && after > 0 => Some(TAG_STOCK_LOW),
            _ => None,
        }
    }
}

/// Publishes the stock-level events of persisted journal batches.
pub struct StockLevelSink {
    publisher: EventPublisher,
    metrics: Metrics,
    topic: String,
    source: String,
    thresholds: Mutex<ThresholdCache>,
}

#[derive(Default)]
struct ThresholdCache {
    /// `StockThreshold::last_change` when the entries were read.
    stamp: Option<Option<chrono::NaiveDateTime>>,
    entries: HashMap<SkuKey, (Option<i64>, Instant)>,
}

impl StockLevelSink {
    pub fn new(publisher: EventPublisher, topic: String, source: String, metrics: Metrics) -> Self {
        StockLevelSink {
            publisher,
            metrics,
            topic,
            source,
            thresholds: Mutex::new(ThresholdCache::default()),
        }
    }

    /// The events of a batch: `entries` are (journal reference of the entry, its lines).
    pub async fn derive(
        &self,
        conn: &mut AsyncMysqlConnection,
        entries: &[(String, Vec<JournalLine>)],
    ) -> Result<Vec<StockLevelMessage>, crate::store::db::DbError> {
        // Only a fall that stays above zero can cross LOW; OUT and BACK need no threshold.
        let may_fall_low: Vec<SkuKey> = entries
            .iter()
            .flat_map(|(_, lines)| lines.iter())
            .filter(|l| l.delta_available < 0 && l.available > 0)
            .map(|l| l.key)
            .collect();
        let thresholds = self.thresholds_of(conn, &may_fall_low).await?;
        let mut out = Vec::new();
        for (journal_ref, lines) in entries {
            for (i, line) in lines.iter().enumerate() {
                if line.delta_available == 0 {
                    continue;
                }
                let threshold = thresholds.get(&line.key).copied().flatten();
                let before = line.available - line.delta_available;
                let Some(tag) = crossed(before, line.available, threshold) else {
                    continue;
                };
                let at = chrono::DateTime::from_timestamp_millis(line.ts_ms)
                    .map(|t| t.with_timezone(&chrono::Local).naive_local())
                    .unwrap_or_default();
                let line_ref = format!("{journal_ref}:{i}");
                let event = StockLevelEvent {
                    event_id: crate::events::wire::derived_id(&line_ref, "stock-level-event"),
                    sku_id: line.key.sku_id,
                    warehouse_id: line.key.warehouse_id,
                    available_qty: line.available,
                    threshold,
                    seq: line.seq,
                    event_time: format_event_time(&at),
                    version: EVENT_VERSION.to_string(),
                };
                match StockLevelMessage::new(tag, event, &line_ref, &line.trace_id, &self.source) {
                    Ok(message) => out.push(message),
                    Err(e) => tracing::error!(error = %e, "stock-level event not encoded"),
                }
            }
        }
        Ok(out)
    }

    /// Queues the events in order (one position's events share a key and a partition) and
    /// waits up to PUBLISH_WAIT for the broker; never fails the batch.
    pub async fn publish(&self, messages: &[StockLevelMessage]) {
        if messages.is_empty() {
            return;
        }
        let sends = messages
            .iter()
            .map(|m| self.publisher.publish_stock_level(&self.topic, m));
        let outcome = tokio::time::timeout(PUBLISH_WAIT, join_all(sends)).await;
        let (published, unconfirmed) = match outcome {
            Ok(results) => {
                let failed: Vec<&PublishError> =
                    results.iter().filter_map(|r| r.as_ref().err()).collect();
                if let Some(e) = failed.first() {
                    tracing::warn!(error = %e, failed = failed.len(), "stock-level events not published");
                }
                (messages.len() - failed.len(), failed.len())
            }
            Err(_) => {
                tracing::warn!(
                    events = messages.len(),
                    "stock-level events not confirmed in time (they stay queued in the producer)"
                );
                (0, messages.len())
            }
        };
        let counter = &self.metrics.stock_level_events;
        counter
            .with_label_values(&["published"])
            .inc_by(published as u64);
        counter
            .with_label_values(&["unconfirmed"])
            .inc_by(unconfirmed as u64);
    }

    /// Thresholds of the positions, from the cache or (for the ones it lacks or holds too
    /// long) from the DB in one query. The cache lock is never held across the query.
    async fn thresholds_of(
        &self,
        conn: &mut AsyncMysqlConnection,
        keys: &[SkuKey],
    ) -> Result<HashMap<SkuKey, Option<i64>>, crate::store::db::DbError> {
        let now = Instant::now();
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let stamp = StockThreshold::last_change(conn).await?;
        let mut unique = keys.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        {
            let mut cache = self
                .thresholds
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if cache.stamp != Some(stamp) {
                cache.entries.clear();
                cache.stamp = Some(stamp);
            }
            for key in unique {
                match cache.entries.get(&key) {
                    Some((value, at)) if now.duration_since(*at) < THRESHOLD_TTL => {
                        found.insert(key, *value);
                    }
                    _ => missing.push(key),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let loaded = StockThreshold::for_positions(conn, &missing).await?;
        let mut cache = self
            .thresholds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.entries.len() + missing.len() > THRESHOLD_CACHE_MAX {
            cache.entries.clear();
        }
        for key in missing {
            let value = loaded.get(&key).copied();
            cache.entries.insert(key, (value, now));
            found.insert(key, value);
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flash_sale_crosses_low_once_and_out_once() {
        let mut available = 100;
        let mut told = Vec::new();
        while available > 0 {
            let after = available - 1;
            told.extend(crossed(available, after, Some(10)));
            available = after;
        }
        assert_eq!(told, [TAG_STOCK_LOW, TAG_STOCK_OUT]);
    }

    #[test]
    fn levels_of_single_changes() {
        assert_eq!(crossed(11, 10, Some(10)), Some(TAG_STOCK_LOW));
        assert_eq!(crossed(10, 9, Some(10)), None, "already low");
        assert_eq!(crossed(50, 5, Some(10)), Some(TAG_STOCK_LOW));
        assert_eq!(crossed(50, 0, Some(10)), Some(TAG_STOCK_OUT));
        assert_eq!(crossed(1, 0, None), Some(TAG_STOCK_OUT));
        assert_eq!(crossed(0, 0, None), None);
        assert_eq!(crossed(0, 30, Some(10)), Some(TAG_STOCK_BACK));
        assert_eq!(crossed(5, 30, Some(10)), None, "a restock above zero");
        assert_eq!(crossed(11, 10, None), None, "no threshold, no LOW");
        assert_eq!(crossed(5, 6, Some(10)), None);
    }
}
