//! Rejected events for operators: listed with their reasons, and replayed once the program
//! is mended. A replay goes back to the earn queue with the event's own id, so an event can
//! never take effect twice however often it is replayed; one refused again stays listed with
//! its new reason.

use serde::Serialize;
use serde_json::Value;

use super::members::page_limit;
use super::{ServiceError, Services};
use crate::envelope::Envelope;
use crate::ports::{parse_rejected_cursor, OutboxMessage, QueueName, RejectedEvent};

/// A rejected event as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RejectedView {
    pub id: String,
    /// The event's type and member, when the payload is an envelope.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub member: Option<String>,
    pub reason: String,
    pub rejected_at: chrono::DateTime<chrono::Utc>,
    /// `rejected`, or `replayed` (waiting for, or past, its new attempt).
    pub status: &'static str,
    pub replays: u32,
    pub replayed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The operator of the last replay.
    pub replayed_by: Option<String>,
    /// The payload as JSON, or as text when it is not JSON.
    pub payload: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RejectedList {
    pub events: Vec<RejectedView>,
    pub next_cursor: Option<String>,
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replayed {
    pub id: String,
    pub replay: u32,
    pub status: &'static str,
}

fn view(event: RejectedEvent) -> RejectedView {
    let payload = serde_json::from_str::<Value>(&event.payload)
        .unwrap_or_else(|_| Value::String(event.payload.clone()));
    let field = |name: &str| {
        payload
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    RejectedView {
        kind: field("type"),
        member: field("member"),
        id: event.event_id,
        reason: event.reason,
        rejected_at: event.at,
        status: if event.replayed_at.is_some() {
            "replayed"
        } else {
            "rejected"
        },
        replays: event.replays,
        replayed_at: event.replayed_at,
        replayed_by: event.replayed_by,
        payload,
    }
}

fn not_found(program: &str, id: &str) -> ServiceError {
    ServiceError::NotFound {
        problem: "rejected-event-not-found",
        detail: format!("program {program} has no rejected event {id:?}"),
    }
}

/// How the record of an event an operator cancelled begins (held for review, or waiting while
/// its member was suspended): such an event is marked as taken and never replayed.
pub(crate) const CANCELLED_BY: &str = "cancelled by ";

impl Services {
    /// `GET .../rejected-events`: newest first, a page at a time.
    pub async fn rejected_events(
        &self,
        program: &str,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<RejectedList, ServiceError> {
        let program = self.program(program).await?;
        let limit = page_limit(limit)?;
        // A cursor names the time of a rejection already listed: never one ahead of now (the
        // store would walk day by day towards it).
        let ahead = self.clock.now() + chrono::Duration::days(1);
        if let Some(c) =
            cursor.filter(|c| parse_rejected_cursor(c).is_none_or(|(at, _)| at > ahead))
        {
            return Err(ServiceError::invalid(
                "invalid-cursor",
                format!("cursor {c:?} was not issued by this API"),
            ));
        }
        let page = self.store.rejected_page(&program.id, limit, cursor).await?;
        Ok(RejectedList {
            events: page.events.into_iter().map(view).collect(),
            next_cursor: page.next_cursor,
        })
    }

    pub async fn rejected_event(
        &self,
        program: &str,
        id: &str,
    ) -> Result<RejectedView, ServiceError> {
        let program = self.program(program).await?;
        match self.store.rejected_event(&program.id, id).await? {
            Some(event) => Ok(view(event)),
            None => Err(not_found(&program.id, id)),
        }
    }

    /// `POST .../rejected-events/{id}/replay`: the event goes back to the earn queue, written
    /// with the mark of its replay in one write and relayed like any outbox message.
    pub async fn replay_rejected(
        &self,
        program: &str,
        id: &str,
        by: &str,
    ) -> Result<Replayed, ServiceError> {
        let program = self.program(program).await?;
        let event = self
            .store
            .rejected_event(&program.id, id)
            .await?
            .ok_or_else(|| not_found(&program.id, id))?;
        // A cancel is final: the event was marked as taken, so that no delivery of it earns
        // (a replay would be told it is a duplicate). Points meant after all are an adjustment.
        if event.reason.starts_with(CANCELLED_BY) {
            return Err(ServiceError::Conflict {
                problem: "event-cancelled",
                detail: format!("rejected event {id:?} was cancelled by an operator, which is final; adjust the member's points instead"),
            });
        }
        let mut envelope: Envelope =
            serde_json::from_str(&event.payload).map_err(|e| ServiceError::Unprocessable {
                problem: "not-replayable",
                detail: format!(
                    "the rejected payload is not an event envelope ({e}); it cannot be replayed"
                ),
            })?;
        let replay = event.replays + 1;
        envelope.replay = Some(replay);
        // Back to the queue whose consumer takes it: a tier check (or an audit) rejected by
        // tier-recalc (its program missing then) would be refused again by earn.
        let queue = match envelope.kind.as_str() {
            crate::envelope::TIER_CHECK | super::audit::AUDIT_REQUESTED => QueueName::Tier,
            _ => QueueName::Earn,
        };
        let message = OutboxMessage::new(queue, envelope);
        let mark = crate::ports::ReplayMark {
            number: replay,
            at: self.clock.now(),
            by: by.to_string(),
        };
        if !self
            .store
            .replay_rejected(&program.id, id, &mark, &message)
            .await?
        {
            return Err(ServiceError::Conflict {
                problem: "replayed-meanwhile",
                detail: format!("rejected event {id:?} was replayed by someone else meanwhile; look at it again"),
            });
        }
        tracing::info!(program = %program.id, event_id = crate::telemetry::event_ref(id), replay, by, "rejected event replayed");
        Ok(Replayed {
            id: id.to_string(),
            replay,
            status: "queued",
        })
    }
}
