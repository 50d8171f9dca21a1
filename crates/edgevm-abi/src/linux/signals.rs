//! Signals: handlers installed with `rt_sigaction` run for `kill`/`tkill`/`tgkill` sent by
//! the program to itself or to one of its threads, on the alternate stack when one is set
//! (`sigaltstack`, per thread) and asked for (`SA_ONSTACK`), with the Linux x86_64 frame
//! (`rt_sigframe`: return address = `sa_restorer`, `ucontext` with the interrupted registers
//! and signal mask, `siginfo`, the FXSAVE image); `rt_sigreturn` restores them. Signal masks
//! and pending signals are per thread: a blocked signal waits until it is unblocked. A signal
//! for another thread is delivered when that thread next runs. Default actions: ignore for
//! SIGCHLD/SIGURG/SIGWINCH, else the program ends with the signal.
//!
//! CPU faults in user mode ([`LinuxState::deliver_fault`]) become SIGSEGV (page faults, #GP),
//! SIGFPE (#DE, x87/SIMD exceptions), SIGILL (#UD), SIGBUS (#AC, #SS, #NP) or SIGTRAP (#BP,
//! #DB) with Linux's si_code, si_addr and sigcontext `err`/`trapno`/`cr2`, when the program
//! installed a handler that the faulting thread does not block; as on Linux a fault whose signal
//! is blocked (a fault inside its own handler), ignored or has no handler ends the program, here
//! with the crash report. A handler that returns to the faulting instruction without changing
//! anything faults again: after [`MAX_FAULT_REPEATS`] identical faults with no other system
//! call in between the run ends with the crash report instead of spinning until its deadline.

use edgevm_kvm::{kvm_regs, GuestMemory, KvmError, Vcpu};

use super::{LinuxState, SyscallOutcome};
use crate::errno::*;
use crate::linux_abi::{get, put, StackT};

const SA_ONSTACK: u64 = 0x0800_0000;
const SA_RESTORER: u64 = 0x0400_0000;
const SA_NODEFER: u64 = 0x4000_0000;
const SA_RESETHAND: u64 = 0x8000_0000;
const SS_ONSTACK: i32 = 1;
const SS_DISABLE: i32 = 2;
const MINSIGSTKSZ: u64 = 2048;
/// SIGKILL and SIGSTOP: never blocked.
pub(super) const UNBLOCKABLE: u64 = (1 << 8) | (1 << 18);
/// siginfo codes.
pub(super) const SI_USER: i32 = 0;
pub(super) const SI_TKILL: i32 = -6;
pub(super) const SI_TIMER: i32 = -2;
pub(super) const SI_KERNEL: i32 = 0x80;
/// Identical faults in a row (same vector, RIP and address, no other system call than
/// `rt_sigreturn` in between) after which a handler is taken to loop: the run ends.
pub const MAX_FAULT_REPEATS: u32 = 1000;
/// Size of `struct ucontext` (flags, link, stack, sigcontext, sigmask).
const UCONTEXT: u64 = 8 + 8 + 24 + 256 + 8;
/// Size of `struct siginfo`.
const SIGINFO: u64 = 128;
/// The RFLAGS bits a handler's `ucontext` may change on return (AC, OF, DF, SF, ZF, AF, PF,
/// CF), as Linux's FIX_EFLAGS less TF and RF.
const FIX_EFLAGS: u64 = 0x4_0CD5;

/// Linux's `siginfo_t` for `sig` as `info` describes it.
fn siginfo_bytes(sig: u64, info: &SigInfo) -> [u8; SIGINFO as usize] {
    let (code, addr, err) = (info.code, info.addr, info.err);
    let mut si = [0u8; SIGINFO as usize];
    si[0..4].copy_from_slice(&(sig as i32).to_le_bytes());
    si[8..12].copy_from_slice(&code.to_le_bytes());
    if code == SI_USER || code == SI_TKILL {
        si[16..20].copy_from_slice(&1i32.to_le_bytes()); // si_pid
    } else if code == SI_TIMER {
        // si_timerid, si_overrun, si_value (`addr` carries the value, `err` the id and
        // overrun count).
        si[16..20].copy_from_slice(&(err as i32).to_le_bytes());
        si[20..24].copy_from_slice(&((err >> 32) as i32).to_le_bytes());
        si[24..32].copy_from_slice(&addr.to_le_bytes());
    } else {
        si[16..24].copy_from_slice(&addr.to_le_bytes()); // si_addr
    }
    si
}

/// Linux's `struct signalfd_siginfo` for `sig` as `info` describes it.
fn signalfd_siginfo(sig: u64, info: &SigInfo) -> [u8; SIGINFO as usize] {
    let mut b = [0u8; SIGINFO as usize];
    b[0..4].copy_from_slice(&(sig as u32).to_le_bytes());
    b[8..12].copy_from_slice(&info.code.to_le_bytes());
    if info.code == SI_USER || info.code == SI_TKILL {
        b[12..16].copy_from_slice(&1u32.to_le_bytes()); // ssi_pid
    } else if info.code == SI_TIMER {
        // ssi_tid (the timer id), ssi_overrun, ssi_int and ssi_ptr (the sigevent's value).
        b[24..28].copy_from_slice(&(info.err as u32).to_le_bytes());
        b[32..36].copy_from_slice(&((info.err >> 32) as u32).to_le_bytes());
        b[44..48].copy_from_slice(&(info.addr as u32).to_le_bytes());
        b[48..56].copy_from_slice(&info.addr.to_le_bytes());
    } else {
        b[36..40].copy_from_slice(&(info.trapno as u32).to_le_bytes()); // ssi_trapno
        b[72..80].copy_from_slice(&info.addr.to_le_bytes()); // ssi_addr
    }
    b
}

fn bit(sig: u64) -> u64 {
    1 << (sig - 1)
}

/// The sigcontext registers in their order in `struct sigcontext_64`.
fn sigcontext_regs(r: &kvm_regs) -> [u64; 18] {
    [
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx, r.rdx,
        r.rax, r.rcx, r.rsp, r.rip, r.rflags,
    ]
}

impl LinuxState {
    /// The handler, flags, restorer and mask of signal `sig`.
    fn action(&self, sig: u64) -> (u64, u64, u64, u64) {
        let a = self.sigactions.get(&sig).copied().unwrap_or([0; 32]);
        let w = |i: usize| u64::from_le_bytes(a[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        (w(0), w(1), w(2), w(3))
    }

    /// What a signal does when it arrives: None = nothing (ignored), Some(Err) = the program
    /// ends, Some(Ok) = its handler runs.
    fn disposition(&self, sig: u64) -> Option<Result<(), SyscallOutcome>> {
        let (handler, ..) = self.action(sig);
        match handler {
            1 => None,
            0 if matches!(sig, 17 | 23 | 28) => None,
            0 => Some(Err(SyscallOutcome::Killed(sig as i32))),
            _ => Some(Ok(())),
        }
    }

    /// Send `sig` (1..=64) to thread index `t` (the program sent it with `code`). Returns
    /// Err when the program ends; the signal is delivered now if `t` is the running thread
    /// and does not block it (the vCPU then runs the handler: `self.switched`).
    pub(super) fn send_signal(
        &mut self,
        t: usize,
        sig: u64,
        code: i32,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<Result<i64, SyscallOutcome>, KvmError> {
        match self.disposition(sig) {
            None => return Ok(Ok(0)),
            Some(Err(e)) if sig == 9 || self.threads.list[t].sigmask & bit(sig) == 0 => {
                return Ok(Err(e))
            }
            _ => {}
        }
        self.threads.list[t].pending |= bit(sig);
        self.threads.list[t].pending_info.insert(
            sig,
            SigInfo {
                code,
                ..SigInfo::default()
            },
        );
        if t == self.threads.cur {
            let r = *cpu.regs();
            let ctx = super::threads::after_syscall(&r, 0);
            return self.deliver_pending(ctx, true, cpu, mem);
        }
        self.wake_for_signal(t, sig);
        Ok(Ok(0))
    }

    /// Signal `sig` was made pending in thread `t` (not running): an `rt_sigtimedwait` for
    /// it runs its call again (and takes it); a wait the signal's handler will interrupt
    /// (a sleep, a futex, pause, rt_sigsuspend, a descriptor wait) ends with EINTR.
    fn wake_for_signal(&mut self, t: usize, sig: u64) {
        use super::threads::Wait;
        let handler = self.disposition(sig) == Some(Ok(()));
        let th = &mut self.threads.list[t];
        if th.wait == Wait::Io && th.sigwait & bit(sig) != 0 {
            th.wait = Wait::Runnable;
            th.io.clear();
            return;
        }
        let blocked = th.sigmask & bit(sig) != 0;
        if handler
            && !blocked
            && matches!(
                th.wait,
                Wait::Futex { .. } | Wait::Sleep | Wait::Pause | Wait::Io
            )
        {
            th.interrupt();
        }
    }

    /// rt_sigtimedwait(set, info, timeout, size) (sigwaitinfo, sigtimedwait, sigwait): take a
    /// pending signal of `set` (its number, `info` filled), waiting for one up to `timeout`
    /// (None: forever; then -EAGAIN) while other threads run; a handled signal outside `set`
    /// ends the wait with -EINTR.
    pub(super) fn sys_rt_sigtimedwait(
        &mut self,
        a: [u64; 6],
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<Result<i64, SyscallOutcome>, KvmError> {
        let (set, info, ts, size) = (a[0], a[1], a[2], a[3]);
        if size != 8 {
            return Ok(Ok(-EINVAL));
        }
        let Ok(set) = mem.read_u64(set) else {
            return Ok(Ok(-EFAULT));
        };
        let set = set & !UNBLOCKABLE;
        let timeout = if ts == 0 {
            None
        } else {
            match get::<crate::linux_abi::Timespec>(mem, ts) {
                Some(t) if t.tv_sec >= 0 && (0..1_000_000_000).contains(&t.tv_nsec) => {
                    Some(std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
                }
                Some(_) => return Ok(Ok(-EINVAL)),
                None => return Ok(Ok(-EFAULT)),
            }
        };
        let nr = libc::SYS_rt_sigtimedwait as u64;
        self.wait_io(nr, timeout, cpu, mem, |s, mem, last| {
            let th = s.threads.current_mut();
            let ready = th.pending & set;
            if ready != 0 {
                let sig = u64::from(ready.trailing_zeros()) + 1;
                th.pending &= !bit(sig);
                let i = th.pending_info.remove(&sig).unwrap_or_default();
                th.sigwait = 0;
                if info != 0 && mem.write(info, &siginfo_bytes(sig, &i)).is_err() {
                    return super::wait::Io::Done(-EFAULT);
                }
                return super::wait::Io::Done(sig as i64);
            }
            if last || set == 0 {
                th.sigwait = 0;
                return super::wait::Io::Done(-EAGAIN);
            }
            th.sigwait = set;
            super::wait::Io::Wait(Vec::new())
        })
    }

    /// signalfd4(fd, mask, sizemask, flags) (and signalfd: flags 0): a new signalfd reading
    /// the signals of `mask` (fd -1), or a new mask for signalfd `fd`.
    pub(super) fn sys_signalfd4(
        &mut self,
        fd: u64,
        mask: u64,
        size: u64,
        flags: u64,
        mem: &GuestMemory,
    ) -> i64 {
        const SFD_CLOEXEC: u64 = 0o2000000;
        const SFD_NONBLOCK: u64 = 0o4000;
        if size != 8 || flags & !(SFD_CLOEXEC | SFD_NONBLOCK) != 0 {
            return -EINVAL;
        }
        let Ok(m) = mem.read_u64(mask) else {
            return -EFAULT;
        };
        // SIGKILL and SIGSTOP are never read through a signalfd (Linux drops them too).
        let m = m & !UNBLOCKABLE;
        let fd = fd as i64 as i32;
        if fd == -1 {
            return self.fds.install(
                super::fds::DescKind::Signal(m),
                flags & SFD_CLOEXEC != 0,
                flags & SFD_NONBLOCK != 0,
            );
        }
        match self.fds.desc_mut(fd).map(|d| &mut d.kind) {
            Some(super::fds::DescKind::Signal(old)) => {
                *old = m;
                i64::from(fd)
            }
            Some(_) => -EINVAL,
            None => -EBADF,
        }
    }

    /// read() on a signalfd of `mask`: take the running thread's pending signals of `mask`,
    /// one `struct signalfd_siginfo` (128 bytes) each, as many as `len` holds; -EAGAIN when
    /// none is pending (a blocking signalfd then waits: `wait.rs`).
    pub(super) fn signalfd_read(
        &mut self,
        mask: u64,
        buf: u64,
        len: u64,
        mem: &mut GuestMemory,
    ) -> i64 {
        if len < SIGINFO {
            return -EINVAL;
        }
        let mut done = 0u64;
        while done + SIGINFO <= len {
            let th = self.threads.current_mut();
            let ready = th.pending & mask;
            if ready == 0 {
                break;
            }
            let sig = u64::from(ready.trailing_zeros()) + 1;
            let info = th.pending_info.get(&sig).copied().unwrap_or_default();
            if mem
                .write(buf.wrapping_add(done), &signalfd_siginfo(sig, &info))
                .is_err()
            {
                return if done > 0 { done as i64 } else { -EFAULT };
            }
            th.pending &= !bit(sig);
            th.pending_info.remove(&sig);
            done += SIGINFO;
        }
        self.fds.sig_pending.set(self.threads.current().pending);
        if done == 0 {
            -EAGAIN
        } else {
            done as i64
        }
    }

    /// Put back the mask a waiting call replaced, if no handler took it over.
    pub(super) fn restore_saved_mask(&mut self) {
        let th = self.threads.current_mut();
        th.sigwait = 0;
        if let Some(m) = th.saved_mask.take() {
            th.sigmask = m;
        }
    }

    /// A waiting call's own mask (`set`, `size` bytes) replaces the thread's until it returns
    /// (ppoll, pselect6, epoll_pwait, rt_sigsuspend). 0 for no mask; else -EINVAL or -EFAULT.
    pub(super) fn use_call_mask(&mut self, set: u64, size: u64, mem: &GuestMemory) -> i64 {
        if set == 0 {
            return 0;
        }
        if size != 8 {
            return -EINVAL;
        }
        let Ok(m) = mem.read_u64(set) else {
            return -EFAULT;
        };
        let th = self.threads.current_mut();
        // A call run again after its wait keeps the mask saved the first time.
        if th.saved_mask.is_none() {
            th.saved_mask = Some(th.sigmask);
        }
        th.sigmask = m & !UNBLOCKABLE;
        0
    }

    /// Deliver the running thread's first pending, unblocked signal (if any) over the user
    /// context `ctx`. `in_syscall`: the vCPU is stopped at a system call (on hardware KVM in
    /// the CPL0 stub).
    pub(super) fn deliver_pending(
        &mut self,
        ctx: kvm_regs,
        in_syscall: bool,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<Result<i64, SyscallOutcome>, KvmError> {
        let th = self.threads.current();
        let ready = th.pending & !th.sigmask;
        if ready == 0 {
            return Ok(Ok(0));
        }
        let sig = u64::from(ready.trailing_zeros()) + 1;
        let th = self.threads.current_mut();
        th.pending &= !bit(sig);
        let info = th.pending_info.remove(&sig).unwrap_or_default();
        match self.disposition(sig) {
            None => Ok(Ok(0)),
            Some(Err(e)) => Ok(Err(e)),
            Some(Ok(())) => {
                let entry = if in_syscall {
                    Entry::Syscall
                } else {
                    Entry::User
                };
                self.run_handler(sig, info, ctx, entry, cpu, mem)
            }
        }
    }

    /// Make `sig` pending in thread `t` (a timer's signal, not sent by a system call of
    /// `t`): it runs when `t` next runs or makes a system call; a wait of `t` (a sleep, a
    /// futex, pause) ends with EINTR when the signal will run a handler. Err: the signal's
    /// default action ends the program.
    pub(super) fn post_signal(
        &mut self,
        t: usize,
        sig: u64,
        info: SigInfo,
    ) -> Result<(), SyscallOutcome> {
        let blocked = self.threads.list[t].sigmask & bit(sig) != 0;
        match self.disposition(sig) {
            None => return Ok(()),
            Some(Err(e)) if !blocked => return Err(e),
            _ => {}
        }
        let th = &mut self.threads.list[t];
        th.pending |= bit(sig);
        th.pending_info.insert(sig, info);
        self.wake_for_signal(t, sig);
        Ok(())
    }

    /// The running thread has a signal it does not block pending.
    pub(super) fn signal_ready(&self) -> bool {
        let th = self.threads.current();
        th.pending & !th.sigmask != 0
    }

    /// The vCPU stopped in a CPU exception stub: if the exception came from user mode and the
    /// program handles its signal, run the handler (over the faulting context, as Linux does)
    /// and return Delivered; else the run ends with the crash report.
    pub fn deliver_fault(
        &mut self,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<FaultDelivery, KvmError> {
        let Some(f) = read_fault(cpu, mem)? else {
            return Ok(FaultDelivery::NotHandled);
        };
        let mut fx = cpu.xsave_state().unwrap_or_default();
        fx.resize(512, 0);
        let Some((sig, code, addr)) = fault_signal(&f, &fx) else {
            return Ok(FaultDelivery::NotHandled);
        };
        let (handler, flags, restorer, _) = self.action(sig);
        if handler <= 1
            || flags & SA_RESTORER == 0
            || restorer == 0
            || self.threads.current().sigmask & bit(sig) != 0
        {
            // No handler, ignored (a fault cannot be), or blocked (a fault inside its own
            // handler): Linux resets it to the default action, which ends the program.
            return Ok(FaultDelivery::NotHandled);
        }
        let key = (f.vector, f.rip, f.cr2);
        if self.faults.last == Some(key) {
            self.faults.repeats += 1;
            if self.faults.repeats >= MAX_FAULT_REPEATS {
                return Ok(FaultDelivery::Looping(sig, self.faults.repeats));
            }
        } else {
            self.faults.last = Some(key);
            self.faults.repeats = 1;
        }
        let mut ctx = *cpu.regs();
        ctx.rip = f.rip;
        ctx.rsp = f.rsp;
        ctx.rflags = f.rflags;
        let info = SigInfo {
            code,
            addr,
            trapno: u64::from(f.vector),
            err: f.error,
            cr2: f.cr2,
        };
        let res = self.run_handler(sig, info, ctx, Entry::Exception, cpu, mem)?;
        self.switched = false;
        if res.is_err() {
            // No room for the frame: the crash report says more than "SIGSEGV".
            return Ok(FaultDelivery::NotHandled);
        }
        if matches!(f.vector, 16 | 19) {
            // The handler starts with the default x87/SSE control state (Linux gives it a
            // fresh FPU state): the exception that brought it here stays masked.
            if let Some(mut img) = cpu.xsave_state() {
                if img.len() >= 32 {
                    img[0..2].copy_from_slice(&0x37Fu16.to_le_bytes());
                    img[2..4].copy_from_slice(&0u16.to_le_bytes());
                    img[24..28].copy_from_slice(&0x1F80u32.to_le_bytes());
                    cpu.set_xsave_state(&img)?;
                }
            }
        }
        Ok(FaultDelivery::Delivered(sig))
    }

    /// A system call other than `rt_sigreturn`: a fault after it is not a handler loop.
    pub(super) fn note_progress(&mut self) {
        self.faults.last = None;
    }

    /// Build the signal frame for `sig` over `ctx` and point the vCPU at the handler.
    pub(super) fn run_handler(
        &mut self,
        sig: u64,
        info: SigInfo,
        ctx: kvm_regs,
        entry: Entry,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<Result<i64, SyscallOutcome>, KvmError> {
        let si = siginfo_bytes(sig, &info);
        let SigInfo {
            trapno, err, cr2, ..
        } = info;
        let (handler, flags, restorer, mask) = self.action(sig);
        if flags & SA_RESTORER == 0 || restorer == 0 {
            // x86_64 has no default return trampoline: Linux kills the program too.
            return Ok(Err(SyscallOutcome::Killed(11)));
        }
        let th = self.threads.current();
        let (ss_sp, ss_size) = th.altstack;
        let on_alt = ss_size != 0 && ctx.rsp.wrapping_sub(ss_sp) < ss_size;
        let mut sp = if flags & SA_ONSTACK != 0 && ss_size != 0 && !on_alt {
            ss_sp.wrapping_add(ss_size)
        } else {
            ctx.rsp.wrapping_sub(128)
        };
        // The FXSAVE image (x87/SSE/MXCSR), 64-aligned, under everything else.
        let mut fx = cpu.xsave_state().unwrap_or_default();
        fx.resize(512, 0);
        if fx[24..28] == [0; 4] {
            fx[24..28].copy_from_slice(&0x1F80u32.to_le_bytes());
        }
        sp = sp.wrapping_sub(512) & !63;
        let fpstate = sp;
        let frame = (sp.wrapping_sub(8 + UCONTEXT + SIGINFO) & !15).wrapping_sub(8);
        let uc = frame + 8;
        let info = uc + UCONTEXT;
        let mut f = Vec::with_capacity((8 + UCONTEXT + SIGINFO) as usize);
        f.extend_from_slice(&restorer.to_le_bytes());
        f.extend_from_slice(&0u64.to_le_bytes()); // uc_flags
        f.extend_from_slice(&0u64.to_le_bytes()); // uc_link
        f.extend_from_slice(&ss_sp.to_le_bytes());
        let ss_flags = if ss_size == 0 {
            SS_DISABLE
        } else if on_alt {
            SS_ONSTACK
        } else {
            0
        };
        f.extend_from_slice(&(ss_flags as u64).to_le_bytes());
        f.extend_from_slice(&ss_size.to_le_bytes());
        for v in sigcontext_regs(&ctx) {
            f.extend_from_slice(&v.to_le_bytes());
        }
        // cs, gs, fs, ss (__pad0), err, trapno, oldmask, cr2, fpstate, reserved[8].
        f.extend_from_slice(&[0x23, 0, 0, 0, 0, 0, 0x1b, 0]);
        f.extend_from_slice(&err.to_le_bytes());
        f.extend_from_slice(&trapno.to_le_bytes());
        // The mask the handler's rt_sigreturn restores: the thread's own, also when a call's
        // temporary mask (ppoll, rt_sigsuspend, ...) is in force now.
        let frame_mask = th.saved_mask.unwrap_or(th.sigmask);
        f.extend_from_slice(&frame_mask.to_le_bytes());
        f.extend_from_slice(&cr2.to_le_bytes());
        f.extend_from_slice(&fpstate.to_le_bytes());
        f.extend_from_slice(&[0u8; 64]);
        f.extend_from_slice(&frame_mask.to_le_bytes()); // uc_sigmask
        f.extend_from_slice(&si);
        if mem.write(fpstate, &fx[..512]).is_err() || mem.write(frame, &f).is_err() {
            // No room for the frame (a bad stack): Linux forces SIGSEGV.
            return Ok(Err(SyscallOutcome::Killed(11)));
        }
        {
            let th = self.threads.current_mut();
            th.saved_mask = None;
            th.sigmask |= mask & !UNBLOCKABLE;
            if flags & SA_NODEFER == 0 {
                th.sigmask |= bit(sig);
            }
        }
        if flags & SA_RESETHAND != 0 {
            self.sigactions.remove(&sig);
        }
        let mut regs = ctx;
        regs.rdi = sig;
        regs.rsi = info;
        regs.rdx = uc;
        regs.rax = 0;
        regs.rsp = frame;
        regs.rip = handler;
        regs.rflags = (ctx.rflags & !0x4_3500) | 0x202; // DF, TF, AC, IOPL cleared
        self.enter_user(regs, entry, cpu)?;
        Ok(Ok(0))
    }

    /// Resume user mode with `regs` from where the vCPU stopped: at a system call it is in
    /// the CPL0 stub on hardware KVM, in an exception stub it is at CPL0 on any KVM; either
    /// gets back through one SET_SREGS.
    fn enter_user(
        &mut self,
        regs: kvm_regs,
        entry: Entry,
        cpu: &mut dyn Vcpu,
    ) -> Result<(), KvmError> {
        if entry == Entry::Exception
            || (entry == Entry::Syscall && self.cpl0_syscalls == Some(true))
        {
            let mut s = cpu.sregs()?;
            crate::cpu::user_segments(&mut s);
            cpu.set_sregs(&s)?;
        }
        *cpu.regs_mut() = regs;
        self.switched = true;
        Ok(())
    }

    /// rt_sigreturn: back to the context in the `ucontext` at RSP (the handler returned to
    /// `sa_restorer`, which popped the return address).
    pub(super) fn sys_rt_sigreturn(
        &mut self,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<Result<i64, SyscallOutcome>, KvmError> {
        let uc = cpu.regs().rsp;
        let mut b = [0u8; UCONTEXT as usize];
        if mem.read(uc, &mut b).is_err() {
            return Ok(Err(SyscallOutcome::Killed(11)));
        }
        let w = |off: usize| u64::from_le_bytes(b[off..off + 8].try_into().unwrap_or_default());
        let sc = 40; // uc_mcontext
        let v: Vec<u64> = (0..18).map(|i| w(sc + 8 * i)).collect();
        let mut r = kvm_regs {
            r8: v[0],
            r9: v[1],
            r10: v[2],
            r11: v[3],
            r12: v[4],
            r13: v[5],
            r14: v[6],
            r15: v[7],
            rdi: v[8],
            rsi: v[9],
            rbp: v[10],
            rbx: v[11],
            rdx: v[12],
            rax: v[13],
            rcx: v[14],
            rsp: v[15],
            rip: v[16],
            rflags: 0x202 | (v[17] & FIX_EFLAGS),
        };
        let fpstate = w(sc + 8 * 18 + 8 + 32);
        // uc_sigmask follows uc_mcontext (256 bytes).
        let mask = w(sc + 256);
        self.threads.current_mut().sigmask = mask & !UNBLOCKABLE;
        if fpstate != 0 {
            let mut fx = [0u8; 512];
            if mem.read(fpstate, &mut fx).is_err() {
                return Ok(Err(SyscallOutcome::Killed(11)));
            }
            if let Some(mut img) = cpu.xsave_state() {
                // MXCSR's reserved bits would make the restore fail (#GP on Linux): cleared.
                let mx = u32::from_le_bytes(fx[24..28].try_into().unwrap_or_default()) & 0xFFFF;
                fx[24..28].copy_from_slice(&mx.to_le_bytes());
                if img.len() < 520 {
                    img.resize(520, 0);
                }
                let mask_word: [u8; 4] = img[28..32].try_into().unwrap_or_default();
                fx[28..32].copy_from_slice(&mask_word);
                img[..512].copy_from_slice(&fx);
                // Legacy x87/SSE state present in the image (XSTATE_BV bits 0 and 1).
                img[512] |= 3;
                cpu.set_xsave_state(&img)?;
            }
        }
        // Canonical user addresses only: anything else faults in the program, not here.
        if r.rip >= 1 << 47 {
            r.rip = 0;
        }
        self.enter_user(r, Entry::Syscall, cpu)?;
        // A signal unblocked by the restored mask runs now.
        let ctx = *cpu.regs();
        self.switched = false;
        let res = self.deliver_pending(ctx, false, cpu, mem)?;
        self.switched = true;
        Ok(res)
    }

    /// sigaltstack(new, old), per thread.
    pub(super) fn sys_sigaltstack(
        &mut self,
        new: u64,
        old: u64,
        cpu: &dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> i64 {
        let rsp = cpu.regs().rsp;
        let (sp, size) = self.threads.current().altstack;
        let on = size != 0 && rsp.wrapping_sub(sp) < size;
        if old != 0 {
            let ss = StackT {
                sp,
                flags: if size == 0 {
                    SS_DISABLE
                } else if on {
                    SS_ONSTACK
                } else {
                    0
                },
                _pad: 0,
                size,
            };
            if put(mem, old, &ss) != 0 {
                return -EFAULT;
            }
        }
        if new != 0 {
            let Some(ss) = get::<StackT>(mem, new) else {
                return -EFAULT;
            };
            if on {
                return -EPERM;
            }
            if ss.flags & !(SS_DISABLE | (1 << 31)) != 0 {
                return -EINVAL;
            }
            if ss.flags & SS_DISABLE != 0 {
                self.threads.current_mut().altstack = (0, 0);
            } else {
                if ss.size < MINSIGSTKSZ {
                    return -ENOMEM;
                }
                self.threads.current_mut().altstack = (ss.sp, ss.size);
            }
        }
        0
    }
}

/// Where the vCPU stopped when a handler is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Entry {
    /// In user mode (a time-slice end, a thread switch to a thread that was preempted).
    User,
    /// At a system call.
    Syscall,
    /// In a CPU exception stub (CPL0).
    Exception,
}

/// What a handler's `siginfo` and `sigcontext` say beyond the signal number.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SigInfo {
    pub code: i32,
    /// si_addr (faults) or si_value (timers).
    pub addr: u64,
    pub trapno: u64,
    /// sigcontext.err (faults); timer id | overrun << 32 (timers).
    pub err: u64,
    pub cr2: u64,
}

/// What became of a CPU exception ([`LinuxState::deliver_fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultDelivery {
    /// The handler for this signal runs now.
    Delivered(u64),
    /// Not the program's to handle: the run ends with the crash report.
    NotHandled,
    /// The handler let the same fault happen this many times in a row: the run ends.
    Looping(u64, u32),
}

/// The last fault delivered, to see a handler loop.
#[derive(Debug, Clone, Default)]
pub(super) struct FaultState {
    last: Option<(u8, u64, u64)>,
    repeats: u32,
}

/// A CPU exception taken in user mode.
#[derive(Debug, Clone, Copy)]
pub struct UserFault {
    /// The exception vector (14: page fault).
    pub vector: u8,
    /// Its error code (0 for vectors without one).
    pub error: u64,
    /// RIP of the faulting instruction.
    pub rip: u64,
    /// The program's RSP at the fault.
    pub rsp: u64,
    /// The program's RFLAGS at the fault.
    pub rflags: u64,
    /// CR2 (page faults; else 0).
    pub cr2: u64,
}

/// The exception frame the CPL0 stub left (`push $vector` over the CPU's frame); None if the
/// exception did not come from user mode.
pub fn read_fault(cpu: &mut dyn Vcpu, mem: &GuestMemory) -> Result<Option<UserFault>, KvmError> {
    let sp = cpu.regs().rsp;
    let rd = |a: u64| -> Option<u64> {
        let mut b = [0u8; 8];
        mem.read_raw(a, &mut b).ok()?;
        Some(u64::from_le_bytes(b))
    };
    let Some(vector) = rd(sp).filter(|v| *v < 32) else {
        return Ok(None);
    };
    let mut frame = sp + 8;
    let mut error = 0;
    if crate::cpu::has_error_code(vector as u8) {
        error = rd(frame).unwrap_or(0);
        frame += 8;
    }
    let (Some(rip), Some(cs), Some(rflags), Some(rsp)) =
        (rd(frame), rd(frame + 8), rd(frame + 16), rd(frame + 24))
    else {
        return Ok(None);
    };
    if cs & 3 != 3 {
        return Ok(None);
    }
    let cr2 = if vector == 14 { cpu.sregs()?.cr2 } else { 0 };
    Ok(Some(UserFault {
        vector: vector as u8,
        error,
        rip,
        rsp,
        rflags,
        cr2,
    }))
}

/// The signal, si_code and si_addr Linux gives a user-mode exception (arch/x86/kernel/traps.c,
/// fault.c); None for the ones that are never the program's (#DF, #MC, ...). `fx`: the FXSAVE
/// image (for the x87/SIMD exception's cause).
fn fault_signal(f: &UserFault, fx: &[u8]) -> Option<(u64, i32, u64)> {
    const SIGTRAP: u64 = 5;
    const SIGBUS: u64 = 7;
    const SIGFPE: u64 = 8;
    const SIGSEGV: u64 = 11;
    const SIGILL: u64 = 4;
    let w16 = |o: usize| u32::from(u16::from_le_bytes([fx[o], fx[o + 1]]));
    // FPE_FLTINV, FPE_FLTDIV, FPE_FLTOVF, FPE_FLTUND, FPE_FLTRES from unmasked flags.
    let fpe = |flags: u32| -> i32 {
        if flags & 1 != 0 {
            7
        } else if flags & 4 != 0 {
            3
        } else if flags & 8 != 0 {
            4
        } else if flags & 0x12 != 0 {
            5
        } else if flags & 0x20 != 0 {
            6
        } else {
            0
        }
    };
    Some(match f.vector {
        0 => (SIGFPE, 1, f.rip),  // FPE_INTDIV
        1 => (SIGTRAP, 2, f.rip), // TRAP_TRACE
        3 => (SIGTRAP, SI_KERNEL, 0),
        4 | 5 | 10 | 13 => (SIGSEGV, SI_KERNEL, 0),
        6 => (SIGILL, 2, f.rip), // ILL_ILLOPN
        11 | 12 => (SIGBUS, SI_KERNEL, 0),
        14 => (SIGSEGV, if f.error & 1 != 0 { 2 } else { 1 }, f.cr2), // SEGV_ACCERR / MAPERR
        16 => (SIGFPE, fpe(w16(2) & !w16(0) & 0x3F), f.rip),
        17 => (SIGBUS, 1, 0), // BUS_ADRALN
        19 => {
            let mx = u32::from_le_bytes([fx[24], fx[25], fx[26], fx[27]]);
            (SIGFPE, fpe(mx & !(mx >> 7) & 0x3F), f.rip)
        }
        _ => return None,
    })
}
