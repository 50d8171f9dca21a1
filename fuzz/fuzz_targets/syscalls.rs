#![no_main]
//! `cargo fuzz run syscalls`: see crates/edgevm-fuzz-targets (syscalls) for what it drives and checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| edgevm_fuzz_targets::syscalls(data));
