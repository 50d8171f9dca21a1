//! Waiting for descriptors inside a VM (guest/tests/readiness.c): blocking pipes, poll,
//! select, epoll, eventfd and timerfd between green threads; waits that time out; a wait no
//! one can end reported as a deadlock; a wait until the request's timeout that leaves the HTTP
//! worker free; a request's descriptors closed by its reset; the hostile cases.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{edgevm_run, guest, scratch};
use crate::harness::{js, Conn, Server};

fn server(name: &str, env: &[(&str, &str)]) -> Server {
    let dir = scratch(name);
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        format!(
            "{{ \"readiness\": {{ \"filename\": {}, \"max_memory\": 128, \"concurrency\": 2, \
             \"max_request_time\": 2 }} }}",
            js(guest("readiness").to_str().unwrap())
        ),
    )
    .unwrap();
    Server::start(&dir, &[&cfg], env)
}

const PIPE: &str = "read 5 hello, poll 0 then 1 revents 1, read 5 hello, full at 65536 (EAGAIN), \
                    then wrote 1 after the reader took 8192";
const EPOLL: &str = "eventfd events 2, then 0; pipe 1 (data 2), again 1; timer 1 (data 3), \
                     expirations>=3 1, disarmed 0; oneshot 1 0 1; nested 1 (data 9)";
const SELECT: &str = "select 0 cleared 0, pselect 1 set 1, writable 1";

#[test]
fn pipes_poll_select_epoll_eventfd_and_timerfd_between_threads() {
    let s = server("readiness", &[]);
    for _ in 0..2 {
        assert_eq!(s.ok("/readiness/pipe"), PIPE);
        assert_eq!(s.ok("/readiness/epoll"), EPOLL);
        assert_eq!(s.ok("/readiness/select"), SELECT);
        assert_eq!(
            s.ok("/readiness/timeout"),
            "poll 0, epoll_wait 0, waited >= 30 ms: 1"
        );
        // What a request opens is closed by its reset: the same numbers every time.
        assert_eq!(s.ok("/readiness/fds"), "fds 3 4 5");
    }
    assert_eq!(
        s.ok("/readiness/hostile"),
        "self 22, loop 40, twice 17, bad event 14, not registered 2, huge max 22, zero max 22, \
         bad buffer 14, not epoll 22, closed 9, poll bad 14, poll huge 22, poll nval 1/32, \
         eventfd max 22, short 22, timer bad 14, clock 22, select -1 22, select closed 9, \
         eventfds until 1 (24)"
    );
    assert_eq!(s.ok("/readiness/fds"), "fds 3 4 5");
    // A wait nothing can end fails the request at once, and the VM serves the next one.
    let r = s.get("/readiness/forever");
    assert_eq!(r.status, 500, "{}", r.text());
    s.wait_log("it would never wake up (deadlock)", Duration::from_secs(10));
    assert_eq!(s.ok("/readiness/pipe"), PIPE);
    s.stop();
}

#[test]
fn a_wait_until_the_request_timeout_leaves_the_http_worker_free() {
    // One HTTP worker: while a request waits on epoll_wait(-1) (another of its threads
    // sleeps, so it is no deadlock) until its 2 s timeout, the worker serves other requests.
    let s = server("readiness-worker", &[("EDGEVM_HTTP_THREADS", "1")]);
    assert_eq!(s.ok("/readiness/fds"), "fds 3 4 5");
    let port = s.port;
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let slow = std::thread::spawn(move || {
        let r = Conn::new(port).send("GET", "/readiness/timeout_forever", &[], b"");
        d.store(true, Ordering::SeqCst);
        r
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.ok("/readiness/fds"), "fds 3 4 5");
    assert!(
        !done.load(Ordering::SeqCst),
        "the waiting request ended before the other one was served"
    );
    let r = slow.join().unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    s.wait_log("Backend VM timed out", Duration::from_secs(10));
    assert_eq!(s.ok("/readiness/select"), SELECT);
    s.stop();
}

#[test]
fn readiness_under_edgevm_run() {
    let r = edgevm_run(&["run", "--raw", guest("readiness").to_str().unwrap(), "run"]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    assert_eq!(r.stdout, format!("{PIPE}\n{EPOLL}\n{SELECT}\n"));
}
