//! GDB remote debugging, driven by the real `gdb` in batch mode (installed by
//! scripts/deps.sh): `edgevm run --gdb`, `sys_breakpoint()` with `allow_debug` in the main VM
//! and in a request VM, a crash with `remote_debug_on_exception`, Ctrl-C, and the hostile
//! cases of the debug port (garbage, a second client, a second session, never open unless
//! configured). The guest is guest/tests/debug.c, built with -O0.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::harness::*;

/// Wait for `child` at most `limit`; kill it (by PID) if it is still running then.
fn wait_bounded(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not finish within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Start `gdb -batch` on `binary`, connected to `127.0.0.1:port`, running `cmds`.
fn gdb_start(port: u16, binary: &Path, cmds: &[&str], out: &Path) -> Child {
    let mut c = Command::new("gdb");
    c.args([
        "-batch",
        "-nx",
        "-ex",
        "set pagination off",
        "-ex",
        "set confirm off",
    ])
    .arg("-ex")
    .arg(format!("target remote 127.0.0.1:{port}"));
    for cmd in cmds {
        c.arg("-ex").arg(cmd);
    }
    let f = std::fs::File::create(out).unwrap();
    c.arg(binary)
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .expect("run gdb (scripts/deps.sh installs it)")
}

/// Run gdb to the end; its output.
fn gdb(port: u16, binary: &Path, cmds: &[&str], dir: &Path) -> String {
    let out = dir.join("gdb.out");
    let mut child = gdb_start(port, binary, cmds, &out);
    wait_bounded(&mut child, Duration::from_secs(60));
    std::fs::read_to_string(&out).unwrap()
}

fn wait_file(path: &Path, needle: &str, limit: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let s = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
        if s.contains(needle) {
            return s;
        }
        assert!(
            t0.elapsed() < limit,
            "no {needle:?} in {} after {limit:?}:\n{s}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGINT to gdb (by PID), as a terminal's Ctrl-C: gdb interrupts the program.
fn ctrl_c(gdb: &Child) {
    // SAFETY: kill(2) on the PID of our own child process.
    let r = unsafe { libc::kill(gdb.id() as i32, libc::SIGINT) };
    assert_eq!(r, 0);
}

fn append(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new().append(true).open(path).unwrap()
}

fn has(text: &str, needle: &str) {
    assert!(text.contains(needle), "no {needle:?} in:\n{text}");
}

/// A server with the debug guest: `extra` keys added to its program "dbg" (concurrency 2,
/// max_request_time 1 s).
fn debug_server(name: &str, extra: &str) -> Server {
    Server::with_config(
        name,
        &format!(
            r#"{{ "dbg": {{ "filename": {}, "concurrency": 2, "max_request_time": 1 {extra} }} }}"#,
            js(guest("debug").to_string_lossy())
        ),
    )
}

/// A GET that waits in another thread (the request being debugged).
fn get_later(port: u16, path: &str) -> std::thread::JoinHandle<Resp> {
    let path = path.to_string();
    std::thread::spawn(move || request(port, "GET", &path, &[], b""))
}

#[test]
fn run_gdb_breakpoint_by_name_variables_registers_backtrace_and_step() {
    let dir = scratch("debug_run_gdb");
    let port = free_port();
    let log = dir.join("edgevm.log");
    let mut run = edgevm()
        .args(["run", &format!("--gdb=127.0.0.1:{port}")])
        .arg(guest("debug"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(append(&log))
        .spawn()
        .unwrap();
    wait_file(&log, "waiting up to", Duration::from_secs(20));
    let out = gdb(
        port,
        &guest("debug"),
        &[
            "info registers rip",
            "break compute",
            "hbreak printf",
            "continue",
            "print counter",
            "print a",
            "info registers rip rsp fs_base gs_base",
            "print $xmm0.v4_int32",
            "print $ymm0.v8_int32",
            "bt",
            "next",
            "print sum",
            "set var counter = 100",
            "next",
            "print counter",
            "step",
            "step",
            "continue",
            "bt 1",
            "delete",
            "continue",
        ],
        &dir,
    );
    let st = wait_bounded(&mut run, Duration::from_secs(30));
    let log = std::fs::read_to_string(&log).unwrap();
    // Stopped at the ELF entry (_start), before any program instruction.
    has(&out, "in _start ()");
    has(&out, "Breakpoint 1, compute (a=1, b=2)");
    has(&out, "$1 = 41");
    has(&out, "$2 = 1");
    has(&out, "<compute+");
    has(&out, "fs_base");
    // SSE and AVX registers (ymm0 is xmm0 and ymm0h).
    has(&out, "$3 = {");
    has(&out, "$4 = {");
    has(&out, "#0  compute (a=1, b=2)");
    has(&out, "#1  0x");
    has(&out, "in main () at");
    has(&out, "$5 = 3");
    // `set var` wrote memory, then `next` ran `counter += sum`; `step` returns to main.
    has(&out, "$6 = 103");
    has(&out, "main () at ");
    // The hardware breakpoint (int3 under kvm_pvm, DR0-DR3 on hardware KVM).
    has(&out, "Breakpoint 2, ");
    has(&out, "in printf");
    has(&out, "exited normally");
    assert!(st.success(), "edgevm run: {st}\n{log}");
    has(&log, "compute: 103");
    has(&log, "debug session ended");
}

#[test]
fn sys_breakpoint_in_the_main_vm_during_boot() {
    let dir = scratch("debug_boot_break");
    let port = free_port();
    let cfg = dir.join("c.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{ "dbg": {{ "filename": {}, "allow_debug": true, "debug_listen": "127.0.0.1:{port}",
                "environment": ["BOOT_BREAK=1"] }} }}"#,
            js(guest("debug").to_string_lossy())
        ),
    )
    .unwrap();
    let log = dir.join("edgevm.log");
    let mut run = edgevm()
        .args(["run", "-c"])
        .arg(&cfg)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(append(&log))
        .spawn()
        .unwrap();
    wait_file(&log, "waiting up to", Duration::from_secs(20));
    let out = gdb(port, &guest("debug"), &["bt", "up", "print result"], &dir);
    // gdb -batch detaches at the end: the program goes on to wait_for_requests().
    let st = wait_bounded(&mut run, Duration::from_secs(30));
    has(&out, "in sys_breakpoint");
    has(&out, "in main () at");
    has(&out, "$1 = 44");
    assert!(st.success(), "{st}");
    has(&std::fs::read_to_string(&log).unwrap(), "is ready");
}

#[test]
fn sys_breakpoint_in_a_request_ctrl_c_memory_write_and_other_vms_keep_serving() {
    let dir = scratch("debug_request");
    let port = free_port();
    let s = debug_server(
        "debug_request_srv",
        &format!(r#", "allow_debug": true, "debug_listen": "127.0.0.1:{port}""#),
    );
    let spin = get_later(s.port, "/dbg/spin");
    s.wait_log("waiting up to", Duration::from_secs(20));
    let out = dir.join("gdb.out");
    let mut g = gdb_start(
        port,
        &guest("debug"),
        &[
            "bt",
            "echo continuing\\n",
            "continue",
            "bt",
            "set var stop_spin = 1",
            "continue",
        ],
        &out,
    );
    wait_file(&out, "continuing", Duration::from_secs(20));
    // The request runs (spinning) under the debugger, past its 1 s max_request_time; the
    // other VM serves meanwhile. (The sleep only lets gdb send its continue first.)
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(s.ok("/dbg/other"), "ok 44\n");
    // Ctrl-C, as a terminal sends it to gdb.
    ctrl_c(&g);
    wait_bounded(&mut g, Duration::from_secs(30));
    let out = std::fs::read_to_string(&out).unwrap();
    has(&out, "#1  0x");
    has(&out, "in on_get (url=");
    has(&out, "Program received signal SIGINT");
    has(&out, "in spin_wait ()");
    has(&out, "exited normally");
    let r = spin.join().unwrap();
    assert_eq!((r.status, r.text()), (200, "spun 44\n".to_string()));
    // The VM was reset as usual; the session is over and the port closed.
    assert_eq!(s.ok("/dbg/x"), "ok 44\n");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    s.wait_log("debug session ended", Duration::from_secs(5));
}

#[test]
fn a_crash_opens_a_session_at_the_faulting_instruction() {
    let dir = scratch("debug_crash");
    let port = free_port();
    let s = debug_server(
        "debug_crash_srv",
        &format!(r#", "remote_debug_on_exception": true, "debug_listen": "127.0.0.1:{port}""#),
    );
    let crash = get_later(s.port, "/dbg/crash");
    s.wait_log("waiting up to", Duration::from_secs(20));
    let out = gdb(
        port,
        &guest("debug"),
        &["bt", "print v", "x/i $pc", "continue"],
        &dir,
    );
    has(&out, "in crash_here (v=7)");
    has(&out, "in on_get (url=");
    has(&out, "$1 = 7");
    has(&out, "=> 0x");
    has(&out, "Program terminated with signal SIGSEGV");
    let r = crash.join().unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(s.ok("/dbg/x"), "ok 44\n");
    let log = s.log();
    has(&log, "page fault");
    has(&log, "crash_here");
}

#[test]
fn hostile_garbage_on_the_debug_port_second_client_and_second_session() {
    let port = free_port();
    let s = debug_server(
        "debug_hostile_srv",
        &format!(r#", "allow_debug": true, "debug_listen": "127.0.0.1:{port}""#),
    );
    // 1. Garbage instead of GDB: the session ends, the request goes on.
    let bp = get_later(s.port, "/dbg/bp");
    s.wait_log("waiting up to", Duration::from_secs(20));
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rng = Rng(0x5eed);
    let mut junk: Vec<u8> =
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n$qSupported#zz$#$}}}\x03\x03".to_vec();
    junk.extend((0..4096).map(|_| rng.next() as u8));
    let _ = c.write_all(&junk);
    drop(c);
    let r = bp.join().unwrap();
    assert_eq!((r.status, r.text()), (200, "bp 45\n".to_string()));
    assert_eq!(s.ok("/dbg/x"), "ok 44\n");

    // 2. While a session is open: a second client is told why it is refused, a second
    // sys_breakpoint() gets no session (logged) and its request goes on.
    let spin = get_later(s.port, "/dbg/spin");
    let t0 = Instant::now();
    while s.log().matches("WARN dbg: debug session (").count() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(20), "{}", s.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let dir = scratch("debug_hostile");
    let out = dir.join("gdb.out");
    let mut g = gdb_start(
        port,
        &guest("debug"),
        &["echo continuing\\n", "continue"],
        &out,
    );
    wait_file(&out, "continuing", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let mut second = TcpStream::connect(("127.0.0.1", port)).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    second.write_all(b"$qSupported#37").unwrap();
    let mut reply = Vec::new();
    let _ = second.read_to_end(&mut reply);
    has(
        &String::from_utf8_lossy(&reply),
        "a debug session of program 'dbg' is already open",
    );
    let bp2 = request(s.port, "GET", "/dbg/bp", &[], b"");
    assert_eq!((bp2.status, bp2.text()), (200, "bp 45\n".to_string()));
    s.wait_log(
        "debug session refused: another debug session of program 'dbg' is open",
        Duration::from_secs(5),
    );
    // Ctrl-C, then let the spinning request finish.
    ctrl_c(&g);
    wait_bounded(&mut g, Duration::from_secs(30));
    // gdb -batch leaves at the end: the program spins on until its (restored) deadline.
    let r = spin.join().unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(s.ok("/dbg/x"), "ok 44\n");
}

#[test]
fn without_allow_debug_the_port_is_never_open_and_sys_breakpoint_is_a_logged_no_op() {
    let port = free_port();
    let s = debug_server(
        "debug_off_srv",
        &format!(r#", "debug_listen": "127.0.0.1:{port}""#),
    );
    for path in ["/dbg/bp", "/dbg/crash", "/dbg/int3"] {
        let _ = request(s.port, "GET", path, &[], b"");
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "{path}");
    }
    assert_eq!(s.ok("/dbg/bp"), "bp 45\n");
    assert_eq!(s.ok("/dbg/x"), "ok 44\n");
    let log = s.log();
    has(&log, "Skipped VM breakpoint (debug not enabled)");
    assert!(!log.contains("waiting up to"), "{log}");
}

#[test]
fn gdb_kill_fails_the_request_and_the_vm_is_reset() {
    let dir = scratch("debug_kill");
    let port = free_port();
    let s = debug_server(
        "debug_kill_srv",
        &format!(r#", "allow_debug": true, "debug_listen": "127.0.0.1:{port}""#),
    );
    let bp = get_later(s.port, "/dbg/bp");
    s.wait_log("waiting up to", Duration::from_secs(20));
    let out = gdb(
        port,
        &guest("debug"),
        &["set var counter = 1000", "kill"],
        &dir,
    );
    assert!(
        out.contains("killed]") || out.contains("Remote connection closed"),
        "{out}"
    );
    let r = bp.join().unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    s.wait_log("killed by the debugger", Duration::from_secs(5));
    // The write the debugger made is gone with the reset.
    assert_eq!(s.ok("/dbg/x"), "ok 44\n");
    assert_eq!(s.ok("/dbg/x"), "ok 44\n");
}

#[test]
fn static_pie_symbols_are_relocated() {
    let dir = scratch("debug_pie");
    let port = free_port();
    let log = dir.join("edgevm.log");
    let mut run = edgevm()
        .args(["run", &format!("--gdb=127.0.0.1:{port}")])
        .arg(guest("hello_pie"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(append(&log))
        .spawn()
        .unwrap();
    wait_file(&log, "waiting up to", Duration::from_secs(20));
    let out = gdb(
        port,
        &guest("hello_pie"),
        &["break main", "continue", "bt", "continue"],
        &dir,
    );
    assert!(wait_bounded(&mut run, Duration::from_secs(30)).success());
    has(&out, "Breakpoint 1, main (argc=1");
    has(&out, "exited normally");
}

#[test]
fn detach_at_a_breakpoint_lets_the_program_go_on() {
    let dir = scratch("debug_detach");
    let port = free_port();
    let log = dir.join("edgevm.log");
    let mut run = edgevm()
        .args(["run", &format!("--gdb=127.0.0.1:{port}")])
        .arg(guest("debug"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(append(&log))
        .spawn()
        .unwrap();
    wait_file(&log, "waiting up to", Duration::from_secs(20));
    let out = gdb(
        port,
        &guest("debug"),
        &["break compute", "continue", "detach"],
        &dir,
    );
    assert!(wait_bounded(&mut run, Duration::from_secs(30)).success());
    has(&out, "Breakpoint 1, compute");
    has(&out, "detached");
    let log = std::fs::read_to_string(&log).unwrap();
    has(&log, "GDB detached; the program goes on");
    has(&log, "compute: 44");
    has(&log, "is ready");
}

/// GDB reads and writes a `remapping` at its own address (Go's heap at 0xC000000000, as the
/// reference's configuration for Go), not the memory behind it: what main() stored there, a
/// value set with `set var`, the area's last word; past its end is not memory.
#[test]
fn gdb_reads_and_writes_remapped_memory() {
    let dir = scratch("debug_remap");
    let port = free_port();
    let cfg = dir.join("c.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{ "ml": {{ "filename": {}, "remapping": {{ "heap": ["0xC000000000", 2] }},
                "environment": ["REMAP=c000000000"] }} }}"#,
            js(guest("memlayout").to_string_lossy())
        ),
    )
    .unwrap();
    let log = dir.join("edgevm.log");
    let mut run = edgevm()
        .args(["run", "--config", cfg.to_str().unwrap()])
        .arg(format!("--gdb=127.0.0.1:{port}"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(append(&log))
        .spawn()
        .unwrap();
    wait_file(&log, "waiting up to", Duration::from_secs(20));
    let out = gdb(
        port,
        &guest("memlayout"),
        &[
            "break wait_for_requests",
            "continue",
            "x/gx 0xC000000000",
            "set var *(long *)0xC000000008 = 77",
            "set var *(long *)0xC0001FFFF8 = 0x55",
            "x/2gx 0xC000000000",
            "x/gx 0xC0001FFFF8",
            "x/gx 0xC000200000",
            "delete",
            "continue",
        ],
        &dir,
    );
    let st = wait_bounded(&mut run, Duration::from_secs(30));
    let log = std::fs::read_to_string(&log).unwrap();
    has(&out, "Breakpoint 1, ");
    has(&out, "0xc000000000:\t0x0000000000001234\n");
    has(
        &out,
        "0xc000000000:\t0x0000000000001234\t0x000000000000004d",
    );
    has(&out, "0xc0001ffff8:\t0x0000000000000055");
    has(&out, "Cannot access memory at address 0xc000200000");
    assert!(st.success(), "edgevm run: {st}\n{log}");
    has(&log, "debug session ended");
}
