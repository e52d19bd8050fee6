//! Spending points end to end, against `loyalty serve`: redemptions with idempotency keys,
//! concurrency, tier locks, reversals and coupons at the till.

mod common;

use common::{token, Server};
use serde_json::{json, Value};

const PROGRAM: &str = "/v1/programs/kr-shop";

struct Shop {
    server: Server,
    admin: String,
}

impl Shop {
    fn new() -> Shop {
        Shop {
            server: Server::start(&[]),
            admin: token(&["--admin"]),
        }
    }

    /// Gives `member` points by an operator's adjustment.
    fn credit(&self, member: &str, points: i64) {
        let body = json!({"points": points, "reason": "welcome gift"}).to_string();
        let (status, answer) = self.server.call(
            "POST",
            &format!("{PROGRAM}/members/{member}/adjustments"),
            &self.admin,
            &[],
            Some(&body),
        );
        assert_eq!(status, 201, "{answer}");
    }

    fn redeem(&self, member_token: &str, key: Option<&str>, body: &str) -> (u16, Value) {
        let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
        self.server.call(
            "POST",
            &format!("{PROGRAM}/me/redemptions"),
            member_token,
            &headers,
            Some(body),
        )
    }

    fn balance(&self, member: &str) -> i64 {
        let (status, view) = self.server.call(
            "GET",
            &format!("{PROGRAM}/members/{member}"),
            &self.admin,
            &[],
            None,
        );
        common::points_view(status, view)["balance"]
            .as_i64()
            .expect("balance")
    }

    /// Every stored ledger entry of a member, through the paged admin route.
    fn ledger(&self, member: &str) -> Vec<Value> {
        let mut entries = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("{PROGRAM}/members/{member}/ledger?limit=5&cursor={c}"),
                None => format!("{PROGRAM}/members/{member}/ledger?limit=5"),
            };
            let (status, page) = self.server.call("GET", &path, &self.admin, &[], None);
            assert_eq!(status, 200, "{page}");
            entries.extend(page["entries"].as_array().expect("entries").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return entries,
            }
        }
    }
}

fn is_problem(answer: &Value, name: &str) -> bool {
    answer["type"].as_str().is_some_and(|t| t.ends_with(name))
}

const COUPON: &str = r#"{"reward": "coupon-5000"}"#;

#[test]
fn two_coupons_fit_in_12000_points_and_a_third_does_not() {
    // GIVEN a member with 12,000 available points
    let shop = Shop::new();
    shop.credit("m-1", 12_000);
    let me = token(&["--member", "m-1"]);
    // WHEN they redeem coupon-5000 twice, with different keys
    let (s1, first) = shop.redeem(&me, Some("k-1"), COUPON);
    let (s2, second) = shop.redeem(&me, Some("k-2"), COUPON);
    // THEN both are issued, with distinct codes, and 2,000 points are left
    assert_eq!((s1, s2), (201, 201), "{first} {second}");
    assert_eq!(second["balance"], 2_000);
    assert_ne!(first["code"], second["code"]);
    assert_eq!(first["status"], "issued");
    // AND each is good until the last second of a day in Seoul (kr-shop's zone)
    assert!(
        first["expires_at"]
            .as_str()
            .is_some_and(|t| t.ends_with("T14:59:59Z")),
        "{first}"
    );
    // WHEN a third is asked for THEN 409 insufficient-points, and the balance stays 2,000
    let (s3, third) = shop.redeem(&me, Some("k-3"), COUPON);
    assert_eq!(s3, 409);
    assert!(is_problem(&third, "insufficient-points"), "{third}");
    assert_eq!(shop.balance("m-1"), 2_000);
    // AND the member can read their own redemption, but not someone else's
    let id = first["id"].as_str().unwrap();
    let (status, mine) = shop.server.call(
        "GET",
        &format!("{PROGRAM}/me/redemptions/{id}"),
        &me,
        &[],
        None,
    );
    assert_eq!(
        (status, mine["reward"].as_str()),
        (200, Some("coupon-5000"))
    );
    let other = token(&["--member", "m-2"]);
    let (status, _) = shop.server.call(
        "GET",
        &format!("{PROGRAM}/me/redemptions/{id}"),
        &other,
        &[],
        None,
    );
    assert_eq!(status, 404);
}

#[test]
fn an_idempotency_key_gives_one_debit_and_the_same_answer() {
    // GIVEN a member with 12,000 points
    let shop = Shop::new();
    shop.credit("m-1", 12_000);
    let me = token(&["--member", "m-1"]);
    // WHEN the same request with the same key is sent 5 times
    let answers: Vec<(u16, Value)> = (0..5)
        .map(|_| shop.redeem(&me, Some("same"), COUPON))
        .collect();
    // THEN the 5 answers are identical and there was one debit
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(answers[0].0, 201);
    assert_eq!(shop.balance("m-1"), 7_000);
    // WHEN the key is reused with another body THEN 422; without a key THEN 400
    let (status, problem) = shop.redeem(&me, Some("same"), r#"{"reward": "free-shipping"}"#);
    assert_eq!(status, 422, "{problem}");
    let (status, problem) = shop.redeem(&me, None, COUPON);
    assert_eq!(status, 400);
    assert!(
        is_problem(&problem, "idempotency-key-required"),
        "{problem}"
    );
    assert_eq!(shop.balance("m-1"), 7_000);
}

#[test]
fn a_key_sent_again_under_another_identity_of_the_member_or_after_a_merge_debits_once() {
    // GIVEN m-2 and m-3 with 12,000 points each, each signed in through an app identity
    let shop = Shop::new();
    for member in ["m-2", "m-3"] {
        shop.credit(member, 12_000);
        let body = json!({"kind": "app", "value": format!("auth0|{member}")}).to_string();
        let (status, linked) = shop.server.call(
            "POST",
            &format!("{PROGRAM}/members/{member}/aliases"),
            &shop.admin,
            &[],
            Some(&body),
        );
        assert_eq!(status, 201, "{linked}");
    }
    // WHEN m-2 redeems through its app identity, and the retry comes with its own id
    let first = shop.redeem(&token(&["--member", "auth0|m-2"]), Some("k-2"), COUPON);
    let again = shop.redeem(&token(&["--member", "m-2"]), Some("k-2"), COUPON);
    // THEN the retry gets the first answer and nothing more is taken (before: a second coupon)
    assert_eq!(first.0, 201, "{first:?}");
    assert_eq!(again, first);
    assert_eq!(shop.balance("m-2"), 7_000);
    // WHEN m-3 redeems through its app, is merged into m-2, and its app retries
    let app_3 = token(&["--member", "auth0|m-3"]);
    let before_merge = shop.redeem(&app_3, Some("k-3"), COUPON);
    assert_eq!(before_merge.0, 201, "{before_merge:?}");
    let body = json!({"from": "m-3", "reason": "same person"}).to_string();
    let (status, merged) = shop.server.call(
        "POST",
        &format!("{PROGRAM}/members/m-2/merge"),
        &shop.admin,
        &[],
        Some(&body),
    );
    assert_eq!(status, 200, "{merged}");
    let after_merge = shop.redeem(&app_3, Some("k-3"), COUPON);
    // THEN the retry gets the first answer, and the survivor holds both members' rest
    assert_eq!(after_merge, before_merge);
    assert_eq!(shop.balance("m-2"), 14_000);
}

#[test]
fn a_catalog_reward_takes_no_other_price_and_no_order() {
    // GIVEN a member with 12,000 points
    let shop = Shop::new();
    shop.credit("m-4", 12_000);
    let me = token(&["--member", "m-4"]);
    // WHEN the 5,000-point coupon is asked for at other prices, or for an order
    let refused = [
        r#"{"reward": "coupon-5000", "points": -5}"#,
        r#"{"reward": "coupon-5000", "points": 0}"#,
        r#"{"reward": "coupon-5000", "points": 4000}"#,
        r#"{"reward": "free-shipping", "order_ref": "a#b"}"#,
        r#"{"reward": "free-shipping", "order_ref": "o-1"}"#,
    ];
    for (i, body) in refused.iter().enumerate() {
        let (status, problem) = shop.redeem(&me, Some(&format!("bad-{i}")), body);
        // THEN each is refused, and nothing is taken (before: 201, the cost taken whatever
        // the points said)
        assert_eq!(status, 400, "{body}: {problem}");
        assert!(is_problem(&problem, "invalid-redemption"), "{problem}");
    }
    assert_eq!(shop.balance("m-4"), 12_000);
    // WHEN it is asked for at its cost THEN it is issued
    let (status, issued) = shop.redeem(
        &me,
        Some("good"),
        r#"{"reward": "coupon-5000", "points": 5000}"#,
    );
    assert_eq!(status, 201, "{issued}");
    assert_eq!(shop.balance("m-4"), 7_000);
}

#[test]
fn twenty_concurrent_redemptions_never_overspend() {
    // GIVEN a member with 12,000 points
    let shop = Shop::new();
    shop.credit("m-1", 12_000);
    let me = token(&["--member", "m-1"]);
    // WHEN 20 redemptions of coupon-5000 arrive at once, each with its own key
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (shop, me) = (&shop, &me);
                scope.spawn(move || shop.redeem(me, Some(&format!("race-{i}")), COUPON).0)
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    // THEN exactly 2 succeed and 18 are refused for insufficient points
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        18,
        "{statuses:?}"
    );
    // AND the balance is the sum of the ledger
    let sum: i64 = shop
        .ledger("m-1")
        .iter()
        .map(|e| e["points"].as_i64().unwrap())
        .sum();
    assert_eq!((shop.balance("m-1"), sum), (2_000, 2_000));
}

#[test]
fn tier_locks_and_reversals() {
    // GIVEN a WELCOME member with 12,000 points
    let shop = Shop::new();
    shop.credit("m-1", 12_000);
    let me = token(&["--member", "m-1"]);
    // WHEN they ask for the GOLD members' gift THEN 403 tier-locked, nothing written
    let (status, problem) = shop.redeem(&me, Some("g-1"), r#"{"reward": "gold-gift"}"#);
    assert_eq!(status, 403);
    assert!(is_problem(&problem, "tier-locked"), "{problem}");
    assert_eq!(shop.balance("m-1"), 12_000);
    // AND the catalog says so
    let (_, catalog) = shop
        .server
        .call("GET", &format!("{PROGRAM}/me/rewards"), &me, &[], None);
    let gift = catalog["rewards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "gold-gift")
        .cloned()
        .unwrap();
    assert_eq!(
        (gift["locked"].as_bool(), gift["affordable"].as_bool()),
        (Some(true), Some(true))
    );
    // AND each kind is spelt as the program file spells it (before: "freeproduct")
    let kinds: Vec<&str> = catalog["rewards"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"fixed_discount"), "{kinds:?}");
    assert!(
        kinds.iter().all(|k| k.contains('_') || *k == "donation"),
        "{kinds:?}"
    );
    // WHEN a coupon is redeemed and an operator reverses it
    let (_, issued) = shop.redeem(&me, Some("r-1"), COUPON);
    let id = issued["id"].as_str().unwrap();
    let reverse = format!("{PROGRAM}/members/m-1/redemptions/{id}/reverse");
    let body = r#"{"reason": "customer changed their mind"}"#;
    let (status, reversed) = shop
        .server
        .call("POST", &reverse, &shop.admin, &[], Some(body));
    // THEN the points are back, and the ledger shows both entries with their reasons
    assert_eq!(
        (status, reversed["balance"].as_i64()),
        (200, Some(12_000)),
        "{reversed}"
    );
    // AND /metrics counts them as redeemed and as returned
    let metrics = reqwest::blocking::get(format!("{}/metrics", shop.server.base))
        .and_then(|r| r.text())
        .unwrap();
    let total = |family: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(family) && l.contains("program=\"kr-shop\""))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    };
    assert_eq!(
        total("loyalty_points_returned_total"),
        total("loyalty_points_redeemed_total"),
        "{metrics}"
    );
    assert!(
        total("loyalty_points_returned_total").is_some(),
        "{metrics}"
    );
    let ledger = shop.ledger("m-1");
    let reason = |kind: &str| {
        ledger
            .iter()
            .find(|e| e["kind"] == kind)
            .map(|e| e["reason"].as_str().unwrap().to_string())
    };
    assert!(
        reason("redeem").unwrap().contains("5,000 won off")
            || reason("redeem").unwrap().contains("coupon"),
        "{ledger:?}"
    );
    assert!(
        reason("reverse")
            .unwrap()
            .contains("customer changed their mind"),
        "{ledger:?}"
    );
    // AND a second reversal is 409, and the reversed coupon can no longer be used
    let (status, _) = shop
        .server
        .call("POST", &reverse, &shop.admin, &[], Some(body));
    assert_eq!(status, 409);
    let code = issued["code"].as_str().unwrap();
    let (status, problem) = shop.server.call(
        "POST",
        &format!("{PROGRAM}/coupons/{code}/consume"),
        &shop.admin,
        &[],
        Some(r#"{"order_ref": "till-1"}"#),
    );
    assert_eq!(status, 409);
    assert!(is_problem(&problem, "coupon-revoked"), "{problem}");
}

#[test]
fn a_coupon_is_consumed_once() {
    // GIVEN an issued coupon
    let shop = Shop::new();
    shop.credit("m-1", 6_000);
    let me = token(&["--member", "m-1"]);
    let (_, issued) = shop.redeem(&me, Some("c-1"), COUPON);
    let code = issued["code"].as_str().unwrap();
    let coupon = format!("{PROGRAM}/coupons/{code}");
    // WHEN the till checks it THEN it is valid, for this member and reward
    let (status, view) = shop.server.call("GET", &coupon, &shop.admin, &[], None);
    assert_eq!(
        (status, view["valid"].as_bool()),
        (200, Some(true)),
        "{view}"
    );
    assert_eq!(view["member"], "m-1");
    // WHEN it is consumed for order A, retried for A, then tried for order B
    let consume = |order: &str| {
        shop.server.call(
            "POST",
            &format!("{coupon}/consume"),
            &shop.admin,
            &[],
            Some(&json!({"order_ref": order}).to_string()),
        )
    };
    assert_eq!(consume("A").0, 200);
    assert_eq!(consume("A").0, 200);
    let (status, problem) = consume("B");
    // THEN the second order is refused with 409, and the check shows it consumed
    assert_eq!(status, 409);
    assert!(is_problem(&problem, "coupon-consumed"), "{problem}");
    let (_, view) = shop.server.call("GET", &coupon, &shop.admin, &[], None);
    assert_eq!(
        (view["status"].as_str(), view["order_ref"].as_str()),
        (Some("consumed"), Some("A"))
    );
    // AND a member cannot check or consume coupons
    assert_eq!(shop.server.call("GET", &coupon, &me, &[], None).0, 403);
}

#[test]
fn the_ledger_pages_without_gaps_or_repeats_while_entries_are_added() {
    // GIVEN a member with 10 ledger entries
    let shop = Shop::new();
    for _ in 0..10 {
        shop.credit("m-1", 100);
    }
    let me = token(&["--member", "m-1"]);
    // WHEN the member pages through 3 at a time while new entries keep arriving
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("{PROGRAM}/me/ledger?limit=3&cursor={c}"),
            None => format!("{PROGRAM}/me/ledger?limit=3"),
        };
        let (status, page) = shop.server.call("GET", &path, &me, &[], None);
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string()),
        );
        shop.credit("m-1", 100);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    // THEN the 10 entries that were there are each seen exactly once
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "repeats in {seen:?}");
    assert_eq!(seen.len(), 10, "{seen:?}");
}

#[test]
fn a_pay_with_points_hold_not_captured_returns_its_points() {
    // GIVEN kr-shop with holds of one minute, and a member with 3,000 points
    let shop = Shop::new();
    let quick = include_str!("../../examples/kr-shop.toml")
        .replace("hold_minutes = 30", "hold_minutes = 1");
    assert_ne!(quick, include_str!("../../examples/kr-shop.toml"));
    let client = reqwest::blocking::Client::new();
    let put = client
        .put(format!("{}{PROGRAM}", shop.server.base))
        .bearer_auth(&shop.admin)
        .body(quick)
        .send()
        .expect("request");
    assert_eq!(put.status().as_u16(), 200);
    shop.credit("m-1", 3_000);
    let me = token(&["--member", "m-1"]);
    // WHEN 2,000 points are held for an order, and another hold is captured by the shop
    let hold = |key: &str, order: &str| {
        let body =
            json!({"reward": "pay-with-points", "points": 1000, "order_ref": order}).to_string();
        shop.redeem(&me, Some(key), &body)
    };
    let (status, first) = hold("h-1", "order-1");
    assert_eq!(
        (status, first["status"].as_str()),
        (201, Some("held")),
        "{first}"
    );
    let (_, second) = hold("h-2", "order-2");
    let captured = format!(
        "{PROGRAM}/redemptions/{}/capture",
        second["id"].as_str().unwrap()
    );
    assert_eq!(
        shop.server
            .call(
                "POST",
                &captured,
                &shop.admin,
                &[],
                Some(r#"{"order_ref": "order-2"}"#)
            )
            .0,
        200
    );
    assert_eq!(shop.balance("m-1"), 1_000);
    // THEN once the uncaptured hold expires its 1,000 points come back, and the captured stay spent
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while shop.balance("m-1") != 2_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the hold never returned its points"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let (_, view) = shop.server.call(
        "GET",
        &format!("{PROGRAM}/me/redemptions/{}", first["id"].as_str().unwrap()),
        &me,
        &[],
        None,
    );
    assert_eq!(view["status"], "voided");
}

const TOML: &[(&str, &str)] = &[("Content-Type", "application/toml")];

/// kr-shop with a donation reward (1 point gives 1 won to Seoul Forest, from 1,000 points) and
/// its points shown as cashback.
fn giving_program() -> String {
    format!(
        "{}\n[cashback]\nenabled = true\n\n[[rewards]]\nid = \"plant-trees\"\nname = \"Trees for Seoul\"\n\
         kind = \"donation\"\ncause = \"Seoul Forest\"\npoints_per_unit = 1\nmin_points = 1000\n",
        include_str!("../../examples/kr-shop.toml")
    )
}

#[test]
fn a_donation_is_debited_once_and_owed_to_its_cause_in_money() {
    // GIVEN kr-shop with a donation to Seoul Forest, and a member with 12,000 points
    let dir = std::env::temp_dir().join(format!("loyalty-donations-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let db = dir.join("loyalty.db");
    let shop = Shop {
        server: Server::start(&["--db", db.to_str().expect("utf-8 path")]),
        admin: token(&["--admin"]),
    };
    let (status, saved) =
        shop.server
            .call("PUT", PROGRAM, &shop.admin, TOML, Some(&giving_program()));
    assert_eq!(status, 200, "{saved}");
    shop.credit("m-1", 12_000);
    let member = token(&["--member", "m-1"]);
    // WHEN the member donates 5,000 points twice with the same Idempotency-Key
    let body = json!({"reward": "plant-trees", "points": 5000}).to_string();
    let first = shop.redeem(&member, Some("give-1"), &body);
    let again = shop.redeem(&member, Some("give-1"), &body);
    // THEN one debit, and the same answer naming the cause and the money
    assert_eq!(first.0, 201, "{}", first.1);
    assert_eq!(first, again);
    assert_eq!(
        (&first.1["status"], &first.1["cause"], &first.1["amount"]),
        (&json!("donated"), &json!("Seoul Forest"), &json!("5000"))
    );
    assert_eq!(shop.balance("m-1"), 7_000);
    let donated: Vec<Value> = shop
        .ledger("m-1")
        .into_iter()
        .filter(|e| e["kind"] == "redeem")
        .collect();
    assert_eq!(donated.len(), 1);
    assert_eq!(
        donated[0]["reason"],
        "Donated 5000 points to Seoul Forest (5000 KRW)"
    );
    // AND the donations report owes the cause 5,000 won this month, over HTTP and on the CLI
    let (status, report) = shop.server.call(
        "GET",
        &format!("{PROGRAM}/reports/donations"),
        &shop.admin,
        &[],
        None,
    );
    assert_eq!(status, 200, "{report}");
    // Seoul keeps one offset all year.
    let month = (chrono::Utc::now() + chrono::Duration::hours(9))
        .format("%Y-%m")
        .to_string();
    let expected = json!([{"month": month, "points": 5000, "amount": "5000",
        "causes": [{"cause": "Seoul Forest", "points": 5000, "amount": "5000"}]}]);
    assert_eq!(report["months"], expected, "{report}");
    let cli = std::process::Command::new(common::BIN)
        .args(["report", "donations", "--json", "--db"])
        .arg(&db)
        .output()
        .expect("loyalty runs");
    assert!(cli.status.success(), "{cli:?}");
    let printed: Value = serde_json::from_slice(&cli.stdout).expect("JSON");
    assert_eq!(printed["months"], expected);
    // AND finance's liability counts the donated points as redeemed
    let (_, liability) = shop.server.call(
        "GET",
        &format!("{PROGRAM}/reports/liability"),
        &shop.admin,
        &[],
        None,
    );
    let movements = liability["movements"].as_array().expect("movements");
    assert_eq!(movements.last().expect("a month")["redeemed"], 5000);
    // AND below the minimum, or not a whole amount of money, is refused with nothing written
    for points in [999, 0] {
        let body = json!({"reward": "plant-trees", "points": points}).to_string();
        let (status, problem) = shop.redeem(&member, Some(&format!("give-{points}")), &body);
        assert_eq!(status, 400, "{problem}");
    }
    assert_eq!(shop.balance("m-1"), 7_000);
    // AND a donation is final: an operator cannot reverse it
    let id = first.1["id"].as_str().expect("id");
    let (status, problem) = shop.server.call(
        "POST",
        &format!("{PROGRAM}/members/m-1/redemptions/{id}/reverse"),
        &shop.admin,
        &[],
        Some(&json!({"reason": "changed their mind"}).to_string()),
    );
    assert_eq!(status, 409, "{problem}");
    // AND with cashback on, the member view and the ledger say what the points are worth
    let (_, view) = shop
        .server
        .call("GET", &format!("{PROGRAM}/me"), &member, &[], None);
    assert_eq!(
        view["cashback"],
        json!({"currency": "KRW", "balance": "7000", "pending": "0"})
    );
    let entries = shop.ledger("m-1");
    assert!(entries
        .iter()
        .all(|e| e["value"] == json!(e["points"].as_i64().expect("points").to_string())));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_donation_refuses_a_fraction_of_money_and_cashback_needs_a_point_value() {
    // GIVEN a cause that takes 10 points for 1 won
    let shop = Shop::new();
    let program = giving_program().replace("points_per_unit = 1\n", "points_per_unit = 10\n");
    let (status, saved) = shop
        .server
        .call("PUT", PROGRAM, &shop.admin, TOML, Some(&program));
    assert_eq!(status, 200, "{saved}");
    shop.credit("m-2", 5_000);
    let member = token(&["--member", "m-2"]);
    // WHEN 1,005 points are given THEN 400 (100.5 won), and nothing is debited
    let body = json!({"reward": "plant-trees", "points": 1005}).to_string();
    let (status, problem) = shop.redeem(&member, Some("k-1"), &body);
    assert_eq!(status, 400, "{problem}");
    assert!(is_problem(&problem, "invalid-donation"), "{problem}");
    assert_eq!(shop.balance("m-2"), 5_000);
    // WHEN cashback is enabled without a point value THEN the program is refused by field
    let without = giving_program().replace("point_value = \"1\"", "");
    let (status, problem) = shop
        .server
        .call("PUT", PROGRAM, &shop.admin, TOML, Some(&without));
    assert_eq!(status, 400, "{problem}");
    assert_eq!(
        problem["errors"][0]["field"], "cashback.enabled",
        "{problem}"
    );
}
