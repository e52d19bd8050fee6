//! Errors as `application/problem+json` (RFC 9457): a stable `type` whose last segment names the
//! problem, a human `detail`, and the status.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::services::ServiceError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: StatusCode,
    /// The last segment of the type URI, e.g. `insufficient-points`.
    pub slug: &'static str,
    pub detail: String,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            slug,
            detail: detail.into(),
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
        let body = json!({
            "type": format!("/problems/{}", self.slug),
            "title": title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        // Every 503 is worth retrying, and says when.
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
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

impl From<ServiceError> for Problem {
    fn from(e: ServiceError) -> Problem {
        match e {
            ServiceError::NotFound { problem, detail } => {
                Problem::new(StatusCode::NOT_FOUND, problem, detail)
            }
            ServiceError::Invalid { problem, detail } => {
                Problem::new(StatusCode::BAD_REQUEST, problem, detail)
            }
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
            ServiceError::Unavailable(e) => {
                tracing::warn!(error = %e, "store unavailable");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the service is busy; try again shortly",
                )
            }
            ServiceError::Busy(message) => {
                tracing::warn!(error = %message, "busy");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the service is busy; try again shortly",
                )
            }
            ServiceError::Internal(message) => {
                tracing::error!(error = %message, "internal error");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "something went wrong on our side",
                )
            }
        }
    }
}
