//! Webhooks from shop platforms: verify the sender, then turn the platform's payload into the
//! events of DESIGN §5. Nothing here touches state; the service resolves members and queues.

use std::fmt;

use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ports::StoreError;

pub mod cafe24;
pub mod pos;
pub mod shopify;
#[cfg(feature = "aws")]
pub mod ssm;
pub mod woocommerce;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    Shopify,
    WooCommerce,
    Cafe24,
    Pos,
}

impl Platform {
    pub fn parse(name: &str) -> Option<Platform> {
        match name {
            "shopify" => Some(Platform::Shopify),
            "woocommerce" => Some(Platform::WooCommerce),
            "cafe24" => Some(Platform::Cafe24),
            "pos" => Some(Platform::Pos),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Shopify => "shopify",
            Platform::WooCommerce => "woocommerce",
            Platform::Cafe24 => "cafe24",
            Platform::Pos => "pos",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a delivery was refused. Each maps to the status the platform expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("unknown platform {0:?} (expected shopify, woocommerce, cafe24 or pos)")]
    UnknownPlatform(String),
    #[error("no secret is configured for {platform} webhooks of program {program}")]
    NotConfigured { program: String, platform: Platform },
    #[error("the signature does not match the body")]
    InvalidSignature,
    #[error("the API key does not match the one configured for this program")]
    InvalidApiKey,
    #[error("the signature is older than 5 minutes or from the future")]
    StaleSignature,
    #[error("{0}")]
    Invalid(String),
}

/// A mark in a platform event's data: take it only if the order's payment credited someone
/// (taken off before the event is queued).
pub const IF_CREDITED: &str = "if_credited";

/// A platform's amount, held to the amounts' bound before anything adds it up: a delivery of
/// at most 256 KiB then cannot sum past 64 bits (a wrapped sum would pass the later checks as
/// a small, plausible amount).
pub(crate) fn bounded(minor: i64, what: &str) -> Result<i64, WebhookError> {
    match minor.unsigned_abs() <= crate::domain::limits::MAX_AMOUNT.unsigned_abs() {
        true => Ok(minor),
        false => Err(WebhookError::Invalid(format!(
            "{what}: over the amounts' bound of 10^13 minor units"
        ))),
    }
}

/// A platform's id (an order's, a customer's, a line's, a refund's), sent as a whole number or
/// a string; `None` when it is absent, null or empty. A number written otherwise (`9300001.0`,
/// `9.3e6`, negative, past 64 bits) is refused: its text would name another order or customer
/// than the same id written plainly, and credit it again.
pub(crate) fn platform_id(
    value: &serde_json::Value,
    field: &str,
) -> Result<Option<String>, WebhookError> {
    use serde_json::Value;
    match value.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(whole) => Ok(Some(whole.to_string())),
            None => Err(WebhookError::Invalid(format!(
                "{field} must be a whole number (got {n})"
            ))),
        },
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(WebhookError::Invalid(format!(
            "{field} must be a number or a string"
        ))),
    }
}

/// The identities a platform's delivery names (its customer, as a member id of that platform,
/// and every email in it, lower-cased, alone and as `email:`), however far normalising it got:
/// kept beside a delivery refused for good, so that an erasure, which looks for a member's
/// names as whole JSON strings, finds it. Its raw body writes an email as the customer typed it
/// and a customer id as a number, which no such search finds.
pub fn names_in(platform: Platform, body: &[u8]) -> Vec<String> {
    use serde_json::Value;
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let mut names = std::collections::BTreeSet::new();
    emails_in(&value, &mut names, 0);
    let customer = match platform {
        Platform::Shopify => value
            .get("customer")
            .and_then(|c| platform_id(c, "id").ok().flatten()),
        Platform::WooCommerce => platform_id(&value, "customer_id")
            .ok()
            .flatten()
            .filter(|id| id != "0"),
        Platform::Cafe24 => value
            .pointer("/resource/member_id")
            .and_then(Value::as_str)
            .map(str::to_string),
        Platform::Pos => None,
    };
    if let Some(customer) = customer {
        names.insert(format!("{platform}:{customer}"));
    }
    names.into_iter().collect()
}

/// Every string under a key that names an email (`email`, `billing_email`, `buyer_email`...).
fn emails_in(
    value: &serde_json::Value,
    names: &mut std::collections::BTreeSet<String>,
    depth: usize,
) {
    use serde_json::Value;
    // Bodies are at most 256 KiB and the parser stops at 128 levels; this stops sooner.
    if depth > 32 {
        return;
    }
    match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                match field.as_str() {
                    Some(text) if key.to_ascii_lowercase().ends_with("email") => {
                        let email = text.trim().to_lowercase();
                        if email.contains('@') {
                            names.insert(format!("email:{email}"));
                            names.insert(email);
                        }
                    }
                    _ => emails_in(field, names, depth + 1),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| emails_in(i, names, depth + 1)),
        _ => {}
    }
}

/// Webhook secrets per program and platform: the current one first, then the previous one
/// while a rotation is under way. None configured is an empty list; a source that cannot answer
/// now (throttled, denied, unreachable) is a transient error, so that the platform retries.
#[async_trait]
pub trait Secrets: Send + Sync {
    async fn secrets(&self, program: &str, platform: Platform) -> Result<Vec<String>, StoreError>;
}

/// Secrets from `LOYALTY_SECRET_{PROGRAM}_{PLATFORM}` (and `..._PREVIOUS`), for `loyalty serve`.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvSecrets;

/// The variable that holds a program's secret for a platform (`kr-shop`, shopify →
/// `LOYALTY_SECRET_KR_SHOP_SHOPIFY`).
pub fn secret_variable(program: &str, platform: Platform) -> String {
    format!("LOYALTY_SECRET_{}_{}", program, platform.as_str())
        .to_ascii_uppercase()
        .replace('-', "_")
}

#[async_trait]
impl Secrets for EnvSecrets {
    async fn secrets(&self, program: &str, platform: Platform) -> Result<Vec<String>, StoreError> {
        let name = secret_variable(program, platform);
        Ok([name.clone(), format!("{name}_PREVIOUS")]
            .iter()
            .filter_map(|n| std::env::var(n).ok())
            .filter(|s| !s.is_empty())
            .collect())
    }
}

/// Checks a base64 HMAC-SHA256 of the raw body against each secret, in constant time.
pub fn verify_base64(secrets: &[String], body: &[u8], signature: &str) -> Result<(), WebhookError> {
    let expected = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| WebhookError::InvalidSignature)?;
    verify(secrets, body, &expected)
}

fn verify(secrets: &[String], message: &[u8], expected: &[u8]) -> Result<(), WebhookError> {
    for secret in secrets {
        let Ok(mut mac) = HmacSha256::new_from_slice(secret.as_bytes()) else {
            continue;
        };
        mac.update(message);
        // `verify_slice` compares in constant time.
        if mac.verify_slice(expected).is_ok() {
            return Ok(());
        }
    }
    Err(WebhookError::InvalidSignature)
}

/// Signs a body the way Shopify and WooCommerce do (for tests and for tools that replay).
pub fn sign_base64(secret: &str, body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(hmac(secret, body))
}

fn hmac(secret: &str, message: &[u8]) -> Vec<u8> {
    match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        // HMAC accepts keys of any length; this arm cannot be reached.
        Err(_) => Vec::new(),
    }
}

/// Who an event belongs to, before aliases are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberRef {
    /// A platform identity, `kind:value` (`shopify:7001234`): the member id unless an alias
    /// links it to another member.
    Identity(String),
    /// Known only through its order (Shopify refunds carry no customer): the member recorded
    /// for that order when it was paid.
    Order(String),
}

/// One event a delivery asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct PlatformEvent {
    pub kind: &'static str,
    /// Derived from the platform's ids for the effect, so that every redelivery, whatever its
    /// delivery id, is the same event.
    pub id: String,
    pub member: MemberRef,
    pub occurred_at: DateTime<Utc>,
    pub data: serde_json::Value,
    /// Remember this order's member (for refunds that arrive without a customer).
    pub order_key: Option<String>,
    /// Link these identities (`email:...`) to the member.
    pub identities: Vec<String>,
}

/// What a verified delivery amounts to.
#[derive(Debug, Clone, PartialEq)]
pub enum Normalised {
    Events(Vec<PlatformEvent>),
    /// Acknowledged without effect (a ping, a guest order, an unhandled topic), with the reason.
    Ignored(String),
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_delivery_names_its_customer_and_every_email_in_it() {
        // GIVEN a WooCommerce order whose billing email has capitals and whose customer id is
        // a number
        let body = br#"{"id": 4002, "customer_id": 4242, "currency": "USD",
            "billing": {"email": "JANE.DOE@Example.com", "phone": "010 5555 1234"}}"#;
        // WHEN its names are read THEN they are the member ids an erasure looks for
        assert_eq!(
            super::names_in(super::Platform::WooCommerce, body),
            vec![
                "email:jane.doe@example.com".to_string(),
                "jane.doe@example.com".to_string(),
                "woocommerce:4242".to_string(),
            ]
        );
        // AND a body that is not JSON names no one
        assert!(super::names_in(super::Platform::Shopify, b"not json").is_empty());
    }

    use super::*;

    #[test]
    fn a_signature_verifies_with_the_current_or_the_previous_secret() {
        // GIVEN a body signed with the old secret during a rotation
        let body = br#"{"id":1}"#;
        let signature = sign_base64("old", body);
        // THEN it verifies while the old secret is still listed, and not after
        assert!(verify_base64(&["new".into(), "old".into()], body, &signature).is_ok());
        assert_eq!(
            verify_base64(&["new".into()], body, &signature),
            Err(WebhookError::InvalidSignature)
        );
        // AND a changed body or a garbled signature fails
        assert!(verify_base64(&["old".into()], br#"{"id":2}"#, &signature).is_err());
        assert!(verify_base64(&["old".into()], body, "not base64!").is_err());
    }

    #[test]
    fn secret_variables_are_named_after_program_and_platform() {
        assert_eq!(
            secret_variable("kr-shop", Platform::Shopify),
            "LOYALTY_SECRET_KR_SHOP_SHOPIFY"
        );
    }
}
