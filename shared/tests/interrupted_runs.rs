//! An erasure, a merge and a resume on DynamoDB are each a sequence of requests (an erasure: the
//! mark, the kept ledger, the forgotten events, the deletes; a merge: the other member emptied,
//! the survivor filled, the identities moved; a resume: the account, then each waiting event
//! released), which no one transaction could hold. Here each is
//! cut at every one of its writes in turn, as a process killed there would leave it, and run
//! again: the second run must finish it, losing and doubling nothing.
//! Runs on moto (`scripts/test` exports `LOYALTY_TEST_DYNAMODB_ENDPOINT`).
#![cfg(feature = "aws")]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, TimeZone, Utc};
use loyalty_core::ports::{AliasStore, FixedClock, OutboxStore, ParkingStore, RejectStore};
use loyalty_core::services::earn::Processed;
use loyalty_core::services::suspension::{parking_key, Waiting};
use loyalty_core::services::Services;
use loyalty_core::store::dynamodb::DynamoStore;
use serde_json::json;

mod common;

/// Fails every write (and the scan that finds events to forget) from the `cut`-th on, as a
/// process killed there would leave it: what was sent before stays, nothing after is sent.
#[derive(Debug, Clone)]
struct Cut {
    at: Arc<AtomicUsize>,
    seen: Arc<AtomicUsize>,
    stopped: Arc<AtomicBool>,
}

impl Cut {
    fn off() -> Cut {
        Cut {
            at: Arc::new(AtomicUsize::new(usize::MAX)),
            seen: Arc::new(AtomicUsize::new(0)),
            stopped: Arc::new(AtomicBool::new(false)),
        }
    }

    fn arm(&self, at: usize) {
        self.seen.store(0, Ordering::SeqCst);
        self.stopped.store(false, Ordering::SeqCst);
        self.at.store(at, Ordering::SeqCst);
    }

    fn disarm(&self) {
        self.at.store(usize::MAX, Ordering::SeqCst);
    }

    /// Whether the last armed run reached the cut.
    fn reached(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

const CUT_AT: [&str; 6] = [
    ".BatchWriteItem",
    ".TransactWriteItems",
    ".PutItem",
    ".UpdateItem",
    ".DeleteItem",
    ".Scan",
];

impl Intercept for Cut {
    fn name(&self) -> &'static str {
        "cut"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let write = context
            .request()
            .headers()
            .get("x-amz-target")
            .is_some_and(|t| CUT_AT.iter().any(|op| t.ends_with(op)));
        if write && self.seen.fetch_add(1, Ordering::SeqCst) >= self.at.load(Ordering::SeqCst) {
            self.stopped.store(true, Ordering::SeqCst);
            return Err("the process was stopped here".into());
        }
        Ok(())
    }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 4, 9, 0, 0).unwrap()
}

fn purchase(member: &str, order: &str, amount: i64) -> String {
    json!({
        "type": "purchase.completed", "version": 1, "id": format!("shopify-order-{order}-paid"),
        "program": "kr-shop", "member": member, "occurred_at": now(),
        "data": {"order_id": order, "currency": "KRW", "platform": "shopify",
                 "lines": [{"line_id": "1", "quantity": 1, "unit_price": amount.to_string()}]}
    })
    .to_string()
}

/// An event kr-shop refuses for good, kept with its payload, which names the member by email.
fn refused(id: &str, email: &str) -> String {
    json!({"type": "engagement.recorded", "version": 1, "id": id, "program": "kr-shop",
           "member": format!("email:{email}"), "occurred_at": now(),
           "data": {"action": "share", "ref": "t"}})
    .to_string()
}

/// Every item left under the member's id, read currently.
async fn items_under(client: &aws_sdk_dynamodb::Client, table: &str, member: &str) -> usize {
    client
        .query()
        .table_name(table)
        .key_condition_expression("PK = :pk")
        .expression_attribute_values(":pk", AttributeValue::S(format!("P#kr-shop#M#{member}")))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .count as usize
}

struct Setup {
    table: String,
    cut: Cut,
    client: aws_sdk_dynamodb::Client,
    store: Arc<DynamoStore>,
    services: Services,
}

async fn setup() -> Setup {
    let table = format!("loyalty-interrupted-{}", uuid::Uuid::new_v4().simple());
    let cut = Cut::off();
    let client = aws_sdk_dynamodb::Client::from_conf(
        common::moto_dynamodb("interrupted-runs")
            .interceptor(cut.clone())
            .build(),
    );
    let store = Arc::new(DynamoStore::new(client.clone(), &table));
    store.create_table().await.expect("moto creates the table");
    let services = Services::new(
        store.clone(),
        Arc::new(common::Recorder::default()),
        FixedClock::at(now()),
    );
    common::save_kr_shop(&services).await;
    Setup {
        table,
        cut,
        client,
        store,
        services,
    }
}

/// A member with a dozen purchases (more items than one BatchWriteItem deletes), an email, and
/// a refused event that names the email.
async fn member_with_history(s: &Setup, member: &str, email: &str, refused_id: &str) {
    for n in 0..12 {
        let order = format!("{}{n:02}", &member[8..]);
        let applied = s
            .services
            .process_earn(&purchase(member, &order, 20_000 + n))
            .await
            .unwrap();
        assert!(matches!(applied, Processed::Applied { .. }), "{applied:?}");
    }
    assert!(s
        .store
        .put_alias("kr-shop", "email", email, member)
        .await
        .unwrap());
    let kept = s.services.process_earn(&refused(refused_id, email)).await;
    assert!(matches!(kept, Ok(Processed::Rejected(_))), "{kept:?}");
}

/// How many entries the member's ledger has.
async fn ledger_len(s: &Setup, member: &str) -> usize {
    let ledger = s.services.ledger("kr-shop", member, Some(100), None);
    ledger.await.unwrap().entries.len()
}

#[tokio::test]
async fn an_erasure_cut_at_any_write_is_finished_by_running_it_again() {
    let s = setup().await;
    let mut cuts = 0;
    for at in 0.. {
        // GIVEN a member with purchases, an email and a refused event that names it, and
        // another member merged into it
        let member = format!("shopify:75000{at:05}");
        let email = format!("erased-{at}@example.com");
        let refused_id = format!("ev-erasure-{at}");
        member_with_history(&s, &member, &email, &refused_id).await;
        let merged = format!("shopify:76000{at:05}");
        let applied = s
            .services
            .process_earn(&purchase(&merged, &format!("76{at:05}"), 10_000))
            .await
            .unwrap();
        assert!(matches!(applied, Processed::Applied { .. }), "{applied:?}");
        s.services
            .merge_members("kr-shop", &member, &merged, "the same customer", "ops")
            .await
            .unwrap();
        let entries = ledger_len(&s, &member).await;

        // WHEN its erasure is stopped at its `at`-th write
        s.cut.arm(at);
        let first = s
            .services
            .erase_member("kr-shop", &member, "erasure request", "ops")
            .await;
        s.cut.disarm();
        if !s.cut.reached() {
            // (past the erasure's last write: every cut has been tried)
            first.expect("an erasure that was not stopped finishes");
            break;
        }
        assert!(
            first.is_err(),
            "stopped at write {at}, it reported {first:?}"
        );
        cuts += 1;

        // AND it is run again
        let second = s
            .services
            .erase_member("kr-shop", &member, "erasure request", "ops")
            .await
            .unwrap_or_else(|e| panic!("run again after write {at}: {e:?}"));

        // THEN nothing is left under its id, its email leads nowhere, the refused event is gone
        for gone in [&member, &merged] {
            assert_eq!(
                items_under(&s.client, &s.table, gone).await,
                0,
                "cut at {at}"
            );
        }
        assert_eq!(
            s.store
                .resolve_alias("kr-shop", "email", &email)
                .await
                .unwrap(),
            None,
            "cut at {at}"
        );
        assert_eq!(
            s.store
                .rejected_event("kr-shop", &refused_id)
                .await
                .unwrap(),
            None,
            "cut at {at}"
        );
        // AND the pseudonym keeps the ledger once, its points forfeited
        let kept = s
            .services
            .ledger("kr-shop", &second.pseudonym, Some(100), None)
            .await
            .unwrap();
        let copied = kept.entries.len();
        assert_eq!(
            copied,
            entries + 1,
            "cut at {at}: the ledger and the forfeit"
        );
        assert_eq!(
            kept.entries.iter().map(|e| e.points).sum::<i64>(),
            0,
            "cut at {at}"
        );
    }
    // (the mark, the copy, the scan, the email's link, the deletes, the account)
    assert!(cuts >= 10, "only {cuts} writes were cut");
}

/// The member's points, available and pending, and whether its ledger adds up to them.
async fn points(s: &Setup, member: &str) -> (i64, i64) {
    let view = s.services.member_view("kr-shop", member).await.unwrap();
    let ledger = s.services.ledger("kr-shop", member, Some(100), None);
    let entries = ledger.await.unwrap().entries;
    assert_eq!(
        entries.iter().map(|e| e.points).sum::<i64>(),
        view.balance,
        "{member}: the balance is the sum of the ledger"
    );
    (view.balance, view.pending)
}

/// Applies a purchase of `amount` and says so.
async fn bought(s: &Setup, member: &str, order: &str, amount: i64) {
    let applied = s
        .services
        .process_earn(&purchase(member, order, amount))
        .await
        .unwrap();
    assert!(matches!(applied, Processed::Applied { .. }), "{applied:?}");
}

#[tokio::test]
async fn a_merge_cut_at_any_write_is_finished_by_running_it_again() {
    let s = setup().await;
    let mut cuts = 0;
    for at in 0.. {
        // GIVEN a survivor with a purchase, and another member with three and an email
        let survivor = format!("shopify:78000{at:05}");
        let other = format!("shopify:79000{at:05}");
        let email = format!("merged-{at}@example.com");
        bought(&s, &survivor, &format!("78{at:05}"), 40_000).await;
        for n in 0..3 {
            bought(&s, &other, &format!("79{at:05}{n}"), 10_000 + n).await;
        }
        assert!(s
            .store
            .put_alias("kr-shop", "email", &email, &other)
            .await
            .unwrap());
        let (kept, moved) = (points(&s, &survivor).await, points(&s, &other).await);

        // WHEN the merge is stopped at its `at`-th write
        s.cut.arm(at);
        let first = s
            .services
            .merge_members("kr-shop", &survivor, &other, "the same customer", "ops")
            .await;
        s.cut.disarm();
        if !s.cut.reached() {
            first.expect("a merge that was not stopped finishes");
            break;
        }
        assert!(
            first.is_err(),
            "stopped at write {at}, it reported {first:?}"
        );
        cuts += 1;

        // AND it is asked again
        s.services
            .merge_members("kr-shop", &survivor, &other, "the same customer", "ops")
            .await
            .unwrap_or_else(|e| panic!("run again after write {at}: {e:?}"));

        // THEN the survivor holds both members' points once, the other none
        assert_eq!(
            points(&s, &survivor).await,
            (kept.0 + moved.0, kept.1 + moved.1),
            "cut at {at}"
        );
        assert_eq!(points(&s, &other).await, (0, 0), "cut at {at}");
        // AND the other's email and id lead to the survivor
        for (kind, value) in [("email", email.as_str()), ("shopify", &other[8..])] {
            let linked = s.store.resolve_alias("kr-shop", kind, value).await.unwrap();
            assert_eq!(linked.as_ref(), Some(&survivor), "cut at {at}: {kind}");
        }
        // AND the other's purchase delivered again earns nothing
        let again = s
            .services
            .process_earn(&purchase(&other, &format!("79{at:05}0"), 10_000))
            .await
            .unwrap();
        assert!(
            matches!(again, Processed::Duplicate),
            "cut at {at}: {again:?}"
        );
        assert_eq!(
            points(&s, &survivor).await,
            (kept.0 + moved.0, kept.1 + moved.1),
            "cut at {at}"
        );
    }
    // (the other emptied, the survivor filled, two identities moved)
    assert!(cuts >= 4, "only {cuts} writes were cut");
}

#[tokio::test]
async fn a_resume_cut_at_any_write_is_finished_by_running_it_again() {
    let s = setup().await;
    let mut cuts = 0;
    for at in 0.. {
        // GIVEN a suspended member whose three purchases wait
        let member = format!("shopify:80000{at:05}");
        bought(&s, &member, &format!("80{at:05}"), 30_000).await;
        s.services
            .suspend("kr-shop", &member, "card testing", "ops")
            .await
            .unwrap();
        let orders: Vec<String> = (0..3).map(|n| format!("81{at:05}{n}")).collect();
        for order in &orders {
            let waits = s
                .services
                .process_earn(&purchase(&member, order, 10_000))
                .await
                .unwrap();
            assert!(matches!(waits, Processed::NoEffect(_)), "{waits:?}");
        }

        // WHEN its resume is stopped at its `at`-th write
        s.cut.arm(at);
        let first = s
            .services
            .resume("kr-shop", &member, "cleared", Waiting::Apply, "ops")
            .await;
        s.cut.disarm();
        if !s.cut.reached() {
            first.expect("a resume that was not stopped finishes");
            break;
        }
        assert!(
            first.is_err(),
            "stopped at write {at}, it reported {first:?}"
        );
        cuts += 1;

        // AND it is asked again
        s.services
            .resume("kr-shop", &member, "cleared", Waiting::Apply, "ops")
            .await
            .unwrap_or_else(|e| panic!("run again after write {at}: {e:?}"));

        // THEN the member is not suspended, nothing waits, and each purchase is on its way
        let view = s.services.member_view("kr-shop", &member).await.unwrap();
        assert!(view.suspended.is_none(), "cut at {at}");
        let waiting = s.store.parked("kr-shop", &parking_key(&member)).await;
        assert_eq!(waiting.unwrap(), Vec::new(), "cut at {at}");
        let outbox = s.store.outbox(1_000).await.unwrap();
        for order in &orders {
            let id = format!("shopify-order-{order}-paid");
            let sent = outbox.iter().filter(|m| m.envelope.id == id).count();
            assert_eq!(sent, 1, "cut at {at}: {id}");
        }
    }
    // (the account, then each of the three waiting events)
    assert!(cuts >= 4, "only {cuts} writes were cut");
}
