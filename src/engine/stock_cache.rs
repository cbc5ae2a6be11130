//! The in-process read cache of stock positions: what `GET /inventory/...` answers from
//! during a flash sale, so that pages polling "how many are left?" cost neither a Redis
//! round trip each nor a DB query.
//!
//! Two maps, both bounded in time and size:
//! - **levels** (available, reserved, seq) from Redis, served for at most `stock_ttl`
//!   after they were read. This instance's own changes (reserve, confirm, release,
//!   expiry, adjust) overwrite its entries from the script replies before the caller gets
//!   its answer, so a caller reads its own writes here; only other instances' changes can
//!   be missed, and only for `stock_ttl`.
//! - **rows**: the DB row's `id` and `updatedAt`, the two fields Redis does not hold,
//!   served for at most `row_ttl`.
//!
//! Decisions never read this cache: every reserve goes to Redis.
//!
//! A plain struct (no actor, no await): a `DashMap` reference never lives across an
//! `.await` because no method here awaits.

use std::hash::Hash;
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use dashmap::DashMap;
use prometheus::{IntCounter, IntGauge};

use crate::domain::SkuKey;

/// A position's counters as Redis holds them; `seq` grows with every change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedLevels {
    pub available: i64,
    pub reserved: i64,
    pub seq: i64,
}

/// The DB row fields Redis does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowMeta {
    pub id: i64,
    pub updated_at: NaiveDateTime,
}

/// Counters the cache moves (prometheus handles resolved once: no label lookups per read).
#[derive(Clone)]
pub struct CacheMetrics {
    pub hits: IntCounter,
    pub misses: IntCounter,
    pub evictions: IntCounter,
    pub entries: IntGauge,
}

impl CacheMetrics {
    pub fn of(metrics: &crate::metrics::Metrics) -> Self {
        CacheMetrics {
            hits: metrics.stock_cache_lookups.with_label_values(&["hit"]),
            misses: metrics.stock_cache_lookups.with_label_values(&["miss"]),
            evictions: metrics.stock_cache_evictions.clone(),
            entries: metrics.stock_cache_entries.clone(),
        }
    }
}

struct Timed<V> {
    value: V,
    at: Instant,
}

/// A map whose entries are served for `ttl` after they were stored, holding at most
/// `capacity` entries. When full, an insert of a new key first drops an eighth of the
/// capacity (expired entries first, then any), so that eviction costs O(1) per insert
/// amortised instead of a scan each time.
struct TtlMap<K: Eq + Hash, V> {
    map: DashMap<K, Timed<V>>,
    ttl: Duration,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlMap<K, V> {
    fn new(ttl: Duration, capacity: usize) -> Self {
        TtlMap {
            map: DashMap::new(),
            ttl,
            capacity: capacity.max(1),
        }
    }

    fn get(&self, key: &K, now: Instant) -> Option<V> {
        let entry = self.map.get(key)?;
        (now.saturating_duration_since(entry.at) < self.ttl).then(|| entry.value.clone())
    }

    /// Stores `value` unless `keep_old(old)` says the stored, still fresh value wins.
    /// Returns how many entries were evicted to make room.
    fn put(&self, key: K, value: V, now: Instant, keep_old: impl Fn(&V) -> bool) -> usize {
        if self.ttl.is_zero() {
            return 0;
        }
        let mut evicted = 0;
        if !self.map.contains_key(&key) && self.map.len() >= self.capacity {
            evicted = self.evict(now);
        }
        self.map
            .entry(key)
            .and_modify(|old| {
                let fresh = now.saturating_duration_since(old.at) < self.ttl;
                if !(fresh && keep_old(&old.value)) {
                    *old = Timed {
                        value: value.clone(),
                        at: now,
                    };
                }
            })
            .or_insert_with(|| Timed {
                value: value.clone(),
                at: now,
            });
        evicted
    }

    fn remove(&self, key: &K) {
        self.map.remove(key);
    }

    fn evict(&self, now: Instant) -> usize {
        let target = (self.capacity / 8).max(1);
        let mut victims: Vec<K> = Vec::with_capacity(target);
        // Expired first (one pass), then whatever comes (DashMap's order: arbitrary).
        for entry in self.map.iter() {
            if victims.len() >= target {
                break;
            }
            if now.saturating_duration_since(entry.at) >= self.ttl {
                victims.push(entry.key().clone());
            }
        }
        if victims.len() < target {
            for entry in self.map.iter() {
                if victims.len() >= target {
                    break;
                }
                if now.saturating_duration_since(entry.at) < self.ttl {
                    victims.push(entry.key().clone());
                }
            }
        }
        // The iterators' shard locks are released here, before removing.
        let mut removed = 0;
        for key in victims {
            if self.map.remove(&key).is_some() {
                removed += 1;
            }
        }
        removed
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

pub struct StockCache {
    levels: TtlMap<SkuKey, CachedLevels>,
    rows: TtlMap<SkuKey, RowMeta>,
    metrics: CacheMetrics,
}

impl StockCache {
    /// `stock_ttl` zero turns the levels cache off (every read asks Redis); `row_ttl`
    /// zero the row cache. `capacity` bounds each map.
    pub fn new(
        stock_ttl: Duration,
        row_ttl: Duration,
        capacity: usize,
        metrics: CacheMetrics,
    ) -> Self {
        StockCache {
            levels: TtlMap::new(stock_ttl, capacity),
            rows: TtlMap::new(row_ttl, capacity),
            metrics,
        }
    }

    pub fn stock_ttl(&self) -> Duration {
        self.levels.ttl
    }

    /// Fresh levels of a position, counted as a hit or a miss.
    pub fn levels(&self, key: SkuKey) -> Option<CachedLevels> {
        let found = self.levels.get(&key, Instant::now());
        if found.is_some() {
            self.metrics.hits.inc();
        } else {
            self.metrics.misses.inc();
        }
        found
    }

    /// Levels read from Redis at `read_at` (taken before the read was sent). A fresh entry
    /// with a later seq wins: a read that raced with a newer write of this instance must
    /// not put the older value back.
    pub fn store_read(&self, key: SkuKey, levels: CachedLevels, read_at: Instant) {
        let evicted = self
            .levels
            .put(key, levels, read_at, |old| old.seq > levels.seq);
        self.count_evictions(evicted);
    }

    /// Levels a script of this instance answered after changing the position: the newest
    /// there are, unless a fresher entry already has a later seq.
    pub fn store_write(&self, key: SkuKey, levels: CachedLevels) {
        let evicted = self
            .levels
            .put(key, levels, Instant::now(), |old| old.seq > levels.seq);
        self.count_evictions(evicted);
    }

    /// Forgets a position (admin sync and rebuild write Redis without a script reply).
    pub fn forget(&self, key: SkuKey) {
        self.levels.remove(&key);
        self.rows.remove(&key);
    }

    /// The DB row's fields Redis lacks. Absence is not cached: a position Redis holds
    /// without a DB row is one whose journal has not reached the DB yet, for milliseconds.
    pub fn row(&self, key: SkuKey) -> Option<RowMeta> {
        self.rows.get(&key, Instant::now())
    }

    pub fn store_row(&self, key: SkuKey, row: RowMeta) {
        let evicted = self.rows.put(key, row, Instant::now(), |_| false);
        self.count_evictions(evicted);
    }

    fn count_evictions(&self, evicted: usize) {
        if evicted > 0 {
            self.metrics.evictions.inc_by(evicted as u64);
        }
    }

    /// Entries held (both maps); also sets the gauge.
    pub fn entries(&self) -> usize {
        let n = self.levels.len() + self.rows.len();
        self.metrics.entries.set(n as i64);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels(available: i64, seq: i64) -> CachedLevels {
        CachedLevels {
            available,
            reserved: 0,
            seq,
        }
    }

    fn cache(ttl_ms: u64, capacity: usize) -> StockCache {
        StockCache::new(
            Duration::from_millis(ttl_ms),
            Duration::from_millis(ttl_ms),
            capacity,
            CacheMetrics::of(&crate::metrics::Metrics::new().unwrap()),
        )
    }

    #[test]
    fn entries_are_served_for_the_ttl_only() {
        let c = cache(40, 10);
        let k = SkuKey::new(1, 1);
        assert_eq!(c.levels(k), None);
        c.store_read(k, levels(5, 1), Instant::now());
        assert_eq!(c.levels(k), Some(levels(5, 1)));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(c.levels(k), None);
        assert_eq!(c.metrics.hits.get(), 1);
        assert_eq!(c.metrics.misses.get(), 2);
    }

    #[test]
    fn an_older_read_never_replaces_a_newer_write() {
        let c = cache(10_000, 10);
        let k = SkuKey::new(1, 1);
        let read_started = Instant::now();
        c.store_write(k, levels(4, 7));
        // A read sent before the write answers with seq 6 and arrives after it.
        c.store_read(k, levels(5, 6), read_started);
        assert_eq!(c.levels(k), Some(levels(4, 7)));
        // The same seq (a plain re-read) refreshes; a newer one replaces.
        c.store_read(k, levels(4, 7), Instant::now());
        c.store_write(k, levels(3, 8));
        assert_eq!(c.levels(k), Some(levels(3, 8)));
    }

    #[test]
    fn an_expired_entry_is_replaced_even_by_a_lower_seq() {
        // Redis rebuilt from the DB may count from a lower seq: the TTL still bounds what
        // an old entry can hide.
        let c = cache(20, 10);
        let k = SkuKey::new(1, 1);
        c.store_write(k, levels(9, 100));
        std::thread::sleep(Duration::from_millis(30));
        c.store_read(k, levels(2, 3), Instant::now());
        assert_eq!(c.levels(k), Some(levels(2, 3)));
    }

    #[test]
    fn capacity_bounds_the_entries() {
        let c = cache(10_000, 64);
        for s in 0..1_000 {
            c.store_read(SkuKey::new(1, s), levels(s, 1), Instant::now());
            assert!(c.levels.len() <= 64, "{} entries", c.levels.len());
        }
        assert!(c.metrics.evictions.get() >= 1_000 - 64);
        // The newest entry survives the eviction it caused.
        assert_eq!(c.levels(SkuKey::new(1, 999)), Some(levels(999, 1)));
        assert!(c.entries() <= 64);
    }

    #[test]
    fn a_zero_ttl_caches_nothing() {
        let c = cache(0, 10);
        let k = SkuKey::new(1, 1);
        c.store_write(k, levels(1, 1));
        assert_eq!(c.levels(k), None);
        assert_eq!(c.entries(), 0);
    }

    #[test]
    fn rows_are_cached_and_forgotten() {
        let c = cache(10_000, 10);
        let k = SkuKey::new(1, 1);
        assert_eq!(c.row(k), None);
        let row = RowMeta {
            id: 7,
            updated_at: chrono::NaiveDateTime::default(),
        };
        c.store_row(k, row);
        c.store_write(k, levels(1, 1));
        assert_eq!(c.row(k), Some(row));
        c.forget(k);
        assert_eq!(c.row(k), None);
        assert_eq!(c.levels(k), None);
    }
}
