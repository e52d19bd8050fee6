//! `loyalty jobs run <job>`: the scheduled jobs, run by hand on the embedded store.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::NaiveDate;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use loyalty_core::ports::SystemClock;
use loyalty_core::queue::local::LocalQueue;
use loyalty_core::services::jobs::{Job, JobDate, JobReport};
use loyalty_core::services::Services;
use loyalty_core::store::sqlite::SqliteStore;

#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// Run one job now: release-pending, expire-points, tier-reviews, notices,
    /// recalculate-tiers or campaign-tick.
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The job to run.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(Job::NAMES))]
    job: String,
    /// SQLite database file (the one `loyalty serve` uses).
    #[arg(long, default_value = "loyalty.db")]
    db: PathBuf,
    /// Only this program (every program when absent).
    #[arg(long)]
    program: Option<String>,
    /// As if today were this date (YYYY-MM-DD) in the program's time zone: today or earlier
    /// (catching up), or later with --ahead.
    #[arg(long, value_parser = crate::date_arg)]
    date: Option<NaiveDate>,
    /// Let --date be after today: points expire and are released as if that day had come,
    /// for good (for trying a program out).
    #[arg(long, requires = "date")]
    ahead: bool,
}

pub fn run(args: JobsArgs) -> Result<(), String> {
    let JobsCommand::Run(args) = args.command;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(run_job(args))
}

async fn run_job(args: RunArgs) -> Result<(), String> {
    let job = Job::parse(&args.job).ok_or_else(|| format!("unknown job {:?}", args.job))?;
    if !args.db.exists() {
        return Err(format!(
            "{} does not exist (start `loyalty serve --db {}` first, or pass --db)",
            args.db.display(),
            args.db.display()
        ));
    }
    let store = SqliteStore::open_made(&args.db).map_err(|e| e.to_string())?;
    let queue = LocalQueue::new(store.clone(), crate::serve::MAX_ATTEMPTS);
    let services = Services::new(Arc::new(store), Arc::new(queue), Arc::new(SystemClock));
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {msg} {pos} members ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(job.name());
    let reports = services
        .run_job_everywhere(
            job,
            args.program.as_deref(),
            JobDate::of(args.date, args.ahead),
            None,
            &|n| bar.set_position(n as u64),
        )
        .await
        .map_err(|e| e.to_string());
    bar.finish_and_clear();
    let reports = reports?;
    for report in &reports {
        println!("{}", summary(report));
        for failure in &report.failures {
            println!("  failed: {}: {}", failure.member, failure.error);
        }
    }
    undone(&reports).map_or(Ok(()), Err)
}

/// What a run left undone, if anything: programs refused as a whole (a date not allowed, an
/// unreadable program: running again changes nothing until that is mended) apart from members
/// that failed (the next run retries them).
fn undone(reports: &[JobReport]) -> Option<String> {
    let refused = reports.iter().filter(|r| r.error.is_some()).count();
    let failing = reports.iter().filter(|r| r.failed > 0).count();
    let mut parts = Vec::new();
    if refused > 0 {
        parts.push(format!(
            "{refused} program(s) did not run (the reason is above)"
        ));
    }
    if failing > 0 {
        parts.push(format!(
            "members failed in {failing} program(s); the next run retries them"
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn summary(r: &JobReport) -> String {
    let dates = match (r.from, r.to) {
        (Some(from), Some(to)) if from == to => format!(" for {to}"),
        (Some(from), Some(to)) => format!(" for {from}..{to}"),
        _ => String::new(),
    };
    if let Some(error) = &r.error {
        return format!("{} {}: failed: {error}", r.job, r.program);
    }
    format!(
        "{} {}{dates}: {} members read, {} changed, {} ledger entries, {} notices, {} events queued, {} failed",
        r.job, r.program, r.members, r.changed, r.entries, r.notices, r.sent, r.failed
    )
}
