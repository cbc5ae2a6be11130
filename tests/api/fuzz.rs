//! API fuzzing: schemathesis generates requests from the served OpenAPI document (valid and
//! invalid ones) against a live instance. No 5xx, every answer conforms to the document
//! (status codes, content types, the error envelope with a code from the table, `Allow` on
//! 405), invalid data is rejected, and afterwards the invariants hold for every position.
//! `make test` installs schemathesis into .data/venv (scripts/fuzz-tools.sh).

use inventory::domain::{SkuId, WarehouseId};
use std::time::Duration;

use inventory::domain::SkuKey;
use serde_json::json;

use crate::helpers::{spawn_app, ADMIN_TOKEN};

fn schemathesis() -> std::path::PathBuf {
    let path = std::env::var_os("SCHEMATHESIS")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".data/venv/bin/st")
        });
    assert!(
        path.exists(),
        "schemathesis not found at {}: run `bash scripts/fuzz-tools.sh` (make test does)",
        path.display()
    );
    path
}

#[actix_web::test]
async fn schemathesis_finds_no_server_error_or_nonconforming_answer_and_invariants_hold() {
    let st = schemathesis();
    let app = spawn_app().await;
    // Known positions and an order, so generated requests reach the logic, not only 404s.
    for sku in 1..=3 {
        app.stock_in(SkuId(sku), WarehouseId(1), 1_000).await;
    }
    let (status, body) = app
        .post_json(
            "/inventory/reserve",
            &json!({"orderNo": "0", "skuId": 1, "qty": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| u64::from(rand::random::<u32>()));
    let examples = std::env::var("FUZZ_EXAMPLES").unwrap_or_else(|_| "40".to_string());
    let report = std::env::temp_dir().join(format!("schemathesis-{seed}.txt"));
    let run = tokio::process::Command::new(&st)
        .arg("run")
        .arg(app.url("/openapi.json"))
        .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .args(["--checks", "all"])
        // Not applicable: positive_data_acceptance expects 2xx for any schema-valid request,
        // but a valid reserve may still be short of stock (409) or name no position (404);
        // the auth checks need a second identity and stateful links this service has not.
        .args([
            "--exclude-checks",
            "positive_data_acceptance,ignored_auth,object_level_authorization,use_after_free,ensure_resource_availability",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", &examples])
        .args(["--seed", &seed.to_string()])
        .args(["--request-timeout", "10", "--max-time", "60", "--no-shrink"])
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("schemathesis finished within 120 s")
        .expect("schemathesis runs");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    let _ = std::fs::write(&report, &text);
    let summary: String = text
        .lines()
        .skip_while(|l| !l.contains("SUMMARY"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        output.status.success(),
        "schemathesis failed (seed {seed}; reproduce with FUZZ_SEED={seed}); full report in {}:\n{text}",
        report.display()
    );
    assert!(
        text.contains("passed") && !text.contains(" 0 generated"),
        "schemathesis ran no test case:\n{text}"
    );
    println!("FUZZ schemathesis seed {seed}:\n{summary}");

    // The invariants hold for the seeded positions and for every position the run created.
    app.assert_invariants(&[
        SkuKey::new(WarehouseId(1), SkuId(1)),
        SkuKey::new(WarehouseId(1), SkuId(2)),
        SkuKey::new(WarehouseId(1), SkuId(3)),
    ])
    .await;
    let (status, report) = app.post("/inventory/reconcile?repair=false").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["data"]["differences"],
        json!([]),
        "the fuzzing left Redis, the DB and the ledger apart: {report}"
    );
    assert!(report["data"]["positionsChecked"].as_u64().unwrap_or(0) >= 3);
}
