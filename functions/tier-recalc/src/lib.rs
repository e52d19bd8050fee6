//! The tier-recalc function has two triggers: the tier queue (SQS FIFO batches of
//! `tier.check`, answered with partial batch failures) and EventBridge schedules whose input is
//! `{"job": "<name>"}` (optionally with `"program"` and `"date"`). One of the jobs,
//! `reconcile-platforms`, reads the shops' order APIs with credentials from SSM.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use loyalty_core::services::batch::{handle_sqs_event, Consumer};
use loyalty_core::services::jobs::{failed_programs, Deadline, Job, JobReport};
use loyalty_core::services::reconcile::{PlatformKeys, RECONCILE_JOB};
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
    handle_until(services, event, None).await
}

/// As [`handle`], with a scheduled job stopping cleanly at `deadline` (the invocation's
/// remaining time, less a margin); the next run resumes where it stopped.
pub async fn handle_until(
    services: &Services,
    event: Value,
    deadline: Deadline,
) -> Result<Value, InvocationError> {
    handle_with(services, None, event, deadline).await
}

/// As [`handle_until`], with where the platforms' API credentials are (the reconciliation).
pub async fn handle_with(
    services: &Services,
    keys: Option<&dyn PlatformKeys>,
    event: Value,
    deadline: Deadline,
) -> Result<Value, InvocationError> {
    if event.get("Records").is_some() {
        let batch: SqsEvent = serde_json::from_value(event)
            .map_err(|e| InvocationError::Unrecognised(e.to_string()))?;
        // An audit asked for through the API runs in this batch: it stops at the deadline.
        let response = loyalty_core::services::audit::INVOCATION_DEADLINE
            .scope(deadline, handle_batch(services, batch))
            .await;
        return serde_json::to_value(response)
            .map_err(|e| InvocationError::Unrecognised(e.to_string()));
    }
    let schedule: Schedule =
        serde_json::from_value(event).map_err(|e| InvocationError::Unrecognised(e.to_string()))?;
    if schedule.job == RECONCILE_JOB {
        return reconcile(services, keys, &schedule).await;
    }
    let reports = run_schedule(services, &schedule, deadline).await?;
    serde_json::to_value(reports).map_err(|e| InvocationError::Job(e.to_string()))
}

/// Processes a batch of `tier.check` messages; the failed ones (and the rest of their member's
/// group) are reported for redelivery.
pub async fn handle_batch(services: &Services, event: SqsEvent) -> SqsBatchResponse {
    handle_sqs_event(services, Consumer::Tier, event).await
}

/// Runs a schedule's job for every program. A program that failed as a whole fails the
/// invocation (so that the schedule retries it and the error alarm fires) after every other
/// program has run; members that failed are named in the reports and retried by the next run.
pub async fn run_schedule(
    services: &Services,
    schedule: &Schedule,
    deadline: Deadline,
) -> Result<Vec<JobReport>, InvocationError> {
    let job = Job::parse(&schedule.job)
        .ok_or_else(|| InvocationError::UnknownJob(schedule.job.clone()))?;
    let reports = services
        .run_job_everywhere(
            job,
            schedule.program.as_deref(),
            schedule.job_date(),
            deadline,
            &|_| {},
        )
        .await
        .map_err(|e| InvocationError::Job(e.to_string()))?;
    match failed_programs(&reports) {
        None => Ok(reports),
        Some(failed) => Err(InvocationError::Job(failed)),
    }
}

/// Reconciles every program with the platforms it has API credentials for. A program that
/// failed fails the invocation, after the others ran.
async fn reconcile(
    services: &Services,
    keys: Option<&dyn PlatformKeys>,
    schedule: &Schedule,
) -> Result<Value, InvocationError> {
    let keys = keys.ok_or_else(|| {
        InvocationError::Job("no source of platform API credentials is configured".into())
    })?;
    let runs = services
        .reconcile_platforms(keys, schedule.program.as_deref())
        .await
        .map_err(|e| InvocationError::Job(e.to_string()))?;
    let failed: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            r.error
                .as_ref()
                .map(|e| format!("{}/{}: {e}", r.program, r.platform))
        })
        .collect();
    if !failed.is_empty() {
        return Err(InvocationError::Job(failed.join("; ")));
    }
    serde_json::to_value(runs).map_err(|e| InvocationError::Job(e.to_string()))
}
