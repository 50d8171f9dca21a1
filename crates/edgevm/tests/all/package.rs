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

/// deploy/Containerfile cannot be built here (no container engine, no registry): what can be
/// checked without one is. The files it copies exist, the binary needs no library beyond
/// those of `debian:bookworm-slim`, and the image's configuration (the packaged one after the
/// file's own `sed`) passes `edgevm check` and serves the hello example it copies in.
#[test]
fn the_containerfile_copies_what_exists_and_its_configuration_serves() {
    require_kvm();
    let root = root();
    let cf = std::fs::read_to_string(root.join("deploy/Containerfile")).unwrap();
    // COPY from the build context: the files exist.
    for line in cf
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let src = line.split_whitespace().nth(1).unwrap();
        assert!(root.join(src).exists(), "{line}: no {src}");
    }
    // COPY --from=build /src/guests/NAME: a guest guest/build.sh makes.
    let from_guests: Vec<&str> = cf
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("/src/guests/"))
        .collect();
    assert!(!from_guests.is_empty());
    for g in from_guests {
        assert!(guests().join(g).exists(), "the image copies guest {g}");
    }
    // Shared libraries: only glibc's and libgcc's (in every Debian base image).
    let ldd = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_edgevm"))
        .output()
        .unwrap();
    for l in String::from_utf8_lossy(&ldd.stdout).lines() {
        let lib = l.split_whitespace().next().unwrap_or("");
        assert!(
            [
                "linux-vdso",
                "libc.so",
                "libm.so",
                "libgcc_s.so",
                "/lib64/ld-linux"
            ]
            .iter()
            .any(|ok| lib.starts_with(ok)),
            "edgevm needs {lib}: add its package to the Containerfile's runtime stage"
        );
    }
    // The image's configuration: the packaged file after the Containerfile's sed.
    let sed = cf
        .lines()
        .find_map(|l| l.split("sed -i '").nth(1))
        .and_then(|s| s.split('\'').next())
        .expect("the Containerfile edits the listen address with sed");
    let dir = scratch("containerfile");
    let cfg = dir.join("edgevm.json");
    std::fs::copy(root.join("deploy/debian/edgevm.json"), &cfg).unwrap();
    let st = Command::new("sed")
        .args(["-i", sed])
        .arg(&cfg)
        .status()
        .unwrap();
    assert!(st.success());
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        text.contains("\"listen\": \"0.0.0.0:8080\""),
        "the Containerfile's sed no longer matches deploy/debian/edgevm.json:\n{text}"
    );
    // Its program path, pointed at the guest the image copies there.
    let text = text.replace(
        "/var/lib/edgevm/programs/hello",
        guests().join("example_hello").to_str().unwrap(),
    );
    std::fs::write(&cfg, text).unwrap();
    let out = edgevm_run(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.code(), Some(0), "{}", out.all());
    // (On a free loopback port instead of the image's 0.0.0.0:8080.)
    let s = crate::harness::Server::start_args(&dir, &[&cfg], &[], &["--drain-seconds", "0"]);
    let body = s.ok("/hello/");
    s.stop();
    assert_eq!(body, "Hello World!\n");
}
