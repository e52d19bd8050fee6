//! Purchases, refunds and cancellations of one order.
//!
//! The [`OrderRecord`] remembers what each line of an order earned, so that a refund takes back
//! exactly that, never recomputed with today's rules: for a line of q units that earned p points,
//! after refunds of r units in total the clawback so far is floor(p x r / q). A refund that
//! arrives before its purchase is parked on the record and applied when the purchase arrives, so
//! the order in which platforms deliver never changes the result.

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::account::{lot_expiry, Account, Change, Journal, PendingGrant};
use super::calendar::{add_local_days, local_date, YearMonth};
use super::earning::{purchase_points, CampaignEffect, EarnError, Purchase};
use super::ledger::{EntryKind, EventContext};
use super::membership::{MembershipPayment, MembershipRefund};
use super::program::{InsufficientBalance, Measure, Program, UNIT_BP};
use super::tiers;

/// What an order's record holds among its applied refunds when an operator cancelled its
/// payment: the payment, delivered again (or to the member it was merged into, with the
/// record), earns nothing. No refund id holds a `#`.
pub const PAYMENT_CANCELLED: &str = "#payment-cancelled";

/// What an order's record holds among its applied refunds while its payment waits for an
/// operator's review (over the daily limit): the payment, delivered again on a later day (a
/// restatement, a reconcile), earns nothing until released with the review.
pub const PAYMENT_HELD: &str = "#payment-held";

/// Everything the loyalty engine remembers about one order of one member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub order_id: String,
    #[serde(default)]
    pub earned: Option<OrderEarning>,
    /// Refunds or a cancellation that arrived before the purchase.
    #[serde(default)]
    pub parked: Vec<Reversal>,
    /// Refund ids (and `cancel`) already applied.
    #[serde(default)]
    pub applied: BTreeSet<String>,
    /// The member this record was copied from by a merge (its purchase entry is on that
    /// member's ledger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEarning {
    pub event_id: String,
    pub occurred_at: DateTime<Utc>,
    /// The month the purchase qualifies in; refunds take the measure back from this month.
    pub month: YearMonth,
    pub expires_on: NaiveDate,
    pub points: i64,
    pub lines: Vec<LineRecord>,
    /// For refunds known only by amount: the amount refunded so far, of `share_total`.
    #[serde(default)]
    pub share_refunded: i64,
    #[serde(default)]
    pub share_total: i64,
    /// What the purchase's lines were paid, after discounts, with tax charged on top (minor
    /// units; shipping apart): what a refund of an amount alone is a share of
    /// ([`RefundScope::Amount`]). 0 for records written before it was kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub paid: i64,
    /// The counters that counted this purchase (a campaign's id, or a later randomisation's
    /// `{id}~…`): its refunds take their revenue back there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counted_in: Vec<String>,
    /// Of `points`, what the member's paid membership added: its refunds take their share of
    /// it off what the membership says it saved.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub membership_bonus: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineRecord {
    pub line_id: String,
    pub quantity: i64,
    pub points: i64,
    /// What the line added to the qualifying measure.
    pub measure: i64,
    /// Units refunded so far (never more than `quantity`).
    pub refunded: i64,
    /// Points taken back so far: floor(points x refunded / quantity).
    pub clawed: i64,
    /// Measure taken back so far: floor(measure x refunded / quantity).
    pub unqualified: i64,
    /// The line's eligible amount (minor units): campaign revenue.
    #[serde(default)]
    pub eligible: i64,
    /// Eligible amount refunded so far: floor(eligible x refunded / quantity).
    #[serde(default)]
    pub refunded_eligible: i64,
    /// The SKU of a line imported without its platform's id ([`IMPORTED_LINE_PREFIX`]): the
    /// platform's refunds find it by SKU. Empty for every other line.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sku: String,
}

/// How lines of an order imported from a platform's export that names no line ids are named
/// (`export-1`, `export-2`, … in the export's order). The platform's refunds name its own line
/// ids, so such lines are found by SKU.
pub const IMPORTED_LINE_PREFIX: &str = "export-";

/// A refund of some units of some lines, a share of the order, or a cancellation of whatever
/// is left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reversal {
    pub order_id: String,
    /// The platform's refund id; `cancel` for a cancellation.
    pub refund_id: String,
    pub scope: RefundScope,
    pub event_id: String,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RefundScope {
    /// Units of named lines: each line gives back floor(p x r / q) cumulatively.
    Lines { lines: Vec<RefundLine> },
    /// An amount of the order's total, for platforms whose refunds name no lines (WooCommerce):
    /// every line gives back floor(p x refunded / total) cumulatively.
    Share { amount: i64, total: i64 },
    /// Everything that is left (a cancellation).
    Rest,
    /// An amount refunded for an order whose platform states no total with it (Shopify's
    /// refunds of money alone): a share of what the purchase was paid ([`OrderEarning::paid`]),
    /// applied as [`RefundScope::Share`] of that.
    Amount { amount: i64 },
}

impl RefundScope {
    pub fn lines(lines: Vec<RefundLine>) -> RefundScope {
        RefundScope::Lines { lines }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundLine {
    pub line_id: String,
    pub quantity: i64,
    /// The line's SKU, when the platform gives it: it finds a line the order was imported
    /// with, which has no platform id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sku: String,
}

/// The outcome for an order: the account change, the updated order record, and what the caller
/// must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderChange {
    pub change: Change,
    pub order: OrderRecord,
    /// Set on a member's first purchase when someone referred them: pay the referrer.
    pub referrer_to_reward: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error(transparent)]
    Earn(#[from] EarnError),
    #[error("refund line {line_id:?} is not in order {order_id:?}")]
    UnknownLine { order_id: String, line_id: String },
    #[error("refund quantity for line {0:?} must be greater than zero")]
    BadQuantity(String),
    #[error("the order record is for {found:?}, not {expected:?}")]
    WrongOrder { expected: String, found: String },
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

impl OrderRecord {
    /// The eligible amount refunded so far, over every line.
    pub fn refunded_eligible(&self) -> i64 {
        self.earned
            .as_ref()
            .map_or(0, |e| e.lines.iter().map(|l| l.refunded_eligible).sum())
    }
}

impl Account {
    /// Credits a purchase: pending until the return window closes (counted from when it
    /// happened), at the member's current tier, with the given campaign effects.
    pub fn earn_purchase(
        &self,
        program: &Program,
        order: Option<&OrderRecord>,
        purchase: &Purchase,
        campaigns: &[CampaignEffect],
        ctx: &EventContext,
    ) -> Result<OrderChange, OrderError> {
        let mut record = existing(order, &purchase.order_id)?;
        let mut journal = Journal::begin(self, program, ctx);
        if record.earned.is_some() {
            journal.no_op = Some(format!("order {} already earned points", purchase.order_id));
            return Ok(done(journal, record, None));
        }
        if record.applied.contains(PAYMENT_CANCELLED) {
            journal.no_op = Some(format!(
                "the payment of order {} was cancelled by an operator",
                purchase.order_id
            ));
            return Ok(done(journal, record, None));
        }
        let tier_bp = program
            .tier(&journal.account.tier.id)
            .map_or(program.lowest_tier().multiplier_bp, |(_, t)| {
                t.multiplier_bp
            });
        let day = local_date(program.time_zone, ctx.occurred_at);
        let (earning, paid_note) = pay_membership(&mut journal.account, program, purchase, day);
        let membership = program
            .membership
            .as_ref()
            .filter(|rules| journal.account.has_membership(Some(rules), day))
            .filter(|rules| rules.multiplier_bp != UNIT_BP);
        let mut effects = campaigns.to_vec();
        if let Some(rules) = membership {
            effects.push(CampaignEffect::Multiplier {
                campaign: format!("membership {}", rules.id),
                basis_points: rules.multiplier_bp,
            });
        }
        let earned = purchase_points(
            &program.purchase,
            program.currency,
            &earning,
            tier_bp,
            &effects,
        )?;
        let mut membership_note = paid_note;
        let mut membership_bonus = 0;
        if let Some(rules) = membership {
            let without = purchase_points(
                &program.purchase,
                program.currency,
                &earning,
                tier_bp,
                campaigns,
            )?;
            membership_bonus = earned.points - without.points;
            if let Some(m) = journal.account.membership.as_mut() {
                m.bonus_points = m.bonus_points.saturating_add(membership_bonus);
            }
            membership_note = format!(
                " with {} (x{}.{:02}){membership_note}",
                rules.name,
                rules.multiplier_bp / UNIT_BP,
                rules.multiplier_bp % UNIT_BP / 100
            );
        }
        let month = YearMonth::of(day);
        let expires_on = lot_expiry(program, ctx.occurred_at);
        let release_at = add_local_days(
            program.time_zone,
            ctx.occurred_at,
            program.purchase.pending.num_days(),
        );
        let measure_of = |eligible: i64, points: i64| match program.tier_rules.measure {
            Measure::Spend => eligible,
            Measure::Points => points,
        };
        let lines: Vec<LineRecord> = earned
            .lines
            .iter()
            .map(|l| LineRecord {
                line_id: l.line_id.clone(),
                quantity: l.quantity,
                points: l.points,
                measure: measure_of(l.eligible, l.points),
                refunded: 0,
                clawed: 0,
                unqualified: 0,
                eligible: l.eligible,
                refunded_eligible: 0,
                sku: imported_sku(purchase, &l.line_id),
            })
            .collect();
        let measure: i64 = lines.iter().map(|l| l.measure).sum();
        tiers::add_measure(&mut journal.account, month, measure);

        let campaign_note = format!("{}{membership_note}", campaign_note(campaigns));
        if release_at > ctx.recorded_at {
            journal.account.pending.push(PendingGrant {
                event_id: ctx.event_id.clone(),
                order_id: purchase.order_id.clone(),
                release_at,
                expires_on,
                points: earned.points,
                qualifying: if program.tier_rules.upgrade_after_return_window {
                    measure
                } else {
                    0
                },
                month: program
                    .tier_rules
                    .upgrade_after_return_window
                    .then_some(month),
            });
            let reason = format!(
                "{} points pending for order {} until {}{campaign_note}",
                earned.points,
                purchase.order_id,
                local_date(program.time_zone, release_at)
            );
            journal.post(EntryKind::Pending, 0, earned.points, &reason);
        } else {
            journal.credit(earned.points, expires_on);
            let reason = format!(
                "{} points for order {}{campaign_note}",
                earned.points, purchase.order_id
            );
            journal.post(EntryKind::Earn, earned.points, 0, &reason);
        }
        record.earned = Some(OrderEarning {
            event_id: ctx.event_id.clone(),
            occurred_at: ctx.occurred_at,
            month,
            expires_on,
            points: earned.points,
            lines,
            share_refunded: 0,
            share_total: 0,
            paid: paid_for_goods(purchase),
            counted_in: Vec::new(),
            membership_bonus,
        });

        let account = &mut journal.account;
        account.purchases += 1;
        account.last_purchase_at = account.last_purchase_at.max(Some(ctx.occurred_at));
        account.remember_categories(purchase.lines.iter().map(|l| l.category.as_str()));
        let first = account.purchases == 1;
        // Refunds that arrived first are applied now, in the order they arrived, before the
        // referral: an order wholly refunded or cancelled by then pays neither side.
        let parked = std::mem::take(&mut record.parked);
        apply_parked_reversals(&mut journal, program, &mut record, parked);
        let kept = record.earned.as_ref().is_some_and(|e| !wholly_refunded(e));
        let account = &mut journal.account;
        let mut referrer = None;
        let waits = release_at > ctx.recorded_at;
        if first && kept {
            if let (Some(by), Some(rule)) = (account.referred_by.clone(), &program.referral) {
                if rule.reward_after_return_window && waits {
                    // Both sides are paid when the order's points are released.
                    account.referral_due = Some(crate::domain::account::ReferralDue {
                        referrer: by,
                        event_id: ctx.event_id.clone(),
                    });
                } else {
                    if rule.referee_points > 0 {
                        journal.credit(rule.referee_points, expires_on);
                        let reason = format!(
                            "{} points welcome bonus for being referred",
                            rule.referee_points
                        );
                        journal.post(EntryKind::Earn, rule.referee_points, 0, &reason);
                    }
                    referrer = super::erasure::payable_referrer(by);
                }
            }
        }
        Ok(done(journal, record, referrer))
    }

    /// Refunds parked on this member's record of an order whose purchase is on `record`, a
    /// record copied here by a merge (the refunds reached this member while the merge was
    /// between its steps): applied now, in the order they arrived, as when a purchase arrives
    /// after its refunds. Returns the record with them applied.
    pub fn apply_parked(
        &self,
        program: &Program,
        record: &OrderRecord,
        parked: &[Reversal],
        ctx: &EventContext,
    ) -> OrderChange {
        let mut record = record.clone();
        let mut journal = Journal::begin(self, program, ctx);
        let waiting = parked
            .iter()
            .filter(|r| !record.applied.contains(&r.refund_id))
            .cloned()
            .collect();
        apply_parked_reversals(&mut journal, program, &mut record, waiting);
        done(journal, record, None)
    }

    /// Takes back what the refunded units earned (or, for a cancellation, everything left).
    /// Before the purchase is known the refund is parked on the order record.
    pub fn refund(
        &self,
        program: &Program,
        order: Option<&OrderRecord>,
        reversal: &Reversal,
        ctx: &EventContext,
    ) -> Result<OrderChange, OrderError> {
        let mut record = existing(order, &reversal.order_id)?;
        let mut journal = Journal::begin(self, program, ctx);
        let parked = record
            .parked
            .iter()
            .any(|p| p.refund_id == reversal.refund_id);
        // Parked beside a purchase it could not be applied to: delivered again, it is tried
        // again, and refused on its own if it still cannot be.
        let already =
            record.applied.contains(&reversal.refund_id) || (parked && record.earned.is_none());
        if already {
            journal.no_op = Some(format!("refund {} was already applied", reversal.refund_id));
        } else if record.earned.is_none() {
            journal.no_op = Some(format!(
                "refund {} parked until the purchase arrives",
                reversal.refund_id
            ));
            record.parked.push(reversal.clone());
        } else {
            reverse(&mut journal, program, &mut record, reversal)?;
            record.parked.retain(|p| p.refund_id != reversal.refund_id);
        }
        Ok(done(journal, record, None))
    }
}

/// The membership lines of a purchase (its SKU) pay the fee: the membership starts or renews
/// on the day of the purchase. Unless the program says so, the fee is not spend: those lines
/// earn and qualify nothing. Returns the purchase as it earns, and a note for the ledger.
fn pay_membership(
    account: &mut Account,
    program: &Program,
    purchase: &Purchase,
    day: chrono::NaiveDate,
) -> (Purchase, String) {
    let Some(rules) = &program.membership else {
        return (purchase.clone(), String::new());
    };
    let lines: Vec<_> = purchase
        .lines
        .iter()
        .filter(|l| l.sku == rules.sku)
        .collect();
    if lines.is_empty() {
        return (purchase.clone(), String::new());
    }
    let periods: i64 = lines.iter().map(|l| l.quantity).sum();
    let amount = lines.iter().fold(0_i64, |sum, l| {
        sum.saturating_add(
            l.unit_price
                .saturating_mul(l.quantity)
                .saturating_sub(l.discount),
        )
    });
    account.pay_membership(
        rules,
        MembershipPayment {
            order_id: purchase.order_id.clone(),
            paid_on: day,
            periods: u32::try_from(periods.clamp(1, super::limits::MAX_MEMBERSHIP_PERIODS))
                .unwrap_or(1),
            amount_minor: amount,
            line_ids: lines.iter().map(|l| l.line_id.clone()).collect(),
            refunded: false,
            refunded_periods: 0,
        },
    );
    let mut earning = purchase.clone();
    if !rules.fee_earns_points {
        for line in earning.lines.iter_mut().filter(|l| l.sku == rules.sku) {
            line.gift_card = true;
        }
    }
    let through = account.membership.as_ref().map_or(day, |m| m.paid_through);
    (earning, format!("; {} paid through {through}", rules.name))
}

/// Applies refunds that waited for their purchase, in the order they arrived. One the
/// purchase cannot take (a line it does not have) stays parked on the record, where the order
/// shows it, and the purchase earns regardless, as it does when such a refund comes after it
/// (that refund alone is refused). `reverse` refuses before it changes anything.
fn apply_parked_reversals(
    journal: &mut Journal<'_>,
    program: &Program,
    record: &mut OrderRecord,
    parked: Vec<Reversal>,
) {
    for reversal in parked {
        if reverse(journal, program, record, &reversal).is_err() {
            record.parked.push(reversal);
        }
    }
}

/// A refund applied: what it takes back, and the membership its order paid for, if it ends it.
/// One path whether the refund came after its purchase or waited for it.
fn reverse(
    journal: &mut Journal<'_>,
    program: &Program,
    record: &mut OrderRecord,
    reversal: &Reversal,
) -> Result<(), OrderError> {
    let reversal = &as_share(record, reversal);
    let lines = refunded_lines(record, reversal)?;
    apply_reversal(journal, program, record, reversal)?;
    end_membership(journal, program, record, reversal, lines);
    Ok(())
}

/// The units a refund by lines takes off each line of the order, by the order's own line ids
/// (a line imported without its platform's id is found by SKU), before they are taken.
fn refunded_lines(
    record: &OrderRecord,
    reversal: &Reversal,
) -> Result<Option<Vec<(String, i64)>>, OrderError> {
    let (RefundScope::Lines { .. }, Some(earned)) = (&reversal.scope, &record.earned) else {
        return Ok(None);
    };
    let wanted = refund_quantities(&record.order_id, earned, reversal)?;
    Ok(Some(
        earned
            .lines
            .iter()
            .zip(wanted)
            .filter(|(_, units)| *units > 0)
            .map(|(line, units)| (line.line_id.clone(), units))
            .collect(),
    ))
}

/// What the lines of a purchase were paid after their discounts, with the tax charged on top
/// of their prices: what the customer paid for the goods. Amounts are bounded at the edge, so
/// this never overflows; it saturates all the same.
fn paid_for_goods(purchase: &Purchase) -> i64 {
    purchase
        .lines
        .iter()
        .map(|l| {
            l.unit_price
                .saturating_mul(l.quantity)
                .saturating_sub(l.discount)
        })
        .fold(purchase.tax.max(0), i64::saturating_add)
}

/// A refund of an amount alone, as the share of what the order was paid that it is. An order
/// recorded before what it was paid was kept shares it over what its lines earned on (the
/// goods after discounts, less those that earn nothing); an order paid nothing for its goods
/// gives nothing back.
fn as_share(record: &OrderRecord, reversal: &Reversal) -> Reversal {
    let RefundScope::Amount { amount } = reversal.scope else {
        return reversal.clone();
    };
    let paid = record.earned.as_ref().map_or(0, |e| match e.paid {
        0 => e
            .lines
            .iter()
            .map(|l| l.eligible)
            .fold(0, i64::saturating_add),
        paid => paid,
    });
    let scope = match paid {
        0 => RefundScope::lines(Vec::new()),
        total => RefundScope::Share { amount, total },
    };
    Reversal {
        scope,
        ..reversal.clone()
    }
}

/// A refund of a membership payment ends the membership at once; the points earned with it
/// stay (they belong to purchases this refund does not take back). The ledger says so. Refunds
/// by amount end it once they add up to the whole order, however many there were.
fn end_membership(
    journal: &mut Journal<'_>,
    program: &Program,
    record: &OrderRecord,
    reversal: &Reversal,
    refunded: Option<Vec<(String, i64)>>,
) {
    let Some(rules) = &program.membership else {
        return;
    };
    let whole = record
        .earned
        .as_ref()
        .is_some_and(|e| e.share_refunded >= e.share_total);
    let lines: Option<Vec<(String, i64)>> = match &reversal.scope {
        RefundScope::Lines { .. } => Some(refunded.unwrap_or_default()),
        RefundScope::Share { .. } | RefundScope::Amount { .. } if !whole => return,
        RefundScope::Share { .. } | RefundScope::Amount { .. } | RefundScope::Rest => None,
    };
    let day = local_date(program.time_zone, reversal.occurred_at);
    let reason =
        match journal
            .account
            .refund_membership(rules, &reversal.order_id, lines.as_deref(), day)
        {
            None => return,
            Some(MembershipRefund::Ended) => format!(
                "{} ended on {day}: the payment of order {} was refunded",
                rules.name, reversal.order_id
            ),
            Some(MembershipRefund::Shortened { paid_through }) => format!(
                "{} paid through {paid_through}: periods of order {} were refunded",
                rules.name, reversal.order_id
            ),
        };
    journal.post(EntryKind::Clawback, 0, 0, &reason);
}

/// Every unit of every line refunded, or refunds by amount that reached the order's total.
fn wholly_refunded(earned: &OrderEarning) -> bool {
    let lines = earned.lines.iter().all(|l| l.refunded >= l.quantity);
    let share = earned.share_total > 0 && earned.share_refunded >= earned.share_total;
    lines || share
}

fn existing(order: Option<&OrderRecord>, order_id: &str) -> Result<OrderRecord, OrderError> {
    match order {
        Some(o) if o.order_id != order_id => Err(OrderError::WrongOrder {
            expected: order_id.to_string(),
            found: o.order_id.clone(),
        }),
        Some(o) => Ok(o.clone()),
        None => Ok(OrderRecord {
            order_id: order_id.to_string(),
            ..OrderRecord::default()
        }),
    }
}

fn done(journal: Journal<'_>, order: OrderRecord, referrer: Option<String>) -> OrderChange {
    OrderChange {
        change: journal.finish(),
        order,
        referrer_to_reward: referrer,
    }
}

fn campaign_note(campaigns: &[CampaignEffect]) -> String {
    let names: Vec<&str> = campaigns
        .iter()
        .map(|c| match c {
            CampaignEffect::Multiplier { campaign, .. }
            | CampaignEffect::Bonus { campaign, .. } => campaign.as_str(),
        })
        .collect();
    if names.is_empty() {
        String::new()
    } else {
        format!(" (campaign {})", names.join(", "))
    }
}

/// `value × to / from`, rounded down, without overflow (amounts are at most 10^13 each).
fn rescale(value: i64, to: i64, from: i64) -> i64 {
    let scaled = i128::from(value) * i128::from(to) / i128::from(from);
    i64::try_from(scaled).unwrap_or(i64::MAX)
}

/// Claws back a refund: the order's pending points first, then available points (the order's
/// own lot first, then soonest-expiring), then per policy a debt or a recorded shortfall.
fn apply_reversal(
    journal: &mut Journal<'_>,
    program: &Program,
    record: &mut OrderRecord,
    reversal: &Reversal,
) -> Result<(), OrderError> {
    let Some(earned) = record.earned.as_mut() else {
        return Ok(());
    };
    let wanted = refund_quantities(&record.order_id, earned, reversal)?;
    if let RefundScope::Share { amount, total } = reversal.scope {
        // A platform may state the order's total differently from one refund to the next:
        // what was refunded so far is carried over as the same share of the new total.
        let so_far = match earned.share_total {
            0 => 0,
            before => rescale(earned.share_refunded, total, before),
        };
        earned.share_total = total;
        earned.share_refunded = (so_far + amount).min(total);
    }
    let (share, of) = (earned.share_refunded, earned.share_total);
    for (line, quantity) in earned.lines.iter_mut().zip(wanted) {
        line.refunded = (line.refunded + quantity).min(line.quantity);
    }
    // What each line is worth: its eligible amount, or for an order recorded without them its
    // points; the refunds by amount take their share of the order by that worth.
    let by_amount = earned.lines.iter().any(|l| l.eligible > 0);
    let worth = |l: &LineRecord| if by_amount { l.eligible } else { l.points };
    let lines: Vec<(i64, i64, i64)> = earned
        .lines
        .iter()
        .map(|l| (worth(l), l.refunded, l.quantity))
        .collect();
    let taken = worth_taken(&lines, share, of);
    // With no units refunded, refunds by amount take the same share of every line: exactly
    // floor(value x share / of) each, with no rounding of amounts first.
    let mixed = earned.lines.iter().any(|l| l.refunded > 0);
    let back = |value: fn(&LineRecord) -> i64| -> Vec<i64> {
        earned
            .lines
            .iter()
            .zip(&taken)
            .map(|(l, &taken)| {
                let by_share = cumulative(value(l), share, of);
                let worth = if mixed { worth(l) } else { 0 };
                given_back(value(l), l.refunded, l.quantity, worth, taken).max(by_share)
            })
            .collect()
    };
    let clawed = back(|l| l.points);
    let unqualified = back(|l| l.measure);
    let refunded_eligible = back(|l| l.eligible);
    let mut points = 0;
    let mut measure = 0;
    for (i, line) in earned.lines.iter_mut().enumerate() {
        // A later refund never gives back what an earlier one took (a share rounded down
        // under a new total).
        let (clawed, unqualified) = (
            clawed[i].max(line.clawed),
            unqualified[i].max(line.unqualified),
        );
        points += clawed - line.clawed;
        measure += unqualified - line.unqualified;
        line.clawed = clawed;
        line.unqualified = unqualified;
        line.refunded_eligible = refunded_eligible[i].max(line.refunded_eligible);
    }
    record.applied.insert(reversal.refund_id.clone());
    tiers::add_measure(&mut journal.account, earned.month, -measure);
    unsave_membership(&mut journal.account, earned, points);
    let whole = wholly_refunded(earned);

    let account = &mut journal.account;
    let from_pending = match account
        .pending
        .iter_mut()
        .find(|g| g.event_id == earned.event_id)
    {
        Some(grant) => {
            let n = grant.points.min(points);
            grant.points -= n;
            grant.qualifying = (grant.qualifying - measure).max(0);
            n
        }
        None => 0,
    };
    // The order's wait ends only when nothing of it is kept: a grant left with no points may
    // still hold back the measure of lines that earned none, or the referral of a first order
    // partly kept. Another order's grant of no points waits out its return window as ever.
    account
        .pending
        .retain(|g| g.points > 0 || g.event_id != earned.event_id || !whole);
    let from_available = points - from_pending;
    let taken: i64 = account
        .lots
        .take(from_available, Some(earned.expires_on))
        .iter()
        .map(|s| s.points)
        .sum();
    let mut shortfall = 0;
    let mut debited = taken;
    let owed = from_available - taken;
    match program.insufficient_balance {
        InsufficientBalance::AllowNegative => {
            account.debt += owed;
            debited += owed;
        }
        InsufficientBalance::FloorAtZero => shortfall = owed,
    }
    account.balance -= debited;

    let what = if reversal.scope == RefundScope::Rest {
        format!("order {} cancelled", record.order_id)
    } else {
        format!("refund {} of order {}", reversal.refund_id, record.order_id)
    };
    let mut reason = format!("{points} points taken back: {what}");
    if shortfall > 0 {
        reason.push_str(&format!(
            " ({shortfall} could not be taken: balance floors at zero)"
        ));
    }
    let mut source = journal.ctx.source.clone();
    source.order_id = Some(record.order_id.clone());
    source.refund_id = Some(reversal.refund_id.clone());
    let id = format!("{}#refund#{}", journal.ctx.event_id, reversal.refund_id);
    journal.push(
        id,
        EntryKind::Clawback,
        -debited,
        -from_pending,
        reason,
        source,
        reversal.occurred_at,
    );
    if let Some(entry) = journal.entries.last_mut() {
        entry.shortfall = shortfall;
    }
    Ok(())
}

/// What a membership says it saved loses the share of the order's membership bonus that a
/// refund took back, `points` of what its lines earned (cumulatively, as the clawback is).
fn unsave_membership(account: &mut Account, earned: &OrderEarning, points: i64) {
    let earned_by_lines = earned.lines.iter().map(|l| l.points).sum();
    let clawed: i64 = earned.lines.iter().map(|l| l.clawed).sum();
    let bonus = earned.membership_bonus;
    let back = cumulative(bonus, clawed, earned_by_lines)
        - cumulative(bonus, clawed - points, earned_by_lines);
    if let Some(m) = account.membership.as_mut().filter(|_| back > 0) {
        m.bonus_points = (m.bonus_points - back).max(0);
    }
}

/// The units to refund per line of the order, in the order's line order.
fn refund_quantities(
    order_id: &str,
    earned: &OrderEarning,
    reversal: &Reversal,
) -> Result<Vec<i64>, OrderError> {
    let lines = match &reversal.scope {
        RefundScope::Lines { lines } => lines,
        RefundScope::Share { .. } | RefundScope::Amount { .. } => {
            return Ok(vec![0; earned.lines.len()])
        }
        RefundScope::Rest => {
            return Ok(earned
                .lines
                .iter()
                .map(|l| l.quantity - l.refunded)
                .collect());
        }
    };
    let mut wanted = vec![0; earned.lines.len()];
    // A line the payment did not have (one added by an edit of the order after it was paid)
    // earned nothing, and a refund of it takes nothing back; a refund naming only such lines
    // is refused, as one whose order was imported without its lines' ids may be.
    let (mut known, mut unknown) = (false, None);
    for refund_line in lines {
        if refund_line.quantity <= 0 {
            return Err(OrderError::BadQuantity(refund_line.line_id.clone()));
        }
        match earned
            .lines
            .iter()
            .position(|l| l.line_id == refund_line.line_id)
        {
            Some(index) => {
                wanted[index] += refund_line.quantity;
                known = true;
            }
            None if refund_by_sku(earned, &mut wanted, refund_line) => known = true,
            None => unknown = unknown.or(Some(&refund_line.line_id)),
        }
    }
    match unknown {
        Some(line_id) if !known => Err(OrderError::UnknownLine {
            order_id: order_id.to_string(),
            line_id: line_id.clone(),
        }),
        _ => Ok(wanted),
    }
}

/// Spreads a refund line's units over the imported lines of its SKU, in the order's order, as
/// many on each as it has left to refund; what is left over goes on the first (and is capped
/// as any other refund of more than was bought). `false` when no imported line has the SKU.
fn refund_by_sku(earned: &OrderEarning, wanted: &mut [i64], refund_line: &RefundLine) -> bool {
    if refund_line.sku.is_empty() {
        return false;
    }
    let same: Vec<usize> = (0..earned.lines.len())
        .filter(|&i| {
            let line = &earned.lines[i];
            line.line_id.starts_with(IMPORTED_LINE_PREFIX) && line.sku == refund_line.sku
        })
        .collect();
    let Some(&first) = same.first() else {
        return false;
    };
    let mut left = refund_line.quantity;
    for &i in &same {
        let line = &earned.lines[i];
        let take = (line.quantity - line.refunded - wanted[i]).clamp(0, left);
        wanted[i] += take;
        left -= take;
    }
    wanted[first] += left;
    true
}

/// The SKU kept for a line imported without its platform's id; empty for any other.
fn imported_sku(purchase: &Purchase, line_id: &str) -> String {
    if !line_id.starts_with(IMPORTED_LINE_PREFIX) {
        return String::new();
    }
    purchase
        .lines
        .iter()
        .find(|l| l.line_id == line_id)
        .map(|l| l.sku.clone())
        .unwrap_or_default()
}

/// What the refunds have taken of each line's worth `w` (its eligible amount), given per line as
/// (w, units refunded r, of q units): the refunded units' floor(w x r / q), and on top the
/// refunds by amount's floor(W x share / of) of the order's whole W, spread over what the lines
/// have left in proportion (the odd units to the largest remainders, the first line on a tie).
/// Money refunded so takes back its share of the order whether it came back with units or as
/// an amount, in whichever order: a goodwill refund after a line was returned comes off the
/// lines kept.
fn worth_taken(lines: &[(i64, i64, i64)], share: i64, of: i64) -> Vec<i64> {
    let by_units: Vec<i64> = lines.iter().map(|&(w, r, q)| cumulative(w, r, q)).collect();
    let whole = lines
        .iter()
        .map(|&(w, _, _)| w)
        .fold(0, i64::saturating_add);
    let pool = cumulative(whole, share, of);
    let left = whole - by_units.iter().sum::<i64>();
    if pool <= 0 || left <= 0 {
        return by_units;
    }
    if pool >= left {
        return lines.iter().map(|&(w, _, _)| w).collect();
    }
    let (pool, left) = (i128::from(pool), i128::from(left));
    let shares: Vec<i128> = by_units
        .iter()
        .zip(lines)
        .map(|(units, &(w, _, _))| i128::from(w - units) * pool)
        .collect();
    // Σ shares / left is the pool exactly: apportioned, the extras add up to it.
    let extra = super::earning::apportion(&shares, left).unwrap_or_else(|| vec![0; lines.len()]);
    by_units
        .iter()
        .zip(extra)
        .map(|(units, extra)| units + extra)
        .collect()
}

/// What a line gives back of `value` (its points, measure or eligible amount): floor(value x r
/// / q) for its refunded units, as ever, or the share of its worth the refunds took, if more
/// (refunds by amount). A line worth nothing gives back by its units alone. (The caller also
/// keeps floor(value x share / of), the refunds by amount's own share of the line: what it
/// gives back is never less, and rounding the amount taken to minor units first must not make
/// it less.)
fn given_back(value: i64, refunded: i64, quantity: i64, worth: i64, taken: i64) -> i64 {
    let by_units = cumulative(value, refunded, quantity);
    if worth <= 0 {
        return by_units;
    }
    by_units.max(cumulative(value, taken, worth))
}

/// floor(total x part / whole), exactly; never more than `total`.
fn cumulative(total: i64, part: i64, whole: i64) -> i64 {
    if whole <= 0 {
        return 0;
    }
    let part = part.min(whole);
    let value = i128::from(total) * i128::from(part) / i128::from(whole);
    i64::try_from(value).unwrap_or(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, sku: &str, quantity: i64, refunded: i64) -> LineRecord {
        LineRecord {
            line_id: id.into(),
            quantity,
            points: 100 * quantity,
            measure: 0,
            refunded,
            clawed: 0,
            unqualified: 0,
            eligible: 0,
            refunded_eligible: 0,
            sku: sku.into(),
        }
    }

    fn imported(lines: Vec<LineRecord>) -> OrderEarning {
        let day = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        OrderEarning {
            event_id: "shopify-order-1-paid".into(),
            occurred_at: Utc::now(),
            month: YearMonth::of(day),
            expires_on: day,
            points: 0,
            lines,
            share_refunded: 0,
            share_total: 0,
            paid: 0,
            counted_in: Vec::new(),
            membership_bonus: 0,
        }
    }

    fn refund(lines: &[(&str, i64, &str)]) -> Reversal {
        Reversal {
            order_id: "1".into(),
            refund_id: "r-1".into(),
            scope: RefundScope::lines(
                lines
                    .iter()
                    .map(|(id, quantity, sku)| RefundLine {
                        line_id: (*id).into(),
                        quantity: *quantity,
                        sku: (*sku).into(),
                    })
                    .collect(),
            ),
            event_id: "r-1".into(),
            occurred_at: Utc::now(),
        }
    }

    #[test]
    fn a_refund_finds_imported_lines_by_sku_and_spreads_over_them() {
        // GIVEN an imported order: a tee on two rows of one unit each, and a cap between
        let order = imported(vec![
            line("export-1", "TEE", 1, 0),
            line("export-2", "CAP", 1, 0),
            line("export-3", "TEE", 1, 0),
        ]);
        // WHEN Shopify refunds two tees under its own line id
        let wanted = refund_quantities("1", &order, &refund(&[("4661", 2, "TEE")])).unwrap();
        // THEN one unit comes off each tee row, none off the cap
        assert_eq!(wanted, vec![1, 0, 1]);
        // AND a row refunded before is passed over for one with units left
        let order = imported(vec![
            line("export-1", "TEE", 1, 1),
            line("export-2", "TEE", 1, 0),
        ]);
        let wanted = refund_quantities("1", &order, &refund(&[("4661", 1, "TEE")])).unwrap();
        assert_eq!(wanted, vec![0, 1]);
    }

    #[test]
    fn a_refund_of_an_amount_alone_is_a_share_of_what_the_order_was_paid() {
        // GIVEN a refund of 25,000 with no total, and an order paid 100,000 whose line earned
        // on 80,000 (a category that earns nothing)
        let reversal = Reversal {
            scope: RefundScope::Amount { amount: 25_000 },
            ..refund(&[])
        };
        let mut earned = imported(vec![line("1", "", 1, 0)]);
        earned.lines[0].eligible = 80_000;
        earned.paid = 100_000;
        let share_of = |earned: &OrderEarning| {
            let record = OrderRecord {
                order_id: "1".into(),
                earned: Some(earned.clone()),
                ..OrderRecord::default()
            };
            as_share(&record, &reversal).scope
        };
        // WHEN it is applied THEN it is a share of 25,000 of 100,000
        let share = |total| RefundScope::Share {
            amount: 25_000,
            total,
        };
        assert_eq!(share_of(&earned), share(100_000));
        // AND an order recorded before what it was paid was kept shares it over what its
        // lines earned on
        earned.paid = 0;
        assert_eq!(share_of(&earned), share(80_000));
        // AND an order paid nothing for its goods gives nothing back
        earned.lines[0].eligible = 0;
        assert_eq!(share_of(&earned), RefundScope::lines(Vec::new()));
    }

    #[test]
    fn units_and_amounts_refunded_on_one_order_take_back_the_money_share_of_its_worth() {
        // GIVEN an order of tees worth 55,000 and a cap worth 45,000
        let lines = |tees: i64, cap: i64| [(55_000, tees, 2), (45_000, cap, 1)];
        // WHEN the cap is returned and a tenth of the order is refunded as money alone
        // THEN the tenth (10,000) comes off what is left: the tees
        assert_eq!(worth_taken(&lines(0, 1), 10, 100), vec![10_000, 45_000]);
        // AND the tenth alone takes a tenth of each line
        assert_eq!(worth_taken(&lines(0, 0), 10, 100), vec![5_500, 4_500]);
        // AND refunds by amount of the rest of the money take the rest
        assert_eq!(worth_taken(&lines(0, 1), 55, 100), vec![55_000, 45_000]);
        // AND refunds by units alone take floor(w x r / q) per line
        assert_eq!(worth_taken(&lines(1, 0), 0, 0), vec![27_500, 0]);
        // AND an odd unit goes to the larger remainder, the first line on a tie
        assert_eq!(worth_taken(&[(1, 0, 1), (1, 0, 1)], 1, 2), vec![1, 0]);
    }

    #[test]
    fn a_line_gives_back_points_by_its_worth_taken_never_less_than_by_its_units() {
        // GIVEN a line of 3 units that earned 100 points on 30,000
        // WHEN 1 unit is refunded and nothing more THEN it gives back floor(100 / 3)
        assert_eq!(given_back(100, 1, 3, 30_000, 10_000), 33);
        // WHEN a sixth of its worth is taken by amount as well THEN half of its points
        assert_eq!(given_back(100, 1, 3, 30_000, 15_000), 50);
        // AND a line worth nothing gives back by its units alone
        assert_eq!(given_back(100, 1, 2, 0, 0), 50);
    }

    #[test]
    fn only_imported_lines_are_found_by_sku() {
        // GIVEN an order paid by webhook, whose lines have the platform's ids
        let mut order = imported(vec![line("466157049", "", 2, 0)]);
        order.lines[0].sku = "TEE".into();
        // WHEN a refund names another id with the same SKU, or an imported order a SKU it
        // does not have, or no SKU
        for (order, refund) in [
            (&order, refund(&[("999", 1, "TEE")])),
            (
                &imported(vec![line("export-1", "TEE", 1, 0)]),
                refund(&[("999", 1, "MUG")]),
            ),
            (
                &imported(vec![line("export-1", "TEE", 1, 0)]),
                refund(&[("999", 1, "")]),
            ),
        ] {
            // THEN the line is unknown, as before
            assert!(matches!(
                refund_quantities("1", order, &refund),
                Err(OrderError::UnknownLine { .. })
            ));
        }
    }

    #[test]
    fn a_refund_of_a_paid_line_and_one_added_after_the_payment_takes_back_the_paid_one() {
        // GIVEN an order paid with two lines
        let order = imported(vec![line("401", "", 1, 0), line("402", "", 1, 0)]);
        // WHEN a refund returns line 401 and line 499, added by an edit after the payment
        let both = refund(&[("401", 1, ""), ("499", 1, "")]);
        // THEN 401 is taken back and 499, which earned nothing, adds nothing (before: the
        // refund was refused whole, and 401 kept its points)
        assert_eq!(refund_quantities("1", &order, &both), Ok(vec![1, 0]));
        // AND a refund naming only lines the payment lacked is still refused
        assert!(matches!(
            refund_quantities("1", &order, &refund(&[("499", 1, "")])),
            Err(OrderError::UnknownLine { .. })
        ));
    }
}
