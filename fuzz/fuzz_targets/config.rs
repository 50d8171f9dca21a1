#![no_main]
//! `cargo fuzz run config`: see crates/edgevm-fuzz-targets (config) for what it drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgevm_fuzz_targets::config(data));
