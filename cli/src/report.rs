//! `loyalty report liability|kpis`: finance's and marketing's reports, from `--db` or
//! `--table`.

use std::path::PathBuf;

use chrono::NaiveDate;
use clap::{Args, Subcommand};
use loyalty_core::liability::{self, LiabilityReport};
use loyalty_core::services::Services;

use crate::stores::{runtime, StoreArgs};

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(subcommand)]
    command: ReportCommand,
}

#[derive(Debug, Subcommand)]
enum ReportCommand {
    /// The points liability as of a date: outstanding points by expiry month, pending, held,
    /// by tier, their value, the movement of each month and breakage by issue cohort.
    Liability(LiabilityArgs),
}

#[derive(Debug, Args)]
struct LiabilityArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The program (needed only when the store has several).
    #[arg(long)]
    program: Option<String>,
    /// The end of this day in the program's time zone (today when absent).
    #[arg(long)]
    as_of: Option<NaiveDate>,
    /// Print the report as JSON.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print the movement table as CSV.
    #[arg(long)]
    csv: bool,
    /// Also write the chart to this SVG file.
    #[arg(long)]
    svg: Option<PathBuf>,
}

pub fn run(args: ReportArgs) -> Result<(), String> {
    let ReportCommand::Liability(args) = args.command;
    runtime()?.block_on(liability_report(args))
}

async fn liability_report(args: LiabilityArgs) -> Result<(), String> {
    let services = args.store.open().await?.services();
    let program = program_of(&services, args.program.as_deref()).await?;
    let report = services
        .liability(&program, args.as_of)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(path) = &args.svg {
        std::fs::write(path, liability::svg(&report))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else if args.csv {
        print!("{}", liability::csv(&report));
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// The one program named, or the only one there is.
pub async fn program_of(services: &Services, program: Option<&str>) -> Result<String, String> {
    if let Some(p) = program {
        return Ok(p.to_string());
    }
    let ids = services
        .store
        .program_ids()
        .await
        .map_err(|e| e.to_string())?;
    match ids.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err("the store has no program".into()),
        many => Err(format!(
            "the store has programs {}; pass --program",
            many.join(", ")
        )),
    }
}

fn table(r: &LiabilityReport) -> String {
    let value = r
        .value
        .as_ref()
        .map(|v| format!(" = {v} {}", r.currency))
        .unwrap_or_default();
    let mut out = format!(
        "{} as of {}: outstanding {} points{value}; owed {}; pending {}; held {}; members {}\n\nexpiring  points\n",
        r.program, r.as_of, r.outstanding, r.owed, r.pending, r.held, r.members
    );
    for m in &r.by_expiry_month {
        out += &format!("{}   {:>10}\n", m.month, m.points);
    }
    out += &format!(
        "\n{:<8} {:>10} {:>10} {:>10} {:>10} {:>11} {:>10} {:>10}\n",
        "month", "opening", "issued", "redeemed", "expired", "clawed back", "adjusted", "closing"
    );
    for m in &r.movements {
        out += &format!(
            "{:<8} {:>10} {:>10} {:>10} {:>10} {:>11} {:>10} {:>10}\n",
            m.month.to_string(),
            m.opening,
            m.issued,
            m.redeemed,
            m.expired,
            m.clawed_back,
            m.adjusted,
            m.closing
        );
    }
    let b = &r.breakage;
    out += &format!(
        "\nbreakage: rate {} ({} expired of {} resolved in matured cohorts); expected never redeemed: {}\n",
        b.rate.as_deref().unwrap_or("n/a"),
        b.expired,
        b.resolved,
        b.expected_points.map_or("n/a".into(), |p| p.to_string())
    );
    out
}
