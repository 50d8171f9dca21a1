//! `edgevm run`: boot programs to exit or wait_for_requests (issue: engine).

use crate::common::*;

fn p(s: &std::path::Path) -> &str {
    s.to_str().unwrap()
}

#[test]
fn hello_world_from_every_toolchain() {
    for (bin, text) in [
        ("hello", "Hello World from C (glibc)!"),
        ("hello_musl", "Hello World from C (musl)!"),
        ("hello_cpp", "Hello World from C++!"),
        ("hello_rust", "Hello World from Rust!"),
        ("hello_pie", "Hello World from C (glibc)!"),
    ] {
        let r = edgevm_run(&["run", p(&guest(bin))]);
        assert_eq!(r.code(), Some(0), "{bin}: {}", r.all());
        assert!(
            r.stdout.contains(&format!(">>> [{bin}] {text}")),
            "{bin}: {}",
            r.all()
        );
    }
}
