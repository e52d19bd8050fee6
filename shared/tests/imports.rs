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
        mode: ImportMode::Add,
        dry_run: false,
    };
    let balance = ImportedBalance {
        points: 500,
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
