#![no_main]
//! `cargo fuzz run elf`: see crates/edgevm-fuzz-targets (elf) for what it drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgevm_fuzz_targets::elf(data));
