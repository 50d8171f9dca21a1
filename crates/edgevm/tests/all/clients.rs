//! Hostile HTTP clients against a real `edgevm serve` running a real program
//! (guest/tests/clients.c): malformed requests, huge heads and bodies, pipelining, slowloris
//! heads and bodies, idle and abandoned connections, clients walking away mid-request, and
//! thousands of idle sockets. The limits are set through the configuration's "server" section
//! and the command line (docs/CONFIG.md, docs/SECURITY.md).
//!
//! The program counts every request it sees in shared memory, so the tests can tell that
//! nothing malformed reached it, that abandoned requests ran exactly once, and (`dirty=0`)
//! that its VM was reset after each.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::harness::*;

/// A server running `clients` as program `p` (one request VM unless `concurrency` says
/// otherwise), with `server` as the configuration's "server" object and extra flags.
fn start(name: &str, server: &str, concurrency: u32, flags: &[&str]) -> Server {
    let dir = scratch(name);
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{ "server": {{ {server} }},
                 "p": {{ "filename": {}, "shared_memory": 2, "concurrency": {concurrency},
                         "max_request_time": 20 }} }}"#,
            js(guest("clients").to_string_lossy())
        ),
    )
    .unwrap();
    let s = Server::start_args(&dir, &[&cfg], &[], flags);
    s.ok("/p/warm");
    s
}

/// The program's counters: (started, finished, dirty) from one GET (which counts itself).
fn counters(s: &Server) -> (u64, u64, u64) {
    let body = s.ok("/p/count");
    let num = |k: &str| -> u64 {
        body.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {body:?}"))
    };
    (num("started="), num("finished="), num("dirty="))
}

/// A connection with a read timeout.
fn connect(s: &Server) -> TcpStream {
    let c = TcpStream::connect(("127.0.0.1", s.port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c
}

/// Send `bytes`, close the sending side, read everything the server answers until it closes.
/// (hyper takes the early close as the client leaving: a request still in progress then gets
/// no answer.)
fn exchange(s: &Server, bytes: &[u8]) -> Vec<u8> {
    send_and_read(s, bytes, true)
}

/// Send `bytes` and read everything the server answers until it closes (the request must
/// make it close: `Connection: close`, an error, HTTP/1.0).
fn exchange_open(s: &Server, bytes: &[u8]) -> Vec<u8> {
    send_and_read(s, bytes, false)
}

fn send_and_read(s: &Server, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let mut c = connect(s);
    // The server may answer and close before everything is written (e.g. 413, 431).
    let _ = c.write_all(bytes);
    if half_close {
        let _ = c.shutdown(Shutdown::Write);
    }
    let mut out = Vec::new();
    match c.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "reading the answer to {:?}: {e}",
            String::from_utf8_lossy(bytes)
        ),
    }
    out
}

/// Statuses of the responses in `out`, in order (responses framed by Content-Length, as
/// edgevm sends them).
fn statuses(out: &[u8]) -> Vec<u16> {
    let mut v = Vec::new();
    let mut rest = out;
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
        let Some(status) = head
            .strip_prefix("http/1.")
            .and_then(|h| h.get(2..5))
            .and_then(|s| s.parse().ok())
        else {
            break;
        };
        v.push(status);
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        rest = rest.get(end + 4 + len..).unwrap_or(&[]);
    }
    v
}

/// Wait until the server closes `c` (EOF or reset); how long that took. Panics after `limit`.
fn wait_closed(c: &mut TcpStream, limit: Duration) -> Duration {
    let t0 = Instant::now();
    c.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return t0.elapsed(),
            Ok(_) => continue, // e.g. a 408 before the close
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return t0.elapsed(),
            Err(e) => panic!("the server did not close the connection within {limit:?}: {e}"),
        }
    }
}

fn assert_healthy(s: &Server) {
    let log = s.log();
    assert!(!log.contains("panicked"), "edgevm panicked:\n{log}");
    let (started, finished, dirty) = counters(s);
    assert_eq!(started, finished, "a request is still running or was lost");
    assert_eq!(dirty, 0, "the request VM was not reset:\n{log}");
}

#[test]
fn malformed_requests_are_refused_without_reaching_the_program() {
    let s = start("clients_malformed", "", 1, &[]);
    let (before, ..) = counters(&s);
    // Each must be refused by the HTTP layer: a 4xx (or 505), or just a closed connection.
    let bad: &[&[u8]] = &[
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /p/a HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
        b"GET /p/a HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /p/a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET /p/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n",
        b"POST /p/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /p/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"POST /p/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        b"POST /p/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"GET /p/a HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n",
        b"GET /p/a HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\n\r\n",
        b"GET /p/a b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /p/a HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", // a TLS ClientHello
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",             // HTTP/2 preface
        b"GET /p/a HTTP/1.1\r\n",                       // head never finished
        b"POST /p/a HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort", // body cut off
        b"\r\n\r\n\r\n\r\n",
        b"",
    ];
    for req in bad {
        let out = exchange(&s, req);
        for st in statuses(&out) {
            assert!(
                (400..500).contains(&st) || st == 505,
                "{:?} got {st}:\n{}",
                String::from_utf8_lossy(req),
                String::from_utf8_lossy(&out)
            );
        }
    }
    // Odd but valid: answered, and the server stays well.
    let odd: &[(&[u8], u16)] = &[
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            405,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            404,
        ),
        (b"GET /p/lf HTTP/1.1\nHost: x\nConnection: close\n\n", 200),
        (
            b"GET http://elsewhere/p/abs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            200,
        ),
        (b"GET /p/old HTTP/1.0\r\n\r\n", 200),
        (
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            404,
        ),
        (
            b"BREW /p/m HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            200,
        ),
    ];
    let mut valid = 0;
    for (req, want) in odd {
        let out = exchange_open(&s, req);
        assert_eq!(
            statuses(&out).first(),
            Some(want),
            "{:?}:\n{}",
            String::from_utf8_lossy(req),
            String::from_utf8_lossy(&out)
        );
        if *want == 200 {
            valid += 1;
        }
    }
    let (after, finished, dirty) = counters(&s);
    assert_eq!(
        after,
        before + valid + 1,
        "only the valid requests (and this one) may reach the program"
    );
    assert_eq!((finished, dirty), (after, 0));
    assert_healthy(&s);
}

/// hyper takes Transfer-Encoding over Content-Length and closes the connection after the
/// response (RFC 9112 6.1), so bytes a Content-Length-minded proxy would take for the body
/// can never become a second request on the same connection.
#[test]
fn content_length_with_transfer_encoding_cannot_smuggle_a_request() {
    let s = start("clients_smuggle", "", 1, &[]);
    let (before, ..) = counters(&s);
    let out = exchange_open(
        &s,
        b"POST /p/one HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n\
0\r\n\r\nGET /p/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&out);
    assert_eq!(statuses(&out), vec![200], "{text}");
    assert!(
        text.contains("method=POST") && text.contains("connection: close"),
        "{text}"
    );
    let (after, ..) = counters(&s);
    assert_eq!(after, before + 2, "the hidden request reached the program");
    assert_healthy(&s);
}

#[test]
fn huge_heads_and_bodies_are_refused_within_the_configured_limits() {
    // Limits from the configuration, one of them overridden on the command line.
    let s = start(
        "clients_huge",
        r#""max_header_size": 8, "max_headers": 20, "max_body_size": 1"#,
        1,
        &["--max-headers", "30"],
    );
    let (before, ..) = counters(&s);
    let big = "a".repeat(9 << 10);
    let head = |extra: &str| format!("GET /p/h HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
    let cases: Vec<(String, Vec<u8>, u16)> = vec![
        (
            "9 KB header".into(),
            head(&format!("X-Big: {big}\r\n")).into(),
            431,
        ),
        (
            "9 KB URL".into(),
            format!("GET /p/{big} HTTP/1.1\r\nHost: x\r\n\r\n").into(),
            431,
        ),
        (
            "40 headers".into(),
            head(
                &(0..40)
                    .map(|i| format!("X-H{i}: v\r\n"))
                    .collect::<String>(),
            )
            .into(),
            431,
        ),
        (
            "2 MB announced".into(),
            b"POST /p/b HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n".to_vec(),
            413,
        ),
        (
            "2 MB chunked".into(),
            {
                let mut v =
                    b"POST /p/b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                for _ in 0..32 {
                    v.extend_from_slice(b"10000\r\n");
                    v.extend(std::iter::repeat_n(b'x', 0x10000));
                    v.extend_from_slice(b"\r\n");
                }
                v.extend_from_slice(b"0\r\n\r\n");
                v
            },
            413,
        ),
    ];
    for (what, req, want) in &cases {
        let out = exchange_open(&s, req);
        assert_eq!(
            statuses(&out).first(),
            Some(want),
            "{what}: {}",
            String::from_utf8_lossy(&out[..out.len().min(300)])
        );
    }
    // Within the limits: 25 headers (the command line allows 30), a body of 1 MB.
    let h: Vec<(String, String)> = (0..25).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let hr: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = s.req("GET", "/p/many", &hr, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let body = vec![b'x'; 1 << 20];
    let r = s.req("POST", "/p/body", &[], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("len=1048576"), "{}", r.text());
    let (after, ..) = counters(&s);
    assert_eq!(after, before + 3, "a refused request reached the program");
    assert_healthy(&s);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = start("clients_pipeline", "", 2, &[]);
    let mut c = connect(&s);
    let mut batch = Vec::new();
    for i in 0..6 {
        if i % 2 == 0 {
            batch.extend(format!("GET /p/g{i} HTTP/1.1\r\nHost: x\r\n\r\n").bytes());
        } else {
            let body = "b".repeat(i * 100);
            batch.extend(
                format!(
                    "POST /p/p{i} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .bytes(),
            );
        }
    }
    // One request too large for the body limit stops the pipeline: nothing after it runs.
    batch.extend(b"POST /p/toobig HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n");
    batch.extend(b"GET /p/after HTTP/1.1\r\nHost: x\r\n\r\n");
    let (before, ..) = counters(&s);
    c.write_all(&batch).unwrap();
    let mut conn = Conn::from_stream(c);
    for i in 0..6 {
        let r = conn.read_response(false).unwrap();
        assert_eq!(r.status, 200, "response {i}: {}", r.text());
        let want = if i % 2 == 0 {
            "len=0 method=GET".to_string()
        } else {
            format!("len={} method=POST", i * 100)
        };
        assert!(r.text().contains(&want), "response {i}: {}", r.text());
    }
    let r = conn.read_response(false).unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        conn.read_response(false).is_err(),
        "the connection must end after the 413"
    );
    let (after, ..) = counters(&s);
    assert_eq!(after, before + 7, "exactly the 6 pipelined requests ran");
    assert_healthy(&s);
}

#[test]
fn slow_heads_are_cut_off_but_idle_keepalive_connections_live_longer() {
    let s = start(
        "clients_slowloris",
        r#""header_timeout": 1, "idle_timeout": 6"#,
        2,
        &[],
    );
    // A new connection that never sends anything.
    let mut silent = connect(&s);
    // A slowloris: a header byte every 100 ms, forever.
    let mut slow = connect(&s);
    slow.write_all(b"GET /p/slow HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut trickle = slow.try_clone().unwrap();
    let trickler = std::thread::spawn(move || {
        for _ in 0..100 {
            if trickle.write_all(b"X").is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    });
    // A kept-alive connection after one request: idle, not slow.
    let mut idle = Conn::new(s.port);
    assert_eq!(idle.send("GET", "/p/first", &[], b"").status, 200);
    // Meanwhile, others are served normally.
    for _ in 0..3 {
        s.ok("/p/meanwhile");
    }
    let t = wait_closed(&mut silent, Duration::from_secs(8));
    assert!(t < Duration::from_secs(8), "silent connection held {t:?}");
    let t = wait_closed(&mut slow, Duration::from_secs(8));
    assert!(t < Duration::from_secs(8), "slowloris held {t:?}");
    assert!(
        trickler.join().unwrap(),
        "the slowloris could write for 10 s"
    );
    // 2 s idle is past the header timeout but within the idle timeout: still usable.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(idle.send("GET", "/p/second", &[], b"").status, 200);
    // Then, left alone, it is closed after the idle timeout (6 s), not much later.
    let t = wait_closed(&mut idle.stream, Duration::from_secs(20));
    assert!(
        t > Duration::from_secs(4),
        "idle connection closed after only {t:?}"
    );
    assert_healthy(&s);
}

#[test]
fn slow_bodies_get_408_and_never_reach_the_program() {
    let s = start("clients_slowbody", r#""body_timeout": 1"#, 1, &[]);
    let (before, ..) = counters(&s);
    let mut c = connect(&s);
    c.write_all(b"POST /p/slowbody HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        .unwrap();
    let t0 = Instant::now();
    let mut writer = c.try_clone().unwrap();
    let dripper = std::thread::spawn(move || {
        for _ in 0..100 {
            if writer.write_all(b"0123456789").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let took = t0.elapsed();
    dripper.join().unwrap();
    assert_eq!(
        statuses(&out),
        vec![408],
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(
        took < Duration::from_secs(8),
        "the slow body was allowed {took:?}"
    );
    let (after, ..) = counters(&s);
    assert_eq!(after, before + 1, "the slow request reached the program");
    assert_healthy(&s);
}

/// The number of open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn clients_leaving_mid_request_leave_the_vm_reset_and_reused() {
    let s = start("clients_disconnect", "", 1, &[]);
    let (base, ..) = counters(&s);
    let fds_before = open_fds(s.pid());
    // Mid-head and mid-body: nothing reaches the program.
    for bytes in [
        &b"GET /p/half HTTP/1.1\r\nHo"[..],
        &b"POST /p/half HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n0123"[..],
    ] {
        let mut c = connect(&s);
        c.write_all(bytes).unwrap();
        drop(c);
    }
    // While the program runs (it sleeps 600 ms): the client goes away after 100 ms, some with
    // a reset (SO_LINGER 0), some with a plain close.
    for i in 0..4 {
        let mut c = connect(&s);
        c.write_all(b"GET /p/sleep?ms=600 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        if i % 2 == 0 {
            set_linger_zero(&c);
        }
        drop(c);
    }
    // The one VM finishes each abandoned request, is reset, and serves the next one.
    let t0 = Instant::now();
    let (started, finished, dirty) = counters(&s);
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "the next request waited {:?}",
        t0.elapsed()
    );
    // Whether a queued request whose client left still runs is the runtime's choice; none
    // may run twice or get stuck.
    assert!(
        (base + 2..=base + 5).contains(&started),
        "{} requests ran for 4 abandoned ones (and this one)",
        started - base
    );
    assert_eq!(finished, started);
    assert_eq!(dirty, 0, "the VM was not reset after an abandoned request");
    // No VM, thread or descriptor was left behind (idle connections are all closed).
    let t0 = Instant::now();
    loop {
        let now = open_fds(s.pid());
        if now <= fds_before {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "file descriptors grew from {fds_before} to {now}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_healthy(&s);
}

/// Close with a reset instead of a FIN.
fn set_linger_zero(c: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a valid fd and a correctly sized linger struct.
    let r = unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
}

/// Raise this process's open-file limit (each client socket is one); the limit in force.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

#[test]
fn thousands_of_idle_connections_do_not_stop_service() {
    let fds = raise_nofile();
    let n = 2000.min(fds.saturating_sub(200) as usize);
    assert!(n >= 1000, "open-file limit {fds} is too low for this test");
    let s = start(
        "clients_idle",
        r#""header_timeout": 120, "idle_timeout": 120"#,
        2,
        &[],
    );
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = TcpStream::connect(("127.0.0.1", s.port))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        if i % 2 == 1 {
            // Half start a request head and stop.
            c.write_all(b"GET /p/idle HTTP/1.1\r\n").unwrap();
        }
        held.push(c);
    }
    // A few hundred more that finished a request and stay kept alive.
    let mut kept: Vec<Conn> = (0..200).map(|_| Conn::new(s.port)).collect();
    for c in &mut kept {
        assert_eq!(c.send("GET", "/p/kept", &[], b"").status, 200);
    }
    let t0 = Instant::now();
    for i in 0..20 {
        let t = Instant::now();
        let r = s.get(&format!("/p/busy{i}"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "request {i} with {n} idle connections took {:?}",
            t.elapsed()
        );
    }
    eprintln!(
        "20 requests with {n} idle connections open: {:?}",
        t0.elapsed()
    );
    // The kept-alive ones still work.
    for c in kept.iter_mut().take(5) {
        assert_eq!(c.send("GET", "/p/again", &[], b"").status, 200);
    }
    drop(held);
    drop(kept);
    assert_healthy(&s);
}

const CLOSE_REQUEST: &[u8] = b"GET /p/again HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

#[test]
fn connections_beyond_the_limit_are_refused_with_503() {
    let s = start("clients_maxconn", r#""max_connections": 20"#, 1, &[]);
    // `start` made one request; wait for that connection to be released.
    let mut held = Vec::new();
    let t0 = Instant::now();
    while held.len() < 20 {
        let mut c = connect(&s);
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut b = [0u8; 64];
        match c.read(&mut b) {
            // Refused: the previous connection's slot is not free yet.
            Ok(n) if n > 0 => {
                assert!(t0.elapsed() < Duration::from_secs(10));
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(_) => panic!("a new connection was closed without an answer"),
            Err(_) => held.push(c), // open and silent: admitted
        }
    }
    // The 21st: 503 and closed at once.
    let out = exchange_open(&s, b"GET /p/over HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        statuses(&out),
        vec![503],
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(String::from_utf8_lossy(&out).contains("too many open connections"));
    // Free a few: new connections are served again.
    held.truncate(15);
    let t0 = Instant::now();
    loop {
        let out = exchange_open(&s, CLOSE_REQUEST);
        if statuses(&out) == vec![200] {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "still refused after closing connections: {}",
            String::from_utf8_lossy(&out)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = s.wait_log("connection limit reached", Duration::from_secs(5));
    assert!(log.contains("max_connections=20"), "{log}");
    drop(held);
    let t0 = Instant::now();
    while statuses(&exchange_open(&s, CLOSE_REQUEST)) != vec![200] {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_healthy(&s);
}
