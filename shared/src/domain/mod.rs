//! The pure loyalty domain: no I/O, no async, no clock reads. Time is always an argument.
//!
//! Services load state, call these functions, and commit what they return with a condition.

pub mod account;
pub mod books;
pub mod calendar;
pub mod earning;
pub mod engagement;
pub mod erasure;
pub mod import;
pub mod ledger;
pub mod limits;
pub mod lots;
pub mod membership;
pub mod merge;
pub mod money;
pub mod orders;
pub mod program;
pub mod safeguards;
pub mod schedule;
pub mod tiers;

pub use account::{
    Account, AccountError, Change, Hold, PendingGrant, Profile, Resumption, Suspension, TierStatus,
};
pub use earning::{CampaignEffect, Purchase, PurchaseLine};
pub use ledger::{EntryKind, EventContext, LedgerEntry, Source};
pub use lots::{LotShare, Lots};
pub use merge::Merged;
pub use money::{Currency, Money, MoneyError};
pub use orders::{OrderChange, OrderRecord, RefundLine, RefundScope, Reversal};
pub use program::{Program, ProgramError};
pub use schedule::{DueDates, DueJob, Notice};
