//! Logging: JSON lines for machines or pretty output for people; level from RUST_LOG.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The target of the request and Kafka message spans. It is enabled at info whatever
/// RUST_LOG says, so that every log line written inside one (a warning, an error) carries its
/// trace_id and order_no.
pub const SPAN_TARGET: &str = "inventory::span";

pub fn init(format: LogFormat) {
    init_with_default(format, "info");
}

/// Like [`init`], with another level when RUST_LOG is not set (tests use "warn").
pub fn init_with_default(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let filter = match format!("{SPAN_TARGET}=info").parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    // Colours only on a terminal, never into log files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
