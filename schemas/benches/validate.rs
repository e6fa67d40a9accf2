//! Validation cost per record against a reference measured in the same run:
//! parsing the same JSON into a `serde_json::Value` (what any JSON edge pays
//! at least). `cargo bench -p spendstream-schemas`; compare each line with
//! the reference.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use spendstream_schemas::{ExpenseRecord, RecordView};
use std::hint::black_box;

const RECORD: &str = r#"{"source":"visa-commercial","external_id":"visa-100042","account_id":"card_tok_0034","status":"posted","transaction_date":"2026-08-05","posted_at":"2026-08-06T21:30:00Z","amount":"1234.56","currency":"USD","merchant_name":"SQ *BLUE BOTTLE COFFEE #0042","merchant_mcc":"5814","employee_id":"emp-020","memo":"client dinner"}"#;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Elements(1));
    group.bench_function("reference_serde_json_value", |b| {
        b.iter(|| serde_json::from_str::<serde_json::Value>(black_box(RECORD)).unwrap())
    });
    group.bench_function("validate", |b| {
        b.iter(|| ExpenseRecord::from_json(black_box(RECORD)).unwrap())
    });
    // What the edge pays: the record checked, its text borrowed.
    group.bench_function("validate_view", |b| {
        b.iter(|| RecordView::from_json(black_box(RECORD)).unwrap())
    });
    // What processors pay per entry: the envelope, then its record.
    let entry = spendstream_schemas::EnvelopeWriter::new("acme", "b1", "r1", 5).write(RECORD);
    group.bench_function("entry_full_envelope_read", |b| {
        b.iter(|| {
            let e = spendstream_schemas::Envelope::from_slice(black_box(&entry)).unwrap();
            ExpenseRecord::from_json(e.record.get()).unwrap()
        })
    });
    group.bench_function("entry_split", |b| {
        b.iter(|| {
            let (_, text) = spendstream_schemas::Envelope::split(black_box(&entry)).unwrap();
            ExpenseRecord::from_json(text).unwrap()
        })
    });
    // What processors pay per entry the edge packed: no JSON, no checks.
    let packed = spendstream_schemas::PackedWriter::new("acme", "b1", "r1", 5)
        .write(&ExpenseRecord::from_json(RECORD).unwrap());
    group.bench_function("entry_packed", |b| {
        b.iter(|| spendstream_schemas::unpack(black_box(&packed)).unwrap())
    });
    // What they pay now: the record's text borrowed from the entry.
    group.bench_function("entry_packed_borrowed", |b| {
        b.iter(|| spendstream_schemas::unpack_borrowed(black_box(&packed)).unwrap())
    });
    // What the edge pays for an entry after validation: the JSON text
    // copied into an envelope, or the record packed.
    let view = RecordView::from_json(RECORD).unwrap();
    let json_writer = spendstream_schemas::EnvelopeWriter::new("acme", "b1", "r1", 5);
    group.bench_function("write_json_envelope", |b| {
        b.iter(|| json_writer.write(black_box(RECORD)))
    });
    let packed_writer = spendstream_schemas::PackedWriter::new("acme", "b1", "r1", 5);
    group.bench_function("write_packed", |b| {
        b.iter(|| packed_writer.write(black_box(&view)))
    });
    // A record's id, against what it was: `uuid`'s own v5 of the key.
    let id = || black_box(("acme", "visa-commercial", "visa-100042"));
    group.bench_function("expense_id", |b| {
        b.iter(|| {
            let (tenant, source, external_id) = id();
            spendstream_schemas::expense_id(tenant, source, external_id)
        })
    });
    group.bench_function("expense_id_uuid_new_v5", |b| {
        b.iter(|| {
            let (tenant, source, external_id) = id();
            uuid::Uuid::new_v5(
                &spendstream_schemas::identity::EXPENSE_ID_NAMESPACE,
                spendstream_schemas::identity_key(tenant, source, external_id).as_bytes(),
            )
        })
    });
    group.finish();
    c.bench_function("money_parse", |b| {
        let usd = spendstream_schemas::Currency::from_code("USD").unwrap();
        b.iter(|| spendstream_schemas::Money::parse(black_box("1234567.89"), usd).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
