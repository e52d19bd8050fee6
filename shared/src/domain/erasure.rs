//! Erasing a member's personal data while keeping the books (GDPR Art. 17 and 17(3)(b)).
//!
//! The member's outstanding points are forfeited with an entry, the profile and everything that
//! describes the person go, and what the books need (the amounts of every entry) is kept under a
//! random pseudonym that nothing links back to the person.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::account::{Account, AccountError, Change, Journal, Profile};
use super::ledger::{EntryKind, EventContext, LedgerEntry};
use super::program::{Outstanding, Program};

/// Points at `micros` millionths of a major unit each, as a decimal of major units.
fn paid_value(points: i64, micros: i64) -> String {
    let total = i128::from(points) * i128::from(micros);
    let (whole, fraction) = (total / 1_000_000, total % 1_000_000);
    if fraction == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{fraction:06}")
            .trim_end_matches('0')
            .to_string()
    }
}

/// What a referred member's account names as its referrer once the referrer is erased: it
/// was referred (its welcome bonus stands, and no one else can claim it), by no one anyone
/// can name, and no reward is owed. Not a member id (`#` is refused in those).
pub const ERASED_REFERRER: &str = "#erased";

/// The referrer a reward is owed to, unless it was erased.
pub fn payable_referrer(referrer: String) -> Option<String> {
    (referrer != ERASED_REFERRER).then_some(referrer)
}

/// How an erased member id or identity (as events name members: `m-1`, `shopify:7001234`,
/// `email:ann@example.com`, an app's subject) is remembered: a SHA-256 digest of the name
/// within its program, in hex. The record says that someone so named was erased, and when, so
/// that an event from before (a reconcile of old orders, a redrive, a replay) makes no member
/// of the name again; it holds no name in the clear.
pub fn erased_name(program: &str, name: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{program}\n{name}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether an event of `occurred_at` comes from before an erasure of `erased_at` of a name it
/// carries: it belongs to the person erased, whose points went with them. An event after it
/// is the same name coming back, which makes a new member as a first event does.
pub fn before_erasure(occurred_at: DateTime<Utc>, erased_at: Option<DateTime<Utc>>) -> bool {
    erased_at.is_some_and(|erased_at| occurred_at <= erased_at)
}

impl Account {
    /// The account of a member referred by `referrer` once the referrer is erased; `None` when
    /// it does not name it.
    pub fn forget_referrer(&self, referrer: &str) -> Option<Account> {
        if self.referred_by.as_deref() != Some(referrer) {
            return None;
        }
        let mut account = self.clone();
        account.referred_by = Some(ERASED_REFERRER.to_string());
        if let Some(due) = account.referral_due.as_mut() {
            due.referrer = ERASED_REFERRER.to_string();
        }
        Some(account)
    }
}

/// What became of an erased member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erasure {
    /// The id the kept account and ledger have now.
    pub pseudonym: String,
    pub at: DateTime<Utc>,
    pub reason: String,
    pub by: String,
}

impl Account {
    /// Forfeits every available and pending point and clears what describes the person.
    pub fn erase(
        &self,
        program: &Program,
        erasure: Erasure,
        ctx: &EventContext,
    ) -> Result<Change, AccountError> {
        let mut journal = Journal::begin(self, program, ctx);
        if !journal.account.holds.is_empty() {
            return Err(AccountError::Invalid(format!(
                "{} has points held for a checkout; capture or void the hold first",
                self.member
            )));
        }
        // Merged out into a member erased before it received the points (the service erases
        // such a member only once the survivor is gone): they come back, lots and pending
        // points as they were, to be given up below, so the books' merge halves still cancel.
        if let Some(merged) = self.merged.as_ref().filter(|m| {
            m.snapshot.balance != 0 || m.snapshot.pending_points() != 0 || m.snapshot.debt != 0
        }) {
            let snapshot = &merged.snapshot;
            let account = &mut journal.account;
            account.lots = snapshot.lots.clone();
            account.debt = snapshot.debt;
            account.balance = snapshot.balance;
            account.pending = snapshot.pending.clone();
            journal.post(
                EntryKind::Merge,
                snapshot.balance,
                snapshot.pending_points(),
                "Merge undone: the member it was merged into was erased before receiving it",
            );
        }
        let (points, pending) = (journal.account.balance, journal.account.pending_points());
        let debt = journal.account.debt;
        let account = &mut journal.account;
        account.lots = Default::default();
        account.debt = 0;
        account.balance = 0;
        account.pending.clear();
        account.profile = Profile::default();
        account.categories.clear();
        account.referred_by = None;
        account.referral_due = None;
        account.notified.clear();
        account.suspended = None;
        // The snapshot describes the person, and the survivor's id another of their names.
        account.merged = None;
        account.erased = Some(erasure);
        match program.erasure.outstanding {
            Outstanding::PayOut if points > 0 => {
                let worth = program
                    .point_value_micros
                    .map(|micros| {
                        format!(
                            ", worth {} {}",
                            paid_value(points, micros),
                            program.currency
                        )
                    })
                    .unwrap_or_default();
                journal.post(
                    EntryKind::Payout,
                    -points,
                    0,
                    &format!(
                        "{points} points paid out{worth}: the member's personal data was erased"
                    ),
                );
                if pending > 0 {
                    journal.post(
                        EntryKind::Forfeit,
                        0,
                        -pending,
                        "Pending points forfeited: the member's personal data was erased",
                    );
                }
            }
            // The books count the lots given up and the debt forgiven apart (`domain::books`).
            _ if debt > 0 => journal.post(
                EntryKind::Forfeit,
                -points,
                -pending,
                &format!(
                    "Points forfeited and a debt of {debt} points forgiven: the member's personal data was erased"
                ),
            ),
            _ => journal.post(
                EntryKind::Forfeit,
                -points,
                -pending,
                "Points forfeited: the member's personal data was erased",
            ),
        }
        Ok(journal.finish())
    }
}

/// A ledger entry as kept for the books: the amounts, kinds, dates and order ids stay; every
/// text that could name the person (`stand_ins`: the member id, identities and the members
/// merged into it, longest first, each with what stands for it) is replaced, in the reason and
/// in the ids that carry a member's id (a merge's `merge-{member}`).
pub fn pseudonymised(entry: &LedgerEntry, stand_ins: &[(String, String)]) -> LedgerEntry {
    let mut kept = entry.clone();
    // Only names that can name a person: a short one (`42` of `pos:42`) would be replaced
    // inside order and event numbers.
    let names: Vec<(String, String)> = stand_ins
        .iter()
        .filter(|(name, _)| name.chars().count() >= 5)
        .cloned()
        .collect();
    kept.reason = replaced(&kept.reason, &names);
    kept.id = replaced(&kept.id, &names);
    kept.source.event_id = kept.source.event_id.map(|id| replaced(&id, &names));
    kept.provisional = false;
    kept
}

/// `text` with each name replaced by its stand-in, in the order given.
pub fn replaced(text: &str, stand_ins: &[(String, String)]) -> String {
    stand_ins
        .iter()
        .filter(|(name, _)| !name.is_empty())
        .fold(text.to_string(), |text, (name, stand_in)| {
            text.replace(name.as_str(), stand_in)
        })
}

/// A random pseudonym (nothing in it derives from the person).
pub fn new_pseudonym() -> String {
    format!("erased-{}", uuid::Uuid::new_v4().simple())
}
