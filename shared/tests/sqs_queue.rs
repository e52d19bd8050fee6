//! The SQS adapter against moto: FIFO sends group by member and deduplicate by message id.
#![cfg(feature = "aws")]

mod common;

use std::collections::HashMap;

use aws_sdk_sqs::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_sqs::error::BoxError;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use chrono::Utc;
use loyalty_core::envelope::Envelope;
use loyalty_core::ports::DeadLetters;
use loyalty_core::ports::{Queue, QueueName};
use loyalty_core::queue::sqs_fifo::{QueuePair, SqsDeadLetters, SqsQueue};

fn client() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::from_conf(config().build())
}

fn config() -> aws_sdk_sqs::config::Builder {
    let endpoint = std::env::var("LOYALTY_TEST_SQS_ENDPOINT").unwrap_or_else(|_| {
        panic!("LOYALTY_TEST_SQS_ENDPOINT is not set: run the tests with scripts/test, which starts moto")
    });
    aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "sqs-test"))
        .http_client(loyalty_core::aws::http_client())
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

/// Refuses every SendMessage whose body names "poison", as SQS refusing one message would.
#[derive(Debug)]
struct RefusePoison;

impl Intercept for RefusePoison {
    fn name(&self) -> &'static str {
        "refuse-poison"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let target = common::target(context);
        let body = context.request().body().bytes().unwrap_or_default();
        if target.ends_with(".SendMessage") && String::from_utf8_lossy(body).contains("poison") {
            return Err("refused".into());
        }
        Ok(())
    }
}

async fn fifo(client: &aws_sdk_sqs::Client, name: &str) -> String {
    client
        .create_queue()
        .queue_name(format!("{name}-{}.fifo", uuid::Uuid::new_v4().simple()))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .expect("moto creates the queue")
        .queue_url
        .expect("queue url")
}

#[tokio::test]
async fn a_dead_letter_that_cannot_be_moved_holds_back_its_group_only() {
    // GIVEN an earn queue whose dead-letter queue holds m-1's poison and next message, and
    // m-2's message
    let plain = client();
    let (queue_url, dead_letter_url) = (fifo(&plain, "earn").await, fifo(&plain, "earn-dlq").await);
    for (id, member) in [("poison-1", "m-1"), ("ev-2", "m-1"), ("ev-3", "m-2")] {
        plain
            .send_message()
            .queue_url(&dead_letter_url)
            .message_body(serde_json::to_string(&envelope(id, member)).unwrap())
            .message_group_id(format!("kr-shop#{member}"))
            .message_deduplication_id(id)
            .send()
            .await
            .unwrap();
    }
    let refusing = aws_sdk_sqs::Client::from_conf(config().interceptor(RefusePoison).build());
    let pairs = HashMap::from([(
        QueueName::Earn,
        QueuePair {
            queue_url: queue_url.clone(),
            dead_letter_url: dead_letter_url.clone(),
        },
    )]);
    let dead_letters = SqsDeadLetters::new(refusing, pairs);
    // WHEN they are redriven, and SQS refuses the poison
    let answer = dead_letters.redrive(QueueName::Earn, 100).await;
    // THEN m-2's message is moved, m-1's two stay behind in their order, and the answer says so
    let error = answer.expect_err("one message was not moved");
    assert!(error.to_string().contains("1 moved"), "{error}");
    let moved: Vec<String> = plain
        .receive_message()
        .queue_url(&queue_url)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default()
        .iter()
        .map(|m| {
            serde_json::from_str::<Envelope>(m.body().unwrap())
                .unwrap()
                .id
        })
        .collect();
    assert_eq!(moved, vec!["ev-3"]);
    let left = plain
        .get_queue_attributes()
        .queue_url(&dead_letter_url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let count = |name: QueueAttributeName| {
        left.attributes()
            .and_then(|a| a.get(&name))
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or_default()
    };
    assert_eq!(
        count(QueueAttributeName::ApproximateNumberOfMessages)
            + count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        2
    );
}
