//! `campaign-tick`: the scheduled pass that pays yearly days and assigns broadcast audiences.
//!
//! - The program's own `birthday` and `anniversary` actions go to the members whose day it is,
//!   found through the yearly-day index (never a scan): an `engagement.recorded` per member and
//!   year, with an id fixed by both, so a second tick (or the app reporting the same birthday)
//!   pays nothing more; the action's yearly limit caps every other path.
//! - Broadcast campaigns running now assign their audience (intent to treat: the report's
//!   denominators are the whole audience) and send grants. A birthday campaign reads the
//!   birthday index for the days of its window; any other broadcast campaign makes one paged,
//!   resumable pass over the program's members.
//!
//! Days are caught up from the last completed tick (inclusive), as the other jobs do, however
//! many were missed: a birthday paid late is better than one skipped for good. A gap of more
//! than [`MAX_TICK_CATCH_UP_DAYS`] visits every calendar day once, which is all it can owe.

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use futures_util::StreamExt;
use serde_json::json;

use super::campaigns::Assignee;
use super::jobs::{past, Deadline, JobReport};
use super::{ServiceError, Services};
use crate::campaigns::{Campaign, CampaignKind, CampaignStatus};
use crate::domain::calendar::start_of_day;
use crate::domain::schedule::{job_instant, yearly_index_dates};
use crate::domain::{Account, DueJob, Program};
use crate::envelope::{Envelope, ENVELOPE_VERSION};
use crate::ports::QueueName;

/// The job's name, and the key of its saved progress (the last date completed).
pub const CAMPAIGN_TICK: &str = "campaign-tick";
/// How far back a tick catches up missed days: a year covers every yearly day.
pub const MAX_TICK_CATCH_UP_DAYS: i64 = 366;
/// Members read per page of a full pass.
const PAGE: usize = 100;
/// The saved progress of a broadcast campaign's pass once it has covered every member.
const PASS_DONE: &str = "done";
/// How long a day on which a member failed is gone over again by later ticks; after that the
/// member stays named among the failures of the tick that gave up on it.
const FAILED_DAY_RETRIED_DAYS: i64 = 7;
/// Yearly-day lists (a job and a day, each a query per due-index shard) read at once.
const YEARLY_READS_TOGETHER: usize = 4;

/// Members a broadcast pass keeps to try again, at most (more failures are only reported).
const MAX_RETRIED_MEMBERS: usize = 1_000;

type Progress<'a> = &'a (dyn Fn(usize) + Sync);

/// A broadcast campaign's pass: whom it assigns for, and as of when.
#[derive(Clone, Copy)]
struct Pass<'a> {
    program: &'a Program,
    id: &'a str,
    campaign: &'a Campaign,
    at: DateTime<Utc>,
}

/// The members a broadcast pass failed to assign, with the day of their first failure.
#[derive(Default)]
struct Retries(std::collections::BTreeMap<String, NaiveDate>);

impl Retries {
    /// What was saved; unreadable text (a hand edit) is an empty list, as before any failure.
    fn read(saved: Option<&str>) -> Retries {
        Retries(
            saved
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_default(),
        )
    }

    fn add(&mut self, member: &str, today: NaiveDate) {
        if self.0.len() < MAX_RETRIED_MEMBERS || self.0.contains_key(member) {
            self.0.entry(member.to_string()).or_insert(today);
        }
    }

    fn write(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        serde_json::to_string(&self.0).ok()
    }
}

/// One program's tick: the day it runs for, the day the last tick finished, and when it must
/// stop (what it leaves is done by the next tick: sends and assignments are not repeated).
pub(crate) struct Tick {
    pub date: NaiveDate,
    pub saved: Option<String>,
    pub deadline: Deadline,
}

impl Services {
    pub(crate) async fn campaign_tick(
        &self,
        program: &Program,
        tick: Tick,
        report: &mut JobReport,
        progress: Progress<'_>,
    ) -> Result<(), ServiceError> {
        let Tick {
            date,
            saved,
            deadline,
        } = tick;
        let at = job_instant(program, date, self.clock.now());
        // Once for the whole tick: the days it leaves unread as after today are the days it
        // never marks done, however long it runs.
        let today = crate::domain::calendar::local_date(program.time_zone, self.clock.now());
        // `saved` (the day the last tick finished) was read together with the program, and
        // so were the campaigns (cached).
        let campaigns = self.campaign_list(&program.id).await;
        let last = saved.and_then(|p| p.parse::<NaiveDate>().ok());
        let earliest = date - Duration::days(MAX_TICK_CATCH_UP_DAYS);
        let from = match last {
            Some(last) if last <= date => last.max(earliest),
            _ => date,
        };
        report.from = Some(from);
        report.to = Some(date);
        let days: Vec<NaiveDate> = from.iter_days().take_while(|d| *d <= date).collect();
        let jobs: Vec<(DueJob, &'static str)> = [
            (DueJob::Birthday, "birthday"),
            (DueJob::Anniversary, "anniversary"),
        ]
        .into_iter()
        .filter(|(_, action)| program.actions.contains_key(*action))
        .collect();
        // Day by day, so that the days done are saved as done even when a run stops.
        let yearly: Vec<(DueJob, NaiveDate)> = days
            .iter()
            .flat_map(|day| jobs.iter().map(move |(job, _)| (*job, *day)))
            .collect();
        // A birthday campaign is looked at for each day gone over, whether or not it still
        // runs: the days it ran keep their birthdays. One an operator stopped assigns no one
        // more, as before its stop.
        let broadcast: Vec<(String, Campaign)> = campaigns?
            .iter()
            .filter(|(_, c)| c.kind == CampaignKind::Broadcast)
            .cloned()
            .collect();
        let (birthdays, everyone): (Vec<_>, Vec<_>) = broadcast
            .iter()
            .filter(|(_, c)| {
                if c.audience.birthday_in_window {
                    c.status == CampaignStatus::Running
                } else {
                    c.running_at(at)
                }
            })
            .partition(|(_, c)| c.audience.birthday_in_window);
        // Whose day it is, read a few days and jobs at a time (a catch-up can owe a year of
        // them); paid in order as the lists arrive.
        // (No stream combinator with a closure here: its future would not be `Send` for every
        // lifetime, which the scheduled task needs.)
        let mut ahead = yearly.iter();
        let mut lists = futures_util::stream::FuturesOrdered::new();
        for &(job, day) in ahead.by_ref().take(YEARLY_READS_TOGETHER) {
            lists.push_back(self.yearly_members(program, job, day, today));
        }
        // The last day done with nothing failed; a member that failed holds its day (and the
        // ones after) for the next ticks to go over again, for a week at most.
        let mut done: Option<NaiveDate> = None;
        let mut held = false;
        let retried_since = date - Duration::days(FAILED_DAY_RETRIED_DAYS);
        for day in &days {
            if past(deadline) {
                report.complete = false;
                break;
            }
            let failed_before = report.failed;
            for &(job, action) in &jobs {
                let Some(members) = lists.next().await else {
                    break;
                };
                if let Some(&(next_job, next_day)) = ahead.next() {
                    lists.push_back(self.yearly_members(program, next_job, next_day, today));
                }
                self.pay_yearly_day(program, job, action, *day, members?, at, report, progress)
                    .await?;
            }
            let day_start = start_of_day(program.time_zone, *day);
            let day_at = job_instant(program, *day, self.clock.now()).min(at);
            for (id, campaign) in &birthdays {
                if let Some(when) = campaign.last_running_in(day_start, day_at) {
                    self.assign_birthdays(program, id, campaign, *day, when, report, progress)
                        .await?;
                }
            }
            held |= report.failed > failed_before && *day >= retried_since;
            if !held {
                done = Some(*day);
            }
        }
        if report.complete {
            for (id, campaign) in &everyone {
                self.assign_everyone(program, id, campaign, at, deadline, report, progress)
                    .await?;
                if !report.complete {
                    break;
                }
            }
        }
        // What was sent or assigned on a day gone over again is not repeated: ids and
        // assignments are fixed.
        // Never past today: a tick as of a later date leaves the days from today to the
        // scheduled ticks.
        let done = done.map(|done| done.min(today));
        if let Some(done) = done.filter(|done| last.is_none_or(|last| last < *done)) {
            self.store
                .save_job_progress(&program.id, CAMPAIGN_TICK, Some(&done.to_string()))
                .await?;
        }
        Ok(())
    }

    /// Members whose yearly day (birthday or anniversary) is `day`; none for a day after
    /// `until`.
    async fn yearly_members(
        &self,
        program: &Program,
        job: DueJob,
        day: NaiveDate,
        until: NaiveDate,
    ) -> Result<Vec<String>, ServiceError> {
        let mut members = Vec::new();
        // A day after today (a tick run ahead) is left to its own tick, unread: its event
        // could be dated no later than now, and would spend this year's limit under next
        // year's id, which its own tick could then no longer pay.
        if day > until {
            return Ok(members);
        }
        for index_date in yearly_index_dates(day) {
            members.extend(self.members_due_on(&program.id, job, index_date).await?);
        }
        Ok(members)
    }

    /// Sends the program's yearly action (`birthday`, `anniversary`) to the members whose day
    /// it is. An anniversary (of the date in the member's profile, else of joining) needs a
    /// full year, so those accounts are read.
    #[allow(clippy::too_many_arguments)]
    async fn pay_yearly_day(
        &self,
        program: &Program,
        job: DueJob,
        action: &str,
        day: NaiveDate,
        members: Vec<String>,
        at: DateTime<Utc>,
        report: &mut JobReport,
        progress: Progress<'_>,
    ) -> Result<(), ServiceError> {
        for member in members {
            report.members += 1;
            progress(report.members);
            match self
                .pay_yearly(program, job, action, day, &member, at)
                .await
            {
                Ok(true) => report.sent += 1,
                Ok(false) => {}
                Err(e) => report.record_failure(&member, &e),
            }
        }
        Ok(())
    }

    /// One member's yearly event; `false` when an anniversary is not a year in yet.
    async fn pay_yearly(
        &self,
        program: &Program,
        job: DueJob,
        action: &str,
        day: NaiveDate,
        member: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, ServiceError> {
        if job == DueJob::Anniversary {
            let state = self.store.load_member(&program.id, member, &[]).await?;
            let a_year_in = state
                .account
                .is_some_and(|a| a.anniversary_date().year() < day.year());
            if !a_year_in {
                return Ok(false);
            }
        }
        let now = self.clock.now();
        let message = Envelope {
            replay: None,
            resumed: None,
            reviewed_by: None,
            trace: crate::telemetry::trace::current(),
            kind: "engagement.recorded".into(),
            version: ENVELOPE_VERSION,
            id: crate::ids::derived_event_id(action, &[member, &day.year().to_string()]),
            program: program.id.clone(),
            member: member.to_string(),
            // The day paid, not the tick's: a day caught up in the next year counts towards
            // its own year's limit, and leaves the new year's birthday to be paid.
            occurred_at: job_instant(program, day, now).min(at).min(now),
            data: json!({
                "action": action, "ref": format!("{action}-{}", day.year()),
                "platform": CAMPAIGN_TICK,
            }),
        };
        self.send_to(QueueName::Earn, &message)
            .await
            .map_err(ServiceError::from)?;
        Ok(true)
    }

    /// Assigns a birthday campaign to the members whose birthday is `day`.
    #[allow(clippy::too_many_arguments)]
    async fn assign_birthdays(
        &self,
        program: &Program,
        id: &str,
        campaign: &Campaign,
        day: NaiveDate,
        at: DateTime<Utc>,
        report: &mut JobReport,
        progress: Progress<'_>,
    ) -> Result<(), ServiceError> {
        // (Assigned as before for every day gone over: an assignment is made once, whenever.)
        let any_day = NaiveDate::MAX;
        for member in self
            .yearly_members(program, DueJob::Birthday, day, any_day)
            .await?
        {
            report.members += 1;
            progress(report.members);
            match self.assign_member(program, id, campaign, &member, at).await {
                Ok(true) => report.changed += 1,
                Ok(false) => {}
                Err(e) => report.record_failure(&member, &e),
            }
        }
        Ok(())
    }

    /// Assigns a broadcast campaign to every member of its audience: one paged pass over the
    /// program's members, resumed from its saved cursor and not repeated once complete
    /// (members who join later are assigned at their first purchase or app visit).
    #[allow(clippy::too_many_arguments)]
    async fn assign_everyone(
        &self,
        program: &Program,
        id: &str,
        campaign: &Campaign,
        at: DateTime<Utc>,
        deadline: Deadline,
        report: &mut JobReport,
        progress: Progress<'_>,
    ) -> Result<(), ServiceError> {
        // A new seed or bucket version re-buckets everyone, and a new audience, coverage or
        // namespace admits others: a pass of its own (members already assigned keep their
        // assignment). Full coverage outside any namespace adds nothing to the key, which is
        // then what it was before coverage counted.
        let audience = serde_json::to_string(&campaign.audience).unwrap_or_default();
        let admitted = match (campaign.coverage, &campaign.namespace) {
            (coverage, None) if coverage >= 1.0 => String::new(),
            (coverage, namespace) => format!(
                "\0{coverage}\0{}",
                serde_json::to_string(namespace).unwrap_or_default()
            ),
        };
        let key = format!(
            "{CAMPAIGN_TICK}:{id}:{}:{:016x}",
            campaign.bucket_version,
            crate::fingerprint::fnv1a64(
                campaign
                    .hash_seed
                    .bytes()
                    .chain([0])
                    .chain(audience.bytes())
                    .chain(admitted.bytes())
            )
        );
        let pass = Pass {
            program,
            id,
            campaign,
            at,
        };
        let retry_key = format!("{key}:retry");
        let mut saved_retries = self.store.job_progress(&program.id, &retry_key).await?;
        let mut retries = Retries::read(saved_retries.as_deref());
        let today = crate::domain::calendar::local_date(program.time_zone, at);
        self.retry_failed(&pass, &mut retries, today, deadline, report, progress)
            .await;
        let mut cursor = self.store.job_progress(&program.id, &key).await?;
        while cursor.as_deref() != Some(PASS_DONE) {
            // Stopped between pages: the saved cursor is where the next tick goes on.
            if past(deadline) {
                report.complete = false;
                break;
            }
            let page = self
                .store
                .members_page(&program.id, cursor.as_deref(), PAGE)
                .await?;
            // A member that fails is named in the report and tried again by the next ticks
            // (the pass goes on past it).
            for member in &page.members {
                report.members += 1;
                progress(report.members);
                match self.assign_member(program, id, campaign, member, at).await {
                    Ok(true) => report.changed += 1,
                    Ok(false) => {}
                    Err(e) => {
                        report.record_failure(member, &e);
                        retries.add(member, today);
                    }
                }
            }
            // The failures first: a cursor saved past a member whose retry is not saved
            // would lose it.
            self.save_retries(&program.id, &retry_key, &retries, &mut saved_retries)
                .await?;
            let next = page.next_cursor.unwrap_or_else(|| PASS_DONE.to_string());
            self.store
                .save_job_progress(&program.id, &key, Some(&next))
                .await?;
            cursor = Some(next);
        }
        self.save_retries(&program.id, &retry_key, &retries, &mut saved_retries)
            .await
    }

    /// Tries again the members a pass failed to assign, for [`FAILED_DAY_RETRIED_DAYS`] after
    /// their first failure (then they stay named among that tick's failures).
    async fn retry_failed(
        &self,
        pass: &Pass<'_>,
        retries: &mut Retries,
        today: NaiveDate,
        deadline: Deadline,
        report: &mut JobReport,
        progress: Progress<'_>,
    ) {
        let since = today - Duration::days(FAILED_DAY_RETRIED_DAYS);
        // Given up: named once more among this tick's failures, so that the run that drops
        // them says so (an operator assigns them by hand, or they are assigned at their next
        // purchase).
        let given_up: Vec<(String, NaiveDate)> = retries
            .0
            .iter()
            .filter(|(_, first)| **first < since)
            .map(|(member, first)| (member.clone(), *first))
            .collect();
        for (member, first) in given_up {
            retries.0.remove(&member);
            report.give_up(
                &member,
                &format!("not assigned: every try failed since {first}; no longer tried"),
            );
        }
        let members: Vec<String> = retries.0.keys().cloned().collect();
        for member in members {
            if past(deadline) {
                report.complete = false;
                return;
            }
            report.members += 1;
            progress(report.members);
            let Pass {
                program,
                id,
                campaign,
                at,
            } = *pass;
            match self.assign_member(program, id, campaign, &member, at).await {
                Ok(assigned) => {
                    report.changed += usize::from(assigned);
                    retries.0.remove(&member);
                }
                Err(e) => report.record_failure(&member, &e),
            }
        }
    }

    /// Saves the members left to try again, when they differ from what is saved.
    async fn save_retries(
        &self,
        program: &str,
        key: &str,
        retries: &Retries,
        saved: &mut Option<String>,
    ) -> Result<(), ServiceError> {
        let now = retries.write();
        if now == *saved {
            return Ok(());
        }
        self.store
            .save_job_progress(program, key, now.as_deref())
            .await?;
        *saved = now;
        Ok(())
    }

    /// Whether the campaign was re-randomised since this copy: a pass of that save's assigns
    /// the member. (Not: the assignment is older than any randomisation kept.)
    async fn saved_since(
        &self,
        program: &str,
        id: &str,
        campaign: &Campaign,
    ) -> Result<bool, ServiceError> {
        let Some((_, json)) = self.store.campaign(program, id).await? else {
            return Ok(false);
        };
        let stored = super::parse_stored_campaign(id, &json)?;
        Ok(stored.randomisation() != campaign.randomisation())
    }

    /// Assigns one member if the audience admits them and they have no assignment yet;
    /// `true` when one was recorded now.
    async fn assign_member(
        &self,
        program: &Program,
        id: &str,
        campaign: &Campaign,
        member: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, ServiceError> {
        let state = self
            .store
            .load_member_with(&program.id, member, &[], &[id.to_string()])
            .await?;
        // No account, one being erased, or one merged into another (the survivor is the
        // person, assigned on its own): nothing to assign.
        let Some(account) = state
            .account
            .as_ref()
            .filter(|a| a.erased.is_none() && a.merged_into().is_none())
        else {
            return Ok(false);
        };
        // Assigned already, or by a later save of the campaign than this pass read (whose
        // own pass assigns them): left as it is.
        let read = state.assignments.get(id);
        if read.is_some_and(|a| a.holds_for(&campaign.hash_seed, campaign.bucket_version)) {
            return Ok(false);
        }
        // A pass may outlive its copy of the campaign: an assignment it does not know may be
        // of a save since, whose own pass assigns the member. The campaign as stored says.
        if read.is_some_and(|a| campaign.may_be_newer(a, DateTime::<Utc>::MIN_UTC))
            && self.saved_since(&program.id, id, campaign).await?
        {
            return Ok(false);
        }
        let account: Account = account.as_of(program, at).account;
        if !campaign.admits(program, &account, at) {
            return Ok(false);
        }
        let Some(variant) = campaign.assign(member) else {
            return Ok(false);
        };
        let to = Assignee {
            member,
            seen: true,
            earlier: state.assignments.get(id),
        };
        let recorded = self
            .assign(&program.id, to, id, campaign, variant, at)
            .await?;
        Ok(recorded.is_some())
    }
}
