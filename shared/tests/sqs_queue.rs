//! The SQS adapter against moto: FIFO sends group by member and deduplicate by message id.
#![cfg(feature = "aws")]

use std::collections::HashMap;

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use chrono::Utc;
use loyalty_core::envelope::Envelope;
use loyalty_core::ports::{Queue, QueueName};
use loyalty_core::queue::sqs_fifo::SqsQueue;

fn client() -> aws_sdk_sqs::Client {
    let endpoint = std::env::var("LOYALTY_TEST_SQS_ENDPOINT").unwrap_or_else(|_| {
        panic!("LOYALTY_TEST_SQS_ENDPOINT is not set: run the tests with scripts/test, which starts moto")
    });
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "sqs-test"))
        .http_client(loyalty_core::aws::http_client())
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

fn envelope(id: &str, member: &str) -> Envelope {
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
        occurred_at: Utc::now(),
        data: serde_json::json!({"order_id": "1001"}),
    }
}

/// A new earn FIFO queue on moto (content-based deduplication off, as in the template): the
/// adapter on it, and its URL.
async fn earn_queue(client: &aws_sdk_sqs::Client) -> (SqsQueue, String) {
    let name = format!("earn-{}.fifo", uuid::Uuid::new_v4().simple());
    let url = client
        .create_queue()
        .queue_name(&name)
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .expect("moto creates the queue")
        .queue_url
        .expect("queue url");
    let queue = SqsQueue::new(
        client.clone(),
        HashMap::from([(QueueName::Earn, url.clone())]),
    );
    (queue, url)
}

#[tokio::test]
async fn fifo_messages_are_grouped_by_member_and_deduplicated_by_id() {
    // GIVEN an earn FIFO queue (content-based deduplication off, as in the template)
    let client = client();
    let (queue, url) = earn_queue(&client).await;
    // WHEN the same message is sent twice and another one once
    queue
        .send(QueueName::Earn, &envelope("ev-1", "m-1"))
        .await
        .unwrap();
    queue
        .send(QueueName::Earn, &envelope("ev-1", "m-1"))
        .await
        .unwrap();
    queue
        .send(QueueName::Earn, &envelope("ev-2", "m-1"))
        .await
        .unwrap();
    // THEN two messages arrive, in order, grouped by program#member, each with its envelope
    let received = client
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(10)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    let ids: Vec<String> = received
        .iter()
        .map(|m| {
            serde_json::from_str::<Envelope>(m.body().unwrap())
                .unwrap()
                .id
        })
        .collect();
    assert_eq!(ids, vec!["ev-1", "ev-2"]);
    let group = received[0]
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
        .cloned();
    assert_eq!(group.as_deref(), Some("kr-shop#m-1"));
}

#[tokio::test]
async fn many_messages_sent_together_arrive_once_each_in_their_group_s_order() {
    // GIVEN an earn FIFO queue
    let client = client();
    let (queue, url) = earn_queue(&client).await;
    // WHEN 23 messages of one member, the fourth twice, are sent together (three batches)
    let mut envelopes: Vec<Envelope> = (1..=23)
        .map(|n| envelope(&format!("ev-{n}"), "m-1"))
        .collect();
    envelopes.insert(4, envelope("ev-4", "m-1"));
    let all: Vec<&Envelope> = envelopes.iter().collect();
    queue.send_all(QueueName::Earn, &all).await.unwrap();
    // THEN each arrives once, in order
    let mut ids = Vec::new();
    loop {
        let received = client
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        if received.is_empty() {
            break;
        }
        for m in received {
            ids.push(
                serde_json::from_str::<Envelope>(m.body().unwrap())
                    .unwrap()
                    .id,
            );
            client
                .delete_message()
                .queue_url(&url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    let expected: Vec<String> = (1..=23).map(|n| format!("ev-{n}")).collect();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn a_queue_without_a_url_is_an_error_not_a_panic() {
    // GIVEN an adapter that knows no tier queue WHEN a tier message is sent THEN it fails clearly
    let queue = SqsQueue::new(client(), HashMap::new());
    let err = queue
        .send(QueueName::Tier, &envelope("ev-1", "m-1"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("tier"), "{err}");
}
