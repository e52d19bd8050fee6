//! `loyalty outbox list|resend`: the messages that follow from committed changes on their way
//! to the queues. Most ride along the ledger entry of their commit and the table's stream
//! relays them; the stream keeps records for 24 hours, so after a longer relay outage an
//! operator writes the messages of that window back into the outbox, and the relay sends them.
//! Messages that wait as outbox items were shown to the relay once, when written; they are
//! shown again (an update the stream reports).

use std::io::IsTerminal;
use std::ops::Range;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use loyalty_core::ports::{OutboxMessage, Store, StoreError};
use serde_json::json;

use crate::stores::{runtime, StoreArgs};

#[derive(Debug, Args)]
pub struct OutboxArgs {
    #[command(subcommand)]
    command: OutboxCommand,
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// The messages waiting in the outbox, and those carried by the entries recorded in the
    /// window.
    List(Window),
    /// Show every waiting message to the relay again, and write the messages carried by the
    /// entries recorded in the window back into the outbox, for the relay to send. A carried
    /// message that did reach its queue goes again: the consumers of the earn and tier queues
    /// skip what they have applied, but the brand may receive a notice twice, so give the
    /// window of the outage.
    Resend(Window),
}

#[derive(Debug, Args)]
struct Window {
    #[command(flatten)]
    store: StoreArgs,
    /// Entries recorded at or after this time (RFC 3339, e.g. 2026-11-30T08:00:00Z).
    #[arg(long)]
    since: DateTime<Utc>,
    /// Entries recorded before this time; now when absent.
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    /// At most this many messages.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl Window {
    fn recorded(&self) -> Result<Range<DateTime<Utc>>, String> {
        let until = self.until.unwrap_or_else(Utc::now);
        if until <= self.since {
            return Err(format!(
                "--until ({until}) must be after --since ({})",
                self.since
            ));
        }
        Ok(self.since..until)
    }
}

pub fn run(args: OutboxArgs) -> Result<(), String> {
    runtime()?.block_on(async move {
        match args.command {
            OutboxCommand::List(w) => list(w).await,
            OutboxCommand::Resend(w) => resend(w).await,
        }
    })
}

async fn carried(w: &Window) -> Result<(std::sync::Arc<dyn Store>, Vec<OutboxMessage>), String> {
    let recorded = w.recorded()?;
    let store = w.store.open().await?.store();
    let found = store
        .carried(recorded, w.max as usize)
        .await
        .map_err(|e| e.to_string())?;
    Ok((store, found))
}

async fn list(w: Window) -> Result<(), String> {
    let (store, carried) = carried(&w).await?;
    let waiting = store
        .outbox(w.max as usize)
        .await
        .map_err(|e| e.to_string())?;
    if w.json {
        let doc = json!({"waiting": waiting, "carried": carried});
        return print_json(&doc);
    }
    for (state, messages) in [("waiting", &waiting), ("carried", &carried)] {
        for m in messages {
            println!(
                "{state}  {}  {}  {}",
                m.queue.as_str(),
                m.envelope.kind,
                m.key()
            );
        }
    }
    println!(
        "outbox: waiting={} carried={}",
        waiting.len(),
        carried.len()
    );
    Ok(())
}

async fn resend(w: Window) -> Result<(), String> {
    let (store, carried) = carried(&w).await?;
    // Read before the carried ones are written back, which the stream shows anyway.
    let waiting = store
        .outbox(w.max as usize)
        .await
        .map_err(|e| e.to_string())?;
    // A carried message already written back waits, and is woken with the others.
    let waiting_keys: std::collections::HashSet<String> =
        waiting.iter().map(OutboxMessage::key).collect();
    let carried: Vec<OutboxMessage> = carried
        .into_iter()
        .filter(|m| !waiting_keys.contains(&m.key()))
        .collect();
    let total = waiting.len() + carried.len();
    let bar = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template("{bar:30} outbox: {pos}/{len} shown to the relay ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let stopped = |e: StoreError, done: u64| {
        format!("{e} ({done} of {total} shown to the relay; run the command again)")
    };
    for message in &waiting {
        store
            .wake(message)
            .await
            .map_err(|e| stopped(e, bar.position()))?;
        bar.inc(1);
    }
    for message in &carried {
        // Written under the message's own key: a second run leaves one copy.
        store
            .enqueue(message)
            .await
            .map_err(|e| stopped(e, bar.position()))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    if w.json {
        return print_json(&json!({"woken": waiting.len(), "resent": carried.len()}));
    }
    println!("outbox: woken={} resent={}", waiting.len(), carried.len());
    Ok(())
}

fn print_json(doc: &serde_json::Value) -> Result<(), String> {
    println!(
        "{}",
        serde_json::to_string_pretty(doc).map_err(|e| e.to_string())?
    );
    Ok(())
}
