//! Balance imports through the services on the embedded store.
#![cfg(feature = "sqlite")]

mod common;

use chrono::{TimeZone, Utc};
use loyalty_core::domain::import::{ImportMode, ImportedBalance};
use loyalty_core::imports::{read_balances, BalanceFormat, RowData};
use loyalty_core::ports::FixedClock;
use loyalty_core::services::import::{RowOrigin, RowOutcome};
use loyalty_core::store::sqlite::SqliteStore;

#[tokio::test]
async fn a_row_naming_its_member_by_an_email_in_capitals_is_not_applied_twice() {
    // GIVEN a row `email:Ann@Example.com,500` applied as an earlier version read it: to the
    // member of that very id
    let store = SqliteStore::memory().unwrap();
    let clock = FixedClock::at(Utc.with_ymd_and_hms(2026, 12, 6, 3, 0, 0).unwrap());
    let (_, services) = common::kr_shop_services(&store, 3, clock).await;
    let origin = RowOrigin {
        file_name: "ours.csv",
        digest: "0123456789abcdef",
        line: 2,
        content: "00112233445566ff",
        mode: ImportMode::Add,
        dry_run: None,
    };
    let balance = ImportedBalance {
        points: Some(500),
        tier: None,
        birthday: None,
        expires_on: None,
    };
    let as_before = RowData {
        member: Some("email:Ann@Example.com".into()),
        email: None,
        named_as: None,
        balance,
    };
    let first = services
        .import_balance("kr-shop", "import", &origin, &as_before)
        .await
        .unwrap();
    assert!(
        matches!(first, RowOutcome::Applied { points: 500, .. }),
        "{first:?}"
    );
    // WHEN the same file is imported again, its cell now read as the email ann@example.com
    let file = read_balances(
        BalanceFormat::Csv,
        b"member,points\nemail:Ann@Example.com,500\n",
    )
    .expect("read");
    let row = file.rows[0].read.clone().expect("row");
    assert_eq!(row.email.as_deref(), Some("ann@example.com"));
    let again = services
        .import_balance("kr-shop", "import", &origin, &row)
        .await
        .unwrap();
    // THEN the row is known as imported before: nothing is credited again
    assert!(matches!(again, RowOutcome::Unchanged { .. }), "{again:?}");
}

/// Applies every row of `file` in add mode, as `loyalty import balances` does.
async fn import_file(services: &loyalty_core::services::Services, bytes: &[u8]) -> Vec<RowOutcome> {
    let file = read_balances(BalanceFormat::Csv, bytes).expect("read");
    let mut outcomes = Vec::new();
    for row in &file.rows {
        let origin = RowOrigin {
            file_name: "balances.csv",
            digest: &file.digest,
            line: row.line,
            content: &row.content,
            mode: ImportMode::Add,
            dry_run: None,
        };
        let data = row.read.clone().expect("row");
        let outcome = services
            .import_balance("kr-shop", "import", &origin, &data)
            .await
            .unwrap();
        outcomes.push(outcome);
    }
    outcomes
}

/// Applies the first row of `bytes`, a file named `file_name`, in set mode.
async fn set_first_row(
    services: &loyalty_core::services::Services,
    file_name: &str,
    bytes: &[u8],
) -> RowOutcome {
    let file = read_balances(BalanceFormat::Csv, bytes).expect("read");
    let row = &file.rows[0];
    let origin = RowOrigin {
        file_name,
        digest: &file.digest,
        line: row.line,
        content: &row.content,
        mode: ImportMode::Set,
        dry_run: None,
    };
    services
        .import_balance(
            "kr-shop",
            "import",
            &origin,
            &row.read.clone().expect("row"),
        )
        .await
        .unwrap()
}

async fn balance(services: &loyalty_core::services::Services, member: &str) -> i64 {
    services
        .member_view("kr-shop", member)
        .await
        .unwrap()
        .balance
}

#[tokio::test]
async fn a_balance_file_saved_again_by_a_spreadsheet_credits_nothing_again() {
    // GIVEN a balance file added to the members, m-2 named twice on purpose
    let store = SqliteStore::memory().unwrap();
    let clock = FixedClock::at(Utc.with_ymd_and_hms(2026, 12, 6, 5, 0, 0).unwrap());
    let (_, services) = common::kr_shop_services(&store, 3, clock).await;
    let first = import_file(
        &services,
        b"member,points,tier\nm-1,500,\nm-2,300,\nm-2,300,\nm-3,70,\n",
    )
    .await;
    assert!(first
        .iter()
        .all(|o| matches!(o, RowOutcome::Applied { .. })));
    assert_eq!(balance(&services, "m-2").await, 600);
    // WHEN it is imported again as a spreadsheet saves it: CRLF, quoted cells, a column more,
    // the rows in another order with a blank row between them (every line and byte changed)
    let again = import_file(
        &services,
        b"\"note\",\"member\",\"points\",\"tier\"\r\n\"x\",\"m-3\",\"70\",\"\"\r\n,,,\r\n\"y\",\"m-2\",\"300\",\"\"\r\n\"z\",\"m-1\",\"500\",\"\"\r\n\"w\",\"m-2\",\"300\",\"\"\r\n",
    )
    .await;
    // THEN every row is known as imported before and no balance moved
    assert_eq!(again.len(), 4);
    assert!(
        again.iter().all(
            |o| matches!(o, RowOutcome::Unchanged { reason, .. } if reason == "imported before")
        ),
        "{again:?}"
    );
    assert_eq!(balance(&services, "m-1").await, 500);
    assert_eq!(balance(&services, "m-2").await, 600);
    assert_eq!(balance(&services, "m-3").await, 70);
    // AND a row that says something else (another amount) is another row
    let other = import_file(&services, b"member,points\nm-1,501\n").await;
    assert!(
        matches!(other[0], RowOutcome::Applied { points: 501, .. }),
        "{other:?}"
    );
}

#[tokio::test]
async fn a_row_applied_by_an_earlier_version_under_its_line_is_not_applied_again() {
    // GIVEN a row applied as earlier versions did: its marker made from the file's digest, the
    // mode and the row's line
    let store = SqliteStore::memory().unwrap();
    let now = Utc.with_ymd_and_hms(2026, 12, 6, 5, 0, 0).unwrap();
    let (_, services) = common::kr_shop_services(&store, 3, FixedClock::at(now)).await;
    let bytes = b"member,points\nm-1,500\n";
    let file = read_balances(BalanceFormat::Csv, bytes).expect("read");
    let row = file.rows[0].read.clone().expect("row");
    let program = services.program("kr-shop").await.unwrap();
    let event_id = format!("import-{}-add-2", file.digest);
    let ctx = loyalty_core::domain::EventContext::new(event_id.clone(), now, now);
    let account = loyalty_core::domain::Account::open(&program, "m-1", now);
    let change = account
        .import_balance(&program, ImportMode::Add, &row.balance, "imported", &ctx)
        .unwrap();
    let commit = loyalty_core::ports::Commit {
        marker: Some(loyalty_core::ports::EventMarker {
            source: "import".into(),
            event_id,
        }),
        ..loyalty_core::ports::Commit::new(&program, "m-1", None, change, now)
    };
    loyalty_core::ports::MemberStore::commit(&store, commit)
        .await
        .unwrap();
    assert_eq!(balance(&services, "m-1").await, 500);
    // WHEN this version imports the same file
    let again = import_file(&services, bytes).await;
    // THEN the row is imported before: nothing is credited again
    assert!(
        matches!(&again[0], RowOutcome::Unchanged { reason, .. } if reason == "imported before"),
        "{again:?}"
    );
    assert_eq!(balance(&services, "m-1").await, 500);
}

#[tokio::test]
async fn a_later_file_in_set_mode_may_set_a_balance_back_to_what_an_earlier_one_stated() {
    // GIVEN m-1 set to 100 by one export, then to 50 by a corrected one
    let store = SqliteStore::memory().unwrap();
    let clock = FixedClock::at(Utc.with_ymd_and_hms(2026, 12, 6, 5, 0, 0).unwrap());
    let (_, services) = common::kr_shop_services(&store, 3, clock).await;
    let set = |bytes: &'static [u8]| set_first_row(&services, "export.csv", bytes);
    set(b"member,points\nm-1,100\n").await;
    set(b"member,points,tier\nm-1,50,\n").await;
    assert_eq!(balance(&services, "m-1").await, 50);
    // WHEN a third export states 100 again
    let third = set(b"member,points,note\nm-1,100,again\n").await;
    // THEN the balance is set back to 100
    assert!(
        matches!(third, RowOutcome::Applied { points: 50, .. }),
        "{third:?}"
    );
    assert_eq!(balance(&services, "m-1").await, 100);
}

#[tokio::test]
async fn a_yotpo_row_without_a_balance_sets_nothing_in_set_mode() {
    // GIVEN a member with 5,000 points
    let store = SqliteStore::memory().unwrap();
    let clock = FixedClock::at(Utc.with_ymd_and_hms(2026, 12, 6, 3, 0, 0).unwrap());
    let (_, services) = common::kr_shop_services(&store, 3, clock).await;
    let gift = serde_json::json!({"points": 5_000, "reason": "opening balance"}).to_string();
    services
        .adjust(
            "kr-shop",
            "email:ann@example.com",
            "ops",
            None,
            gift.as_bytes(),
        )
        .await
        .unwrap();
    // WHEN a Yotpo export whose balance column is titled otherwise is imported in set mode
    let file = read_balances(
        BalanceFormat::Yotpo,
        b"Email,Current Points,Birthday\nann@example.com,5000,03/07\n",
    )
    .expect("read");
    let row = &file.rows[0];
    let origin = RowOrigin {
        file_name: "yotpo.csv",
        digest: &file.digest,
        line: row.line,
        content: &row.content,
        mode: ImportMode::Set,
        dry_run: None,
    };
    let outcome = services
        .import_balance(
            "kr-shop",
            "import",
            &origin,
            row.read.as_ref().expect("row"),
        )
        .await
        .unwrap();
    // THEN the balance is left as it was (the birthday is kept), never set to 0
    assert!(
        !matches!(outcome, RowOutcome::Applied { points, .. } if points != 0),
        "{outcome:?}"
    );
    let view = services
        .member_view("kr-shop", "email:ann@example.com")
        .await
        .unwrap();
    assert_eq!(view.balance, 5_000);
}

#[tokio::test]
async fn a_balance_stated_in_set_mode_for_a_member_merged_away_is_refused() {
    // GIVEN pos:0101234 with 500 points merged into m-1, which had 300 of its own
    let store = SqliteStore::memory().unwrap();
    let clock = FixedClock::at(Utc.with_ymd_and_hms(2026, 12, 7, 5, 0, 0).unwrap());
    let (_, services) = common::kr_shop_services(&store, 3, clock).await;
    let set = |bytes: &'static [u8]| set_first_row(&services, "till.csv", bytes);
    set(b"member,points\npos:0101234,500\n").await;
    import_file(&services, b"member,points\nm-1,300\n").await;
    services
        .merge_members("kr-shop", "m-1", "pos:0101234", "same person", "ops")
        .await
        .unwrap();
    assert_eq!(balance(&services, "m-1").await, 800);
    // WHEN a later export of the till states pos:0101234's 500 again, in set mode
    let outcome = set(b"member,points,note\npos:0101234,500,x\n").await;
    // THEN the row is refused, naming the survivor, and the survivor keeps its 800
    match &outcome {
        RowOutcome::Refused { reason } => assert!(reason.contains("merged into m-1"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(balance(&services, "m-1").await, 800);
    // AND the first till file, run again, is known as imported before
    let again = set(b"member,points\npos:0101234,500\n").await;
    assert!(matches!(again, RowOutcome::Unchanged { .. }), "{again:?}");
    assert_eq!(balance(&services, "m-1").await, 800);
}

#[tokio::test]
async fn a_balance_set_while_points_are_held_for_a_checkout_counts_them_whichever_way_it_ends() {
    for capture in [true, false] {
        // GIVEN m-1 with 10,000 points, 4,000 of them held for a checkout
        let store = SqliteStore::memory().unwrap();
        let clock = FixedClock::at(Utc.with_ymd_and_hms(2026, 12, 7, 5, 0, 0).unwrap());
        let (_, services) = common::kr_shop_services(&store, 3, clock).await;
        let gift = serde_json::json!({"points": 10_000, "reason": "gift"}).to_string();
        services
            .adjust("kr-shop", "m-1", "ops", None, gift.as_bytes())
            .await
            .unwrap();
        let hold = r#"{"reward": "pay-with-points", "points": 4000, "order_ref": "o-9"}"#;
        let held = services
            .redeem("kr-shop", "m-1", "m-1", Some("h-1"), hold.as_bytes())
            .await
            .unwrap();
        let id = held.body["id"].as_str().unwrap().to_string();
        // WHEN an export stating 8,000 is imported in set mode, and the checkout then ends
        let outcome = set_first_row(&services, "export.csv", b"member,points\nm-1,8000\n").await;
        assert!(
            matches!(outcome, RowOutcome::Applied { points: -2_000, .. }),
            "{outcome:?}"
        );
        let done = if capture {
            let order = br#"{"order_ref": "o-9"}"#;
            services.capture_hold("kr-shop", &id, order, "till").await
        } else {
            services.void_hold("kr-shop", &id, "till").await
        };
        done.unwrap();
        // THEN the balance is the 8,000 stated less what was spent (before: 4,000 more)
        let expected = if capture { 4_000 } else { 8_000 };
        assert_eq!(
            balance(&services, "m-1").await,
            expected,
            "capture: {capture}"
        );
    }
}

#[tokio::test]
async fn a_member_with_a_hundred_and_twenty_lots_ended_is_expired_by_one_run() {
    // GIVEN a member imported with 120 lots, each ending on a day of its own
    let store = SqliteStore::memory().unwrap();
    let clock = FixedClock::at(Utc.with_ymd_and_hms(2026, 12, 6, 3, 0, 0).unwrap());
    let (_, services) = common::kr_shop_services(&store, 3, clock.clone()).await;
    let first = chrono::NaiveDate::from_ymd_opt(2027, 1, 1).unwrap();
    for n in 0..120u64 {
        let content = format!("{n:016x}");
        let origin = RowOrigin {
            file_name: "lots.csv",
            digest: "0123456789abcdef",
            line: n + 2,
            content: &content,
            mode: ImportMode::Add,
            dry_run: None,
        };
        let row = RowData {
            member: Some("m-lots".into()),
            email: None,
            named_as: None,
            balance: ImportedBalance {
                points: Some(10),
                tier: None,
                birthday: None,
                expires_on: Some(first + chrono::Duration::days(n as i64)),
            },
        };
        let applied = services
            .import_balance("kr-shop", "import", &origin, &row)
            .await
            .unwrap();
        assert!(matches!(applied, RowOutcome::Applied { .. }), "{applied:?}");
    }
    // WHEN expire-points runs once they have all ended
    clock.set(Utc.with_ymd_and_hms(2027, 6, 1, 3, 0, 0).unwrap());
    let report = services
        .run_job(
            loyalty_core::services::jobs::Job::ExpirePoints,
            "kr-shop",
            None,
            &|_| {},
        )
        .await
        .unwrap();
    // THEN every lot is expired by that run, in a commit that fits (before: one entry a lot,
    // 101 items, refused by every run: the member was stuck)
    assert_eq!((report.failed, report.changed), (0, 1), "{report:?}");
    let account = loyalty_core::ports::MemberStore::load_member(&store, "kr-shop", "m-lots", &[])
        .await
        .unwrap()
        .account
        .unwrap();
    assert_eq!((account.balance, account.lots.total()), (0, 0));
    assert!(report.entries <= 51, "{report:?}");
}
