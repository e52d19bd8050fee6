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

/// Saves kr-shop's program file, as an admin does before anything else.
async fn save_kr_shop(h: &Harness) {
    call(
        h,
        "PUT",
        "/v1/programs/kr-shop",
        &admin(None),
        "application/toml",
        KR,
    )
    .await;
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
async fn a_member_token_whose_subject_no_member_could_have_is_not_valid() {
    // GIVEN kr-shop, and signed member tokens whose subjects are not member ids
    let h = harness();
    save_kr_shop(&h).await;
    for subject in ["a#b", " m-1", ".."] {
        // WHEN one reads /me
        let (status, problem) = call(
            &h,
            "GET",
            "/v1/programs/kr-shop/me",
            &member(subject),
            "",
            "",
        )
        .await;
        // THEN it is refused as a token that is not valid (before: 400, as if the request
        // were malformed)
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{subject:?}: {problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("subject is not a member id"),
            "{problem}"
        );
    }
    // AND a member id is read as before
    let (status, _) = call(&h, "GET", "/v1/programs/kr-shop/me", &member("m-1"), "", "").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn admin_tokens_limited_to_a_program_stay_there() {
    // GIVEN kr-shop and a token limited to us-shop
    let h = harness();
    save_kr_shop(&h).await;
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
    let (status, problem) = call(
        &h,
        "GET",
        "/v1/programs/kr-shop/members/m-1",
        &admin(Some("kr-shop")),
        "",
        "",
    )
    .await;
    assert_eq!(
        (status, type_of(&problem)),
        (StatusCode::NOT_FOUND, "unknown-member")
    );
    // AND so is its ledger (before: an empty page, as if the member existed), while a member
    // with no account yet reads its own as empty
    let (status, problem) = call(
        &h,
        "GET",
        "/v1/programs/kr-shop/members/m-1/ledger",
        &admin(Some("kr-shop")),
        "",
        "",
    )
    .await;
    assert_eq!(
        (status, type_of(&problem)),
        (StatusCode::NOT_FOUND, "unknown-member")
    );
    let (status, own) = call(
        &h,
        "GET",
        "/v1/programs/kr-shop/me/ledger",
        &member("m-1"),
        "",
        "",
    )
    .await;
    assert_eq!((status, &own["entries"]), (StatusCode::OK, &json!([])));
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
    let mut cursors = Vec::new();
    let mut uri = "/v1/programs/kr-shop/me/ledger?limit=2".to_string();
    loop {
        let (status, page) = call(&h, "GET", &uri, &member("m-1"), "", "").await;
        assert_eq!(status, StatusCode::OK);
        cursors.extend(page["next_cursor"].as_str().map(str::to_string));
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
    // AND a cursor that was never issued, one changed by hand, one of another member's pages
    // (before: an empty last page, or that member's entries), or a silly limit, is a 400
    let issued = &cursors[0];
    let (position, check) = issued.rsplit_once('.').unwrap();
    let changed = format!("{}.{check}", position.parse::<u64>().unwrap() + 1);
    for (cursor, who) in [
        ("abc".to_string(), "m-1"),
        ("0".to_string(), "m-1"),
        (changed, "m-1"),
        (issued.clone(), "m-2"),
    ] {
        let uri = format!("/v1/programs/kr-shop/me/ledger?cursor={cursor}");
        let (status, problem) = call(&h, "GET", &uri, &member(who), "", "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{cursor} {who}: {problem}");
        assert_eq!(problem["type"], "/problems/invalid-cursor");
    }
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
    // AND support staff find m-1, while a name no event carried is unknown, not an empty account
    let (status, view) = call(
        &h,
        "GET",
        "/v1/programs/kr-shop/members/m-1",
        &token,
        "",
        "",
    )
    .await;
    assert_eq!(
        (status, view["balance"].clone()),
        (StatusCode::OK, json!(2_500))
    );
    let (status, problem) = call(
        &h,
        "GET",
        "/v1/programs/kr-shop/members/m-l",
        &token,
        "",
        "",
    )
    .await;
    assert_eq!(
        (status, type_of(&problem)),
        (StatusCode::NOT_FOUND, "unknown-member")
    );
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

/// A request with extra headers; the answer's status, ETag and body.
async fn call_with(
    h: &Harness,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, Option<String>, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {}", admin(None)))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Body::from(body.to_string())).unwrap();
    let response = h.app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let etag = response
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (
        status,
        etag,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn type_of(problem: &Value) -> &str {
    problem["type"]
        .as_str()
        .unwrap_or("")
        .rsplit('/')
        .next()
        .unwrap()
}

#[tokio::test]
async fn an_editor_never_overwrites_a_program_saved_after_it_read() {
    // GIVEN kr-shop saved, and two operators who both read it (the same ETag)
    let h = harness();
    save_kr_shop(&h).await;
    let (_, read, current) = call_with(&h, "GET", "/v1/programs/kr-shop", &[], "").await;
    assert_eq!(read.as_deref(), Some("\"1\""));
    let file = current["file"].to_string();
    // WHEN the first saves with If-Match, then the second with the same If-Match
    let (first, saved_tag, _) = call_with(
        &h,
        "PUT",
        "/v1/programs/kr-shop",
        &[("if-match", read.as_deref().unwrap())],
        &file,
    )
    .await;
    let (second, _, problem) = call_with(
        &h,
        "PUT",
        "/v1/programs/kr-shop",
        &[("if-match", read.as_deref().unwrap())],
        &file,
    )
    .await;
    // THEN the first is saved as version 2 and answers its new ETag
    assert_eq!(
        (first, saved_tag.as_deref()),
        (StatusCode::OK, Some("\"2\""))
    );
    // AND the second is refused with 412, as a problem, and nothing more is saved
    assert_eq!(second, StatusCode::PRECONDITION_FAILED);
    assert_eq!(type_of(&problem), "version-changed");
    let (_, tag, _) = call_with(&h, "GET", "/v1/programs/kr-shop", &[], "").await;
    assert_eq!(tag.as_deref(), Some("\"2\""));
    // AND tags that never match a write (weak, never given, a list without the saved one)
    // are 412 and save nothing, as RFC 9110 has it
    for value in ["W/\"2\"", "\"draft-7\"", "\"1\", W/\"2\", \"3\""] {
        let (status, _, problem) = call_with(
            &h,
            "PUT",
            "/v1/programs/kr-shop",
            &[("if-match", value)],
            &file,
        )
        .await;
        assert_eq!(
            (status, type_of(&problem)),
            (StatusCode::PRECONDITION_FAILED, "version-changed"),
            "If-Match: {value}"
        );
    }
    let (_, tag, _) = call_with(&h, "GET", "/v1/programs/kr-shop", &[], "").await;
    assert_eq!(tag.as_deref(), Some("\"2\""));
    // AND a tag that only reads as the saved version ("02") does not match it
    let (padded, _, _) = call_with(
        &h,
        "PUT",
        "/v1/programs/kr-shop",
        &[("if-match", "\"02\"")],
        &file,
    )
    .await;
    assert_eq!(padded, StatusCode::PRECONDITION_FAILED);
    // AND a list that names the saved version saves over it, also over two header lines
    let (listed, tag, _) = call_with(
        &h,
        "PUT",
        "/v1/programs/kr-shop",
        &[("if-match", "\"1\", \"2\"")],
        &file,
    )
    .await;
    assert_eq!((listed, tag.as_deref()), (StatusCode::OK, Some("\"3\"")));
    let (two_lines, tag, _) = call_with(
        &h,
        "PUT",
        "/v1/programs/kr-shop",
        &[("if-match", "\"1\""), ("if-match", "\"3\"")],
        &file,
    )
    .await;
    assert_eq!((two_lines, tag.as_deref()), (StatusCode::OK, Some("\"4\"")));
    // AND a precondition that is not a list of entity tags is refused, never ignored
    for (name, value) in [
        ("if-match", "2"),
        ("if-match", "\"2\" \"3\""),
        ("if-none-match", "\"2\""),
    ] {
        let (status, _, problem) =
            call_with(&h, "PUT", "/v1/programs/kr-shop", &[(name, value)], &file).await;
        assert_eq!(
            (status, type_of(&problem)),
            (StatusCode::BAD_REQUEST, "malformed-precondition"),
            "{name}: {value}"
        );
    }
}

#[tokio::test]
async fn campaigns_are_started_on_the_version_read_and_created_only_once() {
    // GIVEN kr-shop and a draft campaign, read by an operator
    let h = harness();
    save_kr_shop(&h).await;
    let draft = json!({
        "name": "Double points", "kind": "on_exposure", "status": "draft",
        "start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z",
        "hash_seed": "double-2026", "goal": "purchase",
        "variants": [
            {"key": "control", "weight": 0.5, "effect": {"type": "none"}},
            {"key": "x2", "weight": 0.5, "effect": {"type": "multiplier", "basis_points": 20000}}
        ]
    });
    let uri = "/v1/programs/kr-shop/campaigns/double";
    let create = [("if-none-match", "*")];
    let (created, _, _) = call_with(&h, "PUT", uri, &create, &draft.to_string()).await;
    assert_eq!(created, StatusCode::CREATED);
    let (_, read, _) = call_with(&h, "GET", uri, &[], "").await;
    // WHEN another operator changes its weights, then the first starts the version it read
    let mut reweighted = draft.clone();
    reweighted["variants"][0]["weight"] = json!(0.2);
    reweighted["variants"][1]["weight"] = json!(0.8);
    let (changed, _, _) = call_with(&h, "PUT", uri, &[], &reweighted.to_string()).await;
    assert_eq!(changed, StatusCode::OK);
    let mut started = draft.clone();
    started["status"] = json!("running");
    let (status, _, problem) = call_with(
        &h,
        "PUT",
        uri,
        &[("if-match", read.as_deref().unwrap())],
        &started.to_string(),
    )
    .await;
    // THEN the start is refused (412) and the campaign keeps the other's weights, not running
    assert_eq!(
        (status, type_of(&problem)),
        (StatusCode::PRECONDITION_FAILED, "version-changed")
    );
    let (_, tag, now) = call_with(&h, "GET", uri, &[], "").await;
    assert_eq!(tag.as_deref(), Some("\"2\""));
    assert_eq!(
        (
            now["status"].as_str(),
            now["variants"][1]["weight"].as_f64()
        ),
        (Some("draft"), Some(0.8))
    );
    // AND creating it again "only if new" is refused, while If-Match: * saves over it
    let (again, _, problem) = call_with(&h, "PUT", uri, &create, &draft.to_string()).await;
    assert_eq!(
        (again, type_of(&problem)),
        (StatusCode::PRECONDITION_FAILED, "version-changed")
    );
    let (over, tag, _) = call_with(&h, "PUT", uri, &[("if-match", "*")], &draft.to_string()).await;
    assert_eq!((over, tag.as_deref()), (StatusCode::OK, Some("\"3\"")));
    // AND If-Match: * never creates one
    let (absent, _, _) = call_with(
        &h,
        "PUT",
        "/v1/programs/kr-shop/campaigns/other",
        &[("if-match", "*")],
        &draft.to_string(),
    )
    .await;
    assert_eq!(absent, StatusCode::PRECONDITION_FAILED);
}
