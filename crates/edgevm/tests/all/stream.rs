//! Streaming responses (issue 14, item 3): `begin_streaming_response` sends the head at once
//! and the body chunked as the program's callback produces it, on a blocking thread (never
//! an HTTP worker); a callback that stalls, crashes or lies cuts the body short and the VM is
//! reset; a client that goes away stops the program. Guest: guest/tests/stream.c.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;
use crate::harness::*;

fn server(name: &str, env: &[(&str, &str)]) -> Server {
    let dir = scratch(name);
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        format!(
            "{{ \"s\": {{ \"filename\": {}, \"max_memory\": 64, \"concurrency\": 2 }},\n  \"hello\": {{ \"filename\": {}, \"max_memory\": 64 }},\n  \"ex\": {{ \"filename\": {}, \"max_memory\": 64 }} }}\n",
            js(guest("stream").to_str().unwrap()),
            js(guest("example_hello").to_str().unwrap()),
            js(guest("example_stream").to_str().unwrap())
        ),
    )
    .unwrap();
    Server::start(&dir, &[&cfg], env)
}

fn lines(n: u32) -> String {
    (0..n)
        .map(|i| format!("chunk {i} of the stream\n"))
        .collect()
}

/// A GET on a fresh connection, read to the end as raw bytes: (head, raw body after it).
fn raw_get(port: u16, path: &str) -> (String, Vec<u8>) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    let _ = c.read_to_end(&mut all);
    let at = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{path}: no head in {:?}", String::from_utf8_lossy(&all)));
    (
        String::from_utf8_lossy(&all[..at]).into_owned(),
        all[at + 4..].to_vec(),
    )
}

/// Read from `c` until `want` bytes of (chunked) body data arrived; the bytes read.
fn read_some(c: &mut TcpStream, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while got.len() < want {
        let n = c.read(&mut buf).expect("read the stream");
        assert!(n > 0, "the stream ended after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[test]
fn streamed_responses_arrive_chunked_as_produced() {
    let s = server("stream-ok", &[]);
    let r = s.get("/s/n?n=40");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.log());
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.header("content-length"), None);
    assert_eq!(
        r.header("x-streamed"),
        Some("yes"),
        "headers set before the stream"
    );
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.text(), lines(40));
    // Several MiB, asked for `max` bytes at a time: every byte where the program put it.
    let r = s.get("/s/big?n=3");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 3 << 20 | 12345);
    assert!(r
        .body
        .iter()
        .enumerate()
        .all(|(i, b)| *b == b'a' + (i % 26) as u8));
    // An empty stream, and the VM reset after each (the callbacks' global counter is 0).
    let r = s.get("/s/empty");
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(s.ok("/s/calls"), "calls=0");
    // A body of 1 TiB: its first MiB arrives while the program is still producing it.
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(b"GET /s/forever HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let got = read_some(&mut c, 1 << 20);
    let text = String::from_utf8_lossy(&got[..200]).into_owned();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    drop(c);
    s.wait_log("the client went away", Duration::from_secs(20));
    // HEAD gets the head; the program is stopped.
    let r = s.req("HEAD", "/s/n?n=3", &[], b"");
    assert_eq!((r.status, r.body.len()), (200, 0));
    for _ in 0..3 {
        assert_eq!(s.ok("/s/n?n=2"), lines(2));
    }
    assert_eq!(s.stat("s", "exceptions"), 0.0);
    // The example (guest/examples/stream.c): one line per callback.
    let r = s.get("/ex?lines=2000");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-lines"), Some("streamed"));
    let want: String = (1..=2000u64)
        .map(|i| format!("{i} squared is {}\n", i * i))
        .collect();
    assert_eq!(r.text(), want);
}

#[test]
fn hostile_and_stalling_streams_are_cut_short_and_the_next_request_is_served() {
    let s = server("stream-hostile", &[]);
    // Failures before the head: an ordinary 500.
    for (mode, why) in [
        (
            "badstatus",
            "invalid HTTP status 99 passed to begin_streaming_response",
        ),
        (
            "badctype",
            "bad content type pointer passed to begin_streaming_response",
        ),
    ] {
        let r = s.get(&format!("/s/{mode}"));
        assert_eq!(r.status, 500, "{mode}: {}", r.text());
        assert!(r.text().contains(why), "{mode}: {}", r.text());
        assert_eq!(s.ok("/s/n?n=3"), lines(3));
    }
    // Failures after the head: the body stops without its final chunk, the log says why.
    for (mode, why) in [
        ("stall", "Backend VM timed out (2.0s)"),
        ("sleep", "Backend VM timed out (2.0s)"),
        ("zero", "the streaming callback returned no data (stalled)"),
        (
            "badptr",
            "bad data pointer returned by the streaming callback",
        ),
        (
            "wildptr",
            "bad data pointer returned by the streaming callback",
        ),
        ("toolong", "more than the"),
        ("crash", "streamed response failed after 44 of"),
        (
            "exit",
            "the program exited (status 3) in its streaming callback",
        ),
        (
            "respond",
            "the streaming callback answered the request again",
        ),
        ("again", "the streaming callback answered the request again"),
        ("badcb", "streamed response failed after 0 of"),
        ("nullcb", "streamed response failed after 0 of"),
    ] {
        let (head, body) = raw_get(s.port, &format!("/s/{mode}"));
        assert!(head.starts_with("HTTP/1.1 200"), "{mode}: {head}");
        assert!(
            head.contains("transfer-encoding: chunked"),
            "{mode}: {head}"
        );
        let body = String::from_utf8_lossy(&body).into_owned();
        assert!(
            !body.ends_with("0\r\n\r\n"),
            "{mode}: a cut stream must not end like a complete one: {body:?}"
        );
        s.wait_log(why, Duration::from_secs(20));
        assert_eq!(s.ok("/s/n?n=3"), lines(3), "after {mode}");
        assert_eq!(s.ok("/s/calls"), "calls=0", "after {mode}");
    }
    let log = s.log();
    assert!(
        log.contains("streamed response failed after 44 of 110 bytes"),
        "{log}"
    );
    // Nothing a stream did is counted against the 2xx of the others.
    assert!(s.stat("s", "timeouts") >= 2.0);
    assert!(s.stat("s", "exceptions") >= 3.0);
}

#[test]
fn clients_that_go_away_or_stop_reading_do_not_hold_vms_or_workers() {
    // One HTTP worker: a stream waiting for its client must not hold it.
    let s = server("stream-gone", &[("EDGEVM_HTTP_THREADS", "1")]);
    assert_eq!(s.ok("/hello"), "Hello World!\n");
    for round in 0..3 {
        // Both request VMs stream to clients that read a little and stop reading.
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            c.write_all(b"GET /s/forever HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            read_some(&mut c, 100_000);
            held.push(c);
        }
        // The only HTTP worker still answers others meanwhile.
        for _ in 0..3 {
            assert_eq!(s.ok("/hello"), "Hello World!\n", "round {round}");
        }
        // The clients go away: both VMs come back, reset.
        drop(held);
        for _ in 0..4 {
            assert_eq!(s.ok("/s/n?n=2"), lines(2), "round {round}");
        }
        assert_eq!(s.ok("/s/calls"), "calls=0");
    }
    // Every stream was stopped (the line comes as its VM goes back: wait for the last).
    let t0 = std::time::Instant::now();
    while s.log().matches("the client went away").count() < 6 && t0.elapsed().as_secs() < 20 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = s.log();
    assert_eq!(
        log.matches("the client went away").count(),
        6,
        "every stream was stopped: {log}"
    );
    assert_eq!(
        s.stat("s", "status_5xx"),
        0.0,
        "a client going away is no program error"
    );
}
