//! Points for valuable actions: signup, reviews, shares, birthdays, referrals and custom ones.
//!
//! An action that is over its limit for the period is a recorded no-op with a reason, not an
//! error: the platform did nothing wrong by sending it. (An action the program does not reward
//! at all is refused by the earn service before it gets here, so that it can be replayed once
//! the program rewards it; here it stays a no-op.)

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate};

use super::account::{lot_expiry, Account, Change, Journal};
use super::calendar::local_date;
use super::ledger::{EntryKind, EventContext};
use super::program::{Period, Program};

fn period_key(period: Period, date: NaiveDate) -> String {
    match period {
        Period::Day => date.format("%Y-%m-%d").to_string(),
        Period::Month => date.format("%Y-%m").to_string(),
        Period::Year => format!("{:04}", date.year()),
        Period::Lifetime => "lifetime".to_string(),
    }
}

fn period_words(period: Period) -> &'static str {
    match period {
        Period::Day => "today",
        Period::Month => "this month",
        Period::Year => "this year",
        Period::Lifetime => "ever",
    }
}

impl Account {
    /// Rewards an engagement action, within the program's limit for its period.
    pub fn record_action(&self, program: &Program, action: &str, ctx: &EventContext) -> Change {
        let mut journal = Journal::begin(self, program, ctx);
        let Some(rule) = program.actions.get(action) else {
            journal.no_op = Some(format!("action {action:?} is not rewarded by this program"));
            return journal.finish();
        };
        let date = local_date(program.time_zone, ctx.occurred_at);
        if let Some((count, period)) = rule.limit {
            let key = period_key(period, date);
            let usage = journal
                .account
                .actions
                .entry(action.to_string())
                .or_default();
            let used = usage.get(&key).copied().unwrap_or(0);
            if used >= count {
                journal.no_op = Some(format!(
                    "{action} already rewarded {used} time(s) {}, the limit is {count}",
                    period_words(period)
                ));
                return journal.finish();
            }
            usage.insert(key, used + 1);
            let horizon = ctx.recorded_at - program.backdating_limit;
            prune(
                usage,
                &period_key(period, local_date(program.time_zone, horizon)),
            );
        }
        let mut source = ctx.source.clone();
        source.rule = Some(action.to_string());
        journal.ctx_source_override(source);
        credit_action(
            &mut journal,
            program,
            rule.points,
            &format!("{} points for {action}", rule.points),
        );
        journal.finish()
    }

    /// Credits points granted by a campaign or a job (`points.granted`).
    pub fn grant(
        &self,
        program: &Program,
        points: i64,
        campaign: Option<&str>,
        reason: &str,
        ctx: &EventContext,
    ) -> Change {
        let mut journal = Journal::begin(self, program, ctx);
        let mut source = ctx.source.clone();
        source.campaign = campaign.map(str::to_string);
        journal.ctx_source_override(source);
        credit_action(&mut journal, program, points, reason);
        journal.finish()
    }

    /// Records who referred this member, so that their first purchase pays both sides. Only a
    /// member who has not bought yet can be referred, and only once.
    pub fn referred_by(&self, referrer: &str) -> Change {
        let mut account = self.clone();
        let no_op = if referrer == self.member {
            Some("a member cannot refer themselves".to_string())
        } else if self.referred_by.is_some() {
            Some("the member already has a referrer".to_string())
        } else if self.purchases > 0 {
            Some("the member has already made a purchase".to_string())
        } else {
            account.referred_by = Some(referrer.to_string());
            None
        };
        Change {
            account,
            entries: Vec::new(),
            no_op,
            referrer: None,
        }
    }

    /// Pays the referrer once their referred member has made a first purchase. The reason
    /// never names the referred member: the referrer reads it in the app, and member ids are
    /// often an email or a phone number.
    pub fn reward_referrer(&self, program: &Program, ctx: &EventContext) -> Change {
        let mut journal = Journal::begin(self, program, ctx);
        match &program.referral {
            Some(rule) if rule.referrer_points > 0 => {
                let reason = format!(
                    "{} points for a referral: the member referred made a first purchase",
                    rule.referrer_points
                );
                credit_action(&mut journal, program, rule.referrer_points, &reason);
                let month = super::calendar::YearMonth::of(super::calendar::local_date(
                    program.time_zone,
                    ctx.occurred_at,
                ));
                *journal
                    .account
                    .actions
                    .entry(super::safeguards::REFERRALS_REWARDED.to_string())
                    .or_default()
                    .entry(month.to_string())
                    .or_insert(0) += 1;
            }
            _ => journal.no_op = Some("referrals are not rewarded by this program".into()),
        }
        journal.finish()
    }
}

fn credit_action(journal: &mut Journal<'_>, program: &Program, points: i64, reason: &str) {
    if points == 0 {
        journal.no_op = Some("the action is worth 0 points".into());
        return;
    }
    let expires_on = lot_expiry(program, journal.ctx.occurred_at);
    journal.credit(points, expires_on);
    journal.post(EntryKind::Earn, points, 0, reason);
}

/// Forgets the periods that ended before the backdating limit: no event can be counted in them
/// any more. Every period an event may still fall in keeps its count, so a late event meets its
/// own period's limit whatever arrived before it. Period keys sort as their dates do.
fn prune(usage: &mut BTreeMap<String, u32>, horizon: &str) {
    usage.retain(|key, _| key.as_str() >= horizon);
}
