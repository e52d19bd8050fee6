//! A paid membership on an account (`[membership]` in the program file): the periods paid for,
//! the grace after them, the payments (so that a refund of one ends it), the monthly reward's
//! grants and what its multiplier added.
//!
//! Dates are the program's. A payment starts a membership, or extends one that still has its
//! benefits by its periods; the benefits last through the last paid day and the grace days.
//! Lapsing and the monthly grants are written by the `notices` job, so the account says what
//! happened whatever day it is read on.

use chrono::{Months, NaiveDate};
use serde::{Deserialize, Serialize};

use super::program::MembershipRules;
use super::Account;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub id: String,
    pub started_on: NaiveDate,
    /// The last day of the last period paid for.
    pub paid_through: NaiveDate,
    /// The first day without benefits, once the `notices` job found the grace over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lapsed_on: Option<NaiveDate>,
    /// The day a refund of its payment ended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_on: Option<NaiveDate>,
    pub payments: Vec<MembershipPayment>,
    /// Months of this membership whose reward was granted (month 0 starts on `started_on`).
    #[serde(default)]
    pub months_granted: u32,
    /// Points its multiplier added to purchases, over every membership of the member.
    #[serde(default)]
    pub bonus_points: i64,
    /// Monthly rewards granted, over every membership of the member.
    #[serde(default)]
    pub grants: u32,
}

/// A payment of the fee: an order's membership lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipPayment {
    pub order_id: String,
    pub paid_on: NaiveDate,
    pub periods: u32,
    pub amount_minor: i64,
    /// The order's lines that paid the fee (a refund of them takes back their periods).
    #[serde(default)]
    pub line_ids: Vec<String>,
    /// Refunded whole.
    #[serde(default)]
    pub refunded: bool,
    /// Periods refunded so far, when a refund returned only some of them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refunded_periods: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl MembershipPayment {
    /// The periods it still pays for.
    fn kept_periods(&self) -> u32 {
        match self.refunded {
            true => 0,
            false => self.periods.saturating_sub(self.refunded_periods),
        }
    }
}

/// What a refund did to the membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipRefund {
    /// No period is left paid for.
    Ended,
    /// Some periods are: the benefits now last through this day (and the grace after it).
    Shortened { paid_through: NaiveDate },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MembershipStatus {
    /// Within a paid period.
    Active,
    /// Past the paid periods, within the grace days: benefits continue.
    Grace,
    /// Not renewed in time.
    Lapsed,
    /// Its payment was refunded.
    Ended,
}

/// `day` plus `months` calendar months (the last day of a shorter month when needed).
fn plus_months(day: NaiveDate, months: u32) -> NaiveDate {
    day.checked_add_months(Months::new(months))
        .unwrap_or(NaiveDate::MAX)
}

/// The last day of `months` months that start on `first`.
fn last_day(first: NaiveDate, months: u32) -> NaiveDate {
    plus_months(first, months).pred_opt().unwrap_or(first)
}

impl Membership {
    pub fn status(&self, rules: &MembershipRules, day: NaiveDate) -> MembershipStatus {
        if self.ended_on.is_some_and(|e| e <= day) {
            MembershipStatus::Ended
        } else if self.lapsed_on.is_some_and(|l| l <= day) || day >= self.lapses_on(rules) {
            MembershipStatus::Lapsed
        } else if day <= self.paid_through {
            MembershipStatus::Active
        } else {
            MembershipStatus::Grace
        }
    }

    /// Whether its benefits (multiplier, members-only rewards, grants) hold on `day`. A day
    /// before it started may be one of an earlier membership of the member's (a purchase
    /// delivered late, after a renewal that came once that one had lapsed).
    pub fn benefits_on(&self, rules: &MembershipRules, day: NaiveDate) -> bool {
        if day < self.started_on {
            return self.earlier_benefits(rules, day);
        }
        matches!(
            self.status(rules, day),
            MembershipStatus::Active | MembershipStatus::Grace
        )
    }

    /// Whether the payments kept from before this membership started gave benefits on `day`:
    /// laid out in the order they were made, as each of those memberships was.
    fn earlier_benefits(&self, rules: &MembershipRules, day: NaiveDate) -> bool {
        let mut kept: Vec<&MembershipPayment> = self
            .payments
            .iter()
            .filter(|p| p.paid_on < self.started_on && p.kept_periods() > 0)
            .collect();
        kept.sort_by(|a, b| (a.paid_on, &a.order_id).cmp(&(b.paid_on, &b.order_id)));
        let grace = i64::from(rules.grace_days) + 1;
        let mut span: Option<(NaiveDate, u32)> = None;
        for p in kept {
            let months = rules.period_months.saturating_mul(p.kept_periods());
            span = match span {
                Some((start, total))
                    if p.paid_on
                        < crate::domain::calendar::add_days(last_day(start, total), grace) =>
                {
                    Some((start, total.saturating_add(months)))
                }
                _ => Some((p.paid_on, months)),
            };
            if let Some((start, total)) = span {
                let lapses = crate::domain::calendar::add_days(last_day(start, total), grace);
                if start <= day && day < lapses {
                    return true;
                }
            }
        }
        false
    }

    /// The first day without benefits if no renewal comes.
    pub fn lapses_on(&self, rules: &MembershipRules) -> NaiveDate {
        crate::domain::calendar::add_days(self.paid_through, i64::from(rules.grace_days) + 1)
    }

    /// The day the next period starts (when a renewal is due).
    pub fn renews_on(&self) -> NaiveDate {
        self.paid_through.succ_opt().unwrap_or(self.paid_through)
    }

    /// Lays its payments made since `from` end to end in the order they were made, whatever
    /// order they arrived in: each extends the one before while its benefits held (period or
    /// grace) when it was made, else starts a membership anew. A payment delivered late, or a
    /// refund of some periods, then leaves the membership as if everything had arrived in order.
    /// False when no period is left paid for.
    fn lay_out(&mut self, rules: &MembershipRules, from: NaiveDate) -> bool {
        let mut kept: Vec<&MembershipPayment> = self
            .payments
            .iter()
            .filter(|p| p.paid_on >= from && p.kept_periods() > 0)
            .collect();
        kept.sort_by(|a, b| (a.paid_on, &a.order_id).cmp(&(b.paid_on, &b.order_id)));
        let months = |p: &MembershipPayment| rules.period_months.saturating_mul(p.kept_periods());
        let Some((first, later)) = kept.split_first() else {
            return false;
        };
        // Periods run whole months from the start, so a membership begun on the 31st renews
        // on the last day of each shorter month and is back on the 31st after it.
        let mut started = first.paid_on;
        let mut total = months(first);
        let mut through = last_day(started, total);
        let mut restarted = false;
        for p in later {
            let lapses =
                crate::domain::calendar::add_days(through, i64::from(rules.grace_days) + 1);
            if p.paid_on < lapses {
                total = total.saturating_add(months(p));
            } else {
                (started, total, restarted) = (p.paid_on, months(p), true);
            }
            through = last_day(started, total);
        }
        // A membership that starts once the one whose months were granted had lapsed is a new
        // one, whose months are granted anew; the same membership starting earlier or later (a
        // payment delivered late, one refunded) keeps what was granted, so that no month's
        // reward is granted twice.
        if restarted && started >= self.lapses_on(rules) {
            self.months_granted = 0;
        } else if started > self.started_on {
            // Starting later (its first payment refunded), the months granted before the new
            // start are no longer the membership's: the ones after it are still due.
            let gone = (0..self.months_granted)
                .take_while(|&k| plus_months(self.started_on, k) < started)
                .count();
            self.months_granted = self
                .months_granted
                .saturating_sub(u32::try_from(gone).unwrap_or(u32::MAX));
        }
        self.started_on = started;
        self.paid_through = through;
        // Recorded as lapsed before a payment that now runs later (delivered late).
        if self.lapsed_on.is_some_and(|l| l < self.lapses_on(rules)) {
            self.lapsed_on = None;
        }
        true
    }

    /// The first day of month `k` of the membership.
    fn month_start(&self, k: u32) -> NaiveDate {
        plus_months(self.started_on, k)
    }

    /// The first day of the first month whose reward is not granted yet.
    pub fn next_grant_day(&self) -> NaiveDate {
        self.month_start(self.months_granted)
    }

    /// The months whose reward is due by `today` and not granted yet: each month that started
    /// within a paid period (not in the grace days: a renewal then pays for the month, and
    /// makes it due). A job that runs late grants every month it missed; one that runs twice
    /// finds them granted.
    /// A membership ended by a refund has no period left paid for: nothing more is due, even
    /// for months that began before the refund (a job that runs after it grants none).
    pub fn grants_due(&self, rules: &MembershipRules, today: NaiveDate) -> Vec<u32> {
        if rules.monthly_reward.is_none() || self.ended_on.is_some() {
            return Vec::new();
        }
        let mut due = Vec::new();
        let mut k = self.months_granted;
        loop {
            let start = self.month_start(k);
            let paid = start <= self.paid_through && self.benefits_on(rules, start);
            if start > today || !paid || due.len() >= 36 {
                return due;
            }
            due.push(k);
            k += 1;
        }
    }
}

impl Account {
    /// Records a payment of `periods` periods made on `paid_on`: a membership with its
    /// benefits on that day is extended from its last paid day, any other starts anew. A
    /// payment made before the membership started (delivered late) that would have run into it
    /// is its start: the payments are laid out again in the order they were made. Paid twice
    /// for one order (a redelivery) changes nothing.
    pub fn pay_membership(&mut self, rules: &MembershipRules, payment: MembershipPayment) {
        if let Some(m) = &self.membership {
            if m.payments.iter().any(|p| p.order_id == payment.order_id) {
                return;
            }
        }
        let paid_on = payment.paid_on;
        let own_end = last_day(
            paid_on,
            rules.period_months.saturating_mul(payment.periods.max(1)),
        );
        let own_lapse = crate::domain::calendar::add_days(own_end, i64::from(rules.grace_days) + 1);
        match &mut self.membership {
            Some(m) if m.id == rules.id && m.ended_on.is_none() && m.started_on <= paid_on => {
                let from = m.started_on;
                m.payments.push(payment);
                m.lay_out(rules, from);
            }
            Some(m) if m.id == rules.id && m.ended_on.is_none() && own_lapse > m.started_on => {
                m.payments.push(payment);
                m.lay_out(rules, paid_on);
            }
            // Made before the membership started and over before it: an earlier one's.
            Some(m) if m.id == rules.id && m.ended_on.is_none() => m.payments.push(payment),
            current => {
                let (bonus_points, grants, mut payments) = current
                    .take()
                    .map(|m| (m.bonus_points, m.grants, m.payments))
                    .unwrap_or_default();
                payments.push(payment);
                *current = Some(Membership {
                    id: rules.id.clone(),
                    started_on: paid_on,
                    paid_through: own_end,
                    lapsed_on: None,
                    ended_on: None,
                    payments,
                    months_granted: 0,
                    bonus_points,
                    grants,
                });
            }
        }
    }

    /// A refund of a payment of the current membership: the periods of the membership lines
    /// it returns (`lines`: line ids and units; `None`: the whole order) are taken back and the
    /// membership is laid out again without them; it ends on `on` when no period is left paid
    /// for. What it did, if anything.
    pub fn refund_membership(
        &mut self,
        rules: &MembershipRules,
        order_id: &str,
        lines: Option<&[(String, i64)]>,
        on: NaiveDate,
    ) -> Option<MembershipRefund> {
        let m = self.membership.as_mut()?;
        let started_on = m.started_on;
        let payment = m
            .payments
            .iter_mut()
            .find(|p| p.order_id == order_id && p.kept_periods() > 0)?;
        let periods = match lines {
            None => None,
            Some(lines) => {
                let units: i64 = lines
                    .iter()
                    .filter(|(id, _)| payment.line_ids.contains(id))
                    .map(|(_, units)| (*units).max(0))
                    .fold(0, i64::saturating_add);
                if units == 0 {
                    return None;
                }
                Some(u32::try_from(units).unwrap_or(u32::MAX))
            }
        };
        match periods {
            Some(n) if n < payment.kept_periods() => {
                payment.refunded_periods = payment.refunded_periods.saturating_add(n);
            }
            _ => payment.refunded = true,
        }
        // A payment of an earlier membership, refunded late, ends nothing paid for since.
        if payment.paid_on < started_on || m.ended_on.is_some() {
            return None;
        }
        if m.lay_out(rules, started_on) {
            return Some(MembershipRefund::Shortened {
                paid_through: m.paid_through,
            });
        }
        m.ended_on = Some(on);
        Some(MembershipRefund::Ended)
    }

    /// Takes in the membership of a member merged into this one: the one with benefits on
    /// `day` stays, and when both have them, the payments of both are laid out together (the
    /// person paid for every one of those periods); a merge never drops a paid period for a
    /// lapsed one. What either gave (bonus points, grants) is added up.
    pub fn merge_membership(
        &mut self,
        rules: Option<&MembershipRules>,
        theirs: Option<&Membership>,
        day: NaiveDate,
    ) {
        let Some(theirs) = theirs else {
            return;
        };
        let with_benefits =
            |m: &Membership| rules.is_some_and(|r| m.id == r.id && m.benefits_on(r, day));
        let Some(mine) = &mut self.membership else {
            self.membership = Some(theirs.clone());
            return;
        };
        let (bonus_points, grants) = (
            mine.bonus_points.saturating_add(theirs.bonus_points),
            mine.grants.saturating_add(theirs.grants),
        );
        match (rules, with_benefits(mine), with_benefits(theirs)) {
            // Both paid for: every period either paid for is the person's, laid out together.
            (Some(rules), true, true) => {
                // Each side's rewards were for months of its own payments, now laid out
                // end to end: together they are that many months of the merged membership.
                let granted = mine.months_granted.saturating_add(theirs.months_granted);
                for p in &theirs.payments {
                    if !mine.payments.iter().any(|q| q.order_id == p.order_id) {
                        mine.payments.push(p.clone());
                    }
                }
                let from = mine.started_on.min(theirs.started_on);
                mine.lay_out(rules, from);
                mine.months_granted = granted;
            }
            (_, false, true) => *mine = theirs.clone(),
            _ => {}
        }
        mine.bonus_points = bonus_points;
        mine.grants = grants;
    }

    /// Whether the member has the membership's benefits on `day`.
    pub fn has_membership(&self, rules: Option<&MembershipRules>, day: NaiveDate) -> bool {
        match (rules, &self.membership) {
            (Some(rules), Some(m)) => m.id == rules.id && m.benefits_on(rules, day),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> MembershipRules {
        MembershipRules {
            id: "plus".into(),
            name: "Plus".into(),
            price_minor: 4_900,
            period_months: 1,
            grace_days: 7,
            sku: "PLUS".into(),
            multiplier_bp: 20_000,
            monthly_reward: Some("free-shipping".into()),
            early_access: vec![],
            fee_earns_points: false,
        }
    }

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn payment(order: &str, on: &str) -> MembershipPayment {
        MembershipPayment {
            order_id: order.into(),
            paid_on: day(on),
            periods: 1,
            amount_minor: 4_900,
            line_ids: vec!["1".into()],
            refunded: false,
            refunded_periods: 0,
        }
    }

    fn account() -> Account {
        let program =
            crate::domain::Program::from_toml(include_str!("../../../examples/kr-shop.toml"))
                .unwrap();
        Account::open(&program, "m-1", chrono::Utc::now())
    }

    #[test]
    fn a_payment_starts_a_period_and_a_renewal_in_time_extends_it() {
        // GIVEN a membership paid on 31 January
        let mut a = account();
        a.pay_membership(&rules(), payment("o-1", "2026-01-31"));
        let m = a.membership.clone().unwrap();
        // THEN it is paid through 27 February, with grace through 6 March
        assert_eq!(m.paid_through, day("2026-02-27"));
        assert_eq!(
            m.status(&rules(), day("2026-03-01")),
            MembershipStatus::Grace
        );
        assert_eq!(
            m.status(&rules(), day("2026-03-06")),
            MembershipStatus::Grace
        );
        assert_eq!(
            m.status(&rules(), day("2026-03-07")),
            MembershipStatus::Lapsed
        );
        // WHEN it is renewed in the grace days, and the same order is delivered again
        a.pay_membership(&rules(), payment("o-2", "2026-03-03"));
        a.pay_membership(&rules(), payment("o-2", "2026-03-03"));
        // THEN it runs one period on from the last paid day, once, in months from its start
        // (back to the month's last day, as one payment of two periods would have)
        let m = a.membership.clone().unwrap();
        assert_eq!(
            (m.started_on, m.paid_through),
            (day("2026-01-31"), day("2026-03-30"))
        );
        assert_eq!(m.payments.len(), 2);
        // WHEN a later payment comes after the lapse THEN a new membership starts
        a.pay_membership(&rules(), payment("o-3", "2026-05-10"));
        let m = a.membership.clone().unwrap();
        assert_eq!(
            (m.started_on, m.paid_through),
            (day("2026-05-10"), day("2026-06-09"))
        );
    }

    #[test]
    fn renewals_that_reach_the_calendar_s_end_stay_active_and_never_panic() {
        // GIVEN two-year periods, renewed 120 periods at a time, 1,100 times (264,000 years)
        let rules = MembershipRules {
            period_months: 24,
            ..rules()
        };
        let mut a = account();
        for n in 0..1_100 {
            let paid = MembershipPayment {
                periods: 120,
                ..payment(&format!("o-{n}"), "2026-01-31")
            };
            a.pay_membership(&rules, paid);
        }
        // WHEN its lapse and status are asked for
        let m = a.membership.clone().unwrap();
        // THEN the paid-through day is held at the calendar's end, and it is active
        assert!(m.paid_through >= NaiveDate::MAX.pred_opt().unwrap());
        assert_eq!(m.lapses_on(&rules), NaiveDate::MAX);
        assert_eq!(
            m.status(&rules, day("2026-06-01")),
            MembershipStatus::Active
        );
    }

    #[test]
    fn grants_are_due_once_per_month_with_benefits() {
        let mut a = account();
        a.pay_membership(&rules(), payment("o-1", "2026-01-15"));
        let m = a.membership.clone().unwrap();
        // A job that runs late (20 February) owes the paid month only: the second month starts
        // in the grace days, unpaid
        assert_eq!(m.grants_due(&rules(), day("2026-02-20")), vec![0]);
        assert_eq!(m.grants_due(&rules(), day("2026-04-20")), vec![0]);
        // AND a renewal in the grace days pays for it
        let mut renewed = a.clone();
        renewed.pay_membership(&rules(), payment("o-2", "2026-02-18"));
        let r = renewed.membership.clone().unwrap();
        assert_eq!(r.grants_due(&rules(), day("2026-04-20")), vec![0, 1]);
        let mut granted = m.clone();
        granted.months_granted = 1;
        assert!(granted.grants_due(&rules(), day("2026-04-20")).is_empty());
        // AND a refund of the payment ends the benefits at once
        assert_eq!(
            a.refund_membership(&rules(), "o-1", None, day("2026-01-20")),
            Some(MembershipRefund::Ended)
        );
        assert!(!a.has_membership(Some(&rules()), day("2026-01-20")));
        assert_eq!(
            a.refund_membership(&rules(), "o-1", None, day("2026-01-21")),
            None
        );
    }

    #[test]
    fn a_purchase_of_a_day_of_an_earlier_membership_keeps_its_benefits_after_a_renewal() {
        // GIVEN a membership paid on 1 January (lapsed on 8 February), and a new one paid on
        // 15 March
        let mut a = account();
        a.pay_membership(&rules(), payment("o-1", "2026-01-01"));
        a.pay_membership(&rules(), payment("o-2", "2026-03-15"));
        assert_eq!(a.membership.as_ref().unwrap().started_on, day("2026-03-15"));
        // WHEN a purchase of 20 January is delivered late THEN it had the benefits (before:
        // only the latest membership's days did), and one of 20 February (lapsed) did not
        assert!(a.has_membership(Some(&rules()), day("2026-01-20")));
        assert!(a.has_membership(Some(&rules()), day("2026-02-07")));
        assert!(!a.has_membership(Some(&rules()), day("2026-02-08")));
        assert!(!a.has_membership(Some(&rules()), day("2026-03-14")));
        // AND a refund of the first payment takes its days back
        a.membership.as_mut().unwrap().payments[0].refunded = true;
        assert!(!a.has_membership(Some(&rules()), day("2026-01-20")));
    }

    #[test]
    fn a_payment_delivered_late_counts_as_of_the_day_it_was_made() {
        // GIVEN a membership started by a payment of 20 January, its first month granted
        let mut a = account();
        a.pay_membership(&rules(), payment("o-b", "2026-01-20"));
        a.membership.as_mut().unwrap().months_granted = 1;
        // WHEN a payment made on 10 January arrives afterwards (a reconciled order)
        a.pay_membership(&rules(), payment("o-a", "2026-01-10"));
        // THEN the membership is as if both had arrived in order: from 10 January, two months
        let m = a.membership.clone().unwrap();
        assert_eq!(
            (m.started_on, m.paid_through),
            (day("2026-01-10"), day("2026-03-09"))
        );
        // AND the month granted is not granted again
        assert_eq!(m.months_granted, 1);
        assert_eq!(m.grants_due(&rules(), day("2026-01-31")), Vec::<u32>::new());
        assert_eq!(m.grants_due(&rules(), day("2026-02-10")), vec![1]);
        // AND a payment made long before, whose period ended before it started, extends nothing
        a.pay_membership(&rules(), payment("o-old", "2025-06-01"));
        let m = a.membership.clone().unwrap();
        assert_eq!(
            (m.started_on, m.paid_through),
            (day("2026-01-10"), day("2026-03-09"))
        );
    }

    #[test]
    fn a_payment_on_the_day_it_lapsed_starts_a_membership_whose_months_are_granted_anew() {
        // GIVEN a month paid on 15 January (benefits through 21 February), its month granted
        let mut a = account();
        a.pay_membership(&rules(), payment("o-1", "2026-01-15"));
        a.membership.as_mut().unwrap().months_granted = 1;
        // WHEN the next payment is made on 22 February, the first day without benefits
        a.pay_membership(&rules(), payment("o-2", "2026-02-22"));
        // THEN a new membership starts that day, and its first month's reward is due
        let m = a.membership.clone().unwrap();
        assert_eq!(
            (m.started_on, m.paid_through, m.months_granted),
            (day("2026-02-22"), day("2026-03-21"), 0)
        );
        assert_eq!(m.grants_due(&rules(), day("2026-02-22")), vec![0]);
    }

    #[test]
    fn a_merge_of_two_paid_memberships_keeps_every_period_paid_for() {
        // GIVEN a member who paid a month on 1 January, and another (the same person) who paid
        // six months on 20 January, the first month of each granted
        let mut survivor = account();
        survivor.pay_membership(&rules(), payment("o-1", "2026-01-01"));
        survivor.membership.as_mut().unwrap().months_granted = 1;
        let mut other = account();
        let six = MembershipPayment {
            periods: 6,
            ..payment("o-2", "2026-01-20")
        };
        other.pay_membership(&rules(), six);
        other.membership.as_mut().unwrap().months_granted = 1;
        // WHEN the other is merged into the survivor on 25 January
        survivor.merge_membership(Some(&rules()), other.membership.as_ref(), day("2026-01-25"));
        // THEN seven months are paid for from 1 January, two of their rewards given: five are
        // left to grant, seven in all
        let m = survivor.membership.clone().unwrap();
        assert_eq!(
            (m.started_on, m.paid_through, m.months_granted),
            (day("2026-01-01"), day("2026-07-31"), 2)
        );
        assert_eq!(
            m.grants_due(&rules(), day("2026-07-01")),
            vec![2, 3, 4, 5, 6]
        );
        assert_eq!(m.payments.len(), 2);
    }

    #[test]
    fn a_refund_that_leaves_a_gap_grants_no_month_twice() {
        // GIVEN months paid on 1 January, 1 February and 1 March, each one granted
        let mut a = account();
        for (order, on) in [
            ("o-1", "2026-01-01"),
            ("o-2", "2026-02-01"),
            ("o-3", "2026-03-01"),
        ] {
            a.pay_membership(&rules(), payment(order, on));
        }
        a.membership.as_mut().unwrap().months_granted = 3;
        // WHEN February's payment is refunded (January's lapsed before March's was made)
        a.refund_membership(&rules(), "o-2", None, day("2026-03-05"));
        // THEN March is paid for, and its reward, granted already, is not due again
        let m = a.membership.clone().unwrap();
        assert_eq!(
            (m.started_on, m.paid_through),
            (day("2026-03-01"), day("2026-03-31"))
        );
        assert!(m.grants_due(&rules(), day("2026-03-05")).is_empty());
        // WHEN the member renews on 25 March and on 25 April
        for (order, on) in [("o-4", "2026-03-25"), ("o-5", "2026-04-25")] {
            a.pay_membership(&rules(), payment(order, on));
        }
        // THEN April's and May's rewards are due: only March's was granted of this membership
        let m = a.membership.clone().unwrap();
        assert_eq!(m.paid_through, day("2026-05-31"));
        assert_eq!(m.grants_due(&rules(), day("2026-05-01")), vec![1, 2]);
    }

    #[test]
    fn a_refund_takes_back_only_the_periods_it_refunds() {
        // GIVEN a year paid at once on 1 January (12 periods)
        let mut a = account();
        let year = MembershipPayment {
            periods: 12,
            ..payment("o-1", "2026-01-01")
        };
        a.pay_membership(&rules(), year);
        assert_eq!(
            a.membership.as_ref().unwrap().paid_through,
            day("2026-12-31")
        );
        // WHEN one unit of its membership line is refunded
        let one = [("1".to_string(), 1_i64)];
        let refunded = a.refund_membership(&rules(), "o-1", Some(&one), day("2026-02-01"));
        // THEN eleven months are left, and the benefits hold
        assert_eq!(
            refunded,
            Some(MembershipRefund::Shortened {
                paid_through: day("2026-11-30")
            })
        );
        assert!(a.has_membership(Some(&rules()), day("2026-06-01")));
        // AND a refund naming another line of the order takes nothing
        let other = [("2".to_string(), 5_i64)];
        assert_eq!(
            a.refund_membership(&rules(), "o-1", Some(&other), day("2026-02-02")),
            None
        );
        // GIVEN a month paid on 1 January and a renewal paid by mistake on 25 January
        let mut b = account();
        b.pay_membership(&rules(), payment("o-2", "2026-01-01"));
        b.pay_membership(&rules(), payment("o-3", "2026-01-25"));
        // WHEN the renewal is refunded THEN January, paid by the first, is kept
        assert_eq!(
            b.refund_membership(&rules(), "o-3", None, day("2026-01-26")),
            Some(MembershipRefund::Shortened {
                paid_through: day("2026-01-31")
            })
        );
        assert!(b.has_membership(Some(&rules()), day("2026-01-30")));
    }

    #[test]
    fn a_lapse_written_later_leaves_the_days_paid_for_with_their_benefits() {
        // GIVEN a membership paid through 27 February that the job found lapsed on 7 March
        let mut a = account();
        a.pay_membership(&rules(), payment("o-1", "2026-01-31"));
        a.membership.as_mut().unwrap().lapsed_on = Some(day("2026-03-07"));
        // WHEN a purchase of 10 February is processed afterwards THEN it had the benefits
        assert!(a.has_membership(Some(&rules()), day("2026-02-10")));
        assert!(!a.has_membership(Some(&rules()), day("2026-03-08")));
        // AND a renewal made in the grace days, delivered after the lapse was written, extends
        a.pay_membership(&rules(), payment("o-2", "2026-03-03"));
        let m = a.membership.clone().unwrap();
        assert_eq!(
            (m.started_on, m.paid_through, m.lapsed_on),
            (day("2026-01-31"), day("2026-03-30"), None)
        );
    }
}
