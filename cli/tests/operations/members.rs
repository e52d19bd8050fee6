//! One person, one account, from outside: merging two members over HTTP and with `loyalty
//! member merge`, against a running `loyalty serve`.

use chrono::{Datelike, NaiveDate, SecondsFormat, Utc};
use serde_json::{json, Value};

use super::{common, ok, Shop, P};

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The last day of the month `months` after this one (Seoul and UTC agree on the month
/// except in the first hours of one, which the lots' dates absorb).
fn end_of_month_in(months: u32) -> NaiveDate {
    // Today in the program's zone (Seoul keeps one offset all year): lots end by its calendar.
    let today = (Utc::now() + chrono::Duration::hours(9)).date_naive();
    let index = today.year() * 12 + today.month0() as i32 + months as i32 + 1;
    NaiveDate::from_ymd_opt(index / 12, (index % 12) as u32 + 1, 1)
        .and_then(|d| d.pred_opt())
        .expect("date")
}

fn pos_purchase(id: &str, member: &str, order: &str) -> Value {
    json!({
        "type": "purchase.completed", "version": 1, "id": id, "program": "kr-shop",
        "member": member, "occurred_at": now(),
        "data": {
            "order_id": order, "currency": "KRW", "channel": "store", "shipping": "0", "tax": "0",
            "lines": [{"line_id": "1", "sku": "TEE-01", "category": "apparel", "quantity": 1,
                       "unit_price": "59000", "discount": "0"}]
        }
    })
}

fn birthday(id: &str, member: &str) -> Value {
    json!({"type": "engagement.recorded", "version": 1, "id": id, "program": "kr-shop",
           "member": member, "occurred_at": now(),
           "data": {"action": "birthday", "ref": format!("birthday-{}", Utc::now().year())}})
}

impl Shop {
    fn send(&self, event: Value) {
        let (status, answer) = self.call("POST", &format!("{P}/events"), Some(event));
        assert_eq!(status, 202, "{answer}");
    }

    /// Every ledger entry of a member, newest first, through the admin route's pages.
    fn whole_ledger(&self, member: &str) -> Vec<Value> {
        let mut entries = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = self.get(&format!("{P}/members/{member}/ledger?limit=100{cursor}"));
            entries.extend(page["entries"].as_array().expect("entries").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => return entries,
            }
        }
    }
}

fn lots(view: &Value) -> Vec<(String, i64)> {
    view["lots"]
        .as_array()
        .expect("lots")
        .iter()
        .map(|l| {
            (
                l["date"].as_str().unwrap_or_default().to_string(),
                l["points"].as_i64().unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn a_pos_member_merged_into_the_app_member_keeps_every_point_date_order_and_used_limit() {
    // GIVEN a POS member with 3,000 points ending in 2 months, who was paid this year's
    // birthday bonus and has a store purchase pending, and an app member with 5,000 ending in
    // 11 months
    let shop = Shop::start("merge");
    let pos = "pos:010-1234-5678";
    let app = "app-minji";
    let (soon, later) = (end_of_month_in(2), end_of_month_in(11));
    let imported = ok(&shop.import_csv(
        "balances.csv",
        &format!("member,points,expires_on\n{pos},3000,{soon}\n{app},5000,{later}\n"),
    ));
    assert_eq!(imported["applied"].as_i64(), Some(2), "{imported}");
    shop.send(birthday("bd-pos", pos));
    shop.send(pos_purchase("pos-sale-1", pos, "store-1001"));
    let before = shop.eventually(pos, |v| v["pending"] == 590 && v["balance"] == 5000);
    let birthday_lot = end_of_month_in(12);
    assert_eq!(
        lots(&before),
        vec![(soon.to_string(), 3000), (birthday_lot.to_string(), 2000)]
    );

    // WHEN support merges the POS member into the app member
    let (status, merged) = shop.call(
        "POST",
        &format!("{P}/members/{app}/merge"),
        Some(json!({"from": pos, "reason": "same person: phone 010-1234-5678 in the app"})),
    );

    // THEN the survivor holds both members' points with both expiry dates
    assert_eq!(status, 200, "{merged}");
    assert_eq!(
        (merged["points"].as_i64(), merged["pending"].as_i64()),
        (Some(5000), Some(590)),
        "{merged}"
    );
    let survivor = shop.member(app);
    assert_eq!(survivor["balance"].as_i64(), Some(10_000), "{survivor}");
    assert_eq!(survivor["pending"].as_i64(), Some(590));
    let mut expected = vec![
        (soon.to_string(), 3000),
        (later.to_string(), 5000),
        (birthday_lot.to_string(), 2000),
    ];
    expected.sort();
    assert_eq!(lots(&survivor), expected);
    assert_eq!(survivor["merged_from"], json!([pos]));
    // AND Σ ledger == balance on the survivor, with the merge entry and its reason
    let ledger = shop.whole_ledger(app);
    let sum = |key: &str| {
        ledger
            .iter()
            .map(|e| e[key].as_i64().unwrap_or(0))
            .sum::<i64>()
    };
    assert_eq!((sum("points"), sum("pending")), (10_000, 590));
    let entry = ledger
        .iter()
        .find(|e| e["kind"] == "merge")
        .expect("merge entry");
    assert!(entry["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("same person"));
    // AND the POS member's own ledger says where its points went (-5,000 and -590 pending),
    // and its id now names the survivor
    let conn = rusqlite::Connection::open(&shop.db).expect("db");
    let out: String = conn
        .query_row(
            "SELECT body FROM ledger WHERE member = ?1 AND body LIKE '%\"merge\"%'",
            [pos],
            |r| r.get(0),
        )
        .expect("the POS member's merge entry");
    let out: Value = serde_json::from_str(&out).expect("entry");
    assert_eq!(
        (out["points"].as_i64(), out["pending"].as_i64()),
        (Some(-5000), Some(-590))
    );
    assert_eq!(shop.member(pos)["member"], app);

    // WHEN the POS order is refunded, naming the POS member
    shop.send(json!({"type": "purchase.refunded", "version": 1, "id": "pos-refund-1",
        "program": "kr-shop", "member": pos, "occurred_at": now(),
        "data": {"order_id": "store-1001", "refund_id": "r1", "lines": [{"line_id": "1", "quantity": 1}]}}));
    // THEN it takes back from the survivor
    let refunded = shop.eventually(app, |v| v["pending"] == 0);
    assert_eq!(refunded["balance"].as_i64(), Some(10_000));

    // WHEN the merge is asked for again, over HTTP and with the CLI
    let (status, again) = shop.call(
        "POST",
        &format!("{P}/members/{app}/merge"),
        Some(json!({"from": pos, "reason": "same person"})),
    );
    let cli = ok(&shop.loyalty(&[
        "member",
        "merge",
        app,
        "--from",
        pos,
        "--reason",
        "again",
        "--program",
        "kr-shop",
        "--json",
    ]));
    // THEN nothing changes
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (again["repeated"].as_bool(), cli["repeated"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(shop.member(app)["balance"].as_i64(), Some(10_000));

    // WHEN the survivor's birthday is reported this year
    shop.send(birthday("bd-app", app));
    shop.settled();
    // THEN it is not paid a second time
    let after = shop.member(app);
    assert_eq!(after["balance"].as_i64(), Some(10_000), "{after}");
    let ledger = shop.whole_ledger(app);
    let paid = ledger
        .iter()
        .filter(|e| e["source"]["rule"] == "birthday" && e["points"].as_i64() > Some(0))
        .count();
    assert_eq!(paid, 0, "the survivor's own ledger has no birthday payment");
    assert_eq!(sum_points(&ledger), 10_000);

    // WHEN the person asks for their data (an export of the survivor)
    let export = shop.get(&format!("{P}/members/{app}/export"));
    // THEN it holds the POS member's own history too: its file and its whole ledger
    assert_eq!(export["merged_members"][0]["member"], pos, "{export}");
    assert!(export["merged_members"][0]["orders"]
        .as_array()
        .is_some_and(|orders| orders.iter().any(|o| o["order_id"] == "store-1001")));
    assert_eq!(export["merged_ledgers"][0]["member"], pos);
    let theirs = export["merged_ledgers"][0]["ledger"]
        .as_array()
        .expect("the POS member's ledger");
    assert!(
        theirs.iter().any(|e| e["kind"] == "merge") && theirs.iter().any(|e| e["kind"] == "earn"),
        "{theirs:?}"
    );
    assert_eq!(
        export["ledger"].as_array().map(Vec::len),
        Some(ledger.len())
    );
}

#[test]
fn a_member_merged_into_another_takes_no_adjustment_of_its_own() {
    // GIVEN m-old with 700 points merged into m-new
    let shop = Shop::start("merged-adjust");
    let adjust = |member: &str, points: i64| {
        shop.call(
            "POST",
            &format!("{P}/members/{member}/adjustments"),
            Some(json!({"points": points, "reason": "goodwill"})),
        )
    };
    assert_eq!(adjust("m-old", 700).0, 201);
    assert_eq!(adjust("m-new", 100).0, 201);
    let (status, merged) = shop.call(
        "POST",
        &format!("{P}/members/m-new/merge"),
        Some(json!({"from": "m-old", "reason": "same person"})),
    );
    assert_eq!(status, 200, "{merged}");
    // WHEN an operator adjusts m-old by its old id
    let (status, problem) = adjust("m-old", 500);
    // THEN 409 names the survivor, and no point is kept where nobody sees it
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["type"], "/problems/member-merged");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("m-new"),
        "{problem}"
    );
    assert_eq!(shop.member("m-new")["balance"].as_i64(), Some(800));
    let conn = rusqlite::Connection::open(&shop.db).expect("db");
    let entries: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM ledger WHERE member = 'm-old'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(
        entries, 2,
        "the adjustment and the merge's entry, nothing more"
    );
}

fn sum_points(ledger: &[Value]) -> i64 {
    ledger
        .iter()
        .map(|e| e["points"].as_i64().unwrap_or(0))
        .sum()
}

#[test]
fn a_balance_imported_for_a_merged_member_goes_to_the_member_it_was_merged_into() {
    // GIVEN m-old and m-new with 100 points each, m-old with 50 more from a first file
    let shop = Shop::start("import-merged");
    shop.give(&["m-old", "m-new"], 100);
    ok(&shop.import_csv("early.csv", "member,points\nm-old,50\n"));
    // AND m-old then merged into m-new
    shop.merge("m-new", "m-old");
    // WHEN a migration file adds 500 points to m-old, and is imported twice, and the first
    // file again
    for _ in 0..2 {
        ok(&shop.import_csv("late.csv", "member,points\nm-old,500\n"));
    }
    ok(&shop.import_csv("early.csv", "member,points\nm-old,50\n"));
    // THEN m-new has each file's points once, and m-old's emptied account has none
    let survivor = shop.member("m-new");
    assert_eq!(survivor["balance"].as_i64(), Some(750), "{survivor}");
    let ledger = shop.whole_ledger("m-new");
    assert_eq!(sum_points(&ledger), 750);
    assert_eq!(sum_points(&shop.whole_ledger("m-old")), 0);
}

#[test]
fn a_file_imported_again_after_its_member_was_merged_by_email_credits_nothing_more() {
    // GIVEN a file that made email:ann@example.com with 500 points, and m-7 with 100
    let shop = Shop::start("import-email-merged");
    let file = "email,points\nann@example.com,500\n";
    ok(&shop.import_csv("smile.csv", file));
    shop.give(&["m-7"], 100);
    // AND that member merged into m-7 (its email now finds m-7)
    shop.merge("m-7", "email:ann@example.com");
    // WHEN the same file is imported again
    let again = ok(&shop.import_csv("smile.csv", file));
    // THEN the row is unchanged, and m-7 has its 100 and the file's 500 once
    assert_eq!(
        (again["applied"].as_i64(), again["unchanged"].as_i64()),
        (Some(0), Some(1)),
        "{again}"
    );
    assert_eq!(shop.member("m-7")["balance"].as_i64(), Some(600));
}

#[test]
fn erasing_a_member_of_a_short_id_leaves_the_kept_ledger_s_order_and_event_ids_whole() {
    // GIVEN the POS member pos:42 with a purchase, event sale-4200 of order o-4242
    let shop = Shop::start("erase-short");
    shop.send(pos_purchase("sale-4200", "pos:42", "o-4242"));
    shop.eventually("pos:42", |v| v["pending"] == 590);
    // WHEN it is erased
    let (status, erased) = shop.call(
        "DELETE",
        &format!("{P}/members/pos:42?reason=erasure%20request"),
        None,
    );
    assert_eq!(status, 200, "{erased}");
    // THEN the kept ledger still names the event and the order as they were
    let pseudonym = erased["pseudonym"].as_str().expect("pseudonym");
    let kept = shop.get(&format!("{P}/members/{pseudonym}/export"));
    let entries = kept["ledger"].as_array().expect("ledger");
    let sale = entries
        .iter()
        .find(|e| e["source"]["event_id"] == "sale-4200")
        .unwrap_or_else(|| panic!("no entry of the event in {kept}"));
    assert!(
        sale["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("sale-4200")),
        "{sale}"
    );
    assert!(
        sale["reason"]
            .as_str()
            .is_some_and(|r| r.contains("order o-4242 ")),
        "{sale}"
    );
}

#[test]
fn erasing_the_end_of_a_merge_chain_erases_every_member_merged_along_it() {
    // GIVEN m-first merged into m-second, then m-second into m-third, each with points
    let shop = Shop::start("erase-chain");
    shop.give(&["m-first", "m-second", "m-third"], 100);
    shop.merge("m-second", "m-first");
    shop.merge("m-third", "m-second");
    // WHEN m-third is erased
    let (status, erased) = shop.call(
        "DELETE",
        &format!("{P}/members/m-third?reason=erasure%20request"),
        None,
    );
    assert_eq!(status, 200, "{erased}");
    // THEN both members merged along the chain are gone with it
    assert_eq!(erased["merged"].as_i64(), Some(2), "{erased}");
    for member in ["m-first", "m-second", "m-third"] {
        let (status, left) = shop.call("GET", &format!("{P}/members/{member}/export"), None);
        assert!(
            status == 404 || left["ledger"].as_array().is_some_and(Vec::is_empty),
            "{member}: {status} {left}"
        );
    }
    // AND the audit finds nothing wrong: no points forfeited twice, none left in transit
    let audit = shop.loyalty(&["audit", "--json"]);
    let report = ok(&audit);
    assert_eq!(report["violations"], json!([]), "{report}");
}

#[test]
fn an_app_member_merged_away_signs_in_to_the_member_it_was_merged_into() {
    // GIVEN the app's member app-b (its token's subject, no link of its own) merged into m-pos
    let shop = Shop::start("merge-app");
    shop.give(&["app-b", "m-pos"], 100);
    shop.merge("m-pos", "app-b");
    // WHEN the app signs in with app-b's token and asks for its member
    let me = common::token(&["--member", "app-b"]);
    let (status, view) = shop.server.call("GET", &format!("{P}/me"), &me, &[], None);
    // THEN it is the survivor, with both members' points
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["balance"].as_i64(), Some(200), "{view}");
}

#[test]
fn a_merge_is_refused_into_itself_for_unknown_members_and_without_a_reason() {
    // GIVEN a running shop with one member
    let shop = Shop::start("merge-refused");
    shop.send(pos_purchase("sale-a", "m-a", "o-a"));
    shop.eventually("m-a", |v| v["pending"] == 590);
    let merge = |survivor: &str, body: Value| {
        shop.call("POST", &format!("{P}/members/{survivor}/merge"), Some(body))
    };
    // WHEN merges that cannot be are asked for THEN each is a problem and nothing changes
    let (status, itself) = merge("m-a", json!({"from": "m-a", "reason": "x"}));
    assert_eq!(
        (status, itself["type"].as_str()),
        (409, Some("/problems/merge-refused"))
    );
    let (status, unknown) = merge("m-a", json!({"from": "m-nobody", "reason": "x"}));
    assert_eq!(
        (status, unknown["type"].as_str()),
        (404, Some("/problems/unknown-member"))
    );
    let (status, blank) = merge("m-a", json!({"from": "m-b", "reason": " "}));
    assert_eq!(status, 400, "{blank}");
    let (status, extra) = merge("m-a", json!({"from": "m-b", "reason": "x", "points": 5}));
    assert_eq!(status, 400, "{extra}");
    assert_eq!(shop.member("m-a")["pending"].as_i64(), Some(590));
}

#[test]
fn deciding_on_an_approval_or_a_held_event_that_does_not_exist_is_not_found_whatever_the_body() {
    // GIVEN a running shop with nothing waiting
    let shop = Shop::start("decide-unknown");
    // WHEN an approval and a held event that do not exist are declined and cancelled, with no
    // reason given
    for path in [
        format!("{P}/approvals/appr-nothing/decline"),
        format!("{P}/reviews/ev-nothing/cancel"),
    ] {
        let (status, problem) = shop.call("POST", &path, None);
        // THEN each is 404: what is named comes before what is asked of it
        assert_eq!(status, 404, "{path}: {problem}");
    }
}

#[test]
fn a_suspended_member_earns_and_redeems_nothing_until_resumed_then_its_events_apply_once() {
    // GIVEN a member with 5,000 points
    let shop = Shop::start("suspend");
    let member = "m-suspect";
    let (status, answer) = shop.call(
        "POST",
        &format!("{P}/members/{member}/adjustments"),
        Some(json!({"points": 5000, "reason": "opening balance"})),
    );
    assert_eq!(status, 201, "{answer}");
    // WHEN an operator's command suspends it with a blank reason THEN it is refused, and the
    // member is not suspended (before: suspended, for no reason on record)
    let blank = shop.loyalty(&[
        "member",
        "suspend",
        member,
        "--reason",
        "  ",
        "--program",
        "kr-shop",
    ]);
    assert!(!blank.status.success());
    assert!(String::from_utf8_lossy(&blank.stderr).contains("a reason of 1 to"));
    assert!(shop.member(member).get("suspended").is_none());
    // WHEN an operator suspends the member and a purchase and a birthday arrive
    let (status, suspended) = shop.call(
        "POST",
        &format!("{P}/members/{member}/suspend"),
        Some(json!({"reason": "chargebacks under review"})),
    );
    assert_eq!(status, 200, "{suspended}");
    shop.send(pos_purchase("sus-sale-1", member, "sus-1"));
    shop.send(birthday("sus-bd", member));
    shop.settled();
    // THEN nothing is earned, the member view says why, and a redemption is refused
    let view = shop.member(member);
    assert_eq!(
        (view["balance"].as_i64(), view["pending"].as_i64()),
        (Some(5000), Some(0))
    );
    assert_eq!(view["suspended"]["reason"], "chargebacks under review");
    let me = common::token(&["--member", member]);
    let (status, refused) = shop.server.call(
        "POST",
        &format!("{P}/me/redemptions"),
        &me,
        &[("Idempotency-Key", "k-1")],
        Some(&json!({"reward": "free-shipping"}).to_string()),
    );
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["type"], "/problems/member-suspended");
    // AND the member's export holds the two events waiting for the resume
    let export = shop.get(&format!("{P}/members/{member}/export"));
    let mut held: Vec<(&str, &str)> = export["held_events"]
        .as_array()
        .expect("held events")
        .iter()
        .map(|h| {
            (
                h["event"]["id"].as_str().unwrap_or_default(),
                h["waits_for"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    held.sort();
    assert_eq!(held, [("sus-bd", "resume"), ("sus-sale-1", "resume")]);

    // WHEN the member is resumed with the CLI
    let resumed = ok(&shop.loyalty(&[
        "member",
        "resume",
        member,
        "--reason",
        "cleared",
        "--program",
        "kr-shop",
    ]));
    // THEN both waiting events are applied once, and the member may redeem again
    assert_eq!(resumed["applied"].as_i64(), Some(2), "{resumed}");
    let view = shop.eventually(member, |v| v["pending"] == 590 && v["balance"] == 7000);
    assert!(view.get("suspended").is_none(), "{view}");
    let (status, again) = shop.call(
        "POST",
        &format!("{P}/members/{member}/resume"),
        Some(json!({"reason": "cleared"})),
    );
    assert_eq!(
        (status, again["applied"].as_i64()),
        (200, Some(0)),
        "{again}"
    );
    shop.send(pos_purchase("sus-sale-1", member, "sus-1"));
    shop.settled();
    assert_eq!(shop.member(member)["pending"].as_i64(), Some(590));
    let (status, redeemed) = shop.server.call(
        "POST",
        &format!("{P}/me/redemptions"),
        &me,
        &[("Idempotency-Key", "k-2")],
        Some(&json!({"reward": "free-shipping"}).to_string()),
    );
    assert_eq!(status, 201, "{redeemed}");

    // WHEN the member is suspended again, an event waits, and the resume cancels it
    let (status, _) = shop.call(
        "POST",
        &format!("{P}/members/{member}/suspend"),
        Some(json!({"reason": "again"})),
    );
    assert_eq!(status, 200);
    shop.send(pos_purchase("sus-sale-2", member, "sus-2"));
    shop.settled();
    let (status, cancelled) = shop.call(
        "POST",
        &format!("{P}/members/{member}/resume"),
        Some(json!({"reason": "fraudulent order", "events": "cancel"})),
    );
    // THEN it never earns, and operators find it among the rejected events with the reason
    assert_eq!(
        (status, cancelled["cancelled"].as_i64()),
        (200, Some(1)),
        "{cancelled}"
    );
    shop.settled();
    assert_eq!(shop.member(member)["pending"].as_i64(), Some(590));
    let (status, rejected) = shop.call("GET", &format!("{P}/rejected-events/sus-sale-2"), None);
    assert_eq!(status, 200, "{rejected}");
    assert!(rejected["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("fraudulent order"));
    // WHEN the same sale is delivered again (a platform restating it, a retry)
    shop.send(pos_purchase("sus-sale-2", member, "sus-2"));
    shop.settled();
    // THEN it is taken as the event the operator cancelled: still no points
    assert_eq!(shop.member(member)["pending"].as_i64(), Some(590));
}

#[test]
fn an_erased_member_leaves_amounts_without_a_person_and_its_email_later_makes_a_new_member() {
    // GIVEN a Shopify customer (7001234, minji@example.com) with an order, a birthday, and an
    // event refused for good that names the email
    let shop = Shop::start("erase");
    shop.shopify_paid();
    let member = "shopify:7001234";
    shop.eventually(member, |v| v["pending"] == 1_000);
    let me = common::token(&["--member", member]);
    let (status, profile) = shop.server.call(
        "PATCH",
        &format!("{P}/me/profile"),
        &me,
        &[],
        Some(&json!({"birthday": "03-14"}).to_string()),
    );
    assert_eq!(status, 200, "{profile}");
    shop.send(
        json!({"type": "engagement.recorded", "version": 1, "id": "ev-share-minji",
        "program": "kr-shop", "member": "email:minji@example.com", "occurred_at": now(),
        "data": {"action": "share", "ref": "x"}}),
    );
    // AND another member's event refused for good that names her email
    shop.send(
        json!({"type": "engagement.recorded", "version": 1, "id": "ev-share-friend",
        "program": "kr-shop", "member": "m-friend-1", "occurred_at": now(),
        "data": {"action": "share", "ref": "minji@example.com"}}),
    );
    shop.settled();
    for id in ["ev-share-minji", "ev-share-friend"] {
        let (status, _) = shop.call("GET", &format!("{P}/rejected-events/{id}"), None);
        assert_eq!(status, 200, "{id}");
    }
    // AND a coupon the member's app redeemed with an Idempotency-Key
    let (status, answer) = shop.call(
        "POST",
        &format!("{P}/members/{member}/adjustments"),
        Some(json!({"points": 5000, "reason": "goodwill"})),
    );
    assert_eq!(status, 201, "{answer}");
    let redeem = || {
        shop.server.call(
            "POST",
            &format!("{P}/me/redemptions"),
            &me,
            &[("Idempotency-Key", "k-erase")],
            Some(&json!({"reward": "free-shipping"}).to_string()),
        )
    };
    let (status, coupon) = redeem();
    assert_eq!(status, 201, "{coupon}");
    assert_eq!(
        redeem(),
        (201, coupon.clone()),
        "a retry replays the answer"
    );

    // AND the member's export holds her event, which names the person, and not the other
    // member's (that is the other person's data)
    let export = shop.get(&format!("{P}/members/{member}/export"));
    let exported: Vec<&str> = export["rejected_events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(exported, vec!["ev-share-minji"], "{export}");

    // WHEN support erases the member, named by its email
    let before = now();
    let (status, erased) = shop.call(
        "DELETE",
        &format!("{P}/members/email:minji@example.com?reason=erasure%20request%20by%20email"),
        None,
    );

    // THEN the points are forfeited and the ledger is kept under a pseudonym
    assert_eq!(status, 200, "{erased}");
    assert_eq!(
        (
            erased["member"].as_str(),
            erased["forfeited_pending"].as_i64()
        ),
        (Some(member), Some(1_000)),
        "{erased}"
    );
    let pseudonym = erased["pseudonym"].as_str().expect("pseudonym").to_string();
    assert!(pseudonym.starts_with("erased-"));
    // AND the export of the kept record holds no personal data, and its amounts sum to zero
    let (status, kept) = shop.call("GET", &format!("{P}/members/{pseudonym}/export"), None);
    assert_eq!(status, 200, "{kept}");
    let text = kept.to_string();
    for personal in ["minji", "Minji", "7001234", "03-14", "Kim"] {
        assert!(!text.contains(personal), "{personal} is still in {text}");
    }
    let entries = kept["ledger"].as_array().expect("ledger");
    assert!(entries.iter().any(|e| e["kind"] == "forfeit"), "{text}");
    let sum = |key: &str| {
        entries
            .iter()
            .map(|e| e[key].as_i64().unwrap_or(0))
            .sum::<i64>()
    };
    assert_eq!((sum("points"), sum("pending")), (0, 0));
    // AND nothing is left under the member's id, its email or the refused event
    let (_, old) = shop.call("GET", &format!("{P}/members/{member}/export"), None);
    assert!(!old.to_string().contains("minji"), "{old}");
    let (status, _) = shop.call("GET", &format!("{P}/rejected-events/ev-share-minji"), None);
    assert_eq!(status, 404);
    // AND the app's stored answer is gone: a retry of its key does not replay the coupon
    assert_eq!(erased["requests"].as_i64(), Some(1), "{erased}");
    let (status, retried) = redeem();
    assert_ne!(status, 201, "{retried}");
    assert!(!retried
        .to_string()
        .contains(coupon["code"].as_str().expect("code")));
    // AND the books still balance: the audit finds nothing wrong
    let audit = shop.loyalty(&["audit", "--json"]);
    let report = ok(&audit);
    assert_eq!(report["violations"], json!([]), "{report}");
    assert_eq!(audit.status.code(), Some(0));

    // WHEN an order the erased member paid yesterday comes late (a reconcile, a platform's
    // retry), and an earlier sale is submitted again by member id (a redrive, a replay)
    shop.shopify_paid_order("820982911946154777");
    let mut sale = pos_purchase("sale-before-erasure", member, "before-1");
    sale["occurred_at"] = json!(before);
    shop.send(sale);
    shop.settled();
    // THEN neither makes a member of the person again: no account, and no link of its email
    let (status, gone) = shop.call("GET", &format!("{P}/members/{member}"), None);
    assert_eq!(
        (status, gone["type"].as_str()),
        (404, Some("/problems/unknown-member")),
        "{gone}"
    );
    let (status, gone) = shop.call("GET", &format!("{P}/members/email:minji@example.com"), None);
    assert_eq!(status, 404, "{gone}");
    // AND an old balance file's row for her email is refused, not imported
    let imported = ok(&shop.import_csv(
        "old-balances.csv",
        "member,email,points,tier\n,minji@example.com,500,\n",
    ));
    assert_eq!(
        (imported["applied"].as_i64(), imported["refused"].as_i64()),
        (Some(0), Some(1)),
        "{imported}"
    );

    // WHEN the same customer orders again after the erasure (Shopify's times are in seconds)
    shop.shopify_paid_order_at(
        "820982911946154999",
        Utc::now() + chrono::Duration::seconds(2),
    );
    // THEN it makes a new member, who has only that order
    let fresh = shop.eventually(member, |v| v["pending"] == 1_000);
    assert_eq!(fresh["balance"].as_i64(), Some(0), "{fresh}");
    let ledger = shop.whole_ledger(member);
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    // AND once the customer is back, the erased person's older order and sale still add nothing
    shop.shopify_paid_order("820982911946154778");
    let mut sale = pos_purchase("sale-before-erasure-2", member, "before-2");
    sale["occurred_at"] = json!(before);
    shop.send(sale);
    shop.settled();
    let ledger = shop.whole_ledger(member);
    assert_eq!(ledger.len(), 1, "{ledger:?}");
}

#[test]
fn a_late_order_from_before_an_erasure_links_none_of_the_person_s_identities() {
    // GIVEN a Shopify customer (7001234, minji@example.com) with an order, erased
    let shop = Shop::start("erase-late-order");
    shop.shopify_paid();
    shop.eventually("shopify:7001234", |v| v["pending"] == 1_000);
    let (status, erased) = shop.call(
        "DELETE",
        &format!("{P}/members/shopify:7001234?reason=erasure%20request"),
        None,
    );
    assert_eq!(status, 200, "{erased}");
    // WHEN an order the customer paid the day before the erasure comes late (a reconcile)
    shop.shopify_paid_order("820982911946154777");
    shop.settled();
    // THEN nothing leads from the email to anyone: support can link it to another member
    shop.give(&["m-other"], 10);
    let (status, linked) = shop.call(
        "POST",
        &format!("{P}/members/m-other/aliases"),
        Some(json!({"kind": "email", "value": "minji@example.com"})),
    );
    assert_eq!(
        (status, linked["linked"].as_bool()),
        (201, Some(true)),
        "{linked}"
    );
    let (status, _) = shop.call("GET", &format!("{P}/members/shopify:7001234"), None);
    assert_eq!(status, 404);
}

#[test]
fn an_account_support_opens_for_an_erased_id_keeps_the_person_s_older_events_out() {
    // GIVEN a POS member with a sale, erased
    let shop = Shop::start("erase-then-gift");
    let member = "pos:77001";
    shop.send(pos_purchase("sale-77-1", member, "pos-77-1"));
    shop.eventually(member, |v| v["pending"] == 590);
    let before = now();
    let (status, erased) = shop.call(
        "DELETE",
        &format!("{P}/members/{member}?reason=erasure%20request"),
        None,
    );
    assert_eq!(status, 200, "{erased}");
    // WHEN the customer comes back and support gives them 100 points by hand (a new account),
    // and then a sale of the person erased, from before the erasure, arrives by id
    shop.give(&[member], 100);
    let mut sale = pos_purchase("sale-77-0", member, "pos-77-0");
    sale["occurred_at"] = json!(before);
    shop.send(sale);
    shop.settled();
    // THEN the account has the 100 points alone
    let view = shop.member(member);
    assert_eq!(
        (view["balance"].as_i64(), view["pending"].as_i64()),
        (Some(100), Some(0)),
        "{view}"
    );
}

#[test]
fn erasing_a_member_leaves_no_id_of_the_members_merged_into_it() {
    // GIVEN two members known by their email, each with points, merged into an app member
    let shop = Shop::start("erase-merged");
    let survivor = "m-app-77";
    let merged = ["email:ann.lee@example.com", "email:bo.kim@example.com"];
    shop.give(&[survivor, merged[0], merged[1]], 100);
    for from in merged {
        shop.merge(survivor, from);
    }
    // WHEN support erases the app member
    let (status, erased) = shop.call(
        "DELETE",
        &format!("{P}/members/{survivor}?reason=erasure%20request"),
        None,
    );
    assert_eq!(status, 200, "{erased}");
    assert_eq!(erased["merged"].as_i64(), Some(2), "{erased}");
    // THEN the kept ledger names neither merged member: not in a reason, an entry id or an
    // event id
    let pseudonym = erased["pseudonym"].as_str().expect("pseudonym");
    let (status, kept) = shop.call("GET", &format!("{P}/members/{pseudonym}/export"), None);
    assert_eq!(status, 200, "{kept}");
    let text = kept.to_string();
    for personal in ["ann.lee", "bo.kim", "example.com", survivor] {
        assert!(!text.contains(personal), "{personal} is still in {text}");
    }
    // AND its two merge entries are kept apart, with every amount
    let entries = kept["ledger"].as_array().expect("ledger");
    let merges: Vec<&Value> = entries.iter().filter(|e| e["kind"] == "merge").collect();
    assert_eq!(merges.len(), 2, "{text}");
    assert_ne!(merges[0]["id"], merges[1]["id"]);
    let points: i64 = entries
        .iter()
        .map(|e| e["points"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(points, 0, "{text}");
}

fn referral(id: &str, referee: &str, referrer: &str) -> Value {
    json!({"type": "engagement.recorded", "version": 1, "id": id, "program": "kr-shop",
           "member": referee, "occurred_at": now(),
           "data": {"action": "referral", "ref": id, "referrer": referrer}})
}

fn action(id: &str, member: &str, action: &str) -> Value {
    json!({"type": "engagement.recorded", "version": 1, "id": id, "program": "kr-shop",
           "member": member, "occurred_at": now(), "data": {"action": action, "ref": id}})
}

impl Shop {
    /// `points` given to each of `members` by an operator.
    fn give(&self, members: &[&str], points: i64) {
        for member in members {
            let (status, answer) = self.call(
                "POST",
                &format!("{P}/members/{member}/adjustments"),
                Some(json!({"points": points, "reason": "opening balance"})),
            );
            assert_eq!(status, 201, "{answer}");
        }
    }

    /// Support merges `from` into `survivor`, the same person.
    fn merge(&self, survivor: &str, from: &str) {
        let (status, merged) = self.call(
            "POST",
            &format!("{P}/members/{survivor}/merge"),
            Some(json!({"from": from, "reason": "the same person"})),
        );
        assert_eq!(status, 200, "{merged}");
    }

    /// A member with an email and no points, imported as a brand would.
    fn import_member(&self, member: &str, email: &str) {
        ok(&self.import_csv(
            &format!("{member}.csv"),
            &format!("member,email,points\n{member},{email},0\n"),
        ));
    }

    fn rejected_reason(&self, id: &str) -> String {
        let (status, rejected) = self.call("GET", &format!("{P}/rejected-events/{id}"), None);
        assert_eq!(status, 200, "{id}: {rejected}");
        rejected["reason"].as_str().unwrap_or_default().to_string()
    }

    /// kr-shop with more in its file.
    fn amend_program(&self, extra: &str) {
        let file = format!(
            "{}\n{extra}\n",
            include_str!("../../../examples/kr-shop.toml")
        );
        let response = reqwest::blocking::Client::new()
            .put(format!("{}{P}", self.server.base))
            .bearer_auth(&self.admin)
            .header("Content-Type", "application/toml")
            .body(file)
            .send()
            .expect("put program");
        assert_eq!(response.status().as_u16(), 200, "{:?}", response.text());
    }
}

#[test]
fn two_members_cannot_refer_each_other() {
    // GIVEN m-b, referred by m-a, neither having bought
    let shop = Shop::start("mutual-referrals");
    shop.send(referral("ref-ab", "m-b", "m-a"));
    shop.settled();
    // WHEN m-a says m-b referred them
    shop.send(referral("ref-ba", "m-a", "m-b"));
    shop.settled();
    // THEN that referral is refused with the reason, and m-a's first purchase pays no one
    let reason = shop.rejected_reason("ref-ba");
    assert!(reason.contains("refer each other"), "{reason}");
    shop.send(pos_purchase("mutual-sale", "m-a", "mutual-1"));
    shop.settled();
    shop.settled();
    assert_eq!(shop.member("m-b")["balance"].as_i64(), Some(0));
}

#[test]
fn a_self_referral_by_plus_tag_and_the_eleventh_referral_of_a_month_are_refused_with_reasons() {
    // GIVEN a referrer whose email is minji@example.com
    let shop = Shop::start("referrals");
    shop.import_member("app-ref", "minji@example.com");
    // WHEN a new member whose email is the referrer's with a +tag says the referrer sent them
    shop.send(referral(
        "ref-self",
        "email:Min.Ji+friend@example.com",
        "app-ref",
    ));
    shop.send(pos_purchase(
        "ref-self-sale",
        "email:Min.Ji+friend@example.com",
        "self-1",
    ));
    shop.settled();
    // THEN the referral is refused with the reason, visible to operators, and pays nobody
    let reason = shop.rejected_reason("ref-self");
    assert!(reason.contains("self-referral"), "{reason}");
    assert_eq!(shop.member("app-ref")["balance"].as_i64(), Some(0));

    // WHEN eleven other people the referrer referred make a first purchase this month
    for i in 1..=11 {
        let friend = format!("friend-{i}");
        shop.send(referral(&format!("ref-{i}"), &friend, "app-ref"));
        shop.send(pos_purchase(
            &format!("ref-sale-{i}"),
            &friend,
            &format!("ref-o-{i}"),
        ));
    }
    shop.settled();
    shop.settled();
    // THEN ten are rewarded, and the eleventh is refused under the limit of 10, with the reason
    assert_eq!(shop.member("app-ref")["balance"].as_i64(), Some(30_000));
    let refused: Vec<String> = (1..=11)
        .filter_map(|i| {
            let (status, r) = shop.call(
                "GET",
                &format!(
                    "{P}/rejected-events/{}",
                    loyalty_core::ids::digested_event_id("referral", &[&format!("friend-{i}")])
                ),
                None,
            );
            (status == 200).then(|| r["reason"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("limit is 10 a month"), "{}", refused[0]);
    // AND the referrer's own ledger, as the app shows it, never names a member referred
    let me = common::token(&["--member", "app-ref"]);
    let (status, page) =
        shop.server
            .call("GET", &format!("{P}/me/ledger?limit=100"), &me, &[], None);
    assert_eq!(status, 200, "{page}");
    assert!(
        page["entries"].as_array().map_or(0, Vec::len) >= 10,
        "{page}"
    );
    assert!(!page.to_string().contains("friend-"), "{page}");
    // AND every referee got their own welcome bonus
    assert_eq!(shop.member("friend-11")["balance"].as_i64(), Some(1000));
}

#[test]
fn a_referrer_named_by_an_alias_is_paid_on_its_member_and_a_malformed_one_is_refused() {
    // GIVEN a member app-hana whose email is hana@example.com
    let shop = Shop::start("referral-alias");
    shop.import_member("app-hana", "hana@example.com");
    // WHEN a referral names a referrer with the key separator '#', and another names the
    // referrer by email, and that new member buys
    let (status, problem) = shop.call(
        "POST",
        &format!("{P}/events"),
        Some(referral("ref-bad", "friend-b", "app#hana")),
    );
    shop.send(referral("ref-alias", "friend-a", "email:hana@example.com"));
    shop.send(pos_purchase("ref-alias-sale", "friend-a", "alias-o-1"));
    shop.settled();
    // THEN the malformed one is refused at the edge, naming the field
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["type"], "/problems/invalid-member-id");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("data.referrer"),
        "{problem}"
    );
    // AND the member the email names is paid the referrer's 3,000 points
    shop.eventually("app-hana", |v| v["balance"] == 3000);
}

#[test]
fn a_submitted_event_cannot_say_it_was_reviewed_or_replayed() {
    // GIVEN kr-shop with a daily limit of 1,000 points
    let shop = Shop::start("forged-review");
    shop.amend_program("[safeguards]\ndaily_points = 1000");
    // WHEN a caller submits an event that names a reviewer, and one that names a replay
    let mut reviewed = action("forged-photo", "m-forged", "photo_review");
    reviewed["reviewed_by"] = json!("ops-lead");
    let mut replayed = action("forged-review", "m-forged", "review");
    replayed["replay"] = json!(7);
    let (first, reviewed) = shop.call("POST", &format!("{P}/events"), Some(reviewed));
    let (second, replayed) = shop.call("POST", &format!("{P}/events"), Some(replayed));
    shop.settled();
    // THEN both are refused with the field named, and the member has nothing
    assert_eq!((first, second), (400, 400), "{reviewed} {replayed}");
    assert!(
        reviewed["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("reviewed_by"),
        "{reviewed}"
    );
    assert!(
        replayed["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("replay"),
        "{replayed}"
    );
    assert_eq!(shop.member("m-forged")["balance"].as_i64(), Some(0));
    let (status, ledger) = shop.call("GET", &format!("{P}/members/m-forged/ledger"), None);
    assert_eq!(status, 404, "no account was opened: {ledger}");
}

#[test]
fn events_applied_at_a_resume_are_counted_towards_the_day_but_never_held_again() {
    // GIVEN a daily limit of 1,000 points, and a member suspended while three reviews of 500
    // points each arrive
    let shop = Shop::start("resume-limit");
    shop.amend_program("[safeguards]\ndaily_points = 1000");
    shop.give(&["m-back"], 10);
    let (status, _) = shop.call(
        "POST",
        &format!("{P}/members/m-back/suspend"),
        Some(json!({"reason": "checking"})),
    );
    assert_eq!(status, 200);
    for id in ["back-1", "back-2", "back-3"] {
        shop.send(action(id, "m-back", "review"));
    }
    shop.settled();
    // WHEN an operator resumes the member, applying them
    let (status, resumed) = shop.call(
        "POST",
        &format!("{P}/members/m-back/resume"),
        Some(json!({"reason": "cleared"})),
    );
    assert_eq!(
        (status, resumed["applied"].as_i64()),
        (200, Some(3)),
        "{resumed}"
    );
    // THEN all three are applied: the operator decided on them, and none waits for review
    shop.eventually("m-back", |v| v["balance"] == 1510);
    shop.settled();
    assert_eq!(shop.get(&format!("{P}/reviews"))["events"], json!([]));
    // AND the day's count includes them: a fourth review today is held
    shop.send(action("back-4", "m-back", "review"));
    shop.settled();
    assert_eq!(shop.member("m-back")["balance"].as_i64(), Some(1510));
    assert_eq!(
        shop.get(&format!("{P}/reviews"))["events"][0]["id"],
        "back-4"
    );
}

#[test]
fn earnings_over_the_daily_limit_wait_for_review_and_large_adjustments_for_a_second_operator() {
    // GIVEN kr-shop with a daily limit of 1,000 points and approval above 10,000
    let shop = Shop::start("safeguards");
    shop.amend_program(
        "[safeguards]\ndaily_points = 1000\nadjustment_approval_above = 10000\noperator_daily_points = 60000",
    );
    // WHEN a member is rewarded 500 and then 1,000 more on one day
    shop.send(action("fast-review", "m-fast", "review"));
    shop.send(action("fast-photo", "m-fast", "photo_review"));
    shop.settled();
    // THEN the second is held with its reason and the member has 500
    assert_eq!(shop.member("m-fast")["balance"].as_i64(), Some(500));
    let held = shop.get(&format!("{P}/reviews"));
    assert_eq!(held["events"][0]["id"], "fast-photo", "{held}");
    assert!(held["events"][0]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("above the daily limit of 1000"));
    // WHEN an operator releases it, twice
    let (first, _) = shop.call("POST", &format!("{P}/reviews/fast-photo/release"), None);
    let (second, gone) = shop.call("POST", &format!("{P}/reviews/fast-photo/release"), None);
    // THEN it is applied once
    assert_eq!((first, second), (202, 404), "{gone}");
    shop.eventually("m-fast", |v| v["balance"] == 1500);
    shop.settled();
    assert_eq!(shop.member("m-fast")["balance"].as_i64(), Some(1500));
    assert_eq!(shop.get(&format!("{P}/reviews"))["events"], json!([]));

    // WHEN an operator adjusts a member by 50,000 points
    let (status, asked) = shop.call(
        "POST",
        &format!("{P}/members/m-fast/adjustments"),
        Some(json!({"points": 50_000, "reason": "store credit for a lost parcel"})),
    );
    // THEN it waits for approval, and nothing is credited yet
    assert_eq!(
        (status, asked["status"].as_str()),
        (202, Some("pending_approval")),
        "{asked}"
    );
    let id = asked["id"].as_str().expect("id").to_string();
    assert_eq!(shop.member("m-fast")["balance"].as_i64(), Some(1500));
    assert_eq!(
        shop.get(&format!("{P}/approvals"))["adjustments"][0]["id"],
        id
    );
    // WHEN the same operator approves it THEN that is refused
    let approve = format!("{P}/approvals/{id}/approve");
    let (status, same) = shop.call("POST", &approve, None);
    assert_eq!(
        (status, same["type"].as_str()),
        (403, Some("/problems/same-operator"))
    );
    // WHEN a second operator approves it, twice THEN it is applied once
    let second = common::token(&["--admin", "--operator", "lead-2"]);
    let (status, approved) = shop.server.call("POST", &approve, &second, &[], None);
    assert_eq!(status, 201, "{approved}");
    assert_eq!(approved["balance"].as_i64(), Some(51_500));
    let (status, _) = shop.server.call("POST", &approve, &second, &[], None);
    assert_eq!(status, 404);
    assert_eq!(shop.member("m-fast")["balance"].as_i64(), Some(51_500));
    // AND a small adjustment needs no approval
    let (status, small) = shop.call(
        "POST",
        &format!("{P}/members/m-fast/adjustments"),
        Some(json!({"points": -500, "reason": "duplicate review"})),
    );
    assert_eq!(status, 201, "{small}");
    // AND the operator who asked for 50,500 today cannot adjust 10,000 more, another can
    let ten = json!({"points": 10_000, "reason": "goodwill"});
    let adjust = format!("{P}/members/m-fast/adjustments");
    let (status, over) = shop.call("POST", &adjust, Some(ten.clone()));
    assert_eq!(
        (status, over["type"].as_str()),
        (409, Some("/problems/operator-daily-limit")),
        "{over}"
    );
    let (status, _) = shop
        .server
        .call("POST", &adjust, &second, &[], Some(&ten.to_string()));
    assert_eq!(status, 201);
}

#[test]
fn concurrent_adjustments_never_take_an_operator_past_the_daily_limit() {
    // GIVEN kr-shop that lets an operator adjust 30,000 points a day
    let shop = Shop::start("operator-race");
    shop.amend_program("[safeguards]\noperator_daily_points = 30000");
    // WHEN one operator sends twelve adjustments of 5,000 at once, each for another member
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let shop = &shop;
                scope.spawn(move || {
                    let body = json!({"points": 5_000, "reason": "goodwill"});
                    shop.call(
                        "POST",
                        &format!("{P}/members/m-race-{i}/adjustments"),
                        Some(body),
                    )
                    .0
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    // THEN six are applied and six refused for the limit
    let applied = statuses.iter().filter(|s| **s == 201).count();
    assert_eq!(applied, 6, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 6);
    // AND the members hold 30,000 points between them
    let held: i64 = (0..12)
        .map(|i| {
            shop.member(&format!("m-race-{i}"))["balance"]
                .as_i64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(held, 30_000);
}

#[test]
fn an_idempotency_key_names_one_adjustment_waiting_for_approval() {
    // GIVEN kr-shop asking a second operator to approve adjustments above 10,000
    let shop = Shop::start("approval-keys");
    shop.amend_program("[safeguards]\nadjustment_approval_above = 10000");
    let ask = |member: &str, points: i64| {
        let body = json!({"points": points, "reason": "store credit"}).to_string();
        shop.server.call(
            "POST",
            &format!("{P}/members/{member}/adjustments"),
            &shop.admin,
            &[("Idempotency-Key", "credit-1")],
            Some(&body),
        )
    };
    // WHEN an operator asks for 50,000 for m-a, asks again, then sends the key with 90,000 for m-b
    let (first, asked) = ask("m-a", 50_000);
    let (again, repeated) = ask("m-a", 50_000);
    let (reused, problem) = ask("m-b", 90_000);
    // THEN the retry gets the first answer and the reuse is 422, and only m-a's 50,000 waits
    assert_eq!((first, again), (202, 202), "{asked} {repeated}");
    assert_eq!(asked, repeated);
    assert_eq!(reused, 422, "{problem}");
    assert_eq!(problem["type"], "/problems/idempotency-key-reused");
    let waiting = shop.get(&format!("{P}/approvals"))["adjustments"].clone();
    assert_eq!(waiting.as_array().map(Vec::len), Some(1), "{waiting}");
    assert_eq!(
        (waiting[0]["member"].as_str(), waiting[0]["points"].as_i64()),
        (Some("m-a"), Some(50_000))
    );

    // WHEN a second operator approves it, and the first retries with the key
    let id = asked["id"].as_str().expect("id");
    let second = common::token(&["--admin", "--operator", "lead-2"]);
    let (status, approved) = shop.server.call(
        "POST",
        &format!("{P}/approvals/{id}/approve"),
        &second,
        &[],
        None,
    );
    assert_eq!(status, 201, "{approved}");
    let (status, retried) = ask("m-a", 50_000);
    // THEN the retry gets the approval's answer: nothing waits again, nothing is applied twice
    assert_eq!((status, &retried), (201, &approved));
    assert_eq!(ask("m-b", 90_000).0, 422);
    let waiting = shop.get(&format!("{P}/approvals"))["adjustments"].clone();
    assert_eq!(waiting.as_array().map(Vec::len), Some(0), "{waiting}");
    assert_eq!(shop.member("m-a")["balance"].as_i64(), Some(50_000));

    // WHEN another request is declined and retried with its key
    let body = json!({"points": 30_000, "reason": "store credit"}).to_string();
    let credit = || {
        shop.server.call(
            "POST",
            &format!("{P}/members/m-c/adjustments"),
            &shop.admin,
            &[("Idempotency-Key", "credit-2")],
            Some(&body),
        )
    };
    let (status, asked) = credit();
    assert_eq!(status, 202, "{asked}");
    let id = asked["id"].as_str().expect("id");
    let (status, declined) = shop.server.call(
        "POST",
        &format!("{P}/approvals/{id}/decline"),
        &second,
        &[],
        Some(&json!({"reason": "no receipt"}).to_string()),
    );
    assert_eq!(status, 200, "{declined}");
    // THEN the retry is told it was declined, and it does not wait for approval again
    let (status, retried) = credit();
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["status"], "declined", "{retried}");
    let waiting = shop.get(&format!("{P}/approvals"))["adjustments"].clone();
    assert_eq!(waiting.as_array().map(Vec::len), Some(0), "{waiting}");
    // AND the audit finds nothing wrong in what was kept
    let report = ok(&shop.loyalty(&["audit", "--json"]));
    assert_eq!(report["violations"], json!([]), "{report}");
}

/// kr-shop paying referrals and counting upgrades only once the first order is kept.
fn after_window_shop(name: &str) -> Shop {
    let shop = Shop::start(name);
    let file = include_str!("../../../examples/kr-shop.toml")
        .replace(
            "referee_points = 1000",
            "referee_points = 1000\nreward_after_return_window = true",
        )
        .replace(
            "[tier_rules]\n",
            "[tier_rules]\nupgrade_after_return_window = true\n",
        );
    let response = reqwest::blocking::Client::new()
        .put(format!("{}{P}", shop.server.base))
        .bearer_auth(&shop.admin)
        .header("Content-Type", "application/toml")
        .body(file)
        .send()
        .expect("put program");
    assert_eq!(response.status().as_u16(), 200);
    shop
}

/// A 400,000 KRW coat bought yesterday.
fn coat_yesterday(id: &str, member: &str, order: &str) -> Value {
    json!({
        "type": "purchase.completed", "version": 1, "id": id, "program": "kr-shop",
        "member": member,
        "occurred_at": (Utc::now() - chrono::Duration::days(1)).to_rfc3339_opts(SecondsFormat::Secs, true),
        "data": {"order_id": order, "currency": "KRW", "channel": "online", "shipping": "0", "tax": "0",
                 "lines": [{"line_id": "1", "sku": "COAT", "category": "apparel", "quantity": 1,
                            "unit_price": "400000", "discount": "0"}]}
    })
}

/// Runs the release job as of eight days from now (past kr-shop's return window).
fn release_after_the_window(shop: &Shop) {
    let later = (Utc::now() + chrono::Duration::days(8))
        .date_naive()
        .to_string();
    let out = shop.loyalty(&[
        "jobs",
        "run",
        "release-pending",
        "--date",
        &later,
        "--ahead",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn with_the_options_on_referrals_pay_and_tiers_rise_only_once_the_first_order_is_kept() {
    // GIVEN kr-shop paying referrals and counting upgrades only after the return window
    let shop = after_window_shop("after-window");
    // WHEN a referred member buys for 400,000 KRW (past SILVER's 300,000) yesterday
    shop.send(referral("ref-w", "friend-w", "app-ref-w"));
    shop.send(coat_yesterday("sale-w", "friend-w", "w-1"));
    shop.settled();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // THEN nobody is paid and the tier waits while the order can still be returned
    let friend = shop.member("friend-w");
    assert_eq!(
        (friend["balance"].as_i64(), friend["pending"].as_i64()),
        (Some(0), Some(4000)),
        "{friend}"
    );
    assert_eq!(friend["tier"]["id"], "WELCOME");
    assert_eq!(shop.member("app-ref-w")["balance"].as_i64(), Some(0));
    // WHEN the return window has closed and the release job runs
    release_after_the_window(&shop);
    // THEN the new member has the order's points and the welcome bonus, the referrer is paid,
    // and the tier rises
    let friend = shop.eventually("friend-w", |v| v["tier"]["id"] == "SILVER");
    assert_eq!(friend["balance"].as_i64(), Some(5000), "{friend}");
    let referrer = shop.eventually("app-ref-w", |v| v["balance"] == 3000);
    assert_eq!(referrer["pending"].as_i64(), Some(0));
}

#[test]
fn a_member_referred_by_someone_since_erased_keeps_its_bonus_and_the_erased_id_gets_nothing() {
    // GIVEN a referrer with points, and the member it referred, whose first order waits out
    // its return window
    let shop = after_window_shop("erased-referrer");
    shop.give(&["app-ref-e"], 100);
    shop.send(referral("ref-e", "friend-e", "app-ref-e"));
    shop.send(coat_yesterday("sale-e", "friend-e", "e-1"));
    shop.settled();
    // WHEN the referrer is erased
    let (status, erased) = shop.call(
        "DELETE",
        &format!("{P}/members/app-ref-e?reason=erasure%20request"),
        None,
    );
    // THEN the erasure reports the member it referred
    assert_eq!(
        (status, erased["referees"].as_i64()),
        (200, Some(1)),
        "{erased}"
    );
    // WHEN the return window has closed and the release job runs
    release_after_the_window(&shop);
    // THEN the new member has the order's points and the welcome bonus, and names no referrer
    shop.eventually("friend-e", |v| v["balance"] == 5000);
    shop.settled();
    let export = shop.get(&format!("{P}/members/friend-e/export"));
    assert_eq!(export["account"]["referred_by"], "#erased", "{export}");
    // AND no member was made again under the erased id
    let (status, _) = shop.call("GET", &format!("{P}/members/app-ref-e/export"), None);
    assert_eq!(status, 404);
}

#[test]
fn a_program_that_pays_out_at_erasure_books_the_points_as_paid_out() {
    // GIVEN kr-shop paying out an erased member's points, and a member with 1,200
    let shop = Shop::start("payout");
    shop.amend_program("[erasure]\noutstanding = \"pay_out\"");
    let (status, _) = shop.call(
        "POST",
        &format!("{P}/members/m-leaving/adjustments"),
        Some(json!({"points": 1200, "reason": "opening balance"})),
    );
    assert_eq!(status, 201);
    // WHEN the member is erased
    let (status, erased) = shop.call(
        "DELETE",
        &format!("{P}/members/m-leaving?reason=request"),
        None,
    );
    // THEN the points are paid out, not forfeited, and the liability report says so
    assert_eq!(status, 200, "{erased}");
    assert_eq!(
        (erased["paid_out"].as_i64(), erased["forfeited"].as_i64()),
        (Some(1200), Some(0))
    );
    let report = shop.get(&format!("{P}/reports/liability"));
    let month = report["movements"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .expect("a month");
    assert_eq!(
        (month["paid_out"].as_i64(), month["closing"].as_i64()),
        (Some(1200), Some(0)),
        "{month}"
    );
    let pseudonym = erased["pseudonym"].as_str().expect("pseudonym");
    let kept = shop.get(&format!("{P}/members/{pseudonym}/ledger"));
    let payout = kept["entries"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["kind"] == "payout"))
        .cloned()
        .expect("a payout entry");
    assert!(payout["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("worth 1200 KRW"));
}

#[test]
fn support_links_a_shopify_customer_and_an_app_login_to_a_member_who_then_earns_and_sees_its_points(
) {
    // GIVEN app-minji with 1,000 points, m-other, and a POS customer credited under its own id
    let shop = Shop::start("aliases");
    let adjust = |member: &str, points: i64| {
        let (status, answer) = shop.call(
            "POST",
            &format!("{P}/members/{member}/adjustments"),
            Some(json!({"points": points, "reason": "opening balance"})),
        );
        assert_eq!(status, 201, "{answer}");
    };
    adjust("app-minji", 1_000);
    adjust("m-other", 10);
    shop.send(pos_purchase("pos-own-1", "pos:010-5555-0000", "store-7"));
    shop.eventually("pos:010-5555-0000", |v| v["pending"] == 590);
    let link = |member: &str, body: Value| {
        shop.call("POST", &format!("{P}/members/{member}/aliases"), Some(body))
    };

    // WHEN support links the Shopify customer 7001234 and the app login sub-minji to app-minji
    let (status, shopify) = link("app-minji", json!({"kind": "shopify", "value": "7001234"}));
    let (login_status, login) = link("app-minji", json!({"kind": "app", "value": "sub-minji"}));
    // THEN both are linked now
    assert_eq!(status, 201, "{shopify}");
    assert_eq!(
        shopify,
        json!({"member": "app-minji", "kind": "shopify", "value": "7001234", "linked": true})
    );
    assert_eq!(login_status, 201, "{login}");
    // AND the customer's next Shopify order earns on app-minji, not on a new account
    shop.shopify_paid();
    let minji = shop.eventually("app-minji", |v| v["pending"] == 1_000);
    assert_eq!(minji["balance"].as_i64(), Some(1_000));
    assert_eq!(shop.member("shopify:7001234")["member"], "app-minji");
    let conn = rusqlite::Connection::open(&shop.db).expect("db");
    let accounts: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM accounts WHERE member = 'shopify:7001234'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(accounts, 0, "no account under the Shopify id");
    // AND the app's token of that login sees app-minji's points
    let me = common::token(&["--member", "sub-minji"]);
    let (status, view) = shop.server.call("GET", &format!("{P}/me"), &me, &[], None);
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        (view["member"].as_str(), view["balance"].as_i64()),
        (Some("app-minji"), Some(1_000))
    );

    // WHEN the same link is asked for again, by the member's id or by the linked identity
    let (again, repeated) = link("app-minji", json!({"kind": "shopify", "value": "7001234"}));
    let (by_alias, aliased) = link(
        "shopify:7001234",
        json!({"kind": "app", "value": "sub-minji"}),
    );
    // THEN nothing changes
    assert_eq!((again, repeated["linked"].as_bool()), (200, Some(false)));
    assert_eq!(
        (by_alias, aliased["member"].as_str()),
        (200, Some("app-minji"))
    );

    // WHEN links that would take an identity from its member are asked for
    let refused = [
        link("m-other", json!({"kind": "shopify", "value": "7001234"})),
        // the order linked minji@example.com to app-minji; the email is compared lower-cased
        link(
            "m-other",
            json!({"kind": "email", "value": " Minji@Example.com"}),
        ),
        link(
            "app-minji",
            json!({"kind": "pos", "value": "010-5555-0000"}),
        ),
    ];
    // THEN each is a conflict that says what to do, and nothing moves
    let types: Vec<&str> = refused
        .iter()
        .map(|(status, problem)| {
            assert_eq!(*status, 409, "{problem}");
            problem["type"].as_str().unwrap_or_default()
        })
        .collect();
    assert_eq!(
        types,
        [
            "/problems/identity-linked",
            "/problems/identity-linked",
            "/problems/identity-has-account"
        ]
    );
    assert!(
        refused[2].1["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("merge"),
        "{}",
        refused[2].1
    );
    assert_eq!(shop.member("shopify:7001234")["member"], "app-minji");
    assert_eq!(
        shop.member("pos:010-5555-0000")["pending"].as_i64(),
        Some(590)
    );
    assert_eq!(shop.member("m-other")["balance"].as_i64(), Some(10));

    // WHEN a link is malformed, names the engine's own kinds, or names no member
    let bad = [
        json!({"kind": "order", "value": "shopify#1001"}),
        json!({"kind": "redemption", "value": "r-1"}),
        json!({"kind": "Shopify", "value": "7002"}),
        json!({"kind": "email", "value": "not-an-email"}),
        json!({"kind": "shopify", "value": "70#02"}),
        json!({"kind": "shopify", "value": "x".repeat(125)}),
        json!({"kind": "shopify"}),
        json!({"kind": "shopify", "value": "7002", "reason": "extra"}),
    ];
    // THEN each is 400 invalid-identity and nothing is linked
    for body in bad {
        let (status, problem) = link("m-other", body.clone());
        assert_eq!(
            (status, problem["type"].as_str()),
            (400, Some("/problems/invalid-identity")),
            "{body}: {problem}"
        );
    }
    let (status, unknown) = link("m-nobody", json!({"kind": "shopify", "value": "7002"}));
    assert_eq!(
        (status, unknown["type"].as_str()),
        (404, Some("/problems/unknown-member"))
    );
    let links: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM aliases WHERE value = '7002' OR kind IN ('order', 'redemption') AND value IN ('shopify#1001', 'r-1')",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(links, 0);

    // WHEN support links an email with the CLI, and then the Shopify customer to m-other
    let linked = ok(&shop.loyalty(&[
        "member",
        "link",
        "app-minji",
        "--kind",
        "email",
        "--value",
        "Minji.Kim@Example.com",
        "--program",
        "kr-shop",
    ]));
    let taken = shop.loyalty(&[
        "member",
        "link",
        "m-other",
        "--kind",
        "shopify",
        "--value",
        "7001234",
        "--program",
        "kr-shop",
    ]);
    // THEN the email is linked lower-cased, and the customer stays app-minji's
    assert_eq!(
        linked,
        json!({"member": "app-minji", "kind": "email", "value": "minji.kim@example.com", "linked": true})
    );
    assert_eq!(
        shop.member("email:minji.kim@example.com")["member"],
        "app-minji"
    );
    assert!(!taken.status.success());
    assert!(
        String::from_utf8_lossy(&taken.stderr).contains("linked to app-minji"),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
}

#[test]
fn a_suspended_member_is_resumed_before_it_is_merged_so_its_waiting_events_are_not_stranded() {
    // GIVEN m-sus, suspended with a purchase waiting, and m-keep
    let shop = Shop::start("merge-suspended");
    let call =
        |path: &str, body: Value| shop.call("POST", &format!("{P}/members/{path}"), Some(body));
    assert_eq!(
        call("m-keep/adjustments", json!({"points": 100, "reason": "x"})).0,
        201
    );
    assert_eq!(
        call("m-sus/adjustments", json!({"points": 100, "reason": "x"})).0,
        201
    );
    assert_eq!(call("m-sus/suspend", json!({"reason": "check"})).0, 200);
    shop.send(pos_purchase("sus-merge-1", "m-sus", "sm-1"));
    shop.settled();
    // WHEN it is merged into m-keep
    let (status, refused) = call(
        "m-keep/merge",
        json!({"from": "m-sus", "reason": "same person"}),
    );
    // THEN the merge is refused, saying to resume first, and nothing moved
    assert_eq!(
        (status, refused["type"].as_str()),
        (409, Some("/problems/merge-refused")),
        "{refused}"
    );
    assert!(
        refused["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("resume"),
        "{refused}"
    );
    assert_eq!(shop.member("m-keep")["balance"].as_i64(), Some(100));
    // WHEN it is resumed, then merged
    let (status, resumed) = call("m-sus/resume", json!({"reason": "cleared"}));
    assert_eq!(
        (status, resumed["applied"].as_i64()),
        (200, Some(1)),
        "{resumed}"
    );
    shop.eventually("m-sus", |v| v["pending"] == 590);
    let (status, merged) = call(
        "m-keep/merge",
        json!({"from": "m-sus", "reason": "same person"}),
    );
    // THEN the survivor holds the purchase that waited
    assert_eq!(status, 200, "{merged}");
    let keep = shop.member("m-keep");
    assert_eq!(
        (keep["balance"].as_i64(), keep["pending"].as_i64()),
        (Some(200), Some(590))
    );
}
