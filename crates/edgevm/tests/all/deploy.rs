//! Running behind a load balancer (issue: Varnish in front and many nodes): the health
//! endpoint, draining after SIGTERM, Unix-socket listening, and live updates that persist to
//! `filename` so a restarted node runs the new version. Real `edgevm serve`, real guests.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::harness::*;

/// `"name": { "filename": FILE, "max_memory": 64, EXTRA }`
fn program(name: &str, file: &Path, extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { ", " };
    format!(
        "{}: {{ \"filename\": {}, \"max_memory\": 64{sep}{extra} }}",
        js(name),
        js(file.to_str().unwrap())
    )
}

fn config(programs: &[String]) -> String {
    format!("{{\n{}\n}}\n", programs.join(",\n"))
}

/// Poll `f` every 20 ms until it gives `Some` (at most `limit`, else panic with `what`).
fn until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < limit, "{what}: not after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// GET /_edgevm/health: status and body.
fn health(s: &Server) -> (u16, String) {
    let r = s.get("/_edgevm/health");
    assert!(
        r.status == 200 || r.status == 503,
        "health answered {}: {}",
        r.status,
        r.text()
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    (r.status, r.text())
}

#[test]
fn health_waits_for_start_programs_and_reports_failed_ones() {
    let dir = scratch("deploy-health");
    let bad = dir.join("not-an-elf");
    std::fs::write(&bad, b"#!/bin/sh\necho this is no ELF\n").unwrap();
    // A lazy program (start false) does not hold health back; an eager one does.
    let cfg = dir.join("good.json");
    std::fs::write(
        &cfg,
        config(&[
            program("eager", &guest("serve_api"), "\"start\": true"),
            program("lazy", &guest("example_hello"), ""),
        ]),
    )
    .unwrap();
    let s = Server::start(&dir, &[&cfg], &[]);
    let body = until(Duration::from_secs(20), "health 200", || {
        let (st, body) = health(&s);
        (st == 200).then_some(body)
    });
    assert_eq!(body, "ready\n");
    assert_eq!(s.stats()["programs"]["lazy"]["status"], "not started");
    let r = s.req("HEAD", "/_edgevm/health", &[], b"");
    assert_eq!(r.status, 200);
    let r = s.req("POST", "/_edgevm/health", &[], b"x");
    assert_eq!(r.status, 405, "{}", r.text());
    s.stop();

    // An eager program that cannot boot: 503 naming it, for good; the others still serve.
    let cfg = dir.join("bad.json");
    std::fs::write(
        &cfg,
        config(&[
            program("eager", &guest("serve_api"), "\"start\": true"),
            program("broken", &bad, "\"start\": true"),
        ]),
    )
    .unwrap();
    let s = Server::start(&dir, &[&cfg], &[]);
    let body = until(Duration::from_secs(20), "broken fails", || {
        let (st, body) = health(&s);
        assert_eq!(st, 503, "{body}");
        (body.contains("broken (failed)") && !body.contains("eager")).then_some(body)
    });
    assert_eq!(body, "not ready: broken (failed)\n");
    assert_eq!(s.ok("/eager/ok"), "ok");
    let r = s.get("/broken/");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("not an ELF"), "{}", r.text());
    s.stop();
}

#[test]
fn sigterm_drains_health_503_keeps_serving_and_a_second_signal_ends_the_drain() {
    let dir = scratch("deploy-drain");
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        config(&[program(
            "p",
            &guest("serve_api"),
            "\"start\": true, \"concurrency\": 2",
        )]),
    )
    .unwrap();
    // A drain period far longer than the test: the second SIGTERM ends it, so nothing here
    // depends on how fast the machine is.
    let mut s = Server::start_args(&dir, &[&cfg], &[], &["--drain-seconds", "600"]);
    until(Duration::from_secs(20), "health 200", || {
        (health(&s).0 == 200).then_some(())
    });
    let port = s.port;
    let slow = std::thread::spawn(move || Conn::new(port).send("GET", "/p/sleep?ms=300", &[], b""));
    std::thread::sleep(Duration::from_millis(50));
    s.sigterm();
    let body = until(Duration::from_secs(10), "health 503 draining", || {
        let (st, body) = health(&s);
        (st == 503).then_some(body)
    });
    assert_eq!(body, "draining\n");
    s.wait_log("draining", Duration::from_secs(5));
    // Still serving, new connections included; each answer closes its connection.
    for _ in 0..3 {
        let mut c = s.connect();
        let r = c.send("GET", "/p/ok", &[], b"");
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
        assert_eq!(r.header("connection"), Some("close"));
    }
    let r = slow.join().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "slept 300"));
    s.sigterm();
    let log = s.wait_exit(Duration::from_secs(10));
    assert!(log.contains("drain ended early"), "{log}");
}

#[test]
fn drain_seconds_and_listen_settings_are_validated() {
    let dir = scratch("deploy-validate");
    let cfg = dir.join("config.json");
    std::fs::write(&cfg, config(&[program("p", &guest("example_hello"), "")])).unwrap();
    let c = cfg.to_str().unwrap();
    for (args, want) in [
        (vec!["--drain-seconds=-1"], "drain_seconds"),
        (vec!["--drain-seconds", "x"], "must be a number"),
        (vec!["--listen-mode", "0660"], "Unix socket only"),
        (vec!["--listen-owner", "root"], "Unix socket only"),
        (
            vec!["--listen", "unix:/tmp/x.sock", "--listen-mode", "999"],
            "octal",
        ),
        (vec!["--listen", "unix:relative.sock"], "absolute path"),
        (
            vec!["--listen", "unix:/tmp/x.sock", "--listen-owner", "a:b:c"],
            "listen_owner",
        ),
    ] {
        let mut all = vec!["serve", "--config", c];
        all.extend(&args);
        let r = edgevm_run(&all);
        assert_eq!(r.code(), Some(1), "{args:?}: {}", r.all());
        assert!(r.all().contains(want), "{args:?}: {}", r.all());
    }
    // An owner that does not exist: refused at bind, nothing left behind.
    let sock = std::env::temp_dir().join(format!("edgevm-{}-owner.sock", std::process::id()));
    let r = edgevm_run(&[
        "serve",
        "--config",
        c,
        "--listen",
        &format!("unix:{}", sock.display()),
        "--listen-owner",
        "no-such-user-edgevm",
    ]);
    assert_eq!(r.code(), Some(1), "{}", r.all());
    assert!(r.all().contains("no user named"), "{}", r.all());
    assert!(!sock.exists());
}

/// `edgevm serve` on a Unix socket (the harness's Server is TCP only).
struct UdsServer {
    child: Option<Child>,
    sock: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl UdsServer {
    fn start(dir: &Path, cfg: &Path, extra: &[&str]) -> UdsServer {
        let sock = std::env::temp_dir().join(format!("edgevm-{}-uds.sock", std::process::id()));
        let log = dir.join("uds.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = edgevm()
            .arg("serve")
            .arg("--config")
            .arg(cfg)
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .args(extra)
            .env("EDGEVM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        let mut s = UdsServer {
            child: Some(child),
            sock,
            log,
        };
        until(Duration::from_secs(10), "the Unix socket accepts", || {
            if let Some(st) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("edgevm serve exited ({st}):\n{}", s.log());
            }
            UnixStream::connect(&s.sock).ok().map(|_| ())
        });
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One request with `Connection: close`: the raw response.
    fn get(&self, path: &str) -> String {
        self.get_with(path, "")
    }

    /// [`UdsServer::get`] with extra header lines (`Name: value\r\n` each).
    fn get_with(&self, path: &str, headers: &str) -> String {
        let mut c = UnixStream::connect(&self.sock).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            c,
            "GET {path} HTTP/1.1\r\nHost: edgevm\r\n{headers}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    }

    /// SIGTERM and a clean exit.
    fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill(2) on the PID of our own child, which has not been reaped yet.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                assert_eq!(st.code(), Some(0), "{}", self.log());
                return self.log();
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no exit after SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for UdsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn serves_on_a_unix_socket_with_its_mode_and_removes_it_at_exit() {
    let dir = scratch("deploy-uds");
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        config(&[program("p", &guest("serve_api"), "\"start\": true")]),
    )
    .unwrap();
    let uid = own_uid();
    let s = UdsServer::start(
        &dir,
        &cfg,
        &[
            "--listen-mode",
            "0600",
            "--listen-owner",
            &uid.to_string(),
            "--trusted-frontends",
            "unix",
        ],
    );
    let md = std::fs::metadata(&s.sock).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    let r = s.get("/p/ok");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.ends_with("\r\n\r\nok"), "{r}");
    let r = until(
        Duration::from_secs(20),
        "health 200 over the socket",
        || {
            let r = s.get("/_edgevm/health");
            r.starts_with("HTTP/1.1 200").then_some(r)
        },
    );
    assert!(r.ends_with("ready\n"), "{r}");
    // "unix" in trusted_frontends: the socket's clients pass the arg.
    let r = s.get_with("/p/arg", "X-Edgevm-Arg: {\"w\": 1}\r\n");
    assert!(r.ends_with("\r\n\r\n{\"w\": 1}"), "{r}");
    // A second server on the same socket is refused; the first keeps it.
    let r = edgevm_run(&[
        "serve",
        "--config",
        cfg.to_str().unwrap(),
        "--listen",
        &format!("unix:{}", s.sock.display()),
    ]);
    assert_eq!(r.code(), Some(1), "{}", r.all());
    assert!(r.all().contains("another server listens"), "{}", r.all());
    assert!(s.get("/p/ok").ends_with("ok"));
    let sock = s.sock.clone();
    let log = s.stop();
    assert!(log.contains(&format!("unix:{}", sock.display())), "{log}");
    assert!(!sock.exists(), "the socket file is left behind");
}

/// Our own uid: a chown to it needs no privilege.
fn own_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(0, |m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    })
}

#[test]
fn a_live_update_persists_to_filename_and_a_restart_runs_it() {
    let dir = scratch("deploy-persist");
    let file = dir.join("prog");
    let companion = dir.join("prog_storage");
    std::fs::copy(guest("example_hello"), &file).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        config(&[program("p", &file, "\"key\": \"k\", \"start\": true")]),
    )
    .unwrap();
    let s = Server::start(&dir, &[&cfg], &[]);
    assert_eq!(s.ok("/p/ok"), "Hello World!\n");
    let update = |s: &Server, body: &[u8]| {
        s.req("POST", "/_edgevm/update/p", &[("X-Edgevm-Key", "k")], body)
    };
    // Refused binaries leave the file alone (and no temporary file behind).
    let r = update(&s, b"not a program");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        std::fs::read(&file).unwrap(),
        std::fs::read(guest("example_hello")).unwrap()
    );
    // Accepted: the new binary is in place with the old file's mode; a stale storage
    // companion (it would pair the old storage binary with the new program) is gone.
    std::fs::write(&companion, b"old storage binary").unwrap();
    let new = std::fs::read(guest("serve_api")).unwrap();
    let r = update(&s, &new);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.ok("/p/ok"), "ok");
    assert_eq!(std::fs::read(&file).unwrap(), new);
    let md = std::fs::metadata(&file).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o640);
    assert!(!companion.exists());
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".update-"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    s.stop();
    // A restarted server runs the new version.
    let s = Server::start(&dir, &[&cfg], &[]);
    assert_eq!(s.ok("/p/ok"), "ok");
    s.stop();
}

#[test]
fn x_edgevm_arg_reaches_the_program_only_from_trusted_frontends() {
    let dir = scratch("deploy-arg");
    let cfg = dir.join("config.json");
    std::fs::write(&cfg, config(&[program("p", &guest("serve_api"), "")])).unwrap();
    let arg = [("X-Edgevm-Arg", "{\"width\": 128}")];
    // Not trusted by default: the arg stays "".
    let s = Server::start(&dir, &[&cfg], &[]);
    let r = s.req("GET", "/p/arg", &arg, b"");
    assert_eq!((r.status, r.text().as_str()), (200, ""));
    s.stop();
    // Trusted by network, by address: the header's value is the arg.
    for trusted in ["127.0.0.0/8", "10.0.0.1,127.0.0.1"] {
        let s = Server::start_args(&dir, &[&cfg], &[], &["--trusted-frontends", trusted]);
        let r = s.req("GET", "/p/arg", &arg, b"");
        assert_eq!((r.status, r.text().as_str()), (200, "{\"width\": 128}"));
        assert_eq!(s.ok("/p/arg"), "");
        s.stop();
    }
    // Listing another network or only the Unix socket does not trust TCP clients.
    for trusted in ["10.0.0.0/8", "unix", "::1"] {
        let s = Server::start_args(&dir, &[&cfg], &[], &["--trusted-frontends", trusted]);
        let r = s.req("GET", "/p/arg", &arg, b"");
        assert_eq!((r.status, r.text().as_str()), (200, ""), "{trusted}");
        s.stop();
    }
    let r = edgevm_run(&[
        "serve",
        "--config",
        cfg.to_str().unwrap(),
        "--trusted-frontends",
        "localhost",
    ]);
    assert_eq!(r.code(), Some(1), "{}", r.all());
    assert!(r.all().contains("trusted_frontends"), "{}", r.all());
}

#[test]
fn health_is_on_the_program_listener_too_when_admin_has_its_own() {
    let dir = scratch("deploy-admin-split");
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        config(&[program("p", &guest("serve_api"), "\"start\": true")]),
    )
    .unwrap();
    let admin_port = free_port();
    let s = Server::start_args(
        &dir,
        &[&cfg],
        &[],
        &["--admin-listen", &format!("127.0.0.1:{admin_port}")],
    );
    until(
        Duration::from_secs(20),
        "health 200 on the program listener",
        || (health(&s).0 == 200).then_some(()),
    );
    // Only health: the other admin endpoints stay on the admin listener.
    assert_eq!(s.get("/_edgevm/stats").status, 404);
    let r = request(admin_port, "GET", "/_edgevm/health", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "ready\n"));
    s.stop();
}
