//! How many points a purchase earns, and which line earned which of them.
//!
//! Order points = floor(eligible amount x rate x line multiplier x tier multiplier x campaign
//! multipliers), computed as one exact fraction in `i128` with a single floor at the end. The
//! order's points are then shared out to its lines by largest remainder, so the lines always sum
//! to the order and a later refund can take back exactly what a line earned.

use serde::{Deserialize, Serialize};

use super::money::Currency;
use super::program::{PurchaseRules, UNIT_BP};

/// A purchase as the domain sees it: amounts already in minor units of the program's currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purchase {
    pub order_id: String,
    pub currency: Currency,
    pub lines: Vec<PurchaseLine>,
    /// Shipping charged on the order; never earns.
    #[serde(default)]
    pub shipping: i64,
    /// Tax charged on top of the prices (0 when the prices include it); never earns. Tax
    /// included in prices is not subtracted.
    #[serde(default)]
    pub tax: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseLine {
    pub line_id: String,
    #[serde(default)]
    pub sku: String,
    #[serde(default)]
    pub category: String,
    pub quantity: i64,
    /// Price of one unit, minor units.
    pub unit_price: i64,
    /// The line's total discount, minor units.
    #[serde(default)]
    pub discount: i64,
    /// Gift cards are money, not merchandise: they neither earn nor qualify.
    #[serde(default)]
    pub gift_card: bool,
}

/// A running campaign's effect on a purchase, passed in by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CampaignEffect {
    Multiplier { campaign: String, basis_points: u32 },
    Bonus { campaign: String, points: i64 },
}

/// What each line of an order earned. Kept with the order so that refunds reverse it exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinePoints {
    pub line_id: String,
    pub quantity: i64,
    /// Eligible amount of the line (minor units): what it counts towards the tier by spend.
    pub eligible: i64,
    pub points: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPoints {
    pub points: i64,
    pub eligible: i64,
    pub lines: Vec<LinePoints>,
    /// True when the program's per-order cap reduced the points.
    pub capped: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EarnError {
    #[error("purchase is in {found}, the program uses {expected}")]
    WrongCurrency { expected: Currency, found: Currency },
    #[error("the order has no lines")]
    NoLines,
    #[error("lines[{0}].quantity must be greater than zero")]
    BadQuantity(usize),
    #[error("lines[{0}] has a negative price or discount")]
    Negative(usize),
    #[error("lines[{0}].discount is larger than the line's total")]
    DiscountTooLarge(usize),
    #[error("lines[{0}].line_id {1:?} appears twice in the order")]
    DuplicateLine(usize, String),
    #[error("lines[{0}]: unit_price x quantity is above the limit of {max} minor units", max = super::limits::MAX_AMOUNT)]
    LineTooLarge(usize),
    #[error("lines: the order would earn {0} points, above the limit of {max} for one event", max = super::limits::MAX_POINTS)]
    TooManyPoints(i64),
    #[error("lines: the order's amounts are too large to compute")]
    Overflow,
}

/// The greatest common divisor of two non-negative numbers (0 with 0 is 0).
fn gcd(mut a: i128, mut b: i128) -> i128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The most the multipliers of the campaigns a member is in at once come to together
/// (10,000x): each is at most 100x, and up to 30 overlap; past this their product is no offer
/// anyone made, and its points would pass every bound.
pub const MAX_COMBINED_MULTIPLIER_BP: i128 = 10_000 * UNIT_BP as i128;

/// The largest numerator or denominator the campaigns' product is kept exact in: past it (many
/// multipliers whose fractions do not reduce, 1.0001x ten times over) it goes on in whole basis
/// points, floored, so that no order's sums can overflow.
const EXACT_UP_TO: i128 = 100_000_000;

/// Where the product waits while the campaigns are multiplied (10^8x): far past the bound, so
/// that the campaigns' order does not change what is left after a multiplier below 1x, and
/// the product never overflows.
const WAITS_AT_BP: i128 = 1_000_000_000_000;

/// The campaigns' multipliers as one fraction in lowest terms (2x is 2/1, 1.5x 3/2): exact while
/// it is small, else in whole basis points; held to [`MAX_COMBINED_MULTIPLIER_BP`] at the end.
fn campaign_multiplier(campaigns: &[CampaignEffect]) -> (i128, i128) {
    let unit = i128::from(UNIT_BP);
    let (mut num, mut den) = (1_i128, 1_i128);
    for effect in campaigns {
        if let CampaignEffect::Multiplier { basis_points, .. } = effect {
            (num, den) = lowest(num * i128::from(*basis_points), den * unit);
            if num > EXACT_UP_TO || den > EXACT_UP_TO {
                (num, den) = lowest(num * unit / den, unit);
            }
            if num * unit > WAITS_AT_BP * den {
                (num, den) = lowest(WAITS_AT_BP, unit);
            }
        }
    }
    if num * unit > MAX_COMBINED_MULTIPLIER_BP * den {
        return lowest(MAX_COMBINED_MULTIPLIER_BP, unit);
    }
    (num, den)
}

/// A fraction in lowest terms.
fn lowest(num: i128, den: i128) -> (i128, i128) {
    match gcd(num, den) {
        common if common > 1 => (num / common, den / common),
        _ => (num, den),
    }
}

/// Computes the points of one purchase.
///
/// `tier_bp` is the multiplier of the tier the member has when the purchase is processed; the
/// campaign effects come from the member's running campaign assignments.
pub fn purchase_points(
    rules: &PurchaseRules,
    program_currency: Currency,
    purchase: &Purchase,
    tier_bp: u32,
    campaigns: &[CampaignEffect],
) -> Result<OrderPoints, EarnError> {
    if purchase.currency != program_currency {
        return Err(EarnError::WrongCurrency {
            expected: program_currency,
            found: purchase.currency,
        });
    }
    let eligible = eligible_amounts(rules, purchase)?;

    // The order's points as one fraction: Σ numerators / denominator, floored once.
    let (campaign_num, campaign_den) = campaign_multiplier(campaigns);
    let (multiplier_num, multiplier_den) = lowest(
        i128::from(tier_bp) * campaign_num,
        i128::from(UNIT_BP) * campaign_den,
    );
    let denominator = i128::from(rules.per_minor)
        .checked_mul(i128::from(UNIT_BP))
        .and_then(|d| d.checked_mul(multiplier_den))
        .ok_or(EarnError::Overflow)?;
    let numerators = purchase
        .lines
        .iter()
        .zip(&eligible)
        .map(|(line, amount)| {
            let line_bp = line_rule(rules, line).map_or(UNIT_BP, |r| r.multiplier_bp);
            i128::from(*amount)
                .checked_mul(i128::from(rules.points))
                .and_then(|n| n.checked_mul(i128::from(line_bp)))
                .and_then(|n| n.checked_mul(multiplier_num))
                .ok_or(EarnError::Overflow)
        })
        .collect::<Result<Vec<i128>, _>>()?;
    let mut points = apportion(&numerators, denominator).ok_or(EarnError::Overflow)?;

    // Fixed bonuses: per unit for SKU or category rules, per order for campaigns (shared out in
    // proportion to the lines' eligible amounts).
    for (i, line) in purchase.lines.iter().enumerate() {
        if eligible[i] > 0 {
            let bonus = line_rule(rules, line).map_or(0, |r| r.bonus_points_per_unit);
            points[i] = bonus
                .checked_mul(line.quantity)
                .and_then(|b| points[i].checked_add(b))
                .ok_or(EarnError::Overflow)?;
        }
    }
    let campaign_bonus: i64 = campaigns
        .iter()
        .filter_map(|e| match e {
            CampaignEffect::Bonus { points, .. } => Some(*points),
            _ => None,
        })
        .sum();
    if campaign_bonus > 0 {
        let weights: Vec<i128> = eligible
            .iter()
            .map(|e| i128::from(*e) * i128::from(campaign_bonus))
            .collect();
        let total_eligible: i128 = eligible.iter().map(|e| i128::from(*e)).sum();
        if total_eligible > 0 {
            let shares = apportion(&weights, total_eligible).ok_or(EarnError::Overflow)?;
            for (p, s) in points.iter_mut().zip(shares) {
                *p = p.checked_add(s).ok_or(EarnError::Overflow)?;
            }
        }
    }

    let total = points.iter().try_fold(0i64, |acc, p| acc.checked_add(*p));
    let mut total = total.ok_or(EarnError::Overflow)?;
    if total > super::limits::MAX_POINTS && rules.max_points_per_order.is_none() {
        return Err(EarnError::TooManyPoints(total));
    }
    let mut capped = false;
    if let Some(cap) = rules.max_points_per_order {
        if total > cap {
            let weights: Vec<i128> = points
                .iter()
                .map(|p| i128::from(*p) * i128::from(cap))
                .collect();
            points = apportion(&weights, i128::from(total)).ok_or(EarnError::Overflow)?;
            total = cap;
            capped = true;
        }
    }

    Ok(OrderPoints {
        points: total,
        eligible: eligible.iter().sum(),
        lines: purchase
            .lines
            .iter()
            .zip(eligible.iter().zip(points))
            .map(|(line, (eligible, points))| LinePoints {
                line_id: line.line_id.clone(),
                quantity: line.quantity,
                eligible: *eligible,
                points,
            })
            .collect(),
        capped,
    })
}

/// Eligible amount per line: quantity x unit price - discount, zero for excluded lines.
fn eligible_amounts(rules: &PurchaseRules, purchase: &Purchase) -> Result<Vec<i64>, EarnError> {
    if purchase.lines.is_empty() {
        return Err(EarnError::NoLines);
    }
    let mut seen = std::collections::BTreeSet::new();
    purchase
        .lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            if !seen.insert(line.line_id.as_str()) {
                return Err(EarnError::DuplicateLine(i, line.line_id.clone()));
            }
            if line.quantity <= 0 {
                return Err(EarnError::BadQuantity(i));
            }
            if line.unit_price < 0 || line.discount < 0 {
                return Err(EarnError::Negative(i));
            }
            let total = line
                .quantity
                .checked_mul(line.unit_price)
                .filter(|t| *t <= super::limits::MAX_AMOUNT)
                .ok_or(EarnError::LineTooLarge(i))?;
            if line.discount > total {
                return Err(EarnError::DiscountTooLarge(i));
            }
            let excluded = line.gift_card || rules.excluded_categories.contains(&line.category);
            Ok(if excluded { 0 } else { total - line.discount })
        })
        .collect()
}

fn line_rule<'a>(
    rules: &'a PurchaseRules,
    line: &PurchaseLine,
) -> Option<&'a super::program::LineRule> {
    // A SKU rule is more specific than its category's, so it wins.
    rules
        .skus
        .get(&line.sku)
        .or_else(|| rules.categories.get(&line.category))
}

/// Shares floor(Σ numerators / denominator) out to the items by largest remainder.
///
/// Each item gets floor(n_i / d); the units left over go one each to the items with the largest
/// remainders (the earlier item on a tie). The shares always sum to the floored total, so no
/// rounding can create or lose a point. Numerators must be non-negative and `denominator > 0`;
/// `None` on overflow.
pub fn apportion(numerators: &[i128], denominator: i128) -> Option<Vec<i64>> {
    if denominator <= 0 || numerators.iter().any(|n| *n < 0) {
        return None;
    }
    let sum = numerators
        .iter()
        .try_fold(0i128, |acc, n| acc.checked_add(*n))?;
    let total = sum / denominator;
    let mut shares: Vec<i64> = numerators
        .iter()
        .map(|n| i64::try_from(n / denominator).ok())
        .collect::<Option<_>>()?;
    let given: i128 = shares.iter().map(|s| i128::from(*s)).sum();
    let mut order: Vec<usize> = (0..numerators.len()).collect();
    // Stable sort keeps the earlier item first among equal remainders.
    order.sort_by_key(|i| std::cmp::Reverse(numerators[*i] % denominator));
    let left = usize::try_from(total - given).ok()?;
    for i in order.into_iter().take(left) {
        shares[i] += 1;
    }
    Some(shares)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::program::Program;
    use proptest::prelude::*;

    fn kr() -> Program {
        Program::from_toml(include_str!("../../../examples/kr-shop.toml")).unwrap()
    }

    fn line(id: &str, quantity: i64, unit_price: i64, discount: i64) -> PurchaseLine {
        PurchaseLine {
            line_id: id.into(),
            sku: format!("SKU-{id}"),
            category: "apparel".into(),
            quantity,
            unit_price,
            discount,
            gift_card: false,
        }
    }

    fn order(lines: Vec<PurchaseLine>) -> Purchase {
        Purchase {
            order_id: "o-1".into(),
            currency: Currency::KRW,
            lines,
            shipping: 3_000,
            tax: 0,
        }
    }

    #[test]
    fn kr_shop_earns_one_point_per_100_won_of_eligible_amount() {
        // GIVEN kr-shop and a 59,000 KRW order with 3,000 KRW shipping
        let p = kr();
        let purchase = order(vec![line("1", 1, 59_000, 0)]);
        // WHEN a WELCOME member's points are computed
        let earned = purchase_points(&p.purchase, p.currency, &purchase, 10_000, &[]).unwrap();
        // THEN shipping is excluded and the member earns 590
        assert_eq!(earned.points, 590);
        assert_eq!(earned.eligible, 59_000);
    }

    #[test]
    fn discounts_reduce_and_gift_cards_are_excluded() {
        // GIVEN two units at 25,050 with a 1,000 discount, and a gift card line
        let p = kr();
        let mut gift = line("2", 1, 50_000, 0);
        gift.gift_card = true;
        let purchase = order(vec![line("1", 2, 25_050, 1_000), gift]);
        // WHEN points are computed
        let earned = purchase_points(&p.purchase, p.currency, &purchase, 10_000, &[]).unwrap();
        // THEN only 49,100 is eligible: 491 points, all on the first line
        assert_eq!(earned.eligible, 49_100);
        assert_eq!(earned.points, 491);
        assert_eq!(earned.lines[1].points, 0);
    }

    #[test]
    fn tier_and_campaign_multipliers_multiply_with_one_floor() {
        // GIVEN three lines of 3,333 KRW, a SILVER member (1.2x) and a 1.5x campaign
        let p = kr();
        let purchase = order(vec![
            line("1", 1, 3_333, 0),
            line("2", 1, 3_333, 0),
            line("3", 1, 3_333, 0),
        ]);
        let campaign = CampaignEffect::Multiplier {
            campaign: "double".into(),
            basis_points: 15_000,
        };
        // WHEN points are computed
        let earned =
            purchase_points(&p.purchase, p.currency, &purchase, 12_000, &[campaign]).unwrap();
        // THEN 9,999 x 0.01 x 1.2 x 1.5 = 179.982 floors once to 179, not 3 x floor(59.994)
        assert_eq!(earned.points, 179);
        let per_line: Vec<i64> = earned.lines.iter().map(|l| l.points).collect();
        assert_eq!(per_line, vec![60, 60, 59]);
    }

    #[test]
    fn many_overlapping_multiplier_campaigns_multiply_without_overflow() {
        // GIVEN a 50,000 KRW order of a GOLD member (1.5x) in eight 2x and eight 1.5x
        // campaigns at once
        let p = kr();
        let purchase = order(vec![line("1", 1, 50_000, 0)]);
        let mut campaigns = Vec::new();
        for bp in [20_000, 15_000] {
            for n in 0..8 {
                campaigns.push(CampaignEffect::Multiplier {
                    campaign: format!("c-{bp}-{n}"),
                    basis_points: bp,
                });
            }
        }
        // WHEN points are computed
        let earned =
            purchase_points(&p.purchase, p.currency, &purchase, 15_000, &campaigns).unwrap();
        // THEN 500 x 1.5 x 2^8 x 1.5^8 = 500 x 256 x 3^9 / 2^9, exactly: 4,920,750
        assert_eq!(earned.points, 500 * 3_i64.pow(9) / 2);
    }

    #[test]
    fn stacked_multipliers_are_held_to_their_bound_and_the_order_still_earns() {
        // GIVEN a 100,000 KRW order of a member in ten 100x campaigns at once
        let p = kr();
        let purchase = order(vec![line("1", 1, 100_000, 0)]);
        let hundredfold: Vec<CampaignEffect> = (0..10)
            .map(|n| CampaignEffect::Multiplier {
                campaign: format!("huge-{n}"),
                basis_points: 1_000_000,
            })
            .collect();
        // WHEN points are computed THEN the campaigns count as 10,000x together (before: the
        // order was too large to compute, and the member earned nothing at all)
        let earned =
            purchase_points(&p.purchase, p.currency, &purchase, 10_000, &hundredfold).unwrap();
        assert_eq!(earned.points, 1_000 * 10_000);
        // GIVEN thirty 1.0001x campaigns, whose product has no small fraction
        let odd: Vec<CampaignEffect> = (0..30)
            .map(|n| CampaignEffect::Multiplier {
                campaign: format!("odd-{n}"),
                basis_points: 10_001,
            })
            .collect();
        // WHEN points are computed THEN the product goes on in basis points: 1.003x, floored
        let earned = purchase_points(&p.purchase, p.currency, &purchase, 10_000, &odd).unwrap();
        assert_eq!(earned.points, 1_003);
        // AND the bound holds the product, not each step: a 0.5x campaign after three 100x
        // ones gives what it gives before them
        let half = CampaignEffect::Multiplier {
            campaign: "half".into(),
            basis_points: 5_000,
        };
        let mut after = hundredfold[..3].to_vec();
        after.push(half.clone());
        let mut before = vec![half];
        before.extend_from_slice(&hundredfold[..3]);
        let points = |campaigns: &[CampaignEffect]| {
            purchase_points(&p.purchase, p.currency, &purchase, 10_000, campaigns)
                .unwrap()
                .points
        };
        assert_eq!(points(&after), points(&before));
        assert_eq!(points(&after), 1_000 * 10_000);
    }

    #[test]
    fn a_foreign_currency_is_refused() {
        let p = kr();
        let mut purchase = order(vec![line("1", 1, 100, 0)]);
        purchase.currency = Currency::USD;
        assert!(matches!(
            purchase_points(&p.purchase, p.currency, &purchase, 10_000, &[]),
            Err(EarnError::WrongCurrency { .. })
        ));
    }

    #[test]
    fn bad_lines_are_refused_with_their_index() {
        let p = kr();
        let cases = [
            (order(vec![line("1", 0, 100, 0)]), "lines[0].quantity"),
            (
                order(vec![line("1", 1, 100, 0), line("2", 1, 100, 101)]),
                "lines[1].discount",
            ),
            (
                order(vec![line("1", 1, 100, 0), line("1", 1, 100, 0)]),
                "lines[1].line_id",
            ),
        ];
        for (purchase, field) in cases {
            let err = purchase_points(&p.purchase, p.currency, &purchase, 10_000, &[]).unwrap_err();
            assert!(err.to_string().contains(field), "{err} should name {field}");
        }
    }

    #[test]
    fn the_order_cap_scales_lines_down_to_the_cap() {
        // GIVEN a program capped at 100 points an order
        let mut p = kr();
        p.purchase.max_points_per_order = Some(100);
        let purchase = order(vec![line("1", 1, 30_000, 0), line("2", 1, 10_000, 0)]);
        // WHEN an order worth 400 points is computed
        let earned = purchase_points(&p.purchase, p.currency, &purchase, 10_000, &[]).unwrap();
        // THEN it earns 100, shared 75/25
        assert_eq!(earned.points, 100);
        assert!(earned.capped);
        assert_eq!(earned.lines[0].points, 75);
        assert_eq!(earned.lines[1].points, 25);
    }

    #[test]
    fn sku_rules_beat_category_rules_and_bonuses_are_per_unit() {
        // GIVEN a category at 2x and one of its SKUs with a 50-point bonus per unit
        let text = include_str!("../../../examples/kr-shop.toml").replace(
            "excluded_categories = [\"gift_card\"]",
            "excluded_categories = [\"gift_card\"]\ncategories = [{ category = \"apparel\", multiplier_bp = 20000 }]\nskus = [{ sku = \"SKU-2\", bonus_points_per_unit = 50 }]",
        );
        let p = Program::from_toml(&text).unwrap();
        let purchase = order(vec![line("1", 1, 10_000, 0), line("2", 2, 10_000, 0)]);
        // WHEN points are computed
        let earned = purchase_points(&p.purchase, p.currency, &purchase, 10_000, &[]).unwrap();
        // THEN line 1 earns 2x (200), line 2 the base rate plus 2 x 50 (300)
        assert_eq!(earned.lines[0].points, 200);
        assert_eq!(earned.lines[1].points, 300);
    }

    proptest! {
        #[test]
        fn rounding_never_creates_points(
            lines in prop::collection::vec((1i64..5, 0i64..2_000_000, 0i64..10_000), 1..8),
            tier_bp in prop::sample::select(vec![10_000u32, 12_000, 12_500, 15_000, 20_000]),
            campaign_bp in prop::option::of(5_000u32..40_000),
            bonus in prop::option::of(0i64..5_000),
        ) {
            // GIVEN any order, tier and campaign
            let p = kr();
            let purchase = order(lines.iter().enumerate().map(|(i, (q, price, d))| {
                line(&i.to_string(), *q, *price, (*d).min(q * price))
            }).collect());
            let mut campaigns = Vec::new();
            if let Some(bp) = campaign_bp {
                campaigns.push(CampaignEffect::Multiplier { campaign: "c".into(), basis_points: bp });
            }
            if let Some(points) = bonus {
                campaigns.push(CampaignEffect::Bonus { campaign: "b".into(), points });
            }
            // WHEN its points are computed
            let earned = purchase_points(&p.purchase, p.currency, &purchase, tier_bp, &campaigns).unwrap();
            // THEN the lines sum to the order, and the order is the single floor of the exact product
            prop_assert_eq!(earned.lines.iter().map(|l| l.points).sum::<i64>(), earned.points);
            let exact_num = i128::from(earned.eligible) * i128::from(tier_bp)
                * i128::from(campaign_bp.unwrap_or(10_000));
            let floor = exact_num / (100 * 10_000 * 10_000);
            let bonus_given = if earned.eligible > 0 { bonus.unwrap_or(0) } else { 0 };
            prop_assert_eq!(i128::from(earned.points), floor + i128::from(bonus_given));
        }

        #[test]
        fn apportion_sums_to_the_floored_total(
            nums in prop::collection::vec(0i128..1_000_000_000, 1..20),
            den in 1i128..1_000_000,
        ) {
            let shares = apportion(&nums, den).unwrap();
            let total: i128 = nums.iter().sum::<i128>() / den;
            prop_assert_eq!(shares.iter().map(|s| i128::from(*s)).sum::<i128>(), total);
            for (s, n) in shares.iter().zip(&nums) {
                // each share is its floor or one more
                prop_assert!(i128::from(*s) - n / den <= 1 && i128::from(*s) >= n / den);
            }
        }
    }
}
