//! The books: a program's points liability kept as counters that every change adds to in its
//! own commit, so that finance's report reads a few hundred counter rows however many members
//! there are (docs/decisions.md, "The books are written with each commit").
//!
//! A commit adds, for the day it is recorded on (program time zone), to named counters (short
//! names: a day's counters are one item in DynamoDB, and its size is what each write costs):
//!
//! - `p|{kind}` and `q|{kind}`: the entries' changes to available and pending points (an
//!   erasure's forgiven debt apart, as `p|debt_written_off`);
//! - `l|{last day}|{kind}`: what the entries did to each lot (the issue cohorts for breakage);
//! - `t|{tier}|{last day}`: the lots held by the members of each tier;
//! - `debt`: points members owe after a clawback took more than they had;
//! - `r|{tier}|{day}|{last day}`: pending points by tier, the day they become available and
//!   the lot they join then;
//! - `held`: points held for a checkout;
//! - `m|{tier}`: members per tier, and `joined`: new members;
//! - `x|{day}|{kind}`: releases and expiries written after the day they were due, by that day
//!   (the report counts them in its month; `p|` has them on the day they were written).
//!
//! Summed over every day up to a date, the counters are the state of the whole program on that
//! date, and they equal the sums over every account, which `loyalty audit` checks.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::calendar::local_date;
use super::{Account, EntryKind, LedgerEntry, Program};

/// The `p|` counter of the debt forgiven when a member who owed points was erased.
pub const DEBT_WRITTEN_OFF: &str = "debt_written_off";

/// How many shards each day's counters are spread over: a busy day's commits never all update
/// one item.
pub const BOOK_SHARDS: u32 = 16;

/// Additions to one day's counters in one shard, written with the change they count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BooksAdd {
    pub day: Option<NaiveDate>,
    pub shard: u32,
    pub counts: BTreeMap<String, i64>,
}

/// One counter of one day, summed over the shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookRow {
    pub day: NaiveDate,
    pub name: String,
    pub value: i64,
}

/// The shard a member's changes go to (stable per member; a batch's commits written together
/// add to the shard of their first).
pub fn book_shard(member: &str) -> u32 {
    crate::bucketing::fnv32a(member) % BOOK_SHARDS
}

/// The name of an entry kind in counter names (the same as in the ledger's JSON).
pub fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Earn => "earn",
        EntryKind::Pending => "pending",
        EntryKind::Release => "release",
        EntryKind::Redeem => "redeem",
        EntryKind::Reverse => "reverse",
        EntryKind::Expire => "expire",
        EntryKind::Adjust => "adjust",
        EntryKind::Clawback => "clawback",
        EntryKind::Tier => "tier",
        EntryKind::Merge => "merge",
        EntryKind::Forfeit => "forfeit",
        EntryKind::Payout => "payout",
    }
}

impl BooksAdd {
    /// What a commit from `before` to `after` with `entries`, recorded at `at`, adds.
    pub fn between(
        program: &Program,
        before: Option<&Account>,
        after: &Account,
        entries: &[LedgerEntry],
        at: DateTime<Utc>,
    ) -> BooksAdd {
        let mut add = BooksAdd {
            day: Some(local_date(program.time_zone, at)),
            shard: book_shard(&after.member),
            counts: BTreeMap::new(),
        };
        for entry in entries.iter().filter(|e| !e.provisional) {
            let kind = kind_name(entry.kind);
            if entry.kind == EntryKind::Forfeit {
                // An erasure gives up the member's lots and forgives its debt in one entry:
                // counted apart, so that neither hides the other.
                let lots: i64 = entry.lots.iter().map(|share| share.points).sum();
                add.plus("p|forfeit".into(), lots);
                add.plus(format!("p|{DEBT_WRITTEN_OFF}"), entry.points - lots);
            } else {
                add.plus(format!("p|{kind}"), entry.points);
            }
            add.plus(format!("q|{kind}"), entry.pending);
            for share in &entry.lots {
                add.plus(format!("l|{}|{kind}", share.expires_on), share.points);
            }
            // A release or an expiry written after its day (the job runs after midnight, or
            // another change of the member settled it) belongs to its day's month, as the
            // report counts it before it is written.
            if matches!(entry.kind, EntryKind::Release | EntryKind::Expire) {
                let due = local_date(program.time_zone, entry.occurred_at);
                if Some(due) != add.day {
                    add.plus(format!("x|{due}|{kind}"), entry.points);
                }
            }
        }
        for share in after.lots.iter() {
            add.plus(
                format!("t|{}|{}", after.tier.id, share.expires_on),
                share.points,
            );
        }
        for ((day, lot), points) in releases(program, after) {
            add.plus(format!("r|{}|{day}|{lot}", after.tier.id), points);
        }
        let held = |a: &Account| a.holds.iter().map(|h| h.points).sum::<i64>();
        add.plus("held".into(), held(after) - before.map_or(0, held));
        add.plus("debt".into(), after.debt - before.map_or(0, |b| b.debt));
        match before {
            Some(before) => {
                for share in before.lots.iter() {
                    add.plus(
                        format!("t|{}|{}", before.tier.id, share.expires_on),
                        -share.points,
                    );
                }
                for ((day, lot), points) in releases(program, before) {
                    add.plus(format!("r|{}|{day}|{lot}", before.tier.id), -points);
                }
                if before.tier.id != after.tier.id {
                    add.plus(format!("m|{}", before.tier.id), -1);
                    add.plus(format!("m|{}", after.tier.id), 1);
                }
            }
            None if after.is_member() => {
                add.plus(format!("m|{}", after.tier.id), 1);
                add.plus("joined".into(), 1);
            }
            None => {}
        }
        // A member merged into another, or erased, is no longer one.
        if before.is_some_and(Account::is_member) && !after.is_member() {
            add.plus(format!("m|{}", after.tier.id), -1);
        }
        add
    }

    fn plus(&mut self, name: String, value: i64) {
        if value == 0 {
            return;
        }
        let slot = self.counts.entry(name.clone()).or_insert(0);
        *slot += value;
        if *slot == 0 {
            // A change that cancels out (a lot unchanged) adds nothing: leave it out.
            self.counts.remove(&name);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Adds the counts of another change of the same day (changes committed together).
    pub fn absorb(&mut self, other: &BooksAdd) {
        for (name, value) in &other.counts {
            self.plus(name.clone(), *value);
        }
    }
}

/// Pending points by the day (program time zone) they become available and the lot they join.
fn releases(program: &Program, account: &Account) -> BTreeMap<(NaiveDate, NaiveDate), i64> {
    let mut days = BTreeMap::new();
    for grant in &account.pending {
        let day = local_date(program.time_zone, grant.release_at);
        *days.entry((day, grant.expires_on)).or_insert(0) += grant.points;
    }
    days
}
