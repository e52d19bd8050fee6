//! The HTTP API (DESIGN §6), defined once: a Lambda runs these routers with `lambda_http`, and
//! `loyalty serve` mounts them all in one process.
//!
//! Every handler checks in the same order: authentication (401), authorisation (403), existence
//! (404), then the request itself (400). Bodies are read as bytes and parsed only after the
//! checks, so a malformed body never hides a missing token.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use serde_json::json;

pub mod auth;
#[cfg(feature = "aws")]
pub mod gateway;
pub mod problem;

use auth::{Principal, Verifier};
use problem::Problem;

use crate::ids::{
    CampaignId, CouponCode, IdError, IdKind, IdempotencyKey, MemberId, ProgramId, RedemptionId,
};

use crate::services::programs::ProgramFormat;
use crate::services::{Expected, Services};
use crate::webhooks::Secrets;

/// What every handler needs: the services and how to verify callers.
#[derive(Clone)]
pub struct AppState {
    pub services: Arc<Services>,
    pub verifier: Verifier,
    /// Webhook secrets per program and platform.
    pub secrets: Arc<dyn Secrets>,
}

/// Largest request body accepted (a program file or an event), in bytes.
pub const MAX_BODY: usize = 256 * 1024;

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
            "/v1/programs/{program}/members/{member}/export",
            get(member_export),
        )
        .route(
            "/v1/programs/{program}/reports/liability",
            get(liability_report),
        )
        .route("/v1/programs/{program}/reports/kpis", get(kpi_report))
        .route(
            "/v1/programs/{program}/reports/donations",
            get(donations_report),
        )
        .route("/v1/programs/{program}/audits", post(request_audit))
        .route("/v1/programs/{program}/audits/{id}", get(audit_run))
        .route(
            "/v1/programs/{program}/rejected-events",
            get(rejected_events),
        )
        .route(
            "/v1/programs/{program}/rejected-events/{id}",
            get(rejected_event),
        )
        .route(
            "/v1/programs/{program}/rejected-events/{id}/replay",
            post(replay_rejected),
        )
        .route(
            "/v1/programs/{program}/campaigns/{campaign}",
            get(get_campaign).put(put_campaign),
        )
        .route("/v1/programs/{program}/campaigns", get(list_campaigns))
        .route("/v1/programs/{program}/versions", get(program_versions))
        .route(
            "/v1/programs/{program}/versions/{version}",
            get(program_version),
        )
        .route("/v1/programs/{program}/jobs", get(last_job_runs))
        .route("/v1/programs", get(list_programs))
        .route("/v1/dead-letters", get(dead_letter_depths))
        .route(
            "/v1/dead-letters/{queue}/redrive",
            post(redrive_dead_letters),
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
            "/v1/programs/{program}/members/{member}/merge",
            post(merge_members),
        )
        .route(
            "/v1/programs/{program}/members/{member}/aliases",
            post(link_identity),
        )
        .route(
            "/v1/programs/{program}/members/{member}",
            delete(erase_member),
        )
        .route("/v1/programs/{program}/reviews", get(held_events))
        .route(
            "/v1/programs/{program}/reviews/{id}/release",
            post(release_held),
        )
        .route(
            "/v1/programs/{program}/reviews/{id}/cancel",
            post(cancel_held),
        )
        .route("/v1/programs/{program}/approvals", get(pending_adjustments))
        .route(
            "/v1/programs/{program}/approvals/{id}/approve",
            post(approve_adjustment),
        )
        .route(
            "/v1/programs/{program}/approvals/{id}/decline",
            post(decline_adjustment),
        )
        .route(
            "/v1/programs/{program}/members/{member}/suspend",
            post(suspend_member),
        )
        .route(
            "/v1/programs/{program}/members/{member}/resume",
            post(resume_member),
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

/// Every route, with problem+json for unknown paths and framework errors.
pub fn router(state: AppState) -> Router {
    edge(routes(state))
}

/// Every route, before [`edge`]: a server that mounts routes of its own beside them (the
/// console, `/metrics`) merges them first and applies [`edge`] to the whole, since a layer
/// wraps only the routes that exist when it is applied.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .merge(webhook_router(state.clone()))
        .merge(admin_router(state.clone()))
        .merge(member_router(state.clone()))
        .merge(redemption_router(state.clone()))
        .merge(campaign_router(state))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
}

/// What every served router gets, locally and in each Lambda function: unknown routes are 404,
/// bodies over [`MAX_BODY`] are 413 before anything is read, and every error the framework
/// gives (405, 413, undecodable paths, bad queries) is `application/problem+json`.
pub fn edge(router: Router) -> Router {
    router
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "not-found", "no such route") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(problem::framework_errors))
        .layer(axum::middleware::from_fn(problem::refuse_large_bodies))
}

async fn webhook(
    State(state): State<AppState>,
    Path((platform, program)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let program = ProgramId::parse(&program)?;
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
    let program = admin_of(&principal, &program)?;
    let expected = expected_version(&headers)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| Problem::bad_request("malformed-program", "the body is not UTF-8 text"))?;
    let saved = state
        .services
        .put_program_expecting(&program, text, format_of(&headers)?, expected)
        .await?;
    let status = if saved.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let version = saved.program.version;
    let body = json!({"program": saved.program.id, "version": version});
    Ok((status, [etag(version)], Json(body)).into_response())
}

async fn get_program(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let program = state.services.program(&program).await?;
    let body = json!({"program": program.id, "version": program.version, "file": program.file});
    Ok(([etag(program.version)], Json(body)).into_response())
}

/// A saved version as an entity tag: `"3"` for version 3.
fn etag(version: u32) -> (header::HeaderName, String) {
    (header::ETAG, format!("\"{version}\""))
}

/// What a PUT expects of the version it replaces: `If-Match: "3"` (an ETag this API gave; a
/// list of entity tags matches any of them) or `If-Match: *` (any saved version),
/// `If-None-Match: *` (nothing saved yet), or neither (the last writer wins, as for scripts).
/// Tags this API never gives and weak ones (`W/"3"`) never match a write (RFC 9110 compares
/// strongly): 412. A header that is not a list of entity tags is refused, never ignored:
/// ignoring it would let an editor overwrite what it never read.
fn expected_version(headers: &HeaderMap) -> Result<Expected, Problem> {
    let malformed = |name: &str| {
        Problem::bad_request(
            "malformed-precondition",
            format!("{name} takes * or entity tags, as this API gives them (\"3\")"),
        )
    };
    // A list may come as several header lines: they are one list.
    let value = |name: header::HeaderName| -> Result<Option<String>, Problem> {
        let mut lines = Vec::new();
        for line in headers.get_all(&name) {
            let text = line.to_str().map_err(|_| malformed(name.as_str()))?;
            lines.push(text.trim().to_string());
        }
        Ok((!lines.is_empty()).then(|| lines.join(", ")))
    };
    match (value(header::IF_MATCH)?, value(header::IF_NONE_MATCH)?) {
        (None, None) => Ok(Expected::Any),
        (Some(m), None) if m == "*" => Ok(Expected::Exists),
        (Some(m), None) => entity_tags(&m)
            .map(Expected::OneOf)
            .ok_or_else(|| malformed("If-Match")),
        (None, Some(n)) if n == "*" => Ok(Expected::Absent),
        (None, Some(_)) => Err(malformed("If-None-Match")),
        (Some(_), Some(_)) => Err(Problem::bad_request(
            "malformed-precondition",
            "send If-Match or If-None-Match, not both",
        )),
    }
}

/// The versions a list of entity tags names (`"3", W/"2", "x"` names 3), or `None` when it is
/// not a list of at most [`MAX_TAGS`] entity tags.
fn entity_tags(list: &str) -> Option<Vec<u32>> {
    const MAX_TAGS: usize = 16;
    let tags: Vec<&str> = list.split(',').map(str::trim).collect();
    if tags.len() > MAX_TAGS {
        return None;
    }
    let mut versions = Vec::new();
    for tag in tags {
        let (weak, tag) = match tag.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, tag),
        };
        let opaque = tag.strip_prefix('"')?.strip_suffix('"')?;
        // etagc: visible ASCII but the double quote (RFC 9110 §8.8.3).
        if opaque
            .bytes()
            .any(|b| b == b'"' || !(0x21..=0x7e).contains(&b))
        {
            return None;
        }
        // Compared strongly: "03" is not the tag "3" this API gives.
        let ours = opaque
            .parse::<u32>()
            .ok()
            .filter(|v| v.to_string() == opaque);
        if let (false, Some(version)) = (weak, ours) {
            versions.push(version);
        }
    }
    Some(versions)
}

/// TOML is the canonical format (no Content-Type, `application/toml` or `text/plain`); JSON is
/// accepted when the request says so. Media types are compared without regard to case.
fn format_of(headers: &HeaderMap) -> Result<ProgramFormat, Problem> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(ProgramFormat::Toml);
    };
    let text = value.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = text.split(';').next().unwrap_or("").trim();
    match essence {
        "application/json" => Ok(ProgramFormat::Json),
        "application/toml" | "text/toml" | "text/plain" | "" => Ok(ProgramFormat::Toml),
        other => Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!("a program file is application/toml or application/json, not {other:?}"),
        )),
    }
}

async fn submit_event(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let accepted = state.services.submit_event(&program, &body).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

/// An admin route: the caller is an admin of the program, whose id is well-formed.
fn admin_of(principal: &Principal, program: &str) -> Result<ProgramId, Problem> {
    principal.require_admin(program)?;
    Ok(ProgramId::parse(program)?)
}

/// A member route: the caller holds a member token, and the member is the one it speaks for:
/// the `app` alias of its subject, or the subject itself.
async fn member_of(
    state: &AppState,
    program: &str,
    principal: &Principal,
) -> Result<(ProgramId, MemberId), Problem> {
    caller(state, program, principal, false).await
}

/// [`member_of`] for the routes that go on to the program's campaigns: read with the program.
async fn member_with_campaigns(
    state: &AppState,
    program: &str,
    principal: &Principal,
) -> Result<(ProgramId, MemberId), Problem> {
    caller(state, program, principal, true).await
}

async fn caller(
    state: &AppState,
    program: &str,
    principal: &Principal,
    campaigns: bool,
) -> Result<(ProgramId, MemberId), Problem> {
    principal.require_member(program)?;
    // A subject that no member could have is a token that names no one: refused as any token
    // that is not valid here, before anything is read under it.
    if !crate::ids::IdKind::Member.accepts(&principal.subject) {
        return Err(Problem::unauthorized(
            "the token's subject is not a member id",
        ));
    }
    let program = ProgramId::parse(program)?;
    let services = &state.services;
    let known = async {
        match campaigns {
            true => services.program_with_campaigns(&program).await,
            false => services.program(&program).await,
        }
    };
    // Read together: on a cold start the program is not cached yet, and this saves a wait. An
    // unknown program answers first, whatever the link's read did.
    let (known, alias) = futures_util::future::join(
        known,
        services
            .store
            .resolve_alias(&program, crate::ports::APP_LINK, &principal.subject),
    )
    .await;
    known?;
    let member = alias
        .map_err(crate::services::ServiceError::from)?
        .unwrap_or_else(|| principal.subject.clone());
    Ok((program, MemberId::parse(&member)?))
}

async fn me(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
) -> Result<Response, Problem> {
    let (program, member) = member_of(&state, &program, &principal).await?;
    Ok(Json(state.services.member_view(&program, &member).await?).into_response())
}

async fn put_campaign(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, campaign)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let campaign = CampaignId::parse(&campaign)?;
    let expected = expected_version(&headers)?;
    let (created, saved) = state
        .services
        .put_campaign_expecting(&program, &campaign, &body, expected)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, version_tag(&saved), Json(saved)).into_response())
}

/// The ETag of a body that names its `version`, if it does.
fn version_tag(
    body: &serde_json::Value,
) -> axum::response::AppendHeaders<Vec<(header::HeaderName, String)>> {
    let version = body["version"].as_u64().and_then(|v| u32::try_from(v).ok());
    axum::response::AppendHeaders(version.map(etag).into_iter().collect())
}

async fn get_campaign(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, campaign)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let campaign = CampaignId::parse(&campaign)?;
    let body = state.services.campaign(&program, &campaign).await?;
    Ok((version_tag(&body), Json(body)).into_response())
}

async fn list_campaigns(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    Ok(Json(state.services.campaigns_overview(&program).await?).into_response())
}

async fn list_programs(
    principal: Principal,
    State(state): State<AppState>,
) -> Result<Response, Problem> {
    let only = principal.program.clone();
    principal.require_admin(only.as_deref().unwrap_or(""))?;
    Ok(Json(state.services.programs_overview(only.as_deref()).await?).into_response())
}

async fn dead_letter_depths(
    principal: Principal,
    State(state): State<AppState>,
) -> Result<Response, Problem> {
    principal.require_admin_everywhere()?;
    Ok(Json(state.services.dead_letter_depths().await?).into_response())
}

async fn redrive_dead_letters(
    principal: Principal,
    State(state): State<AppState>,
    Path(queue): Path<String>,
) -> Result<Response, Problem> {
    principal.require_admin_everywhere()?;
    Ok(Json(
        state
            .services
            .redrive_dead_letters(&queue, &principal.subject)
            .await?,
    )
    .into_response())
}

async fn program_versions(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    Ok(Json(state.services.program_versions(&program).await?).into_response())
}

async fn program_version(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, version)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let version = version
        .parse::<u32>()
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| {
            Problem::bad_request(
                "invalid-version",
                format!("a version is a whole number from 1, not {version:?}"),
            )
        })?;
    Ok(Json(state.services.program_version(&program, version).await?).into_response())
}

async fn last_job_runs(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    Ok(Json(state.services.last_job_runs(&program).await?).into_response())
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
    let program = admin_of(&principal, &program)?;
    let campaign = CampaignId::parse(&campaign)?;
    let format = format_param(query.format.as_deref(), &["json", "svg"])?;
    let report = state.services.campaign_report(&program, &campaign).await?;
    Ok(match format {
        "svg" => svg_response(crate::report::svg(&report)),
        _ => Json(report).into_response(),
    })
}

#[derive(Debug, serde::Deserialize)]
struct LiabilityQuery {
    #[serde(default)]
    as_of: Option<String>,
    /// `csv` for the movement table, `svg` for the chart, JSON otherwise.
    #[serde(default)]
    format: Option<String>,
}

/// A `YYYY-MM-DD` query parameter.
fn date_param(name: &str, value: Option<&str>) -> Result<Option<chrono::NaiveDate>, Problem> {
    value
        .map(|text| {
            crate::domain::calendar::parse_date(text).ok_or_else(|| {
                crate::services::ServiceError::invalid(
                    "invalid-date",
                    format!("{name} {text:?} is not a date (YYYY-MM-DD)"),
                )
                .into()
            })
        })
        .transpose()
}

async fn liability_report(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
    Query(query): Query<LiabilityQuery>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let as_of = date_param("as_of", query.as_of.as_deref())?;
    let format = format_param(query.format.as_deref(), &["json", "csv", "svg"])?;
    let report = state.services.liability(&program, as_of).await?;
    Ok(match format {
        "csv" => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            crate::liability::csv(&report),
        )
            .into_response(),
        "svg" => svg_response(crate::liability::svg(&report)),
        _ => Json(report).into_response(),
    })
}

#[derive(Debug, serde::Deserialize)]
struct DonationsQuery {
    #[serde(default)]
    month: Option<String>,
}

async fn donations_report(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
    Query(query): Query<DonationsQuery>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let month = match query.month.as_deref() {
        None => None,
        Some(text) => Some(
            text.parse::<crate::domain::calendar::YearMonth>()
                .map_err(|e| Problem::bad_request("invalid-month", e))?,
        ),
    };
    Ok(Json(state.services.donations(&program, month).await?).into_response())
}

/// A report's `format` parameter: one of `allowed` (the first is the default).
fn format_param<'a>(value: Option<&'a str>, allowed: &[&'a str]) -> Result<&'a str, Problem> {
    let format = value.unwrap_or(allowed[0]);
    if allowed.contains(&format) {
        return Ok(format);
    }
    Err(crate::services::ServiceError::invalid(
        "invalid-format",
        format!("format {format:?} is not one of {}", allowed.join(", ")),
    )
    .into())
}

fn svg_response(svg: String) -> Response {
    ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response()
}

#[derive(Debug, serde::Deserialize)]
struct KpiQuery {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    /// `svg` for the card, JSON otherwise.
    #[serde(default)]
    format: Option<String>,
}

async fn kpi_report(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
    Query(query): Query<KpiQuery>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let from = date_param("from", query.from.as_deref())?;
    let to = date_param("to", query.to.as_deref())?;
    let format = format_param(query.format.as_deref(), &["json", "svg"])?;
    let kpis = state.services.kpis(&program, from, to).await?;
    Ok(match format {
        "svg" => svg_response(crate::kpis::svg(&kpis)),
        _ => Json(kpis).into_response(),
    })
}

/// Starts an audit of the program as a job; its report is read at the returned location.
async fn request_audit(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let run = state
        .services
        .request_audit(&program, &principal.subject)
        .await?;
    let location = format!("/v1/programs/{program}/audits/{}", run.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(run),
    )
        .into_response())
}

async fn audit_run(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    // Audit ids are this service's own (32 hexadecimal digits); anything else is none of them.
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(crate::services::ServiceError::NotFound {
            problem: "unknown-audit",
            detail: format!("program {program} has no audit {id:?}"),
        }
        .into());
    }
    Ok(Json(state.services.audit_run(&program, &id).await?).into_response())
}

async fn rejected_events(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let limit = limit_param(&query)?;
    let list = state
        .services
        .rejected_events(&program, limit, query.cursor.as_deref())
        .await?;
    Ok(Json(list).into_response())
}

async fn rejected_event(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    IdKind::Event.check(&id)?;
    Ok(Json(state.services.rejected_event(&program, &id).await?).into_response())
}

async fn replay_rejected(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    IdKind::Event.check(&id)?;
    let replayed = state
        .services
        .replay_rejected(&program, &id, &principal.subject)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(replayed)).into_response())
}

async fn my_rewards(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
) -> Result<Response, Problem> {
    let (program, member) = member_of(&state, &program, &principal).await?;
    let rewards = state.services.catalog(&program, &member).await?;
    Ok(Json(json!({ "rewards": rewards })).into_response())
}

async fn my_campaigns(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
) -> Result<Response, Problem> {
    let (program, member) = member_with_campaigns(&state, &program, &principal).await?;
    let shown = state
        .services
        .my_campaigns(&program, &member, principal.issued_at)
        .await?;
    Ok(Json(shown).into_response())
}

async fn my_profile(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let (program, member) = member_of(&state, &program, &principal).await?;
    let profile = state
        .services
        .update_profile(&program, &member, &body, principal.issued_at)
        .await?;
    Ok(Json(profile).into_response())
}

/// The `Idempotency-Key` header, if given; a value that breaks the rule is refused, never
/// ignored (ignoring it would let a retry act twice).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, Problem> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    // Two keys: a proxy keeping the other one would make a retry another request.
    if values.next().is_some() {
        return Err(Problem::bad_request(
            IdKind::IdempotencyKey.problem(),
            "Idempotency-Key is given more than once; send one key",
        ));
    }
    let text = value.to_str().map_err(|_| IdError {
        kind: IdKind::IdempotencyKey,
        value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
    })?;
    Ok(Some(IdempotencyKey::parse(text)?))
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
    let (program, member) = member_with_campaigns(&state, &program, &principal).await?;
    let key = idempotency_key(&headers)?;
    let done = state
        .services
        .redeem(&program, &member, &principal.subject, key.as_deref(), &body)
        .await?;
    Ok(answer(done))
}

async fn my_redemption(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    // Read under the caller's own member: another member's id is simply not found.
    let (program, member) = member_of(&state, &program, &principal).await?;
    let id = RedemptionId::parse(&id)?;
    Ok(Json(state.services.redemption(&program, &member, &id).await?).into_response())
}

async fn check_coupon(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, code)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let code = CouponCode::parse(&code)?;
    Ok(Json(state.services.check_coupon(&program, &code).await?).into_response())
}

async fn consume_coupon(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, code)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let code = CouponCode::parse(&code)?;
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
    let program = admin_of(&principal, &program)?;
    let member = member_in_path(&state, &program, &member).await?;
    let id = RedemptionId::parse(&id)?;
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
    let program = admin_of(&principal, &program)?;
    let member = member_in_path(&state, &program, &member).await?;
    let key = idempotency_key(&headers)?;
    let done = state
        .services
        .adjust(&program, &member, &principal.subject, key.as_deref(), &body)
        .await?;
    Ok(answer(done))
}

async fn merge_members(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, member)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let survivor = member_in_path(&state, &program, &member).await?;
    let report = state
        .services
        .merge_request(&program, &survivor, &principal.subject, &body)
        .await?;
    Ok(Json(report).into_response())
}

/// 201 when the identity is linked now, 200 when it led to the member already.
async fn link_identity(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, member)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let member = member_in_path(&state, &program, &member).await?;
    let report = state
        .services
        .link_request(&program, &member, &principal.subject, &body)
        .await?;
    let status = match report.linked {
        true => StatusCode::CREATED,
        false => StatusCode::OK,
    };
    Ok((status, Json(report)).into_response())
}

/// `DELETE .../members/{m}?reason=`: the reason is required, as for every operator action.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EraseQuery {
    #[serde(default)]
    reason: String,
}

async fn erase_member(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, member)): Path<(String, String)>,
    Query(query): Query<EraseQuery>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let member = member_in_path(&state, &program, &member).await?;
    let report = state
        .services
        .erase_member(&program, &member, &query.reason, &principal.subject)
        .await?;
    Ok(Json(report).into_response())
}

async fn held_events(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let held = state.services.held_events(&program).await?;
    Ok(Json(json!({ "events": held })).into_response())
}

async fn release_held(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    IdKind::Event.check(&id)?;
    let held = state
        .services
        .release_held(&program, &id, &principal.subject)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(held)).into_response())
}

async fn cancel_held(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    IdKind::Event.check(&id)?;
    let held = state
        .services
        .cancel_held(&program, &id, &principal.subject, &body)
        .await?;
    Ok(Json(held).into_response())
}

async fn pending_adjustments(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let pending = state.services.pending_adjustments(&program).await?;
    Ok(Json(json!({ "adjustments": pending })).into_response())
}

async fn approve_adjustment(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    IdKind::Event.check(&id)?;
    let done = state
        .services
        .approve_adjustment(&program, &id, &principal.subject)
        .await?;
    Ok(answer(done))
}

async fn decline_adjustment(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    IdKind::Event.check(&id)?;
    let pending = state
        .services
        .decline_adjustment(&program, &id, &principal.subject, &body)
        .await?;
    Ok(Json(pending).into_response())
}

async fn suspend_member(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, member)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let member = member_in_path(&state, &program, &member).await?;
    let report = state
        .services
        .suspend_request(&program, &member, &principal.subject, &body)
        .await?;
    Ok(Json(report).into_response())
}

async fn resume_member(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, member)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let member = member_in_path(&state, &program, &member).await?;
    let report = state
        .services
        .resume_request(&program, &member, &principal.subject, &body)
        .await?;
    Ok(Json(report).into_response())
}

async fn capture_hold(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let id = RedemptionId::parse(&id)?;
    let done = state
        .services
        .capture_hold(&program, &id, &body, &principal.subject)
        .await?;
    Ok(Json(done).into_response())
}

async fn void_hold(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let id = RedemptionId::parse(&id)?;
    let done = state
        .services
        .void_hold(&program, &id, &principal.subject)
        .await?;
    Ok(Json(done).into_response())
}

async fn my_ledger(
    principal: Principal,
    State(state): State<AppState>,
    Path(program): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Response, Problem> {
    let (program, member) = member_of(&state, &program, &principal).await?;
    let limit = limit_param(&query)?;
    let page = state
        .services
        .ledger(&program, &member, limit, query.cursor.as_deref())
        .await?;
    Ok(Json(page).into_response())
}

async fn admin_member_view(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, member)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let member = member_in_path(&state, &program, &member).await?;
    Ok(Json(state.services.known_member_view(&program, &member).await?).into_response())
}

/// Everything held about a member, streamed as one JSON document.
async fn member_export(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, member)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let member = member_in_path(&state, &program, &member).await?;
    let chunks = state.services.export_member(&program, &member).await?;
    let disposition = format!("attachment; filename=\"{program}-member-export.json\"");
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        axum::body::Body::from_stream(chunks),
    )
        .into_response())
}

async fn admin_member_ledger(
    principal: Principal,
    State(state): State<AppState>,
    Path((program, member)): Path<(String, String)>,
    Query(query): Query<PageQuery>,
) -> Result<Response, Problem> {
    let program = admin_of(&principal, &program)?;
    let member = member_in_path(&state, &program, &member).await?;
    let limit = limit_param(&query)?;
    let page = state
        .services
        .known_ledger(&program, &member, limit, query.cursor.as_deref())
        .await?;
    Ok(Json(page).into_response())
}

/// The member a path names: its id, or an identity linked to it (`email:ann@example.com`,
/// `phone:+821012345678`, `shopify:7001234`), so support staff can use what they know. An
/// identity linked to no one stands for itself, as it does in events.
async fn member_in_path(state: &AppState, program: &str, raw: &str) -> Result<MemberId, Problem> {
    let named = MemberId::parse(raw)?;
    let canonical = state.services.canonical_member(program, &named).await?;
    Ok(MemberId::parse(&canonical)?)
}

/// A page of the ledger: a parameter given twice is refused (400), not chosen among.
#[derive(Debug, serde::Deserialize)]
struct PageQuery {
    #[serde(default)]
    limit: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
}

fn limit_param(query: &PageQuery) -> Result<Option<usize>, Problem> {
    match &query.limit {
        Some(text) => Ok(Some(text.parse::<usize>().map_err(|_| {
            Problem::bad_request("invalid-limit", format!("limit {text:?} is not a number"))
        })?)),
        None => Ok(None),
    }
}
