//! The tier-recalc function has two triggers: the tier queue (SQS FIFO batches of
//! `tier.check`, answered with partial batch failures) and EventBridge schedules whose input is
//! `{"job": "<name>"}` (optionally with `"program"` and `"date"`).

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use loyalty_core::services::batch::{handle_sqs_event, Consumer};
use loyalty_core::services::jobs::{Job, JobReport};
use loyalty_core::services::Services;
use serde_json::Value;

pub use loyalty_core::services::jobs::Schedule;

#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    #[error("not an SQS batch nor a schedule: {0}")]
    Unrecognised(String),
    #[error("unknown job {0:?}")]
    UnknownJob(String),
    #[error("the job failed: {0}")]
    Job(String),
}

/// Handles one invocation; the answer is the batch response or the jobs' reports.
pub async fn handle(services: &Services, event: Value) -> Result<Value, InvocationError> {
    if event.get("Records").is_some() {
        let batch: SqsEvent = serde_json::from_value(event)
            .map_err(|e| InvocationError::Unrecognised(e.to_string()))?;
        let response = handle_batch(services, batch).await;
        return serde_json::to_value(response)
            .map_err(|e| InvocationError::Unrecognised(e.to_string()));
    }
    let schedule: Schedule =
        serde_json::from_value(event).map_err(|e| InvocationError::Unrecognised(e.to_string()))?;
    let reports = run_schedule(services, &schedule).await?;
    serde_json::to_value(reports).map_err(|e| InvocationError::Job(e.to_string()))
}

/// Processes a batch of `tier.check` messages; the failed ones (and the rest of their member's
/// group) are reported for redelivery.
pub async fn handle_batch(services: &Services, event: SqsEvent) -> SqsBatchResponse {
    handle_sqs_event(services, Consumer::Tier, event).await
}

pub async fn run_schedule(
    services: &Services,
    schedule: &Schedule,
) -> Result<Vec<JobReport>, InvocationError> {
    let job = Job::parse(&schedule.job)
        .ok_or_else(|| InvocationError::UnknownJob(schedule.job.clone()))?;
    services
        .run_job_everywhere(job, schedule.program.as_deref(), schedule.date, &|_| {})
        .await
        .map_err(|e| InvocationError::Job(e.to_string()))
}
