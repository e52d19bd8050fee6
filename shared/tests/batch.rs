//! Partial batch failures: exactly the failed messages, and the rest of their FIFO group, come back.
#![cfg(feature = "sqlite")]

mod common;

use std::sync::Arc;

use chrono::{Duration, SecondsFormat, Utc};
use loyalty_core::ports::{MemberStore, RejectStore, SystemClock};
use loyalty_core::services::batch::{process_batch, Consumer, Record};
use loyalty_core::store::sqlite::SqliteStore;
use serde_json::json;

/// Makes `m-poison`'s account row unreadable (a bad manual edit), or removes it again.
fn poison(db: &std::path::Path, on: bool) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let sql = if on {
        "INSERT INTO accounts (program, member, version, body) VALUES ('kr-shop', 'm-poison', 1, '{not an account')"
    } else {
        "DELETE FROM accounts WHERE member = 'm-poison'"
    };
    conn.execute(sql, []).unwrap();
}

fn record(id: &str, member: &str, currency: &str) -> Record {
    let body = json!({
        "type": "purchase.completed", "version": 1, "id": id, "program": "kr-shop", "member": member,
        "occurred_at": (Utc::now() - Duration::days(8)).to_rfc3339_opts(SecondsFormat::Secs, true),
        "data": {"order_id": id, "currency": currency,
                 "lines": [{"line_id": "1", "quantity": 1, "unit_price": "10000"}]}
    });
    Record {
        message_id: format!("msg-{id}"),
        group: Some(format!("kr-shop#{member}")),
        body: body.to_string(),
    }
}

#[tokio::test]
async fn a_failure_fails_the_rest_of_its_group_and_nothing_else() {
    // GIVEN kr-shop, and m-poison's account that cannot be read right now
    let dir = std::env::temp_dir().join(format!("batch-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("loyalty.db");
    let store = SqliteStore::open(&db).unwrap();
    poison(&db, true);
    let (_, services) = common::kr_shop_services(&store, 5, Arc::new(SystemClock)).await;
    // AND a batch with a poisoned message in the middle, a later one of its group, a message
    // that is bad for good, and messages of other members
    let batch = vec![
        record("a1", "m-a", "KRW"),
        record("p1", "m-poison", "KRW"),
        record("x1", "m-a", "USD"),
        record("p2", "m-poison", "KRW"),
        record("b1", "m-b", "KRW"),
    ];
    // WHEN the batch is processed
    let failed = process_batch(&services, Consumer::Earn, &batch).await;
    // THEN exactly the poisoned message and the later one of its group are reported
    assert_eq!(failed, vec!["msg-p1", "msg-p2"]);
    // AND the others took effect, the bad one is recorded as rejected, p2 was not processed
    let balance = |m: &'static str| {
        let store = store.clone();
        async move {
            store
                .load_member("kr-shop", m, &[])
                .await
                .unwrap()
                .account
                .map_or(0, |a| a.balance)
        }
    };
    assert_eq!(balance("m-a").await, 100);
    assert_eq!(balance("m-b").await, 100);
    assert_eq!(store.rejected("kr-shop", 10).await.unwrap().len(), 1);

    // WHEN an operator removes the bad row and the failed messages come back
    poison(&db, false);
    let retried: Vec<Record> = batch
        .into_iter()
        .filter(|r| failed.contains(&r.message_id))
        .collect();
    let failed_again = process_batch(&services, Consumer::Earn, &retried).await;
    // THEN both succeed, each once
    assert!(failed_again.is_empty());
    assert_eq!(balance("m-poison").await, 200);
    assert!(process_batch(&services, Consumer::Earn, &retried)
        .await
        .is_empty());
    assert_eq!(balance("m-poison").await, 200);
}

#[tokio::test]
async fn a_message_that_is_not_an_envelope_is_rejected_where_its_program_s_operators_look() {
    // GIVEN kr-shop, and a program named "unknown"
    let store = SqliteStore::memory().unwrap();
    let (_, services) = common::kr_shop_services(&store, 5, Arc::new(SystemClock)).await;
    let unknown = include_str!("../../examples/kr-shop.toml").replacen(
        "id = \"kr-shop\"",
        "id = \"unknown\"",
        1,
    );
    services
        .put_program(
            "unknown",
            &unknown,
            loyalty_core::services::programs::ProgramFormat::Toml,
        )
        .await
        .unwrap();
    // AND a batch of a kr-shop message whose time is not a time, and bytes that are not JSON
    let mut garbled = record("g1", "m-g", "KRW");
    garbled.body = garbled
        .body
        .replace("\"occurred_at\":\"", "\"occurred_at\":\"yesterday ");
    let noise = Record {
        message_id: "msg-noise".into(),
        group: Some("kr-shop#m-n".into()),
        body: "\u{1}not json".into(),
    };
    // WHEN the batch is processed
    let failed = process_batch(&services, Consumer::Earn, &[garbled.clone(), noise]).await;
    // THEN neither is retried: the kr-shop message is among kr-shop's rejected events, with the
    // reason, and the noise is not shown to the program named "unknown"
    assert!(failed.is_empty(), "{failed:?}");
    let listed = services
        .rejected_events("kr-shop", None, None)
        .await
        .unwrap();
    assert_eq!(listed.events.len(), 1, "{:?}", listed.events);
    let rejected = serde_json::to_value(&listed.events[0]).unwrap();
    assert!(
        rejected["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("not an event envelope"),
        "{rejected}"
    );
    let theirs = services
        .rejected_events("unknown", None, None)
        .await
        .unwrap();
    assert!(theirs.events.is_empty(), "{:?}", theirs.events);
    // AND a cursor dated far ahead, which no page gives, is refused
    let forged = services
        .rejected_events("kr-shop", None, Some("9999-12-31T00:00:00Z|g1"))
        .await;
    assert!(
        matches!(
            &forged,
            Err(loyalty_core::services::ServiceError::Invalid {
                problem: "invalid-cursor",
                ..
            })
        ),
        "{:?}",
        forged.map(|l| l.events.len())
    );
    let kept = store
        .rejected(loyalty_core::services::earn::UNREADABLE, 10)
        .await
        .unwrap();
    assert_eq!(kept.len(), 1);
}

#[tokio::test]
async fn a_purchase_on_the_tier_queue_is_kept_for_the_earn_queue_not_dropped() {
    // GIVEN a purchase redriven by hand onto the tier queue
    let store = SqliteStore::memory().unwrap();
    let (queue, services) = common::kr_shop_services(&store, 5, Arc::new(SystemClock)).await;
    let purchase = record("wrong-queue-1", "m-wq", "KRW");
    // WHEN the tier queue's consumer takes it
    let failed = process_batch(&services, Consumer::Tier, std::slice::from_ref(&purchase)).await;
    // THEN it is not retried, credits nothing, and is kept among the rejected events, saying so
    assert!(failed.is_empty(), "{failed:?}");
    let kept = store
        .rejected_event("kr-shop", "wrong-queue-1")
        .await
        .unwrap()
        .expect("kept");
    assert!(kept.reason.contains("tier queue"), "{}", kept.reason);
    // WHEN an operator replays it THEN earn credits the purchase (100 points for 10,000 won)
    services
        .replay_rejected("kr-shop", "wrong-queue-1", "ops")
        .await
        .unwrap();
    queue.relay_outbox(100, |_| {}).await.unwrap();
    for delivery in queue
        .receive(
            loyalty_core::ports::QueueName::Earn,
            10,
            std::time::Duration::from_secs(30),
        )
        .await
        .unwrap()
    {
        services.process_earn(&delivery.body).await.unwrap();
        queue.ack(delivery.seq).await.unwrap();
    }
    let account = store
        .load_member("kr-shop", "m-wq", &[])
        .await
        .unwrap()
        .account
        .expect("credited");
    assert_eq!(account.balance + account.pending_points(), 100);
}

#[tokio::test]
async fn a_rejected_tier_check_is_replayed_to_the_tier_queue() {
    // GIVEN a tier check rejected by the tier queue's consumer: its program did not exist yet
    let store = SqliteStore::memory().unwrap();
    let (queue, services) = common::kr_shop_services(&store, 5, Arc::new(SystemClock)).await;
    let check = json!({"type": "tier.check", "version": 1, "id": "tier-check-late",
        "program": "late-shop", "member": "m-late",
        "occurred_at": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true), "data": {}});
    let record = Record {
        message_id: "msg-late".into(),
        group: Some("late-shop#m-late".into()),
        body: check.to_string(),
    };
    assert!(process_batch(&services, Consumer::Tier, &[record])
        .await
        .is_empty());
    assert!(store
        .rejected_event("late-shop", "tier-check-late")
        .await
        .unwrap()
        .is_some());
    // WHEN the program is saved and an operator replays the check
    let late = include_str!("../../examples/kr-shop.toml").replacen(
        "id = \"kr-shop\"",
        "id = \"late-shop\"",
        1,
    );
    services
        .put_program(
            "late-shop",
            &late,
            loyalty_core::services::programs::ProgramFormat::Toml,
        )
        .await
        .unwrap();
    services
        .replay_rejected("late-shop", "tier-check-late", "ops")
        .await
        .unwrap();
    queue.relay_outbox(100, |_| {}).await.unwrap();
    // THEN it waits on the tier queue, not on the earn queue
    let on = |name| {
        let queue = queue.clone();
        async move {
            queue
                .receive(name, 10, std::time::Duration::from_secs(30))
                .await
                .unwrap()
                .len()
        }
    };
    use loyalty_core::ports::QueueName;
    assert_eq!(
        (on(QueueName::Tier).await, on(QueueName::Earn).await),
        (1, 0)
    );
}
