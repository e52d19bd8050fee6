//! When a member next needs a scheduled job, and the notices those jobs send.
//!
//! Every commit stores, next to the account, the date on which each job next has work for the
//! member (DESIGN §4: a sparse due-date index per job). A nightly job then reads only the members
//! due that day, never the whole program. The dates are derived here, from the account alone, so
//! both stores index exactly the same thing.

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::account::Account;
use super::calendar::{add_days, local_date, start_of_day};
use super::ledger::Source;
use super::program::Program;
use super::tiers::{measure_at, tier_for};

/// How long a sent notice is remembered after its date.
const NOTICE_MEMORY_DAYS: i64 = 400;

/// The scheduled jobs that work from the due-date index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DueJob {
    /// Pending points whose return window closed (`release-pending`).
    Release,
    /// Lots past their last usable day (`expire-points`).
    Expire,
    /// Tier reviews (`tier-reviews`).
    Review,
    /// `points.expiring` and `tier.downgrade_scheduled` (`notices`).
    Notice,
    /// Members by birthday (month and day; `campaign-tick`).
    Birthday,
    /// Members by the month and day they joined (`campaign-tick`).
    Anniversary,
}

impl DueJob {
    pub const ALL: [DueJob; 6] = [
        DueJob::Release,
        DueJob::Expire,
        DueJob::Review,
        DueJob::Notice,
        DueJob::Birthday,
        DueJob::Anniversary,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DueJob::Release => "release",
            DueJob::Expire => "expire",
            DueJob::Review => "review",
            DueJob::Notice => "notice",
            DueJob::Birthday => "birthday",
            DueJob::Anniversary => "anniversary",
        }
    }
}

/// The next date each job has work for a member (in the program's zone), if any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DueDates {
    pub release: Option<NaiveDate>,
    pub expire: Option<NaiveDate>,
    pub review: Option<NaiveDate>,
    pub notice: Option<NaiveDate>,
    /// Yearly days, indexed as that month and day of [`YEARLY_INDEX_YEAR`].
    #[serde(default)]
    pub birthday: Option<NaiveDate>,
    #[serde(default)]
    pub anniversary: Option<NaiveDate>,
}

/// The year yearly days (birthdays, anniversaries) are indexed under: a leap year, so that
/// 29 February has a place.
pub const YEARLY_INDEX_YEAR: i32 = 2000;

/// The index date of a month and day ("MM-DD").
pub fn yearly_index_date(month_day: &str) -> Option<NaiveDate> {
    let (m, d) = month_day.split_once('-')?;
    NaiveDate::from_ymd_opt(YEARLY_INDEX_YEAR, m.parse().ok()?, d.parse().ok()?)
}

/// The index dates to read for a day: its month and day, and on 28 February of a common year
/// also 29 February, so that members born on a leap day are not skipped.
pub fn yearly_index_dates(day: NaiveDate) -> Vec<NaiveDate> {
    let mut dates: Vec<NaiveDate> =
        NaiveDate::from_ymd_opt(YEARLY_INDEX_YEAR, day.month(), day.day())
            .into_iter()
            .collect();
    let leap = NaiveDate::from_ymd_opt(day.year(), 2, 29).is_some();
    if !leap && day.month() == 2 && day.day() == 28 {
        dates.extend(NaiveDate::from_ymd_opt(YEARLY_INDEX_YEAR, 2, 29));
    }
    dates
}

impl DueDates {
    pub fn get(&self, job: DueJob) -> Option<NaiveDate> {
        match job {
            DueJob::Release => self.release,
            DueJob::Expire => self.expire,
            DueJob::Review => self.review,
            DueJob::Notice => self.notice,
            DueJob::Birthday => self.birthday,
            DueJob::Anniversary => self.anniversary,
        }
    }
}

/// A notice a job sends, once per subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `points` points are last usable on `last_day`.
    Expiring { last_day: NaiveDate, points: i64 },
    /// The review on `review_on` will move the member from `from` to `to`.
    DowngradeScheduled {
        review_on: NaiveDate,
        from: String,
        to: String,
        /// What is still needed (spend or points) to keep the tier.
        needed: i64,
    },
    /// The paid membership's next period starts on `renews_on`: a reminder a week before.
    MembershipRenewal { renews_on: NaiveDate },
    /// No renewal came: the membership's benefits end on `on` (sending it marks it lapsed).
    MembershipLapsed { on: NaiveDate },
}

/// How long before a membership's renewal date its reminder is sent.
pub const RENEWAL_REMINDER_DAYS: i64 = 7;

impl Notice {
    /// The key kept on the account once the notice is sent, so it is never sent twice.
    pub fn key(&self) -> String {
        match self {
            Notice::Expiring { last_day, .. } => format!("expiring:{last_day}"),
            Notice::DowngradeScheduled { review_on, .. } => format!("downgrade:{review_on}"),
            Notice::MembershipRenewal { renews_on } => format!("membership-renewal:{renews_on}"),
            Notice::MembershipLapsed { on } => format!("membership-lapsed:{on}"),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Notice::Expiring { .. } => "points.expiring",
            Notice::DowngradeScheduled { .. } => "tier.downgrade_scheduled",
            Notice::MembershipRenewal { .. } => "membership.renewal_due",
            Notice::MembershipLapsed { .. } => "membership.lapsed",
        }
    }
}

/// The local date of an instant; what a job "as of" that instant sees as today.
fn today(program: &Program, now: DateTime<Utc>) -> NaiveDate {
    local_date(program.time_zone, now)
}

impl Account {
    /// The date whose yearly return the `anniversary` action celebrates: the one the member gave
    /// in their profile, else the day they joined.
    pub fn anniversary_date(&self) -> NaiveDate {
        self.profile.anniversary.unwrap_or(self.joined_on)
    }

    /// The next date on which each job has work for this account. Dates already past are
    /// kept as they are: the next run of the job picks them up (it reads back to its last run).
    pub fn due_dates(&self, program: &Program) -> DueDates {
        // A merged member keeps nothing that time could change.
        if !self.is_member() {
            return DueDates::default();
        }
        // Matured pending points, and holds not captured in time, are both settled by
        // `release-pending`.
        let release = self
            .pending
            .iter()
            .map(|g| g.release_at)
            .chain(self.holds.iter().map(|h| h.expires_at))
            .map(|at| local_date(program.time_zone, at))
            .min();
        // A lot is gone from the day after its last usable day; pending points already know
        // the lot they will join, so a member whose points were never released is found too.
        let expire = self
            .lots
            .first_expiry()
            .into_iter()
            .chain(self.pending.iter().map(|g| g.expires_on))
            .min()
            .and_then(|d| d.succ_opt());
        DueDates {
            release,
            expire,
            review: self.tier.review_on,
            notice: self
                .notices_due(program)
                .into_iter()
                .map(|(d, _)| d)
                .chain(self.next_membership_grant(program))
                .min(),
            birthday: self.profile.birthday.as_deref().and_then(yearly_index_date),
            anniversary: NaiveDate::from_ymd_opt(
                YEARLY_INDEX_YEAR,
                self.anniversary_date().month(),
                self.anniversary_date().day(),
            ),
        }
    }

    /// Notices not sent yet, each with the date it becomes due.
    fn notices_due(&self, program: &Program) -> Vec<(NaiveDate, Notice)> {
        let mut due = Vec::new();
        let expiring_days = i64::from(program.notices.expiring_days);
        for lot in self.lots.iter() {
            let notice = Notice::Expiring {
                last_day: lot.expires_on,
                points: lot.points,
            };
            if lot.points > 0 && !self.notified.contains(&notice.key()) {
                let on = add_days(lot.expires_on, 1 - expiring_days);
                due.push((on, notice));
            }
        }
        if let Some(notice) = self.downgrade_ahead(program) {
            if !self.notified.contains(&notice.key()) {
                if let Notice::DowngradeScheduled { review_on, .. } = &notice {
                    let days = i64::from(program.notices.downgrade_days);
                    due.push((add_days(*review_on, -days), notice));
                }
            }
        }
        if let (Some(rules), Some(m)) = (&program.membership, &self.membership) {
            if m.ended_on.is_none() && m.lapsed_on.is_none() && m.id == rules.id {
                let renews_on = m.renews_on();
                let lapses_on = m.lapses_on(rules);
                for (on, notice) in [
                    (
                        add_days(renews_on, -RENEWAL_REMINDER_DAYS),
                        Notice::MembershipRenewal { renews_on },
                    ),
                    (lapses_on, Notice::MembershipLapsed { on: lapses_on }),
                ] {
                    if !self.notified.contains(&notice.key()) {
                        due.push((on, notice));
                    }
                }
            }
        }
        due
    }

    /// The day the membership's next monthly reward is due (the `notices` job grants it).
    pub fn next_membership_grant(&self, program: &Program) -> Option<NaiveDate> {
        let rules = program.membership.as_ref()?;
        let m = self.membership.as_ref().filter(|m| m.id == rules.id)?;
        m.grants_due(rules, NaiveDate::MAX)
            .first()
            .map(|_| m.next_grant_day())
    }

    /// The downgrade the next review will make if nothing more qualifies before it.
    fn downgrade_ahead(&self, program: &Program) -> Option<Notice> {
        let review_on = self.tier.review_on?;
        let (current, tier) = program.tier(&self.tier.id)?;
        let measure = measure_at(program, self, super::tiers::judged_through(review_on));
        let earned = tier_for(program, measure);
        if earned >= current {
            return None;
        }
        let to = match program.tier_rules.downgrade {
            super::program::Downgrade::OneLevel => current - 1,
            super::program::Downgrade::Recompute => earned,
        };
        Some(Notice::DowngradeScheduled {
            review_on,
            from: tier.id.clone(),
            to: program.tiers[to].id.clone(),
            needed: (tier.threshold - measure).max(0),
        })
    }

    /// The notices due by `now`, and the account that remembers them as sent. A notice whose
    /// subject has passed (the lot is gone, the review happened) is remembered unsent, so that
    /// it no longer holds the account in the index.
    pub fn take_notices(&self, program: &Program, now: DateTime<Utc>) -> (Account, Vec<Notice>) {
        let today = today(program, now);
        let mut account = self.clone();
        let mut sent = Vec::new();
        for (on, notice) in self.notices_due(program) {
            let subject_passed = match &notice {
                Notice::Expiring { last_day, .. } => *last_day < today,
                Notice::DowngradeScheduled { review_on, .. } => *review_on <= today,
                Notice::MembershipRenewal { renews_on } => *renews_on < today,
                Notice::MembershipLapsed { .. } => false,
            };
            if on > today && !subject_passed {
                continue;
            }
            if let (Notice::MembershipLapsed { on }, Some(m)) = (&notice, &mut account.membership) {
                m.lapsed_on = Some(*on);
            }
            account.notified.insert(notice.key());
            if !subject_passed {
                sent.push(notice);
            }
        }
        // Forget notices about dates long gone (their lots and reviews are long settled).
        let horizon = today - Duration::days(NOTICE_MEMORY_DAYS);
        account.notified.retain(|key| {
            key.rsplit(':')
                .next()
                .and_then(|d| d.parse::<NaiveDate>().ok())
                .is_some_and(|d| d >= horizon)
        });
        (account, sent)
    }
}

/// The source of what a job writes.
pub fn job_source(job: &str) -> Source {
    Source {
        platform: Some("job".into()),
        rule: Some(job.to_string()),
        ..Source::default()
    }
}

/// The instant a job run "as of" `date` works at: now when `date` is today, else the end of
/// that day in the program's zone (catching up a missed day, or a date given with `--date`).
pub fn job_instant(program: &Program, date: NaiveDate, now: DateTime<Utc>) -> DateTime<Utc> {
    if today(program, now) == date {
        return now;
    }
    let next = date.succ_opt().unwrap_or(date);
    start_of_day(program.time_zone, next) - Duration::seconds(1)
}
