//! Operations that repair and migrate, from outside: `loyalty import balances|orders`, `loyalty
//! rejected list|show|replay` and `loyalty dlq list|redrive` against the SQLite file of a
//! running `loyalty serve`, and the same rejected events over HTTP; `loyalty reconcile` against
//! fake platform APIs (`reconcile`); the same commands on a DynamoDB table in moto (`table`);
//! merging members (`members`).
//! One test binary for all of them: each binary links the whole engine.

#[path = "../common/mod.rs"]
mod common;
mod members;
mod membership;
mod reconcile;
mod table;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use common::{token, Server, BIN};
use loyalty_core::webhooks::sign_base64;
use serde_json::{json, Value};

const P: &str = "/v1/programs/kr-shop";
const SHOPIFY_SECRET: &str = "shpss_operations";

struct Shop {
    server: Server,
    admin: String,
    db: PathBuf,
    dir: PathBuf,
}

impl Shop {
    fn start(name: &str) -> Shop {
        let dir = std::env::temp_dir().join(format!("loyalty-ops-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let db = dir.join("loyalty.db");
        let server = Server::start_env(
            &["--db", db.to_str().expect("utf-8 path")],
            &[("LOYALTY_SECRET_KR_SHOP_SHOPIFY", SHOPIFY_SECRET)],
        );
        Shop {
            server,
            admin: token(&["--admin"]),
            db,
            dir,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        self.server
            .call(method, path, &self.admin, &[], body.as_deref())
    }

    fn get(&self, path: &str) -> Value {
        let (status, answer) = self.call("GET", path, None);
        assert_eq!(status, 200, "{path}: {answer}");
        answer
    }

    fn member(&self, member: &str) -> Value {
        let (status, view) = self.call("GET", &format!("{P}/members/{member}"), None);
        common::points_view(status, view)
    }

    /// Shopify's `orders/paid` of the webhook fixture (customer 7001234, minji@example.com),
    /// paid yesterday.
    fn shopify_paid(&self) {
        self.shopify_paid_order("820982911946154508");
    }

    /// A signed `orders/paid` delivery of this body.
    fn shopify_delivery(&self, body: &str) {
        self.shopify_topic("orders/paid", body);
    }

    /// A signed delivery of this body under a topic.
    fn shopify_topic(&self, topic: &str, body: &str) {
        let response = reqwest::blocking::Client::new()
            .post(format!("{}/webhooks/shopify/kr-shop", self.server.base))
            .header("X-Shopify-Topic", topic)
            .header(
                "X-Shopify-Hmac-Sha256",
                sign_base64(SHOPIFY_SECRET, body.as_bytes()),
            )
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .expect("webhook");
        assert_eq!(response.status().as_u16(), 200);
    }

    /// The same order under another Shopify order id, paid yesterday.
    fn shopify_paid_order(&self, order: &str) {
        self.shopify_paid_order_at(order, Utc::now() - chrono::Duration::days(1));
    }

    /// The same order under another Shopify order id, paid at `at`.
    fn shopify_paid_order_at(&self, order: &str, at: chrono::DateTime<Utc>) {
        let occurred = at.to_rfc3339_opts(SecondsFormat::Secs, true);
        let body = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/shopify/orders-paid.json"),
        )
        .expect("fixture")
        .replace("__OCCURRED_AT__", &occurred)
        .replace("820982911946154508", order);
        self.shopify_delivery(&body);
    }

    fn loyalty(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .args(["--db", self.db.to_str().expect("utf-8 path")])
            .env("LOYALTY_LOG", "warn")
            .output()
            .expect("loyalty runs")
    }

    fn settled(&self) {
        common::settled(&self.db);
    }

    /// `loyalty import balances` of a CSV file `name` holding `text`, into kr-shop.
    fn import_csv(&self, name: &str, text: &str) -> Output {
        let file = self.dir.join(name);
        std::fs::write(&file, text).expect("file");
        self.import_balances(&file, &[])
    }

    /// `loyalty import balances --mode set` of a CSV file `name` holding `text`: its summary.
    fn import_set(&self, name: &str, text: &str) -> Value {
        let file = self.dir.join(name);
        std::fs::write(&file, text).expect("file");
        let out = self.import_balances(&file, &["--mode", "set"]);
        serde_json::from_slice(&out.stdout).expect("json")
    }

    /// `loyalty import balances` of the CSV file `file` into kr-shop, with `extra` arguments.
    fn import_balances(&self, file: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "import",
            "balances",
            file.to_str().expect("utf-8 path"),
            "--program",
            "kr-shop",
            "--format",
            "csv",
            "--json",
        ];
        args.extend_from_slice(extra);
        self.loyalty(&args)
    }

    fn eventually(&self, member: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, v) = self.call("GET", &format!("{P}/members/{member}"), None);
            let v = common::points_view(status, v);
            if check(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "never held for {member}; last {v}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ok(out: &Output) -> Value {
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The points of row `i` of the Smile.io file.
fn points(i: usize) -> i64 {
    (i as i64 * 37) % 5_000 + 1
}

/// A Smile.io export of 1,000 rows: 997 members (one of them the Shopify fixture's customer)
/// and 3 bad rows.
fn smile_file(dir: &Path) -> PathBuf {
    let mut text = String::from("email,points\n");
    for i in 0..997 {
        let email = if i == 0 {
            "Minji@Example.com".to_string()
        } else {
            format!("member{i}@example.com")
        };
        text.push_str(&format!("{email},{}\n", points(i)));
    }
    text.push_str("not-an-email,10\n");
    text.push_str("bad-points@example.com,\"1,200\"\n");
    text.push_str("no-points@example.com,\n");
    let path = dir.join("smile.csv");
    std::fs::write(&path, text).expect("file");
    path
}

#[test]
fn a_smile_export_imports_once_sets_only_differences_and_later_orders_find_its_members() {
    // GIVEN a running shop and a Smile.io export of 1,000 rows, 3 of them bad
    let shop = Shop::start("import");
    let file = smile_file(&shop.dir);
    let path = file.to_str().expect("utf-8 path");
    let import = |mode: &str| {
        ok(&shop.loyalty(&[
            "import",
            "balances",
            path,
            "--program",
            "kr-shop",
            "--format",
            "smile",
            "--mode",
            mode,
            "--json",
        ]))
    };
    // WHEN it is imported
    let first = import("add");
    // THEN 997 rows are applied with the stated points and 3 are refused
    let stated: i64 = (0..997).map(points).sum();
    assert_eq!(
        (
            first["rows"].as_i64(),
            first["applied"].as_i64(),
            first["refused"].as_i64()
        ),
        (Some(1000), Some(997), Some(3)),
        "{first}"
    );
    assert_eq!(first["points_added"].as_i64(), Some(stated));
    for i in [1, 500, 996] {
        let m = shop.member(&format!("email:member{i}@example.com"));
        assert_eq!(m["balance"].as_i64(), Some(points(i)), "{m}");
    }
    // AND the error file names each bad row with its reason
    let errors = std::fs::read_to_string(first["errors_file"].as_str().expect("errors file"))
        .expect("error file");
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines.len(), 4, "{errors}");
    assert!(
        lines[1].starts_with("999,") && lines[1].contains("not an email"),
        "{errors}"
    );
    assert!(
        lines[2].starts_with("1000,") && lines[2].contains("whole number"),
        "{errors}"
    );
    assert!(
        lines[3].starts_with("1001,") && lines[3].contains("empty"),
        "{errors}"
    );
    // WHEN the same file is imported again THEN nothing changes
    let again = import("add");
    assert_eq!(
        (again["applied"].as_i64(), again["unchanged"].as_i64()),
        (Some(0), Some(997)),
        "{again}"
    );
    assert_eq!(
        shop.member("email:member1@example.com")["balance"].as_i64(),
        Some(points(1))
    );
    // WHEN two members earn more and the file is imported with --mode set
    for (member, extra) in [("member7@example.com", 300), ("member8@example.com", 45)] {
        let (status, answer) = shop.call(
            "POST",
            &format!("{P}/members/email:{member}/adjustments"),
            Some(json!({"points": extra, "reason": "goodwill"})),
        );
        assert_eq!(status, 201, "{answer}");
    }
    let set = import("set");
    // THEN only their differences are written, back to the stated balances
    assert_eq!(
        (
            set["applied"].as_i64(),
            set["unchanged"].as_i64(),
            set["points_removed"].as_i64()
        ),
        (Some(2), Some(995), Some(345)),
        "{set}"
    );
    assert_eq!(
        shop.member("email:member7@example.com")["balance"].as_i64(),
        Some(points(7))
    );
    // AND the entries say where they came from
    let ledger = shop.get(&format!("{P}/members/email:member8@example.com/ledger"));
    let reasons: Vec<&str> = ledger["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"imported from smile.csv, row 10"),
        "{reasons:?}"
    );
    // WHEN a Shopify order arrives for the imported email (customer 7001234, minji@example.com)
    shop.shopify_paid();
    // THEN the imported member is credited, and the Shopify customer is that member
    let minji = shop.eventually("email:minji@example.com", |v| v["pending"] == 1_000);
    assert_eq!(minji["balance"].as_i64(), Some(points(0)));
    assert_eq!(
        shop.member("shopify:7001234")["member"],
        "email:minji@example.com"
    );
}

#[test]
fn an_import_links_only_rows_it_applies_keeps_a_members_rows_in_order_and_clears_old_errors() {
    // GIVEN a running shop and a file whose row for m-12 names a tier kr-shop lacks, with
    // rows that credit then debit new members, and a member named by its email in mixed case
    let shop = Shop::start("import-order");
    let mut text = String::from("member,email,points,tier\n");
    text.push_str("m-12,ann@example.com,500,PLATNUM\n");
    for i in 0..8 {
        text.push_str(&format!("pair-{i},,+100,\npair-{i},,-50,\n"));
    }
    text.push_str("email:Minji@Example.com,,700,\n");
    // WHEN it is imported
    let first = ok(&shop.import_csv("ours.csv", &text));
    // THEN the bad row alone is refused, and every member's debit came after its credit
    assert_eq!(
        (first["applied"].as_i64(), first["refused"].as_i64()),
        (Some(17), Some(1)),
        "{first}"
    );
    for i in 0..8 {
        assert_eq!(
            shop.member(&format!("pair-{i}"))["balance"].as_i64(),
            Some(50)
        );
    }
    // AND the refused row linked no email: its fixed row, for m-1, takes ann@example.com
    let errors = first["errors_file"]
        .as_str()
        .expect("errors file")
        .to_string();
    let fixed = ok(&shop.import_csv(
        "fixed.csv",
        "member,email,points,tier\nm-1,ann@example.com,500,\n",
    ));
    assert_eq!(fixed["applied"].as_i64(), Some(1), "{fixed}");
    assert_eq!(shop.member("email:ann@example.com")["member"], "m-1");
    // AND the member named by its email is the email's, lower-cased: a Shopify order of that
    // customer (minji@example.com) credits it
    shop.shopify_paid();
    let minji = shop.eventually("email:minji@example.com", |v| v["pending"] == 1_000);
    assert_eq!(minji["balance"].as_i64(), Some(700));
    // WHEN the first file, its row fixed in place, is imported again with nothing refused
    let again = ok(&shop.import_csv(
        "ours.csv",
        &text.replace("m-12,ann@example.com,500,PLATNUM", "m-12,,500,"),
    ));
    // THEN the old error file is gone (importing it would have applied its row again)
    assert_eq!(again["refused"].as_i64(), Some(0), "{again}");
    assert!(!Path::new(&errors).exists(), "{errors} is left");
}

fn share_event(id: &str, member: &str) -> Value {
    json!({"type": "engagement.recorded", "version": 1, "id": id, "program": "kr-shop",
           "member": member, "occurred_at": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
           "data": {"action": "share", "ref": id}})
}

#[test]
fn an_event_rejected_for_an_unknown_action_is_replayed_once_after_the_program_rewards_it() {
    // GIVEN a member with 1,000 points and an engagement kr-shop does not reward
    let shop = Shop::start("rejected");
    let (status, _) = shop.call(
        "POST",
        &format!("{P}/members/m-share/adjustments"),
        Some(json!({"points": 1000, "reason": "opening"})),
    );
    assert_eq!(status, 201);
    let (status, answer) = shop.call(
        "POST",
        &format!("{P}/events"),
        Some(share_event("ev-share-1", "m-share")),
    );
    assert_eq!(status, 202, "{answer}");
    shop.settled();
    // WHEN operators list the rejected events (CLI and HTTP)
    let listed = ok(&shop.loyalty(&["rejected", "list", "--program", "kr-shop", "--json"]));
    let over_http = shop.get(&format!("{P}/rejected-events"));
    // THEN it is there with its type, member and reason, and the balance is untouched
    assert_eq!(listed[0]["id"], "ev-share-1", "{listed}");
    assert_eq!(listed[0]["type"], "engagement.recorded");
    assert_eq!(listed[0]["member"], "m-share");
    assert!(listed[0]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("\"share\" is not rewarded"));
    assert_eq!(over_http["events"][0]["id"], "ev-share-1");
    assert_eq!(shop.member("m-share")["balance"], 1000);
    // WHEN the program starts rewarding shares with 50 points, and the event is replayed
    let mut file = shop.get(P)["file"].clone();
    file["actions"]["share"] = json!({"points": 50});
    let (status, saved) = shop.call("PUT", P, Some(file));
    assert_eq!(status, 200, "{saved}");
    let replayed = ok(&shop.loyalty(&[
        "rejected",
        "replay",
        "ev-share-1",
        "--program",
        "kr-shop",
        "--json",
    ]));
    assert_eq!(replayed["replay"], 1);
    let after_cli = shop.get(&format!("{P}/rejected-events/ev-share-1"));
    assert!(
        after_cli["replayed_by"]
            .as_str()
            .is_some_and(|by| by.starts_with("cli:")),
        "{after_cli}"
    );
    // THEN it is applied once
    shop.eventually("m-share", |v| v["balance"] == 1050);
    // WHEN it is replayed a second time, over HTTP
    let (status, second) = shop.call(
        "POST",
        &format!("{P}/rejected-events/ev-share-1/replay"),
        None,
    );
    assert_eq!(status, 202, "{second}");
    assert_eq!(second["replay"], 2);
    shop.settled();
    // THEN nothing changes, and the record says it was replayed twice, last by the admin
    assert_eq!(shop.member("m-share")["balance"], 1050);
    let shown = ok(&shop.loyalty(&[
        "rejected",
        "show",
        "ev-share-1",
        "--program",
        "kr-shop",
        "--json",
    ]));
    assert_eq!(
        (
            shown["status"].as_str(),
            shown["replays"].as_i64(),
            shown["replayed_by"].as_str()
        ),
        (Some("replayed"), Some(2), Some("admin"))
    );
    // AND an unknown id is a 404 problem
    let (status, problem) = shop.call("GET", &format!("{P}/rejected-events/ev-nope"), None);
    assert_eq!(
        (status, problem["type"].as_str()),
        (404, Some("/problems/rejected-event-not-found"))
    );
    // AND an id that breaks the event-id rule is 400, as on every route that names an event
    let (status, problem) = shop.call("GET", &format!("{P}/rejected-events/ev%23x"), None);
    assert_eq!(
        (status, problem["type"].as_str()),
        (400, Some("/problems/invalid-event-id"))
    );
    // AND a replay that is refused again stays listed, with its new reason
    let (status, answer) = shop.call(
        "POST",
        &format!("{P}/events"),
        Some(json!({
        "type": "engagement.recorded", "version": 1, "id": "ev-anniversary", "program": "kr-shop",
        "member": "m-share", "occurred_at": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
        "data": {"action": "anniversary", "ref": "d"}})),
    );
    assert_eq!(status, 202, "{answer}");
    shop.settled();
    assert_eq!(
        shop.call(
            "POST",
            &format!("{P}/rejected-events/ev-anniversary/replay"),
            None
        )
        .0,
        202
    );
    shop.settled();
    let again = shop.get(&format!("{P}/rejected-events/ev-anniversary"));
    assert_eq!(
        (again["status"].as_str(), again["replays"].as_i64()),
        (Some("rejected"), Some(1)),
        "{again}"
    );
}

#[test]
fn a_message_forced_into_the_dead_letters_is_redriven_and_applied_once() {
    // GIVEN a purchase that the earn queue gave up on (forced into its dead letters), twice
    let shop = Shop::start("dlq");
    let purchase = json!({"type": "purchase.completed", "version": 1, "id": "ev-dlq-1",
        "program": "kr-shop", "member": "m-dlq",
        "occurred_at": (Utc::now() - chrono::Duration::days(30)).to_rfc3339_opts(SecondsFormat::Secs, true),
        "data": {"order_id": "o-dlq-1", "currency": "KRW",
                 "lines": [{"line_id": "l-1", "quantity": 1, "unit_price": "50000"}]}});
    let conn = rusqlite::Connection::open(&shop.db).expect("db");
    let force = || {
        conn.execute(
            "INSERT INTO dead_letters (queue, id, body, attempts, error, at) VALUES ('earn', 'kr-shop/ev-dlq-1', ?1, 5, 'store unavailable', ?2)",
            rusqlite::params![purchase.to_string(), Utc::now().to_rfc3339()],
        )
        .expect("forced");
    };
    force();
    // WHEN the dead letters are listed
    let listed = ok(&shop.loyalty(&["dlq", "list", "--queue", "earn", "--json"]));
    // THEN it is there with its error
    assert_eq!(listed["count"], 1, "{listed}");
    assert_eq!(listed["messages"][0]["error"], "store unavailable");
    assert_eq!(shop.member("m-dlq")["balance"], 0);
    // WHEN they are redriven
    let redriven = ok(&shop.loyalty(&["dlq", "redrive", "--queue", "earn", "--json"]));
    assert_eq!(redriven["redriven"], 1, "{redriven}");
    // THEN the purchase is applied: 500 points (1% of 50,000), past its return window
    let m = shop.eventually("m-dlq", |v| v["balance"] == 500);
    assert_eq!(m["pending"], 0);
    // WHEN the same message is forced in again THEN an operator sees it over HTTP
    force();
    let depths = shop.get("/v1/dead-letters");
    assert_eq!(
        depths["queues"],
        json!([{"queue": "earn", "depth": 1}, {"queue": "tier", "depth": 0}])
    );
    // AND a token limited to one program may neither see nor move what programs share
    let limited = token(&["--admin", "--program", "kr-shop"]);
    for (method, path) in [
        ("GET", "/v1/dead-letters"),
        ("POST", "/v1/dead-letters/earn/redrive"),
    ] {
        let (status, _) = shop.server.call(method, path, &limited, &[], None);
        assert_eq!(status, 403, "{method} {path}");
    }
    assert_eq!(
        shop.call("POST", "/v1/dead-letters/notify/redrive", None).0,
        404
    );
    // WHEN it is redriven over HTTP THEN it moves, and changes nothing (applied once already)
    let (status, again) = shop.call("POST", "/v1/dead-letters/earn/redrive", None);
    assert_eq!(
        (status, again["moved"].as_u64(), again["remaining"].as_u64()),
        (200, Some(1), Some(0)),
        "{again}"
    );
    shop.settled();
    // THEN it changes nothing, and no dead letter is left
    assert_eq!(shop.member("m-dlq")["balance"], 500);
    let empty = ok(&shop.loyalty(&["dlq", "list", "--queue", "earn", "--json"]));
    assert_eq!(empty["count"], 0);
    // WHEN a backlog of 150 dead letters is redriven over HTTP
    for i in 0..150 {
        let mut event = purchase.clone();
        event["id"] = json!(format!("ev-bulk-{i}"));
        event["member"] = json!(format!("m-bulk-{i}"));
        event["data"]["order_id"] = json!(format!("o-bulk-{i}"));
        conn.execute(
            "INSERT INTO dead_letters (queue, id, body, attempts, error, at) VALUES ('earn', ?1, ?2, 5, 'store unavailable', ?3)",
            rusqlite::params![format!("kr-shop/ev-bulk-{i}"), event.to_string(), Utc::now().to_rfc3339()],
        )
        .expect("forced");
    }
    let call = || shop.call("POST", "/v1/dead-letters/earn/redrive", None).1;
    // THEN each call moves what fits in one request and says how many remain
    let first = call();
    assert_eq!(
        (first["moved"].as_u64(), first["remaining"].as_u64()),
        (Some(100), Some(50)),
        "{first}"
    );
    let second = call();
    assert_eq!(
        (second["moved"].as_u64(), second["remaining"].as_u64()),
        (Some(50), Some(0)),
        "{second}"
    );
}

/// Shopify's order export: #1001 (the webhook fixture's order, two line rows), a refunded
/// order, a guest order and a new customer's order.
fn shopify_export(dir: &Path) -> PathBuf {
    let paid = (Utc::now() - chrono::Duration::days(1))
        .with_timezone(&chrono::FixedOffset::east_opt(9 * 3600).expect("KST"))
        .format("%Y-%m-%d %H:%M:%S %z")
        .to_string();
    let header = "Name,Email,Financial Status,Paid at,Fulfillment Status,Currency,Subtotal,Shipping,Taxes,Total,Discount Amount,Created at,Lineitem quantity,Lineitem name,Lineitem price,Lineitem sku,Cancelled at,Refunded Amount,Id,Lineitem discount";
    let rows = [
        format!("#1001,minji@example.com,paid,{paid},unfulfilled,KRW,100000.00,3000.00,9364.00,103000.00,3000.00,{paid},2,Black tee,29000.00,TEE-BLK-M,,0.00,820982911946154508,3000.00"),
        "#1001,,,,,,,,,,,,1,Navy cap,45000.00,CAP-NVY,,,,0.00".to_string(),
        format!("#1002,minji@example.com,partially_refunded,{paid},fulfilled,KRW,45000.00,0.00,0.00,45000.00,0.00,{paid},1,Denim jacket,45000.00,JKT-DNM-L,,45000.00,820982911946154510,0.00"),
        format!("#1003,,paid,{paid},unfulfilled,KRW,10000.00,0.00,0.00,10000.00,0.00,{paid},1,Mug,10000.00,MUG,,0.00,820982911946154511,0.00"),
        format!("#1004,New.Buyer@example.com,paid,{paid},unfulfilled,KRW,20000.00,0.00,0.00,20000.00,0.00,{paid},1,Mug,20000.00,MUG,,0.00,820982911946154512,0.00"),
    ];
    let path = dir.join("orders_export.csv");
    std::fs::write(&path, format!("{header}\n{}\n", rows.join("\n"))).expect("file");
    path
}

#[test]
fn shopify_s_order_export_credits_paid_orders_once_and_the_late_webhook_changes_nothing() {
    // GIVEN a running shop and Shopify's order export of four orders
    let shop = Shop::start("orders");
    let file = shopify_export(&shop.dir);
    let import = || {
        ok(&shop.loyalty(&[
            "import",
            "orders",
            file.to_str().expect("utf-8"),
            "--platform",
            "shopify",
            "--program",
            "kr-shop",
            "--json",
        ]))
    };
    // WHEN it is imported
    let first = import();
    // THEN the two paid orders with an email are sent, the refunded and the guest one refused
    assert_eq!(
        (
            first["orders"].as_i64(),
            first["sent"].as_i64(),
            first["refused"].as_i64()
        ),
        (Some(4), Some(2), Some(2)),
        "{first}"
    );
    let errors = std::fs::read_to_string(first["errors_file"].as_str().expect("errors file"))
        .expect("error file");
    assert!(
        errors.contains("#1002") && errors.contains("refunded"),
        "{errors}"
    );
    assert!(
        errors.contains("#1003") && errors.contains("guest"),
        "{errors}"
    );
    // AND #1001 earns as its webhook does: 1% of 2 x 29,000 - 3,000 + 45,000, pending
    let minji = shop.eventually("email:minji@example.com", |v| v["pending"] == 1_000);
    assert_eq!(minji["balance"], 0);
    shop.eventually("email:new.buyer@example.com", |v| v["pending"] == 200);
    // WHEN the file is imported again THEN both are present and nothing is sent
    let again = import();
    assert_eq!(
        (again["present"].as_i64(), again["sent"].as_i64()),
        (Some(2), Some(0)),
        "{again}"
    );
    // WHEN #1001's webhook arrives late, with the customer's id
    shop.shopify_paid();
    shop.settled();
    // THEN it counts once: the customer is the member of the email, with 1,000 pending
    let minji = shop.member("shopify:7001234");
    assert_eq!(
        (minji["member"].as_str(), minji["pending"].as_i64()),
        (Some("email:minji@example.com"), Some(1_000))
    );
    // WHEN the customer returns the cap, and Shopify's refund names its own line id (which
    // the export did not give) and the line's SKU
    let refund = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/shopify/refunds-create.json"),
    )
    .expect("fixture")
    .replace(
        "__OCCURRED_AT__",
        &Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
    );
    shop.shopify_topic("refunds/create", &refund);
    // THEN the cap's 450 points are taken back from the imported order
    shop.eventually("email:minji@example.com", |v| v["pending"] == 550);
    // WHEN the export is saved again without the two refused orders and imported
    let text = std::fs::read_to_string(&file).expect("file");
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("#1002") && !l.starts_with("#1003"))
        .collect();
    std::fs::write(&file, kept.join("\n") + "\n").expect("file");
    let errors_file = first["errors_file"].as_str().expect("errors file");
    let clean = import();
    // THEN nothing is refused and the earlier report of refused orders is gone
    assert_eq!(
        (clean["refused"].as_i64(), clean["present"].as_i64()),
        (Some(0), Some(2)),
        "{clean}"
    );
    assert!(!Path::new(errors_file).exists(), "{errors_file} is left");
}

#[test]
fn a_row_the_store_cannot_take_is_refused_and_the_rest_of_the_file_is_applied_and_counted() {
    // GIVEN a running shop in which m-poison's account cannot be read (a bad manual edit), and
    // a file of three rows, m-poison's in the middle
    let shop = Shop::start("import-poison");
    let conn = rusqlite::Connection::open(&shop.db).expect("db");
    conn.execute(
        "INSERT INTO accounts (program, member, version, body) VALUES ('kr-shop', 'm-poison', 1, '{not an account')",
        [],
    )
    .expect("poison");
    // WHEN it is imported
    let out = shop.import_csv(
        "three.csv",
        "member,points\nm-ok-1,100\nm-poison,200\nm-ok-2,300\n",
    );
    // THEN the two other rows are applied, m-poison's is refused to be imported again, and the
    // run says so (exit 1, the summary, the errors file)
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = ok(&out);
    assert_eq!(
        (summary["applied"].as_i64(), summary["refused"].as_i64()),
        (Some(2), Some(1)),
        "{summary}"
    );
    for (member, points) in [("m-ok-1", 100), ("m-ok-2", 300)] {
        assert_eq!(shop.member(member)["balance"].as_i64(), Some(points));
    }
    let errors = std::fs::read_to_string(summary["errors_file"].as_str().expect("errors file"))
        .expect("errors file");
    assert!(
        errors
            .lines()
            .any(|l| l.starts_with("3,") && l.contains("import the row again")),
        "{errors}"
    );
}

#[test]
fn a_dry_run_names_refused_rows_and_leaves_the_error_file_being_mended() {
    // GIVEN an import that refused a row, whose error file the operator mends in place
    let shop = Shop::start("dry-run-errors");
    let text = "member,email,points,tier\nm-31,,500,PLATNUM\nm-32,,300,\n";
    let first = ok(&shop.import_csv("dry.csv", text));
    let errors = first["errors_file"]
        .as_str()
        .expect("errors file")
        .to_string();
    let mended = std::fs::read_to_string(&errors)
        .expect("error file")
        .replace("PLATNUM", "");
    std::fs::write(&errors, &mended).expect("mended");
    // WHEN the original file is imported again as a dry run
    let file = shop.dir.join("dry.csv");
    let dry = shop.import_balances(&file, &["--dry-run"]);
    // THEN it names the refused line on stderr, and the mended error file is as it was
    let said = String::from_utf8_lossy(&dry.stderr);
    assert!(said.contains("would refuse line 2"), "{said}");
    assert_eq!(
        std::fs::read_to_string(&errors).expect("error file"),
        mended
    );
    let report: Value = serde_json::from_slice(&dry.stdout).expect("json");
    assert!(report["errors_file"].is_null(), "{report}");
    // AND no partial file was left beside it by the first run
    assert!(!Path::new(&format!("{errors}.partial")).exists());
}

#[test]
fn a_dry_run_counts_what_the_import_then_does() {
    // GIVEN a file that credits new members and then takes part of it back, row after row
    let shop = Shop::start("dry-run-counts");
    let mut text = String::from("member,email,points,tier\n");
    for i in 0..4 {
        text.push_str(&format!("dry-{i},,+100,\ndry-{i},,-50,\n"));
    }
    let file = shop.dir.join("counts.csv");
    std::fs::write(&file, &text).expect("file");
    let run = |extra: &[&str]| ok(&shop.import_balances(&file, extra));
    let counts = |v: &Value| {
        let n = |k: &str| v[k].as_i64();
        (
            n("applied"),
            n("unchanged"),
            n("points_added"),
            n("points_removed"),
        )
    };
    // WHEN it is imported as a dry run, then for real
    let dry = run(&["--dry-run"]);
    assert_eq!(shop.member("dry-0")["balance"].as_i64(), Some(0));
    let real = run(&[]);
    // THEN the dry run counted what the import did: each debit against its member's credit
    assert_eq!(counts(&dry), counts(&real), "{dry} {real}");
    assert_eq!(
        counts(&real),
        (Some(8), Some(0), Some(400), Some(200)),
        "{real}"
    );
}

#[test]
fn rows_naming_one_member_by_its_id_and_by_its_linked_email_are_one_member_s() {
    // GIVEN ord-1 with 10 points and its email linked, and m-2 with its email linked
    let shop = Shop::start("import-two-ways");
    ok(&shop.import_csv(
        "start.csv",
        "member,email,points\nord-1,ord@example.com,10\nm-2,b@example.com,1\n",
    ));
    // WHEN a file debits ord-1 by its email then credits it by its id, twenty times over
    let mut text = String::from("member,email,points\n");
    for _ in 0..20 {
        text.push_str(",ord@example.com,-100\nord-1,,+100\n");
    }
    let pairs = shop.import_csv("pairs.csv", &text);
    // THEN the rows went in the file's order: only the first debit found too little (before:
    // the email's rows and the id's went side by side, every debit refused, 2,010 points)
    let pairs: Value = serde_json::from_slice(&pairs.stdout).expect("json");
    assert_eq!(
        (pairs["applied"].as_i64(), pairs["refused"].as_i64()),
        (Some(39), Some(1)),
        "{pairs}"
    );
    assert_eq!(shop.member("ord-1")["balance"].as_i64(), Some(110));
    // WHEN a set-mode file states m-2's balance by its id, then by its email
    let set = shop.import_set(
        "set.csv",
        "member,email,points\nm-2,,50\n,b@example.com,60\n",
    );
    // THEN the second is refused as the same member (before: both applied, the last won)
    assert_eq!(
        (set["applied"].as_i64(), set["refused"].as_i64()),
        (Some(1), Some(1)),
        "{set}"
    );
    assert_eq!(shop.member("m-2")["balance"].as_i64(), Some(50));
    // WHEN a set-mode file states m-3 by its id with an email it links, then by that email
    let set = shop.import_set(
        "set-3.csv",
        "member,email,points\nm-3,c@example.com,100\n,c@example.com,60\n",
    );
    // THEN the second is refused too (the email was linked by the first row, in the run)
    assert_eq!(
        (set["applied"].as_i64(), set["refused"].as_i64()),
        (Some(1), Some(1)),
        "{set}"
    );
    assert_eq!(shop.member("m-3")["balance"].as_i64(), Some(100));
}

#[test]
fn a_set_mode_row_for_an_imported_email_member_merged_away_is_refused() {
    // GIVEN big@example.com imported as a member of its own with 100 points, merged into m-9,
    // which had 300
    let shop = Shop::start("import-merged-email");
    ok(&shop.import_csv(
        "start.csv",
        "member,email,points\n,big@example.com,100\nm-9,,300\n",
    ));
    ok(&shop.loyalty(&[
        "member",
        "merge",
        "m-9",
        "--from",
        "email:big@example.com",
        "--reason",
        "same person",
        "--program",
        "kr-shop",
        "--json",
    ]));
    assert_eq!(shop.member("m-9")["balance"].as_i64(), Some(400));
    // WHEN a later export states big@example.com's 50 points, by its email, in set mode
    let set = shop.import_set("later.csv", "email,points\nbig@example.com,50\n");
    // THEN the row is refused naming the survivor (before: m-9 was set to 50, its own 300
    // points gone)
    assert_eq!(set["refused"].as_i64(), Some(1), "{set}");
    assert_eq!(shop.member("m-9")["balance"].as_i64(), Some(400));
    // WHEN a file states big@example.com's balance, then m-9's own
    let both = shop.import_set(
        "both.csv",
        "member,email,points\n,big@example.com,50\nm-9,,350\n",
    );
    // THEN the first is refused and m-9's own row applies (before: it was refused as "the
    // same member as row 2", a row that stated no balance)
    assert_eq!(
        (both["applied"].as_i64(), both["refused"].as_i64()),
        (Some(1), Some(1)),
        "{both}"
    );
    assert_eq!(shop.member("m-9")["balance"].as_i64(), Some(350));
}

#[test]
fn an_error_file_imported_again_with_a_row_still_refused_keeps_one_line_and_error_column() {
    // GIVEN a file whose second row names a tier kr-shop lacks, imported once
    let shop = Shop::start("import-errors-again");
    let first = ok(&shop.import_csv("tiers.csv", "member,points,tier\nm-1,10,\nm-2,20,PLATNUM\n"));
    let errors = PathBuf::from(first["errors_file"].as_str().expect("errors file"));
    // WHEN its error file is imported as it is
    let again = ok(&shop.import_balances(&errors, &[]));
    // THEN the row is refused again, and the new error file has this run's line and error
    // once, then the row as it was (before: "line,error,line,error,...")
    let second =
        std::fs::read_to_string(again["errors_file"].as_str().expect("errors file")).expect("read");
    let header = second.lines().next().expect("header");
    assert_eq!(
        header, "line,error,loyalty row id,member,points,tier",
        "{second}"
    );
    assert!(
        second
            .lines()
            .nth(1)
            .expect("row")
            .ends_with(",m-2,20,PLATNUM"),
        "{second}"
    );
}

#[test]
fn an_import_stopped_by_ctrl_c_prints_its_summary_and_leaves_the_rows_not_reached_to_import() {
    // GIVEN a file of 20,000 members, one point each, being imported
    let shop = Shop::start("import-stopped");
    let rows = 20_000;
    let mut text = String::from("member,points\n");
    for i in 1..=rows {
        text.push_str(&format!("m-{i},1\n"));
    }
    let file = shop.dir.join("big.csv");
    std::fs::write(&file, text).expect("file");
    let import = Command::new(BIN)
        .args(["import", "balances", file.to_str().expect("utf-8 path")])
        .args(["--program", "kr-shop", "--format", "csv", "--json"])
        .args(["--db", shop.db.to_str().expect("utf-8 path")])
        .env("LOYALTY_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("loyalty runs");
    // WHEN Ctrl-C reaches it once its first member is written
    let deadline = Instant::now() + Duration::from_secs(60);
    while shop.call("GET", &format!("{P}/members/m-1"), None).0 != 200 {
        assert!(Instant::now() < deadline, "m-1 was never imported");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = i32::try_from(import.id()).expect("pid");
    // SAFETY: a signal to the child this test started and has not yet waited for.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let out = import.wait_with_output().expect("loyalty ends");
    // THEN it ends with 130 and its summary counts every row: some applied, the rest refused
    // as not applied (before: no summary, no error file)
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("json summary");
    assert_eq!(summary["stopped"], json!(true), "{summary}");
    let (applied, refused) = (
        summary["applied"].as_u64().expect("applied"),
        summary["refused"].as_u64().expect("refused"),
    );
    assert!(applied > 0 && refused > 0, "{summary}");
    assert_eq!(applied + refused, rows, "{summary}");
    // AND its error file holds exactly those rows, which an import of it applies
    let errors = PathBuf::from(summary["errors_file"].as_str().expect("errors file"));
    let rest = ok(&shop.import_balances(&errors, &[]));
    assert_eq!(
        (rest["applied"].as_u64(), rest["refused"].as_u64()),
        (Some(refused), Some(0)),
        "{rest}"
    );
    assert_eq!(
        shop.member(&format!("m-{rows}"))["balance"].as_i64(),
        Some(1)
    );
}
