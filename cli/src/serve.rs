//! `loyalty serve`: every route, the queue workers and the SQLite store in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use loyalty_core::api::{self, auth::Verifier, AppState};
use loyalty_core::ports::{ProgramStore, QueueName, SystemClock};
use loyalty_core::queue::local::{Delivery, LocalQueue};
use loyalty_core::services::batch::{log_notice, log_notice_envelope, process_message, Consumer};
use loyalty_core::services::programs::ProgramFormat;
use loyalty_core::services::Services;
use loyalty_core::store::sqlite::SqliteStore;

use crate::token::SECRET_VAR;

/// The reference program, loaded into an empty database so that a new user can try it at once.
const KR_SHOP: &str = include_str!("../../examples/kr-shop.toml");
/// Deliveries before a message goes to the dead-letter table.
pub const MAX_ATTEMPTS: u32 = 5;
/// A message being processed is hidden this long; after a crash it reappears.
const VISIBILITY: Duration = Duration::from_secs(30);
const IDLE_POLL: Duration = Duration::from_millis(50);
/// Outbox messages relayed per pass.
const RELAY_BATCH: usize = 256;
/// Messages taken from a queue at once (one per member), processed together. Chosen by
/// measurement (performance.md §3): 512 processed 10–20% more than 128 under a flood, with
/// GET /me or without; 1,024 no more than 512.
const RECEIVE_BATCH: usize = 512;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// SQLite database file (created if missing).
    #[arg(long, default_value = "loyalty.db", conflicts_with = "memory")]
    db: PathBuf,
    /// Keep everything in memory (gone when the process ends).
    #[arg(long)]
    memory: bool,
    /// Program files (TOML) to load or update at start; kr-shop is loaded into an empty store.
    #[arg(long = "program")]
    programs: Vec<PathBuf>,
    /// Run the scheduled jobs (release, expiry, reviews, notices) this often, in seconds; 0
    /// turns the schedule off.
    #[arg(long, default_value_t = 60)]
    jobs_every: u64,
}

pub fn run(args: ServeArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    // Before anything is read or written: a second serve on the same file would run its
    // workers beside this one's and deliver again what the first has in flight.
    // (On Linux the lock makes the file, empty, when it is not there yet: a start that fails
    // before the database is made takes it away again.)
    let made_here = !args.memory && !args.db.exists();
    let unmake = |why: String| {
        if made_here && std::fs::metadata(&args.db).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(&args.db);
        }
        why
    };
    if !args.memory {
        // Never closed: closing any descriptor of the database file would release the locks
        // SQLite holds on it (they are the process's); the process's end releases them all.
        std::mem::forget(hold_database(&args.db)?);
    }
    let (secret, generated) = match std::env::var(SECRET_VAR) {
        Ok(s) if !s.is_empty() => (s, false),
        _ => (generate_secret(), true),
    };
    // Before anything is logged (a key from the environment was taken at start-up). A secret
    // made here is printed, where the logs may go too: the logs get one of their own.
    match generated {
        false => loyalty_core::telemetry::set_log_key(secret.as_bytes()),
        true => loyalty_core::telemetry::set_log_key(generate_secret().as_bytes()),
    }
    // The address next, so that a busy port refuses the start before the database is made.
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| unmake(format!("cannot listen on {}: {e}", args.addr)))?;
    let (store, where_) = if args.memory {
        (
            SqliteStore::memory(),
            "in memory (nothing is kept after exit)".to_string(),
        )
    } else {
        (
            SqliteStore::open(&args.db),
            format!("{} (SQLite)", args.db.display()),
        )
    };
    let store = store.map_err(|e| unmake(e.to_string()))?;
    let queue = LocalQueue::new(store.clone(), MAX_ATTEMPTS);
    let recovered = queue.recover_in_flight().await.map_err(|e| e.to_string())?;
    if recovered > 0 {
        tracing::info!(
            recovered,
            "messages left in flight by a previous run are delivered again"
        );
    }
    let services = Arc::new(
        Services::new(
            Arc::new(store.clone()),
            Arc::new(queue.clone()),
            Arc::new(SystemClock),
        )
        .with_dead_letters(Arc::new(queue.clone())),
    );
    let loaded = load_programs(&services, &store, &args.programs).await?;

    let state = AppState {
        services: Arc::clone(&services),
        verifier: Verifier::hs256(secret.as_bytes()),
        secrets: Arc::new(loyalty_core::webhooks::EnvSecrets),
    };
    let addr = listener.local_addr().map_err(|e| e.to_string())?;

    println!("loyalty serve: listening on http://{addr}");
    println!("store: {where_}");
    for line in &loaded {
        println!("program: {line}");
    }
    if generated {
        println!("{SECRET_VAR} was not set; generated one for this run. In other shells:");
        println!("export {SECRET_VAR}={secret}");
    }
    println!("tokens: loyalty token --admin | loyalty token --member ID");
    println!("console: http://{addr}/console/ (sign in with loyalty token --admin)");

    let workers = background(queue, Arc::clone(&services), args.jobs_every)?;
    loyalty_core::telemetry::metrics::set_function("serve");
    // The path as the client wrote it reaches serve alone: API Gateway hands the functions a
    // path already decoded, where a `%` is an id's own.
    let app = api::edge(
        api::routes(state)
            .merge(crate::console::router())
            .route("/metrics", axum::routing::get(metrics)),
    )
    .layer(axum::middleware::from_fn(
        api::problem::refuse_malformed_escapes,
    ));
    let (signalled, mut stopping) = tokio::sync::watch::channel(false);
    let serving = axum::serve(listener, loyalty_core::telemetry::observe_http(app))
        .with_graceful_shutdown(async move {
            shutdown().await;
            let _ = signalled.send(true);
            // A second signal ends the process at once, as an operator who sends it means.
            tokio::spawn(async {
                shutdown().await;
                eprintln!("loyalty serve: stopped at once (a second signal)");
                std::process::exit(130);
            });
        });
    let grace = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
        tokio::time::sleep(GRACE).await;
    };
    tokio::select! {
        served = serving => served.map_err(|e| format!("server failed: {e}"))?,
        () = grace => tracing::warn!(
            seconds = GRACE.as_secs(),
            "stopping: requests still open after the grace period write nothing more (503)"
        ),
    }
    // The requests under way were answered; then the workers stop (a message they had in hand
    // is delivered again at the next start, as after any stop), and the store is closed: what
    // was sent to it commits, the write-ahead log is folded into the file, so that the file
    // alone is the whole database, and a write that comes later is refused.
    tracing::info!("stopping: the workers stop");
    workers.stop().await;
    // A file that is not whole on its own ends the stop with a failure: a service manager or a
    // script that copies the file alone next must know (nothing is lost: the next start reads
    // the log with it).
    if !args.memory {
        match store.close().await {
            Ok(()) => {
                tracing::info!(db = %args.db.display(), "stopped; the database file is whole on its own")
            }
            Err(e) => {
                tracing::warn!(error = %e, "stopped; the write-ahead log beside the database file still holds some of it");
                return Err(format!(
                    "stopped, but {}-wal still holds part of the database: keep it beside the file ({e})",
                    args.db.display()
                ));
            }
        }
    }
    Ok(())
}

/// How long requests under way are waited for once serve is told to stop.
const GRACE: Duration = Duration::from_secs(20);

/// The workers' thread, and how to stop it.
struct Workers {
    stop: tokio::sync::watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl Workers {
    /// Stops the workers and waits for their thread to end: its runtime, as it is dropped,
    /// ends every task at the point it waits.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let thread = self.thread;
        if let Ok(Err(_)) = tokio::task::spawn_blocking(move || thread.join()).await {
            tracing::warn!("the workers' thread ended in a panic");
        }
    }
}

/// Starts the queue workers, the relay and the schedule on a thread of their own, at a lower CPU
/// priority than the HTTP server's threads: when the two cores are busy, a request (GET /me, a
/// webhook) is answered first and the queues are worked with what is left. In the server's own
/// runtime the workers' tasks stood in the same run queues as the requests.
fn background(
    queue: LocalQueue,
    services: Arc<Services>,
    jobs_every: u64,
) -> Result<Workers, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the workers' runtime: {e}"))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("loyalty-workers".into())
        .spawn(move || {
            lower_priority();
            runtime.block_on(work_queues(queue, services, jobs_every, stopped))
        })
        .map_err(|e| format!("cannot start the workers' thread: {e}"))?;
    Ok(Workers { stop, thread })
}

/// Everything serve does besides answering requests: a worker per queue, the schedule, and the
/// relay on this task, until `stopped` says so.
async fn work_queues(
    queue: LocalQueue,
    services: Arc<Services>,
    jobs_every: u64,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    // One worker per queue: a second earn worker processed 2-5% more, but took the CPU that
    // answers GET /me (p99 from 6-7 ms to 25-28 ms at 500/s).
    for name in [QueueName::Earn, QueueName::Tier, QueueName::Notify] {
        tokio::spawn(work(queue.clone(), name, Arc::clone(&services)));
    }
    if jobs_every > 0 {
        tokio::spawn(schedule(services, Duration::from_secs(jobs_every)));
    }
    tokio::select! {
        _ = relay(queue) => {}
        _ = stopped.wait_for(|stop| *stop) => {}
    }
}

/// How much less CPU the workers' thread is given than the server's threads when both want it
/// (a nice value: 10 weighs about a tenth of 0 in Linux's scheduler).
const WORKERS_NICE: i32 = 10;

#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: setpriority only reads its integer arguments. On Linux the nice value belongs to
    // a thread, and `who = 0` names the calling one, so the server's threads keep theirs.
    let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, WORKERS_NICE) };
    if done != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot lower the workers' priority; requests share the CPU with them"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// `GET /metrics`: what this process has done, in Prometheus's text format. It names programs
/// and counts, never a member, so it needs no token (like `/health`).
async fn metrics() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        loyalty_core::telemetry::metrics::prometheus(),
    )
}

/// Locks `{db}.lock` beside the database, and on Linux the database file itself, for as long
/// as the returned files are open (the system releases them when the process ends, however it
/// ends). Commands other than serve do not take them: they may run beside a serve.
fn hold_database(db: &std::path::Path) -> Result<Vec<std::fs::File>, String> {
    // The lock file is named after the file links lead to; the file's own lock is found
    // through any name of it, hard links included. That one only where the system keeps
    // `flock` apart from SQLite's POSIX locks, as Linux does (elsewhere the two may meet).
    let real = real_path(db);
    let db = real.as_path();
    let mut beside = db.as_os_str().to_owned();
    beside.push(".lock");
    let beside = PathBuf::from(beside);
    let open = |path: &std::path::Path, make: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(make)
            .create(make)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))
    };
    let mut held = vec![(open(&beside, true)?, beside.clone())];
    if cfg!(target_os = "linux") {
        // An empty file is a new database to SQLite; one that is there is opened to read.
        held.push((open(db, !db.exists())?, db.to_path_buf()));
    }
    for (file, path) in &held {
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(format!(
                    "another loyalty serve is using {} (it holds {}): stop it first",
                    db.display(),
                    path.display()
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(format!("cannot lock {}: {e}", path.display()))
            }
        }
    }
    Ok(held.into_iter().map(|(file, _)| file).collect())
}

/// The path of the file `db` names, links followed, whether or not the file is made yet (a
/// link to a file not made yet, or a chain of them, leads where SQLite will make it).
fn real_path(db: &std::path::Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(db) {
        return real;
    }
    let dir = crate::files::dir_of;
    // As many links as the system itself follows (Linux's limit is 40).
    let mut target = db.to_path_buf();
    for _ in 0..40 {
        match std::fs::read_link(&target) {
            Ok(to) => target = dir(&target).join(to),
            Err(_) => break,
        }
    }
    match (std::fs::canonicalize(dir(&target)), target.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => target,
    }
}

/// Loads the program files given, or kr-shop when the store has no program yet.
async fn load_programs(
    services: &Services,
    store: &SqliteStore,
    files: &[PathBuf],
) -> Result<Vec<String>, String> {
    let mut sources: Vec<(String, String)> = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        sources.push((path.display().to_string(), text));
    }
    if sources.is_empty() {
        if let Some(stored) = store
            .get_program("kr-shop")
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(vec![format!("kr-shop v{} (stored)", stored.version)]);
        }
        sources.push((
            "examples/kr-shop.toml (built in)".into(),
            KR_SHOP.to_string(),
        ));
    }
    // Every file is read and checked before any is saved: one refused leaves the store as it
    // was, not with the files before it saved.
    let mut programs = Vec::new();
    for (origin, text) in sources {
        let program = loyalty_core::domain::Program::from_toml(&text)
            .map_err(|e| format!("{origin}: {e}"))?;
        // What the save would check too (against the version stored now).
        services
            .check_program(&program.id, &text, ProgramFormat::Toml)
            .await
            .map_err(|e| format!("{origin}: {e}"))?;
        programs.push((origin, text, program));
    }
    let mut loaded = Vec::new();
    for (origin, text, program) in programs {
        let current = services.program(&program.id).await.ok();
        let unchanged = current.as_ref().is_some_and(|c| {
            let mut stored = c.file.clone();
            stored.version = None;
            stored == program.file
        });
        let version = match (unchanged, current) {
            (true, Some(c)) => c.version,
            _ => {
                let saved = services
                    .put_program(&program.id, &text, ProgramFormat::Toml)
                    .await
                    .map_err(|e| format!("{origin}: {e}"))?;
                saved.program.version
            }
        };
        loaded.push(format!(
            "{} v{version} ({}, {}) from {origin}",
            program.id, program.currency, program.time_zone
        ));
    }
    Ok(loaded)
}

/// Plays the part of the EventBridge schedules: the due-date jobs and the campaign tick for
/// every program, as of today. A run reads only what is due, so running often costs little.
async fn schedule(services: Arc<Services>, every: Duration) {
    use loyalty_core::services::jobs::Job;
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        for job in [
            Job::ReleasePending,
            Job::ExpirePoints,
            Job::TierReviews,
            Job::Notices,
            Job::CampaignTick,
        ] {
            match services
                .run_job_everywhere(job, None, None, None, &|_| {})
                .await
            {
                Ok(reports) => {
                    for r in reports.iter().filter(|r| r.error.is_some() || r.failed > 0) {
                        let error = r.error.as_deref().map(loyalty_core::telemetry::redact);
                        tracing::warn!(job = job.name(), program = r.program, failed = r.failed, error = ?error, "scheduled job left work for the next tick");
                    }
                }
                Err(e) => {
                    tracing::warn!(job = job.name(), error = %loyalty_core::telemetry::redact(&e.to_string()), "scheduled job failed; next tick retries")
                }
            }
        }
    }
}

/// Plays the part of the table's stream: moves what commits wrote to the outbox to the queues,
/// many messages per transaction, and logs the notices (the brand's integrations consume them
/// in AWS).
async fn relay(queue: LocalQueue) -> ! {
    let mut backoff = Backoff::default();
    let mut forgotten_at = std::time::Instant::now();
    let mut expired_at = std::time::Instant::now();
    loop {
        if forgotten_at.elapsed() >= FORGET_EVERY {
            forget_sent(&queue).await;
            forgotten_at = std::time::Instant::now();
        }
        if expired_at.elapsed() >= FORGET_EXPIRED_EVERY {
            forget_expired_requests(queue.store()).await;
            if let Err(e) = queue.forget_old_dead_letters(chrono::Utc::now()).await {
                tracing::warn!(error = %e, "cannot forget old dead letters; will retry");
            }
            if let Err(e) = queue.store().forget_old_audits(chrono::Utc::now()).await {
                tracing::warn!(error = %e, "cannot forget old audits; will retry");
            }
            expired_at = std::time::Instant::now();
        }
        match queue.relay_outbox(RELAY_BATCH, log_notice_envelope).await {
            Ok(0) => {
                backoff.reset();
                tokio::time::sleep(IDLE_POLL).await
            }
            Ok(_) => backoff.reset(),
            Err(e) => {
                let wait = backoff.failed();
                tracing::warn!(error = %e, retry_in_seconds = wait.as_secs(), "cannot relay the outbox; will retry");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The wait after a failure of the store that repeats: 1 second after the first, twice as long
/// after each next one, up to [`MOST_BACKOFF`]. A store that cannot write for minutes (a full
/// disk) was tried, and each failure logged, every second by the relay and each worker.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

/// The longest wait between two tries of a store that keeps failing: work waits at most this
/// long once the store takes writes again.
const MOST_BACKOFF: Duration = Duration::from_secs(10);

impl Backoff {
    fn failed(&mut self) -> Duration {
        let wait = Duration::from_secs(1 << self.failures.min(5)).min(MOST_BACKOFF);
        self.failures = self.failures.saturating_add(1);
        wait
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// How often the ids sent to the queues longer ago than `SENT_KEPT` are forgotten.
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// How often expired idempotency records, old dead letters and old audits are deleted (a read
/// of each table, so not every minute).
const FORGET_EXPIRED_EVERY: Duration = Duration::from_secs(3600);

/// Forgets the ids sent before the window, a thousand per writer job so that the other work
/// goes on between them.
async fn forget_sent(queue: &LocalQueue) {
    const STEP: usize = 1_000;
    let before = chrono::Utc::now() - loyalty_core::queue::local::SENT_KEPT;
    loop {
        match queue.forget_sent(before, STEP).await {
            Ok(n) if n == STEP => {}
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot forget the ids sent; will retry");
                return;
            }
        }
    }
}

/// Deletes the idempotency records whose keys expired, a thousand per writer job, as DynamoDB's
/// time to live does in AWS: the table would otherwise keep one for every request ever made
/// with a key.
async fn forget_expired_requests(store: &loyalty_core::store::sqlite::SqliteStore) {
    const STEP: usize = 1_000;
    loop {
        match store
            .forget_expired_requests(chrono::Utc::now(), STEP)
            .await
        {
            Ok(n) if n == STEP => {}
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot forget expired requests; will retry");
                return;
            }
        }
    }
}

/// Plays the part of an event-source mapping for one queue: receive, process, acknowledge,
/// and let failures come back with backoff until they are dead-lettered.
async fn work(queue: LocalQueue, name: QueueName, services: Arc<Services>) {
    let mut backoff = Backoff::default();
    loop {
        let received = queue.receive(name, RECEIVE_BATCH, VISIBILITY).await;
        if received.is_ok() {
            backoff.reset();
        }
        match received {
            Ok(batch) if batch.is_empty() => tokio::time::sleep(IDLE_POLL).await,
            Ok(batch) => {
                // At most one message per group: they are independent, so they run together
                // and their writes share the store's commits; the processed ones go in one.
                // One task: spawning one per message put 128 tasks ahead of every request in
                // the scheduler's queues (GET /me p99 went from 7 to 25 ms).
                let done = futures_util::future::join_all(
                    batch
                        .into_iter()
                        .map(|delivery| handle(&queue, name, &services, delivery)),
                )
                .await;
                let done: Vec<i64> = done.into_iter().flatten().collect();
                if let Err(e) = queue.ack_all(done).await {
                    tracing::warn!(error = %e, "cannot acknowledge; the messages will be seen again");
                }
            }
            Err(e) => {
                let wait = backoff.failed();
                tracing::warn!(queue = name.as_str(), error = %e, retry_in_seconds = wait.as_secs(), "cannot read the queue");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Processes one delivery; its sequence number when it is done (to acknowledge), none when it
/// failed and was scheduled for a retry or dead-lettered.
async fn handle(
    queue: &LocalQueue,
    name: QueueName,
    services: &Services,
    delivery: Delivery,
) -> Option<i64> {
    let id = delivery.seq.to_string();
    let result = match name {
        QueueName::Earn => process_message(services, Consumer::Earn, &id, &delivery.body)
            .await
            .map(drop),
        QueueName::Tier => process_message(services, Consumer::Tier, &id, &delivery.body)
            .await
            .map(drop),
        // The relay logs notices without queueing them; a notice queued by an earlier version
        // is logged here.
        QueueName::Notify => {
            log_notice(&id, &delivery.body);
            Ok(())
        }
    };
    match result {
        Ok(()) => Some(delivery.seq),
        Err(retry) => {
            match queue.retry(&delivery, &retry).await {
                Ok(true) => {
                    tracing::error!(queue = name.as_str(), error = %loyalty_core::telemetry::redact(&retry.to_string()), "message dead-lettered")
                }
                Ok(false) => {
                    tracing::warn!(queue = name.as_str(), attempt = delivery.attempts, counted = !retry.transient, error = %loyalty_core::telemetry::redact(&retry.to_string()), "will retry")
                }
                // Nothing is lost: the message is in flight, and comes back when that ends.
                Err(e) => {
                    tracing::warn!(queue = name.as_str(), attempt = delivery.attempts, error = %e, failure = %loyalty_core::telemetry::redact(&retry.to_string()), "cannot record a message's failure; it is delivered again when its visibility timeout ends")
                }
            }
            None
        }
    }
}

fn generate_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
