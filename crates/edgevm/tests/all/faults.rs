//! CPU faults delivered to the program's signal handlers (guest/tests/faults.c): SIGSEGV,
//! SIGBUS, SIGFPE, SIGILL and SIGTRAP with Linux's siginfo and ucontext, handlers that move RIP
//! or leave with siglongjmp, a stack overflow caught on the alternate stack; and the hostile
//! cases (a fault inside the handler, a handler that loops on its fault or jumps to a kernel
//! address, an ignored SIGSEGV) ending the program with its crash report, never the server.

use std::time::Duration;

use crate::common::guest;
use crate::harness::{js, Server};

/// A server for one test: `name` is its scratch directory (tests run in parallel).
fn faults_server(name: &str) -> Server {
    let file = guest("faults");
    Server::with_config(
        name,
        &format!(
            "{{ \"faults\": {{ \"filename\": {}, \"max_memory\": 64 }} }}",
            js(file.to_str().unwrap())
        ),
    )
}

#[test]
fn cpu_faults_run_the_programs_handlers_with_siginfo_and_ucontext() {
    let s = faults_server("faults-handlers");
    // Page faults: SEGV_MAPERR (1) / SEGV_ACCERR (2), si_addr = CR2, trapno 14, the error
    // code of a user-mode read; the handler's RIP and RAX changes take effect (ret 0x5a).
    assert_eq!(
        s.ok("/faults/segv"),
        "segv: sig 11 code 1 addr 0x10 trapno 14 err 0x4 cr2 0x10 ret 0x5a"
    );
    assert_eq!(
        s.ok("/faults/accerr"),
        "accerr: sig 11 code 2 addr 0x3000 trapno 14 err 0x5 cr2 0x3000 ret 0x5a"
    );
    assert_eq!(
        s.ok("/faults/far"),
        "far: sig 11 code 1 addr 0x200000000000 trapno 14 err 0x4 cr2 0x200000000000 ret 0x5a"
    );
    // #GP and #SS: SI_KERNEL (128), no address, as Linux.
    assert_eq!(
        s.ok("/faults/gp"),
        "gp: sig 11 code 128 addr 0 trapno 13 err 0 cr2 0 ret 0x5a"
    );
    // #SS through RBP; QEMU's software CPU (scripts/hwkvm.sh) raises #GP for it instead.
    let ss = s.ok("/faults/ss");
    assert!(
        ss == "ss: sig 7 code 128 addr 0 trapno 12 err 0 cr2 0 ret 0x5a"
            || ss == "ss: sig 11 code 128 addr 0 trapno 13 err 0 cr2 0 ret 0x5a",
        "{ss}"
    );
    let fpe = s.ok("/faults/fpe");
    assert!(
        fpe.starts_with("fpe: sig 8 code 1 addr 0x") && fpe.ends_with("ret 0x5a at rip 1"),
        "{fpe}"
    );
    let ill = s.ok("/faults/ill");
    assert!(
        ill.starts_with("ill: sig 4 code 2 addr 0x") && ill.ends_with("ret 0x5a at rip 1"),
        "{ill}"
    );
    assert_eq!(
        s.ok("/faults/trap"),
        "trap: sig 5 code 128 addr 0 trapno 3 err 0 cr2 0 ret 0x5a"
    );
    // An unmasked SSE division by zero: FPE_FLTDIV, and the handler starts with the default
    // MXCSR (the exception masked again).
    // (QEMU's software CPU under scripts/hwkvm.sh raises no SIMD exceptions at all.)
    let simd = s.ok("/faults/simd");
    assert!(
        simd == "simd: sig 8 code 3 q 0 csr restored by handler entry 1"
            || (crate::common::time_scale() > 1.0
                && simd == "simd: sig 0 code 0 q inf csr restored by handler entry 0"),
        "{simd}"
    );
    assert_eq!(s.ok("/faults/overflow"), "overflow: sig 11 code 1 on_alt 1");
    assert_eq!(
        s.ok("/faults/jumps"),
        "jumps: 100 faults, addr 0x83, blocked after 0"
    );
    // Hostile handlers end the program with the crash report; the next request is served.
    for (action, log) in [
        ("nested", "page fault (#PF) reading address 0x8"),
        (
            "loop",
            "the SIGSEGV handler let the same fault happen 1000 times in a row",
        ),
        ("ignored", "page fault (#PF) reading address 0x10"),
        ("wild", "page fault (#PF) executing address 0x0"),
    ] {
        let r = s.get(&format!("/faults/{action}"));
        assert_eq!(r.status, 500, "{action}: {}", r.text());
        if crate::common::time_scale() > 1.0 && matches!(action, "loop" | "wild") {
            // Under QEMU's software CPU (scripts/hwkvm.sh) 1,000 fault round trips outlast
            // the request's time limit: it ends with the timeout instead.
            continue;
        }
        s.wait_log(log, Duration::from_secs(10));
    }
    assert_eq!(
        s.ok("/faults/segv"),
        "segv: sig 11 code 1 addr 0x10 trapno 14 err 0x4 cr2 0x10 ret 0x5a"
    );
}

#[test]
fn timers_deliver_their_signals_bounded_and_not_across_requests() {
    let s = faults_server("faults-timers");
    // alarm() interrupts a sleep: the handler runs, nanosleep says EINTR; SI_KERNEL (128).
    assert_eq!(
        s.ok("/faults/alarm"),
        "alarm: sig 14 code 128 sleep -1 EINTR count 1"
    );
    assert_eq!(
        s.ok("/faults/itimer"),
        "itimer: 1 signals, armed 1, stopped 1"
    );
    // POSIX timer: SI_TIMER (-2) and the sigevent's value; one-shot: disarmed after.
    assert_eq!(
        s.ok("/faults/posix"),
        "posix: create 0 sig 10 code -2 value 4242 pending 1 done 1 delete 0 again 1"
    );
    assert_eq!(
        s.ok("/faults/threadid"),
        "threadid: create 0 sig 12 in the thread 1"
    );
    // SIGEV_THREAD: glibc's helper thread takes each expiry (SIGEV_THREAD_ID, signal 32) with
    // sigwaitinfo and runs the function in a thread of its own.
    assert_eq!(
        s.ok("/faults/sevthread"),
        "sevthread: create 0 fired 1 value 77 other thread 1 delete 0"
    );
    assert_eq!(s.ok("/faults/prof"), "prof: sig 27 code 128");
    // A 1 ns period is raised to 1 ms: the program runs on between its signals.
    assert_eq!(
        s.ok("/faults/storm"),
        "storm: interval 1000000 ns, handled some 1"
    );
    assert_eq!(
        s.ok("/faults/timers"),
        "timers: made 32 then EAGAIN, clock -22 ptr -14 which -22 out -14 ns -22"
    );
    // main()'s periodic timer stopped at the freeze.
    assert_eq!(
        s.ok("/faults/frozen"),
        "frozen: main had ticks 1, the request 0"
    );
    for (action, log) in [
        ("deadly", "killed by signal SIGALRM"),
        ("pause", "pause() with no timer and no other thread"),
    ] {
        let r = s.get(&format!("/faults/{action}"));
        assert_eq!(r.status, 500, "{action}: {}", r.text());
        s.wait_log(log, Duration::from_secs(10));
    }
    // A request's timers are gone with its reset: none fires in the next one.
    assert_eq!(s.ok("/faults/leave"), "leave: armed");
    assert_eq!(
        s.ok("/faults/frozen"),
        "frozen: main had ticks 1, the request 0"
    );
}
