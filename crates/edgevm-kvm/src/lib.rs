//! edgevm-kvm: owns the KVM objects and guest memory.
//!
//! * [`memory::GuestMemory`] — the host mapping that backs a guest's physical memory: a memfd
//!   shared by the main VM, copy-on-write private mappings of it for request VMs, bounds-checked
//!   access, host-write tracking, and reset from the frozen image by dirty bitmap.
//! * [`pageset::PageSet`] — sparse page sets, so a reset costs what the request dirtied, not
//!   the size of the address space.
//! * [`vm::KvmMachine`] — one KVM VM with one memory slot and one vCPU, registers exchanged
//!   through `kvm_run` sync_regs (no register ioctls on hot paths).
//! * [`features`] — the XCR0 and CPUID a guest is given, and XSAVE images fitted to them.
//! * [`Vcpu`] — the small trait seam the layers above use, so guest-ABI logic (syscall
//!   emulation, hypercalls) and the runtime's run loop can be unit-tested without `/dev/kvm`
//!   ([`FakeVcpu`], [`ScriptedVcpu`]).
//!
//! See docs/DESIGN.md for how the crates fit together.
//!
//! Nothing here knows about ELF, Linux syscalls or HTTP.

mod fake;
pub mod features;
pub mod memory;
pub mod pageset;
pub mod vdso;
pub mod views;
pub mod vm;

pub use fake::{FakeVcpu, ScriptedVcpu};

pub use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
pub use memory::{host_huge_pages, FileMap, GuestMemory, HostHugePages, MemError, PAGE_SIZE};
pub use pageset::PageSet;
pub use views::{FrozenImage, MainMemory, MemoryView, PrivateView};
pub use vm::{
    guest_user_fsgsbase, guest_user_xsave, is_kvm_pvm, kvm_available, KvmMachine, KvmVcpu, SmpVcpu,
    VmShell,
};

/// Why a vCPU stopped running guest code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// `out` to `port`; `value` is the (zero-extended) data written, `size` its width in bytes.
    IoOut { port: u16, value: u32, size: u8 },
    /// `in` from a port (never used by edgevm guests).
    IoIn { port: u16 },
    /// A write to unbacked guest-physical memory.
    MmioWrite { addr: u64 },
    /// A read from unbacked guest-physical memory.
    MmioRead { addr: u64 },
    /// `hlt` reached the host (only possible at CPL0).
    Hlt,
    /// Triple fault.
    Shutdown,
    /// KVM_RUN was interrupted by a signal (our timeout timer) or `immediate_exit`.
    Interrupted,
    /// KVM could not handle something (e.g. emulation failure); the suberror code.
    InternalError(u32),
    /// VM entry failed; the hardware reason.
    FailEntry(u64),
    /// The guest touched memory the host could not provide.
    MemoryFault { gpa: u64 },
    /// A debug exit requested with [`KvmVcpu::set_guest_debug`]: `exception` 1 (#DB: single
    /// step or a hardware breakpoint, `dr6` says which) or 3 (#BP: an `int3`) at `pc`.
    Debug { exception: u32, pc: u64, dr6: u64 },
    /// Anything else, named.
    Other(String),
}

/// Errors from KVM ioctls.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("/dev/kvm is not available ({0}); edgevm needs KVM: load the kvm module and run as a user that can open /dev/kvm")]
    NoKvm(String),
    #[error("KVM {op} failed: {err}")]
    Ioctl {
        op: &'static str,
        err: std::io::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemError),
}

impl KvmError {
    pub(crate) fn ioctl(op: &'static str, e: kvm_ioctls::Error) -> Self {
        KvmError::Ioctl {
            op,
            err: std::io::Error::from_raw_os_error(e.errno()),
        }
    }
}

/// The vCPU operations the guest ABI layer needs. Implemented by [`KvmMachine`] over real KVM,
/// and by simple in-memory fakes in unit tests.
pub trait Vcpu {
    /// Run guest code until the next exit.
    fn run(&mut self) -> Result<Exit, KvmError>;
    /// General-purpose registers as of the last exit (from `kvm_run` sync_regs, no ioctl).
    fn regs(&self) -> &kvm_regs;
    /// Mutable registers; changes are handed to KVM on the next [`Vcpu::run`] (sync_regs dirty
    /// bit, no ioctl).
    fn regs_mut(&mut self) -> &mut kvm_regs;
    /// Special registers (one ioctl: error and setup paths only).
    fn sregs(&mut self) -> Result<kvm_sregs, KvmError>;
    /// The special registers of a vCPU set up ahead (see [`KvmVcpu::mark_set_up`]), known
    /// without an ioctl; None otherwise.
    fn set_up_sregs(&self) -> Option<kvm_sregs> {
        None
    }
    /// Set the FS segment base (the TLS pointer set by `arch_prctl(ARCH_SET_FS)`).
    fn set_fs_base(&mut self, base: u64) -> Result<(), KvmError>;
    /// The FS segment base as last set.
    fn fs_base(&self) -> u64;
    /// Set the GS segment base.
    fn set_gs_base(&mut self, base: u64) -> Result<(), KvmError>;
    /// The GS segment base as last set.
    fn gs_base(&self) -> u64;
    /// Exits so far (every return from [`Vcpu::run`]).
    fn exit_count(&self) -> u64 {
        0
    }
    /// The flag a signal handler on this vCPU's thread sets to stop the current or next run
    /// (`kvm_run.immediate_exit`); null when there is none.
    fn immediate_exit_ptr(&mut self) -> *mut u8 {
        std::ptr::null_mut()
    }
    /// Clear that flag after an interrupted run.
    fn clear_immediate_exit(&mut self) {}
    /// Let the vCPU finish an instruction left half done at the last exit (see
    /// [`KvmVcpu::settle`]); false when it must be replaced.
    fn settle(&mut self) -> bool {
        true
    }
    /// Set the special registers (one ioctl: error and setup paths only).
    fn set_sregs(&mut self, _s: &kvm_sregs) -> Result<(), KvmError> {
        Ok(())
    }
    /// The XSAVE image (x87/SSE legacy area, header, AVX, ...), for a debugger; None when
    /// there is none.
    fn xsave_state(&self) -> Option<Vec<u8>> {
        None
    }
    /// Load an XSAVE image taken with [`Vcpu::xsave_state`] (a green thread's FPU/SSE/AVX
    /// state when the host switches threads).
    fn set_xsave_state(&mut self, _img: &[u8]) -> Result<(), KvmError> {
        Ok(())
    }
    /// Set the guest's DR0-DR3, DR6 and DR7 (a debugger's hardware breakpoints).
    fn set_debugregs(&mut self, _db: [u64; 4], _dr6: u64, _dr7: u64) -> Result<(), KvmError> {
        Err(KvmError::Ioctl {
            op: "SET_DEBUGREGS",
            err: std::io::Error::from_raw_os_error(libc::ENOSYS),
        })
    }
    /// The guest's DR6 (which debug condition fired).
    fn dr6(&mut self) -> Result<u64, KvmError> {
        Ok(0)
    }
}
