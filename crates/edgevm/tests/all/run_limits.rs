//! `edgevm run`: crashes, timeouts and memory limits end the program with a clear message.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::run_cmd::p;

/// Run a crash guest; check exit status 70, the exception text, RIP and symbol.
fn crash(bin: &str, expect: &[&str]) {
    let r = edgevm_run(&["run", p(&guest(bin))]);
    assert_eq!(r.code(), Some(70), "{bin}: {}", r.all());
    assert!(!r.stderr.contains("panicked"), "{bin}: {}", r.all());
    assert!(
        r.stdout.contains(&format!(">>> [{bin}] crashing:")),
        "{bin}: output before the crash was lost\n{}",
        r.all()
    );
    assert!(!r.stdout.contains("FAIL"), "{bin}: {}", r.all());
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains(&format!("program '{bin}' crashed: ")))
        .unwrap_or_else(|| panic!("{bin}: no crash message\n{}", r.all()));
    for e in expect {
        assert!(line.contains(e), "{bin}: '{e}' missing from: {line}");
    }
    assert!(line.contains(" at RIP 0x"), "{bin}: {line}");
    assert!(line.contains(" in crash_here+0x"), "{bin}: {line}");
}

#[test]
fn crash_null_is_a_page_fault_at_address_8() {
    crash(
        "crash_null",
        &["page fault", "#PF", "writing address 0x8 ", "not mapped"],
    );
}

#[test]
fn crash_gp_is_a_general_protection_fault() {
    crash("crash_gp", &["general protection", "#GP"]);
}

#[test]
fn crash_ud_is_an_invalid_opcode() {
    crash("crash_ud", &["invalid opcode", "#UD"]);
}

#[test]
fn crash_div_is_a_divide_error() {
    crash("crash_div", &["divide error", "#DE"]);
}

#[test]
fn crash_stack_is_a_stack_overflow() {
    crash("crash_stack", &["stack overflow", "#PF"]);
}

fn assert_timeout(r: &Run, took: Duration) {
    assert_eq!(r.code(), Some(70), "{}", r.all());
    assert!(
        r.stderr
            .contains("program 'loop_forever' timed out: program initialization (max_boot_time)"),
        "{}",
        r.all()
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.all());
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(4),
        "took {took:?} for a 1 s limit"
    );
}

#[test]
fn loop_forever_stops_at_max_boot_time_option() {
    let t = Instant::now();
    let r = edgevm_run(&["run", "--max-boot-time", "1", p(&guest("loop_forever"))]);
    assert_timeout(&r, t.elapsed());
    assert!(r.stderr.contains("timed out after 1s"), "{}", r.all());
}

#[test]
fn loop_forever_stops_at_max_boot_time_from_config() {
    let d = scratch("config_boot_time");
    let cfg = d.join("c.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{ "looper": {{ "filename": "{}", "max_boot_time": 1.0 }} }}"#,
            p(&guest("loop_forever"))
        ),
    )
    .unwrap();
    let t = Instant::now();
    let r = edgevm_run(&[
        "run",
        "--config",
        p(&cfg),
        "--name",
        "loop_forever",
        "--program",
        "looper",
    ]);
    assert_timeout(&r, t.elapsed());
}

/// The `N` of "ENOMEM after N MB".
fn enomem_mb(r: &Run) -> u64 {
    r.stdout
        .lines()
        .find_map(|l| l.strip_prefix(">>> [membomb] ENOMEM after "))
        .and_then(|s| s.strip_suffix(" MB"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'ENOMEM after N MB':\n{}", r.all()))
}

#[test]
fn membomb_gets_enomem_below_max_memory_and_rss_stays_bounded() {
    let d = scratch("membomb");
    let rss = d.join("rss");
    // /usr/bin/time -f %M: the maximum resident set size of edgevm, in KiB.
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o", p(&rss)])
        .arg(env!("CARGO_BIN_EXE_edgevm"))
        .args(["run", "--max-memory", "64", p(&guest("membomb"))])
        .env("EDGEVM_LOG", "warn")
        .output()
        .expect("run /usr/bin/time (apt-get install time)");
    let r = Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        out,
    };
    assert_eq!(r.code(), Some(0), "{}", r.all());
    let mb = enomem_mb(&r);
    assert!(
        (32..64).contains(&mb),
        "ENOMEM after {mb} MB with a 64 MB limit"
    );
    let kib: u64 = std::fs::read_to_string(&rss)
        .unwrap()
        .trim()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("max RSS from /usr/bin/time");
    // Guest memory (64 MB) plus the edgevm binary itself; far below 256 MB.
    assert!(kib < 128 * 1024, "edgevm used {kib} KiB for a 64 MB guest");
}

#[test]
fn membomb_limit_follows_max_memory() {
    let r = edgevm_run(&["run", "--max-memory", "32", p(&guest("membomb"))]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    let mb = enomem_mb(&r);
    assert!((16..32).contains(&mb), "ENOMEM after {mb} MB with 32 MB");
}
