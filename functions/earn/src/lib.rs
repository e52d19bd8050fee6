//! The earn function: an SQS FIFO batch in, the ids of the messages to retry out.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use loyalty_core::services::batch::{handle_sqs_event, Consumer};
use loyalty_core::services::Services;

/// Processes one batch. Failed messages, and the later messages of their member's group, are
/// reported so that SQS delivers only them again; everything else is deleted by the mapping.
pub async fn handle(services: &Services, event: SqsEvent) -> SqsBatchResponse {
    handle_sqs_event(services, Consumer::Earn, event).await
}
