//! Webhooks end to end: signed platform deliveries to `loyalty serve`, checked through the API.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use loyalty_core::webhooks::{pos::signature_header, sign_base64};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_loyalty");
const JWT: &str = "webhook-test-jwt";
const SHOPIFY_SECRET: &str = "shpss_current";
const POS_SECRET: &str = "pos-secret";
const MEMBER: &str = "shopify:7001234";
const WOO_SECRET: &str = "wc-secret";
const CAFE24_KEY: &str = "cafe24-webhook-key";

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Server {
    start_with(&[])
}

/// Starts serve with extra arguments (`--program FILE`...).
fn start_with(extra: &[&str]) -> Server {
    let mut child = Command::new(BIN)
        .args(["serve", "--memory", "--addr", "127.0.0.1:0"])
        .args(extra)
        .env("LOYALTY_SECRET_US_SHOP_WOOCOMMERCE", WOO_SECRET)
        .env("LOYALTY_JWT_SECRET", JWT)
        .env("LOYALTY_SECRET_KR_SHOP_SHOPIFY", SHOPIFY_SECRET)
        .env("LOYALTY_SECRET_KR_SHOP_SHOPIFY_PREVIOUS", "shpss_old")
        .env("LOYALTY_SECRET_KR_SHOP_POS", POS_SECRET)
        .env("LOYALTY_SECRET_KR_SHOP_CAFE24", CAFE24_KEY)
        .env("LOYALTY_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("serve prints its address")
            .expect("utf-8");
        if let Some(url) = line.strip_prefix("loyalty serve: listening on ") {
            break url.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Server { child, base }
}

fn fixture(name: &str, occurred_at: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/shopify")
        .join(name);
    std::fs::read_to_string(&path)
        .expect("fixture exists")
        .replace("__OCCURRED_AT__", occurred_at)
        .into_bytes()
}

fn days_ago(n: i64) -> String {
    (Utc::now() - chrono::Duration::days(n)).to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn shopify(
    server: &Server,
    topic: &str,
    body: &[u8],
    secret: &str,
    delivery: &str,
) -> (u16, Value) {
    let response = reqwest::blocking::Client::new()
        .post(format!("{}/webhooks/shopify/kr-shop", server.base))
        .header("X-Shopify-Topic", topic)
        .header("X-Shopify-Hmac-Sha256", sign_base64(secret, body))
        .header("X-Shopify-Webhook-Id", delivery)
        .header("Content-Type", "application/json")
        .body(body.to_vec())
        .send()
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

/// An operator's view of a member; one with no account (`unknown-member`) has no points.
fn view_in(server: &Server, program: &str, member: &str) -> Value {
    let view = admin_get(server, &format!("/v1/programs/{program}/members/{member}"));
    if view["type"] == "/problems/unknown-member" {
        return json!({"balance": 0, "pending": 0, "account": false});
    }
    view
}

fn admin_token() -> String {
    let token = Command::new(BIN)
        .args(["token", "--admin"])
        .env("LOYALTY_JWT_SECRET", JWT)
        .output()
        .expect("token");
    String::from_utf8(token.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// An admin's GET of `path`.
fn admin_get(server: &Server, path: &str) -> Value {
    reqwest::blocking::Client::new()
        .get(format!("{}{path}", server.base))
        .bearer_auth(admin_token())
        .send()
        .expect("request")
        .json()
        .expect("json")
}

/// An admin's POST of `body` to `path`: the status.
fn admin_post(server: &Server, path: &str, body: &Value) -> u16 {
    reqwest::blocking::Client::new()
        .post(format!("{}{path}", server.base))
        .bearer_auth(admin_token())
        .json(body)
        .send()
        .expect("request")
        .status()
        .as_u16()
}

fn eventually(server: &Server, member: &str, check: impl Fn(&Value) -> bool) -> Value {
    eventually_in(server, "kr-shop", member, check)
}

fn eventually_in(
    server: &Server,
    program: &str,
    member: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = view_in(server, program, member);
        if check(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "never held; last view {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_shopify_refund_of_money_alone_takes_back_its_share_of_what_the_goods_were_paid() {
    // GIVEN the fixture's order: 100,000 paid for its goods (tax included), 1,000 pending
    let server = start();
    let paid = fixture("orders-paid.json", &days_ago(1));
    assert_eq!(
        shopify(&server, "orders/paid", &paid, SHOPIFY_SECRET, "p-1").0,
        200
    );
    eventually(&server, MEMBER, |v| v["pending"] == 1_000);
    // WHEN the shop refunds 25,000 without returning any line (a goodwill refund), with
    // 3,000 of shipping
    let mut refund: Value =
        serde_json::from_slice(&fixture("refunds-create.json", &days_ago(0))).expect("json");
    refund["refund_line_items"] = json!([]);
    refund["transactions"] =
        json!([{"kind": "refund", "status": "success", "amount": "28000", "currency": "KRW"}]);
    refund["order_adjustments"] = json!([{"kind": "shipping_refund", "amount": "-3000"}]);
    let body = refund.to_string().into_bytes();
    let (status, answer) = shopify(&server, "refunds/create", &body, SHOPIFY_SECRET, "r-1");
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("accepted")),
        "{answer}"
    );
    // THEN a quarter of each line's points is taken back, rounded down (137 of the tees' 550,
    // 112 of the cap's 450), once for both deliveries
    assert_eq!(
        shopify(&server, "refunds/create", &body, SHOPIFY_SECRET, "r-2").0,
        200
    );
    let v = eventually(&server, MEMBER, |v| v["pending"] == 751);
    assert_eq!(v["tier"]["qualifying"], 75_000);
}

#[test]
fn a_shopify_line_returned_and_a_goodwill_refund_take_back_the_share_of_money_refunded() {
    // GIVEN the fixture's order (100,000 paid for its goods: tees 550 points, cap 450) and its
    // cap returned: 450 taken back
    let server = start();
    let paid = fixture("orders-paid.json", &days_ago(1));
    assert_eq!(
        shopify(&server, "orders/paid", &paid, SHOPIFY_SECRET, "p-1").0,
        200
    );
    let returned = fixture("refunds-create.json", &days_ago(0));
    assert_eq!(
        shopify(&server, "refunds/create", &returned, SHOPIFY_SECRET, "r-1").0,
        200
    );
    eventually(&server, MEMBER, |v| v["pending"] == 550);
    // WHEN the shop refunds 10,000 more without returning anything (goodwill)
    let mut goodwill: Value = serde_json::from_slice(&returned).expect("json");
    goodwill["id"] = json!(509562970);
    goodwill["refund_line_items"] = json!([]);
    goodwill["transactions"] =
        json!([{"kind": "refund", "status": "success", "amount": "10000", "currency": "KRW"}]);
    let body = goodwill.to_string().into_bytes();
    let (status, answer) = shopify(&server, "refunds/create", &body, SHOPIFY_SECRET, "r-2");
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("accepted")),
        "{answer}"
    );
    // THEN a tenth of the order's 1,000 points (100) comes off the tees, the line left: 55,000
    // of 100,000 refunded in all, 550 points taken back
    let v = eventually(&server, MEMBER, |v| v["pending"] != 550);
    assert_eq!(v["pending"], 450);
}

#[test]
fn shopify_orders_earn_once_and_refunds_take_back_exactly_their_lines() {
    // GIVEN kr-shop with a Shopify secret (and a previous one during rotation)
    let server = start();
    let paid = fixture("orders-paid.json", &days_ago(1));
    // WHEN orders/paid arrives three times under three delivery ids, once signed with the old secret
    for (i, secret) in [SHOPIFY_SECRET, SHOPIFY_SECRET, "shpss_old"]
        .iter()
        .enumerate()
    {
        let (status, body) = shopify(
            &server,
            "orders/paid",
            &paid,
            secret,
            &format!("delivery-{i}"),
        );
        assert_eq!(status, 200, "{body}");
    }
    // THEN the member shopify:7001234 has 1,000 pending points, once: (2 x 29,000 - 3,000 +
    // 45,000) / 100, from shop money (the USD presentment amounts are ignored), shipping excluded
    let v = eventually(&server, MEMBER, |v| v["pending"] == 1_000);
    assert_eq!(v["balance"], 0);
    assert_eq!(v["tier"]["qualifying"], 100_000);

    // WHEN the cap line (45,000) is refunded, twice
    let refund = fixture("refunds-create.json", &days_ago(0));
    assert_eq!(
        shopify(&server, "refunds/create", &refund, SHOPIFY_SECRET, "r-1").0,
        200
    );
    assert_eq!(
        shopify(&server, "refunds/create", &refund, SHOPIFY_SECRET, "r-2").0,
        200
    );
    // THEN exactly what that line earned (450) is taken back, once
    eventually(&server, MEMBER, |v| v["pending"] == 550);

    // WHEN the order is cancelled afterwards THEN only what is left (550) goes
    let cancelled = fixture("orders-cancelled.json", &days_ago(0));
    assert_eq!(
        shopify(
            &server,
            "orders/cancelled",
            &cancelled,
            SHOPIFY_SECRET,
            "c-1"
        )
        .0,
        200
    );
    let v = eventually(&server, MEMBER, |v| v["pending"] == 0);
    assert_eq!(v["balance"], 0);
    assert_eq!(v["tier"]["qualifying"], 0);
}

#[test]
fn shopify_lines_removed_by_an_order_edit_before_payment_earn_nothing() {
    // GIVEN kr-shop, and an order edited before it was paid: one of the two tees and the cap
    // removed (current_quantity 1 of 2, and 0)
    let server = start();
    let mut order: Value =
        serde_json::from_slice(&fixture("orders-paid.json", &days_ago(1))).expect("JSON");
    order["line_items"][0]["current_quantity"] = json!(1);
    order["line_items"][1]["current_quantity"] = json!(0);
    let paid = serde_json::to_vec(&order).expect("JSON");
    // WHEN orders/paid arrives
    let (status, body) = shopify(&server, "orders/paid", &paid, SHOPIFY_SECRET, "edited-1");
    assert_eq!(status, 200, "{body}");
    // THEN only the tee kept earns, with its share of the line's discount: (29,000 - 1,500) / 100
    let v = eventually(&server, MEMBER, |v| v["pending"] != 0);
    assert_eq!(v["pending"], 275);
    assert_eq!(v["tier"]["qualifying"], 27_500);
}

#[test]
fn bad_shopify_deliveries_are_kept_aside_and_credit_nothing() {
    // GIVEN a running stack
    let server = start();
    let paid = fixture("orders-paid.json", &days_ago(1));
    // WHEN a delivery is signed with a wrong secret
    let (status, problem) = shopify(&server, "orders/paid", &paid, "not-the-secret", "d-1");
    // THEN it gets 401 invalid-signature
    assert_eq!(status, 401);
    assert!(problem["type"]
        .as_str()
        .unwrap()
        .ends_with("invalid-signature"));
    // WHEN a correctly signed body is not JSON, or lacks required fields
    let (not_json, answer) = shopify(&server, "orders/paid", b"not json", SHOPIFY_SECRET, "d-2");
    let (no_lines, _) = shopify(
        &server,
        "orders/paid",
        br#"{"id": 5, "customer": {"id": 1}}"#,
        SHOPIFY_SECRET,
        "d-3",
    );
    // THEN both are acknowledged as rejected (Shopify would turn the webhook off after a few
    // refusals) and kept among the rejected events with why
    assert_eq!(
        (not_json, no_lines, answer["status"].as_str()),
        (200, 200, Some("rejected")),
        "{answer}"
    );
    // WHEN a signed order's line names a SKU too long for a queue message (U+FFFF takes 3
    // bytes as sent and 6 as queued: SQS takes it only escaped)
    let mut huge: Value = serde_json::from_slice(&paid).unwrap();
    huge["line_items"][0]["sku"] = "\u{ffff}".repeat(50_000).into();
    let huge = serde_json::to_vec(&huge).unwrap();
    let (status, answer) = shopify(&server, "orders/paid", &huge, SHOPIFY_SECRET, "d-6");
    // THEN it is acknowledged as rejected too, never retried into a queue that refuses it
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("rejected")),
        "{answer}"
    );
    // WHEN a signed order names its customer's id twice, or writes its own id as a float
    // (before: the last customer credited; the order `820982911946154508.0` credited again)
    let text = String::from_utf8(paid.clone()).unwrap();
    let twice = text.replacen("\"id\": 7001234,", "\"id\": 1, \"id\": 7001234,", 1);
    let float = text.replacen(
        "\"id\": 820982911946154508,",
        "\"id\": 820982911946154508.0,",
        1,
    );
    assert!(twice != text && float != text);
    for (body, delivery) in [(twice, "d-7"), (float, "d-8")] {
        let (status, answer) = shopify(
            &server,
            "orders/paid",
            body.as_bytes(),
            SHOPIFY_SECRET,
            delivery,
        );
        // THEN each is acknowledged as rejected, credits nothing, and is kept with why
        assert_eq!(
            (status, answer["status"].as_str()),
            (200, Some("rejected")),
            "{answer}"
        );
    }
    let rejected = admin_get(&server, "/v1/programs/kr-shop/rejected-events");
    let kept: Vec<&str> = rejected["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["id"].as_str())
        .filter(|id| id.starts_with("shopify-delivery-"))
        .collect();
    assert_eq!(kept.len(), 5, "{rejected}");
    // AND counted as rejected events of webhook-ingest's, a redelivery of one as a duplicate
    // (before: in no count)
    shopify(&server, "orders/paid", b"not json", SHOPIFY_SECRET, "d-2");
    let metrics = reqwest::blocking::get(format!("{}/metrics", server.base))
        .and_then(|r| r.text())
        .unwrap();
    let count = |outcome: &str| {
        let series = format!(
            "loyalty_events_total{{function=\"webhook-ingest\",outcome=\"{outcome}\",program=\"kr-shop\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .map(str::to_string)
    };
    assert_eq!(
        (count("rejected"), count("duplicate")),
        (Some("5".into()), Some("1".into())),
        "{metrics}"
    );
    // WHEN a guest order arrives THEN it is acknowledged without effect
    let guest = fixture("orders-paid-guest.json", &days_ago(1));
    let (status, body) = shopify(&server, "orders/paid", &guest, SHOPIFY_SECRET, "d-4");
    assert_eq!((status, body["status"].as_str()), (200, Some("ignored")));
    // AND a later valid delivery is the only effect the member ever sees
    assert_eq!(
        shopify(&server, "orders/paid", &paid, SHOPIFY_SECRET, "d-5").0,
        200
    );
    let v = eventually(&server, MEMBER, |v| v["pending"] == 1_000);
    assert_eq!(v["balance"], 0);
}

#[test]
fn pos_envelopes_need_a_fresh_signature() {
    // GIVEN a POS sale as a signed envelope
    let server = start();
    let body = json!({
        "type": "purchase.completed", "version": 1, "id": "pos-store7-0001", "program": "kr-shop",
        "member": "pos-member-1", "occurred_at": days_ago(8),
        "data": {"order_id": "store7-0001", "currency": "KRW", "channel": "store", "platform": "pos",
                 "lines": [{"line_id": "1", "quantity": 1, "unit_price": "12000"}]}
    })
    .to_string();
    let send = |header: String| {
        reqwest::blocking::Client::new()
            .post(format!("{}/webhooks/pos/kr-shop", server.base))
            .header("X-Loyalty-Signature", header)
            .body(body.clone())
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    let now = Utc::now().timestamp();
    // WHEN it is signed ten minutes ago, or with another secret THEN 401
    assert_eq!(
        send(signature_header(POS_SECRET, body.as_bytes(), now - 600)),
        401
    );
    assert_eq!(send(signature_header("wrong", body.as_bytes(), now)), 401);
    // WHEN it is signed now THEN it earns 120 points
    assert_eq!(
        send(signature_header(POS_SECRET, body.as_bytes(), now)),
        200
    );
    eventually(&server, "pos-member-1", |v| v["balance"] == 120);
}

#[test]
fn a_till_naming_a_linked_app_login_or_an_email_in_another_case_credits_its_member() {
    // GIVEN m-till-7 and m-till-ann, whose app login u-till and email Ann@Example.com
    // support linked
    let server = start();
    let members = "/v1/programs/kr-shop/members";
    for member in ["m-till-7", "m-till-ann"] {
        let opening = json!({"points": 10, "reason": "opening"});
        assert_eq!(
            admin_post(
                &server,
                &format!("{members}/{member}/adjustments"),
                &opening
            ),
            201
        );
    }
    let link = |member: &str, kind: &str, value: &str| {
        admin_post(
            &server,
            &format!("{members}/{member}/aliases"),
            &json!({"kind": kind, "value": value}),
        )
    };
    assert_eq!(link("m-till-7", "app", "u-till"), 201);
    assert_eq!(link("m-till-ann", "email", "Ann@Example.com"), 201);
    // WHEN a till sends a sale naming each as it knows them
    let sale = |id: &str, member: &str| {
        let body = json!({
            "type": "purchase.completed", "version": 1, "id": id, "program": "kr-shop",
            "member": member, "occurred_at": days_ago(8),
            "data": {"order_id": id, "currency": "KRW", "channel": "store",
                     "lines": [{"line_id": "1", "quantity": 1, "unit_price": "12000"}]}
        })
        .to_string();
        let header = signature_header(POS_SECRET, body.as_bytes(), Utc::now().timestamp());
        reqwest::blocking::Client::new()
            .post(format!("{}/webhooks/pos/kr-shop", server.base))
            .header("X-Loyalty-Signature", header)
            .body(body)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(sale("till-u-1", "u-till"), 200);
    assert_eq!(sale("till-ann-1", "email:ANN@example.com"), 200);
    // THEN each sale's 120 points reach the linked member (before: new accounts u-till and
    // email:ANN@example.com, which neither the app nor support finds)
    eventually(&server, "m-till-7", |v| v["balance"] == 130);
    eventually(&server, "m-till-ann", |v| v["balance"] == 130);
    assert_eq!(
        view_in(&server, "kr-shop", "email:ANN@example.com")["balance"],
        130
    );
}

#[test]
fn platforms_without_a_secret_or_unknown_are_refused() {
    let server = start();
    let post = |path: &str| {
        reqwest::blocking::Client::new()
            .post(format!("{}{path}", server.base))
            .body("{}")
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    // An unknown platform is 404; a known one with no secret configured is 401.
    assert_eq!(post("/webhooks/bigcartel/kr-shop"), 404);
    assert_eq!(post("/webhooks/cafe24/us-shop"), 401);
    assert_eq!(post("/webhooks/shopify/us-shop"), 401);
}

#[test]
fn a_refund_before_its_payment_ends_where_in_order_delivery_ends() {
    // GIVEN a stack that sees the refund of an order before the order's payment
    let server = start();
    let refund = fixture("refunds-create.json", &days_ago(0));
    let (status, body) = shopify(
        &server,
        "refunds/create",
        &refund,
        SHOPIFY_SECRET,
        "r-early",
    );
    // THEN the refund is accepted (kept until the order is known)
    assert_eq!(status, 200, "{body}");
    // WHEN the payment arrives
    let paid = fixture("orders-paid.json", &days_ago(1));
    assert_eq!(
        shopify(&server, "orders/paid", &paid, SHOPIFY_SECRET, "p-late").0,
        200
    );
    // THEN the member ends with what in-order delivery gives: 1,000 earned, 450 taken back
    let v = eventually(&server, MEMBER, |v| v["pending"] == 550);
    assert_eq!(v["balance"], 0);
    assert_eq!(v["tier"]["qualifying"], 55_000);
}

fn woo_order(status: &str, refunds: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/woocommerce/order-processing.json");
    let now = Utc::now();
    let stamp = |t: chrono::DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%S").to_string();
    std::fs::read_to_string(path)
        .expect("fixture exists")
        .replace("__STATUS__", status)
        .replace("__PAID_AT__", &stamp(now - chrono::Duration::days(2)))
        .replace("__MODIFIED_AT__", &stamp(now))
        .replace("__REFUNDS__", refunds)
        .into_bytes()
}

/// Sends a WooCommerce delivery; `signature` None sends none (the ping).
fn woo(server: &Server, body: &[u8], signature: Option<String>) -> (u16, Value) {
    let mut request = reqwest::blocking::Client::new()
        .post(format!("{}/webhooks/woocommerce/us-shop", server.base))
        .header("X-WC-Webhook-Topic", "order.updated");
    if let Some(s) = signature {
        request = request.header("X-WC-Webhook-Signature", s);
    }
    let response = request.body(body.to_vec()).send().expect("request");
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

#[test]
fn woocommerce_orders_earn_once_and_refunds_take_their_share() {
    // GIVEN us-shop with a WooCommerce secret
    let us_shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/us-shop.toml");
    let server = start_with(&["--program", us_shop.to_str().unwrap()]);
    let signed = |body: &[u8]| Some(sign_base64(WOO_SECRET, body));
    let pending =
        |n: i64| eventually_in(&server, "us-shop", "woocommerce:55", |v| v["pending"] == n);
    // WHEN the unsigned ping arrives THEN it is acknowledged without effect
    let (status, body) = woo(&server, b"webhook_id=12", None);
    assert_eq!((status, body["status"].as_str()), (200, Some("ignored")));
    // WHEN the paid order arrives twice, and once tampered with after signing
    let paid = woo_order("processing", "[]");
    assert_eq!(woo(&server, &paid, signed(&paid)).0, 200);
    assert_eq!(woo(&server, &paid, signed(&paid)).0, 200);
    let mut tampered = paid.clone();
    tampered.push(b' ');
    assert_eq!(woo(&server, &tampered, signed(&paid)).0, 401);
    // THEN woocommerce:55 has 64 points pending, once ($45.00 + $19.99 eligible, 1 point per $)
    let v = pending(64);
    assert_eq!(v["tier"]["qualifying"], 6_499);
    // WHEN a partial refund of $15.04 of $75.19 appears on the order
    let refunds = r#"[{"id": 901, "reason": "damaged", "total": "-15.04"}]"#;
    let partial = woo_order("processing", refunds);
    assert_eq!(woo(&server, &partial, signed(&partial)).0, 200);
    // THEN each line gives back floor(points x 15.04 / 75.19): 9 + 3
    pending(52);
    // WHEN the order is then refunded in full THEN what is left goes
    let refunded = woo_order("refunded", refunds);
    assert_eq!(woo(&server, &refunded, signed(&refunded)).0, 200);
    let v = pending(0);
    assert_eq!(v["balance"], 0);
}

#[test]
fn a_woocommerce_order_given_to_another_customer_is_reversed_where_its_points_went() {
    // GIVEN us-shop with a WooCommerce secret, and an order paid by customer 55
    let us_shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/us-shop.toml");
    let server = start_with(&["--program", us_shop.to_str().unwrap()]);
    let signed = |body: &[u8]| Some(sign_base64(WOO_SECRET, body));
    let paid = woo_order("processing", "[]");
    assert_eq!(woo(&server, &paid, signed(&paid)).0, 200);
    eventually_in(&server, "us-shop", "woocommerce:55", |v| v["pending"] == 64);
    // WHEN staff give the order to customer 56, then refund it in full
    let refunded = String::from_utf8(woo_order("refunded", "[]"))
        .expect("utf-8")
        .replace("\"customer_id\": 55", "\"customer_id\": 56")
        .into_bytes();
    assert_eq!(woo(&server, &refunded, signed(&refunded)).0, 200);
    // THEN customer 55 gives the order's points back
    let v = eventually_in(&server, "us-shop", "woocommerce:55", |v| v["pending"] == 0);
    assert_eq!(v["balance"], 0);
}

#[test]
fn a_woocommerce_order_given_to_another_customer_or_a_guest_is_credited_and_refunded_once() {
    // GIVEN us-shop, and an order paid by customer 55
    let us_shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/us-shop.toml");
    let server = start_with(&["--program", us_shop.to_str().unwrap()]);
    let signed = |body: &[u8]| Some(sign_base64(WOO_SECRET, body));
    let of = |status: &str, refunds: &str, customer: &str, email: &str| {
        String::from_utf8(woo_order(status, refunds))
            .expect("utf-8")
            .replace(
                "\"customer_id\": 55",
                &format!("\"customer_id\": {customer}"),
            )
            .replace("Ava.Lee@example.com", email)
            .into_bytes()
    };
    let paid = woo_order("processing", "[]");
    assert_eq!(woo(&server, &paid, signed(&paid)).0, 200);
    eventually_in(&server, "us-shop", "woocommerce:55", |v| v["pending"] == 64);
    // WHEN staff give the order to customer 56 and complete it
    let moved = of("completed", "[]", "56", "Bo.Kim@example.com");
    assert_eq!(woo(&server, &moved, signed(&moved)).0, 200);
    // AND then make it a guest's, and refund $15.04 of it
    let refunds = r#"[{"id": 901, "reason": "damaged", "total": "-15.04"}]"#;
    let guest = of("processing", refunds, "0", "Ava.Lee@example.com");
    let (status, answer) = woo(&server, &guest, signed(&guest));
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("accepted")),
        "{answer}"
    );
    // THEN the payment was credited once, to 55, and the refund is taken back there
    let ava = eventually_in(&server, "us-shop", "woocommerce:55", |v| v["pending"] == 52);
    assert_eq!(ava["balance"], 0);
    let bo = view_in(&server, "us-shop", "woocommerce:56");
    assert_eq!(
        (bo["pending"].as_i64(), bo["balance"].as_i64()),
        (Some(0), Some(0)),
        "{bo}"
    );
}

#[test]
fn a_woocommerce_order_cancelled_before_it_was_paid_keeps_its_later_payment() {
    // GIVEN us-shop, and an order of customer 55 cancelled unpaid (date_paid_gmt null)
    let us_shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/us-shop.toml");
    let server = start_with(&["--program", us_shop.to_str().unwrap()]);
    let signed = |body: &[u8]| Some(sign_base64(WOO_SECRET, body));
    let unpaid = String::from_utf8(woo_order("cancelled", "[]")).expect("utf-8");
    let unpaid = never_paid(&unpaid).into_bytes();
    let (status, answer) = woo(&server, &unpaid, signed(&unpaid));
    // THEN it is acknowledged, with nothing to take back: no event is kept for it
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["events"], json!([]), "{answer}");
    // WHEN it is paid afterwards
    let paid = woo_order("processing", "[]");
    assert_eq!(woo(&server, &paid, signed(&paid)).0, 200);
    // THEN the payment earns
    eventually_in(&server, "us-shop", "woocommerce:55", |v| v["pending"] == 64);
}

#[test]
fn a_cash_on_delivery_order_refused_at_the_door_gives_its_points_back() {
    // GIVEN us-shop, and a cash-on-delivery order of customer 55, processing and credited
    // though not yet paid (date_paid_gmt null until it is completed)
    let us_shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/us-shop.toml");
    let server = start_with(&["--program", us_shop.to_str().unwrap()]);
    let signed = |body: &[u8]| Some(sign_base64(WOO_SECRET, body));
    let processing = String::from_utf8(woo_order("processing", "[]")).expect("utf-8");
    let processing = never_paid(&processing).into_bytes();
    assert_eq!(woo(&server, &processing, signed(&processing)).0, 200);
    eventually_in(&server, "us-shop", "woocommerce:55", |v| v["pending"] == 64);
    // WHEN the customer refuses the parcel and the order is cancelled, still unpaid
    let cancelled = String::from_utf8(woo_order("cancelled", "[]")).expect("utf-8");
    let cancelled = never_paid(&cancelled).into_bytes();
    assert_eq!(woo(&server, &cancelled, signed(&cancelled)).0, 200);
    // THEN the points it credited are taken back
    eventually_in(&server, "us-shop", "woocommerce:55", |v| v["pending"] == 0);
}

/// The order with `"date_paid_gmt": null`, as WooCommerce sends an order never paid.
fn never_paid(order: &str) -> String {
    let start = order.find("\"date_paid_gmt\"").expect("the field");
    let end = start + order[start..].find(',').expect("a comma after it");
    format!(
        "{}\"date_paid_gmt\": null{}",
        &order[..start],
        &order[end..]
    )
}

#[test]
fn a_woocommerce_cancellation_of_an_order_credited_without_its_webhook_reaches_the_customer() {
    // GIVEN us-shop, and WooCommerce order 727 of customer 55 credited through the events API
    // (as a replay or an import does: no webhook linked the order)
    let us_shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/us-shop.toml");
    let server = start_with(&["--program", us_shop.to_str().unwrap()]);
    let paid = json!({"type": "purchase.completed", "version": 1, "id": "woocommerce-order-727-paid",
        "program": "us-shop", "member": "woocommerce:55", "occurred_at": days_ago(2),
        "data": {"order_id": "727", "currency": "USD", "channel": "online", "shipping": "0",
                 "tax": "0", "platform": "woocommerce",
                 "lines": [{"line_id": "315", "sku": "LIP-01", "category": "", "quantity": 1,
                            "unit_price": "45.00", "discount": "0"}]}});
    assert_eq!(
        admin_post(&server, "/v1/programs/us-shop/events", &paid),
        202
    );
    eventually_in(&server, "us-shop", "woocommerce:55", |v| v["pending"] == 45);
    // WHEN WooCommerce reports the order refunded
    let refunded = woo_order("refunded", "[]");
    let signed = Some(sign_base64(WOO_SECRET, &refunded));
    assert_eq!(woo(&server, &refunded, signed).0, 200);
    // THEN the customer gives the points back
    eventually_in(&server, "us-shop", "woocommerce:55", |v| v["pending"] == 0);
}

fn cafe24_fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/cafe24")
        .join(name);
    let kst = chrono::FixedOffset::east_opt(9 * 3600).expect("offset");
    let stamp = |days: i64| {
        (Utc::now() - chrono::Duration::days(days))
            .with_timezone(&kst)
            .format("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
    };
    std::fs::read_to_string(path)
        .expect("fixture exists")
        .replace("__PAID_AT__", &stamp(2))
        .replace("__CANCELLED_AT__", &stamp(0))
        .into_bytes()
}

/// Sends a Cafe24 delivery with the given `X-Api-Key` (None sends none).
fn cafe24(server: &Server, body: &[u8], key: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::blocking::Client::new()
        .post(format!("{}/webhooks/cafe24/kr-shop", server.base))
        .header("Content-Type", "application/json")
        .header("X-Trace-ID", "trace-1");
    if let Some(key) = key {
        request = request.header("X-Api-Key", key);
    }
    let response = request.body(body.to_vec()).send().expect("request");
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

#[test]
fn cafe24_orders_earn_once_and_returns_and_cancellations_reverse() {
    // GIVEN kr-shop with a Cafe24 webhook key
    let server = start();
    let member = "cafe24:gildong77";
    let paid = cafe24_fixture("order-paid.json");
    // WHEN the paid order arrives with a wrong key, or with none THEN 403 and nothing is written
    let (status, problem) = cafe24(&server, &paid, Some("not-the-key"));
    assert_eq!(status, 403, "{problem}");
    assert!(problem["type"]
        .as_str()
        .unwrap()
        .ends_with("invalid-api-key"));
    assert_eq!(cafe24(&server, &paid, None).0, 403);
    // WHEN it arrives twice with the right key
    for _ in 0..2 {
        let (status, body) = cafe24(&server, &paid, Some(CAFE24_KEY));
        assert_eq!(status, 200, "{body}");
    }
    // THEN cafe24:gildong77 has 600 points pending, once: 63,000 paid less 3,000 shipping
    let v = eventually(&server, member, |v| v["pending"] == 600);
    assert_eq!(v["balance"], 0);
    assert_eq!(v["tier"]["qualifying"], 60_000);
    // WHEN a return of 15,750 of the 60,000 paid for the goods completes (no shipping
    // returned), delivered twice
    let returned = cafe24_fixture("return-completed.json");
    for _ in 0..2 {
        assert_eq!(cafe24(&server, &returned, Some(CAFE24_KEY)).0, 200);
    }
    // THEN that share of the points goes back, once: floor(600 x 15,750 / 60,000) = 157
    // (before: a share of the 63,000 with shipping, 150)
    eventually(&server, member, |v| v["pending"] == 443);
    // WHEN the order is then cancelled THEN only what is left goes
    let cancelled = cafe24_fixture("order-cancelled.json");
    assert_eq!(cafe24(&server, &cancelled, Some(CAFE24_KEY)).0, 200);
    let v = eventually(&server, member, |v| v["pending"] == 0);
    assert_eq!(v["balance"], 0);
    assert_eq!(v["tier"]["qualifying"], 0);
    // AND a body that is not JSON is acknowledged as rejected, and kept
    let (status, answer) = cafe24(&server, b"event_no=90025", Some(CAFE24_KEY));
    assert_eq!((status, answer["status"].as_str()), (200, Some("rejected")));
}

#[test]
fn a_cafe24_return_before_its_payment_ends_where_in_order_delivery_ends() {
    // GIVEN a return completed (it names no member) that arrives before the order's payment
    let server = start();
    let returned = cafe24_fixture("return-completed.json");
    assert_eq!(cafe24(&server, &returned, Some(CAFE24_KEY)).0, 200);
    // WHEN the payment arrives
    let paid = cafe24_fixture("order-paid.json");
    assert_eq!(cafe24(&server, &paid, Some(CAFE24_KEY)).0, 200);
    // THEN the member ends as in order: 600 earned, 157 taken back
    let v = eventually(&server, "cafe24:gildong77", |v| v["pending"] == 443);
    assert_eq!(v["tier"]["qualifying"], 44_250);
}

#[test]
fn an_erasure_takes_the_refused_deliveries_that_name_the_customer_with_it() {
    // GIVEN us-shop's customer 55 with a paid order, and an order of theirs in another
    // currency, refused and kept with its raw body (name, "Ava.Lee@example.com", phone)
    let us_shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/us-shop.toml");
    let server = start_with(&["--program", us_shop.to_str().unwrap()]);
    let signed = |body: &[u8]| Some(sign_base64(WOO_SECRET, body));
    let paid = woo_order("processing", "[]");
    assert_eq!(woo(&server, &paid, signed(&paid)).0, 200);
    eventually_in(&server, "us-shop", "woocommerce:55", |v| {
        v["pending"].as_i64() > Some(0)
    });
    let foreign = String::from_utf8(paid.clone())
        .unwrap()
        .replacen("\"id\": 727,", "\"id\": 728,", 1)
        .replacen("\"currency\": \"USD\"", "\"currency\": \"EUR\"", 1)
        .into_bytes();
    let (status, answer) = woo(&server, &foreign, signed(&foreign));
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("rejected")),
        "{answer}"
    );
    let kept = |server: &Server| {
        admin_get(server, "/v1/programs/us-shop/rejected-events")["events"]
            .as_array()
            .expect("events")
            .len()
    };
    assert_eq!(kept(&server), 1);
    // AND the member's export lists it among the events that name them
    let export = admin_get(
        &server,
        "/v1/programs/us-shop/members/woocommerce:55/export",
    );
    assert_eq!(
        export["rejected_events"].as_array().map(Vec::len),
        Some(1),
        "{}",
        export["rejected_events"]
    );
    // WHEN the customer is erased
    let erased = reqwest::blocking::Client::new()
        .delete(format!(
            "{}/v1/programs/us-shop/members/woocommerce:55?reason=asked",
            server.base
        ))
        .bearer_auth(admin_token())
        .send()
        .expect("request");
    assert_eq!(erased.status().as_u16(), 200);
    // THEN the refused delivery went with them (before: kept, the email in its capitals and
    // the customer id as a number matched none of their names)
    assert_eq!(kept(&server), 0);
}

#[test]
fn a_refund_of_an_erased_member_s_order_delivered_again_is_left_out_not_parked() {
    // GIVEN a Shopify customer's paid order, then the customer erased
    let server = start();
    let paid = fixture("orders-paid.json", &days_ago(2));
    assert_eq!(
        shopify(&server, "orders/paid", &paid, SHOPIFY_SECRET, "p-1").0,
        200
    );
    eventually(&server, MEMBER, |v| v["pending"] == 1_000);
    let erased = reqwest::blocking::Client::new()
        .delete(format!(
            "{}/v1/programs/kr-shop/members/{MEMBER}?reason=asked",
            server.base
        ))
        .bearer_auth(admin_token())
        .send()
        .expect("request");
    assert_eq!(erased.status().as_u16(), 200);
    // WHEN a refund of that order, made before the erasure, is delivered (Shopify's refunds
    // name no customer; the order's link went with the member)
    let refund = fixture("refunds-create.json", &days_ago(1));
    let (status, answer) = shopify(&server, "refunds/create", &refund, SHOPIFY_SECRET, "r-1");
    // THEN it is acknowledged and left out (before: parked for an order no one has any more,
    // waiting for ever)
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["events"], serde_json::json!([]), "{answer}");
}
