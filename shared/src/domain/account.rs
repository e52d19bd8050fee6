//! A member's account and the operations that change it.
//!
//! Every operation works on a copy and returns the new account together with the ledger entries
//! that explain the change ([`Change`]); a failed operation changes nothing. Before any operation
//! the account is *settled* at the event's processing time: pending points whose return window
//! closed become available and lots past their last day expire, so what a member sees "as of
//! now" and what the jobs later write are the same entries.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::calendar::{end_of_month_after, local_date, start_of_day, YearMonth};
use super::ledger::{EntryKind, EventContext, LedgerEntry, Source};
use super::lots::{LotShare, Lots};
use super::program::Program;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub program: String,
    pub member: String,
    /// Available points: `lots.total() - debt`.
    pub balance: i64,
    /// Points owed after a clawback took more than the member had (allow-negative programs);
    /// later credits pay it off first.
    #[serde(default)]
    pub debt: i64,
    #[serde(default)]
    pub lots: Lots,
    #[serde(default)]
    pub pending: Vec<PendingGrant>,
    /// Points held for a checkout (pay with points) until the shop captures or voids them; a
    /// hold not captured by its expiry returns its points.
    #[serde(default)]
    pub holds: Vec<Hold>,
    /// Qualifying measure (spend in minor units, or points) by month of purchase.
    #[serde(default)]
    pub qualifying: BTreeMap<YearMonth, i64>,
    pub tier: TierStatus,
    /// Engagement actions rewarded: action → limit period ("2026-11", "2026", "lifetime") → count.
    #[serde(default)]
    pub actions: BTreeMap<String, BTreeMap<String, u32>>,
    #[serde(default)]
    pub purchases: u32,
    #[serde(default)]
    pub referred_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referral_due: Option<ReferralDue>,
    pub joined_on: NaiveDate,
    #[serde(default)]
    pub last_purchase_at: Option<DateTime<Utc>>,
    /// Product categories the member has bought from (campaign audiences): at most
    /// [`MAX_KEPT_CATEGORIES`](super::limits::MAX_KEPT_CATEGORIES), the first bought, each of
    /// at most [`MAX_CATEGORY_CHARS`](super::limits::MAX_CATEGORY_CHARS) characters.
    #[serde(default)]
    pub categories: std::collections::BTreeSet<String>,
    /// What the member told about themselves (birthday, anniversary).
    #[serde(default)]
    pub profile: Profile,
    /// Notices already sent (`expiring:{last day}`, `downgrade:{review date}`).
    #[serde(default)]
    pub notified: std::collections::BTreeSet<String>,
    /// Set once this member was merged into another: the member keeps no points of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged: Option<super::merge::Merged>,
    /// Members merged into this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<String>,
    /// Set while an operator has suspended the member: events wait, nothing is redeemed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<Suspension>,
    /// The last lift of a suspension: what it decided for the events that waited. A resume
    /// asked again while they are being dealt with follows it, or is refused when it asks the
    /// other way (two operators resuming at once would otherwise split the events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<Resumption>,
    /// Points earned by day (program time zone), today's and yesterday's, kept only while the
    /// program has a daily limit (`safeguards.daily_points`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub earned_days: BTreeMap<NaiveDate, i64>,
    /// Set once the member's personal data was erased: the account and ledger kept for the
    /// books are under the pseudonym.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased: Option<super::erasure::Erasure>,
    /// When its id was last erased before this account was opened (the person came back):
    /// its events from before then were the person's erased, and are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased_before: Option<DateTime<Utc>>,
    /// The paid membership, current or past (`[membership]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<super::membership::Membership>,
    /// Optimistic-concurrency version: every commit is conditioned on it.
    #[serde(default)]
    pub version: u64,
}

/// Points of one purchase that wait for the return window to close.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingGrant {
    /// The earn event that created the grant (its release entry id derives from it).
    pub event_id: String,
    pub order_id: String,
    pub release_at: DateTime<Utc>,
    /// The lot the points join when released.
    pub expires_on: NaiveDate,
    pub points: i64,
    /// The qualifying measure of the purchase not yet counted for an upgrade
    /// (`tier_rules.upgrade_after_return_window`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub qualifying: i64,
    /// The month that measure is counted in (the purchase's), kept with it: an upgrade
    /// subtracts only what waits inside its window. Absent on grants kept before: those are
    /// subtracted whatever their month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub month: Option<YearMonth>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// A referral waiting for the new member's first order to pass its return window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferralDue {
    pub referrer: String,
    /// The first purchase's event: its release pays both sides.
    pub event_id: String,
}

/// The member's profile. A birthday is a month and day (`MM-DD`); it can be changed at most
/// once in 365 days, so that it cannot be moved to collect a birthday bonus twice in a year.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    #[serde(default)]
    pub birthday: Option<String>,
    /// When the birthday was last set.
    #[serde(default)]
    pub birthday_set_on: Option<NaiveDate>,
    #[serde(default)]
    pub anniversary: Option<NaiveDate>,
    /// When the anniversary was last set: like a birthday, it changes at most once in 365 days.
    #[serde(default)]
    pub anniversary_set_on: Option<NaiveDate>,
}

/// Why and by whom a member was suspended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    pub reason: String,
    pub by: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resumption {
    pub by: String,
    pub at: DateTime<Utc>,
    /// The events that waited were cancelled (else applied).
    pub cancelled: bool,
}

/// Days between two changes of a birthday.
pub const BIRTHDAY_CHANGE_DAYS: i64 = 365;

/// Checks a `MM-DD` birthday (29 February included).
pub fn parse_birthday(text: &str) -> Result<String, AccountError> {
    let invalid =
        || AccountError::Invalid(format!("birthday {text:?} is not a month and day (MM-DD)"));
    let (month, day) = text.split_once('-').ok_or_else(invalid)?;
    if month.len() != 2 || day.len() != 2 {
        return Err(invalid());
    }
    let (month, day): (u32, u32) = (
        month.parse().map_err(|_| invalid())?,
        day.parse().map_err(|_| invalid())?,
    );
    // 2000 is a leap year, so every real birthday is a date in it.
    NaiveDate::from_ymd_opt(2000, month, day).ok_or_else(invalid)?;
    Ok(format!("{month:02}-{day:02}"))
}

impl Account {
    /// Keeps the categories bought from, within their bounds: an empty one, one too long to be
    /// a campaign's audience, or one past the count kept is left out.
    pub fn remember_categories<'a>(&mut self, categories: impl IntoIterator<Item = &'a str>) {
        use super::limits::{MAX_CATEGORY_CHARS, MAX_KEPT_CATEGORIES};
        for category in categories {
            if category.is_empty()
                || category.chars().count() > MAX_CATEGORY_CHARS
                || self.categories.contains(category)
            {
                continue;
            }
            if self.categories.len() >= MAX_KEPT_CATEGORIES {
                return;
            }
            self.categories.insert(category.to_string());
        }
    }

    /// Sets the birthday and the anniversary. Either, set less than 365 days ago, cannot be
    /// changed (setting the same one again is no change), so that neither can be moved to
    /// collect its yearly bonus early or again; an anniversary is a day already past.
    pub fn update_profile(
        &self,
        birthday: Option<&str>,
        anniversary: Option<NaiveDate>,
        today: NaiveDate,
    ) -> Result<Account, AccountError> {
        let mut account = self.clone();
        if let Some(text) = birthday {
            let birthday = parse_birthday(text)?;
            if self.profile.birthday.as_deref() != Some(birthday.as_str()) {
                if self.profile.birthday.is_some() {
                    changeable("birthday", self.profile.birthday_set_on, today)?;
                }
                account.profile.birthday = Some(birthday);
                account.profile.birthday_set_on = Some(today);
            }
        }
        if let Some(date) = anniversary.filter(|d| self.profile.anniversary != Some(*d)) {
            let earliest = NaiveDate::from_ymd_opt(1900, 1, 1).unwrap_or(NaiveDate::MIN);
            if date < earliest || date > today {
                return Err(AccountError::Invalid(format!(
                    "the anniversary must be a day from {earliest} to today ({today})"
                )));
            }
            if self.profile.anniversary.is_some() {
                changeable("anniversary", self.profile.anniversary_set_on, today)?;
            }
            account.profile.anniversary = Some(date);
            account.profile.anniversary_set_on = Some(today);
        }
        Ok(account)
    }
}

/// Refuses to change a yearly day (`what`) set less than [`BIRTHDAY_CHANGE_DAYS`] before
/// `today`: moved at will, it would collect its yearly bonus twice or early.
fn changeable(what: &str, set_on: Option<NaiveDate>, today: NaiveDate) -> Result<(), AccountError> {
    let Some(set_on) = set_on else {
        return Ok(());
    };
    let next = set_on + chrono::Duration::days(BIRTHDAY_CHANGE_DAYS);
    if today < next {
        return Err(AccountError::Invalid(format!(
            "the {what} was set on {set_on} and can be changed again from {next}"
        )));
    }
    Ok(())
}

/// Points taken for a checkout, waiting for the shop to capture them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub redemption: String,
    pub order_ref: String,
    pub points: i64,
    /// The lots the points came from, to return them where they were.
    pub taken: Vec<LotShare>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierStatus {
    pub id: String,
    pub since: NaiveDate,
    /// `None` for the entry tier, which is never reviewed.
    pub review_on: Option<NaiveDate>,
}

/// The result of an operation: the account to commit and the entries to write with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub account: Account,
    pub entries: Vec<LedgerEntry>,
    /// Why nothing happened, when the operation was a recorded no-op (over a cap, not configured).
    pub no_op: Option<String>,
    /// A referrer to reward, now that the member's first order is past its return window.
    pub referrer: Option<String>,
}

impl Change {
    /// An account changed without ledger entries (a profile, notices remembered).
    pub fn unchanged(account: Account) -> Change {
        Change {
            account,
            entries: Vec::new(),
            no_op: None,
            referrer: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("insufficient points: {available} available, {needed} needed")]
    InsufficientPoints { available: i64, needed: i64 },
    #[error("points must be greater than zero")]
    NotPositive,
    #[error("{0}")]
    Invalid(String),
}

impl Account {
    /// A new member on the program's entry tier.
    pub fn open(program: &Program, member: &str, now: DateTime<Utc>) -> Account {
        Account {
            program: program.id.clone(),
            member: member.to_string(),
            balance: 0,
            debt: 0,
            lots: Lots::default(),
            pending: Vec::new(),
            holds: Vec::new(),
            qualifying: BTreeMap::new(),
            tier: TierStatus {
                id: program.lowest_tier().id.clone(),
                since: local_date(program.time_zone, now),
                review_on: None,
            },
            actions: BTreeMap::new(),
            purchases: 0,
            referred_by: None,
            referral_due: None,
            joined_on: local_date(program.time_zone, now),
            last_purchase_at: None,
            categories: Default::default(),
            profile: Profile::default(),
            notified: Default::default(),
            merged: None,
            merged_from: Vec::new(),
            suspended: None,
            resumed: None,
            earned_days: BTreeMap::new(),
            erased: None,
            erased_before: None,
            membership: None,
            version: 0,
        }
    }

    /// Counted among the program's members: not merged into another, not erased.
    pub fn is_member(&self) -> bool {
        self.merged.is_none() && self.erased.is_none()
    }

    pub fn pending_points(&self) -> i64 {
        self.pending.iter().map(|g| g.points).sum()
    }

    /// The account a member should see at `now`: matured pending released and ended lots
    /// expired. The entries that would do this are returned marked `provisional`.
    pub fn as_of(&self, program: &Program, now: DateTime<Utc>) -> Change {
        let ctx = EventContext::new("as-of", now, now);
        let mut journal = Journal::new(self, &ctx, true);
        journal.settle(program, now);
        journal.finish()
    }

    /// Writes what time alone has changed (the jobs' `release-pending` and `expire-points`).
    pub fn settle(&self, program: &Program, ctx: &EventContext) -> Change {
        let mut journal = Journal::new(self, ctx, false);
        journal.settle(program, ctx.recorded_at);
        journal.finish()
    }

    /// Spends points, soonest-expiring first. Returns the lots they came from, so that a
    /// reversal can put them back where they were.
    pub fn redeem(
        &self,
        program: &Program,
        points: i64,
        reason: &str,
        ctx: &EventContext,
    ) -> Result<(Change, Vec<LotShare>), AccountError> {
        if points <= 0 {
            return Err(AccountError::NotPositive);
        }
        let mut journal = Journal::begin(self, program, ctx);
        let available = journal.account.balance;
        if available < points {
            return Err(AccountError::InsufficientPoints {
                available,
                needed: points,
            });
        }
        let taken = journal.account.lots.take(points, None);
        journal.account.balance -= points;
        journal.post(EntryKind::Redeem, -points, 0, reason);
        Ok((journal.finish(), taken))
    }

    /// Gives a redemption back: each share returns to the lot it was taken from. A reward that
    /// took no points (a paid membership's monthly coupon) is reversed with an entry of none.
    pub fn reverse_redemption(
        &self,
        program: &Program,
        shares: &[LotShare],
        reason: &str,
        ctx: &EventContext,
    ) -> Result<Change, AccountError> {
        let points: i64 = shares.iter().map(|s| s.points).sum();
        if points < 0 {
            return Err(AccountError::NotPositive);
        }
        let mut journal = Journal::begin(self, program, ctx);
        let today = local_date(program.time_zone, ctx.recorded_at);
        for share in shares {
            journal.restore(share.points, share.expires_on, today);
        }
        journal.post(EntryKind::Reverse, points, 0, reason);
        // A lot that ended meanwhile expires at once rather than being usable again.
        journal.settle(program, ctx.recorded_at);
        Ok(journal.finish())
    }

    /// An operator's correction: positive credits a new lot dated today, negative spends
    /// soonest-expiring first and may not exceed the balance.
    pub fn adjust(
        &self,
        program: &Program,
        points: i64,
        reason: &str,
        ctx: &EventContext,
    ) -> Result<Change, AccountError> {
        if points == 0 {
            return Err(AccountError::Invalid(
                "an adjustment must change the balance".into(),
            ));
        }
        if reason.trim().is_empty() {
            return Err(AccountError::Invalid("an adjustment needs a reason".into()));
        }
        super::limits::check_points("points", points)
            .map_err(|e| AccountError::Invalid(e.to_string()))?;
        let mut journal = Journal::begin(self, program, ctx);
        if points > 0 {
            let expires_on = lot_expiry(program, ctx.occurred_at);
            journal.credit(points, expires_on);
        } else {
            let available = journal.account.balance;
            if available < -points {
                return Err(AccountError::InsufficientPoints {
                    available,
                    needed: -points,
                });
            }
            journal.account.lots.take(-points, None);
            journal.account.balance += points;
        }
        journal.post(EntryKind::Adjust, points, 0, reason);
        super::limits::check_account(&journal.account)
            .map_err(|e| AccountError::Invalid(e.to_string()))?;
        Ok(journal.finish())
    }
}

impl Account {
    /// Holds points for a checkout: spent now (soonest-expiring first), returned if the hold is
    /// not captured by `expires_at`.
    pub fn hold(
        &self,
        program: &Program,
        redemption: &str,
        order_ref: &str,
        points: i64,
        expires_at: DateTime<Utc>,
        ctx: &EventContext,
    ) -> Result<Change, AccountError> {
        let reason = format!("{points} points held for order {order_ref} (pay with points)");
        let (mut change, taken) = self.redeem(program, points, &reason, ctx)?;
        change.account.holds.push(Hold {
            redemption: redemption.to_string(),
            order_ref: order_ref.to_string(),
            points,
            taken,
            expires_at,
        });
        Ok(change)
    }

    /// The shop took the payment: the hold's points stay spent. `None` when there is no such
    /// hold any more (captured, voided, or expired by `ctx.recorded_at`).
    pub fn capture_hold(
        &self,
        program: &Program,
        redemption: &str,
        ctx: &EventContext,
    ) -> Option<Change> {
        let mut journal = Journal::begin(self, program, ctx);
        // Beginning the change returns expired holds, a bounded number per change: one left
        // for a later change is expired all the same.
        let index = journal
            .account
            .holds
            .iter()
            .position(|h| h.redemption == redemption && h.expires_at > ctx.recorded_at)?;
        journal.account.holds.remove(index);
        Some(journal.finish())
    }

    /// The shop gave the checkout up: the hold's points return to their lots. A hold that
    /// expired since it was last written is void already: its return, which beginning the
    /// change writes, is the change.
    pub fn void_hold(
        &self,
        program: &Program,
        redemption: &str,
        reason: &str,
        ctx: &EventContext,
    ) -> Option<Change> {
        let mut journal = Journal::begin(self, program, ctx);
        let open = journal
            .account
            .holds
            .iter()
            .position(|h| h.redemption == redemption);
        match open {
            Some(index) => {
                let hold = journal.account.holds.remove(index);
                journal.return_hold(&hold, reason, ctx.recorded_at, program.time_zone);
                journal.settle(program, ctx.recorded_at);
            }
            None if self.holds.iter().any(|h| h.redemption == redemption) => {}
            None => return None,
        }
        Some(journal.finish())
    }
}

/// The last usable day of points earned at `occurred_at`: end of the month, N months later, in
/// the program's zone.
pub fn lot_expiry(program: &Program, occurred_at: DateTime<Utc>) -> NaiveDate {
    end_of_month_after(
        local_date(program.time_zone, occurred_at),
        program.expiry_months,
    )
}

/// The most entries one settle writes: with the event's own, its commit stays well within the
/// 100 items of a DynamoDB transaction (every store refuses more).
pub const SETTLE_ENTRIES_MAX: usize = 50;

/// A working copy of an account plus the entries that explain each change made to it.
pub(crate) struct Journal<'a> {
    pub account: Account,
    pub entries: Vec<LedgerEntry>,
    pub ctx: &'a EventContext,
    source: Source,
    provisional: bool,
    posted: usize,
    /// The lots as they were when the last entry was posted: the next entry records the moves
    /// made since, wherever in the domain they were made.
    lots_mark: Lots,
    pub no_op: Option<String>,
    pub referrer: Option<String>,
    /// An event's journal ([`Journal::begin`]): the program's time zone, so that points it
    /// puts into a lot already ended expire in its own commit, when they were booked.
    late_expiry_tz: Option<chrono_tz::Tz>,
}

impl<'a> Journal<'a> {
    pub fn new(account: &Account, ctx: &'a EventContext, provisional: bool) -> Self {
        Journal {
            account: account.clone(),
            entries: Vec::new(),
            ctx,
            source: ctx.source.clone(),
            provisional,
            posted: 0,
            lots_mark: account.lots.clone(),
            no_op: None,
            referrer: None,
            late_expiry_tz: None,
        }
    }

    /// A journal for an event: the account is first settled at the processing time.
    pub fn begin(account: &Account, program: &Program, ctx: &'a EventContext) -> Self {
        let mut journal = Journal::new(account, ctx, false);
        journal.settle(program, ctx.recorded_at);
        journal.late_expiry_tz = Some(program.time_zone);
        journal
    }

    pub fn finish(mut self) -> Change {
        self.expire_late();
        Change {
            account: self.account,
            entries: self.entries,
            no_op: self.no_op,
            referrer: self.referrer,
        }
    }

    /// Points an event put into a lot that had already ended (a purchase delivered after its
    /// points' last day, a redemption reversed into a lot since ended) expire in the event's
    /// commit, as of its processing: the books then expire them in the month they were issued.
    /// Left to the next settle, they expired as of the lot's own day, before they were booked,
    /// and the month of that day closed below zero. After [`Journal::begin`]'s settle, every
    /// lot ended before today is such a lot.
    fn expire_late(&mut self) {
        let Some(tz) = self.late_expiry_tz else {
            return;
        };
        let today = local_date(tz, self.ctx.recorded_at);
        while let Some(day) = self.account.lots.first_expiry().filter(|d| *d < today) {
            self.expire(day, self.ctx.recorded_at);
        }
    }

    /// Puts spent points back into the lot they were taken from. A lot still usable `today`
    /// pays any debt first, as a credit does; an ended lot's points pay nothing and expire
    /// at once (the next settle), as they would have had they not been spent.
    pub fn restore(&mut self, points: i64, expires_on: NaiveDate, today: NaiveDate) {
        if expires_on < today {
            self.account.lots.add(expires_on, points);
            self.account.balance += points;
        } else {
            self.credit(points, expires_on);
        }
    }

    /// Credits available points into a lot, paying any debt first.
    pub fn credit(&mut self, points: i64, expires_on: NaiveDate) {
        let to_debt = points.min(self.account.debt).max(0);
        self.account.debt -= to_debt;
        self.account.lots.add(expires_on, points - to_debt);
        self.account.balance += points;
    }

    /// Names the rule or campaign on the entries posted from now on.
    pub fn ctx_source_override(&mut self, source: Source) {
        self.source = source;
    }

    /// Posts an entry for the event, numbered within it.
    pub fn post(&mut self, kind: EntryKind, points: i64, pending: i64, reason: &str) {
        let id = format!("{}#{}", self.ctx.event_id, self.posted);
        self.posted += 1;
        let source = self.source.clone();
        let occurred_at = self.ctx.occurred_at;
        self.push(
            id,
            kind,
            points,
            pending,
            reason.to_string(),
            source,
            occurred_at,
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        id: String,
        kind: EntryKind,
        points: i64,
        pending: i64,
        reason: String,
        source: Source,
        occurred_at: DateTime<Utc>,
    ) {
        let lots = self.account.lots.moves_since(&self.lots_mark);
        self.lots_mark = self.account.lots.clone();
        self.entries.push(LedgerEntry {
            id,
            kind,
            points,
            pending,
            balance_after: self.account.balance,
            pending_after: self.account.pending_points(),
            recorded_at: self.ctx.recorded_at,
            occurred_at,
            source,
            reason,
            shortfall: 0,
            provisional: self.provisional,
            lots,
        });
    }

    /// Returns a hold's points to the lots they came from.
    fn return_hold(&mut self, hold: &Hold, reason: &str, at: DateTime<Utc>, tz: chrono_tz::Tz) {
        let today = local_date(tz, at);
        for share in &hold.taken {
            self.restore(share.points, share.expires_on, today);
        }
        let source = Source {
            redemption: Some(hold.redemption.clone()),
            rule: Some("pay-with-points".into()),
            ..Source::default()
        };
        self.push(
            format!("void#{}", hold.redemption),
            EntryKind::Reverse,
            hold.points,
            0,
            reason.to_string(),
            source,
            at,
        );
    }

    /// Applies, in time order, what time alone changes up to `now`. A settle to be written
    /// returns at most [`SETTLE_ENTRIES_MAX`] holds and releases at most as many purchases, so
    /// that the change fits one commit whatever has piled up; the rest waits for the next
    /// settle (a job's or an event's). Lots whose day has passed are expired all the same (one
    /// entry a day at most), so that no ended lot is ever spent; a purchase released later into
    /// a lot already ended is expired by that settle. What a member is shown (`as_of`) is
    /// settled whole.
    pub fn settle(&mut self, program: &Program, now: DateTime<Utc>) {
        let start = self.entries.len();
        let cap = if self.provisional {
            usize::MAX
        } else {
            SETTLE_ENTRIES_MAX
        };
        let full = |journal: &Journal<'_>| journal.entries.len() - start >= cap;
        // Holds not captured in time give their points back first (to lots that may then
        // expire below, if their day has passed).
        let (mut expired, mut kept): (Vec<Hold>, Vec<Hold>) =
            std::mem::take(&mut self.account.holds)
                .into_iter()
                .partition(|h| h.expires_at <= now);
        expired.sort_by_key(|h| h.expires_at);
        if expired.len() > cap {
            kept.extend(expired.split_off(cap));
        }
        self.account.holds = kept;
        for hold in &expired {
            let reason = format!(
                "The hold of {} points for order {} was not captured in time; points returned",
                hold.points, hold.order_ref
            );
            self.return_hold(hold, &reason, hold.expires_at, program.time_zone);
        }
        let tz = program.time_zone;
        let today = local_date(tz, now);
        // Points this settle puts into a lot (a release, a hold given back) may land in one that
        // has ended: that lot's expiry is then dated when they arrived, never before (the books
        // expire them in the month they were issued, not in an earlier one).
        let mut arrived: BTreeMap<NaiveDate, DateTime<Utc>> = BTreeMap::new();
        for hold in &expired {
            for share in &hold.taken {
                arrived.insert(share.expires_on, hold.expires_at);
            }
        }
        // Releases and expiries interleave by the instant they take effect.
        loop {
            let release = self
                .account
                .pending
                .iter()
                .enumerate()
                .filter(|(_, g)| g.release_at <= now && !full(self))
                .min_by_key(|(_, g)| g.release_at)
                .map(|(i, g)| (i, g.release_at));
            let expiry = self
                .account
                .lots
                .first_expiry()
                .filter(|d| *d < today)
                .map(|d| (d, start_of_day(tz, d.succ_opt().unwrap_or(d))));
            match (release, expiry) {
                (Some((i, at)), Some((_, exp_at))) if at <= exp_at => {
                    arrived.insert(self.account.pending[i].expires_on, at);
                    self.release(program, i);
                }
                (Some((i, at)), None) => {
                    arrived.insert(self.account.pending[i].expires_on, at);
                    self.release(program, i);
                }
                // Past the cap, every lot that has ended goes in one entry, dated when the
                // latest ended: a catch-up over many (an import's dates, runs missed for
                // months) still fits one commit. It wrote an entry a lot, past any commit's
                // size, and the member was stuck.
                (_, Some(_)) if full(self) => {
                    let Some(date) = self.account.lots.last_ended(today) else {
                        break;
                    };
                    let at = start_of_day(tz, date.succ_opt().unwrap_or(date));
                    let at = arrived
                        .range(..=date)
                        .map(|(_, a)| *a)
                        .fold(at, DateTime::max);
                    self.expire(date, at);
                }
                (_, Some((date, at))) => {
                    let at = arrived.get(&date).map_or(at, |arrived| at.max(*arrived));
                    self.expire(date, at);
                }
                (None, None) => break,
            }
        }
    }

    fn release(&mut self, program: &Program, index: usize) {
        let grant = self.account.pending.remove(index);
        self.credit(grant.points, grant.expires_on);
        let source = Source {
            event_id: Some(grant.event_id.clone()),
            order_id: Some(grant.order_id.clone()),
            rule: Some("purchase".into()),
            ..Source::default()
        };
        let reason = format!(
            "{} points from order {} are now available (return window closed)",
            grant.points, grant.order_id
        );
        self.push(
            format!("release#{}", grant.event_id),
            EntryKind::Release,
            grant.points,
            -grant.points,
            reason,
            source.clone(),
            grant.release_at,
        );
        self.referral_due(program, &grant, source);
    }

    /// The first order of a referred member is past its return window: the welcome bonus now,
    /// and the referrer's reward by message (`Change::referrer`).
    fn referral_due(&mut self, program: &Program, grant: &PendingGrant, mut source: Source) {
        let due = self
            .account
            .referral_due
            .as_ref()
            .is_some_and(|d| d.event_id == grant.event_id);
        let Some(due) = due.then(|| self.account.referral_due.take()).flatten() else {
            return;
        };
        let bonus = program.referral.as_ref().map_or(0, |r| r.referee_points);
        if bonus > 0 {
            self.credit(bonus, grant.expires_on);
            source.rule = Some("referral:referee".into());
            self.push(
                format!("referee#{}", grant.event_id),
                EntryKind::Earn,
                bonus,
                0,
                format!("{bonus} points welcome bonus for being referred (first order kept)"),
                source,
                grant.release_at,
            );
        }
        self.referrer = super::erasure::payable_referrer(due.referrer);
    }

    fn expire(&mut self, date: NaiveDate, at: DateTime<Utc>) {
        let mut gone = Lots::default();
        let expired = self
            .account
            .lots
            .remove_expired(date.succ_opt().unwrap_or(date));
        let points: i64 = expired.iter().map(|l| l.points).sum();
        for l in &expired {
            gone.add(l.expires_on, l.points);
        }
        self.account.balance -= points;
        let reason = format!("{points} points expired (last usable day {date})");
        self.push(
            format!(
                "expire#{date}#v{}#{}",
                self.account.version,
                self.entries.len()
            ),
            EntryKind::Expire,
            -points,
            0,
            reason,
            Source {
                rule: Some("expiry".into()),
                ..Source::default()
            },
            at,
        );
    }
}
