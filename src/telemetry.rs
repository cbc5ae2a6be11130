//! Logging: JSON lines for machines or pretty output for people; level from RUST_LOG.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, FormattedFields};
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
            .fmt_fields(SpanJsonFields)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

/// Span fields as JSON, written straight into the span's buffer.
///
/// Every HTTP request and Kafka message opens a span (`SPAN_TARGET`), and the fmt layer
/// formats a span's fields when it opens and again on each `record`. tracing-subscriber's
/// `JsonFields` builds a map of `serde_json::Value`s for that and, on `record`, parses the
/// fields written so far back into a map; that was about 9% of the service's CPU on the
/// hot reserve path (docs/benchmarks.md, "Where the handler's time went"). This writes the
/// same JSON object directly, and a `record` splices the new fields in before its closing
/// brace. The JSON event format reads the object back only when a line is logged inside
/// the span.
#[derive(Debug, Default, Clone, Copy)]
pub struct SpanJsonFields;

impl<'w> FormatFields<'w> for SpanJsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut object = String::with_capacity(128);
        object.push('{');
        fields.record(&mut JsonFieldWriter {
            out: &mut object,
            empty: true,
        });
        object.push('}');
        writer.write_str(&object)
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        let object = &mut current.fields;
        let empty = match object.pop() {
            // Not written by format_fields (nothing was formatted yet): start an object.
            None => {
                object.push('{');
                true
            }
            Some('}') => object.ends_with('{'),
            Some(other) => {
                object.push(other);
                return Err(fmt::Error);
            }
        };
        fields.record(&mut JsonFieldWriter { out: object, empty });
        object.push('}');
        Ok(())
    }
}

/// Writes `"name":value` pairs, comma-separated, as `tracing_subscriber`'s JSON visitor
/// would: numbers and booleans bare, everything else as a JSON string.
struct JsonFieldWriter<'a> {
    out: &'a mut String,
    empty: bool,
}

impl JsonFieldWriter<'_> {
    fn key(&mut self, field: &Field) {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        let name = field.name();
        push_json_str(self.out, name.strip_prefix("r#").unwrap_or(name));
        self.out.push(':');
    }
}

impl Visit for JsonFieldWriter<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json_str(self.out, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.out, "{value}");
        } else {
            push_json_str(self.out, &value.to_string());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        push_json_str(self.out, &format!("{value:?}"));
    }
}

/// `value` as a JSON string literal (serde_json's escaping).
fn push_json_str(out: &mut String, value: &str) {
    match serde_json::to_string(value) {
        Ok(text) => out.push_str(&text),
        // Serialising a str cannot fail; an empty string keeps the object valid anyway.
        Err(_) => out.push_str("\"\""),
    }
}

/// Renames the calling thread (`/proc/thread-self/comm`, at most 15 bytes), so that
/// per-thread CPU (`top -H`, /proc/<pid>/task/*/stat, perf) tells the HTTP workers, the
/// shard arbiters and the main thread apart; actix names them all `actix-rt|system`.
/// Best effort: where /proc is not writable the name stays.
pub fn name_current_thread(name: &str) {
    let name: String = name.chars().take(15).collect();
    let _ = std::fs::write("/proc/thread-self/comm", name);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(bytes);
            }
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines a JSON subscriber with `SpanJsonFields` writes while `f` runs.
    fn logged(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .fmt_fields(SpanJsonFields)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buffer.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn span_fields_are_a_json_object_with_fields_recorded_later() {
        let lines = logged(|| {
            let span = tracing::info_span!(
                "request",
                method = "POST",
                route = "/inventory/reserve",
                trace_id = %"t\"1\\x\n",
                n = 42i64,
                big = 7u64,
                ok = true,
                ratio = 0.5f64,
                order_no = tracing::field::Empty,
            );
            span.in_scope(|| tracing::warn!("before"));
            span.record("order_no", "ORD-1");
            span.in_scope(|| tracing::warn!(detail = "x", "after"));
            let empty = tracing::info_span!("bare", later = tracing::field::Empty);
            empty.record("later", 5i64);
            empty.in_scope(|| tracing::warn!("bare"));
        });
        assert_eq!(lines.len(), 3, "{lines:?}");
        let span = |i: usize| lines[i]["span"].clone();
        assert_eq!(span(0)["trace_id"], "t\"1\\x\n");
        assert_eq!(span(0)["method"], "POST");
        assert_eq!(span(0)["n"], 42);
        assert_eq!(span(0)["big"], 7);
        assert_eq!(span(0)["ok"], true);
        assert_eq!(span(0)["ratio"], 0.5);
        assert_eq!(span(0)["order_no"], serde_json::Value::Null);
        assert_eq!(span(1)["order_no"], "ORD-1");
        assert_eq!(span(1)["route"], "/inventory/reserve");
        assert_eq!(lines[1]["fields"]["detail"], "x");
        assert_eq!(span(2)["later"], 5);
        assert_eq!(span(2)["name"], "bare");
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut out = String::new();
        push_json_str(&mut out, "a\u{1}b\tc\"");
        assert_eq!(out, "\"a\\u0001b\\tc\\\"\"");
        let back: String = serde_json::from_str(&out).unwrap_or_default();
        assert_eq!(back, "a\u{1}b\tc\"");
    }
}
