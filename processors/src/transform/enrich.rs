//! Enrichment: identity, version, category and a normalised merchant name.

use super::validate::Valid;
use crate::sink::Row;
use chrono::{DateTime, Utc};
use spendstream_log::Consumed;
use spendstream_schemas::{Category, EnrichedRecordOf, expense_id, record_version};
use std::collections::HashMap;

/// Turns a validated entry into a lake row. The version is the log offset
/// (every version of one expense is in one partition, so offsets order
/// them) above the log's `generation`, so a log that replaced another one
/// writes newer versions than it, though its offsets start again at 0.
pub fn enrich<'a>(
    entry: &Consumed,
    valid: Valid<'a>,
    generation: u32,
    processed_at: DateTime<Utc>,
    merchants: &mut Merchants,
) -> Row<'a> {
    let Valid {
        tenant_id,
        batch_id,
        ingested_at,
        record,
    } = valid;
    let category = record
        .category_hint
        .or(record.merchant_mcc.map(Category::from_mcc))
        .unwrap_or(Category::Other);
    let merchant_normalized = record
        .merchant_name
        .as_deref()
        .and_then(|raw| merchants.normalize(raw));
    EnrichedRecordOf {
        expense_id: expense_id(&tenant_id, &record.source, &record.external_id),
        tenant_id,
        version: record_version(generation, entry.offset),
        record,
        category,
        merchant_normalized,
        batch_id,
        ingested_at,
        processed_at,
        log_partition: entry.partition as i32,
        log_offset: entry.offset,
        base: None,
    }
}

/// The normalised merchant names one thread has made in a batch, by the
/// name as sent: card feeds repeat their merchants, and a lookup costs
/// a fraction of normalising (which was 9% of a processor's CPU,
/// profiled). Bounded: past [`Merchants::MAX`] names, new ones are
/// normalised without being kept.
#[derive(Debug, Default)]
pub struct Merchants {
    /// Hashed with foldhash, several times faster than SipHash on short
    /// keys; its seed is random per memo, and a flood of distinct names
    /// only fills the bound.
    names: HashMap<String, Option<String>, foldhash::fast::RandomState>,
}

impl Merchants {
    /// Most names kept.
    pub const MAX: usize = 4_096;

    /// [`normalize_merchant`] of `raw`, `None` when nothing is left of it.
    pub fn normalize(&mut self, raw: &str) -> Option<String> {
        if let Some(known) = self.names.get(raw) {
            return known.clone();
        }
        let normalized = Some(normalize_merchant(raw)).filter(|m| !m.is_empty());
        if self.names.len() < Self::MAX {
            self.names.insert(raw.to_string(), normalized.clone());
        }
        normalized
    }
}

/// Payment-facilitator prefixes that precede the real merchant on
/// statements (`SQ *BLUE BOTTLE`, `TST* JOE'S`, `PAYPAL *ACME`).
const PROCESSOR_PREFIXES: &[&str] = &[
    "SQ",
    "TST",
    "PAYPAL",
    "PP",
    "SP",
    "IN",
    "WPY",
    "GOOGLE",
    "APPLE.COM/BILL",
    "FS",
    "CKO",
];

/// `SQ *BLUE BOTTLE COFFEE #0042  OAKLAND` → `Blue Bottle Coffee Oakland`:
/// strips processor prefixes, reference suffixes after `*`, store numbers and
/// extra whitespace, and title-cases the rest. Runs once per record, so it
/// writes straight into the one string it returns.
pub fn normalize_merchant(raw: &str) -> String {
    let mut s = raw.trim();
    while let Some(cut) = PROCESSOR_PREFIXES.iter().find_map(|p| {
        // ASCII prefixes match only ASCII bytes, so `p.len()` is a char
        // boundary of `s` when they do.
        let head = s.as_bytes().get(..p.len())?;
        if !head.eq_ignore_ascii_case(p.as_bytes()) {
            return None;
        }
        let rest = s[p.len()..].trim_start();
        rest.starts_with('*').then(|| s.len() - rest.len() + 1)
    }) {
        s = s[cut..].trim_start();
    }
    // `AMAZON.COM*2K3L4` → `AMAZON.COM`: the part after `*` is a reference.
    if let Some((head, _)) = s.split_once('*')
        && !head.trim().is_empty()
    {
        s = head;
    }
    let words = || s.split_whitespace().filter(|w| !is_store_number(w));
    // Trailing all-digit tokens are store or terminal numbers too.
    let kept = words()
        .enumerate()
        .filter(|(_, w)| !w.bytes().all(|b| b.is_ascii_digit()))
        .last()
        .map_or(0, |(i, _)| i + 1);
    let mut out = String::with_capacity(s.len());
    for (i, word) in words().take(kept).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        title_case_into(&mut out, word);
    }
    out
}

fn is_store_number(word: &str) -> bool {
    let digits = word.strip_prefix('#').or_else(|| word.strip_prefix("NO."));
    digits.is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit() || b == b'-'))
}

fn title_case_into(out: &mut String, word: &str) {
    let mut start = true;
    for c in word.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.extend(c.to_lowercase());
        }
        start = matches!(c, '-' | '/' | '&' | '(');
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_merchant as n;
    use proptest::prelude::Strategy;

    #[test]
    fn normalises_descriptors() {
        assert_eq!(n("SQ *BLUE BOTTLE COFFEE #0042"), "Blue Bottle Coffee");
        assert_eq!(n("TST* JOE'S DINER   OAKLAND"), "Joe's Diner Oakland");
        assert_eq!(n("PAYPAL *ACMESOFT"), "Acmesoft");
        assert_eq!(n("  Delta   Air Lines  "), "Delta Air Lines");
        assert_eq!(n("SHELL OIL 57442191"), "Shell Oil");
        assert_eq!(n("AMAZON.COM*2K3L45"), "Amazon.com");
        assert_eq!(n("7-ELEVEN 12345"), "7-Eleven");
        assert_eq!(n("SQ *TST* NESTED"), "Nested");
        assert_eq!(n("UBER   *TRIP"), "Uber");
        assert_eq!(n("12345"), "");
        assert_eq!(n("paypal *  café #12 NO.3-4 ÉTÉ 99"), "Café Été");
    }

    /// The first, plainer form (a string per step), kept as the reference
    /// for the one that writes into a single string.
    fn reference(raw: &str) -> String {
        let mut s = raw.trim();
        loop {
            let upper = s.to_ascii_uppercase();
            let stripped = super::PROCESSOR_PREFIXES.iter().find_map(|p| {
                let rest = upper.strip_prefix(p)?;
                let rest_trim = rest.trim_start();
                rest_trim
                    .starts_with('*')
                    .then(|| s.len() - rest_trim.len() + 1)
            });
            match stripped {
                Some(cut) => s = s[cut..].trim_start(),
                None => break,
            }
        }
        if let Some((head, _)) = s.split_once('*')
            && !head.trim().is_empty()
        {
            s = head;
        }
        let words: Vec<&str> = s
            .split_whitespace()
            .filter(|w| !super::is_store_number(w))
            .collect();
        let end = words
            .iter()
            .rposition(|w| !w.bytes().all(|b| b.is_ascii_digit()))
            .map_or(0, |i| i + 1);
        words[..end]
            .iter()
            .map(|w| {
                let mut out = String::with_capacity(w.len());
                let mut start = true;
                for c in w.chars() {
                    if start {
                        out.extend(c.to_uppercase());
                    } else {
                        out.extend(c.to_lowercase());
                    }
                    start = matches!(c, '-' | '/' | '&' | '(');
                }
                out
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Descriptors shaped like statements: often a processor prefix (in
    /// any case, with or without spaces before its `*`, sometimes nested),
    /// then words, store numbers, digits and non-ASCII text.
    fn descriptor() -> impl Strategy<Value = String> {
        let prefix = (
            proptest::sample::select(super::PROCESSOR_PREFIXES.to_vec()),
            proptest::bool::ANY,
            proptest::sample::select(vec!["*", " *", "  * ", "\u{a0}*", "", " "]),
        )
            .prop_map(|(p, lower, star)| {
                let p = if lower {
                    p.to_ascii_lowercase()
                } else {
                    p.to_string()
                };
                format!("{p}{star}")
            });
        let token = proptest::sample::select(vec![
            "BLUE",
            "café",
            "ÉTÉ",
            "o'neil",
            "7-ELEVEN",
            "#0042",
            "NO.12-3",
            "no.12",
            "#",
            "12345",
            "AMAZON.COM*2K",
            "*",
            "€",
            "𝄞",
            "ß",
            "(x",
            "a&b",
            "ǅ",
            "in",
            "INN",
            "SQUARE",
            " ",
            "  ",
            "\t",
            "\u{a0}",
        ]);
        (
            proptest::collection::vec(prefix, 0..3),
            proptest::collection::vec(token, 0..8),
        )
            .prop_map(|(prefixes, tokens)| prefixes.concat() + &tokens.join(" "))
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_the_reference(raw in descriptor()) {
            proptest::prop_assert_eq!(n(&raw), reference(&raw));
        }

        /// The memo answers as normalising does, for names it has not
        /// seen and names it has (past its bound: the test below).
        #[test]
        fn the_memo_answers_as_normalising_does(
            names in proptest::collection::vec(descriptor(), 1..40),
            repeats in 1..4usize,
        ) {
            let mut memo = super::Merchants::default();
            for _ in 0..repeats {
                for raw in &names {
                    let expected = Some(n(raw)).filter(|m| !m.is_empty());
                    proptest::prop_assert_eq!(memo.normalize(raw), expected);
                }
            }
        }
    }

    #[test]
    fn the_memo_keeps_at_most_its_bound_and_still_answers() {
        let mut memo = super::Merchants::default();
        for i in 0..super::Merchants::MAX + 10 {
            memo.normalize(&format!("SQ *SHOP {i:05}X"));
        }
        assert_eq!(memo.names.len(), super::Merchants::MAX);
        let past = format!("SQ *SHOP {:05}X", super::Merchants::MAX + 3);
        assert_eq!(memo.normalize(&past).as_deref(), Some(&n(&past)[..]));
        assert_eq!(memo.normalize("#12 99"), None);
    }
}
