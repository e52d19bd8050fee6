//! The bounds on every number that comes from outside, chosen so that no sum or product of
//! allowed values can overflow an `i64` (README "Limits").
//!
//! The proof, in short: a line's price × quantity is computed in `i128` and refused above
//! [`MAX_AMOUNT`]; an order has at most [`MAX_LINES`] lines, so its total is at most
//! `(MAX_LINES + 2) × MAX_AMOUNT` ≈ 10^16 with shipping and tax. Points of one entry are at most
//! [`MAX_POINTS`], and a commit that would leave a balance, pending points, debt or a hold
//! above [`MAX_BALANCE`] is refused, so adding the next entry to a stored balance cannot
//! overflow either. A month's qualifying measure is kept within [`MAX_MEASURE`], and sums over
//! months saturate.

use super::account::Account;

/// Any one amount of money, in minor units: a unit price, a discount, shipping, tax, a refund,
/// an order total, and a line's price × quantity (10^13: 100 billion USD, 10 trillion KRW).
pub const MAX_AMOUNT: i64 = 10_000_000_000_000;
/// Units on one order line.
pub const MAX_QUANTITY: i64 = 1_000_000;
/// Periods one membership payment may buy (ten years of monthly periods).
pub const MAX_MEMBERSHIP_PERIODS: i64 = 120;
/// Lines in one order or refund.
pub const MAX_LINES: usize = 1_000;
/// Product categories an account keeps for campaign audiences, and the characters of each: a
/// shop that names a category per product (or a long path) must not grow an account past what
/// one item holds (DynamoDB: 400 KB), where it could no longer be written.
pub const MAX_KEPT_CATEGORIES: usize = 200;
pub const MAX_CATEGORY_CHARS: usize = 100;
/// Points of any one entry: an adjustment, what one event earns, a reward's cost.
pub const MAX_POINTS: i64 = 1_000_000_000_000;
/// A member's balance with pending points and points on hold; and a member's debt.
pub const MAX_BALANCE: i64 = 1_000_000_000_000_000;
/// One month's qualifying measure (spend in minor units, or points).
pub const MAX_MEASURE: i64 = 100_000_000_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} would be {value}, past the limit of {limit} either way")]
pub struct LimitError {
    pub field: &'static str,
    pub value: i128,
    pub limit: i64,
}

fn within(field: &'static str, value: i128, limit: i64) -> Result<(), LimitError> {
    if value > i128::from(limit) || value < -i128::from(limit) {
        return Err(LimitError {
            field,
            value,
            limit,
        });
    }
    Ok(())
}

/// Every stored number of the account within its bound: checked on each change that credits
/// points (events and operators' adjustments). Moves between balance, pending and holds keep
/// their sum, so the sum is what is bounded.
pub fn check_account(account: &Account) -> Result<(), LimitError> {
    let wide = |values: &mut dyn Iterator<Item = i64>| values.map(i128::from).sum::<i128>();
    let pending = wide(&mut account.pending.iter().map(|g| g.points));
    let held = wide(&mut account.holds.iter().map(|h| h.points));
    let total = i128::from(account.balance) + pending + held;
    within("balance", total, MAX_BALANCE)?;
    within("debt", i128::from(account.debt), MAX_BALANCE)?;
    for value in account.qualifying.values() {
        within("qualifying", i128::from(*value), MAX_MEASURE)?;
    }
    Ok(())
}

/// Points of one entry, as a request or event gives them.
pub fn check_points(field: &'static str, points: i64) -> Result<(), LimitError> {
    within(field, i128::from(points), MAX_POINTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_order_cannot_overflow() {
        // GIVEN the largest allowed order WHEN its total is summed THEN it fits with room to spare
        let total = (MAX_LINES as i128 + 2) * i128::from(MAX_AMOUNT);
        assert!(total < i128::from(MAX_MEASURE));
        // AND a month at its bound plus one more order still fits an i64
        assert!(i128::from(MAX_MEASURE) + total < i128::from(i64::MAX));
        // AND twelve months at the bound (a rolling window) fit as well
        assert!(12 * i128::from(MAX_MEASURE) + total < i128::from(i64::MAX));
        // AND a balance at its bound plus a few entries at theirs fits
        assert!(i128::from(MAX_BALANCE) + 1_000 * i128::from(MAX_POINTS) < i128::from(i64::MAX));
    }
}
