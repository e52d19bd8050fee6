//! Earn's first read of a member is eventually consistent: DynamoDB may answer each item of
//! it from a replica a moment behind. moto's reads are always current, so here a client plays
//! such a replica: it takes the order records and event markers out of every eventually
//! consistent BatchGetItem answer, as if they had been written a moment ago, and leaves the
//! account as it is; others answer one item as it was before (an account, an assignment), or
//! leave the member's campaign assignments out. Whatever earn decides outside its commit on
//! such a read would be decided wrongly; these tests show it reads currently first, and that
//! its commit refuses a stale item it writes.
//! Runs on moto (`scripts/test` exports `LOYALTY_TEST_DYNAMODB_ENDPOINT`).
#![cfg(feature = "aws")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemOutput;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, TimeZone, Utc};
use loyalty_core::ports::{CampaignStore, FixedClock, MemberStore};
use loyalty_core::services::earn::Processed;
use loyalty_core::services::programs::ProgramFormat;
use loyalty_core::services::Services;
use loyalty_core::store::dynamodb::DynamoStore;
use serde_json::json;

mod common;

use common::replica::{BehindReplica, Lag, Replica};

type Item = HashMap<String, AttributeValue>;

/// A replica behind on one item alone (an account, an assignment): eventually consistent batch
/// reads answer it as it was when [`OldItem::keep`] copied it; everything else is current.
/// Counts the reads it aged.
#[derive(Debug, Default, Clone)]
struct OldItem {
    kept: Arc<Mutex<Option<Item>>>,
    aged: Arc<AtomicUsize>,
}

impl OldItem {
    /// Copies the member's account as it is now, to be answered from then on.
    async fn keep(&self, table: &str, member: &str) {
        self.keep_item(table, member, "ACCOUNT").await;
    }

    /// Copies the member's item `sk` as it is now, to be answered from then on.
    async fn keep_item(&self, table: &str, member: &str, sk: &str) {
        let key = |pk: String, sk: &str| {
            HashMap::from([
                ("PK".to_string(), AttributeValue::S(pk)),
                ("SK".to_string(), AttributeValue::S(sk.to_string())),
            ])
        };
        let item = client()
            .get_item()
            .table_name(table)
            .set_key(Some(key(format!("P#kr-shop#M#{member}"), sk)))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
            .expect("the member has the item");
        *self.kept.lock().unwrap() = Some(item);
    }
}

impl Lag for OldItem {
    fn age(&self, answer: &mut BatchGetItemOutput) {
        let Some(old) = self.kept.lock().unwrap().clone() else {
            return;
        };
        for items in answer.responses.iter_mut().flat_map(|r| r.values_mut()) {
            for item in items.iter_mut() {
                if item.get("PK") == old.get("PK") && item.get("SK") == old.get("SK") {
                    *item = old.clone();
                    self.aged.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

/// A replica that has none of the member's campaign assignments yet: eventually consistent
/// batch reads come back without them. Counts the reads it aged.
#[derive(Debug, Default, Clone)]
struct NoAssignments(Arc<AtomicUsize>);

impl Lag for NoAssignments {
    fn age(&self, answer: &mut BatchGetItemOutput) {
        let assignment = |item: &Item| {
            item.get("SK")
                .and_then(|sk| sk.as_s().ok())
                .is_some_and(|sk| sk.starts_with("A#"))
        };
        for items in answer.responses.iter_mut().flat_map(|r| r.values_mut()) {
            let before = items.len();
            items.retain(|item| !assignment(item));
            if items.len() < before {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 3, 9, 0, 0).unwrap()
}

fn services_on(table: &str, client: aws_sdk_dynamodb::Client) -> Services {
    Services::new(
        Arc::new(DynamoStore::new(client, table)),
        Arc::new(common::Recorder::default()),
        FixedClock::at(now()),
    )
}

/// Services of a warm instance (the program read: a cold one reads the member strongly,
/// beside the program) whose eventually consistent reads are answered as `lag` would.
async fn warm_behind<L: Lag + Clone>(table: &str, lag: &L) -> Services {
    let config = common::moto_dynamodb("stale-reads").interceptor(Replica(lag.clone()));
    let services = services_on(table, aws_sdk_dynamodb::Client::from_conf(config.build()));
    services.program("kr-shop").await.expect("kr-shop is saved");
    services
}

/// `message` delivered again to a warm instance behind a [`BehindReplica`]: what became of it,
/// and how many reads the replica aged.
async fn again_behind(table: &str, message: &str) -> (Processed, usize) {
    let replica = BehindReplica::default();
    let again = warm_behind(table, &replica)
        .await
        .process_earn(message)
        .await
        .unwrap();
    (again, replica.aged())
}

/// A client whose reads are all current.
fn client() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::from_conf(common::moto_dynamodb("stale-reads").build())
}

/// A table of its own on moto with kr-shop saved, and services that read it currently.
async fn kr_shop_table() -> (String, Services) {
    kr_shop_table_as(str::to_string).await
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

/// The member's points, available and pending.
async fn points(services: &Services, member: &str) -> i64 {
    let view = services.member_view("kr-shop", member).await.unwrap();
    view.balance + view.pending
}

#[tokio::test]
async fn a_repeat_for_a_merged_member_is_not_redirected_on_a_read_a_moment_old() {
    // GIVEN a purchase applied to one member, who was then merged into another
    let (table, current) = kr_shop_table().await;
    let (merged, survivor) = ("shopify:7400000001", "shopify:7400000002");
    let message = purchase(merged, "9400001", 30_000);
    for body in [&message, &purchase(survivor, "9400002", 50_000)] {
        let applied = current.process_earn(body).await.unwrap();
        assert!(matches!(applied, Processed::Applied { .. }), "{applied:?}");
    }
    current
        .merge_members("kr-shop", survivor, merged, "the same customer", "ops")
        .await
        .unwrap();
    let before = points(&current, survivor).await;
    assert!(before > 0);
    // WHEN the purchase is delivered again, to an instance whose eventually consistent reads
    // see the merge but not yet the order's record, which holds the event's marker
    let (again, aged) = again_behind(&table, &message).await;
    // THEN the replica did answer a read, yet the delivery is told a duplicate
    assert!(aged > 0);
    assert!(matches!(again, Processed::Duplicate), "{again:?}");
    // AND the survivor did not earn the purchase a second time
    assert_eq!(points(&current, survivor).await, before);
}

#[tokio::test]
async fn a_new_purchase_read_a_moment_old_still_earns_once() {
    // GIVEN two members who bought the same once
    let (table, current) = kr_shop_table().await;
    let (member, control) = ("shopify:7400000003", "shopify:7400000004");
    for (who, order) in [(member, "9400003"), (control, "9400004")] {
        current
            .process_earn(&purchase(who, order, 30_000))
            .await
            .unwrap();
    }
    let before = points(&current, member).await;
    // WHEN the member's next purchase is processed on reads that miss the member's order
    // records, and delivered again the same way; the other member's on current reads
    let replica = BehindReplica::default();
    let behind = warm_behind(&table, &replica).await;
    let message = purchase(member, "9400005", 50_000);
    let first = behind.process_earn(&message).await.unwrap();
    let again = behind.process_earn(&message).await.unwrap();
    current
        .process_earn(&purchase(control, "9400006", 50_000))
        .await
        .unwrap();
    // THEN the first applies and the repeat is a duplicate
    assert!(replica.aged() >= 2);
    assert!(matches!(first, Processed::Applied { .. }), "{first:?}");
    assert!(matches!(again, Processed::Duplicate), "{again:?}");
    // AND the member earned what the other did: the purchase once
    assert!(points(&current, member).await > before);
    assert_eq!(
        points(&current, member).await,
        points(&current, control).await
    );
}

#[tokio::test]
async fn a_repeat_for_a_suspended_member_does_not_wait_for_a_resume_on_a_read_a_moment_old() {
    // GIVEN a purchase applied to a member who was then suspended
    let (table, current) = kr_shop_table().await;
    let member = "shopify:7400000007";
    let message = purchase(member, "9400007", 30_000);
    current.process_earn(&message).await.unwrap();
    current
        .suspend("kr-shop", member, "chargebacks under review", "ops")
        .await
        .unwrap();
    let before = points(&current, member).await;
    // WHEN the purchase is delivered again, to an instance whose eventually consistent reads
    // see the suspension but not yet the order's record
    let (again, aged) = again_behind(&table, &message).await;
    // THEN it is told a duplicate: nothing waits for the resume to earn it again
    assert!(aged > 0);
    assert!(matches!(again, Processed::Duplicate), "{again:?}");
    assert_eq!(points(&current, member).await, before);
}

/// A member shown a running campaign whose goal is revenue, and a purchase of theirs it
/// counted: its refund reads the member's assignment, currently, once the order names it.
async fn counted_purchase(current: &Services, member: &str, order: &str) {
    let campaign = json!({
        "name": "Spend in December", "kind": "on_exposure", "status": "running",
        "start": "2026-12-01T00:00:00Z", "end": "2027-01-01T00:00:00Z",
        "hash_seed": "spend-december", "goal": "revenue",
        "variants": [
            {"key": "control", "weight": 0.0, "effect": {"type": "none"}},
            {"key": "all", "weight": 1.0, "effect": {"type": "none"}}
        ]
    });
    current
        .put_campaign("kr-shop", "spend", campaign.to_string().as_bytes())
        .await
        .unwrap();
    current.my_campaigns("kr-shop", member, None).await.unwrap();
    let applied = current
        .process_earn(&purchase(member, order, 30_000))
        .await
        .unwrap();
    assert!(matches!(applied, Processed::Applied { .. }), "{applied:?}");
}

fn refund(member: &str, order: &str) -> String {
    json!({
        "type": "purchase.refunded", "version": 1, "id": format!("shopify-refund-{order}"),
        "program": "kr-shop", "member": member, "occurred_at": now(),
        "data": {"order_id": order, "refund_id": format!("r-{order}"), "platform": "shopify",
                 "lines": [{"line_id": "1", "quantity": 1}]}
    })
    .to_string()
}

#[tokio::test]
async fn a_refund_for_a_member_suspended_a_moment_ago_waits_for_the_resume() {
    // GIVEN a member's purchase counted in a campaign, and the member suspended since
    let (table, current) = kr_shop_table().await;
    let member = "shopify:7400000008";
    counted_purchase(&current, member, "9400008").await;
    let old = OldItem::default();
    old.keep(&table, member).await;
    current
        .suspend("kr-shop", member, "chargebacks under review", "ops")
        .await
        .unwrap();
    let before = points(&current, member).await;
    // WHEN the order's refund is processed by an instance whose eventually consistent reads
    // still answer the account from before the suspension
    let refunded = warm_behind(&table, &old)
        .await
        .process_earn(&refund(member, "9400008"))
        .await
        .unwrap();
    // THEN the replica did answer the old account, yet the refund waits for the resume
    assert!(old.aged.load(Ordering::SeqCst) > 0);
    assert!(matches!(refunded, Processed::NoEffect(_)), "{refunded:?}");
    // AND the suspended member's points are as they were
    assert_eq!(points(&current, member).await, before);
}

#[tokio::test]
async fn a_refund_for_a_member_merged_a_moment_ago_is_the_survivor_s() {
    // GIVEN a member's purchase counted in a campaign, and the member merged since
    let (table, current) = kr_shop_table().await;
    let (merged, survivor) = ("shopify:7400000009", "shopify:7400000010");
    counted_purchase(&current, merged, "9400009").await;
    current
        .process_earn(&purchase(survivor, "9400010", 50_000))
        .await
        .unwrap();
    let old = OldItem::default();
    old.keep(&table, merged).await;
    current
        .merge_members("kr-shop", survivor, merged, "the same customer", "ops")
        .await
        .unwrap();
    let before = points(&current, survivor).await;
    // WHEN the order's refund is processed by an instance whose eventually consistent reads
    // still answer the merged member's account from before the merge
    let refunded = warm_behind(&table, &old)
        .await
        .process_earn(&refund(merged, "9400009"))
        .await
        .unwrap();
    // THEN the replica did answer the old account, yet the refund is the survivor's: it takes
    // the order's points back from the survivor, and leaves the emptied account as it was
    assert!(old.aged.load(Ordering::SeqCst) > 0);
    assert!(
        matches!(refunded, Processed::Applied { .. }),
        "{refunded:?}"
    );
    assert!(points(&current, survivor).await < before);
    assert_eq!(points(&current, merged).await, 0);
}

#[tokio::test]
async fn a_purchase_read_beside_an_assignment_from_before_a_refund_keeps_the_refund() {
    // GIVEN a member's purchase of 30,000 counted in a campaign, its assignment as it was then
    // kept, and the order refunded since (the assignment's revenue back to 0, its purchases
    // unchanged)
    let (table, current) = kr_shop_table().await;
    let member = "shopify:7400000014";
    counted_purchase(&current, member, "9400014").await;
    let old = OldItem::default();
    old.keep_item(&table, member, "A#spend").await;
    let refunded = current
        .process_earn(&refund(member, "9400014"))
        .await
        .unwrap();
    assert!(
        matches!(refunded, Processed::Applied { .. }),
        "{refunded:?}"
    );
    // WHEN the member's next purchase, of 50,000, is processed by an instance whose eventually
    // consistent reads answer the current account beside the assignment from before the refund
    let bought = warm_behind(&table, &old)
        .await
        .process_earn(&purchase(member, "9400015", 50_000))
        .await
        .unwrap();
    // THEN the replica did answer the old assignment, and the purchase applied
    assert!(old.aged.load(Ordering::SeqCst) > 0);
    assert!(matches!(bought, Processed::Applied { .. }), "{bought:?}");
    // AND the assignment counts both purchases with the refund's revenue taken back: 50,000,
    // not the 80,000 a write over the old one would leave
    let (assignment, counters) = spend_counts(&table, member).await;
    assert_eq!(assignment, (2, 50_000));
    // AND so do the campaign's counters
    assert_eq!(counters, (2, 50_000));
}

/// The purchases and revenue the `spend` campaign counts for `member`: on the member's
/// assignment, and on the campaign's counters summed over shards and variants.
async fn spend_counts(table: &str, member: &str) -> ((u32, i64), (i64, i64)) {
    let store = DynamoStore::new(client(), table);
    let state = store
        .load_member_with("kr-shop", member, &[], &["spend".to_string()])
        .await
        .unwrap();
    let assignment = &state.assignments["spend"];
    let counts = store.campaign_counts("kr-shop", "spend").await.unwrap();
    let revenue: i64 = counts.iter().map(|c| c.revenue).sum();
    let purchases: i64 = counts.iter().map(|c| c.purchases).sum();
    (
        (assignment.purchases, assignment.revenue),
        (purchases, revenue),
    )
}

#[tokio::test]
async fn a_purchase_whose_read_missed_the_member_s_assignment_still_counts_in_the_campaign() {
    // GIVEN a member shown a running campaign, whose first purchase of 30,000 it counted
    let (table, current) = kr_shop_table().await;
    let member = "shopify:7400000016";
    counted_purchase(&current, member, "9400016").await;
    // WHEN the member's next purchase, of 50,000, is processed by an instance whose eventually
    // consistent reads do not have the member's assignment yet (the member looks outside the
    // campaign, which counts only members shown it)
    let replica = NoAssignments::default();
    let bought = warm_behind(&table, &replica)
        .await
        .process_earn(&purchase(member, "9400017", 50_000))
        .await
        .unwrap();
    // THEN the replica did leave the assignment out, and the purchase applied
    assert!(replica.0.load(Ordering::SeqCst) > 0);
    assert!(matches!(bought, Processed::Applied { .. }), "{bought:?}");
    // AND the campaign counted it: two purchases, 80,000 of revenue, on the assignment and on
    // the counters
    let (assignment, counters) = spend_counts(&table, member).await;
    assert_eq!(assignment, (2, 80_000));
    assert_eq!(counters, (2, 80_000));
}

/// A table of its own on moto with kr-shop saved as `edit` changes it, and services that read
/// it currently.
async fn kr_shop_table_as(edit: impl FnOnce(&str) -> String) -> (String, Services) {
    let table = format!("loyalty-stale-{}", uuid::Uuid::new_v4().simple());
    DynamoStore::new(client(), &table)
        .create_table()
        .await
        .expect("moto creates the table");
    let services = services_on(&table, client());
    let file = edit(include_str!("../../examples/kr-shop.toml"));
    services
        .put_program("kr-shop", &file, ProgramFormat::Toml)
        .await
        .expect("the edited kr-shop is valid");
    (table, services)
}

#[tokio::test]
async fn a_repeat_is_not_held_for_review_on_a_read_a_moment_old() {
    // GIVEN a program that holds a day's earnings over 500 points for review, and a member's
    // purchase of 300 points applied today
    let (table, current) =
        kr_shop_table_as(|file| format!("{file}\n[safeguards]\ndaily_points = 500\n")).await;
    let member = "shopify:7400000011";
    let message = purchase(member, "9400011", 30_000);
    let applied = current.process_earn(&message).await.unwrap();
    assert!(matches!(applied, Processed::Applied { .. }), "{applied:?}");
    assert_eq!(points(&current, member).await, 300);
    // WHEN the purchase is delivered again, to an instance whose eventually consistent reads
    // see the day's 300 points on the account but not yet the order's record, which holds the
    // event's marker (the purchase looks new: 300 + 300 is over the limit)
    let (again, aged) = again_behind(&table, &message).await;
    // THEN the replica did answer a read, yet the delivery is told a duplicate
    assert!(aged > 0);
    assert!(matches!(again, Processed::Duplicate), "{again:?}");
    // AND nothing waits for an operator's review, and the points are as they were
    assert!(current.held_events("kr-shop").await.unwrap().is_empty());
    assert_eq!(points(&current, member).await, 300);
}

fn referrer_reward(referrer: &str, referee: &str) -> String {
    json!({
        "type": "engagement.recorded", "version": 1, "id": format!("referral-{referee}"),
        "program": "kr-shop", "member": referrer, "occurred_at": now(),
        "data": {"action": "referral", "ref": referee, "referee": referee}
    })
    .to_string()
}

#[tokio::test]
async fn a_repeat_is_not_rejected_on_a_read_a_moment_old() {
    // GIVEN a program that rewards one referral a month, and a referrer rewarded for one
    let (table, current) = kr_shop_table_as(|file| {
        file.replace(
            "referee_points = 1000",
            "referee_points = 1000\nmax_per_month = 1",
        )
    })
    .await;
    let referrer = "shopify:7400000012";
    let message = referrer_reward(referrer, "shopify:7400000013");
    let applied = current.process_earn(&message).await.unwrap();
    assert!(matches!(applied, Processed::Applied { .. }), "{applied:?}");
    let before = points(&current, referrer).await;
    assert_eq!(before, 3000);
    // WHEN the reward is delivered again, to an instance whose eventually consistent reads see
    // the month's one reward on the account but not yet the event's marker (the reward looks
    // like a second one, over the month's limit)
    let (again, aged) = again_behind(&table, &message).await;
    // THEN the replica did answer a read, yet the delivery is told a duplicate
    assert!(aged > 0);
    assert!(matches!(again, Processed::Duplicate), "{again:?}");
    // AND no rejected event is stored for an operator to find, and the points are as they were
    let rejected = current
        .rejected_events("kr-shop", None, None)
        .await
        .unwrap();
    assert!(rejected.events.is_empty(), "{:?}", rejected.events);
    assert_eq!(points(&current, referrer).await, before);
}
