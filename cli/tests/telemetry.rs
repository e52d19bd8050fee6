//! What operators see of `loyalty serve`: JSON logs with each message's ids and trace and no
//! personal data, and `GET /metrics` in Prometheus's text format.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use common::{token, BIN, SECRET};
use serde_json::{json, Value};

const EMAIL: &str = "minji.telemetry@example.com";
const TRACE: &str = "1-6750a1b2-0123456789abcdef01234567";

struct Logged {
    child: std::process::Child,
    base: String,
    log: std::path::PathBuf,
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `loyalty serve` with JSON logs at INFO written to a file.
fn serve_with_logs(name: &str) -> Logged {
    serve_logging(name, "info")
}

/// `loyalty serve` with JSON logs at `level` written to a file.
fn serve_logging(name: &str, level: &str) -> Logged {
    serve_logging_with(name, level, &[])
}

/// [`serve_logging`], with more environment.
fn serve_logging_with(name: &str, level: &str, env: &[(&str, &str)]) -> Logged {
    serve_running_jobs(name, level, env, "0")
}

/// [`serve_logging_with`], running the scheduled jobs every `jobs_every` seconds.
fn serve_running_jobs(name: &str, level: &str, env: &[(&str, &str)], jobs_every: &str) -> Logged {
    serve_logging_on(name, level, env, jobs_every, &["--memory"])
}

/// `loyalty serve` on the store `store` says (`--memory`, `--db FILE`), logging to a file.
fn serve_logging_on(
    name: &str,
    level: &str,
    env: &[(&str, &str)],
    jobs_every: &str,
    store: &[&str],
) -> Logged {
    let log = log_path(name);
    let file = std::fs::File::create(&log).unwrap();
    let child = serve_command(level, env, jobs_every, store)
        .stderr(file)
        .spawn()
        .unwrap();
    listening(child, log)
}

fn log_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("loyalty-{name}-{}.log", std::process::id()))
}

fn serve_command(level: &str, env: &[(&str, &str)], jobs_every: &str, store: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["--log-format", "json", "serve", "--addr", "127.0.0.1:0"])
        .args(store)
        .args(["--jobs-every", jobs_every])
        .env("LOYALTY_JWT_SECRET", SECRET)
        .env("LOYALTY_LOG", level)
        .envs(env.iter().copied())
        .stdout(Stdio::piped());
    command
}

/// The server once it says where it listens.
fn listening(mut child: std::process::Child, log: std::path::PathBuf) -> Logged {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(url) = line.strip_prefix("loyalty serve: listening on ") {
            break url.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Logged { child, base, log }
}

fn purchase(id: &str, member: &str) -> Value {
    let occurred =
        (Utc::now() - chrono::Duration::days(8)).to_rfc3339_opts(SecondsFormat::Secs, true);
    json!({
        "type": "purchase.completed", "version": 1, "id": id, "program": "kr-shop",
        "member": member, "occurred_at": occurred,
        "data": {"order_id": format!("o-{id}"), "currency": "KRW", "channel": "online",
                 "lines": [{"line_id": "1", "sku": "TEE-01", "quantity": 1, "unit_price": "59000"}]}
    })
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn metrics(base: &str) -> String {
    let response = client().get(format!("{base}/metrics")).send().unwrap();
    assert_eq!(response.status(), 200);
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    response.text().unwrap()
}

/// The value of one series of the text format, if present.
fn series(text: &str, name_and_labels: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

/// [`series`] for a value with a fraction (a time's sum).
fn series_of(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_processed_event_is_logged_with_its_ids_and_trace_and_counted_at_metrics() {
    // GIVEN serve with JSON logs, and a member named by an email address
    let serve = serve_with_logs("telemetry");
    let admin = token(&["--admin"]);
    let member = format!("email:{EMAIL}");
    // WHEN a purchase is posted with an X-Ray trace header
    let response = client()
        .post(format!("{}/v1/programs/kr-shop/events", serve.base))
        .bearer_auth(&admin)
        .header(
            "X-Amzn-Trace-Id",
            format!("Root={TRACE};Parent=53995c3f42cd8ad8;Sampled=1"),
        )
        .json(&purchase("ev-tel-1", &member))
        .send()
        .unwrap();
    assert_eq!(response.status(), 202);
    // THEN /metrics counts it as applied for kr-shop, with the points it issued
    let applied =
        "loyalty_events_total{function=\"serve\",outcome=\"applied\",program=\"kr-shop\"}";
    let text = eventually("the event counted", || {
        let text = metrics(&serve.base);
        (series(&text, applied) == Some(1)).then_some(text)
    });
    let issued = series(
        &text,
        "loyalty_points_issued_total{function=\"serve\",program=\"kr-shop\"}",
    );
    assert_eq!(issued, Some(590), "{text}");
    // AND the relay of its outgoing messages says how long they waited in the outbox
    eventually("the outbox lag observed", || {
        let text = metrics(&serve.base);
        series(
            &text,
            "loyalty_outbox_lag_milliseconds_count{function=\"serve\",program=\"kr-shop\"}",
        )
        .filter(|count| *count >= 1)
    });
    assert!(
        text.contains("# TYPE loyalty_events_total counter"),
        "{text}"
    );
    assert!(
        series(
            &text,
            "loyalty_requests_total{function=\"serve\",status=\"2xx\"}"
        )
        .unwrap()
            >= 1,
        "{text}"
    );

    // AND the log has one INFO JSON line for it, with its ids, outcome and the request's trace
    let processed = eventually("the processed line", || {
        let log = std::fs::read_to_string(&serve.log).unwrap();
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| {
                l["fields"]["message"] == "message processed" && l["span"]["event_id"] == "ev-tel-1"
            })
    });
    assert_eq!(processed["level"], "INFO");
    assert_eq!(processed["fields"]["outcome"], "applied");
    let span = &processed["span"];
    assert_eq!(
        (span["program"].as_str(), span["kind"].as_str()),
        (Some("kr-shop"), Some("purchase.completed"))
    );
    assert_eq!(span["trace"], TRACE, "{processed}");
    assert!(
        span["member"].as_str().unwrap().starts_with("person-"),
        "{processed}"
    );
    // AND the request was logged by its route with the same trace
    let log = std::fs::read_to_string(&serve.log).unwrap();
    let request = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == "request answered" && l["fields"]["trace"] == TRACE)
        .unwrap_or_else(|| panic!("no request line with the trace in\n{log}"));
    assert_eq!(request["fields"]["route"], "/v1/programs/{program}/events");
    // AND its notice is logged once, named by its program-scoped id, with the same trace
    let notices = eventually("the notice line", || {
        let log = std::fs::read_to_string(&serve.log).unwrap();
        let found: Vec<Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["fields"]["message"] == "notice")
            .collect();
        (!found.is_empty()).then_some(found)
    });
    assert_eq!(notices.len(), 1, "{notices:?}");
    let notice = &notices[0]["fields"];
    assert_eq!(notice["message_id"], "kr-shop/points-earned-ev-tel-1");
    assert_eq!(notice["event_id"], "points-earned-ev-tel-1");
    assert_eq!(
        (notice["kind"].as_str(), notice["trace"].as_str()),
        (Some("points.earned"), Some(TRACE))
    );
    assert!(
        notice["member"].as_str().unwrap().starts_with("person-"),
        "{notice}"
    );
    // WHEN support merges the email's member into an app member, whose ids (the merge's own
    // message, its tier check) are made of the email
    let app = "m-app-telemetry";
    let response = client()
        .post(format!("{}/v1/programs/kr-shop/events", serve.base))
        .bearer_auth(&admin)
        .json(&purchase("ev-tel-2", app))
        .send()
        .unwrap();
    assert_eq!(response.status(), 202);
    eventually("the app member", || {
        let found = client()
            .get(format!("{}/v1/programs/kr-shop/members/{app}", serve.base))
            .bearer_auth(&admin)
            .send()
            .unwrap();
        let view: Value = found.json().unwrap();
        (view["balance"].as_i64() > Some(0)).then_some(())
    });
    let merged = client()
        .post(format!(
            "{}/v1/programs/kr-shop/members/{app}/merge",
            serve.base
        ))
        .bearer_auth(&admin)
        .json(&json!({"from": member, "reason": "the same person"}))
        .send()
        .unwrap();
    assert_eq!(
        merged.status(),
        200,
        "{}",
        merged.text().unwrap_or_default()
    );
    // THEN the merge's message is logged as processed, by a digest of its id
    let log = eventually("the merge's line", || {
        let log = std::fs::read_to_string(&serve.log).unwrap();
        let done = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|l| {
                l["fields"]["message"] == "message processed" && l["span"]["kind"] == "member.merge"
            });
        done.then_some(log)
    });
    // AND no line holds the email, the token or the signing secret
    for secret in [EMAIL, admin.as_str(), SECRET] {
        assert!(!log.contains(secret), "the log holds {secret}:\n{log}");
    }
}

/// The JSON lines of the log whose message is `message`.
fn lines_saying(serve: &Logged, message: &str) -> Vec<Value> {
    std::fs::read_to_string(&serve.log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"] == message)
        .collect()
}

#[test]
fn a_store_that_cannot_commit_is_tried_less_and_less_often_and_notices_go_out_once() {
    // GIVEN serve on a database file whose outbox cannot be emptied of notices, as a full disk
    // refuses every commit (a trigger refuses the relay's deletes of them)
    let dir = std::env::temp_dir().join(format!("loyalty-backoff-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("loyalty.db");
    let db_arg = db.to_str().unwrap();
    let serve = serve_logging_on("backoff", "info", &[], "0", &["--db", db_arg]);
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER refuse BEFORE DELETE ON outbox \
         WHEN old.body LIKE '{\"queue\":\"notify\"%' \
         BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
    )
    .unwrap();
    // WHEN a purchase is processed, whose commit wrote its notice to the outbox
    let response = client()
        .post(format!("{}/v1/programs/kr-shop/events", serve.base))
        .bearer_auth(token(&["--admin"]))
        .json(&purchase("ev-full-1", "m-full"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 202);
    // THEN the relay waits longer after each failure: 1, 2, then 4 seconds (before: every
    // second, a line each time)
    let waits = eventually("three failed relays", || {
        let lines = lines_saying(&serve, "cannot relay the outbox; will retry");
        let waits: Vec<u64> = lines
            .iter()
            .filter_map(|l| l["fields"]["retry_in_seconds"].as_u64())
            .collect();
        (waits.len() >= 3).then_some(waits)
    });
    assert_eq!(waits[..3], [1, 2, 4]);
    // AND once the store takes writes again, the notice has gone out once (before: at every
    // failed pass)
    conn.execute_batch("DROP TRIGGER refuse").unwrap();
    eventually("the outbox emptied", || {
        let left: i64 = conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
            .unwrap();
        (left == 0).then_some(())
    });
    let notices = lines_saying(&serve, "notice");
    let ids: Vec<&str> = notices
        .iter()
        .filter_map(|l| l["fields"]["message_id"].as_str())
        .filter(|id| id.contains("ev-full-1"))
        .collect();
    let once: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
    assert!(!ids.is_empty() && ids.len() == once.len(), "{ids:?}");
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sets the file size limit (`ulimit -f`) of a running process, in bytes.
#[cfg(target_os = "linux")]
fn limit_file_size(pid: u32, bytes: u64) {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit reads the limit given and writes nothing back (null old limit).
    let done = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(done, 0, "{}", std::io::Error::last_os_error());
}

#[cfg(target_os = "linux")]
#[test]
fn a_disk_that_refuses_writes_is_a_fault_that_passes_and_is_counted() {
    // GIVEN serve on a database file, with one purchase processed
    let dir = std::env::temp_dir().join(format!("loyalty-disk-fault-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("loyalty.db");
    // (its log goes through a pipe, which no file size limit stops)
    let log = log_path("disk-fault");
    let mut child = serve_command("info", &[], "0", &["--db", db.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut file = std::fs::File::create(&log).unwrap();
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut file));
    let serve = listening(child, log);
    let admin = token(&["--admin"]);
    let post = |event: &Value| {
        client()
            .post(format!("{}/v1/programs/kr-shop/events", serve.base))
            .bearer_auth(&admin)
            .json(event)
            .send()
            .unwrap()
    };
    assert_eq!(post(&purchase("ev-disk-1", "m-disk-1")).status(), 202);
    common::settled(&db);
    // WHEN the process may write no byte more to a file (a file size limit: every write of
    // the database fails, as on a full or failing disk)
    limit_file_size(serve.child.id(), 1);
    let refused = post(&purchase("ev-disk-2", "m-disk-2"));
    // THEN the purchase is refused as a 503 that says to come back later (before: "busy",
    // Retry-After 1, as for contention, and a 500 on routes that write the store themselves;
    // or SIGXFSZ ended the process)
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "30");
    let problem: Value = refused.json().unwrap();
    assert_eq!(problem["type"], "/problems/unavailable", "{problem}");
    assert_eq!(
        problem["detail"], "the service cannot store anything now; try again later",
        "{problem}"
    );

    // AND so is an operator's adjustment, which writes the store itself (before: 500)
    let adjusted = client()
        .post(format!(
            "{}/v1/programs/kr-shop/members/m-disk-1/adjustments",
            serve.base
        ))
        .bearer_auth(&admin)
        .json(&json!({"points": 500, "reason": "goodwill"}))
        .send()
        .unwrap();
    assert_eq!(adjusted.status(), 503);
    assert_eq!(adjusted.headers()["retry-after"], "30");
    // AND it is counted, and the log names the disk
    let faults = series(
        &metrics(&serve.base),
        "loyalty_storage_faults_total{function=\"serve\"}",
    );
    assert!(faults.is_some_and(|n| n >= 1), "{faults:?}");
    let said = eventually("the fault's line", || {
        lines_saying(&serve, "store disk fault").into_iter().next()
    });
    assert!(said.to_string().contains("disk I/O error"), "{said}");
    // AND once the limit is lifted, the same purchase sent again is taken and has its effect,
    // as the first one had
    limit_file_size(serve.child.id(), libc::RLIM_INFINITY);
    assert_eq!(post(&purchase("ev-disk-2", "m-disk-2")).status(), 202);
    common::settled(&db);
    let view = |member: &str| {
        let response = client()
            .get(format!(
                "{}/v1/programs/kr-shop/members/{member}",
                serve.base
            ))
            .bearer_auth(&admin)
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
        let view: Value = response.json().unwrap();
        (view["balance"].clone(), view["pending"].clone())
    };
    assert_eq!(view("m-disk-2"), view("m-disk-1"));
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn events_count_events_and_tier_checks_are_tier_recalc_s() {
    // GIVEN serve
    let serve = serve_with_logs("tier-checks");
    let admin = token(&["--admin"]);
    // WHEN a purchase takes a member past SILVER's threshold (300,000 KRW), which sends a
    // tier check after it
    let mut big = purchase("ev-tier-1", "m-tier");
    big["data"]["lines"][0]["quantity"] = json!(6);
    let response = client()
        .post(format!("{}/v1/programs/kr-shop/events", serve.base))
        .bearer_auth(&admin)
        .json(&big)
        .send()
        .unwrap();
    assert_eq!(response.status(), 202);
    // THEN the tier check is counted as tier-recalc's, as in the stack
    let checked = |text: &str| {
        text.lines().any(|l| {
            l.starts_with("loyalty_events_total{function=\"tier-recalc\",")
                && l.contains("program=\"kr-shop\"")
                && l.ends_with(" 1")
        })
    };
    let text = eventually("the tier check counted", || {
        let text = metrics(&serve.base);
        checked(&text).then_some(text)
    });
    // AND the events counted as serve's are the one purchase (before: 2 applied)
    let applied =
        "loyalty_events_total{function=\"serve\",outcome=\"applied\",program=\"kr-shop\"}";
    assert_eq!(series(&text, applied), Some(1), "{text}");
}

#[test]
fn a_refused_request_is_logged_with_its_problem_and_program() {
    // GIVEN serve
    let serve = serve_with_logs("refused-request");
    let admin = token(&["--admin"]);
    // WHEN a purchase in another currency than kr-shop's is posted
    let mut dollars = purchase("ev-usd-1", "m-usd");
    dollars["data"]["currency"] = json!("USD");
    let response = client()
        .post(format!("{}/v1/programs/kr-shop/events", serve.base))
        .bearer_auth(&admin)
        .json(&dollars)
        .send()
        .unwrap();
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().unwrap();
    // THEN the request's line names the program, the problem and why (before: the route and
    // the status alone)
    let line = eventually("the request's line", || {
        lines_saying(&serve, "request answered")
            .into_iter()
            .find(|l| l["fields"]["status"] == 400)
    });
    let fields = &line["fields"];
    assert_eq!(fields["program"], "kr-shop", "{line}");
    let slug = problem["type"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap();
    assert_eq!(fields["problem"], slug, "{line}");
    assert_eq!(fields["detail"], problem["detail"], "{line}");
}

#[test]
fn an_id_refused_and_quoted_leaves_no_piece_of_an_address_in_the_log() {
    // GIVEN serve
    let serve = serve_with_logs("refused-id");
    // WHEN a purchase names a member id that breaks the rule, with an email address at its
    // 32nd character (the detail quotes an id's first 40)
    let member = format!("{} kim.minji@example.com #1", "a".repeat(30));
    let response = client()
        .post(format!("{}/v1/programs/kr-shop/events", serve.base))
        .bearer_auth(token(&["--admin"]))
        .json(&purchase("ev-id-cut-1", &member))
        .send()
        .unwrap();
    assert_eq!(response.status(), 400);
    // THEN the request's line is there, and no piece of the address is (before: the cut left
    // `kim.minji…`, which no longer reads as an address)
    let line = eventually("the request's line", || {
        lines_saying(&serve, "request answered")
            .into_iter()
            .find(|l| l["fields"]["status"] == 400)
    });
    assert!(
        line["fields"]["detail"].as_str().unwrap().contains("aaa"),
        "{line}"
    );
    let log = std::fs::read_to_string(&serve.log).unwrap();
    assert!(!log.contains("kim.minji"), "{log}");
}

#[test]
fn a_guest_order_sent_with_an_address_for_its_id_leaves_no_address_in_the_log() {
    // GIVEN serve with kr-shop's Shopify secret
    let secret = "the-shop-s-secret";
    let serve = serve_logging_with(
        "guest-order",
        "info",
        &[("LOYALTY_SECRET_KR_SHOP_SHOPIFY", secret)],
    );
    // WHEN a guest's paid order arrives whose id is an email address
    let body = json!({"id": "ann.lee@example.org", "test": false}).to_string();
    let response = client()
        .post(format!("{}/webhooks/shopify/kr-shop", serve.base))
        .header(
            "X-Shopify-Hmac-Sha256",
            loyalty_core::webhooks::sign_base64(secret, body.as_bytes()),
        )
        .header("X-Shopify-Topic", "orders/paid")
        .header("X-Shopify-Webhook-Id", "guest-1")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    // THEN the guest order's line is there, and the address is not (before: logged as the
    // order's id)
    eventually("the guest order's line", || {
        lines_saying(&serve, "guest order acknowledged without points").pop()
    });
    let log = std::fs::read_to_string(&serve.log).unwrap();
    assert!(!log.contains("ann.lee"), "{log}");
}

#[test]
fn adjustments_are_counted_as_credits_and_debits() {
    // GIVEN serve
    let serve = serve_with_logs("adjustments");
    let admin = token(&["--admin"]);
    let adjust = |points: i64| {
        let response = client()
            .post(format!(
                "{}/v1/programs/kr-shop/members/m-adj/adjustments",
                serve.base
            ))
            .bearer_auth(&admin)
            .json(&json!({"points": points, "reason": "goodwill"}))
            .send()
            .unwrap();
        assert!(
            response.status().is_success(),
            "{}",
            response.text().unwrap()
        );
    };
    // WHEN an operator credits 500 points and debits 120
    adjust(500);
    adjust(-120);
    // THEN each is counted as what it is (before: in no count, so the counts did not add up
    // to the points outstanding)
    let text = metrics(&serve.base);
    let labels = "{function=\"serve\",program=\"kr-shop\"}";
    assert_eq!(
        series(&text, &format!("loyalty_points_credited_total{labels}")),
        Some(500),
        "{text}"
    );
    assert_eq!(
        series(&text, &format!("loyalty_points_debited_total{labels}")),
        Some(120),
        "{text}"
    );
    assert_eq!(
        series(&text, &format!("loyalty_points_issued_total{labels}")),
        None,
        "{text}"
    );
}

#[test]
fn warnings_kept_at_warn_say_which_message_they_are_about() {
    // GIVEN serve logging warnings and errors only
    let serve = serve_logging("warn-level", "warn");
    let admin = token(&["--admin"]);
    // WHEN an event that kr-shop refuses for good is processed (it rewards no "share")
    let occurred = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let share = json!({
        "type": "engagement.recorded", "version": 1, "id": "ev-warn-1", "program": "kr-shop",
        "member": "m-warn", "occurred_at": occurred, "data": {"action": "share", "ref": "s-1"}
    });
    let response = client()
        .post(format!("{}/v1/programs/kr-shop/events", serve.base))
        .bearer_auth(&admin)
        .json(&share)
        .send()
        .unwrap();
    assert_eq!(response.status(), 202);
    // THEN its warning names the message, its program and member (before: none of them)
    let warning = eventually("the rejection's warning", || {
        lines_saying(&serve, "message rejected for good").pop()
    });
    assert_eq!(warning["level"], "WARN");
    let span = &warning["span"];
    assert_eq!(
        (span["event_id"].as_str(), span["program"].as_str()),
        (Some("ev-warn-1"), Some("kr-shop")),
        "{warning}"
    );
    assert_eq!(span["member"], "m-warn", "{warning}");
    // AND no INFO line was written, and the rejection is said once (before: earn's own
    // "event rejected" too, without the message's span)
    let log = std::fs::read_to_string(&serve.log).unwrap();
    assert!(!log.contains("\"level\":\"INFO\""), "{log}");
    let warnings = log
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\""))
        .count();
    assert_eq!(warnings, 1, "{log}");
}

#[test]
fn a_webhook_refused_for_its_signature_is_a_warning_naming_platform_and_program() {
    // GIVEN serve logging warnings, with kr-shop's Shopify secret
    let serve = serve_logging_with(
        "webhook-refused",
        "warn",
        &[("LOYALTY_SECRET_KR_SHOP_SHOPIFY", "the-shop-s-secret")],
    );
    // WHEN a delivery signed with another secret arrives (the shop rotated it, serve did not)
    let response = client()
        .post(format!("{}/webhooks/shopify/kr-shop", serve.base))
        .header("X-Shopify-Hmac-Sha256", "c29tZXRoaW5nIGVsc2U=")
        .header("X-Shopify-Topic", "orders/paid")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(response.status(), 401);
    // THEN a warning says which platform and program refused it, and why (before: only the
    // request's INFO line, by its route, which a WARN level drops)
    let warning = eventually("the refusal's warning", || {
        lines_saying(&serve, "webhook delivery refused").pop()
    });
    let fields = &warning["fields"];
    assert_eq!(
        (
            fields["platform"].as_str(),
            fields["program"].as_str(),
            fields["problem"].as_str()
        ),
        (Some("shopify"), Some("kr-shop"), Some("invalid-signature")),
        "{warning}"
    );
    // AND neither the secret nor the signature is in the log
    let log = std::fs::read_to_string(&serve.log).unwrap();
    assert!(
        !log.contains("the-shop-s-secret") && !log.contains("c29tZXRoaW5n"),
        "{log}"
    );
}

#[test]
fn a_delivery_sent_again_is_logged_and_counted_as_a_duplicate() {
    // GIVEN serve, and a purchase processed
    let serve = serve_with_logs("duplicates");
    let admin = token(&["--admin"]);
    let post = || {
        let response = client()
            .post(format!("{}/v1/programs/kr-shop/events", serve.base))
            .bearer_auth(&admin)
            .json(&purchase("ev-dup-1", "m-dup"))
            .send()
            .unwrap();
        assert_eq!(response.status(), 202);
    };
    post();
    let applied =
        "loyalty_events_total{function=\"serve\",outcome=\"applied\",program=\"kr-shop\"}";
    eventually("the purchase applied", || {
        (series(&metrics(&serve.base), applied) == Some(1)).then_some(())
    });
    // WHEN the shop delivers it again
    post();
    // THEN the drop is logged with the event's id, and counted as a duplicate (before: only
    // the request's line, and nothing counted)
    let dropped = eventually("the duplicate's line", || {
        lines_saying(&serve, "message sent before; dropped").pop()
    });
    let fields = &dropped["fields"];
    assert_eq!(
        (fields["event_id"].as_str(), fields["outcome"].as_str()),
        (Some("ev-dup-1"), Some("duplicate")),
        "{dropped}"
    );
    // AND with its kind and member, as a processed message's line has them
    assert_eq!(
        (fields["kind"].as_str(), fields["member"].as_str()),
        (Some("purchase.completed"), Some("m-dup")),
        "{dropped}"
    );
    let duplicate =
        "loyalty_events_total{function=\"serve\",outcome=\"duplicate\",program=\"kr-shop\"}";
    let text = metrics(&serve.base);
    assert_eq!(series(&text, duplicate), Some(1), "{text}");
    assert_eq!(series(&text, applied), Some(1), "{text}");
}

#[test]
fn a_job_run_is_timed_to_the_microsecond() {
    // GIVEN serve running its jobs every second on kr-shop, which has no member: runs that
    // take a millisecond or two, or less
    let serve = serve_running_jobs("job-times", "info", &[], "1");
    let series = "{function=\"serve\",job=\"release-pending\",program=\"kr-shop\"}";
    let sum = format!("loyalty_job_duration_milliseconds_sum{series}");
    // WHEN the runs' times are read as they add up
    // THEN their sum has a fraction of a millisecond (before: whole milliseconds, so a run of
    // 0.2 ms counted 0 and the sum never had one); each run gives it another chance, so a
    // sum that lands on a whole number once does not fail this
    eventually("a sum with a fraction of a millisecond", || {
        let text = metrics(&serve.base);
        series_of(&text, &sum)
            .filter(|ms| *ms > 0.0 && ms.fract() != 0.0)
            .map(|_| ())
    });
}

#[test]
fn metrics_needs_no_token_and_lists_every_family() {
    // GIVEN a fresh serve WHEN /metrics is read without a token
    let serve = serve_with_logs("metrics-families");
    let text = metrics(&serve.base);
    // THEN every family is declared, even before anything was counted
    for family in [
        "loyalty_events_total",
        "loyalty_points_issued_total",
        "loyalty_points_redeemed_total",
        "loyalty_points_returned_total",
        "loyalty_points_expired_total",
        "loyalty_points_clawed_back_total",
        "loyalty_points_credited_total",
        "loyalty_points_debited_total",
        "loyalty_commit_conflicts_total",
        "loyalty_queue_send_failures_total",
        "loyalty_outbox_relayed_total",
        "loyalty_job_duration_milliseconds",
        "loyalty_job_run_failed_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{text}"
        );
    }
}
