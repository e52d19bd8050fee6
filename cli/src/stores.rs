//! Where an operator command reads: the SQLite file of `loyalty serve` (`--db`) or a deployed
//! DynamoDB table (`--table`, with region, credentials and `AWS_ENDPOINT_URL` from the
//! environment).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use clap::Args;
use loyalty_core::envelope::Envelope;
use loyalty_core::ports::{Queue, QueueError, QueueName, Store, SystemClock};
use loyalty_core::services::Services;
use loyalty_core::store::dynamodb::DynamoStore;
use loyalty_core::store::sqlite::SqliteStore;

#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// SQLite database file (the one `loyalty serve` uses).
    #[arg(long, default_value = "loyalty.db")]
    pub db: PathBuf,
    /// Read a DynamoDB table instead of --db (region, credentials and AWS_ENDPOINT_URL from
    /// the environment).
    #[arg(long)]
    pub table: Option<String>,
}

/// The opened store, as the services see it and as itself (what only one adapter can do).
#[derive(Clone)]
pub enum Opened {
    Sqlite(SqliteStore),
    Dynamo(DynamoStore),
}

impl StoreArgs {
    pub async fn open(&self) -> Result<Opened, String> {
        if let Some(table) = &self.table {
            if table.trim().is_empty() {
                return Err("--table needs the table's name".into());
            }
            // A mistyped endpoint is only warned about by the SDK, which then goes to AWS
            // itself: an operator's writes meant for a test table would reach the account the
            // credentials name.
            if let Ok(url) = std::env::var("AWS_ENDPOINT_URL") {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(format!(
                        "AWS_ENDPOINT_URL {url:?} is not an http:// or https:// URL; fix it, or unset it to reach AWS"
                    ));
                }
            }
            let config = loyalty_core::aws::sdk_config(None).await;
            if config.region().is_none() {
                return Err(
                    "no AWS region for --table: set AWS_REGION (or a profile's region)".into(),
                );
            }
            let client = aws_sdk_dynamodb::Client::new(&config);
            return Ok(Opened::Dynamo(DynamoStore::new(client, table)));
        }
        if !self.db.exists() {
            return Err(format!(
                "{} does not exist (start `loyalty serve --db {}` first, or pass --db or --table)",
                self.db.display(),
                self.db.display()
            ));
        }
        SqliteStore::open_made(&self.db)
            .map(Opened::Sqlite)
            .map_err(|e| e.to_string())
    }
}

impl Opened {
    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            Opened::Sqlite(s) => Arc::new(s.clone()),
            Opened::Dynamo(d) => Arc::new(d.clone()),
        }
    }

    /// Services for commands that read and never send.
    pub fn services(&self) -> Services {
        Services::new(self.store(), Arc::new(NoQueue), Arc::new(SystemClock))
    }

    /// Services for commands that feed the queues: what they send goes into the outbox, and
    /// the running system (`loyalty serve`'s relay, or the table's stream) relays it.
    pub fn sending_services(&self) -> Services {
        let store = self.store();
        Services::new(
            store.clone(),
            Arc::new(loyalty_core::queue::outbox::OutboxQueue::new(store)),
            Arc::new(SystemClock),
        )
    }
}

/// The queue of a read-only command: sending is a bug, said so.
struct NoQueue;

#[async_trait]
impl Queue for NoQueue {
    async fn send(&self, queue: QueueName, _message: &Envelope) -> Result<(), QueueError> {
        Err(QueueError {
            queue: queue.as_str(),
            message: "this command sends nothing".into(),
            source: None,
        })
    }
}

/// A runtime for one command.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}
