//! One writer thread and a few readers for the SQLite store.
//!
//! Every write goes to one thread that owns the only writing connection. It takes the jobs
//! that are waiting (up to [`MAX_BATCH`]) and runs them in one transaction, each inside a
//! savepoint of its own: a job that fails or is refused leaves no trace and the others still
//! commit. A job's caller is answered only after the COMMIT, so nothing is acted upon (a 202,
//! an acknowledgement, a relay) before it is durable. One COMMIT for many jobs is what makes a
//! busy file fast: the pages a batch touches go to the WAL once, not once per job.
//!
//! Reads of a file database run on connections of their own, each in a read transaction that
//! sees only committed data, and never wait for the writer. An in-memory database has no
//! second connection, so its reads are jobs of the writer too.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::sqlite::sql_error;
use crate::ports::StoreError;

/// Jobs committed together at most. Large enough that a busy server commits rarely, small
/// enough that one transaction never holds the file for long.
const MAX_BATCH: usize = 256;
/// Attempts at `BEGIN IMMEDIATE` while another process holds the file, after its busy timeout.
const BEGIN_RETRIES: u32 = 5;

/// What a job says to its caller once the batch's fate is known.
type Reply = Box<dyn FnOnce(Option<&Failure>) + Send>;

/// Why a whole batch did not commit.
struct Failure {
    message: String,
    kind: Passing,
}

/// Whether a failure passes, and why.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Passing {
    /// Contention, or a store closing: soon.
    Soon,
    /// The disk: once an operator frees space or mends it.
    Disk,
    Never,
}

impl Failure {
    fn from_sql(what: &str, e: rusqlite::Error) -> Failure {
        use super::sqlite::SqlFault;
        let (kind, said) = match super::sqlite::fault_of(&e) {
            SqlFault::Disk(said) => (Passing::Disk, said.to_string()),
            SqlFault::Contention => (Passing::Soon, e.to_string()),
            SqlFault::Lasting => (Passing::Never, e.to_string()),
        };
        Failure {
            message: format!("{what}: {said}"),
            kind,
        }
    }

    fn error(&self) -> StoreError {
        let message = self.message.clone();
        match self.kind {
            Passing::Soon => StoreError::Transient {
                message,
                source: None,
            },
            Passing::Disk => StoreError::DiskFault {
                message,
                source: None,
            },
            Passing::Never => StoreError::Failed {
                message,
                source: None,
            },
        }
    }
}

trait Job: Send {
    /// Runs inside the batch's transaction and says how to answer once it ends.
    fn run(self: Box<Self>, conn: &mut Connection) -> Reply;
    /// The batch could not begin, or its transaction ended before this job: answer without
    /// running.
    fn refuse(self: Box<Self>, why: &Failure);
}

struct Work<F, T> {
    work: F,
    reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<F, T> Job for Work<F, T>
where
    F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send,
    T: Send + 'static,
{
    fn run(self: Box<Self>, conn: &mut Connection) -> Reply {
        let Work { work, reply } = *self;
        let result = in_savepoint(conn, work);
        Box::new(move |failure| {
            let answer = match failure {
                None => result,
                Some(f) => result.and_then(|_| Err(f.error())),
            };
            // The caller may have gone (a dropped request): nothing to tell.
            let _ = reply.send(answer);
        })
    }

    fn refuse(self: Box<Self>, why: &Failure) {
        let _ = self.reply.send(Err(why.error()));
    }
}

/// A job's own savepoint: its writes stay only if it succeeds. A job that returns `Ok` with a
/// refusal inside (a conflict) has already rolled back its own savepoint.
fn in_savepoint<T>(
    conn: &mut Connection,
    work: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    run_cached(conn, "SAVEPOINT job").map_err(|e| sql_error("cannot begin", e))?;
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| work(conn))).unwrap_or_else(|_| {
        Err(StoreError::Failed {
            message: "a database job panicked".into(),
            source: None,
        })
    });
    // A full or failing disk may have made SQLite roll the whole transaction back: there is
    // no savepoint left to end, and the work's own error says why.
    if result.is_err() && conn.is_autocommit() {
        return result;
    }
    let ended = match result.is_ok() {
        true => run_cached(conn, "RELEASE job"),
        false => run_cached(conn, "ROLLBACK TO job").and_then(|()| run_cached(conn, "RELEASE job")),
    };
    match ended {
        Ok(()) => result,
        Err(e) => Err(sql_error("cannot end a savepoint", e)),
    }
}

fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// What the writer's thread is sent: work, or the last word.
enum Message {
    Job(Box<dyn Job>),
    /// Fold the write-ahead log into the file once everything sent before has committed, and
    /// take no more work (see [`Writer::close`]).
    Close(tokio::sync::oneshot::Sender<Result<(), StoreError>>),
}

/// The writing connection's thread, reached through a channel.
pub(crate) struct Writer {
    jobs: mpsc::Sender<Message>,
    /// Transactions committed so far (each holds one or more jobs).
    commits: Arc<AtomicU64>,
}

impl Writer {
    /// Moves the connection to a thread of its own; the thread ends when the last handle goes.
    pub(crate) fn start(conn: Connection) -> Result<Writer, StoreError> {
        let (sender, receiver) = mpsc::channel::<Message>();
        let commits = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&commits);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_loop(conn, receiver, &counted))
            .map_err(|e| StoreError::failed("cannot start the database writer", e))?;
        Ok(Writer {
            jobs: sender,
            commits,
        })
    }

    pub(crate) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Runs `work` in the next batch; answers after that batch has committed.
    pub(crate) async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Box<dyn Job> = Box::new(Work { work, reply });
        self.jobs.send(Message::Job(job)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Commits everything sent before, folds the write-ahead log into the file with a
    /// checkpoint that truncates it, and refuses all work sent after (a passing failure: a
    /// request that comes late is answered 503). In channel order, so nothing slips between.
    pub(crate) async fn close(&self) -> Result<(), StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Message::Close(reply))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The writer's thread is gone (it ended in a panic, or the process is ending).
fn stopped() -> StoreError {
    StoreError::Failed {
        message: "the database writer has stopped".into(),
        source: None,
    }
}

fn write_loop(mut conn: Connection, jobs: mpsc::Receiver<Message>, commits: &AtomicU64) {
    let mut next = jobs.recv().ok();
    while let Some(message) = next.take() {
        let first = match message {
            Message::Job(job) => job,
            Message::Close(reply) => {
                let _ = reply.send(fold_wal(&conn));
                refuse_the_rest(&jobs);
                return;
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(Message::Job(job)) => batch.push(job),
                // The batch before it commits first.
                Ok(close) => {
                    next = Some(close);
                    break;
                }
                Err(_) => break,
            }
        }
        commit_batch(&mut conn, batch, commits);
        if next.is_none() {
            next = jobs.recv().ok();
        }
    }
}

/// A checkpoint that truncates the write-ahead log, on the writer's own connection outside
/// any transaction. Readers in the middle of a read leave part of it.
fn fold_wal(conn: &Connection) -> Result<(), StoreError> {
    let (busy, frames, done): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .map_err(|e| sql_error("cannot checkpoint", e))?;
    if busy != 0 {
        return Err(StoreError::Transient {
            message: format!(
                "another connection held the database ({done} of {frames} pages folded)"
            ),
            source: None,
        });
    }
    Ok(())
}

/// After a close: every job is refused, as worth retrying elsewhere or later.
fn refuse_the_rest(jobs: &mpsc::Receiver<Message>) {
    let closed = Failure {
        message: "the database is closed: serve is stopping".into(),
        kind: Passing::Soon,
    };
    while let Ok(message) = jobs.recv() {
        match message {
            Message::Job(job) => job.refuse(&closed),
            Message::Close(reply) => {
                let _ = reply.send(Ok(()));
            }
        }
    }
}

/// Runs a batch in one transaction, counting it in `commits` when it committed, before any
/// caller hears the answer (a caller that counts commits then sees its own).
fn commit_batch(conn: &mut Connection, batch: Vec<Box<dyn Job>>, commits: &AtomicU64) {
    if let Err(failure) = begin(conn) {
        for job in batch {
            job.refuse(&failure);
        }
        return;
    }
    let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
    // The database ends the transaction itself on a full or failing disk (the only faults a
    // transaction that holds the write lock meets midway): what ran is gone with it, and a
    // job run now would commit on its own, unseen by the COMMIT below. The job that met the
    // fault says so; the ones before and after it are told the same, as passing.
    let rolled_back = || Failure {
        message: "the database rolled the transaction back: its disk failed".into(),
        kind: Passing::Disk,
    };
    for job in batch {
        if conn.is_autocommit() {
            job.refuse(&rolled_back());
            continue;
        }
        replies.push(job.run(conn));
    }
    let failure = match conn.is_autocommit() {
        true => Err(rolled_back()),
        false => conn
            .execute_batch("COMMIT")
            .map_err(|e| Failure::from_sql("cannot commit", e)),
    };
    let failure = match failure {
        Ok(()) => None,
        Err(failure) => {
            // Nothing of the batch stays; each caller is told and retries as it would after
            // any failed transaction.
            let _ = conn.execute_batch("ROLLBACK");
            Some(failure)
        }
    };
    if failure.is_none() {
        commits.fetch_add(1, Ordering::Relaxed);
    }
    for reply in replies {
        reply(failure.as_ref());
    }
}

/// `BEGIN IMMEDIATE`, waiting for another process that holds the file (the busy timeout), and
/// a few more times after that with a growing pause.
fn begin(conn: &Connection) -> Result<(), Failure> {
    let mut attempt = 0;
    loop {
        match conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => return Ok(()),
            Err(e) => {
                let failure = Failure::from_sql("cannot begin", e);
                if failure.kind != Passing::Soon || attempt >= BEGIN_RETRIES {
                    return Err(failure);
                }
                attempt += 1;
                std::thread::sleep(Duration::from_millis(20 * u64::from(attempt)));
            }
        }
    }
}

/// Read-only connections to a database file, used in turn.
pub(crate) struct Readers {
    conns: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

impl Readers {
    pub(crate) fn open(path: &Path, count: usize, busy: Duration) -> Result<Readers, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conns = (0..count.max(1))
            .map(|_| {
                let conn = Connection::open_with_flags(path, flags).map_err(|e| {
                    StoreError::failed(format!("cannot open {} to read", path.display()), e)
                })?;
                conn.busy_timeout(busy)
                    .map_err(|e| StoreError::failed("cannot set the busy timeout", e))?;
                conn.set_prepared_statement_cache_capacity(super::sqlite::STATEMENT_CACHE);
                Ok(Mutex::new(conn))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Readers {
            conns,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `work` in a read transaction: one consistent view of what was committed.
    pub(crate) fn read<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.conns.len();
        // A free connection if there is one, else wait for the next in turn.
        let free = (0..count).find_map(|i| self.conns[(start + i) % count].try_lock().ok());
        let conn = match free {
            Some(conn) => conn,
            None => self.conns[start % count]
                .lock()
                .map_err(|_| StoreError::Failed {
                    message: "a database reader was poisoned by a panic".into(),
                    source: None,
                })?,
        };
        run_cached(&conn, "BEGIN").map_err(|e| sql_error("cannot begin a read", e))?;
        let result = work(&conn);
        // A read transaction has nothing to keep: ending it releases the snapshot.
        run_cached(&conn, "COMMIT").map_err(|e| sql_error("cannot end a read", e))?;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_whose_fault_rolled_the_transaction_back_answers_with_its_own_error() {
        // GIVEN a batch's transaction
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (x); BEGIN IMMEDIATE")
            .unwrap();
        // WHEN a job's write meets a full disk, on which SQLite rolls the whole transaction
        // back (the ROLLBACK stands for it)
        let result: Result<(), StoreError> = in_savepoint(&mut conn, |conn| {
            conn.execute_batch("INSERT INTO t VALUES (1); ROLLBACK")
                .unwrap();
            Err(StoreError::DiskFault {
                message: "cannot write: the database's disk is full".into(),
                source: None,
            })
        });
        // THEN the job answers with its own fault, which passes (before: "cannot end a
        // savepoint", a failure for good: 500, and a message's attempt counted)
        match result {
            Err(e @ StoreError::DiskFault { .. }) => assert!(e.passes()),
            other => panic!("{other:?}"),
        }
    }
}
