//! Builds the guest vDSO (guest/vdso/vdso.c with its linker script) into OUT_DIR/vdso.so, which
//! src/vdso.rs embeds. gcc is the toolchain every edgevm build already needs (Rust links with
//! it; scripts/deps.sh installs it).
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../guest/vdso");
    let src = dir.join("vdso.c");
    let lds = dir.join("vdso.lds");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed={}", lds.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("vdso.so");
    let status = Command::new(std::env::var("EDGEVM_VDSO_CC").unwrap_or_else(|_| "gcc".into()))
        .args([
            "-O2",
            "-fPIC",
            "-ffreestanding",
            "-fno-stack-protector",
            "-fno-asynchronous-unwind-tables",
            "-fno-plt",
            "-fcf-protection=none",
            "-nostdlib",
            "-shared",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-Wl,--hash-style=both",
            "-Wl,-soname=linux-vdso.so.1",
            "-Wl,-z,max-page-size=4096",
            "-Wl,--build-id=none",
            "-Wl,-s",
        ])
        .arg(format!("-Wl,-T,{}", lds.display()))
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run gcc to build the guest vDSO: {e} (apt-get install gcc)")
        });
    assert!(
        status.success(),
        "building the guest vDSO ({}) failed",
        src.display()
    );
}
