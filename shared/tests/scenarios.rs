//! The loyalty rules, one scenario each, on the example programs.

mod common;

use common::*;
use loyalty_core::domain::tiers::measure_at;
use loyalty_core::domain::{AccountError, Currency, EntryKind, RefundLine, RefundScope, Reversal};

fn refund(
    order: &str,
    refund_id: &str,
    lines: &[(&str, i64)],
    at: chrono::DateTime<chrono::Utc>,
) -> Reversal {
    Reversal {
        order_id: order.into(),
        refund_id: refund_id.into(),
        scope: RefundScope::lines(
            lines
                .iter()
                .map(|(l, q)| RefundLine {
                    line_id: (*l).into(),
                    quantity: *q,
                    sku: String::new(),
                })
                .collect(),
        ),
        event_id: format!("ev-{refund_id}"),
        occurred_at: at,
    }
}

/// A refund of `amount` of the order's `total`, known by amount alone.
fn money(
    order: &str,
    refund_id: &str,
    amount: i64,
    total: i64,
    at: chrono::DateTime<chrono::Utc>,
) -> Reversal {
    Reversal {
        order_id: order.into(),
        refund_id: refund_id.into(),
        scope: RefundScope::Share { amount, total },
        event_id: format!("ev-{refund_id}"),
        occurred_at: at,
    }
}

fn cancel(order: &str, at: chrono::DateTime<chrono::Utc>) -> Reversal {
    Reversal {
        order_id: order.into(),
        refund_id: "cancel".into(),
        scope: RefundScope::Rest,
        event_id: "ev-cancel".into(),
        occurred_at: at,
    }
}

/// kr-shop with `find` in its file replaced by `with`.
fn kr_with(find: &str, with: &str) -> loyalty_core::domain::Program {
    let text = include_str!("../../examples/kr-shop.toml").replace(find, with);
    loyalty_core::domain::Program::from_toml(&text).unwrap()
}

/// A member who bought order o-1: line a (3 x 10,000, 300 points) and line b (20,000, 200).
fn bought_a_and_b(p: &loyalty_core::domain::Program, now: chrono::DateTime<chrono::Utc>) -> Member {
    let mut m = Member::new(p, now);
    let lines = vec![line("a", 3, 10_000), line("b", 1, 20_000)];
    buy(&mut m, p, "o-1", lines, now, now);
    m
}

/// Earns a purchase for `m` and stores its order record.
fn buy(
    m: &mut Member,
    program: &loyalty_core::domain::Program,
    id: &str,
    lines: Vec<loyalty_core::domain::PurchaseLine>,
    occurred: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) {
    let p = purchase(id, program.currency, lines);
    let out = m
        .account
        .earn_purchase(
            program,
            m.orders.get(id),
            &p,
            &[],
            &ctx(&format!("ev-{id}"), occurred, now),
        )
        .unwrap();
    m.orders.insert(id.into(), out.order);
    m.commit(out.change);
}

fn give_back(
    m: &mut Member,
    program: &loyalty_core::domain::Program,
    r: &Reversal,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<String> {
    let out = m
        .account
        .refund(
            program,
            m.orders.get(&r.order_id),
            r,
            &ctx(&r.event_id, r.occurred_at, now),
        )
        .unwrap();
    m.orders.insert(r.order_id.clone(), out.order);
    let no_op = out.change.no_op.clone();
    m.commit(out.change);
    no_op
}

#[test]
fn a_purchase_eight_days_ago_is_available_and_one_day_ago_is_pending() {
    // GIVEN kr-shop (7-day return window) and two members
    let p = kr();
    let now = t0();
    let mut old = Member::new(&p, now - days(30));
    let mut new = Member::new(&p, now - days(30));
    // WHEN one bought 59,000 KRW 8 days ago and the other 1 day ago
    buy(
        &mut old,
        &p,
        "o-1",
        vec![line("1", 1, 59_000)],
        now - days(8),
        now,
    );
    buy(
        &mut new,
        &p,
        "o-2",
        vec![line("1", 1, 59_000)],
        now - days(1),
        now,
    );
    // THEN the first has 590 available, the second 590 pending until the window closes
    assert_eq!(
        (old.account.balance, old.account.pending_points()),
        (590, 0)
    );
    assert_eq!(
        (new.account.balance, new.account.pending_points()),
        (0, 590)
    );
    assert_eq!(new.ledger[0].kind, EntryKind::Pending);
    old.assert_consistent();
    new.assert_consistent();
    // AND seven days later the pending points show as available, provisionally, before any job
    let later = new.account.as_of(&p, now + days(7));
    assert_eq!(later.account.balance, 590);
    assert_eq!(later.entries.len(), 1);
    assert!(later.entries[0].provisional);
    assert_eq!(later.entries[0].kind, EntryKind::Release);
    // AND the job writes the same effect for real
    let settled = new
        .account
        .settle(&p, &ctx("job", now + days(7), now + days(7)));
    assert_eq!(settled.account, later.account);
    new.commit(settled);
    new.assert_consistent();
}

#[test]
fn the_same_order_earns_once() {
    // GIVEN a member who earned for order o-1
    let p = kr();
    let mut m = Member::new(&p, t0());
    buy(&mut m, &p, "o-1", vec![line("1", 1, 59_000)], t0(), t0());
    // WHEN the order arrives again under a new delivery id
    let again = m
        .account
        .earn_purchase(
            &p,
            m.orders.get("o-1"),
            &purchase("o-1", Currency::KRW, vec![line("1", 1, 59_000)]),
            &[],
            &ctx("ev-other", t0(), t0()),
        )
        .unwrap();
    // THEN nothing is credited and the reason says why
    assert!(again.change.entries.is_empty());
    assert!(again.change.no_op.unwrap().contains("already earned"));
}

#[test]
fn a_partial_refund_takes_back_exactly_what_the_line_earned_then_cancel_takes_the_rest() {
    // GIVEN an order of two lines: 3 x 10,001 and 1 x 20,000 KRW (pending 300 + 200 = 500)
    let p = kr();
    let now = t0();
    let mut m = Member::new(&p, now);
    buy(
        &mut m,
        &p,
        "o-1",
        vec![line("a", 3, 10_001), line("b", 1, 20_000)],
        now,
        now,
    );
    assert_eq!(m.account.pending_points(), 500);
    let earned_a = m.orders["o-1"].earned.as_ref().unwrap().lines[0].points;
    assert_eq!(earned_a, 300);
    // WHEN one unit of line a is refunded, and then the same refund is delivered again
    give_back(
        &mut m,
        &p,
        &refund("o-1", "r-1", &[("a", 1)], now + days(1)),
        now + days(1),
    );
    let repeat = give_back(
        &mut m,
        &p,
        &refund("o-1", "r-1", &[("a", 1)], now + days(1)),
        now + days(1),
    );
    // THEN floor(300 x 1 / 3) = 100 is taken from pending, once
    assert_eq!(m.account.pending_points(), 400);
    assert!(repeat.unwrap().contains("already applied"));
    // WHEN the rest of line a is refunded after the window closed, then the order is cancelled
    give_back(
        &mut m,
        &p,
        &refund("o-1", "r-2", &[("a", 5)], now + days(9)),
        now + days(9),
    );
    assert_eq!(
        m.account.balance, 200,
        "a refund never takes more than the line has left"
    );
    give_back(&mut m, &p, &cancel("o-1", now + days(10)), now + days(10));
    // THEN everything the order earned is back to zero, and the spend no longer qualifies
    assert_eq!(m.account.balance, 0);
    assert_eq!(m.account.pending_points(), 0);
    assert_eq!(
        measure_at(
            &p,
            &m.account,
            chrono::NaiveDate::from_ymd_opt(2026, 3, 31).unwrap()
        ),
        0
    );
    m.assert_consistent();
}

#[test]
fn a_refund_before_its_purchase_is_parked_and_ends_the_same() {
    // GIVEN the same purchase and refund delivered in order to one member and reversed to another
    let p = kr();
    let now = t0();
    let lines = vec![line("a", 2, 15_000), line("b", 1, 9_900)];
    let r = refund("o-1", "r-1", &[("a", 1)], now);
    let mut in_order = Member::new(&p, now);
    buy(&mut in_order, &p, "o-1", lines.clone(), now, now);
    give_back(&mut in_order, &p, &r, now + days(1));
    let mut reversed = Member::new(&p, now);
    // WHEN the refund arrives first
    let parked = give_back(&mut reversed, &p, &r, now);
    assert!(parked.unwrap().contains("parked"));
    assert_eq!(reversed.account.balance, 0);
    buy(&mut reversed, &p, "o-1", lines, now, now + days(1));
    // THEN both members end with the same account
    assert_eq!(in_order.account, reversed.account);
    reversed.assert_consistent();
}

#[test]
fn a_clawback_beyond_the_balance_goes_negative_in_kr_and_floors_in_us() {
    // GIVEN a kr-shop member who spent the points of an order that is then cancelled
    let p = kr();
    let now = t0();
    let mut m = Member::new(&p, now - days(20));
    buy(
        &mut m,
        &p,
        "o-1",
        vec![line("a", 1, 600_000)],
        now - days(10),
        now - days(10),
    );
    let later = now;
    let (spent, _) = m
        .account
        .redeem(&p, 5_000, "coupon-5000", &ctx("red-1", later, later))
        .unwrap();
    m.commit(spent);
    give_back(&mut m, &p, &cancel("o-1", later), later);
    // THEN the balance is negative by what was spent
    assert_eq!(m.account.balance, -5_000);
    m.assert_consistent();
    // AND the next earnings pay the debt first
    buy(
        &mut m,
        &p,
        "o-2",
        vec![line("a", 1, 700_000)],
        later,
        later - days(8) + days(16),
    );
    assert_eq!(m.account.balance, 2_000);
    m.assert_consistent();

    // GIVEN a us-shop member in the same situation
    let u = us();
    let mut n = Member::new(&u, now - days(40));
    buy(
        &mut n,
        &u,
        "o-1",
        vec![line("a", 1, 60_000)],
        now - days(35),
        now - days(35) + days(1),
    );
    let settled = n.account.settle(&u, &ctx("job", now, now));
    n.commit(settled);
    assert_eq!(n.account.balance, 600);
    let (spent, _) = n
        .account
        .redeem(&u, 500, "ten-off", &ctx("red-1", now, now))
        .unwrap();
    n.commit(spent);
    give_back(&mut n, &u, &cancel("o-1", now), now);
    // THEN the balance stops at zero and the entry records the shortfall
    assert_eq!(n.account.balance, 0);
    let last = n.ledger.last().unwrap();
    assert_eq!((last.points, last.shortfall), (-100, 500));
    n.assert_consistent();
}

#[test]
fn redeeming_takes_the_soonest_expiring_points_and_reversal_puts_them_back() {
    // GIVEN points earned in January and in March (expiring end of January and March 2027)
    let p = kr();
    let jan = chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 1, 15, 3, 0, 0).unwrap();
    let now = t0();
    let mut m = Member::new(&p, jan);
    let grant = |m: &mut Member, id: &str, at| {
        let c = m
            .account
            .adjust(&p, 1_000, "goodwill", &ctx(id, at, at))
            .unwrap();
        m.commit(c);
    };
    grant(&mut m, "adj-jan", jan);
    grant(&mut m, "adj-mar", now);
    // WHEN 1,500 are redeemed
    let (change, taken) = m
        .account
        .redeem(&p, 1_500, "reward", &ctx("red", now, now))
        .unwrap();
    m.commit(change);
    // THEN January's lot is used up first
    let dates: Vec<String> = taken.iter().map(|s| s.expires_on.to_string()).collect();
    assert_eq!(dates, vec!["2027-01-31", "2027-03-31"]);
    assert_eq!(taken[0].points, 1_000);
    // AND a reversal returns each share to its own lot
    let back = m
        .account
        .reverse_redemption(&p, &taken, "operator reversal", &ctx("rev", now, now))
        .unwrap();
    m.commit(back);
    let lots: Vec<(String, i64)> = m
        .account
        .lots
        .iter()
        .map(|l| (l.expires_on.to_string(), l.points))
        .collect();
    assert_eq!(
        lots,
        vec![("2027-01-31".into(), 1_000), ("2027-03-31".into(), 1_000)]
    );
    m.assert_consistent();
    // AND asking for more than the balance fails without changing anything
    let err = m
        .account
        .redeem(&p, 2_001, "reward", &ctx("red-2", now, now))
        .unwrap_err();
    assert_eq!(
        err,
        AccountError::InsufficientPoints {
            available: 2_000,
            needed: 2_001
        }
    );
}

#[test]
fn points_earned_thirteen_months_ago_are_expired_as_of_now_and_by_the_job() {
    // GIVEN 590 points earned in February 2025 (last usable day 28 February 2026)
    let p = kr();
    let feb = chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2025, 2, 3, 3, 0, 0).unwrap();
    let mut m = Member::new(&p, feb);
    buy(
        &mut m,
        &p,
        "o-1",
        vec![line("a", 1, 59_000)],
        feb,
        feb + days(8),
    );
    assert_eq!(m.account.balance, 590);
    // WHEN the member looks on 10 March 2026
    let view = m.account.as_of(&p, t0());
    // THEN the points are gone, with a provisional expiry entry
    assert_eq!(view.account.balance, 0);
    assert_eq!(view.entries[0].kind, EntryKind::Expire);
    assert_eq!(view.entries[0].points, -590);
    // AND the expiry job writes the same
    let job = m.account.settle(&p, &ctx("expire-points", t0(), t0()));
    assert_eq!(job.account, view.account);
    m.commit(job);
    m.assert_consistent();
}

#[test]
fn engagement_actions_respect_their_limits() {
    // GIVEN kr-shop: signup once, review 5 a month
    let p = kr();
    let now = t0();
    let mut m = Member::new(&p, now);
    let act = |m: &mut Member, action: &str, id: &str, at| {
        let c = m.account.record_action(&p, action, &ctx(id, at, at));
        let no_op = c.no_op.clone();
        m.commit(c);
        no_op
    };
    // WHEN the member signs up twice and writes six reviews in March and one in April
    assert!(act(&mut m, "signup", "s-1", now).is_none());
    assert!(act(&mut m, "signup", "s-2", now)
        .unwrap()
        .contains("limit is 1"));
    for i in 0..5 {
        assert!(act(&mut m, "review", &format!("r-{i}"), now).is_none());
    }
    let sixth = act(&mut m, "review", "r-6", now);
    let april = act(&mut m, "review", "r-7", now + days(30));
    let unknown = act(&mut m, "dance", "d-1", now);
    // THEN signup pays once, five reviews pay in March, April starts a new count
    assert!(sixth.unwrap().contains("this month"));
    assert!(april.is_none());
    assert!(unknown.unwrap().contains("not rewarded"));
    assert_eq!(m.account.balance, 1_000 + 6 * 500);
    m.assert_consistent();
}

#[test]
fn a_late_review_meets_its_own_month_s_limit_after_three_newer_months() {
    // GIVEN kr-shop (review 5 a month, 90 days of backdating) and a member with one review in
    // each of the three months before now
    let p = kr();
    let now = t0();
    let mut m = Member::new(&p, now);
    let act = |m: &mut Member, id: &str, at| {
        let c = m.account.record_action(&p, "review", &ctx(id, at, now));
        let no_op = c.no_op.clone();
        m.commit(c);
        no_op
    };
    for (i, back) in [5, 35, 65].into_iter().enumerate() {
        assert!(act(&mut m, &format!("new-{i}"), now - days(back)).is_none());
    }
    // WHEN six reviews of a fourth, older month (still inside the 90 days) arrive afterwards
    let late: Vec<_> = (0..6)
        .map(|i| act(&mut m, &format!("late-{i}"), now - days(85)))
        .collect();
    // THEN that month pays five, as it would have in any order of arrival
    assert!(late[..5].iter().all(Option::is_none), "{late:?}");
    assert!(late[5].as_deref().unwrap().contains("limit is 5"));
    assert_eq!(m.account.balance, 8 * 500);
    m.assert_consistent();
}

#[test]
fn a_referred_member_s_first_purchase_pays_both_sides() {
    // GIVEN a member referred by m-0, whose id is an email
    let p = kr();
    let now = t0();
    let mut m = Member::new(&p, now);
    m.account.referred_by = Some("m-0".into());
    // WHEN the first purchase is processed (after the window)
    let out = m
        .account
        .earn_purchase(
            &p,
            None,
            &purchase("o-1", Currency::KRW, vec![line("a", 1, 10_000)]),
            &[],
            &ctx("ev", now - days(8), now),
        )
        .unwrap();
    // THEN the new member gets the welcome bonus and the referrer is named for their reward
    assert_eq!(out.referrer_to_reward.as_deref(), Some("m-0"));
    assert_eq!(out.change.account.balance, 100 + 1_000);
    let mut referrer = Member::new(&p, now);
    let paid = referrer
        .account
        .reward_referrer(&p, &ctx("ref-email:jiwoo@example.com", now, now));
    // AND the referrer's entry says why without naming the member referred (the referrer
    // reads it in the app; ids are often an email or a phone number)
    let reason = paid.entries[0].reason.clone();
    assert!(
        reason.contains("referral") && !reason.contains("jiwoo"),
        "{reason}"
    );
    referrer.commit(paid);
    assert_eq!(referrer.account.balance, 3_000);
}

#[test]
fn a_referred_first_order_cancelled_before_it_arrived_pays_neither_side() {
    // GIVEN a member referred by m-0, whose first order's cancellation arrived before it
    let p = kr();
    let now = t0();
    let mut m = Member::new(&p, now);
    m.account.referred_by = Some("m-0".into());
    let cancel = Reversal {
        order_id: "o-1".into(),
        refund_id: "cancel".into(),
        scope: RefundScope::Rest,
        event_id: "ev-cancel".into(),
        occurred_at: now - days(1),
    };
    let parked = m
        .account
        .refund(&p, None, &cancel, &ctx("ev-cancel", now - days(1), now))
        .unwrap();
    assert!(parked.order.parked.len() == 1);
    // WHEN the purchase arrives (8 days late, past its return window)
    let out = m
        .account
        .earn_purchase(
            &p,
            Some(&parked.order),
            &purchase("o-1", Currency::KRW, vec![line("a", 1, 10_000)]),
            &[],
            &ctx("ev", now - days(8), now),
        )
        .unwrap();
    // THEN its points are taken back, and neither the welcome bonus nor the referrer's reward
    // is paid for an order that was not kept
    assert_eq!(out.referrer_to_reward, None);
    assert_eq!(out.change.account.balance, 0);
    assert_eq!(out.change.account.pending_points(), 0);
}

#[test]
fn a_first_order_partly_kept_still_pays_its_referral_when_its_window_closes() {
    // GIVEN referrals paid once the first order's return window has closed, and a referred
    // member whose first order is a 10,000 KRW tee and a 50,000 KRW gift card (no points)
    let p = kr_with(
        "referee_points = 1000",
        "referee_points = 1000\nreward_after_return_window = true",
    );
    assert!(p.referral.as_ref().unwrap().reward_after_return_window);
    let now = t0();
    let mut m = Member::new(&p, now);
    m.account.referred_by = Some("m-0".into());
    let mut card = line("card", 1, 50_000);
    card.gift_card = true;
    let order = purchase("o-1", Currency::KRW, vec![line("tee", 1, 10_000), card]);
    let out = m
        .account
        .earn_purchase(&p, None, &order, &[], &ctx("ev-1", now, now))
        .unwrap();
    assert_eq!(out.referrer_to_reward, None);
    let record = out.order.clone();
    m.commit(out.change);
    // WHEN the tee is returned within the window: its points go, the gift card is kept
    let tee = Reversal {
        order_id: "o-1".into(),
        refund_id: "r-1".into(),
        scope: RefundScope::lines(vec![RefundLine {
            line_id: "tee".into(),
            quantity: 1,
            sku: String::new(),
        }]),
        event_id: "ev-r-1".into(),
        occurred_at: now + days(2),
    };
    let refunded = m
        .account
        .refund(
            &p,
            Some(&record),
            &tee,
            &ctx("ev-r-1", now + days(2), now + days(2)),
        )
        .unwrap();
    m.commit(refunded.change);
    // AND the window closes
    let later = now + days(10);
    let settled = m.account.settle(&p, &ctx("settle", later, later));
    // THEN the order, partly kept, pays both sides of the referral
    assert_eq!(settled.referrer.as_deref(), Some("m-0"));
    m.commit(settled);
    assert_eq!(m.account.balance, 1_000);
    m.assert_consistent();
}

#[test]
fn crossing_silver_upgrades_after_the_purchase_and_the_next_purchase_earns_more() {
    // GIVEN a WELCOME member in kr-shop
    let p = kr();
    let now = t0();
    let mut m = Member::new(&p, now);
    // WHEN they spend 150,000 and then 160,000 KRW (310,000 in 12 months)
    buy(&mut m, &p, "o-1", vec![line("a", 1, 150_000)], now, now);
    buy(&mut m, &p, "o-2", vec![line("a", 1, 160_000)], now, now);
    // THEN the crossing purchase earned at 1.0x
    assert_eq!(m.account.pending_points(), 3_100);
    assert_eq!(m.account.tier.id, "WELCOME");
    // WHEN the tier check runs
    let check = m.account.check_tier(&p, &ctx("tier-1", now, now));
    m.commit(check);
    // THEN the member is SILVER, reviewed a year later, with a tier entry of 0 points
    assert_eq!(m.account.tier.id, "SILVER");
    assert_eq!(m.account.tier.review_on.unwrap().to_string(), "2027-03-10");
    let entry = m.ledger.last().unwrap();
    assert_eq!((entry.kind, entry.points), (EntryKind::Tier, 0));
    assert!(
        entry.reason.contains("WELCOME to SILVER"),
        "{}",
        entry.reason
    );
    // AND the next purchase earns 1.2x
    buy(&mut m, &p, "o-3", vec![line("a", 1, 10_000)], now, now);
    assert_eq!(m.account.pending_points(), 3_100 + 120);
    // AND progress shows what is needed for GOLD and to keep SILVER
    let progress = m
        .account
        .tier_progress(&p, chrono::NaiveDate::from_ymd_opt(2026, 3, 10).unwrap());
    assert_eq!(progress.next_tier.unwrap().needed, 1_000_000 - 320_000);
    let keep = progress.keep.unwrap();
    // the window at the March 2027 review is April 2026 to March 2027: this spend has left it
    assert_eq!(keep.needed, 300_000);
    assert_eq!(keep.by.to_string(), "2027-03-10");
    m.assert_consistent();
}

#[test]
fn a_review_without_spend_goes_down_one_level_once() {
    // GIVEN a kr-shop VIP who spent 3,000,000 KRW in March 2026
    let p = kr();
    let now = t0();
    let mut m = Member::new(&p, now);
    buy(&mut m, &p, "o-1", vec![line("a", 1, 3_000_000)], now, now);
    let up = m.account.check_tier(&p, &ctx("t-1", now, now));
    m.commit(up);
    assert_eq!(m.account.tier.id, "VIP");
    // WHEN the review a year later finds no spend in the window (and the job runs twice)
    let later = now + days(400);
    let review = m.account.review_tier(&p, &ctx("review-1", later, later));
    m.commit(review);
    let again = m.account.review_tier(&p, &ctx("review-2", later, later));
    // THEN VIP becomes GOLD, not WELCOME, and the second run changes nothing
    assert_eq!(m.account.tier.id, "GOLD");
    assert!(again.entries.iter().all(|e| e.kind != EntryKind::Tier));
    assert_eq!(again.account.tier, m.account.tier);

    // GIVEN a us-shop ROUGE member who spent $1,200 in 2026 (calendar-year window and review)
    let u = us();
    let mut n = Member::new(&u, now);
    buy(&mut n, &u, "o-1", vec![line("a", 1, 120_000)], now, now);
    let up = n.account.check_tier(&u, &ctx("t-1", now, now));
    n.commit(up);
    assert_eq!(n.account.tier.id, "ROUGE");
    // WHEN 1 January 2027 comes: the review judges 2026, the year that just closed
    let jan =
        |year| chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, year, 1, 1, 12, 0, 0).unwrap();
    let review = n
        .account
        .review_tier(&u, &ctx("review-2027", jan(2027), jan(2027)));
    n.commit(review);
    // THEN ROUGE is kept for 2027, to be reviewed on 1 January 2028
    assert_eq!(n.account.tier.id, "ROUGE");
    assert_eq!(
        n.account.tier.review_on,
        chrono::NaiveDate::from_ymd_opt(2028, 1, 1)
    );
    // WHEN 1 January 2028 comes after a year without spend
    let review = n
        .account
        .review_tier(&u, &ctx("review-2028", jan(2028), jan(2028)));
    n.commit(review);
    // THEN recompute drops straight to INSIDER
    assert_eq!(n.account.tier.id, "INSIDER");
    assert_eq!(n.account.tier.review_on, None);
}

/// A kr-shop survivor (a negative balance is allowed) who spent an order's 500 points and then
/// saw the order cancelled (a debt of 500), and another member with 300 points ending in about
/// a year, merged out into the survivor at `now`.
fn survivor_in_debt_and_a_merged_member(
    p: &loyalty_core::domain::Program,
    now: chrono::DateTime<chrono::Utc>,
) -> (Member, loyalty_core::domain::Merged) {
    let mut survivor = Member::new(p, now);
    buy(
        &mut survivor,
        p,
        "o-1",
        vec![line("a", 5, 10_000)],
        now - days(8),
        now,
    );
    let spent = survivor
        .account
        .adjust(p, -500, "spent at the till", &ctx("spend", now, now))
        .unwrap();
    survivor.commit(spent);
    give_back(&mut survivor, p, &cancel("o-1", now), now);
    assert_eq!(
        (survivor.account.balance, survivor.account.debt),
        (-500, 500)
    );
    (survivor, m2_merged_out_into_m1(p, now))
}

/// m-2, with 300 points, merged out into m-1 at `now`: what m-1 is to receive.
fn m2_merged_out_into_m1(
    p: &loyalty_core::domain::Program,
    now: chrono::DateTime<chrono::Utc>,
) -> loyalty_core::domain::Merged {
    merged_out(p, now, |other| {
        let gift = other
            .account
            .adjust(p, 300, "goodwill", &ctx("gift", now, now))
            .unwrap();
        other.commit(gift);
    })
}

#[test]
fn a_merge_of_a_referrer_and_the_member_it_referred_leaves_no_referral_to_pay() {
    let p = kr();
    let now = t0();
    // GIVEN m-2 referred by m-1, or m-1 referred by m-2, neither having bought
    for (survivor_referred_by, other_referred_by) in [(None, Some("m-1")), (Some("m-2"), None)] {
        let mut survivor = Member::new(&p, now);
        survivor.account.referred_by = survivor_referred_by.map(String::from);
        let mut other = Member::new(&p, now);
        other.account.member = "m-2".into();
        other.account.referred_by = other_referred_by.map(String::from);
        // WHEN m-2 is merged into m-1 (one person)
        let out = other
            .account
            .merge_out(&p, "m-1", "same person", "ops", &ctx("merge-out", now, now))
            .unwrap();
        let merged = out.account.merged.unwrap();
        let change = survivor
            .account
            .merge_in(&p, &merged, &ctx("merge-in", now, now))
            .unwrap();
        survivor.commit(change);
        // THEN the person has no referrer, and their first purchase pays no referral
        assert_eq!(survivor.account.referred_by, None);
        let first = survivor
            .account
            .earn_purchase(
                &p,
                None,
                &purchase("o-1", Currency::KRW, vec![line("a", 1, 10_000)]),
                &[],
                &ctx("ev", now - days(8), now),
            )
            .unwrap();
        assert_eq!(first.referrer_to_reward, None);
    }
}

#[test]
fn a_merge_pays_one_member_s_debt_with_the_other_s_points() {
    // GIVEN a survivor with a debt of 500 and a member with 300 points merged out into it
    let p = kr();
    let now = t0();
    let (mut survivor, merged) = survivor_in_debt_and_a_merged_member(&p, now);
    // WHEN the survivor receives the other's points
    let change = survivor
        .account
        .merge_in(&p, &merged, &ctx("merge-in", now, now))
        .unwrap();
    survivor.commit(change);
    // THEN the 300 points paid 300 of the debt: no lot is left to expire while a debt stays
    assert_eq!(survivor.account.balance, -200);
    assert_eq!(
        (survivor.account.lots.total(), survivor.account.debt),
        (0, 200)
    );
    survivor.assert_consistent();
    // AND a year on, the balance is still -200
    let later = now + days(400);
    let settled = survivor.account.settle(&p, &ctx("later", later, later));
    survivor.commit(settled);
    assert_eq!(survivor.account.balance, -200);
    survivor.assert_consistent();
}

#[test]
fn a_refund_stating_another_order_total_never_gives_points_back() {
    // GIVEN an order of 500 points, half refunded by amount (55,000 of a total of 110,000)
    let p = kr();
    let now = t0();
    let mut m = Member::new(&p, now);
    buy(&mut m, &p, "o-1", vec![line("a", 5, 10_000)], now, now);
    let share = |id: &str, amount: i64, total: i64| money("o-1", id, amount, total, now);
    give_back(&mut m, &p, &share("r-1", 55_000, 110_000), now);
    assert_eq!(m.account.pending_points(), 250);
    // WHEN a second refund of 1,100 states the total as 1,100,000 (the platform counted
    // otherwise: 0.1 % more of the order)
    give_back(&mut m, &p, &share("r-2", 1_100, 1_100_000), now);
    // THEN the half already taken stays taken, and 0.1 % more is taken: floor(500 x 50.1 %)
    assert_eq!(m.account.pending_points(), 500 - 250);
    let earned = m.orders["o-1"].earned.clone().unwrap();
    assert_eq!(
        (earned.share_refunded, earned.share_total),
        (551_100, 1_100_000)
    );
    // AND a third by the first total takes its share of what is left, never less than before
    give_back(&mut m, &p, &share("r-3", 11_000, 110_000), now);
    assert_eq!(m.account.pending_points(), 500 - 300);
    m.assert_consistent();
}

#[test]
fn a_line_returned_and_money_refunded_on_one_order_take_back_their_share_together() {
    // GIVEN an order of 300 + 200 points, 50,000 paid for its goods
    let p = kr();
    let now = t0();
    let mut m = bought_a_and_b(&p, now);
    // WHEN line b is returned, then 10,000 (a fifth of the order) refunded as money alone
    give_back(&mut m, &p, &refund("o-1", "r-1", &[("b", 1)], now), now);
    give_back(&mut m, &p, &money("o-1", "r-2", 10_000, 50_000, now), now);
    // THEN the fifth takes a fifth of the order's points (100) from line a, the line left,
    // as the money refunded (30,000 of 50,000) says: 300 in all
    assert_eq!(m.account.pending_points(), 500 - 300);
    // WHEN the rest of the money (20,000) is refunded
    give_back(&mut m, &p, &money("o-1", "r-3", 20_000, 50_000, now), now);
    // THEN nothing of the order's points is left
    assert_eq!(m.account.pending_points(), 0);
    m.assert_consistent();
}

#[test]
fn money_refunded_by_amount_takes_back_points_by_what_the_lines_were_paid() {
    // GIVEN an order of a tee (90,000: 900 points) and a cap (10,000) that earned 800 more
    // with a SKU bonus: 100,000 paid, 1,800 points
    let p = kr_with(
        "excluded_categories = [\"gift_card\"]",
        "excluded_categories = [\"gift_card\"]\nskus = [{ sku = \"SKU-cap\", bonus_points_per_unit = 800 }]",
    );
    let now = t0();
    let mut m = Member::new(&p, now);
    buy(
        &mut m,
        &p,
        "o-1",
        vec![line("tee", 1, 90_000), line("cap", 1, 10_000)],
        now,
        now,
    );
    let earned = m.orders["o-1"].earned.clone().unwrap();
    assert_eq!((earned.lines[0].points, earned.lines[1].points), (900, 900));
    // WHEN the cap is returned, then a tenth of the money refunded as an amount
    give_back(&mut m, &p, &refund("o-1", "r-1", &[("cap", 1)], now), now);
    let before = m.account.pending_points();
    give_back(&mut m, &p, &money("o-1", "r-2", 10_000, 100_000, now), now);
    // THEN the tenth of the money comes off the tee, the line kept: a ninth of its points,
    // not the cap's bonus over again
    assert_eq!(before - m.account.pending_points(), 100);
    m.assert_consistent();
}

#[test]
fn refunds_known_only_by_amount_take_back_their_share_of_every_line() {
    // GIVEN an order of 300 + 200 points whose platform total is 110,000 (shipping included)
    let p = kr();
    let now = t0();
    let mut m = bought_a_and_b(&p, now);
    let share = |id: &str, amount: i64| money("o-1", id, amount, 110_000, now);
    // WHEN 22,000 (20%) is refunded, then 55,000 more (70% in all)
    give_back(&mut m, &p, &share("r-1", 22_000), now);
    assert_eq!(m.account.pending_points(), 500 - (60 + 40));
    give_back(&mut m, &p, &share("r-2", 55_000), now);
    // THEN each line has given back floor(p x 70%) so far: 210 + 140
    assert_eq!(m.account.pending_points(), 500 - 350);
    // AND a cancellation takes only what is left, and a refund beyond the total takes nothing more
    give_back(&mut m, &p, &cancel("o-1", now), now);
    give_back(&mut m, &p, &share("r-3", 99_000), now);
    assert_eq!(m.account.pending_points(), 0);
    let lines = &m.orders["o-1"].earned.as_ref().unwrap().lines;
    assert_eq!(
        lines.iter().map(|l| l.clawed).collect::<Vec<_>>(),
        vec![300, 200]
    );
    m.assert_consistent();
}

#[test]
fn points_given_back_into_a_lot_that_has_ended_expire_and_never_pay_a_debt() {
    use chrono::TimeZone;
    let at = |y, m, d| chrono::Utc.with_ymd_and_hms(y, m, d, 3, 0, 0).unwrap();
    // GIVEN a kr-shop member with 1,000 points ending 31 January 2027 and 800 from an order
    // ending 31 December 2027, all 1,800 redeemed on 20 January
    let p = kr();
    let mut m = Member::new(&p, at(2026, 1, 1));
    let gift = m
        .account
        .adjust(
            &p,
            1_000,
            "welcome back",
            &ctx("adj-1", at(2026, 1, 10), at(2026, 1, 10)),
        )
        .unwrap();
    m.commit(gift);
    buy(
        &mut m,
        &p,
        "o-b",
        vec![line("a", 1, 80_000)],
        at(2026, 12, 1),
        at(2026, 12, 1),
    );
    let (spent, taken) = m
        .account
        .redeem(
            &p,
            1_800,
            "coupon",
            &ctx("red-1", at(2027, 1, 20), at(2027, 1, 20)),
        )
        .unwrap();
    m.commit(spent);
    assert_eq!(taken.len(), 2, "{taken:?}");
    // AND the order cancelled on 5 February, leaving a debt of 800
    give_back(&mut m, &p, &cancel("o-b", at(2027, 2, 5)), at(2027, 2, 5));
    assert_eq!((m.account.balance, m.account.debt), (-800, 800));
    // WHEN the redemption is reversed on 10 February
    let reversed = m
        .account
        .reverse_redemption(
            &p,
            &taken,
            "reversal",
            &ctx("rev-1", at(2027, 2, 10), at(2027, 2, 10)),
        )
        .unwrap();
    m.commit(reversed);
    // THEN the ended lot's 1,000 expire at once and the live 800 pay the debt: nothing is made
    // out of points that had ended
    assert_eq!((m.account.balance, m.account.debt), (0, 0));
    m.assert_consistent();
}

#[test]
fn a_merge_finished_after_the_other_s_points_ended_pays_no_debt_with_them() {
    // GIVEN a survivor with a debt of 500 and a member with 300 points merged out into it
    // today, whose merge finishes a year later, when those points have ended
    let p = kr();
    let now = t0();
    let (mut survivor, merged) = survivor_in_debt_and_a_merged_member(&p, now);
    // WHEN the survivor receives them
    let later = now + days(400);
    let change = survivor
        .account
        .merge_in(&p, &merged, &ctx("merge-in", later, later))
        .unwrap();
    survivor.commit(change);
    // THEN the ended 300 expire and the debt of 500 stays whole
    assert_eq!(
        (survivor.account.balance, survivor.account.debt),
        (-500, 500)
    );
    assert_eq!(survivor.account.lots.total(), 0);
    survivor.assert_consistent();
}

#[test]
fn a_refund_leaves_other_orders_waiting_out_their_return_window_though_they_earned_nothing() {
    // GIVEN a kr-shop member with a 50 KRW order (no points, but its return window waits)
    // and a 10,000 KRW order, both within their return windows
    let p = kr();
    let now = t0();
    let mut m = Member::new(&p, now);
    buy(&mut m, &p, "o-small", vec![line("a", 1, 50)], now, now);
    buy(&mut m, &p, "o-big", vec![line("b", 1, 10_000)], now, now);
    let waiting = |m: &Member| -> Vec<String> {
        m.account
            .pending
            .iter()
            .map(|g| g.event_id.clone())
            .collect()
    };
    assert_eq!(waiting(&m), ["ev-o-small", "ev-o-big"]);
    // WHEN the big order is cancelled
    give_back(&mut m, &p, &cancel("o-big", now), now);
    // THEN only its own wait ends: the small order still waits out its window
    assert_eq!(waiting(&m), ["ev-o-small"]);
    assert_eq!(m.account.pending_points(), 0);
}

#[test]
fn a_merge_finishes_into_a_survivor_holding_points_for_a_checkout() {
    // GIVEN a member with 300 points merged out into m-1, and m-1 with 1,000 points
    let p = kr();
    let now = t0();
    let mut survivor = Member::new(&p, now);
    let gift = survivor
        .account
        .adjust(&p, 1_000, "opening balance", &ctx("open", now, now))
        .unwrap();
    survivor.commit(gift);
    let merged = m2_merged_out_into_m1(&p, now);
    // AND, before the merge's second step, m-1 holds 400 for a checkout
    let held = survivor
        .account
        .hold(
            &p,
            "h-1",
            "order-9",
            400,
            now + days(1),
            &ctx("hold", now, now),
        )
        .unwrap();
    survivor.commit(held);
    // WHEN the second step runs
    let change = survivor
        .account
        .merge_in(&p, &merged, &ctx("merge-in", now, now))
        .unwrap();
    survivor.commit(change);
    // THEN the 300 points arrive beside the hold
    assert_eq!(survivor.account.balance, 900);
    survivor.assert_consistent();
    // AND the hold voided gives its 400 back, once
    let voided = survivor
        .account
        .void_hold(&p, "h-1", "checkout abandoned", &ctx("void", now, now))
        .unwrap();
    survivor.commit(voided);
    assert_eq!(survivor.account.balance, 1_300);
    survivor.assert_consistent();
}

#[test]
fn a_hold_expired_behind_fifty_others_cannot_be_captured() {
    // GIVEN a member with 1,000 points who held 10 points at 51 checkouts never settled, each
    // expiring a minute after the one before
    let p = kr();
    let now = t0();
    let mut m = Member::new(&p, now);
    let gift = m
        .account
        .adjust(&p, 1_000, "opening balance", &ctx("open", now, now))
        .unwrap();
    m.commit(gift);
    for n in 0..51 {
        let held = m
            .account
            .hold(
                &p,
                &format!("h-{n}"),
                &format!("order-{n}"),
                10,
                now + chrono::Duration::minutes(n + 1),
                &ctx(&format!("hold-{n}"), now, now),
            )
            .unwrap();
        m.commit(held);
    }
    // WHEN the shop captures the last one after all of them expired
    let later = now + days(1);
    let captured = m
        .account
        .capture_hold(&p, "h-50", &ctx("capture", later, later));
    // THEN there is no such hold to capture: expired, its points come back
    assert!(captured.is_none(), "{captured:?}");
}

#[test]
fn the_next_tier_still_needs_what_waits_out_its_return_window_when_upgrades_wait_for_it() {
    // GIVEN kr-shop counting upgrades only once purchases are kept, and a member whose
    // 400,000 KRW purchase (past SILVER's 300,000) is inside its return window
    let p = kr_with(
        "[tier_rules]\n",
        "[tier_rules]\nupgrade_after_return_window = true\n",
    );
    let now = t0();
    let mut m = Member::new(&p, now);
    buy(&mut m, &p, "o-1", vec![line("a", 1, 400_000)], now, now);
    let today = chrono::NaiveDate::from_ymd_opt(2026, 3, 10).unwrap();
    // WHEN the member's progress is shown
    let progress = m.account.tier_progress(&p, today);
    // THEN SILVER still needs the whole 300,000, as the upgrade will go by
    let next = progress.next_tier.expect("a next tier");
    assert_eq!((next.id.as_str(), next.needed), ("SILVER", 300_000));
    let up = m.account.check_tier(&p, &ctx("t-1", now, now));
    assert_eq!(up.account.tier.id, "WELCOME");
    // AND once the purchase is kept, nothing more is needed
    let later = now + days(30);
    let settled = m.account.settle(&p, &ctx("later", later, later));
    m.commit(settled);
    let next = m
        .account
        .tier_progress(&p, today + days(30))
        .next_tier
        .expect("a next tier");
    assert_eq!((next.id.as_str(), next.needed), ("SILVER", 0));
}

#[test]
fn the_audit_names_a_member_merged_away_that_received_points_since() {
    // GIVEN m-2 merged out into m-1, and m-1 merged out into m-3 before m-2's points arrived
    let p = kr();
    let now = t0();
    let merged = m2_merged_out_into_m1(&p, now);
    let mut middle = Member::new(&p, now);
    let out = middle
        .account
        .merge_out(&p, "m-3", "same person", "ops", &ctx("out-1", now, now))
        .unwrap();
    middle.commit(out);
    // WHEN m-2's points reach m-1 all the same
    let late = middle
        .account
        .merge_in(&p, &merged, &ctx("in-2", now, now))
        .unwrap();
    middle.commit(late);
    // THEN the audit names m-1: 300 points in an account no one uses
    let records = loyalty_core::ports::MemberRecords {
        program: "kr-shop".into(),
        member: middle.account.member.clone(),
        account: Some(middle.account.clone()),
        entries: middle.ledger.clone(),
        orders: Vec::new(),
    };
    let (found, _) = loyalty_core::audit::check_member(&records, now);
    let merges: Vec<_> = found.iter().filter(|v| v.rule == "merge").collect();
    assert_eq!(merges.len(), 1, "{found:?}");
    assert_eq!(merges[0].difference, Some(300));
}

#[test]
fn an_upgrade_waits_only_for_purchases_inside_its_window() {
    // GIVEN kr-shop measuring the calendar year and counting upgrades once purchases are kept,
    // and a member whose 400,000 KRW purchase of 30 December 2026 waits out a 30-day window
    let program = |pending_days: &str| {
        loyalty_core::domain::Program::from_toml(
            &include_str!("../../examples/kr-shop.toml")
                .replace(
                    "[tier_rules]\n",
                    "[tier_rules]\nupgrade_after_return_window = true\n",
                )
                .replace("rolling_12_months", "calendar_year")
                .replace("pending_days = 7", pending_days),
        )
        .unwrap()
    };
    let (thirty, none) = (program("pending_days = 30"), program("pending_days = 0"));
    use chrono::TimeZone;
    let december = chrono::Utc.with_ymd_and_hms(2026, 12, 30, 3, 0, 0).unwrap();
    let mut m = Member::new(&thirty, december);
    buy(
        &mut m,
        &thirty,
        "o-1",
        vec![line("a", 1, 400_000)],
        december,
        december,
    );
    // WHEN the shop stops making purchases wait, and the member buys 300,000 KRW on 2 January
    let january = chrono::Utc.with_ymd_and_hms(2027, 1, 2, 3, 0, 0).unwrap();
    buy(
        &mut m,
        &none,
        "o-2",
        vec![line("a", 1, 300_000)],
        january,
        january,
    );
    let up = m.account.check_tier(&none, &ctx("t-1", january, january));
    // THEN the new year's 300,000 reach SILVER: December's waiting purchase is not of this year
    assert_eq!(up.account.tier.id, "SILVER");
}

#[test]
fn points_last_usable_before_their_purchase_was_recorded_expire_in_its_own_commit() {
    // GIVEN kr-shop keeping points to the end of the month after they were earned
    use chrono::TimeZone;
    let p = kr_with("months = 12", "months = 1");
    // WHEN a purchase of 15 November (last usable 31 December) is recorded on 3 February
    let (bought, recorded) = (
        chrono::Utc.with_ymd_and_hms(2026, 11, 15, 3, 0, 0).unwrap(),
        chrono::Utc.with_ymd_and_hms(2027, 2, 3, 3, 0, 0).unwrap(),
    );
    let m = Member::new(&p, bought);
    let out = m
        .account
        .earn_purchase(
            &p,
            None,
            &purchase("o-1", p.currency, vec![line("a", 1, 100_000)]),
            &[],
            &ctx("ev-o-1", bought, recorded),
        )
        .unwrap();
    // THEN they expire in the purchase's own commit, as of 3 February when they were booked
    // (before: left for the expiry job, which dated them 1 January, a month before they were
    // issued), and no expiry is left due
    let expired: Vec<_> = out
        .change
        .entries
        .iter()
        .filter(|e| e.kind == loyalty_core::domain::EntryKind::Expire)
        .collect();
    assert_eq!(expired.len(), 1, "{:?}", out.change.entries);
    assert_eq!(
        (expired[0].points, expired[0].occurred_at),
        (-1_000, recorded)
    );
    assert_eq!(out.change.account.balance, 0);
    let commit = loyalty_core::ports::Commit::new(&p, "m-1", None, out.change, recorded);
    assert_eq!(commit.due.expire, None);
}

#[test]
fn a_hundred_and_twenty_purchases_maturing_at_once_are_released_in_commits_that_fit() {
    // GIVEN a member with 120 purchases in one return window, each 10,000 KRW (100 points)
    let p = kr();
    let now = t0();
    let mut m = Member::new(&p, now);
    for i in 0..120 {
        let order = format!("o-{i}");
        buy(&mut m, &p, &order, vec![line("a", 1, 10_000)], now, now);
    }
    assert_eq!(m.account.pending_points(), 12_000);
    // WHEN the release job settles the member after the window, until nothing is left
    let later = now + days(8);
    let mut commits = 0;
    while m.account.pending_points() > 0 {
        let change = m
            .account
            .settle(&p, &ctx(&format!("s-{commits}"), later, later));
        // THEN each settle fits one commit
        let commit =
            loyalty_core::ports::Commit::new(&p, "m-1", Some(&m.account), change.clone(), later);
        assert!(commit.items() <= 100, "{} items", commit.items());
        m.commit(change);
        commits += 1;
        assert!(commits <= 3, "never done");
        // AND the member is shown everything matured all along
        let shown = m.account.as_of(&p, later).account;
        assert_eq!((shown.balance, shown.pending_points()), (12_000, 0));
    }
    // AND everything was released, in three settles, exactly
    assert_eq!((commits, m.account.balance), (3, 12_000));
    m.assert_consistent();
}

#[test]
fn a_gold_tier_reached_on_29_february_and_kept_is_next_reviewed_on_its_anniversary() {
    // GIVEN a member GOLD since 29 February 2028, reviewed on 28 February 2031, who spent
    // 1,000,000 in January 2031 (enough to keep GOLD)
    let p = kr();
    use chrono::TimeZone;
    let at = |y, m, d| chrono::Utc.with_ymd_and_hms(y, m, d, 3, 0, 0).unwrap();
    let mut m = Member::new(&p, at(2028, 2, 29));
    let bought = m
        .account
        .earn_purchase(
            &p,
            None,
            &purchase("o-1", Currency::KRW, vec![line("a", 1, 1_000_000)]),
            &[],
            &ctx("ev", at(2031, 1, 15), at(2031, 1, 15)),
        )
        .unwrap();
    m.commit(bought.change);
    let day = |y, m, d| chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap();
    m.account.tier = loyalty_core::domain::TierStatus {
        id: "GOLD".into(),
        since: day(2028, 2, 29),
        review_on: Some(day(2031, 2, 28)),
    };
    // WHEN the review of 28 February 2031 runs
    let reviewed = m
        .account
        .review_tier(&p, &ctx("review", at(2031, 2, 28), at(2031, 2, 28)));
    // THEN GOLD is kept until the review of 29 February 2032, its anniversary
    assert_eq!(reviewed.account.tier.id, "GOLD");
    assert_eq!(reviewed.account.tier.review_on, Some(day(2032, 2, 29)));
}

#[test]
fn a_parked_refund_the_purchase_cannot_take_does_not_stop_the_purchase() {
    // GIVEN a refund of line z, which the order will not have, parked before its purchase
    let p = kr();
    let now = t0();
    let lines = vec![line("a", 2, 15_000), line("b", 1, 9_900)];
    let bad = refund("o-1", "r-1", &[("z", 1)], now);
    let mut m = Member::new(&p, now);
    assert!(give_back(&mut m, &p, &bad, now).unwrap().contains("parked"));
    // WHEN the purchase arrives
    buy(&mut m, &p, "o-1", lines.clone(), now, now + days(1));
    // THEN it earns what it earns without the refund, and the refund stays parked on the order
    let mut plain = Member::new(&p, now);
    buy(&mut plain, &p, "o-1", lines, now, now + days(1));
    let versioned = |a: &loyalty_core::domain::Account| loyalty_core::domain::Account {
        version: 0,
        ..a.clone()
    };
    assert_eq!(versioned(&m.account), versioned(&plain.account));
    assert_eq!(m.orders["o-1"].parked, vec![bad.clone()]);
    m.assert_consistent();
    // AND delivered again, the refund is refused on its own, naming the line
    let again = m.account.refund(
        &p,
        m.orders.get("o-1"),
        &bad,
        &ctx(&bad.event_id, now, now + days(2)),
    );
    assert!(
        matches!(&again, Err(loyalty_core::domain::orders::OrderError::UnknownLine { line_id, .. }) if line_id == "z"),
        "{again:?}"
    );
    // AND a refund of line a under the same id, delivered again, is applied and unparked
    let good = refund("o-1", "r-1", &[("a", 1)], now);
    give_back(&mut m, &p, &good, now + days(2));
    assert!(m.orders["o-1"].parked.is_empty());
    assert!(
        m.account.balance + m.account.pending_points()
            < plain.account.balance + plain.account.pending_points()
    );
    m.assert_consistent();
}

/// m-2 as `shape` leaves it, merged out into m-1 at `now`.
fn merged_out(
    p: &loyalty_core::domain::Program,
    now: chrono::DateTime<chrono::Utc>,
    shape: impl FnOnce(&mut Member),
) -> loyalty_core::domain::Merged {
    let mut other = Member::new(p, now);
    other.account.member = "m-2".into();
    shape(&mut other);
    let out = other
        .account
        .merge_out(p, "m-1", "same person", "ops", &ctx("merge-out", now, now))
        .unwrap();
    out.account.merged.unwrap()
}

#[test]
fn a_merge_keeps_the_other_s_notices_only_for_what_came_from_it() {
    // GIVEN a survivor with 200 points and a member with 50 ending the same day, which it was
    // told of, and told of a day the survivor has no points ending
    let p = kr();
    let now = t0();
    let mut survivor = Member::new(&p, now);
    let gift = survivor
        .account
        .adjust(&p, 200, "goodwill", &ctx("gift-1", now, now))
        .unwrap();
    survivor.commit(gift);
    let day = survivor.account.lots.iter().next().unwrap().expires_on;
    let merged = merged_out(&p, now, |other| {
        let gift = other
            .account
            .adjust(&p, 50, "goodwill", &ctx("gift-2", now, now))
            .unwrap();
        other.commit(gift);
        other.account.notified.insert(format!("expiring:{day}"));
        other.account.notified.insert("expiring:2099-01-01".into());
    });
    // WHEN it is merged into the survivor
    let change = survivor
        .account
        .merge_in(&p, &merged, &ctx("merge-in", now, now))
        .unwrap();
    survivor.commit(change);
    // THEN the day both hold points is still to be announced (250 points), the other's own
    // day is not announced again
    assert!(!survivor
        .account
        .notified
        .contains(&format!("expiring:{day}")));
    assert!(survivor.account.notified.contains("expiring:2099-01-01"));
    assert_eq!(survivor.account.lots.total(), 250);
}

#[test]
fn a_merge_after_the_other_s_referral_was_paid_pays_no_second_one() {
    // GIVEN a survivor referred by x whose first order waits out its return window, and a
    // member referred by y whose first order paid its referral
    let p = kr();
    let now = t0();
    let mut survivor = Member::new(&p, now);
    survivor.account.referred_by = Some("x".into());
    survivor.account.referral_due = Some(loyalty_core::domain::account::ReferralDue {
        referrer: "x".into(),
        event_id: "ev-o-1".into(),
    });
    let merged = merged_out(&p, now, |other| {
        other.account.referred_by = Some("y".into());
        other.account.purchases = 1;
    });
    // WHEN it is merged into the survivor
    let change = survivor
        .account
        .merge_in(&p, &merged, &ctx("merge-in", now, now))
        .unwrap();
    survivor.commit(change);
    // THEN the person was referred once: nothing waits to be paid
    assert_eq!(survivor.account.referral_due, None);
}
