//! `loyalty reconcile` from outside: a local fake of a platform's order API (pages, a 429)
//! against a running `loyalty serve`, whose webhooks were switched off for a day.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use crate::common::{token, Server, BIN};
use chrono::{SecondsFormat, Utc};
use loyalty_core::webhooks::sign_base64;
use serde_json::{json, Value};

const WOO_SECRET: &str = "woo-reconcile-secret";
const SHOPIFY_SECRET: &str = "shpss_reconcile";
const SHOPIFY_TOKEN: &str = "shpat_reconcile";
const KEY: &str = "ck_reconcile";
const SECRET: &str = "cs_reconcile";

/// A request the fake API answered: its target, the status given, and its credentials.
type Request = (String, u16, Option<String>);

/// A platform's order API serving fixed pages: the path a request asked for decides the page;
/// the first request for page 2 is refused with 429 and `Retry-After: 1`.
struct FakeApi {
    base: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl FakeApi {
    /// `pages` are JSON arrays of orders; `woo` says how the next page is announced.
    fn start(pages: Vec<String>, woo: bool) -> FakeApi {
        FakeApi::refusing(pages, woo, None)
    }

    /// As [`FakeApi::start`], refusing every request for page `refused` with 403.
    fn refusing(pages: Vec<String>, woo: bool, refused: Option<usize>) -> FakeApi {
        FakeApi::serve(pages, woo, refused, false)
    }

    /// WooCommerce's API whose first order is modified (out of the window) right after the
    /// first page is served, as a shopkeeper's change made while the pages are read.
    fn shifting(pages: Vec<String>) -> FakeApi {
        FakeApi::serve(pages, true, None, true)
    }

    /// WooCommerce's pages are those of its orders modified after `modified_after`, in the
    /// order given, as many to a page as the first page given holds.
    fn serve(pages: Vec<String>, woo: bool, refused: Option<usize>, shift: bool) -> FakeApi {
        let size = pages
            .first()
            .and_then(|p| serde_json::from_str::<Vec<Value>>(p).ok())
            .map_or(1, |p| p.len().max(1));
        let mut orders: Vec<Value> = pages
            .iter()
            .flat_map(|p| serde_json::from_str::<Vec<Value>>(p).expect("a page of orders"))
            .collect();
        let mut served = 0;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let log = requests.clone();
        let link_base = base.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut auth = None;
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
                        break;
                    }
                    let lower = header.to_ascii_lowercase();
                    if lower.starts_with("authorization:")
                        || lower.starts_with("x-shopify-access-token:")
                    {
                        auth = Some(
                            header
                                .split_once(':')
                                .map(|(_, v)| v.trim().to_string())
                                .unwrap_or_default(),
                        );
                    }
                }
                let page = if woo {
                    target
                        .rsplit_once("page=")
                        .and_then(|(_, n)| n.parse::<usize>().ok())
                        .unwrap_or(1)
                } else {
                    target
                        .rsplit_once("page_info=p")
                        .and_then(|(_, n)| n.parse::<usize>().ok())
                        .unwrap_or(1)
                };
                let seen_before = log
                    .lock()
                    .expect("log")
                    .iter()
                    .any(|(t, _, _): &Request| *t == target);
                let (status, extra, body) = if Some(page) == refused {
                    (403, String::new(), "{\"code\":\"forbidden\"}".to_string())
                } else if page == 2 && !seen_before {
                    (
                        429,
                        "Retry-After: 1\r\n".to_string(),
                        "{\"code\":\"too_many_requests\"}".to_string(),
                    )
                } else {
                    if woo {
                        let after = target
                            .split_once("modified_after=")
                            .map(|(_, rest)| rest.split('&').next().unwrap_or_default())
                            .unwrap_or_default();
                        let listed: Vec<&Value> = orders
                            .iter()
                            .filter(|o| o["date_modified_gmt"].as_str().unwrap_or_default() > after)
                            .collect();
                        let chunk: Vec<&Value> = listed
                            .iter()
                            .skip((page - 1) * size)
                            .take(size)
                            .copied()
                            .collect();
                        let body = serde_json::to_string(&chunk).expect("json");
                        let headers = format!(
                            "X-WP-Total: {}\r\nX-WP-TotalPages: {}\r\n",
                            listed.len(),
                            listed.len().div_ceil(size)
                        );
                        served += 1;
                        if shift && served == 1 {
                            orders.remove(0);
                        }
                        (200, headers, body)
                    } else {
                        let orders = pages.get(page - 1).cloned().unwrap_or_else(|| "[]".into());
                        let link = if page < pages.len() {
                            format!("Link: <{link_base}/admin/api/2025-01/orders.json?limit=250&page_info=p{}>; rel=\"next\"\r\n", page + 1)
                        } else {
                            String::new()
                        };
                        (200, link, format!("{{\"orders\": {orders}}}"))
                    }
                };
                log.lock().expect("log").push((target, status, auth));
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
                    body.len()
                );
            }
        });
        FakeApi { base, requests }
    }
}

fn stamp(t: chrono::DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// WooCommerce order `id` of customer `customer` (the fixture's two lines, $75.19 in all).
fn woo_order(id: u32, customer: u32, status: &str, refunds: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/woocommerce/order-processing.json");
    let now = Utc::now();
    std::fs::read_to_string(path)
        .expect("fixture")
        .replace("\"id\": 727,", &format!("\"id\": {id},"))
        .replace("\"number\": \"727\"", &format!("\"number\": \"{id}\""))
        .replace(
            "\"customer_id\": 55",
            &format!("\"customer_id\": {customer}"),
        )
        .replace(
            "Ava.Lee@example.com",
            &format!("customer{customer}@example.com"),
        )
        .replace("__STATUS__", status)
        .replace("__PAID_AT__", &stamp(now - chrono::Duration::days(2)))
        .replace("__MODIFIED_AT__", &stamp(now - chrono::Duration::days(1)))
        .replace("__REFUNDS__", refunds)
}

struct Shop {
    server: Server,
    admin: String,
    db: PathBuf,
    dir: PathBuf,
}

impl Shop {
    fn start(name: &str) -> Shop {
        let dir =
            std::env::temp_dir().join(format!("loyalty-reconcile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let db = dir.join("loyalty.db");
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let (us_shop, kr_shop) = (examples.join("us-shop.toml"), examples.join("kr-shop.toml"));
        let server = Server::start_env(
            &[
                "--db",
                db.to_str().expect("utf-8"),
                "--program",
                us_shop.to_str().expect("utf-8"),
                "--program",
                kr_shop.to_str().expect("utf-8"),
            ],
            &[
                ("LOYALTY_SECRET_US_SHOP_WOOCOMMERCE", WOO_SECRET),
                ("LOYALTY_SECRET_KR_SHOP_SHOPIFY", SHOPIFY_SECRET),
            ],
        );
        Shop {
            server,
            admin: token(&["--admin"]),
            db,
            dir,
        }
    }

    fn shopify(&self, topic: &str, body: &str) {
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

    fn webhook(&self, order: &str) {
        let response = reqwest::blocking::Client::new()
            .post(format!("{}/webhooks/woocommerce/us-shop", self.server.base))
            .header("X-WC-Webhook-Topic", "order.updated")
            .header(
                "X-WC-Webhook-Signature",
                sign_base64(WOO_SECRET, order.as_bytes()),
            )
            .body(order.to_string())
            .send()
            .expect("webhook");
        assert_eq!(response.status().as_u16(), 200);
    }

    fn reconcile(&self, api: &FakeApi, extra: &[&str]) -> Value {
        self.reconcile_on("us-shop", "woocommerce", api, extra)
    }

    fn reconcile_on(&self, program: &str, platform: &str, api: &FakeApi, extra: &[&str]) -> Value {
        let (out, answer) = self.reconcile_status(program, platform, api, extra);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        answer
    }

    fn reconcile_status(
        &self,
        program: &str,
        platform: &str,
        api: &FakeApi,
        extra: &[&str],
    ) -> (Output, Value) {
        let since = (Utc::now() - chrono::Duration::days(3))
            .date_naive()
            .to_string();
        let out: Output = Command::new(BIN)
            .args([
                "reconcile",
                "--program",
                program,
                "--platform",
                platform,
                "--since",
                &since,
                "--json",
            ])
            .args(extra)
            .args(["--db", self.db.to_str().expect("utf-8")])
            .env("LOYALTY_WOOCOMMERCE_URL", &api.base)
            .env("LOYALTY_WOOCOMMERCE_KEY", KEY)
            .env("LOYALTY_WOOCOMMERCE_SECRET", SECRET)
            .env("LOYALTY_SHOPIFY_URL", &api.base)
            .env("LOYALTY_SHOPIFY_TOKEN", SHOPIFY_TOKEN)
            .env("LOYALTY_LOG", "warn")
            .output()
            .expect("loyalty reconcile runs");
        let answer = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
        (out, answer)
    }

    fn pending(&self, customer: u32) -> i64 {
        self.pending_of("us-shop", &format!("woocommerce:{customer}"))
    }

    fn pending_of(&self, program: &str, member: &str) -> i64 {
        let (status, v) = self.server.call(
            "GET",
            &format!("/v1/programs/{program}/members/{member}"),
            &self.admin,
            &[],
            None,
        );
        crate::common::points_view(status, v)["pending"]
            .as_i64()
            .unwrap_or(-1)
    }

    fn settled(&self) {
        crate::common::settled(&self.db);
    }

    fn balances(&self) -> Vec<i64> {
        (61..=64).map(|c| self.pending(c)).collect()
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn missing(result: &Value) -> Vec<String> {
    let mut ids: Vec<String> = result["not_present"]
        .as_array()
        .expect("not_present")
        .iter()
        .map(|r| r["event"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn woocommerce_reconcile_credits_exactly_what_the_webhooks_missed_and_nothing_twice() {
    // GIVEN us-shop, whose WooCommerce webhook delivered orders 1001 and 1004 (unrefunded) and
    // then was switched off for a day, while 1002 was paid, 1003 was paid and partly refunded,
    // 1004 was partly refunded, and 1005 waits for payment
    let shop = Shop::start("woo");
    let refund = |id: u32| format!(r#"[{{"id": {id}, "reason": "damaged", "total": "-15.04"}}]"#);
    shop.webhook(&woo_order(1001, 61, "processing", "[]"));
    shop.webhook(&woo_order(1004, 64, "processing", "[]"));
    shop.settled();
    let now_orders = [
        woo_order(1001, 61, "processing", "[]"),
        woo_order(1002, 62, "processing", "[]"),
        woo_order(1003, 63, "processing", &refund(903)),
        woo_order(1004, 64, "processing", &refund(904)),
        woo_order(1005, 65, "pending", "[]"),
    ];
    // AND the shop's API serves them three to a page, and asks to wait once
    let api = FakeApi::start(
        vec![
            format!("[{},{},{}]", now_orders[0], now_orders[1], now_orders[2]),
            format!("[{},{}]", now_orders[3], now_orders[4]),
        ],
        true,
    );
    assert_eq!(shop.balances(), [64, 0, 0, 64]);
    // WHEN reconcile runs as a dry run
    let dry = shop.reconcile(&api, &["--dry-run"]);
    // THEN it names exactly the missed payments and refunds, and changes nothing
    let expected = [
        "woocommerce-order-1002-paid",
        "woocommerce-order-1003-paid",
        "woocommerce-order-1003-refund-903",
        "woocommerce-order-1004-refund-904",
    ];
    assert_eq!(missing(&dry), expected, "{dry}");
    assert_eq!(
        (dry["orders"].as_i64(), dry["present"].as_i64()),
        (Some(5), Some(2))
    );
    shop.settled();
    assert_eq!(shop.balances(), [64, 0, 0, 64]);
    // WHEN it runs for real
    let run = shop.reconcile(&api, &[]);
    assert_eq!(missing(&run), expected, "{run}");
    assert_eq!(run["sent"], 4);
    shop.settled();
    // THEN the missed orders earn and the refunds take back their share (64 - 12 = 52)
    assert_eq!(shop.balances(), [64, 64, 52, 52]);
    // WHEN it runs again THEN everything is present and nothing changes
    let again = shop.reconcile(&api, &[]);
    assert_eq!(
        (again["present"].as_i64(), again["sent"].as_i64()),
        (Some(6), Some(0)),
        "{again}"
    );
    // WHEN the webhooks that were missed are delivered late
    for order in &now_orders[1..4] {
        shop.webhook(order);
    }
    shop.settled();
    // THEN nothing changes either
    assert_eq!(shop.balances(), [64, 64, 52, 52]);
    // AND the API was read with the key, and page 2 was asked again after its 429
    let requests = api.requests.lock().expect("log").clone();
    let basic = format!("Basic {}", base64_of(&format!("{KEY}:{SECRET}")));
    assert!(
        requests
            .iter()
            .all(|(_, _, auth)| auth.as_deref() == Some(basic.as_str())),
        "{requests:?}"
    );
    let page2: Vec<u16> = requests
        .iter()
        .filter(|(t, _, _)| t.ends_with("page=2"))
        .map(|(_, s, _)| *s)
        .collect();
    assert_eq!(&page2[..2], [429, 200]);
    assert!(
        requests[0].0.contains("modified_after="),
        "{}",
        requests[0].0
    );
}

#[test]
fn an_order_changed_while_woocommerce_is_paged_makes_no_other_order_skipped() {
    // GIVEN us-shop with five orders paid while its webhook was off, modified a minute apart,
    // served two to a page by an API whose first order is modified again (leaving the window)
    // right after the first page is read: every order behind it moves up one place
    let shop = Shop::start("woo-shifting");
    let first = Utc::now() - chrono::Duration::hours(30);
    let orders: Vec<String> = (0..5)
        .map(|i| {
            let mut order: Value =
                serde_json::from_str(&woo_order(2001 + i, 71 + i, "processing", "[]"))
                    .expect("json");
            let modified = first + chrono::Duration::minutes(i64::from(i));
            order["date_modified_gmt"] = json!(stamp(modified));
            order.to_string()
        })
        .collect();
    let api = FakeApi::shifting(vec![
        format!("[{},{}]", orders[0], orders[1]),
        format!("[{},{}]", orders[2], orders[3]),
        format!("[{}]", orders[4]),
    ]);
    // WHEN reconcile runs
    let run = shop.reconcile(&api, &[]);
    // THEN every order's payment is found missing and sent, the third one too (the second
    // page by number would have started at the fourth), and each is counted once
    let expected: Vec<String> = (2001..=2005)
        .map(|id| format!("woocommerce-order-{id}-paid"))
        .collect();
    assert_eq!(missing(&run), expected, "{run}");
    assert_eq!(
        (run["orders"].as_i64(), run["sent"].as_i64()),
        (Some(5), Some(5)),
        "{run}"
    );
    // AND the page after the first was asked by modification time: from a second before
    // the second order's
    let requests = api.requests.lock().expect("log").clone();
    let from_second = stamp(first + chrono::Duration::minutes(1) - chrono::Duration::seconds(1));
    assert!(
        requests[1]
            .0
            .contains(&format!("modified_after={from_second}&"))
            && requests[1].0.ends_with("&page=1"),
        "{requests:?}"
    );
}

#[test]
fn an_order_an_operator_cancelled_is_reported_rejected_and_not_sent_again() {
    // GIVEN customer 62 suspended while order 1002 was paid, and resumed with its waiting
    // events cancelled (a fraudulent order)
    let shop = Shop::start("woo-cancelled");
    shop.webhook(&woo_order(1001, 62, "processing", "[]"));
    shop.settled();
    let call = |path: &str, body: Value| {
        let (status, answer) = shop.server.call(
            "POST",
            &format!("/v1/programs/us-shop/members/woocommerce:62/{path}"),
            &shop.admin,
            &[],
            Some(&body.to_string()),
        );
        assert_eq!(status, 200, "{answer}");
        answer
    };
    call("suspend", json!({"reason": "chargebacks"}));
    shop.webhook(&woo_order(1002, 62, "processing", "[]"));
    shop.settled();
    let resumed = call(
        "resume",
        json!({"reason": "fraudulent order", "events": "cancel"}),
    );
    assert_eq!(resumed["cancelled"], 1, "{resumed}");
    shop.settled();
    let before = shop.pending(62);
    // WHEN reconcile reads both orders from the shop's API
    let api = FakeApi::start(
        vec![format!(
            "[{},{}]",
            woo_order(1001, 62, "processing", "[]"),
            woo_order(1002, 62, "processing", "[]")
        )],
        true,
    );
    let run = shop.reconcile(&api, &[]);
    shop.settled();
    // THEN the cancelled payment is reported rejected, with the operator's reason, and not sent
    let cancelled = run["not_present"]
        .as_array()
        .expect("not_present")
        .iter()
        .find(|r| r["event"] == "woocommerce-order-1002-paid")
        .cloned()
        .expect("the cancelled payment is reported");
    assert_eq!(cancelled["status"], "rejected", "{run}");
    assert!(
        cancelled["reason"]
            .as_str()
            .is_some_and(|r| r.contains("fraudulent order")),
        "{run}"
    );
    assert_eq!(
        (run["sent"].as_i64(), run["missing"].as_i64()),
        (Some(0), Some(0)),
        "{run}"
    );
    assert_eq!(shop.pending(62), before);
}

#[test]
fn an_order_that_cannot_be_looked_at_is_reported_failed_and_the_others_are_sent() {
    // GIVEN customer 71, whose account cannot be read right now (a bad manual edit), and two
    // missed orders, 71's and 72's
    let shop = Shop::start("woo-failed");
    shop.webhook(&woo_order(1006, 71, "processing", "[]"));
    shop.settled();
    let conn = rusqlite::Connection::open(&shop.db).expect("db");
    conn.execute(
        "UPDATE accounts SET body = '{not an account' WHERE member = 'woocommerce:71'",
        [],
    )
    .expect("poison");
    let api = FakeApi::start(
        vec![format!(
            "[{},{}]",
            woo_order(2001, 71, "processing", "[]"),
            woo_order(2002, 72, "processing", "[]")
        )],
        true,
    );
    // WHEN reconcile runs
    let (out, run) = shop.reconcile_status("us-shop", "woocommerce", &api, &[]);
    // THEN 72's order is sent, 71's is reported failed with the cause, and the run says to
    // run it again (exit 1)
    assert_eq!(out.status.code(), Some(1), "{run}");
    assert_eq!(
        (run["sent"].as_i64(), run["failed"].as_i64()),
        (Some(1), Some(1)),
        "{run}"
    );
    let failed: Vec<&Value> = run["not_present"]
        .as_array()
        .expect("not_present")
        .iter()
        .filter(|r| r["status"] == "failed")
        .collect();
    assert_eq!(failed[0]["event"], "woocommerce-order-2001-paid", "{run}");
    shop.settled();
    assert_eq!(shop.pending(72), 64);
}

#[test]
fn a_page_the_platform_refuses_ends_the_run_with_what_was_read_before_it_reported() {
    // GIVEN a missed order on page 1, and a page 2 the API refuses (403)
    let shop = Shop::start("woo-page-refused");
    let api = FakeApi::refusing(
        vec![
            format!("[{}]", woo_order(4001, 81, "processing", "[]")),
            format!("[{}]", woo_order(4002, 82, "processing", "[]")),
        ],
        true,
        Some(2),
    );
    // WHEN reconcile runs
    let (out, run) = shop.reconcile_status("us-shop", "woocommerce", &api, &[]);
    // THEN page 1's order is sent and reported, the run says why it stopped and exits 2
    assert_eq!(out.status.code(), Some(2), "{run}");
    assert_eq!(
        (run["orders"].as_i64(), run["sent"].as_i64()),
        (Some(1), Some(1)),
        "{run}"
    );
    assert_eq!(missing(&run), ["woocommerce-order-4001-paid"], "{run}");
    assert!(
        run["unread"].as_str().is_some_and(|r| r.contains("403")),
        "{run}"
    );
    shop.settled();
    assert_eq!(shop.pending(81), 64);
}

#[test]
fn a_dry_run_does_not_count_a_guest_order_s_refund_missing() {
    // GIVEN a guest order (no customer) paid and partly refunded while the webhook was off
    let shop = Shop::start("woo-guest-dry");
    let refund = r#"[{"id": 950, "reason": "damaged", "total": "-15.04"}]"#;
    let api = FakeApi::start(
        vec![format!("[{}]", woo_order(4101, 0, "processing", refund))],
        true,
    );
    // WHEN reconcile runs as a dry run, then for real
    let dry = shop.reconcile(&api, &["--dry-run"]);
    let run = shop.reconcile(&api, &[]);
    // THEN neither counts anything missing: its refund has nothing to take back
    for answer in [&dry, &run] {
        assert_eq!(
            (answer["missing"].as_i64(), answer["present"].as_i64()),
            (Some(0), Some(1)),
            "{answer}"
        );
    }
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn shopify_fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/shopify")
        .join(name);
    let occurred =
        (Utc::now() - chrono::Duration::days(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    std::fs::read_to_string(path)
        .expect("fixture")
        .replace("__OCCURRED_AT__", &occurred)
}

#[test]
fn shopify_reconcile_follows_link_pages_and_sends_the_missed_payment_and_refund() {
    // GIVEN kr-shop, whose Shopify webhook delivered order A's payment, then missed order B
    // (another customer) and A's refund
    let shop = Shop::start("shopify");
    let paid_a = shopify_fixture("orders-paid.json");
    shop.shopify("orders/paid", &paid_a);
    shop.settled();
    let refund_a = shopify_fixture("refunds-create.json");
    let mut order_a: Value = serde_json::from_str(&paid_a).expect("json");
    order_a["financial_status"] = "partially_refunded".into();
    order_a["refunds"] = Value::Array(vec![serde_json::from_str(&refund_a).expect("json")]);
    let mut order_b: Value = serde_json::from_str(&paid_a).expect("json");
    order_b["id"] = 820982911946154509u64.into();
    order_b["customer"]["id"] = 7001235.into();
    order_b["customer"]["email"] = "other@example.com".into();
    order_b["refunds"] = Value::Array(Vec::new());
    // AND the Admin API serves them one to a page, linked, and asks to wait once
    let api = FakeApi::start(vec![format!("[{order_a}]"), format!("[{order_b}]")], false);
    // WHEN reconcile runs
    let run = shop.reconcile_on("kr-shop", "shopify", &api, &[]);
    // THEN it sends exactly B's payment and A's refund
    assert_eq!(
        missing(&run),
        [
            "shopify-order-820982911946154508-refund-929361464",
            "shopify-order-820982911946154509-paid",
        ],
        "{run}"
    );
    shop.settled();
    // AND A keeps 1,000 - 450 pending, B earns 1,000
    assert_eq!(shop.pending_of("kr-shop", "shopify:7001234"), 550);
    assert_eq!(shop.pending_of("kr-shop", "shopify:7001235"), 1000);
    // WHEN the refund webhook arrives late THEN nothing changes
    shop.shopify("refunds/create", &refund_a);
    shop.settled();
    assert_eq!(shop.pending_of("kr-shop", "shopify:7001234"), 550);
    // AND the API was read with the access token and status=any, following the Link header
    let requests = api.requests.lock().expect("log").clone();
    assert!(
        requests
            .iter()
            .all(|(_, _, auth)| auth.as_deref() == Some(SHOPIFY_TOKEN)),
        "{requests:?}"
    );
    assert!(requests[0].0.contains("status=any") && requests[0].0.contains("updated_at_min="));
    let statuses: Vec<u16> = requests.iter().map(|(_, s, _)| *s).collect();
    assert_eq!(statuses, [200, 429, 200]);
}

#[test]
fn an_order_earned_by_a_member_merged_since_is_present() {
    // GIVEN kr-shop, whose Shopify webhook delivered order A's payment for customer 7001234,
    // a member support then merged into the app's member
    let shop = Shop::start("shopify-merged");
    let paid_a = shopify_fixture("orders-paid.json");
    shop.shopify("orders/paid", &paid_a);
    shop.settled();
    let post = |path: &str, body: Value| {
        shop.server.call(
            "POST",
            &format!("/v1/programs/kr-shop/members/m-app-5/{path}"),
            &shop.admin,
            &[],
            Some(&body.to_string()),
        )
    };
    let (status, answer) = post(
        "adjustments",
        serde_json::json!({"points": 10, "reason": "app sign-up"}),
    );
    assert_eq!(status, 201, "{answer}");
    let (status, merged) = post(
        "merge",
        serde_json::json!({"from": "shopify:7001234", "reason": "the same person"}),
    );
    assert_eq!(status, 200, "{merged}");
    shop.settled();
    // WHEN reconcile goes over the Admin API's orders, A among them
    let api = FakeApi::start(vec![format!("[{paid_a}]")], false);
    let run = shop.reconcile_on("kr-shop", "shopify", &api, &[]);
    // THEN A's payment is present, not missing, and nothing is sent again
    assert!(missing(&run).is_empty(), "{run}");
    shop.settled();
    assert_eq!(shop.pending_of("kr-shop", "m-app-5"), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_on_a_table_leaves_what_is_missing_in_its_outbox() {
    use loyalty_core::ports::OutboxStore;
    use loyalty_core::services::programs::ProgramFormat;
    use loyalty_core::store::dynamodb::DynamoStore;
    // GIVEN a table of its own with us-shop, which has seen none of two WooCommerce orders
    let endpoint = crate::common::moto::endpoint();
    let table = format!("loyalty-reconcile-{}", uuid::Uuid::new_v4().simple());
    let store = DynamoStore::new(crate::common::moto::client(), &table);
    store.create_table().await.expect("moto creates the table");
    let services = loyalty_core::services::Services::new(
        Arc::new(store.clone()),
        Arc::new(loyalty_core::queue::outbox::OutboxQueue::new(Arc::new(
            store.clone(),
        ))),
        Arc::new(loyalty_core::ports::SystemClock),
    );
    let us_shop = include_str!("../../../examples/us-shop.toml");
    services
        .put_program("us-shop", us_shop, ProgramFormat::Toml)
        .await
        .expect("program");
    let api = FakeApi::start(
        vec![format!(
            "[{},{}]",
            woo_order(2001, 71, "processing", "[]"),
            woo_order(2002, 72, "completed", "[]")
        )],
        true,
    );
    // WHEN reconcile runs against the table
    let since = (Utc::now() - chrono::Duration::days(3))
        .date_naive()
        .to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args([
                "reconcile",
                "--platform",
                "woocommerce",
                "--since",
                &since,
                "--json",
            ])
            .args(["--table", &table])
            .env("LOYALTY_WOOCOMMERCE_URL", &api.base)
            .env("LOYALTY_WOOCOMMERCE_KEY", KEY)
            .env("LOYALTY_WOOCOMMERCE_SECRET", SECRET)
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("LOYALTY_LOG", "warn")
            .output()
            .expect("loyalty reconcile runs")
    })
    .await
    .expect("joined");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    // THEN both payments were sent: they wait in the table's outbox for the stream's relay
    assert_eq!(result["sent"], 2, "{result}");
    let mut waiting: Vec<String> = store
        .outbox(100)
        .await
        .expect("outbox")
        .into_iter()
        .filter(|m| m.queue == loyalty_core::ports::QueueName::Earn)
        .map(|m| m.envelope.id)
        .collect();
    waiting.sort();
    assert_eq!(
        waiting,
        ["woocommerce-order-2001-paid", "woocommerce-order-2002-paid"]
    );
}

#[test]
fn a_reconcile_for_a_program_the_store_does_not_have_is_refused_even_with_no_orders() {
    // GIVEN a shop whose API has no order in the window, and a store without us-shpo
    let shop = Shop::start("woo-unknown-program");
    let api = FakeApi::start(vec!["[]".into()], true);
    // WHEN reconcile is run for the mistyped program
    let out: Output = Command::new(BIN)
        .args([
            "reconcile",
            "--program",
            "us-shpo",
            "--platform",
            "woocommerce",
        ])
        .args([
            "--since",
            "2026-12-01",
            "--db",
            shop.db.to_str().expect("utf-8"),
        ])
        .env("LOYALTY_WOOCOMMERCE_URL", &api.base)
        .env("LOYALTY_WOOCOMMERCE_KEY", KEY)
        .env("LOYALTY_WOOCOMMERCE_SECRET", SECRET)
        .output()
        .expect("loyalty reconcile runs");
    // THEN it fails and names the program (before: "orders=0", success: nothing was checked)
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("\"us-shpo\" does not exist"), "{stderr}");
}
