//! How events and admin routes name a member by one of its identities: as the identity is
//! linked, whatever case an email is typed in, and an app's subject that support linked.
#![cfg(feature = "sqlite")]

mod common;

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use common::Recorder;
use loyalty_core::ports::FixedClock;
use loyalty_core::services::Services;
use loyalty_core::store::sqlite::SqliteStore;
use serde_json::json;

async fn stack() -> (Arc<Recorder>, Services) {
    let store = SqliteStore::memory().unwrap();
    let queue = Arc::new(Recorder::default());
    let clock = FixedClock::at(Utc.with_ymd_and_hms(2026, 12, 1, 3, 0, 0).unwrap());
    let services = Services::new(Arc::new(store), queue.clone(), clock);
    common::save_kr_shop(&services).await;
    let opening = br#"{"points": 10, "reason": "opening"}"#;
    for member in ["m-ann", "m-7"] {
        services
            .adjust("kr-shop", member, "ops", None, opening)
            .await
            .unwrap();
    }
    (queue, services)
}

fn sale(id: &str, member: &str) -> Vec<u8> {
    json!({"type": "purchase.completed", "version": 1, "id": id, "program": "kr-shop",
           "member": member, "occurred_at": "2026-12-01T02:00:00Z",
           "data": {"order_id": id, "currency": "KRW",
                    "lines": [{"line_id": "1", "quantity": 1, "unit_price": "10000"}]}})
    .to_string()
    .into_bytes()
}

fn queued_member(queue: &Recorder) -> String {
    let sent = queue.0.lock().unwrap();
    sent.last().unwrap().1.member.clone()
}

#[tokio::test]
async fn an_email_typed_in_another_case_names_the_member_it_is_linked_to() {
    // GIVEN support linked Ann's email, typed as she says it, to m-ann
    let (queue, services) = stack().await;
    services
        .link_named("kr-shop", "m-ann", "email", "Ann@Example.com", "ops")
        .await
        .unwrap();
    // WHEN a till's sale names her as "ANN@example.COM"
    services
        .submit_event("kr-shop", &sale("s-1", "email:ANN@example.COM"))
        .await
        .unwrap();
    // THEN it is queued for m-ann (before: for a new member "email:ANN@example.COM")
    assert_eq!(queued_member(&queue), "m-ann");
    // AND an admin route finds her by it too
    let canonical = services
        .canonical_member("kr-shop", "email:Ann@Example.com")
        .await
        .unwrap();
    assert_eq!(canonical, "m-ann");
    // AND an email linked to nobody names one member whatever its case
    let unlinked = services
        .canonical_member("kr-shop", "email:Bob@Example.com")
        .await
        .unwrap();
    assert_eq!(unlinked, "email:bob@example.com");
}

#[tokio::test]
async fn an_app_login_support_linked_names_its_member_in_events() {
    // GIVEN an app login u-1 with no account of its own, linked by support to m-7
    let (queue, services) = stack().await;
    services
        .link_named("kr-shop", "m-7", "app", "u-1", "ops")
        .await
        .unwrap();
    // WHEN the brand's backend sends a sale naming the login u-1
    services
        .submit_event("kr-shop", &sale("s-2", "u-1"))
        .await
        .unwrap();
    // THEN it is queued for m-7, whose view the app shows (before: a new account u-1, which
    // the app never shows)
    assert_eq!(queued_member(&queue), "m-7");
    // AND a member id that is no app login is itself
    services
        .submit_event("kr-shop", &sale("s-3", "m-ann"))
        .await
        .unwrap();
    assert_eq!(queued_member(&queue), "m-ann");
}

#[tokio::test]
async fn an_account_opened_under_an_email_as_typed_is_still_found_by_it() {
    // GIVEN an account opened before emails were named as linked, under "email:Old@Example.com"
    let (_queue, services) = stack().await;
    let opening = br#"{"points": 10, "reason": "opening"}"#;
    services
        .adjust("kr-shop", "email:Old@Example.com", "ops", None, opening)
        .await
        .unwrap();
    // WHEN an operator names it as it was opened
    let found = services
        .canonical_member("kr-shop", "email:Old@Example.com")
        .await
        .unwrap();
    // THEN it is that account, not the lower-cased form's (which has none)
    assert_eq!(found, "email:Old@Example.com");
}

#[tokio::test]
async fn a_member_merged_along_a_chain_is_sent_to_where_its_points_are_now() {
    // GIVEN c-1 merged into c-2, then c-2 into c-3
    let (_, services) = stack().await;
    let opening = br#"{"points": 10, "reason": "opening"}"#;
    for member in ["c-1", "c-2", "c-3"] {
        services
            .adjust("kr-shop", member, "ops", None, opening)
            .await
            .unwrap();
    }
    for (survivor, from) in [("c-2", "c-1"), ("c-3", "c-2")] {
        services
            .merge_named("kr-shop", survivor, from, "same person", "ops")
            .await
            .unwrap();
    }
    let refused = |r: Result<(), loyalty_core::services::ServiceError>| match r {
        Err(loyalty_core::services::ServiceError::Conflict { problem, detail }) => {
            assert_eq!(problem, "member-merged");
            detail
        }
        other => panic!("{other:?}"),
    };
    // WHEN an operator links an identity to c-1, merges c-1 into c-3, or merges into c-2
    let link = services
        .link_named("kr-shop", "c-1", "email", "c1@example.com", "ops")
        .await
        .map(|_| ());
    let again = services
        .merge_named("kr-shop", "c-3", "c-1", "same person", "ops")
        .await
        .map(|_| ());
    let into_merged = services
        .merge_named("kr-shop", "c-2", "m-7", "same person", "ops")
        .await
        .map(|_| ());
    // THEN each names c-3, where the points are (before: c-2, itself merged away)
    let link = refused(link);
    assert!(link.contains("are c-3's"), "{link}");
    let again = refused(again);
    assert!(again.contains("are c-3's already"), "{again}");
    let into_merged = refused(into_merged);
    assert!(into_merged.ends_with("merge into c-3"), "{into_merged}");
}

#[tokio::test]
async fn a_till_s_phone_member_is_refused_as_a_member_of_its_own() {
    // GIVEN a till's sale delivered for the phone number's own member (which links it so)
    let (_, services) = stack().await;
    let loyalty_core::webhooks::Normalised::Events(events) =
        loyalty_core::webhooks::pos::normalise("kr-shop", &sale("s-till", "pos:010-1212-3434"))
            .unwrap()
    else {
        panic!("a sale is an event");
    };
    services.ingest_events("kr-shop", events).await.unwrap();
    // WHEN support links that phone number to m-ann
    let linked = services
        .link_named("kr-shop", "m-ann", "pos", "010-1212-3434", "ops")
        .await;
    // THEN it is refused as a member of its own, to be merged (before: "identity-linked", to
    // itself)
    match linked {
        Err(loyalty_core::services::ServiceError::Conflict { problem, detail }) => {
            assert_eq!(problem, "identity-has-account");
            assert!(detail.contains("merge it into m-ann"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}
