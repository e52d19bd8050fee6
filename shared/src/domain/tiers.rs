//! Tiers: the qualifying measure, upgrades as soon as a threshold is crossed, and downgrades only
//! at the review date.
//!
//! The measure (spend or points) is kept in monthly buckets on the account, dated by when the
//! purchase happened, so that a rolling-12-months or calendar-year window is a sum over at most
//! twelve buckets and a refund takes its amount back from the month of the original purchase.

use chrono::{Datelike, NaiveDate};
use serde::Serialize;

use super::account::{Account, Change, Journal, TierStatus};
use super::calendar::{add_months, local_date, YearMonth};
use super::ledger::{EntryKind, EventContext};
use super::program::{Downgrade, Measure, Program, Review, Window};

pub(crate) fn add_measure(account: &mut Account, month: YearMonth, delta: i64) {
    if delta != 0 {
        let value = account.qualifying.entry(month).or_insert(0);
        *value = value.saturating_add(delta);
    }
}

/// Whether a month's measure counts at `date`, over the program's window.
fn in_window(program: &Program, date: NaiveDate, m: YearMonth) -> bool {
    let month = YearMonth::of(date);
    match program.tier_rules.window {
        Window::Lifetime => m <= month,
        Window::CalendarYear => m.year() == date.year() && m <= month,
        Window::Rolling12Months => m > month.minus(12) && m <= month,
    }
}

/// The qualifying measure at `date`, over the program's window.
pub fn measure_at(program: &Program, account: &Account, date: NaiveDate) -> i64 {
    account
        .qualifying
        .iter()
        .filter(|(m, _)| in_window(program, date, **m))
        .fold(0i64, |sum, (_, v)| sum.saturating_add(*v))
}

/// The last day a review on `review_on` judges: the day before it, so that a review on
/// 1 January measures the calendar year that just closed (and a rolling window the months
/// before the review's), not the first hours of the new one.
pub fn judged_through(review_on: NaiveDate) -> NaiveDate {
    review_on.pred_opt().unwrap_or(review_on)
}

/// The measure an upgrade goes by on `today`: purchases still inside their return window wait,
/// when the program says so (their grants then carry what they qualify). Once it no longer
/// says so, nothing waits: grants made before still carry their measure, and no release would
/// check the tier when they mature.
fn upgrade_measure(program: &Program, account: &Account, today: NaiveDate) -> i64 {
    if !program.tier_rules.upgrade_after_return_window {
        return measure_at(program, account, today);
    }
    let waiting: i64 = account
        .pending
        .iter()
        .filter(|g| g.month.is_none_or(|m| in_window(program, today, m)))
        .map(|g| g.qualifying)
        .sum();
    measure_at(program, account, today).saturating_sub(waiting)
}

/// The measure an upgrade goes by on `today`, and the day it is judged as of. In a calendar-year
/// window, the year just closed is judged too while the tier was set in it: a purchase of late
/// December released from its return window (or delivered) in January reached its threshold
/// in its own year, which the review of 1 January counts as well. A tier set since (a review,
/// an upgrade) is never raised again by the closed year.
fn upgrade_judged(program: &Program, account: &Account, today: NaiveDate) -> (i64, NaiveDate) {
    let now = upgrade_measure(program, account, today);
    if program.tier_rules.window != Window::CalendarYear {
        return (now, today);
    }
    let Some(year_end) = NaiveDate::from_ymd_opt(today.year() - 1, 12, 31) else {
        return (now, today);
    };
    if account.tier.since > year_end {
        return (now, today);
    }
    let closed = upgrade_measure(program, account, year_end);
    match tier_for(program, closed) > tier_for(program, now) {
        true => (closed, year_end),
        false => (now, today),
    }
}

/// Index of the highest tier whose threshold the measure reaches.
pub fn tier_for(program: &Program, measure: i64) -> usize {
    program
        .tiers
        .iter()
        .rposition(|t| t.threshold <= measure)
        .unwrap_or(0)
}

/// When a tier reached (or kept) on `from` is next reviewed.
pub fn next_review(program: &Program, from: NaiveDate) -> NaiveDate {
    match program.tier_rules.review {
        Review::Anniversary => add_months(from, 12),
        Review::CalendarYear => {
            NaiveDate::from_ymd_opt(from.year() + 1, 1, 1).unwrap_or(NaiveDate::MAX)
        }
    }
}

/// The review after `review_on` of a tier held since `since`. Anniversaries count from the day
/// the tier was reached, never from the last review: a tier reached on 29 February is reviewed
/// on the 28th in common years and on the 29th again in leap years.
pub fn review_after(program: &Program, since: NaiveDate, review_on: NaiveDate) -> NaiveDate {
    if program.tier_rules.review != Review::Anniversary || since > review_on {
        return next_review(program, review_on);
    }
    let years = u32::try_from(review_on.year() - since.year()).unwrap_or(0);
    (years..=years + 2)
        .map(|y| add_months(since, y.saturating_mul(12)))
        .find(|d| *d > review_on)
        .unwrap_or_else(|| next_review(program, review_on))
}

fn current_index(program: &Program, account: &Account) -> usize {
    program.tier(&account.tier.id).map_or(0, |(i, _)| i)
}

impl Account {
    /// Upgrades the member if the measure has crossed a higher threshold (the `tier.check` that
    /// follows every earn). Never lowers a tier: that happens only at a review.
    pub fn check_tier(&self, program: &Program, ctx: &EventContext) -> Change {
        let mut journal = Journal::begin(self, program, ctx);
        let today = local_date(program.time_zone, ctx.recorded_at);
        let current = current_index(program, &journal.account);
        let (measure, judged) = upgrade_judged(program, &journal.account, today);
        let target = tier_for(program, measure);
        if target > current {
            let reason = format!(
                "Upgraded from {} to {}: {} reached the threshold of {}",
                program.tiers[current].id,
                program.tiers[target].id,
                describe(program, measure, judged),
                describe_amount(program, program.tiers[target].threshold),
            );
            set_tier(&mut journal, program, target, today, &reason);
        } else {
            journal.no_op = Some("no higher tier reached".into());
        }
        journal.finish()
    }

    /// Reviews the tier if its review date has come: keep it, or go down per the policy. A
    /// review that was missed is evaluated as of its own date, so catching up is exact.
    pub fn review_tier(&self, program: &Program, ctx: &EventContext) -> Change {
        let mut journal = Journal::begin(self, program, ctx);
        let today = local_date(program.time_zone, ctx.recorded_at);
        let Some(review_on) = journal.account.tier.review_on.filter(|d| *d <= today) else {
            journal.no_op = Some("no review due".into());
            return journal.finish();
        };
        let current = current_index(program, &journal.account);
        let judged = judged_through(review_on);
        let measure = measure_at(program, &journal.account, judged);
        let earned = tier_for(program, measure);
        let new = if earned >= current {
            current
        } else {
            match program.tier_rules.downgrade {
                Downgrade::OneLevel => current - 1,
                Downgrade::Recompute => earned,
            }
        };
        if new == current {
            let since = journal.account.tier.since;
            journal.account.tier.review_on = Some(review_after(program, since, review_on));
            journal.no_op = Some(format!(
                "{} kept at the review of {review_on}",
                program.tiers[current].id
            ));
        } else {
            let reason = format!(
                "Reviewed on {review_on}: {} is below the {} threshold of {}, moved from {} to {}",
                describe(program, measure, judged),
                program.tiers[current].id,
                describe_amount(program, program.tiers[current].threshold),
                program.tiers[current].id,
                program.tiers[new].id,
            );
            set_tier(&mut journal, program, new, review_on, &reason);
        }
        journal.finish()
    }

    /// What the member needs for the next tier, and to keep the current one at its review.
    pub fn tier_progress(&self, program: &Program, today: NaiveDate) -> TierProgress {
        let current = current_index(program, self);
        let measure = measure_at(program, self, today);
        let tier = &program.tiers[current];
        // What the next tier still needs is what the upgrade will go by.
        let towards = upgrade_measure(program, self, today);
        let next = program.tiers.get(current + 1).map(|t| NextTier {
            id: t.id.clone(),
            needed: (t.threshold - towards).max(0),
        });
        let keep = self.tier.review_on.map(|by| KeepTier {
            needed: (tier.threshold - measure_at(program, self, judged_through(by))).max(0),
            by,
        });
        TierProgress {
            id: tier.id.clone(),
            multiplier_bp: tier.multiplier_bp,
            review_date: self.tier.review_on,
            measure,
            keep,
            next_tier: next,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierProgress {
    pub id: String,
    pub multiplier_bp: u32,
    pub review_date: Option<NaiveDate>,
    /// The qualifying measure now (minor units of spend, or points).
    pub measure: i64,
    pub keep: Option<KeepTier>,
    pub next_tier: Option<NextTier>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeepTier {
    pub needed: i64,
    pub by: NaiveDate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NextTier {
    pub id: String,
    pub needed: i64,
}

pub(crate) fn set_tier(
    journal: &mut Journal<'_>,
    program: &Program,
    index: usize,
    on: NaiveDate,
    reason: &str,
) {
    let lowest = index == 0;
    journal.account.tier = TierStatus {
        id: program.tiers[index].id.clone(),
        since: on,
        review_on: (!lowest).then(|| next_review(program, on)),
    };
    let mut source = journal.ctx.source.clone();
    source.rule = Some(format!("tier:{}", program.tiers[index].id));
    let id = format!("{}#tier", journal.ctx.event_id);
    let occurred_at = journal.ctx.recorded_at;
    journal.push(
        id,
        EntryKind::Tier,
        0,
        0,
        reason.to_string(),
        source,
        occurred_at,
    );
}

fn describe(program: &Program, measure: i64, date: NaiveDate) -> String {
    let window = match program.tier_rules.window {
        Window::Lifetime => "in total".to_string(),
        Window::CalendarYear => format!("in {}", date.year()),
        Window::Rolling12Months => format!("in the 12 months to {}", YearMonth::of(date)),
    };
    format!("{} {window}", describe_amount(program, measure))
}

fn describe_amount(program: &Program, value: i64) -> String {
    match program.tier_rules.measure {
        Measure::Spend => format!(
            "{} {} spent",
            program.currency.format_amount(value),
            program.currency
        ),
        Measure::Points => format!("{value} points earned"),
    }
}
