//! Two operators acting on one redemption at once, on DynamoDB: a second reversal committed
//! while the first is between its reads must make the first refuse, never credit twice.
//! Runs on moto (`scripts/test` exports `LOYALTY_TEST_DYNAMODB_ENDPOINT`).
#![cfg(feature = "aws")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use chrono::{DateTime, TimeZone, Utc};
use loyalty_core::ports::{FixedClock, MemberStore};
use loyalty_core::services::{ServiceError, Services};
use loyalty_core::store::dynamodb::DynamoStore;
use serde_json::json;

mod common;

type Rival = Box<dyn FnOnce() + Send>;

/// The request (its target's ending), the member's partition, the rival.
type Armed = (&'static str, String, Rival);

/// Runs the rival's operation to its end just before the armed request naming the armed member
/// is sent (a batch read: an account's read, unless armed otherwise): as if another operator's
/// request committed at that moment.
#[derive(Clone, Default)]
struct Interleave {
    armed: Arc<Mutex<Option<Armed>>>,
    ran: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Interleave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interleave")
    }
}

impl Intercept for Interleave {
    fn name(&self) -> &'static str {
        "interleave"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let target = common::target(context);
        let body = context.request().body().bytes().unwrap_or_default();
        let mut armed = self.armed.lock().unwrap();
        let names_member = armed.as_ref().is_some_and(|(request, pk, _)| {
            target.ends_with(request) && String::from_utf8_lossy(body).contains(pk.as_str())
        });
        if !names_member {
            return Ok(());
        }
        let Some((_, _, rival)) = armed.take() else {
            return Ok(());
        };
        drop(armed);
        // The interceptor cannot wait on the test's runtime: the rival runs on one of its own.
        std::thread::spawn(rival)
            .join()
            .map_err(|_| "the rival failed")?;
        self.ran.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 5, 9, 0, 0).unwrap()
}

/// Services on `table` through a client of their own, without the interleaving.
fn rival_services(table: &str) -> Services {
    let client = aws_sdk_dynamodb::Client::from_conf(common::moto_dynamodb("rival").build());
    Services::new(
        Arc::new(DynamoStore::new(client, table)),
        Arc::new(common::Recorder::default()),
        FixedClock::at(now()),
    )
}

/// kr-shop (with `extra` TOML) on a table of its own in moto, through a client that runs the
/// armed rival's operation at the armed moment.
async fn racing(
    provider: &'static str,
    extra: &str,
) -> (String, Interleave, Arc<DynamoStore>, Services) {
    let table = format!("loyalty-racing-{}", uuid::Uuid::new_v4().simple());
    let interleave = Interleave::default();
    let client = aws_sdk_dynamodb::Client::from_conf(
        common::moto_dynamodb(provider)
            .interceptor(interleave.clone())
            .build(),
    );
    let store = Arc::new(DynamoStore::new(client, &table));
    store.create_table().await.expect("moto creates the table");
    let services = Services::new(
        store.clone(),
        Arc::new(common::Recorder::default()),
        FixedClock::at(now()),
    );
    common::save_kr_shop_with(&services, extra).await;
    (table, interleave, store, services)
}

/// Arms the interleaving: `rival` runs to its end, on services of its own on `table`, just
/// before the next read of the member whose partition is `pk`.
fn arm<F, Fut>(interleave: &Interleave, pk: &str, table: &str, rival: F)
where
    F: FnOnce(Services) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    arm_before(interleave, ".BatchGetItem", pk, table, rival);
}

/// Arms the interleaving before the next `request` (a target's ending) naming `pk`.
fn arm_before<F, Fut>(
    interleave: &Interleave,
    request: &'static str,
    pk: &str,
    table: &str,
    rival: F,
) where
    F: FnOnce(Services) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let table = table.to_string();
    *interleave.armed.lock().unwrap() = Some((
        request,
        pk.to_string(),
        Box::new(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(rival(rival_services(&table)));
        }),
    ));
}

const REASON: &[u8] = br#"{"reason": "the coupon never reached the member"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reversal_committed_between_another_s_reads_makes_that_one_refuse() {
    // GIVEN a member with 10,000 points who redeemed a 5,000-point coupon
    let (table, interleave, store, services) = racing("racing-operators", "").await;
    let adjustment = json!({"points": 10_000, "reason": "opening balance"}).to_string();
    services
        .adjust("kr-shop", "m-race", "ops", None, adjustment.as_bytes())
        .await
        .unwrap();
    let redeemed = services
        .redeem(
            "kr-shop",
            "m-race",
            "m-race",
            Some("race-1"),
            br#"{"reward": "coupon-5000"}"#,
        )
        .await
        .unwrap();
    let id = redeemed.body["id"].as_str().unwrap().to_string();
    // WHEN another operator's reversal of it commits while this reversal reads the member
    let rival_id = id.clone();
    arm(
        &interleave,
        "P#kr-shop#M#m-race",
        &table,
        |rival| async move {
            rival
                .reverse_redemption("kr-shop", "m-race", &rival_id, "ops-2", REASON)
                .await
                .unwrap();
        },
    );
    let answer = services
        .reverse_redemption("kr-shop", "m-race", &id, "ops-1", REASON)
        .await;
    // THEN this one is refused as already reversed, and the points came back once
    assert_eq!(interleave.ran.load(Ordering::SeqCst), 1);
    assert!(
        matches!(
            answer,
            Err(ServiceError::Conflict {
                problem: "already-reversed",
                ..
            })
        ),
        "{answer:?}"
    );
    let account = store
        .load_member("kr-shop", "m-race", &[])
        .await
        .unwrap()
        .account
        .unwrap();
    assert_eq!(account.balance, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adjustment_committed_between_another_s_check_and_commit_keeps_the_daily_limit() {
    // GIVEN kr-shop that lets an operator adjust 8,000 points a day
    let (table, interleave, store, services) = racing(
        "racing-adjustments",
        "[safeguards]\noperator_daily_points = 8000\n",
    )
    .await;
    // WHEN ops adjusts m-b by 5,000 while its adjustment of m-a by 5,000, already checked
    // against the limit, reads m-a
    arm(&interleave, "P#kr-shop#M#m-a", &table, |rival| async move {
        let body = json!({"points": 5_000, "reason": "goodwill"}).to_string();
        rival
            .adjust("kr-shop", "m-b", "ops", None, body.as_bytes())
            .await
            .unwrap();
    });
    let body = json!({"points": 5_000, "reason": "goodwill"}).to_string();
    let answer = services
        .adjust("kr-shop", "m-a", "ops", None, body.as_bytes())
        .await;
    // THEN the second to commit is refused for the limit, and m-a has nothing
    assert_eq!(interleave.ran.load(Ordering::SeqCst), 1);
    assert!(
        matches!(
            answer,
            Err(ServiceError::Conflict {
                problem: "operator-daily-limit",
                ..
            })
        ),
        "{answer:?}"
    );
    let state = store.load_member("kr-shop", "m-a", &[]).await.unwrap();
    assert_eq!(state.account.map_or(0, |a| a.balance), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_whose_subject_and_key_join_alike_never_get_each_others_answer() {
    // GIVEN two members with 10,000 points each, and an answer kept for caller `a#b` with key
    // `c` (answers are kept under the member; an earlier version kept them under the token's
    // subject, which is looked up too)
    let (_, _, _, services) = racing("joined-keys", "").await;
    for member in ["a#b", "m-y"] {
        let adjustment = json!({"points": 10_000, "reason": "opening balance"}).to_string();
        services
            .adjust("kr-shop", member, "ops", None, adjustment.as_bytes())
            .await
            .unwrap();
    }
    let body = br#"{"reward": "coupon-5000"}"#;
    let first = services
        .redeem("kr-shop", "a#b", "a#b", Some("c"), body)
        .await
        .unwrap();
    // WHEN caller `a` of another member sends the same request with key `b#c` (the same
    // text joined)
    let second = services
        .redeem("kr-shop", "m-y", "a", Some("b#c"), body)
        .await;
    // THEN it is refused as a key it cannot use, never handed the first caller's coupon
    assert!(first.body["code"].is_string(), "{:?}", first.body);
    assert!(
        matches!(
            second,
            Err(ServiceError::Unprocessable {
                problem: "idempotency-key-reused",
                ..
            })
        ),
        "{second:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_refused_by_an_erasure_begun_meanwhile_leaves_no_link_naming_the_member() {
    // GIVEN a member with 10,000 points who pays with points at checkout
    let (table, interleave, _, services) = racing("racing-erasure", "").await;
    let member = "shopify:7700000042";
    let adjustment = json!({"points": 10_000, "reason": "opening balance"}).to_string();
    services
        .adjust("kr-shop", member, "ops", None, adjustment.as_bytes())
        .await
        .unwrap();
    // WHEN the member's erasure runs to its end just as the hold links its redemption id
    arm_before(
        &interleave,
        ".TransactWriteItems",
        &format!("P#kr-shop#M#{member}"),
        &table,
        move |rival| async move {
            rival
                .erase_member("kr-shop", member, "erasure request", "ops")
                .await
                .unwrap();
        },
    );
    let held = services
        .redeem(
            "kr-shop",
            member,
            member,
            Some("hold-1"),
            br#"{"reward": "pay-with-points", "points": 2000, "order_ref": "o-1"}"#,
        )
        .await;
    // THEN the hold is refused (the points went with the erased account), and no item of the
    // table names the erased member
    assert_eq!(interleave.ran.load(Ordering::SeqCst), 1);
    assert!(
        matches!(
            held,
            Err(ServiceError::Conflict {
                problem: "insufficient-points" | "member-erased",
                ..
            })
        ),
        "{held:?}"
    );
    let client = aws_sdk_dynamodb::Client::from_conf(common::moto_dynamodb("racing-look").build());
    let naming: Vec<_> = client
        .scan()
        .table_name(&table)
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default()
        .into_iter()
        .filter(|item| format!("{item:?}").contains(member))
        .collect();
    assert!(naming.is_empty(), "{naming:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_dynamodb_a_payment_held_for_review_earns_nothing_delivered_again_the_next_day() {
    // GIVEN kr-shop on DynamoDB holding what takes a member past 1,000 points a day, and a
    // payment of 590 held over it
    let (_, _, store, _) = racing("held-next-day", "").await;
    let clock = FixedClock::at(now());
    let services = Services::new(
        store.clone(),
        Arc::new(common::Recorder::default()),
        clock.clone(),
    );
    common::save_kr_shop_with(&services, "[safeguards]\ndaily_points = 1000\n").await;
    let paid = |id: &str| {
        json!({
            "type": "purchase.completed", "version": 1, "id": id, "program": "kr-shop",
            "member": "m-held", "occurred_at": now() - chrono::Duration::hours(1),
            "data": {"order_id": id, "currency": "KRW",
                     "lines": [{"line_id": "1", "quantity": 1, "unit_price": "59000"}]}
        })
        .to_string()
    };
    services.process_earn(&paid("o-1")).await.unwrap();
    let held = services.process_earn(&paid("o-2")).await.unwrap();
    assert_eq!(held.name(), "no-effect", "{held:?}");
    // WHEN it is delivered again the next day
    clock.set(now() + chrono::Duration::days(1));
    let again = services.process_earn(&paid("o-2")).await.unwrap();
    // THEN it earns nothing
    assert_eq!(again.name(), "no-effect", "{again:?}");
    let view = services.member_view("kr-shop", "m-held").await.unwrap();
    assert_eq!(view.pending + view.balance, 590);
}
