//! `loyalty member export`: everything held about one member as one JSON document, written as
//! it is read.

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
    let MemberCommand::Export(args) = args.command;
    runtime()?.block_on(export(args))
}

async fn export(args: ExportArgs) -> Result<(), String> {
    let services = args.store.open().await?.services();
    let program = program_of(&services, args.program.as_deref()).await?;
    let named = loyalty_core::ids::MemberId::parse(&args.member).map_err(|e| e.to_string())?;
    // An identity (`email:ann@example.com`) names its member, as in the admin routes.
    let canonical = services
        .canonical_member(&program, &named)
        .await
        .map_err(|e| e.to_string())?;
    let member = loyalty_core::ids::MemberId::parse(&canonical).map_err(|e| e.to_string())?;
    let chunks = services
        .export_member(&program, &member)
        .await
        .map_err(|e| e.to_string())?;
    let mut out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = std::io::BufWriter::new(&mut out);
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
