//! The campaign-assign handler fed with the events Lambda receives: API Gateway HTTP API (v2)
//! requests carrying the JWT authorizer's claims, and the EventBridge schedule's input.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use loyalty_core::api::auth::Verifier;
use loyalty_core::api::AppState;
use loyalty_core::domain::{Account, Program};
use loyalty_core::envelope::Envelope;
use loyalty_core::ports::{Commit, FixedClock, MemberStore, Queue, QueueError, QueueName};
use loyalty_core::services::programs::ProgramFormat;
use loyalty_core::services::Services;
use loyalty_core::store::sqlite::SqliteStore;
use loyalty_core::webhooks::EnvSecrets;
use serde_json::{json, Value};

const KR_SHOP: &str = include_str!("../../../examples/kr-shop.toml");

#[derive(Default)]
struct Recorder(Mutex<Vec<(QueueName, Envelope)>>);

#[async_trait]
impl Queue for Recorder {
    async fn send(&self, queue: QueueName, message: &Envelope) -> Result<(), QueueError> {
        self.0.lock().unwrap().push((queue, message.clone()));
        Ok(())
    }
}

/// A GET through API Gateway with the claims the JWT authorizer verified.
fn request(path: &str, route: &str, claims: Value) -> Value {
    json!({
        "version": "2.0", "routeKey": route, "rawPath": path, "rawQueryString": "",
        "headers": {"authorization": "Bearer verified-by-the-authorizer",
                    "host": "abc123.execute-api.ap-northeast-2.amazonaws.com"},
        "requestContext": {
            "accountId": "123456789012", "apiId": "abc123",
            "domainName": "abc123.execute-api.ap-northeast-2.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {"method": "GET", "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.7", "userAgent": "loyalty-app/1.0"},
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef", "routeKey": route,
            "stage": "$default", "time": "22/Nov/2026:01:00:00 +0000",
            "timeEpoch": 1795309200000_i64,
            "authorizer": {"jwt": {"claims": claims, "scopes": null}}
        },
        "isBase64Encoded": false
    })
}

struct Function {
    services: Services,
    app: axum::Router,
    queue: Arc<Recorder>,
}

async fn function() -> Function {
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap();
    let store = SqliteStore::memory().unwrap();
    let queue = Arc::new(Recorder::default());
    let clock = FixedClock::at(now);
    let make = || Services::new(Arc::new(store.clone()), queue.clone(), clock.clone());
    let services = make();
    services
        .put_program("kr-shop", KR_SHOP, ProgramFormat::Toml)
        .await
        .unwrap();
    let campaign = json!({
        "name": "Birthday gift", "kind": "broadcast", "status": "running",
        "start": "2026-11-01T00:00:00+09:00", "end": "2026-12-01T00:00:00+09:00",
        "hash_seed": "birthday-2026", "goal": "purchase",
        "audience": {"birthday_in_window": true},
        "variants": [
            {"key": "control", "weight": 0.5, "effect": {"type": "none"}},
            {"key": "gift", "weight": 0.5, "effect": {"type": "grant", "points": 1000}}
        ]
    });
    services
        .put_campaign("kr-shop", "birthday-gift", campaign.to_string().as_bytes())
        .await
        .unwrap();
    // A member whose birthday is today, and one whose is not.
    let program = Program::from_toml(KR_SHOP).unwrap();
    for (member, birthday) in [("b-1", "11-22"), ("b-2", "03-04")] {
        let mut account = Account::open(&program, member, now);
        account.profile.birthday = Some(birthday.into());
        let mut commit = Commit::new(
            &program,
            member,
            None,
            loyalty_core::domain::Change::unchanged(account),
            now,
        );
        commit.due = commit.account.due_dates(&program);
        store.commit(commit).await.unwrap();
    }
    let app = campaign_assign::app(AppState {
        services: Arc::new(make()),
        verifier: Verifier::Gateway,
        secrets: Arc::new(EnvSecrets),
    });
    Function {
        services,
        app,
        queue,
    }
}

#[tokio::test]
async fn the_schedule_runs_campaign_tick_and_nothing_else() {
    // GIVEN the function with a birthday campaign running
    let f = function().await;
    // WHEN EventBridge Scheduler invokes it with the tick's input
    let answer = campaign_assign::handle(&f.services, &f.app, json!({"job": "campaign-tick"}))
        .await
        .unwrap();
    // THEN the tick ran for kr-shop and queued the birthday member's events, and only theirs
    assert_eq!(answer[0]["job"], "campaign-tick", "{answer}");
    let sent = f.queue.0.lock().unwrap().clone();
    assert!(!sent.is_empty());
    assert!(sent
        .iter()
        .all(|(q, m)| *q == QueueName::Earn && m.member == "b-1"));
    assert!(sent.iter().any(|(_, m)| m.id == "birthday-b-1-2026"));
    // WHEN another job, or a malformed input, arrives THEN it is refused
    for wrong in [
        json!({"job": "expire-points"}),
        json!({"job": "campaign-tick", "x": 1}),
    ] {
        assert!(campaign_assign::handle(&f.services, &f.app, wrong)
            .await
            .is_err());
    }
}

#[tokio::test]
async fn the_http_routes_answer_as_api_gateway_expects() {
    // GIVEN the function after a tick has assigned today's birthday member
    let f = function().await;
    campaign_assign::handle(&f.services, &f.app, json!({"job": "campaign-tick"}))
        .await
        .unwrap();
    // WHEN the member asks for their campaigns through API Gateway
    let mine = "/v1/programs/kr-shop/me/campaigns";
    let answer = campaign_assign::handle(
        &f.services,
        &f.app,
        request(
            mine,
            "GET /v1/programs/{program}/me/campaigns",
            json!({"sub": "b-1"}),
        ),
    )
    .await
    .unwrap();
    // THEN it is a 200 response whose body lists the birthday campaign with its variant
    assert_eq!(answer["statusCode"], 200, "{answer}");
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["campaigns"][0]["campaign"], "birthday-gift", "{body}");
    assert!(body["campaigns"][0]["variant"].is_string());
    // WHEN a member asks for the report THEN 403; an admin gets it, counting the one member
    let report = "/v1/programs/kr-shop/campaigns/birthday-gift/report";
    let route = "GET /v1/programs/{program}/campaigns/{campaign}/report";
    let denied = campaign_assign::handle(
        &f.services,
        &f.app,
        request(report, route, json!({"sub": "b-1"})),
    )
    .await
    .unwrap();
    assert_eq!(denied["statusCode"], 403);
    let admin = json!({"sub": "ops", "scope": "loyalty/admin"});
    let answer = campaign_assign::handle(&f.services, &f.app, request(report, route, admin))
        .await
        .unwrap();
    assert_eq!(answer["statusCode"], 200, "{answer}");
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    let members: i64 = body["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["members"].as_i64().unwrap())
        .sum();
    assert_eq!(members, 1, "{body}");
    assert_eq!(body["denominator"], "audience");
}
