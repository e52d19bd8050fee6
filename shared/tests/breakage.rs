//! Breakage against an oracle: two years of seeded purchases and redemptions for 10,000 members
//! go through the services on the embedded store, and the liability report's breakage (per
//! issue cohort and in total) must equal what an independent simulation of the program's rules
//! computes from the generated events alone.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use common::Recorder;
use loyalty_core::domain::calendar::YearMonth;
use loyalty_core::domain::Program;
use loyalty_core::ports::FixedClock;
use loyalty_core::services::earn::Processed;
use loyalty_core::services::programs::ProgramFormat;
use loyalty_core::services::Services;
use loyalty_core::store::sqlite::SqliteStore;
use serde_json::json;

/// kr-shop cut down to what breakage needs: 1 point per 100 won, 7 days pending, points
/// usable until the end of the month 12 months after they were earned, one tier, one reward.
const BK_SHOP: &str = r#"
id = "bk-shop"
name = "Breakage Shop"
currency = "KRW"
time_zone = "Asia/Seoul"
point_value = "1"

[purchase]
points = 1
per = "100"
pending_days = 7

[expiry]
months = 12

[tier_rules]
measure = "spend"
window = "rolling_12_months"
review = "anniversary"
downgrade = "one_level"

[[tiers]]
id = "MEMBER"
threshold = "0"
multiplier_bp = 10000

[[rewards]]
id = "r-1000"
name = "1,000 won off"
kind = "fixed_discount"
cost = 1000
amount = "1000"
"#;

const PROGRAM: &str = "bk-shop";
const MEMBERS: usize = 10_000;
const SEED: u64 = 0x00b7_ea4a_6e5e_ed01;
/// The history covers 2025-01-01 .. 2026-12-31 (730 days).
const DAYS: u64 = 730;
const COST: i64 = 1000;
const PENDING_DAYS: i64 = 7;
const EXPIRY_MONTHS: i32 = 12;

// ---------------------------------------------------------------------------------------------
// A seeded generator
// ---------------------------------------------------------------------------------------------

/// SplitMix64: tiny, seedable and good enough to draw a history from.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant here.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn coin(&mut self) -> bool {
        self.next() >> 63 == 1
    }
}

fn first_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, 1, 1).unwrap()
}

fn as_of() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 12, 31).unwrap()
}

/// A random instant of day `day` (0-based from 2025-01-01) between 00:00 and 12:00 UTC, i.e.
/// 09:00 to 21:00 in Seoul: the UTC date and the Seoul date are the same day.
fn instant(rng: &mut SplitMix64, day: u64) -> DateTime<Utc> {
    let date = first_day() + Duration::days(day as i64);
    let second = rng.below(12 * 3600) as i64;
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).unwrap()) + Duration::seconds(second)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A purchase of this many won (a multiple of 100).
    Purchase(i64),
    /// A redemption of the 1,000-point reward.
    Redeem,
}

#[derive(Debug, Clone, Copy)]
struct Op {
    at: DateTime<Utc>,
    member: usize,
    /// Increasing along its member's own history (ties in `at` keep that order).
    seq: usize,
    kind: Kind,
}

fn member_id(member: usize) -> String {
    format!("bk-m-{member:05}")
}

// ---------------------------------------------------------------------------------------------
// The oracle: the program's rules, simulated member by member
// ---------------------------------------------------------------------------------------------

/// The local (Seoul) date of an instant. Seoul has no daylight saving: UTC+9 all year.
fn seoul_date(at: DateTime<Utc>) -> NaiveDate {
    (at + Duration::hours(9)).date_naive()
}

fn month_of(date: NaiveDate) -> YearMonth {
    use chrono::Datelike;
    YearMonth::new(date.year(), date.month())
}

/// The month at whose end points issued in `issued` expire.
fn expiry_month(issued: YearMonth) -> YearMonth {
    let index = issued.year() * 12 + issued.month() as i32 - 1 + EXPIRY_MONTHS;
    YearMonth::new(index.div_euclid(12), (index.rem_euclid(12) + 1) as u32)
}

/// What became of the points of one issue month.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Fate {
    issued: i64,
    redeemed: i64,
    expired: i64,
}

impl Fate {
    fn outstanding(&self) -> i64 {
        self.issued - self.redeemed - self.expired
    }
}

/// One member's points: grants still in the return window and available lots by issue month
/// (issue order is also expiry order).
#[derive(Default)]
struct Wallet {
    pending: Vec<(DateTime<Utc>, YearMonth, i64)>,
    lots: BTreeMap<YearMonth, i64>,
}

impl Wallet {
    /// Releases the grants `due` says are due, then expires the lots whose last day is before
    /// `today`.
    fn settle(
        &mut self,
        due: impl Fn(DateTime<Utc>) -> bool,
        today: NaiveDate,
        fates: &mut BTreeMap<YearMonth, Fate>,
    ) {
        let (released, kept): (Vec<_>, Vec<_>) =
            self.pending.drain(..).partition(|(at, _, _)| due(*at));
        self.pending = kept;
        for (_, month, points) in released {
            *self.lots.entry(month).or_insert(0) += points;
            fates.entry(month).or_default().issued += points;
        }
        let this_month = month_of(today);
        let ended: Vec<YearMonth> = self
            .lots
            .keys()
            .copied()
            .filter(|issued| expiry_month(*issued) < this_month)
            .collect();
        for month in ended {
            let points = self.lots.remove(&month).unwrap();
            fates.entry(month).or_default().expired += points;
        }
    }

    /// Settles at an event's instant.
    fn settle_at(&mut self, now: DateTime<Utc>, fates: &mut BTreeMap<YearMonth, Fate>) {
        self.settle(|release_at| release_at <= now, seoul_date(now), fates);
    }

    fn purchase(&mut self, at: DateTime<Utc>, amount: i64) {
        let points = amount / 100;
        self.pending.push((
            at + Duration::days(PENDING_DAYS),
            month_of(seoul_date(at)),
            points,
        ));
    }

    fn available(&self) -> i64 {
        self.lots.values().sum()
    }

    /// Takes `points` from the oldest lots first.
    fn redeem(&mut self, points: i64, fates: &mut BTreeMap<YearMonth, Fate>) {
        let mut left = points;
        while left > 0 {
            let (&month, lot) = self.lots.iter_mut().next().expect("the oracle checked");
            let take = (*lot).min(left);
            *lot -= take;
            left -= take;
            fates.entry(month).or_default().redeemed += take;
            if *lot == 0 {
                self.lots.remove(&month);
            }
        }
    }
}

/// The generated history (only the redemptions the member could afford), and the oracle's
/// fates by issue month and pending points, as of the report's date.
struct History {
    ops: Vec<Op>,
    fates: BTreeMap<YearMonth, Fate>,
    pending: i64,
    attempts: usize,
}

fn history(seed: u64) -> History {
    let mut rng = SplitMix64(seed);
    let mut fates: BTreeMap<YearMonth, Fate> = BTreeMap::new();
    let mut ops = Vec::new();
    let mut attempts = 0;
    let mut pending = 0;
    for member in 0..MEMBERS {
        // The member's purchases, and after some of them a later attempt to redeem.
        let mut planned: Vec<(DateTime<Utc>, Kind)> = Vec::new();
        for _ in 0..rng.below(7) {
            let day = rng.below(DAYS);
            let amount = (50 + rng.below(1951) as i64) * 100;
            planned.push((instant(&mut rng, day), Kind::Purchase(amount)));
            if rng.coin() && day + 1 < DAYS {
                let later = day + 1 + rng.below(DAYS - day - 1);
                planned.push((instant(&mut rng, later), Kind::Redeem));
                attempts += 1;
            }
        }
        planned.sort_by_key(|(at, _)| *at);
        // The member's life in time order; an attempt they cannot afford never happens.
        let mut wallet = Wallet::default();
        for (at, kind) in planned {
            wallet.settle_at(at, &mut fates);
            match kind {
                Kind::Purchase(amount) => wallet.purchase(at, amount),
                Kind::Redeem if wallet.available() >= COST => wallet.redeem(COST, &mut fates),
                Kind::Redeem => continue,
            }
            ops.push(Op {
                at,
                member,
                seq: ops.len(),
                kind,
            });
        }
        // As of the end of the report's day: released by their Seoul date, expired before it.
        wallet.settle(
            |release_at| seoul_date(release_at) <= as_of(),
            as_of(),
            &mut fates,
        );
        pending += wallet.pending.iter().map(|(_, _, p)| p).sum::<i64>();
    }
    // Every event in global time order; a member's own events keep their order.
    ops.sort_by_key(|op| (op.at, op.member, op.seq));
    History {
        ops,
        fates,
        pending,
        attempts,
    }
}

/// `expired / resolved` to 4 decimal places, rounded down.
fn rate(expired: i64, resolved: i64) -> String {
    let q = i128::from(expired) * 10_000 / i128::from(resolved);
    format!("{}.{:04}", q / 10_000, q % 10_000)
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[test]
fn the_program_is_valid() {
    let program = Program::from_toml(BK_SHOP).expect("bk-shop is valid");
    assert_eq!(program.expiry_months, EXPIRY_MONTHS as u32);
    assert_eq!(program.tiers.len(), 1);
}

#[test]
fn the_oracle_expires_at_the_end_of_the_twelfth_month() {
    assert_eq!(
        expiry_month(YearMonth::new(2025, 3)),
        YearMonth::new(2026, 3)
    );
    assert_eq!(
        expiry_month(YearMonth::new(2025, 12)),
        YearMonth::new(2026, 12)
    );
    // GIVEN 1,500 points earned in March 2025 and released a week later
    let mut fates = BTreeMap::new();
    let mut wallet = Wallet::default();
    let bought = Utc.with_ymd_and_hms(2025, 3, 31, 3, 0, 0).unwrap();
    wallet.purchase(bought, 150_000);
    // WHEN the member is seen on 31 March 2026 and then on 1 April 2026
    wallet.settle_at(
        Utc.with_ymd_and_hms(2026, 3, 31, 11, 0, 0).unwrap(),
        &mut fates,
    );
    let usable = wallet.available();
    wallet.settle_at(
        Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap(),
        &mut fates,
    );
    // THEN they are usable on the last day and expired the day after
    assert_eq!(usable, 1500);
    assert_eq!(wallet.available(), 0);
    assert_eq!(
        fates[&YearMonth::new(2025, 3)],
        Fate {
            issued: 1500,
            redeemed: 0,
            expired: 1500
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakage_matches_an_oracle_over_two_years_of_members() {
    // GIVEN bk-shop on the embedded store and a seeded two-year history of 10,000 members
    let started = Instant::now();
    let store = SqliteStore::memory().unwrap();
    let queue = Arc::new(Recorder::default());
    let clock = FixedClock::at(Utc.with_ymd_and_hms(2024, 12, 31, 0, 0, 0).unwrap());
    let services = Services::new(Arc::new(store.clone()), queue.clone(), clock.clone());
    services
        .put_program(PROGRAM, BK_SHOP, ProgramFormat::Toml)
        .await
        .unwrap();
    let History {
        ops,
        fates,
        pending,
        attempts,
    } = history(SEED);
    let purchases = ops
        .iter()
        .filter(|op| matches!(op.kind, Kind::Purchase(_)))
        .count();
    let redemptions = ops.len() - purchases;
    assert!(ops.len() < 50_000, "{} operations", ops.len());
    let generated = started.elapsed();

    // WHEN every event is processed in time order, the clock set to its instant
    for (n, op) in ops.iter().enumerate() {
        clock.set(op.at);
        let member = member_id(op.member);
        match op.kind {
            Kind::Purchase(amount) => {
                let event = json!({
                    "type": "purchase.completed", "version": 1, "id": format!("ev-{n}"),
                    "program": PROGRAM, "member": member, "occurred_at": op.at.to_rfc3339(),
                    "data": {"order_id": format!("o-{n}"), "currency": "KRW", "lines": [
                        {"line_id": "1", "quantity": 1, "unit_price": amount.to_string()}
                    ]}
                });
                let outcome = services.process_earn(&event.to_string()).await.unwrap();
                assert!(
                    matches!(outcome, Processed::Applied { .. }),
                    "purchase {n} of {member}: {outcome:?}"
                );
            }
            Kind::Redeem => {
                let key = format!("rd-{n}");
                let answer = services
                    .redeem(
                        PROGRAM,
                        &member,
                        &member,
                        Some(&key),
                        br#"{"reward":"r-1000"}"#,
                    )
                    .await
                    .unwrap_or_else(|e| panic!("redemption {n} of {member} at {}: {e:?}", op.at));
                assert_eq!(answer.status, 201, "{}", answer.body);
            }
        }
        if n % 1000 == 0 {
            queue.0.lock().unwrap().clear();
        }
    }
    queue.0.lock().unwrap().clear();
    let processed = started.elapsed();
    let report = services.liability(PROGRAM, Some(as_of())).await.unwrap();
    println!(
        "{} purchases, {redemptions} redemptions ({attempts} attempts), generated in {generated:?}, \
         processed in {:?}, reported in {:?}",
        purchases,
        processed - generated,
        started.elapsed() - processed
    );

    // THEN the oracle's figures, from the generated events alone
    let this_month = month_of(as_of());
    let matured: Vec<(&YearMonth, &Fate)> = fates
        .iter()
        .filter(|(issued, _)| expiry_month(**issued) < this_month)
        .collect();
    let expired: i64 = matured.iter().map(|(_, f)| f.expired).sum();
    let resolved: i64 = matured.iter().map(|(_, f)| f.expired + f.redeemed).sum();
    let outstanding: i64 = fates.values().map(Fate::outstanding).sum();
    assert!(!matured.is_empty(), "some cohorts have matured");
    assert!(expired > 0 && expired < resolved, "0 < rate < 1");
    let expected_rate = rate(expired, resolved);
    let expected_points =
        i64::try_from(i128::from(outstanding) * i128::from(expired) / i128::from(resolved))
            .unwrap();
    println!(
        "oracle: {} matured cohorts, expired {expired} of {resolved} resolved (rate {expected_rate}), \
         outstanding {outstanding}, expected breakage {expected_points}, pending {pending}",
        matured.len()
    );

    // ... the report's cohorts are the oracle's, month by month
    let report_months: Vec<YearMonth> = report.breakage.cohorts.iter().map(|c| c.month).collect();
    let oracle_months: Vec<YearMonth> = fates.keys().copied().collect();
    assert_eq!(report_months, oracle_months, "the issue months");
    for cohort in &report.breakage.cohorts {
        let fate = fates[&cohort.month];
        let month = cohort.month;
        assert_eq!(cohort.expires, expiry_month(month), "{month} expires");
        assert_eq!(cohort.issued, fate.issued, "{month} issued");
        assert_eq!(cohort.redeemed, fate.redeemed, "{month} redeemed");
        assert_eq!(cohort.expired, fate.expired, "{month} expired");
        assert_eq!(
            cohort.outstanding,
            fate.outstanding(),
            "{month} outstanding"
        );
        assert_eq!(
            cohort.matured,
            expiry_month(month) < this_month,
            "{month} matured"
        );
    }
    // ... and so are the totals
    assert_eq!(report.breakage.expired, expired, "breakage.expired");
    assert_eq!(report.breakage.resolved, resolved, "breakage.resolved");
    assert_eq!(
        report.breakage.rate.as_deref(),
        Some(expected_rate.as_str()),
        "breakage.rate"
    );
    assert_eq!(
        report.breakage.expected_points,
        Some(expected_points),
        "breakage.expected_points"
    );
    assert_eq!(report.outstanding, outstanding, "outstanding");
    assert_eq!(report.pending, pending, "pending");
    assert!(
        expected_rate.starts_with("0.") && expected_rate != "0.0000",
        "the rate {expected_rate} is strictly between 0 and 1"
    );
    println!("total {:?}", started.elapsed());
}
