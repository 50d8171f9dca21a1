//! Threads inside a VM (guest/tests/threads.c, threads.rs): green threads on the VM's vCPU,
//! futexes, a worker pool frozen with the program and resumed in every request, threads a
//! request starts gone after its reset, deadlocks reported, and the hostile cases (futexes on
//! bad addresses, thread bombs bounded per VM).

use crate::common::{edgevm_run, guest};
use crate::harness::{js, Server};

fn threads_server() -> Server {
    let file = guest("threads");
    Server::with_config(
        "threads",
        &format!(
            "{{ \"threads\": {{ \"filename\": {}, \"max_memory\": 256, \"concurrency\": 2 }} }}",
            js(file.to_str().unwrap())
        ),
    )
}

#[test]
fn a_pthreads_worker_pool_frozen_with_the_program_serves_every_request() {
    let s = threads_server();
    // The pool's workers were started by main() and frozen waiting on a condition variable:
    // every request resumes them from the same point, with their FPU state intact.
    let first = s.ok("/threads/pool?jobs=40");
    assert!(
        first.starts_with("pool: 40 jobs, sum ") && first.ends_with(", fpu errors 0"),
        "{first}"
    );
    for _ in 0..5 {
        assert_eq!(s.ok("/threads/pool?jobs=40"), first);
    }
    assert_eq!(
        s.ok("/threads/spawn?n=10"),
        "spawn: 10 threads, total 55, distinct tids 1"
    );
    // Threads a request starts are gone after its reset: the next request's new thread gets
    // the same TID (4 workers + main before it).
    assert_eq!(s.ok("/threads/tid"), "tid 6");
    assert_eq!(s.ok("/threads/tid"), "tid 6");
    assert_eq!(s.ok("/threads/spin"), "spin: both ran");
    // Preempted mid-computation, each thread keeps its own SSE registers and MXCSR.
    assert_eq!(s.ok("/threads/fpu"), "fpu: same");
    assert_eq!(s.ok("/threads/timedwait"), "timedwait: ETIMEDOUT");
    assert_eq!(s.ok("/threads/detach?n=10"), "detach: 10 done");
    // Concurrent requests, each in its own VM with its own copy of the pool.
    for r in s.get_concurrently(2, 5, "/threads/pool?jobs=40") {
        assert_eq!(r, first);
    }
}

#[test]
fn deadlocks_and_bad_futexes_fail_the_request_not_the_server() {
    let s = threads_server();
    let r = s.get("/threads/deadlock");
    assert_eq!(r.status, 500, "{}", r.text());
    s.wait_log(
        "deadlock: all 6 threads wait on futexes",
        std::time::Duration::from_secs(10),
    );
    assert_eq!(
        s.ok("/threads/futex_bad"),
        "null wait -14, null wake -14, unaligned -22, kernel -14, wrong value -11, \
         bad timeout -14, wake none 0, bitset 0 -22"
    );
    // The pool is intact after the failed request.
    assert!(s.ok("/threads/pool?jobs=8").starts_with("pool: 8 jobs"));
}

#[test]
fn c_and_rust_programs_start_and_join_threads_under_edgevm_run() {
    // main() returns while a thread still sleeps: exit_group ends them all.
    let r = edgevm_run(&["run", "--raw", guest("threads").to_str().unwrap(), "run"]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    assert_eq!(r.stdout, "threads: total 6\n");
    let r = edgevm_run(&["run", "--raw", guest("threads_rust").to_str().unwrap()]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    assert_eq!(
        r.stdout,
        "channel: 4 results, joined 6\ncondvar: 100\nsleep: 3 woke\nscope: 36\nthreads ok\n"
    );
}

#[test]
fn signal_handlers_run_with_masks_alternate_stacks_and_sigreturn() {
    let file = guest("signals");
    let s = Server::with_config(
        "signals",
        &format!(
            "{{ \"signals\": {{ \"filename\": {}, \"max_memory\": 64 }} }}",
            js(file.to_str().unwrap())
        ),
    );
    // SI_TKILL (-6) from raise(); SI_USER (0) from kill().
    assert_eq!(s.ok("/signals/raise"), "raise: got 10 code -6 on_alt 0");
    assert_eq!(
        s.ok("/signals/altstack"),
        "altstack: got 10 on_alt 1 size 65536"
    );
    assert_eq!(s.ok("/signals/mask"), "mask: before 0 after 12 code 0");
    assert_eq!(s.ok("/signals/thread"), "thread: got 10 in the thread 1");
    assert_eq!(s.ok("/signals/storm"), "storm: 500 handled");
    assert_eq!(s.ok("/signals/fpu"), "fpu: intact, handler 1");
    // Waits with a mask of their own, and waiting for signals (issue 16, item 4).
    assert_eq!(
        s.ok("/signals/sigsuspend"),
        "sigsuspend: -1 EINTR got 10 blocked 1"
    );
    assert_eq!(
        s.ok("/signals/pwaits"),
        "pwaits: ppoll -1 EINTR got 10 blocked 1; pselect -1 EINTR got 10 blocked 1; \
         epoll_pwait -1 EINTR got 10 blocked 1; masked 0 during 12 after 12"
    );
    // glibc's sigwaitinfo reports SI_TKILL (pthread_kill) as SI_USER (0), as on Linux.
    assert_eq!(
        s.ok("/signals/sigwait"),
        "sigwait: 12 code 0 handler 0; timeout -1 EAGAIN; raised 12"
    );
    // signalfd: blocked signals read as signalfd_siginfo; raise() is a tgkill (SI_TKILL, -6).
    assert_eq!(
        s.ok("/signals/signalfd"),
        "signalfd: empty -1 EAGAIN; poll 1 read 128 sig 12 code -6 poll 0; blocking 128 sig 12; \
         epoll 0 1; mask 1 read 256 sigs 10 12; bad 1 1 1 1 1 1; handler 0"
    );
    assert_eq!(
        s.ok("/signals/hostile"),
        "hostile: -1 1 -1 1 -1 1 -1 1 -1 1 -1 1 -1 1"
    );
    // Default actions and a frame that cannot be written end the program, not the server.
    for (action, signal) in [("default", "SIGTERM"), ("badstack", "SIGSEGV")] {
        let r = s.get(&format!("/signals/{action}"));
        assert_eq!(r.status, 500, "{action}: {}", r.text());
        s.wait_log(
            &format!("killed by signal {signal}"),
            std::time::Duration::from_secs(10),
        );
    }
    assert_eq!(s.ok("/signals/raise"), "raise: got 10 code -6 on_alt 0");
}
