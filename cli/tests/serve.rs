//! End to end: `loyalty serve` as a process, spoken to over HTTP as a new user would.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};

const SECRET: &str = "test-secret-for-end-to-end";
const BIN: &str = env!("CARGO_BIN_EXE_loyalty");

struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(store: &[&str]) -> Server {
        Server::start_logging(store, None)
    }

    /// [`Server::start`], its INFO log in `log` when given.
    fn start_logging(store: &[&str], log: Option<&Path>) -> Server {
        let (level, stderr) = match log {
            Some(log) => ("info", Stdio::from(std::fs::File::create(log).unwrap())),
            None => ("warn", Stdio::inherit()),
        };
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(["--addr", "127.0.0.1:0"])
            .args(store)
            .env("LOYALTY_JWT_SECRET", SECRET)
            .env("LOYALTY_LOG", level)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("loyalty serve starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("serve prints where it listens")
                .expect("readable");
            if let Some(url) = line.strip_prefix("loyalty serve: listening on ") {
                break url.trim().to_string();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, base }
    }

    fn kill(mut self) {
        // SIGKILL: no graceful shutdown, nothing flushed by the process itself.
        self.child.kill().expect("kill");
        self.child.wait().expect("reaped");
    }
}

impl Server {
    /// SIGTERM, as a service manager stops it; waits for the exit (at most 30 s).
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("token")
        .args(args)
        .env("LOYALTY_JWT_SECRET", SECRET)
        .output()
        .expect("loyalty token runs");
    assert!(
        out.status.success(),
        "token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn purchase(id: &str, member: &str, order: &str, days_ago: i64) -> Value {
    let occurred =
        (Utc::now() - chrono::Duration::days(days_ago)).to_rfc3339_opts(SecondsFormat::Secs, true);
    json!({
        "type": "purchase.completed", "version": 1, "id": id, "program": "kr-shop",
        "member": member, "occurred_at": occurred,
        "data": {
            "order_id": order, "currency": "KRW", "channel": "online", "shipping": "3000", "tax": "0",
            "lines": [{"line_id": "1", "sku": "TEE-01", "category": "apparel", "quantity": 1,
                       "unit_price": "59000", "discount": "0"}]
        }
    })
}

fn post_event(server: &Server, admin: &str, event: &Value) -> reqwest::blocking::Response {
    client()
        .post(format!("{}/v1/programs/kr-shop/events", server.base))
        .bearer_auth(admin)
        .json(event)
        .send()
        .expect("request")
}

fn me(server: &Server, member: &str) -> Value {
    let response = client()
        .get(format!("{}/v1/programs/kr-shop/me", server.base))
        .bearer_auth(token(&["--member", member]))
        .send()
        .expect("request");
    assert_eq!(response.status(), 200);
    response.json().expect("json")
}

/// Polls until `check` holds on the member view, with a generous deadline.
fn eventually(server: &Server, member: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = me(server, member);
        if check(&view) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "condition never held; last view: {view}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ledger(server: &Server, member: &str) -> Value {
    client()
        .get(format!("{}/v1/programs/kr-shop/me/ledger", server.base))
        .bearer_auth(token(&["--member", member]))
        .send()
        .expect("request")
        .json()
        .expect("json")
}

fn temp_db(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("loyalty.db")
}

#[test]
fn a_purchase_earns_points_pending_or_available_once() {
    // GIVEN a fresh local stack with kr-shop and an admin token
    let server = Server::start(&["--memory"]);
    let admin = token(&["--admin"]);
    // WHEN a 59,000 KRW purchase from 8 days ago is submitted
    let response = post_event(&server, &admin, &purchase("ev-old", "m-1", "o-1", 8));
    assert_eq!(response.status(), 202);
    let body: Value = response.json().unwrap();
    assert_eq!(body, json!({"id": "ev-old", "status": "accepted"}));
    // THEN the member soon has 590 available and nothing pending
    let view = eventually(&server, "m-1", |v| v["balance"] == 590);
    assert_eq!(view["pending"], 0);
    // AND the view has the fields of the contract
    for field in [
        "member",
        "program",
        "currency",
        "balance",
        "pending",
        "pending_releases",
        "tier",
        "next_tier",
        "expiring",
        "referral_code",
    ] {
        assert!(view.get(field).is_some(), "{field} missing from {view}");
    }
    assert_eq!(view["tier"]["id"], "WELCOME");
    assert_eq!(view["next_tier"]["id"], "SILVER");
    assert_eq!(view["currency"], "KRW");

    // WHEN one from yesterday is submitted for another member
    assert_eq!(
        post_event(&server, &admin, &purchase("ev-new", "m-2", "o-2", 1)).status(),
        202
    );
    // THEN its 590 points are pending, released on the date the return window closes
    let view = eventually(&server, "m-2", |v| v["pending"] == 590);
    assert_eq!(view["balance"], 0);
    assert_eq!(view["pending_releases"][0]["points"], 590);

    // WHEN the first event is sent again (same id)
    assert_eq!(
        post_event(&server, &admin, &purchase("ev-old", "m-1", "o-1", 8)).status(),
        202
    );
    // AND a later event proves the queue has moved past it
    assert_eq!(
        post_event(&server, &admin, &purchase("ev-mark", "m-1", "o-9", 1)).status(),
        202
    );
    eventually(&server, "m-1", |v| v["pending"] == 590);
    // THEN nothing changed: one earn entry, balance 590
    let entries = ledger(&server, "m-1")["entries"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(entries.iter().filter(|e| e["kind"] == "earn").count(), 1);
    assert_eq!(me(&server, "m-1")["balance"], 590);
    let first = &entries[entries.len() - 1];
    for field in [
        "id",
        "kind",
        "points",
        "pending",
        "balance_after",
        "recorded_at",
        "occurred_at",
        "source",
        "reason",
        "provisional",
    ] {
        assert!(first.get(field).is_some(), "{field} missing from {first}");
    }
}

#[test]
fn bad_requests_are_problems_and_write_nothing() {
    // GIVEN a local stack and tokens
    let server = Server::start(&["--memory"]);
    let admin = token(&["--admin"]);
    let member = token(&["--member", "m-9"]);
    let url = format!("{}/v1/programs/kr-shop/events", server.base);
    let send = |auth: Option<&str>, url: &str, body: &str| {
        let mut request = client().post(url).body(body.to_string());
        if let Some(t) = auth {
            request = request.bearer_auth(t);
        }
        request.send().unwrap()
    };
    let valid = purchase("ev-1", "m-9", "o-1", 8).to_string();
    // A body under the request limit whose message would pass the queue's: U+FFFF takes 3
    // bytes as sent and 6 as queued (SQS takes it only escaped).
    let mut too_large = purchase("ev-3", "m-9", "o-3", 8);
    too_large["data"]["lines"][0]["category"] = "\u{ffff}".repeat(50_000).into();
    let cases = [
        (
            Some(admin.as_str()),
            url.clone(),
            too_large.to_string(),
            400,
            "event-too-large",
        ),
        (
            Some(admin.as_str()),
            url.clone(),
            "{not json".to_string(),
            400,
            "malformed-event",
        ),
        (
            Some(admin.as_str()),
            url.clone(),
            purchase("ev-2", "m-9", "o-2", 200).to_string(),
            400,
            "event-out-of-bounds",
        ),
        (
            Some(admin.as_str()),
            url.clone(),
            valid.replace("\"KRW\"", "\"USD\""),
            400,
            "invalid-event",
        ),
        (
            Some(member.as_str()),
            url.clone(),
            valid.clone(),
            403,
            "forbidden",
        ),
        (None, url.clone(), valid.clone(), 401, "unauthorized"),
        (
            Some("not-a-token"),
            url.clone(),
            valid.clone(),
            401,
            "unauthorized",
        ),
        (
            Some(admin.as_str()),
            format!("{}/v1/programs/nope/events", server.base),
            valid.clone(),
            404,
            "unknown-program",
        ),
    ];
    for (auth, url, body, status, slug) in cases {
        // WHEN each bad request is sent
        let response = send(auth, &url, &body);
        // THEN it gets its status as problem+json naming the problem
        assert_eq!(response.status(), status, "{slug}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().unwrap();
        assert!(
            problem["type"].as_str().unwrap().ends_with(slug),
            "{problem}"
        );
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    // AND nothing was written: a valid event afterwards is the only one with an effect
    assert_eq!(send(Some(&admin), &url, &valid).status(), 202);
    eventually(&server, "m-9", |v| v["balance"] == 590);
    assert_eq!(
        ledger(&server, "m-9")["entries"].as_array().unwrap().len(),
        1
    );
}

#[test]
fn balances_survive_restarts_and_a_kill_right_after_acceptance() {
    // GIVEN a stack on a database file with one processed purchase
    let db = temp_db("restart");
    let db_arg = db.to_str().unwrap();
    let server = Server::start(&["--db", db_arg]);
    let admin = token(&["--admin"]);
    assert_eq!(
        post_event(&server, &admin, &purchase("ev-1", "m-1", "o-1", 8)).status(),
        202
    );
    eventually(&server, "m-1", |v| v["balance"] == 590);
    // WHEN another event is accepted and the process is killed at once (SIGKILL)
    assert_eq!(
        post_event(&server, &admin, &purchase("ev-2", "m-1", "o-2", 8)).status(),
        202
    );
    server.kill();
    // THEN after a restart on the same file the first balance is there, and the second event
    // is processed: nothing accepted is lost
    let server = Server::start(&["--db", db_arg]);
    eventually(&server, "m-1", |v| v["balance"] == 1_180);
    let earns = ledger(&server, "m-1")["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "earn")
        .count();
    assert_eq!(earns, 2);
}

#[test]
fn a_serve_stopped_by_sigterm_leaves_the_database_file_whole_on_its_own() {
    // GIVEN serve on a database file, busy with 200 purchases just accepted
    let db = temp_db("sigterm");
    let db_arg = db.to_str().expect("utf-8 path");
    let log = db.with_file_name("serve.log");
    let server = Server::start_logging(&["--db", db_arg], Some(&log));
    let admin = token(&["--admin"]);
    for n in 0..200 {
        let event = purchase(
            &format!("ev-t-{n}"),
            &format!("m-{}", n % 20),
            &format!("t-{n}"),
            8,
        );
        assert_eq!(post_event(&server, &admin, &event).status(), 202);
    }
    // WHEN a service manager stops it at once
    let status = server.terminate();
    // THEN it ends well, saying so, with its write-ahead log folded into the file (before:
    // 45 MB of it left beside the file after a soak, a quarter of the ledger in it)
    assert!(status.success(), "{status}");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("stopped; the database file is whole on its own"),
        "{said}"
    );
    let wal = db.with_file_name("loyalty.db-wal");
    assert_eq!(std::fs::metadata(&wal).map_or(0, |m| m.len()), 0);
    // AND a copy of the file alone, as one takes of a stopped service, has all the database
    // has (read with its log, were one left)
    let copy = db.with_file_name("copied.db");
    std::fs::copy(&db, &copy).unwrap();
    let count = |file: &Path, table: &str| -> i64 {
        rusqlite::Connection::open(file)
            .unwrap()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    for table in ["ledger", "queue", "outbox"] {
        assert_eq!(count(&copy, table), count(&db, table), "{table}");
    }
    // AND nothing accepted is lost: serve on it again processes what was waiting
    let server = Server::start(&["--db", db_arg]);
    for m in 0..20 {
        eventually(&server, &format!("m-{m}"), |v| {
            v["tier"]["qualifying"] == 10 * 59_000
        });
    }
}

#[test]
fn a_stop_that_cannot_fold_the_log_into_the_file_ends_with_a_failure() {
    // GIVEN serve on a database file with a processed purchase, and another process in the
    // middle of a read of it (a backup, a report)
    let db = temp_db("unfolded");
    let db_arg = db.to_str().expect("utf-8 path");
    let log = db.with_file_name("serve.log");
    let server = Server::start_logging(&["--db", db_arg], Some(&log));
    let admin = token(&["--admin"]);
    let event = purchase("ev-u-1", "m-u", "u-1", 8);
    assert_eq!(post_event(&server, &admin, &event).status(), 202);
    eventually(&server, "m-u", |v| v["balance"] == 590);
    let reader = rusqlite::Connection::open(&db).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader
        .query_row("SELECT count(*) FROM ledger", [], |r| r.get(0))
        .unwrap();
    // WHEN it is stopped
    let status = server.terminate();
    // THEN it ends with a failure that says the log beside the file must be kept (before:
    // status 0, as after a stop that left the file whole)
    assert_eq!(status.code(), Some(1), "{status}");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("loyalty.db-wal still holds part of the database"),
        "{said}"
    );
    // AND nothing is lost: with the reader done, serve on the file has the purchase
    drop(reader);
    let server = Server::start(&["--db", db_arg]);
    eventually(&server, "m-u", |v| v["balance"] == 590);
}

#[test]
fn a_start_refused_for_its_port_leaves_no_database_behind() {
    // GIVEN a port already taken, and a database file that does not exist yet
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let db = temp_db("port-taken");
    // WHEN serve is started on them
    let out = ends_soon(
        Command::new(BIN)
            .args(["serve", "--addr", &addr, "--db", db.to_str().unwrap()])
            .env("LOYALTY_JWT_SECRET", SECRET),
    );
    // THEN it says why, and leaves no file (before: an empty one, which the other commands
    // then refuse as an empty database)
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"));
    assert!(!db.exists());
}

#[test]
fn a_member_token_limited_to_a_program_is_refused_by_another() {
    // GIVEN a local stack with kr-shop, and m-1's tokens limited to us-shop and to kr-shop
    let server = Server::start(&["--memory"]);
    let elsewhere = token(&["--member", "m-1", "--program", "us-shop"]);
    let here = token(&["--member", "m-1", "--program", "kr-shop"]);
    // WHEN each asks for m-1's view in kr-shop
    let status = |token: &str| {
        client()
            .get(format!("{}/v1/programs/kr-shop/me", server.base))
            .bearer_auth(token)
            .send()
            .expect("request")
            .status()
    };
    // THEN the one limited to another program is refused (before: `--program` was for admin
    // tokens only, and a member token reached every program)
    assert_eq!(status(&elsewhere), 403);
    assert_eq!(status(&here), 200);
}

#[test]
fn token_fails_clearly_without_a_secret() {
    // GIVEN no LOYALTY_JWT_SECRET WHEN a token is asked for
    let out = Command::new(BIN)
        .args(["token", "--admin"])
        .env_remove("LOYALTY_JWT_SECRET")
        .output()
        .unwrap();
    // THEN it fails, says why, and prints no token
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("LOYALTY_JWT_SECRET is not set"));
}

#[test]
fn jobs_run_from_the_command_line_write_what_is_due_once() {
    // GIVEN a member with 590 points from a purchase 8 days ago, in a database file
    let db = temp_db("jobs");
    let db_arg = db.to_str().expect("utf-8 path");
    let server = Server::start(&["--db", db_arg, "--jobs-every", "0"]);
    let admin = token(&["--admin"]);
    let accepted = post_event(&server, &admin, &purchase("ev-j1", "m-jobs", "J1", 8));
    assert_eq!(accepted.status(), 202);
    eventually(&server, "m-jobs", |v| v["balance"] == 590);
    server.kill();
    // WHEN expire-points runs as if it were 14 months later (refused unless said so), twice
    let later = (Utc::now() + chrono::Duration::days(425))
        .format("%Y-%m-%d")
        .to_string();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(["jobs", "run"])
            .args(args)
            .env("LOYALTY_LOG", "warn")
            .output()
            .expect("loyalty jobs runs")
    };
    let refused = run(&["expire-points", "--db", db_arg, "--date", &later]);
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("--ahead"),
        "a date after today needs --ahead: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // (a refused date is not said to be retried by the next run: it is refused again)
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("1 program(s) did not run") && !stderr.contains("retries"),
        "{stderr}"
    );
    let first = run(&["expire-points", "--db", db_arg, "--date", &later, "--ahead"]);
    let out = String::from_utf8_lossy(&first.stdout).to_string();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // THEN the member's points are expired, once, by one ledger entry for its one lot
    assert!(
        out.contains("expire-points kr-shop") && out.contains("1 changed, 1 ledger entries"),
        "{out}"
    );
    let second = run(&["expire-points", "--db", db_arg, "--date", &later, "--ahead"]);
    let out = String::from_utf8_lossy(&second.stdout).to_string();
    assert!(out.contains("0 changed"), "{out}");
    // AND the next serve shows the job's entries, and the balance is the sum of the ledger
    let server = Server::start(&["--db", db_arg, "--jobs-every", "0"]);
    let entries = ledger(&server, "m-jobs")["entries"]
        .as_array()
        .expect("entries")
        .clone();
    let kinds: Vec<&str> = entries.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.contains(&"expire"), "{kinds:?}");
    let sum: i64 = entries.iter().filter_map(|e| e["points"].as_i64()).sum();
    assert_eq!(
        (sum, me(&server, "m-jobs")["balance"].as_i64()),
        (0, Some(0))
    );
    // AND an unknown job, or a database that does not exist, is refused clearly
    let unknown = run(&["expire-everything", "--db", db_arg]);
    assert!(!unknown.status.success());
    let missing = run(&["notices", "--db", "/nonexistent/loyalty.db"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));
}

/// A serve on `db` that is expected to stop by itself (refused at its start).
fn serve_to_its_end(db: &str) -> std::process::Output {
    ends_soon(
        Command::new(BIN)
            .args(["serve", "--addr", "127.0.0.1:0", "--db", db])
            .env("LOYALTY_JWT_SECRET", SECRET)
            .env("LOYALTY_LOG", "warn"),
    )
}

#[test]
fn a_second_serve_on_the_same_file_is_refused_before_it_touches_it() {
    // GIVEN serve running on a database file
    let db = temp_db("second-serve");
    let db_arg = db.to_str().expect("utf-8 path");
    let first = Server::start(&["--db", db_arg]);
    // WHEN another serve is started on the same file (on another port)
    let second = serve_to_its_end(db_arg);
    // THEN it fails, saying another serve uses the file, and the first still answers
    assert!(!second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("another loyalty serve"), "{said}");
    let answer = me(&first, "m-1");
    assert!(answer.get("balance").is_some(), "{answer}");
    // AND once the first has stopped, however it stopped, the file can be served again
    first.kill();
    let again = Server::start(&["--db", db_arg]);
    assert!(me(&again, "m-1").get("balance").is_some());
}

#[test]
fn a_backup_taken_while_serve_runs_is_whole_on_its_own() {
    // GIVEN serve running on a database file, with a purchase processed (still in the file's
    // write-ahead log, beside it)
    let db = temp_db("backup");
    let db_arg = db.to_str().expect("utf-8 path");
    let running = Server::start(&["--db", db_arg]);
    let admin = token(&["--admin"]);
    let posted = post_event(&running, &admin, &purchase("ev-b-1", "m-1", "b-1", 8));
    assert_eq!(posted.status(), 202);
    eventually(&running, "m-1", |v| v["balance"] == 590);
    // WHEN a backup is taken while it runs
    let copy = db.with_file_name("backup.db");
    let copy_arg = copy.to_str().unwrap();
    let backup = || ends_soon(Command::new(BIN).args(["backup", "--db", db_arg, "--to", copy_arg]));
    let taken = backup();
    assert!(
        taken.status.success(),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    // THEN the copy is one file, marked as a loyalty database as serve's is, and serve on it
    // alone has the member's points
    assert!(!copy.with_file_name("backup.db-wal").exists());
    let marked = |file: &std::path::Path| -> i32 {
        rusqlite::Connection::open(file)
            .unwrap()
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(marked(&db), 0x4C59_4C54);
    assert_eq!(marked(&copy), 0x4C59_4C54);
    let restored = Server::start(&["--db", copy_arg]);
    assert_eq!(me(&restored, "m-1")["balance"], 590);
    // AND a second backup to the same file is refused, leaving it as it was
    let size = std::fs::metadata(&copy).unwrap().len();
    restored.kill();
    let again = backup();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), size);
    // AND an empty database (a file serve would make its own) is no database to copy
    let empty = db.with_file_name("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let refused = ends_soon(Command::new(BIN).args([
        "backup",
        "--db",
        empty.to_str().unwrap(),
        "--to",
        db.with_file_name("empty-copy.db").to_str().unwrap(),
    ]));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("an empty database"));
    assert!(!db.with_file_name("empty-copy.db").exists());
    // AND a target written as a directory is refused before anything is written
    let slashed = format!("{}/", db.with_file_name("slashed.db").display());
    let refused = ends_soon(Command::new(BIN).args(["backup", "--db", db_arg, "--to", &slashed]));
    assert!(!refused.status.success());
    assert!(!db.with_file_name("slashed.db").exists());
}

#[test]
fn a_link_to_a_served_file_finds_its_lock() {
    // GIVEN serve running on a database file, and a symbolic link to that file
    let db = temp_db("linked-serve");
    let db_arg = db.to_str().expect("utf-8 path");
    let first = Server::start(&["--db", db_arg]);
    let link = db.with_file_name("link.db");
    std::os::unix::fs::symlink(&db, &link).unwrap();
    // WHEN another serve is started on the link
    let second = serve_to_its_end(link.to_str().unwrap());
    // THEN it is refused as on the file itself (before: it served the same file beside the
    // first, each delivering what the other had in flight)
    assert!(!second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("another loyalty serve"), "{said}");
    assert!(me(&first, "m-1").get("balance").is_some());
    // AND so is one on a hard link to it, whatever directory it is in (before: a lock of its
    // own, beside the other name)
    let elsewhere = db.parent().unwrap().join("hard");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let hard = elsewhere.join("same.db");
    std::fs::hard_link(&db, &hard).unwrap();
    let third = serve_to_its_end(hard.to_str().unwrap());
    assert!(!third.status.success());
    let said = String::from_utf8_lossy(&third.stderr);
    assert!(said.contains("another loyalty serve"), "{said}");
    // AND a serve on a chain of links to a file not made yet holds the file it makes
    let later = db.with_file_name("later.db");
    let early_link = db.with_file_name("early-link.db");
    std::os::unix::fs::symlink("later.db", &early_link).unwrap();
    let chain = db.with_file_name("chain.db");
    std::os::unix::fs::symlink("early-link.db", &chain).unwrap();
    let on_link = Server::start(&["--db", chain.to_str().unwrap()]);
    assert!(later.exists());
    let on_file = serve_to_its_end(later.to_str().unwrap());
    assert!(!on_file.status.success());
    assert!(String::from_utf8_lossy(&on_file.stderr).contains("another loyalty serve"));
    assert!(me(&on_link, "m-1").get("balance").is_some());
}

#[test]
fn a_file_that_is_not_a_loyalty_database_is_refused_and_left_as_it_was() {
    // GIVEN another application's SQLite file, and a file that is no database at all
    let db = temp_db("foreign");
    let theirs = db.with_file_name("shop.db");
    {
        let conn = rusqlite::Connection::open(&theirs).unwrap();
        conn.execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);")
            .unwrap();
    }
    let garbage = db.with_file_name("garbage.db");
    std::fs::write(&garbage, vec![0x5a_u8; 64 * 1024]).unwrap();
    // (and an application that marks its files, whose schema has a programs table too)
    let marked = db.with_file_name("courses.db");
    {
        let conn = rusqlite::Connection::open(&marked).unwrap();
        conn.execute_batch(
            "PRAGMA application_id = 7; CREATE TABLE programs (id INTEGER PRIMARY KEY);",
        )
        .unwrap();
    }
    // (and one whose own programs table is nothing like loyalty's, unmarked)
    let unmarked = db.with_file_name("school.db");
    {
        let conn = rusqlite::Connection::open(&unmarked).unwrap();
        conn.execute_batch("CREATE TABLE programs (id INTEGER PRIMARY KEY, name TEXT);")
            .unwrap();
    }
    for (file, expected) in [
        (
            &theirs,
            "a SQLite database of something else (tables customers)",
        ),
        (
            &unmarked,
            "a SQLite database of something else (tables programs)",
        ),
        (&garbage, "not a database"),
        (
            &marked,
            "something else (tables programs, application id 0x00000007)",
        ),
    ] {
        let path = file.to_str().unwrap();
        // WHEN serve, an audit and a backup are pointed at it
        let served = serve_to_its_end(path);
        let audited = ends_soon(Command::new(BIN).args(["audit", "--db", path]));
        let copy = file.with_extension("copy");
        let backup = ends_soon(Command::new(BIN).args([
            "backup",
            "--db",
            path,
            "--to",
            copy.to_str().unwrap(),
        ]));
        // THEN each refuses it, saying what it is (before: serve made its tables beside the
        // other's, the audit passed on nothing, and random bytes were "cannot enable WAL")
        assert!(!copy.exists());
        for (what, out) in [("serve", &served), ("audit", &audited), ("backup", &backup)] {
            assert!(!out.status.success(), "{what} on {path}");
            let said = String::from_utf8_lossy(&out.stderr);
            assert!(said.contains(expected), "{what} on {path}: {said}");
        }
    }
    // AND an empty file is refused by the commands that work on serve's database, which
    // leave it empty (before: an audit made loyalty's tables in it and passed on nothing)
    let empty = db.with_file_name("empty.db");
    std::fs::write(&empty, b"").unwrap();
    for command in [
        &["audit", "--db"][..],
        &["jobs", "run", "expire-points", "--db"][..],
    ] {
        let out = ends_soon(Command::new(BIN).args(command).arg(&empty));
        assert!(!out.status.success(), "{command:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("an empty database"), "{command:?}: {said}");
    }
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
    // AND the other application's file has its one table still
    let conn = rusqlite::Connection::open(&theirs).unwrap();
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 1);
}

#[test]
fn program_files_are_all_checked_before_any_is_saved() {
    // GIVEN a valid program file and one with a mistake
    let db = temp_db("programs-checked");
    let dir = db.parent().expect("dir");
    let good = dir.join("good.toml");
    let kr = include_str!("../../examples/kr-shop.toml");
    std::fs::write(
        &good,
        kr.replacen("id = \"kr-shop\"", "id = \"good-shop\"", 1),
    )
    .unwrap();
    let bad = dir.join("bad.toml");
    // (a mistake of the file's, then one only a save checks: an anniversary review of a
    // calendar-year window)
    let saved_only = kr.replacen("rolling_12_months", "calendar_year", 1);
    for mistake in [
        kr.replacen("currency = \"KRW\"", "currency = 5", 1),
        saved_only,
    ] {
        std::fs::write(&bad, mistake).unwrap();
        // WHEN serve is started with both
        let started = ends_soon(
            Command::new(BIN)
                .args(["serve", "--addr", "127.0.0.1:0", "--jobs-every", "0"])
                .args(["--db", db.to_str().unwrap()])
                .args(["--program", good.to_str().unwrap()])
                .args(["--program", bad.to_str().unwrap()])
                .env("LOYALTY_JWT_SECRET", SECRET)
                .env("LOYALTY_LOG", "warn"),
        );
        // THEN it fails naming the file, and the valid one was not saved either
        assert!(!started.status.success());
        let said = String::from_utf8_lossy(&started.stderr);
        assert!(said.contains("bad.toml"), "{said}");
        let server = Server::start(&["--db", db.to_str().unwrap()]);
        let status = client()
            .get(format!("{}/v1/programs/good-shop", server.base))
            .bearer_auth(token(&["--admin"]))
            .send()
            .expect("request")
            .status();
        assert_eq!(status.as_u16(), 404);
    }
}

/// Runs a command that should stop by itself; one still running after 30 s (a serve that
/// started) is killed and fails the test.
fn ends_soon(command: &mut Command) -> std::process::Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("status").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running after 30 s: {command:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn a_command_whose_reader_has_gone_ends_quietly() {
    use std::os::unix::process::ExitStatusExt as _;
    // GIVEN a command whose standard output is a pipe nobody reads any more (`| head` done)
    let mut child = Command::new(BIN)
        .args(["token", "--admin"])
        .env("LOYALTY_JWT_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command runs");
    drop(child.stdout.take());
    // WHEN it writes THEN it ends by the pipe's signal, as other tools do, saying nothing
    // (before: a panic, "failed printing to stdout: Broken pipe", and a backtrace)
    let out = child.wait_with_output().expect("it ends");
    assert_eq!(out.status.signal(), Some(SIGPIPE), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SIGPIPE's number on Linux.
const SIGPIPE: i32 = 13;
