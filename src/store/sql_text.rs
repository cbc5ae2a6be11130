//! Multi-row statements as SQL text, for the persistence actor's batches. A prepared
//! statement with thousands of placeholders costs a prepare round trip and the server's
//! parse of every placeholder, and each row count is another statement to prepare; the
//! same rows as text go in one round trip (measured in docs/benchmarks.md).
//!
//! Values never come from SQL: numbers are formatted, and text is quoted only when every
//! character is in a safe set, otherwise written as a hex literal, so no quote, backslash
//! or control character from a caller ever reaches the statement as syntax, whatever the
//! server's sql_mode.

use std::fmt::Write;

use chrono::NaiveDateTime;

/// Appends a text value.
pub fn push_text(sql: &mut String, value: &str) {
    let plain = value.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b' ' | b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'@' | b'#' | b'=' | b','
            )
    });
    if plain {
        sql.push('\'');
        sql.push_str(value);
        sql.push('\'');
    } else if value.is_empty() {
        sql.push_str("''");
    } else {
        // A hex literal is a binary string; CONVERT makes it the column's text. Written
        // digit by digit: `write!` per byte was 7% of the service's CPU under Kafka load
        // (every consume-log result is JSON, so hex).
        sql.reserve(value.len() * 2 + 26);
        sql.push_str("CONVERT(X'");
        for byte in value.bytes() {
            sql.push(hex_digit(byte >> 4));
            sql.push(hex_digit(byte & 0x0f));
        }
        sql.push_str("' USING utf8mb4)");
    }
}

fn hex_digit(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16)
        .unwrap_or('0')
        .to_ascii_uppercase()
}

pub fn push_opt_text(sql: &mut String, value: Option<&str>) {
    match value {
        Some(v) => push_text(sql, v),
        None => sql.push_str("NULL"),
    }
}

pub fn push_int(sql: &mut String, value: i64) {
    let _ = write!(sql, "{value}");
}

pub fn push_datetime(sql: &mut String, value: &NaiveDateTime) {
    let mut buf = [0u8; 23];
    match crate::domain::datetime_digits(value, &mut buf, b' ', true) {
        Some(text) => {
            sql.push('\'');
            sql.push_str(text);
            sql.push('\'');
        }
        None => {
            let _ = write!(sql, "'{}'", value.format("%Y-%m-%d %H:%M:%S%.3f"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_are_written_as_chrono_writes_them() {
        for (y, mo, d, h, mi, se, ms) in [
            (2026, 11, 27, 8, 5, 9, 7),
            (1, 1, 1, 0, 0, 0, 0),
            (9999, 12, 31, 23, 59, 59, 999),
            (-5, 3, 4, 5, 6, 7, 120),
            (12345, 1, 2, 3, 4, 5, 60),
        ] {
            let t = chrono::NaiveDate::from_ymd_opt(y, mo, d)
                .and_then(|d| d.and_hms_milli_opt(h, mi, se, ms))
                .unwrap();
            let mut sql = String::new();
            push_datetime(&mut sql, &t);
            assert_eq!(sql, format!("'{}'", t.format("%Y-%m-%d %H:%M:%S%.3f")));
        }
        // A leap second (nanoseconds past 10^9).
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_milli_opt(23, 59, 59, 1_500))
            .unwrap();
        let mut sql = String::new();
        push_datetime(&mut sql, &leap);
        assert_eq!(sql, format!("'{}'", leap.format("%Y-%m-%d %H:%M:%S%.3f")));
    }

    #[test]
    fn text_is_quoted_only_when_safe() {
        let mut sql = String::new();
        push_text(&mut sql, "ORD-1_a.b");
        assert_eq!(sql, "'ORD-1_a.b'");
        let mut sql = String::new();
        push_text(&mut sql, "it's\\");
        assert_eq!(sql, "CONVERT(X'697427735C' USING utf8mb4)");
        let mut sql = String::new();
        push_opt_text(&mut sql, None);
        push_int(&mut sql, -5);
        assert_eq!(sql, "NULL-5");
    }
}
