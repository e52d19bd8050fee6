//! Campaigns: time-boxed offers tested as A/B variants ("double points this weekend: 2x vs 1.5x
//! vs control"). A campaign file is JSON, validated with every problem named by its field;
//! assignment is GrowthBook's (see [`crate::bucketing`]), on the canonical member id.
//!
//! Weights and coverage are fractions as GrowthBook defines them (f64); effects on points are
//! integers (basis points, points), like everything else that touches the ledger.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};

use crate::bucketing::{bucket_ranges, choose_variation, hash, in_namespace, Namespace};
use crate::domain::limits::MAX_POINTS;
use crate::domain::program::{join, FieldError, MAX_MULTIPLIER_BP};

/// The most variants one campaign has.
pub const MAX_VARIANTS: usize = 20;
use crate::domain::Program;

/// How far the weights may sum from 1.
const WEIGHT_TOLERANCE: f64 = 0.001;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CampaignKind {
    /// Every member of the audience is assigned from the start (intent to treat).
    Broadcast,
    /// Members are assigned when they first see the campaign in the app.
    OnExposure,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CampaignStatus {
    Draft,
    Running,
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    Purchase,
    Revenue,
    Redemption,
}

/// What a variant does for the members assigned to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Effect {
    None,
    /// Purchases in the window earn this multiple (15000 = 1.5x), times the tier's.
    Multiplier {
        basis_points: u32,
    },
    /// Extra points on the next purchase in the window.
    Bonus {
        points: i64,
    },
    /// Points once, at assignment.
    Grant {
        points: i64,
    },
    /// An offer of one of the program's rewards.
    Reward {
        reward: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub key: String,
    pub weight: f64,
    pub effect: Effect,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceFile {
    pub name: String,
    pub start: f64,
    pub end: f64,
}

/// The most days an audience's filters may count back (a hundred years).
pub const MAX_AUDIENCE_DAYS: u32 = 36_500;

/// Who may be in a campaign. Every filter given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audience {
    /// Members in one of these tiers.
    #[serde(default)]
    pub tiers: Vec<String>,
    /// Members who joined within this many days.
    #[serde(default)]
    pub new_members_days: Option<u32>,
    /// Members with no purchase for this many days.
    #[serde(default)]
    pub dormant_days: Option<u32>,
    /// Members whose birthday falls inside the campaign's window.
    #[serde(default)]
    pub birthday_in_window: bool,
    /// Members who have bought from this category.
    #[serde(default)]
    pub purchased_category: Option<String>,
}

fn default_hash_version() -> u32 {
    2
}

fn default_coverage() -> f64 {
    1.0
}

fn draft() -> CampaignStatus {
    CampaignStatus::Draft
}

/// A campaign as the admin API takes it. The first variant is the control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Campaign {
    pub name: String,
    pub kind: CampaignKind,
    #[serde(default = "draft")]
    pub status: CampaignStatus,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub hash_seed: String,
    #[serde(default = "default_hash_version")]
    pub hash_version: u32,
    /// Raised to re-randomise on purpose: assignments recorded under a lower version are
    /// made again.
    #[serde(default)]
    pub bucket_version: u32,
    #[serde(default = "default_coverage")]
    pub coverage: f64,
    #[serde(default)]
    pub namespace: Option<NamespaceFile>,
    #[serde(default)]
    pub audience: Audience,
    pub goal: Goal,
    pub variants: Vec<Variant>,
    /// When a running campaign was stopped: purchases made before still count in it, however
    /// late they are delivered. Set when it is saved, never taken from the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<DateTime<Utc>>,
    /// The seeds and bucket versions the campaign has been saved with, first to last (the
    /// first one it had when they were first kept): the members assigned with the first count
    /// under the campaign's own id. Set when it is saved, never taken from the file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub randomisations: Vec<Randomisation>,
}

/// A seed and bucket version: the members assigned with them are one randomisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Randomisation {
    pub hash_seed: String,
    pub bucket_version: u32,
}

/// Why a campaign was refused: every problem, each naming its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CampaignError {
    #[error("campaign is not valid JSON: {0}")]
    Syntax(String),
    #[error("campaign is invalid: {}", join(.0))]
    Invalid(Vec<FieldError>),
}

/// Every field of a [`Campaign`]: what [`Campaign::from_stored`] keeps.
const FIELDS: [&str; 15] = [
    "name",
    "kind",
    "status",
    "start",
    "end",
    "hash_seed",
    "hash_version",
    "bucket_version",
    "coverage",
    "namespace",
    "audience",
    "goal",
    "variants",
    "stopped_at",
    "randomisations",
];

impl Campaign {
    /// A campaign as stored. Fields this version does not know (saved by a newer one, during a
    /// deploy or after a rollback) are left out, never a reason to fail every purchase of the
    /// program; a file from an operator is still read strictly ([`Campaign::from_json`]).
    pub fn from_stored(json: &str) -> Result<Campaign, serde_json::Error> {
        let mut value: serde_json::Value = serde_json::from_str(json)?;
        if let Some(fields) = value.as_object_mut() {
            fields.retain(|name, _| FIELDS.contains(&name.as_str()));
        }
        serde_json::from_value(value)
    }

    /// Parses and validates a campaign of `program`.
    pub fn from_json(text: &[u8], program: &Program) -> Result<Campaign, CampaignError> {
        let mut reader = serde_json::Deserializer::from_slice(text);
        let campaign: Campaign = serde_path_to_error::deserialize(&mut reader).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            // A value of the wrong kind names its field; a text that is not JSON has none.
            match inner.classify() {
                serde_json::error::Category::Data if field != "." => {
                    CampaignError::Invalid(vec![FieldError {
                        field,
                        message: inner.to_string(),
                    }])
                }
                _ => CampaignError::Syntax(inner.to_string()),
            }
        })?;
        reader
            .end()
            .map_err(|e| CampaignError::Syntax(e.to_string()))?;
        let problems = campaign.problems(program);
        if problems.is_empty() {
            Ok(campaign)
        } else {
            Err(CampaignError::Invalid(problems))
        }
    }

    fn problems(&self, program: &Program) -> Vec<FieldError> {
        let mut problems = Vec::new();
        let mut fail = |field: &str, message: String| {
            problems.push(FieldError {
                field: field.to_string(),
                message,
            })
        };
        if self.name.trim().is_empty() {
            fail("name", "must not be empty".into());
        }
        if self.end <= self.start {
            fail("end", "must be after start".into());
        }
        if self.hash_seed.is_empty() {
            fail("hash_seed", "must not be empty".into());
        }
        if !matches!(self.hash_version, 1 | 2) {
            fail("hash_version", "must be 1 or 2".into());
        }
        if !(0.0..=1.0).contains(&self.coverage) {
            fail("coverage", "must be between 0 and 1".into());
        }
        if let Some(ns) = &self.namespace {
            if ns.name.is_empty() {
                fail("namespace.name", "must not be empty".into());
            }
            if !(0.0 <= ns.start && ns.start < ns.end && ns.end <= 1.0) {
                fail("namespace", "needs 0 <= start < end <= 1".into());
            }
        }
        for (i, tier) in self.audience.tiers.iter().enumerate() {
            if program.tier(tier).is_none() {
                fail(
                    &format!("audience.tiers[{i}]"),
                    format!("{tier:?} is not a tier of the program"),
                );
            }
        }
        for (field, days) in [
            ("audience.new_members_days", self.audience.new_members_days),
            ("audience.dormant_days", self.audience.dormant_days),
        ] {
            if days.is_some_and(|days| days > MAX_AUDIENCE_DAYS) {
                fail(field, format!("must be at most {MAX_AUDIENCE_DAYS}"));
            }
        }
        if self
            .audience
            .purchased_category
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            fail("audience.purchased_category", "must not be empty".into());
        }
        let max = crate::domain::limits::MAX_CATEGORY_CHARS;
        if self
            .audience
            .purchased_category
            .as_deref()
            .is_some_and(|c| c.chars().count() > max)
        {
            fail(
                "audience.purchased_category",
                format!("must be at most {max} characters (what an account keeps of a category)"),
            );
        }
        if self.variants.len() < 2 {
            fail(
                "variants",
                "needs a control and at least one other variant".into(),
            );
        }
        // Each variant has its sharded counters and a row in every report: a thousand were
        // saved, which no test needs and every report pays for.
        if self.variants.len() > MAX_VARIANTS {
            fail(
                "variants",
                format!(
                    "at most {MAX_VARIANTS} variants (got {})",
                    self.variants.len()
                ),
            );
        }
        let mut keys = BTreeSet::new();
        for (i, v) in self.variants.iter().enumerate() {
            let field = |name: &str| format!("variants[{i}].{name}");
            if !crate::ids::IdKind::Variant.accepts(&v.key) || !keys.insert(v.key.as_str()) {
                fail(
                    &field("key"),
                    format!("must be unique and {}", crate::ids::IdKind::Variant.rule()),
                );
            }
            if !(0.0..=1.0).contains(&v.weight) {
                fail(&field("weight"), "must be between 0 and 1".into());
            }
            match &v.effect {
                Effect::Multiplier { basis_points } if *basis_points == 0 => fail(
                    &field("effect.basis_points"),
                    "must be greater than zero".into(),
                ),
                Effect::Multiplier { basis_points } if *basis_points > MAX_MULTIPLIER_BP => fail(
                    &field("effect.basis_points"),
                    format!("must be at most {MAX_MULTIPLIER_BP} (100x)"),
                ),
                Effect::Bonus { points } | Effect::Grant { points }
                    if *points <= 0 || *points > MAX_POINTS =>
                {
                    fail(
                        &field("effect.points"),
                        format!("must be between 1 and {MAX_POINTS}"),
                    )
                }
                Effect::Reward { reward } if !program.rewards.iter().any(|r| &r.id == reward) => {
                    fail(
                        &field("effect.reward"),
                        format!("{reward:?} is not a reward of the program"),
                    )
                }
                _ => {}
            }
        }
        let total: f64 = self.variants.iter().map(|v| v.weight).sum();
        if (total - 1.0).abs() > WEIGHT_TOLERANCE {
            fail(
                "variants",
                format!("weights must sum to 1 (within {WEIGHT_TOLERANCE}); they sum to {total}"),
            );
        }
        problems
    }

    /// The variant a member falls into, or `None` (outside the namespace or the coverage).
    /// The audience is checked separately, against the member's account.
    pub fn assign(&self, member: &str) -> Option<usize> {
        if let Some(ns) = &self.namespace {
            let namespace = Namespace {
                name: ns.name.clone(),
                start: ns.start,
                end: ns.end,
            };
            if !in_namespace(member, &namespace) {
                return None;
            }
        }
        let n = hash(&self.hash_seed, member, self.hash_version)?;
        let weights: Vec<f64> = self.variants.iter().map(|v| v.weight).collect();
        let count = i64::try_from(self.variants.len()).ok()?;
        choose_variation(n, &bucket_ranges(count, self.coverage, Some(&weights)))
    }

    /// Running at `at`: started, not ended, and not stopped by then (a purchase made before
    /// the stop counts, delivered however late).
    pub fn running_at(&self, at: DateTime<Utc>) -> bool {
        let on = match self.status {
            CampaignStatus::Running => true,
            CampaignStatus::Stopped => self.stopped_at.is_some_and(|stopped| at < stopped),
            CampaignStatus::Draft => false,
        };
        on && self.start <= at && at < self.end
    }

    /// The last moment of `[from, to]` at which it runs, `None` when it runs at none: what a
    /// catch-up of a past day assigns as of (a campaign that has ended since still had that
    /// day).
    pub fn last_running_in(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let until = self.counts_until()?;
        let last = if to < until {
            to
        } else {
            until - chrono::Duration::milliseconds(1)
        };
        (self.start.max(from) <= last).then_some(last)
    }

    /// Until when purchases count in it (the end of the window it may add items to a commit
    /// in): its end while running, its stop once stopped, never for a draft.
    pub fn counts_until(&self) -> Option<DateTime<Utc>> {
        match self.status {
            CampaignStatus::Running => Some(self.end),
            CampaignStatus::Stopped => self.stopped_at.map(|s| s.min(self.end)),
            CampaignStatus::Draft => None,
        }
    }

    /// Whether an assignment may be of a later save than this copy of the campaign (a cached
    /// one), which must not take it back to an earlier randomisation: it is of a randomisation
    /// this version does not know (neither its current one nor one it had before), and was
    /// made after `read_since`, the earliest a save this copy predates could have been (its
    /// read less the time a copy is kept). An unknown one made before that is older than
    /// anything kept (re-randomised before randomisations were kept): re-bucketed as ever.
    pub fn may_be_newer(
        &self,
        assignment: &crate::ports::Assignment,
        read_since: DateTime<Utc>,
    ) -> bool {
        let known = assignment.holds_for(&self.hash_seed, self.bucket_version)
            || self.randomisations.is_empty()
            || self.randomisations.iter().any(|r| {
                r.hash_seed == assignment.hash_seed && r.bucket_version == assignment.bucket_version
            });
        !known && assignment.assigned_at >= read_since
    }

    /// Keeps the randomisations of the version it replaces (`before`; that version's own
    /// when none were kept), with this one's added when it re-randomises. A randomisation left
    /// is never taken up again, nor a bucket version lowered: the members assigned since would
    /// be counted a second time, or in counters no report reads.
    pub fn stamp_randomisation(&mut self, before: Option<&Campaign>) -> Result<(), FieldError> {
        let now = self.randomisation();
        let Some(b) = before else {
            self.randomisations = vec![now];
            return Ok(());
        };
        if self.bucket_version < b.bucket_version {
            return Err(FieldError {
                field: "bucket_version".into(),
                message: format!("may only rise: it is {}", b.bucket_version),
            });
        }
        let mut kept = b.randomisations.clone();
        if kept.is_empty() {
            kept.push(b.randomisation());
        }
        if kept.last() != Some(&now) {
            if kept.contains(&now) {
                return Err(FieldError {
                    field: "hash_seed".into(),
                    message: format!(
                        "the campaign was randomised with this seed at bucket_version {} before: re-randomise with a new seed or a higher bucket_version",
                        now.bucket_version
                    ),
                });
            }
            kept.push(now);
        }
        self.randomisations = kept;
        Ok(())
    }

    pub(crate) fn randomisation(&self) -> Randomisation {
        Randomisation {
            hash_seed: self.hash_seed.clone(),
            bucket_version: self.bucket_version,
        }
    }

    /// Where campaign `id` counts the members assigned with `seed` at `bucket_version`: under
    /// its own id for its first randomisation, under `{id}~{bucket version}~{seed's hash}` for
    /// each later one (`~` is in no campaign id), so that re-randomising starts counting afresh
    /// and no member is counted in two variants of one report.
    pub fn counters_for(&self, id: &str, seed: &str, bucket_version: u32) -> String {
        match self.randomisations.first() {
            Some(first) if first.hash_seed != seed || first.bucket_version != bucket_version => {
                format!(
                    "{id}~{bucket_version}~{:08x}",
                    crate::bucketing::fnv32a(seed)
                )
            }
            _ => id.to_string(),
        }
    }

    /// Where campaign `id` counts the members it assigns now.
    pub fn current_counters(&self, id: &str) -> String {
        self.counters_for(id, &self.hash_seed, self.bucket_version)
    }

    /// Sets when it was stopped, from the version it replaces (`before`) and the time it is
    /// saved: kept while it stays stopped, `now` when a running one stops, none otherwise.
    pub fn stamp_stop(&mut self, before: Option<&Campaign>, now: DateTime<Utc>) {
        self.stopped_at = match (self.status, before) {
            (CampaignStatus::Stopped, Some(b)) if b.status == CampaignStatus::Stopped => {
                b.stopped_at
            }
            (CampaignStatus::Stopped, Some(b)) if b.status == CampaignStatus::Running => Some(now),
            _ => None,
        };
    }
}

impl fmt::Display for CampaignKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CampaignKind::Broadcast => "broadcast",
            CampaignKind::OnExposure => "on_exposure",
        })
    }
}

impl Campaign {
    /// Whether a member (their account as of `now`) is in the campaign's audience.
    pub fn admits(
        &self,
        program: &Program,
        account: &crate::domain::Account,
        now: DateTime<Utc>,
    ) -> bool {
        let audience = &self.audience;
        let today = crate::domain::calendar::local_date(program.time_zone, now);
        if !audience.tiers.is_empty() && !audience.tiers.contains(&account.tier.id) {
            return false;
        }
        // A count of days past the calendar (a campaign stored before the bound) reaches every
        // member for the first filter and none for the second, never a panic.
        if let Some(days) = audience.new_members_days {
            let since = today.checked_sub_signed(chrono::Duration::days(i64::from(days)));
            if since.is_some_and(|since| account.joined_on < since) {
                return false;
            }
        }
        if let Some(days) = audience.dormant_days {
            let since = now.checked_sub_signed(chrono::Duration::days(i64::from(days)));
            if account
                .last_purchase_at
                .is_some_and(|t| since.is_none_or(|since| t > since))
            {
                return false;
            }
        }
        if audience.birthday_in_window && !self.birthday_in_window(program, account) {
            return false;
        }
        if let Some(category) = &audience.purchased_category {
            if !account.categories.contains(category) {
                return false;
            }
        }
        true
    }

    /// The member's birthday (month and day) falls on a day of the campaign's window, whose end
    /// is not in it. A 29 February birthday is kept on 28 February in a common year, as the
    /// birthday job keeps it.
    fn birthday_in_window(&self, program: &Program, account: &crate::domain::Account) -> bool {
        let Some(birthday) = account.profile.birthday.as_deref() else {
            return false;
        };
        let tz = program.time_zone;
        let first = crate::domain::calendar::local_date(tz, self.start);
        let last =
            crate::domain::calendar::local_date(tz, self.end - chrono::Duration::nanoseconds(1));
        first
            .iter_days()
            .take_while(|d| *d <= last)
            .take(366)
            .any(|d| {
                let day = d.format("%m-%d").to_string();
                let leap_day_kept = day == "02-28"
                    && birthday == "02-29"
                    && chrono::NaiveDate::from_ymd_opt(d.year(), 2, 29).is_none();
                day == birthday || leap_day_kept
            })
    }
}
