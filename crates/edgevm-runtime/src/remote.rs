//! Remote storage calls: a request program calls a function of its storage program (a second
//! binary linked at or above 1 GiB, e.g. `-Wl,-Ttext-segment=0x40200000`; the request binary
//! links with `--just-symbols` of it) as a plain C call. Request VMs do not map the storage
//! program's range `[lo, hi)`: the call is an instruction-fetch page fault there (one exit,
//! through the CPL0 exception stub), which the run loop turns into [`Event::RemoteCall`]
//! instead of a crash. The call runs in the storage VM like a `storage_callv` (the FIFO turn,
//! `STORAGE_ALLOW`, `max_storage_time`, time slices: `crate::storage`), with the six SysV
//! argument registers, and the request VM resumes at the return address with RAX/RDX. See
//! docs/DESIGN.md, "Remote storage calls".

use edgevm_abi::elf;
use edgevm_abi::layout::{self, Layout};
use edgevm_abi::linux::read_fault;
use edgevm_kvm::{MemoryView, Vcpu};

use crate::vm::{RunError, Vm};

/// The lowest link address of a storage program whose functions request VMs call remotely
/// (the reference connects the two VMs when the storage program's gigapage is not the first).
pub const REMOTE_MIN: u64 = 1 << 30;

/// A call into the storage program's range, as the request VM stopped at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteCall {
    /// The address called (RIP at the fault).
    pub func: u64,
    /// RDI, RSI, RDX, RCX, R8, R9.
    pub args: [u64; 6],
    /// The return address (at RSP).
    pub ret: u64,
    /// RSP at the call (pointing at the return address).
    pub rsp: u64,
    /// RFLAGS at the call.
    pub rflags: u64,
}

/// The range `[lo, hi)` of a separate storage program's load segments when request VMs call
/// into it remotely: linked at or above [`REMOTE_MIN`] and apart from the request program's
/// own segments. Ok(None): an ordinary storage program (linked low, or where the request
/// program is). Err: the storage binary cannot be loaded at all.
pub fn storage_range(storage: &[u8], request: &[u8]) -> Result<Option<(u64, u64)>, String> {
    let wide = Layout::new(layout::MAX_ADDRESS_SPACE, 0).map_err(|e| e.to_string())?;
    let s = elf::describe(storage, &wide).map_err(|e| format!("storage program: {e}"))?;
    let lo = s.segments.iter().map(|x| x.0).min().unwrap_or(0);
    let hi = s.segments.iter().map(|x| x.1).max().unwrap_or(0);
    if lo < REMOTE_MIN || hi <= lo {
        return Ok(None);
    }
    let overlaps = elf::describe(request, &wide)
        .map(|r| r.segments.iter().any(|x| x.0 < hi && lo < x.1))
        .unwrap_or(false);
    Ok((!overlaps).then_some((lo, hi)))
}

/// [`storage_range`] for a program whose request VMs have `request_memory` bytes of address
/// space, with or without `executable_heap` (which maps that space executable: it must end
/// below the storage program, or calls there would run the request's own memory).
pub fn check_pair(
    storage: &[u8],
    request: &[u8],
    request_memory: u64,
    executable_heap: bool,
) -> Result<Option<(u64, u64)>, String> {
    let r = storage_range(storage, request)?;
    if let Some((lo, _)) = r {
        if executable_heap && request_memory > lo {
            return Err(format!(
                "with executable_heap the request VMs' address space ({} MB) must end below the storage program ({lo:#x}), whose functions they call remotely",
                request_memory >> 20
            ));
        }
    }
    Ok(r)
}

/// The storage VM's address space for a program linked up to `hi`: the program's usual
/// amount (`usual`, for its heap, mmap area and stack) above the image.
pub fn storage_address_space(usual: u64, hi: u64) -> u64 {
    const MB2: u64 = 2 << 20;
    hi.div_ceil(MB2)
        .saturating_mul(MB2)
        .saturating_add(usual)
        .min(layout::MAX_ADDRESS_SPACE)
}

impl<C: Vcpu, M: MemoryView> Vm<C, M> {
    /// At a CPU exception: Some(call) when it is a user-mode page fault on fetching the
    /// instruction at RIP inside the remote range (CR2 == RIP: the range is not mapped
    /// executable in request VMs). The return address is read from the program's stack; a
    /// stack that cannot be read fails the run.
    #[cold]
    pub(crate) fn remote_call_at_fault(&mut self) -> Result<Option<RemoteCall>, RunError> {
        let Some((lo, hi)) = self.remote else {
            return Ok(None);
        };
        let Some(f) = read_fault(&mut self.machine.cpu, &self.machine.mem)? else {
            return Ok(None);
        };
        if f.vector != 14 || f.cr2 != f.rip || !(lo..hi).contains(&f.rip) {
            return Ok(None);
        }
        let ret = self
            .machine
            .mem
            .read_u64(f.rsp)
            .map_err(|_| RunError::RemoteBadStack {
                func: f.rip,
                rsp: f.rsp,
            })?;
        let r = self.machine.cpu.regs();
        Ok(Some(RemoteCall {
            func: f.rip,
            args: [r.rdi, r.rsi, r.rdx, r.rcx, r.r8, r.r9],
            ret,
            rsp: f.rsp,
            rflags: f.rflags,
        }))
    }

    /// Resume the program after remote call `c` with its results: at the return address,
    /// the return address popped, RAX and RDX set; back in user mode (the vCPU stopped in the
    /// CPL0 exception stub), as after a signal handler's delivery.
    pub(crate) fn return_from_remote(
        &mut self,
        c: &RemoteCall,
        rax: u64,
        rdx: u64,
    ) -> Result<(), RunError> {
        let mut s = self.machine.cpu.sregs()?;
        edgevm_abi::cpu::user_segments(&mut s);
        self.machine.cpu.set_sregs(&s)?;
        let r = self.machine.cpu.regs_mut();
        r.rip = c.ret;
        r.rsp = c.rsp.wrapping_add(8);
        r.rflags = (c.rflags & !0x4_0100) | 0x202; // TF and AC cleared, IF set
        r.rax = rax;
        r.rdx = rdx;
        Ok(())
    }
}
