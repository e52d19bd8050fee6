//! Pay with points: holds captured, voided, or expired, with a clock the test moves.
#![cfg(feature = "sqlite")]

mod common;

use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use loyalty_core::domain::EntryKind;
use loyalty_core::ports::{FixedClock, MemberStore, RedemptionStatus, RedemptionStore};
use loyalty_core::services::jobs::Job;
use loyalty_core::services::{ServiceError, Services};
use loyalty_core::store::sqlite::SqliteStore;
use serde_json::json;

async fn stack() -> (Services, Arc<FixedClock>, SqliteStore) {
    stack_of(include_str!("../../examples/kr-shop.toml"), 10_000).await
}

/// kr-shop as `program` says, and m-1 with `points`, on 22 November 2026.
async fn stack_of(program: &str, points: i64) -> (Services, Arc<FixedClock>, SqliteStore) {
    let store = SqliteStore::memory().unwrap();
    let clock = FixedClock::at(Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap());
    let (_, services) = common::kr_shop_services(&store, 3, clock.clone()).await;
    services
        .put_program(
            "kr-shop",
            program,
            loyalty_core::services::programs::ProgramFormat::Toml,
        )
        .await
        .unwrap();
    let gift = json!({"points": points, "reason": "gift"}).to_string();
    services
        .adjust("kr-shop", "m-1", "ops", None, gift.as_bytes())
        .await
        .unwrap();
    (services, clock, store)
}

fn hold(points: i64, order: &str) -> Vec<u8> {
    json!({"reward": "pay-with-points", "points": points, "order_ref": order})
        .to_string()
        .into_bytes()
}

#[tokio::test]
async fn a_hold_not_captured_in_time_returns_its_points() {
    // GIVEN 4,000 of a member's 10,000 points held for an order (30 minutes, kr-shop)
    let (services, clock, store) = stack().await;
    let held = services
        .redeem(
            "kr-shop",
            "m-1",
            "m-1",
            Some("h-1"),
            &hold(4_000, "order-9"),
        )
        .await
        .unwrap();
    assert_eq!(
        (held.status, held.body["status"].as_str()),
        (201, Some("held"))
    );
    assert_eq!(held.body["balance"], 6_000);
    assert_eq!(held.body["value"], 4_000, "1 point is worth 1 KRW");
    let id = held.body["id"].as_str().unwrap().to_string();
    // WHEN 31 minutes pass without a capture
    clock.set(Utc.with_ymd_and_hms(2026, 11, 22, 3, 31, 0).unwrap());
    // THEN the member already sees the points back (none held: before, the view did not say
    // what was held), and the hold as voided
    let view = services.member_view("kr-shop", "m-1").await.unwrap();
    assert_eq!((view.balance, view.held), (10_000, 0));
    let redemption = services.redemption("kr-shop", "m-1", &id).await.unwrap();
    assert_eq!(redemption.status, RedemptionStatus::Voided);
    // AND the shop can no longer capture it
    let late = services
        .capture_hold("kr-shop", &id, br#"{"order_ref": "order-9"}"#, "shop")
        .await;
    assert!(
        matches!(
            late,
            Err(ServiceError::Conflict {
                problem: "hold-closed",
                ..
            })
        ),
        "{late:?}"
    );
    // WHEN release-pending runs THEN the return is written, once, and balance == sum(ledger)
    let report = services
        .run_job(Job::ReleasePending, "kr-shop", None, &|_| {})
        .await
        .unwrap();
    assert_eq!(report.changed, 1);
    let account = store
        .load_member("kr-shop", "m-1", &[])
        .await
        .unwrap()
        .account
        .unwrap();
    assert_eq!((account.balance, account.holds.len()), (10_000, 0));
    let page = store
        .ledger_page("kr-shop", "m-1", 100, None)
        .await
        .unwrap();
    assert_eq!(page.entries.iter().map(|e| e.points).sum::<i64>(), 10_000);
    assert_eq!(
        page.entries
            .iter()
            .filter(|e| e.kind == EntryKind::Reverse)
            .count(),
        1
    );
}

#[tokio::test]
async fn a_void_of_a_hold_expired_a_moment_ago_is_what_happened_and_is_written() {
    // GIVEN 4,000 points held for an order, past its 30 minutes, before any job ran
    let (services, clock, store) = stack().await;
    let held = services
        .redeem(
            "kr-shop",
            "m-1",
            "m-1",
            Some("h-1"),
            &hold(4_000, "order-9"),
        )
        .await
        .unwrap();
    let id = held.body["id"].as_str().unwrap().to_string();
    clock.set(Utc.with_ymd_and_hms(2026, 11, 22, 3, 31, 0).unwrap());
    // WHEN the shop voids it
    let voided = services.void_hold("kr-shop", &id, "shop").await.unwrap();
    // THEN it is voided, as the shop asked, and stored so
    assert_eq!(voided["status"], "voided", "{voided}");
    let stored = store
        .redemption("kr-shop", "m-1", &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, RedemptionStatus::Voided);
    // AND the points came back once: the job finds nothing left to write
    let report = services
        .run_job(Job::ReleasePending, "kr-shop", None, &|_| {})
        .await
        .unwrap();
    assert_eq!(report.changed, 0, "{report:?}");
    let page = store
        .ledger_page("kr-shop", "m-1", 100, None)
        .await
        .unwrap();
    assert_eq!(page.entries.iter().map(|e| e.points).sum::<i64>(), 10_000);
    let account = store
        .load_member("kr-shop", "m-1", &[])
        .await
        .unwrap()
        .account
        .unwrap();
    assert_eq!((account.balance, account.holds.len()), (10_000, 0));
}

#[tokio::test]
async fn a_captured_hold_stays_spent_and_a_voided_one_comes_back() {
    let (services, clock, _) = stack().await;
    // GIVEN two holds of 2,000 points
    let first = services
        .redeem(
            "kr-shop",
            "m-1",
            "m-1",
            Some("h-1"),
            &hold(2_000, "order-1"),
        )
        .await
        .unwrap();
    let second = services
        .redeem(
            "kr-shop",
            "m-1",
            "m-1",
            Some("h-2"),
            &hold(2_000, "order-2"),
        )
        .await
        .unwrap();
    let (a, b) = (
        first.body["id"].as_str().unwrap(),
        second.body["id"].as_str().unwrap(),
    );
    // WHEN the shop captures the first (twice) and voids the second
    assert_eq!(
        services
            .capture_hold("kr-shop", a, br#"{"order_ref": "order-1"}"#, "shop")
            .await
            .unwrap()["status"],
        "captured"
    );
    assert_eq!(
        services
            .capture_hold("kr-shop", a, br#"{"order_ref": "order-1"}"#, "shop")
            .await
            .unwrap()["status"],
        "captured"
    );
    assert_eq!(
        services.void_hold("kr-shop", b, "shop").await.unwrap()["status"],
        "voided"
    );
    // THEN 8,000 is left, also after the holds' expiry
    clock.set(Utc.with_ymd_and_hms(2026, 11, 22, 5, 0, 0).unwrap() + Duration::minutes(1));
    assert_eq!(
        services
            .member_view("kr-shop", "m-1")
            .await
            .unwrap()
            .balance,
        8_000
    );
    // AND fewer points than the program's minimum (1,000) are refused
    let small = services
        .redeem("kr-shop", "m-1", "m-1", Some("h-3"), &hold(500, "order-3"))
        .await;
    assert!(
        matches!(small, Err(ServiceError::Invalid { .. })),
        "{small:?}"
    );
}

#[tokio::test]
async fn a_hold_worth_more_than_any_checkout_is_refused_not_wrapped() {
    // GIVEN points worth 10,000,000 KRW each at checkout, and a member with 10^12 points
    let rich = include_str!("../../examples/kr-shop.toml").replacen(
        "value = \"1\"           # ... is worth 1 KRW at checkout",
        "value = \"10000000\"",
        1,
    );
    let (services, _, _) = stack_of(&rich, 1_000_000_000_000).await;
    // WHEN all of them are held for a checkout (10^19 KRW, past 64 bits)
    let refused = services
        .redeem(
            "kr-shop",
            "m-1",
            "m-1",
            Some("h-big"),
            &hold(1_000_000_000_000, "order-1"),
        )
        .await;
    // THEN it is refused, and nothing is held
    assert!(
        matches!(
            &refused,
            Err(ServiceError::Invalid {
                problem: "invalid-redemption",
                ..
            })
        ),
        "{refused:?}"
    );
    let view = services.member_view("kr-shop", "m-1").await.unwrap();
    assert_eq!(view.balance, 1_000_000_000_000);
    // AND a hold whose value fits is taken, valued exactly
    let held = services
        .redeem(
            "kr-shop",
            "m-1",
            "m-1",
            Some("h-ok"),
            &hold(1_000_000, "order-2"),
        )
        .await
        .unwrap();
    assert_eq!(held.body["value"], 10_000_000_000_000i64);
}

#[tokio::test]
async fn a_suspended_member_holds_nothing_at_checkout() {
    // GIVEN a member with 10,000 points, suspended by an operator
    let (services, _, _) = stack().await;
    services
        .suspend("kr-shop", "m-1", "chargebacks under review", "ops")
        .await
        .unwrap();
    // WHEN the member's app holds 5,000 of them for a checkout
    let refused = services
        .redeem(
            "kr-shop",
            "m-1",
            "m-1",
            Some("h-sus"),
            &hold(5_000, "order-3"),
        )
        .await;
    // THEN it is refused as for any reward, and nothing is held
    assert!(
        matches!(
            &refused,
            Err(ServiceError::Forbidden {
                problem: "member-suspended",
                ..
            })
        ),
        "{refused:?}"
    );
    let view = services.member_view("kr-shop", "m-1").await.unwrap();
    assert_eq!(view.balance, 10_000);
}

#[tokio::test]
async fn a_suspended_member_s_coupon_is_not_used_at_the_till_until_resumed() {
    // GIVEN a member with a 5,000-point coupon, then suspended by an operator
    let (services, _, _) = stack().await;
    let coupon = services
        .redeem(
            "kr-shop",
            "m-1",
            "m-1",
            Some("c-sus"),
            br#"{"reward": "coupon-5000"}"#,
        )
        .await
        .unwrap();
    let code = coupon.body["code"].as_str().unwrap().to_string();
    services
        .suspend("kr-shop", "m-1", "chargebacks under review", "ops")
        .await
        .unwrap();
    // WHEN the till uses the coupon
    let till = br#"{"order_ref": "till-1"}"#;
    let refused = services.consume_coupon("kr-shop", &code, till).await;
    // THEN it is refused, and the coupon is still unused
    assert!(
        matches!(
            &refused,
            Err(ServiceError::Forbidden {
                problem: "member-suspended",
                ..
            })
        ),
        "{refused:?}"
    );
    // AND the till's check says so beforehand (before: "valid", then refused at use)
    let view = services.check_coupon("kr-shop", &code).await.unwrap();
    assert_eq!((view.valid, view.status), (false, "suspended"));
    // WHEN the member is resumed THEN the check says valid and the till uses it
    services
        .resume("kr-shop", "m-1", "cleared", Default::default(), "ops")
        .await
        .unwrap();
    let view = services.check_coupon("kr-shop", &code).await.unwrap();
    assert_eq!((view.valid, view.status), (true, "valid"));
    let used = services
        .consume_coupon("kr-shop", &code, till)
        .await
        .unwrap();
    assert_eq!(used.status, "consumed");
}

#[tokio::test]
async fn a_suspended_member_s_hold_is_not_captured_until_resumed_and_may_be_voided() {
    // GIVEN two holds of a member's points for two orders, then the member suspended
    let (services, _, _) = stack().await;
    let mut ids = Vec::new();
    for (key, order) in [("h-sus-1", "order-s1"), ("h-sus-2", "order-s2")] {
        let held = services
            .redeem("kr-shop", "m-1", "m-1", Some(key), &hold(1_000, order))
            .await
            .unwrap();
        ids.push(held.body["id"].as_str().unwrap().to_string());
    }
    services
        .suspend("kr-shop", "m-1", "chargebacks under review", "ops")
        .await
        .unwrap();
    // WHEN the shop captures the first
    let refused = services
        .capture_hold("kr-shop", &ids[0], br#"{"order_ref": "order-s1"}"#, "shop")
        .await;
    // THEN it is refused as the member's coupon would be (before: captured)
    assert!(
        matches!(
            &refused,
            Err(ServiceError::Forbidden {
                problem: "member-suspended",
                ..
            })
        ),
        "{refused:?}"
    );
    // AND the second is voided, its points back
    services
        .void_hold("kr-shop", &ids[1], "shop")
        .await
        .unwrap();
    let view = services.member_view("kr-shop", "m-1").await.unwrap();
    assert_eq!(
        (view.balance, view.held),
        (9_000, 1_000),
        "one hold still open"
    );
    // WHEN the member is resumed THEN the first is captured
    services
        .resume("kr-shop", "m-1", "cleared", Default::default(), "ops")
        .await
        .unwrap();
    let captured = services
        .capture_hold("kr-shop", &ids[0], br#"{"order_ref": "order-s1"}"#, "shop")
        .await
        .unwrap();
    assert_eq!(captured["status"], "captured");
}

#[tokio::test]
async fn a_coupon_a_survivor_inherited_waits_while_the_survivor_is_suspended() {
    // GIVEN m-1's 5,000-point coupon, m-1 merged into m-2, and m-2 then suspended
    let (services, _, _) = stack().await;
    let coupon = services
        .redeem(
            "kr-shop",
            "m-1",
            "m-1",
            Some("c-merged"),
            br#"{"reward": "coupon-5000"}"#,
        )
        .await
        .unwrap();
    let code = coupon.body["code"].as_str().unwrap().to_string();
    let opening = br#"{"points": 10, "reason": "opening"}"#;
    services
        .adjust("kr-shop", "m-2", "ops", None, opening)
        .await
        .unwrap();
    services
        .merge_members("kr-shop", "m-2", "m-1", "the same customer", "ops")
        .await
        .unwrap();
    services
        .suspend("kr-shop", "m-2", "chargebacks under review", "ops")
        .await
        .unwrap();
    // WHEN the till uses the coupon
    let till = br#"{"order_ref": "till-9"}"#;
    let refused = services.consume_coupon("kr-shop", &code, till).await;
    // THEN it is refused as the survivor's own would be (before: 200, the coupon still named
    // m-1, whose merged account is never suspended), and it is still unused
    assert!(
        matches!(
            &refused,
            Err(ServiceError::Forbidden {
                problem: "member-suspended",
                ..
            })
        ),
        "{refused:?}"
    );
    let view = services.check_coupon("kr-shop", &code).await.unwrap();
    assert_eq!((view.valid, view.status), (false, "suspended"));
}

#[tokio::test]
async fn a_hold_is_captured_for_its_own_order_only() {
    // GIVEN 3,000 points held for order-a and captured for it
    let (services, _, _) = stack().await;
    let held = services
        .redeem(
            "kr-shop",
            "m-1",
            "m-1",
            Some("h-a"),
            &hold(3_000, "order-a"),
        )
        .await
        .unwrap();
    let id = held.body["id"].as_str().unwrap().to_string();
    let capture = |order: &'static str| {
        let (services, id) = (&services, &id);
        async move {
            let body = json!({"order_ref": order}).to_string();
            services
                .capture_hold("kr-shop", id, body.as_bytes(), "shop")
                .await
        }
    };
    let first = capture("order-a").await.unwrap();
    assert_eq!(
        (&first["status"], &first["points"], &first["order_ref"]),
        (&json!("captured"), &json!(3_000), &json!("order-a"))
    );
    // WHEN the same hold is presented and captured for order-b
    let again = capture("order-b").await;
    // THEN it is refused (before: 200, one hold paying for two checkouts), and the member
    // still has 7,000
    assert!(
        matches!(
            again,
            Err(ServiceError::Conflict {
                problem: "hold-for-another-order",
                ..
            })
        ),
        "{again:?}"
    );
    let view = services.member_view("kr-shop", "m-1").await.unwrap();
    assert_eq!(view.balance, 7_000);
    // AND a capture for order-a again is the same capture, saying what it paid
    let repeat = capture("order-a").await.unwrap();
    assert_eq!(repeat, first);
    // AND an open hold is refused for another order too, before it is captured
    let open = services
        .redeem(
            "kr-shop",
            "m-1",
            "m-1",
            Some("h-c"),
            &hold(1_000, "order-c"),
        )
        .await
        .unwrap();
    let body = br#"{"order_ref": "order-d"}"#;
    let other = services
        .capture_hold("kr-shop", open.body["id"].as_str().unwrap(), body, "shop")
        .await;
    assert!(
        matches!(other, Err(ServiceError::Conflict { .. })),
        "{other:?}"
    );
}

#[tokio::test]
async fn a_capture_retried_after_an_operator_reversed_the_hold_is_told_so() {
    // GIVEN a hold captured for its order, then reversed by an operator (the order refunded)
    let (services, _clock, _store) = stack().await;
    let held = services
        .redeem(
            "kr-shop",
            "m-1",
            "m-1",
            Some("h-r"),
            &hold(4_000, "order-r"),
        )
        .await
        .unwrap();
    let id = held.body["id"].as_str().unwrap().to_string();
    let capture = br#"{"order_ref": "order-r"}"#;
    services
        .capture_hold("kr-shop", &id, capture, "shop")
        .await
        .unwrap();
    let reason = json!({"reason": "order refunded"}).to_string();
    services
        .reverse_redemption("kr-shop", "m-1", &id, "ops", reason.as_bytes())
        .await
        .unwrap();
    // WHEN the shop retries its capture
    let retried = services.capture_hold("kr-shop", &id, capture, "shop").await;
    // THEN it is refused as closed by the reversal (before: "voided, or expired at ...")
    match retried {
        Err(ServiceError::Conflict {
            problem: "hold-closed",
            detail,
        }) => assert!(detail.contains("captured, then reversed"), "{detail}"),
        other => panic!("{other:?}"),
    }
}
