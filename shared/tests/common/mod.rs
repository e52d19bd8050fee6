//! Helpers shared by the tests: the domain's scenarios and properties, and a queue the
//! service tests play the consumers of.
#![allow(dead_code)]

/// A fixed pseudo-random stream (splitmix64): the same numbers on every run.
pub struct Stream(pub u64);

impl Stream {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A number in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// A queue that keeps what is sent; the test plays the consumers.
#[derive(Default)]
pub struct Recorder(
    pub  std::sync::Mutex<
        Vec<(
            loyalty_core::ports::QueueName,
            loyalty_core::envelope::Envelope,
        )>,
    >,
);

#[async_trait::async_trait]
impl loyalty_core::ports::Queue for Recorder {
    async fn send(
        &self,
        queue: loyalty_core::ports::QueueName,
        message: &loyalty_core::envelope::Envelope,
    ) -> Result<(), loyalty_core::ports::QueueError> {
        self.0.lock().unwrap().push((queue, message.clone()));
        Ok(())
    }
}

use chrono::{DateTime, Duration, TimeZone, Utc};
use loyalty_core::domain::{
    Account, Change, Currency, EventContext, LedgerEntry, OrderRecord, Program, Purchase,
    PurchaseLine,
};

pub fn kr() -> Program {
    Program::from_toml(include_str!("../../../examples/kr-shop.toml")).expect("kr-shop is valid")
}

/// Saves kr-shop as its operator would, in TOML.
pub async fn save_kr_shop(services: &loyalty_core::services::Services) {
    save_kr_shop_with(services, "").await;
}

/// Saves kr-shop with `extra` TOML tables appended (`[safeguards]` ...).
pub async fn save_kr_shop_with(services: &loyalty_core::services::Services, extra: &str) {
    let file = format!(
        "{}\n{extra}",
        include_str!("../../../examples/kr-shop.toml")
    );
    services
        .put_program(
            "kr-shop",
            &file,
            loyalty_core::services::programs::ProgramFormat::Toml,
        )
        .await
        .expect("kr-shop is saved");
}

pub fn us() -> Program {
    Program::from_toml(include_str!("../../../examples/us-shop.toml")).expect("us-shop is valid")
}

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 10, 3, 0, 0).unwrap()
}

pub fn days(n: i64) -> Duration {
    Duration::days(n)
}

pub fn ctx(id: &str, occurred_at: DateTime<Utc>, now: DateTime<Utc>) -> EventContext {
    EventContext::new(id, occurred_at, now)
}

pub fn line(id: &str, quantity: i64, unit_price: i64) -> PurchaseLine {
    PurchaseLine {
        line_id: id.into(),
        sku: format!("SKU-{id}"),
        category: "apparel".into(),
        quantity,
        unit_price,
        discount: 0,
        gift_card: false,
    }
}

pub fn purchase(order_id: &str, currency: Currency, lines: Vec<PurchaseLine>) -> Purchase {
    Purchase {
        order_id: order_id.into(),
        currency,
        lines,
        shipping: 0,
        tax: 0,
    }
}

/// A member's stored state: the account, its order records and every entry written so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub account: Account,
    pub orders: std::collections::BTreeMap<String, OrderRecord>,
    pub ledger: Vec<LedgerEntry>,
}

impl Member {
    pub fn new(program: &Program, at: DateTime<Utc>) -> Member {
        Member {
            account: Account::open(program, "m-1", at),
            orders: Default::default(),
            ledger: Vec::new(),
        }
    }

    /// Commits a change the way a store does: the account is replaced, entries appended, and
    /// an entry id seen before is refused.
    pub fn commit(&mut self, change: Change) {
        for e in &change.entries {
            assert!(
                !self.ledger.iter().any(|old| old.id == e.id),
                "entry id {} written twice",
                e.id
            );
            assert!(!e.provisional, "provisional entries are never stored");
        }
        let mut account = change.account;
        account.version += 1;
        self.account = account;
        self.ledger.extend(change.entries);
    }

    pub fn ledger_points(&self) -> i64 {
        self.ledger.iter().map(|e| e.points).sum()
    }

    pub fn ledger_pending(&self) -> i64 {
        self.ledger.iter().map(|e| e.pending).sum()
    }

    /// The ledger invariant of DESIGN §3 plus the account's own consistency.
    pub fn assert_consistent(&self) {
        assert_eq!(
            self.ledger_points(),
            self.account.balance,
            "Σ points == balance"
        );
        assert_eq!(
            self.ledger_pending(),
            self.account.pending_points(),
            "Σ pending == pending"
        );
        assert_eq!(
            self.account.balance,
            self.account.lots.total() - self.account.debt,
            "balance == lots - debt"
        );
        assert!(self.account.debt >= 0);
        assert!(self.account.debt == 0 || self.account.lots.total() == 0);
        assert!(self.account.lots.iter().all(|l| l.points > 0));
        if let Some(last) = self.ledger.last() {
            assert_eq!(last.balance_after, self.account.balance);
            assert_eq!(last.pending_after, self.account.pending_points());
        }
    }
}

/// The services of `loyalty serve` on `store`: its durable queue (a message is dead-lettered
/// after `max_attempts` deliveries), `clock`, and kr-shop loaded. Returns the queue too, for
/// the tests that play its consumers.
#[cfg(feature = "sqlite")]
pub async fn kr_shop_services(
    store: &loyalty_core::store::sqlite::SqliteStore,
    max_attempts: u32,
    clock: std::sync::Arc<dyn loyalty_core::ports::Clock>,
) -> (
    loyalty_core::queue::local::LocalQueue,
    loyalty_core::services::Services,
) {
    use std::sync::Arc;
    let queue = loyalty_core::queue::local::LocalQueue::new(store.clone(), max_attempts);
    let services = loyalty_core::services::Services::new(
        Arc::new(store.clone()),
        Arc::new(queue.clone()),
        clock,
    );
    save_kr_shop(&services).await;
    (queue, services)
}

/// A DynamoDB client configuration for moto at the endpoint `scripts/test` exports; without it
/// the test fails saying so, never passes silently.
#[cfg(feature = "aws")]
pub fn moto_dynamodb(provider: &'static str) -> aws_sdk_dynamodb::config::Builder {
    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    let endpoint = std::env::var("LOYALTY_TEST_DYNAMODB_ENDPOINT").unwrap_or_else(|_| {
        panic!("LOYALTY_TEST_DYNAMODB_ENDPOINT is not set: run the tests with scripts/test, which starts moto")
    });
    aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, provider))
        .http_client(loyalty_core::aws::http_client())
}

/// The DynamoDB operation a request is about to send (`DynamoDB_20120810.GetItem`...), as an
/// interceptor sees it.
#[cfg(feature = "aws")]
pub fn target<'a>(
    context: &'a aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
) -> &'a str {
    context
        .request()
        .headers()
        .get("x-amz-target")
        .unwrap_or_default()
}

#[cfg(feature = "aws")]
pub mod timeline;

#[cfg(feature = "aws")]
pub mod replica;

/// Replaces a member's stored account body in a database file (a bad manual edit), returning
/// the one it had.
#[cfg(feature = "sqlite")]
pub fn set_account_body(db: &std::path::Path, member: &str, body: &str) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    let old: String = conn
        .query_row(
            "SELECT body FROM accounts WHERE member = ?1",
            [member],
            |row| row.get(0),
        )
        .unwrap();
    conn.execute(
        "UPDATE accounts SET body = ?2 WHERE member = ?1",
        [member, body],
    )
    .unwrap();
    old
}
