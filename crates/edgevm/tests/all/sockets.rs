//! Guest sockets (guest/tests/sockets.c) under the outgoing network policy, against a line
//! server this test starts on 127.0.0.1 (a Redis-like protocol), a server that never answers
//! and a Unix socket inside an allowed directory: what is allowed works, what the policy
//! refuses fails with EACCES and a log line, a peer that never answers ends at the request's
//! timeout without holding the HTTP worker, and the hostile cases.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{guest, scratch};
use crate::harness::{js, Server};

/// A line server: PING -> +PONG, SET k v -> +OK, GET k -> $v or -nil, INCR k -> :n,
/// QUIT closes. Serves each connection on its own thread until the test ends.
pub struct LineServer {
    pub port: u16,
}

fn serve_lines<S: std::io::Read + Write>(s: S, db: Arc<Mutex<HashMap<String, String>>>) {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        let answer = match w.as_slice() {
            ["PING"] => "+PONG".to_string(),
            ["SET", k, v] => {
                db.lock().unwrap().insert(k.to_string(), v.to_string());
                "+OK".into()
            }
            ["GET", k] => match db.lock().unwrap().get(*k) {
                Some(v) => format!("${v}"),
                None => "-nil".into(),
            },
            ["INCR", k] => {
                let mut d = db.lock().unwrap();
                let n = d.get(*k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0) + 1;
                d.insert(k.to_string(), n.to_string());
                format!(":{n}")
            }
            ["QUIT"] => {
                let _ = r.get_mut().write_all(b"+BYE\r\n");
                return;
            }
            _ => "-ERR".into(),
        };
        if r.get_mut()
            .write_all(format!("{answer}\r\n").as_bytes())
            .is_err()
        {
            return;
        }
    }
}

impl LineServer {
    pub fn start() -> LineServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let db = Arc::new(Mutex::new(HashMap::new()));
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let db = db.clone();
                std::thread::spawn(move || serve_lines(s, db));
            }
        });
        LineServer { port }
    }

    /// The same protocol on a Unix socket at `path`.
    pub fn start_unix(path: &std::path::Path) {
        let l = UnixListener::bind(path).unwrap();
        let db = Arc::new(Mutex::new(HashMap::new()));
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let db = db.clone();
                std::thread::spawn(move || serve_lines(s, db));
            }
        });
    }
}

/// Accepts connections and never answers (keeps them open).
fn silent_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut keep = Vec::new();
        for s in l.incoming().flatten() {
            keep.push(s);
            if keep.len() > 16 {
                return;
            }
        }
    });
    port
}

#[test]
fn guest_sockets_reach_what_the_policy_allows_and_nothing_else() {
    let ls = LineServer::start();
    let silent = silent_server();
    let dir = scratch("sockets");
    let sockdir = dir.join("run");
    std::fs::create_dir_all(&sockdir).unwrap();
    LineServer::start_unix(&sockdir.join("line.sock"));
    std::os::unix::fs::symlink("/run", sockdir.join("escape")).unwrap();
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        format!(
            "{{ \"sockets\": {{ \"filename\": {}, \"max_memory\": 128, \"concurrency\": 2, \
             \"max_request_time\": 2, \
             \"allow_net\": [\"127.0.0.1:{}\", \"127.0.0.1:{}\"], \
             \"allowed_paths\": [{{ \"real\": {}, \"virtual\": \"/sock\" }}] }},\n\
             \"sockets_budget\": {{ \"filename\": {0}, \"max_request_time\": 30 }} }}",
            js(guest("sockets").to_str().unwrap()),
            ls.port,
            silent,
            js(sockdir.to_str().unwrap())
        ),
    )
    .unwrap();
    let s = Server::start(&dir, &[&cfg], &[("EDGEVM_HTTP_THREADS", "1")]);
    let p = ls.port;
    for _ in 0..2 {
        assert_eq!(
            s.ok(&format!("/sockets/tcp?port={p}")),
            "+PONG +OK $hello; nodelay 0/1; me 127.0.0.1 port>0 1; peer port ok 1; idle 0; eof 0"
        );
        assert_eq!(
            s.ok(&format!("/sockets/nonblock?port={p}")),
            "inprogress 1, writable 1 (OUT), so_error 0, sent 6, readable 1, peek 3 +PO, \
             recvmsg 7 +P|ONG\r flags 0, then -1 EAGAIN, writev 13, readv 6 -nil\r"
        );
        // The descriptors a request opens are closed by its reset.
        assert_eq!(s.ok("/sockets/count"), "socket fd 5");
    }
    assert_eq!(
        s.ok(&format!("/sockets/denied?port={p}")),
        "loopback 13, metadata 13, private 13, v4-mapped 0 (allowed), ::1 13, udp 13, allowed 0"
    );
    let log = s.wait_log(
        "connection to 169.254.169.254:80 refused",
        Duration::from_secs(10),
    );
    assert!(
        log.contains(&format!("connection to 127.0.0.1:{} refused", p + 1)),
        "{log}"
    );
    assert_eq!(
        s.ok("/sockets/unix?path=/sock/line.sock"),
        "unix +PONG, peer family 1 len 2"
    );
    assert_eq!(
        s.ok("/sockets/unix?path=/sock/escape/x.sock"),
        "connect /sock/escape/x.sock: Invalid cross-device link"
    );
    assert_eq!(
        s.ok("/sockets/unix?path=/sock/nothere.sock"),
        "connect /sock/nothere.sock: No such file or directory"
    );
    assert_eq!(
        s.ok(&format!("/sockets/hostile?port={p}")),
        "bad pointer 14, short 22, huge 22, netlink 97, raw 1, proto 93, abstract 13, \
         outside 2, bind 80 13, listen 13, bindtodevice 92, bad option 14, peercred 92, \
         not socket 88, bad fd 9, bad iov 14, bad msg iov 14, huge iov 22, bad msghdr 14, \
         sendmmsg 2, recvmmsg 2 one(3) three(5), more sockets 58 (24)"
    );
    assert_eq!(s.ok("/sockets/frozen"), "frozen socket write 107");
    // The guest resolves through the host's /etc/hosts (a minimal machine may have none).
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    if hosts
        .lines()
        .any(|l| l.starts_with("127.0.0.1") && l.contains("localhost"))
    {
        assert_eq!(s.ok("/sockets/resolve"), "localhost 127.0.0.1 port 6379");
    }
    // 256 MiB sent and received per request, then ENOBUFS; the next request has its own.
    for _ in 0..2 {
        assert_eq!(
            s.ok("/sockets_budget/budget"),
            "moved 256 MiB, then ENOBUFS"
        );
    }
    s.wait_log(
        "socket traffic past 268435456 bytes in one request",
        Duration::from_secs(10),
    );
    // SO_RCVTIMEO/SO_SNDTIMEO bound read()/readv()/write() of a socket too.
    assert_eq!(
        s.ok(&format!("/sockets/timeo?port={silent}")),
        "timeo: read -1 EAGAIN, readv -1 EAGAIN, write -1 EAGAIN"
    );
    // A peer that never answers: the request ends at its timeout, and meanwhile the one HTTP
    // worker serves others.
    let port = s.port;
    let slow = std::thread::spawn(move || {
        crate::harness::Conn::new(port).send(
            "GET",
            &format!("/sockets/silent?port={silent}"),
            &[],
            b"",
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.ok("/sockets/count"), "socket fd 5");
    let r = slow.join().unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    s.wait_log("Backend VM timed out", Duration::from_secs(10));
    assert_eq!(
        s.ok(&format!("/sockets/tcp?port={p}")),
        "+PONG +OK $hello; nodelay 0/1; me 127.0.0.1 port>0 1; peer port ok 1; idle 0; eof 0"
    );
    s.stop();
}

#[test]
fn example_c_and_tokio_programs_use_a_local_line_service() {
    // guest/examples/linedb.c (C, getaddrinfo, blocking sockets) and guest/examples/tokio
    // (tokio's multi-thread runtime built in main() and frozen with it: tasks on its worker
    // threads, a timer, a TCP connection) against the same line server.
    let ls = LineServer::start();
    let dir = scratch("sockets-examples");
    let cfg = dir.join("config.json");
    let g = |n: &str| js(guest(n).to_str().unwrap());
    // No MALLOC_ARENA_MAX: a worker thread's new glibc arena reserves 128 MiB with
    // PROT_NONE, which counts against neither max_memory nor max_request_memory.
    let net = format!(
        "\"allow_net\": [\"127.0.0.1:{0}\"], \
         \"environment\": [\"LINEDB=127.0.0.1:{0}\"]",
        ls.port
    );
    std::fs::write(
        &cfg,
        format!(
            "{{ \"linedb\": {{ \"filename\": {}, {net} }},\n\
             \"tokio\": {{ \"filename\": {}, \"max_memory\": 256, {net} }},\n\
             \"tokio_denied\": {{ \"filename\": {}, \"max_memory\": 256, \
             \"environment\": [\"LINEDB=127.0.0.1:{}\"] }} }}",
            g("example_linedb"),
            g("example_tokio"),
            g("example_tokio"),
            ls.port
        ),
    )
    .unwrap();
    let s = Server::start(&dir, &[&cfg], &[]);
    for n in 1..=3 {
        assert_eq!(s.ok("/linedb/home"), format!("home: {n} views\n"));
    }
    let r = s.req("POST", "/linedb/colour", &[], b"blue");
    assert_eq!(r.text(), "colour = blue\n");
    let tail = "(tasks 8 sum 18018000, channel 55, slept 20 ms yes, on worker threads yes)\n";
    for n in 1..=3 {
        assert_eq!(s.ok("/tokio/about"), format!("about: {n} views {tail}"));
    }
    for r in s.get_concurrently(2, 3, "/tokio/many") {
        assert!(r.starts_with("many: ") && r.ends_with(tail), "{r}");
    }
    assert_eq!(s.ok("/tokio/about"), format!("about: 4 views {tail}"));
    assert_eq!(
        s.ok("/tokio_denied/x"),
        format!("x: (service: Permission denied (os error 13)) views {tail}")
    );
    s.wait_log(
        &format!("connection to 127.0.0.1:{} refused", ls.port),
        Duration::from_secs(10),
    );
    s.stop();
}
