//! An earn batch's commits written together on DynamoDB (moto; `scripts/test` exports
//! `LOYALTY_TEST_DYNAMODB_ENDPOINT`): one transaction, and one write of the program's books,
//! for the purchases of several members, in a running campaign too, counting what the same
//! messages count one by one; each message alone again when they cannot go together or the
//! group's answer is lost. Requests are seen from outside the code, through the client's
//! timeline.
#![cfg(feature = "aws")]

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use aws_sdk_dynamodb::config::interceptors::{
    BeforeDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{Builder, ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_smithy_types::config_bag::{Storable, StoreReplace};

use chrono::{DateTime, TimeZone, Utc};
use loyalty_core::domain::{Account, EventContext, OrderRecord, Program};
use loyalty_core::ports::{
    counter_shard, CampaignStore, Commit, CommitError, EventMarker, FixedClock, MemberStore,
};
use loyalty_core::report::VariantCounts;
use loyalty_core::services::batch::{process_batch, Consumer, Record};
use loyalty_core::services::Services;
use loyalty_core::store::dynamodb::DynamoStore;
use serde_json::json;

mod common;

use common::replica::{BehindReplica, Replica};
use common::timeline::Timeline;
use common::Stream;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap()
}

/// kr-shop on a table of its own, with services whose client notes its requests.
async fn kr_shop() -> (Arc<Services>, Arc<DynamoStore>, Timeline) {
    let table = format!("loyalty-batch-{}", uuid::Uuid::new_v4().simple());
    let timeline = Timeline::default();
    let (services, store) = services_on(&table, &timeline, |c| c);
    store.create_table().await.expect("moto creates the table");
    common::save_kr_shop(&services).await;
    (services, store, timeline)
}

/// kr-shop on a table of its own, by the table's name.
async fn kr_shop_named() -> (String, Arc<Services>) {
    let table = format!("loyalty-batch-{}", uuid::Uuid::new_v4().simple());
    let (services, store) = services_on(&table, &Timeline::default(), |c| c);
    store.create_table().await.expect("moto creates the table");
    common::save_kr_shop(&services).await;
    (table, services)
}

/// Services on `table` whose client notes its requests, its configuration changed by `with`
/// (an interceptor more).
fn services_on(
    table: &str,
    timeline: &Timeline,
    with: impl FnOnce(Builder) -> Builder,
) -> (Arc<Services>, Arc<DynamoStore>) {
    let config = with(common::moto_dynamodb("batch").interceptor(timeline.clone()));
    let client = aws_sdk_dynamodb::Client::from_conf(config.build());
    let store = Arc::new(DynamoStore::new(client, table));
    let services = Arc::new(Services::new(
        store.clone(),
        Arc::new(common::Recorder::default()),
        FixedClock::at(now()),
    ));
    (services, store)
}

/// A purchase message of 30,000 as earn.fifo delivers it, in `group`.
fn purchase_in(group: &str, member: &str, order: &str) -> Record {
    priced_in(group, member, order, 30_000)
}

/// A purchase message of one unit at `price` as earn.fifo delivers it, in `group`.
fn priced_in(group: &str, member: &str, order: &str, price: i64) -> Record {
    let body = json!({
        "type": "purchase.completed", "version": 1, "id": format!("shopify-order-{order}-paid"),
        "program": "kr-shop", "member": member, "occurred_at": now(),
        "data": {"order_id": order, "currency": "KRW", "platform": "shopify",
                 "lines": [{"line_id": "1", "quantity": 1, "unit_price": price.to_string()}]}
    });
    Record {
        message_id: format!("msg-{order}"),
        group: Some(group.to_string()),
        body: body.to_string(),
    }
}

fn purchase(member: &str, order: &str) -> Record {
    purchase_in(&format!("kr-shop#{member}"), member, order)
}

/// A purchase of each member, of the order `{orders}{i}{n}` for the i-th.
fn purchases(members: &[&str], orders: &str, n: u8) -> Vec<Record> {
    members
        .iter()
        .enumerate()
        .map(|(i, m)| purchase(m, &format!("{orders}{i}{n}")))
        .collect()
}

/// Processes `records` as earn's batch, which leaves nothing to retry.
async fn earned(services: &Services, records: &[Record]) {
    let failed = process_batch(services, Consumer::Earn, records).await;
    assert!(failed.is_empty(), "{failed:?}");
}

/// The member's points, available and pending.
async fn points(services: &Services, member: &str) -> i64 {
    let view = services.member_view("kr-shop", member).await.unwrap();
    view.balance + view.pending
}

/// How many items of the program's books a request's body writes.
fn books_in(body: &str) -> usize {
    body.matches("P#kr-shop#BOOKS#S#").count()
}

/// The program's books say what its members say, and the members break no rule.
async fn books_agree(services: &Services) {
    let audit = services
        .audit(Some("kr-shop"), Arc::new(|_| {}))
        .await
        .unwrap();
    assert!(audit.violations.is_empty(), "{:?}", audit.violations);
    // (an audit's read units are its own: the same audit again reads as much, not twice)
    let again = services
        .audit(Some("kr-shop"), Arc::new(|_| {}))
        .await
        .unwrap();
    assert!(audit.read_units.is_some_and(|units| units > 0.0));
    assert_eq!(again.read_units, audit.read_units);
    let program = &audit.programs["kr-shop"];
    assert_eq!(program.books.balance, program.members.balance);
    assert_eq!(program.books.pending, program.members.pending);
    assert_eq!(program.books.members, program.members.members);
}

#[tokio::test]
async fn purchases_of_several_members_in_one_batch_are_one_transaction_with_one_books_write() {
    // GIVEN kr-shop on moto, three members who bought once, and a fourth member's purchase
    // processed alone, as a measure
    let (services, _, timeline) = kr_shop().await;
    let members = [
        "shopify:8100000001",
        "shopify:8100000002",
        "shopify:8100000003",
    ];
    for first in purchases(&members, "81000", 1) {
        earned(&services, &[first]).await;
    }
    let before: Vec<i64> =
        futures_util::future::join_all(members.iter().map(|m| points(&services, m))).await;
    let alone = "shopify:8100000009";
    services
        .process_earn(&purchase(alone, "8100091").body)
        .await
        .unwrap();
    let measure = points(&services, alone).await;
    // WHEN one batch brings each of the three a new purchase
    timeline.clear();
    let batch = purchases(&members, "81000", 2);
    let failed = process_batch(&services, Consumer::Earn, &batch).await;
    // THEN nothing failed, the members were read two at a time (the connections a cold
    // instance has open), and the three commits were one transaction writing the books once
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(timeline.count("BatchGetItem"), 3, "{timeline:?}");
    assert_eq!(timeline.most_at_once("BatchGetItem"), 2, "{timeline:?}");
    assert_eq!(timeline.count("TransactWriteItems"), 1, "{timeline:?}");
    let written = timeline.sent_where(|name| {
        name.starts_with("TransactWriteItems ")
            && members.iter().all(|m| name.contains(m))
            && books_in(name) == 1
    });
    assert_eq!(written, 1, "{timeline:?}");
    // AND each member earned what a purchase earns alone, and the books agree
    for (member, before) in members.iter().zip(before) {
        assert_eq!(points(&services, member).await - before, measure);
    }
    books_agree(&services).await;
}

/// Starts a campaign of kr-shop counting purchases, in two variants that change nothing, and
/// shows it to each of `members` in the app.
async fn start_split(services: &Services, members: &[&str]) {
    let campaign = json!({
        "name": "Split", "kind": "on_exposure", "status": "running",
        "start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z",
        "hash_seed": "batch-split-2026", "goal": "purchase",
        "variants": [
            {"key": "a", "weight": 0.5, "effect": {"type": "none"}},
            {"key": "b", "weight": 0.5, "effect": {"type": "none"}}
        ]
    });
    services
        .put_campaign("kr-shop", "split", campaign.to_string().as_bytes())
        .await
        .unwrap();
    for member in members {
        services
            .my_campaigns("kr-shop", member, None)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn purchases_of_members_in_a_running_campaign_are_one_transaction_adding_to_each_variant_once(
) {
    // GIVEN kr-shop on moto, a purchase processed alone as a measure, three members who bought
    // once, each in a shard of its own of the campaign counters, then a running campaign that
    // counts purchases, which each of them has seen in the app
    let (services, store, timeline) = kr_shop().await;
    let members = [
        "shopify:8700000001",
        "shopify:8700000002",
        "shopify:8700000003",
    ];
    let shards: HashSet<u32> = members.iter().map(|m| counter_shard(m)).collect();
    assert_eq!(shards.len(), members.len(), "{shards:?}");
    earned(&services, &[purchase("shopify:8700000009", "8700091")]).await;
    let measure = points(&services, "shopify:8700000009").await;
    earned(&services, &purchases(&members, "87000", 1)).await;
    start_split(&services, &members).await;
    // WHEN one batch brings each of the three a new purchase
    timeline.clear();
    let failed = process_batch(&services, Consumer::Earn, &purchases(&members, "87000", 2)).await;
    // THEN nothing failed, and the three commits, with their assignments, were one transaction
    // adding to each variant's counters once (three members and two variants: one variant
    // had two of them, whose counters, in two shards, went as one write)
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(timeline.count("TransactWriteItems"), 1, "{timeline:?}");
    let counts = store.campaign_counts("kr-shop", "split").await.unwrap();
    let counters_written = |name: &str| name.matches("P#kr-shop#C#split#S#").count();
    let written = timeline.sent_where(|name| {
        name.starts_with("TransactWriteItems ")
            && members.iter().all(|m| name.contains(m))
            && counters_written(name) == counts.len()
    });
    assert_eq!(written, 1, "{timeline:?}");
    // AND the campaign counted three assigned members, who converted with one purchase each of
    // 30,000, and each member earned what a purchase earns alone; the books agree
    let sum = |f: fn(&VariantCounts) -> i128| counts.iter().map(f).sum::<i128>();
    assert_eq!(sum(|c| c.assigned.into()), 3, "{counts:?}");
    assert_eq!(sum(|c| c.converters.into()), 3, "{counts:?}");
    assert_eq!(sum(|c| c.purchases.into()), 3, "{counts:?}");
    assert_eq!(sum(|c| c.revenue.into()), 90_000, "{counts:?}");
    assert_eq!(sum(|c| c.revenue_sq), 3 * 30_000 * 30_000, "{counts:?}");
    for member in members {
        assert_eq!(points(&services, member).await, 2 * measure);
    }
    books_agree(&services).await;
}

/// kr-shop with the split campaign running, seen in the app by each of `members`.
async fn kr_shop_in_campaign(members: &[&str]) -> (Arc<Services>, Arc<DynamoStore>, Timeline) {
    let (services, store, timeline) = kr_shop().await;
    start_split(&services, members).await;
    timeline.clear();
    (services, store, timeline)
}

/// A campaign's counts per variant, summed over the shards, by variant.
async fn counts_of(store: &DynamoStore) -> Vec<VariantCounts> {
    let mut counts = store.campaign_counts("kr-shop", "split").await.unwrap();
    counts.sort_by(|a, b| a.variant.cmp(&b.variant));
    counts
}

#[tokio::test]
async fn batches_with_repeats_in_a_running_campaign_count_what_the_same_messages_count_alone() {
    // GIVEN two kr-shop tables with the split campaign running, seen by the same six members,
    // and 48 purchase messages of theirs at various prices, 12 of them delivered again later
    let ids: Vec<String> = (1..=6).map(|i| format!("shopify:890000000{i}")).collect();
    let members: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (batched, batched_store, batched_timeline) = kr_shop_in_campaign(&members).await;
    let (alone, alone_store, alone_timeline) = kr_shop_in_campaign(&members).await;
    let mut random = Stream(20261204);
    let prices = [9_000, 30_000, 45_500, 120_000];
    let mut messages: Vec<Record> = (0..36)
        .map(|i| {
            let member = members[random.below(members.len())];
            let price = prices[random.below(prices.len())];
            priced_in(
                &format!("kr-shop#{member}"),
                member,
                &format!("89{i:03}"),
                price,
            )
        })
        .collect();
    for _ in 0..12 {
        let again = messages[random.below(messages.len())].clone();
        let at = random.below(messages.len() + 1);
        messages.insert(at, again);
    }
    // WHEN one table receives them in earn batches of up to 10 and the other one by one
    for batch in messages.chunks(10) {
        earned(&batched, batch).await;
    }
    for message in &messages {
        earned(&alone, std::slice::from_ref(message)).await;
    }
    // THEN the batches went in fewer transactions, and every member's points, the campaign's
    // counts per variant and the books are the same on both
    let (grouped, one_by_one) = (
        batched_timeline.count("TransactWriteItems"),
        alone_timeline.count("TransactWriteItems"),
    );
    assert!(grouped < one_by_one, "{grouped} against {one_by_one}");
    for member in &members {
        assert_eq!(
            points(&batched, member).await,
            points(&alone, member).await,
            "{member}"
        );
    }
    let counts = counts_of(&batched_store).await;
    assert_eq!(counts, counts_of(&alone_store).await);
    assert_eq!(counts.iter().map(|c| c.purchases).sum::<i64>(), 36);
    books_agree(&batched).await;
    books_agree(&alone).await;
}

#[tokio::test]
async fn a_cold_instance_s_batch_has_no_more_requests_in_flight_than_connections_warmed() {
    // GIVEN kr-shop on moto and three members who bought once
    let (table, services) = kr_shop_named().await;
    let members = [
        "shopify:8600000001",
        "shopify:8600000002",
        "shopify:8600000003",
    ];
    for first in purchases(&members, "86000", 1) {
        earned(&services, &[first]).await;
    }
    let one = points(&services, members[0]).await;
    // WHEN a new instance, which has read nothing yet, receives a purchase of each in one batch
    let timeline = Timeline::default();
    let (cold, _) = services_on(&table, &timeline, |c| c);
    let batch = purchases(&members, "86000", 2);
    let failed = process_batch(&cold, Consumer::Earn, &batch).await;
    // THEN no more than two requests were ever in flight (earn opens two connections during
    // init: a third would open one during the first invocation), and the commits were one
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(timeline.most_in_flight(|_| true), 2, "{timeline:?}");
    assert_eq!(timeline.count("TransactWriteItems"), 1, "{timeline:?}");
    for member in members {
        assert_eq!(points(&services, member).await, 2 * one);
    }
}

#[tokio::test]
async fn a_repeat_in_a_batch_costs_its_read_and_the_others_still_commit_together() {
    // GIVEN kr-shop on moto and a purchase already applied
    let (services, _, timeline) = kr_shop().await;
    let (a, b, c) = (
        "shopify:8200000001",
        "shopify:8200000002",
        "shopify:8200000003",
    );
    let applied = purchase(a, "8200011");
    earned(&services, std::slice::from_ref(&applied)).await;
    let points_of_a = points(&services, a).await;
    // WHEN a batch brings it again with two other members' purchases
    timeline.clear();
    let batch = [purchase(b, "8200021"), applied, purchase(c, "8200031")];
    let failed = process_batch(&services, Consumer::Earn, &batch).await;
    // THEN nothing failed, the repeat wrote nothing, and the two others were one transaction
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(timeline.count("TransactWriteItems"), 1, "{timeline:?}");
    let together = timeline.sent_where(|name| {
        name.starts_with("TransactWriteItems ")
            && name.contains(b)
            && name.contains(c)
            && !name.contains(a)
    });
    assert_eq!(together, 1, "{timeline:?}");
    assert_eq!(points(&services, a).await, points_of_a);
    assert_eq!(points(&services, b).await, points_of_a);
    assert_eq!(points(&services, c).await, points_of_a);
    books_agree(&services).await;
}

#[tokio::test]
async fn a_repeat_read_from_a_replica_behind_cancels_the_group_and_each_message_goes_alone() {
    // GIVEN kr-shop on moto, a purchase already applied, and a warm instance whose eventually
    // consistent reads come from a replica that has not seen its order's record yet
    let (table, services) = kr_shop_named().await;
    let (a, b, c) = (
        "shopify:8500000001",
        "shopify:8500000002",
        "shopify:8500000003",
    );
    let applied = purchase(a, "8500011");
    earned(&services, std::slice::from_ref(&applied)).await;
    let one = points(&services, a).await;
    let timeline = Timeline::default();
    let replica = BehindReplica::default();
    let (behind, _) = services_on(&table, &timeline, |c| {
        c.interceptor(Replica(replica.clone()))
    });
    behind.program("kr-shop").await.unwrap();
    // WHEN a batch brings the purchase again with two other members' purchases
    let batch = [purchase(b, "8500021"), applied, purchase(c, "8500031")];
    let failed = process_batch(&behind, Consumer::Earn, &batch).await;
    // THEN the replica answered the repeat as new, so its commit went with the others', and
    // that transaction was cancelled by the marker on its order's record
    assert!(failed.is_empty(), "{failed:?}");
    assert!(replica.aged() >= 3, "{}", replica.aged());
    let together = timeline.sent_where(|name| {
        name.starts_with("TransactWriteItems ") && [a, b, c].iter().all(|m| name.contains(m))
    });
    assert_eq!(together, 1, "{timeline:?}");
    // AND each message then went alone: the repeat changed nothing, the others earned once
    assert_eq!(points(&services, a).await, one);
    assert_eq!(points(&services, b).await, one);
    assert_eq!(points(&services, c).await, one);
    books_agree(&services).await;
}

#[tokio::test]
async fn a_second_commit_on_one_member_goes_alone_and_the_others_together_each_counting_once() {
    // GIVEN kr-shop on moto and a member who bought once
    let (services, _, timeline) = kr_shop().await;
    let (a, b) = ("shopify:8300000001", "shopify:8300000002");
    earned(&services, &[purchase(a, "8300011")]).await;
    let one = points(&services, a).await;
    // WHEN one wave holds two purchases of that member (in two FIFO groups, as no sender
    // of ours makes them, so that their commits land on one account) and another member's
    let batch = [
        purchase_in("group-1", a, "8300012"),
        purchase_in("group-2", a, "8300013"),
        purchase(b, "8300021"),
    ];
    timeline.clear();
    let failed = process_batch(&services, Consumer::Earn, &batch).await;
    // THEN nothing failed, the member's first commit and the other member's were one
    // transaction, the member's second went alone, and each purchase counted once
    assert!(failed.is_empty(), "{failed:?}");
    let both = timeline.sent_where(|name| {
        name.starts_with("TransactWriteItems ") && name.contains(a) && name.contains(b)
    });
    assert_eq!(both, 1, "{timeline:?}");
    assert_eq!(points(&services, a).await, 3 * one);
    assert_eq!(points(&services, b).await, one);
    books_agree(&services).await;
    // AND the batch again changes nothing
    let again = process_batch(&services, Consumer::Earn, &batch).await;
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(points(&services, a).await, 3 * one);
    assert_eq!(points(&services, b).await, one);
}

/// Loses the answer to the next transaction once armed: DynamoDB has written it, and the
/// client is told it failed, as when a connection drops after the request reached the table.
#[derive(Debug, Clone, Default)]
struct LoseAnswer(Arc<AtomicBool>);

/// A transaction whose answer is to be lost.
#[derive(Debug, Clone)]
struct Losing;

impl Storable for Losing {
    type Storer = StoreReplace<Self>;
}

impl Intercept for LoseAnswer {
    fn name(&self) -> &'static str {
        "lose-answer"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let target = context.request().headers().get("x-amz-target");
        if target.is_some_and(|t| t.ends_with(".TransactWriteItems"))
            && self.0.swap(false, Ordering::SeqCst)
        {
            cfg.interceptor_state().store_put(Losing);
        }
        Ok(())
    }

    fn read_before_deserialization(
        &self,
        _context: &BeforeDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        match cfg.load::<Losing>() {
            Some(_) => Err("the connection dropped before the answer".into()),
            None => Ok(()),
        }
    }
}

#[tokio::test]
async fn a_group_written_whose_answer_was_lost_counts_each_purchase_once() {
    // GIVEN kr-shop on moto, three members who bought once, and an instance whose client will
    // lose the answer to its next transaction, which DynamoDB writes
    let (table, services) = kr_shop_named().await;
    let members = [
        "shopify:8800000001",
        "shopify:8800000002",
        "shopify:8800000003",
    ];
    earned(&services, &purchases(&members, "88000", 1)).await;
    let one = points(&services, members[0]).await;
    let timeline = Timeline::default();
    let lose = LoseAnswer::default();
    let (dropping, _) = services_on(&table, &timeline, |c| c.interceptor(lose.clone()));
    lose.0.store(true, Ordering::SeqCst);
    // WHEN one batch brings each of them a new purchase
    let batch = purchases(&members, "88000", 2);
    let failed = process_batch(&dropping, Consumer::Earn, &batch).await;
    // THEN the group's transaction was sent once, with every member, and its answer lost
    assert!(!lose.0.load(Ordering::SeqCst), "no transaction was sent");
    let together = timeline.sent_where(|name| {
        name.starts_with("TransactWriteItems ") && members.iter().all(|m| name.contains(m))
    });
    assert_eq!(together, 1, "{timeline:?}");
    // AND each message, sent alone, found its purchase applied: nothing failed, nothing was
    // counted twice, and the batch again changes nothing
    assert!(failed.is_empty(), "{failed:?}");
    for member in members {
        assert_eq!(points(&services, member).await, 2 * one);
    }
    books_agree(&services).await;
    earned(&dropping, &batch).await;
    for member in members {
        assert_eq!(points(&services, member).await, 2 * one);
    }
}

/// A commit giving `member` `points` under the event `event` of `order`, its marker kept on
/// the order's record, from the account `before`.
fn order_commit(
    program: &Program,
    member: &str,
    before: Option<&Account>,
    points: i64,
    order: &str,
) -> Commit {
    let at = now();
    let event = format!("{order}-paid");
    let account = before
        .cloned()
        .unwrap_or_else(|| Account::open(program, member, at));
    let change = account
        .adjust(program, points, "gift", &EventContext::new(&event, at, at))
        .unwrap();
    let mut orders = BTreeMap::new();
    orders.insert(
        order.to_string(),
        OrderRecord {
            order_id: order.to_string(),
            ..OrderRecord::default()
        },
    );
    Commit {
        marker: Some(EventMarker {
            source: "shopify".into(),
            event_id: event,
        }),
        marker_order: Some(order.to_string()),
        orders,
        ..Commit::new(program, member, before, change, at)
    }
}

#[tokio::test]
async fn events_commits_refused_together_write_nothing_and_alone_tell_what_each_was() {
    // GIVEN kr-shop on moto, a member whose order's event was applied, and another member
    let (services, store, _) = kr_shop().await;
    let program = services.program("kr-shop").await.unwrap();
    let (a, b) = ("shopify:8400000001", "shopify:8400000002");
    store
        .commit(order_commit(&program, a, None, 100, "shopify#8400011"))
        .await
        .unwrap();
    let read = store.load_member("kr-shop", a, &[]).await.unwrap().account;
    // WHEN that event is committed again together with a new event of the other member
    let repeat = order_commit(&program, a, read.as_ref(), 100, "shopify#8400011");
    let new = order_commit(&program, b, None, 50, "shopify#8400021");
    assert!(store.commits_together_atomically());
    let together = store
        .commit_together(vec![repeat.clone(), new.clone()])
        .await;
    // THEN they are refused together and the other member was not written
    assert!(
        matches!(together, Err(CommitError::VersionConflict)),
        "{together:?}"
    );
    let b_read = store.load_member("kr-shop", b, &[]).await.unwrap();
    assert!(b_read.account.is_none(), "{:?}", b_read.account);
    // AND alone, the repeat is told a duplicate and the new event is written
    let again = store.commit(repeat).await;
    assert!(matches!(again, Err(CommitError::Duplicate)), "{again:?}");
    store.commit(new).await.unwrap();
    let balance = |member: &'static str| {
        let store = store.clone();
        async move {
            let read = store.load_member("kr-shop", member, &[]).await.unwrap();
            read.account.map(|a| a.balance)
        }
    };
    assert_eq!(balance(a).await, Some(100));
    assert_eq!(balance(b).await, Some(50));
}
