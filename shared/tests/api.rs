//! The HTTP routes in-process: the router with the SQLite store, requests as a client sends them.
#![cfg(feature = "sqlite")]

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use axum::Router;
use chrono::{Duration, SecondsFormat, TimeZone, Utc};
use loyalty_core::api::auth::{claims, sign, Verifier, ADMIN_SCOPE};
use loyalty_core::api::{router, AppState};
use loyalty_core::ports::FixedClock;
use loyalty_core::queue::local::LocalQueue;
use loyalty_core::services::Services;
use loyalty_core::store::sqlite::SqliteStore;
use serde_json::{json, Value};
use tower::ServiceExt;

const SECRET: &[u8] = b"api-test-secret";
const KR: &str = include_str!("../../examples/kr-shop.toml");

struct Harness {
    app: Router,
    services: Arc<Services>,
    queue: LocalQueue,
}

fn harness() -> Harness {
    let store = SqliteStore::memory().unwrap();
    let queue = LocalQueue::new(store.clone(), 3);
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
    let services = Arc::new(Services::new(
        Arc::new(store),
        Arc::new(queue.clone()),
        FixedClock::at(now),
    ));
    let app = router(AppState {
        services: Arc::clone(&services),
        verifier: Verifier::hs256(SECRET),
        secrets: Arc::new(loyalty_core::webhooks::EnvSecrets),
    });
    Harness {
        app,
        services,
        queue,
    }
}

fn admin(program: Option<&str>) -> String {
    sign(SECRET, &claims("ops", &[ADMIN_SCOPE], program, 1)).unwrap()
}

fn member(id: &str) -> String {
    sign(SECRET, &claims(id, &[], None, 1)).unwrap()
}

async fn call(
    h: &Harness,
    method: &str,
    uri: &str,
    token: &str,
    content_type: &str,
    body: &str,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", content_type)
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = h.app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Processes everything queued for earn, as the queue worker would.
async fn drain(h: &Harness) {
    loop {
        let batch = h
            .queue
            .receive(
                loyalty_core::ports::QueueName::Earn,
                16,
                std::time::Duration::from_secs(30),
            )
            .await
            .unwrap();
        if batch.is_empty() {
            return;
        }
        for delivery in batch {
            h.services.process_earn(&delivery.body).await.unwrap();
            h.queue.ack(delivery.seq).await.unwrap();
        }
    }
}

#[tokio::test]
async fn programs_are_created_then_replaced_and_validated() {
    // GIVEN an empty store
    let h = harness();
    let token = admin(None);
    // WHEN kr-shop is PUT twice as TOML
    let (created, body) = call(
        &h,
        "PUT",
        "/v1/programs/kr-shop",
        &token,
        "application/toml",
        KR,
    )
    .await;
    let (replaced, again) = call(
        &h,
        "PUT",
        "/v1/programs/kr-shop",
        &token,
        "application/toml",
        KR,
    )
    .await;
    // THEN the first creates version 1 (201) and the second replaces it with version 2 (200)
    assert_eq!(
        (created, body["version"].clone()),
        (StatusCode::CREATED, json!(1))
    );
    assert_eq!(
        (replaced, again["version"].clone()),
        (StatusCode::OK, json!(2))
    );
    // AND JSON is accepted too, and GET returns the current file
    let (_, current) = call(&h, "GET", "/v1/programs/kr-shop", &token, "", "").await;
    let as_json = current["file"].to_string();
    let (status, _) = call(
        &h,
        "PUT",
        "/v1/programs/kr-shop",
        &token,
        "application/json",
        &as_json,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // AND a file for another id, or one with a broken tier, is refused naming the problem
    let (status, problem) = call(
        &h,
        "PUT",
        "/v1/programs/us-shop",
        &token,
        "application/toml",
        KR,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(problem["type"]
        .as_str()
        .unwrap()
        .ends_with("program-id-mismatch"));
    let broken = KR.replace("threshold = \"1000000\"", "threshold = \"1\"");
    let (status, problem) = call(
        &h,
        "PUT",
        "/v1/programs/kr-shop",
        &token,
        "application/toml",
        &broken,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("tiers[2].threshold must be greater than tiers[1].threshold"));
}

#[tokio::test]
async fn admin_tokens_limited_to_a_program_stay_there() {
    // GIVEN kr-shop and a token limited to us-shop
    let h = harness();
    call(
        &h,
        "PUT",
        "/v1/programs/kr-shop",
        &admin(None),
        "application/toml",
        KR,
    )
    .await;
    // WHEN it reads a kr-shop member THEN it is forbidden, while an unlimited token may
    let (status, _) = call(
        &h,
        "GET",
        "/v1/programs/kr-shop/members/m-1",
        &admin(Some("us-shop")),
        "",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, view) = call(
        &h,
        "GET",
        "/v1/programs/kr-shop/members/m-1",
        &admin(Some("kr-shop")),
        "",
        "",
    )
    .await;
    assert_eq!(
        (status, view["balance"].clone()),
        (StatusCode::OK, json!(0))
    );
    // AND an unknown program is 404 after authorisation
    let (status, problem) = call(&h, "GET", "/v1/programs/nope/me", &member("m-1"), "", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(problem["type"]
        .as_str()
        .unwrap()
        .ends_with("unknown-program"));
}

#[tokio::test]
async fn the_ledger_pages_over_http_with_a_cursor() {
    // GIVEN a member with five engagement rewards (reviews, at most 5 a month)
    let h = harness();
    let token = admin(None);
    call(
        &h,
        "PUT",
        "/v1/programs/kr-shop",
        &token,
        "application/toml",
        KR,
    )
    .await;
    let at = (Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap() - Duration::hours(1))
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    for i in 0..5 {
        let event = json!({"type": "engagement.recorded", "version": 1, "id": format!("rev-{i}"), "program": "kr-shop",
            "member": "m-1", "occurred_at": at, "data": {"action": "review", "ref": format!("review-{i}")}});
        let (status, _) = call(
            &h,
            "POST",
            "/v1/programs/kr-shop/events",
            &token,
            "application/json",
            &event.to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    drain(&h).await;
    // WHEN the member pages the ledger two at a time
    let mut ids = Vec::new();
    let mut uri = "/v1/programs/kr-shop/me/ledger?limit=2".to_string();
    loop {
        let (status, page) = call(&h, "GET", &uri, &member("m-1"), "", "").await;
        assert_eq!(status, StatusCode::OK);
        ids.extend(
            page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("/v1/programs/kr-shop/me/ledger?limit=2&cursor={c}"),
            None => break,
        }
    }
    // THEN every entry appears once, newest first, and the balance is 2,500
    assert_eq!(
        ids,
        vec!["rev-4#0", "rev-3#0", "rev-2#0", "rev-1#0", "rev-0#0"]
    );
    let (_, view) = call(&h, "GET", "/v1/programs/kr-shop/me", &member("m-1"), "", "").await;
    assert_eq!(view["balance"], 2_500);
    // AND a cursor that was never issued, or a silly limit, is a 400
    let (status, _) = call(
        &h,
        "GET",
        "/v1/programs/kr-shop/me/ledger?cursor=abc",
        &member("m-1"),
        "",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(
        &h,
        "GET",
        "/v1/programs/kr-shop/me/ledger?limit=1000",
        &member("m-1"),
        "",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_member_token_sees_only_its_own_member() {
    // GIVEN two members with different balances
    let h = harness();
    let token = admin(None);
    call(
        &h,
        "PUT",
        "/v1/programs/kr-shop",
        &token,
        "application/toml",
        KR,
    )
    .await;
    let at = Utc
        .with_ymd_and_hms(2026, 11, 22, 2, 0, 0)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    let signup = json!({"type": "engagement.recorded", "version": 1, "id": "s-1", "program": "kr-shop",
        "member": "m-1", "occurred_at": at, "data": {"action": "signup", "ref": "signup"}});
    call(
        &h,
        "POST",
        "/v1/programs/kr-shop/events",
        &token,
        "application/json",
        &signup.to_string(),
    )
    .await;
    drain(&h).await;
    // WHEN m-2 asks for "me" THEN it sees its own empty account, not m-1's
    let (_, view) = call(&h, "GET", "/v1/programs/kr-shop/me", &member("m-2"), "", "").await;
    assert_eq!(
        (view["member"].clone(), view["balance"].clone()),
        (json!("m-2"), json!(0))
    );
    let (_, view) = call(&h, "GET", "/v1/programs/kr-shop/me", &member("m-1"), "", "").await;
    assert_eq!(view["balance"], 1_000);
    // AND member tokens cannot use admin routes that name another member
    let (status, _) = call(
        &h,
        "GET",
        "/v1/programs/kr-shop/members/m-1",
        &member("m-2"),
        "",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
