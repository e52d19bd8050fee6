//! `loyalty`: the whole stack as one local process on an embedded store, and operator commands.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// `loyalty serve` allocates on four threads at once (HTTP, workers, the database writer, the
/// log writer); with the system allocator a sixth of its CPU went to malloc and free
/// (performance.md §3).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod audit;
mod backup;
mod campaign;
mod console;
mod dlq;
mod files;
mod import;
mod jobs;
mod member;
mod outbox;
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
    /// Messages on their way to the queues: list, resend after a relay outage.
    Outbox(outbox::OutboxArgs),
    /// Bring members and balances over from another programme.
    Import(import::ImportArgs),
    /// Check every member against its ledger and each program against its books; exit
    /// status 1 on any violation.
    Audit(audit::AuditArgs),
    /// Copy serve's database to a file that is whole on its own, while serve runs.
    Backup(backup::BackupArgs),
}

/// A `--date`-like argument: `YYYY-MM-DD` with a four-digit year, as the HTTP API takes it.
fn date_arg(text: &str) -> Result<chrono::NaiveDate, String> {
    loyalty_core::domain::calendar::parse_date(text)
        .ok_or_else(|| format!("{text:?} is not a date (YYYY-MM-DD)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        stop_quietly_on_a_closed_pipe();
    }
    fail_writes_past_the_file_size_limit();
    end_clearly_when_the_output_cannot_be_written();
    loyalty_core::telemetry::set_log_key_from_env();
    // Held to the end of main: dropping it writes out what the log thread still holds.
    let _logs = init_logs(cli.log_format, matches!(cli.command, Command::Serve(_)));
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
        Command::Outbox(args) => outbox::run(args),
        Command::Backup(args) => backup::run(&args),
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

/// A report piped into `head` ends as other command-line tools do, at once and quietly, rather
/// than with a panic about a broken pipe: Rust ignores SIGPIPE, so a write to the closed pipe
/// fails, and `println!` panics on it. Sockets are not affected (they are written with
/// MSG_NOSIGNAL). Not for serve, whose standard output may be a pipe that closes.
#[cfg(target_os = "linux")]
fn stop_quietly_on_a_closed_pipe() {
    // SAFETY: restores the default action of one signal, before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(target_os = "linux"))]
fn stop_quietly_on_a_closed_pipe() {}

/// A write past the file size limit (`ulimit -f`, systemd's `LimitFSIZE`) fails as a disk
/// fault that passes once the limit is raised (503, messages retried, the database whole),
/// rather than ending the process with SIGXFSZ in the middle of a commit.
#[cfg(target_os = "linux")]
fn fail_writes_past_the_file_size_limit() {
    // SAFETY: ignores one signal, before any thread is started.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

#[cfg(not(target_os = "linux"))]
fn fail_writes_past_the_file_size_limit() {}

/// Status of a command whose output could not be written (sysexits' EX_IOERR): apart from
/// every status a command gives for what it found (the audit's 1 and 2).
const OUTPUT_FAILED: i32 = 74;

/// A report or a list written to a full disk (`loyalty report ... > file`) ended in a panic
/// with status 101: it ends with a line that says why, and [`OUTPUT_FAILED`]. Other panics are
/// told as before.
fn end_clearly_when_the_output_cannot_be_written() {
    let told = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let failed = info
            .payload_as_str()
            .and_then(|message| message.strip_prefix("failed printing to stdout: "));
        match failed {
            Some(why) => {
                use std::io::Write as _;
                let _ = writeln!(std::io::stderr(), "loyalty: cannot write the output: {why}");
                std::process::exit(OUTPUT_FAILED);
            }
            None => told(info),
        }
    }));
}

/// Logs on standard error. `serve` writes a few lines per event: they go through a thread of
/// their own that writes whatever has gathered in one system call, instead of one call per
/// line on the threads that answer requests and process events (no line is dropped: a full
/// buffer makes the logging thread wait). The other commands write in place, so that their
/// lines and their progress bars keep their order.
fn init_logs(
    format: LogFormat,
    buffered: bool,
) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(loyalty_core::telemetry::filter());
    let (writer, guard) = if buffered {
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(false)
            .finish(std::io::BufWriter::with_capacity(
                1 << 16,
                std::io::stderr(),
            ));
        (
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(writer),
            Some(guard),
        )
    } else {
        (
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
            None,
        )
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(colour)
        .with_writer(writer);
    match format {
        LogFormat::Json => registry.with(layer.json()).init(),
        LogFormat::Text => registry.with(layer).init(),
    }
    guard
}
