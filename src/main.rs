use std::path::PathBuf;
use std::process::ExitCode;

use inventory::config::Settings;
use inventory::startup::Application;
use inventory::telemetry;

fn usage() -> &'static str {
    "usage: inventory-service [--config FILE]\n\
     Settings: config/default.toml < FILE < environment INVENTORY__SECTION__KEY"
}

fn parse_args() -> Result<Option<PathBuf>, String> {
    let mut args = std::env::args().skip(1);
    let mut config = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                config = Some(PathBuf::from(args.next().ok_or("--config needs a file")?))
            }
            "--help" | "-h" => return Err(usage().to_string()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
    }
    Ok(config)
}

fn main() -> ExitCode {
    let config_file = match parse_args() {
        Ok(file) => file,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let settings = match Settings::load(config_file.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.log.format);
    tracing::info!(settings = ?settings, "starting inventory-service");

    let system = actix_web::rt::System::new();
    let result = system.block_on(async move {
        let app = Application::build(settings)
            .await
            .map_err(|e| e.to_string())?;
        let handle = app.server_handle();
        actix_web::rt::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutdown requested; draining");
            handle.stop(true).await;
        });
        app.run_until_stopped().await.map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "inventory-service failed");
            eprintln!("inventory-service failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
