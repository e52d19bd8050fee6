//! The tier-recalc handler against moto: a `tier.check` batch as the SQS mapping delivers it,
//! and a scheduled job as EventBridge Scheduler invokes it.

use std::collections::HashMap;

use aws_sdk_sqs::types::MessageSystemAttributeName;
use chrono::{Duration, Utc};
use loyalty_core::domain::{calendar::local_date, Account};
use loyalty_core::envelope::Envelope;
use loyalty_core::ports::{Commit, MemberStore, OutboxStore, QueueName};
use loyalty_core::services::Services;
use loyalty_core::store::dynamodb::DynamoStore;
use loyalty_testing::{deployment, Redelivery};
use serde_json::{json, Value};

struct Harness {
    services: Services,
    store: DynamoStore,
    sqs: aws_sdk_sqs::Client,
    urls: HashMap<QueueName, String>,
    /// The carried messages already relayed: the stream shows each entry once.
    relayed: std::sync::Mutex<std::collections::HashSet<String>>,
}

async fn harness() -> Harness {
    let deployment = deployment(Redelivery::AtOnce).await;
    Harness {
        services: deployment.services,
        store: deployment.store,
        sqs: deployment.sqs,
        urls: deployment.urls,
        relayed: Default::default(),
    }
}

impl Harness {
    /// Receives what is on a queue, as bodies and as the Lambda event an SQS mapping delivers.
    async fn receive(&self, queue: QueueName) -> (Vec<Envelope>, Value) {
        // What the commits wrote to the outbox or carried along their entries, as the stream's
        // relay would send it.
        self.services.relay_waiting(1000).await.unwrap();
        for message in self
            .store
            .carried(
                chrono::DateTime::<chrono::Utc>::MIN_UTC..chrono::DateTime::<chrono::Utc>::MAX_UTC,
                1000,
            )
            .await
            .unwrap()
        {
            if self.relayed.lock().unwrap().insert(message.key()) {
                self.services.relay_carried(&message).await.unwrap();
            }
        }
        let messages = self
            .sqs
            .receive_message()
            .queue_url(&self.urls[&queue])
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        let envelopes = messages
            .iter()
            .map(|m| serde_json::from_str(m.body().unwrap()).unwrap())
            .collect();
        let records: Vec<Value> = messages
            .iter()
            .map(|m| {
                let attributes: HashMap<String, String> = m
                    .attributes()
                    .map(|a| {
                        a.iter()
                            .map(|(k, v)| (k.as_str().to_string(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                json!({
                    "messageId": m.message_id(), "receiptHandle": m.receipt_handle(),
                    "body": m.body(), "attributes": attributes, "messageAttributes": {},
                    "md5OfBody": m.md5_of_body(), "eventSource": "aws:sqs",
                    "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:tier.fifo",
                    "awsRegion": "us-east-1"
                })
            })
            .collect();
        (envelopes, json!({ "Records": records }))
    }

    async fn tier(&self, member: &str) -> String {
        let state = self
            .store
            .load_member("kr-shop", member, &[])
            .await
            .unwrap();
        state.account.unwrap().tier.id
    }
}

#[tokio::test]
async fn a_tier_check_batch_upgrades_the_member_and_says_so() {
    // GIVEN a member whose purchase of 310,000 KRW was earned, which queued a tier.check
    let h = harness().await;
    let purchase = json!({
        "type": "purchase.completed", "version": 1, "id": "ev-up", "program": "kr-shop",
        "member": "m-up", "occurred_at": Utc::now() - Duration::days(8),
        "data": {"order_id": "UP-1", "currency": "KRW",
                 "lines": [{"line_id": "1", "quantity": 1, "unit_price": "310000"}]}
    });
    h.services
        .process_earn(&purchase.to_string())
        .await
        .unwrap();
    assert_eq!(h.tier("m-up").await, "WELCOME");
    // WHEN the tier queue's mapping invokes the function with the batch
    let (_, event) = h.receive(QueueName::Tier).await;
    assert_eq!(event["Records"].as_array().unwrap().len(), 1);
    let response = tier_recalc::handle(&h.services, event).await.unwrap();
    // THEN nothing failed, the member is SILVER, and tier.changed went to the notify queue
    assert_eq!(response["batchItemFailures"], json!([]));
    assert_eq!(h.tier("m-up").await, "SILVER");
    let (notices, _) = h.receive(QueueName::Notify).await;
    assert!(notices
        .iter()
        .any(|n| n.kind == "tier.changed" && n.data["to"] == "SILVER"));
}

#[tokio::test]
async fn a_scheduled_review_lowers_a_member_due_and_refuses_unknown_jobs() {
    // GIVEN a GOLD member with no qualifying spend whose review date was yesterday
    let h = harness().await;
    let program = h.services.program("kr-shop").await.unwrap();
    let today = local_date(program.time_zone, Utc::now());
    let mut account = Account::open(&program, "m-gold", Utc::now() - Duration::days(400));
    account.tier.id = "GOLD".into();
    account.tier.review_on = Some(today - Duration::days(1));
    h.store
        .commit(Commit::new(
            &program,
            "m-gold",
            None,
            loyalty_core::domain::Change::unchanged(account),
            Utc::now(),
        ))
        .await
        .unwrap();
    // WHEN EventBridge Scheduler invokes the function with the schedule's input
    let reports = tier_recalc::handle(&h.services, json!({"job": "tier-reviews"}))
        .await
        .unwrap();
    // THEN the member is reviewed, one level down, and the report says so
    assert_eq!(reports[0]["program"], "kr-shop");
    assert_eq!(reports[0]["changed"], 1);
    assert_eq!(h.tier("m-gold").await, "SILVER");
    // AND a schedule naming an unknown job, or with a mistyped field, fails loudly
    assert!(
        tier_recalc::handle(&h.services, json!({"job": "tier-review"}))
            .await
            .is_err()
    );
    assert!(
        tier_recalc::handle(&h.services, json!({"job": "notices", "programme": "x"}))
            .await
            .is_err()
    );
}
