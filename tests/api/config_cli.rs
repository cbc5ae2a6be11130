//! The binary refuses bad configuration at start-up, naming the key.

use std::process::Command;

fn run_with_env(vars: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_inventory-service"))
        .args(args)
        .envs(vars.iter().copied())
        .output()
        .expect("binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[test]
fn unknown_environment_key_stops_start_up() {
    let (code, stderr) = run_with_env(&[("INVENTORY__ENGINE__SHARDZ", "4")], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("engine.shardz"), "{stderr}");
}

#[test]
fn invalid_value_stops_start_up() {
    let (code, stderr) = run_with_env(&[("INVENTORY__HTTP__BIND", "not-an-address")], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("http.bind"), "{stderr}");
    let (code, stderr) = run_with_env(&[("INVENTORY__RESERVATION__EXPIRE_MINUTES", "-3")], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("reservation.expire_minutes"), "{stderr}");
}

#[test]
fn unknown_key_in_a_config_file_stops_start_up() {
    let dir = std::env::temp_dir().join(format!("inv-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "[reservation.timeout]\nenabled = true\nbatchsize = 5\n",
    )
    .unwrap();
    let (code, stderr) = run_with_env(&[], &["--config", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("reservation.timeout") && stderr.contains("batchsize"),
        "{stderr}"
    );
    let (code, stderr) = run_with_env(&[], &["--config", "/does/not/exist.toml"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("/does/not/exist.toml"), "{stderr}");
}

#[test]
fn secrets_never_reach_the_error_output() {
    let (code, stderr) = run_with_env(
        &[("INVENTORY__DATABASE__URL", "postgres://user:s3cret-pw@db/x")],
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("database.url"), "{stderr}");
    assert!(!stderr.contains("s3cret-pw"), "{stderr}");
}

#[test]
fn no_tokens_stop_start_up_unless_auth_is_disabled() {
    let (code, stderr) = run_with_env(&[], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("auth") && stderr.contains("tokens"),
        "{stderr}"
    );
}
