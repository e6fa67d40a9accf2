//! Exact money: decimal text to `i64` minor units and back. No float is
//! involved anywhere; a value that cannot be represented exactly is refused.

use crate::currency::Currency;
use std::fmt;

/// An amount in minor units of a currency (`1234` USD is 12.34 USD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

/// Why a piece of text is not an amount in a given currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// Not a decimal number at all (`"abc"`, `"NaN"`, `"1,000"`, `""`).
    #[error("not a decimal number")]
    NotANumber,
    /// More significant decimals than the currency's minor unit has.
    #[error("more decimal places than the currency allows ({0})")]
    TooManyDecimals(u8),
    /// Does not fit in a signed 64-bit count of minor units.
    #[error("amount does not fit in 64-bit minor units")]
    Overflow,
}

impl Money {
    pub fn new(minor: i64, currency: Currency) -> Self {
        Self { minor, currency }
    }

    /// Parses a decimal (`"12.34"`, `"-5"`, `"+1000.000"`, `"1.5e2"`).
    ///
    /// Trailing zeros past the exponent are accepted (`"12.340"` USD is
    /// exactly 1234 cents, nothing is rounded); a non-zero digit past it is a
    /// [`AmountError::TooManyDecimals`]. The exponent form is accepted because
    /// JSON numbers may use it; the result must still be exact.
    pub fn parse(text: &str, currency: Currency) -> Result<Self, AmountError> {
        parse_minor(text, currency.exponent()).map(|minor| Self::new(minor, currency))
    }

    /// The amount as a decimal string with exactly the currency's decimals.
    pub fn to_decimal_string(&self) -> String {
        format_minor(self.minor as i128, self.currency.exponent())
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.to_decimal_string(), self.currency)
    }
}

/// Parses decimal text into minor units with `exponent` decimals.
pub fn parse_minor(text: &str, exponent: u8) -> Result<i64, AmountError> {
    let bytes = text.as_bytes();
    let (negative, rest) = match bytes.first() {
        Some(b'-') => (true, &bytes[1..]),
        Some(b'+') => (false, &bytes[1..]),
        _ => (false, bytes),
    };
    let (mantissa, exp_part) = match rest.iter().position(|b| *b == b'e' || *b == b'E') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (int_part, frac_part) = match mantissa.iter().position(|b| *b == b'.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, &[][..]),
    };
    if int_part.is_empty()
        || !int_part.iter().all(u8::is_ascii_digit)
        || !frac_part.iter().all(u8::is_ascii_digit)
        || (mantissa.contains(&b'.') && frac_part.is_empty())
    {
        return Err(AmountError::NotANumber);
    }
    let shift: i64 = match exp_part {
        None => 0,
        Some(e) => parse_small_int(e).ok_or(AmountError::NotANumber)?,
    };
    // The value is digits(int_part ++ frac_part) * 10^(shift - frac_len); in
    // minor units multiply by 10^exponent as well.
    let scale = shift - frac_part.len() as i64 + i64::from(exponent);
    let digits = int_part.iter().chain(frac_part.iter());
    let mut value: i128 = 0;
    let total_digits = int_part.len() + frac_part.len();
    let keep = if scale >= 0 {
        total_digits
    } else {
        // Digits that would fall below the minor unit must all be zero.
        total_digits.saturating_sub((-scale) as usize)
    };
    for (i, d) in digits.enumerate() {
        let d = i128::from(d - b'0');
        if i < keep {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(d))
                .filter(|v| *v <= i128::from(u64::MAX))
                .ok_or(AmountError::Overflow)?;
        } else if d != 0 {
            return Err(AmountError::TooManyDecimals(exponent));
        }
    }
    if scale > 0 {
        for _ in 0..scale {
            value = value
                .checked_mul(10)
                .filter(|v| *v <= i128::from(u64::MAX))
                .ok_or(AmountError::Overflow)?;
            if value == 0 {
                break;
            }
        }
    }
    let value = if negative { -value } else { value };
    i64::try_from(value).map_err(|_| AmountError::Overflow)
}

fn parse_small_int(text: &[u8]) -> Option<i64> {
    let (neg, digits) = match text.first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 4 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v: i64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(if neg { -v } else { v })
}

/// Formats minor units as a decimal string with `exponent` decimals. Takes
/// `i128` so that sums of many `i64` amounts format exactly too.
pub fn format_minor(minor: i128, exponent: u8) -> String {
    let negative = minor < 0;
    let digits = minor.unsigned_abs().to_string();
    let exponent = usize::from(exponent);
    let mut out = String::with_capacity(digits.len() + exponent + 3);
    if negative {
        out.push('-');
    }
    if exponent == 0 {
        out.push_str(&digits);
        return out;
    }
    if digits.len() <= exponent {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', exponent - digits.len()));
        out.push_str(&digits);
    } else {
        let (int, frac) = digits.split_at(digits.len() - exponent);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cur(code: &str) -> Currency {
        Currency::from_code(code).unwrap()
    }

    #[test]
    fn parses_examples() {
        assert_eq!(parse_minor("12.34", 2), Ok(1234));
        assert_eq!(parse_minor("-5", 2), Ok(-500));
        assert_eq!(parse_minor("+0.5", 2), Ok(50));
        assert_eq!(parse_minor("1000.000", 3), Ok(1_000_000));
        assert_eq!(parse_minor("1500", 0), Ok(1500));
        assert_eq!(parse_minor("12.340", 2), Ok(1234));
        assert_eq!(parse_minor("1.5e2", 2), Ok(15000));
        assert_eq!(parse_minor("125E-2", 2), Ok(125));
        assert_eq!(parse_minor("0.0001", 4), Ok(1));
        assert_eq!(parse_minor("0e5", 2), Ok(0));
        assert_eq!(parse_minor("-0.00", 2), Ok(0));
    }

    #[test]
    fn rejects_with_specific_reasons() {
        assert_eq!(
            parse_minor("12.345", 2),
            Err(AmountError::TooManyDecimals(2))
        );
        assert_eq!(parse_minor("1.5", 0), Err(AmountError::TooManyDecimals(0)));
        assert_eq!(parse_minor("1e-3", 2), Err(AmountError::TooManyDecimals(2)));
        for bad in [
            "", "-", "abc", "NaN", "nan", "Infinity", "1,000.00", "1.", ".5", "1..2", "--1", "1e",
            "0x10", " 1", "1 ", "1e99999",
        ] {
            assert_eq!(parse_minor(bad, 2), Err(AmountError::NotANumber), "{bad:?}");
        }
        assert_eq!(
            parse_minor("92233720368547758.08", 2),
            Err(AmountError::Overflow)
        );
        assert_eq!(parse_minor("-92233720368547758.08", 2), Ok(i64::MIN));
        assert_eq!(parse_minor("1e30", 2), Err(AmountError::Overflow));
        assert_eq!(
            parse_minor("99999999999999999999999999", 0),
            Err(AmountError::Overflow)
        );
    }

    #[test]
    fn formats_examples() {
        assert_eq!(format_minor(1234, 2), "12.34");
        assert_eq!(format_minor(-5, 2), "-0.05");
        assert_eq!(format_minor(0, 3), "0.000");
        assert_eq!(format_minor(1500, 0), "1500");
        assert_eq!(format_minor(1, 4), "0.0001");
        assert_eq!(
            Money::new(1_000_000, cur("BHD")).to_decimal_string(),
            "1000.000"
        );
        assert_eq!(
            format_minor(i128::from(i64::MIN) * 4, 2),
            "-368934881474191032.32"
        );
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips_in_every_currency(minor in any::<i64>(), idx in 0usize..200) {
            let all: Vec<Currency> = Currency::all().collect();
            let currency = all[idx % all.len()];
            let money = Money::new(minor, currency);
            let text = money.to_decimal_string();
            prop_assert_eq!(Money::parse(&text, currency), Ok(money));
        }

        #[test]
        fn parse_then_format_is_canonical(int in 0u64..1_000_000_000_000, frac in 0u32..10_000, neg in any::<bool>(), idx in 0usize..200) {
            let all: Vec<Currency> = Currency::all().collect();
            let currency = all[idx % all.len()];
            let exp = usize::from(currency.exponent());
            let frac_text = if exp == 0 { String::new() } else {
                format!(".{:0width$}", u64::from(frac) % 10u64.pow(exp as u32), width = exp)
            };
            let text = format!("{}{}{}", if neg { "-" } else { "" }, int, frac_text);
            let parsed = Money::parse(&text, currency).unwrap();
            let expected = if neg && parsed.minor == 0 { text.trim_start_matches('-').to_string() } else { text.clone() };
            prop_assert_eq!(parsed.to_decimal_string(), expected);
        }

        #[test]
        fn extra_nonzero_decimal_is_always_rejected(minor in -1_000_000_000i64..1_000_000_000, digit in 1u8..10, idx in 0usize..200) {
            let all: Vec<Currency> = Currency::all().collect();
            let currency = all[idx % all.len()];
            let mut text = Money::new(minor, currency).to_decimal_string();
            if currency.exponent() == 0 { text.push('.'); }
            text.push(char::from(b'0' + digit));
            prop_assert_eq!(Money::parse(&text, currency), Err(AmountError::TooManyDecimals(currency.exponent())));
        }

        #[test]
        fn never_panics_on_arbitrary_text(text in ".{0,40}") {
            let _ = parse_minor(&text, 2);
        }
    }
}
