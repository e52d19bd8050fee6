//! Earn reads a member eventually consistently (half the read units), so a read may miss the
//! latest commit. The account's version condition refuses a stale account; these tests show
//! that an order record's revision refuses a stale order record beside a current account, and
//! that a stale miss of the marker is still told as a duplicate. moto's reads are always
//! current, so a stale read is played by committing from a state read before another commit.
//! Runs on moto (`scripts/test` exports `LOYALTY_TEST_DYNAMODB_ENDPOINT`).
#![cfg(feature = "aws")]

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use loyalty_core::domain::{Account, Change, OrderRecord, Program};
use loyalty_core::ports::{Commit, CommitError, EventMarker, MemberState, MemberStore};
use loyalty_core::store::dynamodb::DynamoStore;

const TABLE: &str = "loyalty-revisions";
const ORDER: &str = "shopify#8800000001";

mod common;

async fn store() -> DynamoStore {
    let client = aws_sdk_dynamodb::Client::from_conf(common::moto_dynamodb("revisions").build());
    let store = DynamoStore::new(client, TABLE);
    store.create_table().await.expect("moto creates the table");
    store
}

fn program() -> Program {
    Program::from_toml(include_str!("../../examples/kr-shop.toml")).expect("kr-shop")
}

fn marker(event: &str) -> EventMarker {
    EventMarker {
        source: "shopify".into(),
        event_id: event.into(),
    }
}

/// A commit of event `event` about ORDER over `before` (the account read), writing the order
/// record with `applied` and naming the record's revision as read in `read`.
fn order_commit(
    member: &str,
    before: Option<&Account>,
    event: &str,
    applied: &[&str],
    read: &MemberState,
) -> Commit {
    let program = program();
    let at = Utc.with_ymd_and_hms(2026, 12, 3, 9, 0, 0).unwrap();
    let account = before
        .cloned()
        .unwrap_or_else(|| Account::open(&program, member, at));
    let change = Change {
        account,
        entries: Vec::new(),
        no_op: None,
        referrer: None,
    };
    let record = OrderRecord {
        order_id: ORDER.into(),
        applied: applied.iter().map(|a| a.to_string()).collect(),
        ..OrderRecord::default()
    };
    let orders = BTreeMap::from([(ORDER.to_string(), record)]);
    Commit {
        marker: Some(marker(event)),
        marker_order: Some(ORDER.into()),
        order_revisions: read.revisions_of(orders.keys()),
        orders,
        ..Commit::new(&program, member, before, change, at)
    }
}

async fn read(store: &DynamoStore, member: &str, event: &str) -> MemberState {
    store
        .load_member_for_event_cheaply("kr-shop", member, &marker(event), &[ORDER.into()], &[])
        .await
        .expect("read")
}

#[tokio::test]
async fn an_order_record_read_before_the_last_commit_is_refused_beside_a_current_account() {
    // GIVEN a member whose order has a record, then a refund applied to it
    let store = store().await;
    let member = format!("m-{}", uuid::Uuid::new_v4().simple());
    let none = read(&store, &member, "paid").await;
    store
        .commit(order_commit(&member, None, "paid", &[], &none))
        .await
        .expect("the purchase commits");
    let before_refund = read(&store, &member, "refund-1").await;
    assert_eq!(before_refund.order_revisions.get(ORDER), Some(&1));
    store
        .commit(order_commit(
            &member,
            before_refund.account.as_ref(),
            "refund-1",
            &["refund-1"],
            &before_refund,
        ))
        .await
        .expect("the first refund commits");
    // WHEN a second refund commits from the current account but the record as it was before
    // the first refund (what a stale read of the record gives)
    let current = read(&store, &member, "refund-2").await;
    let stale = order_commit(
        &member,
        current.account.as_ref(),
        "refund-2",
        &["refund-2"],
        &before_refund,
    );
    let outcome = store.commit(stale).await;
    // THEN it is refused as a conflict, and the record still holds the first refund
    assert!(
        matches!(outcome, Err(CommitError::VersionConflict)),
        "{outcome:?}"
    );
    let after = read(&store, &member, "refund-2").await;
    assert!(after.orders[ORDER].applied.contains("refund-1"));
    assert_eq!(after.order_revisions.get(ORDER), Some(&2));
    // AND committed again from a current read, it is applied
    store
        .commit(order_commit(
            &member,
            after.account.as_ref(),
            "refund-2",
            &["refund-1", "refund-2"],
            &after,
        ))
        .await
        .expect("the second refund commits from a current read");
}

#[tokio::test]
async fn an_event_whose_marker_a_stale_read_missed_is_a_duplicate() {
    // GIVEN a member whose purchase committed
    let store = store().await;
    let member = format!("m-{}", uuid::Uuid::new_v4().simple());
    let none = read(&store, &member, "paid").await;
    store
        .commit(order_commit(&member, None, "paid", &[], &none))
        .await
        .expect("the purchase commits");
    // WHEN the same purchase commits again from a read made before the first commit (no
    // marker seen, no record) over the current account
    let current = read(&store, &member, "paid").await;
    assert!(current.seen, "a current read sees the marker");
    let again = order_commit(&member, current.account.as_ref(), "paid", &[], &none);
    let outcome = store.commit(again).await;
    // THEN it is a duplicate, not a conflict to retry, and nothing changed
    assert!(
        matches!(outcome, Err(CommitError::Duplicate)),
        "{outcome:?}"
    );
    let after = read(&store, &member, "paid").await;
    assert_eq!(after.account.map(|a| a.version), Some(1));
}

#[tokio::test]
async fn a_record_read_as_absent_is_not_written_over_one_written_since() {
    // GIVEN a member with an account, and a refund's read of its order made when the order had
    // no record yet
    let store = store().await;
    let member = format!("m-{}", uuid::Uuid::new_v4().simple());
    let none = read(&store, &member, "opened").await;
    let mut opened = order_commit(&member, None, "opened", &[], &none);
    opened.orders.clear();
    opened.order_revisions.clear();
    opened.marker_order = None;
    store.commit(opened).await.expect("the account opens");
    let early = read(&store, &member, "refund-early").await;
    assert!(early.orders.is_empty());
    // AND the order's purchase commits its record since
    store
        .commit(order_commit(
            &member,
            early.account.as_ref(),
            "paid",
            &["paid-lines"],
            &early,
        ))
        .await
        .expect("the purchase commits");
    // WHEN the refund commits from its read over the current account
    let current = read(&store, &member, "refund-early").await;
    let stale = order_commit(
        &member,
        current.account.as_ref(),
        "refund-early",
        &["refund-early"],
        &early,
    );
    let outcome = store.commit(stale).await;
    // THEN it is refused as a conflict (its marker is new: only the revision refuses it), and
    // the purchase's record stands
    assert!(
        matches!(outcome, Err(CommitError::VersionConflict)),
        "{outcome:?}"
    );
    let after = read(&store, &member, "refund-early").await;
    assert!(after.orders[ORDER].applied.contains("paid-lines"));
    assert!(!after.orders[ORDER].applied.contains("refund-early"));
}

#[tokio::test]
async fn a_commit_whose_account_the_table_cannot_hold_is_refused_as_unfit_and_writes_nothing() {
    // GIVEN a member whose account, as a change would leave it, is larger than an item may be
    // (an account built past the bounds the domain keeps, as one written before them could be)
    let store = store().await;
    let member = format!("m-{}", uuid::Uuid::new_v4().simple());
    let program = program();
    let at = Utc.with_ymd_and_hms(2026, 12, 3, 9, 0, 0).unwrap();
    let mut account = Account::open(&program, &member, at);
    // (random text, which the store's compression of large bodies does not shrink enough)
    account.categories = (0..8_000)
        .map(|_| {
            (0..4)
                .map(|_| uuid::Uuid::new_v4().simple().to_string())
                .collect()
        })
        .collect();
    let change = Change {
        account,
        entries: Vec::new(),
        no_op: None,
        referrer: None,
    };
    let commit = Commit {
        marker: Some(marker("huge")),
        ..Commit::new(&program, &member, None, change, at)
    };
    // WHEN it is committed
    let refused = store.commit(commit).await;
    // THEN the store says it can never write it (not worth a retry), and nothing is written
    assert!(
        matches!(
            refused,
            Err(CommitError::Store(
                loyalty_core::ports::StoreError::Unfit { .. }
            ))
        ),
        "{refused:?}"
    );
    let state = store
        .load_member_for_event("kr-shop", &member, &marker("huge"), &[], &[])
        .await
        .expect("read");
    assert!(state.account.is_none() && !state.seen);
}

/// Answers the transactions sent through it as a throttled DynamoDB does: cancelled, with the
/// first item's reason a throttle. The request itself is turned into a harmless read, so that
/// nothing is written behind the answer.
#[derive(Debug)]
struct ThrottleTransactions;

impl aws_sdk_dynamodb::config::Intercept for ThrottleTransactions {
    fn name(&self) -> &'static str {
        "throttle-transactions"
    }

    fn modify_before_transmit(
        &self,
        context: &mut aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextMut<
            '_,
        >,
        _components: &aws_sdk_dynamodb::config::RuntimeComponents,
        _cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let headers = context.request_mut().headers_mut();
        if headers
            .get("x-amz-target")
            .is_some_and(|t| t.ends_with(".TransactWriteItems"))
        {
            headers.insert("x-amz-target", "DynamoDB_20120810.DescribeLimits");
        }
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut aws_sdk_dynamodb::config::interceptors::BeforeDeserializationInterceptorContextMut<'_>,
        _components: &aws_sdk_dynamodb::config::RuntimeComponents,
        _cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let body = r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionCanceledException","Message":"Transaction cancelled, please refer cancellation reasons for specific reasons [ThrottlingError, None, None]","CancellationReasons":[{"Code":"ThrottlingError","Message":"Throughput exceeds the current capacity of your table or index."},{"Code":"None"},{"Code":"None"}]}"#;
        let response = context.response_mut();
        *response.status_mut() = 400.try_into()?;
        response.headers_mut().remove("content-length");
        *response.body_mut() = aws_smithy_types::body::SdkBody::from(body);
        Ok(())
    }
}

#[tokio::test]
async fn a_program_save_the_table_throttles_is_transient_not_a_conflict() {
    use loyalty_core::ports::{ProgramStore, StoreError};
    // GIVEN a saved program, and a client whose transactions the table throttles
    let plain = store().await;
    let program = format!("p-{}", uuid::Uuid::new_v4().simple());
    let at = Utc.with_ymd_and_hms(2026, 12, 7, 9, 0, 0).unwrap();
    let body = r#"{"id":"saved"}"#;
    assert_eq!(
        plain.put_program(&program, body, None, at).await.unwrap(),
        Some(1)
    );
    let client = aws_sdk_dynamodb::Client::from_conf(
        common::moto_dynamodb("revisions")
            .interceptor(ThrottleTransactions)
            .build(),
    );
    let throttled = DynamoStore::new(client, TABLE);
    // WHEN the next version is saved over version 1
    let saved = throttled.put_program(&program, "{}", Some(1), at).await;
    // THEN the save is to be tried again later, not "saved meanwhile by someone else"
    assert!(
        matches!(saved, Err(StoreError::Transient { .. })),
        "{saved:?}"
    );
    // AND version 1 is still the program's
    let current = plain.get_program(&program).await.unwrap().unwrap();
    assert_eq!((current.version, current.file_json.as_str()), (1, body));
}
