//! Storage VM, state file and shared memory (issue: "Storage VM and shared memory: the seeds'
//! examples, exactly"), end to end through `edgevm serve`: the seeds' counter programs
//! verbatim under wrk, storage_call/storage_callv semantics (guest/tests/storage_api.c), the
//! `state` file (guest/tests/state_file.c, glibc and musl) across a server restart, and
//! shared memory (guest/tests/shm_api.c).
//!
//! Every program binary is copied into the test's scratch directory first: the state file
//! lives next to it (`<filename>.state`), so tests never share one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::harness::*;

/// Copy guest `name` to `dir/as_name`; its path.
fn copy_guest(dir: &Path, name: &str, as_name: &str) -> PathBuf {
    let p = dir.join(as_name);
    std::fs::copy(guest(name), &p).unwrap();
    p
}

/// `"name": { "filename": FILE, "max_memory": 64, EXTRA }`
fn program(name: &str, file: &Path, extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { ", " };
    format!(
        "{}: {{ \"filename\": {}, \"max_memory\": 64{sep}{extra} }}",
        js(name),
        js(file.to_str().unwrap())
    )
}

/// Write `dir/config.json` with `entries` and start a server on it.
fn serve(dir: &Path, entries: &[String]) -> Server {
    let cfg = dir.join("config.json");
    std::fs::write(&cfg, format!("{{\n{}\n}}\n", entries.join(",\n"))).unwrap();
    Server::start(dir, &[&cfg], &[])
}

/// GET that must fail with a 500 whose text contains every one of `needles`.
fn fails(s: &Server, path: &str, needles: &[&str]) -> String {
    let r = s.get(path);
    let t = r.text();
    assert_eq!(r.status, 500, "GET {path}: {t}");
    for n in needles {
        assert!(t.contains(n), "GET {path}: no {n:?} in {t:?}");
    }
    t
}

// ------------------------------------------------------------------------------------------
// The seeds' programs under wrk: exact counts
// ------------------------------------------------------------------------------------------

/// Each wrk thread stops itself right after a response once its deadline (args[1] seconds)
/// has passed, so no request is in flight when wrk ends and its completed count is exactly
/// what the server handled. `done` reports the counts and whether every thread stopped so.
const WRK_SCRIPT: &str = r#"
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  deadline = os.time() + tonumber(args[1])
  stopped = 0
end
function response(status, headers, body)
  if stopped == 0 and os.time() >= deadline then
    stopped = 1
    wrk.thread:stop()
  end
end
function done(summary, latency, requests)
  local n = 0
  for _, t in ipairs(threads) do
    n = n + t:get("stopped")
  end
  local e = summary.errors
  io.write(string.format("edgevm-wrk: stopped=%d threads=%d requests=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    n, #threads, summary.requests, e.connect, e.read, e.write, e.status, e.timeout))
end
"#;

/// Run wrk with `threads` threads and connections against `url` for about `secs` seconds of
/// load; the number of requests it completed. Fails unless every thread stopped itself after
/// a response (nothing in flight), no socket error or timeout happened and every response
/// was a 2xx/3xx (the program answers only 200 or 500, so: every response was a 200).
fn wrk_exact(dir: &Path, url: &str, threads: u32, secs: u32) -> u64 {
    let script = dir.join("exact.lua");
    std::fs::write(&script, WRK_SCRIPT).unwrap();
    let out = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{threads}"))
        .arg(format!("-d{}s", secs + 3))
        .args(["--timeout", "10s", "-s"])
        .arg(&script)
        .arg(url)
        .arg("--")
        .arg(secs.to_string())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run wrk ({e}): install it with scripts/deps.sh (apt-get install wrk)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "wrk failed:\n{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("edgevm-wrk: "))
        .unwrap_or_else(|| panic!("no summary from the wrk script:\n{text}"));
    let field = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {line:?}"))
    };
    assert_eq!(
        (field("stopped"), field("threads")),
        (u64::from(threads), u64::from(threads)),
        "a wrk thread did not stop right after a response: the count would not be exact\n{text}"
    );
    for k in ["connect", "read", "write", "status", "timeout"] {
        assert_eq!(
            field(k),
            0,
            "wrk saw {k} errors: the count is not meaningful\n{text}"
        );
    }
    assert!(!text.contains("Non-2xx"), "{text}");
    let n = field("requests");
    assert!(n > 0, "{text}");
    eprintln!("{url}: {line}");
    n
}

#[test]
fn seed_storage_counter_counts_every_request_exactly_under_wrk() {
    // The seed's program (guest/examples/counter.c, verbatim) with the seed's JSON.
    let dir = scratch("storage-wrk-counter");
    let bin = copy_guest(&dir, "example_counter", "compute_storage_test");
    let s = serve(
        &dir,
        &[
            "\"compute\": {}".to_string(),
            format!(
                "\"storage_test\": {{ \"group\": \"compute\", \"filename\": {}, \"storage\": true }}",
                js(bin.to_str().unwrap())
            ),
        ],
    );
    let r = s.get("/storage_test");
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "Hello Compute World!\n")
    );
    assert_eq!(r.header("x-counter"), Some("1"));
    let n = wrk_exact(
        &dir,
        &format!("http://127.0.0.1:{}/storage_test", s.port),
        8,
        3,
    );
    // None lost, none doubled: the next request is number n + 2.
    let r = s.get("/storage_test");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-counter"),
        Some((n + 2).to_string().as_str()),
        "{n} requests by wrk"
    );
    assert_eq!(s.stat("storage_test", "status_2xx"), (n + 2) as f64);
    assert!(s.log().contains(">>> [storage_test] Hello Storage World!"));
    s.stop();
}

#[test]
fn seed_shared_memory_counter_counts_every_request_exactly_under_wrk() {
    // The seed's program (guest/examples/scounter.c, verbatim): 16 connections over 4 request
    // VMs that share the counter.
    let dir = scratch("storage-wrk-scounter");
    let bin = copy_guest(&dir, "example_scounter", "compute_counter");
    let s = serve(
        &dir,
        &[
            "\"compute\": {}".to_string(),
            format!(
                "\"scounter\": {{ \"group\": \"compute\", \"filename\": {}, \"shared_memory\": 2, \"concurrency\": 4 }}",
                js(bin.to_str().unwrap())
            ),
        ],
    );
    assert_eq!(s.ok("/scounter"), "Hello 0 World!\n");
    let n = wrk_exact(
        &dir,
        &format!("http://127.0.0.1:{}/scounter", s.port),
        16,
        3,
    );
    assert_eq!(
        s.ok("/scounter"),
        format!("Hello {} World!\n", n + 1),
        "{n} requests by wrk"
    );
    assert_eq!(s.stat("scounter", "status_2xx"), (n + 2) as f64);
    s.stop();
}

// ------------------------------------------------------------------------------------------
// storage_call / storage_callv
// ------------------------------------------------------------------------------------------

fn storage_api_server(name: &str) -> (PathBuf, Server) {
    let dir = scratch(name);
    let bin = copy_guest(&dir, "storage_api", "storage_api");
    let s = serve(
        &dir,
        &[program(
            "st",
            &bin,
            "\"storage\": true, \"max_storage_time\": 1.0, \"max_request_time\": 4.0, \"concurrency\": 2",
        )],
    );
    (dir, s)
}

#[test]
fn storage_calls_copy_buffers_and_results_as_the_reference() {
    let (_dir, s) = storage_api_server("storage-calls");
    // Booted from the same program: KVM_TYPE, IS_STORAGE(), sys_is_storage(); STORAGE_ALLOW
    // is refused in the main VM (-1) and accepted in storage (0). Both enter handlers with
    // the default MXCSR (SIMD exceptions masked).
    assert_eq!(
        s.ok("/st/info"),
        "req type=request is_storage=0 sys=0 allow=-1 mxcsr=0x1f80 marker=storage-marker-A \
         | st type=storage is_storage=1 sys=1 allow=0 mxcsr=0x1f80 marker=storage-marker-A"
    );
    let concat = |n: usize| -> String {
        (0..n)
            .map(|i| char::from(b'A' + (i % 26) as u8).to_string().repeat(i + 1))
            .collect()
    };
    // Several buffers, up to 64, copied in; the result copied back.
    assert_eq!(s.ok("/st/vec?n=1"), "r=1 data=A");
    assert_eq!(s.ok("/st/vec?n=8"), format!("r=36 data={}", concat(8)));
    assert_eq!(s.ok("/st/vec?n=64"), format!("r=2080 data={}", concat(64)));
    assert_eq!(s.ok("/st/vec?n=0"), "r=0");
    assert_eq!(s.ok("/st/vec?n=65"), "r=-1", "more than 64 buffers");
    // Truncated to the caller's buffer; a NULL dst gets storage's length as is.
    assert_eq!(
        s.ok("/st/vec?n=64&dst=10"),
        format!("r=10 data={}", &concat(64)[..10])
    );
    assert_eq!(s.ok("/st/vec?n=64&dst=0"), "r=2080");
    // The function's `res` argument is the caller's buffer size.
    assert_eq!(s.ok("/st/res?dst=77"), "r=6 data=res=77");
    // storage_return(NULL, 42): the length, capped to dstlen.
    assert_eq!(s.ok("/st/retnull?dst=0"), "r=42");
    assert_eq!(s.ok("/st/retnull?dst=10"), "r=10");
    assert_eq!(s.ok("/st/retnull?dst=100"), "r=42");
    assert_eq!(s.ok("/st/nothing"), "r=0");
    // Returning without storage_return is an error: -1.
    assert_eq!(s.ok("/st/noreturn"), "r=-1");
    // storage_noreturn: the function is never resumed; storage_return: it is, to clean up.
    assert_eq!(s.ok("/st/noresume"), "r=3 data=abc");
    assert_eq!(s.ok("/st/cleanup"), "r=1 data=x");
    assert_eq!(
        s.ok("/st/counters"),
        "r=35 data=count=0 cleanups=1 after_noreturn=0"
    );
    // A call from storage itself is refused (-1); STORAGE_ALLOW from a request too.
    assert_eq!(s.ok("/st/recurse"), "r=8 data=inner=-1");
    assert_eq!(s.ok("/st/allow"), "r=-1");
    s.stop();
}

#[test]
fn large_storage_results_are_copied_and_truncated() {
    let (_dir, s) = storage_api_server("storage-big");
    let pattern = |n: usize| -> Vec<u8> { (0..n).map(|i| (i * 7 + 3) as u8).collect() };
    let mb = 1 << 20;
    let r = s.get(&format!("/st/big?size={mb}&dst={mb}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-r"), Some("1048576"));
    assert!(r.body == pattern(mb), "1 MiB result differs");
    let r = s.get(&format!("/st/big?size={mb}&dst=1000"));
    assert_eq!(r.header("x-r"), Some("1000"));
    assert!(r.body == pattern(1000));
    let r = s.get(&format!("/st/big?size={mb}&dst=0"));
    assert_eq!(r.header("x-r"), Some("1048576"));
    assert!(r.body.is_empty());
    // 3 MiB into a 4 MiB buffer.
    let r = s.get(&format!("/st/big?size={}&dst={}", 3 * mb, 4 * mb));
    assert_eq!(r.header("x-r"), Some("3145728"));
    assert!(r.body == pattern(3 * mb), "3 MiB result differs");
    s.stop();
}

#[test]
fn allow_list_violations_crashes_and_timeouts_fail_only_that_request() {
    let (_dir, s) = storage_api_server("storage-failures");
    assert_eq!(s.ok("/st/count"), "r=8 count=1");
    // Not in the STORAGE_ALLOW list: refused, the function never runs.
    fails(
        &s,
        "/st/notallowed",
        &[
            "storage call failed",
            "'st_forbidden'",
            "not allowed",
            "STORAGE_ALLOW",
        ],
    );
    // A crash inside storage fails that request with a clear error...
    fails(
        &s,
        "/st/crash",
        &[
            "storage call failed",
            "'st_crash'",
            "page fault",
            "writing address 0x8",
        ],
    );
    // ...and storage keeps its state and serves the next call.
    assert_eq!(s.ok("/st/count"), "r=8 count=2");
    // max_storage_time (1 s) stops a call that runs too long.
    let t = Instant::now();
    fails(
        &s,
        "/st/hang",
        &["'st_hang'", "max_storage_time", "timed out"],
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(s.ok("/st/count"), "r=8 count=3");
    fails(&s, "/st/exit", &["'st_exit'", "exited (status 3)"]);
    assert_eq!(s.ok("/st/count"), "r=8 count=4");
    // Only the storage call's time counts against max_storage_time: a request that runs 1.5 s
    // before calling storage is fine (max_request_time is 4 s), as is a 0.5 s storage call.
    assert_eq!(s.ok("/st/reqspin?ms=1500"), "r=8 count=5");
    assert_eq!(s.ok("/st/spin?ms=500"), "r=4 data=spun");
    assert_eq!(
        s.ok("/st/counters"),
        "r=35 data=count=5 cleanups=0 after_noreturn=0"
    );
    assert_eq!(s.stat("st", "status_5xx"), 4.0);
    s.stop();
}

#[test]
fn storage_calls_run_one_at_a_time_in_arrival_order() {
    let dir = scratch("storage-order");
    let bin = copy_guest(&dir, "storage_api", "storage_api");
    let s = serve(
        &dir,
        &[program(
            "ord",
            &bin,
            "\"storage\": true, \"max_storage_time\": 5.0, \"concurrency\": 4",
        )],
    );
    assert_eq!(s.ok("/ord/order?id=100"), "r=3 data=100");
    // Call 0 holds storage for 2 s; calls 1, 2, 3 arrive 400 ms apart while it does.
    let port = s.port;
    let answers: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4u64)
            .map(|i| {
                sc.spawn(move || {
                    std::thread::sleep(Duration::from_millis(400 * i));
                    let ms = if i == 0 { 2000 } else { 0 };
                    Conn::new(port)
                        .send("GET", &format!("/ord/order?id={i}&ms={ms}"), &[], b"")
                        .text()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(answers[0], "r=5 data=100,0");
    assert_eq!(answers[1], "r=7 data=100,0,1", "{answers:?}");
    assert_eq!(answers[2], "r=9 data=100,0,1,2", "{answers:?}");
    assert_eq!(answers[3], "r=11 data=100,0,1,2,3", "{answers:?}");
    assert_eq!(s.ok("/ord/order?id=9"), "r=13 data=100,0,1,2,3,9");
    s.stop();
}

#[test]
fn storage_boots_from_the_storage_program_of_an_archive() {
    // An archive with a request program and a `*storage` entry: the storage VM runs the
    // storage entry. Both are storage_api with one difference (the marker string), so
    // functions are at the same addresses in both.
    let dir = scratch("storage-archive");
    let request = std::fs::read(guest("storage_api")).unwrap();
    let at = request
        .windows(16)
        .position(|w| w == b"storage-marker-A")
        .expect("marker in storage_api");
    let mut storage = request.clone();
    storage[at + 15] = b'B';
    std::fs::create_dir_all(dir.join("c")).unwrap();
    std::fs::write(dir.join("c/prog"), &request).unwrap();
    std::fs::write(dir.join("c/prog_storage"), &storage).unwrap();
    let st = Command::new("tar")
        .current_dir(&dir)
        .args(["-cf", "prog.tar", "c/prog", "c/prog_storage"])
        .status()
        .unwrap();
    assert!(st.success());
    let s = serve(
        &dir,
        &[format!(
            "\"arc\": {{ \"uri\": {}, \"filename\": {}, \"storage\": true, \"max_memory\": 64 }}",
            js(format!("file://{}", dir.join("prog.tar").display())),
            js(dir.join("arc").to_str().unwrap())
        )],
    );
    assert_eq!(
        s.ok("/arc/info"),
        "req type=request is_storage=0 sys=0 allow=-1 mxcsr=0x1f80 marker=storage-marker-A \
         | st type=storage is_storage=1 sys=1 allow=0 mxcsr=0x1f80 marker=storage-marker-B"
    );
    assert_eq!(s.ok("/arc/count"), "r=8 count=1");
    let log = s.log();
    assert!(
        log.contains("Found 'c/prog_storage'") && log.contains("used as storage program"),
        "{log}"
    );
    // Written to <filename>_storage for the next start.
    assert_eq!(std::fs::read(dir.join("arc_storage")).unwrap(), storage);
    s.stop();
}

// ------------------------------------------------------------------------------------------
// The state file
// ------------------------------------------------------------------------------------------

/// What request VMs get for every way of writing the state file.
const READ_ONLY: &str = "fopen_w=EROFS fopen_a=EROFS fopen_rplus=EROFS trunc=EROFS creat=EROFS \
     held_write=-1:EBADF held_trunc=-1:EINVAL held_fputs_fflush=-1:EBADF access_w=-1:EROFS";

/// Other paths, from requests and from storage (`..` of `/` is `/`, as on Linux).
const OTHERS: &str =
    "../state=opened state.tmp=ENOENT /etc/passwd=ENOENT /proc/self/exe=ENOENT /tmp=ENOENT";

/// Files in `dir` besides the server's logs and config.
fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("server-") && n != "config.json")
        .collect();
    v.sort();
    v
}

#[test]
fn the_state_file_is_written_by_storage_read_by_requests_and_survives_a_restart() {
    let dir = scratch("storage-state");
    let bin = copy_guest(&dir, "state_file", "sf");
    let musl = copy_guest(&dir, "state_file_musl", "sfm");
    let entries = [
        program("sf", &bin, "\"storage\": true"),
        program("sfm", &musl, "\"storage\": true"),
    ];
    let s = serve(&dir, &entries);
    let host = dir.join("sf.state");
    // No state yet: both VMs saw ENOENT at boot; the main VM then created it (empty).
    assert_eq!(s.ok("/sf/boot"), "main=(ENOENT) storage=(ENOENT)");
    assert_eq!(s.ok("/sf/read"), "state=");
    // Request VMs cannot write it, in any way.
    assert_eq!(s.ok("/sf/trywrite"), READ_ONLY);
    assert_eq!(std::fs::read(&host).unwrap(), b"");
    // Storage writes it (stdio), requests read it (KVM_STATE and "/state").
    assert_eq!(s.ok("/sf/set?v=hello"), "r=5 data=hello");
    assert_eq!(std::fs::read(&host).unwrap(), b"hello");
    assert_eq!(s.ok("/sf/read"), "state=hello");
    assert_eq!(s.ok("/sf/readabs"), "state=hello");
    assert_eq!(s.ok("/sf/append?v=-world"), "r=11 data=hello-world");
    assert_eq!(s.ok("/sf/get"), "r=11 data=hello-world");
    // Raw calls: write, lseek, pwrite, pread, ftruncate, fstat, fsync (contents restored).
    let rw = "data=w=10 end=11 pwrite=2 pread=6:12AB56 trunc=0 fstat=0 size=4 reg=1 fsync=0 cur=11";
    assert_eq!(s.ok("/sf/rw"), format!("r=79 {rw}"));
    assert_eq!(std::fs::read(&host).unwrap(), b"hello-world");
    // Descriptors the main VM held at the freeze: read-only, each request starts at the
    // offset they had then (2).
    for _ in 0..2 {
        assert_eq!(
            s.ok("/sf/inherited"),
            "pread=11:hello-world offset=2 read=4:llo-"
        );
    }
    assert_eq!(s.ok("/sf/trywrite"), READ_ONLY);
    assert_eq!(std::fs::read(&host).unwrap(), b"hello-world");
    // What a request opens is closed by the reset: the same descriptor every time (3 and 4
    // are the inherited ones), never "too many open files".
    for _ in 0..40 {
        assert_eq!(s.ok("/sf/leak"), "fd=5");
    }
    // No other path reaches the host.
    assert_eq!(s.ok("/sf/other"), format!("request: {OTHERS}"));
    assert_eq!(s.ok("/sf/storage_other"), format!("r=85 data={OTHERS}"));
    // musl's stdio (open, readv, writev) works the same.
    assert_eq!(s.ok("/sfm/set?v=musl"), "r=4 data=musl");
    assert_eq!(s.ok("/sfm/append?v=+1"), "r=6 data=musl+1");
    assert_eq!(s.ok("/sfm/read"), "state=musl+1");
    assert_eq!(s.ok("/sfm/trywrite"), READ_ONLY);
    assert_eq!(std::fs::read(dir.join("sfm.state")).unwrap(), b"musl+1");
    assert_eq!(
        files_in(&dir),
        ["sf", "sf.state", "sfm", "sfm.state"],
        "nothing else was created"
    );
    s.stop();

    // A new server: the main VM and the storage VM read the state at boot.
    let s = serve(&dir, &entries);
    assert_eq!(s.ok("/sf/boot"), "main=hello-world storage=hello-world");
    assert_eq!(s.ok("/sf/read"), "state=hello-world");
    assert_eq!(s.ok("/sf/get"), "r=11 data=hello-world");
    assert_eq!(s.ok("/sfm/boot"), "main=musl+1 storage=musl+1");
    s.stop();
}

#[test]
fn the_main_vm_may_write_the_state_file_during_initialization() {
    let dir = scratch("storage-state-init");
    let bin = copy_guest(&dir, "state_file", "iw");
    let s = serve(
        &dir,
        &[program("iw", &bin, "\"main_arguments\": [\"init-write\"]")],
    );
    assert_eq!(s.ok("/iw/read"), "state=written at init");
    assert_eq!(s.ok("/iw/trywrite"), READ_ONLY);
    assert_eq!(
        std::fs::read(dir.join("iw.state")).unwrap(),
        b"written at init"
    );
    s.stop();
}

#[test]
fn the_state_file_from_rust_std_fs_with_edgevm_run() {
    // `edgevm run` maps the state file next to the program, as the server does.
    let dir = scratch("storage-state-rust");
    let bin = copy_guest(&dir, "state_file_rust", "rs");
    let run = || {
        let r = edgevm_run(&["run", bin.to_str().unwrap()]);
        assert_eq!(r.code(), Some(0), "{}", r.all());
        r.stdout
    };
    assert_eq!(
        run().trim(),
        ">>> [rs] before=(NotFound) wrote=from rust tail=rust+more len=14 file=true \
         other=Some(NotFound)"
    );
    assert_eq!(
        std::fs::read(dir.join("rs.state")).unwrap(),
        b"from rust+more"
    );
    assert!(run().contains("before=from rust+more wrote=from rust"));
}

// ------------------------------------------------------------------------------------------
// Live update
// ------------------------------------------------------------------------------------------

#[test]
fn live_update_hands_storage_state_over_and_keeps_the_state_file() {
    let dir = scratch("storage-live");
    let live = copy_guest(&dir, "live_state", "live");
    let sf = copy_guest(&dir, "state_file", "sf");
    let s = serve(
        &dir,
        &[
            program(
                "live",
                &live,
                "\"storage\": true, \"key\": \"k1\", \"concurrency\": 2",
            ),
            program("sf", &sf, "\"storage\": true, \"key\": \"k2\""),
        ],
    );
    for i in 1..=5 {
        assert_eq!(s.ok("/live/"), format!("count={i}"));
    }
    let update = |prog: &str, key: &str, bin: &Path| {
        let r = s.req(
            "POST",
            &format!("/_edgevm/update/{prog}"),
            &[("X-Edgevm-Key", key)],
            &std::fs::read(bin).unwrap(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    };
    update("live", "k1", &live);
    // on_live_update() of the old storage VM, on_live_restore() of the new one.
    assert_eq!(s.ok("/live/"), "count=6");
    update("live", "k1", &live);
    assert_eq!(s.ok("/live/"), "count=7");
    assert_eq!(s.stat("live", "live_updates"), 2.0);
    assert_eq!(s.stat("live", "live_update_transfer_bytes"), 16.0);
    // A new program whose on_live_restore() crashes is refused; the old one keeps serving
    // with its state.
    let mut bad = std::fs::read(&live).unwrap();
    let at = bad
        .windows(18)
        .position(|w| w == b"restore-mode-taken")
        .expect("marker in live_state");
    bad[at + 13..at + 18].copy_from_slice(b"crash");
    let r = s.req(
        "POST",
        "/_edgevm/update/live",
        &[("X-Edgevm-Key", "k1")],
        &bad,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("on_live_restore") && r.text().contains("page fault"),
        "{}",
        r.text()
    );
    assert_eq!(s.ok("/live/"), "count=8");
    assert_eq!(s.stat("live", "live_updates"), 2.0);
    // Without the callbacks, the state file is the state that carries over.
    assert_eq!(s.ok("/sf/set?v=kept"), "r=4 data=kept");
    update("sf", "k2", &sf);
    assert_eq!(s.ok("/sf/boot"), "main=kept storage=kept");
    s.stop();
}

// ------------------------------------------------------------------------------------------
// Shared memory
// ------------------------------------------------------------------------------------------

#[test]
fn shared_memory_is_at_the_top_and_shared_by_every_request_vm() {
    let dir = scratch("storage-shm");
    let bin = copy_guest(&dir, "shm_api", "shm");
    let s = serve(
        &dir,
        &[program(
            "shm",
            &bin,
            "\"shared_memory\": 4, \"address_space\": 128, \"concurrency\": 4",
        )],
    );
    // 4 MB at the top of the 128 MB address space, above the stack; SHM_ALLOC_TYPE (of a
    // type and of an expression), SHM_ALLOC and SHM_ALLOC_BYTES bump-allocate with alignment,
    // and an allocation larger than the area is NULL.
    assert_eq!(
        s.ok("/shm/info"),
        "ptr=0x7c00000 end=0x8000000 size=4194304 stack_below=1 long_at_start=1 int_off=8 \
         pair_off=16 bytes_off=32 too_big=null"
    );
    let set = s.ok("/shm/set?v=77");
    assert!(set.ends_with(" set=77"), "{set}");
    // Every request VM sees it (never reset), while its private memory is reset each time.
    let mut vms = std::collections::BTreeSet::new();
    for _round in 0..20 {
        let seen = s.get_concurrently(8, 5, "/shm/get");
        for t in &seen {
            let (vm, rest) = t
                .strip_prefix("vm=")
                .and_then(|t| t.split_once(' '))
                .unwrap_or_else(|| panic!("{t}"));
            assert_eq!(rest, "shared=77 private=1", "{t}");
            vms.insert(vm.to_string());
        }
        if vms.len() >= 2 {
            break;
        }
    }
    // Idle VMs are reused most-recently-used first (warm), so not all 4 need to answer;
    // two different VMs seeing the same value show the sharing.
    assert!(vms.len() >= 2, "only one request VM answered: {vms:?}");
    for i in 0..5 {
        assert_eq!(s.ok("/shm/inc"), format!("c={i}"));
    }
    s.stop();
}
