//! The guest vDSO (docs/DESIGN.md, "vDSO"): clock_gettime, gettimeofday, time, clock_getres
//! and getcpu answered in the VM without exits, for static glibc, static-pie, musl, Rust std
//! and Go; time that agrees with the host's and never goes back across requests, resets and
//! VMs; hostile uses (writing the data page or the code, jumping into it, handing it to system
//! calls, clearing the auxv); and the fallback when it is turned off (every clock a system
//! call). Guests: guest/tests/vdso.c (vdso, vdso_pie, vdso_musl), guest/tests/vdso_rust.rs,
//! guest/examples/go (example_goserve).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{edgevm_run, guest};
use crate::harness::{js, Server};

const PROGS: [&str; 3] = ["vdso", "vdso_pie", "vdso_musl"];

fn server(name: &str, env: &[(&str, &str)]) -> Server {
    let progs: Vec<String> = PROGS
        .iter()
        .map(|p| {
            format!(
                "{}: {{ \"filename\": {}, \"concurrency\": 2, \"smp\": 3 }}",
                js(p),
                js(guest(p).to_str().unwrap())
            )
        })
        .collect();
    let dir = crate::common::scratch(name);
    let path = dir.join("config.json");
    std::fs::write(&path, format!("{{ {} }}", progs.join(", "))).unwrap();
    Server::start(&dir, &[&path], env)
}

/// Whether edgevm must offer the vDSO here: the host kernel trusts its TSC (its clocksource;
/// every x86 CPU of the last decade has an invariant TSC) or `EDGEVM_VDSO=force` is set (the
/// emulated-SVM harness). Elsewhere its tests check the fallback only.
fn must_offer() -> bool {
    std::env::var("EDGEVM_VDSO").as_deref() == Ok("force")
        || std::fs::read_to_string(
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        )
        .is_ok_and(|c| c.trim() == "tsc")
}

/// Whether `s` offers the vDSO (its start log says); off where it must be on fails the test.
fn offered(s: &Server) -> bool {
    let log = s.wait_log("guest vDSO", Duration::from_secs(10));
    let on = log.contains("guest vDSO on");
    if !on {
        assert!(!must_offer(), "the vDSO should be offered here:\n{log}");
        eprintln!("note: no vDSO on this host, its tests check the fallback only:\n{log}");
    }
    on
}

/// `key=value` of a response (`a..b` values give (a, b) through [`range`]).
fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {text:?}"))
}

fn num(text: &str, key: &str) -> u128 {
    field(text, key).parse().unwrap()
}

fn range(text: &str, key: &str) -> (u128, u128) {
    let (a, b) = field(text, key).split_once("..").unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

fn host_real_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Exits of `prog` for one GET of `path`, and the body.
fn exits_of(s: &Server, prog: &str, path: &str) -> (f64, String) {
    let before = s.stat(prog, "exits");
    let body = s.ok(path);
    (s.stat(prog, "exits") - before, body)
}

/// The real-time clock a guest read lies between the host's before and after, 50 ms either way
/// (a bound for a clock that is off, not a timing).
fn assert_real_time(prog: &str, real: u128, before: u128, after: u128) {
    const SLACK: u128 = 50_000_000;
    assert!(
        real + SLACK >= before && real <= after + SLACK,
        "{prog}: guest real time {real} not within 50 ms of the host's {before}..{after}"
    );
}

#[test]
fn c_programs_read_every_clock_without_exits_and_time_never_goes_back() {
    let s = server("vdso", &[]);
    let on = offered(&s);
    for prog in PROGS {
        // 1000 clock_gettime + 1000 gettimeofday + 1000 time cost no exit more than none.
        let (base, _) = exits_of(&s, prog, &format!("/{prog}/loop?n=0"));
        let before = host_real_ns();
        let (exits, body) = exits_of(&s, prog, &format!("/{prog}/loop?n=1000"));
        let after = host_real_ns();
        assert_eq!(
            field(&body, "auxv"),
            if on { "1" } else { "0" },
            "{prog}: {body}"
        );
        assert_eq!(field(&body, "back"), "0", "{prog}: {body}");
        assert!(
            !on || exits <= base,
            "{prog}: 3000 clock calls took {exits} exits, none {base}"
        );
        assert_real_time(prog, num(&body, "real"), before, after);

        // Monotonic across requests on both VMs of the pool (each reset in between), and
        // between the vDSO and the system call.
        let mut last = 0u128;
        for i in 0..30 {
            let body = if i % 3 == 2 {
                s.ok(&format!("/{prog}/direct"))
            } else {
                s.ok(&format!("/{prog}/loop?n=20"))
            };
            let (a, b) = if body.starts_with("mono=") {
                let m = num(&body, "mono");
                (m, m)
            } else {
                assert_eq!(field(&body, "back"), "0", "{prog}: {body}");
                range(&body, "mono")
            };
            assert!(a >= last, "{prog}: monotonic went back: {last} then {a}");
            last = b;
        }

        // Every clock id: the ones the vDSO answers and the ones it sends to the host.
        let clocks = s.ok(&format!("/{prog}/clocks"));
        let secs = (host_real_ns() / 1_000_000_000) as i64;
        for id in [0, 1, 4, 5, 6, 7, 11] {
            let e = clocks
                .split_whitespace()
                .find(|w| w.starts_with(&format!("{id}:")))
                .unwrap();
            let f: Vec<&str> = e.split(':').collect();
            assert_eq!((f[1], f[3]), ("0", "0"), "{prog} clock {id}: {clocks}");
            if matches!(id, 0 | 5 | 11) {
                let t: i64 = f[2].parse().unwrap();
                assert!((t - secs).abs() <= 40, "{prog} clock {id}: {clocks}");
            }
        }
        assert!(clocks.contains("-1:-1:"), "{prog}: {clocks}");
        assert!(clocks.ends_with("getcpu:0"), "{prog}: {clocks}");

        // Four vCPUs of one request VM (multiprocess workers, each with its TSC offset at 0):
        // no reading earlier than one another vCPU published before it.
        let (exits, body) = exits_of(&s, prog, &format!("/{prog}/smp"));
        assert_eq!(body, "vcpus=4 back=0 inside=1", "{prog}");
        assert!(
            !on || exits < 100.0,
            "{prog}: 8000 readings on 4 vCPUs took {exits} exits"
        );
    }
}

#[test]
fn the_guest_tsc_is_the_hosts() {
    // What the vDSO's arithmetic rests on: with the TSC offset at 0, a guest's TSC read lies
    // between two host reads around its request (on kvm_pvm and on hardware KVM alike).
    let s = server("vdso_tsc", &[]);
    if !offered(&s) {
        return;
    }
    for prog in PROGS {
        // SAFETY: RDTSC has no preconditions.
        let before = unsafe { std::arch::x86_64::_rdtsc() };
        let body = s.ok(&format!("/{prog}/rdtsc"));
        // SAFETY: as above.
        let after = unsafe { std::arch::x86_64::_rdtsc() };
        let tsc = num(&body, "tsc") as u64;
        assert!(
            (before..=after).contains(&tsc),
            "{prog}: guest TSC {tsc} outside the host's {before}..{after}"
        );
    }
}

#[test]
fn hostile_uses_of_the_vdso_fault_and_change_nothing() {
    let s = server("vdso_hostile", &[]);
    if !offered(&s) {
        return;
    }
    for prog in PROGS {
        let cases = [
            ("write_data", "writing address 0x7fffe04000"),
            ("write_text", "writing address 0x7fffe02100"),
            ("jump", "at RIP 0x7fffe02041"),
        ];
        for (action, want) in cases {
            let r = s.get(&format!("/{prog}/{action}"));
            assert_eq!(r.status, 500, "{prog} {action}: {}", r.text());
            assert!(r.text().contains(want), "{prog} {action}: {}", r.text());
            // The page and the code are unchanged for the next request (on either VM).
            for _ in 0..2 {
                let body = s.ok(&format!("/{prog}/loop?n=50"));
                assert_eq!(
                    (field(&body, "auxv"), field(&body, "back")),
                    ("1", "0"),
                    "{prog} after {action}: {body}"
                );
            }
        }
        // The host reads and writes no vDSO memory on a program's behalf.
        assert_eq!(
            s.ok(&format!("/{prog}/host_ptr")),
            "write=-1 gettime=-1 getrandom=-1",
            "{prog}"
        );
        // A cleared auxv: the C library keeps what it found at start; the next request has
        // its auxv back.
        let body = s.ok(&format!("/{prog}/clear_auxv"));
        assert!(body.starts_with("cleared "), "{prog}: {body}");
        for _ in 0..2 {
            let body = s.ok(&format!("/{prog}/loop?n=5"));
            assert_eq!(field(&body, "auxv"), "1", "{prog}: {body}");
        }
    }
}

#[test]
fn turned_off_every_clock_is_a_system_call_and_still_right() {
    let s = server("vdso_off", &[("EDGEVM_VDSO", "0")]);
    let log = s.wait_log("guest vDSO", Duration::from_secs(10));
    assert!(
        log.contains("guest vDSO off (turned off (EDGEVM_VDSO=0))"),
        "{log}"
    );
    for prog in PROGS {
        let (base, _) = exits_of(&s, prog, &format!("/{prog}/loop?n=0"));
        let before = host_real_ns();
        let (exits, body) = exits_of(&s, prog, &format!("/{prog}/loop?n=100"));
        let after = host_real_ns();
        assert_eq!(field(&body, "auxv"), "0", "{prog}: {body}");
        assert_eq!(field(&body, "back"), "0", "{prog}: {body}");
        assert!(
            exits >= base + 300.0,
            "{prog}: 300 clock calls took {exits} exits (none: {base})"
        );
        assert_real_time(prog, num(&body, "real"), before, after);
    }
}

#[test]
fn rust_std_and_go_read_their_clocks_through_the_vdso() {
    if !must_offer() {
        return;
    }
    // Rust: Instant and SystemTime, 1000 readings, not one clock_gettime system call.
    let r = edgevm_run(&[
        "run",
        "--verbose-syscalls",
        guest("vdso_rust").to_str().unwrap(),
    ]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    assert!(
        r.all()
            .contains("rust: 1000 readings, back=0, elapsed_ok=true"),
        "{}",
        r.all()
    );
    assert!(!r.all().contains("clock_gettime"), "{}", r.all());
    // Go 1.19: the runtime's nanotime and walltime (the fan-out sleeps and times itself).
    let r = edgevm_run(&[
        "run",
        "--verbose-syscalls",
        "--max-memory",
        "256",
        "--address-space",
        "1024",
        guest("example_goserve").to_str().unwrap(),
        "--request",
        "/fanout?n=50",
    ]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    assert!(
        r.all()
            .contains("fanout: 50 goroutines, sum 1225, slept true"),
        "{}",
        r.all()
    );
    assert!(!r.all().contains("clock_gettime"), "{}", r.all());
}
