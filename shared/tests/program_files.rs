//! Program files: the examples load with the documented rules, and mistakes are reported with
//! the field they concern.

use chrono::{Duration, TimeZone, Utc};
use loyalty_core::domain::program::{
    Downgrade, InsufficientBalance, Measure, Period, Program, ProgramError, Review,
    TimeBoundsError, Window,
};
use loyalty_core::domain::Currency;

const KR: &str = include_str!("../../examples/kr-shop.toml");
const US: &str = include_str!("../../examples/us-shop.toml");

fn invalid(text: &str) -> ProgramError {
    Program::from_toml(text).expect_err("the file should be refused")
}

fn fields(err: &ProgramError) -> Vec<String> {
    err.fields().iter().map(|f| f.field.clone()).collect()
}

#[test]
fn kr_shop_loads_with_the_reference_rules() {
    // GIVEN the Korean example WHEN it is loaded
    let p = Program::from_toml(KR).unwrap();
    // THEN every documented rule is there, in minor units
    assert_eq!(
        (p.id.as_str(), p.currency, p.time_zone),
        ("kr-shop", Currency::KRW, chrono_tz::Asia::Seoul)
    );
    assert_eq!((p.purchase.points, p.purchase.per_minor), (1, 100));
    assert_eq!(p.purchase.pending, Duration::days(7));
    assert_eq!(p.expiry_months, 12);
    assert_eq!(p.backdating_limit, Duration::days(90));
    assert_eq!(p.insufficient_balance, InsufficientBalance::AllowNegative);
    let tiers: Vec<(&str, i64, u32)> = p
        .tiers
        .iter()
        .map(|t| (t.id.as_str(), t.threshold, t.multiplier_bp))
        .collect();
    assert_eq!(
        tiers,
        vec![
            ("WELCOME", 0, 10_000),
            ("SILVER", 300_000, 12_000),
            ("GOLD", 1_000_000, 15_000),
            ("VIP", 3_000_000, 20_000)
        ]
    );
    let rules = &p.tier_rules;
    assert_eq!(
        (rules.measure, rules.window, rules.review, rules.downgrade),
        (
            Measure::Spend,
            Window::Rolling12Months,
            Review::Anniversary,
            Downgrade::OneLevel
        )
    );
    assert_eq!(p.actions["signup"].points, 1_000);
    assert_eq!(p.actions["signup"].limit, Some((1, Period::Lifetime)));
    assert_eq!(p.actions["review"].limit, Some((5, Period::Month)));
    assert_eq!(p.actions["photo_review"].points, 1_000);
    assert_eq!(p.actions["birthday"].limit, Some((1, Period::Year)));
    let referral = p.referral.as_ref().unwrap();
    assert_eq!(
        (referral.referrer_points, referral.referee_points),
        (3_000, 1_000)
    );
    assert_eq!(
        p.reward("coupon-5000").map(|r| (r.cost, r.amount_minor)),
        Some((5_000, Some(5_000)))
    );
    assert_eq!(p.reward("free-shipping").map(|r| r.cost), Some(3_000));
    assert_eq!(
        p.reward("gold-gift")
            .and_then(|r| r.min_tier.clone())
            .as_deref(),
        Some("GOLD")
    );
    let pwp = p.pay_with_points.unwrap();
    assert_eq!((pwp.points, pwp.value_minor, pwp.min_points), (1, 1, 1_000));
}

#[test]
fn a_birthday_or_anniversary_without_a_limit_pays_once_a_year_unless_said_otherwise() {
    // GIVEN kr-shop with its birthday's limit left out, an anniversary without one, and a
    // custom action without one
    let file = KR.replace("limit = { count = 1, per = \"year\" }\n", "")
        + "\n[actions.anniversary]\npoints = 500\n\n[custom_actions.visit]\npoints = 10\n";
    let p = Program::from_toml(&file).unwrap();
    // THEN the two days pay once a year, and the custom action without a limit
    assert_eq!(p.actions["birthday"].limit, Some((1, Period::Year)));
    assert_eq!(p.actions["anniversary"].limit, Some((1, Period::Year)));
    assert_eq!(p.actions["visit"].limit, None);
    // AND a birthday said "unlimited" is
    let unlimited = KR.replace(
        "limit = { count = 1, per = \"year\" }\n",
        "limit = \"unlimited\"\n",
    );
    let p = Program::from_toml(&unlimited).unwrap();
    assert_eq!(p.actions["birthday"].limit, None);
}

#[test]
fn us_shop_loads_with_its_own_rules() {
    // GIVEN the US example WHEN it is loaded THEN dollars are cents and the other policies apply
    let p = Program::from_toml(US).unwrap();
    assert_eq!(
        (p.currency, p.time_zone),
        (Currency::USD, chrono_tz::America::New_York)
    );
    assert_eq!(p.purchase.per_minor, 100);
    assert_eq!(p.purchase.pending, Duration::days(30));
    assert_eq!(p.expiry_months, 18);
    let thresholds: Vec<i64> = p.tiers.iter().map(|t| t.threshold).collect();
    assert_eq!(thresholds, vec![0, 35_000, 100_000]);
    assert_eq!(p.tier_rules.window, Window::CalendarYear);
    assert_eq!(p.tier_rules.downgrade, Downgrade::Recompute);
    assert_eq!(p.insufficient_balance, InsufficientBalance::FloorAtZero);
    assert_eq!(
        p.reward("ten-off").and_then(|r| r.amount_minor),
        Some(1_000)
    );
    assert_eq!(p.actions["review"].limit, Some((10, Period::Year)));
    let pwp = p.pay_with_points.unwrap();
    assert_eq!(
        (pwp.points, pwp.value_minor, pwp.min_points),
        (100, 100, 500)
    );
}

#[test]
fn a_tier_threshold_out_of_order_names_the_field() {
    // GIVEN kr-shop with GOLD's threshold below SILVER's
    let text = KR.replace("threshold = \"1000000\"", "threshold = \"200000\"");
    // WHEN it is loaded THEN the error says exactly which field and why
    let err = invalid(&text);
    assert!(
        err.to_string()
            .contains("tiers[2].threshold must be greater than tiers[1].threshold"),
        "{err}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    // GIVEN a file with a bad currency and a bad time zone
    let text = KR
        .replace("\"KRW\"", "\"KRX\"")
        .replace("Asia/Seoul", "Asia/Nowhere");
    // WHEN it is loaded THEN both fields are named
    let err = invalid(&text);
    let named = fields(&err);
    assert!(named.contains(&"currency".to_string()), "{named:?}");
    assert!(named.contains(&"time_zone".to_string()), "{named:?}");
}

#[test]
fn other_mistakes_name_their_fields() {
    // GIVEN files each broken in one place
    let cases = [
        (
            KR.replace("threshold = \"0\"", "threshold = \"10\""),
            "tiers[0].threshold",
        ),
        (
            KR.replace("min_tier = \"GOLD\"", "min_tier = \"PLATINUM\""),
            "rewards[2].min_tier",
        ),
        (
            KR.replace("[actions.signup]", "[actions.dance]"),
            "actions.dance",
        ),
        (
            KR.replace("per = \"100\"", "per = \"100.5\""),
            "purchase.per",
        ),
        (
            KR.replace("limit = \"once\"", "limit = \"twice\""),
            "actions.signup.limit",
        ),
        (KR.replace("amount = \"5000\"\n", ""), "rewards[0].amount"),
        (
            KR.replace("multiplier_bp = 12000", "multiplier_bp = 2000000"),
            "tiers[1].multiplier_bp",
        ),
        (
            KR.replace("id = \"coupon-5000\"", "id = \"free-shipping\""),
            "rewards[1].id",
        ),
        // Day counts whose dates would pass the calendar's end (a panic on every commit)
        (
            KR.replace("valid_days = 30", "valid_days = 100000000"),
            "coupons.valid_days",
        ),
        (
            KR.replace("expiring_days = 30", "expiring_days = 100000000"),
            "notices.expiring_days",
        ),
        (
            KR.replace("downgrade_days = 30", "downgrade_days = 3651"),
            "notices.downgrade_days",
        ),
    ];
    for (text, field) in cases {
        // WHEN each is loaded THEN the error names the field
        let err = invalid(&text);
        assert!(
            fields(&err).contains(&field.to_string()),
            "{field} not in {err}"
        );
    }
}

#[test]
fn a_key_missing_or_misspelt_is_named_and_bad_syntax_is_a_syntax_error() {
    // GIVEN a misspelt key, a section left out, a key left out of a section, and broken TOML
    let misspelt = KR.replace("pending_days = 7", "pending_dayz = 7");
    let start = KR.find("[tier_rules]").unwrap();
    let end = start + KR[start..].find("\n[").unwrap() + 1;
    let no_tier_rules = format!("{}{}", &KR[..start], &KR[end..]);
    let no_months = KR
        .replace("months = 12           #", "#")
        .replace("[expiry]", "[expiry]  # a note");
    let tier_without_threshold = KR.replace("threshold = \"300000\"", "");
    // THEN each file that is TOML is refused by the field it lacks or misspells (before: "not
    // valid TOML" for a file that was), and broken TOML as a syntax error
    for (text, field, says) in [
        (misspelt.as_str(), "purchase.pending_dayz", "is not a field"),
        (no_tier_rules.as_str(), "tier_rules", "is required"),
        (no_months.as_str(), "expiry.months", "is required"),
        (
            tier_without_threshold.as_str(),
            "tiers[1].threshold",
            "is required",
        ),
    ] {
        let err = invalid(text);
        let named = err.fields();
        assert_eq!(named.len(), 1, "{err}");
        assert_eq!(named[0].field, field, "{err}");
        assert!(named[0].message.starts_with(says), "{err}");
    }
    assert!(matches!(invalid("id = "), ProgramError::Syntax { .. }));
    // AND the same for JSON: a field missing is named, broken JSON is a syntax error
    let json: serde_json::Value = toml::from_str(KR).unwrap();
    let mut short = json.clone();
    short.as_object_mut().unwrap().remove("tier_rules");
    let err = Program::from_json(&short.to_string()).unwrap_err();
    assert_eq!(fields(&err), ["tier_rules"], "{err}");
    let mut nested = json.clone();
    nested["expiry"].as_object_mut().unwrap().remove("months");
    let err = Program::from_json(&nested.to_string()).unwrap_err();
    assert_eq!(fields(&err), ["expiry.months"], "{err}");
    assert!(matches!(
        Program::from_json("{\"id\": "),
        Err(ProgramError::Syntax { .. })
    ));
}

#[test]
fn json_is_accepted_and_means_the_same() {
    // GIVEN kr-shop WHEN its file is written as JSON and read back
    let p = Program::from_toml(KR).unwrap();
    let json = serde_json::to_string(&p.file).unwrap();
    // THEN it is the same program
    assert_eq!(Program::from_json(&json).unwrap(), p);
}

#[test]
fn events_outside_the_time_bounds_are_refused() {
    // GIVEN kr-shop (backdating limit 90 days) and a fixed now
    let p = Program::from_toml(KR).unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
    // THEN up to 5 minutes ahead and 90 days back are accepted, beyond either is refused
    assert!(p.check_occurred_at(now + Duration::minutes(4), now).is_ok());
    assert!(matches!(
        p.check_occurred_at(now + Duration::minutes(6), now),
        Err(TimeBoundsError::InFuture { .. })
    ));
    assert!(p.check_occurred_at(now - Duration::days(89), now).is_ok());
    assert!(matches!(
        p.check_occurred_at(now - Duration::days(91), now),
        Err(TimeBoundsError::TooOld { .. })
    ));
}

#[test]
fn a_coupon_is_good_for_the_whole_of_its_last_day_in_the_program_s_zone() {
    // GIVEN kr-shop (Seoul, coupons valid 30 days) and us-shop (its own zone and days)
    let kr = Program::from_toml(KR).unwrap();
    assert_eq!(kr.coupon_valid_days, 30);
    // WHEN a coupon is issued at 15:00 in Seoul on 6 December, or at 23:30 that day
    let afternoon = Utc.with_ymd_and_hms(2026, 12, 6, 6, 0, 0).unwrap();
    let late = Utc.with_ymd_and_hms(2026, 12, 6, 14, 30, 0).unwrap();
    // THEN both are good until the last second of 5 January in Seoul (14:59:59 UTC)
    let last_second = Utc.with_ymd_and_hms(2027, 1, 5, 14, 59, 59).unwrap();
    assert_eq!(kr.coupon_expiry(afternoon), last_second);
    assert_eq!(kr.coupon_expiry(late), last_second);
    // AND one issued a minute after midnight in Seoul ends a day later
    let next_day = Utc.with_ymd_and_hms(2026, 12, 6, 15, 1, 0).unwrap();
    assert_eq!(kr.coupon_expiry(next_day), last_second + Duration::days(1));
    // AND a zone with daylight saving ends the day at its own midnight
    let us = Program::from_toml(US).unwrap();
    let issued = Utc.with_ymd_and_hms(2026, 3, 1, 18, 0, 0).unwrap();
    let ends = us.coupon_expiry(issued).with_timezone(&us.time_zone);
    assert_eq!(
        (ends.date_naive(), ends.format("%H:%M:%S").to_string()),
        (
            chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap()
                + Duration::days(i64::from(us.coupon_valid_days)),
            "23:59:59".to_string()
        )
    );
}

#[test]
fn a_points_threshold_takes_any_number_a_balance_can_hold() {
    // GIVEN kr-shop measured in points, with its top tier at 4,294,967,296 points (past 32 bits)
    let points = KR.replace("measure = \"spend\"", "measure = \"points\"");
    let big = points.replace("threshold = \"3000000\"", "threshold = \"4294967296\"");
    // WHEN it is loaded THEN the threshold is kept (before: "must be a whole, non-negative
    // number of points", of a whole non-negative number)
    let p = Program::from_toml(&big).unwrap();
    assert_eq!(p.tiers[3].threshold, 4_294_967_296);
    // AND past the balance bound, as text or as a number, it is refused with the bound
    for over in ["\"1000000000000001\"", "1000000000000001"] {
        let text = points.replace("threshold = \"3000000\"", &format!("threshold = {over}"));
        let err = invalid(&text);
        assert!(
            err.to_string().contains(
                "tiers[3].threshold must be a whole number of points from 0 to 1000000000000000"
            ),
            "{err}"
        );
    }
}
