//! Who may call what: bearer tokens from config with two roles. `service` may reserve,
//! confirm and release (what the order service calls); `admin` may do everything.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest};

use crate::api::AppState;

use crate::config::AuthSettings;
use crate::error::{ApiError, Code};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Service,
    Admin,
}

#[derive(Clone)]
pub struct Authenticator {
    service: Vec<Vec<u8>>,
    admin: Vec<Vec<u8>>,
    protect_reads: bool,
    disabled: bool,
}

/// Equal without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Authenticator {
    pub fn new(settings: &AuthSettings) -> Self {
        Authenticator {
            service: settings
                .service()
                .into_iter()
                .map(String::into_bytes)
                .collect(),
            admin: settings
                .admin()
                .into_iter()
                .map(String::into_bytes)
                .collect(),
            protect_reads: settings.protect_reads,
            disabled: settings.disabled,
        }
    }

    /// The role of a token; every configured token is compared, whatever matches.
    fn role_of(&self, token: &[u8]) -> Option<Role> {
        let mut role = None;
        for t in &self.service {
            if constant_time_eq(t, token) {
                role = role.or(Some(Role::Service));
            }
        }
        for t in &self.admin {
            if constant_time_eq(t, token) {
                role = Some(Role::Admin);
            }
        }
        role
    }

    fn caller(&self, req: &HttpRequest) -> Result<Role, ApiError> {
        let header = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::new(
                    Code::Unauthorized,
                    "an Authorization: Bearer <token> header is required",
                )
            })?;
        let token = header
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    Code::Unauthorized,
                    "the Authorization header must be: Bearer <token>",
                )
            })?;
        self.role_of(token.as_bytes())
            .ok_or_else(|| ApiError::new(Code::Unauthorized, "unknown token"))
    }

    /// 401 without a valid token, 403 when its role may not do this.
    pub fn require(&self, req: &HttpRequest, needed: Role) -> Result<(), ApiError> {
        if self.disabled {
            return Ok(());
        }
        match (self.caller(req)?, needed) {
            (Role::Admin, _) | (Role::Service, Role::Service) => Ok(()),
            (Role::Service, Role::Admin) => Err(ApiError::new(
                Code::Forbidden,
                "this operation needs an admin token",
            )),
        }
    }

    /// Who the caller is: its role, or None without an Authorization header (with
    /// `auth.disabled`, everyone is admin). A header with an unknown token is 401.
    pub fn who(&self, req: &HttpRequest) -> Result<Option<Role>, ApiError> {
        if self.disabled {
            return Ok(Some(Role::Admin));
        }
        if !req
            .headers()
            .contains_key(actix_web::http::header::AUTHORIZATION)
        {
            return Ok(None);
        }
        self.caller(req).map(Some)
    }

    /// Reads are open unless `auth.protect_reads`.
    pub fn require_read(&self, req: &HttpRequest) -> Result<(), ApiError> {
        if self.protect_reads {
            self.require(req, Role::Service)
        } else {
            Ok(())
        }
    }
}

/// Checks before anything else runs (body parsing included), so a refused caller learns
/// nothing about the request's validity.
fn check(req: &ServiceRequest, needed: Option<Role>) -> Result<(), actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        return Err(ApiError::system("application state missing").into());
    };
    match needed {
        Some(role) => state.auth.require(req.request(), role)?,
        None => state.auth.require_read(req.request())?,
    }
    Ok(())
}

pub async fn admin_only(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    check(&req, Some(Role::Admin))?;
    next.call(req).await
}

pub async fn service_only(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    check(&req, Some(Role::Service))?;
    next.call(req).await
}

/// GET for readers, every other method for admins (a resource with both).
pub async fn readers_get_admin_otherwise(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let needed = (req.method() != actix_web::http::Method::GET).then_some(Role::Admin);
    check(&req, needed)?;
    next.call(req).await
}

pub async fn readers(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    check(&req, None)?;
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn auth(protect_reads: bool) -> Authenticator {
        Authenticator::new(&AuthSettings {
            service_tokens: Secret::new("service-token-0123456789"),
            admin_tokens: Secret::new("admin-token-0123456789, admin-token-second-one"),
            protect_reads,
            disabled: false,
        })
    }

    fn request(token: Option<&str>) -> HttpRequest {
        let mut req = actix_web::test::TestRequest::default();
        if let Some(token) = token {
            req = req.insert_header(("Authorization", format!("Bearer {token}")));
        }
        req.to_http_request()
    }

    #[test]
    fn roles_are_enforced() {
        let a = auth(false);
        assert!(a
            .require(&request(Some("admin-token-0123456789")), Role::Admin)
            .is_ok());
        assert!(a
            .require(&request(Some("admin-token-second-one")), Role::Service)
            .is_ok());
        assert!(a
            .require(&request(Some("service-token-0123456789")), Role::Service)
            .is_ok());
        let err = a
            .require(&request(Some("service-token-0123456789")), Role::Admin)
            .unwrap_err();
        assert_eq!(err.code, Code::Forbidden);
        assert_eq!(
            a.require(&request(None), Role::Service).unwrap_err().code,
            Code::Unauthorized
        );
        assert_eq!(
            a.require(&request(Some("nope-nope-nope-nope")), Role::Service)
                .unwrap_err()
                .code,
            Code::Unauthorized
        );
        assert!(a.require_read(&request(None)).is_ok());
        assert!(auth(true).require_read(&request(None)).is_err());
    }

    #[test]
    fn comparison_needs_the_whole_token() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
