//! Money is an integer count of a currency's minor units (cents for USD, yen for JPY). There is no
//! floating point anywhere in Tally: amounts are `i64` and every arithmetic step is checked.

use serde::Serialize;

use crate::ParseError;

/// The largest amount, in minor units, that a single price or order total may carry. It keeps
/// every sum of a bounded order far from `i64::MAX` and is larger than any real retail amount
/// (ten trillion in major units for a two-decimal currency).
pub const AMOUNT_MINOR_MAX: i64 = 1_000_000_000_000_000;

/// An ISO 4217 currency that has minor units defined (so not `XAU` or `XDR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency(iso_currency::Currency);

impl Currency {
    pub fn parse(code: &str) -> Result<Self, ParseError> {
        let currency = iso_currency::Currency::from_code(code)
            .ok_or_else(|| ParseError::new(format!("'{code}' is not an ISO 4217 currency code")))?;
        if currency.exponent().is_none() {
            return Err(ParseError::new(format!(
                "'{code}' has no minor unit and cannot be used for prices"
            )));
        }
        Ok(Self(currency))
    }

    pub fn code(&self) -> &'static str {
        self.0.code()
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

/// An amount in one currency, in minor units, never negative (a price, a line total).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn parse(minor: i64, currency: Currency) -> Result<Self, ParseError> {
        if !(0..=AMOUNT_MINOR_MAX).contains(&minor) {
            return Err(ParseError::new(format!(
                "must be an integer amount of minor units from 0 to {AMOUNT_MINOR_MAX}"
            )));
        }
        Ok(Self { minor, currency })
    }

    /// `self × factor`, or `None` when the product leaves the allowed range.
    pub fn times(self, factor: u32) -> Option<Self> {
        let minor = self.minor.checked_mul(i64::from(factor))?;
        (minor <= AMOUNT_MINOR_MAX).then_some(Self { minor, ..self })
    }

    /// `self + other` in the same currency, or `None` on a currency mismatch or overflow.
    pub fn plus(self, other: Self) -> Option<Self> {
        if self.currency != other.currency {
            return None;
        }
        let minor = self.minor.checked_add(other.minor)?;
        (minor <= AMOUNT_MINOR_MAX).then_some(Self { minor, ..self })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usd() -> Currency {
        Currency::parse("USD").expect("USD is ISO 4217")
    }

    #[test]
    fn currency_codes_are_checked_against_iso_4217() {
        assert_eq!(usd().code(), "USD");
        assert!(Currency::parse("usd").is_err());
        assert!(Currency::parse("ZZZ").is_err());
        assert!(Currency::parse("XAU").is_err(), "gold has no minor unit");
    }

    #[test]
    fn amounts_must_be_within_range() {
        assert!(Money::parse(-1, usd()).is_err());
        assert!(Money::parse(AMOUNT_MINOR_MAX + 1, usd()).is_err());
        assert!(Money::parse(0, usd()).is_ok());
    }

    proptest! {
        /// Checked arithmetic either gives the exact integer result or refuses: it never wraps.
        #[test]
        fn times_and_plus_are_exact_or_refused(a in 0..=AMOUNT_MINOR_MAX, b in 0..=AMOUNT_MINOR_MAX, k in any::<u32>()) {
            let a_money = Money::parse(a, usd()).expect("in range");
            let b_money = Money::parse(b, usd()).expect("in range");
            match a_money.times(k) {
                Some(m) => prop_assert_eq!(i128::from(m.minor), i128::from(a) * i128::from(k)),
                None => prop_assert!(i128::from(a) * i128::from(k) > i128::from(AMOUNT_MINOR_MAX)),
            }
            match a_money.plus(b_money) {
                Some(m) => prop_assert_eq!(m.minor, a + b),
                None => prop_assert!(a + b > AMOUNT_MINOR_MAX),
            }
        }
    }
}
