//! A durable queue inside the SQLite database, for `loyalty serve`.
//!
//! It gives the local process what SQS FIFO gives the Lambda functions: a message is stored
//! before the sender is answered (so a crash after "202 accepted" loses nothing), each member's
//! messages are delivered in order (one group = program#member), a failed message is retried
//! with backoff and moved to a dead-letter table after `max_attempts`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use rusqlite::{params, Connection, OptionalExtension};

use crate::envelope::Envelope;
use crate::ports::{
    DeadLetter, DeadLetters, OutboxMessage, Queue, QueueError, QueueName, StoreError,
};
use crate::services::earn::Retry;
use crate::store::sqlite::{sql_error, Cached, SqliteStore};

pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "
        CREATE TABLE IF NOT EXISTS queue (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            queue TEXT NOT NULL, id TEXT NOT NULL, grp TEXT NOT NULL, body TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, available_at INTEGER NOT NULL,
            last_error TEXT,
            UNIQUE (queue, id));
        DROP INDEX IF EXISTS queue_groups;
        CREATE INDEX IF NOT EXISTS queue_order ON queue (queue, seq);
        CREATE TABLE IF NOT EXISTS sent (queue TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (queue, id));
        CREATE TABLE IF NOT EXISTS dead_letters (
            queue TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL, attempts INTEGER NOT NULL,
            error TEXT NOT NULL, at TEXT NOT NULL);
        ",
    )
    .map_err(|e| StoreError::failed("cannot create the queue tables", e))?;
    // Files made before ids sent were forgotten after a while have no time of sending.
    crate::store::sqlite::add_column(conn, "sent", "at", "INTEGER")
}

/// How long a dead letter is kept: the dead-letter queues' retention in AWS (14 days).
pub const DEAD_LETTERS_KEPT: chrono::Duration = chrono::Duration::days(14);

/// How long an id sent to a queue is refused again. Past it a platform's redelivery (Shopify
/// retries for two days) is queued again, and the event's marker makes it a duplicate there.
pub const SENT_KEPT: chrono::Duration = chrono::Duration::days(7);

/// One delivery of a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub seq: i64,
    pub queue: QueueName,
    pub body: String,
    /// 1 on the first delivery.
    pub attempts: u32,
}

#[derive(Clone)]
pub struct LocalQueue {
    store: SqliteStore,
    max_attempts: u32,
    /// When a receive last took the heads from the whole queue (ms since the epoch).
    full_scan_at: Arc<AtomicI64>,
    /// The outbox's rows up to this one, left in place because they do not decode, are not
    /// read again by this process (a newer binary, started later, reads them).
    unreadable_through: Arc<AtomicI64>,
    /// The notices this process handed over in relay passes that did not commit (see
    /// [`LocalQueue::relay_outbox`]), by deduplication id.
    handed: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// Notices remembered as handed, at most: past it the memory starts again, and a notice of a
/// pass that never commits may be handed once more (at least once, as ever).
const HANDED_KEPT: usize = 100_000;

/// Whether this process hands the notice `id` for the first time since its last pass that
/// committed; it is remembered as handed either way.
fn first_handing(handed: &std::sync::Mutex<std::collections::HashSet<String>>, id: &str) -> bool {
    let mut handed = handed.lock().unwrap_or_else(|p| p.into_inner());
    if handed.len() >= HANDED_KEPT {
        handed.clear();
    }
    handed.insert(id.to_string())
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Rows read per step when looking for the heads of groups.
const SCAN_PAGE: usize = 512;
/// Rows looked at, at most, by one receive's walk from the front. Past it (one group's backlog
/// fills the front of the queue), the heads are taken group by group from the whole queue
/// instead, so that a member with thousands of messages waiting holds up no one else.
const SCAN_LIMIT: usize = 16_384;
/// How often, at most, a receive takes the heads from the whole queue: a sort of every row
/// waiting, on the one writing thread; in between, receives give what the walk found.
const FULL_SCAN_EVERY_MS: i64 = 1_000;

/// The oldest message of each group, in queue order, that is due: a group whose head is in
/// flight or waiting for a retry gives nothing (its order holds). Reads from the front of the
/// queue in pages through the `(queue, seq)` index, so its cost is the rows before the last head
/// taken, not the backlog.
fn due_heads(
    conn: &Connection,
    queue: QueueName,
    max: usize,
    now: i64,
    full_scan_at: &AtomicI64,
) -> Result<Vec<i64>, StoreError> {
    let failed = |e| sql_error("cannot read the queue", e);
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, grp, available_at FROM queue WHERE queue = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(failed)?;
    let mut groups = std::collections::HashSet::new();
    let (mut heads, mut after, mut scanned) = (Vec::new(), 0i64, 0usize);
    while heads.len() < max && scanned < SCAN_LIMIT {
        let rows: Vec<(i64, String, i64)> = stmt
            .query_map(params![queue.as_str(), after, SCAN_PAGE as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(failed)?
            .collect::<Result<_, _>>()
            .map_err(failed)?;
        let last_page = rows.len() < SCAN_PAGE;
        for (seq, group, available_at) in rows {
            after = seq;
            scanned += 1;
            if groups.insert(group) && available_at <= now {
                heads.push(seq);
                if heads.len() == max {
                    break;
                }
            }
        }
        if last_page {
            return Ok(heads);
        }
    }
    if heads.len() < max && now - full_scan_at.load(Ordering::Relaxed) >= FULL_SCAN_EVERY_MS {
        full_scan_at.store(now, Ordering::Relaxed);
        return every_groups_head(conn, queue, max, now);
    }
    Ok(heads)
}

/// The due heads of every group, oldest first: a pass over the whole queue, for when the front
/// of the queue is one group's backlog.
fn every_groups_head(
    conn: &Connection,
    queue: QueueName,
    max: usize,
    now: i64,
) -> Result<Vec<i64>, StoreError> {
    let failed = |e| sql_error("cannot read the queue", e);
    // SQLite takes `available_at` from the row whose `seq` is the group's MIN.
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq FROM (SELECT MIN(seq) AS seq, available_at FROM queue WHERE queue = ?1
             GROUP BY grp) WHERE available_at <= ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(failed)?;
    let rows = stmt
        .query_map(
            params![queue.as_str(), now, i64::try_from(max).unwrap_or(i64::MAX)],
            |r| r.get(0),
        )
        .map_err(failed)?;
    rows.collect::<Result<_, _>>().map_err(failed)
}

impl LocalQueue {
    /// The database the queue keeps its messages in.
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }

    pub fn new(store: SqliteStore, max_attempts: u32) -> LocalQueue {
        LocalQueue {
            store,
            max_attempts: max_attempts.max(1),
            full_scan_at: Arc::new(AtomicI64::new(0)),
            unreadable_through: Arc::new(AtomicI64::new(0)),
            handed: Arc::default(),
        }
    }

    /// Takes up to `max` messages that are due, at most one per group (the oldest), and hides
    /// them for `visibility` so that a crash mid-processing makes them reappear.
    pub async fn receive(
        &self,
        queue: QueueName,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, StoreError> {
        let hide_ms = i64::try_from(visibility.as_millis()).unwrap_or(i64::MAX);
        let full_scan_at = Arc::clone(&self.full_scan_at);
        let max_attempts = self.max_attempts;
        self.store
            .with(move |conn| {
                let tx = conn.savepoint().map_err(|e| sql_error("cannot begin", e))?;
                let now = now_ms();
                let heads = due_heads(&tx, queue, max, now, &full_scan_at)?;
                let mut deliveries = Vec::with_capacity(heads.len());
                for seq in heads {
                    let (id, body, attempts): (String, String, u32) = tx
                        .prepare_cached(
                            "UPDATE queue SET attempts = attempts + 1, available_at = ?2 WHERE seq = ?1
                             RETURNING id, body, attempts",
                        )
                        .and_then(|mut s| s.query_row(params![seq, now.saturating_add(hide_ms)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))
                        .map_err(|e| sql_error("cannot update the queue", e))?;
                    // Delivered twice as often as it may fail, and its last deliveries never
                    // answered (neither done nor failed): the process stopped while handling it,
                    // each time. It goes to the dead letters, or it would stop every start. Twice:
                    // a restart also counts a delivery of every message then in flight.
                    if attempts > max_attempts.saturating_mul(2) {
                        let error = format!(
                            "delivered {} times without an answer: the process stopped while handling it",
                            attempts - 1
                        );
                        tx.exec(
"INSERT INTO dead_letters (queue, id, body, attempts, error, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                            params![queue.as_str(), id, body, attempts - 1, error, Utc::now().to_rfc3339()],
                        )
                        .map_err(|e| sql_error("cannot dead-letter", e))?;
                        tx.exec("DELETE FROM queue WHERE seq = ?1", params![seq])
                            .map_err(|e| sql_error("cannot delete from the queue", e))?;
                        continue;
                    }
                    deliveries.push(Delivery { seq, queue, body, attempts });
                }
                tx.commit().map_err(|e| sql_error("cannot commit", e))?;
                Ok(deliveries)
            })
            .await
    }

    /// Makes every hidden message visible at once. One `loyalty serve` owns the queue, so at its
    /// start a hidden message is one that a process which died was handling (or waiting to
    /// retry): it is delivered again now rather than after its visibility timeout.
    pub async fn recover_in_flight(&self) -> Result<usize, StoreError> {
        self.store
            .with(|conn| {
                conn.exec(
                    "UPDATE queue SET available_at = ?1 WHERE available_at > ?1",
                    params![now_ms()],
                )
                .map_err(|e| sql_error("cannot recover the queue", e))
            })
            .await
    }

    /// Drops the dead letters kept longer than [`DEAD_LETTERS_KEPT`], as SQS's retention does
    /// in AWS: a dead letter carries its member's event, personal data included, and an
    /// erasure does not reach it. How many went.
    pub async fn forget_old_dead_letters(
        &self,
        now: chrono::DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let before = (now - DEAD_LETTERS_KEPT).to_rfc3339();
        self.store
            .with(move |conn| {
                conn.exec(
                    "DELETE FROM dead_letters WHERE julianday(at) < julianday(?1)",
                    params![before],
                )
                .map_err(|e| sql_error("cannot forget old dead letters", e))
            })
            .await
    }

    /// The message was processed: it is gone.
    pub async fn ack(&self, seq: i64) -> Result<(), StoreError> {
        self.ack_all(vec![seq]).await
    }

    /// These messages were processed: they are gone, in one write.
    pub async fn ack_all(&self, seqs: Vec<i64>) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.store
            .with(move |conn| {
                for seq in &seqs {
                    conn.exec("DELETE FROM queue WHERE seq = ?1", params![seq])
                        .map_err(|e| sql_error("cannot delete from the queue", e))?;
                }
                Ok(())
            })
            .await
    }

    /// Plays the part of the table's stream for the outbox of the same database: moves up to
    /// `limit` waiting messages, oldest first, to their queues in one transaction, so each is
    /// relayed exactly once and a group's order holds. Returns how many were relayed.
    ///
    /// Notices (the notify queue) are handed to `notice` instead of being queued: locally
    /// nothing else consumes them, and a queue round trip (insert, receive, delete) per notice
    /// would cost the single writer as much as the purchase itself. `notice` is called in the
    /// transaction, before it commits, so that a commit that fails leaves them to hand again: at
    /// least once, each named by its deduplication id, as SQS would deliver them. This process
    /// remembers the ones it handed until their pass commits, and hands them no more: a store
    /// that cannot commit for ten minutes (a full disk) handed each notice every second.
    pub async fn relay_outbox(
        &self,
        limit: usize,
        notice: fn(&Envelope),
    ) -> Result<usize, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let unreadable_through = self.unreadable_through.clone();
        let handed = Arc::clone(&self.handed);
        // What the queue dropped as sent before is said once the transaction has committed: one
        // that rolls back relays the same rows again.
        let (programs, dropped, noticed): (Vec<_>, Vec<OutboxMessage>, Vec<String>) = self
            .store
            .with(move |conn| {
                let failed = |e| sql_error("cannot read the outbox", e);
                let rows: Vec<(i64, String, Option<i64>)> = conn
                    .prepare_cached(
                        "SELECT seq, body, at_ms FROM outbox WHERE seq > ?2 ORDER BY seq LIMIT ?1",
                    )
                    .map_err(failed)?
                    .query_map(
                        params![limit, unreadable_through.load(Ordering::Relaxed)],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .map_err(failed)?
                    .collect::<Result<_, _>>()
                    .map_err(failed)?;
                let mut programs: Vec<(String, Option<i64>)> = Vec::with_capacity(rows.len());
                let mut dropped = Vec::new();
                let mut noticed = Vec::new();
                // Whether every row so far was left in place: the front of what remains.
                let mut front = true;
                for (seq, stored, at_ms) in rows {
                    // A row that does not decode (a manual edit, a message of a newer version
                    // after a downgrade) stays for an operator; it never holds back the
                    // messages after it, however many such rows there are.
                    let message: OutboxMessage = match serde_json::from_str(&stored) {
                        Ok(message) => message,
                        Err(e) => {
                            tracing::warn!(seq, error = %crate::telemetry::redact(&e.to_string()), "outbox row does not decode; left in place");
                            if front {
                                unreadable_through.fetch_max(seq, Ordering::Relaxed);
                            }
                            continue;
                        }
                    };
                    front = false;
                    let envelope = &message.envelope;
                    if message.queue == QueueName::Notify {
                        let id = envelope.dedup_id();
                        if first_handing(&handed, &id) {
                            notice(envelope);
                        }
                        noticed.push(id);
                    } else {
                        let body = serde_json::to_string(envelope)
                            .map_err(|e| StoreError::failed("cannot encode the message", e))?;
                        let fresh = enqueue(
                            conn,
                            message.queue,
                            &envelope.dedup_id(),
                            &envelope.group(),
                            &body,
                        )?;
                        if !fresh {
                            dropped.push(message.clone());
                        }
                    }
                    conn.exec("DELETE FROM outbox WHERE seq = ?1", params![seq])
                        .map_err(|e| sql_error("cannot forget a relayed message", e))?;
                    programs.push((message.envelope.program, at_ms));
                }
                Ok((programs, dropped, noticed))
            })
            .await?;
        if !noticed.is_empty() {
            let mut handed = self.handed.lock().unwrap_or_else(|p| p.into_inner());
            for id in &noticed {
                handed.remove(id);
            }
        }
        for message in &dropped {
            dropped_as_sent(message.queue, &message.envelope);
        }
        let now = Utc::now().timestamp_millis();
        for (program, at_ms) in &programs {
            use crate::telemetry::metrics;
            metrics::add(metrics::OUTBOX_RELAYED, &[("program", program)], 1);
            if let Some(at_ms) = at_ms {
                let lag = now.saturating_sub(*at_ms).max(0).unsigned_abs();
                let lag = std::time::Duration::from_millis(lag);
                metrics::observe(metrics::OUTBOX_LAG, &[("program", program)], lag);
            }
        }
        Ok(programs.len())
    }

    /// Forgets up to `max` of the oldest ids sent before `before` (see [`SENT_KEPT`]); returns
    /// how many. Looks at the `max` oldest rows only: ids are dated in the order they were sent.
    pub async fn forget_sent(
        &self,
        before: chrono::DateTime<Utc>,
        max: usize,
    ) -> Result<usize, StoreError> {
        let (before, max) = (
            before.timestamp_millis(),
            i64::try_from(max).unwrap_or(i64::MAX),
        );
        self.store
            .with(move |conn| {
                conn.exec(
                    "DELETE FROM sent WHERE rowid IN (SELECT rowid FROM sent ORDER BY rowid LIMIT ?2)
                     AND (at IS NULL OR at < ?1)",
                    params![before, max],
                )
                .map_err(|e| sql_error("cannot forget the ids sent", e))
            })
            .await
    }

    /// The message failed: retry later with exponential backoff, or dead-letter it once it has
    /// had `max_attempts` deliveries. Returns true when it was dead-lettered.
    pub async fn fail(&self, delivery: &Delivery, error: &str) -> Result<bool, StoreError> {
        self.give_back(delivery, error, true).await
    }

    /// [`LocalQueue::fail`] for a failure of processing. One of a busy store (another process
    /// held the database longer than the busy timeout) is not the message's fault: it is
    /// retried later without counting the delivery (a long import beside `serve` sent good
    /// messages to the dead letters).
    pub async fn retry(&self, delivery: &Delivery, retry: &Retry) -> Result<bool, StoreError> {
        self.give_back(delivery, &retry.message, !retry.transient)
            .await
    }

    async fn give_back(
        &self,
        delivery: &Delivery,
        error: &str,
        counted: bool,
    ) -> Result<bool, StoreError> {
        let (seq, attempts, error) = (delivery.seq, delivery.attempts, error.to_string());
        let max = self.max_attempts;
        self.store
            .with(move |conn| {
                let tx = conn.savepoint().map_err(|e| sql_error("cannot begin", e))?;
                let row: Option<(String, String, String)> = tx
                    .row(
                        "SELECT queue, id, body FROM queue WHERE seq = ?1",
                        params![seq],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()
                    .map_err(|e| sql_error("cannot read the queue", e))?;
                let Some((queue, id, body)) = row else {
                    return Ok(false);
                };
                let dead = counted && attempts >= max;
                if dead {
                    tx.exec(
"INSERT INTO dead_letters (queue, id, body, attempts, error, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![queue, id, body, attempts, error, Utc::now().to_rfc3339()],
                    )
                    .map_err(|e| sql_error("cannot dead-letter", e))?;
                    tx.exec("DELETE FROM queue WHERE seq = ?1", params![seq])
                        .map_err(|e| sql_error("cannot delete from the queue", e))?;
                } else {
                    let backoff_ms = 200i64.saturating_mul(1 << attempts.min(10));
                    let uncounted = i64::from(!counted);
                    tx.exec(
                        "UPDATE queue SET available_at = ?2, last_error = ?3,
                         attempts = MAX(attempts - ?4, 0) WHERE seq = ?1",
                        params![seq, now_ms().saturating_add(backoff_ms), error, uncounted],
                    )
                    .map_err(|e| sql_error("cannot update the queue", e))?;
                }
                tx.commit().map_err(|e| sql_error("cannot commit", e))?;
                Ok(dead)
            })
            .await
    }

    /// Messages waiting (or in flight) on a queue.
    pub async fn depth(&self, queue: QueueName) -> Result<u64, StoreError> {
        self.store
            .with(move |conn| {
                conn.row(
                    "SELECT COUNT(*) FROM queue WHERE queue = ?1",
                    params![queue.as_str()],
                    |r| r.get(0),
                )
                .map_err(|e| sql_error("cannot count the queue", e))
            })
            .await
    }
}

/// Adds a message to a queue unless its id was sent before: like a FIFO queue's
/// deduplication, with a window of [`SENT_KEPT`] instead of SQS's five minutes. `false` when
/// it was.
fn enqueue(
    conn: &Connection,
    queue: QueueName,
    id: &str,
    group: &str,
    body: &str,
) -> Result<bool, StoreError> {
    let fresh = conn
        .exec(
            "INSERT OR IGNORE INTO sent (queue, id, at) VALUES (?1, ?2, ?3)",
            params![queue.as_str(), id, now_ms()],
        )
        .map_err(|e| sql_error("cannot enqueue", e))?;
    if fresh == 1 {
        // Its id forgotten while the message still waits (serve was down for a week, or its
        // group is stuck in retries): the one waiting is the same, and an error here would
        // roll back every relay pass from this row on.
        conn.exec(
            "INSERT OR IGNORE INTO queue (queue, id, grp, body, available_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![queue.as_str(), id, group, body, now_ms()],
        )
        .map_err(|e| sql_error("cannot enqueue", e))?;
    }
    Ok(fresh == 1)
}

/// A message whose id was sent before is dropped, as SQS's deduplication drops it: said so,
/// and an event counted as a duplicate, since no consumer will see it to say so.
fn dropped_as_sent(queue: QueueName, envelope: &Envelope) {
    use crate::telemetry::{event_ref, member_ref, metrics, trace};
    // The ids a processed message's span has, so that a search by member or trace finds it.
    let trace = envelope.trace.as_deref().and_then(trace::root_of);
    tracing::info!(
        queue = queue.as_str(),
        message_id = event_ref(&envelope.dedup_id()),
        event_id = event_ref(&envelope.id),
        kind = envelope.kind,
        program = envelope.program,
        member = member_ref(&envelope.member),
        trace = trace.as_deref().unwrap_or_default(),
        outcome = "duplicate",
        "message sent before; dropped"
    );
    if queue == QueueName::Earn {
        metrics::add(
            metrics::EVENTS,
            &[("program", &envelope.program), ("outcome", "duplicate")],
            1,
        );
    }
}

fn queue_error(queue: QueueName, e: StoreError) -> QueueError {
    QueueError {
        queue: queue.as_str(),
        message: e.to_string(),
        source: Some(Box::new(e)),
    }
}

#[async_trait]
impl DeadLetters for LocalQueue {
    async fn dead_letters(
        &self,
        queue: QueueName,
        max: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        self.store
            .with(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT id, body, error, attempts, at FROM dead_letters WHERE queue = ?1
                         ORDER BY rowid LIMIT ?2",
                    )
                    .map_err(|e| sql_error("cannot read dead letters", e))?;
                let rows = stmt
                    .query_map(params![queue.as_str(), max as i64], |r| {
                        let at: String = r.get(4)?;
                        Ok(DeadLetter {
                            id: r.get(0)?,
                            body: r.get(1)?,
                            error: r.get(2)?,
                            attempts: r.get(3)?,
                            at: chrono::DateTime::parse_from_rfc3339(&at)
                                .ok()
                                .map(|t| t.with_timezone(&Utc)),
                        })
                    })
                    .map_err(|e| sql_error("cannot read dead letters", e))?;
                rows.collect::<Result<_, _>>()
                    .map_err(|e| sql_error("cannot read dead letters", e))
            })
            .await
            .map_err(|e| queue_error(queue, e))
    }

    async fn dead_letter_count(&self, queue: QueueName) -> Result<u64, QueueError> {
        self.store
            .with(move |conn| {
                conn.row(
                    "SELECT COUNT(*) FROM dead_letters WHERE queue = ?1",
                    params![queue.as_str()],
                    |r| r.get(0),
                )
                .map_err(|e| sql_error("cannot count dead letters", e))
            })
            .await
            .map_err(|e| queue_error(queue, e))
    }

    /// Back to the end of their queue, with their attempts counted afresh, in one
    /// transaction: a message is either a dead letter or waiting, never both nor neither.
    async fn redrive(&self, queue: QueueName, max: usize) -> Result<usize, QueueError> {
        self.store
            .with(move |conn| {
                let tx = conn
                    .savepoint()
                    .map_err(|e| sql_error("cannot begin", e))?;
                let letters: Vec<(i64, String, String)> = {
                    let mut stmt = tx
                        .prepare_cached(
                            "SELECT rowid, id, body FROM dead_letters WHERE queue = ?1 ORDER BY rowid LIMIT ?2",
                        )
                        .map_err(|e| sql_error("cannot read dead letters", e))?;
                    let rows = stmt
                        .query_map(params![queue.as_str(), max as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .map_err(|e| sql_error("cannot read dead letters", e))?;
                    rows.collect::<Result<_, _>>()
                        .map_err(|e| sql_error("cannot read dead letters", e))?
                };
                for (rowid, id, body) in &letters {
                    let group = serde_json::from_str::<Envelope>(body)
                        .map(|e| e.group())
                        .unwrap_or_else(|_| id.clone());
                    tx.exec(
"INSERT OR IGNORE INTO queue (queue, id, grp, body, available_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![queue.as_str(), id, group, body, now_ms()],
                    )
                    .map_err(|e| sql_error("cannot redrive", e))?;
                    tx.exec("DELETE FROM dead_letters WHERE rowid = ?1", params![rowid])
                        .map_err(|e| sql_error("cannot redrive", e))?;
                }
                tx.commit().map_err(|e| sql_error("cannot commit", e))?;
                Ok(letters.len())
            })
            .await
            .map_err(|e| queue_error(queue, e))
    }
}

#[async_trait]
impl Queue for LocalQueue {
    async fn send(&self, queue: QueueName, message: &Envelope) -> Result<(), QueueError> {
        let error = |message: String, source: Option<Box<dyn std::error::Error + Send + Sync>>| {
            QueueError {
                queue: queue.as_str(),
                message,
                source,
            }
        };
        let body = serde_json::to_string(message)
            .map_err(|e| error("cannot encode the message".into(), Some(Box::new(e))))?;
        let (id, group) = (message.dedup_id(), message.group());
        let fresh = self
            .store
            .with(move |conn| enqueue(conn, queue, &id, &group, &body))
            .await
            .map_err(|e| error(e.to_string(), Some(Box::new(e))))?;
        if !fresh {
            dropped_as_sent(queue, message);
        }
        Ok(())
    }
}
