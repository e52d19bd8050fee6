//! `loyalty dlq list|redrive`: the messages a queue gave up on, and their way back. Locally
//! the dead letters of `loyalty serve`'s queue (`--db`); in AWS the SQS dead-letter queues
//! (`--queue-url` and `--dead-letter-url`, credentials from the environment).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};
use loyalty_core::ports::{DeadLetters, QueueName};
use loyalty_core::queue::local::LocalQueue;
use loyalty_core::queue::sqs_fifo::{QueuePair, SqsDeadLetters};
use loyalty_core::store::sqlite::SqliteStore;
use serde_json::json;

use crate::stores::runtime;

#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// The dead letters of a queue, left where they are.
    List(Where),
    /// Move dead letters back to their queue, to be processed again (once: events keep their
    /// ids).
    Redrive(Where),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Earn,
    Tier,
}

#[derive(Debug, Args)]
struct Where {
    #[arg(long, value_enum)]
    queue: Which,
    /// SQLite database file of `loyalty serve`.
    #[arg(long, default_value = "loyalty.db")]
    db: PathBuf,
    /// The SQS queue (its URL) instead of --db; with --dead-letter-url.
    #[arg(long, requires = "dead_letter_url")]
    queue_url: Option<String>,
    /// The SQS dead-letter queue of --queue-url.
    #[arg(long, requires = "queue_url")]
    dead_letter_url: Option<String>,
    /// At most this many messages.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: DlqArgs) -> Result<(), String> {
    runtime()?.block_on(async move {
        match args.command {
            DlqCommand::List(w) => list(w).await,
            DlqCommand::Redrive(w) => redrive(w).await,
        }
    })
}

impl Where {
    fn queue(&self) -> QueueName {
        match self.queue {
            Which::Earn => QueueName::Earn,
            Which::Tier => QueueName::Tier,
        }
    }

    async fn open(&self) -> Result<Arc<dyn DeadLetters>, String> {
        if let (Some(queue_url), Some(dead_letter_url)) = (&self.queue_url, &self.dead_letter_url) {
            let config = loyalty_core::aws::sdk_config(None).await;
            let pair = QueuePair {
                queue_url: queue_url.clone(),
                dead_letter_url: dead_letter_url.clone(),
            };
            let letters = SqsDeadLetters::new(
                aws_sdk_sqs::Client::new(&config),
                HashMap::from([(self.queue(), pair)]),
            );
            // URLs given by hand: the queue must be the one these dead letters came from.
            letters
                .verify_pair(self.queue())
                .await
                .map_err(|e| e.to_string())?;
            return Ok(Arc::new(letters));
        }
        if !self.db.exists() {
            return Err(format!("{} does not exist", self.db.display()));
        }
        let store = SqliteStore::open_made(&self.db).map_err(|e| e.to_string())?;
        Ok(Arc::new(LocalQueue::new(store, 1)))
    }
}

async fn list(w: Where) -> Result<(), String> {
    let queue = w.queue();
    let letters = w.open().await?;
    let count = letters
        .dead_letter_count(queue)
        .await
        .map_err(|e| e.to_string())?;
    let found = letters
        .dead_letters(queue, w.max as usize)
        .await
        .map_err(|e| e.to_string())?;
    if w.json {
        let doc = json!({"queue": queue.as_str(), "count": count, "messages": found});
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    for m in &found {
        let at =
            m.at.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default();
        println!(
            "{at}  {}  attempts={}  {}",
            m.id,
            m.attempts,
            m.error.as_deref().unwrap_or("")
        );
    }
    println!("dlq: queue={} count={count}", queue.as_str());
    Ok(())
}

async fn redrive(w: Where) -> Result<(), String> {
    let queue = w.queue();
    let letters = w.open().await?;
    let before = letters
        .dead_letter_count(queue)
        .await
        .map_err(|e| e.to_string())?;
    let moved = letters
        .redrive(queue, w.max as usize)
        .await
        .map_err(|e| e.to_string())?;
    if w.json {
        let doc = json!({"queue": queue.as_str(), "before": before, "redriven": moved});
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?
        );
    } else {
        println!("dlq: queue={} redriven={moved} of {before}", queue.as_str());
    }
    Ok(())
}
