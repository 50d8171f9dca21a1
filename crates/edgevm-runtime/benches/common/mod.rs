//! Helpers shared by the benchmarks: guest binaries and simple statistics.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The directory with the guest binaries (EDGEVM_GUESTS or target/guests), building them
/// with guest/build.sh when any of `needed` is missing.
pub fn guests(needed: &[&str]) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::var_os("EDGEVM_GUESTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/guests"));
    if needed.iter().any(|n| !dir.join(n).exists()) {
        let st = Command::new(root.join("guest/build.sh"))
            .arg(&dir)
            .status()
            .expect("run guest/build.sh");
        assert!(st.success(), "guest/build.sh failed");
    }
    dir
}

/// (min, median) of the values.
pub fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (v[0], median)
}

/// A duration in microseconds.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
