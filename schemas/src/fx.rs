//! Foreign exchange to a tenant's base currency, exactly: reference rates in
//! the European Central Bank's CSV layout (one row per business day, one
//! column per currency, each rate the units of that currency one euro buys),
//! and the conversion of an amount in minor units at the rate of its date,
//! with integer arithmetic only and one rounding, half-even, to the base
//! currency's exponent. Never a float.
//!
//! Processors convert each record at enrichment (`docs/fx.md`); the rates
//! live in the state store as the CSV [`Rates::to_ecb_csv`] writes.

use crate::currency::Currency;
use chrono::NaiveDate;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// The most days a rate is looked back for: ECB publishes every TARGET
/// business day, so a weekend and a holiday are covered, and an amount is
/// never converted at a rate weeks old.
pub const MAX_LOOKBACK_DAYS: u32 = 7;

/// Codes ISO 4217 withdrew that the ECB's history file has columns for.
const WITHDRAWN: [&str; 10] = [
    "CYP", "EEK", "HRK", "LTL", "LVL", "MTL", "ROL", "SIT", "SKK", "TRL",
];

/// Most decimal places a rate may have.
const MAX_SCALE: u32 = 12;

/// An exact positive decimal: `mantissa / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    mantissa: u128,
    scale: u32,
}

impl Rate {
    const ONE: Rate = Rate {
        mantissa: 1,
        scale: 0,
    };

    /// Parses `1.0812`: digits with at most one point, positive, at most 12
    /// decimals and 30 digits in all; no sign, exponent or spaces.
    pub fn parse(text: &str) -> Option<Rate> {
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty()
            || !digits_ok(int)
            || !digits_ok(frac)
            || frac.len() > MAX_SCALE as usize
            || (text.contains('.') && frac.is_empty())
        {
            return None;
        }
        if int.len() + frac.len() > 30 {
            return None;
        }
        let mantissa: u128 = format!("{int}{frac}").parse().ok()?;
        (mantissa > 0).then_some(Rate {
            mantissa,
            scale: frac.len() as u32,
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = format!(
            "{:0>width$}",
            self.mantissa,
            width = self.scale as usize + 1
        );
        let (int, frac) = digits.split_at(digits.len() - self.scale as usize);
        if frac.is_empty() {
            write!(f, "{int}")
        } else {
            write!(f, "{int}.{frac}")
        }
    }
}

/// A line of a rates file that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatesError {
    /// From 1.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for RatesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for RatesError {}

/// A column of a rates file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Rate(Currency),
    /// A currency ISO 4217 no longer lists.
    Ignored,
    /// No header (a trailing comma).
    Empty,
}

/// Euro reference rates by day.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rates {
    days: BTreeMap<NaiveDate, HashMap<Currency, Rate>>,
    /// Columns of the file read that were skipped: codes ISO 4217 no
    /// longer lists.
    ignored: Vec<String>,
}

impl Rates {
    /// Reads the ECB layout (`eurofxref-hist.csv`): a header `Date,USD,JPY,…`
    /// (a trailing comma allowed), then `2026-03-02,1.0812,160.25,…` rows;
    /// `N/A` or an empty cell is no rate that day. A whole file is refused
    /// at its first bad line, with the line's number: rates are not taken in
    /// part.
    pub fn parse_ecb_csv(text: &str) -> Result<Rates, RatesError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_end_matches('\r')));
        let bad = |line: usize, message: String| RatesError { line, message };
        let (_, header) = lines
            .find(|(_, l)| !l.trim().is_empty())
            .ok_or_else(|| bad(1, "the file is empty".into()))?;
        let mut cells = header.split(',').map(str::trim);
        if !cells.next().is_some_and(|c| c.eq_ignore_ascii_case("date")) {
            return Err(bad(1, "the header must start with `Date`".into()));
        }
        let mut columns = Vec::new();
        let mut rates = Rates::default();
        for cell in cells {
            if cell.is_empty() {
                columns.push(Column::Empty);
                continue;
            }
            let Some(currency) = Currency::from_code(cell) else {
                // A currency the euro (or a new lira) replaced, which the
                // ECB history still has columns for: skipped, and named.
                // Any other unknown code is a mistake.
                if WITHDRAWN.contains(&cell) {
                    columns.push(Column::Ignored);
                    rates.ignored.push(cell.to_string());
                    continue;
                }
                return Err(bad(1, format!("`{cell}` is not an ISO 4217 currency")));
            };
            if currency.code() == "EUR" || columns.contains(&Column::Rate(currency)) {
                return Err(bad(1, format!("`{cell}` cannot be a column here")));
            }
            columns.push(Column::Rate(currency));
        }
        for (line, row) in lines {
            if row.trim().is_empty() {
                continue;
            }
            let mut cells = row.split(',').map(str::trim);
            let date_text = cells.next().unwrap_or("");
            // The history file writes 2026-11-27; the daily file 27
            // November 2026.
            let date = NaiveDate::parse_from_str(date_text, "%Y-%m-%d")
                .or_else(|_| NaiveDate::parse_from_str(date_text, "%d %B %Y"))
                .map_err(|_| {
                    bad(
                        line,
                        format!("`{date_text}` is not a date YYYY-MM-DD or `27 November 2026`"),
                    )
                })?;
            let mut day = HashMap::new();
            for (i, cell) in cells.enumerate() {
                let Some(column) = columns.get(i) else {
                    if cell.is_empty() {
                        continue;
                    }
                    return Err(bad(line, "more cells than the header has columns".into()));
                };
                if cell.is_empty() || cell.eq_ignore_ascii_case("N/A") {
                    continue;
                }
                let currency = match column {
                    Column::Rate(currency) => currency,
                    Column::Ignored => continue,
                    Column::Empty => {
                        return Err(bad(line, "a rate under a column without a currency".into()));
                    }
                };
                let rate = Rate::parse(cell).ok_or_else(|| {
                    bad(
                        line,
                        format!(
                            "`{cell}` is not a positive decimal rate for {}",
                            currency.code()
                        ),
                    )
                })?;
                day.insert(*currency, rate);
            }
            if rates.days.insert(date, day).is_some() {
                return Err(bad(line, format!("{date} appears twice")));
            }
        }
        Ok(rates)
    }

    /// Adds the rates of `other`, each replacing the same currency's rate
    /// of the same day (other currencies of that day are kept: a file of
    /// one currency adds to the others).
    pub fn merge(&mut self, other: Rates) {
        for (day, rates) in other.days {
            self.days.entry(day).or_default().extend(rates);
        }
    }

    /// The columns skipped when reading (withdrawn currencies).
    pub fn ignored(&self) -> &[String] {
        &self.ignored
    }

    /// Days held.
    pub fn days(&self) -> usize {
        self.days.len()
    }

    /// The first and last day held.
    pub fn span(&self) -> Option<(NaiveDate, NaiveDate)> {
        Some((
            *self.days.first_key_value()?.0,
            *self.days.last_key_value()?.0,
        ))
    }

    /// The currencies with a rate on some day, by code.
    pub fn currencies(&self) -> Vec<&'static str> {
        self.days
            .values()
            .flat_map(|d| d.keys().map(|c| c.code()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// The rates in the layout [`Rates::parse_ecb_csv`] reads (newest day
    /// first, as the ECB writes it; `N/A` where a day has no rate), so that
    /// what is stored reads back the same.
    pub fn to_ecb_csv(&self) -> String {
        let codes = self.currencies();
        let mut out = String::from("Date");
        for code in &codes {
            out.push(',');
            out.push_str(code);
        }
        out.push('\n');
        for (day, rates) in self.days.iter().rev() {
            out.push_str(&day.to_string());
            for code in &codes {
                out.push(',');
                match rates.iter().find(|(c, _)| c.code() == *code) {
                    Some((_, rate)) => out.push_str(&rate.to_string()),
                    None => out.push_str("N/A"),
                }
            }
            out.push('\n');
        }
        out
    }

    /// The rates per euro of `a` and `b` on the latest day at or before
    /// `date`, within [`MAX_LOOKBACK_DAYS`], that has both, and that day.
    /// The euro is 1 on any day the file has.
    fn both(&self, a: Currency, b: Currency, date: NaiveDate) -> Option<(Rate, Rate, NaiveDate)> {
        let earliest = date - chrono::Days::new(u64::from(MAX_LOOKBACK_DAYS));
        let of = |rates: &HashMap<Currency, Rate>, c: Currency| {
            if c.code() == "EUR" {
                Some(Rate::ONE)
            } else {
                rates.get(&c).copied()
            }
        };
        self.days
            .range(earliest..=date)
            .rev()
            .find_map(|(day, rates)| Some((of(rates, a)?, of(rates, b)?, *day)))
    }

    /// `amount_minor` of `from` in `to`, at the rates of `date` (or the
    /// latest earlier day with both, within [`MAX_LOOKBACK_DAYS`]).
    pub fn convert(
        &self,
        amount_minor: i64,
        from: Currency,
        to: Currency,
        date: NaiveDate,
    ) -> Result<Conversion, FxError> {
        // Both rates of one day, never one day's with another's.
        let Some((rate_from, rate_to, day)) = self.both(from, to, date) else {
            // Name the one the window lacks (the first, when both).
            let missing = if self.both(from, from, date).is_none() {
                from
            } else {
                to
            };
            return Err(FxError::MissingRate {
                currency: missing.code(),
                date,
            });
        };
        // to_minor = from_minor × (to per euro ÷ from per euro) × 10^(e_to − e_from)
        //          = from_minor × m_to × 10^(s_from + e_to) ÷ (m_from × 10^(s_to + e_from))
        let overflow = FxError::Overflow;
        let pow = |e: u32| 10u128.checked_pow(e).ok_or(FxError::Overflow);
        let numerator = u128::from(amount_minor.unsigned_abs())
            .checked_mul(rate_to.mantissa)
            .and_then(|n| n.checked_mul(pow(rate_from.scale + u32::from(to.exponent())).ok()?))
            .ok_or(overflow.clone())?;
        let denominator = rate_from
            .mantissa
            .checked_mul(pow(rate_to.scale + u32::from(from.exponent()))?)
            .ok_or(overflow.clone())?;
        let magnitude = half_even(numerator, denominator);
        let magnitude = i64::try_from(magnitude).map_err(|_| overflow.clone())?;
        let base_minor = if amount_minor < 0 {
            -magnitude
        } else {
            magnitude
        };
        Ok(Conversion {
            base_minor,
            rate: rate_text(rate_to, rate_from),
            rate_date: day,
        })
    }
}

/// `n / d` rounded half to even (`d > 0`).
fn half_even(n: u128, d: u128) -> u128 {
    let (q, r) = (n / d, n % d);
    match (2 * r).cmp(&d) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q % 2),
    }
}

/// `to / from` (units of `to` per unit of `from`) as decimal text with 12
/// places, half-even: the rate shown beside a conversion (the conversion
/// itself uses the exact fraction).
fn rate_text(to: Rate, from: Rate) -> String {
    // (m_to / 10^s_to) / (m_from / 10^s_from) × 10^12
    let n = to
        .mantissa
        .saturating_mul(10u128.pow(from.scale + MAX_SCALE));
    let d = from.mantissa.saturating_mul(10u128.pow(to.scale));
    let scaled = half_even(n, d);
    Rate {
        mantissa: scaled,
        scale: MAX_SCALE,
    }
    .to_string()
    .trim_end_matches('0')
    .trim_end_matches('.')
    .to_string()
}

/// An amount in the base currency, and what it was converted at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    pub base_minor: i64,
    /// Units of the base currency per unit of the amount's, 12 places at
    /// most.
    pub rate: String,
    /// The day of the rates used.
    pub rate_date: NaiveDate,
}

/// Why an amount has no base-currency value: said, never guessed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FxError {
    /// No rate for the currency on the date or the days before it.
    MissingRate {
        currency: &'static str,
        date: NaiveDate,
    },
    /// The converted amount does not fit in 64-bit minor units.
    Overflow,
}

impl fmt::Display for FxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FxError::MissingRate { currency, date } => write!(
                f,
                "no {currency} rate on {date} or the {MAX_LOOKBACK_DAYS} days before"
            ),
            FxError::Overflow => {
                f.write_str("the converted amount does not fit in 64-bit minor units")
            }
        }
    }
}

impl std::error::Error for FxError {}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "Date,USD,JPY,BHD,GBP,\n\
                        2026-03-02,1.0812,160.25,0.40765,0.8561,\n\
                        2026-02-27,1.0790,159.80,N/A,0.8549,\n";

    fn c(code: &str) -> Currency {
        Currency::from_code(code).unwrap()
    }

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn convert(minor: i64, from: &str, to: &str, date: &str) -> Result<Conversion, FxError> {
        Rates::parse_ecb_csv(FILE)
            .unwrap()
            .convert(minor, c(from), c(to), day(date))
    }

    /// Hand-computed: each line says the arithmetic.
    #[test]
    fn golden_conversions_in_eur_usd_jpy_and_bhd() {
        let at = |minor, from, to| convert(minor, from, to, "2026-03-02").unwrap().base_minor;
        // 100.00 EUR × 1.0812 = 108.12 USD.
        assert_eq!(at(10_000, "EUR", "USD"), 10_812);
        // 108.12 USD ÷ 1.0812 = 100.00 EUR exactly.
        assert_eq!(at(10_812, "USD", "EUR"), 10_000);
        // 1.00 USD ÷ 1.0812 = 0.924898… EUR → 0.92.
        assert_eq!(at(100, "USD", "EUR"), 92);
        // ¥1,000 × 1.0812 ÷ 160.25 = 6.746958… USD → 6.75.
        assert_eq!(at(1_000, "JPY", "USD"), 675);
        // $10.00 × 160.25 ÷ 1.0812 = ¥1,482.149… → ¥1,482 (JPY has no minor unit).
        assert_eq!(at(1_000, "USD", "JPY"), 1_482);
        // 1.000 BHD × 1.0812 ÷ 0.40765 = 2.652275… USD → 2.65.
        assert_eq!(at(1_000, "BHD", "USD"), 265);
        // $100.00 × 0.40765 ÷ 1.0812 = 37.703478… BHD → 37.703 (three places).
        assert_eq!(at(10_000, "USD", "BHD"), 37_703);
        // A refund converts to a refund.
        assert_eq!(at(-10_000, "EUR", "USD"), -10_812);
        // Same currency: unchanged, at rate 1.
        let same = convert(12_345, "USD", "USD", "2026-03-02").unwrap();
        assert_eq!((same.base_minor, same.rate.as_str()), (12_345, "1"));
        assert_eq!(
            convert(10_000, "EUR", "USD", "2026-03-02").unwrap().rate,
            "1.0812"
        );
        assert_eq!(
            convert(1_000, "JPY", "USD", "2026-03-02").unwrap().rate,
            "0.006746957878"
        );
    }

    #[test]
    fn ties_round_half_to_even() {
        let rates = Rates::parse_ecb_csv("Date,USD\n2026-03-02,1.5\n").unwrap();
        let at = |minor| {
            rates
                .convert(minor, c("EUR"), c("USD"), day("2026-03-02"))
                .unwrap()
                .base_minor
        };
        // 0.01 × 1.5 = 0.015 → 0.02; 0.03 × 1.5 = 0.045 → 0.04; signs alike.
        assert_eq!((at(1), at(3), at(5), at(-3)), (2, 4, 8, -4));
    }

    #[test]
    fn a_day_without_rates_takes_the_latest_earlier_business_day_and_no_older() {
        // Saturday 2026-02-28: Friday's rates.
        let sat = convert(10_000, "EUR", "USD", "2026-02-28").unwrap();
        assert_eq!((sat.base_minor, sat.rate_date), (10_790, day("2026-02-27")));
        // BHD has no rate on Friday: on Saturday it is missing, not guessed
        // from Monday (later) or from a week before.
        assert_eq!(
            convert(1_000, "BHD", "USD", "2026-02-28"),
            Err(FxError::MissingRate {
                currency: "BHD",
                date: day("2026-02-28")
            })
        );
        // Eight days after the last rates: too old.
        assert!(matches!(
            convert(100, "EUR", "USD", "2026-03-10"),
            Err(FxError::MissingRate { .. })
        ));
        // A currency the file has no column for.
        assert!(matches!(
            convert(100, "CHF", "USD", "2026-03-02"),
            Err(FxError::MissingRate {
                currency: "CHF",
                ..
            })
        ));
    }

    #[test]
    fn a_bad_rates_file_is_refused_with_its_line_number() {
        let cases = [
            ("", 1, "empty"),
            ("Day,USD\n", 1, "Date"),
            ("Date,USD,XXX\n", 1, "XXX"),
            (
                "Date,USD\n2026-03-02,1.0812\n2026-13-01,1.0\n",
                3,
                "not a date",
            ),
            (
                "Date,USD\n2026-03-02,1.0812\n\n2026-03-03,-1.0\n",
                4,
                "positive decimal",
            ),
            ("Date,USD\n2026-03-02,1e3\n", 2, "positive decimal"),
            ("Date,USD\n2026-03-02,0\n", 2, "positive decimal"),
            (
                "Date,USD\n2026-03-02,1.0812\n2026-03-02,1.0813\n",
                3,
                "twice",
            ),
            ("Date,USD\n2026-03-02,1.0,2.0\n", 2, "more cells"),
        ];
        for (text, line, words) in cases {
            let e = Rates::parse_ecb_csv(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.to_string().contains(words), "{text:?}: {e}");
        }
    }

    #[test]
    fn an_amount_too_large_for_the_base_currency_says_so() {
        let rates = Rates::parse_ecb_csv("Date,JPY\n2026-03-02,160.25\n").unwrap();
        assert_eq!(
            rates.convert(i64::MAX, c("EUR"), c("JPY"), day("2026-03-02")),
            Err(FxError::Overflow)
        );
    }

    /// The files as the ECB publishes them: the history's header lists
    /// currencies since replaced by the euro; the daily file writes its
    /// date in words and puts spaces after commas.
    #[test]
    fn the_ecb_files_read_as_published() {
        let history = "Date,USD,JPY,BGN,CYP,CZK,DKK,EEK,GBP,HUF,LTL,LVL,MTL,PLN,ROL,RON,SEK,SIT,SKK,CHF,ISK,NOK,HRK,RUB,TRL,TRY,AUD,BRL,CAD,CNY,HKD,IDR,ILS,INR,KRW,MXN,MYR,NZD,PHP,SGD,THB,ZAR,\n\
                       2026-03-02,1.0812,160.25,1.9558,N/A,25.102,7.4605,N/A,0.8561,390.15,N/A,N/A,N/A,4.2718,N/A,4.9762,11.2345,N/A,N/A,0.9401,150.1,11.6,N/A,N/A,N/A,35.1,1.65,5.9,1.47,7.81,8.45,17012.5,3.95,90.1,1450.2,18.9,4.88,1.79,60.1,1.45,37.9,19.8,\n";
        let rates = Rates::parse_ecb_csv(history).unwrap();
        for gone in ["CYP", "EEK", "LTL", "LVL", "MTL", "SIT", "SKK"] {
            assert!(rates.ignored().iter().any(|c| c == gone), "{gone}");
        }
        assert!(
            rates
                .ignored()
                .iter()
                .all(|c| Currency::from_code(c).is_none())
        );
        assert_eq!(
            rates
                .convert(10_000, c("EUR"), c("CHF"), day("2026-03-02"))
                .unwrap()
                .base_minor,
            9_401
        );
        let daily = "Date, USD, JPY, BGN, CZK, DKK, GBP, \n27 February 2026, 1.0790, 159.80, 1.9558, 25.1, 7.46, 0.8549, \n";
        let rates = Rates::parse_ecb_csv(daily).unwrap();
        assert_eq!(rates.span(), Some((day("2026-02-27"), day("2026-02-27"))));
        assert!(rates.ignored().is_empty());
        // A header cell that is no code at all is still refused.
        let e = Rates::parse_ecb_csv("Date,USD,Yen\n").unwrap_err();
        assert_eq!(e.line, 1, "{e}");
    }

    #[test]
    fn rates_written_out_read_back_the_same() {
        let rates = Rates::parse_ecb_csv(FILE).unwrap();
        let text = rates.to_ecb_csv();
        assert!(
            text.starts_with("Date,BHD,GBP,JPY,USD\n2026-03-02,"),
            "{text}"
        );
        assert!(
            text.contains("2026-02-27,N/A,0.8549,159.80,1.0790\n"),
            "{text}"
        );
        assert_eq!(Rates::parse_ecb_csv(&text).unwrap(), rates);
        assert_eq!(rates.span(), Some((day("2026-02-27"), day("2026-03-02"))));
        let mut later = Rates::parse_ecb_csv("Date,USD\n2026-03-02,1.09\n").unwrap();
        later.merge(rates.clone());
        assert_eq!(later, rates, "a rate loaded again is replaced");
        let mut more = rates.clone();
        more.merge(Rates::parse_ecb_csv("Date,CHF\n2026-03-02,0.94\n").unwrap());
        let chf = Currency::from_code("CHF").unwrap();
        let usd = Currency::from_code("USD").unwrap();
        assert_eq!(
            more.convert(1_000, chf, usd, day("2026-03-02"))
                .unwrap()
                .base_minor,
            1_150,
            "a currency added to a day keeps the day's others"
        );
    }

    #[test]
    fn rates_print_as_parsed() {
        for text in ["1.0812", "160.25", "0.40765", "7", "0.000001"] {
            assert_eq!(Rate::parse(text).unwrap().to_string(), text);
        }
        for bad in [
            "",
            ".5",
            "1.",
            "+1",
            "1,5",
            "1.0000000000001",
            "abc",
            "0.000",
        ] {
            assert!(Rate::parse(bad).is_none(), "{bad}");
        }
    }
}
