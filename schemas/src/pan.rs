//! Card-number (PAN) detection. A PAN must never be stored, so every
//! free-text field is scanned before a record is accepted.

use std::borrow::Cow;

/// True if `text` contains a run of 13–19 digits (single spaces or dashes
/// between digits allowed) that starts like a payment card (2–6) and passes
/// the Luhn check. Masked values such as `**** 1234` contain no such run.
pub fn contains_pan(text: &str) -> bool {
    card_runs(text).next().is_some()
}

/// `text` with the digits of every card-number-like run replaced by `*`,
/// all but the last four: what may be echoed back or logged.
pub fn mask_pans(text: &str) -> Cow<'_, str> {
    let mut runs = card_runs(text).peekable();
    if runs.peek().is_none() {
        return Cow::Borrowed(text);
    }
    let mut out = text.as_bytes().to_vec();
    for (start, end) in runs {
        let digits = out[start..end]
            .iter()
            .filter(|b| b.is_ascii_digit())
            .count();
        let mut to_mask = digits.saturating_sub(4);
        for b in &mut out[start..end] {
            if to_mask == 0 {
                break;
            }
            if b.is_ascii_digit() {
                *b = b'*';
                to_mask -= 1;
            }
        }
    }
    // Only ASCII digits were replaced by an ASCII byte: still UTF-8.
    Cow::Owned(String::from_utf8(out).unwrap_or_default())
}

/// Byte ranges of the digit runs (single separators allowed) that hold a
/// card number.
fn card_runs(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut digits: Vec<u8> = Vec::with_capacity(19);
    std::iter::from_fn(move || {
        while i < bytes.len() {
            if !bytes[i].is_ascii_digit() || (i > 0 && bytes[i - 1].is_ascii_digit()) {
                i += 1;
                continue;
            }
            // Collect one digit run, allowing one separator between digits.
            digits.clear();
            let start = i;
            let mut j = i;
            while j < bytes.len() {
                let b = bytes[j];
                if b.is_ascii_digit() {
                    digits.push(b - b'0');
                    j += 1;
                } else if (b == b' ' || b == b'-')
                    && j + 1 < bytes.len()
                    && bytes[j + 1].is_ascii_digit()
                    && j > i
                {
                    j += 1;
                } else {
                    break;
                }
            }
            i = j.max(i + 1);
            if any_card_window(&digits) {
                return Some((start, j));
            }
        }
        None
    })
}

/// A run longer than 19 digits is not itself a card number, but a card number
/// could be glued to other digits by a separator ("ref 12 4111 1111 1111
/// 1111"): test every 13–19 digit window that starts like a card.
fn any_card_window(digits: &[u8]) -> bool {
    if digits.len() < 13 {
        return false;
    }
    (0..=digits.len() - 13).any(|start| {
        (13..=19)
            .filter(|len| start + len <= digits.len())
            .any(|len| looks_like_card(&digits[start..start + len]))
    })
}

fn looks_like_card(digits: &[u8]) -> bool {
    (2..=6).contains(&digits[0]) && luhn_valid(digits)
}

/// The Luhn (mod 10) check over digit values 0–9.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let dd = d * 2;
                if dd > 9 { dd - 9 } else { dd }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_common_test_cards_in_any_spacing() {
        for pan in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "5500 0000 0000 0004",
            "378282246310005",
            "6011111111111117",
            "card 4242424242424242 used",
            "2223003122003222",
        ] {
            assert!(contains_pan(pan), "{pan}");
        }
    }

    #[test]
    fn masking_keeps_the_last_four_and_the_rest_of_the_text() {
        assert_eq!(
            mask_pans("paid 4111 1111 1111 1111 on 2026-11-02"),
            "paid **** **** **** 1111 on 2026-11-02"
        );
        assert_eq!(mask_pans("x4242424242424242"), "x************4242");
        assert!(matches!(mask_pans("acct-001 **** 1234"), Cow::Borrowed(_)));
        assert!(!contains_pan(&mask_pans(
            "a 5500-0000-0000-0004 b 378282246310005"
        )));
    }

    #[test]
    fn ignores_masked_short_and_non_luhn() {
        for ok in [
            "**** 1234",
            "411111******1111",
            "4111111111111112",
            "12345",
            "acct-001",
            "1111111111111117", // passes Luhn but no card starts with 1
            "2026-11-25",
            "",
        ] {
            assert!(!contains_pan(ok), "{ok}");
        }
    }
}
