//! Accepting events (`POST /v1/programs/{program}/events`, POS systems, webhook ingest).
//!
//! Everything that can be checked without the member's state is checked here, before the event
//! is queued: a 202 means the event is durably queued and well-formed.

use serde::Serialize;

use super::{ServiceError, Services};
use crate::envelope::{parse_earn_event, Envelope};
use crate::ports::QueueName;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Accepted {
    pub id: String,
    pub status: &'static str,
}

impl Services {
    /// Validates an envelope for `program`, resolves the member to its canonical id, and queues
    /// it for earn. Sending the same id again is accepted again and has no second effect.
    pub async fn submit_event(&self, program: &str, body: &[u8]) -> Result<Accepted, ServiceError> {
        let program = self.program(program).await?;
        super::require_object(body, "malformed-event")?;
        crate::json_keys::once_each(body).map_err(|e| {
            ServiceError::invalid(
                "malformed-event",
                format!("the body is not an event envelope: {e}"),
            )
        })?;
        let mut envelope = Envelope::from_body(body).map_err(|e| {
            ServiceError::invalid(
                "malformed-event",
                format!("the body is not an event envelope: {e}"),
            )
        })?;
        operators_fields_unset(&envelope)?;
        parse_earn_event(&envelope, &program)
            .map_err(|e| ServiceError::invalid(e.problem, e.detail))?;
        program
            .check_occurred_at(envelope.occurred_at, self.clock.now())
            .map_err(|e| ServiceError::invalid("event-out-of-bounds", e.to_string()))?;
        super::fits_a_message(&envelope)?;
        envelope.member = self.member_of_event(&program.id, &envelope.member).await?;
        self.canonical_referrer(&program.id, &mut envelope).await?;
        envelope.trace = envelope
            .trace
            .as_deref()
            .and_then(crate::telemetry::trace::root_of)
            .or_else(crate::telemetry::trace::current);
        self.send_to(QueueName::Earn, &envelope)
            .await
            .map_err(ServiceError::from)?;
        Ok(Accepted {
            id: envelope.id,
            status: "accepted",
        })
    }

    /// A referral's referrer named by an alias (e.g. `shopify:7001` linked to `app-42`) is
    /// resolved here, as the member is: earn never resolves again, and the reward must reach
    /// the member the alias names, not a new account under the alias.
    pub(super) async fn canonical_referrer(
        &self,
        program: &str,
        envelope: &mut Envelope,
    ) -> Result<(), ServiceError> {
        let Some(referrer) = envelope.data.get("referrer").and_then(|r| r.as_str()) else {
            return Ok(());
        };
        let canonical = self.member_of_event(program, referrer).await?;
        envelope.data["referrer"] = serde_json::Value::String(canonical);
        Ok(())
    }

    /// The canonical id of a member named `kind:value` (e.g. `shopify:7001234`) when that
    /// identity is linked to a member, an email named in any case or with spaces as it is
    /// linked; otherwise the id as given (an email's in the form it is linked in). An id alone
    /// is the member's own: an operator naming a member merged away is told so.
    pub async fn canonical_member(
        &self,
        program: &str,
        member: &str,
    ) -> Result<String, ServiceError> {
        let plain = crate::ports::plain_identity(member);
        let Some((kind, value)) = plain.split_once(':') else {
            return Ok(plain);
        };
        if let Some(linked) = self.store.resolve_alias(program, kind, value).await? {
            return Ok(linked);
        }
        // An account opened under the form as typed (`email:Ann@...`, before emails were named
        // as they are linked) is still that account.
        if plain != member
            && self
                .store
                .load_member(program, member, &[])
                .await?
                .account
                .is_some()
        {
            return Ok(member.to_string());
        }
        Ok(plain)
    }

    /// The member an event names, as [`Services::canonical_member`]; an id alone may also be
    /// an app login that support linked to a member (one with no account of its own, as the
    /// link requires), which the brand's backend and tills name as the engine names an app
    /// identity before any link: the event is that member's.
    pub(super) async fn member_of_event(
        &self,
        program: &str,
        member: &str,
    ) -> Result<String, ServiceError> {
        if member.contains(':') {
            return self.canonical_member(program, member).await;
        }
        Ok(self
            .store
            .resolve_alias(program, crate::ports::APP_LINK, member)
            .await?
            .unwrap_or_else(|| member.to_string()))
    }
}

/// `replay`, `resumed` and `reviewed_by` are written by the operators' routes, never sent.
fn operators_fields_unset(envelope: &Envelope) -> Result<(), ServiceError> {
    let set = envelope.operators_fields();
    if set.is_empty() {
        return Ok(());
    }
    Err(ServiceError::invalid(
        "invalid-event",
        crate::envelope::operators_fields_refusal(&set),
    ))
}
