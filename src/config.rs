//! Typed, layered configuration checked at start-up.
//!
//! Layers, later wins: `config/default.toml` (compiled in) < the file given with
//! `--config` < environment variables `INVENTORY__SECTION__KEY`. Every key exists in the
//! defaults, so an environment variable takes the type of the key it overrides; unknown keys
//! and invalid values are errors that name the key.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

const DEFAULT_TOML: &str = include_str!("../config/default.toml");
const ENV_PREFIX: &str = "INVENTORY__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// A string that must never reach a log: its `Debug` and `Display` print `***`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub http: HttpSettings,
    pub redis: RedisSettings,
    pub database: DatabaseSettings,
    pub inventory: InventorySettings,
    pub cache: CacheSettings,
    pub reservation: ReservationSettings,
    pub engine: EngineSettings,
    pub journal: JournalSettings,
    pub kafka: KafkaSettings,
    pub reconcile: ReconcileSettings,
    pub supervisor: SupervisorSettings,
    pub auth: AuthSettings,
    pub demo: DemoSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub bind: String,
    pub workers: usize,
    pub max_body_bytes: usize,
    pub request_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    pub url: Secret,
    pub key_prefix: String,
    pub command_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub groups: u32,
    /// Seed nodes of a Redis Cluster, comma-separated (`redis://host:port,...`); empty:
    /// one Redis at `url`. Secret (may carry a password): never logged.
    pub cluster_urls: Secret,
    /// Replicas that must have a script's writes (WAIT) before its callers are answered;
    /// 0: none (a failover may lose the last writes, reconciliation names them).
    pub wait_replicas: u32,
    pub wait_timeout_ms: u64,
    /// Cluster mode: how long an order spanning slot groups may stay PENDING before the
    /// supervisor resolves it (docs/redis-layout.md, "Orders across slots").
    pub pending_deadline_ms: u64,
}

impl RedisSettings {
    /// The cluster's seed nodes (none: single-Redis mode).
    pub fn cluster_nodes(&self) -> Vec<String> {
        self.cluster_urls
            .expose()
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub pool_max_size: usize,
    pub pool_timeout_ms: u64,
    pub run_migrations: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventorySettings {
    pub default_warehouse_id: i64,
    pub max_stock_qty: i64,
    pub max_adjust_qty: i64,
    pub max_qty_per_line: i64,
    pub max_lines_per_order: usize,
    pub max_order_no_len: usize,
    pub adjust_persist_wait_ms: u64,
    pub max_query_positions: usize,
    pub routing: RoutingSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSettings {
    /// Empty (None): Kafka lines without a warehouse use the default warehouse.
    #[serde(deserialize_with = "empty_is_none")]
    pub default_strategy: Option<crate::engine::routing::Strategy>,
    pub default_region: String,
    pub default_allow_split: bool,
    pub register_refresh_ms: u64,
    pub max_in_flight: usize,
}

impl RoutingSettings {
    /// The routing Kafka orders get, if any.
    pub fn kafka_default(&self) -> Option<crate::engine::routing::Routing> {
        self.default_strategy
            .map(|strategy| crate::engine::routing::Routing {
                strategy,
                region: (!self.default_region.is_empty()).then(|| self.default_region.clone()),
                allow_split: self.default_allow_split,
            })
    }
}

/// `""` is None; anything else must parse as `T`.
fn empty_is_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let raw = String::deserialize(d)?;
    if raw.is_empty() {
        return Ok(None);
    }
    T::deserialize(serde::de::value::StrDeserializer::<D::Error>::new(&raw)).map(Some)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    pub stock_ttl_ms: u64,
    pub row_ttl_ms: u64,
    pub capacity: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationSettings {
    pub expire_minutes: u64,
    pub expire_after_ms: u64,
    pub marker_ttl_hours: u64,
    pub timeout: TimeoutSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutSettings {
    pub enabled: bool,
    pub batch_size: usize,
    pub cron: String,
    pub interval_ms: u64,
    pub run_budget_ms: u64,
    pub order_status_url: String,
    pub order_status_concurrency: usize,
    pub order_status_timeout_ms: u64,
    pub order_status_max_attempts: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSettings {
    pub enabled: bool,
    pub interval_ms: u64,
    pub repair: bool,
    pub drain_wait_ms: u64,
    pub batch_positions: usize,
    pub fold_margin_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorSettings {
    pub lease_ms: u64,
    pub tick_ms: u64,
    pub sweep_interval_ms: u64,
    pub sweep_chunk: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    pub shards: usize,
    pub max_batch: usize,
    pub max_in_flight: usize,
    pub mailbox_capacity: usize,
    pub arbiters: usize,
    pub reply_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalSettings {
    pub max_pending_entries: u64,
    pub batch_size: usize,
    pub block_ms: u64,
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    pub claim_idle_ms: u64,
    pub shutdown_drain_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    pub enabled: bool,
    pub brokers: String,
    pub group_id: String,
    pub client_id: String,
    pub source: String,
    pub order_topic: String,
    pub payment_topic: String,
    pub aftersales_topic: String,
    pub inventory_topic: String,
    pub dead_letter_topic: String,
    /// Stock-level events; empty: none are published.
    pub alert_topic: String,
    pub consume_order_created: bool,
    pub consume_order_canceled: bool,
    pub consume_payment_succeeded: bool,
    pub consume_aftersale_refunded: bool,
    pub create_topics: bool,
    pub topic_partitions: i32,
    pub partition_queue: usize,
    pub partition_concurrency: usize,
    pub producer_queue_messages: u64,
    pub delivery_timeout_ms: u64,
    pub idempotent_producer: bool,
    pub session_timeout_ms: u64,
    pub rejoin_unassigned_ms: u64,
    pub fetch_wait_max_ms: u64,
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub service_tokens: Secret,
    pub admin_tokens: Secret,
    pub protect_reads: bool,
    pub disabled: bool,
}

impl AuthSettings {
    fn split(list: &Secret) -> Vec<String> {
        list.expose()
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect()
    }

    pub fn service(&self) -> Vec<String> {
        Self::split(&self.service_tokens)
    }

    pub fn admin(&self) -> Vec<String> {
        Self::split(&self.admin_tokens)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoSettings {
    pub seed_stock: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
}

impl Settings {
    /// Defaults < `file` < the process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(file, &env)
    }

    /// Same as [`Settings::load`] with an explicit environment (tests use this).
    pub fn load_from(
        file: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Settings, ConfigError> {
        let mut tree = parse_toml("config/default.toml", DEFAULT_TOML)?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let overlay = parse_toml(&path.display().to_string(), &text)?;
            merge(&mut tree, overlay);
        }
        for (name, raw) in env {
            if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
                apply_env(&mut tree, rest, raw)?;
            }
        }
        Self::from_tree(tree)
    }

    /// Deserialises and validates a merged tree.
    pub fn from_tree(tree: toml::Value) -> Result<Settings, ConfigError> {
        let settings: Settings = serde_path_to_error::deserialize(tree).map_err(|e| {
            let path = e.path().to_string();
            invalid(&path, e.into_inner().to_string())
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Defaults only, with overrides given as `("section.key", value)` (tests use this).
    pub fn defaults_with(overrides: &[(&str, toml::Value)]) -> Result<Settings, ConfigError> {
        let mut tree = parse_toml("config/default.toml", DEFAULT_TOML)?;
        for (key, value) in overrides {
            set_path(&mut tree, key, value.clone())?;
        }
        Self::from_tree(tree)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.http
            .bind
            .parse::<SocketAddr>()
            .map_err(|e| invalid("http.bind", format!("not a socket address: {e}")))?;
        check_range("http.workers", self.http.workers as i64, 0, 256)?;
        check_range(
            "http.max_body_bytes",
            self.http.max_body_bytes as i64,
            1024,
            16 << 20,
        )?;
        check_range(
            "http.request_timeout_ms",
            self.http.request_timeout_ms as i64,
            1,
            600_000,
        )?;
        check_url("redis.url", self.redis.url.expose(), &["redis", "rediss"])?;
        check_range(
            "redis.command_timeout_ms",
            self.redis.command_timeout_ms as i64,
            1,
            600_000,
        )?;
        check_range(
            "redis.connect_timeout_ms",
            self.redis.connect_timeout_ms as i64,
            1,
            600_000,
        )?;
        check_range("redis.groups", i64::from(self.redis.groups), 1, 16384)?;
        for url in self.redis.cluster_nodes() {
            check_url("redis.cluster_urls", &url, &["redis", "rediss"])?;
        }
        check_range(
            "redis.wait_replicas",
            i64::from(self.redis.wait_replicas),
            0,
            16,
        )?;
        check_range(
            "redis.wait_timeout_ms",
            self.redis.wait_timeout_ms as i64,
            1,
            60_000,
        )?;
        check_range(
            "redis.pending_deadline_ms",
            self.redis.pending_deadline_ms as i64,
            100,
            600_000,
        )?;
        if self.redis.key_prefix.contains(['{', '}', ' ']) {
            return Err(invalid(
                "redis.key_prefix",
                "must not contain braces (they are hash tags) or spaces",
            ));
        }
        check_url("database.url", self.database.url.expose(), &["mysql"])?;
        check_range(
            "database.pool_max_size",
            self.database.pool_max_size as i64,
            1,
            1024,
        )?;
        check_range(
            "database.pool_timeout_ms",
            self.database.pool_timeout_ms as i64,
            1,
            600_000,
        )?;
        check_range(
            "inventory.routing.register_refresh_ms",
            self.inventory.routing.register_refresh_ms as i64,
            0,
            600_000,
        )?;
        check_range(
            "inventory.routing.max_in_flight",
            self.inventory.routing.max_in_flight as i64,
            1,
            10_000,
        )?;
        let region = &self.inventory.routing.default_region;
        if region.len() > 32
            || !region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(
                "inventory.routing.default_region",
                "must be empty or 1-32 of [A-Za-z0-9_-]",
            ));
        }
        check_range(
            "inventory.default_warehouse_id",
            self.inventory.default_warehouse_id,
            1,
            i64::MAX,
        )?;
        // Quantities live in INT columns.
        check_range(
            "inventory.max_stock_qty",
            self.inventory.max_stock_qty,
            1,
            i32::MAX as i64,
        )?;
        check_range(
            "inventory.max_adjust_qty",
            self.inventory.max_adjust_qty,
            1,
            self.inventory.max_stock_qty,
        )?;
        check_range(
            "inventory.max_qty_per_line",
            self.inventory.max_qty_per_line,
            1,
            self.inventory.max_stock_qty,
        )?;
        check_range(
            "inventory.max_lines_per_order",
            self.inventory.max_lines_per_order as i64,
            1,
            1000,
        )?;
        check_range(
            "inventory.max_order_no_len",
            self.inventory.max_order_no_len as i64,
            1,
            64,
        )?;
        check_range(
            "inventory.adjust_persist_wait_ms",
            self.inventory.adjust_persist_wait_ms as i64,
            0,
            60_000,
        )?;
        check_range(
            "inventory.max_query_positions",
            self.inventory.max_query_positions as i64,
            1,
            1000,
        )?;
        check_range(
            "cache.stock_ttl_ms",
            self.cache.stock_ttl_ms as i64,
            0,
            60_000,
        )?;
        check_range(
            "cache.row_ttl_ms",
            self.cache.row_ttl_ms as i64,
            0,
            3_600_000,
        )?;
        check_range("cache.capacity", self.cache.capacity as i64, 1, 10_000_000)?;
        check_range(
            "reservation.expire_minutes",
            self.reservation.expire_minutes as i64,
            1,
            60 * 24 * 30,
        )?;
        check_range(
            "reservation.marker_ttl_hours",
            self.reservation.marker_ttl_hours as i64,
            1,
            24 * 365,
        )?;
        check_range(
            "reservation.timeout.batch_size",
            self.reservation.timeout.batch_size as i64,
            1,
            10_000,
        )?;
        let fields = self.reservation.timeout.cron.split_whitespace().count();
        if !(6..=7).contains(&fields) {
            return Err(invalid(
                "reservation.timeout.cron",
                format!("expected a Quartz cron with 6 or 7 fields, got {fields}"),
            ));
        }
        <cron::Schedule as std::str::FromStr>::from_str(&self.reservation.timeout.cron)
            .map_err(|e| invalid("reservation.timeout.cron", e.to_string()))?;
        check_range(
            "reservation.expire_after_ms",
            self.reservation.expire_after_ms as i64,
            0,
            30 * 24 * 3_600_000,
        )?;
        check_range(
            "reservation.timeout.interval_ms",
            self.reservation.timeout.interval_ms as i64,
            0,
            86_400_000,
        )?;
        let url = &self.reservation.timeout.order_status_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(
                "reservation.timeout.order_status_url",
                "must be empty or an http(s) URL",
            ));
        }
        check_range(
            "reservation.timeout.order_status_timeout_ms",
            self.reservation.timeout.order_status_timeout_ms as i64,
            1,
            60_000,
        )?;
        check_range(
            "reservation.timeout.order_status_max_attempts",
            self.reservation.timeout.order_status_max_attempts as i64,
            1,
            10_000,
        )?;
        check_range(
            "reservation.timeout.order_status_concurrency",
            self.reservation.timeout.order_status_concurrency as i64,
            1,
            1024,
        )?;
        check_range(
            "reservation.timeout.run_budget_ms",
            self.reservation.timeout.run_budget_ms as i64,
            1,
            600_000,
        )?;
        check_range(
            "reconcile.interval_ms",
            self.reconcile.interval_ms as i64,
            100,
            86_400_000,
        )?;
        check_range(
            "reconcile.drain_wait_ms",
            self.reconcile.drain_wait_ms as i64,
            0,
            60_000,
        )?;
        check_range(
            "reconcile.batch_positions",
            self.reconcile.batch_positions as i64,
            1,
            5_000,
        )?;
        check_range(
            "reconcile.fold_margin_ms",
            self.reconcile.fold_margin_ms as i64,
            1_000,
            86_400_000,
        )?;
        check_range(
            "supervisor.lease_ms",
            self.supervisor.lease_ms as i64,
            200,
            600_000,
        )?;
        check_range(
            "supervisor.tick_ms",
            self.supervisor.tick_ms as i64,
            10,
            self.supervisor.lease_ms as i64 / 2,
        )?;
        check_range("engine.shards", self.engine.shards as i64, 1, 1024)?;
        check_range("engine.max_batch", self.engine.max_batch as i64, 1, 10_000)?;
        check_range(
            "engine.mailbox_capacity",
            self.engine.mailbox_capacity as i64,
            1,
            1_000_000,
        )?;
        check_range(
            "engine.max_in_flight",
            self.engine.max_in_flight as i64,
            1,
            16,
        )?;
        check_range("engine.arbiters", self.engine.arbiters as i64, 0, 256)?;
        check_range(
            "engine.reply_timeout_ms",
            self.engine.reply_timeout_ms as i64,
            1,
            600_000,
        )?;
        check_range(
            "journal.max_pending_entries",
            self.journal.max_pending_entries as i64,
            100,
            100_000_000,
        )?;
        check_range(
            "journal.batch_size",
            self.journal.batch_size as i64,
            1,
            10_000,
        )?;
        check_range("journal.block_ms", self.journal.block_ms as i64, 1, 60_000)?;
        check_range(
            "journal.retry_min_ms",
            self.journal.retry_min_ms as i64,
            1,
            60_000,
        )?;
        check_range(
            "journal.retry_max_ms",
            self.journal.retry_max_ms as i64,
            self.journal.retry_min_ms as i64,
            600_000,
        )?;
        check_range(
            "journal.shutdown_drain_ms",
            self.journal.shutdown_drain_ms as i64,
            0,
            600_000,
        )?;
        check_range(
            "journal.claim_idle_ms",
            self.journal.claim_idle_ms as i64,
            1_000,
            3_600_000,
        )?;
        if self.kafka.enabled {
            if self.kafka.brokers.trim().is_empty() {
                return Err(invalid("kafka.brokers", "must name at least one broker"));
            }
            for (key, topic) in [
                ("kafka.order_topic", &self.kafka.order_topic),
                ("kafka.payment_topic", &self.kafka.payment_topic),
                ("kafka.aftersales_topic", &self.kafka.aftersales_topic),
                ("kafka.inventory_topic", &self.kafka.inventory_topic),
                ("kafka.dead_letter_topic", &self.kafka.dead_letter_topic),
                ("kafka.group_id", &self.kafka.group_id),
            ] {
                check_topic(key, topic)?;
            }
            if !self.kafka.alert_topic.is_empty() {
                check_topic("kafka.alert_topic", &self.kafka.alert_topic)?;
            }
        }
        fn check_topic(key: &str, topic: &str) -> Result<(), ConfigError> {
            if topic.is_empty()
                || topic.len() > 128
                || !topic
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err(invalid(
                    key,
                    "must be 1-128 characters of letters, digits, '.', '_' or '-'",
                ));
            }
            Ok(())
        }
        check_range(
            "kafka.topic_partitions",
            self.kafka.topic_partitions as i64,
            1,
            1024,
        )?;
        check_range(
            "kafka.partition_queue",
            self.kafka.partition_queue as i64,
            1,
            100_000,
        )?;
        check_range(
            "kafka.partition_concurrency",
            self.kafka.partition_concurrency as i64,
            1,
            1024,
        )?;
        check_range(
            "kafka.producer_queue_messages",
            self.kafka.producer_queue_messages as i64,
            1,
            10_000_000,
        )?;
        check_range(
            "kafka.delivery_timeout_ms",
            self.kafka.delivery_timeout_ms as i64,
            100,
            600_000,
        )?;
        check_range(
            "kafka.session_timeout_ms",
            self.kafka.session_timeout_ms as i64,
            1000,
            600_000,
        )?;
        if self.kafka.rejoin_unassigned_ms != 0 {
            check_range(
                "kafka.rejoin_unassigned_ms",
                self.kafka.rejoin_unassigned_ms as i64,
                1000,
                3_600_000,
            )?;
        }
        check_range(
            "kafka.retry_min_ms",
            self.kafka.retry_min_ms as i64,
            1,
            60_000,
        )?;
        check_range(
            "kafka.retry_max_ms",
            self.kafka.retry_max_ms as i64,
            self.kafka.retry_min_ms as i64,
            600_000,
        )?;
        for (key, tokens) in [
            ("auth.service_tokens", self.auth.service()),
            ("auth.admin_tokens", self.auth.admin()),
        ] {
            if tokens.iter().any(|t| t.len() < 16) {
                return Err(invalid(key, "every token must be at least 16 characters"));
            }
        }
        if !self.auth.disabled && self.auth.service().is_empty() && self.auth.admin().is_empty() {
            return Err(invalid(
                "auth",
                "no tokens configured: set auth.service_tokens / auth.admin_tokens \
                 (INVENTORY__AUTH__ADMIN_TOKENS=...) or, for development only, auth.disabled = true",
            ));
        }
        Ok(())
    }

    /// How long a hold lives.
    pub fn hold_ms(&self) -> i64 {
        if self.reservation.expire_after_ms > 0 {
            self.reservation.expire_after_ms as i64
        } else {
            (self.reservation.expire_minutes * 60_000) as i64
        }
    }

    /// How long a line marker lives past its hold.
    pub fn marker_ttl_ms(&self) -> i64 {
        (self.reservation.marker_ttl_hours * 3_600_000) as i64
    }

    pub fn bind_addr(&self) -> SocketAddr {
        // Checked in validate().
        self.http
            .bind
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 8082)))
    }
}

fn check_range(key: &str, value: i64, min: i64, max: i64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(invalid(
            key,
            format!("{value} is out of range, allowed {min}..={max}"),
        ));
    }
    Ok(())
}

fn check_url(key: &str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let scheme = url.split("://").next().unwrap_or("");
    if !url.contains("://") || !schemes.contains(&scheme) {
        // Never echo the value: it may carry a password.
        return Err(invalid(
            key,
            format!("must be a URL with scheme {}", schemes.join(" or ")),
        ));
    }
    Ok(())
}

fn parse_toml(path: &str, text: &str) -> Result<toml::Value, ConfigError> {
    text.parse::<toml::Table>()
        .map(toml::Value::Table)
        .map_err(|e| ConfigError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })
}

fn merge(base: &mut toml::Value, overlay: toml::Value) {
    match (base, overlay) {
        (toml::Value::Table(base), toml::Value::Table(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(existing) if existing.is_table() && value.is_table() => {
                        merge(existing, value)
                    }
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

/// `SECTION__SUB__KEY=raw`: the value takes the type of the default it replaces.
fn apply_env(tree: &mut toml::Value, rest: &str, raw: &str) -> Result<(), ConfigError> {
    let key = rest
        .split("__")
        .map(|s| s.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(".");
    let existing = lookup(tree, &key);
    let value = match existing {
        Some(toml::Value::String(_)) => toml::Value::String(raw.to_string()),
        Some(toml::Value::Integer(_)) => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| invalid(&key, format!("expected an integer, got {raw:?}")))?,
        Some(toml::Value::Boolean(_)) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
            "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
            _ => {
                return Err(invalid(
                    &key,
                    format!("expected true or false, got {raw:?}"),
                ))
            }
        },
        Some(toml::Value::Float(_)) => raw
            .trim()
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|_| invalid(&key, format!("expected a number, got {raw:?}")))?,
        Some(_) => return Err(invalid(&key, "is a section, not a value")),
        None => {
            return Err(invalid(
                &key,
                format!("unknown key (from environment variable {ENV_PREFIX}{rest})"),
            ))
        }
    };
    set_path(tree, &key, value)
}

fn lookup<'a>(tree: &'a toml::Value, dotted: &str) -> Option<&'a toml::Value> {
    dotted
        .split('.')
        .try_fold(tree, |node, part| node.as_table()?.get(part))
}

fn set_path(tree: &mut toml::Value, dotted: &str, value: toml::Value) -> Result<(), ConfigError> {
    let parts: Vec<&str> = dotted.split('.').collect();
    let mut node = tree;
    for (i, part) in parts.iter().enumerate() {
        let table = node
            .as_table_mut()
            .ok_or_else(|| invalid(dotted, "is not inside a section"))?;
        if i + 1 == parts.len() {
            table.insert((*part).to_string(), value);
            return Ok(());
        }
        node = table
            .entry((*part).to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    Err(invalid(dotted, "empty key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn dev() -> Vec<(String, String)> {
        env(&[("INVENTORY__AUTH__DISABLED", "true")])
    }

    #[test]
    fn no_tokens_stop_start_up_unless_auth_is_disabled_explicitly() {
        let err = Settings::load_from(None, &[]).unwrap_err().to_string();
        assert!(err.contains("auth") && err.contains("tokens"), "{err}");
        assert!(Settings::load_from(None, &dev()).is_ok());
        let s = Settings::load_from(
            None,
            &env(&[(
                "INVENTORY__AUTH__ADMIN_TOKENS",
                "0123456789abcdef, fedcba9876543210",
            )]),
        )
        .unwrap();
        assert_eq!(s.auth.admin().len(), 2);
        assert!(!format!("{s:?}").contains("0123456789abcdef"));
        let err = Settings::load_from(None, &env(&[("INVENTORY__AUTH__SERVICE_TOKENS", "short")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.service_tokens"), "{err}");
    }

    #[test]
    fn defaults_are_valid_and_match_the_reference() {
        let s = Settings::load_from(None, &dev()).unwrap();
        assert_eq!(s.http.bind, "0.0.0.0:8082");
        assert_eq!(s.reservation.expire_minutes, 30);
        // Expiry differs from the reference on purpose (README, "Expiry"): on, every 5 s,
        // draining everything due.
        assert!(s.reservation.timeout.enabled);
        assert_eq!(s.reservation.timeout.batch_size, 1000);
        assert_eq!(s.reservation.timeout.cron, "0/5 * * * * ?");
        assert_eq!(s.reservation.timeout.run_budget_ms, 2000);
        assert_eq!(s.inventory.default_warehouse_id, 1);
    }

    #[test]
    fn environment_overrides_with_the_type_of_the_default() {
        let s = Settings::load_from(
            None,
            &env(&[
                ("INVENTORY__HTTP__BIND", "127.0.0.1:9000"),
                ("INVENTORY__RESERVATION__TIMEOUT__ENABLED", "true"),
                ("INVENTORY__ENGINE__SHARDS", "3"),
                ("INVENTORY__REDIS__KEY_PREFIX", "123"),
                ("INVENTORY__AUTH__DISABLED", "true"),
                ("OTHER__IGNORED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.http.bind, "127.0.0.1:9000");
        assert!(s.reservation.timeout.enabled);
        assert_eq!(s.engine.shards, 3);
        assert_eq!(s.redis.key_prefix, "123");
    }

    #[test]
    fn unknown_environment_key_is_named() {
        let err = Settings::load_from(None, &env(&[("INVENTORY__HTTP__BINDD", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("http.bindd"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let err = Settings::load_from(None, &env(&[("INVENTORY__ENGINE__SHARDS", "many")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("engine.shards"), "{err}");
        let err = Settings::load_from(None, &env(&[("INVENTORY__ENGINE__SHARDS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("engine.shards") && err.contains("out of range"),
            "{err}"
        );
        let err = Settings::load_from(None, &env(&[("INVENTORY__HTTP__BIND", "nowhere")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("http.bind"), "{err}");
    }

    #[test]
    fn file_layer_rejects_unknown_keys_with_their_path() {
        let dir = std::env::temp_dir().join(format!("inv-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "[engine]\nshardz = 4\n").unwrap();
        let err = Settings::load_from(Some(&file), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("engine") && err.contains("shardz"), "{err}");
        std::fs::write(&file, "[reservation]\nexpire_minutes = 5\n").unwrap();
        let s = Settings::load_from(Some(&file), &dev()).unwrap();
        assert_eq!(s.reservation.expire_minutes, 5);
        assert_eq!(s.reservation.timeout.batch_size, 1000);
    }

    #[test]
    fn secrets_are_not_printed() {
        let s = Settings::load_from(
            None,
            &env(&[
                ("INVENTORY__DATABASE__URL", "mysql://u:hunter2@h:3306/d"),
                ("INVENTORY__AUTH__DISABLED", "true"),
            ]),
        )
        .unwrap();
        let printed = format!("{s:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        let err = Settings::load_from(
            None,
            &env(&[("INVENTORY__DATABASE__URL", "postgres://u:hunter2@h/d")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("database.url") && !err.contains("hunter2"),
            "{err}"
        );
    }
}
