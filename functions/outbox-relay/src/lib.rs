//! The outbox relay: the table's stream in, each new outbox item sent to its queue, then
//! deleted. A stream shard is ordered, so on a failure the batch answers with that record's
//! sequence number: Lambda retries from there, and nothing after it is skipped. Messages already
//! sent are sent again on that retry; queues deduplicate them by their program-scoped id.

use aws_lambda_events::event::dynamodb::Event;
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use loyalty_core::ports::OutboxMessage;
use loyalty_core::services::Services;
use loyalty_core::store::dynamodb::outbox_message_parts;
use loyalty_core::telemetry::metrics;

/// Relays the outbox items of one batch, in order, stopping at the first that fails.
pub async fn handle(services: &Services, event: Event) -> DynamoDbEventResponse {
    let mut response = DynamoDbEventResponse::default();
    for record in event.records {
        if record.event_name == "REMOVE" {
            continue;
        }
        let Some(message) = outbox_message(&record.change.new_image) else {
            continue;
        };
        let sequence = record.change.sequence_number.clone().unwrap_or_default();
        let message = match message {
            Ok(message) => message,
            // No retry can mend it; a stuck shard would hold back every later message.
            Err(e) => {
                tracing::error!(error = %e, sequence, "corrupt outbox item skipped");
                continue;
            }
        };
        let committed = record.change.approximate_creation_date_time;
        if let Err(e) = services.relay(&message).await {
            tracing::warn!(error = %e, key = %message.key(), "outbox message not relayed; the stream retries from it");
            let mut failure = DynamoDbBatchItemFailure::default();
            failure.item_identifier = Some(sequence);
            response.batch_item_failures.push(failure);
            return response;
        }
        let lag = (services.clock.now() - committed).num_milliseconds().max(0);
        metrics::observe(
            metrics::OUTBOX_LAG,
            &[("program", &message.envelope.program)],
            lag.unsigned_abs(),
        );
    }
    response
}

/// The message of an outbox item, `None` for any other item of the table. The image is read
/// in its DynamoDB JSON form (`{"SK": {"S": ...}}`), which is how it travels.
fn outbox_message<T: serde::Serialize>(
    image: &T,
) -> Option<Result<OutboxMessage, loyalty_core::ports::StoreError>> {
    let image = serde_json::to_value(image).ok()?;
    let text = |name: &str| image.get(name)?.get("S")?.as_str();
    outbox_message_parts(text("SK")?, text("body")?)
}
