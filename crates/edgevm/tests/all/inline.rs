//! Where requests run (edgevm-runtime's pool.rs): on the HTTP worker that read them, for a
//! 4 ms slice, then on a blocking thread. With a single HTTP worker
//! (`EDGEVM_HTTP_THREADS=1`), a request that loops or sleeps must not hold up other
//! requests: each of these tests fails if the slow request kept the worker.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::harness::*;

fn one_worker_server(name: &str) -> Server {
    let dir = scratch(name);
    let cfg = dir.join("config.json");
    let prog = |n: &str, file: &str, extra: &str| {
        format!(
            "{}: {{ \"filename\": {}, \"max_memory\": 64, \"concurrency\": 2{extra} }}",
            js(n),
            js(guest(file).to_str().unwrap())
        )
    };
    std::fs::write(
        &cfg,
        format!(
            "{{\n{},\n{}\n}}\n",
            prog("slow", "serve_api", ", \"max_request_time\": 3"),
            prog("hello", "example_hello", "")
        ),
    )
    .unwrap();
    let s = Server::start(&dir, &[&cfg], &[("EDGEVM_HTTP_THREADS", "1")]);
    s.ok("/slow/ok");
    s.ok("/hello");
    s
}

/// While `slow_path` runs on the server's only HTTP worker, /hello answers quickly.
pub(crate) fn others_are_served_during(s: &Server, slow_path: &str, slow_status: u16) {
    let port = s.port;
    let slow_path = slow_path.to_owned();
    let slow = std::thread::spawn(move || Conn::new(port).send("GET", &slow_path, &[], b""));
    std::thread::sleep(Duration::from_millis(300));
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(s.ok("/hello"), "Hello World!\n");
        worst = worst.max(t.elapsed());
    }
    let r = slow.join().unwrap();
    assert_eq!(r.status, slow_status, "{}", r.text());
    // Generous: the slow request takes 2-3 s; a held worker would delay /hello that long.
    assert!(
        worst < Duration::from_millis(900),
        "a request to another program waited {worst:?} while the slow request ran"
    );
}

#[test]
fn a_looping_request_does_not_hold_the_http_worker() {
    let s = one_worker_server("inline-loop");
    others_are_served_during(&s, "/slow/loop", 500);
    s.stop();
}

#[test]
fn a_sleeping_request_does_not_hold_the_http_worker() {
    let s = one_worker_server("inline-sleep");
    others_are_served_during(&s, "/slow/sleep?ms=2000", 200);
    s.stop();
}
