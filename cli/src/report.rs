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
    /// Members, activity, repurchase and redemption rates, points per order, engagement, tiers
    /// and each campaign's results over a period.
    Kpis(KpiArgs),
    /// What the brand owes each cause: donated points and their money, by month.
    Donations(DonationArgs),
}

#[derive(Debug, Args)]
struct DonationArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The program (needed only when the store has several).
    #[arg(long)]
    program: Option<String>,
    /// One month (YYYY-MM); every month with a donation when absent.
    #[arg(long)]
    month: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct KpiArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The program (needed only when the store has several).
    #[arg(long)]
    program: Option<String>,
    /// First day of the period (30 days before --to when absent).
    #[arg(long, value_parser = crate::date_arg)]
    from: Option<NaiveDate>,
    /// Last day of the period (today when absent).
    #[arg(long, value_parser = crate::date_arg)]
    to: Option<NaiveDate>,
    /// Print the KPIs as JSON.
    #[arg(long)]
    json: bool,
    /// Also write the KPI card to this SVG file.
    #[arg(long)]
    svg: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct LiabilityArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The program (needed only when the store has several).
    #[arg(long)]
    program: Option<String>,
    /// The end of this day in the program's time zone (today when absent).
    #[arg(long, value_parser = crate::date_arg)]
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
    match args.command {
        ReportCommand::Liability(args) => runtime()?.block_on(liability_report(args)),
        ReportCommand::Kpis(args) => runtime()?.block_on(kpi_report(args)),
        ReportCommand::Donations(args) => runtime()?.block_on(donations_report(args)),
    }
}

async fn donations_report(args: DonationArgs) -> Result<(), String> {
    let month = args
        .month
        .as_deref()
        .map(str::parse::<loyalty_core::domain::calendar::YearMonth>)
        .transpose()
        .map_err(|e| format!("--month: {e}"))?;
    let services = args.store.open().await?.services();
    let program = program_of(&services, args.program.as_deref()).await?;
    let report = services
        .donations(&program, month)
        .await
        .map_err(|e| e.to_string())?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    if report.months.is_empty() {
        println!("{}: no donations", report.program);
    }
    for m in &report.months {
        println!(
            "{}  {:>12} points  {:>14} {}",
            m.month, m.points, m.amount, report.currency
        );
        for c in &m.causes {
            println!(
                "  {:<28} {:>10} points  {:>14} {}",
                c.cause, c.points, c.amount, report.currency
            );
        }
    }
    Ok(())
}

async fn kpi_report(args: KpiArgs) -> Result<(), String> {
    let services = args.store.open().await?.services();
    let program = program_of(&services, args.program.as_deref()).await?;
    let kpis = services
        .kpis(&program, args.from, args.to)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(path) = &args.svg {
        write_svg(path, &loyalty_core::kpis::svg(&kpis))?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&kpis).map_err(|e| e.to_string())?
        );
        warn_unreadable(&kpis.unreadable);
        return Ok(());
    }
    let rate = |r: &loyalty_core::kpis::Ratio| r.rate.clone().unwrap_or_else(|| "n/a".into());
    println!("{} from {} to {}", kpis.program, kpis.from, kpis.to);
    println!(
        "members          {:>10}  (new {})",
        kpis.members, kpis.new_members
    );
    println!(
        "active 30 / 90   {:>10} / {}",
        kpis.active_30, kpis.active_90
    );
    println!(
        "repurchase rate  {:>10}  ({} of {} first buyers)",
        rate(&kpis.repurchase),
        kpis.repurchase.numerator,
        kpis.repurchase.denominator
    );
    println!(
        "redemption rate  {:>10}  ({} of {} points)",
        rate(&kpis.redemption),
        kpis.redemption.numerator,
        kpis.redemption.denominator
    );
    println!(
        "points per order {:>10}  ({} orders)",
        kpis.points_per_order.as_deref().unwrap_or("n/a"),
        kpis.orders
    );
    for (action, n) in &kpis.engagement {
        println!("action {action:<12} {n:>8}");
    }
    for (tier, n) in &kpis.tiers {
        println!("tier {tier:<14} {n:>8}");
    }
    for (moved, n) in &kpis.tier_moves {
        println!("moved {moved:<13} {n:>8}");
    }
    for c in &kpis.campaigns {
        println!("campaign {} ({}): {}", c.campaign, c.name, c.verdict);
    }
    warn_unreadable(&kpis.unreadable);
    Ok(())
}

/// Members the report could not read are not in its figures: said on stderr, by id.
fn warn_unreadable(members: &[String]) {
    if !members.is_empty() {
        eprintln!(
            "warning: {} member(s) could not be read and are not counted: {} (`loyalty audit` says why)",
            members.len(),
            members.join(", ")
        );
    }
}

async fn liability_report(args: LiabilityArgs) -> Result<(), String> {
    let services = args.store.open().await?.services();
    let program = program_of(&services, args.program.as_deref()).await?;
    let report = services
        .liability(&program, args.as_of)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(path) = &args.svg {
        write_svg(path, &liability::svg(&report))?;
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

/// The one program named (which must exist: a mistyped one read as a program with nothing in
/// it), or the only one there is.
pub async fn program_of(services: &Services, program: Option<&str>) -> Result<String, String> {
    if let Some(p) = program {
        services.program(p).await.map_err(|e| e.to_string())?;
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
        "\n{:<8} {:>10} {:>10} {:>10} {:>10} {:>11} {:>10} {:>11} {:>10} {:>10} {:>12} {:>10}\n",
        "month",
        "opening",
        "issued",
        "redeemed",
        "expired",
        "clawed back",
        "adjusted",
        "transferred",
        "forfeited",
        "paid out",
        "debt forgiven",
        "closing"
    );
    for m in &r.movements {
        let [opening, issued, redeemed, expired, clawed, adjusted, transferred, forfeited, paid_out, written_off, closing] =
            m.figures();
        out += &format!(
            "{:<8} {opening:>10} {issued:>10} {redeemed:>10} {expired:>10} {clawed:>11} {adjusted:>10} {transferred:>11} {forfeited:>10} {paid_out:>10} {written_off:>12} {closing:>10}\n",
            m.month.to_string(),
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

/// A chart, whole or not at all: a full disk left a cut file under its name.
fn write_svg(path: &std::path::Path, svg: &str) -> Result<(), String> {
    use std::io::Write as _;
    crate::files::write_whole(path, |file| {
        file.write_all(svg.as_bytes()).map_err(|e| e.to_string())
    })
}
