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
        let mut envelope: Envelope = serde_json::from_slice(body).map_err(|e| {
            ServiceError::invalid(
                "malformed-event",
                format!("the body is not an event envelope: {e}"),
            )
        })?;
        parse_earn_event(&envelope, &program)
            .map_err(|e| ServiceError::invalid(e.problem, e.detail))?;
        program
            .check_occurred_at(envelope.occurred_at, self.clock.now())
            .map_err(|e| ServiceError::invalid("event-out-of-bounds", e.to_string()))?;
        envelope.member = self.canonical_member(&program.id, &envelope.member).await?;
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

    /// The canonical id of a member named `kind:value` (e.g. `shopify:7001234`) when that
    /// identity is linked to a member; otherwise the id as given.
    pub async fn canonical_member(
        &self,
        program: &str,
        member: &str,
    ) -> Result<String, ServiceError> {
        let Some((kind, value)) = member.split_once(':') else {
            return Ok(member.to_string());
        };
        Ok(self
            .store
            .resolve_alias(program, kind, value)
            .await?
            .unwrap_or_else(|| member.to_string()))
    }
}
