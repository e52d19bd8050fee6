//! Logs, set up the same way by every Lambda function and by `loyalty serve`.
//!
//! The level is INFO unless something says otherwise: `LOYALTY_LOG` (any filter directive, e.g.
//! `warn` or `loyalty_core=debug`), else `RUST_LOG`, else the level Lambda's logging
//! configuration passes in `AWS_LAMBDA_LOG_LEVEL` (the template sets it). Functions write JSON
//! lines without a time (CloudWatch stamps each line).

use tracing_subscriber::EnvFilter;

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

/// The level filter of this process, from its environment.
pub fn filter() -> EnvFilter {
    let var = |name: &str| std::env::var(name).ok();
    let wanted = directive(
        var("LOYALTY_LOG"),
        var("RUST_LOG"),
        var("AWS_LAMBDA_LOG_LEVEL"),
    );
    EnvFilter::try_new(&wanted).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Logs of a Lambda function: JSON lines on standard output, at the level of [`filter`].
pub fn init_lambda() {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter())
        .without_time()
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

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
