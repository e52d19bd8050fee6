//! Finance's reports: the points liability and its movement, from the program's books.

use std::collections::BTreeMap;

use chrono::NaiveDate;

use super::{ServiceError, Services};
use crate::domain::calendar::{local_date, YearMonth};
use crate::liability::{self, LiabilityReport};

impl Services {
    /// The liability report as of the end of `as_of` (today, in the program's time zone, when
    /// absent). A date after today is refused: the books cannot know it yet.
    pub async fn liability(
        &self,
        program: &str,
        as_of: Option<NaiveDate>,
    ) -> Result<LiabilityReport, ServiceError> {
        let program = self.program(program).await?;
        let today = local_date(program.time_zone, self.clock.now());
        let as_of = as_of.unwrap_or(today);
        if as_of > today {
            return Err(ServiceError::invalid(
                "invalid-date",
                format!(
                    "as_of {as_of} is after today ({today} in {})",
                    program.time_zone
                ),
            ));
        }
        let rows = self.store.book_rows(&program.id, as_of).await?;
        Ok(liability::report(&program, &rows, as_of))
    }
}

/// What the brand owes each cause, by month: `GET .../reports/donations`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DonationsReport {
    pub program: String,
    pub currency: String,
    pub months: Vec<DonationMonth>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DonationMonth {
    pub month: YearMonth,
    pub causes: Vec<CauseTotal>,
    pub points: i64,
    /// In major units of the program's currency, as a decimal string.
    pub amount: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CauseTotal {
    pub cause: String,
    pub points: i64,
    pub amount: String,
}

impl Services {
    /// Donations by month and cause, from the books (each donation's commit counted its points
    /// and money on its day): every month with a donation, or the one asked for.
    pub async fn donations(
        &self,
        program: &str,
        month: Option<YearMonth>,
    ) -> Result<DonationsReport, ServiceError> {
        let program = self.program(program).await?;
        let today = local_date(program.time_zone, self.clock.now());
        let rows = self.store.book_rows(&program.id, today).await?;
        let mut sums: BTreeMap<(YearMonth, String), (i64, i64)> = BTreeMap::new();
        for row in &rows {
            let at = YearMonth::of(row.day);
            if month.is_some_and(|m| m != at) {
                continue;
            }
            let (slot, cause) = match row.name.split_once('|') {
                Some(("g", cause)) => (0, cause),
                Some(("gv", cause)) => (1, cause),
                _ => continue,
            };
            let sum = sums.entry((at, cause.to_string())).or_insert((0, 0));
            if slot == 0 {
                sum.0 += row.value;
            } else {
                sum.1 += row.value;
            }
        }
        let money = |minor: i64| program.currency.format_amount(minor);
        let mut months: Vec<DonationMonth> = Vec::new();
        let mut minor_of_month = 0_i64;
        for ((at, cause), (points, minor)) in sums {
            if months.last().is_none_or(|m| m.month != at) {
                minor_of_month = 0;
                months.push(DonationMonth {
                    month: at,
                    causes: Vec::new(),
                    points: 0,
                    amount: money(0),
                });
            }
            if let Some(m) = months.last_mut() {
                m.points += points;
                minor_of_month += minor;
                m.amount = money(minor_of_month);
                m.causes.push(CauseTotal {
                    cause,
                    points,
                    amount: money(minor),
                });
            }
        }
        Ok(DonationsReport {
            program: program.id.clone(),
            currency: program.currency.to_string(),
            months,
        })
    }
}
