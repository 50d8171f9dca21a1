//! System call emulation through the `Vcpu` seam, without /dev/kvm.
use super::*;
use edgevm_kvm::kvm_regs;

use edgevm_kvm::FakeVcpu as FakeCpu;

#[derive(Default)]
struct Sink {
    out: Vec<u8>,
    logs: Vec<String>,
    /// What `room` says (None: no limit).
    room: Option<usize>,
}

impl Output for Sink {
    fn room(&self) -> usize {
        self.room
            .map_or(usize::MAX, |r| r.saturating_sub(self.out.len()))
    }
    fn write(&mut self, _fd: i32, data: &[u8]) {
        self.out.extend_from_slice(data);
    }
    fn log(&mut self, line: &str) {
        self.logs.push(line.to_string());
    }
}

struct Env {
    st: LinuxState,
    cpu: FakeCpu,
    mem: GuestMemory,
    out: Sink,
}

const MEM: u64 = 64 << 20;

fn env(max_memory: u64) -> Env {
    let layout = Layout::new(MEM, 0).unwrap();
    let st = LinuxState::new(
        layout,
        LinuxConfig {
            max_memory,
            exe_path: "/prog".into(),
            verbose_syscalls: true,
            state_file: None,
        },
        0x400000 + 0x1234,
        0x2000,
    );
    Env {
        st,
        cpu: FakeCpu {
            dpl: 3,
            ..Default::default()
        },
        mem: GuestMemory::new_shared(MEM as usize).unwrap(),
        out: Sink::default(),
    }
}

impl Env {
    fn call(&mut self, nr: u64, a: [u64; 6]) -> Result<i64, SyscallOutcome> {
        self.cpu.regs = kvm_regs {
            rax: nr,
            rdi: a[0],
            rsi: a[1],
            rdx: a[2],
            r10: a[3],
            r8: a[4],
            r9: a[5],
            rcx: 0x401000,
            r11: 0x246,
            ..Default::default()
        };
        match self
            .st
            .handle(&mut self.cpu, &mut self.mem, &mut self.out)
            .unwrap()
        {
            SyscallOutcome::Continue => {
                assert_eq!(self.cpu.regs.rip, 0x401000, "PVM return: RIP = RCX");
                assert_eq!(self.cpu.regs.rflags, 0x246, "PVM return: RFLAGS = R11");
                Ok(self.cpu.regs.rax as i64)
            }
            other => Err(other),
        }
    }
}

#[test]
fn the_state_file_is_the_only_file_and_read_only_after_the_freeze() {
    use crate::errno::EROFS;
    let dir = std::env::temp_dir().join(format!("edgevm-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let host = dir.join("prog.state");
    let _ = std::fs::remove_file(&host);
    let mut e = env(32 << 20);
    e.st = LinuxState::new(
        e.st.layout,
        LinuxConfig {
            state_file: Some(host.clone()),
            ..e.st.cfg.clone()
        },
        0x400000 + 0x1234,
        0x2000,
    );
    let (path, buf, st) = (0x300000u64, 0x310000u64, 0x320000u64);
    let name = |e: &mut Env, p: &str| {
        let mut b = p.as_bytes().to_vec();
        b.push(0);
        e.mem.write(path, &b).unwrap();
    };
    const AT_FDCWD: u64 = -100i64 as u64;
    // Other paths, including ways out of the sandbox: ENOENT, nothing created.
    for p in [
        "../prog.state",
        "state/",
        "/tmp/x",
        "prog.state",
        "",
        "/state/..",
    ] {
        name(&mut e, p);
        assert_eq!(
            e.call(257, [AT_FDCWD, path, 0o102, 0o644, 0, 0]),
            Ok(-ENOENT),
            "{p:?}"
        );
    }
    name(&mut e, "state");
    assert_eq!(
        e.call(2, [path, 0, 0, 0, 0, 0]),
        Ok(-ENOENT),
        "not created yet"
    );
    // Create and write (O_RDWR|O_CREAT|O_TRUNC), read back, fstat, lseek.
    let fd = e.call(257, [AT_FDCWD, path, 0o1102, 0o644, 0, 0]).unwrap();
    assert_eq!(fd, 3);
    e.mem.write(buf, b"hello state").unwrap();
    assert_eq!(e.call(1, [fd as u64, buf, 11, 0, 0, 0]), Ok(11));
    assert_eq!(std::fs::read(&host).unwrap(), b"hello state");
    assert_eq!(e.call(8, [fd as u64, 6, 0, 0, 0, 0]), Ok(6));
    assert_eq!(e.call(0, [fd as u64, buf + 100, 64, 0, 0, 0]), Ok(5));
    assert_eq!(e.mem.read_vec(buf + 100, 5).unwrap(), b"state");
    assert_eq!(e.call(0, [fd as u64, buf + 100, 64, 0, 0, 0]), Ok(0), "EOF");
    assert_eq!(e.call(5, [fd as u64, st, 0, 0, 0, 0]), Ok(0));
    assert_eq!(e.mem.read_u64(st + 48).unwrap(), 11, "st_size");
    assert_eq!(
        e.call(17, [fd as u64, buf + 200, 5, 0, 0, 0]),
        Ok(5),
        "pread"
    );
    assert_eq!(e.mem.read_vec(buf + 200, 5).unwrap(), b"hello");
    assert_eq!(e.call(77, [fd as u64, 5, 0, 0, 0, 0]), Ok(0), "ftruncate");
    assert_eq!(std::fs::read(&host).unwrap(), b"hello");
    assert_eq!(e.call(74, [fd as u64, 0, 0, 0, 0, 0]), Ok(0), "fsync");
    // "/state" is the same file; a second descriptor has its own offset.
    name(&mut e, "/state");
    let fd2 = e.call(2, [path, 0o2001, 0, 0, 0, 0]).unwrap(); // O_WRONLY|O_APPEND
    assert_eq!(fd2, 4);
    e.mem.write(buf, b"!").unwrap();
    assert_eq!(e.call(1, [fd2 as u64, buf, 1, 0, 0, 0]), Ok(1));
    assert_eq!(std::fs::read(&host).unwrap(), b"hello!");
    assert_eq!(
        e.call(0, [fd2 as u64, buf, 1, 0, 0, 0]),
        Ok(-EBADF),
        "write-only"
    );
    assert_eq!(e.call(3, [fd2 as u64, 0, 0, 0, 0, 0]), Ok(0));
    assert_eq!(e.call(3, [fd2 as u64, 0, 0, 0, 0, 0]), Ok(-EBADF));
    // Freeze with fd 3 open: the frozen state is read-only.
    e.st.make_files_read_only();
    let frozen = e.st.clone();
    assert_eq!(
        e.call(1, [fd as u64, buf, 1, 0, 0, 0]),
        Ok(-EBADF),
        "inherited fd"
    );
    assert_eq!(e.call(77, [fd as u64, 0, 0, 0, 0, 0]), Ok(-EINVAL));
    assert_eq!(e.call(8, [fd as u64, 0, 0, 0, 0, 0]), Ok(0));
    assert_eq!(
        e.call(0, [fd as u64, buf, 64, 0, 0, 0]),
        Ok(6),
        "reads the host file"
    );
    name(&mut e, "state");
    for flags in [0o1u64, 0o2, 0o1000, 0o101, 0o1101] {
        assert_eq!(
            e.call(2, [path, flags, 0, 0, 0, 0]),
            Ok(-EROFS),
            "{flags:o}"
        );
    }
    assert_eq!(
        e.call(21, [path, 2, 0, 0, 0, 0]),
        Ok(-EROFS),
        "access(W_OK)"
    );
    assert_eq!(e.call(21, [path, 4, 0, 0, 0, 0]), Ok(0), "access(R_OK)");
    let ro = e.call(2, [path, 0o100, 0, 0, 0, 0]).unwrap(); // O_RDONLY|O_CREAT, exists
    assert_eq!(ro, 4);
    assert_eq!(e.call(1, [ro as u64, buf, 1, 0, 0, 0]), Ok(-EBADF));
    assert_eq!(std::fs::read(&host).unwrap(), b"hello!", "never written");
    // Reset: the table is the frozen one again (fd 4 closed, fd 3 at offset 11 → 6..).
    e.st = frozen.clone();
    assert_eq!(e.call(3, [4, 0, 0, 0, 0, 0]), Ok(-EBADF));
    assert_eq!(e.st.open_files(), 1);
    // Too many open files.
    for i in 0..crate::files::MAX_OPEN_FILES - 1 {
        assert!(e.call(2, [path, 0, 0, 0, 0, 0]).unwrap() > 0, "open {i}");
    }
    assert_eq!(e.call(2, [path, 0, 0, 0, 0, 0]), Ok(-24), "EMFILE");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn random_file_calls_never_panic_and_never_write_after_the_freeze() {
    // 20000 random file system calls with nasty arguments against a real state file;
    // the second half after the freeze must leave the file as it was.
    let dir = std::env::temp_dir().join(format!("edgevm-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let host = dir.join("p.state");
    std::fs::write(&host, b"seed").unwrap();
    let mut e = env(32 << 20);
    e.mem.set_protected(crate::layout::PROTECTED.to_vec());
    e.st = LinuxState::new(
        e.st.layout,
        LinuxConfig {
            state_file: Some(host.clone()),
            ..e.st.cfg.clone()
        },
        0x400000 + 0x1234,
        0x2000,
    );
    e.mem.write(0x300000, b"state\0").unwrap();
    let calls = [
        0u64, 1, 2, 3, 5, 8, 16, 17, 18, 19, 20, 21, 72, 73, 74, 77, 85, 257, 262,
    ];
    let nasty = [
        0u64,
        1,
        3,
        4,
        0x300000,
        u64::MAX,
        u64::MAX - 4095,
        1 << 62,
        0o1102,
        0o2101,
        -100i64 as u64,
        0x1000,
        MEM - 1,
        4096,
        1 << 30,
    ];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    };
    let mut frozen_len: Option<(u64, Option<std::time::SystemTime>)> = None;
    for i in 0..20000 {
        if i == 10000 {
            e.st.make_files_read_only();
            frozen_len = std::fs::metadata(&host)
                .ok()
                .map(|m| (m.len(), m.modified().ok()));
        }
        let nr = calls[(next() % calls.len() as u64) as usize];
        let mut a = [0u64; 6];
        for v in a.iter_mut() {
            *v = match next() % 3 {
                0 => nasty[(next() % nasty.len() as u64) as usize],
                1 => 0x300000 + next() % 0x10000,
                _ => next() % 64,
            };
        }
        let _ = e.call(nr, a);
        assert!(e.st.open_files() <= crate::files::MAX_OPEN_FILES);
        if let Some(len) = frozen_len {
            let now = std::fs::metadata(&host)
                .ok()
                .map(|m| (m.len(), m.modified().ok()));
            assert_eq!(
                now,
                Some(len),
                "call {i} ({nr} {a:x?}) changed the file after the freeze"
            );
        }
    }
    assert!(
        std::fs::metadata(&host).unwrap().len() <= crate::files::MAX_STATE_SIZE,
        "size limit"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hardware_kvm_return_path_sets_only_rax() {
    // On hardware KVM SYSCALL enters CPL0 and the stub's SYSRETQ returns: the host must
    // write RAX and leave RIP (past the OUT) and RFLAGS alone.
    let mut e = env(32 << 20);
    e.cpu.dpl = 0;
    e.cpu.regs = kvm_regs {
        rax: 39, // getpid
        rip: 0x5002,
        rflags: 0x46,
        rcx: 0x401000,
        r11: 0x246,
        ..Default::default()
    };
    let out = e.st.handle(&mut e.cpu, &mut e.mem, &mut e.out).unwrap();
    assert_eq!(out, SyscallOutcome::Continue);
    assert_eq!(e.st.cpl0_syscalls(), Some(true));
    assert_eq!(e.cpu.regs.rax, 1);
    assert_eq!(
        e.cpu.regs.rip, 0x5002,
        "RIP untouched: SYSRETQ runs in the guest"
    );
    assert_eq!(e.cpu.regs.rflags, 0x46);
}

#[test]
fn the_start_probe_decides_how_syscall_enters() {
    // edgevm's start probe is the first system call of every program: on hardware KVM
    // it arrives at CPL0. A later `out` to the system call port from CPL3 (a program
    // faking a system call) cannot change the decision.
    let mut e = env(32 << 20);
    e.cpu.dpl = 0;
    e.cpu.regs = kvm_regs {
        rax: START_PROBE,
        rip: 0x5002,
        rflags: 0x46,
        rcx: 0x50c7,
        r11: 0x202,
        ..Default::default()
    };
    let out = e.st.handle(&mut e.cpu, &mut e.mem, &mut e.out).unwrap();
    assert_eq!(out, SyscallOutcome::Continue);
    assert_eq!(e.st.cpl0_syscalls(), Some(true));
    assert_eq!((e.cpu.regs.rax, e.cpu.regs.rip), (0, 0x5002));
    assert_eq!(e.st.syscalls, 0, "the probe is not the program's");
    assert!(
        e.out.logs.is_empty(),
        "the probe is not logged: {:?}",
        e.out.logs
    );
    e.cpu.dpl = 3;
    e.cpu.regs = kvm_regs {
        rax: 39,
        rip: 0x5002,
        rcx: 0xdead_0000,
        r11: 0x202,
        ..Default::default()
    };
    e.st.handle(&mut e.cpu, &mut e.mem, &mut e.out).unwrap();
    assert_eq!(e.st.cpl0_syscalls(), Some(true));
    assert_eq!(e.cpu.regs.rip, 0x5002, "RIP is not taken from a faked RCX");
    // A second START_PROBE is an ordinary unknown system call.
    e.cpu.regs.rax = START_PROBE;
    e.st.handle(&mut e.cpu, &mut e.mem, &mut e.out).unwrap();
    assert_eq!(e.cpu.regs.rax as i64, -ENOSYS);
}

#[test]
fn pvm_return_path_masks_rflags_as_sysretq() {
    // A program can reach the system call port with any R11 (an `out` of its own instead
    // of SYSCALL): RFLAGS gets only what SYSRETQ would let through.
    let mut e = env(32 << 20);
    e.cpu.regs = kvm_regs {
        rax: 39,
        rcx: 0x401000,
        r11: u64::MAX,
        ..Default::default()
    };
    let out = e.st.handle(&mut e.cpu, &mut e.mem, &mut e.out).unwrap();
    assert_eq!(out, SyscallOutcome::Continue);
    assert_eq!(e.cpu.regs.rip, 0x401000);
    assert_eq!(e.cpu.regs.rflags, 0x3C_7FD7, "no RF, VM or reserved bits");
}

#[test]
fn arch_prctl_refuses_kernel_and_non_canonical_bases() {
    let mut e = env(32 << 20);
    for base in [1u64 << 47, 0x8000_0000_0000_0000, 0xffff_ffff_8100_0000] {
        assert_eq!(e.call(158, [0x1002, base, 0, 0, 0, 0]), Ok(-EPERM));
        assert_eq!(e.call(158, [0x1001, base, 0, 0, 0, 0]), Ok(-EPERM));
    }
    assert_eq!((e.cpu.fs, e.cpu.gs), (0, 0));
    assert_eq!(e.call(158, [0x1002, 0x7fff_0000_0000, 0, 0, 0, 0]), Ok(0));
    assert_eq!(e.cpu.fs, 0x7fff_0000_0000);
}

#[test]
fn write_and_bad_pointers() {
    let mut e = env(32 << 20);
    e.mem.write(0x300000, b"hello\n").unwrap();
    assert_eq!(e.call(1, [1, 0x300000, 6, 0, 0, 0]), Ok(6));
    assert_eq!(e.out.out, b"hello\n");
    assert_eq!(e.call(1, [1, MEM - 2, 6, 0, 0, 0]), Ok(-EFAULT));
    assert_eq!(e.call(1, [7, 0x300000, 6, 0, 0, 0]), Ok(-EBADF));
    assert_eq!(e.call(99999, [0; 6]), Ok(-ENOSYS));
    assert!(
        e.out.logs.iter().any(|l| l.starts_with("write(")),
        "verbose_syscalls names calls"
    );
}

#[test]
fn writes_past_the_output_room_are_checked_and_reported_but_not_copied() {
    let mut e = env(32 << 20);
    e.out.room = Some(10);
    e.mem.write(0x300000, b"0123456789abcdef").unwrap();
    // write: 16 MiB reported written, 10 bytes copied out.
    assert_eq!(e.call(1, [1, 0x300000, 16 << 20, 0, 0, 0]), Ok(16 << 20));
    assert_eq!(e.out.out, b"0123456789");
    // Still EFAULT for a range that is not guest memory.
    assert_eq!(e.call(1, [1, MEM - 8, 16, 0, 0, 0]), Ok(-EFAULT));
    // writev: every entry counted, none copied once the room is used up.
    let iov = 0x310000u64;
    for (i, (base, len)) in [(0x300000u64, 4u64), (0x300000, 1 << 20)]
        .iter()
        .enumerate()
    {
        e.mem
            .write(iov + 16 * i as u64, &base.to_le_bytes())
            .unwrap();
        e.mem
            .write(iov + 16 * i as u64 + 8, &len.to_le_bytes())
            .unwrap();
    }
    assert_eq!(e.call(20, [1, iov, 2, 0, 0, 0]), Ok(4 + (1 << 20)));
    assert_eq!(e.out.out.len(), 10);
    e.mem.write(iov + 16, &(MEM - 8).to_le_bytes()).unwrap();
    assert_eq!(e.call(20, [1, iov, 2, 0, 0, 0]), Ok(-EFAULT));
}

#[test]
fn getrandom_fills_small_and_large_buffers() {
    let mut e = env(32 << 20);
    // Small (the thread generator) and 5 MiB (the kernel, in 64 KiB pieces).
    for (at, len) in [(0x300000u64, 16u64), (0x400000, 5 << 20)] {
        assert_eq!(e.call(318, [at, len, 0, 0, 0, 0]), Ok(len as i64));
        let mut b = vec![0u8; len as usize];
        e.mem.read(at, &mut b).unwrap();
        let zeros = b.iter().filter(|&&x| x == 0).count() as u64;
        assert!(zeros < len / 64 + 4, "{zeros} zero bytes of {len}");
        // Every 64 KiB piece got its own bytes.
        if len > 1 << 17 {
            assert_ne!(b[..64], b[64 << 10..(64 << 10) + 64]);
        }
    }
    assert_eq!(e.call(318, [MEM - 8, 16, 0, 0, 0, 0]), Ok(-EFAULT));
}

#[test]
fn brk_and_mmap_respect_the_limit_and_zero_reused_memory() {
    let mut e = env(16 << 20);
    let b0 = e.call(12, [0; 6]).unwrap() as u64;
    assert_eq!(b0, 0x402000);
    assert_eq!(
        e.call(12, [b0 + 0x10000, 0, 0, 0, 0, 0]),
        Ok((b0 + 0x10000) as i64)
    );
    // mmap 1 MiB, dirty it, unmap, map again: zeroes.
    let m = e.call(9, [0, 1 << 20, 3, 0x22, u64::MAX, 0]).unwrap() as u64;
    e.mem.write(m + 100, b"dirty").unwrap();
    assert_eq!(e.call(11, [m, 1 << 20, 0, 0, 0, 0]), Ok(0));
    let m2 = e.call(9, [0, 1 << 20, 3, 0x22, u64::MAX, 0]).unwrap() as u64;
    assert_eq!(m2, m, "freed range reused");
    let mut b = [1u8; 5];
    e.mem.read(m2 + 100, &mut b).unwrap();
    assert_eq!(b, [0; 5]);
    // Past max_memory: ENOMEM (4 MiB stack + image already counted).
    assert_eq!(e.call(9, [0, 64 << 20, 3, 0x22, u64::MAX, 0]), Ok(-ENOMEM));
    let big = b0 + (32 << 20);
    assert_eq!(
        e.call(12, [big, 0, 0, 0, 0, 0]),
        Ok((b0 + 0x10000) as i64),
        "brk fails by returning the old break"
    );
    // File mappings are not supported.
    assert_eq!(e.call(9, [0, 4096, 1, 0x2, 3, 0]), Ok(-EBADF));
}

#[test]
fn pointers_into_supervisor_structures_are_efault() {
    let mut e = env(32 << 20);
    e.mem.set_protected(crate::layout::PROTECTED.to_vec());
    // write(1, GDT, 8): reading the GDT is refused like a kernel address on Linux.
    assert_eq!(e.call(1, [1, crate::layout::GDT, 8, 0, 0, 0]), Ok(-EFAULT));
    // clock_gettime into the page tables: refused, and nothing is written there.
    let before = e.mem.read_raw_u64(crate::layout::PML4);
    assert_eq!(
        e.call(228, [1, crate::layout::PML4, 0, 0, 0, 0]),
        Ok(-EFAULT)
    );
    assert_eq!(e.mem.read_raw_u64(crate::layout::PML4), before);
    // The I/O area and user memory stay reachable.
    assert_eq!(e.call(228, [1, crate::layout::IO_AREA, 0, 0, 0, 0]), Ok(0));
}

#[test]
fn random_system_calls_never_panic_and_respect_the_limit() {
    // 20000 random calls with nasty arguments through the real dispatcher (no KVM).
    let mut e = env(24 << 20);
    e.mem.set_protected(crate::layout::PROTECTED.to_vec());
    let nasty = [
        0u64,
        1,
        8,
        u64::MAX,
        u64::MAX - 4095,
        0x1000,
        0x10000,
        0x20000,
        0x400000,
        MEM - 1,
        MEM,
        1 << 47,
        1 << 63,
        4096,
        65536,
        (e.st.layout.input_area) - 4096,
    ];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for i in 0..20000 {
        let nr = next() % 340;
        if matches!(nr, 35 | 230 | 202) {
            continue; // sleeping calls: covered elsewhere, and they would slow the test
        }
        let mut a = [0u64; 6];
        for v in a.iter_mut() {
            *v = match next() % 3 {
                0 => nasty[(next() % nasty.len() as u64) as usize],
                1 => 0x300000 + next() % 0x100000,
                _ => next(),
            };
        }
        let r = e.call(nr, a);
        assert!(
            e.st.memory_used() <= e.st.memory_limit(),
            "call {i} ({nr} {a:x?}) -> {r:?}: {} used over the limit",
            e.st.memory_used()
        );
    }
}

#[test]
fn request_limit() {
    let mut e = env(64 << 20);
    e.st.set_request_limit(Some(2 << 20));
    assert_eq!(e.call(9, [0, 4 << 20, 3, 0x22, u64::MAX, 0]), Ok(-ENOMEM));
    assert!(e.call(9, [0, 1 << 20, 3, 0x22, u64::MAX, 0]).unwrap() > 0);
    e.st.set_request_limit(None);
    assert!(e.call(9, [0, 4 << 20, 3, 0x22, u64::MAX, 0]).unwrap() > 0);
}

#[test]
fn process_calls() {
    let mut e = env(32 << 20);
    assert_eq!(e.call(158, [0x1002, 0x7777, 0, 0, 0, 0]), Ok(0));
    assert_eq!(e.cpu.fs, 0x7777);
    assert_eq!(e.call(39, [0; 6]), Ok(1));
    assert_eq!(e.call(63, [0x300000, 0, 0, 0, 0, 0]), Ok(0));
    assert_eq!(e.mem.read_cstr(0x300000, 64).unwrap(), b"Linux");
    e.mem.write(0x301000, b"/proc/self/exe\0").unwrap();
    assert_eq!(e.call(89, [0x301000, 0x302000, 100, 0, 0, 0]), Ok(5));
    assert_eq!(e.mem.read_vec(0x302000, 5).unwrap(), b"/prog");
    // stdout is a terminal: TCGETS and TIOCGWINSZ answer, other requests are ENOTTY.
    assert_eq!(e.call(16, [1, 0x5401, 0x305000, 0, 0, 0]), Ok(0));
    assert_eq!(e.call(16, [2, 0x5413, 0x305100, 0, 0, 0]), Ok(0));
    assert_eq!(e.mem.read_vec(0x305102, 2).unwrap(), 80u16.to_le_bytes());
    assert_eq!(e.call(16, [1, 0x5401, 1 << 40, 0, 0, 0]), Ok(-EFAULT));
    assert_eq!(e.call(16, [1, 0x5402, 0x305000, 0, 0, 0]), Ok(-ENOTTY));
    assert_eq!(e.call(16, [0, 0x5401, 0x305000, 0, 0, 0]), Ok(-ENOTTY));
    assert_eq!(e.call(16, [7, 0x5401, 0x305000, 0, 0, 0]), Ok(-EBADF));
    assert_eq!(e.call(228, [1, 0x303000, 0, 0, 0, 0]), Ok(0));
    assert!(e.mem.read_u64(0x303000).unwrap() > 0 || e.mem.read_u64(0x303008).unwrap() > 0);
    // Signals: recorded, SIG_IGN honoured, default action kills.
    let mut act = [0u8; 32];
    act[..8].copy_from_slice(&1u64.to_le_bytes());
    e.mem.write(0x304000, &act).unwrap();
    assert_eq!(e.call(13, [10, 0x304000, 0, 8, 0, 0]), Ok(0));
    assert_eq!(e.call(62, [1, 10, 0, 0, 0, 0]), Ok(0));
    assert_eq!(
        e.call(62, [1, 6, 0, 0, 0, 0]),
        Err(SyscallOutcome::Killed(6))
    );
    assert_eq!(e.call(60, [3, 0, 0, 0, 0, 0]), Err(SyscallOutcome::Exit(3)));
    // A futex wait nobody can wake is reported, not hung.
    e.mem.write(0x305000, &5u32.to_le_bytes()).unwrap();
    assert_eq!(e.call(202, [0x305000, 0, 4, 0, 0, 0]), Ok(-EAGAIN));
    assert!(matches!(
        e.call(202, [0x305000, 0, 5, 0, 0, 0]),
        Err(SyscallOutcome::Fatal(_))
    ));
}
