//! `loyalty campaign report <campaign>`: a campaign's results from the embedded store, as a
//! table with uplifts and a verdict, and optionally the conversion chart as SVG.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use loyalty_core::ports::{CampaignStore, ScheduleStore, SystemClock};
use loyalty_core::queue::local::LocalQueue;
use loyalty_core::report::{svg, Report, Uplift};
use loyalty_core::services::Services;
use loyalty_core::store::sqlite::SqliteStore;

#[derive(Debug, Args)]
pub struct CampaignArgs {
    #[command(subcommand)]
    command: CampaignCommand,
}

#[derive(Debug, Subcommand)]
enum CampaignCommand {
    /// Per variant: members, converters, conversion, revenue per member, points cost, uplift
    /// against the control with a 95% interval, the sample-ratio check and a verdict.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// The campaign id.
    campaign: String,
    /// SQLite database file (the one `loyalty serve` uses).
    #[arg(long, default_value = "loyalty.db")]
    db: PathBuf,
    /// The program (needed only when several programs have a campaign of this id).
    #[arg(long)]
    program: Option<String>,
    /// Also write the conversion chart to this SVG file.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: CampaignArgs) -> Result<(), String> {
    let CampaignCommand::Report(args) = args.command;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(report(args))
}

async fn report(args: ReportArgs) -> Result<(), String> {
    if !args.db.exists() {
        return Err(format!("{} does not exist (pass --db)", args.db.display()));
    }
    let store = SqliteStore::open_made(&args.db).map_err(|e| e.to_string())?;
    let program = match args.program {
        Some(p) => p,
        None => program_of(&store, &args.campaign).await?,
    };
    let queue = LocalQueue::new(store.clone(), crate::serve::MAX_ATTEMPTS);
    let services = Services::new(Arc::new(store), Arc::new(queue), Arc::new(SystemClock));
    let report = services
        .campaign_report(&program, &args.campaign)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(path) = &args.svg {
        std::fs::write(path, svg(&report))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        println!("{text}");
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// The one program that has this campaign.
async fn program_of(store: &SqliteStore, campaign: &str) -> Result<String, String> {
    let mut found = Vec::new();
    for program in store.program_ids().await.map_err(|e| e.to_string())? {
        if store
            .campaign(&program, campaign)
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            found.push(program);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!("no program has a campaign {campaign:?}")),
        many => Err(format!(
            "programs {} all have a campaign {campaign:?}; pass --program",
            many.join(", ")
        )),
    }
}

fn uplift(u: Option<&Uplift>, scale: f64, unit: &str) -> String {
    match u {
        None => "(control)".into(),
        Some(u) => format!(
            "{:+.2}{unit} [{:+.2}, {:+.2}] p={:.4}",
            u.difference * scale,
            u.interval[0] * scale,
            u.interval[1] * scale,
            u.p_value
        ),
    }
}

fn table(r: &Report) -> String {
    let mut out = format!(
        "{} ({}): members = {}\n\n{:<12} {:>8} {:>10} {:>9} {:>12} {:>10}  {:<40} {}\n",
        r.name,
        r.campaign,
        r.denominator,
        "variant",
        "members",
        "converters",
        "rate",
        "rev/member",
        "points",
        "conversion uplift (pp, 95% CI)",
        "revenue/member uplift (95% CI)"
    );
    for v in &r.variants {
        out += &format!(
            "{:<12} {:>8} {:>10} {:>8.2}% {:>12.0} {:>10}  {:<40} {}\n",
            v.variant,
            v.members,
            v.converters,
            100.0 * v.conversion_rate,
            v.revenue_per_member,
            v.points_cost,
            uplift(v.conversion_uplift.as_ref(), 100.0, "pp"),
            uplift(v.revenue_uplift.as_ref(), 1.0, "")
        );
    }
    out += &format!(
        "\nsample ratio: chi² = {:.2}, p = {:.4}{}\n{}\n",
        r.sample_ratio.chi_square,
        r.sample_ratio.p_value,
        if r.sample_ratio.mismatch {
            "  MISMATCH"
        } else {
            ""
        },
        r.verdict
    );
    out
}
