//! Storage calls on the caller's thread (edgevm-runtime's storage.rs): a request runs its
//! storage call itself under the storage VM's FIFO turn, and the next call is chained behind
//! the previous function's clean-up in one run. Guest: guest/tests/storage_api.c.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::harness::*;

/// storage_api as "st" (and example_hello as "hello"), with `env` for the server.
fn server(name: &str, extra: &str, env: &[(&str, &str)]) -> Server {
    let dir = scratch(name);
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        format!(
            "{{ \"st\": {{ \"filename\": {}, \"max_memory\": 64, \"storage\": true{extra} }},\n\
             \"hello\": {{ \"filename\": {}, \"max_memory\": 64 }} }}\n",
            js(guest("storage_api").to_str().unwrap()),
            js(guest("example_hello").to_str().unwrap())
        ),
    )
    .unwrap();
    let s = Server::start(&dir, &[&cfg], env);
    s.ok("/hello");
    s
}

#[test]
fn concurrent_chained_calls_keep_the_clean_ups_inputs_and_stack() {
    let s = server("storage-chain", ", \"concurrency\": 4", &[]);
    // Each clean-up checks its input and its stack after storage_return, while the next call
    // (chained behind it) already has its inputs in the storage VM: sizes vary so that calls
    // alternate between the top of the stack and below the paused clean-up.
    let port = s.port;
    let lens = [0usize, 1, 24, 700, 4096, 20000, 65536, 3];
    std::thread::scope(|sc| {
        for t in 0..4usize {
            sc.spawn(move || {
                let mut c = Conn::new(port);
                for i in 0..40usize {
                    let len = lens[(i + t * 3) % lens.len()];
                    let r = c.send(
                        "GET",
                        &format!("/st/keep?len={len}&seed={}", t * 100 + i),
                        &[],
                        b"",
                    );
                    assert_eq!(r.text(), "r=8 ok=1", "thread {t} call {i} (len {len})");
                }
            });
        }
    });
    // Every clean-up ran (the last one at the latest with this call) and found its data.
    assert_eq!(s.ok("/st/keepstats"), "r=15 data=calls=160 bad=0");
    assert_eq!(s.ok("/st/count"), "r=8 count=1");
    s.stop();
}

#[test]
fn a_clean_up_runs_even_when_no_call_follows() {
    // The clean-up is left to the next call; with none coming, the storage thread runs it.
    let s = server("storage-lone-cleanup", ", \"concurrency\": 2", &[]);
    assert_eq!(s.ok("/st/cleanuplog?id=1"), "r=1 data=l");
    s.wait_log("cleanup 1 ran", Duration::from_secs(5));
    // Again once the storage thread is awake (it looks every 20 ms for work left 10 ms).
    assert_eq!(s.ok("/st/cleanuplog?id=2"), "r=1 data=l");
    s.wait_log("cleanup 2 ran", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(2500));
    // And after it dozed off again (2 s without work): the last holder hands it the turn.
    assert_eq!(s.ok("/st/cleanuplog?id=3"), "r=1 data=l");
    s.wait_log("cleanup 3 ran", Duration::from_secs(5));
    s.stop();
}

#[test]
fn clean_ups_that_hang_or_crash_fail_only_themselves() {
    let s = server(
        "storage-bad-cleanup",
        ", \"max_storage_time\": 3.0, \"concurrency\": 2",
        &[],
    );
    // The caller has its answer at storage_return...
    let t = Instant::now();
    assert_eq!(s.ok("/st/hangafter"), "r=1 data=h");
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    // ...the endless clean-up is stopped after 1 s, and storage serves the next call.
    assert_eq!(s.ok("/st/count"), "r=8 count=1");
    let log = s.wait_log("cleanup timed out", Duration::from_secs(5));
    assert!(log.contains("'st_hangafter'"), "{log}");
    assert_eq!(s.ok("/st/crashafter"), "r=1 data=c");
    assert_eq!(s.ok("/st/count"), "r=8 count=2");
    let log = s.wait_log("'st_crashafter'", Duration::from_secs(5));
    assert!(log.contains("failed after storage_return"), "{log}");
    assert!(log.contains("page fault"), "{log}");
    assert_eq!(s.stat("st", "status_5xx"), 0.0);
    s.stop();
}

#[test]
fn slow_or_waiting_storage_calls_do_not_hold_the_http_worker() {
    // One HTTP worker: a storage call that runs long, and one waiting for the storage VM
    // meanwhile, must both leave the worker (each fails this test if it keeps it).
    let s = server(
        "storage-one-worker",
        ", \"max_storage_time\": 5.0, \"concurrency\": 2",
        &[("EDGEVM_HTTP_THREADS", "1")],
    );
    let port = s.port;
    let slow = std::thread::spawn(move || {
        Conn::new(port)
            .send("GET", "/st/spin?ms=2000", &[], b"")
            .text()
    });
    std::thread::sleep(Duration::from_millis(300));
    let waiting =
        std::thread::spawn(move || Conn::new(port).send("GET", "/st/count", &[], b"").text());
    std::thread::sleep(Duration::from_millis(300));
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(s.ok("/hello"), "Hello World!\n");
        worst = worst.max(t.elapsed());
    }
    assert_eq!(slow.join().unwrap(), "r=4 data=spun");
    assert_eq!(waiting.join().unwrap(), "r=8 count=1");
    // Generous: the slow call takes 2 s; a held worker would delay /hello about that long.
    assert!(
        worst < Duration::from_millis(900),
        "a request to another program waited {worst:?} while storage was busy"
    );
    s.stop();
}
