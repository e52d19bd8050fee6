//! A balance brought over from another programme: one row of an import file applied to an
//! account. The row states points (added, or the balance to reach), and optionally the tier
//! and the birthday the member had there, and when the points expire.

use chrono::NaiveDate;

use super::account::{lot_expiry, parse_birthday, Account, AccountError, Change, Journal};
use super::calendar::local_date;
use super::ledger::{EntryKind, EventContext};
use super::program::Program;

/// How a row's points are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportMode {
    /// The points are added to the balance (negative ones taken from it).
    Add,
    /// The points are the balance to reach: the difference is written.
    Set,
}

impl ImportMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ImportMode::Add => "add",
            ImportMode::Set => "set",
        }
    }
}

/// What one row of an import states about a member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportedBalance {
    /// `None`: the row states no balance (a Yotpo export without one), which sets nothing,
    /// in either mode.
    pub points: Option<i64>,
    pub tier: Option<String>,
    /// `MM-DD`.
    pub birthday: Option<String>,
    /// When the imported points expire; the program's rule when absent.
    pub expires_on: Option<NaiveDate>,
}

impl Account {
    /// Applies one imported row: the points as an adjustment entry with `reason`, the tier
    /// (an entry of its own) and the birthday when the member has none yet. Nothing to change
    /// is a no-op with the reason.
    pub fn import_balance(
        &self,
        program: &Program,
        mode: ImportMode,
        row: &ImportedBalance,
        reason: &str,
        ctx: &EventContext,
    ) -> Result<Change, AccountError> {
        let mut journal = Journal::begin(self, program, ctx);
        // Settling (releases, expiries now due) may post entries of its own.
        let settled = journal.entries.len();
        let today = local_date(program.time_zone, ctx.recorded_at);
        let delta = match (mode, row.points) {
            (_, None) => 0,
            (ImportMode::Add, Some(points)) => points,
            (ImportMode::Set, Some(points)) if points < 0 => {
                return Err(AccountError::Invalid(format!(
                    "a balance cannot be negative (got {points})"
                )))
            }
            // Points held for a checkout are being spent from the balance stated: counted in
            // it, they come to the same end whether the hold is captured or voided.
            (ImportMode::Set, Some(points)) => {
                points - journal.account.balance - held(&journal.account)
            }
        };
        super::limits::check_points("points", delta)
            .map_err(|e| AccountError::Invalid(e.to_string()))?;
        if delta > 0 {
            let expires_on = row
                .expires_on
                .unwrap_or_else(|| lot_expiry(program, ctx.occurred_at));
            if expires_on < today {
                return Err(AccountError::Invalid(format!(
                    "the points would have expired on {expires_on}"
                )));
            }
            journal.credit(delta, expires_on);
            journal.post(EntryKind::Adjust, delta, 0, reason);
        } else if delta < 0 {
            let available = journal.account.balance;
            if available < -delta {
                return Err(AccountError::InsufficientPoints {
                    available,
                    needed: -delta,
                });
            }
            journal.account.lots.take(-delta, None);
            journal.account.balance += delta;
            journal.post(EntryKind::Adjust, delta, 0, reason);
        }
        if let Some(tier) = &row.tier {
            let index = program
                .tiers
                .iter()
                .position(|t| &t.id == tier)
                .ok_or_else(|| {
                    AccountError::Invalid(format!("tier {tier:?} is not a tier of this program"))
                })?;
            if journal.account.tier.id != *tier {
                let why = format!("{reason}: tier {tier} carried over");
                super::tiers::set_tier(&mut journal, program, index, today, &why);
            }
        }
        if let Some(text) = &row.birthday {
            let birthday = parse_birthday(text)?;
            if journal.account.profile.birthday.is_none() {
                journal.account.profile.birthday = Some(birthday);
                journal.account.profile.birthday_set_on = Some(today);
            }
        }
        super::limits::check_account(&journal.account)
            .map_err(|e| AccountError::Invalid(e.to_string()))?;
        if journal.entries.len() == settled && journal.account.profile == self.profile {
            journal.no_op = Some(match (mode, row.points) {
                (_, None) => "the row states no balance, and nothing else to change".to_string(),
                (ImportMode::Set, Some(points)) => format!("the balance is already {points}"),
                (ImportMode::Add, Some(_)) => "nothing to add".to_string(),
            });
        }
        Ok(journal.finish())
    }
}

/// Points held for checkouts not yet captured or voided.
fn held(account: &Account) -> i64 {
    account.holds.iter().map(|h| h.points).sum()
}
