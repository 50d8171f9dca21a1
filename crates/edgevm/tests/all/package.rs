//! The Debian package (scripts/package.sh) built from the binary under test and installed on
//! this machine by scripts/package-test.sh: dpkg -i, the service's command run as its user
//! (or the unit itself under systemd), a request, a stop, dpkg -r / -P, nothing left running.
//! Needs root (dpkg); refuses to touch a machine where edgevm is installed already.

use std::process::Command;

use crate::common::*;
use crate::harness::free_port;

#[test]
fn the_debian_package_installs_serves_stops_and_removes_cleanly() {
    require_kvm();
    // SAFETY: getuid cannot fail and touches no memory.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: dpkg -i needs root");
        return;
    }
    let root = root();
    let dir = scratch("package");
    // A stripped copy of the binary under test, gzip: a quick build.
    let bin = dir.join("edgevm");
    std::fs::copy(env!("CARGO_BIN_EXE_edgevm"), &bin).unwrap();
    let st = Command::new("strip").arg(&bin).status().unwrap();
    assert!(st.success(), "strip: {st}");
    let out = Command::new(root.join("scripts/package.sh"))
        .arg(&bin)
        .arg(dir.join("deb"))
        .env("EDGEVM_DEB_COMPRESS", "gzip")
        .env("EDGEVM_GUESTS", guests())
        .output()
        .unwrap();
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(out.status.success(), "package.sh: {}", text(&out));
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = Command::new(root.join("scripts/package-test.sh"))
        .arg(&deb)
        .env("EDGEVM_TEST_PORT", free_port().to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "package-test.sh: {}", text(&out));
    assert!(text(&out).contains("package-test: ok"), "{}", text(&out));
}
