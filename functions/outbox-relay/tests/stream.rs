//! The relay against moto, with this test playing the table's stream: the items a purchase
//! wrote are handed to the handler as the stream's records, and the queues are read.

use std::collections::HashMap;

use aws_lambda_events::event::dynamodb::Event;
use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine;
use chrono::{Duration, Utc};
use loyalty_core::ports::QueueName;
use loyalty_core::services::Services;
use loyalty_testing::{deployment, Redelivery};
use serde_json::{json, Value};

type Item = HashMap<String, AttributeValue>;

/// An attribute in the DynamoDB JSON form the stream's images travel in.
fn attribute(value: &AttributeValue) -> Value {
    match value {
        AttributeValue::S(s) => json!({ "S": s }),
        AttributeValue::N(n) => json!({ "N": n }),
        AttributeValue::B(b) => json!({ "B": base64::engine::general_purpose::STANDARD.encode(b) }),
        AttributeValue::Bool(b) => json!({ "BOOL": b }),
        AttributeValue::Null(_) => json!({ "NULL": true }),
        AttributeValue::L(l) => json!({ "L": l.iter().map(attribute).collect::<Vec<_>>() }),
        AttributeValue::M(m) => json!({ "M": image(m) }),
        AttributeValue::Ss(ss) => json!({ "SS": ss }),
        other => panic!("an attribute the table does not use: {other:?}"),
    }
}

fn image(item: &Item) -> Value {
    item.iter()
        .map(|(k, v)| (k.clone(), attribute(v)))
        .collect()
}

/// The stream's record of `item`, as Lambda delivers it.
fn record(name: &str, sequence: usize, item: &Item) -> Value {
    record_at(name, sequence, item, Utc::now())
}

/// The same, written to the table at `at`.
fn record_at(name: &str, sequence: usize, item: &Item, at: chrono::DateTime<Utc>) -> Value {
    let keys: Item = item
        .iter()
        .filter(|(k, _)| *k == "PK" || *k == "SK")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    json!({
        "eventID": format!("{sequence}"), "eventName": name, "eventVersion": "1.1",
        "eventSource": "aws:dynamodb", "awsRegion": "us-east-1",
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/x",
        "dynamodb": {
            "ApproximateCreationDateTime": at.timestamp(),
            "Keys": image(&keys), "NewImage": image(item),
            "SequenceNumber": format!("{:021}", sequence), "SizeBytes": 100,
            "StreamViewType": "NEW_IMAGE"
        }
    })
}

fn event(records: Vec<Value>) -> Event {
    serde_json::from_value(json!({ "Records": records })).expect("a Lambda DynamoDB event")
}

struct Harness {
    services: Services,
    store: loyalty_core::store::dynamodb::DynamoStore,
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
    sqs: aws_sdk_sqs::Client,
    notify: String,
}

async fn harness() -> Harness {
    let deployment = deployment(Redelivery::Later).await;
    let notify = deployment.urls[&QueueName::Notify].clone();
    Harness {
        services: deployment.services,
        store: deployment.store,
        dynamodb: deployment.dynamodb,
        table: deployment.table,
        sqs: deployment.sqs,
        notify,
    }
}

impl Harness {
    async fn items(&self) -> Vec<Item> {
        let mut items: Vec<Item> = self
            .dynamodb
            .scan()
            .table_name(&self.table)
            .send()
            .await
            .unwrap()
            .items
            .unwrap_or_default();
        items.sort_by_key(|i| format!("{:?}{:?}", i.get("PK"), i.get("SK")));
        items
    }

    /// The ids of the notices on the notify queue.
    async fn notices(&self) -> Vec<String> {
        let mut ids = Vec::new();
        loop {
            let messages = self
                .sqs
                .receive_message()
                .queue_url(&self.notify)
                .max_number_of_messages(10)
                .send()
                .await
                .unwrap()
                .messages
                .unwrap_or_default();
            if messages.is_empty() {
                return ids;
            }
            for m in messages {
                let body: Value = serde_json::from_str(m.body().unwrap()).unwrap();
                ids.push(body["id"].as_str().unwrap().to_string());
                self.sqs
                    .delete_message()
                    .queue_url(&self.notify)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
    }
}

#[tokio::test]
async fn a_notice_carried_by_a_ledger_entry_is_sent_once_and_nothing_is_deleted() {
    // GIVEN a purchase committed by earn: its notice rides along its ledger entry
    let h = harness().await;
    let purchase = json!({"type": "purchase.completed", "version": 1, "id": "o-1-paid",
        "program": "kr-shop", "member": "m-1",
        "occurred_at": (Utc::now() - Duration::days(8)).to_rfc3339(),
        "data": {"order_id": "o-1", "currency": "KRW",
                 "lines": [{"line_id": "1", "quantity": 1, "unit_price": "10000"}]}});
    h.services
        .process_earn(&purchase.to_string())
        .await
        .expect("processed");
    let before = h.items().await;
    let sk = |i: &Item| i["SK"].as_s().unwrap().clone();
    assert!(
        before.iter().all(|i| !sk(i).starts_with("OUTBOX#")),
        "{before:?}"
    );
    let entry = before
        .iter()
        .find(|i| sk(i).starts_with("L#"))
        .expect("a ledger entry");
    // WHEN the stream hands the relay every item the commit wrote, then the entry rewritten
    let mut records: Vec<Value> = before
        .iter()
        .enumerate()
        .map(|(i, item)| record("INSERT", i + 1, item))
        .collect();
    records.push(record("MODIFY", before.len() + 1, entry));
    let response = outbox_relay::handle(&h.services, event(records)).await;
    // THEN the notice is on its queue once, and the table is as it was
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(h.notices().await, vec!["points-earned-o-1-paid"]);
    assert_eq!(h.items().await, before);
}

/// An entry whose carried messages cannot be read, then an entry carrying a notice.
fn unreadable_then_readable() -> (Item, Item) {
    let mut bad: Item = HashMap::new();
    bad.insert("PK".into(), AttributeValue::S("P#kr-shop#M#m-2".into()));
    bad.insert("SK".into(), AttributeValue::S("L#0001".into()));
    bad.insert("outbox".into(), AttributeValue::S("[{not json".into()));
    let mut good = bad.clone();
    good.insert("SK".into(), AttributeValue::S("L#0002".into()));
    let notice = json!([{"queue": "notify", "envelope": {"type": "points.earned", "version": 1,
        "id": "points-earned-x", "program": "kr-shop", "member": "m-2",
        "occurred_at": Utc::now().to_rfc3339(), "data": {}}}]);
    good.insert("outbox".into(), AttributeValue::S(notice.to_string()));
    (bad, good)
}

#[tokio::test]
async fn a_ledger_entry_with_unreadable_messages_is_retried_for_a_while_then_skipped() {
    // GIVEN an entry whose carried messages cannot be read (written by a newer version of the
    // functions during a deploy, or a bad manual edit), then an entry carrying a notice
    let h = harness().await;
    let (bad, good) = unreadable_then_readable();
    // WHEN the stream hands both to the relay a minute after they were written
    let minute_ago = Utc::now() - Duration::minutes(1);
    let response = outbox_relay::handle(
        &h.services,
        event(vec![
            record_at("INSERT", 1, &bad, minute_ago),
            record_at("INSERT", 2, &good, minute_ago),
        ]),
    )
    .await;
    // THEN the batch is retried from the unreadable one, and nothing went out yet
    let failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    assert_eq!(failed, vec![Some(format!("{:021}", 1))]);
    assert_eq!(h.notices().await, Vec::<String>::new());
    // WHEN it is still unreadable twenty minutes after it was written
    let later = Utc::now() - Duration::minutes(20);
    let response = outbox_relay::handle(
        &h.services,
        event(vec![
            record_at("INSERT", 1, &bad, later),
            record_at("INSERT", 2, &good, later),
        ]),
    )
    .await;
    // THEN it is skipped, counted, and the readable notice goes out
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(h.notices().await, vec!["points-earned-x"]);
    assert!(
        loyalty_core::telemetry::metrics::prometheus().contains("loyalty_outbox_skipped_total{")
    );
}

#[tokio::test]
async fn a_waiting_message_woken_after_a_long_outage_is_sent_and_forgotten() {
    // GIVEN a message waiting in the outbox whose first stream record the relay missed, woken
    // by an operator (`loyalty outbox resend`)
    use loyalty_core::ports::{OutboxMessage, OutboxStore};
    let h = harness().await;
    let envelope: loyalty_core::envelope::Envelope = serde_json::from_value(json!({
        "type": "points.earned", "version": 1, "id": "points-earned-w", "program": "kr-shop",
        "member": "m-3", "occurred_at": Utc::now().to_rfc3339(), "data": {}}))
    .unwrap();
    let message = OutboxMessage::new(QueueName::Notify, envelope);
    h.store.enqueue(&message).await.unwrap();
    h.store.wake(&message).await.unwrap();
    let items = h.items().await;
    let woken: Vec<&Item> = items.iter().filter(|i| i.contains_key("woken")).collect();
    assert_eq!(woken.len(), 1, "{items:?}");
    // WHEN the stream hands the relay the update
    let response =
        outbox_relay::handle(&h.services, event(vec![record("MODIFY", 1, woken[0])])).await;
    // THEN the message is on its queue and the item is gone; waking it again writes nothing
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(h.notices().await, vec!["points-earned-w"]);
    let waiting = || async {
        h.items()
            .await
            .into_iter()
            .filter(|i| i["SK"].as_s().is_ok_and(|sk| sk.starts_with("OUTBOX#")))
            .count()
    };
    assert_eq!(waiting().await, 0);
    h.store.wake(&message).await.unwrap();
    assert_eq!(waiting().await, 0);
}

/// A queue that records each `send_all` it is given and refuses the messages with given ids
/// (with everything before them in that call sent).
#[derive(Default)]
struct Recording {
    calls: std::sync::Mutex<Vec<(QueueName, Vec<String>)>>,
    refuse: Vec<String>,
}

#[async_trait::async_trait]
impl loyalty_core::ports::Queue for Recording {
    async fn send(
        &self,
        queue: QueueName,
        message: &loyalty_core::envelope::Envelope,
    ) -> Result<(), loyalty_core::ports::QueueError> {
        self.send_all(queue, &[message]).await.map_err(|e| e.error)
    }

    async fn send_all(
        &self,
        queue: QueueName,
        messages: &[&loyalty_core::envelope::Envelope],
    ) -> Result<(), loyalty_core::ports::SendAllError> {
        let ids: Vec<String> = messages.iter().map(|m| m.id.clone()).collect();
        self.calls.lock().unwrap().push((queue, ids.clone()));
        match ids.iter().position(|id| self.refuse.contains(id)) {
            None => Ok(()),
            Some(sent) => Err(loyalty_core::ports::SendAllError {
                sent,
                error: loyalty_core::ports::QueueError {
                    queue: queue.as_str(),
                    message: "refused".into(),
                    source: None,
                },
            }),
        }
    }
}

/// The relay's services on moto's table, with `queue` in place of SQS.
async fn recording(queue: std::sync::Arc<Recording>) -> Services {
    let deployment = deployment(Redelivery::Later).await;
    Services::new(
        std::sync::Arc::new(deployment.store),
        queue,
        std::sync::Arc::new(loyalty_core::ports::SystemClock),
    )
}

/// A ledger entry of member `m-{n}` carrying messages `(queue, id)`.
fn carrying(n: usize, messages: &[(&str, &str)]) -> Item {
    let mut item: Item = HashMap::new();
    item.insert("PK".into(), AttributeValue::S(format!("P#kr-shop#M#m-{n}")));
    item.insert("SK".into(), AttributeValue::S("L#0001".into()));
    let carried: Vec<Value> = messages
        .iter()
        .map(|(queue, id)| {
            json!({"queue": queue, "envelope": {"type": "points.earned", "version": 1,
                "id": id, "program": "kr-shop", "member": format!("m-{n}"),
                "occurred_at": Utc::now().to_rfc3339(), "data": {}}})
        })
        .collect();
    item.insert(
        "outbox".into(),
        AttributeValue::S(json!(carried).to_string()),
    );
    item
}

/// The stream records of `count` ledger entries, entry n carrying notice `n-{n}`, and entry
/// `tier_at` also tier check `t-{tier_at}`.
fn notices(count: usize, tier_at: usize) -> Vec<Value> {
    (1..=count)
        .map(|n| {
            let (notice, check) = (format!("n-{n}"), format!("t-{n}"));
            let mut messages = vec![("notify", notice.as_str())];
            if n == tier_at {
                messages.push(("tier", check.as_str()));
            }
            record("INSERT", n, &carrying(n, &messages))
        })
        .collect()
}

#[tokio::test]
async fn the_messages_of_a_batch_go_to_each_queue_together_in_their_order() {
    // GIVEN twelve ledger entries, each carrying a notice, the fifth also a tier check
    let queue = std::sync::Arc::new(Recording::default());
    let services = recording(queue.clone()).await;
    let records = notices(12, 5);
    // WHEN the stream hands them to the relay in one batch
    let response = outbox_relay::handle(&services, event(records)).await;
    // THEN each queue is given its messages once, in one call, in the records' order
    assert!(response.batch_item_failures.is_empty());
    let notices: Vec<String> = (1..=12).map(|n| format!("n-{n}")).collect();
    assert_eq!(
        *queue.calls.lock().unwrap(),
        vec![
            (QueueName::Notify, notices),
            (QueueName::Tier, vec!["t-5".to_string()])
        ]
    );
}

#[tokio::test]
async fn a_refused_message_makes_the_stream_retry_from_the_first_record_not_all_sent() {
    // GIVEN five entries carrying notices, the second also a tier check; the tier queue refuses
    // that check and the notify queue the fourth notice
    let queue = std::sync::Arc::new(Recording {
        refuse: vec!["t-2".into(), "n-4".into()],
        ..Recording::default()
    });
    let services = recording(queue.clone()).await;
    let records = notices(5, 2);
    // WHEN the relay is handed them
    let response = outbox_relay::handle(&services, event(records)).await;
    // THEN the batch fails at the second record, the earliest with a message not sent: the
    // first record's notice went out, and everything from the second is sent again
    let failed: Vec<Option<String>> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    assert_eq!(failed, vec![Some(format!("{:021}", 2))]);
    let notices: Vec<String> = (1..=5).map(|n| format!("n-{n}")).collect();
    assert_eq!(
        *queue.calls.lock().unwrap(),
        vec![
            (QueueName::Notify, notices),
            (QueueName::Tier, vec!["t-2".to_string()])
        ]
    );
}

#[tokio::test]
async fn carried_messages_before_a_waiting_one_go_out_before_it() {
    // GIVEN an entry carrying a notice, a woken outbox message, then another entry's notice
    use loyalty_core::ports::{OutboxMessage, OutboxStore};
    let h = harness().await;
    let envelope: loyalty_core::envelope::Envelope = serde_json::from_value(json!({
        "type": "points.earned", "version": 1, "id": "w-2", "program": "kr-shop",
        "member": "m-2", "occurred_at": Utc::now().to_rfc3339(), "data": {}}))
    .unwrap();
    let message = OutboxMessage::new(QueueName::Notify, envelope);
    h.store.enqueue(&message).await.unwrap();
    h.store.wake(&message).await.unwrap();
    let woken = h
        .items()
        .await
        .into_iter()
        .find(|i| i.contains_key("woken"))
        .expect("the woken item");
    let queue = std::sync::Arc::new(Recording::default());
    let services = Services::new(
        std::sync::Arc::new(h.store.clone()),
        queue.clone(),
        std::sync::Arc::new(loyalty_core::ports::SystemClock),
    );
    // WHEN the stream hands the three records to the relay
    let records = vec![
        record("INSERT", 1, &carrying(1, &[("notify", "n-1")])),
        record("MODIFY", 2, &woken),
        record("INSERT", 3, &carrying(3, &[("notify", "n-3")])),
    ];
    let response = outbox_relay::handle(&services, event(records)).await;
    // THEN the queue is given them in the records' order
    assert!(response.batch_item_failures.is_empty());
    let calls: Vec<Vec<String>> = queue
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|(_, ids)| ids.clone())
        .collect();
    assert_eq!(calls, vec![vec!["n-1"], vec!["w-2"], vec!["n-3"]]);
}
