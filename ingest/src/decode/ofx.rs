//! OFX statements, 1.x (SGML, whose leaf elements have no end tags, after a
//! `KEY:VALUE` header) and 2.x (XML): one record per `STMTTRN` of every bank
//! (`STMTRS`) and credit-card (`CCSTMTRS`) statement. The statement's
//! currency and account come before its transaction list, so transactions
//! are handed out as each one closes. The mapping is in `docs/formats.md`.

use super::bank::{self, BankEntry};
use super::markup::{Markup, Token};
use super::{End, Item, too_large};
use spendstream_schemas::ErrorCode;
use std::io::BufRead;

pub fn decode(reader: impl BufRead, max_record: usize, emit: &mut dyn FnMut(Item) -> bool) -> End {
    let mut markup = Markup::new(reader, max_record);
    let mut seen_root = false;
    let mut statement = Statement::default();
    let mut trn: Option<Transaction> = None;
    // The element whose text comes next (an SGML leaf has no end tag: its
    // text is what follows its start tag).
    let mut leaf: Option<String> = None;
    let mut inside = Inside::default();
    let mut index = 0;
    loop {
        let token = match markup.next() {
            Ok(Some(token)) => token,
            Ok(None) => break,
            Err(message) if seen_root => return End::Malformed { index, message },
            Err(message) => return not_ofx(&message),
        };
        match token {
            Token::Text(text) if !seen_root => {
                // The OFX 1.x header (`OFXHEADER:100`, `CHARSET:1252`, …),
                // or only a byte-order mark before an OFX 2 file.
                let text = text.trim_start_matches('\u{feff}');
                if text.trim().is_empty() {
                    continue;
                }
                let header = text.to_ascii_uppercase();
                if !header.trim_start().starts_with("OFXHEADER") {
                    return not_ofx("the body does not start with an OFX header or `<OFX>`");
                }
                if header.contains("CHARSET:1252") || header.contains("CHARSET:ISO-8859-1") {
                    markup.windows_1252();
                }
            }
            Token::Start { name, .. } => {
                if !seen_root {
                    if name != "OFX" {
                        return not_ofx(&format!("the root element is `{name}`, not `OFX`"));
                    }
                    seen_root = true;
                }
                match (name.as_str(), &trn) {
                    ("STMTRS" | "CCSTMTRS", _) => statement = Statement::default(),
                    ("BANKACCTFROM" | "CCACCTFROM", None) => inside.account = true,
                    ("STMTTRN", Some(_)) => {
                        return End::Malformed {
                            index,
                            message: "a `<STMTTRN>` inside another".into(),
                        };
                    }
                    ("STMTTRN", None) => trn = Some(Transaction::new(markup.consumed())),
                    ("CURRENCY", Some(_)) => inside.currency = Some(Conversion::Amounts),
                    ("ORIGCURRENCY", Some(_)) => inside.currency = Some(Conversion::Original),
                    ("PAYEE", Some(_)) => inside.payee = true,
                    _ => {}
                }
                leaf = Some(name);
            }
            Token::End { name } => {
                leaf = None;
                match name.as_str() {
                    "BANKACCTFROM" | "CCACCTFROM" => inside.account = false,
                    "CURRENCY" | "ORIGCURRENCY" => inside.currency = None,
                    "PAYEE" => inside.payee = false,
                    "STMTTRN" => {
                        let Some(done) = trn.take() else {
                            return End::Malformed {
                                index,
                                message: "`</STMTTRN>` with no transaction open".into(),
                            };
                        };
                        inside = Inside::default();
                        let item = done.finish(index, &statement, max_record);
                        index += 1;
                        if !emit(item) {
                            return End::Cancelled;
                        }
                    }
                    _ => {}
                }
            }
            Token::Text(text) => {
                let Some(name) = leaf.take() else { continue };
                let value = text.trim();
                match &mut trn {
                    Some(t) => t.text(&name, value, &inside),
                    None if name == "CURDEF" => statement.currency = value.to_string(),
                    None if name == "ACCTID" && inside.account => {
                        statement.account = bank::account(value);
                    }
                    None => {}
                }
            }
            Token::TooLarge => {
                leaf = None;
                if let Some(t) = &mut trn {
                    t.too_large = true;
                }
            }
            Token::BadText => {
                leaf = None;
                if let Some(t) = &mut trn {
                    t.bad_text = true;
                }
            }
        }
        if let Some(t) = &mut trn
            && markup.consumed() - t.offset > max_record as u64
        {
            t.too_large = true;
        }
    }
    if !seen_root {
        return not_ofx("the body holds no `<OFX>` element");
    }
    if trn.is_some() {
        return End::Malformed {
            index,
            message: "the body ended inside `<STMTTRN>`".into(),
        };
    }
    End::Complete
}

fn not_ofx(why: &str) -> End {
    End::Unframable {
        code: "invalid_ofx",
        message: format!("not an OFX statement: {why}"),
    }
}

#[derive(Default)]
struct Statement {
    currency: String,
    account: String,
}

/// Which aggregates the next text is inside.
#[derive(Default)]
struct Inside {
    account: bool,
    payee: bool,
    currency: Option<Conversion>,
}

/// What a transaction's currency aggregate says.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Conversion {
    /// `CURRENCY`: the amounts are in `CURSYM`.
    Amounts,
    /// `ORIGCURRENCY`: the amounts are in the statement's currency,
    /// converted from `CURSYM`.
    Original,
}

#[derive(Default)]
struct Transaction {
    offset: u64,
    too_large: bool,
    bad_text: bool,
    kind: String,
    posted: String,
    user_date: String,
    amount: String,
    fitid: String,
    name: String,
    payee: String,
    memo: String,
    sic: String,
    check_number: String,
    reference: String,
    currency: String,
    original_currency: String,
    rate: String,
}

impl Transaction {
    fn new(offset: u64) -> Self {
        Self {
            offset,
            ..Self::default()
        }
    }

    fn text(&mut self, name: &str, value: &str, inside: &Inside) {
        if self.too_large {
            return;
        }
        let slot = match (name, inside.currency) {
            ("CURSYM", Some(Conversion::Amounts)) => &mut self.currency,
            ("CURSYM", Some(Conversion::Original)) => &mut self.original_currency,
            ("CURRATE", Some(_)) => &mut self.rate,
            ("NAME", _) if inside.payee => &mut self.payee,
            ("NAME", _) => &mut self.name,
            ("TRNTYPE", _) => &mut self.kind,
            ("DTPOSTED", _) => &mut self.posted,
            ("DTUSER", _) => &mut self.user_date,
            ("TRNAMT", _) => &mut self.amount,
            ("FITID", _) => &mut self.fitid,
            ("MEMO", _) => &mut self.memo,
            ("SIC", _) => &mut self.sic,
            ("CHECKNUM", _) => &mut self.check_number,
            ("REFNUM", _) => &mut self.reference,
            _ => return,
        };
        *slot = value.to_string();
    }

    fn finish(self, index: usize, statement: &Statement, max_record: usize) -> Item {
        if self.too_large {
            return too_large(index, max_record);
        }
        if self.bad_text {
            return bank::bad_text(index);
        }
        if self.fitid.is_empty() {
            return bank::reject(
                index,
                ErrorCode::MissingField,
                Some("external_id"),
                "the transaction has no `FITID` to identify it by".into(),
            );
        }
        if statement.account.is_empty() {
            return bank::reject(
                index,
                ErrorCode::MissingField,
                Some("account_id"),
                "the statement names no account (`BANKACCTFROM` or `CCACCTFROM` with `ACCTID`)"
                    .into(),
            );
        }
        let mut record = BankEntry::new("ofx");
        record.set(
            "external_id",
            &bank::external_id(&statement.account, &self.fitid),
        );
        record.set("account_id", &statement.account);
        let date = if self.user_date.is_empty() {
            &self.posted
        } else {
            &self.user_date
        };
        record.set("transaction_date", &ofx_date(date));
        if let Some(at) = ofx_timestamp(&self.posted) {
            record.set("posted_at", &at);
        }
        // OFX signs amounts from the account holder's side: money out is
        // negative, and is spend here.
        let amount = if self.amount.contains('.') {
            self.amount.clone()
        } else {
            // The specification allows a decimal comma.
            self.amount.replace(',', ".")
        };
        if !amount.is_empty() {
            record.set("amount", &bank::negate(&amount));
        }
        let currency = if self.currency.is_empty() {
            &statement.currency
        } else {
            &self.currency
        };
        record.set("currency", currency);
        let name = if self.payee.is_empty() {
            &self.name
        } else {
            &self.payee
        };
        record.set("merchant_name", name);
        record.set("memo", &self.memo);
        record.meta("ofx_type", &self.kind);
        record.meta("sic", &self.sic);
        record.meta("check_number", &self.check_number);
        record.meta("reference", &self.reference);
        record.meta("original_currency", &self.original_currency);
        record.meta("currency_rate", &self.rate);
        record.item(index)
    }
}

/// The date of an OFX datetime (`YYYYMMDD…`) as YYYY-MM-DD; anything else
/// is passed through for validation to refuse.
fn ofx_date(value: &str) -> String {
    match value.get(..8) {
        Some(d) if d.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..8])
        }
        _ => value.to_string(),
    }
}

/// An OFX datetime with a time of day (`YYYYMMDDHHMMSS[.XXX][[±H:TZ]]`,
/// GMT when no offset is given) as RFC 3339; `None` for a date alone or an
/// offset that is not whole hours.
fn ofx_timestamp(value: &str) -> Option<String> {
    let (stamp, zone) = match value.split_once('[') {
        Some((stamp, zone)) => (stamp, Some(zone.trim_end_matches(']'))),
        None => (value, None),
    };
    let digits = stamp.split('.').next()?;
    if digits.len() != 14 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i32 = match zone {
        None => 0,
        Some(zone) => zone.split(':').next()?.trim().parse().ok()?,
    };
    if !(-12..=14).contains(&hours) {
        return None;
    }
    let sign = if hours < 0 { '-' } else { '+' };
    Some(format!(
        "{}-{}-{}T{}:{}:{}{sign}{:02}:00",
        &digits[..4],
        &digits[4..6],
        &digits[6..8],
        &digits[8..10],
        &digits[10..12],
        &digits[12..14],
        hours.abs()
    ))
}

#[cfg(test)]
mod tests {
    use super::super::{Format, collect, validated as record};
    use super::*;
    use spendstream_schemas::ExpenseRecord;

    const SGML: &[u8] = b"OFXHEADER:100\r\nDATA:OFXSGML\r\nVERSION:102\r\nCHARSET:1252\r\n\r\n\
<OFX><CREDITCARDMSGSRSV1><CCSTMTTRNRS><CCSTMTRS><CURDEF>USD\r\n\
<CCACCTFROM><ACCTID>4111111111111111</CCACCTFROM>\r\n<BANKTRANLIST>\r\n\
<STMTTRN><TRNTYPE>DEBIT<DTPOSTED>20260302120000[-5:EST]<DTUSER>20260301<TRNAMT>-42.50<FITID>T1<NAME>CAF\xc9 & CO<MEMO>lunch</STMTTRN>\r\n\
<STMTTRN><TRNTYPE>CREDIT<DTPOSTED>20260303<TRNAMT>10,00<FITID>T2<NAME>REFUND\
<CURRENCY><CURRATE>1.1<CURSYM>EUR</CURRENCY></STMTTRN>\r\n\
</BANKTRANLIST></CCSTMTRS></CCSTMTTRNRS></CREDITCARDMSGSRSV1></OFX>";

    #[test]
    fn sgml_credit_card_statement() {
        let (items, end) = collect(Format::Ofx, SGML);
        assert_eq!(end, End::Complete);
        assert_eq!(items.len(), 2);
        let a = record(&items[0]);
        assert_eq!(a.account_id, "************1111");
        assert_eq!(a.external_id, "************1111/T1");
        assert_eq!(a.amount.minor, 4250);
        assert_eq!(a.transaction_date.to_string(), "2026-03-01");
        assert_eq!(
            a.posted_at.unwrap().to_rfc3339(),
            "2026-03-02T17:00:00+00:00"
        );
        assert_eq!(a.merchant_name.as_deref(), Some("CAFÉ & CO"));
        let b = record(&items[1]);
        assert_eq!(b.amount.minor, -1000);
        assert_eq!(b.amount.currency.code(), "EUR");
        assert_eq!(b.metadata["currency_rate"], "1.1");
    }

    #[test]
    fn xml_bank_statement_and_rejects() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?><?OFX OFXHEADER="200" VERSION="220"?>
<OFX><BANKMSGSRSV1><STMTTRNRS><STMTRS><CURDEF>EUR</CURDEF>
<BANKACCTFROM><BANKID>1</BANKID><ACCTID>ACC-9</ACCTID><ACCTTYPE>CHECKING</ACCTTYPE></BANKACCTFROM>
<BANKTRANLIST>
<STMTTRN><TRNTYPE>POS</TRNTYPE><DTPOSTED>20260302</DTPOSTED><TRNAMT>-3.10</TRNAMT><FITID>F1</FITID><PAYEE><NAME>Shop &amp; Go</NAME></PAYEE></STMTTRN>
<STMTTRN><TRNTYPE>POS</TRNTYPE><DTPOSTED>20260302</DTPOSTED><TRNAMT>-1.00</TRNAMT></STMTTRN>
<STMTTRN><TRNTYPE>POS</TRNTYPE><DTPOSTED>2026-03</DTPOSTED><TRNAMT>-1.00</TRNAMT><FITID>F3</FITID></STMTTRN>
</BANKTRANLIST></STMTRS></STMTTRNRS></BANKMSGSRSV1></OFX>"#;
        let (items, end) = collect(Format::Ofx, body);
        assert_eq!(end, End::Complete);
        let a = record(&items[0]);
        assert_eq!(a.external_id, "ACC-9/F1");
        assert_eq!(a.merchant_name.as_deref(), Some("Shop & Go"));
        assert_eq!(a.amount.minor, 310);
        assert!(a.posted_at.is_none());
        assert!(
            matches!(&items[1], Item::Reject { index: 1, error } if error.code == ErrorCode::MissingField)
        );
        match &items[2] {
            Item::Record { index: 2, json } => assert_eq!(
                ExpenseRecord::from_json(json).unwrap_err().code,
                ErrorCode::InvalidDate
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn not_ofx_and_cut_files() {
        assert!(matches!(
            collect(Format::Ofx, b"hello").1,
            End::Unframable {
                code: "invalid_ofx",
                ..
            }
        ));
        assert!(matches!(
            collect(Format::Ofx, b"<Document/>").1,
            End::Unframable {
                code: "invalid_ofx",
                ..
            }
        ));
        let cut = &SGML[..SGML.windows(6).position(|w| w == b"<MEMO>").unwrap()];
        let (items, end) = collect(Format::Ofx, cut);
        assert!(items.is_empty());
        assert!(matches!(end, End::Malformed { index: 0, .. }), "{end:?}");
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let mut body = "\u{feff}".as_bytes().to_vec();
        body.extend_from_slice(SGML);
        let (items, end) = collect(Format::Ofx, &body);
        assert_eq!((items.len(), end), (2, End::Complete));
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            ofx_timestamp("20260302120000.123[+2:CET]").unwrap(),
            "2026-03-02T12:00:00+02:00"
        );
        assert_eq!(
            ofx_timestamp("20260302120000").unwrap(),
            "2026-03-02T12:00:00+00:00"
        );
        assert_eq!(ofx_timestamp("20260302"), None);
        assert_eq!(ofx_timestamp("20260302120000[5.5:IST]"), None);
    }
}
