//! The member-api routes as the Lambda runs them, fed with API Gateway HTTP API (v2) events that
//! carry the JWT authorizer's verified claims.

use std::sync::Arc;

use axum::body::to_bytes;
use loyalty_core::api::auth::Verifier;
use loyalty_core::api::AppState;
use loyalty_core::ports::SystemClock;
use loyalty_core::queue::local::LocalQueue;
use loyalty_core::services::programs::ProgramFormat;
use loyalty_core::services::Services;
use loyalty_core::store::sqlite::SqliteStore;
use loyalty_core::webhooks::EnvSecrets;
use serde_json::{json, Value};
use tower::ServiceExt;

/// A GET through API Gateway; `claims` is what the JWT authorizer verified (None: no authorizer).
fn event(path: &str, route: &str, claims: Option<Value>) -> String {
    let mut context = json!({
        "accountId": "123456789012", "apiId": "abc123",
        "domainName": "abc123.execute-api.ap-northeast-2.amazonaws.com", "domainPrefix": "abc123",
        "http": {"method": "GET", "path": path, "protocol": "HTTP/1.1",
                 "sourceIp": "203.0.113.7", "userAgent": "loyalty-app/1.0"},
        "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef", "routeKey": route,
        "stage": "$default", "time": "22/Nov/2026:12:00:00 +0000", "timeEpoch": 1795003200000_i64
    });
    if let Some(claims) = claims {
        context["authorizer"] = json!({"jwt": {"claims": claims, "scopes": null}});
    }
    json!({
        "version": "2.0", "routeKey": route, "rawPath": path, "rawQueryString": "",
        "headers": {"authorization": "Bearer verified-by-the-authorizer",
                    "host": "abc123.execute-api.ap-northeast-2.amazonaws.com"},
        "requestContext": context, "isBase64Encoded": false
    })
    .to_string()
}

async fn app() -> axum::Router {
    let store = SqliteStore::memory().unwrap();
    let queue = LocalQueue::new(store.clone(), 5);
    let services = Services::new(Arc::new(store), Arc::new(queue), Arc::new(SystemClock));
    services
        .put_program(
            "kr-shop",
            include_str!("../../../examples/kr-shop.toml"),
            ProgramFormat::Toml,
        )
        .await
        .unwrap();
    member_api::app(AppState {
        services: Arc::new(services),
        verifier: Verifier::Gateway,
        secrets: Arc::new(EnvSecrets),
    })
}

async fn call(app: &axum::Router, raw_event: &str) -> (u16, Value) {
    let request = lambda_http::request::from_str(raw_event).expect("an API Gateway v2 event");
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_member_comes_from_the_verified_claims_only() {
    // GIVEN the member-api routes behind the JWT authorizer
    let app = app().await;
    let me = "/v1/programs/kr-shop/me";
    // WHEN member m-1 asks for their view THEN it is m-1's
    let (status, view) = call(
        &app,
        &event(
            me,
            "GET /v1/programs/{program}/me",
            Some(json!({"sub": "m-1"})),
        ),
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["member"], "m-1");
    // WHEN the request carries no verified claims THEN 401
    let (status, _) = call(&app, &event(me, "GET /v1/programs/{program}/me", None)).await;
    assert_eq!(status, 401);
    // WHEN m-1 asks for another member through the admin route THEN 403
    let other = "/v1/programs/kr-shop/members/m-2";
    let route = "GET /v1/programs/{program}/members/{member}";
    let (status, problem) = call(&app, &event(other, route, Some(json!({"sub": "m-1"})))).await;
    assert_eq!(status, 403, "{problem}");
    // WHEN an admin with the loyalty/admin scope asks THEN it is answered: m-2 has no account
    let admin = json!({"sub": "ops", "scope": "openid loyalty/admin"});
    let (status, view) = call(&app, &event(other, route, Some(admin))).await;
    assert_eq!(
        (status, view["type"].as_str()),
        (404, Some("/problems/unknown-member"))
    );
}
