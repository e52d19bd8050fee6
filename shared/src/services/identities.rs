//! Linking an identity to a member by hand (`POST .../members/{member}/aliases`): support
//! tells the engine that a Shopify customer, an email or an app login is this member, so that
//! their later orders and the app find the member's points.

use serde::Serialize;

use super::{ServiceError, Services};
use crate::ids::IdKind;
use crate::ports::{identity_member, ORDER_LINK, REDEMPTION_LINK};

/// The body: `{"kind": "shopify", "value": "7001234"}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkRequest {
    kind: String,
    value: String,
}

/// What a link did: `linked` is false when the identity led to the member already.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkReport {
    pub member: String,
    pub kind: String,
    pub value: String,
    pub linked: bool,
}

/// An identity as the request names it, checked and in its stored form (an email lower-cased).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    kind: String,
    value: String,
}

impl Identity {
    /// The kind follows the platform rule and is not one of the engine's own links (an order's
    /// customer, a redemption's member), which no operator sets. The identity, written
    /// `kind:value` as events name members, follows the member rule; an app login's value is a
    /// token's subject, which names the member itself when it has no link, so it follows the
    /// member rule alone.
    fn parse(kind: &str, value: &str) -> Result<Identity, ServiceError> {
        let invalid = |detail: String| ServiceError::invalid("invalid-identity", detail);
        IdKind::Platform
            .check(kind)
            .map_err(|e| invalid(format!("kind {:?}: {}", e.value, e.kind.rule())))?;
        if [ORDER_LINK, REDEMPTION_LINK].contains(&kind) {
            return Err(invalid(format!(
                "kind {kind:?} is kept by the engine itself and cannot be linked by hand"
            )));
        }
        let value = match kind {
            "email" => crate::imports::email(value).map_err(invalid)?,
            _ => value.to_string(),
        };
        let named = identity_member(kind, &value);
        IdKind::Member
            .check(&named)
            .map_err(|e| invalid(format!("{:?}: {}", e.value, e.kind.rule())))?;
        Ok(Identity {
            kind: kind.to_string(),
            value,
        })
    }

    /// The member this identity names when nothing links it: how events and tokens that carry
    /// it are credited until it is linked.
    fn own_member(&self) -> String {
        identity_member(&self.kind, &self.value)
    }
}

impl Services {
    /// `POST .../members/{member}/aliases`. Checked in the API's order: the program and the
    /// member exist (404), the body (400), then the state (409).
    pub async fn link_request(
        &self,
        program: &str,
        member: &str,
        by: &str,
        body: &[u8],
    ) -> Result<LinkReport, ServiceError> {
        let parsed = super::redemptions::parse::<LinkRequest>(body, "invalid-identity");
        let account = self.linkable(program, member).await?;
        let (request, _) = parsed?;
        self.link_checked(program, &account, &request.kind, &request.value, by)
            .await
    }

    /// `loyalty member link`: the same as the route, with the identity's kind and value.
    pub async fn link_named(
        &self,
        program: &str,
        member: &str,
        kind: &str,
        value: &str,
        by: &str,
    ) -> Result<LinkReport, ServiceError> {
        let account = self.linkable(program, member).await?;
        self.link_checked(program, &account, kind, value, by).await
    }

    async fn linkable(
        &self,
        program: &str,
        member: &str,
    ) -> Result<crate::domain::Account, ServiceError> {
        let program = self.program(program).await?;
        self.existing_account(&program.id, member).await
    }

    async fn link_checked(
        &self,
        program: &str,
        account: &crate::domain::Account,
        kind: &str,
        value: &str,
        by: &str,
    ) -> Result<LinkReport, ServiceError> {
        let identity = Identity::parse(kind, value)?;
        self.refuse_closed_named(program, account).await?;
        self.link(program, &account.member, &identity, by).await
    }

    /// Links `identity` to `member`. An identity linked to another member, or one that has an
    /// account of its own (its orders were credited to it before anyone linked it), is
    /// refused: that is a merge, which moves the points with it.
    async fn link(
        &self,
        program: &str,
        member: &str,
        identity: &Identity,
        by: &str,
    ) -> Result<LinkReport, ServiceError> {
        let report = |linked| LinkReport {
            member: member.to_string(),
            kind: identity.kind.clone(),
            value: identity.value.clone(),
            linked,
        };
        let (kind, value) = (identity.kind.as_str(), identity.value.as_str());
        let own = identity.own_member();
        let has_account = || {
            ServiceError::Conflict {
            problem: "identity-has-account",
            detail: format!(
                "{own} is a member of its own (an account with its history, whatever its points); merge it into {member} (POST .../members/{member}/merge), which links it too"
            ),
        }
        };
        match self.store.resolve_alias(program, kind, value).await? {
            Some(linked) if linked == member => return Ok(report(false)),
            // Linked to the member of its own name (a till's sales to `pos:010-…` link it so):
            // a member of its own, not one linked elsewhere.
            Some(linked) if linked == own => return Err(has_account()),
            Some(linked) => return Err(linked_elsewhere(identity, &linked)),
            None => {}
        }
        if own != member
            && self
                .store
                .load_member(program, &own, &[])
                .await?
                .account
                .is_some()
        {
            return Err(has_account());
        }
        if !self.store.put_alias(program, kind, value, member).await? {
            // Linked by someone else between the read and the write.
            return match self.store.resolve_alias(program, kind, value).await? {
                Some(linked) if linked == member => Ok(report(false)),
                linked => Err(linked_elsewhere(identity, linked.as_deref().unwrap_or("?"))),
            };
        }
        tracing::info!(
            program,
            member = %crate::telemetry::member_ref(member),
            kind,
            by,
            "identity linked"
        );
        Ok(report(true))
    }
}

fn linked_elsewhere(identity: &Identity, linked: &str) -> ServiceError {
    ServiceError::Conflict {
        problem: "identity-linked",
        detail: format!(
            "this {} identity is linked to {linked}; merge {linked} into this member to move it",
            identity.kind
        ),
    }
}
