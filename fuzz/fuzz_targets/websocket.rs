#![no_main]
//! `cargo fuzz run websocket`: see crates/edgevm-fuzz-targets (websocket) for what it drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgevm_fuzz_targets::websocket(data));
