//! Shared helpers: KVM check, guest builds, running the edgevm binary.
#![allow(dead_code)] // helpers are shared by test modules that use different subsets

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Fail (never skip) when KVM is not usable.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("these tests need KVM: cannot open /dev/kvm ({e}). Run on a machine with /dev/kvm (and permission to open it).");
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Directory with all guest binaries, built once per test run (guest/build.sh is incremental;
/// `EDGEVM_GUESTS_PREBUILT` set: already built).
pub fn guests() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("EDGEVM_GUESTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("target/guests"));
        if std::env::var_os("EDGEVM_GUESTS_PREBUILT").is_some() {
            // Built outside (scripts/hwkvm.sh runs the tests where no compiler is).
            return dir;
        }
        let out = Command::new(root().join("guest/build.sh"))
            .arg(&dir)
            .output()
            .expect("run guest/build.sh");
        assert!(
            out.status.success(),
            "guest/build.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

/// How much slower than a development machine the tests run: `EDGEVM_TEST_TIME_SCALE` (default
/// 1). scripts/hwkvm.sh sets it where everything runs under software emulation; tests whose
/// configured limits must leave room for legitimate work scale them with it.
pub fn time_scale() -> f64 {
    std::env::var("EDGEVM_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v >= 1.0)
        .unwrap_or(1.0)
}

/// The tests run on kvm_pvm (a software hypervisor: SYSCALL stays at CPL3, CPL3 code runs on
/// the host's CR4/XCR0), not on hardware KVM (kvm_amd/kvm_intel; scripts/hwkvm.sh).
pub fn kvm_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Path of one guest binary.
pub fn guest(name: &str) -> PathBuf {
    let p = guests().join(name);
    assert!(p.exists(), "guest {name} was not built");
    p
}

/// The edgevm binary under test.
pub fn edgevm() -> Command {
    require_kvm();
    Command::new(env!("CARGO_BIN_EXE_edgevm"))
}

/// Result of a command, with helpers.
pub struct Run {
    pub out: Output,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.out.status.code()
    }
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Run `edgevm ARGS`, with a generous timeout.
pub fn edgevm_run(args: &[&str]) -> Run {
    let out = edgevm()
        .args(args)
        .env("EDGEVM_LOG", "warn")
        .output()
        .expect("spawn edgevm");
    Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        out,
    }
}

/// A scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = root().join("target/test-scratch").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// xorshift64*: deterministic, so a failure reproduces from its seed.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A number below `n` (0 for n = 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// GET `url` on a request VM made in the test: the body of a 200, else the status or the
/// failure's message.
pub fn vm_get(
    vm: &mut edgevm_runtime::request_vm::RequestVm,
    url: String,
) -> Result<String, String> {
    let req = edgevm_runtime::request::GuestRequest {
        method: "GET".into(),
        url,
        ..Default::default()
    };
    match vm.handle(&req).0 {
        Ok(r) if r.status == 200 => Ok(String::from_utf8_lossy(&r.body).into_owned()),
        Ok(r) => Err(format!("status {}", r.status)),
        Err(e) => Err(e.message),
    }
}
