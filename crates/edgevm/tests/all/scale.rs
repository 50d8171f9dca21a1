//! A node with many programs, and a program under more load than it serves (issue 18; the
//! measurements are scripts/bench-many.sh and scripts/bench-overload.sh, recorded in
//! docs/BENCHMARKS.md). Counts, never times.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use crate::harness::*;

/// Programs of the many-programs test.
const PROGRAMS: usize = 1000;
/// Of them, how many get requests (the others stay configured and never boot).
const COLD: usize = 40;
/// Of those, how many are hot (20 more requests each).
const HOT: usize = 3;

/// Copies of the examples with different sizes (padding after the ELF): hello, echo and
/// headers, four sizes each. Returns (file, example) pairs.
fn copies(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    let mut out = Vec::new();
    for ex in ["hello", "echo", "headers"] {
        let elf = std::fs::read(guest(&format!("example_{ex}"))).unwrap();
        for size in 0..4usize {
            let mut bytes = elf.clone();
            bytes.resize(elf.len() + size * 100_000 + 4096, 0x5a);
            let path = dir.join(format!("{ex}-{size}"));
            std::fs::write(&path, bytes).unwrap();
            out.push((path, ex));
        }
    }
    out
}

/// What a GET to an example answers.
fn answer(example: &str) -> &'static str {
    match example {
        "hello" => "Hello World!\n",
        "echo" => "POST a body to /",
        _ => "",
    }
}

/// Open file descriptors of `pid` by kind: KVM VMs, KVM vCPUs, all.
fn fds(pid: u32) -> (usize, usize, usize) {
    let (mut vms, mut vcpus, mut all) = (0, 0, 0);
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        all += 1;
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        let t = target.to_string_lossy();
        if t == "anon_inode:kvm-vm" {
            vms += 1;
        } else if t.starts_with("anon_inode:kvm-vcpu") {
            vcpus += 1;
        }
    }
    (vms, vcpus, all)
}

/// `Pss` of `pid` in KiB (/proc/PID/smaps_rollup).
fn pss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_thousand_programs_on_one_server_hold_only_what_runs() {
    let dir = scratch("scale-many");
    let files = copies(&dir);
    let mut config = String::from(
        "{\n\"many\": { \"max_memory\": 16, \"max_request_memory\": 8, \"concurrency\": 1 }",
    );
    for i in 0..PROGRAMS {
        let (file, _) = &files[i % files.len()];
        config.push_str(&format!(
            ",\n\"p{i:04}\": {{ \"group\": \"many\", \"filename\": {} }}",
            js(file.to_str().unwrap())
        ));
    }
    config.push_str("\n}\n");
    let path = dir.join("config.json");
    std::fs::write(&path, config).unwrap();
    let s = Server::start(&dir, &[&path], &[]);
    let pid = s.pid();
    // The start-up line says what the programs need at most, against the limits.
    let log = s.wait_log("edgevm serving", Duration::from_secs(30));
    assert!(
        log.contains(&format!(
            "{PROGRAMS} program(s) need up to {PROGRAMS} KVM VM(s)"
        )),
        "{log}"
    );
    assert!(!log.contains("WARN"), "{log}");
    // Nothing booted: no VM, and the programs' binaries are not held in memory (all of them
    // together are over 400 MB).
    let total: u64 = (0..PROGRAMS)
        .map(|i| std::fs::metadata(&files[i % files.len()].0).unwrap().len())
        .sum();
    assert!(total > 400 << 20);
    assert_eq!(fds(pid).0, 0);
    let idle_pss = pss_kib(pid);
    assert!(
        idle_pss * 1024 < total / 8,
        "{idle_pss} KiB with no program booted"
    );

    // Cold programs spread over the names, each booted by its first request; then a few hot.
    let cold: Vec<usize> = (0..COLD).map(|k| k * PROGRAMS / COLD + k % 7).collect();
    let mut conn = s.connect();
    for &i in &cold {
        let r = conn.send("GET", &format!("/p{i:04}/"), &[], b"");
        assert_eq!(r.status, 200, "p{i:04}: {}", r.text());
        let want = answer(files[i % files.len()].1);
        assert!(r.text().starts_with(want), "p{i:04}: {}", r.text());
    }
    for &i in &cold[..HOT] {
        for _ in 0..20 {
            let r = conn.send("GET", &format!("/p{i:04}/"), &[], b"");
            assert_eq!(r.status, 200, "p{i:04}: {}", r.text());
        }
    }
    let stats = s.stats();
    let progs = stats["programs"].as_object().unwrap();
    assert_eq!(progs.len(), PROGRAMS);
    let ready: Vec<&String> = progs
        .iter()
        .filter(|(_, p)| p["status"] == "ready")
        .map(|(n, _)| n)
        .collect();
    assert_eq!(ready.len(), COLD, "{ready:?}");
    assert!(progs
        .iter()
        .all(|(_, p)| p["status"] == "ready" || p["status"] == "not started"));
    // One request VM per booted program, each with its one vCPU (the KVM VMs made ahead
    // during a boot are exactly the ones its forks take: pool::Shells); far below the
    // open-file limit it checked at start.
    let (vms, vcpus, all) = fds(pid);
    assert_eq!(vms, COLD, "KVM VMs");
    assert!(vcpus >= COLD && vcpus <= vms, "{vcpus} vCPUs for {vms} VMs");
    assert!(all < 4 * COLD + 100, "{all} open files");
    let log = s.stop();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_full_queue_is_answered_503_at_once_with_retry_after() {
    let dir = scratch("scale-queue");
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        format!(
            "{{ \"slow\": {{ \"filename\": {}, \"max_memory\": 64, \"concurrency\": 1, \"max_queue\": 1, \"start\": true }} }}\n",
            js(guest("serve_api").to_str().unwrap())
        ),
    )
    .unwrap();
    let s = Server::start(&dir, &[&cfg], &[]);
    s.wait_loaded(&["slow"]);
    assert_eq!(s.ok("/slow/ok"), "ok");
    let port = s.port;
    let (busy, queued, refused) = std::thread::scope(|sc| {
        // One request holds the only VM, one waits; a third finds the queue full.
        let busy = sc.spawn(move || Conn::new(port).send("GET", "/slow/sleep?ms=1500", &[], b""));
        std::thread::sleep(Duration::from_millis(300));
        let queued = sc.spawn(move || Conn::new(port).send("GET", "/slow/ok", &[], b""));
        std::thread::sleep(Duration::from_millis(300));
        let refused = Conn::new(port).send("GET", "/slow/ok", &[], b"");
        (busy.join().unwrap(), queued.join().unwrap(), refused)
    });
    assert_eq!(
        (refused.status, refused.header("retry-after")),
        (503, Some("1")),
        "{}",
        refused.text()
    );
    assert!(
        refused.text().contains("too many requests waiting"),
        "{}",
        refused.text()
    );
    assert_eq!((busy.status, busy.text().as_str()), (200, "slept 1500"));
    assert_eq!((queued.status, queued.text().as_str()), (200, "ok"));
    assert_eq!(s.stat("slow", "queue_full"), 1.0);
    assert_eq!(s.stat("slow", "queue_timeouts"), 0.0);
    // The server keeps serving, and says it refused requests once (not once per request).
    assert_eq!(s.ok("/slow/ok"), "ok");
    let log = s.stop();
    assert_eq!(log.matches("request refused").count(), 1, "{log}");
}

#[test]
fn too_low_limits_are_named_at_start_with_the_number_needed() {
    use std::os::unix::process::CommandExt;
    // 300 programs of 8 request VMs in a process allowed 512 open files: the server starts,
    // says which limit is too low and what it needs, and serves what fits.
    let dir = scratch("scale-limits");
    let hello = js(guest("example_hello").to_str().unwrap());
    let mut config = String::from(
        "{\n\"g\": { \"max_memory\": 16, \"max_request_memory\": 8, \"concurrency\": 8 }",
    );
    for i in 0..300 {
        config.push_str(&format!(
            ",\n\"p{i}\": {{ \"group\": \"g\", \"filename\": {hello} }}"
        ));
    }
    config.push_str("\n}\n");
    let path = dir.join("config.json");
    std::fs::write(&path, config).unwrap();
    let log_path = dir.join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let port = free_port();
    let mut cmd = edgevm();
    cmd.arg("serve")
        .arg("--config")
        .arg(&path)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--max-connections", "100"])
        .env("EDGEVM_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 512,
                rlim_max: 512,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let t0 = std::time::Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("edgevm serving") || t0.elapsed() > Duration::from_secs(30) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The line comes just before the listener binds: wait for it to accept.
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        && t0.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = request(port, "GET", "/p7/", &[], b"");
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("edgevm serving"), "{text}");
    let warning = text
        .lines()
        .find(|l| l.contains("the open-file limit 512 is below"))
        .unwrap_or_else(|| panic!("no open-file warning:\n{text}"));
    let needed: u64 = warning
        .split("at least ")
        .nth(1)
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{warning}"));
    assert!(needed >= 300 * 17, "{warning}");
    assert!(
        text.contains("300 program(s) need up to 2400 KVM VM(s)"),
        "{text}"
    );
    assert!(text.contains("max_connections 100 does not fit"), "{text}");
    // What fits still serves.
    assert_eq!(
        (first.status, first.text().as_str()),
        (200, "Hello World!\n"),
        "{text}"
    );
}

/// KVM VMs the server process holds now.
fn kvm_vms(s: &Server) -> usize {
    fds(s.pid()).0
}

/// Wait (at most 20 s) until `what` holds; false if it never did.
fn eventually(mut what: impl FnMut() -> bool) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        if what() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn idle_programs_give_their_request_vms_back_and_get_them_again() {
    let api = js(guest("serve_api").to_str().unwrap());
    let s = Server::with_config(
        "scale-idle",
        &format!(
            "{{ \"idle\": {{ \"filename\": {api}, \"max_memory\": 64, \"concurrency\": 3, \"free_idle_vms_after\": 0.2, \"start\": true }},\n\
             \"keep\": {{ \"filename\": {api}, \"max_memory\": 64, \"concurrency\": 2, \"start\": true }} }}\n"
        ),
    );
    s.wait_loaded(&["idle", "keep"]);
    assert_eq!(s.ok("/idle/ok"), "ok");
    assert_eq!(s.ok("/keep/ok"), "ok");
    // Idle: its three request VMs go (the frozen image stays); the other program keeps its two.
    // (On a busy machine the boot's last forks may come after the first VM was freed, and the
    // first request may refill one that is then freed again: at least three are freed.)
    assert!(
        eventually(
            || s.stat("idle", "resident_vms") == 0.0 && s.stat("idle", "idle_vms_freed") >= 3.0
        ),
        "{}",
        s.stats()
    );
    assert_eq!(s.stat("keep", "resident_vms"), 2.0);
    // The other program's two (and at most two made ahead for it and not used).
    let base = kvm_vms(&s);
    assert!((2..=4).contains(&base), "{base} KVM VMs");
    let metrics = s.get("/metrics").text();
    assert!(
        metrics.contains("edgevm_resident_vms{program=\"idle\"} 0"),
        "{metrics}"
    );
    // The next requests fork them back, each with an index of its own below concurrency.
    let answers = s.get_concurrently(3, 4, "/idle/vcpu");
    let mut ids: Vec<&str> = answers.iter().map(|a| a.as_str()).collect();
    ids.sort();
    ids.dedup();
    for id in &ids {
        assert!(
            ["reqid=0", "reqid=1", "reqid=2"]
                .iter()
                .any(|r| id.ends_with(r)),
            "{answers:?}"
        );
    }
    let resident = s.stat("idle", "resident_vms");
    assert!((1.0..=3.0).contains(&resident), "{}", s.stats());
    assert!(s.stat("idle", "idle_vms_refilled") >= 1.0);
    // Requests racing the watcher (a pause around the idle time between them) are all served,
    // and never more VMs than `concurrency` exist.
    let port = s.port;
    std::thread::scope(|sc| {
        for t in 0..3u64 {
            sc.spawn(move || {
                let mut rng = Rng(t + 18);
                for _ in 0..12 {
                    let r = request(port, "GET", "/idle/vcpu", &[], b"");
                    assert_eq!(r.status, 200, "{}", r.text());
                    std::thread::sleep(Duration::from_millis(rng.below(400) as u64));
                }
            });
        }
    });
    assert!(s.stat("idle", "resident_vms") <= 3.0, "{}", s.stats());
    assert!(kvm_vms(&s) <= base + 3);
    assert!(eventually(|| s.stat("idle", "resident_vms") == 0.0));
    assert_eq!(kvm_vms(&s), base);
    assert_eq!(s.ok("/idle/ok"), "ok");
    let log = s.stop();
    assert!(!log.contains("panicked"), "{log}");
}
