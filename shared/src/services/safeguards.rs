//! Safeguards that need an operator: self-referrals refused with their reason, events held for
//! review over the daily earning limit (`GET .../reviews`, release or cancel), and adjustments
//! above a threshold that wait for a second operator's approval (`GET .../approvals`, approve
//! or decline). What waits is kept among the parked events, under one key per kind, so an
//! operator lists it in one read; releasing moves it into the outbox in one write.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::redemptions::Answer;
use super::{Contention, ServiceError, Services};
use crate::domain::safeguards::{identities_of, self_referral};
use crate::domain::{Account, AccountError, Change, EventContext, Program, Source};
use crate::envelope::Envelope;
use crate::ports::{
    Commit, CommitError, EventMarker, IdempotencyRecord, OutboxMessage, QueueName, RejectedEvent,
};

/// Where held events and waiting adjustments are parked.
pub const REVIEW_KEY: &str = "review";
pub const APPROVALS_KEY: &str = "approvals";
/// Where the answers of approvals decided are kept, for the Idempotency-Key they were asked
/// with: a retry after the decision gets it, not a new request for approval. They last as long
/// as any answer kept for a key; those older are removed as the next decision is kept.
pub const DECIDED_KEY: &str = "approvals-decided";

/// The answer an approval asked for with an Idempotency-Key came to.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Decided {
    request_hash: String,
    status: u16,
    answer: serde_json::Value,
    /// Absent on answers kept before they were dated: those count as expired.
    #[serde(default)]
    decided_at: Option<DateTime<Utc>>,
}

impl Decided {
    /// Its key no longer names it: a request sent with the key again is a new one.
    fn expired(&self, now: DateTime<Utc>) -> bool {
        self.decided_at
            .is_none_or(|at| now - at > chrono::Duration::days(super::redemptions::KEY_DAYS))
    }
}

/// An event held over the daily limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldEvent {
    pub id: String,
    pub member: String,
    pub reason: String,
    pub held_at: DateTime<Utc>,
    pub event: Envelope,
}

/// An adjustment waiting for a second operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAdjustment {
    pub id: String,
    pub member: String,
    pub points: i64,
    pub reason: String,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    /// With an Idempotency-Key, the digest of the request it was sent with: a retry with the
    /// same key and request gets the same answer, another request with the key 422.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_hash: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: String,
}

fn not_waiting(what: &str, id: &str) -> ServiceError {
    ServiceError::NotFound {
        problem: "not-waiting",
        detail: format!("no {what} {id:?} is waiting (released, cancelled or never held)"),
    }
}

fn reason_in(body: &[u8]) -> Result<String, ServiceError> {
    let (request, _): (ReasonBody, _) = super::redemptions::parse(body, "invalid-reason")?;
    super::operator_reason(&request.reason, "invalid-reason")
}

/// The id of an adjustment kept for approval, from its operator and Idempotency-Key.
fn approval_id(by: &str, key: &str) -> String {
    format!(
        "appr-{:016x}",
        crate::fingerprint::fnv1a64(format!("{by}\n{key}").bytes())
    )
}

fn waiting_answer(pending: &PendingAdjustment) -> Answer {
    Answer {
        status: 202,
        body: json!({"id": pending.id, "status": "pending_approval", "points": pending.points, "member": pending.member}),
    }
}

impl Services {
    /// Why a referral is the new member referring themselves, if it is.
    pub(crate) async fn self_referral(
        &self,
        program: &str,
        referee: &str,
        referrer: &str,
    ) -> Result<Option<String>, ServiceError> {
        let mine = self.store.member_file(program, referee).await?;
        let theirs = self.store.member_file(program, referrer).await?;
        if let Some(reason) = self_referral(
            &identities_of(referee, &mine.aliases),
            &identities_of(referrer, &theirs.aliases),
        ) {
            return Ok(Some(reason));
        }
        // Two members referring each other would each be paid twice for one pair.
        let referrer_s = self.store.load_member(program, referrer, &[]).await?;
        let named_back = referrer_s
            .account
            .is_some_and(|a| a.referred_by.as_deref() == Some(referee));
        Ok(named_back.then(|| {
            "the referrer was referred by this member: two members cannot refer each other".into()
        }))
    }

    pub(crate) async fn hold_for_review(
        &self,
        program: &str,
        envelope: &Envelope,
        reason: &str,
    ) -> Result<(), ServiceError> {
        tracing::warn!(
            program,
            event_id = crate::telemetry::event_ref(&envelope.id),
            reason,
            "event held for review"
        );
        let held = HeldEvent {
            id: envelope.id.clone(),
            member: envelope.member.clone(),
            reason: reason.to_string(),
            held_at: self.clock.now(),
            event: envelope.clone(),
        };
        let body =
            serde_json::to_string(&held).map_err(|e| ServiceError::Internal(e.to_string()))?;
        self.store
            .park(program, REVIEW_KEY, &envelope.id, &body)
            .await?;
        Ok(())
    }

    /// `GET .../reviews`: the events held over the daily limit, oldest first.
    pub async fn held_events(&self, program: &str) -> Result<Vec<HeldEvent>, ServiceError> {
        let program = self.program(program).await?;
        let mut held = Vec::new();
        for (id, body) in self.store.parked(&program.id, REVIEW_KEY).await? {
            held.push(
                serde_json::from_str::<HeldEvent>(&body).map_err(|e| {
                    ServiceError::Internal(format!("held event {id} is corrupt: {e}"))
                })?,
            );
        }
        held.sort_by_key(|h| h.held_at);
        Ok(held)
    }

    async fn held_event(&self, program: &str, id: &str) -> Result<HeldEvent, ServiceError> {
        self.held_events(program)
            .await?
            .into_iter()
            .find(|h| h.id == id)
            .ok_or_else(|| not_waiting("held event", id))
    }

    /// `POST .../reviews/{id}/release`: the event is applied, past the limit, once.
    pub async fn release_held(
        &self,
        program: &str,
        id: &str,
        by: &str,
    ) -> Result<HeldEvent, ServiceError> {
        let mut held = self.held_event(program, id).await?;
        held.event.reviewed_by = Some(by.to_string());
        let message = OutboxMessage::new(QueueName::Earn, held.event.clone());
        // Released or cancelled by another operator since it was read: this release did nothing.
        if !self
            .store
            .release_parked(program, REVIEW_KEY, id, &message)
            .await?
        {
            return Err(not_waiting("held event", id));
        }
        tracing::info!(
            program,
            event_id = crate::telemetry::event_ref(id),
            by,
            "held event released"
        );
        Ok(held)
    }

    /// `POST .../reviews/{id}/cancel` with `{"reason"}`: the event never earns; it is kept
    /// among the rejected events with the reason.
    pub async fn cancel_held(
        &self,
        program: &str,
        id: &str,
        by: &str,
        body: &[u8],
    ) -> Result<HeldEvent, ServiceError> {
        // What is named must exist before what is asked of it is read (404 before 400).
        let held = match self.held_event(program, id).await {
            Ok(held) => held,
            Err(e) => {
                // A cancel that stopped after taking the event off the list, before marking
                // it as taken: asked again, it finishes that.
                if let Some(cancelled) = self
                    .store
                    .rejected_event(program, id)
                    .await?
                    .filter(|r| r.reason.starts_with(super::rejections::CANCELLED_BY))
                {
                    if let Ok(event) = serde_json::from_str::<Envelope>(&cancelled.payload) {
                        self.mark_cancelled(&event).await?;
                    }
                }
                return Err(e);
            }
        };
        let reason = reason_in(body)?;
        let payload = serde_json::to_string(&held.event)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        // Kept among the rejected events first, so that an event cancelled is never lost
        // without its record, then taken off the list.
        let mut rejected = RejectedEvent {
            program: program.to_string(),
            event_id: id.to_string(),
            at: self.clock.now(),
            reason: format!(
                "{}{by} after review: {reason} ({})",
                super::rejections::CANCELLED_BY,
                held.reason
            ),
            payload,
            replays: 0,
            replayed_at: None,
            replayed_by: None,
            names: Vec::new(),
        };
        let before = self.store.rejected_event(program, id).await?;
        self.store.reject(&rejected).await?;
        if !self.store.discard_parked(program, REVIEW_KEY, id).await? {
            // Another operator decided on it since it was read: a cancel's record kept by then
            // is put back; else (released: it earned, and a replay would change nothing, its
            // marker being on the member) the record says no more than that.
            match before {
                Some(theirs) => self.store.reject(&theirs).await?,
                None => {
                    rejected.reason = format!(
                        "another operator decided on it before {by}'s cancel ({})",
                        held.reason
                    );
                    self.store.reject(&rejected).await?;
                }
            }
            return Err(not_waiting("held event", id));
        }
        self.mark_cancelled(&held.event).await?;
        Ok(held)
    }

    /// An adjustment above the program's threshold: kept until a second operator approves it.
    pub(crate) async fn request_approval(
        &self,
        program: &str,
        member: &str,
        points: i64,
        reason: &str,
        by: &str,
        key: Option<(&str, &str)>,
    ) -> Result<Answer, ServiceError> {
        // With an Idempotency-Key, a retry names the same request.
        let id = match key {
            Some((key, _)) => approval_id(by, key),
            None => format!("appr-{}", uuid::Uuid::new_v4().simple()),
        };
        if let Some((key, hash)) = key {
            if let Some(earlier) = self.earlier_approval(program, by, key, hash).await? {
                return Ok(earlier);
            }
        }
        let pending = PendingAdjustment {
            id: id.clone(),
            member: member.to_string(),
            points,
            reason: reason.to_string(),
            requested_by: by.to_string(),
            requested_at: self.clock.now(),
            request_hash: key.map(|(_, hash)| hash.to_string()),
        };
        let body =
            serde_json::to_string(&pending).map_err(|e| ServiceError::Internal(e.to_string()))?;
        self.store.park(program, APPROVALS_KEY, &id, &body).await?;
        Ok(waiting_answer(&pending))
    }

    /// Deletes the adjustments waiting for approval that name one of `members` (an erasure):
    /// their reasons may name the person, and approved after the erasure they would credit
    /// the id's next holder. Returns how many went.
    pub(crate) async fn forget_approvals(
        &self,
        program: &str,
        members: &[String],
    ) -> Result<usize, ServiceError> {
        let mut forgotten = 0;
        for (id, body) in self.store.parked(program, APPROVALS_KEY).await? {
            // One unreadable request is not a reason to keep the others.
            let names = serde_json::from_str::<PendingAdjustment>(&body)
                .is_ok_and(|p| members.contains(&p.member));
            if names {
                self.store
                    .discard_parked(program, APPROVALS_KEY, &id)
                    .await?;
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }

    /// The answer to an adjustment whose Idempotency-Key was given before to one kept for
    /// approval: that request's answer (waiting, or as decided), or 422 when this request is
    /// another. Asked by every adjustment with a key, above the threshold or not: a key is one
    /// request whichever way its first use went.
    pub(crate) async fn earlier_approval(
        &self,
        program: &str,
        by: &str,
        key: &str,
        hash: &str,
    ) -> Result<Option<Answer>, ServiceError> {
        let id = approval_id(by, key);
        let reused = || ServiceError::Unprocessable {
            problem: "idempotency-key-reused",
            detail: format!("Idempotency-Key {key:?} was used with a different request"),
        };
        if let Some(waiting) = self.waiting_adjustment(program, &id).await? {
            if waiting.request_hash.as_deref() != Some(hash) {
                return Err(reused());
            }
            return Ok(Some(waiting_answer(&waiting)));
        }
        match self.decided(program, &id).await? {
            Some(decided) if decided.request_hash != hash => Err(reused()),
            Some(decided) => Ok(Some(Answer {
                status: decided.status,
                body: decided.answer,
            })),
            None => Ok(None),
        }
    }

    /// `GET .../approvals`: adjustments waiting for a second operator, oldest first.
    pub async fn pending_adjustments(
        &self,
        program: &str,
    ) -> Result<Vec<PendingAdjustment>, ServiceError> {
        let program = self.program(program).await?;
        let mut pending = Vec::new();
        for (id, body) in self.store.parked(&program.id, APPROVALS_KEY).await? {
            pending.push(
                serde_json::from_str::<PendingAdjustment>(&body).map_err(|e| {
                    ServiceError::Internal(format!("pending adjustment {id} is corrupt: {e}"))
                })?,
            );
        }
        pending.sort_by_key(|p| p.requested_at);
        Ok(pending)
    }

    async fn pending_adjustment(
        &self,
        program: &str,
        id: &str,
    ) -> Result<PendingAdjustment, ServiceError> {
        self.waiting_adjustment(program, id)
            .await?
            .ok_or_else(|| not_waiting("adjustment", id))
    }

    /// The decision on an approval asked for with an Idempotency-Key, if one was made.
    async fn decided(&self, program: &str, id: &str) -> Result<Option<Decided>, ServiceError> {
        let Some((_, body)) = self
            .store
            .parked(program, DECIDED_KEY)
            .await?
            .into_iter()
            .find(|(decided, _)| decided == id)
        else {
            return Ok(None);
        };
        let decided: Decided = serde_json::from_str(&body).map_err(|e| {
            ServiceError::Internal(format!("decided approval {id} is corrupt: {e}"))
        })?;
        Ok(Some(decided).filter(|d| !d.expired(self.clock.now())))
    }

    /// Keeps the answer an approval came to, when it was asked for with an Idempotency-Key;
    /// before the waiting request goes, so that a retry always finds one or the other.
    async fn keep_decision(
        &self,
        program: &str,
        pending: &PendingAdjustment,
        status: u16,
        answer: &serde_json::Value,
    ) -> Result<(), ServiceError> {
        let Some(request_hash) = pending.request_hash.clone() else {
            return Ok(());
        };
        let now = self.clock.now();
        let decided = Decided {
            request_hash,
            status,
            answer: answer.clone(),
            decided_at: Some(now),
        };
        let body =
            serde_json::to_string(&decided).map_err(|e| ServiceError::Internal(e.to_string()))?;
        self.forget_expired_decisions(program, now).await?;
        self.store
            .park(program, DECIDED_KEY, &pending.id, &body)
            .await?;
        Ok(())
    }

    /// Removes the answers whose keys have expired (an unreadable one too: nothing could use it).
    async fn forget_expired_decisions(
        &self,
        program: &str,
        now: DateTime<Utc>,
    ) -> Result<(), ServiceError> {
        for (id, body) in self.store.parked(program, DECIDED_KEY).await? {
            let expired = serde_json::from_str::<Decided>(&body).map_or(true, |d| d.expired(now));
            if expired {
                self.store.discard_parked(program, DECIDED_KEY, &id).await?;
            }
        }
        Ok(())
    }

    async fn waiting_adjustment(
        &self,
        program: &str,
        id: &str,
    ) -> Result<Option<PendingAdjustment>, ServiceError> {
        // Only this one is read: another waiting request that does not decode is no reason to
        // refuse this one (every adjustment with a key asks).
        let Some((_, body)) = self
            .store
            .parked(program, APPROVALS_KEY)
            .await?
            .into_iter()
            .find(|(waiting, _)| waiting == id)
        else {
            return Ok(None);
        };
        serde_json::from_str(&body)
            .map(Some)
            .map_err(|e| ServiceError::Internal(format!("waiting approval {id} is corrupt: {e}")))
    }

    /// `POST .../approvals/{id}/approve`: a second operator applies it, once.
    pub async fn approve_adjustment(
        &self,
        program_id: &str,
        id: &str,
        by: &str,
    ) -> Result<Answer, ServiceError> {
        let program = self.program(program_id).await?;
        let pending = self.pending_adjustment(&program.id, id).await?;
        if pending.requested_by == by {
            return Err(ServiceError::Forbidden {
                problem: "same-operator",
                detail: "an adjustment is approved by another operator than the one who asked"
                    .into(),
            });
        }
        let member = pending.member.as_str();
        let effect = approval_effect(&pending);
        let mut contention = Contention::new();
        let balance = loop {
            let now = self.clock.now();
            let state = self.store.load_member(&program.id, member, &[]).await?;
            let account = match state.account.clone() {
                Some(account) => account,
                None => self.opened_for(&program, &pending, now).await?,
            };
            // Merged or erased since it was asked for: refused as a direct adjustment is.
            self.refuse_closed_named(&program.id, &account).await?;
            let ctx = EventContext::new(format!("adjust-{effect}"), now, now).with_source(Source {
                admin: Some(pending.requested_by.clone()),
                rule: Some(format!("approved-by:{by}")),
                ..Source::default()
            });
            let reason = format!("{} (approved by {by})", pending.reason);
            let change = account
                .adjust(&program, pending.points, &reason, &ctx)
                .map_err(|e| match e {
                    AccountError::InsufficientPoints { .. } => ServiceError::Conflict {
                        problem: "insufficient-points",
                        detail: e.to_string(),
                    },
                    other => ServiceError::invalid("invalid-adjustment", other.to_string()),
                })?;
            let balance = change.account.balance;
            let mut commit = Commit {
                marker: Some(EventMarker {
                    source: "approval".into(),
                    event_id: effect.clone(),
                }),
                ..Commit::new(&program, member, state.account.as_ref(), change, now)
            };
            // Approved: it counts towards the requester's day, within the requester's limit
            // (two operators otherwise adjust any amount in a day, a request at a time).
            super::redemptions::count_for_operator(
                &mut commit,
                &program,
                &pending.requested_by,
                pending.points,
                program.safeguards.operator_daily_points.unwrap_or(i64::MAX),
            );
            match self.commit(commit).await {
                Ok(()) => break balance,
                Err(CommitError::Duplicate) => {
                    if self.declined(&program.id, &pending).await? {
                        return Err(already_declined(id));
                    }
                    break self
                        .store
                        .load_member(&program.id, member, &[])
                        .await?
                        .account
                        .map_or(0, |a| a.balance);
                }
                // It stays waiting: approved on a later day, it fits the requester's limit
                // (one that fits no day is said so: decline it).
                Err(CommitError::OverQuota) => {
                    super::redemptions::refuse_past_any_day(&program, pending.points)?;
                    return Err(ServiceError::Conflict {
                        problem: "operator-daily-limit",
                        detail: format!(
                            "{} points would take {}'s adjustments of the day past the daily limit of {}: approve it another day",
                            pending.points.saturating_abs(),
                            pending.requested_by,
                            program.safeguards.operator_daily_points.unwrap_or(i64::MAX)
                        ),
                    });
                }
                Err(CommitError::Store(e)) => return Err(e.into()),
                Err(_) => {}
            }
            contention
                .again(|| format!("member {}", crate::telemetry::member_ref(member)))
                .await?;
        };
        let body =
            json!({"id": id, "points": pending.points, "balance": balance, "approved_by": by});
        self.keep_decision(&program.id, &pending, 201, &body)
            .await?;
        self.store
            .discard_parked(&program.id, APPROVALS_KEY, id)
            .await?;
        tracing::info!(program = %program.id, id, by, "adjustment approved");
        Ok(Answer { status: 201, body })
    }

    /// Takes the request's effect for a decline, in the member's own conditional write: the
    /// approval writes the same marker with its points, so of an approval and a decline made
    /// at the same moment exactly one is applied, and the other is refused (before, a decline
    /// that checked just before the approval's write answered "declined" for points the member
    /// then had). The decline's record, written with it, tells the two apart afterwards. A
    /// member merged or erased meanwhile takes no approval any more: nothing to claim.
    async fn claim_decline(
        &self,
        program_id: &str,
        pending: &PendingAdjustment,
    ) -> Result<(), ServiceError> {
        let program = self.program(program_id).await?;
        let member = pending.member.as_str();
        let mut contention = Contention::new();
        loop {
            let now = self.clock.now();
            let state = self.store.load_member(&program.id, member, &[]).await?;
            // A member with no account is not opened by a decline (a mistyped id would become
            // a member): an approval at that very moment opens it, a race this leaves open.
            let Some(account) = state.account.clone() else {
                return Ok(());
            };
            if super::redemptions::refuse_closed(&account).is_err() {
                return Ok(());
            }
            let effect = approval_effect(pending);
            let commit = Commit {
                marker: Some(EventMarker {
                    source: "approval".into(),
                    event_id: effect.clone(),
                }),
                idempotency: Some(IdempotencyRecord {
                    principal: DECLINED_BY.into(),
                    key: effect,
                    request_hash: String::new(),
                    status: 200,
                    response: String::new(),
                    expires_at: now + chrono::Duration::days(DECLINE_KEPT_DAYS),
                }),
                ..Commit::new(
                    &program,
                    member,
                    state.account.as_ref(),
                    Change::unchanged(account),
                    now,
                )
            };
            match self.commit(commit).await {
                Ok(()) => return Ok(()),
                Err(CommitError::Duplicate) if self.declined(&program.id, pending).await? => {
                    return Ok(())
                }
                // Approved and applied, though not yet recorded as such (the approver's run
                // stopped after its write, or is about to record it).
                Err(CommitError::Duplicate) => {
                    return Err(ServiceError::Conflict {
                        problem: "already-approved",
                        detail: format!(
                            "adjustment {} was approved and applied; approve it again to record the decision",
                            pending.id
                        ),
                    })
                }
                Err(CommitError::Store(e)) => return Err(e.into()),
                Err(_) => {}
            }
            contention
                .again(|| format!("member {}", crate::telemetry::member_ref(member)))
                .await?;
        }
    }

    /// The account an approval opens for a member that has none, as a direct adjustment
    /// does; refused when the member was erased after the request was made (the erasure is
    /// the newer decision: an approval then would credit the erased id, its request waiting
    /// where the erasure could not tell it named the member).
    async fn opened_for(
        &self,
        program: &Program,
        pending: &PendingAdjustment,
        now: DateTime<Utc>,
    ) -> Result<Account, ServiceError> {
        let account = self.opened_account(program, &pending.member, now).await?;
        if account
            .erased_before
            .is_some_and(|at| at >= pending.requested_at)
        {
            return Err(ServiceError::Conflict {
                problem: "member-erased",
                detail: format!(
                    "the member was erased after adjustment {} was asked for; nothing is written",
                    pending.id
                ),
            });
        }
        Ok(account)
    }

    /// Whether a decline took the request's effect (its record is there).
    async fn declined(
        &self,
        program: &str,
        pending: &PendingAdjustment,
    ) -> Result<bool, ServiceError> {
        Ok(self
            .store
            .idempotency_record(program, DECLINED_BY, &approval_effect(pending))
            .await?
            .is_some())
    }

    /// `POST .../approvals/{id}/decline` with `{"reason"}`: it is dropped, and said so in the
    /// logs; nothing was written to the member.
    pub async fn decline_adjustment(
        &self,
        program: &str,
        id: &str,
        by: &str,
        body: &[u8],
    ) -> Result<PendingAdjustment, ServiceError> {
        let pending = self.pending_adjustment(program, id).await?;
        let reason = reason_in(body)?;
        self.claim_decline(program, &pending).await?;
        let answer = json!({"id": id, "status": "declined", "points": pending.points,
            "member": pending.member, "declined_by": by, "reason": reason});
        self.keep_decision(program, &pending, 200, &answer).await?;
        self.store
            .discard_parked(program, APPROVALS_KEY, id)
            .await?;
        tracing::info!(program, id, by, reason = %crate::telemetry::redact(&reason), "adjustment declined");
        Ok(pending)
    }
}

/// The record a decline leaves with its claim (see [`Services::claim_decline`]).
const DECLINED_BY: &str = "approval-declined";
/// How long the record of a decline is kept: longer than any request waits for a decision.
const DECLINE_KEPT_DAYS: i64 = 400;

fn already_declined(id: &str) -> ServiceError {
    ServiceError::Conflict {
        problem: "already-declined",
        detail: format!("adjustment {id} was declined; nothing was written to the member"),
    }
}

/// The effect of one request for approval: a key used again once its decision expired names
/// the same id, and its adjustment is another one.
fn approval_effect(pending: &PendingAdjustment) -> String {
    format!("{}-{}", pending.id, pending.requested_at.timestamp_millis())
}
