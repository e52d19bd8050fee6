//! Properties that must hold for any sequence of events, checked with proptest.

mod common;

use chrono::{DateTime, Utc};
use common::*;
use loyalty_core::domain::calendar::local_date;
use loyalty_core::domain::{
    EntryKind, LotShare, Program, PurchaseLine, RefundLine, RefundScope, Reversal,
};
use proptest::prelude::*;

/// How a generated refund names what it gives back.
#[derive(Debug, Clone)]
enum Scope {
    Lines(Vec<(usize, i64)>),
    Share { amount: i64, total: i64 },
}

#[derive(Debug, Clone)]
enum Op {
    Buy {
        lines: Vec<(i64, i64)>,
        days_ago: i64,
    },
    Refund {
        order: usize,
        lines: Vec<(usize, i64)>,
    },
    Cancel {
        order: usize,
    },
    Share {
        order: usize,
        percent: i64,
    },
    Redeem {
        points: i64,
    },
    ReverseLast,
    Adjust {
        points: i64,
    },
    Action {
        which: usize,
    },
    Advance {
        days: i64,
    },
    CheckTier,
    Review,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop::collection::vec((1i64..4, 1_000i64..400_000), 1..4), 0i64..10)
            .prop_map(|(lines, days_ago)| Op::Buy { lines, days_ago }),
        2 => (0usize..8, prop::collection::vec((0usize..4, 1i64..4), 1..3))
            .prop_map(|(order, lines)| Op::Refund { order, lines }),
        1 => (0usize..8).prop_map(|order| Op::Cancel { order }),
        1 => (0usize..8, 1i64..120).prop_map(|(order, percent)| Op::Share { order, percent }),
        2 => (1i64..6_000).prop_map(|points| Op::Redeem { points }),
        1 => Just(Op::ReverseLast),
        1 => (-2_000i64..3_000).prop_map(|points| Op::Adjust { points }),
        1 => (0usize..5).prop_map(|which| Op::Action { which }),
        3 => (1i64..200).prop_map(|days| Op::Advance { days }),
        1 => Just(Op::CheckTier),
        1 => Just(Op::Review),
    ]
}

fn programs() -> impl Strategy<Value = Program> {
    prop_oneof![Just(kr()), Just(us())]
}

fn lines_of(spec: &[(i64, i64)]) -> Vec<PurchaseLine> {
    spec.iter()
        .enumerate()
        .map(|(i, (q, price))| line(&format!("l{i}"), *q, *price))
        .collect()
}

/// Plays a sequence of operations, checking the invariants after each one.
struct Sim {
    program: Program,
    member: Member,
    now: DateTime<Utc>,
    orders: Vec<String>,
    redemptions: Vec<Vec<LotShare>>,
    seq: usize,
}

impl Sim {
    fn new(program: Program) -> Sim {
        let member = Member::new(&program, t0());
        Sim {
            program,
            member,
            now: t0(),
            orders: Vec::new(),
            redemptions: Vec::new(),
            seq: 0,
        }
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}-{}", self.seq)
    }

    fn tier_index(&self) -> usize {
        self.program
            .tier(&self.member.account.tier.id)
            .map(|(i, _)| i)
            .unwrap()
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let p = self.program.clone();
        let now = self.now;
        let tier_before = self.tier_index();
        let review_before = self.member.account.tier.review_on;
        match op {
            Op::Buy { lines, days_ago } => {
                let order_id = self.next_id("o");
                let event = self.next_id("buy");
                let purchase = purchase(&order_id, p.currency, lines_of(lines));
                let out = self
                    .member
                    .account
                    .earn_purchase(
                        &p,
                        None,
                        &purchase,
                        &[],
                        &ctx(&event, now - days(*days_ago), now),
                    )
                    .unwrap();
                self.member.orders.insert(order_id.clone(), out.order);
                self.member.commit(out.change);
                self.orders.push(order_id);
            }
            Op::Refund { order, lines } => {
                self.reverse(*order, Some(Scope::Lines(lines.clone())))?
            }
            Op::Cancel { order } => self.reverse(*order, None)?,
            // A refund known only by amount: `percent` of the order (past 100 is beyond the total).
            Op::Share { order, percent } => self.reverse(
                *order,
                Some(Scope::Share {
                    amount: *percent,
                    total: 100,
                }),
            )?,
            Op::Redeem { points } => {
                let event = self.next_id("redeem");
                match self
                    .member
                    .account
                    .redeem(&p, *points, "reward", &ctx(&event, now, now))
                {
                    Ok((change, taken)) => {
                        // Soonest-expiring first: nothing earlier than the last lot touched is left.
                        let last = taken.iter().map(|s| s.expires_on).max().unwrap();
                        prop_assert!(change.account.lots.iter().all(|l| l.expires_on >= last));
                        prop_assert_eq!(taken.iter().map(|s| s.points).sum::<i64>(), *points);
                        self.member.commit(change);
                        self.redemptions.push(taken);
                    }
                    Err(_) => {
                        let settled = self.member.account.as_of(&p, now).account;
                        prop_assert!(settled.balance < *points);
                    }
                }
            }
            Op::ReverseLast => {
                if let Some(taken) = self.redemptions.pop() {
                    let event = self.next_id("reverse");
                    let change = self
                        .member
                        .account
                        .reverse_redemption(&p, &taken, "reversal", &ctx(&event, now, now))
                        .unwrap();
                    self.member.commit(change);
                }
            }
            Op::Adjust { points } => {
                let event = self.next_id("adjust");
                if let Ok(change) =
                    self.member
                        .account
                        .adjust(&p, *points, "correction", &ctx(&event, now, now))
                {
                    self.member.commit(change);
                }
            }
            Op::Action { which } => {
                let action = ["signup", "review", "photo_review", "birthday", "custom"][*which];
                let event = self.next_id("action");
                let change = self
                    .member
                    .account
                    .record_action(&p, action, &ctx(&event, now, now));
                self.member.commit(change);
            }
            Op::Advance { days: n } => {
                self.now = now + days(*n);
                let event = self.next_id("settle");
                let change = self
                    .member
                    .account
                    .settle(&p, &ctx(&event, self.now, self.now));
                self.member.commit(change);
            }
            Op::CheckTier => {
                let event = self.next_id("tier");
                let change = self.member.account.check_tier(&p, &ctx(&event, now, now));
                self.member.commit(change);
            }
            Op::Review => {
                let event = self.next_id("review");
                let change = self.member.account.review_tier(&p, &ctx(&event, now, now));
                self.member.commit(change);
            }
        }
        self.member.assert_consistent();
        // A tier goes down only through a review on or after its review date.
        if self.tier_index() < tier_before {
            prop_assert!(matches!(op, Op::Review), "tier lowered by {op:?}");
            let today = local_date(p.time_zone, self.now);
            prop_assert!(review_before.is_some_and(|d| d <= today));
        }
        Ok(())
    }

    /// Applies a refund (`None` = cancellation) and checks it never takes more than was earned.
    fn reverse(&mut self, order: usize, scope: Option<Scope>) -> Result<(), TestCaseError> {
        let Some(order_id) = self.orders.get(order % self.orders.len().max(1)).cloned() else {
            return Ok(());
        };
        let record = self.member.orders.get(&order_id).cloned();
        let earned = record.as_ref().and_then(|r| r.earned.clone()).unwrap();
        let scope = scope.map(|s| match s {
            Scope::Lines(ls) => RefundScope::lines(
                ls.iter()
                    .map(|(i, q)| RefundLine {
                        line_id: earned.lines[i % earned.lines.len()].line_id.clone(),
                        quantity: *q,
                        sku: String::new(),
                    })
                    .collect(),
            ),
            Scope::Share { amount, total } => RefundScope::Share { amount, total },
        });
        let refund_id = if scope.is_none() {
            "cancel".to_string()
        } else {
            self.next_id("r")
        };
        let event = self.next_id("refund");
        let reversal = Reversal {
            order_id: order_id.clone(),
            refund_id,
            scope: scope.unwrap_or(RefundScope::Rest),
            event_id: event.clone(),
            occurred_at: self.now,
        };
        let out = self
            .member
            .account
            .refund(
                &self.program,
                record.as_ref(),
                &reversal,
                &ctx(&event, self.now, self.now),
            )
            .unwrap();
        // A refund never takes back more than the lines earned.
        let after = out.order.earned.clone().unwrap();
        for l in &after.lines {
            prop_assert!(l.clawed <= l.points && l.refunded <= l.quantity && l.clawed >= 0);
        }
        let taken: i64 = self
            .member
            .ledger
            .iter()
            .chain(&out.change.entries)
            .filter(|e| {
                e.kind == EntryKind::Clawback && e.source.order_id.as_deref() == Some(&order_id)
            })
            .map(|e| -(e.points + e.pending) + e.shortfall)
            .sum();
        prop_assert_eq!(taken, after.lines.iter().map(|l| l.clawed).sum::<i64>());
        prop_assert!(taken <= after.points);
        if reversal.scope == RefundScope::Rest {
            prop_assert_eq!(
                taken,
                after.points,
                "a cancellation returns earned points to zero"
            );
        }
        self.member.orders.insert(order_id, out.order);
        self.member.commit(out.change);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn balance_is_the_sum_of_the_ledger_after_any_sequence(
        program in programs(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        // GIVEN any program and any sequence of purchases, refunds, redemptions, reversals,
        // adjustments, actions, tier checks, reviews and the passing of time
        let mut sim = Sim::new(program);
        // WHEN each is applied and committed
        for op in &ops {
            sim.apply(op)?;
        }
        // THEN after each one Σ points == balance and Σ pending == pending (checked in apply),
        // and the as-of view adds exactly its provisional entries
        let view = sim.member.account.as_of(&sim.program, sim.now + days(400));
        let provisional: i64 = view.entries.iter().map(|e| e.points).sum();
        prop_assert_eq!(view.account.balance, sim.member.account.balance + provisional);
        prop_assert!(view.entries.iter().all(|e| e.provisional));
        prop_assert_eq!(view.account.pending_points(), 0);
    }

    #[test]
    fn arrival_order_never_changes_the_final_account(
        program in programs(),
        lines in prop::collection::vec((1i64..5, 100i64..300_000), 1..4),
        refunds in prop::collection::vec(prop::collection::vec((0usize..4, 1i64..5), 1..3), 0..3),
        with_cancel in any::<bool>(),
        order in Just(()).prop_perturb(|_, mut rng| rng.random::<u64>()),
    ) {
        // GIVEN a purchase, some refunds and perhaps a cancellation of it
        let now = t0();
        let purchase_lines = lines_of(&lines);
        let mut reversals: Vec<Reversal> = refunds
            .iter()
            .enumerate()
            .map(|(n, ls)| Reversal {
                order_id: "o-1".into(),
                refund_id: format!("r-{n}"),
                scope: RefundScope::lines(ls.iter().map(|(i, q)| RefundLine {
                    line_id: format!("l{}", i % lines.len()),
                    quantity: *q,
                    sku: String::new(),
                }).collect()),
                event_id: format!("ev-r-{n}"),
                occurred_at: now,
            })
            .collect();
        if with_cancel {
            reversals.push(Reversal {
                order_id: "o-1".into(),
                refund_id: "cancel".into(),
                scope: RefundScope::Rest,
                event_id: "ev-cancel".into(),
                occurred_at: now,
            });
        }
        let play = |sequence: &[Option<&Reversal>]| {
            let mut m = Member::new(&program, now);
            for step in sequence {
                match step {
                    None => {
                        let p = purchase("o-1", program.currency, purchase_lines.clone());
                        let out = m.account.earn_purchase(&program, m.orders.get("o-1"), &p, &[], &ctx("ev-buy", now, now)).unwrap();
                        m.orders.insert("o-1".into(), out.order);
                        m.commit(out.change);
                    }
                    Some(r) => {
                        let out = m.account.refund(&program, m.orders.get("o-1"), r, &ctx(&r.event_id, now, now)).unwrap();
                        m.orders.insert("o-1".into(), out.order);
                        m.commit(out.change);
                    }
                }
                m.assert_consistent();
            }
            m
        };
        // WHEN they are processed in order, and with the purchase arriving at a random place
        let mut in_order: Vec<Option<&Reversal>> = vec![None];
        in_order.extend(reversals.iter().map(Some));
        let mut shuffled: Vec<Option<&Reversal>> = reversals.iter().map(Some).collect();
        let at = (order as usize) % (shuffled.len() + 1);
        shuffled.insert(at, None);
        let a = play(&in_order);
        let b = play(&shuffled);
        // THEN both end with the same account
        prop_assert_eq!(&a.account, &b.account);
        prop_assert_eq!(
            a.orders["o-1"].earned.as_ref().map(|e| e.lines.clone()),
            b.orders["o-1"].earned.as_ref().map(|e| e.lines.clone())
        );
    }

    #[test]
    fn refunding_every_line_returns_the_order_to_zero(
        program in programs(),
        lines in prop::collection::vec((1i64..6, 100i64..500_000), 1..5),
        splits in prop::collection::vec(1i64..4, 1..6),
    ) {
        // GIVEN an order WHEN every unit of every line is refunded in several partial refunds
        let now = t0();
        let mut m = Member::new(&program, now);
        let p = purchase("o-1", program.currency, lines_of(&lines));
        let out = m.account.earn_purchase(&program, None, &p, &[], &ctx("buy", now, now)).unwrap();
        let earned = out.order.earned.clone().unwrap().points;
        m.orders.insert("o-1".into(), out.order);
        m.commit(out.change);
        let mut left: Vec<i64> = lines.iter().map(|(q, _)| *q).collect();
        let mut n = 0;
        while left.iter().any(|q| *q > 0) {
            let step = splits[n % splits.len()];
            let refund_lines: Vec<RefundLine> = left
                .iter_mut()
                .enumerate()
                .filter(|(_, q)| **q > 0)
                .map(|(i, q)| {
                    let take = step.min(*q);
                    *q -= take;
                    RefundLine { line_id: format!("l{i}"), quantity: take, sku: String::new() }
                })
                .collect();
            let r = Reversal {
                order_id: "o-1".into(),
                refund_id: format!("r-{n}"),
                scope: RefundScope::lines(refund_lines),
                event_id: format!("ev-{n}"),
                occurred_at: now,
            };
            let out = m.account.refund(&program, m.orders.get("o-1"), &r, &ctx(&r.event_id, now, now)).unwrap();
            m.orders.insert("o-1".into(), out.order);
            m.commit(out.change);
            n += 1;
        }
        // THEN exactly what the order earned has been taken back, no more
        let record = m.orders["o-1"].earned.clone().unwrap();
        prop_assert_eq!(record.lines.iter().map(|l| l.clawed).sum::<i64>(), earned);
        prop_assert_eq!(m.account.pending_points() + m.account.balance, 0);
        m.assert_consistent();
    }
}
