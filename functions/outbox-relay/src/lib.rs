//! The outbox relay: the table's stream in, each message out to its queue. A message comes
//! either as an outbox item (sent, then deleted) or riding along a new ledger entry (sent; the
//! entry stays, and the stream shows it once). A stream shard is ordered, so on a failure the
//! batch answers with that record's sequence number: Lambda retries from there, and nothing
//! after it is skipped. Messages already sent are sent again on that retry; queues deduplicate
//! them by their program-scoped id.

use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use loyalty_core::ports::{OutboxMessage, StoreError};
use loyalty_core::services::outbox::RelayError;
use loyalty_core::services::Services;
use loyalty_core::store::dynamodb::{carried_messages, outbox_message_parts, CARRIED};
use loyalty_core::telemetry::metrics;

/// What a stream record brings to relay.
enum Found {
    /// An outbox item: forgotten once sent.
    Waiting(OutboxMessage),
    /// The messages a new ledger entry carries.
    Carried(Vec<OutboxMessage>),
}

/// Relays the messages of one batch, in order, stopping at the first that fails.
pub async fn handle(services: &Services, event: Event) -> DynamoDbEventResponse {
    let mut response = DynamoDbEventResponse::default();
    for record in event.records {
        let sequence = record.change.sequence_number.clone().unwrap_or_default();
        let found = match found(&record) {
            None => continue,
            Some(Ok(found)) => found,
            // No retry can mend it; a stuck shard would hold back every later message.
            Some(Err(e)) => {
                tracing::error!(error = %e, sequence, "corrupt outbox message skipped");
                continue;
            }
        };
        let sent = match &found {
            Found::Waiting(message) => logged(message, services.relay(message).await),
            Found::Carried(messages) => {
                let mut sent = Ok(());
                for message in messages {
                    sent = logged(message, services.relay_carried(message).await);
                    if sent.is_err() {
                        break;
                    }
                }
                sent
            }
        };
        if sent.is_err() {
            let mut failure = DynamoDbBatchItemFailure::default();
            failure.item_identifier = Some(sequence);
            response.batch_item_failures.push(failure);
            return response;
        }
        let lag = (services.clock.now() - record.change.approximate_creation_date_time)
            .num_milliseconds()
            .max(0);
        for message in found.messages() {
            metrics::observe(
                metrics::OUTBOX_LAG,
                &[("program", &message.envelope.program)],
                lag.unsigned_abs(),
            );
        }
    }
    response
}

/// Logs a message that was not relayed.
fn logged(message: &OutboxMessage, outcome: Result<(), RelayError>) -> Result<(), RelayError> {
    if let Err(e) = &outcome {
        tracing::warn!(error = %e, key = %message.key(), "outbox message not relayed; the stream retries from it");
    }
    outcome
}

impl Found {
    fn messages(&self) -> &[OutboxMessage] {
        match self {
            Found::Waiting(message) => std::slice::from_ref(message),
            Found::Carried(messages) => messages,
        }
    }
}

/// The messages of a stream record, `None` for a record that brings none: a removal, any other
/// item, or a ledger entry rewritten or carrying nothing. The image is read in its DynamoDB
/// JSON form (`{"SK": {"S": ...}}`), which is how it travels.
fn found(record: &EventRecord) -> Option<Result<Found, StoreError>> {
    if record.event_name == "REMOVE" {
        return None;
    }
    let image = serde_json::to_value(&record.change.new_image).ok()?;
    let text = |name: &str| image.get(name)?.get("S")?.as_str();
    let sk = text("SK")?;
    if let Some(message) = text("body").and_then(|body| outbox_message_parts(sk, body)) {
        return Some(message.map(Found::Waiting));
    }
    if record.event_name != "INSERT" {
        return None;
    }
    carried_messages(sk, text(CARRIED)?).map(|messages| messages.map(Found::Carried))
}
