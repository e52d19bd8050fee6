//! `loyalty member export`: everything held about one member as one JSON document, written as
//! it is read; `loyalty member merge`: two members who are one person become one; `loyalty
//! member link`: an identity leads to a member.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use futures_util::StreamExt;

use crate::report::program_of;
use crate::stores::{runtime, StoreArgs};

#[derive(Debug, Args)]
pub struct MemberArgs {
    #[command(subcommand)]
    command: MemberCommand,
}

#[derive(Debug, Subcommand)]
enum MemberCommand {
    /// Profile, account, identities, orders, redemptions, coupons, campaign assignments and
    /// the whole ledger of a member, as JSON.
    Export(ExportArgs),
    /// Merge another member into SURVIVOR: points with their expiry dates, pending points,
    /// tier history, identities, orders and redemptions. Asked again, changes nothing.
    Merge(MergeArgs),
    /// Link an identity (a platform's customer id, an email, an app login) to MEMBER: its
    /// later events and the app's tokens of it reach MEMBER. Asked again, changes nothing.
    Link(LinkArgs),
    /// Erase a member's personal data: points forfeited, identities, orders, redemptions and
    /// events that name it deleted, the ledger's amounts kept under a pseudonym.
    Erase(EraseArgs),
    /// Suspend a member: its events wait and it redeems nothing until resumed.
    Suspend(SuspendArgs),
    /// Resume a suspended member: the events that waited are applied, or cancelled with
    /// `--cancel-events` (kept as rejected events).
    Resume(SuspendArgs),
}

#[derive(Debug, Args)]
struct EraseArgs {
    /// The member id, or an identity linked to it.
    member: String,
    /// Why (kept with the pseudonymous record).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    store: StoreArgs,
    #[arg(long)]
    program: Option<String>,
}

#[derive(Debug, Args)]
struct SuspendArgs {
    /// The member id, or an identity linked to it.
    member: String,
    /// Why (kept with the suspension, or on the cancelled events).
    #[arg(long)]
    reason: String,
    /// On resume: cancel the events that waited instead of applying them.
    #[arg(long)]
    cancel_events: bool,
    #[command(flatten)]
    store: StoreArgs,
    #[arg(long)]
    program: Option<String>,
}

#[derive(Debug, Args)]
struct MergeArgs {
    /// The member who remains (an id, or an identity linked to it).
    survivor: String,
    /// The member merged into the survivor (an id, or an identity linked to it).
    #[arg(long)]
    from: String,
    /// Why (kept on both ledgers).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    store: StoreArgs,
    #[arg(long)]
    program: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct LinkArgs {
    /// The member id, or an identity linked to it.
    member: String,
    /// The identity's kind: a platform (`shopify`, `pos`...), `email` or `app`.
    #[arg(long)]
    kind: String,
    /// The identity: the platform's customer id, the address, or the app token's subject.
    #[arg(long)]
    value: String,
    #[command(flatten)]
    store: StoreArgs,
    #[arg(long)]
    program: Option<String>,
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// The member id, or an identity linked to it (`email:ann@example.com`).
    member: String,
    #[command(flatten)]
    store: StoreArgs,
    /// The program (needed only when the store has several).
    #[arg(long)]
    program: Option<String>,
    /// Write to this file instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: MemberArgs) -> Result<(), String> {
    match args.command {
        MemberCommand::Export(args) => runtime()?.block_on(export(args)),
        MemberCommand::Merge(args) => runtime()?.block_on(merge(args)),
        MemberCommand::Link(args) => runtime()?.block_on(link(args)),
        MemberCommand::Erase(args) => runtime()?.block_on(erase(args)),
        MemberCommand::Suspend(args) => runtime()?.block_on(suspension(args, true)),
        MemberCommand::Resume(args) => runtime()?.block_on(suspension(args, false)),
    }
}

/// Who an operator command acts as, on the ledgers it writes.
pub fn operator() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "operator".into())
    )
}

/// The member an argument names: its id, or the member an identity is linked to.
async fn named_member(
    services: &loyalty_core::services::Services,
    program: &str,
    raw: &str,
) -> Result<String, String> {
    let named = loyalty_core::ids::MemberId::parse(raw).map_err(|e| e.to_string())?;
    services
        .canonical_member(program, &named)
        .await
        .map_err(|e| e.to_string())
}

async fn link(args: LinkArgs) -> Result<(), String> {
    let services = args.store.open().await?.services();
    let program = program_of(&services, args.program.as_deref()).await?;
    let member = named_member(&services, &program, &args.member).await?;
    let report = services
        .link_named(&program, &member, &args.kind, &args.value, &operator())
        .await
        .map_err(|e| e.to_string())?;
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

async fn erase(args: EraseArgs) -> Result<(), String> {
    let services = args.store.open().await?.services();
    let program = program_of(&services, args.program.as_deref()).await?;
    let member = named_member(&services, &program, &args.member).await?;
    let report = services
        .erase_member(&program, &member, &args.reason, &operator())
        .await
        .map_err(|e| e.to_string())?;
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

async fn suspension(args: SuspendArgs, suspend: bool) -> Result<(), String> {
    // Resumed events go through the outbox to the running system.
    let services = args.store.open().await?.sending_services();
    let program = program_of(&services, args.program.as_deref()).await?;
    let member = named_member(&services, &program, &args.member).await?;
    let report = if suspend {
        services
            .suspend(&program, &member, &args.reason, &operator())
            .await
    } else {
        let events = match args.cancel_events {
            true => loyalty_core::services::suspension::Waiting::Cancel,
            false => loyalty_core::services::suspension::Waiting::Apply,
        };
        services
            .resume(&program, &member, &args.reason, events, &operator())
            .await
    }
    .map_err(|e| e.to_string())?;
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

async fn merge(args: MergeArgs) -> Result<(), String> {
    // The merge's follow-ups (a tier check) go through the outbox to the running system.
    let services = args.store.open().await?.sending_services();
    let program = program_of(&services, args.program.as_deref()).await?;
    let survivor = named_member(&services, &program, &args.survivor).await?;
    let report = services
        .merge_named(&program, &survivor, &args.from, &args.reason, &operator())
        .await
        .map_err(|e| e.to_string())?;
    if args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        println!("{text}");
    } else if report.repeated {
        println!(
            "{} was merged into {} before; nothing changed (balance {})",
            report.merged, report.survivor, report.balance
        );
    } else {
        println!(
            "merged {} into {}: {} points, {} pending, {} orders, {} redemptions, {} identities; balance {}",
            report.merged,
            report.survivor,
            report.points,
            report.pending,
            report.orders,
            report.redemptions,
            report.identities,
            report.balance
        );
    }
    Ok(())
}

async fn export(args: ExportArgs) -> Result<(), String> {
    let services = args.store.open().await?.services();
    let program = program_of(&services, args.program.as_deref()).await?;
    // An identity (`email:ann@example.com`) names its member, as in the admin routes.
    let canonical = named_member(&services, &program, &args.member).await?;
    let member = loyalty_core::ids::MemberId::parse(&canonical).map_err(|e| e.to_string())?;
    let chunks = services
        .export_member(&program, &member)
        .await
        .map_err(|e| e.to_string())?;
    // A file is written whole or not at all: an export that stops leaves no half document
    // under its name (stdout says it stopped with the exit status).
    let Some(path) = &args.out else {
        let mut out: Box<dyn Write> = Box::new(std::io::stdout().lock());
        return write_export(&mut out, chunks).await;
    };
    let partial = crate::files::partial_of(path);
    let written = async {
        let mut file = std::fs::File::create(&partial)
            .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
        {
            let mut out: Box<dyn Write> = Box::new(&mut file);
            write_export(&mut out, chunks).await?;
        }
        file.sync_all()
            .map_err(|e| format!("cannot write the export: {e}"))
    }
    .await;
    match written {
        Ok(()) => std::fs::rename(&partial, path)
            .map_err(|e| format!("cannot write {}: {e}", path.display())),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

async fn write_export(
    out: &mut Box<dyn Write + '_>,
    chunks: impl futures_util::Stream<Item = Result<String, loyalty_core::ports::StoreError>>,
) -> Result<(), String> {
    let mut out = std::io::BufWriter::new(out);
    let mut chunks = std::pin::pin!(chunks);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| format!("the export stopped: {e}"))?;
        out.write_all(chunk.as_bytes())
            .map_err(|e| format!("cannot write the export: {e}"))?;
    }
    writeln!(out).map_err(|e| format!("cannot write the export: {e}"))?;
    out.flush()
        .map_err(|e| format!("cannot write the export: {e}"))
}
