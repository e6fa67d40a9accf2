//! Fuzzes the bai2 body decoder and validation of what it frames.
#![no_main]

#[path = "common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::check(spendstream_ingest::decode::Format::Bai2, data);
});
