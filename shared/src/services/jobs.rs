//! The scheduled jobs: `release-pending`, `expire-points`, `tier-reviews`, `notices` (found
//! through the sparse due-date index, so a run costs what is due, not what exists) and
//! `recalculate-tiers` (a full, paged, resumable pass after thresholds change).
//!
//! A run "for a date" works as of that date in the program's zone. It reads the index from the
//! last date the job completed (inclusive, so work added later that day is found) up to the
//! date, so a day the schedule missed is caught up. Every write is conditioned on the account's
//! version and every entry id derives from the job, the date and the member, so running the same
//! job twice, or finishing an interrupted run, has no second effect.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use super::{Contention, ServiceError, Services};
use crate::domain::calendar::local_date;
use crate::domain::schedule::{job_instant, job_source};
use crate::domain::{Account, Change, DueJob, EventContext, Notice, Program};
use crate::envelope::Envelope;
use crate::ports::{Commit, CommitError, OutboxMessage, QueueName};
use crate::store::MAX_COMMIT_ITEMS;

/// Members read per index page.
const PAGE: usize = 100;

/// Splits a group's changes into transactions that fit the store's limit: the items of each
/// change but its books (`items`), and the day's books once per transaction. A change too
/// large alone goes alone (and is refused on its own).
fn transactions<T>(group: Vec<T>, items: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut chunks: Vec<Vec<T>> = Vec::new();
    let mut size = 0;
    for change in group {
        let items = items(&change);
        match chunks.last_mut() {
            Some(chunk) if size + items <= MAX_COMMIT_ITEMS => chunk.push(change),
            _ => {
                size = 1;
                chunks.push(vec![change]);
            }
        }
        size += items;
    }
    chunks
}

/// Members whose changes by a job are committed together (on DynamoDB: one transaction of
/// about 2 items each and the day's books once; the store's limit is 100 items).
const GROUP: usize = 25;
/// How far back a job with no saved progress, or a long gap, reads the index.
const MAX_CATCH_UP_DAYS: i64 = 400;
/// The saved progress of `recalculate-tiers` (a member cursor while a pass is under way).
const RECALCULATE: &str = "recalculate-tiers";
/// How long a member failing on a day holds a due-date job's progress there (every run goes
/// over the day again); after that the member is given up and named as such, as the campaign
/// tick does, so that one unreadable account does not pin the job for ever.
const FAILED_DAY_HELD_DAYS: i64 = 7;

/// Failing members a due-date job keeps with the date they first failed, at most.
const MAX_HELD_MEMBERS: usize = 1_000;

/// Where a due-date job keeps the members that failed on each day, each with the date it first
/// failed there: beside its progress, under a name no job has.
fn held_days_key(job: Job) -> String {
    format!("held-days/{}", job.name())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Job {
    ReleasePending,
    ExpirePoints,
    TierReviews,
    Notices,
    RecalculateTiers,
    CampaignTick,
}

/// A run's metrics: members looked at, changed and failed, its time, and whether it failed.
fn count_run(
    job: Job,
    program: &str,
    started: DateTime<Utc>,
    finished: DateTime<Utc>,
    result: &Result<JobReport, ServiceError>,
) {
    use crate::telemetry::metrics;
    let labels = [("program", program), ("job", job.name())];
    let failed = match result {
        Ok(report) => {
            metrics::add(metrics::JOB_MEMBERS, &labels, report.members as u64);
            metrics::add(metrics::JOB_CHANGED, &labels, report.changed as u64);
            metrics::add(metrics::JOB_FAILED, &labels, report.failed as u64);
            report.failed > 0
        }
        Err(_) => true,
    };
    metrics::add(metrics::JOB_RUN_FAILED, &labels, u64::from(failed));
    let took = (finished - started).to_std().unwrap_or_default();
    metrics::observe(metrics::JOB_DURATION, &labels, took);
}

/// Where a job's last run is kept: beside its progress, under a name no job has.
fn last_run_key(job: Job) -> String {
    format!("last-run/{}", job.name())
}

impl Job {
    pub const NAMES: &'static [&'static str] = &[
        "release-pending",
        "expire-points",
        "tier-reviews",
        "notices",
        "recalculate-tiers",
        "campaign-tick",
    ];

    pub fn parse(name: &str) -> Option<Job> {
        Some(match name {
            "release-pending" => Job::ReleasePending,
            "expire-points" => Job::ExpirePoints,
            "tier-reviews" => Job::TierReviews,
            "notices" => Job::Notices,
            "recalculate-tiers" => Job::RecalculateTiers,
            "campaign-tick" => Job::CampaignTick,
            _ => return None,
        })
    }

    /// The jobs that read the due-date index.
    pub const DUE_DATE_JOBS: [Job; 4] = [
        Job::ReleasePending,
        Job::ExpirePoints,
        Job::TierReviews,
        Job::Notices,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Job::ReleasePending => "release-pending",
            Job::ExpirePoints => "expire-points",
            Job::TierReviews => "tier-reviews",
            Job::Notices => "notices",
            Job::RecalculateTiers => RECALCULATE,
            Job::CampaignTick => super::campaign_tick::CAMPAIGN_TICK,
        }
    }

    fn due(self) -> Option<DueJob> {
        match self {
            Job::ReleasePending => Some(DueJob::Release),
            Job::ExpirePoints => Some(DueJob::Expire),
            Job::TierReviews => Some(DueJob::Review),
            Job::Notices => Some(DueJob::Notice),
            Job::RecalculateTiers | Job::CampaignTick => None,
        }
    }
}

/// A scheduled invocation's input (`{"job": ...}`, optionally with `"program"` and `"date"`).
/// Unknown fields are refused, so a typo in a schedule's input fails loudly instead of running
/// the wrong job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub job: String,
    #[serde(default)]
    pub program: Option<String>,
    /// As if today were this date in each program's zone (catching up by hand).
    #[serde(default)]
    pub date: Option<NaiveDate>,
    /// `date` may be after today (see [`JobDate::Ahead`]).
    #[serde(default)]
    pub ahead: bool,
}

impl Schedule {
    pub fn job_date(&self) -> JobDate {
        JobDate::of(self.date, self.ahead)
    }
}

/// The day a job runs as of: the end of it, in each program's zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JobDate {
    #[default]
    Today,
    /// Today or an earlier day (catching up by hand); a later one is refused.
    On(NaiveDate),
    /// Any day, a later one too, named as such: the run expires and releases points as if
    /// that day had come, for good (trying a program out). A slip of the keyboard must not.
    Ahead(NaiveDate),
}

impl JobDate {
    pub fn of(date: Option<NaiveDate>, ahead: bool) -> JobDate {
        match (date, ahead) {
            (None, _) => JobDate::Today,
            (Some(d), false) => JobDate::On(d),
            (Some(d), true) => JobDate::Ahead(d),
        }
    }

    /// The date, or why it is refused.
    fn resolve(self, program: &Program, now: DateTime<Utc>) -> Result<NaiveDate, ServiceError> {
        let today = local_date(program.time_zone, now);
        match self {
            JobDate::Today => Ok(today),
            JobDate::Ahead(date) => Ok(date),
            JobDate::On(date) if date <= today => Ok(date),
            JobDate::On(date) => Err(ServiceError::invalid(
                "invalid-date",
                format!(
                    "date {date} is after today ({today} in {}); a run as of a later day \
                     expires and releases points for good: say so (--ahead, \"ahead\": true)",
                    program.time_zone
                ),
            )),
        }
    }
}

impl From<Option<NaiveDate>> for JobDate {
    fn from(date: Option<NaiveDate>) -> JobDate {
        JobDate::of(date, false)
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JobReport {
    pub job: String,
    pub program: String,
    /// The dates of the index read (from the last completed run to the date of this one).
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    /// Members read from the index (or, for a full pass, from the program).
    pub members: usize,
    /// Members whose account was written.
    pub changed: usize,
    /// Ledger entries written.
    pub entries: usize,
    /// Messages sent to the notify queue.
    pub notices: usize,
    /// Events sent to the earn queue (`campaign-tick`: birthdays and anniversaries).
    pub sent: usize,
    /// Members that failed (each retried by the next run), and the first few with their cause.
    pub failed: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<JobFailure>,
    /// False when the run stopped at its deadline; the next run resumes where it stopped.
    pub complete: bool,
    /// Why the whole run failed for this program (the others ran regardless).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The programs whose run failed as a whole, with their errors, if any: a scheduled invocation
/// fails with this after every program has run, so that the schedule retries it.
pub fn failed_programs(reports: &[JobReport]) -> Option<String> {
    let failed: Vec<String> = reports
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.program)))
        .collect();
    (!failed.is_empty()).then(|| failed.join("; "))
}

/// A member a run could not handle, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobFailure {
    pub member: String,
    pub error: String,
}

/// How many failures a report names (all are counted and logged).
const FAILURES_NAMED: usize = 20;

impl JobReport {
    fn add(&mut self, outcome: &MemberOutcome) {
        self.changed += usize::from(outcome.changed);
        self.entries += outcome.entries;
        self.notices += outcome.notices;
    }

    /// A member a job stops trying again: a failure no later run retries.
    pub(super) fn give_up(&mut self, member: &str, reason: &str) {
        tracing::error!(job = self.job, program = self.program, member = %crate::telemetry::member_ref(member), reason = %crate::telemetry::redact(reason), "member given up; no run retries it");
        self.name_failure(member, reason);
    }

    pub(super) fn record_failure(&mut self, member: &str, error: &ServiceError) {
        self.failure_retried(member, &error.to_string());
    }

    fn failure_retried(&mut self, member: &str, error: &str) {
        tracing::error!(job = self.job, program = self.program, member = %crate::telemetry::member_ref(member), error = %crate::telemetry::redact(error), "member failed; the next run retries it");
        self.name_failure(member, error);
    }

    fn name_failure(&mut self, member: &str, error: &str) {
        self.failed += 1;
        if self.failures.len() < FAILURES_NAMED {
            self.failures.push(JobFailure {
                member: member.to_string(),
                error: error.to_string(),
            });
        }
    }
}

/// When a run must stop (a Lambda's remaining time, less a margin); `None` runs to the end.
pub type Deadline = Option<std::time::Instant>;

/// How long before a Lambda's deadline a job stops: time to save its progress and answer.
const DEADLINE_MARGIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The deadline of a job run by a Lambda invocation whose deadline is `deadline_ms` (epoch
/// milliseconds, as the runtime gives it), less a margin.
pub fn deadline_of(deadline_ms: u64) -> Deadline {
    let now_ms = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    let remaining = std::time::Duration::from_millis(deadline_ms.saturating_sub(now_ms));
    Some(std::time::Instant::now() + remaining.saturating_sub(DEADLINE_MARGIN))
}

pub(super) fn past(deadline: Deadline) -> bool {
    deadline.is_some_and(|d| std::time::Instant::now() >= d)
}

/// One program's run of a due-date job.
struct DueRun<'a> {
    job: Job,
    due: DueJob,
    program: &'a Program,
    date: NaiveDate,
    deadline: Deadline,
    /// The job's saved progress when the run began.
    saved: Option<String>,
}

/// What happened to one member.
#[derive(Debug, Default)]
struct MemberOutcome {
    changed: bool,
    entries: usize,
    notices: usize,
}

/// Whether a member's settle may have left work due: it wrote as many entries as one settle
/// writes at most (a walk-in till's account with hundreds of purchases maturing on one day).
/// The member is taken again in the same run until its settle writes less, rather than by the
/// next runs, 50 releases each (a scheduled run a day would take weeks); the run's deadline
/// still bounds it.
fn settle_was_cut(job: Job, outcome: &MemberOutcome) -> bool {
    matches!(job, Job::ReleasePending | Job::ExpirePoints)
        && outcome.entries >= crate::domain::account::SETTLE_ENTRIES_MAX
}

impl Services {
    /// Runs a job for one program, as of `date` (today in the program's zone when `None`).
    /// `progress` is called with the number of members handled so far.
    pub async fn run_job(
        &self,
        job: Job,
        program: &str,
        date: impl Into<JobDate>,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<JobReport, ServiceError> {
        self.run_job_until(job, program, date.into(), None, progress)
            .await
    }

    /// Runs a job for one program, stopping cleanly at `deadline` (the report says so, and the
    /// saved progress makes the next run resume).
    pub async fn run_job_until(
        &self,
        job: Job,
        program: &str,
        date: JobDate,
        deadline: Deadline,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<JobReport, ServiceError> {
        let started = self.clock.now();
        let result = self
            .run_job_once(job, program, date, deadline, progress)
            .await;
        self.record_run(job, program, started, &result).await;
        result
    }

    /// Keeps the last run of a job beside its progress, for operators (`GET .../jobs`). Best
    /// effort: a run that cannot be recorded has still done its work.
    async fn record_run(
        &self,
        job: Job,
        program: &str,
        started: DateTime<Utc>,
        result: &Result<JobReport, ServiceError>,
    ) {
        let outcome = match result {
            Ok(report) => json!({"report": report}),
            Err(ServiceError::NotFound { .. }) => return,
            Err(e) => json!({"error": e.to_string()}),
        };
        count_run(job, program, started, self.clock.now(), result);
        let mut run = json!({
            "job": job.name(),
            "started_at": started,
            "finished_at": self.clock.now(),
        });
        if let (Some(run), Some(outcome)) = (run.as_object_mut(), outcome.as_object()) {
            run.extend(outcome.clone());
        }
        let saved = self
            .store
            .save_job_progress(program, &last_run_key(job), Some(&run.to_string()))
            .await;
        if let Err(e) = saved {
            tracing::warn!(job = job.name(), program, error = %e, "the job's last run was not recorded");
        }
    }

    /// `GET /v1/programs/{program}/jobs`: the last run of each job.
    pub async fn last_job_runs(&self, program: &str) -> Result<Value, ServiceError> {
        let program = self.program(program).await?;
        let mut runs = Vec::new();
        for name in Job::NAMES {
            let Some(job) = Job::parse(name) else {
                continue;
            };
            let last = self
                .store
                .job_progress(&program.id, &last_run_key(job))
                .await?;
            let last = match last {
                Some(text) => serde_json::from_str::<Value>(&text).map_err(|e| {
                    ServiceError::Internal(format!("the last run of {name} is corrupt: {e}"))
                })?,
                None => json!({"job": name}),
            };
            runs.push(last);
        }
        Ok(json!({"program": program.id, "jobs": runs}))
    }

    async fn run_job_once(
        &self,
        job: Job,
        program: &str,
        date: JobDate,
        deadline: Deadline,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<JobReport, ServiceError> {
        let (program, saved) = self.program_and_progress(job, program).await?;
        let now = self.clock.now();
        let date = date.resolve(&program, now)?;
        let mut report = JobReport {
            job: job.name().to_string(),
            program: program.id.clone(),
            complete: true,
            ..JobReport::default()
        };
        match (job, job.due()) {
            (_, Some(due)) => {
                let run = DueRun {
                    job,
                    due,
                    program: &program,
                    date,
                    deadline,
                    saved,
                };
                self.run_due_job(run, &mut report, progress).await?
            }
            (Job::CampaignTick, None) => {
                let tick = super::campaign_tick::Tick {
                    date,
                    saved,
                    deadline,
                };
                self.campaign_tick(&program, tick, &mut report, progress)
                    .await?
            }
            (_, None) => {
                self.recalculate_tiers(&program, date, deadline, &mut report, progress)
                    .await?
            }
        }
        tracing::info!(
            job = report.job,
            program = report.program,
            members = report.members,
            changed = report.changed,
            entries = report.entries,
            notices = report.notices,
            sent = report.sent,
            failed = report.failed,
            complete = report.complete,
            "job finished"
        );
        Ok(report)
    }

    /// The program, with what the job reads before anything else: its saved progress (the
    /// due-date jobs and the campaign tick) and the program's campaigns (the tick). When the
    /// program is not cached (a cold start), all of it in one round trip.
    async fn program_and_progress(
        &self,
        job: Job,
        program: &str,
    ) -> Result<(std::sync::Arc<Program>, Option<String>), ServiceError> {
        let tick = job == Job::CampaignTick;
        let parts = crate::ports::HeadParts {
            campaigns: tick,
            job: (job.due().is_some() || tick).then(|| job.name()),
        };
        let Some(found) = self.cached(program) else {
            return self.program_head(program, parts).await;
        };
        let progress = async {
            match parts.job {
                Some(name) => self.store.job_progress(program, name).await,
                None => Ok(None),
            }
        };
        let campaigns = async {
            if tick {
                // Only warms the cache, which the tick reads; its failure shows there.
                let _ = self.campaign_list(program).await;
            }
        };
        let (saved, ()) = futures_util::future::join(progress, campaigns).await;
        Ok((found, saved?))
    }

    /// Runs a job for every program (the schedules), or for the one named. A program that
    /// fails is reported (`error`) and never stops the others; a run that reaches `deadline`
    /// leaves the remaining programs for the next one.
    pub async fn run_job_everywhere(
        &self,
        job: Job,
        program: Option<&str>,
        date: impl Into<JobDate>,
        deadline: Deadline,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<Vec<JobReport>, ServiceError> {
        let date = date.into();
        let mut programs = match program {
            Some(p) => vec![p.to_string()],
            None => self.store.program_ids().await?,
        };
        // The programs listed first could use up the time of every run: each run starts with
        // another, so that none waits for ever. The reports come back in the list's order.
        let first = turn(self.clock.now(), programs.len());
        programs.rotate_left(first);
        let mut reports = Vec::with_capacity(programs.len());
        for program in programs {
            if past(deadline) {
                reports.push(JobReport {
                    job: job.name().to_string(),
                    program,
                    complete: false,
                    ..JobReport::default()
                });
                continue;
            }
            let report = match self
                .run_job_until(job, &program, date, deadline, progress)
                .await
            {
                Ok(report) => report,
                Err(e) => {
                    // A date refused is refused again; anything else the next run tries again.
                    let retried = !matches!(e, ServiceError::Invalid { .. });
                    tracing::error!(job = job.name(), program, retried, error = %crate::telemetry::redact(&e.to_string()), "job failed for this program");
                    JobReport {
                        job: job.name().to_string(),
                        program,
                        error: Some(e.to_string()),
                        ..JobReport::default()
                    }
                }
            };
            reports.push(report);
        }
        reports.rotate_right(first);
        Ok(reports)
    }

    /// Works through the due-date index from the last completed date to `date`, a page at a
    /// time. A member that fails is reported and the run goes on; the saved progress stops at
    /// the first day with a failure (or where the deadline stopped the run), so the next run
    /// starts there again and everything after it is redone harmlessly (each change is
    /// conditional on the account and a second settle finds nothing to do).
    async fn run_due_job(
        &self,
        run: DueRun<'_>,
        report: &mut JobReport,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<(), ServiceError> {
        let DueRun {
            job,
            due,
            program,
            date,
            deadline,
            saved,
        } = run;
        let at = job_instant(program, date, self.clock.now());
        let mut last = saved.and_then(|p| p.parse::<NaiveDate>().ok());
        // From the last completed date (inclusive: work added later that day), or, on a first
        // run, as far back as anything can be due.
        let earliest = date - Duration::days(MAX_CATCH_UP_DAYS);
        let from = match last {
            Some(last) if last <= date => last.max(earliest),
            Some(_) => date,
            None => earliest,
        };
        report.from = Some(from);
        report.to = Some(date);
        // A run as of a later date than today does its days, but saves no progress past
        // today: the scheduled runs must still go over the days from today on.
        let today = local_date(program.time_zone, self.clock.now());
        let mut failed_on: Option<NaiveDate> = None;
        let mut failing: BTreeMap<NaiveDate, Vec<(String, String)>> = BTreeMap::new();
        let mut day = from;
        // Notices go member by member (each may owe rewards first); the other jobs commit a
        // group's changes together, gathered across the index's shards and pages.
        let group = if job == Job::Notices { 1 } else { GROUP };
        // Members whose settle was cut at its cap, waiting for another turn in this run.
        let mut again: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        'days: while day <= date {
            // Checked before each day's reads too: a first run reads up to 400 days, most of
            // them empty, and must not run past its deadline on those alone.
            if past(deadline) {
                report.complete = false;
                break 'days;
            }
            let before = report.members;
            let mut shards = 0..self.store.due_shards();
            let mut shard = shards.next();
            let mut cursor: Option<String> = None;
            let mut waiting: Vec<String> = Vec::new();
            loop {
                while waiting.len() < group {
                    let Some(current) = shard else { break };
                    let page = self
                        .store
                        .due_members(&program.id, due, day, current, cursor.as_deref(), PAGE)
                        .await?;
                    waiting.extend(page.members);
                    cursor = page.next_cursor;
                    if cursor.is_none() {
                        shard = shards.next();
                    }
                }
                if waiting.is_empty() {
                    break;
                }
                if past(deadline) {
                    report.complete = false;
                    break 'days;
                }
                let members: Vec<String> = waiting.drain(..waiting.len().min(group)).collect();
                let outcomes = match job {
                    Job::Notices => {
                        let member = &members[0];
                        vec![self.notices_member(program, member, date, at, report).await]
                    }
                    _ => self.job_members(job, program, &members, date, at).await,
                };
                for (member, outcome) in members.iter().zip(outcomes) {
                    // A member taken again counts once, and changed once.
                    let repeated = again.remove(member);
                    if !repeated {
                        report.members += 1;
                    }
                    match outcome {
                        Ok(outcome) => {
                            report.add(&MemberOutcome {
                                changed: outcome.changed && !repeated,
                                ..outcome
                            });
                            if settle_was_cut(job, &outcome) {
                                again.insert(member.clone());
                                waiting.push(member.clone());
                            }
                        }
                        Err(e) => {
                            let failure = (member.clone(), e.to_string());
                            failing.entry(day).or_default().push(failure);
                            failed_on.get_or_insert(day);
                        }
                    }
                    progress(report.members);
                }
            }
            // A day's work is saved as it is done (a day without members costs no write).
            if report.members > before {
                let done = failed_on.unwrap_or(day).min(today);
                self.advance_progress(&program.id, job, &mut last, done)
                    .await?;
            }
            day = day.succ_opt().unwrap_or(NaiveDate::MAX);
        }
        let failed_on = self
            .hold_failed_days(&program.id, job, failing, today, report)
            .await?;
        let resume = match (failed_on, report.complete) {
            (Some(failed), _) => failed,
            (None, false) => day,
            (None, true) => date,
        };
        self.advance_progress(&program.id, job, &mut last, resume.min(today))
            .await
    }

    /// Names this run's failures and returns the first day that still holds the job's
    /// progress: a member failing on a day for [`FAILED_DAY_HELD_DAYS`] since its first
    /// failure there is given up (named as such), and a day whose failing members are all given
    /// up holds nothing. What failed is read and saved only when a member failed, so a healthy
    /// run costs nothing more.
    async fn hold_failed_days(
        &self,
        program: &str,
        job: Job,
        failing: BTreeMap<NaiveDate, Vec<(String, String)>>,
        today: NaiveDate,
        report: &mut JobReport,
    ) -> Result<Option<NaiveDate>, ServiceError> {
        if failing.is_empty() {
            return Ok(None);
        }
        let key = held_days_key(job);
        let saved = self.store.job_progress(program, &key).await?;
        // Each failing member of each day, with the date it first failed there. Unreadable
        // text (a hand edit) is as if nothing had failed before.
        let before: BTreeMap<NaiveDate, BTreeMap<String, NaiveDate>> = saved
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        let held_since = today - Duration::days(FAILED_DAY_HELD_DAYS);
        // Only what fails now is kept: a member that went through is forgotten. A member is
        // given up on its own failures: one failing for the first time on a day others have
        // failed on for a week holds the day.
        let mut held: BTreeMap<NaiveDate, BTreeMap<String, NaiveDate>> = BTreeMap::new();
        let mut kept = 0;
        let mut first_held = None;
        for (day, failures) in failing {
            for (member, error) in failures {
                let since = before
                    .get(&day)
                    .and_then(|members| members.get(&member))
                    .copied()
                    .unwrap_or(today)
                    .min(today);
                if since < held_since {
                    let reason = format!(
                        "{error}; due on {day} and failing since {since}: given up (repair \
                         the account, then run the job as of {day})"
                    );
                    report.give_up(&member, &reason);
                } else {
                    first_held.get_or_insert(day);
                    report.failure_retried(&member, &error);
                }
                // (bounded: past it, a failure is retried for as long as it fails)
                if kept < MAX_HELD_MEMBERS {
                    held.entry(day).or_default().insert(member, since);
                    kept += 1;
                }
            }
        }
        let now = serde_json::to_string(&held).ok();
        if now != saved {
            self.store
                .save_job_progress(program, &key, now.as_deref())
                .await?;
        }
        Ok(first_held)
    }

    /// Saves `to` as the job's progress if it is later than what is saved: progress only moves
    /// forward, so a run for an earlier date leaves it where it was.
    async fn advance_progress(
        &self,
        program: &str,
        job: Job,
        last: &mut Option<NaiveDate>,
        to: NaiveDate,
    ) -> Result<(), ServiceError> {
        if last.is_none_or(|last| last < to) {
            self.store
                .save_job_progress(program, job.name(), Some(&to.to_string()))
                .await?;
            *last = Some(to);
        }
        Ok(())
    }

    /// Every member indexed as due for `due` on `date`: each shard, a page at a time.
    pub(crate) async fn members_due_on(
        &self,
        program: &str,
        due: DueJob,
        date: NaiveDate,
    ) -> Result<Vec<String>, ServiceError> {
        // The shards are independent: they are read together, each page after page, and
        // their members listed in shard order.
        let shards = futures_util::future::try_join_all(
            (0..self.store.due_shards()).map(|shard| self.shard_due_on(program, due, date, shard)),
        )
        .await?;
        Ok(shards.into_iter().flatten().collect())
    }

    /// Every member of one shard of the due-date index whose `due` date is `date`.
    async fn shard_due_on(
        &self,
        program: &str,
        due: DueJob,
        date: NaiveDate,
        shard: u32,
    ) -> Result<Vec<String>, ServiceError> {
        let mut members = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .store
                .due_members(program, due, date, shard, cursor.as_deref(), PAGE)
                .await?;
            members.extend(page.members);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(members),
            }
        }
    }

    /// Applies one job to one member: load, decide, send notices, commit with the version.
    async fn job_member(
        &self,
        job: Job,
        program: &Program,
        member: &str,
        date: NaiveDate,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<MemberOutcome, ServiceError> {
        let mut contention = Contention::new();
        loop {
            let Some((commit, outcome)) = self.job_change(job, program, member, date, at).await?
            else {
                return Ok(MemberOutcome::default());
            };
            match self.commit(commit).await {
                Ok(()) => return Ok(outcome),
                // No coupon is revoked here; a conflict of any kind means reload and retry.
                Err(
                    CommitError::VersionConflict
                    | CommitError::CouponConsumed
                    | CommitError::OverQuota,
                ) => {}
                // Job entries are never duplicates of an event's; a clash means it is done.
                Err(CommitError::Duplicate) => return Ok(MemberOutcome::default()),
                Err(CommitError::Store(e)) => return Err(e.into()),
            }
            contention
                .again(|| {
                    format!(
                        "member {} during {}",
                        crate::telemetry::member_ref(member),
                        job.name()
                    )
                })
                .await?;
        }
    }

    /// The notices job for one member: the membership's monthly rewards first (months that
    /// began with the benefits are owed even when the lapse is written in the same run), then
    /// the notices. The rewards count in the report even when the notices then fail.
    async fn notices_member(
        &self,
        program: &Program,
        member: &str,
        date: NaiveDate,
        at: chrono::DateTime<chrono::Utc>,
        report: &mut JobReport,
    ) -> Result<MemberOutcome, ServiceError> {
        let mut granted = 0;
        let notices = match self
            .grant_membership_rewards(program, member, date, at, &mut granted)
            .await
        {
            Ok(()) => {
                self.job_member(Job::Notices, program, member, date, at)
                    .await
            }
            Err(e) => Err(e),
        };
        // One member changed once, however many writes it took; what was granted before a
        // failure was written, and counts.
        match notices {
            Ok(mut outcome) => {
                outcome.changed |= granted > 0;
                outcome.entries += granted;
                Ok(outcome)
            }
            Err(e) => {
                report.changed += usize::from(granted > 0);
                report.entries += granted;
                Err(e)
            }
        }
    }

    /// Applies a job to a group of members, their changes committed together where the store
    /// can (one transaction, and the day's books counted in one write instead of one per
    /// member). If that fails, each member is reloaded and committed on its own, so one member
    /// changed meanwhile, or one that cannot be read, costs only itself.
    async fn job_members(
        &self,
        job: Job,
        program: &Program,
        members: &[String],
        date: NaiveDate,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Vec<Result<MemberOutcome, ServiceError>> {
        let mut outcomes: Vec<Option<Result<MemberOutcome, ServiceError>>> =
            std::iter::repeat_with(|| None)
                .take(members.len())
                .collect();
        let mut group: Vec<(usize, Commit, MemberOutcome)> = Vec::new();
        for (i, member) in members.iter().enumerate() {
            match self.job_change(job, program, member, date, at).await {
                Ok(Some((commit, outcome))) => group.push((i, commit, outcome)),
                Ok(None) => outcomes[i] = Some(Ok(MemberOutcome::default())),
                Err(e) => outcomes[i] = Some(Err(e)),
            }
        }
        let items = |(_, commit, _): &(usize, Commit, MemberOutcome)| {
            commit.items() - usize::from(!commit.books.is_empty())
        };
        // A store that cannot commit a group as one (SQLite) commits each member alone, so
        // that a conflict of one leaves the others' commits counted as written.
        let chunks = if self.store.commits_together_atomically() {
            transactions(group, items)
        } else {
            group.into_iter().map(|change| vec![change]).collect()
        };
        for chunk in chunks {
            let (commits, changed): (Vec<Commit>, Vec<(usize, MemberOutcome)>) =
                chunk.into_iter().map(|(i, c, o)| (c, (i, o))).unzip();
            if self.commit_together(commits).await.is_ok() {
                for (i, outcome) in changed {
                    outcomes[i] = Some(Ok(outcome));
                }
                continue;
            }
            for (i, _) in changed {
                outcomes[i] = Some(self.job_member(job, program, &members[i], date, at).await);
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Ok(MemberOutcome::default())))
            .collect()
    }

    /// What a job changes for one member, as of its account now, with the commit that writes
    /// it: `None` when there is nothing to do.
    async fn job_change(
        &self,
        job: Job,
        program: &Program,
        member: &str,
        date: NaiveDate,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<(Commit, MemberOutcome)>, ServiceError> {
        let state = self.store.load_member(&program.id, member, &[]).await?;
        let Some(account) = state.account else {
            return Ok(None);
        };
        // Merged away or being erased: nothing more is written to it (a tier change would
        // send a notice about an erased member).
        if !account.is_member() {
            return Ok(None);
        }
        // The account's version is part of the entries' ids: a second change by the same
        // job on the same day (points that matured later that day) is a new change, never
        // taken for a repeat of the first. The account's version guards the commit itself.
        let event_id = format!("job:{}:{date}:a{}", job.name(), account.version);
        let ctx = EventContext::new(event_id, at, at).with_source(job_source(job.name()));
        let (change, notices) = match job {
            Job::ReleasePending | Job::ExpirePoints => (account.settle(program, &ctx), vec![]),
            Job::TierReviews => (account.review_tier(program, &ctx), vec![]),
            Job::Notices => {
                let (after, notices) = account.take_notices(program, at);
                (Change::unchanged(after), notices)
            }
            Job::RecalculateTiers => (account.check_tier(program, &ctx), vec![]),
            // The tick works through the earn queue, never member by member here.
            Job::CampaignTick => (Change::unchanged(account.clone()), vec![]),
        };
        if change.account == account && change.entries.is_empty() {
            return Ok(None);
        }
        // Notices and a tier change are written with the change that remembers them, and
        // relayed afterwards, each with a stable id the brand's consumers can deduplicate on.
        let mut outbox: Vec<OutboxMessage> = notices
            .iter()
            .map(|notice| notice_message(program, &account, notice, at))
            .collect();
        if change.account.tier.id != account.tier.id {
            let to = &change.account.tier;
            let data = json!({"from": account.tier.id, "to": to.id, "review_date": to.review_on});
            // A catch-up over two missed reviews may move a member twice in one run.
            let id = format!("tier-changed-{}-{member}-{date}-{}", job.name(), to.id);
            outbox.push(notice(program, member, "tier.changed", id, at, data));
        }
        let outcome = MemberOutcome {
            changed: true,
            entries: change.entries.len(),
            notices: notices.len(),
        };
        let commit = Commit::new(program, member, Some(&account), change, at).and_send(outbox);
        Ok(Some((commit, outcome)))
    }

    /// Checks every member's tier against the current thresholds, a page at a time. The
    /// cursor is saved after each page, so an interrupted pass resumes where it stopped.
    /// Upgrades apply at once; a member now below their tier keeps it until the review, as for
    /// any downgrade.
    async fn recalculate_tiers(
        &self,
        program: &Program,
        date: NaiveDate,
        deadline: Deadline,
        report: &mut JobReport,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<(), ServiceError> {
        let at = job_instant(program, date, self.clock.now());
        let mut cursor = self.store.job_progress(&program.id, RECALCULATE).await?;
        loop {
            // Between pages too: a page may come back empty, only moving the cursor on (a
            // scan of a table mostly of other programs' items).
            if past(deadline) {
                report.complete = false;
                return Ok(());
            }
            let page = self
                .store
                .members_page(&program.id, cursor.as_deref(), PAGE)
                .await?;
            for member in &page.members {
                // The saved cursor is this page's start: a stopped pass redoes the page.
                if past(deadline) {
                    report.complete = false;
                    return Ok(());
                }
                report.members += 1;
                match self
                    .job_member(Job::RecalculateTiers, program, member, date, at)
                    .await
                {
                    Ok(outcome) => {
                        report.changed += usize::from(outcome.changed);
                        report.entries += outcome.entries;
                    }
                    // Named in the report, and retried by the tier queue (its backoff, then its
                    // dead letters): no schedule runs this pass again.
                    Err(e) => {
                        report.record_failure(member, &e);
                        self.retry_tier_check(program, member, date, at).await;
                    }
                }
                progress(report.members);
            }
            self.store
                .save_job_progress(&program.id, RECALCULATE, page.next_cursor.as_deref())
                .await?;
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(()),
            }
        }
    }
}

impl Services {
    /// A `tier.check` for a member a pass failed on, so that the tier queue tries it again. A
    /// send that fails is logged: the member is named in the report either way.
    async fn retry_tier_check(
        &self,
        program: &Program,
        member: &str,
        date: NaiveDate,
        at: chrono::DateTime<chrono::Utc>,
    ) {
        let day = date.to_string();
        let id = crate::ids::derived_event_id("tier-check-recalculate", &[day.as_str(), member]);
        let check = Envelope::made(
            &program.id,
            crate::envelope::TIER_CHECK,
            id,
            member,
            at,
            json!({}),
        );
        if let Err(e) = self.send_to(QueueName::Tier, &check).await {
            tracing::warn!(program = %program.id, member = %crate::telemetry::member_ref(member), error = %e, "cannot queue a tier check for a member the pass failed on");
        }
    }
}

/// The message of a notice, with an id stable per member and notice.
fn notice_message(
    program: &Program,
    account: &Account,
    notice: &Notice,
    at: chrono::DateTime<chrono::Utc>,
) -> OutboxMessage {
    let data = match notice {
        Notice::Expiring { last_day, points } => json!({
            "points": points, "last_day": last_day,
        }),
        Notice::DowngradeScheduled {
            review_on,
            from,
            to,
            needed,
        } => json!({
            "review_date": review_on, "from": from, "to": to, "needed": needed,
        }),
        Notice::MembershipRenewal { renews_on } => json!({
            "membership": account.membership.as_ref().map(|m| &m.id), "renews_on": renews_on,
            "price": program.membership.as_ref().map(|m| program.currency.format_amount(m.price_minor)),
        }),
        Notice::MembershipLapsed { on } => json!({
            "membership": account.membership.as_ref().map(|m| &m.id), "lapsed_on": on,
        }),
    };
    let id = format!("notice-{}-{}", account.member, notice.key());
    self::notice(program, &account.member, notice.kind(), id, at, data)
}

/// A message for the notify queue.
fn notice(
    program: &Program,
    member: &str,
    kind: &str,
    id: String,
    at: chrono::DateTime<chrono::Utc>,
    data: serde_json::Value,
) -> OutboxMessage {
    let message = Envelope::made(&program.id, kind, id, member, at, data);
    OutboxMessage::new(QueueName::Notify, message)
}

/// Which of `n` programs a run at `now` starts with: the hours since the epoch plus the minute
/// of the hour, so that hourly schedules (at a fixed minute) start one further each hour, and
/// runs every minute (`loyalty serve`) one further each minute.
fn turn(now: DateTime<Utc>, n: usize) -> usize {
    let minutes = u64::try_from(now.timestamp()).unwrap_or(0) / 60;
    let n = u64::try_from(n.max(1)).unwrap_or(1);
    usize::try_from((minutes / 60 + minutes % 60) % n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hourly_runs_start_with_every_program_in_turn() {
        // GIVEN runs at 5 past every hour
        let start = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 12, 5, 0, 5, 0).unwrap();
        for n in [2, 3, 4, 5, 6, 10, 12, 30, 60, 61, 122] {
            // WHEN n programs are listed
            let firsts: std::collections::BTreeSet<usize> = (0..n)
                .map(|h| turn(start + Duration::hours(h as i64), n))
                .collect();
            // THEN each program is first in one of n runs in a row
            assert_eq!(firsts.len(), n, "{n} programs: {firsts:?}");
        }
    }

    #[test]
    fn changes_are_split_into_transactions_within_the_store_s_limit() {
        // GIVEN 40 changes of 3 items each (the day's books counted once per transaction)
        let changes: Vec<usize> = vec![3; 40];
        // WHEN they are split
        let chunks = transactions(changes, |items| *items);
        // THEN 33 fit the first transaction (1 + 33 x 3 = 100) and the rest the second
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), vec![33, 7]);
    }

    #[test]
    fn a_change_too_large_for_a_transaction_goes_alone() {
        // GIVEN a small change, one of 150 items, and another small one
        let chunks = transactions(vec![2, 150, 2], |items| *items);
        // THEN the large one is a transaction of its own, between the others
        assert_eq!(chunks, vec![vec![2], vec![150], vec![2]]);
    }
}
