//! The paid membership's monthly reward: granted by the `notices` job as a coupon, once for
//! each month of membership, in a commit of its own per month (with its redemption and coupon).

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::json;

use super::redemptions::{coupon_code, reward_issued};
use super::{Contention, ServiceError, Services};
use crate::domain::account::Journal;
use crate::domain::schedule::job_source;
use crate::domain::{EntryKind, EventContext, Program, Source};
use crate::ports::{Commit, CommitError, Coupon, Redemption, RedemptionStatus};

impl Services {
    /// Grants the monthly reward for every month of membership that started by `date` with
    /// the benefits on and has none yet. The month's redemption id is fixed, so a grant that
    /// raced another run is refused as a duplicate; the account's count of months granted is
    /// written with it, so a later run finds nothing due.
    pub(crate) async fn grant_membership_rewards(
        &self,
        program: &Program,
        member: &str,
        date: NaiveDate,
        at: DateTime<Utc>,
        granted: &mut usize,
    ) -> Result<(), ServiceError> {
        let Some(rules) = &program.membership else {
            return Ok(());
        };
        let Some(reward) = rules
            .monthly_reward
            .as_ref()
            .and_then(|id| program.reward(id))
        else {
            return Ok(());
        };
        let mut contention = Contention::new();
        loop {
            let state = self.store.load_member(&program.id, member, &[]).await?;
            let Some(account) = state.account else {
                return Ok(());
            };
            let Some(m) = account.membership.as_ref().filter(|m| m.id == rules.id) else {
                return Ok(());
            };
            let Some(&month) = m.grants_due(rules, date).first() else {
                return Ok(());
            };
            // The member is in the id: the notice it sends is deduplicated on it, across members.
            // So is the member's count of grants: a membership ended and bought again on one
            // day starts on the same day, and its first month is another grant.
            let id = format!(
                "membership-{}-{:016x}-{}-m{month}-g{}",
                rules.id,
                crate::fingerprint::fnv1a64(member.bytes()),
                m.started_on,
                u64::from(m.grants) + 1
            );
            // The entry names the redemption it issued, as every redeem entry does.
            let ctx = EventContext::new(format!("grant:{id}"), at, at).with_source(Source {
                redemption: Some(id.clone()),
                ..job_source("notices")
            });
            let code = coupon_code();
            let mut journal = Journal::begin(&account, program, &ctx);
            if let Some(m) = journal.account.membership.as_mut() {
                m.months_granted = month + 1;
                m.grants = m.grants.saturating_add(1);
            }
            let reason = format!(
                "{}: the monthly {} (month {}), coupon {code}",
                rules.name,
                reward.name,
                month + 1
            );
            journal.post(EntryKind::Redeem, 0, 0, &reason);
            let change = journal.finish();
            let expires_at = program.coupon_expiry(at);
            let mut commit = Commit::new(program, member, Some(&account), change, at);
            commit.coupon = Some(Coupon {
                code: code.clone(),
                member: member.to_string(),
                redemption: id.clone(),
                reward: reward.id.clone(),
                expires_at,
                consumed: None,
                revoked: false,
            });
            commit.redemption = Some(Redemption {
                id: id.clone(),
                member: member.to_string(),
                reward: reward.id.clone(),
                points: 0,
                status: RedemptionStatus::Issued,
                code: Some(code.clone()),
                expires_at: Some(expires_at),
                taken: Vec::new(),
                created_at: at,
                reversal: None,
                order_ref: None,
            });
            let body = json!({
                "id": id, "status": "issued", "reward": reward.id, "points": 0, "code": code,
                "expires_at": expires_at, "membership": rules.id, "month": month + 1,
            });
            commit
                .outbox
                .push(reward_issued(program, member, &body, at));
            match self.commit(commit).await {
                Ok(()) => {
                    *granted += 1;
                    continue;
                }
                Err(CommitError::Duplicate) => return Ok(()),
                Err(
                    CommitError::VersionConflict
                    | CommitError::CouponConsumed
                    | CommitError::OverQuota,
                ) => {}
                Err(CommitError::Store(e)) => return Err(e.into()),
            }
            contention
                .again(|| {
                    format!(
                        "member {}'s membership reward",
                        crate::telemetry::member_ref(member)
                    )
                })
                .await?;
        }
    }
}
