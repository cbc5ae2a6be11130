//! `spawn_app()`: the real service on port 0 against the real Redis and MariaDB, with a
//! database and a Redis key prefix of its own, so tests run in parallel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::web;
use diesel_async::{AsyncConnection, AsyncMysqlConnection};
use inventory::api::AppState;
use inventory::config::Settings;
use inventory::domain::{SkuId, SkuKey, WarehouseId};
use inventory::engine::audit::{audit_position, PositionAudit};
use inventory::engine::persistence::PERSIST_GROUP;
use inventory::startup::Application;
use inventory::store::db::{self, DbPool};
use inventory::store::redis::RedisStore;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const SERVICE_TOKEN: &str = "test-service-token-0123456789";

/// A client that sends the admin token with every request.
pub fn admin_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_static("Bearer test-admin-token-0123456789"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

pub fn database_base_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "mysql://inventory:inventory@127.0.0.1:3306/inventory".to_string())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

fn with_database(url: &str, db: &str) -> String {
    match url.rfind('/') {
        Some(i) if url[..i].contains("://") && i > url.find("://").unwrap_or(0) + 2 => {
            format!("{}/{}", &url[..i], db)
        }
        _ => format!("{url}/{db}"),
    }
}

/// A fresh, empty database for one test.
pub async fn create_test_database() -> (String, String) {
    use diesel_async::RunQueryDsl;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("inventory_t_{}", &id[..12]);
    let base = database_base_url();
    let mut conn = AsyncMysqlConnection::establish(&base)
        .await
        .expect("connect to MariaDB (run `make services`)");
    diesel::sql_query(format!("CREATE DATABASE `{name}`"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let url = with_database(&base, &name);
    (name, url)
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub settings: Settings,
    pub db_name: String,
    pub redis: RedisStore,
    pub pool: DbPool,
    pub state: web::Data<AppState>,
    handle: actix_web::dev::ServerHandle,
    stopped: Option<tokio::sync::oneshot::Receiver<()>>,
}

pub fn test_settings(db_url: &str, prefix: &str, overrides: &[(&str, toml::Value)]) -> Settings {
    let mut all: Vec<(&str, toml::Value)> = vec![
        ("http.bind", "127.0.0.1:0".into()),
        ("http.workers", 2.into()),
        ("database.url", db_url.into()),
        ("database.pool_max_size", 8.into()),
        ("redis.url", redis_url().into()),
        ("redis.key_prefix", prefix.into()),
        ("journal.block_ms", 20.into()),
        ("log.format", "pretty".into()),
        ("auth.admin_tokens", ADMIN_TOKEN.into()),
        ("auth.service_tokens", SERVICE_TOKEN.into()),
    ];
    all.extend(overrides.iter().cloned());
    Settings::defaults_with(&all).expect("test settings are valid")
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

pub async fn spawn_app_with(overrides: &[(&str, toml::Value)]) -> TestApp {
    let (db_name, db_url) = create_test_database().await;
    let prefix = format!("t{}:", &db_name["inventory_t_".len()..]);
    let settings = test_settings(&db_url, &prefix, overrides);
    start(settings, db_name).await
}

/// Starts (another) instance on the given settings: same database and Redis prefix, so
/// it sees what an earlier instance left.
pub async fn start(settings: Settings, db_name: String) -> TestApp {
    inventory::telemetry::init_with_default(settings.log.format, "warn");
    let app = Application::build(settings.clone())
        .await
        .expect("application starts");
    let port = app.port();
    let handle = app.server_handle();
    let state = app.state();
    let (tx, rx) = tokio::sync::oneshot::channel();
    actix_web::rt::spawn(async move {
        let _ = app.run_until_stopped().await;
        let _ = tx.send(());
    });
    let redis = RedisStore::connect(&settings.redis)
        .await
        .expect("test redis connection");
    let pool = db::build_pool(&settings.database).expect("test pool");
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        client: admin_client(),
        settings,
        db_name,
        redis,
        pool,
        state,
        handle,
        stopped: Some(rx),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent");
        decode(response).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent");
        decode(response).await
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .put(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent");
        decode(response).await
    }

    pub async fn post_raw(&self, path: &str, content_type: &str, body: &str) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .expect("request sent");
        decode(response).await
    }

    pub async fn post(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(path))
            .send()
            .await
            .expect("request sent");
        decode(response).await
    }

    /// Adds stock through the API and asserts it worked.
    pub async fn stock_in(&self, sku: SkuId, warehouse: WarehouseId, qty: i64) {
        let (status, body) = self
            .post_json(
                &format!("/inventory/{sku}/stock?warehouseId={warehouse}"),
                &serde_json::json!({"delta": qty, "reason": "INBOUND"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// Stops this instance (HTTP and persistence) the way a restart would.
    pub async fn stop(&mut self) {
        self.handle.stop(true).await;
        if let Some(rx) = self.stopped.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        }
    }

    /// Waits until every journal entry is in the DB.
    pub async fn drain_journal(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let lag = self
                .redis
                .journal_lag(PERSIST_GROUP)
                .await
                .expect("journal lag");
            if lag.not_persisted() == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "journal did not drain: {lag:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn audit(&self, key: SkuKey) -> PositionAudit {
        audit_position(&self.redis, &self.pool, key)
            .await
            .expect("audit runs")
    }

    /// Drains the journal, then asserts the invariants for each position.
    pub async fn assert_invariants(&self, keys: &[SkuKey]) -> Vec<PositionAudit> {
        self.drain_journal().await;
        let mut audits = Vec::new();
        for key in keys {
            let audit = self.audit(*key).await;
            assert!(audit.is_clean(), "invariants broken for {key}: {audit:#?}");
            audits.push(audit);
        }
        audits
    }

    pub async fn db_conn(&self) -> db::DbConn {
        db::connection(&self.pool).await.expect("db connection")
    }

    pub async fn redis_cmd<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        let mut conn = self.redis.connection();
        cmd.query_async(&mut conn).await.expect("redis command")
    }
}

async fn decode(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body read");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// A TCP proxy in front of a store, which a test can cut to simulate an outage.
pub struct CuttableProxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
}

impl CuttableProxy {
    pub async fn start(target: &str) -> CuttableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let target = target.to_string();
        let flag = cut.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if flag.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused in effect
                }
                let target = target.clone();
                let flag = flag.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let watch = async {
                        while !flag.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        _ = watch => {}
                    }
                });
            }
        });
        CuttableProxy { port, cut }
    }

    /// `db_url` (of the MariaDB on :3306) through this proxy. mysql_async would otherwise
    /// switch to the server's unix socket, around the proxy.
    pub fn db_url(&self, db_url: &str) -> String {
        format!(
            "{}?prefer_socket=false",
            db_url.replace("127.0.0.1:3306", &format!("127.0.0.1:{}", self.port))
        )
    }

    /// Refuses new connections and closes the open ones.
    pub async fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        // The relays notice within 20 ms.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}
