//! The TCP server mode (`server`): guest/examples/lineserver.c answers a line protocol on a
//! port the host listens on, with real TCP clients — many at once, split and pipelined lines,
//! slowloris clients held to `idle_timeout`, a huge line, clients that never read or close
//! abruptly, the `max_connections` bound, a program that crashes mid-connection (its VM's
//! connections are closed, the VM starts again, the other system keeps serving) — and on a
//! Unix socket through a live update and a shutdown.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::common::{guest, scratch, time_scale};
use crate::harness::{free_port, js, Server};

fn config(listen: &str, extra: &str) -> String {
    format!(
        r#"{{ "lines": {{ "filename": {}, "environment": ["LINESERVER_CRASH=1"], "key": "k",
              "server": {{ {listen} {extra} }} }} }}"#,
        js(guest("example_lineserver").to_str().unwrap())
    )
}

fn limit(secs: u64) -> Duration {
    Duration::from_secs(secs).mul_f64(time_scale())
}

struct Client {
    r: BufReader<TcpStream>,
}

impl Client {
    fn new(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(limit(20))).unwrap();
        Client {
            r: BufReader::new(s),
        }
    }
    fn send(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).unwrap();
    }
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        l.trim_end().to_string()
    }
    fn cmd(&mut self, c: &str) -> String {
        self.send(format!("{c}\r\n").as_bytes());
        self.line()
    }
    /// The server closed the connection (EOF) within the read timeout.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 256];
        loop {
            match self.r.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

#[test]
fn line_protocol_with_real_clients_hostile_ones_and_a_crash() {
    let port = free_port();
    let s = Server::with_config(
        "tcp-lines",
        &config(
            &format!(r#""port": {port}, "address": "127.0.0.1","#),
            r#""systems": 2, "idle_timeout": 2, "max_connections": 200"#,
        ),
    );
    s.wait_log("TCP server on 127.0.0.1:", limit(10));

    // Slowloris: half a command, then silence. Closed by the host after idle_timeout.
    let mut slow: Vec<Client> = (0..8).map(|_| Client::new(port)).collect();
    for c in &mut slow {
        c.send(b"PI");
    }
    // Clients that never read what they asked for, and ones that vanish mid-line.
    let mut deaf = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(&b"PING\n".repeat(20_000)).unwrap();
        deaf.push(c);
    }
    for _ in 0..16 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = c.write_all(b"INC");
        drop(c);
    }

    // Many honest clients at once, lines split across writes and pipelined.
    let workers: Vec<_> = (0..24)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::new(port);
                assert_eq!(c.cmd("PING"), "+PONG");
                for n in 1..=10 {
                    c.send(b"IN");
                    std::thread::sleep(Duration::from_millis(1));
                    c.send(b"CR\r\n");
                    assert_eq!(c.line(), format!(":{n}"));
                }
                c.send(format!("ECHO client {i}\nINCR\nINCR\n").as_bytes());
                assert_eq!(c.line(), format!("client {i}"));
                assert_eq!(c.line(), ":11");
                assert_eq!(c.line(), ":12");
                assert_eq!(c.cmd("NOPE"), "-ERR unknown command");
                assert_eq!(c.cmd("QUIT"), "+BYE");
                assert!(c.closed());
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }

    // A line longer than the program keeps: refused, connection closed.
    let mut huge = Client::new(port);
    huge.send(&vec![b'x'; 100_000]);
    assert_eq!(huge.line(), "-ERR line too long");
    assert!(huge.closed());

    // The slowloris connections are gone after idle_timeout; the deaf ones too (they stop
    // taking data, so they go idle as well).
    for c in &mut slow {
        assert!(c.closed(), "an idle connection stays open");
    }
    drop(deaf);

    // A crash in one system VM: its connections are closed, the VM starts again; the other
    // system's connections are untouched.
    let mut by_system: [Vec<Client>; 2] = [Vec::new(), Vec::new()];
    let t0 = Instant::now();
    while by_system.iter().any(|v| v.is_empty()) {
        assert!(
            t0.elapsed() < limit(20),
            "connections never reach both systems"
        );
        let mut c = Client::new(port);
        let sys: usize = c.cmd("SYSTEM").trim_start_matches(':').parse().unwrap();
        if by_system[sys].len() < 3 {
            by_system[sys].push(c);
        }
    }
    let mut victim = by_system[0].pop().unwrap();
    victim.send(b"CRASH\n");
    assert!(victim.closed());
    for c in &mut by_system[0] {
        assert!(c.closed(), "a connection of the crashed VM stays open");
    }
    for c in &mut by_system[1] {
        assert_eq!(c.cmd("PING"), "+PONG");
    }
    let log = s.wait_log("TCP system 0 failed: page fault", limit(10));
    assert!(log.contains("starts again"), "{log}");
    // Served again by a restarted system 0 (or by system 1 meanwhile).
    let t0 = Instant::now();
    loop {
        let mut c = Client::new(port);
        let sys = c.cmd("SYSTEM");
        if sys == ":0" {
            assert_eq!(c.cmd("PING"), "+PONG");
            break;
        }
        assert!(t0.elapsed() < limit(20), "system 0 never serves again");
        std::thread::sleep(Duration::from_millis(50));
    }
    // API misuse: answered with error codes, or the VM ends and starts again; the server
    // goes on serving either way.
    let mut c = Client::new(port);
    assert_eq!(c.cmd("BADWRITE"), ":-14");
    assert_eq!(c.cmd("BADDATA"), ":1 -14");
    assert_eq!(c.cmd("BADFD"), ":1 -9");
    assert_eq!(c.cmd("PING"), "+PONG");
    for bad in ["EXIT", "BADWAIT", "ZEROMAX"] {
        let mut c = Client::new(port);
        c.send(format!("{bad}\n").as_bytes());
        assert!(c.closed(), "{bad}: connection open");
        let t0 = Instant::now();
        loop {
            let mut c = Client::new(port);
            if c.cmd("PING") == "+PONG" {
                break;
            }
            assert!(t0.elapsed() < limit(20), "{bad}: no system serves again");
        }
    }
    let log = s.log();
    for why in [
        "the program exited (status 3)",
        "bad events pointer passed to wait_for_socket_events_paused",
        "wait_for_socket_events_paused() with max 0",
    ] {
        assert!(log.contains(why), "{why}:\n{log}");
    }
    // HTTP still works beside it.
    assert!(s.ok("/lines/").contains("lineserver"));
    s.stop();
}

#[test]
fn connection_bound_unix_socket_live_update_and_shutdown() {
    let dir = scratch("tcp-unix-files");
    let path = dir.join("lines.sock");
    let _ = std::fs::remove_file(&path);
    // A copy: an accepted live update replaces the program's file.
    let file = dir.join("lineserver");
    std::fs::copy(guest("example_lineserver"), &file).unwrap();
    let cfg = format!(
        r#"{{ "lines": {{ "filename": {}, "key": "k",
              "server": {{ "path": {}, "max_connections": 3 }} }} }}"#,
        js(file.to_str().unwrap()),
        js(path.to_str().unwrap())
    );
    let s = Server::with_config("tcp-unix", &cfg);
    s.wait_log("TCP server on unix:", limit(10));
    let open = |p: &std::path::Path| {
        let u = UnixStream::connect(p).unwrap();
        u.set_read_timeout(Some(limit(20))).unwrap();
        BufReader::new(u)
    };
    let ask = |r: &mut BufReader<UnixStream>, c: &str| {
        r.get_mut().write_all(format!("{c}\n").as_bytes()).unwrap();
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        l.trim_end().to_string()
    };
    let mut held: Vec<_> = (0..3).map(|_| open(&path)).collect();
    for r in &mut held {
        assert_eq!(ask(r, "PING"), "+PONG");
    }
    // A fourth connection waits in the backlog until one of the three goes.
    let mut fourth = open(&path);
    fourth.get_mut().write_all(b"PING\n").unwrap();
    fourth
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut l = String::new();
    assert!(
        fourth.read_line(&mut l).is_err(),
        "served beyond max_connections: {l:?}"
    );
    fourth.get_mut().set_read_timeout(Some(limit(20))).unwrap();
    assert_eq!(ask(&mut held[0], "QUIT"), "+BYE");
    held.remove(0);
    let mut l = String::new();
    fourth.read_line(&mut l).unwrap();
    assert_eq!(l.trim_end(), "+PONG");

    // Live update: the new program takes over the socket; the old one's connections close.
    let bin = std::fs::read(guest("example_lineserver")).unwrap();
    let r = s.req(
        "POST",
        "/_edgevm/update/lines",
        &[("X-Edgevm-Key", "k")],
        &bin,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for r in held.iter_mut().chain(std::iter::once(&mut fourth)) {
        let mut b = String::new();
        assert_eq!(
            r.read_line(&mut b).unwrap_or(0),
            0,
            "old connection open: {b:?}"
        );
    }
    let mut fresh = open(&path);
    assert_eq!(ask(&mut fresh, "PING"), "+PONG");

    // Shutdown closes the connections.
    s.stop();
    let mut b = String::new();
    assert_eq!(fresh.read_line(&mut b).unwrap_or(0), 0);
}

#[test]
fn check_refuses_bad_server_settings() {
    let dir = scratch("tcp-check");
    for (server, why) in [
        (
            r#"{"port": 0}"#,
            "\"port\" must be a whole number from 1 to 65535",
        ),
        (r#"{"port": 80, "path": "/x"}"#, "not both"),
        (r#"{"systems": 2}"#, "needs a \"port\""),
        (r#"{"path": "rel.sock"}"#, "absolute path"),
        (r#"{"port": 8000, "address": "localhost"}"#, "IP address"),
        (r#"{"port": 8000, "colour": 1}"#, "unknown key \"colour\""),
    ] {
        let cfg = dir.join("c.json");
        std::fs::write(
            &cfg,
            format!(
                r#"{{ "p": {{ "filename": {}, "server": {server} }} }}"#,
                js(guest("example_lineserver").to_str().unwrap())
            ),
        )
        .unwrap();
        let out = crate::common::edgevm()
            .arg("check")
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{server}: accepted:\n{text}");
        assert!(text.contains(why), "{server}: {text}");
    }
}

#[test]
fn connections_spread_evenly_over_the_systems_and_are_counted() {
    let port = free_port();
    let s = Server::with_config(
        "tcp-spread",
        &config(&format!(r#""port": {port},"#), r#""systems": 3"#),
    );
    s.wait_log("TCP server on 127.0.0.1:", limit(10));
    let wait_open = |n: f64| {
        let t0 = Instant::now();
        while s.stat("lines", "tcp_connections_open") != n {
            assert!(
                t0.elapsed() < limit(20),
                "tcp_connections_open is {}, not {n}",
                s.stat("lines", "tcp_connections_open")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Until every system is up, the acceptor gives connections to those that are: wait
    // until three connections in a row reach three systems.
    let t0 = Instant::now();
    loop {
        let mut seen: Vec<String> = (0..3)
            .map(|_| Client::new(port))
            .map(|mut c| c.cmd("SYSTEM"))
            .collect();
        seen.sort();
        if seen == [":0", ":1", ":2"] {
            break;
        }
        assert!(
            t0.elapsed() < limit(20),
            "systems never all serve: {seen:?}"
        );
    }
    wait_open(0.0);
    // 30 connections held open at once: ten on each system (the fewest-held system takes the
    // next one, round-robin among equals).
    let mut held: Vec<Client> = (0..30).map(|_| Client::new(port)).collect();
    let mut per = [0; 3];
    for c in &mut held {
        let sys: usize = c.cmd("SYSTEM").trim_start_matches(':').parse().unwrap();
        per[sys] += 1;
    }
    assert_eq!(per, [10, 10, 10]);
    wait_open(30.0);
    // A system that fails: counted, its ten connections closed; the next connections go to
    // the two others while it starts again.
    let before = s.stat("lines", "tcp_connections");
    assert!(before >= 33.0, "{before}");
    let victim = held
        .iter_mut()
        .position(|c| c.cmd("SYSTEM") == ":1")
        .unwrap();
    held[victim].send(b"CRASH\n");
    assert!(held[victim].closed());
    wait_open(20.0);
    let t0 = Instant::now();
    while s.stat("lines", "tcp_failures") != 1.0 {
        assert!(t0.elapsed() < limit(20), "the failure is not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = s.stats()["programs"]["lines"].clone();
    assert!(stats["tcp_events"].as_f64().unwrap() >= 130.0, "{stats}");
    assert!(
        stats["tcp_bytes_read"].as_f64().unwrap() >= 250.0,
        "{stats}"
    );
    assert!(
        stats["tcp_bytes_written"].as_f64().unwrap() >= 100.0,
        "{stats}"
    );
    assert_eq!(stats["tcp_refused"].as_f64().unwrap(), 0.0, "{stats}");
    let metrics = s.get("/metrics").text();
    for m in [
        "edgevm_tcp_connections_open{program=\"lines\"} 20",
        "edgevm_tcp_failures_total{program=\"lines\"} 1",
    ] {
        assert!(metrics.contains(m), "{m}:\n{metrics}");
    }
    drop(held);
    wait_open(0.0);
    // Connection numbers are descriptors for write(), writev() and close().
    let mut c = Client::new(port);
    assert_eq!(c.cmd("FDWRITE written"), "written");
    assert_eq!(c.cmd("FDVEC"), "+VEC");
    assert_eq!(c.cmd("FDBAD"), ":-1 9");
    // EFAULT, EINVAL, EISCONN, EFAULT; the connection goes on.
    assert_eq!(c.cmd("FDHOSTILE"), ":14 22 106 14");
    assert_eq!(c.cmd("PING"), "+PONG");
    assert_eq!(c.cmd("FDCLOSE"), "+BYE");
    assert!(c.closed());
    s.stop();
}
