//! What a function's first invocation waits for: the reads that do not depend on each other's
//! answers are sent together. Each test runs on moto (`scripts/test` exports
//! `LOYALTY_TEST_DYNAMODB_ENDPOINT`) with a client that notes when each request leaves and when
//! its answer comes back, so that "sent together" is seen from outside the code.
#![cfg(all(feature = "aws", feature = "local-tokens"))]

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use chrono::{DateTime, TimeZone, Utc};
use loyalty_core::api::auth::{claims, sign, Verifier};
use loyalty_core::api::{router, AppState};
use loyalty_core::ports::FixedClock;
use loyalty_core::ports::{AliasStore as _, ParkingStore as _, ScheduleStore as _};
use loyalty_core::services::earn::Processed;
use loyalty_core::services::jobs::Job;
use loyalty_core::services::Services;
use loyalty_core::store::dynamodb::DynamoStore;
use loyalty_core::webhooks::{shopify, Normalised, Platform, PlatformEvent, Secrets};
use serde_json::{json, Value};
use tower::ServiceExt;

mod common;

use common::timeline::{Phase, Timeline};

const SECRET: &[u8] = b"cold-paths-secret";

/// The requests that read a program and its campaigns together (one query from the
/// campaigns to the current version).
fn program_and_campaigns(timeline: &Timeline) -> usize {
    timeline.sent_where(|name| {
        name.starts_with("Query ") && name.contains("\"C#\"") && name.contains("PROGRAM#CURRENT")
    })
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap()
}

/// A table of its own on moto with kr-shop saved, and a client that notes its requests.
async fn kr_shop_table() -> (String, Timeline) {
    let table = format!("loyalty-cold-{}", uuid::Uuid::new_v4().simple());
    let timeline = Timeline::default();
    let services = cold_services(&table, &timeline);
    let store = DynamoStore::new(client(&timeline), &table);
    store.create_table().await.expect("moto creates the table");
    common::save_kr_shop(&services).await;
    (table, timeline)
}

fn client(timeline: &Timeline) -> aws_sdk_dynamodb::Client {
    let config = common::moto_dynamodb("cold")
        .interceptor(timeline.clone())
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// Services as a new instance has them: nothing read yet, nothing cached.
fn cold_services(table: &str, timeline: &Timeline) -> Arc<Services> {
    Arc::new(Services::new(
        Arc::new(DynamoStore::new(client(timeline), table)),
        Arc::new(common::Recorder::default()),
        FixedClock::at(now()),
    ))
}

fn purchase(member: &str, order: &str, amount: i64) -> String {
    json!({
        "type": "purchase.completed", "version": 1, "id": format!("shopify-order-{order}-paid"),
        "program": "kr-shop", "member": member, "occurred_at": now(),
        "data": {"order_id": order, "currency": "KRW", "platform": "shopify",
                 "lines": [{"line_id": "1", "quantity": 1, "unit_price": amount.to_string()}]}
    })
    .to_string()
}

/// The member's points, available and pending.
async fn points(services: &Services, member: &str) -> i64 {
    let view = services.member_view("kr-shop", member).await.unwrap();
    view.balance + view.pending
}

#[tokio::test]
async fn a_cold_earn_reads_the_member_beside_the_program() {
    // GIVEN kr-shop on moto and a member who bought once
    let (table, timeline) = kr_shop_table().await;
    let member = "shopify:7300000001";
    let warm = cold_services(&table, &timeline);
    let first = warm
        .process_earn(&purchase(member, "9100001", 30_000))
        .await
        .unwrap();
    assert!(matches!(first, Processed::Applied { .. }), "{first:?}");
    let before = points(&warm, member).await;
    // WHEN a new instance, which has read nothing yet, processes the member's next purchase
    let cold = cold_services(&table, &timeline);
    timeline.clear();
    let second = cold
        .process_earn(&purchase(member, "9100002", 50_000))
        .await
        .unwrap();
    // THEN the program and its campaigns were one read, the member's left before its answer
    // came back and was the only one, and nothing else was read
    assert!(matches!(second, Processed::Applied { .. }), "{second:?}");
    assert!(
        timeline.at(Phase::Sent, "BatchGetItem", "9100002")
            < timeline.at(Phase::Answered, "Query", "PROGRAM#CURRENT"),
        "{timeline:?}"
    );
    assert_eq!(program_and_campaigns(&timeline), 1, "{timeline:?}");
    assert_eq!(timeline.count("BatchGetItem"), 1, "{timeline:?}");
    assert_eq!(timeline.count("Query"), 1, "{timeline:?}");
    assert_eq!(timeline.count("GetItem"), 0, "{timeline:?}");
    // AND the purchase earned as it does when warm
    assert!(points(&warm, member).await > before);
}

#[tokio::test]
async fn a_cold_duplicate_costs_the_one_read_it_shares_with_the_program() {
    // GIVEN kr-shop on moto and a purchase already applied
    let (table, timeline) = kr_shop_table().await;
    let member = "shopify:7300000002";
    let message = purchase(member, "9200001", 30_000);
    let warm = cold_services(&table, &timeline);
    warm.process_earn(&message).await.unwrap();
    let before = points(&warm, member).await;
    // WHEN a new instance receives the same message again
    let cold = cold_services(&table, &timeline);
    timeline.clear();
    let again = cold.process_earn(&message).await.unwrap();
    // THEN it is a duplicate, found by the read sent beside the program's, and nothing is
    // written
    assert!(matches!(again, Processed::Duplicate), "{again:?}");
    assert_eq!(timeline.count("BatchGetItem"), 1, "{timeline:?}");
    assert_eq!(timeline.count("TransactWriteItems"), 0, "{timeline:?}");
    assert_eq!(points(&warm, member).await, before);
}

#[tokio::test]
async fn a_cold_job_reads_its_program_progress_and_campaigns_in_one_request() {
    // GIVEN kr-shop on moto, where the campaign tick and the release job have run
    let (table, timeline) = kr_shop_table().await;
    let warm = cold_services(&table, &timeline);
    for (job, from) in [
        (Job::CampaignTick, "\"C#\""),
        (Job::ReleasePending, "\"JOB#\""),
    ] {
        warm.run_job(job, "kr-shop", None, &|_| {}).await.unwrap();
        let again = warm.run_job(job, "kr-shop", None, &|_| {}).await.unwrap();
        // WHEN a new instance, which has read nothing yet, runs the job
        let cold = cold_services(&table, &timeline);
        timeline.clear();
        let report = cold.run_job(job, "kr-shop", None, &|_| {}).await.unwrap();
        // THEN its first request read the program with the job's progress (and, for the tick,
        // the campaigns), and neither was read on its own
        let first = timeline.first_sent();
        assert!(
            first.starts_with("Query ")
                && first.contains(from)
                && first.contains("PROGRAM#CURRENT"),
            "{timeline:?}"
        );
        let apart = timeline.sent_where(|name| {
            name.starts_with("GetItem ") && (name.contains("PROGRAM#") || name.contains("JOB#"))
        });
        assert_eq!(apart, 0, "{timeline:?}");
        // AND it resumed from the saved progress, as the warm instance's run again did
        assert_eq!(
            (report.from, report.to, report.failed),
            (again.from, again.to, 0)
        );
    }
}

#[tokio::test]
async fn a_cold_tier_check_reads_the_member_beside_the_program() {
    // GIVEN kr-shop on moto and a member whose purchase crossed the SILVER threshold
    let (table, timeline) = kr_shop_table().await;
    let member = "shopify:7300000004";
    let warm = cold_services(&table, &timeline);
    warm.process_earn(&purchase(member, "9400001", 400_000))
        .await
        .unwrap();
    let check = json!({
        "type": "tier.check", "version": 1, "id": "tier-check-shopify-order-9400001-paid",
        "program": "kr-shop", "member": member, "occurred_at": now(), "data": {}
    });
    // WHEN a new instance, which has read nothing yet, processes the member's tier check
    let cold = cold_services(&table, &timeline);
    timeline.clear();
    let outcome = cold.process_tier_check(&check.to_string()).await.unwrap();
    // THEN the member's read left before the program's answer came back, and was the only one
    assert!(matches!(outcome, Processed::Applied { .. }), "{outcome:?}");
    assert!(
        timeline.at(Phase::Sent, "BatchGetItem", "ACCOUNT")
            < timeline.at(Phase::Answered, "GetItem", "PROGRAM#CURRENT"),
        "{timeline:?}"
    );
    assert_eq!(timeline.count("BatchGetItem"), 1, "{timeline:?}");
    // AND the member was upgraded as a warm instance would
    let view = warm.member_view("kr-shop", member).await.unwrap();
    assert_eq!(view.tier.id, "SILVER");
}

#[tokio::test]
async fn a_redemption_reads_the_member_and_its_earlier_answer_in_one_request() {
    // GIVEN kr-shop on moto, a member with enough points for two coupons, and an instance that
    // has answered one redemption already
    let (table, timeline) = kr_shop_table().await;
    let member = "shopify:7300000003";
    // (at the wall clock's time: the store tells an expired idempotency record by it)
    let services = Arc::new(Services::new(
        Arc::new(DynamoStore::new(client(&timeline), &table)),
        Arc::new(common::Recorder::default()),
        FixedClock::at(Utc::now()),
    ));
    give(&services, member, 100_000).await;
    let app = app_of(&services);
    let (status, _) = redeem(app.clone(), member, "coupon-5000", "key-1").await;
    assert_eq!(status, StatusCode::CREATED);
    let before = points(&services, member).await;
    // WHEN the member redeems again with a new key
    timeline.clear();
    let (status, answer) = redeem(app.clone(), member, "coupon-5000", "key-2").await;
    // THEN the key's earlier answer was looked for in the member's read, the one read sent
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let with_account = timeline.at(Phase::Sent, "BatchGetItem", "ACCOUNT");
    assert_eq!(
        with_account,
        timeline.at(Phase::Sent, "BatchGetItem", "key-2"),
        "{timeline:?}"
    );
    let alone = timeline.sent_where(|name| name.starts_with("GetItem ") && name.contains("IDEMP"));
    assert_eq!(alone, 0, "{timeline:?}");
    assert_eq!(timeline.count("BatchGetItem"), 1, "{timeline:?}");
    // AND the coupon was paid for
    let after = points(&services, member).await;
    assert_eq!(after, before - answer["points"].as_i64().unwrap());
    // AND WHEN the same request is sent again with that key
    timeline.clear();
    let (again, repeated) = redeem(app, member, "coupon-5000", "key-2").await;
    // THEN the same answer comes from that one read, and nothing is written or paid again
    assert_eq!((again, &repeated), (StatusCode::CREATED, &answer));
    assert_eq!(timeline.count("BatchGetItem"), 1, "{timeline:?}");
    assert_eq!(timeline.count("TransactWriteItems"), 0, "{timeline:?}");
    assert_eq!(points(&services, member).await, after);
}

#[tokio::test]
async fn a_cold_redemption_reads_the_campaigns_with_the_program_beside_the_caller_s_link() {
    // GIVEN kr-shop on moto (no campaign) and a member with enough points for a coupon
    let (table, timeline) = kr_shop_table().await;
    let member = "shopify:7300000005";
    let warm = cold_services(&table, &timeline);
    give(&warm, member, 100_000).await;
    let before = points(&warm, member).await;
    // WHEN a new instance, which has read nothing yet, answers the member's redemption
    let cold = cold_services(&table, &timeline);
    timeline.clear();
    let (status, answer) = redeem(app_of(&cold), member, "coupon-5000", "key-1").await;
    // THEN the program and its campaigns were one read, sent beside the caller's link, and
    // the member's read was the only one
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert!(
        timeline.at(Phase::Sent, "GetItem", "ALIAS")
            < timeline.at(Phase::Answered, "Query", "\"C#\""),
        "{timeline:?}"
    );
    assert_eq!(program_and_campaigns(&timeline), 1, "{timeline:?}");
    let apart =
        timeline.sent_where(|name| name.starts_with("GetItem ") && name.contains("PROGRAM#"));
    assert_eq!(apart, 0, "{timeline:?}");
    assert_eq!(timeline.count("Query"), 1, "{timeline:?}");
    let member_reads =
        timeline.sent_where(|name| name.starts_with("BatchGetItem ") && name.contains("ACCOUNT"));
    assert_eq!(member_reads, 1, "{timeline:?}");
    // AND the coupon was paid for
    assert_eq!(
        points(&warm, member).await,
        before - answer["points"].as_i64().unwrap()
    );
}

#[tokio::test]
async fn a_cold_member_s_campaigns_are_read_with_the_program_beside_the_caller_s_link() {
    // GIVEN kr-shop on moto with a running campaign, and a member
    let (table, timeline) = kr_shop_table().await;
    let member = "shopify:7300000006";
    let warm = cold_services(&table, &timeline);
    let campaign = json!({
        "name": "December", "kind": "on_exposure", "status": "running",
        "start": "2026-11-01T00:00:00Z", "end": "2027-01-01T00:00:00Z",
        "hash_seed": "december", "goal": "revenue",
        "variants": [
            {"key": "control", "weight": 0.0, "effect": {"type": "none"}},
            {"key": "all", "weight": 1.0, "effect": {"type": "none"}}
        ]
    });
    warm.put_campaign("kr-shop", "december", campaign.to_string().as_bytes())
        .await
        .unwrap();
    give(&warm, member, 1_000).await;
    // WHEN a new instance, which has read nothing yet, answers the member's app for its
    // campaigns
    let cold = cold_services(&table, &timeline);
    timeline.clear();
    let token = sign(SECRET, &claims(member, &[], None, 1)).unwrap();
    let request = Request::builder()
        .uri("/v1/programs/kr-shop/me/campaigns")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let response = app_of(&cold).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let shown: Value =
        serde_json::from_slice(&to_bytes(response.into_body(), 1 << 20).await.unwrap()).unwrap();
    // THEN the program and its campaigns were one read, sent beside the caller's link, and
    // both were answered before the member's read, the only other
    assert_eq!(program_and_campaigns(&timeline), 1, "{timeline:?}");
    assert!(
        timeline.at(Phase::Sent, "GetItem", "ALIAS")
            < timeline.at(Phase::Answered, "Query", "PROGRAM#CURRENT"),
        "{timeline:?}"
    );
    assert!(
        timeline.at(Phase::Answered, "Query", "PROGRAM#CURRENT")
            < timeline.at(Phase::Sent, "BatchGetItem", "ACCOUNT"),
        "{timeline:?}"
    );
    assert_eq!(timeline.count("Query"), 1, "{timeline:?}");
    assert_eq!(timeline.count("BatchGetItem"), 1, "{timeline:?}");
    let apart =
        timeline.sent_where(|name| name.starts_with("GetItem ") && name.contains("PROGRAM#"));
    assert_eq!(apart, 0, "{timeline:?}");
    // AND the member is shown the running campaign, its variant recorded
    assert_eq!(shown["campaigns"][0]["campaign"], "december", "{shown}");
    assert_eq!(shown["campaigns"][0]["variant"], "all", "{shown}");
}

/// Webhook secrets whose every read is noted on the timeline (as `SSM {program}`) and takes
/// a moment, as SSM's does.
struct NotedSecrets(Timeline);

#[async_trait::async_trait]
impl Secrets for NotedSecrets {
    async fn secrets(
        &self,
        program: &str,
        _platform: Platform,
    ) -> Result<Vec<String>, loyalty_core::ports::StoreError> {
        let name = format!("SSM {program}");
        self.0 .0.lock().unwrap().push((Phase::Sent, name.clone()));
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        self.0 .0.lock().unwrap().push((Phase::Answered, name));
        Ok(vec!["a-secret".to_string()])
    }
}

/// A Shopify delivery to `program` (its signature made with another secret: the reads come
/// before the check).
async fn deliver(services: &Services, secrets: &NotedSecrets, program: &str) {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(shopify::HMAC_HEADER, "bm90LWl0".parse().unwrap());
    headers.insert(shopify::TOPIC_HEADER, "orders/paid".parse().unwrap());
    let refused = services
        .ingest_webhook(secrets, "shopify", program, &headers, b"{}")
        .await;
    assert!(refused.is_err(), "{refused:?}");
}

#[tokio::test]
async fn a_webhook_reads_the_secret_beside_the_program_only_for_a_program_listed_at_start() {
    // GIVEN kr-shop on moto, and new instances: one that listed the programs during init,
    // one that did not
    let (table, timeline) = kr_shop_table().await;
    let secrets = NotedSecrets(timeline.clone());
    let listing = cold_services(&table, &timeline);
    let store = DynamoStore::new(client(&timeline), &table);
    listing.list_programs(store.program_ids().await.unwrap());
    let unlisted = cold_services(&table, &timeline);
    // WHEN the listing instance receives a delivery for kr-shop
    timeline.clear();
    deliver(&listing, &secrets, "kr-shop").await;
    // THEN the secret was asked for before the program's read came back
    assert!(
        timeline.at(Phase::Sent, "SSM", "kr-shop")
            < timeline.at(Phase::Answered, "GetItem", "PROGRAM#CURRENT"),
        "{timeline:?}"
    );
    // WHEN the other instance receives the same delivery
    timeline.clear();
    deliver(&unlisted, &secrets, "kr-shop").await;
    // THEN the secret was asked for only once the program was found
    assert!(
        timeline.at(Phase::Answered, "GetItem", "PROGRAM#CURRENT")
            < timeline.at(Phase::Sent, "SSM", "kr-shop"),
        "{timeline:?}"
    );
    // WHEN the listing instance receives deliveries for a program that does not exist
    timeline.clear();
    deliver(&listing, &secrets, "made-up-shop").await;
    deliver(&listing, &secrets, "made-up-shop").await;
    // THEN no secret is asked for
    assert_eq!(
        timeline.sent_where(|n| n.starts_with("SSM ")),
        0,
        "{timeline:?}"
    );
}

#[tokio::test]
async fn a_webhook_reads_the_links_it_may_write_in_one_request_and_writes_them_in_two() {
    // GIVEN kr-shop on moto and a paid order of a new customer, with an email
    let (table, timeline) = kr_shop_table().await;
    let services = cold_services(&table, &timeline);
    let body = include_str!("../../tests/fixtures/shopify/orders-paid.json")
        .replace("__OCCURRED_AT__", &now().to_rfc3339());
    let events = match shopify::normalise("orders/paid", body.as_bytes(), None, now()).unwrap() {
        Normalised::Events(events) => events,
        ignored => panic!("the fixture is a paid order: {ignored:?}"),
    };
    let order = events[0]
        .order_key
        .clone()
        .expect("a paid order names its order");
    let email = events[0]
        .identities
        .iter()
        .find(|i| i.starts_with("email:"))
        .cloned()
        .expect("the fixture's order names an email");
    // WHEN the order is ingested
    timeline.clear();
    services.ingest_events("kr-shop", events).await.unwrap();
    // THEN the order's and the email's links were read in one request, and neither alone
    let order_link = format!("P#kr-shop#ID#order#{order}\"");
    let email_link = format!("P#kr-shop#ID#{}\"", email.replacen(':', "#", 1));
    let together = timeline.sent_where(|name| {
        name.starts_with("BatchGetItem ")
            && name.contains(&order_link)
            && name.contains(&email_link)
    });
    assert_eq!(together, 1, "{timeline:?}");
    assert_eq!(
        timeline.sent_where(|name| name.starts_with("GetItem ") && name.contains(&order_link)),
        0,
        "{timeline:?}"
    );
    // AND the customer's and the email's links were written in one request, beside the
    // order's
    let identities = timeline
        .sent_where(|name| name.starts_with("TransactWriteItems ") && name.contains(&email_link));
    assert_eq!(identities, 1, "{timeline:?}");
    assert_eq!(timeline.count("TransactWriteItems"), 1, "{timeline:?}");
    // AND the links were written: the order now leads to its member
    let store = DynamoStore::new(client(&timeline), &table);
    assert!(store
        .resolve_alias("kr-shop", "order", &order)
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn a_known_customer_s_link_is_read_with_the_order_s_links_in_one_request() {
    const PAID: &str = include_str!("../../tests/fixtures/shopify/orders-paid.json");
    // GIVEN kr-shop on moto and a customer's first paid order
    let (table, timeline) = kr_shop_table().await;
    let services = cold_services(&table, &timeline);
    let store = DynamoStore::new(client(&timeline), &table);
    let first = shopify_events("orders/paid", PAID, "8400000001");
    let customer = match &first[0].member {
        loyalty_core::webhooks::MemberRef::Identity(identity) => identity.replacen(':', "#", 1),
        other => panic!("the fixture's order names its customer: {other:?}"),
    };
    let customer_link = format!("P#kr-shop#ID#{customer}\"");
    let email = first[0]
        .identities
        .iter()
        .find_map(|i| i.strip_prefix("email:"))
        .expect("the fixture's order names an email");
    let email_link = format!("P#kr-shop#ID#email#{email}\"");
    let read_of = |link: &str, strong: bool| {
        let link = link.to_string();
        move |name: &str| {
            name.starts_with("BatchGetItem ")
                && name.contains(&link)
                && name.contains("\"ConsistentRead\":true") == strong
        }
    };
    // WHEN it is ingested
    timeline.clear();
    services.ingest_events("kr-shop", first).await.unwrap();
    // THEN the customer's link, missing from the links' read, was read again strongly with the
    // email's link, in one request, before the customer became a member
    assert_eq!(
        timeline.sent_where(read_of(&customer_link, false)),
        1,
        "{timeline:?}"
    );
    assert_eq!(
        timeline.sent_where(
            |name| read_of(&customer_link, true)(name) && read_of(&email_link, true)(name)
        ),
        1,
        "{timeline:?}"
    );
    let alone = |name: &str| name.starts_with("GetItem ") && name.contains("#ID#");
    assert_eq!(timeline.sent_where(alone), 0, "{timeline:?}");
    let member = store
        .resolve_alias("kr-shop", "order", "shopify#8400000001")
        .await
        .unwrap()
        .expect("the first order leads to its member");
    // WHEN the same customer's next order is paid
    timeline.clear();
    services
        .ingest_events("kr-shop", shopify_events("orders/paid", PAID, "8400000002"))
        .await
        .unwrap();
    // THEN the customer's link was read with the order's links, in one request and no other
    let order_link = "P#kr-shop#ID#order#shopify#8400000002\"";
    assert_eq!(
        timeline.sent_where(|name| name.starts_with("BatchGetItem ")
            && name.contains(&customer_link)
            && name.contains(order_link)),
        1,
        "{timeline:?}"
    );
    assert_eq!(timeline.count("GetItem"), 0, "{timeline:?}");
    // AND the order leads to the same member
    assert_eq!(
        store
            .resolve_alias("kr-shop", "order", "shopify#8400000002")
            .await
            .unwrap(),
        Some(member)
    );
}

/// The events of a Shopify fixture, its order id replaced by `order`.
fn shopify_events(topic: &str, fixture: &str, order: &str) -> Vec<PlatformEvent> {
    let body = fixture
        .replace("__OCCURRED_AT__", &now().to_rfc3339())
        .replace("820982911946154508", order);
    match shopify::normalise(topic, body.as_bytes(), None, now()).unwrap() {
        Normalised::Events(events) => events,
        ignored => panic!("the fixture is an order's event: {ignored:?}"),
    }
}

#[tokio::test]
async fn a_paid_order_looks_for_parked_events_only_when_some_wait_for_it() {
    const PAID: &str = include_str!("../../tests/fixtures/shopify/orders-paid.json");
    const REFUND: &str = include_str!("../../tests/fixtures/shopify/refunds-create.json");
    // GIVEN kr-shop on moto and a refund that came before its order's payment
    let (table, timeline) = kr_shop_table().await;
    let services = cold_services(&table, &timeline);
    let store = DynamoStore::new(client(&timeline), &table);
    services
        .ingest_events(
            "kr-shop",
            shopify_events("refunds/create", REFUND, "8300000001"),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .parked("kr-shop", "shopify#8300000001")
            .await
            .unwrap()
            .len(),
        1
    );
    let parked_query = |name: &str| name.starts_with("Query ") && name.contains("#ORDER#");
    // WHEN the order's payment comes
    timeline.clear();
    services
        .ingest_events("kr-shop", shopify_events("orders/paid", PAID, "8300000001"))
        .await
        .unwrap();
    // THEN the refund was looked for and released
    assert_eq!(timeline.sent_where(parked_query), 1, "{timeline:?}");
    assert!(store
        .parked("kr-shop", "shopify#8300000001")
        .await
        .unwrap()
        .is_empty());
    // WHEN another order of the same customer is paid, for which nothing was parked
    timeline.clear();
    services
        .ingest_events("kr-shop", shopify_events("orders/paid", PAID, "8300000002"))
        .await
        .unwrap();
    // THEN no parked event is asked for, and the order leads to its member
    assert_eq!(timeline.sent_where(parked_query), 0, "{timeline:?}");
    assert!(store
        .resolve_alias("kr-shop", "order", "shopify#8300000002")
        .await
        .unwrap()
        .is_some());
}

/// The API on `services`, with tokens signed by [`SECRET`].
fn app_of(services: &Arc<Services>) -> axum::Router {
    router(AppState {
        services: Arc::clone(services),
        verifier: Verifier::hs256(SECRET),
        secrets: Arc::new(loyalty_core::webhooks::EnvSecrets),
    })
}

/// An operator's adjustment of `points` to `member`.
async fn give(services: &Services, member: &str, points: i64) {
    let adjustment = json!({"points": points, "reason": "welcome"}).to_string();
    services
        .adjust(
            "kr-shop",
            member,
            "ops",
            Some("welcome-1"),
            adjustment.as_bytes(),
        )
        .await
        .unwrap();
}

async fn redeem(app: axum::Router, member: &str, reward: &str, key: &str) -> (StatusCode, Value) {
    let token = sign(SECRET, &claims(member, &[], None, 1)).unwrap();
    let request = Request::builder()
        .method("POST")
        .uri("/v1/programs/kr-shop/me/redemptions")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Body::from(json!({ "reward": reward }).to_string()))
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}
