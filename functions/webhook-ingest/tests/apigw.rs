//! The webhook router as the Lambda runs it, fed with API Gateway HTTP API (v2) event JSON.

use std::sync::Arc;

use async_trait::async_trait;
use axum::body::to_bytes;
use loyalty_core::api::auth::Verifier;
use loyalty_core::api::{webhook_router, AppState};
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

/// An API Gateway HTTP API (payload 2.0) event for a Shopify delivery.
fn event(body: &str, signature: &str) -> String {
    json!({
        "version": "2.0",
        "routeKey": "POST /webhooks/{platform}/{program}",
        "rawPath": "/webhooks/shopify/kr-shop",
        "rawQueryString": "",
        "headers": {
            "content-type": "application/json",
            "x-shopify-topic": "customers/create",
            "x-shopify-hmac-sha256": signature,
            "x-shopify-webhook-id": "b54557e4-8a5f-4f7d-a1c0-000000000001",
            "host": "abc123.execute-api.ap-northeast-2.amazonaws.com"
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.ap-northeast-2.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {"method": "POST", "path": "/webhooks/shopify/kr-shop", "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.7", "userAgent": "Shopify-Captain-Hook"},
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "routeKey": "POST /webhooks/{platform}/{program}",
            "stage": "$default",
            "time": "22/Nov/2026:12:00:00 +0000",
            "timeEpoch": 1795003200000_i64
        },
        "pathParameters": {"platform": "shopify", "program": "kr-shop"},
        "body": body,
        "isBase64Encoded": false
    })
    .to_string()
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
    (webhook_router(state), queue)
}

async fn call(router: &axum::Router, raw_event: &str) -> (u16, Value) {
    let request = lambda_http::request::from_str(raw_event).expect("an API Gateway v2 event");
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_signed_delivery_through_api_gateway_is_queued_once() {
    // GIVEN the webhook router with kr-shop's Shopify secret
    let (router, queue) = setup().await;
    let body = r#"{"id": 7001234, "email": "Minji@Example.com", "created_at": "2026-11-22T11:59:00+09:00"}"#;
    // WHEN customers/create arrives through API Gateway, twice
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
