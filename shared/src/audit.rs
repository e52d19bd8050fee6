//! The whole-store audit: what must hold for every member, checked member by member, and the
//! program totals that the liability report must reconcile with.
//!
//! For each member: `balance == Σ points` and `pending == Σ pending` over the ledger, each
//! entry's `balance_after`/`pending_after` equal to the running sums, the lots minus the debt
//! equal to the balance and each lot equal to what the entries put in and took out of it, every
//! entry with a cause (an event, a job, a redemption, an operator with a reason), every order
//! record agreeing with the entries it produced, and no hold left past its expiry. For the
//! store: no event parked for more than a week.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::Serialize;

use crate::domain::{EntryKind, LedgerEntry};
use crate::envelope::Envelope;
use crate::ports::{MemberRecords, ParkedEvent};

/// A hold is settled by the daily job; one still there this long after its expiry was missed.
pub const HOLD_GRACE_HOURS: i64 = 48;
/// An event parked this long waits for an order that may never come.
pub const PARKED_DAYS: i64 = 7;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub program: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// What rule it breaks (`balance`, `pending`, `lots`, `running-balance`, `cause`, `order`,
    /// `hold`, `parked`, `merge`, `books`).
    pub rule: &'static str,
    pub detail: String,
    /// Stored minus expected, where the rule is a sum.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub difference: Option<i64>,
}

/// Sums over the members of one program (what the books must also say).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub members: u64,
    pub entries: u64,
    /// Σ balance.
    pub balance: i64,
    /// Σ of every lot (available points owed by the brand).
    pub lots: i64,
    pub debt: i64,
    pub pending: i64,
    pub held: i64,
}

impl Totals {
    pub fn add(&mut self, other: &Totals) {
        self.members += other.members;
        self.entries += other.entries;
        self.balance += other.balance;
        self.lots += other.lots;
        self.debt += other.debt;
        self.pending += other.pending;
        self.held += other.held;
    }
}

/// Checks one member; returns the violations and the member's part of the totals.
pub fn check_member(records: &MemberRecords, now: DateTime<Utc>) -> (Vec<Violation>, Totals) {
    let mut found = Vec::new();
    let mut violation = |rule: &'static str, detail: String, difference: Option<i64>| {
        found.push(Violation {
            program: records.program.clone(),
            member: Some(records.member.clone()),
            rule,
            detail,
            difference,
        })
    };
    let entries = &records.entries;
    let mut totals = Totals {
        entries: entries.len() as u64,
        ..Totals::default()
    };
    let Some(account) = &records.account else {
        violation(
            "account",
            format!("{} ledger entries but no account", entries.len()),
            None,
        );
        return (found, totals);
    };
    // A member merged away holds nothing: what reached it since (the second step of a merge
    // into it, run after it was merged on) is in no account anyone uses.
    if let Some(into) = account.merged_into().filter(|_| account.erased.is_none()) {
        let (points, pending) = (account.balance, account.pending_points());
        if points != 0 || pending != 0 || account.debt != 0 {
            violation(
                "merge",
                format!(
                    "merged into {into} but holds {points} points, {pending} pending and a debt of {}: move them to {into} with adjustments",
                    account.debt
                ),
                Some(points + pending),
            );
        }
    }
    // An erasure marks the account first and deletes it last; a mark an hour old is a run that
    // stopped (its member's events wait for it), which only running it again finishes. The
    // account kept under the pseudonym carries the mark too, and is done.
    if let Some(erasure) = account
        .erased
        .as_ref()
        .filter(|e| e.pseudonym != records.member && e.at + Duration::hours(1) < now)
    {
        violation(
            "erasure",
            format!(
                "marked for erasure by {} at {} and not finished (its events wait): run the erasure again",
                erasure.by, erasure.at
            ),
            None,
        );
    }
    // A member merged into another is no longer one (its books say so too).
    totals.members = u64::from(account.is_member());
    totals.balance = account.balance;
    totals.lots = account.lots.total();
    totals.debt = account.debt;
    totals.pending = account.pending_points();
    totals.held = account.holds.iter().map(|h| h.points).sum();
    // An erasure under way deletes the member's entries and copies some under the pseudonym,
    // a step at a time: neither account sums to its ledger until it is done. Its own hour is
    // left to it, as above; the books show what it moves.
    if account
        .erased
        .as_ref()
        .is_some_and(|e| e.at + Duration::hours(1) >= now)
    {
        return (found, totals);
    }

    let (mut points, mut pending) = (0_i64, 0_i64);
    let mut lots: BTreeMap<NaiveDate, i64> = BTreeMap::new();
    for entry in entries {
        points += entry.points;
        pending += entry.pending;
        if entry.balance_after != points || entry.pending_after != pending {
            violation(
                "running-balance",
                format!(
                    "entry {} says balance {} and pending {} after it; the entries up to it sum to {points} and {pending}",
                    entry.id, entry.balance_after, entry.pending_after
                ),
                Some(entry.balance_after - points),
            );
        }
        for share in &entry.lots {
            *lots.entry(share.expires_on).or_insert(0) += share.points;
        }
        if let Some(why) = missing_cause(entry) {
            violation("cause", format!("entry {}: {why}", entry.id), None);
        }
    }
    if account.balance != points {
        violation(
            "balance",
            format!(
                "balance {} but the ledger sums to {points}",
                account.balance
            ),
            Some(account.balance - points),
        );
    }
    if totals.pending != pending {
        violation(
            "pending",
            format!(
                "pending {} but the ledger sums to {pending}",
                totals.pending
            ),
            Some(totals.pending - pending),
        );
    }
    if totals.lots - account.debt != account.balance || account.debt < 0 {
        violation(
            "lots",
            format!(
                "lots {} minus debt {} is not the balance {}",
                totals.lots, account.debt, account.balance
            ),
            Some(totals.lots - account.debt - account.balance),
        );
    }
    for share in account.lots.iter() {
        let booked = lots.remove(&share.expires_on).unwrap_or(0);
        if booked != share.points {
            violation(
                "lots",
                format!(
                    "lot ending {} holds {} but its entries sum to {booked}",
                    share.expires_on, share.points
                ),
                Some(share.points - booked),
            );
        }
    }
    for (day, booked) in lots.into_iter().filter(|(_, p)| *p != 0) {
        violation(
            "lots",
            format!("no lot ending {day}, but its entries sum to {booked}"),
            Some(-booked),
        );
    }
    check_orders(records, &mut violation);
    for hold in &account.holds {
        if hold.expires_at + Duration::hours(HOLD_GRACE_HOURS) < now {
            violation(
                "hold",
                format!(
                    "hold {} of {} points expired at {} and was never settled",
                    hold.redemption, hold.points, hold.expires_at
                ),
                None,
            );
        }
    }
    (found, totals)
}

/// Why an entry has no cause, if it has none.
fn missing_cause(entry: &LedgerEntry) -> Option<String> {
    let s = &entry.source;
    if entry.reason.trim().is_empty() {
        return Some("no reason".into());
    }
    let ok = match entry.kind {
        EntryKind::Adjust => s.admin.is_some(),
        EntryKind::Redeem | EntryKind::Reverse => s.redemption.is_some(),
        EntryKind::Expire => s.rule.as_deref() == Some("expiry") || s.event_id.is_some(),
        EntryKind::Earn
        | EntryKind::Pending
        | EntryKind::Release
        | EntryKind::Clawback
        | EntryKind::Tier
        | EntryKind::Merge
        | EntryKind::Forfeit
        | EntryKind::Payout => s.event_id.is_some(),
    };
    (!ok).then(|| {
        format!(
            "a {:?} entry names no {}",
            entry.kind,
            match entry.kind {
                EntryKind::Adjust => "operator",
                EntryKind::Redeem | EntryKind::Reverse => "redemption",
                _ => "event",
            }
        )
    })
}

/// Each order record against the entries it produced: the purchase entry carries the points
/// the record says were earned, and its clawbacks sum to what its lines say was taken back.
fn check_orders(
    records: &MemberRecords,
    violation: &mut impl FnMut(&'static str, String, Option<i64>),
) {
    // An order copied by a merge has its purchase on the other member's ledger, and its
    // clawbacks on both.
    for order in records.orders.iter().filter(|o| o.moved_from.is_none()) {
        let Some(earned) = &order.earned else {
            continue;
        };
        let lines: i64 = earned.lines.iter().map(|l| l.points).sum();
        if lines != earned.points {
            violation(
                "order",
                format!(
                    "order {}: lines earned {lines} but the order {}",
                    order.order_id, earned.points
                ),
                Some(earned.points - lines),
            );
        }
        let first = format!("{}#0", earned.event_id);
        let entry = records.entries.iter().find(|e| e.id == first);
        let credited = entry.map_or(0, |e| e.points + e.pending);
        if earned.points > 0 && credited != earned.points {
            violation(
                "order",
                format!(
                    "order {} earned {} points but its entry {first} credits {credited}",
                    order.order_id, earned.points
                ),
                Some(credited - earned.points),
            );
        }
        let clawed: i64 = earned.lines.iter().map(|l| l.clawed).sum();
        let taken: i64 = records
            .entries
            .iter()
            .filter(|e| {
                e.kind == EntryKind::Clawback
                    && e.source.order_id.as_deref() == Some(&order.order_id)
            })
            .map(|e| -(e.points + e.pending) + e.shortfall)
            .sum();
        if clawed != taken {
            violation(
                "order",
                format!(
                    "order {}: its lines gave back {clawed} points but its clawback entries took {taken}",
                    order.order_id
                ),
                Some(taken - clawed),
            );
        }
    }
}

/// An event parked for longer than a week.
pub fn check_parked(event: &ParkedEvent, now: DateTime<Utc>) -> Option<Violation> {
    let parked = |detail: String| Violation {
        program: event.program.clone(),
        member: None,
        rule: "parked",
        detail,
        difference: None,
    };
    // A suspended member's events, held events and waiting adjustments wait for an operator,
    // however long that takes.
    if event.order_key.starts_with("suspended#")
        || [
            crate::services::safeguards::REVIEW_KEY,
            crate::services::safeguards::APPROVALS_KEY,
            crate::services::safeguards::DECIDED_KEY,
        ]
        .contains(&event.order_key.as_str())
    {
        return None;
    }
    match serde_json::from_str::<Envelope>(&event.body) {
        Ok(envelope) if envelope.occurred_at + Duration::days(PARKED_DAYS) < now => {
            Some(parked(format!(
                "event {} for order {} has waited since {} for its order",
                event.event_id, event.order_key, envelope.occurred_at
            )))
        }
        Ok(_) => None,
        Err(e) => Some(parked(format!(
            "event {} for order {} cannot be read: {e}",
            event.event_id, event.order_key
        ))),
    }
}
