//! Who is calling: a [`Principal`] read from a verified JWT.
//!
//! Behind API Gateway the JWT authorizer has verified the token and the Lambda entry point puts
//! its claims on the request ([`GatewayClaims`]). Locally, `loyalty serve` verifies HS256 tokens
//! signed with `LOYALTY_JWT_SECRET`. Either way the handlers see the same `Principal`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::Utc;
#[cfg(feature = "local-tokens")]
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::problem::Problem;
use super::AppState;

/// The scope that admin routes require.
pub const ADMIN_SCOPE: &str = "loyalty/admin";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub scopes: Vec<String>,
    /// An admin token limited to one program.
    pub program: Option<String>,
    /// When the token was issued (claim `iat`), if it says.
    pub issued_at: Option<chrono::DateTime<Utc>>,
}

impl Principal {
    /// Admin of `program`: has the admin scope and is not limited to another program.
    pub fn require_admin(&self, program: &str) -> Result<(), Problem> {
        if !self.scopes.iter().any(|s| s == ADMIN_SCOPE) {
            return Err(Problem::forbidden(format!(
                "this route needs the {ADMIN_SCOPE} scope"
            )));
        }
        // The subject names the operator in ledgers, approvals and the operator's daily count,
        // whose keys it is part of: it keeps the member ids' rule.
        crate::ids::IdKind::Member
            .check(&self.subject)
            .map_err(|e| {
                Problem::bad_request(
                    "invalid-operator",
                    format!("the token's subject cannot name an operator: {e}"),
                )
            })?;
        self.within(program)
    }

    /// Admin of every program: for what programs share (the dead-letter queues).
    pub fn require_admin_everywhere(&self) -> Result<(), Problem> {
        self.require_admin("")?;
        match &self.program {
            Some(limited) => Err(Problem::forbidden(format!(
                "this route acts for every program; this token is limited to {limited:?}"
            ))),
            None => Ok(()),
        }
    }

    /// A token limited to one program (claim `program`) acts in that program only.
    fn within(&self, program: &str) -> Result<(), Problem> {
        match &self.program {
            Some(limited) if limited != program => Err(Problem::forbidden(format!(
                "this token is limited to program {limited:?}"
            ))),
            _ => Ok(()),
        }
    }

    /// A member route: the token speaks for a member, so it must not be an admin token (an
    /// operator acts on a member through the admin routes, which say who did it), nor a token
    /// limited to another program.
    pub fn require_member(&self, program: &str) -> Result<(), Problem> {
        if self.scopes.iter().any(|s| s == ADMIN_SCOPE) {
            return Err(Problem::forbidden(
                "this route is the member's own: it needs a member token, not an admin token",
            ));
        }
        self.within(program)
    }
}

/// Seconds by which a token's `exp` may have passed and still be accepted, for clocks that
/// differ a little (README "Tokens").
pub const CLOCK_LEEWAY_SECONDS: u64 = 5;

/// Claims of our tokens (DESIGN §6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub scope: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// Not before: a token that says it is valid from a later time is refused until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Issued at: a member token issued before its member's erasure opens no account again.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_seconds"
    )]
    pub iat: Option<i64>,
}

/// Claims already verified by API Gateway's JWT authorizer, put on the request by the Lambda
/// entry point.
#[derive(Debug, Clone, Default)]
pub struct GatewayClaims(pub serde_json::Map<String, serde_json::Value>);

/// How tokens are verified.
#[derive(Clone)]
pub enum Verifier {
    /// Local: HS256 with a shared secret.
    #[cfg(feature = "local-tokens")]
    Hs256(std::sync::Arc<DecodingKey>),
    /// Behind API Gateway: the authorizer verified the token.
    Gateway,
}

#[cfg(feature = "local-tokens")]
impl Verifier {
    pub fn hs256(secret: &[u8]) -> Verifier {
        Verifier::Hs256(std::sync::Arc::new(DecodingKey::from_secret(secret)))
    }
}

/// Signs a development token (`loyalty token`).
#[cfg(feature = "local-tokens")]
pub fn sign(secret: &[u8], claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
}

/// Claims for a token valid for `hours`.
pub fn claims(sub: &str, scopes: &[&str], program: Option<&str>, hours: i64) -> Claims {
    Claims {
        sub: sub.to_string(),
        scope: scopes.join(" "),
        exp: Utc::now().timestamp() + hours * 3600,
        program: program.map(str::to_string),
        nbf: None,
        iat: Some(Utc::now().timestamp()),
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match &state.verifier {
            #[cfg(feature = "local-tokens")]
            Verifier::Hs256(key) => {
                let token = bearer(parts)?;
                let mut validation = Validation::new(Algorithm::HS256);
                validation.validate_aud = false;
                validation.leeway = CLOCK_LEEWAY_SECONDS;
                // As API Gateway's authorizer does: a token dated ahead is not valid yet.
                validation.validate_nbf = true;
                validation.set_required_spec_claims(&["exp", "sub"]);
                let data = jsonwebtoken::decode::<Claims>(token, key, &validation)
                    .map_err(|e| Problem::unauthorized(format!("the token is not valid: {e}")))?;
                Ok(Principal {
                    issued_at: data.claims.iat.and_then(issued_at),
                    ..principal(data.claims.sub, &data.claims.scope, data.claims.program)
                })
            }
            Verifier::Gateway => {
                let claims = parts
                    .extensions
                    .get::<GatewayClaims>()
                    .ok_or_else(|| Problem::unauthorized("no verified token on the request"))?;
                gateway_principal(&claims.0)
            }
        }
    }
}

/// The principal of claims API Gateway verified.
fn gateway_principal(
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<Principal, Problem> {
    let text = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let sub = text("sub").ok_or_else(|| Problem::unauthorized("the token has no subject"))?;
    let mut found = principal(sub, &text("scope").unwrap_or_default(), text("program"));
    // The authorizer hands every claim over as text; a number is read as well.
    found.issued_at = claims.get("iat").and_then(seconds_of).and_then(issued_at);
    if let Some(username) = text("username") {
        if !in_group(claims, OPERATORS_GROUP) {
            found.scopes.retain(|s| s != ADMIN_SCOPE);
        } else if found.scopes.iter().any(|s| s == ADMIN_SCOPE) {
            // Ledgers and approvals name the operator as people know them. Only when acting
            // as one: an operator signed in to the member app is the member its `sub` names.
            found.subject = username;
        }
    }
    Ok(found)
}

/// The user-pool group whose users may act as admins through the console. A person's token
/// (one with a `username`) carries the admin scope only if the console's client asked for it;
/// any member could ask, so the group decides. Machine tokens (client credentials) have no
/// user and keep their scope.
pub const OPERATORS_GROUP: &str = "operators";

/// Whether the `cognito:groups` claim names `group`: API Gateway hands it over as a JSON
/// array or as its text (`[operators support]`).
fn in_group(claims: &serde_json::Map<String, serde_json::Value>, group: &str) -> bool {
    match claims.get("cognito:groups") {
        Some(serde_json::Value::Array(groups)) => groups.iter().any(|g| g.as_str() == Some(group)),
        Some(serde_json::Value::String(text)) => text
            .split(|c: char| c == '[' || c == ']' || c == ',' || c == '"' || c.is_whitespace())
            .any(|g| g == group),
        _ => false,
    }
}

fn principal(subject: String, scope: &str, program: Option<String>) -> Principal {
    Principal {
        subject,
        scopes: scope.split_whitespace().map(str::to_string).collect(),
        program,
        issued_at: None,
    }
}

/// `iat` as an issuer may write it: a whole or fractional number of seconds (a NumericDate of
/// RFC 7519), or that number as text. Anything else is no `iat`, not an invalid token: the
/// claim matters only to a name erased since, which a token without it cannot reopen.
fn lenient_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(value.as_ref().and_then(seconds_of))
}

/// Whole seconds of a NumericDate, rounded down (a token read as issued earlier is the one
/// refused for an erased name, never the other way).
fn seconds_of(value: &serde_json::Value) -> Option<i64> {
    let whole = |f: f64| f.is_finite().then(|| f.floor() as i64);
    match value {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().and_then(whole)),
        serde_json::Value::String(text) => {
            let text = text.trim();
            text.parse()
                .ok()
                .or_else(|| text.parse().ok().and_then(whole))
        }
        _ => None,
    }
}

/// An `iat` claim (seconds since the epoch) as a time; none out of chrono's range.
fn issued_at(seconds: i64) -> Option<chrono::DateTime<Utc>> {
    chrono::DateTime::from_timestamp(seconds, 0)
}

#[cfg(feature = "local-tokens")]
fn bearer(parts: &Parts) -> Result<&str, Problem> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| Problem::unauthorized("an Authorization: Bearer token is required"))?
        .to_str()
        .map_err(|_| Problem::unauthorized("the Authorization header is not text"))?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Problem::unauthorized("the Authorization header must be 'Bearer <token>'"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_person_is_admin_only_in_the_operators_group() {
        // GIVEN access tokens of people (with a username) that asked for the admin scope
        let scope = "openid loyalty/admin";
        for (groups, admin) in [
            (json!("[operators]"), true),
            (json!("[support operators]"), true),
            (json!(["operators"]), true),
            (json!("[operatorsx]"), false),
            (json!([]), false),
            (json!(null), false),
        ] {
            let token = claims(
                json!({"sub": "u-1", "username": "ann", "scope": scope, "cognito:groups": groups}),
            );
            // WHEN the principal is read THEN the admin scope stays only for operators
            let principal = gateway_principal(&token).unwrap();
            assert_eq!(
                principal.require_admin("kr-shop").is_ok(),
                admin,
                "{groups}"
            );
            // AND an operator is named as people know them (ledgers, approvals)
            assert_eq!(principal.subject, if admin { "ann" } else { "u-1" });
        }
        // AND an operator signed in to the member app (no admin scope) is its `sub`
        let app = claims(
            json!({"sub": "u-1", "username": "ann", "scope": "openid", "cognito:groups": ["operators"]}),
        );
        assert_eq!(gateway_principal(&app).unwrap().subject, "u-1");
        // AND a machine token (client credentials: no username) keeps its scope
        let machine = claims(json!({"sub": "client-1", "scope": "loyalty/admin"}));
        assert!(gateway_principal(&machine)
            .unwrap()
            .require_admin("kr-shop")
            .is_ok());
    }

    #[test]
    fn the_time_a_token_was_issued_is_read_as_the_authorizer_hands_it_over() {
        // GIVEN claims with `iat` as text (API Gateway's way), as a number, and without it
        for (iat, read) in [
            (json!("1700000000"), Some(1_700_000_000)),
            (json!(1_700_000_000), Some(1_700_000_000)),
            (json!(1_700_000_000.5), Some(1_700_000_000)),
            (json!("1700000000.9"), Some(1_700_000_000)),
            (json!("soon"), None),
            (json!(null), None),
        ] {
            let token = claims(json!({"sub": "u-1", "scope": "openid", "iat": iat}));
            // WHEN the principal is read THEN it says when the token was issued, if it can
            let principal = gateway_principal(&token).unwrap();
            assert_eq!(principal.issued_at.map(|t| t.timestamp()), read, "{iat}");
        }
    }

    #[cfg(feature = "local-tokens")]
    #[test]
    fn a_token_with_a_fractional_or_textual_iat_is_still_valid() {
        // GIVEN signed claims whose `iat` is a fraction, text, or nothing a time can be read from
        let exp = Utc::now().timestamp() + 60;
        for (iat, read) in [
            (json!(1_700_000_000.5), Some(1_700_000_000)),
            (json!("1700000000"), Some(1_700_000_000)),
            (json!("yesterday"), None),
            (json!(null), None),
        ] {
            let body = json!({"sub": "m-1", "exp": exp, "iat": iat});
            let token = jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &body,
                &EncodingKey::from_secret(b"s"),
            )
            .unwrap();
            // WHEN they are decoded as the local verifier does
            let key = DecodingKey::from_secret(b"s");
            let decoded = jsonwebtoken::decode::<Claims>(&token, &key, &Validation::default());
            // THEN the token is valid, and says when it was issued if it can (before: any
            // `iat` that was not a whole number made every route answer 401)
            assert_eq!(decoded.unwrap().claims.iat, read, "{iat}");
        }
    }
}
