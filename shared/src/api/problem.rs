//! Errors as `application/problem+json` (RFC 9457): a stable `type` whose last segment names the
//! problem, a human `detail`, and the status.

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::program::FieldError;
use crate::ids::IdError;
use crate::ports::StoreError;
use crate::services::ServiceError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: StatusCode,
    /// The last segment of the type URI, e.g. `insufficient-points`.
    pub slug: &'static str,
    pub detail: String,
    /// Field by field, when a document was refused (an extension member, `errors`).
    pub errors: Vec<FieldError>,
    /// Seconds a 503 asks the caller to wait (`Retry-After`).
    pub retry_after: u32,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            slug,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: 1,
        }
    }

    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn bad_request(slug: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, slug, detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let mut body = json!({
            "type": format!("/problems/{}", self.slug),
            "title": title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if !self.errors.is_empty() {
            body["errors"] = json!(self
                .errors
                .iter()
                .map(|e| json!({"field": e.field, "message": e.message}))
                .collect::<Vec<_>>());
        }
        let mut response = (self.status, body.to_string()).into_response();
        response
            .extensions_mut()
            .insert(crate::telemetry::AnsweredProblem {
                slug: self.slug,
                detail: self.detail,
            });
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        // Every 503 is worth retrying, and says when.
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(self.retry_after),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Turns an error response the framework made (405, 413, an undecodable path, a bad query, a
/// malformed body) into a problem; the server's own problems pass unchanged.
pub async fn framework_errors(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let said = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let (slug, detail) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "method-not-allowed",
            match &allow {
                Some(allow) => format!(
                    "this route answers {}",
                    String::from_utf8_lossy(allow.as_bytes())
                ),
                None => "this route does not answer this method".to_string(),
            },
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload-too-large", too_large()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported-media-type", said),
        StatusCode::NOT_FOUND => ("not-found", "no such route".to_string()),
        _ if status.is_client_error() => ("bad-request", said),
        _ => ("internal", "something went wrong on our side".to_string()),
    };
    let mut problem = Problem::new(status, slug, detail).into_response();
    // The framework's own text may quote the body (a value it could not read): the log line
    // keeps the problem, not the text.
    if let Some(answered) = problem
        .extensions_mut()
        .get_mut::<crate::telemetry::AnsweredProblem>()
    {
        answered.detail.clear();
    }
    if let Some(allow) = allow {
        problem.headers_mut().insert(header::ALLOW, allow);
    }
    problem
}

/// What a 503 asks for while the store's disk refuses to write: freeing space or mending a
/// disk takes an operator minutes, and a second's wait would have every client retry in vain.
const DISK_FAULT_RETRY_AFTER: u32 = 30;

fn too_large() -> String {
    format!("a request body may have at most {} bytes", super::MAX_BODY)
}

/// Refuses a body whose declared length is over the limit before anything reads it, so even a
/// request without a token learns the limit (a body without a length is cut at the limit when
/// read).
pub async fn refuse_large_bodies(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > super::MAX_BODY as u64) {
        return Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            too_large(),
        )
        .into_response();
    }
    next.run(request).await
}

/// Refuses a path with a `%` that does not start an escape (`%ZZ`, a `%` at the end): the
/// router's decoding keeps such a `%` as it is, and `/members/%ZZ` was looked for as a member
/// named `%ZZ` rather than refused as the undecodable path it is.
pub async fn refuse_malformed_escapes(request: Request, next: Next) -> Response {
    let path = request.uri().path().as_bytes();
    let escape_at = |i: usize| {
        path.get(i + 1..i + 3)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    };
    let malformed = path
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'%' && !escape_at(i));
    if malformed {
        return Problem::bad_request(
            "bad-request",
            "the path has a '%' that is not followed by two hexadecimal digits",
        )
        .into_response();
    }
    next.run(request).await
}

impl From<IdError> for Problem {
    fn from(e: IdError) -> Problem {
        Problem::bad_request(e.kind.problem(), e.to_string())
    }
}

impl From<ServiceError> for Problem {
    fn from(e: ServiceError) -> Problem {
        match e {
            ServiceError::NotFound { problem, detail } => {
                Problem::new(StatusCode::NOT_FOUND, problem, detail)
            }
            ServiceError::Invalid { problem, detail } => {
                Problem::new(StatusCode::BAD_REQUEST, problem, detail)
            }
            ServiceError::InvalidFields {
                problem,
                detail,
                errors,
            } => Problem {
                errors,
                ..Problem::new(StatusCode::BAD_REQUEST, problem, detail)
            },
            ServiceError::Conflict { problem, detail } => {
                Problem::new(StatusCode::CONFLICT, problem, detail)
            }
            ServiceError::Unprocessable { problem, detail } => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, problem, detail)
            }
            ServiceError::Unauthorized { problem, detail } => {
                Problem::new(StatusCode::UNAUTHORIZED, problem, detail)
            }
            ServiceError::Forbidden { problem, detail } => {
                Problem::new(StatusCode::FORBIDDEN, problem, detail)
            }
            ServiceError::PreconditionFailed { problem, detail } => {
                Problem::new(StatusCode::PRECONDITION_FAILED, problem, detail)
            }
            ServiceError::Unavailable(e @ StoreError::DiskFault { .. }) => {
                tracing::warn!(error = %crate::telemetry::redact(&e.to_string()), "store disk fault");
                Problem {
                    retry_after: DISK_FAULT_RETRY_AFTER,
                    ..Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "the service cannot store anything now; try again later",
                    )
                }
            }
            ServiceError::Unavailable(e) => {
                tracing::warn!(error = %crate::telemetry::redact(&e.to_string()), "store unavailable");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the service is busy; try again shortly",
                )
            }
            ServiceError::Busy(message) => {
                tracing::warn!(error = %crate::telemetry::redact(&message), "busy");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the service is busy; try again shortly",
                )
            }
            ServiceError::Internal(message) => {
                tracing::error!(error = %crate::telemetry::redact(&message), "internal error");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "something went wrong on our side",
                )
            }
        }
    }
}
