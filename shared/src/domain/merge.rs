//! Merging two members who are one person (a POS member known by phone and the app's member).
//!
//! A merge is two changes, each one conditional write of one account, so that it is the same on
//! every store: `merge_out` empties the other member into a snapshot kept on its own account
//! (and marks it merged), and `merge_in` adds that snapshot to the survivor. The second change is
//! written under a marker named after the other member, so that running it again (a retry, the
//! relayed message, a second request) adds nothing. Between the two, the points are on neither
//! balance but in the snapshot: nothing can spend them and nothing is lost.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::account::{Account, AccountError, Change, Journal, Profile};
use super::ledger::{EntryKind, EventContext};
use super::program::Program;

/// What became of a member merged into another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merged {
    pub into: String,
    pub at: DateTime<Utc>,
    pub reason: String,
    pub by: String,
    /// The account as it was when merged (settled): what the survivor receives.
    pub snapshot: Box<Account>,
}

impl Account {
    /// The survivor this member was merged into, if it was.
    pub fn merged_into(&self) -> Option<&str> {
        self.merged.as_ref().map(|m| m.into.as_str())
    }

    /// Empties this member into a snapshot for `into`. Refused while a checkout holds points
    /// (the shop would capture or void a hold that has moved).
    pub fn merge_out(
        &self,
        program: &Program,
        into: &str,
        reason: &str,
        by: &str,
        ctx: &EventContext,
    ) -> Result<Change, AccountError> {
        if let Some(already) = self.merged_into() {
            return Err(AccountError::Invalid(format!(
                "{} was merged into {already} already",
                self.member
            )));
        }
        let mut journal = Journal::begin(self, program, ctx);
        if !journal.account.holds.is_empty() {
            return Err(open_hold(&self.member));
        }
        let snapshot = journal.account.clone();
        let account = &mut journal.account;
        account.lots = Default::default();
        account.debt = 0;
        account.balance = 0;
        account.pending.clear();
        account.qualifying.clear();
        account.profile = Profile::default();
        account.merged = Some(Merged {
            into: into.to_string(),
            at: ctx.recorded_at,
            reason: reason.to_string(),
            by: by.to_string(),
            snapshot: Box::new(snapshot.clone()),
        });
        journal.post(
            EntryKind::Merge,
            -snapshot.balance,
            -snapshot.pending_points(),
            &format!("Merged into {into}: {reason}"),
        );
        Ok(journal.finish())
    }

    /// Adds a merged member's snapshot: its lots with their own expiry dates, pending points
    /// with their release dates, qualifying history, the higher tier (until its own review),
    /// engagement counts (so a limit is not paid twice) and what the profile lacks.
    pub fn merge_in(
        &self,
        program: &Program,
        other: &Merged,
        ctx: &EventContext,
    ) -> Result<Change, AccountError> {
        // A hold the survivor opened since the first step stays as it is: its points left the
        // lots when it was taken, and go back to them (or stay spent) whatever arrives here.
        // Refusing would strand the other's points, already out of its account, until then.
        let from = &other.snapshot;
        let mut journal = Journal::begin(self, program, ctx);
        let account = &mut journal.account;
        // What the survivor held before: the other's notices hold only for what comes from it.
        let own_days: std::collections::BTreeSet<chrono::NaiveDate> =
            account.lots.iter().map(|l| l.expires_on).collect();
        let own_tier = account.tier.clone();
        let own_membership = account.membership.is_some();
        for share in from.lots.iter() {
            account.lots.add(share.expires_on, share.points);
        }
        account.debt += from.debt;
        // One member's lots pay the other's debt, soonest-expiring first, as a credit pays a
        // debt before it makes a lot: an account never holds both, or the lots would expire
        // while the debt stayed. Only lots still usable pay: an ended one expires below.
        let today = super::calendar::local_date(program.time_zone, ctx.recorded_at);
        let paid: i64 = account
            .lots
            .take_usable(account.debt, today)
            .iter()
            .map(|s| s.points)
            .sum();
        account.debt -= paid;
        account.balance = account.lots.total() - account.debt;
        account.pending.extend(from.pending.iter().cloned());
        for (month, measure) in &from.qualifying {
            super::tiers::add_measure(account, *month, *measure);
        }
        let rank = |id: &str| program.tier(id).map_or(0, |(i, _)| i);
        if rank(&from.tier.id) > rank(&account.tier.id) {
            account.tier = from.tier.clone();
        }
        for (action, periods) in &from.actions {
            let mine = account.actions.entry(action.clone()).or_default();
            for (period, count) in periods {
                *mine.entry(period.clone()).or_insert(0) += count;
            }
        }
        // The day's earnings too: the daily limit is the person's, not each account's.
        for (day, points) in &from.earned_days {
            let mine = account.earned_days.entry(*day).or_insert(0);
            *mine = mine.saturating_add(*points);
        }
        account.purchases += from.purchases;
        account.remember_categories(from.categories.iter().map(String::as_str));
        // A notice the other was sent holds for the survivor only where its subject is the
        // other's alone: a lot ending a day the survivor had none, the tier taken from it, its
        // membership. Otherwise the survivor's own points or review would go unannounced.
        let took_tier = account.tier != own_tier;
        let kept = from.notified.iter().filter(|key| {
            let (kind, day) = key.rsplit_once(':').unwrap_or((key.as_str(), ""));
            match kind {
                "expiring" => day
                    .parse::<chrono::NaiveDate>()
                    .is_ok_and(|d| !own_days.contains(&d)),
                "downgrade" => took_tier,
                _ => !own_membership,
            }
        });
        account.notified.extend(kept.cloned().collect::<Vec<_>>());
        account.joined_on = account.joined_on.min(from.joined_on);
        account.last_purchase_at = account.last_purchase_at.max(from.last_purchase_at);
        // A paid membership goes with the person.
        account.merge_membership(program.membership.as_ref(), from.membership.as_ref(), today);
        // One person now: a referral between the two (or the members merged into either) is
        // a self-referral, and pays neither side.
        let person: Vec<&str> = std::iter::once(account.member.as_str())
            .chain(account.merged_from.iter().map(String::as_str))
            .chain(std::iter::once(from.member.as_str()))
            .chain(from.merged_from.iter().map(String::as_str))
            .collect();
        let is_self =
            |referrer: &Option<String>| referrer.as_deref().is_some_and(|r| person.contains(&r));
        if is_self(&account.referred_by) {
            account.referred_by = None;
            account.referral_due = None;
        }
        if account.referred_by.is_none() && !is_self(&from.referred_by) {
            account.referred_by = from.referred_by.clone();
            account.referral_due = from.referral_due.clone();
        } else if from.referred_by.is_some()
            && !is_self(&from.referred_by)
            && from.referral_due.is_none()
            && from.purchases > 0
        {
            // The other's referral was paid (its first order kept): one person is referred
            // once, so the survivor's, still waiting for its first order, pays nothing more.
            account.referral_due = None;
        }
        if account.profile.birthday.is_none() {
            account.profile.birthday = from.profile.birthday.clone();
            account.profile.birthday_set_on = from.profile.birthday_set_on;
        }
        if account.profile.anniversary.is_none() {
            account.profile.anniversary = from.profile.anniversary;
            account.profile.anniversary_set_on = from.profile.anniversary_set_on;
        }
        // The members merged into the other come along: erasing this one reaches them too.
        for member in from.merged_from.iter().chain(std::iter::once(&from.member)) {
            if !account.merged_from.contains(member) {
                account.merged_from.push(member.clone());
            }
        }
        journal.post(
            EntryKind::Merge,
            from.balance,
            from.pending_points(),
            &format!("Merged from {}: {}", from.member, other.reason),
        );
        // Pending points that matured, or lots that ended, while in transit.
        journal.settle(program, ctx.recorded_at);
        super::limits::check_account(&journal.account)
            .map_err(|e| AccountError::Invalid(e.to_string()))?;
        Ok(journal.finish())
    }
}

fn open_hold(member: &str) -> AccountError {
    AccountError::Invalid(format!(
        "{member} has points held for a checkout; capture or void the hold first"
    ))
}
