//! What a webhook writes besides its event: the order's member and the customer's identities,
//! each linked once however often the platform delivers the order.
#![cfg(feature = "sqlite")]

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use loyalty_core::ports::{AliasStore as _, FixedClock};
use loyalty_core::queue::local::LocalQueue;
use loyalty_core::services::programs::ProgramFormat;
use loyalty_core::services::Services;
use loyalty_core::store::sqlite::SqliteStore;
use loyalty_core::webhooks::{shopify, Normalised, PlatformEvent};

fn paid_order(now: chrono::DateTime<Utc>) -> Vec<PlatformEvent> {
    let body = include_str!("../../tests/fixtures/shopify/orders-paid.json")
        .replace("__OCCURRED_AT__", &now.to_rfc3339());
    match shopify::normalise("orders/paid", body.as_bytes(), None, now).unwrap() {
        Normalised::Events(events) => events,
        ignored => panic!("the fixture is a paid order: {ignored:?}"),
    }
}

/// Services on `store` with kr-shop saved, and a queue of their own.
async fn kr_shop_on(store: &SqliteStore, now: chrono::DateTime<Utc>) -> Services {
    let queue = LocalQueue::new(SqliteStore::memory().unwrap(), 3);
    let services = Services::new(
        Arc::new(store.clone()),
        Arc::new(queue),
        FixedClock::at(now),
    );
    services
        .put_program(
            "kr-shop",
            include_str!("../../examples/kr-shop.toml"),
            ProgramFormat::Toml,
        )
        .await
        .unwrap();
    services
}

#[tokio::test]
async fn a_redelivered_order_writes_nothing_but_its_message() {
    // GIVEN a store on a file (so that reads do not go through the writer) and a queue of
    // its own, and a paid order with a customer and an email, delivered once
    let dir = std::env::temp_dir().join(format!("links-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = SqliteStore::open(&dir.join("loyalty.sqlite")).unwrap();
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
    let email = events[0]
        .identities
        .iter()
        .find(|i| i.starts_with("email:"))
        .cloned()
        .expect("the fixture's order names an email");
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
