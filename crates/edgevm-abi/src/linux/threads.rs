//! Threads: `clone`/`clone3` (the flags pthreads, Go and Rust std use), futexes, `sched_yield`,
//! per-thread `exit`, `set_tid_address`, and the host-side scheduler.
//!
//! The threads of a program share its one vCPU: they are green threads the host switches
//! between when the running one blocks (a futex wait, a sleep, `sched_yield`, its exit) and,
//! through [`LinuxState::preempt`], when its time slice ends. A thread that is not running is
//! its saved user-mode registers, FS/GS bases and XSAVE image; switching costs a few ioctls
//! (GET/SET_SREGS, GET/SET_XSAVE) and no VM exit. When every thread waits, the host sleeps until
//! the earliest timeout; when none has a timeout, the program is deadlocked and the run fails
//! with that message. At most [`MAX_THREADS`] threads exist at once (`clone` then fails with
//! `EAGAIN`). The thread list is part of [`LinuxState`], so it is frozen with the program and
//! every request VM starts from (and is reset to) the threads that existed at the freeze.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgevm_kvm::{kvm_regs, GuestMemory, KvmError, Vcpu};

use super::process::host_clock;
use super::{LinuxState, SyscallOutcome, SYSRET_RFLAGS_MASK};
use crate::errno::*;
use crate::linux_abi::{get, Timespec};

/// Threads per program (VM) at once, the main thread included.
pub const MAX_THREADS: usize = 64;

const CLONE_VM: u64 = 0x100;
const CLONE_FS: u64 = 0x200;
const CLONE_FILES: u64 = 0x400;
const CLONE_SIGHAND: u64 = 0x800;
const CLONE_THREAD: u64 = 0x10000;
const CLONE_SYSVSEM: u64 = 0x40000;
const CLONE_SETTLS: u64 = 0x80000;
const CLONE_PARENT_SETTID: u64 = 0x100000;
const CLONE_CHILD_CLEARTID: u64 = 0x200000;
const CLONE_DETACHED: u64 = 0x400000;
const CLONE_UNTRACED: u64 = 0x800000;
const CLONE_CHILD_SETTID: u64 = 0x1000000;
/// What a thread needs: one address space, one thread group, shared handlers.
const THREAD_FLAGS: u64 = CLONE_VM | CLONE_THREAD | CLONE_SIGHAND;
/// Every flag a thread may add (the low byte is the exit signal, ignored for threads).
const ALLOWED_FLAGS: u64 = THREAD_FLAGS
    | CLONE_FS
    | CLONE_FILES
    | CLONE_SYSVSEM
    | CLONE_SETTLS
    | CLONE_PARENT_SETTID
    | CLONE_CHILD_CLEARTID
    | CLONE_DETACHED
    | CLONE_UNTRACED
    | CLONE_CHILD_SETTID
    | 0xFF;

/// What a thread is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Ready to run (or running).
    Runnable,
    /// In a futex wait on `addr` for the wake-ups in `bitset`.
    Futex { addr: u64, bitset: u32 },
    /// Sleeping (nanosleep) until its timeout.
    Sleep,
    /// Waiting for descriptors (`io`), to run its system call again (see wait.rs).
    Io,
    /// In pause(): until a signal runs a handler.
    Pause,
    /// Gone (removed at the next switch).
    Exited,
}

/// One thread of the program.
#[derive(Debug, Clone)]
pub(super) struct Thread {
    pub tid: u32,
    /// User-mode registers to resume with (stale while the thread runs).
    pub(super) regs: kvm_regs,
    fs_base: u64,
    gs_base: u64,
    /// XSAVE image to resume with (None: the thread never ran, or KVM has no XSAVE).
    fpu: Option<Arc<[u8]>>,
    /// set_tid_address / CLONE_CHILD_CLEARTID: zeroed and woken when the thread exits.
    pub clear_tid: u64,
    /// Blocked signals.
    pub sigmask: u64,
    /// The mask before a call that waits with a mask of its own (ppoll, pselect6,
    /// epoll_pwait, rt_sigsuspend): put back when the call returns, or by the handler's
    /// `rt_sigreturn` when a signal ends it (the handler's frame carries this one).
    pub saved_mask: Option<u64>,
    /// The signals an `rt_sigtimedwait` of this thread waits for (0: none).
    pub sigwait: u64,
    /// Signals sent to it and not delivered yet (blocked, or it was not running).
    pub pending: u64,
    /// What each pending signal's siginfo says.
    pub pending_info: std::collections::BTreeMap<u64, super::signals::SigInfo>,
    /// Its alternate signal stack (sp, size; size 0: none).
    pub altstack: (u64, u64),
    pub(super) wait: Wait,
    /// It stopped at a system call (not preempted): RCX and R11 hold nothing of its own.
    at_syscall: bool,
    /// When a waiting thread gives up: it then returns `timeout_ret`.
    pub(super) until: Option<Instant>,
    timeout_ret: i64,
    /// What it waits for in [`Wait::Io`].
    pub io: super::fds::Interest,
    /// The call it runs again after a [`Wait::Io`], and that call's deadline.
    pub restart: Option<(u64, Option<Instant>)>,
}

impl Thread {
    /// A signal ends its wait: the call returns EINTR.
    pub(super) fn interrupt(&mut self) {
        if self.wait == Wait::Io {
            // It would run its call again (RIP at the `syscall`): return from it instead.
            self.regs.rip = self.regs.rip.wrapping_add(2);
            self.io.clear();
            self.restart = None;
        }
        self.wait = Wait::Runnable;
        self.until = None;
        self.sigwait = 0;
        self.regs.rax = (-EINTR) as u64;
    }

    fn new(tid: u32) -> Thread {
        Thread {
            tid,
            regs: kvm_regs::default(),
            fs_base: 0,
            gs_base: 0,
            fpu: None,
            clear_tid: 0,
            sigmask: 0,
            saved_mask: None,
            sigwait: 0,
            pending: 0,
            pending_info: Default::default(),
            altstack: (0, 0),
            wait: Wait::Runnable,
            at_syscall: true,
            until: None,
            timeout_ret: 0,
            io: Vec::new(),
            restart: None,
        }
    }
}

/// The threads of a program and which one runs.
#[derive(Debug, Clone)]
pub(super) struct Threads {
    pub list: Vec<Thread>,
    pub cur: usize,
    next_tid: u32,
}

impl Default for Threads {
    fn default() -> Self {
        Threads {
            list: vec![Thread::new(1)],
            cur: 0,
            next_tid: 2,
        }
    }
}

impl Threads {
    pub fn current(&self) -> &Thread {
        &self.list[self.cur]
    }

    pub fn current_mut(&mut self) -> &mut Thread {
        &mut self.list[self.cur]
    }

    /// Threads other than the running one that could run now.
    fn others_runnable(&self) -> bool {
        self.list
            .iter()
            .enumerate()
            .any(|(i, t)| i != self.cur && t.wait == Wait::Runnable)
    }

    /// Wake up to `n` threads waiting on `addr` for a bit of `bitset`; returns how many.
    fn wake(&mut self, addr: u64, bitset: u32, n: u64) -> u64 {
        let mut woken = 0;
        for t in self.list.iter_mut() {
            if woken >= n {
                break;
            }
            if let Wait::Futex { addr: a, bitset: b } = t.wait {
                if a == addr && b & bitset != 0 {
                    t.wait = Wait::Runnable;
                    t.until = None;
                    t.regs.rax = 0;
                    woken += 1;
                }
            }
        }
        woken
    }

    /// Move up to `n` waiters on `from` to wait on `to`; returns how many.
    fn requeue(&mut self, from: u64, to: u64, n: u64) -> u64 {
        let mut moved = 0;
        for t in self.list.iter_mut() {
            if moved >= n {
                break;
            }
            if let Wait::Futex { addr, bitset } = t.wait {
                if addr == from {
                    t.wait = Wait::Futex { addr: to, bitset };
                    moved += 1;
                }
            }
        }
        moved
    }

    /// Wake every waiter whose timeout has passed (one waiting for descriptors runs its call
    /// again, which answers the timeout).
    fn wake_expired(&mut self, now: Instant) {
        for t in self.list.iter_mut() {
            if t.wait == Wait::Io && t.until.is_some_and(|u| u <= now) {
                t.wait = Wait::Runnable;
                t.io.clear();
                continue;
            }
            if matches!(t.wait, Wait::Futex { .. } | Wait::Sleep)
                && t.until.is_some_and(|u| u <= now)
            {
                t.wait = Wait::Runnable;
                t.until = None;
                t.regs.rax = t.timeout_ret as u64;
            }
        }
    }

    /// The next runnable thread after the current one (round robin), the current one last.
    fn next_runnable(&self) -> Option<usize> {
        let n = self.list.len();
        (1..=n)
            .map(|k| (self.cur + k) % n)
            .find(|&i| self.list[i].wait == Wait::Runnable)
    }
}

/// Registers a thread resumes with after the system call in `r` returns `ret` (what SYSRETQ
/// would do).
pub(super) fn after_syscall(r: &kvm_regs, ret: i64) -> kvm_regs {
    let mut u = *r;
    u.rax = ret as u64;
    u.rip = r.rcx;
    // Never IOPL: a program reaching the system call port with an `out` of its own chooses
    // R11, and these flags are loaded as they are when the thread resumes.
    u.rflags = (r.r11 & SYSRET_RFLAGS_MASK & !0x3000) | 2;
    u
}

/// Why a blocked call's thread is not resumed at once.
pub(super) enum Blocked {
    /// The call returns this in the same thread (it did not have to wait after all).
    Now(i64),
    /// Another thread runs now: the vCPU's registers are set, nothing to return.
    Switched,
}

impl LinuxState {
    /// The running thread's id.
    pub fn tid(&self) -> u32 {
        self.threads.current().tid
    }

    /// Threads that exist (running, runnable or waiting).
    pub fn thread_count(&self) -> usize {
        self.threads.list.len()
    }

    /// Whether another thread is ready to run: the runtime then gives the running one a time
    /// slice and calls [`LinuxState::preempt`] when it ends.
    pub fn others_runnable(&self) -> bool {
        self.threads.others_runnable()
    }

    /// Whether the running thread needs a time slice: another thread is ready, or waits for
    /// something that may become ready while this one runs (descriptors, a timeout): at the
    /// end of the slice [`LinuxState::preempt`] looks.
    pub fn needs_slice(&self) -> bool {
        let cur = self.threads.cur;
        self.threads.list.iter().enumerate().any(|(i, t)| {
            i != cur && (t.wait == Wait::Runnable || t.wait == Wait::Io || t.until.is_some())
        })
    }

    /// The time slice of the running thread is over: switch to the next runnable thread (after
    /// waking those whose timeouts passed). False when the vCPU stays on the same thread.
    pub fn preempt(
        &mut self,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<Result<bool, SyscallOutcome>, KvmError> {
        let r = *cpu.regs();
        // Stopped at CPL0 (in the system call stub on hardware KVM, or in the exception stub
        // before its exit): not a user-mode state to save, and the next thread must not run
        // with a CPL0 code segment. The next slice will do (one GET_SREGS per slice end).
        if cpu.sregs()?.cs.dpl != 3 {
            return Ok(Ok(false));
        }
        self.threads.wake_expired(Instant::now());
        self.wake_ready();
        let Some(next) = self.threads.next_runnable() else {
            return Ok(Ok(false));
        };
        if next == self.threads.cur {
            return Ok(Ok(false));
        }
        self.threads.current_mut().regs = r;
        self.switch_to(cpu, mem, next, false)?;
        // Not in a system call: nothing for `handle` to skip.
        self.switched = false;
        Ok(match self.fatal.take() {
            Some(e) => Err(e),
            None => Ok(true),
        })
    }

    /// Save the running thread's FS/GS bases and FPU state, and load thread `next`'s (its
    /// registers, bases and FPU state). `in_syscall`: the vCPU stopped at a system call, so on
    /// hardware KVM it is in the CPL0 system call stub and must get back to user mode: through
    /// the stub's SYSRETQ when `next` also stopped at a system call (RCX/R11 are the return
    /// address and flags), else with user-mode segments (one SET_SREGS). No SET_SREGS
    /// otherwise: under kvm_pvm it would cost a reload of the shadow page tables.
    pub(super) fn switch_to(
        &mut self,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
        next: usize,
        in_syscall: bool,
    ) -> Result<(), KvmError> {
        {
            let (fs, gs) = (cpu.fs_base(), cpu.gs_base());
            let fpu = cpu.xsave_state().map(Arc::from);
            let cur = self.threads.current_mut();
            cur.fs_base = fs;
            cur.gs_base = gs;
            cur.fpu = fpu;
            cur.at_syscall = in_syscall;
        }
        self.threads.cur = next;
        // Drop exited threads (indices after removal shift).
        let cur_tid = self.threads.list[next].tid;
        self.threads.list.retain(|t| t.wait != Wait::Exited);
        self.threads.cur = self
            .threads
            .list
            .iter()
            .position(|t| t.tid == cur_tid)
            .unwrap_or(0);
        let n = self.threads.current().clone();
        let mut regs = n.regs;
        let signal = n.pending & !n.sigmask != 0;
        if in_syscall && self.cpl0_syscalls == Some(true) {
            // SYSRETQ only to a canonical address: on Intel CPUs a non-canonical RCX faults at
            // CPL0 on the program's stack (its RIP came from RCX, which a program reaching
            // the port with its own `out` chooses).
            if n.at_syscall && !signal && n.regs.rip < (1 << 47) - 4096 {
                regs.rip = crate::layout::SYSCALL_ENTRY + 2; // the stub's sysretq
                regs.rcx = n.regs.rip;
                regs.r11 = n.regs.rflags;
            } else {
                let mut s = cpu.sregs()?;
                crate::cpu::user_segments(&mut s);
                cpu.set_sregs(&s)?;
            }
        }
        if cpu.fs_base() != n.fs_base {
            cpu.set_fs_base(n.fs_base)?;
        }
        if cpu.gs_base() != n.gs_base {
            cpu.set_gs_base(n.gs_base)?;
        }
        if let Some(f) = &n.fpu {
            cpu.set_xsave_state(f)?;
        }
        *cpu.regs_mut() = regs;
        self.switched = true;
        if signal {
            // A signal sent to it while it was not running: its handler runs first.
            if let Err(e) = self.deliver_pending(regs, false, cpu, mem)? {
                self.fatal = Some(e);
            }
            self.switched = true;
        }
        Ok(())
    }

    /// Block the running thread (it made the system call in `cpu.regs()`) in `wait` until
    /// `until` (then returning `timeout_ret`), and run another thread; with none to run, sleep
    /// on the host until the earliest timeout. Err: the run ends (deadlock, deadline).
    pub(super) fn block(
        &mut self,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
        wait: Wait,
        until: Option<Instant>,
        timeout_ret: i64,
    ) -> Result<Result<Blocked, SyscallOutcome>, KvmError> {
        let r = *cpu.regs();
        {
            let t = self.threads.current_mut();
            t.regs = after_syscall(&r, 0);
            t.wait = wait;
            t.until = until;
            t.timeout_ret = timeout_ret;
        }
        let next = match self.pick_next() {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        if next == self.threads.cur {
            let t = self.threads.current_mut();
            t.wait = Wait::Runnable;
            return Ok(Ok(Blocked::Now(t.regs.rax as i64)));
        }
        self.switch_to(cpu, mem, next, true)?;
        Ok(Ok(Blocked::Switched))
    }

    /// The thread to run next: wakes expired waiters, sleeps on the host while nothing can run.
    pub(super) fn pick_next(&mut self) -> Result<usize, SyscallOutcome> {
        loop {
            let now = Instant::now();
            self.threads.wake_expired(now);
            self.wake_ready();
            if self.timers_due(now) {
                self.fire_timers(now)?;
            }
            if let Some(i) = self.threads.next_runnable() {
                return Ok(i);
            }
            let (mut host, timer) = self.io_waits();
            let earliest = self
                .threads
                .list
                .iter()
                .filter(|t| t.wait != Wait::Exited)
                .filter_map(|t| t.until)
                .chain(timer)
                .chain(self.next_timer())
                .min();
            if earliest.is_none() && !host.is_empty() {
                // Only host descriptors can wake a thread: wait for them, up to the deadline.
                super::wait::host_wait(&mut host, self.deadline);
                if self.deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(SyscallOutcome::DeadlineExceeded);
                }
                continue;
            }
            let Some(at) = earliest else {
                let waiting = self
                    .threads
                    .list
                    .iter()
                    .filter(|t| t.wait != Wait::Exited)
                    .count();
                if self.threads.current().wait == Wait::Pause && waiting <= 1 {
                    return Err(SyscallOutcome::Fatal(
                        "pause() with no timer and no other thread to send a signal: it would never return (deadlock)".into(),
                    ));
                }
                let io = self.threads.list.iter().any(|t| t.wait == Wait::Io);
                return Err(SyscallOutcome::Fatal(match (waiting <= 1, io) {
                    (true, false) => "futex wait with no timeout and no other thread to wake it: it would never wake up (deadlock)".into(),
                    (true, true) => "a wait for descriptors no other thread can make ready, with no timeout: it would never wake up (deadlock)".into(),
                    (false, false) => format!("deadlock: all {waiting} threads wait on futexes with no timeout"),
                    (false, true) => format!("deadlock: all {waiting} threads wait (futexes, descriptors no thread can make ready) with no timeout"),
                }));
            };
            if let Some(deadline) = self.deadline {
                if at > deadline {
                    super::wait::host_wait(&mut host, Some(deadline));
                    if Instant::now() >= deadline {
                        return Err(SyscallOutcome::DeadlineExceeded);
                    }
                    continue;
                }
            }
            super::wait::host_wait(&mut host, Some(at));
        }
    }

    /// clone(flags, stack, parent_tid, child_tid, tls).
    pub(super) fn sys_clone(
        &mut self,
        a: [u64; 6],
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<i64, KvmError> {
        self.new_thread(a[0], a[1], a[2], a[3], a[4], cpu, mem)
    }

    /// clone3(args, size).
    pub(super) fn sys_clone3(
        &mut self,
        a: [u64; 6],
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<i64, KvmError> {
        // struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, stack,
        // stack_size, tls (CLONE_ARGS_SIZE_VER0 = 64), then set_tid, set_tid_size, cgroup.
        if a[1] < 64 || a[1] > 4096 {
            return Ok(-EINVAL);
        }
        let mut w = [0u64; 11];
        let n = (a[1] as usize).min(88) / 8;
        for (i, slot) in w.iter_mut().take(n).enumerate() {
            match mem.read_u64(a[0].wrapping_add(8 * i as u64)) {
                Ok(v) => *slot = v,
                Err(_) => return Ok(-EFAULT),
            }
        }
        // pidfd is only read with CLONE_PIDFD (refused below).
        let [flags, _pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup] =
            w;
        if set_tid != 0 || set_tid_size != 0 || cgroup != 0 || exit_signal > 64 {
            return Ok(-EINVAL);
        }
        if flags & 0xFF != 0 {
            return Ok(-EINVAL);
        }
        let sp = if stack != 0 {
            stack.wrapping_add(stack_size)
        } else {
            0
        };
        self.new_thread(flags, sp, parent_tid, child_tid, tls, cpu, mem)
    }

    #[allow(clippy::too_many_arguments)]
    fn new_thread(
        &mut self,
        flags: u64,
        stack: u64,
        parent_tid: u64,
        child_tid: u64,
        tls: u64,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<i64, KvmError> {
        if flags & THREAD_FLAGS != THREAD_FLAGS {
            // fork, vfork, posix_spawn's CLONE_VM|CLONE_VFORK: no processes in a VM.
            return Ok(-ENOSYS);
        }
        if flags & !ALLOWED_FLAGS != 0 {
            return Ok(-EINVAL);
        }
        const TASK_SIZE_MAX: u64 = (1 << 47) - 4096;
        if flags & CLONE_SETTLS != 0 && tls >= TASK_SIZE_MAX {
            return Ok(-EPERM);
        }
        if self.threads.list.len() >= MAX_THREADS {
            return Ok(-EAGAIN);
        }
        let tid = self.threads.next_tid;
        if flags & CLONE_PARENT_SETTID != 0 && mem.write(parent_tid, &tid.to_le_bytes()).is_err() {
            return Ok(-EFAULT);
        }
        if flags & CLONE_CHILD_SETTID != 0 && mem.write(child_tid, &tid.to_le_bytes()).is_err() {
            return Ok(-EFAULT);
        }
        self.threads.next_tid = self.threads.next_tid.wrapping_add(1).max(2);
        let r = *cpu.regs();
        let mut t = Thread::new(tid);
        t.regs = after_syscall(&r, 0);
        if stack != 0 {
            t.regs.rsp = stack;
        }
        t.fs_base = if flags & CLONE_SETTLS != 0 {
            tls
        } else {
            cpu.fs_base()
        };
        t.gs_base = cpu.gs_base();
        t.fpu = cpu.xsave_state().map(Arc::from);
        if flags & CLONE_CHILD_CLEARTID != 0 {
            t.clear_tid = child_tid;
        }
        t.sigmask = self.threads.current().sigmask;
        self.threads.list.push(t);
        Ok(i64::from(tid))
    }

    /// exit(): this thread ends (its clear-child-tid word zeroed and woken); the last one
    /// ends the program with `code`.
    pub(super) fn sys_exit_thread(
        &mut self,
        code: i32,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<Result<i64, SyscallOutcome>, KvmError> {
        if self.threads.list.len() <= 1 {
            return Ok(Err(SyscallOutcome::Exit(code)));
        }
        let ct = self.threads.current().clear_tid;
        if ct != 0 && mem.write(ct, &0u32.to_le_bytes()).is_ok() {
            self.threads.wake(ct, u32::MAX, 1);
        }
        self.threads.current_mut().wait = Wait::Exited;
        if self.threads.list.iter().all(|t| t.wait == Wait::Exited) {
            return Ok(Err(SyscallOutcome::Exit(code)));
        }
        let next = match self.pick_next() {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        self.switch_to(cpu, mem, next, true)?;
        Ok(Ok(0))
    }

    /// sched_yield(): let the next runnable thread run.
    pub(super) fn sys_sched_yield(
        &mut self,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<i64, KvmError> {
        self.threads.wake_expired(Instant::now());
        self.wake_ready();
        if !self.threads.others_runnable() {
            return Ok(0);
        }
        let r = *cpu.regs();
        self.threads.current_mut().regs = after_syscall(&r, 0);
        let Some(next) = self.threads.next_runnable() else {
            return Ok(0);
        };
        self.switch_to(cpu, mem, next, true)?;
        Ok(0)
    }

    /// nanosleep with other threads: this one waits, the others run.
    pub(super) fn sleep_thread(
        &mut self,
        dur: Duration,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<Result<i64, SyscallOutcome>, KvmError> {
        let until = Instant::now() + dur;
        Ok(match self.block(cpu, mem, Wait::Sleep, Some(until), 0)? {
            Ok(Blocked::Now(v)) => Ok(v),
            Ok(Blocked::Switched) => Ok(0),
            Err(e) => Err(e),
        })
    }

    /// pause(): the thread waits until a signal runs a handler (then EINTR).
    pub(super) fn sys_pause(
        &mut self,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<Result<i64, SyscallOutcome>, KvmError> {
        Ok(match self.block(cpu, mem, Wait::Pause, None, -EINTR)? {
            Ok(Blocked::Now(v)) => Ok(v),
            Ok(Blocked::Switched) => Ok(0),
            Err(e) => Err(e),
        })
    }

    /// futex(uaddr, op, val, timeout/val2, uaddr2, val3).
    pub(super) fn sys_futex(
        &mut self,
        a: [u64; 6],
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<Result<i64, SyscallOutcome>, KvmError> {
        let (addr, op, val) = (a[0], a[1] & 0x7F, a[2]);
        if addr & 3 != 0 {
            return Ok(Ok(-EINVAL));
        }
        let Ok(word) = read_u32(mem, addr) else {
            return Ok(Ok(-EFAULT));
        };
        let v = match op {
            // WAIT, WAIT_BITSET
            0 | 9 => {
                let bitset = if op == 9 { a[5] as u32 } else { u32::MAX };
                if bitset == 0 {
                    return Ok(Ok(-EINVAL));
                }
                let until = match futex_deadline(mem, a, op) {
                    Ok(u) => u,
                    Err(e) => return Ok(Ok(e)),
                };
                if word != val as u32 {
                    return Ok(Ok(-EAGAIN));
                }
                return Ok(
                    match self.block(cpu, mem, Wait::Futex { addr, bitset }, until, -ETIMEDOUT)? {
                        Ok(Blocked::Now(v)) => Ok(v),
                        Ok(Blocked::Switched) => Ok(0),
                        Err(e) => Err(e),
                    },
                );
            }
            // WAKE, WAKE_BITSET
            1 | 10 => {
                let bitset = if op == 10 { a[5] as u32 } else { u32::MAX };
                if bitset == 0 {
                    return Ok(Ok(-EINVAL));
                }
                self.threads.wake(addr, bitset, val.min(i32::MAX as u64)) as i64
            }
            // REQUEUE, CMP_REQUEUE
            3 | 4 => {
                let (nwake, nmove, addr2) = (val as i32, a[3] as i32, a[4]);
                if nwake < 0 || nmove < 0 || addr2 & 3 != 0 {
                    return Ok(Ok(-EINVAL));
                }
                if read_u32(mem, addr2).is_err() {
                    return Ok(Ok(-EFAULT));
                }
                if op == 4 && word != a[5] as u32 {
                    return Ok(Ok(-EAGAIN));
                }
                let woken = self.threads.wake(addr, u32::MAX, nwake as u64);
                let moved = self.threads.requeue(addr, addr2, nmove as u64);
                (if op == 4 { woken + moved } else { woken }) as i64
            }
            // WAKE_OP
            5 => self.futex_wake_op(mem, addr, val, a),
            // The priority-inheritance operations: pthreads uses them only for PI mutexes.
            _ => -ENOSYS,
        };
        Ok(Ok(v))
    }

    /// FUTEX_WAKE_OP: change the word at `a[4]`, wake `val` waiters on `addr` and, if the old
    /// word passes the encoded comparison, `a[3]` on `a[4]`.
    fn futex_wake_op(&mut self, mem: &mut GuestMemory, addr: u64, val: u64, a: [u64; 6]) -> i64 {
        let addr2 = a[4];
        if addr2 & 3 != 0 {
            return -EINVAL;
        }
        let Ok(old) = read_u32(mem, addr2) else {
            return -EFAULT;
        };
        let enc = a[5] as u32;
        let (wop, cmp) = ((enc >> 28) & 0xF, (enc >> 24) & 0xF);
        let mut oparg = (enc >> 12) & 0xFFF;
        let cmparg = enc & 0xFFF;
        if wop & 8 != 0 {
            // FUTEX_OP_OPARG_SHIFT
            if oparg > 31 {
                return -EINVAL;
            }
            oparg = 1 << oparg;
        }
        let new = match wop & 7 {
            0 => oparg,
            1 => old.wrapping_add(oparg),
            2 => old | oparg,
            3 => old & !oparg,
            4 => old ^ oparg,
            _ => return -ENOSYS,
        };
        if mem.write(addr2, &new.to_le_bytes()).is_err() {
            return -EFAULT;
        }
        let (o, c) = (old as i32, cmparg as i32);
        let hit = match cmp {
            0 => o == c,
            1 => o != c,
            2 => o < c,
            3 => o <= c,
            4 => o > c,
            5 => o >= c,
            _ => return -ENOSYS,
        };
        let mut n = self.threads.wake(addr, u32::MAX, val.min(i32::MAX as u64));
        if hit {
            n += self
                .threads
                .wake(addr2, u32::MAX, a[3].min(i32::MAX as u64));
        }
        n as i64
    }

    /// The index of thread `tid`, if it exists.
    pub(super) fn thread_index(&self, tid: i64) -> Option<usize> {
        self.threads
            .list
            .iter()
            .position(|t| i64::from(t.tid) == tid && t.wait != Wait::Exited)
    }
}

fn read_u32(mem: &GuestMemory, addr: u64) -> Result<u32, ()> {
    let mut w = [0u8; 4];
    mem.read(addr, &mut w).map_err(|_| ())?;
    Ok(u32::from_le_bytes(w))
}

/// The end of a futex wait: none without a timeout; `a[3]` is relative for FUTEX_WAIT and
/// absolute for FUTEX_WAIT_BITSET (CLOCK_MONOTONIC unless FUTEX_CLOCK_REALTIME). Err(-errno).
fn futex_deadline(mem: &GuestMemory, a: [u64; 6], op: u64) -> Result<Option<Instant>, i64> {
    const FUTEX_CLOCK_REALTIME: u64 = 256;
    if a[3] == 0 {
        return Ok(None);
    }
    let Some(Timespec { tv_sec, tv_nsec }) = get(mem, a[3]) else {
        return Err(-EFAULT);
    };
    if tv_sec < 0 || !(0..1_000_000_000).contains(&tv_nsec) {
        return Err(-EINVAL);
    }
    let t = Duration::new(tv_sec as u64, tv_nsec as u32);
    let dur = if op == 9 {
        // Absolute, on CLOCK_MONOTONIC unless FUTEX_CLOCK_REALTIME.
        let clk = if a[1] & FUTEX_CLOCK_REALTIME != 0 {
            libc::CLOCK_REALTIME
        } else {
            libc::CLOCK_MONOTONIC
        };
        let (s, ns) = host_clock(clk);
        t.saturating_sub(Duration::new(s.max(0) as u64, ns as u32))
    } else {
        t
    };
    Ok(Some(Instant::now() + dur.min(Duration::from_secs(1 << 32))))
}
