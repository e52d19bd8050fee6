//! `infra/openapi.yaml` and the routers agree: every route a router defines is in the document,
//! every operation of the document is served, and nothing else is.
#![cfg(feature = "sqlite")]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::http::Request;
use loyalty_core::api::auth::Verifier;
use loyalty_core::api::{router, AppState};
use loyalty_core::ports::SystemClock;
use loyalty_core::queue::local::LocalQueue;
use loyalty_core::services::Services;
use loyalty_core::store::sqlite::SqliteStore;
use tower::ServiceExt;

/// Routes `loyalty serve` adds for local use only; they are not part of the deployed API.
const LOCAL_ONLY: &[(&str, &str)] = &[("GET", "/health")];

const METHODS: &[&str] = &["get", "put", "post", "patch", "delete"];

/// (METHOD, path) of every operation in the OpenAPI document.
fn documented() -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/openapi.yaml"),
    )
    .expect("infra/openapi.yaml exists");
    let mut operations = BTreeSet::new();
    let mut in_paths = false;
    let mut path = None;
    for line in text.lines() {
        if !line.starts_with(' ') {
            in_paths = line.trim_end() == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /") {
            path = Some(format!("/{}", p.trim_end().trim_end_matches(':')));
        } else if let (Some(p), Some(rest)) = (&path, line.strip_prefix("    ")) {
            let word = rest.trim_end().trim_end_matches(':');
            if !rest.starts_with(' ') && METHODS.contains(&word) {
                operations.insert((word.to_uppercase(), p.clone()));
            }
        }
    }
    operations
}

/// (METHOD, path) of every `.route(...)` in the API module's source.
fn routed() -> BTreeSet<(String, String)> {
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/mod.rs"))
            .expect("src/api/mod.rs exists");
    let mut routes = BTreeSet::new();
    for chunk in source.split(".route(").skip(1) {
        // The route's own call ends where the next builder call starts.
        let call = chunk
            .split(".with_state(")
            .next()
            .and_then(|c| c.split("\n        .").next())
            .unwrap_or(chunk);
        let path = call.split('"').nth(1).expect("a route has a path literal");
        for method in METHODS {
            let called = call.contains(&format!("{method}(")) && {
                let at = call.find(&format!("{method}(")).unwrap_or(0);
                at == 0 || !call[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_')
            };
            if called {
                routes.insert((method.to_uppercase(), path.to_string()));
            }
        }
    }
    routes
        .into_iter()
        .filter(|(m, p)| !LOCAL_ONLY.contains(&(m.as_str(), p.as_str())))
        .collect()
}

#[test]
fn every_route_is_documented_and_every_documented_route_exists() {
    // GIVEN the routes in the code and the operations in the document
    let routed = routed();
    let documented = documented();
    assert!(routed.len() >= 8, "found only {routed:?}");
    // THEN they are the same set
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from infra/openapi.yaml: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "documented but not routed: {unrouted:?}"
    );
}

#[tokio::test]
async fn every_documented_operation_is_served_by_the_router() {
    // GIVEN the router `loyalty serve` mounts
    let store = SqliteStore::memory().unwrap();
    let queue = LocalQueue::new(store.clone(), 3);
    let services = Services::new(Arc::new(store), Arc::new(queue), Arc::new(SystemClock));
    let app = router(AppState {
        services: Arc::new(services),
        verifier: Verifier::hs256(b"openapi"),
        secrets: Arc::new(loyalty_core::webhooks::EnvSecrets),
    });
    for (method, path) in documented() {
        // WHEN each documented operation is called, with placeholders filled in
        let uri = path
            .replace("{program}", "kr-shop")
            .replace("{member}", "m-1")
            .replace("{platform}", "shopify")
            .replace("{id}", "r-1")
            .replace("{code}", "C-1")
            .replace("{campaign}", "weekend");
        let request = Request::builder()
            .method(method.as_str())
            .uri(&uri)
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let body = String::from_utf8_lossy(&body);
        // THEN a route answers (even if only to refuse), never the fallback or 405
        assert_ne!(status, 405, "{method} {uri}");
        assert!(
            !body.contains("/problems/not-found"),
            "{method} {uri} fell through to no route: {body}"
        );
    }
}
