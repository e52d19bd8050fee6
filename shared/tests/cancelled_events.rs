//! Events an operator cancels (waiting while their member was suspended, or held for review)
//! never earn, however often their platform delivers them again: a queue forgets a message's
//! id after a while (SQS's FIFO queues after five minutes), and WooCommerce restates an order's
//! payment with every change of the order.
#![cfg(feature = "sqlite")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use loyalty_core::ports::{QueueName, SystemClock};
use loyalty_core::queue::local::LocalQueue;
use loyalty_core::services::Services;
use loyalty_core::store::sqlite::SqliteStore;
use serde_json::json;

fn purchase(id: &str, member: &str) -> String {
    json!({
        "type": "purchase.completed", "version": 1, "id": id, "program": "kr-shop",
        "member": member, "occurred_at": Utc::now() - chrono::Duration::hours(1),
        "data": {"order_id": id, "currency": "KRW", "platform": "woocommerce",
                 "lines": [{"line_id": "1", "quantity": 1, "unit_price": "59000"}]}
    })
    .to_string()
}

/// Delivers every message waiting (and those that follow from them) to earn.
async fn drain(queue: &LocalQueue, services: &Services) {
    loop {
        queue.relay_outbox(1000, |_| {}).await.unwrap();
        let deliveries = queue
            .receive(QueueName::Earn, 10, Duration::from_secs(30))
            .await
            .unwrap();
        if deliveries.is_empty() {
            return;
        }
        for delivery in deliveries {
            services.process_earn(&delivery.body).await.unwrap();
            queue.ack(delivery.seq).await.unwrap();
        }
    }
}

/// An operator cancels a held event as a test order.
async fn cancel_test_order(services: &Services, id: &str) {
    services
        .cancel_held("kr-shop", id, "ops", br#"{"reason": "a test order"}"#)
        .await
        .unwrap();
}

async fn pending(services: &Services, member: &str) -> i64 {
    services
        .member_view("kr-shop", member)
        .await
        .unwrap()
        .pending
}

#[tokio::test]
async fn a_payment_cancelled_at_a_resume_is_not_credited_when_delivered_again() {
    // GIVEN a member with one purchase, suspended while a second payment arrived, and resumed
    // with its waiting events cancelled
    let store = SqliteStore::memory().unwrap();
    let (queue, services) = common::kr_shop_services(&store, 5, Arc::new(SystemClock)).await;
    let member = "woocommerce:62";
    services
        .process_earn(&purchase("woo-1001-paid", member))
        .await
        .unwrap();
    let before = pending(&services, member).await;
    services
        .suspend_request("kr-shop", member, "ops", br#"{"reason": "chargebacks"}"#)
        .await
        .unwrap();
    services
        .process_earn(&purchase("woo-1002-paid", member))
        .await
        .unwrap();
    drain(&queue, &services).await;
    services
        .resume_request(
            "kr-shop",
            member,
            "ops",
            br#"{"reason": "fraudulent order", "events": "cancel"}"#,
        )
        .await
        .unwrap();
    drain(&queue, &services).await;
    assert_eq!(pending(&services, member).await, before);
    // WHEN the platform delivers the cancelled payment again, past the queue's memory of it
    let again = services
        .process_earn(&purchase("woo-1002-paid", member))
        .await
        .unwrap();
    // THEN it is the cancelled event again: nothing is credited
    assert_eq!(again.name(), "duplicate", "{again:?}");
    assert_eq!(pending(&services, member).await, before);
    // AND it is still among the rejected events, for an operator to replay if wanted
    assert!(store_has_rejected(&services, "woo-1002-paid").await);
}

async fn store_has_rejected(services: &Services, id: &str) -> bool {
    services.rejected_event("kr-shop", id).await.is_ok()
}

#[tokio::test]
async fn a_payment_cancelled_after_review_is_not_credited_when_delivered_again() {
    // GIVEN kr-shop holding for review what takes a member past 1,000 points a day, and a
    // payment of 590 held over it and cancelled by an operator
    let store = SqliteStore::memory().unwrap();
    let (queue, services) = common::kr_shop_services(&store, 5, Arc::new(SystemClock)).await;
    common::save_kr_shop_with(&services, "[safeguards]\ndaily_points = 1000\n").await;
    let member = "woocommerce:63";
    services
        .process_earn(&purchase("woo-2001-paid", member))
        .await
        .unwrap();
    let before = pending(&services, member).await;
    services
        .process_earn(&purchase("woo-2002-paid", member))
        .await
        .unwrap();
    drain(&queue, &services).await;
    let held = services.held_events("kr-shop").await.unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    cancel_test_order(&services, "woo-2002-paid").await;
    // WHEN the platform delivers the cancelled payment again
    let again = services
        .process_earn(&purchase("woo-2002-paid", member))
        .await
        .unwrap();
    // THEN nothing is credited
    assert_eq!(again.name(), "duplicate", "{again:?}");
    assert_eq!(pending(&services, member).await, before);
}

#[tokio::test]
async fn a_new_customer_s_first_payment_cancelled_after_review_is_never_credited() {
    // GIVEN kr-shop holding for review what takes a member past 500 points a day, and a new
    // customer's first payment of 590 held over it and cancelled by an operator
    let store = SqliteStore::memory().unwrap();
    let (queue, services) = common::kr_shop_services(&store, 5, Arc::new(SystemClock)).await;
    common::save_kr_shop_with(&services, "[safeguards]\ndaily_points = 500\n").await;
    let member = "woocommerce:66";
    services
        .process_earn(&purchase("woo-6001-paid", member))
        .await
        .unwrap();
    drain(&queue, &services).await;
    assert_eq!(services.held_events("kr-shop").await.unwrap().len(), 1);
    cancel_test_order(&services, "woo-6001-paid").await;
    // WHEN the platform delivers the cancelled payment again (a reconcile the next day)
    let again = services
        .process_earn(&purchase("woo-6001-paid", member))
        .await
        .unwrap();
    // THEN nothing is credited: the cancel is kept on the member's new, empty account
    assert_eq!(again.name(), "duplicate", "{again:?}");
    let view = services.member_view("kr-shop", member).await.unwrap();
    assert_eq!((view.balance, view.pending), (0, 0));
}

#[tokio::test]
async fn a_cancelled_event_is_final_and_its_replay_is_refused() {
    // GIVEN a payment held for review and cancelled by an operator
    let store = SqliteStore::memory().unwrap();
    let (queue, services) = common::kr_shop_services(&store, 5, Arc::new(SystemClock)).await;
    common::save_kr_shop_with(&services, "[safeguards]\ndaily_points = 100\n").await;
    services
        .process_earn(&purchase("woo-3001-paid", "woocommerce:64"))
        .await
        .unwrap();
    drain(&queue, &services).await;
    cancel_test_order(&services, "woo-3001-paid").await;
    // WHEN an operator replays it
    let replayed = services
        .replay_rejected("kr-shop", "woo-3001-paid", "ops-2")
        .await;
    // THEN it is refused as final, naming the way to credit points after all
    match replayed {
        Err(loyalty_core::services::ServiceError::Conflict { problem, detail }) => {
            assert_eq!(problem, "event-cancelled");
            assert!(detail.contains("adjust"), "{detail}");
        }
        other => panic!("expected 409, got {other:?}"),
    }
}

#[tokio::test]
async fn a_payment_cancelled_stays_cancelled_for_the_member_its_member_was_merged_into() {
    // GIVEN a payment of woocommerce:65 held for review and cancelled, then woocommerce:65
    // merged into app-65 (the same person)
    let store = SqliteStore::memory().unwrap();
    let (queue, services) = common::kr_shop_services(&store, 5, Arc::new(SystemClock)).await;
    common::save_kr_shop_with(&services, "[safeguards]\ndaily_points = 1000\n").await;
    let (member, survivor) = ("woocommerce:65", "app-65");
    services
        .process_earn(&purchase("woo-4001-paid", member))
        .await
        .unwrap();
    services
        .process_earn(&purchase("woo-4002-paid", member))
        .await
        .unwrap();
    drain(&queue, &services).await;
    cancel_test_order(&services, "woo-4002-paid").await;
    // (the limit lifted again, so that nothing is held for it below)
    common::save_kr_shop(&services).await;
    services
        .process_earn(&purchase("app-first", survivor))
        .await
        .unwrap();
    services
        .merge_named("kr-shop", survivor, member, "the same person", "ops")
        .await
        .unwrap();
    drain(&queue, &services).await;
    let before = pending(&services, survivor).await;
    // WHEN the platform delivers the cancelled payment again, now to the survivor
    let again = services
        .process_earn(&purchase("woo-4002-paid", survivor))
        .await
        .unwrap();
    // THEN nothing is credited: the order's record, moved with the merge, says it was cancelled
    assert_eq!(again.name(), "no-effect", "{again:?}");
    assert_eq!(pending(&services, survivor).await, before);
}

#[tokio::test]
async fn a_merge_brings_the_day_s_earnings_under_the_daily_limit() {
    // GIVEN a daily limit of 1,500 points, and one person's two accounts that earned 590 each
    // today, merged
    let store = SqliteStore::memory().unwrap();
    let (queue, services) = common::kr_shop_services(&store, 5, Arc::new(SystemClock)).await;
    common::save_kr_shop_with(&services, "[safeguards]\ndaily_points = 1500\n").await;
    let (member, survivor) = ("woocommerce:70", "app-70");
    for (id, who) in [("woo-7001-paid", member), ("app-7001", survivor)] {
        let earned = services.process_earn(&purchase(id, who)).await.unwrap();
        assert_eq!(earned.name(), "applied", "{earned:?}");
    }
    services
        .merge_named("kr-shop", survivor, member, "the same person", "ops")
        .await
        .unwrap();
    drain(&queue, &services).await;
    let before = pending(&services, survivor).await;
    assert_eq!(before, 1_180);
    // WHEN the person earns 590 more the same day
    let third = services
        .process_earn(&purchase("app-7002", survivor))
        .await
        .unwrap();
    // THEN it is held for review (1,770 today), not credited
    assert_eq!(third.name(), "no-effect", "{third:?}");
    assert_eq!(pending(&services, survivor).await, before);
}

#[tokio::test]
async fn a_payment_held_for_review_earns_nothing_delivered_again_the_next_day_until_released() {
    // GIVEN kr-shop holding for review what takes a member past 1,000 points a day, and a
    // payment of 590 held over it on 1 December
    let store = SqliteStore::memory().unwrap();
    let day_one = Utc::now() - chrono::Duration::days(3);
    let clock = loyalty_core::ports::FixedClock::at(day_one);
    let (queue, services) = common::kr_shop_services(&store, 5, clock.clone()).await;
    common::save_kr_shop_with(&services, "[safeguards]\ndaily_points = 1000\n").await;
    let member = "woocommerce:71";
    let paid = |id: &str| {
        json!({
            "type": "purchase.completed", "version": 1, "id": id, "program": "kr-shop",
            "member": member, "occurred_at": day_one - chrono::Duration::hours(1),
            "data": {"order_id": id, "currency": "KRW", "platform": "woocommerce",
                     "lines": [{"line_id": "1", "quantity": 1, "unit_price": "59000"}]}
        })
        .to_string()
    };
    services.process_earn(&paid("woo-7101-paid")).await.unwrap();
    let held = services.process_earn(&paid("woo-7102-paid")).await.unwrap();
    assert_eq!(held.name(), "no-effect", "{held:?}");
    let before = pending(&services, member).await;
    assert_eq!(before, 590);
    // WHEN the platform delivers the held payment again the next day (a restatement), when the
    // day's count would let it through
    clock.set(day_one + chrono::Duration::days(1));
    let again = services.process_earn(&paid("woo-7102-paid")).await.unwrap();
    // THEN it earns nothing, and still waits for the operator
    assert_eq!(again.name(), "no-effect", "{again:?}");
    assert_eq!(pending(&services, member).await, before);
    assert_eq!(services.held_events("kr-shop").await.unwrap().len(), 1);
    // WHEN an operator releases it THEN it earns, once
    services
        .release_held("kr-shop", "woo-7102-paid", "ops")
        .await
        .unwrap();
    drain(&queue, &services).await;
    assert_eq!(pending(&services, member).await, before + 590);
    let late = services.process_earn(&paid("woo-7102-paid")).await.unwrap();
    assert_ne!(late.name(), "applied", "{late:?}");
    assert_eq!(pending(&services, member).await, before + 590);
}

#[tokio::test]
async fn a_survivor_s_export_holds_the_events_held_for_a_member_merged_into_it() {
    // GIVEN a payment each of woocommerce:72 and app-72 held for review (over 500 a day),
    // then woocommerce:72 merged into app-72
    let store = SqliteStore::memory().unwrap();
    let (queue, services) = common::kr_shop_services(&store, 5, Arc::new(SystemClock)).await;
    common::save_kr_shop_with(&services, "[safeguards]\ndaily_points = 500\n").await;
    let (member, survivor) = ("woocommerce:72", "app-72");
    let held = services
        .process_earn(&purchase("woo-7201-paid", member))
        .await
        .unwrap();
    assert_eq!(held.name(), "no-effect", "{held:?}");
    let held = services
        .process_earn(&purchase("app-7201", survivor))
        .await
        .unwrap();
    assert_eq!(held.name(), "no-effect", "{held:?}");
    services
        .merge_named("kr-shop", survivor, member, "the same person", "ops")
        .await
        .unwrap();
    drain(&queue, &services).await;
    // WHEN the survivor's data is exported
    use futures_util::StreamExt;
    let mut chunks = std::pin::pin!(services.export_member("kr-shop", survivor).await.unwrap());
    let mut document = String::new();
    while let Some(chunk) = chunks.next().await {
        document.push_str(&chunk.unwrap());
    }
    // THEN it holds both payments waiting for review, the merged member's too
    let export: serde_json::Value = serde_json::from_str(&document).unwrap();
    let mut held: Vec<&str> = export["held_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"]["id"].as_str().unwrap_or_default())
        .collect();
    held.sort();
    assert_eq!(held, ["app-7201", "woo-7201-paid"], "{export}");
}

#[tokio::test]
async fn a_payment_whose_cancellation_came_first_is_not_held_for_points_it_never_keeps() {
    // GIVEN a daily limit of 1,000 points, and a cancellation of order woo-5001 delivered before
    // its payment (590 points)
    let store = SqliteStore::memory().unwrap();
    let (_queue, services) = common::kr_shop_services(&store, 5, Arc::new(SystemClock)).await;
    common::save_kr_shop_with(&services, "[safeguards]\ndaily_points = 1000\n").await;
    let member = "woocommerce:66";
    let cancel = json!({
        "type": "purchase.cancelled", "version": 1, "id": "woo-5001-cancelled",
        "program": "kr-shop", "member": member,
        "occurred_at": Utc::now() - chrono::Duration::minutes(30),
        "data": {"order_id": "woo-5001", "platform": "woocommerce"}
    })
    .to_string();
    let parked = services.process_earn(&cancel).await.unwrap();
    assert_eq!(parked.name(), "no-effect", "{parked:?}");
    // WHEN the payment arrives
    let paid = services
        .process_earn(&purchase("woo-5001", member))
        .await
        .unwrap();
    // THEN it is applied with its cancellation, not held for review: it credits nothing net
    assert_eq!(paid.name(), "applied", "{paid:?}");
    assert_eq!(pending(&services, member).await, 0);
    // AND it counted nothing towards the day: of two more payments of 590 points, the first
    // is applied and the second, past 1,000, held
    let next = services
        .process_earn(&purchase("woo-5002", member))
        .await
        .unwrap();
    assert_eq!(next.name(), "applied", "{next:?}");
    let over = services
        .process_earn(&purchase("woo-5003", member))
        .await
        .unwrap();
    assert_eq!(over.name(), "no-effect", "{over:?}");
    assert!(format!("{over:?}").contains("daily"), "{over:?}");
}

#[tokio::test]
async fn a_resume_asking_the_other_way_while_the_first_is_dealt_with_is_refused() {
    // GIVEN a member suspended after one purchase with two payments waiting, resumed by ops-1
    // with them applied
    // (its message not yet consumed: the events still wait)
    let store = SqliteStore::memory().unwrap();
    let (queue, services) = common::kr_shop_services(&store, 5, Arc::new(SystemClock)).await;
    let member = "woocommerce:63";
    services
        .process_earn(&purchase("woo-2000-paid", member))
        .await
        .unwrap();
    services
        .suspend_request("kr-shop", member, "ops", br#"{"reason": "chargebacks"}"#)
        .await
        .unwrap();
    for id in ["woo-2001-paid", "woo-2002-paid"] {
        services.process_earn(&purchase(id, member)).await.unwrap();
    }
    let resume = |by: &'static str, events: &'static str| {
        let services = &services;
        async move {
            let body = json!({"reason": "cleared", "events": events}).to_string();
            services
                .resume_request("kr-shop", member, by, body.as_bytes())
                .await
        }
    };
    // (a choice that is neither is refused as such, not as a bad reason)
    match resume("ops-1", "maybe").await {
        Err(loyalty_core::services::ServiceError::Invalid { problem, .. }) => {
            assert_eq!(problem, "invalid-resume")
        }
        other => panic!("{other:?}"),
    }
    let first = resume("ops-1", "apply").await.unwrap();
    assert_eq!((first.applied, first.cancelled), (2, 0));
    // WHEN ops-2, at the same moment, resumes it with the waiting events cancelled
    let second = resume("ops-2", "cancel").await;
    // THEN it is refused, naming the first choice (before: it cancelled what was still
    // waiting while the first applied the rest, and both answered "2")
    match second {
        Err(loyalty_core::services::ServiceError::Conflict { problem, detail }) => {
            assert_eq!(problem, "resumed-otherwise");
            assert!(
                detail.contains("ops-1") && detail.contains("applied"),
                "{detail}"
            );
        }
        other => panic!("{other:?}"),
    }
    // AND a third resume asking the same way goes on, and every event is applied
    resume("ops-3", "apply").await.unwrap();
    drain(&queue, &services).await;
    assert_eq!(pending(&services, member).await, 3 * 590);
    assert!(!store_has_rejected(&services, "woo-2001-paid").await);
    assert!(!store_has_rejected(&services, "woo-2002-paid").await);
    // AND once nothing waits, a resume asking the other way decides nothing and is not refused
    let later = resume("ops-2", "cancel").await.unwrap();
    assert_eq!((later.applied, later.cancelled), (0, 0));
}
