//! `mmap_backed_files` end to end (issue 15, item 3): read-only file mappings show one sealed
//! copy of the file shared by every VM (guest/tests/mapped_files.c): the frozen program's
//! mappings in every request, a request's own mappings gone at its reset, writes refused or
//! copied privately, mprotect, past the end of the file, the file truncated and rewritten
//! under the mappings and a symlink swapped (the mappings keep what they showed, the server
//! serves on), more mappings than a VM may share (private copies beyond), and with the key off.

use std::os::unix::fs::symlink;

use crate::common::*;
use crate::harness::*;

/// The distinct sealed copies the server maps, and its mappings of them.
fn sealed_copies(pid: u32) -> (usize, usize) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let lines: Vec<&str> = maps
        .lines()
        .filter(|l| l.contains("edgevm-mapped-file"))
        .collect();
    let mut inodes: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect();
    inodes.sort_unstable();
    inodes.dedup();
    (inodes.len(), lines.len())
}

#[test]
fn read_only_file_mappings_share_a_sealed_copy_and_survive_hostile_requests_and_file_changes() {
    let dir = scratch("mapped-files");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let big: Vec<u8> = (0..(3 << 20) + 100).map(|i| (i % 251) as u8).collect();
    let big_sum: u64 = big.iter().map(|&b| u64::from(b)).sum();
    std::fs::write(data.join("big.bin"), &big).unwrap();
    std::fs::write(data.join("small.txt"), "small file").unwrap();
    std::fs::write(data.join("a.txt"), "AAAAAAAA").unwrap();
    std::fs::write(data.join("b.txt"), "BBBBBBBB").unwrap();
    // mov $42, %eax; ret
    std::fs::write(data.join("code.bin"), [0xb8, 42, 0, 0, 0, 0xc3]).unwrap();
    symlink("a.txt", data.join("link")).unwrap();
    let prog = |name: &str, backed: bool| {
        format!(
            r#"{}: {{ "filename": {}, "concurrency": 2, "mmap_backed_files": {backed},
                "allowed_paths": [{{"virtual": "/data", "real": {}}}] }}"#,
            js(name),
            js(guest("mapped_files").to_str().unwrap()),
            js(data.to_str().unwrap())
        )
    };
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        format!("{{ {}, {} }}", prog("m", true), prog("copy", false)),
    )
    .unwrap();
    let s = Server::start(&dir, &[&cfg], &[]);
    let frozen = format!("sum={big_sum} small=small fi patched=MAINl fi");
    for p in ["m", "copy"] {
        let ok = |action: &str| s.ok(&format!("/{p}/{action}"));
        assert_eq!(ok("frozen"), frozen, "{p}");
        // A request's own mapping; past the end of the file: zeros, no fault.
        assert_eq!(ok("map?p=/data/a.txt"), "head=AAAAAAAA last=65", "{p}");
        assert_eq!(ok("map?p=/data/a.txt&len=12288"), "head=AAAAAAAA last=0");
        let r = ok("map?p=/data/big.bin&off=1048576&len=4096");
        assert!(
            r.ends_with(&format!(" last={}", (1_048_576 + 4095) % 251)),
            "{p}: {r}"
        );
        // Writes: a fault (caught), EFAULT for the host, a private writable copy.
        assert_eq!(ok("write"), "segv=1 read=EFAULT priv=PRIVl fi", "{p}");
        // mprotect writable: this VM's own copy of the page, gone at the reset.
        assert_eq!(ok("mprotect"), "r=0 now=XY", "{p}");
        assert_eq!(ok("exec?p=/data/code.bin"), "42", "{p}");
        if p == "m" {
            // (A private copy of a file reads as zero after MADV_DONTNEED: anonymous memory.)
            assert_eq!(ok("dontneed"), "r=0 written=1 madvise=0 now=85");
        }
        assert_eq!(ok("unmap"), "zero=1", "{p}");
        for _ in 0..3 {
            assert_eq!(ok("frozen"), frozen, "{p}: the reset restored the mappings");
        }
    }
    let (copies, mappings) = sealed_copies(s.pid());
    assert!(copies >= 2, "big and small are sealed copies: {copies}");
    assert!(
        mappings > copies,
        "VMs share the copies: {mappings} mappings of {copies}"
    );
    // More mappings than a VM may share: private copies beyond, with a log line (500: each
    // mapping costs ~3 ms of system calls and page-table changes here, shared or copied).
    assert_eq!(
        s.ok("/m/many?p=/data/a.txt&n=500"),
        "ok=500 failed=0 same=1"
    );
    s.wait_log("files mapped already", std::time::Duration::from_secs(10));
    assert_eq!(s.ok("/m/frozen"), frozen);
    // The files change under the mappings: what was mapped stays, new mappings see the change.
    std::fs::write(data.join("small.txt"), "").unwrap();
    std::fs::write(data.join("big.bin"), b"tiny").unwrap();
    for p in ["m", "copy"] {
        assert_eq!(
            s.ok(&format!("/{p}/frozen")),
            frozen,
            "{p} after truncation"
        );
        assert_eq!(
            s.ok(&format!("/{p}/map?p=/data/big.bin&len=4")),
            "head=tiny last=121"
        );
    }
    std::fs::write(data.join("small.txt"), "rewritten!").unwrap();
    assert_eq!(s.ok("/m/map?p=/data/small.txt"), "head=rewritte last=33");
    assert_eq!(s.ok("/m/frozen"), frozen);
    // A symlink swapped between two requests: each mapping shows the file named then.
    assert_eq!(s.ok("/m/map?p=/data/link"), "head=AAAAAAAA last=65");
    symlink("b.txt", data.join("link.new")).unwrap();
    std::fs::rename(data.join("link.new"), data.join("link")).unwrap();
    assert_eq!(s.ok("/m/map?p=/data/link"), "head=BBBBBBBB last=66");
    assert_eq!(s.ok("/m/frozen"), frozen);
    s.stop();
}

/// The server's (RSS, PSS) in KiB (smaps_rollup).
fn rss_pss(pid: u32) -> (u64, u64) {
    let t = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let field = |name: &str| {
        t.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

/// The figures of docs/BENCHMARKS.md "Shared file mappings" (not a test: run with
/// `cargo test -p edgevm --test all -- --ignored --nocapture mapped_files::measure`): four
/// programs mapping the same 64 MB file in main(), with and without `mmap_backed_files`.
#[test]
#[ignore]
fn measure_a_64_mb_file_mapped_by_four_programs() {
    let dir = scratch("mapped-files-measure");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let big: Vec<u8> = (0..64 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(data.join("big.bin"), &big).unwrap();
    std::fs::write(data.join("small.txt"), "small file").unwrap();
    for backed in [true, false, true, false] {
        let progs: Vec<String> = (0..4)
            .map(|i| {
                format!(
                    r#""p{i}": {{ "filename": {}, "concurrency": 1, "max_memory": 512,
                        "mmap_backed_files": {backed},
                        "allowed_paths": [{{"virtual": "/data", "real": {}}}] }}"#,
                    js(guest("mapped_files").to_str().unwrap()),
                    js(data.to_str().unwrap())
                )
            })
            .collect();
        let cfg = dir.join("config.json");
        std::fs::write(&cfg, format!("{{ {} }}", progs.join(","))).unwrap();
        let s = Server::start(&dir, &[&cfg], &[]);
        let t = std::time::Instant::now();
        s.ok("/p0/frozen");
        let first = t.elapsed();
        for i in 1..4 {
            s.ok(&format!("/p{i}/frozen"));
        }
        let (rss, pss) = rss_pss(s.pid());
        let n = 20;
        let t = std::time::Instant::now();
        for _ in 0..n {
            s.ok("/p0/frozen");
        }
        let frozen = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            s.ok("/p0/map?p=/data/big.bin");
        }
        let map = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            s.ok("/p0/unmap");
        }
        let small = t.elapsed() / n;
        let (rss2, pss2) = rss_pss(s.pid());
        println!(
            "mmap_backed_files={backed}: first request (boot, 64 MB mapped in main, fork) {:.1} ms; \
             after one request to each of 4 programs RSS {} MiB PSS {} MiB; per request: \
             reading all 64 MB of the frozen mapping {:.2} ms, mapping the 64 MB file {:.2} ms, \
             a small request {:.2} ms; after them RSS {} MiB PSS {} MiB",
            first.as_secs_f64() * 1e3,
            rss >> 10,
            pss >> 10,
            frozen.as_secs_f64() * 1e3,
            map.as_secs_f64() * 1e3,
            small.as_secs_f64() * 1e3,
            rss2 >> 10,
            pss2 >> 10,
        );
        s.stop();
    }
}

/// A program that maps files reads host files (`allowed_paths`): it is never snapshotted, and
/// says so (a snapshot's image would hold the bytes the boot mapped, docs/DESIGN.md).
#[test]
fn a_program_with_mapped_files_is_not_snapshotted_and_says_why() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("mapped-files-snapshot");
    let data = dir.join("data");
    let snap = dir.join("snap");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir(&snap).unwrap();
    std::fs::set_permissions(&snap, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(data.join("big.bin"), [7u8; 5000]).unwrap();
    std::fs::write(data.join("small.txt"), "small file").unwrap();
    let cfg = dir.join("config.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{ "m": {{ "filename": {}, "cold_start_file": {}, "start": true,
                "allowed_paths": [{{"virtual": "/data", "real": {}}}] }} }}"#,
            js(guest("mapped_files").to_str().unwrap()),
            js(snap.join("m.snapshot").to_str().unwrap()),
            js(data.to_str().unwrap())
        ),
    )
    .unwrap();
    let s = Server::start(&dir, &[&cfg], &[]);
    s.wait_loaded(&["m"]);
    assert_eq!(
        s.ok("/m/frozen"),
        "sum=35000 small=small fi patched=MAINl fi"
    );
    s.wait_log(
        "not snapshotted: main() may read host files",
        std::time::Duration::from_secs(10),
    );
    assert!(!snap.join("m.snapshot").exists());
    s.stop();
}
