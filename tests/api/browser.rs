//! The console in a real browser: Debian's chromium, headless, driven over WebDriver by
//! chromium-driver (a small client on reqwest below), against the real service and stores.
//! Each test saves a screenshot under `target/console-shots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use inventory::domain::{SkuId, SkuKey, WarehouseId};
use serde_json::{json, Value};

use crate::crash::free_port;
use crate::helpers::{spawn_app, TestApp, ADMIN_TOKEN, SERVICE_TOKEN};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const WAIT: Duration = Duration::from_secs(15);

/// One chromedriver process and one browser session in it; both end on drop.
struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
    _profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (apt install chromium-driver; make test installs it)");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = std::env::temp_dir().join(format!("console-test-{}", uuid::Uuid::new_v4()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu",
                         "--disable-background-networking", "--disable-component-update",
                         "--no-first-run", "--disable-dev-shm-usage", "--window-size=1280,1000",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session json");
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        Browser {
            driver,
            http,
            session: format!("{base}/session/{session}"),
            _profile: profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(b) = body {
            request = request.json(&b);
        }
        let answer: Value = request
            .send()
            .await
            .expect("webdriver call")
            .json()
            .await
            .expect("webdriver json");
        answer["value"].clone()
    }

    /// `call`, failing the test on a WebDriver error (a stale element, a script error).
    async fn must(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let value = self.call(method, path, body).await;
        assert!(value.get("error").is_none(), "webdriver {path}: {value}");
        value
    }

    async fn open(&self, url: &str) {
        self.must(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self
                .call(
                    reqwest::Method::POST,
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            if let Some(id) = found[ELEMENT].as_str() {
                return id.to_string();
            }
            assert!(Instant::now() < deadline, "no element {css}: {found}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.must(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.must(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )
        .await;
        self.must(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        self.must(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    async fn displayed(&self, css: &str) -> bool {
        let id = self.find(css).await;
        let shown = self
            .must(
                reqwest::Method::GET,
                &format!("/element/{id}/displayed"),
                None,
            )
            .await;
        shown
            .as_bool()
            .unwrap_or_else(|| panic!("displayed {css}: {shown}"))
    }

    /// Runs a snippet in the page (WebDriver's own channel, which the page's CSP does not
    /// govern) and returns its value.
    async fn eval(&self, script: &str) -> Value {
        self.must(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Waits until the element's text contains `wanted`; returns the text.
    async fn wait_text(&self, css: &str, wanted: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.text(css).await;
            if text.contains(wanted) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never showed {wanted:?}; it shows {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Accepts the confirmation the page asked for (there must be one).
    async fn accept(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.call(reqwest::Method::GET, "/alert/text", None).await;
            if text.is_string() {
                break;
            }
            assert!(Instant::now() < deadline, "no confirmation dialog");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.must(reqwest::Method::POST, "/alert/accept", Some(json!({})))
            .await;
    }

    /// Whether a dialog (an alert a script opened) is showing.
    async fn dialog_open(&self) -> bool {
        self.call(reqwest::Method::GET, "/alert/text", None)
            .await
            .is_string()
    }

    async fn screenshot(&self, name: &str) {
        let png = self.must(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or(""))
            .expect("png");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-shots");
        std::fs::create_dir_all(&dir).expect("shots dir");
        std::fs::write(dir.join(format!("{name}.png")), bytes).expect("shot");
    }

    async fn login(&self, app: &TestApp, page: &str, token: &str) {
        self.open(&app.url(&format!("/console#{page}"))).await;
        self.type_into("#token", token).await;
        self.click("#login-button").await;
    }
}

#[actix_web::test]
async fn an_admin_adds_50_units_of_a_new_sku_and_sees_the_ledger_row() {
    let app = spawn_app().await;
    let browser = Browser::start().await;
    browser.login(&app, "sku", ADMIN_TOKEN).await;
    browser.wait_text("#role", "admin").await;
    browser.type_into("#sku-id", "4701").await;
    browser.type_into("#adjust-warehouse", "1").await;
    browser.type_into("#adjust-delta", "50").await;
    browser.type_into("#adjust-remark", "GRN 4701").await;
    browser.click("#adjust-button").await;
    browser.accept().await;
    browser.wait_text("#message", "available now 50").await;
    let ledger = browser.wait_text("#sku-ledger", "INBOUND").await;
    assert!(ledger.contains("GRN 4701"), "{ledger}");
    browser.wait_text("#sku-positions", "50").await;
    browser.screenshot("admin-adds-stock").await;
    let (_, stock) = app.get("/inventory/4701?warehouseId=1").await;
    assert_eq!(stock["data"]["availableQty"], 50);
    let audits = app
        .assert_invariants(&[SkuKey::new(WarehouseId(1), SkuId(4701))])
        .await;
    assert_eq!(audits[0].db_available, Some(50));
}

#[actix_web::test]
async fn an_order_reserved_through_the_api_is_released_from_the_console() {
    let app = spawn_app().await;
    app.stock_in(SkuId(4702), WarehouseId(1), 10).await;
    let (status, body) = app
        .post_json(
            "/inventory/reserve",
            &json!({"orderNo": "CON-1", "skuId": 4702, "qty": 4}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let browser = Browser::start().await;
    browser.login(&app, "order", SERVICE_TOKEN).await;
    browser.wait_text("#role", "service").await;
    browser.type_into("#order-no", "CON-1").await;
    browser.click("#order-search").await;
    browser.wait_text("#order-lines", "RESERVED").await;
    browser.click("#order-release").await;
    browser.accept().await;
    browser.wait_text("#message", "RELEASED").await;
    browser.wait_text("#order-lines", "RELEASED").await;
    browser.screenshot("order-released").await;
    let (_, stock) = app.get("/inventory/4702?warehouseId=1").await;
    assert_eq!(stock["data"]["availableQty"], 10, "the 4 units are back");
    app.assert_invariants(&[SkuKey::new(WarehouseId(1), SkuId(4702))])
        .await;
}

#[actix_web::test]
async fn a_remark_with_markup_shows_as_text_and_runs_nothing() {
    let app = spawn_app().await;
    let payload = "<img src=x onerror=alert(1)>";
    let (status, body) = app
        .post_json(
            "/inventory/4703/stock?warehouseId=1",
            &json!({"delta": 5, "reason": "INBOUND", "remark": payload}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    app.drain_journal().await;
    let browser = Browser::start().await;
    browser.login(&app, "sku", ADMIN_TOKEN).await;
    browser.wait_text("#role", "admin").await;
    browser.type_into("#sku-id", "4703").await;
    browser.click("#sku-search").await;
    let ledger = browser.wait_text("#sku-ledger", "INBOUND").await;
    assert!(ledger.contains(payload), "the remark as typed: {ledger}");
    assert_eq!(
        browser
            .eval("return document.querySelectorAll('#sku-ledger img').length")
            .await,
        json!(0)
    );
    assert!(!browser.dialog_open().await, "the onerror handler ran");
    browser.screenshot("markup-as-text").await;
}

#[actix_web::test]
async fn a_wrong_token_is_refused_clearly_and_changes_nothing() {
    let app = spawn_app().await;
    let browser = Browser::start().await;
    browser
        .login(&app, "sku", "this-is-not-a-known-token")
        .await;
    browser.wait_text("#message", "UNAUTHORIZED").await;
    assert_eq!(browser.text("#role").await, "role: anonymous");
    assert!(!browser.displayed("#sku-admin").await, "no admin forms");
    assert_eq!(
        browser.eval("return sessionStorage.length").await,
        json!(0),
        "the wrong token is not kept"
    );
    browser.screenshot("wrong-token").await;
}

#[actix_web::test]
async fn a_service_token_sees_no_admin_forms_and_the_api_refuses_them_too() {
    let app = spawn_app().await;
    let browser = Browser::start().await;
    browser.login(&app, "sku", SERVICE_TOKEN).await;
    browser.wait_text("#role", "service").await;
    assert!(!browser.displayed("#sku-admin").await);
    browser.open(&app.url("/console#reconcile")).await;
    browser.wait_text("#role", "service").await;
    assert!(
        browser.displayed("#page-reconcile").await,
        "the page itself shows"
    );
    assert!(!browser.displayed("#reconcile-report").await);
    browser.screenshot("service-token").await;
    let response = reqwest::Client::new()
        .post(app.url("/inventory/4704/stock?warehouseId=1"))
        .bearer_auth(SERVICE_TOKEN)
        .json(&json!({"delta": 5, "reason": "INBOUND"}))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status().as_u16(), 403);
    let (status, _) = app.get("/inventory/4704?warehouseId=1").await;
    assert_eq!(status, 404, "nothing was added");
}

#[actix_web::test]
async fn reconciliation_from_the_page_finds_nothing_then_names_a_corrupted_position() {
    let app = spawn_app().await;
    app.stock_in(SkuId(4705), WarehouseId(1), 30).await;
    app.drain_journal().await;
    let browser = Browser::start().await;
    browser.login(&app, "reconcile", ADMIN_TOKEN).await;
    browser.wait_text("#role", "admin").await;
    browser.click("#reconcile-report").await;
    browser
        .wait_text("#reconcile-result", "no differences")
        .await;
    browser.screenshot("reconcile-clean").await;
    // Corrupt Redis by hand: 7 units appear from nowhere.
    let key = app
        .redis
        .keys()
        .stock(SkuKey::new(WarehouseId(1), SkuId(4705)));
    let _: i64 = app
        .redis_cmd(redis::cmd("HSET").arg(&key).arg("avail").arg(37))
        .await;
    browser.click("#reconcile-report").await;
    let found = browser.wait_text("#reconcile-result", "sku 4705").await;
    assert!(found.contains("difference"), "{found}");
    browser.wait_text("#reconcile-reports", "4705").await;
    browser.screenshot("reconcile-difference").await;
    // The SKU page marks the position whose Redis and DB counters differ.
    browser.open(&app.url("/console#sku")).await;
    browser.type_into("#sku-id", "4705").await;
    browser.click("#sku-search").await;
    browser.wait_text("#sku-positions", "37").await;
    assert_eq!(
        browser
            .eval("return document.querySelectorAll('#sku-positions tr.mismatch').length")
            .await,
        json!(1)
    );
    browser.screenshot("sku-mismatch").await;
}

#[actix_web::test]
async fn the_overview_charts_the_service_and_the_holds_page_lists_what_ends_soonest() {
    let app = spawn_app().await;
    app.stock_in(SkuId(4706), WarehouseId(1), 5).await;
    let browser = Browser::start().await;
    browser.login(&app, "overview", ADMIN_TOKEN).await;
    browser.wait_text("#overview-status", "UP").await;
    // Orders over a few of the page's 3 s samples: 5 held, then refusals.
    for i in 0..12 {
        let (status, body) = app
            .post_json(
                "/inventory/reserve",
                &json!({"orderNo": format!("OV-{i}"), "skuId": 4706, "qty": 1}),
            )
            .await;
        if i < 5 {
            assert_eq!(status, 200, "OV-{i}: {body}");
        } else {
            assert_eq!(
                (status, body["code"].as_str()),
                (409, Some("INSUFFICIENT_STOCK")),
                "OV-{i}: {body}"
            );
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // Three lines, each with a point per sample taken.
    let deadline = Instant::now() + WAIT;
    let points = "return Array.from(document.querySelectorAll('#overview-chart polyline'))\
                  .map(p => p.getAttribute('points').split(' ').length)";
    loop {
        let counts = browser.eval(points).await;
        let lines = counts.as_array().map(Vec::len).unwrap_or(0);
        if lines == 3 && counts[0].as_u64().unwrap_or(0) >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "no chart: {counts}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let legend = browser.wait_text("#overview-legend", "reserved").await;
    assert!(legend.contains("refused: insufficient"), "{legend}");
    // Something was drawn above the floor (118): the rates were not all zero.
    let lowest = browser
        .eval(
            "return Math.min(...Array.from(document.querySelectorAll('#overview-chart polyline'))\
             .flatMap(p => p.getAttribute('points').split(' ').map(xy => Number(xy.split(',')[1]))))",
        )
        .await;
    assert!(
        lowest.as_f64().is_some_and(|y| y < 100.0),
        "flat chart: {lowest}"
    );
    browser
        .wait_text("#overview-status", "supervisor leader")
        .await;
    browser.screenshot("overview").await;
    app.drain_journal().await;
    browser.open(&app.url("/console#holds")).await;
    let holds = browser.wait_text("#holds-table", "OV-0").await;
    assert!(
        holds.contains("OV-4") && !holds.contains("OV-5"),
        "5 units, 5 holds: {holds}"
    );
    browser.screenshot("holds").await;
    let audits = app
        .assert_invariants(&[SkuKey::new(WarehouseId(1), SkuId(4706))])
        .await;
    assert_eq!(audits[0].lines_reserved, 5);
}
