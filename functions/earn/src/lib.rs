//! The earn function: an SQS FIFO batch in, the ids of the messages to retry out.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use loyalty_core::services::batch::{process_batch, Consumer, Record};
use loyalty_core::services::Services;

/// Processes one batch. Failed messages, and the later messages of their member's group, are
/// reported so that SQS delivers only them again; everything else is deleted by the mapping.
pub async fn handle(services: &Services, event: SqsEvent) -> SqsBatchResponse {
    let records: Vec<Record> = event
        .records
        .into_iter()
        .map(|m| Record {
            message_id: m.message_id.unwrap_or_default(),
            group: m.attributes.get("MessageGroupId").cloned(),
            body: m.body.unwrap_or_default(),
        })
        .collect();
    let failed = process_batch(services, Consumer::Earn, &records).await;
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
