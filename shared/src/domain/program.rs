//! The program definition: a human-edited TOML file (JSON accepted) that says how members earn,
//! which tiers exist, what rewards cost and what happens on refunds.
//!
//! The file is read into [`ProgramFile`] (the shape people write) and then validated into
//! [`Program`] (the shape the rules use: money in minor units, zones parsed, tiers ordered). Every
//! problem is reported with the path of the field, so that an operator can fix the file without
//! reading code.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::limits::{MAX_AMOUNT, MAX_BALANCE, MAX_POINTS};
use super::money::Currency;

/// Basis points: 10,000 = 1.0x.
pub const UNIT_BP: u32 = 10_000;
/// The largest multiplier a tier, a line rule or a campaign may set (100x).
pub const MAX_MULTIPLIER_BP: u32 = 100 * UNIT_BP;
/// Events dated further ahead than this are refused: clocks drift, but not by more.
pub const MAX_FUTURE_SKEW_SECONDS: i64 = 300;

// ---------------------------------------------------------------------------------------------
// The file as written
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramFile {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// Set by the store when a program is saved; a file may leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    pub currency: String,
    pub time_zone: String,
    #[serde(default = "default_backdating_days")]
    pub backdating_limit_days: u32,
    pub purchase: PurchaseFile,
    pub expiry: ExpiryFile,
    #[serde(default)]
    pub refunds: RefundsFile,
    pub tier_rules: TierRulesFile,
    pub tiers: Vec<TierFile>,
    #[serde(default)]
    pub actions: BTreeMap<String, ActionFile>,
    #[serde(default)]
    pub custom_actions: BTreeMap<String, ActionFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referral: Option<ReferralFile>,
    #[serde(default)]
    pub rewards: Vec<RewardFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pay_with_points: Option<PayWithPointsFile>,
    #[serde(default)]
    pub coupons: CouponsFile,
    #[serde(default)]
    pub notices: NoticesFile,
    /// What one point is worth to the brand, in major units of the currency ("1" won, "0.01"
    /// dollars): the money value of the points liability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point_value: Option<String>,
    #[serde(default)]
    pub safeguards: SafeguardsFile,
    #[serde(default)]
    pub erasure: ErasureFile,
    #[serde(default)]
    pub cashback: CashbackFile,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<MembershipFile>,
}

/// A paid membership (`[membership]`): a fee per period buys benefits until the period and its
/// grace days end without a renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipFile {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// The fee per period, in major units of the program's currency.
    pub price: String,
    pub period_months: u32,
    #[serde(default)]
    pub grace_days: u32,
    /// The SKU of a membership payment on a purchase (one unit, one period).
    pub sku: String,
    /// Points on purchases are multiplied by this too, with the tier's, under one floor.
    #[serde(default = "unit_bp")]
    pub multiplier_bp: u32,
    /// A reward granted as a coupon once in each month of membership.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_reward: Option<String>,
    /// Flags an app shows while the membership is active (early access to sales...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub early_access: Vec<String>,
    /// Whether the fee itself earns points as spend (not by default).
    #[serde(default)]
    pub fee_earns_points: bool,
}

fn unit_bp() -> u32 {
    UNIT_BP
}

/// The membership as the engine uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipRules {
    pub id: String,
    pub name: String,
    pub price_minor: i64,
    pub period_months: u32,
    pub grace_days: u32,
    pub sku: String,
    pub multiplier_bp: u32,
    pub monthly_reward: Option<String>,
    pub early_access: Vec<String>,
    pub fee_earns_points: bool,
}

/// Points shown as money (`[cashback]`): the member view and the ledger carry each amount's
/// value at `point_value`, so an app can say "5,900 won cashback" instead of "5,900 points".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CashbackFile {
    #[serde(default)]
    pub enabled: bool,
}

/// What becomes of an erased member's available points (`[erasure]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureFile {
    #[serde(default)]
    pub outstanding: Outstanding,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outstanding {
    /// Given up (breakage).
    #[default]
    Forfeit,
    /// Paid to the person in money at the program's point value, outside the engine.
    PayOut,
}

fn default_backdating_days() -> u32 {
    90
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurchaseFile {
    /// Points earned per `per` of eligible spend.
    pub points: i64,
    /// Amount of eligible spend, in major units, that earns `points`.
    pub per: String,
    #[serde(default)]
    pub pending_days: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_points_per_order: Option<i64>,
    /// Categories that earn nothing and do not qualify (gift cards by default).
    #[serde(default = "default_excluded")]
    pub excluded_categories: Vec<String>,
    #[serde(default)]
    pub categories: Vec<LineRuleFile>,
    #[serde(default)]
    pub skus: Vec<LineRuleFile>,
}

fn default_excluded() -> Vec<String> {
    vec!["gift_card".to_string()]
}

/// A rule for the lines of one category or one SKU: a multiplier of the base rate, a fixed bonus
/// per unit, or both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineRuleFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier_bp: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bonus_points_per_unit: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpiryFile {
    /// Points expire at the end of the month this many months after they were earned.
    pub months: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundsFile {
    #[serde(default)]
    pub insufficient_balance: InsufficientBalance,
}

/// What a clawback does when the member has already spent the points it takes back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InsufficientBalance {
    /// The balance goes below zero; later earnings pay the debt first.
    #[default]
    AllowNegative,
    /// The balance stops at zero and the shortfall is recorded on the entry.
    FloorAtZero,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierRulesFile {
    pub measure: Measure,
    pub window: Window,
    pub review: Review,
    pub downgrade: Downgrade,
    /// A purchase counts towards an upgrade only once its return window has closed (so that
    /// buying to reach a tier and returning the goods reaches nothing).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upgrade_after_return_window: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// Eligible amount spent, in minor units.
    Spend,
    /// Points earned from purchases.
    Points,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    Lifetime,
    CalendarYear,
    /// The 12 calendar months ending with the month of evaluation.
    #[serde(rename = "rolling_12_months")]
    Rolling12Months,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Review {
    /// One year after the member reached the tier.
    Anniversary,
    /// Every 1 January.
    CalendarYear,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Downgrade {
    /// Go down at most one level at a review.
    OneLevel,
    /// Take whatever tier the measure earns at the review (may drop several levels).
    Recompute,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierFile {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// Spend in major units ("300000") or points, depending on `tier_rules.measure`.
    pub threshold: Threshold,
    #[serde(default = "default_multiplier")]
    pub multiplier_bp: u32,
}

fn default_multiplier() -> u32 {
    UNIT_BP
}

/// A threshold may be written as a number or as a decimal string; both are read exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Threshold {
    Number(i64),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionFile {
    pub points: i64,
    #[serde(default)]
    pub limit: LimitFile,
}

/// The actions paid on a day of the member's year (the campaign tick's).
const YEARLY_ACTIONS: &[&str] = &["birthday", "anniversary"];

/// How often an action pays: `"once"`, `"unlimited"`, or `{ count = 5, per = "month" }`; a
/// birthday or an anniversary without a limit, once a year.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LimitFile {
    #[default]
    Unlimited,
    Word(String),
    Count {
        count: u32,
        per: Period,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Day,
    Month,
    Year,
    Lifetime,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferralFile {
    /// Paid to the member who referred, after the new member's first purchase.
    pub referrer_points: i64,
    /// Paid to the new member with their first purchase.
    #[serde(default)]
    pub referee_points: i64,
    /// Referrals a referrer is rewarded for per calendar month (program time zone); the next
    /// are refused with the reason. 0: no limit.
    #[serde(default = "default_referrals_per_month")]
    pub max_per_month: u32,
    /// Pay both sides only once the new member's first order is past its return window (and
    /// not wholly refunded), instead of at the purchase.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reward_after_return_window: bool,
}

fn default_referrals_per_month() -> u32 {
    10
}

/// Safeguards against abuse and mistakes (`[safeguards]`); each is off when left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafeguardsFile {
    /// Points a member may earn in one day (program time zone): an event that would take the
    /// day past it is held for an operator's review instead of credited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_points: Option<i64>,
    /// Adjustments of more points than this (either way) wait for a second operator's
    /// approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adjustment_approval_above: Option<i64>,
    /// Points (either way) one operator may adjust in a day; beyond, adjustments are refused
    /// (409 `operator-daily-limit`) until the next day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_daily_points: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardFile {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub kind: RewardKind,
    /// Points the reward costs; a `donation` has no fixed cost (the member chooses how many,
    /// from `min_points`).
    #[serde(default)]
    pub cost: i64,
    /// For a `donation`: the cause the brand gives to, how many points give one major unit of
    /// money, and the fewest points one donation may give.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points_per_unit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_points: Option<i64>,
    /// Value off the order for `fixed_discount`, in major units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    /// For `percent_discount`, in basis points (1,000 = 10%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent_bp: Option<u32>,
    /// For `free_product`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    /// Lowest tier allowed to redeem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tier: Option<String>,
    /// Only members with an active paid membership may redeem it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub members_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardKind {
    FixedDiscount,
    PercentDiscount,
    FreeShipping,
    FreeProduct,
    /// Points given to a cause: the brand gives the money on the member's behalf.
    Donation,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayWithPointsFile {
    /// `points` points are worth `value` (major units) at checkout.
    pub points: i64,
    pub value: String,
    pub min_points: i64,
    #[serde(default = "default_hold_minutes")]
    pub hold_minutes: u32,
}

fn default_hold_minutes() -> u32 {
    30
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CouponsFile {
    #[serde(default = "default_coupon_days")]
    pub valid_days: u32,
}

impl Default for CouponsFile {
    fn default() -> Self {
        CouponsFile {
            valid_days: default_coupon_days(),
        }
    }
}

/// The most days a program file's day counts (notices, coupons) may name.
const MAX_DAYS: u32 = 3650;

fn default_coupon_days() -> u32 {
    30
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoticesFile {
    /// `points.expiring` is sent this many days before a lot expires.
    #[serde(default = "default_notice_days")]
    pub expiring_days: u32,
    /// `tier.downgrade_scheduled` is sent this many days before a review that would lower the tier.
    #[serde(default = "default_notice_days")]
    pub downgrade_days: u32,
}

impl Default for NoticesFile {
    fn default() -> Self {
        NoticesFile {
            expiring_days: default_notice_days(),
            downgrade_days: default_notice_days(),
        }
    }
}

fn default_notice_days() -> u32 {
    30
}

// ---------------------------------------------------------------------------------------------
// The validated program
// ---------------------------------------------------------------------------------------------

/// One problem in a program file, with the path of the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.field, self.message)
    }
}

/// Why a program file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgramError {
    #[error("program file is not valid {format}: {message}")]
    Syntax {
        format: &'static str,
        message: String,
    },
    #[error("program file is invalid: {}", join(.0))]
    Invalid(Vec<FieldError>),
}

pub(crate) fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ProgramError {
    /// The individual field problems (empty for a syntax error).
    pub fn fields(&self) -> &[FieldError] {
        match self {
            ProgramError::Invalid(errors) => errors,
            ProgramError::Syntax { .. } => &[],
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    pub id: String,
    pub name: String,
    pub version: u32,
    pub currency: Currency,
    pub time_zone: Tz,
    pub backdating_limit: Duration,
    pub purchase: PurchaseRules,
    pub expiry_months: u32,
    pub insufficient_balance: InsufficientBalance,
    pub tier_rules: TierRulesFile,
    /// Ordered by threshold, lowest first; the first has threshold 0.
    pub tiers: Vec<Tier>,
    /// Engagement actions by name (`signup`, `review`, ..., and custom ones).
    pub actions: BTreeMap<String, ActionRule>,
    pub referral: Option<ReferralFile>,
    pub rewards: Vec<Reward>,
    pub pay_with_points: Option<PayWithPoints>,
    pub coupon_valid_days: u32,
    pub notices: NoticesFile,
    /// Millionths of a major unit that one point is worth, if the program says.
    pub point_value_micros: Option<i64>,
    pub safeguards: SafeguardsFile,
    pub erasure: ErasureFile,
    /// Points shown as store credit at `point_value_micros` (`[cashback] enabled`).
    pub cashback: bool,
    pub membership: Option<MembershipRules>,
    /// The file this program was read from, for saving and showing it back.
    pub file: ProgramFile,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PurchaseRules {
    pub points: i64,
    /// `per` in minor units.
    pub per_minor: i64,
    pub pending: Duration,
    pub max_points_per_order: Option<i64>,
    pub excluded_categories: Vec<String>,
    pub categories: BTreeMap<String, LineRule>,
    pub skus: BTreeMap<String, LineRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineRule {
    pub multiplier_bp: u32,
    pub bonus_points_per_unit: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub id: String,
    pub name: String,
    /// Minor units of spend, or points, per `tier_rules.measure`.
    pub threshold: i64,
    pub multiplier_bp: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionRule {
    pub points: i64,
    /// `None` = unlimited.
    pub limit: Option<(u32, Period)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reward {
    pub id: String,
    pub name: String,
    pub kind: RewardKind,
    pub cost: i64,
    pub amount_minor: Option<i64>,
    pub percent_bp: Option<u32>,
    pub sku: Option<String>,
    pub min_tier: Option<String>,
    pub donation: Option<Donation>,
    pub members_only: bool,
}

/// A `donation` reward: `points_per_unit` points give one major unit of money to `cause`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Donation {
    pub cause: String,
    pub points_per_unit: i64,
    pub min_points: i64,
}

impl Donation {
    /// What `points` give, in minor units of `currency`: `None` unless a whole number of them
    /// (a donation is money, never a fraction of a won or a cent).
    pub fn money_minor(&self, points: i64, currency: Currency) -> Option<i64> {
        let scaled = i128::from(points).checked_mul(10_i128.pow(u32::from(currency.exponent())))?;
        let per = i128::from(self.points_per_unit);
        (per > 0 && scaled % per == 0)
            .then(|| scaled / per)
            .and_then(|m| i64::try_from(m).ok())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayWithPoints {
    pub points: i64,
    pub value_minor: i64,
    pub min_points: i64,
    pub hold_minutes: u32,
}

/// The engagement actions the platform knows; anything else goes under `custom_actions`.
pub const KNOWN_ACTIONS: &[&str] = &[
    "signup",
    "review",
    "photo_review",
    "share",
    "birthday",
    "anniversary",
];

impl Program {
    /// When a coupon issued at `issued` stops being valid: at the last second (23:59:59) of the
    /// local day `coupons.valid_days` after the day it was issued. A coupon "valid for 30 days" is
    /// good for the whole of its last day, whatever the hour it was issued, and the date a
    /// shop shows is the date it ends.
    pub fn coupon_expiry(&self, issued: DateTime<Utc>) -> DateTime<Utc> {
        use super::calendar::{add_days, local_date, start_of_day};
        let last = add_days(
            local_date(self.time_zone, issued),
            i64::from(self.coupon_valid_days),
        );
        start_of_day(self.time_zone, add_days(last, 1)) - Duration::seconds(1)
    }

    pub fn from_toml(text: &str) -> Result<Program, ProgramError> {
        let syntax = |e: toml::de::Error| ProgramError::Syntax {
            format: "TOML",
            message: e.message().to_string() + &location(text, e.span()),
        };
        // Valid TOML that is not a program (a section missing, a key misspelt) is refused by
        // the field, as the rules' own mistakes are, not as a file that does not parse.
        text.parse::<toml::Table>().map_err(syntax)?;
        let file: ProgramFile = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let at = location(text, inner.span());
                ProgramError::Invalid(vec![shape_error(inner.message(), &path, &at)])
            })?;
        Program::from_file(file)
    }

    pub fn from_json(text: &str) -> Result<Program, ProgramError> {
        let mut reader = serde_json::Deserializer::from_str(text);
        let file: ProgramFile = serde_path_to_error::deserialize(&mut reader).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => {
                    let at = format!(" (line {})", inner.line());
                    let message = inner.to_string();
                    let message = message.split(" at line ").next().unwrap_or(&message);
                    ProgramError::Invalid(vec![shape_error(message, &path, &at)])
                }
                _ => ProgramError::Syntax {
                    format: "JSON",
                    message: inner.to_string(),
                },
            }
        })?;
        reader.end().map_err(|e| ProgramError::Syntax {
            format: "JSON",
            message: e.to_string(),
        })?;
        Program::from_file(file)
    }

    /// Validates a file, collecting every problem rather than stopping at the first.
    pub fn from_file(file: ProgramFile) -> Result<Program, ProgramError> {
        let mut v = Validator::default();
        let program = v.program(&file);
        match program {
            Some(program) if v.errors.is_empty() => Ok(program),
            _ => Err(ProgramError::Invalid(v.errors)),
        }
    }

    pub fn tier(&self, id: &str) -> Option<(usize, &Tier)> {
        self.tiers.iter().enumerate().find(|(_, t)| t.id == id)
    }

    pub fn lowest_tier(&self) -> &Tier {
        // Validation guarantees at least one tier.
        &self.tiers[0]
    }

    pub fn reward(&self, id: &str) -> Option<&Reward> {
        self.rewards.iter().find(|r| r.id == id)
    }

    /// Refuses an event dated too far in the future or further back than the program allows.
    pub fn check_occurred_at(
        &self,
        occurred_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), TimeBoundsError> {
        if occurred_at > now + Duration::seconds(MAX_FUTURE_SKEW_SECONDS) {
            return Err(TimeBoundsError::InFuture { occurred_at, now });
        }
        if occurred_at < now - self.backdating_limit {
            return Err(TimeBoundsError::TooOld {
                occurred_at,
                limit_days: self.backdating_limit.num_days(),
            });
        }
        Ok(())
    }
}

/// A point's value ("1", "0.01") in millionths of a major unit: at most 6 fraction digits,
/// greater than 0, at most 1,000,000 (so that a value times any balance fits in i128 with room).
pub fn parse_point_value(text: &str) -> Option<i64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || whole.len() > 7
        || fraction.len() > 6
        || !digits(whole)
        || !digits(fraction)
    {
        return None;
    }
    if text.ends_with('.') {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let fraction: i64 = format!("{fraction:0<6}").parse().ok()?;
    let micros = whole * 1_000_000 + fraction;
    (micros > 0 && micros <= 1_000_000 * 1_000_000).then_some(micros)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeBoundsError {
    #[error("occurred_at {occurred_at} is more than 5 minutes after the current time {now}")]
    InFuture {
        occurred_at: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    #[error("occurred_at {occurred_at} is older than the program's backdating limit of {limit_days} days")]
    TooOld {
        occurred_at: DateTime<Utc>,
        limit_days: i64,
    },
}

/// A key missing from, or unknown to, the program's shape, named as the rules' mistakes are
/// (`expiry.months`, `tiers[2].threshold`) from the path the deserializer was at (`.` at the
/// top); the deserializer's own words otherwise.
fn shape_error(message: &str, path: &str, location: &str) -> FieldError {
    let table = if path == "." { "" } else { path };
    let named = |prefix: &str| {
        let rest = message.strip_prefix(prefix)?;
        let name = rest.split('`').next()?;
        // An unknown key's path ends with it already; a missing one's is its table's.
        Some(match table {
            "" => name.to_string(),
            table if table == name || table.ends_with(&format!(".{name}")) => table.to_string(),
            table => format!("{table}.{name}"),
        })
    };
    if let Some(field) = named("missing field `") {
        return FieldError {
            field,
            message: format!("is required{location}"),
        };
    }
    if let Some(field) = named("unknown field `") {
        let expected = message.split_once(", expected").map_or("", |(_, e)| e);
        return FieldError {
            field,
            message: format!("is not a field of a program file (expected{expected}){location}"),
        };
    }
    FieldError {
        field: if table.is_empty() {
            "file".into()
        } else {
            table.into()
        },
        message: format!("{message}{location}"),
    }
}

fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text[..span.start.min(text.len())].lines().count().max(1);
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Points the program gives or asks: from zero up to the limit of one entry.
    fn non_negative(&mut self, field: &str, value: i64) {
        if value < 0 {
            self.fail(field, format!("must not be negative (got {value})"));
        }
        self.at_most_points(field, value);
    }

    fn at_most_points(&mut self, field: &str, value: i64) {
        if value > MAX_POINTS {
            self.fail(field, format!("must be at most {MAX_POINTS} (got {value})"));
        }
    }

    fn multiplier(&mut self, field: &str, bp: u32) {
        if bp > MAX_MULTIPLIER_BP {
            self.fail(
                field,
                format!("must be at most {MAX_MULTIPLIER_BP} basis points (100x), got {bp}"),
            );
        }
    }

    fn amount(&mut self, field: &str, currency: Option<Currency>, text: &str) -> Option<i64> {
        let currency = currency?;
        match currency.parse_non_negative(text) {
            Ok(minor) if minor > MAX_AMOUNT => {
                self.fail(
                    field,
                    format!("must be at most {MAX_AMOUNT} minor units (got {minor})"),
                );
                None
            }
            Ok(minor) => Some(minor),
            Err(e) => {
                self.fail(field, format!("is not a valid amount: {e}"));
                None
            }
        }
    }

    fn program(&mut self, f: &ProgramFile) -> Option<Program> {
        if !is_identifier(&f.id) {
            self.fail(
                "id",
                "must be 1-64 characters of lower-case letters, digits and '-'",
            );
        }
        let currency = match Currency::from_code(&f.currency) {
            Ok(c) => Some(c),
            Err(e) => {
                self.fail("currency", e.to_string());
                None
            }
        };
        let time_zone = match f.time_zone.parse::<Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                self.fail(
                    "time_zone",
                    format!(
                        "{:?} is not an IANA time zone (e.g. Asia/Seoul)",
                        f.time_zone
                    ),
                );
                None
            }
        };
        if f.backdating_limit_days == 0 || f.backdating_limit_days > 3650 {
            self.fail("backdating_limit_days", "must be between 1 and 3650");
        }
        let purchase = self.purchase(&f.purchase, currency);
        if f.expiry.months == 0 || f.expiry.months > 120 {
            self.fail("expiry.months", "must be between 1 and 120");
        }
        let tiers = self.tiers(f, currency);
        let actions = self.actions(f);
        if let Some(r) = &f.referral {
            self.non_negative("referral.referrer_points", r.referrer_points);
            self.non_negative("referral.referee_points", r.referee_points);
        }
        if let Some(points) = f.safeguards.daily_points {
            self.non_negative("safeguards.daily_points", points);
        }
        if let Some(points) = f.safeguards.adjustment_approval_above {
            self.non_negative("safeguards.adjustment_approval_above", points);
        }
        if let Some(points) = f.safeguards.operator_daily_points {
            self.non_negative("safeguards.operator_daily_points", points);
        }
        let rewards = self.rewards(f, currency, &tiers);
        let pay_with_points = f
            .pay_with_points
            .as_ref()
            .and_then(|p| self.pay_with_points(p, currency));
        // Day counts are bounded so that every date computed from them is a date (chrono
        // panics past year 262,143): ten years is more than any notice or coupon needs.
        if f.coupons.valid_days == 0 || f.coupons.valid_days > MAX_DAYS {
            self.fail("coupons.valid_days", "must be between 1 and 3650");
        }
        for (field, days) in [
            ("notices.expiring_days", f.notices.expiring_days),
            ("notices.downgrade_days", f.notices.downgrade_days),
        ] {
            if days > MAX_DAYS {
                self.fail(field, "must be at most 3650");
            }
        }
        let point_value_micros = f.point_value.as_deref().and_then(|text| {
            let parsed = parse_point_value(text);
            if parsed.is_none() {
                self.fail(
                    "point_value",
                    "must be a decimal of at most 6 fraction digits, greater than 0 and at most 1000000",
                );
            }
            parsed
        });
        self.cashback(f, currency, point_value_micros, pay_with_points.as_ref());
        let membership = f
            .membership
            .as_ref()
            .and_then(|m| self.membership(m, currency, &rewards));
        for (i, r) in f.rewards.iter().enumerate() {
            if r.members_only && f.membership.is_none() {
                self.fail(
                    format!("rewards[{i}].members_only"),
                    "needs a [membership] in the program",
                );
            }
        }
        Some(Program {
            id: f.id.clone(),
            name: f.name.clone(),
            version: f.version.unwrap_or(0),
            currency: currency?,
            time_zone: time_zone?,
            backdating_limit: Duration::days(i64::from(f.backdating_limit_days)),
            purchase: purchase?,
            expiry_months: f.expiry.months,
            insufficient_balance: f.refunds.insufficient_balance,
            tier_rules: f.tier_rules.clone(),
            tiers,
            actions,
            referral: f.referral.clone(),
            rewards,
            pay_with_points,
            coupon_valid_days: f.coupons.valid_days,
            notices: f.notices.clone(),
            point_value_micros,
            safeguards: f.safeguards.clone(),
            erasure: f.erasure,
            cashback: f.cashback.enabled,
            membership,
            file: f.clone(),
        })
    }

    fn membership(
        &mut self,
        m: &MembershipFile,
        currency: Option<Currency>,
        rewards: &[Reward],
    ) -> Option<MembershipRules> {
        if !is_identifier(&m.id) {
            self.fail(
                "membership.id",
                "must be lower-case letters, digits and '-'",
            );
        }
        let price_minor = self.amount("membership.price", currency, &m.price);
        if price_minor == Some(0) {
            self.fail("membership.price", "must be greater than zero");
        }
        if !(1..=24).contains(&m.period_months) {
            self.fail("membership.period_months", "must be between 1 and 24");
        }
        if m.grace_days > 90 {
            self.fail("membership.grace_days", "must be at most 90");
        }
        if m.sku.trim().is_empty() {
            self.fail("membership.sku", "must name the SKU of the membership");
        }
        if m.multiplier_bp < UNIT_BP {
            self.fail(
                "membership.multiplier_bp",
                format!("must be at least {UNIT_BP} (a membership never lowers points)"),
            );
        }
        self.multiplier("membership.multiplier_bp", m.multiplier_bp);
        if let Some(reward) = &m.monthly_reward {
            match rewards.iter().find(|r| &r.id == reward) {
                None => self.fail(
                    "membership.monthly_reward",
                    format!("{reward:?} is not one of the rewards"),
                ),
                Some(r) if r.donation.is_some() => self.fail(
                    "membership.monthly_reward",
                    "must be a reward with a coupon, not a donation",
                ),
                Some(_) => {}
            }
        }
        Some(MembershipRules {
            id: m.id.clone(),
            name: if m.name.is_empty() {
                m.id.clone()
            } else {
                m.name.clone()
            },
            price_minor: price_minor?,
            period_months: m.period_months,
            grace_days: m.grace_days,
            sku: m.sku.clone(),
            multiplier_bp: m.multiplier_bp,
            monthly_reward: m.monthly_reward.clone(),
            early_access: m.early_access.clone(),
            fee_earns_points: m.fee_earns_points,
        })
    }

    /// Cashback shows points at the point value, so it needs one; a checkout that takes points
    /// at another rate would pay out other money than the member was shown.
    fn cashback(
        &mut self,
        f: &ProgramFile,
        currency: Option<Currency>,
        point_value_micros: Option<i64>,
        pay: Option<&PayWithPoints>,
    ) {
        if !f.cashback.enabled {
            return;
        }
        let Some(micros) = point_value_micros else {
            self.fail(
                "cashback.enabled",
                "needs point_value: what one point is worth",
            );
            return;
        };
        if let (Some(pay), Some(currency)) = (pay, currency) {
            // points x point value (millionths of a major unit) == value (minor units).
            let shown = i128::from(pay.points) * i128::from(micros);
            let taken = i128::from(pay.value_minor)
                * 10_i128.pow(u32::from(6 - currency.exponent().min(6)));
            if shown != taken {
                self.fail(
                    "pay_with_points.value",
                    "must be points x point_value when cashback is enabled",
                );
            }
        }
    }

    fn purchase(&mut self, p: &PurchaseFile, currency: Option<Currency>) -> Option<PurchaseRules> {
        self.non_negative("purchase.points", p.points);
        let per_minor = self.amount("purchase.per", currency, &p.per);
        if per_minor == Some(0) {
            self.fail("purchase.per", "must be greater than zero");
        }
        if p.pending_days > 365 {
            self.fail("purchase.pending_days", "must be at most 365");
        }
        if let Some(cap) = p.max_points_per_order {
            if cap <= 0 {
                self.fail("purchase.max_points_per_order", "must be greater than zero");
            }
            self.at_most_points("purchase.max_points_per_order", cap);
        }
        let categories = self.line_rules("purchase.categories", &p.categories, |r| &r.category);
        let skus = self.line_rules("purchase.skus", &p.skus, |r| &r.sku);
        Some(PurchaseRules {
            points: p.points,
            per_minor: per_minor.filter(|m| *m > 0)?,
            pending: Duration::days(i64::from(p.pending_days)),
            max_points_per_order: p.max_points_per_order,
            excluded_categories: p.excluded_categories.clone(),
            categories,
            skus,
        })
    }

    fn line_rules(
        &mut self,
        path: &str,
        rules: &[LineRuleFile],
        key: impl Fn(&LineRuleFile) -> &Option<String>,
    ) -> BTreeMap<String, LineRule> {
        let key_name = if path.ends_with("skus") {
            "sku"
        } else {
            "category"
        };
        let mut out = BTreeMap::new();
        for (i, r) in rules.iter().enumerate() {
            let field = format!("{path}[{i}]");
            let Some(name) = key(r).clone().filter(|k| !k.is_empty()) else {
                self.fail(format!("{field}.{key_name}"), "is required");
                continue;
            };
            if r.multiplier_bp.is_none() && r.bonus_points_per_unit.is_none() {
                self.fail(&field, "needs multiplier_bp, bonus_points_per_unit or both");
            }
            let rule = LineRule {
                multiplier_bp: r.multiplier_bp.unwrap_or(UNIT_BP),
                bonus_points_per_unit: r.bonus_points_per_unit.unwrap_or(0),
            };
            self.multiplier(&format!("{field}.multiplier_bp"), rule.multiplier_bp);
            self.non_negative(
                &format!("{field}.bonus_points_per_unit"),
                rule.bonus_points_per_unit,
            );
            if out.insert(name.clone(), rule).is_some() {
                self.fail(
                    format!("{field}.{key_name}"),
                    format!("{name:?} appears twice"),
                );
            }
        }
        out
    }

    fn tiers(&mut self, f: &ProgramFile, currency: Option<Currency>) -> Vec<Tier> {
        if f.tiers.is_empty() {
            self.fail(
                "tiers",
                "must list at least one tier (the entry tier, threshold 0)",
            );
            return Vec::new();
        }
        let mut tiers: Vec<Tier> = Vec::new();
        for (i, t) in f.tiers.iter().enumerate() {
            let field = format!("tiers[{i}]");
            if !is_identifier_upper(&t.id) {
                self.fail(
                    format!("{field}.id"),
                    "must be 1-64 characters of letters, digits, '-' or '_'",
                );
            }
            if tiers.iter().any(|other| other.id == t.id) {
                self.fail(format!("{field}.id"), format!("{:?} appears twice", t.id));
            }
            self.multiplier(&format!("{field}.multiplier_bp"), t.multiplier_bp);
            let threshold =
                self.threshold(&format!("{field}.threshold"), f, currency, &t.threshold);
            let Some(threshold) = threshold else { continue };
            if i == 0 && threshold != 0 {
                self.fail(
                    format!("{field}.threshold"),
                    "must be 0: the first tier is where every member starts",
                );
            }
            if let Some(prev) = tiers.last() {
                if threshold <= prev.threshold {
                    self.fail(
                        format!("{field}.threshold"),
                        format!("must be greater than tiers[{}].threshold", i - 1),
                    );
                }
            }
            tiers.push(Tier {
                id: t.id.clone(),
                name: if t.name.is_empty() {
                    t.id.clone()
                } else {
                    t.name.clone()
                },
                threshold,
                multiplier_bp: t.multiplier_bp,
            });
        }
        tiers
    }

    fn threshold(
        &mut self,
        field: &str,
        f: &ProgramFile,
        currency: Option<Currency>,
        t: &Threshold,
    ) -> Option<i64> {
        match (f.tier_rules.measure, t) {
            (Measure::Spend, Threshold::Text(text)) => self.amount(field, currency, text),
            (Measure::Spend, Threshold::Number(n)) => {
                let minor = currency
                    .and_then(|c| n.checked_mul(c.minor_per_major()))
                    .filter(|m| (0..=MAX_AMOUNT).contains(m));
                if minor.is_none() {
                    // In the unit it is written in (major units, as a number).
                    let most = MAX_AMOUNT / currency.map_or(1, |c| c.minor_per_major());
                    self.fail(field, format!("must be an amount from 0 to {most}"));
                }
                minor
            }
            // Any number of points a balance can hold (what a window could ever count).
            (Measure::Points, t) => {
                let points = match t {
                    Threshold::Number(n) => Some(*n),
                    Threshold::Text(text) => text.trim().parse::<i64>().ok(),
                }
                .filter(|p| (0..=MAX_BALANCE).contains(p));
                if points.is_none() {
                    self.fail(
                        field,
                        format!("must be a whole number of points from 0 to {}", MAX_BALANCE),
                    );
                }
                points
            }
        }
    }

    fn actions(&mut self, f: &ProgramFile) -> BTreeMap<String, ActionRule> {
        let mut out = BTreeMap::new();
        let known = f
            .actions
            .iter()
            .map(|(k, a)| (format!("actions.{k}"), k, a));
        let custom = f
            .custom_actions
            .iter()
            .map(|(k, a)| (format!("custom_actions.{k}"), k, a));
        for (field, name, action) in known.chain(custom) {
            if field.starts_with("actions.") && !KNOWN_ACTIONS.contains(&name.as_str()) {
                self.fail(
                    &field,
                    format!(
                        "is not a known action ({}); put your own under [custom_actions]",
                        KNOWN_ACTIONS.join(", ")
                    ),
                );
                continue;
            }
            if field.starts_with("custom_actions.") && KNOWN_ACTIONS.contains(&name.as_str()) {
                self.fail(&field, "is a known action: put it under [actions]");
                continue;
            }
            self.non_negative(&format!("{field}.points"), action.points);
            let limit = match &action.limit {
                // Yearly days: once a year unless the file says otherwise, so that two
                // accounts of one person merged are not paid twice in a year.
                LimitFile::Unlimited if YEARLY_ACTIONS.contains(&name.as_str()) => {
                    Some((1, Period::Year))
                }
                LimitFile::Unlimited => None,
                LimitFile::Word(w) if w == "once" => Some((1, Period::Lifetime)),
                LimitFile::Word(w) if w == "unlimited" => None,
                LimitFile::Word(w) => {
                    self.fail(
                        format!("{field}.limit"),
                        format!("{w:?} is not \"once\", \"unlimited\" or {{ count, per }}"),
                    );
                    None
                }
                LimitFile::Count { count: 0, .. } => {
                    self.fail(format!("{field}.limit.count"), "must be at least 1");
                    None
                }
                LimitFile::Count { count, per } => Some((*count, *per)),
            };
            out.insert(
                name.clone(),
                ActionRule {
                    points: action.points,
                    limit,
                },
            );
        }
        out
    }

    fn rewards(
        &mut self,
        f: &ProgramFile,
        currency: Option<Currency>,
        tiers: &[Tier],
    ) -> Vec<Reward> {
        let mut out: Vec<Reward> = Vec::new();
        for (i, r) in f.rewards.iter().enumerate() {
            let field = format!("rewards[{i}]");
            if !is_identifier(&r.id) || r.id == "pay-with-points" {
                self.fail(
                    format!("{field}.id"),
                    "must be lower-case letters, digits and '-' (and not pay-with-points)",
                );
            }
            if out.iter().any(|o| o.id == r.id) {
                self.fail(format!("{field}.id"), format!("{:?} appears twice", r.id));
            }
            let donation = self.donation(&field, r);
            if r.kind != RewardKind::Donation && r.cost <= 0 {
                self.fail(format!("{field}.cost"), "must be greater than zero");
            }
            self.at_most_points(&format!("{field}.cost"), r.cost);
            let amount_minor = match (r.kind, &r.amount) {
                (RewardKind::FixedDiscount, Some(a)) => {
                    self.amount(&format!("{field}.amount"), currency, a)
                }
                (RewardKind::FixedDiscount, None) => {
                    self.fail(
                        format!("{field}.amount"),
                        "is required for a fixed_discount",
                    );
                    None
                }
                _ => None,
            };
            match (r.kind, r.percent_bp) {
                (RewardKind::PercentDiscount, Some(bp)) if bp > 0 && bp <= UNIT_BP => {}
                (RewardKind::PercentDiscount, _) => self.fail(
                    format!("{field}.percent_bp"),
                    "is required for a percent_discount, between 1 and 10000",
                ),
                _ => {}
            }
            if r.kind == RewardKind::FreeProduct && r.sku.is_none() {
                self.fail(format!("{field}.sku"), "is required for a free_product");
            }
            if let Some(min) = &r.min_tier {
                if !tiers.iter().any(|t| &t.id == min) {
                    self.fail(
                        format!("{field}.min_tier"),
                        format!("{min:?} is not one of the tiers"),
                    );
                }
            }
            out.push(Reward {
                id: r.id.clone(),
                name: if r.name.is_empty() {
                    r.id.clone()
                } else {
                    r.name.clone()
                },
                kind: r.kind,
                cost: r.cost,
                amount_minor,
                percent_bp: r.percent_bp,
                sku: r.sku.clone(),
                min_tier: r.min_tier.clone(),
                donation,
                members_only: r.members_only,
            });
        }
        out
    }

    /// A donation's cause and rates: required for a `donation`, refused on any other reward.
    fn donation(&mut self, field: &str, r: &RewardFile) -> Option<Donation> {
        if r.kind != RewardKind::Donation {
            for (name, given) in [
                ("cause", r.cause.is_some()),
                ("points_per_unit", r.points_per_unit.is_some()),
                ("min_points", r.min_points.is_some()),
            ] {
                if given {
                    self.fail(format!("{field}.{name}"), "is only for a donation");
                }
            }
            return None;
        }
        if r.cost != 0 {
            self.fail(
                format!("{field}.cost"),
                "a donation has no cost: the member chooses the points (min_points)",
            );
        }
        let cause = r.cause.clone().unwrap_or_default();
        if cause.trim().is_empty() || cause.len() > 100 {
            self.fail(
                format!("{field}.cause"),
                "is required for a donation, at most 100 characters",
            );
        }
        let per = r.points_per_unit.unwrap_or(0);
        if per <= 0 {
            self.fail(
                format!("{field}.points_per_unit"),
                "is required for a donation, greater than zero",
            );
        }
        self.at_most_points(&format!("{field}.points_per_unit"), per);
        let min = r.min_points.unwrap_or(per);
        if min <= 0 {
            self.fail(format!("{field}.min_points"), "must be greater than zero");
        }
        self.at_most_points(&format!("{field}.min_points"), min);
        Some(Donation {
            cause,
            points_per_unit: per,
            min_points: min,
        })
    }

    fn pay_with_points(
        &mut self,
        p: &PayWithPointsFile,
        currency: Option<Currency>,
    ) -> Option<PayWithPoints> {
        if p.points <= 0 {
            self.fail("pay_with_points.points", "must be greater than zero");
        }
        if p.min_points <= 0 {
            self.fail("pay_with_points.min_points", "must be greater than zero");
        }
        self.at_most_points("pay_with_points.points", p.points);
        self.at_most_points("pay_with_points.min_points", p.min_points);
        if p.hold_minutes == 0 {
            self.fail("pay_with_points.hold_minutes", "must be at least 1");
        }
        let value_minor = self.amount("pay_with_points.value", currency, &p.value)?;
        if value_minor == 0 {
            self.fail("pay_with_points.value", "must be greater than zero");
        }
        Some(PayWithPoints {
            points: p.points,
            value_minor,
            min_points: p.min_points,
            hold_minutes: p.hold_minutes,
        })
    }
}

/// Ids that go into keys: lower-case, digits and '-', so that they never collide with the `#`
/// separators of the store's keys.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_identifier_upper(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
