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
        text.contains(&format!("cannot serve on http://127.0.0.1:{port}/")),
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

// ------------------------------------------------------------------------------------------
// 4. edgevm check
// ------------------------------------------------------------------------------------------

#[test]
fn check_fails_on_what_serve_would_refuse() {
    let dir = scratch("ux-check");
    let hello = js(p(&guest("example_hello")));
    let missing = js(p(&dir.join("missing")));
    let not_elf = dir.join("script.sh");
    std::fs::write(&not_elf, "#!/bin/sh\n").unwrap();
    let case = |name: &str, text: String| {
        let f = dir.join(format!("{name}.json"));
        std::fs::write(&f, text).unwrap();
        edgevm_run(&["check", "--config", p(&f)])
    };
    // Everything fine: exit 0.
    let r = case(
        "ok",
        format!("{{ \"hello\": {{ \"filename\": {hello} }} }}"),
    );
    assert_eq!(r.code(), Some(0), "{}", r.all());
    for (name, program, want) in [
        (
            "missing",
            format!("\"p\": {{ \"filename\": {missing} }}"),
            "error: program 'p': '".to_string() + dir.join("missing").to_str().unwrap()
                + "' does not exist (and there is no 'uri' to fetch it from)",
        ),
        (
            "notelf",
            format!("\"p\": {{ \"filename\": {} }}", js(p(&not_elf))),
            "is not an ELF program".into(),
        ),
        (
            "reserved",
            format!("\"metrics\": {{ \"filename\": {hello} }}"),
            "error: program 'metrics': the program name 'metrics' is reserved".into(),
        ),
        (
            "space",
            format!("\"my prog\": {{ \"filename\": {hello} }}"),
            "cannot be reached by a URL: it contains ' '".into(),
        ),
        (
            "group",
            format!("\"edge\": {{ \"max_memory\": 64 }}, \"p\": {{ \"group\": \"egde\", \"filename\": {hello} }}"),
            "unknown group 'egde' (did you mean 'edge'?)".into(),
        ),
    ] {
        let r = case(name, format!("{{ {program} }}"));
        assert_eq!(r.code(), Some(1), "{name}: {}", r.all());
        assert!(r.all().contains(&want), "{name}: wanted {want:?}:\n{}", r.all());
    }
    // A typo'd key: a warning with the likely key (and still exit 0: the key is ignored).
    let r = case(
        "typo",
        format!("{{ \"hello\": {{ \"filename\": {hello}, \"concurency\": 4 }} }}"),
    );
    assert_eq!(r.code(), Some(0), "{}", r.all());
    assert!(
        r.all().contains("concurency") && r.all().contains("(did you mean 'concurrency'?)"),
        "{}",
        r.all()
    );
    // A missing file that a uri will fetch: a note, not an error.
    let r = case(
        "uri",
        format!("{{ \"p\": {{ \"uri\": \"https://example.com/p\", \"filename\": {missing} }} }}"),
    );
    assert_eq!(r.code(), Some(0), "{}", r.all());
    assert!(
        r.all()
            .contains("will be fetched from https://example.com/p"),
        "{}",
        r.all()
    );
    // serve refuses the same names: the others are served, those are reported.
    let f = dir.join("serve.json");
    std::fs::write(
        &f,
        format!("{{ \"hello\": {{ \"filename\": {hello} }}, \"metrics\": {{ \"filename\": {hello} }} }}"),
    )
    .unwrap();
    let s = Server::start(&dir, &[&f], &[]);
    assert!(s.ok("/hello").starts_with("Hello"));
    assert_eq!(
        s.get("/metrics").status,
        200,
        "the admin path stays the admin path"
    );
    let log = s.stop();
    assert!(
        log.contains("the program name 'metrics' is reserved"),
        "{log}"
    );
}

// ------------------------------------------------------------------------------------------
// 3. edgevm run --request
// ------------------------------------------------------------------------------------------

#[test]
fn run_sends_one_request_with_the_checks_of_serve() {
    let echo = guest("example_echo");
    let r = edgevm_run(&[
        "run",
        p(&echo),
        "--request",
        "POST",
        "/echo/x?y=1",
        "-H",
        "X-Test: 1",
        "-d",
        "some data",
    ]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    assert!(r.stdout.starts_with("HTTP/1.1 200 OK\n"), "{}", r.all());
    assert!(r.stdout.ends_with("\n\nsome data"), "{}", r.all());
    // GET by default; the path gets the program's prefix, as under serve.
    let r = edgevm_run(&["run", p(&guest("example_hello")), "--request", "/"]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    assert!(r.stdout.contains("Hello World!\n"), "{}", r.all());
    // What serve refuses, run refuses too: no wait_for_requests(), no handler.
    let r = edgevm_run(&["run", p(&guest("hello")), "--request", "/"]);
    assert_eq!(r.code(), Some(70), "{}", r.all());
    assert!(
        r.stderr.contains("before calling wait_for_requests()"),
        "{}",
        r.all()
    );
    // A crash in the handler: 70 and the crash report.
    let r = edgevm_run(&["run", p(&guest("serve_api")), "--request", "/crash"]);
    assert_eq!(r.code(), Some(70), "{}", r.all());
    assert!(r.stderr.contains("page fault"), "{}", r.all());
    // Garbage: a clear error, exit 1, nothing booted.
    for bad in [
        &["--request"][..],
        &["--request", "G T", "/"],
        &["--request", "GET", "no-slash"],
        &["--request", "/a b"],
        &["--request", "/", "-H", "NoColon"],
        &["--request", "/", "-H", "Bad Name: x"],
        &["--request", "/", "-H", "X: a\u{1}b"],
        &["--request", "/", "-d"],
        &["--request", "/", "-d", "a", "-d", "b"],
        &["--request", "/", "--what", "x"],
        &["--request", "/", "-d", "@/nonexistent/file"],
        &["--request", "GET", "/", "/extra"],
    ] {
        let mut args = vec!["run", p(&echo)];
        args.extend_from_slice(bad);
        let r = edgevm_run(&args);
        assert_eq!(r.code(), Some(1), "{bad:?}: {}", r.all());
        assert!(
            r.stderr.starts_with("edgevm: error: "),
            "{bad:?}: {}",
            r.all()
        );
        assert!(!r.all().contains("panicked"), "{bad:?}: {}", r.all());
    }
}

#[test]
fn run_says_a_program_without_handlers_is_not_servable() {
    // api_compat's main registers handlers; the wait guest registers GET. hello_rust exits.
    let dir = scratch("ux-nohandler");
    let src = dir.join("nohandler.c");
    std::fs::write(
        &src,
        "#include \"kvm_api.h\"\nint main(void) { wait_for_requests(); return 0; }\n",
    )
    .unwrap();
    let bin = dir.join("nohandler");
    let st = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-I"])
        .arg(root().join("guest"))
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .status()
        .unwrap();
    assert!(st.success());
    let r = edgevm_run(&["run", p(&bin)]);
    assert_eq!(r.code(), Some(70), "{}", r.all());
    assert!(r.stderr.contains("not servable"), "{}", r.all());
    let r = edgevm_run(&["run", p(&bin), "--request", "/"]);
    assert_eq!(r.code(), Some(70), "{}", r.all());
    assert!(
        r.stderr.contains("registered no request handler"),
        "{}",
        r.all()
    );
}

// ------------------------------------------------------------------------------------------
// 3 and 10. edgevm new, and the README's "Your first program", step by step
// ------------------------------------------------------------------------------------------

/// The shell commands of the README's "Your first program" block, in order.
fn first_program_steps() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("## Your first program")
        .nth(1)
        .expect("README has 'Your first program'");
    let block = section
        .split("```sh\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    block
        .lines()
        .map(|l| l.split('#').next().unwrap().trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn the_first_program_walkthrough_of_the_readme_works_step_by_step() {
    let dir = scratch("ux-first-program");
    let steps = first_program_steps();
    assert_eq!(steps.len(), 5, "{steps:?}");
    let bin = env!("CARGO_BIN_EXE_edgevm");
    // The README runs target/release/edgevm from the repository; here the test's binary.
    let words = |step: &str| -> Vec<String> {
        step.split_whitespace()
            .map(|w| w.replace("target/release/edgevm", bin))
            .collect()
    };
    let sh = |step: &str| {
        let w = words(step);
        let out = std::process::Command::new(&w[0])
            .args(&w[1..])
            .current_dir(&dir)
            .env("EDGEVM_LOG", "warn")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{step}: {text}");
        text
    };
    // 1. edgevm new myprog
    assert_eq!(words(&steps[0])[1..], ["new", "myprog"]);
    sh(&steps[0]);
    for f in ["myprog.c", "kvm_api.h", "build.sh", "config.json"] {
        assert!(dir.join("myprog").join(f).exists(), "{f}");
    }
    // 2. build (warning-free: -Wall -Wextra)
    let out = sh(&steps[1]);
    assert!(!out.contains("warning"), "{out}");
    // 3. one request through edgevm run
    let out = sh(&steps[2]);
    assert!(
        out.contains("HTTP/1.1 200 OK") && out.contains("Hello from myprog!\n"),
        "{out}"
    );
    // 4. serve (on a free port instead of 8080) and 5. GET it.
    assert!(
        steps[3].ends_with("serve --config myprog/config.json"),
        "{}",
        steps[3]
    );
    assert!(
        steps[4].starts_with("curl http://127.0.0.1:8080/myprog"),
        "{}",
        steps[4]
    );
    let s = Server::start(&dir, &[&dir.join("myprog/config.json")], &[]);
    assert_eq!(s.ok("/myprog"), "Hello from myprog!\n");
    let log = s.wait_log(">>> [myprog] GET /myprog", Duration::from_secs(10));
    assert!(
        log.contains("GET /myprog program=myprog status=200"),
        "{log}"
    );
}

#[test]
fn new_writes_cpp_and_refuses_bad_names() {
    let dir = scratch("ux-new");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_edgevm"))
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    let out = run(&["new", "cpp1", "--lang", "cpp"]);
    assert!(out.status.success(), "{out:?}");
    let st = std::process::Command::new(dir.join("cpp1/build.sh"))
        .output()
        .unwrap();
    assert!(st.status.success() && st.stderr.is_empty(), "{st:?}");
    let r = edgevm_run(&[
        "run",
        p(&dir.join("cpp1/cpp1")),
        "--request",
        "/",
        "-d",
        "posted",
    ]);
    assert!(r.stdout.ends_with("\n\nposted"), "{}", r.all());
    for bad in [
        &["new", "cpp1"][..],
        &["new", "metrics"],
        &["new", "a b"],
        &["new", "x", "--lang", "cobol"],
    ] {
        let out = run(bad);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {out:?}");
    }
}

#[test]
fn new_rust_program_builds_statically_and_serves_and_the_guest_crate_tests_pass() {
    let dir = scratch("ux-new-rust");
    let _ = std::fs::remove_dir_all(dir.join("rs1"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgevm"))
        .args(["new", "rs1", "--lang", "rust"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The guest crate compiled once for every guest build (guest/build.sh's cargo target).
    let target = guests().join(".cargo-target");
    let st = std::process::Command::new(dir.join("rs1/build.sh"))
        .env("CARGO_TARGET_DIR", &target)
        .env("CARGO_NET_OFFLINE", "true")
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    let stderr = String::from_utf8_lossy(&st.stderr);
    assert!(!stderr.contains("warning"), "{stderr}");
    let bin = dir.join("rs1/rs1");
    // Linked statically (crt-static): no program header asks for an interpreter (PT_INTERP).
    let elf = std::fs::read(&bin).unwrap();
    let u = |at: usize, n: usize| {
        elf[at..at + n]
            .iter()
            .rev()
            .fold(0usize, |v, &b| v << 8 | usize::from(b))
    };
    let (phoff, phentsize, phnum) = (u(0x20, 8), u(0x36, 2), u(0x38, 2));
    assert!(phnum > 0);
    for i in 0..phnum {
        assert_ne!(u(phoff + i * phentsize, 4), 3, "rs1 is linked dynamically");
    }
    let r = edgevm_run(&["run", p(&bin), "--request", "/x?y=1"]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    assert!(
        r.stdout.contains("HTTP/1.1 200 OK\n") && r.stdout.ends_with("\n\nHello from rs1!\n"),
        "{}",
        r.all()
    );
    assert!(r.all().contains(">>> [rs1] GET /rs1/x?y=1"), "{}", r.all());
    // The guest crate's own unit tests (query_param, json_escape) on the host.
    let st = std::process::Command::new("cargo")
        .args(["test", "--quiet", "--offline", "--lib", "--manifest-path"])
        .arg(root().join("guest/rust/edgevm-guest/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}{}",
        String::from_utf8_lossy(&st.stdout),
        String::from_utf8_lossy(&st.stderr)
    );
}

// ------------------------------------------------------------------------------------------
// 9. Which method reaches which handler
// ------------------------------------------------------------------------------------------

#[test]
fn get_to_a_post_only_program_is_405() {
    let dir = scratch("ux-405");
    let src = dir.join("postonly.c");
    std::fs::write(
        &src,
        "#include \"kvm_api.h\"\n#include <string.h>\n\
         static void on_post(const char *u, const char *a, const char *c, const uint8_t *d, size_t n)\n\
         { (void)u; (void)a; (void)c; backend_response(200, \"text/plain\", 10, d, n); }\n\
         int main(void) { set_backend_post(on_post); wait_for_requests(); return 0; }\n",
    )
    .unwrap();
    let bin = dir.join("postonly");
    let st = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-I"])
        .arg(root().join("guest"))
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .status()
        .unwrap();
    assert!(st.success());
    let r = edgevm_run(&["run", p(&bin), "--request", "GET", "/"]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    assert!(
        r.stdout.starts_with("HTTP/1.1 405 Method Not Allowed\n"),
        "{}",
        r.all()
    );
    assert!(r.stdout.contains("\nAllow: POST"), "{}", r.all());
    let r = edgevm_run(&["run", p(&bin), "--request", "/", "-d", "x"]);
    assert!(r.stdout.ends_with("\n\nx"), "{}", r.all());
}

// ------------------------------------------------------------------------------------------
// 5. A failed program is retried
// ------------------------------------------------------------------------------------------

/// Wait (at most `limit`) until `f` holds for the stats of `prog`; those stats.
fn wait_stats(
    s: &Server,
    prog: &str,
    limit: Duration,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t0 = std::time::Instant::now();
    loop {
        let st = s.stats();
        let p = st["programs"][prog].clone();
        if f(&p) {
            return p;
        }
        assert!(
            t0.elapsed() < limit,
            "{prog}: {what} not seen after {limit:?}: {st:#}\nlog:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_failed_program_is_retried_with_backoff_and_at_once_when_its_file_changes() {
    let dir = scratch("ux-retry");
    let later = dir.join("later");
    let _ = std::fs::remove_file(&later);
    // `exits`: a plain program that exits before wait_for_requests(), every time.
    let exits = dir.join("exits");
    std::fs::copy(guest("hello"), &exits).unwrap();
    let cfg = dir.join("retry.json");
    std::fs::write(
        &cfg,
        format!(
            "{{ \"later\": {{ \"filename\": {}, \"start\": true }},\n  \"exits\": {{ \"filename\": {}, \"start\": true }} }}\n",
            js(p(&later)),
            js(p(&exits))
        ),
    )
    .unwrap();
    let s = Server::start(&dir, &[&cfg], &[]);
    let limit = Duration::from_secs(20);

    // The missing file: failed, says why and when it is retried; clients get 503.
    let st = wait_stats(&s, "later", limit, "failed", |p| {
        p["status"]
            .as_str()
            .is_some_and(|t| t.starts_with("failed"))
    });
    assert!(st["boot_failures"].as_u64() >= Some(1), "{st:#}");
    let retry = st["retry_in_s"].as_f64().expect("retry_in_s");
    assert!((0.0..=1.0).contains(&retry), "{st:#}");
    s.unavailable("/later", "later");
    assert_eq!(s.get("/_edgevm/health").status, 503);

    // A program that fails at every boot: retried with a growing back-off (1 s, 2 s, ...).
    let st = wait_stats(&s, "exits", limit, "three failed boots", |p| {
        p["boot_failures"].as_u64() >= Some(3)
    });
    assert!(
        st["status"]
            .as_str()
            .is_some_and(|t| t.contains("did not wait for requests")),
        "{st:#}"
    );
    let n = st["boot_failures"].as_u64().unwrap();
    let retry = st["retry_in_s"].as_f64().expect("retry_in_s");
    let backoff = 2f64.powi(n.min(7) as i32 - 1).min(60.0);
    assert!(retry <= backoff && retry > 0.0, "{st:#}");
    let log = s.log();
    // Said once (the same failure again is a debug line), with when it is retried.
    assert_eq!(
        log.matches("Program 'exits' failed to start:").count(),
        1,
        "{log}"
    );
    assert!(
        log.contains("(retried in 1 s, or at once when") && log.contains("exits changes)"),
        "{log}"
    );

    // The file appears (a build writing it): booted again at once, without a restart.
    let tmp = dir.join("later.tmp");
    std::fs::copy(guest("serve_api"), &tmp).unwrap();
    std::fs::rename(&tmp, &later).unwrap();
    let st = wait_stats(&s, "later", limit, "ready", |p| p["status"] == "ready");
    assert!(st.get("retry_in_s").is_none(), "{st:#}");
    assert!(st["boot_failures"].as_u64() >= Some(1), "{st:#}");
    let log = s.log();
    assert!(
        log.contains("Program 'later': booting again (its file changed)"),
        "{log}"
    );
    s.ok("/later/ok");
    assert_eq!(s.get("/_edgevm/health").status, 503, "'exits' still fails");

    // A program that fails is fixed by replacing its file, too.
    let tmp = dir.join("exits.tmp");
    std::fs::copy(guest("serve_api"), &tmp).unwrap();
    std::fs::rename(&tmp, &exits).unwrap();
    wait_stats(&s, "exits", limit, "ready", |p| p["status"] == "ready");
    s.ok("/exits/ok");
    assert_eq!(s.get("/_edgevm/health").status, 200);
    s.stop();
}

// ------------------------------------------------------------------------------------------
// 8. /metrics carries what the stats have, and docs/METRICS.md documents both
// ------------------------------------------------------------------------------------------

/// The first two columns of the table under `heading` in docs/METRICS.md, backticks removed
/// from the first.
fn doc_table(doc: &str, heading: &str) -> Vec<(String, String)> {
    let section = doc
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("no {heading:?} in docs/METRICS.md"));
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_string(), cells[3].to_string())
        })
        .collect()
}

#[test]
fn metrics_carry_every_stats_field_and_both_are_documented() {
    let dir = scratch("ux-metrics-doc");
    let gone = dir.join("gone");
    let _ = std::fs::remove_file(&gone);
    let cfg = dir.join("m.json");
    std::fs::write(
        &cfg,
        format!(
            "{{ \"hello\": {{ \"filename\": {}, \"start\": true }}, \"gone\": {{ \"filename\": {} }} }}\n",
            js(p(&guest("example_hello"))),
            js(p(&gone))
        ),
    )
    .unwrap();
    let s = Server::start(&dir, &[&cfg], &[]);
    s.ok("/hello");
    let hello = wait_stats(&s, "hello", Duration::from_secs(20), "ready", |p| {
        p["status"] == "ready"
    });
    let gone = wait_stats(&s, "gone", Duration::from_secs(20), "a retry", |p| {
        p.get("retry_in_s").is_some()
    });
    let metrics = s.get("/metrics").text();
    s.stop();

    let doc = std::fs::read_to_string(root().join("docs/METRICS.md")).unwrap();
    let fields = doc_table(&doc, "## `/_edgevm/stats` fields");
    // Every field the server sends is documented, and every documented field is sent.
    let mut sent: Vec<String> = hello
        .as_object()
        .unwrap()
        .keys()
        .chain(gone.as_object().unwrap().keys())
        .cloned()
        .collect();
    sent.sort();
    sent.dedup();
    let mut documented: Vec<String> = fields.iter().map(|f| f.0.clone()).collect();
    documented.sort();
    assert_eq!(sent, documented, "stats fields vs docs/METRICS.md");
    // Each field's metric exists in /metrics.
    let families: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let has_series = |name: &str| {
        metrics
            .lines()
            .any(|l| l.starts_with(name) && !l.starts_with('#'))
    };
    for (field, metric_cell) in &fields {
        let metric = doc_metric_names(metric_cell);
        assert!(!metric.is_empty(), "{field}: no metric named");
        for m in metric {
            assert!(has_series(&m), "{field}: no {m} in /metrics:\n{metrics}");
        }
    }
    // Every metric family is documented, and every documented metric is exported.
    let listed: Vec<String> = doc_table(&doc, "## `/metrics`")
        .into_iter()
        .map(|m| m.0)
        .collect();
    let mut exported: Vec<String> = families.iter().map(|f| f.to_string()).collect();
    exported.sort();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    assert_eq!(
        exported, listed_sorted,
        "/metrics families vs docs/METRICS.md"
    );
}

/// The metric names (`edgevm_...`, without a `{...}` selector) in a table cell.
fn doc_metric_names(cell: &str) -> Vec<String> {
    cell.split('`')
        .filter(|w| w.starts_with("edgevm_"))
        .map(|w| w.split('{').next().unwrap().to_string())
        .collect()
}
