//! A hostile client against `loyalty serve`: numbers at and beyond their limits, ids that break
//! their rule, requests the framework answers, and tokens of the wrong kind or just expired.
//! Every refusal is problem+json with a documented status, and nothing is written.

mod common;

use chrono::Utc;
use common::{token, Server, SECRET};
use loyalty_core::api::auth::{sign, Claims, ADMIN_SCOPE};
use loyalty_core::domain::limits::{MAX_AMOUNT, MAX_BALANCE, MAX_POINTS, MAX_QUANTITY};
use serde_json::{json, Value};

const PROGRAM: &str = "/v1/programs/kr-shop";

struct Client {
    server: Server,
    admin: String,
}

impl Client {
    fn new() -> Client {
        Client {
            server: Server::start(&[]),
            admin: token(&["--admin"]),
        }
    }

    fn adjust(&self, member: &str, points: i64) -> (u16, Value) {
        let body = json!({"points": points, "reason": "test"}).to_string();
        self.server.call(
            "POST",
            &format!("{PROGRAM}/members/{member}/adjustments"),
            &self.admin,
            &[],
            Some(&body),
        )
    }

    fn event(&self, event: &Value) -> (u16, Value) {
        self.server.call(
            "POST",
            &format!("{PROGRAM}/events"),
            &self.admin,
            &[],
            Some(&event.to_string()),
        )
    }

    fn view(&self, member: &str) -> Value {
        let (status, view) = self.server.call(
            "GET",
            &format!("{PROGRAM}/members/{member}"),
            &self.admin,
            &[],
            None,
        );
        common::points_view(status, view)
    }

    fn ledger_sum(&self, member: &str) -> (usize, i64) {
        let (status, page) = self.server.call(
            "GET",
            &format!("{PROGRAM}/members/{member}/ledger?limit=100"),
            &self.admin,
            &[],
            None,
        );
        assert_eq!(status, 200, "{page}");
        let entries = page["entries"].as_array().cloned().unwrap_or_default();
        let sum = entries.iter().filter_map(|e| e["points"].as_i64()).sum();
        (entries.len(), sum)
    }
}

fn purchase(id: &str, member: &str, quantity: i64, unit_price: &str) -> Value {
    json!({
        "type": "purchase.completed", "version": 1, "id": id, "program": "kr-shop",
        "member": member, "occurred_at": Utc::now().to_rfc3339(),
        "data": {"order_id": id, "currency": "KRW",
                 "lines": [{"line_id": "1", "quantity": quantity, "unit_price": unit_price}]}
    })
}

fn assert_problem(answer: &(u16, Value), status: u16, slug: &str, field: &str) {
    let (got, body) = answer;
    assert_eq!(*got, status, "{body}");
    assert!(
        body["type"].as_str().is_some_and(|t| t.ends_with(slug)),
        "{slug}: {body}"
    );
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains(field)),
        "{field}: {body}"
    );
}

#[test]
fn overflowing_numbers_are_refused_naming_the_field_and_write_nothing() {
    let client = Client::new();
    // GIVEN a member with a balance at the largest adjustment allowed
    assert_eq!(client.adjust("m-1", MAX_POINTS).0, 201);

    // WHEN adjustments of i64::MAX, i64::MIN and one past the limit are sent
    // THEN each is refused naming points, and the balance is unchanged
    for points in [i64::MAX, i64::MIN, MAX_POINTS + 1, -(MAX_POINTS + 1)] {
        assert_problem(
            &client.adjust("m-1", points),
            400,
            "invalid-adjustment",
            "points",
        );
    }
    // AND an adjustment of i64::MIN on an empty account is refused the same way
    assert_problem(
        &client.adjust("m-2", i64::MIN),
        400,
        "invalid-adjustment",
        "points",
    );

    // WHEN a purchase's unit price is i64::MAX, or a quantity is 2^32
    let huge_price = purchase("o-1", "m-1", 1, "9223372036854775807");
    let huge_quantity = purchase("o-2", "m-1", 4_294_967_296, "1000");
    let over_price = purchase("o-3", "m-1", 1, &(MAX_AMOUNT + 1).to_string());
    let line_over = purchase("o-4", "m-1", MAX_QUANTITY, &(MAX_AMOUNT / 10).to_string());
    // THEN each is refused naming the field
    assert_problem(
        &client.event(&huge_price),
        400,
        "invalid-event",
        "unit_price",
    );
    assert_problem(
        &client.event(&huge_quantity),
        400,
        "invalid-event",
        "quantity",
    );
    assert_problem(
        &client.event(&over_price),
        400,
        "invalid-event",
        "unit_price",
    );
    assert_problem(&client.event(&line_over), 400, "invalid-event", "lines[0]");

    // AND the member still has exactly the one adjustment, and balance == Σ ledger
    let view = client.view("m-1");
    assert_eq!(view["balance"], MAX_POINTS);
    assert_eq!(client.ledger_sum("m-1"), (1, MAX_POINTS));
}

#[test]
fn a_balance_stops_at_its_limit_and_still_equals_its_ledger() {
    let client = Client::new();
    // GIVEN a member credited up to the balance limit in the largest steps
    let steps = MAX_BALANCE / MAX_POINTS;
    for _ in 0..steps {
        assert_eq!(client.adjust("m-3", MAX_POINTS).0, 201);
    }
    // WHEN one more point is credited
    let answer = client.adjust("m-3", 1);
    // THEN it is refused naming the balance
    assert_problem(&answer, 400, "invalid-adjustment", "balance");
    // AND the balance is at the limit and equals the sum of its ledger
    let view = client.view("m-3");
    assert_eq!(view["balance"], MAX_BALANCE);
    let mut sum = 0i64;
    let mut cursor: Option<String> = None;
    loop {
        let query = cursor
            .as_ref()
            .map(|c| format!("&cursor={c}"))
            .unwrap_or_default();
        let (status, page) = client.server.call(
            "GET",
            &format!("{PROGRAM}/members/m-3/ledger?limit=100{query}"),
            &client.admin,
            &[],
            None,
        );
        assert_eq!(status, 200);
        for entry in page["entries"].as_array().expect("entries") {
            sum += entry["points"].as_i64().expect("points");
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(sum, MAX_BALANCE);
}

#[test]
fn a_bad_member_id_gets_the_same_problem_on_every_route() {
    let client = Client::new();
    let bad = "m-1%23x"; // m-1#x
    let long = "m".repeat(200);
    for member in [bad, long.as_str()] {
        // WHEN the member is named on the event route and on each admin path
        let mut event = purchase("o-9", "placeholder", 1, "1000");
        event["member"] = json!(if member == bad { "m-1#x" } else { member });
        let answers = [
            client.event(&event),
            client.adjust(member, 10),
            client.server.call(
                "GET",
                &format!("{PROGRAM}/members/{member}"),
                &client.admin,
                &[],
                None,
            ),
            client.server.call(
                "GET",
                &format!("{PROGRAM}/members/{member}/ledger"),
                &client.admin,
                &[],
                None,
            ),
            client.server.call(
                "POST",
                &format!("{PROGRAM}/members/{member}/redemptions/r-1/reverse"),
                &client.admin,
                &[],
                Some(r#"{"reason":"x"}"#),
            ),
        ];
        // THEN every answer is the same problem
        for answer in &answers {
            assert_problem(answer, 400, "invalid-member-id", "member");
        }
    }
    // AND a NUL in an event's member is refused the same way
    let mut event = purchase("o-10", "m-1", 1, "1000");
    event["member"] = json!("m\u{0}1");
    assert_problem(&client.event(&event), 400, "invalid-member-id", "member");
    // AND a 10,000-character campaign id is refused
    let campaign = "c".repeat(10_000);
    let answer = client.server.call(
        "PUT",
        &format!("{PROGRAM}/campaigns/{campaign}"),
        &client.admin,
        &[],
        Some("{}"),
    );
    assert_problem(&answer, 400, "invalid-campaign-id", "campaign");
}

#[test]
fn a_refused_identity_is_quoted_short_as_a_refused_id_is() {
    // GIVEN a member
    let client = Client::new();
    assert_eq!(client.adjust("m-al", 10).0, 201);
    // WHEN identities too long for the rule are linked to it, of each kind's check
    let long = format!("{} kim.minji@example.com", "x".repeat(200));
    for (kind, value) in [
        ("app", long.clone()),
        ("email", format!("{long} and more")),
        (&*"k".repeat(200), "v".to_string()),
    ] {
        let body = json!({"kind": kind, "value": value}).to_string();
        let (status, problem) = client.server.call(
            "POST",
            &format!("{PROGRAM}/members/m-al/aliases"),
            &client.admin,
            &[],
            Some(&body),
        );
        // THEN each is refused quoting at most the first 40 characters, as an id is (before:
        // the whole value, whatever its length)
        assert_eq!(status, 400, "{problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains('…'), "{detail}");
        assert!(detail.chars().count() < 200, "{detail}");
        assert!(!detail.contains("kim"), "{detail}");
    }
}

#[test]
fn fields_of_an_event_that_become_key_parts_keep_to_their_rules() {
    let client = Client::new();
    // GIVEN a purchase from a 2,000-character platform, one from a platform with the key
    // separator, a grant naming a campaign with it and one naming a 100-byte variant, and a
    // grant with a 10,000-character reason
    let mut long_platform = purchase("o-p1", "m-1", 1, "1000");
    long_platform["data"]["platform"] = json!("p".repeat(2_000));
    let mut hashed_platform = purchase("o-p2", "m-1", 1, "1000");
    hashed_platform["data"]["platform"] = json!("pos#O");
    let grant = |id: &str, data: Value| {
        json!({"type": "points.granted", "version": 1, "id": id, "program": "kr-shop",
               "member": "m-1", "occurred_at": Utc::now().to_rfc3339(), "data": data})
    };
    let campaign = grant(
        "g-1",
        json!({"points": 10, "campaign": "c#1", "variant": "a"}),
    );
    let variant = grant(
        "g-2",
        json!({"points": 10, "campaign": "c-1", "variant": "v".repeat(100)}),
    );
    let reason = grant("g-3", json!({"points": 10, "reason": "r".repeat(10_000)}));
    // WHEN each is submitted
    // THEN each is refused naming its field
    assert_problem(
        &client.event(&long_platform),
        400,
        "invalid-platform",
        "platform",
    );
    assert_problem(
        &client.event(&hashed_platform),
        400,
        "invalid-platform",
        "platform",
    );
    assert_problem(
        &client.event(&campaign),
        400,
        "invalid-campaign-id",
        "campaign",
    );
    assert_problem(&client.event(&variant), 400, "invalid-variant", "variant");
    assert_problem(&client.event(&reason), 400, "invalid-event", "reason");
    // AND a purchase from a platform that keeps to the rule is accepted
    let mut store = purchase("o-p3", "m-1", 1, "1000");
    store["data"]["platform"] = json!("pos-seoul-2");
    assert_eq!(client.event(&store).0, 202);
}

#[test]
fn names_an_event_gives_its_lines_and_refunds_are_bounded_at_the_door() {
    let client = Client::new();
    // GIVEN a refund whose refund_id is 1,000 bytes, one with the key separator in it, and a
    // purchase whose line id is 200 bytes
    let refund = |id: &str, refund_id: String| {
        json!({"type": "purchase.refunded", "version": 1, "id": id, "program": "kr-shop",
               "member": "m-1", "occurred_at": Utc::now().to_rfc3339(),
               "data": {"order_id": "o-t1", "refund_id": refund_id,
                        "lines": [{"line_id": "1", "quantity": 1}]}})
    };
    let long_refund = refund("r-t1", "r".repeat(1_000));
    let hashed_refund = refund("r-t2", "r#1".into());
    let mut long_line = purchase("o-t3", "m-1", 1, "1000");
    long_line["data"]["lines"][0]["line_id"] = json!("1".repeat(200));
    // WHEN each is submitted
    // THEN each is refused at the door naming its field (before: 202, and the order's record
    // grew by what it named, or the refund was rejected after it was queued)
    assert_problem(
        &client.event(&long_refund),
        400,
        "invalid-event",
        "refund_id",
    );
    assert_problem(
        &client.event(&hashed_refund),
        400,
        "invalid-event",
        "refund_id",
    );
    assert_problem(&client.event(&long_line), 400, "invalid-event", "line_id");
    // AND names within the bound are accepted, and a platform's long SKU (Shopify allows 255
    // characters) too
    let mut fine = purchase("o-t4", "m-1", 1, "1000");
    fine["data"]["lines"][0]["line_id"] = json!("1".repeat(128));
    fine["data"]["lines"][0]["sku"] = json!("S".repeat(255));
    assert_eq!(client.event(&fine).0, 202);
    assert_eq!(client.event(&refund("r-t3", "refund-1".into())).0, 202);
}

#[test]
fn a_malformed_idempotency_key_is_refused_not_ignored() {
    let client = Client::new();
    let body = json!({"points": 10, "reason": "test"}).to_string();
    // WHEN an adjustment is sent twice with the key "clé" (raw UTF-8 bytes in the header)
    for _ in 0..2 {
        let response = reqwest::blocking::Client::new()
            .post(format!(
                "{}{PROGRAM}/members/m-5/adjustments",
                client.server.base
            ))
            .bearer_auth(&client.admin)
            .header(
                "Idempotency-Key",
                reqwest::header::HeaderValue::from_bytes("clé".as_bytes()).expect("bytes"),
            )
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
            .expect("request");
        // THEN each is refused, naming the header
        assert_eq!(response.status(), 400);
        let problem: Value = response.json().expect("json");
        assert!(problem["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("invalid-idempotency-key")));
    }
    // AND nothing was credited
    assert_eq!(client.view("m-5")["balance"], 0);
}

#[test]
fn an_idempotency_key_sent_twice_in_one_request_is_refused() {
    let client = Client::new();
    let body = json!({"points": 10, "reason": "test"}).to_string();
    // WHEN an adjustment carries two Idempotency-Key headers
    let response = reqwest::blocking::Client::new()
        .post(format!(
            "{}{PROGRAM}/members/m-6/adjustments",
            client.server.base
        ))
        .bearer_auth(&client.admin)
        .header("Idempotency-Key", "z1")
        .header("Idempotency-Key", "z2")
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .expect("request");
    // THEN it is refused (before: the first was used, and a proxy keeping the second would
    // have made a retry another adjustment), and nothing is credited
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().expect("json");
    assert!(
        problem["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("invalid-idempotency-key")),
        "{problem}"
    );
    assert_eq!(client.view("m-6")["balance"], 0);
}

#[test]
fn an_admin_token_whose_subject_breaks_the_id_rule_acts_for_no_one() {
    let client = Client::new();
    let body = json!({"points": 10, "reason": "test"}).to_string();
    for operator in ["a#b", " lead-2"] {
        // WHEN an adjustment is made with an admin token naming that operator
        let admin = token(&["--admin", "--operator", operator]);
        let response = reqwest::blocking::Client::new()
            .post(format!(
                "{}{PROGRAM}/members/m-7/adjustments",
                client.server.base
            ))
            .bearer_auth(&admin)
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
            .expect("request");
        // THEN it is refused (before: 201, the ledger naming the operator "a#b", a key
        // separator in the operator's daily count), and nothing is credited
        assert_eq!(response.status(), 400, "{operator:?}");
        let problem: Value = response.json().expect("json");
        assert!(
            problem["type"]
                .as_str()
                .is_some_and(|t| t.ends_with("invalid-operator")),
            "{problem}"
        );
    }
    assert_eq!(client.view("m-7")["balance"], 0);
}

/// The raw response of a request, for what the framework answers.
fn raw(
    base: &str,
    method: &str,
    path: &str,
    auth: &str,
    body: Vec<u8>,
) -> reqwest::blocking::Response {
    reqwest::blocking::Client::new()
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
            format!("{base}{path}"),
        )
        .bearer_auth(auth)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .expect("request")
}

#[test]
fn framework_errors_are_problems_with_documented_statuses() {
    let client = Client::new();
    let base = &client.server.base;
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("DELETE", PROGRAM, Vec::new(), 405, "method-not-allowed"),
        (
            "GET",
            "/v1/programs/%FF/members/m-1",
            Vec::new(),
            400,
            "bad-request",
        ),
        (
            "GET",
            "/v1/programs/kr-shop/members/m-1/ledger?limit=1&limit=2",
            Vec::new(),
            400,
            "bad-request",
        ),
        ("GET", "/v1/nothing-here", Vec::new(), 404, "not-found"),
        // a '%' that starts no escape (before: looked for as a member named "%ZZ", 404)
        (
            "GET",
            "/v1/programs/kr-shop/members/%ZZ",
            Vec::new(),
            400,
            "bad-request",
        ),
        (
            "GET",
            "/v1/programs/kr-shop/members/m-1%",
            Vec::new(),
            400,
            "bad-request",
        ),
        // the console's and the metrics' routes, mounted beside the API's
        ("POST", "/metrics", Vec::new(), 405, "method-not-allowed"),
        ("DELETE", "/console/", Vec::new(), 405, "method-not-allowed"),
        ("GET", "/console/%FF", Vec::new(), 400, "bad-request"),
    ];
    for (method, path, body, status, slug) in cases {
        // WHEN the request is sent
        let response = raw(base, method, path, &client.admin, body);
        // THEN it is problem+json with its status and type
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{method} {path}"
        );
        if (method, path) == ("DELETE", PROGRAM) {
            assert_eq!(response.headers()["allow"], "GET,HEAD,PUT");
        }
        let problem: Value = response.json().expect("json");
        assert!(
            problem["type"].as_str().is_some_and(|t| t.ends_with(slug)),
            "{problem}"
        );
        assert_eq!(problem["status"], status);
    }
}

#[test]
fn a_ten_megabyte_body_is_refused_before_it_is_read() {
    use std::io::{Read, Write};
    let client = Client::new();
    let address = client.server.base.trim_start_matches("http://").to_string();
    // WHEN a request declares a 10 MB body (and sends its first kilobyte)
    let mut stream = std::net::TcpStream::connect(&address).expect("connect");
    let head = format!(
        "POST {PROGRAM}/events HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        client.admin,
        10 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).expect("head");
    let _ = stream.write_all(&[b' '; 1024]);
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    // THEN the answer is 413 problem+json naming the limit
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{answer}"
    );
    assert!(answer.contains("payload-too-large"), "{answer}");
    assert!(answer.contains("262144"), "{answer}");
}

fn signed(sub: &str, scope: &str, expires_in: i64) -> String {
    let claims = Claims {
        sub: sub.into(),
        scope: scope.into(),
        exp: Utc::now().timestamp() + expires_in,
        program: None,
        nbf: None,
        iat: None,
    };
    sign(SECRET.as_bytes(), &claims).expect("signed")
}

#[test]
fn member_routes_need_a_member_token_that_has_not_expired() {
    let client = Client::new();
    // WHEN an admin token calls GET /me THEN it is forbidden
    let (status, problem) =
        client
            .server
            .call("GET", &format!("{PROGRAM}/me"), &client.admin, &[], None);
    assert_eq!(status, 403, "{problem}");
    let admin = signed("ops", ADMIN_SCOPE, 3600);
    assert_eq!(
        client
            .server
            .call("GET", &format!("{PROGRAM}/me"), &admin, &[], None)
            .0,
        403
    );
    // WHEN a member token that expired ten seconds ago is used THEN it is unauthorized
    let expired = signed("m-1", "", -10);
    let (status, problem) =
        client
            .server
            .call("GET", &format!("{PROGRAM}/me"), &expired, &[], None);
    assert_eq!(status, 401, "{problem}");
    // WHEN a member token valid only from ten minutes from now is used THEN it is unauthorized
    let ahead = Claims {
        nbf: Some(Utc::now().timestamp() + 600),
        ..Claims {
            sub: "m-1".into(),
            scope: String::new(),
            exp: Utc::now().timestamp() + 3600,
            program: None,
            nbf: None,
            iat: None,
        }
    };
    let ahead = sign(SECRET.as_bytes(), &ahead).expect("signed");
    let (status, problem) = client
        .server
        .call("GET", &format!("{PROGRAM}/me"), &ahead, &[], None);
    assert_eq!(status, 401, "{problem}");
    // AND a valid member token is served
    let fresh = signed("m-1", "", 60);
    assert_eq!(
        client
            .server
            .call("GET", &format!("{PROGRAM}/me"), &fresh, &[], None)
            .0,
        200
    );
}

#[test]
fn an_app_token_issued_before_its_member_was_erased_writes_nothing_of_them_again() {
    let client = Client::new();
    // GIVEN a member with points, the app signed in as them (`loyalty token`: issued now)
    assert_eq!(client.adjust("m-gone", 100).0, 201);
    let old = token(&["--member", "m-gone"]);
    // AND the member erased at their request
    let (status, answer) = client.server.call(
        "DELETE",
        &format!("{PROGRAM}/members/m-gone?reason=asked%20to%20be%20forgotten"),
        &client.admin,
        &[],
        None,
    );
    assert_eq!(status, 200, "{answer}");
    // WHEN the app saves a birthday with the token it still holds
    let birthday = Some(r#"{"birthday": "05-17"}"#);
    let profile = |token: &str| {
        let path = format!("{PROGRAM}/me/profile");
        client.server.call("PATCH", &path, token, &[], birthday)
    };
    // THEN it is refused (before: a new account of the erased name, the birthday in it)
    assert_problem(&profile(&old), 401, "token-before-erasure", "sign in again");
    assert_eq!(client.view("m-gone")["account"], false);
    // AND the person signing in again after the erasure comes back as a new member
    let later = Claims {
        iat: Some(Utc::now().timestamp() + 2),
        ..loyalty_core::api::auth::claims("m-gone", &[], None, 1)
    };
    let later = sign(SECRET.as_bytes(), &later).expect("signed");
    let (status, answer) = profile(&later);
    assert_eq!((status, answer["birthday"].as_str()), (200, Some("05-17")));
}

#[test]
fn a_field_given_twice_is_refused_on_adjustments_as_in_events() {
    let client = Client::new();
    // WHEN an adjustment names points twice
    let answer = client.server.call(
        "POST",
        &format!("{PROGRAM}/members/m-6/adjustments"),
        &client.admin,
        &[],
        Some(r#"{"points": 10, "points": 1000000, "reason": "twice"}"#),
    );
    // THEN it is refused, naming the field, and nothing is credited
    assert_problem(&answer, 400, "invalid-adjustment", "points");
    assert_eq!(client.view("m-6")["balance"], 0);
    // AND a body that is an array, not an object, is refused too
    let answer = client.server.call(
        "POST",
        &format!("{PROGRAM}/members/m-6/adjustments"),
        &client.admin,
        &[],
        Some(r#"[10, "as an array"]"#),
    );
    assert_problem(&answer, 400, "invalid-adjustment", "object");
    // AND an event naming a key twice inside its data is refused (before: the last was taken,
    // quantity 1 of a line sent as 1,000,001 and 1), and nothing is queued
    let text = purchase("o-dup", "m-6", 1, "1000")
        .to_string()
        .replace(r#""quantity":1"#, r#""quantity":1000001,"quantity":1"#);
    assert!(text.contains("1000001"), "{text}");
    let answer = client.server.call(
        "POST",
        &format!("{PROGRAM}/events"),
        &client.admin,
        &[],
        Some(&text),
    );
    assert_problem(&answer, 400, "malformed-event", "quantity");
    assert_eq!(client.view("m-6")["pending"], 0);
}

#[test]
fn a_program_file_is_read_as_json_whatever_the_case_of_its_media_type_and_keeps_its_version() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hostile-program-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let db = dir.join("loyalty.db");
    let db = db.to_str().expect("utf-8 path");
    let admin = token(&["--admin"]);
    let file = {
        let server = Server::start(&["--db", db]);
        let (status, current) = server.call("GET", PROGRAM, &admin, &[], None);
        assert_eq!(status, 200, "{current}");
        // WHEN the file is saved back as "Application/JSON"
        let mut file = current["file"].clone();
        file.as_object_mut().expect("object").remove("version");
        let response = reqwest::blocking::Client::new()
            .put(format!("{}{PROGRAM}", server.base))
            .bearer_auth(&admin)
            .header("Content-Type", "Application/JSON; charset=utf-8")
            .body(file.to_string())
            .send()
            .expect("request");
        // THEN it is read as JSON and saved as the next version
        assert_eq!(response.status(), 200);
        let saved: Value = response.json().expect("json");
        assert_eq!(
            saved["version"],
            current["version"].as_i64().expect("v") + 1
        );
        saved
    };
    // AND a server that reads it from the store (no cache) gives its version in the file too
    let server = Server::start(&["--db", db]);
    let (status, current) = server.call("GET", PROGRAM, &admin, &[], None);
    assert_eq!(status, 200);
    assert_eq!(current["version"], file["version"]);
    assert_eq!(current["file"]["version"], file["version"]);
    // AND a media type that is neither TOML nor JSON is 415
    let response = reqwest::blocking::Client::new()
        .put(format!("{}{PROGRAM}", server.base))
        .bearer_auth(&admin)
        .header("Content-Type", "application/xml")
        .body("<program/>")
        .send()
        .expect("request");
    assert_eq!(response.status(), 415);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}

#[test]
fn dates_in_queries_have_four_digit_years_so_no_report_runs_off_the_calendar() {
    // GIVEN a running server
    let client = Client::new();
    let get = |query: &str| {
        client.server.call(
            "GET",
            &format!("{PROGRAM}/reports/{query}"),
            &client.admin,
            &[],
            None,
        )
    };
    // WHEN reports are asked for dates that chrono reads but whose neighbours do not exist
    for query in [
        "kpis?to=-262143-01-01",
        "kpis?from=%2B262142-12-31&to=%2B262142-12-31",
        "kpis?from=2026-1-01",
        "liability?as_of=%2B10000-01-01",
    ] {
        // THEN each is 400 invalid-date naming the parameter
        let field = query.split(['?', '=']).nth(1).unwrap_or_default();
        assert_problem(&get(query), 400, "invalid-date", field);
    }
    // AND the server is still up, and a plain date is fine
    let (status, kpis) = get("kpis?from=2026-01-01&to=2026-01-31");
    assert_eq!(status, 200, "{kpis}");
}

#[test]
fn a_table_command_refuses_an_environment_that_would_reach_the_wrong_place() {
    // GIVEN an operator's command on a table, with an empty table name, a mistyped endpoint,
    // or no region
    /// The table, variables set, variables unset, and what the refusal says.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let cases: [Case; 3] = [
        ("", &[("AWS_REGION", "us-east-1")], &[], "--table needs"),
        (
            "loyalty",
            &[("AWS_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", "notaurl")],
            &[],
            "AWS_ENDPOINT_URL \"notaurl\"",
        ),
        (
            "loyalty",
            &[("AWS_ENDPOINT_URL", "http://127.0.0.1:9")],
            &["AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"],
            "no AWS region",
        ),
    ];
    for (table, set, unset, said) in cases {
        // WHEN it runs
        let mut command = std::process::Command::new(common::BIN);
        command
            .args(["report", "liability", "--table", table])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("HOME", std::env::temp_dir());
        command.envs(set.iter().copied());
        for name in unset {
            command.env_remove(name);
        }
        let out = command.output().expect("loyalty runs");
        // THEN it stops before any request, saying why (before: a warning, then a request to
        // AWS itself, or "cannot list programs: error")
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(said), "{said}: {stderr}");
    }
}
