//! Parsing of path and query parameters into checked values, with errors that name the
//! parameter.

use std::collections::HashMap;

use actix_web::HttpRequest;

use crate::error::{ApiError, Code};

/// A positive integer id (`skuId`, `warehouseId`).
pub fn positive_id(name: &str, raw: &str) -> Result<i64, ApiError> {
    match raw.trim().parse::<i64>() {
        Ok(n) if n > 0 => Ok(n),
        Ok(_) => Err(ApiError::invalid(format!(
            "{name} must be a positive integer, got {raw}"
        ))),
        Err(_) => Err(ApiError::invalid(format!(
            "{name} must be a positive integer, got {:?}",
            truncate(raw, 40)
        ))),
    }
}

pub fn optional_id(
    query: &HashMap<String, String>,
    name: &str,
    default: i64,
) -> Result<i64, ApiError> {
    match query.get(name) {
        None => Ok(default),
        Some(raw) => positive_id(name, raw),
    }
}

pub fn required_str<'a>(
    query: &'a HashMap<String, String>,
    name: &str,
    max_len: usize,
) -> Result<&'a str, ApiError> {
    let value = query
        .get(name)
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                Code::MissingParameter,
                format!("query parameter {name} is required"),
            )
        })?;
    check_len(name, value, max_len)?;
    Ok(value)
}

pub fn check_len(name: &str, value: &str, max_len: usize) -> Result<(), ApiError> {
    if value.chars().count() > max_len {
        return Err(ApiError::invalid(format!(
            "{name} is longer than {max_len} characters"
        )));
    }
    Ok(())
}

/// An identifier that ends up in Redis keys and DB columns: printable ASCII without
/// spaces or braces (braces are hash tags).
pub fn check_identifier(name: &str, value: &str, max_len: usize) -> Result<(), ApiError> {
    check_len(name, value, max_len)?;
    if value.is_empty()
        || !value
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '{' && c != '}')
    {
        return Err(ApiError::invalid(format!(
            "{name} must be 1-{max_len} printable ASCII characters without spaces or braces"
        )));
    }
    Ok(())
}

/// The request's trace id: the one its span carries (chosen when the request started, from
/// `X-Trace-Id` when well-formed, else new).
pub fn trace_id(req: &HttpRequest) -> String {
    use actix_web::HttpMessage;
    match req.extensions().get::<crate::api::request_span::TraceId>() {
        Some(id) => id.0.clone(),
        None => crate::api::request_span::trace_id_from(req.headers()),
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_positive_integers() {
        assert_eq!(positive_id("skuId", "1001").unwrap(), 1001);
        for bad in ["0", "-1", "abc", "1.5", "", "99999999999999999999"] {
            let err = positive_id("skuId", bad).unwrap_err();
            assert_eq!(err.code, Code::InvalidParameter, "{bad}");
            assert!(err.message.contains("skuId"));
        }
    }

    #[test]
    fn identifiers_reject_braces_and_spaces() {
        assert!(check_identifier("orderNo", "ORD-1_2", 64).is_ok());
        assert!(check_identifier("orderNo", "a{b}", 64).is_err());
        assert!(check_identifier("orderNo", "a b", 64).is_err());
        assert!(check_identifier("orderNo", &"x".repeat(65), 64).is_err());
    }
}
