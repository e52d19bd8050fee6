//! The embedded store: all state of `loyalty serve` in one SQLite file (or in memory).
//!
//! It mirrors the DynamoDB adapter's semantics, not its layout: every commit is one savepoint,
//! all or nothing, that checks the account version and refuses an existing event marker or
//! ledger entry id. Writes that arrive together share one `BEGIN IMMEDIATE` transaction (see
//! `group_commit`), and each caller is answered once its transaction committed. Another process
//! holding the database (a `loyalty jobs run` next to `serve`) is waited for (busy timeout) and
//! retried, never reported as a failure to the caller unless it persists.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};

use super::group_commit::{Readers, Writer};
use super::{decode_cursor, encode_cursor, ledger_seq};
use crate::domain::books::{BookRow, BooksAdd};
use crate::domain::{Account, DueDates, DueJob, LedgerEntry, OrderRecord};
use crate::ports::{
    parse_rejected_cursor, rejected_cursor, HeadParts, Linked, OrderLinked, ProgramHead,
    RejectedPage, ORDER_LINK,
};
use crate::ports::{
    AliasStore, Assignment, AssignmentWrite, CampaignStore, Commit, CommitError, Consumed,
    Consumption, CounterAdd, Coupon, EventMarker, IdempotencyRecord, LedgerPage, MemberPage,
    MemberState, MemberStore, OutboxMessage, OutboxStore, ParkingStore, ProgramStore, Quota,
    Redemption, RedemptionStore, RejectStore, RejectedEvent, ReplayMark, ScheduleStore, StoreError,
    StoredProgram,
};
use crate::ports::{
    AuditRun, AuditStore, BooksStore, ErasureStore, Forgotten, MemberFile, MemberRecords,
    ParkedEvent, RecordsStore, Walked,
};
use crate::report::VariantCounts;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS programs (
    program TEXT NOT NULL, version INTEGER NOT NULL, file TEXT NOT NULL, updated_at TEXT NOT NULL,
    PRIMARY KEY (program, version));
CREATE TABLE IF NOT EXISTS accounts (
    program TEXT NOT NULL, member TEXT NOT NULL, version INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (program, member));
CREATE TABLE IF NOT EXISTS ledger (
    program TEXT NOT NULL, member TEXT NOT NULL, seq INTEGER NOT NULL, entry_id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (program, member, seq), UNIQUE (program, member, entry_id));
CREATE TABLE IF NOT EXISTS markers (
    program TEXT NOT NULL, member TEXT NOT NULL, marker TEXT NOT NULL, at TEXT NOT NULL,
    PRIMARY KEY (program, member, marker));
CREATE TABLE IF NOT EXISTS orders (
    program TEXT NOT NULL, member TEXT NOT NULL, order_key TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (program, member, order_key));
CREATE TABLE IF NOT EXISTS aliases (
    program TEXT NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL, member TEXT NOT NULL,
    PRIMARY KEY (program, kind, value));
CREATE TABLE IF NOT EXISTS rejected (
    program TEXT NOT NULL, at TEXT NOT NULL, event_id TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rejected_events (
    program TEXT NOT NULL, event_id TEXT NOT NULL, at TEXT NOT NULL,
    replays INTEGER NOT NULL DEFAULT 0, body TEXT NOT NULL,
    PRIMARY KEY (program, event_id));
CREATE INDEX IF NOT EXISTS rejected_events_by_time ON rejected_events (program, at, event_id);
CREATE TABLE IF NOT EXISTS due (
    program TEXT NOT NULL, job TEXT NOT NULL, member TEXT NOT NULL, date TEXT NOT NULL,
    PRIMARY KEY (program, job, member));
CREATE INDEX IF NOT EXISTS due_by_date ON due (program, job, date, member);
CREATE TABLE IF NOT EXISTS redemptions (
    program TEXT NOT NULL, member TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (program, member, id));
CREATE TABLE IF NOT EXISTS coupons (
    program TEXT NOT NULL, code TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (program, code));
CREATE TABLE IF NOT EXISTS idempotency (
    program TEXT NOT NULL, principal TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (program, principal, key));
CREATE TABLE IF NOT EXISTS campaigns (
    program TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (program, id));
CREATE TABLE IF NOT EXISTS assignments (
    program TEXT NOT NULL, member TEXT NOT NULL, campaign TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (program, member, campaign));
CREATE TABLE IF NOT EXISTS counters (
    program TEXT NOT NULL, campaign TEXT NOT NULL, shard INTEGER NOT NULL, variant TEXT NOT NULL,
    assigned INTEGER NOT NULL, converters INTEGER NOT NULL, purchases INTEGER NOT NULL,
    revenue INTEGER NOT NULL, revenue_sq TEXT NOT NULL, points INTEGER NOT NULL,
    PRIMARY KEY (program, campaign, shard, variant));
CREATE TABLE IF NOT EXISTS job_progress (
    program TEXT NOT NULL, job TEXT NOT NULL, progress TEXT NOT NULL,
    PRIMARY KEY (program, job));
CREATE TABLE IF NOT EXISTS parked (
    program TEXT NOT NULL, order_key TEXT NOT NULL, event_id TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (program, order_key, event_id));
CREATE TABLE IF NOT EXISTS books (
    program TEXT NOT NULL, day TEXT NOT NULL, shard INTEGER NOT NULL, name TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (program, day, shard, name));
CREATE TABLE IF NOT EXISTS quotas (
    program TEXT NOT NULL, day TEXT NOT NULL, name TEXT NOT NULL, used INTEGER NOT NULL,
    PRIMARY KEY (program, day, name));
CREATE TABLE IF NOT EXISTS audits (
    program TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (program, id));
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS erased (
    program TEXT NOT NULL, digest TEXT NOT NULL, at_ms INTEGER NOT NULL,
    PRIMARY KEY (program, digest));
";

/// The table every loyalty database has, in every version of the schema.
pub const LOYALTY_TABLE: &str = "programs";

/// The number a loyalty database carries in its header (`PRAGMA application_id`, "LYLT"), set
/// on every file serve opens: another application's file may have a table named programs too.
pub const APPLICATION_ID: i32 = 0x4C59_4C54;

/// Marks a file as a loyalty database, once: a write at every opening would wait for (or fail
/// beside) a running `loyalty serve`. A file that cannot be written (read-only) stays
/// unmarked, and is still known by its programs table.
fn mark_as_ours(conn: &Connection) {
    let marked = conn
        .query_row("PRAGMA application_id", [], |row| row.get::<_, i32>(0))
        .is_ok_and(|id| id == APPLICATION_ID);
    if !marked {
        if let Err(e) = conn.pragma_update(None, "application_id", APPLICATION_ID) {
            tracing::debug!(error = %e, "the database file is left unmarked");
        }
    }
}

/// Whether the file has a programs table with the columns loyalty's has always had.
fn our_programs_table(conn: &Connection) -> rusqlite::Result<bool> {
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?
        .query_map([LOYALTY_TABLE], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    // Those columns at least: a later version may add one.
    Ok(["program", "version", "file", "updated_at"]
        .iter()
        .all(|ours| columns.iter().any(|c| c == ours)))
}

/// Refuses a file that is not a database, or is another application's: its tables would be
/// written beside theirs, and a check of it (an audit) would pass on nothing. Ours is a file
/// with our application id, or (made before the id) with the programs table, or a new one.
pub fn refuse_foreign(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    refuse_unless_ours(conn, path, true)
}

/// [`refuse_foreign`], refusing a file with no table too: a database to copy (`loyalty
/// backup`) is one serve made, not one it may make.
pub fn refuse_unless_made(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    refuse_unless_ours(conn, path, false)
}

fn refuse_unless_ours(conn: &Connection, path: &Path, new: bool) -> Result<(), StoreError> {
    let unreadable = |e: rusqlite::Error| {
        // What a loyalty database is, said only of a file that is not one: a file SQLite
        // cannot open (its directory read-only, no permission) may well be one.
        let hint = match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => {
                " (a loyalty database is a SQLite file that loyalty serve made)"
            }
            _ => "",
        };
        StoreError::failed(format!("cannot read {}: {e}{hint}", path.display()), e)
    };
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .and_then(|mut stmt| {
            stmt.query_map([], |row| row.get(0))?
                .collect::<Result<_, _>>()
        })
        .map_err(unreadable)?;
    let id: i32 = conn
        .query_row("PRAGMA application_id", [], |row| row.get(0))
        .map_err(unreadable)?;
    let ours = match id {
        APPLICATION_ID => true,
        // A first start stopped while it made the schema has the programs table too, with
        // the columns of ours (another application's table of that name has its own).
        0 => (new && tables.is_empty()) || our_programs_table(conn).map_err(unreadable)?,
        _ => false,
    };
    if ours {
        return Ok(());
    }
    let mut named = tables
        .iter()
        .take(5)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if tables.len() > 5 {
        named.push_str(", ...");
    }
    if tables.is_empty() {
        return Err(StoreError::Failed {
            message: format!(
                "{} is an empty database: there is nothing of loyalty's in it (`loyalty serve --db` makes one)",
                path.display()
            ),
            source: None,
        });
    }
    let whose = match id {
        0 => String::new(),
        id => format!(", application id {id:#010x}"),
    };
    Err(StoreError::Failed {
        message: format!(
            "{} is a SQLite database of something else (tables {named}{whose}): give loyalty a file of its own",
            path.display()
        ),
        source: None,
    })
}

/// How long one statement waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Read-only connections beside the writer (a file database only).
const READERS: usize = 3;
/// WAL pages between checkpoints (SQLite's default is 1,000). A checkpoint copies every page the
/// WAL holds back into the file, once however often it changed since the last one: the hot pages
/// of a busy server (accounts, the queue, the books) are copied a tenth as often.
const WAL_CHECKPOINT_PAGES: i64 = 10_000;

/// The SQLite adapter: one writer thread that commits waiting writes together, and readers
/// that see what was committed (see `group_commit`). Cloning shares both.
#[derive(Clone)]
pub struct SqliteStore {
    writer: Arc<Writer>,
    readers: Option<Arc<Readers>>,
    /// Operations run against the database (each one read or one transaction), for the tests
    /// and benchmarks that check a job's cost.
    operations: Arc<std::sync::atomic::AtomicU64>,
}

impl SqliteStore {
    /// Opens (and creates, if needed) a database file: serve's.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_checked(path, refuse_foreign)
    }

    /// Opens a database file serve made, refusing a file with nothing of loyalty's in it (an
    /// empty one): the commands that work on serve's database make none of their own.
    pub fn open_made(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_checked(path, refuse_unless_made)
    }

    fn open_checked(
        path: &Path,
        check: fn(&Connection, &Path) -> Result<(), StoreError>,
    ) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path)
            .map_err(|e| StoreError::failed(format!("cannot open {}: {e}", path.display()), e))?;
        check(&conn, path)?;
        // WAL lets readers (a report, a second CLI) work while serve writes.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| {
                StoreError::failed(format!("cannot enable WAL on {}: {e}", path.display()), e)
            })?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| StoreError::failed("cannot set synchronous", e))?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)
            .map_err(|e| StoreError::failed("cannot set the checkpoint interval", e))?;
        let mut store = SqliteStore::init(conn)?;
        store.readers = Some(Arc::new(Readers::open(path, READERS, BUSY_TIMEOUT)?));
        Ok(store)
    }

    /// Closes the store to writes: every write sent before commits, the write-ahead log is
    /// folded into the file and emptied, so that the file alone is the whole database, and
    /// every write after is refused as a passing failure (503). `loyalty serve` does it as it
    /// stops. A read under way, here or in another process, leaves part of the log.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.writer.close().await
    }

    /// A private database that lives as long as the process (`serve --memory`, tests).
    pub fn memory() -> Result<SqliteStore, StoreError> {
        let conn = Connection::open_in_memory()
            .map_err(|e| StoreError::failed("cannot open an in-memory database", e))?;
        SqliteStore::init(conn)
    }

    fn init(conn: Connection) -> Result<SqliteStore, StoreError> {
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // Every job of a shared commit runs in its own savepoint, whose journal of the pages
        // it changes is a temporary file unless temporary storage is in memory.
        conn.pragma_update(None, "temp_store", "MEMORY")
            .map_err(|e| StoreError::failed("cannot keep temporary storage in memory", e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| StoreError::failed("cannot set the busy timeout", e))?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| StoreError::failed("cannot create the schema", e))?;
        mark_as_ours(&conn);
        keep_old_rejections(&conn)?;
        add_new_columns(&conn)?;
        crate::queue::local::migrate(&conn)?;
        Ok(SqliteStore {
            writer: Arc::new(Writer::start(conn)?),
            readers: None,
            operations: Arc::default(),
        })
    }

    /// Deletes the audit runs kept past [`crate::ports::AUDITS_KEPT_DAYS`] (their reports name
    /// members), as DynamoDB's time to live does. How many went.
    pub async fn forget_old_audits(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let before = (now - chrono::Duration::days(crate::ports::AUDITS_KEPT_DAYS)).to_rfc3339();
        self.with(move |conn| {
            conn.exec(
                "DELETE FROM audits WHERE julianday(coalesce(json_extract(body, '$.finished_at'),
                 json_extract(body, '$.requested_at'))) < julianday(?1)",
                params![before],
            )
            .map_err(|e| sql_error("cannot forget old audits", e))
        })
        .await
    }

    /// Deletes up to `max` of the API idempotency records that expired before `now`: the part
    /// of DynamoDB's time to live. Reads never see an expired one either way. How many went:
    /// fewer than `max` means none is left. It reads the whole table (records live for
    /// different lengths: a request's key a week, a decline's record longer), so serve runs it
    /// hourly.
    pub async fn forget_expired_requests(
        &self,
        now: chrono::DateTime<Utc>,
        max: usize,
    ) -> Result<usize, StoreError> {
        let (now, max) = (now.to_rfc3339(), i64::try_from(max).unwrap_or(i64::MAX));
        self.with(move |conn| {
            conn.exec(
                "DELETE FROM idempotency WHERE rowid IN (
                     SELECT rowid FROM idempotency
                     WHERE julianday(json_extract(body, '$.expires_at')) < julianday(?1) LIMIT ?2)",
                params![now, max],
            )
            .map_err(|e| sql_error("cannot forget expired requests", e))
        })
        .await
    }

    /// How many transactions the writer has committed so far; concurrent writes share them.
    pub fn commits(&self) -> u64 {
        self.writer.commits()
    }

    /// How many operations (reads or transactions) this store has run so far.
    pub fn operations(&self) -> u64 {
        self.operations.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs database work in the writer's next batch; answers once that batch committed.
    pub(crate) async fn with<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.operations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.writer.run(work).await
    }

    /// Runs a read on a reader connection, or on the writer when the database is in memory.
    /// It sees everything committed before it began.
    pub(crate) async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.operations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match &self.readers {
            // In place: a read of a few rows takes less time than handing it to another thread
            // and waking this task again.
            Some(readers) => readers.read(work),
            None => self.writer.run(move |conn| work(conn)).await,
        }
    }
}

/// Rejections recorded before events were kept one record each, in today's form: dated as
/// the records are (milliseconds, `Z`, which pages compare as text), the latest of an event's
/// kept. Only when there are some: a write at every opening would wait for (or fail beside) a
/// running `loyalty serve`, where nothing is to be moved.
fn keep_old_rejections(conn: &Connection) -> Result<(), StoreError> {
    let failed = |e| StoreError::failed("cannot move the rejections of an older version", e);
    let waiting: bool = conn
        .query_row("SELECT EXISTS (SELECT 1 FROM rejected)", [], |row| {
            row.get(0)
        })
        .map_err(failed)?;
    if waiting {
        conn.execute_batch(
            "INSERT OR IGNORE INTO rejected_events (program, event_id, at, body)
                 SELECT program, event_id, COALESCE(strftime('%Y-%m-%dT%H:%M:%fZ', at), at), body
                 FROM rejected ORDER BY julianday(at) DESC;
             DELETE FROM rejected;",
        )
        .map_err(failed)?;
    }
    Ok(())
}

/// Gives a database made before accounts recorded their due dates the column (empty: those
/// accounts have all six dates written at their next commit), and the outbox its time.
fn add_new_columns(conn: &Connection) -> Result<(), StoreError> {
    add_column(conn, "accounts", "due", "TEXT")?;
    // Rows written before the outbox was dated are relayed without a lag to show.
    add_column(conn, "outbox", "at_ms", "INTEGER")
}

/// Adds a column that files made by an earlier version lack.
pub(crate) fn add_column(
    conn: &Connection,
    table: &str,
    column: &str,
    kind: &str,
) -> Result<(), StoreError> {
    let failed = |e| StoreError::failed(format!("cannot add the {column} column to {table}"), e);
    let present = conn
        .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")
        .and_then(|mut s| s.exists(params![table, column]))
        .map_err(failed)?;
    if !present {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))
            .map_err(failed)?;
    }
    Ok(())
}

/// Statements prepared once per connection and kept: parsing SQL was a third of the writer's
/// time when every statement was prepared afresh.
pub(crate) trait Cached {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// Distinct statements a connection keeps prepared (rusqlite keeps 16 by default; a commit
/// alone uses more).
pub(crate) const STATEMENT_CACHE: usize = 256;

/// SQLite's "busy" and "locked" are contention, and a full or failing disk passes once an
/// operator frees space or mends it: those are worth retrying. Everything else is not.
pub(crate) fn sql_error(what: &str, e: rusqlite::Error) -> StoreError {
    match fault_of(&e) {
        SqlFault::Disk(said) => StoreError::DiskFault {
            message: format!("{what}: {said}"),
            source: Some(Box::new(e)),
        },
        SqlFault::Contention => StoreError::transient(what.to_string(), e),
        SqlFault::Lasting => StoreError::failed(what.to_string(), e),
    }
}

/// What kind of failure an SQLite error is, for the store's errors and the writer's batches.
pub(crate) enum SqlFault {
    /// A busy or locked database: passes soon.
    Contention,
    /// A disk that cannot take a write, in words: passes once an operator frees space or
    /// mends it (answered 503 with Retry-After on every route, rather than 500 on some, and a
    /// message's attempt is not counted for it).
    Disk(&'static str),
    Lasting,
}

/// Classifies an SQLite error; a disk fault is counted in `StorageFaults` here, once.
///
/// A disk fault is a full disk, or one that cannot take a write ("disk I/O error" while
/// writing, syncing, truncating or growing a file: a write past the space or the file size
/// allowed is one). Other I/O errors (a read that fails, a page whose check fails) are no disk
/// filling up, and fail as before: a message that meets them goes on towards its dead letter.
pub(crate) fn fault_of(e: &rusqlite::Error) -> SqlFault {
    use rusqlite::ffi;
    let rusqlite::Error::SqliteFailure(failure, _) = e else {
        return SqlFault::Lasting;
    };
    let write_failed = [
        ffi::SQLITE_IOERR_WRITE,
        ffi::SQLITE_IOERR_FSYNC,
        ffi::SQLITE_IOERR_DIR_FSYNC,
        ffi::SQLITE_IOERR_TRUNCATE,
        ffi::SQLITE_IOERR_SHMSIZE,
    ]
    .contains(&failure.extended_code);
    let said = match failure.code {
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => return SqlFault::Contention,
        ErrorCode::DiskFull => "the database's disk is full",
        _ if write_failed => "the database's disk cannot be written (disk I/O error)",
        _ => return SqlFault::Lasting,
    };
    crate::telemetry::metrics::add(crate::telemetry::metrics::STORAGE_FAULTS, &[], 1);
    SqlFault::Disk(said)
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, body: &str) -> Result<T, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(what: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::failed(format!("cannot encode {what}"), e))
}

fn marker_key(marker: &EventMarker) -> String {
    format!("{}#{}", marker.source, marker.event_id)
}

impl SqliteStore {
    /// The newest version of a program, or the one named.
    async fn read_program(
        &self,
        program: &str,
        version: Option<u32>,
    ) -> Result<Option<StoredProgram>, StoreError> {
        let program = program.to_string();
        self.read(move |conn| {
            conn.row(
"SELECT version, file, updated_at FROM programs WHERE program = ?1 AND (?2 IS NULL OR version = ?2) ORDER BY version DESC LIMIT 1",
                params![program, version],
                |row| Ok((row.get::<_, u32>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?)),
            )
            .optional()
            .map_err(|e| sql_error("cannot read the program", e))?
            .map(|(version, file_json, at)| {
                let updated_at = DateTime::parse_from_rfc3339(&at)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| StoreError::Corrupt { key: format!("program {program}"), message: e.to_string() })?;
                Ok(StoredProgram { version, file_json, updated_at })
            })
            .transpose()
        })
        .await
    }
}

#[async_trait]
impl ProgramStore for SqliteStore {
    async fn get_program(&self, program: &str) -> Result<Option<StoredProgram>, StoreError> {
        self.read_program(program, None).await
    }

    /// Three reads of the one file: no round trip to save.
    async fn program_head(
        &self,
        program: &str,
        parts: HeadParts<'_>,
    ) -> Result<ProgramHead, StoreError> {
        let Some(stored) = self.read_program(program, None).await? else {
            return Ok(ProgramHead::default());
        };
        let campaigns = match parts.campaigns {
            true => CampaignStore::campaigns(self, program).await?,
            false => Vec::new(),
        };
        let progress = match parts.job {
            Some(job) => self.job_progress(program, job).await?,
            None => None,
        };
        Ok(ProgramHead {
            program: Some(stored),
            campaigns,
            progress,
        })
    }

    async fn program_versions(
        &self,
        program: &str,
    ) -> Result<Vec<(u32, DateTime<Utc>)>, StoreError> {
        let program = program.to_string();
        self.read(move |conn| {
            let mut statement = conn
                .prepare("SELECT version, updated_at FROM programs WHERE program = ?1 ORDER BY version DESC")
                .map_err(|e| sql_error("cannot read the program versions", e))?;
            let rows = statement
                .query_map(params![program], |row| {
                    Ok((row.get::<_, u32>(0)?, row.get::<_, String>(1)?))
                })
                .map_err(|e| sql_error("cannot read the program versions", e))?;
            let mut versions = Vec::new();
            for row in rows {
                let (version, at) = row.map_err(|e| sql_error("cannot read the program versions", e))?;
                let at = DateTime::parse_from_rfc3339(&at)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| StoreError::Corrupt { key: format!("program {program}"), message: e.to_string() })?;
                versions.push((version, at));
            }
            Ok(versions)
        })
        .await
    }

    async fn program_version(
        &self,
        program: &str,
        version: u32,
    ) -> Result<Option<StoredProgram>, StoreError> {
        self.read_program(program, Some(version)).await
    }

    async fn put_program(
        &self,
        program: &str,
        file_json: &str,
        expected: Option<u32>,
        at: DateTime<Utc>,
    ) -> Result<Option<u32>, StoreError> {
        let (program, file_json) = (program.to_string(), file_json.to_string());
        self.with(move |conn| {
            let tx = conn.savepoint().map_err(|e| sql_error("cannot begin", e))?;
            let current: Option<u32> = tx
                .row(
                    "SELECT MAX(version) FROM programs WHERE program = ?1",
                    params![program],
                    |row| row.get(0),
                )
                .map_err(|e| sql_error("cannot read the program version", e))?;
            if current != expected {
                return Ok(None);
            }
            let version = current.unwrap_or(0) + 1;
            tx.exec(
                "INSERT INTO programs (program, version, file, updated_at) VALUES (?1, ?2, ?3, ?4)",
                params![program, version, file_json, at.to_rfc3339()],
            )
            .map_err(|e| sql_error("cannot save the program", e))?;
            tx.commit()
                .map_err(|e| sql_error("cannot commit the program", e))?;
            Ok(Some(version))
        })
        .await
    }
}

#[async_trait]
impl MemberStore for SqliteStore {
    async fn load_member_with(
        &self,
        program: &str,
        member: &str,
        order_keys: &[String],
        campaigns: &[String],
    ) -> Result<MemberState, StoreError> {
        let (program, member, order_keys, campaigns) = (
            program.to_string(),
            member.to_string(),
            order_keys.to_vec(),
            campaigns.to_vec(),
        );
        self.read(move |conn| {
            let account = conn
                .row(
"SELECT body FROM accounts WHERE program = ?1 AND member = ?2",
                    params![program, member],
                    |row| row.get::<_, String>(0),
                )
                .optional()
                .map_err(|e| sql_error("cannot read the account", e))?
                .map(|body| decode::<Account>(&format!("account {program}/{member}"), &body))
                .transpose()?;
            let mut orders = std::collections::BTreeMap::new();
            for key in &order_keys {
                let body = conn
                    .row(
"SELECT body FROM orders WHERE program = ?1 AND member = ?2 AND order_key = ?3",
                        params![program, member, key],
                        |row| row.get::<_, String>(0),
                    )
                    .optional()
                    .map_err(|e| sql_error("cannot read the order", e))?;
                if let Some(body) = body {
                    orders.insert(key.clone(), decode::<OrderRecord>(&format!("order {key}"), &body)?);
                }
            }
            let mut assignments = std::collections::BTreeMap::new();
            for campaign in &campaigns {
                let found: Option<Assignment> = read_body(
                    conn,
                    "SELECT body FROM assignments WHERE program = ?1 AND member = ?2 AND campaign = ?3",
                    &[&program, &member, campaign],
                    "assignment",
                )?;
                if let Some(a) = found {
                    assignments.insert(campaign.clone(), a);
                }
            }
            Ok(MemberState {
                account,
                orders,
                assignments,
                seen: false,
                ..MemberState::default()
            })
        })
        .await
    }

    async fn commit(&self, commit: Commit) -> Result<(), CommitError> {
        if let Some(refused) = super::unfit(&commit) {
            return Err(refused.into());
        }
        // Encoded here, on the caller's thread: the writer thread is the one serial resource,
        // so it only executes statements.
        let encoded = Encoded::of(&commit)?;
        let commit = Arc::new(commit);
        let outcome = self
            .with(move |conn| {
                let commit = &commit;
                let tx = conn
                    .savepoint()
                    .map_err(|e| sql_error("cannot begin", e))?;
                if let Some(marker) = &commit.marker {
                    let exists: bool = tx
                        .row(
"SELECT EXISTS (SELECT 1 FROM markers WHERE program = ?1 AND member = ?2 AND marker = ?3)",
                            params![commit.program, commit.member, marker_key(marker)],
                            |row| row.get(0),
                        )
                        .map_err(|e| sql_error("cannot read the marker", e))?;
                    if exists {
                        return Ok(Err(Outcome::Duplicate));
                    }
                }
                if let Some(record) = &commit.idempotency {
                    let stored: Option<String> = tx
                        .row(
"SELECT body FROM idempotency WHERE program = ?1 AND principal = ?2 AND key = ?3",
                            params![commit.program, record.principal, record.key],
                            |row| row.get(0),
                        )
                        .optional()
                        .map_err(|e| sql_error("cannot read the idempotency record", e))?;
                    if let Some(body) = stored {
                        let old: IdempotencyRecord = decode("idempotency record", &body)?;
                        // An expired record is gone, as DynamoDB's TTL makes it: the key is free.
                        if old.expires_at > Utc::now() {
                            return Ok(Err(Outcome::Duplicate));
                        }
                        tx.exec(
"DELETE FROM idempotency WHERE program = ?1 AND principal = ?2 AND key = ?3",
                            params![commit.program, record.principal, record.key],
                        )
                        .map_err(|e| sql_error("cannot replace the idempotency record", e))?;
                    }
                }
                let current: Option<(u64, Option<String>)> = tx
                    .row(
"SELECT version, due FROM accounts WHERE program = ?1 AND member = ?2",
                        params![commit.program, commit.member],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()
                    .map_err(|e| sql_error("cannot read the account version", e))?;
                if current.as_ref().map(|(version, _)| *version) != commit.expected_version {
                    return Ok(Err(Outcome::Conflict));
                }
                // A new member has no row in the due-date index yet; an account written before
                // the column existed has rows nobody recorded, so all six are written again.
                let due_before = match current {
                    None => Some(due_column(&DueDates::default())),
                    Some((_, due)) => due,
                };
                let version = encoded.version;
                tx.exec(
"INSERT INTO accounts (program, member, version, body, due) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (program, member) DO UPDATE SET version = excluded.version, body = excluded.body, due = excluded.due",
                    params![commit.program, commit.member, version, encoded.account, encoded.due],
                )
                .map_err(|e| sql_error("cannot write the account", e))?;
                for (i, (entry, body)) in commit.entries.iter().zip(&encoded.entries).enumerate() {
                    let inserted = tx
                        .exec(
"INSERT OR IGNORE INTO ledger (program, member, seq, entry_id, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                            params![commit.program, commit.member, ledger_seq(version, i), entry.id, body],
                        )
                        .map_err(|e| sql_error("cannot write a ledger entry", e))?;
                    if inserted == 0 {
                        // An entry id seen before: the event already had its effect.
                        return Ok(Err(Outcome::Duplicate));
                    }
                }
                if let Some(marker) = &commit.marker {
                    tx.exec(
"INSERT INTO markers (program, member, marker, at) VALUES (?1, ?2, ?3, ?4)",
                        params![commit.program, commit.member, marker_key(marker), Utc::now().to_rfc3339()],
                    )
                    .map_err(|e| sql_error("cannot write the marker", e))?;
                }
                write_due(&tx, &commit.program, &commit.member, &commit.due, due_before.as_deref())?;
                if let Some(code) = &commit.revoke_coupon {
                    if !revoke_coupon(&tx, &commit.program, code)? {
                        return Ok(Err(Outcome::CouponConsumed));
                    }
                }
                if let Some(quota) = &commit.quota {
                    if !count_quota(&tx, &commit.program, quota)? {
                        return Ok(Err(Outcome::OverQuota));
                    }
                }
                write_redemption_items(&tx, commit)?;
                for write in &commit.assignments {
                    if !write_assignment(&tx, &commit.program, &commit.member, write)? {
                        return Ok(Err(Outcome::Conflict));
                    }
                }
                for add in &commit.counters {
                    add_counts(&tx, &commit.program, add)?;
                }
                for (key, body) in &encoded.orders {
                    tx.exec(
"INSERT INTO orders (program, member, order_key, body) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (program, member, order_key) DO UPDATE SET body = excluded.body",
                        params![commit.program, commit.member, key, body],
                    )
                    .map_err(|e| sql_error("cannot write the order", e))?;
                }
                for (key, body) in &encoded.outbox {
                    write_outbox_row(&tx, key, body)?;
                }
                add_books(&tx, &commit.program, &commit.books)?;
                tx.commit().map_err(|e| sql_error("cannot commit", e))?;
                Ok(Ok(()))
            })
            .await?;
        match outcome {
            Ok(()) => Ok(()),
            Err(Outcome::Duplicate) => Err(CommitError::Duplicate),
            Err(Outcome::Conflict) => Err(CommitError::VersionConflict),
            Err(Outcome::CouponConsumed) => Err(CommitError::CouponConsumed),
            Err(Outcome::OverQuota) => Err(CommitError::OverQuota),
        }
    }

    async fn ledger_page(
        &self,
        program: &str,
        member: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<LedgerPage, StoreError> {
        let before = match cursor {
            Some(c) => decode_cursor(c).ok_or_else(|| StoreError::Failed {
                message: format!("invalid cursor {c:?}"),
                source: None,
            })?,
            None => u64::MAX,
        };
        let limit = limit.clamp(1, 100);
        let (program, member) = (program.to_string(), member.to_string());
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, body FROM ledger WHERE program = ?1 AND member = ?2 AND seq < ?3 ORDER BY seq DESC LIMIT ?4",
                )
                .map_err(|e| sql_error("cannot read the ledger", e))?;
            // SQLite integers are signed: the "no cursor" bound is i64::MAX.
            let bound = i64::try_from(before).unwrap_or(i64::MAX);
            let rows = stmt
                .query_map(params![program, member, bound, limit as i64], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                })
                .map_err(|e| sql_error("cannot read the ledger", e))?;
            let mut entries = Vec::new();
            let mut last = None;
            for row in rows {
                let (seq, body) = row.map_err(|e| sql_error("cannot read the ledger", e))?;
                entries.push(decode::<LedgerEntry>(&format!("ledger {seq}"), &body)?);
                last = Some(seq);
            }
            let next_cursor = match last {
                Some(seq) if entries.len() == limit => Some(encode_cursor(seq as u64)),
                _ => None,
            };
            Ok(LedgerPage { entries, next_cursor })
        })
        .await
    }

    async fn has_marker(
        &self,
        program: &str,
        member: &str,
        marker: &EventMarker,
    ) -> Result<bool, StoreError> {
        let (program, member, key) = (program.to_string(), member.to_string(), marker_key(marker));
        self.read(move |conn| {
            conn.row(
"SELECT EXISTS (SELECT 1 FROM markers WHERE program = ?1 AND member = ?2 AND marker = ?3)",
                params![program, member, key],
                |row| row.get(0),
            )
            .map_err(|e| sql_error("cannot read the marker", e))
        })
        .await
    }
}

enum Outcome {
    Duplicate,
    Conflict,
    CouponConsumed,
    OverQuota,
}

/// A commit's rows as the statements take them, encoded before the commit reaches the writer.
struct Encoded {
    /// The account's version after the commit.
    version: u64,
    account: String,
    entries: Vec<String>,
    /// (order key, body) of each order record.
    orders: Vec<(String, String)>,
    /// (key, body) of each outgoing message.
    outbox: Vec<(String, String)>,
    /// The account's due dates, as its row records them ([`due_column`]).
    due: String,
}

impl Encoded {
    fn of(commit: &Commit) -> Result<Encoded, StoreError> {
        let version = commit.expected_version.unwrap_or(0) + 1;
        let mut account = commit.account.clone();
        account.version = version;
        Ok(Encoded {
            due: due_column(&commit.due),
            version,
            account: encode("account", &account)?,
            entries: (commit.entries.iter())
                .map(|entry| encode("entry", entry))
                .collect::<Result<_, _>>()?,
            orders: (commit.orders.iter())
                .map(|(key, order)| Ok((key.clone(), encode("order", order)?)))
                .collect::<Result<_, StoreError>>()?,
            outbox: (commit.outbox.iter())
                .map(|m| Ok((m.key(), encode("outbox message", m)?)))
                .collect::<Result<_, StoreError>>()?,
        })
    }
}

#[async_trait]
impl AliasStore for SqliteStore {
    async fn resolve_alias(
        &self,
        program: &str,
        kind: &str,
        value: &str,
    ) -> Result<Option<String>, StoreError> {
        let (program, kind, value) = (program.to_string(), kind.to_string(), value.to_string());
        self.read(move |conn| alias_owner(conn, &program, &kind, &value))
            .await
    }

    /// The links and, for orders, whether events are parked for them, in one read.
    async fn linked_aliases(
        &self,
        program: &str,
        links: &[(&str, &str)],
    ) -> Result<Vec<Linked>, StoreError> {
        let program = program.to_string();
        let links: Vec<(String, String)> = links
            .iter()
            .map(|(kind, value)| (kind.to_string(), value.to_string()))
            .collect();
        self.read(move |conn| {
            links
                .iter()
                .map(|(kind, value)| {
                    let member = alias_owner(conn, &program, kind, value)?;
                    let awaited = kind == ORDER_LINK && awaited(conn, &program, value)?;
                    Ok(Linked { member, awaited })
                })
                .collect()
        })
        .await
    }

    async fn link_order(
        &self,
        program: &str,
        order_key: &str,
        member: &str,
    ) -> Result<OrderLinked, StoreError> {
        let (program, order_key, member) = (
            program.to_string(),
            order_key.to_string(),
            member.to_string(),
        );
        self.with(move |conn| {
            let written = link(conn, &program, ORDER_LINK, &order_key, &member)?;
            let awaited = !written || awaited(conn, &program, &order_key)?;
            Ok(OrderLinked { written, awaited })
        })
        .await
    }

    async fn put_alias(
        &self,
        program: &str,
        kind: &str,
        value: &str,
        member: &str,
    ) -> Result<bool, StoreError> {
        let (program, kind, value, member) = (
            program.to_string(),
            kind.to_string(),
            value.to_string(),
            member.to_string(),
        );
        self.with(move |conn| link(conn, &program, &kind, &value, &member))
            .await
    }

    async fn move_alias(
        &self,
        program: &str,
        kind: &str,
        value: &str,
        from: &str,
        to: &str,
    ) -> Result<bool, StoreError> {
        let (program, kind, value, from, to) = (
            program.to_string(),
            kind.to_string(),
            value.to_string(),
            from.to_string(),
            to.to_string(),
        );
        self.with(move |conn| {
            conn.exec(
                "INSERT INTO aliases (program, kind, value, member) VALUES (?1, ?2, ?3, ?5)
                 ON CONFLICT (program, kind, value) DO UPDATE SET member = ?5 WHERE member = ?4",
                params![program, kind, value, from, to],
            )
            .map_err(|e| sql_error("cannot move the alias", e))?;
            Ok(alias_owner(conn, &program, &kind, &value)?.as_deref() == Some(to.as_str()))
        })
        .await
    }

    async fn remove_alias(
        &self,
        program: &str,
        kind: &str,
        value: &str,
        member: &str,
    ) -> Result<(), StoreError> {
        let (program, kind, value, member) = (
            program.to_string(),
            kind.to_string(),
            value.to_string(),
            member.to_string(),
        );
        self.with(move |conn| {
            conn.exec(
"DELETE FROM aliases WHERE program = ?1 AND kind = ?2 AND value = ?3 AND member = ?4",
                params![program, kind, value, member],
            )
            .map_err(|e| sql_error("cannot remove the alias", e))?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl RejectStore for SqliteStore {
    async fn reject(&self, rejected: &RejectedEvent) -> Result<(), StoreError> {
        let rejected = rejected.clone();
        self.with(move |conn| {
            conn.exec(
"INSERT INTO rejected_events (program, event_id, at, body) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (program, event_id) DO UPDATE SET at = excluded.at, body = excluded.body",
                params![
                    rejected.program,
                    rejected.event_id,
                    rejected_at(&rejected),
                    encode("rejected event", &rejected)?
                ],
            )
            .map_err(|e| sql_error("cannot record the rejected event", e))?;
            Ok(())
        })
        .await
    }

    async fn rejected_page(
        &self,
        program: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<RejectedPage, StoreError> {
        let program = program.to_string();
        let (at, id) = match cursor.map(parse_rejected_cursor) {
            None => ("9999".to_string(), String::new()),
            Some(Some((at, id))) => (at.to_rfc3339_opts(SecondsFormat::Millis, true), id),
            Some(None) => {
                return Err(StoreError::Failed {
                    message: "the cursor is not one this store gave".into(),
                    source: None,
                })
            }
        };
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT replays, body FROM rejected_events
                     WHERE program = ?1 AND (at < ?2 OR (at = ?2 AND event_id < ?3))
                     ORDER BY at DESC, event_id DESC LIMIT ?4",
                )
                .map_err(|e| sql_error("cannot read rejected events", e))?;
            let rows = stmt
                .query_map(params![program, at, id, limit as i64 + 1], |row| {
                    Ok((row.get::<_, u32>(0)?, row.get::<_, String>(1)?))
                })
                .map_err(|e| sql_error("cannot read rejected events", e))?;
            let mut events = Vec::new();
            for r in rows {
                let (replays, body) = r.map_err(|e| sql_error("cannot read rejected events", e))?;
                let mut event: RejectedEvent =
                    decode(&format!("rejected event of {program}"), &body)?;
                event.replays = replays;
                events.push(event);
            }
            let more = events.len() > limit;
            events.truncate(limit);
            let next_cursor = if more {
                events.last().map(rejected_cursor)
            } else {
                None
            };
            Ok(RejectedPage {
                events,
                next_cursor,
            })
        })
        .await
    }

    async fn rejected_event(
        &self,
        program: &str,
        event_id: &str,
    ) -> Result<Option<RejectedEvent>, StoreError> {
        let (program, event_id) = (program.to_string(), event_id.to_string());
        self.read(move |conn| {
            let row: Option<(u32, String)> = conn
                .row(
"SELECT replays, body FROM rejected_events WHERE program = ?1 AND event_id = ?2",
                    params![program, event_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(|e| sql_error("cannot read the rejected event", e))?;
            row.map(|(replays, body)| {
                let mut event: RejectedEvent =
                    decode(&format!("rejected event {event_id}"), &body)?;
                event.replays = replays;
                Ok(event)
            })
            .transpose()
        })
        .await
    }

    async fn replay_rejected(
        &self,
        program: &str,
        event_id: &str,
        mark: &ReplayMark,
        message: &OutboxMessage,
    ) -> Result<bool, StoreError> {
        let (program, event_id, mark, message) = (
            program.to_string(),
            event_id.to_string(),
            mark.clone(),
            message.clone(),
        );
        let replays = mark.number;
        self.with(move |conn| {
            let tx = conn.savepoint().map_err(|e| sql_error("cannot begin", e))?;
            let body: Option<String> = tx
                .row(
"SELECT body FROM rejected_events WHERE program = ?1 AND event_id = ?2 AND replays = ?3",
                    params![program, event_id, replays.saturating_sub(1)],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| sql_error("cannot read the rejected event", e))?;
            let Some(body) = body else {
                return Ok(false);
            };
            let mut event: RejectedEvent = decode(&format!("rejected event {event_id}"), &body)?;
            mark.apply(&mut event);
            tx.exec(
"UPDATE rejected_events SET replays = ?3, body = ?4 WHERE program = ?1 AND event_id = ?2",
                params![program, event_id, replays, encode("rejected event", &event)?],
            )
            .map_err(|e| sql_error("cannot mark the rejected event replayed", e))?;
            write_outbox(&tx, &message)?;
            tx.commit().map_err(|e| sql_error("cannot commit", e))?;
            Ok(true)
        })
        .await
    }
}

/// The time a rejection is sorted by: one fixed width, so that text order is time order.
fn rejected_at(rejected: &RejectedEvent) -> String {
    rejected.at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Links an identity to a member unless it is linked already; `false` when it leads to
/// another member.
fn link(
    conn: &Connection,
    program: &str,
    kind: &str,
    value: &str,
    member: &str,
) -> Result<bool, StoreError> {
    conn.exec(
        "INSERT OR IGNORE INTO aliases (program, kind, value, member) VALUES (?1, ?2, ?3, ?4)",
        params![program, kind, value, member],
    )
    .map_err(|e| sql_error("cannot write the alias", e))?;
    Ok(alias_owner(conn, program, kind, value)?.as_deref() == Some(member))
}

/// The member an identity is linked to, if any.
fn alias_owner(
    conn: &Connection,
    program: &str,
    kind: &str,
    value: &str,
) -> Result<Option<String>, StoreError> {
    conn.row(
        "SELECT member FROM aliases WHERE program = ?1 AND kind = ?2 AND value = ?3",
        params![program, kind, value],
        |row| row.get(0),
    )
    .optional()
    .map_err(|e| sql_error("cannot read the alias", e))
}

/// Whether events are parked for an order.
fn awaited(conn: &Connection, program: &str, order_key: &str) -> Result<bool, StoreError> {
    conn.row(
        "SELECT EXISTS (SELECT 1 FROM parked WHERE program = ?1 AND order_key = ?2)",
        params![program, order_key],
        |row| row.get(0),
    )
    .map_err(|e| sql_error("cannot read parked events", e))
}

#[async_trait]
impl ParkingStore for SqliteStore {
    /// The event parked and the order's member read in one transaction: the parked rows are
    /// the mark that [`AliasStore::link_order`] reads.
    async fn park_for_order(
        &self,
        program: &str,
        order_key: &str,
        event_id: &str,
        body: &str,
    ) -> Result<Option<String>, StoreError> {
        let row = (
            program.to_string(),
            order_key.to_string(),
            event_id.to_string(),
            body.to_string(),
        );
        self.with(move |conn| {
            let tx = conn.savepoint().map_err(|e| sql_error("cannot begin", e))?;
            tx.exec(
"INSERT OR IGNORE INTO parked (program, order_key, event_id, body) VALUES (?1, ?2, ?3, ?4)",
                params![row.0, row.1, row.2, row.3],
            )
            .map_err(|e| sql_error("cannot park the event", e))?;
            let member = alias_owner(&tx, &row.0, ORDER_LINK, &row.1)?;
            tx.commit().map_err(|e| sql_error("cannot commit", e))?;
            Ok(member)
        })
        .await
    }

    async fn park(
        &self,
        program: &str,
        order_key: &str,
        event_id: &str,
        body: &str,
    ) -> Result<(), StoreError> {
        let row = (
            program.to_string(),
            order_key.to_string(),
            event_id.to_string(),
            body.to_string(),
        );
        self.with(move |conn| {
            conn.exec(
"INSERT OR IGNORE INTO parked (program, order_key, event_id, body) VALUES (?1, ?2, ?3, ?4)",
                params![row.0, row.1, row.2, row.3],
            )
            .map_err(|e| sql_error("cannot park the event", e))?;
            Ok(())
        })
        .await
    }

    async fn parked(
        &self,
        program: &str,
        order_key: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let (program, order_key) = (program.to_string(), order_key.to_string());
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT event_id, body FROM parked WHERE program = ?1 AND order_key = ?2 ORDER BY rowid")
                .map_err(|e| sql_error("cannot read parked events", e))?;
            let rows = stmt
                .query_map(params![program, order_key], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(|e| sql_error("cannot read parked events", e))?;
            rows.collect::<Result<_, _>>()
                .map_err(|e| sql_error("cannot read parked events", e))
        })
        .await
    }

    async fn release_parked(
        &self,
        program: &str,
        order_key: &str,
        event_id: &str,
        message: &OutboxMessage,
    ) -> Result<bool, StoreError> {
        let row = (
            program.to_string(),
            order_key.to_string(),
            event_id.to_string(),
        );
        let message = message.clone();
        self.with(move |conn| {
            let tx = conn.savepoint().map_err(|e| sql_error("cannot begin", e))?;
            let removed = tx
                .exec(
                    "DELETE FROM parked WHERE program = ?1 AND order_key = ?2 AND event_id = ?3",
                    params![row.0, row.1, row.2],
                )
                .map_err(|e| sql_error("cannot release the parked event", e))?;
            if removed == 1 {
                write_outbox(&tx, &message)?;
            }
            tx.commit().map_err(|e| sql_error("cannot commit", e))?;
            Ok(removed == 1)
        })
        .await
    }

    async fn discard_parked(
        &self,
        program: &str,
        order_key: &str,
        event_id: &str,
    ) -> Result<bool, StoreError> {
        let row = (
            program.to_string(),
            order_key.to_string(),
            event_id.to_string(),
        );
        self.with(move |conn| {
            let removed = conn
                .exec(
                    "DELETE FROM parked WHERE program = ?1 AND order_key = ?2 AND event_id = ?3",
                    params![row.0, row.1, row.2],
                )
                .map_err(|e| sql_error("cannot drop the parked event", e))?;
            Ok(removed == 1)
        })
        .await
    }
}

/// Adds a message to the outbox, once per key (an equal message written again is the same one).
fn write_outbox(tx: &Connection, message: &OutboxMessage) -> Result<(), StoreError> {
    write_outbox_row(tx, &message.key(), &encode("outbox message", message)?)
}

fn write_outbox_row(tx: &Connection, key: &str, body: &str) -> Result<(), StoreError> {
    // The wall clock, as a stream record's creation time: the relay's lag is measured by it.
    tx.exec(
        "INSERT OR IGNORE INTO outbox (key, body, at_ms) VALUES (?1, ?2, ?3)",
        params![key, body, Utc::now().timestamp_millis()],
    )
    .map_err(|e| sql_error("cannot write to the outbox", e))?;
    Ok(())
}

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn outbox(&self, limit: usize) -> Result<Vec<OutboxMessage>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT key, body FROM outbox ORDER BY seq LIMIT ?1")
                .map_err(|e| sql_error("cannot read the outbox", e))?;
            let rows: Vec<(String, String)> = stmt
                .query_map(params![limit], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(|e| sql_error("cannot read the outbox", e))?
                .collect::<Result<_, _>>()
                .map_err(|e| sql_error("cannot read the outbox", e))?;
            rows.iter()
                .map(|(key, body)| decode(&format!("outbox/{key}"), body))
                .collect()
        })
        .await
    }

    async fn relayed(&self, message: &OutboxMessage) -> Result<(), StoreError> {
        let key = message.key();
        self.with(move |conn| {
            conn.exec("DELETE FROM outbox WHERE key = ?1", params![key])
                .map_err(|e| sql_error("cannot forget a relayed message", e))?;
            Ok(())
        })
        .await
    }

    async fn enqueue(&self, message: &OutboxMessage) -> Result<(), StoreError> {
        let message = message.clone();
        self.with(move |conn| write_outbox(conn, &message)).await
    }
}

/// The due dates of an account as its row records them: the six dates of [`DueJob::ALL`] in
/// that order, joined by `|`, each empty when the job has nothing due.
fn due_column(due: &DueDates) -> String {
    let dates: Vec<String> = (DueJob::ALL.iter())
        .map(|job| due.get(*job).map(|d| d.to_string()).unwrap_or_default())
        .collect();
    dates.join("|")
}

/// Replaces the member's rows in the due-date index with the dates of this commit. Only the
/// dates that differ from `before` (the account row's record of the rows, when it has one) are
/// written: most commits change one or none of the six, and each statement costs the one
/// writer a lookup even when it changes nothing.
fn write_due(
    tx: &Connection,
    program: &str,
    member: &str,
    due: &DueDates,
    before: Option<&str>,
) -> Result<(), StoreError> {
    let before: Vec<&str> = before.map_or_else(Vec::new, |b| b.split('|').collect());
    for (i, job) in DueJob::ALL.into_iter().enumerate() {
        let date = due.get(job);
        let now = date.map(|d| d.to_string()).unwrap_or_default();
        if before.len() == DueJob::ALL.len() && before[i] == now {
            continue;
        }
        let result = match date {
            Some(_) => tx.exec(
                "INSERT INTO due (program, job, member, date) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (program, job, member) DO UPDATE SET date = excluded.date
                 WHERE date IS NOT excluded.date",
                params![program, job.as_str(), member, now],
            ),
            None => tx.exec(
                "DELETE FROM due WHERE program = ?1 AND job = ?2 AND member = ?3",
                params![program, job.as_str(), member],
            ),
        };
        result.map_err(|e| sql_error("cannot index the due date", e))?;
    }
    Ok(())
}

/// One page of member ids from a query whose last parameter is the cursor (the last id of the
/// previous page, or "").
fn member_page(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    limit: usize,
) -> Result<MemberPage, StoreError> {
    let mut statement = conn
        .prepare_cached(sql)
        .map_err(|e| sql_error("cannot prepare the page", e))?;
    let members = statement
        .query_map(params, |row| row.get::<_, String>(0))
        .map_err(|e| sql_error("cannot read the page", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| sql_error("cannot read the page", e))?;
    let next_cursor = (members.len() == limit)
        .then(|| members.last().cloned())
        .flatten();
    Ok(MemberPage {
        members,
        next_cursor,
    })
}

#[async_trait]
impl ScheduleStore for SqliteStore {
    /// One process owns the database: no partition can run hot, so one shard.
    fn due_shards(&self) -> u32 {
        1
    }

    async fn due_members(
        &self,
        program: &str,
        job: DueJob,
        date: chrono::NaiveDate,
        shard: u32,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<MemberPage, StoreError> {
        if shard != 0 {
            return Ok(MemberPage::default());
        }
        let (program, date) = (program.to_string(), date.to_string());
        let cursor = cursor.unwrap_or_default().to_string();
        self.read(move |conn| {
            member_page(
                conn,
                "SELECT member FROM due WHERE program = ?1 AND job = ?2 AND date = ?3 AND member > ?4
                 ORDER BY member LIMIT ?5",
                &[&program, &job.as_str(), &date, &cursor, &(limit as i64)],
                limit,
            )
        })
        .await
    }

    async fn members_page(
        &self,
        program: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<MemberPage, StoreError> {
        let program = program.to_string();
        let cursor = cursor.unwrap_or_default().to_string();
        self.read(move |conn| {
            member_page(
                conn,
                "SELECT member FROM accounts WHERE program = ?1 AND member > ?2 ORDER BY member LIMIT ?3",
                &[&program, &cursor, &(limit as i64)],
                limit,
            )
        })
        .await
    }

    async fn program_ids(&self) -> Result<Vec<String>, StoreError> {
        self.read(|conn| {
            let mut statement = conn
                .prepare_cached("SELECT DISTINCT program FROM programs ORDER BY program")
                .map_err(|e| sql_error("cannot list programs", e))?;
            let ids = statement
                .query_map([], |row| row.get::<_, String>(0))
                .map_err(|e| sql_error("cannot list programs", e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| sql_error("cannot list programs", e));
            ids
        })
        .await
    }

    async fn job_progress(&self, program: &str, job: &str) -> Result<Option<String>, StoreError> {
        let (program, job) = (program.to_string(), job.to_string());
        self.read(move |conn| {
            conn.row(
                "SELECT progress FROM job_progress WHERE program = ?1 AND job = ?2",
                params![program, job],
                |row| row.get::<_, String>(0),
            )
            .optional()
            .map_err(|e| sql_error("cannot read the job's progress", e))
        })
        .await
    }

    async fn save_job_progress(
        &self,
        program: &str,
        job: &str,
        progress: Option<&str>,
    ) -> Result<(), StoreError> {
        let (program, job) = (program.to_string(), job.to_string());
        let progress = progress.map(str::to_string);
        self.with(move |conn| {
            let result = match &progress {
                Some(p) => conn.exec(
                    "INSERT INTO job_progress (program, job, progress) VALUES (?1, ?2, ?3)
                     ON CONFLICT (program, job) DO UPDATE SET progress = excluded.progress",
                    params![program, job, p],
                ),
                None => conn.exec(
                    "DELETE FROM job_progress WHERE program = ?1 AND job = ?2",
                    params![program, job],
                ),
            };
            result
                .map(|_| ())
                .map_err(|e| sql_error("cannot save the job's progress", e))
        })
        .await
    }
}

/// Marks a coupon revoked unless it has been consumed; `false` when it has.
fn revoke_coupon(tx: &Connection, program: &str, code: &str) -> Result<bool, StoreError> {
    let body: Option<String> = tx
        .row(
            "SELECT body FROM coupons WHERE program = ?1 AND code = ?2",
            params![program, code],
            |row| row.get(0),
        )
        .optional()
        .map_err(|e| sql_error("cannot read the coupon", e))?;
    let Some(body) = body else { return Ok(true) };
    let mut coupon: Coupon = decode(&format!("coupon {code}"), &body)?;
    if coupon.consumed.is_some() {
        return Ok(false);
    }
    coupon.revoked = true;
    tx.exec(
        "UPDATE coupons SET body = ?3 WHERE program = ?1 AND code = ?2",
        params![program, code, encode("coupon", &coupon)?],
    )
    .map_err(|e| sql_error("cannot revoke the coupon", e))?;
    Ok(true)
}

/// The redemption, new coupon and idempotency record of a commit, if any.
fn write_redemption_items(tx: &Connection, commit: &Commit) -> Result<(), StoreError> {
    for redemption in commit.redemption.iter().chain(&commit.copied_redemptions) {
        tx.exec(
            "INSERT INTO redemptions (program, member, id, body) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (program, member, id) DO UPDATE SET body = excluded.body",
            params![
                commit.program,
                commit.member,
                redemption.id,
                encode("redemption", redemption)?
            ],
        )
        .map_err(|e| sql_error("cannot write the redemption", e))?;
    }
    if let Some(coupon) = &commit.coupon {
        tx.exec(
            "INSERT INTO coupons (program, code, body) VALUES (?1, ?2, ?3)",
            params![commit.program, coupon.code, encode("coupon", coupon)?],
        )
        .map_err(|e| sql_error("cannot write the coupon", e))?;
    }
    if let Some(record) = &commit.idempotency {
        tx.exec(
            "INSERT INTO idempotency (program, principal, key, body) VALUES (?1, ?2, ?3, ?4)",
            params![
                commit.program,
                record.principal,
                record.key,
                encode("idempotency record", record)?
            ],
        )
        .map_err(|e| sql_error("cannot write the idempotency record", e))?;
    }
    Ok(())
}

fn parse_square(campaign: &str, text: &str) -> Result<i128, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt {
        key: format!("counters of campaign {campaign}"),
        message: format!("revenue_sq {text:?} is not an integer"),
    })
}

/// Adds to a variant's counters in one shard. The sum of squares can outgrow SQLite's 64-bit
/// integers, so it is kept as text and added here, inside the caller's transaction.
fn add_counts(tx: &Connection, program: &str, add: &CounterAdd) -> Result<(), StoreError> {
    let c = &add.counts;
    let square: Option<String> = tx
        .row(
"SELECT revenue_sq FROM counters WHERE program = ?1 AND campaign = ?2 AND shard = ?3 AND variant = ?4",
            params![program, add.campaign, add.shard, c.variant],
            |row| row.get(0),
        )
        .optional()
        .map_err(|e| sql_error("cannot read the counters", e))?;
    let square = match square {
        Some(text) => parse_square(&add.campaign, &text)?,
        None => 0,
    } + c.revenue_sq;
    tx.exec(
"INSERT INTO counters (program, campaign, shard, variant, assigned, converters, purchases, revenue, revenue_sq, points)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (program, campaign, shard, variant) DO UPDATE SET
           assigned = assigned + excluded.assigned, converters = converters + excluded.converters,
           purchases = purchases + excluded.purchases, revenue = revenue + excluded.revenue,
           revenue_sq = excluded.revenue_sq, points = points + excluded.points",
        params![
            program, add.campaign, add.shard, c.variant, c.assigned, c.converters, c.purchases,
            c.revenue, square.to_string(), c.points
        ],
    )
    .map_err(|e| sql_error("cannot add to the counters", e))?;
    Ok(())
}

/// Adds to a quota's total of the day, inside the caller's transaction; false (and nothing
/// written) when that would pass its limit. The program's totals of days two and more before
/// go (DynamoDB's TTL removes them there).
fn count_quota(tx: &Connection, program: &str, quota: &Quota) -> Result<bool, StoreError> {
    let day = quota.day.to_string();
    let kept_from = (quota.day - chrono::Duration::days(2)).to_string();
    tx.exec(
        "DELETE FROM quotas WHERE program = ?1 AND day < ?2",
        params![program, kept_from],
    )
    .map_err(|e| sql_error("cannot forget old quotas", e))?;
    let used: i64 = tx
        .row(
            "SELECT used FROM quotas WHERE program = ?1 AND day = ?2 AND name = ?3",
            params![program, day, quota.name],
            |row| row.get(0),
        )
        .optional()
        .map_err(|e| sql_error("cannot read the quota", e))?
        .unwrap_or(0);
    if used > quota.room() {
        return Ok(false);
    }
    tx.exec(
        "INSERT INTO quotas (program, day, name, used) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (program, day, name) DO UPDATE SET used = used + excluded.used",
        params![program, day, quota.name, quota.add],
    )
    .map_err(|e| sql_error("cannot add to the quota", e))?;
    Ok(true)
}

/// Adds a commit's counters to its day's books, inside the caller's transaction.
fn add_books(tx: &Connection, program: &str, add: &BooksAdd) -> Result<(), StoreError> {
    let Some(day) = add.day else {
        return Ok(());
    };
    for (name, value) in &add.counts {
        tx.exec(
            "INSERT INTO books (program, day, shard, name, value) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (program, day, shard, name) DO UPDATE SET value = value + excluded.value",
            params![program, day.to_string(), add.shard, name, value],
        )
        .map_err(|e| sql_error("cannot add to the books", e))?;
    }
    Ok(())
}

#[async_trait]
impl BooksStore for SqliteStore {
    async fn book_rows(&self, program: &str, until: NaiveDate) -> Result<Vec<BookRow>, StoreError> {
        let program = program.to_string();
        self.read(move |conn| {
            let mut statement = conn
                .prepare_cached(
                    "SELECT day, name, SUM(value) FROM books WHERE program = ?1 AND day <= ?2
                     GROUP BY day, name ORDER BY day, name",
                )
                .map_err(|e| sql_error("cannot read the books", e))?;
            let rows = statement
                .query_map(params![program, until.to_string()], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })
                .map_err(|e| sql_error("cannot read the books", e))?;
            let mut out = Vec::new();
            for row in rows {
                let (day, name, value) = row.map_err(|e| sql_error("cannot read the books", e))?;
                let day = day.parse().map_err(|_| StoreError::Corrupt {
                    key: format!("books of {program}"),
                    message: format!("day {day:?} is not a date"),
                })?;
                out.push(BookRow { day, name, value });
            }
            Ok(out)
        })
        .await
    }

    async fn book_counter(
        &self,
        program: &str,
        day: NaiveDate,
        name: &str,
    ) -> Result<i64, StoreError> {
        let (program, name) = (program.to_string(), name.to_string());
        self.read(move |conn| {
            conn.row(
"SELECT COALESCE(SUM(value), 0) FROM books WHERE program = ?1 AND day = ?2 AND name = ?3",
                params![program, day.to_string(), name],
                |row| row.get(0),
            )
            .map_err(|e| sql_error("cannot read the books", e))
        })
        .await
    }
}

/// Writes an assignment if the stored one is still the one expected; `false` when it is not.
fn write_assignment(
    tx: &Connection,
    program: &str,
    member: &str,
    write: &AssignmentWrite,
) -> Result<bool, StoreError> {
    let a = &write.assignment;
    let stored: Option<Assignment> = read_body(
        tx,
        "SELECT body FROM assignments WHERE program = ?1 AND member = ?2 AND campaign = ?3",
        &[&program, &member, &a.campaign],
        "assignment",
    )?;
    let same = |x: &Assignment, y: &Assignment| {
        x.hash_seed == y.hash_seed
            && x.bucket_version == y.bucket_version
            && x.purchases == y.purchases
    };
    let expected = match (&stored, &write.expected) {
        (None, None) => true,
        (Some(s), Some(e)) => same(s, e),
        _ => false,
    };
    if !expected {
        return Ok(false);
    }
    tx.exec(
        "INSERT INTO assignments (program, member, campaign, body) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (program, member, campaign) DO UPDATE SET body = excluded.body",
        params![program, member, a.campaign, encode("assignment", a)?],
    )
    .map_err(|e| sql_error("cannot write the assignment", e))?;
    Ok(true)
}

fn read_body<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    what: &str,
) -> Result<Option<T>, StoreError> {
    conn.row(sql, params, |row| row.get::<_, String>(0))
        .optional()
        .map_err(|e| sql_error(&format!("cannot read the {what}"), e))?
        .map(|body| decode(what, &body))
        .transpose()
}

#[async_trait]
impl RedemptionStore for SqliteStore {
    async fn redemption(
        &self,
        program: &str,
        member: &str,
        id: &str,
    ) -> Result<Option<Redemption>, StoreError> {
        let (program, member, id) = (program.to_string(), member.to_string(), id.to_string());
        self.read(move |conn| {
            read_body(
                conn,
                "SELECT body FROM redemptions WHERE program = ?1 AND member = ?2 AND id = ?3",
                &[&program, &member, &id],
                "redemption",
            )
        })
        .await
    }

    async fn coupon(&self, program: &str, code: &str) -> Result<Option<Coupon>, StoreError> {
        let (program, code) = (program.to_string(), code.to_string());
        self.read(move |conn| {
            read_body(
                conn,
                "SELECT body FROM coupons WHERE program = ?1 AND code = ?2",
                &[&program, &code],
                "coupon",
            )
        })
        .await
    }

    async fn consume_coupon(
        &self,
        program: &str,
        code: &str,
        order_ref: &str,
        now: DateTime<Utc>,
    ) -> Result<Consumption, StoreError> {
        let (program, code, order_ref) =
            (program.to_string(), code.to_string(), order_ref.to_string());
        self.with(move |conn| {
            let tx = conn.savepoint().map_err(|e| sql_error("cannot begin", e))?;
            let coupon: Option<Coupon> = read_body(
                &tx,
                "SELECT body FROM coupons WHERE program = ?1 AND code = ?2",
                &[&program, &code],
                "coupon",
            )?;
            let Some(mut coupon) = coupon else {
                return Ok(Consumption::NotFound);
            };
            let outcome = match &coupon.consumed {
                Some(c) if c.order_ref == order_ref => Consumption::Consumed(coupon),
                Some(_) => Consumption::AlreadyConsumed(coupon),
                None if coupon.revoked => Consumption::Revoked(coupon),
                None if coupon.expired(now) => Consumption::Expired(coupon),
                None => {
                    coupon.consumed = Some(Consumed {
                        order_ref: order_ref.clone(),
                        at: now,
                    });
                    tx.exec(
                        "UPDATE coupons SET body = ?3 WHERE program = ?1 AND code = ?2",
                        params![program, code, encode("coupon", &coupon)?],
                    )
                    .map_err(|e| sql_error("cannot consume the coupon", e))?;
                    Consumption::Consumed(coupon)
                }
            };
            tx.commit().map_err(|e| sql_error("cannot commit", e))?;
            Ok(outcome)
        })
        .await
    }

    async fn idempotency_record(
        &self,
        program: &str,
        principal: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let (program, principal, key) =
            (program.to_string(), principal.to_string(), key.to_string());
        let record: Option<IdempotencyRecord> = self
            .read(move |conn| {
                read_body(
                conn,
                "SELECT body FROM idempotency WHERE program = ?1 AND principal = ?2 AND key = ?3",
                &[&program, &principal, &key],
                "idempotency record",
            )
            })
            .await?;
        // Past its expiry a record is gone, as DynamoDB's TTL makes it.
        Ok(record.filter(|r| r.expires_at > Utc::now()))
    }
}

#[async_trait]
impl CampaignStore for SqliteStore {
    async fn campaigns(&self, program: &str) -> Result<Vec<(String, String)>, StoreError> {
        let program = program.to_string();
        self.read(move |conn| {
            let mut statement = conn
                .prepare_cached("SELECT id, body FROM campaigns WHERE program = ?1 ORDER BY id")
                .map_err(|e| sql_error("cannot list campaigns", e))?;
            let campaigns = statement
                .query_map(params![program], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(|e| sql_error("cannot list campaigns", e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| sql_error("cannot list campaigns", e));
            campaigns
        })
        .await
    }

    async fn record_assignment(
        &self,
        program: &str,
        member: &str,
        assignment: &Assignment,
        account_seen: bool,
        message: Option<&OutboxMessage>,
    ) -> Result<Option<(Assignment, bool)>, StoreError> {
        let (program, member, assignment, message) = (
            program.to_string(),
            member.to_string(),
            assignment.clone(),
            message.cloned(),
        );
        self.with(move |conn| {
            let tx = conn.savepoint().map_err(|e| sql_error("cannot begin", e))?;
            let account: Option<Account> = read_body(
                &tx,
                "SELECT body FROM accounts WHERE program = ?1 AND member = ?2",
                &[&program, &member],
                "account",
            )?;
            let erasing = account.as_ref().is_some_and(|a| a.erased.is_some());
            if erasing || (account_seen && account.is_none()) {
                return Ok(None);
            }
            let stored: Option<Assignment> = read_body(
                &tx,
                "SELECT body FROM assignments WHERE program = ?1 AND member = ?2 AND campaign = ?3",
                &[&program, &member, &assignment.campaign],
                "assignment",
            )?;
            if let Some(stored) = stored {
                if stored.holds_for(&assignment.hash_seed, assignment.bucket_version) {
                    return Ok(Some((stored, false)));
                }
            }
            tx.exec(
                "INSERT INTO assignments (program, member, campaign, body) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (program, member, campaign) DO UPDATE SET body = excluded.body",
                params![
                    program,
                    member,
                    assignment.campaign,
                    encode("assignment", &assignment)?
                ],
            )
            .map_err(|e| sql_error("cannot record the assignment", e))?;
            add_counts(&tx, &program, &CounterAdd::assigned(&member, &assignment))?;
            if let Some(message) = &message {
                write_outbox(&tx, message)?;
            }
            tx.commit().map_err(|e| sql_error("cannot commit", e))?;
            Ok(Some((assignment.clone(), true)))
        })
        .await
    }

    async fn campaign_counts(
        &self,
        program: &str,
        campaign: &str,
    ) -> Result<Vec<VariantCounts>, StoreError> {
        let (program, campaign) = (program.to_string(), campaign.to_string());
        self.read(move |conn| {
            let mut statement = conn
                .prepare_cached(
                    "SELECT variant, assigned, converters, purchases, revenue, revenue_sq, points
                     FROM counters WHERE program = ?1 AND campaign = ?2 ORDER BY variant",
                )
                .map_err(|e| sql_error("cannot read the counters", e))?;
            let rows = statement
                .query_map(params![program, campaign], |row| {
                    Ok((
                        VariantCounts {
                            variant: row.get(0)?,
                            assigned: row.get(1)?,
                            converters: row.get(2)?,
                            purchases: row.get(3)?,
                            revenue: row.get(4)?,
                            revenue_sq: 0,
                            points: row.get(6)?,
                        },
                        row.get::<_, String>(5)?,
                    ))
                })
                .map_err(|e| sql_error("cannot read the counters", e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| sql_error("cannot read the counters", e))?;
            let mut summed: Vec<VariantCounts> = Vec::new();
            for (mut counts, square) in rows {
                counts.revenue_sq = parse_square(&campaign, &square)?;
                match summed.iter_mut().find(|c| c.variant == counts.variant) {
                    Some(total) => total.add(&counts),
                    None => summed.push(counts),
                }
            }
            Ok(summed)
        })
        .await
    }

    async fn campaign(&self, program: &str, id: &str) -> Result<Option<(u32, String)>, StoreError> {
        let (program, id) = (program.to_string(), id.to_string());
        self.read(move |conn| {
            conn.row(
                "SELECT version, body FROM campaigns WHERE program = ?1 AND id = ?2",
                params![program, id],
                |row| Ok((row.get::<_, u32>(0)?, row.get::<_, String>(1)?)),
            )
            .optional()
            .map_err(|e| sql_error("cannot read the campaign", e))
        })
        .await
    }

    async fn put_campaign(
        &self,
        program: &str,
        id: &str,
        json: &str,
        expected: Option<u32>,
    ) -> Result<Option<u32>, StoreError> {
        let (program, id, json) = (program.to_string(), id.to_string(), json.to_string());
        self.with(move |conn| {
            let tx = conn
                .savepoint()
                .map_err(|e| sql_error("cannot begin", e))?;
            let current: Option<u32> = tx
                .row(
"SELECT version FROM campaigns WHERE program = ?1 AND id = ?2",
                    params![program, id],
                    |row| row.get(0),
                )
                .optional()
                .map_err(|e| sql_error("cannot read the campaign version", e))?;
            if current != expected {
                return Ok(None);
            }
            let version = current.unwrap_or(0) + 1;
            tx.exec(
"INSERT INTO campaigns (program, id, version, body) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (program, id) DO UPDATE SET version = excluded.version, body = excluded.body",
                params![program, id, version, json],
            )
            .map_err(|e| sql_error("cannot save the campaign", e))?;
            tx.commit().map_err(|e| sql_error("cannot commit", e))?;
            Ok(Some(version))
        })
        .await
    }
}

/// Members read per statement in a walk (keyset pages, so the walk holds no lock for long).
const WALK_PAGE: i64 = 200;

fn bodies<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    what: &str,
    sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<T>, StoreError> {
    let mut statement = conn
        .prepare_cached(sql)
        .map_err(|e| sql_error(&format!("cannot read the {what}s"), e))?;
    let rows = statement
        .query_map(args, |row| row.get::<_, String>(0))
        .map_err(|e| sql_error(&format!("cannot read the {what}s"), e))?;
    let mut out = Vec::new();
    for row in rows {
        let body = row.map_err(|e| sql_error(&format!("cannot read the {what}s"), e))?;
        out.push(decode(what, &body)?);
    }
    Ok(out)
}

/// A member's order records with their keys.
fn keyed_orders(
    conn: &Connection,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<(String, OrderRecord)>, StoreError> {
    let failed = |e| sql_error("cannot read the orders", e);
    let mut statement = conn
        .prepare_cached(
            "SELECT order_key, body FROM orders WHERE program = ?1 AND member = ?2 ORDER BY order_key",
        )
        .map_err(failed)?;
    let rows = statement
        .query_map(args, |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })
        .map_err(failed)?;
    let mut out = Vec::new();
    for row in rows {
        let (key, body) = row.map_err(failed)?;
        out.push((key, decode("order", &body)?));
    }
    Ok(out)
}

/// One member's account, ledger (oldest first) and order records.
fn member_records(
    conn: &Connection,
    program: &str,
    member: &str,
    account: &str,
) -> Result<MemberRecords, StoreError> {
    Ok(MemberRecords {
        program: program.to_string(),
        member: member.to_string(),
        account: Some(decode("account", account)?),
        entries: bodies(
            conn,
            "entry",
            "SELECT body FROM ledger WHERE program = ?1 AND member = ?2 ORDER BY seq",
            &[&program, &member],
        )?,
        orders: bodies(
            conn,
            "order",
            "SELECT body FROM orders WHERE program = ?1 AND member = ?2 ORDER BY order_key",
            &[&program, &member],
        )?,
    })
}

#[async_trait]
impl RecordsStore for SqliteStore {
    fn parts(&self) -> u32 {
        1
    }

    async fn walk(
        &self,
        _part: u32,
        program: Option<&str>,
        visit: &(dyn Fn(Walked) + Send + Sync),
    ) -> Result<(), StoreError> {
        let only = program.map(str::to_string);
        let mut after = (String::new(), String::new());
        loop {
            let from = after.clone();
            let only_program = only.clone();
            let page: Vec<(String, String, Result<MemberRecords, StoreError>)> = self
                .read(move |conn| {
                    // One snapshot per page (a read transaction): a member's account and
                    // ledger agree even while `loyalty serve` writes.
                    let mut statement = conn
                        .prepare_cached(
                            "SELECT program, member, body FROM accounts
                             WHERE (program, member) > (?1, ?2) AND (?3 IS NULL OR program = ?3)
                             ORDER BY program, member LIMIT ?4",
                        )
                        .map_err(|e| sql_error("cannot read the accounts", e))?;
                    let rows = statement
                        .query_map(params![from.0, from.1, only_program, WALK_PAGE], |row| {
                            Ok((
                                row.get::<_, String>(0)?,
                                row.get::<_, String>(1)?,
                                row.get::<_, String>(2)?,
                            ))
                        })
                        .map_err(|e| sql_error("cannot read the accounts", e))?;
                    let mut accounts = Vec::new();
                    for row in rows {
                        accounts.push(row.map_err(|e| sql_error("cannot read the accounts", e))?);
                    }
                    drop(statement);
                    // One member that cannot be read is named, and the walk goes on.
                    Ok(accounts
                        .into_iter()
                        .map(|(p, m, body)| {
                            let records = member_records(conn, &p, &m, &body);
                            (p, m, records)
                        })
                        .collect())
                })
                .await?;
            let Some((program, member, _)) = page.last() else {
                break;
            };
            after = (program.clone(), member.clone());
            for (program, member, records) in page {
                visit(match records {
                    Ok(records) => Walked::Member(Box::new(records)),
                    Err(e) => Walked::Unreadable {
                        program,
                        member,
                        detail: e.to_string(),
                    },
                });
            }
        }
        let only_program = only.clone();
        let parked: Vec<ParkedEvent> = self
            .read(move |conn| {
                let mut statement = conn
                    .prepare_cached(
                        "SELECT program, order_key, event_id, body FROM parked
                         WHERE ?1 IS NULL OR program = ?1 ORDER BY program, order_key, event_id",
                    )
                    .map_err(|e| sql_error("cannot read the parked events", e))?;
                let rows = statement
                    .query_map(params![only_program], |row| {
                        Ok(ParkedEvent {
                            program: row.get(0)?,
                            order_key: row.get(1)?,
                            event_id: row.get(2)?,
                            body: row.get(3)?,
                        })
                    })
                    .map_err(|e| sql_error("cannot read the parked events", e))?;
                rows.map(|r| r.map_err(|e| sql_error("cannot read the parked events", e)))
                    .collect()
            })
            .await?;
        for event in parked {
            visit(Walked::Parked(event));
        }
        Ok(())
    }

    fn read_units(&self) -> Option<f64> {
        None
    }

    async fn member_records(
        &self,
        program: &str,
        member: &str,
    ) -> Result<MemberRecords, StoreError> {
        let (program, member) = (program.to_string(), member.to_string());
        self.read(move |conn| {
            let account: Option<String> = conn
                .row(
                    "SELECT body FROM accounts WHERE program = ?1 AND member = ?2",
                    params![program, member],
                    |row| row.get(0),
                )
                .optional()
                .map_err(|e| sql_error("cannot read the account", e))?;
            match account {
                Some(body) => member_records(conn, &program, &member, &body),
                None => Ok(MemberRecords {
                    program: program.clone(),
                    member: member.clone(),
                    ..MemberRecords::default()
                }),
            }
        })
        .await
    }

    async fn member_file(&self, program: &str, member: &str) -> Result<MemberFile, StoreError> {
        let (program, member) = (program.to_string(), member.to_string());
        self.read(move |conn| {
            let args: [&dyn rusqlite::ToSql; 2] = [&program, &member];
            let redemptions: Vec<Redemption> = bodies(
                conn,
                "redemption",
                "SELECT body FROM redemptions WHERE program = ?1 AND member = ?2 ORDER BY id",
                &args,
            )?;
            let mut coupons = Vec::new();
            for code in redemptions.iter().filter_map(|r| r.code.as_deref()) {
                coupons.extend(bodies::<Coupon>(
                    conn,
                    "coupon",
                    "SELECT body FROM coupons WHERE program = ?1 AND code = ?2",
                    &[&program, &code],
                )?);
            }
            let mut statement = conn
                .prepare_cached(
                    // Orders' links are not the member's identities (nor are they in DynamoDB's
                    // member partition): the file lists its orders.
                    "SELECT kind, value FROM aliases WHERE program = ?1 AND member = ?2 AND kind <> ?3
                     ORDER BY kind, value",
                )
                .map_err(|e| sql_error("cannot read the aliases", e))?;
            let aliases = statement
                .query_map(params![program, member, crate::ports::ORDER_LINK], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(|e| sql_error("cannot read the aliases", e))?
                .collect::<Result<Vec<(String, String)>, _>>()
                .map_err(|e| sql_error("cannot read the aliases", e))?;
            Ok(MemberFile {
                orders: keyed_orders(conn, &args)?,
                redemptions,
                coupons,
                assignments: bodies(
                    conn,
                    "assignment",
                    "SELECT body FROM assignments WHERE program = ?1 AND member = ?2 ORDER BY campaign",
                    &args,
                )?,
                aliases,
            })
        })
        .await
    }
}

#[async_trait]
impl ErasureStore for SqliteStore {
    async fn erase_member(
        &self,
        program: &str,
        member: &str,
        coupons: &[String],
    ) -> Result<(), StoreError> {
        let (program, member, coupons) =
            (program.to_string(), member.to_string(), coupons.to_vec());
        self.with(move |conn| {
            let failed = |e| sql_error("cannot erase the member", e);
            let tx = conn.savepoint().map_err(failed)?;
            for table in [
                "accounts",
                "ledger",
                "markers",
                "orders",
                "aliases",
                "due",
                "redemptions",
                "assignments",
            ] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE program = ?1 AND member = ?2"),
                    params![program, member],
                )
                .map_err(failed)?;
            }
            for code in &coupons {
                tx.exec(
                    "DELETE FROM coupons WHERE program = ?1 AND code = ?2",
                    params![program, code],
                )
                .map_err(failed)?;
            }
            tx.commit().map_err(failed)
        })
        .await
    }

    async fn rejected_naming(
        &self,
        program: &str,
        needles: &[String],
    ) -> Result<Vec<RejectedEvent>, StoreError> {
        let (program, needles) = (program.to_string(), needles.to_vec());
        self.read(move |conn| {
            let failed = |e| sql_error("cannot find the rejected events naming a member", e);
            let mut found: std::collections::BTreeMap<String, RejectedEvent> = Default::default();
            let mut statement = conn
                .prepare_cached(
"SELECT event_id, replays, body FROM rejected_events WHERE program = ?1 AND (instr(body, ?2) > 0 OR instr(body, ?3) > 0)",
                )
                .map_err(failed)?;
            for needle in &needles {
                // As in `forget_payloads`: the payload is a JSON string inside the stored body.
                let (raw, escaped) = (format!("\"{needle}\""), format!("\\\"{needle}\\\""));
                let rows = statement
                    .query_map(params![program, raw, escaped], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?, r.get::<_, String>(2)?))
                    })
                    .map_err(failed)?;
                for row in rows {
                    let (event_id, replays, body) = row.map_err(failed)?;
                    let mut event: RejectedEvent =
                        decode(&format!("rejected event {event_id}"), &body)?;
                    event.replays = replays;
                    found.insert(event_id, event);
                }
            }
            Ok(found.into_values().collect())
        })
        .await
    }

    async fn forget_payloads(
        &self,
        program: &str,
        needles: &[String],
        principals: &[String],
    ) -> Result<Forgotten, StoreError> {
        let (program, needles, principals) =
            (program.to_string(), needles.to_vec(), principals.to_vec());
        self.with(move |conn| {
            let failed = |e| sql_error("cannot forget the events", e);
            let mut requests = 0;
            for principal in &principals {
                requests += conn
                    .exec(
                        "DELETE FROM idempotency WHERE program = ?1 AND principal = ?2",
                        params![program, principal],
                    )
                    .map_err(failed)?;
            }
            let mut gone = 0;
            for needle in &needles {
                // As a JSON string in the parked envelope, or inside the rejected event's
                // payload (a JSON string itself, so its quotes are escaped).
                let raw = format!("\"{needle}\"");
                let escaped = format!("\\\"{needle}\\\"");
                gone += conn
                    .exec(
"DELETE FROM parked WHERE program = ?1 AND (instr(body, ?2) > 0 OR instr(body, ?3) > 0)",
                        params![program, raw, escaped],
                    )
                    .map_err(failed)?;
                gone += conn
                    .exec(
"DELETE FROM rejected_events WHERE program = ?1 AND (instr(body, ?2) > 0 OR instr(body, ?3) > 0)",
                        params![program, raw, escaped],
                    )
                    .map_err(failed)?;
                // The ids serve's queue remembers sending, for a week (`SENT_KEPT`), are the
                // events' ids, which hold member ids (`merge-pos:010-...`). A short name would
                // match others' ids too; forgetting one of those only lets a redelivery be
                // queued again, which its event marker makes a duplicate.
                if needle.len() >= 5 {
                    conn.exec(
                        "DELETE FROM sent WHERE id LIKE ?1 AND instr(id, ?2) > 0",
                        params![format!("{program}/%"), needle],
                    )
                    .map_err(failed)?;
                }
            }
            Ok(Forgotten {
                events: gone,
                requests,
            })
        })
        .await
    }

    async fn referees(&self, program: &str, referrer: &str) -> Result<Vec<String>, StoreError> {
        let needle = format!("\"referred_by\":{}", encode("referrer", &referrer)?);
        let (program, referrer) = (program.to_string(), referrer.to_string());
        self.read(move |conn| {
            let failed = |e| sql_error("cannot find the members referred", e);
            let mut statement = conn
                .prepare(
                    "SELECT member, body FROM accounts WHERE program = ?1 AND instr(body, ?2) > 0",
                )
                .map_err(failed)?;
            let rows = statement
                .query_map(params![program, needle], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })
                .map_err(failed)?;
            let mut referees = Vec::new();
            for row in rows {
                let (member, body) = row.map_err(failed)?;
                let account: Account = decode(&format!("account {member}"), &body)?;
                if account.referred_by.as_deref() == Some(referrer.as_str()) {
                    referees.push(member);
                }
            }
            Ok(referees)
        })
        .await
    }

    async fn note_erased(
        &self,
        program: &str,
        digests: &[String],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (program, digests) = (program.to_string(), digests.to_vec());
        let at = at.timestamp_millis();
        self.with(move |conn| {
            let failed = |e| sql_error("cannot remember the erasure", e);
            for digest in &digests {
                conn.execute(
                    "INSERT INTO erased (program, digest, at_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (program, digest) DO UPDATE SET at_ms = excluded.at_ms
                     WHERE excluded.at_ms > at_ms",
                    params![program, digest, at],
                )
                .map_err(failed)?;
            }
            Ok(())
        })
        .await
    }

    async fn erased_at(
        &self,
        program: &str,
        digests: &[String],
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let (program, digests) = (program.to_string(), digests.to_vec());
        self.read(move |conn| {
            let failed = |e| sql_error("cannot read the erasures", e);
            let mut latest: Option<i64> = None;
            for digest in &digests {
                let at: Option<i64> = conn
                    .query_row(
                        "SELECT at_ms FROM erased WHERE program = ?1 AND digest = ?2",
                        params![program, digest],
                        |row| row.get(0),
                    )
                    .optional()
                    .map_err(failed)?;
                latest = latest.max(at);
            }
            Ok(latest.and_then(DateTime::from_timestamp_millis))
        })
        .await
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn request_audit(
        &self,
        program: &str,
        run: &AuditRun,
        message: &OutboxMessage,
    ) -> Result<(), StoreError> {
        let (program, body, message) =
            (program.to_string(), encode("audit", run)?, message.clone());
        let id = run.id.clone();
        self.with(move |conn| {
            let tx = conn.savepoint().map_err(|e| sql_error("cannot begin", e))?;
            tx.exec(
                "INSERT INTO audits (program, id, body) VALUES (?1, ?2, ?3)",
                params![program, id, body],
            )
            .map_err(|e| sql_error("cannot write the audit", e))?;
            write_outbox(&tx, &message)?;
            tx.commit().map_err(|e| sql_error("cannot commit", e))
        })
        .await
    }

    async fn audit_run(&self, program: &str, id: &str) -> Result<Option<AuditRun>, StoreError> {
        let (program, id) = (program.to_string(), id.to_string());
        self.read(move |conn| {
            let body: Option<String> = conn
                .row(
                    "SELECT body FROM audits WHERE program = ?1 AND id = ?2",
                    params![program, id],
                    |row| row.get(0),
                )
                .optional()
                .map_err(|e| sql_error("cannot read the audit", e))?;
            body.map(|b| decode("audit", &b)).transpose()
        })
        .await
    }

    async fn save_audit_run(&self, program: &str, run: &AuditRun) -> Result<(), StoreError> {
        let (program, id, body) = (program.to_string(), run.id.clone(), encode("audit", run)?);
        self.with(move |conn| {
            conn.exec(
                "INSERT INTO audits (program, id, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (program, id) DO UPDATE SET body = excluded.body",
                params![program, id, body],
            )
            .map_err(|e| sql_error("cannot write the audit", e))?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_or_failing_disk_is_a_store_error_that_passes() {
        // GIVEN SQLite's answers when the disk is full, and when a write fails (a write past
        // the space or the file size allowed)
        let error = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        let full = error(rusqlite::ffi::SQLITE_FULL);
        let failed = error(rusqlite::ffi::SQLITE_IOERR_WRITE);
        // AND its answers when a read fails or a page's check fails: no disk filling up, so
        // they fail as before (retried for ever, a message never reached its dead letter)
        for code in [
            rusqlite::ffi::SQLITE_IOERR_READ,
            rusqlite::ffi::SQLITE_IOERR_DATA,
        ] {
            let e = sql_error("cannot read", error(code));
            assert!(matches!(e, StoreError::Failed { .. }), "{e:?}");
        }
        // WHEN they are mapped THEN each is a disk fault, which passes (503, retried), naming
        // the disk (before: an I/O error failed for good, 500, and a message's attempt counted)
        for (e, said) in [
            (full, "cannot commit: the database's disk is full"),
            (
                failed,
                "cannot commit: the database's disk cannot be written (disk I/O error)",
            ),
        ] {
            match sql_error("cannot commit", e) {
                e @ StoreError::DiskFault { .. } => {
                    assert!(e.passes());
                    assert_eq!(e.to_string(), format!("the store's disk failed: {said}"))
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
