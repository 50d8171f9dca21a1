//! `edgevm run`: boot programs to exit or wait_for_requests (issue: engine). Arguments,
//! environment, exit status, system calls, configuration files, logging options.

use std::path::Path;

use crate::common::*;

pub fn p(s: &Path) -> &str {
    s.to_str().unwrap()
}

/// Every line the guest printed on stdout, without the `>>> [name] ` prefix.
fn guest_lines<'a>(r: &'a Run, name: &str) -> Vec<&'a str> {
    let prefix = format!(">>> [{name}] ");
    r.stdout
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

/// Value of `KEY=...` in the lines printed by the args_env guest.
fn shown<'a>(lines: &[&'a str], key: &str) -> Option<&'a str> {
    let k = format!("{key}=");
    lines.iter().find_map(|l| l.strip_prefix(k.as_str()))
}

fn assert_no_panic(r: &Run) {
    assert!(
        !r.stderr.contains("panicked"),
        "edgevm panicked:\n{}",
        r.all()
    );
}

#[test]
fn hello_world_from_every_toolchain() {
    for (bin, text) in [
        ("hello", "Hello World from C (glibc)!"),
        ("hello_musl", "Hello World from C (musl)!"),
        ("hello_cpp", "Hello World from C++!"),
        ("hello_rust", "Hello World from Rust!"),
        ("hello_pie", "Hello World from C (glibc)!"),
    ] {
        let r = edgevm_run(&["run", p(&guest(bin))]);
        assert_eq!(r.code(), Some(0), "{bin}: {}", r.all());
        assert!(
            r.stdout.contains(&format!(">>> [{bin}] {text}")),
            "{bin}: {}",
            r.all()
        );
        assert_no_panic(&r);
    }
}

#[test]
fn argv_starts_with_program_name_then_arguments() {
    let r = edgevm_run(&[
        "run",
        p(&guest("args_env")),
        "0",
        "two words",
        "-x",
        "--y=z",
    ]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    let l = guest_lines(&r, "args_env");
    assert_eq!(
        &l[..6],
        &[
            "argc=5",
            "argv[0]=args_env",
            "argv[1]=0",
            "argv[2]=two words",
            "argv[3]=-x",
            "argv[4]=--y=z"
        ],
        "{}",
        r.all()
    );
    // --name changes argv[0], KVM_NAME and the output prefix.
    let r = edgevm_run(&["run", "--name", "renamed", p(&guest("args_env"))]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    let l = guest_lines(&r, "renamed");
    assert!(l.contains(&"argv[0]=renamed"), "{}", r.all());
    assert_eq!(shown(&l, "KVM_NAME"), Some("renamed"), "{}", r.all());
}

#[test]
fn default_environment_is_always_set() {
    let r = edgevm_run(&["run", p(&guest("args_env"))]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    let l = guest_lines(&r, "args_env");
    assert_eq!(shown(&l, "KVM_NAME"), Some("args_env"), "{}", r.all());
    let group = shown(&l, "KVM_GROUP").unwrap_or("(unset)");
    assert!(group != "(unset)" && !group.is_empty(), "{}", r.all());
    assert_eq!(shown(&l, "KVM_TYPE"), Some("request"), "{}", r.all());
    assert_eq!(shown(&l, "KVM_STATE"), Some("state"), "{}", r.all());
    assert_eq!(shown(&l, "KVM_DEBUG"), Some("0"), "{}", r.all());
    assert_eq!(shown(&l, "EDGEVM_TEST_VAR"), Some("(unset)"), "{}", r.all());
    // hello counts its environment: only the defaults (LC_*, USER, the five KVM_*, ...).
    let n = default_envc();
    assert!((8..16).contains(&n), "{n} default variables");
}

/// The environment size hello reports, from `... envc=N` after `>>> [name] argc=1 `.
fn envc(r: &Run, name: &str) -> usize {
    let want = format!(">>> [{name}] argc=1 argv[0]={name} envc=");
    r.stdout
        .lines()
        .find_map(|l| l.strip_prefix(want.as_str()))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no '{want}N' line:\n{}", r.all()))
}

/// How many variables every program gets without any configured `environment`.
fn default_envc() -> usize {
    let r = edgevm_run(&["run", p(&guest("hello"))]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    envc(&r, "hello")
}

#[test]
fn env_option_appends_variables() {
    let r = edgevm_run(&[
        "run",
        "-e",
        "EDGEVM_TEST_VAR=from cli",
        "--env",
        "OTHER=1",
        p(&guest("args_env")),
    ]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    let l = guest_lines(&r, "args_env");
    assert_eq!(
        shown(&l, "EDGEVM_TEST_VAR"),
        Some("from cli"),
        "{}",
        r.all()
    );
    assert_eq!(shown(&l, "KVM_TYPE"), Some("request"), "{}", r.all());
    let r = edgevm_run(&["run", "-e", "A=1", "-e", "B=2", p(&guest("hello_musl"))]);
    assert_eq!(envc(&r, "hello_musl"), default_envc() + 2, "{}", r.all());
    // A malformed -e is a usage error, not a crash.
    let r = edgevm_run(&["run", "-e", "NOEQUALS", p(&guest("hello"))]);
    assert_eq!(r.code(), Some(1), "{}", r.all());
    assert!(r.stderr.contains("KEY=VALUE"), "{}", r.all());
    assert_no_panic(&r);
}

#[test]
fn exit_status_is_propagated() {
    for n in ["0", "1", "7", "42", "255"] {
        let r = edgevm_run(&["run", p(&guest("args_env")), n]);
        assert_eq!(r.code(), Some(n.parse().unwrap()), "exit {n}: {}", r.all());
    }
    // The musl hello and the glibc one return 0 from main.
    let r = edgevm_run(&["run", p(&guest("hello_musl"))]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
}

fn check_syscalls(bin: &str) {
    let r = edgevm_run(&["run", p(&guest(bin))]);
    let l = guest_lines(&r, bin);
    let fails: Vec<_> = l.iter().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        fails.is_empty(),
        "{bin}: failed checks {fails:?}\n{}",
        r.all()
    );
    let oks = l.iter().filter(|l| l.starts_with("ok ")).count();
    assert!(oks >= 28, "{bin}: only {oks} checks ran\n{}", r.all());
    assert!(
        l.iter()
            .any(|l| *l == format!("syscalls: {oks} ok, 0 failed")),
        "{bin}: {}",
        r.all()
    );
    for name in ["brk", "mmap", "mremap", "nanosleep", "getrandom", "enosys"] {
        assert!(
            l.iter().any(|l| l.starts_with(&format!("ok {name} "))),
            "{bin}: no 'ok {name}'\n{}",
            r.all()
        );
    }
    assert_eq!(r.code(), Some(0), "{bin}: {}", r.all());
}

#[test]
fn syscalls_glibc_all_ok() {
    check_syscalls("syscalls");
}

#[test]
fn syscalls_musl_all_ok() {
    check_syscalls("syscalls_musl");
}

#[test]
fn verbose_syscalls_logs_each_call_by_name() {
    let r = edgevm_run(&["run", "--verbose-syscalls", p(&guest("hello"))]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    for call in ["brk(", "write(", "exit_group("] {
        assert!(
            r.all()
                .lines()
                .any(|l| l.starts_with(">>> [hello] ") && l.contains(call)),
            "no '{call}' line:\n{}",
            r.all()
        );
    }
    // Without the option there are no such lines.
    let r = edgevm_run(&["run", p(&guest("hello"))]);
    assert!(!r.all().contains("exit_group("), "{}", r.all());
    assert!(!r.all().contains("brk("), "{}", r.all());
}

#[test]
fn verbose_prints_loading_details() {
    let r = edgevm_run(&["run", "-v", p(&guest("hello"))]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    let all = r.all();
    assert!(all.contains("loaded static program: entry 0x"), "{all}");
    assert!(all.contains("MiB address space"), "{all}");
    assert!(all.contains("symbols"), "{all}");
    assert!(all.contains("VM exits"), "{all}");
    let r = edgevm_run(&["run", "--verbose", p(&guest("hello_pie"))]);
    assert!(r.all().contains("loaded static-pie program"), "{}", r.all());
    // Quiet by default.
    let r = edgevm_run(&["run", p(&guest("hello"))]);
    assert!(!r.all().contains("loaded"), "{}", r.all());
}

#[test]
fn raw_prints_without_prefix() {
    let r = edgevm_run(&["run", "--raw", p(&guest("hello"))]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    assert!(
        r.stdout.lines().any(|l| l == "Hello World from C (glibc)!"),
        "{}",
        r.all()
    );
    assert!(!r.stdout.contains(">>>"), "{}", r.all());
    let r = edgevm_run(&["run", "--raw", p(&guest("hello_rust"))]);
    assert!(
        r.stdout.lines().any(|l| l == "Hello World from Rust!"),
        "{}",
        r.all()
    );
}

#[test]
fn wait_guest_reports_ready_and_init_time() {
    let r = edgevm_run(&["run", p(&guest("wait"))]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    assert!(r.stdout.contains(">>> [wait] init done"), "{}", r.all());
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("is ready"))
        .unwrap_or_else(|| panic!("no 'is ready' line:\n{}", r.all()));
    assert!(line.contains("'wait'"), "{line}");
    // "... after 8.29 ms of initialization ..."
    let ms: f64 = line
        .split(" after ")
        .nth(1)
        .and_then(|s| s.split(" ms").next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no init time in '{line}'"));
    assert!(ms > 0.0 && ms < 5000.0, "{line}");
}

/// A configuration with a group and two programs using args_env.
fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let cfg = dir.join("compute.json");
    let text = format!(
        r#"{{
  // a group with one environment variable
  "mygroup": {{ "environment": ["GROUP_VAR=g"] }},
  "cfgargs": {{
    "group": "mygroup",
    "filename": "{file}",
    "main_arguments": ["3", "from-config"],
    "environment": ["EDGEVM_TEST_VAR=from config"]{extra}
  }},
  "cfghello": {{ "filename": "{hello}", "environment": ["X=1"] }}
}}"#,
        file = p(&guest("args_env")),
        hello = p(&guest("hello")),
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

#[test]
fn config_main_arguments_come_before_cli_arguments() {
    let d = scratch("config_args");
    let cfg = write_config(&d, "");
    // Program chosen by --program; the file is taken from the configuration.
    let r = edgevm_run(&["run", "--config", p(&cfg), "--program", "cfgargs"]);
    assert_eq!(r.code(), Some(3), "{}", r.all());
    let l = guest_lines(&r, "cfgargs");
    assert_eq!(
        &l[..3],
        &["argc=3", "argv[0]=cfgargs", "argv[1]=3"],
        "{}",
        r.all()
    );
    assert!(l.contains(&"argv[2]=from-config"), "{}", r.all());
    assert_eq!(shown(&l, "KVM_NAME"), Some("cfgargs"), "{}", r.all());
    assert_eq!(shown(&l, "KVM_GROUP"), Some("mygroup"), "{}", r.all());
    assert_eq!(
        shown(&l, "EDGEVM_TEST_VAR"),
        Some("from config"),
        "{}",
        r.all()
    );

    // Program chosen by its file name; CLI arguments follow main_arguments.
    let r = edgevm_run(&[
        "run",
        "--config",
        p(&cfg),
        p(&guest("args_env")),
        "cli1",
        "cli2",
    ]);
    assert_eq!(r.code(), Some(3), "{}", r.all());
    let l = guest_lines(&r, "cfgargs");
    assert_eq!(
        &l[..6],
        &[
            "argc=5",
            "argv[0]=cfgargs",
            "argv[1]=3",
            "argv[2]=from-config",
            "argv[3]=cli1",
            "argv[4]=cli2"
        ],
        "{}",
        r.all()
    );
}

#[test]
fn config_environment_then_cli_env_are_appended() {
    let d = scratch("config_env");
    let cfg = write_config(&d, "");
    // Both set EDGEVM_TEST_VAR: getenv() finds the first, the configuration's.
    let r = edgevm_run(&[
        "run",
        "--config",
        p(&cfg),
        "--program",
        "cfgargs",
        "-e",
        "EDGEVM_TEST_VAR=from cli",
    ]);
    let l = guest_lines(&r, "cfgargs");
    assert_eq!(
        shown(&l, "EDGEVM_TEST_VAR"),
        Some("from config"),
        "{}",
        r.all()
    );
    assert_eq!(shown(&l, "KVM_TYPE"), Some("request"), "{}", r.all());
    // cfghello is in the default group: the defaults + X from the configuration + 2 from -e.
    let r = edgevm_run(&[
        "run",
        "--config",
        p(&cfg),
        "--program",
        "cfghello",
        "-e",
        "Y=2",
        "-e",
        "Z=3",
    ]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    assert_eq!(envc(&r, "cfghello"), default_envc() + 3, "{}", r.all());
}

#[test]
fn config_address_space_and_verbose_syscalls() {
    let d = scratch("config_as");
    let cfg = write_config(
        &d,
        r#", "address_space": 512, "verbose": true, "verbose_syscalls": true"#,
    );
    let r = edgevm_run(&["run", "--config", p(&cfg), "--program", "cfgargs"]);
    assert_eq!(r.code(), Some(3), "{}", r.all());
    assert!(r.all().contains(", 512 MiB address space"), "{}", r.all());
    assert!(r.all().contains("exit_group("), "{}", r.all());
    // The command line overrides the configuration.
    let r = edgevm_run(&[
        "run",
        "--config",
        p(&cfg),
        "--program",
        "cfgargs",
        "--address-space",
        "1024",
    ]);
    assert!(r.all().contains(", 1024 MiB address space"), "{}", r.all());
}

#[test]
fn config_errors_are_clear() {
    let d = scratch("config_errors");
    let cfg = write_config(&d, "");
    // Several programs and none chosen.
    let r = edgevm_run(&["run", "--config", p(&cfg)]);
    assert_eq!(r.code(), Some(1), "{}", r.all());
    assert!(r.stderr.contains("--program"), "{}", r.all());
    assert_no_panic(&r);
    // Unknown program.
    let r = edgevm_run(&["run", "--config", p(&cfg), "--program", "nope"]);
    assert_eq!(r.code(), Some(1), "{}", r.all());
    assert!(r.stderr.contains("'nope'"), "{}", r.all());
    assert_no_panic(&r);
    // Trailing comma: file, line and column.
    let bad = d.join("trailing.json");
    std::fs::write(
        &bad,
        format!(
            "{{\n  \"p\": {{\n    \"filename\": \"{}\",\n  }}\n}}\n",
            p(&guest("hello"))
        ),
    )
    .unwrap();
    let r = edgevm_run(&["run", "--config", p(&bad)]);
    assert_eq!(r.code(), Some(1), "{}", r.all());
    // The position is the comma itself: the end of line 3.
    let line3 = format!("    \"filename\": \"{}\",", p(&guest("hello")));
    assert!(
        r.stderr
            .contains(&format!("trailing.json:3:{}: trailing comma", line3.len())),
        "{}",
        r.all()
    );
    assert_no_panic(&r);
    std::fs::write(&bad, "{\n  \"p\": { \"filename\": \"/x\" },\n}\n").unwrap();
    let r = edgevm_run(&["run", "--config", p(&bad)]);
    assert_eq!(r.code(), Some(1), "{}", r.all());
    assert!(
        r.stderr.contains("trailing.json:2:28: trailing comma"),
        "{}",
        r.all()
    );
    // Missing configuration file.
    let r = edgevm_run(&["run", "--config", p(&d.join("absent.json"))]);
    assert_eq!(r.code(), Some(1), "{}", r.all());
    assert!(r.stderr.contains("absent.json"), "{}", r.all());
    assert_no_panic(&r);
}
