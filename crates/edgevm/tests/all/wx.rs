//! Page protections (issue 15, item 5): code read+execute, data, heap and stack
//! non-executable, read-only segments read-only, `mprotect` enforced (a JIT maps RW, writes,
//! makes it RX), `executable_heap`, and a request's protection changes undone by its reset —
//! in the page tables, the TLB and, under kvm_pvm, the hypervisor's shadow tables.
//! Guest: guest/tests/wx.c (its main() already ran a JIT at boot, or it would not be ready).

use std::sync::Arc;

use edgevm_runtime::request_vm::{RequestSettings, RequestVm};
use edgevm_runtime::vm::{BootOutcome, MainVm, VmOptions};

use crate::common::{guest, require_kvm};

fn request_vm(executable_heap: bool, keep_working_memory: bool) -> RequestVm {
    request_vm_of("wx", executable_heap, keep_working_memory)
}

fn request_vm_of(name: &str, executable_heap: bool, keep_working_memory: bool) -> RequestVm {
    require_kvm();
    let path = guest(name);
    let bytes = std::fs::read(&path).expect("read the wx guest");
    let mut opts = VmOptions::new(name, path, bytes);
    opts.raw_output = true;
    opts.executable_heap = executable_heap;
    let (vm, report) = MainVm::boot(opts).expect("boot wx");
    assert_eq!(report.outcome, BootOutcome::Ready, "{report:?}");
    let frozen = Arc::new(vm.freeze().expect("freeze"));
    let settings = RequestSettings {
        keep_working_memory,
        ..Default::default()
    };
    RequestVm::new(frozen, settings, None).expect("request VM")
}

fn get(vm: &mut RequestVm, mode: &str) -> Result<String, String> {
    crate::common::vm_get(vm, format!("/?m={mode}"))
}

fn ok(vm: &mut RequestVm, mode: &str, want: &str) {
    assert_eq!(get(vm, mode).as_deref(), Ok(want), "{mode}");
}

fn crashes(vm: &mut RequestVm, mode: &str, want: &str) {
    let e = get(vm, mode).expect_err(mode);
    assert!(e.contains(want), "{mode}: {e}");
    // The VM serves on, as the image left it.
    ok(vm, "write_data", "ok 1");
}

#[test]
fn code_is_not_writable_and_data_heap_stack_are_not_executable() {
    let mut vm = request_vm(false, false);
    crashes(&mut vm, "exec_heap", "executing address");
    crashes(&mut vm, "exec_heap", "(not executable)");
    crashes(&mut vm, "exec_stack", "(not executable)");
    crashes(&mut vm, "exec_data", "(not executable)");
    crashes(&mut vm, "call_frozen", "(not executable)");
    crashes(&mut vm, "write_code", "writing address");
    crashes(&mut vm, "write_code", "(read-only)");
    crashes(&mut vm, "write_rodata", "(read-only)");
    // W^X: writable and executable at once is refused (EACCES), for mmap and mprotect.
    ok(&mut vm, "rwx", "mmap=13 mprotect=13 ran=0,0");
}

#[test]
fn a_jit_maps_rw_then_rx_and_loses_write() {
    let mut vm = request_vm(false, false);
    for _ in 0..3 {
        ok(&mut vm, "jit", "jit=42");
    }
    crashes(&mut vm, "jit_write", "(read-only)");
    ok(&mut vm, "jit", "jit=42");
}

#[test]
fn a_requests_mprotect_is_undone_by_its_reset() {
    for keep in [false, true] {
        let mut vm = request_vm(false, keep);
        for _ in 0..2 {
            // Read-only for one request, writable again in the next.
            ok(&mut vm, "protect_data", "ok 0");
            ok(&mut vm, "write_data", "ok 1");
            // Executable for one request (a page of the frozen image), NX again after.
            ok(&mut vm, "exec_frozen", "frozen=42 (0)");
            crashes(&mut vm, "call_frozen", "(not executable)");
            // PROT_NONE: the read faults, the next request reads and writes it.
            crashes(&mut vm, "none", "reading address");
            // munmapped memory is not accessible any more; mapped again, it is, zeroed.
            crashes(&mut vm, "use_after_munmap", "reading address");
            ok(&mut vm, "map_again", "same=1 zero=1 wrote=9");
            ok(&mut vm, "write_data", "ok 1");
            ok(&mut vm, "jit", "jit=42");
        }
    }
}

#[test]
fn hostile_mprotect_arguments_get_linux_errors() {
    let mut vm = request_vm(false, false);
    // EINVAL (22): unaligned, unknown protection bits; ENOMEM (12): outside the program's
    // memory (NULL page, page tables, I/O area), wrapping or huge lengths; a zero length
    // changes nothing.
    ok(
        &mut vm,
        "hostile",
        "unaligned=22 badprot=22 null=12 kernel=12 io=12 wrap=12 huge=12 zero=0 growsdown=22",
    );
    ok(&mut vm, "write_data", "ok 1");
}

#[test]
fn system_calls_cannot_write_code() {
    let mut vm = request_vm(false, false);
    // EFAULT (14) into code, read-only data and a PROT_READ mapping; data is writable.
    ok(
        &mut vm,
        "syscall_code",
        "code=14 rodata=14 ro=14 data=0 helper=7",
    );
}

/// The host's reads and writes of a program's buffers follow its page protections, as
/// Linux's `copy_from_user`/`copy_to_user`: `EFAULT` from `PROT_NONE` and munmapped pages, into
/// read-only pages and code, and for a buffer that runs into such a page (a `writev` whose
/// second buffer faults writes the first, as Linux); nothing is consumed by a failed `read()`.
#[test]
fn system_calls_read_and_write_only_what_the_program_could() {
    for keep in [false, true] {
        let mut vm = request_vm(false, keep);
        for _ in 0..2 {
            ok(
                &mut vm,
                "syscall_prot",
                "write: none=14 straddle=14 gone=14 iov=8 iovarr=14 sleep=14 ok=16; \
                 read: ro=14 code=14 none=14 straddle=14 ok=16",
            );
        }
        // A response body in a PROT_NONE page fails the request; the VM serves on.
        crashes(&mut vm, "respond_none", "is not readable by the program");
    }
}

#[test]
fn executable_heap_allows_writable_executable_memory() {
    let mut vm = request_vm(true, false);
    ok(&mut vm, "rwx", "mmap=0 mprotect=0 ran=42,42");
    ok(&mut vm, "exec_heap", "ran 42");
    // Code, data and the stack keep their protections.
    crashes(&mut vm, "write_code", "(read-only)");
    crashes(&mut vm, "exec_stack", "(not executable)");
    crashes(&mut vm, "exec_data", "(not executable)");
}

/// The reference's lowest load address, 0x100000: wx.c linked with
/// `-Wl,-Ttext-segment=0x100000` has its headers, code, read-only data and data in the first
/// 2 MiB (beside edgevm's own pages, in the same page table) and its brk heap crossing into
/// the next 2 MiB. Protections, JIT, system calls and resets work there as anywhere.
#[test]
fn a_program_linked_at_the_lowest_load_address_keeps_its_protections() {
    for keep in [false, true] {
        let mut vm = request_vm_of("wx_low", false, keep);
        let w = get(&mut vm, "where").expect("where");
        let field = |k: &str| {
            let v = w
                .split(' ')
                .find_map(|f| f.strip_prefix(k))
                .unwrap_or_else(|| panic!("{k} in {w}"));
            u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()
        };
        assert!((0x101000..0x200000).contains(&field("code=")), "{w}");
        assert!((0x101000..0x200000).contains(&field("data=")), "{w}");
        let heap = field("heap=");
        assert!((0x101000..0x200000).contains(&heap), "{w}");
        crashes(&mut vm, "write_code", "(read-only)");
        crashes(&mut vm, "write_rodata", "(read-only)");
        crashes(&mut vm, "exec_data", "(not executable)");
        crashes(&mut vm, "exec_heap", "(not executable)");
        ok(&mut vm, "jit", "jit=42");
        ok(
            &mut vm,
            "syscall_code",
            "code=14 rodata=14 ro=14 data=0 helper=7",
        );
        for _ in 0..2 {
            ok(&mut vm, "protect_data", "ok 0");
            ok(&mut vm, "write_data", "ok 1");
            crashes(&mut vm, "none", "reading address");
        }
        // Each request starts from the frozen break again.
        assert_eq!(get(&mut vm, "where").as_deref(), Ok(w.as_str()));
    }
}

#[test]
fn verbose_pagetables_logs_the_protections_at_the_freeze() {
    require_kvm();
    let dir = crate::common::scratch("verbose-pagetables");
    let cfg = dir.join("wx.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{ "wx": {{ "filename": "{}", "verbose_pagetables": true }} }}"#,
            guest("wx").display()
        ),
    )
    .unwrap();
    let r = crate::common::edgevm_run(&["run", "--config", cfg.to_str().unwrap()]);
    let all = r.all();
    // The ELF's code, its read-only data (RELRO made read-only by glibc), the boot JIT's
    // page, and the stack guard page.
    for want in [" r-x 4K ", " r-- 4K ", " rw- 2M ", " --- 4K (1 pages)"] {
        assert!(
            all.lines()
                .any(|l| l.contains("pagetables: 0x") && l.contains(want)),
            "{want}: {all}"
        );
    }
}
