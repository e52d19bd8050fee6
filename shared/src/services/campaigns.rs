//! Campaign files: saved by admins (validated against the program, every problem named by
//! its field), versioned, and read back.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{Expected, ServiceError, Services};
use crate::campaigns::{Campaign, CampaignError, CampaignKind, Effect, Goal};
use crate::domain::{Account, CampaignEffect, Program};
use crate::envelope::{Envelope, ENVELOPE_VERSION};
use crate::ports::{
    counter_shard, Assignment, AssignmentWrite, CounterAdd, MemberState, OutboxMessage, QueueName,
};
use crate::report::VariantCounts;

/// How many running campaigns may overlap: each adds an assignment and a counter to a
/// purchase's commit, which also holds the account, entries, marker, orders and outbox.
pub const MAX_OVERLAPPING_CAMPAIGNS: usize = 30;

/// Who an assignment is for: the member, and whether its account was there when read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Assignee<'a> {
    pub member: &'a str,
    pub seen: bool,
    /// The member's assignment as read, made under an earlier seed or bucket version, if any.
    pub earlier: Option<&'a Assignment>,
}

impl Services {
    /// `PUT /v1/programs/{program}/campaigns/{campaign}`: 201 when new, 200 when updated.
    pub async fn put_campaign(
        &self,
        program_id: &str,
        id: &str,
        body: &[u8],
    ) -> Result<(bool, Value), ServiceError> {
        self.put_campaign_expecting(program_id, id, body, Expected::Any)
            .await
    }

    /// [`Services::put_campaign`] on condition that the saved version is `expected`: starting
    /// or stopping a campaign never overwrites what another operator saved meanwhile.
    pub async fn put_campaign_expecting(
        &self,
        program_id: &str,
        id: &str,
        body: &[u8],
        expected: Expected,
    ) -> Result<(bool, Value), ServiceError> {
        let program = self.program(program_id).await?;
        crate::ids::IdKind::Campaign.check(id)?;
        let what = format!("campaign {id}");
        super::require_object(body, "malformed-campaign")?;
        let campaign = Campaign::from_json(body, &program).map_err(|e| match e {
            CampaignError::Syntax(_) => ServiceError::invalid("malformed-campaign", e.to_string()),
            CampaignError::Invalid(ref errors) => ServiceError::InvalidFields {
                problem: "invalid-campaign",
                detail: e.to_string(),
                errors: errors.clone(),
            },
        })?;
        // The body was checked above: a file that could never be saved is 400 whatever is
        // saved; the precondition is checked on the version the write is conditional on.
        let mut campaign = campaign;
        let mut contention = super::Contention::new();
        loop {
            let read = self.store.campaign(&program.id, id).await?;
            let current = read.as_ref().map(|(v, _)| *v);
            expected.check(current, &what)?;
            let before: Option<Campaign> = read
                .as_ref()
                .and_then(|(_, json)| Campaign::from_stored(json).ok());
            // Other processes hold the list up to its cache's life: a stop takes effect when
            // every one of them has read it, so that a purchase's effect does not depend on
            // which process took it.
            campaign.stamp_stop(
                before.as_ref(),
                self.clock.now() + super::campaign_cache_life(),
            );
            campaign
                .stamp_randomisation(before.as_ref())
                .map_err(|error| ServiceError::InvalidFields {
                    problem: "invalid-campaign",
                    detail: format!("campaign is invalid: {}: {}", error.field, error.message),
                    errors: vec![error],
                })?;
            // A stop only shortens the window: it is never refused for the overlap.
            let stopping = campaign.status == crate::campaigns::CampaignStatus::Stopped
                && before
                    .as_ref()
                    .is_some_and(|b| b.status == crate::campaigns::CampaignStatus::Running);
            if !stopping {
                self.check_overlap(&program.id, id, &campaign).await?;
            }
            let json = serde_json::to_string(&campaign)
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
            if let Some(version) = self
                .store
                .put_campaign(&program.id, id, &json, current)
                .await?
            {
                self.forget_campaigns(&program.id);
                let body = json!({"campaign": id, "version": version});
                return Ok((current.is_none(), body));
            }
            contention.again(|| format!("campaign {id}")).await?;
        }
    }

    /// `GET /v1/programs/{program}/campaigns`: every campaign with its status and window,
    /// newest start first.
    pub async fn campaigns_overview(&self, program_id: &str) -> Result<Value, ServiceError> {
        let program = self.program(program_id).await?;
        let mut campaigns = Vec::new();
        for (id, json) in self.store.campaigns(&program.id).await? {
            let campaign = super::parse_stored_campaign(&id, &json)?;
            campaigns.push((
                campaign.start,
                json!({
                    "id": id,
                    "name": campaign.name,
                    "kind": campaign.kind,
                    "status": campaign.status,
                    "start": campaign.start,
                    "end": campaign.end,
                    "goal": campaign.goal,
                    "variants": campaign.variants.len(),
                }),
            ));
        }
        campaigns.sort_by_key(|c| std::cmp::Reverse(c.0));
        let campaigns: Vec<Value> = campaigns.into_iter().map(|(_, c)| c).collect();
        Ok(json!({"program": program.id, "campaigns": campaigns}))
    }

    /// `GET /v1/programs/{program}/campaigns/{campaign}`.
    pub async fn campaign(&self, program_id: &str, id: &str) -> Result<Value, ServiceError> {
        let program = self.program(program_id).await?;
        let (version, json) =
            self.store
                .campaign(&program.id, id)
                .await?
                .ok_or_else(|| ServiceError::NotFound {
                    problem: "unknown-campaign",
                    detail: format!("program {} has no campaign {id:?}", program.id),
                })?;
        let mut body: Value = serde_json::from_str(&json)
            .map_err(|e| ServiceError::Internal(format!("stored campaign {id} is corrupt: {e}")))?;
        body["id"] = json!(id);
        body["version"] = json!(version);
        Ok(body)
    }
}

impl Services {
    /// `GET /v1/programs/{program}/campaigns/{campaign}/report`: the variants' counters with
    /// uplifts, the sample-ratio check and a verdict.
    pub async fn campaign_report(
        &self,
        program_id: &str,
        id: &str,
    ) -> Result<crate::report::Report, ServiceError> {
        let program = self.program(program_id).await?;
        // The parsed, cached list every purchase uses; a report may be 30 s behind an edit.
        let campaign = self
            .campaign_list(&program.id)
            .await?
            .iter()
            .find(|(c, _)| c == id)
            .map(|(_, c)| c.clone())
            .ok_or_else(|| ServiceError::NotFound {
                problem: "unknown-campaign",
                detail: format!("program {} has no campaign {id:?}", program.id),
            })?;
        // The members assigned since it was last re-randomised.
        let counts = self
            .store
            .campaign_counts(&program.id, &campaign.current_counters(id))
            .await?;
        let weights: Vec<(String, f64)> = campaign
            .variants
            .iter()
            .map(|v| (v.key.clone(), v.weight))
            .collect();
        let denominator = match campaign.kind {
            CampaignKind::Broadcast => "audience",
            CampaignKind::OnExposure => "exposed",
        };
        Ok(crate::report::analyse(&crate::report::ReportInput {
            campaign: id,
            name: &campaign.name,
            denominator,
            weights: &weights,
            counts: &counts,
        }))
    }
}

impl Services {
    /// `GET /v1/programs/{program}/me/campaigns`: the running campaigns this member is in, with
    /// their variant. The first call records the assignment (the exposure); later calls, and
    /// weight changes, do not move it. Asked with a member token issued at `token_issued_at`
    /// (if it says): a first exposure of a name erased since is refused
    /// ([`super::erasure::refuse_token_before_erasure`]).
    pub async fn my_campaigns(
        &self,
        program_id: &str,
        member: &str,
        token_issued_at: Option<DateTime<Utc>>,
    ) -> Result<Value, ServiceError> {
        // Cold, the campaigns are read beside the program: the member's read needs both.
        let program = self.program_with_campaigns(program_id).await?;
        let now = self.clock.now();
        let (running, state) = self.running_with(&program.id, member, now).await?;
        // Being erased: nothing is assigned to the person any more. Merged into another (a
        // login still leading here while the merge moves its links): the survivor is the
        // person, assigned on its own, and a grant here would reach it a second time.
        if state
            .account
            .as_ref()
            .is_some_and(|a| a.erased.is_some() || a.merged_into().is_some())
        {
            return Ok(json!({ "campaigns": [] }));
        }
        let seen = state.account.is_some();
        let account = state
            .account
            .clone()
            .unwrap_or_else(|| Account::open(&program, member, now));
        let account = account.as_of(&program, now).account;
        let mut shown = Vec::new();
        // Read only for a member with no account, and only once an assignment is to be made.
        let mut caller_checked = seen;
        for (id, campaign) in &running {
            let Some(variant) = variant_of(id, campaign, &program, &account, &state, now) else {
                continue;
            };
            let recorded = match state.assignments.get(id) {
                Some(a) if a.holds_for(&campaign.hash_seed, campaign.bucket_version) => a.clone(),
                _ => {
                    if !std::mem::replace(&mut caller_checked, true) {
                        self.refuse_erased_caller(&program.id, member, token_issued_at)
                            .await?;
                    }
                    let to = Assignee {
                        member,
                        seen,
                        earlier: state.assignments.get(id),
                    };
                    match self
                        .assign(&program.id, to, id, campaign, variant, now)
                        .await?
                    {
                        Some(recorded) => recorded,
                        // Its erasure began since the read.
                        None => return Ok(json!({ "campaigns": [] })),
                    }
                }
            };
            let Some(v) = campaign.variants.iter().find(|v| v.key == recorded.variant) else {
                continue;
            };
            shown.push(json!({
                "campaign": id, "name": campaign.name, "variant": v.key, "offer": v.effect,
                "ends_at": campaign.end, "assigned_at": recorded.assigned_at,
            }));
        }
        Ok(json!({ "campaigns": shown }))
    }

    /// The campaigns running at `now` and the member with their assignments in them. A list
    /// older than one of those assignments (cached before a save that re-randomised) is read
    /// again, once, rather than take the member back to an earlier randomisation.
    async fn running_with(
        &self,
        program: &str,
        member: &str,
        now: DateTime<Utc>,
    ) -> Result<(Vec<(String, Campaign)>, MemberState), ServiceError> {
        let mut again = true;
        loop {
            let running: Vec<_> = self
                .campaign_list(program)
                .await?
                .iter()
                .filter(|(_, c)| c.running_at(now))
                .cloned()
                .collect();
            let ids: Vec<String> = running.iter().map(|(id, _)| id.clone()).collect();
            let state = self
                .store
                .load_member_with(program, member, &[], &ids)
                .await?;
            if !std::mem::replace(&mut again, false) || !list_behind(&running, &state, now) {
                return Ok((running, state));
            }
            self.forget_campaigns(program);
        }
    }

    /// Records a member's assignment (counted once, in the same write). A variant that grants
    /// points writes the grant to the outbox in that write too, relayed to earn afterwards:
    /// nothing is lost between the two, and its id is fixed per campaign and member, so a grant
    /// relayed again (a retry, a new seed) is applied once. `None` when the member's erasure
    /// began since it was read: no assignment and no grant.
    pub(crate) async fn assign(
        &self,
        program: &str,
        to: Assignee<'_>,
        id: &str,
        campaign: &Campaign,
        variant: usize,
        now: DateTime<Utc>,
    ) -> Result<Option<Assignment>, ServiceError> {
        let member = to.member;
        let v = &campaign.variants[variant];
        let grant = grant_message(program, member, id, campaign, variant, now)
            .filter(|_| !granted_before(to.earlier, campaign));
        let wanted = Assignment::new(
            id,
            &v.key,
            &campaign.hash_seed,
            campaign.bucket_version,
            now,
        )
        .replacing(to.earlier)
        .counted_as(campaign.current_counters(id));
        let recorded = self
            .store
            .record_assignment(program, member, &wanted, to.seen, grant.as_ref())
            .await?;
        Ok(recorded.map(|(stored, _)| stored))
    }

    /// The campaigns running when a purchase happened, for the read that loads the member.
    /// A purchase records its effect in every campaign running when it happened, in its one
    /// commit (two items each, of the 100 a transaction holds): a campaign that would run
    /// alongside too many others is refused when it is saved, not when purchases fail. Windows
    /// that overlap at all count, which is stricter than counting any one instant.
    async fn check_overlap(
        &self,
        program: &str,
        id: &str,
        campaign: &Campaign,
    ) -> Result<(), ServiceError> {
        // A stopped one still counts purchases made before its stop, delivered late.
        let Some(mine) = campaign.counts_until() else {
            return Ok(());
        };
        let alongside = self
            .campaign_list(program)
            .await?
            .iter()
            .filter(|(other, c)| {
                other != id
                    && c.counts_until().is_some_and(|until| campaign.start < until)
                    && c.start < mine
            })
            .count();
        if alongside + 1 > MAX_OVERLAPPING_CAMPAIGNS {
            return Err(ServiceError::Conflict {
                problem: "too-many-running-campaigns",
                detail: format!(
                    "{alongside} running campaigns overlap this one's window; at most {MAX_OVERLAPPING_CAMPAIGNS} may run at once (stop one, or move a window)"
                ),
            });
        }
        Ok(())
    }

    pub(crate) async fn campaigns_at(
        &self,
        program: &str,
        at: DateTime<Utc>,
    ) -> Result<Vec<(String, Campaign)>, ServiceError> {
        Ok(self
            .campaign_list(program)
            .await?
            .iter()
            .filter(|(_, c)| c.running_at(at))
            .cloned()
            .collect())
    }
}

/// The grant a variant that grants points sends when a member is assigned to it, in the
/// assignment's own write (whichever writes it first: the app, the tick or a purchase). Its id
/// is fixed per campaign and member, so relaying it again is applied once.
pub(crate) fn grant_message(
    program: &str,
    member: &str,
    id: &str,
    campaign: &Campaign,
    variant: usize,
    now: DateTime<Utc>,
) -> Option<OutboxMessage> {
    let v = &campaign.variants[variant];
    let Effect::Grant { points } = &v.effect else {
        return None;
    };
    Some(OutboxMessage::new(
        QueueName::Earn,
        Envelope {
            replay: None,
            resumed: None,
            reviewed_by: None,
            trace: crate::telemetry::trace::current(),
            kind: "points.granted".into(),
            version: ENVELOPE_VERSION,
            // ':' is in no campaign id: `welcome` and member `kr-1` never make the id of
            // `welcome-kr` and member `1`.
            id: crate::ids::derived_event_id("grant", &[&format!("{id}:{member}")]),
            program: program.to_string(),
            member: member.to_string(),
            occurred_at: now,
            data: grant_data(id, campaign, &v.key, *points),
        },
    ))
}

/// A grant's data: its points, and where its campaign counts them (the randomisation its
/// assignment is made in, when not the first).
fn grant_data(id: &str, campaign: &Campaign, variant: &str, points: i64) -> Value {
    let mut data = json!({
        "points": points, "campaign": id, "variant": variant,
        "reason": format!("{}: {points} points", campaign.name),
    });
    let counters = campaign.current_counters(id);
    if counters != id {
        data["counted_in"] = json!(counters);
    }
    data
}

/// Whether a member re-bucketed (a new seed or bucket version) was granted the campaign's
/// points under its earlier assignment: its variant, by key, is one that grants. A campaign
/// grants a member once, whatever its seeds (grant ids made before `grant-{campaign}:{member}`
/// had another form, so the id alone no longer tells).
fn granted_before(earlier: Option<&Assignment>, campaign: &Campaign) -> bool {
    earlier.is_some_and(|a| {
        campaign
            .variants
            .iter()
            .any(|v| v.key == a.variant && matches!(v.effect, Effect::Grant { .. }))
    })
}

/// The variant index a member has in a campaign: a recorded assignment that still holds, or
/// for broadcast campaigns (intent to treat) the one hashing gives, if the audience admits them.
/// `on_exposure` campaigns count only members who have seen them (recorded).
fn variant_of(
    id: &str,
    campaign: &Campaign,
    program: &Program,
    account: &Account,
    state: &MemberState,
    now: DateTime<Utc>,
) -> Option<usize> {
    if let Some(a) = state.assignments.get(id) {
        if a.holds_for(&campaign.hash_seed, campaign.bucket_version) {
            return campaign.variants.iter().position(|v| v.key == a.variant);
        }
    }
    if !campaign.admits(program, account, now) {
        return None;
    }
    campaign.assign(&account.member)
}

/// A member's part in one campaign running at a purchase: the variant, and the assignment as
/// stored (`None` for a broadcast member not recorded yet).
pub(crate) struct Part<'a> {
    pub id: &'a str,
    pub campaign: &'a Campaign,
    pub variant: usize,
    /// The member's assignment, if it holds for the campaign's seed and bucket version.
    pub stored: Option<&'a Assignment>,
    /// The assignment as read, whether or not it holds: the condition of the write that
    /// replaces it (one made under an earlier seed or version is replaced, never added beside).
    pub read: Option<&'a Assignment>,
}

impl Part<'_> {
    /// What the variant does to this purchase: a multiplier always, a bonus only on the first
    /// purchase after the assignment.
    pub fn effect(&self) -> Option<CampaignEffect> {
        match self.campaign.variants[self.variant].effect {
            Effect::Multiplier { basis_points } => Some(CampaignEffect::Multiplier {
                campaign: self.id.to_string(),
                basis_points,
            }),
            // Once per member in a campaign: an assignment replaced by a new seed or bucket
            // version keeps its bonus paid (`read` is the stored one, or the one it replaces).
            Effect::Bonus { points } if !self.read.is_some_and(|a| a.bonus_paid) => {
                Some(CampaignEffect::Bonus {
                    campaign: self.id.to_string(),
                    points,
                })
            }
            _ => None,
        }
    }

    /// The grant a purchase sends when it is what assigns the member (a broadcast campaign's
    /// member the tick has not reached yet) to a variant that grants points.
    pub fn grant(&self, program: &str, member: &str, at: DateTime<Utc>) -> Option<OutboxMessage> {
        if self.stored.is_some() || granted_before(self.read, self.campaign) {
            return None;
        }
        grant_message(program, member, self.id, self.campaign, self.variant, at)
    }

    /// What counting a purchase writes: the member's assignment (conditional on the one read)
    /// and the variant's counters. `eligible` is the purchase's eligible amount; `bonus_paid`
    /// whether a bonus variant's points were paid on it (something was eligible); `extra` the
    /// points the variant added.
    pub fn count_purchase(
        &self,
        member: &str,
        eligible: i64,
        bonus_paid: bool,
        extra: i64,
        at: DateTime<Utc>,
    ) -> (AssignmentWrite, CounterAdd) {
        let variant = &self.campaign.variants[self.variant];
        let before = self.stored.cloned().unwrap_or_else(|| {
            Assignment::new(
                self.id,
                &variant.key,
                &self.campaign.hash_seed,
                self.campaign.bucket_version,
                at,
            )
            .replacing(self.read)
            .counted_as(self.campaign.current_counters(self.id))
        });
        let mut after = before.clone();
        after.purchases = before.purchases.saturating_add(1);
        after.revenue = before.revenue.saturating_add(eligible);
        after.bonus_paid |=
            bonus_paid && matches!(self.effect(), Some(CampaignEffect::Bonus { .. }));
        let square = |r: i64| i128::from(r) * i128::from(r);
        let counts = VariantCounts {
            variant: variant.key.clone(),
            assigned: i64::from(self.stored.is_none()),
            // A redemption campaign converts a member who redeems, not one who buys.
            converters: i64::from(before.purchases == 0 && self.campaign.goal != Goal::Redemption),
            purchases: 1,
            revenue: eligible,
            revenue_sq: square(after.revenue) - square(before.revenue),
            points: extra,
        };
        let write = AssignmentWrite {
            assignment: after,
            expected: self.read.cloned(),
            read_revision: None,
        };
        let add = CounterAdd {
            campaign: before.counted_in().to_string(),
            shard: counter_shard(member),
            counts,
        };
        (write, add)
    }
}

/// How much earlier than its exposure a purchase may be dated and still count in an
/// on-exposure campaign: the clocks of the till or the platform and the server's differ.
const EXPOSURE_SKEW: chrono::Duration = chrono::Duration::minutes(2);

/// Whether one of the member's assignments may be of a later save than the list (a copy kept
/// at most [`super::campaign_cache_life`], read before `now`).
pub(crate) fn list_behind(
    campaigns: &[(String, Campaign)],
    state: &MemberState,
    now: DateTime<Utc>,
) -> bool {
    let read_since = later_saves_since(now);
    campaigns.iter().any(|(id, campaign)| {
        state
            .assignments
            .get(id)
            .is_some_and(|a| campaign.may_be_newer(a, read_since))
    })
}

/// The earliest a save that a copy of the campaigns kept at `now` predates could have been:
/// the copy's life, and as long again for the clocks of the processes that assigned.
pub(crate) fn later_saves_since(now: DateTime<Utc>) -> DateTime<Utc> {
    now - super::campaign_cache_life() * 2
}

/// The member's parts in the campaigns running at a purchase.
pub(crate) fn parts<'a>(
    campaigns: &'a [(String, Campaign)],
    program: &Program,
    account: &Account,
    state: &'a MemberState,
    at: DateTime<Utc>,
) -> Vec<Part<'a>> {
    campaigns
        .iter()
        .filter_map(|(id, campaign)| {
            let read = state.assignments.get(id);
            let stored = read.filter(|a| a.holds_for(&campaign.hash_seed, campaign.bucket_version));
            // Only what a member does after seeing the campaign: a purchase made before the
            // exposure (delivered after it) is neither changed nor counted. The exposure is the
            // server's time, the purchase the till's or the platform's (to the second): within
            // a couple of minutes they are taken as one moment.
            if campaign.kind == CampaignKind::OnExposure
                && stored.is_none_or(|a| a.assigned_at - EXPOSURE_SKEW > at)
            {
                return None;
            }
            let variant = variant_of(id, campaign, program, account, state, at)?;
            Some(Part {
                id,
                campaign,
                variant,
                stored,
                read,
            })
        })
        .collect()
}
