//! Linux system call emulation for static glibc, musl, libstdc++ and Rust programs.
//!
//! Every system call is exactly one VM exit: the SYSCALL entry stub does `out $0xE0`, the
//! host reads the arguments from the synced registers, does the work against guest memory,
//! and writes the result (and, under kvm_pvm, RIP/RFLAGS) back through sync_regs.
//!
//! Memory model: the address space is identity-mapped and pre-mapped; `brk` grows up from the
//! end of the ELF image, anonymous `mmap` allocates down from the stack guard page, and the two
//! meet in the middle. Everything handed out is counted against `max_memory`, so a program that
//! allocates past it gets `ENOMEM`, as on Linux under a memory limit. Protections (`mprotect`,
//! `mmap`'s `prot`) are enforced in the page tables ([`crate::paging`]); `munmap`ped ranges are
//! reused and zeroed on reuse.
//! Signals the program sends itself or its threads run their `rt_sigaction` handlers
//! ([`signals`]); one with a default action ends it, as `abort()` expects. CPU faults (SIGSEGV,
//! SIGFPE, SIGILL, SIGBUS, SIGTRAP) run the program's handler when it installed one
//! ([`LinuxState::deliver_fault`]), else end the run as a crash.
//! Files: what `allowed_paths` lists, under its virtual names, confined by the kernel (see
//! [`crate::sandbox`]), and the program's `state` file; any other path fails with `ENOENT`.
//! Sockets are host sockets under the program's network policy (`fds/socket.rs`).
//! Threads are green threads on the VM's vCPU ([`threads`]); a call that waits for
//! descriptors (poll, select, epoll, a blocking pipe read) blocks only its thread ([`wait`]).
//! Anything not emulated returns `-ENOSYS`.
//!
//! Calls by area: [`fds`] (the descriptor table), [`paths`], [`mem`], [`process`], [`threads`]
//! (clone, futex, the scheduler); see docs/DESIGN.md.

mod fds;
mod mem;
mod paths;
mod process;
mod signals;
mod snapshot;
#[cfg(test)]
mod tests;
mod threads;
mod timers;
mod wait;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use edgevm_kvm::{kvm_regs, GuestMemory, KvmError, Vcpu, PAGE_SIZE};

use crate::errno::{self, *};
use crate::layout::{self, Layout};
use crate::names::syscall_name;
use crate::paging::PageTables;
use crate::sandbox::{PathRule, Sandbox};
use fds::FdTable;
use mem::MmapArea;
pub use process::fill_random;
pub use signals::{read_fault, FaultDelivery, UserFault, MAX_FAULT_REPEATS};
pub use threads::MAX_THREADS;
pub use timers::{MAX_TIMERS, MIN_INTERVAL};

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
    /// The program can never make progress (every thread waits on a futex with no timeout).
    Fatal(String),
}

/// Settings of the emulated process.
#[derive(Debug, Clone, Default)]
pub struct LinuxConfig {
    /// Bytes of memory the program may allocate in total (ELF, stack, brk and mmap).
    pub max_memory: u64,
    /// What readlink("/proc/self/exe") answers (absolute).
    pub exe_path: String,
    /// Log every system call by name.
    pub verbose_syscalls: bool,
    /// Host file behind the guest's `state` file (`<filename>.state`); None: no state file.
    pub state_file: Option<std::path::PathBuf>,
    /// The host files the program may reach (`allowed_paths`).
    pub allowed_paths: Vec<PathRule>,
    /// The working directory at the start (`current_working_directory`, a guest path).
    pub cwd: String,
    /// `verbose`: log paths the sandbox refuses.
    pub verbose: bool,
    /// Where the program's sockets may connect (None: public addresses only).
    pub net: Option<Arc<edgevm_netpolicy::NetPolicy>>,
    /// `executable_heap`: brk and mmap memory is executable, and may be writable and
    /// executable at once.
    pub executable_heap: bool,
    /// `blackout_area`: page-aligned ranges [start, end) the program can never map or touch
    /// (not present in its page tables, refused to mmap/brk/mprotect, refused as pointers).
    pub blackout: Vec<(u64, u64)>,
    /// `relocate_fixed_mmap: false`: an mmap address hint is honoured when that range is
    /// free, and a MAP_FIXED mapping edgevm cannot place there fails (ENOMEM). Default
    /// (`relocate_fixed_mmap: true`, this false): hints are ignored and a MAP_FIXED mapping
    /// outside the program's mmap area gets memory where edgevm chooses (as the reference).
    pub keep_mmap_addresses: bool,
    /// `remapping` / `executable_remapping`: (guest-virtual start, length, executable), both
    /// 2 MiB aligned, above the address space (checked by [`remap_backing`]'s caller).
    pub remaps: Vec<(u64, u64, bool)>,
    /// `mmap_backed_files`: read-only file mappings show one sealed copy of the file shared
    /// by every VM (see `mem.rs`, `mmap_file`), not a private copy each.
    pub mmap_backed_files: bool,
}

/// Where the memory of each remapped area lives: (virtual start, physical start, length,
/// executable), the areas stacked downwards from the top of the mmap area (the request-body
/// area), 2 MiB aligned. The mmap area ends below the lowest one.
pub fn remap_backing(layout: &Layout, remaps: &[(u64, u64, bool)]) -> Vec<(u64, u64, u64, bool)> {
    let mut top = layout.input_area & !((2 << 20) - 1);
    remaps
        .iter()
        .map(|&(v, n, x)| {
            top = top.saturating_sub(n);
            (v, top, n, x)
        })
        .collect()
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
    /// The last fault delivered to a handler (to see a handler loop).
    faults: signals::FaultState,
    /// The program's threads (see [`threads`]).
    threads: threads::Threads,
    /// Interval and POSIX timers (see [`timers`]).
    timers: timers::Timers,
    /// The last system call switched threads: the vCPU holds another thread's registers.
    switched: bool,
    /// How the run ends, found while switching threads (a signal the program cannot take).
    fatal: Option<SyscallOutcome>,
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
    /// The descriptor table.
    fds: FdTable,
    /// What paths name (allowed_paths and the state file).
    sandbox: Arc<Sandbox>,
    /// The working directory (a normalized guest path).
    cwd: Vec<u8>,
    /// Writes to writable paths are allowed (main VM before the freeze, storage VM).
    may_write: bool,
    /// Bytes sent and received through sockets, and the count when the request began.
    net_bytes: u64,
    net_base: u64,
    /// Refused destinations logged (fds/socket.rs).
    net_refusals: u32,
    /// Page protections (see [`crate::paging`]).
    pt: PageTables,
    /// The log said this VM has as many mapped files as it may (`mmap_backed_files`).
    said_files_full: bool,
}

impl LinuxState {
    /// A process whose ELF image ends at `elf_end` and spans `image_bytes`.
    pub fn new(layout: Layout, cfg: LinuxConfig, elf_end: u64, image_bytes: u64) -> Self {
        let brk_start = page_up(elf_end);
        let (sandbox, cwd) = sandbox_of(&cfg);
        let blackout = cfg.blackout.clone();
        let backing = remap_backing(&layout, &cfg.remaps);
        let mmap_top = backing
            .iter()
            .map(|b| b.1)
            .min()
            .unwrap_or(layout.input_area);
        let image_bytes = image_bytes + backing.iter().map(|b| b.2).sum::<u64>();
        LinuxState {
            layout,
            cfg,
            brk_start,
            brk: brk_start,
            brk_high: brk_start,
            mmap: MmapArea {
                bottom: mmap_top,
                low_water: mmap_top,
                top: mmap_top,
                free: BTreeMap::new(),
                reserved: BTreeMap::new(),
                blackout,
            },
            image_bytes,
            sigactions: BTreeMap::new(),
            faults: signals::FaultState::default(),
            threads: threads::Threads::default(),
            timers: timers::Timers::default(),
            switched: false,
            fatal: None,
            robust_list: 0,
            rseq: 0,
            cpl0_syscalls: None,
            deadline: None,
            request_limit: None,
            syscalls: 0,
            fds: FdTable::new(),
            sandbox,
            cwd,
            may_write: true,
            net_bytes: 0,
            net_base: 0,
            net_refusals: 0,
            pt: PageTables::default(),
            said_files_full: false,
        }
    }

    /// Give the ELF segments their protections (before the vCPU first runs): code
    /// read+execute, read-only data read-only, data read-write.
    pub fn protect_segments(
        &mut self,
        mem: &mut GuestMemory,
        segments: &[(u64, u64, u32)],
    ) -> Result<(), String> {
        for &(start, end, prot) in segments {
            self.pt
                .set_range(mem, &self.layout, start, end, prot)
                .map_err(|e| format!("cannot map the ELF segments: {e:?}"))?;
        }
        self.black_out(mem, segments)?;
        // The vCPU has not run: nothing it could have cached.
        self.pt.freeze();
        Ok(())
    }

    /// `blackout_area`: the ranges inside the address space become not present. Refused when
    /// one overlaps what the program needs (system area, program segments, request-body
    /// area, stack, shared memory).
    fn black_out(
        &mut self,
        mem: &mut GuestMemory,
        segments: &[(u64, u64, u32)],
    ) -> Result<(), String> {
        let l = self.layout;
        for &(start, end) in &self.cfg.blackout {
            let what = if start < layout::USER_BASE {
                Some("the system area below 0x100000")
            } else if end > l.input_area && start < l.mem_size {
                Some(
                    "the request-body area, stack or shared memory at the top of the address space",
                )
            } else if segments
                .iter()
                .any(|&(s, e, p)| p != 0 && s < end && start < e)
            {
                Some("the program's segments")
            } else {
                None
            };
            if let Some(what) = what {
                return Err(format!(
                    "blackout_area {start:#x}..{end:#x} overlaps {what}"
                ));
            }
            let end = end.min(l.mem_size);
            if start < end {
                self.pt
                    .set_range(mem, &l, start, end, 0)
                    .map_err(|e| format!("cannot black out {start:#x}..{end:#x}: {e:?}"))?;
            }
        }
        Ok(())
    }

    /// `remapping`: map each area's virtual range onto its memory (see [`remap_backing`]) in
    /// the page tables, and make that memory unreachable at its own (identity) address: only
    /// the virtual range reaches it. Before the vCPU first runs. Returns what
    /// [`GuestMemory::set_remaps`] takes.
    pub fn map_remaps(&mut self, mem: &mut GuestMemory) -> Result<Vec<(u64, u64, u64)>, String> {
        let l = self.layout;
        let mut out = Vec::new();
        for (v, p, n, x) in remap_backing(&l, &self.cfg.remaps) {
            self.pt
                .map_alias(mem, &l, v, p, n, x)
                .map_err(|e| format!("cannot map remapping {v:#x}: {e:?}"))?;
            self.pt
                .set_range(mem, &l, p, p + n, 0)
                .map_err(|e| format!("cannot map remapping {v:#x}: {e:?}"))?;
            out.push((v, p, n));
        }
        self.pt.freeze();
        Ok(out)
    }

    /// Whether `start..end` lies inside one remapped area.
    fn in_remap(&self, start: u64, end: u64) -> bool {
        self.cfg
            .remaps
            .iter()
            .any(|&(v, n, _)| start >= v && end <= v + n && start < end)
    }

    /// The `blackout_area` ranges (the host refuses them as pointers).
    pub fn blackout_ranges(&self) -> &[(u64, u64)] {
        &self.cfg.blackout
    }

    /// The program is frozen: its page tables are the image's from now on.
    pub fn freeze_page_tables(&mut self) {
        self.pt.freeze();
    }

    /// This state replaces `prev` at a reset (a clone of the frozen state): the page-table
    /// entries `prev` changed must be re-read by the vCPU before it runs again.
    pub fn reset_from(&mut self, prev: &LinuxState) {
        self.pt.after_reset(&prev.pt);
    }

    /// Before the vCPU runs on from `rip`: where it must go instead to re-read changed
    /// page-table entries first (see [`crate::paging`]); None when nothing changed.
    pub fn page_table_redirect(&mut self, mem: &mut GuestMemory, rip: u64) -> Option<u64> {
        self.pt.redirect(mem, rip)
    }

    /// Whether changed page-table entries wait for the vCPU to re-read them.
    pub fn page_tables_pending(&self) -> bool {
        self.pt.has_pending()
    }

    /// Pool pages the page tables use (snapshots).
    pub fn page_table_pool_used(&self) -> usize {
        self.pt.pool_used()
    }

    /// The program is being frozen: the state file becomes read-only for every VM forked from
    /// this state (request VMs), including descriptors open now.
    pub fn make_files_read_only(&mut self) {
        self.may_write = false;
        self.fds.make_read_only();
    }

    /// Number of open descriptors besides stdin/stdout/stderr (and their duplicates).
    pub fn open_files(&self) -> usize {
        self.fds.count_files()
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
        if limit.is_some() {
            // A request begins: its socket byte budget too.
            self.net_base = self.net_bytes;
            self.net_refusals = 0;
        }
    }

    /// Whether the system call in `r` may make the host thread sleep (nanosleep,
    /// clock_nanosleep, a futex wait, a thread's exit, with no other thread ready to run): the
    /// runtime then makes it on a thread that may block.
    pub fn may_sleep(&self, r: &kvm_regs, mem: &GuestMemory) -> bool {
        let a = [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9];
        let blocking = match i64::try_from(r.rax) {
            Ok(
                libc::SYS_nanosleep
                | libc::SYS_clock_nanosleep
                | libc::SYS_pause
                | libc::SYS_rt_sigsuspend,
            ) => true,
            Ok(libc::SYS_rt_sigtimedwait) => {
                let th = self.threads.current();
                th.pending & mem.read_u64(r.rdi).unwrap_or(0) == 0
                    && (r.rdx == 0
                        || mem
                            .read_u64(r.rdx)
                            .is_ok_and(|s| s != 0 || mem.read_u64(r.rdx + 8).unwrap_or(0) != 0))
            }
            Ok(nr) if self.io_would_wait(nr, a, mem) => true,
            Ok(libc::SYS_futex) => {
                matches!(r.rsi & 0x7F, 0 | 9) && (r.r10 != 0 || self.thread_count() > 1)
            }
            Ok(libc::SYS_exit) => self.thread_count() > 1,
            _ => false,
        };
        blocking && !self.others_runnable()
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
        if nr != libc::SYS_rt_sigreturn as u64 {
            self.note_progress();
        }
        let t = self.threads.current_mut();
        if t.restart.is_some_and(|(n, _)| n != nr) {
            t.restart = None;
        }
        let a = [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9];
        let mut res = self.dispatch(nr, a, cpu, mem, out)?;
        if let Some(e) = self.fatal.take() {
            res = Err(e);
        }
        if std::mem::take(&mut self.switched) {
            // Another thread runs now, with its own registers.
            if self.cfg.verbose_syscalls {
                out.log(&format!(
                    "{}({:#x}, {:#x}, {:#x}) -> thread {}",
                    syscall_name(nr),
                    a[0],
                    a[1],
                    a[2],
                    self.tid()
                ));
            }
            if let Err(other) = res {
                if other != SyscallOutcome::Continue {
                    return Ok(other);
                }
            }
            return Ok(SyscallOutcome::Continue);
        }
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
                    format!("-{}", errno::name(-ret))
                } else {
                    format!("{ret:#x}")
                }
            ));
        }
        self.syscall_return(cpu, &r, ret);
        if self.timers_armed() && self.timers_due(Instant::now()) {
            if let Err(e) = self.fire_timers(Instant::now()) {
                return Ok(e);
            }
        }
        if ret != -EINTR {
            // A call that waited with its own mask is over: the thread's mask is back before
            // anything pending is delivered (an EINTR's signal runs under the call's mask,
            // and its handler's rt_sigreturn puts the thread's back).
            self.restore_saved_mask();
        }
        if self.signal_ready() {
            // A timer's signal (or one a woken wait left): its handler runs over the
            // system call's return.
            let ctx = threads::after_syscall(&r, ret);
            if let Err(e) = self.deliver_pending(ctx, true, cpu, mem)? {
                return Ok(e);
            }
            self.switched = false;
        }
        // A waiting call's own mask ends with it (a handler that ran took it over).
        self.restore_saved_mask();
        Ok(SyscallOutcome::Continue)
    }

    /// End the system call the guest stands at with `ret`, without emulating it: for calls
    /// the caller serves itself (the TCP server mode's connection numbers).
    pub fn return_from_syscall(&mut self, cpu: &mut dyn Vcpu, ret: i64) {
        self.syscalls += 1;
        let r = *cpu.regs();
        self.syscall_return(cpu, &r, ret);
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

    /// The system call `nr` with arguments `a`: Err(Continue) for calls not emulated (ENOSYS),
    /// Err(other outcome) for calls that end the run.
    #[allow(clippy::type_complexity)]
    fn dispatch(
        &mut self,
        nr: u64,
        a: [u64; 6],
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
        out: &mut dyn Output,
    ) -> Result<Result<i64, SyscallOutcome>, KvmError> {
        let Ok(nr) = i64::try_from(nr) else {
            return Ok(Err(SyscallOutcome::Continue));
        };
        if let Some(v) = self.waiting_call(nr, a, cpu, mem, out) {
            return v;
        }
        if let Some(v) = self.fd_call(nr, a, mem, out) {
            return Ok(Ok(v));
        }
        if let Some(v) = self.mem_call(nr, a, mem) {
            return Ok(Ok(v));
        }
        self.process_call(nr, a, cpu, mem)
    }
}

/// The sandbox (allowed_paths and the state file at `/state`) and the normalized working
/// directory of a process with this configuration.
fn sandbox_of(cfg: &LinuxConfig) -> (Arc<Sandbox>, Vec<u8>) {
    let mut rules = cfg.allowed_paths.clone();
    if let Some(state) = &cfg.state_file {
        rules.push(PathRule {
            virt: b"/state".to_vec(),
            real: state.clone(),
            prefix: false,
            writable: true,
            symlink: false,
        });
    }
    // The host's resolver configuration, read-only at its own paths, unless the configuration
    // names those paths itself (the guest's resolver reads them: fds/socket.rs).
    let configured = Sandbox::new(rules.clone());
    for f in fds::RESOLVER_FILES {
        if configured.resolve(f.as_bytes()).is_err() && std::path::Path::new(f).is_file() {
            rules.push(PathRule {
                virt: f.as_bytes().to_vec(),
                real: f.into(),
                prefix: false,
                writable: false,
                symlink: false,
            });
        }
    }
    let sandbox = Arc::new(Sandbox::new(rules));
    let cwd = crate::sandbox::normalize(b"/", cfg.cwd.as_bytes())
        .map(|mut c| {
            if c.len() > 1 && c.ends_with(b"/") {
                c.pop();
            }
            c
        })
        .unwrap_or_else(|_| b"/".to_vec());
    (sandbox, cwd)
}

fn wr(mem: &mut GuestMemory, addr: u64, data: &[u8]) -> i64 {
    match mem.write(addr, data) {
        Ok(()) => 0,
        Err(_) => -EFAULT,
    }
}
