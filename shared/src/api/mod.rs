//! The HTTP API (DESIGN §6), defined once: a Lambda runs these routers with `lambda_http`, and
//! `loyalty serve` mounts them all in one process.
//!
//! Every handler checks in the same order: authentication (401), authorisation (403), existence
//! (404), then the request itself (400). Bodies are read as bytes and parsed only after the
//! checks, so a malformed body never hides a missing token.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde_json::json;

pub mod auth;
#[cfg(feature = "aws")]
pub mod gateway;
pub mod problem;

use auth::{Principal, Verifier};
use problem::Problem;

use crate::services::programs::ProgramFormat;
use crate::services::Services;
use crate::webhooks::Secrets;

/// What every handler needs: the services and how to verify callers.
#[derive(Clone)]
pub struct AppState {
    pub services: Arc<Services>,
    pub verifier: Verifier,
    /// Webhook secrets per program and platform.
    pub secrets: Arc<dyn Secrets>,
}

/// Largest request body accepted (a program file or an event).
const MAX_BODY: usize = 256 * 1024;

/// Admin routes for programs and events.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/v1/programs/{program}", get(get_program).put(put_program))
        .route("/v1/programs/{program}/events", post(submit_event))
        .route(
            "/v1/programs/{program}/members/{member}",
            get(admin_member_view),
        )
        .route(
            "/v1/programs/{program}/members/{member}/ledger",
            get(admin_member_ledger),
        )
        .route(
            "/v1/programs/{program}/campaigns/{campaign}",
            get(get_campaign).put(put_campaign),
        )
        .with_state(state)
}

/// The member's own routes (the mobile app).
pub fn member_router(state: AppState) -> Router {
    Router::new()
        .route("/v1/programs/{program}/me", get(me))
        .route("/v1/programs/{program}/me/ledger", get(my_ledger))
        .route("/v1/programs/{program}/me/rewards", get(my_rewards))
        .route("/v1/programs/{program}/me/profile", patch(my_profile))
        .with_state(state)
}

/// Campaigns: the member's running campaigns (recording the exposure) and the admins' results
/// report (the campaign-assign function).
pub fn campaign_router(state: AppState) -> Router {
    Router::new()
        .route("/v1/programs/{program}/me/campaigns", get(my_campaigns))
        .route(
            "/v1/programs/{program}/campaigns/{campaign}/report",
            get(campaign_report),
        )
        .with_state(state)
}

/// Spending points: the member's redemptions, the shop's coupon checks, operators' reversals
/// and adjustments (the redeem function).
pub fn redemption_router(state: AppState) -> Router {
    Router::new()
        .route("/v1/programs/{program}/me/redemptions", post(redeem))
        .route(
            "/v1/programs/{program}/me/redemptions/{id}",
            get(my_redemption),
        )
        .route("/v1/programs/{program}/coupons/{code}", get(check_coupon))
        .route(
            "/v1/programs/{program}/coupons/{code}/consume",
            post(consume_coupon),
        )
        .route(
            "/v1/programs/{program}/members/{member}/redemptions/{id}/reverse",
            post(reverse_redemption),
        )
        .route(
            "/v1/programs/{program}/members/{member}/adjustments",
            post(adjust),
        )
        .route(
            "/v1/programs/{program}/redemptions/{id}/capture",
            post(capture_hold),
        )
        .route(
            "/v1/programs/{program}/redemptions/{id}/void",
            post(void_hold),
        )
        .with_state(state)
}

/// Webhooks from shop platforms: authenticated by the platform's signature only.
pub fn webhook_router(state: AppState) -> Router {
    Router::new()
        .route("/webhooks/{platform}/{program}", post(webhook))
        .with_state(state)
}

/// Every route, as `loyalty serve` mounts them, with problem+json for unknown paths.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(webhook_router(state.clone()))
        .merge(admin_router(state.clone()))
        .merge(member_router(state.clone()))
        .merge(redemption_router(state.clone()))
        .merge(campaign_router(state))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "not-found", "no such route") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

async fn webhook(
    State(state): State<AppState>,
    Path((platform, program)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let ingested = state
        .services
        .ingest_webhook(state.secrets.as_ref(), &platform, &program, &headers, &body)
        .await?;
    Ok(Json(ingested).into_response())
}

async fn put_program(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    principal.require_admin(&program)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| Problem::bad_request("malformed-program", "the body is not UTF-8 text"))?;
    let saved = state
        .services
        .put_program(&program, text, format_of(&headers))
        .await?;
    let status = if saved.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let body = json!({"program": saved.program.id, "version": saved.program.version});
    Ok((status, Json(body)).into_response())
}

async fn get_program(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
) -> Result<Response, Problem> {
    principal.require_admin(&program)?;
    let program = state.services.program(&program).await?;
    Ok(
        Json(json!({"program": program.id, "version": program.version, "file": program.file}))
            .into_response(),
    )
}

/// TOML is the canonical format; JSON is accepted when the request says so.
fn format_of(headers: &HeaderMap) -> ProgramFormat {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("application/json") {
        ProgramFormat::Json
    } else {
        ProgramFormat::Toml
    }
}

async fn submit_event(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    principal.require_admin(&program)?;
    let accepted = state.services.submit_event(&program, &body).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

/// The member a token speaks for: the `app` alias of its subject, or the subject itself.
async fn member_of(
    state: &AppState,
    program: &str,
    principal: &Principal,
) -> Result<String, Problem> {
    let services = &state.services;
    services.program(program).await?;
    Ok(services
        .store
        .resolve_alias(program, "app", &principal.subject)
        .await
        .map_err(crate::services::ServiceError::from)?
        .unwrap_or_else(|| principal.subject.clone()))
}

async fn me(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
) -> Result<Response, Problem> {
    let member = member_of(&state, &program, &principal).await?;
    Ok(Json(state.services.member_view(&program, &member).await?).into_response())
}

async fn put_campaign(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, campaign)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    principal.require_admin(&program)?;
    let (created, saved) = state
        .services
        .put_campaign(&program, &campaign, &body)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(saved)).into_response())
}

async fn get_campaign(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, campaign)): Path<(String, String)>,
) -> Result<Response, Problem> {
    principal.require_admin(&program)?;
    Ok(Json(state.services.campaign(&program, &campaign).await?).into_response())
}

#[derive(Debug, serde::Deserialize)]
struct ReportQuery {
    /// `svg` for the chart instead of the JSON report.
    #[serde(default)]
    format: Option<String>,
}

async fn campaign_report(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, campaign)): Path<(String, String)>,
    Query(query): Query<ReportQuery>,
) -> Result<Response, Problem> {
    principal.require_admin(&program)?;
    let report = state.services.campaign_report(&program, &campaign).await?;
    match query.format.as_deref() {
        None | Some("json") => Ok(Json(report).into_response()),
        Some("svg") => Ok((
            [(header::CONTENT_TYPE, "image/svg+xml")],
            crate::report::svg(&report),
        )
            .into_response()),
        Some(other) => Err(crate::services::ServiceError::invalid(
            "invalid-format",
            format!("format {other:?} is not json or svg"),
        )
        .into()),
    }
}

async fn my_rewards(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
) -> Result<Response, Problem> {
    let member = member_of(&state, &program, &principal).await?;
    let rewards = state.services.catalog(&program, &member).await?;
    Ok(Json(json!({ "rewards": rewards })).into_response())
}

async fn my_campaigns(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
) -> Result<Response, Problem> {
    let member = member_of(&state, &program, &principal).await?;
    Ok(Json(state.services.my_campaigns(&program, &member).await?).into_response())
}

async fn my_profile(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let member = member_of(&state, &program, &principal).await?;
    let profile = state
        .services
        .update_profile(&program, &member, &body)
        .await?;
    Ok(Json(profile).into_response())
}

fn idempotency_key(headers: &HeaderMap) -> Option<&str> {
    headers.get("idempotency-key").and_then(|v| v.to_str().ok())
}

fn answer(a: crate::services::redemptions::Answer) -> Response {
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK);
    (status, Json(a.body)).into_response()
}

async fn redeem(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let member = member_of(&state, &program, &principal).await?;
    let key = idempotency_key(&headers);
    let done = state
        .services
        .redeem(&program, &member, &principal.subject, key, &body)
        .await?;
    Ok(answer(done))
}

async fn my_redemption(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    // Read under the caller's own member: another member's id is simply not found.
    let member = member_of(&state, &program, &principal).await?;
    Ok(Json(state.services.redemption(&program, &member, &id).await?).into_response())
}

async fn check_coupon(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, code)): Path<(String, String)>,
) -> Result<Response, Problem> {
    principal.require_admin(&program)?;
    Ok(Json(state.services.check_coupon(&program, &code).await?).into_response())
}

async fn consume_coupon(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, code)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    principal.require_admin(&program)?;
    Ok(Json(
        state
            .services
            .consume_coupon(&program, &code, &body)
            .await?,
    )
    .into_response())
}

async fn reverse_redemption(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, member, id)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    principal.require_admin(&program)?;
    let done = state
        .services
        .reverse_redemption(&program, &member, &id, &principal.subject, &body)
        .await?;
    Ok(Json(done).into_response())
}

async fn adjust(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, member)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    principal.require_admin(&program)?;
    let key = idempotency_key(&headers);
    let done = state
        .services
        .adjust(&program, &member, &principal.subject, key, &body)
        .await?;
    Ok(answer(done))
}

async fn capture_hold(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    principal.require_admin(&program)?;
    let done = state
        .services
        .settle_hold(&program, &id, true, &principal.subject)
        .await?;
    Ok(Json(done).into_response())
}

async fn void_hold(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    principal.require_admin(&program)?;
    let done = state
        .services
        .settle_hold(&program, &id, false, &principal.subject)
        .await?;
    Ok(Json(done).into_response())
}

async fn my_ledger(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let member = member_of(&state, &program, &principal).await?;
    ledger(&state, &program, &member, &query).await
}

async fn admin_member_view(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, member)): Path<(String, String)>,
) -> Result<Response, Problem> {
    principal.require_admin(&program)?;
    Ok(Json(state.services.member_view(&program, &member).await?).into_response())
}

async fn admin_member_ledger(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, member)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    principal.require_admin(&program)?;
    ledger(&state, &program, &member, &query).await
}

async fn ledger(
    state: &AppState,
    program: &str,
    member: &str,
    query: &HashMap<String, String>,
) -> Result<Response, Problem> {
    let limit = match query.get("limit") {
        Some(text) => Some(text.parse::<usize>().map_err(|_| {
            Problem::bad_request("invalid-limit", format!("limit {text:?} is not a number"))
        })?),
        None => None,
    };
    let cursor = query.get("cursor").map(String::as_str);
    Ok(Json(
        state
            .services
            .ledger(program, member, limit, cursor)
            .await?,
    )
    .into_response())
}
