//! `Application::build(settings)`: connects the stores, migrates, warms Redis up, starts
//! the actors and binds the HTTP server (port 0 picks a free port, for tests).

use std::net::TcpListener;

use actix::{Actor, Addr};
use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};

use crate::api::{self, AppState};
use crate::config::Settings;
use crate::engine::persistence::{
    JournalPersister, PersistenceActor, StopPersistence, PERSIST_GROUP,
};
use crate::engine::reconcile::Reconciler;
use crate::engine::reservation::ReservationEngine;
use crate::engine::shard::{ShardActor, ShardCore};
use crate::engine::stock::StockService;
use crate::engine::stock_level::StockLevelSink;
use crate::engine::supervisor::{ExpiryJob, StopSupervisor, SupervisorActor, SupervisorCore};
use crate::engine::EngineError;
use crate::events::consumer::KafkaConsumer;
use crate::events::handlers::OrderEventHandler;
use crate::events::producer::EventPublisher;
use crate::metrics::Metrics;
use crate::store::db::{self, DbError};
use crate::store::redis::{RedisStore, RedisStoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("redis: {0}")]
    Redis(#[from] RedisStoreError),
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("start-up: {0}")]
    Engine(#[from] EngineError),
    #[error("journal: {0}")]
    Journal(#[from] crate::engine::persistence::PersistError),
    #[error("redis layout upgrade: {0}")]
    Upgrade(#[from] crate::store::upgrade::UpgradeError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("http: {0}")]
    Io(#[from] std::io::Error),
}

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    persistence: Addr<PersistenceActor>,
    supervisor: Addr<SupervisorActor>,
    kafka: Option<(
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Application, StartupError> {
        let metrics = Metrics::new()?;
        // Reads INVENTORY_FAULTS now (a bad spec stops the start), not at the first pass.
        let _ = crate::fault::fired();
        // Bound first: the port is part of this instance's name.
        let listener = TcpListener::bind(settings.http.bind)?;
        let port = listener.local_addr()?.port();
        let redis = RedisStore::connect(&settings.redis).await?;
        redis.ping().await?;
        // Stock counters, markers and order indexes are data, not cache: an evicted order
        // index would let a repeated order be held again.
        match redis.eviction_policy().await.as_deref() {
            Some("noeviction") => {}
            Some(policy) => tracing::warn!(
                policy,
                "redis maxmemory-policy is not noeviction: keys this service relies on may be evicted; set maxmemory-policy noeviction"
            ),
            None => tracing::warn!(
                "could not read redis maxmemory-policy; it must be noeviction"
            ),
        }
        if settings.database.run_migrations {
            let applied = db::run_migrations(settings.database.url.expose()).await?;
            if !applied.is_empty() {
                tracing::info!(?applied, "migrations applied");
            }
        }
        let pool = db::build_pool(&settings.database)?;
        let stock = StockService::new(
            redis.clone(),
            pool.clone(),
            settings.clone(),
            metrics.clone(),
        );

        // A Redis of layout 1 is drained and converted first; its epoch key goes with it.
        let upgrade = redis
            .upgrade_from_layout_1(&pool, crate::engine::now_ms())
            .await?;
        if upgrade != Default::default() {
            tracing::warn!(?upgrade, "redis upgraded from layout 1");
        }
        // Layout 3 is read only by this version: while the record still says 2, an
        // instance of the older version that is running would acknowledge entries it cannot
        // read. Refuse to move the record on while one reads the journal.
        if redis.layout_moves_on().await? {
            let quiet_ms = settings.journal.claim_idle_ms;
            let active = redis
                .active_journal_consumers(PERSIST_GROUP, &consumer_name(port), quiet_ms)
                .await?;
            if !active.is_empty() {
                return Err(StartupError::Redis(RedisStoreError::Layout(format!(
                    "Redis holds layout {} and these journal consumers read it within the \
                     last {quiet_ms} ms: {active:?}. They may be instances of the older \
                     version, which cannot read what this one writes: stop them first \
                     (docs/operations.md, \"Upgrading to layout 3\")",
                    crate::store::wire::LAYOUT_SAME_KEYS
                ))));
            }
        }
        // The number of groups is fixed per deployment: refuse another one.
        redis.claim_layout().await?;

        // A Redis without our epoch key lost its data (or is new): load stock and the
        // markers of live lines from the DB. Otherwise only load positions it lacks.
        if redis.has_epoch().await? {
            let loaded = stock.warm_up().await?;
            tracing::info!(loaded, "redis warm-up done");
        } else {
            let (loaded, markers) = stock.rebuild_all(0).await?;
            tracing::info!(loaded, markers, "redis loaded from the DB");
        }
        redis.mark_epoch().await?;

        // The producer is shared by the order events and the persistence path's stock-level
        // events.
        let publisher = if settings.kafka.enabled {
            if settings.kafka.create_topics {
                crate::events::producer::ensure_topics(&settings.kafka).await;
            }
            Some(EventPublisher::new(&settings.kafka)?)
        } else {
            None
        };
        let mut persister = JournalPersister::new(
            redis.dedicated().await?,
            pool.clone(),
            consumer_name(port),
            settings.journal.clone(),
            metrics.clone(),
        );
        if let Some(publisher) = &publisher {
            if !settings.kafka.alert_topic.is_empty() {
                persister = persister.with_stock_levels(StockLevelSink::new(
                    publisher.clone(),
                    settings.kafka.alert_topic.clone(),
                    settings.kafka.source.clone(),
                    metrics.clone(),
                ));
            }
        }
        persister.prepare().await?;
        let persistence = PersistenceActor::new(persister, redis.clone()).start();

        if redis.is_cluster() && settings.inventory.routing.default_strategy.is_some() {
            return Err(StartupError::Engine(EngineError::UnsupportedOnCluster(
                "inventory.routing.default_strategy needs a single Redis (routing is not \
                 available on a Redis Cluster); leave it empty"
                    .into(),
            )));
        }
        let shards = start_shards(&settings, &redis, &metrics, stock.cache());
        let warehouses = crate::engine::warehouse::WarehouseService::new(
            pool.clone(),
            std::time::Duration::from_millis(settings.inventory.routing.register_refresh_ms),
        );
        let reservations = ReservationEngine::new(
            shards,
            redis.clone(),
            pool.clone(),
            stock.clone(),
            warehouses.clone(),
            settings.clone(),
            metrics.clone(),
        );

        let instance_id = format!("{}-{}", consumer_name(port), uuid::Uuid::new_v4().simple());
        let reconciler = Reconciler::new(
            stock.clone(),
            settings.clone(),
            metrics.clone(),
            instance_id.clone(),
        );
        let expiry = ExpiryJob::new(
            reservations.clone(),
            stock.clone(),
            settings.clone(),
            metrics.clone(),
        );
        let supervisor = SupervisorActor::new(SupervisorCore::new(
            instance_id.clone(),
            expiry.clone(),
            reconciler.clone(),
            settings.clone(),
            metrics.clone(),
        ))
        .start();

        let kafka = if let Some(publisher) = publisher {
            let handler = OrderEventHandler::new(
                reservations.clone(),
                stock.clone(),
                publisher,
                pool.clone(),
                settings.clone(),
                metrics.clone(),
            );
            let consumer = KafkaConsumer::new(handler)?;
            let (stop, stop_rx) = tokio::sync::watch::channel(false);
            let task = actix::spawn(consumer.run(stop_rx));
            tracing::info!(brokers = %settings.kafka.brokers, "kafka consumer started");
            Some((stop, task))
        } else {
            None
        };

        if settings.demo.seed_stock {
            let created = stock.seed_demo().await?;
            tracing::info!(created, "demo stock seeded");
        }

        if settings.auth.disabled {
            tracing::warn!("auth.disabled = true: every endpoint is open (development only)");
        }
        let state = web::Data::new(AppState {
            auth: api::auth::Authenticator::new(&settings.auth),
            settings: settings.clone(),
            stock,
            reservations,
            reconciler,
            expiry,
            supervisor: supervisor.clone(),
            metrics: metrics.clone(),
            persistence: persistence.clone(),
            warehouses,
            instance_id,
            openapi: web::Bytes::from(api::openapi::document(&settings).to_string()),
        });
        let app_state = state.clone();
        let max_body = settings.http.max_body_bytes;
        let workers_named = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut server = HttpServer::new(move || {
            // The factory runs once on each worker thread.
            let n = workers_named.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crate::telemetry::name_current_thread(&format!("http-worker-{n}"));
            App::new()
                .wrap_fn(api::metrics_middleware(app_state.metrics.clone()))
                .app_data(app_state.clone())
                .app_data(web::PayloadConfig::new(max_body))
                .configure(|cfg| api::configure(cfg, max_body))
        })
        .listen(listener)?
        .disable_signals()
        .shutdown_timeout(10);
        if settings.http.workers > 0 {
            server = server.workers(settings.http.workers);
        }
        let server = server.run();
        tracing::info!(port, "listening");
        Ok(Application {
            port,
            server,
            state,
            persistence,
            supervisor,
            kafka,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    pub fn server_handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until the server is stopped, then stops the persistence loop.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        let _ = self.supervisor.send(StopSupervisor).await;
        // Stop consuming, finish the message in hand, commit offsets, flush the producer.
        if let Some((stop, task)) = self.kafka {
            let _ = stop.send(true);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(15), task).await;
        }
        // Persist what the journal still holds (bounded), so the DB is complete at exit.
        let deadline = std::time::Instant::now()
            + std::time::Duration::from_millis(self.state.settings.journal.shutdown_drain_ms);
        loop {
            match self.state.stock.redis().journal_lag(PERSIST_GROUP).await {
                Ok(lag) if lag.not_persisted() == 0 => break,
                Ok(lag) if std::time::Instant::now() >= deadline => {
                    tracing::warn!(
                        not_persisted = lag.not_persisted(),
                        "shutdown: journal not drained in time; the next start persists the rest"
                    );
                    break;
                }
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                Err(e) => {
                    tracing::warn!(error = %e, "shutdown: journal lag unknown");
                    break;
                }
            }
        }
        let _ = self.persistence.send(StopPersistence).await;
        tracing::info!("stopped");
        result
    }
}

/// Starts the shard actors, spread over a few arbiters (threads).
fn start_shards(
    settings: &Settings,
    redis: &RedisStore,
    metrics: &Metrics,
    cache: std::sync::Arc<crate::engine::stock_cache::StockCache>,
) -> Vec<Addr<ShardActor>> {
    let threads = match settings.engine.arbiters {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        n => n,
    }
    .min(settings.engine.shards);
    let arbiters: Vec<actix::Arbiter> = (0..threads)
        .map(|i| {
            let arbiter = actix::Arbiter::new();
            arbiter
                .spawn_fn(move || crate::telemetry::name_current_thread(&format!("shard-arb-{i}")));
            arbiter
        })
        .collect();
    let core = ShardCore {
        redis: redis.clone(),
        hold_ms: settings.hold_ms(),
        max_journal_entries: settings.journal.max_pending_entries,
        metrics: metrics.clone(),
        cache,
    };
    let capacity = settings.engine.mailbox_capacity;
    let max_batch = settings.engine.max_batch;
    let max_in_flight = settings.engine.max_in_flight;
    (0..settings.engine.shards)
        .map(|i| {
            let core = core.clone();
            let arbiter = arbiters
                .get(i % arbiters.len().max(1))
                .map(|a| a.handle())
                .unwrap_or_else(actix::Arbiter::current);
            ShardActor::start_in_arbiter(&arbiter, move |ctx| {
                ctx.set_mailbox_capacity(capacity);
                ShardActor::new(core, capacity, max_batch, max_in_flight)
            })
        })
        .collect()
}

/// This instance's name in the journal consumer group: stable across restarts (host and
/// port, or INVENTORY_INSTANCE_ID) so that a restarted instance re-reads its own pending
/// entries at once, and distinct for instances sharing a host.
fn consumer_name(port: u16) -> String {
    if let Ok(name) = std::env::var("INVENTORY_INSTANCE_ID") {
        if !name.is_empty() {
            return name;
        }
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "inventory".to_string());
    format!("{host}:{port}")
}
