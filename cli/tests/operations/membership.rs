//! A paid membership end to end, against `loyalty serve`: bought with a Shopify order of its
//! SKU or a `membership.paid` event, its multiplier with the tier's under one floor, rewards
//! only members may redeem, the monthly reward once per month however the job runs, renewal,
//! lapse after the grace days and the end of it when its payment is refunded.

use chrono::{Duration, Months, NaiveDate, SecondsFormat, Utc};
use serde_json::{json, Value};

use super::{common, Shop, P};

/// kr-shop with "KR Shop Plus": 4,900 won a month, 7 days of grace, points x1.5, a free
/// shipping coupon every month, early access to sales, and a members-only gift.
fn plus_program() -> String {
    format!(
        "{}\n[membership]\nid = \"plus\"\nname = \"KR Shop Plus\"\nprice = \"4900\"\n\
         period_months = 1\ngrace_days = 7\nsku = \"PLUS-MONTH\"\nmultiplier_bp = 15000\n\
         monthly_reward = \"free-shipping\"\nearly_access = [\"sale-preview\"]\n\n\
         [[rewards]]\nid = \"members-gift\"\nname = \"Members' gift\"\nkind = \"free_product\"\n\
         sku = \"GIFT-1\"\ncost = 1000\nmembers_only = true\n",
        include_str!("../../../examples/kr-shop.toml")
    )
}

fn plus_shop(name: &str) -> Shop {
    let shop = Shop::start(name);
    let (status, saved) = shop.server.call(
        "PUT",
        P,
        &shop.admin,
        &[("Content-Type", "application/toml")],
        Some(&plus_program()),
    );
    assert_eq!(status, 200, "{saved}");
    shop
}

fn at(days_ago: i64) -> String {
    (Utc::now() - Duration::days(days_ago)).to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn event(shop: &Shop, body: Value) {
    let (status, answer) = shop.call("POST", &format!("{P}/events"), Some(body));
    assert_eq!(status, 202, "{answer}");
}

fn paid(shop: &Shop, id: &str, member: &str, periods: i64, days_ago: i64) {
    event(
        shop,
        json!({"type": "membership.paid", "version": 1, "id": id, "program": "kr-shop",
               "member": member, "occurred_at": at(days_ago),
               "data": {"order_id": id, "currency": "KRW",
                        "amount": (4900 * periods).to_string(), "periods": periods}}),
    );
}

fn purchase(shop: &Shop, id: &str, member: &str, amount: &str) {
    event(
        shop,
        json!({"type": "purchase.completed", "version": 1, "id": id, "program": "kr-shop",
               "member": member, "occurred_at": at(0),
               "data": {"order_id": id, "currency": "KRW",
                        "lines": [{"line_id": "1", "sku": "TEE", "quantity": 1, "unit_price": amount}]}}),
    );
}

/// `loyalty jobs run notices` as of `date` (perhaps after today), which must leave no member failed; what it printed.
fn jobs(shop: &Shop, date: NaiveDate) -> String {
    let date = date.to_string();
    let out = shop.loyalty(&["jobs", "run", "notices", "--date", &date, "--ahead"]);
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !printed.contains("failed:"),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    printed
}

fn day(value: &Value) -> NaiveDate {
    value.as_str().expect("a date").parse().expect("a date")
}

fn today_in_seoul() -> NaiveDate {
    (Utc::now() + Duration::hours(9)).date_naive()
}

#[test]
fn a_shopify_order_of_the_membership_sku_starts_it_and_its_multiplier_joins_the_tiers() {
    // GIVEN kr-shop with the Plus membership
    let shop = plus_shop("membership-buy");
    // WHEN a Shopify order pays for it: its tee line carries the membership's SKU (2 months)
    let body = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/shopify/orders-paid.json"),
    )
    .expect("fixture")
    .replace("__OCCURRED_AT__", &at(0))
    .replace("TEE-BLK-M", "PLUS-MONTH");
    shop.shopify_delivery(&body);
    // THEN the member view shows it active, paid for two months, with its renewal date
    let member = "shopify:7001234";
    let view = shop.eventually(member, |v| v["membership"]["status"] == "active");
    let membership = &view["membership"];
    let started = day(&membership["started_on"]);
    assert_eq!(started, today_in_seoul());
    assert_eq!(
        day(&membership["renews_on"]),
        started.checked_add_months(Months::new(2)).expect("date")
    );
    assert_eq!(membership["early_access"], json!(["sale-preview"]));
    // AND the fee earned nothing: the order's other lines earned, at x1.5
    let ledger = shop.get(&format!("{P}/members/{member}/ledger"));
    let entry = &ledger["entries"][0];
    assert!(
        entry["reason"]
            .as_str()
            .expect("reason")
            .contains("with KR Shop Plus (x1.50); KR Shop Plus paid through"),
        "{entry}"
    );
    let before = view["pending"].as_i64().expect("pending");
    let saved = view["membership"]["saved"]["points"]
        .as_i64()
        .expect("saved");
    // WHEN the member's next purchase comes: 12,345 won, 123.45 points at x1 (WELCOME)
    purchase(&shop, "o-next", member, "12345");
    // THEN it earns 123.45 x 1.0 x 1.5 = 185.175, floored once: 185 (not floor(123) x 1.5 = 184)
    let view = shop.eventually(member, |v| v["pending"].as_i64() != Some(before));
    assert_eq!(view["pending"].as_i64(), Some(before + 185), "{view}");
    // AND the view counts what the membership added: 185 - 123
    assert_eq!(
        view["membership"]["saved"]["points"].as_i64(),
        Some(saved + 62),
        "{view}"
    );
    // AND a members-only reward is refused to a non-member and granted to the member
    for who in [member, "m-not-plus"] {
        let (status, _) = shop.call(
            "POST",
            &format!("{P}/members/{who}/adjustments"),
            Some(json!({"points": 2000, "reason": "gift"})),
        );
        assert_eq!(status, 201);
    }
    let redeem = |who: &str| {
        shop.server.call(
            "POST",
            &format!("{P}/me/redemptions"),
            &common::token(&["--member", who]),
            &[("Idempotency-Key", "gift-1")],
            Some(&json!({"reward": "members-gift"}).to_string()),
        )
    };
    let (status, refused) = redeem("m-not-plus");
    assert_eq!(status, 403, "{refused}");
    assert!(refused["type"]
        .as_str()
        .expect("type")
        .ends_with("members-only"));
    let (status, granted) = redeem(member);
    assert_eq!(status, 201, "{granted}");
}

#[test]
fn without_renewal_a_membership_lapses_a_renewal_extends_it_and_a_refund_ends_it() {
    // GIVEN three members who paid for one month today
    let shop = plus_shop("membership-lapse");
    for member in ["m-lapse", "m-renew", "m-refund"] {
        paid(&shop, &format!("pay-{member}"), member, 1, 0);
    }
    let first = shop.eventually("m-refund", |v| v["membership"]["status"] == "active");
    let paid_through = day(&first["membership"]["paid_through"]);
    assert_eq!(
        paid_through,
        today_in_seoul()
            .checked_add_months(Months::new(1))
            .and_then(|d| d.pred_opt())
            .expect("date")
    );
    // WHEN one renews before the period ends
    paid(&shop, "pay-m-renew-2", "m-renew", 1, 0);
    // THEN it is extended by one period
    let renewed = shop.eventually("m-renew", |v| {
        v["membership"]["paid_through"] != first["membership"]["paid_through"]
    });
    assert_eq!(
        day(&renewed["membership"]["renews_on"]),
        today_in_seoul()
            .checked_add_months(Months::new(2))
            .expect("date")
    );
    // WHEN another's payment is refunded
    event(
        &shop,
        json!({"type": "purchase.refunded", "version": 1, "id": "refund-plus", "program": "kr-shop",
               "member": "m-refund", "occurred_at": at(0),
               "data": {"order_id": "pay-m-refund", "refund_id": "r-1",
                        "lines": [{"line_id": "membership", "quantity": 1}]}}),
    );
    // THEN it ends at once, and the ledger says why
    let ended = shop.eventually("m-refund", |v| v["membership"]["status"] == "ended");
    assert_eq!(day(&ended["membership"]["ended_on"]), today_in_seoul());
    let ledger = shop.get(&format!("{P}/members/m-refund/ledger"));
    assert!(ledger["entries"][0]["reason"]
        .as_str()
        .expect("reason")
        .starts_with("KR Shop Plus ended on"));
    // WHEN the jobs run on the last day of grace THEN nothing lapses
    let grace_end = paid_through + Duration::days(7);
    let run = |date: NaiveDate| jobs(&shop, date);
    let last_day = run(grace_end);
    assert!(last_day.contains(" 0 notices"), "{last_day}");
    assert_eq!(shop.member("m-lapse")["membership"]["status"], "active");
    // WHEN they run the day after THEN the unrenewed membership's lapse is written, with its
    // notice, and the renewed one's not (the view, as of today, still shows the days paid for)
    let day_after = run(grace_end + Duration::days(1));
    assert!(day_after.contains(" 1 notices"), "{day_after}");
    let lapsed = shop.member("m-lapse");
    assert_eq!(lapsed["membership"]["status"], "active", "{lapsed}");
    assert_eq!(
        day(&lapsed["membership"]["lapses_on"]),
        grace_end + Duration::days(1)
    );
    assert_eq!(shop.member("m-renew")["membership"]["status"], "active");
}

#[test]
fn a_refund_of_some_periods_shortens_the_membership_and_no_order_buys_more_than_it_may() {
    // GIVEN a member who paid for a year today
    let shop = plus_shop("membership-part-refund");
    paid(&shop, "pay-year", "m-year", 12, 0);
    let year = shop.eventually("m-year", |v| v["membership"]["status"] == "active");
    let months = |n: u32| {
        today_in_seoul()
            .checked_add_months(Months::new(n))
            .and_then(|d| d.pred_opt())
            .expect("date")
    };
    assert_eq!(day(&year["membership"]["paid_through"]), months(12));
    // WHEN one of the twelve periods is refunded
    event(
        &shop,
        json!({"type": "purchase.refunded", "version": 1, "id": "refund-one", "program": "kr-shop",
               "member": "m-year", "occurred_at": at(0),
               "data": {"order_id": "pay-year", "refund_id": "r-1",
                        "lines": [{"line_id": "membership", "quantity": 1}]}}),
    );
    // THEN eleven are left: still active, paid through a month less, and the ledger says so
    let shorter = shop.eventually("m-year", |v| {
        v["membership"]["paid_through"] != year["membership"]["paid_through"]
    });
    assert_eq!(shorter["membership"]["status"], "active", "{shorter}");
    assert_eq!(day(&shorter["membership"]["paid_through"]), months(11));
    let ledger = shop.get(&format!("{P}/members/m-year/ledger"));
    assert!(ledger["entries"][0]["reason"]
        .as_str()
        .expect("reason")
        .starts_with("KR Shop Plus paid through"));
    // WHEN an order's membership lines buy 121 periods THEN it is refused, nothing cut
    let (status, problem) = shop.call(
        "POST",
        &format!("{P}/events"),
        Some(json!({"type": "purchase.completed", "version": 1, "id": "o-121", "program": "kr-shop",
               "member": "m-many", "occurred_at": at(0),
               "data": {"order_id": "o-121", "currency": "KRW",
                        "lines": [{"line_id": "1", "sku": "PLUS-MONTH", "quantity": 100, "unit_price": "4900"},
                                  {"line_id": "2", "sku": "PLUS-MONTH", "quantity": 21, "unit_price": "4900"}]}})),
    );
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap_or("").contains("121"),
        "{problem}"
    );
}

#[test]
fn the_monthly_reward_is_granted_once_per_month_when_the_job_runs_late_or_twice() {
    // GIVEN a member who paid for three months today
    let shop = plus_shop("membership-grants");
    paid(&shop, "pay-3", "m-grants", 3, 0);
    shop.eventually("m-grants", |v| v["membership"]["status"] == "active");
    let start = today_in_seoul();
    let coupons = || {
        let export = shop.get(&format!("{P}/members/m-grants/export"));
        export["redemptions"]
            .as_array()
            .expect("redemptions")
            .iter()
            .filter(|r| r["reward"] == "free-shipping" && r["points"] == 0)
            .count()
    };
    let run = |date: NaiveDate| jobs(&shop, date);
    // WHEN the job runs on the first day THEN the first month's coupon is granted
    run(start);
    assert_eq!(coupons(), 1);
    // WHEN it next runs two months late, and then again on the same day
    let late = start.checked_add_months(Months::new(2)).expect("date") + Duration::days(3);
    run(late);
    run(late);
    // THEN each of the three months has its coupon, once; the view counts them
    assert_eq!(coupons(), 3);
    let view = shop.member("m-grants");
    assert_eq!(view["membership"]["saved"]["rewards"], 3, "{view}");
    // AND past the paid months no more are granted
    run(start.checked_add_months(Months::new(5)).expect("date"));
    assert_eq!(coupons(), 3);
    assert_eq!(shop.member("m-grants")["balance"], 0);
    // AND the audit finds each grant's entry caused by its redemption
    let audit = shop.loyalty(&["audit", "--json"]);
    let report: Value = serde_json::from_slice(&audit.stdout).expect("json");
    assert_eq!(report["violations"], json!([]), "{report}");
    assert!(audit.status.success());
}

#[test]
fn a_member_granted_a_coupon_and_reminded_in_one_run_counts_once() {
    // GIVEN a member who paid for one month today, whose first month's coupon is not granted
    let shop = plus_shop("membership-one-count");
    paid(&shop, "pay-once", "m-once", 1, 0);
    shop.eventually("m-once", |v| v["membership"]["status"] == "active");
    // WHEN the notices job first runs 25 days later: the coupon and the renewal reminder
    let printed = jobs(&shop, today_in_seoul() + Duration::days(25));
    // THEN the member counts once among those changed (before: twice), with its coupon's entry
    // and its reminder
    assert!(
        printed.contains(": 1 members read, 1 changed, 1 ledger entries, 1 notices"),
        "{printed}"
    );
}

#[test]
fn an_operator_withdraws_a_monthly_coupon_and_the_till_refuses_it() {
    // GIVEN a member whose first month's coupon was granted (a reward of no points)
    let shop = plus_shop("membership-withdraw");
    paid(&shop, "pay-w", "m-withdraw", 1, 0);
    shop.eventually("m-withdraw", |v| v["membership"]["status"] == "active");
    jobs(&shop, today_in_seoul());
    let export = shop.get(&format!("{P}/members/m-withdraw/export"));
    let coupon = export["redemptions"]
        .as_array()
        .expect("redemptions")
        .iter()
        .find(|r| r["reward"] == "free-shipping")
        .cloned()
        .expect("the month's coupon");
    let (id, code) = (
        coupon["id"].as_str().unwrap(),
        coupon["code"].as_str().unwrap(),
    );
    // WHEN an operator reverses it (a chargeback of the month)
    let (status, reversed) = shop.call(
        "POST",
        &format!("{P}/members/m-withdraw/redemptions/{id}/reverse"),
        Some(json!({"reason": "chargeback"})),
    );
    // THEN it is reversed, the balance untouched
    assert_eq!(
        (
            status,
            reversed["status"].as_str(),
            reversed["balance"].as_i64()
        ),
        (200, Some("reversed"), Some(0)),
        "{reversed}"
    );
    // AND the till can no longer use the coupon
    let (status, problem) = shop.call(
        "POST",
        &format!("{P}/coupons/{code}/consume"),
        Some(json!({"order_ref": "till-1"})),
    );
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("coupon-revoked"),
        "{problem}"
    );
    // AND the books still agree with the ledger
    let audit = shop.loyalty(&["audit", "--json"]);
    let report: Value = serde_json::from_slice(&audit.stdout).expect("json");
    assert_eq!(report["violations"], json!([]), "{report}");
}

fn refund(shop: &Shop, order: &str, refund_id: &str, member: &str, data: Value) {
    let mut data = data;
    data["order_id"] = json!(order);
    data["refund_id"] = json!(refund_id);
    event(
        shop,
        json!({"type": "purchase.refunded", "version": 1, "id": format!("{order}-{refund_id}"),
               "program": "kr-shop", "member": member, "occurred_at": at(0), "data": data}),
    );
}

/// The member's events so far are processed: a purchase posted now has earned (each member's
/// events are processed in the order they came).
fn settled(shop: &Shop, member: &str, mark: &str) {
    let before = shop.member(member)["pending"].clone();
    purchase(shop, mark, member, "1000");
    shop.eventually(member, |v| v["pending"] != before);
}

#[test]
fn a_refund_before_its_payment_or_in_parts_that_add_up_to_it_ends_the_membership() {
    // GIVEN kr-shop with the Plus membership
    let shop = plus_shop("membership-refund-order");
    // WHEN one member's refund of the fee comes before the payment it refunds
    refund(
        &shop,
        "pay-early",
        "r-1",
        "m-early",
        json!({"lines": [{"line_id": "membership", "quantity": 1}]}),
    );
    paid(&shop, "pay-early", "m-early", 1, 0);
    // AND another's fee is refunded by amount in two parts: 2,000 and then 2,900 of 4,900
    paid(&shop, "pay-parts", "m-parts", 1, 0);
    for (id, amount) in [("r-1", "2000"), ("r-2", "2900")] {
        refund(
            &shop,
            "pay-parts",
            id,
            "m-parts",
            json!({"amount": amount, "order_total": "4900"}),
        );
    }
    // THEN both memberships have ended, today
    for member in ["m-early", "m-parts"] {
        let ended = shop.eventually(member, |v| v["membership"]["status"] == "ended");
        assert_eq!(day(&ended["membership"]["ended_on"]), today_in_seoul());
    }
}

#[test]
fn a_refund_of_a_purchase_takes_its_share_off_what_the_membership_saved() {
    // GIVEN a Plus member whose purchase of 12,345 won earned 185 points at x1.5, 62 of them
    // saved by the membership
    let shop = plus_shop("membership-saved-refund");
    let member = "m-saved";
    paid(&shop, "pay-saved", member, 1, 0);
    shop.eventually(member, |v| v["membership"]["status"] == "active");
    purchase(&shop, "o-saved", member, "12345");
    let view = shop.eventually(member, |v| v["pending"] == 185);
    assert_eq!(view["membership"]["saved"]["points"], 62, "{view}");
    // WHEN 6,000 of it is refunded as money alone: 89 of its 185 points taken back
    refund(&shop, "o-saved", "r-1", member, json!({"amount": "6000"}));
    // THEN the membership saved that share less: 62 - floor(62 x 89 / 185) = 33
    let view = shop.eventually(member, |v| v["pending"] == 96);
    assert_eq!(view["membership"]["saved"]["points"], 33, "{view}");
    // WHEN the rest of the order is refunded
    refund(
        &shop,
        "o-saved",
        "r-2",
        member,
        json!({"lines": [{"line_id": "1", "quantity": 1}]}),
    );
    // THEN the membership saved nothing on it
    let view = shop.eventually(member, |v| v["pending"] == 0);
    assert_eq!(view["membership"]["saved"]["points"], 0, "{view}");
}

#[test]
fn a_platform_refund_of_an_imported_membership_line_ends_it() {
    // GIVEN an order imported from the shop's export (its lines named export-1, …, with their
    // SKU) that paid a year of Plus
    let shop = plus_shop("membership-imported-refund");
    let member = "m-imported";
    event(
        &shop,
        json!({"type": "purchase.completed", "version": 1, "id": "imp-1-paid",
               "program": "kr-shop", "member": member, "occurred_at": at(0),
               "data": {"order_id": "imp-1", "currency": "KRW",
                        "lines": [{"line_id": "export-1", "sku": "PLUS-MONTH", "quantity": 12,
                                   "unit_price": "4900"}]}}),
    );
    shop.eventually(member, |v| v["membership"]["status"] == "active");
    // WHEN the platform refunds the whole line under its own line id, with the SKU
    refund(
        &shop,
        "imp-1",
        "r-1",
        member,
        json!({"lines": [{"line_id": "518995019", "quantity": 12, "sku": "PLUS-MONTH"}]}),
    );
    // THEN the membership has ended today: its fee went back
    let ended = shop.eventually(member, |v| v["membership"]["status"] == "ended");
    assert_eq!(day(&ended["membership"]["ended_on"]), today_in_seoul());
}

#[test]
fn a_part_refund_of_the_fee_leaves_the_membership() {
    // GIVEN a member who paid for Plus today
    let shop = plus_shop("membership-periods-refund");
    paid(&shop, "pay-part", "m-part", 1, 0);
    // WHEN 2,000 of the order's 4,900 are refunded
    refund(
        &shop,
        "pay-part",
        "r-1",
        "m-part",
        json!({"amount": "2000", "order_total": "4900"}),
    );
    settled(&shop, "m-part", "o-after-part");
    // THEN the membership goes on
    assert_eq!(shop.member("m-part")["membership"]["status"], "active");
}

#[test]
fn a_late_refund_of_an_earlier_membership_leaves_the_one_paid_for_since() {
    // GIVEN a member whose first month, paid 60 days ago, lapsed, and who paid again today
    let shop = plus_shop("membership-late-refund");
    paid(&shop, "pay-old", "m-again", 1, 60);
    paid(&shop, "pay-new", "m-again", 1, 0);
    shop.eventually("m-again", |v| {
        v["membership"]["started_on"].as_str() == Some(&today_in_seoul().to_string())
    });
    // WHEN the old month's payment is refunded
    refund(
        &shop,
        "pay-old",
        "r-old",
        "m-again",
        json!({"lines": [{"line_id": "membership", "quantity": 1}]}),
    );
    settled(&shop, "m-again", "o-after-refund");
    // THEN the membership paid for today is still active
    let view = shop.member("m-again");
    assert_eq!(view["membership"]["status"], "active", "{view}");
    // AND a refund of today's payment still ends it
    refund(
        &shop,
        "pay-new",
        "r-new",
        "m-again",
        json!({"lines": [{"line_id": "membership", "quantity": 1}]}),
    );
    shop.eventually("m-again", |v| v["membership"]["status"] == "ended");
}

#[test]
fn a_membership_ended_and_bought_again_on_one_day_has_its_own_monthly_reward() {
    // GIVEN a member who paid for Plus today and got the first month's reward
    let shop = plus_shop("membership-rebought");
    paid(&shop, "pay-a", "m-rebuy", 1, 0);
    shop.eventually("m-rebuy", |v| v["membership"]["status"] == "active");
    let today = today_in_seoul();
    let _ = jobs(&shop, today);
    let coupons = || {
        let export = shop.get(&format!("{P}/members/m-rebuy/export"));
        let redemptions = export["redemptions"].as_array().expect("redemptions");
        let ids: Vec<String> = redemptions
            .iter()
            .filter(|r| r["reward"] == "free-shipping")
            .map(|r| r["id"].as_str().expect("id").to_string())
            .collect();
        ids
    };
    assert_eq!(coupons().len(), 1);
    // WHEN its payment is refunded and the member buys it again, the same day
    refund(
        &shop,
        "pay-a",
        "r-a",
        "m-rebuy",
        json!({"lines": [{"line_id": "membership", "quantity": 1}]}),
    );
    shop.eventually("m-rebuy", |v| v["membership"]["status"] == "ended");
    paid(&shop, "pay-b", "m-rebuy", 1, 0);
    shop.eventually("m-rebuy", |v| v["membership"]["status"] == "active");
    // AND the job runs again that day, twice
    let _ = jobs(&shop, today);
    let _ = jobs(&shop, today);
    // THEN the new membership's first month has a reward of its own, once
    let ids = coupons();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_ne!(ids[0], ids[1]);
    let view = shop.member("m-rebuy");
    assert_eq!(view["membership"]["saved"]["rewards"], 2, "{view}");
}

#[test]
fn a_merge_keeps_the_membership_that_is_paid_for() {
    // GIVEN a survivor whose membership lapsed, and a member who paid for one today
    let shop = plus_shop("membership-merge");
    paid(&shop, "pay-lapsed", "m-survivor", 1, 60);
    paid(&shop, "pay-today", "m-other", 1, 0);
    shop.eventually("m-survivor", |v| v["membership"]["status"] == "lapsed");
    shop.eventually("m-other", |v| v["membership"]["status"] == "active");
    // WHEN support merges the other into the survivor
    let (status, merged) = shop.call(
        "POST",
        &format!("{P}/members/m-survivor/merge"),
        Some(json!({"from": "m-other", "reason": "same person"})),
    );
    assert_eq!(status, 200, "{merged}");
    // THEN the survivor has the membership paid for today
    let view = shop.member("m-survivor");
    assert_eq!(view["membership"]["status"], "active", "{view}");
    assert_eq!(day(&view["membership"]["started_on"]), today_in_seoul());
    // AND the member merged away shows none (before: its membership, active, as well)
    let other = shop.member("m-other");
    assert_eq!(other["merged_into"], "m-survivor", "{other}");
    assert!(other.get("membership").is_none(), "{other}");
    // AND a refund of that payment, delivered for the merged member, ends it
    refund(
        &shop,
        "pay-today",
        "r-today",
        "m-other",
        json!({"lines": [{"line_id": "membership", "quantity": 1}]}),
    );
    shop.eventually("m-survivor", |v| v["membership"]["status"] == "ended");
}

#[test]
fn a_membership_refunded_whole_is_granted_no_more_coupons_and_shows_no_renewal() {
    // GIVEN a member who paid for three months 40 days ago, none of its coupons granted yet
    let shop = plus_shop("membership-refunded-coupons");
    paid(&shop, "pay-gone", "m-gone", 3, 40);
    shop.eventually("m-gone", |v| v["membership"]["status"] == "active");
    // WHEN the whole fee is refunded
    refund(
        &shop,
        "pay-gone",
        "r-1",
        "m-gone",
        json!({"amount": "14700"}),
    );
    let ended = shop.eventually("m-gone", |v| v["membership"]["status"] == "ended");
    // THEN the view shows no renewal or lapse ahead, and no day paid for after it ended
    // (before: paid through two months ahead, renewing and lapsing after that)
    let membership = &ended["membership"];
    assert!(membership.get("renews_on").is_none(), "{membership}");
    assert!(membership.get("lapses_on").is_none(), "{membership}");
    assert!(day(&membership["paid_through"]) < day(&membership["ended_on"]));
    // WHEN the notices job runs today THEN no coupon is granted for the two months that began
    // before the refund (before: two coupons for a fee paid back)
    jobs(&shop, today_in_seoul());
    let export = shop.get(&format!("{P}/members/m-gone/export"));
    let coupons = export["redemptions"]
        .as_array()
        .expect("redemptions")
        .iter()
        .filter(|r| r["reward"] == "free-shipping")
        .count();
    assert_eq!(coupons, 0, "{export}");
    assert_eq!(shop.member("m-gone")["membership"]["saved"]["rewards"], 0);
}
