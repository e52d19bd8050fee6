//! What a member (or an admin on their behalf) sees: the account as of now and the ledger.

use chrono::{Duration, NaiveDate};
use serde::Serialize;

use super::{ServiceError, Services};
use crate::domain::calendar::local_date;
use crate::domain::tiers::{KeepTier, NextTier};
use crate::domain::{Account, LedgerEntry, Program};
use crate::store::decode_cursor;

/// Points expiring within this many days are listed in the member view.
const EXPIRING_WINDOW_DAYS: i64 = 30;

/// The member view of DESIGN §6.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberView {
    pub member: String,
    pub program: String,
    pub currency: String,
    pub balance: i64,
    pub pending: i64,
    /// Points held for checkouts not yet captured (pay with points): out of `balance` until the
    /// shop captures them, back in it if it voids them or the hold expires.
    pub held: i64,
    pub pending_releases: Vec<DatedPoints>,
    pub tier: TierView,
    pub next_tier: Option<NextTier>,
    /// Lots ending in the next 30 days; `date` is the last day they can be used.
    pub expiring: Vec<DatedPoints>,
    /// Every lot of available points; `date` is its last usable day.
    pub lots: Vec<DatedPoints>,
    pub referral_code: String,
    /// The member this one was merged into: its points and events are that member's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<String>,
    /// Members merged into this one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<String>,
    /// Present while the member is suspended: why, by whom, since when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspended: Option<crate::domain::Suspension>,
    /// With `[cashback]`: the balance and pending points as money.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cashback: Option<CashbackView>,
    /// The paid membership, current or past.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub membership: Option<MembershipView>,
}

/// The member's paid membership: its state today, its dates, and what it has given so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MembershipView {
    pub id: String,
    pub name: String,
    pub status: crate::domain::membership::MembershipStatus,
    pub started_on: NaiveDate,
    /// The last paid day; for a membership ended by a refund, at most the day before it ended.
    pub paid_through: NaiveDate,
    /// When the next payment is due to continue without a gap (none once ended: nothing is
    /// left to renew).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renews_on: Option<NaiveDate>,
    /// The first day without benefits if no payment comes (none once ended).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lapses_on: Option<NaiveDate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_on: Option<NaiveDate>,
    pub multiplier_bp: u32,
    /// Flags for the app while the benefits hold (early access...).
    pub early_access: Vec<String>,
    pub saved: MembershipSaved,
}

/// What memberships have given the member: points their multiplier added, their value at the
/// point value (when the program sets one), and monthly rewards granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MembershipSaved {
    pub points: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub rewards: u32,
}

fn membership_view(
    program: &crate::domain::Program,
    account: &Account,
    today: NaiveDate,
) -> Option<MembershipView> {
    let (rules, m) = program
        .membership
        .as_ref()
        .zip(account.membership.as_ref())?;
    // A member merged away holds nothing: its membership went to the survivor.
    if account.merged_into().is_some() {
        return None;
    }
    let benefits = m.benefits_on(rules, today);
    // Ended by a refund: no period is left paid for, so no renewal or lapse is ahead, and the
    // days paid for stop where it ended.
    let ended_before = m.ended_on.and_then(|e| e.pred_opt());
    Some(MembershipView {
        id: m.id.clone(),
        name: rules.name.clone(),
        status: m.status(rules, today),
        started_on: m.started_on,
        paid_through: ended_before.map_or(m.paid_through, |e| m.paid_through.min(e)),
        renews_on: m.ended_on.is_none().then(|| m.renews_on()),
        lapses_on: m
            .ended_on
            .is_none()
            .then(|| m.lapsed_on.unwrap_or_else(|| m.lapses_on(rules))),
        ended_on: m.ended_on,
        multiplier_bp: rules.multiplier_bp,
        early_access: if benefits {
            rules.early_access.clone()
        } else {
            Vec::new()
        },
        saved: MembershipSaved {
            points: m.bonus_points,
            value: program.point_value_micros.map(|micros| {
                PointValue {
                    micros,
                    exponent: program.currency.exponent(),
                }
                .of(m.bonus_points)
            }),
            rewards: m.grants,
        },
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatedPoints {
    pub date: NaiveDate,
    pub points: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierView {
    pub id: String,
    pub name: String,
    pub multiplier_bp: u32,
    pub review_date: Option<NaiveDate>,
    pub keep: Option<KeepTier>,
    /// The qualifying measure now: minor units of spend, or points.
    pub qualifying: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerView {
    pub entries: Vec<LedgerEntry>,
    pub next_cursor: Option<String>,
    /// With `[cashback]`: what a point is worth, to show each entry's money `value`.
    pub point_value: Option<PointValue>,
}

/// What one point is worth: millionths of a major unit, and the currency's minor digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointValue {
    pub micros: i64,
    pub exponent: u8,
}

impl PointValue {
    /// A program's, when it shows points as cashback.
    pub fn cashback_of(program: &crate::domain::Program) -> Option<PointValue> {
        program
            .point_value_micros
            .filter(|_| program.cashback)
            .map(|micros| PointValue {
                micros,
                exponent: program.currency.exponent(),
            })
    }

    /// `points` in major units, as a decimal string with the currency's minor digits.
    pub fn of(self, points: i64) -> String {
        crate::liability::decimal(i128::from(points) * i128::from(self.micros), self.exponent)
    }
}

impl Serialize for LedgerView {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Valued<'a> {
            #[serde(flatten)]
            entry: &'a LedgerEntry,
            #[serde(skip_serializing_if = "Option::is_none")]
            value: Option<String>,
        }
        #[derive(Serialize)]
        struct Page<'a> {
            entries: Vec<Valued<'a>>,
            next_cursor: &'a Option<String>,
        }
        let entries = self
            .entries
            .iter()
            .map(|entry| Valued {
                entry,
                value: self.point_value.map(|v| v.of(entry.points)),
            })
            .collect();
        Page {
            entries,
            next_cursor: &self.next_cursor,
        }
        .serialize(serializer)
    }
}

/// The member's points as money (`[cashback]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CashbackView {
    pub currency: String,
    /// Available points at the point value, in major units.
    pub balance: String,
    pub pending: String,
}

/// Ledger pages hold at most this many entries.
pub const MAX_PAGE: usize = 100;
pub const DEFAULT_PAGE: usize = 20;

/// A page size asked for: [`DEFAULT_PAGE`] when none, refused outside 1..=[`MAX_PAGE`].
pub fn page_limit(limit: Option<usize>) -> Result<usize, ServiceError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ServiceError::invalid(
            "invalid-limit",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    Ok(limit)
}

impl Services {
    /// The member's account as of now (a member never seen before has an empty account: the
    /// app of someone who has bought nothing yet shows zero).
    pub async fn member_view(
        &self,
        program: &str,
        member: &str,
    ) -> Result<MemberView, ServiceError> {
        let program = self.program(program).await?;
        let state = self.store.load_member(&program.id, member, &[]).await?;
        let account = state
            .account
            .unwrap_or_else(|| Account::open(&program, member, self.clock.now()));
        Ok(self.view_of(&program, account))
    }

    /// [`Services::member_view`] for support staff, who look members up by what a customer
    /// tells them: a member with no account (a mistyped email, an erased member) is
    /// `unknown-member`, not an empty account that looks like a real one.
    pub async fn known_member_view(
        &self,
        program: &str,
        member: &str,
    ) -> Result<MemberView, ServiceError> {
        let program = self.program(program).await?;
        let account = self.existing_account(&program.id, member).await?;
        Ok(self.view_of(&program, account))
    }

    fn view_of(&self, program: &Program, account: Account) -> MemberView {
        let now = self.clock.now();
        let member = account.member.as_str();
        let view = account.as_of(program, now).account;
        let today = local_date(program.time_zone, now);
        let progress = view.tier_progress(program, today);
        let mut releases: Vec<DatedPoints> = Vec::new();
        // A grant of no points (a small order, a fee) waits out its window but releases nothing.
        for grant in view.pending.iter().filter(|g| g.points > 0) {
            let date = local_date(program.time_zone, grant.release_at);
            match releases.iter_mut().find(|r| r.date == date) {
                Some(r) => r.points += grant.points,
                None => releases.push(DatedPoints {
                    date,
                    points: grant.points,
                }),
            }
        }
        releases.sort_by_key(|r| r.date);
        let expiring = view
            .lots
            .expiring_until(today + Duration::days(EXPIRING_WINDOW_DAYS))
            .into_iter()
            .map(|l| DatedPoints {
                date: l.expires_on,
                points: l.points,
            })
            .collect();
        let tier_name = program
            .tier(&progress.id)
            .map_or_else(|| progress.id.clone(), |(_, t)| t.name.clone());
        MemberView {
            member: member.to_string(),
            program: program.id.clone(),
            currency: program.currency.to_string(),
            balance: view.balance,
            pending: view.pending_points(),
            held: view.holds.iter().map(|h| h.points).sum(),
            pending_releases: releases,
            tier: TierView {
                id: progress.id,
                name: tier_name,
                multiplier_bp: progress.multiplier_bp,
                review_date: progress.review_date,
                keep: progress.keep,
                qualifying: progress.measure,
            },
            next_tier: progress.next_tier,
            expiring,
            lots: view
                .lots
                .iter()
                .map(|l| DatedPoints {
                    date: l.expires_on,
                    points: l.points,
                })
                .collect(),
            referral_code: referral_code(&program.id, member),
            merged_into: view.merged_into().map(str::to_string),
            merged_from: view.merged_from.clone(),
            suspended: view.suspended.clone(),
            membership: membership_view(program, &view, today),
            cashback: PointValue::cashback_of(program).map(|v| CashbackView {
                currency: program.currency.to_string(),
                balance: v.of(view.balance),
                pending: v.of(view.pending_points()),
            }),
        }
    }

    /// A page of the ledger, newest recorded first. The first page also lists, marked
    /// `provisional`, what time alone has changed and no job has written yet.
    pub async fn ledger(
        &self,
        program: &str,
        member: &str,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<LedgerView, ServiceError> {
        self.ledger_of(program, member, limit, cursor, false).await
    }

    /// [`Services::ledger`] for support staff: the first page of a member with no account (a
    /// mistyped id, an erased member) is `unknown-member`, as its view is, not an empty page.
    pub async fn known_ledger(
        &self,
        program: &str,
        member: &str,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<LedgerView, ServiceError> {
        self.ledger_of(program, member, limit, cursor, true).await
    }

    async fn ledger_of(
        &self,
        program: &str,
        member: &str,
        limit: Option<usize>,
        cursor: Option<&str>,
        known: bool,
    ) -> Result<LedgerView, ServiceError> {
        let program = self.program(program).await?;
        let limit = page_limit(limit)?;
        let cursor = match cursor {
            Some(c) => Some(
                opened_cursor(&program.id, member, c)
                    .filter(|c| decode_cursor(c).is_some())
                    .ok_or_else(|| {
                        ServiceError::invalid(
                            "invalid-cursor",
                            format!("cursor {c:?} was not issued by this API for this member"),
                        )
                    })?,
            ),
            None => None,
        };
        let mut page = self
            .store
            .ledger_page(&program.id, member, limit, cursor)
            .await?;
        page.next_cursor = page
            .next_cursor
            .map(|c| sealed_cursor(&program.id, member, &c));
        let mut entries = Vec::new();
        if cursor.is_none() {
            let state = self.store.load_member(&program.id, member, &[]).await?;
            match state.account {
                Some(account) => {
                    let mut provisional = account.as_of(&program, self.clock.now()).entries;
                    provisional.reverse();
                    entries.extend(provisional);
                }
                None if known => return Err(ServiceError::unknown_member(member)),
                None => {}
            }
        }
        entries.extend(page.entries);
        Ok(LedgerView {
            entries,
            next_cursor: page.next_cursor,
            point_value: PointValue::cashback_of(&program),
        })
    }
}

/// A ledger page's cursor as the API hands it out: the store's, with a check bound to the
/// program and the member. A number changed by hand, or a cursor of another member's pages, is
/// refused (400) rather than read as a position: it answered an empty last page, or another
/// member's entries. (A check, not a secret: the entries are the member's own either way.)
fn sealed_cursor(program: &str, member: &str, cursor: &str) -> String {
    format!("{cursor}.{:016x}", cursor_check(program, member, cursor))
}

/// The store's cursor inside a sealed one, when its check holds.
fn opened_cursor<'a>(program: &str, member: &str, sealed: &'a str) -> Option<&'a str> {
    let (cursor, check) = sealed.rsplit_once('.')?;
    (check == format!("{:016x}", cursor_check(program, member, cursor))).then_some(cursor)
}

fn cursor_check(program: &str, member: &str, cursor: &str) -> u64 {
    let text = format!("ledger#{program}#{member}#{cursor}");
    crate::fingerprint::fnv1a64(text.bytes())
}

/// A short code that identifies the member for referrals: stable, and not the member id itself.
pub fn referral_code(program: &str, member: &str) -> String {
    // A fingerprint of "program#member" in Crockford base32 (no I, L, O, U).
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let hash = crate::fingerprint::fnv1a64(
        program
            .bytes()
            .chain(std::iter::once(b'#'))
            .chain(member.bytes()),
    );
    (0..8)
        .map(|i| ALPHABET[((hash >> (i * 5)) & 31) as usize] as char)
        .collect()
}
