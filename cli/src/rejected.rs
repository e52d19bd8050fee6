//! `loyalty rejected list|show|replay`: events the engine refused for good, and their replay
//! once the program is mended.

use clap::{Args, Subcommand};
use loyalty_core::services::rejections::RejectedView;

use crate::report::program_of;
use crate::stores::{runtime, StoreArgs};

#[derive(Debug, Args)]
pub struct RejectedArgs {
    #[command(subcommand)]
    command: RejectedCommand,
}

#[derive(Debug, Subcommand)]
enum RejectedCommand {
    /// The rejected events, newest first: id, type, member, when and why.
    List(ListArgs),
    /// One rejected event with its payload.
    Show(OneArgs),
    /// Send a rejected event back to be processed, with its own id (it can never count twice).
    Replay(OneArgs),
}

#[derive(Debug, Args)]
struct Common {
    #[command(flatten)]
    store: StoreArgs,
    /// The program (needed only when the store has several).
    #[arg(long)]
    program: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    common: Common,
    /// At most this many.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    max: u32,
}

#[derive(Debug, Args)]
struct OneArgs {
    /// The event's id.
    id: String,
    #[command(flatten)]
    common: Common,
}

pub fn run(args: RejectedArgs) -> Result<(), String> {
    runtime()?.block_on(async move {
        match args.command {
            RejectedCommand::List(a) => list(a).await,
            RejectedCommand::Show(a) => show(a).await,
            RejectedCommand::Replay(a) => replay(a).await,
        }
    })
}

fn json(value: &impl serde::Serialize) -> Result<String, String> {
    serde_json::to_string_pretty(value).map_err(|e| e.to_string())
}

fn line(e: &RejectedView) -> String {
    format!(
        "{}  {}  {}  {}  [{}]  {}",
        e.rejected_at.format("%Y-%m-%d %H:%M:%S"),
        e.id,
        e.kind.as_deref().unwrap_or("?"),
        e.member.as_deref().unwrap_or("?"),
        e.status,
        e.reason
    )
}

async fn list(args: ListArgs) -> Result<(), String> {
    let services = args.common.store.open().await?.services();
    let program = program_of(&services, args.common.program.as_deref()).await?;
    let mut events = Vec::new();
    let mut cursor: Option<String> = None;
    let max = args.max as usize;
    while events.len() < max {
        let page = services
            .rejected_events(
                &program,
                Some((max - events.len()).min(100)),
                cursor.as_deref(),
            )
            .await
            .map_err(|e| e.to_string())?;
        events.extend(page.events);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    if args.common.json {
        println!("{}", json(&events)?);
    } else {
        for e in &events {
            println!("{}", line(e));
        }
        println!("rejected: {} event(s) of {program}", events.len());
    }
    Ok(())
}

async fn show(args: OneArgs) -> Result<(), String> {
    let services = args.common.store.open().await?.services();
    let program = program_of(&services, args.common.program.as_deref()).await?;
    let event = services
        .rejected_event(&program, &args.id)
        .await
        .map_err(|e| e.to_string())?;
    if args.common.json {
        println!("{}", json(&event)?);
    } else {
        println!("{}", line(&event));
        println!("{}", json(&event.payload)?);
    }
    Ok(())
}

async fn replay(args: OneArgs) -> Result<(), String> {
    let services = args.common.store.open().await?.services();
    let program = program_of(&services, args.common.program.as_deref()).await?;
    let replayed = services
        .replay_rejected(&program, &args.id, &crate::member::operator())
        .await
        .map_err(|e| e.to_string())?;
    if args.common.json {
        println!("{}", json(&replayed)?);
    } else {
        println!(
            "replayed: {} (replay {}), queued; it takes effect once, when processed",
            replayed.id, replayed.replay
        );
    }
    Ok(())
}
