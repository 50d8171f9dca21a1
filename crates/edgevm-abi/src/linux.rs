//! Linux system call emulation for static glibc, musl, libstdc++ and Rust programs.
//!
//! Every system call is exactly one VM exit: the SYSCALL entry stub does `out $0xE0`, the
//! host reads the arguments from the synced registers, does the work against guest memory,
//! and writes the result (and, under kvm_pvm, RIP/RFLAGS) back through sync_regs.
//!
//! Memory model: the address space is identity-mapped and pre-mapped; `brk` grows up from the
//! end of the ELF image, anonymous `mmap` allocates down from the stack guard page, and the two
//! meet in the middle. Everything handed out is counted against `max_memory`, so a program that
//! allocates past it gets `ENOMEM`, as on Linux under a memory limit. `mprotect` is accepted
//! but not enforced (pages stay read-write); `munmap`ped ranges are reused and zeroed on reuse.
//! Signals are recorded (`rt_sigaction`, `rt_sigprocmask`) but never delivered; a signal sent
//! to the program itself with a default action ends it, as `abort()` expects.
//! Files: the program's `state` file is the only one (see [`crate::files`]); opening any other
//! path fails with `ENOENT`.
//! Anything not emulated returns `-ENOSYS`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use edgevm_kvm::{kvm_regs, GuestMemory, KvmError, Vcpu, PAGE_SIZE};

use crate::files::Files;
use crate::layout::{self, Layout};
use crate::names::syscall_name;

const EPERM: i64 = 1;
const ENOENT: i64 = 2;
const ESRCH: i64 = 3;
const EBADF: i64 = 9;
const EAGAIN: i64 = 11;
const ENOMEM: i64 = 12;
const EFAULT: i64 = 14;
const EINVAL: i64 = 22;
const ENOTTY: i64 = 25;
const ESPIPE: i64 = 29;
const ENODEV: i64 = 19;
const ERANGE: i64 = 34;
const ENOSYS: i64 = 38;
const ETIMEDOUT: i64 = 110;

const PAGE: u64 = PAGE_SIZE as u64;

/// The system call number of edgevm's start probe (see [`LinuxState::handle`] and
/// `cpu::program_start_stub`); not a Linux system call.
pub const START_PROBE: u64 = 0xED6E_0001;

/// RFLAGS bits SYSRETQ takes from R11 (the rest are cleared; bit 1 is always set).
const SYSRET_RFLAGS_MASK: u64 = 0x3C_7FD7;

fn page_up(v: u64) -> u64 {
    v.saturating_add(PAGE - 1) & !(PAGE - 1)
}

/// Where guest stdout/stderr and syscall logs go.
pub trait Output {
    /// Bytes the guest wrote to fd 1 or 2.
    fn write(&mut self, fd: i32, data: &[u8]);
    /// How many more bytes of output are worth reading from the guest: a write is still
    /// checked and reported whole, but only this much of it is copied out (a request past its
    /// output budget writing 64 MiB at a time costs nothing more then).
    fn room(&self) -> usize {
        usize::MAX
    }
    /// A `verbose_syscalls` log line.
    fn log(&mut self, line: &str);
}

/// What the run loop should do after a system call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyscallOutcome {
    /// Result written back; resume the guest.
    Continue,
    /// The program called exit/exit_group with this status.
    Exit(i32),
    /// The program sent itself a fatal signal (e.g. abort()).
    Killed(i32),
    /// A blocking call would exceed the run's deadline.
    DeadlineExceeded,
    /// The program can never make progress (e.g. a futex wait with one thread).
    Fatal(String),
}

/// Anonymous memory handed out by mmap, below the stack guard page.
#[derive(Debug, Clone)]
struct MmapArea {
    /// Lowest address of the area in use now (it grows down; munmap at the bottom raises it).
    bottom: u64,
    /// Lowest address ever handed out: memory below it (down to the heap) was never used and
    /// is still zero; memory above it must be zeroed when handed out again.
    low_water: u64,
    /// Top of the area (the stack guard page).
    top: u64,
    /// Freed ranges inside [bottom, top): start -> length.
    free: BTreeMap<u64, u64>,
}

impl MmapArea {
    fn free_bytes(&self) -> u64 {
        self.free.values().sum()
    }

    fn mapped_bytes(&self) -> u64 {
        self.top - self.bottom - self.free_bytes()
    }

    /// Remove [start, start+len) from the free list (it becomes mapped).
    fn take(&mut self, start: u64, len: u64) {
        let end = start + len;
        let overlapping: Vec<(u64, u64)> = self
            .free
            .range(..end)
            .filter(|(s, l)| **s + **l > start)
            .map(|(s, l)| (*s, *l))
            .collect();
        for (s, l) in overlapping {
            self.free.remove(&s);
            if s < start {
                self.free.insert(s, start - s);
            }
            if s + l > end {
                self.free.insert(end, s + l - end);
            }
        }
    }

    /// Return [start, start+len) to the free list, coalescing.
    fn give_back(&mut self, start: u64, len: u64) {
        let start = start.max(self.bottom);
        let end = start.saturating_add(len).min(self.top);
        if end <= start {
            return;
        }
        self.take(start, end - start);
        let (mut s, mut e) = (start, end);
        if let Some((&ps, &pl)) = self.free.range(..s).next_back() {
            if ps + pl == s {
                self.free.remove(&ps);
                s = ps;
            }
        }
        if let Some(&nl) = self.free.get(&e) {
            self.free.remove(&e);
            e += nl;
        }
        if s == self.bottom {
            self.bottom = e;
        } else {
            self.free.insert(s, e - s);
        }
    }
}

/// Settings of the emulated process.
#[derive(Debug, Clone)]
pub struct LinuxConfig {
    /// Bytes of memory the program may allocate in total (ELF, stack, brk and mmap).
    pub max_memory: u64,
    /// What readlink("/proc/self/exe") answers (absolute).
    pub exe_path: String,
    /// Log every system call by name.
    pub verbose_syscalls: bool,
    /// Host file behind the guest's `state` file (`<filename>.state`); None: no state file.
    pub state_file: Option<std::path::PathBuf>,
}

/// The emulated process state. Cloned when a program is frozen, so request VMs can be reset
/// to it.
#[derive(Debug, Clone)]
pub struct LinuxState {
    layout: Layout,
    cfg: LinuxConfig,
    brk_start: u64,
    brk: u64,
    brk_high: u64,
    mmap: MmapArea,
    image_bytes: u64,
    sigactions: BTreeMap<u64, [u8; 32]>,
    sigmask: u64,
    clear_tid: u64,
    robust_list: u64,
    rseq: u64,
    /// Some(true) when SYSCALL enters CPL0 (hardware KVM), Some(false) under kvm_pvm.
    cpl0_syscalls: Option<bool>,
    /// Deadline of the current run, for blocking calls.
    pub deadline: Option<Instant>,
    /// Per-request allocation limit: (memory in use when the request started, limit).
    request_limit: Option<(u64, u64)>,
    /// System calls handled.
    pub syscalls: u64,
    /// Open files (the state file).
    files: Files,
}

impl LinuxState {
    /// A process whose ELF image ends at `elf_end` and spans `image_bytes`.
    pub fn new(layout: Layout, cfg: LinuxConfig, elf_end: u64, image_bytes: u64) -> Self {
        let brk_start = page_up(elf_end);
        let files = Files::new(cfg.state_file.clone());
        LinuxState {
            layout,
            cfg,
            brk_start,
            brk: brk_start,
            brk_high: brk_start,
            mmap: MmapArea {
                bottom: layout.input_area,
                low_water: layout.input_area,
                top: layout.input_area,
                free: BTreeMap::new(),
            },
            image_bytes,
            sigactions: BTreeMap::new(),
            sigmask: 0,
            clear_tid: 0,
            robust_list: 0,
            rseq: 0,
            cpl0_syscalls: None,
            deadline: None,
            request_limit: None,
            syscalls: 0,
            files,
        }
    }

    /// The program is being frozen: the state file becomes read-only for every VM forked from
    /// this state (request VMs), including descriptors open now.
    pub fn make_files_read_only(&mut self) {
        self.files.make_read_only();
    }

    /// Number of open files (besides stdin/stdout/stderr).
    pub fn open_files(&self) -> usize {
        self.files.count()
    }

    /// Bytes counted against max_memory now.
    pub fn memory_used(&self) -> u64 {
        self.image_bytes
            + layout::STACK_SIZE
            + (self.brk - self.brk_start)
            + self.mmap.mapped_bytes()
    }

    /// The memory limit.
    pub fn memory_limit(&self) -> u64 {
        self.cfg.max_memory
    }

    /// Current program break.
    pub fn brk(&self) -> u64 {
        self.brk
    }

    /// Whether system calls were seen entering at CPL0 (hardware KVM).
    pub fn cpl0_syscalls(&self) -> Option<bool> {
        self.cpl0_syscalls
    }

    /// Turn verbose syscall logging on or off (request VMs turn it off).
    pub fn set_verbose(&mut self, on: bool) {
        self.cfg.verbose_syscalls = on;
    }

    fn can_grow(&self, extra: u64) -> bool {
        let after = self.memory_used().saturating_add(extra);
        if let Some((base, limit)) = self.request_limit {
            if after.saturating_sub(base) > limit {
                return false;
            }
        }
        after <= self.cfg.max_memory
    }

    /// (bytes allocated by the current request, its limit), while a request limit is set.
    pub fn request_usage(&self) -> Option<(u64, u64)> {
        self.request_limit
            .map(|(base, limit)| (self.memory_used().saturating_sub(base), limit))
    }

    /// Limit what one request may allocate (max_request_memory); `None` lifts the limit.
    pub fn set_request_limit(&mut self, limit: Option<u64>) {
        self.request_limit = limit.map(|l| (self.memory_used(), l));
    }

    /// Whether the system call in `r` may make the host thread sleep (nanosleep,
    /// clock_nanosleep, a futex wait with a timeout): the runtime then makes it on a thread
    /// that may block.
    pub fn may_sleep(&self, r: &kvm_regs) -> bool {
        match r.rax {
            35 | 230 => true,
            202 => matches!(r.rsi & 0x7F, 0 | 9) && r.r10 != 0,
            _ => false,
        }
    }

    /// Handle the system call the guest just made (registers as of the exit).
    pub fn handle(
        &mut self,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
        out: &mut dyn Output,
    ) -> Result<SyscallOutcome, KvmError> {
        let r = *cpu.regs();
        if self.cpl0_syscalls.is_none() {
            // One GET_SREGS per program: which way did SYSCALL enter? (see cpu.rs) The first
            // system call is always edgevm's own start probe (layout::PROGRAM_START), made
            // before any program instruction runs: a program cannot fake the answer by
            // reaching the system call port with an `out` of its own first.
            self.cpl0_syscalls = Some(cpu.sregs()?.cs.dpl == 0);
            if r.rax == START_PROBE {
                self.syscall_return(cpu, &r, 0);
                return Ok(SyscallOutcome::Continue);
            }
        }
        self.syscalls += 1;
        let nr = r.rax;
        let a = [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9];
        let res = self.dispatch(nr, a, cpu, mem, out)?;
        let ret = match res {
            Ok(v) => v,
            Err(SyscallOutcome::Continue) => -ENOSYS,
            Err(other) => {
                if self.cfg.verbose_syscalls {
                    out.log(&format!(
                        "{}({:#x}, {:#x}, {:#x}) -> {:?}",
                        syscall_name(nr),
                        a[0],
                        a[1],
                        a[2],
                        other
                    ));
                }
                return Ok(other);
            }
        };
        if self.cfg.verbose_syscalls {
            out.log(&format!(
                "{}({:#x}, {:#x}, {:#x}) = {}",
                syscall_name(nr),
                a[0],
                a[1],
                a[2],
                if ret < 0 && ret > -4096 {
                    format!("-{}", errno_name(-ret))
                } else {
                    format!("{ret:#x}")
                }
            ));
        }
        self.syscall_return(cpu, &r, ret);
        Ok(SyscallOutcome::Continue)
    }

    /// Return `ret` from the system call whose registers were `r`.
    fn syscall_return(&self, cpu: &mut dyn Vcpu, r: &kvm_regs, ret: i64) {
        let cpl0 = self.cpl0_syscalls == Some(true);
        let regs = cpu.regs_mut();
        regs.rax = ret as u64;
        if !cpl0 {
            // kvm_pvm: SYSCALL stayed at CPL3, so do what SYSRETQ would, including its RFLAGS
            // mask (a program can reach the system call port with any R11 it likes).
            regs.rip = r.rcx;
            regs.rflags = (r.r11 & SYSRET_RFLAGS_MASK) | 2;
        }
    }

    #[allow(clippy::type_complexity)]
    fn dispatch(
        &mut self,
        nr: u64,
        a: [u64; 6],
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
        out: &mut dyn Output,
    ) -> Result<Result<i64, SyscallOutcome>, KvmError> {
        let fd = a[0] as i64 as i32;
        let file = self.files.is_open(fd);
        const AT_FDCWD: i32 = -100;
        let v = match nr {
            0 if file => Ok(self.files.read(fd, a[1], a[2], None, mem)),
            0 => Ok(match fd {
                0 => 0,
                _ => -EBADF,
            }),
            1 if file => Ok(self.files.write(fd, a[1], a[2], None, mem)),
            1 => Ok(self.sys_write(fd, a[1], a[2], mem, out)),
            2 => Ok(self.files.open(AT_FDCWD, a[0], a[1], mem)),
            85 => Ok(self.files.open(AT_FDCWD, a[0], 0o1101, mem)), // creat
            257 => Ok(self.files.open(a[0] as i32, a[1], a[2], mem)),
            3 if file => Ok(self.files.close(fd)),
            3 => Ok(if (0..=2).contains(&fd) { 0 } else { -EBADF }),
            4 | 6 => Ok(self.files.stat_path(AT_FDCWD, a[0], a[1], mem)),
            5 if file => Ok(self.files.fstat(fd, a[1], mem)),
            5 => Ok(self.sys_fstat(fd, a[1], mem)),
            8 if file => Ok(self.files.lseek(fd, a[1] as i64, a[2])),
            17 | 18 if file && (a[3] as i64) < 0 => Ok(-EINVAL),
            17 if file => Ok(self.files.read(fd, a[1], a[2], Some(a[3]), mem)),
            18 if file => Ok(self.files.write(fd, a[1], a[2], Some(a[3]), mem)),
            8 | 17 | 18 => Ok(if (0..=2).contains(&fd) {
                -ESPIPE
            } else {
                -EBADF
            }),
            19 if file => Ok(self.files.vectored(fd, a[1], a[2], false, mem)),
            19 => Ok(match fd {
                0 => 0,
                _ => -EBADF,
            }),
            20 if file => Ok(self.files.vectored(fd, a[1], a[2], true, mem)),
            21 => Ok(self.files.access(AT_FDCWD, a[0], a[1], mem)),
            269 | 439 => Ok(self.files.access(a[0] as i32, a[1], a[2], mem)),
            16 if file => Ok(-ENOTTY),
            72 if file => Ok(self.files.fcntl(fd, a[1], a[2])),
            73 if file => Ok(0), // flock: one process
            74 | 75 if file => Ok(self.files.fsync(fd)),
            77 if file => Ok(self.files.ftruncate(fd, a[1] as i64)),
            74 | 75 | 77 => Ok(if (0..=2).contains(&fd) {
                -EINVAL
            } else {
                -EBADF
            }),
            221 if file => Ok(0), // fadvise64
            9 if self.files.is_open(a[4] as i64 as i32) && a[3] & 0x20 == 0 => Ok(-ENODEV),
            9 => Ok(self.sys_mmap(a, mem)),
            10 => Ok(0), // mprotect: accepted, not enforced
            11 => Ok(self.sys_munmap(a[0], a[1])),
            12 => Ok(self.sys_brk(a[0], mem)),
            13 => Ok(self.sys_rt_sigaction(a, mem)),
            14 => Ok(self.sys_rt_sigprocmask(a, mem)),
            16 => Ok(self.sys_ioctl_std(fd, a[1], a[2], mem)),
            20 => Ok(self.sys_writev(fd, a[1], a[2], mem, out)),
            24 => Ok(0), // sched_yield
            7 | 271 => Ok(self.sys_poll(a[0], a[1], mem)),
            25 => Ok(self.sys_mremap(a, mem)),
            28 => Ok(self.sys_madvise(a, mem)),
            35 => return Ok(self.sys_nanosleep(a[0], mem, None)),
            39 | 186 => Ok(1), // getpid, gettid
            60 | 231 => Err(SyscallOutcome::Exit((a[0] & 0xFF) as i32)),
            62 | 200 => self.sys_kill(a[0] as i64, a[1] as i64),
            234 => self.sys_kill(a[1] as i64, a[2] as i64),
            63 => Ok(self.sys_uname(a[0], mem)),
            72 => Ok(match (fd, a[1]) {
                (0..=2, 1) => 0,     // F_GETFD
                (0..=2, 2 | 4) => 0, // F_SETFD, F_SETFL
                (0, 3) => 0,         // F_GETFL: O_RDONLY
                (1..=2, 3) => 1,     // O_WRONLY
                (0..=2, _) => -EINVAL,
                _ => -EBADF,
            }),
            79 => Ok(self.sys_getcwd(a[0], a[1], mem)),
            89 => Ok(self.sys_readlink(a[0], a[1], a[2], mem)),
            267 => Ok(self.sys_readlink(a[1], a[2], a[3], mem)),
            96 => Ok(self.sys_gettimeofday(a[0], a[1], mem)),
            97 => Ok(self.sys_prlimit(0, a[0], a[1], mem)),
            102 | 104 | 107 | 108 => Ok(0), // get{u,g}id, gete{u,g}id
            110 => Ok(0),                   // getppid
            131 => Ok(self.sys_sigaltstack(a[1], mem)),
            158 => Ok(self.sys_arch_prctl(a[0], a[1], cpu, mem)?),
            201 => Ok(self.sys_time(a[0], mem)),
            202 => return Ok(self.sys_futex(a, mem)),
            204 => Ok(self.sys_sched_getaffinity(a[1], a[2], mem)),
            218 => {
                self.clear_tid = a[0];
                Ok(1)
            }
            228 => Ok(self.sys_clock_gettime(a[0], a[1], mem)),
            229 => Ok(if a[1] != 0 {
                wr(mem, a[1], &timespec_bytes(0, 1))
            } else {
                0
            }),
            230 => {
                let abs = if a[1] & 1 != 0 { Some(a[0]) } else { None };
                return Ok(self.sys_nanosleep(a[2], mem, abs));
            }
            262 => Ok(self.sys_newfstatat(a, mem)),
            273 => Ok(if a[1] != 24 {
                -EINVAL
            } else {
                self.robust_list = a[0];
                0
            }),
            302 => Ok(self.sys_prlimit(a[0], a[1], a[3], mem)),
            309 => Ok({
                for p in [a[0], a[1]] {
                    if p != 0 && mem.write(p, &0u32.to_le_bytes()).is_err() {
                        return Ok(Ok(-EFAULT));
                    }
                }
                0
            }),
            318 => Ok(self.sys_getrandom(a[0], a[1], mem)),
            334 => Ok(self.sys_rseq(a, mem)),
            _ => Err(SyscallOutcome::Continue),
        };
        Ok(v)
    }

    fn sys_write(
        &mut self,
        fd: i32,
        buf: u64,
        len: u64,
        mem: &GuestMemory,
        out: &mut dyn Output,
    ) -> i64 {
        if fd != 1 && fd != 2 {
            return -EBADF;
        }
        let len = len.min(64 << 20) as usize;
        if !mem.contains(buf, len) {
            return -EFAULT;
        }
        match mem.read_vec(buf, len.min(out.room())) {
            Ok(data) => {
                out.write(fd, &data);
                len as i64
            }
            Err(_) => -EFAULT,
        }
    }

    fn sys_writev(
        &mut self,
        fd: i32,
        iov: u64,
        cnt: u64,
        mem: &GuestMemory,
        out: &mut dyn Output,
    ) -> i64 {
        if fd != 1 && fd != 2 {
            return -EBADF;
        }
        if cnt > 1024 {
            return -EINVAL;
        }
        // At most what one write() takes: 1024 entries naming the same 64 MiB would otherwise
        // make the host allocate 64 GiB (found by the `syscalls` fuzz target). Like Linux, a
        // write past the limit is short.
        const MAX_WRITE: usize = 64 << 20;
        let room = out.room();
        let mut data = Vec::new();
        let mut total = 0usize;
        for i in 0..cnt {
            let (Ok(base), Ok(len)) = (
                mem.read_u64(iov.wrapping_add(16 * i)),
                mem.read_u64(iov.wrapping_add(16 * i + 8)),
            ) else {
                return -EFAULT;
            };
            if len == 0 {
                continue;
            }
            if len > MAX_WRITE as u64 {
                return -EINVAL;
            }
            let take = (len as usize).min(MAX_WRITE - total);
            if !mem.contains(base, take) {
                return -EFAULT;
            }
            let copy = take.min(room.saturating_sub(data.len()));
            match mem.read_vec(base, copy) {
                Ok(d) => data.extend_from_slice(&d),
                Err(_) => return -EFAULT,
            }
            total += take;
            if total == MAX_WRITE {
                break;
            }
        }
        out.write(fd, &data);
        total as i64
    }

    /// poll/ppoll on the standard descriptors: stdin is at EOF (readable), stdout and stderr
    /// are always writable, anything else is not open (POLLNVAL). Never blocks.
    fn sys_poll(&mut self, fds: u64, n: u64, mem: &mut GuestMemory) -> i64 {
        const POLLIN: i16 = 1;
        const POLLOUT: i16 = 4;
        const POLLNVAL: i16 = 0x20;
        if n > 1024 {
            return -EINVAL;
        }
        let mut ready = 0;
        for i in 0..n {
            let at = fds.wrapping_add(8 * i);
            let mut b = [0u8; 8];
            if mem.read(at, &mut b).is_err() {
                return -EFAULT;
            }
            let fd = i32::from_le_bytes(b[0..4].try_into().unwrap_or_default());
            let events = i16::from_le_bytes([b[4], b[5]]);
            let revents = match fd {
                f if f < 0 => 0,
                0 => events & POLLIN,
                1 | 2 => events & POLLOUT,
                f if self.files.is_open(f) => events & (POLLIN | POLLOUT),
                _ => POLLNVAL,
            };
            if revents != 0 {
                ready += 1;
            }
            if mem.write(at + 6, &revents.to_le_bytes()).is_err() {
                return -EFAULT;
            }
        }
        ready
    }

    /// stdin is an empty pipe; stdout and stderr look like a terminal (a character device
    /// that answers TCGETS and TIOCGWINSZ), so glibc and musl line-buffer stdout: what a
    /// program prints appears line by line, and nothing but a partial line can sit in a
    /// stdio buffer when the VM is frozen.
    fn sys_fstat(&mut self, fd: i32, buf: u64, mem: &mut GuestMemory) -> i64 {
        if !(0..=2).contains(&fd) {
            return -EBADF;
        }
        let mode: u32 = if fd == 0 { 0o010600 } else { 0o020620 }; // S_IFIFO, S_IFCHR
        let mut st = [0u8; 144];
        st[16..24].copy_from_slice(&1u64.to_le_bytes()); // st_nlink
        st[24..28].copy_from_slice(&mode.to_le_bytes());
        st[56..64].copy_from_slice(&4096i64.to_le_bytes()); // st_blksize
        wr(mem, buf, &st)
    }

    /// ioctl on fds 0-2: TCGETS and TIOCGWINSZ succeed on stdout/stderr (a terminal, see
    /// `sys_fstat`); everything else is ENOTTY.
    fn sys_ioctl_std(&mut self, fd: i32, req: u64, arg: u64, mem: &mut GuestMemory) -> i64 {
        const TCGETS: u64 = 0x5401;
        const TIOCGWINSZ: u64 = 0x5413;
        match (fd, req & 0xFFFF_FFFF) {
            (1 | 2, TCGETS) => {
                // struct termios (kernel): iflag ICRNL, oflag OPOST|ONLCR, cflag B38400|CS8|
                // CREAD, lflag ISIG|ICANON|ECHO..., c_line, c_cc[19].
                let mut t = [0u8; 36];
                t[0..4].copy_from_slice(&0o400u32.to_le_bytes());
                t[4..8].copy_from_slice(&0o5u32.to_le_bytes());
                t[8..12].copy_from_slice(&0o277u32.to_le_bytes());
                t[12..16].copy_from_slice(&0o105073u32.to_le_bytes());
                wr(mem, arg, &t)
            }
            (1 | 2, TIOCGWINSZ) => {
                let mut w = [0u8; 8];
                w[0..2].copy_from_slice(&24u16.to_le_bytes());
                w[2..4].copy_from_slice(&80u16.to_le_bytes());
                wr(mem, arg, &w)
            }
            (0..=2, _) => -ENOTTY,
            _ => -EBADF,
        }
    }

    fn sys_newfstatat(&mut self, a: [u64; 6], mem: &mut GuestMemory) -> i64 {
        const AT_EMPTY_PATH: u64 = 0x1000;
        let path = match mem.read_cstr(a[1], 4096) {
            Ok(p) => p,
            Err(_) => return -EFAULT,
        };
        if path.is_empty() && a[3] & AT_EMPTY_PATH != 0 {
            let fd = a[0] as i32;
            if self.files.is_open(fd) {
                return self.files.fstat(fd, a[2], mem);
            }
            return self.sys_fstat(fd, a[2], mem);
        }
        self.files.stat_path(a[0] as i32, a[1], a[2], mem)
    }

    fn sys_brk(&mut self, req: u64, mem: &mut GuestMemory) -> i64 {
        if req < self.brk_start {
            return self.brk as i64;
        }
        let new = page_up(req);
        // Keep one page free between the heap and the lowest mapping.
        if new.saturating_add(PAGE) > self.mmap.bottom {
            return self.brk as i64;
        }
        if new > self.brk && !self.can_grow(new - self.brk) {
            return self.brk as i64;
        }
        if new > self.brk {
            // Memory that was part of the heap before (then released) must read as zero again.
            let dirty_end = new.min(self.brk_high);
            if dirty_end > self.brk && mem.zero(self.brk, (dirty_end - self.brk) as usize).is_err()
            {
                return self.brk as i64;
            }
            self.brk_high = self.brk_high.max(new);
        }
        self.brk = new;
        req as i64
    }

    fn alloc(&mut self, len: u64, mem: &mut GuestMemory) -> Option<u64> {
        if !self.can_grow(len) {
            return None;
        }
        // Highest free range that fits (mimics Linux's top-down allocation).
        let fit = self
            .mmap
            .free
            .iter()
            .rev()
            .find(|(_, l)| **l >= len)
            .map(|(s, l)| (*s, *l));
        if let Some((s, l)) = fit {
            let at = s + l - len;
            self.mmap.take(at, len);
            mem.zero(at, len as usize).ok()?;
            return Some(at);
        }
        let at = self.mmap.bottom.checked_sub(len)?;
        if at < self.brk + PAGE {
            return None;
        }
        let used_end = (at + len).min(self.mmap.bottom);
        let used_start = at.max(self.mmap.low_water);
        if used_end > used_start {
            mem.zero(used_start, (used_end - used_start) as usize)
                .ok()?;
        }
        self.mmap.bottom = at;
        self.mmap.low_water = self.mmap.low_water.min(at);
        Some(at)
    }

    fn sys_mmap(&mut self, a: [u64; 6], mem: &mut GuestMemory) -> i64 {
        const MAP_FIXED: u64 = 0x10;
        const MAP_ANONYMOUS: u64 = 0x20;
        const MAP_FIXED_NOREPLACE: u64 = 0x100000;
        let (addr, len, flags) = (a[0], a[1], a[3]);
        if len == 0 {
            return -EINVAL;
        }
        if flags & MAP_ANONYMOUS == 0 {
            // No files yet.
            return -EBADF;
        }
        let len = page_up(len);
        if len == 0 || len > self.layout.mem_size {
            return -ENOMEM;
        }
        if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0 {
            if addr % PAGE != 0 {
                return -EINVAL;
            }
            let end = addr.saturating_add(len);
            if addr < layout::USER_BASE || end > self.mmap.top {
                return -ENOMEM;
            }
            if addr >= self.mmap.bottom.min(self.brk) {
                // Inside (or extending) the mmap area.
                if addr < self.brk + PAGE {
                    // Would collide with the heap; only allowed inside existing heap pages.
                    if end > self.brk {
                        return -ENOMEM;
                    }
                } else if addr < self.mmap.bottom {
                    let grow = self.mmap.bottom - addr;
                    if !self.can_grow(grow) {
                        return -ENOMEM;
                    }
                    let old = self.mmap.bottom;
                    self.mmap.bottom = addr;
                    self.mmap.low_water = self.mmap.low_water.min(addr);
                    if end < old {
                        self.mmap.free.insert(end, old - end);
                    }
                }
                self.mmap.take(addr, len);
            }
            if mem.zero(addr, len as usize).is_err() {
                return -ENOMEM;
            }
            return addr as i64;
        }
        match self.alloc(len, mem) {
            Some(at) => at as i64,
            None => -ENOMEM,
        }
    }

    fn sys_munmap(&mut self, addr: u64, len: u64) -> i64 {
        if !addr.is_multiple_of(PAGE) || len == 0 {
            return -EINVAL;
        }
        let len = page_up(len);
        if addr >= self.mmap.bottom && addr < self.mmap.top {
            self.mmap.give_back(addr, len);
        }
        0
    }

    fn sys_mremap(&mut self, a: [u64; 6], mem: &mut GuestMemory) -> i64 {
        const MREMAP_MAYMOVE: u64 = 1;
        let (old, old_len, new_len, flags) = (a[0], page_up(a[1]), page_up(a[2]), a[3]);
        if old % PAGE != 0 || new_len == 0 || flags & !3 != 0 {
            return -EINVAL;
        }
        if !(old >= self.mmap.bottom && old.saturating_add(old_len) <= self.mmap.top) {
            return -EFAULT;
        }
        if new_len <= old_len {
            self.mmap.give_back(old + new_len, old_len - new_len);
            return old as i64;
        }
        let extra = new_len - old_len;
        // Grow in place when the following range is free.
        let next = old + old_len;
        if let Some(&l) = self.mmap.free.get(&next) {
            if l >= extra && self.can_grow(extra) {
                self.mmap.take(next, extra);
                if mem.zero(next, extra as usize).is_err() {
                    return -ENOMEM;
                }
                return old as i64;
            }
        }
        if flags & MREMAP_MAYMOVE == 0 {
            return -ENOMEM;
        }
        let Some(new) = self.alloc(new_len, mem) else {
            return -ENOMEM;
        };
        let mut off = 0;
        while off < old_len {
            let n = (old_len - off).min(1 << 20) as usize;
            match mem.read_vec(old + off, n) {
                Ok(d) => {
                    if mem.write(new + off, &d).is_err() {
                        return -EFAULT;
                    }
                }
                Err(_) => return -EFAULT,
            }
            off += n as u64;
        }
        self.mmap.give_back(old, old_len);
        new as i64
    }

    fn sys_madvise(&mut self, a: [u64; 6], mem: &mut GuestMemory) -> i64 {
        const MADV_DONTNEED: u64 = 4;
        let (addr, len, advice) = (a[0], page_up(a[1]), a[2]);
        if addr % PAGE != 0 {
            return -EINVAL;
        }
        if advice == MADV_DONTNEED && len > 0 {
            // Anonymous private memory reads back as zero after MADV_DONTNEED.
            if addr < layout::USER_BASE || mem.zero(addr, len as usize).is_err() {
                return -ENOMEM;
            }
        }
        0
    }

    fn sys_rt_sigaction(&mut self, a: [u64; 6], mem: &mut GuestMemory) -> i64 {
        let (sig, act, oact) = (a[0], a[1], a[2]);
        if sig == 0 || sig > 64 || (act != 0 && (sig == 9 || sig == 19)) {
            return -EINVAL;
        }
        if oact != 0 {
            let old = self.sigactions.get(&sig).copied().unwrap_or([0; 32]);
            if mem.write(oact, &old).is_err() {
                return -EFAULT;
            }
        }
        if act != 0 {
            let mut new = [0u8; 32];
            if mem.read(act, &mut new).is_err() {
                return -EFAULT;
            }
            self.sigactions.insert(sig, new);
        }
        0
    }

    fn sys_rt_sigprocmask(&mut self, a: [u64; 6], mem: &mut GuestMemory) -> i64 {
        let (how, set, oset) = (a[0], a[1], a[2]);
        if oset != 0 && mem.write_u64(oset, self.sigmask).is_err() {
            return -EFAULT;
        }
        if set != 0 {
            let Ok(s) = mem.read_u64(set) else {
                return -EFAULT;
            };
            match how {
                0 => self.sigmask |= s,
                1 => self.sigmask &= !s,
                2 => self.sigmask = s,
                _ => return -EINVAL,
            }
        }
        0
    }

    fn sys_sigaltstack(&mut self, old: u64, mem: &mut GuestMemory) -> i64 {
        if old != 0 {
            let mut ss = [0u8; 24];
            ss[8..12].copy_from_slice(&2u32.to_le_bytes()); // SS_DISABLE
            return wr(mem, old, &ss);
        }
        0
    }

    fn sys_kill(&mut self, pid: i64, sig: i64) -> Result<i64, SyscallOutcome> {
        if !(pid == 1 || pid == 0 || pid == -1) {
            return Ok(-ESRCH);
        }
        if !(0..=64).contains(&sig) {
            return Ok(-EINVAL);
        }
        if sig == 0 {
            return Ok(0);
        }
        let handler = self
            .sigactions
            .get(&(sig as u64))
            .map(|a| u64::from_le_bytes(a[0..8].try_into().unwrap_or_default()))
            .unwrap_or(0);
        // SIG_IGN, or signals whose default action is to ignore.
        if handler == 1 || matches!(sig, 17 | 23 | 28) {
            return Ok(0);
        }
        Err(SyscallOutcome::Killed(sig as i32))
    }

    fn sys_uname(&mut self, buf: u64, mem: &mut GuestMemory) -> i64 {
        let mut u = [0u8; 65 * 6];
        for (i, s) in [
            "Linux",
            "edgevm",
            "6.1.0-edgevm",
            "#1 SMP edgevm",
            "x86_64",
            "(none)",
        ]
        .iter()
        .enumerate()
        {
            u[i * 65..i * 65 + s.len()].copy_from_slice(s.as_bytes());
        }
        wr(mem, buf, &u)
    }

    fn sys_getcwd(&mut self, buf: u64, size: u64, mem: &mut GuestMemory) -> i64 {
        if size < 2 {
            return -ERANGE;
        }
        match mem.write(buf, b"/\0") {
            Ok(()) => 2,
            Err(_) => -EFAULT,
        }
    }

    fn sys_readlink(&mut self, path: u64, buf: u64, size: u64, mem: &mut GuestMemory) -> i64 {
        let Ok(p) = mem.read_cstr(path, 4096) else {
            return -EFAULT;
        };
        if p != b"/proc/self/exe" {
            return -ENOENT;
        }
        let target = self.cfg.exe_path.as_bytes();
        let n = target.len().min(size as usize);
        match mem.write(buf, &target[..n]) {
            Ok(()) => n as i64,
            Err(_) => -EFAULT,
        }
    }

    fn sys_gettimeofday(&mut self, tv: u64, tz: u64, mem: &mut GuestMemory) -> i64 {
        let (s, ns) = host_clock(libc::CLOCK_REALTIME);
        if tv != 0 {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&s.to_le_bytes());
            b[8..].copy_from_slice(&(ns / 1000).to_le_bytes());
            if mem.write(tv, &b).is_err() {
                return -EFAULT;
            }
        }
        if tz != 0 && mem.write(tz, &[0u8; 8]).is_err() {
            return -EFAULT;
        }
        0
    }

    fn sys_time(&mut self, tloc: u64, mem: &mut GuestMemory) -> i64 {
        let (s, _) = host_clock(libc::CLOCK_REALTIME);
        if tloc != 0 && mem.write_u64(tloc, s as u64).is_err() {
            return -EFAULT;
        }
        s
    }

    fn sys_clock_gettime(&mut self, clk: u64, tp: u64, mem: &mut GuestMemory) -> i64 {
        if clk > 11 {
            return -EINVAL;
        }
        let (s, ns) = host_clock(clk as libc::clockid_t);
        wr(mem, tp, &timespec_bytes(s, ns))
    }

    fn sys_nanosleep(
        &mut self,
        req: u64,
        mem: &GuestMemory,
        abs_clock: Option<u64>,
    ) -> Result<i64, SyscallOutcome> {
        let mut b = [0u8; 16];
        if mem.read(req, &mut b).is_err() {
            return Ok(-EFAULT);
        }
        let s = i64::from_le_bytes(b[..8].try_into().unwrap_or_default());
        let ns = i64::from_le_bytes(b[8..].try_into().unwrap_or_default());
        if s < 0 || !(0..1_000_000_000).contains(&ns) {
            return Ok(-EINVAL);
        }
        let mut dur = Duration::new(s as u64, ns as u32);
        if let Some(clk) = abs_clock {
            let (ns_, nns) = host_clock(clk as libc::clockid_t);
            let now = Duration::new(ns_.max(0) as u64, nns as u32);
            dur = dur.saturating_sub(now);
        }
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if dur > left {
                std::thread::sleep(left);
                return Err(SyscallOutcome::DeadlineExceeded);
            }
        }
        std::thread::sleep(dur);
        Ok(0)
    }

    fn sys_futex(&mut self, a: [u64; 6], mem: &GuestMemory) -> Result<i64, SyscallOutcome> {
        let op = a[1] & 0x7F;
        match op {
            0 | 9 => {
                let mut w = [0u8; 4];
                if mem.read(a[0], &mut w).is_err() {
                    return Ok(-EFAULT);
                }
                if u32::from_le_bytes(w) != a[2] as u32 {
                    return Ok(-EAGAIN);
                }
                if a[3] != 0 {
                    // A single thread: nobody can wake us, so the wait times out.
                    let r = self.sys_nanosleep(a[3], mem, None)?;
                    return Ok(if r == 0 { -ETIMEDOUT } else { r });
                }
                Err(SyscallOutcome::Fatal(
                    "futex wait with no timeout in a single-threaded program: it would never wake up (deadlock)".into(),
                ))
            }
            1 | 10 => Ok(0),
            _ => Ok(-ENOSYS),
        }
    }

    fn sys_sched_getaffinity(&mut self, len: u64, mask: u64, mem: &mut GuestMemory) -> i64 {
        if len < 8 {
            return -EINVAL;
        }
        match mem.write_u64(mask, 1) {
            Ok(()) => 8,
            Err(_) => -EFAULT,
        }
    }

    fn sys_prlimit(&mut self, pid: u64, resource: u64, old: u64, mem: &mut GuestMemory) -> i64 {
        if pid != 0 && pid != 1 {
            return -ESRCH;
        }
        if resource > 15 {
            return -EINVAL;
        }
        // New limits are accepted and ignored: edgevm's limits come from the configuration.
        if old == 0 {
            return 0;
        }
        self.write_rlimit(resource, old, mem)
    }

    fn sys_arch_prctl(
        &mut self,
        code: u64,
        addr: u64,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<i64, KvmError> {
        // As Linux: a base at or above the top of the user address space is refused.
        const TASK_SIZE_MAX: u64 = (1 << 47) - 4096;
        if matches!(code, 0x1001 | 0x1002) && addr >= TASK_SIZE_MAX {
            return Ok(-EPERM);
        }
        Ok(match code {
            0x1001 => {
                cpu.set_gs_base(addr)?;
                0
            }
            0x1002 => {
                cpu.set_fs_base(addr)?;
                0
            }
            0x1003 => wr(mem, addr, &cpu.fs_base().to_le_bytes()),
            0x1004 => wr(mem, addr, &cpu.gs_base().to_le_bytes()),
            _ => -EINVAL,
        })
    }

    fn sys_getrandom(&mut self, buf: u64, len: u64, mem: &mut GuestMemory) -> i64 {
        let len = len.min(32 << 20) as usize;
        if !mem.contains(buf, len) {
            return -EFAULT;
        }
        // In pieces: no 32 MiB host buffer for a 32 MiB request.
        let mut data = vec![0u8; len.min(64 << 10)];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(data.len());
            fill_random(&mut data[..n]);
            if mem.write(buf + done as u64, &data[..n]).is_err() {
                return -EFAULT;
            }
            done += n;
        }
        len as i64
    }

    fn sys_rseq(&mut self, a: [u64; 6], mem: &mut GuestMemory) -> i64 {
        const RSEQ_FLAG_UNREGISTER: u64 = 1;
        if a[2] & RSEQ_FLAG_UNREGISTER != 0 {
            self.rseq = 0;
            return 0;
        }
        if a[1] < 32 {
            return -EINVAL;
        }
        // One vCPU: the program always runs on CPU 0. cpu_id_start and cpu_id.
        let r = wr(mem, a[0], &[0u8; 8]);
        if r == 0 {
            self.rseq = a[0];
        }
        r
    }
}

/// getrlimit/prlimit64 values.
impl LinuxState {
    fn rlimit(&self, resource: u64) -> (u64, u64) {
        const INF: u64 = u64::MAX;
        match resource {
            3 => (layout::STACK_SIZE, layout::STACK_SIZE), // RLIMIT_STACK
            7 => (1024, 4096),                             // RLIMIT_NOFILE
            2 | 9 => (self.cfg.max_memory, self.cfg.max_memory), // RLIMIT_DATA, RLIMIT_AS
            _ => (INF, INF),
        }
    }

    /// Fill an rlimit struct for `resource` at `old`.
    pub fn write_rlimit(&self, resource: u64, old: u64, mem: &mut GuestMemory) -> i64 {
        let (c, m) = self.rlimit(resource);
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&c.to_le_bytes());
        b[8..].copy_from_slice(&m.to_le_bytes());
        wr(mem, old, &b)
    }
}

fn wr(mem: &mut GuestMemory, addr: u64, data: &[u8]) -> i64 {
    match mem.write(addr, data) {
        Ok(()) => 0,
        Err(_) => -EFAULT,
    }
}

fn timespec_bytes(s: i64, ns: i64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&s.to_le_bytes());
    b[8..].copy_from_slice(&ns.to_le_bytes());
    b
}

fn host_clock(clk: libc::clockid_t) -> (i64, i64) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the local timespec.
    let r = unsafe { libc::clock_gettime(clk, &mut ts) };
    if r != 0 {
        // SAFETY: as above, with a clock that always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    }
    (ts.tv_sec, ts.tv_nsec)
}

/// Fill `buf` with cryptographically secure random bytes. Small requests (the per-request
/// seed, a program's usual getrandom) come from the thread's ChaCha generator of the `rand`
/// crate (seeded from the OS and reseeded periodically): no system call (getrandom(2) took
/// ~0.45 µs of a ~35 µs hello request cycle here). Large ones (a guest may ask for up to
/// 32 MiB) go to the kernel, which is faster at bulk and does not depend on how this binary
/// was optimized (an unoptimized test build made 32 MiB in seconds, past request deadlines).
pub fn fill_random(buf: &mut [u8]) {
    if buf.len() <= 4096 {
        rand::RngCore::fill_bytes(&mut rand::rng(), buf);
        return;
    }
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: writes at most buf.len()-done bytes into the slice's remaining part.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n <= 0 {
            // Never leave predictable bytes: fall back to the generator for the rest.
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut buf[done..]);
            return;
        }
        done += n as usize;
    }
}

fn errno_name(e: i64) -> &'static str {
    match e {
        EPERM => "EPERM",
        ENOENT => "ENOENT",
        ESRCH => "ESRCH",
        EBADF => "EBADF",
        EAGAIN => "EAGAIN",
        ENOMEM => "ENOMEM",
        EFAULT => "EFAULT",
        EINVAL => "EINVAL",
        ENOTTY => "ENOTTY",
        ESPIPE => "ESPIPE",
        ERANGE => "ERANGE",
        ENOSYS => "ENOSYS",
        ETIMEDOUT => "ETIMEDOUT",
        ENODEV => "ENODEV",
        5 => "EIO",
        6 => "ENXIO",
        13 => "EACCES",
        17 => "EEXIST",
        20 => "ENOTDIR",
        24 => "EMFILE",
        27 => "EFBIG",
        30 => "EROFS",
        _ => "E?",
    }
}

#[cfg(test)]
mod tests {
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
        use crate::files::EROFS;
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
}
