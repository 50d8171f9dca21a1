//! The benchmark's checks that CI runs (docs/BENCHMARKS.md):
//!
//! * the exits-per-request guard: every benchmark program (bench/programs.json) must need at
//!   most the VM exits per request recorded in bench/expected-exits.json (a count, not a time);
//! * the native baselines (`edgevm_server::native`, `edgevm-hello`) answer byte for byte like
//!   the examples served by edgevm, apart from the `Date` header.

use std::net::SocketAddr;
use std::path::Path;

use crate::common::*;
use crate::harness::*;

/// bench/programs.json with the guest directory filled in, written into a scratch directory.
fn bench_server(name: &str) -> Server {
    let template = std::fs::read_to_string(root().join("bench/programs.json")).unwrap();
    let config = template.replace("@GUESTS@", &guests().to_string_lossy());
    Server::with_config(name, &config)
}

/// One program of bench/expected-exits.json: the request to send and the recorded exits.
struct Expected {
    name: String,
    method: String,
    url: String,
    body: Vec<u8>,
    want: u64,
}

/// The programs of bench/expected-exits.json ("method" GET and "body" empty unless given).
fn expected_exits(path: &Path) -> Vec<Expected> {
    let text = std::fs::read_to_string(path).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
    let mut out = Vec::new();
    for (name, e) in v.as_object().unwrap() {
        if name.starts_with('_') {
            continue;
        }
        let want = e["exits_per_request"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: exits_per_request must be a whole number"));
        out.push(Expected {
            name: name.clone(),
            method: e["method"].as_str().unwrap_or("GET").to_owned(),
            url: e["url"].as_str().expect("url").to_owned(),
            body: e["body"].as_str().unwrap_or("").as_bytes().to_vec(),
            want,
        });
    }
    assert!(!out.is_empty(), "{}: no programs", path.display());
    out
}

/// Send `n` requests to each program and compare the exits it needed with the record.
/// Returns one line per program that needs more than recorded.
fn check_exits(s: &Server, expected: &[Expected], n: u64) -> Vec<String> {
    s.wait_loaded(&expected.iter().map(|e| e.name.as_str()).collect::<Vec<_>>());
    let mut conn = s.connect();
    let mut failures = Vec::new();
    for Expected {
        name,
        method,
        url,
        body,
        want,
    } in expected
    {
        let before_req = s.stat(name, "requests");
        let before_exits = s.stat(name, "exits");
        for _ in 0..n {
            let r = conn.send(method, url, &[], body);
            assert_eq!(r.status, 200, "{name} {method} {url}: {}", r.text());
        }
        let reqs = s.stat(name, "requests") - before_req;
        let exits = s.stat(name, "exits") - before_exits;
        assert_eq!(reqs, n as f64, "{name}: requests counted");
        let per = exits / reqs;
        eprintln!("exits per request: {name} {per:.3} (recorded {want})");
        if per > *want as f64 {
            failures.push(format!(
                "{name} ({method} {url}): {per:.3} VM exits per request, recorded {want} in bench/expected-exits.json"
            ));
        } else if per < *want as f64 {
            eprintln!("note: {name} needs fewer exits than recorded ({per:.3} < {want}): lower the value in bench/expected-exits.json");
        }
    }
    failures
}

#[test]
fn exits_per_request_do_not_rise_above_the_record() {
    let expected = expected_exits(&root().join("bench/expected-exits.json"));
    let s = bench_server("bench_exits");
    let failures = check_exits(&s, &expected, 20);
    assert!(
        failures.is_empty(),
        "more VM exits per request than recorded:\n{}",
        failures.join("\n")
    );
}

/// The guard fails when a program needs more exits than recorded: the same check against a
/// record that is one exit lower for every program.
#[test]
fn exits_guard_fails_when_a_program_needs_more() {
    let expected: Vec<_> = expected_exits(&root().join("bench/expected-exits.json"))
        .into_iter()
        .map(|e| Expected {
            want: e.want - 1,
            ..e
        })
        .collect();
    let s = bench_server("bench_exits_lower");
    let failures = check_exits(&s, &expected, 3);
    assert_eq!(failures.len(), expected.len(), "{failures:?}");
}

/// Status line, headers (names and values, in order) and body; `Date` is left out.
fn without_date(r: &Resp) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let h = r
        .headers
        .iter()
        .filter(|(k, _)| k != "date")
        .cloned()
        .collect();
    (r.status, h, r.body.clone())
}

#[test]
fn native_baseline_answers_like_the_examples() {
    let s = bench_server("bench_native");
    s.wait_loaded(&["hello", "scounter", "counter"]);
    let native = edgevm_server::native::NativeServer::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("start the native baseline");
    let mut ce = s.connect();
    let mut cn = Conn::new(native.addr.port());
    // Both counters start fresh: the same sequence of requests gives the same numbers.
    for path in [
        "/hello/",
        "/hello/x?y=1",
        "/scounter/",
        "/scounter/",
        "/counter/",
        "/counter/",
        "/scounter/",
        "/counter/",
    ] {
        let e = ce.send("GET", path, &[], b"");
        let n = cn.send("GET", path, &[], b"");
        assert_eq!(e.status, 200, "edgevm {path}: {}", e.text());
        assert!(e.header("date").is_some() && n.header("date").is_some());
        assert_eq!(
            without_date(&e),
            without_date(&n),
            "{path}: edgevm {e:?}\nnative {n:?}"
        );
    }
    let e = ce.send("GET", "/counter/", &[], b"");
    assert_eq!(e.header("x-counter"), Some("4"));
    assert_eq!(e.text(), "Hello Compute World!\n");
    let e = ce.send("GET", "/scounter/", &[], b"");
    assert_eq!(e.text(), "Hello 3 World!\n");
}
