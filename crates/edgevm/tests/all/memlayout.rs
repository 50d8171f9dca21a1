//! The memory layout keys (issue 15, item 6): `blackout_area` (never mapped, touched or passed
//! to the host), `relocate_fixed_mmap` (MAP_FIXED outside the mmap area relocated or refused,
//! hints honoured), `stdout` (where a served program's output goes) and the huge-page keys
//! (the host asked for transparent huge pages over guest memory).
//! Guest: guest/tests/memlayout.c.

use std::io::Read;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgevm_runtime::request_vm::{RequestSettings, RequestVm};
use edgevm_runtime::vm::{BootOutcome, ForkedVm, HugePages, MainVm, VmOptions};

use crate::common::{edgevm, guest, require_kvm, scratch, time_scale};
use crate::harness::{free_port, js, request};

/// Where the tests black out: 256 MiB, inside the program's mmap area (max_memory 512 MB).
const DARK: u64 = 0x1000_0000;

fn options(f: impl FnOnce(&mut VmOptions)) -> VmOptions {
    require_kvm();
    let path = guest("memlayout");
    let bytes = std::fs::read(&path).expect("read the memlayout guest");
    let mut opts = VmOptions::new("memlayout", path, bytes);
    opts.raw_output = true;
    opts.max_memory = 512 << 20;
    f(&mut opts);
    opts
}

fn request_vm(f: impl FnOnce(&mut VmOptions)) -> RequestVm {
    let (vm, report) = MainVm::boot(options(f)).expect("boot memlayout");
    assert_eq!(report.outcome, BootOutcome::Ready, "{report:?}");
    let frozen = Arc::new(vm.freeze().expect("freeze"));
    let settings = RequestSettings {
        max_request_memory: 512 << 20,
        ..Default::default()
    };
    RequestVm::new(frozen, settings, None).expect("request VM")
}

fn get(vm: &mut RequestVm, mode: &str, addr: u64) -> Result<String, String> {
    crate::common::vm_get(vm, format!("/?m={mode}&a={addr:x}"))
}

#[test]
fn a_blackout_area_is_never_mapped_touched_or_passed_to_the_host() {
    // Without the key, the same range is ordinary memory (the test sees the key's effect).
    let mut plain = request_vm(|_| {});
    let r = get(&mut plain, "blackout", DARK).unwrap();
    assert!(r.starts_with("fixed=0 write=0 read=0 "), "{r}");
    assert!(get(&mut plain, "touch", DARK).is_ok());

    let mut vm = request_vm(|o| o.blackout_area = vec![(DARK, DARK + (2 << 20))]);
    // MAP_FIXED there: ENOMEM; the host refuses it as a buffer (EFAULT) both ways; 64 fresh
    // 4 MiB mappings (256 MiB, past the range) never land in it.
    for _ in 0..2 {
        assert_eq!(
            get(&mut vm, "blackout", DARK).as_deref(),
            Ok("fixed=12 write=14 read=14 overlap=0")
        );
    }
    // Touching it is a CPU fault: the request fails, the VM serves on.
    for addr in [DARK, DARK + (2 << 20) - 1] {
        let e = get(&mut vm, "touch", addr).expect_err("touching the blackout area");
        assert!(
            e.contains(&format!("{:#x}", addr & !0xFFF)) || e.contains(&format!("{addr:#x}")),
            "{e}"
        );
    }
    // Just outside it is memory as usual.
    assert!(get(&mut vm, "touch", DARK + (2 << 20)).is_ok());
    assert!(get(&mut vm, "touch", DARK - 1).is_ok());
    assert_eq!(
        get(&mut vm, "blackout", DARK).as_deref(),
        Ok("fixed=12 write=14 read=14 overlap=0")
    );
}

#[test]
fn a_blackout_area_over_what_the_program_needs_is_refused_at_load() {
    let top = options(|_| {}).memory_size();
    for (range, what) in [
        ((0x20000, 0x40000), "system area"),
        ((0x400000, 0x600000), "program's segments"),
        ((top - (2 << 20), top), "stack"),
        ((top - (64 << 20), top + (64 << 20)), "stack"),
    ] {
        let e = match MainVm::boot(options(|o| o.blackout_area = vec![range])) {
            Ok(_) => panic!("{range:x?} accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("blackout_area") && e.contains(what),
            "{range:x?}: {e}"
        );
    }
}

#[test]
fn relocate_fixed_mmap_places_fixed_mappings_elsewhere_or_refuses_them() {
    let far = 0x7F00_0000_0000u64;
    // Default (true): a MAP_FIXED mapping outside the mmap area gets memory elsewhere, and an
    // address hint is not followed.
    let mut vm = request_vm(|_| {});
    assert_eq!(get(&mut vm, "fixed", far).as_deref(), Ok("relocated"));
    assert_eq!(get(&mut vm, "fixed", 0x1000).as_deref(), Ok("relocated"));
    assert_eq!(get(&mut vm, "hint", 0).as_deref(), Ok("moved"));
    // false: the mapping fails (ENOMEM) and a free hint is honoured.
    let mut vm = request_vm(|o| o.relocate_fixed_mmap = false);
    assert_eq!(get(&mut vm, "fixed", far).as_deref(), Ok("failed=12"));
    assert_eq!(get(&mut vm, "fixed", 0x1000).as_deref(), Ok("failed=12"));
    assert_eq!(get(&mut vm, "hint", 0).as_deref(), Ok("kept"));
    // Inside the area a fixed mapping is where it was asked, either way.
    assert_eq!(get(&mut vm, "fixed", DARK).as_deref(), Ok("kept"));
}

/// The VmFlags of the host mapping starting at `addr` (from /proc/self/smaps).
fn vm_flags(addr: u64) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let head = format!("{addr:x}-");
    let mut inside = false;
    for line in smaps.lines() {
        if line.starts_with(&head) {
            inside = true;
        } else if inside && line.starts_with("VmFlags:") {
            return line.to_string();
        }
    }
    panic!("no mapping at {addr:#x}");
}

#[test]
fn huge_page_keys_ask_the_host_for_huge_pages() {
    let boot = |h: HugePages| {
        let (vm, report) = MainVm::boot(options(|o| o.huge_pages = h)).expect("boot");
        assert_eq!(report.outcome, BootOutcome::Ready, "{report:?}");
        let main = vm_flags(vm.machine.mem.host_addr());
        let frozen = vm.freeze().expect("freeze");
        let fork = ForkedVm::from_frozen(&frozen).expect("fork");
        (main, vm_flags(fork.machine.mem.host_addr()))
    };
    let (main, req) = boot(HugePages::default());
    assert!(
        !main.contains(" hg") && !req.contains(" hg"),
        "{main} / {req}"
    );
    let (main, req) = boot(HugePages {
        main: u64::MAX,
        request: 0,
    });
    assert!(
        main.contains(" hg") && !req.contains(" hg"),
        "{main} / {req}"
    );
    let (main, req) = boot(HugePages {
        main: 0,
        request: 16 << 20,
    });
    assert!(
        !main.contains(" hg") && req.contains(" hg"),
        "{main} / {req}"
    );
    // Requests run on it as usual.
    let mut vm = request_vm(|o| {
        o.huge_pages = HugePages {
            main: u64::MAX,
            request: u64::MAX,
        }
    });
    for _ in 0..3 {
        assert_eq!(get(&mut vm, "touch_big", 0).as_deref(), Ok("ok"));
    }
}

/// `edgevm serve` with the memlayout guest, `stdout` as given; (stdout, stderr) of the server
/// after one request.
fn serve_output(name: &str, stdout_key: &str) -> (String, String) {
    let dir = scratch(name);
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        format!(
            "{{ \"memlayout\": {{ \"filename\": {}, \"concurrency\": 1 {stdout_key} }} }}",
            js(guest("memlayout").to_str().unwrap())
        ),
    )
    .unwrap();
    let port = free_port();
    let mut child = edgevm()
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .expect("spawn edgevm serve");
    let t0 = Instant::now();
    let limit = Duration::from_secs(20).mul_f64(time_scale());
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let r = request(port, "GET", "/memlayout?m=print", &[], b"");
            if r.status == 200 {
                assert_eq!(r.text(), "ok");
                break;
            }
        }
        assert!(t0.elapsed() < limit, "the server did not answer");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stderr_of = || std::fs::read_to_string(dir.join("stderr")).unwrap();
    while !stderr_of().contains("request stderr") && t0.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child.wait().unwrap();
    (out, stderr_of())
}

#[test]
fn stdout_sends_a_served_programs_output_to_stdout_else_to_the_log() {
    let lines = [
        "memlayout: main stdout",
        "memlayout: main stderr",
        "memlayout: request stdout",
        "memlayout: request stderr",
    ];
    // Default: everything the program prints is in the log (stderr), nothing on stdout.
    let (out, err) = serve_output("memlayout-stdout-off", "");
    for l in lines {
        assert!(err.contains(&format!(">>> [memlayout] {l}")), "{l}:\n{err}");
        assert!(!out.contains(l), "{l} on stdout:\n{out}");
    }
    // "stdout": true: what it writes to fd 1 goes to stdout, fd 2 to stderr.
    let (out, err) = serve_output("memlayout-stdout-on", ", \"stdout\": true");
    for (i, l) in lines.iter().enumerate() {
        let (yes, no) = if i % 2 == 0 {
            (&out, &err)
        } else {
            (&err, &out)
        };
        assert!(yes.contains(&format!(">>> [memlayout] {l}")), "{l}:\n{yes}");
        assert!(!no.contains(l), "{l}:\n{no}");
    }
}

/// Go's heap address (the reference's compute.json remaps 256 MB there).
const GO_HEAP: u64 = 0xC0_0000_0000;

#[test]
fn a_remapping_is_memory_at_its_address_for_the_program_and_the_host() {
    let mut vm = request_vm(|o| {
        o.remappings = vec![(GO_HEAP, 8 << 20, false), (0x10_0000_0000, 2 << 20, false)];
        o.relocate_fixed_mmap = false;
        o.environment = vec![format!("REMAP={GO_HEAP:x}")];
    });
    // Written and read at both ends; a pipe round trip through it (the host reads and writes
    // it); a buffer straddling its end, the bytes just outside it and a size that overflows
    // are EFAULT; Go's reservation pattern gets the area's own address, zeroed.
    let all = "first=f last=l sys=0 straddle=14 below=14 above=14 huge=14 go=kept";
    for _ in 0..2 {
        assert_eq!(get_s(&mut vm, "remap", GO_HEAP, 8).as_deref(), Ok(all));
        assert_eq!(
            get_s(&mut vm, "remap", 0x10_0000_0000, 2).as_deref(),
            Ok(all)
        );
    }
    // What main() stored there is in the frozen image; a request's change is reset.
    for _ in 0..3 {
        assert_eq!(get(&mut vm, "remap_inc", GO_HEAP).as_deref(), Ok("v=4660"));
    }
    // Not executable (W^X): only an executable_remapping is.
    let e = get(&mut vm, "remap_exec", GO_HEAP).expect_err("code in a remapping ran");
    assert!(e.contains("not executable"), "{e}");
    assert_eq!(get(&mut vm, "remap_inc", GO_HEAP).as_deref(), Ok("v=4660"));
    // Without the key, the address is nothing: the request crashes there.
    let mut plain = request_vm(|_| {});
    assert!(get(&mut plain, "remap_inc", GO_HEAP).is_err());
}

/// A remapping beside shared memory: the shared area stays at the top of the address space,
/// the remapped area's memory below the request-body area, both work and are reset as before.
#[test]
fn a_remapping_with_shared_memory() {
    let mut vm = request_vm(|o| {
        o.remappings = vec![(GO_HEAP, 8 << 20, false)];
        o.relocate_fixed_mmap = false;
        o.shared_memory = 4 << 20;
        o.environment = vec![format!("REMAP={GO_HEAP:x}")];
    });
    let all = "first=f last=l sys=0 straddle=14 below=14 above=14 huge=14 go=kept";
    for _ in 0..2 {
        assert_eq!(get_s(&mut vm, "remap", GO_HEAP, 8).as_deref(), Ok(all));
        assert_eq!(get(&mut vm, "remap_inc", GO_HEAP).as_deref(), Ok("v=4660"));
    }
}

#[test]
fn an_executable_remapping_runs_code() {
    let mut vm = request_vm(|o| o.remappings = vec![(GO_HEAP, 2 << 20, true)]);
    for _ in 0..2 {
        assert_eq!(
            get(&mut vm, "remap_exec", GO_HEAP).as_deref(),
            Ok("exec=42")
        );
    }
}

#[test]
fn bad_remappings_are_refused_at_load() {
    let size = options(|_| {}).memory_size();
    for (r, why) in [
        ((GO_HEAP + 4096, 2 << 20), "2 MB boundary"),
        ((GO_HEAP, 3 << 20), "2 MB boundary"),
        ((size - (2 << 20), 2 << 20), "inside the address space"),
        ((0x7FFF_FFE0_0000, 4 << 20), "128 TiB"),
        ((GO_HEAP, 4 << 30), "raise max_memory"),
    ] {
        let e = match MainVm::boot(options(|o| o.remappings = vec![(r.0, r.1, false)])) {
            Ok(_) => panic!("{r:x?} accepted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("remapping") && e.contains(why), "{r:x?}: {e}");
    }
    let e = match MainVm::boot(options(|o| {
        o.remappings = vec![
            (GO_HEAP, 4 << 20, false),
            (GO_HEAP + (2 << 20), 2 << 20, true),
        ]
    })) {
        Ok(_) => panic!("overlap accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("overlaps another remapping"), "{e}");
}

fn get_s(vm: &mut RequestVm, mode: &str, addr: u64, mb: u64) -> Result<String, String> {
    crate::common::vm_get(vm, format!("/?m={mode}&a={addr:x}&s={mb:x}"))
}

/// The reference's published compute.json (varnish/tinykvm_examples, kept in
/// tests/all/data): `edgevm check` accepts every program (their files are fetched from
/// their `uri`), the Go program's remapping included; and the memory keys of the
/// reference's Deno configurations.
#[test]
fn check_accepts_the_reference_compute_json() {
    let file = crate::common::root().join("crates/edgevm/tests/all/data/reference-compute.json");
    let r = crate::common::edgevm_run(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    assert!(
        r.all().contains("27 program(s): 27 ok, 0 failed"),
        "{}",
        r.all()
    );
    assert!(
        r.all().contains("0xc000000000") || r.all().contains("0xC000000000"),
        "{}",
        r.all()
    );
    let dir = scratch("memlayout-check-deno");
    let deno = dir.join("deno.json");
    std::fs::write(
        &deno,
        format!(
            r#"{{ "deno": {{ "filename": {}, "executable_heap": true, "address_space": 66000,
                "max_memory": 3000, "hugepage_arena_size": 64, "request_hugepage_arena_size": 32,
                "ephemeral": true, "relocate_fixed_mmap": false, "stdout": true,
                "blackout_area": {{ "low": ["0x200000000", "0x1000000000"] }},
                "executable_remapping": {{ "jit": ["0x11000000000", 64] }} }} }}"#,
            js(guest("memlayout").to_str().unwrap())
        ),
    )
    .unwrap();
    let r = crate::common::edgevm_run(&["check", "--config", deno.to_str().unwrap()]);
    assert_eq!(r.code(), Some(0), "{}", r.all());
    assert!(r.all().contains("1 ok, 0 failed"), "{}", r.all());
}
