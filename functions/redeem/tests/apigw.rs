//! The redeem routes as the Lambda runs them, fed with API Gateway HTTP API (v2) events that
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

fn event(path: &str, route: &str, sub: &str, key: &str, body: &str) -> String {
    json!({
        "version": "2.0", "routeKey": route, "rawPath": path, "rawQueryString": "",
        "headers": {"authorization": "Bearer verified", "idempotency-key": key,
                    "content-type": "application/json",
                    "host": "abc123.execute-api.ap-northeast-2.amazonaws.com"},
        "requestContext": {
            "accountId": "123456789012", "apiId": "abc123",
            "domainName": "abc123.execute-api.ap-northeast-2.amazonaws.com", "domainPrefix": "abc123",
            "http": {"method": "POST", "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.7", "userAgent": "loyalty-app/1.0"},
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef", "routeKey": route,
            "stage": "$default", "time": "22/Nov/2026:12:00:00 +0000", "timeEpoch": 1795003200000_i64,
            "authorizer": {"jwt": {"claims": {"sub": sub}, "scopes": null}}
        },
        "body": body, "isBase64Encoded": false
    })
    .to_string()
}

async fn call(app: &axum::Router, raw_event: &str) -> (u16, Value) {
    let request = lambda_http::request::from_str(raw_event).expect("an API Gateway v2 event");
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_redemption_spends_the_points_of_the_member_in_the_token() {
    // GIVEN m-1 with 6,000 points and the redeem routes behind the authorizer
    let store = SqliteStore::memory().unwrap();
    let queue = LocalQueue::new(store.clone(), 5);
    let services = Arc::new(Services::new(
        Arc::new(store),
        Arc::new(queue),
        Arc::new(SystemClock),
    ));
    services
        .put_program(
            "kr-shop",
            include_str!("../../../examples/kr-shop.toml"),
            ProgramFormat::Toml,
        )
        .await
        .unwrap();
    services
        .adjust(
            "kr-shop",
            "m-1",
            "ops",
            None,
            br#"{"points": 6000, "reason": "gift"}"#,
        )
        .await
        .unwrap();
    let app = redeem::app(AppState {
        services: Arc::clone(&services),
        verifier: Verifier::Gateway,
        secrets: Arc::new(EnvSecrets),
    });
    let path = "/v1/programs/kr-shop/me/redemptions";
    let route = "POST /v1/programs/{program}/me/redemptions";
    // WHEN m-1 redeems coupon-5000 through API Gateway
    let (status, issued) = call(
        &app,
        &event(path, route, "m-1", "k-1", r#"{"reward": "coupon-5000"}"#),
    )
    .await;
    // THEN it is issued from m-1's points
    assert_eq!(status, 201, "{issued}");
    assert_eq!(issued["balance"], 1_000);
    // WHEN a body names another member THEN it is refused, and m-2 has spent nothing
    let (status, _) = call(
        &app,
        &event(
            path,
            route,
            "m-1",
            "k-2",
            r#"{"reward": "coupon-5000", "member": "m-2"}"#,
        ),
    )
    .await;
    assert_eq!(status, 400);
    let view = services.member_view("kr-shop", "m-1").await.unwrap();
    assert_eq!(view.balance, 1_000);
}
