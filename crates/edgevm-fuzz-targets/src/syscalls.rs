//! Fuzz target `syscalls`: Linux system call emulation with random registers and random guest
//! memory contents at each call, through the same `Vcpu` seam the run loop uses.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use edgevm_abi::cpu::write_system_tables;
use edgevm_abi::layout::{Layout, USER_BASE};
use edgevm_abi::linux::{LinuxConfig, LinuxState, Output, SyscallOutcome};
use edgevm_kvm::{kvm_regs, GuestMemory};

use crate::input::Input;

const MEM: u64 = 32 << 20;
const PAGE: u64 = 4096;

pub(crate) use edgevm_kvm::FakeVcpu as FakeCpu;

/// Most bytes one write/writev may hand to the output (and so allocate on the host).
const MAX_WRITE: usize = 64 << 20;

/// Guest output sink that keeps only counts (a real printer has a budget too).
#[derive(Default)]
struct Sink {
    bytes: usize,
    largest: usize,
}

impl Output for Sink {
    fn write(&mut self, _fd: i32, data: &[u8]) {
        self.bytes += data.len();
        self.largest = self.largest.max(data.len());
    }
    fn log(&mut self, line: &str) {
        self.bytes += line.len();
    }
}

/// System call numbers the emulation implements (and a few it does not), so most random calls
/// reach real code.
const NUMBERS: &[u64] = &[
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 21, 24, 25, 28, 35, 39,
    60, 62, 63, 72, 74, 75, 77, 79, 85, 89, 96, 97, 102, 104, 107, 108, 110, 131, 158, 186, 200,
    201, 202, 204, 218, 228, 229, 230, 231, 234, 257, 262, 267, 269, 271, 273, 302, 309, 318, 334,
    439, 56, 435, 36, 37, 38, 222, 223, 224, 225, 226,
];

/// Paths a program may try to open: the state file (three spellings) and ways out.
const PATHS: &[&[u8]] = &[
    b"state\0",
    b"./state\0",
    b"/state\0",
    b"../prog.state\0",
    b"/tmp\0",
    b"state/\0",
    b"/proc/self/exe\0",
    b"\0",
];

/// A directory holding only the state file of the fuzzed process, one per thread (the replay
/// tests run targets on parallel threads), removed when the thread ends.
struct StateDir(PathBuf);

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

thread_local! {
    static STATE_DIR: StateDir = {
        static N: AtomicU64 = AtomicU64::new(0);
        let d = std::env::temp_dir().join(format!(
            "edgevm-fuzz-state-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).expect("state dir");
        StateDir(d)
    };
}

/// This thread's state directory (the state file is `prog.state` in it, alone, so the target
/// can check that no other file appears).
fn state_dir() -> PathBuf {
    STATE_DIR.with(|d| d.0.clone())
}

const STATE_CONTENT: &[u8] = b"edgevm fuzz state file\n";

fn arg(inp: &mut Input, st: &LinuxState, layout: &Layout, written: &[u64]) -> u64 {
    if !written.is_empty() && inp.u8().is_multiple_of(4) {
        // Where the input just put bytes (a path, an iovec, a timespec...).
        return written[inp.u8() as usize % written.len()];
    }
    match inp.u8() % 10 {
        0 => inp.u8() as u64,
        1 => USER_BASE + inp.u32() as u64 % (MEM - USER_BASE),
        2 => {
            // Near an edge: a layout boundary or the program break, plus or minus a little.
            let edges = [
                0,
                layout.protected()[0].1,
                layout.tables,
                layout.tables + edgevm_abi::layout::TABLES_SIZE,
                USER_BASE,
                st.brk(),
                layout.input_area,
                layout.guard_page,
                layout.stack_bottom,
                layout.stack_top,
                MEM,
            ];
            let base = inp.pick(&edges);
            base.wrapping_add((inp.u16() as i16 as i64) as u64)
        }
        3 => inp.u64(),
        4 => (inp.u8() as i8 as i64) as u64,
        5 => (inp.u16() as u64) * PAGE,
        6 => (inp.u32() as u64) * PAGE,
        7 => 1u64 << (inp.u8() % 64),
        8 => u64::MAX - inp.u8() as u64,
        _ => inp.u32() as u64,
    }
}

/// Run a sequence of system calls. Before each call the input may write random bytes into
/// guest memory (so calls that read structures from the guest see random contents); each
/// call gets random registers. Checked after every call: memory accounting stays within
/// `max_memory`, the kvm_pvm return path sets RIP=RCX and RFLAGS=R11 (hardware KVM: RIP
/// untouched), results of brk/mmap lie in the heap/mmap area; at the end, nothing below user
/// memory changed.
pub fn syscalls(data: &[u8]) {
    let mut inp = Input::new(data);
    let layout = Layout::new(MEM, 0).expect("layout");
    let max_memory = inp.pick(&[8u64, 12, 16, 24, 32]) << 20;
    let image_pages = inp.u8() as u64 % 64 + 1;
    let elf_end = USER_BASE + image_pages * PAGE;
    let mut st = LinuxState::new(
        layout,
        LinuxConfig {
            max_memory,
            exe_path: "/fuzz/prog".into(),
            verbose_syscalls: inp.bool(),
            state_file: Some(state_dir().join("prog.state")),
            ..LinuxConfig::default()
        },
        elf_end,
        image_pages * PAGE,
    );
    if inp.bool() {
        st.set_request_limit(Some((inp.u8() as u64) << 16));
    }
    // Like a request VM: the state file can only be read.
    let frozen = inp.bool();
    if frozen {
        st.make_files_read_only();
    }
    let mut mem = GuestMemory::new_shared(MEM as usize).expect("guest memory");
    write_system_tables(&mut mem, &layout, false).expect("system tables");
    mem.set_protected(layout.protected().to_vec());
    let low = crate::fixed_supervisor_bytes(&mem);
    // Every input starts from the same state file.
    let state_path = state_dir().join("prog.state");
    std::fs::write(&state_path, STATE_CONTENT).expect("state file");
    let mut written: Vec<u64> = Vec::new();
    let mut cpu = FakeCpu {
        dpl: if inp.bool() { 0 } else { 3 },
        ..Default::default()
    };
    let mut out = Sink::default();

    let mut calls = 0;
    while !inp.is_empty() && calls < 200 {
        if inp.u8().is_multiple_of(4) {
            // Random guest memory contents where the next call may look, or a path.
            let at = arg(&mut inp, &st, &layout, &written);
            let bytes = if inp.bool() {
                inp.pick(PATHS)
            } else {
                inp.chunk(256)
            };
            if mem.write(at, bytes).is_ok() && written.len() < 16 {
                written.push(at);
            }
            continue;
        }
        calls += 1;
        let nr = if inp.u8().is_multiple_of(8) {
            inp.u16() as u64
        } else {
            inp.pick(NUMBERS)
        };
        let a: [u64; 6] = std::array::from_fn(|_| arg(&mut inp, &st, &layout, &written));
        cpu.regs = kvm_regs {
            rax: nr,
            rdi: a[0],
            rsi: a[1],
            rdx: a[2],
            r10: a[3],
            r8: a[4],
            r9: a[5],
            rcx: inp.u64(),
            r11: inp.u64(),
            rip: 0x5002,
            rflags: 0x2,
            ..Default::default()
        };
        let before = cpu.regs;
        // Sleeping calls return at once: the deadline has passed.
        st.deadline = Some(Instant::now());
        let brk_before = st.brk();
        let outcome = st
            .handle(&mut cpu, &mut mem, &mut out)
            .expect("the fake vCPU never fails");
        assert!(
            out.largest <= MAX_WRITE,
            "call {nr} {a:x?} wrote {} bytes at once (host memory a guest can make edgevm allocate)",
            out.largest
        );
        assert!(
            st.memory_used() <= st.memory_limit(),
            "call {nr} {a:x?}: {} bytes used, limit {}",
            st.memory_used(),
            st.memory_limit()
        );
        match outcome {
            SyscallOutcome::Continue => {
                if cpu.dpl == 3 {
                    assert_eq!(cpu.regs.rip, before.rcx, "kvm_pvm return: RIP = RCX");
                    assert_eq!(
                        cpu.regs.rflags,
                        (before.r11 & 0x3C_7FD7) | 2,
                        "kvm_pvm return: RFLAGS = R11 as SYSRETQ masks it"
                    );
                } else {
                    assert_eq!(cpu.regs.rip, before.rip, "hardware KVM: SYSRETQ returns");
                    assert_eq!(cpu.regs.rflags, before.rflags);
                }
                let ret = cpu.regs.rax as i64;
                if nr == 9 && ret >= 0 {
                    let len = a[1].div_ceil(PAGE) * PAGE;
                    let at = ret as u64;
                    assert!(
                        at.is_multiple_of(PAGE) && at >= USER_BASE && at + len <= layout.input_area,
                        "mmap {a:x?} -> {at:#x}"
                    );
                }
                if nr == 12 {
                    assert!(
                        st.brk() >= USER_BASE && st.brk() < layout.input_area,
                        "brk {:#x} -> {:#x}",
                        brk_before,
                        st.brk()
                    );
                }
            }
            // The run loop ends the run (and resets the VM) on any of these.
            SyscallOutcome::Exit(_)
            | SyscallOutcome::Killed(_)
            | SyscallOutcome::DeadlineExceeded
            | SyscallOutcome::Fatal(_) => break,
        }
    }
    // The guest reaches no host file but its state file, and cannot change it once frozen.
    let names: Vec<_> = std::fs::read_dir(state_dir())
        .expect("state dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        names,
        ["prog.state"],
        "files appeared next to the state file"
    );
    if frozen {
        let now = std::fs::read(&state_path).expect("state file");
        assert!(
            now == STATE_CONTENT,
            "a frozen program changed its state file"
        );
    }
    assert!(
        low == crate::fixed_supervisor_bytes(&mem),
        "a system call changed supervisor memory"
    );
    assert!(
        crate::page_tables_sound(&mem, &layout),
        "a system call left the page tables mapping something else than user memory"
    );
}
