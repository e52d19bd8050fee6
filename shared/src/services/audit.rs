//! Runs the audit over a whole store (every part in parallel) and reconciles each program's
//! sums with its books.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::{ServiceError, Services};
use crate::audit::{check_member, check_parked, Totals, Violation};
use crate::envelope::{Envelope, ENVELOPE_VERSION};
use crate::liability;
use crate::ports::{AuditRun, MemberRecords, OutboxMessage, QueueName, Walked};

/// The message that starts an audit asked for through the API (on the tier queue, whose
/// consumer runs jobs).
pub const AUDIT_REQUESTED: &str = "audit.requested";
/// The member of an audit's message: `#` is in no member id, so this names no member.
const AUDIT_MEMBER: &str = "#audit";
/// Violations kept in a stored audit report (all of them are counted).
const MAX_STORED_VIOLATIONS: usize = 500;

tokio::task_local! {
    /// When the invocation running an audit asked for through the API must answer (the tier
    /// queue's consumer on Lambda); none where an audit may run as long as it takes.
    pub static INVOCATION_DEADLINE: super::jobs::Deadline;
}

/// Re-reads of a member the walk found wrong, before the violation is believed: a scan is no
/// snapshot, and a member may have changed while it was read.
const RECHECKS: usize = 2;

#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditReport {
    pub members: u64,
    pub entries: u64,
    pub violations: Vec<Violation>,
    /// What could not be read this time (a program's books the store failed to answer): not
    /// found wrong, not checked either. Run the audit again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unread: Vec<Violation>,
    /// Per program: the sums over its members, and the same sums from its books.
    pub programs: BTreeMap<String, ProgramAudit>,
    /// Read capacity used, where the store counts it (DynamoDB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_units: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProgramAudit {
    pub members: Totals,
    pub books: Totals,
}

/// A member merged out, as the walk found it.
struct MergedOut {
    program: String,
    member: String,
    into: String,
    at: chrono::DateTime<chrono::Utc>,
    points: i64,
    pending: i64,
}

#[derive(Default)]
struct Progress {
    report: AuditReport,
    suspects: Vec<(String, String)>,
    /// Members merged out: what each moved, and where.
    merged_out: Vec<MergedOut>,
}

impl Services {
    /// Audits every member (of `program`, or of every program), reporting the number of
    /// members read so far to `progress`.
    pub async fn audit(
        &self,
        program: Option<&str>,
        progress: Arc<dyn Fn(u64) + Send + Sync>,
    ) -> Result<AuditReport, ServiceError> {
        // A program named that does not exist is an error, not an audit of nobody that passes.
        if let Some(program) = program {
            self.program(program).await?;
        }
        let now = self.clock.now();
        let units_before = self.store.read_units();
        let state = Arc::new(Mutex::new(Progress::default()));
        // Dropped (an audit out of time), the set stops its parts too.
        let mut parts = tokio::task::JoinSet::new();
        for part in 0..self.store.parts() {
            let (store, state, progress) = (self.store.clone(), state.clone(), progress.clone());
            let program = program.map(str::to_string);
            parts.spawn(async move {
                let visit = move |walked: Walked| {
                    let Ok(mut s) = state.lock() else { return };
                    match walked {
                        Walked::Member(records) => {
                            if let Some(m) = records
                                .account
                                .as_ref()
                                .filter(|a| a.erased.is_none())
                                .and_then(|a| a.merged.as_ref())
                            {
                                s.merged_out.push(MergedOut {
                                    program: records.program.clone(),
                                    member: records.member.clone(),
                                    into: m.into.clone(),
                                    at: m.at,
                                    points: m.snapshot.balance,
                                    pending: m.snapshot.pending_points(),
                                });
                            }
                            let (found, totals) = check_member(&records, now);
                            s.report.members += totals.members;
                            s.report.entries += totals.entries;
                            if found.is_empty() {
                                add_totals(&mut s.report, &records.program, &totals);
                            } else {
                                s.suspects
                                    .push((records.program.clone(), records.member.clone()));
                            }
                            progress(s.report.members);
                        }
                        Walked::Parked(event) => {
                            s.report.violations.extend(check_parked(&event, now));
                        }
                        // Not in the sums: the program's books show the difference too.
                        Walked::Unreadable {
                            program,
                            member,
                            detail,
                        } => s.report.violations.push(Violation {
                            program,
                            member: Some(member),
                            rule: "unreadable",
                            detail,
                            difference: None,
                        }),
                    }
                };
                store.walk(part, program.as_deref(), &visit).await
            });
        }
        while let Some(part) = parts.join_next().await {
            part.map_err(|e| ServiceError::Internal(format!("an audit part failed: {e}")))??;
        }
        let (mut report, suspects, merged_out) = {
            let mut s = state
                .lock()
                .map_err(|_| ServiceError::Internal("the audit state was poisoned".into()))?;
            (
                std::mem::take(&mut s.report),
                std::mem::take(&mut s.suspects),
                std::mem::take(&mut s.merged_out),
            )
        };
        // Only members that moved points are read again: nothing else can be lost.
        let moved = merged_out
            .into_iter()
            .filter(|m| m.points != 0 || m.pending != 0);
        for m in moved {
            let MergedOut {
                program,
                member,
                into,
                at,
                points,
                pending,
            } = m;
            let survivor = match self.store.load_member(&program, &into, &[]).await {
                Ok(survivor) => survivor,
                Err(e) => {
                    report.violations.push(Violation {
                        program: program.clone(),
                        member: Some(member.clone()),
                        rule: "merge",
                        detail: format!("merged into {into}, which cannot be read: {e}"),
                        difference: None,
                    });
                    continue;
                }
            };
            let detail = match survivor.account {
                // A survivor gone before it received the points: credited to no one until the
                // member is erased too (what the merge's message does now).
                None => format!(
                    "merged into {into}, which is gone (erased) without having received {points} points and {pending} pending: erase {member} to give them up"
                ),
                // Its second step never came (its message lost or refused): the points are
                // out of one account and in no other. An hour is the merge's own time.
                Some(s)
                    if !s.merged_from.contains(&member)
                        && at + chrono::Duration::hours(1) < now =>
                {
                    format!(
                        "merged into {into} on {at}, which has not received its {points} points and {pending} pending: ask for the merge again to finish it"
                    )
                }
                Some(_) => continue,
            };
            report.violations.push(Violation {
                program,
                member: Some(member),
                rule: "merge",
                detail,
                difference: Some(points + pending),
            });
        }
        for (program, member) in suspects {
            match self.recheck(&program, &member, now).await {
                Ok((found, totals)) => {
                    add_totals(&mut report, &program, &totals);
                    report.violations.extend(found);
                }
                Err(e) => report.violations.push(Violation {
                    program,
                    member: Some(member),
                    rule: "unreadable",
                    detail: e.to_string(),
                    difference: None,
                }),
            }
        }
        // Every program audited is compared with its books, whether or not any of its members
        // could be read: books of members all lost say so only here.
        let audited = match program {
            Some(program) => vec![program.to_string()],
            None => self.store.program_ids().await?,
        };
        for id in audited {
            report.programs.entry(id).or_default();
        }
        self.reconcile(&mut report).await?;
        // This audit's reads: the store counts over its life (a warm Lambda's many audits).
        report.read_units = match (units_before, self.store.read_units()) {
            (Some(before), Some(after)) => Some(after - before),
            (_, after) => after,
        };
        Ok(report)
    }

    /// Reads a suspect member again until it checks out or the re-reads are spent.
    async fn recheck(
        &self,
        program: &str,
        member: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(Vec<Violation>, Totals), ServiceError> {
        let mut last = (Vec::new(), Totals::default());
        for _ in 0..RECHECKS {
            let records: MemberRecords = self.store.member_records(program, member).await?;
            // Read again as nothing at all: erased while the audit ran, gone, not wrong.
            if records.account.is_none() && records.entries.is_empty() {
                return Ok((Vec::new(), Totals::default()));
            }
            last = check_member(&records, now);
            if last.0.is_empty() {
                break;
            }
        }
        Ok(last)
    }

    /// Each program's sums over its members against the same sums from its books.
    async fn reconcile(&self, report: &mut AuditReport) -> Result<(), ServiceError> {
        for (id, audit) in report.programs.iter_mut() {
            // A program whose file or books cannot be read is reported, and the others are
            // still compared.
            // Every day's books, later ones included: the members hold what a job run ahead
            // (`--ahead`) wrote as of its later day, and the books dated it so (compared up to
            // today, the audit failed until the calendar caught up).
            let unreadable = |e: &dyn std::fmt::Display| Violation {
                program: id.clone(),
                member: None,
                rule: "books",
                detail: format!("the program's books cannot be read: {e}"),
                difference: None,
            };
            // A program whose file or books cannot be decoded is wrong; books the store failed
            // to answer this time are only unread (the next run may read them).
            if let Err(e) = self.program(id).await {
                report.violations.push(unreadable(&e));
                continue;
            }
            let rows = match self
                .store
                .book_rows(id, crate::domain::calendar::LAST_DAY)
                .await
            {
                Ok(rows) => rows,
                // Rows that do not decode are wrong, whoever reads them.
                Err(e @ crate::ports::StoreError::Corrupt { .. }) => {
                    report.violations.push(unreadable(&e));
                    continue;
                }
                Err(e) => {
                    report.unread.push(unreadable(&e));
                    continue;
                }
            };
            audit.books = liability::written(&rows);
            for (what, members, books) in [
                (
                    "members",
                    audit.members.members as i64,
                    audit.books.members as i64,
                ),
                ("balance", audit.members.balance, audit.books.balance),
                ("lots", audit.members.lots, audit.books.lots),
                ("debt", audit.members.debt, audit.books.debt),
                ("pending", audit.members.pending, audit.books.pending),
                ("held", audit.members.held, audit.books.held),
            ] {
                if members != books {
                    report.violations.push(Violation {
                        program: id.clone(),
                        member: None,
                        rule: "books",
                        detail: format!(
                            "{what}: the members sum to {members} but the books say {books} (a write during the audit also shows here; run it again)"
                        ),
                        difference: Some(books - members),
                    });
                }
            }
        }
        Ok(())
    }
}

impl Services {
    /// Asks for an audit of `program`, run as a job; returns it as stored (`queued`).
    pub async fn request_audit(&self, program: &str, by: &str) -> Result<AuditRun, ServiceError> {
        let program = self.program(program).await?;
        let now = self.clock.now();
        let run = AuditRun {
            id: uuid::Uuid::new_v4().simple().to_string(),
            status: "queued".into(),
            requested_by: by.to_string(),
            requested_at: now,
            finished_at: None,
            report: None,
        };
        let envelope = Envelope {
            replay: None,
            resumed: None,
            reviewed_by: None,
            trace: crate::telemetry::trace::current(),
            kind: AUDIT_REQUESTED.into(),
            version: ENVELOPE_VERSION,
            id: format!("audit-{}", run.id),
            program: program.id.clone(),
            member: AUDIT_MEMBER.into(),
            occurred_at: now,
            data: serde_json::json!({"audit": run.id}),
        };
        let message = OutboxMessage::new(QueueName::Tier, envelope);
        self.store
            .request_audit(&program.id, &run, &message)
            .await?;
        Ok(run)
    }

    pub async fn audit_run(&self, program: &str, id: &str) -> Result<AuditRun, ServiceError> {
        let program = self.program(program).await?;
        // Past its time, gone (DynamoDB's time to live and serve's housekeeping delete it
        // later, at their own pace).
        let now = self.clock.now();
        self.store
            .audit_run(&program.id, id)
            .await?
            .filter(|run| run.kept_until() > now)
            .ok_or_else(|| ServiceError::NotFound {
                problem: "unknown-audit",
                detail: format!("program {} has no audit {id:?}", program.id),
            })
    }

    /// Runs an audit asked for through the API and stores its report. A redelivered message
    /// for an audit already done does nothing.
    pub(crate) async fn run_requested_audit(
        &self,
        program: &str,
        envelope: &Envelope,
    ) -> Result<super::earn::Processed, ServiceError> {
        let id = envelope.data["audit"].as_str().unwrap_or_default();
        let Some(mut run) = self.store.audit_run(program, id).await? else {
            return Ok(super::earn::Processed::NoEffect(format!("no audit {id:?}")));
        };
        if run.status == "done" {
            return Ok(super::earn::Processed::Duplicate);
        }
        run.status = "running".into();
        self.store.save_audit_run(program, &run).await?;
        let audit = self.audit(Some(program), Arc::new(|_| {}));
        let deadline = INVOCATION_DEADLINE.try_with(|d| *d).ok().flatten();
        let out_of_time = || {
            format!(
                "the audit did not finish in the function's time: run `loyalty audit --program {program}` where the table can be read for as long as it takes"
            )
        };
        let finished = match deadline {
            // (the batch's other messages may have taken the time)
            Some(at) if std::time::Instant::now() >= at => Err(out_of_time()),
            Some(at) => tokio::time::timeout_at(at.into(), audit)
                .await
                .map_err(|_| out_of_time()),
            None => Ok(audit.await),
        };
        // A failure is kept on the run, which an operator reads: retried, an audit that cannot
        // finish would only start again from nothing, showing `running` until its message
        // went to the dead letters.
        let report = match finished {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => return self.audit_failed(program, run, e.to_string()).await,
            Err(why) => return self.audit_failed(program, run, why).await,
        };
        tracing::info!(
            program,
            audit = id,
            members = report.members,
            violations = report.violations.len(),
            "audit done"
        );
        let mut report = report;
        let total = report.violations.len();
        // A stored item has a size limit; the first violations and the count tell the story.
        // Parked events waiting a week are many and least telling: they go last, so that the
        // members' and the books' violations are kept.
        report.violations.sort_by_key(|v| v.rule == "parked");
        report.violations.truncate(MAX_STORED_VIOLATIONS);
        let unread = report.unread.len();
        let mut stored =
            serde_json::to_value(&report).map_err(|e| ServiceError::Internal(e.to_string()))?;
        stored["violations_total"] = serde_json::json!(total);
        // Books the store did not answer were not checked: not done, whatever else it found.
        run.status = if unread == 0 { "done" } else { "failed" }.into();
        if unread > 0 {
            stored["error"] = serde_json::json!(format!(
                "the books of {unread} program(s) could not be read this time (see unread): ask for the audit again"
            ));
        }
        run.finished_at = Some(self.clock.now());
        run.report = Some(stored);
        self.store.save_audit_run(program, &run).await?;
        Ok(super::earn::Processed::Applied { entries: 0 })
    }

    /// Keeps an audit's failure on its run (`failed`, with why): another audit may be asked.
    async fn audit_failed(
        &self,
        program: &str,
        mut run: AuditRun,
        why: String,
    ) -> Result<super::earn::Processed, ServiceError> {
        tracing::error!(program, audit = %run.id, error = %crate::telemetry::redact(&why), "audit failed");
        run.status = "failed".into();
        run.finished_at = Some(self.clock.now());
        run.report = Some(serde_json::json!({ "error": why }));
        self.store.save_audit_run(program, &run).await?;
        Ok(super::earn::Processed::NoEffect(format!(
            "audit {} failed: {why}",
            run.id
        )))
    }
}

fn add_totals(report: &mut AuditReport, program: &str, totals: &Totals) {
    report
        .programs
        .entry(program.to_string())
        .or_default()
        .members
        .add(totals);
}
