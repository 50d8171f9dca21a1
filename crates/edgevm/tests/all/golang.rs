//! A Go program (guest/examples/go: Debian's Go 1.19, CGO_ENABLED=0, static) serving requests
//! through the kvm package (guest/go/kvm): the Go runtime's threads as green threads, futexes,
//! epoll (its timers), signals (the runtime's handlers, SIGURG preemption through tgkill to
//! another thread, SIGSEGV turned into a Go panic), its memory reservations; a worker pool of
//! goroutines frozen with the program serves every request.

use crate::common::guest;
use crate::harness::{js, Server};

fn goserve() -> Server {
    let file = guest("example_goserve");
    Server::with_config(
        "goserve",
        &format!(
            "{{ \"goserve\": {{ \"filename\": {}, \"max_memory\": 256, \"address_space\": 1024, \"concurrency\": 2 }} }}",
            js(file.to_str().unwrap())
        ),
    )
}

#[test]
fn a_go_program_serves_requests_with_goroutines_channels_and_timers() {
    let s = goserve();
    // The pool's goroutines were started by main() and frozen with it.
    for _ in 0..3 {
        assert_eq!(
            s.ok("/goserve/squares?n=100"),
            "squares: 100 jobs, sum 338350\n"
        );
    }
    assert_eq!(
        s.ok("/goserve/fanout?n=50"),
        "fanout: 50 goroutines, sum 1225, slept true\n"
    );
    assert_eq!(
        s.ok("/goserve/sleep?n=20"),
        "sleep: 20 ms, long enough true\n"
    );
    // GOMAXPROCS is 1 (one vCPU): main runs again only if the runtime preempts the spinning
    // goroutine (sysmon's SIGURG to its thread).
    assert_eq!(s.ok("/goserve/spin?n=30"), "spin: preempted true\n");
    // A nil dereference: the runtime's SIGSEGV handler turns the fault into a panic.
    assert_eq!(
        s.ok("/goserve/nilptr"),
        "nilptr: runtime error: invalid memory address or nil pointer dereference\n"
    );
    let r = s.req("POST", "/goserve/echo", &[], b"some data");
    assert_eq!((r.status, r.text().as_str()), (200, "some data"));
    assert_eq!(r.header("x-length"), Some("9"));
    assert_eq!(s.get("/goserve/squares?n=100000").status, 400);
    // Two VMs at once, each resumed from the frozen runtime every time.
    let all = s.get_concurrently(2, 4, "/goserve/fanout?n=20");
    assert_eq!(all.len(), 8);
    for a in all {
        assert_eq!(a, "fanout: 20 goroutines, sum 190, slept true\n");
    }
}

/// The reference's configuration for Go: its heap remapped at 0xC000000000 (where Go's runtime
/// asks for it) with `relocate_fixed_mmap` off, so the runtime's address hints are followed.
#[test]
fn a_go_program_runs_with_its_heap_remapped_at_0xc000000000() {
    let file = guest("example_goserve");
    let s = Server::with_config(
        "goserve-remap",
        &format!(
            "{{ \"goserve\": {{ \"filename\": {}, \"max_memory\": 512, \"address_space\": 1024, \
             \"concurrency\": 2, \"verbose_syscalls\": true, \"relocate_fixed_mmap\": false, \
             \"remapping\": {{ \"go_heap\": [\"0xC000000000\", 256] }} }} }}",
            js(file.to_str().unwrap())
        ),
    );
    for _ in 0..3 {
        assert_eq!(
            s.ok("/goserve/squares?n=100"),
            "squares: 100 jobs, sum 338350\n"
        );
        assert_eq!(
            s.ok("/goserve/fanout?n=50"),
            "fanout: 50 goroutines, sum 1225, slept true\n"
        );
    }
    // The runtime's first heap arena is where it asked for it: in the remapped area.
    let log = s.log();
    assert!(
        log.contains("mmap(0xc000000000, 0x4000000, 0x0) = 0xc000000000"),
        "{log}"
    );
}
