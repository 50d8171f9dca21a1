#![no_main]
//! `cargo fuzz run http`: see crates/edgevm-fuzz-targets (http) for what it drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgevm_fuzz_targets::http(data));
