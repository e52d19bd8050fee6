//! Processing a batch of queue messages the way an SQS event source expects: report exactly the
//! messages that failed, so that only they are delivered again.
//!
//! On a FIFO queue, a member's messages must stay in order: once one message of a group fails,
//! the later messages of that group in the same batch are not processed and are reported as
//! failed too, so they come back after it.

use std::collections::HashSet;

use super::earn::Processed;
use super::Services;

/// One message of a batch: its id (to report a failure), its FIFO group and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub message_id: String,
    /// `None` on a standard queue.
    pub group: Option<String>,
    pub body: String,
}

/// What a log line says of a message: the envelope's ids, never its data.
#[derive(Debug, Default, serde::Deserialize)]
struct Ids {
    #[serde(default)]
    id: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    program: String,
    /// The canonical member id (aliases are resolved before a message is queued).
    #[serde(default)]
    member: String,
}

/// Which queue's handler runs the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    Earn,
    Tier,
}

/// Processes the records in order and returns the ids of those that must be retried.
pub async fn process_batch(
    services: &Services,
    consumer: Consumer,
    records: &[Record],
) -> Vec<String> {
    let mut failed = Vec::new();
    let mut failed_groups: HashSet<&str> = HashSet::new();
    for record in records {
        if let Some(group) = record.group.as_deref() {
            if failed_groups.contains(group) {
                failed.push(record.message_id.clone());
                continue;
            }
        }
        let result = match consumer {
            Consumer::Earn => services.process_earn(&record.body).await,
            Consumer::Tier => services.process_tier_check(&record.body).await,
        };
        let ids = serde_json::from_str::<Ids>(&record.body).unwrap_or_default();
        match result {
            Ok(Processed::Rejected(reason)) => {
                tracing::warn!(
                    message_id = record.message_id,
                    event_id = ids.id,
                    kind = ids.kind,
                    program = ids.program,
                    member = ids.member,
                    reason,
                    "message rejected for good"
                );
            }
            Ok(outcome) => tracing::info!(
                message_id = record.message_id,
                event_id = ids.id,
                kind = ids.kind,
                program = ids.program,
                member = ids.member,
                outcome = outcome.name(),
                "message processed"
            ),
            Err(retry) => {
                tracing::warn!(
                    message_id = record.message_id,
                    event_id = ids.id,
                    program = ids.program,
                    error = %retry,
                    "message will be retried"
                );
                failed.push(record.message_id.clone());
                if let Some(group) = record.group.as_deref() {
                    failed_groups.insert(group);
                }
            }
        }
    }
    failed
}

/// An SQS event from a Lambda event-source mapping, processed as a batch, answered with the
/// failed messages (`ReportBatchItemFailures`) so that SQS delivers only them again.
#[cfg(feature = "aws")]
pub async fn handle_sqs_event(
    services: &Services,
    consumer: Consumer,
    event: aws_lambda_events::event::sqs::SqsEvent,
) -> aws_lambda_events::event::sqs::SqsBatchResponse {
    use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse};
    let records: Vec<Record> = event
        .records
        .into_iter()
        .map(|m| Record {
            message_id: m.message_id.unwrap_or_default(),
            group: m.attributes.get("MessageGroupId").cloned(),
            body: m.body.unwrap_or_default(),
        })
        .collect();
    let failed = process_batch(services, consumer, &records).await;
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failed
        .into_iter()
        .map(|id| {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            failure
        })
        .collect();
    response
}
