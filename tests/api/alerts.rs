//! The shipped alert rules and dashboard against a real Prometheus (Debian's `prometheus`,
//! installed by scripts/services.sh) that scrapes a real service: the DB is cut, the journal
//! lags, and the alerts are read from Prometheus's own API. The dashboard's queries are
//! checked by that Prometheus and its metric names against GET /metrics.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use inventory::domain::{SkuId, SkuKey, WarehouseId};
use serde_json::{json, Value};

use crate::helpers::{create_test_database, start, test_settings, CuttableProxy, TestApp};

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A Prometheus process with its own config, rules and storage; killed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    url: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// Scrapes `target` (host:port) every 3 s (a scrape may take the service's 2 s check
    /// bound) as job `inventory`, with the shipped rules evaluated every second and their
    /// `for:` shortened to 2 s (the expressions are the shipped ones).
    async fn start(target: &str) -> Prometheus {
        let binary = which("prometheus").unwrap_or_else(|| {
            panic!("prometheus is not installed: run `PROMETHEUS=1 bash scripts/services.sh`")
        });
        let dir = std::env::temp_dir().join(format!("inventory-prom-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let rules =
            std::fs::read_to_string(repo_file("deploy/prometheus/alerts.yml")).expect("alerts.yml");
        let fast: String = rules
            .lines()
            .map(|l| match l.trim_start().strip_prefix("for: ") {
                Some(_) => format!("{}for: 2s", &l[..l.len() - l.trim_start().len()]),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(dir.join("alerts.yml"), fast).expect("rules copy");
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 3s\n  scrape_timeout: 3s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - alerts.yml\n\
                 scrape_configs:\n  - job_name: inventory\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .expect("config");
        let port = crate::crash::free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let prometheus = Prometheus {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        // Ready once the target has been scraped and answered.
        prometheus
            .wait_for(
                "the first scrape",
                Duration::from_secs(30),
                |p| async move {
                    p.query(r#"up{job="inventory"}"#)
                        .await
                        .first()
                        .is_some_and(|s| s["value"][1] == "1")
                },
            )
            .await;
        prometheus
    }

    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .query(query)
            .send()
            .await;
        match response {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// The result vector of an instant query (empty while Prometheus is not up).
    async fn query(&self, promql: &str) -> Vec<Value> {
        let body = self.api("/api/v1/query", &[("query", promql)]).await;
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Alert name -> state ("pending" or "firing") of the active alerts.
    async fn alerts(&self) -> Vec<(String, String)> {
        let body = self.api("/api/v1/alerts", &[]).await;
        body["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                    a["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    async fn firing(&self, name: &str) -> bool {
        self.alerts()
            .await
            .iter()
            .any(|(n, state)| n == name && state == "firing")
    }

    async fn wait_for<'a, F, Fut>(&'a self, what: &str, limit: Duration, check: F)
    where
        F: Fn(&'a Prometheus) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + limit;
        while !check(self).await {
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
                panic!(
                    "prometheus: {what} did not happen in {limit:?}; alerts {:?}; log:\n{log}",
                    self.alerts().await
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
}

/// The dashboard's queries, with its variables filled in as Grafana would.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(repo_file("deploy/grafana/inventory.json"))
        .expect("deploy/grafana/inventory.json");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a target has expr");
            out.push(expr.replace("$job", "inventory").replace("$instance", ".*"));
        }
    }
    assert!(out.len() >= 20, "the dashboard lost its panels: {out:?}");
    out
}

/// A histogram's series name without its `_bucket` / `_sum` / `_count` suffix.
fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// Metric names (`inventory_...`) in a PromQL text or in alerts.yml, histogram suffixes
/// dropped.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text.get(i..).and_then(|t| t.find("inventory_")) {
        let start = i + at;
        let before_ok = start == 0
            || !bytes
                .get(start - 1)
                .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'/');
        let mut end = start;
        while bytes
            .get(end)
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
        {
            end += 1;
        }
        if before_ok && end > start + "inventory_".len() {
            names.insert(family(&text[start..end]).to_string());
        }
        i = end.max(start + 1);
    }
    names
}

#[actix_web::test]
async fn a_cut_database_fires_the_shipped_alerts_in_a_real_prometheus_and_they_resolve() {
    let (db_name, db_url) = create_test_database().await;
    let db_proxy = CuttableProxy::start("127.0.0.1:3306").await;
    let proxied_db = db_proxy.db_url(&db_url);
    let prefix = format!("t{}:", &db_name["inventory_t_".len()..]);
    let mut settings = test_settings(
        &proxied_db,
        &prefix,
        &[
            ("database.pool_timeout_ms", 300.into()),
            ("journal.retry_max_ms", 500.into()),
        ],
    );
    settings.database.run_migrations = true;
    let app = start(settings, db_name).await;
    let key = SkuKey::new(WarehouseId(1), SkuId(61));
    app.stock_in(SkuId(61), WarehouseId(1), 1000).await;

    let target = app.address.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(&target).await;
    // Every shipped rule loaded, nothing firing while all is well.
    let rules = prometheus.api("/api/v1/rules", &[]).await;
    let loaded: usize = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| g["rules"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(loaded, 13, "{rules}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let healthy = prometheus.alerts().await;
    assert!(
        !healthy.iter().any(|(_, state)| state == "firing"),
        "alerts firing while healthy: {healthy:?}"
    );

    // Every dashboard query is valid PromQL to this Prometheus.
    for query in dashboard_queries() {
        let body = prometheus.api("/api/v1/query", &[("query", &query)]).await;
        assert_eq!(body["status"], "success", "{query}: {body}");
    }

    // The DB goes away; reservations go on in Redis and the journal fills.
    db_proxy.cut().await;
    for i in 0..40 {
        let (status, body) = app
            .post_json(
                "/inventory/reserve",
                &json!({"orderNo": format!("AL-{i}"), "skuId": 61, "warehouseId": 1, "qty": 1}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    prometheus
        .wait_for(
            "InventoryDatabaseDown and InventoryNotReady firing",
            Duration::from_secs(60),
            |p| async move {
                p.firing("InventoryDatabaseDown").await && p.firing("InventoryNotReady").await
            },
        )
        .await;
    // What Prometheus saw of the journal: the 40 entries waiting. A scrape may have run
    // while the entries were still being written (or its lag read timed out under load and
    // kept the value before), so wait, bounded, for a scrape that saw them all.
    prometheus
        .wait_for(
            "a scrape that saw all 40 entries waiting",
            Duration::from_secs(30),
            |p| async move {
                let lag = p
                    .query(r#"max(inventory_journal_lag_entries{job="inventory"})"#)
                    .await;
                lag.first()
                    .and_then(|v| v["value"][1].as_str())
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|lag| lag >= 40.0)
            },
        )
        .await;
    prometheus
        .wait_for(
            "a journal age above 1 s",
            Duration::from_secs(30),
            |p| async move {
                !p.query(r#"inventory_journal_oldest_age_seconds{job="inventory"} > 1"#)
                    .await
                    .is_empty()
            },
        )
        .await;
    assert!(!prometheus.firing("InventoryRedisDown").await);

    // The DB is back: the journal drains and the alerts resolve.
    db_proxy.restore();
    prometheus
        .wait_for(
            "the DB alerts resolving",
            Duration::from_secs(60),
            |p| async move {
                let active = p.alerts().await;
                !active
                    .iter()
                    .any(|(n, _)| n == "InventoryDatabaseDown" || n == "InventoryNotReady")
            },
        )
        .await;
    app.drain_journal().await;
    let audits = app.assert_invariants(&[key]).await;
    assert_eq!(audits[0].lines_reserved, 40);
}

/// Every metric the dashboard and the alert rules name is one the service exports (a
/// service with Kafka on, after an order went through it).
#[actix_web::test]
async fn every_metric_the_dashboard_and_the_alerts_name_exists_in_metrics() {
    let s = crate::kafka::setup(&[]).await;
    s.app.stock_in(SkuId(62), WarehouseId(1), 10).await;
    let message = crate::kafka::order_created(
        &crate::kafka::mid(),
        "ORD-METRICS",
        r#"[{"skuId":62,"qty":1}]"#,
    );
    s.kafka
        .send("ORDER_TOPIC", "ORDER_CREATED", "ORD-METRICS", &message)
        .await;
    let out = s
        .kafka
        .collect("INVENTORY_TOPIC", 1, crate::kafka::WAIT)
        .await;
    assert_eq!(out.len(), 1);
    let exported = exported_names(&s.app).await;
    let mut named = BTreeSet::new();
    for query in dashboard_queries() {
        named.extend(metric_names(&query));
    }
    let rules =
        std::fs::read_to_string(repo_file("deploy/prometheus/alerts.yml")).expect("alerts.yml");
    named.extend(metric_names(&rules));
    assert!(named.len() >= 20, "{named:?}");
    let missing: Vec<&String> = named.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "named but not exported: {missing:?}\nexported: {exported:?}"
    );
}

async fn exported_names(app: &TestApp) -> BTreeSet<String> {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| family(n).to_string())
        .collect()
}

#[test]
fn metric_names_are_read_from_queries() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(inventory_http_request_duration_seconds_bucket{job="inventory"}[5m]))) / inventory_readiness"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "inventory_http_request_duration_seconds",
            "inventory_readiness"
        ]
    );
}
