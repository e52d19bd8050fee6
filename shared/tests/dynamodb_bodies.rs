//! How DynamoDB stores the bodies that grow with a member's history (the account, ledger
//! entries, order records): deflated, so that a member with a year of purchases still pays one
//! write unit per KB started, not three; and bodies written as JSON strings before are still
//! read. Runs on moto (`scripts/test` exports `LOYALTY_TEST_DYNAMODB_ENDPOINT`).
#![cfg(feature = "aws")]

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{Duration, NaiveDate, TimeZone, Utc};
use loyalty_core::domain::calendar::YearMonth;
use loyalty_core::domain::{
    Account, Change, EntryKind, EventContext, LedgerEntry, OrderRecord, PendingGrant, Program,
    Source,
};
use loyalty_core::ports::{Commit, MemberStore};
use loyalty_core::store::dynamodb::DynamoStore;

const TABLE: &str = "loyalty-bodies";

mod common;

fn client() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::from_conf(common::moto_dynamodb("bodies").build())
}

async fn store() -> DynamoStore {
    let store = DynamoStore::new(client(), TABLE);
    store.create_table().await.expect("moto creates the table");
    store
}

fn program() -> Program {
    Program::from_toml(include_str!("../../examples/kr-shop.toml")).expect("kr-shop")
}

fn member() -> String {
    format!("m-{}", uuid::Uuid::new_v4().simple())
}

/// The account of a member who bought every month for a year and twelve times in the last
/// return window: twelve pending purchases, twelve lots, twelve qualifying months.
fn busy_account(program: &Program, member: &str) -> Account {
    let now = Utc.with_ymd_and_hms(2026, 11, 30, 9, 0, 0).unwrap();
    let mut account = Account::open(program, member, now - Duration::days(400));
    for i in 0..12u32 {
        let order = 5_551_234_567_000 + u64::from(i) * 7_919;
        account.pending.push(PendingGrant {
            event_id: format!("shopify-order-{order}-paid"),
            order_id: format!("shopify#{order}"),
            release_at: now + Duration::days(i64::from(i) + 2),
            expires_on: NaiveDate::from_ymd_opt(2027, 12, 31).unwrap(),
            points: 420 + i64::from(i) * 37,
            qualifying: 0,
            month: None,
        });
        let month = NaiveDate::from_ymd_opt(2026, i + 1, 28).unwrap();
        account
            .lots
            .add(month + Duration::days(365), 800 + i64::from(i) * 13);
        account
            .qualifying
            .insert(YearMonth::of(month), 42_000 + i64::from(i) * 1_100);
    }
    account.balance = account.lots.total();
    for category in ["shoes", "bags", "outerwear", "accessories", "kids"] {
        account.categories.insert(category.to_string());
    }
    account.purchases = 24;
    account.last_purchase_at = Some(now);
    account
}

fn purchase_entry(id: &str, balance_after: i64) -> LedgerEntry {
    let at = Utc.with_ymd_and_hms(2026, 11, 30, 9, 0, 0).unwrap();
    let ctx = EventContext::new(id, at, at);
    LedgerEntry {
        id: id.to_string(),
        kind: EntryKind::Pending,
        points: 0,
        pending: 420,
        balance_after,
        pending_after: 420,
        recorded_at: ctx.recorded_at,
        occurred_at: ctx.occurred_at,
        source: Source {
            event_id: Some(id.to_string()),
            ..Source::default()
        },
        reason: "purchase of 42,000 KRW".into(),
        shortfall: 0,
        provisional: false,
        lots: Vec::new(),
    }
}

/// A purchase's commit over `before`: the account, its entry (with what it sends), its order
/// record and the day's books, as earn writes them.
fn commit(account: Account, before: Option<&Account>, entry_id: &str) -> Commit {
    let program = program();
    let member = account.member.clone();
    let change = Change {
        entries: vec![purchase_entry(entry_id, account.balance)],
        account,
        no_op: None,
        referrer: None,
    };
    let mut commit = Commit::new(&program, &member, before, change, Utc::now());
    let order = OrderRecord {
        order_id: format!("shopify#{entry_id}"),
        ..OrderRecord::default()
    };
    commit.orders = BTreeMap::from([(format!("shopify#{entry_id}"), order)]);
    commit
}

async fn put_raw(item: HashMap<String, AttributeValue>) {
    client()
        .put_item()
        .table_name(TABLE)
        .set_item(Some(item))
        .send()
        .await
        .expect("put");
}

/// An item's size as DynamoDB bills it: attribute names plus values (strings and binaries by
/// their bytes, numbers by their digits, sets by their members).
fn billed_bytes(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter()
        .map(|(name, value)| {
            name.len()
                + match value {
                    AttributeValue::S(s) | AttributeValue::N(s) => s.len(),
                    AttributeValue::B(b) => b.as_ref().len(),
                    AttributeValue::Ss(set) => set.iter().map(String::len).sum(),
                    other => panic!("unexpected attribute {other:?}"),
                }
        })
        .sum()
}

async fn raw_item(pk: &str, sk: &str) -> HashMap<String, AttributeValue> {
    client()
        .get_item()
        .table_name(TABLE)
        .key("PK", AttributeValue::S(pk.into()))
        .key("SK", AttributeValue::S(sk.into()))
        .consistent_read(true)
        .send()
        .await
        .expect("get item")
        .item
        .expect("the item")
}

#[tokio::test]
async fn a_year_of_purchases_keeps_the_account_item_under_one_kilobyte() {
    // GIVEN a member with a year of purchases, whose account is over 2 KB as JSON
    let store = store().await;
    let program = program();
    let m = member();
    let account = busy_account(&program, &m);
    let json = serde_json::to_string(&account).expect("json");
    assert!(
        json.len() > 2048,
        "the account is {} bytes as JSON",
        json.len()
    );

    // WHEN it is committed with a purchase's entry and order record
    store
        .commit(commit(account.clone(), None, "e-1"))
        .await
        .expect("commit");

    // THEN the account item is binary-bodied and bills under 1 KB
    let pk = format!("P#{}#M#{m}", program.id);
    let item = raw_item(&pk, "ACCOUNT").await;
    assert!(matches!(item["body"], AttributeValue::B(_)), "{item:?}");
    let bytes = billed_bytes(&item);
    eprintln!(
        "account: {} bytes as JSON, its item {bytes} bytes",
        json.len()
    );
    assert!(bytes < 1024, "the account item bills {bytes} bytes");
    // AND the account, the entry and the order record read back as written
    let state = store
        .load_member(&program.id, &m, &["shopify#e-1".to_string()])
        .await
        .expect("load");
    let balance = account.balance;
    let mut expected = account;
    expected.version = 1;
    assert_eq!(state.account, Some(expected));
    assert!(state.orders.contains_key("shopify#e-1"));
    let page = store
        .ledger_page(&program.id, &m, 10, None)
        .await
        .expect("ledger");
    assert_eq!(page.entries, vec![purchase_entry("e-1", balance)]);
}

#[tokio::test]
async fn an_account_written_as_a_json_string_is_read_and_deflated_by_its_next_commit() {
    // GIVEN an account item whose body is a JSON string (as items were written before)
    let store = store().await;
    let program = program();
    let m = member();
    let mut account = busy_account(&program, &m);
    store
        .commit(commit(account.clone(), None, "e-1"))
        .await
        .expect("commit");
    let pk = format!("P#{}#M#{m}", program.id);
    let mut item = raw_item(&pk, "ACCOUNT").await;
    account.version = 1;
    let plain = serde_json::to_string(&account).expect("json");
    item.insert("body".into(), AttributeValue::S(plain));
    put_raw(item).await;

    // WHEN it is read, and a second purchase commits over it
    let read = store
        .load_member(&program.id, &m, &[])
        .await
        .expect("load")
        .account;
    assert_eq!(read.as_ref(), Some(&account));
    let before = account.clone();
    account.purchases += 1;
    store
        .commit(commit(account.clone(), Some(&before), "e-2"))
        .await
        .expect("second commit");

    // THEN the account is stored deflated again, with the change
    let item = raw_item(&pk, "ACCOUNT").await;
    assert!(matches!(item["body"], AttributeValue::B(_)), "{item:?}");
    let read = store
        .load_member(&program.id, &m, &[])
        .await
        .expect("load")
        .account
        .expect("account");
    assert_eq!(read.purchases, 25);
    assert_eq!(read.version, 2);
}

#[tokio::test]
async fn a_binary_body_that_does_not_inflate_is_reported_corrupt_not_read() {
    // GIVEN an account item whose binary body is not DEFLATE data
    let store = store().await;
    let program = program();
    let m = member();
    store
        .commit(commit(busy_account(&program, &m), None, "e-1"))
        .await
        .expect("commit");
    let pk = format!("P#{}#M#{m}", program.id);
    let mut item = raw_item(&pk, "ACCOUNT").await;
    item.insert(
        "body".into(),
        AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(vec![0xff; 64])),
    );
    put_raw(item).await;

    // WHEN the member is loaded
    let outcome = store.load_member(&program.id, &m, &[]).await;

    // THEN the store says the account is corrupt, naming it
    let error = outcome.expect_err("a corrupt body").to_string();
    assert!(error.contains(&m) && error.contains("inflate"), "{error}");
}
