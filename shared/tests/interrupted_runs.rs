//! An erasure, a merge and a resume on DynamoDB are each a sequence of requests (an erasure: the
//! mark, the kept ledger, the forgotten events, the deletes; a merge: the other member emptied,
//! the survivor filled, the identities moved; a resume: the account with the message that
//! finishes it, then each waiting event released), which no one transaction could hold. Here
//! each is cut at every one of its writes in turn, as a process killed there would leave it,
//! and run again (or, for a resume, finished by its message): losing and doubling nothing.
//! Runs on moto (`scripts/test` exports `LOYALTY_TEST_DYNAMODB_ENDPOINT`).
#![cfg(feature = "aws")]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, TimeZone, Utc};
use loyalty_core::ports::{
    AliasStore, FixedClock, MemberStore, OutboxStore, ParkingStore, RedemptionStore, RejectStore,
};
use loyalty_core::services::earn::Processed;
use loyalty_core::services::jobs::Job;
use loyalty_core::services::suspension::{parking_key, Waiting, MEMBER_RESUMED};
use loyalty_core::services::{ServiceError, Services};
use loyalty_core::store::dynamodb::DynamoStore;
use serde_json::json;

mod common;

use common::target;

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

/// Requests that change nothing and are never cut: every other one is (a write of a kind added
/// later included, so that no case passes by not cutting it).
const READS: [&str; 3] = [".GetItem", ".BatchGetItem", ".Query"];

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
        let write = !READS.iter().any(|op| target(context).ends_with(op));
        if write && self.seen.fetch_add(1, Ordering::SeqCst) >= self.at.load(Ordering::SeqCst) {
            self.stopped.store(true, Ordering::SeqCst);
            return Err("the process was stopped here".into());
        }
        Ok(())
    }
}

/// Fails every read of a program's books while on, as a store that does not answer one
/// partition for a while.
#[derive(Debug, Clone, Default)]
struct BooksDown {
    on: Arc<AtomicBool>,
}

impl Intercept for BooksDown {
    fn name(&self) -> &'static str {
        "books-down"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let body = context.request().body().bytes().unwrap_or_default();
        let books = String::from_utf8_lossy(body).contains("#BOOKS#");
        if self.on.load(Ordering::SeqCst) && target(context).ends_with(".Query") && books {
            return Err("the books' partition did not answer".into());
        }
        Ok(())
    }
}

/// A writer that ignores an erasure's mark: just before the member's account is deleted, it
/// moves the account's version on and adds an item under the member, as a commit landing
/// between the erasure's read of the member's items and its deletes would.
#[derive(Debug, Clone, Default)]
struct Racer {
    armed: Arc<Mutex<Option<(String, String)>>>,
    raced: Arc<AtomicUsize>,
}

impl Racer {
    fn arm(&self, table: &str, member: &str) {
        *self.armed.lock().unwrap() = Some((table.to_string(), format!("P#kr-shop#M#{member}")));
    }

    fn raced(&self) -> usize {
        self.raced.load(Ordering::SeqCst)
    }
}

impl Intercept for Racer {
    fn name(&self) -> &'static str {
        "racer"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let deletes = [".DeleteItem", ".BatchWriteItem"]
            .iter()
            .any(|op| target(context).ends_with(op));
        let body = context.request().body().bytes().unwrap_or_default();
        if !deletes || !deletes_an_account(body) {
            return Ok(());
        }
        let Some((table, pk)) = self.armed.lock().unwrap().take() else {
            return Ok(());
        };
        // The interceptor cannot wait on the test's runtime: the write runs on one of its own.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(late_write(&table, &pk));
        })
        .join()
        .map_err(|_| "the late write failed")?;
        self.raced.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Whether a delete's body names an account item, alone or in a batch.
fn deletes_an_account(body: &[u8]) -> bool {
    let request: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let account = |key: &serde_json::Value| key["SK"]["S"] == "ACCOUNT";
    let in_batch = request["RequestItems"].as_object().is_some_and(|tables| {
        tables
            .values()
            .filter_map(|writes| writes.as_array())
            .flatten()
            .any(|w| account(&w["DeleteRequest"]["Key"]))
    });
    in_batch || account(&request["Key"])
}

/// The account's version moved on and an item added under the member, by another client.
async fn late_write(table: &str, pk: &str) {
    let client = aws_sdk_dynamodb::Client::from_conf(common::moto_dynamodb("late-writer").build());
    let s = |v: &str| AttributeValue::S(v.to_string());
    client
        .update_item()
        .table_name(table)
        .key("PK", s(pk))
        .key("SK", s("ACCOUNT"))
        .update_expression("SET version = version + :one")
        .expression_attribute_values(":one", AttributeValue::N("1".into()))
        .send()
        .await
        .unwrap();
    client
        .put_item()
        .table_name(table)
        .item("PK", s(pk))
        .item("SK", s("L#late"))
        .send()
        .await
        .unwrap();
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

/// The pseudonyms of the accounts kept by erasures.
async fn kept_accounts(client: &aws_sdk_dynamodb::Client, table: &str) -> Vec<String> {
    let prefix = "P#kr-shop#M#erased-";
    let items = client
        .scan()
        .table_name(table)
        .filter_expression("begins_with(PK, :p)")
        .expression_attribute_values(":p", AttributeValue::S(prefix.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    let mut kept: Vec<String> = items
        .iter()
        .filter_map(|item| item.get("PK")?.as_s().ok())
        .map(|pk| pk["P#kr-shop#M#".len()..].to_string())
        .collect();
    kept.sort();
    kept.dedup();
    kept
}

struct Setup {
    table: String,
    cut: Cut,
    books_down: BooksDown,
    racer: Racer,
    client: aws_sdk_dynamodb::Client,
    store: Arc<DynamoStore>,
    services: Services,
    clock: Arc<FixedClock>,
}

async fn setup() -> Setup {
    let table = format!("loyalty-interrupted-{}", uuid::Uuid::new_v4().simple());
    let cut = Cut::off();
    let racer = Racer::default();
    let books_down = BooksDown::default();
    let client = aws_sdk_dynamodb::Client::from_conf(
        common::moto_dynamodb("interrupted-runs")
            .interceptor(cut.clone())
            .interceptor(racer.clone())
            .interceptor(books_down.clone())
            .build(),
    );
    let store = Arc::new(DynamoStore::new(client.clone(), &table));
    store.create_table().await.expect("moto creates the table");
    let clock = FixedClock::at(now());
    let services = Services::new(
        store.clone(),
        Arc::new(common::Recorder::default()),
        clock.clone(),
    );
    common::save_kr_shop(&services).await;
    Setup {
        table,
        cut,
        books_down,
        racer,
        client,
        store,
        services,
        clock,
    }
}

/// A member with a dozen purchases (more items than one BatchWriteItem deletes), an email, a
/// refused event that names the email, and `coupons` coupons redeemed; returns their codes.
async fn member_with_history(
    s: &Setup,
    member: &str,
    email: &str,
    refused_id: &str,
    coupons: usize,
) -> Vec<String> {
    for n in 0..12 {
        let order = format!("{}{n:02}", &member[8..]);
        bought(s, member, &order, 20_000 + n).await;
    }
    assert!(s
        .store
        .put_alias("kr-shop", "email", email, member)
        .await
        .unwrap());
    let kept = s.services.process_earn(&refused(refused_id, email)).await;
    assert!(matches!(kept, Ok(Processed::Rejected(_))), "{kept:?}");
    redeemed_coupons(s, member, coupons).await
}

/// Coupons the member redeemed with points an operator gave; their codes.
async fn redeemed_coupons(s: &Setup, member: &str, count: usize) -> Vec<String> {
    let gift = json!({"points": 5000 * count, "reason": "gift"}).to_string();
    s.services
        .adjust("kr-shop", member, "ops", None, gift.as_bytes())
        .await
        .unwrap();
    let mut codes = Vec::new();
    for n in 0..count {
        let coupon = br#"{"reward": "coupon-5000"}"#;
        let key = format!("k-coupon-{n}");
        let answer = s
            .services
            .redeem("kr-shop", member, member, Some(&key), coupon)
            .await
            .unwrap();
        codes.push(answer.body["code"].as_str().expect("a code").to_string());
    }
    codes
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
        // (more coupons than one BatchWriteItem deletes: some are deleted in a request after
        // the last redemption that names them)
        let codes = member_with_history(&s, &member, &email, &refused_id, 26).await;
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
        // AND an audit meanwhile, within the erasure's hour, names no member's sums: the
        // erasure is under way, a step at a time
        let quiet: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(|_| {});
        let audit = s.services.audit(Some("kr-shop"), quiet).await.unwrap();
        let sums: Vec<_> = audit
            .violations
            .iter()
            .filter(|v| v.member.is_some() && v.rule != "unreadable")
            .collect();
        assert!(sums.is_empty(), "cut at {at}: {sums:#?}");
        // AND an audit two hours later names the erasure left unfinished, once it was marked
        if at == 1 {
            s.clock.set(now() + chrono::Duration::hours(2));
            let quiet: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(|_| {});
            let audit = s.services.audit(Some("kr-shop"), quiet).await.unwrap();
            s.clock.set(now());
            let unfinished: Vec<_> = audit
                .violations
                .iter()
                .filter(|v| v.rule == "erasure")
                .map(|v| v.member.clone())
                .collect();
            assert_eq!(
                unfinished,
                vec![Some(member.clone())],
                "{:?}",
                audit.violations
            );
        }

        // AND it is run again
        let second = s
            .services
            .erase_member("kr-shop", &member, "erasure request", "ops")
            .await
            .unwrap_or_else(|e| panic!("run again after write {at}: {e:?}"));

        // THEN nothing is left under its id, its email leads nowhere, the refused event and
        // the coupon are gone
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
        for code in &codes {
            let coupon = s.store.coupon("kr-shop", code).await.unwrap();
            assert_eq!(coupon, None, "cut at {at}");
        }
        // AND the second run says it finished an erasure begun before, once the mark was written
        assert_eq!(second.resumed, at > 0, "cut at {at}");
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

#[tokio::test]
async fn a_write_that_lands_while_an_erasure_deletes_is_deleted_too() {
    // GIVEN a member with purchases, an email, a refused event and a coupon
    let s = setup().await;
    let member = "shopify:7700000001";
    let codes = member_with_history(&s, member, "late@example.com", "ev-late", 1).await;
    // WHEN a write that ignores the erasure's mark lands just before the account is deleted
    s.racer.arm(&s.table, member);
    s.services
        .erase_member("kr-shop", member, "erasure request", "ops")
        .await
        .unwrap();
    // THEN the erasure deleted what that write added too: nothing is left under the member's id
    assert_eq!(s.racer.raced(), 1);
    assert_eq!(items_under(&s.client, &s.table, member).await, 0);
    assert_eq!(s.store.coupon("kr-shop", &codes[0]).await.unwrap(), None);
}

fn tier_check(member: &str) -> String {
    json!({"type": "tier.check", "version": 1, "id": format!("tier-check-{member}"),
           "program": "kr-shop", "member": member, "occurred_at": now(), "data": {}})
    .to_string()
}

#[tokio::test]
async fn a_member_whose_erasure_has_begun_takes_no_adjustment_redemption_or_tier() {
    // GIVEN two members whose purchases crossed SILVER's threshold, with points to redeem
    let s = setup().await;
    let (member, control) = ("shopify:7700000002", "shopify:7700000003");
    for (who, order) in [(member, "7700002"), (control, "7700003")] {
        bought(&s, who, order, 400_000).await;
        s.services
            .adjust(
                "kr-shop",
                who,
                "ops",
                None,
                br#"{"points": 10000, "reason": "gift"}"#,
            )
            .await
            .unwrap();
    }
    // AND a campaign running for everyone
    let autumn = json!({
        "name": "Autumn", "kind": "broadcast", "status": "running",
        "start": "2026-12-01T00:00:00+09:00", "end": "2026-12-31T00:00:00+09:00",
        "hash_seed": "autumn-2026", "goal": "purchase",
        "variants": [
            {"key": "control", "weight": 0.5, "effect": {"type": "none"}},
            {"key": "x2", "weight": 0.5, "effect": {"type": "none"}}
        ]
    });
    let body = autumn.to_string();
    let saved = s
        .services
        .put_campaign("kr-shop", "autumn", body.as_bytes());
    saved.await.unwrap();
    // AND the first member's erasure stopped right after its mark
    erasure_stopped_after_its_mark(&s, member).await;

    // WHEN the campaign tick runs, an operator adjusts each, each redeems a coupon, each one's
    // tier check arrives and each opens its campaigns
    let tick = s
        .services
        .run_job(Job::CampaignTick, "kr-shop", None, &|_| {});
    tick.await.unwrap();
    let gift = br#"{"points": 100, "reason": "late gift"}"#;
    let coupon = br#"{"reward": "coupon-5000"}"#;
    for who in [member, control] {
        let adjusted = s.services.adjust("kr-shop", who, "ops", None, gift).await;
        let redeemed = s
            .services
            .redeem("kr-shop", who, who, Some("k-late"), coupon)
            .await;
        let checked = s.services.process_tier_check(&tier_check(who)).await;
        let shown = s.services.my_campaigns("kr-shop", who, None).await.unwrap();
        // THEN the member being erased is refused both, as 409 member-erased, its tier is not
        // changed and it is shown no campaign and assigned none; the other member's are applied
        let erased = who == member;
        let campaigns = shown["campaigns"].as_array().map_or(0, Vec::len);
        assert_eq!(campaigns, usize::from(!erased), "{who}: {shown}");
        let ids = ["autumn".to_string()];
        let read = s.store.load_member_with("kr-shop", who, &[], &ids);
        let assigned = read.await.unwrap().assignments.len();
        assert_eq!(assigned, usize::from(!erased), "{who}");
        assert_eq!(refused_as_erased(&adjusted), erased, "{who}: {adjusted:?}");
        assert_eq!(refused_as_erased(&redeemed), erased, "{who}: {redeemed:?}");
        let applied = matches!(checked, Ok(Processed::Applied { .. }));
        assert_eq!(applied, !erased, "{who}: {checked:?}");
    }
    // AND run again, the erasure leaves nothing under the member's id
    s.services
        .erase_member("kr-shop", member, "erasure request", "ops")
        .await
        .unwrap();
    assert_eq!(items_under(&s.client, &s.table, member).await, 0);
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

/// Merges `other` into `survivor` with the merge stopped right after its first write: the
/// other member emptied, the survivor not yet filled.
async fn merge_stopped_after_its_first_write(s: &Setup, survivor: &str, other: &str) {
    s.cut.arm(1);
    let merge = s
        .services
        .merge_members("kr-shop", survivor, other, "the same customer", "ops")
        .await;
    s.cut.disarm();
    assert!(s.cut.reached() && merge.is_err(), "{merge:?}");
}

/// Erases `member` with its run stopped right after its first write, the mark.
async fn erasure_stopped_after_its_mark(s: &Setup, member: &str) {
    s.cut.arm(1);
    let erasure = s
        .services
        .erase_member("kr-shop", member, "erasure request", "ops")
        .await;
    s.cut.disarm();
    assert!(s.cut.reached() && erasure.is_err(), "{erasure:?}");
}

/// Whether an outcome is the refusal of a member being erased.
fn refused_as_erased<T>(outcome: &Result<T, ServiceError>) -> bool {
    matches!(
        outcome,
        Err(ServiceError::Conflict {
            problem: "member-erased",
            ..
        })
    )
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

fn finish_merge(survivor: &str, other: &str) -> String {
    json!({"type": "member.merge", "version": 1, "id": format!("merge-{other}"),
           "program": "kr-shop", "member": survivor, "occurred_at": now(),
           "data": {"from": other}})
    .to_string()
}

#[tokio::test]
async fn a_member_being_erased_is_neither_merged_into_nor_merged_from() {
    // GIVEN a member whose erasure stopped right after its mark, and another with points
    let s = setup().await;
    let (erasing, other) = ("shopify:7700000007", "shopify:7700000008");
    bought(&s, erasing, "7700007", 30_000).await;
    bought(&s, other, "7700008", 10_000).await;
    let kept = points(&s, other).await;
    erasure_stopped_after_its_mark(&s, erasing).await;
    // WHEN an operator merges the other into it, and it into the other
    let into = s
        .services
        .merge_members("kr-shop", erasing, other, "the same customer", "ops")
        .await;
    let from = s
        .services
        .merge_members("kr-shop", other, erasing, "the same customer", "ops")
        .await;
    // THEN both are refused as 409 member-erased and the other keeps its points
    for refused in [&into, &from] {
        assert!(refused_as_erased(refused), "{refused:?}");
    }
    assert_eq!(points(&s, other).await, kept);
    // AND the erasure run again still leaves nothing under the member's id
    s.services
        .erase_member("kr-shop", erasing, "erasure request", "ops")
        .await
        .unwrap();
    assert_eq!(items_under(&s.client, &s.table, erasing).await, 0);
}

#[tokio::test]
async fn a_merge_whose_survivor_is_erased_before_it_finishes_erases_the_other_too() {
    // GIVEN a merge stopped after its first write: the other member emptied into a survivor
    // that has not received it yet
    let s = setup().await;
    let (survivor, other) = ("shopify:7700000004", "shopify:7700000005");
    bought(&s, survivor, "7700004", 40_000).await;
    bought(&s, other, "7700005", 10_000).await;
    // (a season later: their points are available)
    s.clock.set(now() + chrono::Duration::days(90));
    let before = (points(&s, survivor).await, points(&s, other).await);
    assert!(before.0 .0 > 0 && before.1 .0 > 0, "{before:?}");
    assert!(s
        .store
        .put_alias("kr-shop", "email", "orphan@example.com", other)
        .await
        .unwrap());
    merge_stopped_after_its_first_write(&s, survivor, other).await;
    // WHEN the survivor's erasure stops after its mark, and the merge's message arrives
    erasure_stopped_after_its_mark(&s, survivor).await;
    let waiting = s
        .services
        .process_earn(&finish_merge(survivor, other))
        .await;
    // THEN the merge waits: nothing is moved into a member being erased
    assert!(waiting.is_err(), "{waiting:?}");
    // WHEN the erasure is run again
    s.services
        .erase_member("kr-shop", survivor, "erasure request", "ops")
        .await
        .unwrap();
    // THEN the audit finds the other's points merged into no one that exists
    let merges = |report: &loyalty_core::services::audit::AuditReport| -> Vec<(Option<String>, Option<i64>)> {
        let found = report.violations.iter().filter(|v| v.rule == "merge");
        found.map(|v| (v.member.clone(), v.difference)).collect()
    };
    let quiet: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(|_| {});
    let audit = s
        .services
        .audit(Some("kr-shop"), quiet.clone())
        .await
        .unwrap();
    let moved = before.1 .0 + before.1 .1;
    assert_eq!(merges(&audit), vec![(Some(other.to_string()), Some(moved))]);
    // WHEN the message arrives again
    let finished = s
        .services
        .process_earn(&finish_merge(survivor, other))
        .await;
    // THEN the merge has no survivor to finish into, and the other member, the same person,
    // is erased with it: nothing is left under either id, nor its email
    assert!(
        matches!(finished, Ok(Processed::NoEffect(_))),
        "{finished:?}"
    );
    for gone in [survivor, other] {
        assert_eq!(items_under(&s.client, &s.table, gone).await, 0, "{gone}");
    }
    let email = s
        .store
        .resolve_alias("kr-shop", "email", "orphan@example.com");
    assert_eq!(email.await.unwrap(), None);
    // AND the other's points, merged out and never received, were given up with it: the
    // books' merge halves cancel and nothing is owed or pending
    let books = s.services.liability("kr-shop", None).await.unwrap();
    let transferred: i64 = books.movements.iter().map(|m| m.transferred).sum();
    assert_eq!(transferred, 0, "{:?}", books.movements);
    assert_eq!((books.net, books.pending), (0, 0));
    let forfeited: i64 = books.movements.iter().map(|m| m.forfeited).sum();
    assert_eq!(forfeited, before.0 .0 + before.1 .0);
    // AND the accounts kept under pseudonyms say nothing of the merge nor of the person
    let kept = kept_accounts(&s.client, &s.table).await;
    assert_eq!(kept.len(), 2, "{kept:?}");
    for pseudonym in &kept {
        let state = s
            .store
            .load_member("kr-shop", pseudonym, &[])
            .await
            .unwrap();
        let account = state.account.unwrap();
        assert!(
            account.merged.is_none(),
            "{pseudonym}: {:?}",
            account.merged
        );
        assert_eq!(account.profile, Default::default(), "{pseudonym}");
        // (nor their ledgers: not the survivor's id in the other's merge entry either)
        let ledger = s
            .store
            .ledger_page("kr-shop", pseudonym, 1000, None)
            .await
            .unwrap();
        for entry in &ledger.entries {
            let text = serde_json::to_string(entry).unwrap();
            for id in [survivor, other, "7700000004", "7700000005"] {
                assert!(!text.contains(id), "{pseudonym} names {id}: {text}");
            }
        }
    }
    // AND the audit finds nothing wrong
    let audit = s.services.audit(Some("kr-shop"), quiet).await.unwrap();
    assert!(audit.violations.is_empty(), "{:?}", audit.violations);
    // AND the message delivered again changes nothing
    let again = s
        .services
        .process_earn(&finish_merge(survivor, other))
        .await;
    assert!(matches!(again, Ok(Processed::NoEffect(_))), "{again:?}");
}

#[tokio::test]
async fn a_resume_s_message_cut_at_any_write_is_finished_by_its_delivery_again() {
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
        // AND its resume, one write: the lift with the message that applies them
        let resumed = s
            .services
            .resume("kr-shop", &member, "cleared", Waiting::Apply, "ops")
            .await
            .unwrap();
        assert_eq!(resumed.applied, 3);
        let finishing = s
            .store
            .outbox(1_000)
            .await
            .unwrap()
            .into_iter()
            .find(|m| m.envelope.kind == MEMBER_RESUMED && m.envelope.member == member)
            .expect("the lift's message");
        let body = serde_json::to_string(&finishing.envelope).unwrap();

        // WHEN the message's delivery is stopped at its `at`-th write
        s.cut.arm(at);
        let first = s.services.process_earn(&body).await;
        s.cut.disarm();
        if !s.cut.reached() {
            let done = first.expect("a delivery that was not stopped finishes");
            assert!(matches!(done, Processed::Applied { .. }), "{done:?}");
            break;
        }
        assert!(
            first.is_err(),
            "stopped at write {at}, it reported {first:?}"
        );
        cuts += 1;
        // AND it is delivered again, as the queue does
        s.services
            .process_earn(&body)
            .await
            .unwrap_or_else(|e| panic!("delivered again after write {at}: {e:?}"));

        // THEN the member is not suspended, nothing waits, and each purchase is on its way once
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
    // (each of the three waiting events)
    assert!(cuts >= 3, "only {cuts} writes were cut");
}

fn cancelled(member: &str, order: &str) -> String {
    json!({"type": "purchase.cancelled", "version": 1, "id": format!("shopify-order-{order}-cancelled"),
           "program": "kr-shop", "member": member, "occurred_at": now(),
           "data": {"order_id": order, "platform": "shopify"}})
    .to_string()
}

#[tokio::test]
async fn an_order_cancelled_between_a_merge_s_steps_is_taken_back_from_the_survivor() {
    // GIVEN a survivor with an order, and another member whose order is still in its return
    // window, merged with the merge stopped after its first write
    let s = setup().await;
    let (survivor, other) = ("shopify:7700000010", "shopify:7700000011");
    bought(&s, survivor, "7700010", 20_000).await;
    bought(&s, other, "7700011", 10_000).await;
    let own = points(&s, survivor).await;
    merge_stopped_after_its_first_write(&s, survivor, other).await;
    // WHEN the other's order is cancelled before the merge's second step, which then runs
    s.services
        .process_earn(&cancelled(other, "7700011"))
        .await
        .unwrap();
    s.services
        .process_earn(&finish_merge(survivor, other))
        .await
        .unwrap();
    // THEN the cancellation took the order's points back: the survivor has its own alone
    assert_eq!(points(&s, survivor).await, own);
    // AND the order's record holds the purchase with the cancellation applied, nothing parked
    let state = s
        .store
        .load_member("kr-shop", survivor, &["shopify#7700011".to_string()])
        .await
        .unwrap();
    let record = &state.orders["shopify#7700011"];
    assert!(
        record.earned.is_some() && record.parked.is_empty(),
        "{record:?}"
    );
    assert!(record.applied.contains("cancel"), "{record:?}");
}

#[tokio::test]
async fn a_merge_whose_second_step_never_came_is_named_by_the_audit_until_it_is_finished() {
    // GIVEN a merge stopped after its first write, whose message was lost
    let s = setup().await;
    let (survivor, other) = ("shopify:7700000008", "shopify:7700000009");
    bought(&s, survivor, "7700008", 40_000).await;
    bought(&s, other, "7700009", 10_000).await;
    let moved = points(&s, other).await;
    merge_stopped_after_its_first_write(&s, survivor, other).await;
    let quiet: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(|_| {});
    let merges = |report: &loyalty_core::services::audit::AuditReport| -> Vec<(Option<String>, Option<i64>)> {
        let found = report.violations.iter().filter(|v| v.rule == "merge");
        found.map(|v| (v.member.clone(), v.difference)).collect()
    };
    // WHEN the audit runs within the hour THEN the merge is still its own business
    let audit = s
        .services
        .audit(Some("kr-shop"), quiet.clone())
        .await
        .unwrap();
    assert_eq!(merges(&audit), vec![]);
    // WHEN it runs two hours later
    s.clock.set(now() + chrono::Duration::hours(2));
    let audit = s
        .services
        .audit(Some("kr-shop"), quiet.clone())
        .await
        .unwrap();
    // THEN it names the member whose points reached no one, and how many
    assert_eq!(
        merges(&audit),
        vec![(Some(other.to_string()), Some(moved.0 + moved.1))]
    );
    // WHEN the merge is asked for again THEN it finishes and the audit is quiet
    s.services
        .merge_members("kr-shop", survivor, other, "the same customer", "ops")
        .await
        .unwrap();
    let audit = s.services.audit(Some("kr-shop"), quiet).await.unwrap();
    assert!(audit.violations.is_empty(), "{:?}", audit.violations);
}

#[tokio::test]
async fn a_merge_finished_after_its_survivor_was_merged_on_lands_where_the_person_is() {
    // GIVEN a's merge into b stopped after its first write (a emptied, b not yet filled), and
    // then b merged into c in full: one person's three accounts
    let s = setup().await;
    let (a, b, c) = (
        "shopify:7700000011",
        "shopify:7700000012",
        "shopify:7700000013",
    );
    bought(&s, a, "7700011", 10_000).await;
    bought(&s, b, "7700012", 20_000).await;
    bought(&s, c, "7700013", 30_000).await;
    s.clock.set(now() + chrono::Duration::days(90));
    let total = |(balance, pending): (i64, i64)| balance + pending;
    let before =
        total(points(&s, a).await) + total(points(&s, b).await) + total(points(&s, c).await);
    merge_stopped_after_its_first_write(&s, b, a).await;
    s.services
        .merge_members("kr-shop", c, b, "the same customer", "ops")
        .await
        .unwrap();
    // WHEN the first merge's message arrives
    let finished = s.services.process_earn(&finish_merge(b, a)).await;
    assert!(finished.is_ok(), "{finished:?}");
    // THEN a's points reach c, where the person is
    assert_eq!(total(points(&s, c).await), before);
    // AND erasing c leaves nothing under any of the three ids
    s.services
        .erase_member("kr-shop", c, "erasure request", "ops")
        .await
        .unwrap();
    for gone in [a, b, c] {
        assert_eq!(items_under(&s.client, &s.table, gone).await, 0, "{gone}");
    }
}

#[tokio::test]
async fn a_merge_message_delivered_again_after_its_survivor_began_merging_on_adds_nothing() {
    // GIVEN a merged into b in full (its message still to come), then b's merge into c
    // stopped after its first write: one person's three accounts
    let s = setup().await;
    let (a, b, c) = (
        "shopify:7700000021",
        "shopify:7700000022",
        "shopify:7700000023",
    );
    bought(&s, a, "7700021", 10_000).await;
    bought(&s, b, "7700022", 20_000).await;
    bought(&s, c, "7700023", 30_000).await;
    s.clock.set(now() + chrono::Duration::days(90));
    let total = |(balance, pending): (i64, i64)| balance + pending;
    let before =
        total(points(&s, a).await) + total(points(&s, b).await) + total(points(&s, c).await);
    s.services
        .merge_members("kr-shop", b, a, "the same customer", "ops")
        .await
        .unwrap();
    merge_stopped_after_its_first_write(&s, c, b).await;
    // WHEN a's merge message arrives, then b's
    let again = s.services.process_earn(&finish_merge(b, a)).await;
    assert!(again.is_ok(), "{again:?}");
    let finished = s.services.process_earn(&finish_merge(c, b)).await;
    assert!(finished.is_ok(), "{finished:?}");
    // THEN c has the person's points once
    assert_eq!(total(points(&s, c).await), before);
}

#[tokio::test]
async fn books_the_store_did_not_answer_are_unread_not_wrong() {
    // GIVEN a member with a purchase, and the books' partition not answering
    let s = setup().await;
    bought(&s, "shopify:7700000021", "7700021", 40_000).await;
    s.books_down.on.store(true, Ordering::SeqCst);
    let quiet: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(|_| {});
    // WHEN the audit runs
    let audit = s
        .services
        .audit(Some("kr-shop"), quiet.clone())
        .await
        .unwrap();
    // THEN the books are named as unread, not as a violation (before: a "books" violation,
    // exit status 1, for a store that did not answer)
    assert!(audit.violations.is_empty(), "{:?}", audit.violations);
    assert_eq!(audit.unread.len(), 1, "{:?}", audit.unread);
    assert_eq!(
        (audit.unread[0].program.as_str(), audit.unread[0].rule),
        ("kr-shop", "books")
    );
    // WHEN the partition answers again THEN the audit reads them and is quiet
    s.books_down.on.store(false, Ordering::SeqCst);
    let audit = s.services.audit(Some("kr-shop"), quiet).await.unwrap();
    assert!(
        audit.violations.is_empty() && audit.unread.is_empty(),
        "{audit:?}"
    );
}

#[tokio::test]
async fn an_audit_asked_through_the_api_whose_books_were_unread_is_failed_not_done() {
    // GIVEN a member with a purchase, the books' partition not answering, and an audit asked
    // for through the API
    let s = setup().await;
    bought(&s, "shopify:7700000031", "7700031", 40_000).await;
    s.books_down.on.store(true, Ordering::SeqCst);
    let run_audit = |id: String| {
        let body = serde_json::json!({
            "type": loyalty_core::services::audit::AUDIT_REQUESTED, "version": 1,
            "id": format!("audit-{id}"), "program": "kr-shop", "member": "#audit",
            "occurred_at": now().to_rfc3339(), "data": {"audit": id}
        })
        .to_string();
        let services = &s.services;
        async move { services.process_tier_check(&body).await }
    };
    let asked = s.services.request_audit("kr-shop", "ops").await.unwrap();
    // WHEN the tier queue's consumer runs it
    run_audit(asked.id.clone()).await.unwrap();
    // THEN the run is failed, its report kept with the books unread and what to do (before:
    // "done", with no violation, as if the books had been checked)
    let run = s.services.audit_run("kr-shop", &asked.id).await.unwrap();
    assert_eq!(run.status, "failed", "{run:?}");
    let report = run.report.unwrap();
    assert_eq!(
        report["unread"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("ask for the audit again")),
        "{report}"
    );
    // AND another asked once the books answer is done
    s.books_down.on.store(false, Ordering::SeqCst);
    let again = s.services.request_audit("kr-shop", "ops").await.unwrap();
    run_audit(again.id.clone()).await.unwrap();
    let run = s.services.audit_run("kr-shop", &again.id).await.unwrap();
    assert_eq!(run.status, "done", "{run:?}");
}
