//! What a webhook writes besides its event: the order's member and the customer's identities,
//! each linked once however often the platform delivers the order.
#![cfg(feature = "sqlite")]

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use loyalty_core::ports::{AliasStore as _, FixedClock};
use loyalty_core::queue::local::LocalQueue;
use loyalty_core::services::Services;
use loyalty_core::store::sqlite::SqliteStore;
use loyalty_core::webhooks::{cafe24, shopify, Normalised, PlatformEvent};

mod common;

fn paid_order(now: chrono::DateTime<Utc>) -> Vec<PlatformEvent> {
    let body = include_str!("../../tests/fixtures/shopify/orders-paid.json")
        .replace("__OCCURRED_AT__", &now.to_rfc3339());
    match shopify::normalise("orders/paid", body.as_bytes(), None, now).unwrap() {
        Normalised::Events(events) => events,
        ignored => panic!("the fixture is a paid order: {ignored:?}"),
    }
}

/// Another order of the same customer, delivered with the first.
fn second_order(first: &PlatformEvent) -> PlatformEvent {
    let mut second = first.clone();
    second.id = format!("{}-second", second.id);
    second.order_key = second.order_key.map(|o| format!("{o}-second"));
    second
}

/// Services on `store` with kr-shop saved, and a queue of their own.
async fn kr_shop_on(store: &SqliteStore, now: chrono::DateTime<Utc>) -> Services {
    let queue = LocalQueue::new(SqliteStore::memory().unwrap(), 3);
    let services = Services::new(
        Arc::new(store.clone()),
        Arc::new(queue),
        FixedClock::at(now),
    );
    common::save_kr_shop(&services).await;
    services
}

/// The email an event names (`email:...`).
fn email_of(event: &PlatformEvent) -> String {
    event
        .identities
        .iter()
        .find(|i| i.starts_with("email:"))
        .cloned()
        .expect("the fixture's order names an email")
}

/// The platform identity an event is for (`shopify:...`).
fn customer_of(event: &PlatformEvent) -> String {
    match &event.member {
        loyalty_core::webhooks::MemberRef::Identity(customer) => customer.clone(),
        other => panic!("the fixture's order names its customer, not {other:?}"),
    }
}

/// A store on a file of its own, in the directory returned: reads do not go through its
/// writer, so its commits count writes alone.
fn store_on_file() -> (SqliteStore, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("links-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    (SqliteStore::open(&dir.join("loyalty.sqlite")).unwrap(), dir)
}

#[tokio::test]
async fn a_redelivered_order_writes_nothing_but_its_message() {
    // GIVEN a store on a file and a queue of its own, and a paid order with a customer and an
    // email, delivered once
    let (store, dir) = store_on_file();
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
    let services = kr_shop_on(&store, now).await;
    let events = paid_order(now);
    let order = events[0]
        .order_key
        .clone()
        .expect("a paid order names its order");
    let first = services.ingest_events("kr-shop", events).await.unwrap();
    let member = store
        .resolve_alias("kr-shop", "order", &order)
        .await
        .unwrap()
        .expect("the order is linked to its member");
    let written = store.commits();
    // WHEN the same order is delivered again
    let again = services
        .ingest_events("kr-shop", paid_order(now))
        .await
        .unwrap();
    // THEN it is the same event, queued again for the queue's deduplication to drop
    assert_eq!(again, first);
    // AND the store was not written: every link was read and found in place
    assert_eq!(store.commits() - written, 0);
    assert_eq!(
        store
            .resolve_alias("kr-shop", "order", &order)
            .await
            .unwrap(),
        Some(member)
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_identity_named_twice_is_linked_once_and_its_event_queued() {
    // GIVEN a paid order whose delivery names the customer's email twice (as customer and as
    // buyer, say), on a store where nothing is linked yet
    let store = SqliteStore::memory().unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
    let services = kr_shop_on(&store, now).await;
    let mut events = paid_order(now);
    let email = email_of(&events[0]);
    events[0].identities.push(email.clone());
    let order = events[0].order_key.clone().unwrap();
    // WHEN it is delivered
    let ids = services.ingest_events("kr-shop", events).await.unwrap();
    // THEN its event is queued, and the order and the email lead to the same member
    assert_eq!(ids.len(), 1);
    let member = store
        .resolve_alias("kr-shop", "order", &order)
        .await
        .unwrap()
        .expect("the order is linked");
    let (kind, value) = email.split_once(':').unwrap();
    assert_eq!(
        store.resolve_alias("kr-shop", kind, value).await.unwrap(),
        Some(member)
    );
}

#[tokio::test]
async fn an_event_that_fails_its_checks_links_nothing() {
    // GIVEN a new customer's paid order dated a day ahead of the clock (out of the program's
    // bounds), on a store where nothing is linked yet
    let (store, dir) = store_on_file();
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
    let services = kr_shop_on(&store, now).await;
    let events = paid_order(now + chrono::Duration::days(1));
    let customer = customer_of(&events[0]);
    let written = store.commits();
    // WHEN it is delivered
    let refused = services.ingest_events("kr-shop", events).await;
    // THEN it is refused as invalid
    assert!(
        matches!(
            refused,
            Err(loyalty_core::services::ServiceError::Invalid { .. })
        ),
        "{refused:?}"
    );
    // AND nothing was written: the customer is not linked to a member
    assert_eq!(store.commits() - written, 0);
    let (kind, value) = customer.split_once(':').unwrap();
    assert_eq!(
        store.resolve_alias("kr-shop", kind, value).await.unwrap(),
        None
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_platform_whose_clock_runs_minutes_fast_is_taken_as_of_now() {
    // GIVEN a paid order dated ten minutes ahead of the clock (the shop's clock runs fast;
    // WooCommerce would never send it again)
    let store = SqliteStore::memory().unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
    let services = kr_shop_on(&store, now).await;
    let events = paid_order(now + chrono::Duration::minutes(10));
    // WHEN it is delivered
    let ids = services.ingest_events("kr-shop", events).await.unwrap();
    // THEN its event is queued, as having happened now
    assert_eq!(ids.len(), 1);
    // AND a POS sale as far ahead is still refused (the till is ours to fix)
    let mut pos = paid_order(now + chrono::Duration::minutes(10));
    pos[0].data["platform"] = serde_json::json!("pos");
    pos[0].id = "pos-sale-1".into();
    let refused = services.ingest_events("kr-shop", pos).await;
    assert!(
        matches!(
            &refused,
            Err(loyalty_core::services::ServiceError::Invalid { problem, .. })
                if *problem == "event-in-future"
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_refund_in_another_currency_than_the_program_s_is_refused() {
    // GIVEN a Cafe24 refund stated in US dollars, for a program in won
    let store = SqliteStore::memory().unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
    let services = kr_shop_on(&store, now).await;
    let body = serde_json::json!({"event_no": 90160, "resource": {
        "order_id": "20261120-0000031", "member_id": "gildong77", "claim_code": "C-1",
        "currency": "USD", "refund_amount": "10.50", "actual_payment_amount": "45.00"}});
    let Normalised::Events(events) = cafe24::normalise(
        body.to_string().as_bytes(),
        loyalty_core::domain::Currency::KRW,
        now,
    )
    .unwrap() else {
        panic!("a refund")
    };
    // WHEN it is delivered THEN it is refused, naming the currency
    let refused = services.ingest_events("kr-shop", events).await;
    assert!(
        matches!(
            &refused,
            Err(loyalty_core::services::ServiceError::Invalid { detail, .. })
                if detail.contains("USD")
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_delivery_of_two_events_that_fail_their_checks_links_nothing() {
    // GIVEN a delivery of two paid orders of a new customer, dated a day ahead of the clock
    // (a bulk delivery: each event's new identity is linked as the event is read)
    let store = SqliteStore::memory().unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
    let services = kr_shop_on(&store, now).await;
    let mut events = paid_order(now + chrono::Duration::days(1));
    events.push(second_order(&events[0]));
    let customer = customer_of(&events[0]);
    // WHEN it is delivered
    let refused = services.ingest_events("kr-shop", events).await;
    // THEN it is refused, and the customer is linked to no member
    assert!(
        matches!(
            refused,
            Err(loyalty_core::services::ServiceError::Invalid { .. })
        ),
        "{refused:?}"
    );
    let (kind, value) = customer.split_once(':').unwrap();
    assert_eq!(
        store.resolve_alias("kr-shop", kind, value).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn two_events_of_one_delivery_for_a_new_customer_credit_one_member() {
    // GIVEN a delivery of two paid orders of one new customer whose email another programme's
    // import linked to a member of its own
    let store = SqliteStore::memory().unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
    let services = kr_shop_on(&store, now).await;
    let mut events = paid_order(now);
    let email = email_of(&events[0]);
    let (kind, value) = email.split_once(':').unwrap();
    store
        .put_alias("kr-shop", kind, value, "imported-7")
        .await
        .unwrap();
    events.push(second_order(&events[0]));
    let customer = customer_of(&events[0]);
    // WHEN it is delivered
    let ids = services.ingest_events("kr-shop", events).await.unwrap();
    // THEN both events are queued, and the customer and both orders lead to the email's member
    assert_eq!(ids.len(), 2);
    let (kind, value) = customer.split_once(':').unwrap();
    assert_eq!(
        store.resolve_alias("kr-shop", kind, value).await.unwrap(),
        Some("imported-7".to_string())
    );
    let orders = [
        paid_order(now)[0].order_key.clone().unwrap(),
        format!("{}-second", paid_order(now)[0].order_key.clone().unwrap()),
    ];
    for order in orders {
        assert_eq!(
            store
                .resolve_alias("kr-shop", "order", &order)
                .await
                .unwrap(),
            Some("imported-7".to_string()),
            "{order}"
        );
    }
}

/// WooCommerce's restatement of an order paid on `paid_at` with one refund made `now`.
fn restated_order(
    paid_at: chrono::DateTime<Utc>,
    now: chrono::DateTime<Utc>,
) -> Vec<PlatformEvent> {
    use loyalty_core::webhooks::MemberRef;
    let member = MemberRef::Identity("woocommerce:77".into());
    let paid = PlatformEvent {
        kind: "purchase.completed",
        id: "woocommerce-order-900-paid".into(),
        member: member.clone(),
        occurred_at: paid_at,
        data: serde_json::json!({"order_id": "900", "currency": "KRW", "channel": "online",
            "shipping": "0", "tax": "0", "platform": "woocommerce",
            "lines": [{"line_id": "1", "sku": "COAT", "category": "apparel", "quantity": 1,
                       "unit_price": "100000", "discount": "0"}]}),
        order_key: Some(loyalty_core::envelope::order_key("woocommerce", "900")),
        identities: Vec::new(),
    };
    let refund = PlatformEvent {
        kind: "purchase.refunded",
        id: "woocommerce-order-900-refund-5".into(),
        member,
        occurred_at: now,
        data: serde_json::json!({"order_id": "900", "refund_id": "5", "amount": "100000",
            "order_total": "100000", "platform": "woocommerce"}),
        order_key: None,
        identities: Vec::new(),
    };
    vec![paid, refund]
}

#[tokio::test]
async fn a_refund_restated_with_a_payment_too_old_to_take_is_taken_without_it() {
    // GIVEN kr-shop, which takes events up to 90 days old
    use loyalty_core::ports::RejectStore as _;
    let store = SqliteStore::memory().unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
    let services = kr_shop_on(&store, now).await;
    // WHEN WooCommerce restates an order paid 120 days ago, with a refund made today
    let events = restated_order(now - chrono::Duration::days(120), now);
    let ids = services.ingest_events("kr-shop", events).await.unwrap();
    // THEN the refund is taken, and the payment is kept among the rejected events, with why
    assert_eq!(ids, vec!["woocommerce-order-900-refund-5"]);
    let rejected = store.rejected_page("kr-shop", 10, None).await.unwrap();
    assert_eq!(rejected.events.len(), 1, "{rejected:?}");
    assert_eq!(rejected.events[0].event_id, "woocommerce-order-900-paid");
    assert!(
        rejected.events[0].reason.contains("days"),
        "{:?}",
        rejected.events[0].reason
    );
    // WHEN an operator replays the payment, and WooCommerce restates the order again
    services
        .replay_rejected("kr-shop", "woocommerce-order-900-paid", "ops")
        .await
        .unwrap();
    let again = restated_order(now - chrono::Duration::days(120), now);
    services.ingest_events("kr-shop", again).await.unwrap();
    // THEN the payment is kept once, still saying it was replayed
    let kept = store
        .rejected_event("kr-shop", "woocommerce-order-900-paid")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.replays, 1, "{kept:?}");
}

#[tokio::test]
async fn an_email_typed_at_another_shop_s_checkout_does_not_take_a_customer_s_orders() {
    // GIVEN a WooCommerce order of customer 66 whose checkout named the Shopify customer's
    // email (nobody verifies it there)
    let store = SqliteStore::memory().unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
    let services = kr_shop_on(&store, now).await;
    let shopify_order = paid_order(now);
    let mut typed = restated_order(now, now).remove(0);
    typed.member = loyalty_core::webhooks::MemberRef::Identity("woocommerce:66".into());
    typed.identities = vec![email_of(&shopify_order[0])];
    services
        .ingest_events("kr-shop", vec![typed])
        .await
        .unwrap();
    // WHEN that Shopify customer, new here, pays an order
    let customer = customer_of(&shopify_order[0]);
    services
        .ingest_events("kr-shop", shopify_order)
        .await
        .unwrap();
    // THEN the order is the Shopify customer's own, not WooCommerce customer 66's
    let (kind, value) = customer.split_once(':').unwrap();
    assert_eq!(
        store.resolve_alias("kr-shop", kind, value).await.unwrap(),
        Some(customer.clone())
    );
}

#[tokio::test]
async fn a_payment_delivered_again_for_another_customer_goes_where_it_went() {
    // GIVEN a paid order of customer 7001234, delivered and linked to its member
    let store = SqliteStore::memory().unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
    let queue = Arc::new(common::Recorder::default());
    let services = Services::new(Arc::new(store.clone()), queue.clone(), FixedClock::at(now));
    common::save_kr_shop(&services).await;
    let events = paid_order(now);
    let first_member = customer_of(&events[0]);
    services.ingest_events("kr-shop", events).await.unwrap();
    // WHEN staff give the order to another customer with another email, and the platform
    // delivers its payment again (WooCommerce restates an order on every change)
    let mut moved = paid_order(now);
    moved[0].member = loyalty_core::webhooks::MemberRef::Identity("shopify:7009999".into());
    moved[0].identities = vec!["email:someone.else@example.com".into()];
    services.ingest_events("kr-shop", moved).await.unwrap();
    // THEN the payment is sent for the member it credited, where its marker stops it, and
    // nothing of the order is linked to the other customer
    let sent = queue.0.lock().unwrap().clone();
    assert_eq!(sent.len(), 2);
    assert!(
        sent.iter().all(|(_, e)| e.member == first_member),
        "{sent:?}"
    );
    for (kind, value) in [
        ("shopify", "7009999"),
        ("email", "someone.else@example.com"),
    ] {
        assert_eq!(
            store.resolve_alias("kr-shop", kind, value).await.unwrap(),
            None
        );
    }
}

#[tokio::test]
async fn a_till_s_referral_naming_the_referrer_by_an_alias_names_its_member() {
    // GIVEN a till's customer pos:010-1111 who is app-42 (linked)
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
    let store = SqliteStore::memory().unwrap();
    let queue = LocalQueue::new(SqliteStore::memory().unwrap(), 3);
    let services = Services::new(
        Arc::new(store.clone()),
        Arc::new(queue.clone()),
        FixedClock::at(now),
    );
    common::save_kr_shop(&services).await;
    store
        .put_alias("kr-shop", "pos", "010-1111", "app-42")
        .await
        .unwrap();
    // WHEN the till records that pos:010-2222 was referred by pos:010-1111
    let body = serde_json::json!({"type": "engagement.recorded", "version": 1,
        "id": "till-ref-1", "program": "kr-shop", "member": "pos:010-2222",
        "occurred_at": now, "data": {"action": "referral", "ref": "r-1",
        "referrer": "pos:010-1111"}})
    .to_string();
    let Normalised::Events(events) =
        loyalty_core::webhooks::pos::normalise("kr-shop", body.as_bytes()).unwrap()
    else {
        panic!("a referral is an event");
    };
    services.ingest_events("kr-shop", events).await.unwrap();
    // THEN the queued event names the referrer's member, where its reward will go
    let queued = queue
        .receive(
            loyalty_core::ports::QueueName::Earn,
            10,
            std::time::Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(queued.len(), 1);
    let envelope: serde_json::Value = serde_json::from_str(&queued[0].body).unwrap();
    assert_eq!(envelope["data"]["referrer"], "app-42", "{envelope}");
}
