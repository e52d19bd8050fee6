//! `loyalty outbox list|resend`: the messages that follow from committed changes on their way
//! to the queues. Most ride along the ledger entry of their commit and the table's stream
//! relays them; the stream keeps records for 24 hours, so after a longer relay outage an
//! operator writes the messages of that window back into the outbox, and the relay sends them.
//! Messages that wait as outbox items were shown to the relay once, when written; they are
//! shown again (an update the stream reports).

use std::collections::HashSet;
use std::io::IsTerminal;
use std::ops::Range;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use loyalty_core::ports::{OutboxMessage, Store};
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

/// What the window finds: the opened store, the messages waiting as outbox items, and those
/// carried by the entries recorded in the window.
struct Found {
    store: Arc<dyn Store>,
    waiting: Vec<OutboxMessage>,
    carried: Vec<OutboxMessage>,
}

async fn found(w: &Window) -> Result<Found, String> {
    let recorded = w.recorded()?;
    let store = w.store.open().await?.store();
    let max = w.max as usize;
    // Waiting first: carried messages written back later are shown by the stream anyway.
    let waiting = store.outbox(max).await.map_err(|e| e.to_string())?;
    let carried = store
        .carried(recorded, max)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Found {
        store,
        waiting,
        carried,
    })
}

async fn list(w: Window) -> Result<(), String> {
    let Found {
        waiting, carried, ..
    } = found(&w).await?;
    if w.json {
        let doc = json!({"waiting": waiting, "carried": carried});
        print_json(&doc)?;
        return cut_short(&w, waiting.len(), carried.len());
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
    cut_short(&w, waiting.len(), carried.len())
}

/// What to do with one message.
#[derive(Clone, Copy)]
enum Step {
    Wake,
    WriteBack,
}

async fn resend(w: Window) -> Result<(), String> {
    let Found {
        store,
        waiting,
        carried,
    } = found(&w).await?;
    let carried_found = carried.len();
    // A carried message already written back waits, and is woken with the others.
    let waiting_keys: HashSet<String> = waiting.iter().map(OutboxMessage::key).collect();
    let carried: Vec<OutboxMessage> = carried
        .into_iter()
        .filter(|m| !waiting_keys.contains(&m.key()))
        .collect();
    let steps: Vec<(Step, &OutboxMessage)> = waiting
        .iter()
        .map(|m| (Step::Wake, m))
        .chain(carried.iter().map(|m| (Step::WriteBack, m)))
        .collect();
    let bar = ProgressBar::new(steps.len() as u64).with_style(
        ProgressStyle::with_template("{bar:30} outbox: {pos}/{len} shown to the relay ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    // One message that cannot be written is reported; the others still go.
    let (mut woken, mut resent, mut failed) = (0, 0, Vec::new());
    for (step, message) in &steps {
        let done = match step {
            Step::Wake => store.wake(message).await,
            // Written under the message's own key: a second run leaves one copy.
            Step::WriteBack => store.enqueue(message).await,
        };
        match (done, step) {
            (Ok(()), Step::Wake) => woken += 1,
            (Ok(()), Step::WriteBack) => resent += 1,
            (Err(e), _) => {
                eprintln!("loyalty: {}: {e}", message.key());
                failed.push(message.key());
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if w.json {
        print_json(&json!({"woken": woken, "resent": resent, "failed": failed}))?;
    } else {
        println!(
            "outbox: woken={woken} resent={resent} failed={}",
            failed.len()
        );
    }
    if !failed.is_empty() {
        return Err(format!(
            "{} of {} messages were not shown to the relay; run the command again",
            failed.len(),
            steps.len()
        ));
    }
    // A window that held more than --max was cut short: say so, never a quiet success.
    cut_short(&w, waiting.len(), carried_found)
}

/// An error when the window reached `--max` (its waiting or its carried messages): the rest
/// was not looked at. Running again changes nothing already done.
fn cut_short(w: &Window, waiting: usize, carried: usize) -> Result<(), String> {
    let max = w.max as usize;
    if waiting >= max || carried >= max {
        return Err(format!(
            "the window holds more than --max {max} messages; only that many were looked at: run again with a larger --max or a narrower window"
        ));
    }
    Ok(())
}

fn print_json(doc: &serde_json::Value) -> Result<(), String> {
    println!(
        "{}",
        serde_json::to_string_pretty(doc).map_err(|e| e.to_string())?
    );
    Ok(())
}
