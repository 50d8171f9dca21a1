//! The first hour of a user (issue 19): program output, the per-request log line, client
//! error bodies, `edgevm new`, `edgevm run --request`, `edgevm check`, retries of failed
//! programs, /metrics, and the "first program" walkthrough of the README.

use std::path::Path;
use std::time::Duration;

use crate::common::*;
use crate::harness::*;

fn p(s: &Path) -> &str {
    s.to_str().unwrap()
}

/// Lines of `text` printed by program `name` (prefix `>>> [name] ` removed).
fn program_lines<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!(">>> [{name}] ");
    text.lines()
        .filter_map(|l| l.find(prefix.as_str()).map(|i| &l[i + prefix.len()..]))
        .collect()
}

// ------------------------------------------------------------------------------------------
// 1. Program output
// ------------------------------------------------------------------------------------------

#[test]
fn stdio_output_appears_line_by_line_even_when_the_program_then_crashes() {
    // No fflush(): stdout looks like a terminal, so stdio writes each line at once.
    for bin in ["output", "output_musl", "output_ref"] {
        let r = edgevm_run(&["run", p(&guest(bin)), "crash"]);
        assert_eq!(r.code(), Some(70), "{bin}: {}", r.all());
        assert_eq!(
            program_lines(&r.stdout, bin),
            ["boot line"],
            "{bin}: {}",
            r.all()
        );
    }
    // Without a crash the partial line is written out before the freeze.
    let r = edgevm_run(&["run", p(&guest("output"))]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    assert_eq!(
        program_lines(&r.stdout, "output"),
        ["boot line", "boot partial"],
        "{}",
        r.all()
    );
}

#[test]
fn output_buffered_before_the_freeze_is_never_printed_again_by_requests() {
    let mut programs = Vec::new();
    for bin in ["output", "output_musl", "output_ref"] {
        programs.push(format!(
            "{}: {{ \"filename\": {}, \"max_memory\": 64, \"concurrency\": 2 }}",
            js(bin),
            js(p(&guest(bin)))
        ));
    }
    let s = Server::with_config("ux-output", &format!("{{ {} }}", programs.join(",\n")));
    for bin in ["output", "output_musl", "output_ref"] {
        for _ in 0..4 {
            assert_eq!(s.ok(&format!("/{bin}")), "ok\n");
        }
    }
    // Each request's line is in the log once the answer is out; wait for the last one.
    for bin in ["output", "output_musl", "output_ref"] {
        let log = s.log();
        let want_requests = if bin == "output_ref" { 4 } else { 8 };
        let t0 = std::time::Instant::now();
        let lines = loop {
            let log = s.log();
            let lines: Vec<String> = program_lines(&log, bin)
                .into_iter()
                .map(str::to_owned)
                .collect();
            if lines.len() > want_requests || t0.elapsed() > Duration::from_secs(10) {
                break lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let count = |l: &str| lines.iter().filter(|x| *x == l).count();
        assert_eq!(count("boot line"), 1, "{bin}: {lines:?}\n{log}");
        assert_eq!(count("request line"), 4, "{bin}: {lines:?}\n{log}");
        if bin != "output_ref" {
            assert_eq!(count("boot partial"), 1, "{bin}: {lines:?}\n{log}");
            assert_eq!(count("request partial"), 4, "{bin}: {lines:?}\n{log}");
        }
        assert_eq!(
            lines.len(),
            want_requests + 1 + usize::from(bin != "output_ref"),
            "{bin}: unexpected output {lines:?}\n{log}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// 6 and 7. The request log line, the listen address, error bodies
// ------------------------------------------------------------------------------------------

/// The access log lines (target edgevm::access) in `log`.
fn access_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" program=") && l.contains(" status="))
        .collect()
}

fn api_and_missing(dir: &Path) -> std::path::PathBuf {
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        format!(
            "{{ \"api\": {{ \"filename\": {}, \"max_memory\": 64 }},\n  \"gone\": {{ \"filename\": {} }} }}",
            js(p(&guest("serve_api"))),
            js(p(&dir.join("no-such-binary")))
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn one_log_line_per_request_with_client_text_escaped() {
    let dir = scratch("ux-access-log");
    let cfg = api_and_missing(&dir);
    let s = Server::start_args(&dir, &[&cfg], &[], &[SHORT_ERRORS]);
    assert_eq!(s.ok("/api/ok?token=secret"), "ok");
    assert_eq!(s.get("/api/crash").status, 500);
    assert_eq!(
        s.req("POST", "/nope/a\"b\\c%0a\u{202e}", &[], b"x").status,
        404
    );
    s.get(&format!("/api/{}", "x".repeat(5000)));
    let log = s.wait_log("/api/xxx", Duration::from_secs(10));
    let lines = access_lines(&log);
    assert_eq!(lines.len(), 4, "{log}");
    // Method, path (no query), program, status, time, exits.
    assert!(
        lines[0].contains(" INFO GET /api/ok program=api status=200 time_ms=")
            && lines[0].contains(" exits=")
            && !lines[0].contains("exits=-")
            && !lines[0].contains("secret"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("GET /api/crash program=api status=500"),
        "{}",
        lines[1]
    );
    // Client text is escaped and bounded: one line, no raw quote or backslash.
    assert!(
        lines[2].contains(r#"POST /nope/a\"b\\c%0a\u{202e} program=nope "#),
        "{}",
        lines[2]
    );
    assert!(
        lines[2].contains("status=404 ") && lines[2].contains("exits=-"),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].contains("...(5005 bytes)") && lines[3].len() < 600,
        "{}",
        lines[3]
    );
    drop(s);

    // Turned off: --no-request-log, or the log filter.
    for (env, args) in [
        (vec![], vec![SHORT_ERRORS, "--no-request-log"]),
        (
            vec![("EDGEVM_LOG", "info,edgevm::access=off")],
            vec![SHORT_ERRORS],
        ),
    ] {
        let s = Server::start_args(&dir, &[&cfg], &env, &args);
        assert_eq!(s.ok("/api/ok"), "ok");
        s.get("/nope");
        let log = s.stop();
        assert!(access_lines(&log).is_empty(), "{args:?} {env:?}: {log}");
        assert!(log.contains("edgevm serving on http://"), "{log}");
    }
}

#[test]
fn clients_see_a_short_error_with_a_request_id_and_the_log_has_the_details() {
    let dir = scratch("ux-errors");
    let cfg = api_and_missing(&dir);
    let s = Server::start_args(&dir, &[&cfg], &[], &[SHORT_ERRORS]);
    let r = s.get("/api/crash");
    assert_eq!(r.status, 500);
    let id = r.header("x-request-id").expect("X-Request-Id").to_owned();
    assert_eq!(
        r.text(),
        format!("500 Internal Server Error: program 'api' failed (request id {id})\n")
    );
    let r = s.get("/gone/x");
    assert_eq!(r.status, 503);
    let id2 = r.header("x-request-id").unwrap().to_owned();
    assert_eq!(
        r.text(),
        format!("503 Service Unavailable: program 'gone' is unavailable (request id {id2})\n")
    );
    assert_ne!(id, id2);
    // The log has what the client does not: the crash report and the missing path, with ids.
    let log = s.wait_log(&format!("(request id {id2})"), Duration::from_secs(10));
    let crash = log
        .lines()
        .find(|l| l.contains(&format!("(request id {id})")))
        .unwrap_or_else(|| panic!("no log line with request id {id}:\n{log}"));
    assert!(crash.contains("page fault"), "{crash}");
    assert!(log.contains("no-such-binary"), "{log}");
    drop(s);
    // With error_details the client gets the reason too.
    let s = Server::start(&dir, &[&cfg], &[]);
    let r = s.get("/api/crash");
    assert!(r.text().contains("page fault"), "{}", r.text());
    assert!(s.get("/gone/x").text().contains("no-such-binary"));
}

#[test]
fn serving_is_logged_after_the_bind_and_localhost_is_accepted() {
    let dir = scratch("ux-listen");
    let cfg = api_and_missing(&dir);
    // A port that is taken: an error, no "serving" line.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let r = edgevm()
        .args(["serve", "--config", p(&cfg), "--listen"])
        .arg(format!("localhost:{port}"))
        .env("EDGEVM_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("cannot serve on 127.0.0.1:{port}")),
        "{text}"
    );
    assert!(!text.contains("serving on"), "{text}");
    drop(taken);
    // localhost:PORT from the configuration file.
    let port = free_port();
    let cfg2 = dir.join("listen.json");
    std::fs::write(
        &cfg2,
        format!("{{ \"server\": {{ \"listen\": \"localhost:{port}\" }} }}"),
    )
    .unwrap();
    let log = dir.join("localhost.log");
    let mut child = edgevm()
        .args(["serve", "--config", p(&cfg), "--config", p(&cfg2)])
        .env("EDGEVM_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("localhost.err")).unwrap())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    let answer = loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break request(port, "GET", "/api/ok", &[], b"");
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "not listening");
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(dir.join("localhost.err")).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(answer.text(), "ok");
    assert!(
        err.contains(&format!("edgevm serving on http://127.0.0.1:{port}/")),
        "{err}"
    );
}
