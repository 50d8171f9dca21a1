//! The admin surface and hostile clients (issue 20; docs/SECURITY.md lists these tests):
//! admin paths decide from the request head before reading a body, a refused live update
//! changes nothing, client text in logs is bounded and escaped, RFC 9112 strictness, path
//! normalisation, the server-wide body budget, idle connections evicted at the connection
//! limit, and the separate admin listener.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;
use crate::harness::*;

/// `edgevm serve` with `hello` (example_hello) and `upd` (serve_api, live-update key
/// `s3cret`), and the extra flags `args`.
fn start(name: &str, args: &[&str]) -> Server {
    start_in(&scratch(name), args)
}

/// [`start`] in `dir` (which holds the `upd` program's file, `serve_api`).
fn start_in(dir: &std::path::Path, args: &[&str]) -> Server {
    let cfg = dir.join("config.json");
    let api = dir.join("serve_api");
    std::fs::copy(guest("serve_api"), &api).unwrap();
    std::fs::write(
        &cfg,
        format!(
            r#"{{ "hello": {{ "filename": {} }},
                 "upd": {{ "filename": {}, "key": "s3cret", "max_memory": 64 }} }}"#,
            js(guest("example_hello").to_string_lossy()),
            js(api.to_string_lossy())
        ),
    )
    .unwrap();
    Server::start_args(dir, &[&cfg], &[], args)
}

/// Send `bytes` on a fresh connection and read until the server closes it (at most 20 s):
/// what came back.
pub fn raw(port: u16, bytes: &[u8]) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of the first response in `out` (0 for none).
pub fn status_of(out: &str) -> u16 {
    out.strip_prefix("HTTP/1.1 ")
        .or_else(|| out.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Send a request head announcing a body of `len` bytes that never comes; the response (read
/// within 20 s).
fn head_only(port: u16, method: &str, path: &str, extra: &str, len: usize) -> Resp {
    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut c = Conn::from_stream(c);
    let head =
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {len}\r\n\r\n");
    c.stream.write_all(head.as_bytes()).unwrap();
    c.read_response(false)
        .unwrap_or_else(|e| panic!("{method} {path} {extra}: {e}"))
}

#[test]
fn admin_paths_answer_from_the_request_head_before_reading_a_body() {
    // A body that never comes would be waited for (408 after the body timeout) if the
    // server read it before deciding: every answer below comes from the head alone.
    let s = start(
        "admin-head",
        &["--max-body-mb", "1", "--body-timeout", "600"],
    );
    let big = 60 << 20;
    let key = "X-Edgevm-Key: s3cret\r\n";
    for (method, path, extra, len, want) in [
        // Read-only endpoints want GET or HEAD.
        ("POST", "/metrics", "", big, 405),
        ("PUT", "/_edgevm/stats", "", big, 405),
        // No such endpoint: said from the head.
        ("GET", "/_edgevm/nothing-here", "", big, 404),
        ("POST", "/metrics/x", "", big, 404),
        // Within the normal limit or not at all.
        ("GET", "/_edgevm/stats", "", 2 << 20, 413),
        // Live update: method, program, key, then its own limit (64 MiB by default).
        ("GET", "/_edgevm/update/upd", key, big, 405),
        ("POST", "/_edgevm/update/nope", key, big, 404),
        ("POST", "/_edgevm/update/upd", "", big, 403),
        (
            "POST",
            "/_edgevm/update/upd",
            "X-Edgevm-Key: wrong\r\n",
            big,
            403,
        ),
        ("POST", "/_edgevm/update/hello", key, big, 403),
        // The key in the query string is not accepted (it would end up in access logs).
        ("POST", "/_edgevm/update/upd?key=s3cret", "", big, 403),
        ("POST", "/_edgevm/update/upd", key, 65 << 20, 413),
    ] {
        let r = head_only(s.port, method, path, extra, len);
        assert_eq!(r.status, want, "{method} {path} {extra}: {}", r.text());
        assert_eq!(r.header("connection"), Some("close"), "{method} {path}");
    }
    // What a right key is allowed: more than the normal limit (the binary, zero-padded).
    let mut body = std::fs::read(guest("serve_api")).unwrap();
    body.resize(body.len().max((1 << 20) + 1), 0);
    let r = s.req(
        "POST",
        "/_edgevm/update/upd",
        &[("X-Edgevm-Key", "s3cret")],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.ok("/upd/ok"), "ok");
    s.stop();

    // The live-update limit is its own setting.
    let s = start("admin-head-limit", &["--max-update-mb", "2"]);
    let r = head_only(s.port, "POST", "/_edgevm/update/upd", key, 3 << 20);
    assert_eq!(r.status, 413, "{}", r.text());
    s.stop();
}

#[test]
fn a_refused_live_update_changes_nothing_observable() {
    let dir = scratch("admin-refused");
    let s = start_in(&dir, &[]);
    assert_eq!(s.ok("/upd/ok"), "ok");
    let file = dir.join("serve_api");
    let before_file = std::fs::read(&file).unwrap();
    let keys = [
        "binary_size",
        "memory_image_bytes",
        "live_updates",
        "requests",
    ];
    let before: Vec<f64> = keys.iter().map(|k| s.stat("upd", k)).collect();
    let metric = |text: &str| -> Vec<String> {
        text.lines()
            // VM counts (resident_vms, vms...) change as the pool is filled in the background.
            .filter(|l| {
                l.contains("program=\"upd\"") && !l.contains("queue_wait") && !l.contains("vms")
            })
            .map(str::to_owned)
            .collect()
    };
    let metrics_before = metric(&s.ok("/metrics"));
    for body in [&b"0123456789"[..], b"\x7fELF-not-really"] {
        let r = s.req(
            "POST",
            "/_edgevm/update/upd",
            &[("X-Edgevm-Key", "s3cret")],
            body,
        );
        assert_eq!(r.status, 400, "{}", r.text());
    }
    let after: Vec<f64> = keys.iter().map(|k| s.stat("upd", k)).collect();
    assert_eq!(before, after, "{keys:?}");
    assert_eq!(metrics_before, metric(&s.ok("/metrics")));
    assert_eq!(std::fs::read(&file).unwrap(), before_file);
    assert_eq!(s.ok("/upd/ok"), "ok");
    s.stop();
}

#[test]
fn client_text_in_the_log_is_bounded_escaped_and_rate_limited() {
    let s = start("admin-logs", &[]);
    let log_len = |s: &Server| s.log().len();
    let before = log_len(&s);
    // 300 requests for unknown programs with 60 KB names and a right-to-left override, a line
    // separator and an escape sequence in them.
    let name = format!("{}\u{202e}\u{2028}\x1b[2J", "n".repeat(60_000));
    let escaped = format!("{}%E2%80%AE", "n".repeat(60_000));
    let mut statuses = std::collections::BTreeSet::new();
    for i in 0..300 {
        let n = if i % 2 == 0 { &name } else { &escaped };
        let out = raw(
            s.port,
            format!("GET /{n}/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        statuses.insert(status_of(&out));
    }
    // (400 for the raw bytes in the path, 404 for an unknown program: either way no VM.)
    assert!(
        statuses.iter().all(|&st| st == 404 || st == 400),
        "{statuses:?}"
    );
    let grown = log_len(&s) - before;
    assert!(
        grown < 100_000,
        "300 requests grew the log by {grown} bytes"
    );
    // One more after the rate window: it says how many were suppressed.
    std::thread::sleep(Duration::from_millis(1100));
    let r = s.get("/nope/x");
    assert_eq!(r.status, 404);
    let log = s.wait_log("suppressed=", Duration::from_secs(5));
    for bad in ["\u{202e}", "\u{2028}", "\x1b[2J", &"n".repeat(201)] {
        assert!(!log.contains(bad), "{bad:?} reached the log");
    }
    s.stop();
}

#[test]
fn rfc_9112_strictness_by_default_and_dot_segments_refused() {
    let s = start("admin-strict", &[]);
    let send = |port: u16, req: &str| {
        let out = raw(port, req.as_bytes());
        (status_of(&out), out)
    };
    let cases: &[(&str, u16)] = &[
        ("GET /hello/ HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
        ("GET /hello/ HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n", 400),
        (
            "GET /hello/ HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "POST /hello/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            501,
        ),
        ("GET /hello/ HTTP/1.0\r\n\r\n", 200),
        // Dot segments, also encoded, never reach a program or the admin endpoints.
        ("GET /upd/../hello/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 400),
        ("GET /hello/%2e%2e/_edgevm/stats HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 400),
        // Absolute form: routed on its path, like origin form.
        ("GET http://evil.example/hello/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 200),
    ];
    for (req, want) in cases {
        let (st, out) = send(s.port, req);
        assert_eq!(st, *want, "{req:?}: {out}");
    }
    assert!(send(s.port, cases[7].0).1.ends_with("Hello World!\n"));
    s.stop();

    // The documented lenient setting: what odd clients send is served.
    let s = start("admin-lenient", &["--lenient-http"]);
    for (req, want) in &cases[..4] {
        let (st, out) = send(s.port, req);
        // Parsed and routed: the POST's body reaches a GET-only program, which answers 405.
        let served = if req.starts_with("POST") { 405 } else { 200 };
        assert_eq!(st, served, "lenient {req:?} (strict: {want}): {out}");
    }
    let (st, out) = send(s.port, cases[5].0);
    assert_eq!(st, 400, "{out}");
    s.stop();
}

#[test]
fn a_separate_admin_listener_takes_the_admin_endpoints_off_the_public_one() {
    let admin_port = free_port();
    let addr = format!("127.0.0.1:{admin_port}");
    let s = start("admin-listen", &["--admin-listen", &addr]);
    assert_eq!(s.ok("/hello/"), "Hello World!\n");
    let get = |port: u16, target: &str| {
        let out = raw(
            port,
            format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        (status_of(&out), out)
    };
    for target in [
        "/_edgevm/stats",
        "/metrics",
        "http://evil.example/_edgevm/stats",
        "/_edgevm/update/upd",
    ] {
        assert_eq!(get(s.port, target).0, 404, "public {target}");
    }
    // Except health: a load balancer probes the address it sends traffic to
    // (tests/all/deploy.rs).
    assert_eq!(get(s.port, "/_edgevm/health").0, 200);
    // A live update cannot be attempted on the public listener either.
    let r = head_only(
        s.port,
        "POST",
        "/_edgevm/update/upd",
        "X-Edgevm-Key: s3cret\r\n",
        1000,
    );
    assert_eq!(r.status, 404);
    for target in ["/_edgevm/stats", "/metrics", "http://evil.example/metrics"] {
        let (st, out) = get(admin_port, target);
        assert_eq!(st, 200, "admin {target}: {out}");
    }
    assert_eq!(get(admin_port, "/hello/").0, 404);
    let r = head_only(
        admin_port,
        "POST",
        "/_edgevm/update/upd",
        "X-Edgevm-Key: wrong\r\n",
        1000,
    );
    assert_eq!(r.status, 403);
    s.stop();

    // On a Unix socket (mode 0600).
    let dir = scratch("admin-listen-unix");
    let sock = dir.join("admin.sock");
    let s = start_in(
        &dir,
        &["--admin-listen", &format!("unix:{}", sock.display())],
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"GET /_edgevm/stats HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    assert_eq!(status_of(&out), 200, "{out}");
    assert!(out.contains("\"upd\""), "{out}");
    assert_eq!(get(s.port, "/_edgevm/stats").0, 404);
    s.stop();
    assert!(!sock.exists(), "the admin socket file is removed at stop");
}

/// A POST to an unknown program announcing `len` body bytes and sending `send` of them: the
/// server buffers the body before it finds there is no such program.
fn start_post(port: u16, len: usize, send: usize) -> Conn {
    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut c = Conn::from_stream(c);
    let head = format!("POST /nope/ HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\n\r\n");
    c.stream.write_all(head.as_bytes()).unwrap();
    c.stream.write_all(&vec![b'b'; send]).unwrap();
    c
}

#[test]
fn a_server_wide_budget_bounds_buffered_bodies() {
    let s = start("admin-budget", &["--max-body-memory-mb", "2"]);
    let kib = 1024;
    // Two bodies of 900 KiB buffered and waiting for their last 124 KiB.
    let mut held: Vec<Conn> = (0..2)
        .map(|_| start_post(s.port, 1024 * kib, 900 * kib))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // A third finds no room: it waits a moment, then 503 with Retry-After.
    let port = s.port;
    let third = std::thread::spawn(move || {
        let mut c = start_post(port, 1024 * kib, 0);
        let w = c.stream.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let mut w = w;
            let _ = w.write_all(&vec![b'c'; 600 * kib]);
        });
        let r = c.read_response(false);
        drop(writer);
        r
    });
    let r = third.join().unwrap().unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    // The held ones finish normally; then there is room again.
    for c in &mut held {
        c.stream.write_all(&vec![b'b'; 124 * kib]).unwrap();
        let r = c.read_response(false).unwrap();
        assert_eq!(r.status, 404, "{}", r.text());
    }
    let mut c = start_post(s.port, 1024 * kib, 1024 * kib);
    assert_eq!(c.read_response(false).unwrap().status, 404);
    s.stop();
}

/// The server's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn memory_goes_back_to_the_system_after_a_burst_of_bodies() {
    let s = start("admin-rss", &["--max-body-memory-mb", "1024"]);
    let body = 4 << 20;
    let post = |port: u16| {
        let mut c = start_post(port, body, body);
        assert_eq!(c.read_response(false).unwrap().status, 404);
    };
    post(s.port);
    let before = rss_kib(s.pid());
    let port = s.port;
    for _ in 0..3 {
        std::thread::scope(|sc| {
            for _ in 0..32 {
                sc.spawn(move || post(port));
            }
        });
    }
    // Given back once the last body is released (on a blocking thread: poll a little).
    let mut after = rss_kib(s.pid());
    for _ in 0..100 {
        if after < before + (32 << 10) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        after = rss_kib(s.pid());
    }
    eprintln!("RSS before the burst {before} KiB, after {after} KiB");
    assert!(
        after < before + (32 << 10),
        "RSS {before} KiB before a burst of 3 x 32 x 4 MiB bodies, {after} KiB after"
    );
    assert!(s.log().contains("no such program") || s.log().contains("unknown program"));
    s.stop();
}

/// Let the server close the connections the start-up probe and earlier requests left (they
/// count against the connection limits until it has).
fn settle(s: &Server) {
    assert_eq!(s.ok("/hello/"), "Hello World!\n");
    std::thread::sleep(Duration::from_millis(500));
}

/// Whether the server closed `c` (EOF or reset within 20 s).
fn closed(c: &mut Conn) -> bool {
    c.stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut b = [0u8; 64];
    matches!(c.stream.read(&mut b), Ok(0) | Err(_))
}

#[test]
fn idle_keepalive_connections_make_room_for_new_clients_at_the_limit() {
    let s = start("admin-evict", &["--max-connections", "4"]);
    settle(&s);
    // Four kept-alive connections, each idle after one request; the first idle the longest.
    let mut idle: Vec<Conn> = (0..4)
        .map(|_| {
            let mut c = s.connect();
            assert_eq!(c.send("GET", "/hello/", &[], b"").status, 200);
            std::thread::sleep(Duration::from_millis(50));
            c
        })
        .collect();
    // A fifth client is served: the longest-idle one was closed for it.
    let mut fifth = s.connect();
    assert_eq!(fifth.send("GET", "/hello/", &[], b"").status, 200);
    assert!(closed(&mut idle[0]), "the oldest idle connection is closed");
    for c in &mut idle[1..] {
        assert_eq!(c.send("GET", "/hello/", &[], b"").status, 200);
    }
    drop(idle);
    drop(fifth);
    s.stop();

    // Connections in the middle of a request are never closed for a newcomer: with all of
    // them busy, 503.
    let s = start("admin-evict-busy", &["--max-connections", "2"]);
    settle(&s);
    let busy: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
            c.write_all(b"GET /hello/ HTTP/1.1\r\nHo").unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let out = raw(s.port, b"GET /hello/ HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(status_of(&out), 503, "{out}");
    assert!(out.contains("retry-after: 1"), "{out}");
    for mut c in busy {
        c.write_all(b"st: a\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = c.read_to_string(&mut out);
        assert_eq!(status_of(&out), 200, "{out}");
    }
    s.stop();
}

#[test]
fn a_per_address_connection_limit() {
    let s = start("admin-per-address", &["--max-connections-per-address", "2"]);
    settle(&s);
    let mut two: Vec<Conn> = (0..2).map(|_| s.connect()).collect();
    for c in &mut two {
        assert_eq!(c.send("GET", "/hello/", &[], b"").status, 200);
    }
    // A third from the same address is refused (idle ones are not closed for it).
    let out = raw(s.port, b"GET /hello/ HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(status_of(&out), 503, "{out}");
    for c in &mut two {
        assert_eq!(c.send("GET", "/hello/", &[], b"").status, 200);
    }
    // One closes: room again.
    drop(two.pop());
    let mut again = None;
    for _ in 0..100 {
        let out = raw(
            s.port,
            b"GET /hello/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        if status_of(&out) == 200 {
            again = Some(out);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(again.is_some(), "no room after a connection closed");
    s.stop();
}

/// The short form of the hostile-client probe (scripts/hostile-probe.py, whose full form is
/// the original half-hour probe): limits, the smuggling set, slowloris, a flood of unknown
/// programs, idle connections at the limit and a short soak, against a real server.
#[test]
fn the_hostile_client_probe_short_form() {
    let dir = scratch("admin-probe");
    let s = start_in(&dir, &["--max-connections", "64", "--header-timeout", "2"]);
    settle(&s);
    let log = (0..)
        .map(|n| dir.join(format!("server-{n}.log")))
        .take_while(|p| p.exists())
        .last()
        .unwrap();
    let out = std::process::Command::new("python3")
        .arg(root().join("scripts/hostile-probe.py"))
        .args([
            "--short",
            "--program",
            "hello",
            "--port",
            &s.port.to_string(),
        ])
        .args(["--max-connections", "64", "--header-timeout", "2"])
        .arg("--log")
        .arg(&log)
        .args(["--pid", &s.pid().to_string()])
        .output()
        .expect("python3 scripts/hostile-probe.py");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "probe failed:\n{text}");
    assert!(text.contains("0 failure(s)"), "{text}");
    s.stop();
}
