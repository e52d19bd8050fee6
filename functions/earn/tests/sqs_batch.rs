//! The earn handler against moto, with this test playing the SQS event-source mapping: receive a
//! batch, invoke the handler with the Lambda event JSON, delete what succeeded, and see the
//! failures come back.

use std::collections::HashMap;

use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use chrono::{Duration, Utc};
use loyalty_core::envelope::Envelope;
use loyalty_core::ports::{MemberStore, OutboxStore, Queue, QueueName};
use loyalty_testing::{deployment, Deployment, Redelivery};
use serde_json::json;

/// Makes `m-poison`'s account item unreadable (a bad manual edit), or removes it again.
async fn poison(dynamodb: &aws_sdk_dynamodb::Client, table: &str, on: bool) {
    use aws_sdk_dynamodb::types::AttributeValue;
    let key = |v: &str| AttributeValue::S(v.to_string());
    if on {
        dynamodb
            .put_item()
            .table_name(table)
            .item("PK", key("P#kr-shop#M#m-poison"))
            .item("SK", key("ACCOUNT"))
            .item("version", AttributeValue::N("1".into()))
            .item("body", key("{not an account"))
            .send()
            .await
            .unwrap();
    } else {
        dynamodb
            .delete_item()
            .table_name(table)
            .key("PK", key("P#kr-shop#M#m-poison"))
            .key("SK", key("ACCOUNT"))
            .send()
            .await
            .unwrap();
    }
}

fn purchase(id: &str, member: &str) -> Envelope {
    Envelope {
        replay: None,
        resumed: None,
        reviewed_by: None,
        trace: None,
        kind: "purchase.completed".into(),
        version: 1,
        id: id.into(),
        program: "kr-shop".into(),
        member: member.into(),
        occurred_at: Utc::now() - Duration::days(8),
        data: json!({"order_id": id, "currency": "KRW", "lines": [{"line_id": "1", "quantity": 1, "unit_price": "10000"}]}),
    }
}

/// Receives a batch and shapes it as the Lambda event an SQS mapping delivers.
async fn receive(sqs: &aws_sdk_sqs::Client, url: &str) -> (SqsEvent, HashMap<String, String>) {
    let messages = sqs
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .expect("receive")
        .messages
        .unwrap_or_default();
    let mut handles = HashMap::new();
    let records: Vec<_> = messages
        .iter()
        .map(|m| {
            let id = m.message_id().unwrap_or_default().to_string();
            handles.insert(id.clone(), m.receipt_handle().unwrap_or_default().to_string());
            let attributes: HashMap<String, String> = m
                .attributes()
                .map(|a| a.iter().map(|(k, v)| (k.as_str().to_string(), v.clone())).collect())
                .unwrap_or_default();
            json!({
                "messageId": id, "receiptHandle": m.receipt_handle(), "body": m.body(),
                "attributes": attributes, "messageAttributes": {}, "md5OfBody": m.md5_of_body(),
                "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:earn.fifo",
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    let event: SqsEvent =
        serde_json::from_value(json!({"Records": records})).expect("a Lambda SQS event");
    (event, handles)
}

#[tokio::test]
async fn a_poisoned_message_and_the_rest_of_its_group_come_back_and_nothing_else() {
    // GIVEN moto with the table and the three queues, and kr-shop saved
    let Deployment {
        sqs,
        dynamodb,
        table,
        store,
        urls,
        queue,
        services,
        ..
    } = deployment(Redelivery::AtOnce).await;
    // AND a batch on the earn queue with a poisoned message (its member's account item cannot
    // be read) in the middle of its group
    poison(&dynamodb, &table, true).await;
    let earn_url = urls[&QueueName::Earn].clone();
    for (id, member) in [
        ("a1", "m-a"),
        ("p1", "m-poison"),
        ("p2", "m-poison"),
        ("b1", "m-b"),
    ] {
        queue
            .send(QueueName::Earn, &purchase(id, member))
            .await
            .unwrap();
    }
    // WHEN the mapping delivers the batch to the handler and deletes what succeeded
    let (event, handles) = receive(&sqs, &earn_url).await;
    let ids: HashMap<String, String> = event
        .records
        .iter()
        .map(|r| {
            let envelope: Envelope = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
            (r.message_id.clone().unwrap(), envelope.id)
        })
        .collect();
    assert_eq!(ids.len(), 4, "the whole batch arrives at once");
    let response = earn::handle(&services, event).await;
    let failed: Vec<String> = response
        .batch_item_failures
        .iter()
        .map(|f| ids[&f.item_identifier].clone())
        .collect();
    // THEN exactly the poisoned message and the later one of its group are reported
    assert_eq!(failed, vec!["p1", "p2"]);
    for (message_id, handle) in &handles {
        if !response
            .batch_item_failures
            .iter()
            .any(|f| &f.item_identifier == message_id)
        {
            sqs.delete_message()
                .queue_url(&earn_url)
                .receipt_handle(handle)
                .send()
                .await
                .unwrap();
        }
    }
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
    assert_eq!((balance("m-a").await, balance("m-b").await), (100, 100));
    // WHEN an operator removes the bad item and the failures are delivered again
    poison(&dynamodb, &table, false).await;
    let mut delivered = Vec::new();
    for _ in 0..5 {
        let (event, handles) = receive(&sqs, &earn_url).await;
        if event.records.is_empty() {
            break;
        }
        for r in &event.records {
            let envelope: Envelope = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
            delivered.push(envelope.id);
        }
        let response = earn::handle(&services, event).await;
        // THEN they succeed
        assert!(response.batch_item_failures.is_empty());
        for handle in handles.values() {
            sqs.delete_message()
                .queue_url(&earn_url)
                .receipt_handle(handle)
                .send()
                .await
                .unwrap();
        }
    }
    // AND only the failed messages came back (moto, unlike SQS, may redeliver a group out of
    // order; the marker and the order record keep the result the same), and p1 credited once
    delivered.sort();
    assert_eq!(delivered, vec!["p1", "p2"]);
    assert_eq!(balance("m-poison").await, 200);
    // AND a notice for each purchase rides along its ledger entry, for the stream's relay, and
    // none waits in the outbox; no purchase reached a tier's threshold, so no tier check was
    // written
    let mut notices: Vec<(&str, String)> = store
        .carried(
            chrono::DateTime::<chrono::Utc>::MIN_UTC..chrono::DateTime::<chrono::Utc>::MAX_UTC,
            100,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.queue.as_str(), m.envelope.id))
        .collect();
    notices.sort();
    assert_eq!(
        notices,
        ["a1", "b1", "p1", "p2"].map(|id| ("notify", format!("points-earned-{id}")))
    );
    assert_eq!(services.relay_waiting(100).await.unwrap(), 0);
    let tier = sqs
        .receive_message()
        .queue_url(&urls[&QueueName::Tier])
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    assert_eq!(tier.messages.unwrap_or_default().len(), 0);
}
