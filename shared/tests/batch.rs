//! Partial batch failures: exactly the failed messages, and the rest of their FIFO group, come back.
#![cfg(feature = "sqlite")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{Duration, SecondsFormat, Utc};
use loyalty_core::envelope::Envelope;
use loyalty_core::ports::{MemberStore, Queue, QueueError, QueueName, RejectStore, SystemClock};
use loyalty_core::queue::local::LocalQueue;
use loyalty_core::services::batch::{process_batch, Consumer, Record};
use loyalty_core::services::programs::ProgramFormat;
use loyalty_core::services::Services;
use loyalty_core::store::sqlite::SqliteStore;
use serde_json::json;

/// A queue whose sends for one member fail while `broken` is set (a throttled SQS, say).
struct FlakyQueue {
    inner: LocalQueue,
    broken: AtomicBool,
}

#[async_trait]
impl Queue for FlakyQueue {
    async fn send(&self, queue: QueueName, message: &Envelope) -> Result<(), QueueError> {
        if self.broken.load(Ordering::SeqCst) && message.member == "m-poison" {
            return Err(QueueError {
                queue: queue.as_str(),
                message: "throttled".into(),
                source: None,
            });
        }
        self.inner.send(queue, message).await
    }
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
    // GIVEN kr-shop, and a queue that cannot take follow-ups for m-poison right now
    let store = SqliteStore::memory().unwrap();
    let queue = Arc::new(FlakyQueue {
        inner: LocalQueue::new(store.clone(), 5),
        broken: AtomicBool::new(true),
    });
    let services = Services::new(
        Arc::new(store.clone()),
        queue.clone(),
        Arc::new(SystemClock),
    );
    services
        .put_program(
            "kr-shop",
            include_str!("../../examples/kr-shop.toml"),
            ProgramFormat::Toml,
        )
        .await
        .unwrap();
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
    assert_eq!(
        balance("m-poison").await,
        100,
        "p1 committed before its follow-up failed; p2 waited"
    );
    assert_eq!(store.rejected("kr-shop", 10).await.unwrap().len(), 1);

    // WHEN the queue recovers and the failed messages come back
    queue.broken.store(false, Ordering::SeqCst);
    let retried: Vec<Record> = batch
        .into_iter()
        .filter(|r| failed.contains(&r.message_id))
        .collect();
    let failed_again = process_batch(&services, Consumer::Earn, &retried).await;
    // THEN both succeed: p1 as a duplicate (no second credit), p2 for the first time
    assert!(failed_again.is_empty());
    assert_eq!(balance("m-poison").await, 200);
}
