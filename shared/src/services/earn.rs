//! Processing one earn-queue or tier-queue message: load → domain → conditional commit →
//! follow-up messages.
//!
//! A message has its effect once: the event marker is written in the same transaction as the
//! effect, so a redelivery finds the marker and succeeds without effect. Bad input is permanent:
//! it is recorded as a rejected event with its reason and acknowledged, never retried.

use std::sync::Arc;

use chrono::Utc;
use serde_json::json;

use super::batch_commit::Seat;
use super::{Contention, ServiceError, Services};
use crate::domain::{Account, Change, EntryKind, EventContext, Program, Source};
use crate::envelope::{
    parse_earn_event, EarnEvent, Engagement, Envelope, ENVELOPE_VERSION, PURCHASE, TIER_CHECK,
};
use crate::ids::IdKind;
use crate::ports::{
    counter_shard, AssignmentWrite, Commit, CommitError, CounterAdd, EventMarker, MemberState,
    OutboxMessage, QueueName, RejectedEvent, StoreError,
};
use crate::report::VariantCounts;

/// Messages that follow an earn, written in its commit: a tier check when the purchase takes
/// the member past a higher tier's threshold (nothing else can: refunds lower the measure, and
/// time only lowers it; purchases released later send their own), the referrer's reward after
/// a referred member's first purchase, and a notice when the event changed the member's points
/// (the brand's integrations tell the member; an event over a limit, or a refund waiting for
/// its order, has nothing to tell). Their ids derive from the event's, so relaying them twice
/// has no second effect.
fn follow_ups(
    envelope: &Envelope,
    upgrade_due: bool,
    referrer: Option<String>,
    changed: bool,
) -> Vec<OutboxMessage> {
    let mut outbox = Vec::with_capacity(3);
    if upgrade_due {
        let check = message(
            envelope,
            TIER_CHECK,
            format!("tier-check-{}", envelope.id),
            json!({}),
        );
        outbox.push(OutboxMessage::new(QueueName::Tier, check));
    }
    if let Some(referrer) = referrer {
        let mut reward = message(
            envelope,
            "engagement.recorded",
            crate::ids::digested_event_id("referral", &[&envelope.member]),
            json!({
                "action": "referral", "ref": envelope.member, "referee": envelope.member,
            }),
        );
        reward.member = referrer;
        outbox.push(OutboxMessage::new(QueueName::Earn, reward));
    }
    if changed {
        let notice = message(
            envelope,
            "points.earned",
            format!("points-earned-{}", envelope.id),
            json!({ "event": envelope.id, "type": envelope.kind }),
        );
        outbox.push(OutboxMessage::new(QueueName::Notify, notice));
    }
    outbox
}

/// What became of a message that was handled (acknowledge it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    /// The effect was committed with this many ledger entries.
    Applied { entries: usize },
    /// The event had been applied before.
    Duplicate,
    /// Recorded without effect (over a cap, not configured, parked refund), with the reason.
    NoEffect(String),
    /// Refused for good; stored as a rejected event.
    Rejected(String),
}

impl Processed {
    /// The outcome's name in logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Processed::Applied { .. } => "applied",
            Processed::Duplicate => "duplicate",
            Processed::NoEffect(_) => "no-effect",
            Processed::Rejected(_) => "rejected",
        }
    }
}

/// A failure worth retrying (the queue redelivers the message).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Retry {
    pub message: String,
    /// The store was busy or throttled: the message itself is not at fault, so a queue that
    /// can tell may retry it without counting the attempt.
    pub transient: bool,
}

impl Retry {
    pub fn failed(message: impl Into<String>) -> Self {
        Retry {
            message: message.into(),
            transient: false,
        }
    }
}

impl From<ServiceError> for Retry {
    fn from(e: ServiceError) -> Self {
        // Contention (`Busy`) counts: an account that keeps changing may be a defect.
        let transient = matches!(e, ServiceError::Unavailable(_));
        Retry {
            message: e.to_string(),
            transient,
        }
    }
}

impl From<StoreError> for Retry {
    fn from(e: StoreError) -> Self {
        let transient = e.passes();
        Retry {
            message: e.to_string(),
            transient,
        }
    }
}

/// The domain's answer for one event: the change, the order records to save, follow-ups.
struct Outcome {
    change: Change,
    orders: std::collections::BTreeMap<String, crate::domain::OrderRecord>,
    referrer: Option<String>,
    /// Campaign assignments and counters the event counts in.
    assignments: Vec<AssignmentWrite>,
    counters: Vec<CounterAdd>,
    /// Grants of the campaigns this event assigns the member to first.
    grants: Vec<OutboxMessage>,
}

/// A message's envelope and program, and for a purchase or a tier check on a cold start the
/// member's state ([`Services::read_ahead`]).
struct Opened {
    envelope: Envelope,
    program: Arc<Program>,
    ahead: Option<ReadAhead>,
}

/// A member read sent before the event was parsed, with the keys it was read under: it stands
/// for the first read only when the parsed event has the same keys and no campaign runs (whose
/// assignments it did not read).
struct ReadAhead {
    /// A purchase's marker; none for a tier check, whose marker is only written.
    marker: Option<EventMarker>,
    order_keys: Vec<String>,
    state: MemberState,
}

/// The marker and order key a purchase's envelope names, if its ids are ones the edge accepts.
fn purchase_keys(envelope: &Envelope) -> Option<(EventMarker, String)> {
    let data = &envelope.data;
    let order_id = data.get("order_id")?.as_str()?;
    let platform = match data.get("platform") {
        None | Some(serde_json::Value::Null) => "api",
        Some(platform) => platform.as_str()?,
    };
    IdKind::Order.check(order_id).ok()?;
    IdKind::Platform.check(platform).ok()?;
    let marker = EventMarker {
        source: platform.to_string(),
        event_id: envelope.id.clone(),
    };
    Some((marker, crate::envelope::order_key(platform, order_id)))
}

/// What a message needs besides its envelope.
#[derive(Clone, Copy)]
enum Needs {
    Program,
    /// The program and, for a purchase, its campaigns.
    Campaigns,
}

impl Services {
    /// Handles one earn-queue message (SQS record body or local queue delivery).
    pub async fn process_earn(&self, body: &str) -> Result<Processed, Retry> {
        self.process_earn_seated(body, None).await
    }

    /// [`Services::process_earn`], whose first commit, given a seat, goes with the other
    /// commits of its batch.
    pub(crate) async fn process_earn_seated(
        &self,
        body: &str,
        mut seat: Option<Seat<'_>>,
    ) -> Result<Processed, Retry> {
        let Opened {
            mut envelope,
            program,
            ahead,
        } = match self.open(body, Needs::Campaigns).await? {
            Ok(opened) => opened,
            Err(rejected) => return Ok(rejected),
        };
        if envelope.kind == super::merge::MEMBER_MERGE {
            return self.finish_merge(&program, &envelope).await;
        }
        if envelope.kind == super::suspension::MEMBER_RESUMED {
            return self.resumed(&program, &envelope, body).await;
        }
        let event = match parse_earn_event(&envelope, &program) {
            Ok(event) => event,
            Err(e) => return self.reject(&envelope, body, &e.to_string()).await,
        };
        if let EarnEvent::Engagement(Engagement::Referred { referrer }) = &event {
            if let Some(reason) = self
                .self_referral(&program.id, &envelope.member, referrer)
                .await
                .map_err(Retry::from)?
            {
                return self.reject(&envelope, body, &reason).await;
            }
        }
        let marker = EventMarker {
            source: event.source().to_string(),
            event_id: envelope.id.clone(),
        };
        let order_keys: Vec<String> = event.order_key().into_iter().collect();
        // A purchase earns with the campaigns running when it happened; the member's
        // assignments in them come in the same read as the account.
        let mut campaigns = match event {
            EarnEvent::Purchase { .. } => {
                self.campaigns_at(&program.id, envelope.occurred_at).await?
            }
            _ => Vec::new(),
        };
        let mut campaign_ids: Vec<String> = campaigns.iter().map(|(id, _)| id.clone()).collect();
        let mut list_read_again = false;
        let mut ahead = ahead.filter(|a| {
            a.marker.as_ref() == Some(&marker)
                && a.order_keys == order_keys
                && campaign_ids.is_empty()
        });
        let mut contention = Contention::new();
        // The first read may be a moment old (half the read units): the commit's conditions
        // (the account's version, the revisions of the order records and assignments read)
        // refuse a stale item it writes, and the read after a conflict is current. An
        // assignment it did not find is read again currently (`missed_assignments`).
        let mut current = false;
        loop {
            let now = self.clock.now();
            let mut state = match ahead.take() {
                Some(read) => read.state,
                None if !current => self
                    .store
                    .load_member_for_event_cheaply(
                        &program.id,
                        &envelope.member,
                        &marker,
                        &order_keys,
                        &campaign_ids,
                    )
                    .await
                    .map_err(Retry::from)?,
                None => self
                    .store
                    .load_member_for_event(
                        &program.id,
                        &envelope.member,
                        &marker,
                        &order_keys,
                        &campaign_ids,
                    )
                    .await
                    .map_err(Retry::from)?,
            };
            // A second delivery: its effect and its follow-ups are there (they were in its
            // commit). This read is all it costs. (Of a merged member too: its marker stayed.)
            if state.seen {
                return Ok(Processed::Duplicate);
            }
            // Whether the purchase counts in a campaign is decided outside the commit: no
            // condition guards an assignment it does not write, so one the read did not find
            // (or found from before a reset) may be there, and is read again currently.
            let missed = missed_assignments(&campaigns, &state);
            if !current && !missed.is_empty() {
                let fresh = self
                    .store
                    .load_assignments(&program.id, &envelope.member, &missed)
                    .await
                    .map_err(Retry::from)?;
                for campaign in &missed {
                    state.assignments.remove(campaign);
                    state.assignment_revisions.remove(campaign);
                }
                state.assignments.extend(fresh.assignments);
                state
                    .assignment_revisions
                    .extend(fresh.assignment_revisions);
            }
            // A list of campaigns older than one of the member's assignments (cached before a
            // save that re-randomised) is read again, once, and the member with it: the
            // purchase must not take the member back to an earlier randomisation.
            if !list_read_again && super::campaigns::list_behind(&campaigns, &state, now) {
                list_read_again = true;
                self.forget_campaigns(&program.id);
                campaigns = self.campaigns_at(&program.id, envelope.occurred_at).await?;
                campaign_ids = campaigns.iter().map(|(id, _)| id.clone()).collect();
                current = true;
                continue;
            }
            // A refund takes revenue back from the campaigns that counted its order, running or
            // not any more: their assignments are read once the order says which they are. That
            // read is current and replaces the account too, so everything below is decided on
            // it (a merge or a suspension the first read missed included); its marker is
            // guarded by the commit's condition.
            let counted_in = counted_in(&event, &state);
            if !counted_in.is_empty() {
                state = self
                    .store
                    .load_member_with(&program.id, &envelope.member, &order_keys, &counted_in)
                    .await
                    .map_err(Retry::from)?;
                current = true;
            }
            // Anything decided below outside the commit (a redirect, a wait for a resume, a
            // rejection, a hold for review) is decided on a current read: one a moment old may
            // have missed the marker of this very event, applied a moment ago, and only the
            // commit's own conditions would have caught that.
            let settled = |current: &mut bool| std::mem::replace(current, true);
            // An event for a member merged into another is the survivor's.
            if let Some(into) = state.account.as_ref().and_then(|a| a.merged_into()) {
                if !settled(&mut current) {
                    continue;
                }
                tracing::info!(program = %program.id, event_id = crate::telemetry::event_ref(&envelope.id), into = %crate::telemetry::member_ref(into), "event of a merged member");
                envelope.member = into.to_string();
                contention.redirected(|| {
                    format!("member {}", crate::telemetry::member_ref(&envelope.member))
                })?;
                continue;
            }
            // Being erased: once it is gone, an event from after the erasure makes a new member
            // (one from before is dropped, below). Not a referrer's reward: a referee's order
            // matured during the erasure names the erased member as its referrer, and would
            // make a member of that id holding points for no one.
            if state.account.as_ref().is_some_and(|a| a.erased.is_some()) {
                if matches!(
                    event,
                    EarnEvent::Engagement(Engagement::ReferrerReward { .. })
                ) {
                    return Ok(Processed::NoEffect(
                        "the referrer's personal data is being erased: no reward".into(),
                    ));
                }
                return Err(Retry::failed(format!(
                    "member {} is being erased; the event waits until that is done",
                    crate::telemetry::member_ref(&envelope.member)
                )));
            }
            // An event from before an erasure of its member's id was the erased person's (a
            // redrive, a replay, an order reconciled again): dropped, whether the id has no
            // account or one opened since (the customer came back), which remembers the
            // erasure it was opened after. Only a member with no account is looked up.
            let erased_at = match &state.account {
                Some(account) => account.erased_before,
                None => self
                    .erasure_of(&program.id, std::slice::from_ref(&envelope.member))
                    .await
                    .map_err(Retry::from)?,
            };
            state.erased_before = erased_at;
            if crate::domain::erasure::before_erasure(envelope.occurred_at, erased_at) {
                tracing::info!(program = %program.id, event_id = crate::telemetry::event_ref(&envelope.id), "event from before its member's erasure dropped");
                return Ok(Processed::NoEffect(
                    "the member's personal data was erased after this event: it makes no member again"
                        .into(),
                ));
            }
            if state
                .account
                .as_ref()
                .is_some_and(|a| a.suspended.is_some())
            {
                if !settled(&mut current) {
                    continue;
                }
                let body =
                    serde_json::to_string(&envelope).map_err(|e| Retry::failed(e.to_string()))?;
                if self.wait_for_resume(&program.id, &envelope, &body).await? {
                    return Ok(Processed::NoEffect(
                        "the member is suspended: the event waits for the resume".into(),
                    ));
                }
                // Resumed since the read: read it as it is now.
                current = true;
                continue;
            }
            if envelope.reviewed_by.is_none() && held_for_review(&event, &state) {
                return Ok(Processed::NoEffect(
                    "the order's payment is held for review: it earns when an operator releases it"
                        .into(),
                ));
            }
            let ctx = EventContext::new(envelope.id.clone(), envelope.occurred_at, now)
                .with_source(Source {
                    platform: Some(event.source().to_string()),
                    ..Source::default()
                });
            let mut outcome = match decide(&program, &envelope, &event, &state, &campaigns, &ctx) {
                Ok(outcome) => outcome,
                Err(_) if !settled(&mut current) => continue,
                Err(reason) => return self.reject(&envelope, body, &reason).await,
            };
            if let Some(reason) = count_daily(&program, &envelope, &mut outcome.change, now) {
                if !settled(&mut current) {
                    continue;
                }
                self.hold_for_review(&program.id, &envelope, &reason)
                    .await
                    .map_err(Retry::from)?;
                self.mark_held(&envelope).await.map_err(Retry::from)?;
                return Ok(Processed::NoEffect(reason));
            }
            let entries = outcome.change.entries.len();
            let no_op = outcome.change.no_op.clone();
            let upgrade_due = matches!(event, EarnEvent::Purchase { .. })
                && outcome
                    .change
                    .account
                    .check_tier(&program, &EventContext::new(envelope.id.clone(), now, now))
                    .account
                    .tier
                    .id
                    != outcome.change.account.tier.id;
            // Entries the event made, not those of time its commit also writes (releases,
            // expiries, holds returned).
            let credited = outcome.change.entries.iter().any(|e| {
                matches!(
                    e.kind,
                    EntryKind::Earn | EntryKind::Pending | EntryKind::Clawback
                )
            });
            let mut outbox = follow_ups(&envelope, upgrade_due, outcome.referrer, credited);
            outbox.extend(outcome.grants);
            let commit = Commit {
                marker: Some(marker.clone()),
                marker_order: order_keys.first().cloned(),
                // Only the records read: one written without a read has no revision to hold.
                order_revisions: state
                    .revisions_of(outcome.orders.keys().filter(|key| order_keys.contains(key))),
                orders: outcome.orders,
                assignments: state.with_revisions(outcome.assignments),
                counters: outcome.counters,
                ..Commit::new(
                    &program,
                    &envelope.member,
                    state.account.as_ref(),
                    outcome.change,
                    now,
                )
            }
            .and_send(outbox);
            let committed = match seat.take() {
                Some(seat) => seat.commit(self, commit).await,
                None => self.commit(commit).await,
            };
            match committed {
                Ok(()) => {
                    return Ok(match no_op {
                        Some(reason) if entries == 0 => Processed::NoEffect(reason),
                        _ => Processed::Applied { entries },
                    });
                }
                // The effect is there, and so are its follow-ups: they were in its commit.
                Err(CommitError::Duplicate) => return Ok(Processed::Duplicate),
                // No coupon is revoked here; a conflict of any kind means reload and retry.
                Err(
                    CommitError::VersionConflict
                    | CommitError::CouponConsumed
                    | CommitError::OverQuota,
                ) => {}
                // Refused as it is, it would be refused on every delivery, and the member's
                // later events would wait behind it until the dead letters: kept instead
                // among the rejected events, for an operator.
                Err(CommitError::Store(e @ StoreError::Unfit { .. })) => {
                    let reason = format!("the event's change cannot be written: {e}");
                    return self.reject(&envelope, body, &reason).await;
                }
                Err(CommitError::Store(e)) => return Err(Retry::from(e)),
            }
            current = true;
            contention
                .again(|| format!("member {}", crate::telemetry::member_ref(&envelope.member)))
                .await?;
        }
    }

    /// The `member.merge` message written with a merge's first step: finishes it (a merge
    /// interrupted after that step completes here; one that completed changes nothing).
    async fn finish_merge(
        &self,
        program: &Program,
        envelope: &Envelope,
    ) -> Result<Processed, Retry> {
        let Some(from) = envelope.data.get("from").and_then(|f| f.as_str()) else {
            return self
                .reject(
                    envelope,
                    &envelope.id,
                    "a member.merge message names no member",
                )
                .await;
        };
        match self.complete_merge(program, &envelope.member, from).await {
            Ok(_) => Ok(Processed::Applied { entries: 0 }),
            Err(ServiceError::Conflict { detail, .. } | ServiceError::NotFound { detail, .. }) => {
                Ok(Processed::NoEffect(detail))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Finishes a resume: the events that waited are applied or cancelled, as decided.
    async fn resumed(
        &self,
        program: &Program,
        envelope: &Envelope,
        body: &str,
    ) -> Result<Processed, Retry> {
        let resumed: super::suspension::Resumed =
            match serde_json::from_value(envelope.data.clone()) {
                Ok(resumed) => resumed,
                Err(e) => return self.reject(envelope, body, &e.to_string()).await,
            };
        match self
            .finish_resume(&program.id, &envelope.member, &resumed)
            .await
        {
            Ok(0) => Ok(Processed::NoEffect("nothing waited".into())),
            Ok(_) => Ok(Processed::Applied { entries: 0 }),
            Err(ServiceError::NotFound { detail, .. }) => Ok(Processed::NoEffect(detail)),
            Err(e) => Err(e.into()),
        }
    }

    /// Handles one `tier.check`: upgrade the member if a threshold has been crossed.
    pub async fn process_tier_check(&self, body: &str) -> Result<Processed, Retry> {
        let Opened {
            envelope,
            program,
            ahead,
        } = match self.open(body, Needs::Program).await? {
            Ok(opened) => opened,
            Err(rejected) => return Ok(rejected),
        };
        // The tier queue's consumer also runs the audits asked for through the API.
        if envelope.kind == super::audit::AUDIT_REQUESTED {
            return self
                .run_requested_audit(&program.id, &envelope)
                .await
                .map_err(Retry::from);
        }
        // Anything else on this queue was put there by hand (a redrive to the wrong queue):
        // kept among the rejected events, whose replay sends it to the earn queue.
        if envelope.kind != TIER_CHECK {
            let reason = format!(
                "a {} message on the tier queue, which takes tier checks only",
                envelope.kind
            );
            return self.reject(&envelope, body, &reason).await;
        }
        let marker = EventMarker {
            source: "tier".into(),
            event_id: envelope.id.clone(),
        };
        let mut ahead = ahead.filter(|a| a.marker.is_none() && program.id == envelope.program);
        let mut contention = Contention::new();
        loop {
            let now = self.clock.now();
            let state = match ahead.take() {
                Some(read) => read.state,
                None => self
                    .store
                    .load_member(&program.id, &envelope.member, &[])
                    .await
                    .map_err(Retry::from)?,
            };
            let Some(account) = state.account else {
                return Ok(Processed::NoEffect("no such member yet".into()));
            };
            // Its items are being deleted: a tier written now would outlive the erasure.
            if account.erased.is_some() {
                return Ok(Processed::NoEffect(
                    "the member's personal data is being erased".into(),
                ));
            }
            let ctx = EventContext::new(envelope.id.clone(), now, now);
            let change = account.check_tier(&program, &ctx);
            // Its entries may be only what time changed (releases, expiries, holds returned),
            // which is no tier change to announce: those are written by whatever comes next.
            if change.entries.is_empty() || change.account.tier.id == account.tier.id {
                return Ok(Processed::NoEffect(
                    change
                        .no_op
                        .unwrap_or_else(|| "no higher tier reached".into()),
                ));
            }
            let entries = change.entries.len();
            let notice = message(
                &envelope,
                "tier.changed",
                format!("tier-changed-{}", envelope.id),
                json!({
                    "from": account.tier.id,
                    "to": change.account.tier.id,
                    "review_date": change.account.tier.review_on,
                }),
            );
            let commit = Commit {
                marker: Some(marker.clone()),
                ..Commit::new(&program, &envelope.member, Some(&account), change, now)
            }
            .and_send(vec![OutboxMessage::new(QueueName::Notify, notice)]);
            match self.commit(commit).await {
                Ok(()) => return Ok(Processed::Applied { entries }),
                Err(CommitError::Duplicate) => return Ok(Processed::Duplicate),
                // No coupon is revoked here; a conflict of any kind means reload and retry.
                Err(
                    CommitError::VersionConflict
                    | CommitError::CouponConsumed
                    | CommitError::OverQuota,
                ) => {}
                Err(CommitError::Store(e)) => return Err(Retry::from(e)),
            }
            contention
                .again(|| format!("member {}", crate::telemetry::member_ref(&envelope.member)))
                .await?;
        }
    }

    /// Reads a message's envelope and its program; a message that has neither is rejected
    /// (the inner `Err`), since no retry can mend it.
    async fn open(&self, body: &str, needs: Needs) -> Result<Result<Opened, Processed>, Retry> {
        let envelope: Envelope = match serde_json::from_str(body) {
            Ok(e) => e,
            Err(e) => {
                let reason = format!("not an event envelope: {e}");
                // Each unreadable message is kept on its own, under an id from its bytes.
                let id = format!(
                    "unreadable-{:016x}",
                    crate::fingerprint::fnv1a64(body.bytes())
                );
                return self
                    .store_rejection(&unreadable_program(body), &id, body, &reason)
                    .await
                    .map(Err);
            }
        };
        let program = async {
            match needs {
                // A purchase earns with the campaigns running when it happened.
                Needs::Campaigns if envelope.kind == PURCHASE => {
                    self.program_with_campaigns(&envelope.program).await
                }
                _ => self.program(&envelope.program).await,
            }
        };
        let (program, ahead) =
            futures_util::future::join(program, self.read_ahead(&envelope, needs)).await;
        match program {
            Ok(program) => Ok(Ok(Opened {
                envelope,
                program,
                ahead,
            })),
            Err(ServiceError::NotFound { detail, .. }) => {
                self.reject(&envelope, body, &detail).await.map(Err)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// On a cold start (the program not cached), the member read of a purchase or a tier check
    /// is sent beside the program's: its keys come from the envelope alone. Best effort:
    /// nothing is read for ids the edge would refuse, and a failed read is left to the
    /// ordinary read after it.
    async fn read_ahead(&self, envelope: &Envelope, needs: Needs) -> Option<ReadAhead> {
        let valid = IdKind::Member.check(&envelope.member).is_ok()
            && IdKind::Event.check(&envelope.id).is_ok();
        if !valid || self.cached(&envelope.program).is_some() {
            return None;
        }
        let (marker, order_keys) = match (needs, envelope.kind.as_str()) {
            (Needs::Campaigns, PURCHASE) => {
                let (marker, order_key) = purchase_keys(envelope)?;
                (Some(marker), vec![order_key])
            }
            (Needs::Program, TIER_CHECK) => (None, Vec::new()),
            _ => return None,
        };
        let (program, member) = (&envelope.program, &envelope.member);
        let read = match &marker {
            Some(marker) => {
                self.store
                    .load_member_for_event(program, member, marker, &order_keys, &[])
                    .await
            }
            None => self.store.load_member(program, member, &[]).await,
        };
        let state = read
            .map_err(|e| tracing::debug!(error = %e, "the read ahead failed"))
            .ok()?;
        Some(ReadAhead {
            marker,
            order_keys,
            state,
        })
    }

    /// Marks an event an operator cancelled (held for review, or waiting while its member was
    /// suspended) as taken, with no effect: a platform that delivers it again (WooCommerce
    /// restates an order's payment with every change of the order) or a reconcile then finds
    /// it a duplicate. Its record among the rejected events is what an operator replays it
    /// from. A member with no account yet is left without one: nothing to mark it on.
    pub(crate) async fn mark_cancelled(&self, envelope: &Envelope) -> Result<(), ServiceError> {
        self.mark_order(envelope, false).await
    }

    /// Marks a purchase held for review on its order's record, which its next deliveries read
    /// with the member: held, they earn nothing until an operator releases it (a later day's
    /// count would otherwise let it through). Other events held have no record to mark.
    pub(crate) async fn mark_held(&self, envelope: &Envelope) -> Result<(), ServiceError> {
        self.mark_order(envelope, true).await
    }

    /// Marks an event cancelled (its marker, and its order's record), or a purchase held (its
    /// order's record alone: the event has not had its effect).
    async fn mark_order(&self, envelope: &Envelope, held: bool) -> Result<(), ServiceError> {
        let program = self.program(&envelope.program).await?;
        let Ok(event) = parse_earn_event(envelope, &program) else {
            return Ok(());
        };
        let marker = EventMarker {
            source: event.source().to_string(),
            event_id: envelope.id.clone(),
        };
        // The order's record says so too (its marker is not carried by a merge; the record
        // is): a payment cancelled or held, or a refund taken as applied.
        let order = match &event {
            EarnEvent::Purchase { purchase, .. } => Some((
                purchase.order_id.clone(),
                if held {
                    crate::domain::orders::PAYMENT_HELD
                } else {
                    crate::domain::orders::PAYMENT_CANCELLED
                }
                .to_string(),
            )),
            EarnEvent::Refund { reversal, .. } if !held => {
                Some((reversal.order_id.clone(), reversal.refund_id.clone()))
            }
            _ => None,
        };
        if held && order.is_none() {
            return Ok(());
        }
        let order_keys: Vec<String> = event.order_key().into_iter().collect();
        let mut contention = Contention::new();
        loop {
            let state = self
                .store
                .load_member_for_event(&program.id, &envelope.member, &marker, &order_keys, &[])
                .await?;
            if state.seen {
                return Ok(());
            }
            let now = self.clock.now();
            // A member whose first event is the one cancelled (a new customer's order held for
            // review) gets its account now, empty: the mark must be kept somewhere, or the
            // event's next delivery (a reconcile, a restatement) would be credited.
            let account = state
                .account
                .clone()
                .unwrap_or_else(|| Account::open(&program, &envelope.member, now));
            let mut commit = Commit::new(
                &program,
                &envelope.member,
                state.account.as_ref(),
                Change::unchanged(account),
                now,
            );
            commit.marker = (!held).then(|| marker.clone());
            if let (Some(key), Some((order_id, applied))) = (order_keys.first(), &order) {
                let mut record =
                    state
                        .orders
                        .get(key)
                        .cloned()
                        .unwrap_or_else(|| crate::domain::OrderRecord {
                            order_id: order_id.clone(),
                            ..crate::domain::OrderRecord::default()
                        });
                // Held once is enough; earned meanwhile (another delivery), nothing to hold.
                if held && (record.applied.contains(applied) || record.earned.is_some()) {
                    return Ok(());
                }
                record.applied.insert(applied.clone());
                commit.marker_order = (!held).then(|| key.clone());
                commit.orders.insert(key.clone(), record);
            }
            if self.commit_marked(commit).await? {
                return Ok(());
            }
            contention
                .again(|| format!("member {}", crate::telemetry::member_ref(&envelope.member)))
                .await?;
        }
    }

    async fn reject(
        &self,
        envelope: &Envelope,
        body: &str,
        reason: &str,
    ) -> Result<Processed, Retry> {
        self.store_rejection(&envelope.program, &envelope.id, body, reason)
            .await
    }

    async fn store_rejection(
        &self,
        program: &str,
        event_id: &str,
        body: &str,
        reason: &str,
    ) -> Result<Processed, Retry> {
        // The batch that processes the message warns of it once, in the message's span.
        tracing::debug!(
            program,
            event_id = %crate::telemetry::event_ref(event_id),
            reason = %crate::telemetry::redact(reason),
            "event rejected; kept for a replay"
        );
        let rejected = RejectedEvent {
            program: program.to_string(),
            event_id: event_id.to_string(),
            at: self.clock.now(),
            reason: reason.to_string(),
            payload: body.chars().take(64 * 1024).collect(),
            replays: 0,
            replayed_at: None,
            replayed_by: None,
            names: Vec::new(),
        };
        self.store.reject(&rejected).await.map_err(Retry::from)?;
        Ok(Processed::Rejected(reason.to_string()))
    }
}

/// Where a message that is not an envelope is kept. Its operators find it among their
/// program's rejected events when its JSON names a program by the rule (a sender that got one
/// field wrong); otherwise under a name that no program can take, as programs are named by
/// [`IdKind::Program`].
pub const UNREADABLE: &str = "_unreadable";

fn unreadable_program(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .as_ref()
        .and_then(|value| value.get("program"))
        .and_then(|program| program.as_str())
        .filter(|program| IdKind::Program.accepts(program))
        .map_or_else(|| UNREADABLE.to_string(), str::to_string)
}

fn message(cause: &Envelope, kind: &str, id: String, data: serde_json::Value) -> Envelope {
    Envelope {
        replay: None,
        resumed: None,
        reviewed_by: None,
        trace: cause
            .trace
            .as_deref()
            .and_then(crate::telemetry::trace::root_of),
        kind: kind.to_string(),
        version: ENVELOPE_VERSION,
        id,
        program: cause.program.clone(),
        member: cause.member.clone(),
        occurred_at: Utc::now().max(cause.occurred_at),
        data,
    }
}

/// Counts what the event credits towards the member's day, when the program limits it; the
/// reason to hold the event instead, if it would pass the limit. An event an operator released
/// from review, or applied when resuming a suspended member, is counted, never held again:
/// the events that waited out a suspension all arrive on the day of the resume.
/// A purchase whose order's record says its payment waits for an operator's review.
fn held_for_review(event: &EarnEvent, state: &MemberState) -> bool {
    let EarnEvent::Purchase { .. } = event else {
        return false;
    };
    event
        .order_key()
        .and_then(|key| state.orders.get(&key))
        .is_some_and(|r| {
            r.earned.is_none() && r.applied.contains(crate::domain::orders::PAYMENT_HELD)
        })
}

fn count_daily(
    program: &Program,
    envelope: &Envelope,
    change: &mut Change,
    now: chrono::DateTime<Utc>,
) -> Option<String> {
    program.safeguards.daily_points?;
    // What the event itself credits, net of what it takes back in the same change (a refund or
    // a cancellation that waited for this purchase): not what time released or paid meanwhile
    // (a matured order's referral bonus), whose entries are named after their own events.
    use crate::domain::EntryKind;
    let own = format!("{}#", envelope.id);
    let crediting: i64 = change
        .entries
        .iter()
        .filter(|e| e.id.starts_with(&own))
        .filter(|e| {
            matches!(
                e.kind,
                EntryKind::Earn | EntryKind::Pending | EntryKind::Clawback
            )
        })
        .map(|e| e.points + e.pending)
        .sum::<i64>()
        .max(0);
    let day = crate::domain::calendar::local_date(program.time_zone, now);
    let days = &mut change.account.earned_days;
    days.retain(|d, _| *d >= day.pred_opt().unwrap_or(day));
    let today = days.get(&day).copied().unwrap_or(0);
    if envelope.reviewed_by.is_none() && envelope.resumed.is_none() {
        if let Some(reason) =
            crate::domain::safeguards::over_daily_limit(program, today, crediting, day)
        {
            return Some(reason);
        }
    }
    if crediting > 0 {
        days.insert(day, today.saturating_add(crediting));
    }
    None
}

/// Applies one event to the member's state with the domain; an `Err` is a permanent reason.
fn decide(
    program: &Program,
    envelope: &Envelope,
    event: &EarnEvent,
    state: &MemberState,
    campaigns: &[(String, crate::campaigns::Campaign)],
    ctx: &EventContext,
) -> Result<Outcome, String> {
    let account = state.account.clone().unwrap_or_else(|| Account {
        erased_before: state.erased_before,
        ..Account::open(
            program,
            &envelope.member,
            ctx.occurred_at.min(ctx.recorded_at),
        )
    });
    let order_key = event.order_key();
    let order = order_key.as_ref().and_then(|k| state.orders.get(k));
    let with_order = |out: crate::domain::OrderChange| {
        let mut orders = std::collections::BTreeMap::new();
        if let Some(key) = &order_key {
            orders.insert(key.clone(), out.order);
        }
        Outcome {
            change: out.change,
            orders,
            referrer: out.referrer_to_reward,
            assignments: Vec::new(),
            counters: Vec::new(),
            grants: Vec::new(),
        }
    };
    let plain = |change: Change| Outcome {
        change,
        orders: Default::default(),
        referrer: None,
        assignments: Vec::new(),
        counters: Vec::new(),
        grants: Vec::new(),
    };
    let outcome = match event {
        EarnEvent::Purchase { purchase, .. } => {
            let parts =
                super::campaigns::parts(campaigns, program, &account, state, ctx.occurred_at);
            let effects: Vec<_> = parts.iter().filter_map(|p| p.effect()).collect();
            let earned = account
                .earn_purchase(program, order, purchase, &effects, ctx)
                .map_err(|e| e.to_string())?;
            if earned.order.earned.is_some() && !earned.order.parked.is_empty() {
                let refunds: Vec<String> = earned
                    .order
                    .parked
                    .iter()
                    .map(|r| crate::telemetry::event_ref(&r.refund_id))
                    .collect();
                tracing::warn!(order = %crate::telemetry::event_ref(&earned.order.order_id), ?refunds, "refunds that waited for this purchase cannot be applied to it (a line it does not have): kept parked on the order; delivered again, each is refused on its own");
            }
            let counted = if earned.change.entries.is_empty() {
                (Vec::new(), Vec::new())
            } else {
                let purchased = (order, purchase);
                count_purchase(program, &parts, &effects, &earned, &account, purchased, ctx)?
            };
            let mut outcome = with_order(earned);
            let counted_in: Vec<String> = counted.1.iter().map(|c| c.campaign.clone()).collect();
            if let Some(earning) = outcome
                .orders
                .values_mut()
                .next()
                .and_then(|o| o.earned.as_mut())
            {
                earning.counted_in = counted_in;
            }
            if !counted.0.is_empty() {
                // The grants go with the assignments this commit writes, as the tick's do.
                outcome.grants = parts
                    .iter()
                    .filter_map(|p| p.grant(&program.id, &envelope.member, ctx.occurred_at))
                    .collect();
            }
            (outcome.assignments, outcome.counters) = counted;
            outcome
        }
        EarnEvent::Refund { reversal, .. } => {
            let refunded = account
                .refund(program, order, reversal, ctx)
                .map_err(|e| e.to_string())?;
            let revenue = refunded.order.refunded_eligible()
                - order.map_or(0, crate::domain::OrderRecord::refunded_eligible);
            let counted = take_back_revenue(&envelope.member, &refunded.order, state, revenue);
            let mut outcome = with_order(refunded);
            (outcome.assignments, outcome.counters) = counted;
            outcome
        }
        // An action the program does not reward is refused for good, not recorded as done:
        // once the program rewards it, the event can be replayed and count.
        EarnEvent::Engagement(Engagement::Action { action, .. })
            if !program.actions.contains_key(action) =>
        {
            return Err(format!(
                "action {action:?} is not rewarded by program {}; add it to the program's actions and replay the event",
                program.id
            ));
        }
        EarnEvent::Engagement(Engagement::Action { action, .. }) => {
            plain(account.record_action(program, action, ctx))
        }
        EarnEvent::Engagement(Engagement::Referred { referrer }) => {
            plain(account.referred_by(referrer))
        }
        EarnEvent::Engagement(Engagement::ReferrerReward { .. }) => {
            let day = crate::domain::calendar::local_date(program.time_zone, ctx.occurred_at);
            if let Some(reason) = crate::domain::safeguards::referral_limit(&account, program, day)
            {
                return Err(reason);
            }
            plain(account.reward_referrer(program, ctx))
        }
        EarnEvent::Grant {
            points,
            campaign,
            variant,
            counted_in,
            reason,
        } => {
            let mut outcome =
                plain(account.grant(program, *points, campaign.as_deref(), reason, ctx));
            if let (Some(campaign), Some(variant)) = (campaign, variant) {
                if !outcome.change.entries.is_empty() {
                    outcome.counters.push(CounterAdd {
                        campaign: counted_in.clone().unwrap_or_else(|| campaign.clone()),
                        shard: counter_shard(&envelope.member),
                        counts: VariantCounts {
                            variant: variant.clone(),
                            points: *points,
                            ..VariantCounts::default()
                        },
                    });
                }
            }
            outcome
        }
    };
    // A credit that would take the account past its bounds is refused, so no later sum can
    // overflow (domain::limits).
    crate::domain::limits::check_account(&outcome.change.account)
        .map_err(|e| format!("the event is refused: {e}"))?;
    Ok(outcome)
}

/// The running campaigns in which the member's state has no assignment that holds (none, or
/// one from before the campaign's seed changed or its bucket version rose).
fn missed_assignments(
    campaigns: &[(String, crate::campaigns::Campaign)],
    state: &MemberState,
) -> Vec<String> {
    campaigns
        .iter()
        .filter(|(id, campaign)| {
            !state
                .assignments
                .get(id)
                .is_some_and(|a| a.holds_for(&campaign.hash_seed, campaign.bucket_version))
        })
        .map(|(id, _)| id.clone())
        .collect()
}

/// The campaigns that counted the order a refund is about.
fn counted_in(event: &EarnEvent, state: &MemberState) -> Vec<String> {
    let mut campaigns: Vec<String> = match event {
        EarnEvent::Refund { .. } => state
            .orders
            .values()
            .filter_map(|o| o.earned.as_ref())
            .flat_map(|e| e.counted_in.iter())
            .map(|counters| crate::ports::campaign_of_counters(counters).to_string())
            .collect(),
        _ => Vec::new(),
    };
    campaigns.sort();
    campaigns.dedup();
    campaigns
}

/// A refund's eligible amount taken back from the revenue of each campaign that counted its
/// order (the member's assignment, conditionally, and the variant's counters). A campaign
/// re-randomised since, whose member's assignment is now of another randomisation, keeps the
/// revenue in the counters that counted it: the member's revenue there is no longer kept.
fn take_back_revenue(
    member: &str,
    order: &crate::domain::OrderRecord,
    state: &MemberState,
    revenue: i64,
) -> (Vec<AssignmentWrite>, Vec<CounterAdd>) {
    let counted_in = order.earned.as_ref().map_or(&[][..], |e| &e.counted_in[..]);
    if revenue <= 0 {
        return (Vec::new(), Vec::new());
    }
    let square = |r: i64| i128::from(r) * i128::from(r);
    counted_in
        .iter()
        .filter_map(|counters| {
            let campaign = crate::ports::campaign_of_counters(counters);
            state
                .assignments
                .get(campaign)
                .filter(|a| a.counted_in() == counters)
        })
        .map(|stored| {
            let mut after = stored.clone();
            after.revenue = stored.revenue.saturating_sub(revenue);
            let add = CounterAdd {
                campaign: stored.counted_in().to_string(),
                shard: counter_shard(member),
                counts: VariantCounts {
                    variant: stored.variant.clone(),
                    revenue: -revenue,
                    revenue_sq: square(after.revenue) - square(stored.revenue),
                    ..VariantCounts::default()
                },
            };
            let write = AssignmentWrite {
                assignment: after,
                expected: Some(stored.clone()),
                read_revision: None,
            };
            (write, add)
        })
        .unzip()
}

/// Counts a purchase in the member's campaigns: for each, the assignment and counters, with
/// the points its variant added (the purchase's points less what they would be without it).
fn count_purchase(
    program: &Program,
    parts: &[super::campaigns::Part<'_>],
    effects: &[crate::domain::CampaignEffect],
    earned: &crate::domain::OrderChange,
    account: &Account,
    (order, purchase): (
        Option<&crate::domain::OrderRecord>,
        &crate::domain::Purchase,
    ),
    ctx: &EventContext,
) -> Result<(Vec<AssignmentWrite>, Vec<CounterAdd>), String> {
    let program_points =
        |change: &Change| -> i64 { change.entries.iter().map(|e| e.points + e.pending).sum() };
    let with_all = program_points(&earned.change);
    // Revenue is the eligible amount (what earns points), the same for every variant: as the
    // order's record has it, so that a membership fee that earns nothing is no revenue and a
    // refund takes back exactly what was counted.
    let gross: i64 = earned
        .order
        .earned
        .as_ref()
        .map_or(0, |e| e.lines.iter().map(|l| l.eligible).sum());
    // Refunds that arrived before the purchase were applied with it: revenue is net.
    let eligible = gross - earned.order.refunded_eligible();
    // A bonus is shared over what earns: a purchase of nothing eligible pays none, and does
    // not use it up.
    let bonus_paid = gross > 0;
    let mut writes = Vec::new();
    let mut adds = Vec::new();
    for part in parts {
        let extra = match part.effect() {
            None => 0,
            Some(mine) => {
                let others: Vec<_> = effects.iter().filter(|e| **e != mine).cloned().collect();
                let without = account
                    .earn_purchase(program, order, purchase, &others, ctx)
                    .map_err(|e| e.to_string())?;
                with_all - program_points(&without.change)
            }
        };
        let (write, add) = part.count_purchase(
            &account.member,
            eligible,
            bonus_paid,
            extra,
            ctx.occurred_at,
        );
        writes.push(write);
        adds.push(add);
    }
    Ok((writes, adds))
}
