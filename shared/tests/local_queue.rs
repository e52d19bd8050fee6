//! The embedded queue and the SQLite store's shared commits, as `loyalty serve` uses them.
#![cfg(feature = "sqlite")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use loyalty_core::envelope::Envelope;
use loyalty_core::ports::{Queue, QueueName, SystemClock};
use loyalty_core::queue::local::LocalQueue;
use loyalty_core::services::batch::{process_message, Consumer};
use loyalty_core::services::Services;
use loyalty_core::store::sqlite::SqliteStore;
use serde_json::json;

const HIDE: Duration = Duration::from_secs(30);

fn file_store() -> (SqliteStore, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("local-queue-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("loyalty.db");
    (SqliteStore::open(&db).unwrap(), db)
}

fn purchase(id: &str, member: &str, won: u32) -> Envelope {
    serde_json::from_value(json!({
        "type": "purchase.completed", "version": 1, "id": id, "program": "kr-shop", "member": member,
        "occurred_at": "2026-11-01T03:00:00Z",
        "data": {"order_id": id, "currency": "KRW",
                 "lines": [{"line_id": "1", "quantity": 1, "unit_price": won.to_string()}]}
    }))
    .unwrap()
}

/// The services of `loyalty serve` on this store, with its queue and kr-shop loaded.
async fn kr_shop(store: &SqliteStore) -> (LocalQueue, Services) {
    common::kr_shop_services(store, 5, Arc::new(SystemClock)).await
}

/// `message` sent and received once: its first delivery.
async fn delivered_once(
    queue: &LocalQueue,
    message: &Envelope,
) -> loyalty_core::queue::local::Delivery {
    queue.send(QueueName::Earn, message).await.unwrap();
    queue
        .receive(QueueName::Earn, 1, HIDE)
        .await
        .unwrap()
        .remove(0)
}

async fn bodies(queue: &LocalQueue, max: usize) -> Vec<String> {
    queue
        .receive(QueueName::Earn, max, HIDE)
        .await
        .unwrap()
        .into_iter()
        .map(|d| serde_json::from_str::<Envelope>(&d.body).unwrap().id)
        .collect()
}

#[tokio::test]
async fn a_receive_takes_the_oldest_message_of_each_group_and_none_behind_one_in_flight() {
    // GIVEN a queue with two messages for m-a, one for m-b and two for m-c, sent in this order
    let (store, _db) = file_store();
    let queue = LocalQueue::new(store, 5);
    for (id, member) in [
        ("a1", "m-a"),
        ("b1", "m-b"),
        ("a2", "m-a"),
        ("c1", "m-c"),
        ("c2", "m-c"),
    ] {
        queue
            .send(QueueName::Earn, &purchase(id, member, 1000))
            .await
            .unwrap();
    }
    // WHEN a worker takes up to ten
    // THEN it gets each group's oldest, in the order they were sent
    assert_eq!(bodies(&queue, 10).await, ["a1", "b1", "c1"]);
    // AND while those are in flight, nothing else of their groups is given out
    assert!(bodies(&queue, 10).await.is_empty());
    // AND a message sent meanwhile for a new group is
    queue
        .send(QueueName::Earn, &purchase("d1", "m-d", 1000))
        .await
        .unwrap();
    assert_eq!(bodies(&queue, 10).await, ["d1"]);
    // WHEN m-a's and m-c's heads are acknowledged (their sequence numbers follow the sends)
    for seq in [1, 4] {
        queue.ack(seq).await.unwrap();
    }
    // THEN their next messages come, and at most as many as asked for
    assert_eq!(bodies(&queue, 1).await, ["a2"]);
    assert_eq!(bodies(&queue, 10).await, ["c2"]);
}

#[tokio::test]
async fn a_member_with_thousands_of_messages_waiting_holds_up_no_other_member() {
    // GIVEN 20,000 messages for m-flood, sent before one message each for m-b and m-c
    let (store, _db) = file_store();
    let queue = LocalQueue::new(store, 5);
    let ids: Vec<String> = (0..20_000).map(|n| format!("flood-{n}")).collect();
    for chunk in ids.chunks(500) {
        let messages: Vec<Envelope> = chunk
            .iter()
            .map(|id| purchase(id, "m-flood", 1000))
            .collect();
        let sends = messages.iter().map(|m| queue.send(QueueName::Earn, m));
        for sent in futures_util::future::join_all(sends).await {
            sent.unwrap();
        }
    }
    for (id, member) in [("b1", "m-b"), ("c1", "m-c")] {
        queue
            .send(QueueName::Earn, &purchase(id, member, 1000))
            .await
            .unwrap();
    }
    // WHEN a worker takes up to ten, and then, with those in flight, up to ten again
    // THEN the first receive gives each member's oldest, m-flood's first
    let first = bodies(&queue, 10).await;
    assert_eq!(first.len(), 3, "{first:?}");
    assert!(first[0].starts_with("flood-"), "{first:?}");
    assert_eq!(first[1..], ["b1", "c1"]);
    // AND the next gives nothing: every group's head is in flight
    assert!(bodies(&queue, 10).await.is_empty());
}

#[tokio::test]
async fn an_id_sent_is_refused_again_for_a_week_then_forgotten() {
    // GIVEN a message sent and processed
    let (store, _db) = file_store();
    let queue = LocalQueue::new(store, 5);
    let message = purchase("p-1", "m-a", 1000);
    queue.send(QueueName::Earn, &message).await.unwrap();
    let seq = queue.receive(QueueName::Earn, 1, HIDE).await.unwrap()[0].seq;
    queue.ack(seq).await.unwrap();
    // WHEN the ids sent more than a week ago are forgotten
    let week_ago = chrono::Utc::now() - loyalty_core::queue::local::SENT_KEPT;
    assert_eq!(queue.forget_sent(week_ago, 1_000).await.unwrap(), 0);
    // THEN its id, sent today, is still refused
    queue.send(QueueName::Earn, &message).await.unwrap();
    assert_eq!(queue.depth(QueueName::Earn).await.unwrap(), 0);
    // WHEN a week has passed (ids sent before now are forgotten)
    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(queue.forget_sent(later, 1_000).await.unwrap(), 1);
    // THEN the same id is queued again (the consumer's marker makes it a duplicate there)
    queue.send(QueueName::Earn, &message).await.unwrap();
    assert_eq!(queue.depth(QueueName::Earn).await.unwrap(), 1);
}

#[tokio::test]
async fn an_id_forgotten_while_its_message_still_waits_is_sent_again_without_an_error() {
    // GIVEN a message sent and still waiting (serve was down for more than a week), whose id
    // sent was then forgotten
    let (store, _db) = file_store();
    let queue = LocalQueue::new(store, 5);
    let message = purchase("p-1", "m-a", 1000);
    queue.send(QueueName::Earn, &message).await.unwrap();
    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(queue.forget_sent(later, 1_000).await.unwrap(), 1);
    // WHEN the same id is sent again (an outbox row relayed again)
    let again = queue.send(QueueName::Earn, &message).await;
    // THEN it is taken without an error (before: the queue's unique id failed the send, and
    // with it every relay pass from that row on), and one message waits
    assert!(again.is_ok(), "{again:?}");
    assert_eq!(queue.depth(QueueName::Earn).await.unwrap(), 1);
}

#[tokio::test]
async fn a_message_the_process_stops_on_every_time_goes_to_the_dead_letters() {
    use loyalty_core::ports::DeadLetters;
    // GIVEN a queue that allows 3 failed deliveries, and a message whose handling stops the
    // process each time (received, never answered, then found in flight at the next start),
    // six times: twice what it may fail, as a restart counts every message in flight
    let (store, _db) = file_store();
    let queue = LocalQueue::new(store, 3);
    queue
        .send(QueueName::Earn, &purchase("p-crash", "m-a", 1000))
        .await
        .unwrap();
    for _ in 0..6 {
        assert_eq!(
            queue
                .receive(QueueName::Earn, 10, HIDE)
                .await
                .unwrap()
                .len(),
            1
        );
        queue.recover_in_flight().await.unwrap();
    }
    // WHEN the next start receives again
    let again = queue.receive(QueueName::Earn, 10, HIDE).await.unwrap();
    // THEN it is not delivered a seventh time (before: for ever, and the process stopped on it
    // at every start) but kept among the dead letters
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(queue.dead_letter_count(QueueName::Earn).await.unwrap(), 1);
    assert_eq!(queue.depth(QueueName::Earn).await.unwrap(), 0);
}

#[tokio::test]
async fn dead_letters_are_kept_two_weeks_as_in_aws() {
    use loyalty_core::ports::DeadLetters;
    // GIVEN a message dead-lettered now (allowed one delivery, failed once)
    let (store, _db) = file_store();
    let queue = LocalQueue::new(store, 1);
    let delivery = delivered_once(&queue, &purchase("p-dead", "m-a", 1000)).await;
    assert!(queue.fail(&delivery, "refused").await.unwrap());
    // WHEN the housekeeping runs a day later THEN it is kept
    let day = chrono::Duration::days(1);
    assert_eq!(
        queue
            .forget_old_dead_letters(chrono::Utc::now() + day)
            .await
            .unwrap(),
        0
    );
    assert_eq!(queue.dead_letter_count(QueueName::Earn).await.unwrap(), 1);
    // WHEN it runs fifteen days later THEN it is gone, with the member's data it carried
    // (before: kept for good, where an erasure does not reach)
    let later = chrono::Utc::now() + day * 15;
    assert_eq!(queue.forget_old_dead_letters(later).await.unwrap(), 1);
    assert_eq!(queue.dead_letter_count(QueueName::Earn).await.unwrap(), 0);
}

#[test]
fn a_file_whose_ids_sent_are_undated_opens_and_forgets_them_first() {
    // GIVEN a database file made before ids sent were dated, with one id sent
    let dir = std::env::temp_dir().join(format!("local-queue-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("loyalty.db");
    let old = rusqlite::Connection::open(&db).unwrap();
    old.execute_batch(
        "CREATE TABLE programs (program TEXT NOT NULL, version INTEGER NOT NULL, file TEXT NOT NULL,
             updated_at TEXT NOT NULL, PRIMARY KEY (program, version));
         CREATE TABLE sent (queue TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (queue, id));
         INSERT INTO sent (queue, id) VALUES ('earn', 'kr-shop/old-1');",
    )
    .unwrap();
    drop(old);
    // WHEN it is opened by this version, and the ids of a week ago are forgotten
    let queue = LocalQueue::new(SqliteStore::open(&db).unwrap(), 5);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let week_ago = chrono::Utc::now() - loyalty_core::queue::local::SENT_KEPT;
    // THEN the undated id goes, as one older than any window
    assert_eq!(
        runtime
            .block_on(queue.forget_sent(week_ago, 1_000))
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn concurrent_writes_share_commits_and_each_is_answered_only_once_durable() {
    // GIVEN a database file and a queue in it
    let (store, db) = file_store();
    let queue = LocalQueue::new(store.clone(), 5);
    let before = store.commits();
    // WHEN 300 messages are sent at once, 20 of them twice
    let sends = (0..320).map(|i| {
        let queue = queue.clone();
        let n = if i < 300 { i } else { i - 300 };
        async move {
            queue
                .send(
                    QueueName::Earn,
                    &purchase(&format!("e{n}"), &format!("m-{n}"), 1000),
                )
                .await
        }
    });
    let answers = futures_util::future::join_all(sends).await;
    // THEN every send is answered with success, the queue holds each message once
    assert!(answers.iter().all(Result::is_ok));
    assert_eq!(queue.depth(QueueName::Earn).await.unwrap(), 300);
    // AND another connection to the file already sees all of them (nothing answered is
    // still uncommitted)
    let conn = rusqlite::Connection::open(&db).unwrap();
    let seen: i64 = conn
        .query_row("SELECT COUNT(*) FROM queue", [], |r| r.get(0))
        .unwrap();
    assert_eq!(seen, 300);
    // AND they took fewer transactions than sends
    let commits = store.commits() - before;
    assert!(commits < 320, "{commits} commits for 320 sends");
}

/// On kr-shop in a database file where a trigger answers a ledger entry of m-bad with
/// `RAISE(action)`: the purchases of `n` members and of m-bad (18th) processed at once. Returns
/// the file, the members in order and each one's outcome.
async fn purchases_beside_m_bad(
    n: usize,
    action: &str,
) -> (
    std::path::PathBuf,
    Vec<String>,
    Vec<Result<loyalty_core::services::earn::Processed, loyalty_core::services::earn::Retry>>,
) {
    let (store, db) = file_store();
    let (_queue, services) = kr_shop(&store).await;
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(&format!(
            "CREATE TRIGGER m_bad AFTER INSERT ON ledger WHEN NEW.member = 'm-bad'
             BEGIN SELECT RAISE({action}, 'refused for the test'); END;"
        ))
        .unwrap();
    let mut members: Vec<String> = (0..n).map(|i| format!("m-{i}")).collect();
    members.insert(17, "m-bad".into());
    let outcomes =
        futures_util::future::join_all(
            members.iter().enumerate().map(|(i, m)| {
                let body = serde_json::to_string(&purchase(&format!("o{i}"), m, 20_000)).unwrap();
                let services = &services;
                async move {
                    process_message(services, Consumer::Earn, &format!("msg-{i}"), &body).await
                }
            }),
        )
        .await;
    (db, members, outcomes)
}

#[tokio::test]
async fn a_write_that_fails_inside_a_shared_commit_leaves_no_trace_and_the_others_stay() {
    // GIVEN kr-shop on a database file where any ledger entry of m-bad is refused by the
    // database itself (after its account row was written in the same commit)
    // WHEN purchases of 40 members and of m-bad are processed at once
    let (db, members, outcomes) = purchases_beside_m_bad(40, "ABORT").await;
    // THEN m-bad's message fails (to be retried) and everyone else's succeeds
    for (member, outcome) in members.iter().zip(&outcomes) {
        assert_eq!(outcome.is_err(), member == "m-bad", "{member}: {outcome:?}");
    }
    // AND m-bad has no account row: its whole commit was rolled back, not just the ledger
    // entry; every other member has the 200 pending points of the purchase
    let conn = rusqlite::Connection::open(&db).unwrap();
    let accounts: Vec<String> = conn
        .prepare("SELECT member FROM accounts ORDER BY member")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(accounts.len(), 40);
    assert!(!accounts.contains(&"m-bad".to_string()));
    let entries: i64 = conn
        .query_row("SELECT COUNT(*) FROM ledger", [], |r| r.get(0))
        .unwrap();
    assert_eq!(entries, 40);
}

#[tokio::test]
async fn a_commit_the_database_rolls_back_itself_tells_each_caller_what_stayed() {
    // GIVEN kr-shop on a database file where a ledger entry of m-bad makes the database roll
    // the whole transaction back (as it does itself on a full disk or an I/O error)
    // WHEN purchases of 80 members and of m-bad are processed at once
    let (db, members, outcomes) = purchases_beside_m_bad(80, "ROLLBACK").await;
    // THEN m-bad's message fails, and each member told its message failed has nothing
    // written, each told it succeeded has its account: a retry neither misses nor repeats
    let conn = rusqlite::Connection::open(&db).unwrap();
    let has_account = |member: &str| -> bool {
        conn.query_row(
            "SELECT COUNT(*) FROM accounts WHERE member = ?1",
            [member],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            == 1
    };
    for (member, outcome) in members.iter().zip(&outcomes) {
        assert_eq!(
            has_account(member),
            outcome.is_ok(),
            "{member}: {outcome:?}"
        );
    }
    assert!(outcomes[17].is_err());
}

#[tokio::test]
async fn the_outbox_moves_to_the_queues_once_and_in_each_members_order() {
    // GIVEN kr-shop on a database file, and two purchases each by three members processed,
    // whose commits wrote their notices to the outbox
    let (store, db) = file_store();
    let (queue, services) = kr_shop(&store).await;
    for round in 0..2 {
        for m in 0..3 {
            let body = serde_json::to_string(&purchase(
                &format!("o{round}-{m}"),
                &format!("m-{m}"),
                20_000,
            ))
            .unwrap();
            process_message(&services, Consumer::Earn, "msg", &body)
                .await
                .unwrap();
        }
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let waiting: i64 = conn
        .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
        .unwrap();
    assert!(waiting >= 6, "{waiting} outbox messages");
    // WHEN the relay runs twice
    let first = queue.relay_outbox(1000, hand_notice).await.unwrap();
    let second = queue.relay_outbox(1000, hand_notice).await.unwrap();
    // THEN every message was relayed once, and nothing is left behind
    assert_eq!(first as i64, waiting);
    assert_eq!(second, 0);
    let left: i64 = conn
        .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0);
    // AND the notices were handed over, not queued; the rest were queued
    let handed = HANDED.lock().unwrap().clone();
    assert_eq!(queue.depth(QueueName::Notify).await.unwrap(), 0);
    let queued =
        queue.depth(QueueName::Tier).await.unwrap() + queue.depth(QueueName::Earn).await.unwrap();
    assert_eq!(handed.len() as i64 + queued as i64, waiting);
    // AND each member's notices came in the order of the purchases
    for m in 0..3 {
        let member = format!("m-{m}");
        let events: Vec<&str> = handed
            .iter()
            .filter(|(who, _)| *who == member)
            .map(|(_, event)| event.as_str())
            .collect();
        assert_eq!(events, [format!("o0-{m}"), format!("o1-{m}")], "{member}");
    }
}

#[tokio::test]
async fn a_notice_whose_pass_cannot_commit_is_handed_once_not_at_every_retry() {
    // GIVEN a purchase processed, whose commit wrote its notice to the outbox
    let (store, db) = file_store();
    let (queue, services) = kr_shop(&store).await;
    let body = serde_json::to_string(&purchase("o-full", "m-full", 20_000)).unwrap();
    process_message(&services, Consumer::Earn, "msg", &body)
        .await
        .unwrap();
    // AND a store that refuses the relay's commit, as a full disk refuses every one
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER refuse BEFORE DELETE ON outbox \
         BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
    )
    .unwrap();
    // WHEN the relay tries five times, then the store takes writes again and it runs twice
    for _ in 0..5 {
        assert!(queue.relay_outbox(1000, count_notice).await.is_err());
    }
    conn.execute_batch("DROP TRIGGER refuse").unwrap();
    assert!(queue.relay_outbox(1000, count_notice).await.unwrap() > 0);
    assert_eq!(queue.relay_outbox(1000, count_notice).await.unwrap(), 0);
    // THEN the notice was handed once (before: once for every pass, six times), and the
    // outbox is empty
    assert_eq!(COUNTED.load(std::sync::atomic::Ordering::SeqCst), 1);
    let left: i64 = conn
        .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn rows_the_relay_cannot_read_never_hold_back_the_messages_after_them() {
    // GIVEN 300 outbox rows that do not decode (more than one pass of the relay reads), then
    // a purchase whose commit wrote its messages after them
    let (store, db) = file_store();
    let (queue, services) = kr_shop(&store).await;
    let conn = rusqlite::Connection::open(&db).unwrap();
    for i in 0..300 {
        conn.execute(
            "INSERT INTO outbox (key, body) VALUES (?1, '{not a message')",
            [format!("unreadable-{i}")],
        )
        .unwrap();
    }
    let body = serde_json::to_string(&purchase("o-after", "m-after", 20_000)).unwrap();
    process_message(&services, Consumer::Earn, "msg", &body)
        .await
        .unwrap();
    let count = || -> i64 {
        conn.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
            .unwrap()
    };
    let waiting = count() - 300;
    assert!(waiting >= 1, "{waiting}");
    // WHEN the relay makes three passes of 256 rows
    let mut relayed = 0;
    for _ in 0..3 {
        relayed += queue.relay_outbox(256, ignore_notice).await.unwrap();
    }
    // THEN the purchase's messages went out, and the unreadable rows wait for an operator
    assert_eq!(relayed as i64, waiting);
    assert_eq!(count(), 300);
}

fn ignore_notice(_: &Envelope) {}

/// Notices handed over to [`count_notice`] (one test's own: the others share [`HANDED`]).
static COUNTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn count_notice(_: &Envelope) {
    COUNTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// Notices the relay handed over, as (member, event id).
static HANDED: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

fn hand_notice(notice: &Envelope) {
    let event = notice.data["event"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    HANDED.lock().unwrap().push((notice.member.clone(), event));
}

#[tokio::test]
async fn a_message_that_meets_a_busy_database_is_retried_without_counting_the_attempt() {
    use loyalty_core::ports::DeadLetters;
    // GIVEN serve's queue allowing one failed delivery, a purchase delivered once, and another
    // process holding the database's write lock for longer than the busy timeout
    let (store, db) = file_store();
    let (queue, services) = common::kr_shop_services(&store, 1, Arc::new(SystemClock)).await;
    let delivery = delivered_once(&queue, &purchase("p-busy", "m-a", 20_000)).await;
    let other = rusqlite::Connection::open(&db).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    // WHEN it is processed, and its failure recorded once the other process let go
    let retry = process_message(&services, Consumer::Earn, "msg-1", &delivery.body)
        .await
        .unwrap_err();
    other.execute_batch("ROLLBACK").unwrap();
    let dead = queue.retry(&delivery, &retry).await.unwrap();
    // THEN it is not dead-lettered (before: its one allowed failure was spent on the other
    // process's lock) but delivered again as a first attempt, and then it earns
    assert!(retry.transient, "{retry}");
    assert!(!dead);
    assert_eq!(queue.dead_letter_count(QueueName::Earn).await.unwrap(), 0);
    let again = loop {
        let batch = queue.receive(QueueName::Earn, 1, HIDE).await.unwrap();
        if let Some(delivery) = batch.into_iter().next() {
            break delivery;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(again.attempts, 1);
    let processed = process_message(&services, Consumer::Earn, "msg-1", &again.body).await;
    assert!(processed.is_ok(), "{processed:?}");
}

#[tokio::test]
async fn a_message_that_fails_for_its_own_reasons_spends_its_attempts() {
    use loyalty_core::ports::DeadLetters;
    use loyalty_core::services::earn::Retry;
    // GIVEN serve's queue allowing one failed delivery and a message delivered once
    let (store, _db) = file_store();
    let queue = LocalQueue::new(store, 1);
    let delivery = delivered_once(&queue, &purchase("p-bad", "m-a", 20_000)).await;
    // WHEN its processing failed for a reason of its own
    let dead = queue
        .retry(&delivery, &Retry::failed("member m-a is being erased"))
        .await
        .unwrap();
    // THEN that was its last attempt
    assert!(dead);
    assert_eq!(queue.dead_letter_count(QueueName::Earn).await.unwrap(), 1);
}

#[tokio::test]
async fn an_erasure_forgets_the_ids_sent_that_name_the_member() {
    use loyalty_core::ports::ErasureStore;
    // GIVEN a message whose id names a member by their phone number, sent and remembered
    let (store, db) = file_store();
    let queue = LocalQueue::new(store.clone(), 5);
    queue
        .send(
            QueueName::Earn,
            &purchase("merge-pos:010-5555-1234", "m-a", 1000),
        )
        .await
        .unwrap();
    let remembered = || {
        rusqlite::Connection::open(&db)
            .unwrap()
            .query_row(
                "SELECT COUNT(*) FROM sent WHERE instr(id, '010-5555-1234') > 0",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
    };
    assert_eq!(remembered(), 1);
    // WHEN the member's payloads are forgotten, as an erasure does
    store
        .forget_payloads("kr-shop", &["pos:010-5555-1234".to_string()], &[])
        .await
        .unwrap();
    // THEN the id is gone too (before: kept a week, the phone number in it)
    assert_eq!(remembered(), 0);
}
