//! Ledger entries: the truth about every point.
//!
//! Each change to a member's points is one entry: `points` is the change to the available
//! balance, `pending` the change to pending points. Over the stored entries of a member,
//! Σ points == balance and Σ pending == pending, always.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Points credited straight to the available balance.
    Earn,
    /// Points credited as pending until the return window closes.
    Pending,
    /// Pending points that became available.
    Release,
    Redeem,
    /// A redemption given back (points return to their original lots).
    Reverse,
    Expire,
    Adjust,
    /// Points taken back because an order was refunded or cancelled.
    Clawback,
    /// A tier change; always 0 points.
    Tier,
    /// Points moved between two members who were merged: out of one, into the other.
    Merge,
    /// Points given up when a member's personal data was erased (the amounts stay in the books).
    Forfeit,
    /// Available points paid out in money when a member's personal data was erased (programs
    /// whose `[erasure]` says so).
    Payout,
}

/// Where an entry came from: enough to trace every point to the event that created or spent it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
    /// The earning rule or action (e.g. `purchase`, `signup`, `referral:referee`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redemption: Option<String>,
    /// The operator who made an adjustment or reversal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Deterministic from the event, so a retried event writes the same ids (and is refused by
    /// the store's `attribute_not_exists` condition instead of being counted twice).
    pub id: String,
    pub kind: EntryKind,
    pub points: i64,
    pub pending: i64,
    pub balance_after: i64,
    pub pending_after: i64,
    pub recorded_at: DateTime<Utc>,
    pub occurred_at: DateTime<Utc>,
    pub source: Source,
    pub reason: String,
    /// Points a clawback could not take because the balance floors at zero.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shortfall: i64,
    /// A change that time alone has made but no job has written yet (see `Account::as_of`).
    #[serde(default)]
    pub provisional: bool,
    /// What the entry did to each lot (signed, by last usable day): a credit names the lot it
    /// joined, a spend the lots it took from. `points` minus their sum is the change to the
    /// debt (`points - Σ lots == -Δdebt`), so the books can follow every lot to its end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lots: Vec<super::lots::LotShare>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// The event that a change belongs to: its id (for entry ids), where it came from, and the two
/// times every entry carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventContext {
    pub event_id: String,
    pub source: Source,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
}

impl EventContext {
    pub fn new(
        event_id: impl Into<String>,
        occurred_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Self {
        let event_id = event_id.into();
        EventContext {
            source: Source {
                event_id: Some(event_id.clone()),
                ..Source::default()
            },
            event_id,
            occurred_at,
            recorded_at: now,
        }
    }

    pub fn with_source(mut self, source: Source) -> Self {
        self.source = Source {
            event_id: Some(self.event_id.clone()),
            ..source
        };
        self
    }
}
