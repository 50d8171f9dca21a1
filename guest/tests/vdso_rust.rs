// vdso_rust: Rust's std clocks (Instant, SystemTime) in a VM (tests/all/vdso.rs runs it with
// `edgevm run --verbose-syscalls`: through the vDSO they make no clock_gettime system call).
use std::time::{Instant, SystemTime, UNIX_EPOCH};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let start = Instant::now();
    let mut last = start;
    let mut back = 0;
    for _ in 0..n {
        let now = Instant::now();
        if now < last {
            back += 1;
        }
        last = now;
    }
    let real = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    println!(
        "rust: {n} readings, back={back}, elapsed_ok={}, real={}",
        last >= start,
        real.as_nanos()
    );
}
