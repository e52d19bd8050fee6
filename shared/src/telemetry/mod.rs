//! Logs, set up the same way by every Lambda function and by `loyalty serve`.
//!
//! The level is INFO unless something says otherwise: `LOYALTY_LOG` (any filter directive, e.g.
//! `warn` or `loyalty_core=debug`), else `RUST_LOG`, else the level Lambda's logging
//! configuration passes in `AWS_LAMBDA_LOG_LEVEL` (the template sets it). Functions write JSON
//! lines without a time (CloudWatch stamps each line).

use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

pub mod metrics;
pub mod trace;

/// How a log line names a member: its id, unless the id is an identity that names a person (an
/// email, a phone number), which is replaced by a digest so that no log holds it.
pub fn member_ref(member: &str) -> String {
    let kind = member.split_once(':').map_or("", |(kind, _)| kind);
    let personal = member.contains('@') || ["phone", "tel", "pos", "mobile"].contains(&kind);
    if personal {
        format!(
            "person-{:016x}",
            crate::fingerprint::fnv1a64(member.bytes())
        )
    } else {
        member.to_string()
    }
}

/// How a log line names an event or message id: as it is, unless it holds an identity that
/// names a person (an id built from a member's: a merge's, a notice's, or one chosen so by a
/// caller), which is replaced by a digest.
pub fn event_ref(id: &str) -> String {
    let personal = id.contains('@')
        || ["phone:", "tel:", "pos:", "mobile:"]
            .iter()
            .any(|k| id.contains(k));
    if personal {
        format!("event-{:016x}", crate::fingerprint::fnv1a64(id.bytes()))
    } else {
        id.to_string()
    }
}

/// The filter directive from the three variables, in that order, else `info`.
fn directive(loyalty: Option<String>, rust: Option<String>, lambda: Option<String>) -> String {
    let given = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    given(loyalty)
        .or_else(|| given(rust))
        .or_else(|| given(lambda).map(|level| lambda_level(&level).to_string()))
        .unwrap_or_else(|| "info".to_string())
}

/// Lambda's level names (TRACE, DEBUG, INFO, WARN, ERROR, FATAL) as tracing's.
fn lambda_level(level: &str) -> &'static str {
    match level.trim().to_ascii_uppercase().as_str() {
        "TRACE" => "trace",
        "DEBUG" => "debug",
        "WARN" => "warn",
        "ERROR" | "FATAL" => "error",
        _ => "info",
    }
}

/// The level filter of this process, from its environment: a level, and levels by target
/// (`warn,loyalty_core=debug`). `Targets` rather than `EnvFilter`, whose span-field filters
/// nobody here uses and whose regular expressions would add a regex engine to every bootstrap.
pub fn filter() -> Targets {
    let var = |name: &str| std::env::var(name).ok();
    let wanted = directive(
        var("LOYALTY_LOG"),
        var("RUST_LOG"),
        var("AWS_LAMBDA_LOG_LEVEL"),
    );
    wanted
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO))
}

/// Logs and metrics of a Lambda function named `function` (`earn`, `redeem`, ...): JSON lines
/// on standard output, at the level of [`filter`]. The Lambda runtime's span gives each line
/// the invocation's `requestId` and `xrayTraceId`.
pub fn init_lambda(function: &'static str) {
    metrics::set_function(function);
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().json().without_time())
        .with(filter())
        .init();
}

static STARTED: AtomicBool = AtomicBool::new(false);

/// Counts the first invocation of this process as a cold start.
fn count_cold_start() {
    if !STARTED.swap(true, Ordering::Relaxed) {
        metrics::add(metrics::COLD_STARTS, &[], 1);
    }
}

/// One Lambda invocation of a function driven by events (queues, schedules, the stream): run
/// under the invocation's trace, then what it counted is written as EMF lines.
pub async fn invocation<F: std::future::Future>(work: F) -> F::Output {
    count_cold_start();
    let out = trace::scope(trace::from_lambda_env(), work).await;
    metrics::flush_emf();
    out
}

/// The HTTP functions' routers, observed: each request runs under its trace (the
/// `X-Amzn-Trace-Id` header, else the invocation's), is logged by its route (never its path,
/// which may hold an email) and counted by status class; its metrics go out as EMF lines.
pub fn observe_lambda_http(router: axum::Router) -> axum::Router {
    router.layer(axum::middleware::from_fn(lambda_request))
}

/// `loyalty serve`'s router, observed the same way; its metrics stay for `GET /metrics`.
pub fn observe_http(router: axum::Router) -> axum::Router {
    router.layer(axum::middleware::from_fn(local_request))
}

async fn lambda_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    count_cold_start();
    let response = observed_request(request, next, trace::from_lambda_env()).await;
    metrics::flush_emf();
    response
}

async fn local_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    observed_request(request, next, None).await
}

async fn observed_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
    invocation_trace: Option<String>,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let trace = request
        .headers()
        .get("x-amzn-trace-id")
        .and_then(|v| v.to_str().ok())
        .and_then(trace::root_of)
        .or(invocation_trace)
        .unwrap_or_else(trace::new_id);
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = request.method().clone();
    let response = trace::scope(Some(trace.clone()), next.run(request)).await;
    let status = response.status().as_u16();
    let class = match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::add(metrics::REQUESTS, &[("status", class)], 1);
    let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if status >= 500 {
        tracing::warn!(%method, route, status, millis, trace, "request answered");
    } else {
        tracing::info!(%method, route, status, millis, trace, "request answered");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_named_by_an_email_or_a_phone_number_are_logged_by_a_digest() {
        // GIVEN member ids that name a person and ids that do not
        // WHEN they are named in a log THEN only the latter appear as they are
        for personal in [
            "email:ann@example.com",
            "pos:010-1234-5678",
            "phone:+821012345678",
        ] {
            let logged = member_ref(personal);
            assert!(
                logged.starts_with("person-") && !logged.contains("ann"),
                "{logged}"
            );
        }
        for plain in ["m-1", "shopify:7001234", "app-minji", "erased-5f0c"] {
            assert_eq!(member_ref(plain), plain);
        }
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn info_unless_something_says_otherwise() {
        // GIVEN no variable WHEN the level is chosen THEN it is INFO
        assert_eq!(directive(None, None, None), "info");
        // AND an empty one is no variable
        assert_eq!(directive(s(" "), None, None), "info");
    }

    #[test]
    fn loyalty_log_then_rust_log_then_lambda() {
        assert_eq!(directive(s("warn"), s("debug"), s("ERROR")), "warn");
        assert_eq!(directive(None, s("debug"), s("ERROR")), "debug");
        assert_eq!(directive(None, None, s("ERROR")), "error");
        assert_eq!(directive(None, None, s("FATAL")), "error");
        assert_eq!(directive(None, None, s("warn")), "warn");
    }
}
