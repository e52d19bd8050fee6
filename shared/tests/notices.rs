//! The brand's `points.earned` notices: one for each event that changed a member's points,
//! none for one that changed nothing (over its limit, a refund waiting for its order), which
//! the brand would otherwise tell the member about.
#![cfg(feature = "sqlite")]

mod common;

use std::sync::Mutex;

use chrono::Utc;
use loyalty_core::ports::FixedClock;
use loyalty_core::queue::local::LocalQueue;
use loyalty_core::services::earn::Processed;
use loyalty_core::services::Services;
use loyalty_core::store::sqlite::SqliteStore;
use serde_json::json;

fn birthday(id: &str, member: &str) -> String {
    json!({
        "type": "engagement.recorded", "version": 1, "id": id, "program": "kr-shop",
        "member": member, "occurred_at": Utc::now() - chrono::Duration::hours(1),
        "data": {"action": "birthday", "ref": id}
    })
    .to_string()
}

fn early_refund(member: &str) -> String {
    json!({
        "type": "purchase.refunded", "version": 1, "id": "refund-of-unseen", "program": "kr-shop",
        "member": member, "occurred_at": Utc::now() - chrono::Duration::hours(1),
        "data": {"order_id": "unseen", "refund_id": "r-1", "currency": "KRW",
                 "lines": [{"line_id": "1", "quantity": 1}]}
    })
    .to_string()
}

/// The notices relayed (the local relay hands the brand's notices to a function).
static NOTICED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The ids of the notices relayed since the last call.
async fn notices(queue: &LocalQueue) -> Vec<String> {
    queue
        .relay_outbox(1000, |notice| {
            NOTICED.lock().unwrap().push(notice.id.clone());
        })
        .await
        .unwrap();
    std::mem::take(&mut *NOTICED.lock().unwrap())
}

async fn earn(services: &Services, body: &str) -> Processed {
    services.process_earn(body).await.unwrap()
}

fn purchase(id: &str, member: &str) -> String {
    json!({
        "type": "purchase.completed", "version": 1, "id": id, "program": "kr-shop",
        "member": member, "occurred_at": Utc::now() - chrono::Duration::hours(1),
        "data": {"order_id": id, "currency": "KRW",
                 "lines": [{"line_id": "1", "quantity": 1, "unit_price": "59000"}]}
    })
    .to_string()
}

#[tokio::test]
async fn only_an_event_that_changed_points_is_noticed() {
    // GIVEN a member paid this year's birthday, with a purchase pending its return window
    let store = SqliteStore::memory().unwrap();
    let clock = FixedClock::at(Utc::now());
    let (queue, services) = common::kr_shop_services(&store, 5, clock.clone()).await;
    let bought = earn(&services, &purchase("buy-1", "m-1")).await;
    let first = earn(&services, &birthday("bday-1", "m-1")).await;
    assert!(matches!(bought, Processed::Applied { .. }), "{bought:?}");
    assert!(matches!(first, Processed::Applied { .. }), "{first:?}");
    let mut noticed = notices(&queue).await;
    noticed.sort();
    assert_eq!(noticed, ["points-earned-bday-1", "points-earned-buy-1"]);
    // WHEN, after the return window, a second birthday this year (over the yearly limit; its
    // commit releases the purchase's points) and a refund of an order not seen yet arrive
    clock.set(Utc::now() + chrono::Duration::days(8));
    let over = earn(&services, &birthday("bday-2", "m-1")).await;
    let parked = earn(&services, &early_refund("m-1")).await;
    // THEN neither earned anything (the birthday's commit wrote the release alone), and
    // neither is noticed
    assert!(
        matches!(over, Processed::Applied { entries: 1 }),
        "{over:?}"
    );
    assert!(matches!(parked, Processed::NoEffect(_)), "{parked:?}");
    assert_eq!(notices(&queue).await, Vec::<String>::new());
    // AND the purchase's points were released with the second birthday
    let view = services.member_view("kr-shop", "m-1").await.unwrap();
    assert_eq!((view.balance, view.pending), (2_590, 0));
}
