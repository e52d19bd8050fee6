//! `loyalty import balances`: members and their balances brought over from another programme.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use loyalty_core::domain::import::ImportMode;
use loyalty_core::imports::{
    read_balances, read_shopify_orders, BalanceFile, BalanceFormat, ERROR_FILE_ROW_ID,
};
use loyalty_core::services::import::{ImportSummary, RowOrigin, RowOutcome};
use loyalty_core::services::ServiceError;
use serde_json::json;

use crate::report::program_of;
use crate::stores::{runtime, StoreArgs};

/// Rows written at once (each is one member's read and conditional write).
const IN_FLIGHT: usize = 8;

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    command: ImportCommand,
}

#[derive(Debug, Subcommand)]
enum ImportCommand {
    /// Balances from a Smile.io, LoyaltyLion or Yotpo export, or our own CSV. Each row is
    /// applied once: importing the same file again changes nothing.
    Balances(BalanceArgs),
    /// Paid orders from Shopify's order export, as the events their webhooks produce (same
    /// ids): what was applied before is left alone, and a webhook arriving later counts once.
    Orders(OrderArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OrderPlatform {
    Shopify,
}

#[derive(Debug, Args)]
struct OrderArgs {
    /// The CSV file (Shopify admin: Orders > Export).
    file: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
    /// The program (needed only when the store has several).
    #[arg(long)]
    program: Option<String>,
    #[arg(long, value_enum)]
    platform: OrderPlatform,
    /// Say what would be sent, and send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Where the refused orders go, with their reasons (default: FILE.errors.csv).
    #[arg(long)]
    errors: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Smile,
    Loyaltylion,
    Yotpo,
    Csv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Add each row's points to the balance.
    Add,
    /// Make each balance the row's points (the difference is written).
    Set,
}

#[derive(Debug, Args)]
struct BalanceArgs {
    /// The CSV file.
    file: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
    /// The program (needed only when the store has several).
    #[arg(long)]
    program: Option<String>,
    #[arg(long, value_enum)]
    format: Format,
    #[arg(long, value_enum, default_value_t = Mode::Add)]
    mode: Mode,
    /// Say what would change, and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Where the refused rows go, with their reasons (default: FILE.errors.csv).
    #[arg(long)]
    errors: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

/// Exit status: 0 when every row was applied or unchanged, 1 when some were refused (the
/// others were applied), 2 when nothing could be done; for balances, 130 when stopped by
/// Ctrl-C (the rows reached were applied; the others are in the error file).
pub fn run(args: ImportArgs) -> Result<ExitCode, String> {
    match args.command {
        ImportCommand::Balances(args) => runtime()?.block_on(balances(args)),
        ImportCommand::Orders(args) => runtime()?.block_on(orders(args)),
    }
}

async fn orders(args: OrderArgs) -> Result<ExitCode, String> {
    let OrderPlatform::Shopify = args.platform;
    let bytes = std::fs::read(&args.file)
        .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let services = args.store.open().await?.sending_services();
    let program = program_of(&services, args.program.as_deref()).await?;
    let currency = services
        .program(&program)
        .await
        .map_err(|e| e.to_string())?
        .currency;
    let orders = read_shopify_orders(&bytes, currency)
        .map_err(|e| format!("{}: {e}", args.file.display()))?;
    let bar = progress(orders.len() as u64);
    let mut counts: HashMap<&'static str, u64> = HashMap::new();
    let mut refused: Vec<(u64, String, String)> = Vec::new();
    for order in &orders {
        match &order.read {
            Err(reason) => refused.push((order.line, order.name.clone(), reason.clone())),
            Ok(event) => {
                // An order the store could not take comes back `failed`, with its reason, and
                // is refused with the others; the rest of the file still goes.
                let found = services
                    .reconcile_events(&program, vec![event.clone()], args.dry_run)
                    .await
                    .map_err(|e| format!("order {}: {e}", order.name))?;
                for r in found {
                    match r.reason {
                        Some(reason) => refused.push((order.line, order.name.clone(), reason)),
                        None => *counts.entry(r.status).or_default() += 1,
                    }
                }
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let errors_path = args
        .errors
        .clone()
        .unwrap_or_else(|| errors_beside(&args.file));
    if args.dry_run {
        name_refused(
            refused
                .iter()
                .map(|(line, _, reason)| (*line, reason.as_str())),
        );
    }
    let errors_file = if refused.is_empty() || args.dry_run {
        None
    } else {
        crate::files::write_whole(&errors_path, |file| {
            let mut out = csv::Writer::from_writer(file);
            out.write_record(["line", "order", "error"])
                .map_err(|e| e.to_string())?;
            for (line, name, reason) in &refused {
                out.write_record([line.to_string(), name.clone(), reason.clone()])
                    .map_err(|e| e.to_string())?;
            }
            out.flush().map_err(|e| e.to_string())
        })?;
        Some(errors_path.display().to_string())
    };
    // An earlier run's report of refused orders no longer says what is left.
    if refused.is_empty() && !args.dry_run && errors_path.exists() {
        std::fs::remove_file(&errors_path)
            .map_err(|e| format!("{}: {e}", errors_path.display()))?;
        eprintln!(
            "removed {}: every order is imported now",
            errors_path.display()
        );
    }
    let count = |s: &str| counts.get(s).copied().unwrap_or(0);
    let doc = json!({
        "file": args.file.display().to_string(),
        "dry_run": args.dry_run,
        "orders": orders.len(),
        "present": count("present"),
        "missing": count("missing") + count("sent"),
        "sent": count("sent"),
        "refused": refused.len(),
        "errors_file": errors_file,
    });
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?
        );
    } else {
        println!(
            "import: orders={} present={} missing={} sent={} refused={}",
            orders.len(),
            count("present"),
            count("missing") + count("sent"),
            count("sent"),
            refused.len()
        );
        if let Some(path) = &errors_file {
            println!("refused orders, with their reasons: {path}");
        }
    }
    Ok(if refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Why a row that an interrupted import never reached is in its error file.
const STOPPED: &str = "not applied: the import was stopped (Ctrl-C); import this file again";

/// Set by the first Ctrl-C of an import: the rows being written finish, the rest are refused
/// as `STOPPED`, and the summary and the error file are written as for any run. A second
/// Ctrl-C ends the process at once.
#[derive(Clone, Default)]
struct Stop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Stop {
    fn on_ctrl_c() -> Self {
        let stop = Stop::default();
        let flag = stop.0.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            eprintln!("stopping: the rows being written finish, the others go to the error file (Ctrl-C again to stop at once)");
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        });
        stop
    }

    fn stopped(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn balances(args: BalanceArgs) -> Result<ExitCode, String> {
    let stop = Stop::on_ctrl_c();
    let bytes = std::fs::read(&args.file)
        .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let format = match args.format {
        Format::Smile => BalanceFormat::Smile,
        Format::Loyaltylion => BalanceFormat::LoyaltyLion,
        Format::Yotpo => BalanceFormat::Yotpo,
        Format::Csv => BalanceFormat::Csv,
    };
    let mode = match args.mode {
        Mode::Add => ImportMode::Add,
        Mode::Set => ImportMode::Set,
    };
    let file =
        read_balances(format, &bytes).map_err(|e| format!("{}: {e}", args.file.display()))?;
    let services = args.store.open().await?.services();
    let program = program_of(&services, args.program.as_deref()).await?;
    let file_name = args.file.file_name().map_or_else(
        || args.file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let targets = targets(&services, &program, &file).await?;
    let merged = match mode {
        ImportMode::Set => merged_away(&services, &program, &file, &targets).await?,
        ImportMode::Add => HashSet::new(),
    };
    let twice = stated_twice(&file, mode, &targets, &merged);
    let bar = progress(file.rows.len() as u64);
    let dry = loyalty_core::services::import::DryRun::default();
    // Rows of one member go in the file's order (a debit after its credit); members in parallel.
    let applied: Vec<Vec<(usize, RowOutcome)>> =
        futures_util::stream::iter(by_member(&file, &targets))
            .map(|group| {
                let services = &services;
                let program = &program;
                let file_name = &file_name;
                let twice = &twice;
                let bar = &bar;
                let file = &file;
                let args = &args;
                let dry = &dry;
                let stop = &stop;
                async move {
                    let mut outcomes = Vec::with_capacity(group.len());
                    for index in group {
                        if stop.stopped() {
                            let reason = STOPPED.to_string();
                            outcomes.push((index, RowOutcome::Refused { reason }));
                            bar.inc(1);
                            continue;
                        }
                        let row = &file.rows[index];
                        let origin = RowOrigin {
                            file_name,
                            digest: &file.digest,
                            line: row.line,
                            content: &row.content,
                            mode,
                            dry_run: args.dry_run.then_some(dry),
                        };
                        let outcome = apply_row(services, program, &origin, row, twice).await;
                        bar.inc(1);
                        outcomes.push((index, outcome));
                    }
                    outcomes
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
    let mut outcomes: Vec<Option<RowOutcome>> = file.rows.iter().map(|_| None).collect();
    for (index, outcome) in applied.into_iter().flatten() {
        outcomes[index] = Some(outcome);
    }
    let outcomes: Vec<RowOutcome> = outcomes.into_iter().flatten().collect();
    bar.finish_and_clear();
    // Stopped when a row was left for it: a Ctrl-C after the last row changed nothing.
    let stopped = outcomes
        .iter()
        .any(|o| matches!(o, RowOutcome::Refused { reason } if reason == STOPPED));
    let mut summary = ImportSummary::default();
    for outcome in &outcomes {
        summary.count(outcome);
    }
    let errors_path = args
        .errors
        .clone()
        .unwrap_or_else(|| errors_beside(&args.file));
    if args.dry_run {
        let refused = file
            .rows
            .iter()
            .zip(&outcomes)
            .filter_map(|(row, outcome)| match outcome {
                RowOutcome::Refused { reason } => Some((row.line, reason.as_str())),
                _ => None,
            });
        name_refused(refused);
    }
    // A dry run writes nothing, the error file included (it may be the file being mended).
    let errors_file = if summary.refused > 0 && !args.dry_run {
        write_errors(&errors_path, &file, &outcomes)?;
        Some(errors_path.display().to_string())
    } else {
        None
    };
    // An earlier run's refused rows were applied this time: its error file is of no more use
    // (imported, its rows would be found imported before).
    if summary.refused == 0 && !args.dry_run && errors_path.exists() {
        std::fs::remove_file(&errors_path)
            .map_err(|e| format!("{}: {e}", errors_path.display()))?;
        eprintln!(
            "removed {}: every row is applied now, nothing is left to import from it",
            errors_path.display()
        );
    }
    report(&args, &summary, errors_file.as_deref(), stopped)?;
    Ok(if stopped {
        ExitCode::from(130)
    } else if summary.refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One row applied, or refused with its reason: a bad cell, a member stated twice with
/// `--mode set`, or a row the store could not take (busy, unreadable), to be imported again,
/// while the rest of the file is applied and counted.
async fn apply_row(
    services: &loyalty_core::services::Services,
    program: &str,
    origin: &RowOrigin<'_>,
    row: &loyalty_core::imports::BalanceRow,
    twice: &HashMap<u64, u64>,
) -> RowOutcome {
    match (&row.read, twice.get(&row.line)) {
        (Err(reason), _) => RowOutcome::Refused {
            reason: reason.clone(),
        },
        (Ok(_), Some(first)) => RowOutcome::Refused {
            reason: format!(
                "the same member as row {first}: with --mode set a balance is stated once"
            ),
        },
        (Ok(data), None) => services
            .import_balance(program, "import", origin, data)
            .await
            .unwrap_or_else(|e| RowOutcome::Refused {
                reason: match e {
                    ServiceError::Invalid { .. } | ServiceError::Conflict { .. } => e.to_string(),
                    e => format!("not applied, import the row again: {e}"),
                },
            }),
    }
}

/// The member each row names as the store stands before the file is applied (see
/// `Services::import_target`), read side by side.
async fn targets(
    services: &loyalty_core::services::Services,
    program: &str,
    file: &BalanceFile,
) -> Result<Vec<Option<String>>, String> {
    futures_util::stream::iter(&file.rows)
        .map(|row| async move {
            match &row.read {
                Ok(data) => services.import_target(program, data).await,
                Err(_) => Ok(None),
            }
        })
        .buffered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot read the rows' members: {e}"))
}

/// The rows (indexes) that name a member merged into their target: in set mode they state no
/// balance (`Services::names_merged_away`), and the survivor's own row is not a second one.
async fn merged_away(
    services: &loyalty_core::services::Services,
    program: &str,
    file: &BalanceFile,
    targets: &[Option<String>],
) -> Result<HashSet<usize>, String> {
    let checks = futures_util::stream::iter(file.rows.iter().zip(targets).enumerate())
        .map(|(index, (row, target))| async move {
            match (&row.read, target) {
                (Ok(data), Some(target)) => services
                    .names_merged_away(program, data, target)
                    .await
                    .map(|merged| merged.then_some(index)),
                _ => Ok(None),
            }
        })
        .buffered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    checks
        .into_iter()
        .filter_map(Result::transpose)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot read the rows' members: {e}"))
}

/// The rows' indexes grouped so that rows which may be one member's (they share its id or its
/// email as written, or name the same member in the store: `targets`) are in one group, each
/// group in the file's order; a row that could not be read is a group of its own.
fn by_member(file: &BalanceFile, targets: &[Option<String>]) -> Vec<Vec<usize>> {
    // Each row points at a row of its group (a union-find over the rows).
    let mut parent: Vec<usize> = (0..file.rows.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut first_with: HashMap<(u8, &str), usize> = HashMap::new();
    for (index, row) in file.rows.iter().enumerate() {
        let Ok(data) = &row.read else { continue };
        for key in row_keys(data, targets.get(index)).into_iter().flatten() {
            match first_with.get(&key) {
                Some(&other) => {
                    let (a, b) = (root(&mut parent, index), root(&mut parent, other));
                    parent[a.max(b)] = a.min(b);
                }
                None => {
                    first_with.insert(key, index);
                }
            }
        }
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of: HashMap<usize, usize> = HashMap::new();
    for index in 0..file.rows.len() {
        let r = root(&mut parent, index);
        let g = *group_of.entry(r).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(index);
    }
    groups
}

/// What a row names its member by: its id and its email as written (a later row may name it by
/// the email this one links), and the member as the store resolves it (`targets`).
fn row_keys<'a>(
    data: &'a loyalty_core::imports::RowData,
    target: Option<&'a Option<String>>,
) -> [Option<(u8, &'a str)>; 3] {
    [
        data.member.as_deref().map(|m| (0, m)),
        data.email.as_deref().map(|e| (1, e)),
        target.and_then(Option::as_deref).map(|t| (2, t)),
    ]
}

/// With `--mode set`, the rows that name a member already named by an earlier row (as written,
/// or as the store resolves it): which balance to reach would depend on the order rows are
/// written in. A row naming a member merged away (`merged`) states none.
fn stated_twice(
    file: &BalanceFile,
    mode: ImportMode,
    targets: &[Option<String>],
    merged: &HashSet<usize>,
) -> HashMap<u64, u64> {
    let mut twice = HashMap::new();
    if mode == ImportMode::Add {
        return twice;
    }
    let mut first: HashMap<(u8, &str), u64> = HashMap::new();
    for (index, row) in file.rows.iter().enumerate() {
        let Ok(data) = &row.read else { continue };
        if merged.contains(&index) {
            continue;
        }
        let keys = row_keys(data, targets.get(index));
        let earlier = keys.iter().flatten().find_map(|k| first.get(k).copied());
        match earlier {
            Some(line) => {
                twice.insert(row.line, line);
            }
            None => {
                for key in keys.into_iter().flatten() {
                    first.insert(key, row.line);
                }
            }
        }
    }
    twice
}

fn progress(rows: u64) -> ProgressBar {
    let bar = ProgressBar::new(rows).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows ({per_sec}, {eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

fn errors_beside(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".errors.csv");
    PathBuf::from(name)
}

/// The refused rows as they were, after their line and the reason: fix them and import the
/// error file itself.
fn write_errors(path: &Path, file: &BalanceFile, outcomes: &[RowOutcome]) -> Result<(), String> {
    crate::files::write_whole(path, |out| write_error_rows(out, file, outcomes))
}

/// How many refused rows a dry run names on stderr (all are counted).
const REFUSED_NAMED: usize = 20;

/// A dry run's refused rows, on stderr: it writes no error file.
fn name_refused<'a>(refused: impl Iterator<Item = (u64, &'a str)>) {
    let mut more = 0;
    for (i, (line, reason)) in refused.enumerate() {
        if i < REFUSED_NAMED {
            eprintln!("would refuse line {line}: {reason}");
        } else {
            more += 1;
        }
    }
    if more > 0 {
        eprintln!("... and {more} more rows would be refused");
    }
}

fn write_error_rows(
    out: &mut std::fs::File,
    file: &BalanceFile,
    outcomes: &[RowOutcome],
) -> Result<(), String> {
    let cannot = |e: &dyn std::fmt::Display| e.to_string();
    let mut out = csv::Writer::from_writer(out);
    // The rows' ids go with them: imported, the error file's rows are the same rows.
    let id_at = file
        .header
        .iter()
        .position(|h| h.trim().eq_ignore_ascii_case(ERROR_FILE_ROW_ID));
    // An error file imported again: its own line and error columns give way to this run's.
    let earlier = |i: usize| {
        id_at.is_some()
            && ["line", "error"]
                .iter()
                .any(|c| file.header[i].trim().eq_ignore_ascii_case(c))
    };
    let kept: Vec<usize> = (0..file.header.len()).filter(|&i| !earlier(i)).collect();
    let mut header = vec!["line".to_string(), "error".to_string()];
    if id_at.is_none() {
        header.push(ERROR_FILE_ROW_ID.to_string());
    }
    header.extend(kept.iter().map(|&i| file.header[i].clone()));
    out.write_record(&header).map_err(|e| cannot(&e))?;
    for (row, outcome) in file.rows.iter().zip(outcomes) {
        if let RowOutcome::Refused { reason } = outcome {
            let mut record = vec![row.line.to_string(), reason.clone()];
            if id_at.is_none() {
                record.push(row.content.clone());
            }
            record.extend(
                kept.iter()
                    .map(|&i| row.cells.get(i).cloned().unwrap_or_default()),
            );
            out.write_record(&record).map_err(|e| cannot(&e))?;
        }
    }
    out.flush().map_err(|e| cannot(&e))
}

fn report(
    args: &BalanceArgs,
    s: &ImportSummary,
    errors: Option<&str>,
    stopped: bool,
) -> Result<(), String> {
    if args.json {
        let doc = json!({
            "file": args.file.display().to_string(),
            "dry_run": args.dry_run,
            "stopped": stopped,
            "rows": s.rows,
            "applied": s.applied,
            "unchanged": s.unchanged,
            "refused": s.refused,
            "points_added": s.points_added,
            "points_removed": s.points_removed,
            "errors_file": errors,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    let verb = if args.dry_run {
        "would apply"
    } else {
        "applied"
    };
    println!(
        "import: rows={} {verb}={} unchanged={} refused={} points_added={} points_removed={}",
        s.rows, s.applied, s.unchanged, s.refused, s.points_added, s.points_removed
    );
    if let Some(path) = errors {
        println!("refused rows, with their reasons: {path}");
    }
    if stopped {
        println!("stopped by Ctrl-C: the rows not reached are refused as not applied");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use loyalty_core::imports::{read_balances, BalanceFormat};

    #[test]
    fn rows_that_share_a_member_or_an_email_are_applied_as_one_group_in_order() {
        // GIVEN rows where m-1 and ann@x.co meet on one row, and an unrelated one
        let file = read_balances(
            BalanceFormat::Csv,
            b"member,email,points\n,ann@x.co,5\nm-2,,1\nm-1,,3\nm-1,ann@x.co,4\n,,\nbad,,x\n",
        )
        .expect("read");
        // WHEN they are grouped THEN rows 0, 2 and 3 are one group, in the file's order
        let targets = vec![None; file.rows.len()];
        assert_eq!(
            super::by_member(&file, &targets),
            vec![vec![0, 2, 3], vec![1], vec![4]]
        );
        // AND rows the store finds to be one member's (an id, an email linked to it) are too
        let mut targets = targets;
        targets[1] = Some("m-1".to_string());
        targets[2] = Some("m-1".to_string());
        assert_eq!(
            super::by_member(&file, &targets),
            vec![vec![0, 1, 2, 3], vec![4]]
        );
    }
}
