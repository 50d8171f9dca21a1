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
