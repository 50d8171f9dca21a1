//! Remote storage calls (issue 14 item 6): a request program calls functions of its storage
//! program — a second binary linked at 0x40200000 — as plain C calls, and they run in the
//! storage VM (guest/tests/remote_request.c + remote_storage.c, built as a pair by
//! guest/build.sh; guest/examples/remote.c + remote_storage.c). Scalar arguments and results,
//! serialization, failures inside storage, hostile jumps into the range, a bad stack, busy
//! storage and a live update, all through `edgevm serve`; the exits of one call through
//! `edgevm run`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use crate::harness::*;

/// Copy the pair (`request`, `storage`) into `dir` as `p` and `p_storage`; the path of `p`.
fn pair(dir: &Path, request: &str, storage: &str) -> PathBuf {
    let p = dir.join("p");
    std::fs::copy(guest(request), &p).unwrap();
    std::fs::copy(guest(storage), dir.join("p_storage")).unwrap();
    p
}

/// The test pair in `dir`, served with `extra` settings for program `p`.
fn serve_pair(dir: &Path, extra: &str) -> Server {
    let p = pair(dir, "remote_request", "remote_storage");
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        format!(
            "{{ \"p\": {{ \"filename\": {}, \"storage\": true, \"max_memory\": 64, \
             \"max_storage_time\": 1{extra} }} }}",
            js(p.to_str().unwrap())
        ),
    )
    .unwrap();
    Server::start(dir, &[&cfg], &[])
}

/// `[lo, hi)` of the load segments of the ELF file at `path` (page-rounded).
fn load_range(path: &Path) -> (u64, u64) {
    let b = std::fs::read(path).unwrap();
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    let (mut lo, mut hi) = (u64::MAX, 0);
    for i in 0..phnum {
        let h = phoff + i * phentsize;
        if u32::from_le_bytes(b[h..h + 4].try_into().unwrap()) == 1 {
            let (vaddr, memsz) = (u64_at(h + 0x10), u64_at(h + 0x28));
            lo = lo.min(vaddr & !0xFFF);
            hi = hi.max((vaddr + memsz + 0xFFF) & !0xFFF);
        }
    }
    (lo, hi)
}

/// GET that must fail with a 500 whose text contains `needle`.
fn fails(s: &Server, path: &str, needle: &str) {
    let r = s.get(path);
    let t = r.text();
    assert_eq!(r.status, 500, "GET {path}: {t}");
    assert!(t.contains(needle), "GET {path}: no {needle:?} in {t:?}");
}

#[test]
fn remote_calls_take_scalar_arguments_and_keep_storage_state() {
    require_kvm();
    let dir = scratch("remote-scalar");
    let s = serve_pair(&dir, "");
    assert_eq!(s.ok("/p/add?a=2&b=3"), "total=5");
    assert_eq!(s.ok("/p/add?a=-1&b=10"), "total=14");
    assert_eq!(s.ok("/p/total"), "total=14");
    assert_eq!(s.ok("/p/args6"), "r=91");
    // A 16-byte struct comes back in RAX:RDX.
    assert_eq!(s.ok("/p/pair?x=5"), "a=6 b=10");
    assert_eq!(s.ok("/p/pair?x=-7"), "a=-6 b=-14");
    // Recursion inside storage, and a storage function pointer called there.
    assert_eq!(s.ok("/p/fib?n=20"), "fib=6765");
    assert_eq!(s.ok("/p/apply"), "r=42");
    // storage_call from storage is refused (-1); storage_return means nothing in a remote call.
    assert_eq!(s.ok("/p/nested"), "r=-3");
    // storage_call() of a --just-symbols function: the same storage, the same counter.
    assert_eq!(s.ok("/p/callv"), "total=15");
    assert_eq!(s.ok("/p/many?n=50"), "total=65");
    assert_eq!(s.ok("/p/manycallv?n=5"), "total=70");
    let log = s.stop();
    assert!(!log.contains("page fault"), "{log}");
}

#[test]
fn the_two_binary_example_counts_visits_in_storage() {
    require_kvm();
    let dir = scratch("remote-example");
    let p = pair(&dir, "example_remote", "example_remote_storage");
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        format!(
            "{{ \"remote\": {{ \"filename\": {}, \"storage\": true, \"concurrency\": 2 }} }}",
            js(p.to_str().unwrap())
        ),
    )
    .unwrap();
    let s = Server::start(&dir, &[&cfg], &[]);
    assert_eq!(s.ok("/remote/3"), "page 3: 1 visits, 1 in all\n");
    assert_eq!(s.ok("/remote/3"), "page 3: 2 visits, 2 in all\n");
    assert_eq!(s.ok("/remote/7"), "page 7: 1 visits, 3 in all\n");
    assert_eq!(s.get("/remote/99").status, 404);
    s.stop();
}

#[test]
fn a_remote_call_costs_the_exits_of_a_storage_call() {
    require_kvm();
    let dir = scratch("remote-exits");
    let p = pair(&dir, "remote_request", "remote_storage");
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        format!(
            "{{ \"p\": {{ \"filename\": {}, \"storage\": true }} }}",
            js(p.to_str().unwrap())
        ),
    )
    .unwrap();
    let (cfg, p) = (cfg.to_str().unwrap(), p.to_str().unwrap());
    // The request's fault into the range, the storage function's return, the response: 3,
    // as a storage_call (its call, the function's storage_return, the response).
    for (path, body) in [("/p/add?a=1&b=1", "total=2"), ("/p/callv", "total=1")] {
        let r = edgevm_run(&[
            "run",
            "--config",
            cfg,
            "--program",
            "p",
            p,
            "--request",
            path,
        ]);
        assert_eq!(r.code(), Some(0), "{}", r.all());
        assert!(r.stdout.ends_with(body), "{}", r.all());
        assert!(r.all().contains("answered 200 (3 VM exits)"), "{}", r.all());
    }
}

#[test]
fn remote_call_failures_fail_the_request_and_storage_keeps_serving() {
    require_kvm();
    let dir = scratch("remote-failures");
    let s = serve_pair(&dir, ", \"concurrency\": 2");
    assert_eq!(s.ok("/p/add?a=5&b=0"), "total=5");
    let (lo, hi) = load_range(&dir.join("p_storage"));
    assert_eq!(lo, 0x4020_0000);
    let add = u64::from_str_radix(s.ok("/p/addr").trim_start_matches("0x"), 16).unwrap();
    assert!((lo..hi).contains(&add), "{add:#x}");
    let not_entry = "is not the start of a function of the storage program";
    let cases: Vec<(String, String)> = [
        ("/p/crash".into(), "storage function 'rs_crash'"),
        ("/p/crash".into(), "page fault"),
        ("/p/loop".into(), "max_storage_time"),
        ("/p/exit".into(), "the storage program exited (status 3)"),
        (
            "/p/forbidden".into(),
            "not in the program's STORAGE_ALLOW list",
        ),
        // A request function's address means nothing in storage.
        ("/p/applyreq".into(), "storage function 'rs_apply'"),
        ("/p/badstack".into(), "with a bad stack (RSP 0x10)"),
        // Into the range but not a function entry: its first byte, the middle of a function,
        // its last byte.
        (format!("/p/jump?addr={lo:#x}"), not_entry),
        (format!("/p/jump?addr={:#x}", add + 1), not_entry),
        (format!("/p/jump?addr={:#x}", hi - 1), not_entry),
        // Just past the range: an ordinary crash of the request.
        (
            format!("/p/jump?addr={hi:#x}"),
            &*format!("executing address {hi:#x}"),
        ),
    ]
    .into_iter()
    .map(|(p, n)| (p, n.to_string()))
    .collect();
    for (path, needle) in &cases {
        fails(&s, path, needle);
        // Storage stays usable and keeps its state.
        assert_eq!(s.ok("/p/total"), "total=5", "after {path}");
    }
    assert_eq!(s.ok("/p/add?a=1&b=1"), "total=7");
    let log = s.stop();
    assert!(log.contains("remote storage call failed"), "{log}");
}

#[test]
fn remote_calls_are_serialized_and_wait_for_busy_storage() {
    require_kvm();
    let dir = scratch("remote-serialized");
    let s = serve_pair(&dir, ", \"concurrency\": 4");
    // rs_critical answers -1 if another call is inside it while it spins.
    let answers = s.get_concurrently(6, 8, "/p/critical?ms=2");
    let mut seen: Vec<i64> = answers
        .iter()
        .map(|a| a.strip_prefix("r=").unwrap().parse().unwrap())
        .collect();
    assert!(seen.iter().all(|n| *n > 0), "{answers:?}");
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 48, "{answers:?}");
    // While one call keeps storage busy, the others wait for their turn and then run.
    std::thread::scope(|sc| {
        let busy = sc.spawn(|| s.ok("/p/spin?ms=300"));
        std::thread::sleep(Duration::from_millis(50));
        let adds = s.get_concurrently(3, 2, "/p/add?a=1&b=0");
        let mut totals: Vec<&str> = adds.iter().map(String::as_str).collect();
        totals.sort_unstable();
        assert_eq!(
            totals,
            ["total=1", "total=2", "total=3", "total=4", "total=5", "total=6"]
        );
        assert_eq!(busy.join().unwrap(), "r=300");
    });
    s.stop();
}

#[test]
fn remote_calls_go_on_through_a_live_update_of_the_request_program() {
    require_kvm();
    let dir = scratch("remote-live-update");
    let s = serve_pair(&dir, ", \"concurrency\": 2, \"key\": \"k\"");
    assert_eq!(s.ok("/p/add?a=1&b=0"), "total=1");
    let binary = std::fs::read(guest("remote_request")).unwrap();
    std::thread::scope(|sc| {
        let calls = sc.spawn(|| {
            let mut c = Conn::new(s.port);
            (0..30)
                .map(|_| c.send("GET", "/p/many?n=5", &[], b"").status)
                .collect::<Vec<_>>()
        });
        let r = s.req(
            "POST",
            "/_edgevm/update/p",
            &[("X-Edgevm-Key", "k")],
            &binary,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(calls.join().unwrap().iter().all(|st| *st == 200));
    });
    // The update replaced the request program only: storage still runs the storage program
    // (a fresh VM: no on_live_update here), and its file stays for the next start.
    let total = |t: String| -> i64 { t.strip_prefix("total=").unwrap().parse().unwrap() };
    let t0 = total(s.ok("/p/total"));
    assert_eq!(total(s.ok("/p/add?a=2&b=0")), t0 + 2);
    assert_eq!(s.ok("/p/fib?n=10"), "fib=55");
    assert!(dir.join("p_storage").exists());
    assert_eq!(std::fs::read(dir.join("p")).unwrap(), binary);
    s.stop();
}

#[test]
fn check_validates_the_storage_program() {
    let dir = scratch("remote-check");
    let p = pair(&dir, "remote_request", "remote_storage");
    let cfg = dir.join("config.json");
    let write = |extra: &str| {
        std::fs::write(
            &cfg,
            format!(
                "{{ \"p\": {{ \"filename\": {}{extra} }} }}",
                js(p.to_str().unwrap())
            ),
        )
        .unwrap();
    };
    let check = || edgevm_run(&["check", "--config", cfg.to_str().unwrap()]);
    write(", \"storage\": true");
    let r = check();
    assert_eq!(r.code(), Some(0), "{}", r.all());
    assert!(
        r.stdout.contains("is linked at 0x40200000-0x")
            && r.stdout.contains("requests call its functions remotely"),
        "{}",
        r.all()
    );
    write("");
    let r = check();
    assert_eq!(r.code(), Some(0), "{}", r.all());
    assert!(
        r.stdout.contains("is not used: \"storage\" is false"),
        "{}",
        r.all()
    );
    // executable_heap maps the request VMs' whole address space executable: it must end
    // below the storage program.
    write(", \"storage\": true, \"executable_heap\": true, \"address_space\": 2048");
    let r = check();
    assert_eq!(r.code(), Some(1), "{}", r.all());
    assert!(
        r.stdout.contains("must end below the storage program"),
        "{}",
        r.all()
    );
    write(", \"storage\": true, \"executable_heap\": true");
    assert_eq!(check().code(), Some(0));
    std::fs::write(dir.join("p_storage"), b"not a program").unwrap();
    write(", \"storage\": true");
    let r = check();
    assert_eq!(r.code(), Some(1), "{}", r.all());
    assert!(r.stdout.contains("p_storage"), "{}", r.all());
}
