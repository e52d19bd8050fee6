//! `loyalty`: the whole stack as one local process on an embedded store, and operator commands.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod audit;
mod campaign;
mod console;
mod dlq;
mod import;
mod jobs;
mod member;
mod reconcile;
mod rejected;
mod report;
mod serve;
mod stores;
mod token;

#[derive(Debug, Parser)]
#[command(
    name = "loyalty",
    version,
    about = "Loyalty engine: points, tiers, rewards and campaigns"
)]
struct Cli {
    /// Log format (logs go to standard error).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every route, the queue workers and the embedded store in this process.
    Serve(serve::ServeArgs),
    /// Print a development token signed with LOYALTY_JWT_SECRET.
    Token(token::TokenArgs),
    /// Scheduled jobs (tier reviews, expiry, pending release, notices, tier recalculation,
    /// the campaign tick).
    Jobs(jobs::JobsArgs),
    /// Campaign results.
    Campaign(campaign::CampaignArgs),
    /// Finance's and marketing's reports (liability, KPIs).
    Report(report::ReportArgs),
    /// Member data (export).
    Member(member::MemberArgs),
    /// Events refused for good: list, show, replay.
    Rejected(rejected::RejectedArgs),
    /// Compare a platform's orders and refunds with what was applied; send what is missing.
    Reconcile(reconcile::ReconcileArgs),
    /// Dead-letter queues: list, redrive.
    Dlq(dlq::DlqArgs),
    /// Bring members and balances over from another programme.
    Import(import::ImportArgs),
    /// Check every member against its ledger and each program against its books; exit
    /// status 1 on any violation.
    Audit(audit::AuditArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    if let Command::Audit(args) = cli.command {
        return audit::run(args).unwrap_or_else(|message| {
            eprintln!("loyalty: {message}");
            ExitCode::from(2)
        });
    }
    if let Command::Reconcile(args) = cli.command {
        return reconcile::run(args).unwrap_or_else(|message| {
            eprintln!("loyalty: {message}");
            ExitCode::from(2)
        });
    }
    if let Command::Import(args) = cli.command {
        return import::run(args).unwrap_or_else(|message| {
            eprintln!("loyalty: {message}");
            ExitCode::from(2)
        });
    }
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Token(args) => token::run(&args),
        Command::Jobs(args) => jobs::run(args),
        Command::Campaign(args) => campaign::run(args),
        Command::Report(args) => report::run(args),
        Command::Member(args) => member::run(args),
        Command::Rejected(args) => rejected::run(args),
        Command::Dlq(args) => dlq::run(args),
        Command::Audit(_) | Command::Import(_) | Command::Reconcile(_) => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("loyalty: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(loyalty_core::telemetry::filter());
    match format {
        LogFormat::Json => registry.with(layer.json()).init(),
        LogFormat::Text => registry.with(layer).init(),
    }
}
