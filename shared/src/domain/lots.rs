//! Lots: the member's available points grouped by the last day they can be used.
//!
//! A compact map (expiry date → points) on the account, so that earning or spending stays one
//! conditional write of the account. Spending always takes the soonest-expiring points first,
//! which is what members expect and what keeps the liability shrinking.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// Points taken from (or returned to) one lot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LotShare {
    pub expires_on: NaiveDate,
    pub points: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Lots(BTreeMap<NaiveDate, i64>);

impl Lots {
    pub fn total(&self) -> i64 {
        self.0.values().sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = LotShare> + '_ {
        self.0.iter().map(|(d, p)| LotShare {
            expires_on: *d,
            points: *p,
        })
    }

    pub fn add(&mut self, expires_on: NaiveDate, points: i64) {
        if points > 0 {
            *self.0.entry(expires_on).or_insert(0) += points;
        }
    }

    /// Takes up to `points`, from `first` if given and then soonest-expiring first. Returns what
    /// was taken from each lot; the total may be less than asked if the lots run out.
    pub fn take(&mut self, points: i64, first: Option<NaiveDate>) -> Vec<LotShare> {
        let mut left = points;
        let mut taken = Vec::new();
        let order: Vec<NaiveDate> = first
            .into_iter()
            .chain(self.0.keys().copied().filter(|d| Some(*d) != first))
            .collect();
        for date in order {
            if left <= 0 {
                break;
            }
            let Some(lot) = self.0.get_mut(&date) else {
                continue;
            };
            let n = (*lot).min(left);
            *lot -= n;
            left -= n;
            if *lot == 0 {
                self.0.remove(&date);
            }
            if n > 0 {
                taken.push(LotShare {
                    expires_on: date,
                    points: n,
                });
            }
        }
        taken
    }

    /// [`Lots::take`] from the lots still usable on `today` only: an ended lot pays nothing.
    pub fn take_usable(&mut self, points: i64, today: NaiveDate) -> Vec<LotShare> {
        let mut usable = Lots(self.0.split_off(&today));
        let taken = usable.take(points, None);
        self.0.append(&mut usable.0);
        taken
    }

    /// Removes and returns the lots whose last usable day is before `today`.
    pub fn remove_expired(&mut self, today: NaiveDate) -> Vec<LotShare> {
        let keep = self.0.split_off(&today);
        let expired = std::mem::replace(&mut self.0, keep);
        expired
            .into_iter()
            .map(|(d, p)| LotShare {
                expires_on: d,
                points: p,
            })
            .collect()
    }

    /// Points that expire on or before `until` (for "expiring soon").
    pub fn expiring_until(&self, until: NaiveDate) -> Vec<LotShare> {
        self.iter().take_while(|l| l.expires_on <= until).collect()
    }

    /// What changed in each lot from `before` to `self` (signed), lots in date order.
    pub fn moves_since(&self, before: &Lots) -> Vec<LotShare> {
        let mut dates: Vec<NaiveDate> = self.0.keys().chain(before.0.keys()).copied().collect();
        dates.sort_unstable();
        dates.dedup();
        dates
            .into_iter()
            .filter_map(|d| {
                let change =
                    self.0.get(&d).copied().unwrap_or(0) - before.0.get(&d).copied().unwrap_or(0);
                (change != 0).then_some(LotShare {
                    expires_on: d,
                    points: change,
                })
            })
            .collect()
    }

    pub fn first_expiry(&self) -> Option<NaiveDate> {
        self.0.keys().next().copied()
    }

    /// The last day of the latest lot that has ended before `today`.
    pub fn last_ended(&self, today: NaiveDate) -> Option<NaiveDate> {
        self.0.range(..today).next_back().map(|(d, _)| *d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2027, 1, day).unwrap()
    }

    #[test]
    fn taking_starts_with_the_soonest_expiring_lot() {
        // GIVEN lots expiring on the 20th, 5th and 10th
        let mut lots = Lots::default();
        lots.add(d(20), 100);
        lots.add(d(5), 30);
        lots.add(d(10), 50);
        // WHEN 60 points are taken
        let taken = lots.take(60, None);
        // THEN the 5th is emptied first, then 30 from the 10th
        assert_eq!(
            taken,
            vec![
                LotShare {
                    expires_on: d(5),
                    points: 30
                },
                LotShare {
                    expires_on: d(10),
                    points: 30
                },
            ]
        );
        assert_eq!(lots.total(), 120);
    }

    #[test]
    fn a_preferred_lot_is_taken_first_and_shortfalls_are_visible() {
        // GIVEN two lots WHEN more than they hold is taken, preferring the later one
        let mut lots = Lots::default();
        lots.add(d(5), 10);
        lots.add(d(9), 10);
        let taken = lots.take(25, Some(d(9)));
        // THEN the later lot goes first and only 20 could be taken
        assert_eq!(taken[0].expires_on, d(9));
        assert_eq!(taken.iter().map(|t| t.points).sum::<i64>(), 20);
        assert_eq!(lots.total(), 0);
    }

    #[test]
    fn expired_lots_are_those_before_today() {
        let mut lots = Lots::default();
        lots.add(d(5), 10);
        lots.add(d(6), 20);
        let gone = lots.remove_expired(d(6));
        assert_eq!(
            gone,
            vec![LotShare {
                expires_on: d(5),
                points: 10
            }]
        );
        assert_eq!(lots.total(), 20);
    }
}
