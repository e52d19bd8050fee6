//! Money as integer minor units of an ISO-4217 currency.
//!
//! Amounts arrive from shop platforms as decimal strings ("59000", "199.99", "59000.00"). They are
//! parsed digit by digit into `i64` minor units, never through a float, so that no amount is ever
//! rounded on its way in.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an amount or a currency could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("unknown currency {0:?} (expected an ISO-4217 code such as KRW or USD)")]
    UnknownCurrency(String),
    #[error("{0:?} is not a decimal amount (expected digits with an optional '.' and fraction)")]
    Malformed(String),
    #[error("{amount:?} has more fraction digits than {currency} allows ({exponent})")]
    TooPrecise {
        amount: String,
        currency: Currency,
        exponent: u8,
    },
    #[error("{0:?} is too large")]
    Overflow(String),
    #[error("{0:?} must not be negative")]
    Negative(String),
    #[error("amount is in {found}, the program uses {expected}")]
    CurrencyMismatch { expected: Currency, found: Currency },
}

/// An ISO-4217 currency and the number of digits of its minor unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    code: [u8; 3],
    exponent: u8,
}

/// ISO-4217 codes with their minor-unit exponents. Shops sell in these; an unknown code is an
/// error rather than a guess, because a wrong exponent misprices every order by a factor of 100.
const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EGP", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("MYR", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PHP", 2),
    ("PLN", 2),
    ("QAR", 2),
    ("RON", 2),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TRY", 2),
    ("TWD", 2),
    ("UAH", 2),
    ("USD", 2),
    ("VND", 0),
    ("ZAR", 2),
];

impl Currency {
    pub const KRW: Currency = Currency {
        code: *b"KRW",
        exponent: 0,
    };
    pub const USD: Currency = Currency {
        code: *b"USD",
        exponent: 2,
    };

    /// Looks a code up in the ISO-4217 table (upper case, as platforms send it).
    pub fn from_code(code: &str) -> Result<Currency, MoneyError> {
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(c, exponent)| {
                let b = c.as_bytes();
                Currency {
                    code: [b[0], b[1], b[2]],
                    exponent: *exponent,
                }
            })
            .ok_or_else(|| MoneyError::UnknownCurrency(code.to_string()))
    }

    pub fn code(&self) -> &str {
        // The table holds ASCII codes only.
        std::str::from_utf8(&self.code).unwrap_or("???")
    }

    /// Digits after the decimal point in a major-unit amount (KRW 0, USD 2, KWD 3).
    pub fn exponent(&self) -> u8 {
        self.exponent
    }

    /// Minor units in one major unit (KRW 1, USD 100).
    pub fn minor_per_major(&self) -> i64 {
        10_i64.pow(u32::from(self.exponent))
    }

    /// Parses a decimal string in major units into minor units, exactly.
    ///
    /// Fraction digits beyond the exponent are accepted only when they are all zero, because
    /// platforms pad amounts ("59000.00" KRW) but a real sub-unit amount cannot be represented.
    pub fn parse_amount(&self, text: &str) -> Result<i64, MoneyError> {
        let malformed = || MoneyError::Malformed(text.to_string());
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = match unsigned.split_once('.') {
            Some((w, f)) => (w, f),
            None => (unsigned, ""),
        };
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || !all_digits(whole)
            || !all_digits(fraction)
            || (unsigned.contains('.') && fraction.is_empty())
        {
            return Err(malformed());
        }
        let exponent = usize::from(self.exponent);
        let (kept, extra) = fraction.split_at(fraction.len().min(exponent));
        if extra.bytes().any(|b| b != b'0') {
            return Err(MoneyError::TooPrecise {
                amount: text.to_string(),
                currency: *self,
                exponent: self.exponent,
            });
        }
        let overflow = || MoneyError::Overflow(text.to_string());
        let mut minor: i64 = 0;
        let padded = kept.bytes().chain(std::iter::repeat(b'0')).take(exponent);
        for digit in whole.bytes().chain(padded) {
            minor = minor
                .checked_mul(10)
                .and_then(|m| m.checked_add(i64::from(digit - b'0')))
                .ok_or_else(overflow)?;
        }
        Ok(if negative { -minor } else { minor })
    }

    /// Like [`Currency::parse_amount`], for amounts that can never be negative (prices, totals).
    pub fn parse_non_negative(&self, text: &str) -> Result<i64, MoneyError> {
        let minor = self.parse_amount(text)?;
        if minor < 0 {
            return Err(MoneyError::Negative(text.to_string()));
        }
        Ok(minor)
    }

    /// Formats minor units as a major-unit decimal string with exactly `exponent` fraction digits.
    pub fn format_amount(&self, minor: i64) -> String {
        let exponent = usize::from(self.exponent);
        let sign = if minor < 0 { "-" } else { "" };
        let digits = minor.unsigned_abs().to_string();
        if exponent == 0 {
            return format!("{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = exponent + 1);
        let (whole, fraction) = padded.split_at(padded.len() - exponent);
        format!("{sign}{whole}.{fraction}")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::from_code(s)
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = String::deserialize(deserializer)?;
        Currency::from_code(&code).map_err(serde::de::Error::custom)
    }
}

/// An amount of money: integer minor units and their currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn parse(text: &str, currency: Currency) -> Result<Money, MoneyError> {
        Ok(Money {
            minor: currency.parse_amount(text)?,
            currency,
        })
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            self.currency.format_amount(self.minor),
            self.currency
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn krw_amounts_parse_exactly() {
        // GIVEN the won, which has no minor unit
        let krw = Currency::KRW;
        // WHEN whole amounts, zero-padded amounts and a real fraction are parsed
        // THEN whole and padded amounts are exact and the fraction is refused
        assert_eq!(krw.parse_amount("59000"), Ok(59_000));
        assert_eq!(krw.parse_amount("59000.00"), Ok(59_000));
        assert!(matches!(
            krw.parse_amount("59000.5"),
            Err(MoneyError::TooPrecise { .. })
        ));
    }

    #[test]
    fn usd_amounts_parse_to_cents() {
        // GIVEN dollars WHEN amounts with 0, 1, 2 and padded fraction digits are parsed
        let usd = Currency::USD;
        // THEN each is an exact number of cents
        assert_eq!(usd.parse_amount("199.99"), Ok(19_999));
        assert_eq!(usd.parse_amount("0.5"), Ok(50));
        assert_eq!(usd.parse_amount("12"), Ok(1_200));
        assert_eq!(usd.parse_amount("12.3400"), Ok(1_234));
        assert!(usd.parse_amount("12.345").is_err());
    }

    #[test]
    fn malformed_amounts_are_refused() {
        // GIVEN strings that are not plain decimals THEN each is refused as malformed
        for text in [
            "", ".", "1.", ".5", "1e3", "+1", " 1", "1,000", "0x10", "--1", "1.2.3",
        ] {
            assert!(
                matches!(
                    Currency::USD.parse_amount(text),
                    Err(MoneyError::Malformed(_))
                ),
                "{text:?} should be malformed"
            );
        }
    }

    #[test]
    fn overflow_and_negative_are_refused() {
        // GIVEN an amount past i64 and a negative price
        // THEN overflow is reported, and a negative is refused where amounts cannot be negative
        assert!(matches!(
            Currency::USD.parse_amount("92233720368547758.08"),
            Err(MoneyError::Overflow(_))
        ));
        assert_eq!(
            Currency::USD.parse_amount("92233720368547758.07"),
            Ok(i64::MAX)
        );
        assert_eq!(Currency::USD.parse_amount("-1.5"), Ok(-150));
        assert!(matches!(
            Currency::USD.parse_non_negative("-1.5"),
            Err(MoneyError::Negative(_))
        ));
    }

    #[test]
    fn unknown_currency_is_an_error() {
        // GIVEN a code that is not ISO-4217 THEN it is refused, not guessed
        assert!(matches!(
            Currency::from_code("XXY"),
            Err(MoneyError::UnknownCurrency(_))
        ));
        assert!(Currency::from_code("krw").is_err());
        assert_eq!(Currency::from_code("JPY").map(|c| c.exponent()), Ok(0));
        assert_eq!(Currency::from_code("KWD").map(|c| c.exponent()), Ok(3));
    }

    #[test]
    fn formatting_pads_fractions() {
        assert_eq!(Currency::USD.format_amount(5), "0.05");
        assert_eq!(Currency::USD.format_amount(-1_234), "-12.34");
        assert_eq!(Currency::KRW.format_amount(59_000), "59000");
    }

    fn any_currency() -> impl Strategy<Value = Currency> {
        prop::sample::select(CURRENCIES.to_vec())
            .prop_map(|(code, _)| Currency::from_code(code).unwrap())
    }

    proptest! {
        #[test]
        fn decimal_parsing_round_trips(minor in any::<i64>(), currency in any_currency()) {
            // GIVEN any amount in any currency WHEN formatted and parsed back THEN it is unchanged
            let text = currency.format_amount(minor);
            prop_assert_eq!(currency.parse_amount(&text), Ok(minor));
        }

        #[test]
        fn zero_padding_never_changes_an_amount(minor in 0i64..1_000_000_000_000, pad in 0usize..6) {
            // GIVEN a formatted amount WHEN zeros are appended to its fraction THEN it parses the same
            let usd = Currency::USD;
            let text = format!("{}{}", usd.format_amount(minor), "0".repeat(pad));
            prop_assert_eq!(usd.parse_amount(&text), Ok(minor));
        }
    }
}
