#![no_main]
//! `cargo fuzz run api`: see crates/edgevm-fuzz-targets (api) for what it drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgevm_fuzz_targets::api(data));
