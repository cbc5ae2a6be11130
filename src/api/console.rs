//! The operator console at `/console`: one static page, its script and its style sheet,
//! compiled into the binary (no build step, no Node, no network at run time). The page
//! calls the same JSON API as everyone else with the token the operator gives it (kept in
//! sessionStorage); every value it shows is set as text, never as markup.
//!
//! Every asset is served with a strict Content-Security-Policy (only this origin's script,
//! style and API; no inline script or style), `X-Frame-Options: DENY` and `no-store`.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");

/// No inline script or style, nothing from another origin, no framing, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body)
}

async fn page() -> HttpResponse {
    asset("text/html; charset=utf-8", PAGE)
}

async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}

/// The console's three files (not API operations, so not in the OpenAPI document).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/console", web::get().to(page))
        .route("/console/", web::get().to(page))
        .route("/console/app.js", web::get().to(script))
        .route("/console/app.css", web::get().to(style));
}
