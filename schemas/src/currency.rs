//! ISO 4217 currencies and their minor-unit exponents: the one table every
//! amount is scaled by.

use std::fmt;

/// One ISO 4217 currency: its alphabetic code and how many decimal places its
/// minor unit has (JPY 0, USD 2, BHD 3, CLF 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    code: &'static str,
    exponent: u8,
}

impl Currency {
    /// Looks up an alphabetic code. Lower case is accepted because feeds send
    /// it; anything that is not a listed code is `None`.
    pub fn from_code(code: &str) -> Option<Currency> {
        let Ok(mut upper) = <[u8; 3]>::try_from(code.as_bytes()) else {
            return None;
        };
        upper.make_ascii_uppercase();
        if !upper.iter().all(u8::is_ascii_uppercase) {
            return None;
        }
        let (code, exponent) = ISO_4217.get(usize::from(BY_LETTERS[letters(upper)]))?;
        Some(Currency {
            code,
            exponent: *exponent,
        })
    }

    /// The three-letter upper-case code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Decimal places of the minor unit.
    pub fn exponent(&self) -> u8 {
        self.exponent
    }

    /// Every listed currency, sorted by code.
    pub fn all() -> impl Iterator<Item = Currency> {
        ISO_4217.iter().map(|(code, exponent)| Currency {
            code,
            exponent: *exponent,
        })
    }
}

impl serde::Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code)
    }
}

impl<'de> serde::Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Currency::from_code(&code).ok_or_else(|| {
            serde::de::Error::custom(format!("`{code}` is not an ISO 4217 currency"))
        })
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

/// Where three upper-case letters are in [`BY_LETTERS`].
const fn letters([a, b, c]: [u8; 3]) -> usize {
    ((a - b'A') as usize * 26 + (b - b'A') as usize) * 26 + (c - b'A') as usize
}

/// Each listed code's place in [`ISO_4217`] by its letters (`u8::MAX`:
/// not listed), built at compile time: a lookup is one load (a binary
/// search of the codes was 2% of a processor's CPU, profiled).
static BY_LETTERS: [u8; 26 * 26 * 26] = {
    assert!(ISO_4217.len() < u8::MAX as usize);
    let mut table = [u8::MAX; 26 * 26 * 26];
    let mut i = 0;
    while i < ISO_4217.len() {
        let code = ISO_4217[i].0.as_bytes();
        assert!(code.len() == 3);
        table[letters([code[0], code[1], code[2]])] = i as u8;
        i += 1;
    }
    table
};

/// ISO 4217 (list one, 2025 amendments), sorted by code. Codes without minor
/// units ("N.A.": precious metals, SDR, test and "no currency" codes) are left
/// out: nobody expenses an ounce of gold. Currencies in their withdrawal
/// period (ANG, BGN, SLL, ZWL) stay so that late-arriving records still parse.
const ISO_4217: &[(&str, u8)] = &[
    ("AED", 2),
    ("AFN", 2),
    ("ALL", 2),
    ("AMD", 2),
    ("ANG", 2),
    ("AOA", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("AWG", 2),
    ("AZN", 2),
    ("BAM", 2),
    ("BBD", 2),
    ("BDT", 2),
    ("BGN", 2),
    ("BHD", 3),
    ("BIF", 0),
    ("BMD", 2),
    ("BND", 2),
    ("BOB", 2),
    ("BOV", 2),
    ("BRL", 2),
    ("BSD", 2),
    ("BTN", 2),
    ("BWP", 2),
    ("BYN", 2),
    ("BZD", 2),
    ("CAD", 2),
    ("CDF", 2),
    ("CHE", 2),
    ("CHF", 2),
    ("CHW", 2),
    ("CLF", 4),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("COU", 2),
    ("CRC", 2),
    ("CUP", 2),
    ("CVE", 2),
    ("CZK", 2),
    ("DJF", 0),
    ("DKK", 2),
    ("DOP", 2),
    ("DZD", 2),
    ("EGP", 2),
    ("ERN", 2),
    ("ETB", 2),
    ("EUR", 2),
    ("FJD", 2),
    ("FKP", 2),
    ("GBP", 2),
    ("GEL", 2),
    ("GHS", 2),
    ("GIP", 2),
    ("GMD", 2),
    ("GNF", 0),
    ("GTQ", 2),
    ("GYD", 2),
    ("HKD", 2),
    ("HNL", 2),
    ("HTG", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("IRR", 2),
    ("ISK", 0),
    ("JMD", 2),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KGS", 2),
    ("KHR", 2),
    ("KMF", 0),
    ("KPW", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("KYD", 2),
    ("KZT", 2),
    ("LAK", 2),
    ("LBP", 2),
    ("LKR", 2),
    ("LRD", 2),
    ("LSL", 2),
    ("LYD", 3),
    ("MAD", 2),
    ("MDL", 2),
    ("MGA", 2),
    ("MKD", 2),
    ("MMK", 2),
    ("MNT", 2),
    ("MOP", 2),
    ("MRU", 2),
    ("MUR", 2),
    ("MVR", 2),
    ("MWK", 2),
    ("MXN", 2),
    ("MXV", 2),
    ("MYR", 2),
    ("MZN", 2),
    ("NAD", 2),
    ("NGN", 2),
    ("NIO", 2),
    ("NOK", 2),
    ("NPR", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PAB", 2),
    ("PEN", 2),
    ("PGK", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("PYG", 0),
    ("QAR", 2),
    ("RON", 2),
    ("RSD", 2),
    ("RUB", 2),
    ("RWF", 0),
    ("SAR", 2),
    ("SBD", 2),
    ("SCR", 2),
    ("SDG", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("SHP", 2),
    ("SLE", 2),
    ("SLL", 2),
    ("SOS", 2),
    ("SRD", 2),
    ("SSP", 2),
    ("STN", 2),
    ("SVC", 2),
    ("SYP", 2),
    ("SZL", 2),
    ("THB", 2),
    ("TJS", 2),
    ("TMT", 2),
    ("TND", 3),
    ("TOP", 2),
    ("TRY", 2),
    ("TTD", 2),
    ("TWD", 2),
    ("TZS", 2),
    ("UAH", 2),
    ("UGX", 0),
    ("USD", 2),
    ("USN", 2),
    ("UYI", 0),
    ("UYU", 2),
    ("UYW", 4),
    ("UZS", 2),
    ("VED", 2),
    ("VES", 2),
    ("VND", 0),
    ("VUV", 0),
    ("WST", 2),
    ("XAF", 0),
    ("XCD", 2),
    ("XCG", 2),
    ("XOF", 0),
    ("XPF", 0),
    ("YER", 2),
    ("ZAR", 2),
    ("ZMW", 2),
    ("ZWG", 2),
    ("ZWL", 2),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique() {
        assert!(ISO_4217.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(ISO_4217.len() > 150);
    }

    /// Every code is three upper-case letters (the lookup table relies on
    /// it) and is found, in either case; nothing else is.
    #[test]
    fn every_listed_code_is_found() {
        for (code, exponent) in ISO_4217 {
            assert!(code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()));
            for asked in [code.to_string(), code.to_ascii_lowercase()] {
                let found = Currency::from_code(&asked).unwrap();
                assert_eq!((found.code(), found.exponent()), (*code, *exponent));
            }
        }
        let listed = ISO_4217.iter().map(|(code, _)| *code).collect::<Vec<_>>();
        for a in b'A'..=b'Z' {
            for b in b'A'..=b'Z' {
                for c in b'A'..=b'Z' {
                    let text = String::from_utf8(vec![a, b, c]).unwrap();
                    let found = Currency::from_code(&text).map(|c| c.code());
                    assert_eq!(found, listed.contains(&&text[..]).then_some(&text[..]));
                }
            }
        }
        for odd in ["", "US", "USDX", "U$D", "@SD", "[SD", "U\u{e9}", "€", "ÜSD"] {
            assert!(Currency::from_code(odd).is_none(), "{odd}");
        }
    }

    #[test]
    fn exponents_of_the_unusual_ones() {
        for (code, exp) in [
            ("JPY", 0),
            ("KRW", 0),
            ("BHD", 3),
            ("KWD", 3),
            ("OMR", 3),
            ("TND", 3),
            ("JOD", 3),
            ("IQD", 3),
            ("LYD", 3),
            ("CLF", 4),
            ("USD", 2),
            ("EUR", 2),
        ] {
            assert_eq!(Currency::from_code(code).unwrap().exponent(), exp, "{code}");
        }
    }

    #[test]
    fn serde_as_code() {
        let usd = Currency::from_code("USD").unwrap();
        assert_eq!(serde_json::to_string(&usd).unwrap(), "\"USD\"");
        assert_eq!(
            serde_json::from_str::<Currency>("\"bhd\"")
                .unwrap()
                .exponent(),
            3
        );
        assert!(serde_json::from_str::<Currency>("\"ABC\"").is_err());
    }

    #[test]
    fn lookup_normalises_case_and_rejects_unknown() {
        assert_eq!(Currency::from_code("usd").unwrap().code(), "USD");
        assert!(Currency::from_code("XXX").is_none());
        assert!(Currency::from_code("US").is_none());
        assert!(Currency::from_code("ÜSD").is_none());
        // Three bytes, not three letters.
        assert!(Currency::from_code("€").is_none());
    }
}
