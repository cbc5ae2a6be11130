//! Typed, layered configuration checked at start-up.
//!
//! Layers, later wins (the `config` crate merges them): `config/default.toml` (compiled in)
//! < the file given with `--config` < environment variables `INVENTORY__SECTION__KEY`
//! (strings, parsed into the type of the key they set). Unknown keys, in a file or in the
//! environment, and values of the wrong type stop start-up naming the key (serde with
//! `deny_unknown_fields`, its path kept by `serde_path_to_error`); each field declares its
//! own range or rule (`garde`), and the few rules that relate two fields are in
//! `Settings::check_relations`. Values with structure are parsed once, here: the bind
//! address is a `SocketAddr`, the expiry cron a parsed `cron::Schedule`. Secrets (URLs that
//! may carry a password, tokens) are `Secret`: never printed, never echoed in an error.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;

use garde::Validate;
use serde::{Deserialize, Deserializer};

const DEFAULT_TOML: &str = include_str!("../config/default.toml");
const ENV_PREFIX: &str = "INVENTORY";
const ENV_SEPARATOR: &str = "__";

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

/// A Quartz cron expression (6 or 7 fields), parsed when the configuration is read.
#[derive(Clone)]
pub struct CronSchedule {
    text: String,
    schedule: cron::Schedule,
}

impl CronSchedule {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// How long from now until the schedule's next time (None: it has none).
    pub fn until_next(&self) -> Option<std::time::Duration> {
        let next = self.schedule.upcoming(chrono::Local).next()?;
        (next - chrono::Local::now()).to_std().ok()
    }
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl FromStr for CronSchedule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fields = text.split_whitespace().count();
        if !(6..=7).contains(&fields) {
            return Err(format!(
                "expected a Quartz cron with 6 or 7 fields, got {fields}"
            ));
        }
        let schedule = cron::Schedule::from_str(text).map_err(|e| e.to_string())?;
        Ok(CronSchedule {
            text: text.to_string(),
            schedule,
        })
    }
}

impl<'de> Deserialize<'de> for CronSchedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

// Field rules that are not a plain range. garde calls them with the value and `&()`.

fn url_with(url: &Secret, schemes: &[&str]) -> garde::Result {
    let scheme = url.expose().split("://").next().unwrap_or("");
    if !url.expose().contains("://") || !schemes.contains(&scheme) {
        // Never echo the value: it may carry a password.
        return Err(garde::Error::new(format!(
            "must be a URL with scheme {}",
            schemes.join(" or ")
        )));
    }
    Ok(())
}

fn redis_url(url: &Secret, _: &()) -> garde::Result {
    url_with(url, &["redis", "rediss"])
}

fn mysql_url(url: &Secret, _: &()) -> garde::Result {
    url_with(url, &["mysql"])
}

fn redis_urls(urls: &Secret, _: &()) -> garde::Result {
    for url in split_list(urls) {
        url_with(&Secret::new(url), &["redis", "rediss"])?;
    }
    Ok(())
}

fn no_hash_tags(prefix: &str, _: &()) -> garde::Result {
    if prefix.contains(['{', '}', ' ']) {
        return Err(garde::Error::new(
            "must not contain braces (they are hash tags) or spaces",
        ));
    }
    Ok(())
}

fn word_or_empty(value: &str, _: &()) -> garde::Result {
    if value.len() > 32
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(garde::Error::new("must be empty or 1-32 of [A-Za-z0-9_-]"));
    }
    Ok(())
}

fn topic(value: &str, _: &()) -> garde::Result {
    if value.is_empty()
        || value.len() > 128
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(garde::Error::new(
            "must be 1-128 characters of letters, digits, '.', '_' or '-'",
        ));
    }
    Ok(())
}

fn topic_or_empty(value: &str, ctx: &()) -> garde::Result {
    if value.is_empty() {
        return Ok(());
    }
    topic(value, ctx)
}

fn http_url_or_empty(url: &str, _: &()) -> garde::Result {
    if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
        return Err(garde::Error::new("must be empty or an http(s) URL"));
    }
    Ok(())
}

fn zero_or_ms_range(value: &u64, _: &()) -> garde::Result {
    if *value != 0 && !(1_000..=3_600_000).contains(value) {
        return Err(garde::Error::new("must be 0 (off) or 1000..=3600000"));
    }
    Ok(())
}

fn tokens(list: &Secret, _: &()) -> garde::Result {
    if split_list(list).iter().any(|t| t.len() < 16) {
        return Err(garde::Error::new(
            "every token must be at least 16 characters",
        ));
    }
    Ok(())
}

/// A comma-separated list, trimmed, without empty items.
fn split_list(list: &Secret) -> Vec<String> {
    list.expose()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[garde(dive)]
    pub http: HttpSettings,
    #[garde(dive)]
    pub redis: RedisSettings,
    #[garde(dive)]
    pub database: DatabaseSettings,
    #[garde(dive)]
    pub inventory: InventorySettings,
    #[garde(dive)]
    pub cache: CacheSettings,
    #[garde(dive)]
    pub reservation: ReservationSettings,
    #[garde(dive)]
    pub engine: EngineSettings,
    #[garde(dive)]
    pub journal: JournalSettings,
    #[garde(dive)]
    pub kafka: KafkaSettings,
    #[garde(dive)]
    pub reconcile: ReconcileSettings,
    #[garde(dive)]
    pub supervisor: SupervisorSettings,
    #[garde(dive)]
    pub auth: AuthSettings,
    #[garde(skip)]
    pub demo: DemoSettings,
    #[garde(skip)]
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    #[garde(skip)]
    pub bind: SocketAddr,
    /// 0: one per core.
    #[garde(range(max = 256))]
    pub workers: usize,
    #[garde(range(min = 1024, max = 16 << 20))]
    pub max_body_bytes: usize,
    #[garde(range(min = 1, max = 600_000))]
    pub request_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    #[garde(custom(redis_url))]
    pub url: Secret,
    #[garde(custom(no_hash_tags))]
    pub key_prefix: String,
    #[garde(range(min = 1, max = 600_000))]
    pub command_timeout_ms: u64,
    #[garde(range(min = 1, max = 600_000))]
    pub connect_timeout_ms: u64,
    #[garde(range(min = 1, max = 16384))]
    pub groups: u32,
    /// Seed nodes of a Redis Cluster, comma-separated (`redis://host:port,...`); empty:
    /// one Redis at `url`. Secret (may carry a password): never logged.
    #[garde(custom(redis_urls))]
    pub cluster_urls: Secret,
    /// Replicas that must have a script's writes (WAIT) before its callers are answered;
    /// 0: none (a failover may lose the last writes, reconciliation names them).
    #[garde(range(max = 16))]
    pub wait_replicas: u32,
    #[garde(range(min = 1, max = 60_000))]
    pub wait_timeout_ms: u64,
    /// Cluster mode: how long an order spanning slot groups may stay PENDING before the
    /// supervisor resolves it (docs/redis-layout.md, "Orders across slots").
    #[garde(range(min = 100, max = 600_000))]
    pub pending_deadline_ms: u64,
}

impl RedisSettings {
    /// The cluster's seed nodes (none: single-Redis mode).
    pub fn cluster_nodes(&self) -> Vec<String> {
        split_list(&self.cluster_urls)
    }
}

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    #[garde(custom(mysql_url))]
    pub url: Secret,
    #[garde(range(min = 1, max = 1024))]
    pub pool_max_size: usize,
    #[garde(range(min = 1, max = 600_000))]
    pub pool_timeout_ms: u64,
    #[garde(skip)]
    pub run_migrations: bool,
}

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct InventorySettings {
    #[garde(range(min = 1))]
    pub default_warehouse_id: i64,
    /// Quantities live in INT columns.
    #[garde(range(min = 1, max = i32::MAX as i64))]
    pub max_stock_qty: i64,
    /// At most max_stock_qty (check_relations).
    #[garde(range(min = 1))]
    pub max_adjust_qty: i64,
    /// At most max_stock_qty (check_relations).
    #[garde(range(min = 1))]
    pub max_qty_per_line: i64,
    #[garde(range(min = 1, max = 1000))]
    pub max_lines_per_order: usize,
    #[garde(range(min = 1, max = 64))]
    pub max_order_no_len: usize,
    #[garde(range(max = 60_000))]
    pub adjust_persist_wait_ms: u64,
    #[garde(range(min = 1, max = 1000))]
    pub max_query_positions: usize,
    #[garde(dive)]
    pub routing: RoutingSettings,
}

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct RoutingSettings {
    /// Empty (None): Kafka lines without a warehouse use the default warehouse.
    #[serde(deserialize_with = "empty_is_none")]
    #[garde(skip)]
    pub default_strategy: Option<crate::engine::routing::Strategy>,
    #[garde(custom(word_or_empty))]
    pub default_region: String,
    #[garde(skip)]
    pub default_allow_split: bool,
    #[garde(range(max = 600_000))]
    pub register_refresh_ms: u64,
    #[garde(range(min = 1, max = 10_000))]
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

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    #[garde(range(max = 60_000))]
    pub stock_ttl_ms: u64,
    #[garde(range(max = 3_600_000))]
    pub row_ttl_ms: u64,
    #[garde(range(min = 1, max = 10_000_000))]
    pub capacity: usize,
}

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct ReservationSettings {
    #[garde(range(min = 1, max = 60 * 24 * 30))]
    pub expire_minutes: u64,
    /// Overrides expire_minutes when > 0 (tests and benchmarks).
    #[garde(range(max = 30 * 24 * 3_600_000))]
    pub expire_after_ms: u64,
    #[garde(range(min = 1, max = 24 * 365))]
    pub marker_ttl_hours: u64,
    #[garde(dive)]
    pub timeout: TimeoutSettings,
}

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct TimeoutSettings {
    #[garde(skip)]
    pub enabled: bool,
    #[garde(range(min = 1, max = 10_000))]
    pub batch_size: usize,
    /// Used when interval_ms is 0.
    #[garde(skip)]
    pub cron: CronSchedule,
    #[garde(range(max = 86_400_000))]
    pub interval_ms: u64,
    #[garde(range(min = 1, max = 600_000))]
    pub run_budget_ms: u64,
    #[garde(custom(http_url_or_empty))]
    pub order_status_url: String,
    #[garde(range(min = 1, max = 1024))]
    pub order_status_concurrency: usize,
    #[garde(range(min = 1, max = 60_000))]
    pub order_status_timeout_ms: u64,
    #[garde(range(min = 1, max = 10_000))]
    pub order_status_max_attempts: u32,
}

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSettings {
    #[garde(skip)]
    pub enabled: bool,
    #[garde(range(min = 100, max = 86_400_000))]
    pub interval_ms: u64,
    #[garde(skip)]
    pub repair: bool,
    #[garde(range(max = 60_000))]
    pub drain_wait_ms: u64,
    #[garde(range(min = 1, max = 5_000))]
    pub batch_positions: usize,
    #[garde(range(min = 1_000, max = 86_400_000))]
    pub fold_margin_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct SupervisorSettings {
    #[garde(range(min = 200, max = 600_000))]
    pub lease_ms: u64,
    /// At most half the lease (check_relations).
    #[garde(range(min = 10))]
    pub tick_ms: u64,
    #[garde(skip)]
    pub sweep_interval_ms: u64,
    #[garde(skip)]
    pub sweep_chunk: usize,
}

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    #[garde(range(min = 1, max = 1024))]
    pub shards: usize,
    #[garde(range(min = 1, max = 10_000))]
    pub max_batch: usize,
    #[garde(range(min = 1, max = 16))]
    pub max_in_flight: usize,
    #[garde(range(min = 1, max = 1_000_000))]
    pub mailbox_capacity: usize,
    #[garde(range(max = 256))]
    pub arbiters: usize,
    #[garde(range(min = 1, max = 600_000))]
    pub reply_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct JournalSettings {
    #[garde(range(min = 100, max = 100_000_000))]
    pub max_pending_entries: u64,
    #[garde(range(min = 1, max = 10_000))]
    pub batch_size: usize,
    #[garde(range(min = 1, max = 60_000))]
    pub block_ms: u64,
    #[garde(range(min = 1, max = 60_000))]
    pub retry_min_ms: u64,
    /// At least retry_min_ms (check_relations).
    #[garde(range(min = 1, max = 600_000))]
    pub retry_max_ms: u64,
    #[garde(range(min = 1_000, max = 3_600_000))]
    pub claim_idle_ms: u64,
    #[garde(range(max = 600_000))]
    pub shutdown_drain_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    #[garde(skip)]
    pub enabled: bool,
    /// Not empty when enabled (check_relations).
    #[garde(skip)]
    pub brokers: String,
    #[garde(custom(topic))]
    pub group_id: String,
    #[garde(skip)]
    pub client_id: String,
    #[garde(skip)]
    pub source: String,
    #[garde(custom(topic))]
    pub order_topic: String,
    #[garde(custom(topic))]
    pub payment_topic: String,
    #[garde(custom(topic))]
    pub aftersales_topic: String,
    #[garde(custom(topic))]
    pub inventory_topic: String,
    #[garde(custom(topic))]
    pub dead_letter_topic: String,
    /// Stock-level events; empty: none are published.
    #[garde(custom(topic_or_empty))]
    pub alert_topic: String,
    #[garde(skip)]
    pub consume_order_created: bool,
    #[garde(skip)]
    pub consume_order_canceled: bool,
    #[garde(skip)]
    pub consume_payment_succeeded: bool,
    #[garde(skip)]
    pub consume_aftersale_refunded: bool,
    #[garde(skip)]
    pub create_topics: bool,
    #[garde(range(min = 1, max = 1024))]
    pub topic_partitions: i32,
    #[garde(range(min = 1, max = 100_000))]
    pub partition_queue: usize,
    #[garde(range(min = 1, max = 1024))]
    pub partition_concurrency: usize,
    #[garde(range(min = 1, max = 10_000_000))]
    pub producer_queue_messages: u64,
    #[garde(range(min = 100, max = 600_000))]
    pub delivery_timeout_ms: u64,
    #[garde(skip)]
    pub idempotent_producer: bool,
    #[garde(range(min = 1000, max = 600_000))]
    pub session_timeout_ms: u64,
    #[garde(custom(zero_or_ms_range))]
    pub rejoin_unassigned_ms: u64,
    #[garde(skip)]
    pub fetch_wait_max_ms: u64,
    /// How long the producer gathers messages into one produce request.
    #[garde(range(max = 1_000))]
    pub linger_ms: u64,
    /// How long a message's result stays in Redis, so that its redelivery is answered
    /// without reading the DB's consume log; 0: the DB log only. At least 4 x
    /// clock_skew_ms (check_relations).
    #[garde(range(max = 86_400_000))]
    pub recent_log_window_ms: u64,
    /// How far a sender's clock may be ahead of this instance's (Kafka timestamps).
    #[garde(range(min = 100, max = 3_600_000))]
    pub clock_skew_ms: u64,
    #[garde(range(min = 1, max = 60_000))]
    pub retry_min_ms: u64,
    /// At least retry_min_ms (check_relations).
    #[garde(range(min = 1, max = 600_000))]
    pub retry_max_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Validate)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    #[garde(custom(tokens))]
    pub service_tokens: Secret,
    #[garde(custom(tokens))]
    pub admin_tokens: Secret,
    #[garde(skip)]
    pub protect_reads: bool,
    /// Development only: every endpoint open. Without it, some token must be set
    /// (check_relations).
    #[garde(skip)]
    pub disabled: bool,
}

impl AuthSettings {
    pub fn service(&self) -> Vec<String> {
        split_list(&self.service_tokens)
    }

    pub fn admin(&self) -> Vec<String> {
        split_list(&self.admin_tokens)
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
        let mut builder = defaults();
        if let Some(path) = file {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: shown.clone(),
                source,
            })?;
            // Parsed here only to report a syntax error with the file's name.
            // The message and the line only: toml's own text quotes the line, which may
            // hold a password.
            text.parse::<toml::Table>().map_err(|e| {
                let line = e
                    .span()
                    .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
                ConfigError::Parse {
                    path: shown,
                    message: match line {
                        Some(n) => format!("line {n}: {}", e.message()),
                        None => e.message().to_string(),
                    },
                }
            })?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        let vars: HashMap<String, String> = env
            .iter()
            .filter(|(name, _)| name.starts_with(&format!("{ENV_PREFIX}{ENV_SEPARATOR}")))
            .cloned()
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator(ENV_SEPARATOR)
                .separator(ENV_SEPARATOR)
                .source(Some(vars)),
        );
        Self::build(builder)
    }

    /// Defaults only, with overrides given as `("section.key", value)` (tests use this).
    pub fn defaults_with(overrides: &[(&str, toml::Value)]) -> Result<Settings, ConfigError> {
        let mut builder = defaults();
        for (key, value) in overrides {
            builder = builder
                .set_override(*key, config_value(value))
                .map_err(|e| invalid(key, e.to_string()))?;
        }
        Self::build(builder)
    }

    fn build(
        builder: config::ConfigBuilder<config::builder::DefaultState>,
    ) -> Result<Settings, ConfigError> {
        let merged = builder
            .build()
            .map_err(|e| invalid("(layers)", e.to_string()))?;
        let settings: Settings = serde_path_to_error::deserialize(merged).map_err(|e| {
            let key = e.path().to_string();
            invalid(&key, e.into_inner().to_string())
        })?;
        if let Err(report) = settings.validate() {
            let (path, error) = report
                .iter()
                .next()
                .map(|(p, e)| (p.to_string(), e.to_string()))
                .unwrap_or_default();
            return Err(invalid(&path, error));
        }
        settings.check_relations()?;
        Ok(settings)
    }

    /// The rules that relate two fields (the others sit on their fields).
    fn check_relations(&self) -> Result<(), ConfigError> {
        let limit = |key: &str, value: i64, min: i64, max: i64| {
            if value < min || value > max {
                return Err(invalid(
                    key,
                    format!("{value} is out of range, allowed {min}..={max}"),
                ));
            }
            Ok(())
        };
        let inv = &self.inventory;
        limit(
            "inventory.max_adjust_qty",
            inv.max_adjust_qty,
            1,
            inv.max_stock_qty,
        )?;
        limit(
            "inventory.max_qty_per_line",
            inv.max_qty_per_line,
            1,
            inv.max_stock_qty,
        )?;
        limit(
            "supervisor.tick_ms",
            self.supervisor.tick_ms as i64,
            10,
            self.supervisor.lease_ms as i64 / 2,
        )?;
        limit(
            "journal.retry_max_ms",
            self.journal.retry_max_ms as i64,
            self.journal.retry_min_ms as i64,
            600_000,
        )?;
        limit(
            "kafka.retry_max_ms",
            self.kafka.retry_max_ms as i64,
            self.kafka.retry_min_ms as i64,
            600_000,
        )?;
        if self.kafka.recent_log_window_ms > 0 {
            limit(
                "kafka.recent_log_window_ms",
                self.kafka.recent_log_window_ms as i64,
                4 * self.kafka.clock_skew_ms as i64,
                86_400_000,
            )?;
        }
        if self.kafka.enabled && self.kafka.brokers.trim().is_empty() {
            return Err(invalid("kafka.brokers", "must name at least one broker"));
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
}

/// The compiled-in defaults, the first layer.
fn defaults() -> config::ConfigBuilder<config::builder::DefaultState> {
    config::Config::builder().add_source(config::File::from_str(
        DEFAULT_TOML,
        config::FileFormat::Toml,
    ))
}

/// A test override as a layer value.
fn config_value(value: &toml::Value) -> config::Value {
    match value {
        toml::Value::String(s) => s.clone().into(),
        toml::Value::Integer(i) => (*i).into(),
        toml::Value::Float(f) => (*f).into(),
        toml::Value::Boolean(b) => (*b).into(),
        other => other.to_string().into(),
    }
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
        assert_eq!(s.http.bind.to_string(), "0.0.0.0:8082");
        assert_eq!(s.reservation.expire_minutes, 30);
        // Expiry differs from the reference on purpose (README, "Expiry"): on, every 5 s,
        // draining everything due.
        assert!(s.reservation.timeout.enabled);
        assert_eq!(s.reservation.timeout.batch_size, 1000);
        assert_eq!(s.reservation.timeout.cron.as_str(), "0/5 * * * * ?");
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
        assert_eq!(s.http.bind.to_string(), "127.0.0.1:9000");
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
            err.contains("engine.shards") && err.contains("lower than 1"),
            "{err}"
        );
        let err = Settings::load_from(
            None,
            &env(&[("INVENTORY__RESERVATION__TIMEOUT__CRON", "every minute")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("reservation.timeout.cron"), "{err}");
        // A rule across two fields names the one it bounds.
        let err = Settings::load_from(
            None,
            &env(&[
                ("INVENTORY__INVENTORY__MAX_STOCK_QTY", "10"),
                ("INVENTORY__AUTH__DISABLED", "true"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("inventory.max_adjust_qty") && err.contains("out of range"),
            "{err}"
        );
        let err = Settings::load_from(
            None,
            &env(&[("INVENTORY__INVENTORY__ROUTING__DEFAULT_STRATEGY", "NEAREST")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("inventory.routing.default_strategy"), "{err}");
        let s = Settings::load_from(
            None,
            &env(&[
                (
                    "INVENTORY__INVENTORY__ROUTING__DEFAULT_STRATEGY",
                    "MOST_STOCK",
                ),
                ("INVENTORY__RESERVATION__TIMEOUT__CRON", "0 0/1 * * * ?"),
                ("INVENTORY__KAFKA__ENABLED", "yes"),
                ("INVENTORY__AUTH__DISABLED", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.inventory.routing.default_strategy,
            Some(crate::engine::routing::Strategy::MostStock)
        );
        assert!(s.kafka.enabled);
        assert!(s.reservation.timeout.cron.until_next().is_some());
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
    fn a_syntax_error_names_the_line_not_its_text() {
        let dir = std::env::temp_dir().join(format!("inv-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("broken.toml");
        std::fs::write(&file, "[database]\nurl = \"mysql://u:hunter2@h/d\n").unwrap();
        let err = Settings::load_from(Some(&file), &dev())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("broken.toml") && err.contains("line 2"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn the_shipped_files_load() {
        let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local.toml");
        let s = Settings::load_from(Some(&local), &dev()).unwrap();
        assert_eq!(s.log.format, LogFormat::Pretty);
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
