//! Adjustments waiting for a second operator: what a retry with the same Idempotency-Key gets,
//! and for how long, with a clock the test moves.
#![cfg(feature = "sqlite")]

mod common;

use chrono::{Duration, TimeZone, Utc};
use std::sync::Arc;

use loyalty_core::ports::{Clock, FixedClock, ParkingStore};
use loyalty_core::services::safeguards::{APPROVALS_KEY, DECIDED_KEY};
use loyalty_core::services::Services;
use loyalty_core::store::sqlite::SqliteStore;
use serde_json::json;

/// kr-shop asking a second operator for adjustments above 10,000, on 1 December 2026.
async fn stack() -> (SqliteStore, Arc<FixedClock>, Services) {
    let store = SqliteStore::memory().unwrap();
    let clock = FixedClock::at(Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap());
    let (_, services) = common::kr_shop_services(&store, 3, clock.clone()).await;
    common::save_kr_shop_with(
        &services,
        "[safeguards]\nadjustment_approval_above = 10000\n",
    )
    .await;
    (store, clock, services)
}

#[tokio::test]
async fn a_decided_approval_answers_its_key_for_a_week_and_is_then_forgotten() {
    // GIVEN kr-shop asking a second operator for adjustments above 10,000, and ops-1's request
    // for 50,000 sent with key k-1 and approved by ops-2
    let (store, clock, services) = stack().await;
    let body = json!({"points": 50_000, "reason": "store credit"}).to_string();
    let ask = |key: &'static str| {
        let (services, body) = (&services, &body);
        async move {
            services
                .adjust("kr-shop", "m-1", "ops-1", Some(key), body.as_bytes())
                .await
                .unwrap()
        }
    };
    let asked = ask("k-1").await;
    let id = asked.body["id"].as_str().unwrap().to_string();
    services
        .approve_adjustment("kr-shop", &id, "ops-2")
        .await
        .unwrap();
    // WHEN ops-1 retries the request with k-1 six days later
    clock.set(clock.now() + Duration::days(6));
    let retried = ask("k-1").await;
    // THEN it gets the approval's answer
    assert_eq!(
        (retried.status, retried.body["approved_by"].as_str()),
        (201, Some("ops-2"))
    );
    // WHEN ops-1 sends k-1 again eight days after the decision
    clock.set(clock.now() + Duration::days(2));
    let again = ask("k-1").await;
    // THEN the key names nothing any more: it is a new request waiting for approval
    assert_eq!(
        (again.status, again.body["status"].as_str()),
        (202, Some("pending_approval"))
    );
    // WHEN ops-3 declines that one
    services
        .decline_adjustment("kr-shop", &id, "ops-3", br#"{"reason": "asked twice"}"#)
        .await
        .unwrap();
    // THEN only the new decision is kept, and the key answers it
    let kept = store.parked("kr-shop", DECIDED_KEY).await.unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].1.contains("ops-3"), "{kept:?}");
    let last = ask("k-1").await;
    assert_eq!(
        (last.status, last.body["status"].as_str()),
        (200, Some("declined"))
    );
}

#[tokio::test]
async fn a_key_used_again_after_its_decision_expired_is_a_new_adjustment() {
    // GIVEN ops-1's request for 50,000 for m-1 with key k-1, approved by ops-2
    let (_store, clock, services) = stack().await;
    let body = json!({"points": 50_000, "reason": "store credit"}).to_string();
    let asked = services
        .adjust("kr-shop", "m-1", "ops-1", Some("k-1"), body.as_bytes())
        .await
        .unwrap();
    let id = asked.body["id"].as_str().unwrap().to_string();
    services
        .approve_adjustment("kr-shop", &id, "ops-2")
        .await
        .unwrap();
    // WHEN ops-1 sends k-1 again eight days later, and ops-2 approves that too
    clock.set(clock.now() + Duration::days(8));
    let again = services
        .adjust("kr-shop", "m-1", "ops-1", Some("k-1"), body.as_bytes())
        .await
        .unwrap();
    assert_eq!(again.status, 202);
    let approved = services
        .approve_adjustment("kr-shop", &id, "ops-2")
        .await
        .unwrap();
    // THEN the member has both adjustments
    assert_eq!(approved.body["balance"].as_i64(), Some(100_000));
}

#[tokio::test]
async fn an_approval_for_a_member_merged_since_it_was_asked_for_is_refused() {
    // GIVEN m-1 and m-2 with a few points each, and ops-1's request of 50,000 for m-1
    let (_, _, services) = stack().await;
    for member in ["m-1", "m-2"] {
        let small = json!({"points": 100, "reason": "welcome"}).to_string();
        services
            .adjust("kr-shop", member, "ops-1", None, small.as_bytes())
            .await
            .unwrap();
    }
    let body = json!({"points": 50_000, "reason": "store credit"}).to_string();
    let asked = services
        .adjust("kr-shop", "m-1", "ops-1", Some("k-merge"), body.as_bytes())
        .await
        .unwrap();
    let id = asked.body["id"].as_str().unwrap().to_string();
    // WHEN m-1 is merged into m-2, and ops-2 then approves the request
    services
        .merge_named("kr-shop", "m-2", "m-1", "same person", "ops-3")
        .await
        .unwrap();
    let approved = services.approve_adjustment("kr-shop", &id, "ops-2").await;
    // THEN it is refused as a direct adjustment of m-1 would be, and no points land anywhere
    match approved {
        Err(loyalty_core::services::ServiceError::Conflict { problem, .. }) => {
            assert_eq!(problem, "member-merged")
        }
        other => panic!("{other:?}"),
    }
    let m1 = services.member_view("kr-shop", "m-1").await.unwrap();
    let m2 = services.member_view("kr-shop", "m-2").await.unwrap();
    assert_eq!((m1.balance, m2.balance), (0, 200));
}

#[tokio::test]
async fn an_adjustment_waiting_for_a_member_erased_goes_with_the_erasure() {
    // GIVEN m-1 with a few points, and ops-1's request of 50,000 for it (a short id, which the
    // erasure does not look for in the texts of waiting requests)
    let (store, clock, services) = stack().await;
    let small = json!({"points": 100, "reason": "welcome"}).to_string();
    services
        .adjust("kr-shop", "m-1", "ops-1", None, small.as_bytes())
        .await
        .unwrap();
    let body = json!({"points": 50_000, "reason": "store credit"}).to_string();
    let asked = services
        .adjust("kr-shop", "m-1", "ops-1", Some("k-erased"), body.as_bytes())
        .await
        .unwrap();
    let id = asked.body["id"].as_str().unwrap().to_string();
    // WHEN m-1 is erased an hour later
    clock.set(clock.now() + Duration::hours(1));
    let report = services
        .erase_member("kr-shop", "m-1", "erasure request", "ops-3")
        .await
        .unwrap();
    // THEN the waiting request went with it (its reason may name the person), and is counted
    assert_eq!(report.events, 1);
    assert!(services
        .pending_adjustments("kr-shop")
        .await
        .unwrap()
        .is_empty());
    // WHEN the id m-1 is given to someone new, and ops-2 then tries to approve the request
    services
        .adjust("kr-shop", "m-1", "ops-1", None, small.as_bytes())
        .await
        .unwrap();
    let approved = services.approve_adjustment("kr-shop", &id, "ops-2").await;
    // THEN nothing waits to be approved, and the new m-1 has only its own points (before: the
    // erased person's 50,000 on top)
    match approved {
        Err(loyalty_core::services::ServiceError::NotFound { problem, .. }) => {
            assert_eq!(problem, "not-waiting")
        }
        other => panic!("{other:?}"),
    }
    let state = loyalty_core::ports::MemberStore::load_member(&store, "kr-shop", "m-1", &[])
        .await
        .unwrap();
    assert_eq!(state.account.map(|a| a.balance), Some(100));
}

#[tokio::test]
async fn an_approval_applied_but_not_yet_recorded_cannot_then_be_declined() {
    // GIVEN ops-1's request of 50,000 for m-1, approved by ops-2, whose run stopped after the
    // points were written and before the request left the waiting list
    let (store, _, services) = stack().await;
    let body = json!({"points": 50_000, "reason": "store credit"}).to_string();
    let asked = services
        .adjust("kr-shop", "m-1", "ops-1", Some("k-race"), body.as_bytes())
        .await
        .unwrap();
    let id = asked.body["id"].as_str().unwrap().to_string();
    let waiting = store.parked("kr-shop", APPROVALS_KEY).await.unwrap();
    services
        .approve_adjustment("kr-shop", &id, "ops-2")
        .await
        .unwrap();
    for (parked_id, parked_body) in &waiting {
        store
            .park("kr-shop", APPROVALS_KEY, parked_id, parked_body)
            .await
            .unwrap();
    }
    // WHEN ops-3 declines it
    let declined = services
        .decline_adjustment("kr-shop", &id, "ops-3", br#"{"reason": "too much"}"#)
        .await;
    // THEN it is refused: the points are the member's, and approving again records that
    match declined {
        Err(loyalty_core::services::ServiceError::Conflict { problem, .. }) => {
            assert_eq!(problem, "already-approved")
        }
        other => panic!("{other:?}"),
    }
    let again = services
        .approve_adjustment("kr-shop", &id, "ops-3")
        .await
        .unwrap();
    assert_eq!(again.status, 201);
    let m1 = services.member_view("kr-shop", "m-1").await.unwrap();
    assert_eq!(m1.balance, 50_000);
    assert!(store
        .parked("kr-shop", APPROVALS_KEY)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_decline_not_yet_recorded_cannot_then_be_approved() {
    // GIVEN m-1 with 100 points, and ops-1's request of 50,000 for m-1, declined by ops-3,
    // whose run stopped after its decision was taken and before the request left the waiting
    // list (an approval made at that moment, before: it applied the points ops-3 was told
    // were declined)
    let (store, _, services) = stack().await;
    let opening = json!({"points": 100, "reason": "welcome"}).to_string();
    services
        .adjust("kr-shop", "m-1", "ops-1", None, opening.as_bytes())
        .await
        .unwrap();
    let body = json!({"points": 50_000, "reason": "store credit"}).to_string();
    let asked = services
        .adjust(
            "kr-shop",
            "m-1",
            "ops-1",
            Some("k-decline"),
            body.as_bytes(),
        )
        .await
        .unwrap();
    let id = asked.body["id"].as_str().unwrap().to_string();
    let waiting = store.parked("kr-shop", APPROVALS_KEY).await.unwrap();
    services
        .decline_adjustment("kr-shop", &id, "ops-3", br#"{"reason": "too much"}"#)
        .await
        .unwrap();
    for (parked_id, parked_body) in &waiting {
        store
            .park("kr-shop", APPROVALS_KEY, parked_id, parked_body)
            .await
            .unwrap();
    }
    // WHEN ops-2 approves it
    let approved = services.approve_adjustment("kr-shop", &id, "ops-2").await;
    // THEN it is refused and m-1 has only its 100; declining again completes the decline
    match approved {
        Err(loyalty_core::services::ServiceError::Conflict { problem, .. }) => {
            assert_eq!(problem, "already-declined")
        }
        other => panic!("{other:?}"),
    }
    let m1 = services.member_view("kr-shop", "m-1").await.unwrap();
    assert_eq!(m1.balance, 100);
    services
        .decline_adjustment("kr-shop", &id, "ops-3", br#"{"reason": "too much"}"#)
        .await
        .unwrap();
    assert!(store
        .parked("kr-shop", APPROVALS_KEY)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_key_of_an_adjustment_waiting_for_approval_is_not_taken_by_a_smaller_one() {
    // GIVEN ops-1's request for 50,000 sent with key k-1, waiting for a second operator
    let (_store, _clock, services) = stack().await;
    let adjust = |points: i64| {
        let services = &services;
        async move {
            let body = json!({"points": points, "reason": "store credit"}).to_string();
            services
                .adjust("kr-shop", "m-1", "ops-1", Some("k-1"), body.as_bytes())
                .await
        }
    };
    let asked = adjust(50_000).await.unwrap();
    assert_eq!(asked.status, 202);
    // WHEN ops-1 sends k-1 again with 5,000, under the threshold
    let reused = adjust(5_000).await;
    // THEN it is 422, as for any other request sent with a used key, and nothing is credited
    match reused {
        Err(loyalty_core::services::ServiceError::Unprocessable { problem, .. }) => {
            assert_eq!(problem, "idempotency-key-reused")
        }
        other => panic!("expected 422, got {other:?}"),
    }
    let view = services.member_view("kr-shop", "m-1").await.unwrap();
    assert_eq!(view.balance, 0);
    // AND the first request, sent again, still gets its answer
    assert_eq!(adjust(50_000).await.unwrap().body, asked.body);
}

#[tokio::test]
async fn declining_an_adjustment_of_an_unknown_member_opens_no_account() {
    // GIVEN ops-1's request of 50,000 for m-typo, a member nobody opened
    let (store, _, services) = stack().await;
    let body = json!({"points": 50_000, "reason": "store credit"}).to_string();
    let asked = services
        .adjust("kr-shop", "m-typo", "ops-1", None, body.as_bytes())
        .await
        .unwrap();
    let id = asked.body["id"].as_str().unwrap().to_string();
    // WHEN ops-2 declines it
    services
        .decline_adjustment("kr-shop", &id, "ops-2", br#"{"reason": "mistyped"}"#)
        .await
        .unwrap();
    // THEN m-typo is still no member: no account was opened for it
    let state = loyalty_core::ports::MemberStore::load_member(&store, "kr-shop", "m-typo", &[])
        .await
        .unwrap();
    assert!(state.account.is_none(), "{:?}", state.account);
}

#[tokio::test]
async fn approved_adjustments_count_within_the_daily_limit_of_the_operator_who_asked() {
    // GIVEN kr-shop asking a second operator above 10,000 and letting one operator adjust
    // 60,000 a day, and ops-1's two requests of 40,000 waiting
    let (_store, clock, services) = stack().await;
    common::save_kr_shop_with(
        &services,
        "[safeguards]\nadjustment_approval_above = 10000\noperator_daily_points = 60000\n",
    )
    .await;
    let body = json!({"points": 40_000, "reason": "store credit"}).to_string();
    let mut ids = Vec::new();
    for member in ["m-1", "m-2"] {
        let asked = services
            .adjust("kr-shop", member, "ops-1", None, body.as_bytes())
            .await
            .unwrap();
        assert_eq!(asked.status, 202);
        ids.push(asked.body["id"].as_str().unwrap().to_string());
    }
    // WHEN ops-2 approves both
    let first = services
        .approve_adjustment("kr-shop", &ids[0], "ops-2")
        .await;
    let second = services
        .approve_adjustment("kr-shop", &ids[1], "ops-2")
        .await;
    // THEN the first is applied, and the second would take ops-1 past its day: refused, and
    // still waiting (before: both applied, 80,000 in a day of 60,000)
    assert_eq!(first.unwrap().status, 201);
    match second {
        Err(loyalty_core::services::ServiceError::Conflict { problem, detail }) => {
            assert_eq!(problem, "operator-daily-limit");
            assert!(detail.contains("ops-1"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    let waiting = services.pending_adjustments("kr-shop").await.unwrap();
    assert_eq!(waiting.len(), 1);
    // AND a third request that could not fit ops-1's day is refused when asked
    let third = services
        .adjust("kr-shop", "m-3", "ops-1", None, body.as_bytes())
        .await;
    assert!(
        matches!(&third, Err(loyalty_core::services::ServiceError::Conflict { problem, .. }) if *problem == "operator-daily-limit"),
        "{third:?}"
    );
    // AND one larger than any operator's whole day is refused as such (split it)
    let huge = json!({"points": 70_000, "reason": "store credit"}).to_string();
    match services
        .adjust("kr-shop", "m-4", "ops-5", None, huge.as_bytes())
        .await
    {
        Err(loyalty_core::services::ServiceError::Conflict { problem, detail }) => {
            assert_eq!(problem, "operator-daily-limit");
            assert!(
                detail.contains("more than one operator may adjust in a day"),
                "{detail}"
            );
        }
        other => panic!("{other:?}"),
    }
    // WHEN the next day comes THEN the waiting one is approved
    clock.set(clock.now() + Duration::days(1));
    let later = services
        .approve_adjustment("kr-shop", &ids[1], "ops-2")
        .await
        .unwrap();
    assert_eq!(later.status, 201);
}
