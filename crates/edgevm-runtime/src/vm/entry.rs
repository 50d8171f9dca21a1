//! How a VM enters a handler and leaves it: the FPU/vector image the entry stub restores
//! ([`Vm::install_entry_fpu`]), the entry state captured at the freeze ([`EntryState`]),
//! entering a handler or a paused event loop, and restoring user mode after a failure.

use super::*;

use edgevm_abi::layout::{self};
use edgevm_abi::linux::Output;
use edgevm_kvm::{features, KvmVcpu, MemoryView, Vcpu};

pub use crate::error::RunError;

/// kvm_fpu -> the 512-byte FXSAVE image that the request entry stub `fxrstor`s.
pub(crate) fn fxsave_image(f: &kvm_bindings::kvm_fpu) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..2].copy_from_slice(&f.fcw.to_le_bytes());
    b[2..4].copy_from_slice(&f.fsw.to_le_bytes());
    b[4] = f.ftwx;
    b[6..8].copy_from_slice(&f.last_opcode.to_le_bytes());
    b[8..16].copy_from_slice(&f.last_ip.to_le_bytes());
    b[16..24].copy_from_slice(&f.last_dp.to_le_bytes());
    b[24..28].copy_from_slice(&f.mxcsr.to_le_bytes());
    b[28..32].copy_from_slice(&0xFFFFu32.to_le_bytes());
    for (i, r) in f.fpr.iter().enumerate() {
        b[32 + 16 * i..48 + 16 * i].copy_from_slice(r);
    }
    for (i, r) in f.xmm.iter().enumerate() {
        b[160 + 16 * i..176 + 16 * i].copy_from_slice(r);
    }
    b
}

/// MXCSR of a fresh x86 CPU: every SIMD floating-point exception masked, round to nearest.
const MXCSR_DEFAULT: u32 = 0x1F80;

/// The MXCSR field (bytes 24..28) of an FXSAVE/XSAVE image. kvm_pvm reports 0 for a vCPU whose
/// SSE state it never saved (KVM_GET_XSAVE and KVM_GET_FPU alike), although the guest ran with
/// the default; restoring 0 would unmask every SIMD exception, so the next `1.0/3.0` in a
/// request would crash it with #XM. No program runs with all exceptions unmasked: take 0 to
/// mean "not reported" and restore the architectural default.
fn sane_mxcsr(img: &mut [u8]) {
    if img.len() >= 28 && img[24..28] == [0, 0, 0, 0] {
        img[24..28].copy_from_slice(&MXCSR_DEFAULT.to_le_bytes());
    }
}

/// What every handler call starts from, captured once at the frozen point
/// (`wait_for_requests()`): the stack, TLS and GS bases, user-mode segments and whether the
/// FPU image is a full XSAVE image. Request handlers, `on_error`, warmup and storage calls all
/// enter through [`MainVm::enter_handler`] with it.
#[derive(Debug, Clone)]
pub struct EntryState {
    /// RSP at the frozen point; handler frames go below it.
    pub rsp: u64,
    fs_base: u64,
    gs_base: u64,
    user_sregs: Option<kvm_bindings::kvm_sregs>,
    xsave: bool,
    /// The program can move its FS/GS bases without the host seeing it (kvm_pvm): the entry
    /// stub writes them back itself on every call.
    user_bases: bool,
}

impl EntryState {
    /// R10, R12 and R13 for the request entry stub: bit 0 of R10 picks XRSTOR over FXRSTOR;
    /// with `user_bases`, bit 1 has the stub set the FS/GS bases from R12/R13 itself
    /// (wrfsbase/wrgsbase: no exit, and it covers bases the program changed without a system
    /// call).
    fn stub_flags(&self) -> (u64, u64, u64) {
        if self.user_bases {
            (u64::from(self.xsave) | 2, self.fs_base, self.gs_base)
        } else {
            (u64::from(self.xsave), 0, 0)
        }
    }

    /// [`EntryState::stub_flags`] for entering a call without the host touching the vCPU
    /// (chained storage calls), given the vCPU's FS/GS bases as the host knows them: the stub
    /// restores the bases itself (kvm_pvm), or they are the frozen ones already. None when the
    /// host would have to set them.
    pub(crate) fn stub_regs(&self, fs_base: u64, gs_base: u64) -> Option<(u64, u64, u64)> {
        (self.user_bases || (fs_base == self.fs_base && gs_base == self.gs_base))
            .then(|| self.stub_flags())
    }
}

impl EntryState {
    /// R10 for a `multiprocess` worker entering through the request entry stub: the FPU
    /// image kind only (its FS/GS bases are set with its special registers, so R12 and R13
    /// stay free for `multiprocess_clone`).
    pub(crate) fn worker_r10(&self) -> u64 {
        u64::from(self.xsave)
    }

    /// The user-mode special registers at the frozen point, if they could be read.
    pub(crate) fn user_sregs(&self) -> Option<kvm_bindings::kvm_sregs> {
        self.user_sregs
    }
}

impl<M: MemoryView> Vm<KvmVcpu, M> {
    /// Write this VM's current FPU/SSE/AVX state where the request-entry stub restores it
    /// from. Returns true for a full XSAVE image, false for FXSAVE (x87/SSE) only.
    pub fn install_entry_fpu(&mut self) -> Result<bool, RunError> {
        // The page holds 4 KiB: enough for every component edgevm enables (x87/SSE/AVX,
        // AVX-512). The image must agree with this vCPU's XCR0, which the entry stub's XRSTOR
        // uses as its mask: KVM adds PKRU on CPUs with protection keys (fit_xsave_image).
        if let Some(xcr0) = self.machine.cpu.xcr0() {
            if let Some(mut img) = self.machine.cpu.xsave() {
                if features::fit_xsave_image(&mut img, xcr0) {
                    sane_mxcsr(&mut img);
                    self.machine.mem.write_raw(layout::FXSAVE_AREA, &img)?;
                    return Ok(true);
                }
            }
        }
        let fpu = self.machine.cpu.fpu()?;
        let mut img = fxsave_image(&fpu).to_vec();
        // kvm_pvm's KVM_GET_FPU reports MXCSR as 0 (every SIMD exception unmasked: the first
        // inexact floating-point operation of a handler would fault with #XM); the legacy
        // area of KVM_GET_XSAVE has the real value.
        if let Some(x) = self.machine.cpu.xsave().filter(|x| x.len() >= 28) {
            img[24..28].copy_from_slice(&x[24..28]);
        }
        sane_mxcsr(&mut img);
        if edgevm_kvm::guest_user_xsave() {
            // KVM has no XSAVE for us, but the program runs on the host's XCR0 (kvm_pvm) and
            // can use AVX: an XSAVE image with XSTATE_BV = x87|SSE makes the stub's XRSTOR load
            // those from the legacy area and put every other component (AVX upper halves,
            // AVX-512, ...) in its initial state.
            img.resize(576, 0);
            img[512..520].copy_from_slice(&3u64.to_le_bytes());
            self.machine.mem.write_raw(layout::FXSAVE_AREA, &img)?;
            return Ok(true);
        }
        self.machine.mem.write_raw(layout::FXSAVE_AREA, &img)?;
        Ok(false)
    }
}

impl<C: Vcpu, M: MemoryView> Vm<C, M> {
    /// Capture the entry state at the frozen point (the VM is stopped in wait_for_requests()).
    /// `xsave` says what [`MainVm::install_entry_fpu`] installed.
    pub fn entry_state(&mut self, xsave: bool) -> EntryState {
        EntryState {
            rsp: self.machine.cpu.regs().rsp,
            fs_base: self.machine.cpu.fs_base(),
            gs_base: self.machine.cpu.gs_base(),
            // A vCPU set up ahead knows them without an ioctl.
            user_sregs: self
                .machine
                .cpu
                .set_up_sregs()
                .or_else(|| self.machine.cpu.sregs().ok()),
            xsave,
            user_bases: edgevm_kvm::guest_user_fsgsbase(),
        }
    }

    /// Set up a call of `handler(args...)` through the request entry stub, with the stack at
    /// `rsp` (16-aligned here). TLS and GS bases are put back when a previous call moved them
    /// (one MSR write each, only then). Guest-controlled values wrap rather than overflow.
    pub fn enter_handler(
        &mut self,
        e: &EntryState,
        handler: u64,
        rsp: u64,
        args: &[u64],
    ) -> Result<(), RunError> {
        if self.machine.cpu.gs_base() != e.gs_base {
            self.machine.cpu.set_gs_base(e.gs_base)?;
        }
        if self.machine.cpu.fs_base() != e.fs_base {
            self.machine.cpu.set_fs_base(e.fs_base)?;
        }
        let r = self.machine.cpu.regs_mut();
        *r = Default::default();
        r.rip = layout::REQUEST_ENTRY;
        r.rsp = rsp & !15;
        r.rflags = 0x202;
        r.r11 = handler;
        (r.r10, r.r12, r.r13) = e.stub_flags();
        let slots = [
            &mut r.rdi, &mut r.rsi, &mut r.rdx, &mut r.rcx, &mut r.r8, &mut r.r9,
        ];
        for (slot, v) in slots.into_iter().zip(args) {
            *slot = *v;
        }
        Ok(())
    }

    /// The guest stopped at `wait_for_requests_paused(req)` (its `out` not completed): finish
    /// the call (RAX 0) so the registers stand where it returns, and when that is the `ret`
    /// of a call stub, take the `ret` too, so resuming never depends on the return address
    /// still being on the stack. With `slots`, write the point into the resume slots
    /// ([`edgevm_abi::guest_abi::io::PAUSED_RESUME`]) that [`MainVm::enter_paused`] uses.
    pub fn pause_at_wait(&mut self, req: u64, slots: bool) -> Result<(), RunError> {
        let size = std::mem::size_of::<edgevm_abi::guest_abi::KvmRequest>();
        if req < layout::USER_BASE || self.machine.mem.read_vec(req, size).is_err() {
            return Err(RunError::BadPausedRequest(req));
        }
        self.machine.cpu.regs_mut().rax = 0;
        if !self.machine.cpu.settle() {
            return Err(RunError::CannotPause("the call did not complete"));
        }
        let r = *self.machine.cpu.regs();
        let mut op = [0u8; 1];
        if self.machine.mem.read(r.rip, &mut op).is_ok() && op[0] == 0xC3 {
            let ret = self
                .machine
                .mem
                .read_u64(r.rsp)
                .map_err(|_| RunError::CannotPause("no return address on the stack"))?;
            let regs = self.machine.cpu.regs_mut();
            regs.rip = ret;
            regs.rsp = r.rsp.wrapping_add(8);
        }
        if slots {
            let r = *self.machine.cpu.regs();
            let mut b = [0u8; 32];
            for (i, v) in [r.rsp, r.r12, r.r13, r.rip].iter().enumerate() {
                b[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
            }
            self.machine
                .mem
                .write(edgevm_abi::guest_abi::io::PAUSED_RESUME, &b)
                .map_err(|_| RunError::CannotPause("the resume slots are not writable"))?;
        }
        self.paused = Some(req);
        Ok(())
    }

    /// Resume an event-loop program at the paused point `p` (the registers frozen by
    /// [`MainVm::pause_at_wait`]) through the request entry stub, which restores the frozen
    /// FPU state and the FS/GS bases and calls the resume trampoline (`cpu::paused_resume_stub`)
    /// on a scratch stack below the paused one.
    pub fn enter_paused(
        &mut self,
        e: &EntryState,
        p: &kvm_bindings::kvm_regs,
    ) -> Result<(), RunError> {
        if self.machine.cpu.gs_base() != e.gs_base {
            self.machine.cpu.set_gs_base(e.gs_base)?;
        }
        if self.machine.cpu.fs_base() != e.fs_base {
            self.machine.cpu.set_fs_base(e.fs_base)?;
        }
        let r = self.machine.cpu.regs_mut();
        *r = *p;
        r.rax = 0;
        r.rip = layout::REQUEST_ENTRY;
        // Below the paused frame and its red zone; the trampoline loads the real RSP.
        r.rsp = p.rsp.wrapping_sub(1024) & !15;
        r.rflags = 0x202;
        r.r11 = layout::PAUSED_ENTRY;
        (r.r10, r.r12, r.r13) = e.stub_flags();
        Ok(())
    }

    /// After a failed call: a CPU exception leaves the vCPU in the CPL0 exception stub, so put
    /// the user-mode segments back before the next call.
    pub fn restore_user_mode(&mut self, e: &EntryState) {
        // An instruction KVM left half done (an `in`, string I/O) must complete now, before
        // new registers are set, or it would resume the failed call's code in the next one.
        if !self.machine.cpu.settle() {
            self.stale = true;
        }
        if let Some(s) = &e.user_sregs {
            if let Err(err) = self.machine.cpu.set_sregs(s) {
                self.printer
                    .log(&format!("cannot restore user mode after a failure: {err}"));
            }
        }
    }
}
