//! Finance's and support's tools from outside: `loyalty audit`, `loyalty report liability|kpis`
//! and `loyalty member export` against the store of a running `loyalty serve`, the same reports
//! over HTTP, and an account corrupted behind the ledger's back.

#[path = "../common/mod.rs"]
mod common;
/// The same tools with `--table`, in this binary (each binary links the whole engine).
mod table;

use std::process::{Command, Output};

use chrono::{SecondsFormat, Utc};
use common::{token, Server, BIN};
use serde_json::{json, Value};

const P: &str = "/v1/programs/kr-shop";
const MEMBERS: [&str; 5] = ["m-1", "m-2", "m-3", "m-4", "m-5"];

fn ago(days: i64) -> String {
    (Utc::now() - chrono::Duration::days(days)).to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn purchase(
    id: &str,
    member: &str,
    order: &str,
    lines: &[(&str, i64, i64)],
    days_ago: i64,
) -> Value {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(l, q, price)| json!({"line_id": l, "quantity": q, "unit_price": price.to_string()}))
        .collect();
    json!({"type": "purchase.completed", "version": 1, "id": id, "program": "kr-shop",
           "member": member, "occurred_at": ago(days_ago),
           "data": {"order_id": order, "currency": "KRW", "lines": lines}})
}

fn refund(id: &str, member: &str, order: &str, line: &str, qty: i64, days_ago: i64) -> Value {
    json!({"type": "purchase.refunded", "version": 1, "id": id, "program": "kr-shop",
           "member": member, "occurred_at": ago(days_ago),
           "data": {"order_id": order, "refund_id": id, "lines": [{"line_id": line, "quantity": qty}]}})
}

fn loyalty(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("LOYALTY_LOG", "warn")
        .output()
        .expect("loyalty runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

struct Shop {
    server: Server,
    admin: String,
    db: std::path::PathBuf,
}

impl Shop {
    fn start(name: &str) -> Shop {
        let db = std::env::temp_dir().join(format!("loyalty-cli-{name}-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&db);
        let server = Server::start(&["--db", db.to_str().expect("utf-8 path")]);
        Shop {
            server,
            admin: token(&["--admin"]),
            db,
        }
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let (status, answer) =
            self.server
                .call("POST", path, &self.admin, &[], Some(&body.to_string()));
        assert!((200..300).contains(&status), "{path}: {status} {answer}");
        answer
    }

    fn get(&self, path: &str) -> Value {
        let (status, answer) = self.server.call("GET", path, &self.admin, &[], None);
        assert_eq!(status, 200, "{path}: {answer}");
        answer
    }

    /// Every stored (not provisional) entry of a member, newest first.
    fn ledger(&self, member: &str) -> Vec<Value> {
        let mut entries = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("{P}/members/{member}/ledger?limit=100&cursor={c}"),
                None => format!("{P}/members/{member}/ledger?limit=100"),
            };
            let page = self.get(&path);
            entries.extend(
                page["entries"]
                    .as_array()
                    .expect("entries")
                    .iter()
                    .filter(|e| e["provisional"] == false)
                    .cloned(),
            );
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return entries,
            }
        }
    }

    /// Waits until the queue has applied an event (its first entry is in the ledger).
    fn applied(&self, member: &str, event: &str) {
        let wanted = format!("{event}#0");
        for _ in 0..300 {
            if self
                .ledger(member)
                .iter()
                .any(|e| e["id"] == wanted.as_str())
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("{event} was never applied for {member}");
    }

    /// A mixed month: purchases (some past their return window), a partial refund, a
    /// cancellation, a refund before its order, operators' adjustments, a redemption given
    /// back and one kept.
    fn workload(&self) {
        let events = [
            purchase(
                "ev-1",
                "m-1",
                "o-1",
                &[("a", 2, 30_000), ("b", 1, 40_000)],
                20,
            ),
            purchase("ev-2", "m-2", "o-2", &[("a", 1, 59_000)], 3),
            purchase("ev-4", "m-4", "o-4", &[("a", 3, 20_000)], 12),
            refund("rf-5", "m-5", "o-5", "a", 1, 9),
            purchase("ev-5", "m-5", "o-5", &[("a", 2, 25_000)], 10),
            refund("rf-1", "m-1", "o-1", "a", 1, 2),
            json!({"type": "purchase.cancelled", "version": 1, "id": "cx-4", "program": "kr-shop",
                   "member": "m-4", "occurred_at": ago(1), "data": {"order_id": "o-4"}}),
        ];
        for event in &events {
            self.post(&format!("{P}/events"), event.clone());
        }
        for member in MEMBERS {
            self.post(
                &format!("{P}/events"),
                purchase(
                    &format!("ev-final-{member}"),
                    member,
                    &format!("final-{member}"),
                    &[("a", 1, 10_000)],
                    0,
                ),
            );
        }
        for member in MEMBERS {
            self.applied(member, &format!("ev-final-{member}"));
        }
        self.post(
            &format!("{P}/members/m-3/adjustments"),
            json!({"points": 9000, "reason": "store credit"}),
        );
        self.post(
            &format!("{P}/members/m-2/adjustments"),
            json!({"points": 500, "reason": "apology"}),
        );
        let m3 = token(&["--member", "m-3"]);
        let redeem = |key: &str, reward: &str| {
            let (status, answer) = self.server.call(
                "POST",
                &format!("{P}/me/redemptions"),
                &m3,
                &[("Idempotency-Key", key)],
                Some(&json!({"reward": reward}).to_string()),
            );
            assert_eq!(status, 201, "{answer}");
            answer
        };
        let first = redeem("r-1", "coupon-5000");
        self.post(
            &format!(
                "{P}/members/m-3/redemptions/{}/reverse",
                first["id"].as_str().expect("id")
            ),
            json!({"reason": "sent twice"}),
        );
        redeem("r-2", "free-shipping");
    }
}

fn assert_reconciles(report: &Value) {
    let by_month: i64 = report["by_expiry_month"]
        .as_array()
        .expect("months")
        .iter()
        .map(|m| m["points"].as_i64().expect("points"))
        .sum();
    assert_eq!(
        by_month,
        report["outstanding"].as_i64().expect("outstanding")
    );
    let mut opening = 0;
    for m in report["movements"].as_array().expect("movements") {
        let n = |k: &str| m[k].as_i64().expect("number");
        assert_eq!(n("opening"), opening, "{m}");
        assert_eq!(
            n("opening") + n("issued") - n("redeemed") - n("expired") - n("clawed_back")
                + n("adjusted")
                + n("transferred")
                - n("forfeited")
                - n("paid_out"),
            n("closing"),
            "{m}"
        );
        opening = n("closing");
    }
    assert_eq!(opening, report["net"].as_i64().expect("net"));
}

#[test]
fn the_audit_the_reports_and_the_export_agree_with_the_api_and_catch_a_corrupted_account() {
    // GIVEN a shop after a mixed month of purchases, refunds, a cancellation, adjustments and
    // redemptions, all applied
    let shop = Shop::start("finance");
    shop.workload();
    let db = shop.db.to_str().expect("utf-8 path").to_string();
    let entries: usize = MEMBERS.iter().map(|m| shop.ledger(m).len()).sum();

    // WHEN the store is audited beside the running server
    let audit = loyalty(&["audit", "--db", &db]);

    // THEN it exits 0 and its last line counts every member and stored entry
    let text = stdout(&audit);
    assert!(
        audit.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    assert_eq!(
        text.lines().last(),
        Some(format!("audit: members=5 entries={entries} violations=0").as_str())
    );

    // WHEN the liability is reported by the command and over HTTP
    let cli: Value =
        serde_json::from_slice(&loyalty(&["report", "liability", "--db", &db, "--json"]).stdout)
            .expect("the report is JSON");
    let http = shop.get(&format!("{P}/reports/liability"));

    // THEN both say the same, it reconciles, and it is what the members' own views add up to
    assert_eq!(cli, http);
    assert_reconciles(&http);
    let views: Vec<Value> = MEMBERS
        .iter()
        .map(|m| shop.get(&format!("{P}/members/{m}")))
        .collect();
    let sum = |k: &str| {
        views
            .iter()
            .map(|v| v[k].as_i64().expect("number"))
            .sum::<i64>()
    };
    assert_eq!(http["net"].as_i64(), Some(sum("balance")));
    assert_eq!(http["pending"].as_i64(), Some(sum("pending")));
    assert_eq!(http["outstanding"], http["net"], "nobody owes points here");
    assert_eq!(http["members"], 5);
    assert_eq!(
        http["value"].as_str(),
        Some(http["outstanding"].to_string().as_str()),
        "1 won a point"
    );
    let month = &http["movements"][0];
    assert_eq!(
        month["clawed_back"], 1150,
        "300 of o-1, 600 of o-4 cancelled, 250 of o-5 refunded before it came"
    );
    assert_eq!(
        month["redeemed"], 3000,
        "a coupon given back, free shipping kept"
    );

    // AND the table and the chart are there
    let client = reqwest::blocking::Client::new();
    let csv = client
        .get(format!(
            "{}{P}/reports/liability?format=csv",
            shop.server.base
        ))
        .bearer_auth(&shop.admin)
        .send()
        .expect("csv");
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = csv.text().expect("text");
    assert!(
        csv.starts_with("month,opening,issued,redeemed,expired,clawed_back,adjusted,transferred,forfeited,paid_out,debt_written_off,closing,expiring,pending_released\n"),
        "{csv}"
    );
    // AND each month of the report adds up in it, and the months after it, which only have
    // points expiring, leave their movement empty rather than a closing of 0
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let movements = http["movements"].as_array().expect("movements").len();
    assert!(rows.len() > movements, "{csv}");
    for (i, row) in rows.iter().enumerate() {
        if i < movements {
            let n: Vec<i64> = row[1..12]
                .iter()
                .map(|c| c.parse().expect("a number"))
                .collect();
            assert_eq!(
                n[0] + n[1] - n[2] - n[3] - n[4] + n[5] + n[6] - n[7] - n[8] + n[9],
                n[10],
                "{row:?}"
            );
        } else {
            assert!(row[1..12].iter().all(|c| c.is_empty()), "{row:?}");
            assert!(!row[12].is_empty() || !row[13].is_empty(), "{row:?}");
        }
    }
    let svg = tempfile_path("liability.svg");
    assert!(loyalty(&[
        "report",
        "liability",
        "--db",
        &db,
        "--svg",
        svg.to_str().expect("path")
    ])
    .status
    .success());
    assert!(std::fs::read_to_string(&svg)
        .expect("svg")
        .starts_with("<svg"));

    // WHEN the KPIs and a member's export are asked for, by command and over HTTP
    let kpis: Value =
        serde_json::from_slice(&loyalty(&["report", "kpis", "--db", &db, "--json"]).stdout)
            .expect("json");
    assert_eq!(kpis, shop.get(&format!("{P}/reports/kpis")));
    assert_eq!(kpis["members"], 5);
    assert_eq!(
        kpis["orders"], 9,
        "four orders of the month and the five final ones"
    );
    let export: Value =
        serde_json::from_slice(&loyalty(&["member", "export", "m-3", "--db", &db]).stdout)
            .expect("json");
    let over_http = shop.get(&format!("{P}/members/m-3/export"));

    // THEN the export holds m-3's whole ledger and redemptions, the same both ways
    assert_eq!(export["ledger"], over_http["ledger"]);
    assert_eq!(
        export["ledger"].as_array().expect("ledger").len(),
        shop.ledger("m-3").len()
    );
    assert_eq!(
        export["redemptions"].as_array().expect("redemptions").len(),
        2
    );

    // WHEN an audit is asked for over HTTP
    let (status, run) = shop
        .server
        .call("POST", &format!("{P}/audits"), &shop.admin, &[], None);
    assert_eq!(status, 202, "{run}");
    let at = format!("{P}/audits/{}", run["id"].as_str().expect("id"));
    let mut done = Value::Null;
    for _ in 0..100 {
        done = shop.get(&at);
        if done["status"] == "done" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // THEN the job ran on the queue and its report says what the command said
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["report"]["members"], 5);
    assert_eq!(done["report"]["entries"], entries);
    assert_eq!(done["report"]["violations_total"], 0);

    // WHEN m-3's balance is raised by 7 in the file, behind the ledger's back, and m-2's
    // account is made unreadable
    drop(shop.server);
    let conn = rusqlite::Connection::open(&shop.db).expect("open");
    conn.execute(
        "UPDATE accounts SET body = json_set(body, '$.balance', json_extract(body, '$.balance') + 7) WHERE member = 'm-3'",
        [],
    )
    .expect("update");
    conn.execute(
        "UPDATE accounts SET body = '{not an account' WHERE member = 'm-2'",
        [],
    )
    .expect("update");
    drop(conn);
    let audit = loyalty(&["audit", "--db", &db]);

    // THEN the audit exits 1, names m-3 and the difference, names m-2 as unreadable without
    // stopping, and says so on its last line
    let text = stdout(&audit);
    assert_eq!(audit.status.code(), Some(1), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("violation: kr-shop/m-3: balance:")
                && l.ends_with("(difference +7)")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("violation: kr-shop/m-2: unreadable:")),
        "{text}"
    );
    let last = text.lines().last().expect("a last line");
    assert!(last.starts_with("audit: members=4 "), "{last}");
    assert!(!last.ends_with("violations=0"));

    // WHEN the audit is asked for a program that does not exist (a typo)
    let typo = loyalty(&["audit", "--db", &db, "--program", "kr-shp"]);
    // THEN it fails naming it, rather than passing over nobody
    let said = String::from_utf8_lossy(&typo.stderr);
    assert_eq!(typo.status.code(), Some(2), "{said}");
    assert!(said.contains("kr-shp"), "{said}");

    // WHEN a row of the books cannot be read
    let conn = rusqlite::Connection::open(&shop.db).expect("open");
    conn.execute(
        "UPDATE books SET day = '0000-00-00' WHERE rowid = (SELECT MIN(rowid) FROM books)",
        [],
    )
    .expect("update");
    drop(conn);
    let audit = loyalty(&["audit", "--db", &db]);
    // THEN that is a violation of the program, and its members are still checked
    let text = stdout(&audit);
    assert_eq!(audit.status.code(), Some(1), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("violation: kr-shop: books: the program's books cannot be read")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("violation: kr-shop/m-3: balance:")),
        "{text}"
    );
    let _ = std::fs::remove_file(&shop.db);
}

#[cfg(target_os = "linux")]
#[test]
fn a_report_written_to_a_full_disk_ends_saying_so() {
    // GIVEN a shop's database with an operator's credit
    let shop = Shop::start("full-output");
    shop.post(
        "/v1/programs/kr-shop/members/m-f/adjustments",
        json!({"points": 500, "reason": "goodwill"}),
    );
    let db = shop.db.to_str().unwrap().to_string();
    // WHEN reports are written where every write fails for want of space
    for args in [
        vec!["report", "liability", "--db", &db, "--json"],
        vec!["audit", "--db", &db],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = Command::new(BIN)
            .args(&args)
            .env("LOYALTY_LOG", "warn")
            .stdout(full)
            .output()
            .unwrap();
        // THEN the command ends with EX_IOERR and a line that says why (before: a panic,
        // status 101)
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(74), "{args:?}: {said}");
        assert!(
            said.contains("loyalty: cannot write the output: No space left on device"),
            "{args:?}: {said}"
        );
        assert!(!said.contains("panicked"), "{args:?}: {said}");
    }
    let _ = std::fs::remove_file(&shop.db);
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}-{name}", std::process::id()))
}
