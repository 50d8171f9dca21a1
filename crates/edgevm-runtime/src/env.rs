//! The `EDGEVM_*` environment variables, read in this one place (docs/CONFIG.md lists them).
//! Each is a number; an unset or unparsable value means the default.

use std::time::Duration;

/// `name` as a number, if set and parsable.
fn number(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// `EDGEVM_HTTP_THREADS`: HTTP worker threads (request VMs run on them, see pool.rs); default
/// one per CPU. Both the server and the native baselines use this.
pub fn http_threads() -> usize {
    number("EDGEVM_HTTP_THREADS")
        .filter(|&n| n > 0)
        .map(|n| n as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

/// `EDGEVM_QUEUE_TIMEOUT_MS` (> 0): how long a request waits for a free VM, if set.
pub fn queue_timeout_ms() -> Option<u64> {
    number("EDGEVM_QUEUE_TIMEOUT_MS").filter(|&ms| ms > 0)
}

/// `EDGEVM_INLINE_SLICE_US`: the inline time slice in µs, if set (0: none).
pub fn inline_slice_us() -> Option<u64> {
    number("EDGEVM_INLINE_SLICE_US")
}

/// `EDGEVM_FETCH_TIMEOUT_MS` (> 0): the budget for downloading one program, if set.
pub fn fetch_timeout() -> Option<Duration> {
    number("EDGEVM_FETCH_TIMEOUT_MS")
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
}

/// `EDGEVM_SPARE_VMS`: KVM VMs kept made ahead per memory size for snapshot starts (spare.rs),
/// if set (0: none).
pub fn spare_vms() -> Option<u64> {
    number("EDGEVM_SPARE_VMS")
}
