//! Processing a batch of queue messages the way an SQS event source expects: report exactly the
//! messages that failed, so that only they are delivered again.
//!
//! On a FIFO queue, a member's messages must stay in order: once one message of a group fails,
//! the later messages of that group in the same batch are not processed and are reported as
//! failed too, so they come back after it.

use std::collections::{HashMap, HashSet};

use futures_util::future::join_all;

use super::batch_commit::{CommitGroup, Seat};
use super::earn::{Processed, Retry};
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
    #[serde(default)]
    trace: Option<String>,
}

/// Which queue's handler runs the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    Earn,
    Tier,
}

/// How many messages of a wave are processed at once: earn opens two DynamoDB connections
/// during init, and more requests at a time would open more during a cold start's first
/// invocation.
const AT_ONCE: usize = 2;

/// Processes the records and returns the ids of those that must be retried, in the batch's
/// order. Earn's messages go in waves, the k-th message of every FIFO group in wave k, each
/// wave's messages processed [`AT_ONCE`] at a time and committed together
/// ([`super::batch_commit`]); tier checks go one after the other.
pub async fn process_batch(
    services: &Services,
    consumer: Consumer,
    records: &[Record],
) -> Vec<String> {
    let waves = match consumer {
        Consumer::Earn => waves(records),
        Consumer::Tier => records.iter().map(|r| vec![r]).collect(),
    };
    let mut failed: HashSet<&str> = HashSet::new();
    let mut failed_groups: HashSet<&str> = HashSet::new();
    for wave in waves {
        let (skipped, ready): (Vec<&Record>, Vec<&Record>) = wave.into_iter().partition(|r| {
            r.group
                .as_deref()
                .is_some_and(|g| failed_groups.contains(g))
        });
        failed.extend(skipped.iter().map(|r| r.message_id.as_str()));
        let group = CommitGroup::new(ready.len(), AT_ONCE);
        let group = &group;
        let work = ready.iter().map(|record| async move {
            let seat = group.seat().await;
            let seat = (consumer == Consumer::Earn).then_some(seat);
            let outcome =
                process_seated(services, consumer, &record.message_id, &record.body, seat).await;
            (*record, outcome.is_err())
        });
        let ((), outcomes) = tokio::join!(group.write(services), join_all(work));
        for (record, retried) in outcomes {
            if retried {
                failed.insert(&record.message_id);
                if let Some(group) = record.group.as_deref() {
                    failed_groups.insert(group);
                }
            }
        }
    }
    records
        .iter()
        .filter(|r| failed.contains(r.message_id.as_str()))
        .map(|r| r.message_id.clone())
        .collect()
}

/// The k-th message of each FIFO group in the k-th wave (a message of no group in the first),
/// in the batch's order within each wave.
fn waves(records: &[Record]) -> Vec<Vec<&Record>> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut waves: Vec<Vec<&Record>> = Vec::new();
    for record in records {
        let k = match record.group.as_deref() {
            Some(group) => {
                let count = seen.entry(group).or_default();
                *count += 1;
                *count - 1
            }
            None => 0,
        };
        if waves.len() <= k {
            waves.resize_with(k + 1, Vec::new);
        }
        waves[k].push(record);
    }
    waves
}

/// Processes one message: every line logged meanwhile carries its ids (a span), every message
/// it sends on carries its trace, and its outcome is logged once and counted (`Events`). Its
/// data is never logged: it may name a person.
pub async fn process_message(
    services: &Services,
    consumer: Consumer,
    message_id: &str,
    body: &str,
) -> Result<Processed, Retry> {
    process_seated(services, consumer, message_id, body, None).await
}

/// [`process_message`], an earn message's first commit going with its wave's given a seat.
async fn process_seated(
    services: &Services,
    consumer: Consumer,
    message_id: &str,
    body: &str,
    seat: Option<Seat<'_>>,
) -> Result<Processed, Retry> {
    let ids = serde_json::from_str::<Ids>(body).unwrap_or_default();
    let trace = ids
        .trace
        .as_deref()
        .and_then(crate::telemetry::trace::root_of);
    // At ERROR so that it is kept at any level: a warning raised to WARN or ERROR still says
    // which message it is about (the span is the ids, not a line of its own).
    let span = tracing::error_span!(
        "message",
        message_id = crate::telemetry::event_ref(message_id),
        event_id = crate::telemetry::event_ref(&ids.id),
        kind = ids.kind,
        program = ids.program,
        member = crate::telemetry::member_ref(&ids.member),
        trace = trace.as_deref().unwrap_or_default(),
    );
    let work = async {
        match consumer {
            Consumer::Earn => services.process_earn_seated(body, seat).await,
            Consumer::Tier => services.process_tier_check(body).await,
        }
    };
    let result =
        crate::telemetry::trace::scope(trace, tracing::Instrument::instrument(work, span.clone()))
            .await;
    let _entered = span.enter();
    let outcome = match &result {
        Ok(outcome) => outcome.name(),
        Err(_) => "retried",
    };
    // Messages on the queues were checked at the edge, so their program exists: the label
    // stays bounded by the programs. A tier check is counted as tier-recalc's, which it is in
    // the stack, also where one process consumes every queue: earn's count is of events.
    let mut labels = vec![("program", ids.program.as_str()), ("outcome", outcome)];
    if consumer == Consumer::Tier {
        labels.push((crate::telemetry::metrics::FUNCTION_LABEL, "tier-recalc"));
    }
    crate::telemetry::metrics::add(crate::telemetry::metrics::EVENTS, &labels, 1);
    match &result {
        Ok(Processed::Rejected(reason)) => {
            let reason = crate::telemetry::redact(reason);
            tracing::warn!(outcome, reason, "message rejected for good");
        }
        Ok(_) => tracing::info!(outcome, "message processed"),
        Err(retry) => {
            let error = crate::telemetry::redact(&retry.to_string());
            tracing::warn!(outcome, error, "message will be retried");
        }
    }
    result
}

/// Logs a notice (a message for the brand's integrations) by its ids, without its data.
pub fn log_notice(message_id: &str, body: &str) {
    let ids = serde_json::from_str::<Ids>(body).unwrap_or_default();
    notice_line(
        message_id,
        &ids.id,
        &ids.kind,
        &ids.program,
        &ids.member,
        ids.trace.as_deref(),
    );
}

/// Logs a notice that has not been queued: `loyalty serve` hands notices to its log as it
/// relays them, since nothing else consumes them locally. Named by its deduplication id.
pub fn log_notice_envelope(envelope: &crate::envelope::Envelope) {
    let e = envelope;
    notice_line(
        &e.dedup_id(),
        &e.id,
        &e.kind,
        &e.program,
        &e.member,
        e.trace.as_deref(),
    );
}

fn notice_line(
    message_id: &str,
    event_id: &str,
    kind: &str,
    program: &str,
    member: &str,
    trace: Option<&str>,
) {
    tracing::info!(
        message_id = crate::telemetry::event_ref(message_id),
        event_id = crate::telemetry::event_ref(event_id),
        kind,
        program,
        member = crate::telemetry::member_ref(member),
        trace = trace
            .and_then(crate::telemetry::trace::root_of)
            .unwrap_or_default(),
        "notice"
    );
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
