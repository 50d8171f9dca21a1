//! Streamed request bodies (issue 14, item 3): a program with `set_backend_stream_post`
//! receives the body segment by segment as it arrives, on a blocking thread, then its POST
//! handler runs; such bodies may be larger than `max_body_size` (only for such programs); a
//! client that stops sending gets 408 after `body_timeout` and the VM is reset; a segment
//! handler that crashes, loops or does not consume its segment fails the request.
//! Guest: guest/tests/stream_post.c.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;
use crate::harness::*;

fn server(name: &str) -> Server {
    let dir = scratch(name);
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        format!(
            "{{ \"sp\": {{ \"filename\": {}, \"max_memory\": 128, \"concurrency\": 2, \"max_request_time\": 3 }},\n  \"echo\": {{ \"filename\": {}, \"max_memory\": 64 }},\n  \"hello\": {{ \"filename\": {}, \"max_memory\": 64 }} }}\n",
            js(guest("stream_post").to_str().unwrap()),
            js(guest("example_echo").to_str().unwrap()),
            js(guest("example_hello").to_str().unwrap())
        ),
    )
    .unwrap();
    Server::start_args(
        &dir,
        &[&cfg],
        &[("EDGEVM_HTTP_THREADS", "1")],
        &["--body-timeout", "2"],
    )
}

fn body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(1469598103934665603u64, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(1099511628211)
    })
}

/// POST `data` (chunked or with Content-Length) on a fresh connection, write errors ignored
/// (the server may answer early), and read the answer: (status, body text).
fn post(port: u16, path: &str, data: &[u8], chunked: bool) -> (u16, String) {
    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {}", data.len())
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-test\r\n{framing}\r\nConnection: close\r\n\r\n"
    );
    let w = c.try_clone().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || {
        let mut w = w;
        let _ = w.write_all(head.as_bytes());
        if chunked {
            for piece in data.chunks(100_000) {
                if write!(w, "{:x}\r\n", piece.len()).is_err()
                    || w.write_all(piece).is_err()
                    || w.write_all(b"\r\n").is_err()
                {
                    return;
                }
            }
            let _ = w.write_all(b"0\r\n\r\n");
        } else {
            let _ = w.write_all(&data);
        }
    });
    let mut r = BufReader::new(c);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let code: u16 = status.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    let _ = writer.join();
    let text = String::from_utf8_lossy(&rest).into_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

#[test]
fn bodies_arrive_segment_by_segment_and_may_exceed_the_buffered_limit() {
    let s = server("stream-post");
    // A small body: segments, then the POST handler with the whole body.
    let b = body(5000);
    let (st, t) = post(s.port, "/sp/sum", &b, false);
    assert_eq!(st, 200, "{t}\n{}", s.log());
    assert_eq!(
        t,
        format!(
            "segments=some bytes=5000 len=5000 fnv={:016x} whole=same offsets=ok ctype=application/x-test",
            fnv(&b)
        )
    );
    // 40 MB (the buffered limit is 16): with Content-Length and chunked.
    let big = body(40 << 20);
    for chunked in [false, true] {
        let (st, t) = post(s.port, "/sp/sum", &big, chunked);
        assert_eq!(st, 200, "chunked={chunked}: {t}\n{}", s.log());
        assert_eq!(
            t,
            format!(
                "segments=some bytes={} len={} fnv={:016x} whole=none offsets=ok ctype=application/x-test",
                big.len(),
                big.len(),
                fnv(&big)
            ),
            "chunked={chunked}"
        );
    }
    // A program without a streaming POST handler keeps the buffered limit.
    let (st, _) = post(s.port, "/echo", &big, false);
    assert_eq!(st, 413);
    // Misbehaving segment handlers fail the request; the next one is served.
    for (mode, status, why) in [
        ("partial", 500, "the streaming POST handler consumed"),
        ("crash", 500, "writing address 0x8 (page not mapped) at RIP"),
        ("loop", 500, "Backend VM timed out (3.0s)"),
        ("early", 200, "early answer"),
    ] {
        let (st, t) = post(s.port, &format!("/sp/{mode}"), &big[..4 << 20], false);
        assert_eq!(st, status, "{mode}: {t}");
        if status == 500 {
            s.wait_log(why, Duration::from_secs(20));
        } else {
            assert_eq!(t, why);
        }
        let (st, t) = post(s.port, "/sp/sum", &b, true);
        assert_eq!(
            (st, t.contains("bytes=5000 ")),
            (200, true),
            "after {mode}: {t}"
        );
    }
}

#[test]
fn a_client_that_stops_sending_gets_408_and_holds_no_worker() {
    let s = server("stream-post-stall");
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    c.write_all(b"POST /sp/sum HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n")
        .unwrap();
    c.write_all(&body(1 << 20)).unwrap();
    // Stalled mid-body, on the only HTTP worker's server: others are served meanwhile.
    for _ in 0..3 {
        assert_eq!(s.ok("/hello"), "Hello World!\n");
    }
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    s.wait_log(
        "request body not received within 2 s",
        Duration::from_secs(20),
    );
    // Both VMs still serve, reset.
    for _ in 0..4 {
        let (st, t) = post(s.port, "/sp/sum", &body(100), false);
        assert_eq!((st, t.contains("bytes=100 ")), (200, true), "{t}");
    }
}
