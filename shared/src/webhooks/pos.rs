//! POS systems and any other sender: the generic envelope of `POST /v1/programs/{p}/events`,
//! signed with `X-Loyalty-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`.
//! The timestamp is signed too, so a captured delivery cannot be replayed after five minutes.

use chrono::{DateTime, Utc};

use super::{hmac, verify, MemberRef, Normalised, PlatformEvent, WebhookError};
use serde_json::Value;

use crate::envelope::Envelope;

pub const SIGNATURE_HEADER: &str = "x-loyalty-signature";
const MAX_SKEW_SECONDS: i64 = 300;

/// Checks the signature header against each secret, and its age against `now`.
pub fn verify_signature(
    secrets: &[String],
    body: &[u8],
    header: &str,
    now: DateTime<Utc>,
) -> Result<(), WebhookError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => signatures.push(v),
            _ => {}
        }
    }
    let t = timestamp.ok_or(WebhookError::InvalidSignature)?;
    // abs_diff: any i64 from outside, i64::MIN included, without overflow.
    if now.timestamp().abs_diff(t) > MAX_SKEW_SECONDS.unsigned_abs() {
        return Err(WebhookError::StaleSignature);
    }
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    for signature in signatures {
        if let Some(expected) = from_hex(signature) {
            if verify(secrets, &message, &expected).is_ok() {
                return Ok(());
            }
        }
    }
    Err(WebhookError::InvalidSignature)
}

/// The header value a sender puts on `body` at time `t` (for tests and client libraries).
pub fn signature_header(secret: &str, body: &[u8], t: i64) -> String {
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    let hex: String = hmac(secret, &message)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t},v1={hex}")
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What a till may send: sales, returns, memberships sold and actions, never points of its own
/// choosing (`points.granted` is the campaigns').
const POS_TYPES: &[&str] = &[
    "purchase.completed",
    "purchase.refunded",
    "purchase.cancelled",
    "engagement.recorded",
    "membership.paid",
];

/// The id prefixes of the platforms' webhook events: a till's event named like one of them would
/// take its place (the queue and the markers would call the platform's own a repeat).
const PLATFORM_ID_PREFIXES: &[&str] = &["shopify-", "woocommerce-", "cafe24-"];

/// The envelope as sent; the service checks it like any submitted event. A till speaks for
/// itself only: its events are not the platforms' (by id or by `data.platform`), and are of
/// the program of its URL (a till set up for another program is told, not credited here).
pub fn normalise(program: &str, body: &[u8]) -> Result<Normalised, WebhookError> {
    let envelope = Envelope::from_body(body)
        .map_err(|e| WebhookError::Invalid(format!("the body is not an event envelope: {e}")))?;
    if envelope.program != program {
        return Err(WebhookError::Invalid(format!(
            "program {:?} does not match the program of the path, {program:?}",
            envelope.program
        )));
    }
    // Refused as `POST .../events` refuses them (they were dropped silently here).
    let set = envelope.operators_fields();
    if !set.is_empty() {
        return Err(WebhookError::Invalid(
            crate::envelope::operators_fields_refusal(&set),
        ));
    }
    if envelope.version != crate::envelope::ENVELOPE_VERSION {
        return Err(WebhookError::Invalid(format!(
            "version {} is not supported (expected {})",
            envelope.version,
            crate::envelope::ENVELOPE_VERSION
        )));
    }
    if let Some(prefix) = PLATFORM_ID_PREFIXES
        .iter()
        .find(|p| envelope.id.starts_with(**p))
    {
        return Err(WebhookError::Invalid(format!(
            "id {:?} starts with {prefix:?}, which names another platform's events",
            envelope.id
        )));
    }
    match envelope.data.get("platform").and_then(Value::as_str) {
        None | Some("pos") => {}
        Some(other) => {
            return Err(WebhookError::Invalid(format!(
                "data.platform {other:?}: a POS sends its own events (\"pos\", or none)"
            )))
        }
    }
    // A referrer's reward follows from the referee's first purchase (earn sends it, once per
    // referee); a till that could send one would pay points of its own choosing.
    if envelope.kind == "engagement.recorded" && envelope.data.get("referee").is_some() {
        return Err(WebhookError::Invalid(
            "data.referee: a till records a referral on the new member (data.referrer); the \
             referrer's reward follows from the new member's first purchase"
                .into(),
        ));
    }
    let kind = POS_TYPES
        .iter()
        .find(|t| **t == envelope.kind)
        .ok_or_else(|| {
            WebhookError::Invalid(format!(
                "type {:?} is not one of {}",
                envelope.kind,
                POS_TYPES.join(", ")
            ))
        })?;
    Ok(Normalised::Events(vec![PlatformEvent {
        kind,
        id: envelope.id,
        member: MemberRef::Identity(crate::ports::plain_identity(&envelope.member)),
        occurred_at: envelope.occurred_at,
        data: envelope.data,
        order_key: None,
        identities: Vec::new(),
    }]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn envelope(id: &str, kind: &str, platform: Option<&str>) -> Vec<u8> {
        let mut data = serde_json::json!({"order_id": "o-1", "currency": "KRW", "channel": "store",
            "shipping": "0", "tax": "0", "lines": []});
        if let Some(p) = platform {
            data["platform"] = serde_json::json!(p);
        }
        serde_json::json!({"type": kind, "version": 1, "id": id, "program": "kr-shop",
            "member": "pos:42", "occurred_at": "2026-11-22T12:00:00Z", "data": data})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_till_cannot_set_the_operators_fields() {
        // GIVEN a till's sale that names a reviewer, as a release from review would
        let mut sale: serde_json::Value =
            serde_json::from_slice(&envelope("till-7-sale-9", "purchase.completed", None)).unwrap();
        sale["reviewed_by"] = serde_json::json!("lead-2");
        // WHEN it is read THEN it is refused naming the field, as POST .../events refuses it
        // (before: taken, the field dropped)
        match normalise("kr-shop", sale.to_string().as_bytes()) {
            Err(WebhookError::Invalid(detail)) => {
                assert!(
                    detail.starts_with("reviewed_by is set by the operators"),
                    "{detail}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_till_cannot_send_a_platform_s_event_or_points_of_its_choosing() {
        // GIVEN a till's sale, and deliveries named like Shopify's, saying Shopify, or granting
        let sale = envelope("till-7-sale-1", "purchase.completed", Some("pos"));
        let named = envelope("shopify-order-1-paid", "purchase.completed", None);
        let saying = envelope("till-7-sale-2", "purchase.completed", Some("shopify"));
        let granting = envelope("till-7-grant", "points.granted", None);
        let rewarding = serde_json::json!({"type": "engagement.recorded", "version": 1,
            "id": "till-7-ref", "program": "kr-shop", "member": "pos:42",
            "occurred_at": "2026-11-22T12:00:00Z",
            "data": {"action": "referral", "ref": "r-1", "referee": "anyone"}})
        .to_string()
        .into_bytes();
        // WHEN each is read THEN the sale is taken and the others (a referrer's reward
        // too) are refused
        assert!(matches!(
            normalise("kr-shop", &sale),
            Ok(Normalised::Events(_))
        ));
        for body in [named, saying, granting, rewarding] {
            assert!(
                matches!(normalise("kr-shop", &body), Err(WebhookError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[test]
    fn a_till_s_event_of_another_program_or_version_is_refused() {
        // GIVEN a till's sale saying it is of us-shop, and one of envelope version 7
        let sale =
            String::from_utf8(envelope("till-7-sale-1", "purchase.completed", None)).unwrap();
        let other = sale.replace("\"kr-shop\"", "\"us-shop\"").into_bytes();
        let newer = sale.replace("\"version\":1", "\"version\":7").into_bytes();
        assert_ne!(other, sale.as_bytes());
        assert_ne!(newer, sale.as_bytes());
        // WHEN each is posted to kr-shop's URL THEN it is refused, naming what is wrong
        for (body, named) in [(other, "us-shop"), (newer, "version 7")] {
            match normalise("kr-shop", &body) {
                Err(WebhookError::Invalid(detail)) => assert!(detail.contains(named), "{detail}"),
                _ => panic!("accepted: {}", String::from_utf8_lossy(&body)),
            }
        }
    }

    #[test]
    fn a_fresh_signature_verifies_and_an_old_one_does_not() {
        // GIVEN a body signed at t
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
        let body = b"{}";
        let header = signature_header("s3cret", body, now.timestamp());
        // THEN it verifies now and four minutes later, but not six minutes later
        assert!(verify_signature(&["s3cret".into()], body, &header, now).is_ok());
        assert!(verify_signature(
            &["s3cret".into()],
            body,
            &header,
            now + chrono::Duration::minutes(4)
        )
        .is_ok());
        assert_eq!(
            verify_signature(
                &["s3cret".into()],
                body,
                &header,
                now + chrono::Duration::minutes(6)
            ),
            Err(WebhookError::StaleSignature)
        );
        // AND another secret or another body fails
        assert!(verify_signature(&["other".into()], body, &header, now).is_err());
        assert!(verify_signature(&["s3cret".into()], b"{ }", &header, now).is_err());
        assert!(verify_signature(&["s3cret".into()], body, "v1=00", now).is_err());
    }

    #[test]
    fn timestamps_at_the_ends_of_i64_are_stale_not_a_panic() {
        // GIVEN headers whose t is i64::MIN, i64::MAX, and now + i64::MIN (whose difference
        // from now is i64::MIN, which has no absolute value in i64)
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
        for t in [i64::MIN, i64::MAX, now.timestamp().wrapping_add(i64::MIN)] {
            let header = format!("t={t},v1=00");
            // WHEN checked THEN each is stale
            assert_eq!(
                verify_signature(&["s3cret".into()], b"{}", &header, now),
                Err(WebhookError::StaleSignature),
                "{t}"
            );
        }
    }
}
