//! Least privilege: `edgevm serve` runs as an unprivileged user whose only extra right is
//! /dev/kvm (scripts/run-unprivileged.sh, docs/SECURITY.md).
//!
//! As root, the test sets that up the way an operator would (the script creates the system
//! user `edgevm-test` in group `kvm` and gives /dev/kvm to that group, mode 0660), copies the
//! binary, the programs and the configuration to a directory that user can read (program
//! files owned by root, read-only; one data directory it owns), starts the server through the
//! script and checks what the process holds: that user's ids, the kvm group only, no
//! capabilities, no_new_privs; that it serves requests and writes a storage state file in its
//! data directory; and that the same user without the kvm group cannot start at all. Not as
//! root, the whole suite already runs unprivileged: the test checks the server holds no
//! capabilities and serves.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::harness::*;

const USER: &str = "edgevm-test";

/// `key:` line of /proc/<pid>/status, whitespace-separated fields.
fn status_field(pid: u32, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn id(args: &[&str]) -> u32 {
    let out = Command::new("id").args(args).output().unwrap();
    assert!(out.status.success(), "id {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Kills the server (by PID) if the test did not stop it.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn install(from: &Path, to: &Path, mode: u32) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn serves_as_an_unprivileged_user_with_only_kvm_access() {
    require_kvm();
    if !is_root() {
        let s = Server::with_config(
            "privilege_user",
            &format!(
                r#"{{ "hello": {{ "filename": {} }} }}"#,
                js(guest("example_hello").to_string_lossy())
            ),
        );
        assert_eq!(s.ok("/hello"), "Hello World!\n");
        assert_ne!(status_field(s.pid(), "Uid")[1], "0");
        assert_eq!(status_field(s.pid(), "CapEff"), ["0000000000000000"]);
        return;
    }

    let script = root().join("scripts/run-unprivileged.sh");
    let st = Command::new(&script)
        .args(["--user", USER, "--setup-only"])
        .status()
        .unwrap();
    assert!(st.success(), "{} --setup-only: {st}", script.display());
    let uid = id(&["-u", USER]);
    let kvm = Command::new("getent")
        .args(["group", "kvm"])
        .output()
        .unwrap();
    let kvm = String::from_utf8_lossy(&kvm.stdout);
    let kvm_gid: u32 = kvm.split(':').nth(2).unwrap().parse().unwrap();
    let meta = std::fs::metadata("/dev/kvm").unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o777), (kvm_gid, 0o660));

    // A directory the user can read: binary and programs owned by root, read-only for
    // others; a data directory the user owns for the storage program and its state file.
    let dir = std::env::temp_dir().join(format!("edgevm-unprivileged-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("edgevm");
    install(Path::new(env!("CARGO_BIN_EXE_edgevm")), &bin, 0o755);
    install(&guest("example_hello"), &dir.join("hello"), 0o644);
    install(&guest("state_file"), &dir.join("data/sf"), 0o644);
    let chown = Command::new("chown")
        .arg(format!("{USER}:{USER}"))
        .arg(dir.join("data"))
        .status()
        .unwrap();
    assert!(chown.success());
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{ "hello": {{ "filename": {} }},
                 "sf": {{ "filename": {}, "storage": true }} }}"#,
            js(dir.join("hello").to_string_lossy()),
            js(dir.join("data/sf").to_string_lossy())
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();

    // Without the kvm group the same user cannot even start: /dev/kvm is all it lacks.
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={}", id(&["-g", USER])),
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
        ])
        .arg(&bin)
        .args(["serve", "--config"])
        .arg(&cfg)
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started without the kvm group:\n{err}"
    );
    assert!(err.contains("/dev/kvm"), "{err}");

    let port = free_port();
    let log = dir.join("server.log");
    let f = std::fs::File::create(&log).unwrap();
    let child = Command::new(&script)
        .args(["--user", USER, "serve", "--config"])
        .arg(&cfg)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("EDGEVM_BIN", &bin)
        .env("EDGEVM_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut running = Running(Some(child));
    let logtext = || std::fs::read_to_string(&log).unwrap_or_default();
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the unprivileged server does not listen:\n{}",
            logtext()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The process (the script execs setpriv, which execs edgevm: same PID).
    let uid_s = uid.to_string();
    assert_eq!(status_field(pid, "Uid"), [uid_s.as_str(); 4]);
    assert_eq!(status_field(pid, "Groups"), [kvm_gid.to_string()]);
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, caps), ["0000000000000000"], "{caps}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), ["1"]);

    let r = request(port, "GET", "/hello", &[], b"");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "Hello World!\n"),
        "{}",
        logtext()
    );
    let r = request(port, "GET", "/sf/set?v=unprivileged", &[], b"");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), logtext());
    assert!(r.text().contains("data=unprivileged"), "{}", r.text());
    let state = dir.join("data/sf.state");
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "unprivileged");
    assert_eq!(std::fs::metadata(&state).unwrap().uid(), uid);

    // A clean stop.
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let mut child = running.0.take().unwrap();
    let t0 = Instant::now();
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(code.success(), "exit {code}:\n{}", logtext());
    let _ = std::fs::remove_dir_all(&dir);
}
