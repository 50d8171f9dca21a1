//! One KVM VM with one memory slot and one vCPU.
//!
//! Register traffic goes through `kvm_run` sync_regs: after every exit KVM has already written
//! the general-purpose registers there, and setting the dirty bit makes KVM load them on the
//! next entry. Measured here, a GET/SET_REGS pair costs ~11 µs per exit on top of a ~30 µs exit,
//! so hot paths never call register ioctls.

use std::sync::OnceLock;

use kvm_bindings::{
    kvm_msr_entry, kvm_regs, kvm_sregs, kvm_userspace_memory_region, CpuId, Msrs,
    KVM_MAX_CPUID_ENTRIES, KVM_MEM_LOG_DIRTY_PAGES,
};
use kvm_ioctls::{Kvm, SyncReg, VcpuExit, VcpuFd, VmFd};

use crate::memory::Reservation;
use crate::{features, Exit, KvmError, PageSet, Vcpu};

/// KVM's ioctl type (linux/kvm.h `KVMIO`).
const KVMIO: libc::c_uint = 0xAE;
// The dirty-log ioctls are made directly (kvm-ioctls' wrapper allocates a bitmap per call).
vmm_sys_util::ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_bindings::kvm_dirty_log);
vmm_sys_util::ioctl_iowr_nr!(
    KVM_CLEAR_DIRTY_LOG,
    KVMIO,
    0xc0,
    kvm_bindings::kvm_clear_dirty_log
);

const MSR_FS_BASE: u32 = 0xC000_0100;
const MSR_GS_BASE: u32 = 0xC000_0101;

struct KvmGlobal {
    kvm: Kvm,
    /// What guests see: KVM's supported CPUID fitted to `xcr0` (see [`crate::features`]).
    cpuid: Option<CpuId>,
    /// The XCR0 every guest gets, or None where KVM reports no XSAVE (kvm_pvm).
    xcr0: Option<u64>,
}

fn global() -> Result<&'static KvmGlobal, KvmError> {
    static G: OnceLock<Result<KvmGlobal, String>> = OnceLock::new();
    let g = G.get_or_init(|| {
        let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
        let mut cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).ok();
        let xcr0 = cpuid
            .as_ref()
            .and_then(|c| features::supported_xcr0(c.as_slice()))
            .map(features::guest_xcr0);
        if let (Some(c), Some(x)) = (cpuid.as_mut(), xcr0) {
            features::fit_cpuid(c.as_mut_slice(), x);
        }
        Ok(KvmGlobal { kvm, cpuid, xcr0 })
    });
    g.as_ref().map_err(|e| KvmError::NoKvm(e.clone()))
}

/// The vDSO's ROM ([`crate::vdso`]), made with the first VM.
pub(crate) fn global_rom() -> Option<&'static crate::vdso::Rom> {
    global().ok().and_then(|g| crate::vdso::rom(&g.kvm))
}

/// Memory slot 1 of every VM: the vDSO's ROM, read-only, at [`crate::vdso::ROM_GPA`].
fn map_rom(vm: &VmFd, rom: &crate::vdso::Rom) -> Result<(), KvmError> {
    let region = kvm_userspace_memory_region {
        slot: 1,
        flags: kvm_bindings::KVM_MEM_READONLY,
        guest_phys_addr: crate::vdso::ROM_GPA,
        memory_size: crate::vdso::ROM_SIZE as u64,
        userspace_addr: rom.host_addr(),
    };
    // SAFETY: the ROM's read-only mapping lives for the process (a static).
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| KvmError::ioctl("SET_USER_MEMORY_REGION (vDSO)", e))
}

/// Give a new vCPU a TSC offset of 0 when the vDSO is offered (guests convert their TSC with
/// the host's clock data, so it must read as the host's).
fn set_up_tsc(vcpu: &VcpuFd) -> Result<(), KvmError> {
    if crate::vdso::wants_zero_offset() {
        crate::vdso::zero_tsc_offset(vcpu).map_err(|e| KvmError::Ioctl {
            op: "SET_DEVICE_ATTR (TSC offset)",
            err: std::io::Error::other(e),
        })?;
    }
    Ok(())
}

/// Ok if `/dev/kvm` can be opened; the error says why not.
pub fn kvm_available() -> Result<(), KvmError> {
    global().map(|_| ())
}

/// A VM, its vCPU and the guest memory mapped as slot 0 at guest-physical 0. The two halves
/// are separate fields so the guest-ABI layer can borrow the vCPU and the memory at once.
///
/// Field order matters: the vCPU and VM are closed before the memory is unmapped.
/// The vCPU type is a parameter so the runtime can run its VM logic over a scripted vCPU
/// ([`crate::ScriptedVcpu`]) in unit tests; everything that creates VMs uses [`KvmVcpu`].
pub struct KvmMachine<C = KvmVcpu, M = crate::MainMemory> {
    /// The VM and its vCPU.
    pub cpu: C,
    /// The guest's memory: a main VM's ([`crate::MainMemory`]) or a request VM's
    /// ([`crate::PrivateView`]).
    pub mem: M,
}

/// Whether `/dev/kvm` is kvm_pvm, the development machines' software hypervisor (guest user
/// code there runs on the host's CR4/XCR0; SYSCALL stays at CPL3; no guest debug exits).
pub fn is_kvm_pvm() -> bool {
    static V: OnceLock<bool> = OnceLock::new();
    *V.get_or_init(|| std::path::Path::new("/sys/module/kvm_pvm").exists())
}

/// Whether guest code at CPL3 can write its own FS/GS bases with `wrfsbase`/`wrgsbase`
/// without the host seeing it. On hardware KVM it cannot (edgevm leaves CR4.FSGSBASE clear,
/// the instructions fault). kvm_pvm runs guest user code under the host's CR4, so there it
/// can whenever the host kernel enabled FSGSBASE for its own processes (AT_HWCAP2).
pub fn guest_user_fsgsbase() -> bool {
    static V: OnceLock<bool> = OnceLock::new();
    *V.get_or_init(|| {
        const HWCAP2_FSGSBASE: libc::c_ulong = 1 << 1;
        // SAFETY: getauxval only reads the process's auxiliary vector.
        let hwcap2 = unsafe { libc::getauxval(libc::AT_HWCAP2) };
        is_kvm_pvm() && hwcap2 & HWCAP2_FSGSBASE != 0
    })
}

/// Whether guest code at CPL3 can use XSAVE state (AVX and later) although KVM does not
/// report XSAVE: kvm_pvm runs guest user code under the host's CR4 and XCR0, so programs use
/// AVX whenever the host has it enabled (CPUID.1:ECX.OSXSAVE of this process). The request
/// entry stub must then restore every XCR0 component itself with XRSTOR, or the AVX upper
/// halves (and AVX-512 state) of one request would still be there in the next.
pub fn guest_user_xsave() -> bool {
    static V: OnceLock<bool> = OnceLock::new();
    *V.get_or_init(|| {
        let ecx = std::arch::x86_64::__cpuid(1).ecx;
        is_kvm_pvm() && ecx & (1 << 27) != 0
    })
}

/// The KVM VM and vCPU file descriptors with the synced register view.
pub struct KvmVcpu {
    vcpu: VcpuFd,
    vm: VmFd,
    regs: *mut kvm_regs,
    fs_base: u64,
    gs_base: u64,
    dirty_logging: bool,
    /// KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is on: reading the log does not write-protect the
    /// pages again; [`KvmVcpu::take_dirty_log_keeping`] re-protects all but the ones kept.
    manual_protect: bool,
    mem_size: usize,
    exits: u64,
    /// The XCR0 set with [`KvmVcpu::set_xcr0`], if it was.
    xcr0: Option<u64>,
    /// KVM_GET_DIRTY_LOG's bitmap, kept across calls.
    log_buf: Vec<u64>,
    /// KVM_CLEAR_DIRTY_LOG's bitmap, kept across calls.
    clear_buf: Vec<u64>,
    /// The special registers as KVM reported them once the vCPU was set up ahead, in a
    /// [`VmShell`] ([`KvmVcpu::mark_set_up`]): the fork does not set it up again.
    set_up: Option<kvm_sregs>,
}

// SAFETY: `regs` points into the vCPU's own kvm_run mapping, which moves with the VcpuFd; the
// vCPU is used by one thread at a time.
unsafe impl Send for KvmVcpu {}

/// A KVM VM with its vCPU but no memory yet: the costly part of making a VM (~0.5-0.8 ms
/// here), which can be done ahead, on another thread, before the memory exists (a program's
/// request VMs are prepared while its main VM boots). [`KvmMachine::from_shell`] attaches
/// the memory.
pub struct VmShell {
    /// The VM and its vCPU (no memory yet: its size is 0).
    cpu: KvmVcpu,
    log_dirty: bool,
    /// The address range memory slot 0 already points at ([`VmShell::with_slot`]); dropped
    /// after the VM (field order).
    slot: Option<Reservation>,
    /// Where slot 0 points (host address, size), once made.
    slot_at: Option<(u64, usize)>,
}

impl VmShell {
    /// Create the VM and its vCPU. With `log_dirty`, KVM will record guest-written pages.
    pub fn new(log_dirty: bool) -> Result<Self, KvmError> {
        let g = global()?;
        // KVM_CREATE_VM fails with EINTR when a signal is pending on the calling thread (a
        // run timer's, on an HTTP worker that forks a VM back after an idle period: seen here
        // under load): try again, a bounded number of times.
        let mut tries = 0;
        let vm = loop {
            match g.kvm.create_vm() {
                Err(e) if e.errno() == libc::EINTR && tries < 100 => tries += 1,
                r => break r.map_err(|e| KvmError::ioctl("CREATE_VM", e))?,
            }
        };
        if let Some(rom) = crate::vdso::rom(&g.kvm) {
            map_rom(&vm, rom)?;
        }
        // Manual re-protection (see take_dirty_log_keeping), where KVM has it (Linux 5.8+;
        // kvm_pvm too). Without it every logged page is write-protected again at each read.
        let manual_protect = log_dirty && {
            let cap = kvm_bindings::kvm_enable_cap {
                cap: kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                args: [
                    u64::from(kvm_bindings::KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE),
                    0,
                    0,
                    0,
                ],
                ..Default::default()
            };
            vm.enable_cap(&cap).is_ok()
        };
        let mut vcpu = vm
            .create_vcpu(0)
            .map_err(|e| KvmError::ioctl("CREATE_VCPU", e))?;
        set_up_tsc(&vcpu)?;
        if let Some(cpuid) = &g.cpuid {
            // On hardware KVM the guest sees only what we set here; on kvm_pvm CPUID returns
            // the host's values regardless. A failure is not fatal: the guest then sees less.
            let _ = vcpu.set_cpuid2(cpuid);
        }
        vcpu.set_sync_valid_reg(SyncReg::Register);
        let regs: *mut kvm_regs = &mut vcpu.sync_regs_mut().regs;
        Ok(VmShell {
            cpu: KvmVcpu {
                vcpu,
                vm,
                regs,
                fs_base: 0,
                gs_base: 0,
                dirty_logging: log_dirty,
                manual_protect,
                mem_size: 0,
                exits: 0,
                xcr0: None,
                log_buf: Vec::new(),
                clear_buf: Vec::new(),
                set_up: None,
            },
            log_dirty,
            slot: None,
            slot_at: None,
        })
    }

    /// [`VmShell::new`] with its memory slot made too, over an address range of `size` bytes
    /// reserved for the request VM's view ([`Reservation`]): KVM_SET_USER_MEMORY_REGION waits
    /// for an SRCU grace period (0.2 ms on a quiet machine here, tens of ms under load), so a
    /// fork into this shell ([`KvmMachine::fork_into`]) only maps the view over the range.
    pub fn with_slot(size: usize, log_dirty: bool) -> Result<Self, KvmError> {
        let mut shell = VmShell::new(log_dirty)?;
        let r = Reservation::new(size)?;
        // SAFETY: the region describes the reserved range, which the shell owns and unmaps
        // only after the VM (field order), or hands over to the view that maps it.
        unsafe { shell.set_slot(r.addr(), size) }?;
        shell.slot = Some(r);
        Ok(shell)
    }

    /// The memory size this shell's slot was made for, if it has one.
    pub fn slot_size(&self) -> Option<usize> {
        self.slot.as_ref().map(Reservation::len)
    }

    /// The vCPU, to set it up ahead (special registers, XCR0, MSRs: nothing that depends on
    /// the program), then [`KvmVcpu::mark_set_up`].
    pub fn cpu_mut(&mut self) -> &mut KvmVcpu {
        &mut self.cpu
    }

    /// Memory slot 0 over `size` bytes at host address `addr`.
    ///
    /// # Safety
    /// The range must stay mapped (or reserved) for as long as the VM exists.
    unsafe fn set_slot(&mut self, addr: u64, size: usize) -> Result<(), KvmError> {
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: if self.log_dirty {
                KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
            guest_phys_addr: 0,
            memory_size: size as u64,
            userspace_addr: addr,
        };
        // SAFETY: the caller keeps the range mapped for the VM's life.
        unsafe { self.cpu.vm.set_user_memory_region(region) }
            .map_err(|e| KvmError::ioctl("SET_USER_MEMORY_REGION", e))?;
        self.slot_at = (size > 0).then_some((addr, size));
        Ok(())
    }
}

impl KvmMachine<KvmVcpu, crate::PrivateView> {
    /// A request VM's machine: a copy-on-write view of `image` in `shell`. When the shell's
    /// slot was made ahead for this size ([`VmShell::with_slot`]) the view is mapped over its
    /// range and no memory slot is made now.
    pub fn fork_into(
        mut shell: VmShell,
        image: &crate::FrozenImage,
        shared_from: usize,
    ) -> Result<Self, KvmError> {
        let view = match shell.slot.take() {
            Some(r) if r.len() == image.size() => image.fork_at(shared_from, r)?,
            _ => image.fork(shared_from)?,
        };
        KvmMachine::from_shell(shell, view)
    }
}

impl<M: crate::MemoryView> KvmMachine<KvmVcpu, M> {
    /// Create a VM over `mem`. With `log_dirty`, KVM records guest-written pages (used by
    /// request VMs to know what to reset).
    pub fn new(mem: M, log_dirty: bool) -> Result<Self, KvmError> {
        KvmMachine::from_shell(VmShell::new(log_dirty)?, mem)
    }

    /// Give a prepared VM (see [`VmShell`]) its memory. A shell whose slot still holds its
    /// reserved range is given a new slot over `mem` (the range goes with the shell).
    pub fn from_shell(mut shell: VmShell, mem: M) -> Result<Self, KvmError> {
        if shell.slot_at != Some((mem.host_addr(), mem.size())) {
            if shell.slot_at.is_some() {
                // A slot's host range cannot be changed: delete it first.
                // SAFETY: a zero-sized region deletes the slot; nothing is mapped for it.
                unsafe { shell.set_slot(0, 0) }?;
            }
            // SAFETY: the region describes `mem`'s live mapping, which this struct owns and
            // drops only after the VM (field order).
            unsafe { shell.set_slot(mem.host_addr(), mem.size()) }?;
        }
        let VmShell { mut cpu, .. } = shell;
        cpu.mem_size = mem.size();
        Ok(KvmMachine { cpu, mem })
    }
}

impl KvmVcpu {
    /// Record that this vCPU was set up ahead (in a [`VmShell`]), with the special registers
    /// KVM reports now.
    pub fn mark_set_up(&mut self) -> Result<(), KvmError> {
        let s = self
            .vcpu
            .get_sregs()
            .map_err(|e| KvmError::ioctl("GET_SREGS", e))?;
        self.set_up = Some(s);
        Ok(())
    }

    /// The special registers recorded by [`KvmVcpu::mark_set_up`], if this vCPU was set up
    /// ahead (and nothing changed them since but the FS and GS bases, which are kept here).
    pub fn set_up_sregs(&self) -> Option<kvm_sregs> {
        self.set_up.map(|mut s| {
            s.fs.base = self.fs_base;
            s.gs.base = self.gs_base;
            s
        })
    }

    /// Set special registers (setup only).
    pub fn set_sregs(&mut self, s: &kvm_sregs) -> Result<(), KvmError> {
        self.fs_base = s.fs.base;
        self.gs_base = s.gs.base;
        self.set_up = None;
        self.vcpu
            .set_sregs(s)
            .map_err(|e| KvmError::ioctl("SET_SREGS", e))
    }

    /// Set XCR0 (enables AVX state on hardware KVM). Setup only; errors are returned for the
    /// caller to decide.
    pub fn set_xcr0(&mut self, value: u64) -> Result<(), KvmError> {
        write_xcr0(&self.vcpu, value)?;
        self.xcr0 = Some(value);
        Ok(())
    }

    /// The XCR0 this vCPU was given with [`KvmVcpu::set_xcr0`] (so CR4.OSXSAVE is on), if any.
    pub fn xcr0(&self) -> Option<u64> {
        self.xcr0
    }

    /// The XCR0 every guest is given (see [`crate::features`]), or None where KVM reports no
    /// XSAVE support (kvm_pvm: CPL3 code there runs on the host's XCR0).
    pub fn guest_xcr0() -> Option<u64> {
        global().ok()?.xcr0
    }

    /// Read the FPU/SSE state (freeze time only).
    pub fn fpu(&self) -> Result<kvm_bindings::kvm_fpu, KvmError> {
        self.vcpu
            .get_fpu()
            .map_err(|e| KvmError::ioctl("GET_FPU", e))
    }

    /// The XSAVE image as KVM gives it (standard, uncompacted format: x87/SSE legacy area,
    /// header, AVX and further components; KVM may include components the guest's XCR0 does not
    /// enable, such as PKRU: see [`crate::features::fit_xsave_image`]), when KVM and the CPU
    /// support XSAVE. At the freeze and when a green thread is switched out.
    pub fn xsave(&self) -> Option<Vec<u8>> {
        let x = self.vcpu.get_xsave().ok()?;
        let mut out = Vec::with_capacity(4096);
        for w in x.region.iter() {
            out.extend_from_slice(&w.to_le_bytes());
        }
        Some(out)
    }

    /// Load an XSAVE image as [`KvmVcpu::xsave`] returns it (at most the 4 KiB KVM_SET_XSAVE
    /// takes; the rest of the region is zero).
    pub fn set_xsave(&mut self, img: &[u8]) -> Result<(), KvmError> {
        let mut x = kvm_bindings::kvm_xsave::default();
        for (w, c) in x.region.iter_mut().zip(img.chunks(4)) {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            *w = u32::from_le_bytes(b);
        }
        // SAFETY: `x` is a full kvm_xsave (4 KiB region); KVM_SET_XSAVE reads only that.
        unsafe { self.vcpu.set_xsave(&x) }.map_err(|e| KvmError::ioctl("SET_XSAVE", e))
    }

    /// Write the FPU/SSE state.
    pub fn set_fpu(&self, f: &kvm_bindings::kvm_fpu) -> Result<(), KvmError> {
        self.vcpu
            .set_fpu(f)
            .map_err(|e| KvmError::ioctl("SET_FPU", e))
    }

    /// Fetch and clear the dirty-page set of slot 0 (every page is write-protected again).
    pub fn take_dirty_log(&mut self) -> Result<PageSet, KvmError> {
        self.take_dirty_log_keeping(|_| PageSet::new())
            .map(|(dirty, _)| dirty)
    }

    /// Fetch the dirty pages of slot 0 and start logging afresh, except for the pages `keep`
    /// picks (given the dirty set): with manual protection those stay writable and keep
    /// being reported dirty at every read (so their reset must copy them every time), which
    /// spares the guest a write-protection fault on each of them per request (~2-5 µs each
    /// under kvm_pvm, ~1 µs on hardware). Returns (dirty, kept); without manual protection
    /// `keep` is not called and nothing is kept.
    ///
    /// Cost: one KVM_GET_DIRTY_LOG into a buffer kept across calls, one scan of it, and a
    /// KVM_CLEAR_DIRTY_LOG over the span of the re-protected pages only when there are any
    /// (none for a request whose pages are all kept).
    pub fn take_dirty_log_keeping(
        &mut self,
        keep: impl FnOnce(&PageSet) -> PageSet,
    ) -> Result<(PageSet, PageSet), KvmError> {
        if !self.dirty_logging {
            return Ok((PageSet::new(), PageSet::new()));
        }
        let words = (self.mem_size / crate::PAGE_SIZE).div_ceil(64);
        let mut buf = std::mem::take(&mut self.log_buf);
        buf.resize(words, 0);
        let dirty = self
            .get_dirty_log(&mut buf)
            .map(|()| PageSet::from_dense(&buf));
        self.log_buf = buf;
        let dirty = dirty?;
        let mut kept = PageSet::new();
        if self.manual_protect {
            kept = keep(&dirty);
            let clear = dirty.difference(&kept);
            self.clear_dirty_log(&clear)?;
        }
        Ok((dirty, kept))
    }

    /// KVM_GET_DIRTY_LOG of slot 0 into `bits` (one bit per page of the slot). The
    /// kvm-ioctls wrapper would allocate a new bitmap per call.
    fn get_dirty_log(&self, bits: &mut [u64]) -> Result<(), KvmError> {
        let pages = self.mem_size / crate::PAGE_SIZE;
        if bits.len() < pages.div_ceil(64) {
            return Err(KvmError::ioctl(
                "GET_DIRTY_LOG",
                kvm_ioctls::Error::new(libc::EINVAL),
            ));
        }
        let arg = kvm_bindings::kvm_dirty_log {
            slot: 0,
            padding1: 0,
            __bindgen_anon_1: kvm_bindings::kvm_dirty_log__bindgen_ty_1 {
                dirty_bitmap: bits.as_mut_ptr().cast(),
            },
        };
        // SAFETY: `arg` points at a writable bitmap of at least one bit per page of slot 0,
        // alive across the call; KVM writes exactly that many bits.
        unsafe { self.vm_ioctl("GET_DIRTY_LOG", KVM_GET_DIRTY_LOG(), &arg) }
    }

    /// One ioctl on this VM's fd with `arg`'s address.
    ///
    /// # Safety
    /// `req` must be a KVM VM ioctl whose argument is a `T`, and every pointer inside `arg`
    /// must be valid for what KVM reads or writes through it during the call.
    unsafe fn vm_ioctl<T>(
        &self,
        op: &'static str,
        req: libc::c_ulong,
        arg: &T,
    ) -> Result<(), KvmError> {
        // SAFETY: the fd is this VM's; `arg` is what `req` expects (the caller's contract).
        let r = unsafe {
            libc::ioctl(
                std::os::unix::io::AsRawFd::as_raw_fd(&self.vm),
                req,
                std::ptr::from_ref(arg),
            )
        };
        if r != 0 {
            return Err(KvmError::ioctl(op, kvm_ioctls::Error::last()));
        }
        Ok(())
    }

    /// KVM_CLEAR_DIRTY_LOG (write-protect again) for the pages of `pages`, over the span of
    /// words from the first to the last one set (KVM wants 64-page aligned spans).
    fn clear_dirty_log(&mut self, pages: &PageSet) -> Result<(), KvmError> {
        let (Some(&(first, _)), Some(&(last, _))) = (pages.words().first(), pages.words().last())
        else {
            return Ok(());
        };
        let slot_pages = self.mem_size / crate::PAGE_SIZE;
        let first_page = first as usize * 64;
        let num_pages = ((last as usize + 1) * 64).min(slot_pages) - first_page.min(slot_pages);
        let span = &mut self.clear_buf;
        span.clear();
        span.resize((last - first) as usize + 1, 0);
        for &(w, bits) in pages.words() {
            span[(w - first) as usize] = bits;
        }
        let arg = kvm_bindings::kvm_clear_dirty_log {
            slot: 0,
            num_pages: num_pages as u32,
            first_page: first_page as u64,
            __bindgen_anon_1: kvm_bindings::kvm_clear_dirty_log__bindgen_ty_1 {
                dirty_bitmap: span.as_mut_ptr().cast(),
            },
        };
        // SAFETY: `arg` points at a bitmap of at least `num_pages` bits (one word per 64 pages
        // of the span) that lives across the call; KVM only reads it.
        unsafe { self.vm_ioctl("CLEAR_DIRTY_LOG", KVM_CLEAR_DIRTY_LOG(), &arg) }
    }

    /// Pointer to `kvm_run.immediate_exit`, for a signal handler on this vCPU's thread.
    pub fn immediate_exit_ptr(&mut self) -> *mut u8 {
        &mut self.vcpu.get_kvm_run().immediate_exit
    }

    /// Clear `immediate_exit` after an interrupted run.
    pub fn clear_immediate_exit(&mut self) {
        self.vcpu.set_kvm_immediate_exit(0);
    }

    /// Let KVM finish an instruction it left half done at the last exit, without running any
    /// guest code: KVM_RUN with `immediate_exit` set completes a pending `in` (or string I/O
    /// iteration) and returns EINTR. Without this, the next KVM_RUN completes it *after* the
    /// host set new registers, and KVM's emulator writes the old instruction's RIP and
    /// registers back over them: the next request would resume the failed one's code.
    /// Returns false when KVM came back with another exit instead (a `rep ins`/`rep outs`
    /// with iterations left): the vCPU still holds that instruction and must be replaced.
    pub fn settle(&mut self) -> bool {
        self.vcpu.set_kvm_immediate_exit(1);
        let r = self.run();
        self.vcpu.set_kvm_immediate_exit(0);
        matches!(r, Ok(Exit::Interrupted))
    }

    /// Exits to userspace so far (every return from KVM_RUN).
    pub fn exit_count(&self) -> u64 {
        self.exits
    }

    /// KVM_SET_GUEST_DEBUG (debugger sessions only): `control` is a set of KVM_GUESTDBG_*
    /// flags (0 turns debugging off), `debugreg` DR0-DR3 and DR7 (index 7) for hardware
    /// breakpoints.
    pub fn set_guest_debug(&mut self, control: u32, debugreg: [u64; 8]) -> Result<(), KvmError> {
        let dbg = kvm_bindings::kvm_guest_debug {
            control,
            pad: 0,
            arch: kvm_bindings::kvm_guest_debug_arch { debugreg },
        };
        self.vcpu
            .set_guest_debug(&dbg)
            .map_err(|e| KvmError::ioctl("SET_GUEST_DEBUG", e))
    }

    /// KVM_SET_DEBUGREGS (debugger sessions only): the guest's DR0-DR3, DR6 and DR7.
    pub fn set_debugregs(&mut self, db: [u64; 4], dr6: u64, dr7: u64) -> Result<(), KvmError> {
        let d = kvm_bindings::kvm_debugregs {
            db,
            dr6,
            dr7,
            ..Default::default()
        };
        self.vcpu
            .set_debug_regs(&d)
            .map_err(|e| KvmError::ioctl("SET_DEBUGREGS", e))
    }

    /// KVM_GET_DEBUGREGS: the guest's DR6 (debugger sessions only).
    pub fn dr6(&self) -> Result<u64, KvmError> {
        self.vcpu
            .get_debug_regs()
            .map(|d| d.dr6)
            .map_err(|e| KvmError::ioctl("GET_DEBUGREGS", e))
    }

    /// Write one MSR (setup and rare paths only: one ioctl).
    pub fn set_msr(&mut self, index: u32, data: u64) -> Result<(), KvmError> {
        write_msr(&self.vcpu, index, data)
    }
}

impl Vcpu for KvmVcpu {
    fn run(&mut self) -> Result<Exit, KvmError> {
        self.exits += 1;
        run_vcpu(&mut self.vcpu)
    }

    fn regs(&self) -> &kvm_regs {
        // SAFETY: `regs` points into this vCPU's kvm_run mapping (valid while self lives); KVM
        // only writes it during KVM_RUN, which needs &mut self.
        unsafe { &*self.regs }
    }

    fn regs_mut(&mut self) -> &mut kvm_regs {
        self.vcpu.set_sync_dirty_reg(SyncReg::Register);
        // SAFETY: as in `regs`, and &mut self guarantees exclusive access.
        unsafe { &mut *self.regs }
    }

    fn sregs(&mut self) -> Result<kvm_sregs, KvmError> {
        self.vcpu
            .get_sregs()
            .map_err(|e| KvmError::ioctl("GET_SREGS", e))
    }

    fn set_up_sregs(&self) -> Option<kvm_sregs> {
        KvmVcpu::set_up_sregs(self)
    }

    fn set_fs_base(&mut self, base: u64) -> Result<(), KvmError> {
        self.set_msr(MSR_FS_BASE, base)?;
        self.fs_base = base;
        Ok(())
    }

    fn fs_base(&self) -> u64 {
        self.fs_base
    }

    fn set_gs_base(&mut self, base: u64) -> Result<(), KvmError> {
        self.set_msr(MSR_GS_BASE, base)?;
        self.gs_base = base;
        Ok(())
    }

    fn gs_base(&self) -> u64 {
        self.gs_base
    }

    fn exit_count(&self) -> u64 {
        KvmVcpu::exit_count(self)
    }

    fn immediate_exit_ptr(&mut self) -> *mut u8 {
        KvmVcpu::immediate_exit_ptr(self)
    }

    fn clear_immediate_exit(&mut self) {
        KvmVcpu::clear_immediate_exit(self)
    }

    fn settle(&mut self) -> bool {
        KvmVcpu::settle(self)
    }

    fn set_sregs(&mut self, s: &kvm_sregs) -> Result<(), KvmError> {
        KvmVcpu::set_sregs(self, s)
    }

    fn xsave_state(&self) -> Option<Vec<u8>> {
        KvmVcpu::xsave(self)
    }

    fn set_xsave_state(&mut self, img: &[u8]) -> Result<(), KvmError> {
        KvmVcpu::set_xsave(self, img)
    }

    fn set_debugregs(&mut self, db: [u64; 4], dr6: u64, dr7: u64) -> Result<(), KvmError> {
        KvmVcpu::set_debugregs(self, db, dr6, dr7)
    }

    fn dr6(&mut self) -> Result<u64, KvmError> {
        KvmVcpu::dr6(self)
    }
}

/// Set XCR0 of `vcpu` (KVM_GET_XCRS, then KVM_SET_XCRS with XCR0 changed).
fn write_xcr0(vcpu: &VcpuFd, value: u64) -> Result<(), KvmError> {
    let mut x = vcpu
        .get_xcrs()
        .map_err(|e| KvmError::ioctl("GET_XCRS", e))?;
    x.nr_xcrs = 1;
    x.xcrs[0].xcr = 0;
    x.xcrs[0].value = value;
    vcpu.set_xcrs(&x)
        .map_err(|e| KvmError::ioctl("SET_XCRS", e))
}

/// Write one MSR of `vcpu` (one KVM_SET_MSRS).
fn write_msr(vcpu: &VcpuFd, index: u32, data: u64) -> Result<(), KvmError> {
    let msrs = Msrs::from_entries(&[kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }])
    .map_err(|_| KvmError::Ioctl {
        op: "SET_MSRS",
        err: std::io::Error::other("bad msr list"),
    })?;
    vcpu.set_msrs(&msrs)
        .map_err(|e| KvmError::ioctl("SET_MSRS", e))?;
    Ok(())
}

/// KVM_RUN once on `vcpu`, the exit mapped to [`Exit`].
fn run_vcpu(vcpu: &mut VcpuFd) -> Result<Exit, KvmError> {
    let exit = match vcpu.run() {
        Ok(VcpuExit::IoOut(port, data)) => {
            let mut v = [0u8; 4];
            let n = data.len().min(4);
            v[..n].copy_from_slice(&data[..n]);
            Exit::IoOut {
                port,
                value: u32::from_le_bytes(v),
                size: n as u8,
            }
        }
        Ok(VcpuExit::IoIn(port, _)) => Exit::IoIn { port },
        Ok(VcpuExit::MmioWrite(addr, _)) => Exit::MmioWrite { addr },
        Ok(VcpuExit::MmioRead(addr, _)) => Exit::MmioRead { addr },
        Ok(VcpuExit::Hlt) => Exit::Hlt,
        Ok(VcpuExit::Shutdown) => Exit::Shutdown,
        Ok(VcpuExit::Intr) => Exit::Interrupted,
        Ok(VcpuExit::InternalError) => {
            // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so the `internal` union member
            // is the one KVM filled in.
            let sub = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
            Exit::InternalError(sub)
        }
        Ok(VcpuExit::FailEntry(reason, _)) => Exit::FailEntry(reason),
        Ok(VcpuExit::MemoryFault { gpa, .. }) => Exit::MemoryFault { gpa },
        Ok(VcpuExit::Debug(d)) => Exit::Debug {
            exception: d.exception,
            pc: d.pc,
            dr6: d.dr6,
        },
        Ok(other) => Exit::Other(format!("{other:?}")),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Interrupted,
        Err(e) if e.errno() == libc::EFAULT => Exit::MemoryFault { gpa: 0 },
        Err(e) => return Err(KvmError::ioctl("RUN", e)),
    };
    Ok(exit)
}

impl KvmVcpu {
    /// Add vCPU `id` (1, 2, ...) to this VM, for SMP workers (`multiprocess`): same memory,
    /// same CPUID and XCR0 as this vCPU; its special registers, MSRs and general registers are
    /// the caller's to set. KVM cannot remove a vCPU: it lives as long as the VM.
    pub fn add_vcpu(&self, id: u64) -> Result<SmpVcpu, KvmError> {
        let g = global()?;
        let mut vcpu = self
            .vm
            .create_vcpu(id)
            .map_err(|e| KvmError::ioctl("CREATE_VCPU", e))?;
        set_up_tsc(&vcpu)?;
        if let Some(cpuid) = &g.cpuid {
            let _ = vcpu.set_cpuid2(cpuid);
        }
        vcpu.set_sync_valid_reg(SyncReg::Register);
        let regs: *mut kvm_regs = &mut vcpu.sync_regs_mut().regs;
        Ok(SmpVcpu {
            vcpu,
            regs,
            xcr0: self.xcr0,
        })
    }
}

/// An extra vCPU of a VM ([`KvmVcpu::add_vcpu`]): runs on its own host thread over the same
/// memory and page tables as the VM's first vCPU. Registers go through sync_regs as there.
pub struct SmpVcpu {
    vcpu: VcpuFd,
    regs: *mut kvm_regs,
    xcr0: Option<u64>,
}

// SAFETY: `regs` points into the vCPU's own kvm_run mapping, which moves with the VcpuFd; the
// vCPU is used by one thread at a time.
unsafe impl Send for SmpVcpu {}

impl SmpVcpu {
    /// Run guest code until the next exit.
    pub fn run(&mut self) -> Result<Exit, KvmError> {
        run_vcpu(&mut self.vcpu)
    }

    /// General-purpose registers as of the last exit.
    pub fn regs(&self) -> &kvm_regs {
        // SAFETY: `regs` points into this vCPU's kvm_run mapping (valid while self lives); KVM
        // only writes it during KVM_RUN, which needs &mut self.
        unsafe { &*self.regs }
    }

    /// Mutable registers, handed to KVM on the next run (sync_regs dirty bit).
    pub fn regs_mut(&mut self) -> &mut kvm_regs {
        self.vcpu.set_sync_dirty_reg(SyncReg::Register);
        // SAFETY: as in `regs`, and &mut self guarantees exclusive access.
        unsafe { &mut *self.regs }
    }

    /// Special registers (one ioctl).
    pub fn sregs(&self) -> Result<kvm_sregs, KvmError> {
        self.vcpu
            .get_sregs()
            .map_err(|e| KvmError::ioctl("GET_SREGS", e))
    }

    /// Set the special registers (one ioctl).
    pub fn set_sregs(&mut self, s: &kvm_sregs) -> Result<(), KvmError> {
        self.vcpu
            .set_sregs(s)
            .map_err(|e| KvmError::ioctl("SET_SREGS", e))
    }

    /// Give this vCPU the XCR0 of the vCPU it was added beside (after CR4.OSXSAVE is set with
    /// [`SmpVcpu::set_sregs`]), if that one has one.
    pub fn copy_xcr0(&mut self) -> Result<(), KvmError> {
        match self.xcr0 {
            Some(value) => write_xcr0(&self.vcpu, value),
            None => Ok(()),
        }
    }

    /// Write one MSR (setup only).
    pub fn set_msr(&mut self, index: u32, data: u64) -> Result<(), KvmError> {
        write_msr(&self.vcpu, index, data)
    }

    /// Pointer to `kvm_run.immediate_exit` (set by a signal handler or another thread to stop
    /// the current or next run).
    pub fn immediate_exit_ptr(&mut self) -> *mut u8 {
        &mut self.vcpu.get_kvm_run().immediate_exit
    }

    /// Clear `immediate_exit` after an interrupted run.
    pub fn clear_immediate_exit(&mut self) {
        self.vcpu.set_kvm_immediate_exit(0);
    }

    /// Let KVM finish an instruction left half done (see [`KvmVcpu::settle`]); false when it
    /// came back with another exit.
    pub fn settle(&mut self) -> bool {
        self.vcpu.set_kvm_immediate_exit(1);
        let r = self.run();
        self.vcpu.set_kvm_immediate_exit(0);
        matches!(r, Ok(Exit::Interrupted))
    }
}

#[cfg(test)]
mod tests {
    /// The ioctl numbers the macros compute are linux/kvm.h's.
    #[test]
    fn a_fork_maps_its_view_where_the_slot_made_ahead_points() {
        if super::kvm_available().is_err() {
            return;
        }
        let mut main = crate::MainMemory::new(4 << 20).unwrap();
        main.write(0x1000, b"image").unwrap();
        let image = main.freeze();
        let shell = super::VmShell::with_slot(4 << 20, true).unwrap();
        let (at, size) = shell.slot_at.unwrap();
        assert_eq!(size, 4 << 20);
        let m = super::KvmMachine::fork_into(shell, &image, 2 << 20).unwrap();
        assert_eq!(m.mem.host_addr(), at, "the view took the reserved range");
        let mut b = [0u8; 5];
        m.mem.read(0x1000, &mut b).unwrap();
        assert_eq!(&b, b"image");
        // A slot made for another size is replaced by one over the view.
        let shell = super::VmShell::with_slot(2 << 20, true).unwrap();
        let m2 = super::KvmMachine::fork_into(shell, &image, 2 << 20).unwrap();
        m2.mem.read(0x1000, &mut b).unwrap();
        assert_eq!(&b, b"image");
        drop((m, m2));
    }

    #[test]
    fn dirty_log_ioctl_numbers() {
        assert_eq!(super::KVM_GET_DIRTY_LOG(), 0x4010_AE42);
        assert_eq!(super::KVM_CLEAR_DIRTY_LOG(), 0xC018_AEC0);
    }
}
