//! The published JSON Schema of a record (`expense.v1.schema.json`) run
//! through a real validator and compared, record by record, with what the
//! server's own validation (`ExpenseRecord::from_json`) decides.
//!
//! The rule: the schema never refuses what the server accepts, and refuses
//! what the server refuses unless the rule is one JSON Schema cannot state;
//! those are listed in [`SCHEMA_CANNOT_EXPRESS`], and each example of one
//! asserts that the schema lets it through, so the gap stays written down.

use jsonschema::Validator;
use serde_json::Value;
use spendstream_schemas::record::FIELDS;
use spendstream_schemas::{Currency, ExpenseRecord, RECORD_JSON_SCHEMA};
use std::collections::BTreeSet;

/// Rejection codes with a case JSON Schema cannot express, and why. A
/// `Limit` example must use one of these codes; other examples with the same
/// code must still be refused by the schema.
const SCHEMA_CANNOT_EXPRESS: &[(&str, &str)] = &[
    (
        "pan_detected",
        "a card number is a run of 13 to 19 digits, maybe split by spaces or dashes, whose Luhn \
         checksum holds; a pattern cannot compute a checksum, and refusing every long digit run \
         would refuse ordinary ids",
    ),
    (
        "amount_precision",
        "the decimals allowed depend on the minor unit of the currency in another field (given \
         in any case) and an exponent moves the point (`1.5e1` JPY is fine); for a JSON number \
         the validator sees a float, not the decimals that were written",
    ),
    (
        "amount_overflow",
        "the bound is i64 minor units, which depends on the currency's exponent; JSON numbers \
         reach the validator as floats, which cannot hold that bound exactly",
    ),
    (
        "invalid_amount",
        "a JSON number whose exponent is written with more than four digits (`1e00001`): the \
         validator sees the number's value, not its spelling",
    ),
    (
        "invalid_mcc",
        "a JSON number spelled `58.0`, `5e1` or `-0`: its value is a whole number from 0 to \
         9999, only the spelling is refused, and the validator does not see spelling",
    ),
    (
        "invalid_metadata",
        "metadata in a string (the CSV form) is JSON text; `contentSchema` describes it, but in \
         draft 2020-12 it is an annotation, not an assertion. Likewise the length of a \
         metadata number's text",
    ),
    (
        "invalid_date",
        "posted_at's window is checked on its UTC date, so a timestamp on 1969-12-31 or \
         2200-01-01 is in or out depending on its offset; and the day of a space-separated \
         timestamp is checked by a pattern, which cannot know that February has no 30th",
    ),
];

/// What an example must get from each side.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// The server accepts it; so must the schema.
    Accepts,
    /// The server refuses it with this code; so must the schema.
    Refuses(&'static str),
    /// The server refuses it with this code, and the schema cannot tell: it
    /// accepts it. The code must be in [`SCHEMA_CANNOT_EXPRESS`].
    Limit(&'static str),
}
use Expect::*;

fn validator() -> Validator {
    let schema: Value = serde_json::from_str(RECORD_JSON_SCHEMA).expect("the schema is JSON");
    // Building checks the schema against the draft 2020-12 meta-schema.
    // `format` is an annotation by default in 2020-12; the contract means it
    // (`date`, `date-time`), so assert it.
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema compiles")
}

/// The server's verdict on one record's raw JSON text.
fn server(raw: &str) -> Result<(), &'static str> {
    ExpenseRecord::from_json(raw)
        .map(|_| ())
        .map_err(|e| e.code.as_str())
}

/// The schema's verdict: `None` if valid, else its error messages.
fn schema_errors(validator: &Validator, raw: &str) -> Option<String> {
    let instance: Value = serde_json::from_str(raw).expect("every example is JSON");
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| format!("{} at `{}`", e, e.instance_path()))
        .collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

/// Compares both verdicts with `expect`; `None` if they match it.
fn disagreement(validator: &Validator, name: &str, raw: &str, expect: Expect) -> Option<String> {
    let server = server(raw);
    let schema = schema_errors(validator, raw);
    let ok = match expect {
        Accepts => server.is_ok() && schema.is_none(),
        Refuses(code) => server == Err(code) && schema.is_some(),
        Limit(code) => {
            SCHEMA_CANNOT_EXPRESS.iter().any(|(c, _)| *c == code)
                && server == Err(code)
                && schema.is_none()
        }
    };
    (!ok).then(|| {
        format!(
            "{name}: expected {expect:?}, server says {server:?}, schema says {}\n    {raw}",
            schema.as_deref().unwrap_or("valid")
        )
    })
}

/// The smallest valid record, as `(field, raw JSON)` pairs.
const BASE: &[(&str, &str)] = &[
    ("source", r#""visa-feed""#),
    ("external_id", r#""tx-1""#),
    ("account_id", r#""card_tok_1""#),
    ("transaction_date", r#""2026-11-02""#),
    ("amount", r#""12.34""#),
    ("currency", r#""USD""#),
];

/// [`BASE`] with edits: `(field, Some(raw JSON))` sets the field to exactly
/// that text, so a number keeps its spelling; `(field, None)` removes it.
fn record(edits: &[(&str, Option<&str>)]) -> String {
    let mut fields: Vec<(String, String)> = BASE
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (field, value) in edits {
        fields.retain(|(k, _)| k != field);
        if let Some(v) = value {
            fields.push((field.to_string(), v.to_string()));
        }
    }
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::from(k.as_str())))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// A JSON string literal.
fn s(text: &str) -> String {
    Value::from(text).to_string()
}

/// The examples: `(name, raw record, expectation)`.
fn examples() -> Vec<(String, String, Expect)> {
    let long = |n: usize| s(&"x".repeat(n));
    let metadata_keys = |n: usize| {
        let pairs: Vec<String> = (0..n).map(|i| format!("\"k{i}\":\"v\"")).collect();
        format!("{{{}}}", pairs.join(","))
    };
    let big_number = format!("1{}", "0".repeat(300));
    let e = |name: &str, edits: &[(&str, Option<&str>)], expect: Expect| {
        (name.to_string(), record(edits), expect)
    };
    let mut out = vec![
        // Accepted: the forms the server takes, including the ones the schema
        // used to refuse (lower-case currencies, null and "" as absent).
        e("minimal record", &[], Accepts),
        e(
            "every field",
            &[
                ("status", Some(r#""pending""#)),
                ("related_external_id", Some(r#""tx-0""#)),
                ("posted_at", Some(r#""2026-11-03T10:00:00+01:00""#)),
                ("billed_amount", Some(r#""10.000""#)),
                ("billed_currency", Some(r#""BHD""#)),
                ("merchant_name", Some(r#""SQ *BLUE BOTTLE""#)),
                ("merchant_mcc", Some(r#""5814""#)),
                ("employee_id", Some(r#""emp-1""#)),
                ("memo", Some(r#""team offsite""#)),
                ("metadata", Some(r#"{"cost_center":"42","billable":true}"#)),
                ("category", Some(r#""restaurants""#)),
            ],
            Accepts,
        ),
        e(
            "currency lower case",
            &[("currency", Some(r#""usd""#))],
            Accepts,
        ),
        e(
            "currency mixed case",
            &[("currency", Some(r#""uSd""#))],
            Accepts,
        ),
        e(
            "billed currency lower case",
            &[
                ("billed_amount", Some(r#""10.000""#)),
                ("billed_currency", Some(r#""bhd""#)),
            ],
            Accepts,
        ),
        e(
            "amount as a JSON number",
            &[("amount", Some("12.34"))],
            Accepts,
        ),
        e(
            "amount as a large JSON number",
            &[("amount", Some("1234567890123.45"))],
            Accepts,
        ),
        e("amount negative", &[("amount", Some(r#""-5""#))], Accepts),
        e(
            "amount with a plus",
            &[("amount", Some(r#""+5""#))],
            Accepts,
        ),
        e(
            "amount trailing zero",
            &[("amount", Some(r#""12.340""#))],
            Accepts,
        ),
        e(
            "amount with exponent",
            &[("amount", Some(r#""1.5e1""#))],
            Accepts,
        ),
        e(
            "amount with exponent in JPY",
            &[("amount", Some("1.5e1")), ("currency", Some(r#""JPY""#))],
            Accepts,
        ),
        e(
            "amount_minor as integer",
            &[("amount", None), ("amount_minor", Some("1234"))],
            Accepts,
        ),
        e(
            "amount_minor as string",
            &[("amount", None), ("amount_minor", Some(r#""-500""#))],
            Accepts,
        ),
        e(
            "amount_minor string with zero fraction",
            &[("amount", None), ("amount_minor", Some(r#""500.0""#))],
            Accepts,
        ),
        e(
            "amount_minor string with exponent",
            &[("amount", None), ("amount_minor", Some(r#""5e2""#))],
            Accepts,
        ),
        e(
            "amount_minor number with zero fraction",
            &[("amount", None), ("amount_minor", Some("500.0"))],
            Accepts,
        ),
        e(
            "amount_minor number with exponent",
            &[("amount", None), ("amount_minor", Some("5e2"))],
            Accepts,
        ),
        e(
            "amount null beside amount_minor",
            &[("amount", Some("null")), ("amount_minor", Some("1234"))],
            Accepts,
        ),
        e(
            "amount empty beside amount_minor",
            &[
                ("amount", Some(r#""""#)),
                ("amount_minor", Some(r#""1234""#)),
            ],
            Accepts,
        ),
        e(
            "amount_minor null beside amount",
            &[("amount_minor", Some("null"))],
            Accepts,
        ),
        e(
            "billed_amount_minor",
            &[
                ("billed_amount_minor", Some("1000")),
                ("billed_currency", Some(r#""EUR""#)),
            ],
            Accepts,
        ),
        e(
            "billed amount and currency all absent",
            &[
                ("billed_amount", Some(r#""""#)),
                ("billed_amount_minor", Some("null")),
                ("billed_currency", Some("null")),
            ],
            Accepts,
        ),
        e(
            "billed amount empty, currency empty",
            &[
                ("billed_amount", Some(r#""""#)),
                ("billed_currency", Some(r#""""#)),
            ],
            Accepts,
        ),
        e(
            "mcc as a number",
            &[("merchant_mcc", Some("5812"))],
            Accepts,
        ),
        e(
            "mcc as one digit",
            &[("merchant_mcc", Some(r#""5""#))],
            Accepts,
        ),
        e("mcc zero", &[("merchant_mcc", Some("0"))], Accepts),
        e(
            "metadata as a JSON object",
            &[(
                "metadata",
                Some(r#"{"cost_center":"42","billable":true,"rate":1.5,"note":null}"#),
            )],
            Accepts,
        ),
        e(
            "metadata as a JSON string (CSV)",
            &[(
                "metadata",
                Some(r#""{\"cost_center\":\"42\",\"billable\":true}""#),
            )],
            Accepts,
        ),
        e(
            "metadata string with whitespace",
            &[("metadata", Some(r#"" {\n} ""#))],
            Accepts,
        ),
        e(
            "metadata empty object",
            &[("metadata", Some("{}"))],
            Accepts,
        ),
        e("metadata null", &[("metadata", Some("null"))], Accepts),
        e(
            "metadata at its limits",
            &[("metadata", Some(&*metadata_keys(32)))],
            Accepts,
        ),
        e("category", &[("category", Some(r#""software""#))], Accepts),
        e(
            "posted_at date only",
            &[("posted_at", Some(r#""2026-11-03""#))],
            Accepts,
        ),
        e(
            "posted_at lower-case t and z",
            &[("posted_at", Some(r#""2026-11-03t10:00:00.123456z""#))],
            Accepts,
        ),
        e(
            "posted_at with a space for the T",
            &[("posted_at", Some(r#""2026-11-03 10:00:00+01:00""#))],
            Accepts,
        ),
        e(
            "posted_at leap second",
            &[("posted_at", Some(r#""2016-12-31T23:59:60Z""#))],
            Accepts,
        ),
        e(
            "posted_at 1969 local, 1970 UTC",
            &[("posted_at", Some(r#""1969-12-31T23:30:00-01:00""#))],
            Accepts,
        ),
        e(
            "posted_at 2200 local, 2199 UTC",
            &[("posted_at", Some(r#""2200-01-01T00:30:00+01:00""#))],
            Accepts,
        ),
        e(
            "transaction_date first day",
            &[("transaction_date", Some(r#""1970-01-01""#))],
            Accepts,
        ),
        e(
            "transaction_date last day",
            &[("transaction_date", Some(r#""2199-12-31""#))],
            Accepts,
        ),
        e(
            "transaction_date leap day",
            &[("transaction_date", Some(r#""2028-02-29""#))],
            Accepts,
        ),
        e(
            "masked card",
            &[("account_id", Some(r#""**** 1234""#))],
            Accepts,
        ),
        e(
            "account_id of spaces",
            &[("account_id", Some(r#""   ""#))],
            Accepts,
        ),
        e(
            "external_id with inner space",
            &[("external_id", Some(r#""tx 1""#))],
            Accepts,
        ),
        e(
            "source at its limit",
            &[("source", Some(&*long(64)))],
            Accepts,
        ),
        e(
            "memo at its limit in characters, not bytes",
            &[("memo", Some(&*s(&"é".repeat(1024))))],
            Accepts,
        ),
        e(
            "merchant_name at its limit",
            &[("merchant_name", Some(&*long(256)))],
            Accepts,
        ),
        // Refused by both. First the examples of record.rs
        // `each_rule_has_its_code`, then more.
        e(
            "source missing",
            &[("source", None)],
            Refuses("missing_field"),
        ),
        e(
            "amount missing",
            &[("amount", None)],
            Refuses("missing_field"),
        ),
        e(
            "unknown currency",
            &[("currency", Some(r#""ABC""#))],
            Refuses("invalid_currency"),
        ),
        e(
            "amount NaN",
            &[("amount", Some(r#""NaN""#))],
            Refuses("invalid_amount"),
        ),
        e(
            "amount a boolean",
            &[("amount", Some("true"))],
            Refuses("invalid_field"),
        ),
        e(
            "amount and amount_minor",
            &[("amount_minor", Some("5"))],
            Refuses("invalid_amount"),
        ),
        e(
            "month 13",
            &[("transaction_date", Some(r#""2026-13-01""#))],
            Refuses("invalid_date"),
        ),
        e(
            "date not ISO",
            &[("transaction_date", Some(r#""02/11/2026""#))],
            Refuses("invalid_date"),
        ),
        e(
            "posted_at not a time",
            &[("posted_at", Some(r#""yesterday""#))],
            Refuses("invalid_date"),
        ),
        e(
            "mcc five digits",
            &[("merchant_mcc", Some(r#""58123""#))],
            Refuses("invalid_mcc"),
        ),
        e(
            "mcc not digits",
            &[("merchant_mcc", Some(r#""5a12""#))],
            Refuses("invalid_mcc"),
        ),
        e(
            "status unknown",
            &[("status", Some(r#""settled""#))],
            Refuses("invalid_status"),
        ),
        e(
            "category unknown",
            &[("category", Some(r#""food""#))],
            Refuses("invalid_category"),
        ),
        e(
            "merchant_name too long",
            &[("merchant_name", Some(&*long(257)))],
            Refuses("field_too_long"),
        ),
        e(
            "unknown field",
            &[("colour", Some(r#""red""#))],
            Refuses("unknown_field"),
        ),
        e(
            "metadata nested",
            &[("metadata", Some(r#"{"a":{"b":1}}"#))],
            Refuses("invalid_metadata"),
        ),
        e(
            "external_id leading space",
            &[("external_id", Some(r#"" tx-1""#))],
            Refuses("invalid_field"),
        ),
        e(
            "source null",
            &[("source", Some("null"))],
            Refuses("missing_field"),
        ),
        e(
            "source empty",
            &[("source", Some(r#""""#))],
            Refuses("missing_field"),
        ),
        e(
            "source trailing space",
            &[("source", Some(r#""feed ""#))],
            Refuses("invalid_field"),
        ),
        e(
            "source trailing no-break space",
            &[("source", Some(r#""feed\u00a0""#))],
            Refuses("invalid_field"),
        ),
        e(
            "external_id only spaces",
            &[("external_id", Some(r#""   ""#))],
            Refuses("invalid_field"),
        ),
        e(
            "external_id with a tab",
            &[("external_id", Some(r#""tx\t1""#))],
            Refuses("invalid_field"),
        ),
        e(
            "related_external_id with a newline",
            &[("related_external_id", Some(r#""tx\n0""#))],
            Refuses("invalid_field"),
        ),
        e(
            "source too long",
            &[("source", Some(&*long(65)))],
            Refuses("field_too_long"),
        ),
        e(
            "external_id too long",
            &[("external_id", Some(&*long(129)))],
            Refuses("field_too_long"),
        ),
        e(
            "account_id too long",
            &[("account_id", Some(&*long(65)))],
            Refuses("field_too_long"),
        ),
        e(
            "account_id empty",
            &[("account_id", Some(r#""""#))],
            Refuses("missing_field"),
        ),
        e(
            "related_external_id too long",
            &[("related_external_id", Some(&*long(129)))],
            Refuses("field_too_long"),
        ),
        e(
            "employee_id too long",
            &[("employee_id", Some(&*long(129)))],
            Refuses("field_too_long"),
        ),
        e(
            "memo too long",
            &[("memo", Some(&*s(&"é".repeat(1025))))],
            Refuses("field_too_long"),
        ),
        e(
            "memo a number",
            &[("memo", Some("5"))],
            Refuses("invalid_field"),
        ),
        e(
            "currency null",
            &[("currency", Some("null"))],
            Refuses("missing_field"),
        ),
        e(
            "currency empty",
            &[("currency", Some(r#""""#))],
            Refuses("missing_field"),
        ),
        e(
            "currency two letters",
            &[("currency", Some(r#""us""#))],
            Refuses("invalid_currency"),
        ),
        e(
            "currency four letters",
            &[("currency", Some(r#""USDD""#))],
            Refuses("invalid_currency"),
        ),
        e(
            "currency a number",
            &[("currency", Some("840"))],
            Refuses("invalid_field"),
        ),
        e(
            "transaction_date null",
            &[("transaction_date", Some("null"))],
            Refuses("missing_field"),
        ),
        e(
            "transaction_date before the window",
            &[("transaction_date", Some(r#""1969-12-31""#))],
            Refuses("invalid_date"),
        ),
        e(
            "transaction_date after the window",
            &[("transaction_date", Some(r#""2200-01-01""#))],
            Refuses("invalid_date"),
        ),
        e(
            "transaction_date 29 February of a common year",
            &[("transaction_date", Some(r#""2026-02-29""#))],
            Refuses("invalid_date"),
        ),
        e(
            "posted_at hour 25",
            &[("posted_at", Some(r#""2026-11-03T25:00:00Z""#))],
            Refuses("invalid_date"),
        ),
        e(
            "posted_at without offset",
            &[("posted_at", Some(r#""2026-11-03T10:00:00""#))],
            Refuses("invalid_date"),
        ),
        e(
            "posted_at space form, month 13",
            &[("posted_at", Some(r#""2026-13-03 10:00:00Z""#))],
            Refuses("invalid_date"),
        ),
        e(
            "posted_at date before the window",
            &[("posted_at", Some(r#""1969-12-31""#))],
            Refuses("invalid_date"),
        ),
        e(
            "posted_at too long",
            &[(
                "posted_at",
                Some(r#""2026-11-03T10:00:00.12345678901234567890Z""#),
            )],
            Refuses("field_too_long"),
        ),
        e(
            "amount empty alone",
            &[("amount", Some(r#""""#))],
            Refuses("missing_field"),
        ),
        e(
            "amount null alone",
            &[("amount", Some("null"))],
            Refuses("missing_field"),
        ),
        e(
            "amount with thousands separator",
            &[("amount", Some(r#""1,000.00""#))],
            Refuses("invalid_amount"),
        ),
        e(
            "amount without fraction digits",
            &[("amount", Some(r#""1.""#))],
            Refuses("invalid_amount"),
        ),
        e(
            "amount without integer digits",
            &[("amount", Some(r#"".5""#))],
            Refuses("invalid_amount"),
        ),
        e(
            "amount an object",
            &[("amount", Some("{}"))],
            Refuses("invalid_field"),
        ),
        e(
            "amount_minor with a fraction",
            &[("amount", None), ("amount_minor", Some(r#""1.5""#))],
            Refuses("amount_precision"),
        ),
        e(
            "amount_minor number with a fraction",
            &[("amount", None), ("amount_minor", Some("1.5"))],
            Refuses("amount_precision"),
        ),
        e(
            "billed amount without currency",
            &[("billed_amount", Some(r#""10.00""#))],
            Refuses("missing_field"),
        ),
        e(
            "billed amount with empty currency",
            &[
                ("billed_amount", Some(r#""10.00""#)),
                ("billed_currency", Some(r#""""#)),
            ],
            Refuses("missing_field"),
        ),
        e(
            "billed amount with unknown currency",
            &[
                ("billed_amount", Some(r#""10.00""#)),
                ("billed_currency", Some(r#""xyz""#)),
            ],
            Refuses("invalid_currency"),
        ),
        e(
            "billed_amount and billed_amount_minor",
            &[
                ("billed_amount", Some(r#""10.00""#)),
                ("billed_amount_minor", Some("1000")),
                ("billed_currency", Some(r#""EUR""#)),
            ],
            Refuses("invalid_amount"),
        ),
        e(
            "mcc negative",
            &[("merchant_mcc", Some("-5"))],
            Refuses("invalid_mcc"),
        ),
        e(
            "mcc number too large",
            &[("merchant_mcc", Some("10000"))],
            Refuses("invalid_mcc"),
        ),
        e(
            "mcc a boolean",
            &[("merchant_mcc", Some("true"))],
            Refuses("invalid_field"),
        ),
        e(
            "status in upper case",
            &[("status", Some(r#""POSTED""#))],
            Refuses("invalid_status"),
        ),
        e(
            "status a number",
            &[("status", Some("1"))],
            Refuses("invalid_field"),
        ),
        e(
            "category capitalised",
            &[("category", Some(r#""Software""#))],
            Refuses("invalid_category"),
        ),
        e(
            "metadata empty string",
            &[("metadata", Some(r#""""#))],
            Refuses("invalid_metadata"),
        ),
        e(
            "metadata string not an object",
            &[("metadata", Some(r#""cost center 42""#))],
            Refuses("invalid_metadata"),
        ),
        e(
            "metadata a number",
            &[("metadata", Some("5"))],
            Refuses("invalid_metadata"),
        ),
        e(
            "metadata an array",
            &[("metadata", Some("[]"))],
            Refuses("invalid_metadata"),
        ),
        e(
            "metadata value an array",
            &[("metadata", Some(r#"{"a":[1]}"#))],
            Refuses("invalid_metadata"),
        ),
        e(
            "metadata 33 keys",
            &[("metadata", Some(&*metadata_keys(33)))],
            Refuses("invalid_metadata"),
        ),
        e(
            "metadata empty key",
            &[("metadata", Some(r#"{"":"v"}"#))],
            Refuses("invalid_metadata"),
        ),
        e(
            "metadata key too long",
            &[("metadata", Some(&*format!("{{{}:1}}", long(65))))],
            Refuses("invalid_metadata"),
        ),
        e(
            "metadata value too long",
            &[("metadata", Some(&*format!("{{\"k\":{}}}", long(257))))],
            Refuses("invalid_metadata"),
        ),
        e(
            "field name in another case",
            &[("Amount", Some(r#""1.00""#))],
            Refuses("unknown_field"),
        ),
        // Refused by the server, beyond what JSON Schema can state.
        e(
            "PAN as account_id",
            &[("account_id", Some(r#""4111 1111 1111 1111""#))],
            Limit("pan_detected"),
        ),
        e(
            "PAN in memo",
            &[("memo", Some(r#""paid with 5500-0000-0000-0004""#))],
            Limit("pan_detected"),
        ),
        e(
            "PAN in metadata value",
            &[("metadata", Some(r#"{"card":"4242424242424242"}"#))],
            Limit("pan_detected"),
        ),
        e(
            "PAN in source",
            &[("source", Some(r#""feed-4111111111111111""#))],
            Limit("pan_detected"),
        ),
        e(
            "PAN as external_id",
            &[("external_id", Some(r#""4111-1111-1111-1111""#))],
            Limit("pan_detected"),
        ),
        e(
            "PAN in related_external_id",
            &[("related_external_id", Some(r#""auth 5500 0000 0000 0004""#))],
            Limit("pan_detected"),
        ),
        e(
            "PAN as employee_id",
            &[("employee_id", Some(r#""378282246310005""#))],
            Limit("pan_detected"),
        ),
        e(
            "PAN as metadata key",
            &[("metadata", Some(r#"{"4242424242424242":"x"}"#))],
            Limit("pan_detected"),
        ),
        e(
            "too many decimals",
            &[("amount", Some(r#""12.345""#))],
            Limit("amount_precision"),
        ),
        e(
            "too many decimals, JSON number",
            &[("amount", Some("12.345"))],
            Limit("amount_precision"),
        ),
        e(
            "decimals in JPY",
            &[("currency", Some(r#""JPY""#)), ("amount", Some(r#""1.5""#))],
            Limit("amount_precision"),
        ),
        e(
            "amount_minor exponent leaves a fraction",
            &[("amount", None), ("amount_minor", Some(r#""15e-1""#))],
            Limit("amount_precision"),
        ),
        e(
            "amount beyond i64",
            &[("amount", Some(r#""1e40""#))],
            Limit("amount_overflow"),
        ),
        e(
            "amount_minor beyond i64",
            &[
                ("amount", None),
                ("amount_minor", Some("10000000000000000000")),
            ],
            Limit("amount_overflow"),
        ),
        e(
            "amount number with a five-digit exponent",
            &[("amount", Some("1e00001"))],
            Limit("invalid_amount"),
        ),
        e(
            "mcc spelled with a fraction",
            &[("merchant_mcc", Some("58.0"))],
            Limit("invalid_mcc"),
        ),
        e(
            "mcc spelled with an exponent",
            &[("merchant_mcc", Some("5e1"))],
            Limit("invalid_mcc"),
        ),
        e(
            "mcc minus zero",
            &[("merchant_mcc", Some("-0"))],
            Limit("invalid_mcc"),
        ),
        e(
            "metadata string not JSON",
            &[("metadata", Some(r#""{cost center}""#))],
            Limit("invalid_metadata"),
        ),
        e(
            "metadata string nested",
            &[("metadata", Some(r#""{\"a\":{\"b\":1}}""#))],
            Limit("invalid_metadata"),
        ),
        e(
            "metadata number of 301 characters",
            &[("metadata", Some(&*format!("{{\"n\":{big_number}}}")))],
            Limit("invalid_metadata"),
        ),
        e(
            "posted_at 1969 in UTC",
            &[("posted_at", Some(r#""1969-12-31T12:00:00Z""#))],
            Limit("invalid_date"),
        ),
        e(
            "posted_at 2200 in UTC",
            &[("posted_at", Some(r#""2200-01-01T00:30:00Z""#))],
            Limit("invalid_date"),
        ),
        e(
            "posted_at space form, 30 February",
            &[("posted_at", Some(r#""2026-02-30 10:00:00Z""#))],
            Limit("invalid_date"),
        ),
        // Accepted by the server against its own contract.
        e(
            "transaction_date padded with a space",
            &[("transaction_date", Some(r#"" 2026-1-02""#))],
            Refuses("invalid_date"),
        ),
        e(
            "transaction_date with a plus",
            &[("transaction_date", Some(r#""+2026-1-02""#))],
            Refuses("invalid_date"),
        ),
        e(
            "posted_at date unpadded",
            &[("posted_at", Some(r#""2026-1-2""#))],
            Refuses("invalid_date"),
        ),
        e(
            "posted_at with a Unicode minus",
            &[("posted_at", Some(r#""2026-11-03T10:00:00\u221201:00""#))],
            Refuses("invalid_date"),
        ),
        e(
            "posted_at leap second at 10:00",
            &[("posted_at", Some(r#""2026-11-03T10:00:60Z""#))],
            Refuses("invalid_date"),
        ),
        e(
            "billed_currency unknown without a billed amount",
            &[("billed_currency", Some(r#""XYZ""#))],
            Refuses("invalid_currency"),
        ),
        e(
            "billed_currency a number without a billed amount",
            &[("billed_currency", Some("978"))],
            Refuses("invalid_field"),
        ),
    ];
    for field in [
        "status",
        "related_external_id",
        "posted_at",
        "billed_amount",
        "billed_amount_minor",
        "billed_currency",
        "merchant_name",
        "merchant_mcc",
        "employee_id",
        "memo",
        "category",
    ] {
        out.push(e(
            &format!("{field} null"),
            &[(field, Some("null"))],
            Accepts,
        ));
        out.push(e(
            &format!("{field} empty"),
            &[(field, Some(r#""""#))],
            Accepts,
        ));
    }
    for raw in ["[1,2]", "\"x\"", "5", "null"] {
        out.push((
            format!("not an object: {raw}"),
            raw.to_string(),
            Refuses("invalid_json"),
        ));
    }
    out
}

#[test]
fn schema_and_server_agree_on_every_example() {
    let validator = validator();
    let examples = examples();
    // Every listed limit is shown by at least one example.
    for (code, _) in SCHEMA_CANNOT_EXPRESS {
        assert!(
            examples
                .iter()
                .any(|(_, _, expect)| matches!(expect, Limit(c) if c == code)),
            "no example of the limit on {code}"
        );
    }
    let failures: Vec<String> = examples
        .iter()
        .filter_map(|(name, raw, expect)| disagreement(&validator, name, raw, *expect))
        .collect();
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_line_of_the_demo_feed() {
    let validator = validator();
    let feed = include_str!("../../demo/card-feed.ndjson");
    // The feed's deliberately bad lines, by external_id, and what each side
    // must say: XYZ is outside the currency enum; a PAN and too many decimals
    // are beyond JSON Schema.
    let bad = [
        ("bad-1", Refuses("invalid_currency")),
        ("bad-2", Limit("pan_detected")),
        ("bad-3", Limit("amount_precision")),
    ];
    let mut failures = Vec::new();
    let mut accepted = 0;
    let mut rejected = BTreeSet::new();
    for (n, line) in feed.lines().enumerate() {
        let name = format!("line {}", n + 1);
        let id = serde_json::from_str::<Value>(line).expect("the feed is NDJSON")["external_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let expect = match bad.iter().find(|(bad_id, _)| *bad_id == id) {
            Some((_, expect)) => *expect,
            None => Accepts,
        };
        match server(line) {
            Ok(()) => accepted += 1,
            Err(_) => {
                rejected.insert(id);
            }
        }
        failures.extend(disagreement(&validator, &name, line, expect));
    }
    assert!(
        failures.is_empty(),
        "{} disagreements:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        rejected,
        bad.iter().map(|(id, _)| id.to_string()).collect(),
        "the server rejects exactly the three bad lines"
    );
    assert!(accepted > 3000, "only {accepted} lines accepted");
}

#[test]
fn schema_properties_are_the_record_fields() {
    let schema: Value = serde_json::from_str(RECORD_JSON_SCHEMA).unwrap();
    let properties: BTreeSet<&str> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let fields: BTreeSet<&str> = FIELDS.iter().copied().collect();
    assert_eq!(properties, fields);
}

/// The currency enum is the server's table, and the case-insensitive pattern
/// beside it takes exactly the same codes: every three-letter word, in upper,
/// lower and mixed case, gets the same answer from both sides.
#[test]
fn currency_codes_match_the_currency_table_in_any_case() {
    let schema: Value = serde_json::from_str(RECORD_JSON_SCHEMA).unwrap();
    let listed: Vec<&str> = schema["$defs"]["currency"]["anyOf"][0]["enum"]
        .as_array()
        .expect("the currency enum")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let table: Vec<&str> = Currency::all().map(|c| c.code()).collect();
    assert_eq!(listed, table);

    let validator = validator();
    let mut failures = Vec::new();
    for word in 0..26u32.pow(3) {
        let letters = [word / 676, word / 26 % 26, word % 26].map(|i| (b'A' + i as u8) as char);
        let upper: String = letters.iter().collect();
        let lower = upper.to_ascii_lowercase();
        let mixed: String = letters
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if (word as usize + i).is_multiple_of(2) {
                    c.to_ascii_lowercase()
                } else {
                    *c
                }
            })
            .collect();
        for code in [upper, lower, mixed] {
            let expect = if Currency::from_code(&code).is_some() {
                Accepts
            } else {
                Refuses("invalid_currency")
            };
            // A whole amount, valid in every currency whatever its minor unit.
            let raw = record(&[("currency", Some(&*s(&code))), ("amount", Some(r#""12""#))]);
            failures.extend(disagreement(&validator, &code, &raw, expect));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The identifier patterns spell out Rust's `trim` (Unicode White_Space) and
/// `char::is_control` by hand; check them against the server for every
/// character up to U+3000 (all of both sets) and a few beyond.
#[test]
fn identifier_patterns_match_trim_and_control_characters() {
    let validator = validator();
    let mut failures = Vec::new();
    let mut refused = 0;
    let chars = (0..=0x3000)
        .chain([0xFEFF, 0xFFFD, 0x1F600, 0x10FFFF])
        .filter_map(char::from_u32);
    for c in chars {
        for (field, value) in [
            ("external_id", format!("{c}x")),
            ("external_id", format!("x{c}")),
            ("external_id", format!("x{c}x")),
            ("related_external_id", format!("x{c}x")),
        ] {
            let raw = record(&[(field, Some(&*s(&value)))]);
            let expect = match server(&raw) {
                Ok(()) => Accepts,
                Err(code) => Refuses(code),
            };
            // Only the two rules under test may refuse these values.
            assert!(
                matches!(expect, Accepts | Refuses("invalid_field")),
                "U+{:04X} in {field}: {expect:?}",
                c as u32
            );
            refused += usize::from(matches!(expect, Refuses(_)));
            let name = format!("U+{:04X} in {field} {value:?}", c as u32);
            failures.extend(disagreement(&validator, &name, &raw, expect));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // 65 control characters refused in all four places, 25 whitespace
    // characters at either end: the patterns were really exercised.
    assert_eq!(refused, 65 * 4 + (25 - 6) * 2);
}
