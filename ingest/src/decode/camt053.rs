//! ISO 20022 CAMT.053 (`BkToCstmrStmt`, versions 001.02 to 001.13): one
//! record per `Ntry` of every `Stmt`. The statement's account comes before
//! its entries, so entries are handed out as each one closes and no more
//! than one entry is held. Entries of status `INFO` (information only, not
//! booked and not expected to be) are skipped without an index. The
//! mapping is in `docs/formats.md`.

use super::bank::{self, BankEntry};
use super::markup::{Markup, Token};
use super::{End, Item, too_large};
use spendstream_schemas::ErrorCode;
use std::io::BufRead;

/// Deepest nesting followed; real statements stay under 15 levels.
const MAX_DEPTH: usize = 48;

pub fn decode(reader: impl BufRead, max_record: usize, emit: &mut dyn FnMut(Item) -> bool) -> End {
    let mut markup = Markup::new(reader, max_record);
    let mut path: Vec<String> = Vec::new();
    let mut statement = Statement::default();
    let mut entry: Option<Entry> = None;
    let mut index = 0;
    let mut root_seen = false;
    loop {
        let token = match markup.next() {
            Ok(Some(token)) => token,
            Ok(None) => break,
            Err(message) => return End::Malformed { index, message },
        };
        match token {
            Token::Start { name, attrs, empty } => {
                if root_seen && path.is_empty() {
                    return End::Malformed {
                        index,
                        message: format!("`<{name}>` after the document's end"),
                    };
                }
                if !root_seen && name != "Document" {
                    return not_camt(&format!("the root element is `{name}`, not `Document`"));
                }
                root_seen = true;
                if path.len() == 1 && name != "BkToCstmrStmt" {
                    return not_camt(&format!(
                        "the document holds `{name}`, not a bank-to-customer statement (`BkToCstmrStmt`)"
                    ));
                }
                if path.len() >= MAX_DEPTH {
                    return End::Malformed {
                        index,
                        message: format!("elements nested deeper than {MAX_DEPTH} levels"),
                    };
                }
                path.push(name);
                match &mut entry {
                    Some(e) => e.start(&path[e.depth + 1..], &attrs),
                    None if at(&path, &["Stmt", "Ntry"]) => {
                        entry = Some(Entry::new(path.len() - 1, markup.consumed()));
                    }
                    None if at(&path, &["Stmt"]) => statement = Statement::default(),
                    None => {}
                }
                if !empty {
                    continue;
                }
                if let Some(item) = close(&mut entry, path.len(), index, &statement, max_record) {
                    index += 1;
                    if !emit(item) {
                        return End::Cancelled;
                    }
                }
                path.pop();
            }
            Token::End { name } => {
                if path.last() != Some(&name) {
                    return End::Malformed {
                        index,
                        message: match path.last() {
                            Some(open) => format!("`</{name}>` where `<{open}>` is open"),
                            None => format!("`</{name}>` with nothing open"),
                        },
                    };
                }
                if let Some(item) = close(&mut entry, path.len(), index, &statement, max_record) {
                    index += 1;
                    if !emit(item) {
                        return End::Cancelled;
                    }
                }
                path.pop();
            }
            Token::Text(text) => match &mut entry {
                Some(e) => e.text(&path[e.depth + 1..], &text),
                None => statement.text(&path, &text),
            },
            Token::TooLarge => {
                if let Some(e) = &mut entry {
                    e.too_large = true;
                }
            }
            Token::BadText => {
                if let Some(e) = &mut entry {
                    e.bad_text = true;
                }
            }
        }
        if let Some(e) = &mut entry
            && markup.consumed() - e.offset > max_record as u64
        {
            e.too_large = true;
        }
    }
    if !root_seen {
        return not_camt("the body holds no XML element");
    }
    if let Some(open) = path.last() {
        return End::Malformed {
            index,
            message: format!("the body ended inside `<{open}>`"),
        };
    }
    End::Complete
}

/// The item of the entry that the element at `depth` (counted from 1)
/// closes, if it closes one and the entry is not skipped.
fn close(
    entry: &mut Option<Entry>,
    depth: usize,
    index: usize,
    statement: &Statement,
    max_record: usize,
) -> Option<Item> {
    if entry.as_ref().is_none_or(|e| e.depth != depth - 1) {
        return None;
    }
    entry.take()?.finish(index, statement, max_record)
}

fn not_camt(why: &str) -> End {
    End::Unframable {
        code: "invalid_camt053",
        message: format!("not a CAMT.053 statement: {why}"),
    }
}

/// Whether `path` ends with `tail`.
fn at(path: &[String], tail: &[&str]) -> bool {
    path.len() >= tail.len()
        && path[path.len() - tail.len()..]
            .iter()
            .zip(tail)
            .all(|(a, b)| a == b)
}

/// What a statement says about all its entries.
#[derive(Default)]
struct Statement {
    id: String,
    account: String,
}

impl Statement {
    fn text(&mut self, path: &[String], text: &str) {
        if at(path, &["Stmt", "Id"]) {
            self.id = text.trim().to_string();
        } else if at(path, &["Stmt", "Acct", "Id", "IBAN"])
            || at(path, &["Stmt", "Acct", "Id", "Othr", "Id"])
        {
            self.account = bank::account(text);
        }
    }
}

/// One `Ntry` while it is read.
#[derive(Default)]
struct Entry {
    /// Index of `Ntry` in the element path.
    depth: usize,
    /// Where it started in the body.
    offset: u64,
    too_large: bool,
    bad_text: bool,
    amount: String,
    currency: String,
    credit_debit: String,
    reversal: String,
    status: String,
    booking_date: String,
    booking_time: String,
    value_date: String,
    account_servicer_ref: String,
    entry_ref: String,
    tx_account_servicer_ref: String,
    end_to_end_id: String,
    bank_code: [String; 3],
    proprietary_code: String,
    creditor: String,
    debtor: String,
    remittance: Vec<String>,
    additional: String,
    transactions: usize,
}

impl Entry {
    fn new(depth: usize, offset: u64) -> Self {
        Self {
            depth,
            offset,
            ..Self::default()
        }
    }

    /// An element opened inside the entry (`rel` is its path under `Ntry`).
    fn start(&mut self, rel: &[String], attrs: &[(String, String)]) {
        if rel == ["Amt"] {
            if let Some((_, ccy)) = attrs.iter().find(|(k, _)| k == "Ccy") {
                self.currency = ccy.trim().to_string();
            }
        } else if rel == ["NtryDtls", "TxDtls"] {
            self.transactions += 1;
        }
    }

    fn text(&mut self, rel: &[String], text: &str) {
        if self.too_large {
            return;
        }
        let rel: Vec<&str> = rel.iter().map(String::as_str).collect();
        let first_tx = self.transactions <= 1;
        let text = text.trim();
        let slot = match rel.as_slice() {
            ["Amt"] => &mut self.amount,
            ["CdtDbtInd"] => &mut self.credit_debit,
            ["RvslInd"] => &mut self.reversal,
            ["Sts"] | ["Sts", "Cd"] | ["Sts", "Prtry"] => &mut self.status,
            ["BookgDt", "Dt"] => &mut self.booking_date,
            ["BookgDt", "DtTm"] => &mut self.booking_time,
            ["ValDt", "Dt"] | ["ValDt", "DtTm"] => &mut self.value_date,
            ["AcctSvcrRef"] => &mut self.account_servicer_ref,
            ["NtryRef"] => &mut self.entry_ref,
            ["BkTxCd", "Domn", "Cd"] => &mut self.bank_code[0],
            ["BkTxCd", "Domn", "Fmly", "Cd"] => &mut self.bank_code[1],
            ["BkTxCd", "Domn", "Fmly", "SubFmlyCd"] => &mut self.bank_code[2],
            ["BkTxCd", "Prtry", "Cd"] => &mut self.proprietary_code,
            ["AddtlNtryInf"] => &mut self.additional,
            ["NtryDtls", "TxDtls", "Refs", "AcctSvcrRef"] if first_tx => {
                &mut self.tx_account_servicer_ref
            }
            ["NtryDtls", "TxDtls", "Refs", "EndToEndId"] if first_tx => &mut self.end_to_end_id,
            ["NtryDtls", "TxDtls", "RltdPties", "Cdtr", "Nm"]
            | ["NtryDtls", "TxDtls", "RltdPties", "Cdtr", "Pty", "Nm"]
                if first_tx =>
            {
                &mut self.creditor
            }
            ["NtryDtls", "TxDtls", "RltdPties", "Dbtr", "Nm"]
            | ["NtryDtls", "TxDtls", "RltdPties", "Dbtr", "Pty", "Nm"]
                if first_tx =>
            {
                &mut self.debtor
            }
            ["NtryDtls", "TxDtls", "RmtInf", "Ustrd"] if first_tx => {
                self.remittance.push(text.to_string());
                return;
            }
            _ => return,
        };
        *slot = text.to_string();
    }

    /// The entry as an item, or `None` for an entry to skip (`INFO`).
    fn finish(self, index: usize, statement: &Statement, max_record: usize) -> Option<Item> {
        if self.too_large {
            return Some(too_large(index, max_record));
        }
        if self.bad_text {
            return Some(bank::bad_text(index));
        }
        let status = match self.status.as_str() {
            "BOOK" => "posted",
            "PDNG" => "pending",
            "INFO" => return None,
            "" => {
                return Some(bank::reject(
                    index,
                    ErrorCode::MissingField,
                    Some("status"),
                    "the entry has no status (`Sts`)".into(),
                ));
            }
            other => {
                return Some(bank::reject(
                    index,
                    ErrorCode::InvalidStatus,
                    Some("status"),
                    format!(
                        "entry status `{}` is not BOOK, PDNG or INFO",
                        other.chars().take(16).collect::<String>()
                    ),
                ));
            }
        };
        if self.amount.starts_with(['-', '+']) {
            // The direction is CdtDbtInd's; ISO 20022 amounts are unsigned.
            return Some(bank::reject(
                index,
                ErrorCode::InvalidAmount,
                Some("amount"),
                "the entry's `Amt` carries a sign; its direction is `CdtDbtInd`'s".into(),
            ));
        }
        let amount = match self.credit_debit.as_str() {
            // Money leaving the account is spend; money coming in (a refund)
            // counts against it.
            "DBIT" => self.amount.clone(),
            "CRDT" => bank::negate(&self.amount),
            _ => {
                return Some(bank::reject(
                    index,
                    ErrorCode::InvalidAmount,
                    Some("amount"),
                    "the entry's `CdtDbtInd` is not CRDT or DBIT".into(),
                ));
            }
        };
        // The bank's own references first: they stay the same from one
        // statement to the next. `NtryRef` is only unique in its statement,
        // so it is qualified by the statement's id.
        let entry_ref = match (&self.entry_ref, &statement.id) {
            (r, _) if r.is_empty() || r == "NOTPROVIDED" => String::new(),
            (r, id) if id.is_empty() => r.clone(),
            (r, id) => format!("{id}/{r}"),
        };
        let reference = [
            &self.account_servicer_ref,
            &self.tx_account_servicer_ref,
            &entry_ref,
            &self.end_to_end_id,
        ]
        .into_iter()
        .find(|r| !r.is_empty() && r.as_str() != "NOTPROVIDED");
        let Some(reference) = reference else {
            return Some(bank::reject(
                index,
                ErrorCode::MissingField,
                Some("external_id"),
                "the entry has no reference (`AcctSvcrRef`, its transaction's `AcctSvcrRef`, `NtryRef`, or its transaction's `EndToEndId`) to identify it by".into(),
            ));
        };
        if statement.account.is_empty() {
            return Some(bank::reject(
                index,
                ErrorCode::MissingField,
                Some("account_id"),
                "the statement names no account (`Acct/Id/IBAN` or `Acct/Id/Othr/Id`)".into(),
            ));
        }
        let mut record = BankEntry::new("camt053");
        record.set(
            "external_id",
            &bank::external_id(&statement.account, reference),
        );
        record.set("account_id", &statement.account);
        record.set("status", status);
        let date = [&self.booking_date, &self.booking_time, &self.value_date]
            .into_iter()
            .find(|d| !d.is_empty())
            .map(|d| d.get(..10).unwrap_or(d))
            .unwrap_or("");
        record.set("transaction_date", date);
        if chrono::DateTime::parse_from_rfc3339(&self.booking_time).is_ok() {
            record.set("posted_at", &self.booking_time);
        }
        record.set("amount", &amount);
        record.set("currency", &self.currency);
        let counterparty = if self.credit_debit == "DBIT" {
            &self.creditor
        } else {
            &self.debtor
        };
        record.set("merchant_name", counterparty);
        let memo = if self.remittance.is_empty() {
            self.additional.clone()
        } else {
            self.remittance.join(" ")
        };
        record.set("memo", &memo);
        if !self.bank_code[0].is_empty() {
            record.meta("bank_transaction_code", &self.bank_code.join("/"));
        }
        record.meta("proprietary_code", &self.proprietary_code);
        record.meta("value_date", self.value_date.get(..10).unwrap_or(""));
        if self.reversal == "true" || self.reversal == "1" {
            record.meta("reversal", "true");
        }
        if self.transactions > 1 {
            record.meta("transactions", &self.transactions.to_string());
        }
        record.meta("statement_id", &statement.id);
        Some(record.item(index))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Format, collect, collect_limited, validated};
    use super::*;
    use spendstream_schemas::ExpenseRecord;

    fn entry(body: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.02"><BkToCstmrStmt>
<GrpHdr><MsgId>M1</MsgId></GrpHdr>
<Stmt><Id>S1</Id><Acct><Id><IBAN>DE89370400440532013000</IBAN></Id></Acct>
{body}
</Stmt></BkToCstmrStmt></Document>"#
        )
    }

    fn ntry(amount: &str, ind: &str, sts: &str, reference: &str) -> String {
        format!(
            "<Ntry><Amt Ccy=\"EUR\">{amount}</Amt><CdtDbtInd>{ind}</CdtDbtInd><Sts>{sts}</Sts>\
             <BookgDt><Dt>2026-03-02</Dt></BookgDt>{reference}</Ntry>"
        )
    }

    #[test]
    fn entries_map_onto_records_that_validate() {
        let body = entry(&format!(
            "{}{}{}",
            ntry("12.50", "DBIT", "BOOK", "<AcctSvcrRef>R1</AcctSvcrRef>"),
            ntry("3.00", "CRDT", "PDNG", "<NtryRef>R2</NtryRef>"),
            ntry("1.00", "DBIT", "INFO", "<NtryRef>R3</NtryRef>"),
        ));
        let (items, end) = collect(Format::Camt053, body.as_bytes());
        assert_eq!(end, End::Complete);
        assert_eq!(items.len(), 2, "INFO entries are skipped");
        let records: Vec<ExpenseRecord> = items.iter().map(validated).collect();
        assert_eq!(records[0].external_id, "DE89370400440532013000/R1");
        assert_eq!(
            records[1].external_id, "DE89370400440532013000/S1/R2",
            "an entry reference is qualified by its statement"
        );
        assert_eq!(records[0].amount.minor, 1250);
        assert_eq!(records[1].amount.minor, -300);
        assert_eq!(records[1].status, spendstream_schemas::Status::Pending);
    }

    #[test]
    fn an_entry_without_a_reference_or_direction_is_rejected_by_index() {
        let body = entry(&format!(
            "{}{}{}",
            ntry("1.00", "DBIT", "BOOK", ""),
            ntry("1.00", "SIDEWAYS", "BOOK", "<NtryRef>R</NtryRef>"),
            ntry("1.00", "DBIT", "BOOK", "<NtryRef>R</NtryRef>"),
        ));
        let (items, end) = collect(Format::Camt053, body.as_bytes());
        assert_eq!(end, End::Complete);
        assert!(
            matches!(&items[0], Item::Reject { index: 0, error } if error.code == ErrorCode::MissingField)
        );
        assert!(
            matches!(&items[1], Item::Reject { index: 1, error } if error.code == ErrorCode::InvalidAmount)
        );
        assert!(matches!(&items[2], Item::Record { index: 2, .. }));
    }

    #[test]
    fn other_documents_and_broken_xml() {
        let (_, end) = collect(Format::Camt053, b"<OFX></OFX>");
        assert!(matches!(
            end,
            End::Unframable {
                code: "invalid_camt053",
                ..
            }
        ));
        let (_, end) = collect(Format::Camt053, b"<Document><BkToCstmrAcctRpt/></Document>");
        assert!(matches!(
            end,
            End::Unframable {
                code: "invalid_camt053",
                ..
            }
        ));
        let body = entry(&ntry("1.00", "DBIT", "BOOK", "<NtryRef>R</NtryRef>"));
        let cut = &body.as_bytes()[..body.find("</Stmt>").unwrap()];
        let (items, end) = collect(Format::Camt053, cut);
        assert_eq!(items.len(), 1);
        assert!(matches!(end, End::Malformed { index: 1, .. }), "{end:?}");
        let (_, end) = collect(Format::Camt053, b"<Document><BkToCstmrStmt></Stmt>");
        assert!(matches!(end, End::Malformed { index: 0, .. }));
        // After the document: broken, never "not a statement" (its entries
        // were handed on already).
        let after = format!("{body}<Document><X/></Document>");
        let (items, end) = collect(Format::Camt053, after.as_bytes());
        assert_eq!(items.len(), 1);
        assert!(matches!(end, End::Malformed { index: 1, .. }), "{end:?}");
        let signed = entry(&ntry("-1.00", "CRDT", "BOOK", "<NtryRef>R</NtryRef>"));
        let (items, _) = collect(Format::Camt053, signed.as_bytes());
        assert!(
            matches!(&items[0], Item::Reject { error, .. } if error.code == ErrorCode::InvalidAmount)
        );
    }

    #[test]
    fn a_huge_entry_is_rejected_and_the_next_one_read() {
        let memo = "x".repeat(3000);
        let big = format!(
            "<Ntry><Amt Ccy=\"EUR\">1.00</Amt><CdtDbtInd>DBIT</CdtDbtInd><Sts>BOOK</Sts><NtryRef>A</NtryRef>\
             <AddtlNtryInf>{memo}</AddtlNtryInf><BookgDt><Dt>2026-03-02</Dt></BookgDt></Ntry>"
        );
        let body = entry(&format!(
            "{big}{}",
            ntry("2.00", "DBIT", "BOOK", "<NtryRef>B</NtryRef>")
        ));
        let (items, end) = collect_limited(Format::Camt053, body.as_bytes(), 1024);
        assert_eq!(end, End::Complete);
        assert!(
            matches!(&items[0], Item::Reject { index: 0, error } if error.code == ErrorCode::RecordTooLarge)
        );
        assert!(matches!(&items[1], Item::Record { index: 1, .. }));
    }
}
