//! The points liability of a program as of a date, its movement month by month, and breakage
//! by issue cohort: what finance books, computed from the program's books
//! ([`crate::domain::books`]) alone.
//!
//! "As of D" means at the end of day D in the program's time zone. What time alone has done by
//! then and no job has written yet is applied here as the member view applies it
//! (`Account::as_of`): pending points whose day has come are released, and lots whose last
//! usable day is before D expire, both in D's month. So a lot that ends on 30 November is
//! outstanding in the report as of 30 November and expired in the report as of 1 December,
//! whether or not the expiry job has run.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::Serialize;

use crate::domain::books::BookRow;
use crate::domain::calendar::YearMonth;
use crate::domain::Program;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MonthPoints {
    pub month: YearMonth,
    pub points: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierLine {
    pub tier: String,
    pub members: i64,
    /// Available points held by the tier's members (their lots).
    pub points: i64,
    pub pending: i64,
}

impl Movement {
    /// opening, issued, redeemed, expired, clawed back, adjusted, transferred, forfeited, paid
    /// out, debt written off, closing: a row of a table.
    pub fn figures(&self) -> [i64; 11] {
        [
            self.opening,
            self.issued,
            self.redeemed,
            self.expired,
            self.clawed_back,
            self.adjusted,
            self.transferred,
            self.forfeited,
            self.paid_out,
            self.debt_written_off,
            self.closing,
        ]
    }

    /// Whether the month adds up (see [`Movement`]).
    pub fn adds_up(&self) -> bool {
        self.opening + self.issued - self.redeemed - self.expired - self.clawed_back
            + self.adjusted
            + self.transferred
            - self.forfeited
            - self.paid_out
            + self.debt_written_off
            == self.closing
    }
}

/// One month of the available balance: `opening + issued - redeemed - expired - clawed_back
/// + adjusted + transferred - forfeited - paid_out + debt_written_off == closing`, and `closing` is next month's
/// `opening`. `transferred` is 0 over a merge whose two halves fall in one month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Movement {
    pub month: YearMonth,
    pub opening: i64,
    /// Credited to available points: `earn` (straight away) and `release` (after the return
    /// window).
    pub issued: i64,
    pub issued_by_kind: BTreeMap<String, i64>,
    /// Spent, net of redemptions given back.
    pub redeemed: i64,
    pub expired: i64,
    pub clawed_back: i64,
    /// Operators' corrections, signed.
    pub adjusted: i64,
    /// Moved between members by merges, signed: 0 once both halves of each merge are written.
    pub transferred: i64,
    /// Given up by members whose personal data was erased.
    pub forfeited: i64,
    /// Paid out in money to members whose personal data was erased.
    pub paid_out: i64,
    /// Debt forgiven when a member who owed points was erased: the balance rises by it.
    pub debt_written_off: i64,
    pub closing: i64,
}

/// The fate of the points of one issue cohort, followed by their lot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cohort {
    /// The month its points were issued in (`expires` minus the program's expiry months).
    pub month: YearMonth,
    /// The month its points expire at the end of.
    pub expires: YearMonth,
    pub issued: i64,
    pub redeemed: i64,
    pub expired: i64,
    pub clawed_back: i64,
    pub adjusted: i64,
    pub transferred: i64,
    pub forfeited: i64,
    pub paid_out: i64,
    pub outstanding: i64,
    /// Every point of it has been redeemed, expired or taken back.
    pub matured: bool,
}

/// How much of what is issued is never redeemed, learnt from the matured cohorts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Breakage {
    /// `expired / resolved` over the matured cohorts, to 4 decimal places (rounded down);
    /// `null` until a cohort has matured.
    pub rate: Option<String>,
    /// Points of the matured cohorts that expired.
    pub expired: i64,
    /// Points of the matured cohorts that were redeemed or expired.
    pub resolved: i64,
    /// Outstanding points expected never to be redeemed: `floor(outstanding x rate)`.
    pub expected_points: Option<i64>,
    pub cohorts: Vec<Cohort>,
}

/// What time alone changed by the report's date that no job had written yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Provisional {
    pub released: i64,
    pub expired: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiabilityReport {
    pub program: String,
    pub as_of: NaiveDate,
    pub currency: String,
    /// Major units one point is worth (the program's `point_value`).
    pub point_value: Option<String>,
    /// Available points the brand owes: the sum of every lot.
    pub outstanding: i64,
    /// `outstanding` at `point_value`, as a decimal string; `null` when the program sets none.
    pub value: Option<String>,
    pub by_expiry_month: Vec<MonthPoints>,
    /// Points members owe after clawbacks took more than they had (allow-negative programs).
    pub owed: i64,
    /// `outstanding - owed`: the sum of every member's balance.
    pub net: i64,
    pub pending: i64,
    pub pending_by_release_month: Vec<MonthPoints>,
    pub held: i64,
    pub members: i64,
    pub by_tier: Vec<TierLine>,
    pub movements: Vec<Movement>,
    pub breakage: Breakage,
    pub provisional: Provisional,
}

/// The counters summed up to the report's date, by what they count.
#[derive(Default)]
struct Sums {
    points: BTreeMap<YearMonth, BTreeMap<String, i64>>,
    lots: BTreeMap<NaiveDate, BTreeMap<String, i64>>,
    tier_lots: BTreeMap<(String, NaiveDate), i64>,
    releases: BTreeMap<(String, NaiveDate, NaiveDate), i64>,
    members: BTreeMap<String, i64>,
    debt: i64,
    held: i64,
}

impl Sums {
    fn of(rows: &[BookRow], as_of: NaiveDate) -> Sums {
        let mut sums = Sums::default();
        for row in rows.iter().filter(|r| r.day <= as_of) {
            sums.add(row);
        }
        sums
    }

    fn add(&mut self, row: &BookRow) {
        let parts: Vec<&str> = row.name.split('|').collect();
        let date = |s: &str| s.parse::<NaiveDate>().ok();
        match parts.as_slice() {
            ["p", kind] => {
                *self
                    .points
                    .entry(YearMonth::of(row.day))
                    .or_default()
                    .entry(kind.to_string())
                    .or_insert(0) += row.value
            }
            ["l", day, kind] => {
                if let Some(day) = date(day) {
                    *self
                        .lots
                        .entry(day)
                        .or_default()
                        .entry(kind.to_string())
                        .or_insert(0) += row.value;
                }
            }
            ["t", tier, day] => {
                if let Some(day) = date(day) {
                    *self.tier_lots.entry((tier.to_string(), day)).or_insert(0) += row.value;
                }
            }
            ["r", tier, day, lot] => {
                if let (Some(day), Some(lot)) = (date(day), date(lot)) {
                    *self
                        .releases
                        .entry((tier.to_string(), day, lot))
                        .or_insert(0) += row.value;
                }
            }
            // Written after its day: moved to its day's month.
            ["x", day, kind] => {
                if let Some(due) = date(day) {
                    self.bump(YearMonth::of(row.day), kind, -row.value);
                    self.bump(YearMonth::of(due), kind, row.value);
                }
            }
            ["m", tier] => *self.members.entry(tier.to_string()).or_insert(0) += row.value,
            ["debt"] => self.debt += row.value,
            ["held"] => self.held += row.value,
            _ => {}
        }
    }

    fn bump(&mut self, month: YearMonth, kind: &str, points: i64) {
        *self
            .points
            .entry(month)
            .or_default()
            .entry(kind.into())
            .or_insert(0) += points;
    }

    /// Releases what is due by the end of `as_of`, then expires what ended before it, each in
    /// the month of the day it was due: where the books will have it once it is written
    /// (`x|` rows), so a month's closing is the same in every report made after it.
    fn settle(&mut self, as_of: NaiveDate) -> Provisional {
        let mut provisional = Provisional::default();
        let due: Vec<_> = self
            .releases
            .iter()
            .filter(|((_, day, _), points)| *day <= as_of && **points != 0)
            .map(|(key, points)| (key.clone(), *points))
            .collect();
        for ((tier, day, lot), points) in due {
            self.releases.remove(&(tier.clone(), day, lot));
            *self
                .lots
                .entry(lot)
                .or_default()
                .entry("release".into())
                .or_insert(0) += points;
            *self.tier_lots.entry((tier.clone(), lot)).or_insert(0) += points;
            self.bump(YearMonth::of(day), "release", points);
            provisional.released += points;
            // Released into a lot that had ended: they expire as they arrive, in the month they
            // were issued, as the written release and expiry will be (Journal::settle).
            if lot < day {
                *self
                    .lots
                    .entry(lot)
                    .or_default()
                    .entry("expire".into())
                    .or_insert(0) -= points;
                *self.tier_lots.entry((tier, lot)).or_insert(0) -= points;
                self.bump(YearMonth::of(day), "expire", -points);
                provisional.expired += points;
            }
        }
        let ended: Vec<(NaiveDate, i64)> = self
            .lots
            .iter()
            .filter(|(day, _)| **day < as_of)
            .map(|(day, kinds)| (*day, kinds.values().sum::<i64>()))
            .filter(|(_, left)| *left != 0)
            .collect();
        for (day, left) in ended {
            *self
                .lots
                .entry(day)
                .or_default()
                .entry("expire".into())
                .or_insert(0) -= left;
            for ((_, lot), points) in self.tier_lots.iter_mut() {
                if *lot == day {
                    *points = 0;
                }
            }
            self.bump(
                YearMonth::of(day.succ_opt().unwrap_or(day)),
                "expire",
                -left,
            );
            provisional.expired += left;
        }
        provisional
    }
}

/// The program's sums as written (no provisional change), for the audit to compare with the
/// sums over its members. `entries` is not kept in the books and stays 0.
pub fn written(rows: &[BookRow]) -> crate::audit::Totals {
    let mut totals = crate::audit::Totals::default();
    let mut members = 0_i64;
    for row in rows {
        let kind = row.name.split('|').next().unwrap_or("");
        match kind {
            "p" => totals.balance += row.value,
            "l" => totals.lots += row.value,
            "r" => totals.pending += row.value,
            "m" => members += row.value,
            "debt" => totals.debt += row.value,
            "held" => totals.held += row.value,
            _ => {}
        }
    }
    totals.members = u64::try_from(members).unwrap_or(0);
    totals
}

/// The report as of `as_of` from the program's books (rows of later days are ignored).
pub fn report(program: &Program, rows: &[BookRow], as_of: NaiveDate) -> LiabilityReport {
    let mut sums = Sums::of(rows, as_of);
    let provisional = sums.settle(as_of);
    let lot_left = |kinds: &BTreeMap<String, i64>| kinds.values().sum::<i64>();
    let outstanding: i64 = sums.lots.values().map(lot_left).sum();
    let mut by_expiry_month: BTreeMap<YearMonth, i64> = BTreeMap::new();
    for (day, kinds) in &sums.lots {
        *by_expiry_month.entry(YearMonth::of(*day)).or_insert(0) += lot_left(kinds);
    }
    let mut pending_by_release_month: BTreeMap<YearMonth, i64> = BTreeMap::new();
    for ((_, day, _), points) in &sums.releases {
        *pending_by_release_month
            .entry(YearMonth::of(*day))
            .or_insert(0) += points;
    }
    let breakage = breakage(program, &sums, as_of, outstanding);
    LiabilityReport {
        program: program.id.clone(),
        as_of,
        currency: program.currency.to_string(),
        point_value: program
            .point_value_micros
            .map(|m| decimal(i128::from(m), 0)),
        outstanding,
        value: program.point_value_micros.map(|m| {
            decimal(
                i128::from(outstanding) * i128::from(m),
                program.currency.exponent(),
            )
        }),
        by_expiry_month: month_points(by_expiry_month),
        owed: sums.debt,
        net: outstanding - sums.debt,
        pending: sums.releases.values().sum(),
        pending_by_release_month: month_points(pending_by_release_month),
        held: sums.held,
        members: sums.members.values().sum(),
        by_tier: by_tier(program, &sums),
        movements: movements(&sums, YearMonth::of(as_of)),
        breakage,
        provisional,
    }
}

fn month_points(months: BTreeMap<YearMonth, i64>) -> Vec<MonthPoints> {
    months
        .into_iter()
        .filter(|(_, points)| *points != 0)
        .map(|(month, points)| MonthPoints { month, points })
        .collect()
}

/// The program's tiers in order, then any tier the books name that the program no longer has.
fn by_tier(program: &Program, sums: &Sums) -> Vec<TierLine> {
    let mut names: Vec<String> = program.tiers.iter().map(|t| t.id.clone()).collect();
    for (tier, _) in sums.tier_lots.keys() {
        if !names.contains(tier) {
            names.push(tier.clone());
        }
    }
    for tier in sums.members.keys() {
        if !names.contains(tier) {
            names.push(tier.clone());
        }
    }
    names
        .into_iter()
        .map(|tier| TierLine {
            members: sums.members.get(&tier).copied().unwrap_or(0),
            points: sums
                .tier_lots
                .iter()
                .filter(|((t, _), _)| *t == tier)
                .map(|(_, p)| p)
                .sum(),
            pending: sums
                .releases
                .iter()
                .filter(|((t, _, _), _)| *t == tier)
                .map(|(_, p)| p)
                .sum(),
            tier,
        })
        .collect()
}

fn movements(sums: &Sums, last: YearMonth) -> Vec<Movement> {
    let Some(first) = sums.points.keys().next().copied() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut opening = 0;
    let mut month = first;
    let empty = BTreeMap::new();
    while month <= last {
        let kinds = sums.points.get(&month).unwrap_or(&empty);
        let of = |kind: &str| kinds.get(kind).copied().unwrap_or(0);
        let issued_by_kind: BTreeMap<String, i64> = ["earn", "release"]
            .iter()
            .map(|k| (k.to_string(), of(k)))
            .collect();
        let change: i64 = kinds.values().sum();
        let movement = Movement {
            month,
            opening,
            issued: of("earn") + of("release"),
            issued_by_kind,
            redeemed: -(of("redeem") + of("reverse")),
            expired: -of("expire"),
            clawed_back: -of("clawback"),
            adjusted: of("adjust"),
            transferred: of("merge"),
            forfeited: -of("forfeit"),
            paid_out: -of("payout"),
            debt_written_off: of(crate::domain::books::DEBT_WRITTEN_OFF),
            closing: opening + change,
        };
        opening = movement.closing;
        out.push(movement);
        month = month.minus(-1);
    }
    out
}

fn breakage(program: &Program, sums: &Sums, as_of: NaiveDate, outstanding: i64) -> Breakage {
    let mut cohorts: BTreeMap<YearMonth, BTreeMap<String, i64>> = BTreeMap::new();
    for (day, kinds) in &sums.lots {
        let cohort = cohorts.entry(YearMonth::of(*day)).or_default();
        for (kind, points) in kinds {
            *cohort.entry(kind.clone()).or_insert(0) += points;
        }
    }
    let this_month = YearMonth::of(as_of);
    let (mut expired, mut resolved) = (0_i64, 0_i64);
    let cohorts: Vec<Cohort> = cohorts
        .into_iter()
        .map(|(expires, kinds)| {
            let of = |kind: &str| kinds.get(kind).copied().unwrap_or(0);
            let cohort = Cohort {
                month: expires.minus(program.expiry_months as i32),
                expires,
                issued: of("earn") + of("release"),
                redeemed: -(of("redeem") + of("reverse")),
                expired: -of("expire"),
                clawed_back: -of("clawback"),
                adjusted: of("adjust"),
                transferred: of("merge"),
                forfeited: -of("forfeit"),
                paid_out: -of("payout"),
                outstanding: kinds.values().sum(),
                matured: expires < this_month,
            };
            if cohort.matured {
                expired += cohort.expired;
                resolved += cohort.expired + cohort.redeemed;
            }
            cohort
        })
        .collect();
    let rate = (resolved > 0).then(|| {
        let ten_thousandths = i128::from(expired) * 10_000 / i128::from(resolved);
        decimal(ten_thousandths * 100, 4)
    });
    Breakage {
        rate,
        expired,
        resolved,
        expected_points: (resolved > 0).then(|| {
            let points = i128::from(outstanding) * i128::from(expired) / i128::from(resolved);
            i64::try_from(points).unwrap_or(i64::MAX)
        }),
        cohorts,
    }
}

/// Millionths as a decimal string with at least `min_digits` fraction digits and no trailing
/// zeros beyond them ("12.34", "1234", "0.2500").
pub fn decimal(millionths: i128, min_digits: u8) -> String {
    let sign = if millionths < 0 { "-" } else { "" };
    let abs = millionths.unsigned_abs();
    let whole = abs / 1_000_000;
    let mut fraction = format!("{:06}", abs % 1_000_000);
    while fraction.len() > usize::from(min_digits) && fraction.ends_with('0') {
        fraction.pop();
    }
    if fraction.is_empty() {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{fraction}")
    }
}

/// The movement table as CSV, one row per month, with what expires and what is released in
/// each month alongside.
/// Months after the report's own have no movement yet: their movement cells are empty, never 0
/// (a closing of 0 would read as the balance falling to nothing).
pub fn csv(report: &LiabilityReport) -> String {
    let mut out = String::from(
        "month,opening,issued,redeemed,expired,clawed_back,adjusted,transferred,forfeited,paid_out,debt_written_off,closing,expiring,pending_released\n",
    );
    let mut months: BTreeMap<YearMonth, [Option<i64>; 13]> = BTreeMap::new();
    for m in &report.movements {
        let row = months.entry(m.month).or_default();
        for (cell, figure) in row.iter_mut().zip(m.figures()) {
            *cell = Some(figure);
        }
    }
    for e in &report.by_expiry_month {
        months.entry(e.month).or_default()[11] = Some(e.points);
    }
    for p in &report.pending_by_release_month {
        months.entry(p.month).or_default()[12] = Some(p.points);
    }
    for (month, mut row) in months {
        // A month with a movement has its schedules' cells even when nothing is due in it.
        if row[0].is_some() {
            row[11] = row[11].or(Some(0));
            row[12] = row[12].or(Some(0));
        }
        let cells: Vec<String> = row
            .iter()
            .map(|c| c.map(|n| n.to_string()).unwrap_or_default())
            .collect();
        out += &format!("{month},{}\n", cells.join(","));
    }
    out
}

/// Outstanding points by expiry month as bars, and the closing balance of each month as a line.
pub fn svg(report: &LiabilityReport) -> String {
    let (width, height, pad) = (720.0_f64, 320.0_f64, 40.0_f64);
    let bars: Vec<(String, i64)> = report
        .by_expiry_month
        .iter()
        .map(|m| (m.month.to_string(), m.points))
        .collect();
    let top = bars
        .iter()
        .map(|(_, p)| *p)
        .chain(report.movements.iter().map(|m| m.closing))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let y = |v: i64| height - pad - (v.max(0) as f64 / top) * (height - 2.0 * pad);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"11\">\n<title>Points liability of {} as of {}</title>\n<text x=\"{pad}\" y=\"20\">Outstanding {} points by expiry month (bars), closing balance by month (line)</text>\n",
        xml(&report.program), report.as_of, report.outstanding
    );
    let step = (width - 2.0 * pad) / bars.len().max(1) as f64;
    for (i, (month, points)) in bars.iter().enumerate() {
        let x = pad + i as f64 * step;
        out += &format!(
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#4e79a7\"><title>{month}: {points}</title></rect>\n",
            y(*points),
            (step * 0.8).max(1.0),
            height - pad - y(*points)
        );
    }
    let line_step = (width - 2.0 * pad) / report.movements.len().max(1) as f64;
    let points: Vec<String> = report
        .movements
        .iter()
        .enumerate()
        .map(|(i, m)| format!("{:.1},{:.1}", pad + i as f64 * line_step, y(m.closing)))
        .collect();
    out += &format!(
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#e15759\" stroke-width=\"2\"/>\n</svg>\n",
        points.join(" ")
    );
    out
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_month_moved_by_every_kind_of_entry_adds_up() {
        // GIVEN a month in which every kind of entry moved points
        let kinds = [
            "earn", "pending", "release", "redeem", "reverse", "expire", "adjust", "clawback",
            "tier", "merge", "forfeit", "payout",
        ];
        for kind in kinds {
            let parsed: crate::domain::EntryKind =
                serde_json::from_value(serde_json::json!(kind)).unwrap();
            assert_eq!(serde_json::to_value(parsed).unwrap(), kind);
        }
        let month = YearMonth::of(chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap());
        let mut sums = Sums::default();
        let moved = sums.points.entry(month).or_default();
        // (pending and tier entries move no available points: their `points` are 0)
        for (i, kind) in kinds.iter().enumerate() {
            let sign = if i % 2 == 0 { 1 } else { -1 };
            let points = match *kind {
                "pending" | "tier" => 0,
                _ => sign * (i as i64 + 1) * 100,
            };
            moved.insert(kind.to_string(), points);
        }
        // WHEN its movement is made THEN it adds up, and so does the month after
        let rows = movements(&sums, month.minus(-1));
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(Movement::adds_up), "{rows:?}");
    }

    #[test]
    fn decimals_keep_the_currency_digits_and_drop_the_rest_of_the_zeros() {
        assert_eq!(decimal(1_234_000_000, 0), "1234");
        assert_eq!(decimal(12_340_000, 2), "12.34");
        assert_eq!(decimal(12_000_000, 2), "12.00");
        assert_eq!(decimal(2_500, 4), "0.0025");
        assert_eq!(decimal(1_500_000, 0), "1.5");
    }
}
