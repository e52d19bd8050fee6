//! Campaign files: saved by admins (validated against the program, every problem named by
//! its field), versioned, and read back.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{ServiceError, Services};
use crate::campaigns::{Campaign, CampaignError, CampaignKind, Effect};
use crate::domain::{Account, CampaignEffect, Program};
use crate::ports::{Assignment, MemberState};

/// Attempts at saving when another admin saves the same campaign at once.
const SAVE_ATTEMPTS: usize = 5;

impl Services {
    /// `PUT /v1/programs/{program}/campaigns/{campaign}`: 201 when new, 200 when updated.
    pub async fn put_campaign(
        &self,
        program_id: &str,
        id: &str,
        body: &[u8],
    ) -> Result<(bool, Value), ServiceError> {
        let program = self.program(program_id).await?;
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ServiceError::invalid(
                "invalid-campaign",
                "a campaign id is letters, digits, '-' and '_'",
            ));
        }
        let campaign = Campaign::from_json(body, &program).map_err(|e| match e {
            CampaignError::Syntax(_) => ServiceError::invalid("malformed-campaign", e.to_string()),
            CampaignError::Invalid(_) => ServiceError::invalid("invalid-campaign", e.to_string()),
        })?;
        let json =
            serde_json::to_string(&campaign).map_err(|e| ServiceError::Internal(e.to_string()))?;
        for _ in 0..SAVE_ATTEMPTS {
            let current = self.store.campaign(&program.id, id).await?.map(|(v, _)| v);
            if let Some(version) = self
                .store
                .put_campaign(&program.id, id, &json, current)
                .await?
            {
                self.forget_campaigns(&program.id);
                let body = json!({"campaign": id, "version": version});
                return Ok((current.is_none(), body));
            }
        }
        Err(ServiceError::Conflict {
            problem: "campaign-changed",
            detail: format!("campaign {id} kept changing; read it again and retry"),
        })
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
    /// `GET /v1/programs/{program}/me/campaigns`: the running campaigns this member is in, with
    /// their variant. The first call records the assignment (the exposure); later calls, and
    /// weight changes, do not move it.
    pub async fn my_campaigns(
        &self,
        program_id: &str,
        member: &str,
    ) -> Result<Value, ServiceError> {
        let program = self.program(program_id).await?;
        let now = self.clock.now();
        let running: Vec<_> = self
            .campaign_list(&program.id)
            .await?
            .iter()
            .filter(|(_, c)| c.running_at(now))
            .cloned()
            .collect();
        let ids: Vec<String> = running.iter().map(|(id, _)| id.clone()).collect();
        let state = self
            .store
            .load_member_with(&program.id, member, &[], &ids)
            .await?;
        let account = state
            .account
            .clone()
            .unwrap_or_else(|| Account::open(&program, member, now));
        let account = account.as_of(&program, now).account;
        let mut shown = Vec::new();
        for (id, campaign) in &running {
            let Some(variant) = variant_of(id, campaign, &program, &account, &state, now) else {
                continue;
            };
            let recorded = match state.assignments.get(id) {
                Some(a) if a.holds_for(&campaign.hash_seed, campaign.bucket_version) => a.clone(),
                _ => {
                    let assignment = Assignment {
                        campaign: id.clone(),
                        variant: campaign.variants[variant].key.clone(),
                        hash_seed: campaign.hash_seed.clone(),
                        bucket_version: campaign.bucket_version,
                        assigned_at: now,
                    };
                    self.store
                        .record_assignment(&program.id, member, &assignment)
                        .await?
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

    /// The campaigns running when a purchase happened, for the read that loads the member.
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

/// The effects on a purchase of the member's variants in the campaigns running at the time.
pub(crate) fn purchase_effects(
    campaigns: &[(String, Campaign)],
    program: &Program,
    account: &Account,
    state: &MemberState,
    at: DateTime<Utc>,
) -> Vec<CampaignEffect> {
    campaigns
        .iter()
        .filter_map(|(id, campaign)| {
            let exposed = state.assignments.contains_key(id);
            if campaign.kind == CampaignKind::OnExposure && !exposed {
                return None;
            }
            let variant = variant_of(id, campaign, program, account, state, at)?;
            match campaign.variants[variant].effect {
                Effect::Multiplier { basis_points } => Some(CampaignEffect::Multiplier {
                    campaign: id.clone(),
                    basis_points,
                }),
                _ => None,
            }
        })
        .collect()
}
