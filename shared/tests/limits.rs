//! The documented limits, driven at and beyond their values: nothing overflows (these tests run
//! with overflow checks on), what is beyond a limit is refused, and Σ ledger == balance holds.

mod common;

use common::*;
use loyalty_core::domain::earning::purchase_points;
use loyalty_core::domain::limits::{
    check_account, MAX_AMOUNT, MAX_BALANCE, MAX_CATEGORY_CHARS, MAX_KEPT_CATEGORIES, MAX_LINES,
    MAX_POINTS, MAX_QUANTITY,
};
use loyalty_core::domain::{CampaignEffect, PurchaseLine};
use proptest::prelude::*;

/// Points at, around and far beyond the limit of one entry.
fn points() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(MAX_POINTS),
        Just(-MAX_POINTS),
        Just(MAX_POINTS + 1),
        Just(-(MAX_POINTS + 1)),
        Just(i64::MAX),
        Just(i64::MIN),
        Just(1),
        -MAX_POINTS..=MAX_POINTS,
    ]
}

fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0),
        Just(MAX_AMOUNT),
        Just(MAX_AMOUNT + 1),
        Just(i64::MAX),
        0..=MAX_AMOUNT,
    ]
}

fn quantity() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(1),
        Just(MAX_QUANTITY),
        Just(MAX_QUANTITY + 1),
        Just(i64::MAX),
        1..=MAX_QUANTITY,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    #[test]
    fn adjustments_at_and_beyond_the_limits_never_overflow(
        start in prop_oneof![Just(0usize), Just(998usize), Just(1_000usize), 0usize..1_000],
        steps in prop::collection::vec(points(), 1..60),
    ) {
        // GIVEN a member credited `start` times the largest adjustment (up to the balance
        // limit), then adjustments at, around and beyond the limits
        let program = kr();
        let mut member = Member::new(&program, t0());
        let steps: Vec<i64> = std::iter::repeat_n(MAX_POINTS, start).chain(steps).collect();
        for (i, points) in steps.iter().enumerate() {
            // WHEN each is applied
            let at = t0() + days(0);
            let outcome = member
                .account
                .adjust(&program, *points, "limit test", &ctx(&format!("a-{i}"), at, at));
            match outcome {
                Ok(change) => {
                    // THEN what is accepted is within the limits
                    prop_assert!(points.abs() <= MAX_POINTS);
                    prop_assert!(check_account(&change.account).is_ok());
                    member.commit(change);
                }
                // AND what is refused is beyond a limit, or spends more than there is
                Err(e) => prop_assert!(
                    points.unsigned_abs() > MAX_POINTS as u64
                        || member.account.balance + points > MAX_BALANCE
                        || member.account.balance + points < 0,
                    "refused {points}: {e}"
                ),
            }
            // AND the ledger still explains the balance exactly
            member.assert_consistent();
            prop_assert!(member.account.balance <= MAX_BALANCE);
        }
    }

    #[test]
    fn purchases_at_and_beyond_the_limits_earn_within_bounds(
        lines in prop::collection::vec((quantity(), amount(), amount()), 1..6),
        tier_bp in prop_oneof![Just(10_000u32), Just(1_000_000u32)],
        campaign_bp in prop_oneof![Just(10_000u32), Just(1_000_000u32)],
    ) {
        // GIVEN a purchase whose quantities and prices are at or beyond their limits, and the
        // largest multipliers a program and a campaign may set
        let program = kr();
        let lines: Vec<PurchaseLine> = lines
            .iter()
            .enumerate()
            .map(|(i, (q, price, discount))| PurchaseLine {
                discount: (*discount).min(*price),
                ..line(&format!("l{i}"), *q, *price)
            })
            .collect();
        let within = lines.iter().all(|l| {
            i128::from(l.quantity) * i128::from(l.unit_price) <= i128::from(MAX_AMOUNT)
        });
        let order = purchase("o-1", program.currency, lines);
        let campaigns = [CampaignEffect::Multiplier {
            campaign: "c".into(),
            basis_points: campaign_bp,
        }];
        // WHEN its points are computed
        let earned = purchase_points(&program.purchase, program.currency, &order, tier_bp, &campaigns);
        // THEN a line beyond the limit is refused, and an order within it earns at most the
        // points of one entry
        match earned {
            Ok(earned) => {
                prop_assert!(within);
                prop_assert!(earned.points <= MAX_POINTS);
                prop_assert!(earned.points >= 0);
            }
            Err(e) => prop_assert!(
                !within || e.to_string().contains("limit"),
                "refused: {e}"
            ),
        }
    }
}

#[test]
fn the_largest_order_earns_or_is_refused_without_overflow() {
    // GIVEN an order of the most lines, each at the largest amount
    let program = kr();
    let lines = (0..MAX_LINES)
        .map(|i| line(&format!("l{i}"), 1, MAX_AMOUNT))
        .collect();
    let order = purchase("o-1", program.currency, lines);
    // WHEN its points are computed with the largest multiplier
    let earned = purchase_points(&program.purchase, program.currency, &order, 1_000_000, &[]);
    // THEN it is refused for earning too many points, not wrapped
    let e = earned.expect_err("beyond the points of one entry");
    assert!(e.to_string().contains("above the limit"), "{e}");
}

#[test]
fn an_account_keeps_a_bounded_number_of_short_categories() {
    // GIVEN a shop that names a category per product, one of them a long path
    let program = kr();
    let now = t0();
    let mut member = Member::new(&program, now);
    let long = "x".repeat(MAX_CATEGORY_CHARS + 1);
    // WHEN a member buys 300 products of different categories, in three orders of 100, and
    // one of the long one
    for order in 0..3 {
        let mut lines: Vec<PurchaseLine> = (0..100)
            .map(|i| {
                let mut l = line(&format!("l{i}"), 1, 1_000);
                l.category = format!("category-{order}-{i}");
                l
            })
            .collect();
        let mut odd = line("long", 1, 1_000);
        odd.category = long.clone();
        lines.push(odd);
        let bought = purchase(&format!("o-{order}"), program.currency, lines);
        let out = member
            .account
            .earn_purchase(
                &program,
                None,
                &bought,
                &[],
                &ctx(&format!("ev-{order}"), now, now),
            )
            .unwrap();
        member.commit(out.change);
    }
    // THEN the account keeps the first 200 categories and none longer than the limit
    let kept = &member.account.categories;
    assert_eq!(kept.len(), MAX_KEPT_CATEGORIES);
    assert!(kept.contains("category-0-0") && kept.contains("category-1-99"));
    assert!(!kept.iter().any(|c| c.chars().count() > MAX_CATEGORY_CHARS));
    member.assert_consistent();
}
