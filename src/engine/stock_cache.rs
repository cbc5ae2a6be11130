//! The in-process read cache of stock positions: what `GET /inventory/...` answers from
//! during a flash sale, so that pages polling "how many are left?" cost neither a Redis
//! round trip each nor a DB query.
//!
//! One map of positions, bounded in size; each entry holds two parts, bounded in time:
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

impl From<crate::domain::StockLevels> for CachedLevels {
    fn from(l: crate::domain::StockLevels) -> Self {
        CachedLevels {
            available: l.available,
            reserved: l.reserved,
            seq: l.seq,
        }
    }
}

impl From<&crate::store::wire::LevelsAfter> for CachedLevels {
    fn from(l: &crate::store::wire::LevelsAfter) -> Self {
        CachedLevels {
            available: l.available,
            reserved: l.reserved,
            seq: l.seq,
        }
    }
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

#[derive(Clone, Copy)]
struct Timed<V> {
    value: V,
    at: Instant,
}

/// What the cache holds of one position: both parts in one entry, so that a read costs one
/// map lookup.
#[derive(Clone, Copy, Default)]
struct Slot {
    levels: Option<Timed<CachedLevels>>,
    row: Option<Timed<RowMeta>>,
}

fn fresh<V: Copy>(part: &Option<Timed<V>>, ttl: Duration, now: Instant) -> Option<V> {
    part.as_ref()
        .filter(|t| now.saturating_duration_since(t.at) < ttl)
        .map(|t| t.value)
}

/// Seeded per process (skuIds come from callers: no fixed hash to collide on), and faster
/// than the std SipHash on two integers.
type Hasher = foldhash::quality::RandomState;

pub struct StockCache {
    map: DashMap<SkuKey, Slot, Hasher>,
    stock_ttl: Duration,
    row_ttl: Duration,
    capacity: usize,
    metrics: CacheMetrics,
}

impl StockCache {
    /// `stock_ttl` zero turns the levels cache off (every read asks Redis); `row_ttl`
    /// zero the row cache. `capacity` bounds the positions held: when full, an insert of a
    /// new position first drops an eighth of them (expired ones first, then any), so that
    /// eviction costs O(1) per insert amortised instead of a scan each time.
    pub fn new(
        stock_ttl: Duration,
        row_ttl: Duration,
        capacity: usize,
        metrics: CacheMetrics,
    ) -> Self {
        StockCache {
            map: DashMap::with_hasher(Hasher::default()),
            stock_ttl,
            row_ttl,
            capacity: capacity.max(1),
            metrics,
        }
    }

    /// Fresh levels and row of a position (one lookup); the levels count as a hit or a
    /// miss.
    pub fn lookup(&self, key: SkuKey) -> (Option<CachedLevels>, Option<RowMeta>) {
        let now = Instant::now();
        let found = self.map.get(&key).map(|slot| {
            (
                fresh(&slot.levels, self.stock_ttl, now),
                fresh(&slot.row, self.row_ttl, now),
            )
        });
        let (levels, row) = found.unwrap_or((None, None));
        if levels.is_some() {
            self.metrics.hits.inc();
        } else {
            self.metrics.misses.inc();
        }
        (levels, row)
    }

    /// Fresh levels of a position, counted as a hit or a miss.
    #[cfg(test)]
    fn levels(&self, key: SkuKey) -> Option<CachedLevels> {
        self.lookup(key).0
    }

    /// The DB row's fields Redis lacks.
    #[cfg(test)]
    fn row(&self, key: SkuKey) -> Option<RowMeta> {
        let now = Instant::now();
        self.map
            .get(&key)
            .and_then(|slot| fresh(&slot.row, self.row_ttl, now))
    }

    /// Levels read from Redis by a read sent at `sent_at`.
    pub fn store_read(&self, key: SkuKey, levels: CachedLevels, sent_at: Instant) {
        self.store_levels(key, levels, sent_at);
    }

    /// Levels a script of this instance answered, the script sent at `sent_at`: what Redis
    /// held when the script ran.
    pub fn store_write(&self, key: SkuKey, levels: CachedLevels, sent_at: Instant) {
        self.store_levels(key, levels, sent_at);
    }

    /// Entries are stamped with when their Redis call was sent (before Redis ran it), so
    /// the TTL bounds how old a served value is, round trip included. The stored entry
    /// stays only when it is fresh, its call was sent after this one, and its seq is not
    /// lower: a read that raced with a newer write of this instance must not put the older
    /// value back, while after a rebuild from the DB (seq may go down) a later call wins.
    fn store_levels(&self, key: SkuKey, levels: CachedLevels, sent_at: Instant) {
        if self.stock_ttl.is_zero() {
            return;
        }
        let ttl = self.stock_ttl;
        let now = Instant::now();
        let at = sent_at;
        self.update(key, |slot| {
            let keep_old = slot.levels.as_ref().is_some_and(|old| {
                now.saturating_duration_since(old.at) < ttl
                    && old.at > at
                    && old.value.seq >= levels.seq
            });
            if !keep_old {
                slot.levels = Some(Timed { value: levels, at });
            }
        });
    }

    /// What a script call left behind, sent at `sent_at`: its levels after, per position.
    pub fn store_writes(&self, levels: &[crate::store::wire::LevelsAfter], sent_at: Instant) {
        for l in levels {
            self.store_write(l.key, CachedLevels::from(l), sent_at);
        }
    }

    /// Absence is not cached: a position Redis holds without a DB row is one whose journal
    /// has not reached the DB yet, for milliseconds.
    pub fn store_row(&self, key: SkuKey, row: RowMeta) {
        if self.row_ttl.is_zero() {
            return;
        }
        // Each position's row lives between half and all of row_ttl (spread by its key), so
        // that rows stored together (stock loaded in one go, a start-up) are not all read
        // from the DB again in the same second.
        let half_ms = (self.row_ttl.as_millis() / 2).max(1) as u64;
        let spread = std::hash::BuildHasher::hash_one(self.map.hasher(), key) % half_ms;
        let now = Instant::now();
        let at = now
            .checked_sub(Duration::from_millis(spread))
            .unwrap_or(now);
        self.update(key, |slot| slot.row = Some(Timed { value: row, at }));
    }

    /// Forgets a position (admin sync and rebuild write Redis without a script reply).
    pub fn forget(&self, key: SkuKey) {
        self.map.remove(&key);
    }

    fn update(&self, key: SkuKey, change: impl FnOnce(&mut Slot)) {
        // The common case, a position already held: one lookup, under its shard's lock.
        if let Some(mut slot) = self.map.get_mut(&key) {
            change(&mut slot);
            return;
        }
        if self.map.len() >= self.capacity {
            let evicted = self.evict(Instant::now());
            self.metrics.evictions.inc_by(evicted as u64);
        }
        change(&mut self.map.entry(key).or_default());
    }

    fn evict(&self, now: Instant) -> usize {
        let target = (self.capacity / 8).max(1);
        let expired = |slot: &Slot| {
            fresh(&slot.levels, self.stock_ttl, now).is_none()
                && fresh(&slot.row, self.row_ttl, now).is_none()
        };
        let mut victims: Vec<SkuKey> = Vec::with_capacity(target);
        // Expired first (one pass), then whatever comes (DashMap's order: arbitrary).
        for entry in self.map.iter() {
            if victims.len() >= target {
                break;
            }
            if expired(entry.value()) {
                victims.push(*entry.key());
            }
        }
        if victims.len() < target {
            for entry in self.map.iter() {
                if victims.len() >= target {
                    break;
                }
                if !expired(entry.value()) {
                    victims.push(*entry.key());
                }
            }
        }
        // The iterators' shard locks are released here, before removing.
        victims
            .iter()
            .filter(|key| self.map.remove(key).is_some())
            .count()
    }

    /// Positions held; also sets the gauge.
    pub fn entries(&self) -> usize {
        let n = self.map.len();
        self.metrics.entries.set(n as i64);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{SkuId, WarehouseId};

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
        let k = SkuKey::new(WarehouseId(1), SkuId(1));
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
        let k = SkuKey::new(WarehouseId(1), SkuId(1));
        let read_sent = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        c.store_write(k, levels(4, 7), Instant::now());
        // A read sent before the write answers with seq 6 and arrives after it.
        c.store_read(k, levels(5, 6), read_sent);
        assert_eq!(c.levels(k), Some(levels(4, 7)));
        // ...or with the same seq and other values (an admin sync overwrote at that seq).
        c.store_read(k, levels(9, 7), read_sent);
        assert_eq!(c.levels(k), Some(levels(4, 7)));
        // A later re-read refreshes; a newer write replaces.
        c.store_read(k, levels(4, 7), Instant::now());
        c.store_write(k, levels(3, 8), Instant::now());
        assert_eq!(c.levels(k), Some(levels(3, 8)));
    }

    #[test]
    fn after_a_rebuild_a_later_write_wins_over_a_higher_seq() {
        // Redis rebuilt from the DB counts from a lower seq: this instance's own write,
        // sent after the entry it holds was read, is the truth.
        let c = cache(60_000, 10);
        let k = SkuKey::new(WarehouseId(1), SkuId(1));
        c.store_read(k, levels(50, 100), Instant::now());
        std::thread::sleep(Duration::from_millis(2));
        c.store_write(k, levels(7, 96), Instant::now());
        assert_eq!(c.levels(k), Some(levels(7, 96)));
    }

    #[test]
    fn an_expired_entry_is_replaced_even_by_a_lower_seq() {
        // Redis rebuilt from the DB may count from a lower seq: the TTL still bounds what
        // an old entry can hide.
        let c = cache(20, 10);
        let k = SkuKey::new(WarehouseId(1), SkuId(1));
        c.store_write(k, levels(9, 100), Instant::now());
        std::thread::sleep(Duration::from_millis(30));
        c.store_read(k, levels(2, 3), Instant::now());
        assert_eq!(c.levels(k), Some(levels(2, 3)));
    }

    #[test]
    fn capacity_bounds_the_entries() {
        let c = cache(10_000, 64);
        for s in 0..1_000 {
            c.store_read(
                SkuKey::new(WarehouseId(1), SkuId(s)),
                levels(s, 1),
                Instant::now(),
            );
            assert!(c.entries() <= 64, "{} entries", c.entries());
        }
        assert!(c.metrics.evictions.get() >= 1_000 - 64);
        // The newest entry survives the eviction it caused.
        assert_eq!(
            c.levels(SkuKey::new(WarehouseId(1), SkuId(999))),
            Some(levels(999, 1))
        );
        assert!(c.entries() <= 64);
    }

    #[test]
    fn a_zero_ttl_caches_nothing() {
        let c = cache(0, 10);
        let k = SkuKey::new(WarehouseId(1), SkuId(1));
        c.store_write(k, levels(1, 1), Instant::now());
        assert_eq!(c.levels(k), None);
        assert_eq!(c.entries(), 0);
    }

    #[test]
    fn rows_are_cached_and_forgotten() {
        let c = cache(10_000, 10);
        let k = SkuKey::new(WarehouseId(1), SkuId(1));
        assert_eq!(c.row(k), None);
        let row = RowMeta {
            id: 7,
            updated_at: chrono::NaiveDateTime::default(),
        };
        c.store_row(k, row);
        c.store_write(k, levels(1, 1), Instant::now());
        assert_eq!(c.row(k), Some(row));
        c.forget(k);
        assert_eq!(c.row(k), None);
        assert_eq!(c.levels(k), None);
    }
}
