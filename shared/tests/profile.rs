//! The member's profile: a birthday changes at most once in 365 days.
#![cfg(feature = "sqlite")]

mod common;

use chrono::{Duration, TimeZone, Utc};
use loyalty_core::ports::FixedClock;
use loyalty_core::services::ServiceError;
use loyalty_core::store::sqlite::SqliteStore;

#[tokio::test]
async fn a_birthday_is_set_then_changed_no_sooner_than_a_year_later() {
    // GIVEN a member on kr-shop
    let store = SqliteStore::memory().unwrap();
    let start = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
    let clock = FixedClock::at(start);
    let (_, services) = common::kr_shop_services(&store, 3, clock.clone()).await;
    let patch =
        |body: &'static str| services.update_profile("kr-shop", "m-1", body.as_bytes(), None);
    // WHEN the birthday is set THEN it is kept, with the day it was set
    let profile = patch(r#"{"birthday": "03-15", "anniversary": "2020-06-01"}"#)
        .await
        .unwrap();
    assert_eq!(profile.birthday.as_deref(), Some("03-15"));
    assert_eq!(
        profile.birthday_set_on,
        Some(chrono::NaiveDate::from_ymd_opt(2026, 11, 22).unwrap())
    );
    // WHEN it is moved the same day THEN 409, and setting the same one again is fine
    let moved = patch(r#"{"birthday": "11-23"}"#).await;
    assert!(
        matches!(
            moved,
            Err(ServiceError::Conflict {
                problem: "birthday-recently-changed",
                ..
            })
        ),
        "{moved:?}"
    );
    assert!(patch(r#"{"birthday": "03-15"}"#).await.is_ok());
    // WHEN a year has passed THEN it can be changed
    clock.set(start + Duration::days(365));
    assert_eq!(
        patch(r#"{"birthday": "02-29"}"#)
            .await
            .unwrap()
            .birthday
            .as_deref(),
        Some("02-29")
    );
    // AND what is not a month and day, or an unknown field, is refused
    for bad in [
        r#"{"birthday": "13-01"}"#,
        r#"{"birthday": "3-15"}"#,
        r#"{"birthday": "02-30"}"#,
        r#"{"nickname": "x"}"#,
    ] {
        assert!(
            matches!(patch(bad).await, Err(ServiceError::Invalid { .. })),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn an_anniversary_is_a_past_day_changed_no_sooner_than_a_year_later() {
    // GIVEN a member on kr-shop who set an anniversary today
    let store = SqliteStore::memory().unwrap();
    let start = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
    let clock = FixedClock::at(start);
    let (_, services) = common::kr_shop_services(&store, 3, clock.clone()).await;
    let patch =
        |body: &'static str| services.update_profile("kr-shop", "m-1", body.as_bytes(), None);
    let set = patch(r#"{"anniversary": "2020-06-01"}"#).await.unwrap();
    assert_eq!(
        set.anniversary_set_on,
        Some(chrono::NaiveDate::from_ymd_opt(2026, 11, 22).unwrap())
    );
    // WHEN it is moved to tomorrow's day of an earlier year, the same day
    let moved = patch(r#"{"anniversary": "2000-11-23"}"#).await;
    // THEN 409 (the yearly bonus cannot be fetched forward), and the same one again is fine
    assert!(
        matches!(
            moved,
            Err(ServiceError::Conflict {
                problem: "anniversary-recently-changed",
                ..
            })
        ),
        "{moved:?}"
    );
    assert!(patch(r#"{"anniversary": "2020-06-01"}"#).await.is_ok());
    // AND a day still to come, or before 1900, is refused even a year later
    clock.set(start + Duration::days(365));
    for bad in [
        r#"{"anniversary": "2027-11-23"}"#,
        r#"{"anniversary": "0001-01-01"}"#,
    ] {
        assert!(
            matches!(patch(bad).await, Err(ServiceError::Invalid { .. })),
            "{bad}"
        );
    }
    // AND a year later it can be changed
    let changed = patch(r#"{"anniversary": "2019-05-05"}"#).await.unwrap();
    assert_eq!(
        changed.anniversary,
        chrono::NaiveDate::from_ymd_opt(2019, 5, 5)
    );
}

#[tokio::test]
async fn a_merge_keeps_when_the_anniversary_it_brings_was_set() {
    // GIVEN m-a, who set an anniversary today, and m-b, who has none
    let store = SqliteStore::memory().unwrap();
    let start = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
    let clock = FixedClock::at(start);
    let (_, services) = common::kr_shop_services(&store, 3, clock.clone()).await;
    let adjust = br#"{"points": 10, "reason": "opening"}"#;
    for member in ["m-a", "m-b"] {
        services
            .adjust("kr-shop", member, "ops", None, adjust)
            .await
            .unwrap();
    }
    services
        .update_profile("kr-shop", "m-a", br#"{"anniversary": "2020-06-01"}"#, None)
        .await
        .unwrap();
    // WHEN m-a is merged into m-b, and m-b moves the anniversary the same day
    services
        .merge_members("kr-shop", "m-b", "m-a", "the same customer", "ops")
        .await
        .unwrap();
    let moved = services
        .update_profile("kr-shop", "m-b", br#"{"anniversary": "2000-11-23"}"#, None)
        .await;
    // THEN 409: the anniversary came with when it was set
    assert!(
        matches!(
            moved,
            Err(ServiceError::Conflict {
                problem: "anniversary-recently-changed",
                ..
            })
        ),
        "{moved:?}"
    );
}

#[tokio::test]
async fn a_member_merged_away_cannot_set_a_profile_that_nothing_would_read() {
    // GIVEN m-a merged into m-b (m-a's app login still leads to m-a until its link moves)
    let store = SqliteStore::memory().unwrap();
    let clock = FixedClock::at(Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap());
    let (_, services) = common::kr_shop_services(&store, 3, clock.clone()).await;
    let adjust = br#"{"points": 10, "reason": "opening"}"#;
    for member in ["m-a", "m-b"] {
        services
            .adjust("kr-shop", member, "ops", None, adjust)
            .await
            .unwrap();
    }
    services
        .merge_members("kr-shop", "m-b", "m-a", "the same customer", "ops")
        .await
        .unwrap();
    // WHEN m-a sets a birthday
    let set = services
        .update_profile("kr-shop", "m-a", br#"{"birthday": "05-17"}"#, None)
        .await;
    // THEN 409 member-merged, and nothing is written to m-a (before: 200, and the merged
    // account's birthday could still pay a greeting to m-b)
    assert!(
        matches!(
            set,
            Err(ServiceError::Conflict {
                problem: "member-merged",
                ..
            })
        ),
        "{set:?}"
    );
    let account = loyalty_core::ports::MemberStore::load_member(&store, "kr-shop", "m-a", &[])
        .await
        .unwrap()
        .account
        .unwrap();
    assert_eq!(account.profile.birthday, None);
}
