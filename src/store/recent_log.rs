//! The consume log's recent window in Redis (events::consume_log decides when it may be
//! trusted). A message handled in the last window has its result here, so a redelivery is
//! answered by Redis and the DB's `t_mq_consume_log` is read only for messages Redis
//! cannot vouch for (older than the window, or from before Redis last lost data or
//! restarted).
//!
//! Buckets: a result written at `t` goes to bucket `t / window`, which expires at the end
//! of the bucket after it; a read looks at the current and the previous bucket. So a
//! result written at `t` is found at least until `t + window`, and no field has a TTL of
//! its own.

use std::collections::HashMap;

use redis::Value;

use crate::store::redis::{RedisResult, RedisStore, RedisStoreError};

/// What one read of the window found.
#[derive(Debug, Clone, Default)]
pub struct RecentRead {
    /// messageId -> the recorded result.
    pub found: HashMap<String, String>,
    /// Since when Redis is known to hold everything written to it (ms since the epoch):
    /// the later of its load from the DB (the epoch key) and, on a single Redis, its
    /// process start. None when Redis lost its data and is not rebuilt yet.
    pub whole_since_ms: Option<i64>,
}

/// Fields one HMGET or HSET carries (a batch is split beyond it).
const SLICE: usize = 1000;

impl RedisStore {
    /// Reads `ids` from the current and the previous bucket, and since when Redis is whole.
    pub async fn recent_log_read(
        &self,
        group: &str,
        ids: &[String],
        now_ms: i64,
        window_ms: i64,
    ) -> RedisResult<RecentRead> {
        let bucket = now_ms.div_euclid(window_ms.max(1));
        let mut pipe = redis::pipe();
        for chunk in ids.chunks(SLICE) {
            for b in [bucket, bucket - 1] {
                pipe.cmd("HMGET")
                    .arg(self.keys.recent_log(group, b))
                    .arg(chunk);
            }
        }
        let mut conn = self.conn.clone();
        let epoch = async {
            let mut conn = self.conn.clone();
            self.timed(
                redis::cmd("GET")
                    .arg(self.keys.epoch())
                    .query_async::<Option<i64>>(&mut conn),
            )
            .await
        };
        let started = async {
            if self.conn.is_cluster() {
                // A node's restart loses at most its AOF's last second, and which node a
                // field lives on is not known here: the epoch key alone decides (see
                // docs/events.md).
                return RedisResult::Ok(Some(i64::MIN));
            }
            let mut conn = self.conn.clone();
            // A Redis that refuses INFO (some managed ones do) vouches for nothing: the DB
            // log answers, rather than every message failing.
            let info: String = match self
                .timed(redis::cmd("INFO").arg("server").query_async(&mut conn))
                .await
            {
                Ok(info) => info,
                Err(e) if e.is_retryable() => return Err(e),
                Err(_) => return RedisResult::Ok(Some(i64::MAX)),
            };
            RedisResult::Ok(Some(
                uptime_seconds(&info)
                    .map(|up| now_ms - up.saturating_mul(1000) - 1000)
                    .unwrap_or(i64::MAX),
            ))
        };
        let reads = async {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            self.timed(pipe.query_async::<Vec<Vec<Option<String>>>>(&mut conn))
                .await
        };
        let (epoch, started, reads) = tokio::join!(epoch, started, reads);
        let (epoch, started, reads) = (epoch?, started?, reads?);
        let mut found = HashMap::new();
        let mut replies = reads.into_iter();
        for chunk in ids.chunks(SLICE) {
            for _ in 0..2 {
                let Some(values) = replies.next() else { break };
                for (id, value) in chunk.iter().zip(values) {
                    if let Some(value) = value {
                        found.entry(id.clone()).or_insert(value);
                    }
                }
            }
        }
        let whole_since_ms = match (epoch, started) {
            (Some(e), Some(s)) => Some(e.max(s)),
            _ => None,
        };
        Ok(RecentRead {
            found,
            whole_since_ms,
        })
    }

    /// Writes results (messageId, result) into the current bucket and sets its expiry.
    pub async fn recent_log_write(
        &self,
        group: &str,
        entries: &[(String, String)],
        now_ms: i64,
        window_ms: i64,
    ) -> RedisResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let window_ms = window_ms.max(1);
        let bucket = now_ms.div_euclid(window_ms);
        let key = self.keys.recent_log(group, bucket);
        let mut pipe = redis::pipe();
        for chunk in entries.chunks(SLICE) {
            let cmd = pipe.cmd("HSET").arg(&key);
            for (id, result) in chunk {
                cmd.arg(id).arg(result);
            }
            cmd.ignore();
        }
        // Read until the end of the next bucket; a minute more for clocks a little apart.
        pipe.cmd("PEXPIREAT")
            .arg(&key)
            .arg((bucket + 2) * window_ms + 60_000)
            .ignore();
        let mut conn = self.conn.clone();
        let Some(wait) = self.wait else {
            let _: Value = self.timed(pipe.query_async(&mut conn)).await?;
            return Ok(());
        };
        // With redis.wait_replicas, a result counts as recorded (and its outcome may be
        // published) only once replicas have it, as for the scripts' changes: a failover
        // must not lose it.
        pipe.cmd("WAIT")
            .arg(wait.replicas)
            .arg(wait.timeout.as_millis() as u64);
        let limit = self.timeout + wait.timeout;
        let acked: Vec<i64> = tokio::time::timeout(limit, pipe.query_async(&mut conn))
            .await
            .map_err(|_| RedisStoreError::Timeout(limit))??;
        let acked = acked.first().copied().unwrap_or(0);
        if acked < i64::from(wait.replicas) {
            return Err(RedisStoreError::Unavailable(format!(
                "{acked} of {} replicas acknowledged the consume log's recent window within {:?}",
                wait.replicas, wait.timeout
            )));
        }
        Ok(())
    }
}

/// Redis' `uptime_in_seconds` from the text of `INFO server`.
pub fn uptime_seconds(info: &str) -> Option<i64> {
    info.lines()
        .find_map(|line| line.strip_prefix("uptime_in_seconds:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::uptime_seconds;

    #[test]
    fn uptime_is_read_from_info_server() {
        let info =
            "# Server\r\nredis_version:7.0.15\r\nuptime_in_seconds:1234\r\nuptime_in_days:0\r\n";
        assert_eq!(uptime_seconds(info), Some(1234));
        assert_eq!(uptime_seconds("# Server\r\n"), None);
    }
}
