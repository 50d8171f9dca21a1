//! Signals: handlers installed with `rt_sigaction` run for `kill`/`tkill`/`tgkill` sent by
//! the program to itself or to one of its threads, on the alternate stack when one is set
//! (`sigaltstack`, per thread) and asked for (`SA_ONSTACK`), with the Linux x86_64 frame
//! (`rt_sigframe`: return address = `sa_restorer`, `ucontext` with the interrupted registers
//! and signal mask, `siginfo`, the FXSAVE image); `rt_sigreturn` restores them. Signal masks
//! and pending signals are per thread: a blocked signal waits until it is unblocked. A signal
//! for another thread is delivered when that thread next runs. Default actions: ignore for
//! SIGCHLD/SIGURG/SIGWINCH, else the program ends with the signal.

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
/// Size of `struct ucontext` (flags, link, stack, sigcontext, sigmask).
const UCONTEXT: u64 = 8 + 8 + 24 + 256 + 8;
/// Size of `struct siginfo`.
const SIGINFO: u64 = 128;
/// The RFLAGS bits a handler's `ucontext` may change on return (AC, OF, DF, SF, ZF, AF, PF,
/// CF), as Linux's FIX_EFLAGS less TF and RF.
const FIX_EFLAGS: u64 = 0x4_0CD5;

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
        self.threads.list[t].pending_code = code;
        if t == self.threads.cur {
            let r = *cpu.regs();
            let ctx = super::threads::after_syscall(&r, 0);
            return self.deliver_pending(ctx, true, cpu, mem);
        }
        Ok(Ok(0))
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
        let code = th.pending_code;
        self.threads.current_mut().pending &= !bit(sig);
        match self.disposition(sig) {
            None => Ok(Ok(0)),
            Some(Err(e)) => Ok(Err(e)),
            Some(Ok(())) => self.run_handler(sig, code, 0, ctx, in_syscall, cpu, mem),
        }
    }

    /// Build the signal frame for `sig` over `ctx` and point the vCPU at the handler.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_handler(
        &mut self,
        sig: u64,
        code: i32,
        addr: u64,
        ctx: kvm_regs,
        in_syscall: bool,
        cpu: &mut dyn Vcpu,
        mem: &mut GuestMemory,
    ) -> Result<Result<i64, SyscallOutcome>, KvmError> {
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
        f.extend_from_slice(&[0u8; 8 * 3]);
        f.extend_from_slice(&addr.to_le_bytes());
        f.extend_from_slice(&fpstate.to_le_bytes());
        f.extend_from_slice(&[0u8; 64]);
        f.extend_from_slice(&th.sigmask.to_le_bytes()); // uc_sigmask
        let mut si = [0u8; SIGINFO as usize];
        si[0..4].copy_from_slice(&(sig as i32).to_le_bytes());
        si[8..12].copy_from_slice(&code.to_le_bytes());
        if code == SI_USER || code == SI_TKILL {
            si[16..20].copy_from_slice(&1i32.to_le_bytes()); // si_pid
        } else {
            si[16..24].copy_from_slice(&addr.to_le_bytes()); // si_addr
        }
        f.extend_from_slice(&si);
        if mem.write(fpstate, &fx[..512]).is_err() || mem.write(frame, &f).is_err() {
            // No room for the frame (a bad stack): Linux forces SIGSEGV.
            return Ok(Err(SyscallOutcome::Killed(11)));
        }
        {
            let th = self.threads.current_mut();
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
        self.enter_user(regs, in_syscall, cpu)?;
        Ok(Ok(0))
    }

    /// Resume user mode with `regs`. `in_syscall`: the vCPU stopped at a system call; on
    /// hardware KVM it is then in the CPL0 stub and gets back through one SET_SREGS.
    fn enter_user(
        &mut self,
        regs: kvm_regs,
        in_syscall: bool,
        cpu: &mut dyn Vcpu,
    ) -> Result<(), KvmError> {
        if in_syscall && self.cpl0_syscalls == Some(true) {
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
        self.enter_user(r, true, cpu)?;
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
