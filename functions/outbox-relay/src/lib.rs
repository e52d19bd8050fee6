//! The outbox relay: the table's stream in, each message out to its queue. A message comes
//! either as an outbox item (sent, then deleted) or riding along a new ledger entry (sent; the
//! entry stays, and the stream shows it once). The messages ledger entries carry go out
//! together, each queue's in batches of ten, until the next outbox item or the end of the
//! stream's batch. A stream shard is ordered, so on a failure the batch answers with the
//! sequence number of the first record whose messages may not all have gone out: Lambda
//! retries from there, and nothing after it is skipped. Messages already sent are sent again on
//! that retry; the FIFO queues (earn, tier) deduplicate them by their program-scoped id, and
//! the notify queue, a standard one, may deliver a notice twice: its consumers deduplicate on
//! the envelope's `id`.

use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use loyalty_core::ports::{OutboxMessage, StoreError};
use loyalty_core::services::outbox::RelayError;
use loyalty_core::services::Services;
use loyalty_core::store::dynamodb::{carried_messages, outbox_message_parts, CARRIED};
use loyalty_core::telemetry::metrics;

/// How long a message the relay cannot read is retried before it is skipped. During a deploy,
/// functions already updated may write messages in a form this relay does not know yet; it
/// reads them once it is updated too. A message still unreadable after that is skipped (and
/// counted, for the alarm): a stuck shard would hold back every later message for good.
const UNREADABLE_GRACE_MINUTES: i64 = 15;

/// What a stream record brings to relay.
enum Found {
    /// An outbox item: forgotten once sent.
    Waiting(OutboxMessage),
    /// The messages a new ledger entry carries.
    Carried(Vec<OutboxMessage>),
}

/// Relays the messages of one batch in order; on a failure, answers with the record to retry
/// from.
pub async fn handle(services: &Services, event: Event) -> DynamoDbEventResponse {
    let records = event.records;
    let failed_at = match relay_records(services, &records).await {
        Ok(()) => return DynamoDbEventResponse::default(),
        Err(at) => at,
    };
    let mut failure = DynamoDbBatchItemFailure::default();
    failure.item_identifier = Some(sequence(&records[failed_at]));
    let mut response = DynamoDbEventResponse::default();
    response.batch_item_failures.push(failure);
    response
}

/// Relays the records' messages; on a failure, the index of the first record whose messages
/// may not all have gone out.
async fn relay_records(services: &Services, records: &[EventRecord]) -> Result<(), usize> {
    // Carried messages, with the index of their record, wait to go out together.
    let mut carried: Vec<(usize, OutboxMessage)> = Vec::new();
    for (index, record) in records.iter().enumerate() {
        let found = match found(record) {
            None => continue,
            Some(Ok(found)) => found,
            Some(Err(e)) => {
                if age_minutes(services, record) < UNREADABLE_GRACE_MINUTES {
                    tracing::warn!(error = %loyalty_core::telemetry::redact(&e.to_string()), sequence = sequence(record), "unreadable outbox message; retried until the relay can read it");
                    send_carried(services, records, std::mem::take(&mut carried)).await?;
                    return Err(index);
                }
                tracing::error!(error = %loyalty_core::telemetry::redact(&e.to_string()), sequence = sequence(record), "unreadable outbox message skipped; resend it by hand");
                metrics::add(metrics::OUTBOX_SKIPPED, &[], 1);
                continue;
            }
        };
        match found {
            Found::Carried(messages) => carried.extend(messages.into_iter().map(|m| (index, m))),
            // An outbox item is sent, then forgotten, after what came before it.
            Found::Waiting(message) => {
                send_carried(services, records, std::mem::take(&mut carried)).await?;
                logged(&message, services.relay(&message).await).map_err(|_| index)?;
                observe_lag(services, record, &message);
            }
        }
    }
    send_carried(services, records, carried).await
}

/// Sends the carried messages together; on a failure, the index of the record of the first
/// that may not have gone out.
async fn send_carried(
    services: &Services,
    records: &[EventRecord],
    carried: Vec<(usize, OutboxMessage)>,
) -> Result<(), usize> {
    let messages: Vec<&OutboxMessage> = carried.iter().map(|(_, m)| m).collect();
    match services.relay_carried_all(&messages).await {
        Ok(()) => {
            for (index, message) in &carried {
                observe_lag(services, &records[*index], message);
            }
            Ok(())
        }
        Err((at, e)) => {
            let first_unsent = carried.get(at).or(carried.last());
            let key = first_unsent.map(|(_, m)| m.key()).unwrap_or_default();
            tracing::warn!(error = %e, key = loyalty_core::telemetry::event_ref(&key), "outbox message not relayed; the stream retries from its record");
            Err(first_unsent.map_or(0, |(index, _)| *index))
        }
    }
}

fn age_minutes(services: &Services, record: &EventRecord) -> i64 {
    (services.clock.now() - record.change.approximate_creation_date_time).num_minutes()
}

fn sequence(record: &EventRecord) -> String {
    record.change.sequence_number.clone().unwrap_or_default()
}

fn observe_lag(services: &Services, record: &EventRecord, message: &OutboxMessage) {
    // A record stamped after now (clocks apart) lagged by nothing.
    let lag = (services.clock.now() - record.change.approximate_creation_date_time)
        .to_std()
        .unwrap_or_default();
    metrics::observe(
        metrics::OUTBOX_LAG,
        &[("program", &message.envelope.program)],
        lag,
    );
}

/// Logs a message that was not relayed.
fn logged(message: &OutboxMessage, outcome: Result<(), RelayError>) -> Result<(), RelayError> {
    if let Err(e) = &outcome {
        tracing::warn!(error = %e, key = loyalty_core::telemetry::event_ref(&message.key()), "outbox message not relayed; the stream retries from it");
    }
    outcome
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
