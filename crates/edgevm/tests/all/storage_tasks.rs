//! Storage tasks (issue 5, item 3): `storage_task` (queued now), `schedule_storage_task`
//! (one-off after a delay, or periodic) and `stop_storage_task`, run in the storage VM through
//! the storage queue. Guest: guest/tests/storage_tasks.c.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::harness::*;

fn server(name: &str) -> Server {
    Server::with_config(
        name,
        &format!(
            "{{ \"t\": {{ \"filename\": {}, \"max_memory\": 64, \"storage\": true, \"concurrency\": 2 }} }}",
            js(guest("storage_tasks").to_str().unwrap())
        ),
    )
}

/// Poll /t/get until `pred` holds (or fail after `limit`); the last answer.
fn wait_for(s: &Server, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
    let t = Instant::now();
    loop {
        let got = s.ok("/t/get");
        if pred(&got) {
            return got;
        }
        assert!(t.elapsed() < limit, "still {got:?} after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn field(body: &str, key: &str) -> i64 {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {body:?}"))
}

#[test]
fn tasks_run_once_later_and_periodically_until_stopped() {
    let s = server("tasks-basic");
    // main() itself called storage (as the reference allows): a call and a task (+1000).
    assert_eq!(s.ok("/t/initinfo"), "call=8 value=42 task=0");
    // The storage VM's own main() scheduled a task (the first timer: id 1) and queued one;
    // each runs once.
    let boot = wait_for(&s, Duration::from_secs(5), |b| {
        field(b, "boottick") == 1 && field(b, "bootmark") == 1
    });
    assert_eq!(field(&boot, "bootid"), 1, "{boot}");
    // Queued now: id 0, runs in storage with a copy of the data.
    assert_eq!(s.ok("/t/add?n=5"), "id=0");
    assert_eq!(s.ok("/t/add?n=7"), "id=0");
    wait_for(&s, Duration::from_secs(5), |b| field(b, "total") == 1012);
    // One-off after 300 ms: not before, then exactly once.
    let t = Instant::now();
    let id = s.ok("/t/later?n=100&ms=300");
    assert_eq!(id, "id=2");
    let early = s.ok("/t/get");
    if t.elapsed() < Duration::from_millis(250) {
        assert_eq!(field(&early, "total"), 1012, "ran too early: {early}");
    }
    wait_for(&s, Duration::from_secs(5), |b| field(b, "total") == 1112);
    assert!(t.elapsed() >= Duration::from_millis(290));
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        field(&s.ok("/t/get"), "total"),
        1112,
        "a one-off task ran twice"
    );
    // Periodic every 50 ms until stopped.
    let id: u64 = s.ok("/t/tick?ms=50")["id=".len()..].parse().unwrap();
    assert!(id >= 3);
    wait_for(&s, Duration::from_secs(5), |b| field(b, "ticks") >= 4);
    assert_eq!(s.ok(&format!("/t/stop?id={id}")), "r=1");
    // A tick already queued may still run; after that nothing.
    std::thread::sleep(Duration::from_millis(150));
    let after = field(&s.ok("/t/get"), "ticks");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(field(&s.ok("/t/get"), "ticks"), after, "ticks after stop");
    // Stopping twice, or an unknown id, is false.
    assert_eq!(s.ok(&format!("/t/stop?id={id}")), "r=0");
    assert_eq!(s.ok("/t/stop?id=999"), "r=0");
    s.stop();
}

#[test]
fn tasks_from_storage_limits_allow_list_and_crashes() {
    let s = server("tasks-limits");
    // A storage function may queue a task itself.
    assert_eq!(s.ok("/t/fromstorage?n=3"), "r=0");
    wait_for(&s, Duration::from_secs(5), |b| field(b, "total") == 1003);
    // At most 15 scheduled tasks (once the storage main()'s one-off task, id 1, has run).
    wait_for(&s, Duration::from_secs(5), |b| field(b, "boottick") == 1);
    for i in 2..=16 {
        assert_eq!(s.ok("/t/tick?ms=60000"), format!("id={i}"));
    }
    assert_eq!(s.ok("/t/tick?ms=60000"), "id=-1");
    assert_eq!(s.ok("/t/stop?id=3"), "r=1");
    assert_eq!(s.ok("/t/tick?ms=60000"), "id=17");
    // Data over 2 MB is refused.
    assert_eq!(s.ok("/t/huge"), "id=-1");
    // A task outside STORAGE_ALLOW never runs; a crashing task is logged; storage goes on.
    assert_eq!(s.ok("/t/evil"), "id=0");
    assert_eq!(s.ok("/t/crash"), "id=0");
    assert_eq!(s.ok("/t/add?n=1"), "id=0");
    let got = wait_for(&s, Duration::from_secs(5), |b| field(b, "total") == 1004);
    assert_eq!(field(&got, "evil"), 0, "{got}");
    s.wait_log("storage task 'evil'", Duration::from_secs(5));
    let log = s.wait_log("storage task 'crasher'", Duration::from_secs(5));
    assert!(
        log.contains("not allowed (not in the program's STORAGE_ALLOW list)"),
        "{log}"
    );
    assert!(log.contains("page fault"), "{log}");
    s.stop();
}
