//! The trace id that follows an event from its webhook or request through every queue.
//!
//! It is X-Ray's root id (`1-5759e988-bd862e3fe1be46a994272793`): taken from a request's
//! `X-Amzn-Trace-Id` header, else from `_X_AMZN_TRACE_ID` (which the Lambda runtime sets for
//! each invocation), else made up. Envelopes carry it (`trace`), and every message a change
//! sends on takes the trace of the work that made it, so one id finds an event's lines in every
//! function's logs.

use std::future::Future;

tokio::task_local! {
    static TRACE: String;
}

/// The trace of the work this task is doing, if any.
pub fn current() -> Option<String> {
    TRACE.try_with(|t| t.clone()).ok()
}

/// Runs `work` under `trace` (or under the current one when `None`).
pub async fn scope<F: Future>(trace: Option<String>, work: F) -> F::Output {
    match trace.or_else(current) {
        Some(trace) => TRACE.scope(trace, work).await,
        None => work.await,
    }
}

/// The root id of an X-Ray header (`Root=1-...;Parent=...;Sampled=1`), or the header itself
/// when it is a bare id. Anything else is not a trace id and is ignored, and so is one written
/// like a phone number: the trace is logged on every line as it is.
pub fn root_of(header: &str) -> Option<String> {
    let root = header
        .split(';')
        .map(str::trim)
        .find_map(|part| part.strip_prefix("Root="))
        .unwrap_or(header.trim());
    let valid = !root.is_empty()
        && root.len() <= 64
        && root.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !super::holds_a_phone_number(root);
    valid.then(|| root.to_string())
}

/// The trace of the current Lambda invocation, from `_X_AMZN_TRACE_ID`.
pub fn from_lambda_env() -> Option<String> {
    std::env::var("_X_AMZN_TRACE_ID")
        .ok()
        .and_then(|h| root_of(&h))
}

/// A new id in X-Ray's form: the time in seconds and 96 random bits, in hexadecimal.
pub fn new_id() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("1-{:08x}-{}", chrono::Utc::now().timestamp(), &random[..24])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_of_an_xray_header_is_the_trace() {
        let header = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
        assert_eq!(
            root_of(header).as_deref(),
            Some("1-5759e988-bd862e3fe1be46a994272793")
        );
        assert_eq!(root_of("1-abc-def").as_deref(), Some("1-abc-def"));
        // AND a header that is not an id is no trace (it would reach logs and envelopes)
        assert_eq!(root_of("Root=<script>"), None);
        assert_eq!(root_of(&"a".repeat(65)), None);
        assert_eq!(root_of(""), None);
        // AND nor is one written like a phone number (before: logged as sent)
        assert_eq!(root_of("010-3100-7100"), None);
        assert_eq!(root_of("Root=1-010-3100-7100;Sampled=1"), None);
    }

    #[test]
    fn new_ids_have_xrays_shape() {
        let id = new_id();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!((parts[0], parts[1].len(), parts[2].len()), ("1", 8, 24));
        assert_ne!(new_id(), id);
    }

    #[tokio::test]
    async fn work_sees_the_trace_it_runs_under_and_inner_scopes_keep_it() {
        assert_eq!(current(), None);
        let seen = scope(Some("1-a-b".into()), async {
            let inner = scope(None, async { current() }).await;
            (current(), inner)
        })
        .await;
        assert_eq!(seen, (Some("1-a-b".into()), Some("1-a-b".into())));
    }
}
