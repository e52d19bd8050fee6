//! Suspending a member (`POST .../members/{m}/suspend` and `/resume`, `loyalty member suspend
//! | resume`): while suspended, the member's events wait parked (nothing is earned) and nothing
//! can be redeemed; on resume they are applied, or cancelled if the operator says so (kept as
//! rejected events with the reason; a cancel is final, no replay applies them).

use serde::{Deserialize, Serialize};

use super::{Contention, ServiceError, Services};
use crate::domain::{Account, Program, Resumption, Suspension};
use crate::envelope::Envelope;
use crate::ports::{Commit, CommitError, OutboxMessage, QueueName, RejectedEvent};

/// Where a suspended member's events wait, among the parked events.
pub fn parking_key(member: &str) -> String {
    format!("suspended#{member}")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuspendRequest {
    reason: String,
}

/// The message written with a resume's lift, on the earn queue: its consumer applies or
/// cancels the events that waited, so that a resume interrupted after the lift still
/// finishes (the lift alone would leave them parked, with nothing to send them).
pub const MEMBER_RESUMED: &str = "member.resumed";

/// What a resume decided, carried by its [`MEMBER_RESUMED`] message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resumed {
    pub events: Waiting,
    pub reason: String,
    pub by: String,
}

/// What becomes of the events that waited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Waiting {
    #[default]
    Apply,
    Cancel,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeRequest {
    reason: String,
    #[serde(default)]
    events: Waiting,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SuspensionReport {
    pub member: String,
    pub suspended: Option<Suspension>,
    /// On resume: the waiting events sent to be applied, and those cancelled.
    pub applied: usize,
    pub cancelled: usize,
}

fn reason_of(reason: &str) -> Result<String, ServiceError> {
    super::operator_reason(reason, "invalid-reason")
}

impl Services {
    /// `POST .../suspend` with `{"reason"}`. Suspending a suspended member keeps the first
    /// suspension.
    pub async fn suspend_request(
        &self,
        program: &str,
        member: &str,
        by: &str,
        body: &[u8],
    ) -> Result<SuspensionReport, ServiceError> {
        let (request, _): (SuspendRequest, _) = super::redemptions::parse(body, "invalid-reason")?;
        self.suspend(program, member, &request.reason, by).await
    }

    /// `POST .../resume` with `{"reason", "events": "apply" | "cancel"}`.
    pub async fn resume_request(
        &self,
        program: &str,
        member: &str,
        by: &str,
        body: &[u8],
    ) -> Result<SuspensionReport, ServiceError> {
        // Not "invalid-reason": the body's other field (`events`) may be the one at fault.
        let (request, _): (ResumeRequest, _) = super::redemptions::parse(body, "invalid-resume")?;
        self.resume(program, member, &request.reason, request.events, by)
            .await
    }

    pub async fn suspend(
        &self,
        program: &str,
        member: &str,
        reason: &str,
        by: &str,
    ) -> Result<SuspensionReport, ServiceError> {
        // Checked here, where the CLI's call and the HTTP route's meet.
        let reason = reason_of(reason)?;
        let program = self.program(program).await?;
        let suspension = Suspension {
            reason,
            by: by.to_string(),
            at: self.clock.now(),
        };
        let (suspended, _) = self
            .set_suspension(&program, member, Some(suspension), None)
            .await?;
        tracing::info!(program = %program.id, member = %crate::telemetry::member_ref(member), "member suspended");
        Ok(report(member, suspended, 0, 0))
    }

    /// Suspends (`Some`) or resumes (`None`) a member, conditionally on the account's version;
    /// a member already in that state is left as it is. Returns the suspension now in force,
    /// and whether this call changed it. A lift writes `resumed`'s message in its commit.
    async fn set_suspension(
        &self,
        program: &Program,
        member: &str,
        wanted: Option<Suspension>,
        resumed: Option<&Resumed>,
    ) -> Result<(Option<Suspension>, bool), ServiceError> {
        let mut contention = Contention::new();
        loop {
            let now = self.clock.now();
            let account = self.suspendable(&program.id, member).await?;
            if account.suspended.is_some() == wanted.is_some() {
                return Ok((account.suspended, false));
            }
            let mut after = account.clone();
            after.suspended = wanted.clone();
            after.resumed = resumed.map(|r| Resumption {
                by: r.by.clone(),
                at: now,
                cancelled: r.events == Waiting::Cancel,
            });
            let change = crate::domain::Change::unchanged(after);
            let mut commit = Commit::new(program, member, Some(&account), change, now);
            if let (Some(resumed), Some(lifted)) = (resumed, &account.suspended) {
                let message = resumed_message(program, member, lifted, resumed)?;
                commit = commit.and_send(vec![message]);
            }
            match self.commit(commit).await {
                Ok(()) => return Ok((wanted, true)),
                Err(CommitError::Store(e)) => return Err(e.into()),
                Err(_) => {}
            }
            contention
                .again(|| format!("member {}", crate::telemetry::member_ref(member)))
                .await?;
        }
    }

    /// Lifts a suspension with the message that applies or cancels the events that waited
    /// (their count is answered). Resuming a member who is not suspended deals at once with
    /// any event left waiting (one parked as the lift committed).
    pub async fn resume(
        &self,
        program: &str,
        member: &str,
        reason: &str,
        events: Waiting,
        by: &str,
    ) -> Result<SuspensionReport, ServiceError> {
        let reason = reason_of(reason)?;
        let program = self.program(program).await?;
        let waiting = self
            .store
            .parked(&program.id, &parking_key(member))
            .await?
            .len();
        let resumed = Resumed {
            events,
            reason,
            by: by.to_string(),
        };
        let (_, lifted) = self
            .set_suspension(&program, member, None, Some(&resumed))
            .await?;
        tracing::info!(program = %program.id, member = %crate::telemetry::member_ref(member), "member resumed");
        let (applied, cancelled) = match (lifted, events) {
            (true, Waiting::Apply) => (waiting, 0),
            (true, Waiting::Cancel) => (0, waiting),
            // Nothing waits: nothing to decide either way (a lift long done, asked again).
            (false, _) if waiting == 0 => (0, 0),
            (false, _) => {
                self.refuse_other_choice(&program.id, member, events)
                    .await?;
                self.release_waiting(&program.id, member, &resumed.reason, events, by)
                    .await?
            }
        };
        Ok(report(member, None, applied, cancelled))
    }

    /// Refuses a resume of a member no longer suspended, while events still wait, that asks the
    /// other way than the lift did: they are being dealt with as that lift decided (a resume sent at the same
    /// moment as another one, or after it), and deciding some of them the other way would
    /// split them. Suspend the member again to decide otherwise.
    async fn refuse_other_choice(
        &self,
        program: &str,
        member: &str,
        events: Waiting,
    ) -> Result<(), ServiceError> {
        let account = self.suspendable(program, member).await?;
        let Some(lift) = account.resumed else {
            return Ok(());
        };
        if lift.cancelled == (events == Waiting::Cancel) {
            return Ok(());
        }
        let (done, asked) = match lift.cancelled {
            true => ("cancelled", "applied"),
            false => ("applied", "cancelled"),
        };
        Err(ServiceError::Conflict {
            problem: "resumed-otherwise",
            detail: format!(
                "{member} was resumed by {} at {}, its waiting events {done}: they are not {asked} now (suspend the member again to decide otherwise)",
                lift.by,
                lift.at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
        })
    }

    /// The consumer of a [`MEMBER_RESUMED`] message: releases what still waits, unless the
    /// member was suspended again since (the next resume decides for those).
    pub(crate) async fn finish_resume(
        &self,
        program: &str,
        member: &str,
        resumed: &Resumed,
    ) -> Result<usize, ServiceError> {
        let account = self.existing_account(program, member).await?;
        if account.suspended.is_some() {
            return Ok(0);
        }
        let (applied, cancelled) = self
            .release_waiting(
                program,
                member,
                &resumed.reason,
                resumed.events,
                &resumed.by,
            )
            .await?;
        Ok(applied + cancelled)
    }

    async fn release_waiting(
        &self,
        program: &str,
        member: &str,
        reason: &str,
        events: Waiting,
        by: &str,
    ) -> Result<(usize, usize), ServiceError> {
        let key = parking_key(member);
        let (mut applied, mut cancelled) = (0, 0);
        let waiting = super::in_order_of_occurrence(self.store.parked(program, &key).await?);
        for (event_id, body) in waiting {
            match events {
                Waiting::Apply => {
                    let mut envelope: Envelope = serde_json::from_str(&body).map_err(|e| {
                        ServiceError::Internal(format!("waiting event {event_id} is corrupt: {e}"))
                    })?;
                    envelope.resumed = Some(self.clock.now().timestamp_millis());
                    let message = OutboxMessage::new(QueueName::Earn, envelope);
                    self.store
                        .release_parked(program, &key, &event_id, &message)
                        .await?;
                    applied += 1;
                }
                Waiting::Cancel => {
                    let rejected = RejectedEvent {
                        program: program.to_string(),
                        event_id: event_id.clone(),
                        at: self.clock.now(),
                        reason: format!(
                            "{}{by} when {member} was resumed: {reason}",
                            super::rejections::CANCELLED_BY
                        ),
                        payload: body,
                        replays: 0,
                        replayed_at: None,
                        replayed_by: None,
                        names: Vec::new(),
                    };
                    self.store.reject(&rejected).await?;
                    // Marked before it leaves the list: a resume that stops here is carried on
                    // by its message, which finds it still waiting (the mark is written once).
                    if let Ok(envelope) = serde_json::from_str::<Envelope>(&rejected.payload) {
                        self.mark_cancelled(&envelope).await?;
                    }
                    self.store.discard_parked(program, &key, &event_id).await?;
                    cancelled += 1;
                }
            }
        }
        Ok((applied, cancelled))
    }

    async fn suspendable(&self, program: &str, member: &str) -> Result<Account, ServiceError> {
        let account = self.existing_account(program, member).await?;
        if let Some(into) = account.merged_into() {
            return Err(ServiceError::Conflict {
                problem: "member-merged",
                detail: format!("{member} was merged into {into}"),
            });
        }
        Ok(account)
    }

    /// Keeps an event of a suspended member until the member is resumed; `false` when the
    /// member was resumed between the load and the park, so that the caller applies the event
    /// now. The copy left parked is sent again by a later resume, and its marker stops it.
    pub(crate) async fn wait_for_resume(
        &self,
        program: &str,
        envelope: &Envelope,
        body: &str,
    ) -> Result<bool, ServiceError> {
        let key = parking_key(&envelope.member);
        self.store.park(program, &key, &envelope.id, body).await?;
        let account = self
            .store
            .load_member(program, &envelope.member, &[])
            .await?
            .account;
        Ok(account.is_some_and(|a| a.suspended.is_some()))
    }
}

/// The lift's message, named after the suspension it ends: a repeat of the commit sends the
/// same id, a later suspension's resume another.
fn resumed_message(
    program: &Program,
    member: &str,
    lifted: &Suspension,
    resumed: &Resumed,
) -> Result<OutboxMessage, ServiceError> {
    let at = lifted.at.timestamp_millis().to_string();
    let envelope = Envelope {
        replay: None,
        resumed: None,
        reviewed_by: None,
        trace: crate::telemetry::trace::current(),
        kind: MEMBER_RESUMED.into(),
        version: crate::envelope::ENVELOPE_VERSION,
        id: crate::ids::derived_event_id("resume", &[member, &at]),
        program: program.id.clone(),
        member: member.to_string(),
        occurred_at: lifted.at,
        data: serde_json::to_value(resumed).map_err(|e| ServiceError::Internal(e.to_string()))?,
    };
    Ok(OutboxMessage::new(QueueName::Earn, envelope))
}

fn report(
    member: &str,
    suspended: Option<Suspension>,
    applied: usize,
    cancelled: usize,
) -> SuspensionReport {
    SuspensionReport {
        member: member.to_string(),
        suspended,
        applied,
        cancelled,
    }
}
