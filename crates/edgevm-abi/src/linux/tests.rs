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
            ..LinuxConfig::default()
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
    // Other paths, including ways out of the sandbox: an error, nothing created.
    for (p, err) in [
        ("../prog.state", ENOENT),
        ("/tmp/x", ENOENT),
        ("prog.state", ENOENT),
        ("", ENOENT),
        ("/state/..", crate::errno::EISDIR),
    ] {
        name(&mut e, p);
        assert_eq!(
            e.call(257, [AT_FDCWD, path, 0o102, 0o644, 0, 0]),
            Ok(-err),
            "{p:?}"
        );
    }
    name(&mut e, "state/");
    assert!(e.call(257, [AT_FDCWD, path, 0o102, 0o644, 0, 0]).unwrap() < 0);
    assert!(!host.exists(), "nothing created");
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
    for i in 0..crate::files::MAX_FDS - 4 {
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
    e.mem.set_protected(e.st.layout.protected().to_vec());
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
        assert!(e.st.open_files() <= crate::files::MAX_FDS);
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
    e.mem.set_protected(e.st.layout.protected().to_vec());
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
    e.mem.set_protected(e.st.layout.protected().to_vec());
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
        if matches!(nr, 34 | 35 | 230 | 202 | 37 | 38 | 223) {
            // Sleeping calls, and timers (a wait would last until a random alarm: there is no
            // deadline here): covered elsewhere, and they would slow the test.
            continue;
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
fn prot_none_reservations_do_not_count_until_made_accessible() {
    // 8 MB limit; glibc's arenas and Go's heap reserve far more with PROT_NONE.
    let mut e = env(8 << 20);
    let base = e.st.memory_used();
    let res = e.call(9, [0, 32 << 20, 0, 0x22, u64::MAX, 0]).unwrap();
    assert!(
        res > 0,
        "a 32 MB PROT_NONE reservation under an 8 MB limit: {res}"
    );
    assert_eq!(e.st.memory_used(), base);
    let res = res as u64;
    // Making 1 MB of it accessible counts; 16 MB more is refused and leaves it reserved.
    assert_eq!(e.call(10, [res, 1 << 20, 3, 0, 0, 0]), Ok(0));
    assert_eq!(e.st.memory_used(), base + (1 << 20));
    assert_eq!(
        e.call(10, [res + (2 << 20), 16 << 20, 3, 0, 0, 0]),
        Ok(-ENOMEM)
    );
    assert_eq!(e.st.memory_used(), base + (1 << 20));
    // MAP_FIXED read-write over the reservation (Go's way) counts too, and over the limit fails.
    let fixed = res + (4 << 20);
    assert_eq!(
        e.call(9, [fixed, 2 << 20, 3, 0x32, u64::MAX, 0]),
        Ok(fixed as i64)
    );
    assert_eq!(e.st.memory_used(), base + (3 << 20));
    assert_eq!(
        e.call(9, [res + (16 << 20), 16 << 20, 3, 0x32, u64::MAX, 0]),
        Ok(-ENOMEM)
    );
    // Back to PROT_NONE: not counted again; munmap of the rest gives nothing back twice.
    assert_eq!(e.call(10, [res, 1 << 20, 0, 0, 0, 0]), Ok(0));
    assert_eq!(e.st.memory_used(), base + (2 << 20));
    assert_eq!(e.call(11, [res, 32 << 20, 0, 0, 0, 0]), Ok(0));
    assert_eq!(e.st.memory_used(), base);
    // The request limit follows the same rule (a glibc arena per thread inside a request).
    e.st.set_request_limit(Some(1 << 20));
    let r2 = e.call(9, [0, 32 << 20, 0, 0x22, u64::MAX, 0]).unwrap();
    assert!(r2 > 0);
    assert_eq!(e.call(10, [r2 as u64, 512 << 10, 3, 0, 0, 0]), Ok(0));
    assert_eq!(e.call(10, [r2 as u64, 2 << 20, 3, 0, 0, 0]), Ok(-ENOMEM));
    e.st.set_request_limit(None);
}

#[test]
fn random_protections_keep_the_accounting_consistent() {
    let mut e = env(16 << 20);
    let mut x = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut maps: Vec<u64> = Vec::new();
    for _ in 0..3000 {
        let len = (1 + next() % 64) << 12;
        let prot = [0, 1, 3][(next() % 3) as usize];
        match next() % 4 {
            0 => {
                if let Ok(r) = e.call(9, [0, len, prot, 0x22, u64::MAX, 0]) {
                    if r > 0 {
                        maps.push(r as u64);
                    }
                }
            }
            1 if !maps.is_empty() => {
                let m = maps[(next() % maps.len() as u64) as usize];
                let _ = e.call(10, [m + ((next() % 8) << 12), len, prot, 0, 0, 0]);
            }
            2 if !maps.is_empty() => {
                let i = (next() % maps.len() as u64) as usize;
                let m = maps.swap_remove(i);
                let _ = e.call(11, [m, len, 0, 0, 0, 0]);
            }
            _ if !maps.is_empty() => {
                let m = maps[(next() % maps.len() as u64) as usize];
                let _ = e.call(9, [m, len, prot, 0x32, u64::MAX, 0]);
            }
            _ => {}
        }
        assert!(e.st.memory_used() <= e.st.memory_limit());
        let m = &e.st.mmap;
        for (s, l) in &m.reserved {
            assert!(
                *s >= m.bottom && s + l <= m.top,
                "reservation outside the area"
            );
            assert!(
                m.free.range(..s + l).all(|(fs, fl)| fs + fl <= *s),
                "reservation overlaps a free range"
            );
        }
    }
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

/// A host tree for the file sandbox tests, removed on drop.
struct Tree(std::path::PathBuf);

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sandbox_env(tag: &str) -> (Env, Tree) {
    use std::os::unix::fs::symlink;
    let root = std::env::temp_dir().join(format!("edgevm-sbx-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let d = root.join("allowed");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    std::fs::create_dir_all(root.join("rw")).unwrap();
    std::fs::create_dir_all(root.join("c/remote2")).unwrap();
    std::fs::write(d.join("a.txt"), b"hello").unwrap();
    std::fs::write(d.join("sub/b.txt"), b"world").unwrap();
    std::fs::write(root.join("secret.txt"), b"secret").unwrap();
    std::fs::write(root.join("c/other.txt"), b"secret").unwrap();
    symlink("sub/b.txt", d.join("link_in")).unwrap();
    symlink("../secret.txt", d.join("link_out")).unwrap();
    symlink(root.join("secret.txt"), d.join("link_abs")).unwrap();
    symlink("/proc/self/root", d.join("link_proc")).unwrap();
    symlink("other.txt", root.join("c/remoteX")).unwrap();
    let rule = |v: &str, r: std::path::PathBuf, prefix, writable, symlink| PathRule {
        virt: v.as_bytes().to_vec(),
        real: r,
        prefix,
        writable,
        symlink,
    };
    let rules = vec![
        rule("/data", d.clone(), false, false, false),
        rule("/rw", root.join("rw"), false, true, false),
        rule("/cache/remote", root.join("c/remote"), true, true, false),
        rule("/p", "/proc/self".into(), false, false, false),
        rule(
            "/proc/self/exe",
            "/host/prog.elf".into(),
            false,
            false,
            true,
        ),
        PathRule::same("/dev/urandom"),
    ];
    let mut e = env(32 << 20);
    e.mem.set_protected(e.st.layout.protected().to_vec());
    e.st = LinuxState::new(
        e.st.layout,
        LinuxConfig {
            allowed_paths: rules,
            ..e.st.cfg.clone()
        },
        0x400000 + 0x1234,
        0x2000,
    );
    (e, Tree(root))
}

const P: u64 = 0x300000;
const BUF: u64 = 0x310000;
const AT: u64 = -100i64 as u64;

impl Env {
    fn path(&mut self, p: &str) -> u64 {
        let mut b = p.as_bytes().to_vec();
        b.push(0);
        self.mem.write(P, &b).unwrap();
        P
    }
    fn open(&mut self, p: &str, flags: u64) -> i64 {
        let at = self.path(p);
        self.call(257, [AT, at, flags, 0o644, 0, 0]).unwrap()
    }
    fn read_all(&mut self, fd: i64) -> Vec<u8> {
        let n = self.call(0, [fd as u64, BUF, 4096, 0, 0, 0]).unwrap();
        assert!(n >= 0, "read {n}");
        self.mem.read_vec(BUF, n as usize).unwrap()
    }
    fn cat(&mut self, p: &str) -> Result<Vec<u8>, i64> {
        let fd = self.open(p, 0);
        if fd < 0 {
            return Err(fd);
        }
        let d = self.read_all(fd);
        assert_eq!(self.call(3, [fd as u64, 0, 0, 0, 0, 0]), Ok(0));
        Ok(d)
    }
    fn names(&mut self, p: &str) -> Vec<String> {
        let fd = self.open(p, 0o200000);
        assert!(fd >= 0, "{p}: {fd}");
        let mut names = Vec::new();
        loop {
            let n = self.call(217, [fd as u64, BUF, 200, 0, 0, 0]).unwrap();
            assert!(n >= 0);
            if n == 0 {
                break;
            }
            let b = self.mem.read_vec(BUF, n as usize).unwrap();
            let mut off = 0;
            while off < b.len() {
                let reclen = u16::from_le_bytes([b[off + 16], b[off + 17]]) as usize;
                let name = &b[off + 19..off + reclen];
                let end = name.iter().position(|&c| c == 0).unwrap();
                names.push(String::from_utf8_lossy(&name[..end]).into_owned());
                off += reclen;
            }
        }
        self.call(3, [fd as u64, 0, 0, 0, 0, 0]).unwrap();
        names.sort();
        names
    }
}

use crate::errno::{EBUSY, EISDIR, ELOOP, ENAMETOOLONG, ENOTDIR, EROFS, EXDEV};
use crate::sandbox::PathRule;

#[test]
fn allowed_paths_show_only_what_is_listed_under_virtual_names() {
    let (mut e, t) = sandbox_env("names");
    assert_eq!(e.cat("/data/a.txt"), Ok(b"hello".to_vec()));
    assert_eq!(e.cat("/data/sub/../a.txt"), Ok(b"hello".to_vec()));
    assert_eq!(
        e.cat("/data/link_in"),
        Ok(b"world".to_vec()),
        "a link inside"
    );
    // The real path is not a guest name.
    let real = t.0.join("allowed/a.txt");
    assert_eq!(e.cat(real.to_str().unwrap()), Err(-ENOENT));
    assert_eq!(e.cat("/etc/passwd"), Err(-ENOENT));
    // Virtual directories list the tops of the rules.
    assert_eq!(
        e.names("/"),
        [".", "..", "cache", "data", "dev", "etc", "p", "proc", "rw"]
    );
    assert_eq!(e.names("/proc/self"), [".", "..", "exe"]);
    let mut want = vec![
        ".",
        "..",
        "a.txt",
        "link_abs",
        "link_in",
        "link_out",
        "link_proc",
        "sub",
    ];
    want.sort();
    assert_eq!(e.names("/data"), want);
    // The symlink rule: readlink answers the real path, lstat shows a link.
    let p = e.path("/proc/self/exe");
    assert_eq!(e.call(89, [p, BUF, 100, 0, 0, 0]), Ok(14));
    assert_eq!(e.mem.read_vec(BUF, 14).unwrap(), b"/host/prog.elf");
    assert_eq!(e.call(6, [p, BUF, 0, 0, 0, 0]), Ok(0));
    assert_eq!(
        e.mem.read_u64(BUF + 24).unwrap() as u32 & 0o170000,
        0o120000
    );
    let p = e.path("/data/link_in");
    assert_eq!(e.call(89, [p, BUF, 100, 0, 0, 0]), Ok(9));
    assert_eq!(e.mem.read_vec(BUF, 9).unwrap(), b"sub/b.txt");
    // stat, statx, access.
    let p = e.path("/data/a.txt");
    assert_eq!(e.call(4, [p, BUF, 0, 0, 0, 0]), Ok(0));
    assert_eq!(e.mem.read_u64(BUF + 48).unwrap(), 5, "st_size");
    assert_eq!(e.call(332, [AT, p, 0, 0x7ff, BUF, 0]), Ok(0));
    assert_eq!(e.mem.read_u64(BUF + 40).unwrap(), 5, "stx_size");
    assert_eq!(e.call(21, [p, 4, 0, 0, 0, 0]), Ok(0), "R_OK");
    assert_eq!(e.call(21, [p, 2, 0, 0, 0, 0]), Ok(-EROFS), "W_OK");
    // A real file rule.
    let fd = e.open("/dev/urandom", 0);
    assert!(fd >= 3);
    assert_eq!(e.call(0, [fd as u64, BUF, 16, 0, 0, 0]), Ok(16));
}

#[test]
fn dot_dot_symlinks_out_and_proc_magic_links_are_refused_by_the_kernel() {
    let (mut e, _t) = sandbox_env("escape");
    for p in [
        "/data/../secret.txt",
        "/data/sub/../../secret.txt",
        "../../../../secret.txt",
        "/cache/other.txt",
        "/p/../secret.txt",
    ] {
        assert_eq!(e.cat(p), Err(-ENOENT), "{p}");
    }
    // Symlinks leaving the tree: relative, absolute, through /proc.
    assert_eq!(e.cat("/data/link_out"), Err(-EXDEV));
    assert_eq!(e.cat("/data/link_abs"), Err(-EXDEV));
    assert_eq!(e.cat("/data/link_proc/etc/passwd"), Err(-EXDEV));
    let p = e.path("/data/link_out");
    assert_eq!(
        e.call(4, [p, BUF, 0, 0, 0, 0]),
        Ok(-EXDEV),
        "stat follows: refused"
    );
    assert_eq!(
        e.call(6, [p, BUF, 0, 0, 0, 0]),
        Ok(0),
        "lstat: the link itself"
    );
    // /proc/self allowed: its magic links (root, cwd, exe, fd/N) still lead nowhere.
    for p in ["/p/root/etc/passwd", "/p/cwd/x", "/p/exe", "/p/fd/0"] {
        let r = e.cat(p);
        assert!(r == Err(-ELOOP) || r == Err(-EXDEV), "{p}: {r:?}");
    }
    // A prefix extension must not be a symlink (remoteX -> other.txt).
    assert_eq!(e.cat("/cache/remoteX"), Err(-ELOOP));
    // Through a directory descriptor: lexical, still confined.
    let dfd = e.open("/data/sub", 0o200000) as u64;
    let p = e.path("../a.txt");
    let fd = e.call(257, [dfd, p, 0, 0, 0, 0]).unwrap();
    assert_eq!(e.read_all(fd), b"hello");
    let p = e.path("../../secret.txt");
    assert_eq!(e.call(257, [dfd, p, 0, 0, 0, 0]), Ok(-ENOENT));
    let fd = e.open("/data/a.txt", 0) as u64;
    let p = e.path("../../secret.txt");
    assert_eq!(e.call(257, [fd, p, 0, 0, 0, 0]), Ok(-ENOTDIR));
    assert_eq!(e.call(257, [999, p, 0, 0, 0, 0]), Ok(-EBADF));
}

#[test]
fn a_symlink_swapped_during_opens_never_leads_out() {
    let (mut e, t) = sandbox_env("race");
    let race = t.0.join("allowed/race");
    let tmp = t.0.join("allowed/race.tmp");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let swapper = std::thread::spawn(move || {
        let mut i = 0u64;
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = std::fs::remove_file(&tmp);
            if i.is_multiple_of(2) {
                let _ = std::os::unix::fs::symlink("../secret.txt", &tmp);
            } else {
                let _ = std::fs::write(&tmp, b"inside");
            }
            let _ = std::fs::rename(&tmp, &race);
            i += 1;
        }
        i
    });
    let mut inside = 0;
    for _ in 0..3000 {
        match e.cat("/data/race") {
            Ok(d) => {
                assert_ne!(d, b"secret", "escaped through a swapped symlink");
                inside += usize::from(d == b"inside");
            }
            Err(err) => assert!([-EXDEV, -ENOENT].contains(&err), "{err}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(
        swaps > 10,
        "the swapper ran ({swaps} swaps, {inside} inside reads)"
    );
}

#[test]
fn writes_need_a_writable_path_and_stop_at_the_freeze() {
    let (mut e, t) = sandbox_env("write");
    let before = std::fs::read(t.0.join("allowed/a.txt")).unwrap();
    for flags in [1u64, 2, 0o1000, 0o101, 0o1101] {
        assert_eq!(e.open("/data/a.txt", flags), -EROFS, "{flags:o}");
    }
    assert_eq!(e.open("/data/new.txt", 0o101), -EROFS);
    let p = e.path("/data/x");
    assert_eq!(e.call(83, [p, 0o755, 0, 0, 0, 0]), Ok(-EROFS), "mkdir");
    let p = e.path("/data/a.txt");
    assert_eq!(e.call(87, [p, 0, 0, 0, 0, 0]), Ok(-EROFS), "unlink");
    let q = 0x300800;
    e.mem.write(q, b"/rw/stolen\0").unwrap();
    assert_eq!(e.call(82, [p, q, 0, 0, 0, 0]), Ok(-EROFS), "rename out");
    let fd = e.open("/data/a.txt", 0);
    assert_eq!(
        e.call(77, [fd as u64, 0, 0, 0, 0, 0]),
        Ok(-EINVAL),
        "ftruncate"
    );
    assert_eq!(e.call(1, [fd as u64, BUF, 1, 0, 0, 0]), Ok(-EBADF));
    assert_eq!(std::fs::read(t.0.join("allowed/a.txt")).unwrap(), before);
    assert!(!t.0.join("allowed/new.txt").exists());
    // The writable path: create, write, mkdir, rename, unlink.
    let fd = e.open("/rw/f.txt", 0o1102);
    assert!(fd >= 3);
    e.mem.write(BUF, b"data").unwrap();
    assert_eq!(e.call(1, [fd as u64, BUF, 4, 0, 0, 0]), Ok(4));
    assert_eq!(e.call(74, [fd as u64, 0, 0, 0, 0, 0]), Ok(0), "fsync");
    assert_eq!(std::fs::read(t.0.join("rw/f.txt")).unwrap(), b"data");
    let p = e.path("/rw/d");
    assert_eq!(e.call(83, [p, 0o755, 0, 0, 0, 0]), Ok(0));
    let p = e.path("/rw/f.txt");
    e.mem.write(q, b"/rw/d/g.txt\0").unwrap();
    assert_eq!(e.call(82, [p, q, 0, 0, 0, 0]), Ok(0));
    assert_eq!(std::fs::read(t.0.join("rw/d/g.txt")).unwrap(), b"data");
    let p = e.path("/rw");
    assert_eq!(e.call(84, [p, 0, 0, 0, 0, 0]), Ok(-EBUSY), "a rule's root");
    // Prefix: below it and extending its last component.
    std::fs::create_dir_all(t.0.join("c/remote")).unwrap();
    assert!(e.open("/cache/remote/x", 0o101) >= 0);
    assert!(e.open("/cache/remote2/y", 0o101) >= 0);
    assert!(t.0.join("c/remote/x").exists() && t.0.join("c/remote2/y").exists());
    // Freeze: nothing writes any more, open descriptors included.
    let keep = e.open("/rw/d/g.txt", 2);
    e.st.make_files_read_only();
    assert_eq!(e.call(1, [keep as u64, BUF, 1, 0, 0, 0]), Ok(-EBADF));
    assert_eq!(e.open("/rw/h.txt", 0o101), -EROFS);
    let p = e.path("/rw/d/g.txt");
    assert_eq!(e.call(87, [p, 0, 0, 0, 0, 0]), Ok(-EROFS));
    let p = e.path("/rw/d2");
    assert_eq!(e.call(83, [p, 0o755, 0, 0, 0, 0]), Ok(-EROFS));
    assert_eq!(std::fs::read(t.0.join("rw/d/g.txt")).unwrap(), b"data");
    assert_eq!(e.cat("/rw/d/g.txt"), Ok(b"data".to_vec()), "still readable");
}

#[test]
fn descriptors_cwd_pipes_and_the_reset() {
    let (mut e, _t) = sandbox_env("fds");
    // Working directory.
    let p = e.path("/data");
    assert_eq!(e.call(80, [p, 0, 0, 0, 0, 0]), Ok(0));
    assert_eq!(e.call(79, [BUF, 100, 0, 0, 0, 0]), Ok(6));
    assert_eq!(e.mem.read_vec(BUF, 6).unwrap(), b"/data\0");
    assert_eq!(e.call(79, [BUF, 3, 0, 0, 0, 0]), Ok(-ERANGE));
    assert_eq!(e.cat("sub/b.txt"), Ok(b"world".to_vec()));
    let p = e.path("a.txt");
    assert_eq!(e.call(80, [p, 0, 0, 0, 0, 0]), Ok(-ENOTDIR));
    let p = e.path("/nowhere");
    assert_eq!(e.call(80, [p, 0, 0, 0, 0, 0]), Ok(-ENOENT));
    let d = e.open("/data/sub", 0o200000) as u64;
    assert_eq!(e.call(81, [d, 0, 0, 0, 0, 0]), Ok(0), "fchdir");
    assert_eq!(e.cat("b.txt"), Ok(b"world".to_vec()));
    // dup shares the offset; dup2 over stdout; fcntl.
    let fd = e.open("/data/a.txt", 0) as u64;
    assert_eq!(e.call(0, [fd, BUF, 2, 0, 0, 0]), Ok(2));
    let fd2 = e.call(32, [fd, 0, 0, 0, 0, 0]).unwrap() as u64;
    assert_eq!(e.call(8, [fd2, 0, 1, 0, 0, 0]), Ok(2), "shared offset");
    assert_eq!(e.call(33, [fd, 1, 0, 0, 0, 0]), Ok(1));
    assert_eq!(
        e.call(0, [1, BUF, 10, 0, 0, 0]),
        Ok(3),
        "fd 1 is the file now"
    );
    assert_eq!(
        e.call(72, [fd, 1030, 100, 0, 0, 0]),
        Ok(100),
        "F_DUPFD_CLOEXEC"
    );
    assert_eq!(e.call(72, [100, 1, 0, 0, 0, 0]), Ok(1), "FD_CLOEXEC");
    assert_eq!(e.call(292, [fd, fd, 0, 0, 0, 0]), Ok(-EINVAL), "dup3 same");
    // Pipes.
    assert_eq!(e.call(293, [BUF, 0o4000, 0, 0, 0, 0]), Ok(0));
    let rw = e.mem.read_u64(BUF).unwrap();
    let (r, w) = (rw & 0xFFFF_FFFF, rw >> 32);
    assert_eq!(e.call(0, [r, BUF, 10, 0, 0, 0]), Ok(-EAGAIN));
    e.mem.write(BUF + 100, b"ping").unwrap();
    assert_eq!(e.call(1, [w, BUF + 100, 4, 0, 0, 0]), Ok(4));
    assert_eq!(e.read_all(r as i64), b"ping");
    assert_eq!(e.call(3, [w, 0, 0, 0, 0, 0]), Ok(0));
    assert_eq!(
        e.call(0, [r, BUF, 10, 0, 0, 0]),
        Ok(0),
        "EOF without writers"
    );
    assert_eq!(e.call(293, [0, 0, 0, 0, 0, 0]), Ok(-EFAULT));
    // The freeze: what is open now is what every request starts with, at these offsets.
    let keep = e.open("/data/a.txt", 0) as u64;
    assert_eq!(e.call(0, [keep, BUF, 1, 0, 0, 0]), Ok(1));
    e.st.make_files_read_only();
    let frozen = e.st.clone();
    let open_at_freeze = e.st.open_files();
    for _ in 0..3 {
        assert_eq!(e.call(0, [keep, BUF, 2, 0, 0, 0]), Ok(2));
        assert_eq!(e.mem.read_vec(BUF, 2).unwrap(), b"el", "offset restored");
        assert!(e.open("/data/sub/b.txt", 0) >= 0);
        assert_eq!(e.call(3, [0, 0, 0, 0, 0, 0]), Ok(0));
        e.st = frozen.clone();
        assert_eq!(e.st.open_files(), open_at_freeze);
        assert_eq!(e.call(79, [BUF, 100, 0, 0, 0, 0]), Ok(10));
        assert_eq!(e.mem.read_vec(BUF, 10).unwrap(), b"/data/sub\0");
    }
}

#[test]
fn descriptor_exhaustion_and_bad_pointers() {
    let (mut e, _t) = sandbox_env("limits");
    let mut fds = Vec::new();
    loop {
        let fd = e.open("/data/a.txt", 0);
        if fd < 0 {
            assert_eq!(fd, -24, "EMFILE");
            break;
        }
        fds.push(fd);
    }
    assert_eq!(fds.len(), crate::files::MAX_FDS - 3);
    assert_eq!(e.open("/data", 0o200000), -24);
    assert_eq!(e.call(32, [3, 0, 0, 0, 0, 0]), Ok(-24), "dup");
    assert_eq!(e.call(293, [BUF, 0, 0, 0, 0, 0]), Ok(-24), "pipe2");
    for fd in fds {
        assert_eq!(e.call(3, [fd as u64, 0, 0, 0, 0, 0]), Ok(0));
    }
    assert_eq!(e.cat("/data/a.txt"), Ok(b"hello".to_vec()));
    // Bad pointers and names.
    for bad in [0u64, u64::MAX, MEM, 0x1000] {
        assert_eq!(e.call(257, [AT, bad, 0, 0, 0, 0]), Ok(-EFAULT), "{bad:x}");
        assert_eq!(e.call(4, [bad, BUF, 0, 0, 0, 0]), Ok(-EFAULT));
    }
    let long = "/data/".to_string() + &"x".repeat(5000);
    let p = e.path(&long);
    assert_eq!(e.call(2, [p, 0, 0, 0, 0, 0]), Ok(-ENAMETOOLONG));
    let p = e.path("/data/a.txt");
    assert_eq!(e.call(4, [p, u64::MAX - 8, 0, 0, 0, 0]), Ok(-EFAULT));
    assert_eq!(e.call(332, [AT, p, 0, 0x7ff, 0x1000, 0]), Ok(-EFAULT));
    let d = e.open("/data", 0o200000) as u64;
    assert_eq!(e.call(217, [d, 0x1000, 4096, 0, 0, 0]), Ok(-EFAULT));
    assert_eq!(e.call(217, [d, BUF, 8, 0, 0, 0]), Ok(-EINVAL), "too small");
    assert_eq!(e.call(0, [d, BUF, 8, 0, 0, 0]), Ok(-EISDIR));
    let fd = e.open("/data/a.txt", 0) as u64;
    assert_eq!(e.call(0, [fd, 0x1000, 8, 0, 0, 0]), Ok(-EFAULT));
    assert_eq!(e.call(217, [fd, BUF, 4096, 0, 0, 0]), Ok(-ENOTDIR));
    assert_eq!(
        e.call(89, [p, 0x1000, 100, 0, 0, 0]),
        Ok(-EINVAL),
        "not a link"
    );
    let p = e.path("/proc/self/exe");
    assert_eq!(e.call(89, [p, 0x1000, 100, 0, 0, 0]), Ok(-EFAULT));
}

#[test]
fn file_mappings_are_private_copies() {
    let (mut e, _t) = sandbox_env("mmap");
    let fd = e.open("/data/a.txt", 0) as u64;
    // PROT_READ, MAP_PRIVATE
    let at = e.call(9, [0, 8192, 1, 2, fd, 0]).unwrap();
    assert!(at > 0, "{at}");
    assert_eq!(e.mem.read_vec(at as u64, 6).unwrap(), b"hello\0");
    // Writable private mapping: the file is not changed.
    let at = e.call(9, [0, 4096, 3, 2, fd, 0]).unwrap() as u64;
    e.mem.write(at, b"J").unwrap();
    assert_eq!(e.cat("/data/a.txt"), Ok(b"hello".to_vec()));
    assert_eq!(
        e.call(9, [0, 4096, 3, 1, fd, 0]),
        Ok(-EACCES),
        "shared writable"
    );
    assert_eq!(
        e.call(9, [0, 4096, 1, 2, fd, 1]),
        Ok(-EINVAL),
        "unaligned offset"
    );
    assert_eq!(e.call(9, [0, 4096, 1, 2, 77, 0]), Ok(-EBADF));
    let d = e.open("/data", 0o200000) as u64;
    assert_eq!(e.call(9, [0, 4096, 1, 2, d, 0]), Ok(-ENODEV));
}

#[test]
fn a_fifo_in_an_allowed_tree_never_blocks_the_host() {
    let (mut e, t) = sandbox_env("fifo");
    let fifo = t.0.join("allowed/fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    // No writer: a blocking open would wait forever.
    assert_eq!(e.open("/data/fifo", 0), -crate::errno::ENXIO);
}

/// `env` with other settings of the process.
fn env_with(max_memory: u64, f: impl FnOnce(&mut LinuxConfig)) -> Env {
    let mut e = env(max_memory);
    let mut cfg = e.st.cfg.clone();
    f(&mut cfg);
    e.st = LinuxState::new(e.st.layout, cfg, 0x400000 + 0x1234, 0x2000);
    e
}

const ANON: u64 = 0x22; // MAP_PRIVATE | MAP_ANONYMOUS
const FIXED: u64 = 0x10;

#[test]
fn a_blackout_area_is_never_handed_out_mapped_or_protected() {
    let dark = (0x1E0_0000u64, 0x200_0000u64);
    let mut e = env_with(64 << 20, |c| c.blackout = vec![dark]);
    let mm = libc::SYS_mmap as u64;
    // Allocate 1 MiB pieces until memory runs out: none lands in the dark range.
    let mut got = Vec::new();
    loop {
        let r = e.call(mm, [0, 1 << 20, 3, ANON, u64::MAX, 0]).unwrap();
        if r < 0 {
            assert_eq!(r, -ENOMEM);
            break;
        }
        let a = r as u64;
        assert!(
            a + (1 << 20) <= dark.0 || a >= dark.1,
            "{a:#x} is in the blackout area"
        );
        got.push(a);
    }
    assert!(
        got.iter().any(|&a| a < dark.0),
        "the area went past the blackout: {got:x?}"
    );
    // Fixed mappings, mprotect and brk there are refused; munmap gives nothing of it back.
    for (addr, len) in [(dark.0, 4096), (dark.0 - 4096, 8192), (dark.1 - 4096, 4096)] {
        assert_eq!(
            e.call(mm, [addr, len, 3, ANON | FIXED, u64::MAX, 0]),
            Ok(-ENOMEM)
        );
        assert_eq!(
            e.call(libc::SYS_mprotect as u64, [addr, len, 1, 0, 0, 0]),
            Ok(-ENOMEM)
        );
    }
    assert_eq!(
        e.call(
            libc::SYS_munmap as u64,
            [dark.0 - (1 << 20), 4 << 20, 0, 0, 0, 0]
        ),
        Ok(0)
    );
    for _ in 0..8 {
        let r = e.call(mm, [0, 4096, 3, ANON, u64::MAX, 0]).unwrap();
        assert!(r > 0);
        let a = r as u64;
        assert!(
            a + 4096 <= dark.0 || a >= dark.1,
            "{a:#x} is in the blackout area"
        );
    }
}

#[test]
fn brk_stops_below_a_blackout_area() {
    let brk0 = page_up(0x400000 + 0x1234);
    let dark = (brk0 + (1 << 20), brk0 + (2 << 20));
    let mut e = env_with(64 << 20, |c| c.blackout = vec![dark]);
    let brk = libc::SYS_brk as u64;
    assert_eq!(
        e.call(brk, [brk0 + 4096, 0, 0, 0, 0, 0]),
        Ok((brk0 + 4096) as i64)
    );
    assert_eq!(
        e.call(brk, [dark.0 + 4096, 0, 0, 0, 0, 0]),
        Ok((brk0 + 4096) as i64)
    );
    assert_eq!(
        e.call(brk, [dark.1 + 4096, 0, 0, 0, 0, 0]),
        Ok((brk0 + 4096) as i64)
    );
}

#[test]
fn fixed_mappings_outside_the_area_are_relocated_unless_relocate_fixed_mmap_is_off() {
    let mm = libc::SYS_mmap as u64;
    let far = 0x7f00_0000_0000u64;
    // Default (relocate_fixed_mmap: true): memory elsewhere.
    let mut e = env(64 << 20);
    let r = e
        .call(mm, [far, 8192, 3, ANON | FIXED, u64::MAX, 0])
        .unwrap();
    assert!(r > 0 && (r as u64) < MEM, "{r:#x}");
    // A hint is not honoured: top-down allocation.
    let p = e.call(mm, [0, 4096, 3, ANON, u64::MAX, 0]).unwrap() as u64;
    let hint = p - (8 << 20);
    let r = e.call(mm, [hint, 4096, 3, ANON, u64::MAX, 0]).unwrap();
    assert_ne!(r as u64, hint);

    // relocate_fixed_mmap: false: the fixed mapping fails, the free hint is honoured, a
    // hint that is taken or out of range is not.
    let mut e = env_with(64 << 20, |c| c.keep_mmap_addresses = true);
    assert_eq!(
        e.call(mm, [far, 8192, 3, ANON | FIXED, u64::MAX, 0]),
        Ok(-ENOMEM)
    );
    assert_eq!(
        e.call(mm, [0x1000, 4096, 3, ANON | FIXED, u64::MAX, 0]),
        Ok(-ENOMEM)
    );
    let p = e.call(mm, [0, 4096, 3, ANON, u64::MAX, 0]).unwrap() as u64;
    let hint = p - (8 << 20);
    assert_eq!(
        e.call(mm, [hint, 8192, 3, ANON, u64::MAX, 0]),
        Ok(hint as i64)
    );
    let again = e.call(mm, [hint, 4096, 3, ANON, u64::MAX, 0]).unwrap();
    assert!(again > 0 && again as u64 != hint, "{again:#x}");
    let r = e.call(mm, [far, 4096, 3, ANON, u64::MAX, 0]).unwrap();
    assert!(r > 0 && (r as u64) < MEM);
    let r = e.call(mm, [!0xFFF, 8192, 3, ANON, u64::MAX, 0]).unwrap();
    assert!(r > 0 && (r as u64) < MEM);
    // A freed range below the area's top can be asked for by hint.
    assert_eq!(
        e.call(libc::SYS_munmap as u64, [hint, 8192, 0, 0, 0, 0]),
        Ok(0)
    );
    assert_eq!(
        e.call(mm, [hint + 4096, 4096, 3, ANON, u64::MAX, 0]),
        Ok((hint + 4096) as i64)
    );
}
