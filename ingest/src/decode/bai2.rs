//! BAI2 (the Bank Administration Institute's cash-management balance
//! reporting format, version 2): one record per transaction detail (`16`)
//! with its continuations (`88`), under the group (`02`, its as-of date and
//! currency) and account (`03`, its number and currency) that precede it.
//! Details of type 890 (non-monetary information) are skipped without an
//! index. Control totals in the trailers are not checked: entries are handed
//! out as they are read. The mapping is in `docs/formats.md`.

use super::bank::{self, BankEntry};
use super::ndjson::read_line_capped;
use super::{End, Item, too_large};
use spendstream_schemas::ErrorCode;
use std::io::BufRead;

pub fn decode(
    mut reader: impl BufRead,
    max_record: usize,
    emit: &mut dyn FnMut(Item) -> bool,
) -> End {
    let mut lines = Lines {
        reader: &mut reader,
        max: max_record,
        held: None,
        number: 0,
    };
    let mut group = Group::default();
    let mut account: Option<Account> = None;
    let mut index = 0;
    let mut header_seen = false;
    loop {
        let line = match lines.next() {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(message) => return End::Malformed { index, message },
        };
        let text = match line {
            Line::Text(text) => text,
            Line::TooLarge(_) if !header_seen => {
                return not_bai2("the first record is too long to be a BAI2 file header");
            }
            // A detail that long is rejected (its continuations with it); a
            // record of another kind that long would leave what follows
            // under the wrong account.
            Line::TooLarge(code) if code == "16" => {
                loop {
                    match lines.next() {
                        Ok(Some(Line::Text(next))) if next.starts_with("88,") => {}
                        Ok(Some(Line::TooLarge(code))) if code == "88" => {}
                        Ok(Some(other)) => {
                            lines.held = Some(other);
                            break;
                        }
                        Ok(None) => break,
                        Err(message) => return End::Malformed { index, message },
                    }
                }
                let item = too_large(index, max_record);
                index += 1;
                if !emit(item) {
                    return End::Cancelled;
                }
                continue;
            }
            Line::TooLarge(code) => {
                return End::Malformed {
                    index,
                    message: format!(
                        "line {}: a `{code}` record longer than {max_record} bytes",
                        lines.number
                    ),
                };
            }
        };
        let split = text.find([',', '/']).unwrap_or(text.len());
        let code = &text[..split];
        let rest = match text.as_bytes().get(split) {
            Some(b',') => &text[split + 1..],
            _ => "",
        };
        if !header_seen {
            if code != "01" {
                return not_bai2("the first record is not a file header (`01`)");
            }
            header_seen = true;
            continue;
        }
        match code {
            "02" => {
                let f = fields(rest);
                group = Group {
                    as_of: f.get(3).cloned().unwrap_or_default(),
                    currency: f.get(5).cloned().unwrap_or_default(),
                };
                account = None;
            }
            "03" => {
                let f = fields(rest);
                account = Some(Account {
                    number: bank::account(f.first().map(String::as_str).unwrap_or("")),
                    currency: f.get(1).cloned().unwrap_or_default(),
                });
            }
            "16" => {
                // The continuations belong to this detail.
                let mut parts = vec![rest.to_string()];
                let mut size = rest.len();
                loop {
                    match lines.next() {
                        Ok(Some(Line::Text(next))) if next.starts_with("88,") => {
                            // Past the limit the detail is rejected; its
                            // continuations are read through, not held.
                            size = size.saturating_add(next.len());
                            if size <= max_record {
                                parts.push(next[3..].to_string());
                            }
                        }
                        Ok(Some(Line::TooLarge(code))) if code == "88" => size = usize::MAX,
                        Ok(Some(other)) => {
                            lines.held = Some(other);
                            break;
                        }
                        Ok(None) => break,
                        Err(message) => return End::Malformed { index, message },
                    }
                }
                let item = if size > max_record {
                    Some(too_large(index, max_record))
                } else {
                    detail(index, &parts, &group, account.as_ref())
                };
                if let Some(item) = item {
                    index += 1;
                    if !emit(item) {
                        return End::Cancelled;
                    }
                }
            }
            // Trailers, and continuations of headers and summaries.
            "49" | "98" | "88" => {}
            "99" => return End::Complete,
            other => {
                return End::Malformed {
                    index,
                    message: format!(
                        "line {}: `{}` is not a BAI2 record code",
                        lines.number,
                        other.chars().take(8).collect::<String>()
                    ),
                };
            }
        }
    }
    if !header_seen {
        return not_bai2("the body is empty");
    }
    End::Complete
}

fn not_bai2(why: &str) -> End {
    End::Unframable {
        code: "invalid_bai2",
        message: format!("not a BAI2 file: {why}"),
    }
}

#[derive(Default)]
struct Group {
    /// YYMMDD.
    as_of: String,
    currency: String,
}

struct Account {
    number: String,
    currency: String,
}

enum Line {
    Text(String),
    /// A line over the limit, with its record code when its start was
    /// kept.
    TooLarge(String),
}

/// The body's physical records, one held back when a detail's
/// continuations end.
struct Lines<'a, R> {
    reader: &'a mut R,
    max: usize,
    held: Option<Line>,
    number: usize,
}

impl<R: BufRead> Lines<'_, R> {
    fn next(&mut self) -> Result<Option<Line>, String> {
        if let Some(line) = self.held.take() {
            return Ok(Some(line));
        }
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let (n, too_long) = read_line_capped(self.reader, &mut buf, self.max)
                .map_err(|e| format!("reading the body failed: {e}"))?;
            if n == 0 {
                return Ok(None);
            }
            self.number += 1;
            if too_long {
                let code = buf
                    .iter()
                    .skip_while(|b| b.is_ascii_whitespace())
                    .take_while(|b| b.is_ascii_digit())
                    .map(|b| char::from(*b))
                    .collect();
                return Ok(Some(Line::TooLarge(code)));
            }
            // BAI2 is ASCII; Latin-1 bytes in text are read as such rather
            // than failing the file.
            let text: String = match String::from_utf8(std::mem::take(&mut buf)) {
                Ok(text) => text,
                Err(e) => e.into_bytes().iter().map(|b| char::from(*b)).collect(),
            };
            let text = text.trim();
            if !text.is_empty() {
                return Ok(Some(Line::Text(text.to_string())));
            }
        }
    }
}

/// The comma-separated fields of a record up to its `/` terminator.
fn fields(rest: &str) -> Vec<String> {
    let mut cursor = Cursor::new(rest);
    let mut out = Vec::new();
    while !cursor.ended {
        out.push(cursor.field().to_string());
    }
    out
}

/// Reads a record's fields in order: a `/` ends the record (every field
/// after it is empty), and the text field, last, takes the rest.
struct Cursor<'a> {
    rest: &'a str,
    ended: bool,
}

impl<'a> Cursor<'a> {
    fn new(rest: &'a str) -> Self {
        Self {
            rest,
            ended: rest.is_empty(),
        }
    }

    fn field(&mut self) -> &'a str {
        if self.ended {
            return "";
        }
        let end = self.rest.find([',', '/']).unwrap_or(self.rest.len());
        let field = &self.rest[..end];
        match self.rest.as_bytes().get(end) {
            Some(b',') => self.rest = &self.rest[end + 1..],
            _ => {
                self.rest = "";
                self.ended = true;
            }
        }
        field.trim()
    }

    /// The text field: the rest of the record, less a closing `/`.
    fn text(&mut self) -> &'a str {
        if self.ended {
            return "";
        }
        self.ended = true;
        let text = self.rest.strip_suffix('/').unwrap_or(self.rest);
        self.rest = "";
        text.trim()
    }
}

/// A transaction detail (`16` and its `88`s) as an item; `None` for a
/// non-monetary one.
fn detail(
    index: usize,
    parts: &[String],
    group: &Group,
    account: Option<&Account>,
) -> Option<Item> {
    // A continuation goes on with the fields where the first line stopped;
    // once the text field has begun, it goes on with the text.
    let mut joined = parts[0].clone();
    for part in &parts[1..] {
        let sep = if text_started(&joined) { " " } else { "," };
        if joined.ends_with('/') {
            joined.pop();
        }
        joined.push_str(sep);
        joined.push_str(part);
    }
    let mut c = Cursor::new(&joined);
    let type_code = c.field();
    let amount = c.field();
    let funds_type = c.field();
    let mut value_date = "";
    let extra = match funds_type {
        "" | "0" | "1" | "2" | "Z" => 0,
        "S" => 3,
        "V" => {
            value_date = c.field();
            1
        }
        "D" => {
            let n: usize = match c.field().parse() {
                Ok(n) if n <= 64 => n,
                _ => {
                    return Some(invalid(
                        index,
                        "the distribution count of funds type D is not a number up to 64",
                    ));
                }
            };
            2 * n
        }
        other => {
            return Some(invalid(
                index,
                &format!("funds type `{}` is not 0, 1, 2, S, V, D or Z", echo(other)),
            ));
        }
    };
    for _ in 0..extra {
        c.field();
    }
    let bank_reference = c.field();
    let customer_reference = c.field();
    let text = c.text();

    let code: u16 = match type_code.parse() {
        Ok(code) if type_code.len() == 3 => code,
        _ => {
            return Some(invalid(
                index,
                &format!("type code `{}` is not three digits", echo(type_code)),
            ));
        }
    };
    if code == 890 {
        return None;
    }
    let credit = match code {
        100..=399 => true,
        400..=699 => false,
        _ => {
            return Some(invalid(
                index,
                &format!("type code {code} is neither a credit (100–399) nor a debit (400–699)"),
            ));
        }
    };
    let Some(account) = account else {
        return Some(bank::reject(
            index,
            ErrorCode::MissingField,
            Some("account_id"),
            "a transaction detail (`16`) before any account identifier (`03`)".into(),
        ));
    };
    if bank_reference.is_empty() {
        return Some(bank::reject(
            index,
            ErrorCode::MissingField,
            Some("external_id"),
            "the detail has no bank reference number to identify it by".into(),
        ));
    }
    if amount.is_empty() || !amount.bytes().all(|b| b.is_ascii_digit()) {
        return Some(bank::reject(
            index,
            ErrorCode::InvalidAmount,
            Some("amount"),
            format!(
                "amount `{}` is not an unsigned whole number of minor units",
                echo(amount)
            ),
        ));
    }
    let mut record = BankEntry::new("bai2");
    record.set(
        "external_id",
        &bank::external_id(&account.number, bank_reference),
    );
    record.set("account_id", &account.number);
    record.set("transaction_date", &date(&group.as_of));
    if credit {
        record.set("amount_minor", &bank::negate(amount));
    } else {
        record.set("amount_minor", amount);
    }
    let currency = [&account.currency, &group.currency]
        .into_iter()
        .find(|c| !c.is_empty())
        .map(String::as_str)
        .unwrap_or("USD");
    record.set("currency", currency);
    record.set("memo", text);
    record.meta("bai_type_code", type_code);
    record.meta("customer_reference", customer_reference);
    record.meta("value_date", &date(value_date));
    Some(record.item(index))
}

/// Whether a detail's first line reaches its text field.
fn text_started(line: &str) -> bool {
    let mut c = Cursor::new(line);
    let _type_code = c.field();
    let _amount = c.field();
    let extra = match c.field() {
        "S" => 3,
        "V" => 2,
        "D" => 2 * c.field().parse::<usize>().unwrap_or(0).min(64),
        _ => 0,
    };
    for _ in 0..extra + 2 {
        c.field();
    }
    !c.ended
}

/// YYMMDD as YYYY-MM-DD (years 70–99 are 19xx); anything else is passed
/// through for validation to refuse.
fn date(yymmdd: &str) -> String {
    if yymmdd.len() != 6 || !yymmdd.bytes().all(|b| b.is_ascii_digit()) {
        return yymmdd.to_string();
    }
    let century = if yymmdd < "70" { "20" } else { "19" };
    format!(
        "{century}{}-{}-{}",
        &yymmdd[..2],
        &yymmdd[2..4],
        &yymmdd[4..6]
    )
}

fn echo(text: &str) -> String {
    text.chars().take(16).collect()
}

fn invalid(index: usize, message: &str) -> Item {
    bank::reject(index, ErrorCode::InvalidField, None, message.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::{Format, collect, validated as record};
    use super::*;
    use spendstream_schemas::ExpenseRecord;

    const HEAD: &str = "01,BANKID,CUSTID,260302,0800,1,,,2/\n02,CUSTID,BANKID,1,260302,0800,USD,2/\n03,123456789,USD,010,500000,,/\n";

    fn records(body: &str) -> (Vec<Item>, End) {
        collect(Format::Bai2, body.as_bytes())
    }

    #[test]
    fn details_with_funds_types_and_continuations() {
        let body = format!(
            "{HEAD}16,475,1234,0,REF1,CHK100,OFFICE SUPPLIES/\n\
             16,175,500,V,260303,,REF2,,REFUND\n88,FROM VENDOR\n\
             16,495,99,S,10,20,69,REF3/\n88,CUST3,WIRE OUT\n\
             16,890,0,0,REF4,,NOTE/\n\
             16,451,7,D,2,0,5,1,2,REF5,,/\n\
             49,1833,5/\n98,1833,1,7/\n99,1833,1,9/\n"
        );
        let (items, end) = records(&body);
        assert_eq!(end, End::Complete);
        assert_eq!(items.len(), 4, "890 is skipped");
        let r: Vec<ExpenseRecord> = items.iter().map(record).collect();
        assert_eq!(r[0].external_id, "123456789/REF1");
        assert_eq!(r[0].amount.minor, 1234);
        assert_eq!(r[0].transaction_date.to_string(), "2026-03-02");
        assert_eq!(r[0].memo.as_deref(), Some("OFFICE SUPPLIES"));
        assert_eq!(r[0].metadata["customer_reference"], "CHK100");
        assert_eq!(r[1].amount.minor, -500);
        assert_eq!(r[1].memo.as_deref(), Some("REFUND FROM VENDOR"));
        assert_eq!(r[1].metadata["value_date"], "2026-03-03");
        assert_eq!(r[2].external_id, "123456789/REF3");
        assert_eq!(r[2].metadata["customer_reference"], "CUST3");
        assert_eq!(r[2].memo.as_deref(), Some("WIRE OUT"));
        assert_eq!(r[3].external_id, "123456789/REF5");
        assert!(
            items
                .iter()
                .enumerate()
                .all(|(i, item)| matches!(item, Item::Record { index, .. } if *index == i))
        );
    }

    #[test]
    fn bad_details_are_rejected_by_index_and_reading_goes_on() {
        let body = format!(
            "{HEAD}16,475,12x4,0,R1/\n16,475,1,Q,R2/\n16,777,1,0,R3/\n16,475,1,0,,C/\n16,475,1,0,R5/\n99/\n"
        );
        let (items, end) = records(&body);
        assert_eq!(end, End::Complete);
        let codes: Vec<Option<ErrorCode>> = items
            .iter()
            .map(|i| match i {
                Item::Reject { error, .. } => Some(error.code),
                Item::Record { .. } => None,
            })
            .collect();
        assert_eq!(
            codes,
            vec![
                Some(ErrorCode::InvalidAmount),
                Some(ErrorCode::InvalidField),
                Some(ErrorCode::InvalidField),
                Some(ErrorCode::MissingField),
                None
            ]
        );
    }

    #[test]
    fn a_detail_grown_past_the_limit_by_continuations_is_rejected() {
        let many = "88,MORE TEXT\n".repeat(200);
        let body = format!("{HEAD}16,475,1,0,R1,,START\n{many}16,475,2,0,R2/\n99/\n");
        let (items, end) = super::super::collect_limited(Format::Bai2, body.as_bytes(), 512);
        assert_eq!(end, End::Complete);
        assert!(
            matches!(&items[0], Item::Reject { index: 0, error } if error.code == ErrorCode::RecordTooLarge)
        );
        assert_eq!(record(&items[1]).external_id, "123456789/R2");
    }

    #[test]
    fn an_overlong_account_record_stops_the_file() {
        let long = "9".repeat(600);
        let body = format!("{HEAD}16,475,1,0,R1/\n03,{long},USD/\n16,475,2,0,R2/\n99/\n");
        let (items, end) = super::super::collect_limited(Format::Bai2, body.as_bytes(), 512);
        assert_eq!(items.len(), 1);
        assert!(matches!(end, End::Malformed { index: 1, .. }), "{end:?}");
    }

    #[test]
    fn not_bai2_and_unknown_record_codes() {
        assert!(matches!(
            records("{\"a\":1}\n").1,
            End::Unframable {
                code: "invalid_bai2",
                ..
            }
        ));
        assert!(matches!(
            records("").1,
            End::Unframable {
                code: "invalid_bai2",
                ..
            }
        ));
        let (items, end) = records(&format!("{HEAD}16,475,1,0,R1/\n17,x\n16,475,1,0,R2/\n"));
        assert_eq!(items.len(), 1);
        assert!(matches!(end, End::Malformed { index: 1, .. }), "{end:?}");
        let (items, _) = records("01,A/\n16,475,1,0,R1/\n");
        assert!(
            matches!(&items[0], Item::Reject { error, .. } if error.field == Some("account_id"))
        );
    }
}
