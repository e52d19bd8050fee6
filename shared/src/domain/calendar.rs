//! Dates in the program's time zone: the day a purchase counts for, the month bucket it qualifies
//! in, and the last day its points can be used.
//!
//! Members see dates in the shop's zone ("expires on 31 January"), so every calendar rule is
//! evaluated there, never in UTC.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The last day a four-digit year writes: "every day" in a range read from the store, whose
/// keys hold dates as text.
pub const LAST_DAY: NaiveDate = match NaiveDate::from_ymd_opt(9999, 12, 31) {
    Some(day) => day,
    None => NaiveDate::MAX,
};

/// A date from outside, as `YYYY-MM-DD` exactly: a four-digit year, so that every date
/// computed from it stays a date (chrono's own `%Y` takes `-262143` or `+99999`, whose day
/// after or month after does not exist).
pub fn parse_date(text: &str) -> Option<NaiveDate> {
    let shaped = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    shaped
        .then(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok())
        .flatten()
}

/// `date` moved by `days`, held at the calendar's ends (a lot that never expires ends on
/// [`NaiveDate::MAX`], and its day after is that day again, never a panic).
pub fn add_days(date: NaiveDate, days: i64) -> NaiveDate {
    date.checked_add_signed(chrono::Duration::days(days))
        .unwrap_or(if days < 0 {
            NaiveDate::MIN
        } else {
            NaiveDate::MAX
        })
}

/// The calendar day of an instant in the program's time zone.
pub fn local_date(tz: Tz, at: DateTime<Utc>) -> NaiveDate {
    at.with_timezone(&tz).date_naive()
}

/// `days` calendar days after an instant, at the same time of day on the program's clock: a
/// return window of 30 days ends on the 30th local day after the purchase whether or not the
/// clocks changed between (30 x 24 hours across a change ends an hour off, and near midnight
/// a day off). A time of day that the change skips is taken an hour later; one it repeats,
/// the first time.
pub fn add_local_days(tz: Tz, at: DateTime<Utc>, days: i64) -> DateTime<Utc> {
    let plain = at + chrono::Duration::days(days);
    let Some(target) = at
        .with_timezone(&tz)
        .naive_local()
        .checked_add_signed(chrono::Duration::days(days))
    else {
        return plain;
    };
    let resolved = match tz.from_local_datetime(&target) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => Some(t),
        chrono::LocalResult::None => tz
            .from_local_datetime(&(target + chrono::Duration::hours(1)))
            .earliest(),
    };
    resolved.map_or(plain, |t| t.with_timezone(&Utc))
}

/// The first instant of a local day (midnight, or the first valid instant after a DST gap).
pub fn start_of_day(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    match tz.from_local_datetime(&midnight) {
        chrono::LocalResult::Single(t) => t.with_timezone(&Utc),
        chrono::LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        // A zone that skips midnight starts the day at the first hour that exists.
        chrono::LocalResult::None => tz
            .from_local_datetime(&(midnight + chrono::Duration::hours(1)))
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|| midnight.and_utc()),
    }
}

/// Last day of the month that lies `months` calendar months after `date`'s month.
pub fn end_of_month_after(date: NaiveDate, months: u32) -> NaiveDate {
    let first = date.with_day(1).unwrap_or(date);
    first
        .checked_add_months(Months::new(months + 1))
        .and_then(|d| d.pred_opt())
        .unwrap_or(NaiveDate::MAX)
}

/// The same day `months` later; the 29th of February and the 31st clamp to the month's end.
pub fn add_months(date: NaiveDate, months: u32) -> NaiveDate {
    date.checked_add_months(Months::new(months))
        .unwrap_or(NaiveDate::MAX)
}

/// A calendar month, the unit of the qualifying buckets. Serialised as "YYYY-MM".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct YearMonth(i32);

impl YearMonth {
    pub fn new(year: i32, month: u32) -> YearMonth {
        YearMonth(year * 12 + month.clamp(1, 12) as i32 - 1)
    }

    pub fn of(date: NaiveDate) -> YearMonth {
        YearMonth::new(date.year(), date.month())
    }

    pub fn year(self) -> i32 {
        self.0.div_euclid(12)
    }

    pub fn month(self) -> u32 {
        self.0.rem_euclid(12) as u32 + 1
    }

    /// The month `n` months earlier (negative `n` goes forward).
    pub fn minus(self, n: i32) -> YearMonth {
        YearMonth(self.0 - n)
    }
}

impl fmt::Display for YearMonth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year(), self.month())
    }
}

impl FromStr for YearMonth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (y, m) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not YYYY-MM"))?;
        let year: i32 = y.parse().map_err(|_| format!("{s:?} is not YYYY-MM"))?;
        // A bound that keeps the month index far from overflow.
        if !(0..=9999).contains(&year) {
            return Err(format!("{s:?} has no year {year} (0 to 9999)"));
        }
        let month: u32 = m.parse().map_err(|_| format!("{s:?} is not YYYY-MM"))?;
        if !(1..=12).contains(&month) {
            return Err(format!("{s:?} has no month {month}"));
        }
        Ok(YearMonth::new(year, month))
    }
}

impl Serialize for YearMonth {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for YearMonth {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn a_window_of_days_ends_on_the_same_local_day_across_a_change_of_the_clocks() {
        let new_york: Tz = "America/New_York".parse().unwrap();
        let at = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc)
        };
        // GIVEN purchases at 23:30 EST on 6 December, at 00:30 EDT on 20 October and 5 October
        for (bought, days, ends) in [
            ("2026-12-07T04:30:00Z", 100, date(2027, 3, 16)),
            ("2026-10-20T04:30:00Z", 100, date(2027, 1, 28)),
            ("2026-10-05T04:30:00Z", 30, date(2026, 11, 4)),
        ] {
            // WHEN their windows of `days` days are counted
            let end = add_local_days(new_york, at(bought), days);
            // THEN each ends on the local day `days` after its own, at its time of day (before:
            // 2027-03-17, 2027-01-27 and 2026-11-03, an hour's change of the clocks off)
            assert_eq!(local_date(new_york, end), ends, "{bought} + {days} days");
            let clock = |t: DateTime<Utc>| t.with_timezone(&new_york).time();
            assert_eq!(clock(end), clock(at(bought)), "{bought}");
        }
        // AND a time the clocks skip (02:30 on 14 March 2027) is taken an hour later
        let end = add_local_days(new_york, at("2027-02-12T07:30:00Z"), 30);
        assert_eq!(end, at("2027-03-14T07:30:00Z"));
    }

    #[test]
    fn dates_from_outside_have_four_digit_years_and_days_stop_at_the_calendar_s_ends() {
        assert_eq!(parse_date("2026-02-28"), Some(date(2026, 2, 28)));
        for bad in [
            "-262143-01-01",
            "+262142-12-31",
            "+10000-01-01",
            "2026-2-28",
            "2026-02-30",
            "2026/02/28",
            " 2026-02-28",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        assert_eq!(add_days(NaiveDate::MAX, 1), NaiveDate::MAX);
        assert_eq!(add_days(date(2026, 1, 1), -100_000_000), NaiveDate::MIN);
        assert_eq!(add_days(date(2026, 1, 31), 1), date(2026, 2, 1));
    }

    #[test]
    fn expiry_is_the_end_of_the_month_n_months_later() {
        // GIVEN points earned on 15 January 2026 WHEN they expire 12 months later
        // THEN the last usable day is 31 January 2027
        assert_eq!(end_of_month_after(date(2026, 1, 15), 12), date(2027, 1, 31));
        assert_eq!(end_of_month_after(date(2027, 1, 31), 1), date(2027, 2, 28));
        assert_eq!(end_of_month_after(date(2026, 12, 1), 0), date(2026, 12, 31));
    }

    #[test]
    fn local_date_follows_the_program_zone() {
        // GIVEN 16:30 UTC on 22 November WHEN read in Seoul (UTC+9)
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 16, 30, 0).unwrap();
        // THEN it is already the 23rd there, and still the 22nd in New York
        assert_eq!(local_date(chrono_tz::Asia::Seoul, at), date(2026, 11, 23));
        assert_eq!(
            local_date(chrono_tz::America::New_York, at),
            date(2026, 11, 22)
        );
        assert_eq!(
            start_of_day(chrono_tz::Asia::Seoul, date(2026, 11, 23)),
            Utc.with_ymd_and_hms(2026, 11, 22, 15, 0, 0).unwrap()
        );
    }

    #[test]
    fn year_month_orders_and_round_trips() {
        let m = YearMonth::new(2026, 1);
        assert_eq!(m.minus(1).to_string(), "2025-12");
        assert_eq!(m.minus(-11).to_string(), "2026-12");
        assert_eq!("2026-01".parse::<YearMonth>(), Ok(m));
        assert!("2026-13".parse::<YearMonth>().is_err());
        assert!(YearMonth::new(2025, 12) < m);
    }
}
