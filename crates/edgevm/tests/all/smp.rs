//! SMP (the `smp` key): `multiprocess`, `multiprocess_array`, `multiprocess_clone`,
//! `multiprocess_wait` and `vcpuid()` on extra vCPUs of a request VM (guest/tests/smp.c), and
//! the hostile cases: calls over the limit or with bad pointers, workers that loop, crash,
//! make system calls or kvm_api calls, start workers themselves, a handler that changes page
//! protections under its workers, exits or answers without waiting. Each fails its request
//! (or gets -1) and the next request on the same VMs is served as if nothing happened.

use crate::common::guest;
use crate::harness::{js, Server};

fn smp_server(name: &str) -> Server {
    let file = guest("smp");
    let f = js(file.to_str().unwrap());
    let rust = js(guest("rust_smp").to_str().unwrap());
    Server::with_config(
        name,
        &format!(
            "{{ \"smp\": {{ \"filename\": {f}, \"smp\": 4, \"shared_memory\": 2, \
             \"max_request_time\": 1, \"concurrency\": 2 }},
               \"nosmp\": {{ \"filename\": {f}, \"shared_memory\": 2 }},
               \"rust_smp\": {{ \"filename\": {rust}, \"smp\": 3 }} }}"
        ),
    )
}

/// Sum of `i % 1000` over the first `n` slices of 65536 / `n` items (what smp.c computes).
fn expected_sum(n: u64) -> u64 {
    let per = 65536 / n;
    (0..per * n).map(|i| i % 1000).sum()
}

#[test]
fn workers_run_on_extra_vcpus_over_the_same_memory() {
    let s = smp_server("smp-calls");
    for n in [2u64, 4, 5] {
        let ids: Vec<String> = (0..n).map(|i| (100 + i).to_string()).collect();
        assert_eq!(
            s.ok(&format!("/smp/sum?n={n}")),
            format!(
                "r 0 w 0 sum {} ids {} reqid_same 1",
                expected_sum(n),
                ids.join(" ")
            )
        );
    }
    // Four arguments, as the reference: arg, then RCX, R8 and R9.
    assert_eq!(s.ok("/smp/args"), "r 0 w 0 v1 11 22 33 44 v2 11 22 33 44");
    // Worker k gets (&array[k], element size): out = in * in + size (24), vCPU k.
    assert_eq!(s.ok("/smp/array"), "r 0 w 0 [28 0] [33 1] [40 2] [49 3]");
    // Every vCPU goes on after multiprocess_clone(): ids 0..3 add 1..4.
    assert_eq!(s.ok("/smp/clone"), "r 0 w 0 total 10 count 4");
    assert_eq!(s.ok("/smp/yield"), "yields 2");
    // The main vCPU is vcpuid() 0; main() (the boot context) cannot start workers.
    assert_eq!(s.ok("/smp/"), "vcpuid 0 init -1");
    assert!(s
        .log()
        .contains("kvm_api call multiprocess (0x10710) is not supported here; returning -1"));
    // n < 2, n over smp + 1, functions outside the program's memory, clone stacks in the
    // system area or too small, a second call before multiprocess_wait(): -1; waiting with
    // nothing running: 0.
    assert_eq!(s.ok("/smp/refused"), "-1 -1 -1 -1 -1 -1 0 -1 w 0 0 id 101");
    let log = s.log();
    for why in [
        "multiprocess: n = 1 vCPUs asked for; this program may use 2 to 5",
        "multiprocess: n = 99 vCPUs asked for",
        "multiprocess: function 0x10 is outside the program's memory",
        "are not inside the program's memory (or under 4096 bytes each)",
        "multiprocess: the previous call's workers were not waited for",
    ] {
        assert!(log.contains(why), "{why}:\n{log}");
    }
    // Without "smp" the calls are refused with a log line.
    assert!(s.ok("/nosmp/sum?n=4").starts_with("r -1 w 0 sum"));
    assert!(s
        .log()
        .contains("multiprocess: this program has no extra vCPUs (set \"smp\""));
    // The same from the Rust guest crate.
    assert_eq!(
        s.ok("/rust_smp/sum?n=4"),
        format!("rust r 0 w 0 sum {} ids 0 1 2 3", expected_sum(4))
    );
    assert_eq!(
        s.ok("/rust_smp/array"),
        "rust r 0 w 0 [20 0] [25 1] [32 2] [41 3]"
    );
    // Two request VMs with their own workers at once.
    let want = s.ok("/smp/sum?n=5");
    for r in s.get_concurrently(2, 4, "/smp/sum?n=5") {
        assert_eq!(r, want);
    }
}

#[test]
fn hostile_workers_fail_their_request_and_never_outlive_it() {
    let s = smp_server("smp-hostile");
    let cases = [
        (
            "/smp/loop",
            "multiprocess worker on vCPU",
            "timed out (the request's max_request_time)",
        ),
        (
            "/smp/crash",
            "multiprocess worker on vCPU 2 crashed: page fault (#PF) reading address 0x10",
            "in crash_worker",
        ),
        (
            "/smp/badfn",
            "multiprocess worker on vCPU 1 crashed: page fault (#PF) executing address",
            "(not executable)",
        ),
        (
            "/smp/syscall",
            "multiprocess worker on vCPU 1: system call write (1) is not allowed on a \
             multiprocess worker",
            "",
        ),
        (
            "/smp/hypercall",
            "kvm_api call is_storage (0x10706) is not allowed on a multiprocess worker",
            "",
        ),
        (
            "/smp/recursive",
            "kvm_api call multiprocess (0x10710) is not allowed on a multiprocess worker",
            "",
        ),
        (
            "/smp/mprotect",
            "page protections changed (mprotect, munmap, mmap over such a range) while \
             multiprocess workers run",
            "",
        ),
        (
            "/smp/exit",
            "the program exited (status 3) during a request",
            "",
        ),
    ];
    for (path, why, also) in cases {
        let r = s.get(path);
        assert_eq!(r.status, 500, "{path}: {}", r.text());
        assert!(r.text().contains(why), "{path}: {}", r.text());
        assert!(r.text().contains(also), "{path}: {}", r.text());
        // The same VMs serve the next request normally.
        assert_eq!(
            s.ok("/smp/sum?n=5"),
            format!(
                "r 0 w 0 sum {} ids 100 101 102 103 104 reqid_same 1",
                expected_sum(5)
            ),
            "after {path}"
        );
    }
    // Workers that count in shared memory forever, and a handler that answers without
    // waiting (or exits, above): the workers are stopped with the request. The counter no
    // longer moves (the program itself checks across a 30 ms sleep).
    assert_eq!(s.ok("/smp/nowait"), "answered while counting");
    assert_eq!(s.ok("/smp/ticks"), "still 1");
    assert_eq!(s.ok("/smp/clone"), "r 0 w 0 total 10 count 4");
    let log = s.stop();
    assert!(!log.contains("did not stop"), "{log}");
}

/// A program started from its snapshot file has no stacks reserved at boot: `multiprocess`
/// maps them per request (undone by the reset) and works the same.
#[test]
fn a_program_started_from_its_snapshot_runs_workers() {
    use std::os::unix::fs::PermissionsExt;
    let dir = crate::common::scratch("smp-snapshot");
    let snap = dir.join("snap");
    std::fs::create_dir(&snap).unwrap();
    std::fs::set_permissions(&snap, std::fs::Permissions::from_mode(0o700)).unwrap();
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        format!(
            "{{ \"smp\": {{ \"filename\": {}, \"smp\": 4, \"shared_memory\": 2, \
             \"cold_start_file\": {}, \"start\": true }} }}",
            js(guest("smp").to_str().unwrap()),
            js(snap.join("smp.snapshot").to_str().unwrap())
        ),
    )
    .unwrap();
    let s = Server::start(&dir, &[&cfg], &[]);
    s.wait_loaded(&["smp"]);
    s.wait_log(
        "Program 'smp': snapshot written to",
        std::time::Duration::from_secs(20)
            .mul_f64(crate::common::time_scale() * crate::common::time_scale()),
    );
    s.stop();
    let s = Server::start(&dir, &[&cfg], &[]);
    s.wait_loaded(&["smp"]);
    assert!(s.log().contains("Program 'smp' started from its snapshot"));
    let want = format!(
        "r 0 w 0 sum {} ids 100 101 102 103 104 reqid_same 1",
        expected_sum(5)
    );
    for _ in 0..3 {
        assert_eq!(s.ok("/smp/sum?n=5"), want);
    }
    assert_eq!(s.ok("/smp/clone"), "r 0 w 0 total 10 count 4");
}
