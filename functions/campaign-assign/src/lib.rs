//! The campaign-assign function has two triggers: API Gateway (HTTP API v2) for the member's
//! running campaigns and the admins' results report, and an EventBridge schedule whose input is
//! `{"job": "campaign-tick"}`. One handler tells them apart by the event's shape.

use axum::body::to_bytes;
use axum::Router;
use loyalty_core::api::gateway::behind_gateway;
use loyalty_core::api::{campaign_router, AppState};
use loyalty_core::services::jobs::{failed_programs, Deadline, Job, Schedule};
use loyalty_core::services::Services;
use serde_json::{json, Map, Value};
use tower::ServiceExt;

/// Largest response body passed back to API Gateway.
const MAX_RESPONSE: usize = 6 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    #[error("not an API Gateway request nor a schedule: {0}")]
    Unrecognised(String),
    #[error("this function runs campaign-tick only, not {0:?}")]
    WrongJob(String),
    #[error("the job failed: {0}")]
    Job(String),
}

/// The routes this function serves.
pub fn app(state: AppState) -> Router {
    loyalty_core::telemetry::observe_http(behind_gateway(campaign_router(state)))
}

/// Handles one invocation: an HTTP request (answered as API Gateway expects) or the tick.
pub async fn handle(
    services: &Services,
    app: &Router,
    event: Value,
) -> Result<Value, InvocationError> {
    handle_with(services, app, event, None).await
}

/// [`handle`], with the invocation's deadline: a tick stops before it and the next goes on.
pub async fn handle_with(
    services: &Services,
    app: &Router,
    event: Value,
    deadline: Deadline,
) -> Result<Value, InvocationError> {
    if event.get("job").is_some() {
        let schedule: Schedule = serde_json::from_value(event)
            .map_err(|e| InvocationError::Unrecognised(e.to_string()))?;
        return tick(services, &schedule, deadline).await;
    }
    let request = lambda_http::request::from_str(&event.to_string())
        .map_err(|e| InvocationError::Unrecognised(e.to_string()))?;
    let response = match app.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let status = response.status().as_u16();
    let headers: Map<String, Value> = response
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), Value::from(v.to_str().ok()?))))
        .collect();
    let body = to_bytes(response.into_body(), MAX_RESPONSE)
        .await
        .map_err(|e| InvocationError::Unrecognised(e.to_string()))?;
    Ok(json!({
        "statusCode": status, "headers": headers, "isBase64Encoded": false,
        "body": String::from_utf8_lossy(&body),
    }))
}

async fn tick(
    services: &Services,
    schedule: &Schedule,
    deadline: Deadline,
) -> Result<Value, InvocationError> {
    if Job::parse(&schedule.job) != Some(Job::CampaignTick) {
        return Err(InvocationError::WrongJob(schedule.job.clone()));
    }
    let reports = services
        .run_job_everywhere(
            Job::CampaignTick,
            schedule.program.as_deref(),
            schedule.job_date(),
            deadline,
            &|_| {},
        )
        .await
        .map_err(|e| InvocationError::Job(e.to_string()))?;
    // A program that failed fails the invocation, after the others ran: the schedule retries.
    if let Some(failed) = failed_programs(&reports) {
        return Err(InvocationError::Job(failed));
    }
    serde_json::to_value(reports).map_err(|e| InvocationError::Job(e.to_string()))
}
