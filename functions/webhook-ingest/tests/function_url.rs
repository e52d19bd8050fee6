//! The webhook router as the Lambda runs it, fed with the event JSON of its function URL (the
//! payload format 2.0 of API Gateway's HTTP API, with `$default` for a route and no path
//! parameters: the router reads them from the path).

use std::sync::Arc;

use async_trait::async_trait;
use axum::body::to_bytes;
use base64::Engine;
use loyalty_core::api::auth::Verifier;
use loyalty_core::api::{edge, webhook_router, AppState};
use loyalty_core::ports::{QueueName, StoreError, SystemClock};
use loyalty_core::queue::local::LocalQueue;
use loyalty_core::services::programs::ProgramFormat;
use loyalty_core::services::Services;
use loyalty_core::store::sqlite::SqliteStore;
use loyalty_core::webhooks::{sign_base64, Platform, Secrets};
use serde_json::{json, Value};
use tower::ServiceExt;

/// The secret SSM would hold for kr-shop's Shopify webhooks.
struct OneSecret;

#[async_trait]
impl Secrets for OneSecret {
    async fn secrets(&self, program: &str, platform: Platform) -> Result<Vec<String>, StoreError> {
        Ok(if program == "kr-shop" && platform == Platform::Shopify {
            vec!["shpss".into()]
        } else {
            Vec::new()
        })
    }
}

const HOST: &str = "t6hj2zvq4kx3mrwbfa5np7cdly0ofsge.lambda-url.ap-northeast-2.on.aws";

/// A function URL event for a request to `path`.
fn url_event(method: &str, path: &str, headers: Value, body: Value, encoded: bool) -> String {
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "t6hj2zvq4kx3mrwbfa5np7cdly0ofsge",
            "domainName": HOST,
            "domainPrefix": "t6hj2zvq4kx3mrwbfa5np7cdly0ofsge",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.7", "userAgent": "Shopify-Captain-Hook"},
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "routeKey": "$default",
            "stage": "$default",
            "time": "22/Nov/2026:12:00:00 +0000",
            "timeEpoch": 1795003200000_i64
        },
        "body": body,
        "isBase64Encoded": encoded
    })
    .to_string()
}

fn shopify_headers(signature: &str) -> Value {
    json!({
        "content-type": "application/json",
        "x-shopify-topic": "customers/create",
        "x-shopify-hmac-sha256": signature,
        "x-shopify-webhook-id": "b54557e4-8a5f-4f7d-a1c0-000000000001",
        "host": HOST
    })
}

/// A Shopify delivery to the function URL.
fn event(body: &str, signature: &str) -> String {
    url_event(
        "POST",
        "/webhooks/shopify/kr-shop",
        shopify_headers(signature),
        json!(body),
        false,
    )
}

async fn setup() -> (axum::Router, LocalQueue) {
    let store = SqliteStore::memory().unwrap();
    let queue = LocalQueue::new(store.clone(), 5);
    let services = Services::new(
        Arc::new(store),
        Arc::new(queue.clone()),
        Arc::new(SystemClock),
    );
    services
        .put_program(
            "kr-shop",
            include_str!("../../../examples/kr-shop.toml"),
            ProgramFormat::Toml,
        )
        .await
        .unwrap();
    let state = AppState {
        services: Arc::new(services),
        verifier: Verifier::Gateway,
        secrets: Arc::new(OneSecret),
    };
    // As main.rs serves it.
    (edge(webhook_router(state)), queue)
}

async fn call(router: &axum::Router, raw_event: &str) -> (u16, Value) {
    let request = lambda_http::request::from_str(raw_event).expect("a function URL event");
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_signed_delivery_through_the_function_url_is_queued_once() {
    // GIVEN the webhook router with kr-shop's Shopify secret
    let (router, queue) = setup().await;
    let body = r#"{"id": 7001234, "email": "Minji@Example.com", "created_at": "2026-11-22T11:59:00+09:00"}"#;
    // WHEN customers/create arrives through the function URL, twice
    let signed = event(body, &sign_base64("shpss", body.as_bytes()));
    let (status, answer) = call(&router, &signed).await;
    call(&router, &signed).await;
    // THEN it is accepted as one signup event for shopify:7001234, queued once
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["events"], json!(["shopify-customer-7001234-signup"]));
    assert_eq!(queue.depth(QueueName::Earn).await.unwrap(), 1);
    // AND a wrong signature is 401 with nothing queued
    let (status, problem) = call(
        &router,
        &event(body, &sign_base64("other", body.as_bytes())),
    )
    .await;
    assert_eq!(status, 401);
    assert!(problem["type"]
        .as_str()
        .unwrap()
        .ends_with("invalid-signature"));
    assert_eq!(queue.depth(QueueName::Earn).await.unwrap(), 1);
}

#[tokio::test]
async fn a_body_the_url_hands_over_in_base64_is_checked_as_sent() {
    // GIVEN the webhook router, and a delivery whose body the function URL passed base64-encoded
    let (router, queue) = setup().await;
    let body = r#"{"id": 7001235, "email": "jiwoo@example.com", "created_at": "2026-11-22T11:59:00+09:00"}"#;
    let signature = sign_base64("shpss", body.as_bytes());
    let encoded = base64::engine::general_purpose::STANDARD.encode(body);
    let raw = url_event(
        "POST",
        "/webhooks/shopify/kr-shop",
        shopify_headers(&signature),
        json!(encoded),
        true,
    );
    // WHEN it is handled
    let (status, answer) = call(&router, &raw).await;
    // THEN the signature is checked against the decoded bytes, and the event is queued
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["events"], json!(["shopify-customer-7001235-signup"]));
    assert_eq!(queue.depth(QueueName::Earn).await.unwrap(), 1);
}

#[tokio::test]
async fn the_url_serves_the_webhooks_and_nothing_else() {
    // GIVEN the webhook router, which the public function URL hands every method and path
    let (router, queue) = setup().await;
    let admin = json!({"authorization": "Bearer anything", "content-type": "application/json", "host": HOST});
    // WHEN it is asked for another method, an admin route, or a path of no route
    let wrong_method = url_event(
        "GET",
        "/webhooks/shopify/kr-shop",
        json!({"host": HOST}),
        Value::Null,
        false,
    );
    let events = url_event(
        "POST",
        "/v1/programs/kr-shop/events",
        admin,
        json!("{}"),
        false,
    );
    let elsewhere = url_event("GET", "/", json!({"host": HOST}), Value::Null, false);
    // THEN each is a problem (405, 404, 404) and nothing is queued
    for (raw, expected) in [(wrong_method, 405), (events, 404), (elsewhere, 404)] {
        let request = lambda_http::request::from_str(&raw).expect("a function URL event");
        let response = router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status().as_u16(), expected);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    assert_eq!(queue.depth(QueueName::Earn).await.unwrap(), 0);
}
