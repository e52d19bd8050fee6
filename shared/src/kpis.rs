//! A programme's KPIs over a period, from one pass over its members: membership and activity,
//! repurchase and redemption rates, points per order, engagement and tiers.
//!
//! Definitions (dates in the program's time zone, both ends of the period included):
//! - `members`: accounts opened by the end of the period; `new_members`: opened in it.
//! - `active_30`, `active_90`: members whose last purchase was in the 30 (90) days ending with
//!   the period's last day.
//! - `repurchase`: of the members whose first purchase fell in the period, those who bought
//!   again within 90 days of it (as far as seen today).
//! - `redemption`: points redeemed (net of redemptions given back) over points issued (earned
//!   straight away or pending), both booked in the period.
//! - `points_per_order`: points earned by the orders placed in the period, per order.
//! - `engagement`: rewarded actions in the period by action; `tier_moves`: tier changes in the
//!   period, as `from→to`; `tiers`: members per tier now.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::domain::calendar::local_date;
use crate::domain::EntryKind;
use crate::ports::MemberRecords;

/// A second purchase within this many days of the first is a repurchase.
pub const REPURCHASE_DAYS: i64 = 90;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ratio {
    pub numerator: i64,
    pub denominator: i64,
    /// `numerator / denominator` to 4 decimal places, rounded down; `null` when nothing to divide.
    pub rate: Option<String>,
}

impl Ratio {
    pub fn of(numerator: i64, denominator: i64) -> Ratio {
        Ratio {
            numerator,
            denominator,
            rate: (denominator > 0).then(|| {
                let ten_thousandths = i128::from(numerator) * 10_000 / i128::from(denominator);
                crate::liability::decimal(ten_thousandths * 100, 4)
            }),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Kpis {
    pub program: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub members: i64,
    pub new_members: i64,
    pub active_30: i64,
    pub active_90: i64,
    pub repurchase: Ratio,
    pub redemption: Ratio,
    pub orders: i64,
    pub order_points: i64,
    /// `order_points / orders`, to 2 decimal places, rounded down.
    pub points_per_order: Option<String>,
    pub engagement: BTreeMap<String, i64>,
    pub tiers: BTreeMap<String, i64>,
    pub tier_moves: BTreeMap<String, i64>,
    /// Each campaign that ran in the period, with its results.
    pub campaigns: Vec<crate::report::Report>,
    /// Members whose records could not be read, so not counted (`loyalty audit` says why):
    /// every figure above is short of them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

/// Sums the period's figures member by member.
#[derive(Debug, Clone)]
pub struct KpiCounter {
    tz: Tz,
    from: NaiveDate,
    to: NaiveDate,
    lowest_tier: String,
    kpis: Kpis,
    first_buyers: i64,
    repurchasers: i64,
    issued: i64,
    redeemed: i64,
}

impl KpiCounter {
    pub fn new(program: &crate::domain::Program, from: NaiveDate, to: NaiveDate) -> KpiCounter {
        KpiCounter {
            tz: program.time_zone,
            from,
            to,
            lowest_tier: program.lowest_tier().id.clone(),
            kpis: Kpis {
                program: program.id.clone(),
                from,
                to,
                ..Kpis::default()
            },
            first_buyers: 0,
            repurchasers: 0,
            issued: 0,
            redeemed: 0,
        }
    }

    fn day(&self, at: DateTime<Utc>) -> NaiveDate {
        local_date(self.tz, at)
    }

    fn within(&self, day: NaiveDate) -> bool {
        self.from <= day && day <= self.to
    }

    pub fn add(&mut self, records: &MemberRecords) {
        let Some(account) = &records.account else {
            return;
        };
        if account.joined_on > self.to {
            return;
        }
        // A member merged into another is counted there; its ledger and orders stay its own.
        let member = account.is_member();
        let k = &mut self.kpis;
        if member {
            k.members += 1;
            if account.joined_on >= self.from {
                k.new_members += 1;
            }
            *k.tiers.entry(account.tier.id.clone()).or_insert(0) += 1;
        }
        // Every purchase seen: a repurchase may come after the period (as far as seen today);
        // activity counts those by its end.
        let mut seen: Vec<DateTime<Utc>> = records
            .orders
            .iter()
            .filter_map(|o| o.earned.as_ref())
            .map(|e| e.occurred_at)
            .collect();
        seen.sort();
        if !member {
            seen.clear();
        }
        let by_end = seen.partition_point(|t| local_date(self.tz, *t) <= self.to);
        let purchases = &seen[..by_end];
        let own = records.orders.iter().filter(|o| o.moved_from.is_none());
        for order in own.filter_map(|o| o.earned.as_ref()) {
            if self.within(local_date(self.tz, order.occurred_at)) {
                self.kpis.orders += 1;
                self.kpis.order_points += order.points;
            }
        }
        if let Some(last) = purchases.last() {
            let since = (self.to - self.day(*last)).num_days();
            self.kpis.active_30 += i64::from(since < 30);
            self.kpis.active_90 += i64::from(since < 90);
        }
        if let Some(first) = purchases.first() {
            if self.within(self.day(*first)) {
                self.first_buyers += 1;
                let again = seen
                    .get(1)
                    .is_some_and(|second| *second - *first <= Duration::days(REPURCHASE_DAYS));
                self.repurchasers += i64::from(again);
            }
        }
        let mut tier = self.lowest_tier.clone();
        for entry in &records.entries {
            let booked = self.within(self.day(entry.recorded_at));
            match entry.kind {
                EntryKind::Earn | EntryKind::Pending if booked => {
                    self.issued += entry.points + entry.pending;
                    let action = entry.source.rule.as_deref().filter(|r| *r != "purchase");
                    if let Some(action) = action.filter(|_| entry.source.campaign.is_none()) {
                        if !action.contains(':') {
                            *self.kpis.engagement.entry(action.to_string()).or_insert(0) += 1;
                        }
                    }
                }
                EntryKind::Redeem | EntryKind::Reverse if booked => self.redeemed -= entry.points,
                EntryKind::Tier => {
                    let to = entry
                        .source
                        .rule
                        .as_deref()
                        .and_then(|r| r.strip_prefix("tier:"))
                        .unwrap_or_default()
                        .to_string();
                    if booked {
                        *self
                            .kpis
                            .tier_moves
                            .entry(format!("{tier}→{to}"))
                            .or_insert(0) += 1;
                    }
                    tier = to;
                }
                _ => {}
            }
        }
    }

    /// A member whose records could not be read: named in the report, not counted.
    pub fn unreadable(&mut self, member: String) {
        self.kpis.unreadable.push(member);
    }

    pub fn finish(mut self, campaigns: Vec<crate::report::Report>) -> Kpis {
        self.kpis.unreadable.sort();
        self.kpis.repurchase = Ratio::of(self.repurchasers, self.first_buyers);
        self.kpis.redemption = Ratio::of(self.redeemed, self.issued);
        self.kpis.points_per_order = (self.kpis.orders > 0).then(|| {
            let hundredths =
                i128::from(self.kpis.order_points) * 100 / i128::from(self.kpis.orders);
            crate::liability::decimal(hundredths * 10_000, 2)
        });
        self.kpis.campaigns = campaigns;
        self.kpis
    }
}

/// The KPIs as a card: the figures as text, members per tier as bars.
pub fn svg(k: &Kpis) -> String {
    let rate = |r: &Ratio| r.rate.clone().unwrap_or_else(|| "n/a".into());
    let lines = [
        format!("{} KPIs, {} to {}", k.program, k.from, k.to),
        format!(
            "members {} (new {}), active 30 days {}, active 90 days {}",
            k.members, k.new_members, k.active_30, k.active_90
        ),
        format!(
            "repurchase rate {} ({} of {}), redemption rate {} ({} of {} points)",
            rate(&k.repurchase),
            k.repurchase.numerator,
            k.repurchase.denominator,
            rate(&k.redemption),
            k.redemption.numerator,
            k.redemption.denominator
        ),
        format!(
            "orders {}, points per order {}",
            k.orders,
            k.points_per_order.as_deref().unwrap_or("n/a")
        ),
    ];
    let mut out = String::from(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"720\" height=\"300\" viewBox=\"0 0 720 300\" font-family=\"sans-serif\" font-size=\"12\">\n",
    );
    for (i, line) in lines.iter().enumerate() {
        out += &format!(
            "<text x=\"20\" y=\"{}\">{}</text>\n",
            24 + i * 20,
            escape(line)
        );
    }
    let top = k.tiers.values().copied().max().unwrap_or(0).max(1) as f64;
    for (i, (tier, members)) in k.tiers.iter().enumerate() {
        let y = 120 + i * 28;
        let width = 500.0 * *members as f64 / top;
        out += &format!(
            "<text x=\"20\" y=\"{}\">{}</text><rect x=\"140\" y=\"{}\" width=\"{width:.1}\" height=\"18\" fill=\"#4e79a7\"><title>{members}</title></rect>\n",
            y + 14,
            escape(tier),
            y
        );
    }
    out + "</svg>\n"
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
