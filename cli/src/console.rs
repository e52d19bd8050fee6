//! The operator console (`console/`), served by `loyalty serve` at `/console/`: static files
//! built into the binary, so the console needs nothing beside it. It speaks to the same public
//! admin API as any other client; in AWS the same files are served by CloudFront
//! (`scripts/deploy-console`).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

const FILES: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../console/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/app.js"),
    ),
    (
        "i18n.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/i18n.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../console/app.css"),
    ),
    // Locally an operator signs in by pasting a token (`loyalty token --admin`).
    ("config.json", "application/json", r#"{"auth":"token"}"#),
];

pub fn router() -> Router {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", get(|| async { file("index.html") }))
        .route(
            "/console/{name}",
            get(
                |axum::extract::Path(name): axum::extract::Path<String>| async move { file(&name) },
            ),
        )
}

fn file(name: &str) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                // A new binary brings new files: never keep an old app.js beside a new page.
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                // As CloudFront sends them: no address of the console leaves in a Referer, and
                // it is never framed (also for browsers without frame-ancestors).
                (header::REFERRER_POLICY, "no-referrer"),
                (header::X_FRAME_OPTIONS, "DENY"),
                // Fetches go to the API here and, signed in with Cognito, to its token
                // endpoint; CloudFront sends the same policy (the template check compares).
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self' https://*.amazoncognito.com; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
                ),
            ],
            *body,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/problem+json")],
            r#"{"type":"/problems/not-found","title":"Not Found","status":404,"detail":"no such console file"}"#,
        )
            .into_response(),
    }
}
