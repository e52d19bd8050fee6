//! Logs, set up the same way by every Lambda function and by `loyalty serve`.
//!
//! The level is INFO unless something says otherwise: `LOYALTY_LOG` (any filter directive, e.g.
//! `warn` or `loyalty_core=debug`), else `RUST_LOG`, else the level Lambda's logging
//! configuration passes in `AWS_LAMBDA_LOG_LEVEL` (the template sets it). Functions write JSON
//! lines without a time (CloudWatch stamps each line).

use tracing_subscriber::EnvFilter;

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
