//! Prometheus metrics, one registry per application instance (tests run several in one
//! process).

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// `reservations_total{outcome}` values (engine::reservation counts each request once).
pub const RESERVE_OUTCOMES: [&str; 8] = [
    "reserved",
    "exists",
    "insufficient",
    "conflict",
    "cancelled",
    "not_found",
    "overloaded",
    "error",
];

/// `reconcile_differences_total{kind}` values (engine::reconcile).
pub const DIFFERENCE_KINDS: [&str; 9] = [
    "REDIS_STOCK",
    "DB_STOCK",
    "OVERSOLD",
    "REDIS_MISSING",
    "MARKER_MISSING",
    "MARKER_STATE",
    "ORDER_LOST",
    "REDIS_LOST_DATA",
    "UNVERIFIED",
];

/// Cheap to clone (one reference count): request paths clone it.
#[derive(Clone)]
pub struct Metrics(std::sync::Arc<MetricSet>);

impl std::ops::Deref for Metrics {
    type Target = MetricSet;

    fn deref(&self) -> &MetricSet {
        &self.0
    }
}

pub struct MetricSet {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    pub stock_adjustments: IntCounterVec,
    pub journal_entries_persisted: IntCounterVec,
    pub journal_batch_size: HistogramVec,
    pub journal_lag: IntGauge,
    pub journal_write_failures: IntCounterVec,
    pub redis_call_latency: HistogramVec,
    pub reservations: IntCounterVec,
    pub reserve_batch_size: Histogram,
    pub transitions: IntCounterVec,
    pub kafka_consumed: IntCounterVec,
    pub kafka_produced: IntCounterVec,
    pub kafka_consume_log_lookups: IntCounterVec,
    pub kafka_dead_lettered: IntCounterVec,
    pub kafka_consumer_lag: IntGauge,
    pub kafka_rejoins: IntCounter,
    pub kafka_offset_store_failures: IntCounter,
    pub holds_expired: IntCounterVec,
    pub internal_errors: IntCounterVec,
    pub stock_cache_lookups: IntCounterVec,
    pub stock_cache_evictions: IntCounter,
    pub stock_cache_entries: IntGauge,
    pub expiry_due_holds: IntGauge,
    pub expiry_oldest_due_age: Gauge,
    pub reconcile_runs: IntCounterVec,
    pub reconcile_differences: IntCounterVec,
    pub reconcile_repairs: IntCounterVec,
    pub reconcile_checkpoint_fixes: IntCounter,
    pub reconcile_duration: Gauge,
    pub redis_rebuilds: IntCounterVec,
    pub orders_swept: IntCounter,
    pub leader: IntGauge,
    pub store_up: IntGaugeVec,
    pub readiness: IntGauge,
    pub journal_oldest_age: Gauge,
    pub stock_level_events: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("inventory".to_string()), None)?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["method", "route", "status"],
        )?;
        let http_latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency").buckets(
                vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            ),
            &["method", "route"],
        )?;
        let stock_adjustments = IntCounterVec::new(
            Opts::new(
                "stock_adjustments_total",
                "Stock adjustments by reason and outcome",
            ),
            &["reason", "outcome"],
        )?;
        let journal_entries_persisted = IntCounterVec::new(
            Opts::new(
                "journal_entries_persisted_total",
                "Journal entries written to the DB and acknowledged",
            ),
            &["outcome"],
        )?;
        let journal_batch_size = HistogramVec::new(
            HistogramOpts::new("journal_batch_entries", "Entries per persistence batch").buckets(
                vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0],
            ),
            &["stage"],
        )?;
        let journal_lag = IntGauge::new(
            "journal_lag_entries",
            "Journal entries not yet persisted to the DB",
        )?;
        let journal_write_failures = IntCounterVec::new(
            Opts::new(
                "journal_write_failures_total",
                "Failed persistence attempts (retried with backoff)",
            ),
            &["kind"],
        )?;
        let redis_call_latency = HistogramVec::new(
            HistogramOpts::new(
                "redis_call_duration_seconds",
                "Latency of Redis script calls",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
            ]),
            &["op"],
        )?;
        let reservations = IntCounterVec::new(
            Opts::new("reservations_total", "Reserve requests (orders) by outcome"),
            &["outcome"],
        )?;
        let reserve_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "reserve_batch_orders",
                "Orders per reserve script call (shard batch)",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
            ]),
        )?;
        let transitions = IntCounterVec::new(
            Opts::new(
                "reservation_transitions_total",
                "Confirm and release requests by outcome",
            ),
            &["op", "outcome"],
        )?;
        let kafka_consumed = IntCounterVec::new(
            Opts::new(
                "kafka_messages_consumed_total",
                "Kafka messages consumed by tag and outcome",
            ),
            &["tag", "outcome"],
        )?;
        let kafka_consume_log_lookups = IntCounterVec::new(
            Opts::new(
                "kafka_consume_log_lookups_total",
                "Idempotency checks of consumed messages by who answered: redis_found (handled \
                 before), redis_new (new for sure), db (Redis could not vouch: the DB log was read)",
            ),
            &["answer"],
        )?;
        let kafka_produced = IntCounterVec::new(
            Opts::new(
                "kafka_messages_produced_total",
                "Kafka messages published by tag and outcome",
            ),
            &["tag", "outcome"],
        )?;
        let kafka_dead_lettered = IntCounterVec::new(
            Opts::new(
                "kafka_dead_letter_total",
                "Messages sent to the dead-letter topic",
            ),
            &["tag"],
        )?;
        let kafka_rejoins = IntCounter::new(
            "kafka_rejoins_total",
            "Times the consumer left and rejoined its group after having no partition for kafka.rejoin_unassigned_ms",
        )?;
        let kafka_offset_store_failures = IntCounter::new(
            "kafka_offset_store_failures_total",
            "Offsets of finished messages that could not be stored (partition revoked meanwhile: the new owner redelivers them)",
        )?;
        let kafka_consumer_lag = IntGauge::new(
            "kafka_consumer_lag_messages",
            "Messages in assigned partitions not yet consumed",
        )?;
        let internal_errors = IntCounterVec::new(
            Opts::new(
                "internal_errors_total",
                "Inconsistencies that are bugs (a script reply that does not fit its request), by what",
            ),
            &["what"],
        )?;
        let stock_cache_lookups = IntCounterVec::new(
            Opts::new(
                "stock_cache_lookups_total",
                "Stock reads answered from the in-process cache (hit) or from Redis (miss)",
            ),
            &["result"],
        )?;
        let stock_cache_evictions = IntCounter::new(
            "stock_cache_evictions_total",
            "Cache entries dropped to stay within cache.capacity",
        )?;
        let stock_cache_entries = IntGauge::new(
            "stock_cache_entries",
            "Entries in the in-process stock read cache (levels and rows)",
        )?;
        let holds_expired = IntCounterVec::new(
            Opts::new(
                "holds_expired_total",
                "Expired holds by what happened to them (released, confirmed by the order-status hook, kept)",
            ),
            &["outcome"],
        )?;
        let expiry_due_holds = IntGauge::new(
            "expiry_due_holds",
            "Holds past their expiry not yet released (per slot group: an order held in two groups counts twice)",
        )?;
        let expiry_oldest_due_age = Gauge::new(
            "expiry_oldest_due_age_seconds",
            "How long the oldest due-but-unreleased hold has been due (0 when none is)",
        )?;
        let reconcile_runs = IntCounterVec::new(
            Opts::new("reconcile_runs_total", "Reconciliation runs"),
            &["trigger"],
        )?;
        let reconcile_differences = IntCounterVec::new(
            Opts::new(
                "reconcile_differences_total",
                "Differences found by reconciliation",
            ),
            &["kind"],
        )?;
        let reconcile_repairs = IntCounterVec::new(
            Opts::new(
                "reconcile_repairs_total",
                "Differences repaired by reconciliation",
            ),
            &["kind"],
        )?;
        let reconcile_checkpoint_fixes = IntCounter::new(
            "reconcile_checkpoint_fixes_total",
            "Positions whose reconciliation checkpoint disagreed with their whole history and was rewritten",
        )?;
        let reconcile_duration = Gauge::new(
            "reconcile_last_duration_seconds",
            "How long the last reconciliation run took",
        )?;
        let redis_rebuilds = IntCounterVec::new(
            Opts::new(
                "redis_rebuilds_total",
                "Rebuilds of Redis from the DB after it lost data",
            ),
            &["scope"],
        )?;
        let orders_swept = IntCounter::new(
            "orders_swept_total",
            "Orders forgotten by the sweep once their holds and markers lived out",
        )?;
        let leader = IntGauge::new(
            "supervisor_leader",
            "1 while this instance holds the supervisor lease",
        )?;
        let store_up = IntGaugeVec::new(
            Opts::new(
                "store_up",
                "1 when the store answered the last check (at every scrape and readiness call)",
            ),
            &["store"],
        )?;
        let readiness = IntGauge::new(
            "readiness",
            "Readiness as of the last check: 2 UP, 1 DEGRADED (DB down), 0 DOWN (Redis down)",
        )?;
        let journal_oldest_age = Gauge::new(
            "journal_oldest_age_seconds",
            "Age of the oldest journal entry not yet in the DB (0 when none waits)",
        )?;
        // Series an alert takes `rate()` or `increase()` of exist from the start at 0, so
        // the first failure is an increase and not a series appearing at 1.
        for outcome in RESERVE_OUTCOMES {
            reservations.with_label_values(&[outcome]);
        }
        for outcome in ["released", "confirmed_paid", "kept", "fenced"] {
            holds_expired.with_label_values(&[outcome]);
        }
        for kind in DIFFERENCE_KINDS {
            reconcile_differences.with_label_values(&[kind]);
            reconcile_repairs.with_label_values(&[kind]);
        }
        for kind in ["read", "write"] {
            journal_write_failures.with_label_values(&[kind]);
        }
        for op in ["confirm", "release", "expire"] {
            for outcome in ["done", "exists", "not_found", "invalid_status", "error"] {
                transitions.with_label_values(&[op, outcome]);
            }
        }
        for tag in [
            "ORDER_CREATED",
            "ORDER_CANCELED",
            "PAYMENT_SUCCEEDED",
            "AFTERSALE_REFUNDED",
        ] {
            kafka_dead_lettered.with_label_values(&[tag]);
        }
        for store in ["redis", "database"] {
            store_up.with_label_values(&[store]);
        }
        let stock_level_events = IntCounterVec::new(
            Opts::new(
                "stock_level_events_total",
                "Stock-level events by outcome: published (confirmed by the broker) or \
                 unconfirmed (not confirmed within 2 s; still queued in the producer)",
            ),
            &["outcome"],
        )?;
        for outcome in ["published", "unconfirmed"] {
            stock_level_events.with_label_values(&[outcome]);
        }
        registry.register(Box::new(stock_level_events.clone()))?;
        registry.register(Box::new(store_up.clone()))?;
        registry.register(Box::new(readiness.clone()))?;
        registry.register(Box::new(journal_oldest_age.clone()))?;
        registry.register(Box::new(holds_expired.clone()))?;
        registry.register(Box::new(internal_errors.clone()))?;
        registry.register(Box::new(stock_cache_lookups.clone()))?;
        registry.register(Box::new(stock_cache_evictions.clone()))?;
        registry.register(Box::new(stock_cache_entries.clone()))?;
        registry.register(Box::new(expiry_due_holds.clone()))?;
        registry.register(Box::new(expiry_oldest_due_age.clone()))?;
        registry.register(Box::new(reconcile_runs.clone()))?;
        registry.register(Box::new(reconcile_differences.clone()))?;
        registry.register(Box::new(reconcile_repairs.clone()))?;
        registry.register(Box::new(reconcile_checkpoint_fixes.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(redis_rebuilds.clone()))?;
        registry.register(Box::new(orders_swept.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(kafka_consumed.clone()))?;
        registry.register(Box::new(kafka_produced.clone()))?;
        registry.register(Box::new(kafka_consume_log_lookups.clone()))?;
        registry.register(Box::new(kafka_dead_lettered.clone()))?;
        registry.register(Box::new(kafka_consumer_lag.clone()))?;
        registry.register(Box::new(kafka_rejoins.clone()))?;
        registry.register(Box::new(kafka_offset_store_failures.clone()))?;
        registry.register(Box::new(reservations.clone()))?;
        registry.register(Box::new(reserve_batch_size.clone()))?;
        registry.register(Box::new(transitions.clone()))?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_latency.clone()))?;
        registry.register(Box::new(stock_adjustments.clone()))?;
        registry.register(Box::new(journal_entries_persisted.clone()))?;
        registry.register(Box::new(journal_batch_size.clone()))?;
        registry.register(Box::new(journal_lag.clone()))?;
        registry.register(Box::new(journal_write_failures.clone()))?;
        registry.register(Box::new(redis_call_latency.clone()))?;
        Ok(Metrics(std::sync::Arc::new(MetricSet {
            registry,
            http_requests,
            http_latency,
            stock_adjustments,
            journal_entries_persisted,
            journal_batch_size,
            journal_lag,
            journal_write_failures,
            redis_call_latency,
            reservations,
            reserve_batch_size,
            transitions,
            kafka_consumed,
            kafka_produced,
            kafka_consume_log_lookups,
            kafka_dead_lettered,
            kafka_consumer_lag,
            kafka_rejoins,
            kafka_offset_store_failures,
            holds_expired,
            internal_errors,
            stock_cache_lookups,
            stock_cache_evictions,
            stock_cache_entries,
            expiry_due_holds,
            expiry_oldest_due_age,
            reconcile_runs,
            reconcile_differences,
            reconcile_repairs,
            reconcile_checkpoint_fixes,
            reconcile_duration,
            redis_rebuilds,
            orders_swept,
            leader,
            store_up,
            readiness,
            journal_oldest_age,
            stock_level_events,
        })))
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}
