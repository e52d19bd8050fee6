//! `loyalty audit`: checks every member of the store against its ledger and each program's
//! sums against its books. Exit status 1 when anything is wrong, 2 when something could not be
//! read (the store, or a program's books this time).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use loyalty_core::services::audit::AuditReport;

use crate::stores::{runtime, Opened, StoreArgs};

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Only this program (every program when absent).
    #[arg(long)]
    program: Option<String>,
    /// Print the report as JSON (the summary line then goes to standard error).
    #[arg(long)]
    json: bool,
    /// Parallel scan segments on DynamoDB.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    segments: u32,
}

pub fn run(args: AuditArgs) -> Result<ExitCode, String> {
    runtime()?.block_on(audit(args))
}

async fn audit(args: AuditArgs) -> Result<ExitCode, String> {
    let opened = match args.store.open().await? {
        Opened::Dynamo(store) => Opened::Dynamo(store.with_parts(args.segments)),
        sqlite => sqlite,
    };
    let services = opened.services();
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} audit: {pos} members read ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let ticker = bar.clone();
    let report = services
        .audit(
            args.program.as_deref(),
            Arc::new(move |n| ticker.set_position(n)),
        )
        .await
        .map_err(|e| e.to_string());
    bar.finish_and_clear();
    let report = report?;
    let summary = summary(&report);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
        eprintln!("{summary}");
    } else {
        let listed = [
            ("violation", &report.violations),
            ("unread", &report.unread),
        ];
        for (said, v) in listed
            .iter()
            .flat_map(|(said, vs)| vs.iter().map(move |v| (said, v)))
        {
            let who = match &v.member {
                Some(m) => format!("{}/{m}", v.program),
                None => v.program.clone(),
            };
            let by = v
                .difference
                .map(|d| format!(" (difference {d:+})"))
                .unwrap_or_default();
            println!("{said}: {who}: {}: {}{by}", v.rule, v.detail);
        }
        if let Some(units) = report.read_units {
            println!("read capacity: {units:.1} units");
        }
        println!("{summary}");
    }
    // Something found wrong says more than something left unread (2: run it again).
    Ok(if !report.violations.is_empty() {
        ExitCode::FAILURE
    } else if !report.unread.is_empty() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn summary(report: &AuditReport) -> String {
    let unread = match report.unread.len() {
        0 => String::new(),
        n => format!(" unread={n} (run it again)"),
    };
    format!(
        "audit: members={} entries={} violations={}{unread}",
        report.members,
        report.entries,
        report.violations.len()
    )
}
