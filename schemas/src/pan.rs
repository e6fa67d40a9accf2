//! Card-number (PAN) detection. A PAN must never be stored, so every
//! string a record carries is scanned before it is accepted.
//!
//! A card number is 13–19 digits, written without separators or in the
//! groups cards print (4-4-4-4, 4-4-4-4-3, Amex 4-6-5, Diners 4-6-4, with
//! single spaces or dashes), starting 2–6 and passing the Luhn check. Other
//! shapes of digits are left alone, so that ids made of digit groups (a
//! UUID such as `12345678-1234-1234-…`, a long reference number) are not
//! taken for one.

use std::borrow::Cow;

/// True if `text` contains something shaped like a card number (see the
/// module documentation). Masked values such as `**** 1234` contain none.
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

/// Whether digit groups of these lengths are written the way cards are.
fn card_shaped(lens: &[usize]) -> bool {
    match lens {
        [one] => (13..=19).contains(one),
        [.., last] if lens[..lens.len() - 1].iter().all(|l| *l == 4) => (1..=4).contains(last),
        _ => matches!(lens, [4, 6, 5] | [4, 6, 4]),
    }
}

/// Byte ranges of the card-shaped digit groups in `text`.
fn card_runs(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let bytes = text.as_bytes();
    // A card holds 13 digits at least: most strings hold fewer, and are
    // passed over without looking for groups (this runs on every string
    // of every record).
    let mut i = if bytes
        .iter()
        .filter(|b| b.is_ascii_digit())
        .nth(12)
        .is_none()
    {
        bytes.len()
    } else {
        0
    };
    let mut found: Vec<(usize, usize)> = Vec::new();
    std::iter::from_fn(move || {
        loop {
            if let Some(next) = found.pop() {
                return Some(next);
            }
            if i >= bytes.len() {
                return None;
            }
            if !bytes[i].is_ascii_digit() || (i > 0 && bytes[i - 1].is_ascii_digit()) {
                i += 1;
                continue;
            }
            // One run of digit groups, joined by single spaces or dashes.
            let mut groups: Vec<(usize, usize)> = Vec::new();
            let mut j = i;
            loop {
                let start = j;
                while j < bytes.len() && bytes[j].is_ascii_digit() {
                    j += 1;
                }
                groups.push((start, j));
                if j + 1 < bytes.len()
                    && (bytes[j] == b' ' || bytes[j] == b'-')
                    && bytes[j + 1].is_ascii_digit()
                {
                    j += 1;
                } else {
                    break;
                }
            }
            i = j.max(i + 1);
            // Consecutive groups that are card-shaped and hold a card
            // number (a card may follow other digits: "ref 12 4111 1111 …").
            let mut first = 0;
            while first < groups.len() {
                let mut hit = None;
                let mut total = 0;
                for last in first..groups.len() {
                    total += groups[last].1 - groups[last].0;
                    if total > 19 {
                        break;
                    }
                    let lens: Vec<usize> =
                        groups[first..=last].iter().map(|(a, b)| b - a).collect();
                    if total >= 13 && card_shaped(&lens) {
                        let digits: Vec<u8> = groups[first..=last]
                            .iter()
                            .flat_map(|(a, b)| bytes[*a..*b].iter().map(|d| d - b'0'))
                            .collect();
                        if looks_like_card(&digits) {
                            hit = Some(last);
                        }
                    }
                }
                match hit {
                    Some(last) => {
                        found.insert(0, (groups[first].0, groups[last].1));
                        first = last + 1;
                    }
                    None => first += 1,
                }
            }
        }
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
            // 13 digits, the fewest a card has, and no other digit.
            "4222222222222",
            "visa 4222222222222.",
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
    fn digit_groups_that_are_not_card_shaped_are_left_alone() {
        for id in [
            // UUIDs whose digit groups, joined by dashes, pass Luhn.
            "a4448023-5727-445f-a5c3-32b8d618a3ca",
            "12345678-1234-1234-1234-123456789012",
            // A long reference number and a phone number.
            "40004111111111111111",
            "+49 30 1234 5678 9012",
        ] {
            assert!(!contains_pan(id), "{id}");
        }
        for pan in [
            "4111 1111 1111 1111 123",
            "3782 822463 10005",
            "ref 12 4111 1111 1111 1111",
            "x4242424242424242y",
        ] {
            assert!(contains_pan(pan), "{pan}");
        }
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
